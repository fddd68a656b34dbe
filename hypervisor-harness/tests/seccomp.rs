//! Least privilege: every kind of harness thread runs under its seccomp filter (a forbidden
//! call ends the process with the documented line and exit code 148, unless `--seccomp off`),
//! and a read-only disk is open read-only at the OS level.

mod common;

use common::*;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const EXIT_SECCOMP: i32 = 148;

/// What a run needs so that a thread of `kind` exists.
fn args_for(kind: &str, dir: &Path) -> Vec<String> {
    let sock = |name: &str| dir.join(name).display().to_string();
    match kind {
        "nic-backend" => vec!["--net".into(), "virtio".into()],
        "console-port" => vec!["--console".into(), format!("socket:{}", sock("con.sock"))],
        "monitor" => vec!["--monitor".into(), format!("unix:{}", sock("mon.sock"))],
        // The vCPU and the watchdog are in every run, and so is the floor device's doorbell
        // thread (device-io).
        _ => vec![],
    }
}

fn selftest(kind: &str, seccomp: &str) -> std::process::Output {
    let dir = TempDir::new(&format!("seccomp-{kind}-{seccomp}"));
    harness()
        .args(["run", "--kernel", KERNEL, "--timeout", "60"])
        .args(["--cmdline", "tests=boot_info"])
        .args(["--seccomp", seccomp, "--seccomp-selftest", kind])
        .args(args_for(kind, &dir.0))
        .output()
        .unwrap()
}

#[test]
fn a_forbidden_call_in_any_thread_kills_the_process_with_the_line() {
    if !have_kvm("a_forbidden_call_in_any_thread_kills_the_process_with_the_line") {
        return;
    }
    for kind in [
        "vcpu",
        "device-io",
        "nic-backend",
        "console-port",
        "monitor",
        "watchdog",
    ] {
        let o = selftest(kind, "on");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(EXIT_SECCOMP), "{kind}: {t}");
        let line = format!(
            "hypervisor-harness: seccomp: thread {kind} made forbidden system call {}",
            libc::SYS_execve
        );
        assert!(t.contains(&line), "{kind}: no {line:?} in:\n{t}");
    }
}

#[test]
fn with_seccomp_off_the_forbidden_call_just_fails() {
    if !have_kvm("with_seccomp_off_the_forbidden_call_just_fails") {
        return;
    }
    for kind in ["vcpu", "nic-backend"] {
        let o = selftest(kind, "off");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{kind}: {t}");
        assert!(passed(&t, "boot_info"), "{kind}: {t}");
        assert!(!t.contains("seccomp:"), "{kind}: {t}");
    }
}

/// The access mode of each fd of process `pid` open on `path` (O_RDONLY, O_WRONLY, O_RDWR).
fn access_modes(pid: u32, path: &Path) -> Vec<i32> {
    let mut modes = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let entry = entry.unwrap();
        if std::fs::read_link(entry.path()).ok().as_deref() != Some(path) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_string_lossy()
        ))
        .unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        modes.push(flags & libc::O_ACCMODE);
    }
    modes
}

/// A read-only disk (virtio or IDE) is an fd opened O_RDONLY, so no bug in a device model can
/// write it; its image may be mode 0444, and its modification time does not move. A writable
/// one beside it is O_RDWR, which shows the check sees the difference.
#[test]
fn read_only_disks_are_opened_read_only() {
    if !have_kvm("read_only_disks_are_opened_read_only") {
        return;
    }
    let dir = TempDir::new("seccomp-ro");
    let (ro_virtio, ro_ide, rw) = (
        dir.file("ro-virtio.img", 1 << 20),
        dir.file("ro-ide.img", 1 << 20),
        dir.file("rw.img", 1 << 20),
    );
    use std::os::unix::fs::PermissionsExt;
    for img in [&ro_virtio, &ro_ide] {
        std::fs::set_permissions(img, std::fs::Permissions::from_mode(0o444)).unwrap();
    }
    let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = (mtime(&ro_virtio), mtime(&ro_ide));
    let sock = dir.0.join("mon.sock");
    let child = harness()
        .args([
            "run",
            "--kernel",
            KERNEL,
            "--timeout",
            "60",
            "--cmdline",
            "idle",
        ])
        .arg("--disk")
        .arg(format!("virtio:{},ro", ro_virtio.display()))
        .arg("--disk")
        .arg(format!("virtio:{}", rw.display()))
        .arg("--disk")
        .arg(format!("ide:{},ro", ro_ide.display()))
        .arg("--monitor")
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The monitor listens once the machine is built, its disks open.
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no monitor socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let modes = [
        access_modes(child.id(), &ro_virtio),
        access_modes(child.id(), &ro_ide),
        access_modes(child.id(), &rw),
    ];
    let quit = harness()
        .arg("monitor")
        .arg(&sock)
        .arg("quit")
        .output()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(quit.status.success(), "{}", text(&quit));
    assert_eq!(modes[0], [libc::O_RDONLY], "the read-only virtio disk");
    assert_eq!(modes[1], [libc::O_RDONLY], "the read-only IDE disk");
    assert_eq!(modes[2], [libc::O_RDWR], "the writable virtio disk");
    assert_eq!((mtime(&ro_virtio), mtime(&ro_ide)), before);
}
