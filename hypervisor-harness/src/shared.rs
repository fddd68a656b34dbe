//! What `cli`, `bench` and `qemu` share: the QEMU accelerator choice, how a guest run ended
//! and its exit code, the bench arguments, the default kernel image and the JSON output (the
//! `--exits-json` document is written by `run` and `qemu` and read back by `bench`, through the
//! same types). It lives apart so that those three import it, not one another.

use crate::error::*;
use crate::ktap::KtapSummary;
use crate::platform::PlatformJson;
use crate::vmm::exits::{ExitsJson, KvmStats, PhaseMark};
use crate::vmm::memory;
use crate::vmm::timing::TimingJson;
use clap::{Args, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// As QEMU's and our command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Auto => "auto",
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// `bench`: its arguments.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub action: Option<BenchAction>,
    /// Kernel image (PVH ELF). Defaults to the image this build produced.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Boot runs per VMM.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: u32,
    /// Write the results as JSON.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also write the results as a report: DIR/index.html with an SVG chart per figure.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// QEMU accelerator for the comparison runs.
    #[arg(long, value_enum, default_value = "auto")]
    pub qemu_accel: Accel,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    pub qemu: String,
    /// Guest RAM for every run.
    #[arg(long, default_value = "256M", value_parser = memory::parse_mem)]
    pub mem: u64,
    /// Per-run timeout in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    /// Leave out the storage section (IDE against virtio-blk).
    #[arg(long)]
    pub skip_storage: bool,
    /// Leave out the network section (virtio-net over each backend, against QEMU).
    #[arg(long)]
    pub skip_net: bool,
    /// Instead of the benchmarks: the CI profile, a short storage run whose exact exit counts
    /// per I/O (IDE PIO, IDE DMA, virtio-blk MSI-X on an I/O thread and inline) must match
    /// hypervisor-harness/bench-profile.json; exit code 1 when they do not.
    #[arg(long)]
    pub ci_profile: bool,
    /// Test only: the guest adds one exit per IDE I/O, which the profile must catch.
    #[arg(long, hide = true, requires = "ci_profile")]
    pub ci_profile_inject_exit: bool,
}

/// `bench`'s subcommands (without one, `bench` runs the benchmarks).
#[derive(Subcommand, Debug)]
pub enum BenchAction {
    /// Compare two `bench --json` documents row by row: the change in median with a 95%
    /// interval and a Mann-Whitney U test, and exits per operation exactly. Exit code 1 when a
    /// row got significantly slower by more than the threshold or its exits changed.
    Compare {
        /// A's document, or several runs of A comma-separated (then each row is tested over
        /// the runs' medians).
        #[arg(value_delimiter = ',', num_args = 1, required = true)]
        a: Vec<PathBuf>,
        /// B's, likewise.
        #[arg(value_delimiter = ',', num_args = 1, required = true)]
        b: Vec<PathBuf>,
        /// The smallest slowdown that counts, in percent.
        #[arg(long, value_name = "PCT", default_value_t = 10.0)]
        threshold: f64,
    },
    /// Draw a `bench --json` document as `bench --report` does.
    Report {
        /// The document.
        json: PathBuf,
        /// Where index.html and the SVGs go (created when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The image the build produced, if build.rs set KERNEL_IMAGE.
pub fn default_kernel() -> Option<PathBuf> {
    option_env!("KERNEL_IMAGE").map(PathBuf::from)
}

pub fn kernel_or_default(k: &Option<PathBuf>) -> Result<PathBuf, HarnessError> {
    k.clone().or_else(default_kernel).ok_or_else(|| {
        HarnessError::Usage("no --kernel given and this build has no default kernel image".into())
    })
}

/// How a guest run ended, independent of the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    DebugExit(u32),
    Timeout(u64),
    /// Ended by the monitor's `quit` (a success: the guest ran until it was told to stop).
    Quit,
    Abnormal(String),
}

/// The exit code and a one-line message for stderr (None when all passed).
pub fn outcome_code(o: &Outcome, ktap: &KtapSummary) -> (i32, Option<String>) {
    use crate::devices::debug_exit::{GUEST_CRASHED, GUEST_FAILED, GUEST_PASSED};
    match o {
        Outcome::DebugExit(GUEST_PASSED) if ktap.all_ok() => (EXIT_PASSED, None),
        Outcome::DebugExit(GUEST_PASSED) => (
            EXIT_FAILED,
            Some(format!(
                "guest reported success but the KTAP output is {}",
                if ktap.plan.is_none() {
                    "missing its plan"
                } else if ktap.failed > 0 {
                    "showing failures"
                } else {
                    "incomplete"
                }
            )),
        ),
        Outcome::DebugExit(GUEST_FAILED) => (
            EXIT_FAILED,
            Some("guest reported failed tests (debug-exit 0x11)".into()),
        ),
        Outcome::DebugExit(GUEST_CRASHED) => {
            (EXIT_CRASHED, Some("guest crashed (debug-exit 0x12)".into()))
        }
        Outcome::DebugExit(v) => (
            EXIT_ABNORMAL,
            Some(format!(
                "guest wrote unknown exit code {v:#x} to the debug-exit port"
            )),
        ),
        Outcome::Quit => (EXIT_PASSED, None),
        Outcome::Timeout(s) => (
            EXIT_TIMEOUT,
            Some(format!("guest did not exit within {s} s")),
        ),
        Outcome::Abnormal(m) => (EXIT_ABNORMAL, Some(format!("VM ended abnormally: {m}"))),
    }
}

/// How a run ended, in `--exits-json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeJson {
    /// "debug_exit", "timeout", "quit" (by the monitor) or "abnormal".
    pub kind: Cow<'static, str>,
    /// The value the guest wrote to the debug-exit port.
    pub guest_value: Option<u32>,
    pub exit_code: i32,
    pub message: Option<String>,
}

impl OutcomeJson {
    pub fn new(o: &Outcome, exit_code: i32, message: &Option<String>) -> Self {
        let (kind, guest_value) = match o {
            Outcome::DebugExit(v) => ("debug_exit", Some(*v)),
            Outcome::Timeout(_) => ("timeout", None),
            Outcome::Quit => ("quit", None),
            Outcome::Abnormal(_) => ("abnormal", None),
        };
        Self {
            kind: kind.into(),
            guest_value,
            exit_code,
            message: message.clone(),
        }
    }
}

/// The KTAP summary in `--exits-json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KtapJson<'a> {
    pub plan: Option<u32>,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub complete: bool,
    pub missing: Cow<'a, [u32]>,
}

impl<'a> From<&'a KtapSummary> for KtapJson<'a> {
    fn from(k: &'a KtapSummary) -> Self {
        Self {
            plan: k.plan,
            passed: k.passed,
            failed: k.failed,
            skipped: k.skipped,
            complete: k.complete,
            missing: Cow::Borrowed(&k.missing),
        }
    }
}

/// The floor device's BARs, where the harness put them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloorBars {
    pub bar0: u64,
    pub bar1: u64,
}

/// The `--exits-json` document of `run` (`vmm` "harness") and `qemu` (`vmm` "qemu"). `accel`
/// is QEMU's only; `floor` and `exits` (the harness's own counters) the harness's only.
/// Written borrowing the run's results; `bench` reads it back owned (`RunJson<'static>`).
#[derive(Debug, Serialize, Deserialize)]
pub struct RunJson<'a> {
    pub vmm: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accel: Option<Cow<'a, str>>,
    pub platform: PlatformJson,
    pub outcome: OutcomeJson,
    pub ktap: KtapJson<'a>,
    pub elapsed_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor: Option<FloorBars>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exits: Option<ExitsJson<'a>>,
    /// KVM's statistics; null when QEMU gave none.
    pub kvm_stats: Option<Cow<'a, KvmStats>>,
    pub notes: Cow<'a, [String]>,
    pub phases: Cow<'a, [PhaseMark]>,
    /// Start-up phases and resident memory (the harness's only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<TimingJson>,
}

/// Write `v` as pretty-printed JSON and a newline.
pub fn write_json<T: Serialize + ?Sized>(path: &Path, v: &T) -> Result<(), HarnessError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| HarnessError::Other(e.to_string()))?;
    std::fs::write(path, text + "\n")
        .map_err(|e| HarnessError::Other(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let ok = KtapSummary {
            plan: Some(1),
            passed: 1,
            complete: true,
            ..Default::default()
        };
        let failed = KtapSummary {
            plan: Some(2),
            passed: 1,
            failed: 1,
            complete: true,
            ..Default::default()
        };
        let partial = KtapSummary {
            plan: Some(2),
            passed: 1,
            missing: vec![2],
            ..Default::default()
        };
        assert_eq!(outcome_code(&Outcome::DebugExit(0x10), &ok), (0, None));
        assert_eq!(outcome_code(&Outcome::DebugExit(0x10), &failed).0, 1);
        assert_eq!(outcome_code(&Outcome::DebugExit(0x10), &partial).0, 1);
        assert_eq!(
            outcome_code(&Outcome::DebugExit(0x10), &KtapSummary::default()).0,
            1
        );
        assert_eq!(outcome_code(&Outcome::DebugExit(0x11), &ok).0, 1);
        assert_eq!(outcome_code(&Outcome::DebugExit(0x12), &ok).0, 2);
        assert_eq!(
            outcome_code(&Outcome::Timeout(5), &ok),
            (3, Some("guest did not exit within 5 s".into()))
        );
        assert_eq!(outcome_code(&Outcome::DebugExit(0x42), &ok).0, 4);
        // Quit needs no KTAP: an idle guest runs none.
        assert_eq!(
            outcome_code(&Outcome::Quit, &KtapSummary::default()),
            (0, None)
        );
        assert_eq!(outcome_code(&Outcome::Abnormal("x".into()), &ok).0, 4);
    }
}
