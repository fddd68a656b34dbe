//! Test fakes: a platform with DMA memory backed by a `vm_memory::GuestMemoryMmap` (so
//! rust-vmm's `virtio_queue` can act as the device), one fake virtio-pci function behind fake PCI
//! config ports, and its MMIO BAR.

use super::pci::{common, ISR_CONFIG, ISR_QUEUE, NO_VECTOR};
use super::{feature, status};
use crate::pci::{PciAddress, PciFunction, CONFIG_ADDRESS, CONFIG_DATA};
use crate::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

pub type Mem = GuestMemoryMmap<()>;

pub const DMA_BASE: u64 = 0x100_0000;
pub const DMA_SIZE: usize = 16 << 20;
pub const BAR0: u64 = 0xFEB0_0000;
pub const BAR_SIZE: u64 = 0x4000;
pub const ISR_OFF: u64 = 0x1000;
pub const DEVCFG_OFF: u64 = 0x2000;
pub const NOTIFY_OFF: u64 = 0x3000;
pub const NOTIFY_MULT: u32 = 4;
pub const MSIX_TABLE_OFF: u64 = 0x3800;
pub const MSIX_ENTRIES: usize = 8;
pub const INTX_VECTOR: u8 = 0x2B;
pub const ADDR: PciAddress = PciAddress::new(0, 3, 0);
/// Config offsets of the capabilities.
pub const CAP_COMMON: usize = 0x40;
pub const CAP_NOTIFY: usize = 0x54;
pub const CAP_ISR: usize = 0x68;
pub const CAP_DEVICE: usize = 0x78;
pub const CAP_PCI: usize = 0x88;
pub const CAP_MSIX: usize = 0x9C;

/// Device-type behaviour.
pub trait Backend {
    fn features(&self) -> u64;
    fn config(&self) -> Vec<u8>;
    /// Handle a notification of `queue`; returns whether to interrupt.
    fn process(&mut self, queue: u16, q: &mut Queue, mem: &Mem) -> bool;
    /// The driver wrote `width` bytes of device configuration at `offset` (ignored unless the
    /// device has writable fields).
    fn write_config(&mut self, _offset: u64, _width: u64, _value: u64) {}
}

/// A backend that never completes anything.
pub struct Inert {
    pub features: u64,
    pub config: Vec<u8>,
}

impl Backend for Inert {
    fn features(&self) -> u64 {
        self.features
    }
    fn config(&self) -> Vec<u8> {
        self.config.clone()
    }
    fn process(&mut self, _: u16, _: &mut Queue, _: &Mem) -> bool {
        false
    }
}

#[derive(Clone, Copy, Default)]
pub struct QueueRegs {
    pub size: u16,
    pub msix: u16,
    pub enabled: bool,
    pub desc: u64,
    pub driver: u64,
    pub device: u64,
}

pub struct FakeDevice {
    pub backend: Box<dyn Backend>,
    pub status: u8,
    pub dfsel: u32,
    pub drfsel: u32,
    pub driver_features: u64,
    /// Whether FEATURES_OK sticks.
    pub accept_features: bool,
    /// Whether MSI-X vector writes are accepted.
    pub accept_vectors: bool,
    /// Max size per queue (0 = unavailable).
    pub queue_max: Vec<u16>,
    pub regs: Vec<QueueRegs>,
    pub queues: Vec<Option<Queue>>,
    pub select: u16,
    pub config_msix: u16,
    pub isr: u8,
    pub generation: u8,
    /// Bump the generation on this many 64-bit config reads (torn-read simulation).
    pub generation_bumps: u32,
    pub msix_table: [u8; 16 * MSIX_ENTRIES],
    /// Status reads that still return non-zero after a reset.
    pub reset_lag: u32,
    pub lag_left: u32,
    pub notifies: Vec<u16>,
    /// Process queues when notified.
    pub auto_process: bool,
    /// Status values written, in order.
    pub status_log: Vec<u8>,
}

impl FakeDevice {
    fn new(backend: Box<dyn Backend>, queue_max: Vec<u16>) -> Self {
        let n = queue_max.len();
        Self {
            backend,
            status: 0,
            dfsel: 0,
            drfsel: 0,
            driver_features: 0,
            accept_features: true,
            accept_vectors: true,
            queue_max,
            regs: vec![QueueRegs::default(); n],
            queues: (0..n).map(|_| None).collect(),
            select: 0,
            config_msix: NO_VECTOR,
            isr: 0,
            generation: 0,
            generation_bumps: 0,
            msix_table: [0; 16 * MSIX_ENTRIES],
            reset_lag: 0,
            lag_left: 0,
            notifies: Vec::new(),
            auto_process: true,
            status_log: Vec::new(),
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.config_msix = NO_VECTOR;
        self.isr = 0;
        for (r, &max) in self.regs.iter_mut().zip(&self.queue_max) {
            *r = QueueRegs {
                size: max,
                msix: NO_VECTOR,
                ..QueueRegs::default()
            };
        }
        for q in &mut self.queues {
            *q = None;
        }
        self.lag_left = self.reset_lag;
    }

    fn sel(&mut self) -> Option<&mut QueueRegs> {
        self.regs.get_mut(usize::from(self.select))
    }

    fn vector_ok(&self, v: u16) -> u16 {
        if self.accept_vectors && usize::from(v) < MSIX_ENTRIES {
            v
        } else {
            NO_VECTOR
        }
    }

    fn common_read(&mut self, off: u64) -> u64 {
        let q = self
            .regs
            .get(usize::from(self.select))
            .copied()
            .unwrap_or_default();
        match off {
            common::DEVICE_FEATURE_SELECT => self.dfsel.into(),
            common::DEVICE_FEATURE => match self.dfsel {
                0 => self.backend.features() & 0xFFFF_FFFF,
                1 => self.backend.features() >> 32,
                _ => 0,
            },
            common::DRIVER_FEATURE_SELECT => self.drfsel.into(),
            common::DRIVER_FEATURE => match self.drfsel {
                0 => self.driver_features & 0xFFFF_FFFF,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            common::CONFIG_MSIX_VECTOR => self.config_msix.into(),
            common::NUM_QUEUES => self.queue_max.len() as u64,
            common::DEVICE_STATUS => {
                if self.lag_left > 0 {
                    self.lag_left -= 1;
                    return 1;
                }
                self.status.into()
            }
            common::CONFIG_GENERATION => self.generation.into(),
            common::QUEUE_SELECT => self.select.into(),
            common::QUEUE_SIZE => q.size.into(),
            common::QUEUE_MSIX_VECTOR => q.msix.into(),
            common::QUEUE_ENABLE => q.enabled.into(),
            common::QUEUE_NOTIFY_OFF => self.select.into(),
            0x20 => q.desc & 0xFFFF_FFFF,
            0x24 => q.desc >> 32,
            0x28 => q.driver & 0xFFFF_FFFF,
            0x2C => q.driver >> 32,
            0x30 => q.device & 0xFFFF_FFFF,
            0x34 => q.device >> 32,
            _ => 0,
        }
    }

    fn common_write(&mut self, off: u64, v: u64) {
        let lo = |old: u64| (old & !0xFFFF_FFFF) | (v & 0xFFFF_FFFF);
        let hi = |old: u64| (old & 0xFFFF_FFFF) | (v << 32);
        match off {
            common::DEVICE_FEATURE_SELECT => self.dfsel = v as u32,
            common::DRIVER_FEATURE_SELECT => self.drfsel = v as u32,
            common::DRIVER_FEATURE => match self.drfsel {
                0 => self.driver_features = lo(self.driver_features),
                1 => self.driver_features = hi(self.driver_features),
                _ => {}
            },
            common::CONFIG_MSIX_VECTOR => self.config_msix = self.vector_ok(v as u16),
            common::DEVICE_STATUS => {
                let mut v = v as u8;
                self.status_log.push(v);
                if v == 0 {
                    self.reset();
                    return;
                }
                if v & status::FEATURES_OK != 0 && !self.accept_features {
                    v &= !status::FEATURES_OK;
                }
                if self.driver_features & !self.backend.features() != 0 {
                    v &= !status::FEATURES_OK;
                }
                self.status = v;
            }
            common::QUEUE_SELECT => self.select = v as u16,
            common::QUEUE_SIZE => {
                if let Some(q) = self.sel() {
                    q.size = v as u16;
                }
            }
            common::QUEUE_MSIX_VECTOR => {
                let v = self.vector_ok(v as u16);
                if let Some(q) = self.sel() {
                    q.msix = v;
                }
            }
            common::QUEUE_ENABLE => {
                let i = usize::from(self.select);
                let Some(r) = self.regs.get_mut(i) else {
                    return;
                };
                r.enabled = v == 1;
                let r = *r;
                let mut q = Queue::new(self.queue_max[i]).unwrap();
                q.set_size(r.size);
                q.set_desc_table_address(Some(r.desc as u32), Some((r.desc >> 32) as u32));
                q.set_avail_ring_address(Some(r.driver as u32), Some((r.driver >> 32) as u32));
                q.set_used_ring_address(Some(r.device as u32), Some((r.device >> 32) as u32));
                q.set_event_idx(self.driver_features & feature::RING_EVENT_IDX != 0);
                q.set_ready(true);
                self.queues[i] = Some(q);
            }
            0x20 => self.sel().into_iter().for_each(|q| q.desc = lo(q.desc)),
            0x24 => self.sel().into_iter().for_each(|q| q.desc = hi(q.desc)),
            0x28 => self.sel().into_iter().for_each(|q| q.driver = lo(q.driver)),
            0x2C => self.sel().into_iter().for_each(|q| q.driver = hi(q.driver)),
            0x30 => self.sel().into_iter().for_each(|q| q.device = lo(q.device)),
            0x34 => self.sel().into_iter().for_each(|q| q.device = hi(q.device)),
            _ => {}
        }
    }
}

pub struct FakePlatform {
    pub mem: Mem,
    dma_next: Cell<u64>,
    /// Live DMA allocations: phys -> len.
    pub dma_live: RefCell<BTreeMap<u64, usize>>,
    /// Fail DMA allocations after this many more succeed.
    pub dma_budget: Cell<Option<usize>>,
    cfg_addr: Cell<u32>,
    pub cfg: RefCell<[u8; 256]>,
    cfg_writable: RefCell<[u8; 256]>,
    pub dev: RefCell<FakeDevice>,
    pub now: Cell<u64>,
    pub irqs: RefCell<BTreeMap<u8, u64>>,
    /// MSI address of each delivered message (to check the APIC ID).
    pub msi_addresses: RefCell<Vec<u32>>,
}

impl FakePlatform {
    /// Only DMA memory (no device behind the config ports).
    pub fn dma_only() -> Self {
        Self::new(
            Box::new(Inert {
                features: 0,
                config: Vec::new(),
            }),
            Vec::new(),
        )
    }

    /// A virtio-pci function at 00:03.0 with `backend` and queues of the given max sizes.
    pub fn new(backend: Box<dyn Backend>, queue_max: Vec<u16>) -> Self {
        let mem = Mem::from_ranges(&[(GuestAddress(DMA_BASE), DMA_SIZE)]).unwrap();
        let mut c = [0u8; 256];
        let mut w = [0u8; 256];
        let put16 =
            |c: &mut [u8; 256], o: usize, v: u16| c[o..o + 2].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |c: &mut [u8; 256], o: usize, v: u32| c[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put16(&mut c, 0, 0x1AF4);
        put16(&mut c, 2, 0x1042);
        c[0x0B] = 0x01; // mass storage
        c[0x06] = 0x10; // capability list
        w[0x04] = 0x07;
        w[0x05] = 0x04;
        put32(&mut c, 0x10, BAR0 as u32);
        w[0x10..0x14].copy_from_slice(&((!(BAR_SIZE as u32 - 1)) & !0xF).to_le_bytes());
        c[0x3C] = 11;
        c[0x3D] = 1;
        c[0x34] = CAP_COMMON as u8;
        let vcap =
            |c: &mut [u8; 256], at: usize, next: usize, len: u8, ty: u8, off: u64, l: u32| {
                c[at] = 0x09;
                c[at + 1] = next as u8;
                c[at + 2] = len;
                c[at + 3] = ty;
                c[at + 4] = 0; // BAR0
                c[at + 8..at + 12].copy_from_slice(&(off as u32).to_le_bytes());
                c[at + 12..at + 16].copy_from_slice(&l.to_le_bytes());
            };
        vcap(&mut c, CAP_COMMON, CAP_NOTIFY, 16, 1, 0, 0x40);
        vcap(&mut c, CAP_NOTIFY, CAP_ISR, 20, 2, NOTIFY_OFF, 0x800);
        put32(&mut c, CAP_NOTIFY + 16, NOTIFY_MULT);
        vcap(&mut c, CAP_ISR, CAP_DEVICE, 16, 3, ISR_OFF, 4);
        vcap(&mut c, CAP_DEVICE, CAP_PCI, 16, 4, DEVCFG_OFF, 0x100);
        vcap(&mut c, CAP_PCI, CAP_MSIX, 20, 5, 0, 0);
        c[CAP_MSIX] = 0x11;
        c[CAP_MSIX + 1] = 0;
        put16(&mut c, CAP_MSIX + 2, MSIX_ENTRIES as u16 - 1);
        w[CAP_MSIX + 3] = 0xC0; // enable + function mask
        put32(&mut c, CAP_MSIX + 4, MSIX_TABLE_OFF as u32);
        put32(&mut c, CAP_MSIX + 8, MSIX_TABLE_OFF as u32 + 0x400);
        let mut dev = FakeDevice::new(backend, queue_max);
        dev.reset();
        Self {
            mem,
            dma_next: Cell::new(DMA_BASE),
            dma_live: RefCell::new(BTreeMap::new()),
            dma_budget: Cell::new(None),
            cfg_addr: Cell::new(0),
            cfg: RefCell::new(c),
            cfg_writable: RefCell::new(w),
            dev: RefCell::new(dev),
            now: Cell::new(0),
            irqs: RefCell::new(BTreeMap::new()),
            msi_addresses: RefCell::new(Vec::new()),
        }
    }

    /// Probe the fake function through the real PCI code.
    pub fn function(&self) -> PciFunction {
        crate::pci::Pci::new(self).probe(ADDR).unwrap().unwrap()
    }

    pub fn irq_count(&self, v: u8) -> u64 {
        self.irqs.borrow().get(&v).copied().unwrap_or(0)
    }

    /// Run the backend on queue `i` (as if notified) and deliver an interrupt if it asks.
    pub fn process(&self, i: u16) {
        let mut dev = self.dev.borrow_mut();
        let dev = &mut *dev;
        let Some(Some(q)) = dev.queues.get_mut(usize::from(i)) else {
            return;
        };
        if dev.backend.process(i, q, &self.mem) {
            let entry = dev.regs[usize::from(i)].msix;
            self.interrupt(dev, entry, ISR_QUEUE);
        }
    }

    /// Interrupt for queue `i` as the device does after adding used buffers (for devices that
    /// complete outside `process`, e.g. an RX frame arriving).
    pub fn queue_interrupt(&self, i: u16) {
        let mut dev = self.dev.borrow_mut();
        let Some(entry) = dev.regs.get(usize::from(i)).map(|r| r.msix) else {
            return;
        };
        self.interrupt(&mut dev, entry, ISR_QUEUE);
    }

    /// A configuration change notification (ISR bit 1, or the config MSI-X vector).
    pub fn config_interrupt(&self) {
        let mut dev = self.dev.borrow_mut();
        let entry = dev.config_msix;
        self.interrupt(&mut dev, entry, ISR_CONFIG);
    }

    fn interrupt(&self, dev: &mut FakeDevice, entry: u16, isr_bit: u8) {
        let cfg = self.cfg.borrow();
        let control = u16::from_le_bytes([cfg[CAP_MSIX + 2], cfg[CAP_MSIX + 3]]);
        if control & 0x8000 != 0 {
            if control & 0x4000 != 0 || usize::from(entry) >= MSIX_ENTRIES {
                return;
            }
            let e = &dev.msix_table[16 * usize::from(entry)..][..16];
            let word = |o: usize| u32::from_le_bytes(e[o..o + 4].try_into().unwrap());
            if word(12) & 1 != 0 {
                return;
            }
            self.msi_addresses.borrow_mut().push(word(0));
            *self.irqs.borrow_mut().entry(word(8) as u8).or_default() += 1;
        } else {
            dev.isr |= isr_bit;
            *self.irqs.borrow_mut().entry(INTX_VECTOR).or_default() += 1;
        }
    }

    fn cfg_target(&self, port: u16) -> Option<usize> {
        let a = self.cfg_addr.get();
        let want = 0x8000_0000 | ADDR.config_address(0);
        if a & 0x8000_0000 == 0 || a & !0xFC != want & !0xFC {
            return None;
        }
        Some((a & 0xFC) as usize + usize::from(port - CONFIG_DATA))
    }

    fn port_read(&self, port: u16, width: usize) -> u32 {
        if port == CONFIG_ADDRESS {
            return self.cfg_addr.get();
        }
        let Some(off) = self.cfg_target(port) else {
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
        let Some(off) = self.cfg_target(port) else {
            return;
        };
        let mut c = self.cfg.borrow_mut();
        let w = self.cfg_writable.borrow();
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            c[off + i] = (c[off + i] & !w[off + i]) | (b & w[off + i]);
        }
    }

    fn check(&self, r: &MmioRegion, off: u64, width: u64) -> u64 {
        assert!(
            off + width <= r.len,
            "MMIO access outside the mapped region"
        );
        let bar_off = r.phys - BAR0 + off;
        assert_eq!(bar_off % width, 0, "unaligned MMIO access");
        bar_off
    }

    fn mmio_read(&self, r: &MmioRegion, off: u64, width: u64) -> u64 {
        let o = self.check(r, off, width);
        let mut dev = self.dev.borrow_mut();
        match o {
            0..0x40 => dev.common_read(o) & mask(width),
            ISR_OFF => {
                let v = dev.isr;
                dev.isr = 0;
                v.into()
            }
            0x2000..0x2100 => {
                let cfg = dev.backend.config();
                if width == 4 && dev.generation_bumps > 0 {
                    dev.generation_bumps -= 1;
                    dev.generation = dev.generation.wrapping_add(1);
                }
                let base = (o - DEVCFG_OFF) as usize;
                (0..width as usize).fold(0, |v, i| {
                    v | u64::from(cfg.get(base + i).copied().unwrap_or(0)) << (8 * i)
                })
            }
            0x3800..0x3880 => {
                let b = (o - MSIX_TABLE_OFF) as usize;
                (0..width as usize).fold(0, |v, i| v | u64::from(dev.msix_table[b + i]) << (8 * i))
            }
            _ => 0,
        }
    }

    fn mmio_write(&self, r: &MmioRegion, off: u64, width: u64, value: u64) {
        let o = self.check(r, off, width);
        let notified = {
            let mut dev = self.dev.borrow_mut();
            match o {
                0..0x40 => {
                    dev.common_write(o, value);
                    None
                }
                0x3000..0x3800 => {
                    assert_eq!(width, 2, "notify must be a 16-bit write");
                    assert_eq!(
                        (o - NOTIFY_OFF) / u64::from(NOTIFY_MULT),
                        value,
                        "notify written at the wrong queue's address"
                    );
                    dev.notifies.push(value as u16);
                    dev.auto_process.then_some(value as u16)
                }
                0x2000..0x2100 => {
                    dev.backend.write_config(o - DEVCFG_OFF, width, value);
                    None
                }
                0x3800..0x3880 => {
                    let b = (o - MSIX_TABLE_OFF) as usize;
                    for i in 0..width as usize {
                        dev.msix_table[b + i] = (value >> (8 * i)) as u8;
                    }
                    None
                }
                _ => None,
            }
        };
        if let Some(q) = notified {
            self.process(q);
        }
    }
}

fn mask(width: u64) -> u64 {
    if width == 8 {
        u64::MAX
    } else {
        (1 << (8 * width)) - 1
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
        if phys < BAR0 || phys + len > BAR0 + BAR_SIZE {
            return Err(PlatformError::BadMmioRange { phys, len });
        }
        Ok(MmioRegion { phys, len })
    }
    fn mmio_read8(&self, r: &MmioRegion, off: u64) -> u8 {
        self.mmio_read(r, off, 1) as u8
    }
    fn mmio_read16(&self, r: &MmioRegion, off: u64) -> u16 {
        self.mmio_read(r, off, 2) as u16
    }
    fn mmio_read32(&self, r: &MmioRegion, off: u64) -> u32 {
        self.mmio_read(r, off, 4) as u32
    }
    fn mmio_write8(&self, r: &MmioRegion, off: u64, v: u8) {
        self.mmio_write(r, off, 1, v.into())
    }
    fn mmio_write16(&self, r: &MmioRegion, off: u64, v: u16) {
        self.mmio_write(r, off, 2, v.into())
    }
    fn mmio_write32(&self, r: &MmioRegion, off: u64, v: u32) {
        self.mmio_write(r, off, 4, v.into())
    }
    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError> {
        if let Some(n) = self.dma_budget.get() {
            if n == 0 {
                return Err(PlatformError::OutOfDmaMemory);
            }
            self.dma_budget.set(Some(n - 1));
        }
        let phys = self.dma_next.get().next_multiple_of(align as u64);
        if phys + len as u64 > DMA_BASE + DMA_SIZE as u64 {
            return Err(PlatformError::OutOfDmaMemory);
        }
        self.dma_next.set(phys + len.max(1) as u64);
        let virt = self.mem.get_host_address(GuestAddress(phys)).unwrap();
        self.dma_live.borrow_mut().insert(phys, len);
        // SAFETY: `virt` is the host address of guest memory at `phys`, which the bump
        // allocator hands out once and which stays mapped as long as `self.mem`.
        Ok(unsafe { DmaBuffer::from_raw_parts(virt, phys, len) })
    }
    fn dma_free(&self, buffer: DmaBuffer) {
        let removed = self.dma_live.borrow_mut().remove(&buffer.phys());
        assert_eq!(removed, Some(buffer.len()), "dma_free of an unknown buffer");
    }
    fn virt_to_phys(&self, virt: *const u8) -> u64 {
        let base = self.mem.get_host_address(GuestAddress(DMA_BASE)).unwrap();
        DMA_BASE + (virt as u64 - base as u64)
    }
    fn interrupt_count(&self, vector: u8) -> u64 {
        self.irq_count(vector)
    }
    fn interrupt_epoch(&self) -> u64 {
        0
    }
    fn wait_for_interrupt(&self, _epoch: u64) {
        self.now.set(self.now.get() + 1_000_000);
    }
    fn now_ns(&self) -> u64 {
        self.now.set(self.now.get() + 1_000);
        self.now.get()
    }
}

/// A device-side `virtio_queue::Queue` for a driver queue (for queue-level tests).
pub fn device_queue(size: u16, desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(size).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_ready(true);
    q
}

/// Whether the driver wants an interrupt for what was just added to the used ring: event idx
/// (virtio-queue's check), else the avail ring's NO_INTERRUPT flag, which virtio-queue does
/// not look at.
pub fn driver_wants_interrupt(q: &mut Queue, mem: &Mem) -> bool {
    if q.event_idx_enabled() {
        return q.needs_notification(mem).unwrap();
    }
    let flags: u16 = mem.read_obj(GuestAddress(q.avail_ring())).unwrap();
    flags & super::queue::VIRTQ_AVAIL_F_NO_INTERRUPT == 0
}

/// Overwrite the used ring's `avail_event` (as a misbehaving device would).
pub fn write_avail_event(q: &Queue, mem: &Mem, value: u16) {
    let at = q.used_ring() + 4 + 8 * u64::from(q.size());
    mem.write_obj(value, GuestAddress(at)).unwrap();
}

/// If the chain at `head` is an indirect descriptor, the number of entries of its table, after
/// the device-side checks of §2.7.5.3.1 (the fake's own, beside virtio-queue's): the ring
/// descriptor has neither NEXT nor WRITE, the table is a whole number of descriptors no longer
/// than the queue and inside guest memory, no entry is itself indirect, and every `next`
/// stays inside the table.
pub fn indirect_entries(q: &Queue, mem: &Mem, head: u16) -> Option<usize> {
    use super::queue::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};
    let at = GuestAddress(q.desc_table() + 16 * u64::from(head));
    let addr: u64 = mem.read_obj(at).unwrap();
    let len: u32 = mem.read_obj(GuestAddress(at.0 + 8)).unwrap();
    let flags: u16 = mem.read_obj(GuestAddress(at.0 + 12)).unwrap();
    if flags & VIRTQ_DESC_F_INDIRECT == 0 {
        return None;
    }
    assert_eq!(
        flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE),
        0,
        "indirect ring descriptor with NEXT or WRITE"
    );
    assert!(
        len > 0 && len.is_multiple_of(16),
        "indirect table of {len} bytes is not whole descriptors"
    );
    let count = (len / 16) as usize;
    assert!(
        count <= usize::from(q.size()),
        "indirect table longer than the queue"
    );
    assert!(
        mem.check_range(GuestAddress(addr), len as usize),
        "indirect table outside guest memory"
    );
    for i in 0..count as u64 {
        let entry = addr + 16 * i;
        let flags: u16 = mem.read_obj(GuestAddress(entry + 12)).unwrap();
        let next: u16 = mem.read_obj(GuestAddress(entry + 14)).unwrap();
        assert_eq!(flags & VIRTQ_DESC_F_INDIRECT, 0, "nested indirect table");
        if flags & VIRTQ_DESC_F_NEXT != 0 {
            assert!(
                usize::from(next) < count,
                "indirect next {next} outside the table"
            );
        } else {
            assert_eq!(
                i as usize + 1,
                count,
                "indirect chain ends before its table"
            );
        }
    }
    Some(count)
}
