//! What the integration tests share: the built kernel and harness, platform checks, output
//! handling and a self-deleting temporary directory.
#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;
use std::process::{Command, Output};

pub const KERNEL: &str = env!("KERNEL_IMAGE");

/// The harness binary under test.
pub fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
}

use hypervisor_harness::qemu::kvm_usable;

fn qemu_installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A platform a test needs is missing: print `SKIP` with the reason and carry on, except under
/// `CI=true`, where `.ci/run` has installed QEMU on a machine with KVM, so a missing one is a
/// broken machine and the test fails.
fn platform_missing(test: &str, reason: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: {reason}, and CI=true demands it");
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Whether `/dev/kvm` is usable; if not, SKIP (or, under CI=true, fail) `test`.
pub fn have_kvm(test: &str) -> bool {
    kvm_usable() || platform_missing(test, "/dev/kvm is not usable here")
}

/// Whether `qemu-system-x86_64` runs; if not, SKIP (or, under CI=true, fail) `test`.
pub fn have_qemu(test: &str) -> bool {
    qemu_installed() || platform_missing(test, "qemu-system-x86_64 is not installed")
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code 64 and exactly one `error:` line, which mentions `what`.
pub fn assert_usage_error(o: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{}", text(o));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    assert!(errors[0].contains(what), "{what:?} not in {:?}", errors[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Whether a KTAP line `ok N name` (not SKIP) is in the output.
pub fn passed(t: &str, name: &str) -> bool {
    t.lines()
        .any(|l| l.starts_with("ok ") && l.trim_end().ends_with(&format!(" {name}")))
}

/// A temporary directory, removed with its contents when dropped (vmm-sys-util's `TempDir`);
/// `.0` is its path.
pub struct TempDir(pub PathBuf, vmm_sys_util::tempdir::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let prefix = std::env::temp_dir().join(format!("hh-test-{tag}-"));
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix).unwrap();
        Self(dir.as_path().to_path_buf(), dir)
    }

    /// A file of `len` zero bytes in the directory.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }
}
