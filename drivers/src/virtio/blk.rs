//! virtio-blk (virtio 1.x §5.2) over the modern PCI transport: one request queue, or up to
//! [`MAX_QUEUES`] with VIRTIO_BLK_F_MQ (batches go to them in turn). With VIRTIO_F_INDIRECT_DESC
//! each request takes one ring slot pointing at its own pre-allocated indirect table; with
//! VIRTIO_F_EVENT_IDX kicks and interrupts follow the event indices (none while polled).
//!
//! Two APIs: synchronous [`VirtioBlk::read`] / [`VirtioBlk::write`] / [`VirtioBlk::flush`] /
//! [`VirtioBlk::get_id`] (bounce buffers, one request at a time), and a submit/complete API for
//! many requests in flight: `submit_*` take ownership of a caller's [`DmaBuffer`], [`VirtioBlk::notify`]
//! kicks the device once per batch, and [`VirtioBlk::poll_completions`] hands results (and the
//! buffers) back, in whatever order the device completes them.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::ptr;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::feature;
use super::pci::{InterruptMode, VirtioError, VirtioPci};
use super::queue::{QueueError, RawDesc, VirtQueue};
use crate::pci::PciFunction;
use crate::platform::{DmaBuffer, Platform, PlatformError};

/// virtio device type of block devices.
pub const VIRTIO_ID_BLOCK: u16 = 2;
/// Size of a virtio-blk sector (capacity and `sector` are always in these units).
pub const SECTOR_SIZE: usize = 512;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;
/// Default completion timeout of the synchronous API.
pub const DEFAULT_TIMEOUT_NS: u64 = 5_000_000_000;

/// virtio-blk feature bits.
pub mod blk_feature {
    pub const SIZE_MAX: u64 = 1 << 1;
    pub const SEG_MAX: u64 = 1 << 2;
    pub const GEOMETRY: u64 = 1 << 4;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const TOPOLOGY: u64 = 1 << 10;
    pub const CONFIG_WCE: u64 = 1 << 11;
    pub const DISCARD: u64 = 1 << 13;
    pub const WRITE_ZEROES: u64 = 1 << 14;
    pub const MQ: u64 = 1 << 12;
}

/// Request types.
pub mod req_type {
    pub const IN: u32 = 0;
    pub const OUT: u32 = 1;
    pub const FLUSH: u32 = 4;
    pub const GET_ID: u32 = 8;
    pub const DISCARD: u32 = 11;
    pub const WRITE_ZEROES: u32 = 13;
}

/// Request status values.
pub mod req_status {
    pub const OK: u8 = 0;
    pub const IOERR: u8 = 1;
    pub const UNSUPP: u8 = 2;
}

/// The start of `struct virtio_blk_config` (§5.2.4), up to the fields this driver reads; the
/// topology, writeback and discard fields follow. Read field by field through the transport
/// (`config_read*` at `offset_of!`), never as a whole.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BlkConfig {
    /// In 512-byte sectors, whatever `blk_size` says.
    pub capacity: U64,
    pub size_max: U32,
    pub seg_max: U32,
    pub geometry: BlkGeometry,
    pub blk_size: U32,
}

/// `struct virtio_blk_geometry`, inside [`BlkConfig`].
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct BlkGeometry {
    pub cylinders: U16,
    pub heads: u8,
    pub sectors: u8,
}

/// The device-readable head of a request, `struct virtio_blk_req` up to the data (§5.2.6).
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct RequestHeader {
    /// One of [`req_type`].
    pub kind: U32,
    pub reserved: U32,
    pub sector: U64,
}

/// One request's metadata in DMA memory: the header (device-readable), then the status byte
/// (device-writable), padded so that each slot's header stays 16-aligned.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
struct MetaSlot {
    header: RequestHeader,
    status: u8,
    padding: [u8; 15],
}

const _: () = assert!(size_of::<BlkConfig>() == 24 && offset_of!(BlkConfig, blk_size) == 20);
const _: () = assert!(size_of::<BlkGeometry>() == 4);
const _: () = assert!(size_of::<RequestHeader>() == 16);
const _: () = assert!(size_of::<MetaSlot>() == 32);

/// Offsets in [`BlkConfig`], for the transport's device-config reads.
mod cfg {
    use super::BlkConfig;
    use core::mem::offset_of;

    pub const CAPACITY: u64 = offset_of!(BlkConfig, capacity) as u64;
    pub const SIZE_MAX: u64 = offset_of!(BlkConfig, size_max) as u64;
    pub const SEG_MAX: u64 = offset_of!(BlkConfig, seg_max) as u64;
    pub const BLK_SIZE: u64 = offset_of!(BlkConfig, blk_size) as u64;
    /// `num_queues` (§5.2.4): after the 8 bytes of topology at 24, `writeback` and a reserved
    /// byte.
    pub const NUM_QUEUES: u64 = 34;
}

/// Features this driver asks for.
pub const DRIVER_FEATURES: u64 = feature::VERSION_1
    | blk_feature::SIZE_MAX
    | blk_feature::SEG_MAX
    | blk_feature::RO
    | blk_feature::BLK_SIZE
    | blk_feature::FLUSH
    | blk_feature::DISCARD
    | blk_feature::WRITE_ZEROES
    | FAST_PATH_FEATURES;

/// The fast-path features, asked for when offered and masked off together by the kernel's
/// `blk_features=none`.
pub const FAST_PATH_FEATURES: u64 =
    feature::RING_EVENT_IDX | feature::RING_INDIRECT_DESC | blk_feature::MQ;

/// Request queues set up at most, whatever the device's num_queues.
pub const MAX_QUEUES: u16 = 4;

/// Status byte value before the device writes it.
const STATUS_UNSET: u8 = 0xFF;
/// Bytes of one request's [`MetaSlot`].
const META_SLOT: usize = size_of::<MetaSlot>();
/// Where the status byte sits in a [`MetaSlot`].
const META_STATUS: usize = offset_of!(MetaSlot, status);
/// Largest bounce buffer of the synchronous API.
const MAX_SYNC_CHUNK: usize = 64 * 1024;
/// Tokens at or above this belong to raw chains ([`VirtioBlk::submit_raw`]).
const RAW_TOKEN_BASE: u64 = 1 << 48;
/// Data buffers of one request at most ([`VirtioBlk::submit_read_segments`]).
pub const MAX_SEGMENTS: usize = 16;
/// Descriptors of one request's indirect table: header, data segments, status.
const INDIRECT_DESCS: usize = MAX_SEGMENTS + 2;
/// Bytes of one slot's indirect table.
const INDIRECT_TABLE: usize = INDIRECT_DESCS * size_of::<super::queue::Descriptor>();
/// A kick the device's event index suppressed is sent anyway after this long without a
/// completion on that queue: a device that writes a garbage avail_event then costs a delay,
/// never a lost request. One background tick of the kernel.
const REKICK_NS: u64 = 10_000_000;

/// Errors of the block driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlkError {
    Virtio(VirtioError),
    Queue(QueueError),
    Dma(PlatformError),
    /// The request reaches past the end of the disk; not submitted.
    OutOfRange {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    /// Data length is zero, not a multiple of 512, or above u32::MAX.
    BadLength(usize),
    /// Data length is above the device's size_max.
    TooLarge {
        len: usize,
        max: u32,
    },
    /// The device is read-only (VIRTIO_BLK_F_RO); not submitted.
    ReadOnly,
    /// The feature a request needs was not negotiated; not submitted.
    NotNegotiated(u64),
    /// More data, discard or write-zeroes segments than the device (or the driver, for data:
    /// [`MAX_SEGMENTS`]) takes, or none; not submitted.
    TooManySegments {
        segments: usize,
        max: u32,
    },
    /// A discard or write-zeroes segment above the device's sector limit; not submitted.
    TooManySectors {
        sectors: u32,
        max: u32,
    },
    /// The device answered VIRTIO_BLK_S_IOERR.
    IoError,
    /// The device answered VIRTIO_BLK_S_UNSUPP.
    Unsupported,
    /// The device answered an unknown status (0xFF: it never wrote one).
    BadStatus(u8),
    /// No free request slot or descriptors; retry after completions.
    QueueFull,
    /// A buffer is too small for the request.
    BufferTooSmall {
        len: usize,
        needed: usize,
    },
    /// The request was in flight when the queue broke (device reset).
    Aborted,
    /// The device completed a read with status OK but reported fewer bytes written than the
    /// data and status byte: the rest of the buffer is stale, so the read failed.
    ShortRead {
        written: u32,
        expected: u32,
    },
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Virtio(e) => write!(f, "virtio-blk: {e}"),
            Self::Queue(e) => write!(f, "virtio-blk queue: {e}"),
            Self::Dma(e) => write!(f, "virtio-blk DMA: {e}"),
            other => write!(f, "virtio-blk: {other:?}"),
        }
    }
}

impl From<VirtioError> for BlkError {
    fn from(e: VirtioError) -> Self {
        match e {
            VirtioError::Queue(q) => Self::Queue(q),
            e => Self::Virtio(e),
        }
    }
}
impl From<QueueError> for BlkError {
    fn from(e: QueueError) -> Self {
        Self::Queue(e)
    }
}
impl From<PlatformError> for BlkError {
    fn from(e: PlatformError) -> Self {
        Self::Dma(e)
    }
}

mod discard;
pub use discard::{DiscardLimits, DiscardSegment};

/// Identifies a submitted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A submission that was refused; the caller gets its buffer (or segments) back.
#[derive(Debug)]
pub struct SubmitError {
    pub error: BlkError,
    pub buffer: Option<DmaBuffer>,
    /// The segments of a refused segmented request, in order (empty otherwise).
    pub segments: Vec<DmaBuffer>,
}

/// A finished request.
#[derive(Debug)]
pub struct Completion {
    pub id: RequestId,
    /// Bytes the device reports written (data + status byte) on success.
    pub result: Result<u32, BlkError>,
    /// The data buffer given at submission (for GET_ID, a 20-byte buffer holding the ID).
    /// The caller owns it again and must `dma_free` it eventually.
    pub buffer: Option<DmaBuffer>,
    /// The data buffers of a segmented request, in order (empty otherwise); the caller owns
    /// them again.
    pub segments: Vec<DmaBuffer>,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    buffer: Option<DmaBuffer>,
    segments: Vec<DmaBuffer>,
    /// Bytes the device must report written for a successful read (data + status byte); 0 for
    /// requests whose data it does not fill.
    must_write: u32,
}

/// One request queue and what its requests use: a metadata slot (header and status) and, with
/// INDIRECT_DESC, an indirect table per ring entry, all allocated once at set-up.
struct ReqQueue<'p, P: Platform + ?Sized> {
    index: u16,
    vq: VirtQueue<'p, P>,
    meta: Option<DmaBuffer>,
    tables: Option<DmaBuffer>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u16>,
    /// When a kick was last held back by the device's avail_event with requests in flight
    /// (cleared by a kick or a completion).
    kick_suppressed_at: Option<u64>,
    completed: u64,
    /// Notifications [`VirtioBlk::notify`] sent.
    kicks: u64,
    /// Notifications sent again for a kick the device's avail_event held back.
    rekicks: u64,
}

impl<'p, P: Platform + ?Sized> ReqQueue<'p, P> {
    fn new(
        platform: &'p P,
        transport: &mut VirtioPci<'p, P>,
        index: u16,
        max_queue_size: u16,
        indirect: bool,
    ) -> Result<Self, BlkError> {
        let vq = transport.setup_queue(index, max_queue_size)?;
        let n = usize::from(vq.size());
        let meta = platform.dma_alloc(META_SLOT * n, 16)?;
        let tables = if indirect {
            match platform.dma_alloc(INDIRECT_TABLE * n, 16) {
                Ok(t) => Some(t),
                Err(e) => {
                    platform.dma_free(meta);
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        Ok(Self {
            index,
            vq,
            meta: Some(meta),
            tables,
            slots: (0..n).map(|_| None).collect(),
            free_slots: (0..n as u16).rev().collect(),
            kick_suppressed_at: None,
            completed: 0,
            kicks: 0,
            rekicks: 0,
        })
    }

    fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    fn holds(&self, id: RequestId) -> bool {
        self.slots.iter().flatten().any(|s| s.id == id.0)
    }

    /// Kick again a queue whose kick was suppressed and which has seen no completion since.
    fn rekick_if_stale(&mut self, transport: &VirtioPci<'p, P>, now_ns: impl FnOnce() -> u64) {
        let Some(since) = self.kick_suppressed_at else {
            return;
        };
        if now_ns().saturating_sub(since) >= REKICK_NS {
            transport.notify(self.index);
            self.rekicks += 1;
            self.kick_suppressed_at = None;
        }
    }

    /// Move everything the device returned into `ready`.
    fn reap(&mut self, ready: &mut VecDeque<Completion>, device_errors: &mut Vec<QueueError>) {
        while let Some(r) = self.vq.pop_used() {
            let (token, result) = match r {
                Ok((token, len)) => (token, Ok(len)),
                Err(e @ QueueError::BadUsedLength { token, .. }) => (token, Err(e)),
                Err(e) => {
                    device_errors.push(e);
                    continue;
                }
            };
            // The device is making progress: a held-back kick is not lost.
            self.kick_suppressed_at = None;
            self.completed += 1;
            if token >= RAW_TOKEN_BASE {
                ready.push_back(Completion {
                    id: RequestId(token - RAW_TOKEN_BASE),
                    result: result.map_err(BlkError::Queue),
                    buffer: None,
                    segments: Vec::new(),
                });
                continue;
            }
            let index = token as usize;
            let Some(slot) = self.slots.get_mut(index).and_then(Option::take) else {
                continue; // cannot happen: the queue only returns tokens we gave it
            };
            self.free_slots.push(index as u16);
            let result = result.map_err(BlkError::Queue).and_then(|len| {
                let meta = self.meta.as_ref().expect("meta present until drop");
                // SAFETY: index < n so META_SLOT * index + META_STATUS < meta.len; the chain is
                // back from the device, so it no longer writes this byte. Volatile: DMA memory.
                let status = unsafe {
                    ptr::read_volatile(meta.as_mut_ptr().add(META_SLOT * index + META_STATUS))
                };
                match status {
                    req_status::OK if len < slot.must_write => Err(BlkError::ShortRead {
                        written: len,
                        expected: slot.must_write,
                    }),
                    req_status::OK => Ok(len),
                    req_status::IOERR => Err(BlkError::IoError),
                    req_status::UNSUPP => Err(BlkError::Unsupported),
                    s => Err(BlkError::BadStatus(s)),
                }
            });
            ready.push_back(Completion {
                id: RequestId(slot.id),
                result,
                buffer: slot.buffer,
                segments: slot.segments,
            });
        }
    }

    /// Give the memory back (the device has been reset), or leak it if `leak` (it could not be).
    fn release(&mut self, platform: &P, leak: bool) {
        if leak {
            self.vq.leak_rings();
            // DmaBuffer has no destructor: dropping without `dma_free` leaks.
            self.meta = None;
            self.tables = None;
            self.slots.clear();
            return;
        }
        for slot in self.slots.iter_mut().filter_map(Option::take) {
            for b in slot.buffer.into_iter().chain(slot.segments) {
                platform.dma_free(b);
            }
        }
        for b in [self.meta.take(), self.tables.take()].into_iter().flatten() {
            platform.dma_free(b);
        }
    }
}

/// A virtio-blk device.
pub struct VirtioBlk<'p, P: Platform + ?Sized> {
    platform: &'p P,
    transport: VirtioPci<'p, P>,
    queues: Vec<ReqQueue<'p, P>>,
    /// The queue this batch's submissions go to; [`VirtioBlk::notify`] moves it on.
    submit_queue: usize,
    next_id: u64,
    ready: VecDeque<Completion>,
    device_errors: Vec<QueueError>,
    features: u64,
    capacity: u64,
    blk_size: u32,
    size_max: Option<u32>,
    seg_max: Option<u32>,
    timeout_ns: u64,
}

impl<'p, P: Platform + ?Sized> VirtioBlk<'p, P> {
    /// Initialise the device: negotiate [`DRIVER_FEATURES`], set up queue 0 with at most
    /// `max_queue_size` entries, read the configuration, DRIVER_OK.
    pub fn new(
        platform: &'p P,
        function: &PciFunction,
        mode: InterruptMode,
        max_queue_size: u16,
    ) -> Result<Self, BlkError> {
        Self::with_features(platform, function, mode, max_queue_size, DRIVER_FEATURES)
    }

    /// As [`Self::new`], asking for `wanted` features (VERSION_1 is always asked for).
    pub fn with_features(
        platform: &'p P,
        function: &PciFunction,
        mode: InterruptMode,
        max_queue_size: u16,
        wanted: u64,
    ) -> Result<Self, BlkError> {
        let mut transport = VirtioPci::new(platform, function)?;
        let polled = matches!(mode, InterruptMode::Polled);
        let features = transport.begin_init(wanted, mode)?;
        let fail = |t: &VirtioPci<'p, P>, e: BlkError| {
            t.set_failed();
            e
        };
        let config = (|| -> Result<_, VirtioError> {
            let capacity = transport.config_read64(cfg::CAPACITY)?;
            let blk_size = if features & blk_feature::BLK_SIZE != 0 {
                transport.config_read32(cfg::BLK_SIZE)?
            } else {
                SECTOR_SIZE as u32
            };
            let size_max = if features & blk_feature::SIZE_MAX != 0 {
                Some(transport.config_read32(cfg::SIZE_MAX)?)
            } else {
                None
            };
            let seg_max = if features & blk_feature::SEG_MAX != 0 {
                Some(transport.config_read32(cfg::SEG_MAX)?)
            } else {
                None
            };
            let num_queues = if features & blk_feature::MQ != 0 {
                transport.config_read16(cfg::NUM_QUEUES)?
            } else {
                1
            };
            Ok((capacity, blk_size, size_max, seg_max, num_queues))
        })();
        let (capacity, blk_size, size_max, seg_max, num_queues) = match config {
            Ok(c) => c,
            Err(e) => return Err(fail(&transport, e.into())),
        };
        // A device that says 0 still has its first queue; the transport may have fewer.
        let num_queues = num_queues
            .clamp(1, MAX_QUEUES)
            .min(transport.num_queues().max(1));
        let indirect = features & feature::RING_INDIRECT_DESC != 0;
        let mut queues: Vec<ReqQueue<'p, P>> = Vec::with_capacity(usize::from(num_queues));
        for index in 0..num_queues {
            match ReqQueue::new(platform, &mut transport, index, max_queue_size, indirect) {
                Ok(mut q) => {
                    if polled {
                        // Nobody waits for an interrupt: ask the device for none.
                        q.vq.set_interrupts(false);
                    }
                    queues.push(q);
                }
                Err(e) => {
                    for q in &mut queues {
                        q.release(platform, false);
                    }
                    return Err(fail(&transport, e));
                }
            }
        }
        let mut blk = Self {
            platform,
            transport,
            queues,
            submit_queue: 0,
            next_id: 0,
            ready: VecDeque::new(),
            device_errors: Vec::new(),
            features,
            capacity,
            blk_size,
            size_max,
            seg_max,
            timeout_ns: DEFAULT_TIMEOUT_NS,
        };
        blk.transport.driver_ok()?;
        Ok(blk)
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    /// Logical block size (512 unless VIRTIO_BLK_F_BLK_SIZE says otherwise).
    pub fn blk_size(&self) -> u32 {
        self.blk_size
    }
    /// Negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }
    pub fn read_only(&self) -> bool {
        self.features & blk_feature::RO != 0
    }
    /// size_max, if negotiated.
    pub fn size_max(&self) -> Option<u32> {
        self.size_max
    }
    /// seg_max, if negotiated.
    pub fn seg_max(&self) -> Option<u32> {
        self.seg_max
    }
    /// Set the timeout of the synchronous API.
    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }
    /// The transport (status, ISR, interrupt vectors).
    pub fn transport(&self) -> &VirtioPci<'p, P> {
        &self.transport
    }
    /// The first request queue (for inspection in tests).
    pub fn queue(&self) -> &VirtQueue<'p, P> {
        &self.queues[0].vq
    }
    /// Request queues in use (more than one only with VIRTIO_BLK_F_MQ).
    pub fn num_queues(&self) -> usize {
        self.queues.len()
    }
    /// Requests completed on queue `index` so far (0 for a queue that does not exist).
    pub fn completed_on(&self, index: usize) -> u64 {
        self.queues.get(index).map_or(0, |q| q.completed)
    }
    /// Notifications [`Self::notify`] sent so far, on every queue.
    pub fn kicks(&self) -> u64 {
        self.queues.iter().map(|q| q.kicks).sum()
    }
    /// Notifications sent again, after a held-back kick saw no completion for 10 ms.
    pub fn rekicks(&self) -> u64 {
        self.queues.iter().map(|q| q.rekicks).sum()
    }
    /// Whether requests go through indirect tables (VIRTIO_F_INDIRECT_DESC negotiated).
    pub fn uses_indirect(&self) -> bool {
        self.features & feature::RING_INDIRECT_DESC != 0
    }
    /// Whether kicks and interrupts follow event indices (VIRTIO_F_EVENT_IDX negotiated).
    pub fn uses_event_idx(&self) -> bool {
        self.features & feature::RING_EVENT_IDX != 0
    }
    /// Queue protocol errors that could not be tied to a request (bad used ids).
    pub fn take_device_errors(&mut self) -> Vec<QueueError> {
        core::mem::take(&mut self.device_errors)
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().map(ReqQueue::in_flight).sum()
    }

    fn check_data(&self, len: usize) -> Result<u64, BlkError> {
        if len == 0 || !len.is_multiple_of(SECTOR_SIZE) || u32::try_from(len).is_err() {
            return Err(BlkError::BadLength(len));
        }
        if let Some(max) = self.size_max {
            if len > max as usize {
                return Err(BlkError::TooLarge { len, max });
            }
        }
        Ok((len / SECTOR_SIZE) as u64)
    }

    fn check_range(&self, sector: u64, sectors: u64) -> Result<(), BlkError> {
        match sector.checked_add(sectors) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(BlkError::OutOfRange {
                sector,
                sectors,
                capacity: self.capacity,
            }),
        }
    }

    /// Read `buffer.len` bytes (a multiple of 512) from `sector` into `buffer`.
    pub fn submit_read(
        &mut self,
        sector: u64,
        buffer: DmaBuffer,
    ) -> Result<RequestId, SubmitError> {
        self.submit_checked(req_type::IN, sector, buffer)
    }

    /// As [`Self::submit_read`] without the capacity check (to test the device's own check).
    pub fn submit_read_unchecked(
        &mut self,
        sector: u64,
        buffer: DmaBuffer,
    ) -> Result<RequestId, SubmitError> {
        self.submit(req_type::IN, sector, Some(buffer), true)
    }

    /// Write `buffer` (a multiple of 512 bytes) at `sector`.
    pub fn submit_write(
        &mut self,
        sector: u64,
        buffer: DmaBuffer,
    ) -> Result<RequestId, SubmitError> {
        self.submit_checked(req_type::OUT, sector, buffer)
    }

    /// A read (IN) or write (OUT) after the driver's own checks: length, size_max, capacity,
    /// and for writes a read-only device. A refused request gets its buffer back.
    fn submit_checked(
        &mut self,
        kind: u32,
        sector: u64,
        buffer: DmaBuffer,
    ) -> Result<RequestId, SubmitError> {
        let device_writes = kind == req_type::IN;
        let checked = if !device_writes && self.read_only() {
            Err(BlkError::ReadOnly)
        } else {
            self.check_data(buffer.len())
                .and_then(|n| self.check_range(sector, n))
        };
        match checked {
            Ok(()) => self.submit(kind, sector, Some(buffer), device_writes),
            Err(error) => Err(SubmitError {
                error,
                buffer: Some(buffer),
                segments: Vec::new(),
            }),
        }
    }

    /// As [`Self::submit_write`] without the capacity and read-only checks.
    pub fn submit_write_unchecked(
        &mut self,
        sector: u64,
        buffer: DmaBuffer,
    ) -> Result<RequestId, SubmitError> {
        self.submit(req_type::OUT, sector, Some(buffer), false)
    }

    /// Flush the device's write cache (submitted even if VIRTIO_BLK_F_FLUSH was not negotiated;
    /// the device may then answer UNSUPP).
    pub fn submit_flush(&mut self) -> Result<RequestId, SubmitError> {
        self.submit(req_type::FLUSH, 0, None, false)
    }

    /// Ask for the device ID; the completion's buffer holds the 20 bytes.
    pub fn submit_get_id(&mut self) -> Result<RequestId, SubmitError> {
        let buffer = self
            .platform
            .dma_alloc(ID_LEN, 8)
            .map_err(|e| SubmitError {
                error: e.into(),
                buffer: None,
                segments: Vec::new(),
            })?;
        self.submit(req_type::GET_ID, 0, Some(buffer), true)
    }

    /// Any request type, unchecked (for device-error tests, e.g. an unsupported type).
    pub fn submit_request_unchecked(
        &mut self,
        kind: u32,
        sector: u64,
        buffer: Option<DmaBuffer>,
        device_writes: bool,
    ) -> Result<RequestId, SubmitError> {
        self.submit(kind, sector, buffer, device_writes)
    }

    /// Post a raw descriptor chain on the request queue (see [`VirtQueue::add_raw_chain`]).
    /// Its completion comes back from [`Self::poll_completions`] with no buffer.
    ///
    /// # Safety
    /// As for [`VirtQueue::add_raw_chain`]: the device may access every address given.
    pub unsafe fn submit_raw(&mut self, descs: &[RawDesc]) -> Result<RequestId, BlkError> {
        let id = self.next_id;
        self.next_id += 1;
        let token = RAW_TOKEN_BASE + id;
        // SAFETY: forwarded to our caller.
        unsafe { self.queues[0].vq.add_raw_chain(descs, token) }?;
        Ok(RequestId(id))
    }

    fn submit(
        &mut self,
        kind: u32,
        sector: u64,
        buffer: Option<DmaBuffer>,
        device_writes: bool,
    ) -> Result<RequestId, SubmitError> {
        self.submit_chain(kind, sector, buffer, Vec::new(), device_writes)
    }

    /// Read into `segments` in order, one request from `sector` (header, every segment,
    /// status): through one indirect table when negotiated. Each segment a multiple of 512
    /// bytes and at most size_max; at most [`MAX_SEGMENTS`] and seg_max of them. The
    /// completion gives the segments back in `Completion::segments`.
    pub fn submit_read_segments(
        &mut self,
        sector: u64,
        segments: Vec<DmaBuffer>,
    ) -> Result<RequestId, SubmitError> {
        self.submit_segments_checked(req_type::IN, sector, segments)
    }

    /// Write `segments` in order, one request at `sector` (see
    /// [`Self::submit_read_segments`]).
    pub fn submit_write_segments(
        &mut self,
        sector: u64,
        segments: Vec<DmaBuffer>,
    ) -> Result<RequestId, SubmitError> {
        self.submit_segments_checked(req_type::OUT, sector, segments)
    }

    fn submit_segments_checked(
        &mut self,
        kind: u32,
        sector: u64,
        segments: Vec<DmaBuffer>,
    ) -> Result<RequestId, SubmitError> {
        let device_writes = kind == req_type::IN;
        let limit = self
            .seg_max
            .map_or(MAX_SEGMENTS, |m| (m as usize).min(MAX_SEGMENTS));
        let checked = (|| {
            if !device_writes && self.read_only() {
                return Err(BlkError::ReadOnly);
            }
            if segments.is_empty() || segments.len() > limit {
                return Err(BlkError::TooManySegments {
                    segments: segments.len(),
                    max: limit as u32,
                });
            }
            let mut sectors = 0u64;
            for b in &segments {
                sectors += self.check_data(b.len())?;
            }
            if sectors * SECTOR_SIZE as u64 > u64::from(u32::MAX) {
                return Err(BlkError::BadLength((sectors as usize) * SECTOR_SIZE));
            }
            self.check_range(sector, sectors)
        })();
        match checked {
            Ok(()) => self.submit_chain(kind, sector, None, segments, device_writes),
            Err(error) => Err(SubmitError {
                error,
                buffer: None,
                segments,
            }),
        }
    }

    /// Post one request: header, the data (`buffer`, or `segments` in order; device-writable
    /// if `device_writes`), status. Through the slot's indirect table when negotiated.
    fn submit_chain(
        &mut self,
        kind: u32,
        sector: u64,
        buffer: Option<DmaBuffer>,
        segments: Vec<DmaBuffer>,
        device_writes: bool,
    ) -> Result<RequestId, SubmitError> {
        let refuse = |error, buffer, segments| {
            Err(SubmitError {
                error,
                buffer,
                segments,
            })
        };
        let q = &mut self.queues[self.submit_queue];
        if q.vq.is_broken() {
            return refuse(BlkError::Queue(QueueError::Broken), buffer, segments);
        }
        let data_count = usize::from(buffer.is_some()) + segments.len();
        if data_count > MAX_SEGMENTS {
            let error = BlkError::TooManySegments {
                segments: data_count,
                max: MAX_SEGMENTS as u32,
            };
            return refuse(error, buffer, segments);
        }
        let needed = if q.tables.is_some() {
            1
        } else {
            2 + data_count
        };
        let Some(slot) = q.free_slots.pop() else {
            return refuse(BlkError::QueueFull, buffer, segments);
        };
        if usize::from(q.vq.num_free()) < needed {
            q.free_slots.push(slot);
            return refuse(BlkError::QueueFull, buffer, segments);
        }
        let meta = q.meta.as_ref().expect("meta present until drop");
        let base = META_SLOT * usize::from(slot);
        let header = RequestHeader {
            kind: U32::new(kind),
            reserved: U32::ZERO,
            sector: U64::new(sector),
        };
        // SAFETY: base + META_SLOT ≤ META_SLOT * n = meta.len; the slot is ours (not in
        // flight), so the device is not accessing it; the structs have alignment 1. Volatile:
        // the memory is DMA-visible.
        unsafe {
            let p = meta.as_mut_ptr().add(base);
            ptr::write_volatile(p.cast::<RequestHeader>(), header);
            ptr::write_volatile(p.add(META_STATUS), STATUS_UNSET);
        }
        let header = (meta.phys() + base as u64, size_of::<RequestHeader>() as u32);
        let status = (meta.phys() + (base + META_STATUS) as u64, 1u32);
        // Header, data (either direction), status, in an array: no allocation per request.
        let mut chain = [(0u64, 0u32); INDIRECT_DESCS];
        chain[0] = header;
        let mut data_len = 0u32;
        for (i, b) in buffer.iter().chain(&segments).enumerate() {
            chain[1 + i] = (b.phys(), b.len() as u32);
            data_len = data_len.saturating_add(b.len() as u32);
        }
        chain[1 + data_count] = status;
        let len = 2 + data_count;
        let out_len = if device_writes { 1 } else { 1 + data_count };
        let (out, inb) = chain[..len].split_at(out_len);
        let added = match &q.tables {
            Some(tables) => q.vq.add_indirect(
                tables,
                INDIRECT_TABLE * usize::from(slot),
                out,
                inb,
                u64::from(slot),
            ),
            None => q.vq.add(out, inb, u64::from(slot)),
        };
        if let Err(e) = added {
            q.free_slots.push(slot);
            return refuse(e.into(), buffer, segments);
        }
        let id = self.next_id;
        self.next_id += 1;
        let must_write = if kind == req_type::IN && data_count > 0 {
            data_len + 1
        } else {
            0
        };
        q.slots[usize::from(slot)] = Some(Slot {
            id,
            buffer,
            segments,
            must_write,
        });
        Ok(RequestId(id))
    }

    /// Notify the device if it wants it (call once after a batch of submissions): each queue
    /// with new requests is kicked unless its event index or flags say the device is looking
    /// already. The next batch goes to the next queue.
    pub fn notify(&mut self) {
        let batch_posted = self.queues[self.submit_queue].vq.unchecked_publications();
        for q in &mut self.queues {
            let published = q.vq.unchecked_publications();
            if q.vq.kick_needed() {
                self.transport.notify(q.index);
                q.kicks += 1;
                q.kick_suppressed_at = None;
            } else if published && q.kick_suppressed_at.is_none() {
                q.kick_suppressed_at = Some(self.platform.now_ns());
            }
        }
        if batch_posted {
            self.submit_queue = (self.submit_queue + 1) % self.queues.len();
        }
    }

    /// Collect finished requests (without waiting).
    pub fn poll_completions(&mut self) -> Vec<Completion> {
        self.reap();
        self.ready.drain(..).collect()
    }

    /// Move everything the device returned into `ready`.
    fn reap(&mut self) {
        let Self {
            platform,
            transport,
            queues,
            ready,
            device_errors,
            ..
        } = self;
        Self::reap_into(*platform, transport, queues, ready, device_errors);
        if self.queues.iter().any(|q| q.vq.is_broken()) {
            self.abort_all();
        }
    }

    fn reap_into(
        platform: &P,
        transport: &VirtioPci<'p, P>,
        queues: &mut [ReqQueue<'p, P>],
        ready: &mut VecDeque<Completion>,
        device_errors: &mut Vec<QueueError>,
    ) {
        for q in queues {
            q.reap(ready, device_errors);
            q.rekick_if_stale(transport, || platform.now_ns());
        }
    }

    /// A queue is broken: stop the device so it no longer touches our buffers, then fail
    /// everything in flight on every queue and give the buffers back.
    fn abort_all(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        if self.transport.reset().is_err() {
            // The device may still DMA: keep (leak) the buffers rather than hand them out.
            return;
        }
        for q in &mut self.queues {
            // The reset stopped every queue, not just the broken one.
            q.vq.mark_broken();
            for (i, s) in q.slots.iter_mut().enumerate() {
                if let Some(slot) = s.take() {
                    q.free_slots.push(i as u16);
                    self.ready.push_back(Completion {
                        id: RequestId(slot.id),
                        result: Err(BlkError::Aborted),
                        buffer: slot.buffer,
                        segments: slot.segments,
                    });
                }
            }
        }
    }

    /// Wait (up to the timeout) for request `id` and return its completion; other completions
    /// seen meanwhile stay queued for [`Self::poll_completions`].
    pub fn wait_for(&mut self, id: RequestId) -> Result<Completion, BlkError> {
        let take = |ready: &mut VecDeque<Completion>| {
            let pos = ready.iter().position(|c| c.id == id)?;
            ready.remove(pos)
        };
        if let Some(c) = take(&mut self.ready) {
            return Ok(c);
        }
        // Wait on the vector of the queue that holds the request (raw chains: queue 0).
        let wait_queue = self
            .queues
            .iter()
            .find(|q| q.holds(id))
            .map_or(0, |q| q.index);
        let r = {
            let Self {
                platform,
                transport,
                queues,
                ready,
                device_errors,
                timeout_ns,
                ..
            } = self;
            transport.wait_for(wait_queue, *timeout_ns, || {
                Self::reap_into(*platform, transport, queues, ready, device_errors);
                if queues.iter().any(|q| q.vq.is_broken()) {
                    return Some(None);
                }
                take(ready).map(Some)
            })
        };
        match r {
            Ok(Some(c)) => Ok(c),
            Ok(None) => {
                self.abort_all();
                take(&mut self.ready).ok_or(BlkError::Queue(QueueError::Broken))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn run(&mut self, submitted: Result<RequestId, SubmitError>) -> Result<Completion, BlkError> {
        let id = match submitted {
            Ok(id) => id,
            Err(SubmitError {
                error,
                buffer,
                segments,
            }) => {
                for b in buffer.into_iter().chain(segments) {
                    self.platform.dma_free(b);
                }
                return Err(error);
            }
        };
        self.notify();
        self.wait_for(id)
    }

    /// Run a request with a bounce buffer; `f` sees the completed buffer.
    fn run_with_buffer(
        &mut self,
        submitted: Result<RequestId, SubmitError>,
        f: impl FnOnce(&DmaBuffer),
    ) -> Result<u32, BlkError> {
        let c = self.run(submitted)?;
        if let Some(b) = c.buffer {
            if c.result.is_ok() {
                f(&b);
            }
            self.platform.dma_free(b);
        }
        c.result
    }

    fn chunk_len(&self) -> usize {
        let max = self.size_max.map_or(MAX_SYNC_CHUNK, |m| m as usize);
        (max.min(MAX_SYNC_CHUNK) / SECTOR_SIZE).max(1) * SECTOR_SIZE
    }

    /// Read `buf.len()` bytes (a multiple of 512) starting at `sector`.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        if buf.is_empty() || !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::BadLength(buf.len()));
        }
        self.check_range(sector, (buf.len() / SECTOR_SIZE) as u64)?;
        let chunk = self.chunk_len();
        for (i, part) in buf.chunks_mut(chunk).enumerate() {
            let s = sector + (i * chunk / SECTOR_SIZE) as u64;
            let b = self.platform.dma_alloc(part.len(), 8)?;
            let submitted = self.submit_read(s, b);
            self.run_with_buffer(submitted, |b| part.copy_from_slice(b.as_slice()))?;
        }
        Ok(())
    }

    /// Write `buf` (a multiple of 512 bytes) starting at `sector`.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        if self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        if buf.is_empty() || !buf.len().is_multiple_of(SECTOR_SIZE) {
            return Err(BlkError::BadLength(buf.len()));
        }
        self.check_range(sector, (buf.len() / SECTOR_SIZE) as u64)?;
        let chunk = self.chunk_len();
        for (i, part) in buf.chunks(chunk).enumerate() {
            let s = sector + (i * chunk / SECTOR_SIZE) as u64;
            let mut b = self.platform.dma_alloc(part.len(), 8)?;
            b.as_mut_slice().copy_from_slice(part);
            let submitted = self.submit_write(s, b);
            self.run_with_buffer(submitted, |_| {})?;
        }
        Ok(())
    }

    /// Flush the write cache. A no-op if VIRTIO_BLK_F_FLUSH was not negotiated.
    pub fn flush(&mut self) -> Result<(), BlkError> {
        if self.features & blk_feature::FLUSH == 0 {
            return Ok(());
        }
        let submitted = self.submit_flush();
        self.run(submitted)?.result.map(|_| ())
    }

    /// The device ID string (up to 20 bytes, NUL-padded).
    pub fn get_id(&mut self) -> Result<[u8; ID_LEN], BlkError> {
        let mut id = [0u8; ID_LEN];
        let submitted = self.submit_get_id();
        self.run_with_buffer(submitted, |b| id.copy_from_slice(&b.as_slice()[..ID_LEN]))?;
        Ok(id)
    }
}

impl<P: Platform + ?Sized> Drop for VirtioBlk<'_, P> {
    fn drop(&mut self) {
        // Stop the device before its rings and buffers are freed. If it will not reset, leak
        // the memory rather than let it DMA into freed pages.
        let leak = self.transport.reset().is_err();
        if !leak {
            for c in self.ready.drain(..) {
                for b in c.buffer.into_iter().chain(c.segments) {
                    self.platform.dma_free(b);
                }
            }
        }
        for q in &mut self.queues {
            q.release(self.platform, leak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake::{Backend, FakePlatform, Mem, INTX_VECTOR};
    use std::boxed::Box;
    use std::cell::RefCell;
    use std::rc::Rc;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const SECTORS: u64 = 64;

    #[derive(Default)]
    struct DiskState {
        disk: Vec<u8>,
        /// Hold completions until released (to complete out of order).
        defer: bool,
        held: Vec<(u16, u32)>,
        force_status: Option<u8>,
        /// Report this used length instead of the bytes really written.
        force_used_len: Option<u32>,
        flushes: u32,
        types_seen: Vec<u32>,
        /// Requests that came through an indirect table.
        indirect_chains: u32,
        /// Leave notifications off after a pass, as a device that polls the ring does.
        polling: bool,
        /// Write this avail_event after each pass instead of the true one.
        garbage_avail_event: Option<GarbageEvent>,
        /// Interrupts the device raised (after the driver's suppression).
        interrupts: u32,
    }

    /// avail_event values a misbehaving device may write.
    #[derive(Debug, Clone, Copy)]
    enum GarbageEvent {
        AllOnes,
        /// Three entries behind what it has consumed: looks like "no kick needed".
        Behind,
        /// Past what the driver has published.
        Ahead,
    }

    /// A virtio-blk device model on rust-vmm's virtio-queue, over an in-memory disk.
    struct FakeBlk {
        features: u64,
        num_queues: u16,
        state: Rc<RefCell<DiskState>>,
    }

    impl Backend for FakeBlk {
        fn features(&self) -> u64 {
            self.features
        }
        fn config(&self) -> Vec<u8> {
            let mut c = vec![0u8; 64];
            c[0..8].copy_from_slice(&SECTORS.to_le_bytes());
            c[8..12].copy_from_slice(&4096u32.to_le_bytes()); // size_max
            c[12..16].copy_from_slice(&8u32.to_le_bytes()); // seg_max
            c[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
            c[34..36].copy_from_slice(&self.num_queues.to_le_bytes()); // num_queues
            c
        }
        fn process(&mut self, _: u16, q: &mut Queue, mem: &Mem) -> bool {
            let mut st = self.state.borrow_mut();
            let mut done = false;
            // The usual device loop: notifications off while draining the ring, then on again
            // (which writes avail_event) and a last look for what raced with that.
            loop {
                q.disable_notification(mem).unwrap();
                done |= Self::drain(&mut st, q, mem);
                if st.polling || !q.enable_notification(mem).unwrap() {
                    break;
                }
            }
            if let Some(garbage) = st.garbage_avail_event {
                let value = match garbage {
                    GarbageEvent::AllOnes => 0xffff,
                    GarbageEvent::Behind => q.next_avail().wrapping_sub(3),
                    GarbageEvent::Ahead => q.next_avail().wrapping_add(5),
                };
                crate::virtio::fake::write_avail_event(q, mem, value);
            }
            let interrupt = done && crate::virtio::fake::driver_wants_interrupt(q, mem);
            st.interrupts += u32::from(interrupt);
            interrupt
        }
    }

    impl FakeBlk {
        /// Serve every chain on the avail ring; whether any completed.
        fn drain(st: &mut DiskState, q: &mut Queue, mem: &Mem) -> bool {
            let mut done = false;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                if let Some(entries) = crate::virtio::fake::indirect_entries(q, mem, head) {
                    assert!(entries >= 2, "an indirect request of {entries} descriptors");
                    st.indirect_chains += 1;
                }
                let descs: Vec<_> = chain.collect();
                assert!(descs.len() >= 2);
                let (h, s) = (descs[0], descs[descs.len() - 1]);
                assert!(
                    !h.is_write_only() && h.len() == 16,
                    "header is device-readable"
                );
                assert!(
                    s.is_write_only() && s.len() == 1,
                    "status is device-writable"
                );
                let kind: u32 = mem.read_obj(h.addr()).unwrap();
                let sector: u64 = mem.read_obj(GuestAddress(h.addr().0 + 8)).unwrap();
                st.types_seen.push(kind);
                let data = &descs[1..descs.len() - 1];
                let mut written = 1u32;
                let mut status = req_status::OK;
                match kind {
                    req_type::IN | req_type::OUT => {
                        let mut off = sector * 512;
                        for d in data {
                            assert_eq!(d.is_write_only(), kind == req_type::IN);
                            let end = off + u64::from(d.len());
                            if end > st.disk.len() as u64 {
                                status = req_status::IOERR;
                                break;
                            }
                            let range = off as usize..end as usize;
                            if kind == req_type::IN {
                                mem.write_slice(&st.disk[range], d.addr()).unwrap();
                                written += d.len();
                            } else {
                                mem.read_slice(&mut st.disk[range], d.addr()).unwrap();
                            }
                            off = end;
                        }
                    }
                    req_type::FLUSH => st.flushes += 1,
                    req_type::GET_ID => {
                        assert!(data[0].is_write_only());
                        mem.write_slice(b"fake-virtio-blk-0001", data[0].addr())
                            .unwrap();
                        written += 20;
                    }
                    _ => status = req_status::UNSUPP,
                }
                let status = st.force_status.unwrap_or(status);
                let written = st.force_used_len.unwrap_or(written);
                mem.write_obj(status, s.addr()).unwrap();
                if st.defer {
                    st.held.push((head, written));
                } else {
                    q.add_used(mem, head, written).unwrap();
                    done = true;
                }
            }
            done
        }
    }

    fn setup(features: u64) -> (FakePlatform, Rc<RefCell<DiskState>>) {
        setup_queues(features, 1, vec![64])
    }

    /// A device whose config says `num_queues`, with transport queues of `queue_max` entries.
    fn setup_queues(
        features: u64,
        num_queues: u16,
        queue_max: Vec<u16>,
    ) -> (FakePlatform, Rc<RefCell<DiskState>>) {
        let state = Rc::new(RefCell::new(DiskState {
            disk: (0..SECTORS as usize * 512)
                .map(|i| (i / 512) as u8 ^ i as u8)
                .collect(),
            ..DiskState::default()
        }));
        let backend = FakeBlk {
            features,
            num_queues,
            state: state.clone(),
        };
        (FakePlatform::new(Box::new(backend), queue_max), state)
    }

    const ALL: u64 = feature::VERSION_1
        | blk_feature::FLUSH
        | blk_feature::BLK_SIZE
        | blk_feature::SIZE_MAX
        | blk_feature::SEG_MAX;

    fn open(p: &FakePlatform, mode: InterruptMode) -> VirtioBlk<'_, FakePlatform> {
        VirtioBlk::new(p, &p.function(), mode, 32).unwrap()
    }

    #[test]
    fn config_and_features() {
        let (p, _) = setup(ALL | 1 << 40);
        let blk = open(&p, InterruptMode::Polled);
        assert_eq!(blk.capacity(), SECTORS);
        assert_eq!(blk.blk_size(), 512);
        assert_eq!(blk.size_max(), Some(4096));
        assert_eq!(blk.seg_max(), Some(8));
        assert_eq!(blk.features(), ALL);
        assert!(!blk.read_only());
        assert_eq!(blk.queue().size(), 32);
    }

    #[test]
    fn sync_read_write_flush_get_id() {
        let (p, st) = setup(ALL);
        let mut blk = open(&p, InterruptMode::Polled);
        let mut buf = vec![0u8; 3 * 512];
        blk.read(5, &mut buf).unwrap();
        assert_eq!(buf[..], st.borrow().disk[5 * 512..8 * 512]);
        // 12 KiB write: split into 4 KiB requests (size_max).
        let data: Vec<u8> = (0..12 * 1024).map(|i| (i * 7) as u8).collect();
        blk.write(10, &data).unwrap();
        assert_eq!(st.borrow().disk[10 * 512..10 * 512 + data.len()], data[..]);
        let mut back = vec![0u8; data.len()];
        blk.read(10, &mut back).unwrap();
        assert_eq!(back, data);
        blk.flush().unwrap();
        assert_eq!(st.borrow().flushes, 1);
        assert_eq!(&blk.get_id().unwrap(), b"fake-virtio-blk-0001");
        assert_eq!(blk.in_flight(), 0);
        let live_before_drop = p.dma_live.borrow().len();
        assert_eq!(
            live_before_drop, 4,
            "3 rings + metadata; bounce buffers freed"
        );
        drop(blk);
        assert!(p.dma_live.borrow().is_empty());
        assert_eq!(p.dev.borrow().status, 0, "device reset on drop");
    }

    #[test]
    fn bounds_and_lengths_checked_before_submitting() {
        let (p, st) = setup(ALL);
        let mut blk = open(&p, InterruptMode::Polled);
        let mut buf = vec![0u8; 1024];
        assert_eq!(
            blk.read(SECTORS - 1, &mut buf),
            Err(BlkError::OutOfRange {
                sector: SECTORS - 1,
                sectors: 2,
                capacity: SECTORS
            })
        );
        assert!(matches!(
            blk.write(u64::MAX, &buf),
            Err(BlkError::OutOfRange { .. })
        ));
        assert_eq!(blk.read(0, &mut buf[..100]), Err(BlkError::BadLength(100)));
        let big = p.dma_alloc(8192, 8).unwrap();
        let e = blk.submit_read(0, big).unwrap_err();
        assert_eq!(
            e.error,
            BlkError::TooLarge {
                len: 8192,
                max: 4096
            }
        );
        assert!(e.buffer.is_some(), "buffer handed back");
        assert!(
            st.borrow().types_seen.is_empty(),
            "nothing reached the device"
        );
    }

    #[test]
    fn device_errors_map_to_distinct_errors() {
        let (p, st) = setup(ALL);
        let mut blk = open(&p, InterruptMode::Polled);
        // Out of range on purpose: the device answers IOERR.
        let b = p.dma_alloc(1024, 8).unwrap();
        let id = blk.submit_read_unchecked(SECTORS - 1, b).unwrap();
        blk.notify();
        let c = blk.wait_for(id).unwrap();
        assert_eq!(c.result, Err(BlkError::IoError));
        p.dma_free(c.buffer.unwrap());
        // Unknown request type: UNSUPP.
        let id = blk.submit_request_unchecked(99, 0, None, false).unwrap();
        blk.notify();
        assert_eq!(blk.wait_for(id).unwrap().result, Err(BlkError::Unsupported));
        st.borrow_mut().force_status = Some(req_status::IOERR);
        assert_eq!(blk.flush(), Err(BlkError::IoError));
        st.borrow_mut().force_status = Some(0x77);
        let mut buf = [0u8; 512];
        assert_eq!(blk.read(0, &mut buf), Err(BlkError::BadStatus(0x77)));
        st.borrow_mut().force_status = None;
        blk.read(0, &mut buf).unwrap();
    }

    #[test]
    fn short_read_is_an_error_not_stale_data() {
        let (p, st) = setup(ALL);
        let mut blk = open(&p, InterruptMode::Polled);
        // Status OK, but the device claims only the status byte and half the data.
        st.borrow_mut().force_used_len = Some(257);
        let mut buf = [0u8; 512];
        assert_eq!(
            blk.read(2, &mut buf),
            Err(BlkError::ShortRead {
                written: 257,
                expected: 513
            })
        );
        // Writes and flushes report only the status byte: that is all they write.
        st.borrow_mut().force_used_len = Some(1);
        blk.write(2, &[7u8; 512]).unwrap();
        blk.flush().unwrap();
        st.borrow_mut().force_used_len = None;
        blk.read(2, &mut buf).unwrap();
        assert_eq!(buf, [7u8; 512]);
    }

    #[test]
    fn read_only_device_refuses_writes() {
        let (p, st) = setup(ALL | blk_feature::RO);
        let mut blk = open(&p, InterruptMode::Polled);
        assert!(blk.read_only());
        assert_eq!(blk.write(0, &[0u8; 512]), Err(BlkError::ReadOnly));
        let b = p.dma_alloc(512, 8).unwrap();
        assert_eq!(
            blk.submit_write(0, b).unwrap_err().error,
            BlkError::ReadOnly
        );
        assert!(st.borrow().types_seen.is_empty());
    }

    #[test]
    fn queue_depth_32_out_of_order() {
        let (p, st) = setup(ALL);
        let mut blk = open(&p, InterruptMode::Polled);
        st.borrow_mut().defer = true;
        // 32-entry queue, 3 descriptors per request: 10 fit.
        let mut ids = Vec::new();
        for i in 0..10u64 {
            let b = p.dma_alloc(512, 8).unwrap();
            ids.push(blk.submit_read(i, b).unwrap());
        }
        let b = p.dma_alloc(512, 8).unwrap();
        let e = blk.submit_read(10, b).unwrap_err();
        assert_eq!(e.error, BlkError::QueueFull);
        p.dma_free(e.buffer.unwrap());
        let notifies_before = p.dev.borrow().notifies.len();
        blk.notify();
        assert_eq!(
            p.dev.borrow().notifies.len(),
            notifies_before + 1,
            "one kick per batch"
        );
        assert!(blk.poll_completions().is_empty());
        // The device completes in reverse order.
        let held: Vec<_> = st.borrow_mut().held.drain(..).rev().collect();
        {
            let mut dev = p.dev.borrow_mut();
            let q = dev.queues[0].as_mut().unwrap();
            for (head, len) in held {
                q.add_used(&p.mem, head, len).unwrap();
            }
        }
        let done = blk.poll_completions();
        let got: Vec<RequestId> = done.iter().map(|c| c.id).collect();
        let want: Vec<RequestId> = ids.iter().rev().copied().collect();
        assert_eq!(got, want);
        for (c, sector) in done.into_iter().zip((0..10usize).rev()) {
            assert_eq!(c.result, Ok(513));
            let b = c.buffer.unwrap();
            assert_eq!(b.as_slice(), &st.borrow().disk[sector * 512..][..512]);
            p.dma_free(b);
        }
        assert_eq!(blk.in_flight(), 0);
    }

    #[test]
    fn msix_and_intx_completion() {
        for mode in [
            InterruptMode::Msix {
                dest_apic_id: 1,
                vectors: vec![0x50, 0x51],
            },
            InterruptMode::Intx {
                vector: INTX_VECTOR,
            },
        ] {
            let (p, _) = setup(ALL);
            let mut blk = open(&p, mode.clone());
            let mut buf = [0u8; 512];
            blk.read(1, &mut buf).unwrap();
            match mode {
                InterruptMode::Msix { .. } => {
                    assert_eq!(p.irq_count(0x51), 1);
                    assert_eq!(p.msi_addresses.borrow()[0], 0xFEE0_1000);
                }
                _ => {
                    assert_eq!(p.irq_count(INTX_VECTOR), 1);
                    assert_eq!(p.dev.borrow().isr, 0, "driver acknowledged through ISR");
                }
            }
        }
    }

    #[test]
    fn dead_device_times_out() {
        let (p, st) = setup(ALL);
        let mut blk = open(
            &p,
            InterruptMode::Msix {
                dest_apic_id: 0,
                vectors: vec![0x50, 0x51],
            },
        );
        st.borrow_mut().defer = true; // never completes
        blk.set_timeout_ns(50_000_000);
        let mut buf = [0u8; 512];
        assert_eq!(
            blk.read(0, &mut buf),
            Err(BlkError::Virtio(VirtioError::Timeout))
        );
    }

    #[test]
    fn bad_used_length_fails_that_request() {
        for features in [ALL, ALL | feature::RING_INDIRECT_DESC] {
            bad_used_length_fails_that_request_with(features);
        }
    }

    fn bad_used_length_fails_that_request_with(features: u64) {
        let (p, st) = setup(features);
        let mut blk = open(&p, InterruptMode::Polled);
        st.borrow_mut().defer = true;
        let id = blk.submit_flush().unwrap();
        blk.notify();
        let (head, _) = st.borrow_mut().held.pop().unwrap();
        p.dev.borrow_mut().queues[0]
            .as_mut()
            .unwrap()
            .add_used(&p.mem, head, 4096)
            .unwrap();
        let c = blk.wait_for(id).unwrap();
        assert!(matches!(
            c.result,
            Err(BlkError::Queue(QueueError::BadUsedLength {
                len: 4096,
                max: 1,
                ..
            }))
        ));
        // Still usable.
        st.borrow_mut().defer = false;
        blk.flush().unwrap();
    }

    /// A device that names ids it never got (past the queue, u32::MAX, a descriptor that is
    /// not a chain's head): each is a device error, none completes a request, and the real
    /// completion after them still arrives; a read whose completion never comes times out.
    #[test]
    fn wild_used_ids_are_device_errors_not_completions() {
        for features in [ALL, ALL | feature::RING_INDIRECT_DESC] {
            wild_used_ids_with(features);
        }
    }

    fn wild_used_ids_with(features: u64) {
        let (p, st) = setup(features);
        let mut blk = open(&p, InterruptMode::Polled);
        blk.set_timeout_ns(50_000_000);
        st.borrow_mut().defer = true;
        let id = blk.submit_flush().unwrap();
        blk.notify();
        let (head, len) = st.borrow_mut().held.pop().unwrap();
        {
            let mut dev = p.dev.borrow_mut();
            let q = dev.queues[0].as_mut().unwrap();
            for wild in [40, u32::MAX, u32::from(head) + 1] {
                crate::virtio::fake_net::push_used_raw(q, &p.mem, wild, 1);
            }
            q.add_used(&p.mem, head, len).unwrap();
        }
        let c = blk.wait_for(id).unwrap();
        assert_eq!(c.result.map(|_| ()), Ok(()));
        let errors = blk.take_device_errors();
        assert_eq!(
            errors,
            [40, u32::MAX, u32::from(head) + 1].map(|id| QueueError::BadUsedId { id }),
        );
        // A read the device only ever answers with a wild id: a timeout.
        let id = blk.submit_read(0, p.dma_alloc(512, 8).unwrap()).unwrap();
        blk.notify();
        let (head, _) = st.borrow_mut().held.pop().unwrap();
        {
            let mut dev = p.dev.borrow_mut();
            let q = dev.queues[0].as_mut().unwrap();
            crate::virtio::fake_net::push_used_raw(q, &p.mem, u32::from(head) + 2, 512);
        }
        assert_eq!(
            blk.wait_for(id).map(|_| ()),
            Err(BlkError::Virtio(VirtioError::Timeout))
        );
        assert_eq!(blk.take_device_errors().len(), 1);
    }

    #[test]
    fn no_version_1_device_is_refused() {
        let (p, _) = setup(blk_feature::FLUSH);
        let r = VirtioBlk::new(&p, &p.function(), InterruptMode::Polled, 32);
        assert!(matches!(
            r.err(),
            Some(BlkError::Virtio(VirtioError::NoVersion1 { .. }))
        ));
        assert_ne!(p.dev.borrow().status & crate::virtio::status::FAILED, 0);
    }

    const EVENT_IDX: u64 = feature::RING_EVENT_IDX;
    const INDIRECT: u64 = feature::RING_INDIRECT_DESC;

    fn msix() -> InterruptMode {
        InterruptMode::Msix {
            dest_apic_id: 0,
            vectors: vec![0x50, 0x51],
        }
    }

    /// QD1 costs one kick and (with interrupts) one interrupt per request, with event idx and
    /// without; polled, the driver asks for no interrupt at all and gets none.
    #[test]
    fn kicks_and_interrupts_with_event_idx_on_and_off() {
        for features in [ALL, ALL | EVENT_IDX] {
            for (mode, want_irqs) in [(msix(), 8), (InterruptMode::Polled, 0)] {
                let (p, st) = setup(features);
                let mut blk = open(&p, mode.clone());
                assert_eq!(blk.uses_event_idx(), features & EVENT_IDX != 0);
                let mut buf = [0u8; 512];
                for lba in 0..8 {
                    blk.read(lba, &mut buf).unwrap();
                    assert_eq!(buf[..], st.borrow().disk[lba as usize * 512..][..512]);
                }
                assert_eq!(p.dev.borrow().notifies.len(), 8, "{features:#x} {mode:?}");
                assert_eq!((blk.kicks(), blk.rekicks()), (8, 0));
                assert_eq!(st.borrow().interrupts, want_irqs, "{features:#x} {mode:?}");
                let delivered: u64 = p.irqs.borrow().values().sum();
                assert_eq!(delivered, u64::from(want_irqs));
            }
        }
    }

    /// A batch costs one kick and one interrupt; with event idx, a device that is still
    /// polling its ring (avail_event left behind) is not kicked at all, and the requests
    /// complete when it next looks.
    #[test]
    fn batch_kicks_once_and_polling_device_not_at_all() {
        for features in [ALL, ALL | EVENT_IDX] {
            let (p, st) = setup(features);
            let mut blk = open(&p, msix());
            let mut ids = Vec::new();
            for lba in 0..10 {
                ids.push(blk.submit_read(lba, p.dma_alloc(512, 8).unwrap()).unwrap());
            }
            blk.notify();
            assert_eq!(p.dev.borrow().notifies.len(), 1, "one kick for the batch");
            assert_eq!(st.borrow().interrupts, 1, "one interrupt for the batch");
            for c in blk.poll_completions() {
                assert_eq!(c.result, Ok(513));
                p.dma_free(c.buffer.unwrap());
            }
            assert_eq!(blk.in_flight(), 0);
            // The device starts polling: notifications stay off after its next pass.
            st.borrow_mut().polling = true;
            blk.read(0, &mut [0u8; 512]).unwrap();
            let kicks = p.dev.borrow().notifies.len();
            for lba in 0..10 {
                ids.push(blk.submit_read(lba, p.dma_alloc(512, 8).unwrap()).unwrap());
            }
            blk.notify();
            assert_eq!(
                p.dev.borrow().notifies.len(),
                kicks,
                "{features:#x}: a polling device gets no kick"
            );
            p.process(0); // its next poll
            let done = blk.poll_completions();
            assert_eq!(done.len(), 10);
            for c in done {
                p.dma_free(c.buffer.unwrap());
            }
        }
    }

    /// A device that writes garbage avail_event (all ones, behind, ahead) costs extra kicks or
    /// a delay, never a request: sync and batched requests all complete with the right data.
    #[test]
    fn garbage_avail_event_never_loses_a_request() {
        for garbage in [
            GarbageEvent::AllOnes,
            GarbageEvent::Behind,
            GarbageEvent::Ahead,
        ] {
            for mode in [msix(), InterruptMode::Polled] {
                let (p, st) = setup(ALL | EVENT_IDX);
                let mut blk = open(&p, mode.clone());
                st.borrow_mut().garbage_avail_event = Some(garbage);
                let mut buf = [0u8; 1024];
                for lba in 0..20 {
                    blk.read(lba, &mut buf).unwrap();
                    assert_eq!(buf[..], st.borrow().disk[lba as usize * 512..][..1024]);
                }
                let mut pending = 0;
                for lba in 0..6 {
                    blk.submit_read(lba, p.dma_alloc(512, 8).unwrap()).unwrap();
                    pending += 1;
                }
                blk.notify();
                for _ in 0..100_000 {
                    for c in blk.poll_completions() {
                        assert_eq!(c.result, Ok(513), "{garbage:?}");
                        p.dma_free(c.buffer.unwrap());
                        pending -= 1;
                    }
                    if pending == 0 {
                        break;
                    }
                }
                assert_eq!(pending, 0, "{garbage:?} {mode:?}: requests lost");
                let kicks = p.dev.borrow().notifies.len();
                assert_eq!(
                    blk.kicks() + blk.rekicks(),
                    kicks as u64,
                    "every kick counted"
                );
                if !matches!(garbage, GarbageEvent::Ahead) {
                    assert!(
                        blk.rekicks() > 0,
                        "{garbage:?}: held-back kicks never resent"
                    );
                }
                assert!(kicks >= 21, "{garbage:?}: {kicks} kicks");
            }
        }
    }

    /// With INDIRECT_DESC every request takes one ring slot: a 32-entry queue holds 32 reads
    /// (10 when direct), each through its own table, which the device checks; writes, flush and
    /// GET_ID go the same way, and the tables are one DMA region freed at drop.
    #[test]
    fn indirect_requests_take_one_slot_each() {
        let (p, st) = setup(ALL | INDIRECT);
        let mut blk = open(&p, InterruptMode::Polled);
        assert!(blk.uses_indirect());
        st.borrow_mut().defer = true;
        for lba in 0..32 {
            blk.submit_read(lba, p.dma_alloc(512, 8).unwrap()).unwrap();
        }
        assert_eq!(blk.queue().num_free(), 0);
        let e = blk
            .submit_read(0, p.dma_alloc(512, 8).unwrap())
            .unwrap_err();
        assert_eq!(e.error, BlkError::QueueFull);
        p.dma_free(e.buffer.unwrap());
        blk.notify();
        assert_eq!(st.borrow().indirect_chains, 32);
        let held = std::mem::take(&mut st.borrow_mut().held);
        {
            let mut dev = p.dev.borrow_mut();
            let q = dev.queues[0].as_mut().unwrap();
            for (head, len) in held.into_iter().rev() {
                q.add_used(&p.mem, head, len).unwrap();
            }
        }
        st.borrow_mut().defer = false;
        let done = blk.poll_completions();
        assert_eq!(done.len(), 32);
        for c in done {
            assert_eq!(c.result, Ok(513));
            p.dma_free(c.buffer.unwrap());
        }
        let data: Vec<u8> = (0..8192).map(|i| (i * 13) as u8).collect();
        blk.write(20, &data).unwrap();
        assert_eq!(st.borrow().disk[20 * 512..][..8192], data[..]);
        let mut back = vec![0u8; 8192];
        blk.read(20, &mut back).unwrap();
        assert_eq!(back, data);
        blk.flush().unwrap();
        assert_eq!(&blk.get_id().unwrap(), b"fake-virtio-blk-0001");
        assert_eq!(st.borrow().indirect_chains, 32 + 2 + 2 + 1 + 1);
        assert_eq!(p.dma_live.borrow().len(), 5, "3 rings, metadata, tables");
        drop(blk);
        assert!(p.dma_live.borrow().is_empty());
    }

    /// MQ: two queues (the device's num_queues, bounded by the transport and MAX_QUEUES),
    /// batches in turn, one kick per batch on its own queue, completions from both, and each
    /// queue's interrupts on its own MSI-X vector.
    #[test]
    fn multiqueue_spreads_batches_over_queues() {
        for (num_queues, queue_max, want) in [
            (2, vec![64, 64], 2),
            (8, vec![64, 64, 64], 3),
            (16, vec![64; 6], usize::from(MAX_QUEUES)),
            (0, vec![64, 64], 1),
        ] {
            let (p, st) = setup_queues(
                ALL | blk_feature::MQ | INDIRECT | EVENT_IDX,
                num_queues,
                queue_max,
            );
            let mut blk = open(&p, InterruptMode::Polled);
            assert_eq!(blk.num_queues(), want, "num_queues {num_queues}");
            let mut buf = [0u8; 512];
            for lba in 0..(2 * want as u64) {
                blk.read(lba, &mut buf).unwrap();
                assert_eq!(buf[..], st.borrow().disk[lba as usize * 512..][..512]);
            }
            let kicked: Vec<u16> = p.dev.borrow().notifies.clone();
            let expected: Vec<u16> = (0..2 * want as u16).map(|i| i % want as u16).collect();
            assert_eq!(kicked, expected, "one kick per request, queues in turn");
            for q in 0..want {
                assert_eq!(blk.completed_on(q), 2, "queue {q}");
            }
        }
        let (p, st) = setup_queues(ALL | blk_feature::MQ, 2, vec![64, 64]);
        let mut blk = VirtioBlk::new(
            &p,
            &p.function(),
            InterruptMode::Msix {
                dest_apic_id: 0,
                vectors: vec![0x50, 0x51, 0x52],
            },
            32,
        )
        .unwrap();
        st.borrow_mut().defer = true;
        for batch in 0..2u64 {
            for lba in 0..5 {
                blk.submit_read(batch * 5 + lba, p.dma_alloc(512, 8).unwrap())
                    .unwrap();
            }
            blk.notify();
        }
        assert_eq!(p.dev.borrow().notifies, [0, 1], "one kick per batch");
        let held = std::mem::take(&mut st.borrow_mut().held);
        assert_eq!(held.len(), 10);
        {
            let mut dev = p.dev.borrow_mut();
            for (i, (head, len)) in held.into_iter().enumerate() {
                dev.queues[i / 5]
                    .as_mut()
                    .unwrap()
                    .add_used(&p.mem, head, len)
                    .unwrap();
            }
        }
        p.queue_interrupt(0);
        p.queue_interrupt(1);
        assert_eq!((p.irq_count(0x51), p.irq_count(0x52)), (1, 1));
        let done = blk.poll_completions();
        assert_eq!(done.len(), 10);
        for c in done {
            assert_eq!(c.result, Ok(513));
            p.dma_free(c.buffer.unwrap());
        }
        assert_eq!((blk.completed_on(0), blk.completed_on(1)), (5, 5));
        drop(blk);
        assert!(p.dma_live.borrow().is_empty());
    }

    /// Header, N data segments and status in one request, read and written, indirect (one
    /// ring slot, a table of N + 2 the device checks) and direct (N + 2 slots); the segments
    /// come back in order with the completion.
    #[test]
    fn segmented_requests_indirect_and_direct() {
        for features in [ALL, ALL | INDIRECT] {
            let (p, st) = setup(features);
            let mut blk = open(&p, InterruptMode::Polled);
            let lens = [512usize, 1024, 2048, 512];
            let segs: Vec<DmaBuffer> = lens.iter().map(|&l| p.dma_alloc(l, 8).unwrap()).collect();
            let id = blk.submit_read_segments(3, segs).unwrap();
            let want_free = if features & INDIRECT != 0 { 31 } else { 26 };
            assert_eq!(blk.queue().num_free(), want_free, "{features:#x}");
            blk.notify();
            let c = blk.wait_for(id).unwrap();
            assert_eq!(c.result, Ok(4097));
            assert!(c.buffer.is_none());
            let mut off = 3 * 512;
            for (b, &l) in c.segments.iter().zip(&lens) {
                assert_eq!(b.as_slice(), &st.borrow().disk[off..off + l]);
                off += l;
            }
            assert_eq!(c.segments.len(), 4);
            // Write back a pattern through 3 segments, read it through the sync API.
            let mut segs = c.segments;
            p.dma_free(segs.pop().unwrap());
            for (i, b) in segs.iter_mut().enumerate() {
                b.as_mut_slice().fill(0xA0 + i as u8);
            }
            let id = blk.submit_write_segments(40, segs).unwrap();
            blk.notify();
            let c = blk.wait_for(id).unwrap();
            assert_eq!(c.result, Ok(1));
            let mut back = vec![0u8; 3584];
            blk.read(40, &mut back).unwrap();
            assert!(back[..512].iter().all(|&b| b == 0xA0));
            assert!(back[512..1536].iter().all(|&b| b == 0xA1));
            assert!(back[1536..].iter().all(|&b| b == 0xA2));
            for b in c.segments {
                p.dma_free(b);
            }
            let indirect = st.borrow().indirect_chains;
            assert_eq!(indirect, if features & INDIRECT != 0 { 3 } else { 0 });
            assert_eq!(
                p.dma_live.borrow().len(),
                4 + usize::from(features & INDIRECT != 0)
            );
        }
    }

    /// Segmented requests the driver refuses, each handing every segment back: none, more
    /// than seg_max (8 here), one of a bad length or above size_max, past the end, a write
    /// on a read-only disk. Nothing reaches the device; a request in flight at drop is freed.
    #[test]
    fn segmented_requests_checked_before_submitting() {
        let (p, st) = setup(ALL | INDIRECT);
        let mut blk = open(&p, InterruptMode::Polled);
        let segs = |lens: &[usize]| -> Vec<DmaBuffer> {
            lens.iter().map(|&l| p.dma_alloc(l, 8).unwrap()).collect()
        };
        let cases: [(Vec<usize>, u64, BlkError); 5] = [
            (
                vec![],
                0,
                BlkError::TooManySegments {
                    segments: 0,
                    max: 8,
                },
            ),
            (
                vec![512; 9],
                0,
                BlkError::TooManySegments {
                    segments: 9,
                    max: 8,
                },
            ),
            (vec![512, 100], 0, BlkError::BadLength(100)),
            (
                vec![512, 8192],
                0,
                BlkError::TooLarge {
                    len: 8192,
                    max: 4096,
                },
            ),
            (
                vec![512, 512],
                SECTORS - 1,
                BlkError::OutOfRange {
                    sector: SECTORS - 1,
                    sectors: 2,
                    capacity: SECTORS,
                },
            ),
        ];
        for (lens, sector, error) in cases {
            let e = blk.submit_read_segments(sector, segs(&lens)).unwrap_err();
            assert_eq!(e.error, error);
            assert_eq!(e.segments.len(), lens.len(), "segments handed back");
            for b in e.segments {
                p.dma_free(b);
            }
        }
        assert!(
            st.borrow().types_seen.is_empty(),
            "nothing reached the device"
        );
        st.borrow_mut().defer = true;
        blk.submit_write_segments(0, segs(&[512, 512])).unwrap();
        blk.notify();
        drop(blk);
        assert!(
            p.dma_live.borrow().is_empty(),
            "in-flight segments freed at drop"
        );

        let (p, _) = setup(ALL | blk_feature::RO);
        let mut blk = open(&p, InterruptMode::Polled);
        let e = blk
            .submit_write_segments(0, vec![p.dma_alloc(512, 8).unwrap()])
            .unwrap_err();
        assert_eq!((e.error, e.segments.len()), (BlkError::ReadOnly, 1));
        p.dma_free(e.segments.into_iter().next().unwrap());
    }
}
