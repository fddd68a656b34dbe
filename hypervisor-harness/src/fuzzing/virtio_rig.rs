//! A virtio-pci function around any [`VirtioDevice`], driven as a hostile driver would: what
//! the balloon, console and virtio-blk targets share (each adds its device's own ops and
//! checks); virtio-net, which tracks every guest write against a shadow, takes the transport,
//! the memory-neutral ops and the checks.
//!
//! Guest memory is the common layout ([`MEM_REGIONS`]); queue q's canonical rings sit at
//! `q * 0x1000` (descriptors, avail at +0x400, used at +0x800), and CHAIN buffers come from
//! [`BUF_START`] up, wrapping. Raw ops put rings and descriptors anywhere, holes and region
//! edges included.
//!
//! Checks after every op: the transport's status machine (NEEDS_RESET exactly when broken,
//! FEATURES_OK only with offered features), queue sizes and alignments, interrupt counts, the
//! MSI-X table's pending bits (none past the table) and vectors. At the end the device answers its identity, and
//! after a reset a canonical setup reaches DRIVER_OK.

use super::*;
use crate::devices::bus::Bus;
use crate::devices::lock;
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, CMD_MEM, REG_COMMAND};
use crate::devices::pci::msix;
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::transport_pci::{
    self as tp, common, BarRegion, VirtioPciDevice, NO_VECTOR,
};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use virtio_queue::QueueT;

/// Opcodes every rig program has (the device's own follow, from [`GENERIC_OPS`]).
pub mod rop {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const COMMON: u8 = 2;
    pub const QUEUE: u8 = 3;
    pub const NEGOTIATE: u8 = 4;
    pub const NOTIFY: u8 = 5;
    pub const MEM: u8 = 6;
    pub const DESC: u8 = 7;
    pub const AVAIL: u8 = 8;
    pub const USED: u8 = 9;
    pub const CFG_WRITE: u8 = 10;
    pub const CFG_READ: u8 = 11;
    pub const MSIX: u8 = 12;
    pub const RESET: u8 = 13;
    pub const ISR: u8 = 14;
    /// A chain of 1..=4 buffers on a queue (readable ones filled by the device's payload
    /// maker, writable ones left), made available and maybe notified.
    pub const CHAIN: u8 = 15;
}
pub const GENERIC_OPS: u8 = 16;

pub const RING_STRIDE: u64 = 0x1000;
pub const AVAIL_OFF: u64 = 0x400;
pub const USED_OFF: u64 = 0x800;
/// Largest queue a canonical layout holds.
pub const CANON_MAX: u16 = 64;
pub const BUF_START: u64 = 0x8000;
const BUF_END: u64 = MEM_SIZE;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// A split-ring descriptor as it sits in the table.
pub fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    d
}

/// Where descriptor `i` of the table at `table` sits (none when the address overflows).
pub fn desc_addr(table: u64, i: u64) -> Option<u64> {
    i.checked_mul(16).and_then(|o| table.checked_add(o))
}

pub fn put_desc(mem: &Memory, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    if let Some(a) = desc_addr(table, i) {
        poke(mem, a, &desc_bytes(addr, len, flags, next));
    }
}

/// Put `head` on the avail ring at `avail` of a `size`-entry queue.
pub fn push_avail(mem: &Memory, avail: u64, size: u16, head: u16) {
    let idx = peek_u16(mem, avail.wrapping_add(2));
    let slot = avail.wrapping_add(4 + 2 * (idx % size.max(1)) as u64);
    poke(mem, slot, &head.to_le_bytes());
    poke(
        mem,
        avail.wrapping_add(2),
        &idx.wrapping_add(1).to_le_bytes(),
    );
}

/// The canonical rings of queue `q`.
pub fn canonical(q: usize) -> [u64; 3] {
    let base = q as u64 * RING_STRIDE;
    [base, base + AVAIL_OFF, base + USED_OFF]
}

/// Makes the bytes of a readable buffer for queue `q`: the device's idea of a request.
pub type Payload = fn(&mut Reader, usize) -> Vec<u8>;

pub struct Rig {
    pub dev: Arc<Mutex<VirtioPciDevice>>,
    pub bus: Bus,
    irq: Arc<VirtioIrq>,
    pub mem: Memory,
    pub offered: u64,
    pub msix_cap: u64,
    pub queues: usize,
    max_sizes: Vec<u16>,
    device_type: u16,
    payload: Payload,
    next_buf: u64,
    /// Per queue: the next descriptor CHAIN uses.
    next_desc: Vec<u16>,
}

impl VirtioPciDriver for Rig {
    fn bus(&mut self) -> &mut Bus {
        &mut self.bus
    }
}

impl Rig {
    pub fn new(device: Box<dyn VirtioDevice>, mem: Memory, payload: Payload) -> Self {
        let offered = device.features() | 1 << VIRTIO_F_VERSION_1;
        let max_sizes = device.queue_max_sizes().to_vec();
        let device_type = device.device_type();
        let queues = max_sizes.len();
        let irq = Arc::new(VirtioIrq::new(tp::msix_vectors(queues)));
        let mut pci =
            VirtioPciDevice::new(device, mem.clone(), irq.clone(), 11).expect("transport");
        pci.config_mut()
            .set_bar_address(tp::BAR, VIRTIO_BAR)
            .expect("BAR address");
        pci.config_mut().enable(CMD_IO | CMD_MEM | CMD_BUS_MASTER);
        let msix_cap = capabilities(&mut pci)
            .iter()
            .find(|c| c.1 == msix::CAP_ID)
            .map(|c| c.0 as u64)
            .expect("virtio-pci has MSI-X");
        let dev = Arc::new(Mutex::new(pci));
        let mut bus = Bus::new();
        for (name, off, len) in tp::REGIONS {
            let region = Arc::new(Mutex::new(BarRegion::new(dev.clone(), off)));
            bus.insert(name, VIRTIO_BAR + off, len, region)
                .expect("BAR layout");
        }
        Self {
            dev,
            bus,
            irq,
            mem,
            offered,
            msix_cap,
            queues,
            max_sizes,
            device_type,
            payload,
            next_buf: BUF_START,
            next_desc: vec![0; queues],
        }
    }

    /// (size, desc, avail, used) of queue `q` as the transport has it.
    pub fn queue(&self, q: usize) -> (u16, u64, u64, u64) {
        let d = lock(&self.dev);
        d.queue(q).map_or((0, 0, 0, 0), |q| {
            (q.size(), q.desc_table(), q.avail_ring(), q.used_ring())
        })
    }

    fn pick_queue(&self, r: &mut Reader) -> usize {
        // Mostly a real queue, sometimes one past the end.
        r.u8() as usize % (self.queues + 1)
    }

    /// `len` bytes of buffer space (wrapping in the buffer area).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.min(BUF_END - BUF_START);
        if self.next_buf + len > BUF_END {
            self.next_buf = BUF_START;
        }
        let at = self.next_buf;
        self.next_buf += len;
        at
    }

    /// Run one generic op (`op` < [`GENERIC_OPS`]).
    pub fn op(&mut self, op: u8, r: &mut Reader) {
        match op {
            rop::READ | rop::WRITE => {
                let (base, len) = match r.u8() % 6 {
                    5 => (0, tp::BAR_SIZE),
                    i => (tp::REGIONS[i as usize].1, tp::REGIONS[i as usize].2),
                };
                let off = (base + r.u16() as u64 % (len + 32)).wrapping_sub(16);
                let width = r.width();
                if op == rop::READ {
                    let mut b = vec![0u8; width];
                    self.bus.read(VIRTIO_BAR.wrapping_add(off), &mut b);
                } else {
                    let v = r.value(width);
                    self.bus.write(VIRTIO_BAR.wrapping_add(off), &v);
                }
            }
            rop::COMMON => {
                // Every field of virtio_pci_common_cfg at its width, 64-bit ones also halved.
                const REGS: [(u64, usize); 22] = [
                    (0x00, 4),
                    (0x04, 4),
                    (0x08, 4),
                    (0x0c, 4),
                    (0x10, 2),
                    (0x12, 2),
                    (0x14, 1),
                    (0x15, 1),
                    (0x16, 2),
                    (0x18, 2),
                    (0x1a, 2),
                    (0x1c, 2),
                    (0x1e, 2),
                    (0x20, 8),
                    (0x20, 4),
                    (0x24, 4),
                    (0x28, 8),
                    (0x28, 4),
                    (0x2c, 4),
                    (0x30, 8),
                    (0x30, 4),
                    (0x34, 4),
                ];
                let (off, len) = REGS[r.u8() as usize % REGS.len()];
                let v = match r.u8() % 4 {
                    0 => r.u8() as u64,
                    1 => 1,
                    _ => r.u64(),
                };
                self.w(off, len, v);
            }
            rop::QUEUE => {
                let sel = match r.u8() % 8 {
                    7 => 0xffff,
                    _ => self.pick_queue(r) as u16,
                };
                let b = r.u8();
                let size = if b < 0x80 { 1 << (b % 8) } else { r.u16() };
                let layout = if r.u8() & 1 == 0 {
                    canonical(sel as usize)
                } else {
                    [r.gpa(), r.gpa(), r.gpa()]
                };
                let vector = match r.u8() % 4 {
                    0 => 0,
                    1 => 1,
                    2 => NO_VECTOR,
                    _ => r.u16(),
                };
                let enable = !r.u8().is_multiple_of(4);
                self.setup_queue(sel, size, layout, vector, enable);
            }
            rop::NEGOTIATE => {
                let mode = r.u8();
                let features = match mode % 4 {
                    // Offered, a subset of it, or anything.
                    0 | 1 => self.offered,
                    2 => self.offered & r.u64(),
                    _ => r.u64(),
                };
                self.negotiate(features, mode & 4 == 0);
            }
            rop::NOTIFY => {
                let b = r.u8();
                let q = b as u64 % (self.queues as u64 + 1);
                let off = tp::NOTIFY_OFFSET + 4 * q + (b >> 6) as u64 % 4;
                let width = [2, 4, 1, 8][(b >> 4) as usize % 4];
                self.w(off, width, q);
            }
            rop::MEM => {
                let addr = r.gpa();
                let n = r.u8() as usize;
                poke(&self.mem, addr, r.bytes(n));
            }
            rop::DESC => {
                let (size, desc, _, _) = self.queue(self.pick_queue(r));
                let i = match r.u8() {
                    b if b < 0xf0 => b as u64 % size.max(1) as u64,
                    _ => r.u16() as u64,
                };
                let (addr, len) = (r.gpa(), r.len32());
                let flags = r.u8() as u16 & 7;
                let next = match r.u8() {
                    b if b < 0xf0 => b as u16 % size.max(1),
                    _ => r.u16(),
                };
                put_desc(&self.mem, desc, i, addr, len, flags, next);
            }
            rop::AVAIL => {
                let (size, _, avail, _) = self.queue(self.pick_queue(r));
                match r.u8() % 4 {
                    // The index jumps anywhere.
                    0 => poke(&self.mem, avail.wrapping_add(2), &r.u16().to_le_bytes()),
                    1 => push_avail(&self.mem, avail, size, r.u16()),
                    _ => push_avail(&self.mem, avail, size, r.u8() as u16 % size.max(1)),
                }
            }
            rop::USED => {
                let (size, _, avail, used) = self.queue(self.pick_queue(r));
                let v = r.u16();
                match r.u8() % 4 {
                    0 => poke(&self.mem, avail, &v.to_le_bytes()),
                    // used_event
                    1 => poke(
                        &self.mem,
                        avail.wrapping_add(4 + 2 * size as u64),
                        &v.to_le_bytes(),
                    ),
                    2 => poke(&self.mem, used.wrapping_add(2), &v.to_le_bytes()),
                    _ => poke(&self.mem, used, &v.to_le_bytes()),
                }
            }
            rop::CFG_WRITE => {
                let off = self.cfg_offset(r);
                let width = r.width();
                let v = r.value(width);
                lock(&self.dev).config_write(off, &v);
            }
            rop::CFG_READ => {
                let off = r.u16() as u64 % 0x120;
                let mut b = vec![0u8; r.width()];
                lock(&self.dev).config_read(off, &mut b);
            }
            rop::MSIX => {
                let v = r.u8() as u64 % (self.queues as u64 + 2);
                let base = tp::MSIX_TABLE_OFFSET + 16 * v;
                let (addr, data, mask) = (r.u32(), r.u32(), r.u8() as u64 & 1);
                self.w(base, 4, addr as u64);
                self.w(base + 4, 4, 0);
                self.w(base + 8, 4, data as u64);
                self.w(base + 12, 4, mask);
            }
            rop::RESET => self.w(common::DEVICE_STATUS, 1, 0),
            rop::ISR => {
                let decode = lock(&self.dev).config().command() & CMD_MEM != 0;
                let isr = self.r(tp::ISR_OFFSET, 1);
                if decode {
                    assert!(isr <= 3, "ISR {isr:#x}");
                } else {
                    assert_eq!(isr, 0xff, "BAR0 answered with memory decode off");
                }
            }
            rop::CHAIN => self.chain(r),
            // Not a generic op: the device's own, which its target runs.
            _ => {}
        }
    }

    /// A configuration space offset: MSI-X control, the command register, or anywhere.
    pub fn cfg_offset(&self, r: &mut Reader) -> u64 {
        match r.u8() % 4 {
            0 => self.msix_cap + 2,
            1 => REG_COMMAND as u64,
            2 => r.u8() as u64,
            _ => r.u16() as u64 % 0x120,
        }
    }

    /// A chain of 1..=4 buffers on a queue, published, notified unless the input says not.
    fn chain(&mut self, r: &mut Reader) {
        let q = self.pick_queue(r);
        let (size, desc, avail, _) = self.queue(q);
        let size = size.max(1);
        let b = r.u8();
        let n = 1 + (b % 4) as u16;
        let Some(next) = self.next_desc.get_mut(q) else {
            return;
        };
        let head = *next % size;
        *next = next.wrapping_add(n);
        for k in 0..n {
            let i = (head + k) % size;
            let writable = r.u8() & 1 == 1;
            let (addr, len) = if writable {
                let len = match r.u8() % 4 {
                    0 => r.len32(),
                    _ => 1 + r.u16() as u32 % 0x1000,
                };
                (self.alloc(u64::from(len)), len)
            } else if r.u8().is_multiple_of(8) {
                (r.gpa(), r.len32())
            } else {
                let bytes = (self.payload)(r, q);
                let at = self.alloc(bytes.len() as u64);
                poke(&self.mem, at, &bytes);
                (at, bytes.len() as u32)
            };
            let last = k + 1 == n;
            let flags = if writable { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            put_desc(&self.mem, desc, i as u64, addr, len, flags, (i + 1) % size);
        }
        push_avail(&self.mem, avail, size, head);
        if b & 0x80 == 0 {
            self.w(tp::NOTIFY_OFFSET + 4 * q as u64, 2, q as u64);
        }
    }

    /// The transport's invariants.
    pub fn check(&mut self) {
        let d = lock(&self.dev);
        let status = d.status();
        let needs_reset = status & VIRTIO_CONFIG_S_NEEDS_RESET as u8 != 0;
        assert_eq!(needs_reset, d.broken().is_some(), "NEEDS_RESET vs broken");
        if status & VIRTIO_CONFIG_S_FEATURES_OK as u8 != 0 {
            assert_eq!(
                d.driver_features() & !self.offered,
                0,
                "FEATURES_OK with features the device does not offer"
            );
        }
        for (i, &max) in self.max_sizes.iter().enumerate() {
            let q = d.queue(i).expect("every declared queue");
            assert!(
                q.size().is_power_of_two() && q.size() <= max,
                "queue {i} size {}",
                q.size()
            );
            if q.ready() {
                assert_eq!(q.desc_table() % 16, 0);
                assert_eq!(q.avail_ring() % 2, 0);
                assert_eq!(q.used_ring() % 4, 0);
            }
        }
        let m = d.msix();
        for v in 0..m.vectors() {
            if m.enabled() && m.is_pending(v) {
                assert!(m.is_masked(v), "vector {v} pending but deliverable");
            }
        }
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(
            u64::from_le_bytes(pba) >> m.vectors(),
            0,
            "PBA beyond table"
        );
        if m.enabled() {
            assert!(
                !self.irq.intx_level.load(Ordering::Relaxed),
                "INTx asserted with MSI-X on"
            );
        }
        assert!(
            !self.irq.bad_vector.load(Ordering::Relaxed),
            "MSI on a vector the function does not have"
        );
    }

    /// At the end: the function answers its identity, and after a reset every queue is set
    /// up canonically (16 entries, rings zeroed) and the device reaches DRIVER_OK with every
    /// offered feature. The device's own end checks follow.
    pub fn check_alive(&mut self) {
        self.check_alive_with(self.offered);
    }

    /// [`Rig::check_alive`], the driver taking `features`.
    pub fn check_alive_with(&mut self, features: u64) {
        lock(&self.dev).config_write(
            REG_COMMAND as u64,
            &(CMD_IO | CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(self.r(common::NUM_QUEUES, 2), self.queues as u64);
        let mut id = [0u8; 4];
        lock(&self.dev).config_read(0, &mut id);
        assert_eq!(
            u32::from_le_bytes(id),
            0x1af4 | u32::from(0x1040 + self.device_type) << 16
        );
        let isr = self.r(tp::ISR_OFFSET, 1);
        assert!(isr <= 3, "ISR {isr:#x}");
        self.w(common::DEVICE_STATUS, 1, 0);
        assert_eq!(self.r(common::DEVICE_STATUS, 1), 0);
        for q in 0..self.queues {
            let [d, a, u] = canonical(q);
            poke(&self.mem, d, &[0; 0x400]);
            poke(&self.mem, a, &[0; 0x400]);
            poke(&self.mem, u, &[0; 0x400]);
            self.setup_queue(q as u16, 16.min(CANON_MAX), [d, a, u], NO_VECTOR, true);
        }
        self.next_desc.fill(0);
        self.negotiate(features, true);
        assert_eq!(self.r(common::DEVICE_STATUS, 1), 15, "device did not start");
        assert_eq!(lock(&self.dev).broken(), None);
    }

    /// Make `bytes` available on canonical queue `q` as one readable (or, `writable`, one
    /// device-writable buffer of `bytes.len()`) and notify. Returns the used index after.
    pub fn submit(&mut self, q: usize, bytes: &[u8], writable: bool) -> u16 {
        let [desc, avail, used] = canonical(q);
        let at = self.alloc(bytes.len() as u64);
        poke(&self.mem, at, bytes);
        let i = self.next_desc[q] % 16;
        self.next_desc[q] = self.next_desc[q].wrapping_add(1);
        let flags = if writable { F_WRITE } else { 0 };
        put_desc(&self.mem, desc, i as u64, at, bytes.len() as u32, flags, 0);
        push_avail(&self.mem, avail, 16, i);
        self.w(tp::NOTIFY_OFFSET + 4 * q as u64, 2, q as u64);
        assert_eq!(
            lock(&self.dev).broken(),
            None,
            "queue {q} broke on a sane buffer"
        );
        peek_u16(&self.mem, used + 2)
    }
}
