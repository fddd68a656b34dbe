//! Backends: where device models' data comes from and goes to.
pub mod discard;
pub mod disk;
pub mod faulty_disk;
pub mod mem_disk;
pub mod net;
pub mod uring_disk;
pub mod vectored;
