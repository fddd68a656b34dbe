//! Running a parsed request against a [`DiskBackend`] and answering its chain.
//!
//! Reads and writes move data between the image and guest memory directly: the segments
//! become vm-memory slices (each address checked against guest RAM by `get_slices`, which
//! also splits a segment at region boundaries) handed to the backend's vectored call, one
//! call per request of up to [`SLICES`] slices. The slices live in a stack array, so a request
//! costs no allocation and no copy.

use super::config::{ID_LEN, SECTOR_SIZE};
use super::request::{parse_into, total, ParseError, Request, RequestType, Seg};
use crate::backends::disk::DiskBackend;
use crate::backends::vectored::MAX_IOVECS;
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend, VolatileSlice};

/// Slices per backend call: every segment of a request on a full 256-entry queue.
pub const SLICES: usize = MAX_IOVECS;

/// Which way a transfer goes.
#[derive(Clone, Copy)]
enum Dir {
    /// Disk to guest (IN).
    ToGuest,
    /// Guest to disk (OUT).
    ToDisk,
}

/// Move `segs`' bytes between guest memory and `disk` from `offset` on, [`SLICES`] slices per
/// backend call. Fails if a segment is not in guest RAM or the backend fails.
fn transfer(
    mem: &Memory,
    segs: &[Seg],
    disk: &dyn DiskBackend,
    mut offset: u64,
    dir: Dir,
) -> Result<(), ()> {
    let call = |offset: u64, slices: &[VolatileSlice<'_>]| match dir {
        Dir::ToGuest => disk.read_vectored_at(offset, slices),
        Dir::ToDisk => disk.write_vectored_at(offset, slices),
    };
    let mut slots = [VolatileSlice::from(&mut [][..]); SLICES];
    let mut count = 0;
    let mut batch = 0u64;
    for seg in segs {
        for slice in mem.get_slices(seg.addr, seg.len as usize) {
            let slice = slice.map_err(drop)?;
            if count == SLICES {
                call(offset, &slots).map_err(drop)?;
                offset += batch;
                (count, batch) = (0, 0);
            }
            slots[count] = slice;
            count += 1;
            batch += slice.len() as u64;
        }
    }
    if count > 0 {
        call(offset, &slots[..count]).map_err(drop)?;
    }
    Ok(())
}

/// The byte range a read or write covers, if it is whole sectors inside the disk.
fn disk_range(disk: &dyn DiskBackend, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    (offset.checked_add(len)? <= disk.len()).then_some(offset)
}

/// Run `req`. Returns the status and the number of data bytes written to the guest.
pub fn execute(
    req: &Request,
    mem: &Memory,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
) -> (u8, u32) {
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    match req.ty {
        RequestType::In => {
            let len = total(&req.data_in);
            let Some(offset) = disk_range(disk, req.sector, len) else {
                return (IOERR, 0);
            };
            match transfer(mem, &req.data_in, disk, offset, Dir::ToGuest) {
                // A chain holds at most 4 GiB (virtio-queue stops there).
                Ok(()) => (OK, u32::try_from(len).unwrap_or(u32::MAX)),
                // What reached the guest is not known to be whole: none of it counts.
                Err(()) => (IOERR, 0),
            }
        }
        RequestType::Out => {
            if disk.read_only() {
                return (IOERR, 0);
            }
            let Some(offset) = disk_range(disk, req.sector, total(&req.data_out)) else {
                return (IOERR, 0);
            };
            match transfer(mem, &req.data_out, disk, offset, Dir::ToDisk) {
                Ok(()) => (OK, 0),
                Err(()) => (IOERR, 0),
            }
        }
        RequestType::Flush => match disk.flush() {
            Ok(()) => (OK, 0),
            Err(_) => (IOERR, 0),
        },
        RequestType::GetId => {
            let mut left = ID_LEN.min(total(&req.data_in) as usize);
            let mut src = &id[..];
            for s in &req.data_in {
                if left == 0 {
                    break;
                }
                let n = left.min(s.len as usize);
                if mem.write_slice(&src[..n], s.addr).is_err() {
                    return (IOERR, 0);
                }
                src = &src[n..];
                left -= n;
            }
            (OK, (ID_LEN.min(total(&req.data_in) as usize)) as u32)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            (super::discard::execute(req, mem, disk), 0)
        }
        RequestType::Unsupported(_) => (UNSUPP, 0),
    }
}

/// Parse and run one chain and write its status. Returns the used length: data bytes written
/// to the guest plus the status byte, or 0 when no status could be written.
pub fn handle_chain<M>(
    mem: &Memory,
    chain: DescriptorChain<M>,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
) -> u32
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    handle_chain_with(&mut Request::empty(), mem, chain, disk, id)
}

/// [`handle_chain`] parsing into `scratch`, a request reused from chain to chain.
pub fn handle_chain_with<M>(
    scratch: &mut Request,
    mem: &Memory,
    chain: DescriptorChain<M>,
    disk: &dyn DiskBackend,
    id: &[u8; ID_LEN],
) -> u32
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let (status_addr, status, written) = match parse_into(mem, chain, scratch) {
        Ok(()) => {
            let (status, written) = execute(scratch, mem, disk, id);
            (scratch.status, status, written)
        }
        Err(ParseError::Malformed { status, .. }) => (status, VIRTIO_BLK_S_IOERR as u8, 0),
        Err(ParseError::NoStatus(_)) => return 0,
    };
    match mem.write_obj(status, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}
