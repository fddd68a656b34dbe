//! virtio-blk through a driver stack nobody here wrote: the `virtio-drivers` crate's PCI
//! enumeration, modern transport, virtqueue and block driver, against whichever device model
//! the VMM provides (ours, or QEMU's as a cross-check). We supply only what the crate asks of a
//! platform: its `Hal` (DMA memory, MMIO and buffer addresses) and PCI configuration access.
//! Checked: every sector holds the image pattern, a read past the end fails, a write to a
//! read-only disk fails (the crate does not check VIRTIO_BLK_F_RO; the device must refuse), and
//! a write, flushed, reads back.

use super::disk;
use crate::ktap::Outcome;
use crate::platform::PLATFORM;
use crate::{check, fail, pattern, println, try_or_fail};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec;
use core::ptr::NonNull;
use drivers::pci::{Pci, PciAddress};
use drivers::platform::{DmaBuffer, Platform};
use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, VirtIOBlk, SECTOR_SIZE};
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{virtio_device_type, PciTransport};
use virtio_drivers::transport::{DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal, PhysAddr, PAGE_SIZE};

/// VIRTIO_BLK_F_FLUSH: without it the crate's `flush` returns Ok without asking the device.
const FEATURE_FLUSH: u64 = 1 << 9;

/// Sectors per read while checking the whole disk.
const CHUNK_SECTORS: u64 = 128;

/// The crate's platform hooks over the kernel's memory: DMA pages come from the heap through
/// `KernelPlatform::dma_alloc`, and all RAM is identity-mapped, so a buffer's address is its
/// bus address and sharing it needs no bounce buffer.
struct KernelHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned heap memory owned by the caller until
// `dma_dealloc`; `mmio_phys_to_virt` returns only addresses inside the uncached, identity-mapped
// MMIO window (checked by `map_mmio`); `share` returns the bytes' own address, which is where
// the device finds them (virt == phys for all RAM).
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let Some(len) = pages.checked_mul(PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        match PLATFORM.dma_alloc(len, PAGE_SIZE) {
            // The crate keeps (phys, virt, pages) and gives them back to `dma_dealloc`.
            Ok(b) => match NonNull::new(b.as_mut_ptr()) {
                Some(virt) => (b.phys(), virt),
                None => (0, NonNull::dangling()),
            },
            // The crate reads physical address 0 as an allocation failure.
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back exactly what `dma_alloc` returned for `pages` pages, so
        // this is the buffer `KernelPlatform::dma_alloc` made, given back once.
        let buffer = unsafe { DmaBuffer::from_raw_parts(vaddr.as_ptr(), paddr, pages * PAGE_SIZE) };
        PLATFORM.dma_free(buffer);
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // The crate allows a panic here for a range that is not MMIO; a BAR outside the window
        // would otherwise be an access to RAM.
        let region = PLATFORM
            .map_mmio(paddr, size as u64)
            .unwrap_or_else(|e| panic!("virtio-drivers asked for {e}"));
        NonNull::new(region.phys as *mut u8).expect("the MMIO window does not contain 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        PLATFORM.virt_to_phys(buffer.as_ptr() as *const u8)
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {
        // Nothing was copied, so nothing to copy back.
    }
}

/// The crate's configuration access over our mechanism #1 (ports 0xCF8/0xCFC) through
/// `drivers::pci`. Ring 3 is single-threaded and interrupt stubs never touch config space, so
/// the two-step access cannot be interleaved.
struct PortConfigAccess;

fn address(df: DeviceFunction) -> PciAddress {
    PciAddress::new(df.bus, df.device, df.function)
}

impl ConfigurationAccess for PortConfigAccess {
    fn read_word(&self, df: DeviceFunction, register_offset: u8) -> u32 {
        // An invalid address reads as nothing there, as the bus would answer.
        Pci::new(&PLATFORM)
            .read32(address(df), register_offset.into())
            .unwrap_or(u32::MAX)
    }

    fn write_word(&mut self, df: DeviceFunction, register_offset: u8, data: u32) {
        // An invalid address drops the write, as the bus would.
        let _ = Pci::new(&PLATFORM).write32(address(df), register_offset.into(), data);
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortConfigAccess
    }
}

type Blk = VirtIOBlk<KernelHal, PciTransport>;

/// How long the first request may take: a bound for a device that never answers.
const FIRST_ANSWER_NS: u64 = 10_000_000_000;

/// Read sector 0 through the crate's non-blocking calls, with a deadline. The crate's blocking
/// calls spin until the device answers, so a device that ignored the driver's initialisation
/// would hang the run until the host's timeout; this turns that into a failure with a reason.
fn first_read_answered(blk: &mut Blk) -> Result<(), String> {
    let mut req = Box::new(BlkReq::default());
    let mut buf = Box::new([0u8; SECTOR_SIZE]);
    let mut resp = Box::new(BlkResp::default());
    // SAFETY: the three buffers are not touched until the device has answered; if it never
    // does, they are leaked below, so the device may still write them.
    let token = unsafe { blk.read_blocks_nb(0, &mut req, &mut buf[..], &mut resp) }
        .map_err(|e| alloc::format!("submit: {e}"))?;
    let deadline = PLATFORM.now_ns() + FIRST_ANSWER_NS;
    loop {
        let epoch = PLATFORM.interrupt_epoch();
        if blk.peek_used() == Some(token) {
            break;
        }
        if PLATFORM.now_ns() > deadline {
            Box::leak(req);
            Box::leak(buf);
            Box::leak(resp);
            return Err(String::from(
                "no answer in 10 s: the device never started (a status write refused?) or lost \
                 the request",
            ));
        }
        PLATFORM.wait_for_interrupt(epoch);
    }
    // SAFETY: the same buffers as submitted, and the device has used them.
    unsafe { blk.complete_read_blocks(token, &req, &mut buf[..], &mut resp) }
        .map_err(|e| alloc::format!("complete: {e}"))?;
    if resp.status() != RespStatus::OK {
        return Err(alloc::format!("status {:?}", resp.status()));
    }
    match disk::first_bad_sector(blk.capacity(), 0, &buf[..]) {
        Some(bad) => Err(alloc::format!(
            "sector {bad} does not hold the image pattern"
        )),
        None => Ok(()),
    }
}

/// Compare against `disk::first_bad_sector`, which knows about the write region.
fn check_whole_disk(blk: &mut Blk) -> Result<(), String> {
    let cap = blk.capacity();
    let mut buf = vec![0u8; CHUNK_SECTORS as usize * SECTOR_SIZE];
    let mut lba = 0;
    while lba < cap {
        let n = (cap - lba).min(CHUNK_SECTORS);
        let part = &mut buf[..n as usize * SECTOR_SIZE];
        blk.read_blocks(lba as usize, part)
            .map_err(|e| alloc::format!("read {lba}+{n}: {e}"))?;
        if let Some(bad) = disk::first_bad_sector(cap, lba, part) {
            return Err(alloc::format!(
                "sector {bad} does not hold the image pattern"
            ));
        }
        lba += n;
    }
    Ok(())
}

pub fn run() -> Outcome {
    let mut root = PciRoot::new(PortConfigAccess);
    // The crate's own enumeration and ID matching (modern and transitional IDs alike).
    let Some((df, info)) = root
        .enumerate_bus(0)
        .find(|(_, info)| virtio_device_type(info) == Some(DeviceType::Block))
    else {
        return Outcome::Skip("no virtio-blk device");
    };
    if disk::seed().is_none() {
        return Outcome::Skip("no disk_seed= on the command line");
    }
    // The crate leaves decode and bus mastering to its user; our model honours both.
    let (_, command) = root.get_status_command(df);
    root.set_command(df, command | Command::MEMORY_SPACE | Command::BUS_MASTER);
    let mut transport = try_or_fail!(
        PciTransport::new::<KernelHal, _>(&mut root, df),
        "virtio-drivers PciTransport"
    );
    let offered = transport.read_device_features();
    let mut blk = try_or_fail!(Blk::new(transport), "virtio-drivers VirtIOBlk");
    let cap = blk.capacity();
    println!(
        "# foreign virtio-blk {:02x}:{:02x}.{} ({:04x}:{:04x}): {} sectors, features offered {:#x}, read-only {}",
        df.bus,
        df.device,
        df.function,
        info.vendor_id,
        info.device_id,
        cap,
        offered,
        blk.readonly()
    );
    check!(
        cap > pattern::WRITE_REGION_SECTORS * 2,
        "disk of {} sectors is too small",
        cap
    );
    check!(
        offered & FEATURE_FLUSH != 0,
        "the device does not offer VIRTIO_BLK_F_FLUSH, so flush would not be tested"
    );

    try_or_fail!(first_read_answered(&mut blk), "first read");
    if let Err(e) = check_whole_disk(&mut blk) {
        fail!("{}", e);
    }

    // The crate sends any sector; the device must refuse one past the end.
    let mut sector = [0u8; SECTOR_SIZE];
    check!(
        blk.read_blocks(cap as usize, &mut sector).is_err(),
        "a read at the capacity succeeded"
    );

    if blk.readonly() {
        let data = [0xa5u8; SECTOR_SIZE];
        match blk.write_blocks(0, &data) {
            Ok(()) => fail!("a write to a read-only disk succeeded"),
            Err(e) => println!(
                "# foreign virtio-blk: write refused on a read-only disk: {}",
                e
            ),
        }
        try_or_fail!(
            blk.read_blocks(0, &mut sector),
            "read 0 after the refused write"
        );
        if let Some(bad) = disk::first_bad_sector(cap, 0, &sector) {
            fail!("sector {} changed after a refused write", bad);
        }
        try_or_fail!(blk.flush(), "flush on a read-only disk");
    } else if let Some(wseed) = disk::write_seed() {
        let start = pattern::write_region_start(cap);
        let mut data = vec![0u8; pattern::WRITE_REGION_SECTORS as usize * SECTOR_SIZE];
        pattern::fill(wseed, start, &mut data);
        try_or_fail!(blk.write_blocks(start as usize, &data), "write {}", start);
        try_or_fail!(blk.flush(), "flush");
        data.fill(0);
        try_or_fail!(blk.read_blocks(start as usize, &mut data), "read back");
        if let Some(bad) = pattern::first_mismatch(wseed, start, &data) {
            fail!("sector {} did not read back as written", bad);
        }
        println!(
            "# foreign virtio-blk: wrote, flushed and read back sectors {}..{}",
            start,
            start + pattern::WRITE_REGION_SECTORS
        );
    } else {
        try_or_fail!(blk.flush(), "flush");
    }

    let mut id = [0u8; 20];
    let len = try_or_fail!(blk.device_id(&mut id), "device_id");
    println!(
        "# foreign virtio-blk id {:?}",
        core::str::from_utf8(&id[..len]).unwrap_or("?")
    );
    Outcome::Pass
}
