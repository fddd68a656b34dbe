//! The storage section of `bench`: the guest's `bench=blk` over an IDE disk and a virtio-blk
//! disk, under our harness (virtio queues on an I/O thread, and inline in the vCPU thread) and
//! under QEMU, plus the host's own `pread`/`pwrite` on the same kind of image as the ceiling.
//!
//! Exits per I/O come from the harness's counters, snapshotted at the guest's
//! `# phase: begin/end <row>` lines (`phases` in `--exits-json`): userspace exits at the disk
//! devices, and KVM's own count of every exit (ioeventfd notifies and interrupts included).

use super::{parse_bench_line, spawn_self, BenchLine};
use crate::error::HarnessError;
use crate::vmm::exits::PhaseMark;
use serde::Serialize;
use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Image size for the benchmark disks: sequential rows wrap around inside it.
pub const IMAGE_BYTES: u64 = 64 << 20;

/// One `blk.<path>.<workload>` row from one VMM.
#[derive(Debug, Clone, Serialize)]
pub struct BlkRow {
    pub vmm: String,
    pub path: String,
    pub workload: String,
    pub n: u64,
    pub bytes: u64,
    pub total_ns: f64,
    pub p50_ns: Option<f64>,
    pub p99_ns: Option<f64>,
    /// Userspace exits at the disk's devices per I/O (harness only).
    pub user_exits_per_io: Option<f64>,
    /// Every exit KVM counted (all causes) per I/O (harness only).
    pub kvm_exits_per_io: Option<f64>,
    /// CPU time of the harness's virtio I/O threads per I/O, ns: what polling costs (harness
    /// with I/O threads only; the phase marks' `io_thread_cpu_ns`).
    pub io_thread_cpu_ns_per_io: Option<f64>,
    /// CPU time of the vCPU thread per I/O, ns, guest time included (harness only; the
    /// phase marks' `vcpu_cpu_ns`).
    pub vcpu_cpu_ns_per_io: Option<f64>,
    /// The p50 of each batch of consecutive I/Os (the guest's `batch_p50=`): the row's samples
    /// for `bench compare`, written as `storage.samples`.
    #[serde(skip)]
    pub batch_p50_ns: Vec<f64>,
}

impl BlkRow {
    pub fn mb_per_s(&self) -> Option<f64> {
        (self.total_ns > 0.0).then(|| self.bytes as f64 / self.total_ns * 1e3)
    }

    pub fn iops(&self) -> Option<f64> {
        (self.total_ns > 0.0).then(|| self.n as f64 / self.total_ns * 1e9)
    }

    /// The harness's CPU time per I/O, ns: its I/O threads' and its vCPU's, those measured.
    pub fn cpu_ns_per_io(&self) -> Option<f64> {
        match (self.io_thread_cpu_ns_per_io, self.vcpu_cpu_ns_per_io) {
            (None, None) => None,
            (io, vcpu) => Some(io.unwrap_or(0.0) + vcpu.unwrap_or(0.0)),
        }
    }

    fn from_line(vmm: &str, b: &BenchLine) -> Option<Self> {
        let rest = b.name.strip_prefix("blk.")?;
        let (path, workload) = rest.split_once('.')?;
        let num = |k: &str| b.extra.get(k).and_then(|v| v.parse::<f64>().ok());
        Some(Self {
            vmm: vmm.into(),
            path: path.into(),
            workload: workload.into(),
            n: b.n?,
            bytes: num("bytes")? as u64,
            total_ns: num("total_ns")?,
            p50_ns: b.ns,
            p99_ns: num("p99"),
            user_exits_per_io: None,
            kvm_exits_per_io: None,
            io_thread_cpu_ns_per_io: None,
            vcpu_cpu_ns_per_io: None,
            // An older guest prints none; a malformed list is no samples rather than no row.
            batch_p50_ns: b
                .extra
                .get("batch_p50")
                .and_then(|v| v.split(',').map(|x| x.parse().ok()).collect())
                .unwrap_or_default(),
        })
    }
}

/// `(begin, end)` marks per row name, from a run's `phases`.
pub fn phases(marks: &[PhaseMark]) -> BTreeMap<&str, (&PhaseMark, &PhaseMark)> {
    let mut begins = BTreeMap::new();
    let mut out = BTreeMap::new();
    for mark in marks {
        if let Some(name) = mark.marker.strip_prefix("begin ") {
            begins.insert(name, mark);
        } else if let Some(name) = mark.marker.strip_prefix("end ") {
            if let Some(b) = begins.remove(name) {
                out.insert(name, (b, mark));
            }
        }
    }
    out
}

/// Userspace exits between two marks at devices whose name starts with one of `prefixes`.
pub fn device_exits_between(begin: &PhaseMark, end: &PhaseMark, prefixes: &[&str]) -> u64 {
    end.device_exits
        .iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p)))
        .map(|(k, v)| v.saturating_sub(begin.device_exits.get(k).copied().unwrap_or(0)))
        .sum()
}

/// Device-name prefixes of a guest path's disk.
fn device_prefixes(path: &str) -> &'static [&'static str] {
    if path.starts_with("ide") {
        &["ide"]
    } else {
        &["virtio"]
    }
}

/// Rows of one child run, with exits per I/O filled in from its phase marks.
pub fn rows_of(vmm: &str, stdout: &str, phase_marks: &[PhaseMark]) -> Vec<BlkRow> {
    let marks = phases(phase_marks);
    stdout
        .lines()
        .filter_map(parse_bench_line)
        .filter_map(|b| {
            let mut row = BlkRow::from_line(vmm, &b)?;
            if let Some((begin, end)) = marks.get(b.name.as_str()) {
                if row.n > 0 {
                    // Per-device counts exist only under our harness (QEMU's come from QMP).
                    if !end.device_exits.is_empty() {
                        let dev = device_exits_between(begin, end, device_prefixes(&row.path));
                        row.user_exits_per_io = Some(dev as f64 / row.n as f64);
                    }
                    let per_io = |a: Option<u64>, b: Option<u64>| match (a, b) {
                        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / row.n as f64),
                        _ => None,
                    };
                    row.kvm_exits_per_io = per_io(begin.kvm_exits, end.kvm_exits);
                    row.io_thread_cpu_ns_per_io =
                        per_io(begin.io_thread_cpu_ns, end.io_thread_cpu_ns);
                    row.vcpu_cpu_ns_per_io = per_io(begin.vcpu_cpu_ns, end.vcpu_cpu_ns);
                }
            }
            Some(row)
        })
        .collect()
}

/// A sparse image of IMAGE_BYTES.
pub fn make_image(path: &Path) -> Result<(), HarnessError> {
    let f = std::fs::File::create(path)
        .map_err(|e| HarnessError::Other(format!("bench image {}: {e}", path.display())))?;
    f.set_len(IMAGE_BYTES)
        .map_err(|e| HarnessError::Other(format!("bench image {}: {e}", path.display())))
}

/// The host's own I/O on the image, one request at a time, through the page cache like both
/// VMMs' disk backends (our RawDisk, and QEMU's default cache=writeback): the ceiling that
/// paravirtual I/O approaches.
pub fn native_rows(image: &Path, budget_ns: u64) -> Vec<BlkRow> {
    let mut rows = Vec::new();
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
    else {
        return rows;
    };
    let mut buf = AlignedBuf::new(128 * 1024);
    for (workload, len, write, random) in [
        ("seqread_128k_qd1", 128 * 1024, false, false),
        ("seqwrite_128k_qd1", 128 * 1024, true, false),
        ("randread_4k_qd1", 4096, false, true),
        ("randwrite_4k_qd1", 4096, true, true),
    ] {
        let slots = IMAGE_BYTES / len as u64;
        let mut lat = Vec::new();
        let mut rng = 0x0b1c_5eedu64;
        let start = Instant::now();
        let mut i = 0u64;
        while lat.is_empty() || (start.elapsed().as_nanos() as u64) < budget_ns {
            let slot = if random {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % slots
            } else {
                i % slots
            };
            i += 1;
            let t = Instant::now();
            let b = &mut buf.as_mut()[..len];
            let ok = if write {
                file.write_all_at(b, slot * len as u64).is_ok()
            } else {
                file.read_exact_at(b, slot * len as u64).is_ok()
            };
            if !ok {
                return rows;
            }
            lat.push(t.elapsed().as_nanos() as f64);
        }
        let total_ns = start.elapsed().as_nanos() as f64;
        let batch_p50_ns = batch_medians(&lat);
        lat.sort_by(|a, b| a.total_cmp(b));
        rows.push(BlkRow {
            vmm: "native".into(),
            path: "host_pread".into(),
            workload: workload.into(),
            n: lat.len() as u64,
            bytes: lat.len() as u64 * len as u64,
            total_ns,
            p50_ns: Some(lat[lat.len() / 2]),
            p99_ns: Some(lat[(lat.len() * 99 / 100).min(lat.len() - 1)]),
            user_exits_per_io: None,
            kvm_exits_per_io: None,
            io_thread_cpu_ns_per_io: None,
            vcpu_cpu_ns_per_io: None,
            batch_p50_ns,
        });
    }
    rows
}

/// The median of each of up to 16 batches of consecutive latencies, as the guest reports its
/// rows' `batch_p50=`.
pub fn batch_medians(latencies: &[f64]) -> Vec<f64> {
    let batches = 16.min(latencies.len());
    (0..batches)
        .map(|i| {
            let (from, to) = (
                i * latencies.len() / batches,
                (i + 1) * latencies.len() / batches,
            );
            let mut batch = latencies[from..to].to_vec();
            batch.sort_by(f64::total_cmp);
            batch[batch.len() / 2]
        })
        .collect()
}

/// A 4096-aligned heap buffer, as a guest's DMA buffer would be.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len, 4096).expect("valid layout");
        // SAFETY: non-zero size; freed in Drop with the same layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        Self { ptr, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` owns `len` initialised bytes for the life of self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// The whole storage section: run the guest benchmark under each VMM.
pub struct BlkSection {
    pub rows: Vec<BlkRow>,
    pub notes: Vec<String>,
}

/// The QEMU rows a harness row is measured against: today's defaults, and QEMU as its users
/// tune it for speed (an iothread with adaptive polling; with it, `cache=none,aio=io_uring`).
pub const QEMU_VMMS: [&str; 3] = ["qemu", "qemu-iothread", "qemu-iothread-io_uring"];

/// One VMM configuration of the storage section: a child run and the label of its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageVmm {
    /// The rows' `vmm`.
    pub label: &'static str,
    /// `run` (our harness) or `qemu`.
    pub sub: &'static str,
    /// Its arguments after the common ones.
    pub args: Vec<String>,
    /// The guest's `blk_paths=`.
    pub paths: &'static str,
    /// Appended to the virtio disk's `--disk` spec (`,poll-max-ns=0`, `,cache=none`). A
    /// harness that refuses them (a usage error, exit code 64) has no such mode yet: the
    /// configuration is left out with a note, so the bench runs at every commit.
    pub virtio_opts: &'static str,
}

/// Where the bench's disk images go: the temporary directory, unless it is a tmpfs, where
/// `O_DIRECT` (the `cache=none` rows) is not what a disk does; then /var/tmp.
pub fn image_dir_base() -> PathBuf {
    let tmp = std::env::temp_dir();
    if is_tmpfs(&tmp) && Path::new("/var/tmp").is_dir() {
        PathBuf::from("/var/tmp")
    } else {
        tmp
    }
}

/// Whether `dir` lives on a tmpfs.
fn is_tmpfs(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value for the kernel to overwrite.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated path and `st` a valid statfs, both alive for the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    rc == 0 && st.f_type == libc::TMPFS_MAGIC
}

/// Run every configuration of `vmms` on the same two images, which go into `dir` (the
/// caller removes it).
pub fn run_section(
    base_args: impl Fn(&str, &str) -> Vec<String>,
    vmms: &[StorageVmm],
    dir: &Path,
) -> Result<BlkSection, HarnessError> {
    let virtio: PathBuf = dir.join("virtio.img");
    let ide: PathBuf = dir.join("ide.img");
    make_image(&virtio)?;
    make_image(&ide)?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    if is_tmpfs(dir) {
        notes.push(format!(
            "the images are on a tmpfs ({}): cache=none rows measure no disk",
            dir.display()
        ));
    }
    for vmm in vmms {
        let label = vmm.label;
        super::progress::stage(&format!("storage under {label}"));
        let mut args = base_args(vmm.sub, &format!("bench=blk blk_paths={}", vmm.paths));
        args.extend([
            "--disk".to_string(),
            format!("virtio:{}{}", virtio.display(), vmm.virtio_opts),
            "--disk".to_string(),
            format!("ide:{}", ide.display()),
        ]);
        args.extend(vmm.args.iter().cloned());
        let r = spawn_self(&args, &format!("blk-{label}"))?;
        if r.code == 69 && vmm.sub == "qemu" {
            notes.push(format!("{label}: n/a ({})", r.last_err));
            continue;
        }
        if r.code == 64 && !vmm.virtio_opts.is_empty() {
            notes.push(format!(
                "{label}: n/a, this harness refuses the disk option {}",
                vmm.virtio_opts.trim_start_matches(',')
            ));
            continue;
        }
        if r.code != 0 {
            notes.push(format!("{label}: exit code {}: {}", r.code, r.last_err));
        }
        if let Err(e) = &r.json {
            notes.push(format!("{label}: {e}"));
        }
        let phase_marks = r.json.as_ref().map_or(&[][..], |j| &j.phases[..]);
        let got = rows_of(label, &r.stdout, phase_marks);
        if got.is_empty() {
            notes.push(format!("{label}: the guest printed no blk rows"));
        }
        rows.extend(got);
    }
    rows.extend(native_rows(&ide, 300_000_000));
    Ok(BlkSection { rows, notes })
}

impl BlkSection {
    /// This row's MB/s over QEMU's for the same path and workload.
    pub fn ratio_to_qemu(&self, r: &BlkRow) -> Option<f64> {
        let q = self
            .rows
            .iter()
            .find(|q| q.vmm == "qemu" && q.path == r.path && q.workload == r.workload)?;
        Some(r.mb_per_s()? / q.mb_per_s()?)
    }

    /// The QEMU row ([`QEMU_VMMS`]) with the most MB/s for this path and workload.
    pub fn best_qemu(&self, path: &str, workload: &str) -> Option<&BlkRow> {
        self.rows
            .iter()
            .filter(|q| QEMU_VMMS.contains(&q.vmm.as_str()))
            .filter(|q| q.path == path && q.workload == workload)
            .filter_map(|q| Some((q.mb_per_s()?, q)))
            .max_by(|(a, _), (b, _)| a.total_cmp(b))
            .map(|(_, q)| q)
    }

    /// A harness row's MB/s over the best QEMU row's for the same path and workload.
    pub fn ratio_to_qemu_best(&self, r: &BlkRow) -> Option<f64> {
        if !r.vmm.starts_with("harness") {
            return None;
        }
        let q = self.best_qemu(&r.path, &r.workload)?;
        Some(r.mb_per_s()? / q.mb_per_s()?)
    }

    pub fn to_text(&self) -> String {
        let mut s =
            String::from("\nstorage (guest bench=blk; MB/s and IOPS over the row's wall time)\n");
        s += &format!(
            "  {:<23} {:<20} {:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}\n",
            "vmm",
            "workload",
            "path",
            "MB/s",
            "IOPS",
            "p50 us",
            "p99 us",
            "exits/io",
            "kvm ex/io",
            "x qemu",
            "x best",
            "cpu us/io",
            "iothr us/io"
        );
        let f = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or("-".into());
        let mut sorted: Vec<&BlkRow> = self.rows.iter().collect();
        sorted.sort_by(|a, b| (&a.workload, &a.path, &a.vmm).cmp(&(&b.workload, &b.path, &b.vmm)));
        for r in sorted {
            s += &format!(
                "  {:<23} {:<20} {:<16} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10}\n",
                r.vmm,
                r.workload,
                r.path,
                f(r.mb_per_s(), 1),
                f(r.iops(), 0),
                f(r.p50_ns.map(|v| v / 1e3), 1),
                f(r.p99_ns.map(|v| v / 1e3), 1),
                f(r.user_exits_per_io, 2),
                f(r.kvm_exits_per_io, 2),
                if r.vmm.starts_with("harness") {
                    f(self.ratio_to_qemu(r), 2)
                } else {
                    "".into()
                },
                if r.vmm.starts_with("harness") {
                    f(self.ratio_to_qemu_best(r), 2)
                } else {
                    "".into()
                },
                f(r.cpu_ns_per_io().map(|v| v / 1e3), 2),
                f(r.io_thread_cpu_ns_per_io.map(|v| v / 1e3), 2),
            );
        }
        s += "  exits/io: userspace exits at the disk's device per I/O (harness); kvm ex/io: every\n";
        s += "  exit KVM counted during the row (notifies by ioeventfd, interrupts, timer) per I/O,\n";
        s += "  for QEMU from QMP query-stats read just after each phase line (approximate);\n";
        s += "  x qemu: harness MB/s over QEMU's (its defaults) for the same guest path and\n";
        s += "  workload; x best: over the best of qemu, qemu-iothread (an iothread with its\n";
        s += "  adaptive polling) and qemu-iothread-io_uring (also cache=none,aio=io_uring);\n";
        s += "  cpu us/io: the harness's CPU time per I/O (its I/O threads' and its vCPU's,\n";
        s += "  guest time included); iothr us/io: the I/O threads' alone, what polling costs.\n";
        s += &super::blk_targets::to_text(&self.targets());
        for n in &self.notes {
            s += &format!("  note: {n}\n");
        }
        s
    }

    /// The storage targets on these rows, exits against the checked-in CI profile.
    pub fn targets(&self) -> Vec<super::blk_targets::StorageTarget> {
        let profile = super::profile::Profile::parse(super::profile::EXPECTED).ok();
        super::blk_targets::evaluate(self, profile.as_ref())
    }

    /// The section as `storage` in `bench --json`.
    pub fn to_json(&self) -> BlkSectionJson<'_> {
        BlkSectionJson {
            rows: self
                .rows
                .iter()
                .map(|r| BlkRowJson {
                    row: r,
                    mb_per_s: r.mb_per_s(),
                    iops: r.iops(),
                    cpu_ns_per_io: r.cpu_ns_per_io(),
                    ratio_mb_per_s_to_qemu: self.ratio_to_qemu(r),
                    ratio_to_qemu_best: self.ratio_to_qemu_best(r),
                    qemu_best: r
                        .vmm
                        .starts_with("harness")
                        .then(|| self.best_qemu(&r.path, &r.workload))
                        .flatten()
                        .map(|q| q.vmm.as_str()),
                })
                .collect(),
            samples: self
                .rows
                .iter()
                .filter(|r| !r.batch_p50_ns.is_empty())
                .map(|r| BlkSamplesJson {
                    vmm: &r.vmm,
                    path: &r.path,
                    workload: &r.workload,
                    p50_ns: &r.batch_p50_ns,
                })
                .collect(),
            notes: &self.notes,
            targets: self.targets(),
        }
    }
}

/// `storage` in `bench --json`.
#[derive(Debug, Serialize)]
pub struct BlkSectionJson<'a> {
    pub rows: Vec<BlkRowJson<'a>>,
    /// Per row, its batches' p50s (what `bench compare` tests).
    pub samples: Vec<BlkSamplesJson<'a>>,
    pub notes: &'a [String],
    /// The storage targets, met or missed.
    pub targets: Vec<super::blk_targets::StorageTarget>,
}

/// One row's samples, matched to it by vmm, path and workload.
#[derive(Debug, Serialize)]
pub struct BlkSamplesJson<'a> {
    pub vmm: &'a str,
    pub path: &'a str,
    pub workload: &'a str,
    pub p50_ns: &'a [f64],
}

/// One row: what was measured, and the figures derived from it.
#[derive(Debug, Serialize)]
pub struct BlkRowJson<'a> {
    #[serde(flatten)]
    pub row: &'a BlkRow,
    pub mb_per_s: Option<f64>,
    pub iops: Option<f64>,
    /// The I/O threads' and the vCPU's CPU time per I/O, ns (harness only).
    pub cpu_ns_per_io: Option<f64>,
    pub ratio_mb_per_s_to_qemu: Option<f64>,
    /// A harness row's MB/s over the best QEMU row's ([`QEMU_VMMS`]) of its path and workload.
    pub ratio_to_qemu_best: Option<f64>,
    /// Which QEMU row that was.
    pub qemu_best: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn marks(v: serde_json::Value) -> Vec<PhaseMark> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rows_and_phases() {
        let out = "# phase: begin blk.virtio_msix.randread_4k_qd32\n\
                   # bench: blk.virtio_msix.randread_4k_qd32 ns=700000 p99=1800000 min=1 max=2 n=100 bytes=409600 total_ns=1000000000\n\
                   # bench: blk.ide_pio.randread_4k_qd1 ns=1 n=0\n";
        let doc = marks(json!([
            {"marker": "begin blk.virtio_msix.randread_4k_qd32", "device_exits": {"virtio-blk0-notify": 10, "com1": 5, "ide0-cmd": 3}, "kvm_exits": 1000},
            {"marker": "end blk.virtio_msix.randread_4k_qd32", "device_exits": {"virtio-blk0-notify": 60, "com1": 900, "ide0-cmd": 3}, "kvm_exits": 1400},
        ]));
        let qemu_doc = marks(json!([
            {"marker": "begin blk.virtio_msix.randread_4k_qd32", "device_exits": {}, "kvm_exits": 10},
            {"marker": "end blk.virtio_msix.randread_4k_qd32", "device_exits": {}, "kvm_exits": 210},
        ]));
        let q = &rows_of("qemu", out, &qemu_doc)[0];
        assert_eq!(q.user_exits_per_io, None, "QEMU has no per-device counts");
        assert_eq!(q.kvm_exits_per_io, Some(2.0));
        let rows = rows_of("harness-thread", out, &doc);
        assert_eq!(rows.len(), 1, "the malformed ide row is dropped");
        let r = &rows[0];
        assert_eq!(
            (r.path.as_str(), r.workload.as_str(), r.n),
            ("virtio_msix", "randread_4k_qd32", 100)
        );
        assert_eq!(
            r.user_exits_per_io,
            Some(0.5),
            "only virtio devices count, com1 doesn't"
        );
        assert_eq!(r.kvm_exits_per_io, Some(4.0));
        assert!((r.mb_per_s().unwrap() - 0.4096).abs() < 1e-9);
        assert!((r.iops().unwrap() - 100.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_per_io_from_the_phase_marks() {
        let out = "# bench: blk.virtio_polled.randread_4k_qd1 ns=5 n=100 bytes=409600 total_ns=1000\n\
                   # bench: blk.virtio_msix.randread_4k_qd1 ns=5 n=100 bytes=409600 total_ns=1000\n";
        let doc = marks(json!([
            {"marker": "begin blk.virtio_polled.randread_4k_qd1", "device_exits": {}, "kvm_exits": 0,
             "io_thread_cpu_ns": 1_000_000, "vcpu_cpu_ns": 5_000_000},
            {"marker": "end blk.virtio_polled.randread_4k_qd1", "device_exits": {}, "kvm_exits": 0,
             "io_thread_cpu_ns": 1_300_000, "vcpu_cpu_ns": 5_100_000},
            // Inline: no I/O threads, the vCPU alone.
            {"marker": "begin blk.virtio_msix.randread_4k_qd1", "device_exits": {}, "kvm_exits": 0,
             "vcpu_cpu_ns": 6_000_000},
            {"marker": "end blk.virtio_msix.randread_4k_qd1", "device_exits": {}, "kvm_exits": 0,
             "vcpu_cpu_ns": 6_200_000},
        ]));
        let rows = rows_of("harness-thread", out, &doc);
        assert_eq!(rows[0].io_thread_cpu_ns_per_io, Some(3000.0));
        assert_eq!(rows[0].vcpu_cpu_ns_per_io, Some(1000.0));
        assert_eq!(rows[0].cpu_ns_per_io(), Some(4000.0));
        assert_eq!(rows[1].io_thread_cpu_ns_per_io, None);
        assert_eq!(rows[1].cpu_ns_per_io(), Some(2000.0));
        // QEMU's marks carry no CPU time.
        let q = rows_of("qemu", out, &[]);
        assert_eq!(q[0].cpu_ns_per_io(), None);
        let s = BlkSection {
            rows,
            notes: vec![],
        };
        let line = s
            .to_text()
            .lines()
            .find(|l| l.contains("virtio_polled"))
            .unwrap()
            .to_string();
        assert!(line.trim_end().ends_with("4.00       3.00"), "{line}");
        let j = serde_json::to_value(s.to_json()).unwrap();
        assert_eq!(j["rows"][0]["cpu_ns_per_io"], 4000.0);
        assert_eq!(j["rows"][0]["io_thread_cpu_ns_per_io"], 3000.0);
        assert!(j["rows"][1]["io_thread_cpu_ns_per_io"].is_null());
    }

    #[test]
    fn batch_samples_from_the_guest_and_the_host() {
        let out = "# bench: blk.ide_dma.randread_4k_qd1 ns=5 p99=9 n=3 bytes=12288 total_ns=100 batch_p50=4,5,9\n\
                   # bench: blk.ide_pio.randread_4k_qd1 ns=5 n=3 bytes=12288 total_ns=100 batch_p50=4,x\n";
        let rows = rows_of("harness-thread", out, &[]);
        assert_eq!(rows[0].batch_p50_ns, [4.0, 5.0, 9.0]);
        assert!(
            rows[1].batch_p50_ns.is_empty(),
            "a malformed list is dropped"
        );
        let s = BlkSection {
            rows,
            notes: vec![],
        };
        let j = serde_json::to_value(s.to_json()).unwrap();
        assert_eq!(
            j["samples"],
            json!([{"vmm": "harness-thread", "path": "ide_dma", "workload": "randread_4k_qd1",
                    "p50_ns": [4.0, 5.0, 9.0]}])
        );
        let lat: Vec<f64> = (0..40).map(f64::from).collect();
        let b = batch_medians(&lat);
        assert_eq!(b.len(), 16);
        assert_eq!((b[0], b[15]), (1.0, 38.0));
        assert_eq!(batch_medians(&[7.0, 3.0]), [7.0, 3.0]);
        assert!(batch_medians(&[]).is_empty());
    }

    #[test]
    fn tmpfs_is_told_from_a_disk_by_the_mount_table() {
        // Every mount point the kernel lists agrees with statfs on whether it is a tmpfs.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let mut checked = 0;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (dir, fstype) = (Path::new(f[1]), f[2]);
            let readable = std::fs::read_dir(dir).is_ok();
            if !matches!(fstype, "tmpfs" | "ext4" | "xfs" | "btrfs") || !readable {
                continue;
            }
            // A later mount over the same point hides this one: judge the last only.
            let last = mounts
                .lines()
                .rev()
                .find(|l| l.split_whitespace().nth(1) == Some(f[1]));
            if last != Some(line) {
                continue;
            }
            assert_eq!(is_tmpfs(dir), fstype == "tmpfs", "{line}");
            checked += 1;
        }
        assert!(checked > 0, "{mounts}");
        assert!(!is_tmpfs(Path::new("/nonexistent/dir")));
        if !is_tmpfs(&std::env::temp_dir()) {
            assert_eq!(image_dir_base(), std::env::temp_dir());
        }
    }

    #[test]
    fn unmatched_phases_are_ignored() {
        let doc = [
            PhaseMark::kvm_only("end x".into(), None),
            PhaseMark::kvm_only("begin y".into(), None),
        ];
        assert!(phases(&doc).is_empty());
    }

    #[test]
    fn ratio_to_qemu() {
        let s = BlkSection {
            rows: vec![
                row("harness-thread", "virtio_msix", "w", 300.0),
                row("qemu", "virtio_msix", "w", 100.0),
            ],
            notes: vec![],
        };
        assert_eq!(s.ratio_to_qemu(&s.rows[0]), Some(3.0));
        assert!(s.to_text().contains("harness-thread"));
        let j = serde_json::to_value(s.to_json()).unwrap();
        let keys: Vec<&str> = j["rows"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "bytes",
                "cpu_ns_per_io",
                "io_thread_cpu_ns_per_io",
                "iops",
                "kvm_exits_per_io",
                "mb_per_s",
                "n",
                "p50_ns",
                "p99_ns",
                "path",
                "qemu_best",
                "ratio_mb_per_s_to_qemu",
                "ratio_to_qemu_best",
                "total_ns",
                "user_exits_per_io",
                "vcpu_cpu_ns_per_io",
                "vmm",
                "workload"
            ]
        );
        assert_eq!(j["rows"][0]["ratio_mb_per_s_to_qemu"], 3.0);
        assert!(j["rows"][1]["mb_per_s"].is_f64());
    }

    /// A row of `mb` MB/s (over one second) for this VMM, path and workload.
    pub(crate) fn row(vmm: &str, path: &str, workload: &str, mb: f64) -> BlkRow {
        BlkRow {
            vmm: vmm.into(),
            path: path.into(),
            workload: workload.into(),
            n: 1000,
            bytes: (mb * 1e6) as u64,
            total_ns: 1e9,
            p50_ns: None,
            p99_ns: None,
            user_exits_per_io: None,
            kvm_exits_per_io: None,
            io_thread_cpu_ns_per_io: None,
            vcpu_cpu_ns_per_io: None,
            batch_p50_ns: vec![],
        }
    }

    #[test]
    fn ratio_to_the_best_qemu_row() {
        let (p, w) = ("virtio_polled", "randread_4k_qd32");
        let s = BlkSection {
            rows: vec![
                row("harness-thread", p, w, 1200.0),
                row("harness-inline", p, w, 300.0),
                row("qemu", p, w, 300.0),
                row("qemu-iothread", p, w, 600.0),
                row("qemu-iothread-io_uring", p, w, 400.0),
                // Another workload's and another path's QEMU rows do not count.
                row("qemu-iothread", p, "randread_4k_qd1", 5000.0),
                row("qemu-iothread", "virtio_msix", w, 5000.0),
                // Nor does a row whose label is not one of QEMU's.
                row("qemu-tcg", p, w, 9000.0),
                row("harness-thread", "ide_dma", "randread_4k_qd1", 20.0),
                row("native", "host_pread", w, 9000.0),
            ],
            notes: vec![],
        };
        assert_eq!(
            s.best_qemu(p, w).map(|q| q.vmm.as_str()),
            Some("qemu-iothread")
        );
        assert_eq!(s.ratio_to_qemu_best(&s.rows[0]), Some(2.0));
        assert_eq!(s.ratio_to_qemu_best(&s.rows[1]), Some(0.5));
        // `x qemu` stays against QEMU's defaults.
        assert_eq!(s.ratio_to_qemu(&s.rows[0]), Some(4.0));
        // No QEMU row for the path and workload: no ratio; QEMU and native rows have none.
        assert_eq!(s.ratio_to_qemu_best(&s.rows[8]), None);
        assert_eq!(s.ratio_to_qemu_best(&s.rows[3]), None);
        assert_eq!(s.ratio_to_qemu_best(&s.rows[9]), None);
        // The best may be any of the three.
        for (best, mb) in [("qemu", 700.0), ("qemu-iothread-io_uring", 800.0)] {
            let mut t = BlkSection {
                rows: s.rows.clone(),
                notes: vec![],
            };
            t.rows.push(row(best, p, w, mb));
            assert_eq!(t.best_qemu(p, w).map(|q| q.mb_per_s()), Some(Some(mb)));
            assert_eq!(t.best_qemu(p, w).unwrap().vmm, best);
        }
        let j = serde_json::to_value(s.to_json()).unwrap();
        assert_eq!(j["rows"][0]["ratio_to_qemu_best"], 2.0);
        assert_eq!(j["rows"][0]["qemu_best"], "qemu-iothread");
        assert_eq!(j["rows"][0]["ratio_mb_per_s_to_qemu"], 4.0);
        assert!(j["rows"][3]["ratio_to_qemu_best"].is_null());
        assert!(j["rows"][3]["qemu_best"].is_null());
        assert!(j["rows"][8]["ratio_to_qemu_best"].is_null());
        let text = s.to_text();
        let line = text
            .lines()
            .find(|l| l.contains("harness-thread") && l.contains("randread_4k_qd32"))
            .unwrap();
        assert!(line.contains(" 4.00      2.00 "), "{line}");
    }
}
