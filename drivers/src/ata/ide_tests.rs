//! Host tests of one IDE channel (taskfile PIO, IDENTIFY, errors, timeouts) against
//! [`super::super::fake`].

use super::*;
use crate::ata::fake::{self, pattern, Disk, Fake, Io, Looping, ABRT, CMD, CTRL, IDNF, UNC};
use crate::platform::Platform;
use alloc::vec;
use alloc::vec::Vec;

const MS: u64 = 1_000_000;

fn channel(f: &Fake) -> IdeChannel<'_, Fake> {
    let mut ch = IdeChannel::new(f, ChannelPorts::PRIMARY);
    ch.timeouts = Timeouts {
        command_ns: 50 * MS,
        reset_ns: 100 * MS,
        flush_ns: 80 * MS,
    };
    ch
}

fn ready(f: &Fake) -> IdeChannel<'_, Fake> {
    let mut ch = channel(f);
    ch.soft_reset().unwrap();
    ch.identify(Drive::Master).unwrap();
    f.clear_log();
    ch
}

fn patterns(lba: u64, n: u64) -> Vec<u8> {
    (lba..lba + n).flat_map(pattern).collect()
}

fn commands(f: &Fake, i: usize) -> Vec<u8> {
    f.disk(i, |d| d.commands.clone())
}

#[test]
fn floating_bus_is_no_device() {
    let f = Fake::floating();
    let mut ch = channel(&f);
    assert_eq!(ch.soft_reset(), Err(AtaError::NoDevice));
    assert_eq!(ch.identify(Drive::Master).err(), Some(AtaError::NoDevice));
    assert_eq!(ch.probe(Drive::Slave), Ok(None));
    // Detected from a read, without ever issuing a command.
    assert!(f.writes(reg::COMMAND).is_empty());
    assert!(ch.info(Drive::Master).is_none());
}

#[test]
fn absent_slave_reads_zero_status() {
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = channel(&f);
    ch.soft_reset().unwrap();
    assert_eq!(ch.probe(Drive::Slave), Ok(None));
    assert!(ch.probe(Drive::Master).unwrap().is_some());
    assert_eq!(commands(&f, 0), [cmd::IDENTIFY_DEVICE]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn identify_parses_strings_and_counts() {
    let mut d = Disk::new(0x1_2345_6789, true);
    d.model = "AB CDE-1234 Z".into();
    d.serial = "  SN42".into();
    let f = Fake::new(Some(d), None);
    let mut ch = channel(&f);
    ch.soft_reset().unwrap();
    let info = ch.identify(Drive::Master).unwrap().clone();
    assert_eq!(info.model, "AB CDE-1234 Z");
    assert_eq!(info.serial, "SN42");
    assert_eq!(info.firmware, "2.5+");
    assert!(info.lba48);
    assert!(info.flush_ext);
    assert!(info.dma);
    assert_eq!(info.lba48_sectors, 0x1_2345_6789);
    assert_eq!(info.lba28_sectors, 0x0FFF_FFFF);
    assert_eq!(info.sectors, 0x1_2345_6789);
    // The 256 words came in one string read.
    assert_eq!(
        f.log()
            .iter()
            .filter(|io| matches!(
                io,
                Io::Ins {
                    port: CMD,
                    words: 256
                }
            ))
            .count(),
        1
    );
    assert!(f.violations().is_empty(), "{:?}", f.violations());

    let f = Fake::new(Some(Disk::new(5000, false)), None);
    let mut ch = channel(&f);
    let info = ch.identify(Drive::Master).unwrap();
    assert!(!info.lba48);
    assert_eq!((info.sectors, info.lba48_sectors), (5000, 0));
}

#[test]
fn identify_string_byte_order() {
    // "AB" is 0x4142: first character in the high byte.
    assert_eq!(ata_string(&[0x4142, 0x4320, 0x2020]), "ABC");
    assert_eq!(ata_string(&[0x2041, 0x0142]), "A?B");
}

#[test]
fn identify_rejects_bad_data() {
    for (words, problem) in [
        ([0u16; 256], IdentifyProblem::AllZero),
        ([0xFFFF; 256], IdentifyProblem::AllOnes),
    ] {
        let mut d = Disk::new(100, false);
        d.identify = Some(words);
        let f = Fake::new(Some(d), None);
        let mut ch = channel(&f);
        assert_eq!(
            ch.identify(Drive::Master).err(),
            Some(AtaError::InvalidIdentify(problem))
        );
        assert!(ch.info(Drive::Master).is_none());
    }
    let good = Disk::new(100, false).identify_words();
    assert!(DriveInfo::parse(&good).is_ok());
    let mut bad = good;
    bad[60] ^= 1;
    assert_eq!(
        DriveInfo::parse(&bad),
        Err(AtaError::InvalidIdentify(IdentifyProblem::Checksum))
    );
    let mut no_lba = good;
    no_lba[49] = 0;
    no_lba[255] = 0;
    assert_eq!(
        DriveInfo::parse(&no_lba),
        Err(AtaError::InvalidIdentify(IdentifyProblem::NoLba))
    );
}

#[test]
fn atapi_signature_is_not_ata() {
    let mut d = Disk::new(100, false);
    d.atapi = true;
    let f = Fake::new(Some(d), None);
    let mut ch = channel(&f);
    assert_eq!(
        ch.identify(Drive::Master).err(),
        Some(AtaError::NotAta {
            lba_mid: 0x14,
            lba_high: 0xEB
        })
    );
}

#[test]
fn lba28_round_trip_and_registers() {
    let f = Fake::new(Some(Disk::new(0x0200_0000, false)), None);
    let mut ch = ready(&f);
    let lba = 0x0123_4567;
    let data: Vec<u8> = (0..3 * 512).map(|i| (i * 7 % 251) as u8).collect();
    ch.write_pio(Drive::Master, lba, &data).unwrap();
    assert_eq!(
        f.taskfile_writes(),
        [
            (2, 3),
            (3, 0x67),
            (4, 0x45),
            (5, 0x23),
            (6, 0xE1),
            (7, cmd::WRITE_SECTORS)
        ]
    );
    assert_eq!(f.disk(0, |d| d.store[&(lba + 2)].to_vec()), data[1024..]);
    f.clear_log();
    let mut back = vec![0u8; 4 * 512];
    ch.read_pio(Drive::Master, lba, &mut back).unwrap();
    assert_eq!(back[..3 * 512], data[..]);
    assert_eq!(back[3 * 512..], pattern(lba + 3));
    assert_eq!(f.writes(reg::COMMAND), [cmd::READ_SECTORS]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn lba48_register_order_high_bytes_first() {
    let f = Fake::new(Some(Disk::new(1 << 40, true)), None);
    let mut ch = ready(&f);
    let lba = 0x00AB_2345_6780;
    let data: Vec<u8> = (0..2 * 512).map(|i| (i % 253) as u8).collect();
    ch.write_pio(Drive::Master, lba, &data).unwrap();
    assert_eq!(
        f.taskfile_writes(),
        [
            (2, 0),
            (3, 0x23),
            (4, 0xAB),
            (5, 0x00),
            (2, 2),
            (3, 0x80),
            (4, 0x67),
            (5, 0x45),
            (6, 0xE0),
            (7, cmd::WRITE_SECTORS_EXT)
        ]
    );
    let mut back = vec![0u8; 2 * 512];
    ch.read_pio(Drive::Master, lba, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        f.writes(reg::COMMAND),
        [cmd::WRITE_SECTORS_EXT, cmd::READ_SECTORS_EXT]
    );
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn ext_chosen_at_the_28_bit_boundary_or_when_forced() {
    let f = Fake::new(Some(Disk::new(1 << 30, true)), None);
    let mut ch = ready(&f);
    let mut buf = vec![0u8; 2 * 512];
    ch.read_pio(Drive::Master, LBA28_LIMIT - 2, &mut buf)
        .unwrap();
    ch.read_pio(Drive::Master, LBA28_LIMIT - 1, &mut buf)
        .unwrap();
    assert_eq!(buf, patterns(LBA28_LIMIT - 1, 2));
    ch.force_lba48 = true;
    ch.read_pio(Drive::Master, 7, &mut buf).unwrap();
    assert_eq!(buf, patterns(7, 2));
    assert_eq!(
        f.writes(reg::COMMAND),
        [
            cmd::READ_SECTORS,
            cmd::READ_SECTORS_EXT,
            cmd::READ_SECTORS_EXT
        ]
    );
    // Forcing EXT on an LBA28-only drive is refused up front.
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    ch.force_lba48 = true;
    assert_eq!(
        ch.read_pio(Drive::Master, 0, &mut buf),
        Err(AtaError::Lba48Unsupported)
    );
    assert!(f.log().is_empty());
}

#[test]
fn multi_sector_requests_split_per_command() {
    let f = Fake::new(Some(Disk::new(10_000, false)), None);
    let mut ch = ready(&f);
    let mut buf = vec![0u8; 300 * 512];
    ch.read_pio(Drive::Master, 1000, &mut buf).unwrap();
    assert!(buf == patterns(1000, 300));
    assert_eq!(f.writes(reg::COMMAND), [cmd::READ_SECTORS; 2]);
    assert_eq!(f.writes(reg::SECTOR_COUNT), [0, 44], "256 is written as 0");
    f.clear_log();
    let data: Vec<u8> = (0..257 * 512).map(|i| (i / 512) as u8 ^ i as u8).collect();
    ch.write_pio(Drive::Master, 2000, &data).unwrap();
    assert_eq!(f.writes(reg::SECTOR_COUNT), [0, 1]);
    ch.read_pio(Drive::Master, 2000, &mut buf[..257 * 512])
        .unwrap();
    assert!(buf[..257 * 512] == data[..]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());

    // LBA48 commands carry up to 65536 sectors.
    let f = Fake::new(Some(Disk::new(1 << 20, true)), None);
    let ch = ready(&f);
    let c = ch.plan(Drive::Master, 5, 65537);
    assert_eq!((c.count, c.ext), (65536, true));
    let c = ch.plan(Drive::Master, 5, 256);
    assert_eq!((c.count, c.ext), (256, false));
    let c = ch.plan(Drive::Master, 5, 257);
    assert_eq!((c.count, c.ext), (257, true));
}

#[test]
fn flush_uses_ext_when_supported() {
    let f = Fake::new(Some(Disk::new(1 << 30, true)), Some(Disk::new(1000, false)));
    let mut ch = channel(&f);
    ch.soft_reset().unwrap();
    ch.identify(Drive::Master).unwrap();
    ch.identify(Drive::Slave).unwrap();
    ch.flush(Drive::Master).unwrap();
    ch.flush(Drive::Slave).unwrap();
    assert_eq!(f.disk(0, |d| d.flushes.clone()), [cmd::FLUSH_CACHE_EXT]);
    assert_eq!(f.disk(1, |d| d.flushes.clone()), [cmd::FLUSH_CACHE]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn device_errors_are_mapped() {
    for (bits, want) in [
        (
            ABRT,
            AtaError::Aborted {
                error: ErrorReg::ABRT,
            },
        ),
        (
            IDNF,
            AtaError::IdNotFound {
                error: ErrorReg::IDNF,
            },
        ),
        (
            UNC | ABRT,
            AtaError::Uncorrectable {
                error: ErrorReg::UNC | ErrorReg::ABRT,
            },
        ),
    ] {
        let f = Fake::new(Some(Disk::new(1000, false)), None);
        let mut ch = ready(&f);
        f.disk(0, |d| d.fail = Some((5, bits)));
        let mut buf = vec![0u8; 8 * 512];
        assert_eq!(ch.read_pio(Drive::Master, 2, &mut buf), Err(want));
        // The sectors before the bad one arrived.
        assert!(buf[..3 * 512] == patterns(2, 3));
        assert_eq!(ch.write_pio(Drive::Master, 4, &buf[..2 * 512]), Err(want));
        // The channel still works afterwards.
        ch.read_pio(Drive::Master, 100, &mut buf).unwrap();
        assert!(buf == patterns(100, 8));
    }
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    f.disk(0, |d| d.fault = true);
    let mut buf = vec![0u8; 512];
    assert!(matches!(
        ch.read_pio(Drive::Master, 0, &mut buf),
        Err(AtaError::DeviceFault { status, .. }) if status.contains(Status::DF)
    ));
}

#[test]
fn stuck_device_times_out() {
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    f.disk(0, |d| d.stuck_busy = true);
    let mut buf = vec![0u8; 512];
    let t0 = f.now_ns();
    assert_eq!(
        ch.read_pio(Drive::Master, 0, &mut buf),
        Err(AtaError::Timeout {
            waiting_for: WaitFor::DataRequest,
            status: 0x80
        })
    );
    let elapsed = f.now_ns() - t0;
    assert!((50 * MS..60 * MS).contains(&elapsed), "{elapsed}");
    assert_eq!(
        ch.flush(Drive::Master)
            .err()
            .map(|e| matches!(e, AtaError::Timeout { .. })),
        Some(true)
    );

    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    f.disk(0, |d| d.no_drq = true);
    assert_eq!(
        ch.read_pio(Drive::Master, 0, &mut buf),
        Err(AtaError::Timeout {
            waiting_for: WaitFor::DataRequest,
            status: 0x50
        })
    );

    let f = Fake::new(Some(Disk::new(1000, false)), None);
    f.disk(0, |d| d.busy_reads = u32::MAX);
    let mut ch = channel(&f);
    assert_eq!(
        ch.soft_reset(),
        Err(AtaError::Timeout {
            waiting_for: WaitFor::NotBusy,
            status: 0x80
        })
    );
}

#[test]
fn requests_past_capacity_are_refused_without_io() {
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    let mut buf = vec![0u8; 2 * 512];
    assert_eq!(
        ch.read_pio(Drive::Master, 999, &mut buf),
        Err(AtaError::OutOfRange {
            lba: 999,
            count: 2,
            capacity: 1000
        })
    );
    assert!(matches!(
        ch.write_pio(Drive::Master, u64::MAX, &buf),
        Err(AtaError::OutOfRange { .. })
    ));
    assert_eq!(
        ch.read_pio(Drive::Master, 0, &mut buf[..100]),
        Err(AtaError::BufferLength { len: 100 })
    );
    assert_eq!(
        ch.read_pio(Drive::Slave, 0, &mut buf),
        Err(AtaError::NotIdentified)
    );
    assert!(f.log().is_empty(), "{:?}", f.log());
    // The last sectors themselves are fine.
    ch.read_pio(Drive::Master, 998, &mut buf).unwrap();
    assert!(buf == patterns(998, 2));
    // An empty request does nothing.
    f.clear_log();
    ch.read_pio(Drive::Master, 1000, &mut []).unwrap();
    assert!(f.log().is_empty());
}

#[test]
fn port_accesses_per_read() {
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    let mut ch = ready(&f);
    let mut buf = vec![0u8; 4 * 512];
    ch.read_pio(Drive::Master, 10, &mut buf).unwrap();
    // 6 taskfile writes, 1 alternate status (settle), per sector 1 status + 1 string read,
    // 1 final status.
    assert_eq!(f.log().len(), 6 + 1 + 4 * 2 + 1, "{:?}", f.log());
    assert_eq!(f.reads_of(CTRL), 1);
    f.clear_log();
    ch.settle = Settle::Clock;
    ch.read_pio(Drive::Master, 10, &mut buf).unwrap();
    assert_eq!(f.log().len(), 6 + 4 * 2 + 1);
    assert_eq!(f.reads_of(CTRL), 0);
    assert!(buf == patterns(10, 4));

    // The default PortStrings methods move one word per access.
    let lp = Looping(&f);
    let mut ch = IdeChannel::new(&lp, ChannelPorts::PRIMARY);
    ch.identify(Drive::Master).unwrap();
    f.clear_log();
    ch.read_pio(Drive::Master, 10, &mut buf).unwrap();
    assert!(buf == patterns(10, 4));
    assert_eq!(f.log().len(), 6 + 1 + 4 * (1 + 256) + 1);
    let data = vec![0x5Au8; 512];
    ch.write_pio(Drive::Master, 3, &data).unwrap();
    assert_eq!(f.disk(0, |d| d.store[&3]), [0x5A; 512]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn slow_device_and_unaligned_buffers() {
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    f.disk(0, |d| d.busy_reads = 3);
    let mut ch = channel(&f);
    ch.soft_reset().unwrap();
    ch.identify(Drive::Master).unwrap();
    let mut raw = vec![0u8; 3 * 512 + 1];
    ch.read_pio(Drive::Master, 40, &mut raw[1..]).unwrap();
    assert!(raw[1..] == patterns(40, 3));
    let data: Vec<u8> = (0..2 * 512 + 1).map(|i| (i % 256) as u8).collect();
    ch.write_pio(Drive::Master, 50, &data[1..]).unwrap();
    assert_eq!(f.disk(0, |d| d.store[&51].to_vec()), data[513..]);
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn two_drives_on_one_channel() {
    let f = Fake::new(Some(Disk::new(1000, false)), Some(Disk::new(2000, true)));
    let mut ch = channel(&f);
    ch.soft_reset().unwrap();
    ch.identify(Drive::Master).unwrap();
    ch.identify(Drive::Slave).unwrap();
    assert_eq!(ch.info(Drive::Slave).unwrap().sectors, 2000);
    let data = vec![0xC3u8; 512];
    ch.write_pio(Drive::Slave, 1500, &data).unwrap();
    let mut buf = vec![0u8; 512];
    ch.read_pio(Drive::Master, 7, &mut buf).unwrap();
    assert!(buf == pattern(7));
    ch.read_pio(Drive::Slave, 1500, &mut buf).unwrap();
    assert_eq!(buf, data);
    assert!(f.disk(0, |d| d.store.is_empty()));
    // Slave selections carry DEV.
    assert!(f.writes(reg::DEVICE).contains(&0xF0));
    assert!(f.violations().is_empty(), "{:?}", f.violations());
}

#[test]
fn interrupt_driven_pio() {
    let f = Fake::new(Some(Disk::new(1000, true)), None);
    f.disk(0, |d| d.busy_reads = 2);
    let mut ch = channel(&f);
    ch.set_interrupt(Some(fake::VECTOR));
    ch.soft_reset().unwrap();
    assert_eq!(f.st.borrow().control & 0x02, 0, "nIEN clear");
    ch.identify(Drive::Master).unwrap();
    let data: Vec<u8> = (0..3 * 512).map(|i| (i % 249) as u8).collect();
    ch.write_pio(Drive::Master, 9, &data).unwrap();
    let before = f.interrupt_count(fake::VECTOR);
    let mut back = vec![0u8; 3 * 512];
    ch.read_pio(Drive::Master, 9, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(f.interrupt_count(fake::VECTOR) - before, 3, "one per block");
    ch.flush(Drive::Master).unwrap();
    assert!(f.violations().is_empty(), "{:?}", f.violations());

    // A lost interrupt is a timeout, not a hang.
    f.st.borrow_mut().lose_irqs = true;
    assert!(matches!(
        ch.read_pio(Drive::Master, 9, &mut back),
        Err(AtaError::Timeout {
            waiting_for: WaitFor::Interrupt,
            ..
        })
    ));
    // Polled mode sets nIEN.
    ch.set_interrupt(None);
    assert_eq!(f.st.borrow().control & 0x02, 0x02);
}

#[test]
fn ports_from_pci() {
    let mut func = fake::piix_function();
    assert_eq!(
        ChannelPorts::from_pci(&func, false),
        Some(ChannelPorts::PRIMARY)
    );
    assert_eq!(
        ChannelPorts::from_pci(&func, true),
        Some(ChannelPorts::SECONDARY)
    );
    func.prog_if = 0x85;
    assert_eq!(ChannelPorts::from_pci(&func, true), None);
    func.bars[2] = Some(Bar::Io {
        port: 0xD000,
        size: 8,
    });
    func.bars[3] = Some(Bar::Io {
        port: 0xD100,
        size: 4,
    });
    assert_eq!(
        ChannelPorts::from_pci(&func, true),
        Some(ChannelPorts {
            command: 0xD000,
            control: 0xD102
        })
    );
    // BARs too small for the taskfile or the control register are not used.
    func.bars[2] = Some(Bar::Io {
        port: 0xD000,
        size: 4,
    });
    assert_eq!(ChannelPorts::from_pci(&func, true), None);
    func.bars[2] = Some(Bar::Io {
        port: 0xD000,
        size: 8,
    });
    func.bars[3] = Some(Bar::Io {
        port: 0xD100,
        size: 2,
    });
    assert_eq!(ChannelPorts::from_pci(&func, true), None);
}
