//! The run's watchdog: `--timeout`, `--stall-timeout` and the monitor's `quit`, and the hard
//! deadline behind them.
//!
//! The limits act where the vCPU thread comes back to its run loop: from the moment one is
//! reached the watchdog kicks that thread out of KVM_RUN with a signal until the loop notices.
//! A thread stuck in device code never comes back, and a run whose report waits on a device
//! lock a stuck I/O thread holds never ends; so once a limit is reached the run has a grace
//! period ([`HARD_DEADLINE_GRACE`]) to be over, and after it the watchdog itself acts
//! ([`HardDeadline`]: in a run, [`print_and_exit`]).

use super::exits::Dir;
use super::monitor_target::QuitRequest;
use super::LastIo;
use crate::devices::lock;
use crate::error::{HarnessError, EXIT_HARD_DEADLINE};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long after a limit is reached the run may take to end before the watchdog ends the
/// process: far beyond what the run loop (a kick every 20 ms) and the report need.
pub const HARD_DEADLINE_GRACE: Duration = Duration::from_secs(10);

/// How often the watchdog kicks the vCPU thread once a limit is reached: a signal alone could
/// land before KVM_RUN is entered.
const KICK_INTERVAL: Duration = Duration::from_millis(20);

/// The limits of a run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `--timeout`, from the vCPU thread's start in its loop.
    pub timeout: Duration,
    /// `--stall-timeout`: no port or MMIO exit for this long.
    pub stall_timeout: Option<Duration>,
}

/// The limit the watchdog acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Timeout(Duration),
    Stall(Duration),
    Quit,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Timeout(d) => write!(f, "the timeout ({} s)", d.as_secs()),
            Trigger::Stall(d) => write!(
                f,
                "the stall timeout ({} s without a port or MMIO exit)",
                d.as_secs().max(1)
            ),
            Trigger::Quit => write!(f, "the monitor's quit"),
        }
    }
}

/// What had not ended at the hard deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stuck {
    /// The vCPU thread never came back to its run loop: stuck in device code.
    VcpuLoop {
        thread: String,
        /// Its last port or MMIO exit, the device it is most likely stuck in.
        last_io: Option<String>,
    },
    /// The vCPU's loop came back, but the thread that runs the machine did not finish the
    /// report and the teardown (a device lock held by a stuck I/O thread, say).
    RunEnd { thread: String },
}

/// The watchdog's report at the hard deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlineReport {
    pub trigger: Trigger,
    pub grace: Duration,
    pub stuck: Stuck,
}

impl std::fmt::Display for DeadlineReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grace = self.grace.as_secs_f64();
        match &self.stuck {
            Stuck::VcpuLoop { thread, last_io } => {
                write!(
                    f,
                    "hard deadline: thread {thread} did not come back to its run loop within \
                     {grace} s of {}; last I/O exit: ",
                    self.trigger
                )?;
                match last_io {
                    Some(io) => write!(f, "{io}"),
                    None => write!(f, "none"),
                }
            }
            Stuck::RunEnd { thread } => write!(
                f,
                "hard deadline: thread {thread} did not finish the run (report and teardown) \
                 within {grace} s of {}",
                self.trigger
            ),
        }
    }
}

/// What the watchdog does at the hard deadline; called once, on the watchdog thread, under its
/// seccomp filter.
pub type DeadlineAction = Box<dyn FnOnce(&DeadlineReport) + Send>;

pub struct HardDeadline {
    /// How long after a limit is reached.
    pub grace: Duration,
    pub action: DeadlineAction,
}

/// A run's action: the report on stderr as `error: <report>`, then the process ends with
/// [`EXIT_HARD_DEADLINE`]. write(2) and _exit(2) alone (both on the watchdog's allow-list):
/// std's stderr and `process::exit` (which flushes stdout) take locks a stuck thread may hold.
pub fn print_and_exit(grace: Duration) -> HardDeadline {
    HardDeadline {
        grace,
        action: Box::new(|report| {
            let line = format!("error: {report}\n");
            let mut rest = line.as_bytes();
            while !rest.is_empty() {
                // SAFETY: writes from a live buffer of `rest.len()` bytes to fd 2.
                let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
                match usize::try_from(n) {
                    Ok(n) if n > 0 => rest = &rest[n.min(rest.len())..],
                    _ if std::io::Error::last_os_error().kind()
                        == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
            // SAFETY: ends the process (exit_group) at once; nothing here needs unwinding.
            unsafe { libc::_exit(EXIT_HARD_DEADLINE) }
        }),
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// The last port or MMIO exit in two words, which the watchdog reads at the deadline. Stored
/// apart, they may tear while exits come fast; at the deadline the vCPU makes none.
const META_VALID: u64 = 1 << 63;
const META_PORT: u64 = 1 << 62;
const META_WRITE: u64 = 1 << 61;
const META_LEN: u64 = u32::MAX as u64;

fn pack_meta(io: &LastIo) -> u64 {
    let mut meta = META_VALID | (io.len as u64 & META_LEN);
    if io.port {
        meta |= META_PORT;
    }
    if matches!(io.dir, Dir::Write) {
        meta |= META_WRITE;
    }
    meta
}

fn unpack(addr: u64, meta: u64) -> Option<LastIo> {
    (meta & META_VALID != 0).then_some(LastIo {
        port: meta & META_PORT != 0,
        addr,
        dir: if meta & META_WRITE != 0 {
            Dir::Write
        } else {
            Dir::Read
        },
        len: (meta & META_LEN) as usize,
    })
}

struct VcpuThread {
    thread: libc::pthread_t,
    name: String,
    /// When it registered: the limits count from there.
    since: Instant,
}

struct Shared {
    timed_out: AtomicBool,
    /// Port and MMIO exits so far, which the watchdog watches for --stall-timeout.
    progress: AtomicU64,
    /// Set (to the stall's seconds) when there was none for that long.
    stalled: AtomicU64,
    last_io_addr: AtomicU64,
    last_io_meta: AtomicU64,
    /// The vCPU thread the watchdog kicks, once it has registered.
    vcpu: OnceLock<VcpuThread>,
    /// Set when the run is over ([`RunWatch`] dropped): the watchdog thread ends.
    run_over: AtomicBool,
    /// The quit request's wakeup; its flag: the vCPU thread came back and left its loop
    /// ([`Watchdog`] dropped), so it is kicked no more.
    wake: Arc<(Mutex<bool>, Condvar)>,
}

/// The watchdog thread, for the whole of a run: from before the vCPU starts until after the
/// machine's teardown. Dropping it ends the thread (and joins it).
pub struct RunWatch {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl RunWatch {
    pub fn start(
        limits: Limits,
        quit: QuitRequest,
        deadline: HardDeadline,
    ) -> Result<Self, HarnessError> {
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
        let shared = Arc::new(Shared {
            timed_out: AtomicBool::new(false),
            progress: AtomicU64::new(0),
            stalled: AtomicU64::new(0),
            last_io_addr: AtomicU64::new(0),
            last_io_meta: AtomicU64::new(0),
            vcpu: OnceLock::new(),
            run_over: AtomicBool::new(false),
            // The quit request wakes the same condition variable the watchdog waits on.
            wake: quit.wake.clone(),
        });
        let run_thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || {
                    crate::seccomp::enter(crate::seccomp::ThreadKind::Watchdog);
                    watch(&shared, limits, &quit, deadline, run_thread);
                })
                .map_err(|e| HarnessError::Other(format!("watchdog thread: {e}")))?
        };
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// The calling thread is the vCPU thread: the watchdog kicks it once a limit is reached,
    /// until the returned guard is dropped (which the thread must do before it ends).
    pub fn watch_this_thread(&self) -> Watchdog<'_> {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let name = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        let _ = self.shared.vcpu.set(VcpuThread {
            thread: me,
            name,
            since: Instant::now(),
        });
        let (m, cv) = &*self.shared.wake;
        // The limits start now: the watchdog computes its next wakeup again.
        let _checked = lock(m);
        cv.notify_all();
        drop(_checked);
        Watchdog {
            shared: &self.shared,
            _kicked_thread: PhantomData,
        }
    }
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        self.shared.run_over.store(true, Ordering::SeqCst);
        let (m, cv) = &*self.shared.wake;
        // Under the lock the watchdog checks `run_over` with: the wakeup cannot be lost.
        let _checked = lock(m);
        cv.notify_all();
        drop(_checked);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The vCPU thread's side of the watchdog, while it runs its loop.
pub struct Watchdog<'a> {
    shared: &'a Shared,
    /// Not `Send`: it must be dropped on the thread that is kicked, before that thread ends.
    _kicked_thread: PhantomData<*const ()>,
}

impl Watchdog<'_> {
    pub fn timed_out(&self) -> bool {
        self.shared.timed_out.load(Ordering::SeqCst)
    }

    /// The run loop made a port or MMIO exit: progress for --stall-timeout, and the exit the
    /// hard deadline's report names.
    pub fn note_exit(&self, io: &LastIo) {
        self.shared.last_io_addr.store(io.addr, Ordering::Relaxed);
        self.shared
            .last_io_meta
            .store(pack_meta(io), Ordering::Relaxed);
        self.shared.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// The stall's seconds, once the watchdog found none for --stall-timeout.
    pub fn stalled(&self) -> Option<u64> {
        Some(self.shared.stalled.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }
}

impl Drop for Watchdog<'_> {
    fn drop(&mut self) {
        let (m, cv) = &*self.shared.wake;
        // Under the lock the watchdog kicks under: no kick reaches this thread after this.
        *lock(m) = true;
        cv.notify_all();
    }
}

fn wait<'a>(
    cv: &Condvar,
    guard: MutexGuard<'a, bool>,
    until: Option<Instant>,
) -> MutexGuard<'a, bool> {
    match until {
        Some(t) => cv
            .wait_timeout(guard, t.saturating_duration_since(Instant::now()))
            .map(|r| r.0)
            .unwrap_or_else(|e| e.into_inner().0),
        None => cv.wait(guard).unwrap_or_else(|e| e.into_inner()),
    }
}

/// The watchdog thread's loop, until the run is over.
fn watch(
    shared: &Shared,
    limits: Limits,
    quit: &QuitRequest,
    deadline: HardDeadline,
    run_thread: String,
) {
    let HardDeadline { grace, action } = deadline;
    let mut action = Some(action);
    let (m, cv) = &*shared.wake;
    let mut seen = shared.progress.load(Ordering::Relaxed);
    let mut seen_at: Option<Instant> = None;
    // The limit reached, and when.
    let mut reached: Option<(Trigger, Instant)> = None;
    let mut vcpu_back = lock(m);
    while !shared.run_over.load(Ordering::SeqCst) {
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        // Until the vCPU thread registers only the quit can be reached.
        let vcpu_since = shared.vcpu.get().map(|v| v.since);
        if reached.is_none() {
            if let (Some(stall), Some(since), false) =
                (limits.stall_timeout, vcpu_since, *vcpu_back)
            {
                let p = shared.progress.load(Ordering::Relaxed);
                let last_seen = *seen_at.get_or_insert(since);
                if p != seen {
                    (seen, seen_at) = (p, Some(now));
                } else if now >= last_seen + stall {
                    shared
                        .stalled
                        .store(stall.as_secs().max(1), Ordering::SeqCst);
                    reached = Some((Trigger::Stall(stall), now));
                }
                // Looked at again a quarter of the stall time later.
                wake = Some(now + stall / 4);
            }
            if reached.is_none() {
                let timeout_at = vcpu_since.map(|since| since + limits.timeout);
                if quit.requested() {
                    reached = Some((Trigger::Quit, now));
                } else if let Some(timeout_at) = timeout_at {
                    if now >= timeout_at {
                        shared.timed_out.store(true, Ordering::SeqCst);
                        reached = Some((Trigger::Timeout(limits.timeout), now));
                    } else {
                        wake = Some(wake.map_or(timeout_at, |w| w.min(timeout_at)));
                    }
                }
            }
        }
        if let Some((trigger, at)) = reached {
            let due = at + grace;
            if let Some(act) = action.take_if(|_| now >= due) {
                let stuck = match (shared.vcpu.get(), *vcpu_back) {
                    (Some(vcpu), false) => Stuck::VcpuLoop {
                        thread: vcpu.name.clone(),
                        last_io: unpack(
                            shared.last_io_addr.load(Ordering::Relaxed),
                            shared.last_io_meta.load(Ordering::Relaxed),
                        )
                        .map(|io| io.to_string()),
                    },
                    _ => Stuck::RunEnd {
                        thread: run_thread.clone(),
                    },
                };
                act(&DeadlineReport {
                    trigger,
                    grace,
                    stuck,
                });
            }
            if action.is_some() {
                wake = Some(wake.map_or(due, |w| w.min(due)));
            }
            if !*vcpu_back {
                if let Some(vcpu) = shared.vcpu.get() {
                    // SAFETY: `vcpu.thread` is the vCPU thread, alive until it drops its
                    // Watchdog, which sets `vcpu_back` (checked under the lock we hold).
                    unsafe { libc::pthread_kill(vcpu.thread, kick_signal()) };
                }
                let next_kick = now + KICK_INTERVAL;
                wake = Some(wake.map_or(next_kick, |w| w.min(next_kick)));
            }
        }
        vcpu_back = wait(cv, vcpu_back, wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A deadline whose action sends its report.
    fn recording(grace: Duration) -> (HardDeadline, mpsc::Receiver<DeadlineReport>) {
        let (tx, rx) = mpsc::channel();
        let deadline = HardDeadline {
            grace,
            action: Box::new(move |r| {
                let _ = tx.send(r.clone());
            }),
        };
        (deadline, rx)
    }

    /// Run a vCPU thread named `name` that makes `last_io` (if any) and then stays away from
    /// its loop, as device code that never returns would (kicks and all), until the deadline
    /// reports; then let it go. The report, or a panic if none came in 120 s.
    fn report_of_a_stuck_vcpu(
        watch: &RunWatch,
        name: &str,
        last_io: Option<LastIo>,
        reports: &mpsc::Receiver<DeadlineReport>,
    ) -> DeadlineReport {
        let (release, released) = mpsc::channel::<()>();
        let report = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn_scoped(s, move || {
                    let dog = watch.watch_this_thread();
                    if let Some(io) = &last_io {
                        dog.note_exit(io);
                    }
                    let _ = released.recv();
                    drop(dog);
                })
                .unwrap();
            let report = reports.recv_timeout(Duration::from_secs(120));
            let _ = release.send(());
            report
        });
        report.expect("the deadline never fired")
    }

    fn limits(timeout: Duration, stall_timeout: Option<Duration>) -> Limits {
        Limits {
            timeout,
            stall_timeout,
        }
    }

    /// A vCPU thread that never comes back to its loop (it waits for the test instead): the
    /// deadline fires and names it and its last exit.
    #[test]
    fn the_hard_deadline_fires_when_the_loop_never_comes_back() {
        let (deadline, reports) = recording(Duration::from_millis(100));
        let watch = RunWatch::start(
            limits(Duration::from_millis(50), None),
            QuitRequest::default(),
            deadline,
        )
        .unwrap();
        let last_io = LastIo::port(0x3f8, Dir::Write, 1);
        let report = report_of_a_stuck_vcpu(&watch, "stuck-vcpu", Some(last_io), &reports);
        assert_eq!(report.trigger, Trigger::Timeout(Duration::from_millis(50)));
        assert_eq!(
            report.stuck,
            Stuck::VcpuLoop {
                thread: "stuck-vcpu".into(),
                last_io: Some("port 0x3f8 write (1 B)".into()),
            }
        );
        let line = report.to_string();
        assert!(
            line.starts_with("hard deadline: thread stuck-vcpu did not come back to its run loop"),
            "{line}"
        );
        assert!(
            line.ends_with("last I/O exit: port 0x3f8 write (1 B)"),
            "{line}"
        );
        drop(watch);
        assert!(reports.try_recv().is_err(), "fired twice");
    }

    /// A vCPU thread that leaves its loop as soon as it sees the timeout, and a run that ends
    /// right after: the action is dropped unused. (The grace is long so that a loaded machine
    /// cannot reach it between the loop's return and the end of the test's run.)
    #[test]
    fn no_hard_deadline_when_the_loop_comes_back() {
        let (deadline, reports) = recording(Duration::from_secs(60));
        let watch = RunWatch::start(
            limits(Duration::from_millis(50), None),
            QuitRequest::default(),
            deadline,
        )
        .unwrap();
        let saw_timeout = std::thread::scope(|s| {
            s.spawn(|| {
                let dog = watch.watch_this_thread();
                while !dog.timed_out() {
                    std::thread::sleep(Duration::from_millis(1));
                }
                true
            })
            .join()
            .unwrap()
        });
        assert!(saw_timeout);
        drop(watch);
        assert_eq!(
            reports.try_recv().unwrap_err(),
            mpsc::TryRecvError::Disconnected,
            "the deadline fired"
        );
    }

    /// The vCPU's loop came back (the guest exited), then the monitor's quit came, and the
    /// thread that runs the machine never ends the run (as a report waiting on a lock a stuck
    /// I/O thread holds would not): the deadline names that thread.
    #[test]
    fn the_hard_deadline_covers_the_end_of_the_run() {
        let (deadline, reports) = recording(Duration::from_millis(100));
        let quit = QuitRequest::default();
        let watch = std::thread::Builder::new()
            .name("run-thread".into())
            .spawn({
                let quit = quit.clone();
                move || {
                    RunWatch::start(limits(Duration::from_secs(3600), None), quit, deadline)
                        .unwrap()
                }
            })
            .unwrap()
            .join()
            .unwrap();
        std::thread::scope(|s| {
            s.spawn(|| drop(watch.watch_this_thread()));
        });
        quit.request();
        let report = reports
            .recv_timeout(Duration::from_secs(120))
            .expect("the deadline never fired");
        assert_eq!(report.trigger, Trigger::Quit);
        assert_eq!(
            report.stuck,
            Stuck::RunEnd {
                thread: "run-thread".into()
            }
        );
        assert_eq!(
            report.to_string(),
            "hard deadline: thread run-thread did not finish the run (report and teardown) \
             within 0.1 s of the monitor's quit"
        );
        drop(watch);
    }

    /// A stall whose vCPU thread never comes back (and made no exit at all).
    #[test]
    fn a_stall_has_the_hard_deadline_too() {
        let (deadline, reports) = recording(Duration::from_millis(100));
        let watch = RunWatch::start(
            limits(Duration::from_secs(3600), Some(Duration::from_millis(50))),
            QuitRequest::default(),
            deadline,
        )
        .unwrap();
        let report = report_of_a_stuck_vcpu(&watch, "spinning-vcpu", None, &reports);
        assert_eq!(
            report.to_string(),
            "hard deadline: thread spinning-vcpu did not come back to its run loop within \
             0.1 s of the stall timeout (1 s without a port or MMIO exit); last I/O exit: none"
        );
        drop(watch);
    }

    #[test]
    fn the_last_exit_round_trips() {
        for io in [
            LastIo::port(0xf4, Dir::Write, 4),
            LastIo::mmio(0xfebf_f000, Dir::Read, 8),
        ] {
            let back = unpack(io.addr, pack_meta(&io)).unwrap();
            assert_eq!(back.to_string(), io.to_string());
        }
        assert!(unpack(0, 0).is_none());
    }
}
