//! The backend thread of a fully emulated NIC (e1000, RTL8139): it sleeps on the backend's
//! readiness fd, its `tx_wait_fd` and the model's timers, and runs the model's passes. While
//! the RX ring holds a frame back it stops watching the level-triggered readiness fd (the
//! register write that makes room wakes it through the wake eventfd); while a transmit waits
//! for room it watches `tx_wait_fd` for writability (or retries on a short timer for a backend
//! without one). Each model says what it needs through [`EmulatedNic`].
//!
//! A backend's `poll` may want no deadline ("until a frame moves"), and the thread then sleeps
//! without a timeout; but the models move frames on the vCPU thread too (the register write
//! that starts a transmit), which may arm the backend's timers (the peer's TCP retransmission).
//! So each model polls the backend after such moves while the thread has no deadline, and
//! wakes it if there is one now.

use crate::backends::net::watch::BackendWatches;
use crate::devices::lock;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

const TOKEN_BACKEND: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const TOKEN_TX_READY: u64 = 3;

/// How soon a held transmit is tried again on a backend without a wait fd.
const TX_RETRY: Duration = Duration::from_millis(1);

/// What the thread asks of a NIC model each round.
pub trait EmulatedNic: Send + 'static {
    /// One round: the model's timers, the backend's time, a held transmit tried again, and a
    /// receive pass. Returns how long until the model or the backend want a round again.
    fn service(&mut self) -> Option<Duration>;
    /// The last receive pass held a frame back (or RX is off): don't watch for frames.
    fn rx_blocked(&self) -> bool;
    /// A transmit waits for room in the backend: watch for writability.
    fn tx_waiting(&self) -> bool;
}

/// The backend's fds: readiness (frames to read) and, if it has one, the fd to poll for room.
#[derive(Debug, Clone, Copy)]
pub struct BackendFds {
    pub rx: RawFd,
    pub tx_wait: Option<RawFd>,
}

/// Ends its thread when dropped.
pub struct BackendThread {
    stop: EventFd,
}

impl Drop for BackendThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
    }
}

/// Start `name`'s thread over `dev`; `wake` is the eventfd the model writes when the thread
/// must look again (room made for a held frame, a transmit stalled, an interrupt held back).
pub fn spawn<N: EmulatedNic>(
    name: &str,
    dev: Arc<Mutex<N>>,
    fds: BackendFds,
    wake: EventFd,
) -> std::io::Result<BackendThread> {
    let epoll = Epoll::new()?;
    let stop = EventFd::new(libc::EFD_NONBLOCK)?;
    for (fd, token) in [
        (stop.as_raw_fd(), TOKEN_STOP),
        (wake.as_raw_fd(), TOKEN_WAKE),
    ] {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )?;
    }
    let stop_thread = stop.try_clone()?;
    std::thread::Builder::new()
        .name(format!("{name}-rx"))
        .spawn(move || {
            crate::seccomp::enter(crate::seccomp::ThreadKind::NicBackend);
            run(&dev, &epoll, fds, &wake, &stop_thread)
        })?;
    Ok(BackendThread { stop })
}

fn run<N: EmulatedNic>(
    dev: &Mutex<N>,
    epoll: &Epoll,
    fds: BackendFds,
    wake: &EventFd,
    stop: &EventFd,
) {
    let mut watches = BackendWatches::new(fds.rx, fds.tx_wait, TOKEN_BACKEND, TOKEN_TX_READY);
    let mut events = [EpollEvent::default(); 4];
    loop {
        let (rx_blocked, tx_waiting, mut wait) = {
            let mut d = lock(dev);
            let wait = d.service();
            (d.rx_blocked(), d.tx_waiting(), wait)
        };
        // The backend's fds are level-triggered: watched for frames only while the model can
        // take them, for room only while a transmit waits. A failed update is tried again
        // next round.
        let _ = watches.update(epoll, !rx_blocked, tx_waiting);
        if tx_waiting && !watches.has_tx_fd() {
            wait = Some(wait.map_or(TX_RETRY, |w| w.min(TX_RETRY)));
        }
        // Rounded up: a wake before the deadline would only wait again.
        let timeout = wait.map_or(-1, |d: Duration| {
            d.as_micros().div_ceil(1000).min(1000) as i32
        });
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_STOP => {
                    let _ = stop.read();
                    return;
                }
                TOKEN_WAKE => {
                    let _ = wake.read();
                }
                // Frames or room: the next round's passes look.
                _ => {}
            }
        }
    }
}

/// A fake backend for the NIC models' thread tests.
#[cfg(test)]
pub(super) mod test_backend {
    use crate::backends::net::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
    use crate::devices::lock;
    use std::os::fd::{AsRawFd, RawFd};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};
    use vmm_sys_util::eventfd::EventFd;

    /// How long after a transmit the backend's timer fires.
    const RESEND_AFTER: Duration = Duration::from_millis(10);

    /// A backend with a timer that only a transmit arms and only `poll` runs, as the peer's
    /// TCP retransmission: `poll` says "no deadline" until a frame goes out, then wants a
    /// round in [`RESEND_AFTER`], when it queues `reply` for the guest and signals it.
    #[derive(Clone)]
    pub struct ResendingBackend {
        state: Arc<Mutex<ResendState>>,
        ready: Arc<EventFd>,
        reply: Vec<u8>,
    }

    #[derive(Default)]
    struct ResendState {
        due: Option<Instant>,
        to_guest: Option<Vec<u8>>,
    }

    impl ResendingBackend {
        pub fn new(reply: Vec<u8>) -> Self {
            Self {
                state: Arc::default(),
                ready: Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")),
                reply,
            }
        }
    }

    impl NetBackend for ResendingBackend {
        fn describe(&self) -> String {
            "resending".into()
        }

        fn transmit(&mut self, _: &FrameMeta, _: &[u8]) -> Result<(), NetBackendError> {
            lock(&self.state).due = Some(Instant::now() + RESEND_AFTER);
            Ok(())
        }

        fn receive(
            &mut self,
            buf: &mut [u8],
        ) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
            let Some(f) = lock(&self.state).to_guest.take() else {
                let _ = self.ready.read();
                return Ok(None);
            };
            buf[..f.len()].copy_from_slice(&f);
            Ok(Some((f.len(), FrameMeta::default())))
        }

        fn rx_ready_fd(&self) -> RawFd {
            self.ready.as_raw_fd()
        }

        fn poll(&mut self) -> Option<Duration> {
            let mut s = lock(&self.state);
            let due = s.due?;
            let now = Instant::now();
            if now < due {
                return Some(due - now);
            }
            s.due = None;
            s.to_guest = Some(self.reply.clone());
            let _ = self.ready.write(1);
            None
        }

        fn counters(&self) -> BackendCounters {
            BackendCounters::default()
        }
    }
}
