//! `--net MODEL[:BACKEND][,OPTION...]`: which NIC a guest gets and what it is attached to.
//!
//! - MODEL: `virtio` (virtio-net-pci), `e1000`, `rtl8139`.
//! - BACKEND: `peer` (the default: the in-process peer), `stream:PATH` (a UNIX stream socket in
//!   QEMU's `-netdev stream` framing), `tap:NAME` (a TAP device), `user` (user-mode networking).
//! - OPTIONS: `mac=52:54:00:12:34:56` (QEMU's `-net nic,macaddr=`), `queues=N` (virtio-net
//!   queue pairs, 1..=8, QEMU's `queues=`), `vnet_hdr=on|off` (TAP only; default on),
//!   `link=up|down` (the NIC's link when the guest starts; QEMU's QMP `set_link`),
//!   `faults=drop:5%+dup:2%+reorder:3%+truncate:1%+seed:N` (our harness only: the backend
//!   behind [`super::faulty::FaultyNet`], which breaks frames both ways on a seeded schedule).
//!
//! Several `--net` give several NICs, in order. Parsing only: opening a backend is the
//! backend's own module's job.

use super::faulty::FaultPlan;
use super::user::options::{UserOptions, USER_OPTIONS};
use std::path::PathBuf;

/// Which NIC the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    VirtioNet,
    E1000,
    Rtl8139,
}

impl NicModel {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::VirtioNet => "virtio-net",
            Self::E1000 => "e1000",
            Self::Rtl8139 => "rtl8139",
        }
    }
}

/// What the NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// The in-process peer (`backends::net::peer`).
    Peer,
    /// A UNIX stream socket at this path (connected to, as QEMU's `server=off`).
    Stream(PathBuf),
    /// A TAP device of this name; `vnet_hdr` passes the virtio-net header through.
    Tap { name: String, vnet_hdr: bool },
    /// User-mode networking, with its options (`net=`, `host=`, `dhcpstart=`, `dns=`,
    /// `restrict=`).
    User(UserOptions),
}

impl BackendSpec {
    /// A short name for reports: `peer`, `stream`, `tap`, `tap-novnet`, `user`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Peer => "peer",
            Self::Stream(_) => "stream",
            Self::Tap { vnet_hdr: true, .. } => "tap",
            Self::Tap {
                vnet_hdr: false, ..
            } => "tap-novnet",
            Self::User(_) => "user",
        }
    }
}

/// Largest `queues=`.
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// One `--net` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub model: NicModel,
    pub backend: BackendSpec,
    /// `mac=`; `None` lets the harness pick 52:54:00:12:34:(56 + NIC index), as QEMU does.
    pub mac: Option<[u8; 6]>,
    /// virtio-net queue pairs (1 unless `queues=` says more).
    pub queues: u16,
    /// `link=`: whether the link is up when the guest starts (default up).
    pub link_up: bool,
    /// `faults=`: frames broken on a seeded schedule between the NIC and its backend.
    pub faults: Option<FaultPlan>,
}

impl NetSpec {
    /// The MAC QEMU would give NIC number `index` (52:54:00:12:34:56, then ...:57, ...).
    pub fn mac_or_default(&self, index: usize) -> [u8; 6] {
        self.mac.unwrap_or([
            0x52,
            0x54,
            0x00,
            0x12,
            0x34,
            0x56u8.wrapping_add(index as u8),
        ])
    }

    /// Parse one `--net` value (clap's value parser).
    pub fn parse(s: &str) -> Result<Self, String> {
        let usage = "expected MODEL[:BACKEND][,OPTION...] with MODEL virtio, e1000 or rtl8139, \
                     BACKEND peer, stream:PATH, tap:NAME or user, OPTIONs mac=, queues=, vnet_hdr=, link=, faults= (user: net=, host=, dhcpstart=, dns=, restrict=)";
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (model, backend) = match head.split_once(':') {
            Some((m, b)) => (m, Some(b)),
            None => (head, None),
        };
        let model = match model {
            "virtio" | "virtio-net" => NicModel::VirtioNet,
            "e1000" => NicModel::E1000,
            "rtl8139" => NicModel::Rtl8139,
            other => return Err(format!("--net {s:?}: unknown model {other:?}; {usage}")),
        };
        let mut backend = match backend {
            None | Some("peer") => BackendSpec::Peer,
            Some("user") => BackendSpec::User(UserOptions::default()),
            Some(b) => match b.split_once(':') {
                Some(("stream", path)) if !path.is_empty() => BackendSpec::Stream(path.into()),
                Some(("tap", name)) if valid_ifname(name) => BackendSpec::Tap {
                    name: name.to_owned(),
                    vnet_hdr: true,
                },
                Some(("tap", name)) => {
                    return Err(format!(
                        "--net {s:?}: TAP name {name:?} must be 1..=15 bytes of [A-Za-z0-9_.-]"
                    ))
                }
                _ => return Err(format!("--net {s:?}: unknown backend {b:?}; {usage}")),
            },
        };
        let mut user_options = Vec::new();
        let mut spec = NetSpec {
            model,
            backend: BackendSpec::Peer,
            mac: None,
            queues: 1,
            link_up: true,
            faults: None,
        };
        for opt in parts {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| format!("--net {s:?}: option {opt:?} is not KEY=VALUE; {usage}"))?;
            match key {
                "mac" => {
                    let mac = parse_mac(value).ok_or_else(|| {
                        format!("--net {s:?}: mac {value:?} is not xx:xx:xx:xx:xx:xx")
                    })?;
                    if mac[0] & 1 != 0 {
                        return Err(format!("--net {s:?}: mac {value:?} is a multicast address"));
                    }
                    spec.mac = Some(mac);
                }
                "queues" => {
                    let n: u16 = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_QUEUE_PAIRS).contains(n))
                        .ok_or_else(|| {
                            format!("--net {s:?}: queues {value:?} is not 1..={MAX_QUEUE_PAIRS}")
                        })?;
                    if model != NicModel::VirtioNet && n != 1 {
                        return Err(format!("--net {s:?}: only virtio-net has several queues"));
                    }
                    spec.queues = n;
                }
                "vnet_hdr" => {
                    let on = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(format!("--net {s:?}: vnet_hdr is on or off")),
                    };
                    match &mut backend {
                        BackendSpec::Tap { vnet_hdr, .. } => *vnet_hdr = on,
                        _ => return Err(format!("--net {s:?}: vnet_hdr is a TAP option")),
                    }
                }
                "link" => {
                    spec.link_up = match value {
                        "up" => true,
                        "down" => false,
                        _ => return Err(format!("--net {s:?}: link is up or down")),
                    };
                }
                "faults" => {
                    spec.faults =
                        Some(FaultPlan::parse(value).map_err(|e| format!("--net {s:?}: {e}"))?);
                }
                k if USER_OPTIONS.contains(&k) => match backend {
                    BackendSpec::User(_) => user_options.push((k.to_owned(), value.to_owned())),
                    _ => return Err(format!("--net {s:?}: {k} is a user backend option")),
                },
                _ => return Err(format!("--net {s:?}: unknown option {key:?}; {usage}")),
            }
        }
        if let BackendSpec::User(opts) = &mut backend {
            *opts = UserOptions::parse(&user_options).map_err(|e| format!("--net {s:?}: {e}"))?;
        }
        spec.backend = backend;
        Ok(spec)
    }
}

fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut octets = s.split(':');
    for byte in &mut mac {
        let o = octets.next()?;
        if o.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(o, 16).ok()?;
    }
    octets.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_issue_names() {
        let s = NetSpec::parse("virtio").unwrap();
        assert_eq!(
            (s.model, &s.backend, s.mac, s.queues),
            (NicModel::VirtioNet, &BackendSpec::Peer, None, 1)
        );
        assert_eq!(s.mac_or_default(1), [0x52, 0x54, 0, 0x12, 0x34, 0x57]);
        assert!(s.link_up);
        assert!(!NetSpec::parse("virtio,link=down").unwrap().link_up);
        assert!(NetSpec::parse("e1000:stream:/s,link=up").unwrap().link_up);
        let s =
            NetSpec::parse("virtio:stream:/tmp/a:b.sock,mac=02:00:00:00:00:01,queues=2").unwrap();
        assert_eq!(s.backend, BackendSpec::Stream("/tmp/a:b.sock".into()));
        assert_eq!(s.mac, Some([2, 0, 0, 0, 0, 1]));
        assert_eq!(s.queues, 2);
        let s = NetSpec::parse("e1000:tap:tap0,vnet_hdr=off").unwrap();
        assert_eq!(
            s.backend,
            BackendSpec::Tap {
                name: "tap0".into(),
                vnet_hdr: false
            }
        );
        assert_eq!(s.backend.kind(), "tap-novnet");
        assert_eq!(
            NetSpec::parse("rtl8139:user").unwrap().backend,
            BackendSpec::User(UserOptions::default())
        );
        let BackendSpec::User(o) =
            NetSpec::parse("e1000:user,net=10.0.3.0/24,dhcpstart=10.0.3.40,restrict=on")
                .unwrap()
                .backend
        else {
            panic!("not user");
        };
        assert_eq!(o.dhcp_start, std::net::Ipv4Addr::new(10, 0, 3, 40));
        assert_eq!(o.host, std::net::Ipv4Addr::new(10, 0, 3, 2));
        assert!(o.restrict);
        let s = NetSpec::parse("e1000:peer,faults=drop:5%+seed:9,link=up").unwrap();
        assert_eq!(
            s.faults,
            Some(FaultPlan {
                drop: 500,
                seed: 9,
                ..Default::default()
            })
        );
        assert_eq!(NetSpec::parse("virtio").unwrap().faults, None);
    }

    #[test]
    fn refuses_bad_values_with_the_reason() {
        for (arg, why) in [
            ("", "unknown model"),
            ("ne2k", "unknown model"),
            ("virtio:nowhere", "unknown backend"),
            ("virtio:stream:", "unknown backend"),
            ("virtio:tap:", "TAP name"),
            ("virtio:tap:a-name-longer-than-15", "TAP name"),
            ("virtio,mac=01:00:00:00:00:01", "multicast"),
            ("virtio,mac=52:54:00:12:34", "not xx:"),
            ("virtio,mac=52:54:00:12:34:567", "not xx:"),
            ("virtio,queues=0", "not 1..=8"),
            ("virtio,queues=9", "not 1..=8"),
            ("e1000,queues=2", "only virtio-net"),
            ("virtio,vnet_hdr=on", "TAP option"),
            ("virtio:tap:t0,vnet_hdr=yes", "on or off"),
            ("virtio,link=off", "up or down"),
            ("virtio,link=", "up or down"),
            ("virtio,speed", "KEY=VALUE"),
            ("virtio,speed=10", "unknown option"),
            ("virtio,net=10.0.3.0/24", "user backend option"),
            ("virtio:user,dhcpstart=10.0.3.15", "not inside"),
            ("virtio:user,restrict=maybe", "on or off"),
            ("virtio,faults=drop:5", "not a rate"),
        ] {
            let e = NetSpec::parse(arg).expect_err(arg);
            assert!(e.contains(why), "{arg:?}: {e}");
        }
    }
}
