//! Descriptor chain to [`Request`]: the header read, the data segments sorted by direction,
//! the status byte found, every buffer checked against guest memory.

use super::config::{HEADER_LEN, QUEUE_SIZE};
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

/// Drop the first `skip` bytes of `segs`, in place.
fn skip_bytes(segs: &mut Vec<Seg>, mut skip: u64) {
    let whole = segs
        .iter()
        .take_while(|s| {
            let past = skip >= s.len as u64;
            if past {
                skip -= s.len as u64;
            }
            past
        })
        .count();
    segs.drain(..whole);
    if let Some(first) = segs.first_mut() {
        // In range: skip < len, and the address + len was checked against guest memory.
        first.addr = GuestAddress(first.addr.0 + skip);
        first.len -= skip as u32;
    }
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

impl Request {
    /// A request with no segments yet: the scratch [`parse_into`] fills.
    pub fn empty() -> Self {
        Self {
            ty: RequestType::Unsupported(0),
            sector: 0,
            data_out: Vec::new(),
            data_in: Vec::new(),
            status: GuestAddress(0),
        }
    }
}

/// Turn a descriptor chain into a request.
pub fn parse<M>(mem: &Memory, chain: DescriptorChain<M>) -> Result<Request, ParseError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let mut req = Request::empty();
    parse_into(mem, chain, &mut req)?;
    Ok(req)
}

/// [`parse`] into `req`, whose segment lists are cleared and refilled (their memory kept, so
/// a device that reuses one `req` allocates nothing per request once they have grown).
pub fn parse_into<M>(
    mem: &Memory,
    chain: DescriptorChain<M>,
    req: &mut Request,
) -> Result<(), ParseError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    req.data_out.clear();
    req.data_in.clear();
    // The first thing wrong with the buffers, in chain order; reported only once the status
    // byte is known to be usable (no status outranks it).
    let mut malformed = None;
    let mut seen_writable = false;
    let mut sort = |d: &Descriptor, len: u32, req: &mut Request| {
        if !mem.check_range(d.addr(), len as usize) {
            malformed.get_or_insert("buffer outside guest memory");
        }
        let seg = Seg {
            addr: d.addr(),
            len,
        };
        if d.is_write_only() {
            seen_writable = true;
            if len > 0 {
                req.data_in.push(seg);
            }
        } else if seen_writable {
            malformed.get_or_insert("device-readable buffer after a device-writable one");
        } else if len > 0 {
            req.data_out.push(seg);
        }
    };
    // virtio-queue's iterator stops early (without an error) on a loop, a next index outside
    // the table, an unreadable descriptor or more than 4 GiB in total; the last descriptor
    // then still has NEXT set. Each descriptor is sorted once the next one shows it is not
    // the last.
    // At most a full queue's worth: an indirect table reached from inside a chain (which the
    // head check does not see) could otherwise make one request 65535 descriptors long.
    let mut last = None;
    let mut count = 0;
    for d in chain.take(usize::from(QUEUE_SIZE) + 1) {
        count += 1;
        if let Some(prev) = last.replace(d) {
            sort(&prev, prev.len(), req);
        }
    }
    let Some(last) = last else {
        return Err(ParseError::NoStatus("empty chain"));
    };
    if count > usize::from(QUEUE_SIZE) {
        return Err(ParseError::NoStatus("chain longer than the largest queue"));
    }
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
    sort(&last, last.len() - 1, req); // less the status byte
    let bad = |why| ParseError::Malformed { status, why };
    if let Some(why) = malformed {
        return Err(bad(why));
    }
    if total(&req.data_out) < HEADER_LEN as u64 {
        return Err(bad("header shorter than 16 bytes"));
    }
    let mut header = BlkHeader::default();
    gather(mem, &req.data_out, header.as_mut_slice()).map_err(|_| bad("header unreadable"))?;
    skip_bytes(&mut req.data_out, HEADER_LEN as u64);
    req.ty = RequestType::from_raw(header.request_type());
    req.sector = header.sector();
    req.status = status;
    // `run --record-exits`: the request as parsed, for the fuzz seed corpus.
    if let Some(rec) = crate::devices::recording::active() {
        let out = req.data_out.iter().map(|s| (s.len, false));
        let data_in = req.data_in.iter().map(|s| (s.len, true));
        rec.record_request(
            "virtio-blk",
            header.request_type(),
            req.sector,
            &mut out.chain(data_in),
        );
    }
    Ok(())
}
