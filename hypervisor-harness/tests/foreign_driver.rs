//! A guest driver stack nobody here wrote against our device model: the kernel test
//! `foreign_virtio_blk` runs the `virtio-drivers` crate's PCI enumeration, transport and block
//! driver (in ring 3) on a seeded virtio disk. Under our harness, and under QEMU as a check
//! that the test itself is right. The host then checks the image: the guest's flushed write
//! is there, and a read-only image is untouched.

mod common;
use common::*;

// The crate's `VirtIOBlk::new` writes ACKNOWLEDGE | DRIVER to device_status in one write; our
// model once refused that (one new bit per write) and the device never started. These runs
// keep it from coming back.

fn boot(sub: &str, cmdline: &str, disk: &str) -> (Option<i32>, String) {
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "120"])
        .arg("--cmdline")
        .arg(cmdline)
        .arg("--disk")
        .arg(disk)
        .output()
        .unwrap();
    (o.status.code(), text(&o))
}

/// A writable disk: every sector reads as the image pattern, the guest writes the region the
/// host checks, flushes and reads it back; the file then holds exactly that write.
fn writable_on(sub: &str) {
    let dir = TempDir::new(&format!("foreign-rw-{sub}"));
    let img = dir.0.join("rw.img");
    let (seed, wseed) = (0xf0e1_0001u64, 0xf0e1_0002u64);
    make_image(&img, seed);
    let (code, t) = boot(
        sub,
        &format!("tests=foreign_virtio_blk disk_seed={seed} write_seed={wseed}"),
        &format!("virtio:{}", img.display()),
    );
    assert_eq!(code, Some(0), "{sub}: {t}");
    assert!(
        passed(&t, "foreign_virtio_blk"),
        "{sub}: not run or skipped:\n{t}"
    );
    assert!(
        t.contains("# foreign virtio-blk: wrote, flushed and read back"),
        "{sub}: the guest did not write:\n{t}"
    );
    let start = SECTORS / 2;
    verify_image(&img, seed, wseed, start..start + WRITE_REGION).unwrap();
}

/// A read-only disk: the crate does not check VIRTIO_BLK_F_RO, so its write reaches the device,
/// which must answer with an error; the file is untouched.
fn read_only_on(sub: &str) {
    let dir = TempDir::new(&format!("foreign-ro-{sub}"));
    let img = dir.0.join("ro.img");
    let seed = 0xf0e1_0003u64;
    make_image(&img, seed);
    let (code, t) = boot(
        sub,
        &format!("tests=foreign_virtio_blk disk_seed={seed}"),
        &format!("virtio:{},ro", img.display()),
    );
    assert_eq!(code, Some(0), "{sub}: {t}");
    assert!(
        passed(&t, "foreign_virtio_blk"),
        "{sub}: not run or skipped:\n{t}"
    );
    assert!(
        t.contains("# foreign virtio-blk: write refused on a read-only disk"),
        "{sub}: no refused write:\n{t}"
    );
    verify_image(&img, seed, seed, 0..0).unwrap();
}

/// The guest test must notice data that is not the image's: told the wrong seed, it fails.
fn wrong_seed_fails_on(sub: &str) {
    let dir = TempDir::new(&format!("foreign-bad-{sub}"));
    let img = dir.0.join("bad.img");
    make_image(&img, 1);
    let (code, t) = boot(
        sub,
        "tests=foreign_virtio_blk disk_seed=2",
        &format!("virtio:{}", img.display()),
    );
    assert_eq!(code, Some(1), "{sub}: {t}");
    assert!(
        t.contains("not ok 1 foreign_virtio_blk"),
        "{sub}: the test did not fail:\n{t}"
    );
    assert!(
        t.contains("sector 0 does not hold the image pattern"),
        "{sub}: not the pattern check that failed:\n{t}"
    );
}

#[test]
fn foreign_driver_writable_disk_under_the_harness() {
    if have_kvm("foreign_driver_writable_disk_under_the_harness") {
        writable_on("run");
    }
}

#[test]
fn foreign_driver_read_only_disk_under_the_harness() {
    if have_kvm("foreign_driver_read_only_disk_under_the_harness") {
        read_only_on("run");
    }
}

#[test]
fn foreign_driver_wrong_seed_fails_under_the_harness() {
    if have_kvm("foreign_driver_wrong_seed_fails_under_the_harness") {
        wrong_seed_fails_on("run");
    }
}

#[test]
fn foreign_driver_writable_disk_under_qemu() {
    if have_qemu("foreign_driver_writable_disk_under_qemu") {
        writable_on("qemu");
    }
}

#[test]
fn foreign_driver_read_only_disk_under_qemu() {
    if have_qemu("foreign_driver_read_only_disk_under_qemu") {
        read_only_on("qemu");
    }
}

#[test]
fn foreign_driver_wrong_seed_fails_under_qemu() {
    if have_qemu("foreign_driver_wrong_seed_fails_under_qemu") {
        wrong_seed_fails_on("qemu");
    }
}
