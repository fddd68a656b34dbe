//! The seeded disk pattern shared (by definition, not by code) with the host tests: sector
//! `lba` of an image with seed `s` is 64 little-endian words of splitmix64, started from
//! `s ^ lba * 0xD1B54A32D192ED03`. The host writes images with it and verifies what the guest
//! wrote; the guest verifies what it reads.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GOLDEN);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub const SECTOR: usize = 512;

/// Fill `buf` (whole sectors) with the pattern of sectors `lba..`.
pub fn fill(seed: u64, lba: u64, buf: &mut [u8]) {
    for (i, sector) in buf.as_chunks_mut::<SECTOR>().0.iter_mut().enumerate() {
        let mut state = seed ^ (lba + i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for word in sector.as_chunks_mut::<8>().0 {
            *word = splitmix(&mut state).to_le_bytes();
        }
    }
}

/// The first sector in `buf` (starting at `lba`) that differs from the pattern.
pub fn first_mismatch(seed: u64, lba: u64, buf: &[u8]) -> Option<u64> {
    let mut expect = [0u8; SECTOR];
    for (i, sector) in buf.as_chunks::<SECTOR>().0.iter().enumerate() {
        fill(seed, lba + i as u64, &mut expect);
        if *sector != expect {
            return Some(lba + i as u64);
        }
    }
    None
}

/// Sectors the guest writes with `write_seed`, per path, so the host knows what to expect:
/// virtio-blk writes `[cap/2, cap/2 + 64)` of its disk; IDE PIO writes `[cap/2, cap/2 + 8)` and
/// IDE DMA `[cap/2 + 8, cap/2 + 64)` of the IDE disk.
pub const WRITE_REGION_SECTORS: u64 = 64;
pub const IDE_PIO_WRITE_SECTORS: u64 = 8;

pub fn write_region_start(capacity: u64) -> u64 {
    capacity / 2
}
