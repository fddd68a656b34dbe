//! virtio-net (virtio 1.x §5.1) over the modern PCI transport: the [`Nic`] trait on one or
//! more queue pairs.
//!
//! - Every RX ring is kept full of buffers carved from one DMA region per queue (2048-byte
//!   slots: the 12-byte header and a 1514-byte frame fit one slot; with `MRG_RXBUF` a frame may
//!   still span several, as `num_buffers` says, and is reassembled in a scratch buffer).
//! - TX copies each frame into a slot of one DMA region per queue, behind its header; `flush`
//!   notifies each queue at most once per batch (and only if the device asks, `kick_needed`),
//!   finished slots come back in batches through `reclaim` (or `send` on a full ring). TX
//!   interrupts are suppressed for good: no interrupt per packet.
//! - With `MQ` the driver asks for N pairs over the control queue; `send` picks a pair by a hash
//!   of the IPv4 5-tuple (one flow stays on one pair, in order; non-IP goes to pair 0),
//!   `receive` polls the pairs round robin. If the device refuses the pair count (ack not OK)
//!   the driver falls back to one pair, which every device serves after DRIVER_OK
//!   ([`VirtioNet::mq_refused`]).
//! - A device that breaks the ring protocol beyond recovery (a used index jump) or sets
//!   NEEDS_RESET is reset (so it stops touching our memory) and every call reports
//!   [`NicError::Device`]; completions that are merely wrong (a bad id, a length past the
//!   buffer, a garbage `num_buffers`) are counted drops and their buffers recycled.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::feature;
use super::pci::{
    device_type, msix_table_size, virtio_device_type, InterruptMode, VirtioError, VirtioPci,
};
use super::queue::{QueueError, VirtQueue};
use crate::net::checksum::{complete_partial_checksum, ETHERTYPE_IPV4, ETH_HEADER_LEN};
use crate::net::{
    LinkState, MacAddress, Nic, NicCounters, NicError, NicEvents, Offloads, RxInfo, TxChecksum,
    ETH_FRAME_MAX,
};
use crate::pci::PciFunction;
use crate::platform::{DmaBuffer, Platform, PlatformError};

/// virtio-net feature bits (§5.1.3).
pub mod net_feature {
    /// The device finishes a TX checksum the driver left partial.
    pub const CSUM: u64 = 1 << 0;
    /// The driver accepts RX frames with partial checksums (and DATA_VALID).
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MTU: u64 = 1 << 3;
    pub const MAC: u64 = 1 << 5;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const CTRL_RX: u64 = 1 << 18;
    pub const MQ: u64 = 1 << 22;
}

/// `flags` of [`NetHeader`].
pub mod hdr_flags {
    /// The checksum from `csum_start` on is partial: finish it (sum, store at
    /// `csum_start + csum_offset`).
    pub const NEEDS_CSUM: u8 = 1;
    /// RX: the device validated the checksum (only with GUEST_CSUM).
    pub const DATA_VALID: u8 = 2;
}

/// `gso_type` "no segmentation offload".
pub const GSO_NONE: u8 = 0;
/// Config `status` bit: the link is up.
pub const S_LINK_UP: u16 = 1;
/// Control class of the multiqueue commands, and its one command.
pub const CTRL_MQ: u8 = 4;
pub const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// Control acks.
pub const CTRL_OK: u8 = 0;
pub const CTRL_ERR: u8 = 1;
/// Range of `max_virtqueue_pairs` a device may report (§5.1.4).
pub const MQ_PAIRS_MAX: u16 = 0x8000;

/// `struct virtio_net_hdr_v1` (§5.1.6): before every frame, in both directions.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct NetHeader {
    /// [`hdr_flags`].
    pub flags: u8,
    /// [`GSO_NONE`]: this driver negotiates no GSO.
    pub gso_type: u8,
    pub hdr_len: U16,
    pub gso_size: U16,
    pub csum_start: U16,
    pub csum_offset: U16,
    /// RX with MRG_RXBUF: how many buffers the frame spans.
    pub num_buffers: U16,
}

/// The start of `struct virtio_net_config` (§5.1.4), up to the fields this driver reads; speed,
/// duplex and the RSS fields follow. Read field by field at `offset_of!`.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct NetConfig {
    /// Valid with VIRTIO_NET_F_MAC.
    pub mac: [u8; 6],
    /// Valid with VIRTIO_NET_F_STATUS: [`S_LINK_UP`].
    pub status: U16,
    /// Valid with VIRTIO_NET_F_MQ.
    pub max_virtqueue_pairs: U16,
    /// Valid with VIRTIO_NET_F_MTU.
    pub mtu: U16,
}

/// The device-readable head of a control command (§5.1.6.5); its data follows, then the
/// device-writable ack byte.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct CtrlHeader {
    pub class: u8,
    pub command: u8,
}

/// The data of VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct CtrlMqPairs {
    pub virtqueue_pairs: U16,
}

const _: () = assert!(size_of::<NetHeader>() == 12 && offset_of!(NetHeader, num_buffers) == 10);
const _: () = assert!(
    size_of::<NetConfig>() == 12
        && offset_of!(NetConfig, status) == 6
        && offset_of!(NetConfig, max_virtqueue_pairs) == 8
);
const _: () = assert!(size_of::<CtrlHeader>() == 2 && size_of::<CtrlMqPairs>() == 2);

/// Offsets in [`NetConfig`], for the transport's device-config reads.
mod cfg {
    use super::NetConfig;
    use core::mem::offset_of;

    pub const MAC: u64 = offset_of!(NetConfig, mac) as u64;
    pub const STATUS: u64 = offset_of!(NetConfig, status) as u64;
    pub const MAX_PAIRS: u64 = offset_of!(NetConfig, max_virtqueue_pairs) as u64;
}

/// Features this driver asks for (when offered). No GSO, so 2048-byte buffers always suffice.
pub const DRIVER_FEATURES: u64 = feature::VERSION_1
    | feature::RING_EVENT_IDX
    | net_feature::CSUM
    | net_feature::GUEST_CSUM
    | net_feature::MAC
    | net_feature::MRG_RXBUF
    | net_feature::STATUS
    | net_feature::CTRL_VQ
    | net_feature::MQ;

/// Bytes of the header before every frame.
pub const HEADER_LEN: usize = size_of::<NetHeader>();
/// Bytes of one RX or TX buffer: a header and a full frame fit.
pub const SLOT_SIZE: usize = 2048;
const _: () = assert!(HEADER_LEN + ETH_FRAME_MAX <= SLOT_SIZE);
/// Default (and largest) queue size this driver uses.
pub const DEFAULT_QUEUE_SIZE: u16 = 256;
/// How long a control command may take.
pub const CTRL_TIMEOUT_NS: u64 = 1_000_000_000;
/// In polled mode, how often `handle_interrupt` looks at the config status (link, NEEDS_RESET).
pub const POLLED_STATUS_INTERVAL_NS: u64 = 10_000_000;
/// The MAC a device without VIRTIO_NET_F_MAC gets: locally administered, unicast
/// (02:76:6e = "vn"), then the PCI bus, device and function.
pub const FALLBACK_MAC_PREFIX: [u8; 3] = [0x02, 0x76, 0x6E];

/// How the driver takes the device's interrupts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetInterrupts {
    /// None: the caller polls.
    Polled,
    /// Legacy INTx, routed by the caller to x86 `vector`.
    Intx { vector: u8 },
    /// MSI-X to local APIC `dest_apic_id`: `config` for configuration changes (and the
    /// control queue), `pairs[i]` for queue pair `i` (its RX and TX queue have table entries
    /// of their own, both sending `pairs[i]`). At most `pairs.len()` pairs are used, and only
    /// as many as the MSI-X table has room for (`1 + 2 * pairs + 1` entries with a control
    /// queue, see [`VirtioNet::msix_entries_for`]); a table too small even for one pair gets
    /// one shared entry sending `pairs[0]`.
    Msix {
        dest_apic_id: u8,
        config: u8,
        pairs: Vec<u8>,
    },
}

/// What [`VirtioNet::new`] is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetOptions {
    /// Queue pairs wanted (1 unless more are wanted; capped by the device's
    /// `max_virtqueue_pairs`, by MQ being offered, and by the MSI-X vectors given).
    pub queue_pairs: u16,
    pub interrupts: NetInterrupts,
    /// Largest size of each RX/TX queue (the device's maximum if smaller).
    pub queue_size: u16,
    /// Features asked for, when offered ([`DRIVER_FEATURES`]; tests clear some).
    /// VERSION_1 is always asked for and required.
    pub features: u64,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            queue_pairs: 1,
            interrupts: NetInterrupts::Polled,
            queue_size: DEFAULT_QUEUE_SIZE,
            features: DRIVER_FEATURES,
        }
    }
}

/// Why [`VirtioNet::new`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetError {
    /// The transport failed (e.g. [`VirtioError::NoVersion1`]: a legacy-only device is refused).
    Virtio(VirtioError),
    Dma(PlatformError),
    /// Not a virtio-net function.
    NotNet {
        device_type: Option<u16>,
    },
    /// The device config is unusable (`max_virtqueue_pairs` out of 1..=0x8000, too few queues).
    BadConfig(&'static str),
    /// A control command got no answer in time.
    CtrlTimeout,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "virtio-net: {e}"),
            Self::Dma(e) => write!(f, "virtio-net DMA: {e}"),
            Self::NotNet { device_type } => {
                write!(f, "not a virtio-net function (type {device_type:?})")
            }
            Self::BadConfig(what) => write!(f, "virtio-net config: {what}"),
            Self::CtrlTimeout => write!(f, "virtio-net control command timed out"),
        }
    }
}

impl From<VirtioError> for NetError {
    fn from(e: VirtioError) -> Self {
        Self::Virtio(e)
    }
}
impl From<QueueError> for NetError {
    fn from(e: QueueError) -> Self {
        Self::Virtio(VirtioError::Queue(e))
    }
}
impl From<PlatformError> for NetError {
    fn from(e: PlatformError) -> Self {
        Self::Dma(e)
    }
}

/// Counters of one queue pair, beyond the [`NicCounters`] it adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PairCounters {
    /// Packets, bytes, drops, notifies of this pair; `interrupts` are those on its vector.
    pub nic: NicCounters,
    /// Completions the device got wrong (bad id, length past the buffer, bad num_buffers,
    /// a header shorter than 12 bytes, a NEEDS_CSUM outside the frame).
    pub device_errors: u64,
    /// RX frames that spanned more than one buffer (MRG_RXBUF).
    pub rx_merged: u64,
    /// RX frames whose partial checksum (NEEDS_CSUM) the driver finished.
    pub rx_csum_completed: u64,
}

/// One RX queue: its ring and the DMA region its buffers are carved from.
struct RxRing<'p, P: Platform + ?Sized> {
    vq: VirtQueue<'p, P>,
    region: Option<DmaBuffer>,
    index: u16,
    /// Buffers re-posted since the last kick check.
    unkicked: u16,
}

/// One TX queue: its ring, its slots, which are free.
struct TxRing<'p, P: Platform + ?Sized> {
    vq: VirtQueue<'p, P>,
    region: Option<DmaBuffer>,
    index: u16,
    free: Vec<u16>,
    /// Frames queued since the last flush.
    unflushed: bool,
}

struct Pair<'p, P: Platform + ?Sized> {
    rx: RxRing<'p, P>,
    tx: TxRing<'p, P>,
    counters: PairCounters,
    /// x86 vector of this pair (MSI-X or INTx), for its interrupt counter.
    vector: Option<u8>,
}

/// The control queue and its one command buffer.
struct Ctrl<'p, P: Platform + ?Sized> {
    vq: VirtQueue<'p, P>,
    buffer: Option<DmaBuffer>,
    index: u16,
}

/// A virtio-net device.
pub struct VirtioNet<'p, P: Platform + ?Sized> {
    platform: &'p P,
    transport: VirtioPci<'p, P>,
    /// Every pair set up; the first `active` carry traffic.
    pairs: Vec<Pair<'p, P>>,
    active: usize,
    ctrl: Option<Ctrl<'p, P>>,
    features: u64,
    mac: MacAddress,
    link: LinkState,
    mq_refused: bool,
    /// Distinct x86 vectors of this NIC.
    vectors: Vec<u8>,
    /// Interrupt count of each entry of `vectors`, at the last `handle_interrupt`.
    vector_counts: Vec<u64>,
    /// The config vector when it is not shared with a queue (MSI-X).
    config_vector: Option<u8>,
    intx_vector: Option<u8>,
    rx_interrupts: bool,
    next_rx_pair: usize,
    /// Reassembly of a frame that spans several buffers.
    scratch: Vec<u8>,
    /// Why the driver stopped using the device.
    fatal: Option<&'static str>,
    /// Interrupts and notifies not belonging to one pair (config, control queue).
    extra: NicCounters,
    last_status_poll_ns: u64,
}

// SAFETY: the DMA regions (raw pointers) are owned by the driver alone, and nothing in it is
// tied to a thread; moving the driver moves that ownership. `P: Sync` because `&P` is held.
unsafe impl<P: Platform + Sync + ?Sized> Send for VirtioNet<'_, P> {}

/// Token of RX/TX buffers: the slot index.
fn slot_offset(slot: u64) -> usize {
    SLOT_SIZE * slot as usize
}

impl<'p, P: Platform + ?Sized> VirtioNet<'p, P> {
    /// MSI-X table entries needed for `pairs` pairs with (or without) a control queue: the
    /// config entry, one per queue, and the control queue's.
    pub fn msix_entries_for(pairs: u16, ctrl_queue: bool) -> usize {
        1 + 2 * usize::from(pairs) + usize::from(ctrl_queue)
    }

    /// Initialise the device: negotiate features, set up the queue pairs (and the control
    /// queue), fill the RX rings, DRIVER_OK, and with MQ ask for the pairs.
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        options: NetOptions,
    ) -> Result<Self, NetError> {
        let ty = virtio_device_type(function);
        if ty != Some(device_type::NET) {
            return Err(NetError::NotNet { device_type: ty });
        }
        let mut transport = VirtioPci::new(platform, function)?;
        let offered = transport.device_features();
        let mut wanted = options.features | feature::VERSION_1;
        // MQ needs the control queue (§5.1.3.1).
        if offered & net_feature::CTRL_VQ == 0 {
            wanted &= !net_feature::MQ;
        }
        // Pairs, vectors and the interrupt mode depend on the config (max_virtqueue_pairs) and
        // on what the MSI-X table holds, so read those first: a driver may read the device
        // config before accepting features, to check it can drive the device (§3.1.1 step 4).
        let mq_offered = offered & wanted & net_feature::MQ != 0;
        let max_pairs = if mq_offered {
            let m = transport.config_read16(cfg::MAX_PAIRS)?;
            if !(1..=MQ_PAIRS_MAX).contains(&m) {
                transport.set_failed();
                return Err(NetError::BadConfig(
                    "max_virtqueue_pairs outside 1..=0x8000",
                ));
            }
            m
        } else {
            1
        };
        let ctrl_wanted = offered & wanted & net_feature::CTRL_VQ != 0;
        let mut pairs = options.queue_pairs.clamp(1, max_pairs);
        let (mode, pair_vectors, config_vector, intx_vector) = match &options.interrupts {
            NetInterrupts::Polled => (InterruptMode::Polled, Vec::new(), None, None),
            NetInterrupts::Intx { vector } => (
                InterruptMode::Intx { vector: *vector },
                vec![*vector],
                None,
                Some(*vector),
            ),
            NetInterrupts::Msix {
                dest_apic_id,
                config,
                pairs: given,
            } => {
                if given.is_empty() {
                    return Err(NetError::BadConfig("MSI-X without a pair vector"));
                }
                let table = usize::from(msix_table_size(platform, function)?.unwrap_or(0));
                pairs = pairs.min(given.len().min(usize::from(MQ_PAIRS_MAX)) as u16);
                while pairs > 1 && Self::msix_entries_for(pairs, ctrl_wanted) > table {
                    pairs -= 1;
                }
                if Self::msix_entries_for(pairs, ctrl_wanted) <= table {
                    // [config, rx0, tx0, rx1, tx1, ..., ctrl]: queue q uses entry 1 + q, and
                    // the control queue (index 2 * max_pairs) the last one.
                    let mut v = vec![*config];
                    for &pv in &given[..usize::from(pairs)] {
                        v.extend([pv, pv]);
                    }
                    if ctrl_wanted {
                        v.push(*config);
                    }
                    let mode = InterruptMode::Msix {
                        dest_apic_id: *dest_apic_id,
                        vectors: v,
                    };
                    (
                        mode,
                        given[..usize::from(pairs)].to_vec(),
                        Some(*config),
                        None,
                    )
                } else {
                    // One entry for everything.
                    pairs = 1;
                    let mode = InterruptMode::Msix {
                        dest_apic_id: *dest_apic_id,
                        vectors: vec![given[0]],
                    };
                    (mode, vec![given[0]], None, None)
                }
            }
        };
        let features = transport.begin_init(wanted, mode)?;
        let has_ctrl = features & net_feature::CTRL_VQ != 0;
        let max_pairs = if features & net_feature::MQ != 0 {
            max_pairs
        } else {
            1
        };
        let ctrl_index = 2 * max_pairs;
        let needed = if has_ctrl { ctrl_index + 1 } else { 2 * pairs };
        if transport.num_queues() < needed {
            transport.set_failed();
            return Err(NetError::BadConfig("fewer queues than the pairs need"));
        }
        let mut net = Self {
            platform,
            transport,
            pairs: Vec::new(),
            active: 1,
            ctrl: None,
            features,
            mac: [0; 6],
            link: LinkState::Up,
            mq_refused: false,
            vectors: Vec::new(),
            vector_counts: Vec::new(),
            config_vector,
            intx_vector,
            rx_interrupts: true,
            next_rx_pair: 0,
            scratch: Vec::with_capacity(ETH_FRAME_MAX),
            fatal: None,
            extra: NicCounters::default(),
            last_status_poll_ns: 0,
        };
        // On failure `net` is dropped: the device is reset and everything given back.
        if let Err(e) = net.setup(pairs, ctrl_index, &pair_vectors, options.queue_size) {
            net.transport.set_failed();
            return Err(e);
        }
        net.mac = net.read_mac(function)?;
        net.link = net.read_link()?;
        net.transport.driver_ok()?;
        for i in 0..net.pairs.len() {
            net.kick_rx(i, true);
        }
        net.active = 1;
        if pairs > 1 {
            match net.ctrl_command(CTRL_MQ, CTRL_MQ_VQ_PAIRS_SET, &pairs.to_le_bytes())? {
                CTRL_OK => net.active = usize::from(pairs),
                _ => net.mq_refused = true,
            }
        }
        let mut vectors: Vec<u8> = pair_vectors[..pair_vectors.len().min(net.active)].to_vec();
        vectors.extend(config_vector);
        vectors.sort_unstable();
        vectors.dedup();
        net.vector_counts = vectors
            .iter()
            .map(|&v| platform.interrupt_count(v))
            .collect();
        net.vectors = vectors;
        net.rx_interrupts = !matches!(net.transport.interrupt_mode(), InterruptMode::Polled);
        for p in &mut net.pairs {
            // TX completions are collected by reclaim: never interrupt for them.
            p.tx.vq.set_interrupts(false);
            p.rx.vq.set_interrupts(net.rx_interrupts);
        }
        Ok(net)
    }

    fn setup(
        &mut self,
        pairs: u16,
        ctrl_index: u16,
        pair_vectors: &[u8],
        queue_size: u16,
    ) -> Result<(), NetError> {
        let queue_size = queue_size.clamp(1, DEFAULT_QUEUE_SIZE);
        for i in 0..pairs {
            let rx_vq = self.transport.setup_queue(2 * i, queue_size)?;
            let tx_vq = self.transport.setup_queue(2 * i + 1, queue_size)?;
            let n = tx_vq.size();
            // Pushed before the regions are allocated, so that Drop gives back what exists.
            self.pairs.push(Pair {
                rx: RxRing {
                    region: None,
                    vq: rx_vq,
                    index: 2 * i,
                    unkicked: 0,
                },
                tx: TxRing {
                    vq: tx_vq,
                    region: None,
                    index: 2 * i + 1,
                    free: (0..n).rev().collect(),
                    unflushed: false,
                },
                counters: PairCounters::default(),
                vector: pair_vectors
                    .get(usize::from(i))
                    .or(pair_vectors.first())
                    .copied(),
            });
            let pair = self.pairs.last_mut().expect("just pushed");
            pair.rx.region = Some(
                self.platform
                    .dma_alloc(SLOT_SIZE * usize::from(pair.rx.vq.size()), 16)?,
            );
            pair.tx.region = Some(self.platform.dma_alloc(SLOT_SIZE * usize::from(n), 16)?);
            for slot in 0..pair.rx.vq.size() {
                Self::post_rx(&mut pair.rx, u64::from(slot))?;
            }
        }
        if self.features & net_feature::CTRL_VQ != 0 {
            let vq = self.transport.setup_queue(ctrl_index, 64)?;
            self.ctrl = Some(Ctrl {
                vq,
                buffer: None,
                index: ctrl_index,
            });
            let buffer = self.platform.dma_alloc(64, 16)?;
            if let Some(c) = self.ctrl.as_mut() {
                c.buffer = Some(buffer);
            }
        }
        Ok(())
    }

    fn read_mac(&self, function: &PciFunction) -> Result<MacAddress, NetError> {
        if self.features & net_feature::MAC == 0 {
            let a = function.address;
            let [p0, p1, p2] = FALLBACK_MAC_PREFIX;
            return Ok([p0, p1, p2, a.bus, a.device, a.function]);
        }
        // Six byte reads: retried while config_generation moves under them.
        for _ in 0..64 {
            let before = self.transport.config_generation();
            let mut mac = [0u8; 6];
            for (i, b) in mac.iter_mut().enumerate() {
                *b = self.transport.config_read8(cfg::MAC + i as u64)?;
            }
            if self.transport.config_generation() == before {
                return Ok(mac);
            }
        }
        Err(VirtioError::ConfigUnstable.into())
    }

    fn read_link(&self) -> Result<LinkState, NetError> {
        if self.features & net_feature::STATUS == 0 {
            return Ok(LinkState::Up);
        }
        let status = self.transport.config_read16(cfg::STATUS)?;
        Ok(if status & S_LINK_UP != 0 {
            LinkState::Up
        } else {
            LinkState::Down
        })
    }

    fn post_rx(rx: &mut RxRing<'p, P>, slot: u64) -> Result<(), QueueError> {
        let phys = rx
            .region
            .as_ref()
            .expect("region present until drop")
            .phys();
        let addr = phys + slot_offset(slot) as u64;
        rx.vq.add(&[], &[(addr, SLOT_SIZE as u32)], slot)?;
        rx.unkicked += 1;
        Ok(())
    }

    /// Notify RX queue of pair `i` if buffers were re-posted (`force`: any at all; else only
    /// once a quarter of the ring waits, so a busy receiver kicks rarely) and the device wants it.
    fn kick_rx(&mut self, i: usize, force: bool) {
        let pair = &mut self.pairs[i];
        let rx = &mut pair.rx;
        if rx.unkicked == 0 || (!force && rx.unkicked < (rx.vq.size() / 4).max(1)) {
            return;
        }
        rx.unkicked = 0;
        if rx.vq.kick_needed() {
            self.transport.notify(rx.index);
            pair.counters.nic.notifies += 1;
        }
    }

    /// Send a control command and wait for its ack byte.
    fn ctrl_command(&mut self, class: u8, command: u8, data: &[u8]) -> Result<u8, NetError> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err(NetError::BadConfig("no control queue"));
        };
        let buffer = ctrl.buffer.as_mut().expect("buffer present until drop");
        let out_len = size_of::<CtrlHeader>() + data.len();
        assert!(out_len < buffer.len(), "control command too long");
        let bytes = buffer.as_mut_slice();
        bytes[0] = class;
        bytes[1] = command;
        bytes[2..out_len].copy_from_slice(data);
        // An ack the device never writes reads as an error.
        bytes[out_len] = 0xFF;
        let phys = buffer.phys();
        ctrl.vq
            .add(&[(phys, out_len as u32)], &[(phys + out_len as u64, 1)], 0)?;
        if ctrl.vq.kick_needed() {
            self.transport.notify(ctrl.index);
            self.extra.notifies += 1;
        }
        let index = ctrl.index;
        let vq = &mut ctrl.vq;
        let r = self
            .transport
            .wait_for(index, CTRL_TIMEOUT_NS, || vq.pop_used());
        match r {
            Ok(Ok(_)) => {}
            // A wrong length still means the device answered; its ack byte says how.
            Ok(Err(QueueError::BadUsedLength { .. })) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(VirtioError::Timeout) => return Err(NetError::CtrlTimeout),
            Err(e) => return Err(e.into()),
        }
        // The chain is back: the device no longer writes the ack.
        Ok(ctrl.buffer.as_ref().expect("present").as_slice()[out_len])
    }

    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Queue pairs carrying traffic.
    pub fn queue_pairs(&self) -> u16 {
        self.active as u16
    }

    /// Whether the device refused the pair count asked for with MQ (the driver then uses one).
    pub fn mq_refused(&self) -> bool {
        self.mq_refused
    }

    /// Counters of pair `i` (None past [`Self::queue_pairs`]).
    pub fn pair_counters(&self, i: usize) -> Option<PairCounters> {
        self.pairs[..self.active].get(i).map(|p| p.counters)
    }

    /// The pair `send` would put `frame` on.
    pub fn tx_pair_for(&self, frame: &[u8]) -> usize {
        if self.active <= 1 {
            return 0;
        }
        flow_hash(frame).map_or(0, |h| h as usize % self.active)
    }

    /// Why the driver stopped using the device, if it did.
    pub fn fatal_error(&self) -> Option<&'static str> {
        self.fatal
    }

    /// The transport (status, ISR, vectors).
    pub fn transport(&self) -> &VirtioPci<'p, P> {
        &self.transport
    }

    /// RX buffers currently posted on pair `i` (the ring is kept full: its size).
    pub fn rx_posted(&self, i: usize) -> usize {
        self.pairs.get(i).map_or(0, |p| p.rx.vq.in_flight())
    }

    /// TX frames on pair `i` not yet reclaimed.
    pub fn tx_in_flight_on(&self, i: usize) -> usize {
        self.pairs.get(i).map_or(0, |p| p.tx.vq.in_flight())
    }

    fn check_fatal(&self) -> Result<(), NicError> {
        match self.fatal {
            Some(what) => Err(NicError::Device(what)),
            None => Ok(()),
        }
    }

    /// Stop using the device: reset it so it no longer touches our memory.
    fn fail(&mut self, what: &'static str) -> NicError {
        if self.fatal.is_none() {
            self.fatal = Some(what);
            self.transport.set_failed();
            // If the reset does not complete, Drop leaks the memory instead of freeing it.
            let _ = self.transport.reset();
        }
        NicError::Device(what)
    }

    fn reclaim_pair(&mut self, i: usize) -> Result<usize, NicError> {
        let tx = &mut self.pairs[i].tx;
        let mut n = 0;
        let mut errors = 0;
        while let Some(r) = tx.vq.pop_used() {
            match r {
                Ok((slot, _)) => {
                    tx.free.push(slot as u16);
                    n += 1;
                }
                // A TX chain has nothing for the device to write; the slot is free anyway.
                Err(QueueError::BadUsedLength { token, .. }) => {
                    tx.free.push(token as u16);
                    n += 1;
                    errors += 1;
                }
                Err(QueueError::BadUsedIndex { .. }) => {
                    return Err(self.fail("TX used index moved past the ring"));
                }
                Err(_) => errors += 1,
            }
        }
        if n > 0 {
            // Popping moved used_event along (event idx): push it out of reach again.
            tx.vq.set_interrupts(false);
        }
        self.pairs[i].counters.device_errors += errors;
        Ok(n)
    }

    /// Deliver the next frame of pair `i`, if any.
    fn receive_pair(
        &mut self,
        i: usize,
        deliver: &mut dyn FnMut(&[u8], RxInfo),
    ) -> Result<bool, NicError> {
        let mrg = self.features & net_feature::MRG_RXBUF != 0;
        let guest_csum = self.features & net_feature::GUEST_CSUM != 0;
        loop {
            let pair = &mut self.pairs[i];
            let Some(r) = pair.rx.vq.pop_used() else {
                if !self.rx_interrupts {
                    pair.rx.vq.set_interrupts(false);
                }
                self.kick_rx(i, true);
                return Ok(false);
            };
            let (slot, len) = match r {
                Ok(v) => v,
                Err(QueueError::BadUsedLength { token, .. }) => {
                    pair.counters.device_errors += 1;
                    pair.counters.nic.rx_drops += 1;
                    self.repost(i, token)?;
                    continue;
                }
                Err(QueueError::BadUsedIndex { .. }) => {
                    return Err(self.fail("RX used index moved past the ring"));
                }
                Err(_) => {
                    pair.counters.device_errors += 1;
                    pair.counters.nic.rx_drops += 1;
                    continue;
                }
            };
            let len = len as usize;
            let region = pair.rx.region.as_mut().expect("region present until drop");
            let buf = &mut region.as_mut_slice()[slot_offset(slot)..][..SLOT_SIZE];
            if len < HEADER_LEN {
                pair.counters.device_errors += 1;
                pair.counters.nic.rx_drops += 1;
                self.repost(i, slot)?;
                continue;
            }
            let header = NetHeader::read_from_bytes(&buf[..HEADER_LEN]).expect("12 bytes");
            let buffers = if mrg { header.num_buffers.get() } else { 1 };
            if buffers == 0 || buffers > pair.rx.vq.size() {
                pair.counters.device_errors += 1;
                pair.counters.nic.rx_drops += 1;
                self.repost(i, slot)?;
                continue;
            }
            let frame_len = if buffers == 1 {
                len - HEADER_LEN
            } else {
                self.scratch.clear();
                self.scratch.extend_from_slice(&buf[HEADER_LEN..len]);
                self.repost(i, slot)?;
                if !self.gather(i, buffers - 1)? {
                    let c = &mut self.pairs[i].counters;
                    c.device_errors += 1;
                    c.nic.rx_drops += 1;
                    continue;
                }
                self.scratch.len()
            };
            let pair = &mut self.pairs[i];
            let region = pair.rx.region.as_mut().expect("region present until drop");
            let frame: &mut [u8] = if buffers == 1 {
                &mut region.as_mut_slice()[slot_offset(slot) + HEADER_LEN..][..frame_len]
            } else {
                &mut self.scratch[..]
            };
            let mut info = RxInfo {
                checksum_valid: false,
                queue: i as u16,
            };
            let mut ok = (ETH_HEADER_LEN..=ETH_FRAME_MAX).contains(&frame_len);
            if ok && guest_csum {
                if header.flags & hdr_flags::NEEDS_CSUM != 0 {
                    ok = complete_partial_checksum(
                        frame,
                        header.csum_start.get().into(),
                        header.csum_offset.get().into(),
                    );
                    if ok {
                        pair.counters.rx_csum_completed += 1;
                    } else {
                        pair.counters.device_errors += 1;
                    }
                    info.checksum_valid = ok;
                } else {
                    info.checksum_valid = header.flags & hdr_flags::DATA_VALID != 0;
                }
            }
            if ok {
                deliver(frame, info);
                pair.counters.nic.rx_packets += 1;
                pair.counters.nic.rx_bytes += frame_len as u64;
                if buffers > 1 {
                    pair.counters.rx_merged += 1;
                }
            } else {
                pair.counters.nic.rx_drops += 1;
            }
            if !self.rx_interrupts {
                // Popping moved used_event along (event idx): keep RX interrupts off.
                pair.rx.vq.set_interrupts(false);
            }
            if buffers == 1 {
                self.repost(i, slot)?;
            }
            return Ok(true);
        }
    }

    /// Append the next `more` buffers of pair `i`'s RX ring to the scratch frame, re-posting
    /// each. `false` if one is missing or bad, or the frame grows past a full frame (the
    /// buffers taken are re-posted all the same).
    fn gather(&mut self, i: usize, more: u16) -> Result<bool, NicError> {
        let mut ok = true;
        for _ in 0..more {
            let pair = &mut self.pairs[i];
            let Some(r) = pair.rx.vq.pop_used() else {
                return Ok(false);
            };
            match r {
                Ok((slot, len)) => {
                    let region = pair.rx.region.as_ref().expect("region present until drop");
                    let part = &region.as_slice()[slot_offset(slot)..][..len as usize];
                    if self.scratch.len() + part.len() > ETH_FRAME_MAX {
                        ok = false;
                    } else if ok {
                        self.scratch.extend_from_slice(part);
                    }
                    self.repost(i, slot)?;
                }
                Err(QueueError::BadUsedLength { token, .. }) => {
                    ok = false;
                    self.repost(i, token)?;
                }
                Err(QueueError::BadUsedIndex { .. }) => {
                    return Err(self.fail("RX used index moved past the ring"));
                }
                Err(_) => ok = false,
            }
        }
        Ok(ok)
    }

    fn repost(&mut self, i: usize, slot: u64) -> Result<(), NicError> {
        let rx = &mut self.pairs[i].rx;
        if slot >= u64::from(rx.vq.size()) {
            // Cannot happen: the queue only hands back tokens we gave it.
            return Ok(());
        }
        match Self::post_rx(rx, slot) {
            Ok(()) => {
                self.kick_rx(i, false);
                Ok(())
            }
            Err(_) => Err(self.fail("RX ring refused a buffer")),
        }
    }

    /// Look at the device status: link, NEEDS_RESET.
    fn refresh_status(&mut self) -> bool {
        if self.transport.needs_reset() {
            self.fail("device needs reset");
            return false;
        }
        match self.read_link() {
            Ok(link) if link != self.link => {
                self.link = link;
                true
            }
            Ok(_) => false,
            Err(_) => {
                self.fail("device config unreadable");
                false
            }
        }
    }
}

/// A hash of an IPv4 frame's flow: addresses and protocol, plus the ports of an unfragmented
/// TCP or UDP datagram. `None` for anything but IPv4.
pub fn flow_hash(frame: &[u8]) -> Option<u32> {
    let ip = frame.get(ETH_HEADER_LEN..)?;
    if u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 || ip.len() < 20 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0xF) * 4;
    let protocol = ip[9];
    let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF != 0;
    // FNV-1a over the 5-tuple: cheap, and spreads the low bits the modulo uses.
    let mut h: u32 = 0x811C_9DC5;
    let mut mix = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
    };
    mix(&ip[12..20]);
    mix(&[protocol]);
    if !fragmented && (protocol == 6 || protocol == 17) && ihl >= 20 {
        if let Some(ports) = ip.get(ihl..ihl + 4) {
            mix(ports);
        }
    }
    Some(h)
}

impl<P: Platform + ?Sized> Nic for VirtioNet<'_, P> {
    fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Reads the device's status and config (two register reads): a caller that polls often
    /// should watch [`NicEvents::link_changed`] instead.
    fn link(&mut self) -> LinkState {
        if self.fatal.is_none() {
            self.refresh_status();
        }
        if self.fatal.is_some() {
            return LinkState::Down;
        }
        self.link
    }

    fn offloads(&self) -> Offloads {
        Offloads {
            tx_checksum: self.features & net_feature::CSUM != 0,
            rx_checksum: self.features & net_feature::GUEST_CSUM != 0,
        }
    }

    fn send(&mut self, frame: &[u8], checksum: TxChecksum) -> Result<(), NicError> {
        self.check_fatal()?;
        if !(ETH_HEADER_LEN..=ETH_FRAME_MAX).contains(&frame.len()) {
            self.extra.tx_drops += 1;
            return Err(NicError::BadFrameLength(frame.len()));
        }
        let i = self.tx_pair_for(frame);
        let header = match checksum {
            TxChecksum::Complete => NetHeader::default(),
            TxChecksum::Partial { start, offset } => {
                if self.features & net_feature::CSUM == 0 {
                    return Err(NicError::OffloadUnavailable);
                }
                let end = usize::from(start) + usize::from(offset) + 2;
                if end > frame.len() {
                    return Err(NicError::BadFrameLength(frame.len()));
                }
                NetHeader {
                    flags: hdr_flags::NEEDS_CSUM,
                    csum_start: U16::new(start),
                    csum_offset: U16::new(offset),
                    ..NetHeader::default()
                }
            }
        };
        if self.link == LinkState::Down {
            self.pairs[i].counters.nic.tx_drops += 1;
            return Err(NicError::LinkDown);
        }
        if self.pairs[i].tx.free.is_empty() {
            self.reclaim_pair(i)?;
        }
        let tx = &mut self.pairs[i].tx;
        let Some(slot) = tx.free.pop() else {
            return Err(NicError::TxFull);
        };
        let region = tx.region.as_mut().expect("region present until drop");
        let phys = region.phys() + slot_offset(slot.into()) as u64;
        let buf = &mut region.as_mut_slice()[slot_offset(slot.into())..][..SLOT_SIZE];
        buf[..HEADER_LEN].copy_from_slice(header.as_bytes());
        buf[HEADER_LEN..HEADER_LEN + frame.len()].copy_from_slice(frame);
        let len = (HEADER_LEN + frame.len()) as u32;
        if tx.vq.add(&[(phys, len)], &[], slot.into()).is_err() {
            tx.free.push(slot);
            return Err(self.fail("TX ring refused a frame"));
        }
        tx.unflushed = true;
        let c = &mut self.pairs[i].counters.nic;
        c.tx_packets += 1;
        c.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), NicError> {
        self.check_fatal()?;
        for pair in &mut self.pairs[..self.active] {
            if !core::mem::take(&mut pair.tx.unflushed) {
                continue;
            }
            if pair.tx.vq.kick_needed() {
                self.transport.notify(pair.tx.index);
                pair.counters.nic.notifies += 1;
            }
        }
        Ok(())
    }

    fn reclaim(&mut self) -> Result<usize, NicError> {
        self.check_fatal()?;
        let mut n = 0;
        for i in 0..self.active {
            n += self.reclaim_pair(i)?;
        }
        Ok(n)
    }

    fn tx_in_flight(&self) -> usize {
        (0..self.pairs.len()).map(|i| self.tx_in_flight_on(i)).sum()
    }

    fn receive(&mut self, deliver: &mut dyn FnMut(&[u8], RxInfo)) -> Result<bool, NicError> {
        self.check_fatal()?;
        for k in 0..self.active {
            let i = (self.next_rx_pair + k) % self.active;
            if self.receive_pair(i, deliver)? {
                self.next_rx_pair = (i + 1) % self.active;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn set_interrupts(&mut self, enabled: bool) -> bool {
        let usable = !matches!(self.transport.interrupt_mode(), InterruptMode::Polled);
        self.rx_interrupts = enabled && usable;
        for p in &mut self.pairs {
            p.rx.vq.set_interrupts(enabled && usable);
        }
        usable
    }

    fn handle_interrupt(&mut self) -> NicEvents {
        let mut events = NicEvents::default();
        if self.fatal.is_some() {
            return events;
        }
        let mut config = false;
        if let Some(v) = self.intx_vector {
            let isr = self.transport.read_isr();
            self.platform.ack_interrupt(v);
            if isr.queue || isr.config {
                self.extra.interrupts += 1;
            }
            config = isr.config;
        } else if !self.vectors.is_empty() {
            for (k, &v) in self.vectors.iter().enumerate() {
                let now = self.platform.interrupt_count(v);
                let delta = now.wrapping_sub(self.vector_counts[k]);
                self.vector_counts[k] = now;
                if delta == 0 {
                    continue;
                }
                if Some(v) == self.config_vector {
                    config = true;
                    self.extra.interrupts += delta;
                } else if let Some(p) = self.pairs[..self.active]
                    .iter_mut()
                    .find(|p| p.vector == Some(v))
                {
                    p.counters.nic.interrupts += delta;
                }
                // One shared vector: it may have been a config change too.
                if self.config_vector.is_none() {
                    config = true;
                }
            }
        } else {
            let now = self.platform.now_ns();
            if now.wrapping_sub(self.last_status_poll_ns) >= POLLED_STATUS_INTERVAL_NS {
                self.last_status_poll_ns = now;
                config = true;
            }
        }
        if config && self.refresh_status() {
            events.link_changed = true;
        }
        if self.fatal.is_some() {
            events.link_changed = true;
            return events;
        }
        for p in &self.pairs[..self.active] {
            events.rx |= p.rx.vq.has_used();
            events.tx |= p.tx.vq.has_used();
        }
        events
    }

    fn interrupt_vectors(&self) -> &[u8] {
        &self.vectors
    }

    fn counters(&self) -> NicCounters {
        let mut total = self.extra;
        for p in &self.pairs {
            let c = &p.counters.nic;
            total.tx_packets += c.tx_packets;
            total.tx_bytes += c.tx_bytes;
            total.tx_drops += c.tx_drops;
            total.rx_packets += c.rx_packets;
            total.rx_bytes += c.rx_bytes;
            total.rx_drops += c.rx_drops;
            total.interrupts += c.interrupts;
            total.notifies += c.notifies;
        }
        total
    }
}

impl<P: Platform + ?Sized> Drop for VirtioNet<'_, P> {
    fn drop(&mut self) {
        // Stop the device before its rings and buffers are freed. If it will not reset, leak
        // the memory rather than let it DMA into freed pages.
        let stopped = self.transport.reset().is_ok();
        let mut regions = Vec::new();
        for p in &mut self.pairs {
            regions.extend(p.rx.region.take());
            regions.extend(p.tx.region.take());
            if !stopped {
                p.rx.vq.leak_rings();
                p.tx.vq.leak_rings();
            }
        }
        if let Some(c) = self.ctrl.as_mut() {
            regions.extend(c.buffer.take());
            if !stopped {
                c.vq.leak_rings();
            }
        }
        if stopped {
            for r in regions {
                self.platform.dma_free(r);
            }
        }
        // Otherwise `regions` is dropped without `dma_free`: DmaBuffer has no destructor, so
        // the memory leaks, as it must while the device may still write it.
    }
}
