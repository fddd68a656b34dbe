//! The options of `--net MODEL:user,...`, with QEMU's `-netdev user` names and defaults:
//! `net=ADDR[/MASK]` (10.0.2.0/24; MASK a prefix length or a dotted mask), `host=` (the
//! host alias, net + 2), `dhcpstart=` (the first leased address, net + 15), `dns=` (net + 3),
//! `restrict=on|off` (off), `hostfwd=` (repeatable; see [`super::hostfwd`]). Addresses must
//! lie inside the network, and none may be its network or broadcast address.
//!
//! `tftp=DIR` (an existing directory) is what the TFTP server ([`super::tftp`]) serves, read
//! only; `bootfile=FILE` is the name the DHCP offer gives a guest to boot (its file field).

use std::net::{Ipv4Addr, SocketAddrV4};

/// The option names this module takes (spec.rs hands it those).
pub const USER_OPTIONS: [&str; 8] = [
    "net",
    "host",
    "dhcpstart",
    "dns",
    "restrict",
    "hostfwd",
    "tftp",
    "bootfile",
];

/// A user-mode network's addresses, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserOptions {
    /// The network address (host bits zero) and its prefix length.
    pub net: Ipv4Addr,
    pub prefix_len: u8,
    /// The host alias: ARP, ping, and the TCP/UDP proxy to the host's loopback.
    pub host: Ipv4Addr,
    /// The first address the DHCP server leases.
    pub dhcp_start: Ipv4Addr,
    /// The DNS address the leases name: it answers ARP and ping, and forwards queries to the
    /// host's resolver ([`super::dns`]).
    pub dns: Ipv4Addr,
    /// `restrict=on`: the guest reaches nothing but the host alias's services.
    pub restrict: bool,
    /// `tftp=DIR`, canonical: the TFTP server's files; `None`: no TFTP service.
    pub tftp: Option<std::path::PathBuf>,
    /// `bootfile=FILE`: the boot file the DHCP offer names.
    pub bootfile: Option<String>,
    /// `hostfwd=` rules: the host's listening address and the guest's address it leads to.
    pub hostfwd: Vec<(SocketAddrV4, SocketAddrV4)>,
    /// The options as written, in order, for QEMU's `-netdev user`.
    pub given: Vec<(String, String)>,
}

impl Default for UserOptions {
    fn default() -> Self {
        Self::parse(&[]).expect("the defaults are valid")
    }
}

fn offset(net: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net).wrapping_add(n))
}

impl UserOptions {
    /// Resolve `key=value` pairs (keys from [`USER_OPTIONS`]); an error says which value is
    /// wrong and why.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut net = (Ipv4Addr::new(10, 0, 2, 0), 24u8);
        let (mut host, mut dhcp_start, mut dns, mut restrict) = (None, None, None, false);
        let (mut tftp, mut bootfile) = (None, None);
        let mut forwards = Vec::new();
        let addr = |k: &str, v: &str| -> Result<Ipv4Addr, String> {
            v.parse()
                .map_err(|_| format!("user option {k}={v:?} is not an address A.B.C.D"))
        };
        for (k, v) in pairs {
            match k.as_str() {
                "net" => net = parse_net(v)?,
                "host" => host = Some(addr(k, v)?),
                "dhcpstart" => dhcp_start = Some(addr(k, v)?),
                "dns" => dns = Some(addr(k, v)?),
                "restrict" => {
                    restrict = match v.as_str() {
                        "on" | "yes" | "y" => true,
                        "off" | "no" | "n" => false,
                        _ => return Err(format!("user option restrict={v:?} is on or off")),
                    }
                }
                "hostfwd" => forwards.push(super::hostfwd::parse(v)?),
                "tftp" => {
                    let dir = std::path::Path::new(v).canonicalize();
                    match dir {
                        Ok(d) if d.is_dir() => tftp = Some(d),
                        _ => return Err(format!("user option tftp={v:?} is not a directory")),
                    }
                }
                "bootfile" => {
                    // The DHCP offer's file field: 128 bytes, NUL-terminated.
                    if v.is_empty() || v.len() > 127 || v.contains('\0') {
                        return Err(format!("user option bootfile={v:?} is not 1 to 127 bytes"));
                    }
                    bootfile = Some(v.clone());
                }
                _ => return Err(format!("unknown user option {k:?}")),
            }
        }
        let (net, prefix_len) = net;
        let opts = Self {
            net,
            prefix_len,
            host: host.unwrap_or(offset(net, 2)),
            dhcp_start: dhcp_start.unwrap_or(offset(net, 15)),
            dns: dns.unwrap_or(offset(net, 3)),
            restrict,
            tftp,
            bootfile,
            hostfwd: Vec::new(),
            given: pairs.to_vec(),
        };
        for (name, a) in [
            ("host", opts.host),
            ("dhcpstart", opts.dhcp_start),
            ("dns", opts.dns),
        ] {
            if !opts.contains(a) {
                return Err(format!(
                    "user option {name}={a} is not inside net={net}/{prefix_len}"
                ));
            }
            if a == net || a == opts.broadcast() {
                return Err(format!(
                    "user option {name}={a} is the network's own or broadcast address"
                ));
            }
        }
        if opts.host == opts.dns {
            return Err(format!("user options host and dns are both {}", opts.host));
        }
        let mut opts = opts;
        for f in forwards {
            let guest = f.guest_addr.unwrap_or(opts.dhcp_start);
            if !opts.contains(guest)
                || [opts.net, opts.broadcast(), opts.host, opts.dns].contains(&guest)
            {
                return Err(format!(
                    "user option hostfwd: guest address {guest} is not a guest's address in net={net}/{prefix_len}"
                ));
            }
            if opts.hostfwd.iter().any(|(h, _)| *h == f.host) {
                return Err(format!(
                    "user option hostfwd: {} is forwarded twice",
                    f.host
                ));
            }
            opts.hostfwd
                .push((f.host, SocketAddrV4::new(guest, f.guest_port)));
        }
        Ok(opts)
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.net) | !prefix_mask(self.prefix_len))
    }

    pub fn contains(&self, a: Ipv4Addr) -> bool {
        u32::from(a) & prefix_mask(self.prefix_len) == u32::from(self.net)
    }

    /// `,key=value...` as written, for QEMU's `-netdev user,id=...`.
    pub fn qemu_suffix(&self) -> String {
        self.given
            .iter()
            .map(|(k, v)| format!(",{k}={}", v.replace(',', ",,")))
            .collect()
    }
}

fn prefix_mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

/// `ADDR[/PREFIX]` or `ADDR/DOTTED.MASK`, 8..=30 bits; the address's host bits are dropped,
/// as QEMU does.
fn parse_net(v: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = |why: &str| format!("user option net={v:?}: {why}; expected ADDR[/MASK]");
    let (a, m) = v.split_once('/').unwrap_or((v, "24"));
    let a: Ipv4Addr = a.parse().map_err(|_| bad("not an address"))?;
    let len = match m.parse::<u8>() {
        Ok(n) => n,
        Err(_) => {
            let mask: Ipv4Addr = m
                .parse()
                .map_err(|_| bad("mask is neither N nor A.B.C.D"))?;
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(bad("mask is not contiguous"));
            }
            bits.leading_ones() as u8
        }
    };
    if !(8..=30).contains(&len) {
        return Err(bad("mask must be 8..=30 bits"));
    }
    Ok((Ipv4Addr::from(u32::from(a) & prefix_mask(len)), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[(&str, &str)]) -> Result<UserOptions, String> {
        let pairs: Vec<_> = s
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        UserOptions::parse(&pairs)
    }

    #[test]
    fn defaults_are_qemus() {
        let o = UserOptions::default();
        assert_eq!((o.net, o.prefix_len), (Ipv4Addr::new(10, 0, 2, 0), 24));
        assert_eq!(o.host, Ipv4Addr::new(10, 0, 2, 2));
        assert_eq!(o.dns, Ipv4Addr::new(10, 0, 2, 3));
        assert_eq!(o.dhcp_start, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(o.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(!o.restrict);
        assert_eq!(o.qemu_suffix(), "");
    }

    #[test]
    fn net_moves_every_default() {
        let o = parse(&[("net", "192.168.100.7/16"), ("restrict", "on")]).unwrap();
        assert_eq!((o.net, o.prefix_len), (Ipv4Addr::new(192, 168, 0, 0), 16));
        assert_eq!(o.host, Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(o.dhcp_start, Ipv4Addr::new(192, 168, 0, 15));
        assert_eq!(o.broadcast(), Ipv4Addr::new(192, 168, 255, 255));
        assert!(o.restrict);
        assert_eq!(o.qemu_suffix(), ",net=192.168.100.7/16,restrict=on");
        let o = parse(&[
            ("net", "10.9.0.0/255.255.255.0"),
            ("dhcpstart", "10.9.0.50"),
        ])
        .unwrap();
        assert_eq!(
            (o.prefix_len, o.dhcp_start),
            (24, Ipv4Addr::new(10, 9, 0, 50))
        );
    }

    #[test]
    fn hostfwd_defaults_to_the_first_lease() {
        let o = parse(&[
            ("net", "10.0.9.0/24"),
            ("dhcpstart", "10.0.9.40"),
            ("hostfwd", "tcp::5555-:22"),
            ("hostfwd", "tcp:127.0.0.1:5556-10.0.9.41:23"),
        ])
        .unwrap();
        let sa = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        assert_eq!(
            o.hostfwd,
            [
                (sa("127.0.0.1:5555"), sa("10.0.9.40:22")),
                (sa("127.0.0.1:5556"), sa("10.0.9.41:23"))
            ]
        );
        assert!(o
            .qemu_suffix()
            .ends_with(",hostfwd=tcp::5555-:22,hostfwd=tcp:127.0.0.1:5556-10.0.9.41:23"));
    }

    #[test]
    fn tftp_is_an_existing_directory_and_bootfile_fits_the_offer() {
        let dir = std::env::temp_dir();
        let d = dir.to_str().unwrap();
        let o = parse(&[("tftp", d), ("bootfile", "pxelinux.0")]).unwrap();
        assert_eq!(o.tftp, Some(dir.canonicalize().unwrap()));
        assert_eq!(o.bootfile.as_deref(), Some("pxelinux.0"));
        assert!(o.qemu_suffix().ends_with(",bootfile=pxelinux.0"));
        assert_eq!(UserOptions::default().tftp, None);
        let long = "b".repeat(128);
        let file = dir.join(format!("hh-options-{}", std::process::id()));
        std::fs::write(&file, b"").unwrap();
        let f = file.to_str().unwrap();
        for (pairs, why) in [
            (&[("tftp", "/nonexistent/tftp")][..], "not a directory"),
            (&[("tftp", f)], "not a directory"),
            (&[("bootfile", "")], "1 to 127 bytes"),
            (&[("bootfile", long.as_str())], "1 to 127 bytes"),
        ] {
            let e = parse(pairs).expect_err(why);
            assert!(e.contains(why), "{pairs:?}: {e}");
        }
        std::fs::remove_file(file).unwrap();
    }

    #[test]
    fn refuses_with_the_reason() {
        for (pairs, why) in [
            (&[("net", "10.0.2")][..], "not an address"),
            (&[("net", "10.0.2.0/33")], "8..=30"),
            (&[("net", "10.0.2.0/255.0.255.0")], "not contiguous"),
            (&[("net", "10.0.2.0/x")], "neither"),
            (&[("host", "10.0.3.2")], "not inside"),
            (&[("dhcpstart", "10.0.2.255")], "broadcast"),
            (&[("dns", "10.0.2.2")], "both"),
            (&[("restrict", "maybe")], "on or off"),
            (&[("dns", "nameserver")], "not an address"),
            (&[("hostfwd", "tcp::5555")], "no '-'"),
            (
                &[("hostfwd", "tcp::5555-10.0.3.15:22")],
                "not a guest's address",
            ),
            (
                &[("hostfwd", "tcp::5555-10.0.2.2:22")],
                "not a guest's address",
            ),
            (
                &[
                    ("hostfwd", "tcp::5555-:22"),
                    ("hostfwd", "tcp:127.0.0.1:5555-:23"),
                ],
                "twice",
            ),
        ] {
            let e = parse(pairs).expect_err(why);
            assert!(e.contains(why), "{pairs:?}: {e}");
        }
    }
}
