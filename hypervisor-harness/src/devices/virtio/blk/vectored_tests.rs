//! The data path without a bounce buffer: one vectored backend call per request, no copy
//! through `read_at`/`write_at`, the request's lists reused, and guest memory with holes.

use super::*;
use crate::backends::disk::RawDisk;
use crate::backends::faulty_disk::{Fault, FaultPlan, FaultyDisk};
use crate::backends::mem_disk::MemDisk;
use crate::devices::virtio::test_util::pattern_byte;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, VolatileSlice};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x80_000;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Calls a disk gets, by kind.
#[derive(Debug, Default)]
pub struct Calls {
    pub read_at: AtomicU64,
    pub write_at: AtomicU64,
    pub read_vectored: AtomicU64,
    pub write_vectored: AtomicU64,
    /// Slices the vectored calls carried.
    pub slices: AtomicU64,
}

impl Calls {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// A disk that counts what it is asked to do, passing it all to `inner`.
pub struct CountingDisk<D> {
    pub inner: D,
    pub calls: Arc<Calls>,
}

impl<D: DiskBackend> DiskBackend for CountingDisk<D> {
    fn len(&self) -> u64 {
        self.inner.len()
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Calls::bump(&self.calls.read_at, 1);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        Calls::bump(&self.calls.write_at, 1);
        self.inner.write_at(offset, buf)
    }
    fn read_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        Calls::bump(&self.calls.read_vectored, 1);
        Calls::bump(&self.calls.slices, bufs.len() as u64);
        self.inner.read_vectored_at(offset, bufs)
    }
    fn write_vectored_at(&self, offset: u64, bufs: &[VolatileSlice<'_>]) -> io::Result<()> {
        Calls::bump(&self.calls.write_vectored, 1);
        Calls::bump(&self.calls.slices, bufs.len() as u64);
        self.inner.write_vectored_at(offset, bufs)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), 0x100_000)]).unwrap()
}

fn header(m: &Memory, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(HDR)).unwrap();
}

/// A request of `segs` data descriptors of `seg_len` bytes each at DATA, a gap of 512 bytes
/// between them (so that no two are contiguous), writable for IN.
fn segmented(segs: u16, seg_len: u32, write: bool) -> Vec<RawDescriptor> {
    let mut descs = vec![d(HDR, 16, NEXT, 1)];
    let flags = NEXT | if write { WRITE } else { 0 };
    for i in 0..segs {
        let addr = DATA + u64::from(i) * (u64::from(seg_len) + 512);
        descs.push(d(addr, seg_len, flags, i + 2));
    }
    descs.push(d(STATUS, 1, WRITE, 0));
    descs
}

/// Put `descs` in a queue of `size` entries as one chain and run it with `scratch`.
fn run_with(
    m: &Memory,
    size: u16,
    descs: &[RawDescriptor],
    disk: &dyn DiskBackend,
    scratch: &mut Request,
) -> u32 {
    let vq = MockSplitQueue::new(m, size);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let chain = q.iter(m).unwrap().next().unwrap();
    handle_chain_with(scratch, m, chain, disk, &[0; ID_LEN])
}

fn status(m: &Memory) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

/// The bytes of `segs` segments of `seg_len` at DATA (as [`segmented`] lays them out).
fn gathered(m: &Memory, segs: u16, seg_len: u32) -> Vec<u8> {
    let mut out = vec![0u8; segs as usize * seg_len as usize];
    for (i, chunk) in out.chunks_mut(seg_len as usize).enumerate() {
        let addr = DATA + i as u64 * (u64::from(seg_len) + 512);
        m.read_slice(chunk, GuestAddress(addr)).unwrap();
    }
    out
}

/// 128 KiB over 32 segments is one backend call each way, and never a `read_at`/`write_at`.
#[test]
fn a_128k_request_over_32_segments_is_one_backend_call() {
    let m = mem();
    let calls = Arc::new(Calls::default());
    let image = MemDisk::patterned(1024, false, pattern_byte).unwrap();
    let disk = CountingDisk {
        inner: image.clone(),
        calls: calls.clone(),
    };
    let mut scratch = Request::empty();
    header(&m, VIRTIO_BLK_T_IN, 8);
    let read = segmented(32, 4096, true);
    assert_eq!(run_with(&m, 64, &read, &disk, &mut scratch), 128 * 1024 + 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(
        gathered(&m, 32, 4096),
        image.contents()[8 * 512..][..128 * 1024]
    );
    assert_eq!(Calls::get(&calls.read_vectored), 1);
    assert_eq!(Calls::get(&calls.slices), 32);

    // Back again 16 sectors on: the same bytes, one write.
    header(&m, VIRTIO_BLK_T_OUT, 8 + 256 + 16);
    let write = segmented(32, 4096, false);
    assert_eq!(run_with(&m, 64, &write, &disk, &mut scratch), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    let after = image.contents();
    assert_eq!(
        after[(8 + 256 + 16) * 512..][..128 * 1024],
        after[8 * 512..][..128 * 1024]
    );
    assert_eq!(Calls::get(&calls.write_vectored), 1);
    assert_eq!(Calls::get(&calls.slices), 64);
    assert_eq!(Calls::get(&calls.read_at) + Calls::get(&calls.write_at), 0);
}

/// The most segments a request can have (a 256-entry queue: 254) still go in one call.
#[test]
fn seg_max_segments_are_one_call() {
    let m = mem();
    let calls = Arc::new(Calls::default());
    let disk = CountingDisk {
        inner: MemDisk::patterned(512, false, pattern_byte).unwrap(),
        calls: calls.clone(),
    };
    header(&m, VIRTIO_BLK_T_IN, 0);
    let descs = segmented(SEG_MAX as u16, 512, true);
    let used = run_with(&m, QUEUE_SIZE, &descs, &disk, &mut Request::empty());
    assert_eq!(used, SEG_MAX * 512 + 1);
    assert_eq!(Calls::get(&calls.read_vectored), 1);
    assert_eq!(
        gathered(&m, SEG_MAX as u16, 512),
        disk.inner.contents()[..SEG_MAX as usize * 512]
    );
}

/// The scratch request's lists keep their memory from one request to the next: after the
/// first, a request allocates nothing.
#[test]
fn the_scratch_request_is_reused_not_reallocated() {
    let m = mem();
    let disk = MemDisk::patterned(512, false, pattern_byte).unwrap();
    let mut scratch = Request::empty();
    header(&m, VIRTIO_BLK_T_IN, 0);
    run_with(&m, 64, &segmented(32, 512, true), &disk, &mut scratch);
    let (ptr, cap) = (scratch.data_in.as_ptr(), scratch.data_in.capacity());
    assert!(cap >= 32);
    for segs in [1, 32, 7] {
        header(&m, VIRTIO_BLK_T_IN, 1);
        run_with(&m, 64, &segmented(segs, 512, true), &disk, &mut scratch);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
        assert_eq!(scratch.data_in.len(), segs as usize);
        assert_eq!(
            (scratch.data_in.as_ptr(), scratch.data_in.capacity()),
            (ptr, cap)
        );
    }
}

/// Guest RAM in two regions, 0..1 MiB and 1 MiB..2 MiB back to back, then a hole, then
/// 3 MiB..4 MiB: a buffer across the seam is served (two slices, still one call); a buffer
/// across the hole is refused with IOERR before the disk is asked anything.
#[test]
fn buffers_across_regions_and_holes() {
    const MIB: u64 = 1 << 20;
    let m = Memory::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(MIB), MIB as usize),
        (GuestAddress(3 * MIB), MIB as usize),
    ])
    .unwrap();
    let calls = Arc::new(Calls::default());
    let disk = CountingDisk {
        inner: MemDisk::patterned(64, false, pattern_byte).unwrap(),
        calls: calls.clone(),
    };
    let mut scratch = Request::empty();
    header(&m, VIRTIO_BLK_T_IN, 2);
    let seam = [
        d(HDR, 16, NEXT, 1),
        d(MIB - 1024, 4096, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run_with(&m, 16, &seam, &disk, &mut scratch), 4097);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 4096];
    m.read_slice(&mut got, GuestAddress(MIB - 1024)).unwrap();
    assert_eq!(got, disk.inner.contents()[1024..1024 + 4096]);
    assert_eq!(Calls::get(&calls.read_vectored), 1);
    assert_eq!(Calls::get(&calls.slices), 2, "split at the region boundary");

    for (ty, flags) in [(VIRTIO_BLK_T_IN, WRITE), (VIRTIO_BLK_T_OUT, 0)] {
        header(&m, ty, 2);
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let hole = [
            d(HDR, 16, NEXT, 1),
            d(2 * MIB - 512, 4096, NEXT | flags, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run_with(&m, 16, &hole, &disk, &mut scratch), 1);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8);
    }
    assert_eq!(
        Calls::get(&calls.read_vectored),
        1,
        "the disk was not asked"
    );
    assert_eq!(Calls::get(&calls.write_vectored), 0);
}

/// A FaultyDisk's faults reach the vectored path: a short read or EIO is IOERR (never OK
/// with half the data), a short or ENOSPC write is IOERR; healed, the same requests are OK.
#[test]
fn faults_on_the_vectored_path_are_ioerr() {
    let m = mem();
    let image = MemDisk::patterned(64, false, pattern_byte).unwrap();
    let (faulty, switch) = FaultyDisk::new(image.clone());
    let mut scratch = Request::empty();
    let read = segmented(4, 1024, true);
    let write = segmented(4, 1024, false);
    for fault in [Fault::Short, Fault::Eio, Fault::NoSpace] {
        switch.set(FaultPlan {
            read: Some(fault),
            write: Some(fault),
            ..FaultPlan::default()
        });
        header(&m, VIRTIO_BLK_T_IN, 0);
        assert_eq!(run_with(&m, 16, &read, &faulty, &mut scratch), 1);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8, "read {fault:?}");
        header(&m, VIRTIO_BLK_T_OUT, 16);
        assert_eq!(run_with(&m, 16, &write, &faulty, &mut scratch), 1);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8, "write {fault:?}");
    }
    switch.heal();
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run_with(&m, 16, &read, &faulty, &mut scratch), 4097);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(gathered(&m, 4, 1024), image.contents()[..4096]);
}

/// On a raw image file: preadv into four segments, pwritev from them, the file as written.
#[test]
fn raw_image_reads_and_writes_segments_in_place() {
    let path = std::env::temp_dir().join(format!(
        "vblk-vectored-{}-{:?}.img",
        std::process::id(),
        std::thread::current().id()
    ));
    let bytes: Vec<u8> = (0..64 * 512).map(pattern_byte).collect();
    std::fs::write(&path, &bytes).unwrap();
    let raw = RawDisk::open(&path, false).unwrap();
    let m = mem();
    let mut scratch = Request::empty();
    header(&m, VIRTIO_BLK_T_IN, 3);
    assert_eq!(
        run_with(&m, 16, &segmented(4, 1536, true), &raw, &mut scratch),
        4 * 1536 + 1
    );
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(gathered(&m, 4, 1536), bytes[3 * 512..][..4 * 1536]);
    header(&m, VIRTIO_BLK_T_OUT, 40);
    assert_eq!(
        run_with(&m, 16, &segmented(4, 1536, false), &raw, &mut scratch),
        1
    );
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file[40 * 512..][..4 * 1536], bytes[3 * 512..][..4 * 1536]);
    assert_eq!(file[..40 * 512], bytes[..40 * 512]);
    // Past the end: IOERR, the file unchanged.
    header(&m, VIRTIO_BLK_T_OUT, 60);
    assert_eq!(
        run_with(&m, 16, &segmented(4, 1536, false), &raw, &mut scratch),
        1
    );
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(std::fs::read(&path).unwrap(), file);
    let _ = std::fs::remove_file(&path);
}
