//! The user backend driven by crafted guest frames: `restrict=on` drops SYNs to the host
//! alias, and a SYN flood of thousands of connections stays within the flow limits (the
//! excess refused and counted, host descriptors bounded), expires, and leaves the backend
//! serving a legitimate connection afterwards.

use super::limits::FlowLimits;
use super::options::UserOptions;
use super::UserBackend;
use crate::backends::net::{FrameMeta, NetBackend};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, IpAddress,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
};
use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const HOST: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

/// A guest TCP segment to the host alias: SYN (`ack` None) or a bare ACK.
fn segment(
    to: EthernetAddress,
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: Option<u32>,
) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 20 + 20];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(to);
    eth.set_src_addr(GUEST_MAC);
    eth.set_ethertype(EthernetProtocol::Ipv4);
    let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(40);
    ip.set_hop_limit(64);
    ip.set_next_header(IpProtocol::Tcp);
    ip.set_src_addr(GUEST);
    ip.set_dst_addr(HOST);
    ip.fill_checksum();
    let mut tcp = TcpPacket::new_unchecked(&mut f[34..]);
    tcp.set_src_port(src_port);
    tcp.set_dst_port(dst_port);
    tcp.set_seq_number(smoltcp::wire::TcpSeqNumber(seq as i32));
    tcp.set_header_len(20);
    tcp.set_window_len(65535);
    match ack {
        None => tcp.set_syn(true),
        Some(a) => {
            tcp.set_ack(true);
            tcp.set_ack_number(smoltcp::wire::TcpSeqNumber(a as i32));
        }
    }
    tcp.fill_checksum(&IpAddress::Ipv4(GUEST), &IpAddress::Ipv4(HOST));
    f
}

/// Every frame the backend has for the guest now: the (guest port, seq) of each SYN-ACK, and
/// how many resets.
fn drain(b: &mut UserBackend) -> (Vec<(u16, u32)>, usize) {
    let (mut syn_acks, mut resets) = (Vec::new(), 0);
    let mut buf = vec![0u8; 2048];
    while let Ok(Some((n, _))) = b.receive(&mut buf) {
        let Ok(eth) = EthernetFrame::new_checked(&buf[..n]) else {
            continue;
        };
        let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
            continue;
        };
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            continue;
        };
        if tcp.syn() && tcp.ack() {
            syn_acks.push((tcp.dst_port(), tcp.seq_number().0 as u32));
        }
        if tcp.rst() {
            resets += 1;
        }
    }
    (syn_acks, resets)
}

/// How many connections `syn_acks` answer: one per port, with one initial sequence number
/// each. smoltcp sends an unanswered SYN-ACK again after its RTO (1 s), so how many copies a
/// drain finds depends on how long the test took to get there; the connections do not.
fn answered(syn_acks: &[(u16, u32)]) -> usize {
    let connections: HashSet<(u16, u32)> = syn_acks.iter().copied().collect();
    let ports: HashSet<u16> = syn_acks.iter().map(|&(port, _)| port).collect();
    assert_eq!(
        ports.len(),
        connections.len(),
        "one ISN a port: {syn_acks:?}"
    );
    connections.len()
}

/// The guest's ARP request for the host alias (so the backend knows the guest's MAC), its
/// answer drained.
fn arp(b: &mut UserBackend) {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: HOST,
    };
    let mut f = vec![0u8; 14 + repr.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
    eth.set_dst_addr(EthernetAddress::BROADCAST);
    eth.set_src_addr(GUEST_MAC);
    eth.set_ethertype(EthernetProtocol::Arp);
    repr.emit(&mut ArpPacket::new_unchecked(&mut f[14..]));
    send(b, &f);
    drain(b);
}

/// One frame as its own TX batch, as a NIC model hands them over (`transmit`, then `flush`).
fn send(b: &mut UserBackend, frame: &[u8]) {
    b.transmit(&FrameMeta::default(), frame).unwrap();
    b.flush().unwrap();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A loopback listener whose connections an accept thread takes and keeps open (they are
/// descriptors of this process too: the count says how many).
fn loopback_sink() -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let held_count = count.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            held.push(c);
            held_count.store(held.len(), Ordering::SeqCst);
        }
    });
    (port, count)
}

/// Our descriptors beyond `before`, less the sink's.
fn our_new_fds(before: usize, sink: &AtomicUsize) -> usize {
    // The sink's count may trail its accepts by a moment.
    std::thread::sleep(Duration::from_millis(50));
    open_fds().saturating_sub(before + sink.load(Ordering::SeqCst))
}

#[test]
fn restrict_on_drops_syns_to_the_host_alias() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let opts = UserOptions::parse(&[("restrict".into(), "on".into())]).unwrap();
    let mut b = UserBackend::new(opts).unwrap();
    let to = b.mac();
    send(&mut b, &segment(to, 40000, port, 1000, None));
    b.poll();
    assert_eq!(drain(&mut b), (vec![], 0), "no SYN-ACK, no RST: dropped");
    assert_eq!(b.user_counters().tcp_refused_restricted, 1);
    assert!(l.accept().is_err(), "the host saw no connection");
}

#[test]
fn a_syn_flood_stays_within_the_limits() {
    let (port, sink) = loopback_sink();
    let limits = FlowLimits {
        half_open_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..FlowLimits::default()
    };
    let mut b = UserBackend::with_limits(UserOptions::default(), limits).unwrap();
    let to = b.mac();
    arp(&mut b);
    let fds_before = open_fds();
    // Thousands of SYNs never acknowledged: only the half-open limit's worth get a host socket.
    const FLOOD: u16 = 3000;
    for i in 0..FLOOD {
        send(&mut b, &segment(to, 10_000 + i, port, 1, None));
    }
    let (syn_acks, _) = drain(&mut b);
    let c = b.user_counters();
    assert_eq!(c.tcp_opened, limits.max_half_open as u64);
    assert_eq!(answered(&syn_acks), limits.max_half_open);
    assert_eq!(c.tcp_refused_half_open, u64::from(FLOOD) - c.tcp_opened);
    let ours = our_new_fds(fds_before, &sink);
    assert!(ours <= limits.max_half_open + 16, "{ours} new descriptors");
    // They expire, at both ends.
    std::thread::sleep(limits.half_open_timeout);
    b.poll();
    drain(&mut b);
    let c = b.user_counters();
    assert_eq!(c.tcp_closed_half_open, limits.max_half_open as u64);
    assert_eq!(c.tcp_open, 0);
    // Handshakes completed one by one: the flow limit holds, the rest are refused.
    let mut established = 0;
    for i in 0..(limits.max_flows as u16 + 100) {
        let src = 20_000 + i;
        send(&mut b, &segment(to, src, port, 1, None));
        let (syn_acks, _) = drain(&mut b);
        if let Some(&(_, seq)) = syn_acks.iter().find(|(p, _)| *p == src) {
            send(
                &mut b,
                &segment(to, src, port, 2, Some(seq.wrapping_add(1))),
            );
            drain(&mut b);
            established += 1;
        }
    }
    let c = b.user_counters();
    assert_eq!(established, limits.max_flows);
    assert_eq!(c.tcp_open, limits.max_flows as u64);
    assert_eq!(c.tcp_refused_too_many, 100);
    let ours = our_new_fds(fds_before, &sink);
    assert!(ours <= limits.max_flows + 16, "{ours} new descriptors");
    // Idle, they are closed too; then a legitimate connection still works.
    std::thread::sleep(limits.idle_timeout);
    b.poll();
    drain(&mut b);
    let c = b.user_counters();
    assert_eq!(c.tcp_closed_idle, limits.max_flows as u64);
    assert_eq!(c.tcp_open, 0);
    send(&mut b, &segment(to, 30_000, port, 1, None));
    let (syn_acks, _) = drain(&mut b);
    assert_eq!(answered(&syn_acks), 1, "a new connection after the flood");
}

#[test]
fn host_connects_settle_without_blocking() {
    let (open, _sink) = loopback_sink();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut b = UserBackend::new(UserOptions::default()).unwrap();
    let to = b.mac();
    arp(&mut b);
    // Nothing listens: the SYN is reset once the connect fails.
    let start = std::time::Instant::now();
    send(&mut b, &segment(to, 41000, closed, 1, None));
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "transmit blocked"
    );
    b.poll();
    assert_eq!(drain(&mut b), (vec![], 1));
    assert_eq!(b.user_counters().tcp_refused_by_host, 1);
    // A listener: the SYN is held until the connect is done, then answered; its
    // retransmission while held is not a second connect.
    send(&mut b, &segment(to, 41001, open, 1, None));
    send(&mut b, &segment(to, 41001, open, 1, None));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut syn_acks = Vec::new();
    while syn_acks.is_empty() && std::time::Instant::now() < deadline {
        b.poll();
        syn_acks = drain(&mut b).0;
    }
    assert_eq!(syn_acks.len(), 1);
    assert_eq!(b.user_counters().tcp_opened, 1);
}
