//! QEMU's human monitor, the part of it this VMM has: one command per line, a text reply, and
//! the prompt after it. Pure: the parser and executor see the VM only as a [`MonitorTarget`].

use super::{Framing, MonitorTarget, PciFunctionInfo, Session, VirtioQueuesInfo, MAX_LINE};
use std::fmt::Write as _;

/// Printed after each reply, as QEMU prints `(qemu) `; the client reads up to it.
pub const PROMPT: &str = "(harness) ";

const HELP: &str = "\
balloon target -- request VM to change its memory allocation (in MiB)
help -- show this help
info balloon -- show balloon information
info exits -- show the harness's VM exit counters
info pci -- show PCI info (BARs, INTx, MSI-X)
info queues -- show virtqueues (ring indices, notifies, interrupts)
info status -- show the current VM status (running|paused)
quit -- quit the emulator
";

/// A command's result: its text (empty for none) and whether the VM was quit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmpReply {
    pub text: String,
    pub quit: bool,
}

impl HmpReply {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            quit: false,
        }
    }
}

/// Run one command line against `target`.
pub fn execute(line: &str, target: &dyn MonitorTarget) -> HmpReply {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => HmpReply::text(""),
        ["help" | "?"] => HmpReply::text(HELP),
        ["quit" | "q"] => {
            target.quit();
            HmpReply {
                text: String::new(),
                quit: true,
            }
        }
        ["info", "status"] => HmpReply::text(format!(
            "VM status: {}\n",
            if target.running() {
                "running"
            } else {
                "shutdown"
            }
        )),
        ["info", "exits"] => HmpReply::text(target.exits_table()),
        ["info", "pci"] => HmpReply::text(format_pci(&target.pci())),
        ["info", "queues"] => HmpReply::text(format_queues(&target.queues())),
        ["info", "balloon"] => HmpReply::text(match target.balloon() {
            Some(b) => format!("balloon: actual={}\n", b.info().actual_bytes() >> 20),
            None => format!("{NO_BALLOON}\n"),
        }),
        ["balloon", size] => HmpReply::text(balloon(target, size)),
        ["balloon", ..] => HmpReply::text("balloon: expected one size in MiB\n"),
        ["info"] => HmpReply::text("info: expected one of balloon, exits, pci, queues, status\n"),
        _ => HmpReply::text(format!("unknown command: '{}'\n", printable(line.trim()))),
    }
}

/// QEMU's text when a balloon command finds no balloon.
pub const NO_BALLOON: &str = "No balloon device has been activated";

fn balloon(target: &dyn MonitorTarget, size: &str) -> String {
    let Some(mib) = size.parse::<u64>().ok().filter(|&m| m > 0) else {
        return "Parameter 'target' expects a size\n".into();
    };
    let Some(b) = target.balloon() else {
        return format!("{NO_BALLOON}\n");
    };
    match mib
        .checked_mul(1 << 20)
        .map(|bytes| b.set_guest_memory(bytes))
    {
        Some(Ok(())) => String::new(),
        Some(Err(e)) => format!("balloon: {}\n", printable(&e)),
        None => "Parameter 'target' expects a size\n".into(),
    }
}

/// Echoed client text: one line, control characters shown as `?`, at most 80 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn format_pci(functions: &[PciFunctionInfo]) -> String {
    let mut s = String::new();
    for f in functions {
        let _ = writeln!(
            s,
            "{} {:04x}:{:04x} class {:02x}{:02x}{:02x} command {:#06x}",
            f.bdf, f.vendor, f.device, f.class[0], f.class[1], f.class[2], f.command
        );
        for bar in &f.bars {
            let kind = match (bar.io, bar.mem64) {
                (true, _) => "I/O",
                (false, true) => "64-bit memory",
                (false, false) => "32-bit memory",
            };
            let _ = writeln!(s, "  BAR{}: {kind} at {:#x}", bar.index, bar.addr);
        }
        if f.irq_pin != 0 {
            let pin = char::from(b'A' + (f.irq_pin - 1).min(3));
            let _ = writeln!(s, "  INTx: pin {pin}, line {}", f.irq_line);
        }
        if let Some(m) = &f.msix {
            let _ = writeln!(
                s,
                "  MSI-X: {} vectors, {}{}, table in BAR{} at {:#x}",
                m.table_size,
                if m.enabled { "enabled" } else { "disabled" },
                if m.function_masked {
                    ", function masked"
                } else {
                    ""
                },
                m.table_bar,
                m.table_offset
            );
            for e in &m.entries {
                // An x86 MSI: the destination APIC ID in address bits 19:12, the vector in
                // data bits 7:0.
                let _ = writeln!(
                    s,
                    "    vector {}: address {:#x} data {:#06x} (APIC {}, vector {:#04x}){}{}",
                    e.vector,
                    e.addr,
                    e.data,
                    (e.addr >> 12) & 0xff,
                    e.data & 0xff,
                    if e.masked { ", masked" } else { "" },
                    if e.pending { ", pending" } else { "" }
                );
            }
        }
    }
    s
}

fn format_queues(functions: &[VirtioQueuesInfo]) -> String {
    if functions.is_empty() {
        return "no virtio devices\n".into();
    }
    let idx = |v: Option<u16>| v.map_or("-".to_string(), |i| i.to_string());
    let mut s = String::new();
    for f in functions {
        let _ = writeln!(
            s,
            "{} ({}): status {:#04x}, {} notifies, {} queue interrupts, {} config interrupts \
             (the function's totals)",
            f.name, f.bdf, f.status, f.notifies, f.queue_interrupts, f.config_interrupts
        );
        for q in &f.queues {
            let vector = q.msix_vector.map_or("no MSI-X vector".to_string(), |v| {
                format!("MSI-X vector {v}")
            });
            let _ = writeln!(
                s,
                "  queue {}: size {}, {}, avail.idx {}, used.idx {}, {} notify exits, {vector}",
                q.index,
                q.size,
                if q.ready { "ready" } else { "not ready" },
                idx(q.avail_idx),
                idx(q.used_idx),
                q.notify_exits
            );
            let _ = writeln!(
                s,
                "    {} notifies, {} interrupts",
                q.notifies, q.interrupts
            );
        }
    }
    s
}

/// A human-monitor connection: a banner and a prompt, then one reply per line.
pub struct HmpSession<'t> {
    target: &'t dyn MonitorTarget,
}

impl<'t> HmpSession<'t> {
    pub fn new(target: &'t dyn MonitorTarget) -> Self {
        Self { target }
    }
}

impl Session for HmpSession<'_> {
    fn framing(&self) -> Framing {
        Framing::Lines
    }

    fn greeting(&mut self) -> String {
        format!(
            "hypervisor-harness {} monitor - type 'help' for more information\n{PROMPT}",
            env!("CARGO_PKG_VERSION")
        )
    }

    fn line(&mut self, line: &str) -> (String, bool) {
        let reply = execute(line, self.target);
        if reply.quit {
            (reply.text, true)
        } else {
            (reply.text + PROMPT, false)
        }
    }

    fn overlong(&mut self) -> String {
        format!("error: command line longer than {MAX_LINE} bytes, ignored\n{PROMPT}")
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::FakeTarget;
    use super::*;

    fn run(target: &FakeTarget, line: &str) -> String {
        let r = execute(line, target);
        assert!(!r.quit, "{line} quit");
        r.text
    }

    #[test]
    fn status_exits_and_help() {
        let t = FakeTarget::default();
        assert_eq!(run(&t, "info status"), "VM status: running\n");
        assert_eq!(run(&t, "  info   status  "), "VM status: running\n");
        assert!(run(&t, "info exits").starts_with("exits: 7 total"));
        let help = run(&t, "help");
        for cmd in ["info balloon", "info pci", "info queues", "quit", "balloon"] {
            assert!(help.contains(cmd), "{cmd} missing from help");
        }
        assert_eq!(run(&t, ""), "");
    }

    #[test]
    fn pci_and_queues() {
        let t = FakeTarget::default();
        let pci = run(&t, "info pci");
        assert!(pci.contains("00:00.0 8086:1237 class 060000"), "{pci}");
        assert!(pci.contains("00:02.0 1af4:1042 class 010000"), "{pci}");
        assert!(
            pci.contains("  BAR0: 64-bit memory at 0xc0004000\n"),
            "{pci}"
        );
        assert!(pci.contains("  INTx: pin A, line 10\n"), "{pci}");
        assert!(
            pci.contains("  MSI-X: 2 vectors, enabled, table in BAR0 at 0x2000\n"),
            "{pci}"
        );
        assert!(
            pci.contains("    vector 0: address 0xfee00000 data 0x0041 (APIC 0, vector 0x41)\n"),
            "{pci}"
        );
        let q = run(&t, "info queues");
        assert!(
            q.starts_with("virtio-blk0 (00:02.0): status 0x0f, 12 notifies, 11 queue"),
            "{q}"
        );
        assert!(
            q.contains(
                "  queue 0: size 256, ready, avail.idx 12, used.idx 12, 12 notify exits, \
                 MSI-X vector 1\n"
            ),
            "{q}"
        );
        assert!(
            q.contains("MSI-X vector 1\n    12 notifies, 11 interrupts\n"),
            "{q}"
        );
    }

    #[test]
    fn bad_commands_get_one_line() {
        let t = FakeTarget::default();
        for bad in [
            "frobnicate",
            "info nothing",
            "info",
            "balloon",
            "balloon x",
            "balloon 0",
            "balloon -5",
            "balloon 1 2",
            "quit now",
            "\u{1}\u{7f}garbage\u{0}",
            &"x".repeat(5000),
        ] {
            let text = run(&t, bad);
            assert_eq!(text.lines().count(), 1, "{bad:?} -> {text:?}");
            assert!(text.len() < 200, "{bad:?} -> {text:?}");
            assert!(
                !text.chars().any(|c| c.is_control() && c != '\n'),
                "{text:?}"
            );
        }
        assert!(run(&t, "frobnicate").starts_with("unknown command: 'frobnicate'"));
        assert!(!t.quit_called());
    }

    #[test]
    fn balloon_commands() {
        let none = FakeTarget::default();
        assert_eq!(run(&none, "info balloon"), format!("{NO_BALLOON}\n"));
        assert_eq!(run(&none, "balloon 64"), format!("{NO_BALLOON}\n"));
        let t = FakeTarget::with_balloon(256 << 20);
        assert_eq!(run(&t, "info balloon"), "balloon: actual=256\n");
        assert_eq!(run(&t, "balloon 192"), "");
        let info = t.balloon.as_ref().unwrap().info.lock().unwrap().to_owned();
        assert_eq!(info.target_pages, (64 << 20) / 4096);
        assert_eq!(run(&t, "info balloon"), "balloon: actual=192\n");
        assert!(run(&t, "balloon 512").starts_with("balloon: more than"));
        assert!(run(&t, &format!("balloon {}", u64::MAX)).contains("expects a size"));
    }

    #[test]
    fn quit_quits() {
        let t = FakeTarget::default();
        let r = execute("quit", &t);
        assert!(r.quit && t.quit_called());
        let mut s = HmpSession::new(&t);
        assert!(s.greeting().ends_with(PROMPT));
        let (text, done) = s.line("info status");
        assert!(text.ends_with(PROMPT) && !done);
        assert!(s.overlong().starts_with("error: command line longer"));
    }
}
