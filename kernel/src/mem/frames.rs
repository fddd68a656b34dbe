//! 4 KiB frames of the RAM above the heap: every RAM range of the memory map from the heap's
//! end up to the end of mapped RAM, less the boot structures. The heap serves Rust allocations
//! (and DMA buffers); these frames serve whole-page users such as the balloon, which must own
//! a page outright while the host has it.
//!
//! A bitmap, one bit per frame (set: free); allocation takes the lowest free frame, so a test
//! knows which frames the next allocations will be.

use crate::boot::pvh::{HvmMemmapEntry, E820_RAM};
use crate::bootinfo::RAM_MAPPED_END;
use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

pub const FRAME_SIZE: u64 = 4096;

pub struct FrameMap {
    /// Physical address of bit 0.
    base: u64,
    /// Bit set: the frame is free.
    free_bits: Vec<u64>,
    free: u64,
    total: u64,
    /// No free frame lies below this index.
    lowest: usize,
}

impl FrameMap {
    /// The frames of `memmap`'s RAM at or above `floor` and below the end of mapped RAM, less
    /// the `reserved` ranges.
    pub fn new(memmap: &[HvmMemmapEntry], floor: u64, reserved: &[Range<u64>]) -> Self {
        let clipped = |e: &HvmMemmapEntry| -> Option<(u64, u64)> {
            if e.kind != E820_RAM {
                return None;
            }
            let start = e.addr.max(floor).next_multiple_of(FRAME_SIZE);
            let end = e.addr.checked_add(e.size)?.min(RAM_MAPPED_END) / FRAME_SIZE * FRAME_SIZE;
            (start < end).then_some((start, end))
        };
        let base = memmap.iter().filter_map(clipped).map(|r| r.0).min();
        let end = memmap.iter().filter_map(clipped).map(|r| r.1).max();
        let (Some(base), Some(end)) = (base, end) else {
            return Self {
                base: 0,
                free_bits: Vec::new(),
                free: 0,
                total: 0,
                lowest: 0,
            };
        };
        let frames = ((end - base) / FRAME_SIZE) as usize;
        let mut map = Self {
            base,
            free_bits: vec![0; frames.div_ceil(64)],
            free: 0,
            total: 0,
            lowest: 0,
        };
        for (start, end) in memmap.iter().filter_map(clipped) {
            let mut a = start;
            while a < end {
                let clear = !reserved
                    .iter()
                    .any(|r| r.start < a + FRAME_SIZE && a < r.end);
                if clear && map.set_free(a) {
                    map.total += 1;
                }
                a += FRAME_SIZE;
            }
        }
        map
    }

    fn index(&self, phys: u64) -> Option<usize> {
        if phys < self.base || !phys.is_multiple_of(FRAME_SIZE) {
            return None;
        }
        let i = ((phys - self.base) / FRAME_SIZE) as usize;
        (i < self.free_bits.len() * 64).then_some(i)
    }

    /// Mark `phys` free; false if it is not a frame here or already free.
    fn set_free(&mut self, phys: u64) -> bool {
        let Some(i) = self.index(phys) else {
            return false;
        };
        let (w, b) = (i / 64, i % 64);
        if self.free_bits[w] & (1 << b) != 0 {
            return false;
        }
        self.free_bits[w] |= 1 << b;
        self.free += 1;
        self.lowest = self.lowest.min(w);
        true
    }

    /// The lowest free frame, now taken.
    pub fn alloc(&mut self) -> Option<u64> {
        let w = (self.lowest..self.free_bits.len()).find(|&w| self.free_bits[w] != 0)?;
        self.lowest = w;
        let b = self.free_bits[w].trailing_zeros() as usize;
        self.free_bits[w] &= !(1 << b);
        self.free -= 1;
        Some(self.base + (w * 64 + b) as u64 * FRAME_SIZE)
    }

    /// Give back a frame `alloc` returned. False (and nothing changes) for an address that is
    /// not a taken frame of this map: the total stays what it was.
    pub fn free(&mut self, phys: u64) -> bool {
        self.set_free(phys)
    }

    pub fn free_bytes(&self) -> u64 {
        self.free * FRAME_SIZE
    }

    pub fn total_bytes(&self) -> u64 {
        self.total * FRAME_SIZE
    }
}

static FRAMES: spin::Mutex<Option<FrameMap>> = spin::Mutex::new(None);

/// Run `f` on the frame map, built on first use from the boot memory map and the heap's end.
pub fn with<R>(f: impl FnOnce(&mut FrameMap) -> R) -> R {
    let mut frames = FRAMES.lock();
    let map = frames.get_or_insert_with(|| {
        let info = crate::bootinfo::get();
        let floor = super::heap::range().map_or(RAM_MAPPED_END, |r| r.end);
        FrameMap::new(info.memmap, floor, &info.reserved)
    });
    f(map)
}

pub fn alloc() -> Option<u64> {
    with(|m| m.alloc())
}

pub fn free(phys: u64) -> bool {
    with(|m| m.free(phys))
}
