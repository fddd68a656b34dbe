//! cache=none's queue on a real `O_DIRECT` image (std's temp dir, ext4 here), and on a pipe
//! where a request must stay in flight for as long as a test says.

use super::*;
use crate::backends::mem_disk::MemDisk;
use crate::backends::uring_disk::{DirectAlign, DirectDisk};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x10_000;
const STATUS: u64 = 0x30_000;
/// Page-aligned data buffers, 8 KiB apart.
const DATA: u64 = 0x40_000;
const MEM: u64 = 0x100_000;
const QUEUE: u16 = 64;
const PATIENCE: Duration = Duration::from_secs(60);

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

fn pattern(i: u64) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2]
}

/// A temporary image of `len` pattern bytes; removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(len: u64) -> Self {
        Self::holding(&(0..len).map(pattern).collect::<Vec<u8>>())
    }
    fn holding(bytes: &[u8]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("blk-async-{}-{n}-{k}.img", std::process::id()));
        std::fs::write(&p, bytes).unwrap();
        Self(p)
    }
    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Request `slot`'s descriptors (head 3 * slot): header, `len` data bytes at its own 8 KiB
/// of DATA (none when `len` is 0), status byte (set to 0xff).
fn request(m: &Memory, slot: u16, ty: u32, sector: u64, len: u32) -> Vec<RawDescriptor> {
    request_at(m, slot, 3 * slot, ty, sector, len)
}

/// The same with its head at descriptor `head`.
fn request_at(
    m: &Memory,
    slot: u16,
    head: u16,
    ty: u32,
    sector: u64,
    len: u32,
) -> Vec<RawDescriptor> {
    let s = u64::from(slot);
    let (hdr, data, status) = (HDR + 0x100 * s, DATA + 0x2000 * s, STATUS + s);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(hdr)).unwrap();
    m.write_obj(0xffu8, GuestAddress(status)).unwrap();
    if len == 0 {
        return vec![d(hdr, 16, NEXT, head + 1), d(status, 1, WRITE, 0)];
    }
    let flags = if ty == VIRTIO_BLK_T_OUT { 0 } else { WRITE };
    vec![
        d(hdr, 16, NEXT, head + 1),
        d(data, len, NEXT | flags, head + 2),
        d(status, 1, WRITE, 0),
    ]
}

fn status(m: &Memory, slot: u16) -> u8 {
    m.read_obj(GuestAddress(STATUS + u64::from(slot))).unwrap()
}

fn data(m: &Memory, slot: u16, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    m.read_slice(&mut v, GuestAddress(DATA + 0x2000 * u64::from(slot)))
        .unwrap();
    v
}

struct Rig<'a> {
    m: &'a Memory,
    vq: MockSplitQueue<'a, Memory>,
    q: Queue,
    disk: Box<dyn DiskBackend>,
    exec: AsyncExec,
    requests: u64,
    drains_cut: u64,
    interrupts: u32,
}

impl<'a> Rig<'a> {
    /// With an I/O thread watching the completions (the tests play it).
    fn new(m: &'a Memory, disk: Box<dyn DiskBackend>, mut exec: AsyncExec) -> Self {
        exec.set_watched(true);
        let vq = MockSplitQueue::new(m, QUEUE);
        let q = vq.create_queue().unwrap();
        Self {
            m,
            vq,
            q,
            disk,
            exec,
            requests: 0,
            drains_cut: 0,
            interrupts: 0,
        }
    }

    fn direct(m: &'a Memory, img: &Image) -> Self {
        let disk = DirectDisk::open(&img.0, false).unwrap();
        let exec = AsyncExec::new(disk.engine(QUEUE).unwrap(), QUEUE);
        Self::new(m, Box::new(disk), exec)
    }

    fn drain(&mut self) -> Result<bool, QueueBroken> {
        let drained = drain_queue_async(
            &mut self.q,
            self.m,
            &*self.disk,
            b"cache-none-serial\0\0\0",
            &mut self.requests,
            &mut self.exec,
        )?;
        self.drains_cut += u64::from(drained.cut);
        self.interrupts += u32::from(drained.wants_interrupt);
        Ok(drained.wants_interrupt)
    }

    fn used_idx(&self) -> u16 {
        self.vq.used().idx().load()
    }

    fn used(&self) -> Vec<(u32, u32)> {
        (0..self.used_idx())
            .map(|i| {
                let e = self.vq.used().ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// Wake as the I/O thread does (the completion eventfd, then a drain) until `n` chains
    /// are used.
    fn wait_used(&mut self, n: u16) {
        let deadline = Instant::now() + PATIENCE;
        while self.used_idx() < n {
            assert!(Instant::now() < deadline, "completions never came");
            let _ = self.exec.completion_fd().read();
            self.drain().unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// 16 writes then 16 reads, each batch made available at once: every chain of a batch is on
/// the ring before the first completes (one submit for the batch), each completes once with
/// the right status and used length, the reads see the writes, and the file holds them.
#[test]
fn a_batch_is_in_flight_at_once_and_completes_right() {
    let m = mem();
    let img = Image::new(1 << 20);
    let mut rig = Rig::direct(&m, &img);
    let mut descs = Vec::new();
    for slot in 0..16u16 {
        m.write_slice(
            &[slot as u8 + 1; 4096],
            GuestAddress(DATA + 0x2000 * u64::from(slot)),
        )
        .unwrap();
        descs.extend(request(
            &m,
            slot,
            VIRTIO_BLK_T_OUT,
            16 * u64::from(slot),
            4096,
        ));
    }
    rig.vq.add_desc_chains(&descs, 0).unwrap();
    rig.drain().unwrap();
    assert_eq!(
        rig.exec.counters.max_in_flight, 16,
        "all 16 queued before any completed"
    );
    assert!(
        rig.exec.engine_counters().enters <= 2,
        "{:?}",
        rig.exec.engine_counters()
    );
    rig.wait_used(16);
    let mut heads: Vec<u32> = rig
        .used()
        .iter()
        .map(|&(id, len)| {
            assert_eq!(len, 1, "a write's used length is the status byte");
            id
        })
        .collect();
    heads.sort_unstable();
    assert_eq!(heads, (0..16).map(|s| 3 * s).collect::<Vec<u32>>());
    assert!((0..16).all(|s| status(&m, s) == VIRTIO_BLK_S_OK as u8));
    let file = img.contents();
    for slot in 0..16usize {
        let at = slot * 16 * 512;
        assert_eq!(
            file[at..at + 4096],
            [slot as u8 + 1; 4096],
            "sector {}",
            slot * 16
        );
    }
    // The reads: each of them 8 KiB, the written 4 KiB and the pattern after it.
    let mut descs = Vec::new();
    for slot in 0..16u16 {
        descs.extend(request(
            &m,
            slot,
            VIRTIO_BLK_T_IN,
            16 * u64::from(slot),
            8192,
        ));
    }
    // The heads are free again: the same descriptor slots.
    rig.vq.add_desc_chains(&descs, 0).unwrap();
    rig.drain().unwrap();
    rig.wait_used(32);
    for &(id, len) in &rig.used()[16..] {
        assert_eq!(len, 8193, "head {id}: 8 KiB and the status byte");
    }
    for slot in 0..16u16 {
        let at = usize::from(slot) * 16 * 512;
        assert_eq!(status(&m, slot), VIRTIO_BLK_S_OK as u8);
        assert_eq!(data(&m, slot, 8192), file[at..at + 8192], "slot {slot}");
    }
    assert_eq!(rig.requests, 32);
    assert_eq!(
        rig.exec.engine_counters().buffered,
        0,
        "aligned: all through the ring"
    );
    assert_eq!(rig.exec.counters.synchronous, 0);
    assert!(rig.interrupts >= 1 && rig.interrupts <= 32 + 2);
    assert_eq!(rig.exec.in_flight(), 0);
}

/// What the ring doesn't serve is answered at once, in the same drain: GET_ID, an
/// unsupported type, a read past the end, a partial sector; the flush after a write waits
/// for it and then succeeds.
#[test]
fn the_rest_is_answered_at_once_and_a_flush_follows_the_writes() {
    let m = mem();
    let img = Image::new(64 << 10);
    let mut rig = Rig::direct(&m, &img);
    m.write_slice(&[0x77; 512], GuestAddress(DATA)).unwrap();
    let mut descs = Vec::new();
    let mut heads = Vec::new();
    for (slot, ty, sector, len) in [
        (0, VIRTIO_BLK_T_OUT, 3, 512),
        (1, VIRTIO_BLK_T_FLUSH, 0, 0),
        (2, VIRTIO_BLK_T_GET_ID, 0, 20),
        (3, 99, 0, 512),
        (4, VIRTIO_BLK_T_IN, 128, 512),
        (5, VIRTIO_BLK_T_IN, 0, 100),
    ] {
        let head = descs.len() as u16;
        heads.push(u32::from(head));
        descs.extend(request_at(&m, slot, head, ty, sector, len));
    }
    rig.vq.add_desc_chains(&descs, 0).unwrap();
    rig.drain().unwrap();
    assert_eq!(rig.exec.counters.synchronous, 4);
    rig.wait_used(6);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_OK as u8);
    assert_eq!(status(&m, 1), VIRTIO_BLK_S_OK as u8, "flush");
    assert_eq!(status(&m, 2), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&data(&m, 2, 20)[..17], b"cache-none-serial");
    assert_eq!(status(&m, 3), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(status(&m, 4), VIRTIO_BLK_S_IOERR as u8, "past the end");
    assert_eq!(status(&m, 5), VIRTIO_BLK_S_IOERR as u8, "partial sector");
    let flush_pos = rig
        .used()
        .iter()
        .position(|&(id, _)| id == heads[1])
        .unwrap();
    let write_pos = rig
        .used()
        .iter()
        .position(|&(id, _)| id == heads[0])
        .unwrap();
    assert!(
        write_pos < flush_pos,
        "the flush completes after the write it covers"
    );
    assert_eq!(img.contents()[1536..2048], [0x77; 512]);
}

/// A pipe as the "O_DIRECT file": a read stays in flight until the test writes.
fn pipe_rig(m: &Memory) -> (Rig<'_>, File) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds that nothing else owns.
    let (rd, wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let rd2 = rd.try_clone().unwrap();
    let engine = UringEngine::new(rd, rd2, DirectAlign { mem: 1, offset: 1 }, QUEUE).unwrap();
    let disk = MemDisk::patterned(64, false, |_| 0).unwrap();
    (
        Rig::new(m, Box::new(disk), AsyncExec::new(engine, QUEUE)),
        wr,
    )
}

/// A reset with a request in flight: `abandon` returns only once the kernel is done with the
/// guest's buffer, and neither the status byte nor the used ring is written, then or later.
#[test]
fn a_reset_waits_for_requests_in_flight_and_writes_nothing_after() {
    let m = mem();
    let (mut rig, mut wr) = pipe_rig(&m);
    rig.vq
        .add_desc_chains(&request(&m, 0, VIRTIO_BLK_T_IN, 0, 512), 0)
        .unwrap();
    assert_eq!(rig.drain(), Ok(false));
    assert_eq!((rig.exec.in_flight(), rig.used_idx()), (1, 0));
    // Timed from before the writer exists, so that the writer's 50 ms lie inside the measured
    // time however late this thread runs again after the spawn.
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        wr.write_all(&[0x42; 512]).unwrap();
        wr
    });
    rig.exec.abandon();
    assert!(
        start.elapsed() >= Duration::from_millis(40),
        "abandon waited"
    );
    let _wr = writer.join().unwrap();
    assert_eq!(rig.exec.in_flight(), 0);
    assert_eq!(rig.exec.counters.abandoned, 1);
    assert_eq!(
        data(&m, 0, 512),
        [0x42; 512],
        "the read did finish before abandon returned"
    );
    assert_eq!(status(&m, 0), 0xff, "no status after the reset");
    assert_eq!(rig.used_idx(), 0, "no used entry after the reset");
    // A later wake-up finds nothing to complete.
    let _ = rig.exec.completion_fd().read();
    assert_eq!(rig.drain(), Ok(false));
    assert_eq!((rig.used_idx(), status(&m, 0)), (0, 0xff));
}

/// The driver makes a head available again while its request is in flight: the queue is
/// broken (NEEDS_RESET), nothing is overwritten, and the request still completes once.
#[test]
fn a_head_made_available_twice_breaks_the_queue() {
    let m = mem();
    let (mut rig, mut wr) = pipe_rig(&m);
    let chain = request(&m, 0, VIRTIO_BLK_T_IN, 0, 512);
    rig.vq.add_desc_chains(&chain, 0).unwrap();
    rig.drain().unwrap();
    // The same head again in the next avail slot.
    rig.vq.avail().ring().ref_at(1).unwrap().store(0);
    rig.vq.avail().idx().store(2);
    assert!(rig.drain().unwrap_err().0.contains("head 0"));
    wr.write_all(&[9; 512]).unwrap();
    rig.exec.abandon();
    assert_eq!(rig.exec.counters.abandoned, 1);
}

/// The ring's own errors become IOERR: a write the file refuses (opened read-only, while the
/// disk says writable) fails with the kernel's EBADF, and the file is unchanged.
#[test]
fn a_failed_transfer_is_ioerr() {
    let m = mem();
    let img = Image::new(64 << 10);
    let ro = DirectDisk::open(&img.0, true).unwrap();
    let exec = AsyncExec::new(ro.engine(QUEUE).unwrap(), QUEUE);
    let rw = DirectDisk::open(&img.0, false).unwrap();
    let mut rig = Rig::new(&m, Box::new(rw), exec);
    m.write_slice(&[1; 4096], GuestAddress(DATA)).unwrap();
    rig.vq
        .add_desc_chains(&request(&m, 0, VIRTIO_BLK_T_OUT, 0, 4096), 0)
        .unwrap();
    rig.drain().unwrap();
    rig.wait_used(1);
    assert_eq!(rig.used(), [(0, 1)]);
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        img.contents()[..4096],
        (0..4096).map(pattern).collect::<Vec<_>>()[..]
    );
}

/// Nothing watches the eventfd (inline I/O): one drain submits the batch at once and waits
/// for it, so every request is answered when it returns, with one interrupt.
#[test]
fn unwatched_a_drain_waits_for_its_batch() {
    let m = mem();
    let img = Image::new(256 << 10);
    let mut rig = Rig::direct(&m, &img);
    rig.exec.set_watched(false);
    let mut descs = Vec::new();
    for slot in 0..8u16 {
        descs.extend(request(
            &m,
            slot,
            VIRTIO_BLK_T_IN,
            8 * u64::from(slot),
            4096,
        ));
    }
    rig.vq.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(rig.drain(), Ok(true));
    assert_eq!((rig.used_idx(), rig.exec.in_flight()), (8, 0));
    assert_eq!(rig.exec.counters.max_in_flight, 8);
    let file = img.contents();
    for slot in 0..8u16 {
        let at = usize::from(slot) * 4096;
        assert_eq!(data(&m, slot, 4096), file[at..at + 4096]);
    }
}

/// The device itself: a reset (the driver writing status 0) with a read in flight returns
/// once the kernel is done with the buffer; no status, used entry or interrupt follows.
#[test]
fn blk_reset_with_a_request_in_flight() {
    use crate::devices::virtio::device::{Activation, VirtioDevice};
    use crate::devices::virtio::test_util::RecordingTrigger;
    use std::sync::Arc;
    let m = mem();
    let (rig, mut wr) = pipe_rig(&m);
    let Rig { vq, q, exec, .. } = rig;
    let mut blk = super::super::Blk::new(
        Box::new(MemDisk::patterned(64, false, |_| 0).unwrap()),
        [0; 20],
    );
    blk.exec = Some(exec);
    let irq = Arc::new(RecordingTrigger::default());
    blk.activate(Activation {
        mem: m.clone(),
        features: 0,
        queues: vec![q],
        interrupt: irq.clone(),
    })
    .unwrap();
    vq.add_desc_chains(&request(&m, 0, VIRTIO_BLK_T_IN, 0, 512), 0)
        .unwrap();
    blk.process_queue(0).unwrap();
    assert_eq!(blk.async_exec().unwrap().in_flight(), 1);
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        wr.write_all(&[0x24; 512]).unwrap();
        wr
    });
    blk.reset();
    let _wr = writer.join().unwrap();
    assert_eq!(blk.async_exec().unwrap().in_flight(), 0);
    assert_eq!(data(&m, 0, 512), [0x24; 512], "done before reset returned");
    assert_eq!(status(&m, 0), 0xff);
    assert_eq!(vq.used().idx().load(), 0);
    assert!(irq.triggers().is_empty());
    assert_eq!(blk.requests, 0);
}

/// A cache=none device on `img` (nothing watches its completions: each drain waits).
fn direct_blk(img: &Image) -> super::super::Blk {
    super::super::Blk::on_direct(DirectDisk::open(&img.0, false).unwrap()).unwrap()
}

/// Guest RAM as indirect_tests.rs lays it out: 0..1 MiB, a hole, then 2..3 MiB.
fn holed_mem() -> Memory {
    const MIB: usize = 1 << 20;
    Memory::from_ranges(&[(GuestAddress(0), MIB), (GuestAddress(2 << 20), MIB)]).unwrap()
}

/// indirect_tests.rs's hostile tables on a cache=none device: each chain gets used length 0
/// and no status (INDIRECT|NEXT and the tables longer than the queue refused before parsing,
/// as the synchronous path does), the image is untouched, and the direct read behind them is
/// served through the engine.
#[test]
fn hostile_indirect_tables_on_cache_none() {
    use crate::devices::virtio::test_util::pattern_byte;
    let m = holed_mem();
    let before: Vec<u8> = (0..16 * 512).map(pattern_byte).collect();
    let img = Image::holding(&before);
    let mut blk = direct_blk(&img);
    super::super::indirect_tests::hostile_indirect_tables(&m, &mut blk, &before);
    let exec = blk.async_exec().unwrap();
    assert_eq!(exec.counters.refused, 3, "{:?}", exec.counters);
    assert_eq!(exec.counters.synchronous, 0, "{:?}", exec.counters);
    assert_eq!(exec.engine_counters().completed, 1, "the direct read");
    assert_eq!(exec.in_flight(), 0);
    drop(blk);
    assert_eq!(img.contents(), before, "no hostile write reached the image");
}

/// A table reached from inside a direct chain that makes it 301 descriptors long: refused by
/// the parse's cap on cache=none too (used length 0, nothing queued).
#[test]
fn a_chain_through_an_inner_table_longer_than_a_queue_on_cache_none() {
    use super::super::indirect_tests::serve_on;
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let m = holed_mem();
    let img = Image::new(8 << 10);
    let mut blk = direct_blk(&img);
    let (hdr, data, table) = (0x10_000u64, 0x20_000u64, 0x50_000u64);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
    m.write_slice(&h, GuestAddress(hdr)).unwrap();
    let n: u16 = 300;
    for k in 0..n {
        let flags = WRITE | if k == n - 1 { 0 } else { NEXT };
        let entry = d(data + u64::from(k), 1, flags, k + 1);
        m.write_obj(entry, GuestAddress(table + 16 * u64::from(k)))
            .unwrap();
    }
    let vq = MockSplitQueue::new(&m, 32);
    let inner = d(table, u32::from(n) * 16, VRING_DESC_F_INDIRECT as u16, 0);
    vq.desc_table().store(1, inner).unwrap();
    assert_eq!(serve_on(&m, &[d(hdr, 16, NEXT, 1)], &mut blk), [(0, 0)]);
    let exec = blk.async_exec().unwrap();
    assert_eq!(exec.engine_counters().submitted, 0);
    assert_eq!(exec.in_flight(), 0);
}

/// cache=none's drain on rings that feed themselves ([`feed_itself`]): it answers the one
/// request once and ends at its bound, counted.
#[test]
fn a_queue_that_feeds_itself_ends_at_the_bound() {
    use crate::devices::virtio::drain::test_util::feed_itself;
    let m = mem();
    let img = Image::new(1 << 20);
    let mut rig = Rig::direct(&m, &img);
    let descs = request(&m, 0, VIRTIO_BLK_T_GET_ID, 0, 20);
    rig.vq.add_desc_chains(&descs, 0).unwrap();
    feed_itself(&mut rig.q, &m, 0x90_000);
    rig.drain().unwrap();
    assert_eq!((rig.requests, rig.drains_cut), (1, 1));
    assert_eq!(status(&m, 0), VIRTIO_BLK_S_OK as u8);
}
