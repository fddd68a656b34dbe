//! The e1000 driver against the fake 82540EM: bring-up, batching, checksum offload, RX, link
//! and interrupts, and devices that misbehave.

use std::vec;
use std::vec::Vec;

use super::fake::{self, FakePlatform, MAC, VECTOR};
use super::regs::{reg, Ctrl, Intr, Rctl, Tctl, RAH_AV, TIPG_82540_COPPER};
use super::{E1000Error, E1000Interrupts, E1000Options, E1000};
use crate::net::checksum::{prepare_partial_checksum, verify_l4_checksum};
use crate::net::{LinkState, Nic, NicError, RxInfo, TxChecksum};

fn options() -> E1000Options {
    E1000Options {
        rx_ring: 16,
        tx_ring: 16,
        ..E1000Options::default()
    }
}

fn open(p: &FakePlatform, o: E1000Options) -> E1000<'_, FakePlatform> {
    E1000::new(p, &fake::function(), o).expect("bring-up")
}

/// Ethernet + IPv4 + UDP (`tcp`: a TCP header of 20 bytes instead) with `payload` bytes.
fn ip_frame(tcp: bool, payload: usize) -> Vec<u8> {
    let l4 = if tcp { 20 } else { 8 };
    let total = 20 + l4 + payload;
    let mut f = vec![
        0x02, 0, 0, 0x76, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00,
    ];
    f.extend_from_slice(&[0x45, 0, (total >> 8) as u8, total as u8, 0, 0, 0x40, 0, 64]);
    f.push(if tcp { 6 } else { 17 });
    f.extend_from_slice(&[0, 0, 192, 168, 76, 2, 192, 168, 76, 1]);
    f.extend_from_slice(&[0x12, 0x34, 0, 7]);
    if tcp {
        f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0x10, 0, 0, 0, 0, 0]);
    } else {
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
    }
    f.extend((0..payload).map(|i| (i * 13 + 1) as u8));
    f
}

fn receive_all(nic: &mut E1000<'_, FakePlatform>) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while nic
        .receive(&mut |f: &[u8], _: RxInfo| got.push(f.to_vec()))
        .unwrap()
    {}
    got
}

#[test]
fn bring_up_programs_the_device() {
    let p = FakePlatform::new();
    let nic = open(&p, options());
    assert_eq!(nic.mac(), MAC);
    assert_eq!(
        p.command() & 0b110,
        0b110,
        "memory decode and bus mastering on"
    );
    assert_eq!(p.dev.borrow().resets, 1);
    assert_eq!(p.reg(reg::RAL0), 0x1200_5452);
    assert_eq!(p.reg(reg::RAH0), 0x5634 | RAH_AV);
    assert_eq!(p.reg(reg::MTA + 8), 0, "stale multicast bits cleared");
    let rctl = Rctl::from_bits_retain(p.reg(reg::RCTL));
    assert!(rctl.contains(Rctl::EN | Rctl::BAM | Rctl::SECRC));
    assert_eq!(rctl.bits() & (3 << 16 | Rctl::BSEX.bits()), 0, "BSIZE 2048");
    let tctl = Tctl::from_bits_retain(p.reg(reg::TCTL));
    assert!(tctl.contains(Tctl::EN | Tctl::PSP));
    assert_eq!(p.reg(reg::TIPG), TIPG_82540_COPPER);
    assert_eq!(p.reg(reg::RDLEN), 16 * 16);
    assert_eq!(p.reg(reg::TDLEN), 16 * 16);
    assert_eq!(p.dev.borrow().rdt, 15, "all RX descriptors but one given");
    assert!(p.dev.borrow().ctrl & Ctrl::SLU.bits() != 0);
    assert_eq!(nic.ring_sizes(), (16, 16));
}

#[test]
fn ring_sizes_must_be_multiples_of_8() {
    let p = FakePlatform::new();
    for n in [0, 4, 12, 4104] {
        let o = E1000Options {
            rx_ring: n,
            ..options()
        };
        assert_eq!(
            E1000::new(&p, &fake::function(), o).err(),
            Some(E1000Error::BadRingSize(n))
        );
    }
}

#[test]
fn not_an_82540em_is_refused() {
    let p = FakePlatform::new();
    let mut f = fake::function();
    f.device_id = 0x10D3;
    assert!(matches!(
        E1000::new(&p, &f, options()),
        Err(E1000Error::NotE1000 { .. })
    ));
}

#[test]
fn a_reset_that_never_completes_is_an_error() {
    let p = FakePlatform::new();
    p.dev.borrow_mut().reset_stuck = true;
    assert_eq!(
        E1000::new(&p, &fake::function(), options()).err(),
        Some(E1000Error::ResetTimeout)
    );
}

#[test]
fn an_eeprom_read_that_never_completes_is_an_error() {
    let p = FakePlatform::new();
    p.dev.borrow_mut().eeprom_stuck = true;
    assert_eq!(
        E1000::new(&p, &fake::function(), options()).err(),
        Some(E1000Error::EepromTimeout { word: 0 })
    );
}

#[test]
fn a_bad_eeprom_checksum_is_an_error() {
    let p = FakePlatform::new();
    p.dev.borrow_mut().eeprom[0x20] ^= 1;
    assert!(matches!(
        E1000::new(&p, &fake::function(), options()),
        Err(E1000Error::EepromChecksum { .. })
    ));
}

#[test]
fn the_mac_comes_from_the_eeprom() {
    let p = FakePlatform::new();
    let other = [0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0x01];
    p.dev.borrow_mut().eeprom = fake::eeprom(other);
    let nic = open(&p, options());
    assert_eq!(nic.mac(), other);
    assert_eq!(p.reg(reg::RAL0), 0xCCBB_AA02);
}

#[test]
fn tx_is_batched_into_one_tail_write() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    let writes = p.dev.borrow().tdt_writes;
    let frames: Vec<Vec<u8>> = (0..5).map(|i| ip_frame(false, 10 + i)).collect();
    for f in &frames {
        nic.send(f, TxChecksum::Complete).unwrap();
    }
    assert_eq!(p.dev.borrow().tdt_writes, writes, "nothing before flush");
    assert!(p.dev.borrow().sent.is_empty());
    nic.flush().unwrap();
    nic.flush().unwrap();
    assert_eq!(
        p.dev.borrow().tdt_writes,
        writes + 1,
        "one TDT write per batch"
    );
    assert_eq!(p.dev.borrow().sent, frames);
    assert_eq!(nic.reclaim().unwrap(), 5);
    assert_eq!(nic.reclaim().unwrap(), 0);
    let c = nic.counters();
    assert_eq!(c.tx_packets, 5);
    assert_eq!(c.notifies, 1, "the one TDT write");
}

#[test]
fn a_full_tx_ring_says_so_and_recovers() {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        E1000Options {
            tx_ring: 8,
            ..options()
        },
    );
    let f = ip_frame(false, 20);
    for _ in 0..7 {
        nic.send(&f, TxChecksum::Complete).unwrap();
    }
    assert_eq!(nic.send(&f, TxChecksum::Complete), Err(NicError::TxFull));
    nic.flush().unwrap();
    // The wrap: three more rounds of the ring.
    for _ in 0..21 {
        nic.send(&f, TxChecksum::Complete).unwrap();
        nic.flush().unwrap();
    }
    assert_eq!(p.dev.borrow().sent.len(), 28);
}

#[test]
fn a_stalled_device_with_a_wild_tdh_is_an_error() {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        E1000Options {
            tx_ring: 8,
            ..options()
        },
    );
    p.dev.borrow_mut().tx_stalled = true;
    p.dev.borrow_mut().tdh_read = Some(9);
    let f = ip_frame(false, 20);
    for _ in 0..7 {
        nic.send(&f, TxChecksum::Complete).unwrap();
    }
    assert_eq!(
        nic.send(&f, TxChecksum::Complete),
        Err(NicError::Device("TDH out of range"))
    );
    assert_eq!(nic.flush(), Err(NicError::Device("TDH out of range")));
    assert_eq!(p.reg(reg::RCTL), 0, "receive stopped");
    // A reset brings it back.
    p.dev.borrow_mut().tx_stalled = false;
    p.dev.borrow_mut().tdh_read = None;
    nic.reset().unwrap();
    nic.send(&f, TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    assert_eq!(p.dev.borrow().sent.len(), 1, "the lost batch is not resent");
}

#[test]
fn tx_checksum_offload_through_a_context_descriptor() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    assert!(nic.offloads().tx_checksum);
    let mut sent = Vec::new();
    for (tcp, len) in [
        (false, 100),
        (false, 1),
        (true, 1000),
        (true, 7),
        (false, 1472),
    ] {
        let mut f = ip_frame(tcp, len);
        let partial = prepare_partial_checksum(&mut f).unwrap();
        assert_eq!(verify_l4_checksum(&f), Some(false), "left for the device");
        nic.send(&f, partial).unwrap();
        sent.push(f);
    }
    nic.flush().unwrap();
    let dev = p.dev.borrow();
    assert_eq!(dev.sent.len(), 5);
    for f in &dev.sent {
        assert_eq!(verify_l4_checksum(f), Some(true));
    }
    // UDP, TCP, UDP: a context each time the offsets change, not per frame.
    assert_eq!(nic.extra_counters().tx_contexts, 3);
    drop(dev);
    assert_eq!(nic.reclaim().unwrap(), 5, "contexts are not frames");
}

#[test]
fn partial_checksums_without_offload_are_refused() {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        E1000Options {
            tx_checksum: false,
            ..options()
        },
    );
    assert!(!nic.offloads().tx_checksum);
    let mut f = ip_frame(false, 10);
    let partial = prepare_partial_checksum(&mut f).unwrap();
    assert_eq!(nic.send(&f, partial), Err(NicError::OffloadUnavailable));
}

#[test]
fn bad_frame_lengths_are_refused() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    assert_eq!(
        nic.send(&[0; 13], TxChecksum::Complete),
        Err(NicError::BadFrameLength(13))
    );
    assert_eq!(
        nic.send(&[0; 1515], TxChecksum::Complete),
        Err(NicError::BadFrameLength(1515))
    );
    assert_eq!(nic.counters().tx_drops, 2);
}

#[test]
fn rx_delivers_frames_around_the_ring() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    let mut expected = Vec::new();
    for round in 0..6 {
        for i in 0..10 {
            let f = ip_frame(round % 2 == 0, round * 10 + i);
            assert!(p.receive_frame(&f), "the device had a descriptor");
            expected.push(f);
        }
        let got = receive_all(&mut nic);
        assert_eq!(got, expected[expected.len() - 10..]);
    }
    assert_eq!(nic.counters().rx_packets, 60);
    assert_eq!(nic.counters().rx_drops, 0);
    // RDT trails the driver by one, every buffer back with the device.
    assert_eq!(p.dev.borrow().rdt, (60 + 15) % 16);
}

#[test]
fn a_wild_rx_length_is_a_counted_drop() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    let f = ip_frame(false, 50);
    for wild in [0u16, 2049, 0xFFFF] {
        p.dev.borrow_mut().wild_rx_len = Some(wild);
        assert!(p.receive_frame(&f));
    }
    p.dev.borrow_mut().wild_rx_len = None;
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f]);
    assert_eq!(nic.counters().rx_drops, 3);
    assert_eq!(nic.extra_counters().rx_bad_length, 3);
}

#[test]
fn an_overrun_with_a_wild_rdh_is_an_error() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    let f = ip_frame(false, 50);
    for _ in 0..15 {
        assert!(p.receive_frame(&f));
    }
    assert!(!p.receive_frame(&f), "ring full: overrun");
    let ev = nic.handle_interrupt();
    assert!(ev.rx);
    assert_eq!(nic.extra_counters().rx_overruns, 1);
    assert_eq!(nic.failure(), None, "a sane RDH after an overrun is fine");
    assert_eq!(receive_all(&mut nic).len(), 15);

    p.dev.borrow_mut().rdh_read = Some(16);
    p.dev.borrow_mut().icr |= Intr::RXO.bits();
    let ev = nic.handle_interrupt();
    assert!(!ev.rx);
    assert_eq!(nic.failure(), Some("RDH out of range"));
    assert_eq!(
        nic.receive(&mut |_: &[u8], _: RxInfo| panic!("nothing is delivered")),
        Err(NicError::Device("RDH out of range"))
    );
}

#[test]
fn link_down_refuses_sends_and_is_reported() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    assert_eq!(nic.link(), LinkState::Up);
    let f = ip_frame(false, 10);
    p.set_link(false);
    let ev = nic.handle_interrupt();
    assert!(ev.link_changed);
    assert_eq!(nic.send(&f, TxChecksum::Complete), Err(NicError::LinkDown));
    assert_eq!(nic.link(), LinkState::Down);
    assert_eq!(nic.phy_read(1).unwrap() & 4, 0, "the PHY agrees");
    p.set_link(true);
    assert!(nic.handle_interrupt().link_changed);
    nic.send(&f, TxChecksum::Complete).unwrap();
    assert_eq!(nic.phy_read(1).unwrap() & 4, 4);
}

#[test]
fn interrupts_are_unmasked_acknowledged_and_reported() {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        E1000Options {
            interrupts: E1000Interrupts::Intx { vector: VECTOR },
            itr: 196,
            ..options()
        },
    );
    assert_eq!(p.reg(reg::ITR), 196);
    assert_eq!(p.dev.borrow().ims, 0, "masked until asked");
    assert!(nic.interrupt_vectors().is_empty());
    assert!(nic.set_interrupts(true));
    assert_eq!(nic.interrupt_vectors(), &[VECTOR]);
    let ims = Intr::from_bits_retain(p.dev.borrow().ims);
    assert!(ims.contains(Intr::RXT0 | Intr::LSC | Intr::RXO));
    assert!(
        !ims.contains(Intr::TXDW),
        "TX is reclaimed, never interrupted for"
    );

    assert!(p.receive_frame(&ip_frame(false, 3)));
    assert_eq!(p.interrupts(), 1);
    let ev = nic.handle_interrupt();
    assert!(ev.rx && !ev.tx && !ev.link_changed);
    assert_eq!(p.acks.get(), 1);
    assert_eq!(p.dev.borrow().icr, 0, "ICR read clears it");
    assert_eq!(receive_all(&mut nic).len(), 1);

    // A finished send raises no interrupt; a poll still finds it done.
    nic.send(&ip_frame(false, 3), TxChecksum::Complete).unwrap();
    nic.flush().unwrap();
    assert_eq!(p.interrupts(), 1);
    let ev = nic.handle_interrupt();
    assert!(ev.tx && !ev.rx);
    assert_eq!(nic.counters().interrupts, 1, "an empty ICR is no interrupt");
    assert_eq!(nic.reclaim(), Ok(1));

    assert!(nic.set_interrupts(false));
    assert_eq!(p.dev.borrow().ims, 0);
}

#[test]
fn polled_devices_report_no_interrupts() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    assert!(!nic.set_interrupts(true));
    assert!(nic.interrupt_vectors().is_empty());
    assert!(p.receive_frame(&ip_frame(false, 3)));
    assert!(nic.handle_interrupt().rx);
    assert_eq!(p.acks.get(), 0);
}

#[test]
fn dropping_gives_the_dma_memory_back() {
    let p = FakePlatform::new();
    let nic = open(&p, options());
    drop(nic);
    // Freeing twice or leaking would show here: a second device fits and frees too.
    let nic = open(&p, options());
    drop(nic);
    assert_eq!(p.dev.borrow().resets, 4, "reset at bring-up and at drop");
}

#[test]
fn rx_buffers_go_back_in_batches_and_one_by_one_after_a_full_ring() {
    let p = FakePlatform::new();
    let mut nic = open(
        &p,
        E1000Options {
            rx_ring: 64,
            ..options()
        },
    );
    let f = ip_frame(false, 30);
    let base = p.dev.borrow().rdt_writes;
    for _ in 0..20 {
        assert!(p.receive_frame(&f));
    }
    assert_eq!(receive_all(&mut nic).len(), 20);
    // A quarter of the ring (16), then the rest when the ring is found empty.
    assert_eq!(p.dev.borrow().rdt_writes - base, 2);

    // Full: the device holds 63 frames; each buffer goes straight back.
    for _ in 0..63 {
        assert!(p.receive_frame(&f));
    }
    assert!(!p.receive_frame(&f), "full");
    let base = p.dev.borrow().rdt_writes;
    let mut n = 0;
    while nic.receive(&mut |_: &[u8], _: RxInfo| n += 1).unwrap() {
        assert_eq!(
            p.dev.borrow().rdt_writes - base,
            n,
            "one RDT write per frame"
        );
    }
    assert_eq!(n, 63);
    // Drained: batches again.
    for _ in 0..20 {
        assert!(p.receive_frame(&f));
    }
    let base = p.dev.borrow().rdt_writes;
    assert_eq!(receive_all(&mut nic).len(), 20);
    assert_eq!(p.dev.borrow().rdt_writes - base, 2);
}

#[test]
fn rx_errors_and_partial_frames_are_counted_drops() {
    let p = FakePlatform::new();
    let mut nic = open(&p, options());
    let f = ip_frame(true, 40);
    p.dev.borrow_mut().rx_error_bits = 0x01; // CRC error
    assert!(p.receive_frame(&f));
    p.dev.borrow_mut().rx_error_bits = 0x80; // RX data error
    assert!(p.receive_frame(&f));
    p.dev.borrow_mut().rx_error_bits = 0;
    p.dev.borrow_mut().rx_status = Some(0x01); // DD without EOP: part of a longer frame
    assert!(p.receive_frame(&f));
    assert!(p.receive_frame(&f));
    p.dev.borrow_mut().rx_status = None;
    assert!(p.receive_frame(&f)); // its last part, with EOP
    assert!(p.receive_frame(&f));
    assert_eq!(receive_all(&mut nic), vec![f]);
    assert_eq!(nic.counters().rx_drops, 5);
    assert_eq!(nic.extra_counters().rx_errors, 5);
    assert_eq!(nic.counters().rx_packets, 1);
}
