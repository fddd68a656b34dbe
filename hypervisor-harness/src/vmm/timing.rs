//! Where a run's start-up time and memory go: the process start, the first KVM_RUN, the first
//! KTAP line and the exit, and the harness's resident memory beside the guest's. Written to
//! `--exits-json` as `timing`, read back by `bench boot`.

use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::Instant;

/// The process start as main saw it: (wall instant, CLOCK_MONOTONIC ns).
static PROCESS_START: OnceLock<(Instant, u64)> = OnceLock::new();

/// Mark the process start; call first thing in main (later calls keep the first mark).
pub fn mark_process_start() {
    PROCESS_START.get_or_init(|| (Instant::now(), monotonic_ns()));
}

/// The mark [`mark_process_start`] took (taken now if it was never called).
pub fn process_start() -> Instant {
    PROCESS_START
        .get_or_init(|| (Instant::now(), monotonic_ns()))
        .0
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer we pass, which is live.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns: the clock a parent and its child share, so `bench` can put the
/// child's first KVM_RUN on its own time line (spawn, fork and exec included).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// CPU time this process has used so far (all threads, exec and the dynamic loader included).
pub fn process_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// `timing` in `--exits-json` (the harness's only). Milliseconds; None where the run never got
/// there (no KTAP line, say).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimingJson {
    /// main's first instruction to the first KVM_RUN, wall.
    pub start_to_first_run_ms: Option<f64>,
    /// Process CPU time (all threads, since exec) at the first KVM_RUN.
    pub cpu_to_first_run_ms: Option<f64>,
    /// CLOCK_MONOTONIC at the first KVM_RUN, for the parent's spawn-to-entry figure.
    pub first_run_monotonic_ns: Option<u64>,
    /// The first KVM_RUN to the first `KTAP version` line on the serial port.
    pub first_run_to_ktap_ms: Option<f64>,
    /// The first KTAP line to the end of the run loop (the guest's exit).
    pub ktap_to_exit_ms: Option<f64>,
    /// Process CPU time at the end of the run loop.
    pub cpu_total_ms: Option<f64>,
    /// VmRSS at the end of the run, KiB.
    pub vm_rss_kib: Option<u64>,
    /// The resident part of the guest-memory mapping at the end of the run, KiB.
    pub guest_rss_kib: Option<u64>,
}

impl TimingJson {
    /// Resident memory beyond the guest memory the guest touched, KiB.
    pub fn overhead_rss_kib(&self) -> Option<u64> {
        Some(self.vm_rss_kib?.saturating_sub(self.guest_rss_kib?))
    }
}

/// The marks a run takes, turned into [`TimingJson`] at its end.
#[derive(Debug, Default, Clone)]
pub struct BootMarks {
    /// (wall, process CPU ns, monotonic ns) just before the first KVM_RUN.
    pub first_run: Option<(Instant, u64, u64)>,
    pub first_ktap: Option<Instant>,
    /// (wall, process CPU ns) when the run loop ended.
    pub end: Option<(Instant, u64)>,
}

impl BootMarks {
    pub fn mark_first_run(&mut self) {
        if self.first_run.is_none() {
            self.first_run = Some((Instant::now(), process_cpu_ns(), monotonic_ns()));
        }
    }

    pub fn mark_end(&mut self) {
        self.end = Some((Instant::now(), process_cpu_ns()));
    }

    /// The marks as milliseconds, with the memory read at `guest_host_addr`'s mapping now.
    pub fn to_json(&self, guest_host_addr: Option<u64>) -> TimingJson {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let ns_ms = |ns: u64| ns as f64 / 1e6;
        let first_run = self.first_run;
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let smaps = guest_host_addr.and_then(|_| std::fs::read_to_string("/proc/self/smaps").ok());
        TimingJson {
            start_to_first_run_ms: first_run.map(|(t, _, _)| ms(process_start(), t)),
            cpu_to_first_run_ms: first_run.map(|(_, cpu, _)| ns_ms(cpu)),
            first_run_monotonic_ns: first_run.map(|(_, _, mono)| mono),
            first_run_to_ktap_ms: first_run
                .zip(self.first_ktap)
                .map(|((r, _, _), k)| ms(r, k)),
            ktap_to_exit_ms: self.first_ktap.zip(self.end).map(|(k, (e, _))| ms(k, e)),
            cpu_total_ms: self.end.map(|(_, cpu)| ns_ms(cpu)),
            vm_rss_kib: status.as_deref().and_then(vm_rss_kib),
            guest_rss_kib: smaps
                .as_deref()
                .zip(guest_host_addr)
                .and_then(|(s, a)| mapping_rss_kib(s, a)),
        }
    }
}

/// `VmRSS` in KiB from the text of /proc/<pid>/status.
pub fn vm_rss_kib(status: &str) -> Option<u64> {
    kib_field(status.lines().find(|l| l.starts_with("VmRSS:"))?, "VmRSS:")
}

/// `Name:   1234 kB` -> 1234.
fn kib_field(line: &str, name: &str) -> Option<u64> {
    let mut t = line.strip_prefix(name)?.split_whitespace();
    let n = t.next()?.parse().ok()?;
    (t.next() == Some("kB")).then_some(n)
}

/// The `Rss` in KiB of the mapping that starts at `start` in the text of /proc/<pid>/smaps
/// (None if no mapping starts there or it has no Rss line).
pub fn mapping_rss_kib(smaps: &str, start: u64) -> Option<u64> {
    let mut in_mapping = false;
    for line in smaps.lines() {
        // A mapping's header: `start-end perms offset dev inode [path]`; its fields are `Key: v`.
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((lo, hi)) = first.split_once('-') {
            if let (Ok(lo), Ok(_)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) {
                in_mapping = lo == start;
                continue;
            }
        }
        if in_mapping {
            if let Some(kib) = kib_field(line, "Rss:") {
                return Some(kib);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234   /usr/bin/hypervisor-harness
Size:               1024 kB
Rss:                 800 kB
Pss:                 800 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
KernelPageSize:        4 kB
Rss:                1536 kB
Anonymous:          1536 kB
7f0010000000-7f0010021000 rw-p 00000000 00:00 0 
Size:                132 kB
Rss:                  12 kB
VmFlags: rd wr mr mw me ac
";

    #[test]
    fn rss_of_one_mapping() {
        assert_eq!(mapping_rss_kib(SMAPS, 0x7f00_0000_0000), Some(1536));
        assert_eq!(mapping_rss_kib(SMAPS, 0x7f00_1000_0000), Some(12));
        assert_eq!(mapping_rss_kib(SMAPS, 0x55d0_c0a0_0000), Some(800));
        assert_eq!(mapping_rss_kib(SMAPS, 0x1000), None);
        assert_eq!(mapping_rss_kib("", 0x1000), None);
        // A mapping without an Rss line does not borrow the next one's.
        let no_rss =
            "1000-2000 rw-p 00000000 00:00 0\nSize: 4 kB\n3000-4000 rw-p 0 00:00 0\nRss: 4 kB\n";
        assert_eq!(mapping_rss_kib(no_rss, 0x1000), None);
        assert_eq!(mapping_rss_kib(no_rss, 0x3000), Some(4));
    }

    #[test]
    fn vm_rss_from_status() {
        let status =
            "Name:\thypervisor-harn\nVmPeak:\t  300000 kB\nVmRSS:\t    4321 kB\nThreads:\t2\n";
        assert_eq!(vm_rss_kib(status), Some(4321));
        assert_eq!(vm_rss_kib("VmRSS:\t abc kB\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t 12 pages\n"), None);
        assert_eq!(vm_rss_kib("Name: x\n"), None);
    }

    #[test]
    fn overhead_is_rss_beyond_the_guest() {
        let t = TimingJson {
            vm_rss_kib: Some(6000),
            guest_rss_kib: Some(1500),
            ..Default::default()
        };
        assert_eq!(t.overhead_rss_kib(), Some(4500));
        assert_eq!(TimingJson::default().overhead_rss_kib(), None);
    }

    #[test]
    fn clocks_read() {
        mark_process_start();
        assert!(monotonic_ns() > 0);
        let mut m = BootMarks::default();
        m.mark_first_run();
        let first = m.first_run;
        m.mark_first_run();
        assert_eq!(m.first_run.map(|f| f.2), first.map(|f| f.2));
        m.mark_end();
        let j = m.to_json(None);
        assert!(j.start_to_first_run_ms.is_some() && j.cpu_total_ms.is_some());
        assert_eq!(j.first_run_to_ktap_ms, None);
        assert_eq!(j.guest_rss_kib, None);
    }
}
