//! The recorded part of the seed corpus: the exit streams of the kernel's own tests
//! (`run --record-exits`, `tests/record_exits.rs`) converted into the inputs of every
//! target: `exit_dispatch` (the exits as they are), `serial` (COM1's), `pci_config`
//! (0xCF8/0xCFC's), `ide` (the PIIX ports': taskfile, control, bus-master), `msix` (the virtio
//! functions' tables, and message control through 0xCFE) and `debug_exit` (its port's), and
//! `virtio_blk` and `virtio_blk_async`, from the requests the device parsed (the queues live
//! in guest memory: the recorder keeps a snapshot of each request); the NICs' (`virtio_net`,
//! `e1000`, `rtl8139`), each from a run of the network tests on that model alone: its
//! register accesses, with its rings moved to the target's canonical ones, and the frames its
//! backend carried (the recorder keeps each one's length and first bytes) as the target's
//! TX and RX operations; `balloon` and `console` from the buffers the device took (page
//! numbers, statistics; a port's bytes, control messages, the host's input); `floor` from
//! the floor bench's BAR accesses and the doorbells its ioeventfd took. Files
//! `fuzz/corpus/<target>/rec-<recording>-<n>`, beside the hand-written seeds of `corpus.rs`.
//!
//! - [`write_recorded_corpus`] (ignored; `fuzz/record-corpus.sh` records, then runs it)
//!   converts the recordings in `$RECORDINGS` (default `target/exit-recordings/`).
//! - [`the_recorded_seeds_reach_the_devices`] runs every recorded seed through its target and
//!   checks it does real work there.
//!
//! A recording is thousands of exits and a target runs [`MAX_OPS`] operations per input, so
//! each one is cut into programs of at most that many operations (a status register polled
//! the same way twice in a row counts once), identical programs dropped, and a few kept
//! spread over the run, the first and last among them.

use super::{iop, pop, MAX_OPS};
use crate::devices::pci::CONFIG_ADDRESS_PORT;
use crate::vmm::exit_recorder::{self, ExitKind, ExitRecord};
use std::path::PathBuf;

/// The recordings (`tests/record_exits.rs`) of the machine's fixed devices, the PCI scan and
/// the disks; each other device's (the NIC models, the balloon, the console, the floor) has
/// its name.
const BASE: &[&str] = &["boot-pci", "virtio-blk", "ide"];
/// Most programs kept per recording and target.
const KEEP: usize = 6;
/// The prefix of a recorded seed's file name (the hand-written ones have none).
const PREFIX: &str = "rec-";

fn recordings_dir() -> PathBuf {
    std::env::var_os("RECORDINGS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/exit-recordings"),
        PathBuf::from,
    )
}

/// The records, a read that repeats the record before it (a status poll) left out.
fn squeezed(records: &[ExitRecord]) -> Vec<&ExitRecord> {
    let mut out: Vec<&ExitRecord> = Vec::new();
    for r in records {
        let read = matches!(r.kind, ExitKind::PortIn | ExitKind::MmioRead);
        if read && out.last().is_some_and(|&last| last == r) {
            continue;
        }
        out.push(r);
    }
    out
}

/// The record's data, or as many zeros where the recorder left it out.
fn data(r: &ExitRecord) -> Vec<u8> {
    if r.elided() {
        vec![0; r.len]
    } else {
        r.data.clone()
    }
}

/// The fuzz decoders' width selector for an access of `len` bytes ([`super::Reader::width`]).
fn width_selector(len: usize) -> Option<u8> {
    Some(match len {
        1 => 0,
        2 => 1,
        4 => 2,
        8 => 3,
        0 => 12,
        3 => 13,
        6 => 14,
        16 => 15,
        _ => return None,
    })
}

/// Programs of at most `per` operations (as many as it takes, of even size), each `header`
/// then its operations; duplicates
/// dropped, at most [`KEEP`] kept: the first, the last, and those between that touch the
/// most different registers (an operation's first 4 bytes: its kind and where), in order.
fn programs(header: &[u8], ops: &[Vec<u8>], per: usize) -> Vec<Vec<u8>> {
    // Chunks of even size, so that the last is not a scrap.
    let size = ops.len().div_ceil(ops.len().div_ceil(per).max(1)).max(1);
    kept(header, ops.chunks(size).map(<[_]>::to_vec).collect())
}

/// [`programs`] for a conversion with state (where the rig's rings are, the next
/// descriptor): `convert` turns each record into operations, starting afresh at each program
/// so that a program stands alone; a program gets at most `per` operations, and is kept only
/// when one of them satisfies `works` (moves data, not only registers).
fn programs_by<S: Default>(
    header: &[u8],
    records: &[&ExitRecord],
    per: usize,
    mut convert: impl FnMut(&mut S, &ExitRecord) -> Vec<Vec<u8>>,
    works: impl Fn(&[u8]) -> bool,
) -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut chunk: Vec<Vec<u8>> = Vec::new();
    let mut state = S::default();
    for &r in records {
        let mut ops = convert(&mut state, r);
        if !chunk.is_empty() && chunk.len() + ops.len() > per {
            chunks.push(std::mem::take(&mut chunk));
            state = S::default();
            ops = convert(&mut state, r);
        }
        chunk.extend(ops);
    }
    chunks.push(chunk);
    chunks.retain(|c| c.iter().any(|op| works(op)));
    kept(header, chunks)
}

/// Each chunk of operations as a program (`header` then the operations); duplicates dropped,
/// at most [`KEEP`] kept: the first, the last, and those between that touch the most
/// different registers (an operation's first 4 bytes: its kind and where), in order.
fn kept(header: &[u8], chunks: Vec<Vec<Vec<u8>>>) -> Vec<Vec<u8>> {
    let mut all: Vec<(usize, Vec<u8>)> = Vec::new();
    for chunk in chunks {
        let p: Vec<u8> = header.iter().copied().chain(chunk.concat()).collect();
        let mut places: Vec<&[u8]> = chunk.iter().map(|op| &op[..op.len().min(4)]).collect();
        places.sort();
        places.dedup();
        if !all.iter().any(|(_, q)| *q == p) {
            all.push((places.len(), p));
        }
    }
    if all.len() > KEEP {
        let mut middle: Vec<usize> = (1..all.len() - 1).collect();
        middle.sort_by_key(|&i| std::cmp::Reverse(all[i].0));
        let mut keep: Vec<usize> = middle[..KEEP - 2].to_vec();
        keep.extend([0, all.len() - 1]);
        keep.sort();
        all = keep
            .into_iter()
            .map(|i| std::mem::take(&mut all[i]))
            .collect();
    }
    all.into_iter().map(|(_, p)| p).collect()
}

/// One exit as an `exit_dispatch` record: port ops name the port itself (selector 7), the
/// element size and count, no stray bytes; MMIO ops the address itself (selector 5). The data
/// of an out is its first 64 bytes (the decoder repeats them to the length).
fn exit_dispatch_op(r: &ExitRecord) -> Option<Vec<u8>> {
    if r.kind == ExitKind::Request {
        return None;
    }
    if !r.kind.is_port() {
        let mut op = vec![if r.kind.is_write() { 3 } else { 4 }, 5];
        op.extend_from_slice(&r.addr.to_le_bytes());
        op.push(width_selector(r.len)?);
        // A read's value bytes are read and ignored.
        match r.kind {
            ExitKind::MmioWrite => op.extend(data(r)),
            _ => op.extend(std::iter::repeat_n(0, r.len)),
        }
        return Some(op);
    }
    let mut op = vec![if r.kind.is_write() { 0 } else { 2 }, 7];
    op.extend_from_slice(&(r.addr as u16).to_le_bytes());
    match r.size {
        1 => op.push(0),
        2 => op.push(2),
        4 => op.push(4),
        0 => op.extend([6, 0]),
        3 => op.extend([6, 1]),
        8 => op.extend([6, 2]),
        s => op.extend([7, s]),
    }
    match r.count() {
        0 => op.push(7),
        1 => op.push(0),
        n @ 2..=16 => op.extend([4, n as u8 - 1]),
        n => {
            op.push(6);
            op.extend_from_slice(&(n.min(2047) as u16).to_le_bytes());
        }
    }
    op.push(0);
    if r.kind.is_write() {
        op.extend(data(r).into_iter().take(64));
    }
    Some(op)
}

fn exit_dispatch_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let ops: Vec<_> = squeezed(records)
        .into_iter()
        .filter_map(exit_dispatch_op)
        .collect();
    programs(&[], &ops, MAX_OPS)
}

/// COM1's accesses as `serial` register ops, one per element: writes (op 0) and reads
/// (op 2) at the register's offset, one byte wide.
fn serial_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let mut ops = Vec::new();
    for r in squeezed(records) {
        if r.range != "com1" || r.size != 1 {
            continue;
        }
        let off = (r.addr - r.base) as u8;
        for b in data(r) {
            ops.push(match r.kind {
                ExitKind::PortOut => vec![0, 0, off, 0, b],
                _ => vec![2, 0, off, 0],
            });
        }
    }
    programs(&[], &ops, MAX_OPS)
}

/// The configuration ports' accesses as `pci_config` ops: CONFIG_ADDRESS written whole is an
/// ADDRESS op with the address itself, the rest reads and writes at their port.
fn pci_config_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let mut ops = Vec::new();
    for r in squeezed(records) {
        if r.range != "pci-config" || r.count() != 1 {
            continue;
        }
        let off = (r.addr - CONFIG_ADDRESS_PORT) as u8;
        let Some(width) = width_selector(r.len) else {
            continue;
        };
        ops.push(match r.kind {
            ExitKind::PortOut if off == 0 && r.len == 4 => {
                [&[pop::ADDRESS, 0x80][..], &data(r)].concat()
            }
            ExitKind::PortOut => [&[pop::WRITE, off + 2, width][..], &data(r)].concat(),
            _ => vec![pop::READ, off + 2, width],
        });
    }
    programs(&super::corpus::pci_config_header(), &ops, MAX_OPS)
}

/// The PIIX ports' accesses as `ide` ops: register reads and writes by range (the rig's
/// order: primary command and control, secondary command and control, bus-master), data
/// port strings as PIO ops of as many words, the sector numbers and counts cut to the rig's
/// disk. A PRD table address goes to the rig's table
/// for the channel, with one entry over all of the first RAM region (the guest's tables
/// live in its memory, not in exits).
fn ide_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    const RANGES: [&str; 5] = ["ide0-cmd", "ide0-ctl", "ide1-cmd", "ide1-ctl", "ide-bmdma"];
    let mut ops = Vec::new();
    for r in squeezed(records) {
        let Some(range) = RANGES.iter().position(|&n| n == r.range) else {
            continue;
        };
        let off = r.addr - r.base;
        let write = r.kind.is_write();
        if range % 2 == 0 && range < 4 && off == 0 && r.count() > 1 {
            // `rep insw/outsw` (or d-words) at the data port.
            let wide = u8::from(r.size == 4) << 1;
            for words in (0..r.count()).step_by(256) {
                let n = (r.count() - words).min(256);
                let fill = r.data.get(words * r.size as usize..).unwrap_or_default();
                // (An elided string fills with zeros.)
                let mut op = vec![iop::PIO, (range / 2) as u8, wide | u8::from(write)];
                op.push((n - 1) as u8);
                op.extend((0..4).map(|i| fill.get(i).copied().unwrap_or(0)));
                ops.push(op);
            }
            continue;
        }
        let Some(width) = width_selector(r.len) else {
            continue;
        };
        if range == 4 && write && off % 8 == 4 && r.len == 4 {
            let ch = (off / 8) as u8;
            let table = 0x8000 + 0x100 * u32::from(ch);
            let mut op = vec![iop::WRITE, 4, off as u8 + 2, width];
            op.extend_from_slice(&table.to_le_bytes());
            ops.push(op);
            // PRD: channel, entry 0, GPA 0, a count of 0 (64 KiB), the last entry.
            ops.push(vec![iop::PRD, ch, 0, 0, 0, 0, 0, 1]);
            continue;
        }
        let mut op = vec![
            if write { iop::WRITE } else { iop::READ },
            range as u8,
            off as u8 + 2,
            width,
        ];
        if write {
            op.extend(data(r));
        }
        if write && range % 2 == 0 && range < 4 && r.len == 1 {
            // The tests' disk has 4103 sectors, the rig's 16: sector counts (0 is 256) cut
            // to 8, LBAs to 0..8, so the commands still transfer instead of failing.
            match off {
                2 => op[4] = if op[4] == 0 { 8 } else { op[4].min(8) },
                3 => op[4] %= 8,
                4 | 5 => op[4] = 0,
                _ => {}
            }
        }
        ops.push(op);
    }
    // One drive (the tests' disk is the primary master), memory zeroed; room for the PRD
    // entries a program adds.
    programs(&[1 << 1], &ops, MAX_OPS - 8)
}

/// The requests the virtio-blk device parsed as the target's REQUEST ops on a 16-entry queue
/// 0 (IN, OUT, FLUSH and GET_ID; the kernel's tests make no others): the type, the sector
/// within the rig's disk, up to 3 data buffers of the request's lengths (whole sectors up to
/// 4 at the canonical places, else the length itself), notified.
fn virtio_blk_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use super::vop;
    // Queue 0: 16 entries, canonical rings, no vector, enabled; the offered features.
    let ready = [
        &[0][..],
        &[vop::QUEUE, 0, 0, 4, 0, 2, 1],
        &[vop::NEGOTIATE, 0],
    ]
    .concat();
    let mut ops = Vec::new();
    let mut head = 0u8;
    for r in records {
        if r.kind != ExitKind::Request || r.range != "virtio-blk" || r.data.len() < 4 {
            continue;
        }
        let ty = match u32::from_le_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]) {
            0 => 0,
            1 => 1,
            4 => 2,
            8 => 3,
            _ => continue,
        };
        let lens: Vec<u32> = r.data[4..]
            .as_chunks::<5>()
            .0
            .iter()
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            .take(3)
            .collect();
        let mut op = vec![vop::REQUEST, head, ty, 0, (r.addr % 16) as u8, head % 16];
        op.push(lens.len() as u8);
        for len in &lens {
            if len % 512 == 0 && (512..=2048).contains(len) {
                op.push(((len / 512 - 1) as u8) << 4);
            } else {
                // Canonical place, the length itself (len32's 16-bit form).
                op.extend([2, 5]);
                op.extend_from_slice(&(*len.min(&0xffff) as u16).to_le_bytes());
            }
        }
        // The status byte by its head, notified.
        op.extend([head, 0]);
        ops.push(op);
        head = (head + 2 + lens.len() as u8) % 16;
    }
    programs(&ready, &ops, 48)
}

/// The MSI-X tables' accesses (ranges named `*-msix`) as `msix` table reads and writes at
/// their offsets, and the 16-bit configuration writes at 0xCFE (message control: enable,
/// function mask) as control ops; the table as large as the highest vector touched.
fn msix_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let mut ops = Vec::new();
    let mut vectors = 1u16;
    for r in squeezed(records) {
        let Some(width) = width_selector(r.len) else {
            continue;
        };
        let control_port = CONFIG_ADDRESS_PORT + 6;
        if r.range == "pci-config" && r.kind == ExitKind::PortOut && r.addr == control_port {
            if r.len == 2 {
                ops.push([&[3][..], &data(r)].concat());
            }
            continue;
        }
        if !r.range.ends_with("-msix") || r.kind.is_port() {
            continue;
        }
        let off = (r.addr - r.base) as u16;
        vectors = vectors.max(off / 16 + 1);
        let mut op = vec![u8::from(r.kind.is_write()), 1];
        op.extend_from_slice(&off.to_le_bytes());
        op.push(width);
        if r.kind.is_write() {
            op.extend(data(r));
        }
        ops.push(op);
    }
    let header = match vectors {
        0..=7 => vec![vectors as u8],
        n => [&[0xff][..], &n.to_le_bytes()].concat(),
    };
    programs(&header, &ops, MAX_OPS)
}

/// A [`ExitKind::Frame`] record of the NIC model `nic`: (to the guest, the frame's length,
/// its first bytes).
fn frame<'a>(r: &'a ExitRecord, nic: &str) -> Option<(bool, usize, &'a [u8])> {
    if r.kind != ExitKind::Frame || r.range != nic {
        return None;
    }
    let (len, head) = r.data.split_first_chunk::<4>()?;
    Some((r.addr == 1, u32::from_le_bytes(*len) as usize, head))
}

/// virtio-net's frames as the target's ops on the hand-written seeds' set-up (two pairs and
/// the control queue of 16 entries each, the features the kernel's driver takes): a frame
/// from the guest as a TX chain of its length with its first header bytes after the
/// target's own, a frame to it as a posted RX buffer and the frame injected (its length and
/// first bytes), the receive queue notified. The register accesses stay out: written raw,
/// they make the run hostile, and the set-up is the target's own.
fn virtio_net_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use super::nop;
    let mut header = vec![2];
    for q in 0..5u8 {
        header.extend([nop::QUEUE, q, 4, 1, 0, 1]);
    }
    header.extend([nop::NEGOTIATE, 0, 0b1110_1111, 1]);
    let convert = |_: &mut (), r: &ExitRecord| {
        let Some((to_guest, len, head)) = frame(r, "virtio-net") else {
            return Vec::new();
        };
        let len = (len % 2048) as u16;
        if to_guest {
            // One buffer for a header and a whole frame, writable; notified.
            let rx = vec![nop::RX, 0, 0, 5 | 0x40, 1, 0];
            let fill = &head[..head.len().min(39)];
            let mut inject = vec![nop::INJECT, 0, 5];
            inject.extend_from_slice(&len.to_le_bytes());
            inject.push(fill.len() as u8);
            inject.extend_from_slice(fill);
            // No partial checksum; the receive queue kicked.
            inject.extend([0, 0]);
            vec![rx, inject]
        } else {
            // The target writes the first 15 bytes itself (its addresses, the type).
            let fill = head.get(15..).unwrap_or_default();
            let fill = &fill[..fill.len().min(15).min(usize::from(len).saturating_sub(15))];
            let mut tx = vec![nop::TX, 0, 0, 5];
            tx.extend_from_slice(&len.to_le_bytes());
            tx.push(fill.len() as u8);
            tx.extend_from_slice(fill);
            // No cuts, no oddity, notified.
            tx.extend([0, 7, 1]);
            vec![tx]
        }
    };
    let works = |op: &[u8]| matches!(op.first(), Some(&nop::TX | &nop::INJECT));
    let records: Vec<_> = records.iter().collect();
    programs_by(&header, &records, MAX_OPS - 6, convert, works)
}

/// Where the e1000 conversion is: the canonical TX descriptor next written, and whether the
/// rings must be set up again (at the start and after a reset).
#[derive(Default)]
struct E1000State {
    tx: u8,
    rx: u8,
    rings_set: bool,
}

/// The e1000's register accesses (BAR0 by offset, the I/O window) as the target's ops, with
/// the rings on the target's canonical ones (8 descriptors each: the ring registers' writes
/// become its CANONICAL op, RDT keeps 7 buffers posted); each frame from the guest as its
/// first bytes in a TX buffer, a legacy descriptor of its length (EOP | IFCS | RS) and TDT
/// moved past it; each frame to the guest pushed to the backend (its length, for our MAC)
/// and an RX pass.
fn e1000_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use crate::devices::net::e1000::regs::{CTRL, RDBAH, RDBAL, RDH, RDLEN, RDT, TDBAH, TDBAL};
    use crate::devices::net::e1000::regs::{TDH, TDLEN, TDT};
    const TX_BUFS: u16 = 0xa000;
    const RESET: u32 = 1 << 26;
    let convert = |st: &mut E1000State, r: &ExitRecord| -> Vec<Vec<u8>> {
        if let Some((to_guest, len, head)) = frame(r, "e1000") {
            let len = (len % 1600) as u16;
            if to_guest {
                let fill = head.get(14).copied().unwrap_or(0xaa);
                let mut push = vec![6];
                push.extend_from_slice(&len.to_le_bytes());
                push.extend([fill, 0]);
                st.rx = st.rx.wrapping_add(1);
                return vec![push, vec![7]];
            }
            let at = TX_BUFS + 0x800 * u16::from(st.tx);
            let mut poke = vec![8, 0];
            poke.extend_from_slice(&at.to_le_bytes());
            poke.push(head.len() as u8);
            poke.extend_from_slice(head);
            let mut desc = vec![4, st.tx, 0];
            desc.extend_from_slice(&at.to_le_bytes());
            desc.push(1);
            desc.extend_from_slice(&len.to_le_bytes());
            desc.extend([0x0b, 0]);
            st.tx = (st.tx + 1) % 8;
            let mut tdt = vec![1, 2];
            tdt.extend_from_slice(&((TDT / 4) as u16).to_le_bytes());
            tdt.push(2);
            tdt.extend_from_slice(&u32::from(st.tx).to_le_bytes());
            return vec![poke, desc, tdt];
        }
        if !r.range.starts_with("e1000-") || r.kind.is_port() != r.range.ends_with("-io") {
            return Vec::new();
        }
        let Some(width) = width_selector(r.len) else {
            return Vec::new();
        };
        let off = r.addr - r.base;
        let write = r.kind.is_write();
        if r.kind.is_port() {
            // The I/O window: IOADDR and IODATA.
            let mut op = vec![9, off as u8, width, u8::from(!write)];
            if write {
                op.extend(data(r));
            }
            return vec![op];
        }
        let mut value = data(r);
        let mut ops = Vec::new();
        if write {
            match off {
                CTRL if value.len() == 4 && le32(&value) & RESET != 0 => {
                    (st.tx, st.rx, st.rings_set) = (0, 0, false);
                }
                RDBAL | RDBAH | RDLEN | TDBAL | TDBAH | TDLEN | RDH | TDH | TDT => {
                    // The guest's rings are in its memory: the target's canonical ones.
                    if !st.rings_set {
                        st.rings_set = true;
                        return vec![vec![2]];
                    }
                    return Vec::new();
                }
                RDT => {
                    if !st.rings_set {
                        st.rings_set = true;
                        ops.push(vec![2]);
                    }
                    value = u32::from((st.rx + 7) % 8).to_le_bytes().to_vec();
                    value.truncate(r.len);
                }
                _ => {}
            }
        }
        let mut op = vec![u8::from(write), 2];
        op.extend_from_slice(&((off / 4) as u16).to_le_bytes());
        op.push(width);
        if write {
            op.extend(value);
        }
        ops.push(op);
        ops
    };
    let works = |op: &[u8]| matches!(op.first(), Some(4 | 6));
    // No memory seed, the rings set up.
    programs_by(&[0, 2], &squeezed(records), MAX_OPS - 1, convert, works)
}

fn le32(b: &[u8]) -> u32 {
    b.first_chunk::<4>().map_or(0, |b| u32::from_le_bytes(*b))
}

/// Where the RTL8139 conversion is: the TX slot the device sends from next.
#[derive(Default)]
struct Rtl8139State {
    slot: u8,
}

/// The RTL8139's register accesses (the I/O BAR, else BAR1's MMIO, by offset) as the
/// target's ops, the RX ring on the target's canonical 8 KiB one (RBSTART written as its
/// address, RCR's ring size 8 KiB, CAPR where the driver has read to); each frame from the
/// guest as its first bytes in a TX buffer and the TX op on the next slot in turn (address
/// and size), each frame to it pushed to the backend (its length; for our MAC, or broadcast)
/// and an RX pass.
fn rtl8139_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use crate::devices::net::rtl8139::regs::{CAPR, CR, RBSTART, RCR, TSAD0, TSD0};
    const TX_BUFS: u16 = 0x6000;
    const RX_RING: u32 = 0x1000;
    const RESET: u8 = 0x10;
    let convert = |st: &mut Rtl8139State, r: &ExitRecord| -> Vec<Vec<u8>> {
        if let Some((to_guest, len, head)) = frame(r, "rtl8139") {
            let len = (len % 1600) as u16;
            if to_guest {
                let broadcast = head.get(..6) == Some(&[0xff; 6][..]);
                let fill = head.get(14).copied().unwrap_or(0xaa);
                let mut push = vec![5];
                push.extend_from_slice(&len.to_le_bytes());
                push.extend([fill, u8::from(broadcast)]);
                return vec![push, vec![6]];
            }
            let at = TX_BUFS + 0x800 * u16::from(st.slot);
            let mut poke = vec![7, 0];
            poke.extend_from_slice(&at.to_le_bytes());
            poke.push(head.len() as u8);
            poke.extend_from_slice(head);
            let mut send = vec![4, st.slot, 0];
            send.extend_from_slice(&at.to_le_bytes());
            send.push(0);
            send.extend_from_slice(&len.to_le_bytes());
            st.slot = (st.slot + 1) % 4;
            return vec![poke, send];
        }
        let io = r.kind.is_port();
        if !r.range.starts_with("rtl8139-") || io != r.range.ends_with("-io") {
            return Vec::new();
        }
        let Some(width) = width_selector(r.len) else {
            return Vec::new();
        };
        let off = (r.addr - r.base) as u16;
        let write = r.kind.is_write();
        let mut value = data(r);
        if write {
            let reg = |base: u8, n: u16| (u16::from(base)..u16::from(base) + n).contains(&off);
            if reg(TSAD0, 16) || reg(TSD0, 16) {
                // The frame's own TX op writes its slot's address and size.
                return Vec::new();
            }
            match u8::try_from(off) {
                Ok(CAPR) => return vec![vec![8, 1]],
                Ok(RBSTART) => value = RX_RING.to_le_bytes()[..r.len.min(4)].to_vec(),
                Ok(RCR) if !value.is_empty() => value[1] &= !0x18,
                Ok(CR) if value.first().is_some_and(|v| v & RESET != 0) => st.slot = 0,
                _ => {}
            }
        }
        let mut op = vec![u8::from(write), 3];
        op.extend_from_slice(&off.to_le_bytes());
        op.push(width);
        if write {
            op.extend(value);
        }
        op.push(u8::from(!io));
        vec![op]
    };
    let works = |op: &[u8]| matches!(op.first(), Some(4 | 5));
    // No memory seed; a reset, then the canonical ring (RCR APM | AB | WRAP).
    let header = [0, 13, RESET, 2, 0x8a, 0, 0, 0];
    programs_by(&header, &squeezed(records), MAX_OPS - 2, convert, works)
}

/// A [`ExitKind::Buffer`] record of the virtio device `device`: (its queue, the bytes' length,
/// the first of them).
fn buffer<'a>(r: &'a ExitRecord, device: &str) -> Option<(u64, usize, &'a [u8])> {
    if r.kind != ExitKind::Buffer || r.range != device {
        return None;
    }
    let (len, head) = r.data.split_first_chunk::<4>()?;
    Some((r.addr, u32::from_le_bytes(*len) as usize, head))
}

/// The balloon's buffers as the target's chains on the hand-written seeds' set-up (its four
/// queues, the offered features, a target of 16 pages): each inflate and deflate buffer's
/// page numbers (the first 32) as a PFN array of the rig's RAM (the number modulo the 7
/// pages no ring or buffer uses: the guest gives runs of its lowest frames, which stay runs),
/// each statistics report as its (tag, value) entries.
fn balloon_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use super::balloon::bop;
    use super::virtio_rig::rop;
    use crate::devices::virtio::balloon::{DEFLATE_QUEUE, INFLATE_QUEUE, STATS_QUEUE};
    let mut header = vec![0];
    for q in 0..4 {
        header.extend([rop::QUEUE, 0, q, 3, 0, 0, 1]);
    }
    header.extend([rop::NEGOTIATE, 0, bop::TARGET, 1, 16]);
    // Whether the program has inflated pages yet: a deflate before any (the program began
    // after the guest's inflation) first puts its pages in, so that it takes them out.
    let convert = |inflated: &mut bool, r: &ExitRecord| {
        let Some((q, _, head)) = buffer(r, "virtio-balloon") else {
            return Vec::new();
        };
        let q = q as usize;
        // One readable buffer of the payload that follows, notified.
        let chain =
            |q: usize, payload: &[u8]| [&[rop::CHAIN, q as u8, 0, 0, 1][..], payload].concat();
        match q {
            INFLATE_QUEUE | DEFLATE_QUEUE => {
                let pfns = head.as_chunks::<4>().0;
                let pfns = &pfns[..pfns.len().min(32)];
                if pfns.is_empty() {
                    return Vec::new();
                }
                let mut payload = vec![pfns.len() as u8 - 1];
                for pfn in pfns {
                    // Pages 4..8 (between the rings and the buffers), then the other
                    // regions' (selector 4).
                    payload.extend(match u32::from_le_bytes(*pfn) % 7 {
                        k @ 0..4 => [0, 4 + k as u8],
                        k => [4, k as u8 - 4],
                    });
                }
                let mut ops = Vec::new();
                if q == DEFLATE_QUEUE && !*inflated {
                    ops.push(chain(INFLATE_QUEUE, &payload));
                }
                *inflated = true;
                ops.push(chain(q, &payload));
                ops
            }
            STATS_QUEUE => {
                let entries = head.as_chunks::<10>().0;
                if entries.is_empty() {
                    return Vec::new();
                }
                let mut payload = vec![entries.len() as u8 - 1];
                for e in entries {
                    // The tag as a small one (the kernel's are 0..=9), the value itself.
                    payload.extend([1, e[0]]);
                    payload.extend_from_slice(&e[2..]);
                }
                vec![chain(q, &payload)]
            }
            _ => Vec::new(),
        }
    };
    let works = |op: &[u8]| {
        let q = op.get(1).map(|&q| usize::from(q));
        op.first() == Some(&rop::CHAIN) && matches!(q, Some(INFLATE_QUEUE | DEFLATE_QUEUE))
    };
    let records: Vec<_> = records.iter().collect();
    programs_by(&header, &records, MAX_OPS - 6, convert, works)
}

/// The console's buffers as the target's ops on the hand-written seeds' set-up (two ports'
/// and the control queues, the offered features (MULTIPORT only if the guest used it),
/// receive buffers posted on port 0 and the control queue): what the guest wrote on a port as readable chains of its bytes (up to 64
/// a chain, the payload's most), its control messages as the target's (id, event, value),
/// and what the host typed as the target's INPUT op with a receive buffer posted for it.
fn console_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    use super::console::cop;
    use super::virtio_rig::rop;
    use crate::devices::virtio::console::{CONTROL_RX_QUEUE, CONTROL_TX_QUEUE};
    // One device-writable buffer of 0x1000 bytes on queue q, notified.
    let writable = |q: usize| vec![rop::CHAIN, q as u8, 0, 1, 1, 0xff, 0x0f];
    let mut header = vec![0];
    for q in 0..6 {
        header.extend([rop::QUEUE, 0, q, 3, 0, 0, 1]);
    }
    // The offered features, without MULTIPORT when the guest sent no control message (a
    // console of port 0 alone: with MULTIPORT, input waits for the port to be opened).
    let control = records
        .iter()
        .any(|r| buffer(r, "virtio-console").is_some_and(|(q, ..)| q as usize == CONTROL_TX_QUEUE));
    if control {
        header.extend([rop::NEGOTIATE, 0]);
    } else {
        const MULTIPORT: u64 = 1 << 1;
        header.extend([rop::NEGOTIATE, 2]);
        header.extend((!MULTIPORT).to_le_bytes());
    }
    header.extend(writable(0));
    header.extend(writable(CONTROL_RX_QUEUE));
    let convert = |_: &mut (), r: &ExitRecord| {
        let Some((q, _, head)) = buffer(r, "virtio-console") else {
            return Vec::new();
        };
        let q = q as usize;
        // One readable buffer of the payload that follows, notified.
        let readable = |payload: &[u8]| [&[rop::CHAIN, q as u8, 0, 0, 1][..], payload].concat();
        match q {
            CONTROL_TX_QUEUE => {
                let Some((id, rest)) = head.split_first_chunk::<4>() else {
                    return Vec::new();
                };
                let event = rest.first().copied().unwrap_or(0);
                let value = rest.get(2).copied().unwrap_or(0);
                let id = u32::from_le_bytes(*id) as u8;
                // Small id and event, the value, no name, the whole 8 bytes.
                vec![readable(&[1, id, 1, event, value % 3, 0, 7])]
            }
            // What the host typed, and a buffer for the port to put it in.
            0 | 4 if !head.is_empty() => {
                let typed = &head[..head.len().min(255)];
                let mut input = vec![cop::INPUT, (q / 4) as u8, typed.len() as u8];
                input.extend_from_slice(typed);
                vec![input, writable(q)]
            }
            1 | 5 => head
                .chunks(64)
                .map(|c| readable(&[&[c.len() as u8 - 1][..], c].concat()))
                .collect(),
            _ => Vec::new(),
        }
    };
    let works = |op: &[u8]| op.first() == Some(&rop::CHAIN) && matches!(op.get(1), Some(1 | 5));
    let records: Vec<_> = records.iter().collect();
    programs_by(&header, &records, MAX_OPS - 9, convert, works)
}

/// The exit floor's BAR accesses (ranges `floor-bar0`, ports, and `floor-bar1`, MMIO) as the
/// target's BAR reads and writes at their offsets, decode on; the doorbells its ioeventfd
/// took as writes at the doorbell's offset.
fn floor_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let mut ops = Vec::new();
    for r in squeezed(records) {
        if r.kind == ExitKind::Doorbell && r.range == "floor-bar0" {
            // Rung through the ioeventfd, the value unseen: 4-byte writes of 0 at its offset.
            let count = r
                .data
                .first_chunk::<8>()
                .map_or(1, |c| u64::from_le_bytes(*c));
            let mut op = vec![2, 1];
            op.extend_from_slice(&(r.addr as u16).to_le_bytes());
            op.extend([2, 0, 0, 0, 0]);
            ops.extend(std::iter::repeat_n(op, count.clamp(1, 4) as usize));
            continue;
        }
        let (write_op, read_op) = match r.range.as_str() {
            "floor-bar0" => (2, 3),
            "floor-bar1" => (4, 5),
            _ => continue,
        };
        let Some(width) = width_selector(r.len) else {
            continue;
        };
        let write = r.kind.is_write();
        // The offset itself (selector 1).
        let mut op = vec![if write { write_op } else { read_op }, 1];
        op.extend_from_slice(&((r.addr - r.base) as u16).to_le_bytes());
        op.push(width);
        if write {
            op.extend(data(r));
        }
        ops.push(op);
    }
    programs(&[1], &ops, MAX_OPS)
}

/// The debug-exit port's accesses as the target's reads and writes at offset 0.
fn debug_exit_seeds(records: &[ExitRecord]) -> Vec<Vec<u8>> {
    let mut ops = Vec::new();
    for r in squeezed(records) {
        let Some(width) = width_selector(r.len) else {
            continue;
        };
        if r.range != "debug-exit" || r.addr != r.base {
            continue;
        }
        ops.push(match r.kind {
            ExitKind::PortOut => [&[0, 0, width][..], &data(r)].concat(),
            _ => vec![1, 0, width],
        });
    }
    programs(&[], &ops, MAX_OPS)
}

type Convert = fn(&[ExitRecord]) -> Vec<Vec<u8>>;

/// The converted targets, by their cargo-fuzz name, and the recordings each is converted
/// from.
const CONVERTED: [(&str, Convert, &[&str]); 14] = [
    ("exit_dispatch", exit_dispatch_seeds, BASE),
    ("serial", serial_seeds, BASE),
    ("pci_config", pci_config_seeds, BASE),
    ("ide", ide_seeds, BASE),
    ("virtio_blk", virtio_blk_seeds, BASE),
    ("msix", msix_seeds, BASE),
    ("virtio_net", virtio_net_seeds, &["virtio-net"]),
    ("e1000", e1000_seeds, &["e1000"]),
    ("rtl8139", rtl8139_seeds, &["rtl8139"]),
    ("balloon", balloon_seeds, &["balloon"]),
    ("console", console_seeds, &["console"]),
    ("floor", floor_seeds, &["floor"]),
    ("debug_exit", debug_exit_seeds, BASE),
    // The same programs as virtio_blk, on a cache=none device.
    ("virtio_blk_async", virtio_blk_seeds, BASE),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// Convert the recordings into the targets' `rec-*` seed files (after
/// `cargo test -p hypervisor-harness --test record_exits -- --ignored`; both in
/// `fuzz/record-corpus.sh`).
#[test]
#[ignore]
fn write_recorded_corpus() {
    for (target, convert, from) in CONVERTED {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with(PREFIX) {
                std::fs::remove_file(e.path()).unwrap();
            }
        }
        // The recordings share their boot: a program is written once.
        let mut written: Vec<Vec<u8>> = Vec::new();
        for &recording in from {
            let path = recordings_dir().join(format!("{recording}.exits"));
            let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let records = exit_recorder::parse(&file).unwrap();
            for (n, seed) in convert(&records).into_iter().enumerate() {
                if !written.contains(&seed) {
                    std::fs::write(dir.join(format!("{PREFIX}{recording}-{n}")), &seed).unwrap();
                    written.push(seed);
                }
            }
        }
    }
}

/// A target's recorded seeds: (file name, bytes).
fn recorded(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir(target))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(PREFIX)
                .then(|| Some((name, std::fs::read(e.path()).ok()?)))?
        })
        .collect();
    files.sort();
    files
}

/// Every recorded seed does real work in its target: the exits reach COM1 and the
/// configuration ports (and the debug-exit port, in each recording's last program), the
/// serial and configuration programs have at least 8 register accesses (the targets check
/// each read against their shadows), the IDE programs raise interrupts.
#[test]
fn the_recorded_seeds_reach_the_devices() {
    for (target, _, _) in CONVERTED {
        let files = recorded(target);
        assert!(!files.is_empty(), "{target}: no recorded seeds");
        let total: usize = files.iter().map(|(_, d)| d.len()).sum();
        assert!(total <= 64 * 1024, "{target}: {total} bytes of seeds");
    }
    let mut exited = 0;
    for (name, seed) in recorded("exit_dispatch") {
        let s = super::run_exit_dispatch(&seed);
        let claimed = |dev: &str| s.claimed.get(dev).copied().unwrap_or(0);
        assert!(
            claimed("com1") + claimed("pci-config") >= 10,
            "{name}: {s:?}"
        );
        exited += claimed("debug-exit").min(1);
    }
    assert!(exited >= BASE.len() as u64, "the tests' debug-exit writes");
    for (name, seed) in recorded("serial") {
        assert!(seed.len() >= 4 * 8, "{name}: {} bytes", seed.len());
        super::serial(&seed);
    }
    for (name, seed) in recorded("pci_config") {
        assert!(seed.len() >= 17 + 3 * 8, "{name}: {} bytes", seed.len());
        super::pci_config(&seed);
    }
    let mut irqs = 0;
    for (name, seed) in recorded("ide") {
        let s = super::run_ide(&seed);
        irqs += s.irqs[0] + s.irqs[1];
        eprintln!("{name}: {s:?}");
    }
    assert!(irqs >= 10, "the IDE seeds raised {irqs} interrupts");
    for (name, seed) in recorded("msix") {
        // The header, then at least 8 vector words (5 bytes and 4 of data each).
        assert!(seed.len() > 8 * 9, "{name}: {} bytes", seed.len());
        super::msix(&seed);
    }
    for (name, seed) in recorded("virtio_blk") {
        let s = super::run_virtio_blk(&seed);
        assert!(s.requests >= 8 && !s.needs_reset, "{name}: {s:?}");
    }
    // The NICs: every seed moves frames, and the seeds together move them both ways.
    let (mut sent, mut completed) = (0, 0);
    for (name, seed) in recorded("virtio_net") {
        let s = super::run_virtio_net(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.sent + s.completed > 0, "{name}: {s:?}");
        assert!(!s.hostile && !s.needs_reset, "{name}: {s:?}");
        (sent, completed) = (sent + s.sent, completed + s.completed);
    }
    assert!(
        sent > 0 && completed > sent,
        "virtio-net: {sent} sent, {completed} completed"
    );
    let (mut sent, mut received) = (0, 0);
    for (name, seed) in recorded("e1000") {
        let s = super::run_e1000(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.sent as u64 + s.received > 0, "{name}: {s:?}");
        (sent, received) = (sent + s.sent, received + s.received);
    }
    assert!(
        sent > 0 && received > 0,
        "e1000: {sent} sent, {received} received"
    );
    let (mut sent, mut received) = (0, 0);
    for (name, seed) in recorded("rtl8139") {
        let s = super::run_rtl8139(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.sent as u64 + s.received > 0, "{name}: {s:?}");
        (sent, received) = (sent + s.sent, received + s.received);
    }
    assert!(
        sent > 0 && received > 0,
        "rtl8139: {sent} sent, {received} received"
    );
    // The balloon: every seed moves pages, and the seeds together both ways.
    let (mut inflated, mut deflated) = (0, 0);
    for (name, seed) in recorded("balloon") {
        let s = super::run_balloon(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.inflated + s.deflated > 0, "{name}: {s:?}");
        (inflated, deflated) = (inflated + s.inflated, deflated + s.deflated);
    }
    assert!(
        inflated > 0 && deflated > 0,
        "balloon: {inflated} in, {deflated} out"
    );
    // The console: every seed carries the guest's output to the host, and the seeds together
    // the host's input to the guest.
    let mut to_guest = 0;
    for (name, seed) in recorded("console") {
        let s = super::run_console(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.from_guest > 0, "{name}: {s:?}");
        to_guest += s.to_guest;
    }
    assert!(to_guest > 0, "console: no input reached the guest");
    // The floor: every seed's writes reach its BARs, and the seeds ring its doorbell.
    let mut doorbells = 0;
    for (name, seed) in recorded("floor") {
        let s = super::run_floor(&seed);
        eprintln!("{name}: {s:?}");
        assert!(s.io_writes + s.mmio_writes >= 8, "{name}: {s:?}");
        doorbells += s.doorbells;
    }
    assert!(doorbells > 0, "floor: no doorbell");
    // debug-exit: the tests' PASS (0x10, one dword at offset 0).
    for (name, seed) in recorded("debug_exit") {
        assert_eq!(super::run_debug_exit(&seed), Some(0x10), "{name}");
    }
    for (name, seed) in recorded("virtio_blk_async") {
        let s = super::virtio_blk::run_virtio_blk_async(&seed);
        assert!(s.requests >= 8 && !s.needs_reset, "{name}: {s:?}");
    }
}
