//! The network backend of the e1000 and RTL8139 rigs: it keeps the metadata and length of
//! every frame sent, not its bytes (the rigs' checks need only the length, and a program that
//! sends thousands of full-size frames held megabytes), hands the models the frames the program
//! queued, and runs out of TX room on demand, as the tests' `TestBackend` does for them,
//! without its costs per call. No eventfd is read or written (the rigs run no backend thread to
//! wake), and `tx_ready`, which a model asks before each frame of a lap over a ring of up to
//! 65,535 descriptors, takes no lock. Those were a tenth of the e1000 target's time.

use crate::backends::net::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
use crate::devices::lock;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// `tx_room` when there is no limit.
const NO_LIMIT: usize = usize::MAX;

#[derive(Default)]
pub(super) struct Wire {
    /// Frames the model transmitted: their metadata and length.
    pub sent: Vec<(FrameMeta, usize)>,
    /// Frames waiting for the model to receive.
    to_guest: VecDeque<Vec<u8>>,
    counters: BackendCounters,
}

#[derive(Clone)]
pub(super) struct RecordingBackend {
    pub wire: Arc<Mutex<Wire>>,
    /// Frames `transmit` takes before `tx_ready` says no ([`NO_LIMIT`]: any number).
    tx_room: Arc<AtomicUsize>,
}

impl RecordingBackend {
    pub fn new() -> Self {
        Self {
            wire: Arc::default(),
            tx_room: Arc::new(AtomicUsize::new(NO_LIMIT)),
        }
    }

    /// How many more frames it takes before it is not ready (`None`: any number).
    pub fn set_tx_room(&self, room: Option<usize>) {
        // `usize::MAX` frames would take longer than any input runs: the same as no limit.
        self.tx_room
            .store(room.unwrap_or(NO_LIMIT), Ordering::Relaxed);
    }

    /// Queue a frame for the guest.
    pub fn push(&self, frame: &[u8]) {
        lock(&self.wire).to_guest.push_back(frame.to_vec());
    }

    /// How many frames the model has transmitted.
    pub fn sent_count(&self) -> usize {
        lock(&self.wire).sent.len()
    }

    /// Frames queued that the model has not taken.
    pub fn waiting(&self) -> usize {
        lock(&self.wire).to_guest.len()
    }
}

impl NetBackend for RecordingBackend {
    fn describe(&self) -> String {
        "fuzz".into()
    }

    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        let room = self.tx_room.load(Ordering::Relaxed);
        if room != NO_LIMIT {
            self.tx_room
                .store(room.saturating_sub(1), Ordering::Relaxed);
        }
        let mut w = lock(&self.wire);
        w.counters.tx_frames += 1;
        w.counters.tx_bytes += frame.len() as u64;
        w.sent.push((*meta, frame.len()));
        Ok(())
    }

    fn tx_ready(&mut self) -> bool {
        self.tx_room.load(Ordering::Relaxed) != 0
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        let mut w = lock(&self.wire);
        let Some(frame) = w.to_guest.pop_front() else {
            return Ok(None);
        };
        if frame.len() > buf.len() {
            w.counters.rx_dropped += 1;
            return Ok(None);
        }
        buf[..frame.len()].copy_from_slice(&frame);
        w.counters.rx_frames += 1;
        w.counters.rx_bytes += frame.len() as u64;
        Ok(Some((frame.len(), FrameMeta::default())))
    }

    /// No fd: nothing in a rig polls it (only a backend thread would).
    fn rx_ready_fd(&self) -> RawFd {
        -1
    }

    fn counters(&self) -> BackendCounters {
        lock(&self.wire).counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_both_ways_and_tx_room_runs_out_as_set() {
        let mut b = RecordingBackend::new();
        let mut buf = [0u8; 2048];
        assert_eq!(b.receive(&mut buf).unwrap(), None);
        b.push(&[1, 2, 3]);
        b.push(&[0; 4096]);
        b.push(&[4]);
        assert_eq!(b.waiting(), 3);
        assert_eq!(b.receive(&mut buf).unwrap().unwrap().0, 3);
        assert_eq!(buf[..3], [1, 2, 3]);
        // Longer than the buffer: dropped, counted, and this call gives nothing.
        assert_eq!(b.receive(&mut buf).unwrap(), None);
        assert_eq!(b.receive(&mut buf).unwrap().unwrap().0, 1);
        assert_eq!(b.counters().rx_dropped, 1);
        assert_eq!(b.counters().rx_frames, 2);
        // Room for two, then none, until the limit goes.
        assert!(b.tx_ready());
        b.set_tx_room(Some(2));
        for _ in 0..2 {
            assert!(b.tx_ready());
            b.transmit(&FrameMeta::default(), &[0; 60]).unwrap();
        }
        assert!(!b.tx_ready());
        b.set_tx_room(Some(0));
        assert!(!b.tx_ready());
        b.set_tx_room(None);
        assert!(b.tx_ready());
        b.transmit(&FrameMeta::default(), &[0; 61]).unwrap();
        assert_eq!(b.sent_count(), 3);
        assert_eq!(lock(&b.wire).sent[2].1, 61);
        assert_eq!(b.counters().tx_bytes, 181);
    }
}
