//! Attaches the virtio-balloon (`--balloon`): one virtio-pci function named `virtio-balloon`,
//! wired like a disk (MSI-X or INTx, an I/O thread on the notify ioeventfds), and the
//! [`BalloonControl`] the monitor drives it through. `--balloon-target MiB` sets the guest
//! memory to ask for before the guest starts, as if `balloon <MiB>` had been sent.
//!
//! The run's report carries a `balloon:` note at each `# phase:` mark and at the end: the
//! target, what the guest holds, the device's counters, the guest's last statistics and the
//! host RSS of guest memory (mincore over the mapping), so a test can see memory go back to
//! the host while the guest runs.

use super::balloon_control::{BalloonControl, BalloonInfo};
use super::device_manager::DeviceManager;
use super::memory::GuestMem;
use super::virtio_wiring::{function_irq, place, Attached, GsiRouter};
use super::IoMode;
use crate::devices::lock;
use crate::devices::virtio::balloon::stats::{TAG_AVAIL, TAG_MEMFREE, TAG_MEMTOT};
use crate::devices::virtio::balloon::{Balloon, BalloonShared, NUM_QUEUES};
use crate::devices::virtio::io_thread;
use crate::devices::virtio::transport_pci::{self, VirtioPciDevice};
use crate::error::HarnessError;
use kvm_ioctls::IoEventAddress;
use std::sync::{Arc, Mutex};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

/// What the monitor holds: the device's shared state and its transport, to signal a
/// configuration change.
struct BalloonHandle {
    shared: Arc<BalloonShared>,
    dev: Arc<Mutex<VirtioPciDevice>>,
}

impl BalloonControl for BalloonHandle {
    fn set_guest_memory(&self, bytes: u64) -> Result<(), String> {
        let pages = self.shared.target_for(bytes)?;
        self.shared.set_target_pages(pages);
        // A new config generation, and the config interrupt once the driver runs.
        lock(&self.dev).device_config_changed();
        Ok(())
    }

    fn info(&self) -> BalloonInfo {
        BalloonInfo {
            ram_bytes: self.shared.ram_bytes(),
            target_pages: self.shared.target_pages(),
            actual_pages: self.shared.actual_pages(),
        }
    }
}

/// The attached balloon, kept for the monitor and the run's report.
pub struct AttachedBalloon {
    pub function: Attached,
    pub shared: Arc<BalloonShared>,
    pub control: Arc<dyn BalloonControl>,
    /// `balloon:` notes taken at phase marks.
    marks: Mutex<Vec<String>>,
}

impl AttachedBalloon {
    /// Take a note at the guest's `# phase: <marker>` (the vCPU is stopped there).
    pub fn mark(&self, marker: &str, mem: &GuestMem) {
        let note = self.note(marker, mem);
        lock(&self.marks).push(note);
    }

    /// One `balloon:` line: `phase=<marker>` then key=value pairs.
    pub fn note(&self, marker: &str, mem: &GuestMem) -> String {
        let c = self.shared.counters();
        let s = self.shared.guest_stats();
        let rss = match resident_bytes(mem) {
            Ok(b) => (b >> 10).to_string(),
            Err(e) => format!("unknown({e})"),
        };
        let stat = |tag| s.get(tag).map_or("-".to_string(), |v| v.to_string());
        format!(
            "balloon: phase={marker} guest_rss_kib={rss} target_pages={} actual_pages={} \
             inflated={} discarded={} deflated={} outside_ram={} duplicates={} \
             not_in_balloon={} malformed={} discard_errors={} config_writes_ignored={} \
             reported={} report_refused={} reset_released={} \
             stats_updates={} stats_free={} stats_total={} stats_available={}",
            self.shared.target_pages(),
            self.shared.actual_pages(),
            c.inflated,
            c.discarded,
            c.deflated,
            c.outside_ram,
            c.duplicates,
            c.not_in_balloon,
            c.malformed,
            c.discard_errors,
            c.config_writes_ignored,
            c.reported,
            c.report_refused,
            c.reset_released,
            s.updates,
            stat(TAG_MEMFREE),
            stat(TAG_MEMTOT),
            stat(TAG_AVAIL),
        )
    }

    /// The notes for the report: each phase mark's, the end's, and the transport's.
    pub fn notes(&self, mem: &GuestMem) -> Vec<String> {
        let mut notes = std::mem::take(&mut *lock(&self.marks));
        notes.push(self.note("end", mem));
        notes.extend(self.function.notes());
        notes
    }
}

/// Resident bytes of guest memory, from mincore over each region's mapping.
pub fn resident_bytes(mem: &GuestMem) -> std::io::Result<u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).unwrap_or(4096).max(1);
    let mut total = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut vec = vec![0u8; len.div_ceil(page) as usize];
        // SAFETY: host..host+len is the region's own mapping (page-aligned, as mmap returns
        // it), and `vec` has one byte per page of it, as mincore writes.
        let r = unsafe { libc::mincore(host.cast(), len as usize, vec.as_mut_ptr()) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        total += vec.iter().filter(|&&b| b & 1 != 0).count() as u64 * page;
    }
    Ok(total)
}

/// Attach the balloon on INTx `gsi`, with `target_bytes` of guest memory asked for from the
/// start (None: the whole RAM, an empty balloon).
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    gsi: u8,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
    target_bytes: Option<u64>,
) -> Result<(AttachedBalloon, String), HarnessError> {
    let name = "virtio-balloon".to_string();
    let ram_bytes = mem.last_addr().0 + 1 - mem.iter().next().map_or(0, |r| r.start_addr().0);
    let shared = Arc::new(BalloonShared::new(ram_bytes));
    if let Some(bytes) = target_bytes {
        let pages = shared
            .target_for(bytes)
            .map_err(|e| HarnessError::Usage(format!("--balloon-target: {e}")))?;
        shared.set_target_pages(pages);
    }
    let balloon = Balloon::new(mem, shared.clone());
    let vectors = transport_pci::msix_vectors(NUM_QUEUES) as usize;
    let irq = function_irq(dm, router, &name, vectors, gsi)?;
    let dev = VirtioPciDevice::with_msix(Box::new(balloon), mem.clone(), irq, gsi, true)
        .map_err(|e| HarnessError::Other(format!("{name}: {e}")))?;
    let num_queues = dev.num_queues();
    let dev = Arc::new(Mutex::new(dev));
    let (bar, bdf) = place(dm, &name, &dev)?;
    let mut mode = "inline";
    if io_mode == IoMode::Thread {
        let mut notifies = Vec::new();
        for q in 0..num_queues {
            let addr = bar + VirtioPciDevice::notify_offset(q);
            if let Some(evt) = dm.ioeventfd(IoEventAddress::Mmio(addr), libc::EFD_NONBLOCK) {
                notifies.push((q, evt));
            }
        }
        if !notifies.is_empty() {
            io_thread::spawn(&format!("{name}-io"), dev.clone(), notifies)
                .map_err(|e| HarnessError::Other(format!("{name}: I/O thread: {e}")))?;
            mode = "thread";
        }
    }
    let control: Arc<dyn BalloonControl> = Arc::new(BalloonHandle {
        shared: shared.clone(),
        dev: dev.clone(),
    });
    let note = format!(
        "{name} at {bdf}, BAR0 {bar:#x}, INTx GSI {gsi}, {vectors} MSI-X vectors, I/O {mode}, \
         {} of {} pages asked for",
        shared.target_pages(),
        ram_bytes >> 12
    );
    Ok((
        AttachedBalloon {
            function: Attached { name, dev },
            shared,
            control,
            marks: Mutex::default(),
        },
        note,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_util::RecordingIrq;
    use crate::devices::virtio::transport_pci::{common, DEVICE_OFFSET};
    use vm_memory::GuestAddress;

    /// The monitor's `balloon <MiB>`: num_pages for the rest of the RAM, a new config
    /// generation for the driver; nonsense is refused and changes nothing.
    #[test]
    fn set_guest_memory_sets_the_target_and_bumps_the_generation() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 256 << 20)]).unwrap();
        let shared = Arc::new(BalloonShared::new(256 << 20));
        let balloon = Balloon::new(&mem, shared.clone());
        let irq = Arc::new(RecordingIrq::default());
        let dev = VirtioPciDevice::new(Box::new(balloon), mem, irq, 11).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let handle = BalloonHandle {
            shared,
            dev: dev.clone(),
        };
        let read = |off: u64, len: usize| {
            let mut b = vec![0u8; len];
            lock(&dev).bar_read(off, &mut b);
            crate::devices::le_value(&b)
        };
        let generation = read(common::CONFIG_GENERATION, 1);
        handle.set_guest_memory(192 << 20).unwrap();
        assert_eq!(read(DEVICE_OFFSET, 4), 16384, "num_pages");
        assert_ne!(read(common::CONFIG_GENERATION, 1), generation);
        let info = handle.info();
        assert_eq!((info.ram_bytes, info.target_pages), (256 << 20, 16384));
        assert_eq!(info.actual_bytes(), 256 << 20, "nothing in the balloon yet");
        for bad in [0, (256 << 20) + 1, u64::MAX] {
            assert!(handle.set_guest_memory(bad).is_err(), "{bad}");
        }
        assert_eq!(handle.info().target_pages, 16384);
    }

    #[test]
    fn resident_bytes_follow_touches_and_discards() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let before = resident_bytes(&mem).unwrap();
        use vm_memory::Bytes;
        let chunk = vec![1u8; 16 << 20];
        mem.write_slice(&chunk, GuestAddress(0)).unwrap();
        let touched = resident_bytes(&mem).unwrap();
        assert!(touched >= before + (16 << 20), "{before} -> {touched}");
        crate::devices::virtio::balloon::inflate::discard(&mem, 0, 16 << 20).unwrap();
        let after = resident_bytes(&mem).unwrap();
        assert!(after + (16 << 20) <= touched, "{touched} -> {after}");
    }
}
