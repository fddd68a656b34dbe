//! `tap:NAME[,vnet_hdr=on|off]`: a TAP device (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI`), created
//! if absent in the caller's network namespace, non-blocking.
//!
//! With `vnet_hdr=on` (the default), `IFF_VNET_HDR` puts a `virtio_net_hdr_v1` (12 bytes, with
//! `num_buffers`; `TUNSETVNETHDRSZ`) before every frame and `TUNSETOFFLOAD(TUN_F_CSUM)` lets
//! partial checksums through both ways: the guest's `NEEDS_CSUM` frames reach the host kernel
//! unfinished ([`NetBackend::accepts_partial_checksum`] is true), and the kernel's frames may
//! arrive with `NEEDS_CSUM` (a device whose guest did not negotiate `GUEST_CSUM` completes
//! them) or `DATA_VALID`. No GSO is offered, so no frame is larger than the MTU; one that
//! claims GSO anyway is dropped and counted. The header is little-endian, the host's (x86)
//! order, as virtio 1.x has it. With `vnet_hdr=off` the offloads are cleared
//! (`TUNSETOFFLOAD(0)`), so every frame arrives with its checksum whole.

use super::{BackendCounters, ChecksumRequest, FrameMeta, NetBackend, NetBackendError};
use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use virtio_bindings::virtio_net::{
    virtio_net_hdr_v1, virtio_net_hdr_v1__bindgen_ty_1__bindgen_ty_1 as CsumFields,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};

/// The header with `IFF_VNET_HDR`: virtio_net_hdr_v1, `num_buffers` included.
pub const VNET_HDR_LEN: usize = size_of::<virtio_net_hdr_v1>();
const _: () = assert!(VNET_HDR_LEN == 12);
const FLAGS: usize = offset_of!(virtio_net_hdr_v1, flags);
const GSO_TYPE: usize = offset_of!(virtio_net_hdr_v1, gso_type);
const CSUM_START: usize =
    offset_of!(virtio_net_hdr_v1, __bindgen_anon_1) + offset_of!(CsumFields, csum_start);
const CSUM_OFFSET: usize =
    offset_of!(virtio_net_hdr_v1, __bindgen_anon_1) + offset_of!(CsumFields, csum_offset);

/// Largest frame read from the TAP (its MTU may be raised past 1500): longer ones for a
/// caller's buffer are dropped and counted.
const READ_BUFFER: usize = VNET_HDR_LEN + 65536;

/// The header for a frame the guest sent.
pub fn encode_header(meta: &FrameMeta) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    h[GSO_TYPE] = VIRTIO_NET_HDR_GSO_NONE as u8;
    if let Some(req) = meta.needs_csum {
        h[FLAGS] |= VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
        h[CSUM_START..CSUM_START + 2].copy_from_slice(&req.start.to_le_bytes());
        h[CSUM_OFFSET..CSUM_OFFSET + 2].copy_from_slice(&req.offset.to_le_bytes());
    }
    if meta.data_valid {
        h[FLAGS] |= VIRTIO_NET_HDR_F_DATA_VALID as u8;
    }
    h
}

/// The metadata of a frame from the host kernel; `None` for one that claims GSO.
pub fn decode_header(h: &[u8; VNET_HDR_LEN]) -> Option<FrameMeta> {
    if u32::from(h[GSO_TYPE]) != VIRTIO_NET_HDR_GSO_NONE {
        return None;
    }
    let word = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
    let flags = u32::from(h[FLAGS]);
    Some(FrameMeta {
        needs_csum: (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0).then(|| ChecksumRequest {
            start: word(CSUM_START),
            offset: word(CSUM_OFFSET),
        }),
        data_valid: flags & VIRTIO_NET_HDR_F_DATA_VALID != 0,
    })
}

/// Why a TAP could not be opened.
#[derive(Debug)]
pub enum TapError {
    /// `/dev/net/tun` is not there (no tun module, or a container without the device).
    NoTunDevice(io::Error),
    /// Not allowed: TUNSETIFF needs CAP_NET_ADMIN (or a persistent TAP owned by us).
    Permission(io::Error),
    /// Anything else, with the step that failed.
    Other(&'static str, io::Error),
}

impl std::fmt::Display for TapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoTunDevice(e) => write!(f, "/dev/net/tun: {e}"),
            Self::Permission(e) => write!(
                f,
                "{e}: creating or attaching a TAP needs CAP_NET_ADMIN (root), or a persistent TAP \
                 owned by this user"
            ),
            Self::Other(step, e) => write!(f, "{step}: {e}"),
        }
    }
}

/// The `tap:NAME` backend.
pub struct TapBackend {
    name: String,
    file: File,
    vnet_hdr: bool,
    buf: Vec<u8>,
    counters: BackendCounters,
}

/// ioctl with a pointer argument.
fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    // SAFETY: `req` is one of the tun ioctls, each of which reads or writes exactly a `T`
    // (the caller pairs them), and `arg` is valid for the call.
    if unsafe { libc::ioctl(fd, req, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl TapBackend {
    pub fn open(name: &str, vnet_hdr: bool) -> Result<Self, TapError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => TapError::NoTunDevice(e),
                io::ErrorKind::PermissionDenied => TapError::Permission(e),
                _ => TapError::Other("open /dev/net/tun", e),
            })?;
        let fd = file.as_raw_fd();
        // SAFETY: ifreq is plain data; all-zero is a valid (empty) request.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        if name.len() >= libc::IFNAMSIZ {
            return Err(TapError::Other(
                "TAP name",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
        ioctl_ptr(fd, libc::TUNSETIFF, &mut ifr).map_err(|e| match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => TapError::Permission(e),
            _ => TapError::Other("TUNSETIFF", e),
        })?;
        if vnet_hdr {
            let mut len = VNET_HDR_LEN as libc::c_int;
            ioctl_ptr(fd, libc::TUNSETVNETHDRSZ, &mut len)
                .map_err(|e| TapError::Other("TUNSETVNETHDRSZ", e))?;
        }
        // Set with vnet_hdr, cleared without: a persistent TAP keeps the offloads its last
        // user set, and with TUN_F_CSUM left on the kernel would hand us partial checksums
        // that, without a header, nothing announces.
        let offloads = if vnet_hdr { libc::TUN_F_CSUM } else { 0 };
        // SAFETY: TUNSETOFFLOAD takes its flags by value, not through a pointer.
        if unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(TapError::Other("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        Ok(Self {
            name: name.to_owned(),
            file,
            vnet_hdr,
            buf: vec![0; READ_BUFFER],
            counters: BackendCounters::default(),
        })
    }

    fn gone(&self, e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EBADFD) | Some(libc::ENODEV) | Some(libc::ENXIO)
        )
    }
}

impl NetBackend for TapBackend {
    fn describe(&self) -> String {
        format!(
            "tap:{}{}",
            self.name,
            if self.vnet_hdr { "" } else { ",vnet_hdr=off" }
        )
    }

    fn accepts_partial_checksum(&self) -> bool {
        self.vnet_hdr
    }

    fn transmit(&mut self, meta: &FrameMeta, frame: &[u8]) -> Result<(), NetBackendError> {
        let hdr = encode_header(meta);
        let header: &[u8] = if self.vnet_hdr { &hdr } else { &[] };
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut libc::c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: frame.as_ptr() as *mut libc::c_void,
                iov_len: frame.len(),
            },
        ];
        // SAFETY: both iovecs point at live buffers of their lengths, only read by writev.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iov.as_ptr(), 2) };
        if n < 0 {
            let e = io::Error::last_os_error();
            self.counters.tx_dropped += 1;
            if self.gone(&e) {
                return Err(NetBackendError::Disconnected(format!(
                    "{}: {e}",
                    self.describe()
                )));
            }
            // EAGAIN (the TAP's queue is full), EIO (the interface is down), EINVAL (a
            // frame the kernel refuses): dropped, as on a wire.
            return Ok(());
        }
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += frame.len() as u64;
        Ok(())
    }

    fn receive(&mut self, buf: &mut [u8]) -> Result<Option<(usize, FrameMeta)>, NetBackendError> {
        use std::io::Read;
        let hdr_len = if self.vnet_hdr { VNET_HDR_LEN } else { 0 };
        loop {
            let n = match (&self.file).read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.gone(&e) => {
                    return Err(NetBackendError::Disconnected(format!(
                        "{}: {e}",
                        self.describe()
                    )))
                }
                Err(e) => return Err(NetBackendError::Io(e)),
            };
            let meta = if self.vnet_hdr {
                match self
                    .buf
                    .first_chunk::<VNET_HDR_LEN>()
                    .and_then(decode_header)
                {
                    Some(m) if n >= hdr_len => m,
                    _ => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                }
            } else {
                FrameMeta::default()
            };
            let frame = &self.buf[hdr_len..n];
            if frame.len() > buf.len() {
                self.counters.rx_dropped += 1;
                continue;
            }
            buf[..frame.len()].copy_from_slice(frame);
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += frame.len() as u64;
            return Ok(Some((frame.len(), meta)));
        }
    }

    fn rx_ready_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn counters(&self) -> BackendCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_at_the_spec_offsets() {
        let meta = FrameMeta {
            needs_csum: Some(ChecksumRequest {
                start: 34,
                offset: 6,
            }),
            data_valid: false,
        };
        let h = encode_header(&meta);
        // flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers (§5.1.6).
        assert_eq!(h, [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0]);
        assert_eq!(decode_header(&h), Some(meta));
        let valid = FrameMeta {
            needs_csum: None,
            data_valid: true,
        };
        assert_eq!(encode_header(&valid)[0], 2);
        assert_eq!(decode_header(&encode_header(&valid)), Some(valid));
        assert_eq!(
            decode_header(&[0; 12]),
            Some(FrameMeta::default()),
            "a plain frame"
        );
        // GSO (TCPv4 = 1) is never offered: such a frame is refused.
        assert_eq!(decode_header(&[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), None);
    }
}
