//! Exit codes and one-line errors for bad input, through the real binary.

use std::process::{Command, Output};
use vmm_sys_util::tempfile::TempFile;

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
        .args(args)
        .output()
        .expect("spawn the harness")
}

/// Exit code, and stderr must be exactly one line starting with `error:`.
fn expect_error(args: &[&str], code: i32) -> String {
    let o = harness(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: want one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    err
}

/// A temporary file holding `contents`, removed when dropped.
fn tmp(name: &str, contents: &[u8]) -> TempFile {
    let prefix = std::env::temp_dir().join(format!("hh-cli-{name}-"));
    let f = TempFile::new_with_prefix(prefix).unwrap();
    std::fs::write(f.as_path(), contents).unwrap();
    f
}

#[test]
fn bad_arguments_are_usage_errors() {
    expect_error(&["run", "--bogus"], 64);
    expect_error(&["frobnicate"], 64);
    expect_error(&[], 64);
    expect_error(&["run", "--kernel", "/nonexistent", "--timeout", "abc"], 64);
    expect_error(&["qemu", "--kernel", "/nonexistent", "--accel", "hvf"], 64);
    expect_error(&["bench", "--runs", "0"], 64);
}

#[test]
fn bad_mem_is_a_usage_error() {
    for m in ["12Q", "1G...", "16M", "4G", "100000G"] {
        let e = expect_error(&["run", "--kernel", "/nonexistent", "--mem", m], 64);
        assert!(e.contains("--mem"), "{e}");
    }
}

#[test]
fn missing_kernel_is_a_bad_image() {
    let e = expect_error(&["run", "--kernel", "/nonexistent/kernel"], 65);
    assert!(e.contains("/nonexistent/kernel"), "{e}");
    expect_error(&["qemu", "--kernel", "/nonexistent/kernel"], 65);
    expect_error(&["bench", "--kernel", "/nonexistent/kernel"], 65);
}

#[test]
fn non_elf_is_a_bad_image() {
    let p = tmp("not-elf", b"this is not an ELF file\n");
    let e = expect_error(&["run", "--kernel", p.as_path().to_str().unwrap()], 65);
    assert!(e.contains("not an ELF"), "{e}");
    let empty = tmp("empty", b"");
    expect_error(&["run", "--kernel", empty.as_path().to_str().unwrap()], 65);
}

#[test]
fn elf_without_pvh_note_is_a_bad_image() {
    let e = expect_error(&["run", "--kernel", "/bin/true"], 65);
    assert!(e.contains("ELF has no PVH note"), "{e}");
}

#[test]
fn truncated_elf_is_a_bad_image() {
    let mut head = std::fs::read("/bin/true").unwrap();
    head.truncate(100);
    let p = tmp("truncated", &head);
    expect_error(&["run", "--kernel", p.as_path().to_str().unwrap()], 65);
}

#[test]
fn too_long_cmdline_is_a_usage_error() {
    let long = "x".repeat(4096);
    expect_error(&["run", "--kernel", "/bin/true", "--cmdline", &long], 64);
}

#[test]
fn help_and_version_succeed() {
    for a in [&["--help"][..], &["--version"], &["run", "--help"]] {
        assert_eq!(harness(a).status.code(), Some(0), "{a:?}");
    }
}
