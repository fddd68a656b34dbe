//! Vectored positional I/O between a disk and guest memory: the request's buffers are
//! vm-memory [`VolatileSlice`]s (already checked to lie in guest RAM), moved with one
//! `preadv`/`pwritev` per batch of at most [`MAX_IOVECS`] buffers, so no bounce buffer and no
//! allocation stand between the image and the guest.
//!
//! [`read_through`] and [`write_through`] are the fallbacks for a backend without vectored
//! calls of its own: they go through `read_at`/`write_at` with a small stack buffer.

use super::disk::{check_access, DiskBackend};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use vm_memory::volatile_memory::{PtrGuard, PtrGuardMut};
use vm_memory::VolatileSlice;

/// iovecs per `preadv`/`pwritev` call: well under Linux's IOV_MAX (1024), and as many as a
/// request on a 256-entry queue has segments.
pub const MAX_IOVECS: usize = 256;

/// The bytes `bufs` hold together.
pub fn total_len(bufs: &[VolatileSlice<'_>]) -> usize {
    bufs.iter().map(|b| b.len()).sum()
}

/// Where the transfer stands: buffer `index`, `skip` bytes into it.
#[derive(Clone, Copy)]
struct Cursor {
    index: usize,
    skip: usize,
}

impl Cursor {
    /// Move on by `n` bytes done.
    fn advance(&mut self, bufs: &[VolatileSlice<'_>], mut n: usize) {
        while n > 0 && self.index < bufs.len() {
            let left = bufs[self.index].len() - self.skip;
            if n < left {
                self.skip += n;
                return;
            }
            n -= left;
            self.index += 1;
            self.skip = 0;
        }
        // Skip empty buffers so that a cursor past the last byte is at the end.
        while self.index < bufs.len() && bufs[self.index].len() == self.skip {
            self.index += 1;
            self.skip = 0;
        }
    }
}

/// Which way the data goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Disk to guest memory (`preadv`).
    Read,
    /// Guest memory to disk (`pwritev`).
    Write,
}

/// The guard that keeps one buffer's host pointer valid while the kernel uses it (held for
/// its drop alone).
#[allow(dead_code)]
enum Guard {
    Read(PtrGuard),
    Write(PtrGuardMut),
}

/// Move all of `bufs` at `offset` of `file`, looping on short transfers. A transfer of zero
/// bytes (the file ended, or the disk is full) is an error, as `read_exact_at` and
/// `write_all_at` make it.
fn transfer(file: &File, mut offset: u64, bufs: &[VolatileSlice<'_>], dir: Dir) -> io::Result<()> {
    let empty = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut at = Cursor { index: 0, skip: 0 };
    at.advance(bufs, 0);
    while at.index < bufs.len() {
        let mut iov = [empty; MAX_IOVECS];
        let mut guards: [Option<Guard>; MAX_IOVECS] = [const { None }; MAX_IOVECS];
        let mut count = 0;
        for (i, buf) in bufs[at.index..].iter().take(MAX_IOVECS).enumerate() {
            let skip = if i == 0 { at.skip } else { 0 };
            let (ptr, len) = match dir {
                // The kernel writes guest memory: the mutable guard.
                Dir::Read => {
                    let g = buf.ptr_guard_mut();
                    let p = g.as_ptr();
                    guards[i] = Some(Guard::Write(g));
                    (p, buf.len())
                }
                Dir::Write => {
                    let g = buf.ptr_guard();
                    let p = g.as_ptr().cast_mut();
                    guards[i] = Some(Guard::Read(g));
                    (p, buf.len())
                }
            };
            iov[i] = libc::iovec {
                // `skip` < len (the cursor never rests at a buffer's end), so this stays
                // inside the buffer.
                iov_base: ptr.wrapping_add(skip).cast(),
                iov_len: len - skip,
            };
            count = i + 1;
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
        // SAFETY: each of the `count` iovecs points into a VolatileSlice, memory that is
        // mapped and `iov_len` bytes long for the slice's lifetime (vm-memory checked it
        // against the guest's regions when it made the slice); its guard, alive in `guards`
        // until this loop round ends, keeps it mapped. The kernel only writes those bytes (preadv)
        // or reads them (pwritev). The guest may touch them at the same time, as it may with
        // any DMA; no Rust reference to them exists.
        let n = unsafe {
            match dir {
                Dir::Read => libc::preadv(file.as_raw_fd(), iov.as_ptr(), count as i32, off),
                Dir::Write => libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count as i32, off),
            }
        };
        match n {
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            0 => {
                return Err(match dir {
                    Dir::Read => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "preadv: the image ended early",
                    ),
                    Dir::Write => io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"),
                })
            }
            n => {
                offset += n as u64;
                at.advance(bufs, n as usize);
            }
        }
    }
    Ok(())
}

/// `preadv` of all of `bufs` at `offset` of `file` (whose size the caller checked).
pub fn preadv_all(file: &File, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
    transfer(file, offset, bufs, Dir::Read)
}

/// `pwritev` of all of `bufs` at `offset` of `file` (whose size the caller checked).
pub fn pwritev_all(file: &File, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
    transfer(file, offset, bufs, Dir::Write)
}

/// Bytes a fallback moves per `read_at`/`write_at`.
const STAGE: usize = 4096;

/// `read_vectored_at` through `read_at`: for backends without a vectored call of their own.
pub fn read_through<D: DiskBackend + ?Sized>(
    disk: &D,
    offset: u64,
    bufs: &[VolatileSlice<'_>],
) -> io::Result<()> {
    staged(disk, offset, bufs, Dir::Read)
}

/// `write_vectored_at` through `write_at`: for backends without a vectored call of their own.
pub fn write_through<D: DiskBackend + ?Sized>(
    disk: &D,
    offset: u64,
    bufs: &[VolatileSlice<'_>],
) -> io::Result<()> {
    staged(disk, offset, bufs, Dir::Write)
}

/// Move `bufs` to or from the disk at `offset`, STAGE bytes per `read_at`/`write_at`.
fn staged<D: DiskBackend + ?Sized>(
    disk: &D,
    mut offset: u64,
    bufs: &[VolatileSlice<'_>],
    dir: Dir,
) -> io::Result<()> {
    check_access(disk.len(), offset, total_len(bufs))?;
    let mut stage = [0u8; STAGE];
    for buf in bufs {
        let mut pos = 0;
        while pos < buf.len() {
            let n = (buf.len() - pos).min(STAGE);
            let at = buf.offset(pos).map_err(io::Error::other)?;
            match dir {
                Dir::Read => {
                    disk.read_at(offset, &mut stage[..n])?;
                    at.copy_from(&stage[..n]);
                }
                Dir::Write => {
                    at.copy_to(&mut stage[..n]);
                    disk.write_at(offset, &stage[..n])?;
                }
            }
            pos += n;
            offset += n as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` slices over `mem`, of the given lengths, one after the other.
    fn slices<'a>(mem: &'a mut [u8], lens: &[usize]) -> Vec<VolatileSlice<'a>> {
        let all = VolatileSlice::from(mem);
        let mut at = 0;
        lens.iter()
            .map(|&l| {
                let s = all.subslice(at, l).unwrap();
                at += l;
                s
            })
            .collect()
    }

    fn image(bytes: &[u8]) -> (File, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "vectored-{}-{:?}.img",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, bytes).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (file, path)
    }

    #[test]
    fn preadv_and_pwritev_move_every_buffer_in_order() {
        let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + i / 256) as u8).collect();
        let (file, path) = image(&data);
        // Empty buffers in between, and more buffers than one call takes.
        let mut lens = vec![100, 0, 412, 0, 512];
        lens.extend(std::iter::repeat_n(8, MAX_IOVECS + 3));
        let total: usize = lens.iter().sum();
        let mut mem = vec![0u8; total];
        preadv_all(&file, 1000, &slices(&mut mem, &lens)).unwrap();
        assert_eq!(mem, data[1000..1000 + total]);
        let mut src: Vec<u8> = (0..total).map(|i| i as u8 ^ 0x5a).collect();
        pwritev_all(&file, 3, &slices(&mut src, &lens)).unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(after[3..3 + total], src[..]);
        assert_eq!(after[..3], data[..3]);
        // Reading past the file's end: an error, not silence.
        let mut tail = vec![0u8; 64];
        let e = preadv_all(&file, 8192 - 32, &slices(&mut tail, &[64])).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn cursor_skips_partial_and_empty_buffers() {
        let mut mem = [0u8; 30];
        let bufs = slices(&mut mem, &[10, 0, 10, 10]);
        let mut at = Cursor { index: 0, skip: 0 };
        at.advance(&bufs, 4);
        assert_eq!((at.index, at.skip), (0, 4));
        at.advance(&bufs, 6);
        assert_eq!((at.index, at.skip), (2, 0));
        at.advance(&bufs, 15);
        assert_eq!((at.index, at.skip), (3, 5));
        at.advance(&bufs, 5);
        assert_eq!(at.index, 4);
    }
}
