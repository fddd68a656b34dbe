//! Host tests of PCI configuration access, enumeration, BAR sizing and the capability walk,
//! against a fake machine of config-space functions behind the config ports.

use super::*;
use crate::platform::{DmaBuffer, MmioRegion, PlatformError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::format;
use std::string::{String, ToString};
use std::vec;

/// One function's config space with per-bit write semantics.
#[derive(Clone)]
struct FakeFunction {
    data: [u8; 256],
    /// Bits software may change.
    writable: [u8; 256],
    /// Bits cleared by writing 1 (status register error bits).
    write1_clear: [u8; 256],
}

impl FakeFunction {
    fn new(vendor: u16, device: u16, class: u8, subclass: u8, header_type: u8) -> Self {
        let mut f = Self {
            data: [0; 256],
            writable: [0; 256],
            write1_clear: [0; 256],
        };
        f.set16(0x00, vendor);
        f.set16(0x02, device);
        f.data[0x0B] = class;
        f.data[0x0A] = subclass;
        f.data[0x0E] = header_type;
        // Command: I/O, memory, bus master, interrupt disable are writable.
        f.writable[0x04] = 0x07;
        f.writable[0x05] = 0x04;
        // Status: master abort (bit 13) etc. are write-1-to-clear.
        f.write1_clear[0x07] = 0xF9;
        // Interrupt line is writable, pin is not.
        f.writable[0x3C] = 0xFF;
        f
    }
    fn set16(&mut self, off: usize, v: u16) {
        self.data[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.data[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.data[off], self.data[off + 1]])
    }
    fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.data[off..off + 4].try_into().unwrap())
    }
    fn mask32(&mut self, off: usize, mask: u32) {
        self.writable[off..off + 4].copy_from_slice(&mask.to_le_bytes());
    }
    fn rev_progif(mut self, rev: u8, prog_if: u8) -> Self {
        self.data[0x08] = rev;
        self.data[0x09] = prog_if;
        self
    }
    fn command(mut self, cmd: u16) -> Self {
        self.set16(0x04, cmd);
        self
    }
    fn status(mut self, status: u16) -> Self {
        self.set16(0x06, status);
        self
    }
    fn irq(mut self, line: u8, pin: u8) -> Self {
        self.data[0x3C] = line;
        self.data[0x3D] = pin;
        self
    }
    /// A BAR with arbitrary raw value and writable mask.
    fn raw_bar(mut self, slot: usize, raw: u32, mask: u32) -> Self {
        self.set32(0x10 + 4 * slot, raw);
        self.mask32(0x10 + 4 * slot, mask);
        self
    }
    /// I/O BAR decoding only 16 address bits (upper half hardwired to 0).
    fn io_bar(self, slot: usize, port: u32, size: u32) -> Self {
        self.raw_bar(slot, port | 1, !(size - 1) & 0xFFFC)
    }
    fn mem32_bar(self, slot: usize, addr: u32, size: u32, prefetch: bool) -> Self {
        let flags = if prefetch { 0x8 } else { 0 };
        self.raw_bar(slot, addr | flags, !(size - 1) & !0xF)
    }
    fn mem64_bar(self, slot: usize, addr: u64, size: u64, prefetch: bool) -> Self {
        let flags = 0x4 | if prefetch { 0x8 } else { 0 };
        let mask = !(size - 1);
        self.raw_bar(slot, addr as u32 | flags, mask as u32 & !0xF)
            .raw_bar(slot + 1, (addr >> 32) as u32, (mask >> 32) as u32)
    }
    /// Capability pointer (sets status bit 4).
    fn cap_ptr(mut self, ptr: u8) -> Self {
        self.data[0x34] = ptr;
        self.data[0x06] |= 0x10;
        self
    }
    fn cap(mut self, offset: usize, id: u8, next: u8) -> Self {
        self.data[offset] = id;
        self.data[offset + 1] = next;
        self
    }
    fn secondary_bus(mut self, bus: u8) -> Self {
        self.data[0x19] = bus;
        self
    }
    /// Fully writable scratch bytes.
    fn scratch(mut self, range: std::ops::Range<usize>) -> Self {
        for i in range {
            self.writable[i] = 0xFF;
        }
        self
    }
}

#[derive(Default)]
struct FakePlatform {
    address: Cell<u32>,
    functions: RefCell<BTreeMap<(u8, u8, u8), FakeFunction>>,
    /// Buses on which any config data access happened.
    buses_touched: RefCell<BTreeSet<u8>>,
    port_accesses: Cell<u64>,
    /// Protocol violations seen by the fake.
    violations: RefCell<Vec<String>>,
}

impl FakePlatform {
    fn with(mut self, bus: u8, dev: u8, func: u8, f: FakeFunction) -> Self {
        self.functions.get_mut().insert((bus, dev, func), f);
        self
    }
    fn func(&self, bus: u8, dev: u8, func: u8) -> FakeFunction {
        self.functions.borrow()[&(bus, dev, func)].clone()
    }

    /// Decode CONFIG_ADDRESS for a data-port access of `width` bytes at `port`.
    fn target(&self, port: u16, width: usize) -> Option<((u8, u8, u8), usize)> {
        self.port_accesses.set(self.port_accesses.get() + 1);
        let byte = usize::from(port - CONFIG_DATA);
        assert!(
            byte + width <= 4,
            "{width}-byte access at port {port:#x} crosses the data window"
        );
        let a = self.address.get();
        assert_eq!(
            a & 0x7F00_0003,
            0,
            "reserved CONFIG_ADDRESS bits set: {a:#x}"
        );
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let key = (
            (a >> 16) as u8,
            ((a >> 11) & 0x1F) as u8,
            ((a >> 8) & 7) as u8,
        );
        self.buses_touched.borrow_mut().insert(key.0);
        Some((key, (a & 0xFC) as usize + byte))
    }

    fn read(&self, port: u16, width: usize) -> u32 {
        if port == CONFIG_ADDRESS {
            assert_eq!(width, 4, "CONFIG_ADDRESS must be accessed as a dword");
            return self.address.get();
        }
        let Some((key, off)) = self.target(port, width) else {
            return u32::MAX;
        };
        let functions = self.functions.borrow();
        let Some(f) = functions.get(&key) else {
            return u32::MAX;
        };
        (0..width).fold(0, |v, i| v | u32::from(f.data[off + i]) << (8 * i))
    }

    fn write(&self, port: u16, width: usize, value: u32) {
        if port == CONFIG_ADDRESS {
            assert_eq!(width, 4, "CONFIG_ADDRESS must be accessed as a dword");
            self.port_accesses.set(self.port_accesses.get() + 1);
            self.address.set(value);
            return;
        }
        let Some((key, off)) = self.target(port, width) else {
            return;
        };
        let mut functions = self.functions.borrow_mut();
        let Some(f) = functions.get_mut(&key) else {
            return;
        };
        let bar_end = match f.data[0x0E] & 0x7F {
            0 => 0x28,
            1 => 0x18,
            _ => 0x10,
        };
        if (0x10..bar_end).contains(&off) && value == u32::MAX && f.data[0x04] & 0x3 != 0 {
            self.violations.borrow_mut().push(format!(
                "{key:?}: BAR at {off:#x} sized with decode enabled"
            ));
        }
        for i in 0..width {
            let b = (value >> (8 * i)) as u8;
            let o = off + i;
            let w = f.writable[o];
            f.data[o] = (f.data[o] & !w) | (b & w);
            f.data[o] &= !(b & f.write1_clear[o]);
        }
    }
}

impl Platform for FakePlatform {
    fn inb(&self, port: u16) -> u8 {
        self.read(port, 1) as u8
    }
    fn inw(&self, port: u16) -> u16 {
        self.read(port, 2) as u16
    }
    fn inl(&self, port: u16) -> u32 {
        self.read(port, 4)
    }
    fn outb(&self, port: u16, value: u8) {
        self.write(port, 1, value.into())
    }
    fn outw(&self, port: u16, value: u16) {
        self.write(port, 2, value.into())
    }
    fn outl(&self, port: u16, value: u32) {
        self.write(port, 4, value)
    }
    fn map_mmio(&self, _: u64, _: u64) -> Result<MmioRegion, PlatformError> {
        unimplemented!()
    }
    fn mmio_read8(&self, _: &MmioRegion, _: u64) -> u8 {
        unimplemented!()
    }
    fn mmio_read16(&self, _: &MmioRegion, _: u64) -> u16 {
        unimplemented!()
    }
    fn mmio_read32(&self, _: &MmioRegion, _: u64) -> u32 {
        unimplemented!()
    }
    fn mmio_write8(&self, _: &MmioRegion, _: u64, _: u8) {
        unimplemented!()
    }
    fn mmio_write16(&self, _: &MmioRegion, _: u64, _: u16) {
        unimplemented!()
    }
    fn mmio_write32(&self, _: &MmioRegion, _: u64, _: u32) {
        unimplemented!()
    }
    fn dma_alloc(&self, _: usize, _: usize) -> Result<DmaBuffer, PlatformError> {
        unimplemented!()
    }
    fn dma_free(&self, _: DmaBuffer) {
        unimplemented!()
    }
    fn virt_to_phys(&self, _: *const u8) -> u64 {
        unimplemented!()
    }
    fn interrupt_count(&self, _: u8) -> u64 {
        unimplemented!()
    }
    fn interrupt_epoch(&self) -> u64 {
        unimplemented!()
    }
    fn wait_for_interrupt(&self, _: u64) {
        unimplemented!()
    }
    fn now_ns(&self) -> u64 {
        unimplemented!()
    }
}

const A: fn(u8, u8, u8) -> PciAddress = PciAddress::new;

/// The test machine:
/// - 00:00.0 host bridge
/// - 00:01.{0,1,3} multifunction device (function 2 absent)
/// - 00:02.0 single-function device that (like some hardware) mirrors itself at 00:02.1
/// - 00:03.0 device with I/O + mem32 + mem64 BARs and a capability chain
/// - 00:04.0 bridge to bus 1
/// - 01:00.0 device with a >4 GiB 64-bit BAR and a capability loop
/// - 01:05.0 device with broken BARs and a bad capability pointer
/// - 01:06.0 bridge whose secondary bus points back at bus 1
/// - 07:00.0 unreachable (no bridge leads to bus 7)
fn machine() -> FakePlatform {
    let mirror = FakeFunction::new(0x1AF4, 0x1000, 0x02, 0x00, 0x00).irq(11, 1);
    FakePlatform::default()
        .with(
            0,
            0,
            0,
            FakeFunction::new(0x8086, 0x1237, 0x06, 0x00, 0x00).rev_progif(2, 0),
        )
        .with(0, 1, 0, FakeFunction::new(0x8086, 0x7000, 0x06, 0x01, 0x80))
        .with(
            0,
            1,
            1,
            FakeFunction::new(0x8086, 0x7010, 0x01, 0x01, 0x00).rev_progif(0, 0x80),
        )
        .with(
            0,
            1,
            3,
            FakeFunction::new(0x8086, 0x7113, 0x06, 0x80, 0x00).rev_progif(3, 0),
        )
        .with(0, 2, 0, mirror.clone())
        .with(0, 2, 1, mirror)
        .with(
            0,
            3,
            0,
            FakeFunction::new(0x1234, 0xF100, 0xFF, 0x00, 0x00)
                .command(0x0007)
                .status(0x2000) // master abort (RW1C) set
                .irq(10, 1)
                .io_bar(0, 0xC000, 0x10)
                .mem32_bar(1, 0xC000_0000, 0x1000, false)
                .mem64_bar(2, 0x8_0000_0000, 0x4000, true)
                // BAR4, BAR5 unimplemented (read 0)
                .cap_ptr(0x43) // low bits must be masked
                .cap(0x40, 0x09, 0x50)
                .cap(0x50, 0x11, 0x60)
                .cap(0x60, 0x09, 0x71) // low bits of next masked too
                .cap(0x70, 0x09, 0x00)
                .scratch(0xA0..0xC0),
        )
        .with(
            0,
            4,
            0,
            FakeFunction::new(0x1B36, 0x0001, 0x06, 0x04, 0x01)
                .command(0x0003)
                .mem32_bar(0, 0xFE00_0000, 0x100, false)
                .secondary_bus(1),
        )
        .with(
            1,
            0,
            0,
            FakeFunction::new(0x1AF4, 0x1041, 0x02, 0x00, 0x00)
                .command(0x0002)
                .irq(11, 4)
                .mem64_bar(0, 0x40_0000_0000, 0x2_0000_0000, false)
                .cap_ptr(0x40)
                .cap(0x40, 0x05, 0x50)
                .cap(0x50, 0x09, 0x40),
        )
        .with(
            1,
            5,
            0,
            FakeFunction::new(0xBAD0, 0xBAD1, 0x00, 0x00, 0x00)
                .command(0x0001)
                // I/O BAR beyond the 16-bit port space
                .raw_bar(0, 0x0001_0001, 0xFFFF_FFF0)
                // Memory BAR whose read-back has no writable address bits (size "0")
                .raw_bar(1, 0x0000_0008, 0)
                // Reserved memory type 0b11
                .raw_bar(2, 0x0000_0006, 0xFFFF_F000)
                // BAR that reads all-ones and keeps doing so: smallest size
                .raw_bar(3, 0xFFFF_FFF0, 0)
                // 64-bit BAR in the last slot
                .raw_bar(5, 0xF000_0004, 0xFFFF_F000)
                .cap_ptr(0x40)
                .cap(0x40, 0x01, 0x3C),
        )
        .with(
            1,
            6,
            0,
            FakeFunction::new(0x1B36, 0x0001, 0x06, 0x04, 0x01).secondary_bus(1),
        )
        .with(7, 0, 0, FakeFunction::new(0x1234, 0x5678, 0xFF, 0, 0))
}

#[test]
fn address_display_and_encoding() {
    assert_eq!(A(0, 1, 0).to_string(), "00:01.0");
    assert_eq!(A(0xAB, 0x1F, 7).to_string(), "ab:1f.7");
    assert_eq!(A(1, 2, 3).config_address(0x3D), 0x8001_133C);
    assert!(!A(0, 32, 0).is_valid());
    assert!(!A(0, 0, 8).is_valid());
}

#[test]
fn enumeration_follows_bridges_only() {
    let p = machine();
    let found = Pci::new(&p).enumerate();
    let addrs: Vec<String> = found.iter().map(|f| f.address.to_string()).collect();
    assert_eq!(
        addrs,
        [
            "00:00.0", "00:01.0", "00:01.1", "00:01.3", "00:02.0", "00:03.0", "00:04.0", "01:00.0",
            "01:05.0", "01:06.0"
        ]
    );
    // No brute force: only bus 0 and the bridged bus 1 were touched, bus 1 only once
    // although two bridges lead there.
    assert_eq!(*p.buses_touched.borrow(), BTreeSet::from([0, 1]));
    assert!(
        p.port_accesses.get() < 1200,
        "{} port accesses",
        p.port_accesses.get()
    );
    assert!(
        p.violations.borrow().is_empty(),
        "{:?}",
        p.violations.borrow()
    );

    let ide = &found[2];
    assert_eq!((ide.vendor_id, ide.device_id), (0x8086, 0x7010));
    assert_eq!((ide.class, ide.subclass, ide.prog_if), (0x01, 0x01, 0x80));
    assert!(found[1].is_multifunction());
    assert!(!ide.is_multifunction());
    assert_eq!(found[3].revision, 3);
    assert_eq!(found[4].interrupt_line, 11);
    assert_eq!(found[4].interrupt_pin, 1);

    let bridge = &found[6];
    assert!(bridge.is_bridge());
    assert_eq!(bridge.secondary_bus, Some(1));
    assert_eq!(
        bridge.bars,
        [
            Some(Bar::Memory {
                addr: 0xFE00_0000,
                size: 0x100,
                is_64: false,
                prefetchable: false
            }),
            None,
            None,
            None,
            None,
            None
        ]
    );
    assert_eq!(found[0].secondary_bus, None);
}

#[test]
fn bar_decode_sizes_and_restore() {
    let p = machine();
    let before = p.func(0, 3, 0);
    let f = Pci::new(&p).probe(A(0, 3, 0)).unwrap().unwrap();
    assert_eq!(
        f.bar(0),
        Some(Bar::Io {
            port: 0xC000,
            size: 0x10
        })
    );
    assert_eq!(
        f.bar(1),
        Some(Bar::Memory {
            addr: 0xC000_0000,
            size: 0x1000,
            is_64: false,
            prefetchable: false
        })
    );
    assert_eq!(
        f.bar(2),
        Some(Bar::Memory {
            addr: 0x8_0000_0000,
            size: 0x4000,
            is_64: true,
            prefetchable: true
        })
    );
    assert_eq!(f.bar(3), None, "upper half of the 64-bit BAR");
    assert_eq!(f.bar(4), None);
    assert_eq!(f.bar(5), None);
    assert_eq!(f.bar(6), None);
    assert!(f.issues.is_empty(), "{:?}", f.issues);

    // Decode was switched off while sizing and everything restored afterwards.
    assert!(
        p.violations.borrow().is_empty(),
        "{:?}",
        p.violations.borrow()
    );
    let after = p.func(0, 3, 0);
    assert_eq!(after.get16(0x04), 0x0007);
    assert_eq!(after.get16(0x06), before.get16(0x06), "status untouched");
    for off in (0x10..0x28).step_by(4) {
        assert_eq!(after.get32(off), before.get32(off), "BAR at {off:#x}");
    }
}

#[test]
fn sizing_with_decode_enabled_would_be_caught() {
    // The fake's violation detector itself works (so the checks above can fail).
    let p = machine();
    let pci = Pci::new(&p);
    pci.write32(A(0, 3, 0), 0x10, u32::MAX).unwrap();
    assert_eq!(p.violations.borrow().len(), 1);
}

#[test]
fn large_64bit_bar_and_bad_bars() {
    let p = machine();
    let pci = Pci::new(&p);
    let f = pci.probe(A(1, 0, 0)).unwrap().unwrap();
    assert_eq!(
        f.bar(0),
        Some(Bar::Memory {
            addr: 0x40_0000_0000,
            size: 0x2_0000_0000,
            is_64: true,
            prefetchable: false
        })
    );

    let before = p.func(1, 5, 0);
    let bad = pci.probe(A(1, 5, 0)).unwrap().unwrap();
    assert_eq!(
        bad.issues[..5],
        [
            PciError::BarIoOutOfRange {
                index: 0,
                raw: 0x0001_0001,
                size: 0x10
            },
            PciError::BarNoSize {
                index: 1,
                raw: 0x8,
                sized: 0x8
            },
            PciError::BarReservedType { index: 2, raw: 0x6 },
            PciError::Bar64InLastSlot { index: 5 },
            PciError::BadCapabilityPointer {
                at: 0x41,
                pointer: 0x3C
            },
        ]
    );
    assert_eq!(bad.issues.len(), 5);
    assert_eq!(
        bad.bars,
        [
            None,
            None,
            None,
            Some(Bar::Memory {
                addr: 0xFFFF_FFF0,
                size: 0x10,
                is_64: false,
                prefetchable: false
            }),
            None,
            None
        ]
    );
    let after = p.func(1, 5, 0);
    assert_eq!(after.get16(0x04), 0x0001);
    for off in (0x10..0x28).step_by(4) {
        assert_eq!(after.get32(off), before.get32(off), "BAR at {off:#x}");
    }
    assert!(
        p.violations.borrow().is_empty(),
        "{:?}",
        p.violations.borrow()
    );
}

#[test]
fn capability_chain() {
    let p = machine();
    let pci = Pci::new(&p);
    let list = pci.capabilities(A(0, 3, 0)).unwrap();
    let pairs: Vec<(u8, u8)> = list.caps.iter().map(|c| (c.id, c.offset)).collect();
    assert_eq!(
        pairs,
        [(0x09, 0x40), (0x11, 0x50), (0x09, 0x60), (0x09, 0x70)]
    );
    assert_eq!(list.error, None);
    assert_eq!(
        list.find(0x11),
        Some(Capability {
            id: 0x11,
            offset: 0x50
        })
    );
    assert_eq!(list.find(0x10), None);

    let f = pci.probe(A(0, 3, 0)).unwrap().unwrap();
    assert_eq!(
        f.find_capability(cap_id::MSI_X).map(|c| c.offset),
        Some(0x50)
    );
    assert_eq!(f.find_capability(cap_id::MSI), None);
    let vendor: Vec<u8> = f.vendor_capabilities().map(|c| c.offset).collect();
    assert_eq!(vendor, [0x40, 0x60, 0x70]);

    // Status bit 4 clear: the pointer is ignored.
    p.functions.borrow_mut().get_mut(&(0, 3, 0)).unwrap().data[0x06] &= !0x10;
    assert_eq!(
        pci.capabilities(A(0, 3, 0)).unwrap(),
        CapabilityList::default()
    );
}

#[test]
fn capability_loop_and_bad_pointer() {
    let p = machine();
    let pci = Pci::new(&p);
    let list = pci.capabilities(A(1, 0, 0)).unwrap();
    assert_eq!(
        list.caps,
        [
            Capability {
                id: 0x05,
                offset: 0x40
            },
            Capability {
                id: 0x09,
                offset: 0x50
            }
        ]
    );
    assert_eq!(list.error, Some(PciError::CapabilityLoop { pointer: 0x40 }));

    // Pointer at 0x34 into the header.
    p.functions.borrow_mut().get_mut(&(1, 0, 0)).unwrap().data[0x34] = 0x20;
    let list = pci.capabilities(A(1, 0, 0)).unwrap();
    assert!(list.caps.is_empty());
    assert_eq!(
        list.error,
        Some(PciError::BadCapabilityPointer {
            at: 0x34,
            pointer: 0x20
        })
    );

    // A self-loop at the last dword; a function that reads all-ones everywhere.
    let p = FakePlatform::default().with(
        0,
        0,
        0,
        FakeFunction::new(0x1234, 1, 0, 0, 0)
            .cap_ptr(0xFC)
            .cap(0xFC, 0x09, 0xFF),
    );
    let list = Pci::new(&p).capabilities(A(0, 0, 0)).unwrap();
    assert_eq!(
        list.caps,
        [Capability {
            id: 0x09,
            offset: 0xFC
        }]
    );
    assert_eq!(list.error, Some(PciError::CapabilityLoop { pointer: 0xFC }));
    let list = Pci::new(&p).capabilities(A(0, 9, 0)).unwrap();
    assert_eq!(list.error, Some(PciError::CapabilityLoop { pointer: 0xFC }));
}

#[test]
fn odd_offset_config_access() {
    let p = machine();
    let pci = Pci::new(&p);
    let d = A(0, 3, 0);
    // Vendor 1234, device f100: bytes 34 12 00 f1.
    assert_eq!(pci.read8(d, 0x01).unwrap(), 0x12);
    assert_eq!(pci.read8(d, 0x03).unwrap(), 0xF1);
    assert_eq!(pci.read16(d, 0x01).unwrap(), 0x0012);
    assert_eq!(pci.read16(d, 0x02).unwrap(), 0xF100);
    assert_eq!(
        pci.read32(d, 0x02).unwrap(),
        0x0007_F100,
        "device ID + command 0x0007"
    );
    assert_eq!(pci.read32(d, 0x00).unwrap(), 0xF100_1234);
    // Interrupt pin via byte read at an odd offset.
    assert_eq!(pci.read8(d, 0x3D).unwrap(), 1);

    // Writes crossing a dword boundary, read back every way.
    pci.write32(d, 0xA1, 0x4433_2211).unwrap();
    pci.write16(d, 0xA7, 0x6655).unwrap();
    pci.write8(d, 0xA5, 0x77).unwrap();
    assert_eq!(
        p.func(0, 3, 0).data[0xA0..0xA9],
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x77, 0x00, 0x55, 0x66]
    );
    assert_eq!(pci.read32(d, 0xA1).unwrap(), 0x4433_2211);
    assert_eq!(pci.read16(d, 0xA3).unwrap(), 0x4433);
    assert_eq!(pci.read16(d, 0xA7).unwrap(), 0x6655);
    assert_eq!(pci.read32(d, 0xA5).unwrap(), 0x6655_0077);
    assert_eq!(pci.read32(d, 0xA4).unwrap(), 0x5500_7744);

    // A byte write to the interrupt line leaves the (read-only) pin and status alone.
    pci.write8(d, 0x3C, 5).unwrap();
    assert_eq!(pci.read16(d, 0x3C).unwrap(), 0x0105);

    // Last valid offsets, then out of range.
    assert!(pci.read8(d, 255).is_ok());
    assert!(pci.read16(d, 254).is_ok());
    assert!(pci.read32(d, 252).is_ok());
    assert_eq!(
        pci.read8(d, 256),
        Err(PciError::OffsetOutOfRange {
            offset: 256,
            width: 1
        })
    );
    assert_eq!(
        pci.read16(d, 255),
        Err(PciError::OffsetOutOfRange {
            offset: 255,
            width: 2
        })
    );
    assert_eq!(
        pci.read32(d, 253),
        Err(PciError::OffsetOutOfRange {
            offset: 253,
            width: 4
        })
    );
    assert_eq!(
        pci.write32(d, 0xFFFF, 0),
        Err(PciError::OffsetOutOfRange {
            offset: 0xFFFF,
            width: 4
        })
    );
    assert_eq!(
        pci.write16(d, 255, 0),
        Err(PciError::OffsetOutOfRange {
            offset: 255,
            width: 2
        })
    );
    assert_eq!(
        pci.write8(d, 256, 0),
        Err(PciError::OffsetOutOfRange {
            offset: 256,
            width: 1
        })
    );
    assert_eq!(
        pci.read8(A(0, 32, 0), 0),
        Err(PciError::InvalidAddress(A(0, 32, 0)))
    );
    assert_eq!(
        pci.probe(A(0, 0, 8)),
        Err(PciError::InvalidAddress(A(0, 0, 8)))
    );
    // Absent function reads all-ones.
    assert_eq!(pci.read32(A(0, 9, 0), 0x01).unwrap(), u32::MAX);
    assert_eq!(pci.probe(A(0, 9, 0)), Ok(None));
}

#[test]
fn command_register_helpers() {
    let p = machine();
    let pci = Pci::new(&p);
    let d = A(0, 3, 0);
    pci.write16(d, reg::COMMAND, 0).unwrap();
    pci.enable_bus_master(d).unwrap();
    assert_eq!(pci.command(d).unwrap(), command::BUS_MASTER);
    pci.enable_io_mem(d).unwrap();
    assert_eq!(pci.command(d).unwrap(), 0x0007);
    // The RW1C master-abort status bit survived (command writes are 16-bit).
    assert_eq!(pci.read16(d, reg::STATUS).unwrap() & 0x2000, 0x2000);
    // ...whereas a dword read-modify-write would have cleared it.
    let dw = pci.read32(d, reg::COMMAND).unwrap();
    pci.write32(d, reg::COMMAND, dw).unwrap();
    assert_eq!(pci.read16(d, reg::STATUS).unwrap() & 0x2000, 0);

    assert_eq!(
        pci.enable_bus_master(A(0, 9, 0)),
        Err(PciError::NoDevice(A(0, 9, 0)))
    );
}

#[test]
fn lspci_line() {
    let p = machine();
    let found = Pci::new(&p).enumerate();
    let lines: Vec<String> = found.iter().map(|f| f.to_string()).collect();
    assert_eq!(lines[0], "00:00.0 [0600]: 8086:1237 rev 02");
    assert_eq!(
        lines[5],
        "00:03.0 [ff00]: 1234:f100 rev 00 irq 10 pin A BAR0 io 0xc000+0x10 \
         BAR1 mem32 0xc0000000+0x1000 BAR2 mem64 pf 0x800000000+0x4000 \
         caps [09@40,11@50,09@60,09@70]"
    );
    assert_eq!(
        lines[6],
        "00:04.0 [0604]: 1b36:0001 rev 00 BAR0 mem32 0xfe000000+0x100 secondary-bus 01"
    );
    assert_eq!(
        lines[7],
        "01:00.0 [0200]: 1af4:1041 rev 00 irq 11 pin D BAR0 mem64 0x4000000000+0x200000000 \
         caps [05@40,09@50] !capability list loops back to 0x40"
    );
    let errors = vec![
        PciError::NoDevice(A(0, 1, 2)).to_string(),
        PciError::BarNoSize {
            index: 1,
            raw: 8,
            sized: 8,
        }
        .to_string(),
    ];
    assert_eq!(
        errors,
        [
            "no PCI function at 00:01.2",
            "BAR1 (0x00000008) has no size (reads 0x00000008 after sizing)"
        ]
    );
}
