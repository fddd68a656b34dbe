//! A disk in memory, for unit tests and fuzzing: no file I/O per input, and failures on demand.
//!
//! [`MemDisk`] follows the [`DiskBackend`] contract exactly as [`super::disk::RawDisk`] does
//! (same size rule, same bounds check, same read-only refusal), and can be told to fail reads,
//! writes or flushes the way a real disk does ([`Fault`]), so that a test can check that a
//! device model turns a failing backend into an error status for the guest, never a panic.

use super::discard::check_write;
use super::disk::{check_access, check_size, read_only_error, DiskBackend, SECTOR_SIZE};
use super::vectored::total_len;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use vm_memory::VolatileSlice;

/// How a faulty operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// EIO: nothing moved.
    Eio,
    /// A read that ends early: the first half of the buffer is filled, then `UnexpectedEof`
    /// (what `read_exact_at` reports). On a write or flush: as [`Fault::Eio`].
    ShortRead,
    /// ENOSPC: a write stores its first half, then fails. On a read or flush: as [`Fault::Eio`].
    NoSpace,
}

/// Which operations fail, and how.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub read: Option<Fault>,
    pub write: Option<Fault>,
    pub flush: Option<Fault>,
}

impl Faults {
    pub const NONE: Self = Self {
        read: None,
        write: None,
        flush: None,
    };
}

#[derive(Debug)]
struct State {
    data: Vec<u8>,
    faults: Faults,
    flushes: u64,
}

/// An in-memory disk. A clone is the same disk: a test keeps one to look inside or inject
/// faults while the device model owns another.
#[derive(Debug, Clone)]
pub struct MemDisk {
    state: Arc<Mutex<State>>,
    len: u64,
    read_only: bool,
}

impl MemDisk {
    /// A disk holding `data`, whose length must be a positive multiple of 512 (as an image's).
    pub fn new(data: Vec<u8>, read_only: bool) -> Result<Self, String> {
        let len = data.len() as u64;
        check_size(len).map_err(|e| format!("memory disk: {e}"))?;
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                data,
                faults: Faults::NONE,
                flushes: 0,
            })),
            len,
            read_only,
        })
    }

    /// `sectors` zeroed sectors (at least one).
    pub fn zeroed(sectors: u64, read_only: bool) -> Result<Self, String> {
        let len = sectors
            .checked_mul(SECTOR_SIZE)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("memory disk: {sectors} sectors do not fit in memory"))?;
        Self::new(vec![0; len], read_only)
    }

    /// `sectors` sectors whose byte at offset `i` is `byte(i)` (a pattern that tells sectors
    /// apart, say).
    pub fn patterned(
        sectors: u64,
        read_only: bool,
        byte: impl Fn(usize) -> u8,
    ) -> Result<Self, String> {
        let disk = Self::zeroed(sectors, read_only)?;
        for (i, b) in disk.state().data.iter_mut().enumerate() {
            *b = byte(i);
        }
        Ok(disk)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock left consistent bytes behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make the given operations fail from now on ([`Faults::NONE`] heals the disk).
    pub fn set_faults(&self, faults: Faults) {
        self.state().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.state().faults
    }

    /// The disk's bytes as they are now.
    pub fn contents(&self) -> Vec<u8> {
        self.state().data.clone()
    }

    /// Successful flushes so far.
    pub fn flushes(&self) -> u64 {
        self.state().flushes
    }
}

fn os_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// Copy the first `limit` bytes of `data` into `bufs`, in order.
fn copy_into(data: &[u8], bufs: &[VolatileSlice<'_>], limit: usize) {
    let mut at = 0;
    for b in bufs {
        let n = b.len().min(limit - at);
        b.copy_from(&data[at..at + n]);
        at += n;
    }
}

/// Copy the first `limit` bytes of `bufs` into `data`.
fn copy_out(bufs: &[VolatileSlice<'_>], data: &mut [u8], limit: usize) {
    let mut at = 0;
    for b in bufs {
        let n = b.len().min(limit - at);
        b.copy_to(&mut data[at..at + n]);
        at += n;
    }
}

impl DiskBackend for MemDisk {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_access(self.len, offset, buf.len())?;
        let st = self.state();
        // In range, so it fits in the Vec (whose length is `self.len`).
        let start = offset as usize;
        let src = &st.data[start..start + buf.len()];
        match st.faults.read {
            None => {
                buf.copy_from_slice(src);
                Ok(())
            }
            Some(Fault::ShortRead) => {
                let half = buf.len() / 2;
                buf[..half].copy_from_slice(&src[..half]);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "memory disk: short read (injected)",
                ))
            }
            Some(Fault::Eio | Fault::NoSpace) => Err(os_error(libc::EIO)),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        check_access(self.len, offset, buf.len())?;
        let mut st = self.state();
        let start = offset as usize;
        match st.faults.write {
            None => {
                st.data[start..start + buf.len()].copy_from_slice(buf);
                Ok(())
            }
            Some(Fault::NoSpace) => {
                let half = buf.len() / 2;
                st.data[start..start + half].copy_from_slice(&buf[..half]);
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio | Fault::ShortRead) => Err(os_error(libc::EIO)),
        }
    }

    /// As `read_at`, through the slices (a short read fills the first half).
    fn read_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        let len = total_len(bufs);
        check_access(self.len, offset, len)?;
        let st = self.state();
        // In range, so it fits in the Vec.
        let src = &st.data[offset as usize..offset as usize + len];
        match st.faults.read {
            None => {
                copy_into(src, bufs, len);
                Ok(())
            }
            Some(Fault::ShortRead) => {
                copy_into(src, bufs, len / 2);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "memory disk: short read (injected)",
                ))
            }
            Some(Fault::Eio | Fault::NoSpace) => Err(os_error(libc::EIO)),
        }
    }

    /// As `write_at`, through the slices (ENOSPC stores the first half).
    fn write_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only {
            return Err(read_only_error());
        }
        let len = total_len(bufs);
        check_access(self.len, offset, len)?;
        let mut st = self.state();
        let fault = st.faults.write;
        let dst = &mut st.data[offset as usize..offset as usize + len];
        match fault {
            None => {
                copy_out(bufs, dst, len);
                Ok(())
            }
            Some(Fault::NoSpace) => {
                copy_out(bufs, dst, len / 2);
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio | Fault::ShortRead) => Err(os_error(libc::EIO)),
        }
    }

    fn flush(&self) -> io::Result<()> {
        let mut st = self.state();
        match st.faults.flush {
            None => {
                st.flushes += 1;
                Ok(())
            }
            Some(_) => Err(os_error(libc::EIO)),
        }
    }

    /// Zeroes the range, as a thin disk's deallocated blocks read; fails as a write does.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    /// Fails as a write does (ENOSPC: the first half is zeroed).
    fn write_zeroes(&self, offset: u64, len: u64, _may_unmap: bool) -> io::Result<()> {
        check_write(self, offset, len)?;
        let mut st = self.state();
        // In range, so it fits in the Vec.
        let range = offset as usize..(offset + len) as usize;
        match st.faults.write {
            None => {
                st.data[range].fill(0);
                Ok(())
            }
            Some(Fault::NoSpace) => {
                st.data[range.start..range.start + range.len() / 2].fill(0);
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio | Fault::ShortRead) => Err(os_error(libc::EIO)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    #[test]
    fn size_rules_as_an_image() {
        assert!(MemDisk::new(Vec::new(), false).is_err());
        assert!(MemDisk::new(vec![0; 1000], false)
            .unwrap_err()
            .contains("multiple of 512"));
        assert!(MemDisk::zeroed(u64::MAX, false).is_err());
        let d = MemDisk::zeroed(8, true).unwrap();
        assert_eq!((d.len(), d.sectors(), d.read_only()), (4096, 8, true));
        let p = MemDisk::patterned(2, false, |i| (i * 7 + i / 512) as u8).unwrap();
        assert_eq!(p.contents(), pattern(1024));
        assert!(MemDisk::patterned(0, false, |_| 1).is_err());
    }

    #[test]
    fn reads_writes_and_bounds() {
        let d = MemDisk::new(pattern(1024), false).unwrap();
        let mut b = [0u8; 512];
        d.read_at(512, &mut b).unwrap();
        assert_eq!(&b[..], &pattern(1024)[512..]);
        d.write_at(512, &[9; 512]).unwrap();
        d.read_at(512, &mut b).unwrap();
        assert_eq!(b, [9; 512]);
        // Past the end, straddling it, and wrapping around: refused, nothing moves.
        assert!(d.read_at(1023, &mut [0u8; 2]).is_err());
        assert!(d.read_at(u64::MAX, &mut [0u8; 1]).is_err());
        assert!(d.write_at(u64::MAX - 1, &[1, 2, 3]).is_err());
        assert_eq!(
            d.write_at(1024, &[1]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(d.contents().len(), 1024, "disk grew");
        // Empty accesses at the end are fine.
        d.read_at(1024, &mut []).unwrap();
        d.flush().unwrap();
        assert_eq!(d.flushes(), 1);
    }

    #[test]
    fn read_only_refuses_writes() {
        let d = MemDisk::new(pattern(512), true).unwrap();
        assert_eq!(
            d.write_at(0, &[1]).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(d.contents(), pattern(512));
        d.flush().unwrap();
    }

    #[test]
    fn clones_share_the_disk() {
        let d = MemDisk::zeroed(1, false).unwrap();
        let model: Box<dyn DiskBackend> = Box::new(d.clone());
        model.write_at(0, &[5; 4]).unwrap();
        assert_eq!(&d.contents()[..4], &[5; 4]);
    }

    #[test]
    fn discard_and_write_zeroes_zero_the_range() {
        let d = MemDisk::new(pattern(2048), false).unwrap();
        d.discard(512, 512).unwrap();
        d.write_zeroes(1536, 256, false).unwrap();
        let mut want = pattern(2048);
        want[512..1024].fill(0);
        want[1536..1792].fill(0);
        assert_eq!(d.contents(), want);
        assert!(d.discard(1024, 1025).is_err());
        assert!(d.write_zeroes(u64::MAX, 2, true).is_err());
        d.set_faults(Faults {
            write: Some(Fault::NoSpace),
            ..Faults::NONE
        });
        let e = d.write_zeroes(0, 512, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        want[..256].fill(0);
        assert_eq!(d.contents(), want, "the first half was zeroed");
        d.set_faults(Faults {
            write: Some(Fault::Eio),
            ..Faults::NONE
        });
        assert!(d.discard(1792, 256).is_err());
        assert_eq!(d.contents(), want);
        let ro = MemDisk::new(pattern(512), true).unwrap();
        assert_eq!(
            ro.discard(0, 512).unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        assert_eq!(ro.contents(), pattern(512));
    }

    #[test]
    fn injected_faults() {
        let d = MemDisk::new(pattern(1024), false).unwrap();
        let mut b = vec![0u8; 512];

        d.set_faults(Faults {
            read: Some(Fault::Eio),
            ..Faults::NONE
        });
        let e = d.read_at(0, &mut b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(b, vec![0; 512], "EIO moves nothing");
        d.write_at(0, &[1; 512]).unwrap();

        d.set_faults(Faults {
            read: Some(Fault::ShortRead),
            ..Faults::NONE
        });
        let e = d.read_at(0, &mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&b[..256], &[1; 256][..]);
        assert_eq!(&b[256..], &[0; 256][..], "only the first half arrived");

        d.set_faults(Faults {
            write: Some(Fault::NoSpace),
            ..Faults::NONE
        });
        let e = d.write_at(512, &[2; 512]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        let now = d.contents();
        assert_eq!(&now[512..768], &[2; 256][..], "the first half landed");
        assert_eq!(&now[768..], &pattern(1024)[768..]);
        // Bounds still come first: an out-of-range write is InvalidInput, not ENOSPC.
        assert_eq!(
            d.write_at(1024, &[1]).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );

        d.set_faults(Faults {
            flush: Some(Fault::Eio),
            ..Faults::NONE
        });
        assert!(d.flush().is_err());
        assert_eq!(d.flushes(), 0);

        d.set_faults(Faults::NONE);
        d.read_at(512, &mut b).unwrap();
        d.flush().unwrap();
        assert_eq!(d.faults(), Faults::NONE);
    }
}
