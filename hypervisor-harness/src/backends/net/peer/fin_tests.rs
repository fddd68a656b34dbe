//! The peer's FIN over a lossy wire: a client smoltcp reads from the TCP source while a
//! script drops chosen frames, on the stack's clock moved by hand (no waiting). The losses
//! are the ones that left the virtio-net faulty-wire test without the peer's FIN: a segment
//! lost near the end and resent by timeout with the ones after it, the client's duplicate
//! ACKs of the end, and a FIN lost on top.

use super::pattern::PatternStream;
use super::stack::{PeerStack, PEER_IP};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, HardwareAddress, IpAddress, IpCidr,
    IpProtocol, Ipv4Address, Ipv4Packet, TcpPacket,
};
use std::collections::VecDeque;
use std::time::Duration;

const CLIENT_IP: Ipv4Address = Ipv4Address::new(192, 168, 76, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x76, 0x00, 0x02];
/// The peer's segments carry 1460 bytes (a 1500-byte IP MTU, no TCP options).
const MSS: usize = 1460;
/// Ten and a half segments, so the last one is short.
const LENGTH: usize = 10 * MSS + 700;
const SEED: u64 = 0xf1f1;
/// The segment whose first copy is lost: four full segments and the short one follow it.
const HOLE_SEGMENT: usize = 6;

/// The client's wire: frames in, frames out.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((Rx(frame), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// A TCP segment's fields the script looks at.
struct Segment {
    seq: u32,
    ack: u32,
    syn: bool,
    fin: bool,
    payload: usize,
}

fn segment(frame: &[u8]) -> Option<Segment> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    Some(Segment {
        seq: tcp.seq_number().0 as u32,
        ack: tcp.ack_number().0 as u32,
        syn: tcp.syn(),
        fin: tcp.fin(),
        payload: tcp.payload().len(),
    })
}

/// What went over the wire, counted.
#[derive(Debug, Default, PartialEq, Eq)]
struct WireCounts {
    /// Segments from the peer with FIN, and those of them that also carried data.
    fins: u32,
    fins_with_data: u32,
    /// What the script dropped.
    dropped_hole: u32,
    dropped_dup_acks: u32,
    dropped_fins: u32,
    /// Client SYNs the script sent twice.
    dup_syns: u32,
    /// Times the script moved the peer's clock to its next deadline.
    clock_moves: u32,
}

/// What the script drops.
#[derive(Clone, Copy)]
struct Losses {
    /// The first copy of segment [`HOLE_SEGMENT`], and the client's ACKs of the hole's start
    /// (so that the peer resends by timeout, the hole and everything after it at once, rather
    /// than by fast retransmit).
    hole: bool,
    /// The first FIN that carries no data.
    first_bare_fin: bool,
    /// Not a loss: the client's SYN goes twice.
    dup_syn: bool,
}

const NO_LOSSES: Losses = Losses {
    hole: false,
    first_bare_fin: false,
    dup_syn: false,
};

/// Read the whole source stream through a client smoltcp (from local `port`) from `peer`,
/// the script dropping `losses`; after the peer's FIN the client closes too, and the
/// exchange goes on until its socket is closed or in TIME-WAIT. Returns the bytes read,
/// whether the client saw the FIN, and the counts.
fn read_source(peer: &mut PeerStack, port: u16, losses: Losses) -> (Vec<u8>, bool, WireCounts) {
    let mut queues = Queues::default();
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
    config.random_seed = 1;
    let mut iface = Interface::new(config, &mut queues, SmolInstant::ZERO);
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24)).unwrap();
    });
    let mut sockets = SocketSet::new(Vec::new());
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; 64 << 10]),
        tcp::SocketBuffer::new(vec![0; 4096]),
    );
    sock.set_ack_delay(None);
    let h = sockets.add(sock);
    sockets
        .get_mut::<tcp::Socket>(h)
        .connect(iface.context(), (IpAddress::Ipv4(PEER_IP), 19), port)
        .unwrap();
    // The client only acknowledges: its clock barely matters.
    let mut client_now = SmolInstant::ZERO;
    let mut request_sent = false;
    let mut hole = None;
    let mut counts = WireCounts::default();
    let mut got = Vec::new();
    let mut fin_seen = false;
    for _ in 0..200 {
        iface.poll(client_now, &mut queues, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(h);
        if !request_sent && s.may_send() {
            let mut request = [0u8; 16];
            request[..8].copy_from_slice(&(LENGTH as u64).to_le_bytes());
            request[8..].copy_from_slice(&SEED.to_le_bytes());
            s.send_slice(&request).unwrap();
            request_sent = true;
            iface.poll(client_now, &mut queues, &mut sockets);
        }
        let s = sockets.get_mut::<tcp::Socket>(h);
        // Read only once the stream is whole: a read moves the window, and ACKs that differ
        // in their window are not duplicates.
        // (may_recv: established and no FIN yet; the request goes once established.)
        if request_sent && !s.may_recv() && !fin_seen {
            fin_seen = true;
            s.close();
        }
        if s.recv_queue() == LENGTH - got.len() || fin_seen {
            while let Ok(chunk) = s.recv(|d| (d.len(), d.to_vec())) {
                if chunk.is_empty() {
                    break;
                }
                got.extend_from_slice(&chunk);
            }
        }
        if fin_seen && matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
            return (got, true, counts);
        }
        let mut moved = false;
        while let Some(frame) = queues.tx.pop_front() {
            moved = true;
            let seg = segment(&frame);
            if losses.hole && seg.as_ref().is_some_and(|seg| Some(seg.ack) == hole) {
                counts.dropped_dup_acks += 1;
                continue;
            }
            peer.input(&frame);
            if losses.dup_syn && seg.is_some_and(|seg| seg.syn) && counts.dup_syns == 0 {
                counts.dup_syns += 1;
                peer.input(&frame);
            }
        }
        while let Some(frame) = peer.output() {
            moved = true;
            let mut lost = false;
            if let Some(seg) = segment(&frame) {
                if seg.payload > 0 && hole.is_none() {
                    // The first data segment: the hole is HOLE_SEGMENT segments on.
                    hole = Some(seg.seq.wrapping_add((HOLE_SEGMENT * MSS) as u32));
                }
                if seg.fin {
                    counts.fins += 1;
                    counts.fins_with_data += u32::from(seg.payload > 0);
                    if losses.first_bare_fin && seg.payload == 0 && counts.dropped_fins == 0 {
                        counts.dropped_fins += 1;
                        lost = true;
                    }
                }
                if losses.hole
                    && Some(seg.seq) == hole
                    && seg.payload > 0
                    && counts.dropped_hole == 0
                {
                    counts.dropped_hole += 1;
                    lost = true;
                }
            }
            if !lost {
                queues.rx.push_back(frame.clone());
            }
            peer.recycle(frame);
        }
        if !moved && queues.rx.is_empty() {
            // Quiet: only the peer's next timer can move things on.
            let Some(delay) = peer.poll() else {
                break;
            };
            peer.advance_clock(delay + Duration::from_millis(1));
            client_now += smoltcp::time::Duration::from_millis(1);
            counts.clock_moves += 1;
            peer.poll();
        }
    }
    (got, fin_seen, counts)
}

fn pattern() -> Vec<u8> {
    let mut want = vec![0; LENGTH];
    PatternStream::new(SEED).fill(&mut want);
    want
}

/// The losses of the stalled run: the peer must still get its FIN through. Before the fix it
/// sent the FIN on its last data segment; resent after the hole, the client (smoltcp 0.14,
/// as the guest) took the data as old and ignored the FIN, and its duplicate ACKs made the
/// peer's fast retransmit drop the only timer that would have sent the FIN again.
#[test]
fn the_source_gets_its_fin_through_after_a_lost_segment_near_the_end() {
    let losses = Losses {
        hole: true,
        ..NO_LOSSES
    };
    let (got, fin, c) = read_source(&mut PeerStack::new(), 50000, losses);
    assert_eq!(c.dropped_hole, 1, "{c:?}");
    assert!(c.dropped_dup_acks > 0, "the client ACKed the hole: {c:?}");
    assert!(
        got == pattern(),
        "{} of {LENGTH} bytes, or not the pattern",
        got.len()
    );
    assert!(fin, "the client never saw the peer's FIN: {c:?}");
    assert_eq!(c.fins_with_data, 0, "the FIN goes alone: {c:?}");
}

/// The same, and the peer's first FIN lost too: the client's duplicate ACKs of the end have
/// started the peer's fast retransmit with only the FIN outstanding, which resends nothing
/// and stops the retransmit timer; the keep-alive guard must send the FIN again.
#[test]
fn the_source_resends_a_lost_fin_after_duplicate_acks() {
    let losses = Losses {
        hole: true,
        first_bare_fin: true,
        ..NO_LOSSES
    };
    let (got, fin, c) = read_source(&mut PeerStack::new(), 50000, losses);
    assert_eq!((c.dropped_hole, c.dropped_fins), (1, 1), "{c:?}");
    assert!(
        got == pattern(),
        "{} of {LENGTH} bytes, or not the pattern",
        got.len()
    );
    assert!(fin, "the client never saw the peer's FIN: {c:?}");
    assert_eq!(
        (c.fins, c.fins_with_data),
        (2, 0),
        "the lost FIN sent again: {c:?}"
    );
}

/// Nothing lost: one FIN, alone, and no timer needed.
#[test]
fn on_a_clean_wire_the_fin_goes_once_after_the_data() {
    let (got, fin, c) = read_source(&mut PeerStack::new(), 50000, NO_LOSSES);
    assert!(
        got == pattern(),
        "{} of {LENGTH} bytes, or not the pattern",
        got.len()
    );
    assert!(fin, "{c:?}");
    assert_eq!(
        (c.fins, c.fins_with_data, c.clock_moves),
        (1, 0, 0),
        "{c:?}"
    );
}

/// A duplicated SYN (the faulty wire's dup) on a peer that has served a connection before, so
/// that a fresh listener sits in a lower socket slot than the new connection: the second
/// copy must not make a second connection, whose RST for the client's ACK reset the first
/// (net_tcp_rx then read 0 bytes).
#[test]
fn a_duplicated_syn_leaves_the_connection_alone() {
    let mut peer = PeerStack::new();
    let (got, fin, c) = read_source(&mut peer, 50000, NO_LOSSES);
    assert!(got == pattern() && fin, "the first connection: {c:?}");
    let losses = Losses {
        dup_syn: true,
        ..NO_LOSSES
    };
    let (got, fin, c) = read_source(&mut peer, 50001, losses);
    assert_eq!(c.dup_syns, 1, "{c:?}");
    assert!(
        got == pattern(),
        "{} of {LENGTH} bytes, or not the pattern",
        got.len()
    );
    assert!(fin, "{c:?}");
}
