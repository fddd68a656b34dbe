//! The kernel's side of the virtio balloon: the page source over the frame allocator, and one
//! driver for the whole kernel (tests and the `idle` loop share it), started on first use.
//!
//! A frame in the balloon is allocated to the balloon driver and nothing else: the kernel never
//! touches it until a deflate hands it back to the frame allocator.

use super::frames;
use crate::arch::{apic, ioapic, vectors};
use crate::platform::{KernelPlatform, PLATFORM};
use crate::{pci, println};
use drivers::pci::PciFunction;
use drivers::virtio::balloon::{BalloonError, MemStats, PageSource, VirtioBalloon};
use drivers::virtio::pci::{
    device_type, msix_table_size, virtio_device_type, InterruptMode, InterruptPlan,
};

pub type Balloon = VirtioBalloon<'static, KernelPlatform>;

/// Pages taken back per allocation that finds the frame allocator empty (Linux's
/// VIRTIO_BALLOON_OOM_NR_PAGES).
pub const OOM_DEFLATE_PAGES: u32 = 256;

/// Frames for the balloon, from the frame allocator.
pub struct KernelFrames;

impl PageSource for KernelFrames {
    fn take_page(&mut self) -> Option<u64> {
        frames::alloc()
    }

    fn return_page(&mut self, phys: u64) {
        if !frames::free(phys) {
            println!("# balloon: frame {:#x} given back twice or not ours", phys);
        }
    }

    fn mem_stats(&self) -> MemStats {
        let (free, total) = frames::with(|m| (m.free_bytes(), m.total_bytes()));
        let heap_free = super::heap::free() as u64;
        let ram = crate::bootinfo::get().ram_bytes();
        MemStats {
            free: free + heap_free,
            total: ram.max(total),
            available: free + heap_free,
        }
    }
}

enum State {
    Unprobed,
    Absent,
    Failed(BalloonError),
    Running(alloc::boxed::Box<Balloon>),
}

static BALLOON: spin::Mutex<State> = spin::Mutex::new(State::Unprobed);

/// The first virtio-balloon function.
pub fn find() -> Option<&'static PciFunction> {
    pci::devices()
        .iter()
        .find(|f| virtio_device_type(f) == Some(device_type::BALLOON))
}

/// How the balloon at `f` signals: MSI-X (a config vector for new targets and one for the
/// queues, or one shared), else INTx on its line, else polled.
fn interrupt_mode(f: &PciFunction) -> InterruptMode {
    let table = msix_table_size(&PLATFORM, f).unwrap_or(None);
    match InterruptPlan::choose(f, table, 2, ioapic::pins()) {
        InterruptPlan::Msix { vectors } => InterruptMode::Msix {
            dest_apic_id: apic::id() as u8,
            vectors: if vectors >= 2 {
                alloc::vec![vectors::BALLOON_CONFIG, vectors::BALLOON_QUEUES]
            } else {
                alloc::vec![vectors::BALLOON_CONFIG]
            },
        },
        InterruptPlan::Intx { line } => {
            ioapic::route(
                line,
                vectors::BALLOON_INTX,
                ioapic::Trigger::Level,
                apic::id(),
            );
            InterruptMode::Intx {
                vector: vectors::BALLOON_INTX,
            }
        }
        InterruptPlan::Polled => InterruptMode::Polled,
    }
}

/// Run `f` on the balloon driver, started the first time (taking the device's interrupts
/// as it allows: a config-change interrupt says the target moved). Ok(None): there is no
/// balloon.
pub fn with<R>(f: impl FnOnce(&mut Balloon) -> R) -> Result<Option<R>, BalloonError> {
    let mut state = BALLOON.lock();
    if matches!(*state, State::Unprobed) {
        *state = match find() {
            None => State::Absent,
            Some(function) => {
                let mode = interrupt_mode(function);
                match VirtioBalloon::new(&PLATFORM, function, mode, &KernelFrames) {
                    Ok(b) => {
                        let b = alloc::boxed::Box::new(b);
                        println!(
                            "# virtio-balloon {}: features {:#x}, interrupts: {}",
                            function.address,
                            b.features(),
                            b.interrupt_mode()
                        );
                        State::Running(b)
                    }
                    Err(e) => State::Failed(e),
                }
            }
        };
    }
    match &mut *state {
        State::Running(b) => Ok(Some(f(b))),
        State::Failed(e) => Err(*e),
        State::Absent | State::Unprobed => Ok(None),
    }
}

/// Whether the device signalled a new target since the last call: by its config-change
/// interrupt, or, for a balloon without interrupts, a new config generation.
pub fn target_signalled(b: &mut Balloon) -> bool {
    if matches!(b.interrupt_mode(), InterruptMode::Polled) {
        b.config_changed()
    } else {
        b.take_config_interrupt()
    }
}

/// One round of the `idle` loop (which wakes on every interrupt, and at least every 10 ms):
/// follow the target on the first round and whenever the device signalled a change, and
/// refill the stats buffer if the device returned it.
pub fn serve_idle() {
    let r = with(|b| {
        let first = !IDLE_SERVED.swap(true, core::sync::atomic::Ordering::Relaxed);
        if target_signalled(b) || first {
            b.serve(&mut KernelFrames).map(|_| ())
        } else if stats_due() {
            // Fresh numbers at most once a second: each refill is a notify exit.
            b.serve_stats(&KernelFrames).map(|_| ())
        } else {
            Ok(())
        }
    });
    if let Ok(Some(Err(e))) | Err(e) = r {
        // Once: the loop comes round every few milliseconds.
        if !IDLE_ERROR_SHOWN.swap(true, core::sync::atomic::Ordering::Relaxed) {
            println!("# balloon: {}", e);
        }
    }
}

/// Whether a second has passed since the idle loop last refilled the stats buffer.
fn stats_due() -> bool {
    let now = crate::time::now_ns();
    let last = IDLE_STATS_NS.load(core::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) < 1_000_000_000 {
        return false;
    }
    IDLE_STATS_NS.store(now, core::sync::atomic::Ordering::Relaxed);
    true
}

static IDLE_STATS_NS: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static IDLE_SERVED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
static IDLE_ERROR_SHOWN: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Why [`alloc_frame_or_deflate`] found no frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutOfFrames {
    /// No balloon to take pages from.
    NoBalloon,
    /// The balloon may not give pages back for this (no DEFLATE_ON_OOM), or failed to.
    Balloon(BalloonError),
    /// The balloon was empty too.
    Exhausted,
}

/// A frame, taking pages back from the balloon if the allocator is empty and DEFLATE_ON_OOM
/// allows it.
pub fn alloc_frame_or_deflate() -> Result<u64, OutOfFrames> {
    if let Some(f) = frames::alloc() {
        return Ok(f);
    }
    with(|b| b.deflate_for_oom(&mut KernelFrames, OOM_DEFLATE_PAGES))
        .map_err(OutOfFrames::Balloon)?
        .ok_or(OutOfFrames::NoBalloon)?
        .map_err(OutOfFrames::Balloon)?;
    frames::alloc().ok_or(OutOfFrames::Exhausted)
}
