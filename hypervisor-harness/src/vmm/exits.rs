//! Exact exit counters, and KVM's own per-VM / per-vCPU statistics (KVM_GET_STATS_FD).

use crate::devices::bus::Claim;
use crate::thread_cpu::{self, ThreadCpuClock};
use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Io,
    Mmio,
    Hlt,
    Shutdown,
    InternalError,
    FailEntry,
    IrqWindow,
    Intr,
    SystemEvent,
    Other,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::Io => "io",
            Reason::Mmio => "mmio",
            Reason::Hlt => "hlt",
            Reason::Shutdown => "shutdown",
            Reason::InternalError => "internal_error",
            Reason::FailEntry => "fail_entry",
            Reason::IrqWindow => "irq_window",
            Reason::Intr => "intr",
            Reason::SystemEvent => "system_event",
            Reason::Other => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Space {
    Pio,
    Mmio,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Pio => "pio",
            Space::Mmio => "mmio",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    Read,
    Write,
}

impl Dir {
    pub fn name(self) -> &'static str {
        match self {
            Dir::Read => "read",
            Dir::Write => "write",
        }
    }
}

const UNCLAIMED: &str = "(unclaimed)";
/// Distinct addresses tracked individually per space (MMIO, and port I/O); beyond that, exits
/// are counted per device only (and the overflow is counted), since the guest picks them.
const MAX_MMIO_ADDRS: usize = 4096;
const MAX_PIO_ADDRS: usize = 4096;

#[derive(Debug, Default, Clone)]
pub struct ExitCounters {
    pub total: u64,
    pub by_reason: BTreeMap<Reason, u64>,
    /// (space, device, dir) -> count
    pub by_device: BTreeMap<(Space, String, Dir), u64>,
    /// (space, address, dir) -> (device, count)
    pub by_addr: BTreeMap<(Space, u64, Dir), (String, u64)>,
    pub mmio_addr_overflow: u64,
    pub pio_addr_overflow: u64,
    mmio_addrs: usize,
    pio_addrs: usize,
}

impl ExitCounters {
    pub fn record(&mut self, r: Reason) {
        self.total += 1;
        *self.by_reason.entry(r).or_default() += 1;
    }

    pub fn record_access(&mut self, space: Space, addr: u64, dir: Dir, claim: &Claim) {
        self.record(match space {
            Space::Pio => Reason::Io,
            Space::Mmio => Reason::Mmio,
        });
        let dev = match claim {
            Claim::Device { name, .. } => name.as_ref(),
            Claim::Unclaimed => UNCLAIMED,
        };
        match self.by_device.get_mut(&(space, dev.to_string(), dir)) {
            Some(c) => *c += 1,
            None => {
                self.by_device.insert((space, dev.to_string(), dir), 1);
            }
        }
        let key = (space, addr, dir);
        if let Some((_, c)) = self.by_addr.get_mut(&key) {
            *c += 1;
            return;
        }
        let (tracked, cap, overflow) = match space {
            Space::Mmio => (
                &mut self.mmio_addrs,
                MAX_MMIO_ADDRS,
                &mut self.mmio_addr_overflow,
            ),
            Space::Pio => (
                &mut self.pio_addrs,
                MAX_PIO_ADDRS,
                &mut self.pio_addr_overflow,
            ),
        };
        if *tracked < cap {
            *tracked += 1;
            self.by_addr.insert(key, (dev.to_string(), 1));
        } else {
            *overflow += 1;
        }
    }

    /// Exits at one address (both directions unless `dir` is given).
    pub fn at(&self, space: Space, addr: u64, dir: Option<Dir>) -> u64 {
        self.by_addr
            .iter()
            .filter(|((s, a, d), _)| *s == space && *a == addr && dir.is_none_or(|x| x == *d))
            .map(|(_, (_, c))| c)
            .sum()
    }

    pub fn reason(&self, r: Reason) -> u64 {
        self.by_reason.get(&r).copied().unwrap_or(0)
    }

    pub fn table(&self) -> String {
        let mut s = format!("exits: {} total\n", self.total);
        for (r, c) in &self.by_reason {
            s += &format!("  {:<16} {c:>12}\n", r.name());
        }
        s += "  by device:\n";
        for ((sp, dev, dir), c) in &self.by_device {
            s += &format!(
                "    {:<5} {:<24} {:<6} {c:>12}\n",
                sp.name(),
                dev,
                dir.name()
            );
        }
        s += "  by address:\n";
        for ((sp, addr, dir), (dev, c)) in &self.by_addr {
            s += &format!(
                "    {:<5} {addr:#012x} {:<24} {:<6} {c:>12}\n",
                sp.name(),
                dev,
                dir.name()
            );
        }
        if self.mmio_addr_overflow > 0 {
            s += &format!(
                "    (+{} MMIO exits at untracked addresses)\n",
                self.mmio_addr_overflow
            );
        }
        if self.pio_addr_overflow > 0 {
            s += &format!(
                "    (+{} port I/O exits at untracked ports)\n",
                self.pio_addr_overflow
            );
        }
        s
    }

    /// The counters as `exits` in `--exits-json`.
    pub fn to_json(&self) -> ExitsJson<'_> {
        ExitsJson {
            total: self.total,
            by_reason: self
                .by_reason
                .iter()
                .map(|(r, c)| (r.name().into(), *c))
                .collect(),
            by_device: self
                .by_device
                .iter()
                .map(|((sp, dev, dir), c)| DeviceExitsJson {
                    space: sp.name().into(),
                    device: dev.into(),
                    dir: dir.name().into(),
                    count: *c,
                })
                .collect(),
            by_addr: self
                .by_addr
                .iter()
                .map(|((sp, addr, dir), (dev, c))| AddrExitsJson {
                    space: sp.name().into(),
                    addr: *addr,
                    device: dev.into(),
                    dir: dir.name().into(),
                    count: *c,
                })
                .collect(),
            mmio_addr_overflow: self.mmio_addr_overflow,
            pio_addr_overflow: self.pio_addr_overflow,
        }
    }
}

/// [`ExitCounters`] in JSON output, and as `bench` reads it back (then owned).
#[derive(Debug, Serialize, Deserialize)]
pub struct ExitsJson<'a> {
    pub total: u64,
    /// Reason name -> count.
    pub by_reason: BTreeMap<Cow<'a, str>, u64>,
    pub by_device: Vec<DeviceExitsJson<'a>>,
    pub by_addr: Vec<AddrExitsJson<'a>>,
    pub mmio_addr_overflow: u64,
    pub pio_addr_overflow: u64,
}

/// Exits at one device in one direction.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeviceExitsJson<'a> {
    pub space: Cow<'a, str>,
    pub device: Cow<'a, str>,
    pub dir: Cow<'a, str>,
    pub count: u64,
}

/// Exits at one address in one direction, and the device there.
#[derive(Debug, Serialize, Deserialize)]
pub struct AddrExitsJson<'a> {
    pub space: Cow<'a, str>,
    pub addr: u64,
    pub device: Cow<'a, str>,
    pub dir: Cow<'a, str>,
    pub count: u64,
}

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// Open the binary stats fd of a VM or vCPU fd.
pub fn stats_fd(fd: &impl AsRawFd) -> Result<OwnedFd, String> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; the fd we pass
    // is a live KVM VM or vCPU fd borrowed for the call.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD() as _) };
    if ret < 0 {
        return Err(format!(
            "KVM_GET_STATS_FD: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: ret is a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret) })
}

fn pread_exact(fd: RawFd, off: u64, len: usize) -> Result<Vec<u8>, String> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        // SAFETY: buf has len bytes; we write at most len - done bytes after offset done.
        let n = unsafe {
            libc::pread(
                fd,
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                len - done,
                (off + done as u64) as libc::off_t,
            )
        };
        if n <= 0 {
            return Err(format!(
                "reading KVM stats: {}",
                std::io::Error::last_os_error()
            ));
        }
        done += n as usize;
    }
    Ok(buf)
}

/// Read all statistics from a stats fd. Histograms (size > 1) are reported as their sum.
pub fn read_stats(fd: &OwnedFd) -> Result<Vec<(String, u64)>, String> {
    let raw = fd.as_raw_fd();
    parse_stats(|off, len| pread_exact(raw, off, len))
}

/// A C struct of integers only, so any bytes of its size are a valid value of it.
///
/// # Safety
/// The type must be `repr(C)` with integer fields (and zero-sized markers) only.
unsafe trait PlainData: Sized {}

// SAFETY: repr(C), six u32 fields.
unsafe impl PlainData for kvm_stats_header {}
// SAFETY: repr(C), u32/i16/u16/u32/u32 fields and the zero-sized `name` marker (the name
// itself follows the struct in the file and is read apart).
unsafe impl PlainData for kvm_stats_desc {}

/// A `T` from the first `size_of::<T>()` bytes of `bytes` (None if there are fewer).
fn read_plain<T: PlainData>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes, read unaligned, and PlainData
    // promises that any bytes make a valid T.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Parse the KVM binary stats format (a `kvm_stats_header`, then `num_desc` descriptors, each
/// a `kvm_stats_desc` followed by its `name_size`-byte name, and the data block) through a
/// positioned reader.
pub fn parse_stats(
    mut read_at: impl FnMut(u64, usize) -> Result<Vec<u8>, String>,
) -> Result<Vec<(String, u64)>, String> {
    let header: kvm_stats_header = read_plain(&read_at(0, size_of::<kvm_stats_header>())?)
        .ok_or("KVM stats header is short")?;
    let name_size = header.name_size as usize;
    let num_desc = header.num_desc as usize;
    if name_size == 0 || name_size > 4096 || num_desc > 100_000 {
        return Err("KVM stats header looks wrong".into());
    }
    let desc_len = size_of::<kvm_stats_desc>() + name_size;
    let descs = read_at(header.desc_offset as u64, desc_len * num_desc)?;
    let mut out = Vec::with_capacity(num_desc);
    for d in descs.chunks_exact(desc_len) {
        let (fixed, name_bytes) = d.split_at(size_of::<kvm_stats_desc>());
        let desc: kvm_stats_desc = read_plain(fixed).ok_or("KVM stats descriptor is short")?;
        let size = desc.size as usize;
        let end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        if size == 0 || size > 4096 {
            continue;
        }
        let data = read_at(header.data_offset as u64 + desc.offset as u64, size * 8)?;
        let sum = data
            .as_chunks::<8>()
            .0
            .iter()
            .map(|c| u64::from_le_bytes(*c))
            .fold(0u64, |a, b| a.wrapping_add(b));
        out.push((name, sum));
    }
    Ok(out)
}

/// KVM statistics: scope ("vm", "vcpu0") -> name -> value.
pub type KvmStats = BTreeMap<String, BTreeMap<String, u64>>;

/// The interesting subset of KVM stats, for the table.
pub fn stats_table(stats: &KvmStats) -> String {
    const KEYS: [&str; 10] = [
        "exits",
        "io_exits",
        "mmio_exits",
        "halt_exits",
        "irq_exits",
        "irq_window_exits",
        "signal_exits",
        "request_irq_exits",
        "insn_emulation",
        "irq_injections",
    ];
    let mut s = String::from("KVM statistics (KVM_GET_STATS_FD):\n");
    for (scope, m) in stats {
        let shown: Vec<String> = KEYS
            .iter()
            .filter_map(|k| m.get(*k).map(|v| format!("{k}={v}")))
            .collect();
        s += &format!(
            "  {scope}: {}\n",
            if shown.is_empty() {
                format!("{} counters", m.len())
            } else {
                shown.join(" ")
            }
        );
    }
    s
}

/// Most phase marks one run keeps; later markers are counted, not kept.
pub const MAX_PHASES: usize = 4096;
/// Longest marker kept, in bytes (a longer one is cut at a character boundary).
pub const MAX_MARKER_LEN: usize = 256;

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The guest's `# phase:` markers, bounded: markers waiting for the run loop (`inbox`, filled
/// from the serial line callback) and the marks taken (`marks`). Past [`MAX_PHASES`] in
/// either, a marker is dropped and counted; a marker is cut to [`MAX_MARKER_LEN`] bytes.
#[derive(Debug, Default)]
pub struct PhaseLog {
    inbox: Vec<String>,
    pub marks: Vec<PhaseMark>,
    pub dropped: u64,
}

impl PhaseLog {
    /// A marker line arrived (serial side).
    pub fn push(&mut self, marker: &str) {
        if self.inbox.len() + self.marks.len() >= MAX_PHASES {
            self.dropped += 1;
            return;
        }
        self.inbox
            .push(truncate_str(marker, MAX_MARKER_LEN).to_string());
    }

    /// The markers that arrived since the last call (run-loop side).
    pub fn take_inbox(&mut self) -> Vec<String> {
        std::mem::take(&mut self.inbox)
    }

    /// Keep a mark taken at a marker from [`Self::take_inbox`].
    pub fn record(&mut self, mark: PhaseMark) {
        if self.marks.len() >= MAX_PHASES {
            self.dropped += 1;
        } else {
            self.marks.push(mark);
        }
    }

    /// What was dropped, for the run's notes.
    pub fn note(&self) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "{} phase markers dropped (at most {MAX_PHASES} are kept)",
                self.dropped
            )
        })
    }
}

/// Counters at one `# phase: <marker>` line of the guest: userspace exits per device, KVM's
/// own count of every exit of the vCPU, and the CPU time the harness's threads have used so
/// far. One of `phases` in `--exits-json`, written by the run and read back by `bench`: the
/// difference between a row's `begin` and `end` marks is what the row cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseMark {
    pub marker: String,
    pub device_exits: BTreeMap<String, u64>,
    pub kvm_exits: Option<u64>,
    /// CPU time of the virtio disks' I/O threads, summed, in ns since they started
    /// (`CLOCK_THREAD_CPUTIME_ID` of each): what polling costs shows here. None without I/O
    /// threads (`--io-mode inline`, no virtio disk, QEMU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_thread_cpu_ns: Option<u64>,
    /// CPU time of the vCPU thread in ns since it started (guest time included: KVM_RUN
    /// counts as the thread's). None under QEMU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_cpu_ns: Option<u64>,
}

impl PhaseMark {
    pub fn take(marker: String, counters: &ExitCounters, vcpu_stats: Option<&OwnedFd>) -> Self {
        let mut device_exits = BTreeMap::new();
        for ((_, name, _), n) in &counters.by_device {
            *device_exits.entry(name.clone()).or_insert(0) += n;
        }
        let kvm_exits = vcpu_stats
            .and_then(|fd| read_stats(fd).ok())
            .and_then(|s| s.into_iter().find(|(k, _)| k == "exits").map(|(_, v)| v));
        Self {
            marker,
            device_exits,
            kvm_exits,
            io_thread_cpu_ns: None,
            vcpu_cpu_ns: None,
        }
    }

    /// The mark with the CPU time of `io_threads` (summed; None if there are none) and of the
    /// vCPU thread, read now.
    pub fn with_cpu(
        mut self,
        io_threads: &[ThreadCpuClock],
        vcpu: Option<&ThreadCpuClock>,
    ) -> Self {
        self.io_thread_cpu_ns = (!io_threads.is_empty()).then(|| thread_cpu::total_ns(io_threads));
        self.vcpu_cpu_ns = vcpu.and_then(ThreadCpuClock::read_ns);
        self
    }

    /// A mark with only KVM's exit count (QEMU, read through QMP).
    pub fn kvm_only(marker: String, kvm_exits: Option<u64>) -> Self {
        Self {
            marker,
            device_exits: BTreeMap::new(),
            kvm_exits,
            io_thread_cpu_ns: None,
            vcpu_cpu_ns: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counters() {
        let mut c = ExitCounters::default();
        let floor = Claim::Device {
            name: Arc::from("floor"),
            base: 0xc000,
        };
        c.record_access(Space::Pio, 0xc000, Dir::Write, &floor);
        c.record_access(Space::Pio, 0xc000, Dir::Write, &floor);
        c.record_access(Space::Pio, 0xc004, Dir::Read, &floor);
        c.record_access(Space::Mmio, 0xd000_0000, Dir::Read, &Claim::Unclaimed);
        c.record(Reason::Hlt);
        assert_eq!(c.total, 5);
        assert_eq!(c.reason(Reason::Io), 3);
        assert_eq!(c.reason(Reason::Mmio), 1);
        assert_eq!(c.at(Space::Pio, 0xc000, Some(Dir::Write)), 2);
        assert_eq!(c.at(Space::Pio, 0xc000, Some(Dir::Read)), 0);
        assert_eq!(c.at(Space::Pio, 0xc004, None), 1);
        assert_eq!(
            c.by_device[&(Space::Mmio, UNCLAIMED.to_string(), Dir::Read)],
            1
        );
        let j = serde_json::to_value(c.to_json()).unwrap();
        assert_eq!(j["total"], 5);
        assert_eq!(j["by_reason"]["io"], 3);
        assert!(c.table().contains("floor"));
    }

    #[test]
    fn mmio_address_cap() {
        let mut c = ExitCounters::default();
        for a in 0..(MAX_MMIO_ADDRS as u64 + 10) {
            c.record_access(Space::Mmio, a * 4, Dir::Read, &Claim::Unclaimed);
        }
        assert_eq!(c.by_addr.len(), MAX_MMIO_ADDRS);
        assert_eq!(c.mmio_addr_overflow, 10);
        assert_eq!(c.total, MAX_MMIO_ADDRS as u64 + 10);
    }

    #[test]
    fn pio_address_cap() {
        let mut c = ExitCounters::default();
        for port in 0..(MAX_PIO_ADDRS as u64 + 7) {
            c.record_access(Space::Pio, port, Dir::Write, &Claim::Unclaimed);
        }
        // MMIO has its own budget.
        c.record_access(Space::Mmio, 0xd000_0000, Dir::Read, &Claim::Unclaimed);
        assert_eq!(c.by_addr.len(), MAX_PIO_ADDRS + 1);
        assert_eq!(c.pio_addr_overflow, 7);
        assert_eq!(c.mmio_addr_overflow, 0);
        // A tracked port keeps counting.
        c.record_access(Space::Pio, 0, Dir::Write, &Claim::Unclaimed);
        assert_eq!(c.at(Space::Pio, 0, None), 2);
        assert!(c.table().contains("+7 port I/O exits"));
        assert_eq!(
            serde_json::to_value(c.to_json()).unwrap()["pio_addr_overflow"],
            7
        );
    }

    #[test]
    fn phase_marks_carry_the_threads_cpu_time_in_the_json() {
        let clock = ThreadCpuClock::current().unwrap();
        let mark =
            PhaseMark::kvm_only("begin x".into(), Some(3)).with_cpu(&[clock, clock], Some(&clock));
        let j = serde_json::to_value(&mark).unwrap();
        let io = j["io_thread_cpu_ns"].as_u64().expect("io_thread_cpu_ns");
        let vcpu = j["vcpu_cpu_ns"].as_u64().expect("vcpu_cpu_ns");
        assert!(io > 0 && vcpu > 0, "{j}");
        let back: PhaseMark = serde_json::from_value(j).unwrap();
        assert_eq!(
            (back.io_thread_cpu_ns, back.vcpu_cpu_ns),
            (Some(io), Some(vcpu))
        );
        // No I/O threads and no vCPU clock (inline I/O, QEMU): the fields are left out, and a
        // document written before they existed still reads.
        let bare = PhaseMark::kvm_only("end x".into(), None).with_cpu(&[], None);
        let j = serde_json::to_value(&bare).unwrap();
        assert!(j.get("io_thread_cpu_ns").is_none() && j.get("vcpu_cpu_ns").is_none());
        let old: PhaseMark =
            serde_json::from_str(r#"{"marker":"end x","device_exits":{},"kvm_exits":5}"#).unwrap();
        assert_eq!((old.io_thread_cpu_ns, old.vcpu_cpu_ns), (None, None));
    }

    #[test]
    fn phase_markers_are_capped_and_counted() {
        let mut log = PhaseLog::default();
        let long = "é".repeat(MAX_MARKER_LEN);
        log.push(&long);
        for i in 0..MAX_PHASES + 10 {
            log.push(&format!("begin {i}"));
            // The run loop drains now and then.
            if i % 100 == 0 {
                for m in log.take_inbox() {
                    log.record(PhaseMark::kvm_only(m, None));
                }
            }
        }
        for m in log.take_inbox() {
            log.record(PhaseMark::kvm_only(m, None));
        }
        assert_eq!(log.marks.len(), MAX_PHASES);
        assert_eq!(log.dropped, 11);
        assert!(log.marks[0].marker.len() <= MAX_MARKER_LEN);
        assert!(log.marks[0].marker.starts_with('é'));
        assert_eq!(
            log.note().unwrap(),
            format!("11 phase markers dropped (at most {MAX_PHASES} are kept)")
        );
        // Nothing more is kept however many arrive.
        for _ in 0..10_000 {
            log.push("x");
        }
        assert!(log.take_inbox().is_empty());
        assert_eq!(log.dropped, 10_011);
        assert_eq!(PhaseLog::default().note(), None);
    }

    #[test]
    fn stats_binary_format() {
        // header (24) | descriptors at 24 | data at 200
        let name_size = 16usize;
        let mut buf = vec![0u8; 256];
        let put32 =
            |b: &mut Vec<u8>, o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        put32(&mut buf, 4, name_size as u32);
        put32(&mut buf, 8, 2);
        put32(&mut buf, 16, 24);
        put32(&mut buf, 20, 200);
        let d0 = 24;
        buf[d0 + 6..d0 + 8].copy_from_slice(&1u16.to_le_bytes());
        put32(&mut buf, d0 + 8, 0);
        buf[d0 + 16..d0 + 21].copy_from_slice(b"exits");
        let d1 = d0 + 16 + name_size;
        buf[d1 + 6..d1 + 8].copy_from_slice(&2u16.to_le_bytes());
        put32(&mut buf, d1 + 8, 8);
        buf[d1 + 16..d1 + 20].copy_from_slice(b"hist");
        buf[200..208].copy_from_slice(&42u64.to_le_bytes());
        buf[208..216].copy_from_slice(&1u64.to_le_bytes());
        buf[216..224].copy_from_slice(&2u64.to_le_bytes());
        let stats = parse_stats(|off, len| {
            buf.get(off as usize..off as usize + len)
                .map(|s| s.to_vec())
                .ok_or_else(|| "eof".to_string())
        })
        .unwrap();
        assert_eq!(
            stats,
            vec![("exits".to_string(), 42), ("hist".to_string(), 3)]
        );
    }
}
