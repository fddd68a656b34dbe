//! `net_tcp_serve` (by name): a TCP echo server in the guest, for the host's side of
//! user-mode networking's `hostfwd=` (ours or QEMU's slirp). With `net_ip=dhcp` it takes a
//! lease first (the address `hostfwd=` leads to by default), else its static address. It
//! listens on `net_serve_port=` and echoes whatever each connection sends until the other side
//! closes, then closes too; it passes once `net_serve_conns=` connections (default 1) were
//! echoed and closed cleanly. One socket always listens while others echo, so a host that
//! connects again at once is not refused.

use super::net::{tcp_socket, with_stack, SECOND};
use crate::ktap::Outcome;
use crate::net::{IpSetup, Stack};
use crate::{bootinfo, fail, println, time};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

/// How long the test waits for all its connections.
const SERVE_NS: u64 = 120 * SECOND;
const BUFFER: usize = 64 << 10;

/// One accepted connection: bytes read and not yet echoed, bytes echoed.
struct Echo {
    handle: SocketHandle,
    pending: Vec<u8>,
    echoed: u64,
}

pub fn tcp_serve() -> Outcome {
    let info = bootinfo::get();
    let Some(port) = info
        .arg_u64("net_serve_port")
        .and_then(|p| u16::try_from(p).ok())
        .filter(|&p| p != 0)
    else {
        fail!("net_tcp_serve needs net_serve_port=PORT");
    };
    let conns = info.arg_u64("net_serve_conns").unwrap_or(1);
    with_stack(1, None, |stack, args| {
        if args.ip == IpSetup::Dhcp && !stack.poll_until(15 * SECOND, |s| s.lease.is_some()) {
            return Err(String::from("DHCP: no lease in 15 s"));
        }
        let addr = match stack.lease {
            Some(l) => format!("{}", l.address),
            None => format!("{:?}", args.ip),
        };
        println!("# net: serving TCP on {addr} port {port} for {conns} connection(s)");
        serve(stack, port, conns)
    })
}

fn listen(stack: &mut Stack<'_>, port: u16) -> Result<SocketHandle, String> {
    let h = tcp_socket(stack, BUFFER);
    stack
        .sockets
        .get_mut::<tcp::Socket>(h)
        .listen(port)
        .map_err(|e| format!("TCP listen {port}: {e:?}"))?;
    Ok(h)
}

/// Echo `conns` connections on `port`, several at once if the host opens them so.
fn serve(stack: &mut Stack<'_>, port: u16, conns: u64) -> Result<(), String> {
    let start = time::now_ns();
    let mut listening = Some(listen(stack, port)?);
    let mut active: Vec<Echo> = Vec::new();
    let (mut accepted, mut served, mut reset, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut error = None;
    let done = stack.poll_until(SERVE_NS, |s| {
        if let Some(h) = listening {
            if !s.sockets.get::<tcp::Socket>(h).is_listening() {
                active.push(Echo {
                    handle: h,
                    pending: Vec::new(),
                    echoed: 0,
                });
                accepted += 1;
                listening = None;
            }
        }
        if listening.is_none() && accepted < conns {
            match listen(s, port) {
                Ok(h) => listening = Some(h),
                Err(e) => error = Some(e),
            }
        }
        active.retain_mut(|c| {
            let sock = s.sockets.get_mut::<tcp::Socket>(c.handle);
            while sock.can_recv() && c.pending.len() < BUFFER {
                let room = BUFFER - c.pending.len();
                let _ = sock.recv(|b| {
                    let n = b.len().min(room);
                    c.pending.extend_from_slice(&b[..n]);
                    (n, ())
                });
            }
            if !c.pending.is_empty() && sock.may_send() {
                if let Ok(n) = sock.send_slice(&c.pending) {
                    c.pending.drain(..n);
                    c.echoed += n as u64;
                }
            }
            // The host closed its half and has everything back: close ours.
            if !sock.may_recv() && c.pending.is_empty() && sock.may_send() {
                sock.close();
            }
            let finished = match sock.state() {
                tcp::State::Closed => {
                    // Closed without both FINs: the other side reset it.
                    if c.echoed == 0 || !c.pending.is_empty() {
                        reset += 1;
                    } else {
                        served += 1;
                        bytes += c.echoed;
                    }
                    true
                }
                tcp::State::TimeWait => {
                    served += 1;
                    bytes += c.echoed;
                    true
                }
                _ => false,
            };
            if finished {
                s.sockets.remove(c.handle);
            }
            !finished
        });
        error.is_some() || served >= conns
    });
    if let Some(e) = error {
        return Err(e);
    }
    println!(
        "# net: served {served} connection(s), {bytes} bytes echoed, {reset} reset, in {} ms",
        (time::now_ns() - start) / 1_000_000
    );
    if !done {
        return Err(format!(
            "TCP serve: {served} of {conns} connections echoed in {} s ({accepted} accepted, \
             {reset} reset)",
            SERVE_NS / SECOND
        ));
    }
    Ok(())
}
