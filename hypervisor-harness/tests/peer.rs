//! The in-process peer against a second smoltcp stack playing the guest: every service of the
//! network contract, several connections at once, and hostile frames. No KVM needed.

use hypervisor_harness::backends::net::peer::{
    Fnv1a64, PatternStream, PeerBackend, PeerHandle, PEER_IP, PEER_MAC, SOURCE_QUEUE_FRAMES,
};
use hypervisor_harness::backends::net::stream::StreamBackend;
use hypervisor_harness::backends::net::{FrameMeta, NetBackend, MAX_FRAME};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr,
};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const GUEST_IP: Ipv4Address = Ipv4Address::new(192, 168, 76, 2);
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
const MIB16: u64 = 16 << 20;

/// The guest side's wire: frames in both directions, in memory.
#[derive(Default)]
struct Queues {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut v = vec![0; len];
        let r = f(&mut v);
        self.0.push(v);
        r
    }
}

impl Device for Queues {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        let f = self.rx.pop_front()?;
        Some((Rx(f), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ethernet;
        c.max_transmission_unit = 1514;
        c
    }
}

/// A guest stack wired to a peer backend.
struct Guest {
    iface: Interface,
    wire: Queues,
    sockets: SocketSet<'static>,
    peer: Box<dyn NetBackend>,
    handle: PeerHandle,
    epoch: Instant,
    next_port: u16,
    buf: Vec<u8>,
    /// Each TCP socket's send and receive buffer: the most a connection has in flight.
    tcp_buffer: usize,
}

impl Guest {
    fn new() -> Self {
        let peer = PeerBackend::new().unwrap();
        let handle = peer.handle();
        Self::with_backend(Box::new(peer), handle, GUEST_MAC, GUEST_IP)
    }

    /// A guest on any backend; `handle` is only read by tests of the in-process peer.
    fn with_backend(
        peer: Box<dyn NetBackend>,
        handle: PeerHandle,
        mac: [u8; 6],
        ip: Ipv4Address,
    ) -> Self {
        let mut wire = Queues::default();
        let cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let mut iface = Interface::new(cfg, &mut wire, SmolInstant::ZERO);
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(ip), 24)).unwrap());
        Self {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            peer,
            handle,
            epoch: Instant::now(),
            next_port: 49152,
            buf: vec![0; MAX_FRAME],
            tcp_buffer: 1 << 20,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    /// Frames the peer has for the guest, drained.
    fn drain_peer(&mut self) -> Vec<Vec<u8>> {
        self.drain_peer_at_most(usize::MAX)
    }

    /// At most `limit` frames (a guest's RX ring).
    fn drain_peer_at_most(&mut self, limit: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((n, meta)) = self.peer.receive(&mut self.buf).unwrap() else {
                break;
            };
            assert_eq!(meta, FrameMeta::default());
            out.push(self.buf[..n].to_vec());
        }
        out
    }

    /// One round: the guest stack runs, its frames go to the peer, the peer's come back.
    /// Returns whether any frame moved.
    fn step(&mut self) -> bool {
        let now = self.now();
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
        let mut moved = false;
        for f in std::mem::take(&mut self.wire.tx) {
            self.peer.transmit(&FrameMeta::default(), &f).unwrap();
            moved = true;
        }
        // The end of the batch, as a NIC model's TX pass: a stream backend writes it now.
        self.peer.flush().unwrap();
        // As many as the guest's UDP socket buffers hold, like a guest's RX ring.
        let back = self.drain_peer_at_most(128);
        moved |= !back.is_empty();
        self.wire.rx.extend(back);
        moved
    }

    /// Run until `done` holds (panics after 60 s), with the peer's timers when idle.
    fn run_until(&mut self, what: &str, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            if !self.step() {
                let d = self.peer.poll();
                // The fd rule: readable only if poll() queued frames.
                let back = self.drain_peer_at_most(128);
                if back.is_empty() {
                    std::thread::sleep(
                        d.unwrap_or(Duration::from_millis(1))
                            .min(Duration::from_millis(1)),
                    );
                }
                self.wire.rx.extend(back);
            }
        }
    }

    fn tcp(&mut self, port: u16) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; self.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0; self.tcp_buffer]),
        );
        self.next_port += 1;
        s.connect(self.iface.context(), (PEER_IP, port), self.next_port)
            .unwrap();
        self.sockets.add(s)
    }

    fn udp(&mut self) -> SocketHandle {
        let buf =
            || udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 256], vec![0; 256 * 1500]);
        let mut s = udp::Socket::new(buf(), buf());
        self.next_port += 1;
        s.bind(self.next_port).unwrap();
        self.sockets.add(s)
    }
}

fn eth(ty: EthernetProtocol, dst: [u8; 6], payload_len: usize) -> (Vec<u8>, EthernetRepr) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype: ty,
    };
    (vec![0; repr.buffer_len() + payload_len], repr)
}

fn arp_request(target: Ipv4Address) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let (mut f, e) = eth(EthernetProtocol::Arp, [0xff; 6], arp.buffer_len());
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    e.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    f
}

fn ping(seq: u16, data: &[u8]) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x4242,
        seq_no: seq,
        data,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: PEER_IP,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let (mut f, e) = eth(
        EthernetProtocol::Ipv4,
        PEER_MAC,
        ip.buffer_len() + icmp.buffer_len(),
    );
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    e.emit(&mut frame);
    let mut p = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut p, &Default::default());
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(p.payload_mut()),
        &Default::default(),
    );
    f
}

#[test]
fn arp_and_ping() {
    let mut g = Guest::new();
    g.peer
        .transmit(&FrameMeta::default(), &arp_request(PEER_IP))
        .unwrap();
    let replies = g.drain_peer();
    assert_eq!(
        replies.len(),
        1,
        "one ARP reply, ready right after transmit"
    );
    let frame = EthernetFrame::new_checked(&replies[0][..]).unwrap();
    assert_eq!(frame.dst_addr(), EthernetAddress(GUEST_MAC));
    let arp = ArpRepr::parse(&ArpPacket::new_checked(frame.payload()).unwrap()).unwrap();
    match arp {
        ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => {
            assert_eq!(operation, ArpOperation::Reply);
            assert_eq!(source_hardware_addr, EthernetAddress(PEER_MAC));
            assert_eq!(source_protocol_addr, PEER_IP);
            assert_eq!(target_protocol_addr, GUEST_IP);
        }
        other => panic!("{other:?}"),
    }
    // An ARP for another address gets nothing.
    g.peer
        .transmit(
            &FrameMeta::default(),
            &arp_request(Ipv4Address::new(192, 168, 76, 9)),
        )
        .unwrap();
    assert!(g.drain_peer().is_empty());

    for seq in 0..3u16 {
        let data: Vec<u8> = (0..56).map(|i| (i as u16 + seq) as u8).collect();
        g.peer
            .transmit(&FrameMeta::default(), &ping(seq, &data))
            .unwrap();
        let replies = g.drain_peer();
        assert_eq!(replies.len(), 1);
        let frame = EthernetFrame::new_checked(&replies[0][..]).unwrap();
        let ip = Ipv4Packet::new_checked(frame.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (PEER_IP, GUEST_IP));
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv4Repr::parse(&icmp, &Default::default()).unwrap();
        assert_eq!(
            repr,
            Icmpv4Repr::EchoReply {
                ident: 0x4242,
                seq_no: seq,
                data: &data
            }
        );
    }
    assert_eq!(g.handle.counters().icmp_echo_requests, 3);
    let c = g.peer.counters();
    assert_eq!((c.tx_frames, c.rx_frames), (5, 4));
}

#[test]
fn udp_echo_every_size() {
    let mut g = Guest::new();
    let h = g.udp();
    for size in 1..=1472usize {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        g.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&data, (PEER_IP, 7))
            .unwrap();
        let mut got = None;
        g.run_until("an echo", |g| {
            if let Ok((d, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                assert_eq!(meta.endpoint.port, 7);
                got = Some(d.to_vec());
            }
            got.is_some()
        });
        assert_eq!(got.unwrap(), data, "size {size}");
    }
    let c = g.handle.counters();
    assert_eq!(c.udp_echo_datagrams, 1472);
    assert_eq!(c.udp_echo_bytes, 1472 * 1473 / 2);
    // Discard counts and answers nothing.
    let s = g.sockets.get_mut::<udp::Socket>(h);
    s.send_slice(&[1, 2, 3], (PEER_IP, 9)).unwrap();
    g.run_until("the discard", |g| {
        g.handle.counters().udp_discard_datagrams == 1
    });
    assert_eq!(g.handle.counters().udp_discard_bytes, 3);
}

/// Send `len` bytes of the seed's pattern to the sink on a connection; returns the report.
fn sink(g: &mut Guest, h: SocketHandle, len: u64, seed: u64) -> [u8; 16] {
    let mut pattern = PatternStream::new(seed);
    let mut report = Vec::new();
    let mut closed = false;
    g.run_until("the sink's report", |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        while s.can_send() && pattern.position() < len {
            let left = len - pattern.position();
            s.send(|buf| {
                let n = buf.len().min(left as usize);
                pattern.fill(&mut buf[..n]);
                (n, ())
            })
            .unwrap();
        }
        if pattern.position() == len && !closed {
            s.close();
            closed = true;
        }
        while let Ok(n) = s.recv(|d| {
            report.extend_from_slice(d);
            (d.len(), d.len())
        }) {
            if n == 0 {
                break;
            }
        }
        !s.may_recv() && closed
    });
    report.try_into().expect("16 bytes of report")
}

#[test]
fn tcp_sink_16_mib_reports_count_and_fnv() {
    let mut g = Guest::new();
    let h = g.tcp(9);
    let started = Instant::now();
    let report = sink(&mut g, h, MIB16, 0x5EED);
    let elapsed = started.elapsed();
    let mut expect = vec![0u8; MIB16 as usize];
    PatternStream::new(0x5EED).fill(&mut expect);
    let mut fnv = Fnv1a64::default();
    fnv.update(&expect);
    assert_eq!(u64::from_le_bytes(report[..8].try_into().unwrap()), MIB16);
    assert_eq!(u64::from_le_bytes(report[8..].try_into().unwrap()), fnv.0);
    let c = g.handle.counters();
    assert_eq!((c.tcp_sink_bytes, c.tcp_sink_reports), (MIB16, 1));
    eprintln!("16 MiB to the sink in {elapsed:?}");
}

/// Ask the source for `len` bytes with `seed` and check every byte; returns how many came.
fn source(g: &mut Guest, h: SocketHandle, len: u64, seed: u64) -> u64 {
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&len.to_le_bytes());
    request[8..].copy_from_slice(&seed.to_le_bytes());
    let mut sent = false;
    let mut pattern = PatternStream::new(seed);
    let mut good = true;
    g.run_until("the source's stream", |g| {
        let s = g.sockets.get_mut::<tcp::Socket>(h);
        if !sent && s.may_send() {
            assert_eq!(s.send_slice(&request), Ok(16));
            sent = true;
        }
        while let Ok(n) = s.recv(|d| {
            good &= pattern.matches(d);
            (d.len(), d.len())
        }) {
            if n == 0 {
                break;
            }
        }
        let over = sent && !s.may_recv() && s.recv_queue() == 0;
        if over {
            s.close();
        }
        over
    });
    assert!(good, "the source's bytes differ from the pattern");
    pattern.position()
}

#[test]
fn tcp_source_16_mib_is_the_pattern() {
    let mut g = Guest::new();
    let h = g.tcp(19);
    let started = Instant::now();
    assert_eq!(source(&mut g, h, MIB16, 77), MIB16);
    eprintln!("16 MiB from the source in {:?}", started.elapsed());
    let c = g.handle.counters();
    assert_eq!((c.tcp_source_bytes, c.tcp_source_done), (MIB16, 1));
}

#[test]
fn udp_source_count_size_and_bounded_queue() {
    let mut g = Guest::new();
    let h = g.udp();
    // Resolve ARP first so the flood is not waiting on it.
    g.peer
        .transmit(&FrameMeta::default(), &arp_request(PEER_IP))
        .unwrap();
    g.drain_peer();
    let request = |count: u32, size: u16| {
        let mut r = [0u8; 8];
        r[..4].copy_from_slice(&count.to_le_bytes());
        r[4..6].copy_from_slice(&size.to_le_bytes());
        r
    };
    for (count, size) in [(1000u32, 1472u16), (3, 1)] {
        g.sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&request(count, size), (PEER_IP, 19))
            .unwrap();
        let mut k = 0u32;
        g.run_until("the source's datagrams", |g| {
            while let Ok((d, meta)) = g.sockets.get_mut::<udp::Socket>(h).recv() {
                assert_eq!(meta.endpoint.port, 19);
                assert_eq!(d.len(), usize::from(size));
                assert!(
                    d.iter()
                        .enumerate()
                        .all(|(i, &b)| b == (k as usize + i) as u8),
                    "datagram {k}"
                );
                k += 1;
            }
            k == count
        });
    }
    // A flood is produced as the guest drains, not all at once.
    let before = g.handle.counters().udp_source_datagrams;
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(&request(50_000, 64), (PEER_IP, 19))
        .unwrap();
    let now = g.now();
    g.iface.poll(now, &mut g.wire, &mut g.sockets);
    for f in std::mem::take(&mut g.wire.tx) {
        g.peer.transmit(&FrameMeta::default(), &f).unwrap();
    }
    let produced = g.handle.counters().udp_source_datagrams - before;
    assert!(
        produced > 0 && produced as usize <= 2 * SOURCE_QUEUE_FRAMES,
        "{produced} datagrams produced before the guest drained any"
    );
    let mut frames = 0u64;
    while let Some((_, _)) = g.peer.receive(&mut g.buf).unwrap() {
        frames += 1;
    }
    assert_eq!(frames, 50_000, "draining receives the whole flood");
    let c = g.handle.counters();
    assert_eq!(c.udp_source_requests, 3);
    assert_eq!(c.udp_source_datagrams, 51_003);
    assert_eq!(c.rx_queue_overflows, 0);
    // Malformed requests: wrong length, size 0, size over 1472, nonzero padding.
    let s = g.sockets.get_mut::<udp::Socket>(h);
    for bad in [
        &request(1, 8)[..7],
        &request(1, 0),
        &request(1, 1473),
        &[1, 0, 0, 0, 8, 0, 1, 0],
    ] {
        s.send_slice(bad, (PEER_IP, 19)).unwrap();
    }
    g.run_until("refused requests", |g| {
        g.handle.counters().udp_source_bad_requests == 4
    });
}

#[test]
fn several_tcp_connections_at_once() {
    let mut g = Guest::new();
    let echoes: Vec<SocketHandle> = (0..8).map(|_| g.tcp(7)).collect();
    let sinks: Vec<SocketHandle> = (0..8).map(|_| g.tcp(9)).collect();
    let sources: Vec<SocketHandle> = (0..8).map(|_| g.tcp(19)).collect();
    const LEN: usize = 256 << 10;
    // What each echo connection sends and each sink connection writes, made once: made again
    // at every round, 4 MiB a round, it was most of the test's CPU time, and on a loaded
    // machine the rounds' CPU time, not the peer, ran into run_until's 60 s.
    let data: Vec<Vec<u8>> = (0..8)
        .map(|i| (0..LEN).map(|j| (j * 31 + i) as u8).collect())
        .collect();
    let sink_data: Vec<Vec<u8>> = (0..8)
        .map(|i| {
            let mut chunk = vec![0u8; LEN];
            PatternStream::new(100 + i as u64).fill(&mut chunk);
            chunk
        })
        .collect();
    let mut sent = [0usize; 8];
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); 8];
    let mut reports: Vec<Vec<u8>> = vec![Vec::new(); 8];
    let mut sink_sent = [0u64; 8];
    let mut src_patterns: Vec<PatternStream> =
        (0..8).map(|i| PatternStream::new(i as u64)).collect();
    let mut src_asked = [false; 8];
    let mut src_good = true;
    g.run_until("24 connections' work", |g| {
        let mut all = true;
        for i in 0..8 {
            let s = g.sockets.get_mut::<tcp::Socket>(echoes[i]);
            if s.can_send() && sent[i] < LEN {
                sent[i] += s.send_slice(&data[i][sent[i]..]).unwrap();
            }
            while let Ok(n) = s.recv(|b| {
                got[i].extend_from_slice(b);
                (b.len(), b.len())
            }) {
                if n == 0 {
                    break;
                }
            }
            all &= got[i].len() == LEN;

            let s = g.sockets.get_mut::<tcp::Socket>(sinks[i]);
            if s.can_send() && sink_sent[i] < LEN as u64 {
                let chunk = &sink_data[i];
                sink_sent[i] += s.send_slice(&chunk[sink_sent[i] as usize..]).unwrap() as u64;
                if sink_sent[i] == LEN as u64 {
                    s.close();
                }
            }
            while let Ok(n) = s.recv(|b| {
                reports[i].extend_from_slice(b);
                (b.len(), b.len())
            }) {
                if n == 0 {
                    break;
                }
            }
            all &= reports[i].len() == 16;

            let s = g.sockets.get_mut::<tcp::Socket>(sources[i]);
            if !src_asked[i] && s.may_send() {
                let mut r = [0u8; 16];
                r[..8].copy_from_slice(&(LEN as u64).to_le_bytes());
                r[8..].copy_from_slice(&(i as u64).to_le_bytes());
                s.send_slice(&r).unwrap();
                src_asked[i] = true;
            }
            let p = &mut src_patterns[i];
            while let Ok(n) = s.recv(|b| {
                src_good &= p.matches(b);
                (b.len(), b.len())
            }) {
                if n == 0 {
                    break;
                }
            }
            all &= p.position() == LEN as u64;
        }
        all
    });
    assert!(src_good);
    for i in 0..8 {
        assert!(got[i] == data[i], "echo connection {i}");
        let mut expect = vec![0u8; LEN];
        PatternStream::new(100 + i as u64).fill(&mut expect);
        let mut fnv = Fnv1a64::default();
        fnv.update(&expect);
        assert_eq!(&reports[i][..8], &(LEN as u64).to_le_bytes());
        assert_eq!(
            &reports[i][8..],
            &fnv.0.to_le_bytes(),
            "sink connection {i}"
        );
    }
    assert_eq!(g.handle.counters().tcp_accepted, 24);
}

#[test]
fn hostile_frames_are_dropped_and_counted() {
    let mut g = Guest::new();
    let meta = FrameMeta::default();
    // Too short and too long for the backend.
    for len in [0usize, 1, 13, MAX_FRAME + 1, 9000, 65536] {
        g.peer.transmit(&meta, &vec![0xA5; len]).unwrap();
    }
    assert_eq!(g.peer.counters().tx_dropped, 6);
    // Garbage of every length, then headers that lie: smoltcp ignores them.
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for len in 14..=MAX_FRAME {
        let mut f: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if len % 3 == 0 {
            // Addressed to the peer as IPv4, so the stack parses further.
            f[..6].copy_from_slice(&PEER_MAC);
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            if len > 34 {
                f[14] = 0x45;
                f[26..30].copy_from_slice(&[192, 168, 76, 2]);
                f[30..34].copy_from_slice(&[192, 168, 76, 1]);
                f[23] = [1u8, 6, 17][len % 9 / 3];
            }
        }
        g.peer.transmit(&meta, &f).unwrap();
        g.drain_peer();
        g.peer.poll();
    }
    // A ping with a truncated ICMP header and one claiming a longer IP total length.
    let mut p = ping(1, &[0; 8]);
    p.truncate(14 + 20 + 3);
    g.peer.transmit(&meta, &p).unwrap();
    let mut p = ping(1, &[0; 8]);
    p[16..18].copy_from_slice(&1500u16.to_be_bytes());
    g.peer.transmit(&meta, &p).unwrap();
    // A receive buffer too small for a frame drops it, never truncates it.
    g.peer.transmit(&meta, &arp_request(PEER_IP)).unwrap();
    let mut small = [0u8; 20];
    assert!(g.peer.receive(&mut small).unwrap().is_none());
    assert!(g.peer.counters().rx_dropped >= 1);
    // And the peer still works.
    g.peer.transmit(&meta, &arp_request(PEER_IP)).unwrap();
    assert_eq!(g.drain_peer().len(), 1);
    g.peer.transmit(&meta, &ping(9, b"still alive")).unwrap();
    assert_eq!(g.drain_peer().len(), 1);
}

#[test]
fn open_names_what_is_missing() {
    use hypervisor_harness::backends::net::{open, spec::BackendSpec};
    let peer = open(&BackendSpec::Peer).unwrap();
    assert_eq!(peer.describe(), "peer");
    let user = open(&BackendSpec::User(Default::default())).unwrap();
    assert_eq!(user.describe(), "user:10.0.2.0/24");
}

fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

#[test]
fn rx_ready_fd_only_from_poll() {
    let mut g = Guest::new();
    let fd = g.peer.rx_ready_fd();
    let meta = FrameMeta::default();
    // A reply to a transmit is there at once, without the fd.
    g.peer.transmit(&meta, &arp_request(PEER_IP)).unwrap();
    assert!(!readable(fd));
    assert_eq!(g.drain_peer().len(), 1);
    // A frame left waiting makes poll() signal; draining to None clears it.
    g.peer.transmit(&meta, &arp_request(PEER_IP)).unwrap();
    g.peer.poll();
    assert!(readable(fd));
    assert_eq!(g.drain_peer().len(), 1);
    assert!(!readable(fd));
    // A timer's frame: a UDP echo from a neighbour the peer has not resolved gets an ARP
    // request now and, unanswered, another one from poll() a second later.
    let other = Ipv4Address::new(192, 168, 76, 3);
    let udp = smoltcp::wire::UdpRepr {
        src_port: 4000,
        dst_port: 7,
    };
    let ip = Ipv4Repr {
        src_addr: other,
        dst_addr: PEER_IP,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + 4,
        hop_limit: 64,
    };
    let (mut f, e) = eth(EthernetProtocol::Ipv4, PEER_MAC, ip.buffer_len() + 8 + 4);
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    e.emit(&mut frame);
    let mut p = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut p, &Default::default());
    udp.emit(
        &mut smoltcp::wire::UdpPacket::new_unchecked(p.payload_mut()),
        &IpAddress::Ipv4(other),
        &IpAddress::Ipv4(PEER_IP),
        4,
        |b| b.copy_from_slice(b"ping"),
        &Default::default(),
    );
    g.peer.transmit(&meta, &f).unwrap();
    let first = g.drain_peer();
    assert_eq!(first.len(), 1, "an ARP request for the sender");
    assert!(!readable(fd));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !readable(fd) {
        assert!(Instant::now() < deadline, "no ARP retry from poll()");
        let d = g.peer.poll().unwrap_or(Duration::from_millis(10));
        if !readable(fd) {
            std::thread::sleep(d.min(Duration::from_millis(100)));
        }
    }
    let again = g.drain_peer();
    assert_eq!(again, first, "the same ARP request, again");
    assert!(!readable(fd));
}

/// `hypervisor-harness peer --listen` as a child, on a socket in its own temporary directory.
struct ListeningPeer {
    child: Option<std::process::Child>,
    path: std::path::PathBuf,
    _dir: vmm_sys_util::tempdir::TempDir,
}

fn peer_command(path: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"));
    c.args(["peer", "--verbose", "--listen"])
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

impl ListeningPeer {
    fn start(tag: &str) -> Self {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join(format!("hh-peer-{tag}-")),
        )
        .unwrap();
        let path = dir.as_path().join("peer.sock");
        let child = peer_command(&path).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&path).is_err() {
            assert!(Instant::now() < deadline, "the peer did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child: Some(child),
            path,
            _dir: dir,
        }
    }

    fn client(&self) -> Box<dyn NetBackend> {
        use hypervisor_harness::backends::net::{open, spec::BackendSpec};
        open(&BackendSpec::Stream(self.path.clone())).unwrap()
    }

    /// SIGTERM; the exit status and stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        let child = self.child.take().unwrap();
        // SAFETY: a signal to our own child, which has not been waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for ListeningPeer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn raw(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&0x88B5u16.to_be_bytes()); // local experimental ethertype
    f.extend_from_slice(payload);
    f
}

/// The next frame on `be` with our experimental ethertype (others, such as ARP broadcasts,
/// are skipped), within 5 s.
fn next_raw(be: &mut dyn NetBackend) -> Option<Vec<u8>> {
    let mut buf = [0u8; MAX_FRAME];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match be.receive(&mut buf).unwrap() {
            Some((n, _)) if buf[12..14] == [0x88, 0xB5] => return Some(buf[..n].to_vec()),
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    None
}

/// Nothing with our ethertype arrives within 200 ms.
fn quiet(be: &mut dyn NetBackend) -> bool {
    let mut buf = [0u8; MAX_FRAME];
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        match be.receive(&mut buf).unwrap() {
            Some((_, _)) if buf[12..14] == [0x88, 0xB5] => return false,
            Some(_) => {}
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    true
}

#[test]
fn listen_switches_between_clients_and_serves_the_stack() {
    let server = ListeningPeer::start("switch");
    let (mac_a, mac_b) = ([0x52, 0x54, 0, 0, 0, 0x0a], [0x52, 0x54, 0, 0, 0, 0x0b]);
    let mut a = server.client();
    let mut b = server.client();
    let meta = FrameMeta::default();
    // Broadcast: to the other client, not back.
    let hello = raw([0xff; 6], mac_a, b"hello everyone");
    a.transmit(&meta, &hello).unwrap();
    a.flush().unwrap();
    assert_eq!(next_raw(&mut *b).as_deref(), Some(&hello[..]));
    assert!(quiet(&mut *a));
    // b answers a (learned from the broadcast), and a's unicast reaches b.
    let to_a = raw(mac_a, mac_b, b"to a");
    b.transmit(&meta, &to_a).unwrap();
    b.flush().unwrap();
    assert_eq!(next_raw(&mut *a).as_deref(), Some(&to_a[..]));
    let to_b = raw(mac_b, mac_a, b"to b");
    a.transmit(&meta, &to_b).unwrap();
    a.flush().unwrap();
    assert_eq!(next_raw(&mut *b).as_deref(), Some(&to_b[..]));
    // A third client sees neither learned unicast, but does see an unknown one (flooded).
    let mut c = server.client();
    a.transmit(&meta, &to_b).unwrap();
    a.flush().unwrap();
    assert_eq!(next_raw(&mut *b).as_deref(), Some(&to_b[..]));
    assert!(quiet(&mut *c));
    let unknown = raw([0x52, 0x54, 0, 0, 0, 0x99], mac_a, b"who?");
    a.transmit(&meta, &unknown).unwrap();
    a.flush().unwrap();
    assert_eq!(next_raw(&mut *b).as_deref(), Some(&unknown[..]));
    assert_eq!(next_raw(&mut *c).as_deref(), Some(&unknown[..]));
    drop(c);

    // A smoltcp guest on client a talks to the peer's stack: ping by ARP, TCP both ways.
    let dummy = PeerBackend::new().unwrap().handle();
    let mut g = Guest::with_backend(a, dummy, GUEST_MAC, GUEST_IP);
    // The stream backend buffers 256 KiB toward the socket and drops what does not fit, as a
    // wire would; with 1 MiB in flight the sink's stream lost frames and crawled on smoltcp's
    // backed-off retransmits (a 60 s timeout, about half the runs). 128 KiB in flight always
    // fits.
    g.tcp_buffer = 128 << 10;
    g.peer.transmit(&meta, &arp_request(PEER_IP)).unwrap();
    g.peer
        .transmit(&meta, &ping(1, b"over the switch"))
        .unwrap();
    let mut replies = 0;
    g.run_until("the stack's ARP and ping replies", |g| {
        for f in g.wire.rx.drain(..) {
            let frame = EthernetFrame::new_checked(&f[..]).unwrap();
            if frame.src_addr() == EthernetAddress(PEER_MAC) {
                replies += 1;
            }
        }
        replies == 2
    });
    let h = g.tcp(9);
    let report = sink(&mut g, h, 4 << 20, 3);
    assert_eq!(u64::from_le_bytes(report[..8].try_into().unwrap()), 4 << 20);
    let h = g.tcp(19);
    assert_eq!(source(&mut g, h, 4 << 20, 4), 4 << 20);

    // A client with a bad length prefix is dropped; the others go on.
    let mut bad = std::os::unix::net::UnixStream::connect(&server.path).unwrap();
    use std::io::{Read, Write};
    bad.write_all(&0u32.to_be_bytes()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        bad.read(&mut byte).unwrap(),
        0,
        "the switch closes a bad client"
    );
    let again = raw(mac_b, GUEST_MAC, b"still switching");
    g.peer.transmit(&meta, &again).unwrap();
    g.peer.flush().unwrap();
    assert_eq!(next_raw(&mut *b).as_deref(), Some(&again[..]));

    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("1 framing errors"), "{stderr}");
    assert!(stderr.contains("framing error: length 0"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn listen_refuses_a_live_socket_and_replaces_a_stale_one() {
    let server = ListeningPeer::start("busy");
    let out = peer_command(&server.path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("in use by a live listener"), "{stderr}");
    let (status, _) = server.stop();
    assert!(status.success());

    // A socket file nobody listens on is replaced.
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(
        std::env::temp_dir().join("hh-peer-stale-"),
    )
    .unwrap();
    let path = dir.as_path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let mut child = peer_command(&path).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&path).is_err() {
        assert!(Instant::now() < deadline, "no listener on the stale path");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
    assert!(!path.exists(), "the socket file is removed at exit");

    // A file that is not a socket is left alone.
    std::fs::write(&path, b"keep me").unwrap();
    let out = peer_command(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");

    use hypervisor_harness::backends::net::{open, spec::BackendSpec};
    let e = open(&BackendSpec::Stream(dir.as_path().join("nobody.sock")))
        .err()
        .unwrap();
    assert!(e.to_string().contains("peer --listen"), "{e}");
}

fn source_request(count: u32, size: u16) -> [u8; 8] {
    let mut r = [0u8; 8];
    r[..4].copy_from_slice(&count.to_le_bytes());
    r[4..6].copy_from_slice(&size.to_le_bytes());
    r
}

/// Bytes on the stream for one UDP source datagram of `size` bytes: the length prefix,
/// Ethernet, IPv4 and UDP headers, the payload.
fn flood_frame_bytes(size: usize) -> usize {
    4 + 14 + 20 + 8 + size
}

/// Read the stream's bytes straight off the socket, blocking, as fast as they come (so the
/// socket is drained while the switch writes), into `got`, until it holds `upto` bytes or
/// 10 s pass without any.
fn read_stream(sock: &mut std::os::unix::net::UnixStream, got: &mut Vec<u8>, upto: usize) {
    use std::io::Read;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    while got.len() < upto {
        match sock.read(&mut chunk) {
            Ok(0) => panic!("the switch closed the stream"),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("{e}"),
        }
    }
}

/// The UDP source datagrams (from port 19) framed in `stream`, each checked against the
/// pattern: how many.
fn count_source_flood(stream: &[u8], size: usize) -> u32 {
    let mut k = 0u32;
    let mut rest = stream;
    while let Some((len, after)) = rest.split_first_chunk::<4>() {
        let len = u32::from_be_bytes(*len) as usize;
        let (f, after) = after.split_at(len.min(after.len()));
        rest = after;
        let Ok(frame) = EthernetFrame::new_checked(f) else {
            continue;
        };
        if frame.ethertype() != EthernetProtocol::Ipv4 {
            continue;
        }
        let Ok(ip) = Ipv4Packet::new_checked(frame.payload()) else {
            continue;
        };
        let Ok(udp) = smoltcp::wire::UdpPacket::new_checked(ip.payload()) else {
            continue;
        };
        if ip.next_header() != IpProtocol::Udp || udp.src_port() != 19 {
            continue;
        }
        let d = udp.payload();
        assert_eq!(d.len(), size);
        assert!(
            d.iter()
                .enumerate()
                .all(|(i, &b)| b == (k as usize + i) as u8),
            "datagram {k}"
        );
        k += 1;
    }
    k
}

/// A stream client that stops reading during a UDP flood gets the rest of it once it reads
/// again, without sending anything: the switch holds the stack back while a client is
/// behind, and must go on once the socket has taken what waited (it slept until some client
/// sent when a fast reader had taken it all during the write: seen as net_rx_flood stalling
/// under QEMU and our stream backend).
#[test]
fn listen_resumes_a_flood_for_a_client_that_paused() {
    let server = ListeningPeer::start("pause");
    let mut sock = std::os::unix::net::UnixStream::connect(&server.path).unwrap();
    let be = StreamBackend::from_stream(sock.try_clone().unwrap(), "stream:pause".into()).unwrap();
    let dummy = PeerBackend::new().unwrap().handle();
    let mut g = Guest::with_backend(Box::new(be), dummy, GUEST_MAC, GUEST_IP);
    let h = g.udp();
    // An echo first, so ARP is resolved both ways before the flood.
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(b"hello", (PEER_IP, 7))
        .unwrap();
    g.run_until("the echo", |g| {
        g.sockets.get_mut::<udp::Socket>(h).recv().is_ok()
    });
    const COUNT: u32 = 20_000;
    g.sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(&source_request(COUNT, 1472), (PEER_IP, 19))
        .unwrap();
    let now = g.now();
    g.iface.poll(now, &mut g.wire, &mut g.sockets);
    for f in std::mem::take(&mut g.wire.tx) {
        g.peer.transmit(&FrameMeta::default(), &f).unwrap();
    }
    g.peer.flush().unwrap();
    // From here on the socket is read here, blocking (the guest's backend reads no more).
    sock.set_nonblocking(false).unwrap();
    let whole = COUNT as usize * flood_frame_bytes(1472);
    let mut stream = Vec::with_capacity(whole);
    // Reading as fast as it comes, then not at all for a while (the socket and the switch's
    // buffer for us fill up), then again.
    read_stream(&mut sock, &mut stream, whole / 4);
    std::thread::sleep(Duration::from_millis(300));
    read_stream(&mut sock, &mut stream, whole);
    let (status, stderr) = server.stop();
    let got = count_source_flood(&stream, 1472);
    assert_eq!(got, COUNT, "the flood stalled after {got}: {stderr}");
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("0 dropped (full)"), "{stderr}");
}

/// Whether `f` is an IPv4 frame from the peer's UDP or TCP `port`.
fn from_peer_port(f: &[u8], port: u16) -> bool {
    let Ok(frame) = EthernetFrame::new_checked(f) else {
        return false;
    };
    let Ok(ip) = Ipv4Packet::new_checked(frame.payload()) else {
        return false;
    };
    frame.ethertype() == EthernetProtocol::Ipv4
        && ip.src_addr() == PEER_IP
        && matches!(ip.next_header(), IpProtocol::Udp | IpProtocol::Tcp)
        && ip.payload().get(..2) == Some(&port.to_be_bytes()[..])
}

/// A client that disconnects in the middle of a UDP flood and a TCP stream from the peer:
/// both end with it, so the next client with the same MAC and IP gets none of them (the
/// source went on sending the gone VM's flood to it).
#[test]
fn listen_ends_the_flows_of_a_client_that_left() {
    let server = ListeningPeer::start("gone");
    let dummy = PeerBackend::new().unwrap().handle();
    let mut a = Guest::with_backend(server.client(), dummy.clone(), GUEST_MAC, GUEST_IP);
    let u = a.udp();
    a.sockets
        .get_mut::<udp::Socket>(u)
        .send_slice(b"hello", (PEER_IP, 7))
        .unwrap();
    a.run_until("the echo", |g| {
        g.sockets.get_mut::<udp::Socket>(u).recv().is_ok()
    });
    let t = a.tcp(19);
    a.run_until("the TCP source's connection", |g| {
        g.sockets.get::<tcp::Socket>(t).may_send()
    });
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let s = a.sockets.get_mut::<tcp::Socket>(t);
    assert_eq!(s.send_slice(&request), Ok(16));
    a.sockets
        .get_mut::<udp::Socket>(u)
        .send_slice(&source_request(u32::MAX, 1472), (PEER_IP, 19))
        .unwrap();
    let (mut datagrams, mut bytes) = (0, 0);
    a.run_until("both flows under way", |g| {
        while g.sockets.get_mut::<udp::Socket>(u).recv().is_ok() {
            datagrams += 1;
        }
        let s = g.sockets.get_mut::<tcp::Socket>(t);
        while let Ok(n) = s.recv(|d| (d.len(), d.len())) {
            if n == 0 {
                break;
            }
            bytes += n;
        }
        datagrams > 100 && bytes > 100_000
    });
    drop(a);
    std::thread::sleep(Duration::from_millis(200));

    // The same MAC and IP again: its ARP request teaches the switch where it is.
    let mut b = server.client();
    b.transmit(&FrameMeta::default(), &arp_request(PEER_IP))
        .unwrap();
    b.flush().unwrap();
    let (mut arp_replies, mut flows) = (0, 0);
    let mut buf = [0u8; MAX_FRAME];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        match b.receive(&mut buf).unwrap() {
            Some((n, _)) if from_peer_port(&buf[..n], 19) => flows += 1,
            Some((n, _)) => {
                let f = EthernetFrame::new_checked(&buf[..n]).unwrap();
                arp_replies += usize::from(f.ethertype() == EthernetProtocol::Arp);
            }
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    let (status, stderr) = server.stop();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(
        flows, 0,
        "the gone client's flows reached its successor: {stderr}"
    );
    assert_eq!(arp_replies, 1, "{stderr}");
    assert!(stderr.contains("2 flows of gone clients ended"), "{stderr}");
}
