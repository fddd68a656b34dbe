//! Ring 0: descriptor tables, trap entry, kernel calls, and the interrupt controllers.
pub mod apic;
pub mod gdt;
pub mod idt;
pub mod ioapic;
pub mod kcall;
pub mod trap;

/// Interrupt vectors the kernel assigns.
pub mod vectors {
    pub const LAPIC_TIMER: u8 = 0x30;
    pub const COM1: u8 = 0x34;
    pub const FLOOR_DEVICE: u8 = 0x3a;
    pub const VIRTIO_CONFIG: u8 = 0x41;
    pub const VIRTIO_QUEUE: u8 = 0x42;
    pub const VIRTIO_INTX: u8 = 0x43;
    /// virtio-net: its config change (and control queue), then one vector per queue pair
    /// (`NET_PAIR0 + i`, up to 8 pairs), and INTx.
    pub const NET_CONFIG: u8 = 0x50;
    pub const NET_PAIR0: u8 = 0x51;
    pub const NET_INTX: u8 = 0x59;
    /// virtio-balloon: its config change (a new target), its queues (one vector for all),
    /// and INTx.
    pub const BALLOON_CONFIG: u8 = 0x5a;
    pub const BALLOON_QUEUES: u8 = 0x5b;
    pub const BALLOON_INTX: u8 = 0x5c;
    pub const IDE_PRIMARY: u8 = 0x4e;
    pub const IDE_SECONDARY: u8 = 0x4f;
}
