//! The TAP backend against the Linux kernel's own stack, in a network namespace of the test's
//! own (a thread unshares CLONE_NEWNET, so the TAP, its address and everything sent stay
//! there and vanish with the thread's fds). The namespace side is 192.168.77.1/24; the
//! backend plays 192.168.77.2. Needs root and /dev/net/tun: SKIP without them, except under
//! CI=true, where they are demanded.

mod common;
use common::have_tap;
use hypervisor_harness::backends::net::tap::TapBackend;
use hypervisor_harness::backends::net::{ChecksumRequest, FrameMeta, NetBackend, MAX_FRAME};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, Icmpv4Packet, Icmpv4Repr, IpAddress, IpProtocol, Ipv4Address, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};
use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

const TAP: &str = "hhtap0";
const HOST_IP: Ipv4Address = Ipv4Address::new(192, 168, 77, 1);
const OUR_IP: Ipv4Address = Ipv4Address::new(192, 168, 77, 2);
const OUR_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// Run `f` on a thread of its own in a new network namespace.
fn in_new_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare affects only this thread's namespaces.
            let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// `ip ARGS` in this thread's namespace (a child inherits it).
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The next frame `want` accepts, within 5 s.
fn wait_for<T>(
    tap: &mut TapBackend,
    what: &str,
    mut want: impl FnMut(&[u8], FrameMeta) -> Option<T>,
) -> T {
    let mut buf = [0u8; MAX_FRAME];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "no {what} from the kernel");
        match tap.receive(&mut buf).unwrap() {
            Some((n, meta)) => {
                if let Some(t) = want(&buf[..n], meta) {
                    return t;
                }
            }
            None => {
                let mut p = libc::pollfd {
                    fd: tap.rx_ready_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, 100) };
            }
        }
    }
}

fn ethernet(dst: [u8; 6], ty: EthernetProtocol, payload_len: usize) -> (Vec<u8>, EthernetRepr) {
    let repr = EthernetRepr {
        src_addr: EthernetAddress(OUR_MAC),
        dst_addr: EthernetAddress(dst),
        ethertype: ty,
    };
    (vec![0; repr.buffer_len() + payload_len], repr)
}

fn arp_request() -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(OUR_MAC),
        source_protocol_addr: OUR_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: HOST_IP,
    };
    let (mut f, e) = ethernet([0xff; 6], EthernetProtocol::Arp, arp.buffer_len());
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    e.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    f
}

fn ipv4(dst_mac: [u8; 6], proto: IpProtocol, l4_len: usize) -> (Vec<u8>, usize) {
    let ip = Ipv4Repr {
        src_addr: OUR_IP,
        dst_addr: HOST_IP,
        next_header: proto,
        payload_len: l4_len,
        hop_limit: 64,
    };
    let (mut f, e) = ethernet(dst_mac, EthernetProtocol::Ipv4, ip.buffer_len() + l4_len);
    let mut frame = EthernetFrame::new_unchecked(&mut f);
    e.emit(&mut frame);
    ip.emit(
        &mut Ipv4Packet::new_unchecked(frame.payload_mut()),
        &ChecksumCapabilities::default(),
    );
    (f, 14 + ip.buffer_len())
}

fn ping(dst_mac: [u8; 6], seq: u16, data: &[u8]) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 0x77,
        seq_no: seq,
        data,
    };
    let (mut f, l4) = ipv4(dst_mac, IpProtocol::Icmp, icmp.buffer_len());
    icmp.emit(
        &mut Icmpv4Packet::new_unchecked(&mut f[l4..]),
        &ChecksumCapabilities::default(),
    );
    f
}

/// A UDP frame to HOST_IP:`port` with a complete checksum.
fn udp(dst_mac: [u8; 6], port: u16, payload: &[u8]) -> Vec<u8> {
    let repr = UdpRepr {
        src_port: 4000,
        dst_port: port,
    };
    let len = repr.header_len() + payload.len();
    let (mut f, l4) = ipv4(dst_mac, IpProtocol::Udp, len);
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut f[l4..]),
        &IpAddress::Ipv4(OUR_IP),
        &IpAddress::Ipv4(HOST_IP),
        payload.len(),
        |b| b.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    f
}

/// The same frame with its checksum left partial, as a guest offloading it sends it: the
/// checksum field holds the folded pseudo-header sum, not its complement.
fn udp_partial(dst_mac: [u8; 6], port: u16, payload: &[u8]) -> (Vec<u8>, ChecksumRequest) {
    let mut f = udp(dst_mac, port, payload);
    let len = (8 + payload.len()) as u32;
    let mut sum: u32 = [OUR_IP.octets(), HOST_IP.octets()]
        .iter()
        .flat_map(|a| {
            [
                u16::from_be_bytes([a[0], a[1]]),
                u16::from_be_bytes([a[2], a[3]]),
            ]
        })
        .map(u32::from)
        .sum::<u32>()
        + 17
        + len;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let full = [f[40], f[41]];
    f[40..42].copy_from_slice(&(sum as u16).to_be_bytes());
    assert_ne!(
        full,
        [f[40], f[41]],
        "the partial value differs from the checksum"
    );
    (
        f,
        ChecksumRequest {
            start: 34,
            offset: 6,
        },
    )
}

/// Whether `sock` gets `payload` within `wait`.
fn socket_gets(sock: &UdpSocket, payload: &[u8], wait: Duration) -> bool {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 2048];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            assert_eq!(from.to_string(), "192.168.77.2:4000");
            &buf[..n] == payload
        }
        Err(_) => false,
    }
}

fn kernel_answers(vnet_hdr: bool) {
    let mut tap = TapBackend::open(TAP, vnet_hdr).expect("open the TAP");
    assert_eq!(tap.accepts_partial_checksum(), vnet_hdr);
    // No IPv6 chatter on the TAP (best effort: not every kernel has IPv6).
    let _ = Command::new("sysctl")
        .args(["-qw", &format!("net.ipv6.conf.{TAP}.disable_ipv6=1")])
        .output();
    ip(&["link", "set", TAP, "up"]);
    ip(&["addr", "add", "192.168.77.1/24", "dev", TAP]);
    let meta = FrameMeta::default();

    // ARP: the kernel tells us its MAC (and learns ours).
    tap.transmit(&meta, &arp_request()).unwrap();
    let host_mac = wait_for(&mut tap, "ARP reply", |f, _| {
        let eth = EthernetFrame::new_checked(f).ok()?;
        if eth.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        match ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()? {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr,
                source_protocol_addr,
                target_hardware_addr,
                ..
            } if source_protocol_addr == HOST_IP => {
                assert_eq!(target_hardware_addr, EthernetAddress(OUR_MAC));
                Some(source_hardware_addr.0)
            }
            _ => None,
        }
    });

    // Ping.
    let data = b"hypervisor-harness tap test payload";
    tap.transmit(&meta, &ping(host_mac, 1, data)).unwrap();
    wait_for(&mut tap, "echo reply", |f, _| {
        let eth = EthernetFrame::new_checked(f).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Icmp {
            return None;
        }
        let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
        match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).ok()? {
            Icmpv4Repr::EchoReply {
                ident: 0x77,
                seq_no: 1,
                data: d,
            } => {
                assert_eq!(d, data);
                Some(())
            }
            _ => None,
        }
    });

    // UDP into the namespace: a socket there receives what we send.
    let sock = UdpSocket::bind("192.168.77.1:5000").unwrap();
    let payload = b"a datagram for the host";
    tap.transmit(&meta, &udp(host_mac, 5000, payload)).unwrap();
    assert!(socket_gets(&sock, payload, Duration::from_secs(5)));
    if vnet_hdr {
        // A partial checksum without NEEDS_CSUM is a bad checksum: the kernel drops it...
        let (partial, req) = udp_partial(host_mac, 5000, b"partial, unflagged");
        tap.transmit(&meta, &partial).unwrap();
        assert!(!socket_gets(
            &sock,
            b"partial, unflagged",
            Duration::from_millis(300)
        ));
        // ...and the same bytes with NEEDS_CSUM are taken: the header reached the kernel.
        let (partial, req2) = udp_partial(host_mac, 5000, b"partial, flagged");
        assert_eq!(req, req2);
        let offload = FrameMeta {
            needs_csum: Some(req),
            data_valid: false,
        };
        tap.transmit(&offload, &partial).unwrap();
        assert!(socket_gets(
            &sock,
            b"partial, flagged",
            Duration::from_secs(5)
        ));
    }

    // UDP from the namespace to us: a whole checksum, or with vnet_hdr a partial one that the
    // header announces.
    sock.send_to(b"to the guest", "192.168.77.2:4000").unwrap();
    let meta = wait_for(&mut tap, "UDP from the namespace", |f, meta| {
        let eth = EthernetFrame::new_checked(f).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Udp {
            return None;
        }
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        assert_eq!(udp.payload(), b"to the guest");
        if meta.needs_csum.is_none() {
            assert!(
                udp.verify_checksum(&IpAddress::Ipv4(HOST_IP), &IpAddress::Ipv4(OUR_IP)),
                "a frame without NEEDS_CSUM has a whole checksum"
            );
        }
        Some(meta)
    });
    if vnet_hdr {
        // TUN_F_CSUM lets the kernel leave its UDP checksum to "the device": us.
        let req = ChecksumRequest {
            start: 34,
            offset: 6,
        };
        assert_eq!(meta.needs_csum, Some(req));
    } else {
        assert_eq!(meta, FrameMeta::default());
    }
    let c = tap.counters();
    assert!(c.tx_frames >= 3 && c.rx_frames >= 3, "{c:?}");
    assert_eq!(c.tx_dropped, 0);
}

#[test]
fn kernel_answers_over_tap_with_vnet_hdr() {
    if have_tap("kernel_answers_over_tap_with_vnet_hdr") {
        in_new_netns(|| kernel_answers(true));
    }
}

#[test]
fn kernel_answers_over_tap_without_vnet_hdr() {
    if have_tap("kernel_answers_over_tap_without_vnet_hdr") {
        in_new_netns(|| kernel_answers(false));
    }
}

/// A persistent TAP keeps the offloads its last user set: after a vnet_hdr=on user left
/// TUN_F_CSUM on it, a vnet_hdr=off user still gets whole checksums (open clears them).
#[test]
fn vnet_hdr_off_clears_what_an_earlier_user_offloaded() {
    if have_tap("vnet_hdr_off_clears_what_an_earlier_user_offloaded") {
        in_new_netns(|| {
            ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
            drop(TapBackend::open(TAP, true).expect("open the persistent TAP with vnet_hdr"));
            kernel_answers(false);
        });
    }
}

#[test]
fn open_names_the_step_that_failed() {
    use hypervisor_harness::backends::net::{open, spec::BackendSpec};
    if !have_tap("open_names_the_step_that_failed") {
        return;
    }
    // In a namespace of its own too, in case a kernel took the name.
    in_new_netns(|| {
        let spec = BackendSpec::Tap {
            name: "bad name".into(),
            vnet_hdr: true,
        };
        let e = open(&spec).err().expect("a name with a space is refused");
        let m = e.to_string();
        assert!(m.contains("tap:bad name") && m.contains("TUNSETIFF"), "{m}");
    });
}
