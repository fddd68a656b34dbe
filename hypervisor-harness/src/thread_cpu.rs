//! A thread's CPU time, readable from any thread: the I/O threads' and the vCPU's cost per
//! benchmark row (`io_thread_cpu_ns`, `vcpu_cpu_ns` in the `--exits-json` phase marks).
//!
//! A leaf like `seccomp/`: every room may use it. Reading is one `clock_gettime`, which every
//! thread kind's seccomp allow-list has.

use std::io;

/// The CPU clock of one thread (`pthread_getcpuclockid`), taken by the thread itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadCpuClock(libc::clockid_t);

impl ThreadCpuClock {
    /// The calling thread's clock.
    pub fn current() -> io::Result<Self> {
        let mut id: libc::clockid_t = 0;
        // SAFETY: pthread_self() is the calling thread, alive for the call; `id` is a valid
        // place for the result.
        let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Self(id))
    }

    /// CPU time the thread has used, in ns; None once it has ended.
    pub fn read_ns(&self) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill; an unknown clock id is
        // an error return, not undefined behaviour.
        let rc = unsafe { libc::clock_gettime(self.0, &mut ts) };
        if rc != 0 {
            return None;
        }
        let secs = u64::try_from(ts.tv_sec).ok()?;
        let nanos = u64::try_from(ts.tv_nsec).ok()?;
        Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
    }
}

/// The summed CPU time of `clocks`, in ns (threads that ended count nothing).
pub fn total_ns(clocks: &[ThreadCpuClock]) -> u64 {
    clocks.iter().filter_map(ThreadCpuClock::read_ns).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn burn(iterations: u64) -> u64 {
        let mut x = 1u64;
        for i in 0..iterations {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    }

    #[test]
    fn another_thread_reads_a_threads_cpu_time_which_grows_as_it_works() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            tx.send(ThreadCpuClock::current().unwrap()).unwrap();
            go_rx.recv().unwrap();
            burn(20_000_000);
        });
        let clock = rx.recv().unwrap();
        let before = clock.read_ns().expect("the worker is alive");
        go_tx.send(()).unwrap();
        // Read while it is still running or just ended; either way, after its work the clock
        // went forward (or the thread is gone and reads None).
        while !worker.is_finished() {
            if let Some(now) = clock.read_ns() {
                assert!(now >= before);
            }
            std::thread::yield_now();
        }
        worker.join().unwrap();
        // join returns once the exiting thread's kernel side has cleared its id, before the
        // kernel has reaped it: for that moment (longer when the exiting thread is preempted)
        // its clock still reads. It must be gone once the exit is done.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while clock.read_ns().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "an ended thread's clock is gone"
            );
            std::thread::yield_now();
        }
        // This thread's own clock works too, and sums.
        let me = ThreadCpuClock::current().unwrap();
        burn(1_000_000);
        assert!(me.read_ns().unwrap() > 0);
        assert!(total_ns(&[me, clock]) > 0);
    }
}
