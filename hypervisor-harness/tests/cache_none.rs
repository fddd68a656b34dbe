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
    let dir = TempDir::new(&format!("cache-none-{tag}"));
    let img = dir.0.join("direct.img");
    let (seed, wseed) = (0x5eed_00c0u64, 0x0077_00c1u64);
    make_image(&img, seed);
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300", "--verbose"])
        .arg("--cmdline")
        .arg(format!(
            "tests={} disk_seed={seed} write_seed={wseed}",
            TESTS.join(",")
        ))
        .arg("--disk")
        .arg(format!("virtio:{},cache=none", img.display()))
        .args(extra_args)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub} {tag}: {t}");
    for name in TESTS {
        assert!(passed(&t, name), "{sub} {tag}: {name} did not pass:\n{t}");
    }
    let start = SECTORS / 2;
    verify_image(&img, seed, wseed, start..start + WRITE_REGION).unwrap();
    t
}

#[test]
fn cache_none_under_the_harness_io_thread() {
    if !have_kvm("cache_none_under_the_harness_io_thread") {
        return;
    }
    let t = cache_none_on("run", "thread", &["--io-mode", "thread", "--seccomp", "on"]);
    assert!(t.contains("cache=none (O_DIRECT, io_uring)"), "{t}");
    assert!(!t.contains("seccomp:"), "{t}");
}

#[test]
fn cache_none_under_the_harness_inline_io() {
    if !have_kvm("cache_none_under_the_harness_inline_io") {
        return;
    }
    let t = cache_none_on("run", "inline", &["--io-mode", "inline", "--seccomp", "on"]);
    assert!(t.contains("cache=none (O_DIRECT, io_uring)"), "{t}");
}

#[test]
fn cache_none_under_qemu() {
    if !have_qemu("cache_none_under_qemu") {
        return;
    }
    cache_none_on("qemu", "qemu", &[]);
}
