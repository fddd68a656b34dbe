//! Storage integrity end to end: the host writes seeded images, the guest reads every sector
//! through each driver path (virtio-blk; IDE PIO and DMA) and writes a region, and the host then
//! checks the files. Under our harness and under QEMU. Plus durability across `kill -9`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KERNEL: &str = env!("KERNEL_IMAGE");
const SECTOR: usize = 512;
/// An odd capacity: the last 128 KiB request is partial.
const SECTORS: u64 = 4096 + 7;
const WRITE_REGION: u64 = 64;

/// The kernel's seeded pattern (kernel/src/pattern.rs), written again here on purpose: the two
/// sides share no code.
fn fill(seed: u64, lba: u64, buf: &mut [u8]) {
    for (i, sector) in buf.chunks_exact_mut(SECTOR).enumerate() {
        let mut state = seed ^ (lba + i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for word in sector.chunks_exact_mut(8) {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("storage-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn make_image(path: &Path, seed: u64) {
    let mut data = vec![0u8; SECTORS as usize * SECTOR];
    fill(seed, 0, &mut data);
    std::fs::write(path, data).unwrap();
}

/// Check the image: `written` sectors hold the write pattern, every other the original.
fn verify_image(
    path: &Path,
    seed: u64,
    wseed: u64,
    written: std::ops::Range<u64>,
) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if data.len() != SECTORS as usize * SECTOR {
        return Err(format!("{} changed size to {}", path.display(), data.len()));
    }
    let mut expect = [0u8; SECTOR];
    for (lba, sector) in data.chunks_exact(SECTOR).enumerate() {
        let lba = lba as u64;
        let s = if written.contains(&lba) { wseed } else { seed };
        fill(s, lba, &mut expect);
        if sector != expect {
            let what = if written.contains(&lba) {
                "the guest's write"
            } else {
                "the original"
            };
            return Err(format!(
                "{}: sector {lba} does not hold {what}",
                path.display()
            ));
        }
    }
    Ok(())
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn qemu_installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

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
            t.lines()
                .any(|l| l.starts_with("ok ") && l.ends_with(&format!(" {name}"))),
            "{sub}: {name} did not pass (or was skipped):\n{t}"
        );
    }
    let start = SECTORS / 2;
    verify_image(&virtio, seed, wseed, start..start + WRITE_REGION).unwrap();
    verify_image(&ide, seed, wseed, start..start + WRITE_REGION).unwrap();
}

#[test]
fn integrity_under_qemu() {
    if !qemu_installed() {
        eprintln!("note: qemu-system-x86_64 is not installed; skipped");
        return;
    }
    integrity_on("qemu", &[]);
}

#[test]
fn integrity_under_the_harness() {
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    integrity_on("run", &["--io-mode", "thread"]);
}

#[test]
fn integrity_under_the_harness_inline_io() {
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    integrity_on("run", &["--io-mode", "inline"]);
}

/// A read-only virtio disk: reads pass, every write is refused, the file is untouched.
fn read_only_on(sub: &str) {
    let dir = TempDir::new(&format!("ro-{sub}"));
    let img = dir.0.join("ro.img");
    let seed = 0x0123u64;
    make_image(&img, seed);
    let o = harness()
        .args([sub, "--kernel", KERNEL, "--timeout", "300"])
        .arg("--cmdline")
        .arg(format!(
            "tests=virtio_blk_integrity,virtio_blk_read_only disk_seed={seed}"
        ))
        .arg("--disk")
        .arg(format!("virtio:{},ro", img.display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    assert!(
        t.lines()
            .any(|l| l.trim_end() == "ok 2 virtio_blk_read_only"),
        "{sub}: not run or skipped:\n{t}"
    );
    verify_image(&img, seed, seed, 0..0).unwrap();
}

#[test]
fn read_only_disk_under_the_harness() {
    if kvm_usable() {
        read_only_on("run");
    }
}

#[test]
fn read_only_disk_under_qemu() {
    if qemu_installed() {
        read_only_on("qemu");
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
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    let dir = TempDir::new("durable");
    let img = dir.0.join("d.img");
    let (seed, wseed) = (11u64, 12u64);
    make_image(&img, seed);
    let mut child = harness()
        .args(["run", "--kernel", KERNEL, "--timeout", "120"])
        .arg("--cmdline")
        .arg(format!(
            "tests=virtio_blk_durability disk_seed={seed} write_seed={wseed}"
        ))
        .arg("--disk")
        .arg(format!("virtio:{}", img.display()))
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
            "no flush ack: {seen:?}"
        );
    }
    let status = child.wait().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("flush acknowledged")),
        "guest never acknowledged the flush: {seen:?}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the VMM was not killed: {status:?}"
    );
    let s = SECTORS / 2;
    verify_image(&img, seed, wseed, s..s + WRITE_REGION).unwrap();
}

/// Bad disk arguments get one clear line and the usage exit code, under both subcommands.
#[test]
fn bad_disk_arguments() {
    let dir = TempDir::new("bad");
    let odd = dir.0.join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let missing = dir.0.join("missing.img");
    for disk in [
        format!("virtio:{}", missing.display()),
        format!("ide:{}", missing.display()),
        format!("virtio:{}", odd.display()),
        "floppy:/x".to_string(),
        "virtio:/x,rx".to_string(),
    ] {
        let o = harness()
            .args(["run", "--kernel", KERNEL, "--disk", &disk])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(64), "--disk {disk}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "--disk {disk}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
