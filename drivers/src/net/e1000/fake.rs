//! A fake 82540EM behind a fake [`Platform`], for host tests: PCI config space through
//! 0xCF8/0xCFC, the register file in BAR0, an EEPROM, a PHY, and DMA memory the device reads
//! descriptors and frames from and writes them to, like the real part. TX runs when TDT is
//! written; RX takes frames a test hands it. Knobs make it misbehave.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use super::regs::{eerd, mdic, reg, Ctrl, Intr, RxDesc, TxCmd};
use crate::net::checksum::{fold, sum_words};
use crate::pci::{Bar, PciAddress, PciFunction, CONFIG_ADDRESS, CONFIG_DATA};
use crate::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};
use zerocopy::IntoBytes;

pub const BAR0: u64 = 0xFEB0_0000;
pub const BAR0_SIZE: u64 = 0x2_0000;
pub const DMA_BASE: u64 = 0x10_0000;
pub const DMA_SIZE: usize = 8 << 20;
pub const VECTOR: u8 = 0x59;
pub const ADDR: PciAddress = PciAddress::new(0, 3, 0);
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// The EEPROM QEMU's e1000 starts from: the MAC in words 0..3, word 0x3F making the sum
/// 0xBABA.
pub fn eeprom(mac: [u8; 6]) -> [u16; 64] {
    let mut e = [0u16; 64];
    for i in 0..3 {
        e[i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    e[0x0A] = 0x6CF2;
    let sum = e[..0x3F].iter().fold(0u16, |s, w| s.wrapping_add(*w));
    e[0x3F] = 0xBABAu16.wrapping_sub(sum);
    e
}

/// The 82540EM as enumeration reports it.
pub fn function() -> PciFunction {
    PciFunction {
        address: ADDR,
        vendor_id: 0x8086,
        device_id: 0x100E,
        class: 2,
        subclass: 0,
        prog_if: 0,
        revision: 3,
        header_type: 0,
        subsystem_vendor_id: 0x1AF4,
        subsystem_id: 0x1100,
        interrupt_line: 11,
        interrupt_pin: 1,
        bars: [
            Some(Bar::Memory {
                addr: BAR0,
                size: BAR0_SIZE,
                is_64: false,
                prefetchable: false,
            }),
            None,
            None,
            None,
            None,
            None,
        ],
        capabilities: Vec::new(),
        secondary_bus: None,
        issues: Vec::new(),
    }
}

/// The device's state, open to tests.
#[derive(Debug)]
pub struct Device {
    /// Registers without behaviour of their own (RAL/RAH, MTA, RCTL, TCTL, ring bases, ...).
    pub regs: BTreeMap<u64, u32>,
    pub ctrl: u32,
    pub link_up: bool,
    pub icr: u32,
    pub ims: u32,
    pub eerd: u32,
    pub mdic: u32,
    pub rdh: u32,
    pub rdt: u32,
    pub tdh: u32,
    pub tdt: u32,
    pub eeprom: [u16; 64],
    /// Frames transmitted, FCS not included.
    pub sent: Vec<Vec<u8>>,
    pub tdt_writes: u32,
    pub rdt_writes: u32,
    pub resets: u32,
    /// TX context: (tucss, tucso, tucse).
    context: (u8, u8, u16),
    partial: Vec<u8>,
    partial_txsm: bool,
    // Misbehaviour.
    /// CTRL.RST never clears.
    pub reset_stuck: bool,
    /// EERD never reports DONE.
    pub eeprom_stuck: bool,
    /// RX descriptors are written back with this length instead of the frame's.
    pub wild_rx_len: Option<u16>,
    /// RX descriptors are written back with these error bits, and with this status (DD set
    /// regardless) instead of DD | EOP.
    pub rx_error_bits: u8,
    pub rx_status: Option<u8>,
    /// Reads of RDH / TDH return this instead.
    pub rdh_read: Option<u32>,
    pub tdh_read: Option<u32>,
    /// TDT writes do not start transmission.
    pub tx_stalled: bool,
}

/// The fake machine: config space, the device, DMA memory, interrupts and a clock.
pub struct FakePlatform {
    cfg: RefCell<[u8; 256]>,
    cfg_addr: Cell<u32>,
    pub dev: RefCell<Device>,
    mem: *mut u8,
    dma_next: Cell<u64>,
    dma_live: RefCell<BTreeMap<u64, usize>>,
    irqs: Cell<u64>,
    pub acks: Cell<u64>,
    clock: Cell<u64>,
}

fn mem_layout() -> Layout {
    Layout::from_size_align(DMA_SIZE, 4096).unwrap()
}

impl FakePlatform {
    pub fn new() -> Self {
        let mut cfg = [0u8; 256];
        cfg[0..2].copy_from_slice(&0x8086u16.to_le_bytes());
        cfg[2..4].copy_from_slice(&0x100Eu16.to_le_bytes());
        let mut regs = BTreeMap::new();
        // Stale multicast bits the driver must clear.
        regs.insert(reg::MTA + 8, 0xFFFF_FFFF);
        // SAFETY: a non-zero size and valid alignment; freed in Drop with the same layout.
        let mem = unsafe { alloc_zeroed(mem_layout()) };
        assert!(!mem.is_null());
        Self {
            cfg: RefCell::new(cfg),
            cfg_addr: Cell::new(0),
            dev: RefCell::new(Device {
                regs,
                ctrl: 0,
                link_up: true,
                icr: 0,
                ims: 0,
                eerd: 0,
                mdic: 0,
                rdh: 0,
                rdt: 0,
                tdh: 0,
                tdt: 0,
                eeprom: eeprom(MAC),
                sent: Vec::new(),
                tdt_writes: 0,
                rdt_writes: 0,
                resets: 0,
                context: (0, 0, 0),
                partial: Vec::new(),
                partial_txsm: false,
                reset_stuck: false,
                eeprom_stuck: false,
                wild_rx_len: None,
                rx_error_bits: 0,
                rx_status: None,
                rdh_read: None,
                tdh_read: None,
                tx_stalled: false,
            }),
            mem,
            dma_next: Cell::new(DMA_BASE),
            dma_live: RefCell::new(BTreeMap::new()),
            irqs: Cell::new(0),
            acks: Cell::new(0),
            clock: Cell::new(0),
        }
    }

    /// The PCI command register.
    pub fn command(&self) -> u16 {
        let c = self.cfg.borrow();
        u16::from_le_bytes([c[4], c[5]])
    }

    pub fn reg(&self, offset: u64) -> u32 {
        self.dev.borrow().regs.get(&offset).copied().unwrap_or(0)
    }

    pub fn interrupts(&self) -> u64 {
        self.irqs.get()
    }

    fn phys_range(&self, phys: u64, len: usize) -> *mut u8 {
        assert!(
            phys >= DMA_BASE && phys + len as u64 <= DMA_BASE + DMA_SIZE as u64,
            "device DMA at {phys:#x}+{len} outside memory"
        );
        let live = self.dma_live.borrow();
        let inside = live
            .range(..=phys)
            .next_back()
            .is_some_and(|(&a, &l)| phys + len as u64 <= a + l as u64);
        assert!(
            inside,
            "device DMA at {phys:#x}+{len} outside any allocation"
        );
        // In bounds of `mem` (checked above).
        self.mem.wrapping_add((phys - DMA_BASE) as usize)
    }

    pub fn read_phys(&self, phys: u64, buf: &mut [u8]) {
        let p = self.phys_range(phys, buf.len());
        // SAFETY: `p..p + len` lies inside `mem` (checked); u8 has no alignment needs.
        unsafe { core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len()) }
    }

    pub fn write_phys(&self, phys: u64, data: &[u8]) {
        let p = self.phys_range(phys, data.len());
        // SAFETY: as in `read_phys`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) }
    }

    fn raise(&self, dev: &mut Device, cause: Intr) {
        dev.icr |= cause.bits();
        if dev.icr & dev.ims != 0 {
            self.irqs.set(self.irqs.get() + 1);
        }
    }

    fn ring_base(dev: &Device, lo: u64) -> u64 {
        let r = |o| u64::from(dev.regs.get(&o).copied().unwrap_or(0));
        r(lo) | r(lo + 4) << 32
    }

    fn ring_len(dev: &Device, len_reg: u64) -> u32 {
        dev.regs.get(&len_reg).copied().unwrap_or(0) / 16
    }

    /// Hand the device a frame from the wire; false if it had no RX descriptor (an overrun,
    /// RXO raised) or receive is off.
    pub fn receive_frame(&self, frame: &[u8]) -> bool {
        let mut dev = self.dev.borrow_mut();
        if dev.regs.get(&reg::RCTL).copied().unwrap_or(0) & 2 == 0 {
            return false;
        }
        let n = Self::ring_len(&dev, reg::RDLEN);
        if n == 0 || dev.rdh == dev.rdt {
            self.raise(&mut dev, Intr::RXO);
            return false;
        }
        let at = Self::ring_base(&dev, reg::RDBAL) + u64::from(dev.rdh) * 16;
        let mut d = RxDesc::default();
        self.read_phys(at, d.as_mut_bytes());
        let copy = frame.len().min(2048);
        self.write_phys(d.buffer_addr, &frame[..copy]);
        d.length = dev.wild_rx_len.unwrap_or(copy as u16);
        d.status = dev.rx_status.map_or(0x03, |s| s | 1); // DD | EOP
        d.errors = dev.rx_error_bits;
        self.write_phys(at, d.as_bytes());
        dev.rdh = (dev.rdh + 1) % n;
        self.raise(&mut dev, Intr::RXT0);
        true
    }

    /// Plug or pull the cable: STATUS.LU and an LSC interrupt.
    pub fn set_link(&self, up: bool) {
        let mut dev = self.dev.borrow_mut();
        dev.link_up = up;
        self.raise(&mut dev, Intr::LSC);
    }

    fn transmit(&self, dev: &mut Device) {
        let n = Self::ring_len(dev, reg::TDLEN);
        if n == 0 || dev.tx_stalled {
            return;
        }
        let base = Self::ring_base(dev, reg::TDBAL);
        let mut wrote_back = false;
        while dev.tdh != dev.tdt && dev.tdh < n {
            let at = base + u64::from(dev.tdh) * 16;
            let mut raw = [0u8; 16];
            self.read_phys(at, &mut raw);
            let addr = u64::from_le_bytes(raw[0..8].try_into().unwrap());
            let lower = u32::from_le_bytes(raw[8..12].try_into().unwrap());
            let cmd = TxCmd::from_bits_retain((lower >> 24) as u8);
            let extended = cmd.contains(TxCmd::DEXT);
            if extended && (lower >> 20) & 0xF == 0 {
                dev.context = (raw[4], raw[5], u16::from_le_bytes([raw[6], raw[7]]));
            } else {
                let len = if extended {
                    (lower & 0xF_FFFF) as usize
                } else {
                    (lower & 0xFFFF) as usize
                };
                let mut data = vec![0u8; len];
                self.read_phys(addr, &mut data);
                dev.partial.extend_from_slice(&data);
                if extended {
                    dev.partial_txsm |= raw[13] & super::regs::POPTS_TXSM != 0;
                }
                if cmd.contains(TxCmd::EOP) {
                    let mut frame = core::mem::take(&mut dev.partial);
                    if core::mem::take(&mut dev.partial_txsm) {
                        // What QEMU's putsum does: sum from tucss to tucse (0: the end),
                        // store at tucso.
                        let (css, cso, cse) = dev.context;
                        let end = if cse == 0 {
                            frame.len()
                        } else {
                            (usize::from(cse) + 1).min(frame.len())
                        };
                        let (css, cso) = (usize::from(css), usize::from(cso));
                        if css < end && cso + 2 <= frame.len() {
                            let sum = !fold(sum_words(&frame[css..end], 0));
                            frame[cso..cso + 2].copy_from_slice(&sum.to_be_bytes());
                        }
                    }
                    dev.sent.push(frame);
                }
            }
            if cmd.contains(TxCmd::RS) {
                raw[12] |= 1;
                self.write_phys(at + 12, &raw[12..13]);
                wrote_back = true;
            }
            dev.tdh = (dev.tdh + 1) % n;
        }
        if wrote_back {
            self.raise(dev, Intr::TXDW);
        }
    }

    fn device_reset(dev: &mut Device) {
        let keep = [reg::MTA + 8];
        dev.regs.retain(|k, _| keep.contains(k));
        dev.icr = 0;
        dev.ims = 0;
        dev.rdh = 0;
        dev.rdt = 0;
        dev.tdh = 0;
        dev.tdt = 0;
        dev.context = (0, 0, 0);
        dev.partial.clear();
        dev.resets += 1;
    }

    fn mmio_read(&self, r: &MmioRegion, off: u64) -> u32 {
        self.tick(1000);
        assert!(off + 4 <= r.len, "MMIO read outside the region");
        assert_eq!(off % 4, 0, "unaligned register read");
        let o = r.phys - BAR0 + off;
        let mut dev = self.dev.borrow_mut();
        match o {
            reg::CTRL => dev.ctrl,
            reg::STATUS => 1 | u32::from(dev.link_up) << 1 | 2 << 6,
            reg::EERD => dev.eerd,
            reg::MDIC => dev.mdic,
            reg::ICR => core::mem::take(&mut dev.icr),
            reg::IMS => dev.ims,
            reg::RDH => dev.rdh_read.unwrap_or(dev.rdh),
            reg::RDT => dev.rdt,
            reg::TDH => dev.tdh_read.unwrap_or(dev.tdh),
            reg::TDT => dev.tdt,
            _ => dev.regs.get(&o).copied().unwrap_or(0),
        }
    }

    fn mmio_write(&self, r: &MmioRegion, off: u64, v: u32) {
        self.tick(1000);
        assert!(off + 4 <= r.len, "MMIO write outside the region");
        assert_eq!(off % 4, 0, "unaligned register write");
        let o = r.phys - BAR0 + off;
        let mut dev = self.dev.borrow_mut();
        match o {
            reg::CTRL => {
                if v & Ctrl::RST.bits() != 0 {
                    Self::device_reset(&mut dev);
                    dev.ctrl = if dev.reset_stuck {
                        v
                    } else {
                        v & !Ctrl::RST.bits()
                    };
                } else {
                    dev.ctrl = v;
                }
            }
            reg::EERD => {
                if v & eerd::START != 0 {
                    let word = ((v >> eerd::ADDR_SHIFT) & 0xFF) as usize;
                    dev.eerd = if dev.eeprom_stuck {
                        v & !eerd::DONE
                    } else {
                        let data = dev.eeprom.get(word).copied().unwrap_or(0xFFFF);
                        eerd::DONE | (word as u32) << eerd::ADDR_SHIFT | u32::from(data) << 16
                    };
                }
            }
            reg::MDIC => {
                let phy_reg = (v >> mdic::REG_SHIFT) & 0x1F;
                let data = if v & mdic::OP_READ != 0 && phy_reg == mdic::PHY_STATUS {
                    0x7949
                        | if dev.link_up {
                            mdic::PHY_STATUS_LINK
                        } else {
                            0
                        }
                } else {
                    0
                };
                dev.mdic = (v & !mdic::DATA_MASK) | u32::from(data) | mdic::READY;
            }
            reg::ICR => dev.icr &= !v,
            reg::ICS => {
                let dev = &mut *dev;
                self.raise(dev, Intr::from_bits_retain(v));
            }
            reg::IMS => {
                dev.ims |= v;
                if dev.icr & dev.ims != 0 {
                    self.irqs.set(self.irqs.get() + 1);
                }
            }
            reg::IMC => dev.ims &= !v,
            reg::RDH => dev.rdh = v,
            reg::RDT => {
                dev.rdt = v;
                dev.rdt_writes += 1;
            }
            reg::TDH => dev.tdh = v,
            reg::TDT => {
                dev.tdt = v;
                dev.tdt_writes += 1;
                let dev = &mut *dev;
                self.transmit(dev);
            }
            _ => {
                dev.regs.insert(o, v);
            }
        }
    }

    fn tick(&self, ns: u64) {
        self.clock.set(self.clock.get() + ns);
    }

    fn cfg_offset(&self, port: u16) -> Option<usize> {
        let a = self.cfg_addr.get();
        if a & 0x8000_0000 == 0 || a & !0xFC != ADDR.config_address(0) & !0xFC {
            return None;
        }
        Some((a & 0xFC) as usize + usize::from(port - CONFIG_DATA))
    }

    fn port_read(&self, port: u16, width: usize) -> u32 {
        if port == CONFIG_ADDRESS {
            return self.cfg_addr.get();
        }
        let Some(off) = self.cfg_offset(port) else {
            return u32::MAX;
        };
        let c = self.cfg.borrow();
        (0..width).fold(0, |v, i| v | u32::from(c[off + i]) << (8 * i))
    }

    fn port_write(&self, port: u16, width: usize, value: u32) {
        if port == CONFIG_ADDRESS {
            self.cfg_addr.set(value);
            return;
        }
        let Some(off) = self.cfg_offset(port) else {
            return;
        };
        // Only the command register is writable here.
        let mut c = self.cfg.borrow_mut();
        for i in 0..width {
            if (4..6).contains(&(off + i)) {
                c[off + i] = (value >> (8 * i)) as u8;
            }
        }
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.mem, mem_layout()) }
    }
}

impl Platform for FakePlatform {
    fn inb(&self, port: u16) -> u8 {
        self.port_read(port, 1) as u8
    }
    fn inw(&self, port: u16) -> u16 {
        self.port_read(port, 2) as u16
    }
    fn inl(&self, port: u16) -> u32 {
        self.port_read(port, 4)
    }
    fn outb(&self, port: u16, value: u8) {
        self.port_write(port, 1, value.into())
    }
    fn outw(&self, port: u16, value: u16) {
        self.port_write(port, 2, value.into())
    }
    fn outl(&self, port: u16, value: u32) {
        self.port_write(port, 4, value)
    }
    fn map_mmio(&self, phys: u64, len: u64) -> Result<MmioRegion, PlatformError> {
        if phys < BAR0 || phys + len > BAR0 + BAR0_SIZE {
            return Err(PlatformError::BadMmioRange { phys, len });
        }
        Ok(MmioRegion { phys, len })
    }
    fn mmio_read8(&self, _: &MmioRegion, _: u64) -> u8 {
        panic!("the e1000 registers are 32-bit")
    }
    fn mmio_read16(&self, _: &MmioRegion, _: u64) -> u16 {
        panic!("the e1000 registers are 32-bit")
    }
    fn mmio_read32(&self, r: &MmioRegion, off: u64) -> u32 {
        self.mmio_read(r, off)
    }
    fn mmio_write8(&self, _: &MmioRegion, _: u64, _: u8) {
        panic!("the e1000 registers are 32-bit")
    }
    fn mmio_write16(&self, _: &MmioRegion, _: u64, _: u16) {
        panic!("the e1000 registers are 32-bit")
    }
    fn mmio_write32(&self, r: &MmioRegion, off: u64, v: u32) {
        self.mmio_write(r, off, v)
    }
    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError> {
        let phys = self.dma_next.get().next_multiple_of(align.max(1) as u64);
        if phys + len as u64 > DMA_BASE + DMA_SIZE as u64 {
            return Err(PlatformError::OutOfDmaMemory);
        }
        self.dma_next.set(phys + len.max(1) as u64);
        self.dma_live.borrow_mut().insert(phys, len);
        let virt = self.mem.wrapping_add((phys - DMA_BASE) as usize);
        // SAFETY: `virt` is inside `mem` (checked above), handed out once by the bump
        // allocator, and stays allocated as long as the platform.
        Ok(unsafe { DmaBuffer::from_raw_parts(virt, phys, len) })
    }
    fn dma_free(&self, buffer: DmaBuffer) {
        let removed = self.dma_live.borrow_mut().remove(&buffer.phys());
        assert!(
            removed.is_some(),
            "freeing a buffer twice or never allocated"
        );
    }
    fn virt_to_phys(&self, virt: *const u8) -> u64 {
        DMA_BASE + (virt as u64 - self.mem as u64)
    }
    fn interrupt_count(&self, vector: u8) -> u64 {
        if vector == VECTOR {
            self.irqs.get()
        } else {
            0
        }
    }
    fn ack_interrupt(&self, vector: u8) {
        assert_eq!(vector, VECTOR);
        self.acks.set(self.acks.get() + 1);
    }
    fn interrupt_epoch(&self) -> u64 {
        self.irqs.get()
    }
    fn wait_for_interrupt(&self, _epoch: u64) {
        self.tick(1_000_000);
    }
    fn now_ns(&self) -> u64 {
        self.tick(100);
        self.clock.get()
    }
}
