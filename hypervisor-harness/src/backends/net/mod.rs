//! Network backends: where a NIC model's frames go and come from. Every NIC model (virtio-net,
//! later RTL8139 and e1000) takes a `Box<dyn NetBackend>` and nothing else of the network.
//!
//! A frame is Ethernet II without FCS. It travels with a [`FrameMeta`], the parts of the
//! virtio-net header (virtio 1.x §5.1.6) a backend may act on. A backend that does not take
//! partial checksums ([`NetBackend::accepts_partial_checksum`] false: everything but TAP with
//! `vnet_hdr=on`) only ever sees complete frames: the NIC model finishes the checksum first.
//!
//! Backends never block the device: `transmit` drops (and counts) when the far side is full,
//! and `receive` returns `Ok(None)` when nothing is waiting. A device thread that wants to sleep
//! until a frame arrives waits on [`NetBackend::rx_ready_fd`]. A NIC model that can hold
//! frames in its guest's ring asks [`NetBackend::tx_ready`] first and, while it is false,
//! waits for [`NetBackend::tx_wait_fd`] to be writable instead of transmitting (TX
//! backpressure, as QEMU stops a TX queue on a full socket).

pub mod faulty;
pub mod peer;
pub mod spec;
pub mod stream;
pub mod tap;
pub mod user;
pub mod watch;

use crate::error::HarnessError;
use spec::BackendSpec;
use std::fmt;
use std::os::fd::RawFd;
use std::time::Duration;

/// Largest frame a backend carries: 1514 bytes of Ethernet plus room for a VLAN tag.
pub const MAX_FRAME: usize = 1518;

/// The offload state of one frame, as in `virtio_net_hdr_v1` (no GSO: no model offers it yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameMeta {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial; sum from `csum_start` to the
    /// end and store it at `csum_start + csum_offset`.
    pub needs_csum: Option<ChecksumRequest>,
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum is known good (RX direction).
    pub data_valid: bool,
}

/// Where a partial checksum starts and where its result goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksumRequest {
    pub start: u16,
    pub offset: u16,
}

/// Counters a backend keeps, for the device's report and `bench net`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackendCounters {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames the far side could not take (full socket, peer backlog) or refused.
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames that arrived and were thrown away (too large for the buffer, bad framing).
    pub rx_dropped: u64,
}

#[derive(Debug)]
pub enum NetBackendError {
    /// The far side went away (stream closed, TAP gone); the backend carries nothing more.
    Disconnected(String),
    /// A host system call failed.
    Io(std::io::Error),
}

impl fmt::Display for NetBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disconnected(what) => write!(f, "network backend disconnected: {what}"),
            Self::Io(e) => write!(f, "network backend: {e}"),
        }
    }
}

impl std::error::Error for NetBackendError {}

impl From<std::io::Error> for NetBackendError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// One network attachment of one NIC.
pub trait NetBackend: Send {
    /// What it is, for logs: `peer`, `stream:/path`, `tap:name`.
    fn describe(&self) -> String;

    /// Takes frames whose checksum is still partial (TAP with `vnet_hdr=on` hands them to the
    /// host kernel, which finishes them). When false the model completes checksums first and
    /// passes `FrameMeta::default()`.
    fn accepts_partial_checksum(&self) -> bool {
        false
    }

    /// Send one frame from the guest to the network. Never blocks; a frame the far side cannot
    /// take now is dropped and counted (`Ok`), as a wire would. A backend may hold the frame
    /// back until [`NetBackend::flush`].
    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError>;

    /// The end of a TX batch (the NIC model calls it after the frames of one pass over its
    /// ring): a backend that gathers frames (one system call for many) sends them now. The
    /// same rules as `transmit`: never blocks, drops and counts what cannot go.
    fn flush(&mut self) -> Result<(), NetBackendError> {
        Ok(())
    }

    /// Whether a frame of up to [`MAX_FRAME`] bytes would be taken now without a drop. May
    /// try a write of what it holds to make room; never blocks.
    fn tx_ready(&mut self) -> bool {
        true
    }

    /// A file descriptor to poll for writability (`POLLOUT`) while `tx_ready` is false; `None`
    /// for a backend that is always ready.
    fn tx_wait_fd(&self) -> Option<RawFd> {
        None
    }

    /// The next frame for the guest, copied into `buf` (at least [`MAX_FRAME`] bytes): its
    /// length and metadata, or `Ok(None)` when nothing is waiting. A frame longer than `buf` is
    /// dropped and counted, never truncated.
    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError>;

    /// A file descriptor that is readable (level-triggered) while `receive` may have a frame.
    fn rx_ready_fd(&self) -> RawFd;

    /// Give the backend time for its own work (a peer's TCP timers); returns how long the
    /// caller may wait before calling again, `None` for "until a frame moves".
    fn poll(&mut self) -> Option<Duration> {
        None
    }

    fn counters(&self) -> BackendCounters;
}

/// Open the backend `spec` names, for one NIC. Errors say what is missing: exit code 69
/// (`Unavailable`) for a socket or TAP device the host does not give us, 64 (`Usage`) for a
/// backend this harness does not have yet.
pub fn open(spec: &BackendSpec) -> Result<Box<dyn NetBackend>, HarnessError> {
    match spec {
        BackendSpec::Peer => peer::PeerBackend::new()
            .map(|p| Box::new(p) as Box<dyn NetBackend>)
            .map_err(|e| HarnessError::Other(format!("--net peer: eventfd: {e}"))),
        BackendSpec::Stream(path) => match stream::StreamBackend::connect(path) {
            Ok(s) => Ok(Box::new(s)),
            Err(e) => Err(HarnessError::Unavailable(format!(
                "--net stream:{}: cannot connect: {e}{}",
                path.display(),
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) {
                    " (start `hypervisor-harness peer --listen PATH` or a QEMU with \
                     -netdev stream,server=on there first)"
                } else {
                    ""
                }
            ))),
        },
        BackendSpec::Tap { name, vnet_hdr } => match tap::TapBackend::open(name, *vnet_hdr) {
            Ok(t) => Ok(Box::new(t)),
            Err(e @ (tap::TapError::NoTunDevice(_) | tap::TapError::Permission(_))) => {
                Err(HarnessError::Unavailable(format!("--net tap:{name}: {e}")))
            }
            Err(e) => Err(HarnessError::Other(format!("--net tap:{name}: {e}"))),
        },
        BackendSpec::User(opts) => user::UserBackend::new(opts.clone())
            .map(|u| Box::new(u) as Box<dyn NetBackend>)
            .map_err(|e| HarnessError::Other(format!("--net user: {e}"))),
    }
}
