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
