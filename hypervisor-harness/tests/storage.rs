//! Storage integrity end to end: the host writes seeded images, the guest reads every sector
//! through each driver path (virtio-blk; IDE PIO and DMA) and writes a region, and the host then
//! checks the files. Under our harness and under QEMU. Plus durability across `kill -9`.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Boot `tests=all` with a virtio disk and an IDE disk; check every storage test really ran and
/// passed, and what the guest left in the files.
fn integrity_on(sub: &str, extra_args: &[&str]) {
    let dir = TempDir::new(sub);
    let (virtio, ide) = (dir.0.join("virtio.img"), dir.0.join("ide.img"));
    let (seed, wseed) = (0x5eed_0001u64, 0x0077_0002u64);
    make_image(&virtio, seed);
    make_image(&ide, seed);
    let strict = if sub == "run" { " strict_dma=1" } else { "" };
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!(
            "tests=all disk_seed={seed} write_seed={wseed}{strict}"
        ))
        .arg("--disk")
        .arg(format!("virtio:{}", virtio.display()))
        .arg("--disk")
        .arg(format!("ide:{}", ide.display()))
        .args(extra_args)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    for name in [
        "virtio_blk_integrity",
        "virtio_blk_interrupt_modes",
        "virtio_blk_qd32",
        "virtio_blk_hostile_chains",
        "ide_pio_integrity",
        "ide_dma_integrity",
        "ide_interrupts",
    ] {
        assert!(
            passed(&t, name),
            "{sub}: {name} did not pass (or was skipped):\n{t}"
        );
    }
    let start = SECTORS / 2;
    verify_image(&virtio, seed, wseed, start..start + WRITE_REGION).unwrap();
    verify_image(&ide, seed, wseed, start..start + WRITE_REGION).unwrap();
}

#[test]
fn integrity_under_qemu() {
    if !have_qemu("integrity_under_qemu") {
        return;
    }
    integrity_on("qemu", &[]);
}

#[test]
fn integrity_under_the_harness() {
    if !have_kvm("integrity_under_the_harness") {
        return;
    }
    integrity_on("run", &["--io-mode", "thread"]);
}

#[test]
fn integrity_under_the_harness_inline_io() {
    if !have_kvm("integrity_under_the_harness_inline_io") {
        return;
    }
    integrity_on("run", &["--io-mode", "inline"]);
}

/// A read-only virtio disk: reads pass, every write is refused, the file is untouched.
fn read_only_on(sub: &str) {
    let seed = 0x0123u64;
    let tests = format!("virtio_blk_integrity,virtio_blk_read_only disk_seed={seed}");
    passes_on_a_read_only_disk(sub, "ro", seed, &tests, "virtio_blk_read_only");
}

/// Run `tests` (a `tests=` value) under `sub` on a read-only virtio disk patterned from
/// `seed`: the run passes, `must_pass` among them, and the image is unchanged.
fn passes_on_a_read_only_disk(sub: &str, tag: &str, seed: u64, tests: &str, must_pass: &str) {
    let dir = TempDir::new(&format!("{tag}-{sub}"));
    let img = dir.0.join("ro.img");
    make_image(&img, seed);
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!("tests={tests}"))
        .arg("--disk")
        .arg(format!("virtio:{},ro", img.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    assert!(passed(&t, must_pass), "{sub}: not run or skipped:\n{t}");
    verify_image(&img, seed, seed, 0..0).unwrap();
}

#[test]
fn read_only_disk_under_the_harness() {
    if have_kvm("read_only_disk_under_the_harness") {
        read_only_on("run");
    }
}

#[test]
fn read_only_disk_under_qemu() {
    if have_qemu("read_only_disk_under_qemu") {
        read_only_on("qemu");
    }
}

/// Boot the virtio tests with one virtio disk per entry of `options` (each `""` or `",msix=off"`
/// and the like); every test must pass, and the guest's log must show each disk found and the
/// interrupt mode it chose. Returns the output.
fn virtio_disks_on(sub: &str, tag: &str, options: &[&str]) -> String {
    let dir = TempDir::new(&format!("{tag}-{sub}"));
    let seed = 0x5eed_0003u64;
    let mut cmd = harness();
    cmd.args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!(
            "tests=virtio_blk_every_disk,virtio_blk_integrity,virtio_blk_interrupt_modes,\
             virtio_blk_qd32 disk_seed={seed}"
        ));
    for (i, opt) in options.iter().enumerate() {
        let img = dir.0.join(format!("v{i}.img"));
        make_image(&img, seed);
        cmd.arg("--disk")
            .arg(format!("virtio:{}{opt}", img.display()));
    }
    let o = cmd.output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    for name in [
        "virtio_blk_every_disk",
        "virtio_blk_integrity",
        "virtio_blk_interrupt_modes",
        "virtio_blk_qd32",
    ] {
        assert!(passed(&t, name), "{sub}: {name} not run or skipped:\n{t}");
    }
    let n = options.len();
    assert!(
        t.contains(&format!("# virtio-blk: {n} disks")),
        "{sub}: the guest did not find {n} virtio disks:\n{t}"
    );
    t
}

/// Two virtio disks side by side, both found and both served, under each VMM. Under QEMU they
/// are stock transitional devices (1af4:1001).
#[test]
fn two_virtio_disks_under_the_harness() {
    if have_kvm("two_virtio_disks_under_the_harness") {
        let t = virtio_disks_on("run", "two", &["", ""]);
        assert_eq!(t.matches("interrupts: msix (2 vectors)").count(), 2, "{t}");
    }
}

#[test]
fn two_virtio_disks_under_qemu() {
    if have_qemu("two_virtio_disks_under_qemu") {
        let t = virtio_disks_on("qemu", "two", &["", ""]);
        assert_eq!(
            t.matches(": 1af4:1001, ").count(),
            2,
            "transitional IDs: {t}"
        );
        assert_eq!(t.matches("interrupts: msix (2 vectors)").count(), 2, "{t}");
    }
}

/// A virtio disk without MSI-X: the driver falls back to INTx, says so, and every test passes,
/// under each VMM (QEMU: `vectors=0`).
fn without_msix_on(sub: &str) {
    let t = virtio_disks_on(sub, "nomsix", &[",msix=off"]);
    assert!(
        t.contains("interrupts: intx (line "),
        "{sub}: no INTx fallback:\n{t}"
    );
    assert!(t.contains("msix not offered by the device"), "{t}");
    assert!(
        !t.contains("interrupts: msix"),
        "{sub}: MSI-X used on a device without it:\n{t}"
    );
}

#[test]
fn virtio_disk_without_msix_under_the_harness() {
    if have_kvm("virtio_disk_without_msix_under_the_harness") {
        without_msix_on("run");
    }
}

#[test]
fn virtio_disk_without_msix_under_qemu() {
    if have_qemu("virtio_disk_without_msix_under_qemu") {
        without_msix_on("qemu");
    }
}

/// The verifier itself must notice a wrong sector, or the tests above prove nothing.
#[test]
fn verifier_notices_damage() {
    let dir = TempDir::new("verify");
    let img = dir.0.join("d.img");
    make_image(&img, 1);
    assert!(verify_image(&img, 1, 2, 0..0).is_ok());
    assert!(verify_image(&img, 1, 2, 10..11)
        .unwrap_err()
        .contains("sector 10"));
    let mut data = std::fs::read(&img).unwrap();
    data[SECTOR * 99 + 7] ^= 1;
    std::fs::write(&img, data).unwrap();
    assert!(verify_image(&img, 1, 2, 0..0)
        .unwrap_err()
        .contains("sector 99"));
}

/// After the guest's flush is acknowledged, SIGKILL the VMM: the data is in the file.
#[test]
fn flushed_data_survives_kill_9() {
    if have_kvm("flushed_data_survives_kill_9") {
        flushed_data_survives_kill_9_on("virtio", "virtio_blk_durability");
    }
}

/// The same for an IDE disk: PIO and DMA writes, then FLUSH CACHE acknowledged.
#[test]
fn flushed_ide_data_survives_kill_9() {
    if have_kvm("flushed_ide_data_survives_kill_9") {
        flushed_data_survives_kill_9_on("ide", "ide_durability");
    }
}

/// Boot kernel test `test` on one `kind` disk, SIGKILL the VMM at the guest's "flush
/// acknowledged" line, and check the image holds the written region.
fn flushed_data_survives_kill_9_on(kind: &str, test: &str) {
    let dir = TempDir::new(&format!("durable-{kind}"));
    let img = dir.0.join("d.img");
    let (seed, wseed) = (11u64, 12u64);
    make_image(&img, seed);
    let mut child = harness()
        .args(["run", "--kernel", KERNEL, "--timeout", "120"])
        .arg("--cmdline")
        .arg(format!("tests={test} disk_seed={seed} write_seed={wseed}"))
        .arg("--disk")
        .arg(format!("{kind}:{}", img.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let start = Instant::now();
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("# durability: flush acknowledged") {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{kind}: no flush ack: {seen:?}"
        );
    }
    let status = child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("flush acknowledged")),
        "{kind}: guest never acknowledged the flush: {seen:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "{kind}: the VMM was not killed: {status:?}"
    );
    let s = SECTORS / 2;
    verify_image(&img, seed, wseed, s..s + WRITE_REGION).unwrap();
}

/// Bad disk arguments get one clear line and the usage exit code, before KVM is even opened.
#[test]
fn bad_disk_arguments() {
    let dir = TempDir::new("bad");
    let odd = dir.file("odd.img", 1000);
    let ok = dir.file("ok.img", 4096);
    let missing = dir.0.join("missing.img");
    let five_ide: Vec<String> = (0..5).map(|_| format!("ide:{}", ok.display())).collect();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("virtio:{}", missing.display())], "missing.img"),
        (vec![format!("ide:{}", missing.display())], "missing.img"),
        (vec![format!("virtio:{}", odd.display())], "multiple of 512"),
        (vec!["floppy:/x".into()], "unknown kind"),
        (vec!["virtio:/x,rx".into()], "unknown option"),
        (five_ide, "at most 4 IDE disks"),
    ];
    for (disks, what) in cases {
        let mut cmd = harness();
        cmd.args(["run", "--kernel", KERNEL]);
        for d in &disks {
            cmd.args(["--disk", d]);
        }
        assert_usage_error(&cmd.output().unwrap(), what);
    }
}

/// IDE positions as the guest names them, in `index=` order.
const IDE_POSITIONS: [&str; 4] = [
    "primary master",
    "primary slave",
    "secondary master",
    "secondary slave",
];
const IDE_TESTS: [&str; 3] = ["ide_pio_integrity", "ide_dma_integrity", "ide_interrupts"];

/// One IDE disk at `--disk ide:...,index=N` and nothing at the other three positions: the
/// guest must report the disk at exactly that position and the others empty, every IDE test
/// must pass on that drive (with its channel's IRQ), and the host finds the guest's writes in
/// the file. A drive the guest did not find makes the tests skip, and this fail.
fn ide_alone_at(sub: &str, index: usize) {
    let dir = TempDir::new(&format!("ide{index}-{sub}"));
    let img = dir.0.join("ide.img");
    let (seed, wseed) = (0x1de0_0000 + index as u64, 0x1de0_1000 + index as u64);
    make_image(&img, seed);
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!(
            "tests={} disk_seed={seed} write_seed={wseed}",
            IDE_TESTS.join(",")
        ))
        .arg("--disk")
        .arg(format!("ide:{},index={index}", img.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    for name in IDE_TESTS {
        assert!(
            passed(&t, name),
            "{sub}: {name} did not pass (or was skipped):\n{t}"
        );
    }
    for (i, pos) in IDE_POSITIONS.iter().enumerate() {
        let want = if i == index {
            format!("# ide: {pos}: ATA disk")
        } else {
            format!("# ide: {pos}: empty, skipped")
        };
        assert!(
            t.lines().any(|l| l.starts_with(&want)),
            "{sub}: no {want:?} line:\n{t}"
        );
    }
    let here = format!("# ide: {}: passed", IDE_POSITIONS[index]);
    assert_eq!(
        t.lines().filter(|l| l.trim_end() == here).count(),
        IDE_TESTS.len(),
        "{sub}: not every IDE test ran on the {}:\n{t}",
        IDE_POSITIONS[index]
    );
    let irq = if index < 2 { 14 } else { 15 };
    assert!(
        t.contains(&format!("# ide irq {irq}: ")),
        "{sub}: no completion by IRQ {irq}:\n{t}"
    );
    let start = SECTORS / 2;
    verify_image(&img, seed, wseed, start..start + WRITE_REGION).unwrap();
}

#[test]
fn ide_secondary_channel_under_the_harness() {
    if have_kvm("ide_secondary_channel_under_the_harness") {
        ide_alone_at("run", 2);
    }
}

#[test]
fn ide_secondary_channel_under_qemu() {
    if have_qemu("ide_secondary_channel_under_qemu") {
        ide_alone_at("qemu", 2);
    }
}

/// A slave with no master (`index=1` alone).
#[test]
fn ide_slave_only_under_the_harness() {
    if have_kvm("ide_slave_only_under_the_harness") {
        ide_alone_at("run", 1);
    }
}

#[test]
fn ide_slave_only_under_qemu() {
    if have_qemu("ide_slave_only_under_qemu") {
        ide_alone_at("qemu", 1);
    }
}

/// Bad IDE positions get one clear line and the usage exit code, under both VMMs, before KVM
/// or QEMU is started.
#[test]
fn bad_ide_index_arguments() {
    let dir = TempDir::new("bad-index");
    let ok = dir.file("ok.img", 4096);
    let ide = |opts: &str| format!("ide:{}{opts}", ok.display());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec![ide(",index=4")], "not an IDE position 0..3"),
        (vec![ide(",index=1"), ide(",index=1")], "already taken"),
        (vec![ide(""), ide(",index=0")], "already taken"),
        (
            vec![ide(",index=3"), ide(""), ide(""), ide(""), ide("")],
            "at most 4 IDE disks",
        ),
    ];
    for sub in ["run", "qemu"] {
        for (disks, what) in &cases {
            let mut cmd = harness();
            cmd.args([sub, "--kernel", KERNEL]);
            for d in disks {
                cmd.args(["--disk", d]);
            }
            assert_usage_error(&cmd.output().unwrap(), what);
        }
    }
}

/// The virtio-blk integrity tests (every sector, the ends, the written region, QD32, the
/// interrupt modes, hostile chains) with the guest's `blk_features=` set to `features` (`all`
/// or `none`) on a virtio disk with `disk_options`. The guest's features line says what it
/// negotiated and what the device offered: the device must offer at least `must_offer`, and
/// `all` must use every fast-path feature offered (`mq` with `want_queues` queues, when given),
/// `none` none of them, so a feature that silently went unused fails here. `extra_args` go to
/// the harness. Returns the output.
fn blk_features_on(
    sub: &str,
    features: &str,
    disk_options: &str,
    must_offer: &[&str],
    want_queues: Option<u16>,
    extra_args: &[&str],
) -> String {
    let dir = TempDir::new(&format!("feat-{features}-{sub}"));
    let img = dir.0.join("virtio.img");
    let (seed, wseed) = (0x5eed_0016u64, 0x0077_0016u64);
    make_image(&img, seed);
    let strict = if sub == "run" { " strict_dma=1" } else { "" };
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!(
            "tests=virtio_blk_integrity,virtio_blk_qd32,virtio_blk_interrupt_modes,\
             virtio_blk_hostile_chains disk_seed={seed} write_seed={wseed}{strict} \
             blk_features={features}"
        ))
        .arg("--disk")
        .arg(format!("virtio:{}{disk_options}", img.display()))
        .args(extra_args)
        .output()
        .unwrap();
    let t = text(&o);
    let what = format!("{sub} blk_features={features}{disk_options} {extra_args:?}");
    assert_eq!(o.status.code(), Some(0), "{what}: {t}");
    for name in [
        "virtio_blk_integrity",
        "virtio_blk_qd32",
        "virtio_blk_interrupt_modes",
        "virtio_blk_hostile_chains",
    ] {
        assert!(passed(&t, name), "{what}: {name} not run or skipped:\n{t}");
    }
    let line = t
        .lines()
        .find_map(|l| l.split_once("# virtio-blk features: ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("{what}: no features line:\n{t}"));
    let (negotiated, offered) = line
        .split_once("; offered: ")
        .unwrap_or_else(|| panic!("{what}: malformed features line {line:?}"));
    let negotiated: Vec<&str> = negotiated.split_whitespace().collect();
    let offered: Vec<&str> = offered.split_whitespace().collect();
    for f in must_offer {
        assert!(
            offered.contains(f),
            "{what}: the device does not offer {f}: {line:?}"
        );
    }
    match features {
        "none" => assert_eq!(negotiated, ["none"], "{what}: {line:?}"),
        _ => {
            let used: Vec<&str> = negotiated
                .iter()
                .map(|w| if w.starts_with("mq=") { "mq" } else { w })
                .collect();
            assert_eq!(
                used, offered,
                "{what}: an offered feature went unused: {line:?}"
            );
            if let Some(n) = want_queues {
                assert!(
                    negotiated.contains(&format!("mq={n}").as_str()),
                    "{what}: not {n} queues: {line:?}"
                );
            }
        }
    }
    let start = SECTORS / 2;
    verify_image(&img, seed, wseed, start..start + WRITE_REGION).unwrap();
    t
}

/// Our device offers EVENT_IDX (and, as they land, INDIRECT_DESC and MQ): all on, then off.
#[test]
fn blk_features_all_and_none_under_the_harness() {
    if have_kvm("blk_features_all_and_none_under_the_harness") {
        blk_features_on("run", "all", "", &["event_idx"], None, &[]);
        blk_features_on("run", "none", "", &["event_idx"], None, &[]);
    }
}

/// QEMU's virtio-blk-pci offers EVENT_IDX and INDIRECT_DESC by default: all on, then off.
#[test]
fn blk_features_all_and_none_under_qemu() {
    if have_qemu("blk_features_all_and_none_under_qemu") {
        blk_features_on("qemu", "all", "", &["event_idx", "indirect"], None, &[]);
        blk_features_on("qemu", "none", "", &["event_idx", "indirect"], None, &[]);
    }
}

/// Multiqueue against QEMU's device with two queues: with `all` the guest uses both (its
/// integrity and QD32 tests fail if a queue completed nothing), with `none` one. The `--qemu`
/// wrapper adds `num-queues=2` to each virtio-blk-pci until `--disk ...,queues=N` reaches
/// the qemu subcommand.
#[test]
fn blk_multiqueue_under_qemu() {
    if !have_qemu("blk_multiqueue_under_qemu") {
        return;
    }
    let dir = TempDir::new("mq-wrapper");
    let wrapper = dir.0.join("qemu-num-queues-2");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n\
         for a in \"$@\"; do\n\
         case \"$a\" in virtio-blk-pci*) a=\"$a,num-queues=2\" ;; esac\n\
         set -- \"$@\" \"$a\"; shift\n\
         done\n\
         exec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let qemu = wrapper.to_str().unwrap();
    let must = ["event_idx", "indirect", "mq"];
    blk_features_on("qemu", "all", "", &must, Some(2), &["--qemu", qemu]);
    blk_features_on("qemu", "none", "", &must, None, &["--qemu", qemu]);
}

/// Multiqueue on our device (`--disk virtio:PATH,queues=N`: one I/O thread per queue), with
/// polling at its default and off, and inline; and `queues=2` reaching QEMU as num-queues=2.
#[test]
fn blk_multiqueue_with_queues_option() {
    let must = ["event_idx", "mq"];
    if have_kvm("blk_multiqueue_with_queues_option") {
        blk_features_on("run", "all", ",queues=2", &must, Some(2), &[]);
        blk_features_on("run", "all", ",queues=4,poll-max-ns=0", &must, Some(4), &[]);
        let inline = ["--io-mode", "inline"];
        blk_features_on("run", "all", ",queues=2", &must, Some(2), &inline);
        blk_features_on("run", "none", ",queues=2", &must, None, &[]);
    }
    if have_qemu("blk_multiqueue_with_queues_option") {
        blk_features_on("qemu", "all", ",queues=2", &must, Some(2), &[]);
    }
}

// ---- discard and write-zeroes (kernel test virtio_blk_discard) ----

/// The kernel test's layout, in sectors, written again here (the two sides share no code):
/// write-zeroes at [2048, 4096), with UNMAP at [4096, 6144), a discard at [6144, 8192), two
/// 8-sector discards in one request at 8192 and 8208, all inside [2048, 8448) which the guest
/// first fills with the pattern of `write_seed`.
const DISCARD_IMAGE_SECTORS: u64 = 16 << 11;
const ZEROED: std::ops::Range<u64> = 2048..6144;
const DISCARDED: [std::ops::Range<u64>; 3] = [6144..8192, 8192..8200, 8208..8216];
const DISCARD_REGION: std::ops::Range<u64> = 2048..8448;

/// Boot `virtio_blk_discard` on a 16 MiB patterned image and check the file: the write-zeroes
/// ranges are zeroes, the discarded ones zeroes or the guest's pattern (`holes`: zeroes, and
/// at least their 2 MiB fewer blocks on disk), everything else the guest's pattern inside the
/// region and the original outside. Returns the output.
fn discard_on(sub: &str, holes: bool) -> String {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new(&format!("discard-{sub}"));
    let img = dir.0.join("discard.img");
    let (seed, wseed) = (0x5eed_d15cu64, 0x0077_d15cu64);
    let mut data = vec![0u8; DISCARD_IMAGE_SECTORS as usize * SECTOR];
    fill(seed, 0, &mut data);
    std::fs::write(&img, &data).unwrap();
    let blocks_before = std::fs::metadata(&img).unwrap().blocks();
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!("tests=virtio_blk_discard write_seed={wseed}"))
        .arg("--disk")
        .arg(format!("virtio:{}", img.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    assert!(
        passed(&t, "virtio_blk_discard"),
        "{sub}: not run or skipped:\n{t}"
    );
    let after = std::fs::read(&img).unwrap();
    assert_eq!(after.len(), data.len(), "{sub}: the image changed size");
    let mut written = vec![0u8; SECTOR];
    for (lba, sector) in after.as_chunks::<SECTOR>().0.iter().enumerate() {
        let lba = lba as u64;
        let zero = sector.iter().all(|&b| b == 0);
        fill(wseed, lba, &mut written);
        let ok = if ZEROED.contains(&lba) {
            zero
        } else if DISCARDED.iter().any(|r| r.contains(&lba)) {
            zero || (!holes && *sector == written[..])
        } else if DISCARD_REGION.contains(&lba) {
            *sector == written[..]
        } else {
            let mut original = vec![0u8; SECTOR];
            fill(seed, lba, &mut original);
            *sector == original[..]
        };
        assert!(ok, "{sub}: sector {lba} of the image is wrong");
    }
    let blocks_after = std::fs::metadata(&img).unwrap().blocks();
    if holes {
        // The UNMAP write-zeroes and the big discard: 2 MiB of 512-byte blocks at least.
        assert!(
            blocks_after + 4096 <= blocks_before,
            "{sub}: {blocks_before} blocks before, {blocks_after} after: no holes"
        );
    }
    t
}

/// Our device punches holes: discards and UNMAP write-zeroes free the image's blocks, and its
/// limits are the ones it documents.
#[test]
fn discard_and_write_zeroes_under_the_harness() {
    if !have_kvm("discard_and_write_zeroes_under_the_harness") {
        return;
    }
    let t = discard_on("run", true);
    assert!(
        t.contains(
            "# virtio-blk discard: max_discard_sectors=32768 max_discard_seg=16 \
             discard_sector_alignment=8 max_write_zeroes_sectors=32768 \
             max_write_zeroes_seg=16 write_zeroes_may_unmap=1"
        ),
        "{t}"
    );
}

/// QEMU's virtio-blk-pci offers both by default; its -drive keeps QEMU's default
/// discard=ignore, so a discard succeeds and may leave the data (what the spec allows) and
/// write-zeroes writes zeroes.
#[test]
fn discard_and_write_zeroes_under_qemu() {
    if have_qemu("discard_and_write_zeroes_under_qemu") {
        let t = discard_on("qemu", false);
        let limits = t
            .lines()
            .find(|l| l.starts_with("# virtio-blk discard: max"));
        eprintln!("QEMU's limits: {limits:?}");
    }
}

/// A read-only disk: the driver refuses both, the device answers IOERR, the file is untouched.
fn discard_read_only_on(sub: &str) {
    let seed = 0x0123_d15cu64;
    passes_on_a_read_only_disk(
        sub,
        "discard-ro",
        seed,
        "virtio_blk_discard",
        "virtio_blk_discard",
    );
}

#[test]
fn discard_on_a_read_only_disk_under_the_harness() {
    if have_kvm("discard_on_a_read_only_disk_under_the_harness") {
        discard_read_only_on("run");
    }
}

#[test]
fn discard_on_a_read_only_disk_under_qemu() {
    if have_qemu("discard_on_a_read_only_disk_under_qemu") {
        discard_read_only_on("qemu");
    }
}
