//! The kernel heap: `linked_list_allocator` over a RAM range taken from the PVH memory map.

use crate::boot::pvh::{HvmMemmapEntry, E820_RAM};
use linked_list_allocator::LockedHeap;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

pub const HEAP_SIZE: u64 = 32 << 20;

extern "C" {
    static __kernel_end: u8;
}

/// Place the heap in the first RAM range above the kernel image that can hold it.
/// Returns the heap's physical range.
pub fn init(memmap: &[HvmMemmapEntry]) -> Result<(u64, u64), &'static str> {
    let kernel_end = &raw const __kernel_end as u64;
    let start = (kernel_end + 0x1f_ffff) & !0x1f_ffff;
    let region = memmap
        .iter()
        .filter(|e| e.kind == E820_RAM)
        .find(|e| e.addr <= start && e.addr + e.size >= start + HEAP_SIZE)
        .ok_or("no RAM range above the kernel can hold the heap")?;
    let _ = region;
    // SAFETY: the range is RAM per the memory map, above the kernel image, identity-mapped, and
    // handed to the allocator exactly once.
    unsafe { ALLOCATOR.lock().init(start as *mut u8, HEAP_SIZE as usize) };
    Ok((start, start + HEAP_SIZE))
}

pub fn used() -> usize {
    ALLOCATOR.lock().used()
}
