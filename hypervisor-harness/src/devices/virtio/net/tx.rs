//! Transmit: one descriptor chain is one frame, the header then the data, split over the
//! chain's descriptors in any way. The chain is gathered into the device's frame buffer
//! (bounded: header plus [`MAX_FRAME`]; nothing is allocated per frame) and checked before the
//! backend sees it.

use super::checksum;
use super::header::{NetHeader, HEADER_LEN};
use super::DropReason;
use crate::backends::net::{FrameMeta, MAX_FRAME};
use crate::devices::virtio::Memory;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes};

/// What the frame buffer holds: the header and the largest frame.
pub const TX_BUFFER_LEN: usize = HEADER_LEN + MAX_FRAME;
/// An Ethernet header: anything shorter is not a frame.
pub const ETH_HEADER_LEN: usize = 14;

/// Copy the chain's bytes into `buf`; returns how many. Every descriptor must be
/// device-readable and inside guest memory, the chain must end, and it must fit `buf`.
pub fn gather<M>(
    mem: &Memory,
    chain: DescriptorChain<M>,
    buf: &mut [u8],
) -> Result<usize, DropReason>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut n = 0usize;
    let mut any = false;
    let mut ends = true;
    // virtio-queue's iterator stops (without an error) on a loop, a next index outside the
    // table, an unreadable descriptor or over 4 GiB; the last descriptor then has NEXT set.
    for d in chain {
        any = true;
        ends = !d.has_next();
        if d.is_write_only() {
            return Err(DropReason::TxWrongDirection);
        }
        let len = d.len() as usize;
        let Some(dst) = n.checked_add(len).and_then(|end| buf.get_mut(n..end)) else {
            return Err(DropReason::TxTooLong);
        };
        mem.read_slice(dst, d.addr())
            .map_err(|_| DropReason::TxOutsideMemory)?;
        n += len;
    }
    if !any || !ends {
        return Err(DropReason::TxBadChain);
    }
    Ok(n)
}

/// Check the gathered header and frame (`buf[..len]`) and make it what the backend takes:
/// the frame's range in `buf` and its metadata. A partial checksum is completed in place
/// unless `partial_ok` (the backend finishes it).
pub fn prepare(
    buf: &mut [u8],
    len: usize,
    partial_ok: bool,
) -> Result<(std::ops::Range<usize>, FrameMeta), DropReason> {
    if len < HEADER_LEN {
        return Err(DropReason::TxShortHeader);
    }
    if len == HEADER_LEN {
        return Err(DropReason::TxNoData);
    }
    if len - HEADER_LEN < ETH_HEADER_LEN {
        return Err(DropReason::TxRunt);
    }
    let mut header = NetHeader::default();
    header.as_mut_slice().copy_from_slice(&buf[..HEADER_LEN]);
    let mut meta = header.tx_meta().map_err(|_| DropReason::TxBadHeader)?;
    let frame = &mut buf[HEADER_LEN..len];
    if let Some(req) = meta.needs_csum {
        if partial_ok {
            checksum::check_range(frame.len(), req.start, req.offset)
                .map_err(|_| DropReason::TxBadChecksum)?;
        } else {
            checksum::complete(frame, req.start, req.offset)
                .map_err(|_| DropReason::TxBadChecksum)?;
            meta = FrameMeta::default();
        }
    }
    Ok((HEADER_LEN..len, meta))
}
