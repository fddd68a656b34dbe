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
use crate::backends::net::watch::BackendWatches;
use crate::devices::lock;
use crate::devices::virtio::transport_pci::{QueueWorker, VirtioPciDevice};
use std::io;
use std::os::fd::AsRawFd;
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
            let mut w = BackendWatches::new(fd, tx_fd, TOKEN_BACKEND, TOKEN_TX_READY);
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
            crate::seccomp::enter(crate::seccomp::ThreadKind::NicBackend);
            let _stop = stop_rx;
            let mut events = vec![EpollEvent::default(); notifies.len() + 4];
            loop {
                let mut wait = backend.as_ref().and_then(|b| b.backend().poll());
                if let (Some(shared), Some(w)) = (&backend, &watches) {
                    if !w.has_tx_fd() && shared.tx_blocked() != 0 {
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
                    if n == 0 && watches.as_ref().is_some_and(|w| !w.has_tx_fd()) {
                        tx_event(&worker, shared, &notifies);
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
                            let Some(ready) = w.readiness(ev) else {
                                continue;
                            };
                            if ready.rx {
                                backend_event(&worker, shared);
                            }
                            if ready.tx {
                                tx_event(&worker, shared, &notifies);
                            }
                        }
                        i => {
                            let Some((queue, evt)) = notifies.get(i as usize) else {
                                continue;
                            };
                            // Non-blocking: a spurious wakeup just finds nothing. A pass cut at
                            // its bound notifies itself: the rest runs after the other events.
                            if evt.read().is_ok() && worker.notified(*queue) {
                                let _ = evt.write(1);
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

/// The backend may have room: run the held transmit passes again. A pass that did not run
/// (the device reset or broken, the pair no longer in use) is not held any more; one cut at
/// its bound notifies its queue (in `notifies`) for the rest.
fn tx_event(worker: &QueueWorker, shared: &NetShared, notifies: &[(usize, EventFd)]) {
    let held = shared.tx_blocked();
    for pair in (0..32).filter(|p| held & (1 << p) != 0) {
        let before = shared.rx_passes.load(Ordering::SeqCst);
        shared.backend_event.store(true, Ordering::SeqCst);
        let queue = Net::tx_queue(pair);
        if worker.process(queue) {
            if let Some((_, evt)) = notifies.iter().find(|(q, _)| *q == queue) {
                let _ = evt.write(1);
            }
        }
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
