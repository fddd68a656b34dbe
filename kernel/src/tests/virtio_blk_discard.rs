//! virtio-blk discard and write-zeroes through the guest driver, checking only what the spec
//! guarantees: a write-zeroes range reads back as zeroes (with or without UNMAP), a discarded
//! range reads as zeroes or as its old data, nothing outside the ranges changes, and hostile
//! segments get the device's IOERR or UNSUPP without touching the disk. Runs against our
//! harness's model and QEMU's `virtio-blk-pci` alike.
//!
//! The disk's layout, in sectors (the host test checks the image against it):
//! [`START`, +`LEN`) write-zeroes, [+`LEN`, +2`LEN`) write-zeroes with UNMAP, [+2`LEN`, +3`LEN`)
//! discard, then two 8-sector ranges discarded in one request (or two, if the device takes one
//! segment), all inside [`START`, `END`) written with the pattern first.

use super::disk;
use super::virtio_blk::{best_mode, find, wanted_features, QUEUE_SIZE};
use crate::ktap::Outcome;
use crate::platform::{KernelPlatform, PLATFORM};
use crate::{check, fail, pattern, println, try_or_fail};
use alloc::vec;
use drivers::platform::Platform;
use drivers::virtio::blk::{blk_feature, req_type, BlkError, VirtioBlk};

/// First sector of the test's region (1 MiB in, 4 KiB-aligned).
pub const START: u64 = 2048;
/// Sectors of each of the three big ranges (1 MiB).
pub const LEN: u32 = 2048;
/// The two small discards of one request: sector and length.
pub const SMALL: [(u64, u32); 2] = [
    (START + 3 * LEN as u64, 8),
    (START + 3 * LEN as u64 + 16, 8),
];
/// End of the region the test writes its pattern over.
pub const END: u64 = START + 3 * LEN as u64 + 256;
/// Seed of the pattern written over the region when `write_seed=` is not given.
const DEFAULT_SEED: u64 = 0xd15c_a7d5;
/// UNMAP in a segment's flags.
const UNMAP: u32 = 1;

type Blk = VirtioBlk<'static, KernelPlatform>;

/// Send one discard or write-zeroes request of `segments` past the driver's checks; the
/// device's answer (the outer error: the driver got none).
fn device_answer(
    blk: &mut Blk,
    kind: u32,
    segments: &[(u64, u32, u32)],
) -> Result<Result<u32, BlkError>, BlkError> {
    let mut b = PLATFORM
        .dma_alloc(16 * segments.len(), 16)
        .map_err(BlkError::Dma)?;
    for (raw, &(sector, n, flags)) in b.as_mut_slice().chunks_mut(16).zip(segments) {
        raw[..8].copy_from_slice(&sector.to_le_bytes());
        raw[8..12].copy_from_slice(&n.to_le_bytes());
        raw[12..].copy_from_slice(&flags.to_le_bytes());
    }
    let id = blk
        .submit_request_unchecked(kind, 0, Some(b), false)
        .map_err(|e| {
            if let Some(b) = e.buffer {
                PLATFORM.dma_free(b);
            }
            e.error
        })?;
    blk.notify();
    let c = blk.wait_for(id)?;
    if let Some(b) = c.buffer {
        PLATFORM.dma_free(b);
    }
    Ok(c.result)
}

/// Whether every sector of `buf` (read from `lba`) is zero.
fn all_zero(buf: &[u8]) -> bool {
    buf.iter().all(|&b| b == 0)
}

/// Read `count` sectors at `lba` and count those that are zero, failing on any sector that is
/// neither zero nor (if `old` is given) the pattern of `old`'s seed.
fn read_zero_or_pattern(
    blk: &mut Blk,
    lba: u64,
    count: u32,
    old: Option<u64>,
) -> Result<usize, alloc::string::String> {
    let mut buf = vec![0u8; count as usize * pattern::SECTOR];
    blk.read(lba, &mut buf)
        .map_err(|e| alloc::format!("read {}+{}: {}", lba, count, e))?;
    let mut zero = 0;
    let mut expect = [0u8; pattern::SECTOR];
    for (i, sector) in buf.chunks(pattern::SECTOR).enumerate() {
        let at = lba + i as u64;
        if all_zero(sector) {
            zero += 1;
            continue;
        }
        let Some(seed) = old else {
            return Err(alloc::format!("sector {} is not zero", at));
        };
        pattern::fill(seed, at, &mut expect);
        if sector != expect {
            return Err(alloc::format!(
                "sector {} is neither zero nor its old data",
                at
            ));
        }
    }
    Ok(zero)
}

/// The region outside the test's ranges still holds `seed`'s pattern.
fn untouched(blk: &mut Blk, seed: u64, lba: u64, count: u64) -> Result<(), alloc::string::String> {
    let mut buf = vec![0u8; count as usize * pattern::SECTOR];
    blk.read(lba, &mut buf)
        .map_err(|e| alloc::format!("read {}+{}: {}", lba, count, e))?;
    match pattern::first_mismatch(seed, lba, &buf) {
        Some(bad) => Err(alloc::format!("sector {} changed", bad)),
        None => Ok(()),
    }
}

pub fn run() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let mode = try_or_fail!(best_mode(f), "virtio-blk {}: interrupts", f.address);
    let wanted = try_or_fail!(wanted_features(), "virtio-blk");
    let mut blk = match VirtioBlk::with_features(&PLATFORM, f, mode, QUEUE_SIZE, wanted) {
        Ok(b) => b,
        Err(e) => fail!("virtio-blk {}: init: {}", f.address, e),
    };
    let both = blk_feature::DISCARD | blk_feature::WRITE_ZEROES;
    if blk.features() & both != both {
        return Outcome::Skip("discard and write-zeroes not both negotiated");
    }
    let limits = try_or_fail!(blk.discard_limits(), "discard limits");
    println!(
        "# virtio-blk discard: max_discard_sectors={} max_discard_seg={} \
         discard_sector_alignment={} max_write_zeroes_sectors={} max_write_zeroes_seg={} \
         write_zeroes_may_unmap={}",
        limits.max_discard_sectors,
        limits.max_discard_seg,
        limits.discard_sector_alignment,
        limits.max_write_zeroes_sectors,
        limits.max_write_zeroes_seg,
        u8::from(limits.write_zeroes_may_unmap)
    );
    if blk.read_only() {
        return read_only(&mut blk);
    }
    let cap = blk.capacity();
    check!(cap > END, "disk of {} sectors is too small", cap);
    check!(
        limits.max_discard_sectors >= LEN && limits.max_write_zeroes_sectors >= LEN,
        "limits below {} sectors",
        LEN
    );

    // The pattern over the whole region, so that what changes is known.
    let seed = disk::write_seed().unwrap_or(DEFAULT_SEED);
    let mut data = vec![0u8; (END - START) as usize * pattern::SECTOR];
    pattern::fill(seed, START, &mut data);
    try_or_fail!(blk.write(START, &data), "write the pattern");

    try_or_fail!(blk.write_zeroes(START, LEN, false), "write-zeroes");
    let zeroes_unmap = START + u64::from(LEN);
    try_or_fail!(
        blk.write_zeroes(zeroes_unmap, LEN, true),
        "write-zeroes with UNMAP"
    );
    let discarded = zeroes_unmap + u64::from(LEN);
    try_or_fail!(blk.discard(discarded, LEN), "discard");
    if limits.max_discard_seg >= 2 {
        try_or_fail!(blk.discard_ranges(&SMALL), "a two-segment discard");
    } else {
        for (sector, n) in SMALL {
            try_or_fail!(blk.discard(sector, n), "discard");
        }
    }

    // The driver's own checks: nothing past the end, nothing above the limits.
    check!(
        matches!(blk.discard(cap, 1), Err(BlkError::OutOfRange { .. })),
        "a discard past the end was not refused by the driver"
    );
    check!(
        matches!(
            blk.write_zeroes(0, limits.max_write_zeroes_sectors.saturating_add(1), false),
            Err(BlkError::TooManySectors { .. } | BlkError::OutOfRange { .. })
        ),
        "a write-zeroes above the limit was not refused by the driver"
    );

    // Hostile segments, past the driver: the device refuses each and changes nothing.
    let probe = END - 8;
    for (what, kind, segment, want) in [
        (
            "discard past the end",
            req_type::DISCARD,
            (cap, 1, 0),
            BlkError::IoError,
        ),
        (
            "write-zeroes straddling the end",
            req_type::WRITE_ZEROES,
            (cap - 1, 2, 0),
            BlkError::IoError,
        ),
        (
            "write-zeroes with an unknown flag",
            req_type::WRITE_ZEROES,
            (probe, 1, 2),
            BlkError::Unsupported,
        ),
        (
            "discard with UNMAP",
            req_type::DISCARD,
            (probe, 1, UNMAP),
            BlkError::Unsupported,
        ),
    ] {
        let answer = try_or_fail!(device_answer(&mut blk, kind, &[segment]), "{}", what);
        check!(
            answer == Err(want),
            "{}: the device answered {:?}, not {:?}",
            what,
            answer,
            want
        );
    }

    // What the spec guarantees, read back.
    for (what, lba) in [
        ("write-zeroes", START),
        ("write-zeroes with UNMAP", zeroes_unmap),
    ] {
        let zero = try_or_fail!(read_zero_or_pattern(&mut blk, lba, LEN, None), "{}", what);
        check!(
            zero == LEN as usize,
            "{}: {} of {} sectors zero",
            what,
            zero,
            LEN
        );
    }
    let zero = try_or_fail!(
        read_zero_or_pattern(&mut blk, discarded, LEN, Some(seed)),
        "discard"
    );
    let mut small_zero = 0;
    for (sector, n) in SMALL {
        small_zero += try_or_fail!(
            read_zero_or_pattern(&mut blk, sector, n, Some(seed)),
            "two-segment discard"
        );
    }
    println!(
        "# virtio-blk discard: {} of {} discarded sectors read as zeroes, {} of 16 in the \
         two-segment request",
        zero, LEN, small_zero
    );
    // Between and after the small ranges, the pattern stays.
    let gap = SMALL[0].0 + u64::from(SMALL[0].1);
    try_or_fail!(untouched(&mut blk, seed, gap, 8), "between the discards");
    let tail = SMALL[1].0 + u64::from(SMALL[1].1);
    try_or_fail!(
        untouched(&mut blk, seed, tail, END - tail),
        "after the discards"
    );
    try_or_fail!(blk.flush(), "flush");
    Outcome::Pass
}

/// On a read-only disk: the driver refuses both, and the device changes nothing (the host test
/// checks the image). The device answers IOERR to a write-zeroes; a discard, being only a
/// hint, may also succeed without effect (QEMU with its default `discard=ignore` answers OK).
fn read_only(blk: &mut Blk) -> Outcome {
    check!(
        blk.discard(0, 1) == Err(BlkError::ReadOnly)
            && blk.write_zeroes(0, 1, true) == Err(BlkError::ReadOnly),
        "the driver submitted a discard or write-zeroes to a read-only disk"
    );
    for (kind, flags) in [
        (req_type::DISCARD, 0),
        (req_type::WRITE_ZEROES, 0),
        (req_type::WRITE_ZEROES, UNMAP),
    ] {
        let answer = try_or_fail!(
            device_answer(blk, kind, &[(0, 1, flags)]),
            "unchecked request"
        );
        println!(
            "# virtio-blk read-only: type {} flags {} answered {:?}",
            kind, flags, answer
        );
        let allowed =
            answer == Err(BlkError::IoError) || (kind == req_type::DISCARD && answer.is_ok());
        check!(
            allowed,
            "the device answered {:?} to type {} on a read-only disk",
            answer,
            kind
        );
    }
    Outcome::Pass
}
