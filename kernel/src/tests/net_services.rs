//! The user-mode network's UDP services, as a guest uses them (by name: each needs a VMM's
//! user network, ours or QEMU's slirp): a UDP echo through the host alias to a server on the
//! host's loopback, a DNS query to the lease's name server, and a TFTP fetch from the host
//! alias. Each takes its address from the DHCP lease.

use super::net::{local_port, udp_round_trip, udp_socket, with_stack, SECOND};
use crate::ktap::Outcome;
use crate::net::{IpSetup, Stack};
use crate::{bootinfo, fail, println, time};
use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::wire::{IpAddress, IpEndpoint, Ipv4Address};

/// DHCP, then the lease's router (the host alias).
fn lease_router(stack: &mut Stack<'_>) -> Result<Ipv4Address, String> {
    if !stack.poll_until(15 * SECOND, |s| s.lease.is_some()) {
        return Err(String::from("DHCP: no lease in 15 s"));
    }
    stack
        .lease
        .and_then(|l| l.router)
        .ok_or_else(|| String::from("DHCP: the lease names no router (the host alias)"))
}

fn port_arg(name: &str) -> Option<u16> {
    bootinfo::get()
        .arg_u64(name)
        .and_then(|p| u16::try_from(p).ok())
}

/// UDP payload sizes of the host echo: the smallest, typical, and a full frame's.
const HOST_UDP_SIZES: [usize; 6] = [1, 64, 512, 1000, 1471, 1472];

/// Under user-mode networking: DHCP, then datagrams of several sizes through the host alias
/// to port `net_host_port=`, which the VMM proxies to that port on the host's loopback, where
/// the test runs a UDP echo server. Each must come back whole, from the alias's port.
pub fn host_udp() -> Outcome {
    let Some(port) = port_arg("net_host_port") else {
        fail!("net_host_udp needs net_host_port=PORT");
    };
    with_stack(1, Some(IpSetup::Dhcp), |stack, _| {
        let host = lease_router(stack)?;
        println!("# net: UDP echo through the host alias {host}:{port}");
        let h = udp_socket(stack, local_port())?;
        let to = IpEndpoint::new(IpAddress::Ipv4(host), port);
        let mut buf = vec![0u8; 2048];
        let start = time::now_ns();
        let mut lost = 0;
        for size in HOST_UDP_SIZES {
            let payload: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
            // UDP may lose a datagram (the first waits for ARP): a few tries per size.
            let mut tries = 0;
            while !udp_round_trip(stack, h, to, &payload, &mut buf)? {
                lost += 1;
                tries += 1;
                if tries == 3 {
                    return Err(format!(
                        "UDP echo of {size} bytes through {to}: no answer in 3 tries"
                    ));
                }
            }
        }
        println!(
            "# net: udp echo of {} sizes through {to}: {} ms, {lost} resent",
            HOST_UDP_SIZES.len(),
            (time::now_ns() - start) / 1_000_000
        );
        stack.sockets.remove(h);
        Ok(())
    })
}

/// FNV-1a 64 of `data`, as the host test computes the file's.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

const TFTP_PORT: u16 = 69;
const TFTP_RRQ: u16 = 1;
const TFTP_DATA: u16 = 3;
const TFTP_ACK: u16 = 4;
const TFTP_ERROR: u16 = 5;
const TFTP_OACK: u16 = 6;
/// The block size asked for (RFC 2348): a DATA packet in one 1500-byte frame.
const TFTP_BLKSIZE: usize = 1432;
/// Sends of one packet before the transfer is given up (one second apart).
const TFTP_TRIES: u32 = 5;
/// The largest file fetched, so that a runaway server cannot fill the heap.
const TFTP_MAX_FILE: usize = 8 << 20;

fn tftp_packet(op: u16, rest: &[&[u8]]) -> Vec<u8> {
    let mut p = op.to_be_bytes().to_vec();
    for r in rest {
        p.extend_from_slice(r);
    }
    p
}

/// Fetch `name` from the TFTP server at `server`:69 (RFC 1350, octet mode, asking for
/// blksize): the file's bytes and the block size used, or the server's error.
fn tftp_fetch(
    stack: &mut Stack<'_>,
    server: Ipv4Address,
    name: &str,
) -> Result<(Vec<u8>, usize), String> {
    let h = udp_socket(stack, local_port())?;
    let blksize = format!("{TFTP_BLKSIZE}");
    let mut to = IpEndpoint::new(IpAddress::Ipv4(server), TFTP_PORT);
    let mut packet = tftp_packet(
        TFTP_RRQ,
        &[
            name.as_bytes(),
            b"\0octet\0blksize\0",
            blksize.as_bytes(),
            b"\0",
        ],
    );
    // The server answers from a port of its choosing (its TID): the first answer's.
    let mut tid: Option<IpEndpoint> = None;
    let (mut content, mut block_size, mut expected) = (Vec::new(), 512usize, 1u16);
    let mut tries = 0;
    let mut buf = vec![0u8; 2048];
    let result = loop {
        if tries == TFTP_TRIES {
            break Err(format!(
                "TFTP {name} from {server}: no answer after {} bytes ({TFTP_TRIES} tries)",
                content.len()
            ));
        }
        stack
            .sockets
            .get_mut::<smoltcp::socket::udp::Socket>(h)
            .send_slice(&packet, to)
            .map_err(|e| format!("TFTP send: {e:?}"))?;
        tries += 1;
        // Wait for the answer to this packet; anything else is skipped.
        let mut answer: Option<(u16, u16, Vec<u8>)> = None;
        stack.poll_until(SECOND, |s| {
            let sock = s.sockets.get_mut::<smoltcp::socket::udp::Socket>(h);
            while let Ok((n, meta)) = sock.recv_slice(&mut buf) {
                if n < 4 || tid.is_some_and(|t| t != meta.endpoint) {
                    continue;
                }
                let op = u16::from_be_bytes([buf[0], buf[1]]);
                let arg = u16::from_be_bytes([buf[2], buf[3]]);
                let fresh = match op {
                    TFTP_DATA => arg == expected,
                    TFTP_OACK => expected == 1 && content.is_empty(),
                    TFTP_ERROR => true,
                    _ => false,
                };
                if fresh {
                    tid = Some(meta.endpoint);
                    answer = Some((op, arg, buf[4..n].to_vec()));
                    return true;
                }
            }
            false
        });
        let Some((op, arg, body)) = answer else {
            continue; // nothing in a second: the same packet again
        };
        to = tid.expect("set with the answer");
        tries = 0;
        match op {
            TFTP_ERROR => {
                let message = body.split(|&b| b == 0).next().unwrap_or(&[]);
                break Err(format!(
                    "TFTP {name} from {server}: error {arg}: {}",
                    String::from_utf8_lossy(message)
                ));
            }
            TFTP_OACK => {
                // The options granted: the OACK's body starts two bytes early (no block).
                let mut all = arg.to_be_bytes().to_vec();
                all.extend_from_slice(&body);
                let fields: Vec<&[u8]> = all.split(|&b| b == 0).collect();
                for pair in fields.chunks(2) {
                    if let [k, v] = pair {
                        if k.eq_ignore_ascii_case(b"blksize") {
                            block_size = core::str::from_utf8(v)
                                .ok()
                                .and_then(|v| v.parse().ok())
                                .filter(|&b| (8..=TFTP_BLKSIZE).contains(&b))
                                .ok_or_else(|| format!("TFTP OACK: bad blksize {v:?}"))?;
                        }
                    }
                }
                packet = tftp_packet(TFTP_ACK, &[&0u16.to_be_bytes()]);
            }
            _ => {
                content.extend_from_slice(&body);
                if content.len() > TFTP_MAX_FILE {
                    break Err(format!("TFTP {name}: more than {TFTP_MAX_FILE} bytes"));
                }
                packet = tftp_packet(TFTP_ACK, &[&arg.to_be_bytes()]);
                expected = expected.wrapping_add(1);
                if body.len() < block_size {
                    // The last block: acknowledged once, not waited on.
                    let _ = stack
                        .sockets
                        .get_mut::<smoltcp::socket::udp::Socket>(h)
                        .send_slice(&packet, to);
                    stack.poll_until(SECOND / 10, |_| false);
                    break Ok((core::mem::take(&mut content), block_size));
                }
            }
        }
    };
    stack.sockets.remove(h);
    result
}

/// Under user-mode networking with `tftp=DIR`: DHCP, then a TFTP fetch of `net_tftp_file=`
/// from the host alias; its length must be `net_tftp_len=` and its FNV-1a 64
/// `net_tftp_fnv=` (each checked when given). A TFTP error from the server fails the test
/// with the server's message.
pub fn tftp() -> Outcome {
    let info = bootinfo::get();
    let Some(name) = info.arg("net_tftp_file") else {
        fail!("net_tftp needs net_tftp_file=NAME");
    };
    let (want_len, want_fnv) = (info.arg_u64("net_tftp_len"), info.arg_u64("net_tftp_fnv"));
    with_stack(1, Some(IpSetup::Dhcp), |stack, _| {
        let server = lease_router(stack)?;
        let start = time::now_ns();
        let (content, block_size) = tftp_fetch(stack, server, name)?;
        let fnv = fnv1a(&content);
        println!(
            "# net: tftp {name} from {server}: {} bytes in blocks of {block_size}, fnv {fnv:#018x}, {} ms",
            content.len(),
            (time::now_ns() - start) / 1_000_000
        );
        if let Some(len) = want_len.filter(|&l| l != content.len() as u64) {
            return Err(format!(
                "TFTP {name}: {} bytes, expected {len}",
                content.len()
            ));
        }
        if let Some(f) = want_fnv.filter(|&f| f != fnv) {
            return Err(format!(
                "TFTP {name}: FNV-1a {fnv:#018x}, expected {f:#018x}"
            ));
        }
        Ok(())
    })
}

const DNS_PORT: u16 = 53;
const DNS_TYPE_A: u16 = 1;
const DNS_CLASS_IN: u16 = 1;
/// RFC 1035's response codes this test names.
const DNS_RCODE_NXDOMAIN: u8 = 3;

/// A standard query for `name`'s A record, with `id`, recursion desired.
fn dns_query(id: u16, name: &str) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("DNS name {name:?}: a label is empty or too long"));
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&DNS_TYPE_A.to_be_bytes());
    q.extend_from_slice(&DNS_CLASS_IN.to_be_bytes());
    Ok(q)
}

/// The offset after the (possibly compressed) name at `at`.
fn dns_skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2), // a pointer ends the name
            l => at += 1 + usize::from(l),
        }
    }
}

/// A response's code and A records, if it answers query `id`.
fn dns_answer(msg: &[u8], id: u16) -> Option<(u8, Vec<Ipv4Address>)> {
    let be16 = |at: usize| Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]));
    if msg.len() < 12 || be16(0)? != id || msg[2] & 0x80 == 0 {
        return None; // not ours, or not a response
    }
    let rcode = msg[3] & 0x0f;
    let (questions, answers) = (be16(4)?, be16(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = dns_skip_name(msg, at)? + 4;
    }
    let mut addresses = Vec::new();
    for _ in 0..answers {
        at = dns_skip_name(msg, at)?;
        let (kind, class, len) = (be16(at)?, be16(at + 2)?, usize::from(be16(at + 8)?));
        let data = msg.get(at + 10..at + 10 + len)?;
        if kind == DNS_TYPE_A && class == DNS_CLASS_IN && len == 4 {
            addresses.push(Ipv4Address::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len;
    }
    Some((rcode, addresses))
}

/// Under user-mode networking: DHCP, then an A query for `net_dns_name=` to the name server
/// the lease names (the VMM's forwarder to the host's resolver); the answer must hold
/// `net_dns_expect=` (A.B.C.D). A name the resolver does not know fails with NXDOMAIN.
pub fn dns() -> Outcome {
    let info = bootinfo::get();
    let Some(name) = info.arg("net_dns_name") else {
        fail!("net_dns needs net_dns_name=NAME");
    };
    let expect: Option<Ipv4Address> = match info.arg("net_dns_expect").map(str::parse) {
        None => None,
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => fail!("net_dns_expect= is not A.B.C.D"),
    };
    with_stack(1, Some(IpSetup::Dhcp), |stack, _| {
        lease_router(stack)?;
        let Some(server) = stack.lease.and_then(|l| l.dns) else {
            return Err(String::from("DHCP: the lease names no DNS server"));
        };
        let h = udp_socket(stack, local_port())?;
        let to = IpEndpoint::new(IpAddress::Ipv4(server), DNS_PORT);
        let id = 0x4e53 ^ (time::now_ns() as u16);
        let query = dns_query(id, name)?;
        let start = time::now_ns();
        let mut buf = vec![0u8; 1500];
        let mut answer = None;
        for _ in 0..3 {
            stack
                .sockets
                .get_mut::<smoltcp::socket::udp::Socket>(h)
                .send_slice(&query, to)
                .map_err(|e| format!("DNS send: {e:?}"))?;
            stack.poll_until(2 * SECOND, |s| {
                let sock = s.sockets.get_mut::<smoltcp::socket::udp::Socket>(h);
                while let Ok((n, meta)) = sock.recv_slice(&mut buf) {
                    if meta.endpoint == to {
                        answer = dns_answer(&buf[..n], id);
                    }
                }
                answer.is_some()
            });
            if answer.is_some() {
                break;
            }
        }
        stack.sockets.remove(h);
        let Some((rcode, addresses)) = answer else {
            return Err(format!("DNS {name} via {server}: no answer in 3 tries"));
        };
        println!(
            "# net: dns {name} via {server}: rcode {rcode}, {addresses:?}, {} ms",
            (time::now_ns() - start) / 1_000_000
        );
        match rcode {
            0 => {}
            DNS_RCODE_NXDOMAIN => return Err(format!("DNS {name} via {server}: NXDOMAIN")),
            r => return Err(format!("DNS {name} via {server}: rcode {r}")),
        }
        match expect {
            Some(a) if !addresses.contains(&a) => Err(format!(
                "DNS {name} via {server}: {addresses:?}, expected {a}"
            )),
            _ if addresses.is_empty() => Err(format!("DNS {name} via {server}: no A record")),
            _ => Ok(()),
        }
    })
}
