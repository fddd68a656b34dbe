//! VIRTIO_RING_F_EVENT_IDX with garbage `used_event` values: every request is still served,
//! nothing panics, and the device interrupts exactly when the spec's `vring_need_event`
//! (virtio 1.2 §2.7.10) says, across the 16-bit wrap too.

use super::*;
use crate::backends::mem_disk::MemDisk;
use crate::devices::virtio::test_util::RecordingTrigger;
use std::sync::Arc;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const SIZE: u16 = 16;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// `used_event`: the avail ring's last field.
const USED_EVENT: u64 = AVAIL + 4 + 2 * SIZE as u64;
const HDR: u64 = 0x10_000;
const STATUS: u64 = 0x20_000;
/// Requests in flight at most: two descriptors each.
const SLOTS: u16 = SIZE / 2;

/// The spec's `vring_need_event(event_idx, new_idx, old_idx)`.
fn vring_need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// A device on a queue with event index on, its avail and used indices starting at `start`,
/// and [`SLOTS`] flush requests laid out in the descriptor table.
struct Rig {
    mem: Memory,
    blk: Blk,
    irq: Arc<RecordingTrigger>,
    avail_idx: u16,
}

impl Rig {
    fn new(start: u16) -> Self {
        let mem = Memory::from_ranges(&[(GuestAddress(0), 0x100_000)]).unwrap();
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&VIRTIO_BLK_T_FLUSH.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        for k in 0..SLOTS {
            let desc = |i: u16, addr: u64, len: u32, flags: u32, next: u16| {
                let raw = RawDescriptor::from(Descriptor::new(addr, len, flags as u16, next));
                mem.write_obj(raw, GuestAddress(DESC + 16 * u64::from(i)))
                    .unwrap();
            };
            desc(2 * k, HDR, 16, VRING_DESC_F_NEXT, 2 * k + 1);
            desc(2 * k + 1, STATUS + u64::from(k), 1, VRING_DESC_F_WRITE, 0);
        }
        mem.write_obj(start, GuestAddress(AVAIL + 2)).unwrap();
        mem.write_obj(start, GuestAddress(USED + 2)).unwrap();
        let mut q = Queue::new(SIZE).unwrap();
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_next_avail(start);
        q.set_next_used(start);
        q.set_event_idx(true);
        q.set_ready(true);
        let mut blk = Blk::new(Box::new(MemDisk::zeroed(8, false).unwrap()), [0; 20]);
        let irq = Arc::new(RecordingTrigger::default());
        blk.activate(Activation {
            mem: mem.clone(),
            features: blk.features(),
            queues: vec![q],
            interrupt: irq.clone(),
        })
        .unwrap();
        Self {
            mem,
            blk,
            irq,
            avail_idx: start,
        }
    }

    fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED + 2)).unwrap()
    }

    /// Publish `n` (at most [`SLOTS`]) requests with `used_event` set to `event`, notify, and
    /// say whether the device interrupted. Every request must complete with OK.
    fn round(&mut self, n: u16, event: u16) -> bool {
        assert!(n <= SLOTS);
        for k in 0..n {
            self.mem
                .write_obj(0xffu8, GuestAddress(STATUS + u64::from(k)))
                .unwrap();
            let slot = self.avail_idx.wrapping_add(k) % SIZE;
            self.mem
                .write_obj(2 * k, GuestAddress(AVAIL + 4 + 2 * u64::from(slot)))
                .unwrap();
        }
        self.avail_idx = self.avail_idx.wrapping_add(n);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        self.mem.write_obj(event, GuestAddress(USED_EVENT)).unwrap();
        let before = self.irq.triggers().len();
        let old = self.used_idx();
        self.blk.process_queue(0).unwrap();
        let new = self.used_idx();
        assert_eq!(new, old.wrapping_add(n), "every request used once");
        for k in 0..n {
            let st: u8 = self
                .mem
                .read_obj(GuestAddress(STATUS + u64::from(k)))
                .unwrap();
            assert_eq!(st, VIRTIO_BLK_S_OK as u8, "request {k}");
        }
        let fired = self.irq.triggers().len() - before;
        assert!(fired <= 1);
        assert_eq!(
            fired == 1,
            vring_need_event(event, new, old),
            "used_event {event:#x}, used {old:#x} -> {new:#x}"
        );
        fired == 1
    }
}

#[test]
fn garbage_used_event_values_lose_no_request_and_follow_vring_need_event() {
    for start in [0u16, 1000, 0xfffa] {
        let mut rig = Rig::new(start);
        let mut served = 0u64;
        for (n, offset) in [
            // used_event relative to the used index before the round: just behind, inside the
            // round, its last entry, just past it, far behind, far ahead, half the space away.
            (4, -1i32),
            (4, 0),
            (4, 2),
            (4, 3),
            (4, 4),
            (3, -1000),
            (3, 30_000),
            (8, 0x8000),
            (1, 0),
        ] {
            let used = rig.used_idx();
            let event = (i32::from(used) + offset) as u16;
            rig.round(n, event);
            served += u64::from(n);
        }
        // Raw garbage, whatever the indices are.
        for event in [0xffff, 0, 0x8000, 0x7fff] {
            rig.round(SLOTS, event);
            served += u64::from(SLOTS);
        }
        assert_eq!(rig.blk.requests, served);
    }
}

/// A driver that stopped updating `used_event` (left at 0): one interrupt when the used index
/// passes it, then none until the index has come round to it again, 65536 entries later; and
/// never two for one batch.
#[test]
fn a_stale_used_event_suppresses_until_the_index_comes_round() {
    let mut rig = Rig::new(0);
    assert!(rig.round(1, 0), "used 0 -> 1 passes used_event 0");
    let mut fired = 0;
    let mut total = 1u32;
    while total < 0x1_0000 + 8 {
        fired += u32::from(rig.round(SLOTS, 0));
        total += u32::from(SLOTS);
    }
    assert_eq!(fired, 1, "once, when the used index wrapped past 0 again");
}
