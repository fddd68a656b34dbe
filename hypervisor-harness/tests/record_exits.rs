//! Not a check: records the exit streams the fuzz seed corpus is converted from (ignored;
//! `hypervisor-harness/fuzz/record-corpus.sh` runs it, then the conversion). Each recording is
//! one `run --record-exits` of named kernel tests with a virtio disk and an IDE disk, written
//! to `$RECORDINGS` (default `target/exit-recordings/`).

mod common;
use common::*;
use std::path::PathBuf;

/// (recording name, the kernel tests it runs).
const RECORDINGS: [(&str, &str); 3] = [
    ("boot-pci", "boot_info,pci"),
    (
        "virtio-blk",
        "virtio_blk_integrity,virtio_blk_interrupt_modes",
    ),
    ("ide", "ide_pio_integrity,ide_dma_integrity,ide_interrupts"),
];

#[test]
#[ignore]
fn record_the_kernel_tests_exits() {
    if !have_kvm("record_the_kernel_tests_exits") {
        return;
    }
    let out = std::env::var_os("RECORDINGS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/exit-recordings"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&out).unwrap();
    let dir = TempDir::new("record-exits");
    let (virtio, ide) = (dir.0.join("virtio.img"), dir.0.join("ide.img"));
    let (seed, wseed) = (0x5eed_0001u64, 0x0077_0002u64);
    for (name, tests) in RECORDINGS {
        make_image(&virtio, seed);
        make_image(&ide, seed);
        let file = out.join(format!("{name}.exits"));
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--timeout", "120"])
            .arg("--cmdline")
            .arg(format!("tests={tests} disk_seed={seed} write_seed={wseed}"))
            .arg("--disk")
            .arg(format!("virtio:{}", virtio.display()))
            .arg("--disk")
            .arg(format!("ide:{}", ide.display()))
            .arg("--record-exits")
            .arg(&file)
            .output()
            .unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{name}: {t}");
        assert!(t.contains("recorded "), "{name}: {t}");
        eprintln!("{name}: {}", file.display());
    }
}
