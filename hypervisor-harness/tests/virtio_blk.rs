//! virtio-blk under our harness: the PCI function the guest enumerates, and the usage errors
//! for bad images. (The guest-driven I/O tests are in storage.rs.)

use std::path::PathBuf;
use std::process::{Command, Output};

const KERNEL: &str = env!("KERNEL_IMAGE");

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("vblk-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
        .args(["run", "--kernel", KERNEL, "--timeout", "60"])
        .args(args)
        .output()
        .expect("spawn the harness")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn lspci_shows_the_virtio_blk_function() {
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    let dir = TempDir::new("lspci");
    let img = dir.0.join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    for mode in ["thread", "inline"] {
        let o = run(&[
            "--cmdline",
            "tests=pci",
            "--disk",
            &format!("virtio:{}", img.display()),
            "--io-mode",
            mode,
        ]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{mode}: {t}");
        let line = t
            .lines()
            .find(|l| l.starts_with("# lspci") && l.contains("1af4:1042"))
            .unwrap_or_else(|| panic!("{mode}: no 1af4:1042 function:\n{t}"));
        // Mass storage (other), revision 1, INTA on line 11, one 64-bit memory BAR.
        assert!(line.contains("[0180]: 1af4:1042 rev 01"), "{line}");
        assert!(line.contains("irq 11 pin A"), "{line}");
        assert!(line.contains("BAR0 mem64 "), "{line}");
        let caps = line
            .split("caps [")
            .nth(1)
            .and_then(|c| c.split(']').next())
            .unwrap_or_else(|| panic!("no capabilities: {line}"));
        let ids: Vec<&str> = caps.split(',').map(|c| &c[..2]).collect();
        assert_eq!(ids, ["09", "09", "09", "09", "11"], "{line}");
        assert!(!line.contains(" !"), "decode problems: {line}");
    }
    // The image is untouched by enumeration.
    assert_eq!(std::fs::read(&img).unwrap(), vec![0u8; 1 << 20]);
}

fn assert_usage_error(o: &Output, what: &str) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(64), "{t}");
    let errors: Vec<&str> = t.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{t}");
    assert!(errors[0].contains(what), "{t}");
}

#[test]
fn missing_image_is_a_usage_error() {
    // The harness opens /dev/kvm before it attaches disks.
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    let o = run(&["--disk", "virtio:/nonexistent/vblk.img"]);
    assert_usage_error(&o, "/nonexistent/vblk.img");
}

#[test]
fn image_not_a_whole_number_of_sectors_is_a_usage_error() {
    // The harness opens /dev/kvm before it attaches disks.
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; skipped");
        return;
    }
    let dir = TempDir::new("odd");
    let img = dir.0.join("odd.img");
    std::fs::write(&img, vec![0u8; 1000]).unwrap();
    let o = run(&["--disk", &format!("virtio:{}", img.display())]);
    assert_usage_error(&o, "odd.img");
}
