//! VIRTIO_F_INDIRECT_DESC: what the device refuses before virtio-queue follows a table.
//!
//! virtio-queue's chain iterator already ends a chain (so the device answers it with used
//! length 0) on a nested table, a table length that is not a multiple of 16 or is 0, and a
//! table it cannot read (outside guest RAM, or running into a hole). It accepts two things the
//! spec forbids the driver (virtio 1.2 §2.7.5.3.1), which the device refuses here: a head
//! descriptor with both INDIRECT and NEXT, and a table of more descriptors than the queue has
//! (which would also let one request cost up to 65535 descriptor reads).

use crate::devices::virtio::Memory;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Bytes per descriptor, in a ring's table or an indirect one.
const DESC_LEN: u64 = 16;

/// Why the chain at `head` is refused before it is parsed, if it is.
pub fn refused_head(queue: &Queue, mem: &Memory, head: u16) -> Option<&'static str> {
    let addr = queue.desc_table().checked_add(u64::from(head) * DESC_LEN)?;
    // An unreadable head is virtio-queue's to report (the chain then yields nothing).
    let desc: Descriptor = mem.read_obj(GuestAddress(addr)).ok()?;
    let flags = u32::from(desc.flags());
    if flags & VRING_DESC_F_INDIRECT == 0 {
        return None;
    }
    if flags & VRING_DESC_F_NEXT != 0 {
        return Some("indirect descriptor with NEXT set");
    }
    if u64::from(desc.len()) / DESC_LEN > u64::from(queue.size()) {
        return Some("indirect table longer than the queue");
    }
    None
}
