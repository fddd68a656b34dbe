//! The virtio-net header (virtio 1.x §5.1.6): 12 bytes in front of every frame, both ways.
//!
//! With VERSION_1 the header is always `virtio_net_hdr_v1` (num_buffers included, whether or
//! not MRG_RXBUF is negotiated). virtio-bindings declares csum_start/csum_offset of that struct
//! inside a union (reading it would need `unsafe`); `virtio_net_hdr_mrg_rxbuf` has the same 12
//! bytes as plain fields, so that is the struct this device reads and writes (sizes asserted).

use crate::backends::net::{ChecksumRequest, FrameMeta};
use std::mem::size_of;
use virtio_bindings::virtio_net::{
    virtio_net_hdr_mrg_rxbuf, virtio_net_hdr_v1, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
};
use vm_memory::ByteValued;

/// Bytes of header in front of each frame.
pub const HEADER_LEN: usize = size_of::<virtio_net_hdr_v1>();

const _: () = assert!(HEADER_LEN == 12 && size_of::<virtio_net_hdr_mrg_rxbuf>() == HEADER_LEN);

const NEEDS_CSUM: u8 = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
const DATA_VALID: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;

/// The header as it sits in guest memory (little-endian fields).
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct NetHeader(pub virtio_net_hdr_mrg_rxbuf);

// SAFETY: `virtio_net_hdr_mrg_rxbuf` is `#[repr(C)]` of two u8 and five u16 fields with no
// padding (12 bytes, asserted above), so every byte pattern is a valid value.
unsafe impl ByteValued for NetHeader {}

/// Why a TX header is refused (the frame is dropped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A GSO type: this device offers no segmentation offload.
    Gso,
    /// Flag bits a driver may not set on transmit.
    Flags,
}

impl NetHeader {
    pub fn flags(&self) -> u8 {
        self.0.hdr.flags
    }
    pub fn gso_type(&self) -> u8 {
        self.0.hdr.gso_type
    }
    pub fn csum_start(&self) -> u16 {
        u16::from_le(self.0.hdr.csum_start)
    }
    pub fn csum_offset(&self) -> u16 {
        u16::from_le(self.0.hdr.csum_offset)
    }
    pub fn num_buffers(&self) -> u16 {
        u16::from_le(self.0.num_buffers)
    }

    /// What a transmitted frame's header asks of the device. The checksum range is checked
    /// against the frame later, by whoever completes or passes on the checksum.
    pub fn tx_meta(&self) -> Result<FrameMeta, HeaderError> {
        if self.gso_type() != VIRTIO_NET_HDR_GSO_NONE as u8 {
            return Err(HeaderError::Gso);
        }
        // DATA_VALID means nothing on transmit; tolerated as Linux and QEMU do.
        if self.flags() & !(NEEDS_CSUM | DATA_VALID) != 0 {
            return Err(HeaderError::Flags);
        }
        let needs_csum = (self.flags() & NEEDS_CSUM != 0).then(|| ChecksumRequest {
            start: self.csum_start(),
            offset: self.csum_offset(),
        });
        Ok(FrameMeta {
            needs_csum,
            data_valid: false,
        })
    }

    /// The header of a received frame: its checksum state as the guest may be told it
    /// (`guest_csum`: GUEST_CSUM negotiated), and how many buffers the frame took.
    pub fn rx(meta: &FrameMeta, guest_csum: bool, num_buffers: u16) -> Self {
        let mut h = virtio_net_hdr_mrg_rxbuf::default();
        h.hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE as u8;
        if guest_csum {
            if let Some(c) = meta.needs_csum {
                h.hdr.flags = NEEDS_CSUM;
                h.hdr.csum_start = c.start.to_le();
                h.hdr.csum_offset = c.offset.to_le();
            } else if meta.data_valid {
                h.hdr.flags = DATA_VALID;
            }
        }
        h.num_buffers = num_buffers.to_le();
        Self(h)
    }

    /// A transmit header (for tests and the fuzz target).
    pub fn tx(needs_csum: Option<ChecksumRequest>) -> Self {
        let mut h = virtio_net_hdr_mrg_rxbuf::default();
        if let Some(c) = needs_csum {
            h.hdr.flags = NEEDS_CSUM;
            h.hdr.csum_start = c.start.to_le();
            h.hdr.csum_offset = c.offset.to_le();
        }
        Self(h)
    }
}

/// Byte offset of `num_buffers` in the header (the last field, rewritten once the device
/// knows how many buffers a merged frame took).
pub const NUM_BUFFERS_OFFSET: usize = std::mem::offset_of!(virtio_net_hdr_mrg_rxbuf, num_buffers);

const _: () = assert!(NUM_BUFFERS_OFFSET == 10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_fields_round_trip() {
        let req = ChecksumRequest {
            start: 34,
            offset: 16,
        };
        let h = NetHeader::tx(Some(req));
        let b = h.as_slice();
        assert_eq!(b.len(), 12);
        assert_eq!(b[0], NEEDS_CSUM);
        assert_eq!(&b[6..10], &[34, 0, 16, 0]);
        assert_eq!(h.tx_meta().unwrap().needs_csum, Some(req));
        let rx = NetHeader::rx(&FrameMeta::default(), true, 3);
        assert_eq!(rx.num_buffers(), 3);
        assert_eq!(rx.as_slice()[NUM_BUFFERS_OFFSET], 3);
    }

    #[test]
    fn garbage_headers_are_refused() {
        let mut h = NetHeader::tx(None);
        h.0.hdr.gso_type = 1;
        assert_eq!(h.tx_meta(), Err(HeaderError::Gso));
        let mut h = NetHeader::tx(None);
        h.0.hdr.flags = 0x80;
        assert_eq!(h.tx_meta(), Err(HeaderError::Flags));
    }

    #[test]
    fn data_valid_only_with_guest_csum() {
        let meta = FrameMeta {
            needs_csum: None,
            data_valid: true,
        };
        assert_eq!(NetHeader::rx(&meta, true, 1).flags(), DATA_VALID);
        assert_eq!(NetHeader::rx(&meta, false, 1).flags(), 0);
    }
}
