//! What the disk tests share: the seeds from the command line and a small PRNG.

use crate::{bootinfo, pattern};

/// Seed of the image's original content (`disk_seed=`).
pub fn seed() -> Option<u64> {
    bootinfo::get().arg_u64("disk_seed")
}

/// Seed of what the guest writes (`write_seed=`); no writes without it.
pub fn write_seed() -> Option<u64> {
    bootinfo::get().arg_u64("write_seed")
}

/// xorshift64*, for random offsets.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0 | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The first sector of `buf` (which starts at `lba` on a disk of `capacity` sectors) that holds
/// neither the image's pattern nor, inside the write region, the written pattern: tests that
/// read the whole disk may run after tests that wrote it.
pub fn first_bad_sector(capacity: u64, lba: u64, buf: &[u8]) -> Option<u64> {
    let seed = seed()?;
    let region = pattern::write_region_start(capacity)
        ..pattern::write_region_start(capacity) + pattern::WRITE_REGION_SECTORS;
    buf.as_chunks::<{ pattern::SECTOR }>()
        .0
        .iter()
        .enumerate()
        .map(|(i, s)| (lba + i as u64, s))
        .find(|&(l, s)| {
            pattern::first_mismatch(seed, l, s).is_some()
                && !(region.contains(&l)
                    && write_seed().is_some_and(|w| pattern::first_mismatch(w, l, s).is_none()))
        })
        .map(|(l, _)| l)
}
