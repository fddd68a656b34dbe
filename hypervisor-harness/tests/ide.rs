//! The PIIX3 IDE controller under the real kernel: it enumerates on PCI with its bus-master
//! BAR, and bad `--disk ide:` setups are usage errors (exit 64, one `error:` line).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KERNEL: &str = env!("KERNEL_IMAGE");
const HARNESS: &str = env!("CARGO_BIN_EXE_hypervisor-harness");

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// A self-deleting image of `sectors` zero sectors.
struct Image(PathBuf);

impl Image {
    fn new(tag: &str, sectors: u64) -> Self {
        let p = std::env::temp_dir().join(format!(
            "ide-it-{}-{tag}-{}.img",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(sectors * 512).unwrap();
        Self(p)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn run(disks: &[&Path], cmdline: &str) -> Output {
    assert!(
        Path::new(KERNEL).exists(),
        "kernel image {KERNEL} was not built"
    );
    let mut cmd = Command::new(HARNESS);
    cmd.args([
        "run",
        "--kernel",
        KERNEL,
        "--cmdline",
        cmdline,
        "--timeout",
        "60",
    ]);
    for d in disks {
        cmd.arg("--disk").arg(format!("ide:{}", d.display()));
    }
    cmd.output().expect("spawn the harness")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn controller_enumerates_with_bar4() {
    if !kvm_usable() {
        eprintln!("note: /dev/kvm is not usable here; IDE boot skipped");
        return;
    }
    let img = Image::new("a", 2048);
    let o = run(&[&img.0], "tests=pci");
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    let line = t
        .lines()
        .find(|l| l.starts_with("# lspci") && l.contains("8086:7010"))
        .unwrap_or_else(|| panic!("no PIIX3 IDE function in lspci:\n{t}"));
    assert!(line.contains("[0101]"), "class: {line}");
    assert!(line.contains("BAR4 io 0x"), "no BAR4 I/O: {line}");
    assert!(line.contains("+0x10"), "BAR4 size: {line}");
}

fn assert_usage_error(o: &Output) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{}", text(o));
    let errors: Vec<_> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
}

#[test]
fn missing_image_is_a_usage_error() {
    let o = run(&[Path::new("/nonexistent/ide-disk.img")], "tests=pci");
    assert_usage_error(&o);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("/nonexistent/ide-disk.img"),
        "{}",
        text(&o)
    );
}

#[test]
fn five_ide_disks_are_a_usage_error() {
    let imgs: Vec<Image> = (0..5).map(|i| Image::new(&i.to_string(), 8)).collect();
    let paths: Vec<&Path> = imgs.iter().map(|i| i.0.as_path()).collect();
    let o = run(&paths, "tests=pci");
    assert_usage_error(&o);
}
