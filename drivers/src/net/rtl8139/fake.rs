//! A fake RTL8139 behind a fake [`Platform`], for host tests: PCI config space through
//! 0xCF8/0xCFC, the registers in an I/O BAR, a 93C46 EEPROM on 9346CR's pins, and DMA memory
//! the chip writes received frames into and reads transmitted ones from, as QEMU's model
//! does (the ring's wrap rules, CAPR 16 behind, TX from the current slot round robin).
//! Knobs make it misbehave.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec;

use super::regs::{reg, Cr, Cr9346, Intr, Rcr, Tsd, EEPROM_ID};
use crate::pci::{Bar, PciAddress, PciFunction, CONFIG_ADDRESS, CONFIG_DATA};
use crate::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};

pub const IO_BASE: u16 = 0xC000;
pub const DMA_BASE: u64 = 0x10_0000;
pub const DMA_SIZE: usize = 4 << 20;
pub const VECTOR: u8 = 0x5A;
pub const ADDR: PciAddress = PciAddress::new(0, 4, 0);
pub const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

/// The EEPROM QEMU's model starts from: the Realtek ID, the PCI IDs, the MAC in words 7..9.
pub fn eeprom(mac: [u8; 6]) -> [u16; 64] {
    let mut e = [0u16; 64];
    e[0] = EEPROM_ID;
    e[1] = 0x10EC;
    e[2] = 0x8139;
    for i in 0..3 {
        e[7 + i] = u16::from_le_bytes([mac[2 * i], mac[2 * i + 1]]);
    }
    e
}

/// The RTL8139 as enumeration reports it.
pub fn function() -> PciFunction {
    PciFunction {
        address: ADDR,
        vendor_id: 0x10EC,
        device_id: 0x8139,
        class: 2,
        subclass: 0,
        prog_if: 0,
        revision: 0x20,
        header_type: 0,
        subsystem_vendor_id: 0x1AF4,
        subsystem_id: 0x1100,
        interrupt_line: 11,
        interrupt_pin: 1,
        bars: [
            Some(Bar::Io {
                port: IO_BASE,
                size: 0x100,
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

/// The 93C46's serial state.
#[derive(Debug, Default)]
struct Eeprom93c46 {
    cs: bool,
    sk: bool,
    /// Bits of the command so far (after the start bit), and how many.
    command: Option<(u16, u32)>,
    /// Word being shifted out and bits left.
    output: Option<(u16, u32)>,
    dout: bool,
}

/// The device's state, open to tests.
#[derive(Debug)]
pub struct Device {
    pub idr: [u8; 6],
    pub mar: [u8; 8],
    pub cr: u8,
    pub tsd: [u32; 4],
    pub tsad: [u32; 4],
    pub rbstart: u32,
    /// Read pointer (CAPR + 16) and write pointer (CBR), as offsets into the ring.
    pub read_ptr: u32,
    pub cbr: u32,
    pub imr: u16,
    pub isr: u16,
    pub tcr: u32,
    pub rcr: u32,
    pub mpc: u32,
    pub cr9346: u8,
    pub config1: u8,
    pub link_up: bool,
    pub eeprom: [u16; 64],
    ee: Eeprom93c46,
    /// Slot the chip sends from next.
    pub tx_current: usize,
    /// Frames transmitted.
    pub sent: Vec<Vec<u8>>,
    pub tsd_writes: u32,
    pub capr_writes: u32,
    pub cr_reads: Cell<u32>,
    pub resets: u32,
    // Misbehaviour.
    /// CR.RST never clears.
    pub reset_stuck: bool,
    /// TSD writes never send (the slot never shows OWN or TOK).
    pub tx_stalled: bool,
    /// TSD reports this status instead of OWN | TOK after a send.
    pub tx_status: Option<u32>,
    /// The next received frame's header says this instead.
    pub wild_header: Option<u32>,
    /// CR.BUFE never reads as set.
    pub bufe_never: bool,
    /// ISR writes clear nothing.
    pub isr_sticky: bool,
    /// CBR and CAPR read back as this.
    pub pointer_read: Option<u16>,
}

impl Device {
    fn ring_size(&self) -> u32 {
        8192 << ((self.rcr >> 11) & 3)
    }

    fn reset(&mut self) {
        self.idr = MAC_AT_RESET.with(|m| m.get());
        self.cr = 0;
        self.tsd = [Tsd::OWN.bits(); 4];
        self.rbstart = 0;
        self.read_ptr = 0;
        self.cbr = 0;
        self.imr = 0;
        self.isr = 0;
        self.tcr = 0;
        self.rcr = 0;
        self.tx_current = 0;
        self.resets += 1;
    }
}

std::thread_local! {
    /// What IDR holds after a reset (the "conf" MAC).
    static MAC_AT_RESET: Cell<[u8; 6]> = const { Cell::new(MAC) };
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
        Self::with_mac(MAC)
    }

    /// A chip whose IDR resets to `idr` (the EEPROM keeps [`MAC`]).
    pub fn with_mac(idr: [u8; 6]) -> Self {
        MAC_AT_RESET.with(|m| m.set(idr));
        let mut cfg = [0u8; 256];
        cfg[0..2].copy_from_slice(&0x10ECu16.to_le_bytes());
        cfg[2..4].copy_from_slice(&0x8139u16.to_le_bytes());
        // SAFETY: a non-zero size and valid alignment; freed in Drop with the same layout.
        let mem = unsafe { alloc_zeroed(mem_layout()) };
        assert!(!mem.is_null());
        let mut dev = Device {
            idr,
            mar: [0xFF; 8],
            cr: 0,
            tsd: [0; 4],
            tsad: [0; 4],
            rbstart: 0,
            read_ptr: 0,
            cbr: 0,
            imr: 0,
            isr: 0,
            tcr: 0,
            rcr: 0,
            mpc: 0,
            cr9346: 0,
            config1: 0x0D,
            link_up: true,
            eeprom: eeprom(MAC),
            ee: Eeprom93c46::default(),
            tx_current: 0,
            sent: Vec::new(),
            tsd_writes: 0,
            capr_writes: 0,
            cr_reads: Cell::new(0),
            resets: 0,
            reset_stuck: false,
            tx_stalled: false,
            tx_status: None,
            wild_header: None,
            bufe_never: false,
            isr_sticky: false,
            pointer_read: None,
        };
        dev.reset();
        dev.resets = 0;
        Self {
            cfg: RefCell::new(cfg),
            cfg_addr: Cell::new(0),
            dev: RefCell::new(dev),
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
        dev.isr |= cause.bits();
        if dev.isr & dev.imr != 0 {
            self.irqs.set(self.irqs.get() + 1);
        }
    }

    /// Write into the ring at CBR as the chip does: past the end into the slack with
    /// RCR.WRAP (below 64 KiB), else wrapped to the start.
    fn ring_write(&self, dev: &mut Device, data: &[u8]) {
        let size = dev.ring_size();
        let no_wrap = dev.rcr & Rcr::WRAP.bits() != 0 && size < 65536;
        let at = dev.cbr;
        if at as usize + data.len() > size as usize && !no_wrap {
            let first = (size - at) as usize;
            self.write_phys(u64::from(dev.rbstart + at), &data[..first]);
            self.write_phys(u64::from(dev.rbstart), &data[first..]);
            dev.cbr = (data.len() - first) as u32;
        } else {
            self.write_phys(u64::from(dev.rbstart + at), data);
            dev.cbr = at + data.len() as u32;
        }
    }

    /// Hand the chip a frame from the wire; false if it had no room (RXOVW raised, MPC
    /// counted) or receive is off. Short frames are padded to 60 bytes, as QEMU does.
    pub fn receive_frame(&self, frame: &[u8]) -> bool {
        let mut dev = self.dev.borrow_mut();
        if dev.cr & Cr::RE.bits() == 0 {
            return false;
        }
        let mut buf = frame.to_vec();
        if buf.len() < 60 {
            buf.resize(60, 0);
        }
        let size = dev.ring_size();
        let avail = (size + dev.read_ptr - dev.cbr) % size;
        if avail != 0 && buf.len() as u32 + 8 >= avail {
            dev.mpc += 1;
            self.raise(&mut dev, Intr::RXOVW);
            return false;
        }
        let header = dev
            .wild_header
            .take()
            .unwrap_or(1 | ((buf.len() as u32 + 4) << 16));
        self.ring_write(&mut dev, &header.to_le_bytes());
        self.ring_write(&mut dev, &buf);
        self.ring_write(&mut dev, &[0xC5; 4]);
        dev.cbr = ((dev.cbr + 3) & !3) % size;
        self.raise(&mut dev, Intr::ROK);
        true
    }

    /// Plug or pull the cable: MSR.LINKB and a link-change interrupt.
    pub fn set_link(&self, up: bool) {
        let mut dev = self.dev.borrow_mut();
        dev.link_up = up;
        self.raise(&mut dev, Intr::PUN_LINKCHG);
    }

    fn transmit(&self, dev: &mut Device) {
        let i = dev.tx_current;
        if dev.cr & Cr::TE.bits() == 0 || dev.tsd[i] & Tsd::OWN.bits() != 0 || dev.tx_stalled {
            return;
        }
        let len = (dev.tsd[i] & 0x1FFF) as usize;
        let mut data = vec![0u8; len];
        self.read_phys(u64::from(dev.tsad[i]), &mut data);
        dev.sent.push(data);
        dev.tsd[i] |= dev.tx_status.unwrap_or((Tsd::OWN | Tsd::TOK).bits());
        dev.tx_current = (i + 1) % 4;
        self.raise(dev, Intr::TOK);
    }

    fn eeprom_pins(dev: &mut Device, v: u8) {
        let pins = Cr9346::from_bits_retain(v);
        let cs = pins.contains(Cr9346::EECS);
        let sk = pins.contains(Cr9346::EESK);
        let di = pins.contains(Cr9346::EEDI);
        let ee = &mut dev.ee;
        if !cs {
            *ee = Eeprom93c46::default();
            return;
        }
        let rising = sk && !ee.sk;
        ee.cs = true;
        ee.sk = sk;
        if !rising {
            return;
        }
        if let Some((word, left)) = ee.output {
            ee.dout = word & 0x8000 != 0;
            ee.output = (left > 1).then_some((word << 1, left - 1));
            return;
        }
        match ee.command {
            None if di => ee.command = Some((0, 0)),
            None => {}
            Some((bits, n)) => {
                let bits = bits << 1 | u16::from(di);
                if n + 1 == 8 {
                    ee.command = None;
                    if bits >> 6 == 0b10 {
                        // READ: a dummy 0, then the word from the next rising edge on.
                        ee.dout = false;
                        ee.output = Some((dev.eeprom[usize::from(bits & 0x3F)], 16));
                    }
                } else {
                    ee.command = Some((bits, n + 1));
                }
            }
        }
    }

    fn io_read(&self, port: u16, width: u32) -> u32 {
        self.tick(1000);
        let off = port - IO_BASE;
        let dev = self.dev.borrow();
        let v = match (off, width) {
            (0..=5, 1) => u32::from(dev.idr[usize::from(off)]),
            (reg::CR, 1) => {
                dev.cr_reads.set(dev.cr_reads.get() + 1);
                let empty = dev.cbr == dev.read_ptr && !dev.bufe_never;
                u32::from(dev.cr) | u32::from(empty)
            }
            (reg::CAPR, 2) => dev
                .pointer_read
                .map_or(dev.read_ptr.wrapping_sub(16) & 0xFFFF, u32::from),
            (reg::CBR, 2) => dev.pointer_read.map_or(dev.cbr, u32::from),
            (reg::IMR, 2) => u32::from(dev.imr),
            (reg::ISR, 2) => u32::from(dev.isr),
            (reg::TCR, 4) => dev.tcr,
            (reg::RCR, 4) => dev.rcr,
            (reg::MPC, 4) => dev.mpc,
            (reg::CR9346, 1) => {
                u32::from(dev.cr9346 & !1)
                    | u32::from(dev.ee.cs && dev.ee.dout && dev.cr9346 >> 6 == 2)
            }
            (reg::CONFIG1, 1) => u32::from(dev.config1),
            (reg::MSR, 1) => 0xD0 | if dev.link_up { 0 } else { 0x04 },
            (reg::BMSR, 2) => 0x782D | if dev.link_up { 0x04 } else { 0 },
            (0x10..=0x1C, 4) if off.is_multiple_of(4) => dev.tsd[usize::from(off - 0x10) / 4],
            (0x20..=0x2C, 4) if off.is_multiple_of(4) => dev.tsad[usize::from(off - 0x20) / 4],
            (reg::RBSTART, 4) => dev.rbstart,
            (reg::TX_SUMMARY, 2) => (0..4).fold(0, |v, i| {
                let t = Tsd::from_bits_retain(dev.tsd[i]);
                v | u32::from(t.contains(Tsd::OWN)) << i
                    | u32::from(t.contains(Tsd::TABT)) << (4 + i)
                    | u32::from(t.contains(Tsd::TUN)) << (8 + i)
                    | u32::from(t.contains(Tsd::TOK)) << (12 + i)
            }),
            _ => panic!("unexpected {width}-byte read of register {off:#x}"),
        };
        v
    }

    fn io_write(&self, port: u16, width: u32, v: u32) {
        self.tick(1000);
        let off = port - IO_BASE;
        let mut dev = self.dev.borrow_mut();
        match (off, width) {
            (0x08..=0x0F, 4) => {
                let i = usize::from(off - 8);
                dev.mar[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            (reg::CR, 1) => {
                if v & u32::from(Cr::RST.bits()) != 0 {
                    dev.reset();
                    if dev.reset_stuck {
                        dev.cr = Cr::RST.bits();
                    }
                } else {
                    dev.cr = v as u8 & (Cr::RE | Cr::TE).bits();
                }
            }
            (reg::CAPR, 2) => {
                let size = dev.ring_size();
                dev.read_ptr = (v + 16) % size;
                dev.capr_writes += 1;
            }
            (reg::IMR, 2) => {
                dev.imr = v as u16;
                if dev.isr & dev.imr != 0 {
                    self.irqs.set(self.irqs.get() + 1);
                }
            }
            (reg::ISR, 2) => {
                if !dev.isr_sticky {
                    dev.isr &= !(v as u16);
                }
            }
            (reg::TCR, 4) => {
                if dev.cr & Cr::TE.bits() != 0 {
                    dev.tcr = v;
                }
            }
            (reg::RCR, 4) => {
                dev.rcr = v;
                dev.read_ptr = 0;
                dev.cbr = 0;
            }
            (reg::MPC, 4) => dev.mpc = 0,
            (reg::CR9346, 1) => {
                dev.cr9346 = v as u8;
                if v >> 6 == 2 {
                    Self::eeprom_pins(&mut dev, v as u8);
                } else {
                    dev.ee = Eeprom93c46::default();
                }
            }
            (reg::CONFIG1, 1) => {
                if dev.cr9346 >> 6 == 3 {
                    dev.config1 = v as u8;
                }
            }
            (0x10..=0x1C, 4) if off.is_multiple_of(4) => {
                dev.tsd[usize::from(off - 0x10) / 4] = v;
                dev.tsd_writes += 1;
                let dev = &mut *dev;
                self.transmit(dev);
            }
            (0x20..=0x2C, 4) if off.is_multiple_of(4) => dev.tsad[usize::from(off - 0x20) / 4] = v,
            (reg::RBSTART, 4) => dev.rbstart = v,
            _ => panic!("unexpected {width}-byte write of {v:#x} to register {off:#x}"),
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

    fn port_read(&self, port: u16, width: u32) -> u32 {
        if (IO_BASE..IO_BASE + 0x100).contains(&port) {
            return self.io_read(port, width);
        }
        if port == CONFIG_ADDRESS {
            return self.cfg_addr.get();
        }
        let Some(off) = self.cfg_offset(port) else {
            return u32::MAX;
        };
        let c = self.cfg.borrow();
        (0..width as usize).fold(0, |v, i| v | u32::from(c[off + i]) << (8 * i))
    }

    fn port_write(&self, port: u16, width: u32, value: u32) {
        if (IO_BASE..IO_BASE + 0x100).contains(&port) {
            return self.io_write(port, width, value);
        }
        if port == CONFIG_ADDRESS {
            self.cfg_addr.set(value);
            return;
        }
        let Some(off) = self.cfg_offset(port) else {
            return;
        };
        // Only the command register is writable here.
        let mut c = self.cfg.borrow_mut();
        for i in 0..width as usize {
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
        Err(PlatformError::BadMmioRange { phys, len })
    }
    fn mmio_read8(&self, _: &MmioRegion, _: u64) -> u8 {
        panic!("the RTL8139 driver uses the I/O BAR")
    }
    fn mmio_read16(&self, _: &MmioRegion, _: u64) -> u16 {
        panic!("the RTL8139 driver uses the I/O BAR")
    }
    fn mmio_read32(&self, _: &MmioRegion, _: u64) -> u32 {
        panic!("the RTL8139 driver uses the I/O BAR")
    }
    fn mmio_write8(&self, _: &MmioRegion, _: u64, _: u8) {
        panic!("the RTL8139 driver uses the I/O BAR")
    }
    fn mmio_write16(&self, _: &MmioRegion, _: u64, _: u16) {
        panic!("the RTL8139 driver uses the I/O BAR")
    }
    fn mmio_write32(&self, _: &MmioRegion, _: u64, _: u32) {
        panic!("the RTL8139 driver uses the I/O BAR")
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
