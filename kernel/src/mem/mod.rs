//! Memory: the boot memory map, the kernel heap, the frames above it, and the balloon that
//! lends frames to the host.
pub mod balloon;
pub mod frames;
pub mod heap;
