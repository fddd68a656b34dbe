//! The guest's RTL8139 driver (C mode) end to end: the kernel's network tests over it, against
//! the host peer, under our harness's model (revision 0x10, the in-process peer) and under
//! QEMU's own `rtl8139` (its default properties: the 8139C+ revision 0x20, driven in C mode;
//! `peer --listen` over `-netdev stream`). The same tests and assertions on both.

mod common;
use common::*;
use std::process::Output;

/// The kernel tests every peer serves, in the order they run.
const PEER_TESTS: [&str; 6] = [
    "net_link",
    "net_ping",
    "net_udp_echo",
    "net_tcp_echo",
    "net_tcp_tx",
    "net_tcp_rx",
];

/// `sub` (`run` or `qemu`) with `--net net` and the kernel's `cmdline`.
fn boot(sub: &str, net: &str, timeout: &str, cmdline: &str) -> Output {
    harness()
        .args([sub, "--kernel", KERNEL, "--timeout", timeout, "--net", net])
        .args(["--cmdline", cmdline])
        .output()
        .unwrap()
}

/// Every peer test passed over the RTL8139 and the driver met no broken device.
fn peer_tests_pass(sub: &str) {
    let what = format!("{sub} --net rtl8139");
    let o = boot(
        sub,
        "rtl8139",
        "300",
        &format!("tests={}", PEER_TESTS.join(",")),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    for name in PEER_TESTS {
        assert!(passed(&t, name), "{what}: {name} not run or skipped:\n{t}");
    }
    assert!(
        t.contains("# net: rtl8139 ") && t.contains("(IdrMatchesEeprom)"),
        "{what}: not over the RTL8139, or its EEPROM disagreed:\n{t}"
    );
    device_was_sane(&what, &t);
    for l in t.lines().filter(|l| l.starts_with("# net: tcp ")) {
        eprintln!("{what}: {l}");
    }
}

/// Every `# net: rtl8139:` counters line (one after each test): no broken RX header, TX
/// error, reset or stuck interrupt, and the driver still running.
fn device_was_sane(what: &str, t: &str) {
    let lines: Vec<&str> = t
        .lines()
        .filter(|l| l.starts_with("# net: rtl8139: "))
        .collect();
    assert!(!lines.is_empty(), "{what}: no counters line:\n{t}");
    for l in lines {
        for clean in [
            "rx 0 bad lengths, 0 errors,",
            "tx 0 errors, 0 timeouts; 0 resets, 0 isr storms; failure None;",
        ] {
            assert!(l.contains(clean), "{what}: {l:?} lacks {clean:?}:\n{t}");
        }
    }
}

/// `# net: rx flood: R of N datagrams ... (L lost)`: R and L.
fn rx_flood_counts(what: &str, t: &str) -> (u64, u64) {
    let line = t
        .lines()
        .find_map(|l| l.strip_prefix("# net: rx flood: "))
        .unwrap_or_else(|| panic!("{what}: no rx flood line:\n{t}"));
    let received = line.split_once(" of ").and_then(|(n, _)| n.parse().ok());
    let lost = line
        .split_once(" lost)")
        .and_then(|(head, _)| head.rsplit('(').next()?.parse().ok());
    match (received, lost) {
        (Some(r), Some(l)) => (r, l),
        _ => panic!("{what}: unreadable rx flood line {line:?}"),
    }
}

/// The flood: the test passes (every datagram that came is intact, the echoes after it are
/// answered), every datagram is accounted for, and RX went on after the guest's pause (a
/// stalled ring would deliver only what fit before it).
fn rx_flood_goes_on(sub: &str) {
    let what = format!("{sub} --net rtl8139 (net_rx_flood)");
    let o = boot(sub, "rtl8139", "120", "tests=net_rx_flood");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    assert!(passed(&t, "net_rx_flood"), "{what}:\n{t}");
    let (received, lost) = rx_flood_counts(&what, &t);
    assert_eq!(received + lost, 20_000, "{what}:\n{t}");
    assert!(
        received > 1_000,
        "{what}: the flood stalled after the pause:\n{t}"
    );
    device_was_sane(&what, &t);
    eprintln!("{what}: {received} of 20000 arrived");
}

/// `link=down`: the driver reads the link down from MSR and refuses to send.
fn link_down_is_seen(sub: &str) {
    let what = format!("{sub} --net rtl8139,link=down (net_link)");
    let o = boot(
        sub,
        "rtl8139,link=down",
        "60",
        "tests=net_link net_expect_link=down",
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    assert!(passed(&t, "net_link"), "{what}:\n{t}");
    assert!(
        t.contains("# net: rtl8139 "),
        "{what}: not over the RTL8139:\n{t}"
    );
    assert!(
        t.contains("# net: link Down (expected Down)"),
        "{what}:\n{t}"
    );
    assert!(
        t.contains("# net: send with the link down: refused"),
        "{what}:\n{t}"
    );
}

/// The smallest and the largest RX ring (`rtl8139_rx_kib=`): with 8 KiB frames run past the
/// end into the slack (RCR.WRAP); the 64 KiB ring ignores WRAP and wraps them to its start,
/// so the driver puts them back together. UDP echo and the TCP stream check every byte.
fn ring_sizes_pass(sub: &str) {
    for kib in [8, 64] {
        let what = format!("{sub} --net rtl8139 rtl8139_rx_kib={kib}");
        let tests = ["net_udp_echo", "net_tcp_rx", "net_rx_flood"];
        let cmdline = format!("tests={} rtl8139_rx_kib={kib}", tests.join(","));
        let o = boot(sub, "rtl8139", "300", &cmdline);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{what}: {t}");
        for name in tests {
            assert!(passed(&t, name), "{what}: {name} not run or skipped:\n{t}");
        }
        assert!(
            t.contains(&format!("rx ring {kib} KiB")),
            "{what}: not that ring:\n{t}"
        );
        device_was_sane(&what, &t);
        assert!(
            t.lines()
                .filter(|l| l.starts_with("# net: rtl8139: "))
                .any(|l| !l.contains(", 0 past the end;")),
            "{what}: no frame crossed the end of the ring:\n{t}"
        );
    }
}

#[test]
fn rtl8139_peer_tests_under_qemu() {
    if have_qemu("rtl8139_peer_tests_under_qemu") {
        peer_tests_pass("qemu");
    }
}

#[test]
fn rtl8139_rx_flood_under_qemu() {
    if have_qemu("rtl8139_rx_flood_under_qemu") {
        rx_flood_goes_on("qemu");
    }
}

#[test]
fn rtl8139_link_down_under_qemu() {
    if have_qemu("rtl8139_link_down_under_qemu") {
        link_down_is_seen("qemu");
    }
}

#[test]
fn rtl8139_peer_tests_under_the_harness() {
    if have_kvm("rtl8139_peer_tests_under_the_harness") {
        peer_tests_pass("run");
    }
}

#[test]
fn rtl8139_rx_flood_under_the_harness() {
    if have_kvm("rtl8139_rx_flood_under_the_harness") {
        rx_flood_goes_on("run");
    }
}

#[test]
fn rtl8139_link_down_under_the_harness() {
    if have_kvm("rtl8139_link_down_under_the_harness") {
        link_down_is_seen("run");
    }
}

#[test]
fn rtl8139_ring_sizes_under_qemu() {
    if have_qemu("rtl8139_ring_sizes_under_qemu") {
        ring_sizes_pass("qemu");
    }
}

#[test]
fn rtl8139_ring_sizes_under_the_harness() {
    if have_kvm("rtl8139_ring_sizes_under_the_harness") {
        ring_sizes_pass("run");
    }
}
