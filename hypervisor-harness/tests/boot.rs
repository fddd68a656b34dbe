//! Boot the real kernel image under our harness and under QEMU, and check what reaches the
//! harness's exit status and KTAP summary: passes, a failure, a hang, a ring-3 fault and a panic.

mod common;
use common::*;
use std::path::Path;
use std::process::Output;

/// Run a harness subcommand (`run` or `qemu`) on the kernel with `cmdline`.
fn boot(sub: &str, cmdline: &str, timeout_s: u32) -> Output {
    assert!(
        Path::new(KERNEL).exists(),
        "kernel image {KERNEL} was not built"
    );
    harness()
        .args([sub, "--kernel", KERNEL, "--cmdline", cmdline])
        .args(["--timeout", &timeout_s.to_string()])
        .output()
        .expect("spawn the harness")
}

/// Run `check` for each available platform: our harness (needs /dev/kvm) and QEMU. A missing one
/// is a SKIP (a failure under CI=true).
fn on_each_platform(test: &str, check: impl Fn(&str)) {
    if have_kvm(&format!("{test} (harness)")) {
        check("run");
    }
    if have_qemu(&format!("{test} (qemu)")) {
        check("qemu");
    }
}

#[test]
fn all_tests_pass() {
    on_each_platform("all_tests_pass", |sub| {
        let o = boot(sub, "tests=all", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
        for name in [
            "boot_info",
            "ring3",
            "heap",
            "tsc",
            "irq_lapic_timer",
            "irq_ioapic_serial",
            "pci",
        ] {
            assert!(passed(&t, name), "{sub}: no `ok` line for {name}:\n{t}");
        }
        assert!(
            t.contains("# lspci 00:00.0 [0600]"),
            "{sub}: no host bridge in lspci:\n{t}"
        );
        assert!(!t.contains("not ok"), "{sub}: {t}");
    });
}

#[test]
fn a_failing_test_fails_the_run() {
    on_each_platform("a_failing_test_fails_the_run", |sub| {
        let o = boot(sub, "tests=ring3,selftest_fail", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{sub}: {t}");
        assert!(t.contains("not ok 2 selftest_fail"), "{sub}: {t}");
        assert!(t.contains("ok 1 ring3"), "{sub}: {t}");
    });
}

#[test]
fn an_unknown_test_name_fails_the_run() {
    on_each_platform("an_unknown_test_name_fails_the_run", |sub| {
        let o = boot(sub, "tests=no_such_test", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{sub}: {t}");
        assert!(t.contains("not ok 1 no_such_test"), "{sub}: {t}");
    });
}

#[test]
fn a_hanging_test_hits_the_timeout() {
    on_each_platform("a_hanging_test_hits_the_timeout", |sub| {
        let o = boot(sub, "tests=selftest_hang", 6);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{sub}: {t}");
        assert!(t.contains("did not exit within 6"), "{sub}: {t}");
    });
}

#[test]
fn a_ring3_fault_is_reported() {
    on_each_platform("a_ring3_fault_is_reported", |sub| {
        let o = boot(sub, "tests=selftest_fault", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{sub}: {t}");
        assert!(
            t.contains("EXCEPTION vector 14 (#PF page fault) in ring 3"),
            "{sub}: {t}"
        );
        assert!(t.contains("cr2=0x4000000000"), "{sub}: {t}");
        assert!(t.contains("not ok 1 selftest_fault"), "{sub}: {t}");
    });
}

#[test]
fn a_ring0_fault_is_reported() {
    on_each_platform("a_ring0_fault_is_reported", |sub| {
        let o = boot(sub, "tests=selftest_ring0_fault", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{sub}: {t}");
        assert!(
            t.contains("EXCEPTION vector 6 (#UD invalid opcode) in ring 0"),
            "{sub}: {t}"
        );
        assert!(t.contains("not ok 1 selftest_ring0_fault"), "{sub}: {t}");
    });
}

#[test]
fn a_panic_is_reported() {
    on_each_platform("a_panic_is_reported", |sub| {
        let o = boot(sub, "tests=selftest_panic", 120);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(2), "{sub}: {t}");
        assert!(t.contains("PANIC"), "{sub}: {t}");
        assert!(t.contains("not ok 1 selftest_panic"), "{sub}: {t}");
    });
}

#[test]
fn floor_bench_reports_exit_costs_under_the_harness() {
    if !have_kvm("floor_bench_reports_exit_costs_under_the_harness") {
        return;
    }
    let o = boot("run", "bench=floor", 120);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    for row in [
        "port_out_userspace",
        "port_out_ioeventfd",
        "mmio_write_userspace",
        "mmio_write_ioeventfd",
        "notify_irq_roundtrip",
        "loop_ring3",
        "loop_ring0",
    ] {
        assert!(
            t.contains(&format!("# bench: floor.{row} ns=")),
            "no {row}:\n{t}"
        );
    }
}

/// Boot `tests=tsc` under `sub` and check that the kernel took its TSC frequency from the
/// hypervisor timing leaf (CPUID 0x40000010), not from the PIT; the `tsc` test still
/// cross-checks it against the PIT.
fn tsc_comes_from_the_timing_leaf(sub: &str) {
    let o = boot(sub, "tests=tsc", 60);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
    assert!(passed(&t, "tsc"), "{sub}: {t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("# kernel:") && l.ends_with("kHz from cpuid 0x40000010")),
        "{sub}: the kernel did not use the timing leaf:\n{t}"
    );
}

/// The harness publishes the TSC frequency in CPUID 0x40000010 (from KVM_GET_TSC_KHZ). The
/// kernel must ask through ring 0: on kvm_pvm a ring-3 `cpuid` runs natively and sees the
/// host's leaves, which is how the leaf went unread before.
#[test]
fn the_kernel_takes_the_tsc_frequency_from_the_harness() {
    if have_kvm("the_kernel_takes_the_tsc_frequency_from_the_harness") {
        tsc_comes_from_the_timing_leaf("run");
    }
}

/// QEMU with KVM publishes the same leaf when asked (`+invtsc,vmware-cpuid-freq=on`, which the
/// runner adds), so the kernel skips the PIT there too; under TCG it has no leaf to offer.
#[test]
fn the_kernel_takes_the_tsc_frequency_from_qemu_with_kvm() {
    let name = "the_kernel_takes_the_tsc_frequency_from_qemu_with_kvm";
    if have_qemu(name) && have_kvm(name) {
        tsc_comes_from_the_timing_leaf("qemu");
    }
}

/// The smallest guest the CLI accepts (`--mem 32M`) boots and passes: the heap shrinks to fit
/// instead of the kernel giving up ("no RAM range above the kernel can hold the heap").
#[test]
fn the_smallest_guest_boots() {
    on_each_platform("the_smallest_guest_boots", |sub| {
        let o = harness()
            .args([sub, "--kernel", KERNEL, "--mem", "32M", "--timeout", "120"])
            .args(["--cmdline", "tests=boot_info,boot_info_checks,heap"])
            .output()
            .expect("spawn the harness");
        let t = text(&o);
        assert_eq!(o.status.code(), Some(0), "{sub}: {t}");
        for name in ["boot_info", "boot_info_checks", "heap"] {
            assert!(passed(&t, name), "{sub}: {name} did not pass:\n{t}");
        }
    });
}
