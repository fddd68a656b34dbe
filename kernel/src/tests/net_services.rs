//! The user-mode network's UDP services, as a guest uses them (by name: each needs a VMM's
//! user network, ours or QEMU's slirp): a UDP echo through the host alias to a server on the
//! host's loopback. Each takes its address from the DHCP lease.

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
