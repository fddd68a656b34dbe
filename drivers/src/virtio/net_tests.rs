//! Host tests of the virtio-net driver against the fake device of `fake_net.rs`.

use super::fake::{FakePlatform, INTX_VECTOR};
use super::fake_net::{
    bits, complete_rx_raw, inject_rx, net_platform, push_used_raw, release_tx, set_used_idx,
    NetState, RxHeader, HDR,
};
use super::net::{
    flow_hash, NetError, NetInterrupts, NetOptions, VirtioNet, DEFAULT_QUEUE_SIZE, SLOT_SIZE,
};
use super::pci::VirtioError;
use super::status;
use crate::net::checksum::{prepare_partial_checksum, verify_l4_checksum};
use crate::net::{LinkState, Nic, NicError, RxInfo, TxChecksum, ETH_FRAME_MAX};
use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

const BASIC: u64 = bits::VERSION_1 | bits::MAC | bits::STATUS;
const ALL: u64 = BASIC
    | bits::CSUM
    | bits::GUEST_CSUM
    | bits::MRG_RXBUF
    | bits::CTRL_VQ
    | bits::MQ
    | bits::EVENT_IDX;

type Net<'p> = VirtioNet<'p, FakePlatform>;

fn open(p: &FakePlatform, options: NetOptions) -> Net<'_> {
    VirtioNet::new(p, &p.function(), options).unwrap()
}

fn polled() -> NetOptions {
    NetOptions::default()
}

fn msix(pairs: u16) -> NetOptions {
    NetOptions {
        queue_pairs: pairs,
        interrupts: NetInterrupts::Msix {
            dest_apic_id: 0,
            config: 0x40,
            pairs: (0..pairs).map(|i| 0x50 + i as u8).collect(),
        },
        ..NetOptions::default()
    }
}

/// An Ethernet + IPv4 + UDP frame from 192.168.76.2:`sport` to .1:7 with `payload` bytes.
fn udp_frame(sport: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![
        0x02, 0, 0, 0x76, 0, 1, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00,
    ];
    let total = 20 + 8 + payload;
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
    ]);
    f.extend_from_slice(&[0, 0, 192, 168, 76, 2, 192, 168, 76, 1]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&7u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend((0..payload).map(|i| (i * 7 + usize::from(sport)) as u8));
    f
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xFF; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06]);
    f.resize(42, 0x11);
    f
}

fn receive_all(net: &mut Net<'_>) -> Vec<(Vec<u8>, RxInfo)> {
    let mut got = Vec::new();
    while net
        .receive(&mut |f: &[u8], info| got.push((f.to_vec(), info)))
        .unwrap()
    {}
    got
}

fn tx_notifies(st: &Rc<RefCell<NetState>>, queue: usize) -> u64 {
    st.borrow().notifies.get(queue).copied().unwrap_or(0)
}

#[test]
fn init_negotiates_reads_config_and_fills_rx() {
    let (p, _st) = net_platform(ALL | 1 << 40 | 1 << 3, 1, 64);
    let net = open(&p, polled());
    // MTU (bit 3) and the unknown bit 40 are not asked for.
    assert_eq!(net.features(), ALL);
    assert_eq!(net.mac(), [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    assert_eq!(net.queue_pairs(), 1);
    assert_eq!(net.rx_posted(0), 64, "RX ring full");
    let d = p.dev.borrow();
    assert_eq!(d.status_log.last().copied(), Some(15), "DRIVER_OK");
    assert!(d.regs[0].enabled && d.regs[1].enabled && d.regs[2].enabled);
    assert_eq!(d.notifies, vec![0], "one RX kick after DRIVER_OK");
    drop(d);
    // One region per queue: 3 rings each for rx, tx, ctrl + rx/tx regions + ctrl buffer.
    assert_eq!(p.dma_live.borrow().len(), 3 * 3 + 2 + 1);
    let rx_region = p
        .dma_live
        .borrow()
        .values()
        .filter(|&&l| l == 64 * SLOT_SIZE)
        .count();
    assert_eq!(rx_region, 2, "one RX and one TX region of 64 slots");
    drop(net);
    assert!(p.dma_live.borrow().is_empty(), "everything given back");
    assert_eq!(p.dev.borrow().status, 0, "device reset on drop");
}

#[test]
fn without_mac_and_status_features() {
    let (p, st) = net_platform(bits::VERSION_1, 1, 16);
    st.borrow_mut().status = 0; // ignored without STATUS
    let mut net = open(&p, polled());
    assert_eq!(
        net.mac(),
        [0x02, 0x76, 0x6E, 0, 3, 0],
        "local MAC from the PCI address"
    );
    assert_eq!(net.mac()[0] & 3, 2, "locally administered unicast");
    assert_eq!(net.link(), LinkState::Up);
    assert!(!net.offloads().tx_checksum && !net.offloads().rx_checksum);
    net.send(&arp_frame(), TxChecksum::Complete).unwrap();
}

#[test]
fn legacy_only_device_is_refused() {
    let (p, _) = net_platform(BASIC & !bits::VERSION_1, 1, 16);
    let r = VirtioNet::new(&p, &p.function(), polled());
    assert!(matches!(
        r.err(),
        Some(NetError::Virtio(VirtioError::NoVersion1 { .. }))
    ));
    assert_ne!(p.dev.borrow().status & status::FAILED, 0);
    assert!(p.dma_live.borrow().is_empty());
}

#[test]
fn a_block_device_is_not_a_nic() {
    let (p, _) = net_platform(BASIC, 1, 16);
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1042u16.to_le_bytes());
    assert_eq!(
        VirtioNet::new(&p, &p.function(), polled()).err(),
        Some(NetError::NotNet {
            device_type: Some(2)
        })
    );
}

#[test]
fn tx_frames_reach_the_device_with_their_headers() {
    let (p, st) = net_platform(ALL, 1, 64);
    let mut net = open(&p, polled());
    let arp = arp_frame();
    net.send(&arp, TxChecksum::Complete).unwrap();
    let mut udp = udp_frame(40000, 100);
    let csum = prepare_partial_checksum(&mut udp).unwrap();
    assert_eq!(
        csum,
        TxChecksum::Partial {
            start: 34,
            offset: 6
        }
    );
    net.send(&udp, csum).unwrap();
    net.flush().unwrap();
    let st = st.borrow();
    assert_eq!(st.tx.len(), 2);
    assert_eq!(
        st.tx[0].header, [0u8; HDR],
        "a complete frame has a zero header"
    );
    assert_eq!(st.tx[0].frame, arp);
    assert_eq!(st.tx[0].queue, 1);
    assert_eq!(st.tx[0].descriptors, 1, "header and frame in one buffer");
    // flags NEEDS_CSUM, gso none, csum_start 34, csum_offset 6, num_buffers 0.
    assert_eq!(st.tx[1].header, [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
    assert_eq!(st.tx[1].frame, udp);
    // The device finishing it gives a valid checksum.
    let mut done = st.tx[1].frame.clone();
    assert!(crate::net::checksum::complete_partial_checksum(
        &mut done, 34, 6
    ));
    assert_eq!(verify_l4_checksum(&done), Some(true));
    let c = net.counters();
    assert_eq!(
        (c.tx_packets, c.tx_bytes),
        (2, (arp.len() + udp.len()) as u64)
    );
}

#[test]
fn thirty_two_sends_one_flush_one_notify_no_tx_interrupt() {
    for features in [ALL, ALL & !bits::EVENT_IDX] {
        let (p, st) = net_platform(features, 1, 256);
        let mut net = open(&p, msix(1));
        for round in 0..3u16 {
            for i in 0..32u16 {
                net.send(&udp_frame(1000 + i, 64), TxChecksum::Complete)
                    .unwrap();
            }
            let before = tx_notifies(&st, 1);
            net.flush().unwrap();
            assert_eq!(tx_notifies(&st, 1), before + 1, "one notify for the batch");
            assert_eq!(st.borrow().tx.len(), 32 * usize::from(round + 1));
            net.flush().unwrap();
            assert_eq!(tx_notifies(&st, 1), before + 1, "nothing new: no notify");
            assert_eq!(net.reclaim().unwrap(), 32);
        }
        assert_eq!(
            st.borrow().tx_interrupts_wanted,
            0,
            "TX interrupts suppressed"
        );
        assert_eq!(p.irq_count(0x50), 0, "no interrupt for TX");
        assert_eq!(net.pair_counters(0).unwrap().nic.notifies, 3 + 1); // + the RX kick
    }
}

#[test]
fn tx_full_then_reclaimed_by_send() {
    let (p, st) = net_platform(ALL, 1, 8);
    let mut net = open(&p, polled());
    st.borrow_mut().hold_tx = true;
    for i in 0..8 {
        net.send(&udp_frame(i, 10), TxChecksum::Complete).unwrap();
    }
    assert_eq!(
        net.send(&udp_frame(9, 10), TxChecksum::Complete),
        Err(NicError::TxFull)
    );
    net.flush().unwrap();
    assert_eq!(net.tx_in_flight_on(0), 8);
    release_tx(&p, &st);
    // A full ring reclaims on its own.
    net.send(&udp_frame(9, 10), TxChecksum::Complete).unwrap();
    assert_eq!(net.tx_in_flight_on(0), 1);
    assert_eq!(net.reclaim().unwrap(), 0);
}

#[test]
fn bad_lengths_and_missing_offload_are_refused() {
    let (p, st) = net_platform(BASIC, 1, 16);
    let mut net = open(&p, polled());
    assert_eq!(
        net.send(&[0u8; 13], TxChecksum::Complete),
        Err(NicError::BadFrameLength(13))
    );
    let big = vec![0u8; ETH_FRAME_MAX + 1];
    assert_eq!(
        net.send(&big, TxChecksum::Complete),
        Err(NicError::BadFrameLength(ETH_FRAME_MAX + 1))
    );
    let partial = TxChecksum::Partial {
        start: 34,
        offset: 6,
    };
    assert_eq!(
        net.send(&udp_frame(1, 10), partial),
        Err(NicError::OffloadUnavailable)
    );
    net.flush().unwrap();
    assert!(st.borrow().tx.is_empty());
    assert_eq!(net.counters().tx_drops, 2, "the two bad lengths");
    assert_eq!(net.counters().tx_packets, 0);
    // With CSUM, a checksum field past the frame is refused too.
    let (p, _) = net_platform(BASIC | bits::CSUM, 1, 16);
    let mut net = open(&p, polled());
    let bad = TxChecksum::Partial {
        start: 40,
        offset: 6,
    };
    assert_eq!(
        net.send(&arp_frame(), bad),
        Err(NicError::BadFrameLength(42))
    );
}

#[test]
fn rx_single_buffer_delivery_keeps_the_ring_full() {
    let (p, _st) = net_platform(BASIC, 1, 16);
    let mut net = open(&p, polled());
    let frames: Vec<Vec<u8>> = (0..40).map(|i| udp_frame(i, 1 + 30 * i as usize)).collect();
    for f in &frames {
        assert_eq!(inject_rx(&p, 0, f, RxHeader::default(), SLOT_SIZE), Some(1));
        let got = receive_all(&mut net);
        assert_eq!(got.len(), 1);
        assert_eq!(&got[0].0, f);
        assert_eq!(
            got[0].1,
            RxInfo {
                checksum_valid: false,
                queue: 0
            }
        );
        assert_eq!(net.rx_posted(0), 16);
    }
    // Many at once (up to the ring size).
    for f in &frames[..16] {
        inject_rx(&p, 0, f, RxHeader::default(), SLOT_SIZE).unwrap();
    }
    assert_eq!(
        inject_rx(&p, 0, &frames[0], RxHeader::default(), SLOT_SIZE),
        None,
        "ring empty"
    );
    let got = receive_all(&mut net);
    assert_eq!(
        got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(),
        frames[..16]
    );
    let c = net.counters();
    assert_eq!(c.rx_packets, 56);
    assert_eq!(c.rx_drops, 0);
    assert_eq!(net.rx_posted(0), 16);
}

#[test]
fn rx_kicks_are_batched() {
    let (p, st) = net_platform(BASIC, 1, 64);
    let mut net = open(&p, polled());
    let before = tx_notifies(&st, 0);
    // 64 frames back to back, received in one go: the device hears of the re-posted buffers
    // every 16 (a quarter ring) and once at the end, not once per frame.
    for i in 0..64 {
        inject_rx(&p, 0, &udp_frame(i, 20), RxHeader::default(), SLOT_SIZE).unwrap();
    }
    assert_eq!(receive_all(&mut net).len(), 64);
    assert_eq!(tx_notifies(&st, 0) - before, 4);
}

#[test]
fn rx_merged_buffers_are_reassembled() {
    let (p, _) = net_platform(ALL, 1, 64);
    let mut net = open(&p, polled());
    for (len, per_buffer, buffers) in [(1000, 200, 6), (ETH_FRAME_MAX - 42, 512, 3), (50, 200, 1)] {
        let f = udp_frame(7, len);
        assert_eq!(
            inject_rx(&p, 0, &f, RxHeader::default(), per_buffer),
            Some(buffers)
        );
        let got = receive_all(&mut net);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, f);
        assert_eq!(net.rx_posted(0), 64);
    }
    let c = net.pair_counters(0).unwrap();
    assert_eq!(c.rx_merged, 2);
    assert_eq!(c.nic.rx_drops, 0);
}

#[test]
fn rx_checksum_flags() {
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(&p, polled());
    assert!(net.offloads().rx_checksum && net.offloads().tx_checksum);
    let f = udp_frame(9, 33);
    let valid = RxHeader {
        flags: 2,
        ..RxHeader::default()
    };
    inject_rx(&p, 0, &f, valid, SLOT_SIZE).unwrap();
    inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
    // NEEDS_CSUM: the device left the pseudo-header sum; the driver finishes it, in one buffer
    // and across merged buffers.
    let mut partial = f.clone();
    prepare_partial_checksum(&mut partial).unwrap();
    let needs = RxHeader {
        flags: 1,
        csum_start: 34,
        csum_offset: 6,
        num_buffers: None,
    };
    inject_rx(&p, 0, &partial, needs, SLOT_SIZE).unwrap();
    inject_rx(&p, 0, &partial, needs, 30).unwrap();
    let got = receive_all(&mut net);
    assert_eq!(got.len(), 4);
    assert!(got[0].1.checksum_valid);
    assert!(!got[1].1.checksum_valid);
    for g in &got[2..] {
        assert!(g.1.checksum_valid);
        assert_eq!(verify_l4_checksum(&g.0), Some(true));
        assert_ne!(g.0, partial, "checksum field rewritten");
    }
    assert_eq!(net.pair_counters(0).unwrap().rx_csum_completed, 2);
    // A partial checksum whose field lies outside the frame is a drop.
    let outside = RxHeader {
        flags: 1,
        csum_start: 500,
        csum_offset: 6,
        num_buffers: None,
    };
    inject_rx(&p, 0, &f, outside, SLOT_SIZE).unwrap();
    assert!(receive_all(&mut net).is_empty());
    assert_eq!(net.counters().rx_drops, 1);
    assert_eq!(net.rx_posted(0), 16);
}

#[test]
fn rx_checksum_flags_ignored_without_guest_csum() {
    let (p, _) = net_platform(BASIC, 1, 16);
    let mut net = open(&p, polled());
    let f = udp_frame(9, 33);
    inject_rx(
        &p,
        0,
        &f,
        RxHeader {
            flags: 2,
            ..RxHeader::default()
        },
        SLOT_SIZE,
    )
    .unwrap();
    let got = receive_all(&mut net);
    assert!(!got[0].1.checksum_valid, "DATA_VALID is not ours to trust");
}

#[test]
fn rx_interrupts_follow_set_interrupts() {
    for features in [ALL, ALL & !bits::EVENT_IDX] {
        let (p, _) = net_platform(features, 1, 16);
        let mut net = open(&p, msix(1));
        assert_eq!(net.interrupt_vectors(), &[0x40, 0x50]);
        let f = udp_frame(1, 10);
        inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
        assert_eq!(p.irq_count(0x50), 1);
        let ev = net.handle_interrupt();
        assert!(ev.rx && !ev.link_changed);
        assert_eq!(receive_all(&mut net).len(), 1);
        assert_eq!(net.counters().interrupts, 1);
        assert!(net.set_interrupts(false));
        for _ in 0..3 {
            // A frame arriving right after a receive that popped the last one (which moved
            // used_event to the next entry) too.
            inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
            assert!(net.receive(&mut |_, _| {}).unwrap());
            inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
            assert_eq!(receive_all(&mut net).len(), 1);
        }
        assert_eq!(p.irq_count(0x50), 1, "no RX interrupt while off");
        assert!(net.set_interrupts(true));
        inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
        assert_eq!(p.irq_count(0x50), 2);
    }
    // Polled: no interrupts to turn on.
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(&p, polled());
    assert!(!net.set_interrupts(true));
    assert!(net.interrupt_vectors().is_empty());
}

#[test]
fn multiqueue_asks_for_pairs_and_spreads_flows() {
    let (p, st) = net_platform(ALL, 4, 32);
    let mut net = open(&p, msix(2));
    assert_eq!(net.queue_pairs(), 2);
    assert!(!net.mq_refused());
    // class MQ (4), command VQ_PAIRS_SET (0), virtqueue_pairs 2 (LE).
    assert_eq!(st.borrow().ctrl, vec![vec![4, 0, 2, 0]]);
    {
        let d = p.dev.borrow();
        // Queues rx0 tx0 rx1 tx1 on table entries 1..=4; ctrl (index 2 * 4 = 8) on entry 5.
        let entries: Vec<u16> = [0, 1, 2, 3, 8].iter().map(|&q| d.regs[q].msix).collect();
        assert_eq!(entries, vec![1, 2, 3, 4, 5]);
        assert!(!d.regs[4].enabled, "pairs not asked for stay off");
        assert_eq!(d.config_msix, 0);
        let vector = |e: usize| d.msix_table[16 * e + 8];
        assert_eq!(
            (0..6).map(vector).collect::<Vec<_>>(),
            vec![0x40, 0x50, 0x50, 0x51, 0x51, 0x40]
        );
    }
    assert_eq!(net.interrupt_vectors(), &[0x40, 0x50, 0x51]);
    // Flows spread over both pairs; each flow stays on its pair; ARP goes to pair 0.
    let mut used = [0usize; 2];
    for port in 0..64u16 {
        let f = udp_frame(port, 20);
        let pair = net.tx_pair_for(&f);
        assert_eq!(
            pair,
            net.tx_pair_for(&udp_frame(port, 500)),
            "same flow, same pair"
        );
        used[pair] += 1;
        net.send(&f, TxChecksum::Complete).unwrap();
    }
    assert!(used[0] > 10 && used[1] > 10, "{used:?}");
    assert_eq!(net.tx_pair_for(&arp_frame()), 0);
    net.flush().unwrap();
    let st_ref = st.borrow();
    for (pair, &n) in used.iter().enumerate() {
        let on_queue = st_ref
            .tx
            .iter()
            .filter(|t| t.queue == 2 * pair as u16 + 1)
            .count();
        assert_eq!(on_queue, n);
    }
    drop(st_ref);
    assert_eq!(
        tx_notifies(&st, 1) + tx_notifies(&st, 3),
        2,
        "one notify per pair"
    );
    // RX on both pairs, polled round robin, each on its own vector.
    for i in 0..4 {
        inject_rx(
            &p,
            0,
            &udp_frame(100 + i, 10),
            RxHeader::default(),
            SLOT_SIZE,
        )
        .unwrap();
        inject_rx(
            &p,
            1,
            &udp_frame(200 + i, 10),
            RxHeader::default(),
            SLOT_SIZE,
        )
        .unwrap();
    }
    assert_eq!((p.irq_count(0x50), p.irq_count(0x51)), (1, 1));
    let got = receive_all(&mut net);
    let queues: Vec<u16> = got.iter().map(|g| g.1.queue).collect();
    assert_eq!(queues, vec![0, 1, 0, 1, 0, 1, 0, 1]);
    net.handle_interrupt();
    let (c0, c1) = (net.pair_counters(0).unwrap(), net.pair_counters(1).unwrap());
    assert_eq!((c0.nic.rx_packets, c1.nic.rx_packets), (4, 4));
    assert_eq!((c0.nic.interrupts, c1.nic.interrupts), (1, 1));
    assert_eq!((c0.nic.tx_packets + c1.nic.tx_packets), 64);
    assert!(net.pair_counters(2).is_none());
}

#[test]
fn multiqueue_refused_falls_back_to_one_pair() {
    let (p, st) = net_platform(ALL, 2, 16);
    st.borrow_mut().ctrl_ack = 1;
    let mut net = open(&p, msix(2));
    assert_eq!(st.borrow().ctrl.len(), 1);
    assert!(net.mq_refused());
    assert_eq!(net.queue_pairs(), 1);
    for port in 0..16 {
        net.send(&udp_frame(port, 20), TxChecksum::Complete)
            .unwrap();
    }
    net.flush().unwrap();
    assert!(
        st.borrow().tx.iter().all(|t| t.queue == 1),
        "everything on pair 0"
    );
    assert_eq!(net.interrupt_vectors(), &[0x40, 0x50]);
}

#[test]
fn pairs_limited_by_msix_table_device_and_vectors() {
    // The fake's table has 8 entries: 4 pairs would need 10, 3 need 8.
    let (p, st) = net_platform(ALL, 4, 16);
    let net = open(&p, msix(4));
    assert_eq!(net.queue_pairs(), 3);
    assert_eq!(st.borrow().ctrl, vec![vec![4, 0, 3, 0]]);
    drop(net);
    // The device offers 2: asking for 4 gets 2.
    let (p, _) = net_platform(ALL, 2, 16);
    let net = open(
        &p,
        NetOptions {
            queue_pairs: 4,
            ..polled()
        },
    );
    assert_eq!(net.queue_pairs(), 2);
    drop(net);
    // Without MQ, one pair and no command.
    let (p, st) = net_platform(ALL & !bits::MQ, 2, 16);
    let net = open(
        &p,
        NetOptions {
            queue_pairs: 2,
            ..polled()
        },
    );
    assert_eq!(net.queue_pairs(), 1);
    assert!(st.borrow().ctrl.is_empty());
    drop(net);
    // One pair wanted with MQ: no command either (one pair is the default).
    let (p, st) = net_platform(ALL, 2, 16);
    let _net = open(&p, polled());
    assert!(st.borrow().ctrl.is_empty());
}

#[test]
fn bad_max_virtqueue_pairs_is_refused() {
    for bad in [0u16, 0x8001] {
        let (p, st) = net_platform(ALL, 1, 16);
        st.borrow_mut().max_pairs = bad;
        assert!(matches!(
            VirtioNet::new(&p, &p.function(), polled()).err(),
            Some(NetError::BadConfig(_))
        ));
    }
}

#[test]
fn link_change_reaches_the_trait() {
    for options in [
        msix(1),
        polled(),
        NetOptions {
            interrupts: NetInterrupts::Intx {
                vector: INTX_VECTOR,
            },
            ..polled()
        },
    ] {
        let (p, st) = net_platform(ALL, 1, 16);
        let mut net = open(&p, options.clone());
        assert_eq!(net.link(), LinkState::Up);
        st.borrow_mut().status = 0;
        p.config_interrupt();
        if options.interrupts == NetInterrupts::Polled {
            p.now.set(p.now.get() + 20_000_000); // the status poll is due
        }
        let ev = net.handle_interrupt();
        assert!(ev.link_changed, "{options:?}");
        assert!(!net.handle_interrupt().link_changed, "reported once");
        assert_eq!(net.link(), LinkState::Down);
        assert_eq!(
            net.send(&arp_frame(), TxChecksum::Complete),
            Err(NicError::LinkDown)
        );
        assert_eq!(net.counters().tx_drops, 1);
        st.borrow_mut().status = 1;
        p.config_interrupt();
        p.now.set(p.now.get() + 20_000_000);
        assert!(net.handle_interrupt().link_changed);
        net.send(&arp_frame(), TxChecksum::Complete).unwrap();
    }
}

#[test]
fn intx_acknowledges_through_the_isr() {
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(
        &p,
        NetOptions {
            interrupts: NetInterrupts::Intx {
                vector: INTX_VECTOR,
            },
            ..polled()
        },
    );
    assert_eq!(net.interrupt_vectors(), &[INTX_VECTOR]);
    inject_rx(&p, 0, &udp_frame(1, 10), RxHeader::default(), SLOT_SIZE).unwrap();
    assert_eq!(p.irq_count(INTX_VECTOR), 1);
    let ev = net.handle_interrupt();
    assert!(ev.rx && !ev.link_changed);
    assert_eq!(p.dev.borrow().isr, 0, "ISR read");
    assert_eq!(net.counters().interrupts, 1);
}

// --- A device that misbehaves ---

#[test]
fn used_ids_out_of_range_or_not_in_flight_are_drops() {
    let (p, _) = net_platform(BASIC, 1, 16);
    let mut net = open(&p, polled());
    {
        let mut dev = p.dev.borrow_mut();
        let q = dev.queues[0].as_mut().unwrap();
        push_used_raw(q, &p.mem, 16, 100); // out of range
        push_used_raw(q, &p.mem, u32::MAX, 100);
    }
    // Every RX head is in flight (the ring is full); a head not in flight is tried on TX below.
    inject_rx(&p, 0, &udp_frame(1, 10), RxHeader::default(), SLOT_SIZE).unwrap();
    let got = receive_all(&mut net);
    assert_eq!(got.len(), 1, "the good frame still arrives");
    let c = net.pair_counters(0).unwrap();
    assert_eq!((c.nic.rx_drops, c.device_errors), (2, 2));
    assert_eq!(net.rx_posted(0), 16);
    // TX: a completion for a chain never sent.
    net.send(&arp_frame(), TxChecksum::Complete).unwrap();
    {
        let mut dev = p.dev.borrow_mut();
        let q = dev.queues[1].as_mut().unwrap();
        push_used_raw(q, &p.mem, 5, 0);
    }
    assert_eq!(net.reclaim().unwrap(), 0);
    assert_eq!(net.pair_counters(0).unwrap().device_errors, 3);
    net.flush().unwrap();
    assert_eq!(net.reclaim().unwrap(), 1);
    assert_eq!(net.tx_in_flight_on(0), 0);
}

#[test]
fn used_length_past_the_buffer_or_short_header() {
    let (p, _) = net_platform(BASIC, 1, 16);
    let mut net = open(&p, polled());
    complete_rx_raw(&p, 0, &[0u8; 12], SLOT_SIZE as u32 + 1);
    complete_rx_raw(&p, 0, &[0u8; 4], 4);
    complete_rx_raw(&p, 0, &[0u8; 12], 12 + 10); // frame shorter than an Ethernet header
    assert!(receive_all(&mut net).is_empty());
    let c = net.pair_counters(0).unwrap();
    assert_eq!(c.nic.rx_drops, 3);
    assert_eq!(net.rx_posted(0), 16, "the buffers are posted again");
    // Still works.
    let f = udp_frame(3, 40);
    inject_rx(&p, 0, &f, RxHeader::default(), SLOT_SIZE).unwrap();
    assert_eq!(receive_all(&mut net)[0].0, f);
}

#[test]
fn garbage_num_buffers_is_a_drop() {
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(&p, polled());
    let f = udp_frame(3, 300);
    for bad in [0u16, 17, 0xFFFF] {
        inject_rx(
            &p,
            0,
            &f,
            RxHeader {
                num_buffers: Some(bad),
                ..RxHeader::default()
            },
            SLOT_SIZE,
        )
        .unwrap();
    }
    // More buffers claimed than the device returned.
    inject_rx(
        &p,
        0,
        &f,
        RxHeader {
            num_buffers: Some(3),
            ..RxHeader::default()
        },
        SLOT_SIZE,
    )
    .unwrap();
    assert!(receive_all(&mut net).is_empty());
    let c = net.pair_counters(0).unwrap();
    assert_eq!(c.nic.rx_drops, 4);
    assert_eq!(net.rx_posted(0), 16);
    // A merged frame longer than a full frame.
    let long = vec![0xAB; ETH_FRAME_MAX + 1];
    inject_rx(&p, 0, &long, RxHeader::default(), 1000).unwrap();
    assert!(receive_all(&mut net).is_empty());
    assert_eq!(net.counters().rx_drops, 5);
    assert_eq!(net.rx_posted(0), 16);
    let good = udp_frame(4, 1000);
    inject_rx(&p, 0, &good, RxHeader::default(), 256).unwrap();
    assert_eq!(receive_all(&mut net)[0].0, good);
}

#[test]
fn used_index_jump_stops_the_driver() {
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(&p, polled());
    set_used_idx(&p, 0, 100);
    let r = net.receive(&mut |_, _| panic!("nothing may be delivered"));
    assert!(matches!(r, Err(NicError::Device(_))));
    assert_eq!(
        p.dev.borrow().status,
        0,
        "device reset: it no longer touches our memory"
    );
    assert!(matches!(
        net.send(&arp_frame(), TxChecksum::Complete),
        Err(NicError::Device(_))
    ));
    assert!(matches!(net.flush(), Err(NicError::Device(_))));
    assert!(matches!(net.reclaim(), Err(NicError::Device(_))));
    assert!(net.fatal_error().is_some());
    assert_eq!(net.link(), LinkState::Down);
    drop(net);
    assert!(p.dma_live.borrow().is_empty());
    // The same on TX.
    let (p, _) = net_platform(ALL, 1, 16);
    let mut net = open(&p, polled());
    set_used_idx(&p, 1, 0x8000);
    assert!(matches!(net.reclaim(), Err(NicError::Device(_))));
}

#[test]
fn needs_reset_is_reported() {
    for options in [msix(1), polled()] {
        let (p, _) = net_platform(ALL, 1, 16);
        let mut net = open(&p, options);
        p.dev.borrow_mut().status |= status::DEVICE_NEEDS_RESET;
        p.config_interrupt();
        p.now.set(p.now.get() + 20_000_000);
        let ev = net.handle_interrupt();
        assert!(ev.link_changed);
        assert_eq!(net.fatal_error(), Some("device needs reset"));
        assert!(matches!(
            net.send(&arp_frame(), TxChecksum::Complete),
            Err(NicError::Device(_))
        ));
        assert!(matches!(
            net.receive(&mut |_, _| {}),
            Err(NicError::Device(_))
        ));
    }
}

#[test]
fn ctrl_queue_that_never_answers_times_out() {
    let (p, _) = net_platform(ALL, 2, 16);
    p.dev.borrow_mut().auto_process = false; // nothing is ever processed
    let r = VirtioNet::new(
        &p,
        &p.function(),
        NetOptions {
            queue_pairs: 2,
            ..polled()
        },
    );
    assert_eq!(r.err(), Some(NetError::CtrlTimeout));
    assert!(
        p.dma_live.borrow().is_empty(),
        "failed init gives everything back"
    );
}

#[test]
fn out_of_dma_memory_during_setup_leaks_nothing() {
    for budget in 0..12 {
        let (p, _) = net_platform(ALL, 1, 16);
        p.dma_budget.set(Some(budget));
        let r = VirtioNet::new(&p, &p.function(), polled());
        assert!(r.is_err(), "budget {budget}");
        drop(r);
        assert!(p.dma_live.borrow().is_empty(), "budget {budget}");
    }
}

#[test]
fn flow_hash_is_per_flow() {
    assert_eq!(flow_hash(&arp_frame()), None);
    let a = flow_hash(&udp_frame(1, 10)).unwrap();
    assert_eq!(a, flow_hash(&udp_frame(1, 999)).unwrap());
    assert_ne!(a, flow_hash(&udp_frame(2, 10)).unwrap());
    // Fragments hash without ports, so all fragments of a datagram stay together.
    let mut frag = udp_frame(1, 10);
    frag[14 + 6] = 0x20;
    let mut frag2 = udp_frame(2, 10);
    frag2[14 + 6] = 0x20;
    assert_eq!(flow_hash(&frag), flow_hash(&frag2));
    assert_eq!(flow_hash(&[0u8; 3]), None);
}

#[test]
fn default_options() {
    let o = NetOptions::default();
    assert_eq!((o.queue_pairs, o.queue_size), (1, DEFAULT_QUEUE_SIZE));
    assert_eq!(o.interrupts, NetInterrupts::Polled);
    assert_eq!(VirtioNet::<FakePlatform>::msix_entries_for(2, true), 6);
}

#[test]
fn one_msix_entry_is_shared_by_everything() {
    let (p, st) = net_platform(ALL, 2, 16);
    // A table of one entry (message control's size field is the entry count minus one).
    p.cfg.borrow_mut()[super::fake::CAP_MSIX + 2] = 0;
    let mut net = open(&p, msix(2));
    assert_eq!(net.queue_pairs(), 1, "no vector per pair: one pair");
    assert!(st.borrow().ctrl.is_empty());
    {
        let d = p.dev.borrow();
        assert_eq!(
            (
                d.config_msix,
                d.regs[0].msix,
                d.regs[1].msix,
                d.regs[4].msix
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(d.msix_table[8], 0x50);
    }
    assert_eq!(net.interrupt_vectors(), &[0x50]);
    inject_rx(&p, 0, &udp_frame(1, 10), RxHeader::default(), SLOT_SIZE).unwrap();
    let ev = net.handle_interrupt();
    assert!(ev.rx && !ev.link_changed);
    assert_eq!(net.pair_counters(0).unwrap().nic.interrupts, 1);
    // A config change arrives on the shared vector and is still seen.
    st.borrow_mut().status = 0;
    p.config_interrupt();
    assert_eq!(p.irq_count(0x50), 2);
    assert!(net.handle_interrupt().link_changed);
    assert_eq!(net.link(), LinkState::Down);
}

#[test]
fn tx_completion_claiming_written_bytes_frees_the_slot() {
    let (p, st) = net_platform(ALL, 1, 8);
    let mut net = open(
        &p,
        NetOptions {
            queue_size: 8,
            ..polled()
        },
    );
    st.borrow_mut().hold_tx = true;
    net.send(&arp_frame(), TxChecksum::Complete).unwrap();
    net.flush().unwrap();
    let (_, head) = st.borrow_mut().held_tx.pop().unwrap();
    {
        let mut dev = p.dev.borrow_mut();
        let q = dev.queues[1].as_mut().unwrap();
        push_used_raw(q, &p.mem, u32::from(head), 64); // a read-only chain: nothing written
    }
    assert_eq!(net.reclaim().unwrap(), 1);
    assert_eq!(net.tx_in_flight_on(0), 0);
    assert_eq!(net.pair_counters(0).unwrap().device_errors, 1);
    // All 8 slots usable again.
    for i in 0..8 {
        net.send(&udp_frame(i, 10), TxChecksum::Complete).unwrap();
    }
}

#[test]
fn queue_size_is_capped_by_the_options_and_the_device() {
    let (p, _) = net_platform(ALL, 1, 128);
    let net = open(
        &p,
        NetOptions {
            queue_size: 32,
            ..polled()
        },
    );
    assert_eq!(net.rx_posted(0), 32);
    assert_eq!(p.dev.borrow().regs[1].size, 32);
    drop(net);
    let (p, _) = net_platform(ALL, 1, 1024);
    let net = open(
        &p,
        NetOptions {
            queue_size: 4096,
            ..polled()
        },
    );
    assert_eq!(net.rx_posted(0), usize::from(DEFAULT_QUEUE_SIZE));
}

#[test]
fn fewer_queues_than_max_pairs_need_is_refused() {
    // The config claims 4 pairs, the function has queues for 2 (and a control queue).
    let (p, st) = net_platform(ALL, 2, 16);
    st.borrow_mut().max_pairs = 4;
    assert_eq!(
        VirtioNet::new(&p, &p.function(), polled()).err(),
        Some(NetError::BadConfig("fewer queues than the pairs need"))
    );
    assert_ne!(p.dev.borrow().status & status::FAILED, 0);
    assert!(p.dma_live.borrow().is_empty());
}
