//! The network section's path end to end, short: the guest's `bench=net` (quick) under the
//! harness on two queue pairs, read back by the bench's own parsing. Structure and exact
//! counts only, never timings.

mod common;
use common::*;
use hypervisor_harness::bench::net::{device_note, rows_of, NetConfig};
use hypervisor_harness::shared::RunJson;

#[test]
fn bench_net_rows_come_back_with_exits_per_packet() {
    if !have_kvm("bench_net_rows_come_back_with_exits_per_packet") {
        return;
    }
    let dir = TempDir::new("bench-net");
    let json = dir.0.join("exits.json");
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--timeout", "120"])
        .args(["--net", "virtio:peer,queues=2", "--io-mode", "inline"])
        .args([
            "--cmdline",
            "bench=net net_pairs=2 net_quick=1 net_workloads=tx_64,rx_64,rtt_udp",
        ])
        .arg("--exits-json")
        .arg(&json)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let doc: RunJson = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cfg = NetConfig {
        vmm: "harness-inline",
        sub: "run",
        nic: "virtio",
        backend: "peer",
        queues: 2,
        args: vec![],
        wrapper: vec![],
    };
    let rows = rows_of(&cfg, &String::from_utf8_lossy(&o.stdout), &doc.phases);
    let names: Vec<&str> = rows.iter().map(|r| r.workload.as_str()).collect();
    assert_eq!(names, ["tx_64", "rx_64", "rtt_udp"], "{t}");
    for r in &rows {
        assert!(r.n > 0 && r.frames >= r.n, "{r:?}");
        // Every row was bracketed by phase marks with the NIC's exits in them.
        assert!(r.user_exits_per_packet.is_some(), "{r:?}");
        assert!(r.kvm_exits_per_packet.is_some(), "{r:?}");
        assert!(r.irqs.is_some(), "{r:?}");
    }
    let (tx, rx, rtt) = (&rows[0], &rows[1], &rows[2]);
    // The guest's minimum counts, and 60-byte frames (64 on the wire with the FCS).
    assert!(tx.n >= 512, "{tx:?}");
    assert_eq!(tx.bytes, tx.n * 60);
    assert_eq!(
        tx.frames, tx.n,
        "nothing but the row's frames moved: {tx:?}"
    );
    // Bursts of 256 datagrams per flow, one flow per pair; what did not come is a drop.
    let requested = rx.requested.unwrap();
    assert!(requested >= 512 && requested % 512 == 0, "{rx:?}");
    assert_eq!(rx.n + rx.drops().unwrap(), requested);
    assert_eq!(rx.bytes, rx.n * 60);
    assert!(rtt.n >= 64 && rtt.frames >= 2 * rtt.n, "{rtt:?}");
    assert!(rtt.p50_ns.unwrap() <= rtt.p99_ns.unwrap(), "{rtt:?}");
    // Both pairs carried traffic each way (the flows hash to different pairs).
    let note = device_note(&doc.notes).expect("the NIC's counters note");
    assert!(note.starts_with("device: 2 of 2 pairs active"), "{note}");
    for q in ["rx0", "rx1", "tx0", "tx1"] {
        assert!(
            !note.contains(&format!("{q} 0,")) && !note.ends_with(&format!("{q} 0")),
            "{q} carried nothing: {note}"
        );
    }
}
