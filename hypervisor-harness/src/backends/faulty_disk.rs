//! A disk backend that fails on command, around any other: for unit tests and the fuzz
//! targets, so that a device model can be shown to turn a failing disk into an error status for
//! the guest (never corrupt data, never a panic) and to keep serving what comes next.
//!
//! [`FaultyDisk`] passes every operation to the disk it wraps, unless its [`FaultSwitch`] says
//! that kind of operation fails: with `EIO`, a short read or write (part of the buffer moved,
//! then an error), or `ENOSPC` (a write that stores part and fails), each for the next `n`
//! operations or until healed. It can also be slow: every operation first sleeps. The bounds
//! check and the read-only refusal come first, as on a real backend.

use super::discard::check_write;
use super::disk::{check_access, read_only_error, DiskBackend};
use super::vectored::total_len;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use vm_memory::VolatileSlice;

/// How a faulty operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// EIO: nothing moved.
    Eio,
    /// The first half of the buffer moved, then `UnexpectedEof` (a read) or `WriteZero` (a
    /// write): what `read_exact_at`/`write_all_at` report when the file gives out.
    Short,
    /// ENOSPC: a write stores its first half, then fails. On a read: as [`Fault::Eio`].
    NoSpace,
}

/// Which operations fail and how, for how many operations, and how slow every operation is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultPlan {
    pub read: Option<Fault>,
    pub write: Option<Fault>,
    /// Any fault makes a flush fail with EIO.
    pub flush: Option<Fault>,
    /// Faulty operations before the disk heals by itself (`None`: until told).
    pub times: Option<u64>,
    /// Sleep before every operation, faulty or not.
    pub delay: Duration,
}

#[derive(Debug, Default)]
struct State {
    plan: FaultPlan,
    injected: u64,
}

/// The control side of a [`FaultyDisk`]: a test keeps it while the model owns the disk.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<Mutex<State>>);

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Flush,
}

impl FaultSwitch {
    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding it left a plan behind, which is still a plan.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fail as `plan` says from the next operation on.
    pub fn set(&self, plan: FaultPlan) {
        self.state().plan = plan;
    }

    /// Work again, at full speed.
    pub fn heal(&self) {
        self.set(FaultPlan::default());
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.state().injected
    }

    /// The fault this operation gets, counting it, and the delay to apply first.
    fn take(&self, op: Op) -> (Option<Fault>, Duration) {
        let mut st = self.state();
        let plan = &mut st.plan;
        let fault = match op {
            Op::Read => plan.read,
            Op::Write => plan.write,
            Op::Flush => plan.flush,
        };
        let delay = plan.delay;
        if fault.is_some() {
            if let Some(n) = plan.times.as_mut() {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    *plan = FaultPlan {
                        delay,
                        ..FaultPlan::default()
                    };
                }
            }
            st.injected += 1;
        }
        (fault, delay)
    }
}

/// `inner` with faults on command.
pub struct FaultyDisk {
    inner: Box<dyn DiskBackend>,
    switch: FaultSwitch,
}

impl FaultyDisk {
    /// Wrap `inner`; it works until the returned switch says otherwise.
    pub fn new(inner: impl DiskBackend + 'static) -> (Self, FaultSwitch) {
        let switch = FaultSwitch::default();
        let disk = Self {
            inner: Box::new(inner),
            switch: switch.clone(),
        };
        (disk, switch)
    }
}

fn os_error(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

/// The first `limit` bytes of `bufs` as slices in `out` (at most its length); how many.
fn first_bytes<'a>(
    bufs: &[VolatileSlice<'a>],
    limit: usize,
    out: &mut [VolatileSlice<'a>],
) -> usize {
    let mut left = limit;
    let mut count = 0;
    for (b, slot) in bufs.iter().zip(out.iter_mut()) {
        if left == 0 {
            break;
        }
        let n = b.len().min(left);
        // n <= b.len(): always a valid subslice.
        if let Ok(part) = b.subslice(0, n) {
            *slot = part;
            count += 1;
        }
        left -= n;
    }
    count
}

/// Run `op` on the first half of `bufs` (up to [`HALF_SLOTS`] buffers of it).
fn on_first_half(
    bufs: &[VolatileSlice<'_>],
    op: impl FnOnce(&[VolatileSlice<'_>]) -> io::Result<()>,
) -> io::Result<()> {
    let mut part = [VolatileSlice::from(&mut [][..]); HALF_SLOTS];
    let n = first_bytes(bufs, total_len(bufs) / 2, &mut part);
    op(&part[..n])
}

/// Buffers a short transfer's first half may span (more are left out: it is shorter still).
const HALF_SLOTS: usize = 64;

impl DiskBackend for FaultyDisk {
    fn len(&self) -> u64 {
        self.inner.len()
    }

    fn read_only(&self) -> bool {
        self.inner.read_only()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_access(self.len(), offset, buf.len())?;
        let (fault, delay) = self.switch.take(Op::Read);
        std::thread::sleep(delay);
        match fault {
            None => self.inner.read_at(offset, buf),
            Some(Fault::Short) => {
                let half = buf.len() / 2;
                self.inner.read_at(offset, &mut buf[..half])?;
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "faulty disk: short read (injected)",
                ))
            }
            Some(Fault::Eio | Fault::NoSpace) => Err(os_error(libc::EIO)),
        }
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error());
        }
        check_access(self.len(), offset, buf.len())?;
        let (fault, delay) = self.switch.take(Op::Write);
        std::thread::sleep(delay);
        let half = &buf[..buf.len() / 2];
        match fault {
            None => self.inner.write_at(offset, buf),
            Some(Fault::Short) => {
                self.inner.write_at(offset, half)?;
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "faulty disk: short write (injected)",
                ))
            }
            Some(Fault::NoSpace) => {
                self.inner.write_at(offset, half)?;
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio) => Err(os_error(libc::EIO)),
        }
    }

    /// Faults as `read_at`: a short read fills the first half, then fails.
    fn read_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        check_access(self.len(), offset, total_len(bufs))?;
        let (fault, delay) = self.switch.take(Op::Read);
        std::thread::sleep(delay);
        match fault {
            None => self.inner.read_vectored_at(offset, bufs),
            Some(Fault::Short) => {
                on_first_half(bufs, |half| self.inner.read_vectored_at(offset, half))?;
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "faulty disk: short read (injected)",
                ))
            }
            Some(Fault::Eio | Fault::NoSpace) => Err(os_error(libc::EIO)),
        }
    }

    /// Faults as `write_at`: short and ENOSPC store the first half, then fail.
    fn write_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        if self.read_only() {
            return Err(read_only_error());
        }
        check_access(self.len(), offset, total_len(bufs))?;
        let (fault, delay) = self.switch.take(Op::Write);
        std::thread::sleep(delay);
        let write_half = || on_first_half(bufs, |half| self.inner.write_vectored_at(offset, half));
        match fault {
            None => self.inner.write_vectored_at(offset, bufs),
            Some(Fault::Short) => {
                write_half()?;
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "faulty disk: short write (injected)",
                ))
            }
            Some(Fault::NoSpace) => {
                write_half()?;
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio) => Err(os_error(libc::EIO)),
        }
    }

    fn flush(&self) -> io::Result<()> {
        let (fault, delay) = self.switch.take(Op::Flush);
        std::thread::sleep(delay);
        match fault {
            None => self.inner.flush(),
            Some(_) => Err(os_error(libc::EIO)),
        }
    }

    /// Fails as a write does (any fault: EIO, nothing discarded).
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_write(self, offset, len)?;
        let (fault, delay) = self.switch.take(Op::Write);
        std::thread::sleep(delay);
        match fault {
            None => self.inner.discard(offset, len),
            Some(_) => Err(os_error(libc::EIO)),
        }
    }

    /// Fails as a write does: short and ENOSPC zero the first half first.
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        check_write(self, offset, len)?;
        let (fault, delay) = self.switch.take(Op::Write);
        std::thread::sleep(delay);
        match fault {
            None => self.inner.write_zeroes(offset, len, may_unmap),
            Some(Fault::Short) => {
                self.inner.write_zeroes(offset, len / 2, may_unmap)?;
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "faulty disk: short write-zeroes (injected)",
                ))
            }
            Some(Fault::NoSpace) => {
                self.inner.write_zeroes(offset, len / 2, may_unmap)?;
                Err(os_error(libc::ENOSPC))
            }
            Some(Fault::Eio) => Err(os_error(libc::EIO)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::mem_disk::MemDisk;
    use std::time::Instant;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 512) as u8).collect()
    }

    #[test]
    fn passes_through_until_told() {
        let mem = MemDisk::new(pattern(2048), false).unwrap();
        let (d, switch) = FaultyDisk::new(mem.clone());
        assert_eq!((d.len(), d.read_only()), (2048, false));
        let mut b = [0u8; 512];
        d.read_at(512, &mut b).unwrap();
        assert_eq!(&b[..], &pattern(2048)[512..1024]);
        d.write_at(0, &[7; 512]).unwrap();
        d.flush().unwrap();
        assert_eq!(&mem.contents()[..512], &[7; 512][..]);
        assert_eq!(mem.flushes(), 1);
        assert_eq!(switch.injected(), 0);
        // Bounds come first, faults or not.
        switch.set(FaultPlan {
            read: Some(Fault::Eio),
            write: Some(Fault::NoSpace),
            ..FaultPlan::default()
        });
        let e = d.read_at(2047, &mut b[..2]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = d.write_at(u64::MAX, &[1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(switch.injected(), 0);
    }

    #[test]
    fn each_fault_as_a_real_disk_gives_it() {
        let mem = MemDisk::new(pattern(2048), false).unwrap();
        let (d, switch) = FaultyDisk::new(mem.clone());
        let fail = |read, write, flush| FaultPlan {
            read,
            write,
            flush,
            ..FaultPlan::default()
        };
        let mut b = vec![0u8; 512];
        switch.set(fail(Some(Fault::Eio), Some(Fault::Eio), Some(Fault::Eio)));
        assert_eq!(
            d.read_at(0, &mut b).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(b, vec![0; 512], "EIO moves nothing");
        assert_eq!(
            d.write_at(0, &[1; 512]).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        assert_eq!(d.flush().unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(mem.contents(), pattern(2048), "nothing was written");
        assert_eq!(mem.flushes(), 0);

        switch.set(fail(Some(Fault::Short), Some(Fault::Short), None));
        let e = d.read_at(0, &mut b).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(&b[..256], &pattern(2048)[..256]);
        assert_eq!(&b[256..], &[0; 256][..], "only the first half arrived");
        let e = d.write_at(512, &[2; 512]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WriteZero);
        assert_eq!(&mem.contents()[512..768], &[2; 256][..]);
        assert_eq!(&mem.contents()[768..1024], &pattern(2048)[768..1024]);

        switch.set(fail(Some(Fault::NoSpace), Some(Fault::NoSpace), None));
        assert_eq!(
            d.read_at(0, &mut b).unwrap_err().raw_os_error(),
            Some(libc::EIO)
        );
        let e = d.write_at(1024, &[3; 512]).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(&mem.contents()[1024..1280], &[3; 256][..]);
        assert_eq!(&mem.contents()[1280..1536], &pattern(2048)[1280..1536]);
        assert_eq!(switch.injected(), 7);

        switch.heal();
        d.read_at(1024, &mut b).unwrap();
        d.flush().unwrap();
    }

    #[test]
    fn discard_and_write_zeroes_fail_as_writes() {
        let mem = MemDisk::new(pattern(2048), false).unwrap();
        let (d, switch) = FaultyDisk::new(mem.clone());
        d.discard(0, 512).unwrap();
        d.write_zeroes(512, 512, false).unwrap();
        let mut want = pattern(2048);
        want[..1024].fill(0);
        assert_eq!(mem.contents(), want);
        switch.set(FaultPlan {
            write: Some(Fault::NoSpace),
            ..FaultPlan::default()
        });
        // Bounds first: no fault taken.
        let e = d.write_zeroes(1024, 2048, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(switch.injected(), 0);
        let e = d.write_zeroes(1024, 1024, true).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        want[1024..1536].fill(0);
        assert_eq!(mem.contents(), want, "the first half was zeroed");
        let e = d.discard(1536, 512).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert_eq!(mem.contents(), want, "nothing discarded");
        assert_eq!(switch.injected(), 2);
        switch.heal();
        d.discard(1536, 512).unwrap();
        assert_eq!(mem.contents(), vec![0; 2048]);
    }

    #[test]
    fn read_only_is_refused_before_any_fault() {
        let (d, switch) = FaultyDisk::new(MemDisk::new(pattern(512), true).unwrap());
        switch.set(FaultPlan {
            write: Some(Fault::NoSpace),
            ..FaultPlan::default()
        });
        let e = d.write_at(0, &[1]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(switch.injected(), 0);
    }

    #[test]
    fn a_counted_fault_heals_by_itself_and_slowness_stays() {
        let (d, switch) = FaultyDisk::new(MemDisk::zeroed(4, false).unwrap());
        let delay = Duration::from_millis(20);
        switch.set(FaultPlan {
            read: Some(Fault::Eio),
            times: Some(2),
            delay,
            ..FaultPlan::default()
        });
        let mut b = [0u8; 512];
        let t = Instant::now();
        assert!(d.read_at(0, &mut b).is_err());
        assert!(d.write_at(0, &[1; 512]).is_ok(), "only reads fail");
        assert!(d.read_at(0, &mut b).is_err());
        d.read_at(0, &mut b).unwrap();
        assert_eq!(b, [1; 512]);
        assert!(t.elapsed() >= delay * 4, "every operation waited");
        assert_eq!(switch.injected(), 2);
    }
}
