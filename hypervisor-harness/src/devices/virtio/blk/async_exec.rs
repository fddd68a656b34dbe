//! `cache=none`: the queue served through io_uring with many requests in flight.
//!
//! [`drain_queue_async`] takes every available chain at once: reads, writes and flushes go to
//! the ring as SQEs tagged with the chain's head index, pointing straight at the request's
//! buffers in guest memory (each segment checked in guest RAM by the parse, then turned into
//! a host address by vm-memory); everything else (GET_ID, unsupported types, malformed chains,
//! a read-only disk's writes) is answered at once by the synchronous [`execute`]. One
//! `io_uring_enter` submits the batch. Completions, reaped when the ring's eventfd wakes the
//! I/O thread (or at the next notify), write the status byte and the used ring in completion
//! order, and the batch gets one interrupt if the driver wants it.
//!
//! When nothing watches the eventfd (`IoMode::Inline`: the vCPU drains the queue on its notify
//! exit), each drain waits for its own batch before it returns, so no request waits for a
//! notify that may never come; the batch is still in flight all at once.
//!
//! A head the synchronous path refuses before parsing ([`refused_head`]: INDIRECT with NEXT,
//! a table longer than the queue) is refused here too, with used length 0. Each chain is
//! parsed into the executor's own scratch request, and everything a request in flight needs
//! (its status address, its iovecs in the engine's slot) lives in storage sized once for the
//! queue when the executor is made: a drain allocates nothing per request.
//!
//! Nothing writes guest memory after a reset: [`AsyncExec::abandon`] waits for every request
//! in flight and forgets them (no status, no used entry), and it runs before the device lets
//! go of its memory and queue.

use super::{
    execute, parse_into, refused_head, ParseError, Request, RequestType, Seg, ID_LEN, SECTOR_SIZE,
};
use crate::backends::disk::DiskBackend;
use crate::backends::uring_disk::{Completion, UringCounters, UringEngine, UringOp};
use crate::backends::vectored::MAX_IOVECS;
use crate::devices::virtio::device::{driver_wants_interrupt, QueueBroken};
use crate::devices::virtio::drain::{Drain, Drained};
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

/// What a request's completion writes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    status: GuestAddress,
    /// Bytes a successful read put into the guest's buffers.
    data_in: u32,
}

/// Counts for tests and notes (load-independent).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct AsyncCounters {
    /// Most requests in flight at once.
    pub max_in_flight: usize,
    /// Requests answered at once by the synchronous path.
    pub synchronous: u64,
    /// Requests in flight at a reset, waited for and dropped.
    pub abandoned: u64,
    /// Heads refused before parsing (used length 0), as the synchronous path refuses them.
    pub refused: u64,
}

/// cache=none's counts at the end of a run (`blk-counters` in the run's notes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UringReport {
    /// SQEs pushed to the ring (a short transfer's remainder counts again).
    pub ring_submitted: u64,
    /// Requests the engine served on the buffered file: misaligned for `O_DIRECT`, or
    /// refused by it with EINVAL.
    pub buffered_fallbacks: u64,
    pub resubmitted: u64,
    pub enters: u64,
    /// Requests the engine finished (through the ring or buffered).
    pub completed: u64,
    pub max_in_flight: usize,
    /// Requests answered by the synchronous path (GET_ID, discard, errors, ...).
    pub synchronous: u64,
    /// Heads refused before parsing.
    pub refused: u64,
    /// Requests in flight at a reset, waited for and dropped.
    pub abandoned: u64,
}

/// The ring and the requests in it, per head index.
pub struct AsyncExec {
    engine: UringEngine,
    pending: Vec<Option<Pending>>,
    /// Each chain is parsed into this one (its lists reused).
    scratch: Request,
    /// Sized for the largest request and a full queue of completions when made, then reused.
    iov: Vec<libc::iovec>,
    done: Vec<Completion>,
    /// The mapping the kernel writes into: cloned at the first request after a reset and
    /// kept until the next (a clone per batch would allocate), so it outlives the requests.
    mem: Option<Memory>,
    /// Whether an I/O thread watches [`Self::completion_fd`]; if not, a drain waits for its
    /// batch.
    watched: bool,
    pub counters: AsyncCounters,
}

// SAFETY: the iovec scratch holds raw pointers into guest memory only between building a
// request and queueing it, both on the thread that owns the device at that moment.
unsafe impl Send for AsyncExec {}

impl AsyncExec {
    /// Serve a queue of `queue_size` entries (head indices `0..queue_size`) on `engine`.
    pub fn new(engine: UringEngine, queue_size: u16) -> Self {
        Self {
            engine,
            pending: vec![None; usize::from(queue_size)],
            scratch: Request::empty(),
            iov: Vec::with_capacity(MAX_IOVECS),
            done: Vec::with_capacity(usize::from(queue_size)),
            mem: None,
            watched: false,
            counters: AsyncCounters::default(),
        }
    }

    /// An I/O thread processes the queue when [`Self::completion_fd`] turns readable: a drain
    /// may return with requests in flight.
    pub fn set_watched(&mut self, watched: bool) {
        self.watched = watched;
    }

    /// Readable when completions wait (the I/O thread reads it, then processes the queue).
    pub fn completion_fd(&self) -> &EventFd {
        self.engine.completion_fd()
    }

    pub fn in_flight(&self) -> usize {
        self.engine.in_flight()
    }

    pub fn engine_counters(&self) -> UringCounters {
        self.engine.counters
    }

    pub fn report(&self) -> UringReport {
        let (e, c) = (self.engine.counters, self.counters);
        UringReport {
            ring_submitted: e.submitted,
            buffered_fallbacks: e.buffered,
            resubmitted: e.resubmitted,
            enters: e.enters,
            completed: e.completed,
            max_in_flight: c.max_in_flight,
            synchronous: c.synchronous,
            refused: c.refused,
            abandoned: c.abandoned,
        }
    }

    /// A reset (or the device going away): wait for every request in flight, then forget
    /// them, so no completion writes guest memory afterwards.
    pub fn abandon(&mut self) {
        self.engine.wait_idle(&mut self.done);
        self.counters.abandoned += self.done.len() as u64;
        self.done.clear();
        self.pending.fill(None);
        self.mem = None;
    }

    /// Start the request parsed into `req` (the scratch, lent), the chain at `head`. `None`:
    /// it is in flight; `Some((status, written))`: answered now.
    fn start(
        &mut self,
        head: u16,
        req: &Request,
        mem: &Memory,
        disk: &dyn DiskBackend,
        id: &[u8; ID_LEN],
    ) -> Result<Option<(u8, u32)>, QueueBroken> {
        let queued = match req.ty {
            RequestType::In => self.start_rw(head, req, &req.data_in, UringOp::Read, mem, disk),
            RequestType::Out if !disk.read_only() => {
                self.start_rw(head, req, &req.data_out, UringOp::Write, mem, disk)
            }
            RequestType::Flush if !disk.read_only() => {
                self.engine.queue_sync(head).map_err(|_| busy(head))?;
                true
            }
            _ => false,
        };
        if !queued {
            self.counters.synchronous += 1;
            return Ok(Some(execute(req, mem, disk, id)));
        }
        let data_in = match req.ty {
            RequestType::In => seg_total(&req.data_in) as u32,
            _ => 0,
        };
        self.pending[usize::from(head)] = Some(Pending {
            status: req.status,
            data_in,
        });
        if self.mem.is_none() {
            self.mem = Some(mem.clone());
        }
        self.counters.max_in_flight = self.counters.max_in_flight.max(self.in_flight());
        Ok(None)
    }

    /// Queue a read or write of `segs` on the ring. false: this one takes the synchronous
    /// path (an out-of-range or partial-sector request, which it answers with IOERR; no data;
    /// or a segment that crosses from one guest memory region into the next).
    fn start_rw(
        &mut self,
        head: u16,
        req: &Request,
        segs: &[Seg],
        op: UringOp,
        mem: &Memory,
        disk: &dyn DiskBackend,
    ) -> bool {
        let len = seg_total(segs);
        let Some(offset) = disk_range(disk, req.sector, len) else {
            return false;
        };
        if len == 0 {
            return false;
        }
        self.iov.clear();
        for s in segs {
            // The parse checked the segment lies in guest memory; one region must hold it
            // for a single host address.
            let Ok(slice) = mem.get_slice(s.addr, s.len as usize) else {
                return false;
            };
            self.iov.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        // SAFETY: each iovec lies inside a mapped guest memory region (vm-memory's checked
        // slice), and `self.mem` keeps that mapping alive until the request is reaped or
        // abandoned; what the guest does to its own buffers meanwhile is its business.
        // Its only refusal, a head already in flight, `drain_queue_async` rules out first.
        unsafe { self.engine.queue_rw(head, op, offset, &self.iov) }.is_ok()
    }

    /// Write every finished request's status and used entry. true: any completed.
    fn complete(
        &mut self,
        queue: &mut Queue,
        mem: &Memory,
        requests: &mut u64,
    ) -> Result<bool, QueueBroken> {
        self.engine.reap(&mut self.done);
        let mut any = false;
        for c in self.done.drain(..) {
            let Some(p) = self
                .pending
                .get_mut(usize::from(c.tag))
                .and_then(Option::take)
            else {
                continue;
            };
            let (status, written) = match c.result {
                Ok(_) => (OK, p.data_in),
                Err(_) => (IOERR, 0),
            };
            let used = write_status(mem, p.status, status, written);
            queue.add_used(mem, c.tag, used)?;
            *requests += 1;
            any = true;
        }
        Ok(any)
    }

    fn busy(&self, head: u16) -> bool {
        self.pending
            .get(usize::from(head))
            .is_some_and(Option::is_some)
    }
}

fn busy(head: u16) -> QueueBroken {
    QueueBroken(format!("head {head} made available again while in flight"))
}

fn seg_total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// The byte offset of a read or write, if it is whole sectors inside the disk.
fn disk_range(disk: &dyn DiskBackend, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    (offset.checked_add(len)? <= disk.len()).then_some(offset)
}

/// Write the status byte; the used length: data bytes plus the status, or 0 when the status
/// could not be written.
fn write_status(mem: &Memory, at: GuestAddress, status: u8, written: u32) -> u32 {
    match mem.write_obj(status, at) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}

/// The cache=none counterpart of `drain_queue`: reap what finished, start every available
/// chain, submit them in one go, reap again. Ok(true): the driver wants an interrupt for the
/// used entries this call added, and whether the pass stopped at its bound ([`Drain`]).
pub fn drain_queue_async(
    queue: &mut Queue,
    mem: &Memory,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
    requests: &mut u64,
    exec: &mut AsyncExec,
) -> Result<Drained, QueueBroken> {
    let mut used_any = exec.complete(queue, mem, requests)?;
    let mut pass = Drain::new(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pass.next_chain(queue, mem)? {
            let head = chain.head_index();
            if exec.busy(head) {
                return Err(busy(head));
            }
            if refused_head(queue, mem, head).is_some() {
                // Nothing of it is read: no status byte is known.
                exec.counters.refused += 1;
                queue.add_used(mem, head, 0)?;
                *requests += 1;
                used_any = true;
                continue;
            }
            // The scratch is lent out for the request's start (the iovecs are copied into the
            // engine's slot), then put back with its lists' memory.
            let mut req = std::mem::replace(&mut exec.scratch, Request::empty());
            let answer = match parse_into(mem, chain, &mut req) {
                Ok(()) => exec.start(head, &req, mem, disk, id).map(|r| {
                    r.map(|(status, written)| write_status(mem, req.status, status, written))
                }),
                Err(ParseError::Malformed { status, .. }) => {
                    Ok(Some(write_status(mem, status, IOERR, 0)))
                }
                Err(ParseError::NoStatus(_)) => Ok(Some(0)),
            };
            exec.scratch = req;
            let answer = answer?;
            if let Some(used) = answer {
                queue.add_used(mem, head, used)?;
                *requests += 1;
                used_any = true;
            }
        }
        if !pass.again(queue, mem)? {
            break;
        }
    }
    // A refused submit leaves the SQEs queued; the next call submits them.
    let _ = exec.engine.submit();
    if !exec.watched {
        exec.engine.wait_idle(&mut exec.done);
    }
    used_any |= exec.complete(queue, mem, requests)?;
    Ok(Drained {
        wants_interrupt: used_any && driver_wants_interrupt(queue, mem)?,
        cut: pass.was_cut(),
    })
}

#[cfg(test)]
#[path = "async_tests.rs"]
mod tests;
