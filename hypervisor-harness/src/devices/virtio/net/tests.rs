//! The model against hand-built rings in a `GuestMemoryMmap`, on the recording backend.

use super::test_util::{reply_of, udp_frame, TestBackend};
use super::*;
use crate::backends::net::ChecksumRequest;
use crate::devices::virtio::test_util::RecordingTrigger;
use crate::devices::virtio::Memory;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_PROMISC, VIRTIO_NET_ERR, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_OK,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const QSIZE: u16 = 16;
const MEM: usize = 0x10_0000;
/// Buffers go from here up (the rings sit below, 64 KiB apart).
const BUFS: u64 = 0x8_0000;

fn mem() -> Memory {
    Memory::from_ranges(&[(GuestAddress(0), MEM)]).unwrap()
}

fn ring_base(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}

struct Rig {
    mem: Memory,
    net: Net,
    trig: Arc<RecordingTrigger>,
    next_desc: Vec<u16>,
    avail: Vec<u16>,
    next_buf: u64,
    features: u64,
}

/// Every feature offered except event index.
fn all_but_event_idx(net: &Net) -> u64 {
    net.features() & !(1 << VIRTIO_RING_F_EVENT_IDX)
}

impl Rig {
    fn new(pairs: u16, backend: TestBackend) -> Self {
        let net = Net::new(
            Box::new(backend.clone()),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            pairs,
        );
        let f = all_but_event_idx(&net);
        Self::with_features(net, backend, f)
    }

    fn with_features(net: Net, _backend: TestBackend, features: u64) -> Self {
        let nq = net.queue_max_sizes().len();
        let mut rig = Self {
            mem: mem(),
            net,
            trig: Arc::new(RecordingTrigger::default()),
            next_desc: vec![0; nq],
            avail: vec![0; nq],
            next_buf: BUFS,
            features,
        };
        rig.activate();
        rig
    }

    fn activate(&mut self) {
        let nq = self.net.queue_max_sizes().len();
        let event_idx = self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for q in 0..nq {
            let mut queue = Queue::new(QUEUE_SIZE).unwrap();
            queue.set_size(QSIZE);
            let base = ring_base(q);
            queue.set_desc_table_address(Some(base as u32), Some(0));
            queue.set_avail_ring_address(Some(base as u32 + 0x1000), Some(0));
            queue.set_used_ring_address(Some(base as u32 + 0x2000), Some(0));
            queue.set_event_idx(event_idx);
            queue.set_ready(true);
            queues.push(queue);
            // Zeroed rings.
            self.mem
                .write_slice(&[0u8; 0x3000], GuestAddress(base))
                .unwrap();
        }
        self.next_desc.fill(0);
        self.avail.fill(0);
        self.net
            .activate(Activation {
                mem: self.mem.clone(),
                features: self.features,
                queues,
                interrupt: self.trig.clone(),
            })
            .unwrap();
    }

    /// Put `bytes` somewhere in guest memory.
    fn alloc(&mut self, bytes: &[u8]) -> u64 {
        let at = self.next_buf;
        self.next_buf += (bytes.len() as u64).max(1).next_multiple_of(0x100);
        assert!(self.next_buf < MEM as u64, "test ran out of buffer space");
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }

    /// Post one chain of (address, length, flags) on queue `q`; NEXT is added. Returns the head.
    fn post(&mut self, q: usize, descs: &[(u64, u32, u16)]) -> u16 {
        let base = ring_base(q);
        let head = self.next_desc[q];
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let last = i + 1 == descs.len();
            let at = base + 16 * idx as u64;
            let flags = flags | if last { 0 } else { NEXT };
            self.mem.write_obj(addr, GuestAddress(at)).unwrap();
            self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            let next = (idx + 1) % QSIZE;
            self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
        self.publish_head(q, head);
        head
    }

    fn publish_head(&mut self, q: usize, head: u16) {
        let base = ring_base(q);
        let slot = base + 0x1000 + 4 + 2 * (self.avail[q] % QSIZE) as u64;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail[q] = self.avail[q].wrapping_add(1);
        self.mem
            .write_obj(self.avail[q], GuestAddress(base + 0x1000 + 2))
            .unwrap();
    }

    /// A TX chain of header + frame, split into descriptors of `split` bytes (the rest last).
    fn send(&mut self, pair: usize, hdr: NetHeader, frame: &[u8], split: &[usize]) -> u16 {
        let mut bytes = hdr.as_slice().to_vec();
        bytes.extend_from_slice(frame);
        let at = self.alloc(&bytes);
        let mut descs = Vec::new();
        let mut pos = 0;
        for &n in split {
            descs.push((at + pos as u64, n as u32, 0));
            pos += n;
        }
        descs.push((at + pos as u64, (bytes.len() - pos) as u32, 0));
        self.post(Net::tx_queue(pair), &descs)
    }

    /// One RX chain of writable descriptors of these sizes; returns their addresses.
    fn post_rx(&mut self, pair: usize, sizes: &[u32]) -> Vec<u64> {
        let addrs: Vec<u64> = sizes
            .iter()
            .map(|&n| self.alloc(&vec![0xee; n as usize]))
            .collect();
        let descs: Vec<_> = addrs
            .iter()
            .zip(sizes)
            .map(|(&a, &n)| (a, n, WRITE))
            .collect();
        self.post(Net::rx_queue(pair), &descs);
        addrs
    }

    fn notify(&mut self, q: usize) -> Result<(), QueueBroken> {
        self.net.process_queue(q)
    }

    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let base = ring_base(q) + 0x2000;
        let idx: u16 = self.mem.read_obj(GuestAddress(base + 2)).unwrap();
        (0..idx)
            .map(|i| {
                let at = base + 4 + 8 * (i % QSIZE) as u64;
                (
                    self.mem.read_obj(GuestAddress(at)).unwrap(),
                    self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect()
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }

    fn stats(&self) -> NetStats {
        self.net.shared().stats()
    }

    fn queue_irqs(&self, q: usize) -> usize {
        self.trig
            .triggers()
            .iter()
            .filter(|t| **t == InterruptType::Queue(q))
            .count()
    }

    /// A control command: header+data readable, one ack byte writable. Returns the ack.
    fn ctrl(&mut self, q: usize, cmd: &[u8]) -> u8 {
        let at = self.alloc(cmd);
        let ack = self.alloc(&[0xff]);
        self.post(q, &[(at, cmd.len() as u32, 0), (ack, 1, WRITE)]);
        self.notify(q).unwrap();
        self.read(ack, 1)[0]
    }
}

fn hdr() -> NetHeader {
    NetHeader::tx(None)
}

#[test]
fn features_and_config_space() {
    let net = Net::new(Box::new(TestBackend::new()), [2, 0, 0, 0, 0, 9], 1);
    let f = net.features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_CTRL_RX,
    ] {
        assert_ne!(f & 1 << bit, 0, "bit {bit}");
    }
    assert_eq!(f & 1 << VIRTIO_NET_F_MQ, 0, "MQ only with several pairs");
    assert_eq!(net.queue_max_sizes(), &[256, 256, 256]);
    let mut c = [0u8; 10];
    net.read_config(0, &mut c);
    assert_eq!(c, [2, 0, 0, 0, 0, 9, 1, 0, 1, 0]);
    net.shared().set_link(false);
    net.read_config(6, &mut c[..2]);
    assert_eq!(&c[..2], &[0, 0]);

    let net = Net::new(Box::new(TestBackend::new()), [2, 0, 0, 0, 0, 9], 4);
    assert_ne!(net.features() & 1 << VIRTIO_NET_F_MQ, 0);
    assert_eq!(net.queue_max_sizes().len(), 9);
    net.read_config(8, &mut c[..2]);
    assert_eq!(&c[..2], &[4, 0]);
}

#[test]
fn tx_frame_reaches_the_backend_intact_with_a_split_header() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    let frame = udp_frame(4000, 9, b"0123456789abcdef");
    // The header split 5 + 7, the frame over three more descriptors.
    rig.send(0, hdr(), &frame, &[5, 7, 20, 3]);
    rig.notify(1).unwrap();
    assert_eq!(backend.sent(), vec![(FrameMeta::default(), frame.clone())]);
    assert_eq!(rig.used(1), vec![(0, 0)]);
    assert_eq!(rig.queue_irqs(1), 1);
    let s = rig.stats();
    assert_eq!(s.queues[1].frames, 1);
    assert_eq!(s.queues[1].bytes, frame.len() as u64);
    assert_eq!(s.queues[1].notifies, 1);
    assert_eq!(s.queues[1].interrupts, 1);
}

#[test]
fn tx_partial_checksum_is_completed_for_a_backend_that_cannot_take_it() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    let frame = udp_frame(4000, 7, b"checksum me");
    let req = ChecksumRequest {
        start: 34,
        offset: 6,
    };
    rig.send(0, NetHeader::tx(Some(req)), &frame, &[]);
    rig.notify(1).unwrap();
    let sent = backend.sent();
    assert_eq!(sent[0].0, FrameMeta::default());
    let got = &sent[0].1;
    // Sum from csum_start (including the stored checksum) over a zero partial sum verifies.
    assert!(checksum::verifies(&got[34..]), "{got:x?}");
    assert_ne!(&got[40..42], &[0, 0]);

    // A backend that takes partial checksums gets the frame as it was, and the request.
    let backend = TestBackend::new();
    backend.wire.lock().unwrap().partial_ok = true;
    let mut rig = Rig::new(1, backend.clone());
    rig.send(0, NetHeader::tx(Some(req)), &frame, &[]);
    rig.notify(1).unwrap();
    let sent = backend.sent();
    assert_eq!(sent[0].0.needs_csum, Some(req));
    assert_eq!(sent[0].1, frame);
}

/// Each hostile TX chain is dropped and counted under its reason, and the next good frame
/// still goes through.
#[test]
fn hostile_tx_chains_are_dropped_and_counted() {
    let frame = udp_frame(1, 2, b"ok");
    type Post = Box<dyn Fn(&mut Rig)>;
    let cases: Vec<(DropReason, Post)> = vec![
        (
            DropReason::TxWrongDirection,
            Box::new(|r: &mut Rig| {
                let at = r.alloc(&[0; 64]);
                r.post(1, &[(at, 12, 0), (at + 12, 50, WRITE)]);
            }),
        ),
        (
            DropReason::TxOutsideMemory,
            Box::new(|r: &mut Rig| {
                let at = r.alloc(&[0; 12]);
                r.post(1, &[(at, 12, 0), (MEM as u64 - 10, 60, 0)]);
            }),
        ),
        (
            DropReason::TxTooLong,
            Box::new(|r: &mut Rig| {
                let big = vec![0u8; MAX_FRAME + 1];
                r.send(0, hdr(), &big, &[]);
            }),
        ),
        (
            DropReason::TxNoData,
            Box::new(|r: &mut Rig| {
                let at = r.alloc(hdr().as_slice());
                r.post(1, &[(at, 12, 0)]);
            }),
        ),
        (
            DropReason::TxShortHeader,
            Box::new(|r: &mut Rig| {
                let at = r.alloc(&[0; 8]);
                r.post(1, &[(at, 8, 0)]);
            }),
        ),
        (
            DropReason::TxRunt,
            Box::new(|r: &mut Rig| {
                r.send(0, hdr(), &[0; 13], &[]);
            }),
        ),
        (
            DropReason::TxBadChain,
            Box::new(|r: &mut Rig| {
                // Descriptor n points back at itself.
                let at = r.alloc(&[0; 64]);
                let head = r.next_desc[1];
                let d = ring_base(1) + 16 * head as u64;
                r.mem.write_obj(at, GuestAddress(d)).unwrap();
                r.mem.write_obj(20u32, GuestAddress(d + 8)).unwrap();
                r.mem.write_obj(NEXT, GuestAddress(d + 12)).unwrap();
                r.mem.write_obj(head, GuestAddress(d + 14)).unwrap();
                r.next_desc[1] = (head + 1) % QSIZE;
                r.publish_head(1, head);
            }),
        ),
        (
            DropReason::TxBadHeader,
            Box::new(|r: &mut Rig| {
                let mut h = hdr();
                h.0.hdr.gso_type = 1;
                r.send(0, h, &udp_frame(1, 2, b"gso"), &[]);
            }),
        ),
        (
            DropReason::TxBadChecksum,
            Box::new(|r: &mut Rig| {
                let f = udp_frame(1, 2, b"x");
                let req = ChecksumRequest {
                    start: f.len() as u16 - 1,
                    offset: 6,
                };
                r.send(0, NetHeader::tx(Some(req)), &f, &[]);
            }),
        ),
    ];
    for (why, post) in cases {
        let backend = TestBackend::new();
        let mut rig = Rig::new(1, backend.clone());
        post(&mut rig);
        rig.notify(1).unwrap();
        assert!(backend.sent().is_empty(), "{why:?}");
        let s = rig.stats();
        assert_eq!(s.drop_count(why), 1, "{why:?}: {:?}", s.nonzero_drops());
        assert_eq!(s.queues[1].drops, 1, "{why:?}");
        assert_eq!(rig.used(1).len(), 1, "{why:?}: the chain is returned");
        rig.send(0, hdr(), &frame, &[]);
        rig.notify(1).unwrap();
        assert_eq!(backend.sent().len(), 1, "{why:?}: a good frame after it");
    }
}

#[test]
fn a_broken_ring_is_an_error_and_the_device_works_after_a_reset() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    // The available index runs ahead by more than the queue size.
    rig.mem
        .write_obj(QSIZE + 5, GuestAddress(ring_base(1) + 0x1000 + 2))
        .unwrap();
    assert!(rig.notify(1).is_err());
    rig.net.reset();
    assert!(!rig.net.is_activated());
    rig.activate();
    rig.send(0, hdr(), &udp_frame(1, 2, b"after"), &[]);
    rig.notify(1).unwrap();
    assert_eq!(backend.sent().len(), 1);
}

#[test]
fn rx_with_mergeable_buffers_spans_chains() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    let bufs: Vec<u64> = (0..3).flat_map(|_| rig.post_rx(0, &[400])).collect();
    let frame: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    backend.push(&frame, FrameMeta::default());
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0), vec![(0, 400), (1, 400), (2, 212)]);
    let hdr = rig.read(bufs[0], 12);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
    let mut got = rig.read(bufs[0] + 12, 388);
    got.extend(rig.read(bufs[1], 400));
    got.extend(rig.read(bufs[2], 212));
    assert_eq!(got, frame);
    assert_eq!(rig.queue_irqs(0), 1);
    assert_eq!(rig.stats().queues[0].frames, 1);
}

#[test]
fn rx_without_mergeable_buffers_needs_one_chain_for_header_and_frame() {
    let backend = TestBackend::new();
    let net = Net::new(Box::new(backend.clone()), [2, 0, 0, 0, 0, 1], 1);
    let f = all_but_event_idx(&net) & !(1 << VIRTIO_NET_F_MRG_RXBUF);
    let mut rig = Rig::with_features(net, backend.clone(), f);
    // Header and frame over two descriptors of one chain.
    let bufs = rig.post_rx(0, &[12, 1514]);
    let frame = udp_frame(7, 4000, &[0x5a; 100]);
    backend.push(&frame, FrameMeta::default());
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0), vec![(0, 12 + frame.len() as u32)]);
    assert_eq!(rig.read(bufs[0] + 10, 2), [1, 0], "num_buffers is 1");
    assert_eq!(rig.read(bufs[1], frame.len()), frame);
    // A chain too small for the frame: the frame is dropped, the chain returned empty.
    rig.post_rx(0, &[64]);
    backend.push(&frame, FrameMeta::default());
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0)[1], (2, 0));
    assert_eq!(rig.stats().drop_count(DropReason::RxBufferTooSmall), 1);
}

#[test]
fn rx_data_valid_only_when_guest_csum_is_negotiated() {
    let meta = FrameMeta {
        needs_csum: None,
        data_valid: true,
    };
    for guest_csum in [true, false] {
        let backend = TestBackend::new();
        let net = Net::new(Box::new(backend.clone()), [2, 0, 0, 0, 0, 1], 1);
        let mut f = all_but_event_idx(&net);
        if !guest_csum {
            f &= !(1 << VIRTIO_NET_F_GUEST_CSUM);
        }
        let mut rig = Rig::with_features(net, backend.clone(), f);
        let bufs = rig.post_rx(0, &[1526]);
        backend.push(&udp_frame(7, 1, b"v"), meta);
        rig.notify(0).unwrap();
        let flags = rig.read(bufs[0], 1)[0];
        let want = if guest_csum {
            VIRTIO_NET_HDR_F_DATA_VALID as u8
        } else {
            0
        };
        assert_eq!(flags, want, "guest_csum {guest_csum}");
    }
}

#[test]
fn without_rx_buffers_frames_wait_in_the_backend_and_flow_after_the_refill_notify() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    let n = PENDING_FRAMES + 8;
    for i in 0..n {
        backend.push(&udp_frame(i as u16, 1, b"flood"), FrameMeta::default());
    }
    // No receive buffers: PENDING_FRAMES are taken to wait, the rest stay in the backend
    // (backpressure), nothing is dropped.
    rig.notify(0).unwrap();
    assert_eq!(backend.waiting(), 8, "the backend was drained");
    assert!(rig.net.shared().rx_blocked());
    let s = rig.stats();
    assert_eq!(s.nonzero_drops(), vec![]);
    assert_eq!(s.queues[0].drops, 0);
    assert_eq!(rig.queue_irqs(0), 0);
    // The driver is asked for a notify when it adds buffers (VRING_USED_F_NO_NOTIFY clear).
    let used_flags: u16 = rig
        .mem
        .read_obj(GuestAddress(ring_base(0) + 0x2000))
        .unwrap();
    assert_eq!(used_flags, 0);
    // A TX notify's receive pass leaves the backend alone too.
    rig.notify(1).unwrap();
    assert_eq!(backend.waiting(), 8);
    // The driver adds buffers (fewer than waiting) and notifies: they fill, in order, and
    // the pass takes the backend's frames again.
    let mut bufs: Vec<u64> = (0..QSIZE).flat_map(|_| rig.post_rx(0, &[1526])).collect();
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0).len(), QSIZE as usize);
    assert_eq!(backend.waiting(), 0);
    assert!(!rig.net.shared().rx_blocked());
    assert_eq!(rig.queue_irqs(0), 1, "one interrupt for the batch");
    // The rest as the ring is refilled: every frame arrives, in order.
    while bufs.len() < n {
        let more = (n - bufs.len()).min(QSIZE as usize);
        bufs.extend((0..more).flat_map(|_| rig.post_rx(0, &[1526])));
        rig.notify(0).unwrap();
    }
    for (i, b) in bufs.iter().enumerate() {
        let f = rig.read(b + 12, 42);
        assert_eq!(&f[34..36], &(i as u16).to_be_bytes(), "frame {i} in order");
    }
    let s = rig.stats();
    assert_eq!(s.queues[0].frames, n as u64);
    assert_eq!(s.nonzero_drops(), vec![]);
}

#[test]
fn the_backend_is_flushed_once_per_tx_batch() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    for i in 0..3 {
        rig.send(0, hdr(), &udp_frame(i, 9, b"batch"), &[]);
    }
    rig.notify(1).unwrap();
    assert_eq!(lock(&backend.wire).flushes, vec![3]);
    for i in 0..2 {
        rig.send(0, hdr(), &udp_frame(i, 9, b"batch"), &[]);
    }
    rig.notify(1).unwrap();
    // A notify with nothing new sends nothing and flushes nothing.
    rig.notify(1).unwrap();
    assert_eq!(lock(&backend.wire).flushes, vec![3, 5]);
}

#[test]
fn a_backend_not_ready_leaves_tx_chains_in_the_ring_until_it_is() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    backend.set_tx_room(Some(2));
    for i in 0..5 {
        rig.send(0, hdr(), &udp_frame(i, 9, b"held"), &[]);
    }
    rig.notify(1).unwrap();
    assert_eq!(backend.sent().len(), 2);
    assert_eq!(rig.used(1).len(), 2, "the rest stay unused in the ring");
    assert_eq!(rig.net.shared().tx_blocked(), 1);
    assert_eq!(rig.stats().tx_holds, 1);
    // Still not ready: nothing more, and the same hold.
    rig.notify(1).unwrap();
    assert_eq!((backend.sent().len(), rig.used(1).len()), (2, 2));
    assert_eq!(rig.stats().tx_holds, 1);
    // Ready: the pass sends the rest, in order, nothing dropped.
    backend.set_tx_room(None);
    rig.notify(1).unwrap();
    let ports: Vec<u16> = backend
        .sent()
        .iter()
        .map(|(_, f)| u16::from_be_bytes([f[34], f[35]]))
        .collect();
    assert_eq!(ports, vec![0, 1, 2, 3, 4]);
    assert_eq!(rig.used(1).len(), 5);
    assert_eq!(rig.net.shared().tx_blocked(), 0);
    assert_eq!(rig.stats().nonzero_drops(), vec![]);
    // Held again, then a reset: nothing is held any more.
    backend.set_tx_room(Some(0));
    rig.send(0, hdr(), &udp_frame(5, 9, b"held"), &[]);
    rig.notify(1).unwrap();
    assert_eq!(rig.net.shared().tx_blocked(), 1);
    assert_eq!(rig.stats().tx_holds, 2);
    rig.net.reset();
    assert_eq!(rig.net.shared().tx_blocked(), 0);
}

#[test]
fn tx_readiness_is_not_asked_without_a_chain_waiting() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    backend.set_tx_room(Some(1));
    rig.send(0, hdr(), &udp_frame(1, 9, b"last"), &[]);
    rig.notify(1).unwrap();
    // The one frame used the last room, but nothing else waits: not a hold.
    assert_eq!(rig.used(1).len(), 1);
    assert_eq!(rig.net.shared().tx_blocked(), 0);
    assert_eq!(rig.stats().tx_holds, 0);
    assert_eq!(lock(&backend.wire).tx_ready_calls, 1);
}

#[test]
fn replies_of_a_synchronous_backend_arrive_in_the_same_notify() {
    let backend = TestBackend::echo();
    let mut rig = Rig::new(1, backend.clone());
    let bufs = rig.post_rx(0, &[1526]);
    let frame = udp_frame(5, 7, b"echo");
    rig.send(0, hdr(), &frame, &[]);
    rig.notify(1).unwrap();
    assert_eq!(rig.used(0), vec![(0, 12 + frame.len() as u32)]);
    assert_eq!(rig.read(bufs[0] + 12, frame.len()), frame);
    assert_eq!((rig.queue_irqs(0), rig.queue_irqs(1)), (1, 1));
}

#[test]
fn control_queue_commands() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(2, backend);
    let ctrl = Net::ctrl_queue(2);
    let (ok, err) = (VIRTIO_NET_OK as u8, VIRTIO_NET_ERR as u8);
    let mq = |n: u16| {
        let mut c = vec![
            VIRTIO_NET_CTRL_MQ as u8,
            VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
        ];
        c.extend_from_slice(&n.to_le_bytes());
        c
    };
    assert_eq!(rig.ctrl(ctrl, &mq(2)), ok);
    assert_eq!(rig.stats().ctrl.active_pairs, 2);
    assert_eq!(
        rig.ctrl(ctrl, &mq(3)),
        err,
        "more pairs than the device has"
    );
    assert_eq!(rig.ctrl(ctrl, &mq(0)), err);
    assert_eq!(rig.ctrl(ctrl, &mq(2)[..3]), err, "short data");
    assert_eq!(rig.stats().ctrl.active_pairs, 2);
    let promisc = [
        VIRTIO_NET_CTRL_RX as u8,
        VIRTIO_NET_CTRL_RX_PROMISC as u8,
        1,
    ];
    assert_eq!(rig.ctrl(ctrl, &promisc), ok);
    assert!(rig.stats().ctrl.promisc);
    assert_eq!(rig.ctrl(ctrl, &[9, 0, 0]), err, "unknown class");
    assert_eq!(
        rig.ctrl(ctrl, &[VIRTIO_NET_CTRL_RX as u8, 42, 1]),
        err,
        "unknown command"
    );
    // No ack byte: returned with length 0 and counted.
    let at = rig.alloc(&promisc);
    rig.post(ctrl, &[(at, 3, 0)]);
    rig.notify(ctrl).unwrap();
    assert_eq!(
        rig.used(ctrl).last(),
        Some(&(rig.next_desc[ctrl] as u32 - 1, 0))
    );
    assert_eq!(rig.stats().drop_count(DropReason::CtrlBadChain), 1);
    assert_eq!(rig.stats().queues[ctrl].frames, 7);
}

#[test]
fn without_mq_the_control_queue_is_queue_2() {
    let backend = TestBackend::new();
    let net = Net::new(Box::new(backend.clone()), [2, 0, 0, 0, 0, 1], 2);
    let f = all_but_event_idx(&net) & !(1 << VIRTIO_NET_F_MQ);
    let mut rig = Rig::with_features(net, backend, f);
    let mq = [VIRTIO_NET_CTRL_MQ as u8, 0, 2, 0];
    assert_eq!(rig.ctrl(2, &mq), VIRTIO_NET_ERR as u8, "MQ not negotiated");
    let promisc = [
        VIRTIO_NET_CTRL_RX as u8,
        VIRTIO_NET_CTRL_RX_PROMISC as u8,
        1,
    ];
    assert_eq!(rig.ctrl(2, &promisc), VIRTIO_NET_OK as u8);
}

#[test]
fn replies_follow_their_flow_to_the_pair_it_was_sent_from() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(2, backend.clone());
    let mq = [VIRTIO_NET_CTRL_MQ as u8, 0, 2, 0];
    assert_eq!(rig.ctrl(4, &mq), VIRTIO_NET_OK as u8);
    rig.post_rx(0, &[1526]);
    rig.post_rx(1, &[1526]);
    let on_pair1 = udp_frame(5000, 7, b"pair one");
    rig.send(1, hdr(), &on_pair1, &[]);
    rig.notify(Net::tx_queue(1)).unwrap();
    backend.push(&reply_of(&on_pair1), FrameMeta::default());
    // Not a flow: pair 0.
    let mut arp = vec![0u8; 42];
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    backend.push(&arp, FrameMeta::default());
    rig.notify(Net::rx_queue(0)).unwrap();
    assert_eq!(rig.used(Net::rx_queue(1)).len(), 1);
    assert_eq!(rig.used(Net::rx_queue(0)).len(), 1);
    let s = rig.stats();
    assert_eq!(s.queues[Net::tx_queue(1)].frames, 1);
    assert_eq!(s.queues[Net::rx_queue(1)].frames, 1);
    assert_eq!(s.queues[Net::rx_queue(0)].frames, 1);
}

#[test]
fn event_index_decides_interrupts_and_receive_notifies() {
    let backend = TestBackend::new();
    let net = Net::new(Box::new(backend.clone()), [2, 0, 0, 0, 0, 1], 1);
    let f = net.features();
    let mut rig = Rig::with_features(net, backend.clone(), f);
    // used_event = 1: no interrupt for the first used TX buffer, one for the second.
    let used_event = ring_base(1) + 0x1000 + 4 + 2 * QSIZE as u64;
    rig.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    rig.send(0, hdr(), &udp_frame(1, 2, b"a"), &[]);
    rig.notify(1).unwrap();
    assert_eq!(rig.queue_irqs(1), 0);
    rig.send(0, hdr(), &udp_frame(1, 2, b"b"), &[]);
    rig.notify(1).unwrap();
    assert_eq!(rig.queue_irqs(1), 1);
    // A frame waiting with no RX buffers asks for a notify at the next buffer (avail_event).
    backend.push(&udp_frame(2, 1, b"w"), FrameMeta::default());
    rig.notify(0).unwrap();
    let avail_event = ring_base(0) + 0x2000 + 4 + 8 * QSIZE as u64;
    let ev: u16 = rig.mem.read_obj(GuestAddress(avail_event)).unwrap();
    assert_eq!(ev, 0);
}

#[test]
fn link_down_drops_both_ways() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    rig.net.shared().set_link(false);
    rig.post_rx(0, &[1526]);
    rig.send(0, hdr(), &udp_frame(1, 2, b"down"), &[]);
    backend.push(&udp_frame(2, 1, b"in"), FrameMeta::default());
    rig.notify(1).unwrap();
    assert!(backend.sent().is_empty());
    assert_eq!(rig.used(0), vec![]);
    assert_eq!(rig.stats().drop_count(DropReason::LinkDown), 2);
}

#[test]
fn hostile_rx_buffers_are_returned_empty_and_counted() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    // A device-readable buffer on the RX queue, then one outside guest memory.
    let at = rig.alloc(&[0; 64]);
    rig.post(0, &[(at, 64, 0)]);
    rig.post(0, &[(MEM as u64 - 8, 1526, WRITE)]);
    backend.push(&udp_frame(2, 1, b"x"), FrameMeta::default());
    backend.push(&udp_frame(2, 1, b"y"), FrameMeta::default());
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0), vec![(0, 0), (1, 0)]);
    assert_eq!(rig.stats().drop_count(DropReason::RxBadBuffer), 2);
    // And good buffers still work.
    rig.post_rx(0, &[1526]);
    backend.push(&udp_frame(2, 1, b"z"), FrameMeta::default());
    rig.notify(0).unwrap();
    assert_eq!(rig.used(0).len(), 3);
    assert_eq!(rig.stats().queues[0].frames, 1);
}

#[test]
fn a_backend_that_fails_is_reported_not_fatal() {
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    backend.wire.lock().unwrap().gone = true;
    rig.send(0, hdr(), &udp_frame(1, 2, b"x"), &[]);
    rig.notify(1).unwrap();
    let s = rig.stats();
    assert_eq!(s.drop_count(DropReason::TxBackend), 1);
    assert!(s.backend_error.unwrap().contains("disconnected"));
    assert!(rig.net.shared().backend_gone());
}

// ---------------------------------------------------------------------------------------------
// Through the virtio-pci transport: the event loop's backend path, and link changes.

mod through_the_transport {
    use super::*;
    use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_MEM};
    use crate::devices::virtio::test_util::RecordingIrq;
    use crate::devices::virtio::transport_pci::{common, VirtioPciDevice, ISR_CONFIG, ISR_QUEUE};
    use crate::devices::virtio::transport_pci::{DEVICE_OFFSET, ISR_OFFSET};
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_net::VIRTIO_NET_S_LINK_UP;
    use vmm_sys_util::eventfd::EventFd;

    /// A started function: every queue 16 entries at `ring_base`, no MSI-X (interrupts are
    /// INTx), features VERSION_1, MAC, STATUS, MRG_RXBUF (and MQ with several pairs).
    struct PciRig {
        mem: Memory,
        dev: Arc<Mutex<VirtioPciDevice>>,
        shared: Arc<NetShared>,
        irq: Arc<RecordingIrq>,
        avail: Vec<u16>,
        next_desc: Vec<u16>,
        next_buf: u64,
    }

    impl PciRig {
        fn new(pairs: u16, backend: TestBackend) -> Self {
            let mem = mem();
            let net = Net::new(Box::new(backend), [0x52, 0x54, 0, 0x12, 0x34, 0x56], pairs);
            let shared = net.shared();
            let irq = Arc::new(RecordingIrq::default());
            let mut dev = VirtioPciDevice::new(Box::new(net), mem.clone(), irq.clone(), 5).unwrap();
            dev.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
            let nq = 2 * pairs as usize + 1;
            let w = |dev: &mut VirtioPciDevice, off: u64, len: usize, v: u64| {
                dev.bar_write(off, &v.to_le_bytes()[..len]);
            };
            w(&mut dev, common::DEVICE_STATUS, 1, 3);
            let mut features = 1u64 << VIRTIO_F_VERSION_1
                | 1 << VIRTIO_NET_F_MAC
                | 1 << VIRTIO_NET_F_STATUS
                | 1 << VIRTIO_NET_F_MRG_RXBUF;
            if pairs > 1 {
                features |= 1 << VIRTIO_NET_F_MQ;
            }
            for sel in 0..2 {
                w(&mut dev, common::DRIVER_FEATURE_SELECT, 4, sel);
                w(
                    &mut dev,
                    common::DRIVER_FEATURE,
                    4,
                    features >> (32 * sel) & 0xffff_ffff,
                );
            }
            w(&mut dev, common::DEVICE_STATUS, 1, 11);
            for q in 0..nq {
                let base = ring_base(q);
                w(&mut dev, common::QUEUE_SELECT, 2, q as u64);
                w(&mut dev, common::QUEUE_SIZE, 2, QSIZE as u64);
                w(&mut dev, common::QUEUE_DESC, 8, base);
                w(&mut dev, common::QUEUE_DRIVER, 8, base + 0x1000);
                w(&mut dev, common::QUEUE_DEVICE, 8, base + 0x2000);
                w(&mut dev, common::QUEUE_ENABLE, 2, 1);
            }
            w(&mut dev, common::DEVICE_STATUS, 1, 15);
            assert_eq!(dev.status(), 15, "device did not start");
            Self {
                mem,
                dev: Arc::new(Mutex::new(dev)),
                shared,
                irq,
                avail: vec![0; nq],
                next_desc: vec![0; nq],
                next_buf: BUFS,
            }
        }

        fn alloc(&mut self, bytes: &[u8]) -> u64 {
            let at = self.next_buf;
            self.next_buf += (bytes.len() as u64).max(1).next_multiple_of(0x100);
            self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
            at
        }

        /// One chain on queue `q` (NEXT added), made available without a notify.
        fn post(&mut self, q: usize, descs: &[(u64, u32, u16)]) {
            let base = ring_base(q);
            let head = self.next_desc[q];
            for (i, &(addr, len, flags)) in descs.iter().enumerate() {
                let idx = (head + i as u16) % QSIZE;
                let at = base + 16 * idx as u64;
                let last = i + 1 == descs.len();
                self.mem.write_obj(addr, GuestAddress(at)).unwrap();
                self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
                let flags = flags | if last { 0 } else { NEXT };
                self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
                self.mem
                    .write_obj((idx + 1) % QSIZE, GuestAddress(at + 14))
                    .unwrap();
            }
            self.next_desc[q] = (head + descs.len() as u16) % QSIZE;
            let slot = base + 0x1000 + 4 + 2 * (self.avail[q] % QSIZE) as u64;
            self.mem.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail[q] = self.avail[q].wrapping_add(1);
            self.mem
                .write_obj(self.avail[q], GuestAddress(base + 0x1000 + 2))
                .unwrap();
        }

        fn used_idx(&self, q: usize) -> u16 {
            self.mem
                .read_obj(GuestAddress(ring_base(q) + 0x2000 + 2))
                .unwrap()
        }

        fn used(&self, q: usize, i: u16) -> (u32, u32) {
            let at = ring_base(q) + 0x2000 + 4 + 8 * (i % QSIZE) as u64;
            (
                self.mem.read_obj(GuestAddress(at)).unwrap(),
                self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }

        fn read(&self, at: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0u8; len];
            self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
            b
        }

        fn bar_read(&self, off: u64, len: usize) -> u64 {
            let mut b = vec![0u8; len];
            lock(&self.dev).bar_read(off, &mut b);
            crate::devices::le_value(&b)
        }

        /// Wait (at most 5 s) until `done` holds: the event loop runs on its own thread.
        fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !done(self) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        /// A frame the backend holds reaches the RX buffer posted at `buf` on pair 0, as the
        /// `nth` used entry, and the queue interrupt is raised (INTx, ISR queue bit).
        fn check_received(&self, buf: u64, nth: u16, frame: &[u8], irqs_before: u32) {
            self.wait_for("the frame in the guest's RX ring", |r| r.used_idx(0) > nth);
            let (_, len) = self.used(0, nth);
            assert_eq!(len as usize, HEADER_LEN + frame.len());
            assert_eq!(self.read(buf + HEADER_LEN as u64, frame.len()), frame);
            self.wait_for("the queue interrupt", |r| r.irq.intx_count() > irqs_before);
            assert!(self.irq.level());
            assert_eq!(self.bar_read(ISR_OFFSET, 1) as u8 & ISR_QUEUE, ISR_QUEUE);
        }
    }

    use crate::devices::virtio::net::header::HEADER_LEN;

    #[test]
    fn inline_mode_a_backend_frame_reaches_an_idle_guest_through_the_event_loop() {
        // Inline mode: the notifies exit (none here) and one thread waits on the backend.
        let backend = TestBackend::new();
        let mut rig = PciRig::new(1, backend.clone());
        let buf = rig.alloc(&[0xee; 1526]);
        rig.post(0, &[(buf, 1526, WRITE)]);
        let _loop =
            event_loop::spawn("t-net-rx", &rig.dev, Some(rig.shared.clone()), Vec::new()).unwrap();
        // Nothing happens until the backend has a frame: the device is idle.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(rig.used_idx(0), 0);
        let frame = udp_frame(7, 9, b"while you were idle");
        backend.push(&frame, FrameMeta::default());
        rig.check_received(buf, 0, &frame, 0);
        let s = rig.shared.stats();
        assert_eq!(s.queues[0].frames, 1);
        assert_eq!(s.queues[0].interrupts, 1);
        assert_eq!(
            s.queues[0].notifies, 0,
            "a backend event is not a driver notify"
        );
        assert_eq!(backend.waiting(), 0);
    }

    #[test]
    fn thread_mode_notifies_by_ioeventfd_and_backend_frames_reach_the_guest() {
        // Thread mode as the wiring has it: pair 0's thread takes queues 0, 1, the control
        // queue and the backend; pair 1's thread queues 2 and 3.
        let backend = TestBackend::new();
        let mut rig = PciRig::new(2, backend.clone());
        let evts: Vec<EventFd> = (0..5)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let notifies = |qs: &[usize]| -> Vec<(usize, EventFd)> {
            qs.iter()
                .map(|&q| (q, evts[q].try_clone().unwrap()))
                .collect()
        };
        let (pair0, pair1) = (notifies(&[0, 1, 4]), notifies(&[2, 3]));
        let _t0 = event_loop::spawn("t-net-q0", &rig.dev, Some(rig.shared.clone()), pair0).unwrap();
        let _t1 = event_loop::spawn("t-net-q1", &rig.dev, None, pair1).unwrap();

        // TX on pair 1, kicked through its ioeventfd.
        let frame = udp_frame(1, 2, b"out on pair 1");
        let mut bytes = hdr().as_slice().to_vec();
        bytes.extend_from_slice(&frame);
        let at = rig.alloc(&bytes);
        rig.post(3, &[(at, bytes.len() as u32, 0)]);
        evts[3].write(1).unwrap();
        rig.wait_for("the TX frame at the backend", |_| {
            !backend.sent().is_empty()
        });
        assert_eq!(backend.sent()[0].1, frame);
        rig.wait_for("the TX completion", |r| r.used_idx(3) == 1);
        // Its interrupt is counted once the pass is over.
        rig.wait_for("the TX interrupt", |r| {
            r.shared.stats().queues[3].interrupts == 1
        });

        // RX: a buffer posted and kicked while nothing waits, then a frame from the backend.
        let buf = rig.alloc(&[0xee; 1526]);
        rig.post(0, &[(buf, 1526, WRITE)]);
        evts[0].write(1).unwrap();
        rig.wait_for("the RX notify", |r| {
            r.shared.stats().queues[0].notifies == 1
        });
        assert_eq!(rig.used_idx(0), 0);
        let before = rig.irq.intx_count();
        let frame = udp_frame(9, 7, b"in on pair 0");
        backend.push(&frame, FrameMeta::default());
        rig.check_received(buf, 0, &frame, before);
        let s = rig.shared.stats();
        assert_eq!((s.queues[3].frames, s.queues[0].frames), (1, 1));
    }

    /// Backpressure through the event loop: with no receive buffers the backend keeps what
    /// does not fit and the backend's thread stops waking for it; the driver's refill notify
    /// (inline: the notify write; thread mode: the RX ioeventfd) resumes it, and the thread
    /// watches the backend again.
    fn backpressure_resumes_on_the_refill_notify(thread_mode: bool) {
        let backend = TestBackend::new();
        let mut rig = PciRig::new(1, backend.clone());
        let rx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let notifies = if thread_mode {
            vec![(0, rx_kick.try_clone().unwrap())]
        } else {
            Vec::new()
        };
        let _loop =
            event_loop::spawn("t-net-bp", &rig.dev, Some(rig.shared.clone()), notifies).unwrap();
        let n = PENDING_FRAMES + 8;
        for i in 0..n {
            backend.push(&udp_frame(i as u16, 1, b"flood"), FrameMeta::default());
        }
        rig.wait_for("the pass to block", |r| r.shared.rx_blocked());
        assert_eq!(backend.waiting(), 8);
        // The backend's fd stays readable: a thread still waiting on it would spin.
        std::thread::sleep(Duration::from_millis(20));
        let wakeups = rig.shared.backend_wakeups();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            rig.shared.backend_wakeups() <= wakeups + 1,
            "the backend's thread woke {} times while blocked",
            rig.shared.backend_wakeups() - wakeups
        );
        assert_eq!(backend.waiting(), 8);
        // Refill and notify.
        let bufs: Vec<u64> = (0..QSIZE)
            .map(|_| {
                let b = rig.alloc(&[0xee; 1526]);
                rig.post(0, &[(b, 1526, WRITE)]);
                b
            })
            .collect();
        if thread_mode {
            rx_kick.write(1).unwrap();
        } else {
            let at = VirtioPciDevice::notify_offset(0);
            lock(&rig.dev).bar_write(at, &0u16.to_le_bytes());
        }
        rig.wait_for("the refill", |r| r.used_idx(0) == QSIZE);
        rig.wait_for("the backend drained", |_| backend.waiting() == 0);
        assert!(!rig.shared.rx_blocked());
        // Watching the backend again: buffers added without a notify, then one more frame
        // from the backend; its event runs the pass, which fills them.
        for _ in 0..QSIZE {
            let b = rig.alloc(&[0xee; 1526]);
            rig.post(0, &[(b, 1526, WRITE)]);
        }
        backend.push(&udp_frame(n as u16, 1, b"flood"), FrameMeta::default());
        rig.wait_for("the backend event", |r| r.used_idx(0) == 2 * QSIZE);
        let f = rig.read(bufs[3] + HEADER_LEN as u64, 42);
        assert_eq!(&f[34..36], &3u16.to_be_bytes());
        assert_eq!(rig.shared.stats().nonzero_drops(), vec![]);
    }

    /// TX backpressure through the event loop: a backend that cannot take frames leaves the
    /// chains in the ring; the backend's thread sleeps on its `tx_wait_fd` (a bounded number
    /// of wakeups) and, once it is writable, runs the pass again: all sent in order.
    fn tx_backpressure_resumes_when_the_backend_has_room(thread_mode: bool) {
        let backend = TestBackend::new();
        let mut rig = PciRig::new(1, backend.clone());
        let tx_kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let notifies = if thread_mode {
            vec![(1, tx_kick.try_clone().unwrap())]
        } else {
            Vec::new()
        };
        let _loop =
            event_loop::spawn("t-net-txbp", &rig.dev, Some(rig.shared.clone()), notifies).unwrap();
        backend.set_tx_room(Some(0));
        const N: u16 = QSIZE;
        for i in 0..N {
            let frame = udp_frame(i, 9, b"held back");
            let mut bytes = hdr().as_slice().to_vec();
            bytes.extend_from_slice(&frame);
            let at = rig.alloc(&bytes);
            rig.post(1, &[(at, bytes.len() as u32, 0)]);
        }
        if thread_mode {
            tx_kick.write(1).unwrap();
        } else {
            let at = VirtioPciDevice::notify_offset(1);
            lock(&rig.dev).bar_write(at, &1u16.to_le_bytes());
        }
        rig.wait_for("the pass to hold", |r| r.shared.tx_blocked() == 1);
        std::thread::sleep(Duration::from_millis(20));
        let wakeups = rig.shared.backend_wakeups();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            rig.shared.backend_wakeups() <= wakeups + 1,
            "the backend's thread woke {} times while held",
            rig.shared.backend_wakeups() - wakeups
        );
        assert!(backend.sent().is_empty());
        assert_eq!(rig.used_idx(1), 0, "the chains stay in the ring");
        // Room: the fd turns writable and the thread resumes the pass.
        backend.set_tx_room(None);
        rig.wait_for("the held frames sent", |r| r.used_idx(1) == N);
        let ports: Vec<u16> = backend
            .sent()
            .iter()
            .map(|(_, f)| u16::from_be_bytes([f[34], f[35]]))
            .collect();
        assert_eq!(ports, (0..N).collect::<Vec<_>>());
        rig.wait_for("the hold released", |r| r.shared.tx_blocked() == 0);
        let s = rig.shared.stats();
        assert_eq!(s.tx_holds, 1);
        assert_eq!(s.nonzero_drops(), vec![]);
        // Not watching the writable fd any more: the thread sleeps.
        std::thread::sleep(Duration::from_millis(20));
        let wakeups = rig.shared.backend_wakeups();
        std::thread::sleep(Duration::from_millis(100));
        assert!(rig.shared.backend_wakeups() <= wakeups + 1);
    }

    #[test]
    fn inline_mode_tx_backpressure_resumes_when_the_backend_has_room() {
        tx_backpressure_resumes_when_the_backend_has_room(false);
    }

    #[test]
    fn thread_mode_tx_backpressure_resumes_when_the_backend_has_room() {
        tx_backpressure_resumes_when_the_backend_has_room(true);
    }

    #[test]
    fn inline_mode_backpressure_resumes_on_the_notify_exit() {
        backpressure_resumes_on_the_refill_notify(false);
    }

    #[test]
    fn thread_mode_backpressure_resumes_on_the_rx_ioeventfd() {
        backpressure_resumes_on_the_refill_notify(true);
    }

    #[test]
    fn link_down_raises_the_config_interrupt_and_status_reads_without_link_up() {
        let rig = PciRig::new(1, TestBackend::new());
        let status_at = DEVICE_OFFSET + 6;
        assert_eq!(rig.bar_read(status_at, 2), VIRTIO_NET_S_LINK_UP as u64);
        let generation = rig.bar_read(common::CONFIG_GENERATION, 1);
        assert_eq!(rig.irq.intx_count(), 0);

        rig.shared.set_link(false);
        lock(&rig.dev).device_config_changed();
        assert_eq!(rig.irq.intx_count(), 1, "no configuration interrupt");
        assert_eq!(lock(&rig.dev).stats().config_interrupts, 1);
        assert_eq!(rig.bar_read(ISR_OFFSET, 1) as u8, ISR_CONFIG);
        assert!(!rig.irq.level(), "reading the ISR lowers INTx");
        assert_eq!(rig.bar_read(status_at, 2) & VIRTIO_NET_S_LINK_UP as u64, 0);
        assert_ne!(rig.bar_read(common::CONFIG_GENERATION, 1), generation);

        // No change, no interrupt; link up again is one more.
        lock(&rig.dev).device_config_changed();
        assert_eq!(rig.irq.intx_count(), 1);
        rig.shared.set_link(true);
        lock(&rig.dev).device_config_changed();
        assert_eq!(rig.irq.intx_count(), 2);
        assert_eq!(rig.bar_read(status_at, 2), VIRTIO_NET_S_LINK_UP as u64);
        assert!(lock(&rig.dev).broken().is_none());
    }
}

/// Rings laid so that the device's own writes feed the queue ([`feed_itself`]): the transmit
/// pass sends the one frame once and the control pass answers the one command once, each
/// ending at its bound, counted.
#[test]
fn transmit_and_control_queues_that_feed_themselves_end_at_the_bound() {
    use crate::devices::virtio::drain::test_util::feed_itself;
    let backend = TestBackend::new();
    let mut rig = Rig::new(1, backend.clone());
    let frame = udp_frame(4000, 9, b"fed by its own used ring");
    rig.send(0, hdr(), &frame, &[]);
    feed_itself(&mut rig.net.queues_mut()[1], &rig.mem, 0x7_0000);
    rig.notify(1).unwrap();
    assert_eq!(backend.sent(), vec![(FrameMeta::default(), frame)]);
    assert_eq!(rig.stats().drains_cut, 1);
    let ctrl = Net::ctrl_queue(1);
    let mut cmd = vec![
        VIRTIO_NET_CTRL_MQ as u8,
        VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET as u8,
    ];
    cmd.extend_from_slice(&1u16.to_le_bytes());
    let at = rig.alloc(&cmd);
    let ack = rig.alloc(&[0xff]);
    rig.post(ctrl, &[(at, cmd.len() as u32, 0), (ack, 1, WRITE)]);
    feed_itself(&mut rig.net.queues_mut()[ctrl], &rig.mem, 0x7_1000);
    rig.notify(ctrl).unwrap();
    assert_ne!(rig.read(ack, 1)[0], 0xff, "the command was answered");
    assert_eq!(rig.stats().drains_cut, 2);
}
