//! `bench=blk`: the storage comparison. The same workloads over four guest paths to the same
//! kind of disk: IDE PIO and IDE bus-master DMA (fully emulated: every register access is an
//! exit) against virtio-blk polled and with MSI-X interrupts (shared rings, one notify per
//! batch). Each row is sized by time, not bytes: an emulated PIO sector write costs ~257 exits.
//!
//! Each row is bracketed by `# phase: begin <row>` / `# phase: end <row>` lines, at which the
//! harness snapshots its exit counters, and reported as
//! `# bench: blk.<path>.<workload> ns=<p50> p99=<p99> min= max= n=<ops> bytes=<total> total_ns=<elapsed>
//! batch_p50=<p50 of each of up to 16 batches of consecutive operations>`.
//!
//! `blk_ops=N` sizes every row by count instead (exactly N operations, no time budget), so
//! that exit counts are the same from run to run: the harness's `bench --ci-profile` asserts
//! them. `blk_extra_exit=1` adds one IDE alternate-status read per IDE I/O, an extra exit on
//! purpose, for the test that proves the profile catches one.
use crate::arch::vectors;
use crate::ktap::Outcome;
use crate::platform::{Dma, KernelPlatform, PLATFORM};
use crate::tests::{disk, ide, virtio_blk};
use crate::{println, time};
use alloc::vec::Vec;
use drivers::ata::ide::IdeChannel;
use drivers::platform::{DmaBuffer, Platform};
use drivers::virtio::blk::{RequestId, VirtioBlk};
use drivers::virtio::pci::{InterruptMode, InterruptPlan};

const SEQ_BYTES: usize = 128 * 1024;
const RAND_BYTES: usize = 4096;
/// Time budget per row, and the most operations a row does.
const ROW_NS: u64 = 400_000_000;
const ROW_MAX_OPS: usize = 20_000;

/// How rows are sized: `blk_ops=N` (a fixed count), else by time up to ROW_MAX_OPS.
#[derive(Clone, Copy)]
struct RowSize {
    max_ops: usize,
    timed: bool,
}

impl RowSize {
    fn from_cmdline() -> Self {
        match crate::bootinfo::get().arg_u64("blk_ops") {
            Some(n) if n > 0 => Self {
                max_ops: n as usize,
                timed: false,
            },
            _ => Self {
                max_ops: ROW_MAX_OPS,
                timed: true,
            },
        }
    }

    /// Whether a row that has done `done` operations (and has `inflight` more) submits again.
    fn more(self, done: usize, inflight: usize, now: u64, deadline: u64) -> bool {
        done + inflight < self.max_ops && (done == 0 || !self.timed || now < deadline)
    }
}

/// `blk_extra_exit=1`: one more exit per IDE I/O (the CI profile's failure test).
fn extra_exit_requested() -> bool {
    crate::bootinfo::get().arg("blk_extra_exit") == Some("1")
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    SeqRead,
    SeqWrite,
    RandRead,
    RandWrite,
}

impl Workload {
    const ALL: [Workload; 4] = [
        Self::SeqRead,
        Self::SeqWrite,
        Self::RandRead,
        Self::RandWrite,
    ];

    fn name(self, qd: usize) -> alloc::string::String {
        let base = match self {
            Self::SeqRead => "seqread_128k",
            Self::SeqWrite => "seqwrite_128k",
            Self::RandRead => "randread_4k",
            Self::RandWrite => "randwrite_4k",
        };
        alloc::format!("{base}_qd{qd}")
    }

    fn bytes(self) -> usize {
        match self {
            Self::SeqRead | Self::SeqWrite => SEQ_BYTES,
            Self::RandRead | Self::RandWrite => RAND_BYTES,
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Self::SeqWrite | Self::RandWrite)
    }
}

/// Where the next request of a workload goes: sequential wraps around, random is aligned.
struct Offsets {
    workload: Workload,
    capacity: u64,
    next: u64,
    rng: disk::Rng,
}

impl Offsets {
    fn new(workload: Workload, capacity: u64) -> Self {
        Self {
            workload,
            capacity,
            next: 0,
            rng: disk::Rng(0x0b1c_5eed),
        }
    }

    fn next(&mut self) -> u64 {
        let sectors = (self.workload.bytes() / 512) as u64;
        let slots = (self.capacity / sectors).max(1);
        match self.workload {
            Workload::SeqRead | Workload::SeqWrite => {
                let lba = self.next * sectors;
                self.next = (self.next + 1) % slots;
                lba
            }
            _ => self.rng.below(slots) * sectors,
        }
    }
}

/// One measured row.
struct Row {
    latencies: Vec<u64>,
    bytes: u64,
    total_ns: u64,
}

fn report(path: &str, workload: &str, mut row: Row) {
    if row.latencies.is_empty() {
        println!("# bench: blk.{}.{} n=0", path, workload);
        return;
    }
    let batch_p50 = super::batch_medians(&row.latencies);
    row.latencies.sort_unstable();
    let l = &row.latencies;
    let p99 = l[(l.len() * 99 / 100).min(l.len() - 1)];
    println!(
        "# bench: blk.{}.{} ns={} p99={} min={} max={} n={} bytes={} total_ns={} batch_p50={}",
        path,
        workload,
        l[l.len() / 2],
        p99,
        l[0],
        l[l.len() - 1],
        l.len(),
        row.bytes,
        row.total_ns,
        batch_p50
    );
}

/// Whether `blk_paths=` (a comma list; default all) selects `path`.
fn selected(path: &str) -> bool {
    crate::bootinfo::get()
        .arg("blk_paths")
        .is_none_or(|list| list.split(',').any(|p| p == path))
}

/// Run `op` (one synchronous I/O at the given LBA) until the row's time budget is spent.
fn run_qd1(
    path: &str,
    workload: Workload,
    capacity: u64,
    mut op: impl FnMut(u64) -> Result<(), alloc::string::String>,
) -> Result<(), alloc::string::String> {
    let name = workload.name(1);
    let mut offsets = Offsets::new(workload, capacity);
    let mut row = Row {
        latencies: Vec::new(),
        bytes: 0,
        total_ns: 0,
    };
    let size = RowSize::from_cmdline();
    println!("# phase: begin blk.{}.{}", path, name);
    let start = time::rdtsc();
    let budget = ROW_NS * time::tsc_hz() / 1_000_000_000;
    while size.more(row.latencies.len(), 0, time::rdtsc(), start + budget) {
        let lba = offsets.next();
        let t0 = time::rdtsc();
        op(lba)?;
        row.latencies.push(time::cycles_to_ns(time::rdtsc() - t0));
        row.bytes += workload.bytes() as u64;
    }
    row.total_ns = time::cycles_to_ns(time::rdtsc() - start);
    println!("# phase: end blk.{}.{}", path, name);
    report(path, &name, row);
    Ok(())
}

fn ide_rows() -> Result<(), alloc::string::String> {
    if !selected("ide_pio") && !selected("ide_dma") {
        return Ok(());
    }
    // The first ATA drive at any position (the probe prints one `# ide:` line per position).
    let mut all = match ide::open_all() {
        Ok(v) => v,
        Err(_) => {
            println!("# blk: no usable IDE disk, IDE rows skipped");
            return Ok(());
        }
    };
    let found = all.drives[0];
    println!("# blk: IDE rows on the {}", found.position());
    let (drive, capacity) = (found.drive, found.sectors);
    let mut bm = all
        .bus_master(found.channel)
        .map_err(|e| alloc::format!("bus master: {}", e))?;
    let ide: &mut IdeChannel<'static, KernelPlatform> = all.channel(found.channel);
    let alt_status_port = ide.ports().control;
    let extra_exit = extra_exit_requested();
    // Reading the alternate status has no side effect on the drive.
    let maybe_extra_exit = || {
        if extra_exit {
            PLATFORM.inb(alt_status_port);
        }
    };
    let mut buf = alloc::vec![0u8; SEQ_BYTES];
    for w in Workload::ALL.into_iter().filter(|_| selected("ide_pio")) {
        run_qd1("ide_pio", w, capacity, |lba| {
            let b = &mut buf[..w.bytes()];
            let r = if w.is_write() {
                ide.write_pio(drive, lba, b)
            } else {
                ide.read_pio(drive, lba, b)
            };
            maybe_extra_exit();
            r.map_err(|e| alloc::format!("IDE PIO at {}: {}", lba, e))
        })?;
    }
    for w in Workload::ALL.into_iter().filter(|_| selected("ide_dma")) {
        // The transfer length is the buffer's.
        let mut buf = Dma::new(w.bytes()).map_err(|e| alloc::format!("dma: {}", e))?;
        run_qd1("ide_dma", w, capacity, |lba| {
            let r = if w.is_write() {
                bm.write(ide, drive, lba, &buf)
            } else {
                bm.read(ide, drive, lba, &mut buf)
            };
            maybe_extra_exit();
            r.map_err(|e| alloc::format!("IDE DMA at {}: {}", lba, e))
        })?;
    }
    Ok(())
}

/// Keep `qd` requests in flight until the budget is spent; latency is submit to reap.
fn run_virtio(
    blk: &mut VirtioBlk<'static, KernelPlatform>,
    path: &str,
    workload: Workload,
    qd: usize,
    interrupts: bool,
) -> Result<(), alloc::string::String> {
    let name = workload.name(qd);
    let capacity = blk.capacity();
    let mut offsets = Offsets::new(workload, capacity);
    let mut free: Vec<DmaBuffer> = Vec::new();
    for _ in 0..qd {
        free.push(
            PLATFORM
                .dma_alloc(workload.bytes(), 4096)
                .map_err(|e| alloc::format!("dma: {}", e))?,
        );
    }
    let mut inflight: Vec<(RequestId, u64)> = Vec::new();
    let mut row = Row {
        latencies: Vec::new(),
        bytes: 0,
        total_ns: 0,
    };
    let mut error = None;
    let size = RowSize::from_cmdline();
    println!("# phase: begin blk.{}.{}", path, name);
    let start = time::rdtsc();
    let budget = ROW_NS * time::tsc_hz() / 1_000_000_000;
    let deadline = start + budget;
    loop {
        let submitting = error.is_none()
            && size.more(row.latencies.len(), inflight.len(), time::rdtsc(), deadline);
        if submitting && !free.is_empty() {
            while let Some(b) = free.pop() {
                let lba = offsets.next();
                let r = if workload.is_write() {
                    blk.submit_write(lba, b)
                } else {
                    blk.submit_read(lba, b)
                };
                match r {
                    Ok(id) => inflight.push((id, time::rdtsc())),
                    Err(e) => {
                        error = Some(alloc::format!("submit at {}: {}", lba, e.error));
                        if let Some(b) = e.buffer {
                            free.push(b);
                        }
                        break;
                    }
                }
            }
            blk.notify();
        }
        if inflight.is_empty() {
            break;
        }
        let epoch = PLATFORM.interrupt_epoch();
        let done = blk.poll_completions();
        if done.is_empty() {
            if time::rdtsc() > deadline + 5 * time::tsc_hz() {
                error = Some(alloc::format!("{} requests stuck for 5 s", inflight.len()));
                break;
            }
            if interrupts {
                PLATFORM.wait_for_interrupt(epoch);
            }
            continue;
        }
        let now = time::rdtsc();
        for c in done {
            if let Some(pos) = inflight.iter().position(|(id, _)| *id == c.id) {
                let (_, t0) = inflight.swap_remove(pos);
                row.latencies.push(time::cycles_to_ns(now - t0));
                row.bytes += workload.bytes() as u64;
            }
            if let Err(e) = c.result {
                error.get_or_insert(alloc::format!("request: {}", e));
            }
            if let Some(b) = c.buffer {
                free.push(b);
            }
        }
    }
    row.total_ns = time::cycles_to_ns(time::rdtsc() - start);
    println!("# phase: end blk.{}.{}", path, name);
    for b in free {
        PLATFORM.dma_free(b);
    }
    report(path, &name, row);
    error.map_or(Ok(()), Err)
}

fn virtio_rows() -> Result<(), alloc::string::String> {
    let Some(f) = virtio_blk::find() else {
        println!("# blk: no virtio-blk disk, virtio rows skipped");
        return Ok(());
    };
    for (path, interrupts) in [("virtio_polled", false), ("virtio_msix", true)] {
        if !selected(path) {
            continue;
        }
        let mode = if interrupts {
            if !matches!(virtio_blk::plan(f), InterruptPlan::Msix { .. }) {
                println!("# blk: {}: the device has no MSI-X, row skipped", path);
                continue;
            }
            virtio_blk::best_mode(f)?
        } else {
            InterruptMode::Polled
        };
        let wanted = virtio_blk::wanted_features()?;
        let mut blk = VirtioBlk::with_features(&PLATFORM, f, mode, virtio_blk::QUEUE_SIZE, wanted)
            .map_err(|e| alloc::format!("virtio-blk init: {}", e))?;
        println!(
            "# blk: {} virtio-blk features: {}",
            path,
            virtio_blk::fast_path_summary(&blk)
        );
        let before = PLATFORM.interrupt_count(vectors::VIRTIO_QUEUE);
        for w in Workload::ALL {
            run_virtio(&mut blk, path, w, 1, interrupts)?;
        }
        for w in [Workload::RandRead, Workload::RandWrite] {
            run_virtio(&mut blk, path, w, 32, interrupts)?;
        }
        println!(
            "# blk: {} took {} queue interrupts",
            path,
            PLATFORM.interrupt_count(vectors::VIRTIO_QUEUE) - before
        );
    }
    Ok(())
}

pub fn blk() -> Outcome {
    if let Err(e) = virtio_rows().and_then(|()| ide_rows()) {
        return Outcome::Fail(e);
    }
    Outcome::Pass
}
