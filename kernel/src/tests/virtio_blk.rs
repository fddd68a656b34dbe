//! virtio-blk through the guest driver: integrity of every sector, the ends of the disk, the
//! three interrupt modes, many requests in flight, and malformed chains the device must refuse.
//! Runs against our harness's model and QEMU's `virtio-blk-pci` alike.

use super::disk;
use crate::arch::{apic, ioapic, vectors};
use crate::ktap::Outcome;
use crate::platform::{KernelPlatform, PLATFORM};
use crate::{check, fail, pattern, pci, println, try_or_fail};
use alloc::vec;
use alloc::vec::Vec;
use drivers::pci::PciFunction;
use drivers::platform::Platform;
use drivers::virtio::blk::{blk_feature, BlkError, VirtioBlk, DRIVER_FEATURES};
use drivers::virtio::feature;
use drivers::virtio::pci::{
    device_type, msix_table_size, virtio_device_type, InterruptMode, InterruptPlan,
};
use drivers::virtio::queue::{RawDesc, RawNext, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

pub const QUEUE_SIZE: u16 = 128;

/// Every virtio-blk function a modern driver may bind, in bus order: modern (1af4:1042) and
/// transitional (1af4:1001, what stock QEMU presents) alike.
pub fn all() -> impl Iterator<Item = &'static PciFunction> {
    pci::devices()
        .iter()
        .filter(|f| virtio_device_type(f) == Some(device_type::BLOCK))
}

/// The first virtio-blk function.
pub fn find() -> Option<&'static PciFunction> {
    all().next()
}

/// MSI-X with `vectors` table entries: `[config, queue]`, or one vector shared by both.
fn msix_with(vectors: usize) -> InterruptMode {
    InterruptMode::Msix {
        dest_apic_id: apic::id() as u8,
        vectors: if vectors >= 2 {
            vec![vectors::VIRTIO_CONFIG, vectors::VIRTIO_QUEUE]
        } else {
            vec![vectors::VIRTIO_QUEUE]
        },
    }
}

/// What `f`'s capabilities allow, best first: MSI-X, INTx, polling.
pub fn plan(f: &PciFunction) -> InterruptPlan {
    // A config read that fails reads as "no MSI-X": INTx or polling still work.
    let table = msix_table_size(&PLATFORM, f).unwrap_or(None);
    InterruptPlan::choose(f, table, 2, ioapic::pins())
}

/// The optional features `blk_features=` can mask, by the names the features line uses.
const MASKABLE: [(&str, u64); 5] = [
    ("event_idx", feature::RING_EVENT_IDX),
    ("indirect", feature::RING_INDIRECT_DESC),
    ("mq", blk_feature::MQ),
    ("discard", blk_feature::DISCARD),
    ("write_zeroes", blk_feature::WRITE_ZEROES),
];

/// The features to ask for, from `blk_features=` on the command line: `all` (or absent) is
/// everything the driver knows; `none` masks the optional ones ([`MASKABLE`]: event idx,
/// indirect descriptors, multiqueue, discard, write zeroes); a comma list such as
/// `event_idx,mq` keeps only those.
pub fn wanted_features() -> Result<u64, alloc::string::String> {
    let Some(value) = crate::bootinfo::get().arg("blk_features") else {
        return Ok(DRIVER_FEATURES);
    };
    let base = MASKABLE
        .iter()
        .fold(DRIVER_FEATURES, |bits, (_, bit)| bits & !bit);
    match value {
        "all" => return Ok(DRIVER_FEATURES),
        "none" => return Ok(base),
        _ => {}
    }
    value.split(',').try_fold(base, |wanted, name| {
        match MASKABLE.iter().find(|(known, _)| *known == name) {
            Some((_, bit)) => Ok(wanted | bit),
            None => Err(alloc::format!("blk_features: unknown feature {:?}", name)),
        }
    })
}

/// Names of the optional features in `bits` (or `none`); `mq` with the number of queues in
/// use when `queues` is given.
fn fast_path_names(bits: u64, queues: Option<usize>) -> alloc::string::String {
    let mut words: Vec<alloc::string::String> = Vec::new();
    for (name, bit) in MASKABLE {
        if bits & bit == 0 {
            continue;
        }
        words.push(match (bit, queues) {
            (blk_feature::MQ, Some(n)) => alloc::format!("mq={}", n),
            _ => name.into(),
        });
    }
    if words.is_empty() {
        words.push("none".into());
    }
    words.join(" ")
}

/// The fast-path features `blk` negotiated and those its device offered, as the host tests
/// read them: `event_idx indirect mq=2; offered: event_idx indirect mq`.
pub fn fast_path_summary(blk: &VirtioBlk<'static, KernelPlatform>) -> alloc::string::String {
    alloc::format!(
        "{}; offered: {}",
        fast_path_names(blk.features(), Some(blk.num_queues())),
        fast_path_names(blk.transport().device_features(), None)
    )
}

/// Completions per request queue, `a b ...`, failing when a queue carried none (with MQ, every
/// queue must have been used).
fn per_queue(
    blk: &VirtioBlk<'static, KernelPlatform>,
) -> Result<alloc::string::String, alloc::string::String> {
    let counts: Vec<u64> = (0..blk.num_queues()).map(|q| blk.completed_on(q)).collect();
    if let Some(idle) = counts.iter().position(|&c| c == 0) {
        return Err(alloc::format!(
            "queue {} of {} completed nothing",
            idle,
            counts.len()
        ));
    }
    Ok(counts
        .iter()
        .map(|c| alloc::format!("{}", c))
        .collect::<Vec<_>>()
        .join(" "))
}

/// Devices whose interrupt plan has been logged (once each).
static LOGGED: spin::Mutex<Vec<drivers::pci::PciAddress>> = spin::Mutex::new(Vec::new());

/// The best interrupt mode `f` offers (see [`plan`]), set up; the choice is logged once per
/// device.
pub fn best_mode(f: &PciFunction) -> Result<InterruptMode, alloc::string::String> {
    let plan = plan(f);
    {
        let mut logged = LOGGED.lock();
        if !logged.contains(&f.address) {
            logged.push(f.address);
            println!("# virtio-blk {}: interrupts: {}", f.address, plan);
        }
    }
    Ok(match plan {
        InterruptPlan::Msix { vectors } => msix_with(vectors),
        InterruptPlan::Intx { .. } => intx(f)?,
        InterruptPlan::Polled => InterruptMode::Polled,
    })
}

/// INTx: route the function's interrupt line (level) to our vector.
pub fn intx(f: &PciFunction) -> Result<InterruptMode, alloc::string::String> {
    let pin = f.interrupt_line;
    if f.interrupt_pin == 0 || pin as u32 >= ioapic::pins() {
        return Err(alloc::format!(
            "{} has no usable interrupt line ({})",
            f.address,
            pin
        ));
    }
    ioapic::route(
        pin,
        vectors::VIRTIO_INTX,
        ioapic::Trigger::Level,
        apic::id(),
    );
    Ok(InterruptMode::Intx {
        vector: vectors::VIRTIO_INTX,
    })
}

macro_rules! open {
    ($f:expr) => {
        open!(
            $f,
            try_or_fail!(best_mode($f), "virtio-blk {}: interrupts", $f.address)
        )
    };
    ($f:expr, $mode:expr) => {
        match VirtioBlk::with_features(
            &PLATFORM,
            $f,
            $mode,
            QUEUE_SIZE,
            try_or_fail!(wanted_features(), "virtio-blk"),
        ) {
            Ok(b) => b,
            Err(e) => fail!("virtio-blk {}: init: {}", $f.address, e),
        }
    };
}

/// Data segments of the multi-segment requests, and the bytes of each.
const SEGMENTS: usize = 8;
const SEGMENT: usize = 2048;

/// Run one segmented request and wait for it; the segments come back.
fn run_segments(
    blk: &mut VirtioBlk<'static, KernelPlatform>,
    submitted: Result<drivers::virtio::blk::RequestId, drivers::virtio::blk::SubmitError>,
) -> Result<Vec<drivers::platform::DmaBuffer>, BlkError> {
    let id = submitted.map_err(|e| {
        for b in e.segments {
            PLATFORM.dma_free(b);
        }
        e.error
    })?;
    blk.notify();
    let c = blk.wait_for(id)?;
    if let Err(e) = c.result {
        for b in c.segments {
            PLATFORM.dma_free(b);
        }
        return Err(e);
    }
    Ok(c.segments)
}

/// Read [`SEGMENTS`] × [`SEGMENT`] bytes from `sector` as one request.
fn segmented_read(
    blk: &mut VirtioBlk<'static, KernelPlatform>,
    sector: u64,
) -> Result<Vec<u8>, BlkError> {
    let mut segments = Vec::with_capacity(SEGMENTS);
    for _ in 0..SEGMENTS {
        match PLATFORM.dma_alloc(SEGMENT, 512) {
            Ok(b) => segments.push(b),
            Err(e) => {
                segments.into_iter().for_each(|b| PLATFORM.dma_free(b));
                return Err(BlkError::Dma(e));
            }
        }
    }
    let submitted = blk.submit_read_segments(sector, segments);
    let segments = run_segments(blk, submitted)?;
    let mut out = Vec::with_capacity(SEGMENTS * SEGMENT);
    for b in segments {
        out.extend_from_slice(b.as_slice());
        PLATFORM.dma_free(b);
    }
    Ok(out)
}

/// Write `data` ([`SEGMENTS`] × [`SEGMENT`] bytes) at `sector` as one request.
fn segmented_write(
    blk: &mut VirtioBlk<'static, KernelPlatform>,
    sector: u64,
    data: &[u8],
) -> Result<(), BlkError> {
    let mut segments = Vec::with_capacity(SEGMENTS);
    for chunk in data.chunks(SEGMENT) {
        match PLATFORM.dma_alloc(chunk.len(), 512) {
            Ok(mut b) => {
                b.as_mut_slice().copy_from_slice(chunk);
                segments.push(b);
            }
            Err(e) => {
                segments.into_iter().for_each(|b| PLATFORM.dma_free(b));
                return Err(BlkError::Dma(e));
            }
        }
    }
    let submitted = blk.submit_write_segments(sector, segments);
    for b in run_segments(blk, submitted)? {
        PLATFORM.dma_free(b);
    }
    Ok(())
}

/// Send a one-sector read or write past the driver's own checks and return the device's answer
/// (the outer error is the driver failing to get one).
fn unchecked_sector(
    blk: &mut VirtioBlk<'static, KernelPlatform>,
    write: bool,
    sector: u64,
) -> Result<Result<u32, BlkError>, BlkError> {
    let b = PLATFORM.dma_alloc(512, 512).map_err(BlkError::Dma)?;
    let submitted = if write {
        blk.submit_write_unchecked(sector, b)
    } else {
        blk.submit_read_unchecked(sector, b)
    };
    let id = submitted.map_err(|e| {
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

pub fn integrity() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    let mut blk = open!(f);
    let cap = blk.capacity();
    println!(
        "# virtio-blk {}: {} sectors, features {:#x}",
        f.address,
        cap,
        blk.features()
    );
    println!("# virtio-blk features: {}", fast_path_summary(&blk));
    check!(
        cap > pattern::WRITE_REGION_SECTORS * 2,
        "disk of {} sectors is too small",
        cap
    );

    // Every sector, in 128 KiB requests; the last one is partial on an odd-sized disk.
    let mut buf = vec![0u8; 128 * 1024];
    let mut lba = 0;
    while lba < cap {
        let n = (cap - lba).min(256);
        let part = &mut buf[..n as usize * pattern::SECTOR];
        try_or_fail!(blk.read(lba, part), "read {}+{}", lba, n);
        if let Some(bad) = disk::first_bad_sector(cap, lba, part) {
            fail!("sector {} does not hold the image pattern", bad);
        }
        lba += n;
    }

    // Past the end: refused by the driver, and by the device when sent anyway.
    check!(
        matches!(
            blk.read(cap, &mut buf[..512]),
            Err(BlkError::OutOfRange { .. })
        ),
        "read at the capacity was not refused"
    );
    check!(
        matches!(
            blk.read(cap - 1, &mut buf[..1024]),
            Err(BlkError::OutOfRange { .. })
        ),
        "read across the end was not refused"
    );
    let answer = try_or_fail!(unchecked_sector(&mut blk, false, cap), "read past the end");
    check!(
        answer == Err(BlkError::IoError),
        "device answered {:?} to a read past the end",
        answer
    );

    // Write the region the host checks, flush, and read it back.
    if let Some(wseed) = disk::write_seed() {
        let start = pattern::write_region_start(cap);
        let mut data = vec![0u8; pattern::WRITE_REGION_SECTORS as usize * pattern::SECTOR];
        pattern::fill(wseed, start, &mut data);
        try_or_fail!(blk.write(start, &data), "write {}", start);
        try_or_fail!(blk.flush(), "flush");
        data.fill(0);
        try_or_fail!(blk.read(start, &mut data), "read back");
        if let Some(bad) = pattern::first_mismatch(wseed, start, &data) {
            fail!("sector {} did not read back as written", bad);
        }
        // The start of the region again, as one multi-segment write, the same pattern.
        let part = &data[..SEGMENTS * SEGMENT];
        try_or_fail!(segmented_write(&mut blk, start, part), "segmented write");
        try_or_fail!(blk.flush(), "flush");
        let back = try_or_fail!(segmented_read(&mut blk, start), "segmented read back");
        if let Some(bad) = pattern::first_mismatch(wseed, start, &back) {
            fail!("sector {} did not read back as written in segments", bad);
        }
    }
    // One multi-segment read at the start of the disk (header, segments, status: one indirect
    // table when negotiated).
    let back = try_or_fail!(segmented_read(&mut blk, 0), "segmented read");
    if let Some(bad) = disk::first_bad_sector(cap, 0, &back) {
        fail!("sector {} read in segments does not hold the pattern", bad);
    }
    let id = try_or_fail!(blk.get_id(), "get_id");
    let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
    println!(
        "# virtio-blk id {:?}",
        core::str::from_utf8(&id[..len]).unwrap_or("?")
    );
    let spread = try_or_fail!(per_queue(&blk), "integrity");
    println!("# virtio-blk integrity: completions per queue: {}", spread);
    Outcome::Pass
}

/// Every virtio-blk disk answers, each in the interrupt mode its capabilities allow: the first,
/// middle and last sectors hold the image pattern. Under QEMU's defaults the disks are
/// transitional devices; with two disks both must be found and work side by side.
pub fn every_disk() -> Outcome {
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    let disks: Vec<&PciFunction> = all().collect();
    if disks.is_empty() {
        return Outcome::Skip("no virtio-blk device");
    }
    // All open at once, so that a device that answers for another's queue is caught.
    let mut open = Vec::new();
    for f in &disks {
        open.push((f, open!(f)));
    }
    let mut buf = vec![0u8; 512];
    for (f, blk) in open.iter_mut() {
        let cap = blk.capacity();
        let region = pattern::write_region_start(cap);
        // The write region may hold the write pattern already; stay outside it.
        for lba in [0, region - 1, cap - 1] {
            try_or_fail!(blk.read(lba, &mut buf), "{}: read {}", f.address, lba);
            if let Some(bad) = disk::first_bad_sector(cap, lba, &buf) {
                fail!("{}: sector {} does not hold the pattern", f.address, bad);
            }
        }
        println!(
            "# virtio-blk {}: {:04x}:{:04x}, {} sectors, {}",
            f.address,
            f.vendor_id,
            f.device_id,
            cap,
            blk.transport().interrupt_mode()
        );
    }
    println!("# virtio-blk: {} disks", disks.len());
    Outcome::Pass
}

/// Polled, MSI-X and INTx completion each carry a batch of reads.
pub fn interrupt_modes() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let Some(seed) = disk::seed() else {
        return Outcome::Skip("no disk_seed= on the command line");
    };
    let modes: [(&str, Option<u8>); 3] = [
        ("polled", None),
        ("msix", Some(vectors::VIRTIO_QUEUE)),
        ("intx", Some(vectors::VIRTIO_INTX)),
    ];
    let best = plan(f);
    for (name, vector) in modes {
        let mode = match (name, best) {
            ("polled", _) => InterruptMode::Polled,
            ("msix", InterruptPlan::Msix { vectors }) => msix_with(vectors),
            ("intx", _) if f.interrupt_pin != 0 => try_or_fail!(intx(f), "intx"),
            _ => {
                println!(
                    "# virtio-blk {}: {} not offered by the device",
                    f.address, name
                );
                continue;
            }
        };
        let before = vector.map(|v| PLATFORM.interrupt_count(v));
        let mut blk = open!(f, mode);
        let mut buf = vec![0u8; 16 * 1024];
        for lba in [0u64, 1000, 77] {
            try_or_fail!(blk.read(lba, &mut buf), "{} read {}", name, lba);
            if let Some(bad) = pattern::first_mismatch(seed, lba, &buf) {
                fail!("{}: sector {} wrong", name, bad);
            }
        }
        drop(blk);
        if let (Some(v), Some(b)) = (vector, before) {
            let got = PLATFORM.interrupt_count(v) - b;
            println!("# virtio-blk {}: {} interrupts for 3 requests", name, got);
            check!(got >= 1, "{}: no interrupt on vector {:#x}", name, v);
        }
        if name == "intx" {
            ioapic::mask(f.interrupt_line);
        }
    }
    Outcome::Pass
}

/// 32 random 4 KiB reads in flight at once, one notify, completions in any order.
pub fn queue_depth_32() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let Some(seed) = disk::seed() else {
        return Outcome::Skip("no disk_seed= on the command line");
    };
    let mut blk = open!(f);
    let cap = blk.capacity();
    let mut rng = disk::Rng(seed ^ 0x32);
    let mut pending = Vec::new();
    // One batch, one notify; with MQ one batch per queue (the driver takes them in turn).
    let batch = 32 / blk.num_queues();
    let kicks_before = blk.kicks();
    for i in 0..32 {
        if i > 0 && i % batch == 0 {
            blk.notify();
        }
        // Below the region other tests write, so the original pattern is there.
        let lba = rng.below(pattern::write_region_start(cap) - 8);
        let b = try_or_fail!(PLATFORM.dma_alloc(4096, 4096), "dma");
        match blk.submit_read(lba, b) {
            Ok(id) => pending.push((id, lba)),
            Err(e) => fail!("submit {} of 32: {}", pending.len() + 1, e.error),
        }
    }
    check!(
        blk.in_flight() == 32,
        "{} in flight, expected 32",
        blk.in_flight()
    );
    blk.notify();
    // A bound for a dead device, not a timing target: generous for a loaded host.
    let deadline = PLATFORM.now_ns() + 30_000_000_000;
    let mut done = 0;
    while done < 32 && PLATFORM.now_ns() < deadline {
        let epoch = PLATFORM.interrupt_epoch();
        for c in blk.poll_completions() {
            let Some(&(_, lba)) = pending.iter().find(|(id, _)| *id == c.id) else {
                fail!("completion for unknown request {:?}", c.id);
            };
            let Some(b) = c.buffer else {
                fail!("request {:?} came back without its buffer", c.id)
            };
            let bad = pattern::first_mismatch(seed, lba, b.as_slice());
            PLATFORM.dma_free(b);
            try_or_fail!(c.result, "request at {}", lba);
            if let Some(bad) = bad {
                fail!("sector {} wrong", bad);
            }
            done += 1;
        }
        PLATFORM.wait_for_interrupt(epoch);
    }
    check!(done == 32, "only {} of 32 requests completed", done);
    let spread = try_or_fail!(per_queue(&blk), "qd32");
    // One notify per batch at most (none if the device was polling its ring).
    let kicks = blk.kicks() - kicks_before;
    check!(
        kicks <= blk.num_queues() as u64,
        "{} notifies for {} batches",
        kicks,
        blk.num_queues()
    );
    println!(
        "# virtio-blk qd32: {} notifies, {} resent",
        kicks,
        blk.rekicks()
    );
    println!(
        "# virtio-blk qd32: {}, completions per queue: {}",
        fast_path_summary(&blk),
        spread
    );
    Outcome::Pass
}

/// Outcome of one malformed chain: what the device did about it.
enum Verdict {
    /// Answered with an error status (or without touching the status byte).
    ErrorStatus(u8),
    /// Set DEVICE_NEEDS_RESET.
    NeedsReset,
}

pub fn hostile_chains() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let Some(seed) = disk::seed() else {
        return Outcome::Skip("no disk_seed= on the command line");
    };
    let strict = crate::bootinfo::get().arg_u64("strict_dma") == Some(1);
    let cases = [
        "descriptor loop",
        "address outside RAM",
        "length over 4 GiB",
        "wrong direction",
    ];
    for case in cases {
        let mut blk = open!(f);
        // Header (IN, sector 0), a data page and a status byte, in DMA memory.
        let mut mem = try_or_fail!(PLATFORM.dma_alloc(8192, 4096), "dma");
        mem.as_mut_slice()[512] = 0xff; // status, not yet written
        let hdr = mem.phys();
        let status = mem.phys() + 512;
        let data = mem.phys() + 4096;
        let (n, w) = (VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE);
        let d = |addr, len, flags, next| RawDesc {
            addr,
            len,
            flags,
            next,
        };
        let chain: Vec<RawDesc> = match case {
            "descriptor loop" => vec![
                d(hdr, 16, n, RawNext::Index(1)),
                d(data, 512, n | w, RawNext::Index(2)),
                d(data, 512, n | w, RawNext::Index(1)),
            ],
            "address outside RAM" => vec![
                d(hdr, 16, n, RawNext::Index(1)),
                d(0x40_0000_0000, 512, n | w, RawNext::Index(2)),
                d(status, 1, w, RawNext::Index(0)),
            ],
            "length over 4 GiB" => vec![
                d(hdr, 16, n, RawNext::Index(1)),
                d(data, 0xffff_f000, n | w, RawNext::Index(2)),
                d(data, 0xffff_f000, n | w, RawNext::Index(3)),
                d(status, 1, w, RawNext::Index(0)),
            ],
            _ => vec![
                // The header marked device-writable, the status device-readable.
                d(hdr, 16, n | w, RawNext::Index(1)),
                d(data, 512, n | w, RawNext::Index(2)),
                d(status, 1, 0, RawNext::Index(0)),
            ],
        };
        // SAFETY: every address is either our DMA buffer or deliberately outside RAM; the
        // buffer is not freed until the device has been reset (drop of `blk`).
        let id = try_or_fail!(unsafe { blk.submit_raw(&chain) }, "{}: submit", case);
        blk.notify();
        let deadline = PLATFORM.now_ns() + 10_000_000_000;
        let verdict = loop {
            let epoch = PLATFORM.interrupt_epoch();
            if blk.transport().needs_reset() {
                break Some(Verdict::NeedsReset);
            }
            if blk.poll_completions().iter().any(|c| c.id == id) {
                break Some(Verdict::ErrorStatus(mem.as_slice()[512]));
            }
            if PLATFORM.now_ns() > deadline {
                break None;
            }
            PLATFORM.wait_for_interrupt(epoch);
        };
        drop(blk);
        PLATFORM.dma_free(mem);
        match verdict {
            None => fail!("{}: no answer from the device in 10 s", case),
            Some(Verdict::NeedsReset) => println!("# hostile {}: device set NEEDS_RESET", case),
            // QEMU, like a real bus, drops DMA to an address where nothing is mapped (a master
            // abort) and completes the request; our harness must refuse it. The harness's own
            // tests say `strict_dma=1`.
            Some(Verdict::ErrorStatus(0)) if case == "address outside RAM" && !strict => {
                println!(
                    "# hostile {}: completed OK (DMA to nowhere was dropped)",
                    case
                )
            }
            Some(Verdict::ErrorStatus(0)) => {
                fail!("{}: the device completed it with status OK", case)
            }
            Some(Verdict::ErrorStatus(s)) => {
                println!("# hostile {}: device answered status {:#x}", case, s)
            }
        }
        // The device must still serve a well-formed request after a reset.
        let mut blk = open!(f);
        let mut buf = vec![0u8; 512];
        try_or_fail!(blk.read(3, &mut buf), "{}: read after reset", case);
        check!(
            pattern::first_mismatch(seed, 3, &buf).is_none(),
            "{}: bad data after reset",
            case
        );
    }
    Outcome::Pass
}

/// Write the checked region, flush, then announce it and sleep: the host kills the VMM with
/// SIGKILL at the announcement and checks the image file. Never in `all`.
pub fn durability() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let Some(wseed) = disk::write_seed() else {
        return Outcome::Skip("no write_seed=");
    };
    let mut blk = open!(f);
    let start = pattern::write_region_start(blk.capacity());
    let mut data = vec![0u8; pattern::WRITE_REGION_SECTORS as usize * pattern::SECTOR];
    pattern::fill(wseed, start, &mut data);
    try_or_fail!(blk.write(start, &data), "write");
    try_or_fail!(blk.flush(), "flush");
    println!("# durability: flush acknowledged");
    loop {
        PLATFORM.wait_for_interrupt(PLATFORM.interrupt_epoch());
    }
}

/// A read-only disk (`--disk virtio:PATH,ro`, or QEMU's `readonly=on`): writes are refused by
/// the driver (VIRTIO_BLK_F_RO) and, when sent anyway, by the device.
pub fn read_only() -> Outcome {
    let Some(f) = find() else {
        return Outcome::Skip("no virtio-blk device");
    };
    let mut blk = open!(f);
    if !blk.read_only() {
        return Outcome::Skip("the disk is writable");
    }
    let data = vec![0xa5u8; 512];
    check!(
        blk.write(0, &data) == Err(BlkError::ReadOnly),
        "a write to a read-only disk was not refused by the driver"
    );
    let answer = try_or_fail!(unchecked_sector(&mut blk, true, 0), "unchecked write");
    check!(
        answer == Err(BlkError::IoError),
        "the device answered {:?} to a write on a read-only disk",
        answer
    );
    Outcome::Pass
}
