//! Receive: a frame from the backend goes into the guest's receive buffers, the header
//! first. With MRG_RXBUF a frame may take several chains (`num_buffers` in the first chain's
//! header says how many); without it one chain must hold header and frame. Nothing is made
//! used until the whole frame has a place, so a ring that runs dry mid-frame is left as it was
//! and the frame waits.

use super::header::{NetHeader, HEADER_LEN, NUM_BUFFERS_OFFSET};
use super::DropReason;
use crate::devices::virtio::device::QueueBroken;
use crate::devices::virtio::Memory;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend};

/// What became of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the guest's buffers (that many chains, now used).
    Delivered { buffers: u16 },
    /// Not enough buffers available: nothing was taken, the frame may wait.
    NoBuffers,
    /// The guest's buffers were unusable: the chains taken are returned with length 0.
    Dropped(DropReason),
}

/// Write `stream[pos..pos + len]` of the byte stream `header ++ frame` at `addr`.
fn write_stream(
    mem: &Memory,
    addr: GuestAddress,
    header: &[u8],
    frame: &[u8],
    pos: usize,
    len: usize,
) -> Result<(), vm_memory::GuestMemoryError> {
    let end = pos + len;
    let mut at = addr;
    if pos < header.len() {
        let h = &header[pos..end.min(header.len())];
        mem.write_slice(h, at)?;
        at = at.unchecked_add(h.len() as u64);
    }
    if end > header.len() {
        let from = pos.max(header.len()) - header.len();
        mem.write_slice(&frame[from..end - header.len()], at)?;
    }
    Ok(())
}

/// Fill one chain from stream position `pos`; returns the bytes written into it.
fn fill_chain<M>(
    mem: &Memory,
    chain: DescriptorChain<M>,
    header: &[u8],
    frame: &[u8],
    mut pos: usize,
) -> Result<u32, DropReason>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory,
{
    let total = header.len() + frame.len();
    let start = pos;
    let mut any = false;
    for d in chain {
        any = true;
        if !d.is_write_only() {
            return Err(DropReason::RxBadBuffer);
        }
        let n = (d.len() as usize).min(total - pos);
        if !mem.check_range(d.addr(), n) {
            return Err(DropReason::RxBadBuffer);
        }
        write_stream(mem, d.addr(), header, frame, pos, n).map_err(|_| DropReason::RxBadBuffer)?;
        pos += n;
        if pos == total {
            break;
        }
        if !d.has_next() {
            break;
        }
    }
    // A chain that gave nothing (empty, zero-length, or a loop that never ends before
    // anything was written) is unusable.
    if !any || pos == start {
        return Err(DropReason::RxBadBuffer);
    }
    Ok((pos - start) as u32)
}

/// Put `frame` (with `header`, whose num_buffers this fills in) into `queue`'s buffers.
/// `used` is scratch for the chains a frame takes (kept by the caller so nothing is allocated
/// per frame). An error means the ring itself is broken.
pub fn deliver(
    queue: &mut Queue,
    mem: &Memory,
    frame: &[u8],
    mut header: NetHeader,
    mergeable: bool,
    used: &mut Vec<(u16, u32)>,
) -> Result<Delivery, QueueBroken> {
    let start = queue.next_avail();
    let total = HEADER_LEN + frame.len();
    used.clear();
    header.0.num_buffers = 1u16.to_le();
    let hdr = *header
        .as_slice()
        .first_chunk::<HEADER_LEN>()
        .unwrap_or(&[0; HEADER_LEN]);
    let mut first = None;
    let mut written = 0usize;
    let give_back = |queue: &mut Queue, used: &[(u16, u32)]| -> Result<(), QueueBroken> {
        for &(head, _) in used {
            queue.add_used(mem, head, 0)?;
        }
        Ok(())
    };
    while written < total {
        if used.len() >= queue.size() as usize {
            // More chains than the ring holds: the driver is posting the same heads again.
            give_back(queue, used)?;
            return Ok(Delivery::Dropped(DropReason::RxBadBuffer));
        }
        let Some(chain) = queue.iter(mem)?.next() else {
            queue.set_next_avail(start);
            return Ok(Delivery::NoBuffers);
        };
        let head = chain.head_index();
        if first.is_none() {
            first = Some(chain.clone());
        }
        match fill_chain(mem, chain, &hdr, frame, written) {
            Ok(n) => {
                used.push((head, n));
                written += n as usize;
            }
            Err(why) => {
                used.push((head, 0));
                give_back(queue, used)?;
                return Ok(Delivery::Dropped(why));
            }
        }
        if !mergeable && written < total {
            give_back(queue, used)?;
            return Ok(Delivery::Dropped(DropReason::RxBufferTooSmall));
        }
    }
    let buffers = used.len() as u16;
    if buffers > 1 {
        if let Some(first) = first {
            let count = buffers.to_le_bytes();
            let mut h = hdr;
            h[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&count);
            // The same descriptors as before, so this cannot fail where the first write did
            // not; a failure would only leave num_buffers at 1.
            let _ = fill_chain(mem, first, &h[..NUM_BUFFERS_OFFSET + 2], &[], 0);
        }
    }
    for &(head, n) in used.iter() {
        queue.add_used(mem, head, n)?;
    }
    Ok(Delivery::Delivered { buffers })
}
