//! `stream:PATH`: frames over a UNIX stream socket in QEMU's `-netdev stream` framing, a
//! 4-byte big-endian length and then the frame. We connect (QEMU's `server=off`), to a
//! `hypervisor-harness peer --listen PATH` or to a QEMU with `server=on`.
//!
//! The socket is non-blocking. Reads are buffered (one `read` may bring many frames). Writes
//! are batched: `transmit` only appends the frame to a bounded buffer and
//! [`NetBackend::flush`] (the end of the NIC's TX pass) writes it, one system call for many
//! frames; a write the socket takes only in part keeps its tail there. A frame that would
//! overflow the buffer writes it early, and is dropped and counted only if even then there is
//! no room, as a full wire would. A length of 0 or over
//! [`MAX_FRAME`] from the far side is a framing error: the stream can no longer be followed,
//! so it is counted and the backend is `Disconnected` from then on.
//!
//! [`NetBackend::rx_ready_fd`] is the socket: readable when bytes arrive. Frames already read
//! into the buffer are returned by `receive` without a system call, so a caller drains
//! `receive` until `None` (when the buffer holds no whole frame) before it waits on the fd.

use super::{BackendCounters, FrameMeta, NetBackend, NetBackendError, MAX_FRAME};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Bytes of the length prefix.
pub const LEN_BYTES: usize = 4;
/// Room for whole frames in the read buffer: one `read` takes up to this much.
const READ_BUFFER: usize = 64 << 10;
/// Bytes a stream backend holds for the socket before it drops frames.
const WRITE_BUFFER: usize = 256 << 10;

/// A length prefix that cannot be followed: 0 or over [`MAX_FRAME`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError(pub u32);

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "framing error: length {} (1..={MAX_FRAME})", self.0)
    }
}

/// The receiving half: bytes read from the socket, cut into frames.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            buf: vec![0; READ_BUFFER + LEN_BYTES + MAX_FRAME],
            start: 0,
            end: 0,
        }
    }
}

impl FrameReader {
    /// The next whole frame already read, if any.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FramingError> {
        let have = &self.buf[self.start..self.end];
        let Some(prefix) = have.first_chunk::<LEN_BYTES>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*prefix);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(FramingError(len));
        }
        let total = LEN_BYTES + len as usize;
        if have.len() < total {
            return Ok(None);
        }
        let frame = self.start + LEN_BYTES..self.start + total;
        self.start += total;
        Ok(Some(&self.buf[frame]))
    }

    /// One `read` into the free space (`Ok(0)`: the far side closed).
    pub fn fill(&mut self, from: &mut impl Read) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.buf.len() - self.end < LEN_BYTES + MAX_FRAME {
            // Less than a frame's room left: move the partial frame to the front.
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        let n = from.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }
}

/// The sending half: framed bytes not yet taken by the socket, at most `limit` of them.
pub struct FrameWriter {
    buf: Vec<u8>,
    sent: usize,
    limit: usize,
}

impl FrameWriter {
    pub fn new(limit: usize) -> Self {
        Self {
            buf: Vec::new(),
            sent: 0,
            limit,
        }
    }

    /// Bytes waiting for the socket.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Whether a frame of `len` bytes fits under the limit now.
    pub fn has_room(&self, len: usize) -> bool {
        self.pending() + LEN_BYTES + len <= self.limit
    }

    /// Queue one frame; false (nothing queued) if it would pass the limit.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if !self.has_room(frame.len()) {
            return false;
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        }
        self.buf
            .extend_from_slice(&(frame.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(frame);
        true
    }

    /// Write what the socket takes now; `Ok` also when it is full (WouldBlock).
    pub fn flush(&mut self, to: &mut impl Write) -> io::Result<()> {
        while self.sent < self.buf.len() {
            match to.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
        } else if self.sent > self.limit {
            // Keep the buffer from creeping: drop what was written.
            self.buf.drain(..self.sent);
            self.sent = 0;
        }
        Ok(())
    }
}

/// The `stream:PATH` backend.
pub struct StreamBackend {
    describe: String,
    sock: UnixStream,
    reader: FrameReader,
    writer: FrameWriter,
    counters: BackendCounters,
    /// Why the stream is unusable, once it is.
    gone: Option<String>,
}

impl StreamBackend {
    /// Connect to the socket at `path`.
    pub fn connect(path: &Path) -> io::Result<Self> {
        let sock = UnixStream::connect(path)?;
        Self::from_stream(sock, format!("stream:{}", path.display()))
    }

    /// A backend over a socket already connected (tests, socket pairs).
    pub fn from_stream(sock: UnixStream, describe: String) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        Ok(Self {
            describe,
            sock,
            reader: FrameReader::default(),
            writer: FrameWriter::new(WRITE_BUFFER),
            counters: BackendCounters::default(),
            gone: None,
        })
    }

    fn disconnected(&mut self, why: String) -> NetBackendError {
        self.gone.get_or_insert(why.clone());
        NetBackendError::Disconnected(format!("{}: {why}", self.describe))
    }

    fn check_gone(&self) -> Result<(), NetBackendError> {
        match &self.gone {
            Some(why) => Err(NetBackendError::Disconnected(format!(
                "{}: {why}",
                self.describe
            ))),
            None => Ok(()),
        }
    }

    /// Write what the socket takes now (non-blocking; the rest waits in the buffer).
    fn write_out(&mut self) -> Result<(), NetBackendError> {
        self.writer
            .flush(&mut self.sock)
            .map_err(|e| self.disconnected(format!("write: {e}")))
    }
}

impl NetBackend for StreamBackend {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn transmit(&mut self, _meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        self.check_gone()?;
        if frame.is_empty() || frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Ok(());
        }
        // Gathered until `flush`; written early only when the buffer would overflow.
        if !self.writer.has_room(frame.len()) {
            self.write_out()?;
        }
        if !self.writer.push(frame) {
            self.counters.tx_dropped += 1;
            return Ok(());
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    /// Writes the batch; a stream already gone has nothing to write (`transmit` said so).
    fn flush(&mut self) -> Result<(), NetBackendError> {
        if self.gone.is_some() || self.writer.pending() == 0 {
            return Ok(());
        }
        self.write_out()
    }

    /// Room for a whole frame in the write buffer, after a write of what it holds if there
    /// is not. A stream that is gone is "ready": `transmit` reports it, nothing is held.
    fn tx_ready(&mut self) -> bool {
        if self.gone.is_some() || self.writer.has_room(MAX_FRAME) {
            return true;
        }
        let _ = self.write_out();
        self.gone.is_some() || self.writer.has_room(MAX_FRAME)
    }

    fn tx_wait_fd(&self) -> Option<RawFd> {
        Some(self.sock.as_raw_fd())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        self.check_gone()?;
        let mut read_once = false;
        loop {
            match self.reader.next_frame() {
                Ok(Some(frame)) => {
                    if frame.len() > buf.len() {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    buf[..frame.len()].copy_from_slice(frame);
                    self.counters.rx_frames += 1;
                    self.counters.rx_bytes += frame.len() as u64;
                    return Ok(Some((frame.len(), FrameMeta::default())));
                }
                Ok(None) if read_once => return Ok(None),
                Ok(None) => {}
                Err(e) => {
                    self.counters.rx_dropped += 1;
                    return Err(self.disconnected(e.to_string()));
                }
            }
            match self.reader.fill(&mut self.sock) {
                Ok(0) => return Err(self.disconnected("closed by the far side".into())),
                Ok(_) => read_once = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.disconnected(format!("read: {e}"))),
            }
        }
    }

    fn rx_ready_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Pushes out what a full socket left; asks to be called again soon while bytes wait.
    fn poll(&mut self) -> Option<Duration> {
        if self.gone.is_some() || self.writer.pending() == 0 {
            return None;
        }
        let _ = self.write_out();
        (self.writer.pending() > 0).then_some(Duration::from_millis(1))
    }

    fn counters(&self) -> BackendCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (StreamBackend, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (
            StreamBackend::from_stream(a, "stream:test".into()).unwrap(),
            b,
        )
    }

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut v = (frame.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(frame);
        v
    }

    #[test]
    fn frames_both_ways_in_qemu_framing() {
        let (mut be, mut far) = pair();
        be.transmit(&FrameMeta::default(), &[1, 2, 3]).unwrap();
        be.flush().unwrap();
        let mut got = [0u8; 7];
        far.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 1, 2, 3]);

        let mut buf = [0u8; MAX_FRAME];
        assert!(be.receive(&mut buf).unwrap().is_none());
        // Two frames in one write, then one split across three writes.
        let mut bytes = framed(&[9; 60]);
        bytes.extend(framed(&[8; MAX_FRAME]));
        far.write_all(&bytes).unwrap();
        assert_eq!(be.receive(&mut buf).unwrap().unwrap().0, 60);
        assert_eq!(be.receive(&mut buf).unwrap().unwrap().0, MAX_FRAME);
        assert!(buf.iter().all(|&b| b == 8));
        assert!(be.receive(&mut buf).unwrap().is_none());
        let split = framed(&[7; 100]);
        for piece in [&split[..2], &split[2..50], &split[50..]] {
            far.write_all(piece).unwrap();
            let r = be.receive(&mut buf).unwrap();
            assert_eq!(r.is_some(), piece.len() == 54, "{}", piece.len());
        }
        // Too large for the caller's buffer: dropped, not truncated.
        far.write_all(&framed(&[6; 200])).unwrap();
        far.write_all(&framed(&[5; 10])).unwrap();
        let mut small = [0u8; 100];
        assert_eq!(be.receive(&mut small).unwrap().unwrap().0, 10);
        let c = be.counters();
        assert_eq!((c.tx_frames, c.rx_frames, c.rx_dropped), (1, 4, 1));
        // Frames the backend will not send.
        be.transmit(&FrameMeta::default(), &[]).unwrap();
        be.transmit(&FrameMeta::default(), &[0; MAX_FRAME + 1])
            .unwrap();
        assert_eq!(be.counters().tx_dropped, 2);
    }

    #[test]
    fn bad_lengths_disconnect() {
        for len in [0u32, MAX_FRAME as u32 + 1, u32::MAX] {
            let (mut be, mut far) = pair();
            far.write_all(&framed(&[1; 20])).unwrap();
            far.write_all(&len.to_be_bytes()).unwrap();
            far.write_all(&[0; 64]).unwrap();
            let mut buf = [0u8; MAX_FRAME];
            assert_eq!(be.receive(&mut buf).unwrap().unwrap().0, 20);
            let e = be.receive(&mut buf).unwrap_err();
            assert!(
                matches!(&e, NetBackendError::Disconnected(m) if m.contains("framing")),
                "{e}"
            );
            assert_eq!(be.counters().rx_dropped, 1);
            // And stays so.
            assert!(be.receive(&mut buf).is_err());
            assert!(be.transmit(&FrameMeta::default(), &[1; 60]).is_err());
        }
    }

    #[test]
    fn full_socket_drops_and_counts_then_recovers() {
        let (mut be, mut far) = pair();
        let frame = [0xAB; 1500];
        let mut sent = 0u64;
        // Nobody reads: the socket and then our buffer fill up.
        for _ in 0..10_000 {
            be.transmit(&FrameMeta::default(), &frame).unwrap();
            sent += 1;
        }
        let c = be.counters();
        assert!(c.tx_dropped > 0, "{c:?}");
        assert_eq!(c.tx_frames + c.tx_dropped, sent);
        // The far side reads everything that was accepted, whole frames only.
        far.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 1 << 16];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got.len() < c.tx_frames as usize * 1504 {
            assert!(std::time::Instant::now() < deadline);
            be.poll();
            match far.read(&mut chunk) {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), c.tx_frames as usize * 1504);
        for f in got.chunks(1504) {
            assert_eq!(&f[..4], &1500u32.to_be_bytes());
        }
    }

    #[test]
    fn transmits_gather_until_flush_writes_them_at_once() {
        let (mut be, mut far) = pair();
        far.set_nonblocking(true).unwrap();
        const N: usize = 50;
        for i in 0..N {
            be.transmit(&FrameMeta::default(), &[i as u8; 1000])
                .unwrap();
        }
        let mut chunk = vec![0u8; 1 << 20];
        assert_eq!(
            far.read(&mut chunk).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing is written before the flush"
        );
        be.flush().unwrap();
        assert_eq!(be.writer.pending(), 0, "the socket took the whole batch");
        let mut got = Vec::new();
        loop {
            match far.read(&mut chunk) {
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got.len(), N * 1004);
        for (i, f) in got.chunks(1004).enumerate() {
            assert_eq!(f, &framed(&[i as u8; 1000])[..], "frame {i}");
        }
        assert_eq!(be.counters().tx_frames, N as u64);
        // A flush with nothing gathered writes nothing.
        be.flush().unwrap();
        assert!(far.read(&mut chunk).is_err());
    }

    #[test]
    fn a_batch_over_the_buffer_writes_early_instead_of_dropping() {
        let (mut be, mut far) = pair();
        far.set_nonblocking(true).unwrap();
        // More than the write buffer holds, less than it and the socket together.
        let frames = WRITE_BUFFER / 1504 + 20;
        for _ in 0..frames {
            be.transmit(&FrameMeta::default(), &[0x5A; 1500]).unwrap();
        }
        assert_eq!(be.counters().tx_dropped, 0);
        let mut chunk = vec![0u8; 1 << 20];
        let early = far.read(&mut chunk).unwrap();
        assert!(early > 0, "the overflowing frame wrote the buffer out");
        let mut got = early;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while got < frames * 1504 {
            assert!(std::time::Instant::now() < deadline);
            be.flush().unwrap();
            match far.read(&mut chunk) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, frames * 1504);
    }

    #[test]
    fn tx_ready_while_a_frame_fits_and_the_fd_is_the_socket() {
        let (mut be, mut far) = pair();
        assert_eq!(be.tx_wait_fd(), Some(be.sock.as_raw_fd()));
        // Nobody reads: fill the socket and the buffer until a frame would not fit.
        let mut sent = 0;
        while be.tx_ready() {
            be.transmit(&FrameMeta::default(), &[1; MAX_FRAME]).unwrap();
            be.flush().unwrap();
            sent += 1;
            assert!(sent < 100_000);
        }
        assert_eq!(be.counters().tx_dropped, 0, "nothing dropped while ready");
        // The far side reads: ready again, and everything arrives.
        far.set_nonblocking(true).unwrap();
        let mut chunk = vec![0u8; 1 << 20];
        let mut got = 0;
        while got < sent * (LEN_BYTES + MAX_FRAME) {
            match far.read(&mut chunk) {
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(be.tx_ready());
                    be.flush().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(be.tx_ready());
    }

    #[test]
    fn far_side_closing_is_disconnected() {
        let (mut be, far) = pair();
        drop(far);
        let mut buf = [0u8; MAX_FRAME];
        assert!(matches!(
            be.receive(&mut buf),
            Err(NetBackendError::Disconnected(_))
        ));
    }
}
