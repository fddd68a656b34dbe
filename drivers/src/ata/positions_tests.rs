//! Host tests of the four drive positions: what a probe reports for each kind of position
//! (ATA disk, empty, ATAPI, floating bus, a misbehaving drive), a slave without a master (the
//! ATA rule and QEMU's phantom master), and the secondary channel's ports, bus master and IRQ.

use super::bmdma::BusMasterDma;
use super::fake::{self, pattern, Disk, Fake, Io, BM, BM2, CMD, CMD2, CTRL, CTRL2};
use super::ide::{cmd, reg, ChannelId, ChannelPorts, Drive, IdeChannel, Presence, Timeouts};
use super::{AtaError, IdentifyProblem, WaitFor};
use crate::platform::Platform;
use alloc::vec;
use alloc::vec::Vec;

const MS: u64 = 1_000_000;

fn channel(f: &Fake, ports: ChannelPorts) -> IdeChannel<'_, Fake> {
    let mut ch = IdeChannel::new(f, ports);
    ch.timeouts = Timeouts {
        command_ns: 50 * MS,
        reset_ns: 100 * MS,
        flush_ns: 80 * MS,
    };
    ch
}

fn patterns(lba: u64, n: u64) -> Vec<u8> {
    (lba..lba + n).flat_map(pattern).collect()
}

fn atapi() -> Disk {
    let mut d = Disk::new(100, false);
    d.atapi = true;
    d
}

fn probe(f: &Fake) -> [Result<Presence, AtaError>; 2] {
    channel(f, ChannelPorts::PRIMARY).probe_drives()
}

#[test]
fn probe_reports_each_kind_of_position() {
    let disk = || Some(Disk::new(1000, false));
    let phantom = Fake::new(None, disk());
    phantom.st.borrow_mut().phantom_master = true;
    let atapi_slave = Fake::new(disk(), Some(atapi()));
    let cases: [(&str, Fake, [Presence; 2]); 7] = [
        ("both", Fake::new(disk(), disk()), [Presence::Ata; 2]),
        (
            "master only",
            Fake::new(disk(), None),
            [Presence::Ata, Presence::Empty],
        ),
        (
            "slave only, ATA rule",
            Fake::new(None, disk()),
            [Presence::Empty, Presence::Ata],
        ),
        (
            "slave only, QEMU's phantom master",
            phantom,
            [Presence::Empty, Presence::Ata],
        ),
        (
            "ATAPI master",
            Fake::new(Some(atapi()), disk()),
            [
                Presence::NotAta {
                    lba_mid: 0x14,
                    lba_high: 0xEB,
                },
                Presence::Ata,
            ],
        ),
        (
            "ATAPI slave",
            atapi_slave,
            [
                Presence::Ata,
                Presence::NotAta {
                    lba_mid: 0x14,
                    lba_high: 0xEB,
                },
            ],
        ),
        ("no drives", Fake::new(None, None), [Presence::Empty; 2]),
    ];
    for (what, f, want) in cases {
        assert_eq!(probe(&f), want.map(Ok), "{what}");
        assert!(f.violations().is_empty(), "{what}: {:?}", f.violations());
    }
    // A floating bus is seen from a read: no command is ever written.
    let f = Fake::floating();
    assert_eq!(probe(&f), [Ok(Presence::Floating); 2]);
    assert!(f.writes(reg::COMMAND).is_empty());
    assert_eq!(
        Presence::NotAta {
            lba_mid: 0x14,
            lba_high: 0xEB
        }
        .to_string(),
        "ATAPI device (signature 0x14/0xeb), not ATA"
    );
}

/// A drive that is there but misbehaves is an error, never "empty": the caller must fail.
#[test]
fn misbehaving_drive_is_an_error_not_a_skip() {
    // BSY forever after IDENTIFY: a bounded wait, then a timeout for that position only.
    let f = Fake::new(Some(Disk::new(1000, false)), Some(Disk::new(1000, false)));
    f.disk(1, |d| d.stuck_busy = true);
    let t0 = f.now_ns();
    let [master, slave] = probe(&f);
    assert_eq!(master, Ok(Presence::Ata));
    assert!(
        matches!(
            slave,
            Err(AtaError::Timeout {
                waiting_for: WaitFor::DataRequest,
                status: 0x80
            })
        ),
        "{slave:?}"
    );
    assert!(f.now_ns() - t0 < 200 * MS, "the wait was not bounded");

    // Unusable IDENTIFY data.
    let mut bad = Disk::new(1000, false);
    bad.identify = Some([0; 256]);
    let f = Fake::new(Some(bad), None);
    assert_eq!(
        probe(&f),
        [
            Err(AtaError::InvalidIdentify(IdentifyProblem::AllZero)),
            Ok(Presence::Empty)
        ]
    );

    // A reset that never completes fails both positions.
    let f = Fake::new(Some(Disk::new(1000, false)), Some(Disk::new(1000, false)));
    f.disk(0, |d| d.busy_reads = u32::MAX);
    let timeout = Err(AtaError::Timeout {
        waiting_for: WaitFor::NotBusy,
        status: 0x80,
    });
    assert_eq!(probe(&f), [timeout, timeout]);
}

/// A slave without a master: probe, PIO write and read, DMA read, flush, all on device 1.
#[test]
fn slave_only_channel_does_io_on_the_slave() {
    for phantom in [false, true] {
        let f = Fake::new(None, Some(Disk::new(2000, true)));
        f.st.borrow_mut().phantom_master = phantom;
        let mut ch = channel(&f, ChannelPorts::PRIMARY);
        assert_eq!(
            ch.probe_drives(),
            [Ok(Presence::Empty), Ok(Presence::Ata)],
            "phantom {phantom}"
        );
        assert!(ch.info(Drive::Master).is_none());
        assert_eq!(ch.info(Drive::Slave).map(|i| i.sectors), Some(2000));
        assert_eq!(
            ch.read_pio(Drive::Master, 0, &mut [0u8; 512]),
            Err(AtaError::NotIdentified)
        );
        let data: Vec<u8> = (0..2 * 512).map(|i| (i % 251) as u8).collect();
        ch.write_pio(Drive::Slave, 1500, &data).unwrap();
        let mut back = vec![0u8; 2 * 512];
        ch.read_pio(Drive::Slave, 1500, &mut back).unwrap();
        assert_eq!(back, data);
        ch.flush(Drive::Slave).unwrap();
        let mut bm = BusMasterDma::new(&f, BM).unwrap();
        let mut buf = f.dma_alloc(4 * 512, 4096).unwrap();
        bm.read(&mut ch, Drive::Slave, 40, &mut buf).unwrap();
        assert!(buf.as_slice() == patterns(40, 4));
        assert_eq!(
            f.disk(1, |d| d.commands.clone()),
            [
                cmd::IDENTIFY_DEVICE,
                cmd::WRITE_SECTORS,
                cmd::READ_SECTORS,
                cmd::FLUSH_CACHE_EXT,
                cmd::READ_DMA
            ]
        );
        assert!(f
            .writes(reg::DEVICE)
            .iter()
            .all(|&d| d == 0xE0 || d & 0x10 != 0));
        assert!(f.violations().is_empty(), "{:?}", f.violations());
    }
}

/// The secondary channel: its own ports, the bus-master registers at BAR4 + 8, and its own
/// interrupt; nothing touches the primary's ports.
#[test]
fn secondary_channel_ports_bus_master_and_irq() {
    assert_eq!(ChannelId::Primary.legacy_irq(), 14);
    assert_eq!(ChannelId::Secondary.legacy_irq(), 15);
    assert_eq!(ChannelId::Secondary.legacy_ports(), ChannelPorts::SECONDARY);
    assert_eq!(
        (
            ChannelPorts::SECONDARY.command,
            ChannelPorts::SECONDARY.control
        ),
        (CMD2, CTRL2)
    );

    let f = Fake::secondary(Some(Disk::new(1000, false)), Some(Disk::new(500, false)));
    let mut ch = channel(&f, ChannelId::Secondary.legacy_ports());
    assert_eq!(ch.probe_drives(), [Ok(Presence::Ata); 2]);
    let mut buf = vec![0u8; 3 * 512];
    ch.read_pio(Drive::Slave, 7, &mut buf).unwrap();
    assert!(buf == patterns(7, 3));
    let mut bm = BusMasterDma::new(&f, BM2).unwrap();
    let mut dma = f.dma_alloc(2 * 512, 4096).unwrap();
    bm.read(&mut ch, Drive::Master, 9, &mut dma).unwrap();
    assert!(dma.as_slice() == patterns(9, 2));
    ch.set_interrupt(Some(fake::VECTOR));
    let before = f.interrupt_count(fake::VECTOR);
    ch.read_pio(Drive::Master, 3, &mut buf).unwrap();
    assert!(buf == patterns(3, 3));
    assert_eq!(f.interrupt_count(fake::VECTOR) - before, 3, "one per block");
    assert!(f.violations().is_empty(), "{:?}", f.violations());
    let secondary =
        |p: u16| (CMD2..CMD2 + 8).contains(&p) || p == CTRL2 || (BM2..BM2 + 8).contains(&p);
    for io in f.log() {
        let port = match io {
            Io::In { port, .. } | Io::Out { port, .. } | Io::Ins { port, .. } => port,
            Io::Outs { port, .. } => port,
        };
        assert!(secondary(port), "{io:?} is not a secondary-channel port");
    }
    assert!(!secondary(CMD) && !secondary(CTRL) && !secondary(BM));

    // A driver on the wrong channel's ports finds a floating bus, and does not fail.
    let f = Fake::secondary(Some(Disk::new(1000, false)), None);
    assert_eq!(probe(&f), [Ok(Presence::Floating); 2]);
}

/// QEMU performs a software reset later, in a bottom half on its main loop: until it has run,
/// the drive selected before the reset stays selected and device-register writes are dropped.
/// With an absent slave selected (SeaBIOS leaves it so), status then reads 0, which looks
/// idle; a probe that trusted it found the master "empty" on a loaded host. The reset must
/// wait until device 0 really is selected.
#[test]
fn probe_waits_for_a_reset_the_vmm_finishes_late() {
    for lag in [1, 7, 40, 300] {
        let f = Fake::new(Some(Disk::new(1000, false)), None);
        {
            let mut st = f.st.borrow_mut();
            st.reset_lag = lag;
            st.set_device_register(0xB0); // the slave, as firmware left it
        }
        assert_eq!(
            probe(&f),
            [Ok(Presence::Ata), Ok(Presence::Empty)],
            "reset finished {lag} port accesses late"
        );
    }
    // A reset that never finishes is a timeout, not an empty channel.
    let f = Fake::new(Some(Disk::new(1000, false)), None);
    {
        let mut st = f.st.borrow_mut();
        st.reset_lag = u32::MAX;
        st.set_device_register(0xB0);
    }
    let [master, _] = probe(&f);
    assert!(
        matches!(master, Err(AtaError::Timeout { .. })),
        "{master:?}"
    );
}
