//! Discard and write-zeroes on a backend (virtio-blk's VIRTIO_BLK_T_DISCARD and
//! VIRTIO_BLK_T_WRITE_ZEROES): the checks every backend makes first, the fallback of writing
//! zeroes, and an image file's `fallocate`.
//!
//! A discard is a hint: afterwards the range reads as zeroes or as its old data. A
//! write-zeroes must read back as zeroes; with `may_unmap` the backend may deallocate the range
//! to get there (a hole in the image), without it the blocks stay allocated.

use super::disk::{read_only_error, DiskBackend};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Bytes written per call when zeroes have to be written out.
const ZERO_CHUNK: usize = 64 << 10;
static ZEROES: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];

/// The checks before a discard or write-zeroes of `len` bytes at `offset`: the disk is
/// writable, and the range lies inside it (no wrap-around). Guest-supplied, so never trusted.
pub fn check_write<D: DiskBackend + ?Sized>(disk: &D, offset: u64, len: u64) -> io::Result<()> {
    if disk.read_only() {
        return Err(read_only_error());
    }
    match offset.checked_add(len) {
        Some(end) if end <= disk.len() => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "range {offset:#x}+{len:#x} past the end of a {:#x}-byte disk",
                disk.len()
            ),
        )),
    }
}

/// Write-zeroes as plain writes, for a backend that cannot do better.
pub fn write_zeroes_by_writing<D: DiskBackend + ?Sized>(
    disk: &D,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    check_write(disk, offset, len)?;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        disk.write_at(offset + done, &ZEROES[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// `fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, offset, len)`: the image never grows.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let too_big = || io::Error::new(io::ErrorKind::InvalidInput, "range beyond off_t");
    let offset = libc::off_t::try_from(offset).map_err(|_| too_big())?;
    let len = libc::off_t::try_from(len).map_err(|_| too_big())?;
    // SAFETY: fallocate takes no pointers; the fd is open for as long as `file` is borrowed.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The file system cannot do this kind of fallocate (tmpfs and ZERO_RANGE, say).
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

/// Discard on an image file: punch a hole. Where the file system cannot, the data stays (a
/// discard is only a hint). The caller has checked the range ([`check_write`]).
pub fn discard_file(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(()); // fallocate refuses a zero length with EINVAL
    }
    match fallocate(file, libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
        Err(e) if unsupported(&e) => Ok(()),
        r => r,
    }
}

/// Write-zeroes on an image file of `disk`: a hole when unmapping is allowed, else a zeroed
/// allocated range; whichever the file system refuses falls back to the next, and at last to
/// writing zeroes. The caller has checked the range ([`check_write`]).
pub fn write_zeroes_file<D: DiskBackend + ?Sized>(
    disk: &D,
    file: &File,
    offset: u64,
    len: u64,
    may_unmap: bool,
) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    if may_unmap {
        match fallocate(file, libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
            Err(e) if unsupported(&e) => {}
            r => return r,
        }
    }
    match fallocate(file, libc::FALLOC_FL_ZERO_RANGE, offset, len) {
        Err(e) if unsupported(&e) => write_zeroes_by_writing(disk, offset, len),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::disk::RawDisk;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    /// An image of `len` bytes of `fill`, in its own temporary directory (removed on drop).
    struct Image {
        dir: PathBuf,
        path: PathBuf,
    }

    impl Image {
        fn new(name: &str, len: usize, fill: u8) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "discard-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("disk.img");
            std::fs::write(&path, vec![fill; len]).unwrap();
            Self { dir, path }
        }

        /// 512-byte blocks the file holds on disk.
        fn blocks(&self) -> u64 {
            std::fs::metadata(&self.path).unwrap().blocks()
        }

        fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.path).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Whether the temporary directory's file system punches holes (tmpfs, ext4, xfs and
    /// btrfs all do): tried on a scratch file beside the image.
    fn punches_holes(image: &Image) -> bool {
        let scratch = image.dir.join("scratch");
        std::fs::write(&scratch, vec![1u8; 64 << 10]).unwrap();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&scratch)
            .unwrap();
        fallocate(&f, libc::FALLOC_FL_PUNCH_HOLE, 0, 64 << 10).is_ok()
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn discard_punches_a_hole_and_keeps_the_size() {
        let image = Image::new("punch", 4 * MIB, 0xa5);
        let disk = RawDisk::open(&image.path, false).unwrap();
        let before = image.blocks();
        disk.discard(MIB as u64, 2 * MIB as u64).unwrap();
        let bytes = image.bytes();
        assert_eq!(bytes.len(), 4 * MIB, "the image keeps its size");
        assert!(bytes[..MIB].iter().all(|&b| b == 0xa5));
        assert!(bytes[3 * MIB..].iter().all(|&b| b == 0xa5));
        let hole = &bytes[MIB..3 * MIB];
        // A punched hole reads as zeroes; a file system without holes keeps the data.
        assert!(hole.iter().all(|&b| b == 0) || hole.iter().all(|&b| b == 0xa5));
        if punches_holes(&image) {
            assert!(hole.iter().all(|&b| b == 0));
            assert!(
                image.blocks() <= before - (2 * MIB as u64 / 512),
                "{} blocks before, {} after",
                before,
                image.blocks()
            );
        } else {
            eprintln!("the temporary directory's file system punches no holes");
        }
        disk.discard(4 * MIB as u64, 0).unwrap();
    }

    #[test]
    fn write_zeroes_with_and_without_unmap() {
        let image = Image::new("zero", 4 * MIB, 0x3c);
        let disk = RawDisk::open(&image.path, false).unwrap();
        let before = image.blocks();
        // Unaligned on purpose: fallocate zeroes the partial blocks at both ends.
        disk.write_zeroes(100, MIB as u64, false).unwrap();
        let bytes = image.bytes();
        assert!(bytes[..100].iter().all(|&b| b == 0x3c));
        assert!(bytes[100..100 + MIB].iter().all(|&b| b == 0));
        assert!(bytes[100 + MIB..].iter().all(|&b| b == 0x3c));
        assert_eq!(
            image.blocks(),
            before,
            "without unmap the blocks stay allocated"
        );
        disk.write_zeroes(2 * MIB as u64, 2 * MIB as u64, true)
            .unwrap();
        let bytes = image.bytes();
        assert_eq!(bytes.len(), 4 * MIB);
        assert!(bytes[2 * MIB..].iter().all(|&b| b == 0));
        assert!(bytes[100 + MIB..2 * MIB].iter().all(|&b| b == 0x3c));
        if punches_holes(&image) {
            assert!(image.blocks() <= before - (2 * MIB as u64 / 512));
        }
    }

    #[test]
    fn ranges_past_the_end_and_read_only_are_refused() {
        let image = Image::new("refuse", 64 << 10, 0x77);
        let disk = RawDisk::open(&image.path, false).unwrap();
        let len = disk.len();
        for (offset, n) in [(len, 1), (len - 512, 1024), (u64::MAX, 2), (1, u64::MAX)] {
            let e = disk.discard(offset, n).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{offset}+{n}");
            for unmap in [false, true] {
                let e = disk.write_zeroes(offset, n, unmap).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{offset}+{n}");
            }
        }
        let ro = RawDisk::open(&image.path, true).unwrap();
        assert_eq!(
            ro.discard(0, 512).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(
            ro.write_zeroes(0, 512, true).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let bytes = image.bytes();
        assert_eq!(bytes.len(), 64 << 10, "the image never grows");
        assert!(bytes.iter().all(|&b| b == 0x77), "nothing changed");
    }

    #[test]
    fn writing_zeroes_is_the_fallback() {
        let image = Image::new("fallback", 200 << 10, 0x11);
        let disk = RawDisk::open(&image.path, false).unwrap();
        // Over several chunks and not a multiple of one.
        write_zeroes_by_writing(&disk, 512, 150 << 10).unwrap();
        let bytes = image.bytes();
        assert!(bytes[..512].iter().all(|&b| b == 0x11));
        assert!(bytes[512..512 + (150 << 10)].iter().all(|&b| b == 0));
        assert!(bytes[512 + (150 << 10)..].iter().all(|&b| b == 0x11));
        assert!(write_zeroes_by_writing(&disk, 200 << 10, 1).is_err());
    }
}
