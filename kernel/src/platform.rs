//! The kernel's implementation of `drivers::platform::Platform`, for ring 3: port I/O through the
//! TSS bitmap, MMIO through the user-accessible identity map (as `volatile` pointers), DMA
//! memory from the heap (identity mapped, so virtual = physical), interrupts counted by the
//! ring-0 stubs.

use crate::arch::{idt, kcall};
use crate::{port, time};
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::mem::size_of;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;
use drivers::ata::PortStrings;
use drivers::platform::{DmaBuffer, MmioRegion, Platform, PlatformError};
use volatile::VolatilePtr;

pub struct KernelPlatform;

/// The platform drivers borrow for as long as they live.
pub static PLATFORM: KernelPlatform = KernelPlatform;

const DMA_ALIGN: usize = 4096;

/// Device MMIO lives in the uncached 3..4 GiB window of the boot page tables.
const MMIO_WINDOW: core::ops::Range<u64> = 0xc000_0000..0x1_0000_0000;

impl KernelPlatform {
    /// The register of `T` at `offset` in `region`, bounds-checked.
    fn mmio<T>(region: &MmioRegion, offset: u64) -> VolatilePtr<'static, T> {
        let width = size_of::<T>() as u64;
        assert!(
            offset
                .checked_add(width)
                .is_some_and(|end| end <= region.len),
            "MMIO access at {offset:#x} outside a {:#x}-byte region",
            region.len
        );
        let addr = NonNull::new((region.phys + offset) as *mut T).expect("no MMIO at address 0");
        // SAFETY: inside a region accepted by map_mmio: the uncached, identity-mapped,
        // user-accessible MMIO window, mapped for the kernel's whole life.
        unsafe { VolatilePtr::new(addr) }
    }
}

impl Platform for KernelPlatform {
    fn inb(&self, p: u16) -> u8 {
        port::inb(p)
    }
    fn inw(&self, p: u16) -> u16 {
        port::inw(p)
    }
    fn inl(&self, p: u16) -> u32 {
        port::inl(p)
    }
    fn outb(&self, p: u16, v: u8) {
        port::outb(p, v)
    }
    fn outw(&self, p: u16, v: u16) {
        port::outw(p, v)
    }
    fn outl(&self, p: u16, v: u32) {
        port::outl(p, v)
    }

    fn map_mmio(&self, phys: u64, len: u64) -> Result<MmioRegion, PlatformError> {
        let end = phys.checked_add(len);
        match end {
            Some(end) if len > 0 && MMIO_WINDOW.start <= phys && end <= MMIO_WINDOW.end => {
                Ok(MmioRegion { phys, len })
            }
            _ => Err(PlatformError::BadMmioRange { phys, len }),
        }
    }
    fn mmio_read8(&self, r: &MmioRegion, off: u64) -> u8 {
        Self::mmio::<u8>(r, off).read()
    }
    fn mmio_read16(&self, r: &MmioRegion, off: u64) -> u16 {
        Self::mmio::<u16>(r, off).read()
    }
    fn mmio_read32(&self, r: &MmioRegion, off: u64) -> u32 {
        Self::mmio::<u32>(r, off).read()
    }
    fn mmio_write8(&self, r: &MmioRegion, off: u64, v: u8) {
        Self::mmio::<u8>(r, off).write(v)
    }
    fn mmio_write16(&self, r: &MmioRegion, off: u64, v: u16) {
        Self::mmio::<u16>(r, off).write(v)
    }
    fn mmio_write32(&self, r: &MmioRegion, off: u64, v: u32) {
        Self::mmio::<u32>(r, off).write(v)
    }

    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError> {
        // Every DMA buffer is page-aligned, so `dma_free` can rebuild the layout exactly.
        if align > DMA_ALIGN || !align.is_power_of_two() {
            return Err(PlatformError::OutOfDmaMemory);
        }
        let layout = Layout::from_size_align(len.max(1), DMA_ALIGN)
            .map_err(|_| PlatformError::OutOfDmaMemory)?;
        // SAFETY: non-zero size.
        let virt = unsafe { alloc_zeroed(layout) };
        if virt.is_null() {
            return Err(PlatformError::OutOfDmaMemory);
        }
        // SAFETY: a fresh heap allocation of `len` bytes, ours until `dma_free`; the heap is
        // identity-mapped, so the device finds it at the same address.
        Ok(unsafe { DmaBuffer::from_raw_parts(virt, virt as u64, len) })
    }
    fn dma_free(&self, buffer: DmaBuffer) {
        // SAFETY: `buffer` came from dma_alloc, which used exactly this layout.
        unsafe {
            dealloc(
                buffer.as_mut_ptr(),
                Layout::from_size_align_unchecked(buffer.len().max(1), DMA_ALIGN),
            )
        }
    }
    fn virt_to_phys(&self, virt: *const u8) -> u64 {
        virt as u64
    }

    fn interrupt_count(&self, vector: u8) -> u64 {
        idt::IRQ_COUNTS[vector as usize].load(Ordering::Acquire)
    }
    fn ack_interrupt(&self, vector: u8) {
        let pin = idt::IRQ_LEVEL_PIN[vector as usize].load(Ordering::SeqCst);
        if pin != 0xff {
            crate::arch::ioapic::unmask(pin);
        }
    }
    fn interrupt_epoch(&self) -> u64 {
        idt::IRQ_TOTAL.load(Ordering::Acquire)
    }
    fn wait_for_interrupt(&self, epoch: u64) {
        if self.interrupt_epoch() == epoch {
            kcall::call(kcall::WAIT_FOR_INTERRUPT, epoch, 0);
        }
    }
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
}

impl PortStrings for KernelPlatform {
    fn ins16(&self, port: u16, buf: &mut [u16]) {
        // SAFETY: writes exactly buf.len() words into buf; the port is open to ring 3 (TSS
        // bitmap). One `rep insw` is one exit for the whole buffer.
        unsafe {
            core::arch::asm!("rep insw", in("dx") port, inout("rdi") buf.as_mut_ptr() => _,
                inout("rcx") buf.len() => _, options(nostack, preserves_flags));
        }
    }

    fn outs16(&self, port: u16, buf: &[u16]) {
        // SAFETY: reads exactly buf.len() words from buf; the port is open to ring 3.
        unsafe {
            core::arch::asm!("rep outsw", in("dx") port, inout("rsi") buf.as_ptr() => _,
                inout("rcx") buf.len() => _, options(nostack, preserves_flags, readonly));
        }
    }
}

/// A DMA buffer that goes back to the platform when dropped, for tests and benchmarks whose
/// many early returns would otherwise each need a `dma_free`. Drop it only once the device is
/// done with it.
pub struct Dma(Option<DmaBuffer>);

impl Dma {
    /// `len` zeroed, page-aligned bytes.
    pub fn new(len: usize) -> Result<Self, PlatformError> {
        PLATFORM.dma_alloc(len, DMA_ALIGN).map(|b| Self(Some(b)))
    }
}

impl core::ops::Deref for Dma {
    type Target = DmaBuffer;
    fn deref(&self) -> &DmaBuffer {
        self.0.as_ref().expect("present until drop")
    }
}

impl core::ops::DerefMut for Dma {
    fn deref_mut(&mut self) -> &mut DmaBuffer {
        self.0.as_mut().expect("present until drop")
    }
}

impl Drop for Dma {
    fn drop(&mut self) {
        if let Some(b) = self.0.take() {
            PLATFORM.dma_free(b);
        }
    }
}
