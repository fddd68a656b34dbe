//! virtio 1.x over PCI (modern transport, split virtqueue).

pub mod balloon;
pub mod blk;
pub mod console;
pub mod net;
pub mod pci;
pub mod queue;

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u8 = 1;
    pub const DRIVER: u8 = 2;
    pub const DRIVER_OK: u8 = 4;
    pub const FEATURES_OK: u8 = 8;
    pub const DEVICE_NEEDS_RESET: u8 = 64;
    pub const FAILED: u8 = 128;
}

/// Device-independent feature bits (§6).
pub mod feature {
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

#[cfg(test)]
mod balloon_tests;
#[cfg(test)]
mod console_tests;
#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
pub(crate) mod fake_balloon;
#[cfg(test)]
pub(crate) mod fake_console;
#[cfg(test)]
pub(crate) mod fake_net;
#[cfg(test)]
mod net_tests;
