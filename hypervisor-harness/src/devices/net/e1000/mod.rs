//! The Intel 82540EM (e1000) as QEMU's `e1000` presents it: 8086:100E revision 3, class
//! 02/00/00, BAR0 128 KiB of registers, BAR1 the 64-byte I/O window (IOADDR/IODATA), INTA.
//!
//! [`E1000`] is the whole device: PCI configuration, registers, EEPROM, PHY, the legacy RX and
//! TX descriptor rings, statistics and the backend. [`E1000Function`], [`E1000Mmio`] and
//! [`E1000Io`] are its faces on the PCI configuration space and the two buses; `vmm/` adds a
//! thread that calls [`E1000::rx_pass`] when the backend has frames.
//!
//! Interrupts: the line's level is `(ICR & IMS) != 0`, recomputed after every access and pass;
//! reading ICR clears it. Causes collect in ICR while the line is high, so a batch (a TDT
//! write's frames, an RX pass) raises it once. ITR (moderation, in 256 ns units) is honoured
//! as QEMU's `mitigation` does: after the line rises it may not rise again until the interval
//! has passed; a cause in between waits in ICR ([`E1000::irq_deadline`]) and the backend
//! thread raises it when the time comes ([`E1000::irq_timer`]).
//!
//! Guest mistakes are counted in [`Counters`], never a panic: descriptors or buffers outside
//! RAM, head/tail writes beyond the ring (ignored), frames over 1518 bytes (dropped).

pub mod eeprom;
pub mod phy;
pub mod regs;
pub mod rx;
pub mod stats;
pub mod tx;

#[cfg(test)]
mod tests;

use super::IrqLevel;
use crate::backends::net::NetBackend;
use crate::devices::bus::BusDevice;
use crate::devices::pci::config::{PciConfig, CMD_BUS_MASTER, CMD_IO, CMD_MEM};
use crate::devices::pci::PciFunction;
use crate::devices::{le_value, lock};
use eeprom::Eeprom;
use phy::Phy;
use regs::*;
use stats::Stats;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x100e;
/// The revision QEMU's 82540EM reports.
pub const REVISION: u8 = 0x03;
const CLASS_NETWORK: u8 = 0x02;
const SUBCLASS_ETHERNET: u8 = 0x00;
pub const BAR_MMIO: usize = 0;
pub const BAR_IO: usize = 1;
/// Size of one legacy descriptor, RX or TX.
pub const DESC_SIZE: u64 = 16;

/// What the model refused or dropped, by reason (beyond the statistics registers the guest
/// reads and clears).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// A TX descriptor that could not be read (ring outside RAM).
    pub tx_desc_fault: u64,
    /// A TX buffer outside RAM: the frame was dropped.
    pub tx_buffer_fault: u64,
    /// A TX frame over the largest Ethernet frame (1518 bytes): dropped.
    pub tx_oversize: u64,
    /// A TX frame of no bytes (EOP on descriptors without buffers): nothing sent.
    pub tx_empty: u64,
    /// A TSE frame whose context does not fit it (no MSS, headers beyond the header length):
    /// dropped.
    pub tx_tso_dropped: u64,
    /// Checksum offsets outside the frame: sent without the checksum.
    pub tx_bad_checksum_offsets: u64,
    /// A descriptor type that is neither legacy, context nor data: skipped.
    pub tx_bad_desc_type: u64,
    /// The backend refused (or was disconnected).
    pub tx_backend_errors: u64,
    /// RDH/RDT/TDH/TDT writes at or beyond the ring's end: ignored.
    pub bad_index_writes: u64,
    /// An RX descriptor that could not be read or written back (ring outside RAM).
    pub rx_desc_fault: u64,
    /// An RX buffer outside RAM: the descriptor is written back with the RX error bit.
    pub rx_buffer_fault: u64,
    /// Frames that could never fit the ring (too few, too small buffers), were too long, or
    /// came with a partial checksum outside them.
    pub rx_dropped: u64,
    /// Frames not for us (destination filter).
    pub rx_filtered: u64,
    /// Times a frame was held in the backend for want of free descriptors.
    pub rx_holds: u64,
    /// Times transmission stopped, descriptors waiting, until the backend had room.
    pub tx_stalls: u64,
    pub rx_backend_errors: u64,
}

/// A descriptor ring's registers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ring {
    pub bal: u32,
    pub bah: u32,
    pub len: u32,
    pub head: u32,
    pub tail: u32,
}

impl Ring {
    pub fn base(&self) -> u64 {
        u64::from(self.bah) << 32 | u64::from(self.bal & !0xf)
    }

    /// Descriptors in the ring (RDLEN/TDLEN is a multiple of 128 bytes: 8 descriptors).
    pub fn count(&self) -> u32 {
        (self.len & 0x000f_ff80) / DESC_SIZE as u32
    }

    pub fn desc_addr(&self, index: u32) -> Option<u64> {
        self.base().checked_add(u64::from(index) * DESC_SIZE)
    }

    /// A new length keeps head and tail (as the hardware does) unless they fall outside the
    /// ring, which would leave the device reading beyond it: then they restart at 0.
    fn set_len(&mut self, value: u32) {
        self.len = value & 0x000f_ff80;
        let n = self.count();
        if self.head >= n || self.tail >= n {
            self.head = 0;
            self.tail = 0;
        }
    }

    /// Store a head or tail write; a value beyond the ring is ignored (and counted).
    fn set_index(which: &mut u32, value: u32, count: u32, bad: &mut u64) -> bool {
        let v = value & 0xffff;
        if count != 0 && v >= count {
            *bad += 1;
            return false;
        }
        *which = v;
        true
    }
}

pub struct E1000<M> {
    config: PciConfig,
    mem: M,
    irq: Arc<dyn IrqLevel>,
    irq_level: bool,
    /// ITR: the line may not rise again before this.
    irq_not_before: Option<Instant>,
    /// A rise waits for `irq_not_before`.
    irq_deferred: bool,
    /// The time source (a fake in the tests).
    clock: fn() -> Instant,
    backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    eeprom: Eeprom,
    phy: Phy,
    link_up: bool,
    ctrl: Ctrl,
    eerd: u32,
    mdic: u32,
    icr: Cause,
    ims: Cause,
    rctl: Rctl,
    tctl: Tctl,
    rx_ring: Ring,
    tx_ring: Ring,
    mta: [u32; MTA_LEN],
    ra: [u32; 2 * RA_PAIRS],
    vfta: [u32; VFTA_LEN],
    plain: BTreeMap<u64, u32>,
    io_addr: u32,
    stats: Stats,
    counters: Counters,
    tx: tx::TxState,
    rx: rx::RxState,
    /// Written when the backend thread must look again: a register write let a held frame in
    /// (it stopped watching the backend while the ring was full), or a transmit pass stalled
    /// (it watches for room while one is).
    rx_resume: Option<EventFd>,
    /// The backend's last `poll` set no deadline ("until a frame moves"), so the backend
    /// thread sleeps without one: frames that move on a vCPU thread must poll it here.
    backend_idle: bool,
}

impl<M: GuestMemory> E1000<M> {
    pub fn new(
        mem: M,
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        irq: Arc<dyn IrqLevel>,
        gsi: u8,
    ) -> Self {
        let mut config = PciConfig::new(VENDOR, DEVICE, CLASS_NETWORK, SUBCLASS_ETHERNET, 0x00);
        config.set_revision(REVISION);
        config.set_subsystem(VENDOR, DEVICE);
        config.set_interrupt(1, gsi);
        // Both sizes are valid BAR sizes, so these cannot fail.
        let _ = config.add_mem32_bar(BAR_MMIO, MMIO_SIZE, false);
        let _ = config.add_io_bar(BAR_IO, IO_SIZE);
        let mut dev = Self {
            config,
            mem,
            irq,
            irq_level: false,
            irq_not_before: None,
            irq_deferred: false,
            clock: Instant::now,
            backend,
            mac,
            eeprom: Eeprom::new(mac, DEVICE, VENDOR),
            phy: Phy::new(),
            link_up: true,
            ctrl: Ctrl::empty(),
            eerd: 0,
            mdic: 0,
            icr: Cause::empty(),
            ims: Cause::empty(),
            rctl: Rctl::empty(),
            tctl: Tctl::empty(),
            rx_ring: Ring::default(),
            tx_ring: Ring::default(),
            mta: [0; MTA_LEN],
            ra: [0; 2 * RA_PAIRS],
            vfta: [0; VFTA_LEN],
            plain: BTreeMap::new(),
            io_addr: 0,
            stats: Stats::default(),
            counters: Counters::default(),
            tx: tx::TxState::default(),
            rx: rx::RxState::default(),
            rx_resume: None,
            backend_idle: true,
        };
        dev.reset();
        dev
    }

    /// The device's state at power-on and after CTRL.RST: registers to their defaults, RAL0/
    /// RAH0 loaded from the EEPROM's MAC, rings and interrupt causes cleared. A frame held back
    /// for the ring is dropped (counted), as the reset empties the receive FIFO.
    pub fn reset(&mut self) {
        self.ctrl = Ctrl::FD | Ctrl::ASDE | Ctrl::SLU;
        self.eerd = 0;
        self.mdic = Mdic::READY.bits();
        self.icr = Cause::empty();
        self.ims = Cause::empty();
        self.rctl = Rctl::empty();
        self.tctl = Tctl::empty();
        self.rx_ring = Ring::default();
        self.tx_ring = Ring::default();
        self.mta = [0; MTA_LEN];
        self.ra = [0; 2 * RA_PAIRS];
        let m = self.mac;
        self.ra[0] = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
        self.ra[1] = u32::from(u16::from_le_bytes([m[4], m[5]])) | RAH_AV;
        self.vfta = [0; VFTA_LEN];
        self.plain.clear();
        // PBA: 48 KiB for RX, 16 KiB for TX (the 82540EM's default split).
        self.plain.insert(0x1000, 0x0030);
        self.eeprom.reset_pins();
        self.phy = Phy::new();
        self.tx = tx::TxState::default();
        self.irq_not_before = None;
        self.irq_deferred = false;
        if self.rx.drop_pending() {
            self.counters.rx_dropped += 1;
        }
        self.update_irq();
    }

    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn backend(&self) -> &dyn NetBackend {
        &*self.backend
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn set_rx_resume(&mut self, evt: EventFd) {
        self.rx_resume = Some(evt);
    }

    /// Whether the last receive pass left a frame waiting for descriptors (or RX disabled):
    /// the backend thread then waits for [`Self::set_rx_resume`]'s eventfd instead.
    pub fn rx_blocked(&self) -> bool {
        self.rx.blocked
    }

    /// Whether transmission waits for the backend to have room (see [`Self::tx_retry`]).
    pub fn tx_stalled(&self) -> bool {
        self.tx.stalled
    }

    /// The backend may have room: run the stalled transmit pass again.
    pub fn tx_retry(&mut self) {
        if self.tx.stalled {
            self.tx_kick();
        }
    }

    fn wake_backend_thread(&self) {
        if let Some(evt) = &self.rx_resume {
            let _ = evt.write(1);
        }
    }

    /// Give the backend its time (timers); how long until it wants it again.
    pub fn backend_poll(&mut self) -> Option<std::time::Duration> {
        let wait = self.backend.poll();
        self.backend_idle = wait.is_none();
        wait
    }

    /// Frames moved on a vCPU thread (a TDT write's transmits, an RDT write's deliveries).
    /// A backend whose last `poll` wanted no deadline may have one now (the peer's TCP arms
    /// its retransmit timer as it sends), while the backend thread sleeps without a timeout:
    /// poll it, and wake the thread to take the deadline. Otherwise a lost segment that only
    /// the peer's timer resends stalls the stream for good.
    fn frames_moved(&mut self) {
        if self.backend_idle && self.backend_poll().is_some() {
            self.wake_backend_thread();
        }
    }

    /// Link up or down (the cable): STATUS.LU, the PHY's link bits, and an LSC interrupt.
    pub fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.raise(Cause::LSC);
        }
    }

    fn bus_master(&self) -> bool {
        self.config.command() & CMD_BUS_MASTER != 0
    }

    /// Add causes to ICR and bring the line to its level.
    fn raise(&mut self, causes: Cause) {
        self.icr |= causes;
        self.update_irq();
    }

    /// The ITR interval (0: no moderation).
    fn itr_interval(&self) -> Duration {
        let itr = self.plain.get(&ITR).copied().unwrap_or(0) & 0xffff;
        Duration::from_nanos(u64::from(itr) * 256)
    }

    fn update_irq(&mut self) {
        let level = self.icr.intersects(self.ims);
        if level == self.irq_level {
            return;
        }
        if !level {
            self.irq_deferred = false;
            self.irq_level = false;
            self.irq.set_level(false);
            return;
        }
        let now = (self.clock)();
        if self.irq_not_before.is_some_and(|t| now < t) {
            if !self.irq_deferred {
                self.irq_deferred = true;
                // The backend thread times it: wake it to take the new deadline.
                if let Some(evt) = &self.rx_resume {
                    let _ = evt.write(1);
                }
            }
            return;
        }
        self.irq_deferred = false;
        let interval = self.itr_interval();
        self.irq_not_before = (!interval.is_zero()).then(|| now + interval);
        self.irq_level = true;
        self.irq.set_level(true);
    }

    /// When a moderated interrupt is due (None: nothing waits).
    pub fn irq_deadline(&self) -> Option<Instant> {
        self.irq_not_before.filter(|_| self.irq_deferred)
    }

    /// Raise a moderated interrupt whose interval has passed.
    pub fn irq_timer(&mut self) {
        if self.irq_deadline().is_some_and(|t| (self.clock)() >= t) {
            self.irq_not_before = None;
            self.update_irq();
        }
    }

    #[cfg(test)]
    fn set_clock(&mut self, clock: fn() -> Instant) {
        self.clock = clock;
    }

    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    fn status(&self) -> u32 {
        let mut s = Status::FD | Status::SPEED_1000 | Status::ASDV_1000;
        if self.link_up {
            s |= Status::LU;
        }
        s.bits()
    }

    /// A 32-bit register read at `reg` (dword-aligned offset in BAR0), with its side effects.
    pub fn read_reg(&mut self, reg: u64) -> u32 {
        match reg {
            CTRL => self.ctrl.bits(),
            STATUS => self.status(),
            EECD => self.eeprom.eecd(),
            EERD => self.eerd,
            MDIC => self.mdic,
            ICR => {
                let mut v = self.icr;
                if v.intersects(self.ims) {
                    v |= Cause::INT_ASSERTED;
                }
                self.icr = Cause::empty();
                self.update_irq();
                v.bits()
            }
            IMS => self.ims.bits(),
            RCTL => self.rctl.bits(),
            TCTL => self.tctl.bits(),
            RDBAL => self.rx_ring.bal,
            RDBAH => self.rx_ring.bah,
            RDLEN => self.rx_ring.len,
            RDH => self.rx_ring.head,
            RDT => self.rx_ring.tail,
            TDBAL => self.tx_ring.bal,
            TDBAH => self.tx_ring.bah,
            TDLEN => self.tx_ring.len,
            TDH => self.tx_ring.head,
            TDT => self.tx_ring.tail,
            STATS_BASE..STATS_END => self.stats.read_clear(reg),
            _ => {
                if let Some(v) = table(reg, MTA_BASE, MTA_LEN).map(|i| self.mta[i]) {
                    v
                } else if let Some(i) = table(reg, RA_BASE, 2 * RA_PAIRS) {
                    self.ra[i]
                } else if let Some(i) = table(reg, VFTA_BASE, VFTA_LEN) {
                    self.vfta[i]
                } else {
                    self.plain.get(&reg).copied().unwrap_or(0)
                }
            }
        }
    }

    /// A 32-bit register write. Unknown registers ignore it.
    pub fn write_reg(&mut self, reg: u64, value: u32) {
        match reg {
            CTRL => {
                let v = Ctrl::from_bits_retain(value);
                if v.contains(Ctrl::RST) {
                    self.reset();
                    return;
                }
                if v.contains(Ctrl::PHY_RST) {
                    self.phy = Phy::new();
                }
                self.ctrl = v.difference(Ctrl::RST | Ctrl::PHY_RST);
            }
            EECD => self.eeprom.write_eecd(value),
            EERD => {
                let e = Eerd::from_bits_retain(value);
                self.eerd = if e.contains(Eerd::START) {
                    let addr = ((value >> EERD_ADDR_SHIFT) & 0xff) as usize;
                    let data = u32::from(self.eeprom.word(addr));
                    (value & 0xff00) | Eerd::DONE.bits() | data << EERD_DATA_SHIFT
                } else {
                    value & 0xff00
                };
            }
            MDIC => self.write_mdic(value),
            ICR => {
                // Writing 1s clears those causes.
                self.icr = self.icr.difference(Cause::from_bits_truncate(value));
                self.update_irq();
            }
            ICS => self.raise(Cause::from_bits_truncate(value)),
            IMS => {
                self.ims |= Cause::from_bits_truncate(value);
                self.update_irq();
            }
            IMC => {
                self.ims = self.ims.difference(Cause::from_bits_truncate(value));
                self.update_irq();
            }
            RCTL => {
                self.rctl = Rctl::from_bits_retain(value);
                self.rx_kick();
            }
            TCTL => {
                self.tctl = Tctl::from_bits_retain(value);
                self.tx_kick();
            }
            RDBAL => self.rx_ring.bal = value,
            RDBAH => self.rx_ring.bah = value,
            RDLEN => self.rx_ring.set_len(value),
            RDH => {
                let n = self.rx_ring.count();
                Ring::set_index(
                    &mut self.rx_ring.head,
                    value,
                    n,
                    &mut self.counters.bad_index_writes,
                );
            }
            RDT => {
                let n = self.rx_ring.count();
                if Ring::set_index(
                    &mut self.rx_ring.tail,
                    value,
                    n,
                    &mut self.counters.bad_index_writes,
                ) {
                    self.rx_kick();
                }
            }
            TDBAL => self.tx_ring.bal = value,
            TDBAH => self.tx_ring.bah = value,
            TDLEN => self.tx_ring.set_len(value),
            TDH => {
                let n = self.tx_ring.count();
                Ring::set_index(
                    &mut self.tx_ring.head,
                    value,
                    n,
                    &mut self.counters.bad_index_writes,
                );
            }
            TDT => {
                let n = self.tx_ring.count();
                if Ring::set_index(
                    &mut self.tx_ring.tail,
                    value,
                    n,
                    &mut self.counters.bad_index_writes,
                ) {
                    self.tx_kick();
                }
            }
            STATS_BASE..STATS_END => {}
            ITR => {
                self.plain.insert(ITR, value);
                if value & 0xffff == 0 {
                    // Moderation off: what waits goes now.
                    self.irq_not_before = None;
                    self.update_irq();
                }
            }
            _ if PLAIN.contains(&reg) => {
                self.plain.insert(reg, value);
            }
            _ => {
                if let Some(i) = table(reg, MTA_BASE, MTA_LEN) {
                    self.mta[i] = value;
                } else if let Some(i) = table(reg, RA_BASE, 2 * RA_PAIRS) {
                    self.ra[i] = value;
                } else if let Some(i) = table(reg, VFTA_BASE, VFTA_LEN) {
                    self.vfta[i] = value;
                }
            }
        }
    }

    fn write_mdic(&mut self, value: u32) {
        let m = Mdic::from_bits_retain(value);
        let reg = ((value >> MDIC_REG_SHIFT) & 0x1f) as usize;
        let phy_addr = (value >> MDIC_PHY_SHIFT) & 0x1f;
        let mut out = value & !(Mdic::READY | Mdic::ERROR).bits();
        if phy_addr != phy::ADDRESS {
            out |= Mdic::ERROR.bits();
        } else if m.contains(Mdic::OP_READ) && !m.contains(Mdic::OP_WRITE) {
            out = (out & !0xffff) | u32::from(self.phy.read(reg, self.link_up));
        } else if m.contains(Mdic::OP_WRITE) && !m.contains(Mdic::OP_READ) {
            self.phy.write(reg, value as u16);
        } else {
            out |= Mdic::ERROR.bits();
        }
        // The PHY answers at once.
        self.mdic = out | Mdic::READY.bits();
        if m.contains(Mdic::IE) {
            self.raise(Cause::MDAC);
        }
    }

    fn tx_kick(&mut self) {
        if self.tx_process() {
            self.frames_moved();
            // A synchronous backend (the in-process peer) has its replies ready now.
            self.rx_kick();
        }
    }

    /// Run a receive pass for a register write that may have made room (RDT, RCTL, the
    /// command register); if a frame was held and now is not, wake the backend thread.
    fn rx_kick(&mut self) {
        let was_blocked = self.rx.blocked;
        let delivered_before = self.counters.rx_frames;
        self.rx_pass();
        if was_blocked && !self.rx.blocked {
            self.wake_backend_thread();
        } else if self.counters.rx_frames != delivered_before {
            self.frames_moved();
        }
    }

    /// BAR0 access of any size: a dword-aligned 32-bit access is a register access; a narrower
    /// read inside a dword reads that register; anything else reads 0 / is ignored.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if self.config.command() & CMD_MEM == 0 {
            data.fill(0xff);
            return;
        }
        let sub = (offset & 3) as usize;
        if offset >= MMIO_SIZE || sub + data.len() > 4 {
            data.fill(0);
            return;
        }
        let v = self.read_reg(offset & !3).to_le_bytes();
        data.copy_from_slice(&v[sub..sub + data.len()]);
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if self.config.command() & CMD_MEM == 0 || offset >= MMIO_SIZE {
            return;
        }
        if data.len() == 4 && offset & 3 == 0 {
            self.write_reg(offset, le_value(data) as u32);
        }
    }

    /// BAR1: IOADDR selects a BAR0 register, IODATA reads or writes it.
    pub fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        if self.config.command() & CMD_IO == 0 {
            data.fill(0xff);
            return;
        }
        let v = match (offset, data.len()) {
            (IOADDR, 4) => self.io_addr,
            (IODATA, 4) if u64::from(self.io_addr) < MMIO_SIZE => {
                self.read_reg(u64::from(self.io_addr) & !3)
            }
            _ => 0,
        };
        let n = data.len().min(4);
        data[..n].copy_from_slice(&v.to_le_bytes()[..n]);
        data[n..].fill(0);
    }

    pub fn io_write(&mut self, offset: u64, data: &[u8]) {
        if self.config.command() & CMD_IO == 0 || data.len() != 4 {
            return;
        }
        let v = le_value(data) as u32;
        match offset {
            IOADDR => self.io_addr = v & 0x0001_fffc,
            IODATA if u64::from(self.io_addr) < MMIO_SIZE => {
                self.write_reg(u64::from(self.io_addr), v)
            }
            _ => {}
        }
    }

    pub fn config_read(&self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data);
    }

    /// A configuration write; turning bus mastering on lets waiting TX and RX work run.
    pub fn config_write(&mut self, offset: u64, data: &[u8]) {
        let before = self.bus_master();
        self.config.write(offset, data);
        if !before && self.bus_master() {
            self.tx_kick();
            self.rx_kick();
        }
    }
}

/// Index of `reg` in a table of `len` dwords at `base`.
fn table(reg: u64, base: u64, len: usize) -> Option<usize> {
    let i = reg.checked_sub(base)? / 4;
    (i < len as u64).then_some(i as usize)
}

pub type SharedE1000<M> = Arc<Mutex<E1000<M>>>;

/// The configuration-space face.
pub struct E1000Function<M>(pub SharedE1000<M>);

impl<M: GuestMemory + Send> PciFunction for E1000Function<M> {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).config_write(offset, data)
    }
}

/// BAR0 on the MMIO bus.
pub struct E1000Mmio<M>(pub SharedE1000<M>);

impl<M: GuestMemory + Send> BusDevice for E1000Mmio<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).mmio_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).mmio_write(offset, data)
    }
}

/// BAR1 on the port bus.
pub struct E1000Io<M>(pub SharedE1000<M>);

impl<M: GuestMemory + Send> BusDevice for E1000Io<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).io_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).io_write(offset, data)
    }
}
