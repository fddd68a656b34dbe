//! User-mode networking (`--net MODEL:user[,options]`) under our harness and under QEMU's
//! `-netdev user` with the same options: the guest's DHCP lease (10.0.2.15 by default,
//! elsewhere when `net=`/`dhcpstart=` move it) and ping to the host alias it names as router.

mod common;
use common::*;

/// Boot `sub` (`run` or `qemu`) with `--net net` and `net_dhcp`; the lease and router must be
/// `lease`/`router`, and the router must answer a full-size ping.
fn dhcp_and_ping(sub: &str, net: &str, lease: &str, router: &str) {
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "120", "--net", net])
        .args(["--cmdline", "tests=net_dhcp"])
        .output()
        .unwrap();
    let t = text(&o);
    let what = format!("{sub} --net {net}");
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    assert!(
        passed(&t, "net_dhcp"),
        "{what}: net_dhcp not run or skipped:\n{t}"
    );
    assert!(
        t.contains(&format!("# net: dhcp lease {lease} router {router} ")),
        "{what}: not the lease {lease} router {router}:\n{t}"
    );
    assert!(
        t.contains(&format!("# net: ping {router} 1472 bytes")),
        "{what}: {t}"
    );
}

#[test]
fn dhcp_default_lease_and_ping_under_the_harness() {
    if !have_kvm("dhcp_default_lease_and_ping_under_the_harness") {
        return;
    }
    for model in ["virtio", "e1000", "rtl8139"] {
        dhcp_and_ping("run", &format!("{model}:user"), "10.0.2.15/24", "10.0.2.2");
    }
}

#[test]
fn dhcp_default_lease_and_ping_under_qemu() {
    if !have_qemu("dhcp_default_lease_and_ping_under_qemu") {
        return;
    }
    dhcp_and_ping("qemu", "virtio:user", "10.0.2.15/24", "10.0.2.2");
}

const MOVED: &str = "virtio:user,net=10.0.9.0/24,dhcpstart=10.0.9.40,host=10.0.9.1";

#[test]
fn dhcp_moved_lease_and_ping_under_the_harness() {
    if !have_kvm("dhcp_moved_lease_and_ping_under_the_harness") {
        return;
    }
    dhcp_and_ping("run", MOVED, "10.0.9.40/24", "10.0.9.1");
}

#[test]
fn dhcp_moved_lease_and_ping_under_qemu() {
    if !have_qemu("dhcp_moved_lease_and_ping_under_qemu") {
        return;
    }
    dhcp_and_ping("qemu", MOVED, "10.0.9.40/24", "10.0.9.1");
}

#[test]
fn bad_user_options_are_usage_errors() {
    for net in [
        "virtio:user,net=10.0.2.0/33",
        "virtio:user,dhcpstart=10.0.3.15",
        "virtio:user,restrict=maybe",
        "virtio,dhcpstart=10.0.2.15",
    ] {
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--net", net])
            .output()
            .unwrap();
        assert_usage_error(&o, net);
    }
}

/// A TCP echo server on the host's loopback, on a port of its own; its threads live as long
/// as the test process.
fn loopback_echo() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    port
}

/// `net_host_tcp`: the guest's TCP echo through the host alias reaches a server on the host's
/// 127.0.0.1 (the VMM's proxy, or slirp's under QEMU) and comes back whole.
fn tcp_to_the_host(sub: &str, net: &str, port: u16) -> (Option<i32>, String) {
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "120", "--net", net])
        .arg("--cmdline")
        .arg(format!("tests=net_host_tcp net_host_port={port}"))
        .output()
        .unwrap();
    (o.status.code(), text(&o))
}

#[test]
fn tcp_to_a_loopback_server_under_both_vmms() {
    if !have_kvm("tcp_to_a_loopback_server_under_both_vmms") {
        return;
    }
    let port = loopback_echo();
    let mut vmms = vec!["run"];
    if have_qemu("tcp_to_a_loopback_server_under_both_vmms (QEMU)") {
        vmms.push("qemu");
    }
    for sub in vmms {
        for net in ["virtio:user", "e1000:user"] {
            let (code, t) = tcp_to_the_host(sub, net, port);
            assert_eq!(code, Some(0), "{sub} --net {net}: {t}");
            assert!(passed(&t, "net_host_tcp"), "{sub} --net {net}:\n{t}");
            assert!(
                t.contains(&format!("TCP echo through the host alias 10.0.2.2:{port}")),
                "{sub} --net {net}:\n{t}"
            );
        }
    }
}

/// Nothing listens on the host port: the guest's connect is refused and the test fails, under
/// our harness (the proxy answers with a reset).
#[test]
fn tcp_to_a_closed_loopback_port_fails() {
    if !have_kvm("tcp_to_a_closed_loopback_port_fails") {
        return;
    }
    // A port that was free a moment ago and is closed now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, t) = tcp_to_the_host("run", "virtio:user", port);
    assert_ne!(code, Some(0), "{t}");
    assert!(t.contains("not ok 1 net_host_tcp"), "{t}");
    assert!(t.contains("TCP connect to 10.0.2.2"), "{t}");
}

#[test]
fn bad_hostfwd_options_are_usage_errors() {
    for net in [
        "virtio:user,hostfwd=tcp::5555",
        "virtio:user,hostfwd=udp::5555-:53",
        "virtio:user,hostfwd=tcp:10.1.2.3:5555-:22",
        "virtio:user,hostfwd=tcp::0-:22",
        "virtio:user,hostfwd=tcp::5555-10.0.3.15:22",
        "virtio:user,hostfwd=tcp::5555-:22,hostfwd=tcp::5555-:23",
    ] {
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--net", net])
            .output()
            .unwrap();
        assert_usage_error(&o, net);
        assert!(text(&o).contains("hostfwd"), "{net}: {}", text(&o));
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One connection to the forwarded `port`: messages of a few sizes (of a pattern that differs
/// per `round`) must come back whole, then our FIN must be answered by the guest's. `Ok(false)`
/// when nothing came back at all (the guest not listening yet: try again).
fn echo_through(port: u16, round: u8) -> Result<bool, String> {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return Ok(false);
    };
    c.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let mut echoed = 0;
    for size in [1usize, 1460, 20000] {
        let msg: Vec<u8> = (0..size)
            .map(|i| (i as u8).wrapping_mul(31) ^ round)
            .collect();
        let mut back = vec![0; size];
        let r = c.write_all(&msg).and_then(|()| c.read_exact(&mut back));
        match r {
            Err(_) if echoed == 0 => return Ok(false),
            Err(e) => return Err(format!("echo of {size} bytes after {echoed}: {e}")),
            Ok(()) if back != msg => return Err(format!("echo of {size} bytes differs")),
            Ok(()) => echoed += size,
        }
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the guest's FIN: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the echo", rest.len()));
    }
    Ok(true)
}

/// `net_tcp_serve` (DHCP) behind `hostfwd=tcp::HOSTPORT-:7777`: three connections from the
/// host's loopback reach the guest's server and come back echoed.
fn hostfwd_into_the_guest(sub: &str, model: &str) {
    const CONNS: u8 = 3;
    let port = free_port();
    let net = format!("{model}:user,hostfwd=tcp::{port}-:7777");
    let child = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "120", "--net", &net])
        .arg("--cmdline")
        .arg(format!(
            "tests=net_tcp_serve net_ip=dhcp net_serve_port=7777 net_serve_conns={CONNS}"
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let vm = std::thread::spawn(move || child.wait_with_output().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut done = 0;
    let mut error = None;
    while done < CONNS && std::time::Instant::now() < deadline && !vm.is_finished() {
        match echo_through(port, done) {
            Ok(true) => done += 1,
            Ok(false) => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let o = vm.join().unwrap();
    let t = text(&o);
    let what = format!("{sub} --net {net}");
    assert_eq!(error, None, "{what}:\n{t}");
    assert_eq!(done, CONNS, "{what}: connections echoed:\n{t}");
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    assert!(passed(&t, "net_tcp_serve"), "{what}:\n{t}");
    assert!(
        t.contains(&format!(
            "# net: served {CONNS} connection(s), 64383 bytes echoed"
        )),
        "{what}:\n{t}"
    );
}

#[test]
fn hostfwd_into_a_guest_server_under_the_harness() {
    if !have_kvm("hostfwd_into_a_guest_server_under_the_harness") {
        return;
    }
    for model in ["virtio", "e1000"] {
        hostfwd_into_the_guest("run", model);
    }
}

#[test]
fn hostfwd_into_a_guest_server_under_qemu() {
    if !have_qemu("hostfwd_into_a_guest_server_under_qemu") {
        return;
    }
    hostfwd_into_the_guest("qemu", "virtio");
}

/// `restrict=on` cuts the guest off from the host's loopback: as slirp does, the lease names
/// no router (so `net_host_tcp` has no host alias to reach; a SYN sent there anyway is dropped,
/// see the backend's unit test); with `restrict=off` the same test passes.
fn restricted(sub: &str) {
    let port = loopback_echo();
    let (code, t) = tcp_to_the_host(sub, "virtio:user,restrict=on", port);
    assert_ne!(code, Some(0), "{sub} restrict=on: {t}");
    assert!(
        t.contains("not ok 1 net_host_tcp"),
        "{sub} restrict=on: {t}"
    );
    assert!(
        t.contains("DHCP: the lease names no router"),
        "{sub} restrict=on: a lease without a router expected:\n{t}"
    );
    let (code, t) = tcp_to_the_host(sub, "virtio:user,restrict=off", port);
    assert_eq!(code, Some(0), "{sub} restrict=off: {t}");
    assert!(passed(&t, "net_host_tcp"), "{sub} restrict=off:\n{t}");
}

#[test]
fn restrict_on_blocks_the_host_under_the_harness() {
    if !have_kvm("restrict_on_blocks_the_host_under_the_harness") {
        return;
    }
    restricted("run");
}

#[test]
fn restrict_on_blocks_the_host_under_qemu() {
    if !have_qemu("restrict_on_blocks_the_host_under_qemu") {
        return;
    }
    restricted("qemu");
}
