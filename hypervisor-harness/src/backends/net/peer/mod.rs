//! `peer`: the in-process network peer, a host-side TCP/IP endpoint (smoltcp) that the guest's
//! frames reach without a system call.
//!
//! It is the network contract's peer (notes: the contract is defined on both sides, shared by
//! definition only): IP 192.168.76.1/24, MAC 02:00:00:76:00:01, and at that address
//! - ARP, and ICMP echo (ping);
//! - UDP 7 echo (the datagram back to its sender), UDP 9 discard (counted), UDP 19 source: an
//!   8-byte request (count u32 LE, size u16 LE in 1..=1472, two zero bytes) gets `count`
//!   datagrams of `size` bytes back, byte i of datagram k being `(k + i) as u8`;
//! - TCP 7 echo; TCP 9 sink: reads until the guest's FIN, then sends the byte count (u64 LE)
//!   and the FNV-1a 64 of all bytes (u64 LE) and closes; TCP 19 source: a 16-byte request
//!   (length u64 LE, seed u64 LE) gets `length` bytes of the seeded pattern (the disk pattern's
//!   sectors 0, 1, 2, ... concatenated, see [`PatternStream`]), then a close;
//! - up to [`MAX_CONNECTIONS_PER_PORT`] TCP connections per port at once (a listener that gets
//!   connected is replaced by a fresh one), with 1 MiB buffers (window scaling) for bulk.
//!
//! # Timing: no system call per frame
//!
//! [`PeerBackend::transmit`] hands the guest's frame to the stack and runs it at once, so its
//! replies are ready for `receive` when `transmit` returns. A caller therefore drains
//! `receive` (until `Ok(None)`, or until the guest has no buffer left) after a batch of
//! transmits; no eventfd is written for those frames. The UDP source adds its datagrams as
//! `receive` drains the queue (it keeps at most [`SOURCE_QUEUE_FRAMES`] waiting), so `receive`
//! returns `None` only when the flood is over or smoltcp is waiting on something.
//!
//! [`NetBackend::rx_ready_fd`] is an eventfd written only by [`NetBackend::poll`], never per
//! frame: `poll` runs the stack's timers (TCP retransmits, delayed ACKs, ARP retries, a flood
//! that was waiting on ARP) and, if frames are then waiting (new ones, or ones a caller left
//! when it stopped draining), makes the fd readable. `receive` returning `None` clears it. So
//! a device thread drains `receive` after each transmit batch and whenever the fd is readable
//! or the guest adds receive buffers, and calls `poll` before it sleeps, for no longer than
//! the delay `poll` returned: then no frame waits unseen.
//!
//! Frames for the guest wait in a queue of at most [`RX_QUEUE_FRAMES`]; beyond that they are
//! dropped and counted (`rx_dropped`, [`PeerCounters::rx_queue_overflows`]).

#[cfg(test)]
mod fin_tests;
pub(crate) mod pattern;
mod stack;
pub mod switch;

pub use pattern::{Fnv1a64, PatternStream};
pub use stack::{
    PeerCounters, PeerHandle, PeerStack, MAX_CONNECTIONS_PER_PORT, MAX_SOURCE_JOBS,
    MAX_UDP_PAYLOAD, PEER_IP, PEER_MAC, PEER_PREFIX_LEN, RX_QUEUE_FRAMES, SOURCE_QUEUE_FRAMES,
};

use super::{BackendCounters, FrameMeta, NetBackend, NetBackendError, MAX_FRAME};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Smallest frame the peer takes: an Ethernet header.
const MIN_FRAME: usize = 14;

/// The `peer` backend: one [`PeerStack`] for one NIC.
pub struct PeerBackend {
    stack: PeerStack,
    ready: EventFd,
    /// Whether `ready` holds a count (so clearing it costs a read only then).
    signalled: bool,
    counters: BackendCounters,
}

impl PeerBackend {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stack: PeerStack::new(),
            ready: EventFd::new(EFD_NONBLOCK)?,
            signalled: false,
            counters: BackendCounters::default(),
        })
    }

    /// The peer's per-service counters, readable after the backend is boxed into a device.
    pub fn handle(&self) -> PeerHandle {
        self.stack.handle()
    }

    fn clear_ready(&mut self) {
        if self.signalled {
            // Nonblocking: a count of 0 (already read) is EAGAIN, which is fine.
            let _ = self.ready.read();
            self.signalled = false;
        }
    }
}

impl NetBackend for PeerBackend {
    fn describe(&self) -> String {
        "peer".into()
    }

    fn transmit(&mut self, _meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        if !(MIN_FRAME..=MAX_FRAME).contains(&frame.len()) {
            self.counters.tx_dropped += 1;
            return Ok(());
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        self.stack.input(frame);
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        while let Some(frame) = self.stack.output() {
            let len = frame.len();
            let fits = len <= buf.len();
            if fits {
                buf[..len].copy_from_slice(&frame);
            }
            self.stack.recycle(frame);
            if fits {
                self.counters.rx_frames += 1;
                self.counters.rx_bytes += len as u64;
                return Ok(Some((len, FrameMeta::default())));
            }
            self.counters.rx_dropped += 1;
        }
        self.clear_ready();
        Ok(None)
    }

    fn rx_ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }

    fn poll(&mut self) -> Option<Duration> {
        let delay = self.stack.poll();
        if self.stack.queued() > 0 && !self.signalled {
            self.ready.write(1).ok();
            self.signalled = true;
        }
        delay
    }

    fn counters(&self) -> BackendCounters {
        let mut c = self.counters;
        c.rx_dropped += self.stack.handle().counters().rx_queue_overflows;
        c
    }
}
