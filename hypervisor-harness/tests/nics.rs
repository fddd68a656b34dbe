//! The three NIC models in one VM at once (RTL8139, e1000 and virtio-net), each on a network
//! of its own (an in-process peer each under our harness, a `peer --listen` child each under
//! QEMU), in more than one PCI slot order. The guest's `net_model=each` runs every network
//! test on every NIC in bus order and passes a test only when it passed on all of them.

mod common;
use common::*;
use std::process::Output;

/// The peer tests, run on each NIC in turn.
const TESTS: [&str; 6] = [
    "net_link",
    "net_ping",
    "net_udp_echo",
    "net_tcp_echo",
    "net_tcp_tx",
    "net_tcp_rx",
];

/// `sub` (`run` or `qemu`) with one `--net` per entry of `nets`, in that order, running the
/// tests on each NIC.
fn every_nic(sub: &str, nets: &[&str], tests: &[&str]) -> Output {
    let mut c = harness();
    c.args([sub, "--kernel", KERNEL, "--timeout", "300"]);
    for n in nets {
        c.args(["--net", n]);
    }
    c.arg("--cmdline")
        .arg(format!("tests={} net_model=each", tests.join(",")));
    c.output().unwrap()
}

/// The NIC kinds the guest ran each test on, in the order it ran them (bus order), per test.
fn runs_per_test(t: &str) -> Vec<Vec<String>> {
    let mut all = vec![Vec::new()];
    for l in t.lines().map(str::trim) {
        if let Some(on) = l.strip_prefix("# net: on ") {
            let kind = on.split_whitespace().next().unwrap_or("");
            all.last_mut().unwrap().push(kind.to_string());
        } else if l.starts_with("ok ") || l.starts_with("not ok ") {
            all.push(Vec::new());
        }
    }
    all.pop();
    all
}

/// Every test passed on every NIC, and the NICs sit on the bus in `--net` order.
fn check_every_nic(sub: &str, nets: &[&str]) {
    let o = every_nic(sub, nets, &TESTS);
    let t = text(&o);
    let what = format!("{sub} --net {}", nets.join(" --net "));
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    for name in TESTS {
        assert!(passed(&t, name), "{what}: {name} not run or skipped:\n{t}");
    }
    let models: Vec<String> = nets
        .iter()
        .map(|n| n.split([':', ',']).next().unwrap().to_string())
        .collect();
    let runs = runs_per_test(&t);
    assert_eq!(runs.len(), TESTS.len(), "{what}: {t}");
    for (name, kinds) in TESTS.iter().zip(&runs) {
        assert_eq!(
            kinds, &models,
            "{what}: {name} ran on these NICs, in this order:\n{t}"
        );
    }
    let done = format!("# net: ran on {} NIC(s), 0 failed", nets.len());
    assert_eq!(t.matches(&done).count(), TESTS.len(), "{what}: {t}");
}

const ORDERS: [[&str; 3]; 2] = [
    ["rtl8139", "e1000", "virtio"],
    ["virtio", "rtl8139", "e1000"],
];

#[test]
fn three_nics_in_one_vm_under_the_harness() {
    if have_kvm("three_nics_in_one_vm_under_the_harness") {
        for order in ORDERS {
            check_every_nic("run", &order);
        }
    }
}

#[test]
fn three_nics_in_one_vm_under_qemu() {
    if have_qemu("three_nics_in_one_vm_under_qemu") {
        for order in ORDERS {
            check_every_nic("qemu", &order);
        }
    }
}

/// One NIC failing fails the test, named, while the others still run: the e1000's link is
/// down and the link test expects it up.
#[test]
fn one_failing_nic_fails_the_test() {
    if !have_kvm("one_failing_nic_fails_the_test") {
        return;
    }
    let o = every_nic("run", &["virtio", "e1000,link=down"], &["net_link"]);
    let t = text(&o);
    assert_ne!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("not ok 1 net_link"), "{t}");
    assert!(t.contains("e1000 0: link is Down, expected Up"), "{t}");
    assert!(t.contains("# net: ran on 2 NIC(s), 1 failed"), "{t}");
}
