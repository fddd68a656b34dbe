//! The RTL8139: register accesses of any width through both BARs (and across registers), RX
//! rings anywhere (RBSTART in RAM, straddling its end, outside it) with any RCR, CAPR garbage,
//! TX slots with any buffer address and size, frames of any length from the backend, a
//! backend that runs out of TX room, the EEPROM's pins, link changes, memory pokes into the
//! ring, the command register.
//!
//! Checked after every operation: the interrupt line the model drove is the level it reports;
//! CBR is dword-aligned and inside the ring, CAPR + 16 inside it; nothing longer than a frame
//! reaches the backend; and every byte of guest memory the device changed lies in an RX
//! ring's window (the ring plus, with WRAP, the slack a frame may run into) as it was when the
//! frame went in. At the end: after a reset a canonical setup still sends a frame and receives
//! one.

use super::nic_backend::RecordingBackend;
use super::*;
use crate::backends::net::{NetBackend, MAX_FRAME};
use crate::devices::lock;
use crate::devices::net::rtl8139::regs::*;
use crate::devices::net::rtl8139::Rtl8139;
use crate::devices::net::IrqLevel;
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, CMD_MEM, REG_COMMAND};
use std::sync::Arc;

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
/// The canonical layout: an 8 KiB ring (and its slack), then TX buffers.
const RX_RING: u64 = 0x1000;
const TX_BUFS: u64 = 0x6000;

const REGS: [u8; 30] = [
    IDR0,
    MAR0,
    TSD0,
    TSAD0,
    RBSTART,
    ERBCR,
    ERSR,
    CR,
    CAPR,
    CBR,
    IMR,
    ISR,
    TCR,
    RCR,
    TCTR,
    MPC,
    CR9346,
    CONFIG1,
    TIMER_INT,
    MSR,
    CONFIG3,
    MULINT,
    TSAD_SUMMARY,
    BMCR,
    BMSR,
    ANAR,
    CSCR,
    PARA78,
    CONFIG5,
    CPCR,
];

#[derive(Default)]
struct Line(AtomicBool);

impl IrqLevel for Line {
    fn set_level(&self, high: bool) {
        self.0.store(high, Ordering::SeqCst);
    }
}

/// What an [`rtl8139()`] run did (for the smoke tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rtl8139Summary {
    pub sent: usize,
    pub received: u64,
}

struct Rig {
    dev: Rtl8139<Memory>,
    mem: Memory,
    line: Arc<Line>,
    backend: RecordingBackend,
    /// Guest memory, region by region ([`MEM_REGIONS`]), as the program and the device's
    /// ring windows explain it.
    shadow: Vec<Vec<u8>>,
    /// Frames the backend took that a check has already measured.
    frames_checked: usize,
}

impl Rig {
    fn new(mem: Memory) -> Self {
        let backend = RecordingBackend::new();
        let line = Arc::new(Line::default());
        let mut dev = Rtl8139::new(
            mem.clone(),
            Box::new(backend.clone()),
            MAC,
            line.clone(),
            11,
        );
        dev.config_mut().enable(CMD_MEM | CMD_IO | CMD_BUS_MASTER);
        let shadow = (0..MEM_REGIONS.len())
            .map(|i| region_bytes(&mem, i).to_vec())
            .collect();
        Rig {
            dev,
            mem,
            line,
            backend,
            shadow,
            frames_checked: 0,
        }
    }

    fn w(&mut self, reg: u8, v: &[u8]) {
        self.dev.io_write(u64::from(reg), v);
    }

    /// A register of up to 4 bytes.
    fn r(&mut self, reg: u8, width: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.io_read(u64::from(reg), &mut b[..width]);
        le_u32(&b[..width])
    }

    /// A guest write by the program. The shadow takes the bytes of RAM it covers, and only
    /// those (taking all of RAM again, at every poke, was a copy as big as the check's).
    fn poke(&mut self, at: u64, bytes: &[u8]) {
        poke(&self.mem, at, bytes);
        let end = at.saturating_add(bytes.len() as u64);
        for (i, &(gpa, len)) in MEM_REGIONS.iter().enumerate() {
            let in_region = |a: u64| (a.clamp(gpa, gpa + len) - gpa) as usize;
            let (lo, hi) = (in_region(at), in_region(end));
            if lo < hi {
                self.shadow[i][lo..hi].copy_from_slice(&region_bytes(&self.mem, i)[lo..hi]);
            }
        }
    }

    fn canonical(&mut self, rcr: u32) {
        self.w(RBSTART, &(RX_RING as u32).to_le_bytes());
        self.w(CR, &[(Cmd::RE | Cmd::TE).bits()]);
        self.w(RCR, &rcr.to_le_bytes());
        self.w(IMR, &0xffffu16.to_le_bytes());
    }

    fn check(&mut self) {
        assert_eq!(
            self.line.0.load(Ordering::SeqCst),
            self.dev.irq_level(),
            "line level"
        );
        // Only the frames sent since the last check: cloning every frame sent so far at
        // every check grew with the program.
        let wire = lock(&self.backend.wire);
        for &(_, len) in wire.sent.iter().skip(self.frames_checked) {
            assert!(len <= MAX_FRAME, "oversize frame sent");
        }
        self.frames_checked = wire.sent.len();
        drop(wire);
        let size = self.dev.rx_ring_size();
        let (cbr, read) = self.dev.rx_offsets();
        assert!(cbr < size && cbr % 4 == 0, "CBR {cbr:#x} of {size:#x}");
        assert!(read < size, "CAPR + 16 = {read:#x} of {size:#x}");
        if self.dev.config().command() & CMD_IO != 0 {
            // What the driver reads says the same.
            assert_eq!(self.r(CBR, 2), cbr);
            assert_eq!(self.r(CAPR, 2), read.wrapping_sub(16) & 0xffff);
        }
        // Memory last, after the check's own register reads: from here to the next device
        // call, guest memory is the shadow but for the rig's own pokes.
        // Memory the device changed: only inside the ring's window as it was when a frame
        // went in. One operation can deliver and then move or resize the ring (canonical's CR
        // write before its RCR write; one wide access over CAPR and RCR), so every window
        // frames were written under counts, and the current one.
        let mut windows = self.dev.take_rx_windows_written();
        windows.push(self.dev.rx_window());
        windows.sort_by_key(|w| w.start);
        // In every region, compared as slices (memcmp) in place: a region as it was is done
        // at once; else each gap between the windows, and the part above them (offsets in
        // the region), and then the shadow takes the region as it is.
        for (i, (gpa, len)) in MEM_REGIONS.iter().enumerate() {
            let now = region_bytes(&self.mem, i);
            let before = &mut self.shadow[i];
            if now == &before[..] {
                continue;
            }
            let in_region = |at: u64| (at.clamp(*gpa, gpa + len) - gpa) as usize;
            let mut gap_start = 0;
            for window in &windows {
                let lo = in_region(window.start);
                assert!(
                    lo <= gap_start || now[gap_start..lo] == before[gap_start..lo],
                    "device wrote outside the ring, in {:#x}..{:#x}",
                    gpa + gap_start as u64,
                    gpa + lo as u64
                );
                gap_start = gap_start.max(in_region(window.end));
            }
            assert!(
                now[gap_start..] == before[gap_start..],
                "device wrote above the ring, at or above {:#x}",
                gpa + gap_start as u64
            );
            before.copy_from_slice(now);
        }
    }
}

fn le_u32(b: &[u8]) -> u32 {
    crate::devices::le_value(b) as u32
}

/// Run one input (see the module comment).
pub fn rtl8139(data: &[u8]) {
    run_rtl8139(data);
}

pub fn run_rtl8139(data: &[u8]) -> Rtl8139Summary {
    run(data, false)
}

/// Operations that call no method of the device: a frame queued in the backend, a poke (the
/// shadow takes it). After them the device, its registers, the frames sent and the rest of
/// guest memory are as the last check left them, so the check would find what it found;
/// `check_idle_ops` runs it anyway (the tests). Its memory compare is most of a check.
const IDLE_OPS: [u8; 2] = [5, 7];

fn run(data: &[u8], check_idle_ops: bool) -> Rtl8139Summary {
    let mut r = Reader(data);
    let seed_len = r.u8() as usize;
    let mut rig = Rig::new(new_memory(Some(r.bytes(seed_len))));
    let reg = |r: &mut Reader| match r.u8() % 4 {
        0 | 1 => u64::from(REGS[(r.u8() as usize) % REGS.len()]),
        2 => u64::from(r.u8()),
        _ => u64::from(r.u16()),
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8() % 14;
        match op {
            0 => {
                let off = reg(&mut r);
                let mut b = vec![0u8; r.width()];
                if r.u8() & 1 == 0 {
                    rig.dev.io_read(off, &mut b);
                } else {
                    rig.dev.mmio_read(off, &mut b);
                }
            }
            1 => {
                let off = reg(&mut r);
                let w = r.width();
                let v = r.value(w);
                if r.u8() & 1 == 0 {
                    rig.dev.io_write(off, &v);
                } else {
                    rig.dev.mmio_write(off, &v);
                }
            }
            2 => {
                let rcr = r.u32() & 0x0000_1f8f;
                rig.canonical(rcr);
            }
            3 => {
                // A ring anywhere, any RCR.
                let base = r.gpa() as u32;
                let rcr = r.u32();
                rig.w(RBSTART, &base.to_le_bytes());
                rig.w(RCR, &rcr.to_le_bytes());
            }
            4 => {
                // A TX slot: buffer anywhere, any size (mostly plausible).
                let slot = r.u8() % 4;
                let at = r.gpa() as u32;
                let size = match r.u8() % 4 {
                    0 => u32::from(r.u16()) % 1600,
                    1 => u32::from(r.u8()),
                    2 => TX_MAX_SIZE + u32::from(r.u8() % 4) - 1,
                    _ => r.u32(),
                };
                rig.w(TSAD0 + 4 * slot, &at.to_le_bytes());
                rig.w(TSD0 + 4 * slot, &size.to_le_bytes());
            }
            5 => {
                let len = r.u16() as usize % 1600;
                let mut f = vec![r.u8(); len];
                match r.u8() % 3 {
                    0 if len >= 6 => f[..6].copy_from_slice(&MAC),
                    1 if len >= 6 => f[..6].fill(0xff),
                    _ => {}
                }
                rig.backend.push(&f);
            }
            6 => rig.dev.rx_pass(),
            7 => {
                let at = r.gpa();
                let n = r.u8() as usize;
                let b = r.bytes(n).to_vec();
                rig.poke(at, &b);
            }
            8 => {
                // CAPR garbage, or where the driver would have read to.
                let v = if r.u8() & 1 == 0 {
                    r.u16()
                } else {
                    (rig.r(CBR, 2) as u16).wrapping_sub(16)
                };
                rig.w(CAPR, &v.to_le_bytes());
            }
            9 => {
                let cmd = r.u16() & (CMD_MEM | CMD_IO | CMD_BUS_MASTER);
                rig.dev.config_write(REG_COMMAND as u64, &cmd.to_le_bytes());
            }
            10 => {
                // EEPROM pins (and modes) in a burst.
                let n = r.u8() % 32;
                for _ in 0..n {
                    let v = r.u8();
                    rig.w(CR9346, &[v]);
                }
            }
            11 => {
                let room = match r.u8() % 3 {
                    0 => Some(0),
                    1 => Some(usize::from(r.u8() % 4)),
                    _ => None,
                };
                rig.backend.set_tx_room(room);
                rig.dev.tx_resume();
            }
            12 => {
                let up = r.u8() & 1 == 0;
                rig.dev.set_link(up);
            }
            _ => {
                let v = r.u8();
                rig.w(CR, &[v]);
            }
        }
        if check_idle_ops || !IDLE_OPS.contains(&op) {
            rig.check();
        }
    }
    let summary = Rtl8139Summary {
        sent: rig.backend.sent_count(),
        received: rig.dev.counters().rx_frames,
    };
    // Still a working NIC after a reset.
    rig.dev.config_write(
        REG_COMMAND as u64,
        &(CMD_MEM | CMD_IO | CMD_BUS_MASTER).to_le_bytes(),
    );
    rig.backend.set_tx_room(None);
    rig.dev.set_link(true);
    rig.w(CR, &[Cmd::RST.bits()]);
    // Drain what the program left in the backend (RX is off after the reset).
    let mut buf = vec![0u8; 2048];
    let mut b = rig.backend.clone();
    while rig.backend.waiting() > 0 {
        let _ = b.receive(&mut buf);
    }
    rig.canonical((Rcr::APM | Rcr::AB).bits());
    rig.w(CAPR, &0xfff0u16.to_le_bytes());
    let frame = [0xffu8; 60];
    rig.poke(TX_BUFS, &frame);
    let before = rig.backend.sent_count();
    rig.w(TSAD0, &(TX_BUFS as u32).to_le_bytes());
    rig.w(TSD0, &60u32.to_le_bytes());
    assert_eq!(rig.backend.sent_count(), before + 1, "TX works after reset");
    assert_ne!(rig.r(TSD0, 4) & Tsd::TOK.bits(), 0, "TOK after reset");
    let received = rig.dev.counters().rx_frames;
    rig.backend.push(&frame);
    rig.dev.rx_pass();
    assert_eq!(
        rig.dev.counters().rx_frames,
        received + 1,
        "RX works after reset"
    );
    rig.check();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::net::FrameMeta;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn rtl8139_random_programs() {
        // Half the inputs start from the canonical setup (RCR: APM | AB | WRAP).
        random(0x5eed_8139, 3000, 400, &[2, 0x8a, 0, 0, 0], rtl8139);
    }

    /// The checks the target leaves out after an idle op (a queued frame, a poke) find
    /// nothing, in programs that mix them with everything else.
    #[test]
    fn a_check_after_an_idle_op_finds_nothing() {
        fn checked_after_every_op(data: &[u8]) {
            run(data, true);
        }
        random(
            0x1d1e_8139,
            1500,
            400,
            &[2, 0x8a, 0, 0, 0],
            checked_after_every_op,
        );
        // The recorded seeds: frames queued between RX passes.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/rtl8139");
        for seed in std::fs::read_dir(dir).unwrap() {
            run(&std::fs::read(seed.unwrap().path()).unwrap(), true);
        }
    }

    #[test]
    fn rtl8139_canonical_program_sends_and_receives() {
        // Header byte 0 (no memory seed), then canonical with RCR APM | AB.
        let mut p = P::default().op(&[0]).op(&[2, 0x0a, 0, 0, 0]);
        // TX slot 0: buffer at 0x6000 (gpa kind 0), size 100 (size kind 0).
        p = p.op(&[4, 0, 0]).op(&0x6000u16.to_le_bytes()).op(&[0]);
        p = p.op(&100u16.to_le_bytes());
        // A 100-byte frame for us, then an RX pass.
        p = p.op(&[5]).op(&100u16.to_le_bytes()).op(&[0xaa, 0, 6]);
        let s = run_rtl8139(&p.0);
        assert_eq!(s.sent, 1);
        assert_eq!(s.received, 1);
    }

    /// /work/notes/crashes/rtl8139-1 (the lead's campaign): a frame written under a 64 KiB
    /// ring that one operation then shrinks to 8 KiB. canonical() writes CR (RE, which
    /// delivers what the backend holds) before RCR, so the frame lands at CBR in the big
    /// ring, past the small ring's end; the check took only the window after the operation.
    #[test]
    fn a_frame_written_before_the_ring_shrinks_in_the_same_op_is_in_its_window() {
        // 1500 bytes of 0xff.
        let push_broadcast = [5, 0xdc, 0x05, 0xff, 1];
        // No memory seed; ring at 0x1000 (gpa kind 0), RCR AB with RBLEN 64 KiB; CR RE | TE.
        let mut p = P::default().op(&[0]).op(&[3, 0, 0, 0x10, 0x08, 0x18, 0, 0]);
        p = p.op(&[13, 0x0c]);
        // Seven frames fill the ring to CBR 7 * 1508 = 0x293c, past an 8 KiB ring's end and
        // its slack.
        for _ in 0..7 {
            p = p.op(&push_broadcast);
        }
        p = p.op(&[6]);
        // One more waits in the backend; canonical(AB): its CR write delivers it at 0x293c of
        // the 64 KiB ring, then its RCR write makes the ring 8 KiB.
        p = p.op(&push_broadcast).op(&[2, 0x08, 0, 0, 0]);
        let s = run_rtl8139(&p.0);
        assert_eq!(s.received, 8);
    }

    /// The check covers every RAM region, not only the first: a change the device did not
    /// explain, in the region past the first hole, is found.
    #[test]
    #[should_panic(expected = "device wrote above the ring, at or above 0x11000")]
    fn a_stray_write_in_another_region_is_caught() {
        let mut rig = Rig::new(new_memory(None));
        rig.canonical((Rcr::APM | Rcr::AB).bits());
        rig.check();
        poke(&rig.mem, MEM_REGIONS[1].0 + 0x10, &[1]);
        rig.check();
    }

    /// The in-place compare still finds a stray write in the first region, in the gap below
    /// the ring, after frames went in and the shadow took them.
    #[test]
    #[should_panic(expected = "device wrote outside the ring, in 0x0..0x1000")]
    fn a_stray_write_below_the_ring_after_frames_is_caught() {
        let mut rig = Rig::new(new_memory(Some(&[0x5a])));
        rig.canonical((Rcr::APM | Rcr::AB).bits());
        rig.w(CAPR, &0xfff0u16.to_le_bytes());
        for _ in 0..3 {
            rig.backend.push(&[0xff; 100]);
            rig.dev.rx_pass();
            rig.check();
        }
        assert_eq!(rig.dev.counters().rx_frames, 3);
        poke(&rig.mem, 0x800, &[0]);
        rig.check();
    }

    /// A poke moves the shadow with it (a poke it missed would be "above the ring"), and a
    /// write after it is still caught.
    #[test]
    #[should_panic(expected = "device wrote outside the ring, in 0x0..0x1000")]
    fn a_stray_write_after_a_poke_is_caught() {
        let mut rig = Rig::new(new_memory(None));
        rig.canonical((Rcr::APM | Rcr::AB).bits());
        rig.poke(TX_BUFS, &[0xee; 64]);
        rig.check();
        // Pokes into a hole, across two back-to-back regions, at the top of the address
        // space: the shadow takes what landed in RAM.
        rig.poke(MEM_SIZE - 8, &[0xdd; 16]);
        rig.poke(MEM_REGIONS[2].0 - 4, &[0xcc; 8]);
        rig.poke(u64::MAX - 2, &[0xbb; 8]);
        rig.check();
        poke(&rig.mem, 0x20, &[1]);
        rig.check();
    }

    /// The check measures each frame once, and a frame sent after earlier checks is still
    /// measured.
    #[test]
    #[should_panic(expected = "oversize frame sent")]
    fn an_oversize_frame_after_earlier_frames_is_caught() {
        let mut rig = Rig::new(new_memory(None));
        let mut backend = rig.backend.clone();
        backend.transmit(&FrameMeta::default(), &[0; 60]).unwrap();
        rig.check();
        backend
            .transmit(&FrameMeta::default(), &vec![0; MAX_FRAME + 1])
            .unwrap();
        rig.check();
    }
}
