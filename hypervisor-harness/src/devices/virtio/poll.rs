//! Adaptive polling of an I/O thread's queues: how long to poll the avail rings after a batch
//! before sleeping on the ioeventfds. Pure (no clock, no threads): the thread measures, the
//! policy decides.
//!
//! The rule is QEMU's (`util/aio-posix.c`, an iothread's `poll-max-ns`, `poll-grow`,
//! `poll-shrink` at their defaults): after each idle period the thread reports how long it
//! waited for the next work, polling and sleeping together.
//! - Work came within the window: the window is right, it stays.
//! - Work came later than `max_ns`: polling that long would not have caught it, so stop
//!   polling (the window drops to 0; QEMU's `poll-shrink=0`).
//! - Work came after the window but within `max_ns`: a longer window would have caught it,
//!   so the window grows: from 0 to [`FIRST_WINDOW_NS`], then doubling (`poll-grow=2`), capped
//!   at `max_ns`.

/// QEMU's default `poll-max-ns` for an iothread (its `IOTHREAD_POLL_MAX_NS_DEFAULT`), ours
/// too: `--disk virtio:PATH` polls up to 32768 ns unless `poll-max-ns=` says otherwise.
pub const DEFAULT_POLL_MAX_NS: u64 = 32_768;

/// The window a policy starts polling with when it first grows (QEMU's 4 µs).
pub const FIRST_WINDOW_NS: u64 = 4_000;

/// How much the window grows each time a longer one would have caught the work.
const GROW_FACTOR: u64 = 2;

/// The polling window of one I/O thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollPolicy {
    max_ns: u64,
    window_ns: u64,
}

impl PollPolicy {
    /// A policy bounded by `max_ns` (0: never poll). It starts with no window: the first
    /// idle period sleeps, and polling begins once the waits show it would pay.
    pub fn new(max_ns: u64) -> Self {
        Self {
            max_ns,
            window_ns: 0,
        }
    }

    /// A policy already polling with `window_ns` (at most `max_ns`): for tests that need the
    /// thread polling from the start.
    #[cfg(test)]
    pub fn polling(max_ns: u64, window_ns: u64) -> Self {
        Self {
            max_ns,
            window_ns: window_ns.min(max_ns),
        }
    }

    /// How long to poll after the next batch, in ns (0: sleep at once).
    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    pub fn max_ns(&self) -> u64 {
        self.max_ns
    }

    /// The thread waited `waited_ns` (polling, then sleeping if polling found nothing) from
    /// the end of a batch until the next work: adjust the window for the next idle period.
    pub fn waited(&mut self, waited_ns: u64) {
        if self.max_ns == 0 || waited_ns <= self.window_ns {
            return;
        }
        if waited_ns > self.max_ns {
            self.window_ns = 0;
        } else if self.window_ns < self.max_ns {
            self.window_ns = match self.window_ns {
                0 => FIRST_WINDOW_NS,
                w => w.saturating_mul(GROW_FACTOR),
            }
            .min(self.max_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_never_polls() {
        let mut p = PollPolicy::new(0);
        for waited in [0, 1, 1_000, 10_000, 1 << 40] {
            p.waited(waited);
            assert_eq!(p.window_ns(), 0, "after waiting {waited} ns");
        }
    }

    #[test]
    fn starts_asleep_and_grows_while_a_longer_window_would_catch_the_work() {
        let mut p = PollPolicy::new(DEFAULT_POLL_MAX_NS);
        assert_eq!(p.window_ns(), 0);
        // Work 20 µs after each batch: each wait is beyond the window, within the bound.
        let mut windows = Vec::new();
        for _ in 0..5 {
            p.waited(20_000);
            windows.push(p.window_ns());
        }
        assert_eq!(windows, [4_000, 8_000, 16_000, 32_000, 32_000]);
    }

    #[test]
    fn growth_is_capped_at_the_bound() {
        let mut p = PollPolicy::new(10_000);
        p.waited(9_000);
        p.waited(9_000);
        assert_eq!(p.window_ns(), 8_000);
        p.waited(9_000);
        assert_eq!(p.window_ns(), 10_000);
        p.waited(10_000);
        assert_eq!(p.window_ns(), 10_000);
    }

    #[test]
    fn work_found_within_the_window_keeps_it() {
        let mut p = PollPolicy::new(DEFAULT_POLL_MAX_NS);
        p.waited(20_000);
        p.waited(20_000);
        assert_eq!(p.window_ns(), 8_000);
        for waited in [0, 1, 7_999, 8_000] {
            p.waited(waited);
            assert_eq!(p.window_ns(), 8_000, "after waiting {waited} ns");
        }
    }

    #[test]
    fn a_wait_beyond_the_bound_stops_polling() {
        let mut p = PollPolicy::new(DEFAULT_POLL_MAX_NS);
        for _ in 0..4 {
            p.waited(30_000);
        }
        assert_eq!(p.window_ns(), 32_000);
        p.waited(DEFAULT_POLL_MAX_NS + 1);
        assert_eq!(p.window_ns(), 0);
        // And it comes back when the work does.
        p.waited(5_000);
        assert_eq!(p.window_ns(), FIRST_WINDOW_NS);
    }

    #[test]
    fn a_tiny_bound_is_never_exceeded() {
        let mut p = PollPolicy::new(1_000);
        p.waited(500);
        assert_eq!(p.window_ns(), 1_000);
        p.waited(u64::MAX);
        assert_eq!(p.window_ns(), 0);
    }
}
