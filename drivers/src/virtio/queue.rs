//! Split virtqueue, driver side (virtio 1.x §2.7).
//!
//! The three ring areas live in DMA memory shared with the device. They are only ever touched
//! through volatile reads/writes of raw pointers, never through Rust references, because the
//! device may change them at any time. All bookkeeping the driver relies on (free list, which
//! chains are in flight, their lengths) is kept in private memory the device cannot reach, and
//! everything read back from the device (used ring id, len and index) is validated.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::mem::{offset_of, size_of};
use core::ptr;
use core::sync::atomic::{fence, Ordering};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::platform::{DmaBuffer, Platform, PlatformError};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (otherwise device-readable).
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect descriptor table.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: the driver does not want interrupts.
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want notifications.
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// Largest queue size the split ring allows.
pub const MAX_QUEUE_SIZE: u16 = 32768;

/// One entry of the descriptor table (§2.7.5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct Descriptor {
    pub addr: U64,
    pub len: U32,
    pub flags: U16,
    pub next: U16,
}

/// The start of the available and the used ring (§2.7.6, §2.7.8); the ring entries follow,
/// then one 16-bit event index (`used_event` in the available ring, `avail_event` in the used).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct RingHeader {
    pub flags: U16,
    pub idx: U16,
}

/// One entry of the used ring (§2.7.8).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct UsedElem {
    /// Head of the chain the device is done with (a u32 on the wire).
    pub id: U32,
    /// Bytes the device wrote into the chain's device-writable buffers.
    pub len: U32,
}

const _: () = assert!(size_of::<Descriptor>() == 16 && offset_of!(Descriptor, next) == 14);
const _: () = assert!(size_of::<RingHeader>() == 4);
const _: () = assert!(size_of::<UsedElem>() == 8);

/// An entry of the available ring: the head of a chain.
type AvailElem = U16;
/// The event index after either ring.
type EventIdx = U16;

/// Byte offset of available-ring entry `slot`.
const fn avail_elem_offset(slot: usize) -> usize {
    size_of::<RingHeader>() + size_of::<AvailElem>() * slot
}

/// Byte offset of used-ring entry `slot`.
const fn used_elem_offset(slot: usize) -> usize {
    size_of::<RingHeader>() + size_of::<UsedElem>() * slot
}

/// Bytes of an available ring of `n` entries, `used_event` included.
const fn avail_ring_size(n: usize) -> usize {
    avail_elem_offset(n) + size_of::<EventIdx>()
}

/// Bytes of a used ring of `n` entries, `avail_event` included.
const fn used_ring_size(n: usize) -> usize {
    used_elem_offset(n) + size_of::<EventIdx>()
}

const RING_FLAGS: usize = offset_of!(RingHeader, flags);
const RING_IDX: usize = offset_of!(RingHeader, idx);

/// Errors of the virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The queue size is 0, not a power of two, or above 32768.
    InvalidSize(u16),
    /// The rings could not be allocated.
    Dma(PlatformError),
    /// A chain needs to have at least one buffer.
    EmptyChain,
    /// Not enough free descriptors for the chain.
    QueueFull { needed: usize, free: u16 },
    /// A raw chain's `next` refers to a descriptor index outside the chain.
    BadRawNext { index: usize },
    /// The device returned a used id that is out of range or not the head of a chain in flight.
    /// The used entry was consumed; the free list is untouched.
    BadUsedId { id: u32 },
    /// The device claims to have written more bytes than the chain's device-writable buffers
    /// hold. The chain has been freed; `token` identifies the request it belonged to.
    BadUsedLength {
        token: u64,
        id: u16,
        len: u32,
        max: u64,
    },
    /// The used index moved more than the queue size past the last one seen. The queue is
    /// marked broken.
    BadUsedIndex { last_seen: u16, idx: u16 },
    /// An indirect table does not fit the space given for it (a driver bug, or a chain longer
    /// than the queue, which §2.7.5.3.1 forbids).
    IndirectTableTooSmall { needed: usize, len: usize },
    /// The queue was marked broken by an earlier device error.
    Broken,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::InvalidSize(n) => write!(f, "invalid queue size {n}"),
            Self::Dma(e) => write!(f, "virtqueue allocation failed: {e}"),
            Self::EmptyChain => write!(f, "empty descriptor chain"),
            Self::QueueFull { needed, free } => {
                write!(f, "queue full: need {needed} descriptors, {free} free")
            }
            Self::BadRawNext { index } => write!(f, "raw descriptor {index} has a bad next"),
            Self::BadUsedId { id } => write!(f, "device returned bad used id {id}"),
            Self::BadUsedLength { id, len, max, .. } => write!(
                f,
                "device returned used len {len} for chain {id} with {max} writable bytes"
            ),
            Self::BadUsedIndex { last_seen, idx } => {
                write!(f, "device moved used idx from {last_seen} to {idx}")
            }
            Self::IndirectTableTooSmall { needed, len } => {
                write!(f, "indirect table of {needed} bytes does not fit in {len}")
            }
            Self::Broken => write!(f, "virtqueue is broken"),
        }
    }
}

/// Where a raw descriptor's `next` field points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawNext {
    /// The descriptor at this index of the slice given to [`VirtQueue::add_raw_chain`]; it is
    /// translated to the descriptor table slot that descriptor was written to.
    Index(usize),
    /// This exact descriptor table index (may be out of range, or any slot at all).
    Absolute(u16),
}

/// One descriptor for [`VirtQueue::add_raw_chain`], written exactly as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: RawNext,
}

/// Bookkeeping for one chain in flight, indexed by its head.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    token: u64,
    /// Number of descriptors in the chain.
    count: u16,
    /// Sum of device-writable lengths.
    writable: u64,
}

/// A split virtqueue owned by the driver.
///
/// The device must be stopped (reset, or the queue reset) before the queue is dropped: dropping
/// gives the ring memory back to the platform.
pub struct VirtQueue<'p, P: Platform + ?Sized> {
    platform: &'p P,
    size: u16,
    desc: Option<DmaBuffer>,
    avail: Option<DmaBuffer>,
    used: Option<DmaBuffer>,
    /// Private copy of the free-list / chain links (never read back from shared memory).
    next: Vec<u16>,
    free_head: u16,
    num_free: u16,
    in_flight: Vec<Option<InFlight>>,
    /// Our avail index (the next one we publish).
    avail_idx: u16,
    /// Avail index at the last `kick_needed` check.
    kicked_idx: u16,
    /// Next used index we expect to consume.
    last_used: u16,
    event_idx: bool,
    /// Whether the driver wants used-buffer interrupts ([`Self::set_interrupts`]); with event
    /// idx, `pop_used` moves `used_event` along only while this holds.
    interrupts: bool,
    broken: bool,
}

// SAFETY: the raw pointers inside the DmaBuffers are owned by the queue alone; moving the queue to
// another thread moves that ownership. `P: Sync` is required because `&P` is held.
unsafe impl<P: Platform + Sync + ?Sized> Send for VirtQueue<'_, P> {}

impl<'p, P: Platform + ?Sized> VirtQueue<'p, P> {
    /// Allocate a queue of `size` entries (a power of two, 1..=32768) in zeroed DMA memory.
    pub fn new(platform: &'p P, size: u16) -> Result<Self, QueueError> {
        if size == 0 || !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(QueueError::InvalidSize(size));
        }
        let n = usize::from(size);
        let desc = platform
            .dma_alloc(size_of::<Descriptor>() * n, 16)
            .map_err(QueueError::Dma)?;
        let avail = match platform.dma_alloc(avail_ring_size(n), 2) {
            Ok(a) => a,
            Err(e) => {
                platform.dma_free(desc);
                return Err(QueueError::Dma(e));
            }
        };
        let used = match platform.dma_alloc(used_ring_size(n), 4) {
            Ok(u) => u,
            Err(e) => {
                platform.dma_free(desc);
                platform.dma_free(avail);
                return Err(QueueError::Dma(e));
            }
        };
        let next = (1..=size).map(|i| i % size).collect::<Vec<u16>>();
        Ok(Self {
            platform,
            size,
            desc: Some(desc),
            avail: Some(avail),
            used: Some(used),
            next,
            free_head: 0,
            num_free: size,
            in_flight: vec![None; n],
            avail_idx: 0,
            kicked_idx: 0,
            last_used: 0,
            event_idx: false,
            interrupts: true,
            broken: false,
        })
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Physical address of the descriptor table (queue_desc).
    pub fn desc_phys(&self) -> u64 {
        self.desc_buf().phys()
    }

    /// Physical address of the available ring (queue_driver).
    pub fn avail_phys(&self) -> u64 {
        self.avail_buf().phys()
    }

    /// Physical address of the used ring (queue_device).
    pub fn used_phys(&self) -> u64 {
        self.used_buf().phys()
    }

    /// Number of free descriptors.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Number of chains submitted and not yet returned.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().filter(|e| e.is_some()).count()
    }

    /// Whether the device broke the queue protocol beyond recovery.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Mark the queue as unusable (e.g. after the device needed a reset).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Never give the ring memory back (for a device that cannot be stopped: it may still
    /// access the rings after the queue is gone).
    pub fn leak_rings(&mut self) {
        // DmaBuffer has no destructor: dropping it without `dma_free` leaks the memory.
        self.desc = None;
        self.avail = None;
        self.used = None;
    }

    /// Use VIRTIO_F_EVENT_IDX semantics (only if the feature was negotiated).
    pub fn set_event_idx(&mut self, enabled: bool) {
        self.event_idx = enabled;
    }

    /// Ask the device to (not) interrupt on used buffers. A hint only.
    pub fn set_interrupts(&mut self, enabled: bool) {
        self.interrupts = enabled;
        if self.event_idx {
            // used_event: interrupt when the device passes the entry we expect next.
            let value = if enabled {
                self.last_used
            } else {
                self.last_used.wrapping_sub(1)
            };
            self.write16(Area::Avail, self.used_event_offset(), value);
        } else {
            let flags = if enabled {
                0
            } else {
                VIRTQ_AVAIL_F_NO_INTERRUPT
            };
            self.write16(Area::Avail, RING_FLAGS, flags);
        }
    }

    /// Buffers in a chain of `out` then `inb`, if the queue can take a chain at all: not
    /// broken, and the chain not empty.
    fn chain_length(&self, out: &[(u64, u32)], inb: &[(u64, u32)]) -> Result<usize, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        match out.len() + inb.len() {
            0 => Err(QueueError::EmptyChain),
            total => Ok(total),
        }
    }

    /// Post a chain: `out` buffers (device-readable) followed by `inb` buffers
    /// (device-writable), each `(phys, len)`. `token` comes back from [`Self::pop_used`].
    /// Returns the head descriptor index. The chain is published to the avail ring at once;
    /// call [`Self::kick_needed`] and notify the device afterwards (once per batch).
    pub fn add(
        &mut self,
        out: &[(u64, u32)],
        inb: &[(u64, u32)],
        token: u64,
    ) -> Result<u16, QueueError> {
        let total = self.chain_length(out, inb)?;
        if total > usize::from(self.num_free) {
            return Err(QueueError::QueueFull {
                needed: total,
                free: self.num_free,
            });
        }
        let head = self.free_head;
        let mut cur = head;
        let mut writable = 0u64;
        let buffers = out
            .iter()
            .map(|b| (b, 0))
            .chain(inb.iter().map(|b| (b, VIRTQ_DESC_F_WRITE)));
        for (i, (&(addr, len), dir)) in buffers.enumerate() {
            let last = i + 1 == total;
            let next = self.next[usize::from(cur)];
            let flags = dir | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            if dir != 0 {
                writable += u64::from(len);
            }
            self.write_desc(cur, addr, len, flags, if last { 0 } else { next });
            if !last {
                cur = next;
            }
        }
        self.free_head = self.next[usize::from(cur)];
        self.num_free -= total as u16;
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            count: total as u16,
            writable,
        });
        self.publish(head);
        Ok(head)
    }

    /// Post a chain through an indirect table (§2.7.5.3, VIRTIO_F_INDIRECT_DESC negotiated):
    /// the `out` then `inb` buffers are written as a table into `table` at `offset`, and one
    /// ring descriptor points at it. The caller keeps `table` alive and untouched until the
    /// chain comes back from [`Self::pop_used`]; no memory is allocated here.
    pub fn add_indirect(
        &mut self,
        table: &DmaBuffer,
        offset: usize,
        out: &[(u64, u32)],
        inb: &[(u64, u32)],
        token: u64,
    ) -> Result<u16, QueueError> {
        let total = self.chain_length(out, inb)?;
        let size = size_of::<Descriptor>();
        let bytes = size * total;
        let fits = offset
            .checked_add(bytes)
            .is_some_and(|end| end <= table.len());
        if !fits || total > usize::from(self.size) {
            return Err(QueueError::IndirectTableTooSmall {
                needed: bytes,
                len: table.len().saturating_sub(offset),
            });
        }
        if self.num_free == 0 {
            return Err(QueueError::QueueFull { needed: 1, free: 0 });
        }
        let mut writable = 0u64;
        let buffers = out
            .iter()
            .map(|b| (b, 0))
            .chain(inb.iter().map(|b| (b, VIRTQ_DESC_F_WRITE)));
        for (i, (&(addr, len), dir)) in buffers.enumerate() {
            let last = i + 1 == total;
            if dir != 0 {
                writable += u64::from(len);
            }
            let desc = Descriptor {
                addr: U64::new(addr),
                len: U32::new(len),
                flags: U16::new(dir | if last { 0 } else { VIRTQ_DESC_F_NEXT }),
                next: U16::new(if last { 0 } else { i as u16 + 1 }),
            };
            // SAFETY: offset + size * total <= table.len (checked above), so entry i lies
            // inside the caller's DMA buffer; `Descriptor` has alignment 1. Volatile: the
            // device reads the table once the ring entry that points at it is published.
            unsafe {
                let p = table.as_mut_ptr().add(offset + size * i);
                ptr::write_volatile(p.cast::<Descriptor>(), desc);
            }
        }
        let head = self.free_head;
        let table_phys = table.phys() + offset as u64;
        self.write_desc(head, table_phys, bytes as u32, VIRTQ_DESC_F_INDIRECT, 0);
        self.free_head = self.next[usize::from(head)];
        self.num_free -= 1;
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            count: 1,
            writable,
        });
        self.publish(head);
        Ok(head)
    }

    /// Post descriptors exactly as given (addr, len, flags, next) into free slots, the first
    /// being the head. For tests of a device's validation (descriptor loops, addresses outside
    /// RAM, huge lengths, wrong directions): the driver does not check anything.
    ///
    /// The chain is completed like any other; `pop_used` accepts a used length up to the sum of
    /// the lengths of the descriptors given with `VIRTQ_DESC_F_WRITE`.
    ///
    /// # Safety
    /// The device may read or write any address given here; the caller must make sure that is
    /// acceptable (e.g. the addresses are outside RAM or point at memory that may be clobbered).
    pub unsafe fn add_raw_chain(
        &mut self,
        descs: &[RawDesc],
        token: u64,
    ) -> Result<u16, QueueError> {
        if self.broken {
            return Err(QueueError::Broken);
        }
        if descs.is_empty() {
            return Err(QueueError::EmptyChain);
        }
        if descs.len() > usize::from(self.num_free) {
            return Err(QueueError::QueueFull {
                needed: descs.len(),
                free: self.num_free,
            });
        }
        // Slots the descriptors will occupy, in free-list order.
        let mut slots = Vec::with_capacity(descs.len());
        let mut cur = self.free_head;
        for _ in 0..descs.len() {
            slots.push(cur);
            cur = self.next[usize::from(cur)];
        }
        for (i, d) in descs.iter().enumerate() {
            if let RawNext::Index(j) = d.next {
                if j >= descs.len() {
                    return Err(QueueError::BadRawNext { index: i });
                }
            }
        }
        let mut writable = 0u64;
        for (d, &slot) in descs.iter().zip(&slots) {
            let next = match d.next {
                RawNext::Index(j) => slots[j],
                RawNext::Absolute(n) => n,
            };
            if d.flags & VIRTQ_DESC_F_WRITE != 0 {
                writable += u64::from(d.len);
            }
            self.write_desc(slot, d.addr, d.len, d.flags, next);
        }
        let head = slots[0];
        self.free_head = cur;
        self.num_free -= descs.len() as u16;
        self.in_flight[usize::from(head)] = Some(InFlight {
            token,
            count: descs.len() as u16,
            writable,
        });
        self.publish(head);
        Ok(head)
    }

    /// Whether chains were published since the last [`Self::kick_needed`].
    pub fn unchecked_publications(&self) -> bool {
        self.avail_idx != self.kicked_idx
    }

    /// Whether the device wants a notification for what was published since the last call.
    pub fn kick_needed(&mut self) -> bool {
        // The avail idx store must be visible before we read the device's suppression state.
        fence(Ordering::SeqCst);
        let old = self.kicked_idx;
        let new = self.avail_idx;
        self.kicked_idx = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            let event = self.read16(Area::Used, self.avail_event_offset());
            // A device can only ask about entries it has not consumed yet, so an avail_event
            // past what we published is garbage: kick rather than trust it.
            let ahead = event.wrapping_sub(new);
            if ahead != 0 && ahead < 0x8000 {
                return true;
            }
            // vring_need_event: notify if `event` lies in the half-open range [old, new).
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.read16(Area::Used, RING_FLAGS) & VIRTQ_USED_F_NO_NOTIFY == 0
        }
    }

    /// Whether the device has returned a used entry not yet popped.
    pub fn has_used(&self) -> bool {
        !self.broken && self.read16(Area::Used, RING_IDX) != self.last_used
    }

    /// Take the next used entry: `(token, bytes written)`. Entries may come back in any order.
    /// A device error consumes the offending entry and is reported once; `None` when nothing
    /// is pending or the queue is broken.
    pub fn pop_used(&mut self) -> Option<Result<(u64, u32), QueueError>> {
        if self.broken {
            return None;
        }
        let idx = self.read16(Area::Used, RING_IDX);
        // The ring entry must not be read before the index that covers it.
        fence(Ordering::Acquire);
        let pending = idx.wrapping_sub(self.last_used);
        if pending == 0 {
            return None;
        }
        if pending > self.size {
            self.broken = true;
            return Some(Err(QueueError::BadUsedIndex {
                last_seen: self.last_used,
                idx,
            }));
        }
        let slot = usize::from(self.last_used % self.size);
        let elem = self.read_used_elem(slot);
        let (id, len) = (elem.id.get(), elem.len.get());
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx && self.interrupts {
            self.write16(Area::Avail, self.used_event_offset(), self.last_used);
        }
        let Some(entry) = usize::try_from(id)
            .ok()
            .and_then(|i| self.in_flight.get(i).copied().flatten())
        else {
            return Some(Err(QueueError::BadUsedId { id }));
        };
        let head = id as u16;
        self.in_flight[usize::from(head)] = None;
        self.free_chain(head, entry.count);
        if u64::from(len) > entry.writable {
            return Some(Err(QueueError::BadUsedLength {
                token: entry.token,
                id: head,
                len,
                max: entry.writable,
            }));
        }
        Some(Ok((entry.token, len)))
    }

    /// Tokens of all chains in flight (e.g. to fail them after a device reset).
    pub fn in_flight_tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.in_flight.iter().flatten().map(|e| e.token)
    }

    fn free_chain(&mut self, head: u16, count: u16) {
        let mut last = head;
        for _ in 1..count {
            last = self.next[usize::from(last)];
        }
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.num_free += count;
    }

    fn publish(&mut self, head: u16) {
        let slot = usize::from(self.avail_idx % self.size);
        self.write16(Area::Avail, avail_elem_offset(slot), head);
        // Descriptors and ring entry must be visible before the index that exposes them.
        fence(Ordering::Release);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write16(Area::Avail, RING_IDX, self.avail_idx);
    }

    /// Offset of `used_event`, after the available ring's entries.
    fn used_event_offset(&self) -> usize {
        avail_elem_offset(usize::from(self.size))
    }

    /// Offset of `avail_event`, after the used ring's entries.
    fn avail_event_offset(&self) -> usize {
        used_elem_offset(usize::from(self.size))
    }

    fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let desc = Descriptor {
            addr: U64::new(addr),
            len: U32::new(len),
            flags: U16::new(flags),
            next: U16::new(next),
        };
        let size = size_of::<Descriptor>();
        let p = self.ptr(Area::Desc, size * usize::from(index), size);
        // SAFETY: `ptr` checked that the descriptor lies inside the table; `Descriptor` has
        // alignment 1. Volatile: the memory is shared (the device reads the descriptor only
        // after the avail index that publishes it, so a split store cannot be seen half-done).
        unsafe { ptr::write_volatile(p.cast::<Descriptor>(), desc) }
    }

    fn read_used_elem(&self, slot: usize) -> UsedElem {
        let p = self.ptr(Area::Used, used_elem_offset(slot), size_of::<UsedElem>());
        // SAFETY: in bounds (checked by `ptr`); `UsedElem` has alignment 1 and every bit
        // pattern is valid. Volatile because the device writes it; it wrote the element before
        // the used index we read (ordered by the caller's Acquire fence).
        unsafe { ptr::read_volatile(p.cast::<UsedElem>()) }
    }

    fn desc_buf(&self) -> &DmaBuffer {
        self.desc.as_ref().expect("rings are present until drop")
    }
    fn avail_buf(&self) -> &DmaBuffer {
        self.avail.as_ref().expect("rings are present until drop")
    }
    fn used_buf(&self) -> &DmaBuffer {
        self.used.as_ref().expect("rings are present until drop")
    }

    /// Pointer to `len` bytes at `offset` of an area; panics on a driver bug (never on device
    /// data: every offset is computed from our own indices).
    fn ptr(&self, area: Area, offset: usize, len: usize) -> *mut u8 {
        let buf = match area {
            Area::Desc => self.desc_buf(),
            Area::Avail => self.avail_buf(),
            Area::Used => self.used_buf(),
        };
        assert!(offset + len <= buf.len(), "virtqueue access out of bounds");
        // SAFETY: offset + len <= buf.len, so the result stays inside the allocation.
        unsafe { buf.as_mut_ptr().add(offset) }
    }

    fn read16(&self, area: Area, offset: usize) -> u16 {
        let p = self.ptr(area, offset, 2);
        // SAFETY: in bounds (checked by `ptr`), 2-aligned (areas are at least 2-aligned and all
        // 16-bit fields sit at even offsets); volatile because the device writes it, and one
        // native 16-bit load so that an index the device is updating is never read torn.
        u16::from_le(unsafe { ptr::read_volatile(p.cast::<u16>()) })
    }

    fn write16(&self, area: Area, offset: usize, value: u16) {
        let p = self.ptr(area, offset, 2);
        // SAFETY: in bounds (checked by `ptr`), 2-aligned as in `read16`; volatile because the
        // device reads it.
        unsafe { ptr::write_volatile(p.cast::<u16>(), value.to_le()) }
    }
}

impl<P: Platform + ?Sized> Drop for VirtQueue<'_, P> {
    fn drop(&mut self) {
        for buf in [self.desc.take(), self.avail.take(), self.used.take()]
            .into_iter()
            .flatten()
        {
            self.platform.dma_free(buf);
        }
    }
}

#[derive(Clone, Copy)]
enum Area {
    Desc,
    Avail,
    Used,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fake::{device_queue, FakePlatform};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress};

    fn dev_queue(vq: &VirtQueue<'_, FakePlatform>) -> virtio_queue::Queue {
        device_queue(vq.size(), vq.desc_phys(), vq.avail_phys(), vq.used_phys())
    }

    /// A device that writes a used element directly (bypassing any device-side checks).
    fn inject_used(p: &FakePlatform, vq: &VirtQueue<'_, FakePlatform>, id: u32, len: u32) {
        let used = vq.used_phys();
        let idx: u16 = p.mem.read_obj(GuestAddress(used + 2)).unwrap();
        let slot = u64::from(idx % vq.size());
        p.mem
            .write_obj(id, GuestAddress(used + 4 + 8 * slot))
            .unwrap();
        p.mem
            .write_obj(len, GuestAddress(used + 8 + 8 * slot))
            .unwrap();
        p.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(used + 2))
            .unwrap();
    }

    fn buf(p: &FakePlatform, len: usize) -> DmaBuffer {
        p.dma_alloc(len, 8).unwrap()
    }

    #[test]
    fn rejects_bad_sizes() {
        let p = FakePlatform::dma_only();
        for n in [0u16, 3, 100, 65535] {
            assert_eq!(
                VirtQueue::new(&p, n).err(),
                Some(QueueError::InvalidSize(n))
            );
        }
        assert_eq!(VirtQueue::new(&p, 32768).unwrap().size(), 32768);
    }

    #[test]
    fn ring_layout_and_alignment() {
        let p = FakePlatform::dma_only();
        let vq = VirtQueue::new(&p, 8).unwrap();
        assert_eq!(vq.desc_phys() % 16, 0);
        assert_eq!(vq.avail_phys() % 2, 0);
        assert_eq!(vq.used_phys() % 4, 0);
        let live = p.dma_live.borrow().clone();
        assert_eq!(live.get(&vq.desc_phys()), Some(&(16 * 8)));
        assert_eq!(live.get(&vq.avail_phys()), Some(&(6 + 2 * 8)));
        assert_eq!(live.get(&vq.used_phys()), Some(&(6 + 8 * 8)));
        drop(vq);
        assert!(p.dma_live.borrow().is_empty(), "rings not freed");
    }

    #[test]
    fn chain_seen_by_rust_vmm_device() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        let mut dq = dev_queue(&vq);
        let (mut a, b, c) = (buf(&p, 16), buf(&p, 8), buf(&p, 32));
        a.as_mut_slice().copy_from_slice(b"0123456789abcdef");
        let head = vq
            .add(&[(a.phys(), 16), (b.phys(), 8)], &[(c.phys(), 32)], 77)
            .unwrap();
        assert_eq!(vq.num_free(), 5);
        assert!(vq.kick_needed());
        assert!(!vq.kick_needed(), "nothing new since the last kick");

        let chain = dq
            .pop_descriptor_chain(&p.mem)
            .expect("device sees the chain");
        assert_eq!(chain.head_index(), head);
        let descs: Vec<Descriptor> = chain.collect();
        let got: Vec<(u64, u32, bool)> = descs
            .iter()
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        assert_eq!(
            got,
            vec![
                (a.phys(), 16, false),
                (b.phys(), 8, false),
                (c.phys(), 32, true)
            ]
        );
        let mut header = [0u8; 16];
        p.mem.read_slice(&mut header, descs[0].addr()).unwrap();
        assert_eq!(&header, b"0123456789abcdef");
        p.mem.write_slice(b"reply!", descs[2].addr()).unwrap();
        dq.add_used(&p.mem, head, 6).unwrap();

        assert!(vq.has_used());
        assert_eq!(vq.pop_used(), Some(Ok((77, 6))));
        assert_eq!(&c.as_slice()[..6], b"reply!");
        assert_eq!(vq.pop_used(), None);
        assert_eq!(vq.num_free(), 8);
        assert_eq!(vq.in_flight(), 0);
    }

    #[test]
    fn out_of_order_completion_and_reuse() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        let mut dq = dev_queue(&vq);
        let data = buf(&p, 4096);
        // Many rounds so indices wrap the ring several times and the free list is reused.
        for round in 0..50u64 {
            let mut heads = Vec::new();
            for i in 0..4u64 {
                let off = data.phys() + 512 * i;
                let h = vq
                    .add(&[(off, 16)], &[(off + 16, 100)], round * 10 + i)
                    .unwrap();
                heads.push(h);
            }
            assert_eq!(vq.num_free(), 0);
            assert_eq!(
                vq.add(&[(data.phys(), 1)], &[], 999),
                Err(QueueError::QueueFull { needed: 1, free: 0 })
            );
            let mut chains = Vec::new();
            while let Some(c) = dq.pop_descriptor_chain(&p.mem) {
                chains.push(c.head_index());
            }
            assert_eq!(chains, heads);
            // Complete 2, 0, 3, 1.
            for (k, &i) in [2usize, 0, 3, 1].iter().enumerate() {
                dq.add_used(&p.mem, heads[i], k as u32).unwrap();
            }
            let popped: Vec<_> = std::iter::from_fn(|| vq.pop_used()).collect();
            assert_eq!(
                popped,
                vec![
                    Ok((round * 10 + 2, 0)),
                    Ok((round * 10, 1)),
                    Ok((round * 10 + 3, 2)),
                    Ok((round * 10 + 1, 3)),
                ]
            );
            assert_eq!(vq.num_free(), 8);
        }
    }

    #[test]
    fn queue_full_and_empty_chain() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 4).unwrap();
        assert_eq!(vq.add(&[], &[], 1), Err(QueueError::EmptyChain));
        vq.add(&[(0x1000, 1), (0x2000, 1)], &[(0x3000, 1)], 1)
            .unwrap();
        assert_eq!(
            vq.add(&[(0x1000, 1)], &[(0x3000, 1)], 2),
            Err(QueueError::QueueFull { needed: 2, free: 1 })
        );
        assert_eq!(
            vq.num_free(),
            1,
            "a refused add must not consume descriptors"
        );
        vq.add(&[], &[(0x4000, 1)], 3).unwrap();
        assert_eq!(vq.in_flight(), 2);
    }

    #[test]
    fn bad_used_id_is_reported_and_harmless() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        let head = vq.add(&[(0x1000, 16)], &[(0x2000, 1)], 5).unwrap();
        assert_eq!(head, 0);
        inject_used(&p, &vq, 8, 0); // out of range
        inject_used(&p, &vq, 1, 0); // in range, but not a head in flight (second desc of chain)
        inject_used(&p, &vq, u32::MAX, 0);
        assert_eq!(vq.pop_used(), Some(Err(QueueError::BadUsedId { id: 8 })));
        assert_eq!(vq.pop_used(), Some(Err(QueueError::BadUsedId { id: 1 })));
        assert_eq!(
            vq.pop_used(),
            Some(Err(QueueError::BadUsedId { id: u32::MAX }))
        );
        assert_eq!(vq.num_free(), 6, "free list untouched");
        assert!(!vq.is_broken());
        // The genuine completion still works, once; a replay is a bad id.
        inject_used(&p, &vq, 0, 1);
        inject_used(&p, &vq, 0, 1);
        assert_eq!(vq.pop_used(), Some(Ok((5, 1))));
        assert_eq!(vq.pop_used(), Some(Err(QueueError::BadUsedId { id: 0 })));
        assert_eq!(vq.num_free(), 8);
        assert_eq!(vq.pop_used(), None);
    }

    #[test]
    fn used_length_larger_than_writable() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        let h = vq
            .add(&[(0x1000, 4096)], &[(0x2000, 512), (0x3000, 1)], 9)
            .unwrap();
        inject_used(&p, &vq, h.into(), 514);
        assert_eq!(
            vq.pop_used(),
            Some(Err(QueueError::BadUsedLength {
                token: 9,
                id: h,
                len: 514,
                max: 513
            }))
        );
        assert_eq!(vq.num_free(), 8, "chain freed");
        // Exactly the writable length is fine.
        let h = vq.add(&[(0x1000, 16)], &[(0x2000, 513)], 10).unwrap();
        inject_used(&p, &vq, h.into(), 513);
        assert_eq!(vq.pop_used(), Some(Ok((10, 513))));
        // A read-only chain may report 0 only.
        let h = vq.add(&[(0x1000, 16)], &[], 11).unwrap();
        inject_used(&p, &vq, h.into(), 1);
        assert!(matches!(
            vq.pop_used(),
            Some(Err(QueueError::BadUsedLength {
                token: 11,
                max: 0,
                ..
            }))
        ));
    }

    #[test]
    fn used_idx_jump_breaks_queue() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.add(&[(0x1000, 16)], &[(0x2000, 1)], 1).unwrap();
        p.mem
            .write_obj(9u16, GuestAddress(vq.used_phys() + 2))
            .unwrap();
        assert_eq!(
            vq.pop_used(),
            Some(Err(QueueError::BadUsedIndex {
                last_seen: 0,
                idx: 9
            }))
        );
        assert!(vq.is_broken());
        assert_eq!(vq.pop_used(), None);
        assert_eq!(vq.add(&[(0x1000, 16)], &[], 2), Err(QueueError::Broken));
        assert_eq!(vq.in_flight_tokens().collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn idx_exactly_size_ahead_is_accepted() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 4).unwrap();
        let heads: Vec<u16> = (0..4)
            .map(|t| vq.add(&[], &[(0x1000, 8)], t).unwrap())
            .collect();
        for &h in heads.iter().rev() {
            inject_used(&p, &vq, h.into(), 8);
        }
        let tokens: Vec<u64> = std::iter::from_fn(|| vq.pop_used())
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(tokens, vec![3, 2, 1, 0]);
    }

    #[test]
    fn kick_honours_no_notify() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        assert!(!vq.kick_needed(), "nothing published");
        p.mem
            .write_obj(VIRTQ_USED_F_NO_NOTIFY, GuestAddress(vq.used_phys()))
            .unwrap();
        vq.add(&[(0x1000, 1)], &[], 1).unwrap();
        assert!(!vq.kick_needed());
        p.mem.write_obj(0u16, GuestAddress(vq.used_phys())).unwrap();
        vq.add(&[(0x1000, 1)], &[], 2).unwrap();
        assert!(vq.kick_needed());
    }

    #[test]
    fn kick_with_event_idx() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.set_event_idx(true);
        let avail_event = GuestAddress(vq.used_phys() + 4 + 8 * 8);
        // Device wants a kick when avail idx passes 1 (i.e. after entry index 1 is published).
        p.mem.write_obj(1u16, avail_event).unwrap();
        vq.add(&[(0x1000, 1)], &[], 1).unwrap(); // idx 0 -> 1
        assert!(!vq.kick_needed());
        vq.add(&[(0x1000, 1)], &[], 2).unwrap(); // idx 1 -> 2
        assert!(vq.kick_needed());
    }

    #[test]
    fn interrupt_suppression_flag() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.set_interrupts(false);
        let flags: u16 = p.mem.read_obj(GuestAddress(vq.avail_phys())).unwrap();
        assert_eq!(flags, VIRTQ_AVAIL_F_NO_INTERRUPT);
        vq.set_interrupts(true);
        let flags: u16 = p.mem.read_obj(GuestAddress(vq.avail_phys())).unwrap();
        assert_eq!(flags, 0);
    }

    #[test]
    fn raw_chain_written_exactly() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.add(&[(0x1000, 1)], &[], 1).unwrap(); // occupy slot 0
        let descs = [
            RawDesc {
                addr: 0xDEAD_0000_0000,
                len: u32::MAX,
                flags: VIRTQ_DESC_F_NEXT,
                next: RawNext::Index(1),
            },
            RawDesc {
                addr: 0x2000,
                len: 64,
                flags: VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE,
                next: RawNext::Index(0), // loop back to the head
            },
        ];
        // SAFETY: the fake device never processes this chain.
        let head = unsafe { vq.add_raw_chain(&descs, 42) }.unwrap();
        assert_eq!(head, 1);
        let table = vq.desc_phys();
        let rd = |i: u64| -> (u64, u32, u16, u16) {
            let a = GuestAddress(table + 16 * i);
            (
                p.mem.read_obj(a).unwrap(),
                p.mem.read_obj(GuestAddress(a.0 + 8)).unwrap(),
                p.mem.read_obj(GuestAddress(a.0 + 12)).unwrap(),
                p.mem.read_obj(GuestAddress(a.0 + 14)).unwrap(),
            )
        };
        assert_eq!(rd(1), (0xDEAD_0000_0000, u32::MAX, VIRTQ_DESC_F_NEXT, 2));
        assert_eq!(
            rd(2),
            (0x2000, 64, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1)
        );
        // rust-vmm's device side refuses to follow the loop forever.
        let mut dq = dev_queue(&vq);
        let _ = dq.pop_descriptor_chain(&p.mem).unwrap(); // slot 0 chain
        let looped = dq.pop_descriptor_chain(&p.mem).unwrap();
        assert!(looped.count() <= 8);
        // Bad Index refused; Absolute written as is.
        let bad = [RawDesc {
            addr: 0,
            len: 0,
            flags: VIRTQ_DESC_F_NEXT,
            next: RawNext::Index(5),
        }];
        // SAFETY: never processed.
        assert_eq!(
            unsafe { vq.add_raw_chain(&bad, 0) },
            Err(QueueError::BadRawNext { index: 0 })
        );
        let abs = [RawDesc {
            addr: 0,
            len: 0,
            flags: VIRTQ_DESC_F_NEXT,
            next: RawNext::Absolute(0xFFFF),
        }];
        // SAFETY: never processed.
        let h = unsafe { vq.add_raw_chain(&abs, 43) }.unwrap();
        assert_eq!(rd(h.into()).3, 0xFFFF);
        // Completion of a raw chain frees its slots; its writable length is 64.
        inject_used(&p, &vq, head.into(), 64);
        assert_eq!(vq.pop_used(), Some(Ok((42, 64))));
        assert_eq!(vq.num_free(), 8 - 1 - 1);
    }

    #[test]
    fn indirect_chain_seen_by_rust_vmm_device() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        let mut dq = dev_queue(&vq);
        let table = buf(&p, 16 * 8);
        let (a, b, c) = (buf(&p, 16), buf(&p, 512), buf(&p, 1));
        let out = [(a.phys(), 16)];
        let inb = [(b.phys(), 512), (c.phys(), 1)];
        let head = vq.add_indirect(&table, 32, &out, &inb, 7).unwrap();
        assert_eq!(vq.num_free(), 7, "one ring descriptor for three buffers");
        let ring: (u64, u32, u16) = {
            let at = vq.desc_phys() + 16 * u64::from(head);
            (
                p.mem.read_obj(GuestAddress(at)).unwrap(),
                p.mem.read_obj(GuestAddress(at + 8)).unwrap(),
                p.mem.read_obj(GuestAddress(at + 12)).unwrap(),
            )
        };
        assert_eq!(ring, (table.phys() + 32, 48, VIRTQ_DESC_F_INDIRECT));
        let chain = dq.pop_descriptor_chain(&p.mem).unwrap();
        assert_eq!(chain.head_index(), head);
        let got: Vec<(u64, u32, bool)> = chain
            .map(|d| (d.addr().0, d.len(), d.is_write_only()))
            .collect();
        assert_eq!(
            got,
            vec![
                (a.phys(), 16, false),
                (b.phys(), 512, true),
                (c.phys(), 1, true)
            ]
        );
        // The writable bytes are the table's, not the ring descriptor's.
        inject_used(&p, &vq, head.into(), 514);
        assert!(matches!(
            vq.pop_used(),
            Some(Err(QueueError::BadUsedLength {
                token: 7,
                max: 513,
                ..
            }))
        ));
        assert_eq!(vq.num_free(), 8);
        let head = vq.add_indirect(&table, 0, &out, &inb, 8).unwrap();
        inject_used(&p, &vq, head.into(), 513);
        assert_eq!(vq.pop_used(), Some(Ok((8, 513))));
    }

    #[test]
    fn indirect_table_must_fit() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 4).unwrap();
        let table = buf(&p, 48);
        let three = [(0x1000, 16), (0x2000, 512)];
        let status = [(0x3000, 1)];
        assert_eq!(
            vq.add_indirect(&table, 16, &three, &status, 1),
            Err(QueueError::IndirectTableTooSmall {
                needed: 48,
                len: 32
            })
        );
        assert_eq!(
            vq.add_indirect(&table, usize::MAX, &three, &status, 1),
            Err(QueueError::IndirectTableTooSmall { needed: 48, len: 0 })
        );
        assert_eq!(
            vq.add_indirect(&table, 0, &[], &[], 1),
            Err(QueueError::EmptyChain)
        );
        // Longer than the queue (§2.7.5.3.1), even with room in the table.
        let big = buf(&p, 16 * 5);
        let five = [(0x1000, 1); 5];
        assert!(matches!(
            vq.add_indirect(&big, 0, &five, &[], 1),
            Err(QueueError::IndirectTableTooSmall { .. })
        ));
        assert_eq!(vq.num_free(), 4, "refusals take no descriptor");
        for t in 0..4 {
            vq.add_indirect(&table, 0, &three, &status, t).unwrap();
        }
        assert_eq!(
            vq.add_indirect(&table, 0, &three, &status, 9),
            Err(QueueError::QueueFull { needed: 1, free: 0 })
        );
    }

    /// An avail_event past what was published is garbage: kick. Behind is what a device that
    /// polls leaves there: no kick.
    #[test]
    fn kick_with_avail_event_ahead_or_behind() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.set_event_idx(true);
        let avail_event = GuestAddress(vq.used_phys() + 4 + 8 * 8);
        for (event, kick) in [(5u16, true), (0x7fff, true), (0xffff, false), (0, false)] {
            vq.add(&[(0x1000, 1)], &[], 1).unwrap();
            vq.add(&[(0x1000, 1)], &[], 2).unwrap();
            assert!(vq.unchecked_publications());
            let published = vq.avail_idx;
            p.mem.write_obj(event, avail_event).unwrap();
            assert_eq!(vq.kick_needed(), kick, "avail_event {event} at {published}");
            assert!(!vq.unchecked_publications());
            inject_used(&p, &vq, 0, 0);
            inject_used(&p, &vq, 1, 0);
            while vq.pop_used().is_some() {}
        }
    }

    /// With event idx and interrupts off, popping leaves used_event where it was; on again,
    /// it follows the entries consumed.
    #[test]
    fn used_event_stays_put_while_interrupts_are_off() {
        let p = FakePlatform::dma_only();
        let mut vq = VirtQueue::new(&p, 8).unwrap();
        vq.set_event_idx(true);
        let used_event = GuestAddress(vq.avail_phys() + 4 + 2 * 8);
        vq.set_interrupts(false);
        assert_eq!(p.mem.read_obj::<u16>(used_event).unwrap(), 0xffff);
        for t in 0..3 {
            let h = vq.add(&[], &[(0x1000, 8)], t).unwrap();
            inject_used(&p, &vq, h.into(), 8);
            assert_eq!(vq.pop_used(), Some(Ok((t, 8))));
        }
        assert_eq!(p.mem.read_obj::<u16>(used_event).unwrap(), 0xffff);
        vq.set_interrupts(true);
        assert_eq!(p.mem.read_obj::<u16>(used_event).unwrap(), 3);
        let h = vq.add(&[], &[(0x1000, 8)], 9).unwrap();
        inject_used(&p, &vq, h.into(), 8);
        vq.pop_used().unwrap().unwrap();
        assert_eq!(p.mem.read_obj::<u16>(used_event).unwrap(), 4);
    }
}
