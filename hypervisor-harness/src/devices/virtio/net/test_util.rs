//! A backend for the tests and the fuzz target: frames sent are recorded, frames queued are
//! received, and in echo mode every frame sent comes straight back (as the in-process peer's
//! replies are there right after `transmit`). Its readiness fd is an eventfd, readable while a
//! frame waits.

use crate::backends::net::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
use crate::devices::lock;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

#[derive(Default)]
pub struct Wire {
    /// Frames the device transmitted, with their metadata.
    pub sent: Vec<(FrameMeta, Vec<u8>)>,
    /// Frames waiting for the device to receive.
    pub to_guest: VecDeque<(Vec<u8>, FrameMeta)>,
    pub echo: bool,
    pub partial_ok: bool,
    /// Fail every call with Disconnected.
    pub gone: bool,
    /// At each `flush`: how many frames had been sent.
    pub flushes: Vec<usize>,
    /// Frames `transmit` takes before `tx_ready` says no (`None`: no limit).
    pub tx_room: Option<usize>,
    /// Times `tx_ready` was asked.
    pub tx_ready_calls: usize,
    pub counters: BackendCounters,
}

#[derive(Clone)]
pub struct TestBackend {
    pub wire: Arc<Mutex<Wire>>,
    ready: Arc<EventFd>,
    /// The `tx_wait_fd`: an eventfd is writable unless its count is at the maximum, which it
    /// is while `tx_room` is `Some(0)`.
    tx_wait: Arc<EventFd>,
}

impl Default for TestBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBackend {
    pub fn new() -> Self {
        Self {
            wire: Arc::default(),
            ready: Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")),
            tx_wait: Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd")),
        }
    }

    /// How many more frames it takes before it is not ready (`None`: any number).
    pub fn set_tx_room(&self, room: Option<usize>) {
        let mut w = lock(&self.wire);
        w.tx_room = room;
        self.show_tx_room(&w);
    }

    fn show_tx_room(&self, w: &Wire) {
        let _ = self.tx_wait.read();
        if w.tx_room == Some(0) {
            let _ = self.tx_wait.write(u64::MAX - 1);
        }
    }

    pub fn echo() -> Self {
        let b = Self::new();
        lock(&b.wire).echo = true;
        b
    }

    /// Queue a frame for the guest.
    pub fn push(&self, frame: &[u8], meta: FrameMeta) {
        lock(&self.wire).to_guest.push_back((frame.to_vec(), meta));
        let _ = self.ready.write(1);
    }

    pub fn sent(&self) -> Vec<(FrameMeta, Vec<u8>)> {
        lock(&self.wire).sent.clone()
    }

    pub fn waiting(&self) -> usize {
        lock(&self.wire).to_guest.len()
    }
}

impl NetBackend for TestBackend {
    fn describe(&self) -> String {
        "test".into()
    }
    fn accepts_partial_checksum(&self) -> bool {
        lock(&self.wire).partial_ok
    }
    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        let mut w = lock(&self.wire);
        if w.gone {
            return Err(NetBackendError::Disconnected("test".into()));
        }
        if let Some(room) = w.tx_room {
            w.tx_room = Some(room.saturating_sub(1));
            if room <= 1 {
                self.show_tx_room(&w);
            }
        }
        w.counters.tx_frames += 1;
        w.counters.tx_bytes += frame.len() as u64;
        w.sent.push((*meta, frame.to_vec()));
        if w.echo {
            w.to_guest.push_back((frame.to_vec(), FrameMeta::default()));
            let _ = self.ready.write(1);
        }
        Ok(())
    }
    fn flush(&mut self) -> Result<(), NetBackendError> {
        let mut w = lock(&self.wire);
        let sent = w.sent.len();
        w.flushes.push(sent);
        Ok(())
    }
    fn tx_ready(&mut self) -> bool {
        let mut w = lock(&self.wire);
        w.tx_ready_calls += 1;
        w.tx_room != Some(0)
    }
    fn tx_wait_fd(&self) -> Option<RawFd> {
        Some(self.tx_wait.as_raw_fd())
    }
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        let mut w = lock(&self.wire);
        if w.gone {
            return Err(NetBackendError::Disconnected("test".into()));
        }
        let Some((frame, meta)) = w.to_guest.pop_front() else {
            let _ = self.ready.read();
            return Ok(None);
        };
        if w.to_guest.is_empty() {
            let _ = self.ready.read();
        }
        if frame.len() > buf.len() {
            w.counters.rx_dropped += 1;
            return Ok(None);
        }
        buf[..frame.len()].copy_from_slice(&frame);
        w.counters.rx_frames += 1;
        w.counters.rx_bytes += frame.len() as u64;
        Ok(Some((frame.len(), meta)))
    }
    fn rx_ready_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
    fn counters(&self) -> BackendCounters {
        lock(&self.wire).counters
    }
}

/// An Ethernet/IPv4/UDP frame from `src_port` to `dst_port` with `payload` (checksums zero).
pub fn udp_frame(src_port: u16, dst_port: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 42];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0x76, 0, 1]);
    f[6..12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[192, 168, 76, 2]);
    f[30..34].copy_from_slice(&[192, 168, 76, 1]);
    f[34..36].copy_from_slice(&src_port.to_be_bytes());
    f[36..38].copy_from_slice(&dst_port.to_be_bytes());
    f[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(payload);
    let ip_len = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f
}

/// The same flow seen from the other end (addresses and ports swapped).
pub fn reply_of(frame: &[u8]) -> Vec<u8> {
    let mut r = frame.to_vec();
    r[0..6].copy_from_slice(&frame[6..12]);
    r[6..12].copy_from_slice(&frame[0..6]);
    r[26..30].copy_from_slice(&frame[30..34]);
    r[30..34].copy_from_slice(&frame[26..30]);
    r[34..36].copy_from_slice(&frame[36..38]);
    r[36..38].copy_from_slice(&frame[34..36]);
    r
}
