//! Descriptor chain to [`Request`]: the header read, the data segments sorted by direction,
//! the status byte found, every buffer checked against guest memory.

use super::config::HEADER_LEN;
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_blk::{
    virtio_blk_outhdr, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// `virtio_blk_outhdr` as vm-memory reads it (the orphan rule wants a local type).
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct BlkHeader(pub virtio_blk_outhdr);

// SAFETY: `virtio_blk_outhdr` is `#[repr(C)]` with two u32 and one u64 field, no padding
// (16 bytes, asserted above), so every byte pattern is a valid value.
unsafe impl ByteValued for BlkHeader {}

impl BlkHeader {
    pub fn request_type(&self) -> u32 {
        u32::from_le(self.0.type_)
    }
    pub fn sector(&self) -> u64 {
        u64::from_le(self.0.sector)
    }
}

/// A guest buffer, already checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub addr: GuestAddress,
    pub len: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    In,
    Out,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub ty: RequestType,
    pub sector: u64,
    /// Driver-to-device data after the header (OUT).
    pub data_out: Vec<Seg>,
    /// Device-to-driver data before the status byte (IN, GET_ID).
    pub data_in: Vec<Seg>,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// No status byte can be written (broken chain: loop, bad index, over 4 GiB; or the last
    /// descriptor is not a writable byte in guest memory): return the chain with used len 0.
    NoStatus(&'static str),
    /// Malformed but the status byte is usable: answer IOERR there.
    Malformed {
        status: GuestAddress,
        why: &'static str,
    },
}

pub(super) fn total(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len as u64).sum()
}

/// Drop the first `skip` bytes of `segs`.
fn skip_bytes(segs: &[Seg], mut skip: u64) -> Vec<Seg> {
    let mut out = Vec::new();
    for s in segs {
        if skip >= s.len as u64 {
            skip -= s.len as u64;
            continue;
        }
        // In range: skip < len, and the address + len was checked against guest memory.
        out.push(Seg {
            addr: GuestAddress(s.addr.0 + skip),
            len: s.len - skip as u32,
        });
        skip = 0;
    }
    out
}

/// Fill `buf` from the start of `segs` (which must hold at least buf.len() bytes).
fn gather(mem: &Memory, segs: &[Seg], buf: &mut [u8]) -> Result<(), vm_memory::GuestMemoryError> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        mem.read_slice(&mut buf[done..done + n], s.addr)?;
        done += n;
    }
    Ok(())
}

/// Turn a descriptor chain into a request.
pub fn parse<M>(mem: &Memory, chain: DescriptorChain<M>) -> Result<Request, ParseError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    // virtio-queue's iterator stops early (without an error) on a loop, a next index outside
    // the table, an unreadable descriptor or more than 4 GiB in total; the last descriptor
    // then still has NEXT set.
    let descs: Vec<Descriptor> = chain.collect();
    let Some(last) = descs.last() else {
        return Err(ParseError::NoStatus("empty chain"));
    };
    if last.has_next() {
        return Err(ParseError::NoStatus(
            "chain does not end (loop, bad next index or over 4 GiB)",
        ));
    }
    if !last.is_write_only() || last.len() == 0 {
        return Err(ParseError::NoStatus(
            "last descriptor is not a writable status byte",
        ));
    }
    let status = match last.addr().0.checked_add(last.len() as u64 - 1) {
        Some(a) if mem.check_range(GuestAddress(a), 1) => GuestAddress(a),
        _ => return Err(ParseError::NoStatus("status byte outside guest memory")),
    };
    let bad = |why| ParseError::Malformed { status, why };
    let mut readable = Vec::new();
    let mut writable = Vec::new();
    for (i, d) in descs.iter().enumerate() {
        let mut len = d.len();
        if i == descs.len() - 1 {
            len -= 1; // the status byte
        }
        if !mem.check_range(d.addr(), len as usize) {
            return Err(bad("buffer outside guest memory"));
        }
        let seg = Seg {
            addr: d.addr(),
            len,
        };
        if d.is_write_only() {
            if len > 0 {
                writable.push(seg);
            }
        } else if !writable.is_empty() || (i > 0 && descs[i - 1].is_write_only()) {
            return Err(bad("device-readable buffer after a device-writable one"));
        } else {
            readable.push(seg);
        }
    }
    if total(&readable) < HEADER_LEN as u64 {
        return Err(bad("header shorter than 16 bytes"));
    }
    let mut header = BlkHeader::default();
    gather(mem, &readable, header.as_mut_slice()).map_err(|_| bad("header unreadable"))?;
    Ok(Request {
        ty: RequestType::from_raw(header.request_type()),
        sector: header.sector(),
        data_out: skip_bytes(&readable, HEADER_LEN as u64),
        data_in: writable,
        status,
    })
}
