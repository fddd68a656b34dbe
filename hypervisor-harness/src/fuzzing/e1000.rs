//! The e1000 (82540EM): registers through BAR0 and the I/O window, TX descriptors of every
//! kind (legacy, context with any checksum offsets, data, unknown types) in rings anywhere,
//! RX frames of any length from the backend into rings anywhere, resets.
//!
//! Checked after every operation: the interrupt line the model drove is the level it reports;
//! heads and tails stay inside their rings; nothing longer than a frame reaches the backend.
//! At the end: after a reset a canonical ring still sends a frame and receives one.

use super::nic_backend::RecordingBackend;
use super::*;
use crate::devices::net::e1000::regs::*;
use crate::devices::net::e1000::E1000;
use crate::devices::net::IrqLevel;
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, CMD_MEM, REG_COMMAND};
use std::sync::Arc;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// The canonical layout: TX ring, RX ring (8 descriptors each), then buffers.
const TX_RING: u64 = 0x1000;
const RX_RING: u64 = 0x1100;
const BUFS: u64 = 0x2000;

const REGS: [u64; 24] = [
    CTRL, STATUS, EECD, EERD, MDIC, ICR, ICS, IMS, IMC, RCTL, TCTL, RDBAL, RDBAH, RDLEN, RDH, RDT,
    TDBAL, TDBAH, TDLEN, TDH, TDT, ITR, MTA_BASE, RA_BASE,
];

#[derive(Default)]
struct Line(AtomicBool);

impl IrqLevel for Line {
    fn set_level(&self, high: bool) {
        self.0.store(high, Ordering::SeqCst);
    }
}

/// What an [`e1000()`] run did (for the smoke tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct E1000Summary {
    pub sent: usize,
    pub received: u64,
}

fn w32(dev: &mut E1000<Memory>, reg: u64, v: u32) {
    dev.mmio_write(reg, &v.to_le_bytes());
}

fn r32(dev: &mut E1000<Memory>, reg: u64) -> u32 {
    let mut b = [0u8; 4];
    dev.mmio_read(reg, &mut b);
    u32::from_le_bytes(b)
}

/// After an operation. `frames_checked`: how many of the frames sent an earlier check has
/// measured (cloning every frame sent so far, twice at every check, grew with the program).
fn check(
    dev: &mut E1000<Memory>,
    line: &Line,
    backend: &RecordingBackend,
    frames_checked: &mut usize,
) {
    assert_eq!(line.0.load(Ordering::SeqCst), dev.irq_level(), "line level");
    check_new_frames(backend, frames_checked);
    if dev.config().command() & CMD_MEM == 0 {
        // BAR0 floats; the rings are checked when it decodes again.
        return;
    }
    let (rdlen, rdh, rdt) = (r32(dev, RDLEN), r32(dev, RDH), r32(dev, RDT));
    let (tdlen, tdh, tdt) = (r32(dev, TDLEN), r32(dev, TDH), r32(dev, TDT));
    for (len, h, t) in [(rdlen, rdh, rdt), (tdlen, tdh, tdt)] {
        let n = len / 16;
        if n > 0 {
            assert!(h < n && t < n, "index beyond ring: {h} {t} of {n}");
        }
    }
    // The register reads above move no frames, but the check after them stays.
    check_new_frames(backend, frames_checked);
}

/// Nothing longer than a frame among those sent since `frames_checked`.
fn check_new_frames(backend: &RecordingBackend, frames_checked: &mut usize) {
    let wire = crate::devices::lock(&backend.wire);
    for &(_, len) in wire.sent.iter().skip(*frames_checked) {
        assert!(
            len <= crate::backends::net::MAX_FRAME,
            "oversize frame sent"
        );
    }
    *frames_checked = wire.sent.len();
}

fn canonical_rings(dev: &mut E1000<Memory>, mem: &Memory) {
    // The 8 RX descriptors (buffer address, then zeros) in one guest write, not 16.
    let mut ring = [0u8; 128];
    for i in 0..8 {
        ring[16 * i..16 * i + 8].copy_from_slice(&(BUFS + 0x800 * i as u64).to_le_bytes());
    }
    poke(mem, RX_RING, &ring);
    w32(dev, TDBAL, TX_RING as u32);
    w32(dev, TDBAH, 0);
    w32(dev, TDLEN, 128);
    w32(dev, TCTL, 2);
    w32(dev, RDBAL, RX_RING as u32);
    w32(dev, RDBAH, 0);
    w32(dev, RDLEN, 128);
    w32(dev, RDT, 7);
    w32(dev, RCTL, 2 | 1 << 15);
}

/// Run one input (see the module comment).
pub fn e1000(data: &[u8]) {
    run_e1000(data);
}

pub fn run_e1000(data: &[u8]) -> E1000Summary {
    let mut r = Reader(data);
    let seed_len = r.u8() as usize;
    let mem = new_memory(Some(r.bytes(seed_len)));
    let backend = RecordingBackend::new();
    let line = Arc::new(Line::default());
    let mut dev = E1000::new(
        mem.clone(),
        Box::new(backend.clone()),
        MAC,
        line.clone(),
        11,
    );
    let mut frames_checked = 0;
    dev.config_mut().enable(CMD_MEM | CMD_IO | CMD_BUS_MASTER);
    let reg = |r: &mut Reader| match r.u8() % 4 {
        0 | 1 => REGS[(r.u8() as usize) % REGS.len()],
        2 => r.u16() as u64 * 4 % (MMIO_SIZE + 64),
        _ => r.u32() as u64,
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 11 {
            0 => {
                let off = reg(&mut r);
                let mut b = [0u8; 16];
                dev.mmio_read(off, &mut b[..r.width()]);
            }
            1 => {
                let off = reg(&mut r);
                let w = r.width();
                let v = r.value(w);
                dev.mmio_write(off, &v);
            }
            2 => canonical_rings(&mut dev, &mem),
            3 => {
                // A ring anywhere: base, length, head, tail.
                let rx = r.u8() & 1 == 0;
                let (bal, len) = (r.gpa(), r.len32());
                let base = if rx { RDBAL } else { TDBAL };
                w32(&mut dev, base, bal as u32);
                w32(&mut dev, base + 4, (bal >> 32) as u32);
                w32(&mut dev, base + 8, len);
                w32(&mut dev, base + 0x10, r.u16() as u32);
                w32(&mut dev, base + 0x18, r.u16() as u32);
            }
            4 => {
                // A TX descriptor at index i of the canonical ring: buffer, length, type, cmd.
                let i = u64::from(r.u8() % 8);
                let mut d = [0u8; 16];
                d[0..8].copy_from_slice(&r.gpa().to_le_bytes());
                let len = match r.u8() % 3 {
                    0 => u32::from(r.u8()),
                    1 => u32::from(r.u16()),
                    _ => r.u32(),
                };
                d[8..12].copy_from_slice(&len.to_le_bytes());
                d[11] = r.u8();
                d[12] = 0;
                d[13] = r.u8();
                poke(&mem, TX_RING + 16 * i, &d);
            }
            5 => {
                // A context descriptor with any offsets.
                let i = u64::from(r.u8() % 8);
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&r.u64().to_le_bytes());
                d[8..12].copy_from_slice(&(1u32 << 29).to_le_bytes());
                poke(&mem, TX_RING + 16 * i, &d);
            }
            6 => {
                let len = r.u16() as usize % 1600;
                let mut f = vec![r.u8(); len];
                if len >= 6 && r.u8() & 1 == 0 {
                    f[..6].copy_from_slice(&MAC);
                }
                backend.push(&f);
            }
            7 => dev.rx_pass(),
            8 => {
                let at = r.gpa();
                let n = r.u8() as usize;
                let b = r.bytes(n).to_vec();
                poke(&mem, at, &b);
            }
            9 => {
                let off = u64::from(r.u8() % 0x44);
                let w = r.width();
                if r.u8() & 1 == 0 {
                    let v = r.value(w);
                    dev.io_write(off, &v);
                } else {
                    let mut b = [0u8; 16];
                    dev.io_read(off, &mut b[..w]);
                }
            }
            _ => {
                let cmd = r.u16() & (CMD_MEM | CMD_IO | CMD_BUS_MASTER);
                dev.config_write(REG_COMMAND as u64, &cmd.to_le_bytes());
            }
        }
        check(&mut dev, &line, &backend, &mut frames_checked);
    }
    let summary = E1000Summary {
        sent: backend.sent_count(),
        received: dev.counters().rx_frames,
    };
    // Still a working NIC after a reset.
    dev.config_write(
        REG_COMMAND as u64,
        &(CMD_MEM | CMD_IO | CMD_BUS_MASTER).to_le_bytes(),
    );
    let ctrl = r32(&mut dev, CTRL);
    w32(&mut dev, CTRL, ctrl | 1 << 26);
    while backend.waiting() > 0 {
        dev.rx_pass();
        if backend.waiting() > 0 && dev.rx_blocked() {
            // Reset: RX is off; drain what the program left.
            let mut buf = vec![0u8; 2048];
            let mut b = backend.clone();
            let _ = crate::backends::net::NetBackend::receive(&mut b, &mut buf);
        }
    }
    canonical_rings(&mut dev, &mem);
    let frame = [0xffu8; 60];
    poke(&mem, BUFS + 0x7000, &frame);
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&(BUFS + 0x7000).to_le_bytes());
    d[8..10].copy_from_slice(&60u16.to_le_bytes());
    d[11] = 0x0b; // EOP | IFCS | RS
    poke(&mem, TX_RING, &d);
    let before = backend.sent_count();
    w32(&mut dev, TDT, 1);
    assert_eq!(backend.sent_count(), before + 1, "TX works after reset");
    let received = dev.counters().rx_frames;
    backend.push(&frame);
    dev.rx_pass();
    assert_eq!(
        dev.counters().rx_frames,
        received + 1,
        "RX works after reset"
    );
    check(&mut dev, &line, &backend, &mut frames_checked);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::net::FrameMeta;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn e1000_random_programs() {
        // Half the inputs start from the canonical rings.
        random(0x5eed_0e10, 3000, 400, &[2], e1000);
    }

    #[test]
    fn canonical_rings_lays_out_every_rx_descriptor() {
        let mem = new_memory(Some(&[0xa5]));
        let backend = RecordingBackend::new();
        let line = Arc::new(Line::default());
        let mut dev = E1000::new(mem.clone(), Box::new(backend), MAC, line, 11);
        dev.config_mut().enable(CMD_MEM | CMD_IO | CMD_BUS_MASTER);
        canonical_rings(&mut dev, &mem);
        for i in 0..8u64 {
            let at = GuestAddress(RX_RING + 16 * i);
            assert_eq!(mem.read_obj::<u64>(at).unwrap(), BUFS + 0x800 * i);
            let rest = GuestAddress(RX_RING + 16 * i + 8);
            assert_eq!(mem.read_obj::<u64>(rest).unwrap(), 0, "descriptor {i}");
        }
        // Seeded memory around the ring is left alone.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(RX_RING - 1)).unwrap(), 0xa5);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(RX_RING + 128)).unwrap(),
            0xa5
        );
    }

    /// Each frame is measured once, and one sent after earlier checks still is.
    #[test]
    #[should_panic(expected = "oversize frame sent")]
    fn an_oversize_frame_after_earlier_frames_is_caught() {
        use crate::backends::net::{NetBackend, MAX_FRAME};
        let mem = new_memory(None);
        let mut backend = RecordingBackend::new();
        let line = Arc::new(Line::default());
        let mut dev = E1000::new(mem, Box::new(backend.clone()), MAC, line.clone(), 11);
        dev.config_mut().enable(CMD_MEM | CMD_IO | CMD_BUS_MASTER);
        let mut frames_checked = 0;
        backend.transmit(&FrameMeta::default(), &[0; 60]).unwrap();
        check(&mut dev, &line, &backend, &mut frames_checked);
        assert_eq!(frames_checked, 1);
        let oversize = vec![0; MAX_FRAME + 1];
        backend.transmit(&FrameMeta::default(), &oversize).unwrap();
        check(&mut dev, &line, &backend, &mut frames_checked);
    }

    #[test]
    fn e1000_canonical_program_sends_and_receives() {
        let mut p = P::default().op(&[0]).op(&[2]);
        // A legacy descriptor 0: buffer in RAM, 60 bytes, EOP|IFCS|RS.
        p = p.op(&[4, 0, 0]).op(&0x3000u16.to_le_bytes());
        p = p.op(&[0, 60, 0x0b, 0]);
        // TDT = 1.
        p = p.op(&[1, 0, 20, 2]).op(&1u32.to_le_bytes());
        // A 100-byte frame for us, then an RX pass.
        p = p.op(&[6]).op(&100u16.to_le_bytes()).op(&[0xaa, 0, 7]);
        let s = run_e1000(&p.0);
        assert_eq!(s.sent, 1);
        assert_eq!(s.received, 1);
    }
}
