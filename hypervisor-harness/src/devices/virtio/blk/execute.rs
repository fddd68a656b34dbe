//! Running a parsed request against a [`DiskBackend`] and answering its chain.

use super::config::{ID_LEN, SECTOR_SIZE};
use super::request::{parse, total, ParseError, Request, RequestType};
use crate::backends::disk::DiskBackend;
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

/// Bounce buffer between the image and guest memory.
const CHUNK: usize = 64 << 10;

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
            let Some(mut offset) = disk_range(disk, req.sector, total(&req.data_in)) else {
                return (IOERR, 0);
            };
            let mut buf = vec![0u8; CHUNK.min(total(&req.data_in) as usize)];
            let mut written = 0u32;
            for s in &req.data_in {
                let mut pos = 0u32;
                while pos < s.len {
                    let n = (s.len - pos).min(CHUNK as u32);
                    let b = &mut buf[..n as usize];
                    let ok = disk.read_at(offset, b).is_ok()
                        && mem
                            .write_slice(b, GuestAddress(s.addr.0 + pos as u64))
                            .is_ok();
                    if !ok {
                        return (IOERR, written);
                    }
                    pos += n;
                    offset += n as u64;
                    written = written.saturating_add(n);
                }
            }
            (OK, written)
        }
        RequestType::Out => {
            if disk.read_only() {
                return (IOERR, 0);
            }
            let Some(mut offset) = disk_range(disk, req.sector, total(&req.data_out)) else {
                return (IOERR, 0);
            };
            let mut buf = vec![0u8; CHUNK.min(total(&req.data_out) as usize)];
            for s in &req.data_out {
                let mut pos = 0u32;
                while pos < s.len {
                    let n = (s.len - pos).min(CHUNK as u32);
                    let b = &mut buf[..n as usize];
                    let ok = mem
                        .read_slice(b, GuestAddress(s.addr.0 + pos as u64))
                        .is_ok()
                        && disk.write_at(offset, b).is_ok();
                    if !ok {
                        return (IOERR, 0);
                    }
                    pos += n;
                    offset += n as u64;
                }
            }
            (OK, 0)
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
    let (status_addr, status, written) = match parse(mem, chain) {
        Ok(req) => {
            let (status, written) = execute(&req, mem, disk, id);
            (req.status, status, written)
        }
        Err(ParseError::Malformed { status, .. }) => (status, VIRTIO_BLK_S_IOERR as u8, 0),
        Err(ParseError::NoStatus(_)) => return 0,
    };
    match mem.write_obj(status, status_addr) {
        Ok(()) => written.saturating_add(1),
        Err(_) => 0,
    }
}
