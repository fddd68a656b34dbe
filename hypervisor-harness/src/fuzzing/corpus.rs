//! The seed corpus (`hypervisor-harness/fuzz/corpus/<target>/`) and the fixed-budget run CI
//! makes of every target without cargo-fuzz.
//!
//! - [`write_seed_corpus`] (ignored; run it to rebuild the files) writes valid programs built
//!   here for every target: the accesses the kernel's own drivers and tests make, from setup
//!   to data, in each target's input format (written by hand from the drivers; the `rec-*`
//!   files beside them are recorded from the kernel's tests: `recorded.rs`).
//! - [`every_target_runs_its_corpus_and_a_budget_of_mutations`] runs each target's corpus
//!   files, then `FUZZ_CI_INPUTS` (default 32) inputs per target: mutations of its corpus
//!   files (byte flips, insertions, truncations, splices), or seeded random programs for a
//!   target without a corpus. `fuzz/ci-budget.sh` runs it with a larger budget.

use super::virtio_rig::rop;
use std::path::PathBuf;

/// A target's entry point.
type EntryPoint = fn(&[u8]);

/// Every fuzz target, by its cargo-fuzz name.
const TARGETS: [(&str, EntryPoint); 13] = [
    ("balloon", super::balloon),
    ("console", super::console),
    ("debug_exit", super::debug_exit),
    ("e1000", super::e1000),
    ("exit_dispatch", super::exit_dispatch),
    ("floor", super::floor),
    ("ide", super::ide),
    ("msix", super::msix),
    ("pci_config", super::pci_config),
    ("rtl8139", super::rtl8139),
    ("serial", super::serial),
    ("virtio_blk", super::virtio_blk),
    ("virtio_net", super::virtio_net),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<_> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    files.sort();
    files
}

/// splitmix64.
fn next(s: &mut u64) -> u64 {
    crate::backends::net::peer::pattern::splitmix(s)
}

/// One mutation of `seed` (with `other` for splices), as libFuzzer's simplest mutators do.
fn mutate(seed: &[u8], other: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + next(rng) % 4 {
        let r = next(rng);
        let at = if v.is_empty() {
            0
        } else {
            (r >> 8) as usize % v.len()
        };
        match r % 5 {
            0 if !v.is_empty() => v[at] ^= 1 << ((r >> 40) % 8),
            1 if !v.is_empty() => v[at] = (r >> 40) as u8,
            2 => v.insert(at, (r >> 40) as u8),
            3 => v.truncate(at.max(1)),
            _ => {
                let from = (r >> 40) as usize % other.len().max(1);
                let tail = other.get(from..).unwrap_or_default();
                v.truncate(at);
                v.extend_from_slice(tail);
            }
        }
    }
    v
}

fn budget() -> usize {
    std::env::var("FUZZ_CI_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

#[test]
fn every_target_runs_its_corpus_and_a_budget_of_mutations() {
    let inputs = budget();
    for (i, (name, run)) in TARGETS.iter().enumerate() {
        let start = std::time::Instant::now();
        let files = corpus(name);
        for (file, data) in &files {
            let r = std::panic::catch_unwind(|| run(data));
            assert!(r.is_ok(), "{name}: corpus file {file} failed");
        }
        let mut rng = 0xc0de_0000 + i as u64;
        for k in 0..inputs {
            let input = if files.is_empty() {
                let n = next(&mut rng) as usize % 400;
                (0..n).map(|_| next(&mut rng) as u8).collect()
            } else {
                let a = &files[k % files.len()].1;
                let b = &files[next(&mut rng) as usize % files.len()].1;
                mutate(a, b, &mut rng)
            };
            let r = std::panic::catch_unwind(|| run(&input));
            assert!(r.is_ok(), "{name}: input {k} failed: {input:02x?}");
        }
        eprintln!(
            "fuzz budget: {name}: {} corpus files, {inputs} inputs, {} ms",
            files.len(),
            start.elapsed().as_millis()
        );
    }
}

/// A program builder, as the decoders read bytes.
#[derive(Default)]
struct Program(Vec<u8>);

impl Program {
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// Canonical queues 0..n (8 entries, vector 0, enabled), then the offered features and
    /// DRIVER_OK.
    fn ready(mut self, queues: u8) -> Self {
        for q in 0..queues {
            self = self.op(&[rop::QUEUE, 0, q, 3, 0, 0, 1]);
        }
        self.op(&[rop::NEGOTIATE, 0])
    }
    /// One readable buffer on queue `q` from the device's payload maker: the payload's own
    /// bytes follow.
    fn readable(self, q: u8, payload: &[u8]) -> Self {
        self.op(&[rop::CHAIN, q, 0, 0, 1]).op(payload)
    }
    /// One device-writable buffer of `len` (1..=0x1000) bytes on queue `q`.
    fn writable(self, q: u8, len: u16) -> Self {
        let l = (len - 1).to_le_bytes();
        self.op(&[rop::CHAIN, q, 0, 1, 1, l[0], l[1]])
    }
}

/// The balloon as its driver runs it: stats first, then inflate to a target in batches,
/// deflate some back, report free pages.
fn balloon_programs() -> Vec<(&'static str, Vec<u8>)> {
    let ready = || Program::default().op(&[0]).ready(4);
    // n PFNs (mode 0: u8 % 16).
    let pfns = |first: u8, n: u8| -> Vec<u8> {
        let mut v = vec![n - 1];
        for k in 0..n {
            v.extend([0, first + k]);
        }
        v
    };
    // Stats: (tag, value) entries, tags 0..=9.
    let stats = {
        let mut v = vec![9];
        for tag in 0..10u8 {
            v.extend([1, tag]);
            v.extend((u64::from(tag) << 20).to_le_bytes());
        }
        v
    };
    vec![
        (
            "inflate-deflate",
            ready()
                .op(&[super::balloon::bop::TARGET, 1, 8])
                .readable(0, &pfns(2, 8))
                .readable(1, &pfns(2, 4))
                .0,
        ),
        ("stats", ready().readable(2, &stats).readable(2, &stats).0),
        ("report", ready().writable(3, 0x1000).writable(3, 0x800).0),
    ]
}

/// The console as its driver runs it: receive buffers posted, DEVICE_READY, ports ready and
/// open, writes, and the host typing.
fn console_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::console::cop;
    let ready = || Program::default().op(&[0]).ready(6);
    // A control message on the control transmit queue: id, event, value 1, no name.
    let control =
        |p: Program, id: u8, event: u8| p.readable(3, &[1, id % 3, 1, event % 8, 1, 0, 7]);
    let hello: Vec<u8> = [0x0c].into_iter().chain(*b"hello, host\n").collect();
    let multiport = {
        let p = ready()
            .writable(0, 0x40)
            .writable(2, 0x40)
            .writable(4, 0x40);
        let p = control(p, 0, 0);
        let p = control(control(p, 0, 3), 1, 3);
        let p = control(control(p, 0, 6), 1, 6);
        p.readable(1, &hello)
            .readable(5, &hello)
            .op(&[cop::INPUT, 0, 5])
            .op(b"typed")
            .op(&[rop::NOTIFY, 0])
    };
    vec![
        (
            "port0",
            ready()
                .writable(0, 0x100)
                .readable(1, &hello)
                .op(&[cop::INPUT, 0, 3])
                .op(b"abc")
                .op(&[rop::NOTIFY, 0])
                .0,
        ),
        ("multiport", multiport.0),
        (
            "reconnect",
            ready()
                .op(&[cop::HOST, 0, 0])
                .readable(1, &hello)
                .op(&[cop::HOST, 0, 1])
                .readable(1, &hello)
                .0,
        ),
    ]
}

/// 4 bytes of `v`, little-endian (a 4-byte access's data).
fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// The exit stream of a boot as the kernel makes it: COM1 set up (IER off, DLAB and divisor,
/// 8N1, FIFO, MCR), a line out by `rep outsb` while polling LSR, the PCI scan through
/// 0xCF8/0xCFC, the floor's command register, doorbell and MMIO ioeventfd, the debug-exit
/// write that ends the run.
fn exit_dispatch_programs() -> Vec<(&'static str, Vec<u8>)> {
    // Port records: op (0 out, 2 in), device selector, offset + 2 from its base, element size
    // selector, count selector, stray selector, then the data of an out.
    let com1_out = |p: Program, reg: u8, v: u8| p.op(&[0, 0, reg + 2, 0, 0, 0, v]);
    let com1_in = |p: Program, reg: u8| p.op(&[2, 0, reg + 2, 0, 0, 0]);
    let line = |p: Program, text: &[u8]| {
        // A long `rep outsb`: count selector 6 (a 16-bit count), no stray bytes.
        let p = com1_in(p, 5);
        p.op(&[0, 0, 2, 0, 6])
            .op(&(text.len() as u16).to_le_bytes())
            .op(&[0])
            .op(text)
    };
    let cfg_select = |p: Program, dev: u32, reg: u32| {
        let addr = 0x8000_0000 | dev << 11 | reg;
        p.op(&[0, 3, 2, 4, 0, 0]).op(&le32(addr))
    };
    let cfg_read = |p: Program| p.op(&[2, 3, 6, 4, 0, 0]);
    let mut serial_init = Program::default();
    for (reg, v) in [
        (1, 0),
        (3, 0x80),
        (0, 1),
        (1, 0),
        (3, 3),
        (2, 0xc7),
        (4, 0x0b),
    ] {
        serial_init = com1_out(serial_init, reg, v);
    }
    let boot = line(serial_init, b"kernel: tests=pci\n");
    let mut scan = boot;
    for dev in 0..3 {
        scan = cfg_read(cfg_select(scan, dev, 0));
        scan = cfg_read(cfg_select(scan, dev, 8));
    }
    // BAR0 of the floor sized and restored, then I/O and memory decode on.
    scan = cfg_read(
        cfg_select(scan, 1, 0x10)
            .op(&[0, 3, 6, 4, 0, 0])
            .op(&le32(!0)),
    );
    scan = cfg_select(scan, 1, 0x10)
        .op(&[0, 3, 6, 4, 0, 0])
        .op(&le32(0xc000));
    let scan = scan.op(&[5, 3, 0]);
    let floor = line(Program::default(), b"floor\n")
        .op(&[0, 4, 10, 4, 0, 0])
        .op(&le32(1))
        .op(&[2, 4, 2, 4, 0, 0])
        .op(&[3, 2, 2])
        .op(&le32(1))
        .op(&[4, 0, 0, 0, 2]);
    let exit = line(Program::default(), b"PASS\n")
        .op(&[0, 2, 2, 4, 0, 0])
        .op(&le32(0x10));
    vec![
        ("boot-pci-scan", scan.0),
        ("floor-exits", floor.0),
        ("pass-and-exit", exit.0),
    ]
}

/// COM1 as the kernel's console driver runs it: set up, lines out with LSR polls, the
/// scratch and loopback self-test.
fn serial_programs() -> Vec<(&'static str, Vec<u8>)> {
    // Write: op 0, offset selector 0, register, width 1, value. Read: op 2, width 1.
    let out = |p: Program, reg: u8, v: u8| p.op(&[0, 0, reg, 0, v]);
    let inp = |p: Program, reg: u8| p.op(&[2, 0, reg, 0]);
    let mut init = Program::default();
    for (reg, v) in [
        (1, 0),
        (3, 0x80),
        (0, 1),
        (1, 0),
        (3, 3),
        (2, 0xc7),
        (4, 0x0b),
    ] {
        init = out(init, reg, v);
    }
    let text = |mut p: Program, s: &[u8]| {
        for &b in s {
            p = out(inp(p, 5), 0, b);
        }
        p
    };
    let console = text(init, b"ok pci\r\n");
    // A burst as `rep outsb` makes: 40 bytes of a 5-byte pattern ending in a newline.
    let burst = console.op(&[3, 40, 0, 4]).op(b"abcd\n");
    let mut selftest = inp(out(Program::default(), 7, 0x5a), 7);
    selftest = out(selftest, 4, 0x1b);
    selftest = inp(inp(out(selftest, 0, 0xae), 5), 0);
    selftest = out(selftest, 4, 0x0b);
    vec![("console-lines", burst.0), ("scratch-loopback", selftest.0)]
}

/// isa-debug-exit as the kernel's tests end: a 4-byte write of the status at the port,
/// after a read.
fn debug_exit_programs() -> Vec<(&'static str, Vec<u8>)> {
    let pass = Program::default()
        .op(&[1, 0, 2])
        .op(&[0, 0, 2])
        .op(&le32(0x10));
    let first_byte = Program::default()
        .op(&[0, 0, 0, 0x11])
        .op(&[0, 0, 2])
        .op(&le32(0x10));
    vec![("pass", pass.0), ("byte-then-dword", first_byte.0)]
}

/// The exit floor as the `floor` bench drives it: its config read and decode on, then
/// userspace, ioeventfd and doorbell writes to BAR0, and BAR1's two registers.
fn floor_programs() -> Vec<(&'static str, Vec<u8>)> {
    let probe = Program::default()
        .op(&[1])
        .op(&[1, 1, 0, 2])
        .op(&[1, 1, 0x10, 2])
        .op(&[0, 1, 0x10, 2])
        .op(&le32(!0))
        .op(&[1, 1, 0x10, 2])
        .op(&[0, 1, 0x10, 2])
        .op(&le32(0xc000))
        .op(&[0, 0, 1, 3, 0]);
    let mut io = Program::default().op(&[1]);
    for reg in [0u8, 1, 2, 2] {
        io = io.op(&[2, 0, reg, 2]).op(&le32(1));
    }
    let io = io.op(&[3, 0, 0, 2]);
    let mmio = Program::default()
        .op(&[1])
        .op(&[4, 0, 0, 2])
        .op(&le32(1))
        .op(&[4, 0, 1, 3])
        .op(&1u64.to_le_bytes())
        .op(&[5, 0, 1, 2]);
    vec![("probe", probe.0), ("bar0", io.0), ("bar1", mmio.0)]
}

/// The pci_config target's header: the raw function's vendor, device, class bytes,
/// interrupt, two BARs (I/O 32 B, mem32 4 KiB).
pub(super) fn pci_config_header() -> Vec<u8> {
    Program::default()
        .op(&0x1af4u16.to_le_bytes())
        .op(&0x1000u16.to_le_bytes())
        .op(&[2, 0, 0, 1, 11, 2, 0, 0, 5, 1, 1, 12, 0])
        .0
}

/// The kernel's PCI scan (tests=pci): vendor and class of each slot, header type, BAR sizing
/// (all-ones written, read back, restored), the capability pointer, then decode on. The raw
/// function (slot 4) has an I/O and a memory BAR.
fn pci_config_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::pop;
    let header = Program(pci_config_header());
    let select = |p: Program, dev: u8, reg: u8| p.op(&[pop::ADDRESS, dev, reg]);
    let read32 = |p: Program| p.op(&[pop::READ, 6, 2]);
    let write32 = |p: Program, v: u32| p.op(&[pop::WRITE, 6, 2]).op(&le32(v));
    let mut scan = Program(header.0.clone());
    for dev in 0..6 {
        scan = read32(select(scan, dev, 0));
        scan = read32(select(scan, dev, 8));
        scan = read32(select(scan, dev, 0x0c));
    }
    let mut bars = Program(header.0.clone());
    for dev in 1..5 {
        for bar in [0x10u8, 0x14, 0x20] {
            bars = write32(select(bars, dev, bar), !0);
            bars = write32(read32(bars), 0);
        }
    }
    let mut caps = Program(header.0);
    for dev in 1..5 {
        caps = select(caps, dev, 0x34).op(&[pop::READ, 6, 0]);
        caps = select(caps, dev, 0x40).op(&[pop::READ, 6, 1]);
        caps = select(caps, dev, 4).op(&[pop::WRITE, 6, 1, 7, 0]);
    }
    vec![
        ("scan", scan.0),
        ("bar-sizing", bars.0),
        ("caps-command", caps.0),
    ]
}

/// The MSI-X tables the virtio drivers program: each vector's address, data and unmask, the
/// function enabled (masked first, then not), triggers, a PBA read.
fn msix_programs() -> Vec<(&'static str, Vec<u8>)> {
    let table = |mut p: Program, vectors: u8| {
        for v in 0..vectors {
            p = p.op(&[1, 0, v, 0, 2]).op(&le32(0xfee0_0000));
            p = p.op(&[1, 0, v, 1, 2]).op(&le32(0));
            p = p.op(&[1, 0, v, 2, 2]).op(&le32(0x30 + u32::from(v)));
            p = p.op(&[1, 0, v, 3, 2]).op(&le32(0));
        }
        p
    };
    let three = table(Program::default().op(&[3]).op(&[3, 0, 0xc0]), 3)
        .op(&[3, 0, 0x80])
        .op(&[4, 0, 4, 1, 4, 2]);
    let masked = table(Program::default().op(&[2]).op(&[3, 0, 0x80]), 2)
        .op(&[1, 0, 1, 3, 2])
        .op(&le32(1))
        .op(&[4, 1])
        .op(&[2, 1, 0, 0, 3])
        .op(&[1, 0, 1, 3, 2])
        .op(&le32(0))
        .op(&[6]);
    vec![("three-vectors", three.0), ("mask-pending", masked.0)]
}

/// virtio-blk as the kernel's driver runs it (tests=virtio_blk_integrity): queue 0 set up,
/// features, then reads, writes, a flush and GET_ID, each notified.
fn virtio_blk_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::vop;
    let ready = || {
        Program(vec![0])
            .op(&[vop::QUEUE, 0, 0, 4, 0, 2, 1])
            .op(&[vop::NEGOTIATE, 0])
    };
    // REQUEST: head, type (0 IN, 1 OUT, 2 FLUSH, 3 GET_ID), sector selector, sector, header
    // slot, data buffers (each: 0 = 512 bytes at the canonical place), status offset, notify.
    let request = |p: Program, head: u8, ty: u8, sector: u8, bufs: &[u8]| {
        p.op(&[
            vop::REQUEST,
            head,
            ty,
            0,
            sector,
            head % 16,
            bufs.len() as u8,
        ])
        .op(bufs)
        .op(&[head, 0])
    };
    let rw = request(request(ready(), 0, 1, 3, &[0x10]), 4, 0, 3, &[0x10]);
    let rw = request(rw, 8, 1, 15, &[0]);
    let flush = request(request(ready(), 0, 1, 0, &[0, 0]), 4, 2, 0, &[]);
    let id = request(ready(), 0, 3, 0, &[0]);
    let id = request(id, 2, 0, 1, &[0x30]);
    vec![
        ("write-read", rw.0),
        ("write-flush", flush.0),
        ("get-id-read", id.0),
    ]
}

/// virtio-net as the kernel's driver runs it (tests=net_ping): five queues, the offered
/// features, RX buffers posted, frames out and in, a control command.
fn virtio_net_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::nop;
    let ready = || {
        let mut p = Program(vec![2]);
        for q in 0..5u8 {
            p = p.op(&[nop::QUEUE, q, 4, 1, 0, 1]);
        }
        p.op(&[nop::NEGOTIATE, 0, 0b1110_1111, 1])
    };
    let rx = |p: Program, pair: u8| p.op(&[nop::RX, pair, 0, 5 | 0x40, 1, 0]);
    // TX: pair, sane header, 42 + 18 bytes, no fill, no cuts, no oddity, notify.
    let tx = |p: Program, pair: u8| p.op(&[nop::TX, pair, 0, 2, 18, 0, 0, 7, 1]);
    let inject = |p: Program| p.op(&[nop::INJECT, 0, 2, 18, 0, 0, 0]);
    let ping = inject(tx(rx(rx(ready(), 0), 0), 0));
    let ping = inject(tx(ping, 0));
    let both = inject(tx(tx(rx(rx(ready(), 0), 1), 0), 1));
    // The checksum-offload header: NEEDS_CSUM at 34, offset 16 (TCP).
    let csum = rx(ready(), 0).op(&[nop::TX, 0, 2, 20, 1, 2, 100, 0, 0, 7, 1]);
    vec![("ping", ping.0), ("two-pairs", both.0), ("csum-tx", csum.0)]
}

/// IDE as the kernel's PIIX driver runs it (tests=ide_pio_integrity, ide_dma): IDENTIFY and
/// its 256 words, PIO writes and reads of a sector, a flush, and DMA reads and writes with
/// the engine stopped and the status acknowledged after each.
fn ide_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::iop;
    // Indices into the target's ATA command table.
    const READ_SECTORS: u8 = 0;
    const WRITE_SECTORS: u8 = 5;
    const FLUSH_CACHE: u8 = 21;
    const IDENTIFY: u8 = 23;
    let one_drive = || Program(vec![1 << 1]);
    // TASKFILE: channel, device, feature, count, lba, command; then the status read.
    let command = |p: Program, device: u8, count: u8, lba: u8, cmd: u8| {
        p.op(&[iop::TASKFILE, 0, device, 0, count, lba, cmd])
            .op(&[iop::READ, 0, 9, 0])
    };
    // PIO: channel 0, read (0) or write (1) of 16-bit words, 256 of them, fill.
    let pio = |p: Program, write: bool| p.op(&[iop::PIO, 0, u8::from(write), 255, 1, 2, 3, 4]);
    let identify = pio(command(one_drive(), 0xa0, 0, 0, IDENTIFY), false);
    let pio_rw = pio(
        command(Program(identify.0.clone()), 0xe0, 1, 3, WRITE_SECTORS),
        true,
    );
    let pio_rw = pio(command(pio_rw, 0xe0, 1, 3, READ_SECTORS), false);
    let pio_rw = command(pio_rw, 0xe0, 0, 0, FLUSH_CACHE);
    // DMA: channel 0, flags (0x20: stop and acknowledge; 0x02: write), lba, count - 1,
    // entries - 1, each entry's size selector.
    let dma = one_drive()
        .op(&[iop::DMA, 0, 0x22, 2, 1, 1, 0, 0])
        .op(&[iop::DMA, 0, 0x20, 2, 1, 1, 0, 0])
        .op(&[iop::DMA, 0, 0x20, 5, 3, 1, 1, 1]);
    vec![
        ("identify", identify.0),
        ("pio-write-read-flush", pio_rw.0),
        ("dma", dma.0),
    ]
}

/// e1000 as the kernel's driver runs it (tests=net_ping with nic=e1000): reset, the MAC from
/// the EEPROM and RAL/RAH, interrupts masked, rings and TX/RX on, a frame sent and one
/// received, ICR read and RDT moved on.
fn e1000_programs() -> Vec<(&'static str, Vec<u8>)> {
    // REGS indices of the target.
    const CTRL: u8 = 0;
    const STATUS: u8 = 1;
    const EERD: u8 = 3;
    const ICR: u8 = 5;
    const IMS: u8 = 7;
    const IMC: u8 = 8;
    const RDT: u8 = 15;
    const TDT: u8 = 20;
    const RA: u8 = 23;
    let read = |p: Program, reg: u8| p.op(&[0, 0, reg, 2]);
    let write = |p: Program, reg: u8, v: u32| p.op(&[1, 0, reg, 2]).op(&le32(v));
    let mut init = write(Program(vec![0]), CTRL, 1 << 26);
    init = read(init, STATUS);
    for word in 0..3u32 {
        init = read(write(init, EERD, word << 8 | 1), EERD);
    }
    init = read(read(init, RA), RA);
    init = write(init, IMC, !0).op(&[2]);
    init = write(init, IMS, 0x9d);
    // A TX descriptor (buffer 0x3000, 60 bytes, EOP|IFCS|RS), its frame, TDT.
    let send = |p: Program, i: u8| {
        let p = p.op(&[8, 0]).op(&0x3000u16.to_le_bytes()).op(&[14]);
        let p = p
            .op(&[0xff; 6])
            .op(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 8, 6]);
        let p = p.op(&[4, i, 0]).op(&0x3000u16.to_le_bytes());
        write(p.op(&[0, 60, 0x0b, 0]), TDT, u32::from(i) + 1)
    };
    let receive = |p: Program| {
        let p = p.op(&[6]).op(&100u16.to_le_bytes()).op(&[0xaa, 0, 7]);
        write(read(p, ICR), RDT, 0)
    };
    let ping = receive(send(Program(init.0.clone()), 0));
    let ping = receive(send(ping, 1));
    let io = receive(send(Program(init.0), 0))
        .op(&[9, 0, 2, 0])
        .op(&le32(0x08))
        .op(&[9, 4, 2, 1]);
    vec![("ping", ping.0), ("ioaddr-iodata", io.0)]
}

/// RTL8139 as the kernel's driver runs it (tests=net_ping with nic=rtl8139): reset, the MAC
/// from IDR0, config unlocked, the ring and RCR, IMR, RX and TX on, a frame out through each
/// TX slot in turn, frames in with ISR acknowledged and CAPR moved on, the link down and up.
fn rtl8139_programs() -> Vec<(&'static str, Vec<u8>)> {
    // REGS indices of the target.
    const IDR0: u8 = 0;
    const IMR: u8 = 10;
    const ISR: u8 = 11;
    const CR9346: u8 = 16;
    const CONFIG1: u8 = 17;
    // Reads and writes by port I/O (the last byte 0).
    let read = |p: Program, reg: u8, width: u8| p.op(&[0, 0, reg, width, 0]);
    let write8 = |p: Program, reg: u8, v: u8| p.op(&[1, 0, reg, 0, v, 0]);
    let write16 = |p: Program, reg: u8, v: u16| p.op(&[1, 0, reg, 1]).op(&v.to_le_bytes()).op(&[0]);
    let mut init = Program(vec![0]).op(&[13, 0x10]);
    init = read(read(init, IDR0, 2), IDR0, 1);
    init = write8(write8(init, CR9346, 0xc0), CONFIG1, 0);
    init = write8(init, CR9346, 0);
    // Canonical ring, RCR APM | AB | WRAP; IMR ROK | TOK; CR RE | TE.
    init = init.op(&[2, 0x8a, 0, 0, 0]);
    init = write16(init, IMR, 0x05).op(&[13, 0x0c]);
    let send = |p: Program, slot: u8| {
        let p = p.op(&[7, 0]).op(&0x6000u16.to_le_bytes()).op(&[14]);
        let p = p
            .op(&[0xff; 6])
            .op(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 8, 6]);
        let p = p.op(&[4, slot, 0]).op(&0x6000u16.to_le_bytes()).op(&[0]);
        write16(p.op(&60u16.to_le_bytes()), ISR, 0x04)
    };
    let receive = |p: Program| {
        let p = p.op(&[5]).op(&100u16.to_le_bytes()).op(&[0xaa, 0, 6]);
        write16(read(p, ISR, 1), ISR, 0x01).op(&[8, 1])
    };
    let mut ping = Program(init.0.clone());
    for slot in 0..4 {
        ping = send(ping, slot);
    }
    let ping = receive(receive(send(ping, 0)));
    let link = receive(send(Program(init.0), 0))
        .op(&[12, 1])
        .op(&[5])
        .op(&60u16.to_le_bytes())
        .op(&[0xff, 1, 6])
        .op(&[12, 0]);
    let link = receive(link);
    vec![("ping-four-slots", ping.0), ("link-down-up", link.0)]
}

/// A target's seed files: (file name, program).
type Seeds = Vec<(&'static str, Vec<u8>)>;

/// Every target's seed programs.
fn seed_programs() -> Vec<(&'static str, Seeds)> {
    vec![
        ("balloon", balloon_programs()),
        ("console", console_programs()),
        ("debug_exit", debug_exit_programs()),
        ("e1000", e1000_programs()),
        ("exit_dispatch", exit_dispatch_programs()),
        ("floor", floor_programs()),
        ("ide", ide_programs()),
        ("msix", msix_programs()),
        ("pci_config", pci_config_programs()),
        ("rtl8139", rtl8139_programs()),
        ("serial", serial_programs()),
        ("virtio_blk", virtio_blk_programs()),
        ("virtio_net", virtio_net_programs()),
    ]
}

/// Rebuild the seed corpus files (`cargo test -p hypervisor-harness --lib write_seed_corpus --
/// --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (target, programs) in seed_programs() {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in programs {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The seeds are what they say: each one does real work in its device.
#[test]
fn the_seed_programs_reach_the_devices() {
    for (name, p) in balloon_programs() {
        let s = super::run_balloon(&p);
        let work = s.inflated + s.deflated + s.reported;
        assert!(work > 0 || name == "stats", "{name}: {s:?}");
    }
    for (name, p) in console_programs() {
        let s = super::run_console(&p);
        assert!(s.from_guest > 0, "{name}: {s:?}");
    }
    for (name, p) in virtio_blk_programs() {
        let s = super::run_virtio_blk(&p);
        assert!(s.requests >= 2 && !s.needs_reset, "{name}: {s:?}");
    }
    for (name, p) in virtio_net_programs() {
        let s = super::run_virtio_net(&p);
        assert!(s.sent > 0 && !s.hostile && !s.needs_reset, "{name}: {s:?}");
    }
    for (name, p) in ide_programs() {
        let s = super::run_ide(&p);
        assert!(s.irqs[0] >= 1, "{name}: {s:?}");
        assert_eq!(s.ata_status[0] & 1, 0, "{name}: ERR: {s:?}");
    }
    for (name, p) in e1000_programs() {
        let s = super::run_e1000(&p);
        assert!(s.sent > 0 && s.received > 0, "{name}: {s:?}");
    }
    for (name, p) in rtl8139_programs() {
        let s = super::run_rtl8139(&p);
        assert!(s.sent > 0 && s.received > 0, "{name}: {s:?}");
    }
}
