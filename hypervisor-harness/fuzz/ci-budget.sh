#!/bin/sh
# The fixed-budget fuzz run CI can afford without cargo-fuzz or libFuzzer (about a minute on a
# 2-core machine): every target's entry point over its seed corpus (fuzz/corpus/<target>/) and
# FUZZ_CI_INPUTS inputs per target (mutations of the corpus, or seeded random programs), in the
# test profile `cargo test --workspace` already built. A failing input is printed in full.
set -eu
cd "$(dirname "$0")/../.."
FUZZ_CI_INPUTS="${FUZZ_CI_INPUTS:-1000}" SKIP_KERNEL_BUILD=1 \
    cargo test -q -p hypervisor-harness --lib fuzzing::corpus -- --nocapture
