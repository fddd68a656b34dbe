//! `run --record-exits FILE` (hidden): every port and MMIO exit that reaches the buses, as
//! [`dispatch`](super::dispatch::dispatch) saw it, kept in memory and written to FILE after the
//! run. The fuzz seed corpus is converted from these recordings (`fuzzing/recorded.rs`).
//!
//! Kept in memory because the vCPU thread's seccomp filter allows no `open`; bounded so that a
//! long test cannot make a huge file: [`MAX_RECORDS`] records, and once the string I/O of one
//! bus range has brought [`MAX_BYTES_PER_RANGE`] of data, its strings are kept without their
//! data (an IDE test's PIO sectors would otherwise crowd out the taskfile writes between
//! them); an access of at most 8 bytes always keeps its data.
//! Off, it costs the dispatch one load and branch ([`active`]).
//!
//! Queue contents live in guest memory, not in exits: a device adds a snapshot of each
//! request it parsed ([`DeviceRecorder::record_request`], kind 4; virtio-blk does), and every
//! NIC's backend is wrapped ([`wrap_net`]) to keep each frame it carried (kind 5: its length
//! and first [`FRAME_HEAD`] bytes); the balloon keeps the page numbers of each inflate and
//! deflate buffer and its statistics, the console each port's bytes and its control messages
//! ([`DeviceRecorder::record_buffer`], kind 6); the floor's doorbell thread the doorbells its
//! ioeventfd took (kind 7). The devices see this recorder only as `devices/recording.rs`'s
//! [`DeviceRecorder`], where [`install`] puts it too.
//!
//! The file: [`MAGIC`], then per record: kind (0 port out, 1 port in, 2 MMIO write, 3 MMIO
//! read, 4 a request, 5 a frame, 6 a queue's buffer, 7 doorbells; with [`ELIDED`] set, the data is left out and only its length
//! kept), element size (a port's access size; an MMIO access's length), the address as a
//! little-endian u64, the base of the bus range that claimed it (u64), the range's name (a
//! length byte, then the name; empty when unclaimed), the data's length as a little-endian
//! u32, the data (for a port, `count` elements of `size` bytes: `rep ins/outs`; for an in or
//! MMIO read, what the device answered). The range lets the conversion find a device's
//! registers wherever the run placed its BARs.

use super::dispatch::IoExit;
use crate::backends::net::{BackendCounters, FrameMeta, NetBackend, NetBackendError};
use crate::devices::bus::Claim;
use crate::devices::lock;
use crate::devices::recording::{self, DeviceRecorder};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"HHEXITS1";
/// Most records one run keeps.
pub const MAX_RECORDS: usize = 20_000;
/// Most bytes of string data kept for the exits that hit one bus range (or none).
pub const MAX_BYTES_PER_RANGE: usize = 64 * 1024;
/// The kind byte's flag of a record whose data was left out.
pub const ELIDED: u8 = 0x80;
/// Most bytes of a frame a [`ExitKind::Frame`] record keeps (the headers a converted seed
/// needs; the payload is the tests' pattern).
pub const FRAME_HEAD: usize = 64;
/// Most bytes of a queue's buffer a [`ExitKind::Buffer`] record keeps.
pub const BUFFER_HEAD: usize = 128;
/// A record's bytes before its range name.
const HEADER_LEN: usize = 1 + 1 + 8 + 8 + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    PortOut = 0,
    PortIn = 1,
    MmioWrite = 2,
    MmioRead = 3,
    /// A request a device parsed: `addr` its sector, `data` its type (u32) and per data
    /// segment its length (u32) and a byte, 1 when the device writes it.
    Request = 4,
    /// A frame a NIC's backend carried: `range` the NIC model, `addr` 0 from the guest, 1 to
    /// it; `data` the frame's length (u32), then its first [`FRAME_HEAD`] bytes.
    Frame = 5,
    /// Bytes a virtio device took from one of its queues (a balloon's page numbers, a
    /// console port's output): `range` the device, `addr` the queue; `data` the bytes'
    /// length (u32), then the first [`BUFFER_HEAD`] of them.
    Buffer = 6,
    /// Doorbells a device took through an ioeventfd (no exit): `range` the device's bus
    /// range, `addr` the register's offset in it; `data` how many (u64).
    Doorbell = 7,
}

impl ExitKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Self::PortOut,
            1 => Self::PortIn,
            2 => Self::MmioWrite,
            3 => Self::MmioRead,
            4 => Self::Request,
            5 => Self::Frame,
            6 => Self::Buffer,
            7 => Self::Doorbell,
            _ => return None,
        })
    }

    pub fn is_port(self) -> bool {
        matches!(self, Self::PortOut | Self::PortIn)
    }

    pub fn is_write(self) -> bool {
        matches!(self, Self::PortOut | Self::MmioWrite)
    }
}

/// One recorded exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitRecord {
    pub kind: ExitKind,
    pub addr: u64,
    /// A port access's element size, or an MMIO access's length.
    pub size: u8,
    /// The bus range that claimed it ("" for none) and the range's base.
    pub range: String,
    pub base: u64,
    /// The data's length, and the data unless the range's budget was spent (then empty).
    pub len: usize,
    pub data: Vec<u8>,
}

impl ExitRecord {
    /// The number of elements of a port exit (`rep ins/outs` has more than one).
    pub fn count(&self) -> usize {
        self.len / usize::from(self.size.max(1))
    }

    /// Whether the data was left out.
    pub fn elided(&self) -> bool {
        self.data.len() != self.len
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.kind as u8 | if self.elided() { ELIDED } else { 0 });
        out.push(self.size);
        out.extend_from_slice(&self.addr.to_le_bytes());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.push(self.range.len() as u8);
        out.extend_from_slice(self.range.as_bytes());
        out.extend_from_slice(&(self.len as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
    }
}

#[derive(Default)]
struct Recording {
    bytes: Vec<u8>,
    records: usize,
    /// Bytes kept per bus range name ("" for unclaimed accesses).
    per_range: HashMap<String, usize>,
    elided: u64,
    dropped: u64,
}

/// The exits of one run, bounded.
#[derive(Default)]
pub struct ExitRecorder {
    recording: Mutex<Recording>,
}

impl ExitRecorder {
    /// Keep `exit` (after its dispatch, so a read carries the device's answer) unless its range
    /// or the whole recording is full.
    pub fn record(&self, exit: &IoExit<'_>, claim: &Claim) {
        let (kind, addr, size, data): (_, _, _, &[u8]) = match exit {
            IoExit::PortOut { port, size, data } => (ExitKind::PortOut, *port as u64, *size, data),
            IoExit::PortIn { port, size, data } => (ExitKind::PortIn, *port as u64, *size, data),
            IoExit::MmioWrite { addr, data } => {
                (ExitKind::MmioWrite, *addr, data.len() as u8, data)
            }
            IoExit::MmioRead { addr, data } => (ExitKind::MmioRead, *addr, data.len() as u8, data),
        };
        let (range, base) = match claim {
            // Our own names, all short; a longer one would not fit the length byte.
            Claim::Device { name, base } if name.len() <= 255 => (&**name, *base),
            Claim::Device { base, .. } => ("?", *base),
            Claim::Unclaimed => ("", 0),
        };
        let mut r = lock(&self.recording);
        if r.records >= MAX_RECORDS {
            r.dropped += 1;
            return;
        }
        r.records += 1;
        let used = r.per_range.entry(range.to_owned()).or_default();
        let small = data.len() <= 8;
        let keep_data = small || *used + data.len() <= MAX_BYTES_PER_RANGE;
        if !keep_data {
            r.elided += 1;
        } else if !small {
            *used += data.len();
        }
        let record = ExitRecord {
            kind,
            addr,
            size,
            range: range.to_owned(),
            base,
            len: data.len(),
            data: if keep_data { data.to_vec() } else { Vec::new() },
        };
        record.encode_into(&mut r.bytes);
    }

    /// Keep the length and first [`FRAME_HEAD`] bytes of a frame the NIC model `device` sent
    /// (`to_guest` false) or received.
    pub fn record_frame(&self, device: &str, to_guest: bool, frame: &[u8]) {
        let mut data = (frame.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&frame[..frame.len().min(FRAME_HEAD)]);
        self.record_snapshot(ExitKind::Frame, device, u64::from(to_guest), data);
    }

    /// Keep a device's snapshot of guest-memory contents (a request, a frame) as a record.
    fn record_snapshot(&self, kind: ExitKind, device: &str, addr: u64, data: Vec<u8>) {
        let mut r = lock(&self.recording);
        if r.records >= MAX_RECORDS || device.len() > 255 {
            r.dropped += 1;
            return;
        }
        r.records += 1;
        let record = ExitRecord {
            kind,
            addr,
            size: 0,
            range: device.to_owned(),
            base: 0,
            len: data.len(),
            data,
        };
        record.encode_into(&mut r.bytes);
    }

    /// The file's contents: [`MAGIC`] and the records kept.
    pub fn contents(&self) -> Vec<u8> {
        let r = lock(&self.recording);
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&r.bytes);
        out
    }

    /// (records kept, records kept without their data, exits dropped).
    pub fn counts(&self) -> (usize, u64, u64) {
        let r = lock(&self.recording);
        (r.records, r.elided, r.dropped)
    }
}

/// The devices' snapshots, as records of the same recording.
impl DeviceRecorder for ExitRecorder {
    /// Keep a snapshot of a request `device` parsed: its type, sector and data segments
    /// (length, device-writable), the first 16 of them.
    fn record_request(
        &self,
        device: &str,
        ty: u32,
        sector: u64,
        segments: &mut dyn Iterator<Item = (u32, bool)>,
    ) {
        let mut data = ty.to_le_bytes().to_vec();
        for (len, writable) in segments.take(16) {
            data.extend_from_slice(&len.to_le_bytes());
            data.push(u8::from(writable));
        }
        self.record_snapshot(ExitKind::Request, device, sector, data);
    }

    /// Keep the length and first [`BUFFER_HEAD`] bytes of what the virtio device `device` took
    /// from its queue `queue`.
    fn record_buffer(&self, device: &str, queue: usize, bytes: &[u8]) {
        let mut data = (bytes.len() as u32).to_le_bytes().to_vec();
        data.extend_from_slice(&bytes[..bytes.len().min(BUFFER_HEAD)]);
        self.record_snapshot(ExitKind::Buffer, device, queue as u64, data);
    }

    /// Keep `count` doorbells the device of bus range `range` took at `offset` through its
    /// ioeventfd: writes KVM never turned into exits.
    fn record_doorbells(&self, range: &str, offset: u64, count: u64) {
        let data = count.to_le_bytes().to_vec();
        self.record_snapshot(ExitKind::Doorbell, range, offset, data);
    }
}

static RECORDER: OnceLock<ExitRecorder> = OnceLock::new();

/// Start recording for this process (`--record-exits`), the devices' snapshots included; the
/// recorder lives until it exits.
pub fn install() -> &'static ExitRecorder {
    let recorder = RECORDER.get_or_init(ExitRecorder::default);
    // Only `run` installs, once per process; a second call finds this very recorder there.
    let _ = recording::install(recorder);
    recorder
}

/// The recorder, when `--record-exits` installed one.
#[inline]
pub fn active() -> Option<&'static ExitRecorder> {
    RECORDER.get()
}

/// `backend` as the NIC model `device` will see it: unchanged when not recording, else each
/// frame it carries also kept as an [`ExitKind::Frame`] record.
pub fn wrap_net(backend: Box<dyn NetBackend>, device: &str) -> Box<dyn NetBackend> {
    match active() {
        Some(recorder) => Box::new(RecordingNet {
            inner: backend,
            device: device.to_owned(),
            recorder,
        }),
        None => backend,
    }
}

/// A NIC's backend that keeps a snapshot of every frame through it.
struct RecordingNet {
    inner: Box<dyn NetBackend>,
    device: String,
    recorder: &'static ExitRecorder,
}

impl NetBackend for RecordingNet {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn accepts_partial_checksum(&self) -> bool {
        self.inner.accepts_partial_checksum()
    }
    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        self.recorder.record_frame(&self.device, false, frame);
        self.inner.transmit(meta, frame)
    }
    fn flush(&mut self) -> Result<(), NetBackendError> {
        self.inner.flush()
    }
    fn tx_ready(&mut self) -> bool {
        self.inner.tx_ready()
    }
    fn tx_wait_fd(&self) -> Option<RawFd> {
        self.inner.tx_wait_fd()
    }
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        let got = self.inner.receive(buf)?;
        if let Some((len, _)) = &got {
            let frame = buf.get(..*len).unwrap_or(buf);
            self.recorder.record_frame(&self.device, true, frame);
        }
        Ok(got)
    }
    fn rx_ready_fd(&self) -> RawFd {
        self.inner.rx_ready_fd()
    }
    fn poll(&mut self) -> Option<Duration> {
        self.inner.poll()
    }
    fn counters(&self) -> BackendCounters {
        self.inner.counters()
    }
}

/// The records of a file [`ExitRecorder::contents`] wrote. A truncated or foreign file is an
/// error, never a panic.
pub fn parse(file: &[u8]) -> Result<Vec<ExitRecord>, String> {
    let mut rest = file
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not an exit recording (no HHEXITS1 header)")?;
    let mut records = Vec::new();
    while !rest.is_empty() {
        let at = file.len() - rest.len();
        let Some((header, tail)) = rest.split_at_checked(HEADER_LEN) else {
            return Err(format!("record at byte {at}: truncated header"));
        };
        let kind = ExitKind::from_byte(header[0] & !ELIDED)
            .ok_or_else(|| format!("record at byte {at}: kind {}", header[0]))?;
        let elided = header[0] & ELIDED != 0;
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&header[2..10]);
        let mut base = [0u8; 8];
        base.copy_from_slice(&header[10..18]);
        let Some((name, tail)) = tail.split_at_checked(usize::from(header[18])) else {
            return Err(format!("record at byte {at}: truncated range name"));
        };
        let range = std::str::from_utf8(name)
            .map_err(|_| format!("record at byte {at}: range name not UTF-8"))?;
        let Some((len, tail)) = tail.split_first_chunk::<4>() else {
            return Err(format!("record at byte {at}: truncated length"));
        };
        let len = u32::from_le_bytes(*len) as usize;
        let Some((data, tail)) = tail.split_at_checked(if elided { 0 } else { len }) else {
            return Err(format!("record at byte {at}: truncated data"));
        };
        records.push(ExitRecord {
            kind,
            addr: u64::from_le_bytes(addr),
            size: header[1],
            range: range.to_owned(),
            base: u64::from_le_bytes(base),
            len,
            data: data.to_vec(),
        });
        rest = tail;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn device(name: &str) -> Claim {
        let base = match name {
            "com1" => 0x3f8,
            "pci-config" => 0xcf8,
            _ => 0xf4,
        };
        Claim::Device {
            name: Arc::from(name),
            base,
        }
    }

    #[test]
    fn a_sequence_of_exits_round_trips() {
        let rec = ExitRecorder::default();
        let com1 = device("com1");
        rec.record(
            &IoExit::PortOut {
                port: 0x3f8,
                size: 1,
                data: b"hello\n",
            },
            &com1,
        );
        rec.record(
            &IoExit::PortIn {
                port: 0x3fd,
                size: 1,
                data: &mut [0x60],
            },
            &com1,
        );
        rec.record(
            &IoExit::PortOut {
                port: 0xcf8,
                size: 4,
                data: &0x8000_0800u32.to_le_bytes(),
            },
            &device("pci-config"),
        );
        rec.record(
            &IoExit::MmioWrite {
                addr: 0xc000_1000,
                data: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
            &Claim::Unclaimed,
        );
        rec.record(
            &IoExit::MmioRead {
                addr: 0xfebf_f000,
                data: &mut [0xff, 0xff],
            },
            &Claim::Unclaimed,
        );
        let got = parse(&rec.contents()).unwrap();
        let want = [
            (
                ExitKind::PortOut,
                0x3f8,
                1,
                "com1",
                0x3f8,
                b"hello\n".to_vec(),
            ),
            (ExitKind::PortIn, 0x3fd, 1, "com1", 0x3f8, vec![0x60]),
            (
                ExitKind::PortOut,
                0xcf8,
                4,
                "pci-config",
                0xcf8,
                vec![0, 8, 0, 0x80],
            ),
            (
                ExitKind::MmioWrite,
                0xc000_1000,
                8,
                "",
                0,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ),
            (ExitKind::MmioRead, 0xfebf_f000, 2, "", 0, vec![0xff, 0xff]),
        ];
        assert_eq!(got.len(), want.len());
        for (g, (kind, addr, size, range, base, data)) in got.iter().zip(want) {
            let g = (g.kind, g.addr, g.size, g.range.as_str(), g.base, &g.data);
            assert_eq!(g, (kind, addr, size, range, base, &data));
        }
        assert_eq!(got[0].count(), 6);
        rec.record_request(
            "virtio-blk",
            1,
            7,
            &mut [(512, false), (1024, false)].into_iter(),
        );
        let got = parse(&rec.contents()).unwrap();
        let request = &got[5];
        assert_eq!((request.kind, request.addr), (ExitKind::Request, 7));
        assert_eq!(request.range, "virtio-blk");
        assert_eq!(request.data, [1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(rec.counts(), (6, 0, 0));
        rec.record_frame("e1000", true, &[0xab; 100]);
        let got = parse(&rec.contents()).unwrap();
        let frame = &got[6];
        assert_eq!((frame.kind, frame.addr), (ExitKind::Frame, 1));
        assert_eq!(frame.range, "e1000");
        assert_eq!(frame.data[..4], 100u32.to_le_bytes());
        assert_eq!(frame.data[4..], [0xab; FRAME_HEAD]);
        rec.record_buffer("virtio-balloon", 1, &[7; 200]);
        let got = parse(&rec.contents()).unwrap();
        let buffer = &got[7];
        assert_eq!((buffer.kind, buffer.addr), (ExitKind::Buffer, 1));
        assert_eq!(buffer.data[..4], 200u32.to_le_bytes());
        assert_eq!(buffer.data[4..], [7; BUFFER_HEAD]);
    }

    #[test]
    fn a_range_past_its_budget_keeps_records_without_data_and_the_others_go_on() {
        let rec = ExitRecorder::default();
        let data = [7u8; 1000];
        let n = MAX_BYTES_PER_RANGE / data.len();
        for _ in 0..n + 10 {
            let exit = IoExit::PortOut {
                port: 0x3f8,
                size: 2,
                data: &data,
            };
            rec.record(&exit, &device("com1"));
        }
        let exit = IoExit::PortOut {
            port: 0xf4,
            size: 4,
            data: &[0x10, 0, 0, 0],
        };
        rec.record(&exit, &device("debug-exit"));
        assert_eq!(rec.counts(), (n + 11, 10, 0));
        let got = parse(&rec.contents()).unwrap();
        assert_eq!(got.len(), n + 11);
        assert!(got[..n].iter().all(|r| r.data == data && !r.elided()));
        let past = &got[n];
        assert!(past.elided() && past.data.is_empty());
        assert_eq!((past.len, past.count()), (1000, 500));
        assert_eq!(got[n + 10].data, [0x10, 0, 0, 0]);
        // A small access past the budget keeps its data.
        let exit = IoExit::PortOut {
            port: 0x3f8,
            size: 1,
            data: b"x",
        };
        rec.record(&exit, &device("com1"));
        let got = parse(&rec.contents()).unwrap();
        assert_eq!(got.last().map(|r| &r.data[..]), Some(&b"x"[..]));
        // And the whole recording stops at MAX_RECORDS.
        for _ in got.len()..MAX_RECORDS + 5 {
            rec.record(&exit, &device("debug-exit"));
        }
        assert_eq!(rec.counts(), (MAX_RECORDS, 10, 5));
        assert_eq!(parse(&rec.contents()).unwrap().len(), MAX_RECORDS);
    }

    #[test]
    fn a_truncated_or_foreign_file_is_an_error() {
        let rec = ExitRecorder::default();
        let exit = IoExit::PortOut {
            port: 0x3f8,
            size: 1,
            data: b"abc",
        };
        rec.record(&exit, &device("com1"));
        let file = rec.contents();
        // Every cut but the one after the header (an empty recording) is an error.
        for cut in (0..file.len()).filter(|&c| c != MAGIC.len()) {
            assert!(parse(&file[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = file.clone();
        bad[MAGIC.len()] = 9;
        assert!(parse(&bad).is_err());
        assert_eq!(parse(MAGIC).unwrap(), vec![]);
    }
}
