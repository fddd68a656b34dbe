//! virtio-balloon end to end: the guest's driver against our model, with the host measuring
//! the RSS of guest memory at the guest's `# phase:` marks (the `balloon:` notes of
//! --exits-json), and against QEMU's `virtio-balloon-pci` with its defaults (guest-side
//! results; QEMU's DEFLATE_ON_OOM is off by default, so there the allocation must fail).

mod common;

use common::{assert_usage_error, harness, have_kvm, have_qemu, passed, text, TempDir, KERNEL};
use std::collections::BTreeMap;
use std::path::Path;

const MIB: u64 = 1 << 20;
/// `--mem 256M --balloon-target 192`: 64 MiB into the balloon.
const INFLATED: u64 = 64 * MIB;

/// One `balloon: phase=... key=value ...` note as a map.
fn balloon_notes(json: &Path) -> Vec<BTreeMap<String, String>> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(json).expect("exits json")).unwrap();
    doc["notes"]
        .as_array()
        .expect("notes")
        .iter()
        .filter_map(|n| n.as_str()?.strip_prefix("balloon: "))
        .map(|n| {
            n.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn at<'a>(notes: &'a [BTreeMap<String, String>], phase: &str) -> &'a BTreeMap<String, String> {
    notes
        .iter()
        .find(|n| n.get("phase").map(String::as_str) == Some(phase))
        .unwrap_or_else(|| panic!("no balloon note at phase {phase}: {notes:?}"))
}

fn num(note: &BTreeMap<String, String>, key: &str) -> u64 {
    note.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key} missing or not a number in {note:?}"))
}

/// Run `tests` under our harness with a balloon asking for 192 of 256 MiB; the output and
/// the balloon notes.
fn run_harness(dir: &TempDir, tests: &str) -> (String, Vec<BTreeMap<String, String>>) {
    let json = dir.0.join("exits.json");
    let o = harness()
        .args([
            "run",
            "--kernel",
            KERNEL,
            "--mem",
            "256M",
            "--timeout",
            "120",
        ])
        .args(["--balloon", "--balloon-target", "192"])
        .arg("--cmdline")
        .arg(format!("tests={tests}"))
        .arg("--exits-json")
        .arg(&json)
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    (t, balloon_notes(&json))
}

#[test]
fn inflate_gives_the_memory_back_to_the_host() {
    if !have_kvm("inflate_gives_the_memory_back_to_the_host") {
        return;
    }
    let dir = TempDir::new("balloon-inflate");
    let (t, notes) = run_harness(&dir, "balloon_inflate");
    assert!(passed(&t, "balloon_inflate"), "{t}");
    let touched = at(&notes, "balloon-touched");
    let inflated = at(&notes, "balloon-inflated");
    let before = num(touched, "guest_rss_kib") * 1024;
    let after = num(inflated, "guest_rss_kib") * 1024;
    // The guest touched the 64 MiB first, so they were resident before the inflate.
    assert!(
        before >= INFLATED,
        "only {before} bytes resident before: {touched:?}"
    );
    let returned = before.saturating_sub(after);
    assert!(
        returned * 100 >= INFLATED * 95,
        "RSS of guest memory fell by {} KiB of {} KiB inflated: {touched:?} -> {inflated:?}",
        returned >> 10,
        INFLATED >> 10
    );
    assert_eq!(num(inflated, "actual_pages"), INFLATED / 4096);
    assert_eq!(num(inflated, "discarded"), INFLATED / 4096);
    for k in [
        "outside_ram",
        "duplicates",
        "not_in_balloon",
        "malformed",
        "discard_errors",
    ] {
        assert_eq!(num(inflated, k), 0, "{k}: {inflated:?}");
    }
    // The stats queue reached the device with what the kernel knows.
    let end = at(&notes, "end");
    assert!(num(end, "stats_updates") >= 1, "{end:?}");
    assert!(num(end, "stats_total") >= 200 * MIB, "{end:?}");
    assert!(num(end, "stats_free") > 0, "{end:?}");
}

#[test]
fn deflate_and_reuse_with_correct_contents() {
    if !have_kvm("deflate_and_reuse_with_correct_contents") {
        return;
    }
    let dir = TempDir::new("balloon-deflate");
    let (t, notes) = run_harness(&dir, "balloon_inflate,balloon_deflate_reuse");
    assert!(passed(&t, "balloon_deflate_reuse"), "{t}");
    // The host dropped the pages: every one came back zeroed, then held what was written.
    assert!(
        t.contains("deflated 16384 pages; 16384 of them read back zero; 0 reused with wrong"),
        "{t}"
    );
    let deflated = at(&notes, "balloon-deflated");
    let reused = at(&notes, "balloon-reused");
    assert_eq!(num(deflated, "deflated"), INFLATED / 4096);
    assert_eq!(num(deflated, "actual_pages"), 0);
    // Deflating costs the host nothing until the guest touches the pages again.
    let grown = (num(reused, "guest_rss_kib") - num(deflated, "guest_rss_kib")) * 1024;
    assert!(grown * 100 >= INFLATED * 95, "{deflated:?} -> {reused:?}");
}

#[test]
fn deflate_on_oom_lets_an_allocation_past_the_limit_succeed() {
    if !have_kvm("deflate_on_oom_lets_an_allocation_past_the_limit_succeed") {
        return;
    }
    let dir = TempDir::new("balloon-oom");
    let (t, notes) = run_harness(&dir, "balloon_deflate_on_oom");
    assert!(passed(&t, "balloon_deflate_on_oom"), "{t}");
    assert!(t.contains("deflated 256 pages for the allocation"), "{t}");
    let end = at(&notes, "end");
    assert_eq!(num(end, "deflated"), 256, "{end:?}");
    assert_eq!(num(end, "actual_pages"), INFLATED / 4096 - 256, "{end:?}");
}

#[test]
fn free_page_reporting_lowers_rss_after_a_large_free() {
    if !have_kvm("free_page_reporting_lowers_rss_after_a_large_free") {
        return;
    }
    let dir = TempDir::new("balloon-report");
    let (t, notes) = run_harness(&dir, "balloon_free_page_reporting");
    assert!(passed(&t, "balloon_free_page_reporting"), "{t}");
    // 32 MiB written, freed and reported: the host drops them, the guest keeps them.
    const REPORTED: u64 = 32 * MIB;
    let freed = at(&notes, "balloon-freed");
    let reported = at(&notes, "balloon-reported");
    let fell = (num(freed, "guest_rss_kib") - num(reported, "guest_rss_kib")) * 1024;
    assert!(
        fell * 100 >= REPORTED * 95,
        "RSS fell by {} KiB of {} KiB reported: {freed:?} -> {reported:?}",
        fell >> 10,
        REPORTED >> 10
    );
    assert_eq!(num(reported, "reported"), REPORTED / 4096);
    assert_eq!(num(reported, "report_refused"), 0);
    assert_eq!(
        num(reported, "actual_pages"),
        0,
        "reporting is not inflating"
    );
    assert!(
        t.contains("reported 8192 free pages; 8192 of them read back zero; 0 reused with wrong"),
        "{t}"
    );
}

#[test]
fn a_target_beyond_the_ram_is_a_usage_error() {
    if !have_kvm("a_target_beyond_the_ram_is_a_usage_error") {
        return;
    }
    let o = harness()
        .args(["run", "--kernel", KERNEL, "--mem", "256M"])
        .args(["--balloon", "--balloon-target", "512"])
        .output()
        .unwrap();
    assert_usage_error(&o, "--balloon-target");
}

#[test]
fn under_qemu_with_its_defaults() {
    if !have_qemu("balloon under_qemu_with_its_defaults") {
        return;
    }
    let o = harness()
        .args([
            "qemu",
            "--kernel",
            KERNEL,
            "--mem",
            "256M",
            "--timeout",
            "120",
        ])
        .args(["--balloon", "--balloon-target", "192"])
        .args([
            "--cmdline",
            "tests=balloon_inflate,balloon_deflate_reuse,balloon_deflate_on_oom,\
             balloon_free_page_reporting",
        ])
        .output()
        .unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    for name in [
        "balloon_inflate",
        "balloon_deflate_reuse",
        "balloon_deflate_on_oom",
    ] {
        assert!(passed(&t, name), "{name}: {t}");
    }
    assert!(t.contains("inflated 16384 (64 MiB), actual 16384"), "{t}");
    assert!(t.contains("DEFLATE_ON_OOM not negotiated"), "{t}");
    // QEMU's default is free-page-reporting=off: the test skips.
    assert!(t.contains("ok 4 balloon_free_page_reporting # SKIP"), "{t}");
}
