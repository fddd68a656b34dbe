//! Memory: the boot memory map and the kernel heap.
pub mod heap;
