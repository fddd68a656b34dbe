//! `cache=none`: a raw image opened `O_DIRECT`, its requests kept in flight through io_uring
//! (as QEMU's `aio=io_uring` and cloud-hypervisor's raw async disk do), so the host's page
//! cache holds no copy and a queue of requests costs one `io_uring_enter` per batch.
//!
//! [`DirectDisk`] is the image: the `O_DIRECT` file for the ring, and a buffered [`RawDisk`] on
//! the same file for what the ring cannot take (the synchronous [`DiskBackend`] calls, and
//! requests whose buffers or offset break `O_DIRECT`'s alignment). [`UringEngine`] is the ring:
//! readv, writev and fdatasync SQEs tagged with the caller's number (virtio-blk: the chain's
//! head index), an eventfd that turns readable when completions arrive, and
//! [`UringEngine::reap`] that hands back `(tag, bytes moved or error)`. A short completion is
//! resubmitted for the rest; one that moved nothing (end of file) is an error, never a success
//! with stale data.

use super::disk::{DiskBackend, RawDisk};
use super::vectored::MAX_IOVECS;
use io_uring::{opcode, squeue, types, IoUring};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use vmm_sys_util::eventfd::EventFd;

/// What `O_DIRECT` asks of a request on this file: buffer addresses aligned to `mem`, offsets
/// and segment lengths to `offset` (the logical block size), both powers of two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAlign {
    pub mem: u64,
    pub offset: u64,
}

impl DirectAlign {
    /// When the kernel does not say (statx without STATX_DIOALIGN): the classic 512-byte
    /// sector for both, which every block device accepts.
    pub const FALLBACK: Self = Self {
        mem: 512,
        offset: 512,
    };

    /// The file's own `O_DIRECT` alignment, from statx's STATX_DIOALIGN (Linux 6.1).
    pub fn of(file: &File) -> Self {
        // SAFETY: statx is zeroable plain data; the call writes at most that struct through a
        // valid pointer, and the empty path with AT_EMPTY_PATH refers to `file` itself.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the C string literal is NUL-terminated.
        let rc = unsafe {
            libc::statx(
                file.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_DIOALIGN,
                &mut stx,
            )
        };
        let given = |v: u32| (v as u64).is_power_of_two().then_some(v as u64);
        if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
            return Self::FALLBACK;
        }
        match (
            given(stx.stx_dio_mem_align),
            given(stx.stx_dio_offset_align),
        ) {
            (Some(mem), Some(offset)) => Self { mem, offset },
            _ => Self::FALLBACK,
        }
    }

    /// Whether a transfer at `offset` into or out of `iov` may go to the `O_DIRECT` file.
    pub fn fits(&self, offset: u64, iov: &[libc::iovec]) -> bool {
        offset.is_multiple_of(self.offset)
            && iov.iter().all(|v| {
                (v.iov_base as u64).is_multiple_of(self.mem)
                    && (v.iov_len as u64).is_multiple_of(self.offset)
            })
    }
}

/// A raw image for `cache=none`: opened twice, `O_DIRECT` for the ring and buffered for the
/// rest. Its [`DiskBackend`] methods are the buffered ones: what the device does not put on
/// the ring (`cache=` is a virtio option; IDE never gets one).
#[derive(Debug)]
pub struct DirectDisk {
    buffered: RawDisk,
    direct: File,
    /// The buffered file again, for the engine's fallback (RawDisk keeps its own private).
    plain: File,
    align: DirectAlign,
}

impl DirectDisk {
    /// Open the image at `path`. A file system without `O_DIRECT` (tmpfs) is a clear error.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, String> {
        let buffered = RawDisk::open(path, read_only)?;
        let direct = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .map_err(|e| {
                format!(
                    "disk image {}: cache=none needs O_DIRECT, which failed: {e}",
                    path.display()
                )
            })?;
        let plain = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| format!("disk image {}: {e}", path.display()))?;
        let align = DirectAlign::of(&direct);
        Ok(Self {
            buffered,
            direct,
            plain,
            align,
        })
    }

    pub fn path(&self) -> &Path {
        self.buffered.path()
    }

    pub fn align(&self) -> DirectAlign {
        self.align
    }

    /// A ring for this image with room for `slots` requests in flight (tags `0..slots`).
    pub fn engine(&self, slots: u16) -> io::Result<UringEngine> {
        UringEngine::new(
            self.direct.try_clone()?,
            self.plain.try_clone()?,
            self.align,
            slots,
        )
    }
}

impl DiskBackend for DirectDisk {
    fn len(&self) -> u64 {
        self.buffered.len()
    }
    fn read_only(&self) -> bool {
        self.buffered.read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.buffered.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.buffered.write_at(offset, buf)
    }
    fn flush(&self) -> io::Result<()> {
        self.buffered.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.buffered.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> io::Result<()> {
        self.buffered.write_zeroes(offset, len, may_unmap)
    }
}

/// What a slot's SQE does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UringOp {
    Read,
    Write,
    /// fdatasync, started only once every SQE before it has completed (IOSQE_IO_DRAIN).
    Sync,
}

/// One finished request: its tag, and the bytes it moved (0 for a sync) or why it failed.
#[derive(Debug)]
pub struct Completion {
    pub tag: u16,
    pub result: io::Result<u64>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The tag is outside `0..slots` or already in flight.
    TagBusy,
}

/// Counts of what the engine did (load-independent, for tests and notes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UringCounters {
    /// Requests that went through the ring.
    pub submitted: u64,
    /// Requests served on the buffered file instead: misaligned for `O_DIRECT`, or refused
    /// with EINVAL by the ring.
    pub buffered: u64,
    /// Short completions resubmitted for their remainder.
    pub resubmitted: u64,
    /// `io_uring_enter` calls.
    pub enters: u64,
    /// Requests finished (through the ring or not) and handed to [`UringEngine::reap`].
    pub completed: u64,
}

#[derive(Debug)]
struct Slot {
    busy: bool,
    op: UringOp,
    /// File offset of what is left to move.
    offset: u64,
    /// The caller's buffers; `iov[first..]` is what is left (the first one maybe advanced).
    iov: Vec<libc::iovec>,
    first: usize,
    moved: u64,
    left: u64,
}

// SAFETY: the iovecs' raw pointers are only handed to the kernel and to preadv/pwritev; the
// caller of `queue_rw` vouched for the memory behind them until the request completes,
// whichever thread the engine is on.
unsafe impl Send for Slot {}

/// An io_uring over one `O_DIRECT` file with a buffered twin for misaligned requests.
///
/// Memory handed to [`Self::queue_rw`] is written by the kernel until the request's
/// completion has been reaped: the engine waits for everything in flight before it is
/// dropped, and [`Self::wait_idle`] does the same on demand (a device reset).
pub struct UringEngine {
    ring: IoUring,
    completions: EventFd,
    direct: File,
    buffered: File,
    align: DirectAlign,
    slots: Vec<Slot>,
    in_flight: usize,
    /// SQEs pushed but not yet submitted.
    unsubmitted: usize,
    /// Finished without the ring (buffered fallbacks, errors found at queue time).
    ready: Vec<Completion>,
    pub counters: UringCounters,
}

impl UringEngine {
    /// A ring with room for `slots` requests in flight on `direct`, falling back to
    /// `buffered` (the same file) for what `align` rules out.
    pub fn new(direct: File, buffered: File, align: DirectAlign, slots: u16) -> io::Result<Self> {
        let slots = slots.max(1);
        // Twice the completion entries: resubmitted remainders never overflow the CQ.
        let ring = IoUring::builder()
            .setup_cqsize(2 * u32::from(slots).next_power_of_two())
            .build(u32::from(slots).next_power_of_two())?;
        let completions = EventFd::new(libc::EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(completions.as_raw_fd())?;
        // Every slot has room for the largest request (a chain of a full 256-entry queue), so
        // queueing one never allocates; the pages stay untouched until a request needs them.
        let slots: Vec<Slot> = (0..slots)
            .map(|_| Slot {
                busy: false,
                op: UringOp::Read,
                offset: 0,
                iov: Vec::with_capacity(MAX_IOVECS),
                first: 0,
                moved: 0,
                left: 0,
            })
            .collect();
        Ok(Self {
            ring,
            completions,
            direct,
            buffered,
            align,
            ready: Vec::with_capacity(slots.len()),
            slots,
            in_flight: 0,
            unsubmitted: 0,
            counters: UringCounters::default(),
        })
    }

    /// Readable when completions wait to be reaped (an I/O thread's epoll watches it; read it
    /// before reaping).
    pub fn completion_fd(&self) -> &EventFd {
        &self.completions
    }

    /// Requests queued and not yet reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub fn align(&self) -> DirectAlign {
        self.align
    }

    /// Queue a read into, or a write from, `iov` at file `offset`, tagged `tag`. A transfer
    /// that `O_DIRECT` cannot take is served at once on the buffered file; its completion
    /// comes with the next [`Self::reap`] like the others.
    ///
    /// # Safety
    /// Every iovec must describe memory that stays mapped, and that nothing else reads (a
    /// read) or writes (a write) in a way the caller cares about, until this tag's completion
    /// has been reaped (or [`Self::wait_idle`] or the drop has returned).
    pub unsafe fn queue_rw(
        &mut self,
        tag: u16,
        op: UringOp,
        offset: u64,
        iov: &[libc::iovec],
    ) -> Result<(), QueueError> {
        let align = self.align;
        let slot = self.claim(tag)?;
        slot.op = op;
        slot.offset = offset;
        slot.iov.clear();
        slot.iov.extend_from_slice(iov);
        slot.first = 0;
        slot.moved = 0;
        slot.left = iov.iter().map(|v| v.iov_len as u64).sum();
        if op == UringOp::Sync || !align.fits(offset, iov) {
            self.serve_buffered(tag);
        } else {
            self.push(tag);
        }
        Ok(())
    }

    /// Queue an fdatasync tagged `tag` that starts once every request queued before it has
    /// completed (a virtio-blk flush covers the writes before it).
    pub fn queue_sync(&mut self, tag: u16) -> Result<(), QueueError> {
        let slot = self.claim(tag)?;
        slot.op = UringOp::Sync;
        slot.iov.clear();
        slot.first = 0;
        slot.moved = 0;
        slot.left = 0;
        self.push(tag);
        Ok(())
    }

    fn claim(&mut self, tag: u16) -> Result<&mut Slot, QueueError> {
        match self.slots.get_mut(usize::from(tag)) {
            Some(slot) if !slot.busy => {
                slot.busy = true;
                self.in_flight += 1;
                Ok(slot)
            }
            _ => Err(QueueError::TagBusy),
        }
    }

    /// Push the SQE for what is left of slot `tag`, submitting first if the SQ is full.
    fn push(&mut self, tag: u16) {
        let slot = &self.slots[usize::from(tag)];
        let fd = types::Fd(self.direct.as_raw_fd());
        let rest = &slot.iov[slot.first..];
        let entry = match slot.op {
            UringOp::Read => opcode::Readv::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(slot.offset)
                .build(),
            UringOp::Write => opcode::Writev::new(fd, rest.as_ptr(), rest.len() as u32)
                .offset(slot.offset)
                .build(),
            UringOp::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(u64::from(tag));
        loop {
            // SAFETY: the SQE points at the slot's iovec array, which stays put until the
            // slot completes (it is only changed between completion and resubmission), and
            // at buffers the caller of queue_rw vouched for.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                break;
            }
            // SQ full: hand what is queued to the kernel and try again.
            if self.submit().is_err() {
                // The ring refused (ENOMEM and the like): fail this request rather than spin.
                self.finish(tag, Err(io::Error::other("io_uring submission failed")));
                return;
            }
        }
        self.unsubmitted += 1;
        self.counters.submitted += 1;
    }

    /// Hand every queued SQE to the kernel (one `io_uring_enter`), if there are any.
    pub fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            self.counters.enters += 1;
            match self.ring.submit() {
                Ok(n) => self.unsubmitted -= n.min(self.unsubmitted),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBUSY/EAGAIN: the CQ is full; completions must be reaped first.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    self.harvest();
                    if self.unsubmitted > 0 && self.ring.completion().is_empty() {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Move finished requests into `out` (appended), resubmitting short ones for the rest.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        self.harvest();
        out.append(&mut self.ready);
        // Resubmitted remainders go out now, not at the caller's next submit.
        let _ = self.submit();
    }

    /// Wait until nothing is in flight, handing every completion to `out`.
    pub fn wait_idle(&mut self, out: &mut Vec<Completion>) {
        loop {
            self.reap(out);
            if self.in_flight == 0 {
                return;
            }
            self.counters.enters += 1;
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The ring is unusable; its requests can't be waited for one by one.
                    // Dropping the ring (close) still waits for them in the kernel.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Take the CQEs into `ready`.
    fn harvest(&mut self) {
        loop {
            // One entry at a time: completing one may push a resubmission.
            let next = self.ring.completion().next();
            let Some(cqe) = next else {
                return;
            };
            if let Ok(tag) = u16::try_from(cqe.user_data()) {
                self.completed(tag, cqe.result());
            }
        }
    }

    /// The kernel finished slot `tag`'s SQE with `res`.
    fn completed(&mut self, tag: u16, res: i32) {
        let Some(slot) = self.slots.get_mut(usize::from(tag)).filter(|s| s.busy) else {
            return;
        };
        if res == -libc::EINVAL && slot.op != UringOp::Sync && slot.moved == 0 {
            // O_DIRECT refused what statx said it takes: the buffered file serves it.
            self.serve_buffered(tag);
            return;
        }
        if res < 0 {
            self.finish(tag, Err(io::Error::from_raw_os_error(-res)));
            return;
        }
        let n = res as u64;
        if slot.op == UringOp::Sync || n >= slot.left {
            let moved = slot.moved + n.min(slot.left);
            self.finish(tag, Ok(moved));
            return;
        }
        if n == 0 {
            self.finish(
                tag,
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "io_uring transfer moved nothing (end of file)",
                )),
            );
            return;
        }
        advance(slot, n);
        self.counters.resubmitted += 1;
        self.push(tag);
    }

    /// Serve slot `tag` synchronously on the buffered file.
    fn serve_buffered(&mut self, tag: u16) {
        self.counters.buffered += 1;
        let fd = self.buffered.as_raw_fd();
        let slot = &mut self.slots[usize::from(tag)];
        let result = loop {
            if slot.op == UringOp::Sync {
                // SAFETY: fdatasync on an fd we own.
                let rc = unsafe { libc::fdatasync(fd) };
                break if rc == 0 {
                    Ok(0)
                } else {
                    Err(io::Error::last_os_error())
                };
            }
            if slot.left == 0 {
                break Ok(slot.moved);
            }
            let rest = &slot.iov[slot.first..];
            let count = rest.len().min(libc::UIO_MAXIOV as usize) as libc::c_int;
            // SAFETY: the iovecs describe memory the caller of queue_rw vouched for; the
            // kernel checks every address itself.
            let rc = unsafe {
                match slot.op {
                    UringOp::Read => libc::preadv(fd, rest.as_ptr(), count, slot.offset as i64),
                    _ => libc::pwritev(fd, rest.as_ptr(), count, slot.offset as i64),
                }
            };
            match rc {
                n if n > 0 => advance(slot, n as u64),
                0 => {
                    break Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "transfer moved nothing (end of file)",
                    ))
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        break Err(e);
                    }
                }
            }
        };
        self.finish(tag, result);
    }

    fn finish(&mut self, tag: u16, result: io::Result<u64>) {
        if let Some(slot) = self.slots.get_mut(usize::from(tag)) {
            if slot.busy {
                slot.busy = false;
                self.in_flight -= 1;
                self.counters.completed += 1;
                self.ready.push(Completion { tag, result });
            }
        }
    }
}

/// Move slot's cursor `n` bytes on (0 < n <= left).
fn advance(slot: &mut Slot, mut n: u64) {
    slot.moved += n;
    slot.left -= n;
    slot.offset += n;
    while n > 0 && slot.first < slot.iov.len() {
        let v = &mut slot.iov[slot.first];
        let len = v.iov_len as u64;
        if n >= len {
            n -= len;
            slot.first += 1;
        } else {
            // n < iov_len: the address stays inside the buffer the caller gave.
            v.iov_base = (v.iov_base as usize + n as usize) as *mut libc::c_void;
            v.iov_len -= n as usize;
            n = 0;
        }
    }
}

impl Drop for UringEngine {
    /// The kernel may still write into memory handed to the ring: wait for it to finish.
    fn drop(&mut self) {
        let mut sink = Vec::new();
        self.wait_idle(&mut sink);
    }
}

#[cfg(test)]
mod tests;
