#!/bin/sh
# Re-record the recorded part of the fuzz seed corpus (fuzz/corpus/<target>/rec-*, every
# target): run the kernel's own tests under KVM with `run --record-exits`
# (tests/record_exits.rs: the PCI scan, the disks, each NIC model, the balloon, the console's
# prompt, the floor bench), then convert the recordings into each target's input
# (src/fuzzing/recorded.rs) and check every seed does real work. Needs /dev/kvm.
set -eu
cd "$(dirname "$0")/../.."
export RECORDINGS="${RECORDINGS:-$PWD/target/exit-recordings}"
cargo test -p hypervisor-harness --test record_exits -- --ignored --nocapture
SKIP_KERNEL_BUILD=1 cargo test -p hypervisor-harness --lib write_recorded_corpus -- --ignored
SKIP_KERNEL_BUILD=1 cargo test -p hypervisor-harness --lib the_recorded_seeds_reach_the_devices
