//! hypervisor-harness: a small KVM VMM that boots the project's PVH kernel, counts every exit,
//! cross-checks against QEMU and benchmarks the I/O paths.

pub mod backends;
pub mod bench;
pub mod cli;
pub mod devices;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod ktap;
pub mod monitor;
pub mod platform;
pub mod qemu;
pub mod seccomp;
pub mod shared;
pub mod thread_cpu;
pub mod vmm;
