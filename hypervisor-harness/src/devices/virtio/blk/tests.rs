//! virtio-blk's tests: parse and execute through `handle_chain`, and the device on a queue.

use super::*;
use crate::backends::disk::RawDisk;
use crate::backends::mem_disk::MemDisk;
use crate::devices::virtio::test_util::{pattern_byte, RecordingTrigger};
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::QueueOwnedT;
use vm_memory::{ByteValued, Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x30_000;
const MEM: u64 = 0x100_000;

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

/// A disk of `sectors` pattern sectors.
fn disk(sectors: u64, ro: bool) -> MemDisk {
    MemDisk::patterned(sectors, ro, pattern_byte).unwrap()
}

fn header(m: &Memory, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Put `descs` in a 16-entry queue as one chain (at index 0) and run it through `handle_chain`.
fn run(m: &Memory, descs: &[RawDescriptor], dk: &dyn DiskBackend) -> u32 {
    let vq = MockSplitQueue::new(m, 16);
    vq.add_desc_chains(descs, 0).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let chain = q.iter(m).unwrap().next().unwrap();
    handle_chain(m, chain, dk, b"serial-number-xyz\0\0\0")
}

fn status(m: &Memory) -> u8 {
    m.read_obj(GuestAddress(STATUS)).unwrap()
}

fn std3(ty: u32, sector: u64, len: u32, write: bool) -> Vec<RawDescriptor> {
    let _ = (ty, sector);
    vec![
        d(HDR, 16, NEXT, 1),
        d(DATA, len, NEXT | if write { WRITE } else { 0 }, 2),
        d(STATUS, 1, WRITE, 0),
    ]
}

#[test]
fn read_sectors() {
    let m = mem();
    let dk = disk(8, false);
    header(&m, VIRTIO_BLK_T_IN, 2);
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    assert_eq!(run(&m, &std3(0, 2, 1024, true), &dk), 1025);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 1024];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, dk.contents()[1024..2048]);
}

#[test]
fn read_split_over_odd_segments_and_status_in_data_descriptor() {
    let m = mem();
    let dk = disk(8, false);
    header(&m, VIRTIO_BLK_T_IN, 0);
    // 100 + 411 data bytes + status as the last byte of the second writable descriptor.
    let descs = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 100, NEXT | WRITE, 2),
        d(DATA + 100, 413, WRITE, 0),
    ];
    assert_eq!(run(&m, &descs, &dk), 513);
    let mut got = vec![0u8; 512];
    m.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, dk.contents()[..512]);
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(DATA + 512)).unwrap(),
        VIRTIO_BLK_S_OK as u8
    );
}

#[test]
fn write_then_flush() {
    let m = mem();
    let dk = disk(8, false);
    header(&m, VIRTIO_BLK_T_OUT, 7);
    m.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(run(&m, &std3(0, 0, 512, false), &dk), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(dk.contents()[7 * 512..], [0xab; 512]);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let descs = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
    assert_eq!(run(&m, &descs, &dk), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    assert_eq!(dk.flushes(), 1);
}

#[test]
fn write_and_flush_reach_the_image_file() {
    let dir = std::env::temp_dir().join(format!(
        "vblk-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flush.img");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    let raw = RawDisk::open(&path, false).unwrap();
    let m = mem();
    header(&m, VIRTIO_BLK_T_OUT, 1);
    m.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(run(&m, &std3(0, 0, 512, false), &raw), 1);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        run(&m, &[d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)], &raw),
        1
    );
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(file.len(), 4096);
    assert_eq!(file[512..1024], [0x5a; 512]);
    assert_eq!(file[..512], [0; 512]);
    // GET_ID on a raw image: its file name.
    assert_eq!(&serial_from_path(&path)[..9], b"flush.img");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn get_id() {
    let m = mem();
    let dk = disk(1, false);
    header(&m, VIRTIO_BLK_T_GET_ID, 0);
    assert_eq!(run(&m, &std3(0, 0, 20, true), &dk), 21);
    let mut id = [0u8; 20];
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id, b"serial-number-xyz\0\0\0");
    // A shorter buffer gets a prefix.
    m.write_slice(&[0xee; 20], GuestAddress(DATA)).unwrap();
    assert_eq!(run(&m, &std3(0, 0, 8, true), &dk), 9);
    m.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..9], b"serial-n\xee");
}

#[test]
fn errors_get_ioerr_or_unsupp() {
    let m = mem();
    let dk = disk(8, false);
    let cases: [(u32, u64, u32, bool, u8); 6] = [
        // Out of range, straddling the end, not whole sectors, overflowing sector.
        (VIRTIO_BLK_T_IN, 8, 512, true, VIRTIO_BLK_S_IOERR as u8),
        (VIRTIO_BLK_T_IN, 7, 1024, true, VIRTIO_BLK_S_IOERR as u8),
        (VIRTIO_BLK_T_OUT, 0, 100, false, VIRTIO_BLK_S_IOERR as u8),
        (
            VIRTIO_BLK_T_OUT,
            u64::MAX / 256,
            512,
            false,
            VIRTIO_BLK_S_IOERR as u8,
        ),
        // A discard of 32 segments, more than max_discard_seg (QEMU's answer too); an
        // unknown type.
        (11, 0, 512, false, VIRTIO_BLK_S_UNSUPP as u8),
        (0x1234, 0, 512, false, VIRTIO_BLK_S_UNSUPP as u8),
    ];
    let before = dk.contents();
    for (ty, sector, len, write, want) in cases {
        header(&m, ty, sector);
        assert_eq!(run(&m, &std3(ty, sector, len, write), &dk), 1, "type {ty}");
        assert_eq!(status(&m), want, "type {ty} sector {sector} len {len}");
    }
    assert_eq!(dk.contents(), before);
    assert_eq!(dk.flushes(), 0);
}

/// A backend that fails (EIO, a short read, ENOSPC, a failed flush): IOERR, never a panic;
/// the same disk healed serves the same requests with OK.
#[test]
fn failing_backend_gets_ioerr() {
    use crate::backends::mem_disk::{Fault, Faults};
    let m = mem();
    let dk = MemDisk::zeroed(8, false).unwrap();
    let flush = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
    let requests = [
        (VIRTIO_BLK_T_IN, std3(0, 1, 1024, true)),
        (VIRTIO_BLK_T_OUT, std3(0, 1, 1024, false)),
        (VIRTIO_BLK_T_FLUSH, flush.to_vec()),
    ];
    let fail = |read, write, flush| Faults { read, write, flush };
    for faults in [
        fail(Some(Fault::Eio), Some(Fault::Eio), Some(Fault::Eio)),
        fail(
            Some(Fault::ShortRead),
            Some(Fault::NoSpace),
            Some(Fault::Eio),
        ),
    ] {
        dk.set_faults(faults);
        for (ty, descs) in &requests {
            header(&m, *ty, 1);
            run(&m, descs, &dk);
            assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8, "{ty} {faults:?}");
        }
    }
    dk.set_faults(Faults::NONE);
    for (ty, descs) in &requests {
        header(&m, *ty, 1);
        run(&m, descs, &dk);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8, "{ty} healed");
    }
}

#[test]
fn read_only_disk_refuses_writes() {
    let m = mem();
    let dk = disk(8, true);
    let blk = Blk::new(Box::new(disk(8, true)), [0; 20]);
    assert_ne!(blk.features() & 1 << VIRTIO_BLK_F_RO, 0);
    header(&m, VIRTIO_BLK_T_OUT, 0);
    assert_eq!(run(&m, &std3(0, 0, 512, false), &dk), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8);
    header(&m, VIRTIO_BLK_T_IN, 0);
    assert_eq!(run(&m, &std3(0, 0, 512, true), &dk), 513);
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn malformed_chains() {
    let m = mem();
    let dk = disk(8, false);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    // Short header: IOERR.
    header(&m, VIRTIO_BLK_T_IN, 0);
    let short = [
        d(HDR, 8, NEXT, 1),
        d(DATA, 512, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &short, &dk), 1);
    assert_eq!(status(&m), ioerr);
    // Header split over two descriptors is fine.
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let split = [
        d(HDR, 8, NEXT, 1),
        d(HDR + 8, 8, NEXT, 2),
        d(DATA, 512, NEXT | WRITE, 3),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &split, &dk), 513);
    assert_eq!(status(&m), 0);
    // Missing status (last descriptor readable): used 0, nothing written.
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let nostatus = [d(HDR, 16, NEXT, 1), d(DATA, 512, 0, 0)];
    assert_eq!(run(&m, &nostatus, &dk), 0);
    assert_eq!(status(&m), 0xff);
    // Zero-length status descriptor: used 0.
    assert_eq!(
        run(&m, &[d(HDR, 16, NEXT, 1), d(STATUS, 0, WRITE, 0)], &dk),
        0
    );
    // Wrong direction: readable data after a writable buffer: IOERR.
    let wrongdir = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 512, NEXT | WRITE, 2),
        d(DATA + 512, 512, NEXT, 3),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &wrongdir, &dk), 1);
    assert_eq!(status(&m), ioerr);
    // Header in a writable descriptor: no readable header: IOERR.
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let whdr = [d(HDR, 16, NEXT | WRITE, 1), d(STATUS, 1, WRITE, 0)];
    assert_eq!(run(&m, &whdr, &dk), 1);
    assert_eq!(status(&m), ioerr);
    // Data buffer outside guest memory: IOERR, no write anywhere.
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let oob = [
        d(HDR, 16, NEXT, 1),
        d(MEM - 256, 512, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &oob, &dk), 1);
    assert_eq!(status(&m), ioerr);
    let far = [
        d(HDR, 16, NEXT, 1),
        d(u64::MAX - 100, 512, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &far, &dk), 1);
    // Status byte outside guest memory: used 0.
    assert_eq!(run(&m, &[d(HDR, 16, NEXT, 1), d(MEM, 1, WRITE, 0)], &dk), 0);
    assert_eq!(
        run(&m, &[d(HDR, 16, NEXT, 1), d(u64::MAX, 2, WRITE, 0)], &dk),
        0
    );
}

#[test]
fn descriptor_loop_and_bad_next() {
    let m = mem();
    let dk = disk(8, false);
    header(&m, VIRTIO_BLK_T_IN, 0);
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    // 0 -> 1 -> 2 -> 1 -> ...: virtio-queue stops after the table size; used 0.
    let looped = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 512, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE | NEXT, 1),
    ];
    assert_eq!(run(&m, &looped, &dk), 0);
    assert_eq!(status(&m), 0xff);
    // next index beyond the table.
    let badnext = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE | NEXT, 99)];
    assert_eq!(run(&m, &badnext, &dk), 0);
}

#[test]
fn chain_over_4gib() {
    let m = mem();
    let dk = disk(8, false);
    header(&m, VIRTIO_BLK_T_IN, 0);
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let huge = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 0xffff_0000, NEXT | WRITE, 2),
        d(DATA, 0x0002_0000, NEXT | WRITE, 3),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &huge, &dk), 0);
    assert_eq!(status(&m), 0xff);
    // One 2 GiB descriptor: outside guest memory, IOERR.
    let big = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 0x8000_0000, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(run(&m, &big, &dk), 1);
    assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8);
}

/// A 16-entry queue in `m`, and a disk device activated with it.
fn blk_queue(m: &Memory) -> (MockSplitQueue<'_, Memory>, Queue, Blk) {
    let vq = MockSplitQueue::new(m, 16);
    let q: Queue = vq.create_queue().unwrap();
    let dk = disk(8, false);
    (vq, q, Blk::new(Box::new(dk), [0; 20]))
}

/// Activate `blk` with `q`; the handle records the interrupts it triggers.
fn activate(blk: &mut Blk, q: Queue, m: &Memory) -> Arc<RecordingTrigger> {
    let irq = Arc::new(RecordingTrigger::default());
    blk.activate(Activation {
        mem: m.clone(),
        features: 0,
        queues: vec![q],
        interrupt: irq.clone(),
    })
    .unwrap();
    irq
}

/// Process queue 0 of an activated `blk`. Ok(true): it triggered the queue's interrupt.
fn process(blk: &mut Blk, irq: &RecordingTrigger) -> Result<bool, QueueBroken> {
    let before = irq.triggers().len();
    blk.process_queue(0)?;
    let fired = &irq.triggers()[before..];
    assert!(
        fired.iter().all(|&t| t == InterruptType::Queue(0)),
        "{fired:?}"
    );
    assert!(fired.len() <= 1, "one interrupt per notify at most");
    Ok(fired.len() == 1)
}

#[test]
fn process_queue_drains_all_and_fills_used_ring() {
    let m = mem();
    let (vq, q, mut blk) = blk_queue(&m);
    let irq = activate(&mut blk, q, &m);
    header(&m, VIRTIO_BLK_T_IN, 1);
    // Three chains: read, a chain with no status, a get-id.
    let descs = [
        d(HDR, 16, NEXT, 1),
        d(DATA, 512, NEXT | WRITE, 2),
        d(STATUS, 1, WRITE, 0),
        d(HDR, 16, NEXT, 4),
        d(DATA, 512, 0, 0),
        d(HDR, 16, NEXT, 6),
        d(DATA + 0x1000, 1024, NEXT | WRITE, 7),
        d(STATUS + 1, 1, WRITE, 0),
    ];
    vq.add_desc_chains(&descs, 0).unwrap();
    assert_eq!(process(&mut blk, &irq), Ok(true));
    assert_eq!(blk.requests, 3);
    assert_eq!(vq.used().idx().load(), 3);
    let used: Vec<(u32, u32)> = (0..3)
        .map(|i| {
            let e = vq.used().ring().ref_at(i).unwrap().load();
            (e.id(), e.len())
        })
        .collect();
    assert_eq!(used, [(0, 513), (3, 0), (5, 1025)]);
    // Nothing new: no interrupt.
    assert_eq!(process(&mut blk, &irq), Ok(false));
    // VRING_AVAIL_F_NO_INTERRUPT suppresses the interrupt.
    m.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, vq.avail_addr())
        .unwrap();
    vq.add_desc_chains(&descs[..3], 8).unwrap();
    assert_eq!(process(&mut blk, &irq), Ok(false));
    assert_eq!(vq.used().idx().load(), 4);
}

#[test]
fn event_idx_suppresses_until_used_event() {
    let m = mem();
    let (vq, mut q, mut blk) = blk_queue(&m);
    q.set_event_idx(true);
    let irq = activate(&mut blk, q, &m);
    header(&m, VIRTIO_BLK_T_FLUSH, 0);
    let one = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
    // used_event lives after the avail ring: driver wants an interrupt after entry 5.
    let used_event = GuestAddress(vq.avail_addr().0 + 4 + 2 * 16);
    m.write_obj(5u16, used_event).unwrap();
    vq.add_desc_chains(&one, 0).unwrap();
    assert_eq!(process(&mut blk, &irq), Ok(false));
    m.write_obj(1u16, used_event).unwrap();
    vq.add_desc_chains(&one, 2).unwrap();
    assert_eq!(process(&mut blk, &irq), Ok(true));
}

#[test]
fn broken_avail_index_is_reported_not_panicked() {
    let m = mem();
    let (vq, q, mut blk) = blk_queue(&m);
    let irq = activate(&mut blk, q, &m);
    // The driver claims 100 new entries in a 16-entry ring.
    vq.avail().idx().store(100);
    assert!(process(&mut blk, &irq).is_err());
    // A head index outside the table: the used ring can't take it.
    let (vq, q, mut blk) = blk_queue(&m);
    let irq = activate(&mut blk, q, &m);
    vq.avail().ring().ref_at(0).unwrap().store(40);
    vq.avail().idx().store(1);
    assert!(process(&mut blk, &irq).is_err());
    assert!(irq.triggers().is_empty());
}

#[test]
fn the_queue_is_the_devices_only_from_activation_to_reset() {
    let m = mem();
    let (vq, q, mut blk) = blk_queue(&m);
    header(&m, VIRTIO_BLK_T_IN, 1);
    vq.add_desc_chains(
        &[
            d(HDR, 16, NEXT, 1),
            d(DATA, 512, NEXT | WRITE, 2),
            d(STATUS, 1, WRITE, 0),
        ],
        0,
    )
    .unwrap();
    // Before activation: no queue, no interrupt handle, a notify does nothing.
    assert!(blk.queues().is_empty() && blk.interrupt_trigger().is_none());
    assert_eq!(blk.process_queue(0), Ok(()));
    let irq = activate(&mut blk, q, &m);
    assert_eq!(blk.queues().len(), 1);
    assert!(blk.interrupt_trigger().is_some());
    // A queue the device does not have.
    assert_eq!(blk.process_queue(1), Ok(()));
    // Reset takes it all back.
    blk.reset();
    assert!(!blk.is_activated() && blk.queues_mut().is_empty());
    assert_eq!(blk.process_queue(0), Ok(()));
    assert_eq!(vq.used().idx().load(), 0);
    assert!(irq.triggers().is_empty());
    assert_eq!(blk.requests, 0);
}

#[test]
fn header_fields_are_the_wire_layout() {
    let mut h = BlkHeader::default();
    h.as_mut_slice()[..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h.as_mut_slice()[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    h.as_mut_slice()[8..].copy_from_slice(&0x1234_5678_9abcu64.to_le_bytes());
    assert_eq!(
        (h.request_type(), h.sector()),
        (VIRTIO_BLK_T_OUT, 0x1234_5678_9abc)
    );
}

#[test]
fn config_space() {
    let dk = disk(8, false);
    let blk = Blk::new(Box::new(dk), [0; 20]);
    let mut b = [0u8; 8];
    blk.read_config(0, &mut b);
    assert_eq!(u64::from_le_bytes(b), 8);
    let mut w = [0u8; 4];
    blk.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512);
    blk.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    blk.read_config(8, &mut w);
    assert_eq!(u32::from_le_bytes(w), SIZE_MAX);
    blk.read_config(58, &mut w);
    assert_eq!(w, [0; 4]);
    // The window ends at CONFIG_LEN although the struct goes on.
    let mut all = [0xaau8; CONFIG_LEN];
    blk.read_config(0, &mut all);
    assert_eq!(all[..8], 8u64.to_le_bytes());
    let mut past = [0xaau8; 2];
    blk.read_config(CONFIG_LEN as u64 - 1, &mut past);
    assert_eq!(past, [0; 2]);
    blk.read_config(u64::MAX, &mut w);
    assert_eq!(blk.features() & 1 << VIRTIO_BLK_F_RO, 0);
    assert_ne!(blk.features() & 1 << VIRTIO_BLK_F_FLUSH, 0);
}

/// One request of a batch: its header, data and status each at their own place.
fn request(m: &Memory, slot: u64, ty: u32, sector: u64, len: u32) -> Vec<RawDescriptor> {
    let (hdr, data, status) = (HDR + 0x100 * slot, DATA + 0x1000 * slot, STATUS + slot);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(hdr)).unwrap();
    m.write_obj(0xffu8, GuestAddress(status)).unwrap();
    let head = 3 * slot as u16;
    let data_flags = if ty == VIRTIO_BLK_T_IN { WRITE } else { 0 };
    vec![
        d(hdr, 16, NEXT, head + 1),
        d(data, len, NEXT | data_flags, head + 2),
        d(status, 1, WRITE, 0),
    ]
}

/// A batch on one queue whose first request meets a failing disk (a short read, once):
/// that request alone completes with IOERR; the rest of the batch, queued behind it, is
/// served with OK and the right bytes, and the disk is as it was apart from the write.
#[test]
fn a_failing_request_gets_ioerr_and_the_queue_goes_on() {
    use crate::backends::faulty_disk::{Fault, FaultPlan, FaultyDisk};
    let m = mem();
    let image = disk(8, false);
    let (faulty, switch) = FaultyDisk::new(image.clone());
    let mut blk = Blk::new(Box::new(faulty), [0; 20]);
    let vq = MockSplitQueue::new(&m, 16);
    let irq = activate(&mut blk, vq.create_queue().unwrap(), &m);
    m.write_slice(&[0xab; 512], GuestAddress(DATA + 0x1000))
        .unwrap();
    let mut descs = request(&m, 0, VIRTIO_BLK_T_IN, 1, 1024);
    descs.extend(request(&m, 1, VIRTIO_BLK_T_OUT, 4, 512));
    descs.extend(request(&m, 2, VIRTIO_BLK_T_IN, 1, 1024));
    descs.extend(request(&m, 3, VIRTIO_BLK_T_IN, 4, 512));
    vq.add_desc_chains(&descs, 0).unwrap();
    switch.set(FaultPlan {
        read: Some(Fault::Short),
        times: Some(1),
        ..FaultPlan::default()
    });
    let before = image.contents();
    assert_eq!(process(&mut blk, &irq), Ok(true));
    assert_eq!(switch.injected(), 1);
    assert_eq!(vq.used().idx().load(), 4);
    let ids: Vec<u32> = (0..4)
        .map(|i| vq.used().ring().ref_at(i).unwrap().load().id())
        .collect();
    assert_eq!(ids, [0, 3, 6, 9], "each request completed once, in order");
    let status = |slot: u64| m.read_obj::<u8>(GuestAddress(STATUS + slot)).unwrap();
    assert_eq!(
        status(0),
        VIRTIO_BLK_S_IOERR as u8,
        "the short read is an error"
    );
    for slot in 1..4 {
        assert_eq!(status(slot), VIRTIO_BLK_S_OK as u8, "request {slot}");
    }
    let mut got = vec![0u8; 1024];
    m.read_slice(&mut got, GuestAddress(DATA + 0x2000)).unwrap();
    assert_eq!(got, before[512..1536], "the same read, retried, is whole");
    m.read_slice(&mut got[..512], GuestAddress(DATA + 0x3000))
        .unwrap();
    assert_eq!(got[..512], [0xab; 512]);
    let mut want = before;
    want[2048..2560].fill(0xab);
    assert_eq!(image.contents(), want, "only the write changed the disk");
}

/// Failing writes (ENOSPC, a short write, EIO) and flushes get IOERR, each once; the same
/// requests then succeed, on a disk that is slow throughout, and what the last write said
/// is what the disk holds.
#[test]
fn failed_writes_and_flushes_then_recovery_on_a_slow_disk() {
    use crate::backends::faulty_disk::{Fault, FaultPlan, FaultyDisk};
    let m = mem();
    let image = disk(8, false);
    let (faulty, switch) = FaultyDisk::new(image.clone());
    let flush = [d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)];
    let delay = std::time::Duration::from_millis(2);
    for fault in [Fault::NoSpace, Fault::Short, Fault::Eio] {
        switch.set(FaultPlan {
            write: Some(fault),
            flush: Some(fault),
            delay,
            ..FaultPlan::default()
        });
        m.write_slice(&[fault as u8 + 1; 1024], GuestAddress(DATA))
            .unwrap();
        header(&m, VIRTIO_BLK_T_OUT, 2);
        run(&m, &std3(0, 2, 1024, false), &faulty);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8, "write {fault:?}");
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        run(&m, &flush, &faulty);
        assert_eq!(status(&m), VIRTIO_BLK_S_IOERR as u8, "flush {fault:?}");
        switch.set(FaultPlan {
            delay,
            ..FaultPlan::default()
        });
        header(&m, VIRTIO_BLK_T_OUT, 2);
        run(&m, &std3(0, 2, 1024, false), &faulty);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8, "write after {fault:?}");
        header(&m, VIRTIO_BLK_T_FLUSH, 0);
        run(&m, &flush, &faulty);
        assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8, "flush after {fault:?}");
        assert_eq!(image.contents()[1024..2048], [fault as u8 + 1; 1024]);
    }
    assert_eq!(switch.injected(), 6);
    assert_eq!(image.flushes(), 3);
}

/// Rings laid so that the device's own writes feed the queue ([`feed_itself`]): the drain
/// takes the one request once and ends at its bound, counted.
#[test]
fn a_queue_that_feeds_itself_ends_at_the_bound() {
    use crate::devices::virtio::drain::test_util::feed_itself;
    let m = mem();
    let (vq, mut q, mut blk) = blk_queue(&m);
    header(&m, VIRTIO_BLK_T_IN, 1);
    m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    vq.add_desc_chains(&std3(0, 1, 512, true), 0).unwrap();
    feed_itself(&mut q, &m, 0x50_000);
    let irq = activate(&mut blk, q, &m);
    assert_eq!(process(&mut blk, &irq), Ok(true));
    assert_eq!((blk.requests, blk.drains_cut), (1, 1));
    assert_eq!(status(&m), VIRTIO_BLK_S_OK as u8);
}
