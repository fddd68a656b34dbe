//! Discard and write-zeroes (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES; virtio 1.2
//! §5.2.6): the request's data is an array of [`DiscardSegment`]s, each a sector range and
//! flags, checked here against the limits the device's configuration gives.
//!
//! What the spec guarantees: after a write-zeroes, the range reads as zeroes (with or without
//! UNMAP); after a discard, it reads as zeroes or as its old data.

use core::mem::size_of;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{blk_feature, req_type, BlkError, VirtioBlk};
use crate::platform::Platform;

/// `struct virtio_blk_discard_write_zeroes`: one range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct DiscardSegment {
    pub sector: U64,
    pub num_sectors: U32,
    /// [`FLAG_UNMAP`] or 0.
    pub flags: U32,
}

const _: () = assert!(core::mem::size_of::<DiscardSegment>() == 16);

/// A write-zeroes may deallocate the range (must be clear on a discard).
pub const FLAG_UNMAP: u32 = 1;

/// The discard and write-zeroes fields of `struct virtio_blk_config` (§5.2.4), by offset.
mod cfg {
    pub const MAX_DISCARD_SECTORS: u64 = 36;
    pub const MAX_DISCARD_SEG: u64 = 40;
    pub const DISCARD_SECTOR_ALIGNMENT: u64 = 44;
    pub const MAX_WRITE_ZEROES_SECTORS: u64 = 48;
    pub const MAX_WRITE_ZEROES_SEG: u64 = 52;
    pub const WRITE_ZEROES_MAY_UNMAP: u64 = 56;
}

/// What the device accepts, from its configuration; zero for a feature not negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscardLimits {
    /// Sectors per discard segment.
    pub max_discard_sectors: u32,
    /// Segments per discard request.
    pub max_discard_seg: u32,
    /// In sectors: a hint for splitting, not a rule.
    pub discard_sector_alignment: u32,
    pub max_write_zeroes_sectors: u32,
    pub max_write_zeroes_seg: u32,
    /// The device may deallocate on a write-zeroes with UNMAP.
    pub write_zeroes_may_unmap: bool,
}

/// The request kinds of this module.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Discard,
    WriteZeroes,
}

impl<'p, P: Platform + ?Sized> VirtioBlk<'p, P> {
    /// The discard and write-zeroes limits, read from the device's configuration. A zero
    /// limit reads as Linux takes it: any number of sectors, one segment.
    pub fn discard_limits(&self) -> Result<DiscardLimits, BlkError> {
        let read = |off| self.transport.config_read32(off);
        let or = |v: u32, default: u32| if v == 0 { default } else { v };
        let mut l = DiscardLimits::default();
        if self.features & blk_feature::DISCARD != 0 {
            l.max_discard_sectors = or(read(cfg::MAX_DISCARD_SECTORS)?, u32::MAX);
            l.max_discard_seg = or(read(cfg::MAX_DISCARD_SEG)?, 1);
            l.discard_sector_alignment = read(cfg::DISCARD_SECTOR_ALIGNMENT)?;
        }
        if self.features & blk_feature::WRITE_ZEROES != 0 {
            l.max_write_zeroes_sectors = or(read(cfg::MAX_WRITE_ZEROES_SECTORS)?, u32::MAX);
            l.max_write_zeroes_seg = or(read(cfg::MAX_WRITE_ZEROES_SEG)?, 1);
            l.write_zeroes_may_unmap =
                self.transport.config_read8(cfg::WRITE_ZEROES_MAY_UNMAP)? != 0;
        }
        Ok(l)
    }

    /// Discard `count` sectors at `sector`: they then read as zeroes or as before.
    pub fn discard(&mut self, sector: u64, count: u32) -> Result<(), BlkError> {
        self.discard_ranges(&[(sector, count)])
    }

    /// Discard several ranges in one request (at most `max_discard_seg`).
    pub fn discard_ranges(&mut self, ranges: &[(u64, u32)]) -> Result<(), BlkError> {
        self.run_ranges(Kind::Discard, ranges, 0)
    }

    /// Make `count` sectors at `sector` read as zeroes; `unmap` lets the device deallocate
    /// them.
    pub fn write_zeroes(&mut self, sector: u64, count: u32, unmap: bool) -> Result<(), BlkError> {
        let flags = if unmap { FLAG_UNMAP } else { 0 };
        self.run_ranges(Kind::WriteZeroes, &[(sector, count)], flags)
    }

    /// Check `ranges` against the negotiated features and limits, then submit them as one
    /// request and wait for it.
    fn run_ranges(
        &mut self,
        kind: Kind,
        ranges: &[(u64, u32)],
        flags: u32,
    ) -> Result<(), BlkError> {
        let (feature, ty) = match kind {
            Kind::Discard => (blk_feature::DISCARD, req_type::DISCARD),
            Kind::WriteZeroes => (blk_feature::WRITE_ZEROES, req_type::WRITE_ZEROES),
        };
        if self.features & feature == 0 {
            return Err(BlkError::NotNegotiated(feature));
        }
        if self.read_only() {
            return Err(BlkError::ReadOnly);
        }
        let limits = self.discard_limits()?;
        let (max_sectors, max_seg) = match kind {
            Kind::Discard => (limits.max_discard_sectors, limits.max_discard_seg),
            Kind::WriteZeroes => (limits.max_write_zeroes_sectors, limits.max_write_zeroes_seg),
        };
        if ranges.is_empty() || ranges.len() > max_seg as usize {
            return Err(BlkError::TooManySegments {
                segments: ranges.len(),
                max: max_seg,
            });
        }
        for &(sector, count) in ranges {
            if count == 0 {
                return Err(BlkError::BadLength(0));
            }
            if count > max_sectors {
                return Err(BlkError::TooManySectors {
                    sectors: count,
                    max: max_sectors,
                });
            }
            self.check_range(sector, u64::from(count))?;
        }
        let size = ranges.len() * size_of::<DiscardSegment>();
        let mut buffer = self.platform.dma_alloc(size, 16)?;
        let (slots, _) = buffer
            .as_mut_slice()
            .as_chunks_mut::<{ size_of::<DiscardSegment>() }>();
        for (slot, &(sector, count)) in slots.iter_mut().zip(ranges) {
            let segment = DiscardSegment {
                sector: U64::new(sector),
                num_sectors: U32::new(count),
                flags: U32::new(flags),
            };
            slot.copy_from_slice(segment.as_bytes());
        }
        // The header's sector is unused: the segments carry the ranges.
        let submitted = self.submit(ty, 0, Some(buffer), false);
        self.run_with_buffer(submitted, |_| {}).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::blk::{req_status, DRIVER_FEATURES};
    use crate::virtio::fake::{Backend, FakePlatform, Mem};
    use crate::virtio::feature;
    use crate::virtio::pci::InterruptMode;
    use std::boxed::Box;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::vec;
    use std::vec::Vec;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const SECTORS: u64 = 64;

    /// A request's type and its segments (sector, sectors, flags).
    type Seen = (u32, Vec<(u64, u32, u32)>);

    #[derive(Default)]
    struct State {
        disk: Vec<u8>,
        /// Every discard or write-zeroes seen.
        seen: Vec<Seen>,
        force_status: Option<u8>,
    }

    /// A virtio-blk device that serves discard and write-zeroes (both zero the range) and
    /// reads, with the given limits in its configuration.
    struct FakeDiscard {
        features: u64,
        limits: DiscardLimits,
        state: Rc<RefCell<State>>,
    }

    impl Backend for FakeDiscard {
        fn features(&self) -> u64 {
            self.features
        }
        fn config(&self) -> Vec<u8> {
            let l = &self.limits;
            let mut c = vec![0u8; 60];
            c[0..8].copy_from_slice(&SECTORS.to_le_bytes());
            for (off, v) in [
                (cfg::MAX_DISCARD_SECTORS, l.max_discard_sectors),
                (cfg::MAX_DISCARD_SEG, l.max_discard_seg),
                (cfg::DISCARD_SECTOR_ALIGNMENT, l.discard_sector_alignment),
                (cfg::MAX_WRITE_ZEROES_SECTORS, l.max_write_zeroes_sectors),
                (cfg::MAX_WRITE_ZEROES_SEG, l.max_write_zeroes_seg),
            ] {
                c[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
            }
            c[cfg::WRITE_ZEROES_MAY_UNMAP as usize] = l.write_zeroes_may_unmap.into();
            c
        }
        fn process(&mut self, _: u16, q: &mut Queue, mem: &Mem) -> bool {
            let mut st = self.state.borrow_mut();
            let mut done = false;
            while let Some(chain) = q.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let descs: Vec<_> = chain.collect();
                let (h, s) = (descs[0], descs[descs.len() - 1]);
                let kind: u32 = mem.read_obj(h.addr()).unwrap();
                let sector: u64 = mem.read_obj(GuestAddress(h.addr().0 + 8)).unwrap();
                let mut status = req_status::OK;
                let mut written = 1;
                let data = &descs[1..descs.len() - 1];
                match kind {
                    req_type::DISCARD | req_type::WRITE_ZEROES => {
                        assert_eq!(data.len(), 1);
                        assert!(!data[0].is_write_only(), "segments are device-readable");
                        assert_eq!(data[0].len() % 16, 0);
                        let mut bytes = vec![0u8; data[0].len() as usize];
                        mem.read_slice(&mut bytes, data[0].addr()).unwrap();
                        let mut segs = Vec::new();
                        for seg in bytes.as_chunks::<16>().0 {
                            let seg = DiscardSegment::read_from_bytes(seg).unwrap();
                            let (start, n) = (seg.sector.get(), seg.num_sectors.get());
                            segs.push((start, n, seg.flags.get()));
                            let range = start as usize * 512..(start as usize + n as usize) * 512;
                            st.disk[range].fill(0);
                        }
                        st.seen.push((kind, segs));
                    }
                    req_type::IN => {
                        let d = data[0];
                        let off = sector as usize * 512;
                        mem.write_slice(&st.disk[off..off + d.len() as usize], d.addr())
                            .unwrap();
                        written += d.len();
                    }
                    _ => status = req_status::UNSUPP,
                }
                let status = st.force_status.unwrap_or(status);
                mem.write_obj(status, s.addr()).unwrap();
                q.add_used(mem, head, written).unwrap();
                done = true;
            }
            done
        }
    }

    const BOTH: u64 = feature::VERSION_1 | blk_feature::DISCARD | blk_feature::WRITE_ZEROES;

    const LIMITS: DiscardLimits = DiscardLimits {
        max_discard_sectors: 16,
        max_discard_seg: 4,
        discard_sector_alignment: 8,
        max_write_zeroes_sectors: 32,
        max_write_zeroes_seg: 1,
        write_zeroes_may_unmap: true,
    };

    fn setup(features: u64, limits: DiscardLimits) -> (FakePlatform, Rc<RefCell<State>>) {
        let state = Rc::new(RefCell::new(State {
            disk: vec![0xa5; SECTORS as usize * 512],
            ..State::default()
        }));
        let backend = FakeDiscard {
            features,
            limits,
            state: state.clone(),
        };
        (FakePlatform::new(Box::new(backend), vec![64]), state)
    }

    fn open(p: &FakePlatform) -> VirtioBlk<'_, FakePlatform> {
        VirtioBlk::new(p, &p.function(), InterruptMode::Polled, 32).unwrap()
    }

    #[test]
    fn the_driver_asks_for_both() {
        assert_ne!(DRIVER_FEATURES & blk_feature::DISCARD, 0);
        assert_ne!(DRIVER_FEATURES & blk_feature::WRITE_ZEROES, 0);
        let (p, _) = setup(BOTH, LIMITS);
        let blk = open(&p);
        assert_eq!(blk.features() & BOTH, BOTH);
        assert_eq!(blk.discard_limits(), Ok(LIMITS));
    }

    #[test]
    fn discard_and_write_zeroes_send_their_segments() {
        let (p, st) = setup(BOTH, LIMITS);
        let mut blk = open(&p);
        blk.discard(8, 16).unwrap();
        blk.discard_ranges(&[(0, 1), (30, 2), (63, 1)]).unwrap();
        blk.write_zeroes(40, 8, false).unwrap();
        blk.write_zeroes(48, 16, true).unwrap();
        assert_eq!(
            st.borrow().seen,
            [
                (req_type::DISCARD, vec![(8, 16, 0)]),
                (req_type::DISCARD, vec![(0, 1, 0), (30, 2, 0), (63, 1, 0)]),
                (req_type::WRITE_ZEROES, vec![(40, 8, 0)]),
                (req_type::WRITE_ZEROES, vec![(48, 16, FLAG_UNMAP)]),
            ]
        );
        let mut buf = vec![0xffu8; 8 * 512];
        blk.read(40, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn limits_and_range_are_checked_before_submitting() {
        let (p, st) = setup(BOTH, LIMITS);
        let mut blk = open(&p);
        let refused = [
            (
                blk.discard(0, 17),
                BlkError::TooManySectors {
                    sectors: 17,
                    max: 16,
                },
            ),
            (
                blk.write_zeroes(0, 33, true),
                BlkError::TooManySectors {
                    sectors: 33,
                    max: 32,
                },
            ),
            (
                blk.discard_ranges(&[(0, 1); 5]),
                BlkError::TooManySegments {
                    segments: 5,
                    max: 4,
                },
            ),
            (
                blk.discard_ranges(&[]),
                BlkError::TooManySegments {
                    segments: 0,
                    max: 4,
                },
            ),
            (blk.discard(0, 0), BlkError::BadLength(0)),
            (
                blk.discard(60, 5),
                BlkError::OutOfRange {
                    sector: 60,
                    sectors: 5,
                    capacity: SECTORS,
                },
            ),
            (
                blk.write_zeroes(u64::MAX, 1, false),
                BlkError::OutOfRange {
                    sector: u64::MAX,
                    sectors: 1,
                    capacity: SECTORS,
                },
            ),
        ];
        for (got, want) in refused {
            assert_eq!(got, Err(want));
        }
        assert!(st.borrow().seen.is_empty(), "nothing reached the device");
        assert_eq!(blk.in_flight(), 0);
    }

    #[test]
    fn without_the_features_nothing_is_submitted() {
        let (p, st) = setup(feature::VERSION_1, LIMITS);
        let mut blk = open(&p);
        assert_eq!(blk.discard_limits(), Ok(DiscardLimits::default()));
        assert_eq!(
            blk.discard(0, 1),
            Err(BlkError::NotNegotiated(blk_feature::DISCARD))
        );
        assert_eq!(
            blk.write_zeroes(0, 1, false),
            Err(BlkError::NotNegotiated(blk_feature::WRITE_ZEROES))
        );
        // Negotiated one but not the other.
        let (p2, _) = setup(feature::VERSION_1 | blk_feature::WRITE_ZEROES, LIMITS);
        let mut blk2 = open(&p2);
        assert_eq!(
            blk2.discard(0, 1),
            Err(BlkError::NotNegotiated(blk_feature::DISCARD))
        );
        blk2.write_zeroes(0, 1, false).unwrap();
        assert!(st.borrow().seen.is_empty());
    }

    #[test]
    fn a_read_only_device_is_refused() {
        let (p, st) = setup(BOTH | blk_feature::RO, LIMITS);
        let mut blk = open(&p);
        assert_eq!(blk.discard(0, 1), Err(BlkError::ReadOnly));
        assert_eq!(blk.write_zeroes(0, 1, true), Err(BlkError::ReadOnly));
        assert!(st.borrow().seen.is_empty());
    }

    #[test]
    fn zero_limits_read_as_linux_takes_them() {
        let (p, _) = setup(BOTH, DiscardLimits::default());
        let mut blk = open(&p);
        let l = blk.discard_limits().unwrap();
        assert_eq!((l.max_discard_sectors, l.max_discard_seg), (u32::MAX, 1));
        assert_eq!(
            (l.max_write_zeroes_sectors, l.max_write_zeroes_seg),
            (u32::MAX, 1)
        );
        assert!(!l.write_zeroes_may_unmap);
        blk.discard(0, SECTORS as u32).unwrap();
        assert_eq!(
            blk.discard_ranges(&[(0, 1), (1, 1)]),
            Err(BlkError::TooManySegments {
                segments: 2,
                max: 1
            })
        );
    }

    #[test]
    fn device_errors_reach_the_caller() {
        let (p, st) = setup(BOTH, LIMITS);
        let mut blk = open(&p);
        for (status, want) in [
            (req_status::IOERR, BlkError::IoError),
            (req_status::UNSUPP, BlkError::Unsupported),
            (0x7f, BlkError::BadStatus(0x7f)),
        ] {
            st.borrow_mut().force_status = Some(status);
            assert_eq!(blk.discard(0, 1), Err(want));
            assert_eq!(blk.write_zeroes(0, 1, true), Err(want));
        }
        st.borrow_mut().force_status = None;
        blk.discard(0, 1).unwrap();
        assert_eq!(blk.in_flight(), 0);
    }
}
