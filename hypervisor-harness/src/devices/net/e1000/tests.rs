//! The model driven as a driver would: registers through BAR0, rings and buffers in a
//! `GuestMemoryMmap`, frames through the recording backend of the virtio-net tests.

use super::eeprom::{CHECKSUM_SUM, WORDS};
use super::regs::*;
use super::stats::*;
use super::*;
use crate::backends::net::FrameMeta;
use crate::devices::net::IrqLevel;
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_MEM};
use crate::devices::virtio::net::test_util::{udp_frame, TestBackend};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

type Mem = GuestMemoryMmap<()>;
const RAM: u64 = 2 << 20;
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const TX_RING: u64 = 0x1_0000;
const RX_RING: u64 = 0x2_0000;
const TX_BUFS: u64 = 0x4_0000;
const RX_BUFS: u64 = 0x8_0000;
/// Well outside the 2 MiB of RAM.
const OUTSIDE: u64 = 0x4000_0000;

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
    dev: E1000<Mem>,
    mem: Mem,
    line: Arc<Line>,
    backend: TestBackend,
}

impl Rig {
    fn new() -> Self {
        Self::with_ram(&[(0, RAM)])
    }

    /// RAM as the given `(start, length)` regions, with holes between them.
    fn with_ram(regions: &[(u64, u64)]) -> Self {
        let ranges: Vec<_> = regions
            .iter()
            .map(|&(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let mem = Mem::from_ranges(&ranges).unwrap();
        let line = Arc::new(Line::default());
        let backend = TestBackend::new();
        let mut dev = E1000::new(
            mem.clone(),
            Box::new(backend.clone()),
            MAC,
            line.clone(),
            11,
        );
        dev.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
        Self {
            dev,
            mem,
            line,
            backend,
        }
    }

    fn w(&mut self, reg: u64, v: u32) {
        self.dev.mmio_write(reg, &v.to_le_bytes());
    }

    fn r(&mut self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.mmio_read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    fn eerd(&mut self, addr: u32) -> u16 {
        self.w(EERD, addr << EERD_ADDR_SHIFT | Eerd::START.bits());
        let v = self.r(EERD);
        assert_ne!(v & Eerd::DONE.bits(), 0, "EERD done at once");
        (v >> EERD_DATA_SHIFT) as u16
    }

    fn mdic_read(&mut self, phy_addr: u32, reg: u32) -> u32 {
        self.w(
            MDIC,
            Mdic::OP_READ.bits() | phy_addr << MDIC_PHY_SHIFT | reg << MDIC_REG_SHIFT,
        );
        self.r(MDIC)
    }

    /// A TX ring of `n` descriptors, enabled.
    fn tx_setup(&mut self, n: u32) {
        self.w(TDBAL, TX_RING as u32);
        self.w(TDBAH, 0);
        self.w(TDLEN, n * 16);
        self.w(TDH, 0);
        self.w(TDT, 0);
        self.w(TCTL, Tctl::EN.bits() | Tctl::PSP.bits());
    }

    /// A legacy TX descriptor at ring index `i`.
    fn tx_legacy(&self, i: u64, addr: u64, len: u16, cmd: TxCmd) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..10].copy_from_slice(&len.to_le_bytes());
        d[11] = cmd.bits();
        self.mem
            .write_slice(&d, GuestAddress(TX_RING + i * 16))
            .unwrap();
    }

    fn tx_status(&self, i: u64) -> u8 {
        self.mem
            .read_obj(GuestAddress(TX_RING + i * 16 + 12))
            .unwrap()
    }

    /// An RX ring of `n` descriptors with 2 KiB buffers, RX on, tail at `tail`.
    fn rx_setup(&mut self, n: u32, tail: u32) {
        for i in 0..u64::from(n) {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(RX_BUFS + i * 2048).to_le_bytes());
            self.mem
                .write_slice(&d, GuestAddress(RX_RING + i * 16))
                .unwrap();
        }
        self.w(RDBAL, RX_RING as u32);
        self.w(RDBAH, 0);
        self.w(RDLEN, n * 16);
        self.w(RDH, 0);
        self.w(RDT, tail);
        self.w(RCTL, (Rctl::EN | Rctl::BAM | Rctl::SECRC).bits());
    }

    /// (length, status, errors) of RX descriptor `i`.
    fn rx_desc(&self, i: u64) -> (u16, u8, u8) {
        let mut d = [0u8; 16];
        self.mem
            .read_slice(&mut d, GuestAddress(RX_RING + i * 16))
            .unwrap();
        (u16::from_le_bytes([d[8], d[9]]), d[12], d[13])
    }

    fn rx_buf(&self, i: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .read_slice(&mut v, GuestAddress(RX_BUFS + i * 2048))
            .unwrap();
        v
    }

    fn level(&self) -> bool {
        self.line.level.load(Ordering::SeqCst)
    }
}

/// A frame for our MAC of `len` bytes, its payload a pattern.
fn frame_to_us(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
    f[0..6].copy_from_slice(&MAC);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f
}

/// The one's complement sum, unfinished (for checking checksums).
fn ones_sum(data: &[u8], mut sum: u32) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// The IPv4 pseudo-header sum of an Ethernet/IPv4 frame (for protocol `proto`, L4 length).
fn pseudo_sum(f: &[u8], proto: u8) -> u32 {
    let l4_len = (f.len() - 34) as u16;
    let mut p = Vec::new();
    p.extend_from_slice(&f[26..34]);
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&l4_len.to_be_bytes());
    ones_sum(&p, 0)
}

#[test]
fn pci_identity_and_bars() {
    let rig = Rig::new();
    let c = rig.dev.config();
    assert_eq!(c.read_u32(0), 0x100e_8086);
    assert_eq!(c.read_u32(8), 0x0200_0003, "class 02/00/00, revision 3");
    assert_eq!(c.read_u32(0x3c) >> 8 & 0xff, 1, "INTA");
    assert_eq!(c.read_u32(0x3c) & 0xff, 11);
    assert_eq!(c.bar(BAR_MMIO).unwrap().size, 128 << 10);
    assert_eq!(c.bar(BAR_IO).unwrap().size, 0x40);
    assert_eq!(c.read_u32(0x10) & 1, 0, "BAR0 memory");
    assert_eq!(c.read_u32(0x14) & 1, 1, "BAR1 I/O");
}

#[test]
fn reset_eeprom_checksum_and_mac() {
    let mut rig = Rig::new();
    let words: Vec<u16> = (0..WORDS as u32).map(|a| rig.eerd(a)).collect();
    let sum = words.iter().fold(0u16, |a, &w| a.wrapping_add(w));
    assert_eq!(sum, CHECKSUM_SUM);
    let mac: Vec<u8> = words[..3].iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(mac, MAC);
    assert_eq!(words[0x0d], DEVICE);
    assert_eq!(words[0x0e], VENDOR);
    // RAL0/RAH0 hold the MAC, valid.
    assert_eq!(rig.r(RA_BASE), 0x1200_5452);
    assert_eq!(rig.r(RA_BASE + 4), 0x8000_5634);
    // Reset: RST self-clears, interrupt mask and ring registers back to 0.
    rig.w(IMS, Cause::RXT0.bits());
    rig.w(RDLEN, 4096);
    rig.w(RA_BASE, 0);
    let ctrl = rig.r(CTRL);
    rig.w(CTRL, ctrl | Ctrl::RST.bits());
    assert_eq!(rig.r(CTRL) & Ctrl::RST.bits(), 0);
    assert_ne!(rig.r(CTRL) & Ctrl::SLU.bits(), 0);
    assert_eq!(rig.r(IMS), 0);
    assert_eq!(rig.r(RDLEN), 0);
    assert_eq!(rig.r(RA_BASE), 0x1200_5452, "RAL0 reloaded from the EEPROM");
    let status = Status::from_bits_truncate(rig.r(STATUS));
    assert!(status.contains(Status::LU | Status::FD | Status::SPEED_1000));
    // Unknown registers read 0 and ignore writes.
    rig.w(0x5a00, 0xdead_beef);
    assert_eq!(rig.r(0x5a00), 0);
}

/// EECD bit-banged as Linux's e1000 does: the READ header, then 16 bits per word.
#[test]
fn eeprom_over_eecd_microwire() {
    let mut rig = Rig::new();
    let eerd_word2 = rig.eerd(2);
    let eerd_word3 = rig.eerd(3);
    let req = Eecd::REQ.bits();
    rig.w(EECD, req);
    assert_ne!(rig.r(EECD) & Eecd::GNT.bits(), 0);
    assert_ne!(rig.r(EECD) & Eecd::PRES.bits(), 0);
    let cs = req | Eecd::CS.bits();
    rig.w(EECD, cs);
    let clock = |rig: &mut Rig, di: bool| -> bool {
        let v = cs | if di { Eecd::DI.bits() } else { 0 };
        rig.w(EECD, v | Eecd::SK.bits());
        let out = rig.r(EECD) & Eecd::DO.bits() != 0;
        rig.w(EECD, v);
        out
    };
    // Start bit 1, opcode 10, address 2 (6 bits).
    for bit in [1, 1, 0, 0, 0, 0, 0, 1, 0] {
        clock(&mut rig, bit == 1);
    }
    let read_word = |rig: &mut Rig| (0..16).fold(0u16, |w, _| w << 1 | clock(rig, false) as u16);
    assert_eq!(read_word(&mut rig), eerd_word2);
    assert_eq!(read_word(&mut rig), eerd_word3, "sequential read");
    rig.w(EECD, 0);
    assert_eq!(rig.r(EECD) & Eecd::DO.bits(), 0);
}

#[test]
fn phy_over_mdic() {
    let mut rig = Rig::new();
    let id1 = rig.mdic_read(1, 2);
    assert_ne!(id1 & Mdic::READY.bits(), 0);
    assert_eq!(id1 & Mdic::ERROR.bits(), 0);
    assert_eq!(id1 & 0xffff, u32::from(phy::ID1));
    assert_eq!(rig.mdic_read(1, 3) & 0xffff, u32::from(phy::ID2));
    let bmsr = rig.mdic_read(1, 1) & 0xffff;
    assert_ne!(bmsr & u32::from(phy::BMSR_LINK), 0);
    assert_ne!(bmsr & u32::from(phy::BMSR_AN_COMPLETE), 0);
    // Another PHY address: error.
    assert_ne!(rig.mdic_read(2, 1) & Mdic::ERROR.bits(), 0);
    // Write ANAR, read it back; BMCR reset self-clears.
    rig.w(
        MDIC,
        Mdic::OP_WRITE.bits() | 1 << MDIC_PHY_SHIFT | 4 << MDIC_REG_SHIFT | 0x01e1,
    );
    assert_ne!(rig.r(MDIC) & Mdic::READY.bits(), 0);
    assert_eq!(rig.mdic_read(1, 4) & 0xffff, 0x01e1);
    rig.w(
        MDIC,
        Mdic::OP_WRITE.bits() | 1 << MDIC_PHY_SHIFT | u32::from(phy::BMCR_RESET),
    );
    assert_eq!(rig.mdic_read(1, 0) & u32::from(phy::BMCR_RESET), 0);
    assert_eq!(rig.mdic_read(1, 4) & 0xffff, 0x0de1, "reset restores ANAR");
    // Link down: STATUS.LU and BMSR link clear, LSC raised.
    rig.w(IMS, Cause::LSC.bits());
    rig.dev.set_link(false);
    assert!(rig.level());
    assert_eq!(rig.r(STATUS) & Status::LU.bits(), 0);
    assert_eq!(rig.mdic_read(1, 1) & u32::from(phy::BMSR_LINK), 0);
    assert_ne!(rig.r(ICR) & Cause::LSC.bits(), 0);
    assert!(!rig.level());
}

#[test]
fn tx_frame_over_three_descriptors() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    let frame = udp_frame(1000, 7, &[0xab; 100]);
    let parts = [(0usize, 20usize), (20, 50), (50, frame.len())];
    for (i, &(a, b)) in parts.iter().enumerate() {
        let addr = TX_BUFS + i as u64 * 0x1000;
        rig.mem
            .write_slice(&frame[a..b], GuestAddress(addr))
            .unwrap();
        let cmd = if i == 2 {
            TxCmd::EOP | TxCmd::IFCS | TxCmd::RS
        } else {
            TxCmd::IFCS
        };
        rig.tx_legacy(i as u64, addr, (b - a) as u16, cmd);
    }
    rig.w(IMS, Cause::TXDW.bits());
    rig.w(TDT, 3);
    let sent = rig.backend.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, frame);
    assert_eq!(sent[0].0, FrameMeta::default());
    assert_eq!(rig.r(TDH), 3);
    assert_eq!(rig.tx_status(2) & TX_STATUS_DD, TX_STATUS_DD);
    assert_eq!(rig.tx_status(0) & TX_STATUS_DD, 0, "no RS, no write-back");
    assert!(rig.level());
    let icr = rig.r(ICR);
    assert_ne!(icr & Cause::TXDW.bits(), 0);
    assert_ne!(icr & Cause::INT_ASSERTED.bits(), 0);
    assert!(!rig.level());
    assert_eq!(rig.r(GPTC), 1);
    assert_eq!(rig.r(GOTCL), frame.len() as u32);
    assert_eq!(rig.r(GOTCH), 0);
    assert_eq!(rig.dev.counters().tx_frames, 1);
}

/// Context descriptor + data descriptors with POPTS: the IP header checksum and the UDP or
/// TCP checksum are inserted; the frames check out against the pseudo-header.
#[test]
fn context_descriptor_checksum_insertion() {
    for (proto, tucso) in [(17u8, 40u8), (6, 50)] {
        let mut rig = Rig::new();
        rig.tx_setup(8);
        let mut frame = udp_frame(1000, 7, &[0x5a; 77]);
        if proto == 6 {
            // Rebuild as TCP: 20-byte header, data offset 5, the rest as UDP's payload.
            frame.truncate(34);
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
            tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = 0x18;
            frame.extend_from_slice(&tcp);
            frame.extend_from_slice(&[0x33; 61]);
            let ip_len = (frame.len() - 14) as u16;
            frame[16..18].copy_from_slice(&ip_len.to_be_bytes());
        }
        frame[23] = proto;
        frame[22] = 64;
        frame[24..26].fill(0);
        // The driver's part: the pseudo-header sum, uncomplemented, in the L4 field.
        let partial = pseudo_sum(&frame, proto) as u16;
        let at = usize::from(tucso);
        frame[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        // Context descriptor at index 0.
        let mut c = [0u8; 16];
        c[0] = 14; // IPCSS
        c[1] = 24; // IPCSO
        c[2..4].copy_from_slice(&33u16.to_le_bytes()); // IPCSE
        c[4] = 34; // TUCSS
        c[5] = tucso;
        c[8..12].copy_from_slice(
            &(DTYP_CONTEXT << 20 | (TxCmd::DEXT.bits() as u32) << 24).to_le_bytes(),
        );
        rig.mem.write_slice(&c, GuestAddress(TX_RING)).unwrap();
        // Two data descriptors.
        let split = 30;
        for (i, part) in [&frame[..split], &frame[split..]].iter().enumerate() {
            let addr = TX_BUFS + i as u64 * 0x1000;
            rig.mem.write_slice(part, GuestAddress(addr)).unwrap();
            let mut cmd = TxCmd::DEXT | TxCmd::IFCS;
            if i == 1 {
                cmd |= TxCmd::EOP | TxCmd::RS;
            }
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            let lower = part.len() as u32 | DTYP_DATA << 20 | u32::from(cmd.bits()) << 24;
            d[8..12].copy_from_slice(&lower.to_le_bytes());
            d[13] = POPTS_IXSM | POPTS_TXSM;
            rig.mem
                .write_slice(&d, GuestAddress(TX_RING + (i as u64 + 1) * 16))
                .unwrap();
        }
        rig.w(TDT, 3);
        let sent = rig.backend.sent();
        assert_eq!(sent.len(), 1, "proto {proto}");
        let out = &sent[0].1;
        assert_eq!(ones_sum(&out[14..34], 0), 0xffff, "IP header checksum");
        assert_ne!(out[24..26], [0, 0]);
        let l4 = ones_sum(&out[34..], pseudo_sum(out, proto));
        assert_eq!(l4, 0xffff, "proto {proto}: L4 checksum");
        assert_ne!(out[at..at + 2], partial.to_be_bytes());
        assert_eq!(out[..24], frame[..24]);
        assert_eq!(rig.dev.counters().tx_bad_checksum_offsets, 0);
    }
}

#[test]
fn rx_into_ring_with_interrupt() {
    let mut rig = Rig::new();
    rig.rx_setup(8, 7);
    let f = frame_to_us(100, 3);
    rig.backend.push(&f, FrameMeta::default());
    // Masked: the cause is latched, the line stays low.
    rig.dev.rx_pass();
    assert!(!rig.level());
    let (len, status, errors) = rig.rx_desc(0);
    assert_eq!(len, 100);
    assert_eq!(status & (RxStatus::DD | RxStatus::EOP).bits(), 0x03);
    assert_eq!(errors, 0);
    assert_eq!(rig.rx_buf(0, 100), f);
    assert_eq!(rig.r(RDH), 1);
    // Unmasking a latched cause raises the line; reading ICR lowers it.
    rig.w(IMS, Cause::RXT0.bits());
    assert!(rig.level());
    assert_eq!(rig.r(IMS), Cause::RXT0.bits());
    let icr = rig.r(ICR);
    assert_ne!(icr & Cause::RXT0.bits(), 0);
    assert!(!rig.level());
    assert_eq!(rig.r(ICR), 0, "read clears");
    // A short frame is padded to 60; without SECRC the length carries the FCS.
    rig.w(RCTL, (Rctl::EN | Rctl::BAM).bits());
    rig.backend.push(&frame_to_us(20, 9), FrameMeta::default());
    rig.dev.rx_pass();
    assert!(rig.level());
    assert_eq!(rig.rx_desc(1).0, 64);
    // ICS sets a cause; IMC masks it.
    rig.r(ICR);
    rig.w(ICS, Cause::TXDW.bits());
    assert!(!rig.level());
    rig.w(IMS, Cause::TXDW.bits());
    assert!(rig.level());
    rig.w(IMC, Cause::TXDW.bits());
    assert!(!rig.level());
    assert_eq!(rig.r(GPRC), 2);
    assert_eq!(rig.r(GPRC), 0);
}

#[test]
fn rx_filter() {
    let mut rig = Rig::new();
    rig.rx_setup(8, 7);
    let mut other = frame_to_us(64, 0);
    other[5] = 0x99;
    let mut bcast = frame_to_us(64, 1);
    bcast[0..6].fill(0xff);
    let mut mcast = frame_to_us(64, 2);
    mcast[0..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
    for f in [&other, &bcast, &mcast] {
        rig.backend.push(f, FrameMeta::default());
    }
    rig.dev.rx_pass();
    assert_eq!(rig.r(RDH), 1, "only the broadcast");
    assert_eq!(rig.rx_buf(0, 64), bcast);
    assert_eq!(rig.dev.counters().rx_filtered, 2);
    assert_eq!(rig.r(BPRC), 1);
    // The MTA bit for 01:00:5e:00:00:fb with MO = 0: bits 47:36 of the address.
    let hash = (0xfb00u32 >> 4) & 0xfff;
    rig.w(MTA_BASE + u64::from(hash >> 5) * 4, 1 << (hash & 31));
    rig.backend.push(&mcast, FrameMeta::default());
    rig.backend.push(&other, FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.r(RDH), 2);
    assert_eq!(rig.rx_buf(1, 64), mcast);
    // Promiscuous takes the other unicast too.
    rig.w(RCTL, (Rctl::EN | Rctl::UPE | Rctl::SECRC).bits());
    rig.backend.push(&other, FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.r(RDH), 3);
}

/// Ring full: the frame stays with the device/backend (nothing dropped); the RDT write that
/// gives room takes them and wakes the backend thread.
#[test]
fn rx_ring_full_holds_frames_until_rdt() {
    let mut rig = Rig::new();
    let resume = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    rig.dev.set_rx_resume(resume.try_clone().unwrap());
    rig.rx_setup(8, 2);
    // Enabling RX resumed the (idle) thread once.
    let _ = resume.read();
    for i in 0..5 {
        rig.backend.push(&frame_to_us(200, i), FrameMeta::default());
    }
    rig.dev.rx_pass();
    assert_eq!(rig.r(RDH), 2);
    assert!(rig.dev.rx_blocked());
    assert_eq!(
        rig.backend.waiting(),
        2,
        "one frame held in the device, two in the backend"
    );
    assert_eq!(rig.dev.counters().rx_dropped, 0);
    assert_eq!(rig.dev.counters().rx_holds, 1);
    assert_eq!(rig.r(MPC), 0);
    assert_eq!(rig.r(RNBC), 1);
    // A second pass with no room takes nothing more and counts no second hold.
    rig.dev.rx_pass();
    assert_eq!(rig.backend.waiting(), 2);
    assert_eq!(rig.dev.counters().rx_holds, 1);
    assert!(resume.read().is_err(), "not resumed yet");
    rig.w(RDT, 6);
    assert_eq!(rig.r(RDH), 5);
    assert_eq!(rig.backend.waiting(), 0);
    assert!(!rig.dev.rx_blocked());
    assert_eq!(resume.read().unwrap(), 1);
    for i in 0..5u8 {
        assert_eq!(
            rig.rx_buf(u64::from(i), 200),
            frame_to_us(200, i),
            "frame {i} in order"
        );
    }
    assert_eq!(rig.dev.counters().rx_frames, 5);
    // RX disabled: frames wait in the backend too.
    rig.w(RCTL, 0);
    rig.backend.push(&frame_to_us(64, 9), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.backend.waiting(), 1);
    assert!(rig.dev.rx_blocked());
    rig.w(RCTL, (Rctl::EN | Rctl::SECRC).bits());
    assert_eq!(rig.backend.waiting(), 0);
    assert_eq!(rig.r(RDH), 6);
}

#[test]
fn stats_clear_on_read() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    for i in 0..2u64 {
        rig.mem
            .write_slice(&[0xffu8; 60], GuestAddress(TX_BUFS))
            .unwrap();
        rig.tx_legacy(i, TX_BUFS, 60, TxCmd::EOP | TxCmd::RS);
    }
    rig.w(TDT, 2);
    assert_eq!(rig.r(TPT), 2);
    assert_eq!(rig.r(TPT), 0);
    assert_eq!(rig.r(BPTC), 2);
    // The 64-bit pair: the low half reads without clearing; the high half clears both.
    assert_eq!(rig.r(GOTCL), 120);
    assert_eq!(rig.r(GOTCL), 120);
    assert_eq!(rig.r(GOTCH), 0);
    assert_eq!(rig.r(GOTCL), 0);
    assert_eq!(rig.r(GPTC), 2);
    assert_eq!(rig.r(GPTC), 0);
    // Writes to statistics are ignored.
    rig.w(GPTC, 55);
    assert_eq!(rig.r(GPTC), 0);
}

#[test]
fn hostile_tx() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    // A buffer outside RAM: dropped, counted, DD still written back.
    rig.tx_legacy(0, OUTSIDE, 64, TxCmd::EOP | TxCmd::RS);
    // A giant frame: three 1000-byte buffers.
    for i in 1..4 {
        let cmd = if i == 3 {
            TxCmd::EOP | TxCmd::RS
        } else {
            TxCmd::empty()
        };
        rig.tx_legacy(i, TX_BUFS, 1000, cmd);
    }
    // A 64 KiB length in one legacy descriptor (the field's maximum).
    rig.tx_legacy(4, TX_BUFS, 0xffff, TxCmd::EOP | TxCmd::RS);
    // A frame with no buffer.
    rig.tx_legacy(5, 0, 0, TxCmd::EOP | TxCmd::RS);
    rig.w(TDT, 6);
    assert!(rig.backend.sent().is_empty());
    let c = rig.dev.counters();
    assert_eq!(c.tx_empty, 1);
    assert_eq!(rig.tx_status(5) & TX_STATUS_DD, TX_STATUS_DD);
    assert_eq!(c.tx_buffer_fault, 1);
    assert_eq!(c.tx_oversize, 2);
    assert_eq!(rig.tx_status(0) & TX_STATUS_DD, TX_STATUS_DD);
    assert_eq!(rig.r(TDH), 6);
    // TDT beyond the ring: ignored, counted.
    rig.w(TDT, 8);
    assert_eq!(rig.r(TDT), 6);
    rig.w(TDH, 100);
    assert_eq!(rig.r(TDH), 6);
    assert_eq!(rig.dev.counters().bad_index_writes, 2);
    // The ring itself outside RAM: every descriptor a counted fault, no panic, head moves on.
    rig.w(TDBAL, OUTSIDE as u32);
    rig.w(TDBAH, 0x10);
    rig.w(TDLEN, 8 * 16);
    assert_eq!(
        (rig.r(TDH), rig.r(TDT)),
        (6, 6),
        "a new length keeps head and tail"
    );
    rig.w(TDH, 0);
    rig.w(TDT, 0);
    rig.w(TDT, 3);
    assert_eq!(rig.dev.counters().tx_desc_fault, 3);
    assert_eq!(rig.r(TDH), 3);
    // A base so high that base + index overflows is a fault too.
    rig.w(TDBAL, 0xffff_fff0);
    rig.w(TDBAH, 0xffff_ffff);
    rig.w(TDLEN, 8 * 16);
    rig.w(TDH, 0);
    rig.w(TDT, 2);
    assert_eq!(rig.dev.counters().tx_desc_fault, 5);
    // A zero-length ring: nothing happens; indices written meanwhile cannot be checked, and
    // a length they fall outside of restarts them at 0.
    rig.w(TDLEN, 0);
    assert_eq!((rig.r(TDH), rig.r(TDT)), (0, 0));
    rig.w(TDT, 100);
    assert_eq!(rig.r(TDH), 0);
    assert!(rig.backend.sent().is_empty());
    // A TSE data descriptor under a context without MSS: dropped and counted.
    rig.w(TDBAL, TX_RING as u32);
    rig.w(TDBAH, 0);
    rig.w(TDLEN, 8 * 16);
    assert_eq!((rig.r(TDH), rig.r(TDT)), (0, 0));
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&TX_BUFS.to_le_bytes());
    let cmd = TxCmd::DEXT | TxCmd::IC_TSE | TxCmd::EOP;
    d[8..12].copy_from_slice(&(64 | DTYP_DATA << 20 | u32::from(cmd.bits()) << 24).to_le_bytes());
    rig.mem.write_slice(&d, GuestAddress(TX_RING)).unwrap();
    rig.w(TDT, 1);
    assert_eq!(rig.dev.counters().tx_tso_dropped, 1);
    assert!(rig.backend.sent().is_empty());
}

#[test]
fn hostile_rx() {
    let mut rig = Rig::new();
    // A zero-length ring: the frame waits, nothing is written.
    rig.w(RCTL, (Rctl::EN | Rctl::BAM).bits());
    rig.backend.push(&frame_to_us(64, 0), FrameMeta::default());
    rig.dev.rx_pass();
    assert!(rig.dev.rx_blocked());
    assert_eq!(rig.dev.counters().rx_dropped, 0);
    // RDT beyond the ring: ignored, counted.
    rig.rx_setup(8, 7);
    assert_eq!(
        rig.r(RDH),
        1,
        "the waiting frame went in once the ring was there"
    );
    rig.w(RDT, 8);
    assert_eq!(rig.r(RDT), 7);
    assert_eq!(rig.dev.counters().bad_index_writes, 1);
    // A buffer outside RAM: the descriptor comes back with RXE, the ring moves on.
    let mut d = [0u8; 16];
    d[0..8].copy_from_slice(&OUTSIDE.to_le_bytes());
    rig.mem.write_slice(&d, GuestAddress(RX_RING + 16)).unwrap();
    rig.backend.push(&frame_to_us(64, 1), FrameMeta::default());
    rig.dev.rx_pass();
    let (_, status, errors) = rig.rx_desc(1);
    assert_eq!(status & RxStatus::DD.bits(), RxStatus::DD.bits());
    assert_eq!(errors, 0x80);
    assert_eq!(rig.dev.counters().rx_buffer_fault, 1);
    // A ring outside RAM: frames dropped, counted (MPC, RXO), no panic.
    rig.w(RDBAL, OUTSIDE as u32);
    rig.w(RDLEN, 8 * 16);
    rig.w(RDT, 7);
    rig.w(IMS, Cause::RXO.bits());
    rig.backend.push(&frame_to_us(64, 2), FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.dev.counters().rx_desc_fault, 1);
    assert_eq!(rig.dev.counters().rx_dropped, 1);
    assert_eq!(rig.r(MPC), 1);
    assert!(rig.level());
    // 256-byte buffers: a 1514-byte frame spans 6 descriptors, EOP on the last.
    rig.r(ICR);
    rig.rx_setup(8, 7);
    rig.w(RCTL, (Rctl::EN | Rctl::SECRC).bits() | 3 << 16);
    assert_eq!(rig.dev.rx_buffer_size(), 256);
    let big = frame_to_us(1514, 3);
    rig.backend.push(&big, FrameMeta::default());
    rig.dev.rx_pass();
    assert_eq!(rig.r(RDH), 6);
    assert_eq!(
        rig.rx_desc(5).1 & RxStatus::EOP.bits(),
        RxStatus::EOP.bits()
    );
    assert_eq!(rig.rx_desc(0).1 & RxStatus::EOP.bits(), 0);
    assert_eq!(rig.rx_desc(0).0, 256);
    assert_eq!(rig.rx_desc(5).0, 1514 - 5 * 256);
    let mut got = Vec::new();
    for i in 0..6 {
        let mut chunk = vec![0u8; 256];
        rig.mem
            .read_slice(&mut chunk, GuestAddress(RX_BUFS + i * 2048))
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got[..1514], big[..]);
}

/// The I/O window reaches the same registers.
#[test]
fn io_bar_indirect_access() {
    let mut rig = Rig::new();
    rig.dev
        .config_mut()
        .enable(crate::devices::pci::config::CMD_IO);
    rig.dev.io_write(IOADDR, &(STATUS as u32).to_le_bytes());
    let mut b = [0u8; 4];
    rig.dev.io_read(IODATA, &mut b);
    assert_eq!(u32::from_le_bytes(b), rig.r(STATUS));
    rig.dev.io_write(IOADDR, &(IMS as u32).to_le_bytes());
    rig.dev.io_write(IODATA, &Cause::RXT0.bits().to_le_bytes());
    assert_eq!(rig.r(IMS), Cause::RXT0.bits());
    // Beyond BAR0: reads 0.
    rig.dev.io_write(IOADDR, &0x1_fffcu32.to_le_bytes());
    rig.dev.io_read(IODATA, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0);
}

/// Memory decode off: BAR0 floats; bus mastering off: TX waits, memory untouched.
#[test]
fn command_register_honoured() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    rig.mem
        .write_slice(&[1u8; 60], GuestAddress(TX_BUFS))
        .unwrap();
    rig.tx_legacy(0, TX_BUFS, 60, TxCmd::EOP | TxCmd::RS);
    rig.dev.config_write(4, &CMD_MEM.to_le_bytes());
    rig.w(TDT, 1);
    assert!(rig.backend.sent().is_empty());
    assert_eq!(rig.tx_status(0), 0);
    rig.dev
        .config_write(4, &(CMD_MEM | CMD_BUS_MASTER).to_le_bytes());
    assert_eq!(
        rig.backend.sent().len(),
        1,
        "bus mastering on runs the waiting TX"
    );
    rig.dev.config_write(4, &0u16.to_le_bytes());
    assert_eq!(rig.r(STATUS), 0xffff_ffff);
}

/// The fake clock of [`itr_moderates_interrupts`]: a fixed base plus microseconds set by it.
static FAKE_MICROS: AtomicU64 = AtomicU64::new(0);

fn fake_now() -> std::time::Instant {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(std::time::Instant::now)
        + std::time::Duration::from_micros(FAKE_MICROS.load(Ordering::SeqCst))
}

/// ITR: once the line rose, it rises again only after the interval; a cause in between waits
/// in ICR, and the timer (or any access after the deadline) raises it. ITR = 0 lets it go.
#[test]
fn itr_moderates_interrupts() {
    let mut rig = Rig::new();
    rig.dev.set_clock(fake_now);
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    rig.dev.set_rx_resume(wake.try_clone().unwrap());
    // 1000 * 256 ns = 256 us.
    rig.w(ITR, 1000);
    assert_eq!(rig.r(ITR), 1000);
    rig.w(IMS, Cause::TXDW.bits());
    rig.w(ICS, Cause::TXDW.bits());
    assert!(rig.level(), "the first interrupt goes at once");
    assert_ne!(rig.r(ICR), 0);
    assert!(!rig.level());
    FAKE_MICROS.fetch_add(100, Ordering::SeqCst);
    rig.w(ICS, Cause::TXDW.bits());
    assert!(!rig.level(), "held: 100 of 256 us");
    let due = rig.dev.irq_deadline().expect("a deadline");
    assert_eq!(due - fake_now(), std::time::Duration::from_micros(156));
    assert_eq!(wake.read().unwrap(), 1, "the thread was woken to time it");
    rig.dev.irq_timer();
    assert!(!rig.level(), "not yet due");
    FAKE_MICROS.fetch_add(156, Ordering::SeqCst);
    rig.dev.irq_timer();
    assert!(rig.level(), "due");
    assert_eq!(rig.dev.irq_deadline(), None);
    // Causes that come while the line is high need no new interrupt.
    rig.w(ICS, Cause::RXT0.bits());
    assert_eq!(rig.r(ICR) & Cause::TXDW.bits(), Cause::TXDW.bits());
    // Held again; switching moderation off releases it.
    rig.w(ICS, Cause::TXDW.bits());
    assert!(!rig.level());
    rig.w(ITR, 0);
    assert!(rig.level());
    assert_eq!(rig.dev.irq_deadline(), None);
}

/// TSE: one 54-byte header and 2500 bytes of payload with MSS 1000 leave as three segments,
/// each with its IP length and ID, TCP sequence number, FIN/PSH only on the last, and valid
/// checksums (the driver's TCP field held the pseudo-header sum without the length).
#[test]
fn tso_segments_a_tcp_frame() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    let payload: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
    let mut f = udp_frame(1000, 80, &[]);
    f.truncate(34);
    f[23] = 6;
    f[22] = 64;
    f[18..20].copy_from_slice(&7u16.to_be_bytes()); // IP ID
    f[24..26].fill(0);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&1000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&5000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x19; // FIN | PSH | ACK
    f.extend_from_slice(&tcp);
    // The pseudo-header sum without the length, as Linux's driver leaves it.
    let mut p = Vec::new();
    p.extend_from_slice(&f[26..34]);
    p.extend_from_slice(&[0, 6, 0, 0]);
    let partial = ones_sum(&p, 0) as u16;
    f[50..52].copy_from_slice(&partial.to_be_bytes());
    f.extend_from_slice(&payload);
    // Context: IP at 14 (checksum at 24, up to 33), TCP at 34 (checksum at 50), TSE.
    let mut c = [0u8; 16];
    c[0] = 14;
    c[1] = 24;
    c[2..4].copy_from_slice(&33u16.to_le_bytes());
    c[4] = 34;
    c[5] = 50;
    let tucmd = (TxCmd::DEXT | TxCmd::IC_TSE).bits() | 0x03; // IP | TCP
    c[8..12].copy_from_slice(&(2500 | DTYP_CONTEXT << 20 | u32::from(tucmd) << 24).to_le_bytes());
    c[13] = 54;
    c[14..16].copy_from_slice(&1000u16.to_le_bytes());
    rig.mem.write_slice(&c, GuestAddress(TX_RING)).unwrap();
    // The header in one buffer, the payload in another.
    for (i, part) in [&f[..54], &f[54..]].iter().enumerate() {
        let addr = TX_BUFS + i as u64 * 0x1000;
        rig.mem.write_slice(part, GuestAddress(addr)).unwrap();
        let mut cmd = TxCmd::DEXT | TxCmd::IC_TSE;
        if i == 1 {
            cmd |= TxCmd::EOP | TxCmd::RS;
        }
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        let lower = part.len() as u32 | DTYP_DATA << 20 | u32::from(cmd.bits()) << 24;
        d[8..12].copy_from_slice(&lower.to_le_bytes());
        d[13] = POPTS_IXSM | POPTS_TXSM;
        rig.mem
            .write_slice(&d, GuestAddress(TX_RING + (i as u64 + 1) * 16))
            .unwrap();
    }
    rig.w(TDT, 3);
    let sent = rig.backend.sent();
    assert_eq!(sent.len(), 3);
    let mut joined = Vec::new();
    for (i, (_, s)) in sent.iter().enumerate() {
        let want = if i < 2 { 1000 } else { 500 };
        assert_eq!(s.len(), 54 + want, "segment {i}");
        assert_eq!(s[..14], f[..14]);
        assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, 40 + want);
        assert_eq!(u16::from_be_bytes([s[18], s[19]]), 7 + i as u16);
        assert_eq!(ones_sum(&s[14..34], 0), 0xffff, "segment {i}: IP checksum");
        let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
        assert_eq!(seq, 5000 + 1000 * i as u32);
        assert_eq!(
            s[47],
            if i == 2 { 0x19 } else { 0x10 },
            "segment {i}: flags"
        );
        assert_eq!(
            ones_sum(&s[34..], pseudo_sum(s, 6)),
            0xffff,
            "segment {i}: TCP checksum"
        );
        joined.extend_from_slice(&s[54..]);
    }
    assert_eq!(joined, payload);
    assert_eq!(rig.dev.counters().tx_frames, 3);
    assert_eq!(rig.dev.counters().tx_tso_dropped, 0);
}

/// A backend without room (a full stream socket or TAP queue) stops transmission at a
/// frame's first descriptor: TDH stays there, the descriptor is not done, nothing is dropped.
/// A retry without room changes nothing; with room it sends the rest.
#[test]
fn tx_waits_for_backend_room() {
    let mut rig = Rig::new();
    rig.tx_setup(8);
    for i in 0..5u64 {
        let buf = TX_BUFS + i * 2048;
        rig.mem
            .write_slice(&[i as u8 + 1; 60], GuestAddress(buf))
            .unwrap();
        rig.tx_legacy(i, buf, 60, TxCmd::EOP | TxCmd::RS);
    }
    rig.backend.set_tx_room(Some(2));
    rig.w(TDT, 5);
    assert_eq!(rig.backend.sent().len(), 2);
    assert_eq!(rig.r(TDH), 2);
    assert!(rig.dev.tx_stalled());
    assert_eq!(rig.tx_status(1) & TX_STATUS_DD, TX_STATUS_DD);
    assert_eq!(rig.tx_status(2) & TX_STATUS_DD, 0, "not sent, not done");
    rig.dev.tx_retry();
    assert_eq!(rig.backend.sent().len(), 2);
    assert_eq!(
        rig.dev.counters().tx_stalls,
        1,
        "one stall, however often retried"
    );
    rig.backend.set_tx_room(None);
    rig.dev.tx_retry();
    assert!(!rig.dev.tx_stalled());
    assert_eq!(rig.r(TDH), 5);
    let sent: Vec<u8> = rig.backend.sent().iter().map(|(_, f)| f[0]).collect();
    assert_eq!(sent, [1, 2, 3, 4, 5], "all of them, in order");
    let c = rig.dev.counters();
    assert_eq!((c.tx_frames, c.tx_backend_errors), (5, 0));
}

/// A frame a TAP with vnet_hdr hands over with NEEDS_CSUM reaches the guest with its checksum
/// finished (the driver cannot know it was partial); one whose range lies outside it is
/// dropped and counted.
#[test]
fn rx_finishes_a_partial_checksum() {
    use crate::backends::net::ChecksumRequest;
    use crate::devices::virtio::net::checksum;
    let mut rig = Rig::new();
    rig.rx_setup(8, 7);
    let f = frame_to_us(100, 3);
    let partial = |start| FrameMeta {
        needs_csum: Some(ChecksumRequest { start, offset: 6 }),
        data_valid: false,
    };
    rig.backend.push(&f, partial(34));
    rig.backend.push(&f, partial(200));
    rig.dev.rx_pass();
    let got = rig.rx_buf(0, 100);
    // The field held the pseudo-header's sum: with it, the finished range sums to 0xffff.
    let pseudo = [f[40], f[41]];
    assert!(
        checksum::verifies(&[&got[34..], &pseudo[..]].concat()),
        "{got:x?}"
    );
    assert_ne!(got[40..42], f[40..42]);
    assert_eq!((&got[..40], &got[42..]), (&f[..40], &f[42..]));
    assert_eq!(rig.r(RDH), 1, "the bad range is not delivered");
    assert_eq!(rig.dev.counters().rx_dropped, 1);
}

/// A TX ring across a hole in RAM: every descriptor that starts in the hole is a counted fault
/// (the hole is passed in one step), and the descriptors in RAM on either side of it still
/// send their frames.
#[test]
fn a_tx_ring_across_a_hole_in_ram_faults_each_descriptor_in_it_and_sends_the_rest() {
    // RAM, a 64 KiB hole (4096 descriptors), 64 KiB more RAM.
    const HOLE: u64 = RAM;
    const AFTER: u64 = HOLE + 0x1_0000;
    let mut rig = Rig::with_ram(&[(0, RAM), (AFTER, 0x1_0000)]);
    let count = 8192u32;
    let put = |rig: &Rig, base: u64, i: u64, buf: u64| {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&buf.to_le_bytes());
        d[8..10].copy_from_slice(&60u16.to_le_bytes());
        d[11] = (TxCmd::EOP | TxCmd::RS).bits();
        rig.mem
            .write_slice(&d, GuestAddress(base + i * 16))
            .unwrap();
    };
    // TX on, its ring of `count` descriptors at `base`, head and tail at 0.
    let ring_at = |rig: &mut Rig, base: u64| {
        rig.tx_setup(8);
        rig.w(TDBAL, base as u32);
        rig.w(TDLEN, count * 16);
        rig.w(TDH, 0);
        rig.w(TDT, 0);
    };
    let frame = udp_frame(1, 2, &[7; 18]);
    rig.mem.write_slice(&frame, GuestAddress(TX_BUFS)).unwrap();
    // Two descriptors below the hole, 4096 in it, then two above it.
    let base = HOLE - 32;
    for i in [0, 1, 4098, 4099] {
        put(&rig, base, i, TX_BUFS);
    }
    ring_at(&mut rig, base);
    rig.w(TDT, 4100);
    assert_eq!(rig.dev.counters().tx_desc_fault, 4096);
    assert_eq!(rig.r(TDH), 4100);
    assert_eq!(
        rig.backend.sent().len(),
        4,
        "the frames on both sides of the hole"
    );
    for i in [0, 1, 4098, 4099] {
        let status: u8 = rig.mem.read_obj(GuestAddress(base + i * 16 + 12)).unwrap();
        assert_eq!(status & TX_STATUS_DD, TX_STATUS_DD, "descriptor {i}");
    }

    // A ring that starts in the hole: the pass stops at the tail inside it...
    let mut rig = Rig::with_ram(&[(0, RAM), (AFTER, 0x1_0000)]);
    ring_at(&mut rig, HOLE);
    rig.w(TDT, 100);
    assert_eq!(rig.dev.counters().tx_desc_fault, 100);
    assert_eq!(rig.r(TDH), 100);
    // ...and at the ring's end, going on from its start: all but one descriptor of a lap,
    // 4096 - 100 in the hole, 4096 of zeros in RAM (no frame), 99 in the hole again.
    put(&rig, HOLE, 4096, TX_BUFS);
    rig.w(TDT, 99);
    assert_eq!(rig.dev.counters().tx_desc_fault, 100 + 3996 + 99);
    assert_eq!(rig.r(TDH), 99);
    assert_eq!(rig.backend.sent().len(), 1, "the one frame in RAM");
    // A backend with no room stops the pass before the hole, as before.
    rig.backend.set_tx_room(Some(0));
    rig.w(TDT, 150);
    assert_eq!(rig.r(TDH), 99);
    assert_eq!(rig.dev.counters().tx_desc_fault, 100 + 3996 + 99);
}
