//! virtio-blk (virtio 1.x §5.2) over the modern PCI transport, one request queue.
//!
//! Two APIs: synchronous [`VirtioBlk::read`] / [`VirtioBlk::write`] / [`VirtioBlk::flush`] /
//! [`VirtioBlk::get_id`] (bounce buffers, one request at a time), and a submit/complete API for
//! many requests in flight: `submit_*` take ownership of a caller's [`DmaBuffer`], [`VirtioBlk::notify`]
//! kicks the device once per batch, and [`VirtioBlk::poll_completions`] hands results (and the
//! buffers) back, in whatever order the device completes them.

use alloc::collections::VecDeque;
use alloc::vec;
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
}

/// Features this driver asks for.
pub const DRIVER_FEATURES: u64 = feature::VERSION_1
    | blk_feature::SIZE_MAX
    | blk_feature::SEG_MAX
    | blk_feature::RO
    | blk_feature::BLK_SIZE
    | blk_feature::FLUSH
    | blk_feature::DISCARD
    | blk_feature::WRITE_ZEROES;

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
    /// More discard or write-zeroes segments than the device takes (or none); not submitted.
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

/// A submission that was refused; the caller gets its buffer back.
#[derive(Debug)]
pub struct SubmitError {
    pub error: BlkError,
    pub buffer: Option<DmaBuffer>,
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
}

#[derive(Debug)]
struct Slot {
    id: u64,
    buffer: Option<DmaBuffer>,
    /// Bytes the device must report written for a successful read (data + status byte); 0 for
    /// requests whose data it does not fill.
    must_write: u32,
}

/// A virtio-blk device.
pub struct VirtioBlk<'p, P: Platform + ?Sized> {
    platform: &'p P,
    transport: VirtioPci<'p, P>,
    queue: VirtQueue<'p, P>,
    meta: Option<DmaBuffer>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<u16>,
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
        let features = transport.begin_init(wanted, mode)?;
        let queue = transport.setup_queue(0, max_queue_size)?;
        let n = usize::from(queue.size());
        let fail = |t: &VirtioPci<'p, P>, e: BlkError| {
            t.set_failed();
            e
        };
        let meta = platform
            .dma_alloc(META_SLOT * n, 16)
            .map_err(|e| fail(&transport, e.into()))?;
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
            Ok((capacity, blk_size, size_max, seg_max))
        })();
        let (capacity, blk_size, size_max, seg_max) = match config {
            Ok(c) => c,
            Err(e) => {
                platform.dma_free(meta);
                return Err(fail(&transport, e.into()));
            }
        };
        let mut blk = Self {
            platform,
            transport,
            queue,
            meta: Some(meta),
            slots: (0..n).map(|_| None).collect(),
            free_slots: (0..n as u16).rev().collect(),
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
    /// The request queue (for inspection in tests).
    pub fn queue(&self) -> &VirtQueue<'p, P> {
        &self.queue
    }
    /// Queue protocol errors that could not be tied to a request (bad used ids).
    pub fn take_device_errors(&mut self) -> Vec<QueueError> {
        core::mem::take(&mut self.device_errors)
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
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
        unsafe { self.queue.add_raw_chain(descs, token) }?;
        Ok(RequestId(id))
    }

    fn submit(
        &mut self,
        kind: u32,
        sector: u64,
        buffer: Option<DmaBuffer>,
        device_writes: bool,
    ) -> Result<RequestId, SubmitError> {
        if self.queue.is_broken() {
            return Err(SubmitError {
                error: BlkError::Queue(QueueError::Broken),
                buffer,
            });
        }
        let needed = 2 + usize::from(buffer.is_some());
        let Some(slot) = self.free_slots.pop() else {
            return Err(SubmitError {
                error: BlkError::QueueFull,
                buffer,
            });
        };
        if usize::from(self.queue.num_free()) < needed {
            self.free_slots.push(slot);
            return Err(SubmitError {
                error: BlkError::QueueFull,
                buffer,
            });
        }
        let meta = self.meta.as_ref().expect("meta present until drop");
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
        let data = buffer.as_ref().map(|b| (b.phys(), b.len() as u32));
        let mut out = vec![header];
        let mut inb = Vec::with_capacity(2);
        match (data, device_writes) {
            (Some(d), true) => inb.push(d),
            (Some(d), false) => out.push(d),
            (None, _) => {}
        }
        inb.push(status);
        if let Err(e) = self.queue.add(&out, &inb, u64::from(slot)) {
            self.free_slots.push(slot);
            return Err(SubmitError {
                error: e.into(),
                buffer,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let must_write = match (kind, data) {
            (req_type::IN, Some((_, len))) => len + 1,
            _ => 0,
        };
        self.slots[usize::from(slot)] = Some(Slot {
            id,
            buffer,
            must_write,
        });
        Ok(RequestId(id))
    }

    /// Notify the device if it wants it (call once after a batch of submissions).
    pub fn notify(&mut self) {
        if self.queue.kick_needed() {
            self.transport.notify(0);
        }
    }

    /// Collect finished requests (without waiting).
    pub fn poll_completions(&mut self) -> Vec<Completion> {
        self.reap();
        self.ready.drain(..).collect()
    }

    /// Move everything the device returned into `ready`.
    fn reap(&mut self) {
        Self::reap_into(
            &mut self.queue,
            &mut self.slots,
            &mut self.free_slots,
            self.meta.as_ref(),
            &mut self.ready,
            &mut self.device_errors,
        );
        if self.queue.is_broken() {
            self.abort_all();
        }
    }

    fn reap_into(
        queue: &mut VirtQueue<'p, P>,
        slots: &mut [Option<Slot>],
        free_slots: &mut Vec<u16>,
        meta: Option<&DmaBuffer>,
        ready: &mut VecDeque<Completion>,
        device_errors: &mut Vec<QueueError>,
    ) {
        while let Some(r) = queue.pop_used() {
            let (token, result) = match r {
                Ok((token, len)) => (token, Ok(len)),
                Err(e @ QueueError::BadUsedLength { token, .. }) => (token, Err(e)),
                Err(e) => {
                    device_errors.push(e);
                    continue;
                }
            };
            if token >= RAW_TOKEN_BASE {
                ready.push_back(Completion {
                    id: RequestId(token - RAW_TOKEN_BASE),
                    result: result.map_err(BlkError::Queue),
                    buffer: None,
                });
                continue;
            }
            let index = token as usize;
            let Some(slot) = slots.get_mut(index).and_then(Option::take) else {
                continue; // cannot happen: the queue only returns tokens we gave it
            };
            free_slots.push(index as u16);
            let result = result.map_err(BlkError::Queue).and_then(|len| {
                let meta = meta.expect("meta present until drop");
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
            });
        }
    }

    /// The queue is broken: stop the device so it no longer touches our buffers, then fail
    /// everything in flight and give the buffers back.
    fn abort_all(&mut self) {
        if self.in_flight() == 0 {
            return;
        }
        if self.transport.reset().is_err() {
            // The device may still DMA: keep (leak) the buffers rather than hand them out.
            return;
        }
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(slot) = s.take() {
                self.free_slots.push(i as u16);
                self.ready.push_back(Completion {
                    id: RequestId(slot.id),
                    result: Err(BlkError::Aborted),
                    buffer: slot.buffer,
                });
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
        let r = {
            let Self {
                transport,
                queue,
                slots,
                free_slots,
                meta,
                ready,
                device_errors,
                timeout_ns,
                ..
            } = self;
            transport.wait_for(0, *timeout_ns, || {
                Self::reap_into(
                    queue,
                    slots,
                    free_slots,
                    meta.as_ref(),
                    ready,
                    device_errors,
                );
                if queue.is_broken() {
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
            Err(SubmitError { error, buffer }) => {
                if let Some(b) = buffer {
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
        if self.transport.reset().is_err() {
            self.queue.leak_rings();
            // DmaBuffer has no destructor: dropping without `dma_free` leaks.
            self.meta = None;
            self.slots.clear();
            return;
        }
        for b in self.ready.drain(..).filter_map(|c| c.buffer) {
            self.platform.dma_free(b);
        }
        for b in self.slots.iter_mut().filter_map(|s| s.take()?.buffer) {
            self.platform.dma_free(b);
        }
        if let Some(m) = self.meta.take() {
            self.platform.dma_free(m);
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
    }

    /// A virtio-blk device model on rust-vmm's virtio-queue, over an in-memory disk.
    struct FakeBlk {
        features: u64,
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
            c
        }
        fn process(&mut self, _: u16, q: &mut Queue, mem: &Mem) -> bool {
            let mut st = self.state.borrow_mut();
            let mut done = false;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
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
        let state = Rc::new(RefCell::new(DiskState {
            disk: (0..SECTORS as usize * 512)
                .map(|i| (i / 512) as u8 ^ i as u8)
                .collect(),
            ..DiskState::default()
        }));
        let backend = FakeBlk {
            features,
            state: state.clone(),
        };
        (FakePlatform::new(Box::new(backend), vec![64]), state)
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
        let (p, st) = setup(ALL);
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
        let (p, st) = setup(ALL);
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
}
