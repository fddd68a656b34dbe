//! The NIC layer: one trait every network driver implements (virtio-net, RTL8139, e1000), so
//! that nothing above it (the kernel's smoltcp bridge, tests, benchmarks) knows which NIC it
//! drives.
//!
//! Frames are Ethernet II without the FCS, at most [`ETH_FRAME_MAX`] bytes (a 1500-byte MTU).
//! Transmission is batched: [`Nic::send`] only queues a frame, [`Nic::flush`] tells the device
//! about everything queued since the last flush (one notification per batch), and
//! [`Nic::reclaim`] takes finished TX buffers back, so no interrupt per packet is needed.

use core::fmt;

pub mod checksum;
pub mod e1000;
pub mod rtl8139;

/// Largest frame a driver sends or accepts: 14-byte Ethernet header + 1500-byte MTU.
pub const ETH_FRAME_MAX: usize = 1514;
/// Smallest valid Ethernet frame without FCS; shorter frames are padded by the sender.
pub const ETH_FRAME_MIN: usize = 60;

/// A MAC address.
pub type MacAddress = [u8; 6];

/// Whether the cable is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
}

/// What the device does for the stack, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// The device completes TCP/UDP checksums on transmit: the stack may leave them to it
    /// and pass [`TxChecksum::Partial`].
    pub tx_checksum: bool,
    /// The device validates TCP/UDP checksums on receive and says so per frame
    /// ([`RxInfo::checksum_valid`]).
    pub rx_checksum: bool,
}

/// How a transmitted frame's L4 checksum is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxChecksum {
    /// The frame is complete as given.
    Complete,
    /// The device must finish the checksum: sum the bytes from `start` (an offset into the
    /// frame) to the end, and store the result at `start + offset`, where the caller put the
    /// pseudo-header's partial sum (virtio 1.x §5.1.6.2's `csum_start`/`csum_offset`). Only
    /// when [`Offloads::tx_checksum`] is set.
    Partial { start: u16, offset: u16 },
}

/// What the driver knows about a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxInfo {
    /// The device checked (or never damaged) the frame's TCP/UDP checksum.
    pub checksum_valid: bool,
    /// Receive queue (pair) the frame came from.
    pub queue: u16,
}

/// What happened since the last call to [`Nic::handle_interrupt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NicEvents {
    /// Frames are waiting to be received.
    pub rx: bool,
    /// TX buffers finished.
    pub tx: bool,
    /// The link state (or other configuration) changed; read [`Nic::link`].
    pub link_changed: bool,
}

/// Counters every NIC driver keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NicCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames refused or lost on the way out (too large, link down, device error).
    pub tx_drops: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the driver threw away: malformed completions, lengths past the buffer,
    /// checksum failures reported by the device, overruns the device reported.
    pub rx_drops: u64,
    /// Interrupts serviced.
    pub interrupts: u64,
    /// Notifications (doorbell writes) sent to the device.
    pub notifies: u64,
}

/// Why a NIC operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicError {
    /// The link is down; nothing was sent.
    LinkDown,
    /// Every TX buffer is in flight; reclaim, or wait, and retry.
    TxFull,
    /// A frame longer than [`ETH_FRAME_MAX`] (or shorter than the Ethernet header).
    BadFrameLength(usize),
    /// Checksum offload asked of a device that did not offer it.
    OffloadUnavailable,
    /// The device misbehaved (a bad completion, a broken ring, NEEDS_RESET) and the driver
    /// stopped using it; `what` says how.
    Device(&'static str),
}

impl fmt::Display for NicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LinkDown => write!(f, "link is down"),
            Self::TxFull => write!(f, "no free TX buffer"),
            Self::BadFrameLength(n) => write!(f, "frame of {n} bytes (14..={ETH_FRAME_MAX})"),
            Self::OffloadUnavailable => write!(f, "checksum offload not negotiated"),
            Self::Device(what) => write!(f, "device error: {what}"),
        }
    }
}

/// One network interface, as the stack above sees it.
pub trait Nic {
    /// The station address (from the device's config space or EEPROM, or as configured).
    fn mac(&self) -> MacAddress;

    /// The link state now (a device without link reporting is always up).
    fn link(&mut self) -> LinkState;

    /// What the device finishes for the stack.
    fn offloads(&self) -> Offloads;

    /// Queue one frame for transmission; the device learns of it at the next [`Nic::flush`].
    /// The frame is copied, so the caller's buffer is free on return. A full TX ring first
    /// reclaims finished buffers; if none are finished, [`NicError::TxFull`].
    fn send(&mut self, frame: &[u8], checksum: TxChecksum) -> Result<(), NicError>;

    /// Tell the device about every frame queued since the last flush: at most one
    /// notification (none if the device said it does not need one).
    fn flush(&mut self) -> Result<(), NicError>;

    /// Take finished TX buffers back; returns how many.
    fn reclaim(&mut self) -> Result<usize, NicError>;

    /// TX frames queued and not yet reclaimed (all queues): 0 once everything sent is back.
    /// A caller that must know its frames are out (a benchmark's end, a shutdown) reclaims
    /// until this is 0.
    fn tx_in_flight(&self) -> usize;

    /// Hand the next received frame to `deliver`, then give its buffer back to the device.
    /// `Ok(false)` if no frame is waiting. Malformed completions are counted as drops and
    /// skipped, never delivered.
    fn receive(&mut self, deliver: &mut dyn FnMut(&[u8], RxInfo)) -> Result<bool, NicError>;

    /// Turn the device's interrupts on or off (off: the caller polls). A driver whose device
    /// has no usable interrupt stays polled and returns `false`; otherwise `true` (the request
    /// took effect, whichever it was).
    fn set_interrupts(&mut self, enabled: bool) -> bool;

    /// Acknowledge the device's interrupt (read its cause register) and say what it reported.
    /// Also usable when polling: it then only looks at the rings.
    fn handle_interrupt(&mut self) -> NicEvents;

    /// The x86 vectors this NIC's interrupts arrive on (empty when polled), so a caller can
    /// wait for them through its platform.
    fn interrupt_vectors(&self) -> &[u8];

    /// The counters so far.
    fn counters(&self) -> NicCounters;
}
