//! Fuzz entry points for the device models (ARCHITECTURE.md, "Tests, in layers", layer 4).
//!
//! Each entry point reads its input as a program: a header (which disks, how guest memory starts
//! out) and then a bounded sequence of operations, each an opcode byte and its operands, as a
//! guest would issue them: bus reads and writes of any width at offsets in and just around the
//! device's ranges, register programming, queue and PRD table setup, notifies, writes into guest
//! memory (rings, descriptor tables with loops, huge lengths, addresses outside RAM), resets.
//! Missing bytes read as zero, so every input is a valid program.
//!
//! The contract: no panic, bounded work per input ([`MAX_OPS`] operations on a 64 KiB guest and
//! 16-sector disks), and the device's invariants hold after every operation and at the end
//! (status registers sane, interrupts only on vectors that exist, the disk files neither grew
//! nor, when read-only, changed, and the device still works after a reset). A violation is a
//! panic, which is what cargo-fuzz (`hypervisor-harness/fuzz/`) and the smoke tests below report.
//!
//! Guest memory is a real `GuestMemoryMmap` touched only through vm-memory's checked accessors.
//! virtio-blk's disk images are two small files per thread in the temporary directory (one
//! read-write, restored to its pattern before each input, and one opened read-only), removed
//! when the thread ends. IDE drives are memory disks ([`MemDisk`]), new for each input, with
//! failures the program injects: no file I/O per input.

use crate::backends::disk::{DiskBackend, RawDisk};
use crate::backends::mem_disk::{Fault, Faults, MemDisk};
use crate::devices::bus::Bus;
use crate::devices::floor::FloorFunction;
use crate::devices::ide::ata::{self, DeviceControl, DeviceReg, Status, TaskfileReg};
use crate::devices::ide::bmdma::{BmCommand, BmReg, BmStatus, PrdEntry};
use crate::devices::ide::piix::{self, IdePort, PiixFunction, PiixIde, Port};
use crate::devices::pci::config::{PciConfig, CMD_BUS_MASTER, CMD_IO, CMD_MEM, REG_COMMAND};
use crate::devices::pci::host_bridge::HostBridge;
use crate::devices::pci::msix::{self, Msix, Trigger};
use crate::devices::pci::{Bdf, PciConfigIo, PciFunction, SharedFunction};
use crate::devices::virtio::blk::{self, Blk};
use crate::devices::virtio::device::{Activation, QueueBroken, VirtioDevice};
use crate::devices::virtio::transport_pci::{
    self as tp, common, BarRegion, VirtioPciDevice, NO_VECTOR,
};
use crate::devices::virtio::{Memory, MsiMessage, VirtioInterrupt};
use crate::devices::{le_value, lock, Interrupt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_queue::QueueT;
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// Most operations one input runs.
pub const MAX_OPS: usize = 96;
/// Guest RAM: 64 KiB at GPA 0.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Size of each disk image, in sectors.
pub const DISK_SECTORS: u64 = 16;
const SECTOR: usize = 512;

/// Where the virtio-pci BAR and the IDE BAR4 sit on their buses.
const VIRTIO_BAR: u64 = crate::devices::pci::MMIO_BAR_START;
const IDE_BAR4: u64 = crate::devices::pci::IO_BAR_START;

// ---------------------------------------------------------------------------------------------
// Input decoding

/// The unread rest of an input; reads past the end give zeros.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    /// An access width: mostly 1, 2, 4 or 8, sometimes 0, 3, 6 or 16.
    fn width(&mut self) -> usize {
        const W: [usize; 16] = [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 0, 3, 6, 16];
        W[(self.u8() % 16) as usize]
    }
    /// `width` bytes of access data.
    fn value(&mut self, width: usize) -> Vec<u8> {
        let mut v = self.bytes(width).to_vec();
        v.resize(width, 0);
        v
    }
    /// A guest physical address: mostly in RAM, else straddling its end, beyond it, near the
    /// top of the address space or anything.
    fn gpa(&mut self) -> u64 {
        match self.u8() % 8 {
            0..=3 => self.u16() as u64 % MEM_SIZE,
            4 => MEM_SIZE - 1 - (self.u8() as u64),
            5 => MEM_SIZE + self.u16() as u64,
            6 => u64::MAX - self.u16() as u64,
            _ => self.u64(),
        }
    }
    /// A buffer length: small, whole sectors, or huge.
    fn len32(&mut self) -> u32 {
        match self.u8() % 8 {
            0 => 0,
            1 => 1,
            2 | 3 => 512 * (1 + self.u8() as u32 % 4),
            4 => 16,
            5 => self.u16() as u32,
            6 => u32::MAX - self.u8() as u32,
            _ => self.u32(),
        }
    }
}

fn new_memory(seed_from: Option<&[u8]>) -> Memory {
    let mem = Memory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("64 KiB of anonymous guest memory");
    if let Some(seed) = seed_from.filter(|s| !s.is_empty()) {
        let mut at = 0u64;
        while at < MEM_SIZE {
            let n = seed.len().min((MEM_SIZE - at) as usize);
            let _ = mem.write_slice(&seed[..n], GuestAddress(at));
            at += n as u64;
        }
    }
    mem
}

/// A guest write that may fall partly or wholly outside RAM (then the rest is dropped).
fn poke(mem: &Memory, addr: u64, bytes: &[u8]) {
    let _ = mem.write_slice(bytes, GuestAddress(addr));
}

fn peek_u16(mem: &Memory, addr: u64) -> u16 {
    mem.read_obj::<u16>(GuestAddress(addr)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Disk images

fn image_pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..DISK_SECTORS as usize * SECTOR)
            .map(|i| (i / SECTOR) as u8 ^ (i as u8).wrapping_mul(7))
            .collect()
    })
}

/// One thread's two images: `rw` (restored before each input) and `ro` (opened read-only).
struct Images {
    rw: PathBuf,
    ro: PathBuf,
}

impl Images {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir();
        let name = |k: &str| dir.join(format!("hh-fuzz-{}-{n}-{k}.img", std::process::id()));
        let img = Self {
            rw: name("rw"),
            ro: name("ro"),
        };
        for p in [&img.rw, &img.ro] {
            std::fs::write(p, image_pattern()).expect("cannot create a fuzz disk image");
        }
        img
    }

    /// Put the read-write image back to its pattern (only written when it changed).
    fn restore(&self) {
        if std::fs::read(&self.rw).ok().as_deref() != Some(image_pattern()) {
            std::fs::write(&self.rw, image_pattern()).expect("cannot restore a fuzz disk image");
        }
    }

    fn open(&self, read_only: bool) -> RawDisk {
        let p = if read_only { &self.ro } else { &self.rw };
        RawDisk::open(p, read_only).expect("fuzz disk image opens")
    }

    /// The images did not grow, and the read-only one did not change.
    fn check(&self) {
        let len = DISK_SECTORS * SECTOR as u64;
        let rw = std::fs::metadata(&self.rw).map(|m| m.len()).ok();
        assert_eq!(rw, Some(len), "read-write image changed size");
        let ro = std::fs::read(&self.ro).ok();
        assert!(
            ro.as_deref() == Some(image_pattern()),
            "read-only image was modified"
        );
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.rw);
        let _ = std::fs::remove_file(&self.ro);
    }
}

thread_local! {
    static IMAGES: Images = Images::new();
}

fn with_images<R>(f: impl FnOnce(&Images) -> R) -> R {
    IMAGES.with(|img| {
        img.restore();
        let out = f(img);
        img.check();
        out
    })
}

// ---------------------------------------------------------------------------------------------
// Interrupt fakes

#[derive(Default)]
struct EdgeIrq(AtomicU64);

impl Interrupt for EdgeIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Records virtio-pci interrupts and notes any on a vector the function does not have.
struct VirtioIrq {
    vectors: u16,
    msis: AtomicU64,
    bad_vector: AtomicBool,
    intx_level: AtomicBool,
}

impl VirtioIrq {
    fn new(vectors: u16) -> Self {
        Self {
            vectors,
            msis: AtomicU64::new(0),
            bad_vector: AtomicBool::new(false),
            intx_level: AtomicBool::new(false),
        }
    }
}

impl VirtioInterrupt for VirtioIrq {
    fn msi(&self, vector: u16, _msg: MsiMessage) -> std::io::Result<()> {
        if vector >= self.vectors {
            self.bad_vector.store(true, Ordering::Relaxed);
        }
        self.msis.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn msi_update(&self, vector: u16, _msg: MsiMessage) {
        if vector >= self.vectors {
            self.bad_vector.store(true, Ordering::Relaxed);
        }
    }
    fn intx_assert(&self) -> std::io::Result<()> {
        self.intx_level.store(true, Ordering::Relaxed);
        Ok(())
    }
    fn intx_deassert(&self) {
        self.intx_level.store(false, Ordering::Relaxed);
    }
}

/// Walk a function's capability list: (offset, id) pairs. Panics on a list that loops or points
/// into the header.
fn capabilities(f: &mut dyn PciFunction) -> Vec<(u8, u8)> {
    let mut b = [0u8; 2];
    f.config_read(0x34, &mut b[..1]);
    let mut p = b[0];
    let mut caps = Vec::new();
    while p != 0 {
        assert!(caps.len() < 48, "capability list loops");
        assert!(p >= 0x40 && p % 4 == 0, "capability pointer {p:#x}");
        f.config_read(p as u64, &mut b);
        caps.push((p, b[0]));
        p = b[1];
    }
    caps
}

/// Typed BAR invariants: every implemented BAR decodes an address aligned to its size and
/// keeps its type bits.
fn check_bars(c: &PciConfig) {
    use crate::devices::pci::config::BarKind;
    for i in 0..6 {
        let Some(bar) = c.bar(i) else { continue };
        let addr = c.bar_address(i).expect("implemented BAR has an address");
        assert_eq!(addr & (bar.size - 1), 0, "BAR{i} {addr:#x} not aligned");
        let low = c.read_u32(0x10 + 4 * i);
        let want = match bar.kind {
            BarKind::Io => (low & 3, 1),
            BarKind::Mem32 { prefetchable } => (low & 0xf, if prefetchable { 8 } else { 0 }),
            BarKind::Mem64 { prefetchable } => (low & 0xf, if prefetchable { 0xc } else { 4 }),
        };
        assert_eq!(want.0, want.1, "BAR{i} type bits changed");
    }
    assert_eq!(c.command() & !0x0547, 0, "read-only command bits set");
}

// ---------------------------------------------------------------------------------------------
// virtio-blk behind the virtio-pci transport

/// Opcodes of [`virtio_blk`] programs (the opcode byte is taken modulo 16).
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

/// What a [`virtio_blk`] run did (for the smoke tests).
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

impl VirtioRig {
    fn new(mem: Memory, disk: RawDisk) -> Self {
        let blk = Blk::on_raw(disk);
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
        }
    }

    fn w(&mut self, off: u64, len: usize, v: u64) {
        let mut b = v.to_le_bytes().to_vec();
        b.resize(len, 0);
        self.bus.write(VIRTIO_BAR + off, &b);
    }

    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        self.bus.read(VIRTIO_BAR + off, &mut b);
        le_value(&b)
    }

    /// (size, desc, avail, used) of queue 0 as the device has them.
    fn queue0(&self) -> (u16, u64, u64, u64) {
        let d = lock(&self.dev);
        let q = d.queue(0).expect("queue 0");
        (q.size(), q.desc_table(), q.avail_ring(), q.used_ring())
    }

    fn setup_queue(&mut self, sel: u16, size: u16, layout: [u64; 3], vector: u16, enable: bool) {
        self.w(common::QUEUE_SELECT, 2, sel as u64);
        self.w(common::QUEUE_SIZE, 2, size as u64);
        self.w(common::QUEUE_DESC, 8, layout[0]);
        self.w(common::QUEUE_DRIVER, 8, layout[1]);
        self.w(common::QUEUE_DEVICE, 8, layout[2]);
        self.w(common::QUEUE_MSIX_VECTOR, 2, vector as u64);
        if enable {
            self.w(common::QUEUE_ENABLE, 2, 1);
        }
    }

    fn negotiate(&mut self, features: u64, driver_ok: bool) {
        self.w(common::DEVICE_STATUS, 1, 1);
        self.w(common::DEVICE_STATUS, 1, 3);
        self.w(common::DRIVER_FEATURE_SELECT, 4, 0);
        self.w(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.w(common::DRIVER_FEATURE_SELECT, 4, 1);
        self.w(common::DRIVER_FEATURE, 4, features >> 32);
        self.w(common::DEVICE_STATUS, 1, 11);
        if driver_ok {
            self.w(common::DEVICE_STATUS, 1, 15);
        }
    }

    fn op(&mut self, r: &mut Reader) {
        match r.u8() % 16 {
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
            _ => {
                let decode = lock(&self.dev).config().command() & CMD_MEM != 0;
                let isr = self.r(tp::ISR_OFFSET, 1);
                if decode {
                    assert!(isr <= 3, "ISR {isr:#x}");
                } else {
                    assert_eq!(isr, 0xff, "BAR0 answered with memory decode off");
                }
            }
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

    /// At the end: the transport still answers, and after a reset the device works.
    fn check_alive(&mut self, disk_now: &[u8]) {
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

/// [`virtio_blk`], returning what happened.
pub fn run_virtio_blk(data: &[u8]) -> VirtioSummary {
    let mut r = Reader(data);
    let flags = r.u8();
    let mem = new_memory((flags & 1 != 0).then_some(data));
    with_images(|img| {
        let read_only = flags & 2 != 0;
        let mut rig = VirtioRig::new(mem, img.open(read_only));
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
        let path = if read_only { &img.ro } else { &img.rw };
        let now = std::fs::read(path).expect("image readable");
        rig.check_alive(&now);
        summary
    })
}

// ---------------------------------------------------------------------------------------------
// PIIX IDE: two ATA channels and bus-master DMA

/// Opcodes of [`ide`] programs (the opcode byte is taken modulo 13).
pub mod iop {
    pub const READ: u8 = 0;
    pub const WRITE: u8 = 1;
    pub const TASKFILE: u8 = 2;
    pub const PIO: u8 = 3;
    pub const BM: u8 = 4;
    pub const PRD: u8 = 5;
    pub const MEM: u8 = 6;
    pub const CONTROL: u8 = 7;
    pub const CFG_WRITE: u8 = 8;
    pub const CFG_READ: u8 = 9;
    pub const BM_STATUS: u8 = 10;
    pub const DMA: u8 = 11;
    /// Make a drive's backend fail (or heal): drive byte, then a byte with 2 bits each for
    /// reads, writes and flushes (0 works, 1 EIO, 2 short read, 3 ENOSPC).
    pub const FAULT: u8 = 12;
}

const IDE_PORTS: [(u64, u64); 5] = [
    (piix::PRIMARY_CMD, piix::CMD_LEN),
    (piix::PRIMARY_CTL, piix::CTL_LEN),
    (piix::SECONDARY_CMD, piix::CMD_LEN),
    (piix::SECONDARY_CTL, piix::CTL_LEN),
    (IDE_BAR4, piix::BAR4_SIZE),
];

const ATA_COMMANDS: [u8; 32] = [
    ata::CMD_READ_SECTORS,
    ata::CMD_READ_SECTORS_NR,
    ata::CMD_READ_SECTORS_EXT,
    ata::CMD_READ_DMA_EXT,
    ata::CMD_READ_NATIVE_MAX_EXT,
    ata::CMD_WRITE_SECTORS,
    ata::CMD_WRITE_SECTORS_NR,
    ata::CMD_WRITE_SECTORS_EXT,
    ata::CMD_WRITE_DMA_EXT,
    ata::CMD_SEEK,
    ata::CMD_DIAGNOSTIC,
    ata::CMD_INIT_PARAMS,
    ata::CMD_READ_DMA,
    ata::CMD_READ_DMA_NR,
    ata::CMD_WRITE_DMA,
    ata::CMD_WRITE_DMA_NR,
    ata::CMD_STANDBY_IMMEDIATE,
    ata::CMD_IDLE_IMMEDIATE,
    ata::CMD_STANDBY,
    ata::CMD_IDLE,
    ata::CMD_CHECK_POWER,
    ata::CMD_FLUSH_CACHE,
    ata::CMD_FLUSH_CACHE_EXT,
    ata::CMD_IDENTIFY,
    ata::CMD_SET_FEATURES,
    ata::CMD_READ_NATIVE_MAX,
    0x10,
    0x94,
    0xa0,
    0xa1,
    0x00,
    0xff,
];

/// What an [`ide`] run did (for the smoke tests).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IdeSummary {
    /// Interrupts raised on the primary and secondary channel.
    pub irqs: [u64; 2],
    /// Bus-master status of both channels before the final checks.
    pub bm_status: [u8; 2],
    /// ATA status of both channels (selected drive) before the final checks.
    pub ata_status: [u8; 2],
}

struct IdeRig {
    ide: Arc<Mutex<PiixIde<Memory>>>,
    bus: Bus,
    mem: Memory,
    irqs: [Arc<EdgeIrq>; 2],
    /// Which drives exist: [primary master, primary slave, secondary master, secondary slave].
    present: [bool; 4],
    /// The drives' disks, shared with the model (to inject faults and look inside).
    disks: Vec<MemDisk>,
}

impl IdeRig {
    fn new(mem: Memory, disks: Vec<MemDisk>) -> Self {
        let mut present = [false; 4];
        present[..disks.len()].fill(true);
        let irqs = [Arc::new(EdgeIrq::default()), Arc::new(EdgeIrq::default())];
        let lines: [Arc<dyn Interrupt>; 2] = [irqs[0].clone(), irqs[1].clone()];
        // Dense placement: the first `disks.len()` positions.
        let mut slots: [Option<Box<dyn DiskBackend>>; piix::MAX_DRIVES] = Default::default();
        for (slot, d) in slots.iter_mut().zip(&disks) {
            *slot = Some(Box::new(d.clone()));
        }
        let mut ide = PiixIde::new(mem.clone(), slots, lines).expect("PIIX IDE");
        ide.config_mut()
            .set_bar_address(piix::BAR4, IDE_BAR4)
            .expect("BAR4 address");
        let ide = Arc::new(Mutex::new(ide));
        let mut bus = Bus::new();
        let ports = [
            Port::Command(0),
            Port::Control(0),
            Port::Command(1),
            Port::Control(1),
            Port::BusMaster,
        ];
        for ((base, len), port) in IDE_PORTS.into_iter().zip(ports) {
            let dev = Arc::new(Mutex::new(IdePort::new(ide.clone(), port)));
            bus.insert("ide", base, len, dev).expect("IDE port layout");
        }
        Self {
            ide,
            bus,
            mem,
            irqs,
            present,
            disks,
        }
    }

    fn cmd_port(ch: usize) -> u64 {
        IDE_PORTS[2 * ch].0
    }

    fn out8(&mut self, port: u64, v: u8) {
        self.bus.write(port, &[v]);
    }

    fn in8(&mut self, port: u64) -> u8 {
        let mut b = [0u8];
        self.bus.read(port, &mut b);
        b[0]
    }

    fn out32(&mut self, port: u64, v: u32) {
        self.bus.write(port, &v.to_le_bytes());
    }

    fn in32(&mut self, port: u64) -> u32 {
        let mut b = [0u8; 4];
        self.bus.read(port, &mut b);
        u32::from_le_bytes(b)
    }

    fn op(&mut self, r: &mut Reader) {
        match r.u8() % 13 {
            op @ (iop::READ | iop::WRITE) => {
                let (base, len) = IDE_PORTS[r.u8() as usize % IDE_PORTS.len()];
                let port = (base + r.u8() as u64 % (len + 4)).wrapping_sub(2);
                let width = r.width();
                if op == iop::READ {
                    let mut b = vec![0u8; width];
                    self.bus.read(port, &mut b);
                } else {
                    let v = r.value(width);
                    self.bus.write(port, &v);
                }
            }
            iop::TASKFILE => {
                let ch = (r.u8() & 1) as usize;
                let device = r.u8();
                let feature = r.u8();
                let c = r.u8();
                let (count_hi, count_lo) = if c & 0x80 == 0 {
                    (0, c & 7)
                } else {
                    (r.u8(), r.u8())
                };
                let l = r.u8();
                let lba = if l & 0x80 == 0 {
                    (l % DISK_SECTORS as u8) as u64
                } else {
                    r.u64()
                };
                let c = r.u8();
                let cmd = ATA_COMMANDS
                    .get(c as usize % 48)
                    .copied()
                    .unwrap_or_else(|| r.u8());
                self.taskfile(ch, device, feature, [count_hi, count_lo], lba, cmd);
            }
            iop::PIO => {
                let ch = (r.u8() & 1) as usize;
                let b = r.u8();
                let width = if b & 2 == 0 { 2 } else { 4 };
                let words = r.u8() as usize + 1;
                let fill = r.u32();
                let port = Self::cmd_port(ch);
                for _ in 0..words {
                    if b & 1 == 0 {
                        let mut d = vec![0u8; width];
                        self.bus.read(port, &mut d);
                    } else {
                        self.bus.write(port, &fill.to_le_bytes()[..width]);
                    }
                }
            }
            iop::BM => {
                let ch = (r.u8() & 1) as u64;
                let prd = if r.u8() & 1 == 0 {
                    0x8000 + 0x100 * ch as u32
                } else {
                    r.gpa() as u32
                };
                let cmd = BmCommand::from_bits_truncate(r.u8());
                self.out32(IDE_BAR4 + 8 * ch + BmReg::PRD_TABLE, prd);
                self.out8(IDE_BAR4 + 8 * ch, cmd.bits());
            }
            iop::PRD => {
                let ch = (r.u8() & 1) as u64;
                let table = self.in32(IDE_BAR4 + 8 * ch + BmReg::PRD_TABLE) as u64;
                let i = r.u8() as u64;
                let addr = r.gpa() as u32;
                let count = match r.u8() % 4 {
                    0 => 0,
                    1 => 512,
                    2 => r.u16(),
                    _ => (r.u8() as u16) << 1,
                };
                let last = r.u8() & 1 != 0;
                let entry = PrdEntry::new(addr, count, last);
                poke(&self.mem, table + 8 * i, entry.as_slice());
            }
            iop::MEM => {
                let addr = r.u16() as u64;
                let n = r.u8() as usize;
                poke(&self.mem, addr, r.bytes(n));
            }
            iop::CONTROL => {
                let ch = (r.u8() & 1) as usize;
                let v = r.u8();
                self.out8(IDE_PORTS[2 * ch + 1].0, v);
            }
            iop::CFG_WRITE => {
                const OFFS: [u64; 10] =
                    [0x04, 0x06, 0x20, 0x40, 0x41, 0x42, 0x43, 0x44, 0x48, 0x4a];
                let b = r.u8() as usize;
                let off = OFFS.get(b % 16).copied().unwrap_or_else(|| r.u8() as u64);
                let width = r.width();
                let v = r.value(width);
                lock(&self.ide).config_write(off, &v);
            }
            iop::CFG_READ => {
                let off = r.u16() as u64 % 0x110;
                let mut b = vec![0u8; r.width()];
                lock(&self.ide).config_read(off, &mut b);
            }
            iop::BM_STATUS => {
                let ch = (r.u8() & 1) as u64;
                let v = r.u8();
                self.out8(IDE_BAR4 + 8 * ch + 2, v);
            }
            iop::DMA => self.dma(r),
            _ => {
                let drive = r.u8() as usize;
                let b = r.u8();
                let fault = |bits: u8| match bits & 3 {
                    0 => None,
                    1 => Some(Fault::Eio),
                    2 => Some(Fault::ShortRead),
                    _ => Some(Fault::NoSpace),
                };
                let faults = Faults {
                    read: fault(b),
                    write: fault(b >> 2),
                    flush: fault(b >> 4),
                };
                if !self.disks.is_empty() {
                    self.disks[drive % self.disks.len()].set_faults(faults);
                }
            }
        }
    }

    fn taskfile(&mut self, ch: usize, device: u8, feature: u8, count: [u8; 2], lba: u64, cmd: u8) {
        use TaskfileReg::{Count, Device, ErrorFeature, LbaHigh, LbaLow, LbaMid, StatusCommand};
        let p = Self::cmd_port(ch);
        self.out8(p + Device as u64, device);
        self.out8(p + ErrorFeature as u64, 0);
        self.out8(p + ErrorFeature as u64, feature);
        self.out8(p + Count as u64, count[0]);
        self.out8(p + Count as u64, count[1]);
        for (k, reg) in [LbaLow, LbaMid, LbaHigh].into_iter().enumerate() {
            self.out8(p + reg as u64, (lba >> (24 + 8 * k)) as u8);
            self.out8(p + reg as u64, (lba >> (8 * k)) as u8);
        }
        self.out8(p + StatusCommand as u64, cmd);
    }

    /// A whole DMA transfer: PRD table in RAM, READ/WRITE DMA, start the engine.
    fn dma(&mut self, r: &mut Reader) {
        let ch = (r.u8() & 1) as usize;
        let b = r.u8();
        let (drive, read, ext) = (b & 1, b & 2 == 0, b & 4 != 0);
        let lba = (r.u8() % DISK_SECTORS as u8) as u64;
        let count = 1 + r.u8() % 4;
        let table = 0x8000 + 0x100 * ch as u64;
        let entries = 1 + r.u8() % 4;
        for k in 0..entries {
            let len = 512 * (1 + r.u8() as u16 % 2);
            let last = k == entries - 1 && b & 8 == 0;
            let entry = PrdEntry::new(0x4000 + 0x1000 * k as u32, len, last);
            poke(&self.mem, table + 8 * k as u64, entry.as_slice());
        }
        let bm = IDE_BAR4 + 8 * ch as u64;
        self.out32(bm + BmReg::PRD_TABLE, table as u32);
        let dir = if read {
            BmCommand::WRITE_TO_MEMORY
        } else {
            BmCommand::empty()
        };
        let start_first = b & 0x10 != 0;
        if start_first {
            self.out8(bm, (dir | BmCommand::START).bits());
        }
        let cmd = match (read, ext) {
            (true, false) => ata::CMD_READ_DMA,
            (true, true) => ata::CMD_READ_DMA_EXT,
            (false, false) => ata::CMD_WRITE_DMA,
            (false, true) => ata::CMD_WRITE_DMA_EXT,
        };
        let mut device = DeviceReg::LBA | DeviceReg::OBS7 | DeviceReg::OBS5;
        device.set(DeviceReg::DEV, drive != 0);
        self.taskfile(ch, device.bits(), 0, [0, count], lba, cmd);
        if !start_first {
            self.out8(bm, (dir | BmCommand::START).bits());
        }
        if b & 0x20 != 0 {
            // Stop the engine and acknowledge, as a driver does.
            self.out8(bm, dir.bits());
            let ack = BmStatus::INTERRUPT | BmStatus::ERROR;
            self.out8(bm + BmReg::Status.offset(), ack.bits());
        }
    }

    /// Status registers of each channel are sane (read without side effects).
    fn check(&mut self) -> ([u8; 2], [u8; 2]) {
        let mut ide = lock(&self.ide);
        let mut cmd = [0u8; 2];
        ide.config_read(REG_COMMAND as u64, &mut cmd);
        let cmd = u16::from_le_bytes(cmd);
        check_bars(ide.config());
        let mut ata_status = [0u8; 2];
        let mut bm_status = [0u8; 2];
        for ch in 0..2 {
            if cmd & CMD_IO != 0 {
                let mut b = [0u8; 8];
                ide.bm_read(8 * ch as u64, &mut b);
                let (command, status) = (b[0], b[2]);
                bm_status[ch] = status;
                assert!(
                    BmCommand::from_bits(command).is_some(),
                    "bus-master command {command:#x}"
                );
                assert!(
                    BmStatus::from_bits(status).is_some(),
                    "bus-master status {status:#x}"
                );
                assert_eq!(b[4] & 3, 0, "PRD pointer not dword aligned");
            }
            let mut idetim = [0u8; 2];
            ide.config_read(0x40 + 2 * ch as u64, &mut idetim);
            if cmd & CMD_IO == 0 || u16::from_le_bytes(idetim) & 0x8000 == 0 {
                continue;
            }
            let mut st = [0u8];
            ide.ctl_read(ch, 0, &mut st);
            ata_status[ch] = st[0];
            let st = Status::from_bits_retain(st[0]);
            let mut dev = [0u8];
            ide.cmd_read(ch, TaskfileReg::Device as u64, &mut dev);
            let sel = usize::from(DeviceReg::from_bits_retain(dev[0]).contains(DeviceReg::DEV));
            if !self.present[2 * ch + sel] {
                assert_eq!(st, Status::empty(), "absent drive status");
                continue;
            }
            assert!(st.contains(Status::DRDY), "drive not ready: {st:?}");
            assert!(!st.contains(Status::DF), "device fault: {st:?}");
            assert!(
                !st.contains(Status::ERR | Status::DRQ),
                "ERR with DRQ: {st:?}"
            );
            if st.contains(Status::ERR) && !st.contains(Status::BSY) {
                let mut e = [0u8];
                ide.cmd_read(ch, TaskfileReg::ErrorFeature as u64, &mut e);
                assert_ne!(e[0], 0, "ERR without an error code");
            }
        }
        (ata_status, bm_status)
    }

    /// At the end: firmware re-enables decoding, the disks heal; each master resets and
    /// answers IDENTIFY and a one-sector read.
    fn check_alive(&mut self, images: &[Vec<u8>]) {
        for d in &self.disks {
            d.set_faults(Faults::NONE);
        }
        {
            let mut ide = lock(&self.ide);
            ide.config_write(REG_COMMAND as u64, &(CMD_IO | CMD_BUS_MASTER).to_le_bytes());
            ide.config_write(0x40, &0x8000u16.to_le_bytes());
            ide.config_write(0x42, &0x8000u16.to_le_bytes());
        }
        for ch in 0..2 {
            if !self.present[2 * ch] {
                continue;
            }
            let (cmd, ctl) = (IDE_PORTS[2 * ch].0, IDE_PORTS[2 * ch + 1].0);
            let status = cmd + TaskfileReg::StatusCommand as u64;
            let ready = (Status::DRDY | Status::DSC).bits();
            self.out8(ctl, DeviceControl::SRST.bits());
            self.out8(ctl, 0);
            let st = self.in8(status);
            assert_eq!(st, ready, "status after reset");
            self.out8(status, ata::CMD_IDENTIFY);
            let mut sum = 0u8;
            let mut words = [0u16; 256];
            for w in &mut words {
                let mut b = [0u8; 2];
                self.bus.read(cmd, &mut b);
                sum = sum.wrapping_add(b[0]).wrapping_add(b[1]);
                *w = u16::from_le_bytes(b);
            }
            assert_eq!(words[255] & 0xff, 0xa5, "IDENTIFY signature");
            assert_eq!(sum, 0, "IDENTIFY checksum");
            assert_eq!(self.in8(status) & Status::DRQ.bits(), 0);
            self.taskfile(ch, 0xe0, 0, [0, 1], 2, ata::CMD_READ_SECTORS);
            let mut sector = vec![0u8; SECTOR];
            for pair in sector.chunks_mut(2) {
                self.bus.read(cmd, pair);
            }
            assert!(
                sector == images[2 * ch][2 * SECTOR..3 * SECTOR],
                "PIO read returned the wrong data"
            );
            assert_eq!(self.in8(status), ready);
        }
    }
}

/// PIIX IDE: header byte (bit 0: seed guest memory from the input; bits 1-3: how many drives,
/// 0..=4; bits 4-7: which of them are read-only), then operations ([`iop`]).
pub fn ide(data: &[u8]) {
    run_ide(data);
}

/// [`ide`], returning what happened.
pub fn run_ide(data: &[u8]) -> IdeSummary {
    let mut r = Reader(data);
    let flags = r.u8();
    let mem = new_memory((flags & 1 != 0).then_some(data));
    let n = ((flags >> 1) & 7).min(4) as usize;
    let ro: Vec<bool> = (0..n).map(|i| flags & (0x10 << i) != 0).collect();
    let disks: Vec<MemDisk> = ro
        .iter()
        .map(|&ro| MemDisk::new(image_pattern().to_vec(), ro).expect("fuzz memory disk"))
        .collect();
    let mut rig = IdeRig::new(mem, disks.clone());
    let mut summary = IdeSummary::default();
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        rig.op(&mut r);
        (summary.ata_status, summary.bm_status) = rig.check();
    }
    summary.irqs = [0, 1].map(|i| rig.irqs[i].0.load(Ordering::Relaxed));
    let images: Vec<Vec<u8>> = disks.iter().map(MemDisk::contents).collect();
    rig.check_alive(&images);
    for (d, ro) in disks.iter().zip(ro) {
        assert_eq!(d.len(), DISK_SECTORS * SECTOR as u64, "disk changed size");
        assert!(
            !ro || d.contents() == image_pattern(),
            "read-only disk was modified"
        );
    }
    summary
}

// ---------------------------------------------------------------------------------------------
// PCI configuration mechanism #1 over every kind of function

/// A virtio device with two queues that does nothing (the transport's config space is the
/// point here).
struct NullVirtio([u16; 2], Option<Activation>);

impl VirtioDevice for NullVirtio {
    fn device_type(&self) -> u16 {
        1
    }
    fn features(&self) -> u64 {
        0
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.0
    }
    fn config_len(&self) -> usize {
        8
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, activation: Activation) -> Result<(), String> {
        self.1 = Some(activation);
        Ok(())
    }
    fn activation(&self) -> Option<&Activation> {
        self.1.as_ref()
    }
    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.1.as_mut()
    }
    fn process_queue(&mut self, _: usize) -> Result<(), QueueBroken> {
        Ok(())
    }
    fn reset(&mut self) {
        self.1 = None;
    }
}

/// A config space built from the input through the firmware-side API.
struct RawFunction(PciConfig);

impl PciFunction for RawFunction {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.0.read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.0.write(offset, data)
    }
}

fn raw_function(r: &mut Reader) -> PciConfig {
    let mut c = PciConfig::new(r.u16(), r.u16(), r.u8(), r.u8(), r.u8());
    c.set_interrupt(r.u8(), r.u8());
    let size = |r: &mut Reader| match r.u8() {
        b if b < 64 => 1u64 << b,
        _ => r.u64(),
    };
    for _ in 0..r.u8() % 8 {
        let idx = r.u8() as usize % 8;
        // Errors are the API's answer to a bad layout; they must not panic.
        let _ = match r.u8() % 5 {
            0 => c.add_io_bar(idx, size(r)),
            1 => c.add_mem32_bar(idx, size(r), r.u8() & 1 != 0),
            2 => c.add_mem64_bar(idx, size(r), r.u8() & 1 != 0),
            3 => {
                let id = r.u8();
                let n = r.u8() as usize % 80;
                let body = r.bytes(n).to_vec();
                let m = r.u8() as usize % 8;
                c.add_capability(id, &body, r.bytes(m)).map(|_| ())
            }
            _ => {
                let addr = if r.u8() & 1 == 0 {
                    (r.u32() as u64) << 12
                } else {
                    r.u64()
                };
                c.set_bar_address(idx, addr)
            }
        };
    }
    c
}

/// Opcodes of [`pci_config`] programs (the opcode byte is taken modulo 5).
pub mod pop {
    pub const ADDRESS: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const DIRECT_WRITE: u8 = 3;
    pub const DIRECT_READ: u8 = 4;
}

fn share(f: impl PciFunction + 'static) -> SharedFunction {
    Arc::new(Mutex::new(f))
}

enum Function {
    Host,
    Floor(Arc<Mutex<FloorFunction>>),
    Virtio(Arc<Mutex<VirtioPciDevice>>, Arc<VirtioIrq>),
    Ide(Arc<Mutex<PiixIde<Memory>>>),
    Raw(Arc<Mutex<RawFunction>>),
}

struct Identity {
    words: [u32; 4],
    caps: Vec<(u8, u8)>,
}

fn identity(f: &mut dyn PciFunction) -> Identity {
    let mut words = [0u32; 4];
    for (i, w) in [0u64, 8, 0x2c, 0x0c].into_iter().enumerate() {
        let mut b = [0u8; 4];
        f.config_read(w, &mut b);
        words[i] = u32::from_le_bytes(b);
    }
    // Only the header type byte of dword 0x0c is read-only.
    words[3] &= 0x00ff_0000;
    let caps = capabilities(f);
    Identity { words, caps }
}

fn check_function(f: &Function, shared: &SharedFunction, before: &Identity) {
    let now = identity(&mut *lock(shared));
    assert_eq!(now.words, before.words, "identity registers changed");
    assert_eq!(now.caps, before.caps, "capability list changed");
    let mut cmd = [0u8; 2];
    lock(shared).config_read(REG_COMMAND as u64, &mut cmd);
    assert_eq!(
        u16::from_le_bytes(cmd) & !0x0547,
        0,
        "read-only command bits"
    );
    match f {
        Function::Host => {}
        Function::Floor(x) => check_bars(lock(x).config()),
        Function::Ide(x) => check_bars(lock(x).config()),
        Function::Raw(x) => check_bars(&lock(x).0),
        Function::Virtio(x, irq) => {
            let d = lock(x);
            check_bars(d.config());
            let (p, _) = before
                .caps
                .iter()
                .find(|c| c.1 == msix::CAP_ID)
                .copied()
                .expect("MSI-X capability");
            let mut ctrl = [0u8; 2];
            d.config().read(p as u64 + 2, &mut ctrl);
            let ctrl = u16::from_le_bytes(ctrl);
            assert_eq!(d.msix().enabled(), ctrl & msix::CTRL_ENABLE != 0);
            assert_eq!(
                d.msix().function_masked(),
                ctrl & msix::CTRL_FUNCTION_MASK != 0
            );
            assert_eq!(ctrl & 0x7ff, d.msix().vectors() - 1, "table size changed");
            assert!(!irq.bad_vector.load(Ordering::Relaxed));
        }
    }
}

/// PCI configuration space through ports 0xCF8-0xCFF, with a host bridge, the floor device, a
/// virtio-pci function, the PIIX IDE function and a function whose layout comes from the input.
/// Operations: [`pop`].
pub fn pci_config(data: &[u8]) {
    let mut r = Reader(data);
    let mem = new_memory(None);
    let raw = raw_function(&mut r);
    let virtio_irq = Arc::new(VirtioIrq::new(3));
    let mut virtio = VirtioPciDevice::new(
        Box::new(NullVirtio([16, 8], None)),
        mem.clone(),
        virtio_irq.clone(),
        11,
    )
    .expect("virtio-pci transport");
    virtio
        .config_mut()
        .set_bar_address(tp::BAR, VIRTIO_BAR)
        .expect("BAR");
    virtio.config_mut().enable(CMD_IO | CMD_MEM);
    let mut floor = FloorFunction::new();
    floor.config_mut().set_bar_address(0, 0xc100).expect("BAR0");
    floor
        .config_mut()
        .set_bar_address(1, 0xc001_0000)
        .expect("BAR1");
    floor.config_mut().enable(CMD_IO | CMD_MEM);
    let irqs: [Arc<dyn Interrupt>; 2] =
        [Arc::new(EdgeIrq::default()), Arc::new(EdgeIrq::default())];
    let mut piix = PiixIde::new(mem, Default::default(), irqs).expect("PIIX IDE");
    piix.config_mut()
        .set_bar_address(piix::BAR4, IDE_BAR4)
        .expect("BAR4");
    let piix = Arc::new(Mutex::new(piix));

    let virtio = Arc::new(Mutex::new(virtio));
    let floor = Arc::new(Mutex::new(floor));
    let raw = Arc::new(Mutex::new(RawFunction(raw)));
    let functions: Vec<(Function, SharedFunction)> = vec![
        (Function::Host, share(HostBridge::new())),
        (Function::Floor(floor.clone()), floor),
        (Function::Virtio(virtio.clone(), virtio_irq), virtio),
        (Function::Ide(piix.clone()), share(PiixFunction::new(piix))),
        (Function::Raw(raw.clone()), raw),
    ];
    let mut io = PciConfigIo::new();
    let mut ids = Vec::new();
    for (i, (_, f)) in functions.iter().enumerate() {
        io.add(Bdf::new(0, i as u8, 0), f.clone());
        ids.push(identity(&mut *lock(f)));
    }
    let mut bus = Bus::new();
    bus.insert(
        "pci-config",
        crate::devices::pci::CONFIG_ADDRESS_PORT,
        crate::devices::pci::CONFIG_IO_LEN,
        Arc::new(Mutex::new(io)),
    )
    .expect("config ports");
    let port = crate::devices::pci::CONFIG_ADDRESS_PORT;

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 5 {
            pop::ADDRESS => {
                let b = r.u8();
                let addr = if b & 0x80 == 0 {
                    // Enabled, bus 0, one of the functions (or an empty slot), any register.
                    0x8000_0000
                        | ((b as u32 % 8) << 11)
                        | ((b as u32 >> 3) & 7) << 8
                        | r.u8() as u32
                } else {
                    r.u32()
                };
                bus.write(port, &addr.to_le_bytes());
            }
            op @ (pop::READ | pop::WRITE) => {
                let off = (r.u8() % 14) as u64;
                let at = port + off - 2;
                let width = r.width();
                if op == pop::READ {
                    let mut b = vec![0u8; width];
                    bus.read(at, &mut b);
                } else {
                    let v = r.value(width);
                    bus.write(at, &v);
                }
            }
            op => {
                let (_, f) = &functions[r.u8() as usize % functions.len()];
                let off = match r.u8() % 4 {
                    0 => r.u8() as u64,
                    1 => r.u16() as u64,
                    2 => u64::MAX - r.u8() as u64,
                    _ => 0x10 + 4 * (r.u8() % 6) as u64,
                };
                let width = r.width();
                if op == pop::DIRECT_WRITE {
                    let v = r.value(width);
                    lock(f).config_write(off, &v);
                } else {
                    let mut b = vec![0u8; width];
                    lock(f).config_read(off, &mut b);
                }
            }
        }
        let mut a = [0u8; 4];
        bus.read(port, &mut a);
        assert_eq!(u32::from_le_bytes(a) & !0x80ff_fffc, 0, "CONFIG_ADDRESS");
        for ((f, shared), before) in functions.iter().zip(&ids) {
            check_function(f, shared, before);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MSI-X table and PBA

/// An MSI-X table of 1..=2048 vectors (header: a size byte, or 0xff and a 16-bit size), then
/// operations: table reads and writes of any width and offset, PBA reads, message control,
/// triggers and resets. Checks the masking and pending rules after each.
pub fn msix(data: &[u8]) {
    let mut r = Reader(data);
    let n = match r.u8() {
        0xff => r.u16() % 2100,
        b => (b % 8) as u16,
    };
    let mut m = Msix::new(n);
    let vectors = m.vectors();
    assert!((1..=2048).contains(&vectors));
    let vector = |r: &mut Reader| match r.u8() {
        b if b < 0xf0 => b as u16 % (vectors + 1),
        _ => r.u16(),
    };
    let offset = |r: &mut Reader| match r.u8() % 4 {
        0 => vector(r) as u64 * 16 + 4 * (r.u8() % 4) as u64,
        1 => r.u16() as u64,
        2 => u64::MAX - r.u8() as u64,
        _ => r.u64(),
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 7 {
            0 => {
                let off = offset(&mut r);
                let mut b = vec![0u8; r.width()];
                m.read_table(off, &mut b);
                if off % 16 == 12 && b.len() == 4 {
                    assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & !1, 0);
                }
                if off % 16 == 0 && matches!(b.len(), 4 | 8) {
                    assert_eq!(b[0] & 3, 0, "address low bits");
                }
            }
            1 => {
                let off = offset(&mut r);
                let width = r.width();
                let v = r.value(width);
                let was_pending: Vec<bool> = (0..vectors).map(|v| m.is_pending(v)).collect();
                let w = m.write_table(off, &v);
                if let Some((v, msg)) = w.deliver {
                    assert!(was_pending[v as usize] && !m.is_pending(v) && !m.is_masked(v));
                    assert_eq!(m.message(v), Some(msg));
                }
                if let Some((v, _)) = w.changed {
                    assert!(v < vectors);
                }
            }
            2 => {
                let off = offset(&mut r);
                let mut b = vec![0u8; r.width()];
                m.read_pba(off, &mut b);
                if off == 8 * ((vectors as u64 - 1) / 64) && b.len() == 8 {
                    let bits = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
                    let used = (vectors - 1) % 64 + 1;
                    if used < 64 {
                        assert_eq!(bits >> used, 0, "PBA bits beyond the table");
                    }
                }
            }
            3 => {
                let was_pending: Vec<bool> = (0..vectors).map(|v| m.is_pending(v)).collect();
                for (v, msg) in m.set_control(r.u16()) {
                    assert!(was_pending[v as usize] && !m.is_pending(v));
                    assert_eq!(m.message(v), Some(msg));
                }
            }
            4 | 5 => {
                let v = vector(&mut r);
                let (enabled, masked) = (m.enabled(), m.is_masked(v));
                match m.trigger(v) {
                    Trigger::Deliver(msg) => {
                        assert!(enabled && !masked && v < vectors);
                        assert_eq!(m.message(v), Some(msg));
                    }
                    Trigger::Pending => assert!(enabled && masked && m.is_pending(v)),
                    Trigger::Dropped => assert!(!enabled || v >= vectors),
                }
            }
            _ => m.reset(),
        }
        assert_eq!(m.vectors(), vectors);
        if m.enabled() {
            for v in 0..vectors {
                assert!(!m.is_pending(v) || m.is_masked(v), "vector {v} stuck");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: deterministic inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn input(&mut self, max: usize) -> Vec<u8> {
            let n = self.next() as usize % max;
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// `n` random programs; every other one starts with `prelude` (after its header byte) so
    /// that the random part runs on a device that is already set up.
    fn random(seed: u64, n: usize, max_len: usize, prelude: &[u8], f: fn(&[u8])) {
        let mut rng = Rng(seed);
        for i in 0..n {
            let mut input = rng.input(max_len);
            if i % 2 == 1 && !input.is_empty() {
                input.splice(1..1, prelude.iter().copied());
            }
            let r = std::panic::catch_unwind(|| f(&input));
            assert!(r.is_ok(), "input {i} (seed {seed:#x}) failed: {input:02x?}");
        }
    }

    #[test]
    fn virtio_blk_random_programs() {
        random(0x5eed_0001, 3000, 400, &virtio_ready().0[1..], virtio_blk);
    }

    #[test]
    fn ide_random_programs() {
        random(0x5eed_0002, 3000, 400, &[], ide);
    }

    #[test]
    fn pci_config_random_programs() {
        random(0x5eed_0003, 3000, 400, &[], pci_config);
    }

    #[test]
    fn msix_random_programs() {
        random(0x5eed_0004, 3000, 400, &[], msix);
    }

    /// A program builder: opcodes and operands as the decoders read them.
    #[derive(Default)]
    struct P(Vec<u8>);

    impl P {
        fn op(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
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
        // Rings near the top of the address space; then a descriptor of almost 4 GiB.
        let top = [5u8, 0x10, 0x00];
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

    /// IDE program header: one read-write drive on the primary channel.
    fn ide_one_drive() -> P {
        P(vec![1 << 1])
    }

    #[test]
    fn ide_dma_read_completes() {
        // DMA: channel 0, drive 0 read, lba 1, 2 sectors, two 512-byte entries (EOT on the last).
        let p = ide_one_drive().op(&[iop::DMA, 0, 0x00, 1, 1, 1, 0, 0]);
        let s = run_ide(&p.0);
        assert_eq!(s.irqs[0], 1);
        assert_eq!(
            s.bm_status[0],
            (BmStatus::INTERRUPT | BmStatus::DRIVE0_DMA).bits()
        );
        assert_eq!(s.ata_status[0], (Status::DRDY | Status::DSC).bits());
    }

    #[test]
    fn ide_prd_table_without_eot() {
        // A table of zeros (64 KiB entries at address 0, never EOT) for a one-sector read: the
        // transfer ends after the first entry with the table left over, no error.
        let read_dma = ATA_COMMANDS
            .iter()
            .position(|&c| c == ata::CMD_READ_DMA)
            .unwrap() as u8;
        let p = ide_one_drive()
            .op(&[iop::BM, 0, 0, 0])
            .op(&[iop::TASKFILE, 0, 0xe0, 0, 1, 0, read_dma])
            .op(&[iop::BM, 0, 0, 0x09]);
        let s = run_ide(&p.0);
        assert_eq!(s.irqs[0], 1);
        assert_eq!(s.ata_status[0] & Status::ERR.bits(), 0);
        // A table without EOT that runs off the end of RAM: its one entry (2 bytes) is at the
        // last 8 bytes of RAM, the next would be outside: a bus-master error, not a host access.
        let p = ide_one_drive()
            .op(&[iop::BM, 0, 1, 4, 7, 0])
            .op(&[iop::PRD, 0, 0, 0, 0x00, 0x40, 2, 2, 0, 0])
            .op(&[iop::TASKFILE, 0, 0xe0, 0, 1, 0, read_dma])
            .op(&[iop::BM, 0, 1, 4, 7, 0x09]);
        let s = run_ide(&p.0);
        assert_eq!(
            s.bm_status[0] & (BmStatus::ERROR | BmStatus::ACTIVE).bits(),
            BmStatus::ERROR.bits(),
            "{s:?}"
        );
        assert_ne!(s.ata_status[0] & Status::ERR.bits(), 0, "{s:?}");
    }

    #[test]
    fn ide_failing_backend() {
        // Reads fail with EIO, then a PIO read: the drive reports ERR, and the end-of-run checks
        // (after the disk heals) still find a working drive.
        let read_sectors = ATA_COMMANDS
            .iter()
            .position(|&c| c == ata::CMD_READ_SECTORS)
            .unwrap() as u8;
        let p = ide_one_drive().op(&[iop::FAULT, 0, 0b01_11_01]).op(&[
            iop::TASKFILE,
            0,
            0xe0,
            0,
            1,
            0,
            read_sectors,
        ]);
        let s = run_ide(&p.0);
        assert_eq!(s.irqs[0], 1);
        assert_eq!(
            s.ata_status[0],
            (Status::DRDY | Status::DSC | Status::ERR).bits()
        );
        // The same through DMA, with writes cut by ENOSPC.
        let p =
            ide_one_drive()
                .op(&[iop::FAULT, 0, 0b11_00])
                .op(&[iop::DMA, 0, 0x02, 1, 1, 1, 0, 0]);
        let s = run_ide(&p.0);
        assert_eq!(
            s.ata_status[0],
            (Status::DRDY | Status::DSC | Status::ERR).bits()
        );
        assert_eq!(
            s.bm_status[0],
            (BmStatus::INTERRUPT | BmStatus::DRIVE0_DMA).bits()
        );
    }

    #[test]
    fn pci_config_smoke() {
        // Select each function's dword 0 and read it through 0xCFC.
        let mut p = P(Vec::new()).op(&[0; 10]);
        for dev in 0..6u8 {
            p = p.op(&[pop::ADDRESS, dev, 0]).op(&[pop::READ, 6, 2]);
        }
        pci_config(&p.0);
        msix(&[2, 3, 0, 0, 0, 0]);
    }
}
