//! VIRTIO_F_INDIRECT_DESC from the device's side: valid tables are served, hostile ones are
//! answered (used length 0, nothing written) without a panic or an access outside guest RAM,
//! and the queue goes on.

use super::*;
use crate::backends::mem_disk::MemDisk;
use crate::devices::virtio::test_util::{pattern_byte, RecordingTrigger};
use std::sync::Arc;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;
const MIB: u64 = 1 << 20;
/// Chain `i`'s header, data, status byte and table.
const HDR: u64 = 0x10_000;
const DATA: u64 = 0x20_000;
const STATUS: u64 = 0x40_000;
const TABLE: u64 = 0x50_000;

fn hdr(i: u16) -> u64 {
    HDR + 0x100 * u64::from(i)
}
fn data(i: u16) -> u64 {
    DATA + 0x1000 * u64::from(i)
}
fn status_at(i: u16) -> u64 {
    STATUS + u64::from(i)
}
fn table(i: u16) -> u64 {
    TABLE + 0x1000 * u64::from(i)
}

/// The queue's size. (The mock lays its used ring over the avail ring's second half, so a
/// batch stays under half of it.)
const QSIZE: u16 = 32;

fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags, next))
}

/// Guest RAM: 0..1 MiB, a hole, then 2..3 MiB.
fn mem() -> Memory {
    Memory::from_ranges(&[
        (GuestAddress(0), MIB as usize),
        (GuestAddress(2 * MIB), MIB as usize),
    ])
    .unwrap()
}

fn header(m: &Memory, i: u16, ty: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&ty.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    m.write_slice(&h, GuestAddress(hdr(i))).unwrap();
    m.write_obj(0xffu8, GuestAddress(status_at(i))).unwrap();
}

/// Write `descs` as an indirect table at `at`.
fn put_table(m: &Memory, at: u64, descs: &[RawDescriptor]) {
    for (k, desc) in descs.iter().enumerate() {
        m.write_obj(*desc, GuestAddress(at + 16 * k as u64))
            .unwrap();
    }
}

/// The usual request of chain `i` as a table: header, 1024 bytes of data, status.
fn request_table(i: u16, data_flags: u16) -> [RawDescriptor; 3] {
    [
        d(hdr(i), 16, NEXT, 1),
        d(data(i), 1024, NEXT | data_flags, 2),
        d(status_at(i), 1, WRITE, 0),
    ]
}

/// Publish `heads` (ring descriptors 0..) as one chain each, let an activated device with
/// `disk` serve them, and return the used ring's (id, len) entries.
fn serve(m: &Memory, heads: &[RawDescriptor], disk: MemDisk) -> Vec<(u32, u32)> {
    serve_on(m, heads, &mut Blk::new(Box::new(disk), [0; 20]))
}

/// [`serve`] by `blk` (cache=none's tests bring their own device).
pub(super) fn serve_on(m: &Memory, heads: &[RawDescriptor], blk: &mut Blk) -> Vec<(u32, u32)> {
    let vq = MockSplitQueue::new(m, QSIZE);
    for (i, head) in heads.iter().enumerate() {
        vq.desc_table().store(i as u16, *head).unwrap();
        vq.avail().ring().ref_at(i).unwrap().store(i as u16);
    }
    vq.avail().idx().store(heads.len() as u16);
    let irq = Arc::new(RecordingTrigger::default());
    blk.activate(Activation {
        mem: m.clone(),
        features: blk.features(),
        queues: vec![vq.create_queue().unwrap()],
        interrupt: irq.clone(),
    })
    .unwrap();
    blk.process_queue(0).unwrap();
    let used = vq.used().idx().load();
    (0..used as usize)
        .map(|k| {
            let e = vq.used().ring().ref_at(k).unwrap().load();
            (e.id(), e.len())
        })
        .collect()
}

#[test]
fn the_device_offers_indirect_descriptors() {
    let blk = Blk::new(Box::new(MemDisk::zeroed(8, false).unwrap()), [0; 20]);
    assert_ne!(blk.features() & 1 << VIRTIO_RING_F_INDIRECT_DESC, 0);
}

/// A read and a write through tables, each one ring descriptor: served as direct ones are.
#[test]
fn valid_indirect_read_and_write() {
    let m = mem();
    let disk = MemDisk::patterned(16, false, pattern_byte).unwrap();
    header(&m, 0, VIRTIO_BLK_T_IN, 2);
    put_table(&m, table(0), &request_table(0, WRITE));
    header(&m, 1, VIRTIO_BLK_T_OUT, 8);
    m.write_slice(&[0x5a; 1024], GuestAddress(data(1))).unwrap();
    put_table(&m, table(1), &request_table(1, 0));
    let heads = [d(table(0), 48, INDIRECT, 0), d(table(1), 48, INDIRECT, 0)];
    assert_eq!(serve(&m, &heads, disk.clone()), [(0, 1025), (1, 1)]);
    for i in 0..2 {
        let st: u8 = m.read_obj(GuestAddress(status_at(i))).unwrap();
        assert_eq!(st, VIRTIO_BLK_S_OK as u8, "request {i}");
    }
    let mut got = vec![0u8; 1024];
    m.read_slice(&mut got, GuestAddress(data(0))).unwrap();
    let contents = disk.contents();
    assert_eq!(got, contents[1024..2048]);
    assert_eq!(contents[8 * 512..10 * 512], [0x5a; 1024]);
}

/// Every hostile table in one batch, then a valid direct request: each hostile chain is
/// returned with used length 0 and its status byte untouched, nothing is written to the disk,
/// and the request behind them is served.
#[test]
fn hostile_indirect_tables_get_used_len_0_and_the_queue_goes_on() {
    let m = mem();
    let disk = MemDisk::patterned(16, false, pattern_byte).unwrap();
    let before = disk.contents();
    let mut blk = Blk::new(Box::new(disk.clone()), [0; 20]);
    hostile_indirect_tables(&m, &mut blk, &before);
    assert_eq!(disk.contents(), before, "no hostile write reached the disk");
}

/// The batch of [`hostile_indirect_tables_get_used_len_0_and_the_queue_goes_on`] served by
/// `blk`, whose disk holds `before` (16 sectors of [`pattern_byte`]s): the used entries, the
/// status bytes and the direct read's data checked. The caller checks its disk is unchanged.
pub(super) fn hostile_indirect_tables(m: &Memory, blk: &mut Blk, before: &[u8]) {
    let mut heads = Vec::new();
    // 0: a table whose chain loops (2 -> 1 -> 2 ...): virtio-queue stops after the table.
    header(m, 0, VIRTIO_BLK_T_OUT, 0);
    put_table(
        m,
        table(0),
        &[
            d(hdr(0), 16, NEXT, 1),
            d(data(0), 512, NEXT, 2),
            d(status_at(0), 1, WRITE | NEXT, 1),
        ],
    );
    heads.push(d(table(0), 48, INDIRECT, 0));
    // 1: a table inside a table.
    header(m, 1, VIRTIO_BLK_T_OUT, 0);
    put_table(m, table(1) + 0x800, &request_table(1, 0));
    put_table(
        m,
        table(1),
        &[d(hdr(1), 16, NEXT, 1), d(table(1) + 0x800, 48, INDIRECT, 0)],
    );
    heads.push(d(table(1), 32, INDIRECT, 0));
    // 2: a length that is not a multiple of 16.
    header(m, 2, VIRTIO_BLK_T_OUT, 0);
    put_table(m, table(2), &request_table(2, 0));
    heads.push(d(table(2), 40, INDIRECT, 0));
    // 3: length 0.
    heads.push(d(table(2), 0, INDIRECT, 0));
    // 4: more descriptors than the queue has (33 and 4095 for 32), a valid request in front.
    header(m, 4, VIRTIO_BLK_T_OUT, 0);
    put_table(m, table(4), &request_table(4, 0));
    heads.push(d(table(4), (u32::from(QSIZE) + 1) * 16, INDIRECT, 0));
    heads.push(d(table(4), 0xfff0, INDIRECT, 0));
    // 6: a table outside guest RAM, in the hole and past the end; one that runs into the hole.
    heads.push(d(MIB + 0x1000, 48, INDIRECT, 0));
    heads.push(d(u64::MAX - 31, 48, INDIRECT, 0));
    put_table(m, MIB - 32, &request_table(4, 0)[..2]);
    heads.push(d(MIB - 32, 48, INDIRECT, 0));
    // 9: INDIRECT with NEXT, pointing at a good table and a good descriptor.
    header(m, 9, VIRTIO_BLK_T_OUT, 0);
    put_table(m, table(9), &request_table(9, 0));
    heads.push(d(table(9), 48, INDIRECT | NEXT, 15));
    // 10: a valid direct read, its data and status in ring slots 13 and 14.
    header(m, 10, VIRTIO_BLK_T_IN, 1);
    heads.push(d(hdr(10), 16, NEXT, 13));
    let vq_extra = [
        (13, d(data(10), 512, NEXT | WRITE, 14)),
        (14, d(status_at(10), 1, WRITE, 0)),
        (15, d(status_at(10), 1, WRITE, 0)),
    ];
    let used = {
        // serve() lays out the heads; the direct request's other descriptors go after them.
        let vq = MockSplitQueue::new(m, QSIZE);
        for (k, desc) in vq_extra {
            vq.desc_table().store(k, desc).unwrap();
        }
        serve_on(m, &heads, blk)
    };
    let want: Vec<(u32, u32)> = (0..heads.len() as u32)
        .map(|i| (i, if i == 10 { 513 } else { 0 }))
        .collect();
    assert_eq!(used, want);
    for i in [0u16, 1, 2, 4, 9] {
        let st: u8 = m.read_obj(GuestAddress(status_at(i))).unwrap();
        assert_eq!(st, 0xff, "chain {i}: no status written");
    }
    let st: u8 = m.read_obj(GuestAddress(status_at(10))).unwrap();
    assert_eq!(st, VIRTIO_BLK_S_OK as u8);
    let mut got = vec![0u8; 512];
    m.read_slice(&mut got, GuestAddress(data(10))).unwrap();
    assert_eq!(got, before[512..1024]);
}

/// A table reached from inside a direct chain (virtio-queue follows it; the head check does
/// not see it) whose chain is longer than any queue: refused, with used length 0.
#[test]
fn an_indirect_table_inside_a_chain_cannot_make_it_longer_than_a_queue() {
    let m = mem();
    let disk = MemDisk::patterned(16, false, pattern_byte).unwrap();
    header(&m, 0, VIRTIO_BLK_T_IN, 0);
    // 300 writable descriptors of 1 byte, the last the status byte.
    let n: u16 = 300;
    let entries: Vec<RawDescriptor> = (0..n)
        .map(|k| {
            let last = k == n - 1;
            let flags = WRITE | if last { 0 } else { NEXT };
            d(data(0) + u64::from(k), 1, flags, k + 1)
        })
        .collect();
    put_table(&m, table(0), &entries);
    let vq = MockSplitQueue::new(&m, QSIZE);
    vq.desc_table()
        .store(1, d(table(0), u32::from(n) * 16, INDIRECT, 0))
        .unwrap();
    let heads = [d(hdr(0), 16, NEXT, 1)];
    assert_eq!(serve(&m, &heads, disk), [(0, 0)]);
}
