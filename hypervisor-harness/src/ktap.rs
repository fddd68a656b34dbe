//! A KTAP (version 1) result parser, fed one line at a time. Only top-level (unindented)
//! results count; subtest lines (indented) and anything unrecognised are ignored.

use std::collections::BTreeSet;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KtapSummary {
    pub version_seen: bool,
    pub plan: Option<u32>,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    /// Every result 1..=plan appeared.
    pub complete: bool,
    /// Numbers of results that were planned but never reported.
    pub missing: Vec<u32>,
    /// Lines not recorded because a cap was reached (results beyond [`MAX_RESULTS`] distinct
    /// numbers, diagnostics beyond [`MAX_DIAGNOSTICS`] lines or [`MAX_DIAGNOSTIC_BYTES`]).
    pub dropped: u64,
}

impl KtapSummary {
    /// Plan present and complete, no failure.
    pub fn all_ok(&self) -> bool {
        self.plan.is_some() && self.complete && self.failed == 0
    }
}

impl std::fmt::Display for KtapSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ktap: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )?;
        match self.plan {
            Some(p) => write!(f, " (plan {p})")?,
            None => write!(f, " (no plan)")?,
        }
        if !self.missing.is_empty() {
            let shown: Vec<String> = self
                .missing
                .iter()
                .take(10)
                .map(|n| n.to_string())
                .collect();
            let more = if self.missing.len() > 10 { ", ..." } else { "" };
            write!(f, ", missing {}{}", shown.join(", "), more)?;
        }
        if self.dropped > 0 {
            write!(f, ", {} lines not recorded (caps reached)", self.dropped)?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, Clone)]
pub struct KtapParser {
    version_seen: bool,
    plan: Option<u32>,
    passed: u32,
    failed: u32,
    skipped: u32,
    seen: BTreeSet<u32>,
    /// Diagnostic lines (`# ...`), without the leading `#`, capped.
    pub diagnostics: Vec<String>,
    diagnostic_bytes: usize,
    dropped: u64,
}

/// Diagnostic lines kept, at most.
pub const MAX_DIAGNOSTICS: usize = 10_000;
/// Bytes of diagnostics kept, at most (a guest's lines may each be up to the serial line cap).
pub const MAX_DIAGNOSTIC_BYTES: usize = 1 << 20;
/// Distinct result numbers remembered, at most. A result past it is still counted as passed,
/// failed or skipped, but its number is not remembered, so a plan larger than this can never
/// be complete: the run reports it as missing results rather than claiming them.
pub const MAX_RESULTS: usize = 65_536;

impl KtapParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, raw: &str) {
        let line = raw.trim_end_matches(['\r', '\n']);
        if line.starts_with([' ', '\t']) {
            return; // subtest
        }
        if line.starts_with("KTAP version") || line.starts_with("TAP version") {
            self.version_seen = true;
            return;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let text = rest.trim();
            if self.diagnostics.len() < MAX_DIAGNOSTICS
                && self.diagnostic_bytes + text.len() <= MAX_DIAGNOSTIC_BYTES
            {
                self.diagnostic_bytes += text.len();
                self.diagnostics.push(text.to_string());
            } else {
                self.dropped += 1;
            }
            return;
        }
        if let Some(n) = line.strip_prefix("1..") {
            if let Ok(n) = n.trim().parse::<u32>() {
                self.plan = Some(n);
            }
            return;
        }
        let (ok, rest) = if let Some(r) = line.strip_prefix("ok ") {
            (true, r)
        } else if let Some(r) = line.strip_prefix("not ok ") {
            (false, r)
        } else {
            return;
        };
        let rest = rest.trim_start();
        let num_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let Ok(num) = rest[..num_end].parse::<u32>() else {
            return;
        };
        let directive = rest[num_end..].split_once('#').map(|(_, d)| d.trim());
        let skip = directive
            .map(|d| d.len() >= 4 && d[..4].eq_ignore_ascii_case("skip"))
            .unwrap_or(false);
        if self.seen.len() < MAX_RESULTS {
            self.seen.insert(num);
        } else if !self.seen.contains(&num) {
            self.dropped += 1;
        }
        let count = if skip {
            &mut self.skipped
        } else if ok {
            &mut self.passed
        } else {
            &mut self.failed
        };
        *count = count.saturating_add(1);
    }

    pub fn summary(&self) -> KtapSummary {
        let missing: Vec<u32> = match self.plan {
            Some(p) => (1..=p)
                .filter(|n| !self.seen.contains(n))
                .take(1000)
                .collect(),
            None => Vec::new(),
        };
        KtapSummary {
            version_seen: self.version_seen,
            plan: self.plan,
            passed: self.passed,
            failed: self.failed,
            skipped: self.skipped,
            complete: self.plan.is_some() && missing.is_empty(),
            missing,
            dropped: self.dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> KtapSummary {
        let mut p = KtapParser::new();
        text.lines().for_each(|l| p.feed(l));
        p.summary()
    }

    #[test]
    fn all_pass_with_skip() {
        let s = parse(
            "boot banner\nKTAP version 1\n1..3\nok 1 serial\n# a diagnostic\n    ok 1 sub\n\
             ok 2 pci # SKIP no device\nok 3 timer\r\n",
        );
        assert!(s.version_seen);
        assert_eq!((s.passed, s.failed, s.skipped, s.plan), (2, 0, 1, Some(3)));
        assert!(s.complete && s.all_ok());
        assert_eq!(
            s.to_string(),
            "ktap: 2 passed, 0 failed, 1 skipped (plan 3)"
        );
    }

    #[test]
    fn not_ok_and_missing() {
        let s =
            parse("KTAP version 1\n1..4\nok 1 a\nnot ok 2 b\n    not ok 1 sub\nok 4 d # skip\n");
        assert_eq!((s.passed, s.failed, s.skipped), (1, 1, 1));
        assert!(!s.complete);
        assert_eq!(s.missing, vec![3]);
        assert!(!s.all_ok());
        assert!(s.to_string().ends_with("(plan 4), missing 3"));
    }

    #[test]
    fn no_plan_and_garbage() {
        let s = parse("ok\nok x\nnot ok\n1..x\nokay 1\n\u{fffd}\n");
        assert_eq!(s, KtapSummary::default());
        assert!(!s.all_ok());
        let empty = parse("KTAP version 1\n1..0\n");
        assert!(empty.all_ok());
    }

    #[test]
    fn results_and_diagnostics_are_capped() {
        let mut p = KtapParser::new();
        p.feed("KTAP version 1");
        p.feed(&format!("1..{}", MAX_RESULTS + 5));
        for n in 1..=MAX_RESULTS as u32 + 5 {
            p.feed(&format!("ok {n} t"));
        }
        assert_eq!(p.seen.len(), MAX_RESULTS);
        // A number already seen is no drop.
        p.feed("ok 1 again");
        let s = p.summary();
        assert_eq!(s.passed, MAX_RESULTS as u32 + 6);
        assert_eq!(s.dropped, 5);
        // Unremembered results can't make the plan complete.
        assert!(!s.complete);
        assert_eq!(s.missing.len(), 5);
        assert!(s.to_string().contains("5 lines not recorded"));

        let mut p = KtapParser::new();
        let long = format!("# {}", "d".repeat(60_000));
        for _ in 0..100 {
            p.feed(&long);
        }
        for _ in 0..MAX_DIAGNOSTICS {
            p.feed("# x");
        }
        let bytes: usize = p.diagnostics.iter().map(|d| d.len()).sum();
        assert!(bytes <= MAX_DIAGNOSTIC_BYTES);
        assert!(p.diagnostics.len() <= MAX_DIAGNOSTICS);
        let kept = p.diagnostics.len() as u64;
        assert_eq!(p.summary().dropped, 100 + MAX_DIAGNOSTICS as u64 - kept);
        assert!(p.summary().dropped > 0);
    }

    #[test]
    fn diagnostics_kept() {
        let mut p = KtapParser::new();
        p.feed("# bench: floor.x ns=5");
        assert_eq!(p.diagnostics, vec!["bench: floor.x ns=5".to_string()]);
    }
}
