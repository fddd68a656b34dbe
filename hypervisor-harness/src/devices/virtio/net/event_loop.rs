//! The threads of a virtio-net function. Every NIC has one whatever the I/O mode, since its
//! backend needs one: it sleeps in epoll on the backend's `rx_ready_fd` (and the backend's
//! `poll()` timeout, for a peer's timers), and on a backend event runs the device's receive
//! pass through the transport ([`QueueWorker`], so that admission, epochs and NEEDS_RESET are
//! the transport's as for a notify). If the device did not run (not started, reset, broken,
//! bus mastering off) it drains the backend instead, counting the drops.
//!
//! While the receive pass holds frames back in the backend ([`NetShared::rx_blocked`]: the
//! guest has no receive buffers), the thread stops waiting on the backend's fd, which being
//! level-triggered would wake it at once, again and again. The pass that unblocks (the
//! driver's receive notify, on whatever thread or vCPU runs it) writes the thread's resume
//! eventfd, and the thread watches the backend again.
//!
//! A transmit pass the backend cannot keep up with ([`NetShared::tx_blocked`]: its
//! `tx_ready` said no) leaves the frames in the guest's ring, and the backend's thread waits
//! for the backend's `tx_wait_fd` to be writable (on the same registration as the readiness
//! fd when it is the same socket), then runs the pass again; the pass that blocks or a reset
//! writes the resume eventfd so that the thread (un)watches it. A backend without such an fd
//! is retried on a short timeout.
//!
//! With `IoMode::Thread` each queue pair has a thread of its own woken by its queues' notify
//! ioeventfds; the first also takes the control queue and the backend. The queues still run
//! one at a time under the transport's engine lock.

use super::{Net, NetShared};
use crate::devices::lock;
use crate::devices::virtio::transport_pci::{QueueWorker, VirtioPciDevice};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_BACKEND: u64 = u64::MAX;
const TOKEN_STOP: u64 = u64::MAX - 1;
const TOKEN_RESUME: u64 = u64::MAX - 2;
const TOKEN_TX_READY: u64 = u64::MAX - 3;
/// How long to wait before retrying a held transmit pass whose backend has no `tx_wait_fd`.
const TX_RETRY: Duration = Duration::from_millis(1);
/// The queue a backend event runs: receive queue 0 (the pass fills every pair's).
const RX_KICK_QUEUE: usize = 0;

/// Ends its thread when dropped.
pub struct EventLoop {
    stop: EventFd,
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
    }
}

/// Spawn a thread for `notifies` (queue index, eventfd) and, with `backend`, the NIC's backend.
pub fn spawn(
    name: &str,
    dev: &Arc<Mutex<VirtioPciDevice>>,
    backend: Option<Arc<NetShared>>,
    notifies: Vec<(usize, EventFd)>,
) -> io::Result<EventLoop> {
    let epoll = Epoll::new()?;
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    epoll.ctl(
        ControlOperation::Add,
        stop.as_raw_fd(),
        EpollEvent::new(EventSet::IN, TOKEN_STOP),
    )?;
    for (i, (_, evt)) in notifies.iter().enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    let mut watches = match &backend {
        Some(shared) => {
            let (fd, tx_fd) = {
                let b = shared.backend();
                (b.rx_ready_fd(), b.tx_wait_fd())
            };
            let mut w = Watches {
                rx_fd: fd,
                tx_fd,
                rx_on: false,
                tx_on: false,
            };
            w.update(&epoll, true, false)?;
            let resume = EventFd::new(libc::EFD_NONBLOCK)?;
            epoll.ctl(
                ControlOperation::Add,
                resume.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_RESUME),
            )?;
            shared.set_rx_resume(resume);
            Some(w)
        }
        None => None,
    };
    let worker = QueueWorker::new(dev);
    let stop_rx = stop.try_clone()?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _stop = stop_rx;
            let mut events = vec![EpollEvent::default(); notifies.len() + 4];
            loop {
                let mut wait = backend.as_ref().and_then(|b| b.backend().poll());
                if let (Some(shared), Some(w)) = (&backend, &watches) {
                    if w.tx_fd.is_none() && shared.tx_blocked() != 0 {
                        wait = Some(wait.map_or(TX_RETRY, |d| d.min(TX_RETRY)));
                    }
                }
                let timeout = wait.map_or(-1, timeout_ms);
                let n = match epoll.wait(timeout, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                if let Some(shared) = &backend {
                    shared.note_backend_wakeup();
                    // A held pass on a backend without a wait fd: retried on each wakeup.
                    if n == 0 && watches.as_ref().is_some_and(|w| w.tx_fd.is_none()) {
                        tx_event(&worker, shared);
                    }
                }
                for ev in &events[..n] {
                    match ev.data() {
                        TOKEN_STOP => return,
                        TOKEN_RESUME => {
                            if let Some(shared) = &backend {
                                if let Some(evt) = lock(&shared.rx_resume).as_ref() {
                                    let _ = evt.read();
                                }
                            }
                        }
                        TOKEN_BACKEND | TOKEN_TX_READY => {
                            let (Some(shared), Some(w)) = (&backend, &watches) else {
                                continue;
                            };
                            let set = ev.event_set();
                            let any = EventSet::HANG_UP | EventSet::ERROR;
                            let on_rx_fd = ev.data() == TOKEN_BACKEND;
                            if on_rx_fd && w.rx_on && set.intersects(EventSet::IN | any) {
                                backend_event(&worker, shared);
                            }
                            let tx_here = !on_rx_fd || w.tx_fd == Some(w.rx_fd);
                            if tx_here && w.tx_on && set.intersects(EventSet::OUT | any) {
                                tx_event(&worker, shared);
                            }
                        }
                        i => {
                            let Some((queue, evt)) = notifies.get(i as usize) else {
                                continue;
                            };
                            // Non-blocking: a spurious wakeup just finds nothing.
                            if evt.read().is_ok() {
                                worker.process(*queue);
                            }
                        }
                    }
                }
                // A backend that is gone stays readable (EOF): stop watching it for good. One
                // held back (blocked) is watched again once the pass resumes. Writability is
                // watched only while a transmit pass is held.
                if let (Some(shared), Some(w)) = (&backend, &mut watches) {
                    let gone = shared.backend_gone();
                    let rx = !gone && !shared.rx_blocked();
                    let tx = !gone && shared.tx_blocked() != 0;
                    let _ = w.update(&epoll, rx, tx);
                }
            }
        })?;
    Ok(EventLoop { stop })
}

/// The backend's fds as registered with the thread's epoll: its readiness fd (for frames) and
/// its `tx_wait_fd` (for room), one registration when they are the same fd.
struct Watches {
    rx_fd: RawFd,
    tx_fd: Option<RawFd>,
    rx_on: bool,
    tx_on: bool,
}

impl Watches {
    fn update(&mut self, epoll: &Epoll, rx: bool, tx: bool) -> io::Result<()> {
        let tx = tx && self.tx_fd.is_some();
        match self.tx_fd {
            Some(fd) if fd == self.rx_fd => {
                let set = |rx: bool, tx: bool| {
                    let mut s = EventSet::empty();
                    if rx {
                        s |= EventSet::IN;
                    }
                    if tx {
                        s |= EventSet::OUT;
                    }
                    s
                };
                let (had, want) = (set(self.rx_on, self.tx_on), set(rx, tx));
                if had != want {
                    let op = match (had.is_empty(), want.is_empty()) {
                        (true, _) => ControlOperation::Add,
                        (false, true) => ControlOperation::Delete,
                        (false, false) => ControlOperation::Modify,
                    };
                    epoll.ctl(op, fd, EpollEvent::new(want, TOKEN_BACKEND))?;
                }
                (self.rx_on, self.tx_on) = (rx, tx);
            }
            tx_fd => {
                if rx != self.rx_on {
                    watch(epoll, self.rx_fd, rx, EventSet::IN, TOKEN_BACKEND)?;
                    self.rx_on = rx;
                }
                if let Some(fd) = tx_fd.filter(|_| tx != self.tx_on) {
                    watch(epoll, fd, tx, EventSet::OUT, TOKEN_TX_READY)?;
                    self.tx_on = tx;
                }
            }
        }
        Ok(())
    }
}

fn watch(epoll: &Epoll, fd: RawFd, on: bool, set: EventSet, token: u64) -> io::Result<()> {
    let op = if on {
        ControlOperation::Add
    } else {
        ControlOperation::Delete
    };
    epoll.ctl(op, fd, EpollEvent::new(set, token))
}

/// The backend may have room: run the held transmit passes again. A pass that did not run
/// (the device reset or broken, the pair no longer in use) is not held any more.
fn tx_event(worker: &QueueWorker, shared: &NetShared) {
    let held = shared.tx_blocked();
    for pair in (0..32).filter(|p| held & (1 << p) != 0) {
        let before = shared.rx_passes.load(Ordering::SeqCst);
        shared.backend_event.store(true, Ordering::SeqCst);
        worker.process(Net::tx_queue(pair));
        shared.backend_event.store(false, Ordering::SeqCst);
        if shared.rx_passes.load(Ordering::SeqCst) == before {
            shared.set_tx_blocked(pair, false);
        }
    }
}

/// The backend has frames: run the receive pass, or drain if the device did not run.
fn backend_event(worker: &QueueWorker, shared: &NetShared) {
    let before = shared.rx_passes.load(Ordering::SeqCst);
    shared.backend_event.store(true, Ordering::SeqCst);
    worker.process(RX_KICK_QUEUE);
    // Not consumed: the device did not run.
    shared.backend_event.store(false, Ordering::SeqCst);
    if shared.rx_passes.load(Ordering::SeqCst) == before {
        shared.drain_inactive();
    }
}

fn timeout_ms(d: Duration) -> i32 {
    // Round up, so that a wait of less than a millisecond does not spin.
    let ms = d.as_micros().div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}
