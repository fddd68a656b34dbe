//! User-mode networking's UDP services under our harness and under QEMU's `-netdev user`
//! (slirp) with the same options: UDP through the host alias to the host's loopback
//! (`net_host_udp`) and a TFTP fetch from `tftp=DIR` (`net_tftp`). (Beside tests/user_net.rs, which holds DHCP, ping, TCP and hostfwd.)

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
