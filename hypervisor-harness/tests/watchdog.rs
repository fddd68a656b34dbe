//! The watchdog's hard deadline: a vCPU thread that never comes back from a device handler
//! (the hidden `--stuck-device-selftest`, never reachable by a guest) still ends the run, with
//! the watchdog's report and its own exit code. Under the default `--seccomp on`, so the
//! report's write and the exit are on the watchdog's allow-list.

mod common;

use common::*;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// error.rs's EXIT_HARD_DEADLINE.
const EXIT_HARD_DEADLINE: i32 = 5;

#[test]
fn a_vcpu_stuck_in_a_device_is_ended_by_the_hard_deadline() {
    if !have_kvm("a_vcpu_stuck_in_a_device_is_ended_by_the_hard_deadline") {
        return;
    }
    let mut child = harness()
        .args(["run", "--kernel", KERNEL, "--mem", "256M", "--timeout", "1"])
        .args(["--cmdline", "tests=boot_info", "--stuck-device-selftest"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The deadline is 1 s + 10 s away; a harness that hangs instead is killed well after it.
    let give_up = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut t = String::new();
    child.stderr.take().unwrap().read_to_string(&mut t).unwrap();
    let status = status.unwrap_or_else(|| panic!("the harness hung past its deadline:\n{t}"));
    assert_eq!(status.code(), Some(EXIT_HARD_DEADLINE), "{t}");
    let line = "error: hard deadline: thread vcpu0 did not come back to its run loop within \
                10 s of the timeout (1 s); last I/O exit: port 0x";
    assert!(t.contains(line), "no {line:?} in:\n{t}");
    assert!(!t.contains("seccomp"), "{t}");
}
