//! virtio-blk behind the virtio-pci transport.

use super::*;
use crate::backends::faulty_disk::FaultSwitch;
use crate::backends::mem_disk::MemDisk;
use crate::devices::bus::Bus;
use crate::devices::lock;
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, CMD_MEM, REG_COMMAND};
use crate::devices::pci::msix;
use crate::devices::pci::PciFunction;
use crate::devices::virtio::blk::{self, Blk};
use crate::devices::virtio::device::{Activation, QueueBroken, VirtioDevice};
use crate::devices::virtio::transport_pci::{
    self as tp, common, BarRegion, VirtioPciDevice, NO_VECTOR,
};
use crate::devices::virtio::Memory;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Opcodes of [`virtio_blk()`] programs (the opcode byte is taken modulo 17).
pub mod vop {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const COMMON: u8 = 2;
    pub const QUEUE: u8 = 3;
    pub const NEGOTIATE: u8 = 4;
    pub const NOTIFY: u8 = 5;
    pub const MEM: u8 = 6;
    pub const DESC: u8 = 7;
    pub const REQUEST: u8 = 8;
    pub const AVAIL: u8 = 9;
    pub const AVAIL_EXTRA: u8 = 10;
    pub const CFG_WRITE: u8 = 11;
    pub const CFG_READ: u8 = 12;
    pub const MSIX: u8 = 13;
    pub const RESET: u8 = 14;
    pub const ISR: u8 = 15;
    /// Make the disk's backend fail (or heal): a byte with 2 bits each for reads, writes and
    /// flushes (0 works, 1 EIO, 2 short read, 3 ENOSPC).
    pub const FAULT: u8 = 16;
}

/// Canonical ring layout for queue 0 (room for 256 entries each).
const DESC_AT: u64 = 0x0;
const AVAIL_AT: u64 = 0x1000;
const USED_AT: u64 = 0x2000;
/// Request headers, data buffers and status bytes of the REQUEST op.
const HDR_AT: u64 = 0x3000;
const DATA_AT: u64 = 0x4000;
const STATUS_AT: u64 = 0x3800;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

fn put_desc(mem: &Memory, table: u64, i: u64, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    if let Some(a) = i.checked_mul(16).and_then(|o| table.checked_add(o)) {
        poke(mem, a, &d);
    }
}

/// Put `head` on the avail ring of a queue at `avail` with `size` entries.
fn push_avail(mem: &Memory, avail: u64, size: u16, head: u16) {
    let idx = peek_u16(mem, avail.wrapping_add(2));
    let slot = avail.wrapping_add(4 + 2 * (idx % size.max(1)) as u64);
    poke(mem, slot, &head.to_le_bytes());
    poke(
        mem,
        avail.wrapping_add(2),
        &idx.wrapping_add(1).to_le_bytes(),
    );
}

/// What a [`virtio_blk()`] run did (for the smoke tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VirtioSummary {
    pub notifies: u64,
    pub queue_interrupts: u64,
    pub needs_reset: bool,
    pub broken: Option<String>,
    pub requests: u64,
}

struct VirtioRig {
    dev: Arc<Mutex<VirtioPciDevice>>,
    bus: Bus,
    irq: Arc<VirtioIrq>,
    mem: Memory,
    offered: u64,
    msix_cap: u64,
    requests: Arc<AtomicU64>,
    /// The disk, shared with the model (to look inside), and the switch of the faulty disk
    /// around it, which the model owns.
    disk: MemDisk,
    switch: FaultSwitch,
}

/// [`Blk`] counting the chains it completes (the count is the transport's business otherwise).
struct CountingBlk {
    blk: Blk,
    requests: Arc<AtomicU64>,
}

impl VirtioDevice for CountingBlk {
    fn device_type(&self) -> u16 {
        self.blk.device_type()
    }
    fn features(&self) -> u64 {
        self.blk.features()
    }
    fn queue_max_sizes(&self) -> &[u16] {
        self.blk.queue_max_sizes()
    }
    fn config_len(&self) -> usize {
        self.blk.config_len()
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.blk.read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.blk.write_config(offset, data)
    }
    fn activate(&mut self, activation: Activation) -> Result<(), String> {
        self.blk.activate(activation)
    }
    fn activation(&self) -> Option<&Activation> {
        self.blk.activation()
    }
    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.blk.activation_mut()
    }
    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
        let before = self.blk.requests;
        let r = self.blk.process_queue(index);
        let n = self.blk.requests - before;
        let size = self.blk.queues().get(index).map_or(0, |q| q.size());
        assert!(
            n <= size as u64 * 4,
            "{n} chains for one notify on a {size}-entry queue"
        );
        self.requests.fetch_add(n, Ordering::Relaxed);
        r
    }
    fn reset(&mut self) {
        self.blk.reset()
    }
}

impl VirtioPciDriver for VirtioRig {
    fn bus(&mut self) -> &mut Bus {
        &mut self.bus
    }
}

impl VirtioRig {
    fn new(mem: Memory, disk: MemDisk) -> Self {
        let (backend, switch) = faulty(&disk);
        let blk = Blk::new(backend, *b"fuzz-virtio-blk\0\0\0\0\0");
        let offered = blk.features() | 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        let requests = Arc::new(AtomicU64::new(0));
        let dev = CountingBlk {
            blk,
            requests: requests.clone(),
        };
        let irq = Arc::new(VirtioIrq::new(2));
        let mut pci = VirtioPciDevice::new(Box::new(dev), mem.clone(), irq.clone(), 11)
            .expect("virtio-blk transport");
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
            requests,
            disk,
            switch,
        }
    }

    /// (size, desc, avail, used) of queue 0 as the device has them.
    fn queue0(&self) -> (u16, u64, u64, u64) {
        let d = lock(&self.dev);
        let q = d.queue(0).expect("queue 0");
        (q.size(), q.desc_table(), q.avail_ring(), q.used_ring())
    }

    fn op(&mut self, r: &mut Reader) {
        match r.u8() % 17 {
            op @ (vop::READ | vop::WRITE) => {
                // A region of the BAR (or the whole BAR), and an offset a little around it.
                let (base, len) = match r.u8() % 6 {
                    5 => (0, tp::BAR_SIZE),
                    i => (tp::REGIONS[i as usize].1, tp::REGIONS[i as usize].2),
                };
                let off = (base + r.u16() as u64 % (len + 32)).wrapping_sub(16);
                let width = r.width();
                if op == vop::READ {
                    let mut b = vec![0u8; width];
                    self.bus.read(VIRTIO_BAR.wrapping_add(off), &mut b);
                } else {
                    let v = r.value(width);
                    self.bus.write(VIRTIO_BAR.wrapping_add(off), &v);
                }
            }
            vop::COMMON => {
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
            vop::QUEUE => {
                let sel = [0, 1, 0xffff][r.u8() as usize % 3];
                let b = r.u8();
                let size = if b < 0x80 { 1 << (b % 9) } else { r.u16() };
                let layout = if r.u8() & 1 == 0 {
                    [DESC_AT, AVAIL_AT, USED_AT]
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
            vop::NEGOTIATE => {
                let mode = r.u8();
                let features = if mode & 1 == 0 { self.offered } else { r.u64() };
                self.negotiate(features, mode & 2 == 0);
            }
            vop::NOTIFY => {
                let q = r.u8();
                let off = tp::NOTIFY_OFFSET + 4 * (q % 4) as u64 + (q >> 6) as u64 % 4;
                let width = [2, 4, 1, 8][(q >> 2) as usize % 4];
                self.w(off, width, (q % 4) as u64);
            }
            vop::MEM => {
                let addr = r.u16() as u64;
                let n = r.u8() as usize;
                poke(&self.mem, addr, r.bytes(n));
            }
            vop::DESC => {
                let (size, desc, _, _) = self.queue0();
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
            vop::REQUEST => self.request(r),
            vop::AVAIL => {
                let (size, _, avail, _) = self.queue0();
                match r.u8() % 4 {
                    // The index jumps anywhere.
                    0 => poke(&self.mem, avail.wrapping_add(2), &r.u16().to_le_bytes()),
                    1 => push_avail(&self.mem, avail, size, r.u16()),
                    _ => push_avail(&self.mem, avail, size, r.u8() as u16 % size.max(1)),
                }
            }
            vop::AVAIL_EXTRA => {
                let (size, _, avail, used) = self.queue0();
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
            vop::CFG_WRITE => {
                let off = match r.u8() % 4 {
                    0 => self.msix_cap + 2,
                    1 => REG_COMMAND as u64,
                    2 => r.u8() as u64,
                    _ => r.u16() as u64 % 0x120,
                };
                let width = r.width();
                let v = r.value(width);
                lock(&self.dev).config_write(off, &v);
            }
            vop::CFG_READ => {
                let off = r.u16() as u64 % 0x120;
                let mut b = vec![0u8; r.width()];
                lock(&self.dev).config_read(off, &mut b);
            }
            vop::MSIX => {
                let v = (r.u8() % 4) as u64;
                let base = tp::MSIX_TABLE_OFFSET + 16 * v;
                let (addr, data, mask) = (r.u32(), r.u32(), r.u8() as u64 & 1);
                self.w(base, 4, addr as u64);
                self.w(base + 4, 4, 0);
                self.w(base + 8, 4, data as u64);
                self.w(base + 12, 4, mask);
            }
            vop::RESET => self.w(common::DEVICE_STATUS, 1, 0),
            vop::ISR => {
                let decode = lock(&self.dev).config().command() & CMD_MEM != 0;
                let isr = self.r(tp::ISR_OFFSET, 1);
                if decode {
                    assert!(isr <= 3, "ISR {isr:#x}");
                } else {
                    assert_eq!(isr, 0xff, "BAR0 answered with memory decode off");
                }
            }
            _ => self.switch.set(r.faults()),
        }
    }

    /// A mostly well-formed virtio-blk request on queue 0, made available (and maybe notified).
    fn request(&mut self, r: &mut Reader) {
        let (size, desc, avail, _) = self.queue0();
        let size = size.max(1);
        let head = r.u8() as u16 % size;
        use virtio_bindings::virtio_blk::*;
        let ty = match r.u8() % 6 {
            0 => VIRTIO_BLK_T_IN,
            1 => VIRTIO_BLK_T_OUT,
            2 => VIRTIO_BLK_T_FLUSH,
            3 => VIRTIO_BLK_T_GET_ID,
            4 => VIRTIO_BLK_T_DISCARD,
            _ => r.u32(),
        };
        let sector = match r.u8() % 4 {
            0 | 1 => r.u8() as u64 % (DISK_SECTORS + 2),
            2 => u64::MAX - r.u8() as u64,
            _ => r.u64(),
        };
        let hdr = HDR_AT + (r.u8() % 16) as u64 * 16;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ty.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        poke(&self.mem, hdr, &h);
        let data_writable = matches!(ty, VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID);
        let mut chain = vec![(hdr, 16u32, 0u16)];
        for k in 0..r.u8() % 4 {
            let b = r.u8();
            let addr = if b & 1 == 0 {
                DATA_AT + 0x1000 * k as u64
            } else {
                r.gpa()
            };
            let len = if b & 2 == 0 {
                512 * (1 + (b >> 4) as u32 % 4)
            } else {
                r.len32()
            };
            let write = data_writable ^ (b & 4 != 0);
            chain.push((addr, len, if write { F_WRITE } else { 0 }));
        }
        let status = STATUS_AT + r.u8() as u64;
        chain.push((status, 1, F_WRITE));
        let n = chain.len() as u16;
        for (k, (addr, len, flags)) in chain.into_iter().enumerate() {
            let i = (head + k as u16) % size;
            let last = k as u16 == n - 1;
            let flags = if last { flags } else { flags | F_NEXT };
            put_desc(&self.mem, desc, i as u64, addr, len, flags, (i + 1) % size);
        }
        push_avail(&self.mem, avail, size, head);
        if r.u8() & 1 == 0 {
            self.w(tp::NOTIFY_OFFSET, 2, 0);
        }
    }

    /// Invariants that hold after every operation.
    fn check(&mut self) {
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
        let q = d.queue(0).expect("queue 0");
        assert!(
            q.size().is_power_of_two() && q.size() <= blk::QUEUE_SIZE,
            "queue size {}",
            q.size()
        );
        if q.ready() {
            assert_eq!(q.desc_table() % 16, 0);
            assert_eq!(q.avail_ring() % 2, 0);
            assert_eq!(q.used_ring() % 4, 0);
        }
        let s = d.stats();
        assert!(s.queue_interrupts <= s.notifies, "{s:?}");
        assert!(s.config_interrupts <= s.resets + 1, "{s:?}");
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

    /// At the end: the disk heals, the transport still answers, and after a reset the device
    /// works.
    fn check_alive(&mut self) {
        self.switch.heal();
        let disk_now = self.disk.contents();
        // A driver's probe: decode and bus mastering on (the program may have turned them off).
        lock(&self.dev).config_write(
            REG_COMMAND as u64,
            &(CMD_IO | CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(self.r(common::NUM_QUEUES, 2), 1);
        assert_eq!(self.r(tp::DEVICE_OFFSET, 8), DISK_SECTORS);
        let mut id = [0u8; 4];
        lock(&self.dev).config_read(0, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
        let isr = self.r(tp::ISR_OFFSET, 1);
        assert!(isr <= 3, "ISR {isr:#x}");

        self.w(common::DEVICE_STATUS, 1, 0);
        assert_eq!(self.r(common::DEVICE_STATUS, 1), 0);
        self.setup_queue(0, 16, [DESC_AT, AVAIL_AT, USED_AT], NO_VECTOR, true);
        self.negotiate(self.offered, true);
        assert_eq!(self.r(common::DEVICE_STATUS, 1), 15);
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN.to_le_bytes());
        h[8..].copy_from_slice(&1u64.to_le_bytes());
        poke(&self.mem, HDR_AT, &h);
        poke(&self.mem, STATUS_AT, &[0xff]);
        put_desc(&self.mem, DESC_AT, 0, HDR_AT, 16, F_NEXT, 1);
        put_desc(&self.mem, DESC_AT, 1, DATA_AT, 512, F_NEXT | F_WRITE, 2);
        put_desc(&self.mem, DESC_AT, 2, STATUS_AT, 1, F_WRITE, 0);
        poke(&self.mem, AVAIL_AT, &[0, 0, 1, 0, 0, 0]);
        self.w(tp::NOTIFY_OFFSET, 2, 0);
        let d = lock(&self.dev);
        assert_eq!(d.broken(), None);
        drop(d);
        assert_eq!(peek_u16(&self.mem, USED_AT + 2), 1, "request not completed");
        let len: u32 = self.mem.read_obj(GuestAddress(USED_AT + 8)).unwrap_or(0);
        assert_eq!(len, 513);
        assert_eq!(
            self.mem.read_obj::<u8>(GuestAddress(STATUS_AT)).ok(),
            Some(0)
        );
        let mut data = vec![0u8; SECTOR];
        self.mem
            .read_slice(&mut data, GuestAddress(DATA_AT))
            .expect("in RAM");
        assert!(data == disk_now[SECTOR..2 * SECTOR], "wrong data read");
    }
}

/// virtio-blk over virtio-pci: header byte (bit 0: seed guest memory from the input, bit 1:
/// read-only disk), then operations ([`vop`]).
pub fn virtio_blk(data: &[u8]) {
    run_virtio_blk(data);
}

/// [`virtio_blk()`], returning what happened.
pub fn run_virtio_blk(data: &[u8]) -> VirtioSummary {
    let mut r = Reader(data);
    let flags = r.u8();
    let mem = new_memory((flags & 1 != 0).then_some(data));
    let mut rig = VirtioRig::new(mem, image_disk(flags & 2 != 0));
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        rig.op(&mut r);
        rig.check();
    }
    let summary = {
        let d = lock(&rig.dev);
        VirtioSummary {
            notifies: d.stats().notifies,
            queue_interrupts: d.stats().queue_interrupts,
            needs_reset: d.broken().is_some(),
            broken: d.broken().map(str::to_string),
            requests: rig.requests.load(Ordering::Relaxed),
        }
    };
    rig.check_alive();
    check_image_disk(&rig.disk);
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn virtio_blk_random_programs() {
        random(0x5eed_0001, 3000, 400, &virtio_ready().0[1..], virtio_blk);
    }

    /// Queue 0, 16 entries, canonical layout, no vector, enabled; then FEATURES_OK and DRIVER_OK.
    fn virtio_ready() -> P {
        P(vec![0]) // header: zeroed memory, read-write disk
            .op(&[vop::QUEUE, 0, 4, 0, 2, 1])
            .op(&[vop::NEGOTIATE, 0])
    }

    /// DESC op: index i, address in RAM (selector 0 + 16-bit address), length selector 2 (512
    /// * (1 + n)), flags, next.
    fn desc(i: u8, addr: u16, flags: u8, next: u8) -> Vec<u8> {
        let a = addr.to_le_bytes();
        vec![vop::DESC, i, 0, a[0], a[1], 2, 0, flags, next]
    }

    #[test]
    fn virtio_well_formed_read_completes() {
        // REQUEST: head 0, IN, sector 3, header slot 0, one data buffer (512), status +0, notify.
        let p = virtio_ready().op(&[vop::REQUEST, 0, 0, 0, 3, 0, 1, 0, 0, 0]);
        let s = run_virtio_blk(&p.0);
        assert_eq!(s.requests, 1);
        assert_eq!(s.queue_interrupts, 1);
        assert!(!s.needs_reset);
    }

    #[test]
    fn virtio_backend_fault_gets_ioerr_and_the_disk_heals_for_the_end_checks() {
        // FAULT: reads fail with EIO; then the read of `virtio_well_formed_read_completes`.
        let p =
            virtio_ready()
                .op(&[vop::FAULT, 0b01])
                .op(&[vop::REQUEST, 0, 0, 0, 3, 0, 1, 0, 0, 0]);
        // The end-of-run read (after healing) succeeds.
        let s = run_virtio_blk(&p.0);
        assert_eq!(s.requests, 1);
        assert!(!s.needs_reset, "{s:?}");
        // The faulted request itself completed with IOERR.
        let mut rig = VirtioRig::new(new_memory(None), image_disk(false));
        let mut r = Reader(&p.0[1..]);
        while !r.is_empty() {
            rig.op(&mut r);
            rig.check();
        }
        let status: u8 = rig.mem.read_obj(GuestAddress(STATUS_AT)).unwrap();
        assert_eq!(
            status,
            virtio_bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8
        );
        rig.check_alive();
    }

    #[test]
    fn virtio_descriptor_loop() {
        // 0 -> 1 -> 2 -> 0 -> ...: the chain is returned with length 0, nothing breaks.
        let mut p = virtio_ready();
        for (i, next) in [(0u8, 1u8), (1, 2), (2, 0)] {
            p = p.op(&desc(i, 0x4000, F_NEXT as u8 | F_WRITE as u8, next));
        }
        let p = p.op(&[vop::AVAIL, 2, 0]).op(&[vop::NOTIFY, 0]);
        let s = run_virtio_blk(&p.0);
        assert_eq!(s.requests, 1);
        assert!(!s.needs_reset);
    }

    #[test]
    fn virtio_avail_index_jump() {
        // The driver claims 0x8000 new entries on a 16-entry ring: NEEDS_RESET, no panic.
        let p = virtio_ready()
            .op(&[vop::AVAIL, 0, 0x00, 0x80])
            .op(&[vop::NOTIFY, 0]);
        let s = run_virtio_blk(&p.0);
        assert!(s.needs_reset, "{s:?}");
        assert_eq!(s.requests, 0);
    }

    #[test]
    fn virtio_ring_outside_ram_and_huge_lengths() {
        // Rings outside RAM (at 0x1_0010, in the hole after the first region, as any GPA);
        // then a descriptor of almost 4 GiB.
        let top = [7u8, 0x10, 0x00, 0x01, 0, 0, 0, 0, 0];
        let mut q = vec![vop::QUEUE, 0, 4, 1];
        for _ in 0..3 {
            q.extend_from_slice(&top);
        }
        q.extend_from_slice(&[2, 1]);
        let p = P(vec![0])
            .op(&q)
            .op(&[vop::NEGOTIATE, 0])
            .op(&[vop::NOTIFY, 0]);
        assert!(run_virtio_blk(&p.0).needs_reset);
        let p = virtio_ready()
            .op(&[vop::DESC, 0, 0, 0x00, 0x30, 6, 0, 1, 1])
            .op(&[vop::DESC, 1, 0, 0x00, 0x40, 6, 0, 3, 2])
            .op(&desc(2, 0x3800, F_WRITE as u8, 0))
            .op(&[vop::AVAIL, 2, 0])
            .op(&[vop::NOTIFY, 0]);
        let s = run_virtio_blk(&p.0);
        assert_eq!(s.requests, 1);
    }
}
