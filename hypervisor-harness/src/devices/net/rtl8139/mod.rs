//! The Realtek RTL8139C in its original ("C") mode, as Linux's `8139too` drives it: 10EC:8139
//! revision 0x10, class 02/00/00, BAR0 256 bytes of I/O ports and BAR1 the same 256 bytes as
//! MMIO, INTA.
//!
//! [`Rtl8139`] is the whole device: PCI configuration, registers, the 93C46 EEPROM, the basic
//! PHY registers, the RX ring buffer, the four TX slots and the backend. [`Rtl8139Function`],
//! [`Rtl8139Io`] and [`Rtl8139Mmio`] are its faces on the configuration space and the two
//! buses; `vmm/` adds a thread that calls [`Rtl8139::rx_pass`] when the backend has frames and
//! [`Rtl8139::tx_resume`] when a backend that was full has room again.
//!
//! Registers are 1, 2 or 4 bytes wide at their datasheet offsets; an access that covers part of
//! a register merges into it, one that spans several is split into bytes. Interrupts: the
//! line's level is `(ISR & IMR) != 0` after every access and pass; ISR is write-1-to-clear.
//!
//! Not modelled: C+ mode (CPCR and the C+ descriptor registers; writes are ignored and counted),
//! early RX/TX (ERBCR and ERSR read 0), the timer interrupt (TCTR counts at the PCI clock's
//! 33 MHz from its last write, TimerInt is stored, TimeOut never fires), loopback (TCR's LBK
//! bits are stored and ignored), wake-on-LAN.
//!
//! Guest mistakes are counted in [`Counters`], never a panic: rings and TX buffers outside RAM,
//! TX sizes of 0 or over 1792 bytes, accesses of odd widths.

pub mod eeprom;
pub mod regs;
pub mod rx;
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
use regs::*;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vm_memory::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

pub const VENDOR: u16 = 0x10ec;
pub const DEVICE: u16 = 0x8139;
/// RTL8139 (not C+: Linux's `8139too` hands revisions from 0x20 to `8139cp`).
pub const REVISION: u8 = 0x10;
/// QEMU's default subsystem ids (Red Hat, QEMU).
pub const SUBSYSTEM_VENDOR: u16 = 0x1af4;
pub const SUBSYSTEM_ID: u16 = 0x1100;
const CLASS_NETWORK: u8 = 0x02;
const SUBCLASS_ETHERNET: u8 = 0x00;
pub const BAR_IO: usize = 0;
pub const BAR_MMIO: usize = 1;
/// TCTR counts at the PCI clock.
const TCTR_HZ: u128 = 33_000_000;

/// What the model refused or dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub tx_frames: u64,
    pub rx_frames: u64,
    /// TX slots started with size 0 or over 1792 bytes: TABT.
    pub tx_bad_size: u64,
    /// TX frames of 1519..=1792 bytes: the slot completes (TOK) but no backend carries such a
    /// frame, so it is dropped, as a switch drops a giant.
    pub tx_too_long: u64,
    /// A TX buffer (TSAD..TSAD+size) outside RAM: TABT and SERR.
    pub tx_buffer_fault: u64,
    /// The backend refused (or was disconnected).
    pub tx_backend_errors: u64,
    /// Times a started slot waited for the backend to have room.
    pub tx_holds: u64,
    /// A received frame whose place in the ring lies outside RAM: dropped, MPC and SERR.
    pub rx_buffer_fault: u64,
    /// Frames that could never fit the ring: dropped, MPC and RXOVW; and frames with a
    /// partial checksum outside them: dropped.
    pub rx_dropped: u64,
    /// Frames not for us (RCR's filters, the MAR hash).
    pub rx_filtered: u64,
    /// Times a frame was held back because the ring had no room before CAPR.
    pub rx_holds: u64,
    pub rx_backend_errors: u64,
    /// Writes to C+ mode registers (not modelled): ignored.
    pub cplus_writes: u64,
    /// Register accesses of a width other than 1, 2 or 4 bytes: ignored (reads give 0).
    pub bad_access_width: u64,
    /// EEPROM writes and erases while writes were disabled.
    pub eeprom_refused_writes: u64,
}

pub struct Rtl8139<M> {
    config: PciConfig,
    mem: M,
    irq: Arc<dyn IrqLevel>,
    irq_level: bool,
    clock: fn() -> Instant,
    backend: Box<dyn NetBackend>,
    eeprom: Eeprom,
    link_up: bool,
    idr: [u8; 6],
    mar: [u8; 8],
    tsd: [u32; TX_SLOTS],
    tsad: [u32; TX_SLOTS],
    rbstart: u32,
    /// CR's RE and TE.
    cmd: Cmd,
    /// Where the driver has read up to (CAPR as written plus 16), inside the ring.
    rx_read: u32,
    /// Where the next frame goes (CBR), inside the ring.
    rx_write: u32,
    imr: Intr,
    isr: Intr,
    tcr: u32,
    rcr: Rcr,
    tctr_base: Instant,
    mpc: u32,
    /// 9346CR: the operating mode (EEM) and the pins as last written.
    eem: u8,
    ee_pins: u8,
    config1: u8,
    config3: u8,
    config4: u8,
    config5: u8,
    timer_int: u32,
    mulint: u16,
    bmcr: u16,
    anar: u16,
    cscr: u16,
    para78: u32,
    para7c: u32,
    counters: Counters,
    tx: tx::TxState,
    rx: rx::RxState,
    /// Written when the backend thread has to look again: a held RX frame may go in (CAPR
    /// moved), or a TX slot waits for the backend's room.
    wake: Option<EventFd>,
    /// The backend's last `poll` set no deadline ("until a frame moves"), so the backend
    /// thread sleeps without one: frames that move on a vCPU thread must poll it here.
    backend_idle: bool,
    /// The RX windows frames went in under since the fuzz rig last asked: a register write
    /// can deliver and then move or resize the ring in one access.
    #[cfg(any(test, feature = "fuzzing"))]
    rx_windows_written: Vec<std::ops::Range<u64>>,
}

impl<M: GuestMemory> Rtl8139<M> {
    pub fn new(
        mem: M,
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        irq: Arc<dyn IrqLevel>,
        gsi: u8,
    ) -> Self {
        let mut config = PciConfig::new(VENDOR, DEVICE, CLASS_NETWORK, SUBCLASS_ETHERNET, 0x00);
        config.set_revision(REVISION);
        config.set_subsystem(SUBSYSTEM_VENDOR, SUBSYSTEM_ID);
        config.set_interrupt(1, gsi);
        // 256 bytes is a valid size for both kinds, so these cannot fail.
        let _ = config.add_io_bar(BAR_IO, REGS_SIZE);
        let _ = config.add_mem32_bar(BAR_MMIO, REGS_SIZE, false);
        let eeprom = Eeprom::new(mac, [VENDOR, DEVICE, SUBSYSTEM_VENDOR, SUBSYSTEM_ID]);
        let mut dev = Self {
            config,
            mem,
            irq,
            irq_level: false,
            clock: Instant::now,
            backend,
            idr: eeprom.mac(),
            eeprom,
            link_up: true,
            mar: [0; 8],
            tsd: [Tsd::OWN.bits(); TX_SLOTS],
            tsad: [0; TX_SLOTS],
            rbstart: 0,
            cmd: Cmd::empty(),
            rx_read: 0,
            rx_write: 0,
            imr: Intr::empty(),
            isr: Intr::empty(),
            tcr: 0,
            rcr: Rcr::empty(),
            tctr_base: Instant::now(),
            mpc: 0,
            eem: EEM_NORMAL,
            ee_pins: 0,
            config1: CONFIG1_DEFAULT,
            config3: CONFIG3_DEFAULT,
            config4: 0,
            config5: 0,
            timer_int: 0,
            mulint: 0,
            bmcr: BMCR_ANE,
            anar: ANAR_DEFAULT,
            cscr: CSCR_DEFAULT,
            para78: 0,
            para7c: 0,
            counters: Counters::default(),
            tx: tx::TxState::default(),
            rx: rx::RxState::default(),
            wake: None,
            backend_idle: true,
            #[cfg(any(test, feature = "fuzzing"))]
            rx_windows_written: Vec::new(),
        };
        dev.reset();
        dev
    }

    /// CR.RST, as the datasheet has it: transmitter and receiver off, TX slots back to the
    /// host and to slot 0, the RX ring empty at offset 0, interrupts cleared and masked. IDR,
    /// MAR, the buffer addresses and RCR keep their values (as in QEMU, which also clears TCR
    /// but for its version bits). A frame held back for the ring is dropped (counted).
    pub fn reset(&mut self) {
        self.cmd = Cmd::empty();
        self.isr = Intr::empty();
        self.imr = Intr::empty();
        self.tsd = [Tsd::OWN.bits(); TX_SLOTS];
        self.tx = tx::TxState::default();
        self.rx_read = 0;
        self.rx_write = 0;
        self.tcr = 0;
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
        Counters {
            eeprom_refused_writes: self.eeprom.refused_writes,
            ..self.counters
        }
    }

    pub fn backend(&self) -> &dyn NetBackend {
        &*self.backend
    }

    pub fn mac(&self) -> [u8; 6] {
        self.idr
    }

    pub fn eeprom(&self) -> &Eeprom {
        &self.eeprom
    }

    pub fn set_wake(&mut self, evt: EventFd) {
        self.wake = Some(evt);
    }

    fn wake_thread(&self) {
        if let Some(evt) = &self.wake {
            let _ = evt.write(1);
        }
    }

    /// Give the backend its time (timers); how long until it wants it again.
    pub fn backend_poll(&mut self) -> Option<std::time::Duration> {
        let wait = self.backend.poll();
        self.backend_idle = wait.is_none();
        wait
    }

    /// Frames moved on a vCPU thread (a TSD write's transmit, a CAPR write's deliveries). A
    /// backend whose last `poll` wanted no deadline may have one now (the peer's TCP arms its
    /// retransmit timer as it sends), while the backend thread sleeps without a timeout: poll
    /// it, and wake the thread to take the deadline.
    fn frames_moved(&mut self) {
        if self.backend_idle && self.backend_poll().is_some() {
            self.wake_thread();
        }
    }

    /// Link up or down (the cable): MSR.LINKB, BMSR's link bit, and a LinkChg interrupt.
    pub fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.raise(Intr::LINK_CHG);
        }
    }

    pub fn irq_level(&self) -> bool {
        self.irq_level
    }

    #[cfg(test)]
    fn set_clock(&mut self, clock: fn() -> Instant) {
        self.clock = clock;
        self.tctr_base = clock();
    }

    fn bus_master(&self) -> bool {
        self.config.command() & CMD_BUS_MASTER != 0
    }

    fn raise(&mut self, causes: Intr) {
        self.isr |= causes;
        self.update_irq();
    }

    fn update_irq(&mut self) {
        let level = self.isr.intersects(self.imr);
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// The RX ring's size without its slack: 8, 16, 32 or 64 KiB (RCR.RBLEN).
    pub fn rx_ring_size(&self) -> u32 {
        8192 << ((self.rcr.bits() >> RCR_RBLEN_SHIFT) & 3)
    }

    /// CR.BUFE: nothing unread between CAPR and CBR.
    fn rx_empty(&self) -> bool {
        self.rx_read == self.rx_write
    }

    fn tsd_summary(&self) -> u16 {
        let mut v = 0u16;
        for (i, &t) in self.tsd.iter().enumerate() {
            let t = Tsd::from_bits_retain(t);
            v |= u16::from(t.contains(Tsd::OWN)) << i;
            v |= u16::from(t.contains(Tsd::TABT)) << (4 + i);
            v |= u16::from(t.contains(Tsd::TUN)) << (8 + i);
            v |= u16::from(t.contains(Tsd::TOK)) << (12 + i);
        }
        v
    }

    /// The whole register that starts at `start` (see [`regs::span`]), without side effects.
    fn reg_value(&self, start: u8) -> u32 {
        let slot = |base: u8| usize::from((start - base) / 4);
        match start {
            0x00..=0x05 => self.idr[usize::from(start)].into(),
            0x08..=0x0f => self.mar[usize::from(start - MAR0)].into(),
            0x10..=0x1f => self.tsd[slot(TSD0)],
            0x20..=0x2f => self.tsad[slot(TSAD0)],
            RBSTART => self.rbstart,
            CR => {
                let mut c = self.cmd;
                if self.rx_empty() {
                    c |= Cmd::BUFE;
                }
                c.bits().into()
            }
            // The driver writes CAPR 16 below where it has read to (8139too's `cur_rx - 16`).
            CAPR => self.rx_read.wrapping_sub(16) & 0xffff,
            CBR => self.rx_write & 0xffff,
            IMR => self.imr.bits().into(),
            ISR => self.isr.bits().into(),
            TCR => self.tcr | TCR_HWVERID,
            RCR => self.rcr.bits(),
            TCTR => {
                let ticks = (self.clock)()
                    .saturating_duration_since(self.tctr_base)
                    .as_nanos()
                    * TCTR_HZ
                    / 1_000_000_000;
                ticks as u32
            }
            MPC => self.mpc,
            CR9346 => {
                let mut v = self.eem << EEM_SHIFT;
                if self.eem == EEM_PROGRAM {
                    v |= self.ee_pins & (EE_CS | EE_SK | EE_DI);
                    if self.eeprom.data_out() {
                        v |= EE_DO;
                    }
                }
                v.into()
            }
            CONFIG1 => self.config1.into(),
            CONFIG3 => self.config3.into(),
            CONFIG4 => self.config4.into(),
            CONFIG5 => self.config5.into(),
            TIMER_INT => self.timer_int,
            MSR => {
                let mut v = MSR_BASE;
                if !self.link_up {
                    v |= MSR_LINKB;
                }
                v.into()
            }
            MULINT => self.mulint.into(),
            TSAD_SUMMARY => self.tsd_summary().into(),
            BMCR => self.bmcr.into(),
            BMSR => (BMSR_BASE | if self.link_up { BMSR_LINK } else { 0 }).into(),
            ANAR => self.anar.into(),
            ANLPAR => (if self.link_up { ANAR_DEFAULT } else { 0 }).into(),
            ANER => ANER_DEFAULT.into(),
            CSCR => self.cscr.into(),
            PARA78 => self.para78,
            PARA7C => self.para7c,
            // CONFIG0 (no boot ROM), ERBCR/ERSR (no early RX), C+ registers.
            _ => 0,
        }
    }

    /// A register access of `data.len()` bytes at `off` in either BAR.
    pub fn reg_read(&mut self, off: u64, data: &mut [u8]) {
        if !matches!(data.len(), 1 | 2 | 4) {
            self.counters.bad_access_width += 1;
            data.fill(0);
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = off
                .checked_add(i as u64)
                .filter(|&o| o < REGS_SIZE)
                .and_then(|o| span(o as u8).map(|(start, _)| (o as u8, start)))
                .map_or(0, |(o, start)| {
                    (self.reg_value(start) >> (8 * (o - start))) as u8
                });
        }
    }

    pub fn reg_write(&mut self, off: u64, data: &[u8]) {
        if !matches!(data.len(), 1 | 2 | 4) {
            self.counters.bad_access_width += 1;
            return;
        }
        if off >= REGS_SIZE {
            return;
        }
        let off8 = off as u8;
        let len = data.len() as u8;
        match span(off8) {
            Some((start, width))
                if u16::from(off8) + u16::from(len) <= u16::from(start + width) =>
            {
                let shift = 8 * u32::from(off8 - start);
                let mask = (u64::MAX >> (64 - 8 * u32::from(len))) << shift;
                self.write_part(start, (le_value(data) << shift) as u32, mask as u32);
            }
            // Across registers (or from a hole into one): byte by byte.
            _ if data.len() > 1 => {
                for (i, b) in data.iter().enumerate() {
                    if let Some(o) = off.checked_add(i as u64) {
                        self.reg_write(o, std::slice::from_ref(b));
                    }
                }
            }
            _ => {}
        }
        self.update_irq();
    }

    /// Write the bytes `mask` selects of the register at `start`.
    fn write_part(&mut self, start: u8, value: u32, mask: u32) {
        if start == ISR {
            // Write 1 to clear, only in the bytes written.
            self.isr = self
                .isr
                .difference(Intr::from_bits_truncate((value & mask) as u16));
            return;
        }
        let merged = (self.reg_value(start) & !mask) | (value & mask);
        self.write_reg(start, merged);
    }

    /// A write of the whole register at `start`.
    fn write_reg(&mut self, start: u8, v: u32) {
        match start {
            0x00..=0x05 => self.idr[usize::from(start)] = v as u8,
            0x08..=0x0f => self.mar[usize::from(start - MAR0)] = v as u8,
            0x10..=0x1f => {
                let slot = usize::from((start - TSD0) / 4);
                // A write clears the status bits; the driver clears OWN to start the slot.
                self.tsd[slot] = v & TSD_WRITABLE;
                if v & Tsd::OWN.bits() == 0 {
                    self.tx_kick();
                }
            }
            0x20..=0x2f => self.tsad[usize::from((start - TSAD0) / 4)] = v,
            RBSTART => self.rbstart = v,
            CR => {
                let c = Cmd::from_bits_truncate(v as u8);
                if c.contains(Cmd::RST) {
                    self.reset();
                    return;
                }
                self.cmd = c & (Cmd::RE | Cmd::TE);
                self.tx_kick();
                self.rx_kick();
            }
            CAPR => {
                self.rx_read = (v + 16) % self.rx_ring_size();
                self.rx_kick();
            }
            IMR => self.imr = Intr::from_bits_truncate(v as u16),
            TCR => self.tcr = v & !(TCR_HWVERID_MASK | TCR_CLRABT),
            RCR => {
                self.rcr = Rcr::from_bits_retain(v & !RCR_READ_ONLY);
                // A smaller ring keeps the pointers that still fit; others start again at 0.
                let size = self.rx_ring_size();
                if self.rx_read >= size || self.rx_write >= size {
                    self.rx_read = 0;
                    self.rx_write = 0;
                }
                self.rx_kick();
            }
            TCTR => self.tctr_base = (self.clock)(),
            MPC => self.mpc = 0,
            CR9346 => self.write_9346cr(v as u8),
            CONFIG1 if self.eem == EEM_CONFIG_WRITE => {
                self.config1 = (v as u8 & !CONFIG1_READ_ONLY) | CONFIG1_DEFAULT
            }
            CONFIG3 if self.eem == EEM_CONFIG_WRITE => {
                self.config3 = (v as u8 & !CONFIG3_READ_ONLY) | CONFIG3_DEFAULT
            }
            CONFIG4 if self.eem == EEM_CONFIG_WRITE => self.config4 = v as u8,
            CONFIG5 if self.eem == EEM_CONFIG_WRITE => self.config5 = v as u8,
            TIMER_INT => self.timer_int = v,
            MULINT => self.mulint = v as u16 & 0x0fff,
            BMCR => {
                if v as u16 & BMCR_RESET != 0 {
                    self.bmcr = BMCR_ANE;
                    self.anar = ANAR_DEFAULT;
                } else {
                    self.bmcr = v as u16 & !(BMCR_RESET | BMCR_RESTART_AN);
                }
            }
            ANAR => self.anar = v as u16,
            CSCR => self.cscr = v as u16,
            PARA78 => self.para78 = v,
            PARA7C => self.para7c = v,
            s if is_cplus(s) => self.counters.cplus_writes += 1,
            // Read-only or not modelled: CBR, ISR's own path, CONFIG0, MSR, TSAD, BMSR,
            // ANLPAR, ANER, ERBCR, ERSR, the CONFIG registers outside config-write mode.
            _ => {}
        }
    }

    /// 9346CR: programming mode drives the EEPROM's pins; auto-load reloads IDR from the
    /// EEPROM (at once, then back to normal mode); config-write unlocks the CONFIG registers.
    fn write_9346cr(&mut self, v: u8) {
        let mode = v >> EEM_SHIFT;
        match mode {
            EEM_PROGRAM => {
                self.eem = mode;
                self.ee_pins = v & (EE_CS | EE_SK | EE_DI);
                self.eeprom
                    .set_pins(v & EE_CS != 0, v & EE_SK != 0, v & EE_DI != 0);
            }
            EEM_AUTOLOAD => {
                self.eeprom.deselect();
                self.idr = self.eeprom.mac();
                self.eem = EEM_NORMAL;
                self.ee_pins = 0;
            }
            _ => {
                self.eeprom.deselect();
                self.eem = mode;
                self.ee_pins = 0;
            }
        }
    }

    fn tx_kick(&mut self) {
        if self.tx_process() {
            self.frames_moved();
            // A synchronous backend (the in-process peer) has its replies ready now.
            self.rx_kick();
        }
    }

    /// A receive pass for a write that may have made room; if a frame was held and now is
    /// not, wake the backend thread (it stopped watching the backend).
    fn rx_kick(&mut self) {
        let was_blocked = self.rx.blocked;
        let delivered_before = self.counters.rx_frames;
        self.rx_pass();
        if was_blocked && !self.rx.blocked {
            self.wake_thread();
        } else if self.counters.rx_frames != delivered_before {
            self.frames_moved();
        }
    }

    fn decodes(&self, bit: u16) -> bool {
        self.config.command() & bit != 0
    }

    /// BAR0 (I/O ports).
    pub fn io_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.decodes(CMD_IO) {
            data.fill(0xff);
            return;
        }
        self.reg_read(offset, data);
    }

    pub fn io_write(&mut self, offset: u64, data: &[u8]) {
        if self.decodes(CMD_IO) {
            self.reg_write(offset, data);
        }
    }

    /// BAR1 (MMIO): the same registers.
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        if !self.decodes(CMD_MEM) {
            data.fill(0xff);
            return;
        }
        self.reg_read(offset, data);
    }

    pub fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        if self.decodes(CMD_MEM) {
            self.reg_write(offset, data);
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

pub type SharedRtl8139<M> = Arc<Mutex<Rtl8139<M>>>;

/// The configuration-space face.
pub struct Rtl8139Function<M>(pub SharedRtl8139<M>);

impl<M: GuestMemory + Send> PciFunction for Rtl8139Function<M> {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).config_read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).config_write(offset, data)
    }
}

/// BAR0 on the port bus.
pub struct Rtl8139Io<M>(pub SharedRtl8139<M>);

impl<M: GuestMemory + Send> BusDevice for Rtl8139Io<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).io_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).io_write(offset, data)
    }
}

/// BAR1 on the MMIO bus.
pub struct Rtl8139Mmio<M>(pub SharedRtl8139<M>);

impl<M: GuestMemory + Send> BusDevice for Rtl8139Mmio<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.0).mmio_read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).mmio_write(offset, data)
    }
}
