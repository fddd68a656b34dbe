//! The disk backend trait behind the disk models (virtio-blk and IDE), raw image files as its
//! main implementation, and the `--disk` option.
//!
//! Offsets come from the guest, so every backend checks every access against its size with
//! [`check_access`], once, for all models: an out-of-range request is an error, never a short
//! read or a file that grows.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vm_memory::VolatileSlice;

use super::uring_disk::DirectDisk;

pub const SECTOR_SIZE: u64 = 512;
/// Most request queues a virtio disk may have (`queues=`).
pub const MAX_QUEUES: u16 = 16;

/// Which device model presents the disk to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKind {
    Virtio,
    Ide,
}

impl fmt::Display for DiskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Virtio => "virtio",
            Self::Ide => "ide",
        })
    }
}

/// How a virtio disk reaches its image (QEMU's `-drive cache=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskCache {
    /// Through the host's page cache, synchronous reads and writes (the default).
    #[default]
    Writeback,
    /// `O_DIRECT`, requests in flight through io_uring (QEMU: `cache=none,aio=io_uring`).
    None,
}

/// IDE drive positions, as QEMU's `-drive if=ide,index=N` numbers them: 0 primary master,
/// 1 primary slave, 2 secondary master, 3 secondary slave.
pub const IDE_POSITIONS: usize = 4;

/// The name of IDE position `index` (0..=3).
pub fn ide_position_name(index: usize) -> &'static str {
    match index {
        0 => "primary master",
        1 => "primary slave",
        2 => "secondary master",
        3 => "secondary slave",
        _ => "no such position",
    }
}

/// One `--disk KIND:PATH[,ro][,index=N][,msix=off][,poll-max-ns=N][,queues=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub kind: DiskKind,
    pub path: PathBuf,
    pub read_only: bool,
    /// IDE only: the drive position (0..=3); `None` takes the next free one.
    pub index: Option<u8>,
    /// virtio only: whether the device has an MSI-X capability (QEMU: `vectors=0` when not).
    /// Without it the guest must fall back to INTx.
    pub msix: bool,
    /// virtio only: `cache=none` serves the image `O_DIRECT` through io_uring; the default,
    /// `cache=writeback`, through the host's page cache.
    pub cache: DiskCache,
    /// virtio only: how long the I/O thread may poll the queue after a batch, in ns (QEMU's
    /// iothread `poll-max-ns`; 0 = never). None: the device's default (32768, QEMU's).
    pub poll_max_ns: Option<u64>,
    /// virtio only: request queues (VIRTIO_BLK_F_MQ above 1; QEMU's `num-queues`), 1..=16.
    pub queues: u16,
}

impl DiskSpec {
    /// Parse `virtio:PATH[,ro][,msix=off][,poll-max-ns=N]` or `ide:PATH[,ro][,index=N]`.
    /// Options follow the
    /// path, in any order; a comma before something that is not an option stays part of the
    /// path.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("--disk {s:?}: expected KIND:PATH[,ro][,index=N] with KIND virtio or ide")
        })?;
        let kind = match kind {
            "virtio" => DiskKind::Virtio,
            "ide" => DiskKind::Ide,
            other => {
                return Err(format!(
                    "--disk {s:?}: unknown kind {other:?} (virtio or ide)"
                ))
            }
        };
        let mut path = rest;
        let mut read_only = None;
        let mut index = None;
        let mut msix = None;
        let mut cache = None;
        let mut poll_max_ns = None;
        let mut queues = None;
        let mut first = true;
        while let Some((p, opt)) = path.rsplit_once(',') {
            let seen = match opt {
                "ro" | "rw" => read_only.replace(opt == "ro").is_some(),
                _ if opt.starts_with("index=") => {
                    if kind != DiskKind::Ide {
                        return Err(format!("--disk {s:?}: index= is for ide disks only"));
                    }
                    let n = &opt["index=".len()..];
                    let i = n
                        .parse::<u8>()
                        .ok()
                        .filter(|&i| usize::from(i) < IDE_POSITIONS)
                        .ok_or_else(|| {
                            format!(
                                "--disk {s:?}: index {n:?} is not an IDE position 0..{}",
                                IDE_POSITIONS - 1
                            )
                        })?;
                    index.replace(i).is_some()
                }
                "msix=on" | "msix=off" => {
                    if kind != DiskKind::Virtio {
                        return Err(format!("--disk {s:?}: msix= is for virtio disks only"));
                    }
                    msix.replace(opt == "msix=on").is_some()
                }
                _ if opt.starts_with("cache=") => {
                    if kind != DiskKind::Virtio {
                        return Err(format!("--disk {s:?}: cache= is for virtio disks only"));
                    }
                    let mode = match &opt["cache=".len()..] {
                        "none" => DiskCache::None,
                        "writeback" => DiskCache::Writeback,
                        v => return Err(format!("--disk {s:?}: cache {v:?} is none or writeback")),
                    };
                    cache.replace(mode).is_some()
                }
                _ if opt.starts_with("poll-max-ns=") => {
                    if kind != DiskKind::Virtio {
                        return Err(format!(
                            "--disk {s:?}: poll-max-ns= is for virtio disks only"
                        ));
                    }
                    let n = &opt["poll-max-ns=".len()..];
                    let ns = n.parse::<u64>().map_err(|_| {
                        format!("--disk {s:?}: poll-max-ns {n:?} is not a number of ns")
                    })?;
                    poll_max_ns.replace(ns).is_some()
                }
                _ if opt.starts_with("queues=") => {
                    if kind != DiskKind::Virtio {
                        return Err(format!("--disk {s:?}: queues= is for virtio disks only"));
                    }
                    let n = &opt["queues=".len()..];
                    let q = n
                        .parse::<u16>()
                        .ok()
                        .filter(|q| (1..=MAX_QUEUES).contains(q))
                        .ok_or_else(|| {
                            format!("--disk {s:?}: queues {n:?} is not 1 to {MAX_QUEUES}")
                        })?;
                    queues.replace(q).is_some()
                }
                // The path itself may hold commas; only the last segment must be an option.
                _ if !first => break,
                _ => {
                    return Err(format!(
                        "--disk {s:?}: unknown option {opt:?} (ro, rw, index=N, msix=on|off, poll-max-ns=N or queues=N)"
                    ))
                }
            };
            if seen {
                return Err(format!("--disk {s:?}: option {opt:?} given twice"));
            }
            path = p;
            first = false;
        }
        if path.is_empty() {
            return Err(format!("--disk {s:?}: empty path"));
        }
        Ok(Self {
            kind,
            path: PathBuf::from(path),
            read_only: read_only.unwrap_or(false),
            index,
            msix: msix.unwrap_or(true),
            cache: cache.unwrap_or_default(),
            poll_max_ns,
            queues: queues.unwrap_or(1),
        })
    }
}

/// The IDE position of every `ide` disk in `specs`, in their order, as QEMU assigns them: an
/// explicit `index=` takes that position, a disk without one the lowest position still free
/// when it comes. Two disks at one position, or more disks than positions, is an error.
pub fn ide_positions(specs: &[DiskSpec]) -> Result<Vec<usize>, String> {
    let mut taken: [Option<&Path>; IDE_POSITIONS] = [None; IDE_POSITIONS];
    let mut out = Vec::new();
    for spec in specs.iter().filter(|s| s.kind == DiskKind::Ide) {
        let pos = match spec.index {
            Some(i) => usize::from(i),
            None => taken.iter().position(Option::is_none).ok_or_else(|| {
                format!(
                    "--disk ide:{}: at most {IDE_POSITIONS} IDE disks (primary/secondary \
                     master/slave), and all positions are taken",
                    spec.path.display()
                )
            })?,
        };
        let slot = taken.get_mut(pos).ok_or_else(|| {
            format!(
                "--disk ide:{}: index {pos} is not an IDE position 0..{}",
                spec.path.display(),
                IDE_POSITIONS - 1
            )
        })?;
        if let Some(other) = slot {
            return Err(format!(
                "--disk ide:{}: IDE index {pos} ({}) is already taken by {}",
                spec.path.display(),
                ide_position_name(pos),
                other.display()
            ));
        }
        *slot = Some(&spec.path);
        out.push(pos);
    }
    Ok(out)
}

/// The images of a run, opened before anything else so that a bad one is a usage error even
/// on a machine without KVM.
#[derive(Debug, Default)]
pub struct OpenedDisks {
    /// `--disk virtio:` images, in order.
    pub virtio: Vec<VirtioDisk>,
    /// `--disk ide:` images by position: primary master, primary slave, secondary master,
    /// secondary slave.
    pub ide: [Option<RawDisk>; IDE_POSITIONS],
}

impl OpenedDisks {
    /// Open every image; at most `max_virtio` virtio disks, and IDE disks placed by
    /// [`ide_positions`] on a controller with `max_ide` positions (at most [`IDE_POSITIONS`]).
    pub fn open(specs: &[DiskSpec], max_virtio: usize, max_ide: usize) -> Result<Self, String> {
        let positions = ide_positions(specs)?;
        if let Some(&pos) = positions.iter().find(|&&p| p >= max_ide) {
            return Err(format!(
                "--disk ide: index {pos} ({}), but this controller has {max_ide} positions",
                ide_position_name(pos)
            ));
        }
        let mut disks = Self::default();
        let mut ide_positions = positions.into_iter();
        for spec in specs {
            let disk = RawDisk::open(&spec.path, spec.read_only)
                .map_err(|e| format!("--disk {}: {e}", spec.kind))?;
            match spec.kind {
                DiskKind::Virtio => disks.virtio.push(VirtioDisk {
                    direct: match spec.cache {
                        DiskCache::None => Some(
                            DirectDisk::open(&spec.path, spec.read_only)
                                .map_err(|e| format!("--disk {}: {e}", spec.kind))?,
                        ),
                        DiskCache::Writeback => None,
                    },
                    disk,
                    msix: spec.msix,
                    poll_max_ns: spec.poll_max_ns,
                    queues: spec.queues,
                }),
                DiskKind::Ide => {
                    // `ide_positions` gave one distinct position per IDE spec.
                    if let Some(pos) = ide_positions.next() {
                        disks.ide[pos] = Some(disk);
                    }
                }
            }
        }
        if disks.virtio.len() > max_virtio {
            return Err(format!(
                "--disk virtio: at most {max_virtio} virtio disks, got {}",
                disks.virtio.len()
            ));
        }
        Ok(disks)
    }
}

/// A `--disk virtio:` image and how its function presents itself.
#[derive(Debug)]
pub struct VirtioDisk {
    pub disk: RawDisk,
    /// `cache=none`: the same image opened for io_uring, which then serves the device.
    pub direct: Option<DirectDisk>,
    /// Whether the function has an MSI-X capability (`msix=off`: INTx only).
    pub msix: bool,
    /// `poll-max-ns=`, if given.
    pub poll_max_ns: Option<u64>,
    /// `queues=` (1 unless given).
    pub queues: u16,
}

/// What a disk model needs from its storage: a raw image ([`RawDisk`]), memory
/// ([`super::mem_disk::MemDisk`], for tests and fuzzing) or a test's own fake.
///
/// `read_at` and `write_at` move exactly `buf.len()` bytes or fail; an access past the end
/// fails ([`check_access`]) and never grows the disk. A failure may have moved part of the
/// data (a short read, a write cut by ENOSPC): the models then report an error to the guest.
pub trait DiskBackend: Send {
    /// Size in bytes (a positive multiple of [`SECTOR_SIZE`]).
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn sectors(&self) -> u64 {
        self.len() / SECTOR_SIZE
    }
    fn read_only(&self) -> bool;
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Fill `bufs` (guest memory, in order) from `offset`: all of them or an error, as
    /// `read_at`. The default goes through `read_at` ([`super::vectored::read_through`]).
    fn read_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        super::vectored::read_through(self, offset, bufs)
    }
    /// Write `bufs` (guest memory, in order) at `offset`: all of them or an error, as
    /// `write_at`. The default goes through `write_at` ([`super::vectored::write_through`]).
    fn write_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        super::vectored::write_through(self, offset, bufs)
    }
    /// Make acknowledged writes durable.
    fn flush(&self) -> io::Result<()>;
    /// Deallocate `len` bytes at `offset`: they then read as zeroes or as before
    /// ([`super::discard`]). The default only checks, keeping the data.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        super::discard::check_write(self, offset, len)
    }
    /// Make `len` bytes at `offset` read as zeroes, deallocating them if `may_unmap`
    /// allows. The default writes zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        let _ = may_unmap;
        super::discard::write_zeroes_by_writing(self, offset, len)
    }
}

/// The one bounds check on a guest-supplied access: `len` bytes at `offset` lie inside a disk
/// of `disk_len` bytes (no wrap-around).
pub fn check_access(disk_len: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= disk_len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("access {offset:#x}+{len:#x} past the end of a {disk_len:#x}-byte disk"),
        )),
    }
}

/// The size rule of every disk: whole sectors, at least one.
pub fn check_size(len: u64) -> Result<(), String> {
    if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
        return Err(format!(
            "size {len} bytes is not a positive multiple of {SECTOR_SIZE}"
        ));
    }
    Ok(())
}

/// The error a write to a read-only disk gets.
pub fn read_only_error() -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, "disk is read-only")
}

/// A raw image file, whole sectors only.
#[derive(Debug)]
pub struct RawDisk {
    file: File,
    path: PathBuf,
    len: u64,
    read_only: bool,
}

impl RawDisk {
    /// Open an image. A missing or unreadable file, or a size that is zero or not a whole
    /// number of sectors, is one clear error.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| format!("disk image {}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("disk image {}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("disk image {}: not a regular file", path.display()));
        }
        let len = meta.len();
        check_size(len).map_err(|e| format!("disk image {}: {e}", path.display()))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            len,
            read_only,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl DiskBackend for RawDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_access(self.len, offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_access(self.len, offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    /// `preadv` straight into guest memory.
    fn read_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        check_access(self.len, offset, super::vectored::total_len(bufs))?;
        super::vectored::preadv_all(&self.file, offset, bufs)
    }

    /// `pwritev` straight from guest memory.
    fn write_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_access(self.len, offset, super::vectored::total_len(bufs))?;
        super::vectored::pwritev_all(&self.file, offset, bufs)
    }

    /// `fdatasync`.
    fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    /// A hole punched in the image (`fallocate`), where its file system can.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        super::discard::check_write(self, offset, len)?;
        super::discard::discard_file(&self.file, offset, len)
    }

    /// A hole or a zeroed range (`fallocate`), else written zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        super::discard::check_write(self, offset, len)?;
        super::discard::write_zeroes_file(self, &self.file, offset, len, may_unmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(len: usize) -> (tempdir::Dir, PathBuf) {
        let d = tempdir::Dir::new();
        let p = d.path().join("disk.img");
        std::fs::write(&p, vec![0u8; len]).unwrap();
        (d, p)
    }

    /// A self-deleting temporary directory (std only).
    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Self {
                let n = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos();
                let p = std::env::temp_dir().join(format!("disk-test-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Self(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn spec(kind: DiskKind, path: &str, read_only: bool, index: Option<u8>) -> DiskSpec {
        DiskSpec {
            kind,
            path: path.into(),
            read_only,
            index,
            msix: true,
            cache: DiskCache::Writeback,
            poll_max_ns: None,
            queues: 1,
        }
    }

    #[test]
    fn parse_specs() {
        use DiskKind::{Ide, Virtio};
        for (arg, want) in [
            ("virtio:/a/b.img", spec(Virtio, "/a/b.img", false, None)),
            ("ide:x,ro", spec(Ide, "x", true, None)),
            ("ide:x,rw", spec(Ide, "x", false, None)),
            ("ide:x,index=2", spec(Ide, "x", false, Some(2))),
            ("ide:x,ro,index=3", spec(Ide, "x", true, Some(3))),
            ("ide:x,index=0,ro", spec(Ide, "x", true, Some(0))),
            // A comma inside the path stays there once an option has been taken.
            (
                "ide:/a,b.img,index=1",
                spec(Ide, "/a,b.img", false, Some(1)),
            ),
            ("virtio:/a,b.img,ro", spec(Virtio, "/a,b.img", true, None)),
            (
                "virtio:v,msix=off,ro",
                DiskSpec {
                    msix: false,
                    ..spec(Virtio, "v", true, None)
                },
            ),
            ("virtio:v,msix=on", spec(Virtio, "v", false, None)),
            (
                "virtio:v,cache=none,ro",
                DiskSpec {
                    cache: DiskCache::None,
                    ..spec(Virtio, "v", true, None)
                },
            ),
            ("virtio:v,cache=writeback", spec(Virtio, "v", false, None)),
            (
                "virtio:v,poll-max-ns=0,ro",
                DiskSpec {
                    poll_max_ns: Some(0),
                    ..spec(Virtio, "v", true, None)
                },
            ),
            (
                "virtio:v,queues=4,ro",
                DiskSpec {
                    queues: 4,
                    ..spec(Virtio, "v", true, None)
                },
            ),
            ("virtio:v,queues=1", spec(Virtio, "v", false, None)),
            (
                "virtio:v,poll-max-ns=100000",
                DiskSpec {
                    poll_max_ns: Some(100_000),
                    ..spec(Virtio, "v", false, None)
                },
            ),
        ] {
            assert_eq!(DiskSpec::parse(arg).unwrap(), want, "{arg}");
        }
        for (bad, why) in [
            ("x.img", "expected KIND:PATH"),
            ("scsi:x", "unknown kind"),
            ("virtio:", "empty path"),
            ("virtio:x,rx", "unknown option"),
            ("ide:,ro", "empty path"),
            ("ide:x,index=4", "not an IDE position 0..3"),
            ("ide:x,index=-1", "not an IDE position"),
            ("ide:x,index=", "not an IDE position"),
            ("ide:x,index=256", "not an IDE position"),
            ("ide:x,index=1,index=2", "given twice"),
            ("ide:x,ro,rw", "given twice"),
            ("virtio:x,index=0", "for ide disks only"),
            ("ide:x,msix=off", "for virtio disks only"),
            ("virtio:x,msix=no", "unknown option"),
            ("virtio:x,msix=on,msix=off", "given twice"),
            ("ide:x,cache=none", "for virtio disks only"),
            ("virtio:x,cache=unsafe", "none or writeback"),
            ("virtio:x,cache=none,cache=none", "given twice"),
            ("ide:x,poll-max-ns=0", "for virtio disks only"),
            ("virtio:x,poll-max-ns=", "not a number of ns"),
            ("virtio:x,poll-max-ns=-1", "not a number of ns"),
            ("virtio:x,poll-max-ns=1us", "not a number of ns"),
            ("virtio:x,poll-max-ns=1,poll-max-ns=2", "given twice"),
            ("ide:x,queues=2", "for virtio disks only"),
            ("virtio:x,queues=0", "not 1 to 16"),
            ("virtio:x,queues=17", "not 1 to 16"),
            ("virtio:x,queues=", "not 1 to 16"),
            ("virtio:x,queues=2,queues=2", "given twice"),
        ] {
            let e = DiskSpec::parse(bad).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    fn positions(args: &[&str]) -> Result<Vec<usize>, String> {
        let specs: Vec<DiskSpec> = args.iter().map(|a| DiskSpec::parse(a).unwrap()).collect();
        ide_positions(&specs)
    }

    #[test]
    fn ide_positions_as_qemu_assigns_them() {
        assert_eq!(positions(&[]).unwrap(), Vec::<usize>::new());
        assert_eq!(
            positions(&["ide:a", "virtio:v", "ide:b"]).unwrap(),
            [0, 1],
            "virtio disks take no IDE position"
        );
        assert_eq!(positions(&["ide:a,index=2"]).unwrap(), [2]);
        assert_eq!(positions(&["ide:a,index=1"]).unwrap(), [1], "slave only");
        // Without an index: the lowest position free at that point of the command line.
        assert_eq!(
            positions(&["ide:a,index=0", "ide:b", "ide:c,index=3", "ide:d"]).unwrap(),
            [0, 1, 3, 2]
        );
        assert_eq!(
            positions(&["ide:a,index=1", "ide:b", "ide:c"]).unwrap(),
            [1, 0, 2]
        );
        let e = positions(&["ide:a,index=2", "ide:b,index=2"]).unwrap_err();
        assert!(
            e.contains("IDE index 2 (secondary master) is already taken by a"),
            "{e}"
        );
        // As in QEMU, an unindexed disk that came first holds its position.
        let e = positions(&["ide:a", "ide:b,index=0"]).unwrap_err();
        assert!(e.contains("already taken"), "{e}");
        let e = positions(&["ide:a", "ide:b", "ide:c", "ide:d", "ide:e"]).unwrap_err();
        assert!(e.contains("at most 4 IDE disks"), "{e}");
        let e = positions(&["ide:a,index=3", "ide:b", "ide:c", "ide:d", "ide:e"]).unwrap_err();
        assert!(e.contains("at most 4 IDE disks"), "{e}");
    }

    #[test]
    fn opened_ide_disks_sit_at_their_positions() {
        let (_d, p) = image(4096);
        let path = p.display().to_string();
        let specs: Vec<DiskSpec> = [
            format!("ide:{path},index=3"),
            format!("virtio:{path}"),
            format!("ide:{path},ro"),
        ]
        .iter()
        .map(|a| DiskSpec::parse(a).unwrap())
        .collect();
        let d = OpenedDisks::open(&specs, 1, IDE_POSITIONS).unwrap();
        assert_eq!(d.virtio.len(), 1);
        let present: Vec<bool> = d.ide.iter().map(Option::is_some).collect();
        assert_eq!(present, [true, false, false, true]);
        assert!(d.ide[0].as_ref().unwrap().read_only());
        assert!(!d.ide[3].as_ref().unwrap().read_only());
        let e = OpenedDisks::open(&specs, 1, 2).unwrap_err();
        assert!(e.contains("index 3"), "{e}");
        let e = OpenedDisks::open(&specs, 0, IDE_POSITIONS).unwrap_err();
        assert!(e.contains("at most 0 virtio disks"), "{e}");
    }

    #[test]
    fn open_checks_size_and_existence() {
        let (_d, p) = image(4096);
        let disk = RawDisk::open(&p, false).unwrap();
        assert_eq!(disk.sectors(), 8);
        let (_d2, odd) = image(1000);
        assert!(RawDisk::open(&odd, false)
            .unwrap_err()
            .contains("multiple of 512"));
        let (_d3, empty) = image(0);
        assert!(RawDisk::open(&empty, true).is_err());
        assert!(RawDisk::open(Path::new("/nonexistent/disk.img"), true)
            .unwrap_err()
            .contains("/nonexistent/disk.img"));
    }

    #[test]
    fn bounds_and_read_only() {
        let (_d, p) = image(1024);
        let disk = RawDisk::open(&p, false).unwrap();
        disk.write_at(512, &[7u8; 512]).unwrap();
        let mut b = [0u8; 512];
        disk.read_at(512, &mut b).unwrap();
        assert_eq!(b, [7u8; 512]);
        assert!(disk.read_at(1023, &mut [0u8; 2]).is_err());
        assert!(disk.write_at(u64::MAX, &[1]).is_err());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024, "file grew");
        let ro = RawDisk::open(&p, true).unwrap();
        assert_eq!(
            ro.write_at(0, &[1]).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
    }
}
