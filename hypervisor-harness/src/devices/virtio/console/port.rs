//! One console port's host side as the device sees it: the input waiting for the guest (a
//! bounded buffer the host's reader fills and the receive queue drains), where the guest's
//! output goes (a writer while the host is connected), and its counters. The threads that move
//! bytes between a socket or the terminal and this are `vmm/console_wiring.rs`'s.

use crate::devices::lock;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Bytes of host input held for the guest; the host's reader waits while it is full.
pub const INPUT_CAP: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    /// Bytes that reached the guest's receive buffers.
    pub to_guest: u64,
    /// Bytes the guest transmitted.
    pub from_guest: u64,
    /// Guest bytes dropped: no host connected, or the host's write failed.
    pub dropped: u64,
    /// Host bytes lost at a guest receive buffer outside RAM.
    pub input_lost: u64,
    pub host_connections: u64,
}

pub struct PortShared {
    pub name: Option<String>,
    pub is_console: bool,
    input: Mutex<VecDeque<u8>>,
    room: Condvar,
    output: Mutex<Option<Box<dyn Write + Send>>>,
    host_open: AtomicBool,
    counters: Mutex<PortCounters>,
}

impl PortShared {
    pub fn new(name: Option<String>, is_console: bool) -> Self {
        Self {
            name,
            is_console,
            input: Mutex::default(),
            room: Condvar::new(),
            output: Mutex::new(None),
            host_open: AtomicBool::new(false),
            counters: Mutex::default(),
        }
    }

    pub fn counters(&self) -> PortCounters {
        *lock(&self.counters)
    }

    pub fn host_open(&self) -> bool {
        self.host_open.load(Ordering::SeqCst)
    }

    /// The host side connected: the guest's output goes to `writer` from now on.
    pub fn connect(&self, writer: Box<dyn Write + Send>) {
        *lock(&self.output) = Some(writer);
        self.host_open.store(true, Ordering::SeqCst);
        lock(&self.counters).host_connections += 1;
    }

    /// The host side went away: output is dropped (counted) until the next connection.
    pub fn disconnect(&self) {
        *lock(&self.output) = None;
        self.host_open.store(false, Ordering::SeqCst);
    }

    /// Add host input, waiting (in slices of `patience`) while the buffer is full. Returns
    /// how many bytes went in before `keep_waiting` said stop. `keep_waiting` runs without the
    /// input's lock held, so it may run the receive pass that drains it.
    pub fn push_input(
        &self,
        data: &[u8],
        patience: Duration,
        mut keep_waiting: impl FnMut() -> bool,
    ) -> usize {
        let mut done = 0;
        while done < data.len() {
            {
                let mut input = lock(&self.input);
                let room = INPUT_CAP.saturating_sub(input.len());
                let n = room.min(data.len() - done);
                input.extend(&data[done..done + n]);
                done += n;
                if done == data.len() {
                    break;
                }
            }
            if !keep_waiting() {
                break;
            }
            let input = lock(&self.input);
            if input.len() >= INPUT_CAP {
                // Woken by take_input, or after `patience` to ask keep_waiting again.
                drop(self.room.wait_timeout(input, patience));
            }
        }
        done
    }

    pub fn has_input(&self) -> bool {
        !lock(&self.input).is_empty()
    }

    /// Move up to `buf.len()` bytes of input into `buf` (for a guest buffer), counted as
    /// reaching the guest.
    pub fn take_input(&self, buf: &mut [u8]) -> usize {
        let mut input = lock(&self.input);
        let n = buf.len().min(input.len());
        for (dst, src) in buf.iter_mut().zip(input.drain(..n)) {
            *dst = src;
        }
        drop(input);
        if n > 0 {
            lock(&self.counters).to_guest += n as u64;
            self.room.notify_all();
        }
        n
    }

    /// Bytes taken with [`Self::take_input`] that could not be written to the guest after all
    /// (its buffer was outside RAM): no longer counted as delivered.
    pub fn lost_input(&self, n: usize) {
        let mut c = lock(&self.counters);
        c.to_guest = c.to_guest.saturating_sub(n as u64);
        c.input_lost += n as u64;
    }

    /// The guest transmitted `data`: to the host if connected, else dropped (counted).
    pub fn output(&self, data: &[u8]) {
        let mut out = lock(&self.output);
        let written = match out.as_mut() {
            Some(w) => w.write_all(data).and_then(|()| w.flush()).is_ok(),
            None => false,
        };
        if !written && out.is_some() {
            // A host that stopped reading is a disconnected one.
            *out = None;
            self.host_open.store(false, Ordering::SeqCst);
        }
        drop(out);
        let mut c = lock(&self.counters);
        c.from_guest += data.len() as u64;
        if !written {
            c.dropped += data.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_goes_to_the_host_only_while_connected() {
        let p = PortShared::new(None, true);
        p.output(b"lost");
        let sink = Sink::default();
        p.connect(Box::new(sink.clone()));
        assert!(p.host_open());
        p.output(b"kept");
        p.disconnect();
        p.output(b"lost again");
        assert_eq!(*lock(&sink.0), b"kept");
        let c = p.counters();
        assert_eq!((c.from_guest, c.dropped, c.host_connections), (18, 14, 1));
    }

    #[test]
    fn input_is_bounded_and_the_writer_waits_for_room() {
        let p = Arc::new(PortShared::new(None, false));
        let big = vec![7u8; INPUT_CAP + 1000];
        assert_eq!(
            p.push_input(&big, Duration::from_millis(1), || false),
            INPUT_CAP,
            "full: the rest is left to the caller"
        );
        let p2 = p.clone();
        let writer = std::thread::spawn(move || {
            p2.push_input(&[1; 3000], Duration::from_millis(5), || true)
        });
        let mut buf = vec![0u8; 4096];
        assert_eq!(p.take_input(&mut buf), 4096);
        assert_eq!(writer.join().unwrap(), 3000);
        let mut total = 4096;
        while p.has_input() {
            total += p.take_input(&mut buf);
        }
        assert_eq!(total, INPUT_CAP + 3000);
        assert_eq!(p.counters().to_guest, total as u64);
    }
}
