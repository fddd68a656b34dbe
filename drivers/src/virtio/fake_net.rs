//! A fake virtio-net device for the driver's host tests: a [`Backend`] of the fake virtio-pci
//! function (rust-vmm's virtio-queue is the device side of every ring), with its config
//! (MAC, link status, max_virtqueue_pairs) and everything the driver did kept in a
//! [`NetState`] the test shares. It completes TX and control chains when notified, and takes
//! RX frames from the test ([`inject_rx`]), honouring the driver's interrupt suppression.

use super::fake::{Backend, FakePlatform, Mem};
use std::boxed::Box;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Bytes of `virtio_net_hdr_v1`, written out here on its own (the fake shares no definition
/// with the driver).
pub const HDR: usize = 12;

/// One frame the driver transmitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFrame {
    pub queue: u16,
    pub header: [u8; HDR],
    pub frame: Vec<u8>,
    /// Descriptors in the chain.
    pub descriptors: usize,
}

/// The device's state, shared with the test.
pub struct NetState {
    pub features: u64,
    pub mac: [u8; 6],
    pub status: u16,
    pub max_pairs: u16,
    pub tx: Vec<TxFrame>,
    /// The device-readable bytes of each control command.
    pub ctrl: Vec<Vec<u8>>,
    /// The ack the device writes to control commands.
    pub ctrl_ack: u8,
    /// Keep TX chains (queue, head) instead of completing them.
    pub hold_tx: bool,
    pub held_tx: Vec<(u16, u16)>,
    /// Times a TX completion would have interrupted (the driver's suppression said so).
    pub tx_interrupts_wanted: u64,
    /// Notifies seen, per queue index.
    pub notifies: Vec<u64>,
}

impl NetState {
    fn ctrl_index(&self) -> u16 {
        2 * self.max_pairs
    }
}

pub struct FakeNet {
    pub state: Rc<RefCell<NetState>>,
}

/// virtio-net feature bits, spelled out independently of the driver.
pub mod bits {
    pub const CSUM: u64 = 1 << 0;
    pub const GUEST_CSUM: u64 = 1 << 1;
    pub const MAC: u64 = 1 << 5;
    pub const MRG_RXBUF: u64 = 1 << 15;
    pub const STATUS: u64 = 1 << 16;
    pub const CTRL_VQ: u64 = 1 << 17;
    pub const MQ: u64 = 1 << 22;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}

impl Backend for FakeNet {
    fn features(&self) -> u64 {
        self.state.borrow().features
    }

    fn config(&self) -> Vec<u8> {
        let st = self.state.borrow();
        let mut c = vec![0u8; 24];
        c[0..6].copy_from_slice(&st.mac);
        c[6..8].copy_from_slice(&st.status.to_le_bytes());
        c[8..10].copy_from_slice(&st.max_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&1500u16.to_le_bytes());
        c
    }

    fn process(&mut self, queue: u16, q: &mut Queue, mem: &Mem) -> bool {
        let mut st = self.state.borrow_mut();
        let i = usize::from(queue);
        if st.notifies.len() <= i {
            st.notifies.resize(i + 1, 0);
        }
        st.notifies[i] += 1;
        let mut completed = false;
        if queue == st.ctrl_index() {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                let mut out = Vec::new();
                let mut ack_at = None;
                for d in &descs {
                    if d.is_write_only() {
                        ack_at.get_or_insert(d.addr());
                    } else {
                        let mut b = vec![0u8; d.len() as usize];
                        mem.read_slice(&mut b, d.addr()).unwrap();
                        out.extend(b);
                    }
                }
                st.ctrl.push(out);
                let written = match ack_at {
                    Some(a) => {
                        mem.write_obj(st.ctrl_ack, a).unwrap();
                        1
                    }
                    None => 0,
                };
                q.add_used(mem, head, written).unwrap();
                completed = true;
            }
        } else if queue % 2 == 1 {
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                let mut bytes = Vec::new();
                for d in &descs {
                    assert!(!d.is_write_only(), "TX buffers are device-readable");
                    let mut b = vec![0u8; d.len() as usize];
                    mem.read_slice(&mut b, d.addr()).unwrap();
                    bytes.extend(b);
                }
                assert!(bytes.len() >= HDR, "TX chain shorter than the header");
                st.tx.push(TxFrame {
                    queue,
                    header: bytes[..HDR].try_into().unwrap(),
                    frame: bytes[HDR..].to_vec(),
                    descriptors: descs.len(),
                });
                if st.hold_tx {
                    st.held_tx.push((queue, head));
                } else {
                    q.add_used(mem, head, 0).unwrap();
                    completed = true;
                }
            }
        }
        // Ask for the next kick (event idx: avail_event = next avail; else NO_NOTIFY clear).
        q.enable_notification(mem).unwrap();
        if !completed {
            return false;
        }
        let wanted = wants_interrupt(q, mem);
        if wanted && queue % 2 == 1 && queue != st.ctrl_index() {
            st.tx_interrupts_wanted += 1;
        }
        wanted
    }
}

/// Whether the driver wants an interrupt for what was just added to the used ring: event idx
/// (virtio-queue's check), else the avail ring's NO_INTERRUPT flag, which virtio-queue does
/// not look at.
fn wants_interrupt(q: &mut Queue, mem: &Mem) -> bool {
    if q.event_idx_enabled() {
        return q.needs_notification(mem).unwrap();
    }
    let flags: u16 = mem.read_obj(GuestAddress(q.avail_ring())).unwrap();
    flags & 1 == 0
}

/// A fake virtio-net function (modern ID 1af4:1041) with `max_pairs` pairs and a control
/// queue, queues of `queue_size` entries.
pub fn net_platform(
    features: u64,
    max_pairs: u16,
    queue_size: u16,
) -> (FakePlatform, Rc<RefCell<NetState>>) {
    let state = Rc::new(RefCell::new(NetState {
        features,
        mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x56],
        status: 1,
        max_pairs,
        tx: Vec::new(),
        ctrl: Vec::new(),
        ctrl_ack: 0,
        hold_tx: false,
        held_tx: Vec::new(),
        tx_interrupts_wanted: 0,
        notifies: Vec::new(),
    }));
    let queues = vec![queue_size; usize::from(2 * max_pairs + 1)];
    let p = FakePlatform::new(
        Box::new(FakeNet {
            state: state.clone(),
        }),
        queues,
    );
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1041u16.to_le_bytes());
    p.cfg.borrow_mut()[0x0B] = 0x02; // network controller
    (p, state)
}

/// What [`inject_rx`] should put in the header.
#[derive(Debug, Clone, Copy, Default)]
pub struct RxHeader {
    pub flags: u8,
    pub csum_start: u16,
    pub csum_offset: u16,
    /// num_buffers as written; None: the number of buffers really used.
    pub num_buffers: Option<u16>,
}

/// Deliver `frame` (behind its header) on RX queue `2 * pair`, at most `per_buffer` bytes in
/// each buffer (header included), as a device with MRG_RXBUF does; then interrupt if the
/// driver wants it. Returns the number of buffers used, or None if the ring had too few.
pub fn inject_rx(
    p: &FakePlatform,
    pair: u16,
    frame: &[u8],
    header: RxHeader,
    per_buffer: usize,
) -> Option<usize> {
    let index = 2 * pair;
    let interrupt = {
        let mut dev = p.dev.borrow_mut();
        let q = dev.queues[usize::from(index)].as_mut().unwrap();
        let total = HDR + frame.len();
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < total {
            let Some(chain) = q.pop_descriptor_chain(&p.mem) else {
                // Give the buffers back to the ring: not enough room for the frame.
                let back = q.next_avail().wrapping_sub(chains.len() as u16);
                q.set_next_avail(back);
                return None;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            assert_eq!(descs.len(), 1, "one buffer per RX chain");
            assert!(descs[0].is_write_only(), "RX buffers are device-writable");
            let take = (descs[0].len() as usize).min(per_buffer);
            room += take;
            chains.push((head, descs[0].addr(), take));
        }
        let mut bytes = vec![0u8; HDR];
        bytes[0] = header.flags;
        bytes[6..8].copy_from_slice(&header.csum_start.to_le_bytes());
        bytes[8..10].copy_from_slice(&header.csum_offset.to_le_bytes());
        let n = header.num_buffers.unwrap_or(chains.len() as u16);
        bytes[10..12].copy_from_slice(&n.to_le_bytes());
        bytes.extend_from_slice(frame);
        let mut at = 0;
        for &(head, addr, take) in &chains {
            let part = &bytes[at..(at + take).min(bytes.len())];
            p.mem.write_slice(part, addr).unwrap();
            q.add_used(&p.mem, head, part.len() as u32).unwrap();
            at += part.len();
        }
        let used = chains.len();
        (wants_interrupt(q, &p.mem), used)
    };
    if interrupt.0 {
        p.queue_interrupt(index);
    }
    Some(interrupt.1)
}

/// Take one RX buffer of `pair` and complete it with exactly `bytes` written and a used
/// length of `len` (which may lie). Returns its head.
pub fn complete_rx_raw(p: &FakePlatform, pair: u16, bytes: &[u8], len: u32) -> u16 {
    let mut dev = p.dev.borrow_mut();
    let q = dev.queues[usize::from(2 * pair)].as_mut().unwrap();
    let chain = q.pop_descriptor_chain(&p.mem).expect("an RX buffer");
    let head = chain.head_index();
    let d = chain.collect::<Vec<_>>()[0];
    p.mem.write_slice(bytes, d.addr()).unwrap();
    push_used_raw(q, &p.mem, u32::from(head), len);
    head
}

/// Write a used element as given (any id, any length), bypassing virtio-queue's checks.
pub fn push_used_raw(q: &mut Queue, mem: &Mem, id: u32, len: u32) {
    let used = q.used_ring();
    let next = q.next_used();
    let slot = u64::from(next % q.size());
    mem.write_obj(id, GuestAddress(used + 4 + 8 * slot))
        .unwrap();
    mem.write_obj(len, GuestAddress(used + 8 + 8 * slot))
        .unwrap();
    let next = next.wrapping_add(1);
    q.set_next_used(next);
    mem.write_obj(next, GuestAddress(used + 2)).unwrap();
}

/// Set the used index of queue `index` to `idx` directly (a device that jumps it).
pub fn set_used_idx(p: &FakePlatform, index: u16, idx: u16) {
    let dev = p.dev.borrow();
    let q = dev.queues[usize::from(index)].as_ref().unwrap();
    p.mem
        .write_obj(idx, GuestAddress(q.used_ring() + 2))
        .unwrap();
}

/// Complete the held TX chains.
pub fn release_tx(p: &FakePlatform, st: &Rc<RefCell<NetState>>) {
    let held = std::mem::take(&mut st.borrow_mut().held_tx);
    let mut dev = p.dev.borrow_mut();
    for (queue, head) in held {
        let q = dev.queues[usize::from(queue)].as_mut().unwrap();
        q.add_used(&p.mem, head, 0).unwrap();
    }
}
