//! The model driven as `8139too` would: registers through the I/O BAR (and MMIO), the RX ring
//! and TX buffers in a `GuestMemoryMmap`, frames through the recording backend of the
//! virtio-net tests.

use super::eeprom::{EEPROM_ID, WORDS};
use super::rx::mar_index;
use super::*;
use crate::backends::net::{FrameMeta, MAX_FRAME};
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, CMD_MEM};
use crate::devices::virtio::net::test_util::TestBackend;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;
const RAM: u64 = 2 << 20;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const RX_RING: u64 = 0x1_0000;
const TX_BUFS: u64 = 0x8_0000;
/// Well outside the 2 MiB of RAM.
const OUTSIDE: u32 = 0x4000_0000;

#[derive(Default)]
struct Line {
    level: AtomicBool,
    raises: AtomicU64,
}

impl IrqLevel for Line {
    fn set_level(&self, high: bool) {
        self.level.store(high, Ordering::SeqCst);
        if high {
            self.raises.fetch_add(1, Ordering::SeqCst);
        }
    }
}

struct Rig {
    dev: Rtl8139<Mem>,
    mem: Mem,
    line: Arc<Line>,
    backend: TestBackend,
}

impl Rig {
    fn new() -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let line = Arc::new(Line::default());
        let backend = TestBackend::new();
        let mut dev = Rtl8139::new(
            mem.clone(),
            Box::new(backend.clone()),
            MAC,
            line.clone(),
            11,
        );
        dev.config_mut().enable(CMD_IO | CMD_MEM | CMD_BUS_MASTER);
        Self {
            dev,
            mem,
            line,
            backend,
        }
    }

    fn w8(&mut self, off: u8, v: u8) {
        self.dev.io_write(off.into(), &[v]);
    }
    fn w16(&mut self, off: u8, v: u16) {
        self.dev.io_write(off.into(), &v.to_le_bytes());
    }
    fn w32(&mut self, off: u8, v: u32) {
        self.dev.io_write(off.into(), &v.to_le_bytes());
    }
    fn r8(&mut self, off: u8) -> u8 {
        let mut b = [0u8; 1];
        self.dev.io_read(off.into(), &mut b);
        b[0]
    }
    fn r16(&mut self, off: u8) -> u16 {
        let mut b = [0u8; 2];
        self.dev.io_read(off.into(), &mut b);
        u16::from_le_bytes(b)
    }
    fn r32(&mut self, off: u8) -> u32 {
        let mut b = [0u8; 4];
        self.dev.io_read(off.into(), &mut b);
        u32::from_le_bytes(b)
    }

    /// RX as 8139too sets it up: the ring at RX_RING, RE|TE, APM|AB, `rcr_extra` (WRAP,
    /// RBLEN), all interrupts unmasked.
    fn rx_setup(&mut self, rcr_extra: u32) {
        self.w32(RBSTART, RX_RING as u32);
        self.w8(CR, (Cmd::RE | Cmd::TE).bits());
        self.w32(RCR, (Rcr::APM | Rcr::AB).bits() | rcr_extra);
        self.w16(IMR, 0xffff);
    }

    fn frame(&self, len: usize, seed: u8) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
        f[..6].copy_from_slice(&MAC);
        f
    }

    /// The header and bytes of the frame at ring offset `at` (no wrap).
    fn ring_frame(&self, at: u64) -> (u16, Vec<u8>) {
        let hdr: [u8; 4] = self.mem.read_obj(GuestAddress(RX_RING + at)).unwrap();
        let len = u16::from_le_bytes([hdr[2], hdr[3]]) as usize;
        let mut f = vec![0u8; len];
        self.mem
            .read_slice(&mut f, GuestAddress(RX_RING + at + 4))
            .unwrap();
        (u16::from_le_bytes([hdr[0], hdr[1]]), f)
    }

    /// Start TX slot `slot` with `data` at TX_BUFS + slot * 2 KiB.
    fn tx(&mut self, slot: u8, data: &[u8]) {
        let at = TX_BUFS + u64::from(slot) * 2048;
        self.mem.write_slice(data, GuestAddress(at)).unwrap();
        self.w32(TSAD0 + 4 * slot, at as u32);
        self.w32(TSD0 + 4 * slot, data.len() as u32);
    }

    /// 9346CR in programming mode with these pins.
    fn ee(&mut self, cs: bool, sk: bool, di: bool) {
        let mut v = EEM_PROGRAM << EEM_SHIFT;
        if cs {
            v |= EE_CS;
        }
        if sk {
            v |= EE_SK;
        }
        if di {
            v |= EE_DI;
        }
        self.w8(CR9346, v);
    }

    /// Clock `bits` (MSB first, `n` of them) into the EEPROM.
    fn ee_bits(&mut self, bits: u32, n: u32) {
        for i in (0..n).rev() {
            let di = bits >> i & 1 != 0;
            self.ee(true, false, di);
            self.ee(true, true, di);
        }
    }

    /// 8139too's read_eeprom: 3 command bits plus 6 address bits, then 16 clocks reading DO.
    fn ee_read(&mut self, addr: u32) -> u16 {
        self.ee(false, false, false);
        self.ee(true, false, false);
        self.ee_bits(0b110 << 6 | addr, 11);
        self.ee(true, false, false);
        let mut v = 0u16;
        for _ in 0..16 {
            self.ee(true, true, false);
            v = v << 1 | u16::from(self.r8(CR9346) & EE_DO);
            self.ee(true, false, false);
        }
        self.w8(CR9346, 0);
        v
    }

    fn ee_command(&mut self, bits: u32, n: u32) {
        self.ee(true, false, false);
        self.ee_bits(bits, n);
        self.ee(false, false, false);
    }
}

#[test]
fn pci_identity_and_bars() {
    let rig = Rig::new();
    let c = rig.dev.config();
    assert_eq!(c.read_u32(0) & 0xffff, u32::from(VENDOR));
    assert_eq!(c.read_u32(0) >> 16, u32::from(DEVICE));
    assert_eq!(c.read_u32(8) & 0xff, u32::from(REVISION));
    assert_eq!(c.read_u32(8) >> 8, 0x02_00_00);
    assert_eq!(c.read_u32(0x2c), u32::from(SUBSYSTEM_ID) << 16 | 0x1af4);
    assert_eq!(c.read_u32(0x3c) >> 8 & 0xff, 1, "INTA");
    assert_eq!(c.read_u32(0x10) & 1, 1, "BAR0 is I/O");
    assert_eq!(c.read_u32(0x14) & 1, 0, "BAR1 is memory");
    assert_eq!(c.bar(BAR_IO).unwrap().size, 256);
    assert_eq!(c.bar(BAR_MMIO).unwrap().size, 256);
}

#[test]
fn both_bars_decode_the_same_registers_and_honour_the_command_register() {
    let mut rig = Rig::new();
    rig.w32(TSAD0 + 4, 0x1234_5678);
    let mut b = [0u8; 4];
    rig.dev.mmio_read(u64::from(TSAD0 + 4), &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
    rig.dev
        .mmio_write(u64::from(TSAD0 + 8), &7u32.to_le_bytes());
    assert_eq!(rig.r32(TSAD0 + 8), 7);
    rig.dev.config_write(4, &0u16.to_le_bytes());
    let mut b = [0u8; 4];
    rig.dev.io_read(u64::from(TSAD0 + 4), &mut b);
    assert_eq!(b, [0xff; 4], "I/O decode off floats");
    rig.dev.io_write(u64::from(TSAD0 + 4), &[0; 4]);
    rig.dev.config_write(4, &CMD_IO.to_le_bytes());
    assert_eq!(rig.r32(TSAD0 + 4), 0x1234_5678, "the write was ignored");
}

#[test]
fn idr_comes_from_the_eeprom_and_reads_in_any_width() {
    let mut rig = Rig::new();
    assert_eq!(
        rig.r32(IDR0).to_le_bytes(),
        [MAC[0], MAC[1], MAC[2], MAC[3]]
    );
    assert_eq!(rig.r16(IDR0 + 4).to_le_bytes(), [MAC[4], MAC[5]]);
    assert_eq!(rig.r8(IDR0 + 5), MAC[5]);
    rig.w32(IDR0, 0x0403_0201);
    assert_eq!(rig.dev.mac()[..4], [1, 2, 3, 4]);
    // Auto-load puts the EEPROM's MAC back.
    rig.w8(CR9346, EEM_AUTOLOAD << EEM_SHIFT);
    assert_eq!(rig.dev.mac(), MAC);
    assert_eq!(
        rig.r8(CR9346) >> EEM_SHIFT,
        EEM_NORMAL,
        "auto-load completes at once"
    );
}

#[test]
fn eeprom_reads_as_8139too_reads_it() {
    let mut rig = Rig::new();
    assert_eq!(rig.ee_read(0), EEPROM_ID);
    assert_eq!(rig.ee_read(1), VENDOR);
    assert_eq!(rig.ee_read(2), DEVICE);
    for i in 0..3 {
        let want = u16::from_le_bytes([MAC[2 * i], MAC[2 * i + 1]]);
        assert_eq!(rig.ee_read(7 + i as u32), want, "MAC word {i}");
    }
    assert_eq!(rig.ee_read(63), 0);
}

#[test]
fn eeprom_writes_only_after_ewen() {
    let mut rig = Rig::new();
    // WRITE word 20 = 0xbeef without EWEN: refused.
    rig.ee_command(0b101 << 22 | 20 << 16 | 0xbeef, 25);
    assert_eq!(rig.ee_read(20), 0);
    assert_eq!(rig.dev.counters().eeprom_refused_writes, 1);
    // EWEN (00 11xxxx), WRITE, ERASE of another word.
    rig.ee_command(0b100_110000, 9);
    rig.ee_command(0b101 << 22 | 20 << 16 | 0xbeef, 25);
    assert_eq!(rig.ee_read(20), 0xbeef);
    rig.ee_command(0b111 << 6 | 21, 9);
    assert_eq!(rig.ee_read(21), 0xffff);
    // EWDS, then a write is refused again.
    rig.ee_command(0b100_000000, 9);
    rig.ee_command(0b101 << 22 | 20 << 16 | 0x1111, 25);
    assert_eq!(rig.ee_read(20), 0xbeef);
}

#[test]
fn eeprom_protocol_garbage_never_panics_and_recovers() {
    let mut rig = Rig::new();
    let mut x = 0x1234_5678u32;
    for _ in 0..5000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        rig.w8(CR9346, x as u8);
    }
    // Whatever state that left, a CS drop and a read work.
    rig.w8(CR9346, 0);
    assert_eq!(rig.ee_read(0), EEPROM_ID);
    assert_eq!(rig.ee_read(8), u16::from_le_bytes([MAC[2], MAC[3]]));
    // A sequential read runs on into the next word.
    rig.ee(true, false, false);
    rig.ee_bits(0b110 << 6 | (WORDS as u32 - 1), 9);
    rig.ee(true, false, false);
    let mut v = 0u32;
    for _ in 0..32 {
        rig.ee(true, true, false);
        v = v << 1 | u32::from(rig.r8(CR9346) & EE_DO);
        rig.ee(true, false, false);
    }
    let want = u32::from(rig.ee_read(63)) << 16 | u32::from(rig.ee_read(0));
    assert_eq!(v, want, "word 63 then word 0");
}

#[test]
fn config_registers_need_config_write_mode() {
    let mut rig = Rig::new();
    assert_eq!(rig.r8(CONFIG1), CONFIG1_DEFAULT);
    rig.w8(CONFIG1, 0x01);
    assert_eq!(rig.r8(CONFIG1), CONFIG1_DEFAULT, "locked");
    rig.w8(CR9346, EEM_CONFIG_WRITE << EEM_SHIFT);
    rig.w8(CONFIG1, 0x01);
    rig.w8(CONFIG4, 0x80);
    assert_eq!(rig.r8(CONFIG1), CONFIG1_DEFAULT | 0x01, "IOMAP/MEMMAP stay");
    assert_eq!(rig.r8(CONFIG4), 0x80);
    assert_eq!(rig.r8(CONFIG3), CONFIG3_DEFAULT);
    assert_eq!(rig.r8(CONFIG0), 0);
}

#[test]
fn reset_self_clears_and_restores_the_defaults() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    rig.w32(TCR, 0x0300_0700);
    rig.dev.isr = Intr::TOK;
    rig.w8(CR, Cmd::RST.bits());
    assert_eq!(
        rig.r8(CR),
        Cmd::BUFE.bits(),
        "RST reads 0, RE/TE off, ring empty"
    );
    assert_eq!(rig.r16(IMR), 0);
    assert_eq!(rig.r16(ISR), 0);
    assert_eq!(rig.r32(TCR), TCR_HWVERID);
    for i in 0..4 {
        assert_eq!(rig.r32(TSD0 + 4 * i), Tsd::OWN.bits());
    }
    assert_eq!(rig.r16(TSAD_SUMMARY), 0x000f, "every slot the host's");
    assert_eq!(rig.r16(CAPR), 0xfff0);
    assert_eq!(rig.r16(CBR), 0);
    assert_eq!(rig.r32(RBSTART), RX_RING as u32, "kept");
    assert_eq!(rig.dev.mac(), MAC, "IDR kept");
}

#[test]
fn tcr_reports_the_8139c_and_keeps_its_version_bits() {
    let mut rig = Rig::new();
    assert_eq!(rig.r32(TCR) & TCR_HWVERID_MASK, 0x7400_0000);
    rig.w32(TCR, 0xffff_ffff);
    let v = rig.r32(TCR);
    assert_eq!(v & TCR_HWVERID_MASK, 0x7400_0000);
    assert_eq!(v & TCR_CLRABT, 0, "CLRABT self-clears");
    assert_ne!(v & 0x0006_0000, 0, "loopback bits stored");
}

#[test]
fn isr_is_write_one_to_clear_and_drives_the_line_with_imr() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    rig.w16(IMR, 0);
    rig.backend.push(&rig.frame(64, 1), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.r16(ISR), Intr::ROK.bits());
    assert!(!rig.line.level.load(Ordering::SeqCst), "masked");
    rig.w16(IMR, Intr::ROK.bits());
    assert!(rig.line.level.load(Ordering::SeqCst), "ISR & IMR");
    // Writing 0 or other bits leaves ROK; writing its 1 clears it.
    rig.w16(ISR, 0);
    rig.w16(ISR, Intr::TOK.bits());
    assert_eq!(rig.r16(ISR), Intr::ROK.bits());
    rig.w8(ISR + 1, 0xff);
    assert_eq!(
        rig.r16(ISR),
        Intr::ROK.bits(),
        "a write to the high byte only"
    );
    rig.w16(ISR, Intr::ROK.bits());
    assert_eq!(rig.r16(ISR), 0);
    assert!(!rig.line.level.load(Ordering::SeqCst));
    assert_eq!(rig.line.raises.load(Ordering::SeqCst), 1);
}

#[test]
fn receive_writes_header_frame_and_crc_dword_aligned() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    assert_ne!(rig.r8(CR) & Cmd::BUFE.bits(), 0);
    let f = rig.frame(61, 3);
    rig.backend.push(&f, FrameMeta::default());
    rig.dev.rx_pass();
    let (status, got) = rig.ring_frame(0);
    assert_eq!(status, (RxStatus::ROK | RxStatus::PAM).bits());
    assert_eq!(got.len(), 61 + 4, "length counts the CRC");
    assert_eq!(got[..61], f[..]);
    let crc = crc32fast::hash(&f).to_le_bytes();
    assert_eq!(got[61..], crc, "a real FCS");
    // 4 + 65 = 69, aligned to 72.
    assert_eq!(rig.r16(CBR), 72);
    assert_eq!(rig.r8(CR) & Cmd::BUFE.bits(), 0, "unread data");
    assert_eq!(rig.r16(ISR), Intr::ROK.bits());
    // A short frame is padded to 60 before its CRC.
    rig.backend.push(&rig.frame(20, 9), FrameMeta::default());
    rig.dev.rx_pass();
    let (_, got) = rig.ring_frame(72);
    assert_eq!(got.len(), 64);
    assert!(got[20..60].iter().all(|&b| b == 0));
    // The driver reads both: CAPR = read offset - 16; the ring is empty again.
    rig.w16(CAPR, (72 + 68 - 16) as u16);
    assert_eq!(rig.r16(CAPR), 72 + 68 - 16);
    assert_ne!(rig.r8(CR) & Cmd::BUFE.bits(), 0);
}

/// Fill an 8 KiB ring up to `offset` by receiving and reading back 1000-byte frames, so the
/// next frame starts there.
fn advance_ring(rig: &mut Rig, offset: u32) {
    loop {
        let at = u32::from(rig.r16(CBR));
        let step = 4 + 1004u32;
        // Leave at least a minimal frame's record for the last step.
        if at + step.next_multiple_of(4) + 68 > offset {
            break;
        }
        rig.backend.push(&rig.frame(1000, 0), FrameMeta::default());
        rig.dev.rx_pass();
        let cbr = rig.r16(CBR);
        rig.w16(CAPR, cbr.wrapping_sub(16));
    }
    // The rest with one frame of the right size.
    let at = u32::from(rig.r16(CBR));
    let rest = offset - at;
    if rest > 0 {
        assert!(rest >= 68, "{rest}");
        rig.backend
            .push(&rig.frame(rest as usize - 8, 0), FrameMeta::default());
        rig.dev.rx_pass();
        let cbr = rig.r16(CBR);
        rig.w16(CAPR, cbr.wrapping_sub(16));
    }
    assert_eq!(u32::from(rig.r16(CBR)), offset);
}

#[test]
fn wrap_clear_splits_the_frame_at_the_ring_end() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    advance_ring(&mut rig, 8192 - 100);
    let f = rig.frame(300, 5);
    rig.backend.push(&f, FrameMeta::default());
    rig.dev.rx_pass();
    let mut ring = vec![0u8; 8192];
    rig.mem
        .read_slice(&mut ring, GuestAddress(RX_RING))
        .unwrap();
    let mut record = ring[8192 - 100..].to_vec();
    record.extend_from_slice(&ring[..304 - 100 + 4]);
    assert_eq!(u16::from_le_bytes([record[2], record[3]]), 304);
    assert_eq!(record[4..304], f[..]);
    assert_eq!(u32::from(rig.r16(CBR)), (4 + 304) - 100);
}

#[test]
fn wrap_set_runs_into_the_slack() {
    let mut rig = Rig::new();
    rig.rx_setup(Rcr::WRAP.bits());
    advance_ring(&mut rig, 8192 - 100);
    let f = rig.frame(300, 5);
    rig.backend.push(&f, FrameMeta::default());
    rig.dev.rx_pass();
    let (_, got) = rig.ring_frame(8192 - 100);
    assert_eq!(got[..300], f[..], "contiguous past the end");
    assert_eq!(u32::from(rig.r16(CBR)), (4 + 304) - 100, "CBR wraps");
}

#[test]
fn the_windows_frames_went_in_under_are_reported_once_each() {
    let mut rig = Rig::new();
    rig.rx_setup(Rcr::WRAP.bits());
    let small = rig.dev.rx_window();
    assert_eq!(small, RX_RING..RX_RING + 8192 + 4 + MAX_FRAME as u64 + 4);
    for s in 0..2 {
        let f = rig.frame(100, s);
        rig.backend.push(&f, FrameMeta::default());
    }
    rig.dev.rx_pass();
    // One frame waits while the ring grows to 64 KiB (no slack there); CR delivers it.
    let f = rig.frame(100, 9);
    rig.backend.push(&f, FrameMeta::default());
    rig.w32(RCR, (Rcr::APM | Rcr::AB).bits() | 3 << RCR_RBLEN_SHIFT);
    assert_eq!(rig.dev.counters().rx_frames, 3);
    assert_eq!(
        rig.dev.take_rx_windows_written(),
        [small, RX_RING..RX_RING + 65536]
    );
    assert!(rig.dev.take_rx_windows_written().is_empty());
}

#[test]
fn ring_size_follows_rblen() {
    let mut rig = Rig::new();
    for (rblen, size) in [(0, 8192), (1, 16384), (2, 32768), (3, 65536)] {
        rig.w32(RCR, rblen << RCR_RBLEN_SHIFT);
        assert_eq!(rig.dev.rx_ring_size(), size);
    }
}

#[test]
fn a_full_ring_holds_the_frame_until_capr_moves() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    // Eight 1000-byte frames fill 8 KiB (8 * 1008 = 8064); the next has no room.
    for s in 0..10 {
        rig.backend.push(&rig.frame(1000, s), FrameMeta::default());
    }
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 8);
    assert!(rig.dev.rx_blocked());
    assert_eq!(rig.dev.counters().rx_holds, 1);
    assert_eq!(
        rig.backend.waiting(),
        1,
        "one held in the device, one in the backend"
    );
    assert_eq!(rig.r32(MPC), 0, "nothing lost");
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_holds, 1, "one hold, counted once");
    // The driver reads two frames: both wait no longer.
    rig.w16(CAPR, (2 * 1008 - 16) as u16);
    assert_eq!(rig.dev.counters().rx_frames, 10);
    assert!(!rig.dev.rx_blocked());
    // Frame 8 was split at the end (8064 + 1008 > 8192), frame 9 follows it at 880.
    let (_, got) = rig.ring_frame(8064 + 1008 - 8192);
    assert_eq!(got[..1000], rig.frame(1000, 9)[..]);
}

#[test]
fn capr_garbage_is_taken_modulo_the_ring_and_never_writes_outside_it() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    let guard = RX_RING + 8192 + 16;
    rig.mem
        .write_slice(&[0xa5; 4096], GuestAddress(guard))
        .unwrap();
    let mut x = 0x9e37_79b9u32;
    for i in 0..2000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        rig.w16(CAPR, x as u16);
        assert!(u32::from(rig.r16(CAPR).wrapping_add(16)) < 8192);
        rig.backend.push(
            &rig.frame(60 + (x >> 16) as usize % 1400, i as u8),
            FrameMeta::default(),
        );
        rig.dev.rx_pass();
        assert!(u32::from(rig.r16(CBR)) < 8192);
        assert_eq!(rig.r16(CBR) % 4, 0);
    }
    let mut after = vec![0u8; 4096];
    rig.mem.read_slice(&mut after, GuestAddress(guard)).unwrap();
    assert!(
        after.iter().all(|&b| b == 0xa5),
        "WRAP clear: nothing past the ring"
    );
}

#[test]
fn rx_ring_outside_ram_drops_counts_and_signals_serr() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    for base in [OUTSIDE, (RAM - 100) as u32] {
        rig.w32(RBSTART, base);
        rig.backend.push(&rig.frame(200, 1), FrameMeta::default());
        rig.dev.rx_pass();
    }
    assert_eq!(rig.dev.counters().rx_buffer_fault, 2);
    assert_eq!(rig.dev.counters().rx_frames, 0);
    assert_eq!(rig.r32(MPC), 2);
    assert_ne!(rig.r16(ISR) & Intr::SERR.bits(), 0);
    assert!(!rig.dev.rx_blocked(), "dropped, not held");
    let mut tail = [0u8; 100];
    rig.mem
        .read_slice(&mut tail, GuestAddress(RAM - 100))
        .unwrap();
    assert_eq!(tail, [0; 100], "a ring straddling the end took nothing");
    rig.w32(MPC, 0x1234);
    assert_eq!(rig.r32(MPC), 0, "any write clears MPC");
}

#[test]
fn address_filters_follow_rcr_and_the_mar_hash() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    let other = [0x52, 0x54, 0, 0, 0, 1];
    let mcast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
    let to = |d: [u8; 6]| {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&d);
        f
    };
    for d in [other, mcast, [0xff; 6], MAC] {
        rig.backend.push(&to(d), FrameMeta::default());
    }
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 2, "broadcast and ours");
    assert_eq!(rig.dev.counters().rx_filtered, 2);
    assert_eq!(rig.ring_frame(0).0, (RxStatus::ROK | RxStatus::BAR).bits());
    // Multicast needs AM and its MAR bit (0x01:00:5e:00:00:fb hashes to bit 15, as Linux's
    // `ether_crc(6, addr) >> 26` gives it).
    assert_eq!(mar_index(&mcast), 15);
    rig.w32(RCR, (Rcr::APM | Rcr::AB | Rcr::AM).bits());
    rig.backend.push(&to(mcast), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_filtered, 3, "bit not set");
    rig.w8(MAR0 + 1, 1 << 7);
    rig.backend.push(&to(mcast), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 3);
    // AAP takes anything.
    rig.w32(RCR, Rcr::AAP.bits());
    rig.backend.push(&to(other), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 4);
    // Without APM not even ours.
    rig.w32(RCR, Rcr::AB.bits());
    rig.backend.push(&to(MAC), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 4);
}

#[test]
fn rx_waits_for_re_bus_master_and_link() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    rig.w8(CR, Cmd::TE.bits());
    rig.backend.push(&rig.frame(64, 0), FrameMeta::default());
    rig.dev.rx_pass();
    assert!(rig.dev.rx_blocked());
    assert_eq!(rig.backend.waiting(), 1, "left in the backend");
    rig.w8(CR, (Cmd::RE | Cmd::TE).bits());
    assert_eq!(rig.dev.counters().rx_frames, 1, "the CR write's own pass");
    rig.dev.set_link(false);
    rig.backend.push(&rig.frame(64, 0), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_frames, 1);
}

#[test]
fn transmit_takes_slots_in_turn_and_reports_tok() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    rig.w16(ISR, 0xffff);
    let f0 = rig.frame(100, 1);
    rig.tx(0, &f0);
    assert_eq!(rig.r32(TSD0), Tsd::OWN.bits() | Tsd::TOK.bits() | 100);
    assert_eq!(rig.r16(ISR), Intr::TOK.bits());
    assert!(rig.line.level.load(Ordering::SeqCst));
    // A short frame is padded; slots go on round robin.
    rig.tx(1, &rig.frame(20, 2));
    rig.tx(2, &rig.frame(1514, 3));
    let sent = rig.backend.sent();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0].1, f0);
    assert_eq!(sent[1].1.len(), 60);
    assert_eq!(sent[2].1.len(), 1514);
    assert_eq!(rig.r16(TSAD_SUMMARY), 0x7 << 12 | 0xf);
    // Slot 0 again is not next: slot 3 is. Starting slot 0 waits for it.
    rig.tx(0, &rig.frame(64, 4));
    assert_eq!(rig.backend.sent().len(), 3);
    assert_eq!(rig.r32(TSD0) & Tsd::OWN.bits(), 0, "still the device's");
    rig.tx(3, &rig.frame(64, 5));
    assert_eq!(rig.backend.sent().len(), 5, "slot 3, then slot 0");
    assert_eq!(rig.dev.counters().tx_frames, 5);
    assert_eq!(*lock(&rig.backend.wire).flushes.last().unwrap(), 5);
}

#[test]
fn transmit_needs_te_and_bus_mastering() {
    let mut rig = Rig::new();
    rig.tx(0, &rig.frame(64, 1));
    assert!(rig.backend.sent().is_empty());
    rig.w8(CR, Cmd::TE.bits());
    assert_eq!(rig.backend.sent().len(), 1, "the CR write starts it");
    rig.dev.config_write(4, &CMD_IO.to_le_bytes());
    rig.tx(1, &rig.frame(64, 1));
    assert_eq!(rig.backend.sent().len(), 1);
    rig.dev
        .config_write(4, &(CMD_IO | CMD_BUS_MASTER).to_le_bytes());
    assert_eq!(rig.backend.sent().len(), 2, "bus mastering on starts it");
}

#[test]
fn bad_sizes_and_buffers_outside_ram_abort_the_slot() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    rig.w32(TSD0, 0);
    rig.w32(TSAD0 + 4, TX_BUFS as u32);
    rig.w32(TSD0 + 4, TX_MAX_SIZE + 1);
    rig.w32(TSAD0 + 8, OUTSIDE);
    rig.w32(TSD0 + 8, 100);
    rig.w32(TSAD0 + 12, (RAM - 50) as u32);
    rig.w32(TSD0 + 12, 100);
    for i in 0..4 {
        let tsd = rig.r32(TSD0 + 4 * i);
        assert_eq!(
            tsd & (Tsd::OWN | Tsd::TABT | Tsd::TOK).bits(),
            (Tsd::OWN | Tsd::TABT).bits(),
            "slot {i}"
        );
    }
    assert!(rig.backend.sent().is_empty());
    let c = rig.dev.counters();
    assert_eq!((c.tx_bad_size, c.tx_buffer_fault), (2, 2));
    assert_eq!(rig.r16(ISR), (Intr::TER | Intr::SERR).bits());
    assert_eq!(rig.r16(TSAD_SUMMARY), 0xf << 4 | 0xf);
    // 1519..=1792 completes but no backend carries it.
    rig.tx(0, &vec![0u8; 1700]);
    assert_eq!(rig.r32(TSD0) & Tsd::TOK.bits(), Tsd::TOK.bits());
    assert_eq!(rig.dev.counters().tx_too_long, 1);
    assert!(rig.backend.sent().is_empty());
}

#[test]
fn a_full_backend_leaves_the_slot_unfinished_until_it_has_room() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    rig.dev.set_wake(wake.try_clone().unwrap());
    rig.backend.set_tx_room(Some(1));
    rig.tx(0, &rig.frame(64, 1));
    rig.tx(1, &rig.frame(64, 2));
    assert_eq!(rig.backend.sent().len(), 1);
    assert_eq!(
        rig.r32(TSD0 + 4) & (Tsd::OWN | Tsd::TOK).bits(),
        0,
        "not done"
    );
    assert!(rig.dev.tx_blocked());
    assert_eq!(rig.dev.counters().tx_holds, 1);
    assert_eq!(
        wake.read().unwrap(),
        1,
        "the thread is told to watch the backend"
    );
    rig.dev.tx_resume();
    assert_eq!(rig.dev.counters().tx_holds, 1, "the same hold");
    rig.backend.set_tx_room(None);
    rig.dev.tx_resume();
    assert!(!rig.dev.tx_blocked());
    assert_eq!(rig.backend.sent().len(), 2);
    assert_eq!(rig.r32(TSD0 + 4) & Tsd::TOK.bits(), Tsd::TOK.bits());
}

#[test]
fn link_state_in_msr_and_bmsr_with_an_interrupt() {
    let mut rig = Rig::new();
    assert_eq!(rig.r8(MSR) & MSR_LINKB, 0, "LINKB 0: link up");
    assert_ne!(rig.r16(BMSR) & BMSR_LINK, 0);
    rig.w16(IMR, Intr::LINK_CHG.bits());
    rig.dev.set_link(false);
    assert_ne!(rig.r8(MSR) & MSR_LINKB, 0);
    assert_eq!(rig.r16(BMSR) & BMSR_LINK, 0);
    assert_eq!(rig.r16(ANLPAR), 0);
    assert!(rig.line.level.load(Ordering::SeqCst));
}

#[test]
fn phy_registers() {
    let mut rig = Rig::new();
    assert_eq!(rig.r16(BMCR), BMCR_ANE);
    assert_eq!(rig.r16(ANAR), ANAR_DEFAULT);
    assert_eq!(rig.r16(ANER), ANER_DEFAULT);
    assert_eq!(rig.r16(CSCR), CSCR_DEFAULT);
    rig.w16(ANAR, 0x01e1);
    rig.w16(BMCR, BMCR_ANE | BMCR_RESTART_AN);
    assert_eq!(rig.r16(BMCR), BMCR_ANE, "restart self-clears");
    rig.w16(BMCR, BMCR_RESET);
    assert_eq!(rig.r16(BMCR), BMCR_ANE);
    assert_eq!(rig.r16(ANAR), ANAR_DEFAULT, "PHY reset");
    rig.w16(BMSR, 0);
    assert_ne!(rig.r16(BMSR), 0, "read-only");
}

#[test]
fn plain_registers_store_and_unknown_ones_read_zero() {
    let mut rig = Rig::new();
    rig.w16(MULINT, 0xffff);
    assert_eq!(rig.r16(MULINT), 0x0fff);
    for (reg, v) in [(TIMER_INT, 0xdead_beef), (PARA78, 0x1234), (PARA7C, 0x5678)] {
        rig.w32(reg, v);
        assert_eq!(rig.r32(reg), v);
    }
    rig.w8(0x5b, 0xff);
    rig.w32(0xf0, 0xffff_ffff);
    assert_eq!(rig.r8(0x5b), 0);
    assert_eq!(rig.r32(0xf0), 0);
    assert_eq!(rig.r16(ERBCR), 0);
    // A dword across IMR and ISR writes both halves: IMR takes its half, ISR clears.
    rig.dev.isr = Intr::TOK;
    rig.w32(IMR, u32::from(Intr::TOK.bits()) << 16 | 0x5);
    assert_eq!(rig.r16(IMR), 0x5);
    assert_eq!(rig.r16(ISR), 0);
    // Odd widths are ignored and counted.
    rig.dev.io_write(u64::from(TSAD0), &[1, 2, 3]);
    let mut b = [0xffu8; 8];
    rig.dev.io_read(u64::from(TSAD0), &mut b);
    assert_eq!(b, [0; 8]);
    assert_eq!(rig.dev.counters().bad_access_width, 2);
    // Beyond the 256 bytes.
    rig.dev.mmio_write(0x1000, &[1]);
    let mut b = [0xffu8; 2];
    rig.dev.io_read(0xff, &mut b);
    assert_eq!(b, [0, 0]);
}

#[test]
fn cplus_writes_are_ignored_and_counted() {
    let mut rig = Rig::new();
    rig.w16(CPCR, 0x0003);
    rig.w32(CPLUS_RDSAR, 0x1000);
    assert_eq!(rig.r16(CPCR), 0);
    assert_eq!(rig.r32(CPLUS_RDSAR), 0);
    assert_eq!(rig.dev.counters().cplus_writes, 2);
}

#[test]
fn tctr_counts_at_33_mhz_from_its_last_write() {
    static NOW: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    fn clock() -> Instant {
        *NOW.lock().unwrap().get_or_insert_with(Instant::now)
    }
    let mut rig = Rig::new();
    rig.dev.set_clock(clock);
    assert_eq!(rig.r32(TCTR), 0);
    let t0 = clock();
    *NOW.lock().unwrap() = Some(t0 + std::time::Duration::from_millis(1));
    assert_eq!(rig.r32(TCTR), 33_000);
    rig.w32(TCTR, 0);
    assert_eq!(rig.r32(TCTR), 0, "a write restarts it");
}

#[test]
fn reset_drops_a_held_frame() {
    let mut rig = Rig::new();
    rig.rx_setup(0);
    for s in 0..9 {
        rig.backend.push(&rig.frame(1000, s), FrameMeta::default());
    }
    rig.dev.rx_pass();
    assert!(rig.dev.rx_blocked());
    rig.w8(CR, Cmd::RST.bits());
    assert_eq!(rig.dev.counters().rx_dropped, 1);
    rig.rx_setup(0);
    assert_eq!(rig.r16(CBR), 0);
}

/// A frame a TAP with vnet_hdr hands over with NEEDS_CSUM reaches the ring with its checksum
/// finished, and its CRC over the finished bytes; one whose range lies outside it is dropped
/// and counted.
#[test]
fn receive_finishes_a_partial_checksum() {
    use crate::backends::net::ChecksumRequest;
    use crate::devices::virtio::net::checksum;
    let mut rig = Rig::new();
    rig.rx_setup(0);
    let f = rig.frame(100, 3);
    let partial = |start| FrameMeta {
        needs_csum: Some(ChecksumRequest { start, offset: 6 }),
        data_valid: false,
    };
    rig.backend.push(&f, partial(200));
    rig.backend.push(&f, partial(34));
    rig.dev.rx_pass();
    let (_, got) = rig.ring_frame(0);
    assert_eq!(got.len(), 104);
    // The field held the pseudo-header's sum: with it, the finished range sums to 0xffff.
    let pseudo = [f[40], f[41]];
    assert!(
        checksum::verifies(&[&got[34..100], &pseudo[..]].concat()),
        "{got:x?}"
    );
    assert_ne!(got[40..42], f[40..42]);
    assert_eq!((&got[..40], &got[42..100]), (&f[..40], &f[42..]));
    assert_eq!(got[100..], crc32fast::hash(&got[..100]).to_le_bytes());
    assert_eq!(rig.dev.counters().rx_dropped, 1);
}
