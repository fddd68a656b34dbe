//! virtio-blk (virtio 1.x §5.2) on a raw image.
//!
//! The request logic is pure and apart from the glue: [`parse`] (request.rs) turns a
//! descriptor chain into a [`Request`] (or says why it can't), [`execute`] (execute.rs) runs a
//! request against a [`DiskBackend`], and [`handle_chain`] does both and writes the status
//! byte. config.rs holds the configuration space and the offered features. [`Blk`] is the
//! [`VirtioDevice`] around them: activated, it owns its queue, drains it when notified
//! ([`drain_queue`]) and triggers the queue interrupt itself when the driver wants one.
//!
//! Every guest address is checked (vm-memory's checked accesses, and `check_range` before any
//! work), data moves between the image and guest memory without a copy (vectored backend
//! calls on vm-memory slices; no allocation per request), and a chain the device can't make
//! sense of never panics: it gets VIRTIO_BLK_S_IOERR when a status byte can be written, else it is
//! returned with used length 0.

mod async_exec;
mod config;
pub mod discard;
#[cfg(test)]
mod event_idx_tests;
mod execute;
mod indirect;
#[cfg(test)]
mod indirect_tests;
mod mq;
mod request;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectored_tests;

pub use async_exec::{drain_queue_async, AsyncCounters, AsyncExec, UringReport};
pub use config::*;
pub use execute::{execute, handle_chain, handle_chain_with, SLICES};
pub use indirect::refused_head;
pub use mq::MAX_QUEUES;
pub use request::{parse, parse_into, BlkHeader, ParseError, Request, RequestType, Seg};

use super::device::{driver_wants_interrupt, Activation, InterruptType, QueueBroken, VirtioDevice};
use super::drain::{Drain, Drained};
use super::Memory;
use crate::backends::disk::RawDisk;
use virtio_queue::{Queue, QueueT};

/// The storage trait lives with the backends; re-exported for the models' and tests' use.
pub use crate::backends::disk::DiskBackend;

/// The GET_ID string: the image's file name, cut to 20 bytes, zero-padded.
pub fn serial_from_path(path: &std::path::Path) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let b = name.as_bytes();
    let n = b.len().min(ID_LEN);
    id[..n].copy_from_slice(&b[..n]);
    id
}

pub struct Blk {
    disk: Box<dyn DiskBackend>,
    id: [u8; ID_LEN],
    config: BlkConfig,
    /// One per request queue (`queues=`, [`Blk::with_queues`]).
    sizes: Vec<u16>,
    /// Memory, queue and interrupt handle from DRIVER_OK to reset.
    active: Option<Activation>,
    /// The request each chain is parsed into, its segment lists reused.
    scratch: Request,
    /// Requests completed (for diagnostics).
    pub requests: u64,
    /// Passes over a queue stopped at their bound ([`Drain`]).
    pub drains_cut: u64,
    /// `cache=none`: the io_uring the queue is served through.
    exec: Option<AsyncExec>,
    /// A polling I/O thread serves the queues ([`Self::set_polled`]): a drain then leaves the
    /// driver's notifications off, and the thread turns them back on before it sleeps.
    polled: bool,
}

impl Blk {
    pub fn new(disk: Box<dyn DiskBackend>, id: [u8; ID_LEN]) -> Self {
        let config = BlkConfig::new(disk.len() / SECTOR_SIZE);
        Self {
            disk,
            id,
            config,
            sizes: vec![QUEUE_SIZE],
            active: None,
            scratch: Request::empty(),
            requests: 0,
            drains_cut: 0,
            exec: None,
            polled: false,
        }
    }

    /// `cache=none`: on an `O_DIRECT` image through io_uring, requests in flight up to the
    /// queue size. The ring's completion eventfd ([`Self::completion_fd`]) must wake whoever
    /// processes the queue.
    pub fn on_direct(disk: crate::backends::uring_disk::DirectDisk) -> std::io::Result<Self> {
        let exec = AsyncExec::new(disk.engine(QUEUE_SIZE)?, QUEUE_SIZE);
        let id = serial_from_path(disk.path());
        let mut blk = Self::new(Box::new(disk), id);
        blk.exec = Some(exec);
        Ok(blk)
    }

    /// Readable when io_uring completions wait (`cache=none` only).
    pub fn completion_fd(&self) -> Option<&vmm_sys_util::eventfd::EventFd> {
        self.exec.as_ref().map(AsyncExec::completion_fd)
    }

    pub fn async_exec(&self) -> Option<&AsyncExec> {
        self.exec.as_ref()
    }

    /// Whether an I/O thread watches [`Self::completion_fd`] (see [`AsyncExec::set_watched`]).
    pub fn set_completions_watched(&mut self, watched: bool) {
        if let Some(exec) = self.exec.as_mut() {
            exec.set_watched(watched);
        }
    }

    /// Whether a polling I/O thread serves the queues. If so, a drain does not turn the
    /// driver's notifications back on at its end: the driver, seeing its completion, posts
    /// the next request at once, and with notifications on it would notify although the
    /// thread is about to poll. The thread turns them on before it sleeps
    /// (`io_thread::Waiter`), and looks at the ring once more then.
    pub fn set_polled(&mut self, polled: bool) {
        self.polled = polled;
    }

    /// On a raw image; GET_ID answers with the image's file name.
    pub fn on_raw(disk: RawDisk) -> Self {
        let id = serial_from_path(disk.path());
        Self::new(Box::new(disk), id)
    }
}

/// Handle every chain available on `queue`, counting them in `requests`. Ok(true): the driver
/// wants an interrupt (event index, or VRING_AVAIL_F_NO_INTERRUPT clear).
pub fn drain_queue(
    queue: &mut Queue,
    mem: &Memory,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
    requests: &mut u64,
) -> Result<bool, QueueBroken> {
    drain_queue_with(&mut Request::empty(), queue, mem, disk, id, requests, false)
        .map(|d| d.wants_interrupt)
}

/// [`drain_queue`] parsing every chain into `scratch` (the device's own, reused), saying
/// what the pass did ([`Drained`]). With
/// `leave_notifications_off` (a polling thread's drain, [`Blk::set_polled`]) the driver's
/// notifications stay off at the end; the caller must turn them on before it stops looking
/// at the ring.
pub fn drain_queue_with(
    scratch: &mut Request,
    queue: &mut Queue,
    mem: &Memory,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
    requests: &mut u64,
    leave_notifications_off: bool,
) -> Result<Drained, QueueBroken> {
    let mut used_any = false;
    let mut pass = Drain::new(queue);
    loop {
        queue.disable_notification(mem)?;
        while let Some(chain) = pass.next_chain(queue, mem)? {
            let head = chain.head_index();
            let used = match refused_head(queue, mem, head) {
                // Nothing of it is read: no status byte is known.
                Some(_) => 0,
                None => handle_chain_with(scratch, mem, chain, disk, id),
            };
            queue.add_used(mem, head, used)?;
            *requests += 1;
            used_any = true;
        }
        if leave_notifications_off || !pass.again(queue, mem)? {
            break;
        }
    }
    Ok(Drained {
        wants_interrupt: used_any && driver_wants_interrupt(queue, mem)?,
        cut: pass.was_cut(),
    })
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        device_features(self.disk.read_only()) | self.mq_features()
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(src) = start
            .checked_add(data.len())
            .and_then(|end| self.config.visible().get(start..end))
        {
            data.copy_from_slice(src);
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), String> {
        if activation.queues.len() != self.sizes.len() {
            let (got, have) = (activation.queues.len(), self.sizes.len());
            return Err(format!("{got} queues for {have}"));
        }
        self.active = Some(activation);
        Ok(())
    }

    fn activation(&self) -> Option<&Activation> {
        self.active.as_ref()
    }

    fn activation_mut(&mut self) -> Option<&mut Activation> {
        self.active.as_mut()
    }

    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
        let Some(Activation {
            mem,
            queues,
            interrupt,
            ..
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(queue) = queues.get_mut(index) else {
            return Ok(());
        };
        // cache=none's ring serves queue 0 (its tags are that queue's heads); other queues
        // (queues=N) are served synchronously.
        let drained = match self.exec.as_mut().filter(|_| index == 0) {
            Some(exec) => {
                drain_queue_async(queue, mem, &*self.disk, &self.id, &mut self.requests, exec)
            }
            None => drain_queue_with(
                &mut self.scratch,
                queue,
                mem,
                &*self.disk,
                &self.id,
                &mut self.requests,
                self.polled,
            ),
        }?;
        self.drains_cut += u64::from(drained.cut);
        if drained.wants_interrupt {
            interrupt.trigger(InterruptType::Queue(index));
        }
        Ok(())
    }

    /// `{"requests": N, "drains_cut": N, "uring": null or cache=none's UringReport}`.
    fn counters_json(&self) -> Option<serde_json::Value> {
        let uring = self.exec.as_ref().map(AsyncExec::report);
        Some(serde_json::json!({
            "requests": self.requests,
            "drains_cut": self.drains_cut,
            "uring": uring,
        }))
    }

    fn reset(&mut self) {
        // Requests in flight finish (unanswered) before the memory and queue are given up.
        if let Some(exec) = self.exec.as_mut() {
            exec.abandon();
        }
        self.active = None;
    }
}
