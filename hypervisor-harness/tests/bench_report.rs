//! `bench report JSON --out DIR` (what `bench --report DIR` writes): every chart's SVG is valid
//! XML with bars in its plot area, the page is self-contained, and headless Chromium, shown the
//! page and each chart, draws pixels of the series' colours for every chart. A chart without
//! data is caught by the same checks.
//!
//! Without Chromium (Debian's `chromium`, which `.ci/run` installs) the screenshot checks SKIP,
//! except under CI=true, where they fail.

mod common;

use common::{harness, have_kvm, text, TempDir};
use hypervisor_harness::bench::report_html::charts::{HEADER_PX, PALETTE};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/bench-small.json"
);

/// Render `doc` with the harness into `dir`; the SVGs the page links, in its order.
fn render(doc: &serde_json::Value, dir: &Path) -> Vec<PathBuf> {
    let json = dir.join("bench.json");
    std::fs::write(&json, doc.to_string()).unwrap();
    let out_dir = dir.join("report");
    let o = harness()
        .args(["bench", "report"])
        .arg(&json)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    let svgs: Vec<PathBuf> = html
        .split("<img src=\"")
        .skip(1)
        .map(|s| out_dir.join(&s[..s.find('"').unwrap()]))
        .collect();
    assert!(!svgs.is_empty(), "{html}");
    svgs
}

fn fixture() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap()
}

fn stem(p: &Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

fn palette_hex() -> Vec<String> {
    PALETTE
        .iter()
        .map(|(r, g, b)| format!("#{r:02X}{g:02X}{b:02X}"))
        .collect()
}

/// The SVG's bars: `rect`s of a series colour, with an area, in the plot area (below the
/// header, whose legend swatches don't count). Panics when it is not XML.
fn svg_marks(path: &Path) -> usize {
    let svg = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&svg)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let colours = palette_hex();
    let attr = |n: &roxmltree::Node, a: &str| n.attribute(a).and_then(|v| v.parse::<f64>().ok());
    doc.descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter(|n| {
            n.attribute("fill")
                .is_some_and(|f| colours.iter().any(|c| c.eq_ignore_ascii_case(f)))
        })
        .filter(|n| attr(n, "y").is_some_and(|y| y >= HEADER_PX as f64))
        .filter(|n| {
            attr(n, "width").is_some_and(|w| w > 0.0) && attr(n, "height").is_some_and(|h| h > 0.0)
        })
        .count()
}

/// The SVG's size from its root element.
fn svg_size(path: &Path) -> (u32, u32) {
    let svg = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let dim = |a| doc.root_element().attribute(a).unwrap().parse().unwrap();
    (dim("width"), dim("height"))
}

#[test]
fn every_chart_is_valid_svg_with_bars() {
    let dir = TempDir::new("bench-report");
    let svgs = render(&fixture(), &dir.0);
    let ids: Vec<String> = svgs.iter().map(|p| stem(p)).collect();
    // Exits first, then every section the fixture has.
    assert!(ids[0].starts_with("exits_"), "{ids:?}");
    for want in [
        "exits_storage",
        "exits_net",
        "exits_console",
        "exits_floor",
        "storage_mb_s",
        "storage_iops",
        "storage_latency_seqread_128k_qd1",
        "net_pps",
        "net_mb_s",
        "net_rtt",
        "floor_ns",
        "boot",
        "console_throughput",
    ] {
        assert!(ids.iter().any(|i| i == want), "{want} missing from {ids:?}");
    }
    for p in &svgs {
        assert!(svg_marks(p) > 0, "{} drew no bars", p.display());
        let svg = std::fs::read_to_string(p).unwrap();
        // Each chart names the platform, the date, the commit and the command line.
        for what in [
            "platform kvm_pvm",
            "2026-12-01T15:34:00Z",
            "commit fixture",
            "bench --json bench.json",
        ] {
            assert!(svg.contains(what), "{}: no {what}", p.display());
        }
    }
    let html = std::fs::read_to_string(dir.0.join("report/index.html")).unwrap();
    assert!(!html.contains("<script"), "no JavaScript");
    for fetch in ["http:", "https:", "//"] {
        assert!(!html.contains(fetch), "the page fetches nothing: {fetch}");
    }
    // The table under the storage throughput chart has the exact numbers.
    assert!(html.contains("<td>1452.83</td>"), "{html}");
}

/// Whether Chromium runs here; if not, SKIP (or, under CI=true, fail) `test`.
fn have_chromium(test: &str) -> bool {
    let runs = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !runs {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(
            !ci,
            "{test}: chromium is not installed, and CI=true demands it"
        );
        eprintln!("SKIP {test}: chromium is not installed");
    }
    runs
}

/// Chromium's screenshot of `url` in a window of `size`, decoded to RGB pixels.
fn screenshot(url: &Path, size: (u32, u32), work: &Path) -> Vec<[u8; 3]> {
    let name = stem(url);
    let png_path = work.join(format!("{name}.png"));
    let profile = work.join(format!("profile-{name}"));
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--hide-scrollbars",
            "--force-device-scale-factor=1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png_path.display()))
        .arg(format!("--window-size={},{}", size.0, size.1))
        .arg(format!("file://{}", url.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chromium took over 2 minutes on {}", url.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = std::fs::File::open(&png_path)
        .unwrap_or_else(|e| panic!("no screenshot of {}: {e}", url.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    buf[..info.buffer_size()]
        .chunks(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// Pixels of each series colour.
fn series_pixels(pixels: &[[u8; 3]]) -> usize {
    pixels
        .iter()
        .filter(|p| PALETTE.iter().any(|(r, g, b)| **p == [*r, *g, *b]))
        .count()
}

/// Each SVG shown alone by Chromium (two at a time): its series pixels by chart.
fn chromium_marks(svgs: &[PathBuf], work: &Path) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for pair in svgs.chunks(2) {
        std::thread::scope(|s| {
            let shots: Vec<_> = pair
                .iter()
                .map(|p| s.spawn(move || (stem(p), screenshot(p, svg_size(p), work))))
                .collect();
            for h in shots {
                let (name, pixels) = h.join().unwrap();
                out.insert(name, series_pixels(&pixels));
            }
        });
    }
    out
}

#[test]
fn chromium_draws_every_chart() {
    if !have_chromium("chromium_draws_every_chart") {
        return;
    }
    let dir = TempDir::new("bench-report-chromium");
    let svgs = render(&fixture(), &dir.0);
    // The whole page: it loads, and its charts drew.
    let page = screenshot(&dir.0.join("report/index.html"), (1100, 2400), &dir.0);
    let background = page.iter().filter(|p| **p == [255, 255, 255]).count();
    assert!(background < page.len(), "the page is blank");
    assert!(series_pixels(&page) > 1000, "the page shows no bars");
    for (name, pixels) in chromium_marks(&svgs, &dir.0) {
        // A bar is at least a few pixels a side; legend swatches alone are 144 a series.
        assert!(pixels > 200, "{name}: only {pixels} pixels of bars");
    }
}

/// One chart left without data (every storage row lost its MB/s): both checks single it out.
#[test]
fn a_chart_without_data_is_caught() {
    let mut doc = fixture();
    for r in doc["storage"]["rows"].as_array_mut().unwrap() {
        r["mb_per_s"] = serde_json::Value::Null;
    }
    let dir = TempDir::new("bench-report-empty");
    let svgs = render(&doc, &dir.0);
    let empty = svgs
        .iter()
        .find(|p| stem(p) == "storage_mb_s")
        .expect("the chart stays, without bars");
    assert_eq!(svg_marks(empty), 0);
    assert!(std::fs::read_to_string(empty).unwrap().contains("no data"));
    let others: Vec<&PathBuf> = svgs.iter().filter(|p| *p != empty).collect();
    assert!(others.iter().all(|p| svg_marks(p) > 0));
    if !have_chromium("a_chart_without_data_is_caught") {
        return;
    }
    let iops = svgs.iter().find(|p| stem(p) == "storage_iops").unwrap();
    let marks = chromium_marks(&[empty.clone(), iops.clone()], &dir.0);
    assert_eq!(marks["storage_mb_s"], 0, "{marks:?}");
    assert!(marks["storage_iops"] > 200, "{marks:?}");
}

/// `bench --report DIR` itself, on a short run (the floor, boots and the console): the page
/// and its charts, named by this run's platform, commit and command line, and the same
/// document in `--json`.
#[test]
fn bench_writes_its_report() {
    if !have_kvm("bench_writes_its_report") {
        return;
    }
    let dir = TempDir::new("bench-report-run");
    let (json, report) = (dir.0.join("bench.json"), dir.0.join("report"));
    let o = harness()
        .args(["bench", "--kernel", common::KERNEL, "--runs", "1"])
        .args(["--skip-storage", "--skip-net"])
        .arg("--json")
        .arg(&json)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let meta = &doc["meta"];
    assert_eq!(meta["platform"], doc["platform"]["kvm"]);
    assert!(
        meta["command"].as_str().unwrap().contains("--skip-net"),
        "{meta}"
    );
    assert!(meta["date"].as_str().unwrap().ends_with('Z'), "{meta}");
    let svg = std::fs::read_to_string(report.join("exits_floor.svg")).unwrap();
    assert!(svg_marks(&report.join("exits_floor.svg")) > 0, "{svg}");
    assert!(svg.contains(meta["commit"].as_str().unwrap()), "{svg}");
    for chart in ["boot", "floor_ns", "console_throughput", "exits_console"] {
        assert!(
            svg_marks(&report.join(format!("{chart}.svg"))) > 0,
            "{chart}"
        );
    }
    let html = std::fs::read_to_string(report.join("index.html")).unwrap();
    assert!(html.contains("<img src=\"boot.svg\""), "{html}");
    // Storage and network were skipped: no charts for them.
    assert!(!report.join("storage_mb_s.svg").exists());
    // Plain progress lines without a terminal, as before.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bench: boot runs under the harness (1)..."),
        "{err}"
    );
    assert!(!err.contains('\r'), "no bar without a terminal: {err}");
}
