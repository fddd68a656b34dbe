//! cache=none's drain allocates nothing per request: a counting allocator (this test binary's
//! own, counting the calling thread's allocations) sees none across 1000 requests through the
//! io_uring, once the device has served its first batch. Needs no kernel and no KVM.

use hypervisor_harness::backends::uring_disk::DirectDisk;
use hypervisor_harness::devices::virtio::blk::{drain_queue_async, AsyncExec};
use hypervisor_harness::devices::virtio::Memory;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations and reallocations per thread.
struct Counting;

// SAFETY: every call goes to the system allocator unchanged; the count is a thread-local
// `Cell` (no allocation of its own, const-initialised).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: as for dealloc; the caller vouches for new_size.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const QUEUE: u16 = 64;
const USED_RING: u64 = 0x8000;
/// Requests per batch (3 descriptors each).
const BATCH: u16 = 8;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

#[test]
fn the_cache_none_drain_allocates_nothing_per_request() {
    let dir = std::env::temp_dir().join(format!("blk-async-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("direct.img");
    std::fs::write(&img, vec![0x5au8; 1 << 20]).unwrap();
    let disk = DirectDisk::open(&img, false).unwrap();
    let mut exec = AsyncExec::new(disk.engine(QUEUE).unwrap(), QUEUE);
    let m = Memory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let vq = MockSplitQueue::new(&m, QUEUE);
    // The mock lays its used ring over the avail ring's second half: the used ring goes to
    // a page of its own, so 1000 requests can go round the ring.
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_ready(false);
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    // Slot k: header at 0x10000 + 0x100 k, 4 KiB page-aligned data at 0x40000 + 0x2000 k,
    // status at 0x30000 + k; a mix of reads, writes, flushes and GET_IDs.
    let types = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
    ];
    for k in 0..BATCH {
        let s = u64::from(k);
        let (hdr, data, status) = (0x10_000 + 0x100 * s, 0x40_000 + 0x2000 * s, 0x30_000 + s);
        let ty = types[usize::from(k) % types.len()];
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&(8 * s).to_le_bytes());
        m.write_slice(&h, GuestAddress(hdr)).unwrap();
        let head = 3 * k;
        let data_flags = if ty == VIRTIO_BLK_T_OUT { 0 } else { WRITE };
        let len = if ty == VIRTIO_BLK_T_GET_ID { 20 } else { 4096 };
        let chain = [
            d(hdr, 16, NEXT, head + 1),
            d(data, len, NEXT | data_flags, head + 2),
            d(status, 1, WRITE, 0),
        ];
        for (i, desc) in chain.into_iter().enumerate() {
            vq.desc_table().store(head + i as u16, desc).unwrap();
        }
    }
    let mut requests = 0u64;
    let mut avail = 0u16;
    // The same 8 chains made available again and again (each batch is answered in full
    // before the next: nothing watches the completions, so a drain waits for its batch).
    let mut batch = |requests: &mut u64| {
        for k in 0..BATCH {
            vq.avail()
                .ring()
                .ref_at(usize::from(avail % QUEUE))
                .unwrap()
                .store(3 * k);
            avail = avail.wrapping_add(1);
        }
        vq.avail().idx().store(avail);
        let before = allocations();
        drain_queue_async(&mut q, &m, &disk, &[0; 20], requests, &mut exec).unwrap();
        allocations() - before
    };
    // The first batch may grow what is sized lazily (the scratch request's lists).
    batch(&mut requests);
    let mut allocated = 0;
    for _ in 0..125 {
        allocated += batch(&mut requests);
    }
    assert_eq!(requests, 126 * u64::from(BATCH), "every request answered");
    for k in 0..u64::from(BATCH) {
        let st: u8 = m.read_obj(GuestAddress(0x30_000 + k)).unwrap();
        assert_eq!(st, VIRTIO_BLK_S_OK as u8, "slot {k}");
    }
    assert_eq!(
        allocated, 0,
        "allocations in 1000 requests after the first batch"
    );
    assert!(
        exec.engine_counters().submitted >= 125 * 4,
        "{:?}",
        exec.engine_counters()
    );
    assert_eq!(exec.in_flight(), 0);
    drop(exec);
    let _ = std::fs::remove_dir_all(&dir);
}
