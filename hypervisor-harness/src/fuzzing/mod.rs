//! Fuzz entry points for the device models (ARCHITECTURE.md, "Tests, in layers", layer 4), one
//! module per device: [`virtio_blk`](mod@virtio_blk), [`ide`](mod@ide), [`e1000`](mod@e1000),
//! [`rtl8139`](mod@rtl8139), [`pci_config`](mod@pci_config) and [`msix`](mod@msix), with the
//! input decoding, disk images and interrupt fakes they share here. Not part of the production
//! harness: compiled for `cargo test` and with the `fuzzing` feature, which the cargo-fuzz
//! crate in `hypervisor-harness/fuzz/` enables.
//!
//! Each entry point reads its input as a program: a header (which disks, how guest memory starts
//! out) and then a bounded sequence of operations, each an opcode byte and its operands, as a
//! guest would issue them: bus reads and writes of any width at offsets in and just around the
//! device's ranges, register programming, queue and PRD table setup, notifies, writes into guest
//! memory (rings, descriptor tables with loops, huge lengths, addresses outside RAM), resets.
//! Missing bytes read as zero, so every input is a valid program.
//!
//! The contract: no panic, bounded work per input ([`MAX_OPS`] operations on a 64 KiB guest and
//! 16-sector disks), and the device's invariants hold after every operation and at the end
//! (status registers sane, interrupts only on vectors that exist, the disks neither grew nor,
//! when read-only, changed, and the device still works after a reset). A violation is a
//! panic, which is what cargo-fuzz and each module's seeded smoke tests report.
//!
//! Guest memory is a real `GuestMemoryMmap` touched only through vm-memory's checked accessors.
//! Disks (virtio-blk's and the IDE drives) are memory disks
//! ([`MemDisk`](crate::backends::mem_disk::MemDisk)), new for each input, behind a
//! [`FaultyDisk`] whose failures (EIO, short reads and writes, ENOSPC, for a few operations or
//! until healed) the program injects and heals before the end-of-run checks: no file I/O per
//! input.

use crate::backends::disk::DiskBackend;
use crate::backends::faulty_disk::{Fault, FaultPlan, FaultSwitch, FaultyDisk};
use crate::backends::mem_disk::MemDisk;
use crate::devices::pci::config::PciConfig;
use crate::devices::pci::msix::MsiMessage;
use crate::devices::pci::PciFunction;
use crate::devices::virtio::{Memory, VirtioInterrupt};
use crate::devices::Interrupt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use vm_memory::{Bytes, GuestAddress};

pub mod balloon;
pub mod console;
#[cfg(test)]
mod corpus;
pub mod debug_exit;
pub mod e1000;
pub mod exit_dispatch;
pub mod floor;
pub mod ide;
pub mod msix;
mod nic_backend;
pub mod pci_config;
#[cfg(test)]
mod racing;
#[cfg(test)]
mod racing_net;
#[cfg(test)]
mod recorded;
pub mod rtl8139;
pub mod serial;
pub mod virtio_blk;
pub mod virtio_net;
mod virtio_rig;

pub use balloon::{balloon, run_balloon, BalloonSummary};
pub use console::{console, run_console, ConsoleSummary};
pub use debug_exit::{debug_exit, run_debug_exit};
pub use e1000::{e1000, run_e1000, E1000Summary};
pub use exit_dispatch::{exit_dispatch, run_exit_dispatch, ExitDispatchSummary};
pub use floor::{floor, run_floor, FloorSummary};
pub use ide::{ide, iop, run_ide, IdeSummary};
pub use msix::msix;
pub use pci_config::{pci_config, pop};
pub use rtl8139::{rtl8139, run_rtl8139, Rtl8139Summary};
pub use serial::serial;
pub use virtio_blk::{run_virtio_blk, virtio_blk, vop, VirtioSummary};
pub use virtio_net::{nop, run_virtio_net, virtio_net, NetSummary};

/// Most operations one input runs.
pub const MAX_OPS: usize = 96;
/// The first region of guest RAM: 64 KiB at GPA 0, where the rigs keep their rings and
/// buffers.
pub const MEM_SIZE: u64 = 0x1_0000;
/// Guest RAM as every target lays it out ([`new_memory`]): (GPA, size) of each region. After
/// the first, a 4 KiB hole, then two 4 KiB regions back to back (one guest range, two host
/// mappings), and one far above past a hole of almost 1 MiB; the guest's addresses
/// ([`Reader::gpa`]) land on the edges, so buffers straddle region ends and holes.
pub const MEM_REGIONS: [(u64, u64); 4] = [
    (0, MEM_SIZE),
    (MEM_SIZE + 0x1000, 0x1000),
    (MEM_SIZE + 0x2000, 0x1000),
    (0x10_0000, 0x1000),
];
// `new_memory` fills every region from one image of the first's size.
const _: () = {
    let mut i = 0;
    while i < MEM_REGIONS.len() {
        assert!(MEM_REGIONS[i].1 <= MEM_SIZE);
        i += 1;
    }
};
/// Size of each disk image, in sectors.
pub const DISK_SECTORS: u64 = 16;
const SECTOR: usize = 512;

/// Where the virtio-pci BAR and the IDE BAR4 sit on their buses.
const VIRTIO_BAR: u64 = crate::devices::pci::MMIO_BAR_START;

/// What the virtio rigs (virtio-blk, virtio-net) do to a virtio-pci function as its driver
/// would: register accesses in its BAR at [`VIRTIO_BAR`] and the common-config sequences built
/// on them.
trait VirtioPciDriver {
    fn bus(&mut self) -> &mut crate::devices::bus::Bus;

    /// Write `len` bytes of `v` (little-endian) at `off` in the BAR.
    fn w(&mut self, off: u64, len: usize, v: u64) {
        let mut b = v.to_le_bytes().to_vec();
        b.resize(len, 0);
        self.bus().write(VIRTIO_BAR + off, &b);
    }

    fn r(&mut self, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        self.bus().read(VIRTIO_BAR + off, &mut b);
        crate::devices::le_value(&b)
    }

    fn setup_queue(&mut self, sel: u16, size: u16, layout: [u64; 3], vector: u16, enable: bool) {
        use crate::devices::virtio::transport_pci::common;
        self.w(common::QUEUE_SELECT, 2, sel as u64);
        self.w(common::QUEUE_SIZE, 2, size as u64);
        self.w(common::QUEUE_DESC, 8, layout[0]);
        self.w(common::QUEUE_DRIVER, 8, layout[1]);
        self.w(common::QUEUE_DEVICE, 8, layout[2]);
        self.w(common::QUEUE_MSIX_VECTOR, 2, vector as u64);
        if enable {
            self.w(common::QUEUE_ENABLE, 2, 1);
        }
    }

    /// ACKNOWLEDGE, DRIVER, `features`, FEATURES_OK, and DRIVER_OK if asked.
    fn negotiate(&mut self, features: u64, driver_ok: bool) {
        use crate::devices::virtio::transport_pci::common;
        self.w(common::DEVICE_STATUS, 1, 1);
        self.w(common::DEVICE_STATUS, 1, 3);
        self.w(common::DRIVER_FEATURE_SELECT, 4, 0);
        self.w(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.w(common::DRIVER_FEATURE_SELECT, 4, 1);
        self.w(common::DRIVER_FEATURE, 4, features >> 32);
        self.w(common::DEVICE_STATUS, 1, 11);
        if driver_ok {
            self.w(common::DEVICE_STATUS, 1, 15);
        }
    }
}
const IDE_BAR4: u64 = crate::devices::pci::IO_BAR_START;

// ---------------------------------------------------------------------------------------------
// Input decoding

/// The unread rest of an input; reads past the end give zeros.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        self.u32() as u64 | (self.u32() as u64) << 32
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
    /// An access width: mostly 1, 2, 4 or 8, sometimes 0, 3, 6 or 16.
    fn width(&mut self) -> usize {
        const W: [usize; 16] = [1, 2, 4, 8, 1, 2, 4, 8, 1, 2, 4, 8, 0, 3, 6, 16];
        W[(self.u8() % 16) as usize]
    }
    /// `width` bytes of access data.
    fn value(&mut self, width: usize) -> Vec<u8> {
        let mut v = self.bytes(width).to_vec();
        v.resize(width, 0);
        v
    }
    /// A guest physical address: mostly in the first region, else straddling its end, around
    /// the edges of the other regions and their holes, near the top of the address space or
    /// anything.
    fn gpa(&mut self) -> u64 {
        match self.u8() % 8 {
            0..=3 => self.u16() as u64 % MEM_SIZE,
            4 => MEM_SIZE - 1 - (self.u8() as u64),
            5 => {
                let (base, len) = MEM_REGIONS[1 + self.u8() as usize % 3];
                let edge = if self.u8().is_multiple_of(2) {
                    base
                } else {
                    base + len
                };
                (edge + self.u8() as u64).wrapping_sub(0x80)
            }
            6 => u64::MAX - self.u16() as u64,
            _ => self.u64(),
        }
    }
    /// A backend fault program: 2 bits each for reads, writes and flushes (0 works, 1 EIO,
    /// 2 short, 3 ENOSPC), and 2 for how long (0 until healed, else that many faulty
    /// operations).
    fn faults(&mut self) -> FaultPlan {
        let b = self.u8();
        let fault = |bits: u8| match bits & 3 {
            0 => None,
            1 => Some(Fault::Eio),
            2 => Some(Fault::Short),
            _ => Some(Fault::NoSpace),
        };
        FaultPlan {
            read: fault(b),
            write: fault(b >> 2),
            flush: fault(b >> 4),
            times: match b >> 6 {
                0 => None,
                n => Some(n as u64),
            },
            ..FaultPlan::default()
        }
    }
    /// A buffer length: small, whole sectors, or huge.
    fn len32(&mut self) -> u32 {
        match self.u8() % 8 {
            0 => 0,
            1 => 1,
            2 | 3 => 512 * (1 + self.u8() as u32 % 4),
            4 => 16,
            5 => self.u16() as u32,
            6 => u32::MAX - self.u8() as u32,
            _ => self.u32(),
        }
    }
}

type Region = vm_memory::GuestRegionMmap<()>;

/// The regions of [`MEM_REGIONS`], mapped once per thread: a fresh mapping per input (four
/// `mmap`s, their page faults and `munmap`s) was a tenth of most targets' time.
fn mapped_regions() -> Vec<Arc<Region>> {
    MEM_REGIONS
        .iter()
        .map(|&(gpa, len)| {
            let region = Region::from_range(GuestAddress(gpa), len as usize, None);
            Arc::new(region.expect("the fuzz layout of anonymous guest memory"))
        })
        .collect()
}

thread_local! {
    static REGIONS: std::cell::RefCell<Vec<Arc<Region>>> = std::cell::RefCell::new(mapped_regions());
}

/// Region `i` of [`MEM_REGIONS`] as the host's bytes, to compare in place: no copy.
pub(super) fn region_bytes(mem: &Memory, i: usize) -> &[u8] {
    use vm_memory::GuestMemoryBackend;
    let (gpa, len) = MEM_REGIONS[i];
    let host = mem
        .get_host_address(GuestAddress(gpa))
        .expect("every region of the fuzz layout is mapped");
    // SAFETY: `host` is the start of the mapping of a whole region, `len` bytes, which `mem`
    // keeps mapped while the borrow lasts. The rigs that call this are one thread each, and
    // their device writes guest memory only inside its calls, none of which runs while the
    // rig holds these bytes, so nothing writes them meanwhile.
    unsafe { std::slice::from_raw_parts(host, len as usize) }
}

/// Guest memory laid out as [`MEM_REGIONS`], each region filled with `seed_from` repeated
/// (else zero). The thread's mapping is reused when nothing else holds it (the input before
/// is over), rewritten whole first; else (two rigs at once) the memory is mapped anew.
fn new_memory(seed_from: Option<&[u8]>) -> Memory {
    let reused = REGIONS.with(|pool| {
        let pool = pool.borrow();
        pool.iter()
            .all(|r| Arc::strong_count(r) == 1)
            .then(|| pool.clone())
    });
    let regions = reused.unwrap_or_else(mapped_regions);
    let mem = Memory::from_arc_regions(regions).expect("the fuzz layout is sorted and apart");
    // Every region starts at the seed's first byte, so one image of the largest region
    // serves them all; a reused mapping holds the last input's bytes, so without a seed it
    // is zeroed as a fresh one would be.
    static ZEROS: [u8; MEM_SIZE as usize] = [0; MEM_SIZE as usize];
    let image = match seed_from.filter(|s| !s.is_empty()) {
        Some(seed) => std::borrow::Cow::Owned(repeated(seed, MEM_SIZE as usize)),
        None => std::borrow::Cow::Borrowed(&ZEROS[..]),
    };
    for (gpa, len) in MEM_REGIONS {
        let _ = mem.write_slice(&image[..len as usize], GuestAddress(gpa));
    }
    mem
}

/// `seed` repeated to `len` bytes, written at once: a short seed would otherwise cost thousands
/// of guest writes per input. Built by doubling, not byte by byte: per input, a byte-wise
/// iterator was a sixth of a fuzzer's time in its coverage hooks.
fn repeated(seed: &[u8], len: usize) -> Vec<u8> {
    let mut image = Vec::with_capacity(len);
    image.extend_from_slice(&seed[..seed.len().min(len)]);
    while image.len() < len {
        let more = image.len().min(len - image.len());
        image.extend_from_within(..more);
    }
    image
}

/// A guest write that may fall partly or wholly outside RAM (then the rest is dropped).
fn poke(mem: &Memory, addr: u64, bytes: &[u8]) {
    let _ = mem.write_slice(bytes, GuestAddress(addr));
}

fn peek_u16(mem: &Memory, addr: u64) -> u16 {
    mem.read_obj::<u16>(GuestAddress(addr)).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Disk images

fn image_pattern() -> &'static [u8] {
    static P: OnceLock<Vec<u8>> = OnceLock::new();
    P.get_or_init(|| {
        (0..DISK_SECTORS as usize * SECTOR)
            .map(|i| (i / SECTOR) as u8 ^ (i as u8).wrapping_mul(7))
            .collect()
    })
}

/// A memory disk holding the fuzz image, new for each input.
fn image_disk(read_only: bool) -> MemDisk {
    MemDisk::new(image_pattern().to_vec(), read_only).expect("fuzz memory disk")
}

/// `disk` behind a [`FaultyDisk`], for a model to own; the program fails it through the
/// switch.
fn faulty(disk: &MemDisk) -> (Box<dyn DiskBackend>, FaultSwitch) {
    let (faulty, switch) = FaultyDisk::new(disk.clone());
    (Box::new(faulty), switch)
}

/// A disk that ends a run as it began: its size, and when read-only its bytes.
fn check_image_disk(disk: &MemDisk) {
    let now = disk.contents();
    assert_eq!(now.len(), image_pattern().len(), "disk changed size");
    assert!(
        !disk.read_only() || now == image_pattern(),
        "read-only disk was modified"
    );
}

// ---------------------------------------------------------------------------------------------
// Interrupt fakes

#[derive(Default)]
struct EdgeIrq(AtomicU64);

impl Interrupt for EdgeIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Records virtio-pci interrupts and notes any on a vector the function does not have.
struct VirtioIrq {
    vectors: u16,
    msis: AtomicU64,
    bad_vector: AtomicBool,
    intx_level: AtomicBool,
}

impl VirtioIrq {
    fn new(vectors: u16) -> Self {
        Self {
            vectors,
            msis: AtomicU64::new(0),
            bad_vector: AtomicBool::new(false),
            intx_level: AtomicBool::new(false),
        }
    }
}

impl VirtioInterrupt for VirtioIrq {
    fn msi(&self, vector: u16, _msg: MsiMessage) -> std::io::Result<()> {
        if vector >= self.vectors {
            self.bad_vector.store(true, Ordering::Relaxed);
        }
        self.msis.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn msi_update(&self, vector: u16, _msg: MsiMessage) {
        if vector >= self.vectors {
            self.bad_vector.store(true, Ordering::Relaxed);
        }
    }
    fn intx_assert(&self) -> std::io::Result<()> {
        self.intx_level.store(true, Ordering::Relaxed);
        Ok(())
    }
    fn intx_deassert(&self) {
        self.intx_level.store(false, Ordering::Relaxed);
    }
}

/// Walk a function's capability list: (offset, id) pairs. Panics on a list that loops or points
/// into the header.
fn capabilities(f: &mut dyn PciFunction) -> Vec<(u8, u8)> {
    let mut b = [0u8; 2];
    f.config_read(0x34, &mut b[..1]);
    let mut p = b[0];
    let mut caps = Vec::new();
    while p != 0 {
        assert!(caps.len() < 48, "capability list loops");
        assert!(p >= 0x40 && p % 4 == 0, "capability pointer {p:#x}");
        f.config_read(p as u64, &mut b);
        caps.push((p, b[0]));
        p = b[1];
    }
    caps
}

/// Typed BAR invariants: every implemented BAR decodes an address aligned to its size and
/// keeps its type bits.
fn check_bars(c: &PciConfig) {
    use crate::devices::pci::config::BarKind;
    for i in 0..6 {
        let Some(bar) = c.bar(i) else { continue };
        let addr = c.bar_address(i).expect("implemented BAR has an address");
        assert_eq!(addr & (bar.size - 1), 0, "BAR{i} {addr:#x} not aligned");
        let low = c.read_u32(0x10 + 4 * i);
        let want = match bar.kind {
            BarKind::Io => (low & 3, 1),
            BarKind::Mem32 { prefetchable } => (low & 0xf, if prefetchable { 8 } else { 0 }),
            BarKind::Mem64 { prefetchable } => (low & 0xf, if prefetchable { 0xc } else { 4 }),
        };
        assert_eq!(want.0, want.1, "BAR{i} type bits changed");
    }
    assert_eq!(c.command() & !0x0547, 0, "read-only command bits set");
}

/// What the per-device smoke tests share: seeded random programs and a program builder.
#[cfg(test)]
pub(crate) mod test_util {
    /// splitmix64: deterministic inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn input(&mut self, max: usize) -> Vec<u8> {
            let n = self.next() as usize % max;
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// `n` random programs; every other one starts with `prelude` (after its header byte) so
    /// that the random part runs on a device that is already set up.
    pub fn random(seed: u64, n: usize, max_len: usize, prelude: &[u8], f: fn(&[u8])) {
        let mut rng = Rng(seed);
        for i in 0..n {
            let mut input = rng.input(max_len);
            if i % 2 == 1 && !input.is_empty() {
                input.splice(1..1, prelude.iter().copied());
            }
            let r = std::panic::catch_unwind(|| f(&input));
            assert!(r.is_ok(), "input {i} (seed {seed:#x}) failed: {input:02x?}");
        }
    }

    /// A program builder: opcodes and operands as the decoders read them.
    #[derive(Default)]
    pub struct P(pub Vec<u8>);

    impl P {
        pub fn op(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_has_holes_and_back_to_back_regions() {
        let mem = new_memory(Some(&[0xa5]));
        let (r1, r2) = (MEM_REGIONS[1].0, MEM_REGIONS[2].0);
        // Across two back-to-back regions: one guest range.
        let mut b = [0u8; 16];
        mem.read_slice(&mut b, GuestAddress(r2 - 8)).unwrap();
        assert_eq!(b, [0xa5; 16], "seeded in every region");
        // Into or across a hole: refused (vm-memory moves the part before the hole at most).
        assert!(mem.read_slice(&mut b, GuestAddress(MEM_SIZE - 8)).is_err());
        assert!(mem.read_slice(&mut b, GuestAddress(r1 - 8)).is_err());
        assert!(mem
            .read_slice(&mut b, GuestAddress(MEM_SIZE + 0x10))
            .is_err());
        // The addresses the guest makes reach every region edge, from both sides.
        let mut r = Reader(&[5, 0, 0, 0x70, 5, 1, 1, 0x90, 5, 2, 0, 0x80]);
        assert_eq!(r.gpa(), r1 - 0x10);
        assert_eq!(r.gpa(), r2 + 0x1000 + 0x10);
        assert_eq!(r.gpa(), MEM_REGIONS[3].0);
    }

    #[test]
    fn memory_is_reused_only_when_free_and_always_starts_as_asked() {
        use vm_memory::GuestMemoryBackend;
        let host = |m: &Memory| m.get_host_address(GuestAddress(0)).unwrap() as usize;
        let first = new_memory(Some(&[7]));
        let at = host(&first);
        // Held: a second memory is its own mapping, and writes to one miss the other.
        let second = new_memory(None);
        assert_ne!(host(&second), at);
        second.write_obj(0xffu8, GuestAddress(0x20)).unwrap();
        assert_eq!(first.read_obj::<u8>(GuestAddress(0x20)).unwrap(), 7);
        first.write_obj(0xeeu8, GuestAddress(MEM_SIZE - 1)).unwrap();
        drop((first, second));
        // Free again: the same mapping, rewritten whole (zeros, or the new seed).
        let again = new_memory(None);
        assert_eq!(host(&again), at, "the thread's mapping is reused");
        let mut all = vec![1u8; MEM_SIZE as usize];
        again.read_slice(&mut all, GuestAddress(0)).unwrap();
        assert!(
            all.iter().all(|&b| b == 0),
            "a reused mapping starts zeroed"
        );
        drop(again);
        let seeded = new_memory(Some(&[3, 4]));
        assert_eq!(
            seeded.read_obj::<u8>(GuestAddress(MEM_SIZE - 1)).unwrap(),
            4
        );
    }

    #[test]
    fn a_seed_repeats_to_the_end_of_every_region() {
        let seed = [1u8, 2, 3, 4, 5, 6, 7];
        let mem = new_memory(Some(&seed));
        for (gpa, len) in MEM_REGIONS {
            let mut got = vec![0u8; len as usize];
            mem.read_slice(&mut got, GuestAddress(gpa)).unwrap();
            let want: Vec<u8> = seed.iter().copied().cycle().take(len as usize).collect();
            assert!(got == want, "region at {gpa:#x}");
        }
        // A seed longer than a region is cut to it; an empty one leaves zeros.
        let long: Vec<u8> = (0..0x2_0000u32).map(|i| (i % 251) as u8).collect();
        let mem = new_memory(Some(&long));
        let mut got = vec![0u8; 0x1000];
        mem.read_slice(&mut got, GuestAddress(MEM_REGIONS[3].0))
            .unwrap();
        assert_eq!(got, long[..0x1000]);
        let mem = new_memory(Some(&[]));
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x100)).unwrap(), 0);
    }
}
