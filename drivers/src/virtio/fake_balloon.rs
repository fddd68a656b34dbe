//! A fake virtio-balloon device for the driver's host tests: a [`Backend`] of the fake
//! virtio-pci function (rust-vmm's virtio-queue is the device side), with `num_pages`, the
//! `actual` the driver writes, every PFN it sent on each queue, the statistics it reported,
//! and misbehaviour on demand (hold buffers, garbage used lengths or ids).

use super::fake::{Backend, FakePlatform, Mem};
use std::boxed::Box;
use std::cell::RefCell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Feature bits, spelled out independently of the driver.
pub mod bits {
    pub const STATS_VQ: u64 = 1 << 1;
    pub const DEFLATE_ON_OOM: u64 = 1 << 2;
    pub const PAGE_REPORTING: u64 = 1 << 5;
    pub const VERSION_1: u64 = 1 << 32;
}

/// How the fake answers chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehave {
    #[default]
    No,
    /// Never use inflate or deflate buffers.
    Hold,
    /// Use them with this (device-readable buffers must get 0) length.
    UsedLen(u32),
    /// Use them under a descriptor id that was never posted.
    BadId,
}

#[derive(Default)]
pub struct BalloonState {
    pub features: u64,
    pub num_pages: u32,
    pub actual: u32,
    /// PFNs per inflate buffer, in order.
    pub inflated: Vec<Vec<u32>>,
    pub deflated: Vec<Vec<u32>>,
    /// (address, length, device-writable) of each descriptor of each report.
    pub reports: Vec<Vec<(u64, u32, bool)>>,
    /// (tag, value) pairs of each stats buffer.
    pub stats: Vec<Vec<(u16, u64)>>,
    /// Keep the stats buffer instead of returning it (as QEMU does without a polling interval).
    pub hold_stats: bool,
    pub misbehave: Misbehave,
}

pub struct FakeBalloon {
    pub state: Rc<RefCell<BalloonState>>,
}

fn readable_bytes(chain: virtio_queue::DescriptorChain<&Mem>, mem: &Mem) -> Vec<u8> {
    let mut out = Vec::new();
    for d in chain {
        assert!(!d.is_write_only(), "balloon buffers are device-readable");
        let mut b = vec![0u8; d.len() as usize];
        mem.read_slice(&mut b, d.addr()).unwrap();
        out.extend(b);
    }
    out
}

impl Backend for FakeBalloon {
    fn features(&self) -> u64 {
        self.state.borrow().features
    }

    fn config(&self) -> Vec<u8> {
        let st = self.state.borrow();
        let mut c = vec![0u8; 16];
        c[0..4].copy_from_slice(&st.num_pages.to_le_bytes());
        c[4..8].copy_from_slice(&st.actual.to_le_bytes());
        c
    }

    fn write_config(&mut self, offset: u64, width: u64, value: u64) {
        assert_eq!((offset, width), (4, 4), "only `actual` is writable");
        self.state.borrow_mut().actual = value as u32;
    }

    fn process(&mut self, queue: u16, q: &mut Queue, mem: &Mem) -> bool {
        let mut st = self.state.borrow_mut();
        let mut used = false;
        // The reporting queue follows the stats queue, or takes its index without STATS_VQ.
        let reporting = if st.features & bits::STATS_VQ != 0 {
            3
        } else {
            2
        };
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if queue == reporting {
                let descs = chain
                    .map(|d| (d.addr().0, d.len(), d.is_write_only()))
                    .collect();
                st.reports.push(descs);
                if st.misbehave == Misbehave::Hold {
                    continue;
                }
                q.add_used(mem, head, 0).unwrap();
                used = true;
                continue;
            }
            let bytes = readable_bytes(chain, mem);
            if queue == 2 {
                let stats = bytes
                    .as_chunks::<10>()
                    .0
                    .iter()
                    .map(|c| {
                        (
                            u16::from_le_bytes([c[0], c[1]]),
                            u64::from_le_bytes(c[2..10].try_into().unwrap()),
                        )
                    })
                    .collect();
                st.stats.push(stats);
                if !st.hold_stats {
                    q.add_used(mem, head, 0).unwrap();
                    used = true;
                }
                continue;
            }
            assert_eq!(bytes.len() % 4, 0, "PFN arrays are le32");
            let pfns: Vec<u32> = bytes
                .as_chunks::<4>()
                .0
                .iter()
                .map(|c| u32::from_le_bytes(*c))
                .collect();
            if queue == 0 {
                st.inflated.push(pfns);
            } else {
                st.deflated.push(pfns);
            }
            match st.misbehave {
                Misbehave::No => q.add_used(mem, head, 0).unwrap(),
                Misbehave::Hold => continue,
                Misbehave::UsedLen(n) => q.add_used(mem, head, n).unwrap(),
                Misbehave::BadId => {
                    // add_used refuses an id outside the ring; write one inside it that no
                    // chain has.
                    let used_ring = q.used_ring();
                    let idx: u16 = mem.read_obj(GuestAddress(used_ring + 2)).unwrap();
                    let slot = used_ring + 4 + 8 * u64::from(idx % q.size());
                    mem.write_obj((head as u32 + 1) % u32::from(q.size()), GuestAddress(slot))
                        .unwrap();
                    mem.write_obj(0u32, GuestAddress(slot + 4)).unwrap();
                    mem.write_obj(idx.wrapping_add(1), GuestAddress(used_ring + 2))
                        .unwrap();
                }
            }
            used = true;
        }
        used
    }
}

/// A fake balloon function (1af4:1045) offering `features` with four queues.
pub fn balloon_platform(
    features: u64,
    num_pages: u32,
) -> (FakePlatform, Rc<RefCell<BalloonState>>) {
    let state = Rc::new(RefCell::new(BalloonState {
        features,
        num_pages,
        ..BalloonState::default()
    }));
    let p = FakePlatform::new(
        Box::new(FakeBalloon {
            state: state.clone(),
        }),
        vec![128, 128, 128, 128],
    );
    p.cfg.borrow_mut()[2..4].copy_from_slice(&0x1045u16.to_le_bytes());
    p.cfg.borrow_mut()[0x0B] = 0x05; // memory controller
    (p, state)
}

/// Bump the config generation and signal a configuration change, as a device does after
/// changing `num_pages`.
pub fn set_target(p: &FakePlatform, st: &Rc<RefCell<BalloonState>>, num_pages: u32) {
    st.borrow_mut().num_pages = num_pages;
    {
        let mut dev = p.dev.borrow_mut();
        dev.generation = dev.generation.wrapping_add(1);
    }
    p.config_interrupt();
}
