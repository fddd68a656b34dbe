//! The one trait through which every driver reaches the machine.
//!
//! The kernel implements it on real (virtual) hardware; host unit tests implement it with fakes,
//! so a driver can be fed a device that misbehaves. Nothing else in `drivers` touches hardware.

use core::fmt;

/// Errors a platform operation can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformError {
    /// DMA memory is exhausted.
    OutOfDmaMemory,
    /// The MMIO range cannot be mapped (not page-aligned, outside the MMIO window, ...).
    BadMmioRange { phys: u64, len: u64 },
}

impl fmt::Display for PlatformError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfDmaMemory => write!(f, "out of DMA memory"),
            Self::BadMmioRange { phys, len } => {
                write!(f, "cannot map MMIO range {phys:#x}+{len:#x}")
            }
        }
    }
}

/// A mapped MMIO window. Offsets are checked against `len` by [`Platform`] implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRegion {
    /// Physical address of the window.
    pub phys: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Memory a device may read and write by DMA: a CPU-visible pointer and the bus address that the
/// device must be given.
///
/// The fields are private: `as_slice` hands out the bytes behind `virt`, so a buffer made up from
/// arbitrary numbers would be a safe path to any address. Only a [`Platform`] (or a caller that
/// takes on its obligations through the `unsafe` constructor) makes one.
#[derive(Debug)]
pub struct DmaBuffer {
    /// CPU virtual address of the first byte.
    virt: *mut u8,
    /// Physical (bus) address of the first byte.
    phys: u64,
    /// Length in bytes.
    len: usize,
}

impl DmaBuffer {
    /// A buffer over `len` bytes at `virt`, which the device sees at bus address `phys`.
    ///
    /// # Safety
    /// `virt..virt + len` must be memory the caller owns exclusively, valid for reads and writes
    /// until the buffer is given back to the platform that made it (`Platform::dma_free`), and
    /// `phys` must be where a device finds those same bytes.
    pub unsafe fn from_raw_parts(virt: *mut u8, phys: u64, len: usize) -> Self {
        Self { virt, phys, len }
    }

    /// Bus address of the first byte, to hand to a device.
    pub fn phys(&self) -> u64 {
        self.phys
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// CPU address of the first byte (for a platform giving the buffer back, and for volatile
    /// access to bytes a device writes).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.virt
    }

    /// The buffer's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: a DmaBuffer is made by a Platform (or `from_raw_parts`, whose caller promises
        // the same) that owns `len` bytes at `virt` for the buffer's lifetime.
        unsafe { core::slice::from_raw_parts(self.virt, self.len) }
    }

    /// The buffer's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes the borrow unique.
        unsafe { core::slice::from_raw_parts_mut(self.virt, self.len) }
    }
}

/// Port I/O, MMIO, DMA memory, interrupts and a clock: everything a driver may ask of the machine.
pub trait Platform {
    fn inb(&self, port: u16) -> u8;
    fn inw(&self, port: u16) -> u16;
    fn inl(&self, port: u16) -> u32;
    fn outb(&self, port: u16, value: u8);
    fn outw(&self, port: u16, value: u16);
    fn outl(&self, port: u16, value: u32);

    /// Map `len` bytes of device memory at physical address `phys`.
    fn map_mmio(&self, phys: u64, len: u64) -> Result<MmioRegion, PlatformError>;
    fn mmio_read8(&self, region: &MmioRegion, offset: u64) -> u8;
    fn mmio_read16(&self, region: &MmioRegion, offset: u64) -> u16;
    fn mmio_read32(&self, region: &MmioRegion, offset: u64) -> u32;
    fn mmio_write8(&self, region: &MmioRegion, offset: u64, value: u8);
    fn mmio_write16(&self, region: &MmioRegion, offset: u64, value: u16);
    fn mmio_write32(&self, region: &MmioRegion, offset: u64, value: u32);

    /// Allocate zeroed DMA-able memory, `align` a power of two.
    fn dma_alloc(&self, len: usize, align: usize) -> Result<DmaBuffer, PlatformError>;
    /// Give back a buffer from [`Platform::dma_alloc`].
    fn dma_free(&self, buffer: DmaBuffer);
    /// Physical address of a CPU address inside DMA memory.
    fn virt_to_phys(&self, virt: *const u8) -> u64;

    /// How many interrupts have arrived on `vector` since boot. Interrupt handlers only record
    /// (and send EOI); drivers compare counts to notice new interrupts.
    fn interrupt_count(&self, vector: u8) -> u64;
    /// Acknowledge an interrupt on `vector` after the device has been serviced (e.g. its ISR
    /// read). Level-triggered lines are masked when they fire, so that a line still asserted
    /// does not storm; this re-enables them. Edge and MSI vectors need nothing.
    fn ack_interrupt(&self, _vector: u8) {}
    /// A counter of all interrupts so far. Take it before checking for work, then pass it to
    /// [`Platform::wait_for_interrupt`], so an interrupt that lands in between is not slept
    /// through.
    fn interrupt_epoch(&self) -> u64;
    /// Sleep until an interrupt arrives after `epoch` was read (return at once if one has).
    fn wait_for_interrupt(&self, epoch: u64);
    /// Monotonic nanoseconds.
    fn now_ns(&self) -> u64;
}
