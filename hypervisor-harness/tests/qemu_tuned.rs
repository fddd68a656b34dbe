//! QEMU as the bench's tuned rows run it: `qemu --iothread` (the virtio-blk disk on an
//! `-object iothread`) and `qemu --iothread --cache-none` (its drive also
//! `cache=none,aio=io_uring`). QEMU takes the arguments, and the guest's virtio-blk tests pass
//! on them with the written data on the image afterwards, so the bench's `qemu-iothread` and
//! `qemu-iothread-io_uring` rows measure a working disk.

mod common;

use common::*;

fn tuned_qemu(tag: &str, flags: &[&str]) {
    let dir = TempDir::new(tag);
    let virtio = dir.0.join("virtio.img");
    let (seed, wseed) = (0x5eed_0003u64, 0x0077_0004u64);
    make_image(&virtio, seed);
    let o = harness()
        .args(["qemu", "--kernel", KERNEL, "--timeout", "300", "--verbose"])
        .args(flags)
        .arg("--cmdline")
        .arg(format!(
            "tests=virtio_blk_integrity,virtio_blk_qd32 disk_seed={seed} write_seed={wseed}"
        ))
        .arg("--disk")
        .arg(format!("virtio:{}", virtio.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{flags:?}: {t}");
    for name in ["virtio_blk_integrity", "virtio_blk_qd32"] {
        assert!(passed(&t, name), "{flags:?}: {name} did not pass:\n{t}");
    }
    // --verbose prints QEMU's command line: the options really went to QEMU.
    assert!(
        t.contains("-object iothread,id=iothread0")
            && t.contains("virtio-blk-pci,drive=disk0,iothread=iothread0"),
        "{t}"
    );
    let cache_none = flags.contains(&"--cache-none");
    assert_eq!(t.contains("cache=none,aio=io_uring"), cache_none, "{t}");
    let start = SECTORS / 2;
    verify_image(&virtio, seed, wseed, start..start + WRITE_REGION).unwrap();
}

#[test]
fn virtio_blk_under_qemu_with_an_iothread() {
    if !have_qemu("virtio_blk_under_qemu_with_an_iothread") {
        return;
    }
    tuned_qemu("qemu-iothread", &["--iothread"]);
}

#[test]
fn virtio_blk_under_qemu_with_an_iothread_and_io_uring() {
    if !have_qemu("virtio_blk_under_qemu_with_an_iothread_and_io_uring") {
        return;
    }
    tuned_qemu("qemu-iothread-io_uring", &["--iothread", "--cache-none"]);
}
