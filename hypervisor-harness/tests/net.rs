//! Networking end to end: the guest's smoltcp stack over its virtio-net driver, against the
//! host peer (README, "host peer") under our harness and under QEMU, and against QEMU's
//! user-mode network for DHCP.

mod common;
use common::*;

/// `qemu --net virtio:user`: DHCP from QEMU's built-in server gets the address QEMU always
/// hands out, and the gateway answers pings.
#[test]
fn dhcp_under_qemu_user_networking() {
    if !have_qemu("dhcp_under_qemu_user_networking") {
        return;
    }
    let o = harness()
        .args(["qemu", "--kernel", KERNEL, "--timeout", "120"])
        .args(["--net", "virtio:user", "--cmdline", "tests=net_dhcp"])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(passed(&t, "net_dhcp"), "net_dhcp not run or skipped:\n{t}");
    assert!(
        t.contains("# net: dhcp lease 10.0.2.15/24 router 10.0.2.2"),
        "not QEMU's lease:\n{t}"
    );
    assert!(t.contains("# net: ping 10.0.2.2 1472 bytes"), "{t}");
}
