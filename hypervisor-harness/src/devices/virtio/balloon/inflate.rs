//! The inflate and deflate queues: PFN arrays out of descriptor chains, the device's record of
//! which guest pages are in the balloon, and giving inflated pages back to the host with
//! `madvise(MADV_DONTNEED)` on the guest-memory mapping (a deflated page then comes back
//! zero-filled when the guest first touches it). Free page reporting discards the same way,
//! without taking the pages into the balloon.

use super::BalloonCounters;
use crate::devices::virtio::Memory;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// The balloon's page: 4 KiB whatever the host's page size.
pub const PAGE_SHIFT: u64 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// Most PFNs taken from one chain (a 4096-entry array, 16 KiB; Linux sends 256); the rest
/// of a longer chain is ignored and counted as malformed.
pub const MAX_PFNS_PER_CHAIN: usize = 4096;

/// The PFNs of one chain: every device-readable descriptor as an array of le32 PFNs. A chain
/// with device-writable descriptors, a length that is not a multiple of 4, unreadable memory or
/// too many PFNs is malformed: what could be read is used, the rest ignored.
pub fn chain_pfns<M>(mem: &Memory, chain: DescriptorChain<M>) -> (Vec<u32>, bool)
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut pfns = Vec::new();
    let mut malformed = false;
    for d in chain {
        if d.is_write_only() || d.len() % 4 != 0 {
            malformed = true;
            continue;
        }
        let n = (d.len() / 4) as usize;
        if pfns.len() + n > MAX_PFNS_PER_CHAIN {
            malformed = true;
            break;
        }
        let mut bytes = vec![0u8; d.len() as usize];
        if mem.read_slice(&mut bytes, d.addr()).is_err() {
            malformed = true;
            continue;
        }
        pfns.extend(
            bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|c| u32::from_le_bytes(*c)),
        );
    }
    (pfns, malformed)
}

/// One bit per guest page: set while the page is in the balloon.
pub struct PageBitmap {
    words: Vec<u64>,
    pages: u64,
}

impl PageBitmap {
    /// For guest memory ending below `end` (bytes).
    pub fn new(end: u64) -> Self {
        let pages = end.div_ceil(PAGE_SIZE);
        Self {
            words: vec![0; pages.div_ceil(64) as usize],
            pages,
        }
    }

    pub fn contains(&self, pfn: u64) -> bool {
        pfn < self.pages && self.words[(pfn / 64) as usize] & (1 << (pfn % 64)) != 0
    }

    /// Set `pfn`'s bit; false if it was set already (or beyond the map).
    pub fn insert(&mut self, pfn: u64) -> bool {
        if pfn >= self.pages || self.contains(pfn) {
            return false;
        }
        self.words[(pfn / 64) as usize] |= 1 << (pfn % 64);
        true
    }

    /// Clear `pfn`'s bit; false if it was not set.
    pub fn remove(&mut self, pfn: u64) -> bool {
        if !self.contains(pfn) {
            return false;
        }
        self.words[(pfn / 64) as usize] &= !(1 << (pfn % 64));
        true
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    pub fn clear(&mut self) {
        self.words.fill(0);
    }
}

/// Whether `pfn`'s whole page is guest RAM.
fn in_ram(mem: &Memory, pfn: u64) -> bool {
    mem.check_range(GuestAddress(pfn << PAGE_SHIFT), PAGE_SIZE as usize)
}

/// Give `len` bytes of guest RAM at `gpa` back to the host. The range must lie inside one
/// region of `mem`; it is checked again here, so nothing outside guest RAM is ever touched.
pub fn discard(mem: &Memory, gpa: u64, len: u64) -> std::io::Result<()> {
    let bad = || std::io::Error::other(format!("{len:#x} bytes at {gpa:#x} are not guest RAM"));
    let region = mem.find_region(GuestAddress(gpa)).ok_or_else(bad)?;
    let offset = gpa - region.start_addr().0;
    if offset.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(bad());
    }
    let host = region
        .get_host_address(vm_memory::MemoryRegionAddress(offset))
        .map_err(|_| bad())?;
    // SAFETY: host..host+len lies inside the region's mapping (checked above), which stays
    // mapped for the life of `mem`. MADV_DONTNEED only drops the pages' contents: the mapping
    // stays valid and reads zero afterwards, which is what the guest agreed to by putting
    // these pages in the balloon.
    let r = unsafe { libc::madvise(host.cast(), len as usize, libc::MADV_DONTNEED) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Take `pfns` into the balloon: PFNs outside guest RAM and ones already in are ignored and
/// counted; the rest are marked and discarded in runs of consecutive pages.
pub fn inflate(mem: &Memory, map: &mut PageBitmap, pfns: &[u32], c: &mut BalloonCounters) {
    let mut taken: Vec<u64> = Vec::with_capacity(pfns.len());
    for &pfn in pfns {
        let pfn = u64::from(pfn);
        if !in_ram(mem, pfn) {
            c.outside_ram += 1;
        } else if !map.insert(pfn) {
            c.duplicates += 1;
        } else {
            taken.push(pfn);
        }
    }
    c.inflated += taken.len() as u64;
    taken.sort_unstable();
    let mut i = 0;
    while i < taken.len() {
        let start = taken[i];
        let mut end = start + 1;
        i += 1;
        while i < taken.len() && taken[i] == end {
            end += 1;
            i += 1;
        }
        if discard(mem, start << PAGE_SHIFT, (end - start) << PAGE_SHIFT).is_err() {
            c.discard_errors += 1;
        } else {
            c.discarded += end - start;
        }
    }
}

/// Take `pfns` out of the balloon: ones not in it (or outside RAM) are ignored and counted.
/// The host does nothing: a discarded page faults back in, zeroed, when the guest touches it.
pub fn deflate(mem: &Memory, map: &mut PageBitmap, pfns: &[u32], c: &mut BalloonCounters) {
    for &pfn in pfns {
        let pfn = u64::from(pfn);
        if !in_ram(mem, pfn) {
            c.outside_ram += 1;
        } else if map.remove(pfn) {
            c.deflated += 1;
        } else {
            c.not_in_balloon += 1;
        }
    }
}

/// Free page reporting: every device-writable descriptor of the chain is a run of free guest
/// pages (whole 4 KiB pages of RAM) the host may drop; the guest keeps them and may use them
/// again at any time. Anything else is ignored and counted.
pub fn report<M>(mem: &Memory, chain: DescriptorChain<M>, c: &mut BalloonCounters)
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    for d in chain {
        let (addr, len) = (d.addr().0, u64::from(d.len()));
        let whole_pages = d.is_write_only()
            && len > 0
            && addr.is_multiple_of(PAGE_SIZE)
            && len.is_multiple_of(PAGE_SIZE);
        if whole_pages && mem.check_range(d.addr(), len as usize) && discard(mem, addr, len).is_ok()
        {
            c.reported += len / PAGE_SIZE;
        } else {
            c.report_refused += 1;
        }
    }
}
