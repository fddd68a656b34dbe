//! Bridge and NAT networking (issue 14), for each NIC model, under our harness and under QEMU's
//! `-netdev tap`. The test builds the topology of the seed's two modes in network namespaces
//! of its own (README, "Network modes"):
//!
//! - a "bridge" namespace with a Linux bridge `br0`, one persistent TAP per VM on it (the VMM
//!   runs under `ip netns exec` and opens its TAP there) and a veth to
//! - a "phys" namespace that plays the physical network: a host with an address on the veth
//!   and echo services (UDP and TCP port 7) served by a thread of this test inside it.
//!
//! Bridge mode puts the veth on `br0`: guests and the phys host share 192.168.76.0/24. NAT mode
//! (libvirt's default network) gives `br0` the guests' gateway 192.168.122.1/24, routes to the
//! phys namespace's 10.77.0.0/24 over the veth and masquerades the guests behind the veth's
//! address; the phys namespace has no route back to 192.168.122.0/24, so only NAT's rewritten
//! source gets an answer. Needs root, /dev/net/tun, `ip` and (for NAT) `iptables`: SKIP
//! without them, except under CI=true.

mod common;
use common::*;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

const MODELS: [&str; 3] = ["virtio", "e1000", "rtl8139"];
/// The kernel tests a guest runs against the phys host: Linux answers ARP and ping, the
/// test's thread the UDP and TCP echo.
const HOST_TESTS: &str = "net_link,net_ping,net_udp_echo,net_tcp_echo";
const NAT_TESTS: &str = "net_ping,net_tcp_echo";

/// Bridge mode: one subnet for the guests and the phys host.
const BRIDGE_NET: &str = "192.168.76";
const BRIDGE_HOST: &str = "192.168.76.1";
/// NAT mode: the guests' subnet behind the gateway, and the phys network.
const NAT_GUEST_NET: &str = "192.168.122";
const NAT_GATEWAY: &str = "192.168.122.1";
const NAT_OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const NAT_HOST: &str = "10.77.0.2";

/// NAT mode's guest subnet, as iptables writes it.
fn guest_subnet() -> String {
    format!("{NAT_GUEST_NET}.0/24")
}

/// `cmd ARGS`, which must succeed.
fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace (`ip netns add`), deleted when dropped, panic or not.
struct Netns(String);

impl Netns {
    fn new(role: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hh-{role}-{}-{n}", std::process::id());
        sh("ip", &["netns", "add", &name]);
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip ARGS` inside the namespace.
    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// `cmd ARGS` inside the namespace.
    fn exec(&self, cmd: &str, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.0, cmd];
        all.extend_from_slice(args);
        sh("ip", &all);
    }

    /// A command that runs `program` inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// The phys host's echo services on port 7 (UDP and TCP), served by threads that joined the
/// phys namespace; it records where each TCP connection came from. Stopped when dropped.
struct EchoServer {
    stop: Arc<AtomicBool>,
    tcp_peers: Arc<Mutex<Vec<IpAddr>>>,
    threads: Vec<JoinHandle<()>>,
}

/// Move this thread into namespace `ns`: its sockets and the threads it spawns live there.
fn enter(ns: &str) {
    let f = File::open(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: setns on an open namespace fd changes only this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

impl EchoServer {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp_peers = Arc::new(Mutex::new(Vec::new()));
        // Each service says once whether it could bind (a failed one must not leave us waiting).
        let (ready, bound) = std::sync::mpsc::channel::<Result<(), String>>();
        let tcp = {
            let (ns, stop, peers, ready) =
                (ns.0.clone(), stop.clone(), tcp_peers.clone(), ready.clone());
            std::thread::spawn(move || {
                enter(&ns);
                let l = match TcpListener::bind("0.0.0.0:7") {
                    Ok(l) => l,
                    Err(e) => return ready.send(Err(format!("TCP 7: {e}"))).unwrap(),
                };
                l.set_nonblocking(true).unwrap();
                ready.send(Ok(())).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((c, from)) => {
                            peers.lock().unwrap().push(from.ip());
                            std::thread::spawn(move || echo_tcp(c));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
        };
        let udp = {
            let (ns, stop, ready) = (ns.0.clone(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                enter(&ns);
                let s = match UdpSocket::bind("0.0.0.0:7") {
                    Ok(s) => s,
                    Err(e) => return ready.send(Err(format!("UDP 7: {e}"))).unwrap(),
                };
                s.set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                ready.send(Ok(())).unwrap();
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
        };
        // Only the threads hold senders now: one that died unbound disconnects the channel.
        drop(ready);
        for _ in 0..2 {
            match bound.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("the phys host's echo service: {e}"),
                Err(e) => panic!("the phys host's echo services did not start: {e}"),
            }
        }
        Self {
            stop,
            tcp_peers,
            threads: vec![tcp, udp],
        }
    }

    fn tcp_peers(&self) -> Vec<IpAddr> {
        self.tcp_peers.lock().unwrap().clone()
    }
}

/// Echo one connection until the guest closes it (or goes quiet for 30 s).
fn echo_tcp(mut c: TcpStream) {
    c.set_nonblocking(false).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    while let Ok(n @ 1..) = c.read(&mut buf) {
        if c.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Bridge,
    Nat,
}

/// The two namespaces, the bridge with `taps` TAP devices (`tap0`, `tap1`, ...) and the phys
/// host's echo services. Every VM gets a TAP of its own, never one a VM before it had: a VMM
/// that has exited may hold its TAP a moment longer (our harness's teardown helper outlives
/// it), and a single-queue TAP takes one user at a time (TUNSETIFF: EBUSY). Fields drop in order: the server, then the namespaces (with them
/// the bridge, the TAPs and the veth).
struct Topology {
    server: EchoServer,
    bridge: Netns,
    phys: Netns,
}

impl Topology {
    fn new(mode: Mode, taps: usize) -> Self {
        let bridge = Netns::new("br");
        let phys = Netns::new("phys");
        bridge.ip(&["link", "add", "br0", "type", "bridge"]);
        bridge.ip(&["link", "set", "br0", "up"]);
        for i in 0..taps {
            let tap = format!("tap{i}");
            bridge.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
            bridge.ip(&["link", "set", &tap, "master", "br0", "up"]);
        }
        bridge.ip(&[
            "link", "add", "veth-br", "type", "veth", "peer", "name", "veth-ph", "netns", &phys.0,
        ]);
        match mode {
            Mode::Bridge => {
                bridge.ip(&["link", "set", "veth-br", "master", "br0", "up"]);
                phys.ip(&[
                    "addr",
                    "add",
                    &format!("{BRIDGE_HOST}/24"),
                    "dev",
                    "veth-ph",
                ]);
            }
            Mode::Nat => {
                bridge.ip(&["addr", "add", &format!("{NAT_GATEWAY}/24"), "dev", "br0"]);
                bridge.ip(&[
                    "addr",
                    "add",
                    &format!("{NAT_OUTSIDE}/24"),
                    "dev",
                    "veth-br",
                ]);
                bridge.ip(&["link", "set", "veth-br", "up"]);
                bridge.exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
                phys.ip(&["addr", "add", &format!("{NAT_HOST}/24"), "dev", "veth-ph"]);
                // Counts what reaches the phys host from the guests' own addresses: nothing
                // while NAT rewrites them.
                phys.exec(
                    "iptables",
                    &["-A", "INPUT", "-s", &guest_subnet(), "-j", "ACCEPT"],
                );
            }
        }
        phys.ip(&["link", "set", "veth-ph", "up"]);
        let server = EchoServer::start(&phys);
        let t = Self {
            server,
            bridge,
            phys,
        };
        if mode == Mode::Nat {
            t.masquerade("-A");
        }
        t
    }

    /// Packets the phys host received from the guests' own subnet (NAT mode's counting rule).
    fn unmasqueraded_packets(&self) -> u64 {
        let out = self
            .phys
            .command("iptables")
            .args(["-L", "INPUT", "-v", "-n", "-x"])
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        listing
            .lines()
            .find(|l| l.contains(&guest_subnet()))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no counting rule in\n{listing}"))
    }

    /// Add (`-A`) or delete (`-D`) the MASQUERADE rule from the guests' subnet to the veth.
    fn masquerade(&self, op: &str) {
        let subnet = guest_subnet();
        self.bridge.exec(
            "iptables",
            &[
                "-t",
                "nat",
                op,
                "POSTROUTING",
                "-s",
                &subnet,
                "-o",
                "veth-br",
                "-j",
                "MASQUERADE",
            ],
        );
    }

    /// Boot kernel tests `tests` under `vmm` (`run` or `qemu`) on `tap{tap}` with NIC `model`,
    /// inside the bridge namespace; `cmdline` adds the guest's addresses.
    fn vm(&self, vmm: &str, model: &str, tap: usize, tests: &str, cmdline: &str) -> Vm {
        let mac = format!("52:54:00:0b:00:{:02x}", 0x10 + tap);
        let mut c = self
            .bridge
            .command(env!("CARGO_BIN_EXE_hypervisor-harness"));
        c.args([vmm, "--kernel", KERNEL, "--timeout", "120", "--net"])
            .arg(format!("{model}:tap:tap{tap},mac={mac}"))
            .arg("--cmdline")
            .arg(format!("tests={tests} {cmdline}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A group of its own, so that a failing test can stop the VMM and QEMU under it.
            .process_group(0);
        Vm {
            what: format!("{vmm} {model} on tap{tap} ({tests} {cmdline})"),
            child: Some(c.spawn().unwrap()),
        }
    }
}

/// A VMM running in the bridge namespace; killed with its process group if dropped unfinished.
struct Vm {
    what: String,
    child: Option<Child>,
}

impl Vm {
    fn output(mut self) -> (String, Output) {
        let o = self.child.take().unwrap().wait_with_output().unwrap();
        (std::mem::take(&mut self.what), o)
    }

    /// Exit code 0 and every test of `tests` passed; returns the output.
    fn passes(self, tests: &str) -> String {
        let (what, o) = self.output();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{what}: {t}");
        for name in tests.split(',') {
            assert!(passed(&t, name), "{what}: {name} not run or skipped:\n{t}");
        }
        t
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .output();
            let _ = c.wait();
        }
    }
}

/// Whether this machine can build the bridge topology (KVM, root, /dev/net/tun, `ip`); if
/// not, SKIP (or under CI=true, fail).
fn have_topology(test: &str) -> bool {
    have_kvm(test) && have_tap(test)
}

/// Whether `iptables` runs, for NAT; if not, SKIP (or under CI=true, where .ci/run installs
/// it, fail).
fn have_iptables(test: &str) -> bool {
    if Command::new("iptables")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: iptables is missing, and CI=true demands it");
    eprintln!("SKIP {test}: iptables is missing");
    false
}

/// The VMMs to run each case under: ours, and QEMU where it is installed.
fn vmms(test: &str) -> Vec<&'static str> {
    if have_qemu(test) {
        vec!["run", "qemu"]
    } else {
        vec!["run"]
    }
}

/// Bridge mode, VM to the "physical" host: for each NIC model, a guest under each VMM at once
/// (each on its TAP on br0) pings the phys host and runs the UDP and TCP echo against it.
#[test]
fn bridge_guests_reach_the_physical_host() {
    let test = "bridge_guests_reach_the_physical_host";
    if !have_topology(test) {
        return;
    }
    let vmms = vmms(test);
    let topo = Topology::new(Mode::Bridge, MODELS.len() * vmms.len());
    for (m, model) in MODELS.into_iter().enumerate() {
        let vms: Vec<Vm> = vmms
            .iter()
            .enumerate()
            .map(|(i, vmm)| {
                let ip = format!("{BRIDGE_NET}.{}", 10 + 10 * m + i);
                let cmdline = format!("net_ip={ip}/24 net_peer={BRIDGE_HOST}");
                topo.vm(vmm, model, m * vmms.len() + i, HOST_TESTS, &cmdline)
            })
            .collect();
        for vm in vms {
            vm.passes(HOST_TESTS);
        }
    }
    assert!(!topo.server.tcp_peers().is_empty());
}

/// Bridge mode, VM to VM: for each NIC model, pairs of guests on br0 exchange 4 MiB each way
/// over TCP (net_tcp_pair), all pairs at once: both under our harness, both under QEMU, and
/// our harness serving a client under QEMU.
#[test]
fn bridge_guests_reach_each_other() {
    let test = "bridge_guests_reach_each_other";
    if !have_topology(test) {
        return;
    }
    let pairs: &[(&str, &str)] = if have_qemu(test) {
        &[("run", "run"), ("qemu", "qemu"), ("run", "qemu")]
    } else {
        &[("run", "run")]
    };
    let topo = Topology::new(Mode::Bridge, MODELS.len() * 2 * pairs.len());
    for (m, model) in MODELS.into_iter().enumerate() {
        let vms: Vec<Vm> = pairs
            .iter()
            .enumerate()
            .flat_map(|(p, (server_vmm, client_vmm))| {
                let server = 2 * (m * pairs.len() + p);
                let client = server + 1;
                let server_ip = format!("{BRIDGE_NET}.{}", 100 + server);
                let client_ip = format!("{BRIDGE_NET}.{}", 100 + client);
                [
                    topo.vm(
                        server_vmm,
                        model,
                        server,
                        "net_tcp_pair",
                        &format!("net_role=server net_ip={server_ip}/24"),
                    ),
                    topo.vm(
                        client_vmm,
                        model,
                        client,
                        "net_tcp_pair",
                        &format!("net_role=client net_ip={client_ip}/24 net_peer={server_ip}"),
                    ),
                ]
            })
            .collect();
        for vm in vms {
            let what = vm.what.clone();
            let t = vm.passes("net_tcp_pair");
            for l in t.lines().filter(|l| l.contains(" bytes out in ")) {
                eprintln!("{what}: {l}");
            }
        }
    }
}

/// NAT mode, libvirt's default network: for each NIC model, a guest under each VMM at once,
/// on 192.168.122.0/24 behind the gateway 192.168.122.1, pings the phys host 10.77.0.2 and
/// runs the TCP echo against it. The server sees every connection come from the bridge
/// namespace's veth address, and nothing from the guests' own subnet reaches it. Then the
/// MASQUERADE rule goes: a guest's connect must fail, while its SYNs still arrive with the
/// guest's own address, which the phys host has no route back to.
#[test]
fn nat_guests_reach_the_physical_host_through_masquerade() {
    let test = "nat_guests_reach_the_physical_host_through_masquerade";
    if !have_topology(test) || !have_iptables(test) {
        return;
    }
    let vmms = vmms(test);
    // A TAP per guest, the negative case's included.
    let topo = Topology::new(Mode::Nat, (MODELS.len() + 1) * vmms.len());
    let guest = |vmm: &str, model: &str, i: usize, host: usize, tests: &str| {
        let cmdline =
            format!("net_ip={NAT_GUEST_NET}.{host}/24 net_gw={NAT_GATEWAY} net_peer={NAT_HOST}");
        topo.vm(vmm, model, i, tests, &cmdline)
    };
    for (m, model) in MODELS.into_iter().enumerate() {
        let vms: Vec<Vm> = vmms
            .iter()
            .enumerate()
            .map(|(i, vmm)| {
                let tap = m * vmms.len() + i;
                guest(vmm, model, tap, 10 + 10 * m + i, NAT_TESTS)
            })
            .collect();
        for vm in vms {
            vm.passes(NAT_TESTS);
        }
    }
    let peers = topo.server.tcp_peers();
    assert!(
        peers.len() >= MODELS.len() * vmms.len(),
        "one echo connection per guest at least: {peers:?}"
    );
    assert!(
        peers.iter().all(|p| *p == IpAddr::V4(NAT_OUTSIDE)),
        "the server saw addresses other than the NAT address {NAT_OUTSIDE}: {peers:?}"
    );
    assert_eq!(topo.unmasqueraded_packets(), 0);

    // Without NAT (fresh guest addresses, so that no conntrack entry still maps them).
    topo.masquerade("-D");
    let vms: Vec<Vm> = vmms
        .iter()
        .enumerate()
        .map(|(i, vmm)| {
            let tap = MODELS.len() * vmms.len() + i;
            guest(vmm, "virtio", tap, 200 + i, "net_tcp_echo")
        })
        .collect();
    for vm in vms {
        let (what, o) = vm.output();
        let t = text(&o);
        assert_ne!(o.status.code(), Some(0), "{what}: passed without NAT:\n{t}");
        assert!(
            t.contains("not ok 1 net_tcp_echo")
                && t.contains(&format!("TCP connect to {NAT_HOST}:7")),
            "{what}: not the failed connect expected:\n{t}"
        );
    }
    assert_eq!(
        topo.server.tcp_peers().len(),
        peers.len(),
        "a connection without NAT"
    );
    assert!(
        topo.unmasqueraded_packets() > 0,
        "the guests' SYNs never reached the phys host with their own address"
    );
}
