//! Discard and write-zeroes (VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES; virtio 1.2
//! §5.2.6): the data-out buffer is an array of 16-byte segments (`struct
//! virtio_blk_discard_write_zeroes`: sector, num_sectors, flags), each a range of the disk.
//!
//! Every segment is checked before any is run, so a refused request changes nothing:
//! - IOERR: a read-only disk, a data length that is not whole segments, a range past the end
//!   or overflowing, more sectors than the configuration's limit, a failing backend;
//! - UNSUPP (the spec's MUST): unknown flag bits, UNMAP on a discard; and more segments than
//!   `max_discard_seg`/`max_write_zeroes_seg`, as QEMU answers a request beyond its one.
//!
//! The backend does the work: a discard punches a hole where it can; a write-zeroes reads back
//! as zeroes, punched when UNMAP allows it (`write_zeroes_may_unmap` is 1).

use super::config::SECTOR_SIZE;
use super::request::{total, Request, RequestType, Seg};
use crate::backends::disk::DiskBackend;
use crate::devices::virtio::Memory;
use std::mem::size_of;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, virtio_blk_discard_write_zeroes, VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::Bytes;

/// The feature bits this module serves.
pub const FEATURES: u64 = 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
/// Segments per request, for either kind (Linux merges up to this many discards into one).
pub const MAX_SEG: u32 = 16;
/// Sectors per segment: QEMU's limit (its largest request, just under 2 GiB), or the disk's
/// capacity if smaller.
pub const MAX_SECTORS: u32 = (i32::MAX as u32) >> 9;
/// 4 KiB, the host file system's block: a hole is punched only in whole blocks, so discards
/// aligned to it free space.
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// One segment's bytes.
pub const SEGMENT_LEN: usize = size_of::<virtio_blk_discard_write_zeroes>();

const _: () = assert!(SEGMENT_LEN == 16);

/// The configuration fields of both features for a disk of `capacity` sectors, the rest
/// zero (for `..` in [`super::BlkConfig::new`]).
pub fn config(capacity: u64) -> virtio_blk_config {
    let max_sectors = capacity.min(u64::from(MAX_SECTORS)) as u32;
    virtio_blk_config {
        max_discard_sectors: max_sectors.to_le(),
        max_discard_seg: MAX_SEG.to_le(),
        discard_sector_alignment: DISCARD_SECTOR_ALIGNMENT.to_le(),
        max_write_zeroes_sectors: max_sectors.to_le(),
        max_write_zeroes_seg: MAX_SEG.to_le(),
        write_zeroes_may_unmap: 1,
        ..Default::default()
    }
}

/// One segment as read from the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    pub sector: u64,
    pub num_sectors: u32,
    pub flags: u32,
}

impl Segment {
    fn from_le_bytes(b: &[u8; SEGMENT_LEN]) -> Self {
        let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = *b;
        Self {
            sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
            num_sectors: u32::from_le_bytes([n0, n1, n2, n3]),
            flags: u32::from_le_bytes([f0, f1, f2, f3]),
        }
    }

    fn unmap(&self) -> bool {
        self.flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
    }
}

/// Why a request is refused, and so the status it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    IoErr(&'static str),
    Unsupp(&'static str),
}

impl Refused {
    fn status(self) -> u8 {
        match self {
            Self::IoErr(_) => VIRTIO_BLK_S_IOERR as u8,
            Self::Unsupp(_) => VIRTIO_BLK_S_UNSUPP as u8,
        }
    }
}

/// The segments of a request, checked: at most [`MAX_SEG`], on the stack.
#[derive(Debug)]
pub struct Segments {
    segs: [Segment; MAX_SEG as usize],
    len: usize,
}

impl Segments {
    pub fn as_slice(&self) -> &[Segment] {
        &self.segs[..self.len]
    }
}

/// Read the data-out bytes into `buf` (which `data` holds at least).
fn gather(mem: &Memory, data: &[Seg], buf: &mut [u8]) -> Result<(), Refused> {
    let mut done = 0;
    for s in data {
        if done == buf.len() {
            break;
        }
        let n = (buf.len() - done).min(s.len as usize);
        mem.read_slice(&mut buf[done..done + n], s.addr)
            .map_err(|_| Refused::IoErr("segments unreadable"))?;
        done += n;
    }
    Ok(())
}

/// Read and check every segment of `req` (a discard or write-zeroes) against `disk`.
pub fn check(req: &Request, mem: &Memory, disk: &dyn DiskBackend) -> Result<Segments, Refused> {
    let discard = req.ty == RequestType::Discard;
    if disk.read_only() {
        return Err(Refused::IoErr("read-only disk"));
    }
    let len = total(&req.data_out);
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
        return Err(Refused::IoErr("data is not whole segments"));
    }
    let count = len / SEGMENT_LEN as u64;
    if count > u64::from(MAX_SEG) {
        return Err(Refused::Unsupp("more segments than max_discard_seg"));
    }
    let mut bytes = [0u8; MAX_SEG as usize * SEGMENT_LEN];
    let bytes = &mut bytes[..len as usize];
    gather(mem, &req.data_out, bytes)?;
    let max_sectors = disk.sectors().min(u64::from(MAX_SECTORS));
    let mut out = Segments {
        segs: [Segment::default(); MAX_SEG as usize],
        len: 0,
    };
    for (raw, seg) in bytes.as_chunks::<SEGMENT_LEN>().0.iter().zip(&mut out.segs) {
        *seg = Segment::from_le_bytes(raw);
        if seg.flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
            return Err(Refused::Unsupp("unknown flags"));
        }
        if discard && seg.unmap() {
            return Err(Refused::Unsupp("UNMAP on a discard"));
        }
        if u64::from(seg.num_sectors) > max_sectors {
            return Err(Refused::IoErr("more sectors than the limit"));
        }
        let in_disk = seg
            .sector
            .checked_add(u64::from(seg.num_sectors))
            .is_some_and(|end| end <= disk.sectors());
        if !in_disk {
            return Err(Refused::IoErr("range past the end of the disk"));
        }
        out.len += 1;
    }
    Ok(out)
}

/// Run a discard or write-zeroes request; its status.
pub fn execute(req: &Request, mem: &Memory, disk: &dyn DiskBackend) -> u8 {
    let segments = match check(req, mem, disk) {
        Ok(s) => s,
        Err(refused) => return refused.status(),
    };
    for seg in segments.as_slice() {
        // Checked: inside the disk, so neither product overflows.
        let (offset, len) = (
            seg.sector * SECTOR_SIZE,
            u64::from(seg.num_sectors) * SECTOR_SIZE,
        );
        let done = match req.ty {
            RequestType::Discard => disk.discard(offset, len),
            _ => disk.write_zeroes(offset, len, seg.unmap()),
        };
        if done.is_err() {
            return VIRTIO_BLK_S_IOERR as u8;
        }
    }
    VIRTIO_BLK_S_OK as u8
}

#[cfg(test)]
mod tests {
    use super::super::{handle_chain, Blk, VirtioDevice};
    use super::*;
    use crate::backends::disk::RawDisk;
    use crate::backends::faulty_disk::{Fault, FaultPlan, FaultyDisk};
    use crate::backends::mem_disk::MemDisk;
    use std::os::unix::fs::MetadataExt;
    use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES};
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestAddress;

    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const HDR: u64 = 0x10_000;
    const DATA: u64 = 0x20_000;
    const STATUS: u64 = 0x30_000;
    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
    const UNMAP: u32 = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
    const DISCARD: u32 = VIRTIO_BLK_T_DISCARD;
    const ZEROES: u32 = VIRTIO_BLK_T_WRITE_ZEROES;

    fn mem() -> Memory {
        Memory::from_ranges(&[(GuestAddress(0), 0x100_000)]).unwrap()
    }

    /// `sectors` sectors, each byte non-zero.
    fn disk(sectors: u64, ro: bool) -> MemDisk {
        MemDisk::patterned(sectors, ro, |i| (i % 251) as u8 | 1).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, next))
    }

    /// A hostile request: why it is one, its type, its segments, the status it must get.
    type Case = (&'static str, u32, Vec<(u64, u32, u32)>, u8);

    fn segment_bytes(segs: &[(u64, u32, u32)]) -> Vec<u8> {
        let mut b = Vec::new();
        for &(sector, n, flags) in segs {
            b.extend(sector.to_le_bytes());
            b.extend(n.to_le_bytes());
            b.extend(flags.to_le_bytes());
        }
        b
    }

    /// Run one request of type `ty` whose data-out is `data` through `handle_chain`, with
    /// `descs` as the chain (header at HDR, data at DATA, status at STATUS); its status.
    fn run_chain(
        m: &Memory,
        ty: u32,
        data: &[u8],
        descs: &[RawDescriptor],
        dk: &dyn DiskBackend,
    ) -> u8 {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&ty.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        m.write_slice(data, GuestAddress(DATA)).unwrap();
        m.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let vq = MockSplitQueue::new(m, 16);
        vq.add_desc_chains(descs, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        assert_eq!(handle_chain(m, chain, dk, &[0; 20]), 1, "only the status");
        m.read_obj(GuestAddress(STATUS)).unwrap()
    }

    /// A request of type `ty` with `segs` as its data, in the usual three descriptors.
    fn run(m: &Memory, ty: u32, segs: &[(u64, u32, u32)], dk: &dyn DiskBackend) -> u8 {
        let data = segment_bytes(segs);
        let descs = [
            d(HDR, 16, NEXT, 1),
            d(DATA, data.len() as u32, NEXT, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        run_chain(m, ty, &data, &descs, dk)
    }

    #[test]
    fn both_features_are_offered_with_their_limits() {
        let blk = Blk::new(Box::new(disk(8, false)), [0; 20]);
        assert_eq!(blk.features() & FEATURES, FEATURES);
        let ro = Blk::new(Box::new(disk(8, true)), [0; 20]);
        assert_eq!(
            ro.features() & FEATURES,
            FEATURES,
            "refused per request, as QEMU"
        );
        let field = |blk: &Blk, offset: u64| {
            let mut w = [0u8; 4];
            blk.read_config(offset, &mut w);
            u32::from_le_bytes(w)
        };
        // A small disk bounds the sector limits.
        assert_eq!(
            [36, 40, 44, 48, 52].map(|o| field(&blk, o)),
            [8, MAX_SEG, DISCARD_SECTOR_ALIGNMENT, 8, MAX_SEG]
        );
        let mut may_unmap = [0u8];
        blk.read_config(56, &mut may_unmap);
        assert_eq!(may_unmap, [1]);
        let big = Blk::new(Box::new(MemDisk::zeroed(1 << 23, false).unwrap()), [0; 20]);
        assert_eq!(field(&big, 36), MAX_SECTORS);
        assert_eq!(field(&big, 48), MAX_SECTORS);
    }

    #[test]
    fn discard_and_write_zeroes_zero_their_ranges() {
        let m = mem();
        let dk = disk(64, false);
        let mut want = dk.contents();
        let zero = |want: &mut Vec<u8>, sector: usize, n: usize| {
            want[sector * 512..(sector + n) * 512].fill(0);
        };
        assert_eq!(run(&m, DISCARD, &[(0, 1, 0), (10, 6, 0)], &dk), OK);
        zero(&mut want, 0, 1);
        zero(&mut want, 10, 6);
        assert_eq!(dk.contents(), want);
        assert_eq!(run(&m, ZEROES, &[(20, 4, 0)], &dk), OK);
        zero(&mut want, 20, 4);
        assert_eq!(run(&m, ZEROES, &[(30, 2, UNMAP), (63, 1, 0)], &dk), OK);
        zero(&mut want, 30, 2);
        zero(&mut want, 63, 1);
        assert_eq!(dk.contents(), want);
        // All MAX_SEG segments, and zero-sector segments (nothing to do) at the very end.
        let full: Vec<_> = (0..MAX_SEG as u64).map(|i| (40 + i, 1, 0)).collect();
        assert_eq!(run(&m, DISCARD, &full, &dk), OK);
        zero(&mut want, 40, MAX_SEG as usize);
        assert_eq!(run(&m, ZEROES, &[(64, 0, 0)], &dk), OK);
        assert_eq!(dk.contents(), want);
    }

    #[test]
    fn segments_split_over_descriptors_are_read_whole() {
        let m = mem();
        let dk = disk(8, false);
        let data = segment_bytes(&[(2, 3, 0)]);
        let descs = [
            d(HDR, 16, NEXT, 1),
            d(DATA, 5, NEXT, 2),
            d(DATA + 5, 11, NEXT, 3),
            d(STATUS, 1, WRITE, 0),
        ];
        assert_eq!(run_chain(&m, DISCARD, &data, &descs, &dk), OK);
        assert!(dk.contents()[1024..2560].iter().all(|&b| b == 0));
        assert!(dk.contents()[..1024].iter().all(|&b| b != 0));
        // The header and segments in one descriptor.
        let dk = disk(8, false);
        m.write_slice(&data, GuestAddress(HDR + 16)).unwrap();
        let one = [d(HDR, 32, NEXT, 1), d(STATUS, 1, WRITE, 0)];
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ZEROES.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&one, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        assert_eq!(handle_chain(&m, chain, &dk, &[0; 20]), 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), OK);
        assert!(dk.contents()[1024..2560].iter().all(|&b| b == 0));
    }

    /// Every hostile request is refused with the status the spec (or QEMU) gives, and the
    /// disk is left as it was, even when only a later segment is bad.
    #[test]
    fn hostile_requests_are_refused_and_change_nothing() {
        let m = mem();
        let dk = disk(64, false);
        let before = dk.contents();
        let many: Vec<_> = (0..=MAX_SEG as u64).map(|i| (i, 1, 0)).collect();
        // (why, type, segments, status)
        let cases: Vec<Case> = vec![
            ("past the end", DISCARD, vec![(64, 1, 0)], IOERR),
            ("straddling the end", ZEROES, vec![(60, 5, 0)], IOERR),
            ("sector overflow", DISCARD, vec![(u64::MAX, 2, 0)], IOERR),
            (
                "sector * 512 overflow",
                ZEROES,
                vec![(u64::MAX / 256, 1, 0)],
                IOERR,
            ),
            (
                "more sectors than the disk",
                ZEROES,
                vec![(0, 65, UNMAP)],
                IOERR,
            ),
            ("u32::MAX sectors", DISCARD, vec![(0, u32::MAX, 0)], IOERR),
            ("too many segments", DISCARD, many.clone(), UNSUPP),
            ("too many segments", ZEROES, many, UNSUPP),
            ("unknown flag", ZEROES, vec![(0, 1, 2)], UNSUPP),
            ("unknown high flag", DISCARD, vec![(0, 1, 1 << 31)], UNSUPP),
            ("UNMAP on a discard", DISCARD, vec![(0, 1, UNMAP)], UNSUPP),
            (
                "bad second segment",
                DISCARD,
                vec![(0, 8, 0), (63, 2, 0)],
                IOERR,
            ),
            ("bad last flag", ZEROES, vec![(0, 8, 0), (9, 1, 4)], UNSUPP),
        ];
        for (why, ty, segs, want) in cases {
            assert_eq!(run(&m, ty, &segs, &dk), want, "{why} (type {ty})");
            assert_eq!(dk.contents(), before, "{why}: the disk changed");
        }
        // Data that is not whole segments: none, a partial one, one and a bit.
        let data = segment_bytes(&[(0, 1, 0), (1, 1, 0)]);
        for len in [0u32, 1, 15, 17, 31] {
            let descs = match len {
                0 => vec![d(HDR, 16, NEXT, 1), d(STATUS, 1, WRITE, 0)],
                _ => vec![
                    d(HDR, 16, NEXT, 1),
                    d(DATA, len, NEXT, 2),
                    d(STATUS, 1, WRITE, 0),
                ],
            };
            for ty in [DISCARD, ZEROES] {
                assert_eq!(run_chain(&m, ty, &data, &descs, &dk), IOERR, "len {len}");
            }
        }
        // Segments in a device-writable buffer are no data-out at all.
        let data = segment_bytes(&[(0, 1, 0)]);
        let wrongdir = [
            d(HDR, 16, NEXT, 1),
            d(DATA, 16, NEXT | WRITE, 2),
            d(STATUS, 1, WRITE, 0),
        ];
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&DISCARD.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
        m.write_slice(&data, GuestAddress(DATA)).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        vq.add_desc_chains(&wrongdir, 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&m).unwrap().next().unwrap();
        handle_chain(&m, chain, &dk, &[0; 20]);
        assert_eq!(m.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), IOERR);
        assert_eq!(dk.contents(), before);
    }

    #[test]
    fn a_read_only_disk_refuses_both() {
        let m = mem();
        let dk = disk(8, true);
        let before = dk.contents();
        assert_eq!(run(&m, DISCARD, &[(0, 1, 0)], &dk), IOERR);
        assert_eq!(run(&m, ZEROES, &[(0, 1, UNMAP)], &dk), IOERR);
        assert_eq!(run(&m, ZEROES, &[(0, 1, 0)], &dk), IOERR);
        assert_eq!(dk.contents(), before);
    }

    #[test]
    fn a_failing_backend_gets_ioerr_then_recovers() {
        let m = mem();
        let image = disk(8, false);
        let (faulty, switch) = FaultyDisk::new(image.clone());
        switch.set(FaultPlan {
            write: Some(Fault::Eio),
            ..FaultPlan::default()
        });
        assert_eq!(run(&m, DISCARD, &[(0, 1, 0)], &faulty), IOERR);
        assert_eq!(run(&m, ZEROES, &[(1, 1, 0)], &faulty), IOERR);
        switch.set(FaultPlan {
            write: Some(Fault::NoSpace),
            ..FaultPlan::default()
        });
        assert_eq!(run(&m, ZEROES, &[(2, 2, UNMAP)], &faulty), IOERR);
        assert_eq!(switch.injected(), 3);
        switch.heal();
        assert_eq!(run(&m, ZEROES, &[(0, 8, 0)], &faulty), OK);
        assert_eq!(image.contents(), vec![0; 8 * 512]);
    }

    /// On an image file: a discard and a write-zeroes with UNMAP leave holes (fewer blocks on
    /// disk), a write-zeroes without UNMAP keeps its blocks; all three read back as zeroes,
    /// and the image keeps its size.
    #[test]
    fn on_a_raw_image_holes_and_zeroes() {
        const MIB: usize = 1 << 20;
        let dir = std::env::temp_dir().join(format!(
            "vblk-discard-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        std::fs::write(&path, vec![0x5au8; 8 * MIB]).unwrap();
        let blocks = || std::fs::metadata(&path).unwrap().blocks();
        let raw = RawDisk::open(&path, false).unwrap();
        let m = mem();
        let mib_sectors = (MIB / 512) as u32;
        let full = blocks();
        assert_eq!(run(&m, DISCARD, &[(0, 2 * mib_sectors, 0)], &raw), OK);
        let after_discard = blocks();
        // MiB 0-2 discarded, 2-4 untouched, 4-6 zeroed, 6-8 zeroed with UNMAP.
        assert_eq!(
            run(
                &m,
                ZEROES,
                &[(4 * u64::from(mib_sectors), 2 * mib_sectors, 0)],
                &raw
            ),
            OK
        );
        assert_eq!(blocks(), after_discard, "without UNMAP no blocks are freed");
        assert_eq!(
            run(
                &m,
                ZEROES,
                &[(6 * u64::from(mib_sectors), 2 * mib_sectors, UNMAP)],
                &raw
            ),
            OK
        );
        let after_unmap = blocks();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 8 * MIB, "the image keeps its size");
        assert!(bytes[2 * MIB..4 * MIB].iter().all(|&b| b == 0x5a));
        assert!(bytes[4 * MIB..].iter().all(|&b| b == 0));
        // ext4, xfs, btrfs and tmpfs all punch holes; the discard reads as zeroes there.
        let mib_blocks = (MIB / 512) as u64;
        if after_discard < full {
            assert!(bytes[..2 * MIB].iter().all(|&b| b == 0));
            assert!(
                after_discard <= full - 2 * mib_blocks,
                "{full} -> {after_discard}"
            );
            assert!(after_unmap <= after_discard - 2 * mib_blocks);
        } else {
            eprintln!("the temporary directory's file system punches no holes");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
