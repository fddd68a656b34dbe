//! `hostfwd=tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT`, QEMU's syntax (repeatable): the
//! backend listens on HOSTADDR:HOSTPORT (loopback only here, 127.0.0.1 by default) and, for
//! each connection it accepts, connects from the host alias to GUESTADDR:GUESTPORT in the
//! guest (the first DHCP address by default). The pair is then a flow like a proxied one:
//! bytes both ways, FIN and RST mapped, counted against the same [`super::limits`].

use super::{TcpFlow, UserBackend, TCP_BUFFER};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::time::Instant;
use vmm_sys_util::epoll::{ControlOperation, EpollEvent, EventSet};

/// One `hostfwd=` rule as written, the guest address not yet defaulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostForward {
    pub host: SocketAddrV4,
    pub guest_addr: Option<Ipv4Addr>,
    pub guest_port: u16,
}

/// Epoll tokens of the listeners: this bit plus the rule's index (flows count up from 1).
pub(super) const LISTENER_TOKEN: u64 = 1 << 63;
/// The host alias's ports for its connections into the guest.
const FIRST_LOCAL_PORT: u16 = 40_000;
const LOCAL_PORTS: u16 = 20_000;

fn usage(v: &str, why: &str) -> String {
    format!(
        "user option hostfwd={v:?}: {why}; expected tcp:[HOSTADDR]:HOSTPORT-[GUESTADDR]:GUESTPORT"
    )
}

/// Parse one `hostfwd=` value; an error says what is wrong.
pub fn parse(v: &str) -> Result<HostForward, String> {
    let (proto, rest) = v.split_once(':').ok_or_else(|| usage(v, "no protocol"))?;
    match proto {
        "tcp" | "" => {}
        "udp" => return Err(usage(v, "only tcp forwards are supported")),
        _ => return Err(usage(v, "the protocol is tcp")),
    }
    let (host, guest) = rest
        .split_once('-')
        .ok_or_else(|| usage(v, "no '-' between the host and guest sides"))?;
    let endpoint = |side: &str, what: &str| -> Result<(Option<Ipv4Addr>, u16), String> {
        let (addr, port) = side
            .rsplit_once(':')
            .ok_or_else(|| usage(v, &format!("the {what} side is not [ADDR]:PORT")))?;
        let addr = match addr {
            "" => None,
            a => Some(
                a.parse()
                    .map_err(|_| usage(v, &format!("{what} address {a:?} is not A.B.C.D")))?,
            ),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| usage(v, &format!("{what} port {port:?} is not 1..=65535")))?;
        Ok((addr, port))
    };
    let (host_addr, host_port) = endpoint(host, "host")?;
    let host_addr = host_addr.unwrap_or(Ipv4Addr::LOCALHOST);
    if !host_addr.is_loopback() {
        return Err(usage(v, "the host address must be a loopback address"));
    }
    let (guest_addr, guest_port) = endpoint(guest, "guest")?;
    Ok(HostForward {
        host: SocketAddrV4::new(host_addr, host_port),
        guest_addr,
        guest_port,
    })
}

/// A rule's listener and the guest endpoint it leads to.
pub(super) struct Listener {
    socket: TcpListener,
    guest: IpEndpoint,
}

/// Bind every rule's host address, non-blocking; an error names the address.
pub(super) fn listen(rules: &[(SocketAddrV4, SocketAddrV4)]) -> std::io::Result<Vec<Listener>> {
    rules
        .iter()
        .map(|&(host, guest)| {
            let socket = TcpListener::bind(host)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| std::io::Error::new(e.kind(), format!("hostfwd {host}: {e}")))?;
            Ok(Listener {
                socket,
                guest: IpEndpoint::new(IpAddress::Ipv4(*guest.ip()), guest.port()),
            })
        })
        .collect()
}

impl UserBackend {
    /// Watch each listener for connections, for as long as the backend lives.
    pub(super) fn watch_listeners(&self) -> std::io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            self.epoll.ctl(
                ControlOperation::Add,
                l.socket.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_TOKEN | i as u64),
            )?;
        }
        Ok(())
    }

    /// Take every waiting host connection; each becomes a flow connecting into the guest, or,
    /// past a limit, is reset and counted (accepting it anyway keeps the listener quiet).
    pub(super) fn accept_forwarded(&mut self) {
        for i in 0..self.listeners.len() {
            while let Ok((host, _)) = self.listeners[i].socket.accept() {
                let guest = self.listeners[i].guest;
                self.forward(host, guest);
            }
        }
    }

    fn forward(&mut self, host: std::net::TcpStream, guest: IpEndpoint) {
        let (flows, half_open) = self.flow_counts();
        if let Err(why) = self.limits.admit(flows, half_open) {
            match why {
                super::Refusal::TooMany => self.counters.tcp_refused_too_many += 1,
                super::Refusal::TooManyHalfOpen => self.counters.tcp_refused_half_open += 1,
            }
            super::reset_on_close(&host);
            return;
        }
        if host.set_nonblocking(true).is_err() {
            self.counters.tcp_forward_failed += 1;
            return;
        }
        let _ = host.set_nodelay(true);
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_BUFFER]),
        );
        s.set_ack_delay(None);
        let local = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(self.opts.host)),
            port: self.next_local_port(),
        };
        let id = self.next_id;
        let watched = self.epoll.ctl(
            ControlOperation::Add,
            host.as_raw_fd(),
            EpollEvent::new(EventSet::empty(), id),
        );
        if s.connect(self.iface.context(), guest, local).is_err() || watched.is_err() {
            self.counters.tcp_forward_failed += 1;
            super::reset_on_close(&host);
            return;
        }
        self.next_id += 1;
        self.counters.tcp_forwarded += 1;
        let now = Instant::now();
        self.flows.push(TcpFlow {
            id,
            handle: self.sockets.add(s),
            host,
            port: guest.port,
            started: now,
            last_active: now,
            // A client socket never listens.
            accepted: true,
            established: false,
            host_eof: false,
            host_write_shut: false,
            want_write: false,
            host_dead: false,
            expired: false,
            interest: EventSet::empty(),
        });
    }

    /// A port of the host alias no flow uses now.
    fn next_local_port(&mut self) -> u16 {
        loop {
            let port = FIRST_LOCAL_PORT + self.local_port_seq % LOCAL_PORTS;
            self.local_port_seq = self.local_port_seq.wrapping_add(1);
            let sockets = &self.sockets;
            let used = self.flows.iter().any(|f| {
                sockets
                    .get::<tcp::Socket>(f.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == port)
            });
            if !used {
                return port;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemus_syntax() {
        assert_eq!(
            parse("tcp:127.0.0.1:5555-10.0.2.15:22"),
            Ok(HostForward {
                host: "127.0.0.1:5555".parse().unwrap(),
                guest_addr: Some(Ipv4Addr::new(10, 0, 2, 15)),
                guest_port: 22,
            })
        );
        assert_eq!(
            parse("tcp::8080-:80"),
            Ok(HostForward {
                host: "127.0.0.1:8080".parse().unwrap(),
                guest_addr: None,
                guest_port: 80,
            })
        );
        assert_eq!(parse(":127.0.0.2:1-:2").unwrap().host.port(), 1);
    }

    #[test]
    fn refuses_with_the_reason() {
        for (v, why) in [
            ("127.0.0.1:5555-:22", "protocol is tcp"),
            ("udp::5555-:53", "only tcp"),
            ("tcp", "no protocol"),
            ("tcp::5555", "no '-'"),
            ("tcp:5555-:22", "not [ADDR]:PORT"),
            ("tcp::0-:22", "host port"),
            ("tcp::5555-:70000", "guest port"),
            ("tcp:10.0.0.1:5555-:22", "loopback"),
            ("tcp:localhost:5555-:22", "not A.B.C.D"),
            ("tcp::5555-10.0.2:22", "guest address"),
        ] {
            let e = parse(v).expect_err(v);
            assert!(e.contains(why) && e.contains("expected tcp:"), "{v}: {e}");
        }
    }
}
