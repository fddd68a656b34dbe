//! `bench --report DIR` and `bench report JSON --out DIR`: a `bench --json` document drawn as
//! one HTML page (DIR/index.html) with an SVG per chart beside it, each with a table of its
//! exact numbers. Self-contained: no JavaScript, nothing fetched.

pub mod charts;

use crate::error::HarnessError;
use charts::BarChart;
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where a run came from, named on every chart: `bench --json`'s `meta`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunMeta {
    /// `kvm_pvm` or hardware KVM, as `platform.kvm` says.
    pub platform: String,
    /// UTC, RFC 3339, when the run finished.
    pub date: String,
    /// `git describe --always --dirty` of the source tree, or "unknown".
    pub commit: String,
    /// The harness's command line.
    pub command: String,
}

impl RunMeta {
    /// This process's run, now, on `platform`.
    pub fn now(platform: &str) -> RunMeta {
        RunMeta {
            platform: platform.into(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            commit: source_commit().unwrap_or_else(|| "unknown".into()),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    pub fn unknown() -> RunMeta {
        RunMeta {
            platform: "unknown".into(),
            date: "unknown".into(),
            commit: "unknown".into(),
            command: "unknown".into(),
        }
    }

    /// A document's `meta`; a document from before it has its platform only.
    pub fn of(doc: &Value) -> RunMeta {
        let field = |k: &str| {
            doc.get("meta")
                .and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let platform = doc
            .get("platform")
            .and_then(|p| p.get("kvm"))
            .and_then(Value::as_str);
        let unknown = RunMeta::unknown();
        RunMeta {
            platform: field("platform")
                .or(platform.map(str::to_string))
                .unwrap_or(unknown.platform),
            date: field("date").unwrap_or(unknown.date),
            commit: field("commit").unwrap_or(unknown.commit),
            command: field("command").unwrap_or(unknown.command),
        }
    }

    /// The line each chart carries.
    pub fn line(&self) -> String {
        format!(
            "platform {} · {} · commit {} · {}",
            self.platform, self.date, self.commit, self.command
        )
    }
}

/// The source tree's commit, asked of git where this crate was built from.
fn source_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR")])
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !s.trim().is_empty()).then(|| s.trim().to_string())
}

fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// The table under a chart: a row per category, a column per series.
fn table(c: &BarChart) -> String {
    let mut t = String::from("<table>\n<tr><th></th>");
    for s in &c.series {
        t += &format!(
            "<th>{} [{}]</th>",
            html_escape(&s.name),
            html_escape(&c.unit)
        );
    }
    t += "</tr>\n";
    for (i, cat) in c.categories.iter().enumerate() {
        t += &format!("<tr><th>{}</th>", html_escape(cat));
        for s in &c.series {
            let v = s.values[i].map_or("n/a".into(), charts::fmt_num);
            t += &format!("<td>{v}</td>");
        }
        t += "</tr>\n";
    }
    t + "</table>\n"
}

/// The page: the charts in order under their sections, each as an `<img>` of its SVG file.
pub fn index_html(charts: &[BarChart], meta: &RunMeta) -> String {
    let mut h = String::from(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>bench report</title>\n<style>\n\
         body { font-family: sans-serif; margin: 1em 2em; color: #222; }\n\
         figure { margin: 1.5em 0; }\n\
         table { border-collapse: collapse; font-size: 12px; margin-top: 0.5em; }\n\
         th, td { border: 1px solid #bbb; padding: 2px 6px; }\n\
         td { text-align: right; font-family: monospace; }\n\
         th { text-align: left; background: #f2f2f2; }\n\
         </style>\n</head>\n<body>\n<h1>bench report</h1>\n",
    );
    h += &format!("<p>{}</p>\n", html_escape(&meta.line()));
    let mut section = "";
    for c in charts {
        if c.section != section {
            section = c.section;
            h += &format!("<h2>{}</h2>\n", html_escape(section));
        }
        let (w, ht) = charts::size(c);
        h += &format!(
            "<figure id=\"{id}\">\n<img src=\"{id}.svg\" width=\"{w}\" height=\"{ht}\" alt=\"{alt}\">\n",
            id = c.id,
            alt = html_escape(&c.title)
        );
        h += &table(c);
        h += "</figure>\n";
    }
    h + "</body>\n</html>\n"
}

/// Write DIR/index.html and DIR/<chart>.svg for `doc`; returns the SVGs' paths, in the
/// page's order.
pub fn write_report(doc: &Value, dir: &Path) -> Result<Vec<PathBuf>, HarnessError> {
    let meta = RunMeta::of(doc);
    let charts = charts::charts(doc);
    std::fs::create_dir_all(dir)
        .map_err(|e| HarnessError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let write = |p: &Path, text: &str| {
        std::fs::write(p, text)
            .map_err(|e| HarnessError::Other(format!("cannot write {}: {e}", p.display())))
    };
    let mut svgs = Vec::new();
    for c in &charts {
        let p = dir.join(format!("{}.svg", c.id));
        write(&p, &charts::render_svg(c, &meta)?)?;
        svgs.push(p);
    }
    write(&dir.join("index.html"), &index_html(&charts, &meta))?;
    Ok(svgs)
}

/// `bench report JSON --out DIR`.
pub fn cmd_report(json: &Path, out: &Path) -> Result<i32, HarnessError> {
    let text = std::fs::read_to_string(json)
        .map_err(|e| HarnessError::Usage(format!("cannot read {}: {e}", json.display())))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| {
        HarnessError::Usage(format!(
            "{} is not a bench --json document: {e}",
            json.display()
        ))
    })?;
    if !doc.is_object() {
        return Err(HarnessError::Usage(format!(
            "{} is not a bench --json document",
            json.display()
        )));
    }
    let svgs = write_report(&doc, out)?;
    eprintln!(
        "bench: report with {} charts in {}",
        svgs.len(),
        out.join("index.html").display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn meta_from_a_document() {
        let m = RunMeta::of(&json!({"platform": {"kvm": "kvm_pvm"}}));
        assert_eq!(m.platform, "kvm_pvm");
        assert_eq!(m.commit, "unknown");
        let m = RunMeta::of(&json!({"platform": {"kvm": "kvm_pvm"},
            "meta": {"platform": "kvm", "date": "2026-12-01T00:00:00Z", "commit": "abc",
                     "command": "hh bench"}}));
        assert_eq!(
            m.line(),
            "platform kvm · 2026-12-01T00:00:00Z · commit abc · hh bench"
        );
    }

    #[test]
    fn the_command_line() {
        use crate::cli::{Cli, Cmd};
        use crate::shared::BenchAction;
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["hh", "bench"].iter().chain(args).copied()).map(|c| c.cmd)
        };
        let Ok(Cmd::Bench(b)) = parse(&["report", "run.json", "--out", "dir"]) else {
            panic!("bench report JSON --out DIR parses");
        };
        let Some(BenchAction::Report { json, out }) = &b.action else {
            panic!("{b:?}");
        };
        assert_eq!(
            (json.to_str(), out.to_str()),
            (Some("run.json"), Some("dir"))
        );
        assert!(parse(&["report", "run.json"]).is_err(), "--out is required");
        let Ok(Cmd::Bench(b)) = parse(&["--runs", "2", "--report", "dir"]) else {
            panic!("bench --report DIR parses");
        };
        assert_eq!(b.report.as_deref().and_then(|p| p.to_str()), Some("dir"));
        assert!(b.action.is_none());
    }

    #[test]
    fn page_names_each_chart_and_escapes() {
        let doc = json!({"floor": [{"name": "a<b", "ns": 10.0, "min": 9.0, "max": 30.0,
                                    "exits_per_op": 1.0}]});
        let cs = charts::charts(&doc);
        let h = index_html(&cs, &RunMeta::unknown());
        assert!(h.contains("<img src=\"exits_floor.svg\""), "{h}");
        assert!(h.contains("<img src=\"floor_ns.svg\""), "{h}");
        assert!(
            h.contains("<th>a&lt;b</th><td>10</td><td>9</td><td>30</td>"),
            "{h}"
        );
        assert!(!h.contains("<script"), "{h}");
    }
}
