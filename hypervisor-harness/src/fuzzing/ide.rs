//! PIIX IDE: two ATA channels and bus-master DMA.

use super::*;
use crate::backends::disk::DiskBackend;
use crate::backends::faulty_disk::FaultSwitch;
use crate::backends::mem_disk::MemDisk;
use crate::devices::bus::Bus;
use crate::devices::ide::ata::{self, DeviceControl, DeviceReg, Status, TaskfileReg};
use crate::devices::ide::bmdma::{BmCommand, BmReg, BmStatus, PrdEntry};
use crate::devices::ide::piix::{self, IdePort, PiixIde, Port};
use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO, REG_COMMAND};
use crate::devices::virtio::Memory;
use crate::devices::{lock, Interrupt};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vm_memory::ByteValued;

/// Opcodes of [`ide()`] programs (the opcode byte is taken modulo 13).
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

/// What an [`ide()`] run did (for the smoke tests).
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
    /// The switches of the faulty disks the model owns, one per drive (the caller keeps the
    /// memory disks inside them, to look into).
    switches: Vec<FaultSwitch>,
}

impl IdeRig {
    fn new(mem: Memory, disks: Vec<MemDisk>) -> Self {
        let mut present = [false; 4];
        present[..disks.len()].fill(true);
        let irqs = [Arc::new(EdgeIrq::default()), Arc::new(EdgeIrq::default())];
        let lines: [Arc<dyn Interrupt>; 2] = [irqs[0].clone(), irqs[1].clone()];
        // Dense placement: the first `disks.len()` positions.
        let mut slots: [Option<Box<dyn DiskBackend>>; piix::MAX_DRIVES] = Default::default();
        let mut switches = Vec::new();
        for (slot, d) in slots.iter_mut().zip(&disks) {
            let (backend, switch) = faulty(d);
            *slot = Some(backend);
            switches.push(switch);
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
            switches,
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
                    let mut b = [0u8; 16];
                    self.bus.read(port, &mut b[..width]);
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
                // Up to 256 accesses: a buffer on the stack, not one allocated for each.
                let mut d = [0u8; 4];
                for _ in 0..words {
                    if b & 1 == 0 {
                        self.bus.read(port, &mut d[..width]);
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
                let mut b = [0u8; 16];
                lock(&self.ide).config_read(off, &mut b[..r.width()]);
            }
            iop::BM_STATUS => {
                let ch = (r.u8() & 1) as u64;
                let v = r.u8();
                self.out8(IDE_BAR4 + 8 * ch + 2, v);
            }
            iop::DMA => self.dma(r),
            _ => {
                let drive = r.u8() as usize;
                let faults = r.faults();
                if !self.switches.is_empty() {
                    self.switches[drive % self.switches.len()].set(faults);
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
        for s in &self.switches {
            s.heal();
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

/// [`ide()`], returning what happened.
pub fn run_ide(data: &[u8]) -> IdeSummary {
    let mut r = Reader(data);
    let flags = r.u8();
    let mem = new_memory((flags & 1 != 0).then_some(data));
    let n = ((flags >> 1) & 7).min(4) as usize;
    let disks: Vec<MemDisk> = (0..n)
        .map(|i| image_disk(flags & (0x10 << i) != 0))
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
    for d in &disks {
        check_image_disk(d);
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_util::{random, P};

    #[test]
    fn ide_random_programs() {
        random(0x5eed_0002, 3000, 400, &[], ide);
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
}
