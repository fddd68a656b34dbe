//! User-mode networking's UDP services under our harness and under QEMU's `-netdev user`
//! (slirp) with the same options: UDP through the host alias to the host's loopback
//! (`net_host_udp`), a TFTP fetch from `tftp=DIR` (`net_tftp`), and DNS through the forwarder
//! to a resolver in a network namespace of the test's own (`net_dns`). (Beside tests/user_net.rs, which holds DHCP, ping, TCP and hostfwd.)

mod common;
use common::*;
use std::net::UdpSocket;

/// A UDP echo server on the host's loopback, on a port of its own; its thread lives as long
/// as the test process.
fn loopback_udp_echo() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}

/// Boot `sub` (`run` or `qemu`) with `--net net` and the kernel arguments `cmdline`.
fn boot(sub: &str, net: &str, cmdline: &str) -> (Option<i32>, String) {
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "120", "--net", net])
        .args(["--cmdline", cmdline])
        .output()
        .unwrap();
    (o.status.code(), text(&o))
}

/// The VMMs this machine can run: ours with KVM, QEMU when installed.
fn vmms(test: &str) -> Vec<&'static str> {
    let mut v = Vec::new();
    if have_kvm(test) {
        v.push("run");
    }
    if have_qemu(test) {
        v.push("qemu");
    }
    v
}

/// `net_host_udp`: the guest's datagrams through the host alias reach a UDP echo server on
/// the host's 127.0.0.1 (our proxy, or slirp's) and come back whole.
#[test]
fn udp_to_a_loopback_server_under_both_vmms() {
    let port = loopback_udp_echo();
    for sub in vmms("udp_to_a_loopback_server_under_both_vmms") {
        for net in ["virtio:user", "e1000:user"] {
            let (code, t) = boot(
                sub,
                net,
                &format!("tests=net_host_udp net_host_port={port}"),
            );
            assert_eq!(code, Some(0), "{sub} --net {net}: {t}");
            assert!(passed(&t, "net_host_udp"), "{sub} --net {net}:\n{t}");
            assert!(
                t.contains(&format!("UDP echo through the host alias 10.0.2.2:{port}")),
                "{sub} --net {net}:\n{t}"
            );
        }
    }
}

/// Nothing answers on the host port: the guest hears nothing back and the test fails.
#[test]
fn udp_to_a_silent_loopback_port_fails() {
    if !have_kvm("udp_to_a_silent_loopback_port_fails") {
        return;
    }
    // Bound, so no other test takes the port, but never read.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let (code, t) = boot(
        "run",
        "virtio:user",
        &format!("tests=net_host_udp net_host_port={port}"),
    );
    assert_ne!(code, Some(0), "{t}");
    assert!(t.contains("not ok 1 net_host_udp"), "{t}");
    assert!(t.contains("no answer in 3 tries"), "{t}");
}

/// FNV-1a 64, as `net_tftp` reports it.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// `net_tftp` of `file` from `tftp=dir`, checked against `content`.
fn tftp_fetch(
    sub: &str,
    net: &str,
    dir: &std::path::Path,
    file: &str,
    content: &[u8],
) -> (Option<i32>, String) {
    boot(
        sub,
        &format!("{net},tftp={}", dir.display()),
        &format!(
            "tests=net_tftp net_tftp_file={file} net_tftp_len={} net_tftp_fnv={:#x}",
            content.len(),
            fnv1a(content)
        ),
    )
}

/// A 100 KB file fetched over TFTP from the host alias, under both VMMs (our server, slirp's),
/// matches; a file that is not there fails the guest test with the server's error.
#[test]
fn tftp_fetches_a_file_and_a_missing_one_fails_under_both_vmms() {
    let dir = TempDir::new("tftp");
    let content: Vec<u8> = (0..100 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.0.join("boot.bin"), &content).unwrap();
    for sub in vmms("tftp_fetches_a_file_and_a_missing_one_fails_under_both_vmms") {
        for net in ["virtio:user", "e1000:user"] {
            let (code, t) = tftp_fetch(sub, net, &dir.0, "boot.bin", &content);
            assert_eq!(code, Some(0), "{sub} --net {net}: {t}");
            assert!(passed(&t, "net_tftp"), "{sub} --net {net}:\n{t}");
            assert!(
                t.contains(&format!(
                    "# net: tftp boot.bin from 10.0.2.2: {} bytes",
                    content.len()
                )),
                "{sub} --net {net}:\n{t}"
            );
        }
        let (code, t) = tftp_fetch(sub, "virtio:user", &dir.0, "missing.bin", &content);
        assert_ne!(code, Some(0), "{sub}: {t}");
        assert!(t.contains("not ok 1 net_tftp"), "{sub}: {t}");
        assert!(
            t.contains("TFTP missing.bin from 10.0.2.2: error 1"),
            "{sub}: {t}"
        );
    }
}

/// A network namespace of the test's own with `lo` up and /etc/netns/NAME/resolv.conf naming
/// 127.0.0.1 (`ip netns exec` mounts it over /etc/resolv.conf); deleted, with that file, when
/// dropped, whatever the test did.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ns = NetNs(format!("hh-{tag}-{}-{n}", std::process::id()));
        let ip = |args: &[&str]| {
            let o = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "ip {args:?}: {}", text(&o));
        };
        ip(&["netns", "add", &ns.0]);
        let etc = ns.etc();
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
        ip(&["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"]);
        ns
    }

    fn etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.0)
    }

    /// `harness() args...` inside the namespace.
    fn harness(&self) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", &self.0])
            .arg(harness().get_program());
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .output();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

/// The name a query asks about (labels joined by dots, lowercase) and where its question
/// ends; `None` for what is not a one-question query.
fn dns_question(q: &[u8]) -> Option<(String, usize)> {
    if q.len() < 12 || q[2] & 0x80 != 0 || q[4..6] != [0, 1] {
        return None;
    }
    let (mut name, mut at) = (String::new(), 12);
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        let label = std::str::from_utf8(q.get(at..at + len)?).ok()?;
        if !name.is_empty() {
            name.push('.');
        }
        name.push_str(&label.to_ascii_lowercase());
        at += len;
    }
    (at + 4 <= q.len()).then_some((name, at + 4))
}

/// A DNS server on 127.0.0.1:53 inside `ns`, answering A queries for `name` with `addr` and
/// NXDOMAIN for any other name. Its thread enters the namespace (setns applies to the
/// calling thread only) and serves for as long as the test process lives.
fn dns_server_in(ns: &NetNs, name: &'static str, addr: [u8; 4]) {
    let path = format!("/run/netns/{}", ns.0);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on an open namespace file; it moves only this thread, which then
        // creates its socket there.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        let s = UdpSocket::bind("127.0.0.1:53").unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let q = &buf[..n];
            let Some((asked, end)) = dns_question(q) else {
                continue;
            };
            let known = asked == name;
            let mut r = q[..2].to_vec(); // the query's id
            r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]); // QR RD RA, rcode
            r.extend_from_slice(&[0, 1, 0, u8::from(known), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if known {
                // The question's name by pointer, A, IN, TTL 60, four bytes.
                r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&addr);
            }
            let _ = s.send_to(&r, from);
        }
    });
    ready_rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("the DNS server in the namespace did not start");
}

/// `net_dns` under `sub` inside `ns`, asking for `name`, expecting `expect`.
fn dns_lookup(ns: &NetNs, sub: &str, name: &str, expect: &str) -> (Option<i32>, String) {
    let o = ns
        .harness()
        .args([
            sub,
            "--kernel",
            KERNEL,
            "--timeout",
            "120",
            "--net",
            "virtio:user",
        ])
        .arg("--cmdline")
        .arg(format!(
            "tests=net_dns net_dns_name={name} net_dns_expect={expect}"
        ))
        .output()
        .unwrap();
    (o.status.code(), text(&o))
}

/// The guest's DNS query to 10.0.2.3 goes to the host's resolver as /etc/resolv.conf names
/// it: a server on 127.0.0.1:53 in a namespace of the test's own (nothing leaves the
/// machine), under our harness and under QEMU. A name it does not know is NXDOMAIN, and the
/// guest test fails saying so.
#[test]
fn dns_through_the_forwarder_to_the_hosts_resolver_under_both_vmms() {
    let test = "dns_through_the_forwarder_to_the_hosts_resolver_under_both_vmms";
    let subs = vmms(test);
    if subs.is_empty() || !have_tap(test) {
        return;
    }
    let ns = NetNs::new("dns");
    dns_server_in(&ns, "vm.example.test", [192, 0, 2, 77]);
    for sub in subs {
        let (code, t) = dns_lookup(&ns, sub, "vm.example.test", "192.0.2.77");
        assert_eq!(code, Some(0), "{sub}: {t}");
        assert!(passed(&t, "net_dns"), "{sub}:\n{t}");
        assert!(
            t.contains("# net: dns vm.example.test via 10.0.2.3: rcode 0"),
            "{sub}:\n{t}"
        );
        let (code, t) = dns_lookup(&ns, sub, "nobody.example.test", "192.0.2.77");
        assert_ne!(code, Some(0), "{sub}: {t}");
        assert!(t.contains("not ok 1 net_dns"), "{sub}: {t}");
        assert!(
            t.contains("DNS nobody.example.test via 10.0.2.3: NXDOMAIN"),
            "{sub}: {t}"
        );
    }
}
