//! `--disk virtio:PATH,cache=none`: the image `O_DIRECT` through io_uring. The guest's
//! virtio-blk integrity tests pass on it under our harness (I/O thread and inline, under the
//! default `--seccomp on`, so a system call the allow-lists lack would end the run with exit
//! 148) and under QEMU (`cache=none,aio=io_uring`), and the host finds what the guest wrote.
//! The temp dir is the work disk's file system (ext4 here), where `O_DIRECT` works.

mod common;
use common::*;

const TESTS: &[&str] = &[
    "virtio_blk_integrity",
    "virtio_blk_interrupt_modes",
    "virtio_blk_qd32",
    "virtio_blk_hostile_chains",
];

fn cache_none_on(sub: &str, tag: &str, extra_args: &[&str]) -> String {
    cache_none_running(TESTS, sub, tag, extra_args)
}

/// [`cache_none_on`] with the kernel tests `tests`.
fn cache_none_running(tests: &[&str], sub: &str, tag: &str, extra_args: &[&str]) -> String {
    let dir = TempDir::new(&format!("cache-none-{tag}"));
    let img = dir.0.join("direct.img");
    let (seed, wseed) = (0x5eed_00c0u64, 0x0077_00c1u64);
    make_image(&img, seed);
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300", "--verbose"])
        .arg("--cmdline")
        .arg(format!(
            "tests={} disk_seed={seed} write_seed={wseed}",
            tests.join(",")
        ))
        .arg("--disk")
        .arg(format!("virtio:{},cache=none", img.display()))
        .args(extra_args)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub} {tag}: {t}");
    for name in tests {
        assert!(passed(&t, name), "{sub} {tag}: {name} did not pass:\n{t}");
    }
    let start = SECTORS / 2;
    verify_image(&img, seed, wseed, start..start + WRITE_REGION).unwrap();
    t
}

/// The disk's counters from `--verbose`'s end-of-run line (`harness: disk-counters: {...}`):
/// cache=none's `uring` object.
fn uring_counters(t: &str) -> serde_json::Value {
    let line = t
        .lines()
        .find_map(|l| l.strip_prefix("harness: disk-counters: "))
        .unwrap_or_else(|| panic!("no disk-counters line:\n{t}"));
    let disk: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(disk["disk"], "virtio-blk0", "{line}");
    assert!(disk["requests"].as_u64().unwrap() > 0, "{line}");
    disk["uring"].clone()
}

/// The guest's reads and writes really went through the ring, QD32 with many at once.
fn assert_through_the_ring(t: &str) {
    let u = uring_counters(t);
    assert!(u["ring_submitted"].as_u64().unwrap() > 0, "{u}");
    assert!(u["completed"].as_u64().unwrap() > 0, "{u}");
    assert!(u["max_in_flight"].as_u64().unwrap() > 1, "QD32: {u}");
    assert_eq!(u["abandoned"], 0, "{u}");
}

#[test]
fn cache_none_under_the_harness_io_thread() {
    if !have_kvm("cache_none_under_the_harness_io_thread") {
        return;
    }
    let t = cache_none_on("run", "thread", &["--io-mode", "thread", "--seccomp", "on"]);
    assert!(t.contains("cache=none (O_DIRECT, io_uring)"), "{t}");
    assert!(!t.contains("seccomp:"), "{t}");
    assert_through_the_ring(&t);
}

/// The integrity and QD32 tests alone (page-aligned buffers, whole 4 KiB blocks): every
/// request the ring takes goes to the `O_DIRECT` file, none falls back to the buffered one.
#[test]
fn cache_none_integrity_needs_no_buffered_fallback() {
    if !have_kvm("cache_none_integrity_needs_no_buffered_fallback") {
        return;
    }
    let tests = ["virtio_blk_integrity", "virtio_blk_qd32"];
    let t = cache_none_running(&tests, "run", "aligned", &["--io-mode", "thread"]);
    assert_through_the_ring(&t);
    assert_eq!(uring_counters(&t)["buffered_fallbacks"], 0, "{t}");
}

#[test]
fn cache_none_under_the_harness_inline_io() {
    if !have_kvm("cache_none_under_the_harness_inline_io") {
        return;
    }
    let t = cache_none_on("run", "inline", &["--io-mode", "inline", "--seccomp", "on"]);
    assert!(t.contains("cache=none (O_DIRECT, io_uring)"), "{t}");
    assert_through_the_ring(&t);
}

#[test]
fn cache_none_under_qemu() {
    if !have_qemu("cache_none_under_qemu") {
        return;
    }
    cache_none_on("qemu", "qemu", &[]);
}
