//! Guest-side drivers. `no_std` + `alloc`; they reach hardware only through [`platform::Platform`].
#![cfg_attr(not(test), no_std)]
extern crate alloc;

pub mod ata;
pub mod net;
pub mod pci;
pub mod platform;
pub mod virtio;
