//! Faults the user sees: a guest that triple-faults, runs into an instruction KVM cannot
//! emulate, spins without I/O, or never exits gets a named report with the vCPU's state
//! (and the last port or MMIO exit), never a hang. Under the default `--seccomp on`, so the
//! report's own system calls are on the vCPU's allow-list.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn run(test: &str, extra: &[&str]) -> (Option<i32>, String, Duration) {
    let start = Instant::now();
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--mem", "256M"])
        .arg("--cmdline")
        .arg(format!("tests={test}"))
        .args(extra)
        .output()
        .unwrap();
    (o.status.code(), text(&o), start.elapsed())
}

/// The vCPU state every report carries.
fn assert_cpu_state(t: &str) {
    for field in [
        "RIP=0x",
        "RSP=0x",
        "RFLAGS=0x",
        "CR0=0x",
        "CR3=0x",
        "CR4=0x",
    ] {
        assert!(t.contains(field), "no {field} in:\n{t}");
    }
    // The kernel's last KTAP line went out through COM1.
    assert!(t.contains("last I/O exit: port 0x3f8 write (1 B)"), "{t}");
}

#[test]
fn a_triple_fault_is_reported_with_the_vcpu_state() {
    if !have_kvm("a_triple_fault_is_reported_with_the_vcpu_state") {
        return;
    }
    let (code, t, _) = run("selftest_triple_fault", &["--timeout", "60"]);
    assert_eq!(code, Some(4), "{t}");
    assert!(
        t.contains("KVM_EXIT_SHUTDOWN (triple fault) at RIP="),
        "{t}"
    );
    // RIP is at the ud2 that found no gate.
    assert!(t.contains("code at RIP: 0f 0b"), "{t}");
    assert_cpu_state(&t);
}

#[test]
fn an_emulation_failure_is_reported_with_the_vcpu_state() {
    if !have_kvm("an_emulation_failure_is_reported_with_the_vcpu_state") {
        return;
    }
    let (code, t, _) = run("selftest_emulation_failure", &["--timeout", "60"]);
    assert_eq!(code, Some(4), "{t}");
    assert!(
        t.contains("KVM_EXIT_INTERNAL_ERROR suberror 1 (emulation failure) at RIP=0x80000000"),
        "{t}"
    );
    assert!(t.contains("(GPA 0x80000000) is outside guest RAM"), "{t}");
    assert_cpu_state(&t);
}

#[test]
fn a_guest_spinning_without_io_is_stopped_by_the_stall_timeout() {
    if !have_kvm("a_guest_spinning_without_io_is_stopped_by_the_stall_timeout") {
        return;
    }
    let (code, t, took) = run(
        "selftest_spin",
        &["--timeout", "120", "--stall-timeout", "2"],
    );
    assert_eq!(code, Some(4), "{t}");
    assert!(
        t.contains("no progress: no port or MMIO exit for 2 s (--stall-timeout) at RIP="),
        "{t}"
    );
    // Where the kick finds it: in the loop in ring 3 (its pause or its jump back), or in the
    // timer's interrupt stub in ring 0.
    assert!(
        t.contains("CPL=3 ")
            && (t.contains("code at RIP: eb fc") || t.contains("code at RIP: f3 90 eb fc"))
            || t.contains("CPL=0 "),
        "{t}"
    );
    assert_cpu_state(&t);
    assert!(
        took < Duration::from_secs(60),
        "took {took:?}, not the stall's 2 s"
    );
}

#[test]
fn a_timeout_reports_where_the_vcpu_was() {
    if !have_kvm("a_timeout_reports_where_the_vcpu_was") {
        return;
    }
    let (code, t, _) = run("selftest_spin", &["--timeout", "3"]);
    assert_eq!(code, Some(3), "{t}");
    assert!(t.contains("did not exit within 3"), "{t}");
    assert!(
        t.contains("harness: at the timeout the vCPU was at RIP="),
        "{t}"
    );
    assert_cpu_state(&t);
}

/// A guest waiting for interrupts makes no exit either: without --stall-timeout only the
/// timeout ends it, with its own exit code.
#[test]
fn without_a_stall_timeout_a_quiet_guest_runs_to_the_timeout() {
    if !have_kvm("without_a_stall_timeout_a_quiet_guest_runs_to_the_timeout") {
        return;
    }
    let (code, t, took) = run("selftest_hang", &["--timeout", "4"]);
    assert_eq!(code, Some(3), "{t}");
    assert!(!t.contains("no progress"), "{t}");
    assert!(took >= Duration::from_secs(4), "{took:?}");
}
