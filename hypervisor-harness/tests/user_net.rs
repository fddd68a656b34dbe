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
