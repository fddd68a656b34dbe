//! virtio-net (virtio 1.x §5.1) on a [`NetBackend`].
//!
//! Queues: receiveq0, transmitq0, ..., receiveq(N-1), transmitq(N-1), controlq (2N + 1, 256
//! entries each). Without MQ negotiated only the first pair is used and the control queue is
//! queue 2, as the spec has it. The pure logic is apart: [`header`] (the 12-byte header),
//! [`tx`] (a chain into a checked frame), [`rx`] (a frame into the guest's buffers),
//! [`ctrl`] (control commands), [`checksum`]. [`Net`] is the [`VirtioDevice`] around them; the
//! backend-event thread is [`event_loop`].
//!
//! The backend sits in a [`NetShared`] with the counters and the link state, so that the event
//! loop (the backend's readiness and timers) and the report reach it without the device.
//! Lock order: the transport's queue engine (held while the device runs), then the backend.
//!
//! Receive steering follows the spec's automatic steering (§5.1.6.5.6.1): a frame goes to the
//! pair its flow was last sent from (a 256-entry table by a symmetric hash of the IPv4
//! addresses and ports), else to pair 0. A frame for a pair without buffers waits in that pair's
//! bounded queue ([`PENDING_FRAMES`]); when that is full the device stops taking frames from
//! the backend (backpressure, as QEMU does): they wait in the backend (its socket, TAP queue
//! or the peer's queue, each bounded and counting its own drops), the event loop stops
//! waiting on the backend's readiness, and the driver's next receive notify (it is asked for
//! one) resumes both. So an RX flood costs no memory, and drops happen only where the
//! backend's own queue overflows.

pub mod checksum;
pub mod ctrl;
pub mod event_loop;
pub mod header;
pub mod rx;
#[cfg(any(test, feature = "fuzzing"))]
pub mod test_util;
pub mod tx;

use super::device::{driver_wants_interrupt, Activation, InterruptType, QueueBroken, VirtioDevice};
use super::drain::Drain;
use crate::backends::net::{FrameMeta, NetBackend, NetBackendError, MAX_FRAME};
use crate::devices::lock;
use ctrl::{CtrlOutcome, CtrlState};
use header::NetHeader;
use rx::Delivery;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

pub const DEVICE_TYPE: u16 = 1;
pub const QUEUE_SIZE: u16 = 256;
/// Frames a pair keeps for the guest while its receive ring is empty.
pub const PENDING_FRAMES: usize = 32;
/// Frames one receive pass takes from the backend before letting others at the device.
const RX_BUDGET: usize = 2 * QUEUE_SIZE as usize;

/// `virtio_net_config` as the device keeps it.
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct NetConfig(pub virtio_net_config);

// SAFETY: `virtio_net_config` is `#[repr(C)]` of byte arrays and integers with alignment 1
// and no padding (virtio-bindings asserts its 24 bytes), so every byte pattern is valid.
unsafe impl ByteValued for NetConfig {}

/// Why a frame or chain was dropped. Each has a counter ([`NetStats::drops`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A TX chain that does not end (loop, next index outside the table) or is empty.
    TxBadChain,
    /// A device-writable descriptor in a TX chain.
    TxWrongDirection,
    TxOutsideMemory,
    /// More than the header and [`MAX_FRAME`] bytes.
    TxTooLong,
    TxShortHeader,
    /// A header and no frame.
    TxNoData,
    /// Less than an Ethernet header.
    TxRunt,
    /// GSO or flag bits this device does not offer.
    TxBadHeader,
    /// NEEDS_CSUM with csum_start/csum_offset outside the frame.
    TxBadChecksum,
    /// The backend failed (a dead backend: see [`NetStats::backend_error`]).
    TxBackend,
    /// The link is down (frames both ways are dropped).
    LinkDown,
    /// A frame for a pair whose receive ring and pending queue were both full (with
    /// backpressure only a frame the pending queue cannot hold at all).
    RxOverrun,
    /// An RX chain with a device-readable descriptor, outside guest memory, or no room.
    RxBadBuffer,
    /// Without MRG_RXBUF, a chain too small for header and frame.
    RxBufferTooSmall,
    /// A partial checksum from the backend outside the frame.
    RxBadChecksum,
    /// Frames that arrived while the device was not running (before DRIVER_OK, after a reset
    /// or NEEDS_RESET, bus mastering off).
    RxInactive,
    /// A control chain without a writable ack byte, or malformed.
    CtrlBadChain,
}

impl DropReason {
    pub const ALL: [DropReason; 17] = [
        Self::TxBadChain,
        Self::TxWrongDirection,
        Self::TxOutsideMemory,
        Self::TxTooLong,
        Self::TxShortHeader,
        Self::TxNoData,
        Self::TxRunt,
        Self::TxBadHeader,
        Self::TxBadChecksum,
        Self::TxBackend,
        Self::LinkDown,
        Self::RxOverrun,
        Self::RxBadBuffer,
        Self::RxBufferTooSmall,
        Self::RxBadChecksum,
        Self::RxInactive,
        Self::CtrlBadChain,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::TxBadChain => "tx_bad_chain",
            Self::TxWrongDirection => "tx_wrong_direction",
            Self::TxOutsideMemory => "tx_outside_memory",
            Self::TxTooLong => "tx_too_long",
            Self::TxShortHeader => "tx_short_header",
            Self::TxNoData => "tx_no_data",
            Self::TxRunt => "tx_runt",
            Self::TxBadHeader => "tx_bad_header",
            Self::TxBadChecksum => "tx_bad_checksum",
            Self::TxBackend => "tx_backend",
            Self::LinkDown => "link_down",
            Self::RxOverrun => "rx_overrun",
            Self::RxBadBuffer => "rx_bad_buffer",
            Self::RxBufferTooSmall => "rx_buffer_too_small",
            Self::RxBadChecksum => "rx_bad_checksum",
            Self::RxInactive => "rx_inactive",
            Self::CtrlBadChain => "ctrl_bad_chain",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }
}

/// What one queue carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueCounters {
    /// Frames (control queue: commands) completed.
    pub frames: u64,
    /// Frame bytes (without the virtio-net header).
    pub bytes: u64,
    pub drops: u64,
    /// Notifies from the driver (exits or ioeventfd wakeups).
    pub notifies: u64,
    /// Queue interrupts the device raised.
    pub interrupts: u64,
}

/// The device's counters, per queue (index = queue index) and per drop reason.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetStats {
    pub queues: Vec<QueueCounters>,
    pub drops: [u64; DropReason::ALL.len()],
    pub ctrl: CtrlState,
    /// Times the receive pass began holding frames back in the backend (a pair's ring and
    /// pending queue full).
    pub rx_holds: u64,
    /// Times a transmit pass stopped taking frames from the guest because the backend could
    /// take no more (they wait in the ring until it can).
    pub tx_holds: u64,
    /// Passes over a transmit or control queue stopped at their bound ([`Drain`]).
    pub drains_cut: u64,
    /// The backend's last error, if it failed.
    pub backend_error: Option<String>,
}

impl NetStats {
    pub fn drop_count(&self, why: DropReason) -> u64 {
        self.drops[why.index()]
    }
    /// (name, count) of each reason that happened.
    pub fn nonzero_drops(&self) -> Vec<(&'static str, u64)> {
        DropReason::ALL
            .iter()
            .filter(|r| self.drops[r.index()] != 0)
            .map(|r| (r.name(), self.drops[r.index()]))
            .collect()
    }
    fn count_drop(&mut self, queue: Option<usize>, why: DropReason) {
        self.drops[why.index()] += 1;
        if let Some(q) = queue.and_then(|q| self.queues.get_mut(q)) {
            q.drops += 1;
        }
    }
}

/// What the device shares with its event loop and the report.
pub struct NetShared {
    backend: Mutex<Box<dyn NetBackend>>,
    stats: Mutex<NetStats>,
    link_up: AtomicBool,
    /// Set by the event loop before it runs the device for a backend event, so that the
    /// device does not count it as a driver notify.
    backend_event: AtomicBool,
    /// Bumped by every receive pass: the event loop sees whether the device ran.
    rx_passes: AtomicU64,
    /// The backend reported it is gone: nothing waits on it any more.
    backend_gone: AtomicBool,
    /// The receive pass stopped taking frames from the backend: a pair's pending queue is
    /// full. The backend's thread then stops waiting on its (level-triggered) readiness fd.
    rx_blocked: AtomicBool,
    /// Written when the receive pass is unblocked (the driver added buffers, a reset): the
    /// backend's thread, which set it, watches the backend again.
    rx_resume: Mutex<Option<EventFd>>,
    /// Bit per pair: its transmit pass stopped because the backend was not ready, frames left
    /// in the ring. The backend's thread waits for the backend's `tx_wait_fd` to be
    /// writable and runs the pass again.
    tx_blocked: AtomicU32,
    /// Times the backend's thread woke (tests: no busy loop while blocked).
    backend_wakeups: AtomicU64,
}

impl NetShared {
    pub fn backend(&self) -> std::sync::MutexGuard<'_, Box<dyn NetBackend>> {
        lock(&self.backend)
    }
    pub fn stats(&self) -> NetStats {
        lock(&self.stats).clone()
    }
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::SeqCst)
    }
    /// Link up or down. The caller tells the driver (the transport's
    /// `device_config_changed`, which raises the configuration interrupt).
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::SeqCst);
    }
    pub fn backend_gone(&self) -> bool {
        self.backend_gone.load(Ordering::SeqCst)
    }
    /// Whether the receive pass is holding frames back in the backend (see [`NetShared`]).
    pub fn rx_blocked(&self) -> bool {
        self.rx_blocked.load(Ordering::SeqCst)
    }
    pub fn backend_wakeups(&self) -> u64 {
        self.backend_wakeups.load(Ordering::SeqCst)
    }
    fn note_backend_wakeup(&self) {
        self.backend_wakeups.fetch_add(1, Ordering::Relaxed);
    }
    /// Pairs whose transmit pass is held (see [`NetShared::tx_blocked`]), a bit each.
    pub fn tx_blocked(&self) -> u32 {
        self.tx_blocked.load(Ordering::SeqCst)
    }
    /// Record whether `pair`'s transmit pass is held; on a change wake the backend's thread,
    /// which (un)watches the backend's `tx_wait_fd`. True when it just became held.
    fn set_tx_blocked(&self, pair: usize, blocked: bool) -> bool {
        let bit = 1u32 << (pair % 32);
        let was = if blocked {
            self.tx_blocked.fetch_or(bit, Ordering::SeqCst)
        } else {
            self.tx_blocked.fetch_and(!bit, Ordering::SeqCst)
        } & bit
            != 0;
        if was != blocked {
            self.wake_backend_thread();
        }
        blocked && !was
    }
    /// No transmit pass is held any more (reset, activation).
    fn clear_tx_blocked(&self) {
        if self.tx_blocked.swap(0, Ordering::SeqCst) != 0 {
            self.wake_backend_thread();
        }
    }
    fn wake_backend_thread(&self) {
        if let Some(evt) = lock(&self.rx_resume).as_ref() {
            let _ = evt.write(1);
        }
    }
    /// The eventfd the receive pass writes when it is unblocked.
    fn set_rx_resume(&self, evt: EventFd) {
        *lock(&self.rx_resume) = Some(evt);
    }
    /// Record whether the pass is blocked; wake the backend's thread on the way out of it.
    /// True when it just became blocked.
    fn set_rx_blocked(&self, blocked: bool) -> bool {
        let was = self.rx_blocked.swap(blocked, Ordering::SeqCst);
        if was && !blocked {
            if let Some(evt) = lock(&self.rx_resume).as_ref() {
                let _ = evt.write(1);
            }
        }
        blocked && !was
    }
    fn note_backend_error(&self, e: &NetBackendError) {
        if matches!(e, NetBackendError::Disconnected(_)) {
            self.backend_gone.store(true, Ordering::SeqCst);
        }
        lock(&self.stats).backend_error = Some(e.to_string());
    }

    /// The device did not run for a backend event: drain what the backend holds, as a NIC
    /// that is not running drops what arrives.
    pub fn drain_inactive(&self) {
        let mut buf = [0u8; MAX_FRAME];
        let mut backend = self.backend();
        let mut dropped = 0;
        for _ in 0..RX_BUDGET {
            match backend.receive(&mut buf) {
                Ok(Some(_)) => dropped += 1,
                Ok(None) => break,
                Err(e) => {
                    drop(backend);
                    self.note_backend_error(&e);
                    break;
                }
            }
        }
        if dropped != 0 {
            lock(&self.stats).drops[DropReason::RxInactive.index()] += dropped;
        }
    }
}

/// A bounded queue of frames waiting for receive buffers (storage allocated once).
struct Pending {
    frames: Vec<([u8; MAX_FRAME], usize, FrameMeta)>,
    head: usize,
    len: usize,
}

impl Pending {
    fn new() -> Self {
        Self {
            frames: vec![([0u8; MAX_FRAME], 0, FrameMeta::default()); PENDING_FRAMES],
            head: 0,
            len: 0,
        }
    }
    fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn is_full(&self) -> bool {
        self.len == self.frames.len()
    }
    fn push(&mut self, frame: &[u8], meta: FrameMeta) -> bool {
        if self.len == self.frames.len() || frame.len() > MAX_FRAME {
            return false;
        }
        let slot = &mut self.frames[(self.head + self.len) % PENDING_FRAMES];
        slot.0[..frame.len()].copy_from_slice(frame);
        slot.1 = frame.len();
        slot.2 = meta;
        self.len += 1;
        true
    }
    fn front(&self) -> Option<(&[u8], FrameMeta)> {
        (self.len != 0).then(|| {
            let s = &self.frames[self.head];
            (&s.0[..s.1], s.2)
        })
    }
    fn pop(&mut self) {
        if self.len != 0 {
            self.head = (self.head + 1) % PENDING_FRAMES;
            self.len -= 1;
        }
    }
    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// What a queue index is for, given the negotiated features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Rx(usize),
    Tx(usize),
    Ctrl,
    Unused,
}

/// A symmetric hash of an IPv4 frame's addresses and ports (TCP, UDP), the same for both
/// directions of a flow; None for anything else.
pub fn flow_hash(frame: &[u8]) -> Option<u8> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = (*ip.first()? & 0x0f) as usize * 4;
    let proto = *ip.get(9)?;
    let src = ip.get(12..16)?;
    let dst = ip.get(16..20)?;
    let (sp, dp) = match proto {
        6 | 17 => {
            let l4 = ip.get(ihl..ihl + 4)?;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        _ => (0, 0),
    };
    let a = (u32::from_be_bytes(src.try_into().ok()?), sp);
    let b = (u32::from_be_bytes(dst.try_into().ok()?), dp);
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = (lo.0 as u64) << 32 | hi.0 as u64;
    h ^= ((lo.1 as u64) << 16 | hi.1 as u64) << 8 | proto as u64;
    h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    Some((h >> 56) as u8)
}

/// Device state from activation to reset.
struct Running {
    act: Activation,
    mergeable: bool,
    guest_csum: bool,
    ctrl: CtrlState,
    /// Flow hash -> the pair that flow last transmitted on.
    steering: [u8; 256],
}

pub struct Net {
    shared: Arc<NetShared>,
    config: NetConfig,
    pairs: u16,
    sizes: Vec<u16>,
    running: Option<Running>,
    /// Per pair: frames waiting for receive buffers.
    pending: Vec<Pending>,
    /// The TX frame buffer and the RX receive buffer, and the RX chains of one frame: one
    /// each for the device, since its queues are processed one at a time (under the engine
    /// lock).
    tx_buf: Box<[u8; tx::TX_BUFFER_LEN]>,
    rx_buf: Box<[u8; MAX_FRAME]>,
    rx_used: Vec<(u16, u32)>,
    /// Counted here and published to `shared` after each run.
    stats: NetStats,
}

impl Net {
    /// A NIC with `pairs` queue pairs (1..=[`crate::backends::net::spec::MAX_QUEUE_PAIRS`])
    /// and the MAC `mac`, on `backend`. The link starts up.
    pub fn new(backend: Box<dyn NetBackend>, mac: [u8; 6], pairs: u16) -> Self {
        let pairs = pairs.max(1);
        let nq = 2 * pairs as usize + 1;
        let config = NetConfig(virtio_net_config {
            mac,
            max_virtqueue_pairs: pairs.to_le(),
            ..Default::default()
        });
        let stats = NetStats {
            queues: vec![QueueCounters::default(); nq],
            ..Default::default()
        };
        let shared = Arc::new(NetShared {
            backend: Mutex::new(backend),
            stats: Mutex::new(stats.clone()),
            link_up: AtomicBool::new(true),
            backend_event: AtomicBool::new(false),
            rx_passes: AtomicU64::new(0),
            backend_gone: AtomicBool::new(false),
            rx_blocked: AtomicBool::new(false),
            rx_resume: Mutex::new(None),
            tx_blocked: AtomicU32::new(0),
            backend_wakeups: AtomicU64::new(0),
        });
        Self {
            shared,
            config,
            pairs,
            sizes: vec![QUEUE_SIZE; nq],
            running: None,
            pending: (0..pairs).map(|_| Pending::new()).collect(),
            tx_buf: Box::new([0; tx::TX_BUFFER_LEN]),
            rx_buf: Box::new([0; MAX_FRAME]),
            rx_used: Vec::with_capacity(QUEUE_SIZE as usize),
            stats,
        }
    }

    /// The handle the event loop, the wiring and tests keep.
    pub fn shared(&self) -> Arc<NetShared> {
        self.shared.clone()
    }

    pub fn pairs(&self) -> u16 {
        self.pairs
    }

    /// Index of receive queue `pair` (its transmit queue is the next one).
    pub fn rx_queue(pair: usize) -> usize {
        2 * pair
    }

    pub fn tx_queue(pair: usize) -> usize {
        2 * pair + 1
    }

    /// The control queue's index with MQ negotiated (without MQ it is 2).
    pub fn ctrl_queue(pairs: u16) -> usize {
        2 * pairs as usize
    }

    fn role(&self, index: usize) -> Role {
        let Some(r) = &self.running else {
            return Role::Unused;
        };
        let f = r.act.features;
        let usable_pairs = if r.ctrl.mq { self.pairs as usize } else { 1 };
        let ctrl = if r.ctrl.mq {
            Self::ctrl_queue(self.pairs)
        } else {
            2
        };
        if f & (1 << VIRTIO_NET_F_CTRL_VQ) != 0 && index == ctrl {
            Role::Ctrl
        } else if index < 2 * usable_pairs {
            if index.is_multiple_of(2) {
                Role::Rx(index / 2)
            } else {
                Role::Tx(index / 2)
            }
        } else {
            Role::Unused
        }
    }

    /// Copy the counters to the shared side after a run, field by field (no allocation: this
    /// runs after every notify and backend event).
    fn publish(&self) {
        let NetStats {
            queues,
            drops,
            ctrl,
            rx_holds,
            tx_holds,
            drains_cut,
            backend_error,
        } = &self.stats;
        let mut s = lock(&self.shared.stats);
        s.queues.clone_from(queues);
        // The event loop's are kept on the shared side.
        let inactive = s.drops[DropReason::RxInactive.index()];
        s.drops = *drops;
        s.drops[DropReason::RxInactive.index()] += inactive;
        s.ctrl = *ctrl;
        s.rx_holds = *rx_holds;
        s.tx_holds = *tx_holds;
        s.drains_cut = *drains_cut;
        if backend_error.is_some() && s.backend_error != *backend_error {
            s.backend_error.clone_from(backend_error);
        }
    }

    fn process_tx(&mut self, pair: usize) -> Result<(), QueueBroken> {
        let Some(r) = self.running.as_mut() else {
            return Ok(());
        };
        let qi = Self::tx_queue(pair);
        let Running { act, steering, .. } = r;
        let mem = &act.mem;
        let Some(queue) = act.queues.get_mut(qi) else {
            return Ok(());
        };
        let link_up = self.shared.link_up();
        let mut backend = lock(&self.shared.backend);
        let partial_ok = backend.accepts_partial_checksum();
        let mut used_any = false;
        let mut unflushed = false;
        let mut held = false;
        let mut pass = Drain::new(queue);
        loop {
            queue.disable_notification(mem)?;
            loop {
                if queue.ready() {
                    if queue.avail_idx(mem, Ordering::Acquire)?.0 == queue.next_avail() {
                        break;
                    }
                    // Backpressure: a frame the backend cannot take now stays in the ring.
                    if !backend.tx_ready() {
                        held = true;
                        break;
                    }
                }
                let Some(chain) = pass.next_chain(queue, mem)? else {
                    break;
                };
                let head = chain.head_index();
                let result = tx::gather(mem, chain, &mut self.tx_buf[..])
                    .and_then(|n| tx::prepare(&mut self.tx_buf[..], n, partial_ok))
                    .and_then(|(range, meta)| {
                        if link_up {
                            Ok((range, meta))
                        } else {
                            Err(DropReason::LinkDown)
                        }
                    });
                match result {
                    Ok((range, meta)) => {
                        let frame = &self.tx_buf[range];
                        if let Some(h) = flow_hash(frame) {
                            steering[h as usize] = pair as u8;
                        }
                        match backend.transmit(&meta, frame) {
                            Ok(()) => {
                                let q = &mut self.stats.queues[qi];
                                q.frames += 1;
                                q.bytes += frame.len() as u64;
                            }
                            Err(e) => {
                                self.stats.count_drop(Some(qi), DropReason::TxBackend);
                                self.stats.backend_error = Some(e.to_string());
                                if matches!(e, NetBackendError::Disconnected(_)) {
                                    self.shared.backend_gone.store(true, Ordering::SeqCst);
                                }
                            }
                        }
                    }
                    Err(why) => self.stats.count_drop(Some(qi), why),
                }
                queue.add_used(mem, head, 0)?;
                used_any = true;
                unflushed = true;
            }
            // The batch is out: a backend that gathers frames writes them now.
            if std::mem::take(&mut unflushed) {
                if let Err(e) = backend.flush() {
                    self.stats.backend_error = Some(e.to_string());
                    if matches!(e, NetBackendError::Disconnected(_)) {
                        self.shared.backend_gone.store(true, Ordering::SeqCst);
                    }
                }
            }
            // Held: notifies stay off, the backend's thread runs the pass again once the
            // backend can take frames.
            if held || !pass.again(queue, mem)? {
                break;
            }
        }
        self.stats.drains_cut += u64::from(pass.was_cut());
        drop(backend);
        if self.shared.set_tx_blocked(pair, held) {
            self.stats.tx_holds += 1;
        }
        if used_any && driver_wants_interrupt(queue, mem)? {
            self.stats.queues[qi].interrupts += 1;
            act.interrupt.trigger(InterruptType::Queue(qi));
        }
        Ok(())
    }

    /// Move frames waiting in the pending queues and the backend into the guest's receive
    /// buffers, and interrupt once per pair that got any. The backend is left alone while a
    /// pair's pending queue is full (backpressure).
    fn pump_rx(&mut self) -> Result<(), QueueBroken> {
        self.shared.rx_passes.fetch_add(1, Ordering::SeqCst);
        let Some(r) = self.running.as_mut() else {
            return Ok(());
        };
        let active = r.ctrl.active_pairs.clamp(1, self.pairs) as usize;
        let link_up = self.shared.link_up();
        let mut delivered = [false; crate::backends::net::spec::MAX_QUEUE_PAIRS as usize];
        // Suppress receive notifies while working; re-enabled below where a frame waits.
        for p in 0..active {
            if let Some(q) = r.act.queues.get_mut(Self::rx_queue(p)) {
                if q.ready() {
                    q.disable_notification(&r.act.mem)?;
                }
            }
        }
        let mut blocked;
        loop {
            // Frames that left a pending queue or the backend this round.
            let mut moved = 0usize;
            // Frames already waiting go first, in order.
            for (p, pending) in self.pending.iter_mut().enumerate() {
                while let Some((frame, meta)) = pending.front() {
                    let qi = Self::rx_queue(p);
                    let out = deliver_one(r, qi, frame, meta, &mut self.rx_used)?;
                    if out == Delivery::NoBuffers {
                        break;
                    }
                    moved += 1;
                    match out {
                        Delivery::NoBuffers => break,
                        Delivery::Delivered { .. } => {
                            let q = &mut self.stats.queues[qi];
                            q.frames += 1;
                            q.bytes += frame.len() as u64;
                            delivered[p] = true;
                        }
                        Delivery::Dropped(why) => self.stats.count_drop(Some(qi), why),
                    }
                    pending.pop();
                }
            }
            // Then the backend, unless a pair can hold no more.
            blocked = self.pending[..active].iter().any(Pending::is_full);
            if !blocked && !self.shared.backend_gone() {
                let mut backend = lock(&self.shared.backend);
                for _ in 0..RX_BUDGET {
                    let (len, mut meta) = match backend.receive(&mut self.rx_buf[..]) {
                        Ok(Some(got)) => got,
                        Ok(None) => break,
                        Err(e) => {
                            self.stats.backend_error = Some(e.to_string());
                            if matches!(e, NetBackendError::Disconnected(_)) {
                                self.shared.backend_gone.store(true, Ordering::SeqCst);
                            }
                            break;
                        }
                    };
                    moved += 1;
                    let frame = &mut self.rx_buf[..len.min(MAX_FRAME)];
                    let p = flow_hash(frame)
                        .map(|h| r.steering[h as usize] as usize)
                        .filter(|&p| p < active)
                        .unwrap_or(0);
                    let qi = Self::rx_queue(p);
                    if !link_up {
                        self.stats.count_drop(Some(qi), DropReason::LinkDown);
                        continue;
                    }
                    if let Some(req) = meta.needs_csum.filter(|_| !r.guest_csum) {
                        // The guest cannot take a partial checksum: finish it here.
                        if checksum::complete(frame, req.start, req.offset).is_err() {
                            self.stats.count_drop(Some(qi), DropReason::RxBadChecksum);
                            continue;
                        }
                        meta = FrameMeta {
                            needs_csum: None,
                            data_valid: true,
                        };
                    }
                    let frame = &*frame;
                    let out = if self.pending[p].is_empty() {
                        deliver_one(r, qi, frame, meta, &mut self.rx_used)?
                    } else {
                        Delivery::NoBuffers
                    };
                    match out {
                        Delivery::Delivered { .. } => {
                            let q = &mut self.stats.queues[qi];
                            q.frames += 1;
                            q.bytes += frame.len() as u64;
                            delivered[p] = true;
                        }
                        Delivery::NoBuffers => {
                            if !self.pending[p].push(frame, meta) {
                                self.stats.count_drop(Some(qi), DropReason::RxOverrun);
                            }
                            if self.pending[p].is_full() {
                                blocked = true;
                                break;
                            }
                        }
                        Delivery::Dropped(why) => self.stats.count_drop(Some(qi), why),
                    }
                }
            }
            // A pair with frames waiting asks the driver to notify it when it adds buffers;
            // if some arrived meanwhile, go round again. Stopping there instead (a fixed
            // number of rounds) lost the wakeup: the driver had added them before it could
            // see the request, so it did not notify, and RX stalled with frames held back
            // until the guest next transmitted (net_rx_flood under a loaded host). A round
            // that moved nothing (buffers too few for the frame at the head) ends the pass.
            let mut again = false;
            for (p, pending) in self.pending.iter().enumerate() {
                if pending.is_empty() {
                    continue;
                }
                if let Some(q) = r.act.queues.get_mut(Self::rx_queue(p)) {
                    if q.ready() && q.enable_notification(&r.act.mem)? {
                        again = true;
                    }
                }
            }
            if !again || moved == 0 {
                break;
            }
        }
        if self.shared.set_rx_blocked(blocked) {
            self.stats.rx_holds += 1;
        }
        for (p, _) in delivered.iter().enumerate().filter(|(_, &d)| d) {
            let qi = Self::rx_queue(p);
            let Some(q) = r.act.queues.get_mut(qi) else {
                continue;
            };
            if driver_wants_interrupt(q, &r.act.mem)? {
                self.stats.queues[qi].interrupts += 1;
                r.act.interrupt.trigger(InterruptType::Queue(qi));
            }
        }
        Ok(())
    }

    fn process_ctrl(&mut self, qi: usize) -> Result<(), QueueBroken> {
        let Some(r) = self.running.as_mut() else {
            return Ok(());
        };
        let mem = &r.act.mem;
        let Some(queue) = r.act.queues.get_mut(qi) else {
            return Ok(());
        };
        let mut used_any = false;
        let mut pass = Drain::new(queue);
        loop {
            queue.disable_notification(mem)?;
            while let Some(chain) = pass.next_chain(queue, mem)? {
                let head = chain.head_index();
                let len = match ctrl::handle(mem, chain, &mut r.ctrl) {
                    CtrlOutcome::Acked(_) => {
                        self.stats.queues[qi].frames += 1;
                        1
                    }
                    CtrlOutcome::Unanswerable(why) => {
                        self.stats.count_drop(Some(qi), why);
                        0
                    }
                };
                queue.add_used(mem, head, len)?;
                used_any = true;
            }
            if !pass.again(queue, mem)? {
                break;
            }
        }
        self.stats.drains_cut += u64::from(pass.was_cut());
        self.stats.ctrl = r.ctrl;
        if used_any && driver_wants_interrupt(queue, mem)? {
            self.stats.queues[qi].interrupts += 1;
            r.act.interrupt.trigger(InterruptType::Queue(qi));
        }
        Ok(())
    }
}

/// One frame into receive queue `qi`, if that queue is ready.
fn deliver_one(
    r: &mut Running,
    qi: usize,
    frame: &[u8],
    meta: FrameMeta,
    used: &mut Vec<(u16, u32)>,
) -> Result<Delivery, QueueBroken> {
    let Some(q) = r.act.queues.get_mut(qi).filter(|q| q.ready()) else {
        return Ok(Delivery::NoBuffers);
    };
    let header = NetHeader::rx(&meta, r.guest_csum, 1);
    rx::deliver(q, &r.act.mem, frame, header, r.mergeable, used)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        let mut f = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_NET_F_CSUM
            | 1 << VIRTIO_NET_F_GUEST_CSUM
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_MRG_RXBUF
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_CTRL_VQ
            | 1 << VIRTIO_NET_F_CTRL_RX;
        if self.pairs > 1 {
            f |= 1 << VIRTIO_NET_F_MQ;
        }
        f
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> usize {
        std::mem::size_of::<virtio_net_config>()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut c = self.config;
        let status = if self.shared.link_up() {
            VIRTIO_NET_S_LINK_UP as u16
        } else {
            0
        };
        c.0.status = status.to_le();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| c.as_slice().get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, act: Activation) -> Result<(), String> {
        if act.queues.len() != self.sizes.len() {
            return Err(format!(
                "{} queues for {}",
                act.queues.len(),
                self.sizes.len()
            ));
        }
        let f = act.features;
        let ctrl = CtrlState {
            mq: f & (1 << VIRTIO_NET_F_MQ) != 0,
            ctrl_rx: f & (1 << VIRTIO_NET_F_CTRL_RX) != 0,
            max_pairs: self.pairs,
            active_pairs: 1,
            promisc: false,
            allmulti: false,
        };
        for p in &mut self.pending {
            p.clear();
        }
        self.shared.set_rx_blocked(false);
        self.shared.clear_tx_blocked();
        self.running = Some(Running {
            mergeable: f & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            guest_csum: f & (1 << VIRTIO_NET_F_GUEST_CSUM) != 0,
            ctrl,
            steering: [0; 256],
            act,
        });
        self.stats.ctrl = ctrl;
        self.publish();
        Ok(())
    }

    fn activation(&self) -> Option<&Activation> {
        self.running.as_ref().map(|r| &r.act)
    }

    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.running.as_mut().map(|r| &mut r.act)
    }

    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
        let from_backend = self.shared.backend_event.swap(false, Ordering::SeqCst);
        if !from_backend {
            if let Some(q) = self.stats.queues.get_mut(index) {
                q.notifies += 1;
            }
        }
        let result = match self.role(index) {
            Role::Tx(p) => self.process_tx(p).and_then(|()| self.pump_rx()),
            Role::Rx(_) => self.pump_rx(),
            Role::Ctrl => self.process_ctrl(index),
            Role::Unused => Ok(()),
        };
        self.publish();
        result
    }

    fn reset(&mut self) {
        self.running = None;
        for p in &mut self.pending {
            p.clear();
        }
        // What the backend holds back is now for a device that is not running: the event
        // loop drains it (counted as RxInactive).
        self.shared.set_rx_blocked(false);
        // Frames a held transmit pass left are the reset ring's: nothing to resume.
        self.shared.clear_tx_blocked();
    }
}

#[cfg(test)]
mod tests;
