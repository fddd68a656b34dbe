//! Raw image files behind the disk models (virtio-blk and IDE), and the `--disk` option.
//!
//! Offsets come from the guest, so every access is checked against the image size here, once,
//! for all models: an out-of-range request is an error, never a short read or a file that grows.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SECTOR_SIZE: u64 = 512;

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

/// One `--disk KIND:PATH[,ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSpec {
    pub kind: DiskKind,
    pub path: PathBuf,
    pub read_only: bool,
}

impl DiskSpec {
    /// Parse `virtio:PATH[,ro]` or `ide:PATH[,ro]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, rest) = s.split_once(':').ok_or_else(|| {
            format!("--disk {s:?}: expected KIND:PATH[,ro] with KIND virtio or ide")
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
        let (path, read_only) = match rest.rsplit_once(',') {
            Some((p, "ro")) => (p, true),
            Some((p, "rw")) => (p, false),
            Some((_, opt)) => {
                return Err(format!("--disk {s:?}: unknown option {opt:?} (ro or rw)"))
            }
            None => (rest, false),
        };
        if path.is_empty() {
            return Err(format!("--disk {s:?}: empty path"));
        }
        Ok(Self {
            kind,
            path: PathBuf::from(path),
            read_only,
        })
    }
}

/// The images of a run, opened before anything else so that a bad one is a usage error even
/// on a machine without KVM.
#[derive(Debug, Default)]
pub struct OpenedDisks {
    /// `--disk virtio:` images, in order.
    pub virtio: Vec<RawDisk>,
    /// `--disk ide:` images, in order.
    pub ide: Vec<RawDisk>,
}

impl OpenedDisks {
    /// Open every image; at most `max_virtio` virtio and `max_ide` IDE disks.
    pub fn open(specs: &[DiskSpec], max_virtio: usize, max_ide: usize) -> Result<Self, String> {
        let mut disks = Self::default();
        for spec in specs {
            let disk = RawDisk::open(&spec.path, spec.read_only)
                .map_err(|e| format!("--disk {}: {e}", spec.kind))?;
            match spec.kind {
                DiskKind::Virtio => disks.virtio.push(disk),
                DiskKind::Ide => disks.ide.push(disk),
            }
        }
        if disks.virtio.len() > max_virtio {
            return Err(format!(
                "--disk virtio: at most {max_virtio} virtio disks, got {}",
                disks.virtio.len()
            ));
        }
        if disks.ide.len() > max_ide {
            return Err(format!(
                "--disk ide: at most {max_ide} IDE disks (primary/secondary master/slave), got {}",
                disks.ide.len()
            ));
        }
        Ok(disks)
    }
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
        if len == 0 || len % SECTOR_SIZE != 0 {
            return Err(format!(
                "disk image {}: size {len} bytes is not a positive multiple of {SECTOR_SIZE}",
                path.display()
            ));
        }
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

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn sectors(&self) -> u64 {
        self.len / SECTOR_SIZE
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "access {offset:#x}+{len:#x} past the end of a {:#x}-byte disk",
                    self.len
                ),
            )),
        }
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        self.file.read_exact_at(buf, offset)
    }

    /// Write all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "disk is read-only",
            ));
        }
        self.check(offset, buf.len())?;
        self.file.write_all_at(buf, offset)
    }

    /// Make every acknowledged write durable (`fdatasync`).
    pub fn flush(&self) -> io::Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data()
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

    #[test]
    fn parse_specs() {
        assert_eq!(
            DiskSpec::parse("virtio:/a/b.img").unwrap(),
            DiskSpec {
                kind: DiskKind::Virtio,
                path: "/a/b.img".into(),
                read_only: false
            }
        );
        assert_eq!(
            DiskSpec::parse("ide:x,ro").unwrap(),
            DiskSpec {
                kind: DiskKind::Ide,
                path: "x".into(),
                read_only: true
            }
        );
        for bad in ["x.img", "scsi:x", "virtio:", "virtio:x,rx", "ide:,ro"] {
            assert!(DiskSpec::parse(bad).is_err(), "{bad} accepted");
        }
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
