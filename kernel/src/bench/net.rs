//! `bench=net`: the network section. Raw Ethernet/IPv4/UDP frames through the [`Nic`] trait
//! for the packet rows (nothing above the driver but this file), and TCP through the kernel's
//! smoltcp stack, against the peer of `notes/net_contract`: UDP 9 discard, UDP 19 source,
//! UDP 7 echo, TCP 9 sink, TCP 19 source at 192.168.76.1 (`net_peer=` overrides it; the guest
//! is 192.168.76.2 unless `net_ip=` says otherwise).
//!
//! Rows (`net_workloads=` a comma list narrows them; `net_quick=1` shortens each):
//! - `tx_1514`, `tx_64`: one frame built once (1514 / 60 bytes on the wire, no FCS), sent in
//!   batches of [`TX_BATCH`] with one flush per batch, reclaimed as it goes.
//! - `rx_1514`, `rx_64`: bursts asked of the UDP source, counted until the burst is complete or
//!   the line stays quiet for [`RX_IDLE_NS`]; what never came is `drops=`.
//! - `rtt_udp`: one 18-byte datagram at a time to the echo port, busy-waiting for its answer.
//! - `tcp_tx`, `tcp_rx`: through smoltcp (kernel/src/net), one connection streaming to the sink
//!   until the budget is spent (timed to the sink's report), and transfers from the source.
//!
//! `net_echo_port=` and `net_sink_port=` move `rtt_udp`'s echo and `tcp_tx`'s sink off the
//! contract's 7 and 9 (a user-mode network proxies them to the host's unprivileged ports).
//!
//! `net_pairs=N` asks the device for N queue pairs (default 1); with several the raw rows use
//! as many flows (UDP source ports), which the driver and the device steer by flow hash.
//!
//! Each row is bracketed by `# phase: begin net.<row>` / `# phase: end net.<row>` (the harness
//! snapshots its exit counters there) and reported as
//! `# bench: net.<row> [ns=<p50> p99=<p99>] n=<packets> bytes=<bytes> total_ns=<elapsed>
//! frames=<frames moved> irqs=<interrupts> [requested=<asked> drops=<missing>]`: `n` is the
//! row's own unit (frames sent, datagrams received, round trips; TCP: every frame), `bytes`
//! the Ethernet frame bytes of those packets (TCP: payload), `frames` every frame the NIC moved in the row (the per-packet
//! denominator), `irqs` the NIC's interrupts in the row.

use crate::ktap::Outcome;
use crate::net::select;
use crate::net::{IpSetup, NetArgs, Stack, DEFAULT_IP};
use crate::platform::PLATFORM;
use crate::{bootinfo, println, time};
use alloc::string::String;
use alloc::vec::Vec;
use drivers::net::{MacAddress, Nic, NicCounters, NicError, RxInfo, TxChecksum, ETH_FRAME_MIN};
use drivers::platform::Platform;
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpAddress, IpEndpoint, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, UdpPacket,
    UdpRepr,
};

/// Time budget per row, and under `net_quick=1`.
const ROW_NS: u64 = 1_000_000_000;
const QUICK_ROW_NS: u64 = 100_000_000;
/// Frames per flush on the TX rows.
const TX_BATCH: usize = 32;
/// The fewest packets (TX frames, RX datagrams asked for, round trips) a row measures, however
/// short its budget.
const MIN_TX: u64 = 512;
const MIN_RX: u64 = 512;
const MIN_RTT: usize = 64;
/// Datagrams asked of the source per request and flow: an RX ring's worth (the driver's
/// default queue size), so that a guest keeping up loses none, and one that does not shows
/// drops.
const RX_BURST: u32 = 256;
/// A burst is over when nothing arrived for this long.
const RX_IDLE_NS: u64 = 20_000_000;
/// An echo not back within this long is lost; a row gives up after [`RTT_MAX_LOST`].
const RTT_TIMEOUT_NS: u64 = 200_000_000;
const RTT_MAX_LOST: usize = 8;
/// A TX ring that frees nothing for this long is stuck.
const TX_STUCK_NS: u64 = 2_000_000_000;
/// Spin this long on an empty RX ring before sleeping until an interrupt.
const RX_SPIN_NS: u64 = 50_000;

/// smoltcp socket buffers of the TCP rows (a 256 KiB window, window scaling on), the fewest
/// bytes `tcp_tx` sends, the bytes of each `tcp_rx` transfer (a quarter under `net_quick=1`),
/// and how long any TCP step may take.
const TCP_BUFFER: usize = 256 << 10;
const MIN_TCP_BYTES: u64 = 1 << 20;
const TCP_RX_CHUNK: u64 = 8 << 20;
const TCP_TIMEOUT_NS: u64 = 30_000_000_000;

/// UDP payloads that make 1514- and 60-byte frames (14 Ethernet + 20 IPv4 + 8 UDP).
const PAYLOAD_1514: usize = 1472;
const PAYLOAD_64: usize = 18;
const HEADERS: usize = 14 + 20 + 8;

const PORT_ECHO: u16 = 7;
const PORT_DISCARD: u16 = 9;
const PORT_SOURCE: u16 = 19;
/// The guest's first UDP source port; flow `i` uses `LOCAL_PORT + i`.
const LOCAL_PORT: u16 = 40000;

const BROADCAST: MacAddress = [0xff; 6];

/// The workloads, in the order they run.
const WORKLOADS: [&str; 7] = [
    "tx_1514", "tx_64", "rx_1514", "rx_64", "rtt_udp", "tcp_tx", "tcp_rx",
];

/// Port `name=` from the command line, else `default`.
fn port_arg(name: &str, default: u16) -> u16 {
    bootinfo::get()
        .arg_u64(name)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
        .unwrap_or(default)
}

fn row_ns() -> u64 {
    if bootinfo::get().arg("net_quick") == Some("1") {
        QUICK_ROW_NS
    } else {
        ROW_NS
    }
}

/// Whether `net_workloads=` (a comma list; default all) selects `w`.
fn selected(w: &str) -> bool {
    bootinfo::get()
        .arg("net_workloads")
        .is_none_or(|list| list.split(',').any(|p| p == w))
}

/// Our address and the peer's, from the command line (contract defaults). Raw frames need a
/// static address: under `net_ip=dhcp` the raw rows use the default one.
fn addresses(args: &NetArgs) -> ([u8; 4], [u8; 4]) {
    let ip = match args.ip {
        IpSetup::Static(cidr) => cidr.address(),
        IpSetup::Dhcp => DEFAULT_IP.address(),
    };
    (ip.octets(), args.peer.octets())
}

/// Who talks to whom.
#[derive(Clone, Copy)]
struct Addrs {
    mac: MacAddress,
    peer_mac: MacAddress,
    ip: [u8; 4],
    peer_ip: [u8; 4],
}

impl Addrs {
    /// A frame of `len` bytes (padded to the Ethernet minimum) whose Ethernet header is
    /// written; `body` writes the rest.
    fn frame(
        &self,
        dst: MacAddress,
        ethertype: EthernetProtocol,
        len: usize,
        body: impl FnOnce(&mut [u8]),
    ) -> Vec<u8> {
        let mut f = alloc::vec![0u8; len.max(ETH_FRAME_MIN)];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        EthernetRepr {
            src_addr: EthernetAddress(self.mac),
            dst_addr: EthernetAddress(dst),
            ethertype,
        }
        .emit(&mut eth);
        body(eth.payload_mut());
        f
    }

    /// A complete UDP datagram of `len` payload bytes to the peer, checksums filled in;
    /// `payload` writes the payload in place.
    fn udp(&self, src: u16, dst: u16, len: usize, payload: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let (ip, peer) = (Ipv4Address::from(self.ip), Ipv4Address::from(self.peer_ip));
        let caps = ChecksumCapabilities::default();
        self.frame(
            self.peer_mac,
            EthernetProtocol::Ipv4,
            HEADERS + len,
            |body| {
                let mut packet = Ipv4Packet::new_unchecked(body);
                Ipv4Repr {
                    src_addr: ip,
                    dst_addr: peer,
                    next_header: IpProtocol::Udp,
                    payload_len: 8 + len,
                    hop_limit: 64,
                }
                .emit(&mut packet, &caps);
                let mut udp = UdpPacket::new_unchecked(packet.payload_mut());
                UdpRepr {
                    src_port: src,
                    dst_port: dst,
                }
                .emit(&mut udp, &ip.into(), &peer.into(), len, payload, &caps);
            },
        )
    }

    /// An ARP request (`reply: None`) for the peer, or a reply to `reply` (its MAC and IP).
    fn arp(&self, reply: Option<(MacAddress, [u8; 4])>) -> Vec<u8> {
        let (dst, operation, tha, tpa) = match reply {
            None => (BROADCAST, ArpOperation::Request, [0; 6], self.peer_ip),
            Some((mac, ip)) => (mac, ArpOperation::Reply, mac, ip),
        };
        let repr = ArpRepr::EthernetIpv4 {
            operation,
            source_hardware_addr: EthernetAddress(self.mac),
            source_protocol_addr: self.ip.into(),
            target_hardware_addr: EthernetAddress(tha),
            target_protocol_addr: tpa.into(),
        };
        self.frame(dst, EthernetProtocol::Arp, 14 + repr.buffer_len(), |body| {
            repr.emit(&mut ArpPacket::new_unchecked(body))
        })
    }
}

/// What a received frame is, as far as these rows care.
#[derive(Debug, PartialEq, Eq)]
enum Frame<'a> {
    /// An ARP request or reply: sender MAC and IP, target IP, whether it is a request.
    Arp {
        request: bool,
        mac: MacAddress,
        ip: [u8; 4],
        target: [u8; 4],
    },
    /// A UDP datagram to us.
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'a [u8],
    },
    Other,
}

/// Parse just enough of `f` to count it: lengths are checked (smoltcp's `new_checked`),
/// checksums are not.
fn classify<'a>(f: &'a [u8], my_ip: [u8; 4]) -> Frame<'a> {
    let Ok(eth) = EthernetFrame::new_checked(f) else {
        return Frame::Other;
    };
    match eth.ethertype() {
        EthernetProtocol::Arp => {
            let parsed = ArpPacket::new_checked(eth.payload()).and_then(|p| ArpRepr::parse(&p));
            match parsed {
                Ok(ArpRepr::EthernetIpv4 {
                    operation,
                    source_hardware_addr,
                    source_protocol_addr,
                    target_protocol_addr,
                    ..
                }) => Frame::Arp {
                    request: operation == ArpOperation::Request,
                    mac: source_hardware_addr.0,
                    ip: source_protocol_addr.octets(),
                    target: target_protocol_addr.octets(),
                },
                _ => Frame::Other,
            }
        }
        EthernetProtocol::Ipv4 => {
            let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                return Frame::Other;
            };
            if ip.next_header() != IpProtocol::Udp || ip.dst_addr().octets() != my_ip {
                return Frame::Other;
            }
            match UdpPacket::new_checked(ip.payload()) {
                Ok(udp) => Frame::Udp {
                    src_port: udp.src_port(),
                    dst_port: udp.dst_port(),
                    payload: udp.payload(),
                },
                Err(_) => Frame::Other,
            }
        }
        _ => Frame::Other,
    }
}

/// Interrupts on `nic`'s vectors so far.
fn nic_irqs(nic: &dyn Nic) -> u64 {
    nic.interrupt_vectors()
        .iter()
        .map(|&v| PLATFORM.interrupt_count(v))
        .sum()
}

/// What [`Link::poll`] hands a UDP datagram to: source port, destination port, payload.
type UdpSink<'a> = dyn FnMut(u16, u16, &[u8], RxInfo) + 'a;

/// A NIC with the addresses the rows use, answering ARP on the side.
struct Link<'a> {
    nic: &'a mut dyn Nic,
    addrs: Addrs,
    /// Distinct flows (queue pairs).
    flows: u16,
    /// A request from the peer for our MAC, answered at the next chance.
    pending_arp: Option<(MacAddress, [u8; 4])>,
    /// Interrupts seen so far (sum over the NIC's vectors), to know when to acknowledge.
    irqs_seen: u64,
}

impl Link<'_> {
    /// Interrupts on the NIC's vectors so far.
    fn irqs(&self) -> u64 {
        nic_irqs(self.nic)
    }

    /// Acknowledge the device if it interrupted since the last look (a level line stays
    /// masked until then).
    fn service(&mut self) {
        let n = self.irqs();
        if n != self.irqs_seen {
            self.irqs_seen = n;
            self.nic.handle_interrupt();
        }
    }

    /// Send one frame now: queue, flush, reclaim; a full ring is waited out.
    fn send_now(&mut self, frame: &[u8]) -> Result<(), String> {
        let start = time::rdtsc();
        loop {
            match self.nic.send(frame, TxChecksum::Complete) {
                Ok(()) => break,
                Err(NicError::TxFull) => {
                    self.nic
                        .reclaim()
                        .map_err(|e| alloc::format!("reclaim: {e}"))?;
                    if time::cycles_to_ns(time::rdtsc() - start) > TX_STUCK_NS {
                        return Err("the TX ring stayed full".into());
                    }
                }
                Err(e) => return Err(alloc::format!("send: {e}")),
            }
        }
        self.nic.flush().map_err(|e| alloc::format!("flush: {e}"))?;
        self.nic
            .reclaim()
            .map(drop)
            .map_err(|e| alloc::format!("reclaim: {e}"))
    }

    /// Hand the next frame's UDP datagram (if it is one) to `on_udp`, answering ARP requests
    /// for our address and learning the peer's MAC from its ARP traffic. False if nothing was
    /// waiting.
    fn poll(&mut self, on_udp: &mut UdpSink) -> Result<bool, String> {
        self.service();
        let (my_ip, peer_ip) = (self.addrs.ip, self.addrs.peer_ip);
        let mut arp = None;
        let got = self
            .nic
            .receive(&mut |f, info| match classify(f, my_ip) {
                Frame::Udp {
                    src_port,
                    dst_port,
                    payload,
                } => on_udp(src_port, dst_port, payload, info),
                Frame::Arp {
                    request,
                    mac,
                    ip,
                    target,
                } if target == my_ip || (!request && ip == peer_ip) => {
                    arp = Some((request, mac, ip))
                }
                _ => {}
            })
            .map_err(|e| alloc::format!("receive: {e}"))?;
        match arp {
            Some((true, mac, ip)) => {
                if ip == peer_ip {
                    self.addrs.peer_mac = mac;
                }
                self.pending_arp = Some((mac, ip));
            }
            Some((false, mac, _)) => self.addrs.peer_mac = mac,
            None => {}
        }
        if let Some(who) = self.pending_arp.take() {
            let reply = self.addrs.arp(Some(who));
            self.send_now(&reply)?;
        }
        Ok(got)
    }

    /// Take every waiting frame, ignoring UDP.
    fn drain(&mut self) -> Result<(), String> {
        while self.poll(&mut |_, _, _, _| {})? {}
        Ok(())
    }

    /// Learn the peer's MAC by ARP (three tries, 500 ms each).
    fn resolve_peer(&mut self) -> Result<(), String> {
        for _ in 0..3 {
            let req = self.addrs.arp(None);
            self.send_now(&req)?;
            let start = time::rdtsc();
            while time::cycles_to_ns(time::rdtsc() - start) < 500_000_000 {
                self.poll(&mut |_, _, _, _| {})?;
                if self.addrs.peer_mac != BROADCAST {
                    return Ok(());
                }
            }
        }
        Err("the peer does not answer ARP".into())
    }
}

/// What one row measured, for its `# bench:` line.
#[derive(Default)]
struct Row {
    n: u64,
    bytes: u64,
    total_ns: u64,
    latencies: Vec<u64>,
    /// RX rows: datagrams asked for.
    requested: Option<u64>,
    /// TCP rows count frames (`n` is then every frame moved).
    n_is_frames: bool,
    before: NicCounters,
    irqs_before: u64,
    /// Rate rows: (ns into the row, packets so far), about every sixteenth of the budget: the
    /// samples of the row's rate (`batch_pps=`).
    marks: Vec<(u64, u64)>,
}

impl Row {
    fn begin(nic: &dyn Nic, name: &str) -> Self {
        println!("# phase: begin net.{}", name);
        Self {
            before: nic.counters(),
            irqs_before: nic_irqs(nic),
            ..Self::default()
        }
    }

    /// A rate row has moved `n` packets `elapsed_ns` into it; kept once per sixteenth of the
    /// row's budget.
    fn mark(&mut self, elapsed_ns: u64, n: u64) {
        let slice = row_ns() / 16;
        let next = self.marks.last().map_or(slice, |(t, _)| t + slice);
        if elapsed_ns >= next {
            self.marks.push((elapsed_ns, n));
        }
    }

    /// `batch_pps=`: the rate between consecutive marks (from the row's start).
    fn batch_pps(&self) -> String {
        let mut out = String::new();
        let mut from = (0u64, 0u64);
        for &(t, n) in &self.marks {
            if t > from.0 {
                if !out.is_empty() {
                    out.push(',');
                }
                out += &alloc::format!("{}", (n - from.1) * 1_000_000_000 / (t - from.0));
            }
            from = (t, n);
        }
        out
    }

    /// Close the phase and print the row, with its samples: `batch_p50=` for a latency row,
    /// `batch_pps=` for a rate row.
    fn end(mut self, nic: &dyn Nic, name: &str) {
        let after = nic.counters();
        let irqs = nic_irqs(nic) - self.irqs_before;
        println!("# phase: end net.{}", name);
        let frames = (after.tx_packets + after.rx_packets)
            .saturating_sub(self.before.tx_packets + self.before.rx_packets);
        if self.n_is_frames {
            self.n = frames;
        }
        let mut line = alloc::format!("# bench: net.{}", name);
        if !self.latencies.is_empty() {
            // In the order measured, before the sort.
            let batches = super::batch_medians(&self.latencies);
            self.latencies.sort_unstable();
            let l = &self.latencies;
            line += &alloc::format!(
                " ns={} p99={} min={} max={}",
                l[l.len() / 2],
                l[(l.len() * 99 / 100).min(l.len() - 1)],
                l[0],
                l[l.len() - 1]
            );
            line += &alloc::format!(" batch_p50={}", batches);
        } else if self.marks.len() >= 2 {
            line += &alloc::format!(" batch_pps={}", self.batch_pps());
        }
        line += &alloc::format!(
            " n={} bytes={} total_ns={} frames={} irqs={}",
            self.n,
            self.bytes,
            self.total_ns,
            frames,
            irqs
        );
        if let Some(r) = self.requested {
            line += &alloc::format!(" requested={} drops={}", r, r.saturating_sub(self.n));
        }
        println!("{}", line);
    }
}

/// `tx_*`: the same frame per flow, batch after batch, until the budget is spent and every
/// frame is back.
fn tx_row(link: &mut Link, name: &str, payload: usize) -> Result<(), String> {
    let frames: Vec<Vec<u8>> = (0..link.flows)
        .map(|i| {
            link.addrs
                .udp(LOCAL_PORT + i, PORT_DISCARD, payload, |p| p.fill(0x5a))
        })
        .collect();
    let budget = row_ns();
    let mut row = Row::begin(link.nic, name);
    let start = time::rdtsc();
    let mut sent = 0u64;
    let mut last_progress = start;
    while sent < MIN_TX || time::cycles_to_ns(time::rdtsc() - start) < budget {
        let mut queued = 0;
        while queued < TX_BATCH {
            let f = &frames[(sent % frames.len() as u64) as usize];
            match link.nic.send(f, TxChecksum::Complete) {
                Ok(()) => {
                    sent += 1;
                    queued += 1;
                    row.bytes += f.len() as u64;
                }
                Err(NicError::TxFull) => break,
                Err(e) => return Err(alloc::format!("send: {e}")),
            }
        }
        if queued > 0 {
            link.nic.flush().map_err(|e| alloc::format!("flush: {e}"))?;
        }
        let freed = link
            .nic
            .reclaim()
            .map_err(|e| alloc::format!("reclaim: {e}"))?;
        let now = time::rdtsc();
        row.mark(time::cycles_to_ns(now - start), sent);
        if queued > 0 || freed > 0 {
            last_progress = now;
        } else if time::cycles_to_ns(now - last_progress) > TX_STUCK_NS {
            return Err(alloc::format!(
                "TX stuck with {} frames in flight",
                link.nic.tx_in_flight()
            ));
        }
        // Stray frames (the peer's ARP) would otherwise wait in the RX ring.
        link.drain()?;
    }
    let wait = time::rdtsc();
    // `send` reclaims on its own when the ring is full, so count what is still out instead
    // of what came back.
    while link.nic.tx_in_flight() > 0 {
        link.nic
            .reclaim()
            .map_err(|e| alloc::format!("reclaim: {e}"))?;
        if time::cycles_to_ns(time::rdtsc() - wait) > TX_STUCK_NS {
            return Err(alloc::format!(
                "{} TX frames never completed",
                link.nic.tx_in_flight()
            ));
        }
    }
    row.total_ns = time::cycles_to_ns(time::rdtsc() - start);
    row.n = sent;
    row.end(link.nic, name);
    Ok(())
}

/// `rx_*`: bursts of `payload`-byte datagrams from the source, one request per flow, until the
/// budget is spent. The time counted is from each request to the burst's last datagram.
fn rx_row(link: &mut Link, name: &str, payload: usize) -> Result<(), String> {
    let budget = row_ns();
    let flows = link.flows;
    let per_flow = RX_BURST;
    let requests: Vec<Vec<u8>> = (0..flows)
        .map(|i| {
            link.addrs.udp(LOCAL_PORT + i, PORT_SOURCE, 8, |p| {
                p[0..4].copy_from_slice(&per_flow.to_le_bytes());
                p[4..6].copy_from_slice(&(payload as u16).to_le_bytes());
            })
        })
        .collect();
    let frame_len = (HEADERS + payload).max(ETH_FRAME_MIN) as u64;
    link.drain()?;
    let mut row = Row::begin(link.nic, name);
    let row_start = time::rdtsc();
    let mut requested = 0u64;
    let mut received = 0u64;
    let mut busy_cycles = 0u64;
    let idle_cycles = RX_IDLE_NS * time::tsc_hz() / 1_000_000_000;
    let spin_cycles = RX_SPIN_NS * time::tsc_hz() / 1_000_000_000;
    while requested < MIN_RX || time::cycles_to_ns(time::rdtsc() - row_start) < budget {
        let burst_start = time::rdtsc();
        for r in &requests {
            link.send_now(r)?;
        }
        let want = u64::from(per_flow) * u64::from(flows);
        requested += want;
        let mut got = 0u64;
        let mut last = burst_start;
        while got < want {
            let epoch = PLATFORM.interrupt_epoch();
            let mut count = |src: u16, dst: u16, _: &[u8], _: RxInfo| {
                if src == PORT_SOURCE && (LOCAL_PORT..LOCAL_PORT + flows).contains(&dst) {
                    got += 1;
                }
            };
            if link.poll(&mut count)? {
                last = time::rdtsc();
                continue;
            }
            let now = time::rdtsc();
            if now - last > idle_cycles {
                break;
            }
            // Busy a moment (the next frame is usually close), then sleep until the device
            // interrupts (or the 100 Hz tick).
            if now - last > spin_cycles && !link.nic.interrupt_vectors().is_empty() {
                PLATFORM.wait_for_interrupt(epoch);
            }
        }
        received += got;
        busy_cycles += last - burst_start;
        row.mark(time::cycles_to_ns(busy_cycles), received);
    }
    row.total_ns = time::cycles_to_ns(busy_cycles);
    row.n = received;
    row.bytes = received * frame_len;
    row.requested = Some(requested);
    row.end(link.nic, name);
    Ok(())
}

/// `rtt_udp`: an 18-byte datagram to the echo port and back, one at a time, busy-waiting.
fn rtt_row(link: &mut Link, name: &str) -> Result<(), String> {
    let budget = row_ns();
    let frame_len = (HEADERS + PAYLOAD_64).max(ETH_FRAME_MIN) as u64;
    link.drain()?;
    let mut row = Row::begin(link.nic, name);
    let start = time::rdtsc();
    let timeout = RTT_TIMEOUT_NS * time::tsc_hz() / 1_000_000_000;
    let mut lost = 0;
    let mut seq = 0u32;
    let echo = port_arg("net_echo_port", PORT_ECHO);
    while row.latencies.len() < MIN_RTT || time::cycles_to_ns(time::rdtsc() - start) < budget {
        seq += 1;
        let port = LOCAL_PORT + (seq % u32::from(link.flows)) as u16;
        let frame = link.addrs.udp(port, echo, PAYLOAD_64, |p| {
            p[..4].copy_from_slice(&seq.to_le_bytes())
        });
        let t0 = time::rdtsc();
        link.send_now(&frame)?;
        let mut back = false;
        while !back {
            let mut check = |src: u16, dst: u16, p: &[u8], _: RxInfo| {
                back |= src == echo && dst == port && p.get(..4) == Some(&seq.to_le_bytes());
            };
            link.poll(&mut check)?;
            if !back && time::rdtsc() - t0 > timeout {
                break;
            }
        }
        if back {
            row.latencies.push(time::cycles_to_ns(time::rdtsc() - t0));
        } else {
            lost += 1;
            if lost >= RTT_MAX_LOST {
                return Err(alloc::format!("{lost} echoes lost"));
            }
        }
    }
    row.total_ns = time::cycles_to_ns(time::rdtsc() - start);
    row.n = row.latencies.len() as u64;
    row.bytes = 2 * row.n * frame_len;
    row.end(link.nic, name);
    if lost > 0 {
        println!("# net bench: rtt_udp: {} echoes lost", lost);
    }
    Ok(())
}

/// A fresh local TCP port per connection, so that no 4-tuple the peer may still hold is reused.
fn tcp_port() -> u16 {
    static NEXT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);
    45_000 + NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % 5_000
}

/// A TCP socket connected to the peer's `port`.
fn tcp_connect(stack: &mut Stack, peer: IpAddress, port: u16) -> Result<SocketHandle, String> {
    let h = stack.sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(alloc::vec![0; TCP_BUFFER]),
        tcp::SocketBuffer::new(alloc::vec![0; TCP_BUFFER]),
    ));
    let cx = stack.iface.context();
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, IpEndpoint::new(peer, port), tcp_port())
        .map_err(|e| alloc::format!("TCP connect to port {port}: {e:?}"))?;
    stack.poll_until(TCP_TIMEOUT_NS, |s| {
        let st = s.sockets.get::<tcp::Socket>(h).state();
        st == tcp::State::Established || st == tcp::State::Closed
    });
    match stack.sockets.get::<tcp::Socket>(h).state() {
        tcp::State::Established => Ok(h),
        st => Err(alloc::format!("TCP connect to port {port}: {st}")),
    }
}

/// Read from `h` until the peer closes; `consume` sees every chunk. The bytes read.
fn tcp_read_to_close(
    stack: &mut Stack,
    h: SocketHandle,
    mut consume: impl FnMut(&[u8]),
) -> Result<u64, String> {
    let mut total = 0u64;
    let closed = stack.poll_until(TCP_TIMEOUT_NS, |s| {
        let sock = s.sockets.get_mut::<tcp::Socket>(h);
        while let Ok(n) = sock.recv(|b| {
            consume(b);
            (b.len(), b.len())
        }) {
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        !sock.may_recv()
    });
    if !closed {
        return Err(alloc::format!(
            "TCP: no close from the peer after {total} bytes"
        ));
    }
    Ok(total)
}

/// Close `h` and let the close finish (bounded), then forget it.
fn tcp_close(stack: &mut Stack, h: SocketHandle) {
    stack.sockets.get_mut::<tcp::Socket>(h).close();
    stack.poll_until(1_000_000_000, |s| {
        s.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed
    });
    stack.sockets.remove(h);
}

/// `tcp_tx`: stream to the sink until the budget is spent, close, and wait for its report
/// (every byte acknowledged and counted); the time runs to the report.
fn tcp_tx_row(stack: &mut Stack, peer: IpAddress, name: &str) -> Result<(), String> {
    let h = tcp_connect(stack, peer, port_arg("net_sink_port", PORT_DISCARD))?;
    let budget = row_ns();
    let mut row = Row::begin(stack.device.nic(), name);
    row.n_is_frames = true;
    let start = time::now_ns();
    let mut sent = 0u64;
    let mut error = None;
    stack.poll_until(budget + TCP_TIMEOUT_NS, |s| {
        if time::now_ns() - start >= budget && sent >= MIN_TCP_BYTES {
            return true;
        }
        let sock = s.sockets.get_mut::<tcp::Socket>(h);
        // The payload is whatever the socket buffer holds: the sink only counts it.
        while sock.can_send() {
            match sock.send(|buf| (buf.len(), buf.len())) {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    error = Some(alloc::format!("TCP send: {e:?}"));
                    return true;
                }
            }
        }
        !sock.may_send()
    });
    if let Some(e) = error {
        return Err(e);
    }
    stack.sockets.get_mut::<tcp::Socket>(h).close();
    let mut report = Vec::new();
    tcp_read_to_close(stack, h, |b| report.extend_from_slice(b))?;
    row.total_ns = time::now_ns() - start;
    row.bytes = sent;
    row.end(stack.device.nic(), name);
    tcp_close(stack, h);
    let counted = report
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if counted != Some(sent) {
        return Err(alloc::format!(
            "the sink counted {counted:?} bytes of {sent} sent"
        ));
    }
    Ok(())
}

/// `tcp_rx`: transfers of [`TCP_RX_CHUNK`] bytes from the source, one connection each, until
/// the budget is spent.
fn tcp_rx_row(stack: &mut Stack, peer: IpAddress, name: &str) -> Result<(), String> {
    let budget = row_ns();
    let chunk = if budget < ROW_NS {
        TCP_RX_CHUNK / 4
    } else {
        TCP_RX_CHUNK
    };
    let mut row = Row::begin(stack.device.nic(), name);
    row.n_is_frames = true;
    let start = time::now_ns();
    while row.bytes == 0 || time::now_ns() - start < budget {
        let h = tcp_connect(stack, peer, PORT_SOURCE)?;
        let mut request = [0u8; 16];
        request[..8].copy_from_slice(&chunk.to_le_bytes());
        request[8..].copy_from_slice(&0x0b1c_5eed_u64.to_le_bytes());
        stack
            .sockets
            .get_mut::<tcp::Socket>(h)
            .send_slice(&request)
            .map_err(|e| alloc::format!("TCP send: {e:?}"))?;
        let got = tcp_read_to_close(stack, h, |_| {})?;
        tcp_close(stack, h);
        if got != chunk {
            return Err(alloc::format!("the source sent {got} of {chunk} bytes"));
        }
        row.bytes += got;
    }
    row.total_ns = time::now_ns() - start;
    row.end(stack.device.nic(), name);
    Ok(())
}

fn raw_rows(nic: &mut dyn Nic, args: &NetArgs, pairs: u16) -> Result<(), String> {
    let (ip, peer_ip) = addresses(args);
    // The raw rows poll the ring and sleep on the NIC's interrupt when it is idle.
    nic.set_interrupts(true);
    let mut link = Link {
        addrs: Addrs {
            mac: nic.mac(),
            peer_mac: BROADCAST,
            ip,
            peer_ip,
        },
        nic,
        flows: pairs.max(1),
        pending_arp: None,
        irqs_seen: 0,
    };
    link.resolve_peer()?;
    for w in WORKLOADS.into_iter().filter(|w| selected(w)) {
        match w {
            "tx_1514" => tx_row(&mut link, w, PAYLOAD_1514)?,
            "tx_64" => tx_row(&mut link, w, PAYLOAD_64)?,
            "rx_1514" => rx_row(&mut link, w, PAYLOAD_1514)?,
            "rx_64" => rx_row(&mut link, w, PAYLOAD_64)?,
            "rtt_udp" => rtt_row(&mut link, w)?,
            _ => {}
        }
    }
    Ok(())
}

fn tcp_rows(nic: &mut dyn Nic, args: &NetArgs) -> Result<(), String> {
    let mut stack = Stack::new(nic, args.ip)?;
    let peer = IpAddress::Ipv4(args.peer);
    if selected("tcp_tx") {
        tcp_tx_row(&mut stack, peer, "tcp_tx")?;
    }
    if selected("tcp_rx") {
        tcp_rx_row(&mut stack, peer, "tcp_rx")?;
    }
    Ok(())
}

pub fn net() -> Outcome {
    let args = match NetArgs::from_cmdline() {
        Ok(a) => a,
        Err(e) => return Outcome::Fail(e),
    };
    // `net_pairs=`: the queue pairs to ask for (the device may offer fewer).
    let wanted = bootinfo::get()
        .arg_u64("net_pairs")
        .map_or(1, |p| p.clamp(1, u64::from(select::MAX_PAIRS)) as u16);
    let mut opened = match select::open(&args, wanted) {
        Ok(Some(n)) => n,
        Ok(None) => return Outcome::Skip("no NIC of the kind asked for"),
        Err(e) => return Outcome::Fail(e),
    };
    let kind = opened.kind();
    let pairs = opened.queue_pairs();
    let nic = opened.nic();
    let c = nic.counters();
    let result = raw_rows(nic, &args, pairs).and_then(|()| {
        if selected("tcp_tx") || selected("tcp_rx") {
            tcp_rows(nic, &args)
        } else {
            Ok(())
        }
    });
    let after = nic.counters();
    println!(
        "# net bench: {}, {} pair(s); {} frames out, {} in, {} TX drops, {} RX drops, {} interrupts",
        kind.name(),
        pairs,
        after.tx_packets - c.tx_packets,
        after.rx_packets - c.rx_packets,
        after.tx_drops - c.tx_drops,
        after.rx_drops - c.rx_drops,
        after.interrupts - c.interrupts
    );
    match result {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}
