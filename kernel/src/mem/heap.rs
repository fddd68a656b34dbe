//! The kernel heap: `linked_list_allocator` over a RAM range taken from the PVH memory map.

use crate::boot::pvh::{HvmMemmapEntry, E820_RAM};
use crate::bootinfo::RAM_MAPPED_END;
use core::ops::Range;
use linked_list_allocator::LockedHeap;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

pub const HEAP_SIZE: u64 = 32 << 20;
/// The smallest heap worth booting with; a guest with less RAM than the full heap above the
/// kernel (`--mem 32M`) gets the largest power-of-two heap between this and HEAP_SIZE that fits.
pub const MIN_HEAP_SIZE: u64 = 4 << 20;

extern "C" {
    static __kernel_end: u8;
}

const ALIGN: u64 = 2 << 20;

/// Where a heap of `size` bytes goes: the lowest 2 MiB-aligned address at or above
/// `kernel_end` such that the whole heap lies in one RAM range of `memmap`, below the end of
/// mapped RAM, and clear of every `reserved` range (the boot structures, which stay in use).
pub fn place(
    memmap: &[HvmMemmapEntry],
    kernel_end: u64,
    reserved: &[Range<u64>],
    size: u64,
) -> Result<u64, &'static str> {
    const NONE: &str = "no RAM range above the kernel can hold the heap";
    let align_up = |a: u64| a.checked_next_multiple_of(ALIGN).ok_or(NONE);
    let mut start = align_up(kernel_end)?;
    loop {
        let end = start.checked_add(size).ok_or(NONE)?;
        if end > RAM_MAPPED_END {
            return Err(NONE);
        }
        if let Some(r) = reserved
            .iter()
            .find(|r| !r.is_empty() && r.start < end && start < r.end)
        {
            start = align_up(r.end)?;
            continue;
        }
        // Entries whose end overflows are skipped (BootInfo::parse refuses them anyway).
        let in_ram = memmap.iter().any(|e| {
            e.kind == E820_RAM
                && e.addr <= start
                && e.addr.checked_add(e.size).is_some_and(|e| e >= end)
        });
        if in_ram {
            return Ok(start);
        }
        // Try the next RAM range that starts above this candidate.
        let next = memmap
            .iter()
            .filter(|e| e.kind == E820_RAM && e.addr > start)
            .map(|e| e.addr)
            .min()
            .ok_or(NONE)?;
        start = align_up(next)?;
    }
}

/// Place the heap (see [`place`]) and hand it to the allocator. Returns its physical range.
pub fn init(
    memmap: &[HvmMemmapEntry],
    reserved: &[Range<u64>],
) -> Result<(u64, u64), &'static str> {
    let kernel_end = &raw const __kernel_end as u64;
    let (start, size) = place_largest(memmap, kernel_end, reserved)?;
    // SAFETY: the range is RAM per the memory map, above the kernel image, inside the identity
    // map, clear of the boot structures, and handed to the allocator exactly once.
    unsafe { ALLOCATOR.lock().init(start as *mut u8, size as usize) };
    RANGE.call_once(|| start..start + size);
    Ok((start, start + size))
}

/// Where the heap lies, once [`init`] placed it (the frame allocator takes the RAM above).
static RANGE: spin::Once<Range<u64>> = spin::Once::new();

pub fn range() -> Option<Range<u64>> {
    RANGE.get().cloned()
}

/// The heap's free bytes.
pub fn free() -> usize {
    ALLOCATOR.lock().free()
}

/// The largest heap from HEAP_SIZE down to MIN_HEAP_SIZE (halving) that [`place`] finds room
/// for, and where.
pub fn place_largest(
    memmap: &[HvmMemmapEntry],
    kernel_end: u64,
    reserved: &[Range<u64>],
) -> Result<(u64, u64), &'static str> {
    let mut size = HEAP_SIZE;
    loop {
        match place(memmap, kernel_end, reserved, size) {
            Ok(start) => return Ok((start, size)),
            Err(e) if size / 2 < MIN_HEAP_SIZE => return Err(e),
            Err(_) => size /= 2,
        }
    }
}

pub fn used() -> usize {
    ALLOCATOR.lock().used()
}
