//! A fake IDE channel (two drive slots, taskfile state machine, PIO data port) and a PIIX-like
//! bus-master engine behind a fake [`Platform`], for host tests.
//!
//! Every port access is logged; protocol violations the driver commits (taskfile writes while
//! BSY/DRQ, data port access without DRQ, bad PRD entries, direction mismatches, ...) are
//! recorded in `violations` so tests can assert there were none.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::string::String;
use std::vec::Vec;

use super::PortStrings;
use crate::pci::{PciAddress, PciFunction};
use crate::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};

pub const CMD: u16 = 0x1F0;
pub const CTRL: u16 = 0x3F6;
pub const BM: u16 = 0xC000;
/// The secondary channel's legacy ports and bus-master registers (BAR4 + 8).
pub const CMD2: u16 = 0x170;
pub const CTRL2: u16 = 0x376;
pub const BM2: u16 = BM + 8;
/// What [`Fake::canon`] makes of a port that belongs to none of the channel's ranges.
const UNMAPPED: u16 = 0;
pub const VECTOR: u8 = 0x2E;
/// Virtual time one port access takes.
pub const PORT_NS: u64 = 50_000;

const BSY: u8 = 0x80;
const DRDY: u8 = 0x40;
const DF: u8 = 0x20;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
pub const ABRT: u8 = 0x04;
pub const IDNF: u8 = 0x10;
pub const UNC: u8 = 0x40;

/// Default content of a never-written sector.
pub fn pattern(lba: u64) -> [u8; 512] {
    let mut s = [0u8; 512];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (lba as u8).wrapping_mul(31)
            ^ (i as u8)
            ^ ((lba >> 8) as u8).wrapping_add((i >> 8) as u8)
            ^ ((lba >> 24) as u8).rotate_left(3)
            ^ ((lba >> 32) as u8).rotate_left(5);
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    In { port: u16, width: u8, value: u32 },
    Out { port: u16, width: u8, value: u32 },
    Ins { port: u16, words: usize },
    Outs { port: u16, words: usize },
}

#[derive(Debug, Clone)]
pub struct Disk {
    pub sectors: u64,
    pub lba48: bool,
    pub model: String,
    pub serial: String,
    pub store: BTreeMap<u64, [u8; 512]>,
    /// Replace the generated IDENTIFY data.
    pub identify: Option<[u16; 256]>,
    /// (lba, error bits): ERR when this sector is reached.
    pub fail: Option<(u64, u8)>,
    /// DF on every data command.
    pub fault: bool,
    /// BSY forever after any command.
    pub stuck_busy: bool,
    /// Data commands never raise DRQ (status stays DRDY).
    pub no_drq: bool,
    /// Status reads that show BSY before each state change.
    pub busy_reads: u32,
    /// Answers IDENTIFY DEVICE like a packet device.
    pub atapi: bool,
    /// The bus-master engine reports an error on every DMA.
    pub bm_fail: bool,
    pub flushes: Vec<u8>,
    pub commands: Vec<u8>,
}

impl Disk {
    pub fn new(sectors: u64, lba48: bool) -> Self {
        Self {
            sectors,
            lba48,
            model: "QEMU HARDDISK".into(),
            serial: "QM00001".into(),
            store: BTreeMap::new(),
            identify: None,
            fail: None,
            fault: false,
            stuck_busy: false,
            no_drq: false,
            busy_reads: 0,
            atapi: false,
            bm_fail: false,
            flushes: Vec::new(),
            commands: Vec::new(),
        }
    }

    fn sector(&self, lba: u64) -> [u8; 512] {
        self.store
            .get(&lba)
            .copied()
            .unwrap_or_else(|| pattern(lba))
    }

    pub fn identify_words(&self) -> [u16; 256] {
        if let Some(w) = self.identify {
            return w;
        }
        let mut w = [0u16; 256];
        w[0] = 0x0040;
        put_string(&mut w[10..20], &self.serial);
        put_string(&mut w[23..27], "2.5+");
        put_string(&mut w[27..47], &self.model);
        w[49] = (1 << 9) | (1 << 8);
        let lba28 = self.sectors.min(0x0FFF_FFFF) as u32;
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[83] = 0x4000 | (1 << 12) | if self.lba48 { (1 << 10) | (1 << 13) } else { 0 };
        if self.lba48 {
            for i in 0..4 {
                w[100 + i] = (self.sectors >> (16 * i)) as u16;
            }
        }
        // Integrity word: signature A5, checksum making the byte sum zero.
        w[255] = 0xA5;
        let sum = w.iter().fold(0u8, |s, &x| {
            s.wrapping_add(x as u8).wrapping_add((x >> 8) as u8)
        });
        w[255] |= u16::from(0u8.wrapping_sub(sum)) << 8;
        w
    }
}

fn put_string(words: &mut [u16], s: &str) {
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(words.len() * 2, b' ');
    for (w, pair) in words.iter_mut().zip(bytes.chunks(2)) {
        *w = u16::from(pair[0]) << 8 | u16::from(pair[1]);
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    PioIn {
        lba: u64,
        remaining: u64,
        block: Vec<u16>,
        pos: usize,
    },
    PioOut {
        lba: u64,
        remaining: u64,
        block: Vec<u16>,
    },
    Dma {
        write: bool,
        lba: u64,
        count: u64,
    },
}

#[derive(Default)]
struct Reg2 {
    cur: u8,
    prev: u8,
}

impl Reg2 {
    fn write(&mut self, v: u8) {
        self.prev = self.cur;
        self.cur = v;
    }
}

struct Alloc {
    phys: u64,
    len: usize,
    ptr: *mut u8,
    layout: Layout,
}

pub struct State {
    /// Controller present (false: every port floats at 0xFF).
    pub present: bool,
    pub disks: [Option<Disk>; 2],
    count: Reg2,
    lba: [Reg2; 3],
    features: Reg2,
    device: u8,
    pub control: u8,
    status: u8,
    error: u8,
    busy_left: u32,
    phase: Phase,
    intrq: bool,
    irq_pending: bool,
    pub bm_cmd: u8,
    pub bm_status: u8,
    pub bm_prdt: u32,
    pub violations: Vec<String>,
    /// Interrupts are not delivered (the count never moves).
    pub lose_irqs: bool,
    /// With no master beside a slave, behave as QEMU does (a phantom device 0: status DRDY,
    /// IDENTIFY aborted, signature 0xFF/0xFF) instead of the ATA rule (status 0, commands to
    /// device 0 not executed).
    pub phantom_master: bool,
    phantom_status: u8,
    /// Perform a software reset only this many port accesses after SRST falls, as QEMU does (it
    /// runs SRST in a bottom half on its main loop). Meanwhile device-register writes are
    /// ignored, so the drive selected before the reset stays selected.
    pub reset_lag: u32,
    reset_pending: u32,
}

impl State {
    /// Set the device register directly (as firmware left it before the driver starts).
    pub fn set_device_register(&mut self, v: u8) {
        self.device = v;
    }
}

pub struct Fake {
    pub st: RefCell<State>,
    /// The channel's command block, control port and bus-master base.
    pub cmd: u16,
    pub ctrl: u16,
    pub bm: u16,
    pub log: RefCell<Vec<Io>>,
    clock: Cell<u64>,
    irqs: Cell<u64>,
    allocs: RefCell<Vec<Alloc>>,
    next_phys: Cell<u64>,
}

impl Fake {
    pub fn new(master: Option<Disk>, slave: Option<Disk>) -> Self {
        Self::on_ports(master, slave, CMD, CTRL, BM)
    }

    /// The channel at the secondary's legacy ports (0x170/0x376), bus master at BAR4 + 8.
    pub fn secondary(master: Option<Disk>, slave: Option<Disk>) -> Self {
        Self::on_ports(master, slave, CMD2, CTRL2, BM2)
    }

    fn on_ports(master: Option<Disk>, slave: Option<Disk>, cmd: u16, ctrl: u16, bm: u16) -> Self {
        Self {
            cmd,
            ctrl,
            bm,
            st: RefCell::new(State {
                present: true,
                disks: [master, slave],
                count: Reg2 { cur: 1, prev: 0 },
                lba: [Reg2 { cur: 1, prev: 0 }, Reg2::default(), Reg2::default()],
                features: Reg2::default(),
                device: 0,
                control: 0,
                status: DRDY | DSC,
                error: 1,
                busy_left: 0,
                phase: Phase::Idle,
                intrq: false,
                irq_pending: false,
                bm_cmd: 0,
                bm_status: 0,
                bm_prdt: 0,
                violations: Vec::new(),
                lose_irqs: false,
                phantom_master: false,
                phantom_status: DRDY | DSC,
                reset_lag: 0,
                reset_pending: 0,
            }),
            log: RefCell::new(Vec::new()),
            clock: Cell::new(1_000_000),
            irqs: Cell::new(0),
            allocs: RefCell::new(Vec::new()),
            next_phys: Cell::new(0x10_0000),
        }
    }

    /// No controller at all: the bus floats.
    pub fn floating() -> Self {
        let f = Self::new(None, None);
        f.st.borrow_mut().present = false;
        f
    }

    pub fn disk<R>(&self, i: usize, f: impl FnOnce(&mut Disk) -> R) -> R {
        f(self.st.borrow_mut().disks[i]
            .as_mut()
            .expect("disk present"))
    }

    pub fn live_allocs(&self) -> usize {
        self.allocs.borrow().len()
    }

    pub fn violations(&self) -> Vec<String> {
        self.st.borrow().violations.clone()
    }

    pub fn clear_log(&self) {
        self.log.borrow_mut().clear();
    }

    pub fn log(&self) -> Vec<Io> {
        self.log.borrow().clone()
    }

    /// Bytes written to command-block register `reg`, in order.
    pub fn writes(&self, reg: u16) -> Vec<u8> {
        self.log
            .borrow()
            .iter()
            .filter_map(|io| match *io {
                Io::Out { port, value, .. } if port == self.cmd + reg => Some(value as u8),
                _ => None,
            })
            .collect()
    }

    /// Command-block writes (offset, value) in order, excluding the data port.
    pub fn taskfile_writes(&self) -> Vec<(u16, u8)> {
        self.log
            .borrow()
            .iter()
            .filter_map(|io| match *io {
                Io::Out { port, value, .. } if (self.cmd + 1..=self.cmd + 7).contains(&port) => {
                    Some((port - self.cmd, value as u8))
                }
                _ => None,
            })
            .collect()
    }

    pub fn reads_of(&self, p: u16) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|io| matches!(io, Io::In { port, .. } if *port == p))
            .count()
    }

    /// Place a DMA buffer at a chosen physical address (tests of boundary handling).
    pub fn alloc_at(&self, phys: u64, len: usize) -> DmaBuffer {
        let layout = Layout::from_size_align(len.max(1), 8).unwrap();
        // SAFETY: the layout has non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        self.allocs.borrow_mut().push(Alloc {
            phys,
            len,
            ptr,
            layout,
        });
        // SAFETY: `ptr` is a fresh allocation of `len` bytes that this fake owns until
        // `dma_free`, and its fake bus maps `phys` to it.
        unsafe { DmaBuffer::from_raw_parts(ptr, phys, len) }
    }

    /// Copy between fake physical memory and `buf`; false if the range is not allocated.
    fn phys_access(&self, phys: u64, buf: &mut [u8], to_memory: bool) -> bool {
        let allocs = self.allocs.borrow();
        let Some(a) = allocs
            .iter()
            .find(|a| phys >= a.phys && phys + buf.len() as u64 <= a.phys + a.len as u64)
        else {
            return false;
        };
        let off = (phys - a.phys) as usize;
        // SAFETY: `off..off + buf.len()` lies inside the live allocation `a`.
        unsafe {
            let p = a.ptr.add(off);
            if to_memory {
                core::ptr::copy_nonoverlapping(buf.as_ptr(), p, buf.len());
            } else {
                core::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), buf.len());
            }
        }
        true
    }

    fn tick(&self, ns: u64) {
        self.clock.set(self.clock.get() + ns);
    }

    /// One unit of busy time passes; a deferred interrupt is raised when BSY drops.
    fn advance_busy(&self, st: &mut State) {
        if st.busy_left > 0 && st.busy_left != u32::MAX {
            st.busy_left -= 1;
            if st.busy_left == 0 && st.irq_pending {
                st.irq_pending = false;
                self.raise_irq(st);
            }
        }
    }

    fn raise_irq(&self, st: &mut State) {
        if st.busy_left > 0 {
            // INTRQ goes with the end of BSY.
            st.irq_pending = true;
            return;
        }
        if st.intrq {
            return;
        }
        st.intrq = true;
        if st.control & 0x02 == 0 {
            st.bm_status |= 0x04;
            if !st.lose_irqs {
                self.irqs.set(self.irqs.get() + 1);
            }
        }
    }

    fn sel(st: &State) -> usize {
        usize::from(st.device & 0x10 != 0)
    }

    /// The primary-channel port (CMD.., CTRL, BM..) that `port` is on this fake's channel,
    /// so that one state machine serves either channel; [`UNMAPPED`] for any other port.
    fn canon(&self, port: u16) -> u16 {
        if (self.cmd..self.cmd + 8).contains(&port) {
            CMD + (port - self.cmd)
        } else if port == self.ctrl {
            CTRL
        } else if (self.bm..self.bm + 8).contains(&port) {
            BM + (port - self.bm)
        } else {
            UNMAPPED
        }
    }

    fn read_port8(&self, port: u16) -> u8 {
        let port = self.canon(port);
        let mut st = self.st.borrow_mut();
        if (BM..BM + 8).contains(&port) {
            return match port - BM {
                0 => st.bm_cmd,
                2 => st.bm_status,
                _ => 0,
            };
        }
        if !st.present {
            return 0xFF;
        }
        Self::advance_reset(&mut st);
        let sel = Self::sel(&st);
        let hob = st.control & 0x80 != 0;
        let pick = |r: &Reg2| if hob { r.prev } else { r.cur };
        match port {
            CTRL | 0x1F7 => {
                if st.disks[sel].is_none() {
                    let phantom = sel == 0 && st.phantom_master && st.disks[1].is_some();
                    return if phantom { st.phantom_status } else { 0 };
                }
                if port == 0x1F7 {
                    st.intrq = false;
                }
                if st.busy_left > 0 {
                    self.advance_busy(&mut st);
                    return BSY;
                }
                st.status
            }
            0x1F1 => st.error,
            0x1F2 => pick(&st.count),
            0x1F3 => pick(&st.lba[0]),
            0x1F4 => pick(&st.lba[1]),
            0x1F5 => pick(&st.lba[2]),
            0x1F6 => st.device,
            _ => 0xFF,
        }
    }

    /// A deferred reset (see [`State::reset_lag`]) comes one port access closer.
    fn advance_reset(st: &mut State) {
        if st.reset_pending > 0 {
            st.reset_pending -= 1;
            if st.reset_pending == 0 {
                Self::finish_reset(st);
            }
        }
    }

    /// Reset done: signatures, device 0 selected.
    fn finish_reset(st: &mut State) {
        st.busy_left = st.disks[0].as_ref().map_or(0, |d| d.busy_reads);
        st.device = 0;
        st.count = Reg2 { cur: 1, prev: 0 };
        st.lba = [Reg2 { cur: 1, prev: 0 }, Reg2::default(), Reg2::default()];
        let atapi = st.disks[0].as_ref().is_some_and(|d| d.atapi);
        if atapi {
            st.lba[1].cur = 0x14;
            st.lba[2].cur = 0xEB;
        }
        if st.disks[0].is_none() && st.phantom_master {
            // QEMU's signature for a position without a drive.
            st.lba[1].cur = 0xFF;
            st.lba[2].cur = 0xFF;
            st.phantom_status = DRDY | DSC;
        }
        st.status = if atapi { 0 } else { DRDY | DSC };
        st.error = 1;
        st.phase = Phase::Idle;
        st.intrq = false;
        st.irq_pending = false;
    }

    fn busy(st: &State) -> bool {
        st.busy_left > 0 || st.status & (BSY | DRQ) != 0
    }

    fn write_port8(&self, port: u16, v: u8) {
        let real_port = port;
        let port = self.canon(port);
        let mut st = self.st.borrow_mut();
        if (BM..BM + 8).contains(&port) {
            match port - BM {
                0 => {
                    let old = st.bm_cmd;
                    if old & 1 != 0 && (old ^ v) & 0x08 != 0 {
                        st.violations
                            .push("BM direction changed while started".into());
                    }
                    st.bm_cmd = v & 0x09;
                    if v & 1 != 0 && old & 1 == 0 {
                        st.bm_status |= 0x01;
                        if matches!(st.phase, Phase::Dma { .. }) {
                            self.run_dma(&mut st);
                        }
                    } else if v & 1 == 0 {
                        st.bm_status &= !0x01;
                    }
                }
                2 => {
                    st.bm_status = (st.bm_status & 0x81) | (v & 0x60) | (st.bm_status & !v & 0x06);
                }
                _ => st
                    .violations
                    .push(format!("byte write to BM+{}", port - BM)),
            }
            return;
        }
        if !st.present {
            return;
        }
        if port == CTRL {
            let old = st.control;
            st.control = v;
            if v & 0x04 != 0 && old & 0x04 == 0 {
                st.busy_left = u32::MAX;
            }
            if v & 0x04 == 0 && old & 0x04 != 0 {
                if st.reset_lag > 0 {
                    st.reset_pending = st.reset_lag;
                } else {
                    Self::finish_reset(&mut st);
                }
            }
            return;
        }
        Self::advance_reset(&mut st);
        if port == 0x1F6 && st.reset_pending > 0 {
            return; // QEMU: the drives are busy with the reset, the write is dropped
        }
        if (0x1F1..=0x1F7).contains(&port) && Self::busy(&st) && st.disks[Self::sel(&st)].is_some()
        {
            let s = format!("write {v:#04x} to {port:#x} while BSY/DRQ");
            st.violations.push(s);
        }
        match port {
            0x1F1 => st.features.write(v),
            0x1F2 => st.count.write(v),
            0x1F3 => st.lba[0].write(v),
            0x1F4 => st.lba[1].write(v),
            0x1F5 => st.lba[2].write(v),
            0x1F6 => st.device = v,
            0x1F7 => self.command(&mut st, v),
            _ => st.violations.push(format!("byte write to {real_port:#x}")),
        }
        // Any command-block write clears HOB.
        st.control &= !0x80;
    }

    fn finish_error(&self, st: &mut State, error: u8, extra: u8) {
        st.status = DRDY | ERR | extra;
        st.error = error;
        st.phase = Phase::Idle;
        self.raise_irq(st);
    }

    fn command(&self, st: &mut State, c: u8) {
        let sel = Self::sel(st);
        let Some(disk) = st.disks[sel].as_mut() else {
            if sel == 0 && st.phantom_master && st.disks[1].is_some() {
                // QEMU: the empty master aborts every command (IDENTIFY included).
                st.phantom_status = DRDY | ERR;
                st.error = ABRT;
                self.raise_irq(st);
            }
            return;
        };
        disk.commands.push(c);
        if disk.stuck_busy {
            st.busy_left = u32::MAX;
            return;
        }
        st.busy_left = disk.busy_reads;
        let (lba48, sectors, fault, no_drq, atapi) = (
            disk.lba48,
            disk.sectors,
            disk.fault,
            disk.no_drq,
            disk.atapi,
        );
        match c {
            0xEC => {
                if atapi {
                    st.lba[1].cur = 0x14;
                    st.lba[2].cur = 0xEB;
                    self.finish_error(st, ABRT, 0);
                    return;
                }
                let words = disk.identify_words().to_vec();
                st.phase = Phase::PioIn {
                    lba: u64::MAX,
                    remaining: 1,
                    block: words,
                    pos: 0,
                };
                st.status = DRDY | DSC | DRQ;
                self.raise_irq(st);
            }
            0x20 | 0x24 | 0x30 | 0x34 | 0xC8 | 0x25 | 0xCA | 0x35 => {
                let ext = matches!(c, 0x24 | 0x34 | 0x25 | 0x35);
                if ext && !lba48 {
                    self.finish_error(st, ABRT, 0);
                    return;
                }
                if st.device & 0x40 == 0 {
                    st.violations.push("LBA bit clear".into());
                }
                let (lba, count) = if ext {
                    let lba = (0..3).fold(0u64, |a, i| {
                        a | u64::from(st.lba[i].cur) << (8 * i)
                            | u64::from(st.lba[i].prev) << (8 * i + 24)
                    });
                    let n = u64::from(st.count.prev) << 8 | u64::from(st.count.cur);
                    (lba, if n == 0 { 65536 } else { n })
                } else {
                    let lba = (0..3).fold(u64::from(st.device & 0x0F) << 24, |a, i| {
                        a | u64::from(st.lba[i].cur) << (8 * i)
                    });
                    let n = u64::from(st.count.cur);
                    (lba, if n == 0 { 256 } else { n })
                };
                if fault {
                    self.finish_error(st, ABRT, DF);
                    return;
                }
                if lba + count > sectors {
                    self.finish_error(st, IDNF, 0);
                    return;
                }
                if no_drq {
                    st.status = DRDY | DSC;
                    return;
                }
                match c {
                    0x20 | 0x24 => self.load_block(st, lba, count),
                    0x30 | 0x34 => {
                        st.phase = Phase::PioOut {
                            lba,
                            remaining: count,
                            block: Vec::new(),
                        };
                        st.status = DRDY | DSC | DRQ;
                    }
                    _ => {
                        st.phase = Phase::Dma {
                            write: matches!(c, 0xCA | 0x35),
                            lba,
                            count,
                        };
                        st.status = DRDY | DSC | DRQ;
                        if st.bm_cmd & 1 != 0 {
                            self.run_dma(st);
                        }
                    }
                }
            }
            0xE7 | 0xEA => {
                if c == 0xEA && !lba48 {
                    self.finish_error(st, ABRT, 0);
                    return;
                }
                disk.flushes.push(c);
                st.status = DRDY | DSC;
                st.phase = Phase::Idle;
                self.raise_irq(st);
            }
            _ => self.finish_error(st, ABRT, 0),
        }
    }

    /// PIO-in: present the block at `lba` (or fail there).
    fn load_block(&self, st: &mut State, lba: u64, remaining: u64) {
        let disk = st.disks[Self::sel(st)].as_ref().unwrap();
        if let Some((bad, bits)) = disk.fail {
            if bad == lba {
                self.finish_error(st, bits, 0);
                return;
            }
        }
        let data = disk.sector(lba);
        let block = data
            .chunks(2)
            .map(|p| u16::from_le_bytes([p[0], p[1]]))
            .collect();
        st.phase = Phase::PioIn {
            lba,
            remaining,
            block,
            pos: 0,
        };
        st.status = DRDY | DSC | DRQ;
        self.raise_irq(st);
    }

    fn data_in(&self) -> u16 {
        let mut st = self.st.borrow_mut();
        if st.busy_left > 0 || st.status & DRQ == 0 {
            st.violations.push("data read without DRQ".into());
            return 0xFFFF;
        }
        let Phase::PioIn {
            lba,
            remaining,
            block,
            pos,
        } = &mut st.phase
        else {
            st.violations.push("data read outside PIO-in".into());
            return 0xFFFF;
        };
        let w = block[*pos];
        *pos += 1;
        if *pos == block.len() {
            let (lba, remaining) = (*lba, *remaining - 1);
            if remaining > 0 {
                st.busy_left = st.disks[Self::sel(&st)].as_ref().unwrap().busy_reads;
                self.load_block(&mut st, lba + 1, remaining);
            } else {
                st.status = DRDY | DSC;
                st.phase = Phase::Idle;
            }
        }
        w
    }

    fn data_out(&self, w: u16) {
        let mut st = self.st.borrow_mut();
        if st.busy_left > 0 || st.status & DRQ == 0 {
            st.violations.push("data write without DRQ".into());
            return;
        }
        let sel = Self::sel(&st);
        let Phase::PioOut {
            lba,
            remaining,
            block,
        } = &mut st.phase
        else {
            st.violations.push("data write outside PIO-out".into());
            return;
        };
        block.push(w);
        if block.len() < 256 {
            return;
        }
        let (at, remaining) = (*lba, *remaining - 1);
        let mut data = [0u8; 512];
        for (d, w) in data.chunks_mut(2).zip(block.iter()) {
            d.copy_from_slice(&w.to_le_bytes());
        }
        let disk = st.disks[sel].as_mut().unwrap();
        if let Some((bad, bits)) = disk.fail {
            if bad == at {
                self.finish_error(&mut st, bits, 0);
                return;
            }
        }
        disk.store.insert(at, data);
        st.busy_left = disk.busy_reads;
        if remaining > 0 {
            st.phase = Phase::PioOut {
                lba: at + 1,
                remaining,
                block: Vec::new(),
            };
            st.status = DRDY | DSC | DRQ;
        } else {
            st.phase = Phase::Idle;
            st.status = DRDY | DSC;
        }
        self.raise_irq(&mut st);
    }

    fn run_dma(&self, st: &mut State) {
        let Phase::Dma { write, lba, count } = st.phase else {
            return;
        };
        let sel = Self::sel(st);
        if st.disks[sel].as_ref().unwrap().bm_fail {
            st.bm_status = (st.bm_status & !0x01) | 0x02;
            st.status = DRDY | DSC;
            st.phase = Phase::Idle;
            self.raise_irq(st);
            return;
        }
        let to_memory = st.bm_cmd & 0x08 != 0;
        if to_memory == write {
            st.violations
                .push("BM direction does not match the command".into());
        }
        let need = count as usize * 512;
        let mut table = st.bm_prdt as u64;
        if table & 3 != 0 {
            st.violations.push("PRD table not aligned".into());
        }
        // The device's data stream.
        let mut stream = Vec::with_capacity(if write { 0 } else { need });
        if !write {
            let disk = st.disks[sel].as_ref().unwrap();
            for l in lba..lba + count {
                stream.extend_from_slice(&disk.sector(l));
            }
        }
        let mut done = 0usize;
        let mut eot = false;
        for _ in 0..8192 {
            let mut e = [0u8; 8];
            if (table & 0xFFFF) + 8 > 0x1_0000 {
                st.violations.push("PRD table crosses 64 KiB".into());
            }
            if !self.phys_access(table, &mut e, false) {
                st.violations
                    .push(format!("PRD table at {table:#x} unmapped"));
                st.bm_status = (st.bm_status & !0x01) | 0x02;
                return;
            }
            table += 8;
            let phys = u64::from(u32::from_le_bytes(e[..4].try_into().unwrap()));
            let raw = u16::from_le_bytes([e[4], e[5]]);
            let len = if raw == 0 { 65536 } else { usize::from(raw) };
            eot = u16::from_le_bytes([e[6], e[7]]) & 0x8000 != 0;
            if phys & 1 != 0 || len & 1 != 0 {
                st.violations
                    .push(format!("odd PRD entry {phys:#x}+{len:#x}"));
            }
            if (phys & 0xFFFF) + len as u64 > 0x1_0000 {
                st.violations
                    .push(format!("PRD entry {phys:#x}+{len:#x} crosses 64 KiB"));
            }
            let n = len.min(need - done);
            let ok = if write {
                let mut chunk = vec![0u8; n];
                let ok = self.phys_access(phys, &mut chunk, false);
                stream.extend_from_slice(&chunk);
                ok
            } else {
                self.phys_access(phys, &mut stream[done..done + n], true)
            };
            if !ok {
                st.bm_status = (st.bm_status & !0x01) | 0x02;
                self.raise_irq(st);
                return;
            }
            done += n;
            if eot || done == need {
                break;
            }
        }
        if done < need {
            // PRD table too short: the engine stops, the device still wants data.
            st.bm_status &= !0x01;
            return;
        }
        let disk = st.disks[sel].as_mut().unwrap();
        if let Some((bad, bits)) = disk.fail {
            if (lba..lba + count).contains(&bad) {
                st.bm_status &= !0x01;
                self.finish_error(st, bits, 0);
                return;
            }
        }
        if write {
            for (i, s) in stream.chunks(512).enumerate() {
                disk.store.insert(lba + i as u64, s.try_into().unwrap());
            }
        }
        if eot {
            st.bm_status &= !0x01;
        }
        st.status = DRDY | DSC;
        st.phase = Phase::Idle;
        self.raise_irq(st);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        for a in self.allocs.borrow_mut().drain(..) {
            // SAFETY: allocated with this layout in `alloc_at`/`dma_alloc` and not freed yet.
            unsafe { dealloc(a.ptr, a.layout) };
        }
    }
}

impl Platform for Fake {
    fn inb(&self, port: u16) -> u8 {
        self.tick(PORT_NS);
        let v = self.read_port8(port);
        self.log.borrow_mut().push(Io::In {
            port,
            width: 1,
            value: u32::from(v),
        });
        v
    }
    fn inw(&self, port: u16) -> u16 {
        self.tick(PORT_NS);
        let v = if self.canon(port) == CMD && self.st.borrow().present {
            self.data_in()
        } else {
            self.st
                .borrow_mut()
                .violations
                .push(format!("inw {port:#x}"));
            0xFFFF
        };
        self.log.borrow_mut().push(Io::In {
            port,
            width: 2,
            value: u32::from(v),
        });
        v
    }
    fn inl(&self, port: u16) -> u32 {
        self.tick(PORT_NS);
        let v = if self.canon(port) == BM + 4 {
            self.st.borrow().bm_prdt
        } else {
            u32::MAX
        };
        self.log.borrow_mut().push(Io::In {
            port,
            width: 4,
            value: v,
        });
        v
    }
    fn outb(&self, port: u16, value: u8) {
        self.tick(PORT_NS);
        self.log.borrow_mut().push(Io::Out {
            port,
            width: 1,
            value: u32::from(value),
        });
        self.write_port8(port, value);
    }
    fn outw(&self, port: u16, value: u16) {
        self.tick(PORT_NS);
        self.log.borrow_mut().push(Io::Out {
            port,
            width: 2,
            value: u32::from(value),
        });
        if self.canon(port) == CMD && self.st.borrow().present {
            self.data_out(value);
        } else {
            self.st
                .borrow_mut()
                .violations
                .push(format!("outw {port:#x}"));
        }
    }
    fn outl(&self, port: u16, value: u32) {
        self.tick(PORT_NS);
        self.log.borrow_mut().push(Io::Out {
            port,
            width: 4,
            value,
        });
        let mut st = self.st.borrow_mut();
        if self.canon(port) == BM + 4 {
            if value & 3 != 0 {
                st.violations.push("PRD table address not aligned".into());
            }
            st.bm_prdt = value & !3;
        } else {
            st.violations.push(format!("outl {port:#x}"));
        }
    }

    fn map_mmio(&self, phys: u64, len: u64) -> Result<MmioRegion, PlatformError> {
        Err(PlatformError::BadMmioRange { phys, len })
    }
    fn mmio_read8(&self, _: &MmioRegion, _: u64) -> u8 {
        unreachable!()
    }
    fn mmio_read16(&self, _: &MmioRegion, _: u64) -> u16 {
        unreachable!()
    }
    fn mmio_read32(&self, _: &MmioRegion, _: u64) -> u32 {
        unreachable!()
    }
    fn mmio_write8(&self, _: &MmioRegion, _: u64, _: u8) {
        unreachable!()
    }
    fn mmio_write16(&self, _: &MmioRegion, _: u64, _: u16) {
        unreachable!()
    }
    fn mmio_write32(&self, _: &MmioRegion, _: u64, _: u32) {
        unreachable!()
    }

    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError> {
        let align = align.max(8) as u64;
        let phys = self.next_phys.get().div_ceil(align) * align;
        self.next_phys.set(phys + len as u64);
        Ok(self.alloc_at(phys, len))
    }
    fn dma_free(&self, buffer: DmaBuffer) {
        let mut allocs = self.allocs.borrow_mut();
        let i = allocs
            .iter()
            .position(|a| a.ptr == buffer.as_mut_ptr())
            .expect("freeing an unknown buffer");
        let a = allocs.remove(i);
        // SAFETY: allocated with this layout and removed from the list, so freed once.
        unsafe { dealloc(a.ptr, a.layout) };
    }
    fn virt_to_phys(&self, virt: *const u8) -> u64 {
        let allocs = self.allocs.borrow();
        let a = allocs
            .iter()
            .find(|a| (a.ptr as usize..a.ptr as usize + a.len).contains(&(virt as usize)))
            .expect("not DMA memory");
        a.phys + (virt as usize - a.ptr as usize) as u64
    }

    fn interrupt_count(&self, vector: u8) -> u64 {
        if vector == VECTOR {
            self.irqs.get()
        } else {
            0
        }
    }
    fn interrupt_epoch(&self) -> u64 {
        0
    }
    fn wait_for_interrupt(&self, _epoch: u64) {
        self.tick(1_000_000);
        let mut st = self.st.borrow_mut();
        self.advance_busy(&mut st);
    }
    fn now_ns(&self) -> u64 {
        self.tick(100);
        self.clock.get()
    }
}

/// `rep insw` / `rep outsw`: one logged access per call.
impl PortStrings for Fake {
    fn ins16(&self, port: u16, buf: &mut [u16]) {
        self.tick(PORT_NS);
        self.log.borrow_mut().push(Io::Ins {
            port,
            words: buf.len(),
        });
        for w in buf {
            *w = if self.canon(port) == CMD {
                self.data_in()
            } else {
                0xFFFF
            };
        }
    }
    fn outs16(&self, port: u16, buf: &[u16]) {
        self.tick(PORT_NS);
        self.log.borrow_mut().push(Io::Outs {
            port,
            words: buf.len(),
        });
        if self.canon(port) != CMD {
            self.st
                .borrow_mut()
                .violations
                .push(format!("outs16 {port:#x}"));
            return;
        }
        for &w in buf {
            self.data_out(w);
        }
    }
}

/// Uses the default (word loop) [`PortStrings`] methods.
pub struct Looping<'a>(pub &'a Fake);

impl Platform for Looping<'_> {
    fn inb(&self, port: u16) -> u8 {
        self.0.inb(port)
    }
    fn inw(&self, port: u16) -> u16 {
        self.0.inw(port)
    }
    fn inl(&self, port: u16) -> u32 {
        self.0.inl(port)
    }
    fn outb(&self, port: u16, value: u8) {
        self.0.outb(port, value)
    }
    fn outw(&self, port: u16, value: u16) {
        self.0.outw(port, value)
    }
    fn outl(&self, port: u16, value: u32) {
        self.0.outl(port, value)
    }
    fn map_mmio(&self, phys: u64, len: u64) -> Result<MmioRegion, PlatformError> {
        self.0.map_mmio(phys, len)
    }
    fn mmio_read8(&self, r: &MmioRegion, o: u64) -> u8 {
        self.0.mmio_read8(r, o)
    }
    fn mmio_read16(&self, r: &MmioRegion, o: u64) -> u16 {
        self.0.mmio_read16(r, o)
    }
    fn mmio_read32(&self, r: &MmioRegion, o: u64) -> u32 {
        self.0.mmio_read32(r, o)
    }
    fn mmio_write8(&self, r: &MmioRegion, o: u64, v: u8) {
        self.0.mmio_write8(r, o, v)
    }
    fn mmio_write16(&self, r: &MmioRegion, o: u64, v: u16) {
        self.0.mmio_write16(r, o, v)
    }
    fn mmio_write32(&self, r: &MmioRegion, o: u64, v: u32) {
        self.0.mmio_write32(r, o, v)
    }
    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError> {
        self.0.dma_alloc(len, align)
    }
    fn dma_free(&self, buffer: DmaBuffer) {
        self.0.dma_free(buffer)
    }
    fn virt_to_phys(&self, virt: *const u8) -> u64 {
        self.0.virt_to_phys(virt)
    }
    fn interrupt_count(&self, vector: u8) -> u64 {
        self.0.interrupt_count(vector)
    }
    fn interrupt_epoch(&self) -> u64 {
        self.0.interrupt_epoch()
    }
    fn wait_for_interrupt(&self, epoch: u64) {
        self.0.wait_for_interrupt(epoch)
    }
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

impl PortStrings for Looping<'_> {}

/// The PIIX IDE function (8086:7010, compatibility mode on both channels, bus master) as
/// enumeration would report it, without BARs; tests add the BARs they need.
pub fn piix_function() -> PciFunction {
    PciFunction {
        address: PciAddress::new(0, 1, 1),
        vendor_id: 0x8086,
        device_id: 0x7010,
        class: 1,
        subclass: 1,
        prog_if: 0x80,
        revision: 0,
        header_type: 0,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        interrupt_line: 0,
        interrupt_pin: 0,
        bars: [None; 6],
        capabilities: Vec::new(),
        secondary_bus: None,
        issues: Vec::new(),
    }
}
