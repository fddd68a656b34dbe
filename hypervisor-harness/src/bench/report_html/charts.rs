//! The report's charts: what each one shows, taken from a `bench --json` document, and its SVG.
//!
//! Every chart is grouped horizontal bars: one band per category (a VMM and path, a NIC and
//! backend, ...) and one bar per series (a workload, a quantile). Horizontal, because the
//! category names are long.

use super::RunMeta;
use crate::error::HarnessError;
use plotters::prelude::*;
use serde_json::Value;

/// The series' fill colours, in order (a series past the end takes the first again). No greys:
/// the axes, grid and text are grey or black, so a pixel of one of these is a bar.
pub const PALETTE: [(u8, u8, u8); 8] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
];

/// One chart: categories × series, each cell a value or nothing (not measured).
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// The file name's stem and the HTML anchor.
    pub id: String,
    pub title: String,
    /// What the values are, e.g. "MB/s".
    pub unit: String,
    /// The report's section heading.
    pub section: &'static str,
    /// Draw on a log scale: set for latencies, and for values that span more than a ratio of
    /// [`LOG_SPAN`] (zeros then draw no bar; the table still shows them).
    pub log: bool,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// One per category.
    pub values: Vec<Option<f64>>,
}

/// Values spanning more than this ratio (largest over smallest positive) go on a log scale.
pub const LOG_SPAN: f64 = 50.0;

impl BarChart {
    /// A chart from `rows`: each row's category, series and value (a row without a value keeps
    /// its band, empty).
    fn grouped<'a>(
        id: &str,
        title: &str,
        unit: &str,
        section: &'static str,
        rows: impl IntoIterator<Item = &'a Value>,
        key: impl Fn(&Value) -> (String, String),
        value: impl Fn(&Value) -> Option<f64>,
    ) -> BarChart {
        let cells = rows.into_iter().map(|r| {
            let (cat, ser) = key(r);
            (cat, ser, value(r))
        });
        BarChart::from_cells(id, title, unit, section, cells)
    }

    /// A chart from (category, series, value) cells; categories and series keep the order
    /// they first appear in.
    fn from_cells(
        id: &str,
        title: &str,
        unit: &str,
        section: &'static str,
        cells: impl IntoIterator<Item = (String, String, Option<f64>)>,
    ) -> BarChart {
        let mut c = BarChart {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            section,
            log: false,
            categories: Vec::new(),
            series: Vec::new(),
        };
        for (cat, ser, value) in cells {
            let ci = match c.categories.iter().position(|x| *x == cat) {
                Some(i) => i,
                None => {
                    c.categories.push(cat);
                    for s in &mut c.series {
                        s.values.push(None);
                    }
                    c.categories.len() - 1
                }
            };
            let si = match c.series.iter().position(|s| s.name == ser) {
                Some(i) => i,
                None => {
                    c.series.push(Series {
                        name: ser,
                        values: vec![None; c.categories.len()],
                    });
                    c.series.len() - 1
                }
            };
            if let Some(v) = value.filter(|v| v.is_finite()) {
                c.series[si].values[ci] = Some(v);
            }
        }
        c.log = c.spans_decades();
        c
    }

    fn log_scale(mut self) -> BarChart {
        self.log = true;
        self
    }

    fn spans_decades(&self) -> bool {
        let (lo, hi) = self.positive_range().unwrap_or((1.0, 1.0));
        hi / lo > LOG_SPAN
    }

    /// The smallest and largest positive value.
    fn positive_range(&self) -> Option<(f64, f64)> {
        let mut vals = self.values().filter(|v| *v > 0.0).peekable();
        vals.peek()?;
        Some(vals.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        }))
    }

    fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
    }

    /// Whether any value can draw a bar (positive; on a linear scale zero draws nothing
    /// either).
    pub fn has_marks(&self) -> bool {
        self.values().any(|v| v > 0.0)
    }
}

fn text(r: &Value, k: &str) -> String {
    match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".into(),
        Some(v) => v.to_string(),
    }
}

fn num(r: &Value, k: &str) -> Option<f64> {
    r.get(k).and_then(Value::as_f64)
}

fn rows<'a>(doc: &'a Value, section: &str) -> &'a [Value] {
    doc.get(section)
        .and_then(|s| s.get("rows"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn storage_config(r: &Value) -> String {
    format!("{} {}", text(r, "vmm"), text(r, "path"))
}

fn net_config(r: &Value) -> String {
    let q = r.get("queues").and_then(Value::as_u64).unwrap_or(1);
    let queues = if q > 1 {
        format!(" q{q}")
    } else {
        String::new()
    };
    format!(
        "{} {} {}{queues}",
        text(r, "vmm"),
        text(r, "nic"),
        text(r, "backend")
    )
}

fn is_rtt(r: &Value) -> bool {
    text(r, "workload").starts_with("rtt")
}

const EXITS: &str = "Exits per operation";
const STORAGE: &str = "Storage";
const NET: &str = "Network";
const FLOOR_BOOT: &str = "The floor and boot";
const CONSOLE: &str = "Console";

/// Every chart of the document, exits per operation first (they carry from machine to
/// machine). A section the document lacks gives no chart; a section whose rows lack the
/// values gives a chart without bars.
pub fn charts(doc: &Value) -> Vec<BarChart> {
    let storage = rows(doc, "storage");
    let net = rows(doc, "net");
    let console = rows(doc, "console");
    let floor = doc
        .get("floor")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let by_workload = |cfg: fn(&Value) -> String| move |r: &Value| (cfg(r), text(r, "workload"));
    let mut out = Vec::new();
    if !storage.is_empty() {
        out.push(BarChart::grouped(
            "exits_storage",
            "KVM exits per storage I/O",
            "exits/I/O",
            EXITS,
            storage,
            by_workload(storage_config),
            |r| num(r, "kvm_exits_per_io"),
        ));
        out.push(BarChart::grouped(
            "exits_storage_user",
            "Exits to the VMM per storage I/O (handled in userspace; harness only)",
            "exits/I/O",
            EXITS,
            storage,
            by_workload(storage_config),
            |r| num(r, "user_exits_per_io"),
        ));
    }
    if !net.is_empty() {
        out.push(BarChart::grouped(
            "exits_net",
            "KVM exits per packet",
            "exits/packet",
            EXITS,
            net,
            by_workload(net_config),
            |r| num(r, "kvm_exits_per_packet"),
        ));
        out.push(BarChart::grouped(
            "exits_net_user",
            "Exits to the VMM per packet (harness only)",
            "exits/packet",
            EXITS,
            net,
            by_workload(net_config),
            |r| num(r, "user_exits_per_packet"),
        ));
    }
    if !console.is_empty() {
        out.push(BarChart::grouped(
            "exits_console",
            "KVM exits per KiB of console output",
            "exits/KiB",
            EXITS,
            console,
            |r| (text(r, "vmm"), text(r, "name")),
            |r| num(r, "kvm_exits_per_kib"),
        ));
    }
    if !floor.is_empty() {
        out.push(BarChart::grouped(
            "exits_floor",
            "Exits per operation of the floor's measurements",
            "exits/op",
            EXITS,
            floor,
            |r| (text(r, "name"), "exits/op".into()),
            |r| num(r, "exits_per_op"),
        ));
    }
    if !storage.is_empty() {
        let seq = |r: &Value| text(r, "workload").starts_with("seq");
        out.push(BarChart::grouped(
            "storage_mb_s",
            "Storage throughput, sequential workloads",
            "MB/s",
            STORAGE,
            storage.iter().filter(|r| seq(r)),
            by_workload(storage_config),
            |r| num(r, "mb_per_s"),
        ));
        out.push(BarChart::grouped(
            "storage_iops",
            "Storage IOPS, random workloads",
            "IOPS",
            STORAGE,
            storage.iter().filter(|r| !seq(r)),
            by_workload(storage_config),
            |r| num(r, "iops"),
        ));
        let mut workloads: Vec<String> = Vec::new();
        for w in storage.iter().map(|r| text(r, "workload")) {
            if !workloads.contains(&w) {
                workloads.push(w);
            }
        }
        for w in workloads {
            let of_w: Vec<&Value> = storage
                .iter()
                .filter(|r| text(r, "workload") == w)
                .collect();
            let cells = [("p50", "p50_ns"), ("p99", "p99_ns")]
                .into_iter()
                .flat_map(|(q, key)| {
                    of_w.iter().map(move |r| {
                        (
                            storage_config(r),
                            q.to_string(),
                            num(r, key).map(|ns| ns / 1e3),
                        )
                    })
                });
            let c = BarChart::from_cells(
                &format!("storage_latency_{w}"),
                &format!("Storage latency, {w} (log scale)"),
                "µs",
                STORAGE,
                cells,
            );
            out.push(c.log_scale());
        }
        // virtio-blk with a colour per VMM: our modes beside QEMU's defaults and its tuned
        // configurations. Only when there is something to draw (an older document has no
        // ratio_to_qemu_best).
        let virtio: Vec<&Value> = storage
            .iter()
            .filter(|r| text(r, "path").starts_with("virtio"))
            .collect();
        let by_vmm = |r: &Value| {
            (
                format!("{} {}", text(r, "path"), text(r, "workload")),
                text(r, "vmm"),
            )
        };
        let charts = [
            BarChart::grouped(
                "storage_virtio_by_vmm",
                "virtio-blk throughput by VMM (log scale)",
                "MB/s",
                STORAGE,
                virtio.iter().copied(),
                by_vmm,
                |r| num(r, "mb_per_s"),
            )
            .log_scale(),
            BarChart::grouped(
                "storage_ratio_to_qemu_best",
                "virtio-blk: harness MB/s over QEMU at its best (the target is 1.2)",
                "x QEMU best",
                STORAGE,
                virtio
                    .iter()
                    .copied()
                    .filter(|r| num(r, "ratio_to_qemu_best").is_some()),
                by_vmm,
                |r| num(r, "ratio_to_qemu_best"),
            ),
        ];
        out.extend(charts.into_iter().filter(BarChart::has_marks));
    }
    if !net.is_empty() {
        let bulk = || net.iter().filter(|r| !is_rtt(r));
        out.push(
            BarChart::grouped(
                "net_pps",
                "Network packets per second (log scale)",
                "packets/s",
                NET,
                bulk(),
                by_workload(net_config),
                |r| num(r, "pps"),
            )
            .log_scale(),
        );
        out.push(
            BarChart::grouped(
                "net_mb_s",
                "Network throughput (log scale)",
                "MB/s",
                NET,
                bulk(),
                by_workload(net_config),
                |r| num(r, "mb_per_s"),
            )
            .log_scale(),
        );
        let rtt: Vec<&Value> = net.iter().filter(|r| is_rtt(r)).collect();
        let cells = [("p50", "p50_ns"), ("p99", "p99_ns")]
            .into_iter()
            .flat_map(|(q, key)| {
                rtt.iter().map(move |r| {
                    let series = format!("{} {q}", text(r, "workload"));
                    (net_config(r), series, num(r, key).map(|ns| ns / 1e3))
                })
            });
        let c = BarChart::from_cells(
            "net_rtt",
            "Network round trip (log scale)",
            "µs",
            NET,
            cells,
        );
        out.push(c.log_scale());
    }
    if !floor.is_empty() {
        let cells = floor.iter().flat_map(|r| {
            [("median", "ns"), ("min", "min"), ("max", "max")]
                .map(|(s, k)| (text(r, "name"), s.to_string(), num(r, k)))
        });
        out.push(
            BarChart::from_cells(
                "floor_ns",
                "The floor: ns per operation (log scale)",
                "ns",
                FLOOR_BOOT,
                cells,
            )
            .log_scale(),
        );
    }
    if let Some(boot) = doc.get("boot") {
        let mut cells = Vec::new();
        for (key, label) in [
            ("harness", "harness"),
            ("qemu_kvm", "qemu -accel kvm"),
            ("qemu_tcg", "qemu -accel tcg"),
        ] {
            let Some(t) = boot.get(key).and_then(|b| b.get("time_s")) else {
                continue;
            };
            for s in ["median", "min", "max"] {
                cells.push((label.to_string(), s.to_string(), num(t, s).map(|v| v * 1e3)));
            }
        }
        out.push(
            BarChart::from_cells(
                "boot",
                "Boot, spawn to exit, harness beside QEMU (log scale)",
                "ms",
                FLOOR_BOOT,
                cells,
            )
            .log_scale(),
        );
    }
    if !console.is_empty() {
        out.push(
            BarChart::grouped(
                "console_throughput",
                "Console output throughput (log scale)",
                "KiB/s",
                CONSOLE,
                console,
                |r| (text(r, "vmm"), text(r, "name")),
                |r| num(r, "bytes_per_s").map(|b| b / 1024.0),
            )
            .log_scale(),
        );
    }
    out
}

/// Pixels: the header (title, the run, the legend), each bar, the gap around a band.
const WIDTH: u32 = 1000;
pub const HEADER_PX: u32 = 78;
const BAR_PX: u32 = 9;
const BAND_GAP_PX: u32 = 8;
const X_AXIS_PX: u32 = 50;
const LABEL_PX: u32 = 300;

/// The chart's size in pixels.
pub fn size(c: &BarChart) -> (u32, u32) {
    let band = BAR_PX * c.series.len().max(1) as u32 + BAND_GAP_PX;
    let body = (band * c.categories.len().max(1) as u32).max(120);
    (WIDTH, HEADER_PX + body + X_AXIS_PX)
}

fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// A number as the tables and axes print it: six significant digits, no exponent for the
/// sizes a bench gives.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (5 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn draw_err<E: std::fmt::Debug>(id: &str) -> impl Fn(E) -> HarnessError + '_ {
    move |e| HarnessError::Other(format!("cannot draw chart {id}: {e:?}"))
}

/// The chart as a standalone SVG document. On a log scale the bars are drawn in log10 space
/// on a linear axis whose labels show the values.
pub fn render_svg(c: &BarChart, meta: &RunMeta) -> Result<String, HarnessError> {
    let err = draw_err(&c.id);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size(c)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let (header, body) = root.split_vertically(HEADER_PX);
        let title_font = ("sans-serif", 21).into_font().style(FontStyle::Bold);
        let small = ("sans-serif", 15).into_font();
        header
            .draw(&Text::new(
                format!("{} [{}]", c.title, c.unit),
                (10, 6),
                title_font,
            ))
            .map_err(&err)?;
        header
            .draw(&Text::new(meta.line(), (10, 30), small.clone()))
            .map_err(&err)?;
        // The legend: only series that drew something, so an empty chart has no colour.
        let mut x = 10;
        for (i, s) in c.series.iter().enumerate() {
            if !s.values.iter().flatten().any(|v| *v > 0.0) {
                continue;
            }
            header
                .draw(&Rectangle::new([(x, 54), (x + 12, 66)], colour(i).filled()))
                .map_err(&err)?;
            header
                .draw(&Text::new(s.name.clone(), (x + 16, 54), small.clone()))
                .map_err(&err)?;
            x += 28 + 8 * s.name.chars().count() as i32;
        }

        let to_axis = |v: f64| if c.log { v.log10() } else { v };
        let (x_lo, x_hi) = match (c.positive_range(), c.log) {
            (Some((lo, hi)), true) => {
                let lo = (lo.log10() - 0.5).floor();
                (lo, (hi.log10() + 0.05).ceil().max(lo + 1.0))
            }
            (Some((_, hi)), false) => (0.0, hi * 1.05),
            (None, _) => (0.0, 1.0),
        };
        let n = c.categories.len().max(1);
        let mut chart = ChartBuilder::on(&body)
            .margin_right(20)
            .margin_top(4)
            .x_label_area_size(X_AXIS_PX - 10)
            .y_label_area_size(LABEL_PX)
            .build_cartesian_2d(x_lo..x_hi, -0.5f64..(n as f64 - 0.5))
            .map_err(&err)?;
        let cats = &c.categories;
        // Band i is centred on y = n-1-i, so the first category is at the top.
        let cat_label = |y: &f64| {
            let i = n as f64 - 1.0 - y.round();
            if (y - y.round()).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            cats.get(i as usize).cloned().unwrap_or_default()
        };
        let axis_label = |x: &f64| fmt_num(if c.log { 10f64.powf(*x) } else { *x });
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(n + 1)
            .y_label_formatter(&cat_label)
            .x_labels(10)
            .x_label_formatter(&axis_label)
            .x_desc(if c.log {
                format!("{} (log scale)", c.unit)
            } else {
                c.unit.clone()
            })
            .label_style(("sans-serif", 15))
            .draw()
            .map_err(&err)?;
        let s_count = c.series.len().max(1) as f64;
        let bar = 0.8 / s_count;
        for (si, s) in c.series.iter().enumerate() {
            let fill = colour(si).filled();
            let bars = s.values.iter().enumerate().filter_map(|(ci, v)| {
                let v = (*v)?;
                if v <= 0.0 {
                    return None;
                }
                let top = (n - 1 - ci) as f64 + 0.4 - si as f64 * bar;
                Some(Rectangle::new(
                    [(x_lo, top), (to_axis(v).max(x_lo), top - bar)],
                    fill,
                ))
            });
            chart.draw_series(bars).map_err(&err)?;
        }
        if !c.has_marks() {
            let what = if c.values().next().is_some() {
                "every value is 0"
            } else {
                "no data"
            };
            body.draw(&Text::new(
                what,
                (LABEL_PX as i32 + 20, 20),
                ("sans-serif", 20)
                    .into_font()
                    .color(&RGBColor(120, 120, 120)),
            ))
            .map_err(&err)?;
        }
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_keep_six_digits() {
        assert_eq!(fmt_num(4314.326641833408), "4314.33");
        assert_eq!(fmt_num(1.0215690742006531), "1.02157");
        assert_eq!(fmt_num(0.00032020065907968994), "0.000320201");
        assert_eq!(fmt_num(1648733.6621010704), "1648734");
        assert_eq!(fmt_num(2000.0), "2000");
        assert_eq!(fmt_num(0.0), "0");
    }

    #[test]
    fn rows_become_bands_and_series() {
        let doc = json!({"storage": {"rows": [
            {"vmm": "qemu", "path": "ide_pio", "workload": "seqread", "mb_per_s": 10.0,
             "kvm_exits_per_io": 300.0, "user_exits_per_io": null, "p50_ns": 1000.0},
            {"vmm": "harness", "path": "virtio_msix", "workload": "seqread", "mb_per_s": 900.0,
             "kvm_exits_per_io": 1.0, "user_exits_per_io": 0.0, "p50_ns": null},
            {"vmm": "qemu", "path": "ide_pio", "workload": "seqwrite", "mb_per_s": 8.0,
             "kvm_exits_per_io": 290.0},
        ]}});
        let cs = charts(&doc);
        let exits = &cs[0];
        assert_eq!(exits.id, "exits_storage");
        assert_eq!(exits.categories, ["qemu ide_pio", "harness virtio_msix"]);
        assert_eq!(exits.series[0].values, [Some(300.0), Some(1.0)]);
        assert_eq!(exits.series[1].values, [Some(290.0), None]);
        assert!(exits.log, "300 over 1 spans more than {LOG_SPAN}");
        let user = &cs[1];
        assert_eq!(user.series[0].values, [None, Some(0.0)]);
        assert!(!user.has_marks());
        let mb = cs.iter().find(|c| c.id == "storage_mb_s").unwrap();
        assert!(mb.log && mb.has_marks());
        let lat = cs
            .iter()
            .find(|c| c.id == "storage_latency_seqread")
            .unwrap();
        assert_eq!(lat.series[0].values, [Some(1.0), None]);
        assert!(lat.log);
        // No net, console or floor: no chart for them.
        assert!(cs
            .iter()
            .all(|c| !c.id.contains("net") && !c.id.contains("floor")));
    }

    #[test]
    fn virtio_rows_by_vmm_each_vmm_a_colour() {
        let row = |vmm: &str, path: &str, mb: f64, ratio: Option<f64>| {
            json!({"vmm": vmm, "path": path, "workload": "randread_4k_qd1", "mb_per_s": mb,
                   "ratio_to_qemu_best": ratio})
        };
        let doc = json!({"storage": {"rows": [
            row("harness-thread", "virtio_polled", 300.0, Some(1.5)),
            row("harness-thread-nopoll", "virtio_polled", 200.0, Some(1.0)),
            row("harness-thread-io_uring", "virtio_polled", 250.0, Some(1.25)),
            row("harness-inline", "virtio_polled", 100.0, Some(0.5)),
            row("qemu", "virtio_polled", 150.0, None),
            row("qemu-iothread", "virtio_polled", 200.0, None),
            row("qemu-iothread-io_uring", "virtio_polled", 120.0, None),
            row("harness-thread", "ide_dma", 20.0, Some(1.0)),
        ]}});
        let cs = charts(&doc);
        let by_vmm = cs.iter().find(|c| c.id == "storage_virtio_by_vmm").unwrap();
        let names: Vec<&str> = by_vmm.series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "harness-thread",
                "harness-thread-nopoll",
                "harness-thread-io_uring",
                "harness-inline",
                "qemu",
                "qemu-iothread",
                "qemu-iothread-io_uring"
            ]
        );
        assert!(names.len() <= PALETTE.len(), "a colour each");
        assert_eq!(by_vmm.categories, ["virtio_polled randread_4k_qd1"]);
        let ratio = cs
            .iter()
            .find(|c| c.id == "storage_ratio_to_qemu_best")
            .unwrap();
        assert_eq!(ratio.series.len(), 4, "harness rows only");
        assert_eq!(ratio.series[0].values, [Some(1.5)]);
        // A document from before: no ratio, no chart for it.
        let old = json!({"storage": {"rows": [
            {"vmm": "qemu", "path": "virtio_msix", "workload": "w", "mb_per_s": 5.0}]}});
        let cs = charts(&old);
        assert!(cs.iter().any(|c| c.id == "storage_virtio_by_vmm"));
        assert!(!cs.iter().any(|c| c.id == "storage_ratio_to_qemu_best"));
    }

    #[test]
    fn svg_draws_a_bar_per_value() {
        let doc = json!({"console": {"rows": [
            {"vmm": "harness", "name": "serial_tx", "kvm_exits_per_kib": 2000.0},
            {"vmm": "qemu", "name": "serial_tx", "kvm_exits_per_kib": 2100.0},
        ]}});
        let c = &charts(&doc)[0];
        let svg = render_svg(c, &RunMeta::unknown()).unwrap();
        let fill = format!(
            "#{:02X}{:02X}{:02X}",
            PALETTE[0].0, PALETTE[0].1, PALETTE[0].2
        );
        // Two bars and the legend's swatch.
        assert_eq!(svg.matches(&fill).count(), 3, "{svg}");
        assert!(
            svg.contains("harness") && svg.contains("commit unknown"),
            "{svg}"
        );
        let empty = BarChart {
            series: vec![Series {
                name: "x".into(),
                values: vec![None, None],
            }],
            ..c.clone()
        };
        let svg = render_svg(&empty, &RunMeta::unknown()).unwrap();
        assert_eq!(svg.matches(&fill).count(), 0, "{svg}");
        assert!(svg.contains("no data"));
    }
}
