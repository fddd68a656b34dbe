//! The RTL8139 driver against the fake chip: bring-up, the MAC and EEPROM, TX round robin,
//! the RX ring (both wrap rules), link and interrupts, and devices that misbehave.

use std::vec;
use std::vec::Vec;

use super::fake::{self, FakePlatform, IO_BASE, MAC, VECTOR};
use super::regs::{Cr, Intr, Rcr, Tsd};
use super::{
    MacSource, Rtl8139, Rtl8139Error, Rtl8139Interrupts, Rtl8139Options, RxBufferSize, TX_SLOT_SIZE,
};
use crate::net::{LinkState, Nic, NicError, RxInfo, TxChecksum};

fn open(p: &FakePlatform, o: Rtl8139Options) -> Rtl8139<'_, FakePlatform> {
    Rtl8139::new(p, &fake::function(), o).expect("bring-up")
}

fn small() -> Rtl8139Options {
    Rtl8139Options {
        rx_buffer: RxBufferSize::K8,
        ..Rtl8139Options::default()
    }
}

/// A frame of `len` bytes to us, its payload numbered by `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0, 0x12, 0x34, 0x57, 0x02, 0, 0, 0x76, 0, 1, 0x08, 0x00,
    ];
    f.extend((0..len - 14).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn receive_all(nic: &mut Rtl8139<'_, FakePlatform>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while nic
        .receive(&mut |f: &[u8], _: RxInfo| got.push(f.to_vec()))
        .unwrap()
    {}
    got
}

/// `f` padded to 60 bytes, as the chip hands short frames on.
fn padded(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    v.resize(v.len().max(60), 0);
    v
}

#[test]
fn bring_up_programs_the_chip() {
    let p = FakePlatform::new();
    let nic = open(&p, Rtl8139Options::default());
    assert_eq!(nic.mac(), MAC);
    assert_eq!(nic.mac_source(), MacSource::IdrMatchesEeprom);
    assert_eq!(
        p.command() & 0b101,
        0b101,
        "I/O decode and bus mastering on"
    );
    let dev = p.dev.borrow();
    assert_eq!(dev.resets, 1);
    assert_eq!(dev.cr, (Cr::RE | Cr::TE).bits());
    let rcr = Rcr::from_bits_retain(dev.rcr);
    assert!(rcr.contains(Rcr::APM | Rcr::AB | Rcr::WRAP));
    assert!(!rcr.intersects(Rcr::AAP | Rcr::AR | Rcr::AER));
    assert_eq!(dev.rcr >> 11 & 3, 2, "32 KiB ring by default");
    assert_ne!(dev.tcr, 0, "TCR written with the transmitter on");
    assert_ne!(dev.rbstart, 0);
    for i in 1..4 {
        assert_eq!(dev.tsad[i] - dev.tsad[i - 1], TX_SLOT_SIZE as u32);
    }
    assert_eq!(dev.mar, [0; 8], "no multicast");
    assert_eq!(dev.imr, 0, "masked until asked");
    assert_eq!(dev.config1 & 0x21, 0x20, "awake, driver loaded");
    assert_eq!(nic.rx_buffer_bytes(), 32768);
    assert_eq!(
        nic.offloads(),
        Default::default(),
        "no offloads on this chip"
    );
}

#[test]
fn other_functions_and_revisions_are_refused() {
    let p = FakePlatform::new();
    let mut f = fake::function();
    f.device_id = 0x8169;
    assert!(matches!(
        Rtl8139::new(&p, &f, small()),
        Err(Rtl8139Error::NotRtl8139 { .. })
    ));
    let mut f = fake::function();
    f.revision = 0x30;
    assert_eq!(
        Rtl8139::new(&p, &f, small()).err(),
        Some(Rtl8139Error::UnsupportedRevision(0x30))
    );
    let mut f = fake::function();
    f.revision = 0x10;
    assert!(
        Rtl8139::new(&p, &f, small()).is_ok(),
        "our model's revision"
    );
    let mut f = fake::function();
    f.bars[0] = None;
    assert_eq!(
        Rtl8139::new(&p, &f, small()).err(),
        Some(Rtl8139Error::NoRegisterBar)
    );
}

#[test]
fn a_reset_that_never_completes_is_an_error() {
    let p = FakePlatform::new();
    p.dev.borrow_mut().reset_stuck = true;
    assert_eq!(
        Rtl8139::new(&p, &fake::function(), small()).err(),
        Some(Rtl8139Error::ResetTimeout)
    );
}

#[test]
fn the_eeprom_is_read_bit_by_bit() {
    let p = FakePlatform::new();
    for (word, value) in [(0u8, 0x8129u16), (1, 0x10EC), (2, 0x8139), (8, 0x1200)] {
        assert_eq!(
            super::eeprom::read_word(&p, IO_BASE, word),
            value,
            "word {word}"
        );
    }
    p.dev.borrow_mut().eeprom[63] = 0xA55A;
    assert_eq!(super::eeprom::read_word(&p, IO_BASE, 63), 0xA55A);
}

#[test]
fn an_eeprom_that_disagrees_is_counted_and_idr_used() {
    let other = [0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0x01];
    let p = FakePlatform::with_mac(other);
    let nic = open(&p, small());
    assert_eq!(nic.mac(), other, "IDR is what the chip filters on");
    assert_eq!(nic.mac_source(), MacSource::IdrNotEeprom { eeprom: MAC });
    assert_eq!(nic.extra_counters().eeprom_mismatch, 1);
}

#[test]
fn an_absent_eeprom_is_counted_and_idr_used() {
    let p = FakePlatform::new();
    p.dev.borrow_mut().eeprom = [0xFFFF; 64];
    let nic = open(&p, small());
    assert_eq!(nic.mac(), MAC);
    assert_eq!(nic.mac_source(), MacSource::IdrNoEeprom { id_word: 0xFFFF });
    assert_eq!(nic.extra_counters().eeprom_invalid, 1);
}

#[test]
fn tx_uses_the_four_slots_round_robin() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let frames: Vec<Vec<u8>> = (0..11).map(|i| frame(20 + i * 97, i as u8)).collect();
    let mut sent = 0;
    for chunk in frames.chunks(3) {
        for f in chunk {
            nic.send(f, TxChecksum::Complete).unwrap();
        }
        assert_eq!(p.dev.borrow().sent.len(), sent, "nothing before flush");
        nic.flush().unwrap();
        sent += chunk.len();
        assert_eq!(nic.reclaim().unwrap(), chunk.len());
    }
    let expected: Vec<Vec<u8>> = frames.iter().map(|f| padded(f)).collect();
    assert_eq!(
        p.dev.borrow().sent,
        expected,
        "in order, short ones padded to 60"
    );
    let c = nic.counters();
    assert_eq!(c.tx_packets, 11);
    assert_eq!(c.notifies, 11, "one TSD write per frame");
}

#[test]
fn a_fifth_frame_waits_for_a_slot() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    p.dev.borrow_mut().tx_stalled = true;
    let f = frame(100, 1);
    for _ in 0..4 {
        nic.send(&f, TxChecksum::Complete).unwrap();
    }
    nic.flush().unwrap();
    assert_eq!(nic.send(&f, TxChecksum::Complete), Err(NicError::TxFull));
    // The chip catches up: each TSD write makes it send from its current slot.
    p.dev.borrow_mut().tx_stalled = false;
    for i in 0..4 {
        let v = p.dev.borrow().tsd[i];
        <FakePlatform as crate::platform::Platform>::outl(&p, IO_BASE + 0x10 + 4 * i as u16, v);
    }
    nic.send(&f, TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    assert_eq!(p.dev.borrow().sent.len(), 5);
}

#[test]
fn a_tx_slot_that_never_completes_is_an_error_and_a_reset_recovers() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    p.dev.borrow_mut().tx_stalled = true;
    let f = frame(100, 1);
    nic.send(&f, TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    let mut result = Ok(0);
    for _ in 0..5_000 {
        // A millisecond of fake time per round.
        crate::platform::Platform::wait_for_interrupt(&p, 0);
        result = nic.reclaim();
        if result.is_err() {
            break;
        }
    }
    assert!(matches!(result, Err(NicError::Device(_))), "{result:?}");
    assert_eq!(nic.extra_counters().tx_timeouts, 1);
    assert!(nic.counters().tx_drops >= 1);
    assert!(nic.send(&f, TxChecksum::Complete).is_err(), "stopped");
    p.dev.borrow_mut().tx_stalled = false;
    nic.reset().unwrap();
    nic.send(&f, TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    assert_eq!(nic.reclaim().unwrap(), 1);
    assert_eq!(p.dev.borrow().sent.len(), 1);
}

#[test]
fn aborted_and_underrun_frames_are_counted() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(100, 1);
    for status in [Tsd::OWN | Tsd::TABT, Tsd::OWN | Tsd::TUN] {
        p.dev.borrow_mut().tx_status = Some(status.bits());
        nic.send(&f, TxChecksum::Complete).unwrap();
        nic.flush().unwrap();
        assert_eq!(nic.reclaim().unwrap(), 1, "the slot is free again");
    }
    assert_eq!(nic.extra_counters().tx_errors, 2);
    assert_eq!(nic.counters().tx_drops, 2);
}

#[test]
fn bad_frames_and_partial_checksums_are_refused() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    assert_eq!(
        nic.send(&[0; 13], TxChecksum::Complete),
        Err(NicError::BadFrameLength(13))
    );
    assert_eq!(
        nic.send(&[0; 1515], TxChecksum::Complete),
        Err(NicError::BadFrameLength(1515))
    );
    assert_eq!(
        nic.send(
            &frame(100, 0),
            TxChecksum::Partial {
                start: 34,
                offset: 6
            }
        ),
        Err(NicError::OffloadUnavailable)
    );
    assert_eq!(nic.counters().tx_drops, 3);
}

/// Frames of every size class go round the ring several times; each comes out whole.
fn rx_round_the_ring(size: RxBufferSize) {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        Rtl8139Options {
            rx_buffer: size,
            ..Rtl8139Options::default()
        },
    );
    let lens = [60, 1514, 61, 1000, 1514, 62, 63, 777, 1514, 14];
    let mut total = 0;
    let laps = 3 * size.bytes() / 1000;
    for k in 0..laps {
        let f = frame(lens[k % lens.len()].max(15), k as u8);
        assert!(p.receive_frame(&f), "room for frame {k}");
        let got = receive_all(&mut nic);
        assert_eq!(got, vec![padded(&f)], "frame {k}");
        total += 1;
    }
    // Several at once too.
    for k in 0..5 {
        assert!(p.receive_frame(&frame(1514, k)));
    }
    assert_eq!(receive_all(&mut nic).len(), 5);
    let c = nic.counters();
    assert_eq!(c.rx_packets, total + 5);
    assert_eq!(c.rx_drops, 0);
    assert!(
        nic.extra_counters().rx_past_end > 0,
        "some frames crossed the end"
    );
    let dev = p.dev.borrow();
    assert_eq!(dev.read_ptr, dev.cbr, "CAPR caught up with CBR");
}

#[test]
fn rx_frames_run_into_the_slack_with_wrap() {
    rx_round_the_ring(RxBufferSize::K8);
    rx_round_the_ring(RxBufferSize::K16);
}

#[test]
fn rx_frames_wrap_to_the_start_of_a_64k_ring() {
    rx_round_the_ring(RxBufferSize::K64);
}

#[test]
fn wild_header_lengths_reset_the_ring() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let good = frame(100, 9);
    for wild in [0u32, 63, 1523, 0xFFEF, 8192 + 16] {
        p.dev.borrow_mut().wild_header = Some(1 | wild << 16);
        assert!(p.receive_frame(&good));
        assert!(!nic
            .receive(&mut |_: &[u8], _: RxInfo| panic!("nothing delivered"))
            .unwrap());
        assert_eq!(p.dev.borrow().cbr, 0, "the ring started again");
        assert!(p.receive_frame(&good));
        assert_eq!(receive_all(&mut nic), vec![good.clone()]);
    }
    let x = nic.extra_counters();
    assert_eq!(x.rx_bad_length, 5);
    assert_eq!(x.resets, 5);
    assert_eq!(nic.counters().rx_drops, 5);
    assert_eq!(nic.counters().rx_packets, 5);
}

#[test]
fn error_frames_are_skipped_as_counted_drops() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(200, 3);
    // CRC error with ROK clear; ROK with a runt bit; FAE.
    for status in [0x0004u32, 0x0011, 0x0003] {
        p.dev.borrow_mut().wild_header = Some(status | (200 + 4) << 16);
        assert!(p.receive_frame(&f));
    }
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f]);
    assert_eq!(nic.extra_counters().rx_errors, 3);
    assert_eq!(nic.extra_counters().resets, 0, "the lengths were sane");
    assert_eq!(nic.counters().rx_drops, 3);
}

#[test]
fn a_chip_that_claims_data_it_never_wrote_delivers_nothing() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(100, 4);
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f.clone()]);
    {
        let mut dev = p.dev.borrow_mut();
        dev.bufe_never = true;
        dev.pointer_read = Some(0x1234);
    }
    // The old header was zeroed: no stale frame comes out again.
    assert!(!nic
        .receive(&mut |_: &[u8], _: RxInfo| panic!("nothing delivered"))
        .unwrap());
    assert_eq!(nic.counters().rx_drops, 0);
    p.dev.borrow_mut().bufe_never = false;
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f]);
}

#[test]
fn an_empty_ring_costs_no_register_read() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(100, 4);
    assert!(p.receive_frame(&f));
    let reads = p.dev.borrow().cr_reads.get();
    assert_eq!(receive_all(&mut nic), vec![f]);
    assert_eq!(
        p.dev.borrow().cr_reads.get() - reads,
        1,
        "one BUFE check, for the frame"
    );
    for _ in 0..10 {
        assert!(!nic.receive(&mut |_: &[u8], _: RxInfo| {}).unwrap());
    }
    assert_eq!(
        p.dev.borrow().cr_reads.get() - reads,
        1,
        "polling an empty ring is free"
    );
}

#[test]
fn a_stale_header_after_a_reset_is_not_a_frame() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    // A frame the driver never took, then a reset: the ring starts again empty at 0.
    assert!(p.receive_frame(&frame(100, 1)));
    nic.reset().unwrap();
    assert!(!nic
        .receive(&mut |_: &[u8], _: RxInfo| panic!("stale"))
        .unwrap());
    let f = frame(300, 2);
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f]);
}

#[test]
fn a_header_still_in_progress_is_left_for_later() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(100, 5);
    p.dev.borrow_mut().wild_header = Some(0xFFF0_0000);
    assert!(p.receive_frame(&f));
    assert!(!nic
        .receive(&mut |_: &[u8], _: RxInfo| panic!("not yet"))
        .unwrap());
    assert_eq!(nic.extra_counters().rx_in_progress, 1);
    // The chip finishes the header.
    let at = u64::from(p.dev.borrow().rbstart);
    p.write_phys(at, &(1u32 | 104 << 16).to_le_bytes());
    assert_eq!(receive_all(&mut nic), vec![f]);
}

#[test]
fn an_overflow_is_counted_and_receiving_goes_on() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    let f = frame(1514, 6);
    let mut held = 0;
    while p.receive_frame(&f) {
        held += 1;
    }
    assert!(!p.receive_frame(&f));
    assert_eq!(held, 5, "8 KiB holds five full frames");
    let ev = nic.handle_interrupt();
    assert!(ev.rx);
    assert_eq!(nic.extra_counters().rx_overruns, 1);
    assert_eq!(nic.extra_counters().rx_missed, 2, "MPC read");
    assert_eq!(nic.counters().rx_drops, 1, "one per report");
    assert_eq!(p.dev.borrow().mpc, 0, "and cleared");
    assert_eq!(receive_all(&mut nic).len(), 5);
    for k in 0..20 {
        assert!(p.receive_frame(&frame(1514, k)));
        assert_eq!(receive_all(&mut nic).len(), 1);
    }
}

#[test]
fn link_follows_the_media_status_register() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    assert_eq!(nic.link(), LinkState::Up);
    p.set_link(false);
    assert!(nic.handle_interrupt().link_changed);
    assert_eq!(nic.link(), LinkState::Down);
    assert_eq!(
        nic.send(&frame(60, 0), TxChecksum::Complete),
        Err(NicError::LinkDown)
    );
    p.set_link(true);
    assert!(nic.handle_interrupt().link_changed);
    nic.send(&frame(60, 0), TxChecksum::Complete).unwrap();
}

fn with_interrupts(p: &FakePlatform) -> Rtl8139<'_, FakePlatform> {
    open(
        p,
        Rtl8139Options {
            interrupts: Rtl8139Interrupts::Intx { vector: VECTOR },
            rx_buffer: RxBufferSize::K8,
        },
    )
}

#[test]
fn interrupts_are_unmasked_acknowledged_and_reported() {
    let p = FakePlatform::new();
    let mut nic = with_interrupts(&p);
    assert!(nic.interrupt_vectors().is_empty());
    assert!(nic.set_interrupts(true));
    assert_eq!(nic.interrupt_vectors(), &[VECTOR]);
    let imr = Intr::from_bits_retain(p.dev.borrow().imr);
    assert!(imr.contains(Intr::ROK | Intr::TER | Intr::RXOVW | Intr::PUN_LINKCHG));
    assert!(
        !imr.contains(Intr::TOK),
        "TX is reclaimed, never interrupted for"
    );

    assert!(p.receive_frame(&frame(80, 1)));
    assert_eq!(p.interrupts(), 1);
    let ev = nic.handle_interrupt();
    assert!(ev.rx && !ev.tx && !ev.link_changed);
    assert_eq!(p.acks.get(), 1);
    assert_eq!(p.dev.borrow().isr, 0, "written back to clear");
    assert_eq!(receive_all(&mut nic).len(), 1);

    // A finished send raises no interrupt; a poll still finds it done.
    nic.send(&frame(80, 2), TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    assert_eq!(p.interrupts(), 1);
    let ev = nic.handle_interrupt();
    assert!(ev.tx && !ev.rx);
    assert_eq!(
        nic.counters().interrupts,
        1,
        "a masked cause is no interrupt"
    );
    assert_eq!(nic.reclaim(), Ok(1));
    assert!(nic.set_interrupts(false));
    assert_eq!(p.dev.borrow().imr, 0);
}

#[test]
fn an_isr_that_cannot_be_cleared_turns_interrupts_off() {
    let p = FakePlatform::new();
    let mut nic = with_interrupts(&p);
    nic.set_interrupts(true);
    p.dev.borrow_mut().isr_sticky = true;
    p.set_link(true);
    let mut n = 0;
    while !nic.interrupt_vectors().is_empty() {
        nic.handle_interrupt();
        n += 1;
        assert!(n < 10_000, "the storm never ended");
    }
    assert_eq!(nic.extra_counters().isr_storms, 1);
    assert_eq!(p.dev.borrow().imr, 0, "masked at the chip");
    // Polling still works.
    p.dev.borrow_mut().isr_sticky = false;
    assert!(p.receive_frame(&frame(80, 1)));
    assert_eq!(receive_all(&mut nic).len(), 1);
}

#[test]
fn polled_devices_report_no_interrupts() {
    let p = FakePlatform::new();
    let mut nic = open(&p, small());
    assert!(!nic.set_interrupts(true));
    assert!(nic.interrupt_vectors().is_empty());
    assert!(p.receive_frame(&frame(80, 1)));
    assert!(nic.handle_interrupt().rx);
    assert_eq!(p.acks.get(), 0);
}

#[test]
fn dropping_gives_the_dma_memory_back() {
    let p = FakePlatform::new();
    drop(open(&p, Rtl8139Options::default()));
    drop(open(&p, Rtl8139Options::default()));
    assert_eq!(p.dev.borrow().resets, 4, "reset at bring-up and at drop");
}
