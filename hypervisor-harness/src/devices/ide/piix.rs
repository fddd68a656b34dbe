//! The PIIX3 IDE function (8086:7010, class 01/01, prog-if 0x80): two ATA channels on the
//! legacy ports (0x1F0-0x1F7 + 0x3F6 on IRQ 14, 0x170-0x177 + 0x376 on IRQ 15) and the
//! bus-master DMA registers in BAR4 (16 bytes of I/O: primary at +0, secondary at +8).
//!
//! Firmware state is preset: I/O decode and bus master enabled in the command register, BAR4
//! assigned, and the IDE decode enable bit (bit 15) set in both IDETIM registers (0x40, 0x42).
//! Clearing I/O decode or a channel's decode enable makes its legacy ports float (0xFF, writes
//! ignored); clearing bus master makes DMA fail with the bus-master error bit. The guest may
//! rewrite BAR4, but the registers stay where the harness put them.

use super::ata::{AtaChannel, DeviceControl, DmaStatus, Drive, TaskfileReg};
use super::bmdma::{BmDma, BmEvent, DmaOutcome, CHANNEL_BLOCK_LEN};
use crate::backends::disk::{DiskBackend, IDE_POSITIONS};
use crate::devices::bus::BusDevice;
use crate::devices::pci::config::{PciConfig, CMD_BUS_MASTER, CMD_IO};
use crate::devices::pci::PciFunction;
use crate::devices::{lock, Interrupt};
use std::sync::{Arc, Mutex};
use vm_memory::GuestMemory;

pub const VENDOR: u16 = 0x8086;
pub const DEVICE: u16 = 0x7010;
/// Class code: mass storage, IDE, bus-master capable (legacy-mode channels).
const CLASS: u8 = 0x01;
const SUBCLASS: u8 = 0x01;
const PROG_IF: u8 = 0x80;
pub const BAR4: usize = 4;
/// One bus-master block per channel.
pub const BAR4_SIZE: u64 = 2 * CHANNEL_BLOCK_LEN;

pub const PRIMARY_CMD: u64 = 0x1f0;
pub const PRIMARY_CTL: u64 = 0x3f6;
pub const SECONDARY_CMD: u64 = 0x170;
pub const SECONDARY_CTL: u64 = 0x376;
pub const CMD_LEN: u64 = TaskfileReg::ALL.len() as u64;
pub const CTL_LEN: u64 = 1;
pub const PRIMARY_GSI: u32 = 14;
pub const SECONDARY_GSI: u32 = 15;

/// Two drives on each of the two channels: the positions of `--disk ide:...,index=N`.
pub const MAX_DRIVES: usize = IDE_POSITIONS;

/// Device-specific config registers kept by the model: IDETIM (0x40, 0x42), SIDETIM (0x44),
/// UDMACTL (0x48), UDMATIM (0x4A).
const TIMING_BASE: u64 = 0x40;
const TIMING_LEN: u64 = 0x0c;
/// IDETIM bit 15: IDE decode enable.
const IDETIM_DECODE: u16 = 0x8000;

struct Channel {
    ata: AtaChannel,
    bm: BmDma,
}

pub struct PiixIde<M> {
    config: PciConfig,
    timing: [u8; TIMING_LEN as usize],
    channels: [Channel; 2],
    mem: M,
}

impl<M: GuestMemory> PiixIde<M> {
    /// `disks` by position: primary master, primary slave, secondary master, secondary slave
    /// (any may be absent, as QEMU's `-drive if=ide,index=N`); `irqs` for the primary and
    /// secondary channel.
    pub fn new(
        mem: M,
        disks: [Option<Box<dyn DiskBackend>>; MAX_DRIVES],
        irqs: [Arc<dyn Interrupt>; 2],
    ) -> Result<Self, String> {
        let mut it = disks
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.map(|d| Drive::new(d, i)));
        let [irq0, irq1] = irqs;
        let mut channels = [irq0, irq1].map(|irq| {
            let master = it.next().flatten();
            let slave = it.next().flatten();
            Channel {
                ata: AtaChannel::new(master, slave, irq),
                bm: BmDma::new(),
            }
        });
        for c in &mut channels {
            let (d0, d1) = (c.ata.drive(0).is_some(), c.ata.drive(1).is_some());
            c.bm.set_drive_capable(d0, d1);
        }
        let mut config = PciConfig::new(VENDOR, DEVICE, CLASS, SUBCLASS, PROG_IF);
        config
            .add_io_bar(BAR4, BAR4_SIZE)
            .map_err(|e| e.to_string())?;
        config.enable(CMD_IO | CMD_BUS_MASTER);
        let mut timing = [0u8; TIMING_LEN as usize];
        timing[0..2].copy_from_slice(&IDETIM_DECODE.to_le_bytes());
        timing[2..4].copy_from_slice(&IDETIM_DECODE.to_le_bytes());
        Ok(Self {
            config,
            timing,
            channels,
            mem,
        })
    }

    pub fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    fn legacy_decode(&self, ch: usize) -> bool {
        let idetim = u16::from_le_bytes([self.timing[2 * ch], self.timing[2 * ch + 1]]);
        self.config.command() & CMD_IO != 0 && idetim & IDETIM_DECODE != 0
    }

    /// After any access: latch INTRQ edges into the bus-master status, run a DMA transfer that
    /// has both its command and its engine.
    fn settle(&mut self, ch: usize) {
        let bus_master = self.config.command() & CMD_BUS_MASTER != 0;
        let Self { channels, mem, .. } = self;
        let c = &mut channels[ch];
        if c.ata.take_irq_latch() {
            c.bm.set_interrupt();
        }
        if !c.bm.is_active() {
            return;
        }
        let Some((drive, req)) = c.ata.dma_request() else {
            return;
        };
        let outcome = match c.ata.drive(drive) {
            Some(d) => c.bm.transfer(&*mem, d.disk(), &req, bus_master),
            None => DmaOutcome::DiskError,
        };
        c.ata.dma_done(match outcome {
            DmaOutcome::Done { .. } => DmaStatus::Ok,
            DmaOutcome::PrdTooShort | DmaOutcome::MemoryFault => DmaStatus::Aborted,
            DmaOutcome::DiskError => DmaStatus::MediaError,
        });
        if c.ata.take_irq_latch() {
            c.bm.set_interrupt();
        }
    }

    /// Command block of channel `ch` (offset 0..8).
    pub fn cmd_read(&mut self, ch: usize, offset: u64, data: &mut [u8]) {
        let reg = TaskfileReg::at(offset);
        let Some(reg) = reg.filter(|_| ch <= 1 && self.legacy_decode(ch)) else {
            data.fill(0xff);
            return;
        };
        self.channels[ch].ata.read_reg(reg, data);
        self.settle(ch);
    }

    pub fn cmd_write(&mut self, ch: usize, offset: u64, data: &[u8]) {
        let reg = TaskfileReg::at(offset);
        let Some(reg) = reg.filter(|_| ch <= 1 && self.legacy_decode(ch)) else {
            return;
        };
        self.channels[ch].ata.write_reg(reg, data);
        self.settle(ch);
    }

    /// Control block of channel `ch`: alternate status / device control.
    pub fn ctl_read(&mut self, ch: usize, offset: u64, data: &mut [u8]) {
        if ch > 1 || offset != 0 || !self.legacy_decode(ch) {
            data.fill(0xff);
            return;
        }
        data.fill(self.channels[ch].ata.alt_status().bits());
    }

    pub fn ctl_write(&mut self, ch: usize, offset: u64, data: &[u8]) {
        if ch > 1 || offset != 0 || !self.legacy_decode(ch) {
            return;
        }
        if let Some(&v) = data.first() {
            self.channels[ch]
                .ata
                .write_control(DeviceControl::from_bits_retain(v));
            self.settle(ch);
        }
    }

    /// BAR4: bus-master registers, primary at +0, secondary at +8.
    pub fn bm_read(&mut self, offset: u64, data: &mut [u8]) {
        let decode = self.config.command() & CMD_IO != 0;
        for (i, b) in data.iter_mut().enumerate() {
            *b = 0xff;
            match offset.checked_add(i as u64) {
                Some(o) if o < BAR4_SIZE && decode => {
                    self.channels[(o / CHANNEL_BLOCK_LEN) as usize]
                        .bm
                        .read(o % CHANNEL_BLOCK_LEN, std::slice::from_mut(b));
                }
                _ => {}
            }
        }
    }

    pub fn bm_write(&mut self, offset: u64, data: &[u8]) {
        if self.config.command() & CMD_IO == 0 {
            return;
        }
        let mut started = [false; 2];
        for (i, &v) in data.iter().enumerate() {
            match offset.checked_add(i as u64) {
                Some(o) if o < BAR4_SIZE => {
                    let ch = (o / CHANNEL_BLOCK_LEN) as usize;
                    let reg = o % CHANNEL_BLOCK_LEN;
                    if self.channels[ch].bm.write(reg, &[v]) == BmEvent::Started {
                        started[ch] = true;
                    }
                }
                _ => {}
            }
        }
        for (ch, s) in started.into_iter().enumerate() {
            if s {
                self.settle(ch);
            }
        }
    }

    pub fn config_read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            if (TIMING_BASE..TIMING_BASE + TIMING_LEN).contains(&o) {
                *b = self.timing[(o - TIMING_BASE) as usize];
            } else {
                self.config.read(o, std::slice::from_mut(b));
            }
        }
    }

    pub fn config_write(&mut self, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let o = offset.saturating_add(i as u64);
            if (TIMING_BASE..TIMING_BASE + TIMING_LEN).contains(&o) {
                self.timing[(o - TIMING_BASE) as usize] = v;
            } else {
                self.config.write(o, &[v]);
            }
        }
    }
}

/// Which of the controller's port ranges a bus region is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Command(usize),
    Control(usize),
    BusMaster,
}

/// One bus region of the shared controller.
pub struct IdePort<M> {
    ide: Arc<Mutex<PiixIde<M>>>,
    port: Port,
}

impl<M> IdePort<M> {
    pub fn new(ide: Arc<Mutex<PiixIde<M>>>, port: Port) -> Self {
        Self { ide, port }
    }
}

impl<M: GuestMemory + Send> BusDevice for IdePort<M> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut ide = lock(&self.ide);
        match self.port {
            Port::Command(ch) => ide.cmd_read(ch, offset, data),
            Port::Control(ch) => ide.ctl_read(ch, offset, data),
            Port::BusMaster => ide.bm_read(offset, data),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut ide = lock(&self.ide);
        match self.port {
            Port::Command(ch) => ide.cmd_write(ch, offset, data),
            Port::Control(ch) => ide.ctl_write(ch, offset, data),
            Port::BusMaster => ide.bm_write(offset, data),
        }
    }
}

/// The controller's PCI configuration space.
pub struct PiixFunction<M> {
    ide: Arc<Mutex<PiixIde<M>>>,
}

impl<M> PiixFunction<M> {
    pub fn new(ide: Arc<Mutex<PiixIde<M>>>) -> Self {
        Self { ide }
    }
}

impl<M: GuestMemory + Send> PciFunction for PiixFunction<M> {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.ide).config_read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.ide).config_write(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::super::ata::tests::{pattern, TempImage};
    use super::super::ata::*;
    use super::super::bmdma::{BmCommand, BmStatus, PrdEntry};
    use super::*;
    use crate::devices::test_util::CountingIrq;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    type Mem = GuestMemoryMmap<()>;
    const RAM: u64 = 2 << 20;
    /// The engine's state bits of the bus-master status.
    const ENGINE: BmStatus = BmStatus::ACTIVE
        .union(BmStatus::ERROR)
        .union(BmStatus::INTERRUPT);
    const DMA_CAPABLE: BmStatus = BmStatus::DRIVE0_DMA.union(BmStatus::DRIVE1_DMA);
    const READ_START: u8 = BmCommand::WRITE_TO_MEMORY.union(BmCommand::START).bits();
    const WRITE_START: u8 = BmCommand::START.bits();
    const READ_STOP: u8 = BmCommand::WRITE_TO_MEMORY.bits();
    const ACK: u8 = BmStatus::ERROR.union(BmStatus::INTERRUPT).bits();

    struct Rig {
        ide: PiixIde<Mem>,
        mem: Mem,
        irqs: [Arc<CountingIrq>; 2],
        _imgs: Vec<TempImage>,
    }

    fn rig(n: usize, sectors: u64) -> (Rig, Vec<std::path::PathBuf>) {
        let positions: Vec<usize> = (0..n).collect();
        rig_at(&positions, sectors)
    }

    /// Disks at the given positions (0 primary master .. 3 secondary slave); the paths are
    /// returned in the same order.
    fn rig_at(positions: &[usize], sectors: u64) -> (Rig, Vec<std::path::PathBuf>) {
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let imgs: Vec<TempImage> = positions.iter().map(|_| TempImage::new(sectors)).collect();
        let paths = imgs.iter().map(|i| i.path().to_path_buf()).collect();
        let irqs = [
            Arc::new(CountingIrq::default()),
            Arc::new(CountingIrq::default()),
        ];
        let mut disks: [Option<Box<dyn DiskBackend>>; MAX_DRIVES] = Default::default();
        for (&pos, img) in positions.iter().zip(&imgs) {
            disks[pos] = Some(Box::new(img.open(false)));
        }
        let ide = PiixIde::new(mem.clone(), disks, [irqs[0].clone(), irqs[1].clone()]).unwrap();
        (
            Rig {
                ide,
                mem,
                irqs,
                _imgs: imgs,
            },
            paths,
        )
    }

    impl Rig {
        fn w(&mut self, ch: usize, reg: TaskfileReg, v: u8) {
            self.ide.cmd_write(ch, reg as u64, &[v]);
        }
        fn r(&mut self, ch: usize, reg: TaskfileReg) -> u8 {
            let mut b = [0u8];
            self.ide.cmd_read(ch, reg as u64, &mut b);
            b[0]
        }
        fn status(&mut self, ch: usize) -> Status {
            Status::from_bits_retain(self.r(ch, TaskfileReg::StatusCommand))
        }
        fn error(&mut self, ch: usize) -> ErrorReg {
            ErrorReg::from_bits_retain(self.r(ch, TaskfileReg::ErrorFeature))
        }
        fn bm_status(&mut self, ch: usize) -> BmStatus {
            let mut b = [0u8];
            self.ide.bm_read(8 * ch as u64 + 2, &mut b);
            BmStatus::from_bits_retain(b[0])
        }
        fn dma_cmd(&mut self, ch: usize, dev: u8, lba: u32, count: u8, cmd: u8) {
            self.w(ch, TaskfileReg::Count, count);
            self.w(ch, TaskfileReg::LbaLow, lba as u8);
            self.w(ch, TaskfileReg::LbaMid, (lba >> 8) as u8);
            self.w(ch, TaskfileReg::LbaHigh, (lba >> 16) as u8);
            self.w(ch, TaskfileReg::Device, dev);
            self.w(ch, TaskfileReg::StatusCommand, cmd);
        }
        fn prd(&self, table: u64, entries: &[(u32, u16, bool)]) {
            for (i, &(a, c, eot)) in entries.iter().enumerate() {
                self.mem
                    .write_obj(PrdEntry::new(a, c, eot), GuestAddress(table + 8 * i as u64))
                    .unwrap();
            }
        }
    }

    fn cfg32(ide: &PiixIde<Mem>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        ide.config_read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_space() {
        let (mut rig, _) = rig(1, 8);
        rig.ide.config_mut().set_bar_address(BAR4, 0xc040).unwrap();
        let ide = &mut rig.ide;
        assert_eq!(cfg32(ide, 0), 0x7010_8086);
        assert_eq!(cfg32(ide, 8) >> 8, 0x01_01_80);
        assert_eq!(cfg32(ide, 4) & 0x7, 0x5, "I/O + bus master");
        assert_eq!(cfg32(ide, 0x20), 0xc041);
        for bar in 0..4 {
            assert_eq!(cfg32(ide, 0x10 + 4 * bar), 0);
        }
        assert_eq!(cfg32(ide, 0x40), 0x8000_8000);
        // BAR4 sizing.
        ide.config_write(0x20, &0xffff_ffffu32.to_le_bytes());
        assert_eq!(cfg32(ide, 0x20), 0xffff_fff1);
        ide.config_write(0x20, &0xc040u32.to_le_bytes());
        // Turning off the primary decode floats its ports.
        ide.config_write(0x41, &[0x00]);
        let mut b = [0u8];
        ide.cmd_read(0, 7, &mut b);
        assert_eq!(b[0], 0xff);
        ide.config_write(0x41, &[0x80]);
        ide.cmd_read(0, 7, &mut b);
        assert_eq!(b[0], (Status::DRDY | Status::DSC).bits());
        // Odd config accesses.
        let mut big = [0u8; 8];
        ide.config_read(0xfe, &mut big);
        ide.config_write(u64::MAX, &[1, 2]);
    }

    impl Rig {
        fn alt(&mut self, ch: usize) -> u8 {
            let mut b = [0u8];
            self.ide.ctl_read(ch, 0, &mut b);
            b[0]
        }
        fn reset(&mut self, ch: usize) {
            self.ide.ctl_write(ch, 0, &[DeviceControl::SRST.bits()]);
            self.ide.ctl_write(ch, 0, &[0]);
        }
        /// IDENTIFY DEVICE on the selected drive: the 256 words, or None if no DRQ came.
        fn identify(&mut self, ch: usize) -> Option<Vec<u16>> {
            self.w(ch, TaskfileReg::StatusCommand, CMD_IDENTIFY);
            if !self.status(ch).contains(Status::DRQ) {
                return None;
            }
            let words = (0..256)
                .map(|_| {
                    let mut b = [0u8; 2];
                    self.ide.cmd_read(ch, 0, &mut b);
                    u16::from_le_bytes(b)
                })
                .collect();
            Some(words)
        }
        fn pio_read_one(&mut self, ch: usize, dev: u8, lba: u32) -> Vec<u8> {
            self.dma_cmd(ch, dev, lba, 1, CMD_READ_SECTORS);
            assert_eq!(self.status(ch), Status::DRDY | Status::DSC | Status::DRQ);
            let mut out = vec![0u8; 512];
            for pair in out.chunks_mut(2) {
                self.ide.cmd_read(ch, 0, pair);
            }
            assert_eq!(self.status(ch), Status::DRDY | Status::DSC);
            out
        }
    }

    /// A slave without a master (`index=1` alone): as the ATA standard has it for a "device 1
    /// only" channel, device 0's status and alternate status read 0 and commands to it are not
    /// executed, while the shared taskfile registers read back; device 1 works normally.
    #[test]
    fn slave_only_channel() {
        let (mut rig, _) = rig_at(&[1], 64);
        rig.reset(0);
        assert_eq!(
            rig.r(0, TaskfileReg::Device) & DeviceReg::DEV.bits(),
            0,
            "device 0 selected after reset"
        );
        assert_eq!(rig.status(0), Status::empty());
        assert_eq!(rig.alt(0), 0);
        assert_eq!(rig.identify(0), None, "IDENTIFY to the absent master");
        assert_eq!(rig.irqs[0].count(), 0, "no interrupt for an absent master");
        assert_eq!(rig.status(0), Status::empty());
        rig.w(0, TaskfileReg::LbaMid, 0x5a);
        assert_eq!(
            rig.r(0, TaskfileReg::LbaMid),
            0x5a,
            "the taskfile is the slave's"
        );
        // The slave: identify, PIO, DMA, all on IRQ 14.
        rig.w(0, TaskfileReg::Device, 0xb0);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
        let words = rig.identify(0).expect("slave IDENTIFY");
        assert_eq!(words[0], 0x0040);
        assert_eq!(u32::from(words[60]) | u32::from(words[61]) << 16, 64);
        assert_eq!(rig.irqs[0].count(), 1);
        let got = rig.pio_read_one(0, 0xf0, 5);
        assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(5, i)));
        assert_eq!(
            rig.bm_status(0) & DMA_CAPABLE,
            BmStatus::DRIVE1_DMA,
            "only drive 1 is DMA capable"
        );
        rig.prd(0x1000, &[(0x10000, 512, true)]);
        rig.ide.bm_write(4, &0x1000u32.to_le_bytes());
        rig.dma_cmd(0, 0xf0, 7, 1, CMD_READ_DMA);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(rig.bm_status(0) & ENGINE, BmStatus::INTERRUPT);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
        let mut got = vec![0u8; 512];
        rig.mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(7, i)));
        assert_eq!(rig.irqs[1].count(), 0);
        // Selecting the master again: status 0 while the slave keeps its state.
        rig.w(0, TaskfileReg::Device, 0xa0);
        assert_eq!(rig.status(0), Status::empty());
        // The secondary channel has no drive at all: every register reads 0, data 0xff.
        for &reg in &TaskfileReg::ALL[1..] {
            assert_eq!(rig.r(1, reg), 0, "secondary register {reg:?}");
        }
    }

    /// Only the secondary channel has disks: 0x170/0x376, IRQ 15 and BAR4 + 8 serve them; the
    /// primary channel answers as an empty one.
    #[test]
    fn secondary_channel_only() {
        let (mut rig, paths) = rig_at(&[2, 3], 64);
        for &reg in &TaskfileReg::ALL[1..] {
            assert_eq!(rig.r(0, reg), 0, "primary register {reg:?}");
        }
        assert_eq!(rig.bm_status(0) & DMA_CAPABLE, BmStatus::empty());
        assert_eq!(rig.bm_status(1) & DMA_CAPABLE, DMA_CAPABLE);
        rig.reset(1);
        for dev in [0xa0, 0xb0] {
            rig.w(1, TaskfileReg::Device, dev);
            assert_eq!(rig.status(1), Status::DRDY | Status::DSC, "{dev:#x}");
            assert!(rig.identify(1).is_some(), "{dev:#x}");
        }
        assert_eq!(rig.irqs[1].count(), 2);
        // The two drives are two images: write the slave by DMA, read the master by PIO.
        let data = vec![0xc5u8; 512];
        rig.mem.write_slice(&data, GuestAddress(0x30000)).unwrap();
        rig.prd(0x2000, &[(0x30000, 512, true)]);
        rig.ide.bm_write(8 + 4, &0x2000u32.to_le_bytes());
        rig.dma_cmd(1, 0xf0, 3, 1, CMD_WRITE_DMA);
        rig.ide.bm_write(8, &[WRITE_START]);
        assert_eq!(rig.bm_status(1) & ENGINE, BmStatus::INTERRUPT);
        assert_eq!(rig.bm_status(0) & ENGINE, BmStatus::empty());
        assert_eq!(rig.status(1), Status::DRDY | Status::DSC);
        let got = rig.pio_read_one(1, 0xe0, 3);
        assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(3, i)));
        assert_eq!(rig.irqs[0].count(), 0, "nothing on IRQ 14");
        let slave = std::fs::read(&paths[1]).unwrap();
        assert_eq!(&slave[3 * 512..4 * 512], &data[..]);
        let master = std::fs::read(&paths[0]).unwrap();
        assert_eq!(master[3 * 512], pattern(3, 0));
    }

    #[test]
    fn drive_placement_and_empty_channel() {
        let (mut rig, _) = rig(3, 8);
        // Primary master and slave, secondary master; secondary slave absent.
        for (ch, dev, present) in [
            (0, 0xa0, true),
            (0, 0xb0, true),
            (1, 0xa0, true),
            (1, 0xb0, false),
        ] {
            rig.w(ch, TaskfileReg::Device, dev);
            let st = rig.status(ch);
            assert_eq!(!st.is_empty(), present, "channel {ch} device {dev:#x}");
        }
        assert_eq!(rig.bm_status(0) & DMA_CAPABLE, DMA_CAPABLE);
        assert_eq!(rig.bm_status(1) & DMA_CAPABLE, BmStatus::DRIVE0_DMA);
        let (mut one, _) = rig_one();
        assert_eq!(one.status(1), Status::empty());
        let mut b = [0u8];
        one.ide.ctl_read(1, 0, &mut b);
        assert_eq!(b[0], 0);
    }

    fn rig_one() -> (Rig, Vec<std::path::PathBuf>) {
        rig(1, 8)
    }

    #[test]
    fn read_dma_engine_started_after_command() {
        let (mut rig, _) = rig(2, 64);
        rig.prd(0x1000, &[(0x10000, 1024, false), (0x20000, 512, true)]);
        rig.ide.bm_write(4, &0x1000u32.to_le_bytes());
        // Slave, LBA 9, 3 sectors.
        rig.dma_cmd(0, 0xf0, 9, 3, CMD_READ_DMA);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC | Status::DRQ);
        assert_eq!(rig.irqs[0].count(), 0);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(rig.irqs[0].count(), 1);
        assert_eq!(rig.bm_status(0) & ENGINE, BmStatus::INTERRUPT);
        let mut alt = [0u8];
        rig.ide.ctl_read(0, 0, &mut alt);
        assert_eq!(alt[0], (Status::DRDY | Status::DSC).bits());
        let mut got = vec![0u8; 1536];
        rig.mem
            .read_slice(&mut got[..1024], GuestAddress(0x10000))
            .unwrap();
        rig.mem
            .read_slice(&mut got[1024..], GuestAddress(0x20000))
            .unwrap();
        for (i, b) in got.iter().enumerate() {
            assert_eq!(*b, pattern(9 + i as u64 / 512, i % 512), "byte {i}");
        }
        // Acknowledge: stop the engine, clear the interrupt bit.
        rig.ide.bm_write(0, &[READ_STOP]);
        rig.ide.bm_write(2, &[ACK | DMA_CAPABLE.bits()]);
        assert_eq!(rig.bm_status(0), DMA_CAPABLE);
        assert_eq!(rig.irqs[1].count(), 0);
    }

    #[test]
    fn write_dma_engine_started_first_lands_in_file() {
        let (mut rig, paths) = rig(3, 64);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
        rig.mem.write_slice(&data, GuestAddress(0x40000)).unwrap();
        rig.prd(0x3000, &[(0x40000, 1024, true)]);
        rig.ide.bm_write(8 + 4, &0x3000u32.to_le_bytes());
        rig.ide.bm_write(8, &[WRITE_START]);
        assert_eq!(rig.bm_status(1) & BmStatus::ACTIVE, BmStatus::ACTIVE);
        // Secondary master, LBA48 WRITE DMA EXT at 20, 2 sectors.
        rig.w(1, TaskfileReg::Count, 0);
        rig.w(1, TaskfileReg::LbaLow, 0);
        rig.w(1, TaskfileReg::LbaMid, 0);
        rig.w(1, TaskfileReg::LbaHigh, 0);
        rig.w(1, TaskfileReg::Count, 2);
        rig.w(1, TaskfileReg::LbaLow, 20);
        rig.w(1, TaskfileReg::LbaMid, 0);
        rig.w(1, TaskfileReg::LbaHigh, 0);
        rig.w(1, TaskfileReg::Device, 0x40);
        rig.w(1, TaskfileReg::StatusCommand, CMD_WRITE_DMA_EXT);
        assert_eq!(rig.irqs[1].count(), 1);
        assert_eq!(rig.irqs[0].count(), 0);
        assert_eq!(rig.bm_status(1) & ENGINE, BmStatus::INTERRUPT);
        assert_eq!(rig.status(1), Status::DRDY | Status::DSC);
        let file = std::fs::read(&paths[2]).unwrap();
        assert_eq!(&file[20 * 512..22 * 512], &data[..]);
        assert_eq!(file[22 * 512], pattern(22, 0));
        // FLUSH CACHE EXT completes.
        rig.w(1, TaskfileReg::StatusCommand, CMD_FLUSH_CACHE_EXT);
        assert_eq!(rig.status(1), Status::DRDY | Status::DSC);
    }

    #[test]
    fn dma_faults() {
        let (mut rig, _) = rig(1, 64);
        // Buffer outside RAM: bus-master error, ATA ERR + ABRT, interrupt.
        rig.prd(0x1000, &[(0xf000_0000, 512, true)]);
        rig.ide.bm_write(4, &0x1000u32.to_le_bytes());
        rig.dma_cmd(0, 0xe0, 0, 1, CMD_READ_DMA);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(
            rig.bm_status(0) & ENGINE,
            BmStatus::ERROR | BmStatus::INTERRUPT
        );
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC | Status::ERR);
        assert_eq!(rig.error(0), ErrorReg::ABRT);
        rig.ide.bm_write(0, &[0]);
        rig.ide.bm_write(2, &[ACK]);
        // Bus mastering disabled in the command register.
        rig.prd(0x1000, &[(0x10000, 512, true)]);
        rig.ide.config_write(4, &[0x01]);
        rig.dma_cmd(0, 0xe0, 0, 1, CMD_READ_DMA);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(rig.bm_status(0) & BmStatus::ERROR, BmStatus::ERROR);
        rig.ide.config_write(4, &[0x05]);
        rig.ide.bm_write(0, &[0]);
        rig.ide.bm_write(2, &[ACK]);
        // A table longer than the transfer: done, interrupt, active stays.
        rig.prd(0x1000, &[(0x10000, 4096, true)]);
        rig.dma_cmd(0, 0xe0, 0, 1, CMD_READ_DMA);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(
            rig.bm_status(0) & ENGINE,
            BmStatus::ACTIVE | BmStatus::INTERRUPT
        );
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
        // Stopping the engine with a command pending leaves the command waiting.
        rig.ide.bm_write(0, &[0]);
        rig.dma_cmd(0, 0xe0, 0, 1, CMD_READ_DMA);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC | Status::DRQ);
        // SRST drops it.
        rig.ide.ctl_write(0, 0, &[DeviceControl::SRST.bits()]);
        rig.ide.ctl_write(0, 0, &[0]);
        rig.ide.bm_write(0, &[WRITE_START]);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
    }

    /// A DMA transfer whose backend fails: the engine stops without its bus error bit (the
    /// bus was fine), the interrupt bit is set, and the drive reports ERR with UNC.
    #[test]
    fn dma_with_a_failing_backend() {
        use crate::backends::mem_disk::{Fault, Faults, MemDisk};
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let disk = MemDisk::zeroed(64, false).unwrap();
        let irqs = [
            Arc::new(CountingIrq::default()),
            Arc::new(CountingIrq::default()),
        ];
        let disks = [
            Some(Box::new(disk.clone()) as Box<dyn DiskBackend>),
            None,
            None,
            None,
        ];
        let ide = PiixIde::new(mem.clone(), disks, [irqs[0].clone(), irqs[1].clone()]).unwrap();
        let mut rig = Rig {
            ide,
            mem,
            irqs,
            _imgs: Vec::new(),
        };
        rig.prd(0x1000, &[(0x10000, 1024, true)]);
        rig.ide.bm_write(4, &0x1000u32.to_le_bytes());
        for (read, faults) in [
            (
                true,
                Faults {
                    read: Some(Fault::Eio),
                    ..Faults::NONE
                },
            ),
            (
                true,
                Faults {
                    read: Some(Fault::ShortRead),
                    ..Faults::NONE
                },
            ),
            (
                false,
                Faults {
                    write: Some(Fault::NoSpace),
                    ..Faults::NONE
                },
            ),
        ] {
            disk.set_faults(faults);
            let (cmd, start, stop) = if read {
                (CMD_READ_DMA, READ_START, READ_STOP)
            } else {
                (CMD_WRITE_DMA, WRITE_START, 0)
            };
            rig.dma_cmd(0, 0xe0, 4, 2, cmd);
            rig.ide.bm_write(0, &[start]);
            assert_eq!(rig.bm_status(0) & ENGINE, BmStatus::INTERRUPT, "{faults:?}");
            assert_eq!(rig.status(0), Status::DRDY | Status::DSC | Status::ERR);
            assert_eq!(rig.error(0), ErrorReg::UNC);
            rig.ide.bm_write(0, &[stop]);
            rig.ide.bm_write(2, &[ACK]);
        }
        assert_eq!(rig.irqs[0].count(), 3);
        disk.set_faults(Faults::NONE);
        rig.dma_cmd(0, 0xe0, 4, 2, CMD_READ_DMA);
        rig.ide.bm_write(0, &[READ_START]);
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
    }

    /// The primary master's disk fails (EIO on reads, then a short DMA write, then a slow
    /// disk): each of its commands ends with ERR and UNC, while the secondary channel's drive,
    /// used in between, reads its own right bytes; healed, the primary reads its unchanged
    /// data again.
    #[test]
    fn a_failing_drive_errs_and_the_other_channel_goes_on() {
        use crate::backends::faulty_disk::{Fault, FaultPlan, FaultyDisk};
        use crate::backends::mem_disk::MemDisk;
        let mem = Mem::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
        let byte = |salt: u8| move |i: usize| (i / 512) as u8 ^ (i as u8).wrapping_mul(salt);
        let primary = MemDisk::patterned(64, false, byte(3)).unwrap();
        let secondary = MemDisk::patterned(64, false, byte(5)).unwrap();
        let (faulty, switch) = FaultyDisk::new(primary.clone());
        let irqs = [
            Arc::new(CountingIrq::default()),
            Arc::new(CountingIrq::default()),
        ];
        let disks = [
            Some(Box::new(faulty) as Box<dyn DiskBackend>),
            None,
            Some(Box::new(secondary.clone()) as Box<dyn DiskBackend>),
            None,
        ];
        let ide = PiixIde::new(mem.clone(), disks, [irqs[0].clone(), irqs[1].clone()]).unwrap();
        let mut rig = Rig {
            ide,
            mem,
            irqs,
            _imgs: Vec::new(),
        };
        let failed = Status::DRDY | Status::DSC | Status::ERR;
        let original = primary.contents();
        let sector = |disk: &MemDisk, lba: usize| disk.contents()[lba * 512..][..512].to_vec();

        switch.set(FaultPlan {
            read: Some(Fault::Eio),
            ..FaultPlan::default()
        });
        rig.dma_cmd(0, 0xe0, 3, 1, CMD_READ_SECTORS);
        assert_eq!(rig.status(0), failed, "PIO read on EIO");
        assert_eq!(rig.error(0), ErrorReg::UNC);
        assert_eq!(rig.pio_read_one(1, 0xe0, 3), sector(&secondary, 3));

        switch.set(FaultPlan {
            write: Some(Fault::Short),
            times: Some(1),
            ..FaultPlan::default()
        });
        rig.mem
            .write_slice(&[0x77; 1024], GuestAddress(0x10000))
            .unwrap();
        rig.prd(0x1000, &[(0x10000, 1024, true)]);
        rig.ide.bm_write(4, &0x1000u32.to_le_bytes());
        rig.dma_cmd(0, 0xe0, 8, 2, CMD_WRITE_DMA);
        rig.ide.bm_write(0, &[WRITE_START]);
        assert_eq!(rig.bm_status(0) & ENGINE, BmStatus::INTERRUPT);
        assert_eq!(rig.status(0), failed, "DMA write cut short");
        assert_eq!(rig.error(0), ErrorReg::UNC);
        rig.ide.bm_write(0, &[0]);
        rig.ide.bm_write(2, &[ACK]);
        assert_eq!(rig.pio_read_one(1, 0xe0, 9), sector(&secondary, 9));

        // Healed but slow: the primary works again; only the failed write's sectors changed,
        // and the guest was told.
        switch.set(FaultPlan {
            delay: std::time::Duration::from_millis(2),
            ..FaultPlan::default()
        });
        assert_eq!(rig.pio_read_one(0, 0xe0, 3), original[3 * 512..4 * 512]);
        let now = primary.contents();
        assert_eq!(now[..8 * 512], original[..8 * 512]);
        assert_eq!(now[10 * 512..], original[10 * 512..]);
        assert_eq!(switch.injected(), 2);
        assert_eq!(rig.irqs[0].count(), 3);
    }

    #[test]
    fn pio_interrupts_latch_bus_master_bit() {
        let (mut rig, _) = rig(1, 8);
        rig.dma_cmd(0, 0xe0, 0, 1, CMD_READ_SECTORS);
        assert_eq!(rig.irqs[0].count(), 1);
        assert_eq!(rig.bm_status(0) & BmStatus::INTERRUPT, BmStatus::INTERRUPT);
        let mut d = [0u8; 4];
        for _ in 0..128 {
            rig.ide.cmd_read(0, 0, &mut d);
        }
        assert_eq!(rig.status(0), Status::DRDY | Status::DSC);
    }

    #[test]
    fn any_access_never_panics() {
        let (mut rig, _) = rig(3, 16);
        let mut seed = 0x9e37_79b9u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed
        };
        for _ in 0..300_000 {
            let v = next();
            let len = [1usize, 2, 4, 3, 8, 0][(v & 7) as usize % 6];
            let off = (v >> 3) as u64 % 20;
            let ch = (v >> 8) as usize % 3;
            let mut buf = vec![(next() & 0xff) as u8; len];
            if v >> 31 == 0 && buf.first() == Some(&WRITE_START) {
                // Point the engine at RAM sometimes, at anything otherwise.
                rig.ide
                    .bm_write(4, &(next() % (RAM as u32 + 0x1000)).to_le_bytes());
            }
            match (v >> 12) % 8 {
                0 => rig.ide.cmd_read(ch, off, &mut buf),
                1 | 2 => rig.ide.cmd_write(ch, off, &buf),
                3 => rig.ide.ctl_read(ch, off, &mut buf),
                4 => rig.ide.ctl_write(ch, off, &buf),
                5 => rig.ide.bm_read(off, &mut buf),
                6 => rig.ide.bm_write(off, &buf),
                _ => rig.ide.config_write(0x40 + off, &buf),
            }
        }
    }
}
