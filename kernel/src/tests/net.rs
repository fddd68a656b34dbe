//! Networking through the whole guest stack: smoltcp (kernel/src/net) over any NIC driver,
//! against the host peer the README describes (ping, UDP 7 echo, TCP 7 echo, TCP 9 sink with
//! an FNV-1a report, TCP 19 source of the seeded pattern) or, for `net_dhcp`, QEMU's
//! user-mode network. Each test opens the NIC `net_model=` and `net_nic=` pick (the
//! first virtio-net, else the first e1000, else the first RTL8139: see kernel/src/net/select)
//! and SKIPs if there is none.

use crate::ktap::Outcome;
use crate::net::select::{self, Net, OpenedNic, MAX_PAIRS};
use crate::net::{IpSetup, NetArgs, Stack};
use crate::{bootinfo, fail, pattern, println, time};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use drivers::net::{LinkState, Nic, NicError, TxChecksum};
use smoltcp::iface::SocketHandle;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::wire::{Icmpv4Packet, Icmpv4Repr, IpAddress, IpEndpoint, Ipv4Address};

/// Bytes each way of the bulk TCP tests, and the seeds of their patterns.
const BULK_BYTES: u64 = 16 << 20;
const TX_SEED: u64 = 0x7e57_0009;
const RX_SEED: u64 = 0x7e57_0019;
/// smoltcp socket buffers for bulk TCP: a 256 KiB window (window scaling on).
const TCP_BUFFER: usize = 256 << 10;
pub(super) const SECOND: u64 = 1_000_000_000;

/// Run `body` on a stack over the selected NIC (SKIP without one), then log the counters;
/// with `net_model=each`, on every NIC in turn (see [`on_each_nic`]).
pub(super) fn with_stack(
    pairs: u16,
    ip: Option<IpSetup>,
    mut body: impl FnMut(&mut Stack<'_>, &NetArgs) -> Result<(), String>,
) -> Outcome {
    on_each_nic(pairs, |nic, args| {
        let ip = ip.unwrap_or(args.ip);
        let mut stack = Stack::new(nic, ip)?;
        if let (IpSetup::Static(_), Some(gw)) = (ip, args.gateway) {
            stack
                .iface
                .routes_mut()
                .add_default_ipv4_route(gw)
                .map_err(|e| format!("net_gw={gw}: {e:?}"))?;
        }
        let r = body(&mut stack, args);
        report(&mut stack);
        r
    })
}

/// Run `body` on the NIC the command line picks, or with `net_model=each` on every NIC of the
/// VM in bus order (each on its own network, the others quiet): it passes when every NIC
/// passed, and names the NICs that failed. SKIP when there is no NIC to run on.
fn on_each_nic(
    pairs: u16,
    mut body: impl FnMut(&mut dyn Nic, &NetArgs) -> Result<(), String>,
) -> Outcome {
    let args = match NetArgs::from_cmdline() {
        Ok(a) => a,
        Err(e) => fail!("{}", e),
    };
    let mut failures: Vec<String> = Vec::new();
    let mut ran = 0;
    for target in select::targets(&args) {
        let mut opened = match select::open(&target, pairs) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(e) => {
                failures.push(e);
                continue;
            }
        };
        ran += 1;
        let what = format!("{} {}", opened.kind().name(), target.nic);
        if args.each {
            println!("# net: on {what}");
        }
        if let Err(e) = body(opened.nic(), &target) {
            failures.push(if args.each { format!("{what}: {e}") } else { e });
        }
        opened.log_extras();
        // The next NIC's interrupts come on the same vector: this one goes quiet first.
        opened.nic().set_interrupts(false);
    }
    if ran == 0 && failures.is_empty() {
        return Outcome::Skip("no NIC of the kind asked for");
    }
    if args.each {
        println!("# net: ran on {} NIC(s), {} failed", ran, failures.len());
    }
    match failures.is_empty() {
        true => Outcome::Pass,
        false => Outcome::Fail(failures.join("; ")),
    }
}

fn report(stack: &mut Stack<'_>) {
    let interrupts = stack.interrupts();
    let d = &mut stack.device;
    let c = d.nic().counters();
    let b = d.counters();
    println!(
        "# net: nic: tx {} ({} bytes, {} drops), rx {} ({} bytes, {} drops), {} interrupts ({}), \
         {} notifies",
        c.tx_packets,
        c.tx_bytes,
        c.tx_drops,
        c.rx_packets,
        c.rx_bytes,
        c.rx_drops,
        c.interrupts,
        if interrupts {
            "interrupt-driven"
        } else {
            "polled"
        },
        c.notifies
    );
    println!(
        "# net: bridge: tx {} ({} checksums offloaded, {} dropped, {} full waits, {} flushes), \
         rx {} (checksum: {} by the device, {} here, {} bad), last error {:?}",
        b.tx_frames,
        b.tx_partial,
        b.tx_dropped,
        b.tx_full_waits,
        b.flushes,
        b.rx_frames,
        b.rx_checksum_by_device,
        b.rx_checksum_here,
        b.rx_bad_checksum,
        d.last_error()
    );
}

/// The peer address as smoltcp's.
fn peer(args: &NetArgs) -> IpAddress {
    IpAddress::Ipv4(args.peer)
}

pub(super) fn tcp_socket(stack: &mut Stack<'_>, buffer: usize) -> SocketHandle {
    let s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; buffer]),
        tcp::SocketBuffer::new(vec![0; buffer]),
    );
    stack.sockets.add(s)
}

pub(super) fn udp_socket(stack: &mut Stack<'_>, port: u16) -> Result<SocketHandle, String> {
    let mut s = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16 << 10]),
    );
    s.bind(port)
        .map_err(|e| format!("UDP bind {port}: {e:?}"))?;
    Ok(stack.sockets.add(s))
}

/// A local port for the test's own connections: distinct per call, so a test that runs after
/// another does not reuse a 4-tuple the peer may still hold.
pub(super) fn local_port() -> u16 {
    static NEXT: core::sync::atomic::AtomicU16 = core::sync::atomic::AtomicU16::new(0);
    50_000 + NEXT.fetch_add(1, core::sync::atomic::Ordering::Relaxed) % 10_000
}

/// Connect `h` to `remote` from `port` and wait until established.
fn connect(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    remote: IpEndpoint,
    port: u16,
) -> Result<(), String> {
    let cx = stack.iface.context();
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .connect(cx, remote, port)
        .map_err(|e| format!("TCP connect to {remote}: {e:?}"))?;
    let ok = stack.poll_until(10 * SECOND, |s| {
        let st = s.sockets.get::<tcp::Socket>(h).state();
        st == tcp::State::Established || st == tcp::State::Closed
    });
    let state = stack.sockets.get::<tcp::Socket>(h).state();
    if !ok || state != tcp::State::Established {
        return Err(format!("TCP connect to {remote}: {state} after 10 s"));
    }
    Ok(())
}

/// FNV-1a 64, as the sink reports it.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The contract's seeded byte stream: the disk pattern's sectors 0, 1, 2, ... concatenated.
struct PatternStream {
    seed: u64,
    sector: u64,
    buf: [u8; pattern::SECTOR],
    /// Bytes of `buf` already used.
    used: usize,
}

impl PatternStream {
    fn new(seed: u64) -> Self {
        let mut s = Self {
            seed,
            sector: 0,
            buf: [0; pattern::SECTOR],
            used: 0,
        };
        pattern::fill(seed, 0, &mut s.buf);
        s
    }

    /// The next `n` (≤ what is left of this sector) bytes.
    fn take(&mut self, n: usize) -> &[u8] {
        if self.used == pattern::SECTOR {
            self.sector += 1;
            pattern::fill(self.seed, self.sector, &mut self.buf);
            self.used = 0;
        }
        let n = n.min(pattern::SECTOR - self.used);
        let out = &self.buf[self.used..self.used + n];
        self.used += n;
        out
    }

    /// Fill `out` with the next bytes.
    fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            let chunk = self.take(out.len());
            let n = chunk.len();
            out[..n].copy_from_slice(chunk);
            out = &mut out[n..];
        }
    }

    /// Whether `data` is the next bytes; the offset into `data` of the first that is not.
    fn check(&mut self, mut data: &[u8]) -> Result<(), usize> {
        let mut at = 0;
        while !data.is_empty() {
            let chunk = self.take(data.len());
            let n = chunk.len();
            if let Some(i) = chunk.iter().zip(data).position(|(a, b)| a != b) {
                return Err(at + i);
            }
            at += n;
            data = &data[n..];
        }
        Ok(())
    }
}

/// One echo request of `size` payload bytes to `to`; waits for the matching reply.
fn ping_once(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    to: IpAddress,
    ident: u16,
    seq_no: u16,
    size: usize,
) -> Result<u64, String> {
    let data: Vec<u8> = (0..size).map(|i| (i as u8) ^ (seq_no as u8)).collect();
    let caps = ChecksumCapabilities::default();
    let req = Icmpv4Repr::EchoRequest {
        ident,
        seq_no,
        data: &data,
    };
    let start = time::now_ns();
    {
        let s = stack.sockets.get_mut::<icmp::Socket>(h);
        let buf = s
            .send(req.buffer_len(), to)
            .map_err(|e| format!("ping {to}: send: {e:?}"))?;
        req.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
    }
    let mut answer: Option<Result<(), String>> = None;
    stack.poll_until(3 * SECOND, |s| {
        let sock = s.sockets.get_mut::<icmp::Socket>(h);
        while let Ok((bytes, from)) = sock.recv() {
            let Ok(packet) = Icmpv4Packet::new_checked(bytes) else {
                continue;
            };
            match Icmpv4Repr::parse(&packet, &caps) {
                Ok(Icmpv4Repr::EchoReply {
                    ident: i,
                    seq_no: n,
                    data: d,
                }) if i == ident && n == seq_no => {
                    answer = Some(if from != to {
                        Err(format!("ping {to}: reply from {from}"))
                    } else if d != &data[..] {
                        Err(format!("ping {to}: {size}-byte reply differs"))
                    } else {
                        Ok(())
                    });
                }
                _ => {}
            }
        }
        answer.is_some()
    });
    match answer {
        Some(Ok(())) => Ok(time::now_ns() - start),
        Some(Err(e)) => Err(e),
        None => Err(format!(
            "ping {to} ({size} bytes, seq {seq_no}): no reply in 3 s"
        )),
    }
}

/// Ping `to` with each of `sizes`; the first may wait for ARP.
fn ping_sizes(stack: &mut Stack<'_>, to: IpAddress, sizes: &[usize]) -> Result<(), String> {
    let mut s = icmp::Socket::new(
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 8192]),
        icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 8192]),
    );
    let ident = 0x4e54;
    s.bind(icmp::Endpoint::Ident(ident))
        .map_err(|e| format!("ICMP bind: {e:?}"))?;
    let h = stack.sockets.add(s);
    for (seq, &size) in sizes.iter().enumerate() {
        let ns = ping_once(stack, h, to, ident, seq as u16, size)?;
        println!("# net: ping {} {} bytes: {} us", to, size, ns / 1000);
    }
    stack.sockets.remove(h);
    Ok(())
}

const PING_SIZES: [usize; 6] = [0, 1, 56, 512, 1000, 1472];

/// ARP and ICMP echo to the peer, several sizes up to a full frame.
pub fn ping() -> Outcome {
    with_stack(1, None, |stack, args| {
        ping_sizes(stack, peer(args), &PING_SIZES)
    })
}

/// Send `payload` to `to` from `h` and wait for the same bytes back from there.
pub(super) fn udp_round_trip(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    to: IpEndpoint,
    payload: &[u8],
    buf: &mut [u8],
) -> Result<bool, String> {
    udp_round_trip_within(stack, h, to, payload, buf, SECOND)
}

/// [`udp_round_trip`], waiting up to `timeout_ns` for the answer: for a caller that must
/// get it at the first try (a loaded host can take seconds).
fn udp_round_trip_within(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    to: IpEndpoint,
    payload: &[u8],
    buf: &mut [u8],
    timeout_ns: u64,
) -> Result<bool, String> {
    stack
        .sockets
        .get_mut::<udp::Socket>(h)
        .send_slice(payload, to)
        .map_err(|e| format!("UDP send of {} bytes: {e:?}", payload.len()))?;
    let mut got: Option<Result<(), String>> = None;
    stack.poll_until(timeout_ns, |s| {
        let sock = s.sockets.get_mut::<udp::Socket>(h);
        while let Ok((n, meta)) = sock.recv_slice(buf) {
            got = Some(if meta.endpoint != to {
                Err(format!("UDP echo from {} instead of {to}", meta.endpoint))
            } else if buf[..n] != *payload {
                let at = buf[..n]
                    .iter()
                    .zip(payload)
                    .position(|(a, b)| a != b)
                    .unwrap_or(n.min(payload.len()));
                Err(format!(
                    "UDP echo of {} bytes came back as {n} bytes, first difference at {at}",
                    payload.len()
                ))
            } else {
                Ok(())
            });
        }
        got.is_some()
    });
    match got {
        Some(Ok(())) => Ok(true),
        Some(Err(e)) => Err(e),
        None => Ok(false),
    }
}

/// Every UDP payload size from 1 to 1472 bytes through the echo service, byte for byte.
pub fn udp_echo() -> Outcome {
    with_stack(1, None, |stack, args| {
        let h = udp_socket(stack, local_port())?;
        let to = IpEndpoint::new(peer(args), 7);
        let mut buf = vec![0u8; 2048];
        let mut lost = 0;
        let start = time::now_ns();
        for size in 1..=1472usize {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            // A datagram may be lost on the way (UDP); the same size is retried, a few times.
            let mut tries = 0;
            while !udp_round_trip(stack, h, to, &payload, &mut buf)? {
                lost += 1;
                tries += 1;
                if tries == 3 {
                    return Err(format!("UDP echo of {size} bytes: no answer in 3 tries"));
                }
            }
        }
        println!(
            "# net: udp echo 1..=1472 bytes: {} ms, {} datagrams lost and resent",
            (time::now_ns() - start) / 1_000_000,
            lost
        );
        Ok(())
    })
}

/// Stream `length` bytes of the `seed` pattern into connected socket `h`, then close our
/// half; returns our FNV-1a of what was sent.
fn stream_pattern(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    length: u64,
    seed: u64,
    timeout_ns: u64,
) -> Result<Fnv, String> {
    let mut source = PatternStream::new(seed);
    let mut fnv = Fnv::new();
    let mut sent = 0u64;
    let mut error = None;
    stack.poll_until(timeout_ns, |s| {
        let sock = s.sockets.get_mut::<tcp::Socket>(h);
        while sent < length && sock.can_send() {
            let r = sock.send(|buf| {
                let n = buf.len().min((length - sent) as usize);
                source.fill(&mut buf[..n]);
                fnv.update(&buf[..n]);
                (n, n)
            });
            match r {
                Ok(n) => sent += n as u64,
                Err(e) => {
                    error = Some(format!("TCP send: {e:?}"));
                    break;
                }
            }
        }
        if !sock.may_send() && sent < length {
            error = Some(format!(
                "TCP connection lost ({}) after {sent} bytes",
                sock.state()
            ));
        }
        error.is_some() || (sent == length && sock.send_queue() == 0)
    });
    if let Some(e) = error {
        return Err(e);
    }
    if sent < length {
        return Err(format!(
            "TCP: {sent} of {length} bytes sent (and acknowledged) in {} s",
            timeout_ns / SECOND
        ));
    }
    stack.sockets.get_mut::<tcp::Socket>(h).close();
    Ok(fnv)
}

/// Read until the peer closes; `consume` gets each chunk. Returns the bytes read.
fn read_to_close(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    timeout_ns: u64,
    mut consume: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<u64, String> {
    let mut total = 0u64;
    let mut error = None;
    let closed = stack.poll_until(timeout_ns, |s| {
        let sock = s.sockets.get_mut::<tcp::Socket>(h);
        while sock.can_recv() {
            let r = sock.recv(|buf| (buf.len(), consume(buf).map(|()| buf.len())));
            match r {
                Ok(Ok(n)) => total += n as u64,
                Ok(Err(e)) => error = Some(e),
                Err(e) => error = Some(format!("TCP recv: {e:?}")),
            }
            if error.is_some() {
                break;
            }
        }
        error.is_some() || !sock.may_recv()
    });
    if let Some(e) = error {
        return Err(e);
    }
    if !closed {
        return Err(format!(
            "TCP: the peer did not close within {} s ({total} bytes read)",
            timeout_ns / SECOND
        ));
    }
    Ok(total)
}

/// MB/s of `bytes` in `ns`.
fn mb_per_s(bytes: u64, ns: u64) -> u64 {
    bytes * 1000 / ns.max(1)
}

/// Send `length` bytes of the `seed` pattern to the sink (TCP 9) from `port`; check its report.
fn sink_transfer(
    stack: &mut Stack<'_>,
    args: &NetArgs,
    port: u16,
    length: u64,
    seed: u64,
) -> Result<u64, String> {
    let h = tcp_socket(stack, TCP_BUFFER);
    connect(stack, h, IpEndpoint::new(peer(args), 9), port)?;
    let start = time::now_ns();
    let ours = stream_pattern(stack, h, length, seed, 120 * SECOND)?;
    let mut report = Vec::new();
    read_to_close(stack, h, 10 * SECOND, |b| {
        report.extend_from_slice(b);
        Ok(())
    })?;
    let ns = time::now_ns() - start;
    stack.sockets.remove(h);
    if report.len() != 16 {
        return Err(format!(
            "sink report is {} bytes, not 16: {report:02x?}",
            report.len()
        ));
    }
    let total = u64::from_le_bytes(report[..8].try_into().expect("8 bytes"));
    let fnv = u64::from_le_bytes(report[8..].try_into().expect("8 bytes"));
    if total != length || fnv != ours.0 {
        return Err(format!(
            "sink got {total} bytes, FNV {fnv:#018x}; we sent {length}, FNV {:#018x}",
            ours.0
        ));
    }
    Ok(ns)
}

/// 16 MiB of the seeded pattern to the TCP sink; its FNV-1a must match ours.
pub fn tcp_tx() -> Outcome {
    with_stack(1, None, |stack, args| {
        let ns = sink_transfer(stack, args, local_port(), BULK_BYTES, TX_SEED)?;
        println!(
            "# net: tcp tx {} bytes: {} ms, {} MB/s",
            BULK_BYTES,
            ns / 1_000_000,
            mb_per_s(BULK_BYTES, ns)
        );
        Ok(())
    })
}

/// 16 MiB from the TCP source, checked against the seeded pattern as it arrives.
pub fn tcp_rx() -> Outcome {
    with_stack(1, None, |stack, args| {
        let h = tcp_socket(stack, TCP_BUFFER);
        connect(stack, h, IpEndpoint::new(peer(args), 19), local_port())?;
        let mut request = [0u8; 16];
        request[..8].copy_from_slice(&BULK_BYTES.to_le_bytes());
        request[8..].copy_from_slice(&RX_SEED.to_le_bytes());
        stack
            .sockets
            .get_mut::<tcp::Socket>(h)
            .send_slice(&request)
            .map_err(|e| format!("TCP send: {e:?}"))?;
        let start = time::now_ns();
        let mut expect = PatternStream::new(RX_SEED);
        let mut offset = 0u64;
        let total = read_to_close(stack, h, 120 * SECOND, |chunk| {
            let r = expect.check(chunk).map_err(|i| {
                format!(
                    "TCP source: byte {} differs from the pattern",
                    offset + i as u64
                )
            });
            offset += chunk.len() as u64;
            r
        })?;
        let ns = time::now_ns() - start;
        stack.sockets.get_mut::<tcp::Socket>(h).close();
        stack.poll_until(SECOND, |s| {
            s.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed
        });
        stack.sockets.remove(h);
        if total != BULK_BYTES {
            return Err(format!(
                "TCP source sent {total} bytes, asked for {BULK_BYTES}"
            ));
        }
        println!(
            "# net: tcp rx {} bytes: {} ms, {} MB/s",
            total,
            ns / 1_000_000,
            mb_per_s(total, ns)
        );
        Ok(())
    })
}

/// A few messages through the TCP echo service, compared byte for byte.
pub fn tcp_echo() -> Outcome {
    with_stack(1, None, |stack, args| {
        tcp_echo_to(stack, IpEndpoint::new(peer(args), 7))
    })
}

/// Messages of sizes from 1 byte to 20000 through one connection to the echo at `remote`;
/// each must come back whole and unchanged.
fn tcp_echo_to(stack: &mut Stack<'_>, remote: IpEndpoint) -> Result<(), String> {
    let h = tcp_socket(stack, 64 << 10);
    connect(stack, h, remote, local_port())?;
    let mut source = PatternStream::new(0xec40);
    for size in [1usize, 100, 1460, 1461, 4096, 20000] {
        let mut msg = vec![0u8; size];
        source.fill(&mut msg);
        let mut sent = 0;
        let mut back = Vec::with_capacity(size);
        let mut error = None;
        let done = stack.poll_until(10 * SECOND, |s| {
            let sock = s.sockets.get_mut::<tcp::Socket>(h);
            if sent < size {
                match sock.send_slice(&msg[sent..]) {
                    Ok(n) => sent += n,
                    Err(e) => error = Some(format!("TCP send: {e:?}")),
                }
            }
            while sock.can_recv() {
                let _ = sock.recv(|b| {
                    back.extend_from_slice(b);
                    (b.len(), ())
                });
            }
            error.is_some() || back.len() >= size
        });
        if let Some(e) = error {
            return Err(e);
        }
        if !done || back != msg {
            return Err(format!(
                "TCP echo of {size} bytes: {} bytes back{}",
                back.len(),
                if back.len() == size {
                    ", different"
                } else {
                    ""
                }
            ));
        }
    }
    stack.sockets.get_mut::<tcp::Socket>(h).close();
    stack.poll_until(2 * SECOND, |s| {
        s.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed
    });
    Ok(())
}

/// Under user-mode networking (by name): DHCP, then the TCP echo through the host alias (the
/// lease's router) to port `net_host_port=`, which the VMM proxies to that port on the host's
/// loopback, where the test runs an echo server.
pub fn host_tcp() -> Outcome {
    let Some(port) = bootinfo::get()
        .arg_u64("net_host_port")
        .and_then(|p| u16::try_from(p).ok())
    else {
        fail!("net_host_tcp needs net_host_port=PORT");
    };
    with_stack(1, Some(IpSetup::Dhcp), |stack, _| {
        if !stack.poll_until(15 * SECOND, |s| s.lease.is_some()) {
            return Err(String::from("DHCP: no lease in 15 s"));
        }
        let Some(host) = stack.lease.and_then(|l| l.router) else {
            return Err(String::from(
                "DHCP: the lease names no router (the host alias)",
            ));
        };
        println!("# net: TCP echo through the host alias {host}:{port}");
        tcp_echo_to(stack, IpEndpoint::new(IpAddress::Ipv4(host), port))
    })
}

/// The link state as the device reports it; it must be what `net_expect_link=` says (up by
/// default). A link that is down must refuse to send with [`NicError::LinkDown`].
pub fn link() -> Outcome {
    on_each_nic(1, link_as_expected)
}

fn link_as_expected(nic: &mut dyn Nic, args: &NetArgs) -> Result<(), String> {
    let state = nic.link();
    let expected = if args.expect_link_down {
        LinkState::Down
    } else {
        LinkState::Up
    };
    println!("# net: link {:?} (expected {:?})", state, expected);
    if state != expected {
        return Err(format!("link is {state:?}, expected {expected:?}"));
    }
    if state == LinkState::Down {
        // A broadcast ARP-sized frame: the contents do not matter, the refusal does.
        let mut frame = [0u8; 60];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&nic.mac());
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        match nic.send(&frame, TxChecksum::Complete) {
            Err(NicError::LinkDown) => println!("# net: send with the link down: refused"),
            other => return Err(format!("send with the link down: {other:?}, not LinkDown")),
        }
    }
    Ok(())
}

/// DHCPv4 (whatever `net_ip=` says), then ping the router it names. Under QEMU's user-mode
/// network the lease is 10.0.2.15/24 with router 10.0.2.2 (the host test checks that).
pub fn dhcp() -> Outcome {
    with_stack(1, Some(IpSetup::Dhcp), |stack, _| {
        let start = time::now_ns();
        if !stack.poll_until(15 * SECOND, |s| s.lease.is_some()) {
            return Err(String::from("DHCP: no lease in 15 s"));
        }
        let lease = stack.lease.expect("checked");
        println!(
            "# net: dhcp lease {} router {} in {} ms",
            lease.address,
            lease
                .router
                .map_or(String::from("none"), |r| format!("{r}")),
            (time::now_ns() - start) / 1_000_000
        );
        let Some(router) = lease.router else {
            return Err(String::from("DHCP: the lease names no router to ping"));
        };
        ping_sizes(stack, IpAddress::Ipv4(router), &[0, 56, 1472])
    })
}

/// A local port whose flow the driver sends on `pair` (of `pairs`), to `remote`:`remote_port`
/// over protocol `proto`, found by asking the driver about a header-only frame.
fn port_for_pair(
    nic: &Net,
    src: Ipv4Address,
    remote: Ipv4Address,
    proto: u8,
    remote_port: u16,
    pair: usize,
    start: u16,
) -> u16 {
    let mut frame = [0u8; 14 + 20 + 8];
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame[14] = 0x45;
    frame[14 + 9] = proto;
    frame[14 + 12..14 + 16].copy_from_slice(&src.octets());
    frame[14 + 16..14 + 20].copy_from_slice(&remote.octets());
    frame[34 + 2..34 + 4].copy_from_slice(&remote_port.to_be_bytes());
    for port in start..start.saturating_add(4096) {
        frame[34..36].copy_from_slice(&port.to_be_bytes());
        if nic.tx_pair_for(&frame) == pair {
            return port;
        }
    }
    start
}

/// With several queue pairs: a UDP echo flow and a TCP sink flow on every pair at once
/// (ports chosen so the driver's flow hash puts each on its pair); every pair must have
/// carried traffic both ways. The host checks the device's per-queue counters too.
pub fn mq() -> Outcome {
    let args = match NetArgs::from_cmdline() {
        Ok(a) => a,
        Err(e) => fail!("{}", e),
    };
    let IpSetup::Static(cidr) = args.ip else {
        return Outcome::Skip("net_mq needs a static net_ip=");
    };
    let mut nic = match select::open(&args, MAX_PAIRS) {
        Ok(Some(OpenedNic::Virtio(n))) => n,
        Ok(_) => return Outcome::Skip("no virtio-net device"),
        Err(e) => fail!("{}", e),
    };
    let pairs = usize::from(nic.queue_pairs());
    if pairs < 2 {
        return Outcome::Skip("the device gave one queue pair");
    }
    let flows: Vec<(u16, u16)> = (0..pairs)
        .map(|p| {
            let base = 20_000 + 1000 * p as u16;
            (
                port_for_pair(&nic, cidr.address(), args.peer, 17, 7, p, base),
                port_for_pair(&nic, cidr.address(), args.peer, 6, 9, p, base + 500),
            )
        })
        .collect();
    let before: Vec<_> = (0..pairs).filter_map(|i| nic.pair_counters(i)).collect();
    let result = {
        let mut stack = match Stack::new(nic.as_mut(), args.ip) {
            Ok(s) => s,
            Err(e) => fail!("{}", e),
        };
        let r = mq_traffic(&mut stack, &args, &flows);
        report(&mut stack);
        r
    };
    if let Err(e) = result {
        return Outcome::Fail(e);
    }
    let mut idle = Vec::new();
    for (i, b) in before.iter().enumerate() {
        let a = nic.pair_counters(i).unwrap_or_default();
        let (tx, rx) = (
            a.nic.tx_packets - b.nic.tx_packets,
            a.nic.rx_packets - b.nic.rx_packets,
        );
        println!(
            "# net: mq pair {}: tx {} rx {} packets, {} interrupts (udp port {}, tcp port {})",
            i,
            tx,
            rx,
            a.nic.interrupts - b.nic.interrupts,
            flows[i].0,
            flows[i].1
        );
        if tx == 0 || rx == 0 {
            idle.push(i);
        }
    }
    if !idle.is_empty() {
        fail!(
            "queue pairs {:?} of {} carried no traffic one way",
            idle,
            pairs
        );
    }
    Outcome::Pass
}

/// 1 MiB per flow: all TCP flows connected, then streamed together; then UDP echoes per flow.
fn mq_traffic(stack: &mut Stack<'_>, args: &NetArgs, flows: &[(u16, u16)]) -> Result<(), String> {
    const PER_FLOW: u64 = 1 << 20;
    let remote = IpEndpoint::new(peer(args), 9);
    let mut handles = Vec::new();
    for &(_, tcp_port) in flows {
        let h = tcp_socket(stack, 64 << 10);
        connect(stack, h, remote, tcp_port)?;
        handles.push(h);
    }
    // Interleaved: every socket is fed in each round, so the pairs carry traffic at once.
    let mut sources: Vec<(PatternStream, Fnv, u64)> = (0..handles.len())
        .map(|i| (PatternStream::new(TX_SEED + i as u64), Fnv::new(), 0))
        .collect();
    let done = stack.poll_until(60 * SECOND, |s| {
        let mut all = true;
        for (h, (src, fnv, sent)) in handles.iter().zip(sources.iter_mut()) {
            let sock = s.sockets.get_mut::<tcp::Socket>(*h);
            while *sent < PER_FLOW && sock.can_send() {
                let Ok(n) = sock.send(|buf| {
                    let n = buf.len().min((PER_FLOW - *sent) as usize);
                    src.fill(&mut buf[..n]);
                    fnv.update(&buf[..n]);
                    (n, n)
                }) else {
                    break;
                };
                *sent += n as u64;
            }
            if *sent == PER_FLOW && sock.send_queue() == 0 {
                sock.close();
            } else {
                all = false;
            }
        }
        all
    });
    if !done {
        return Err(String::from("mq: TCP flows did not finish in 60 s"));
    }
    for (i, h) in handles.iter().enumerate() {
        let mut report = Vec::new();
        read_to_close(stack, *h, 10 * SECOND, |b| {
            report.extend_from_slice(b);
            Ok(())
        })?;
        let fnv = report
            .get(8..16)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        if fnv != Some(sources[i].1 .0) {
            return Err(format!(
                "mq: TCP flow {i}: the sink's report {report:02x?} differs"
            ));
        }
        stack.sockets.remove(*h);
    }
    let mut buf = vec![0u8; 2048];
    for &(udp_port, _) in flows {
        let h = udp_socket(stack, udp_port)?;
        for k in 0..32usize {
            let payload: Vec<u8> = (0..64 + k * 40).map(|i| (i + k) as u8).collect();
            let mut tries = 0;
            while !udp_round_trip(stack, h, IpEndpoint::new(peer(args), 7), &payload, &mut buf)? {
                tries += 1;
                if tries == 3 {
                    return Err(format!("mq: UDP echo from port {udp_port}: no answer"));
                }
            }
        }
        stack.sockets.remove(h);
    }
    Ok(())
}

/// The two-VM test's port, length each way, and the seeds of its two streams.
const PAIR_PORT: u16 = 5001;
const PAIR_BYTES: u64 = 4 << 20;
const PAIR_SEED_UP: u64 = 0x7e57_5001;
const PAIR_SEED_DOWN: u64 = 0x7e57_5002;

/// Two VMs on one switch (`net_role=server` on one, `net_role=client` with `net_peer=` the
/// server's address on the other, distinct `net_ip=` and MACs): the client streams 4 MiB of
/// one pattern to the server and closes its half, the server checks it and streams 4 MiB of
/// another back, which the client checks.
pub fn tcp_pair() -> Outcome {
    let role = bootinfo::get().arg("net_role");
    with_stack(1, None, |stack, args| match role {
        Some("server") => pair_server(stack),
        Some("client") => pair_client(stack, args),
        _ => Err(String::from(
            "net_tcp_pair needs net_role=server or net_role=client",
        )),
    })
}

/// Read to the other side's FIN, checking the `seed` pattern; the byte count must be `length`.
fn read_pattern(
    stack: &mut Stack<'_>,
    h: SocketHandle,
    length: u64,
    seed: u64,
) -> Result<u64, String> {
    let start = time::now_ns();
    let mut expect = PatternStream::new(seed);
    let mut offset = 0u64;
    let total = read_to_close(stack, h, 120 * SECOND, |chunk| {
        let r = expect
            .check(chunk)
            .map_err(|i| format!("byte {} differs from the pattern", offset + i as u64));
        offset += chunk.len() as u64;
        r
    })?;
    if total != length {
        return Err(format!("{total} bytes arrived, {length} expected"));
    }
    Ok(time::now_ns() - start)
}

fn pair_server(stack: &mut Stack<'_>) -> Result<(), String> {
    let h = tcp_socket(stack, TCP_BUFFER);
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .listen(PAIR_PORT)
        .map_err(|e| format!("TCP listen {PAIR_PORT}: {e:?}"))?;
    if !stack.poll_until(60 * SECOND, |s| {
        s.sockets.get::<tcp::Socket>(h).state() == tcp::State::Established
    }) {
        return Err(String::from("pair server: no client within 60 s"));
    }
    let up = read_pattern(stack, h, PAIR_BYTES, PAIR_SEED_UP)?;
    let start = time::now_ns();
    stream_pattern(stack, h, PAIR_BYTES, PAIR_SEED_DOWN, 120 * SECOND)?;
    stack.poll_until(5 * SECOND, |s| {
        s.sockets.get::<tcp::Socket>(h).state() == tcp::State::Closed
    });
    println!(
        "# net: pair server: {} bytes in {} ms, {} bytes out in {} ms",
        PAIR_BYTES,
        up / 1_000_000,
        PAIR_BYTES,
        (time::now_ns() - start) / 1_000_000
    );
    Ok(())
}

fn pair_client(stack: &mut Stack<'_>, args: &NetArgs) -> Result<(), String> {
    let remote = IpEndpoint::new(peer(args), PAIR_PORT);
    let h = tcp_socket(stack, TCP_BUFFER);
    // The server VM may not be listening yet (a refused connect closes the socket): retry.
    let deadline = time::now_ns() + 60 * SECOND;
    loop {
        match connect(stack, h, remote, local_port()) {
            Ok(()) => break,
            Err(e) if time::now_ns() >= deadline => return Err(e),
            Err(_) => {
                stack.sockets.get_mut::<tcp::Socket>(h).abort();
                stack.poll_until(200_000_000, |_| false);
            }
        }
    }
    let start = time::now_ns();
    stream_pattern(stack, h, PAIR_BYTES, PAIR_SEED_UP, 120 * SECOND)?;
    let up = time::now_ns() - start;
    let down = read_pattern(stack, h, PAIR_BYTES, PAIR_SEED_DOWN)?;
    println!(
        "# net: pair client: {} bytes out in {} ms, {} bytes in in {} ms",
        PAIR_BYTES,
        up / 1_000_000,
        PAIR_BYTES,
        down / 1_000_000
    );
    Ok(())
}

/// Datagrams asked of the UDP source in the flood test, and their size.
const FLOOD_COUNT: u32 = 20_000;
const FLOOD_SIZE: u16 = 1472;
/// How long the guest looks away after asking: far longer than its RX ring lasts
/// (`flood_pause_ms=N` sets it: a host test gives a loaded host longer to fill the ring).
const FLOOD_PAUSE_MS: u64 = 200;
/// The flood is over once nothing arrived for this long. A loaded host can leave its source
/// unscheduled for a few hundred ms; a shorter gap ended the count while datagrams still came.
const FLOOD_QUIET_NS: u64 = 2 * SECOND;
/// How long each of the flood test's echoes may take: it must answer at its first try.
const ECHO_NS: u64 = 10 * SECOND;
/// How long the first datagram may take after the pause (a loaded host starts late).
const FLOOD_START_NS: u64 = 30 * SECOND;

/// What the flood test has taken from its socket.
#[derive(Default)]
struct FloodCount {
    received: u64,
    /// When the last datagram was taken.
    last: Option<u64>,
    /// The first datagram that is not the source's pattern.
    bad: Option<u64>,
}

impl FloodCount {
    /// Take every datagram waiting on `sock`, checking each; returns the time.
    fn take(&mut self, sock: &mut udp::Socket) -> u64 {
        while let Ok((data, _)) = sock.recv() {
            self.received += 1;
            self.last = Some(time::now_ns());
            let first = data.first().copied().unwrap_or(0);
            let intact = data.len() == usize::from(FLOOD_SIZE)
                && data
                    .iter()
                    .enumerate()
                    .all(|(i, &b)| b == first.wrapping_add(i as u8));
            if !intact && self.bad.is_none() {
                self.bad = Some(self.received);
            }
        }
        time::now_ns()
    }
}

/// An RX flood: ask the UDP source for 20000 full-size datagrams, stop polling for 200 ms
/// (`flood_pause_ms`) so the RX ring overruns, then take what comes until the line is quiet (2 s). No hang; every
/// datagram that arrives is intact (byte i of datagram k is `k + i`); the rest were dropped
/// (the host counts where); afterwards UDP echo still works.
pub fn rx_flood() -> Outcome {
    with_stack(1, None, |stack, args| {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 64], vec![0; 128 << 10]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        );
        let port = local_port();
        s.bind(port)
            .map_err(|e| format!("UDP bind {port}: {e:?}"))?;
        let h = stack.sockets.add(s);
        // The echoes have a socket of their own: flood datagrams may still trickle in.
        let echoes = udp_socket(stack, local_port())?;
        // ARP first (an echo), so the request is not the one held back for it.
        let echo = IpEndpoint::new(peer(args), 7);
        let mut buf = vec![0u8; 2048];
        if !udp_round_trip_within(stack, echoes, echo, b"before the flood", &mut buf, ECHO_NS)? {
            return Err(String::from("UDP echo before the flood: no answer"));
        }
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&FLOOD_COUNT.to_le_bytes());
        request[4..6].copy_from_slice(&FLOOD_SIZE.to_le_bytes());
        stack
            .sockets
            .get_mut::<udp::Socket>(h)
            .send_slice(&request, IpEndpoint::new(peer(args), 19))
            .map_err(|e| format!("UDP send: {e:?}"))?;
        stack.poll();
        let pause_ms = bootinfo::get()
            .arg_u64("flood_pause_ms")
            .unwrap_or(FLOOD_PAUSE_MS);
        let pause_end = time::now_ns() + pause_ms.min(60_000) * 1_000_000;
        while time::now_ns() < pause_end {
            core::hint::spin_loop();
        }
        let mut flood = FloodCount::default();
        let start = time::now_ns();
        // Until the first datagram, then until the line has been quiet for FLOOD_QUIET_NS.
        stack.poll_until(FLOOD_START_NS + 30 * SECOND, |s| {
            let now = flood.take(s.sockets.get_mut::<udp::Socket>(h));
            match flood.last {
                Some(last) => now - last > FLOOD_QUIET_NS,
                None => now - start > FLOOD_START_NS,
            }
        });
        if flood.received == 0 {
            return Err(String::from("the flood never came"));
        }
        let last = flood.last.unwrap_or(start);
        // The ring recovered: echoes go through again. Datagrams of the flood that still come
        // are taken and counted all the same, so none is miscounted as lost.
        for k in 0..8u8 {
            let payload = [k; 100];
            let answered = udp_round_trip_within(stack, echoes, echo, &payload, &mut buf, ECHO_NS)?;
            flood.take(stack.sockets.get_mut::<udp::Socket>(h));
            if !answered {
                return Err(format!("UDP echo {k} after the flood: no answer"));
            }
        }
        if let Some(n) = flood.bad {
            return Err(format!("flood datagram {n} is not the source's pattern"));
        }
        let received = flood.received;
        println!(
            "# net: rx flood: {} of {} datagrams of {} bytes arrived ({} lost) in {} ms",
            received,
            FLOOD_COUNT,
            FLOOD_SIZE,
            u64::from(FLOOD_COUNT) - received.min(u64::from(FLOOD_COUNT)),
            (last - start) / 1_000_000
        );
        if received > u64::from(FLOOD_COUNT) {
            return Err(format!("{received} datagrams for {FLOOD_COUNT} asked"));
        }
        Ok(())
    })
}
