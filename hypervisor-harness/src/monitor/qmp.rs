//! QMP, in QEMU's shapes: the greeting, capabilities negotiation first, then `query-status`,
//! `query-stats`, `query-balloon`, `balloon`, `human-monitor-command` and `quit`, one JSON
//! object per line each way, with QEMU's error classes and texts. Then a QMP client (QEMU's
//! own Python `qemu.qmp`, or `qemu.rs`'s poller) drives this VMM and QEMU alike. Pure: the VM
//! is a [`MonitorTarget`].

use super::hmp::{self, NO_BALLOON};
use super::{Framing, MonitorTarget, Session, StatsTarget, MAX_LINE};
use serde_json::{json, Map, Value};

/// QMP's greeting: the version as QEMU gives its own (here the harness's).
pub fn greeting() -> Value {
    let part = |s: &str| s.parse::<u64>().unwrap_or(0);
    json!({"QMP": {
        "version": {
            "qemu": {
                "major": part(env!("CARGO_PKG_VERSION_MAJOR")),
                "minor": part(env!("CARGO_PKG_VERSION_MINOR")),
                "micro": part(env!("CARGO_PKG_VERSION_PATCH")),
            },
            "package": concat!("hypervisor-harness ", env!("CARGO_PKG_VERSION")),
        },
        "capabilities": [],
    }})
}

fn error(class: &str, desc: impl Into<String>) -> Value {
    json!({"error": {"class": class, "desc": desc.into()}})
}

fn generic(desc: impl Into<String>) -> Value {
    error("GenericError", desc)
}

/// One QMP connection: commands are refused until `qmp_capabilities`, as QEMU refuses them.
pub struct QmpSession<'t> {
    target: &'t dyn MonitorTarget,
    negotiated: bool,
}

impl<'t> QmpSession<'t> {
    pub fn new(target: &'t dyn MonitorTarget) -> Self {
        Self {
            target,
            negotiated: false,
        }
    }

    /// The reply objects to one input line (a reply, then any event), and whether the VM quit.
    pub fn handle(&mut self, line: &str) -> (Vec<Value>, bool) {
        if line.trim().is_empty() {
            return (Vec::new(), false);
        }
        let input: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => return (vec![generic(format!("JSON parse error, {e}"))], false),
        };
        let Value::Object(input) = input else {
            return (vec![generic("QMP input must be a JSON object")], false);
        };
        let id = input.get("id").cloned();
        let (mut reply, quit) = self.command(&input);
        if let (Some(id), Value::Object(r)) = (id, &mut reply) {
            r.insert("id".into(), id);
        }
        let mut out = vec![reply];
        if quit {
            out.push(json!({
                "timestamp": timestamp(),
                "event": "SHUTDOWN",
                "data": {"guest": false, "reason": "host-qmp-quit"},
            }));
        }
        (out, quit)
    }

    fn command(&mut self, input: &Map<String, Value>) -> (Value, bool) {
        let Some(name) = input.get("execute") else {
            return (generic("QMP input lacks member 'execute'"), false);
        };
        let Some(name) = name.as_str() else {
            return (
                generic("QMP input member 'execute' must be a string"),
                false,
            );
        };
        let empty = Map::new();
        let args = match input.get("arguments") {
            None => &empty,
            Some(Value::Object(a)) => a,
            Some(_) => {
                return (
                    generic("QMP input member 'arguments' must be an object"),
                    false,
                )
            }
        };
        if name == "qmp_capabilities" {
            if self.negotiated {
                return (
                    error(
                        "CommandNotFound",
                        "Capabilities negotiation is already complete, command ignored",
                    ),
                    false,
                );
            }
            self.negotiated = true;
            return (json!({"return": {}}), false);
        }
        if !self.negotiated {
            return (
                error(
                    "CommandNotFound",
                    "Expecting capabilities negotiation with 'qmp_capabilities'",
                ),
                false,
            );
        }
        let t = self.target;
        let ret = match name {
            "quit" => {
                t.quit();
                return (json!({"return": {}}), true);
            }
            "query-status" => Ok(if t.running() {
                json!({"running": true, "status": "running"})
            } else {
                json!({"running": false, "status": "shutdown"})
            }),
            "query-stats" => query_stats(t, args),
            "query-balloon" => match t.balloon() {
                Some(b) => Ok(json!({"actual": b.info().actual_bytes()})),
                None => Err(error("DeviceNotActive", NO_BALLOON)),
            },
            "balloon" => balloon(t, args),
            "human-monitor-command" => match args.get("command-line").and_then(Value::as_str) {
                Some(line) => {
                    let r = hmp::execute(line, t);
                    if r.quit {
                        return (json!({"return": ""}), true);
                    }
                    Ok(Value::String(r.text))
                }
                None => Err(generic("Parameter 'command-line' is missing")),
            },
            other => Err(error(
                "CommandNotFound",
                format!("The command {} has not been found", shorten(other)),
            )),
        };
        match ret {
            Ok(v) => (json!({"return": v}), false),
            Err(e) => (e, false),
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

fn balloon(t: &dyn MonitorTarget, args: &Map<String, Value>) -> Result<Value, Value> {
    let Some(value) = args.get("value") else {
        return Err(generic("Parameter 'value' is missing"));
    };
    let Some(bytes) = value.as_u64().filter(|&b| b > 0) else {
        return Err(generic("Parameter 'target' expects a size"));
    };
    let b = t
        .balloon()
        .ok_or_else(|| error("DeviceNotActive", NO_BALLOON))?;
    b.set_guest_memory(bytes).map_err(generic)?;
    Ok(json!({}))
}

/// `query-stats` as QEMU answers it: a list of providers with their `stats` as name/value
/// pairs; per vCPU with its `qom-path`, per VM without.
fn query_stats(t: &dyn MonitorTarget, args: &Map<String, Value>) -> Result<Value, Value> {
    let target = match args.get("target").map(|v| v.as_str()) {
        None => return Err(generic("Parameter 'target' is missing")),
        Some(Some("vm")) => StatsTarget::Vm,
        Some(Some("vcpu")) => StatsTarget::Vcpu,
        Some(_) => return Err(generic("Parameter 'target' does not accept value")),
    };
    // `providers: [{"provider": "kvm"}, ...]` narrows the answer, as in QEMU.
    let wanted: Option<Vec<&str>> = args.get("providers").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(|p| p.get("provider").and_then(Value::as_str))
            .collect()
    });
    let list: Vec<Value> = t
        .stats(target)
        .into_iter()
        .filter(|p| {
            wanted
                .as_ref()
                .is_none_or(|w| w.contains(&p.provider.as_str()))
        })
        .map(|p| {
            let stats: Vec<Value> = p
                .stats
                .iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect();
            let mut o = json!({"provider": p.provider, "stats": stats});
            if let Some(path) = p.qom_path {
                o["qom-path"] = Value::String(path);
            }
            o
        })
        .collect();
    Ok(Value::Array(list))
}

/// QMP's event timestamp.
fn timestamp() -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    json!({"seconds": now.as_secs(), "microseconds": now.subsec_micros()})
}

fn lines(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\r\n")).collect()
}

impl Session for QmpSession<'_> {
    fn framing(&self) -> Framing {
        Framing::Json
    }

    fn greeting(&mut self) -> String {
        lines(&[greeting()])
    }

    fn line(&mut self, line: &str) -> (String, bool) {
        let (replies, quit) = self.handle(line);
        (lines(&replies), quit)
    }

    fn overlong(&mut self) -> String {
        lines(&[generic(format!(
            "JSON parse error, input longer than {MAX_LINE} bytes"
        ))])
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTarget;
    use super::*;

    fn one(s: &mut QmpSession, line: &str) -> Value {
        let (mut r, quit) = s.handle(line);
        assert!(!quit, "{line} quit");
        assert_eq!(r.len(), 1, "{line}");
        r.remove(0)
    }

    fn class(v: &Value) -> &str {
        v["error"]["class"]
            .as_str()
            .unwrap_or_else(|| panic!("no error: {v}"))
    }

    #[test]
    fn greeting_has_qemus_shape() {
        let g = greeting();
        assert!(g["QMP"]["version"]["qemu"]["major"].is_u64());
        assert!(g["QMP"]["version"]["package"].is_string());
        assert_eq!(g["QMP"]["capabilities"], json!([]));
    }

    #[test]
    fn negotiation_comes_first() {
        let t = FakeTarget::default();
        let mut s = QmpSession::new(&t);
        let r = one(&mut s, r#"{"execute": "query-status"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert!(r["error"]["desc"]
            .as_str()
            .unwrap()
            .contains("qmp_capabilities"));
        let r = one(&mut s, r#"{"execute": "quit"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert!(!t.quit_called(), "quit before negotiation is refused");
        let r = one(&mut s, r#"{"execute": "qmp_capabilities", "id": 7}"#);
        assert_eq!(r, json!({"return": {}, "id": 7}));
        let r = one(&mut s, r#"{"execute": "qmp_capabilities"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        let r = one(&mut s, r#"{"execute": "query-status", "id": "a"}"#);
        assert_eq!(
            r,
            json!({"return": {"running": true, "status": "running"}, "id": "a"})
        );
    }

    fn negotiated(t: &FakeTarget) -> QmpSession<'_> {
        let mut s = QmpSession::new(t);
        one(&mut s, r#"{"execute": "qmp_capabilities"}"#);
        s
    }

    #[test]
    fn bad_input_is_a_generic_error() {
        let t = FakeTarget::default();
        let mut s = negotiated(&t);
        for bad in [
            "{",
            "not json",
            "[1, 2]",
            "42",
            r#"{"no": "execute"}"#,
            r#"{"execute": 5}"#,
            r#"{"execute": "balloon", "arguments": []}"#,
            "\u{0}\u{1}\u{ff}",
        ] {
            let r = one(&mut s, bad);
            assert_eq!(class(&r), "GenericError", "{bad}");
        }
        let r = one(&mut s, r#"{"execute": "frobnicate"}"#);
        assert_eq!(class(&r), "CommandNotFound");
        assert_eq!(
            r["error"]["desc"],
            "The command frobnicate has not been found"
        );
        assert!(s.handle("   ").0.is_empty());
        assert!(s.overlong().contains("GenericError"));
        // Still serving.
        let r = one(&mut s, r#"{"execute": "query-status"}"#);
        assert_eq!(r["return"]["running"], true);
        assert!(!t.quit_called());
    }

    #[test]
    fn query_stats_reads_as_qemus() {
        let t = FakeTarget::default();
        let mut s = negotiated(&t);
        let r = one(
            &mut s,
            r#"{"execute": "query-stats", "arguments": {"target": "vcpu"}}"#,
        );
        // The same parser qemu.rs reads QEMU's answer with.
        let m = crate::qemu::parse_query_stats(&r["return"]);
        assert_eq!(m.get("exits"), Some(&40));
        assert_eq!(m.get("userspace_exits"), Some(&7));
        assert_eq!(r["return"][0]["qom-path"], "/machine/unattached/device[0]");
        let r = one(
            &mut s,
            r#"{"execute": "query-stats", "arguments": {"target": "vcpu", "providers": [{"provider": "kvm"}]}}"#,
        );
        assert_eq!(r["return"].as_array().unwrap().len(), 1);
        let r = one(
            &mut s,
            r#"{"execute": "query-stats", "arguments": {"target": "vm"}}"#,
        );
        assert!(r["return"][0].get("qom-path").is_none());
        for bad in [
            r#"{"execute": "query-stats"}"#,
            r#"{"execute": "query-stats", "arguments": {"target": "cpu"}}"#,
        ] {
            assert_eq!(class(&one(&mut s, bad)), "GenericError");
        }
    }

    #[test]
    fn balloon_and_hmp_passthrough() {
        let none = FakeTarget::default();
        let mut s = negotiated(&none);
        let r = one(&mut s, r#"{"execute": "query-balloon"}"#);
        assert_eq!(class(&r), "DeviceNotActive");
        assert_eq!(r["error"]["desc"], NO_BALLOON);
        let r = one(
            &mut s,
            r#"{"execute": "balloon", "arguments": {"value": 1048576}}"#,
        );
        assert_eq!(class(&r), "DeviceNotActive");

        let t = FakeTarget::with_balloon(256 << 20);
        let mut s = negotiated(&t);
        let r = one(&mut s, r#"{"execute": "query-balloon"}"#);
        assert_eq!(r, json!({"return": {"actual": 256u64 << 20}}));
        let r = one(
            &mut s,
            r#"{"execute": "balloon", "arguments": {"value": 201326592}}"#,
        );
        assert_eq!(r, json!({"return": {}}));
        let r = one(&mut s, r#"{"execute": "query-balloon"}"#);
        assert_eq!(r["return"]["actual"], 192u64 << 20);
        for bad in [
            r#"{"execute": "balloon"}"#,
            r#"{"execute": "balloon", "arguments": {"value": -1}}"#,
            r#"{"execute": "balloon", "arguments": {"value": "x"}}"#,
            r#"{"execute": "balloon", "arguments": {"value": 1099511627776}}"#,
        ] {
            assert_eq!(class(&one(&mut s, bad)), "GenericError", "{bad}");
        }
        let r = one(
            &mut s,
            r#"{"execute": "human-monitor-command", "arguments": {"command-line": "info balloon"}}"#,
        );
        assert_eq!(r["return"], "balloon: actual=192\n");
    }

    #[test]
    fn quit_answers_then_ends() {
        let t = FakeTarget::default();
        let mut s = negotiated(&t);
        let (r, quit) = s.handle(r#"{"execute": "quit", "id": 1}"#);
        assert!(quit && t.quit_called());
        assert_eq!(r[0], json!({"return": {}, "id": 1}));
        assert_eq!(r[1]["event"], "SHUTDOWN");
    }
}
