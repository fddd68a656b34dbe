//! The CI benchmark profile (`bench --ci-profile`, which `.ci/run` runs) catches an added exit:
//! the hidden knob makes the guest read the IDE alternate status once more per I/O, and the
//! profile must fail on exactly the IDE rows, saying by how much.

mod common;
use common::*;

#[test]
fn ci_profile_fails_on_one_extra_exit_per_io() {
    if !have_kvm("ci_profile_fails_on_one_extra_exit_per_io") {
        return;
    }
    let o = harness()
        .args([
            "bench",
            "--kernel",
            KERNEL,
            "--ci-profile",
            "--ci-profile-inject-exit",
        ])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("the exit counts differ from"), "{t}");
    let diffs: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("exits per I/O, expected"))
        .collect();
    // Every IDE row (four workloads on each of PIO and DMA), one exit more per I/O; the virtio
    // rows are untouched.
    assert_eq!(diffs.len(), 8, "{t}");
    for d in &diffs {
        assert!(d.contains(" ide_pio ") || d.contains(" ide_dma "), "{d}");
        assert!(d.contains("(+2 exits over 2 I/Os)"), "{d}");
    }
    assert!(!t.contains("virtio_msix randread_4k_qd1:"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
}
