//! The I/O thread of `IoMode::Thread`: one per device. It sleeps in epoll on the queues'
//! notify eventfds (bound to the notify addresses with KVM_IOEVENTFD by `vmm/`, so a notify
//! costs the guest no userspace exit), and processes a queue whenever its eventfd fires. The
//! transport raises the completion interrupt (an irqfd) from this thread.
//!
//! With polling ([`IoThreadConfig::poll`], virtio-blk's `poll-max-ns=`), after a batch the
//! thread first watches its queues' avail rings for up to the [`PollPolicy`]'s window, with
//! the driver's notifications switched off meanwhile, so a guest that posts again soon needs
//! no notify at all. Before it sleeps it switches them back on and looks once more. Polling
//! suits queues the device drains, as virtio-blk's: a receive queue always has buffers
//! waiting, so the balloon's and the console's threads do not poll.

use super::poll::PollPolicy;
use super::transport_pci::{QueueWorker, VirtioPciDevice};
use crate::thread_cpu::ThreadCpuClock;
use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// How an I/O thread waits for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoThreadConfig {
    /// Polling after each batch (a policy of `PollPolicy::new(0)`: none).
    pub poll: PollPolicy,
}

impl Default for IoThreadConfig {
    fn default() -> Self {
        Self {
            poll: PollPolicy::new(0),
        }
    }
}

/// A running I/O thread.
pub struct IoThread {
    pub handle: std::thread::JoinHandle<()>,
    /// Its CPU clock (for the run's `io_thread_cpu_ns`).
    pub cpu: ThreadCpuClock,
}

/// Spawn the thread without polling. `notifies` pairs a queue index with its eventfd. The
/// thread ends when epoll fails (never in a normal run; the process exits with the VM).
pub fn spawn(
    name: &str,
    dev: Arc<Mutex<VirtioPciDevice>>,
    notifies: Vec<(usize, EventFd)>,
) -> io::Result<std::thread::JoinHandle<()>> {
    spawn_with(name, dev, notifies, IoThreadConfig::default()).map(|t| t.handle)
}

/// Spawn the thread as `config` says.
pub fn spawn_with(
    name: &str,
    dev: Arc<Mutex<VirtioPciDevice>>,
    notifies: Vec<(usize, EventFd)>,
    config: IoThreadConfig,
) -> io::Result<IoThread> {
    spawn_with_completions(name, dev, notifies, Vec::new(), config)
}

/// [`spawn_with`], the thread also woken by `completions`: eventfds that say a queue has
/// finished work to hand back (cache=none's io_uring). Not notifies: not counted as such.
pub fn spawn_with_completions(
    name: &str,
    dev: Arc<Mutex<VirtioPciDevice>>,
    notifies: Vec<(usize, EventFd)>,
    completions: Vec<(usize, EventFd)>,
    config: IoThreadConfig,
) -> io::Result<IoThread> {
    let epoll = Epoll::new()?;
    for (i, (_, evt)) in notifies.iter().chain(&completions).enumerate() {
        epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    let worker = QueueWorker::new(&dev);
    let (clock_tx, clock_rx) = std::sync::mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = clock_tx.send(ThreadCpuClock::current());
            crate::seccomp::enter(crate::seccomp::ThreadKind::DeviceIo);
            Waiter {
                epoll,
                events: vec![EpollEvent::default(); (notifies.len() + completions.len()).max(1)],
                notifies,
                completions,
                worker,
                policy: config.poll,
            }
            .run();
        })?;
    let cpu = clock_rx
        .recv()
        .map_err(|_| io::Error::other("I/O thread ended before it started"))??;
    Ok(IoThread { handle, cpu })
}

struct Waiter {
    epoll: Epoll,
    events: Vec<EpollEvent>,
    notifies: Vec<(usize, EventFd)>,
    /// Epoll data `notifies.len() + i`.
    completions: Vec<(usize, EventFd)>,
    worker: QueueWorker,
    policy: PollPolicy,
}

impl Waiter {
    fn run(mut self) {
        loop {
            let idle_from = Instant::now();
            let window = self.policy.window_ns();
            if window > 0 {
                let deadline = idle_from + Duration::from_nanos(window);
                if let Some(queue) = self.poll_until(deadline) {
                    let waited = idle_from.elapsed();
                    // Not admitted (bus mastering off, a reset): sleep until a notify says more.
                    if self.worker.process_polled(queue) {
                        self.policy.waited(nanos(waited));
                        continue;
                    }
                }
            }
            // A polling thread's drains leave the driver's notifications off (virtio-blk's
            // `set_polled`), even when this idle period has no window: they go back on before
            // sleeping, and an entry that came while they were off has no notify coming, so
            // it is processed now.
            if self.policy.max_ns() > 0 {
                let mut ran = false;
                for &(queue, _) in &self.notifies {
                    if self.worker.resume_notifications(queue) {
                        ran |= self.worker.process_polled(queue);
                    }
                }
                if ran {
                    self.policy.waited(nanos(idle_from.elapsed()));
                    continue;
                }
            }
            let Some(woke) = self.sleep() else {
                return;
            };
            self.policy.waited(nanos(woke.duration_since(idle_from)));
        }
    }

    /// Watch the avail rings until `deadline` with notifications off. The queue found with
    /// work (its notifications still off), or None: nothing came, or no queue can be polled.
    fn poll_until(&self, deadline: Instant) -> Option<usize> {
        let mut live = false;
        for &(queue, _) in &self.notifies {
            live |= self.worker.suppress_notifications(queue);
        }
        while live && Instant::now() < deadline {
            live = false;
            for &(queue, _) in &self.notifies {
                match self.worker.has_available(queue) {
                    Some(true) => return Some(queue),
                    Some(false) => live = true,
                    None => {}
                }
            }
            // cache=none: completions are handed back while polling too (else each would wait
            // for the window to run out), the queue's notifications kept off after.
            for (queue, evt) in &self.completions {
                if evt.read().is_ok() {
                    if self.worker.process(*queue) {
                        self.renotify(*queue);
                    }
                    live |= self.worker.suppress_notifications(*queue);
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Notify `queue` as the driver would: its pass was cut at its bound with chains left.
    fn renotify(&self, queue: usize) {
        if let Some((_, evt)) = self.notifies.iter().find(|(q, _)| *q == queue) {
            let _ = evt.write(1);
        }
    }

    /// Sleep until a notify, and process the queues notified. When it woke, or None if epoll
    /// failed (the thread ends).
    fn sleep(&mut self) -> Option<Instant> {
        let n = loop {
            match self.epoll.wait(-1, &mut self.events) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        };
        let woke = Instant::now();
        for ev in &self.events[..n] {
            let i = ev.data() as usize;
            if let Some((queue, evt)) = self.notifies.get(i) {
                // Non-blocking: a spurious wakeup just finds nothing. A pass cut at its bound
                // notifies itself, so the rest runs after the other events.
                if evt.read().is_ok() && self.worker.notified(*queue) {
                    let _ = evt.write(1);
                }
            } else if let Some((queue, evt)) = self.completions.get(i - self.notifies.len()) {
                if evt.read().is_ok() && self.worker.process(*queue) {
                    self.renotify(*queue);
                }
            }
        }
        Some(woke)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_util::{pattern_disk, pattern_sector, BlkRig, GatedDisk};
    use crate::devices::virtio::transport_pci::common;
    use std::sync::mpsc;
    use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;

    /// Far beyond anything a loaded 2-core machine needs; only a broken test waits this long.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn wait_for_used(rig: &BlkRig, idx: u16) {
        let deadline = Instant::now() + PATIENCE;
        while rig.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "I/O thread never completed the request"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn eventfd_wakes_the_thread_which_completes_a_request() {
        let mut rig = BlkRig::new(Box::new(pattern_disk(8)));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn("test-io", rig.dev.clone(), vec![(0, evt)]).unwrap();
        rig.post_read(3);
        writer.write(1).unwrap();
        wait_for_used(&rig, 1);
        // Head descriptor 0; 512 data bytes plus the status byte; status OK; the data.
        assert_eq!(rig.used_elem(0), (0, 513));
        assert_eq!(rig.status_byte(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.data(), pattern_sector(3));
        // The completion interrupt was raised (INTx: MSI-X is off) and the ISR says queue.
        assert_eq!(rig.irq.intx_count(), 1);
        assert_eq!(
            rig.read(crate::devices::virtio::transport_pci::ISR_OFFSET, 1),
            1
        );
    }

    #[test]
    fn register_reads_do_not_wait_for_a_blocked_disk() {
        let (disk, entered, release) = GatedDisk::new(pattern_disk(8));
        let mut rig = BlkRig::new(Box::new(disk));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn("test-io", rig.dev.clone(), vec![(0, evt)]).unwrap();
        rig.post_read(5);
        writer.write(1).unwrap();
        entered
            .recv_timeout(PATIENCE)
            .expect("the I/O thread never reached the disk");
        // The I/O thread is now inside the disk read, mid-request. A vCPU-side register read
        // (device status, device configuration, ISR) must not wait for it.
        let (tx, rx) = mpsc::channel();
        let dev = rig.dev.clone();
        std::thread::spawn(move || {
            let region = |off: u64, len: usize| {
                let mut b = vec![0u8; len];
                crate::devices::bus::BusDevice::read(
                    &mut crate::devices::virtio::transport_pci::BarRegion::new(dev.clone(), 0),
                    off,
                    &mut b,
                );
                crate::devices::le_value(&b)
            };
            let status = region(common::DEVICE_STATUS, 1);
            let capacity = region(crate::devices::virtio::transport_pci::DEVICE_OFFSET, 8);
            let _ = tx.send((status, capacity));
        });
        let got = rx.recv_timeout(Duration::from_secs(20));
        // Release the disk whatever happened, so nothing is left blocked.
        let _ = release.send(());
        let (status, capacity) = got.expect("a register read waited for the disk");
        assert_eq!((status, capacity), (15, 8));
        wait_for_used(&rig, 1);
        assert_eq!(rig.used_elem(0), (0, 513));
        assert_eq!(rig.status_byte(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.data(), pattern_sector(5));
    }
}

#[cfg(test)]
mod polling_tests {
    use super::*;
    use crate::devices::virtio::test_util::{pattern_disk, pattern_sector, BlkRig, AVAIL, USED};
    use crate::devices::virtio::transport_pci::common;
    use std::sync::atomic::{fence, Ordering};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;
    use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
    use vm_memory::{Bytes, GuestAddress};

    const PATIENCE: Duration = Duration::from_secs(60);
    /// BlkRig's queue size.
    const QSIZE: u64 = 16;
    /// A window no test outlasts: the thread polls from its start until the device resets.
    const ALWAYS_NS: u64 = 120_000_000_000;

    fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !done() {
            assert!(Instant::now() < deadline, "waited too long for {what}");
            std::thread::yield_now();
        }
    }

    fn rig(event_idx: bool) -> BlkRig {
        let disk = Box::new(pattern_disk(64));
        if event_idx {
            BlkRig::with_event_idx(disk)
        } else {
            BlkRig::new(disk)
        }
    }

    fn read16(rig: &BlkRig, at: u64) -> u16 {
        u16::from_le(rig.mem.read_obj(GuestAddress(at)).unwrap())
    }

    /// The driver's side of notification suppression (virtio 1.x §2.7.10), after publishing
    /// avail index `new` (it was `old`): does the device want a notify?
    fn driver_would_notify(rig: &BlkRig, event_idx: bool, old: u16, new: u16) -> bool {
        fence(Ordering::SeqCst);
        if event_idx {
            let avail_event = read16(rig, USED + 4 + 8 * QSIZE);
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            read16(rig, USED) & VRING_USED_F_NO_NOTIFY as u16 == 0
        }
    }

    /// The driver asks for an interrupt at the next completion (event index: used_event is
    /// the used index it has seen).
    fn want_next_interrupt(rig: &BlkRig, seen: u16) {
        rig.mem
            .write_obj(seen.to_le(), GuestAddress(AVAIL + 4 + 2 * QSIZE))
            .unwrap();
    }

    fn notifies(rig: &BlkRig) -> (u64, u64, u64) {
        let d = rig.dev.lock().unwrap();
        let c = d.queue_counters();
        (c.notifies(0), c.polled(0), c.interrupts(0))
    }

    fn check_read(rig: &BlkRig, sector: u64) {
        assert_eq!(rig.status_byte(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.data(), pattern_sector(sector));
    }

    fn polling(max_ns: u64, window_ns: u64) -> IoThreadConfig {
        IoThreadConfig {
            poll: PollPolicy::polling(max_ns, window_ns),
        }
    }

    #[test]
    fn a_request_posted_while_the_thread_polls_completes_without_a_notify() {
        for event_idx in [false, true] {
            let mut rig = rig(event_idx);
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let config = polling(ALWAYS_NS, ALWAYS_NS);
            spawn_with("test-io", rig.dev.clone(), vec![(0, evt)], config).unwrap();
            for i in 0..3u16 {
                // The previous completion's interrupt came (so its batch is over), and the
                // thread tells the driver not to notify: it is polling.
                until("the thread to poll", || {
                    notifies(&rig).2 == u64::from(i)
                        && !driver_would_notify(&rig, event_idx, i, i + 1)
                });
                want_next_interrupt(&rig, i);
                rig.post_read(u64::from(i) + 7);
                // No kick.
                until("the polled request", || rig.used_idx() == i + 1);
                check_read(&rig, u64::from(i) + 7);
            }
            until("the last interrupt", || notifies(&rig).2 == 3);
            assert_eq!(notifies(&rig), (0, 3, 3), "event_idx {event_idx}");
            // A reset ends the polling (the queue is gone).
            rig.write(common::DEVICE_STATUS, &[0]);
        }
    }

    #[test]
    fn without_polling_each_batch_takes_a_notify() {
        for event_idx in [false, true] {
            let mut rig = rig(event_idx);
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = evt.try_clone().unwrap();
            let config = IoThreadConfig {
                poll: PollPolicy::new(0),
            };
            spawn_with("test-io", rig.dev.clone(), vec![(0, evt)], config).unwrap();
            for i in 0..3u16 {
                want_next_interrupt(&rig, i);
                rig.post_read(u64::from(i));
                assert!(
                    driver_would_notify(&rig, event_idx, i, i + 1),
                    "the device must want notifies when it does not poll"
                );
                kick.write(1).unwrap();
                until("the request", || rig.used_idx() == i + 1);
                check_read(&rig, u64::from(i));
                until("its interrupt", || notifies(&rig).2 == u64::from(i) + 1);
            }
            assert_eq!(notifies(&rig), (3, 0, 3), "event_idx {event_idx}");
            // And the ring says so after the last batch too.
            assert!(driver_would_notify(&rig, event_idx, 3, 4));
        }
    }

    #[test]
    fn resuming_notifications_finds_what_came_while_they_were_off() {
        for event_idx in [false, true] {
            let mut rig = rig(event_idx);
            let worker = QueueWorker::new(&rig.dev);
            assert!(worker.suppress_notifications(0));
            assert_eq!(worker.has_available(0), Some(false));
            rig.post_read(1);
            // The driver published and was told not to notify.
            assert!(!driver_would_notify(&rig, event_idx, 0, 1));
            // The poller stops without having looked again: the re-check must find it.
            assert!(worker.resume_notifications(0), "event_idx {event_idx}");
            assert!(driver_would_notify(&rig, event_idx, 0, 1));
            assert!(worker.process_polled(0));
            assert_eq!(rig.used_idx(), 1);
            check_read(&rig, 1);
            assert_eq!(notifies(&rig), (0, 1, 1));
            // Nothing more: the re-check says so.
            assert!(!worker.resume_notifications(0));
            // After a reset there is no queue to poll, and nothing is written to the rings.
            rig.write(common::DEVICE_STATUS, &[0]);
            let used_flags = read16(&rig, USED);
            assert!(!worker.suppress_notifications(0));
            assert_eq!(worker.has_available(0), None);
            assert!(!worker.resume_notifications(0));
            assert!(!worker.process_polled(0));
            assert_eq!(read16(&rig, USED), used_flags);
        }
    }

    /// A driver that posts its next request the moment it sees a completion (a QD1 guest
    /// polling its used ring), kicking only when the device asks. With the device told that a
    /// polling thread serves it, the drain leaves notifications off, so the driver never has
    /// to kick. Without it, the drain switches them on before the thread polls again, and a
    /// driver quick enough kicks in between.
    #[test]
    fn a_driver_posting_at_each_completion_never_kicks_a_polled_device() {
        const ROUNDS: u16 = 1000;
        for event_idx in [false, true] {
            let mut rig = BlkRig::polled(Box::new(pattern_disk(64)), event_idx);
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = evt.try_clone().unwrap();
            let config = polling(ALWAYS_NS, ALWAYS_NS);
            spawn_with("test-io", rig.dev.clone(), vec![(0, evt)], config).unwrap();
            // The first request: the thread may not be polling yet.
            rig.post_read(0);
            if driver_would_notify(&rig, event_idx, 0, 1) {
                kick.write(1).unwrap();
            }
            let mut kicked = 0;
            for i in 0..ROUNDS {
                until("a request", || rig.used_idx() == i + 1);
                check_read(&rig, u64::from(i % 64));
                rig.post_read(u64::from((i + 1) % 64));
                if driver_would_notify(&rig, event_idx, i + 1, i + 2) {
                    kick.write(1).unwrap();
                    kicked += 1;
                }
            }
            until("the last request", || rig.used_idx() == ROUNDS + 1);
            assert_eq!(
                kicked, 0,
                "event_idx {event_idx}: kicks while the thread polled"
            );
            // The first request may have been notified; every later one was found by polling
            // (some in the drain of the one before: a drain takes what it finds).
            let (notified, polled, _) = notifies(&rig);
            assert!(notified <= 1, "event_idx {event_idx}: {notified} notifies");
            assert!(polled > 0, "event_idx {event_idx}");
            rig.write(common::DEVICE_STATUS, &[0]);
        }
    }

    /// A driver that kicks exactly when the device asks, posting at every moment relative to
    /// the end of a short polling window: no request waits for a notify that never comes;
    /// also when the drains leave notifications off for the thread ([`BlkRig::polled`]).
    #[test]
    fn a_request_posted_as_polling_ends_is_never_lost() {
        const ROUNDS: u16 = 1000;
        for (event_idx, polled) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut rig = if polled {
                BlkRig::polled(Box::new(pattern_disk(64)), event_idx)
            } else {
                rig(event_idx)
            };
            let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
            let kick = evt.try_clone().unwrap();
            let config = polling(20_000, 20_000);
            spawn_with("test-io", rig.dev.clone(), vec![(0, evt)], config).unwrap();
            let (mut kicked, mut quiet) = (0u64, 0u64);
            for i in 0..ROUNDS {
                // 0 to 24 µs after the previous completion: inside the window, at its end,
                // and after it.
                let pause = Duration::from_nanos(u64::from(i) * 7_919 % 24_000);
                let t = Instant::now();
                while t.elapsed() < pause {
                    std::hint::spin_loop();
                }
                want_next_interrupt(&rig, i);
                rig.post_read(u64::from(i % 64));
                if driver_would_notify(&rig, event_idx, i, i + 1) {
                    kick.write(1).unwrap();
                    kicked += 1;
                } else {
                    quiet += 1;
                }
                until("a request (lost notify?)", || rig.used_idx() == i + 1);
                check_read(&rig, u64::from(i % 64));
            }
            let (notified, _, _) = notifies(&rig);
            // Every kick was counted (some may have arrived after their request was already
            // taken by polling); the quiet ones were all found by polling.
            assert!(notified <= kicked, "{notified} notifies for {kicked} kicks");
            assert_eq!(kicked + quiet, u64::from(ROUNDS));
            rig.write(common::DEVICE_STATUS, &[0]);
        }
    }
}
