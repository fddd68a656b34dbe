//! Attaches virtio-blk disks: one virtio-pci function each, with its BAR0 register blocks on
//! the MMIO bus (named `virtio-blk<N>-common`, `-isr`, `-device`, `-notify`, `-msix` so exits
//! are counted per block), and the KVM side of its interrupts and notifications:
//!
//! - MSI-X: one GSI (from 24 up) and one irqfd per table entry. KVM_SET_GSI_ROUTING replaces
//!   the whole table, so [`GsiRouter`] always installs the default PIC/IOAPIC routes for GSIs
//!   0..23 together with the MSI routes; a route is (re)applied when the guest programs or
//!   unmasks an entry, and checked again before each delivery.
//! - INTx (MSI-X disabled): a true level on the function's GSI through KVM_IRQ_LINE: raised
//!   when the ISR gets a bit, lowered at once when the guest reads the ISR or resets the device.
//!   While it stays high, KVM's IOAPIC re-delivers after each EOI by itself. (A resample irqfd
//!   was tried first; it can only lower the line at the guest's next EOI, so a line raised while
//!   the IOAPIC pin was masked, e.g. by a polled driver, stayed high across a device reset and
//!   fired a stale interrupt the moment a later driver unmasked the pin, as no PCI device does.)
//! - Notifies: with `IoMode::Thread`, an ioeventfd per queue notify address feeds the device's
//!   I/O thread, which polls the queue after a batch for up to the disk's `poll-max-ns=`
//!   (default [`DEFAULT_POLL_MAX_NS`], QEMU's); with `IoMode::Inline` the notify write exits
//!   and is processed in the vCPU, and nothing polls.

use super::device_manager::DeviceManager;
use super::memory::GuestMem;
use super::IoMode;
use crate::backends::disk::VirtioDisk;
use crate::devices::lock;
use crate::devices::virtio::blk::Blk;
use crate::devices::virtio::device::VirtioDevice;
use crate::devices::virtio::io_thread::IoThreadConfig;
use crate::devices::virtio::poll::{PollPolicy, DEFAULT_POLL_MAX_NS};
use crate::devices::virtio::transport_pci::{self, BarRegion, VirtioPciDevice};
use crate::devices::virtio::{io_thread, MsiMessage, VirtioInterrupt};
use crate::error::HarnessError;
use crate::thread_cpu::ThreadCpuClock;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use std::collections::BTreeMap;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// INTx lines for virtio functions, in order: the disks, then the NICs (10 is the exit-floor
/// device's; 14/15 are IDE's).
pub const INTX_GSIS: [u8; 5] = [11, 5, 9, 7, 6];
/// Every virtio disk, every NIC (in `--net` order), the balloon and the console take one line
/// of [`INTX_GSIS`], in that order: refuse a machine that needs more than there are.
pub fn check_intx_lines(
    virtio_disks: usize,
    nics: usize,
    balloon: bool,
    console: bool,
) -> Result<(), HarnessError> {
    if virtio_disks + nics > INTX_GSIS.len() {
        return Err(HarnessError::Usage(format!(
            "--net: at most {} virtio disks and NICs together (one INTx line each)",
            INTX_GSIS.len()
        )));
    }
    if balloon && virtio_disks + nics >= INTX_GSIS.len() {
        return Err(HarnessError::Usage(format!(
            "--balloon: at most {} disks and NICs with it",
            INTX_GSIS.len() - 1
        )));
    }
    if console && virtio_disks + nics + usize::from(balloon) >= INTX_GSIS.len() {
        return Err(HarnessError::Usage(format!(
            "--console: at most {} disks, NICs and balloon with it",
            INTX_GSIS.len() - 1
        )));
    }
    Ok(())
}

/// How many virtio disks a run can have (one INTx GSI each).
pub const MAX_DISKS: usize = INTX_GSIS.len();
/// First GSI for MSI routes (0..23 are the IOAPIC pins).
pub const FIRST_MSI_GSI: u32 = 24;
const IOAPIC_PINS: u32 = 24;

fn other(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Other(format!("{what}: {e}"))
}

/// The VM's GSI routing table: the default irqchip routes plus our MSI routes.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
    pub applied: u64,
}

impl GsiRouter {
    /// A router on its own handle to the VM (a dup of the VM fd), so interrupt objects can
    /// outlive the borrow the device manager holds.
    pub fn new(kvm: &kvm_ioctls::Kvm, vm: &VmFd) -> Result<Self, HarnessError> {
        // SAFETY: dup has no memory-safety preconditions; the result is checked below.
        let fd = unsafe { libc::dup(vm.as_raw_fd()) };
        if fd < 0 {
            return Err(other("dup VM fd", std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh duplicate of a valid VM fd that nothing else owns; the new
        // VmFd takes ownership and closes it.
        let vm = unsafe { kvm.create_vmfd_from_rawfd(fd) }.map_err(|e| other("VM fd", e))?;
        Ok(Self {
            vm: Arc::new(vm),
            msi: BTreeMap::new(),
            next_gsi: FIRST_MSI_GSI,
            applied: 0,
        })
    }

    pub fn alloc_gsi(&mut self) -> u32 {
        let g = self.next_gsi;
        self.next_gsi += 1;
        g
    }

    /// The full table: PIC (chip 0 pins 0..7, chip 1 pins 0..7, without the cascade pin 2),
    /// IOAPIC (chip 2, pins 0..23, GSI = pin), then the MSI routes.
    pub fn entries(msi: &BTreeMap<u32, MsiMessage>) -> Vec<kvm_irq_routing_entry> {
        let chip = |gsi: u32, irqchip: u32, pin: u32| {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_IRQCHIP,
                ..Default::default()
            };
            e.u.irqchip.irqchip = irqchip;
            e.u.irqchip.pin = pin;
            e
        };
        let mut v = Vec::new();
        for gsi in 0..16u32 {
            if gsi == 2 {
                continue;
            }
            let (c, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            v.push(chip(gsi, c, pin));
        }
        for pin in 0..IOAPIC_PINS {
            v.push(chip(pin, KVM_IRQCHIP_IOAPIC, pin));
        }
        for (&gsi, m) in msi {
            let mut e = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                ..Default::default()
            };
            e.u.msi.address_lo = m.addr as u32;
            e.u.msi.address_hi = (m.addr >> 32) as u32;
            e.u.msi.data = m.data;
            v.push(e);
        }
        v
    }

    fn apply(&mut self) -> Result<(), String> {
        let table =
            KvmIrqRouting::from_entries(&Self::entries(&self.msi)).map_err(|e| format!("{e:?}"))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| format!("KVM_SET_GSI_ROUTING: {e}"))?;
        self.applied += 1;
        Ok(())
    }

    /// Route `gsi` to `msg`; applies the table only if that changes it.
    pub fn set_msi(&mut self, gsi: u32, msg: MsiMessage) -> Result<(), String> {
        if self.msi.get(&gsi) == Some(&msg) {
            return Ok(());
        }
        self.msi.insert(gsi, msg);
        self.apply()
    }
}

/// MSI-X vectors and the INTx line of one virtio-pci function, through KVM irqfds.
pub struct KvmVirtioIrq {
    router: Arc<Mutex<GsiRouter>>,
    /// Index = MSI-X vector.
    msi: Vec<(u32, EventFd)>,
    vm: Arc<VmFd>,
    intx_gsi: u32,
    /// The level we last set (changes only under the transport's lock).
    intx_level: AtomicBool,
}

impl KvmVirtioIrq {
    fn set_intx(&self, level: bool) -> std::io::Result<()> {
        if self.intx_level.swap(level, Ordering::SeqCst) == level {
            return Ok(());
        }
        self.vm
            .set_irq_line(self.intx_gsi, level)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
}

impl VirtioInterrupt for KvmVirtioIrq {
    fn msi(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
        let Some((gsi, evt)) = self.msi.get(vector as usize) else {
            return Ok(());
        };
        lock(&self.router)
            .set_msi(*gsi, msg)
            .map_err(std::io::Error::other)?;
        evt.write(1)
    }

    fn msi_update(&self, vector: u16, msg: MsiMessage) {
        if let Some((gsi, _)) = self.msi.get(vector as usize) {
            let _ = lock(&self.router).set_msi(*gsi, msg);
        }
    }

    fn intx_assert(&self) -> std::io::Result<()> {
        self.set_intx(true)
    }

    fn intx_deassert(&self) {
        let _ = self.set_intx(false);
    }
}

/// A virtio-pci function of the machine, kept for the run's report.
pub struct Attached {
    /// `virtio-blk0`, ...
    pub name: String,
    pub dev: Arc<Mutex<VirtioPciDevice>>,
}

/// The prefix of a disk's counters in the run's notes: `{"disk": "virtio-blk0", "requests":
/// N, "uring": null or cache=none's counts}` (`--exits-json`, and `--verbose` at the end).
pub const DISK_COUNTERS_NOTE: &str = "disk-counters: ";

/// The disks' counters in a run's notes, as [`DISK_COUNTERS_NOTE`] wrote them.
pub fn disk_counters(notes: &[String]) -> Vec<serde_json::Value> {
    notes
        .iter()
        .filter_map(|n| serde_json::from_str(n.strip_prefix(DISK_COUNTERS_NOTE)?).ok())
        .collect()
}

impl Attached {
    /// The run's notes about this function: what its driver did wrong, if anything, then
    /// what the device counted.
    pub fn notes(&self) -> Vec<String> {
        let dev = lock(&self.dev);
        let mut notes: Vec<String> = dev
            .stats()
            .driver_errors()
            .into_iter()
            .map(|e| format!("{}: {e}", self.name))
            .collect();
        let counters = lock(dev.engine()).device().counters_json();
        if let Some(serde_json::Value::Object(mut counters)) = counters {
            counters.insert("disk".into(), self.name.clone().into());
            notes.push(format!(
                "{DISK_COUNTERS_NOTE}{}",
                serde_json::Value::Object(counters)
            ));
        }
        notes
    }
}

/// The virtio disks as attached.
pub struct AttachedDisks {
    pub functions: Vec<Attached>,
    /// A line about each disk, for --verbose.
    pub notes: Vec<String>,
    /// The CPU clocks of their I/O threads (none with `IoMode::Inline`).
    pub io_thread_clocks: Vec<ThreadCpuClock>,
}

/// Attach every `--disk virtio:...` in order, their MSI routes in `router` (the VM's one
/// table).
pub fn attach_all(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    opened: Vec<VirtioDisk>,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
) -> Result<AttachedDisks, HarnessError> {
    let mut disks = AttachedDisks {
        functions: Vec::new(),
        notes: Vec::new(),
        io_thread_clocks: Vec::new(),
    };
    for (n, disk) in opened.into_iter().enumerate() {
        let (function, note, clocks) = attach_blk(dm, mem, n, disk, INTX_GSIS[n], io_mode, router)?;
        disks.functions.push(function);
        disks.notes.push(note);
        disks.io_thread_clocks.extend(clocks);
    }
    Ok(disks)
}

fn attach_blk(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    disk: VirtioDisk,
    gsi: u8,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
) -> Result<(Attached, String, Vec<ThreadCpuClock>), HarnessError> {
    let name = format!("virtio-blk{n}");
    let path = disk.disk.path().display().to_string();
    let with_msix = disk.msix;
    let poll_max_ns = disk.poll_max_ns.unwrap_or(DEFAULT_POLL_MAX_NS);
    // cache=none: the image O_DIRECT through io_uring, whose completions wake the I/O thread
    // (inline, each drain waits for its own batch).
    let mut blk = match disk.direct {
        Some(direct) => {
            Blk::on_direct(direct).map_err(|e| other(&format!("{name}: io_uring"), e))?
        }
        None => Blk::on_raw(disk.disk),
    };
    let cache = match blk.completion_fd() {
        Some(_) => ", cache=none (O_DIRECT, io_uring)",
        None => "",
    };
    let completions = match blk.completion_fd() {
        Some(fd) if io_mode == IoMode::Thread => {
            vec![(0, fd.try_clone().map_err(|e| other("eventfd", e))?)]
        }
        _ => Vec::new(),
    };
    blk.set_completions_watched(!completions.is_empty());
    blk.set_polled(io_mode == IoMode::Thread && poll_max_ns > 0);
    // queues=N: N request queues, a vector and an I/O thread each.
    let blk = blk
        .with_queues(disk.queues)
        .map_err(|e| HarnessError::Usage(format!("--disk virtio: {e}")))?;

    let vectors = if with_msix { msix_vectors_of(&blk) } else { 0 };
    let irq = function_irq(dm, router, &name, vectors, gsi)?;
    let dev = VirtioPciDevice::with_msix(Box::new(blk), mem.clone(), irq, gsi, with_msix)
        .map_err(|e| HarnessError::Other(format!("{name}: {e}")))?;
    let num_queues = dev.num_queues();
    let dev = Arc::new(Mutex::new(dev));
    let (bar, bdf) = place(dm, &name, &dev)?;

    let attached = Attached {
        name: name.clone(),
        dev: dev.clone(),
    };
    let mut mode = "inline".to_string();
    let mut clocks = Vec::new();
    if io_mode == IoMode::Thread {
        let mut notifies = Vec::new();
        for q in 0..num_queues {
            let addr = bar + VirtioPciDevice::notify_offset(q);
            if let Some(evt) = dm.ioeventfd(IoEventAddress::Mmio(addr), libc::EFD_NONBLOCK) {
                notifies.push((q, evt));
            }
        }
        // Queues whose ioeventfd KVM refused still work: their notify exits and is
        // processed inline.
        // One thread per queue, each with its own epoll and polling window, so the queues
        // wait for nothing of each other's but the device's lock. cache=none's completions
        // (one queue only) go to queue 0's.
        let mut completions = Some(completions);
        let threads = notifies.len();
        for (q, evt) in notifies {
            let config = IoThreadConfig {
                poll: PollPolicy::new(poll_max_ns),
            };
            let thread_name = match num_queues {
                1 => format!("{name}-io"),
                _ => format!("{name}-io{q}"),
            };
            let done = if q == 0 { completions.take() } else { None };
            let thread = io_thread::spawn_with_completions(
                &thread_name,
                dev.clone(),
                vec![(q, evt)],
                done.unwrap_or_default(),
                config,
            )
            .map_err(|e| other("I/O thread", e))?;
            clocks.push(thread.cpu);
        }
        if let Some(done) = completions.filter(|c| !c.is_empty()) {
            let thread = io_thread::spawn_with_completions(
                &format!("{name}-io"),
                dev,
                Vec::new(),
                done,
                IoThreadConfig::default(),
            )
            .map_err(|e| other("I/O thread", e))?;
            clocks.push(thread.cpu);
        }
        if threads > 0 {
            mode = format!("{threads} thread(s), polling up to {poll_max_ns} ns");
        }
    }
    let note = format!(
        "{name}: {path} at {bdf}, BAR0 {bar:#x}, INTx GSI {gsi}, {vectors} MSI-X vectors, I/O {mode}{cache}"
    );
    Ok((attached, note, clocks))
}

/// The KVM side of a function's interrupts: `vectors` MSI GSIs with their routes in place
/// before their irqfds, then the INTx line `gsi`. A function without MSI-X passes 0 vectors.
pub fn function_irq(
    dm: &mut DeviceManager,
    router: &Arc<Mutex<GsiRouter>>,
    name: &str,
    vectors: usize,
    gsi: u8,
) -> Result<Arc<KvmVirtioIrq>, HarnessError> {
    let mut msi = Vec::new();
    {
        let mut r = lock(router);
        for _ in 0..vectors {
            let g = r.alloc_gsi();
            r.msi.insert(g, MsiMessage::default());
            msi.push(g);
        }
        r.apply()
            .map_err(|e| HarnessError::Other(format!("{name}: {e}")))?;
    }
    let mut msi_fds = Vec::new();
    for g in msi {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| other("eventfd", e))?;
        dm.vm
            .fd
            .register_irqfd(&evt, g)
            .map_err(|e| other(&format!("{name}: KVM_IRQFD on GSI {g}"), e))?;
        msi_fds.push((g, evt));
    }
    Ok(Arc::new(KvmVirtioIrq {
        router: router.clone(),
        msi: msi_fds,
        vm: lock(router).vm.clone(),
        intx_gsi: gsi as u32,
        intx_level: AtomicBool::new(false),
    }))
}

/// Give a virtio-pci function its BAR0 and the next PCI slot, and put its register blocks on
/// the MMIO bus as `<name>-common`, `-isr`, ... Returns the BAR address and the slot.
pub fn place(
    dm: &mut DeviceManager,
    name: &str,
    dev: &Arc<Mutex<VirtioPciDevice>>,
) -> Result<(u64, crate::devices::pci::Bdf), HarnessError> {
    let bar = dm.alloc_mmio_bar(transport_pci::BAR_SIZE)?;
    {
        let mut d = lock(dev);
        let c = d.config_mut();
        c.set_bar_address(transport_pci::BAR, bar)
            .map_err(|e| other(&format!("{name} BAR0"), e))?;
        c.enable(DeviceManager::DECODE_ALL);
    }
    let bdf = dm.next_bdf()?;
    dm.add_pci(bdf, dev.clone());
    for (suffix, off, len) in transport_pci::REGIONS {
        dm.insert_mmio(
            &format!("{name}-{suffix}"),
            bar + off,
            len,
            Arc::new(Mutex::new(BarRegion::new(dev.clone(), off))),
        )?;
    }
    Ok((bar, bdf))
}

/// MSI-X vectors (one GSI and irqfd each) of a device's function: one per queue plus the
/// configuration vector, the same count the transport sizes its MSI-X table with.
fn msix_vectors_of(device: &dyn VirtioDevice) -> usize {
    transport_pci::msix_vectors(device.queue_max_sizes().len()) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_util::{InertDevice, RecordingIrq};
    use crate::devices::virtio::Memory;

    /// What the transport counts reaches the function's notes, under its name.
    #[test]
    fn attached_functions_note_their_drivers_errors() {
        use crate::devices::bus::BusDevice;
        use crate::devices::pci::config::CMD_MEM;
        use transport_pci::common;
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let irq = Arc::new(RecordingIrq::default());
        let mut t =
            VirtioPciDevice::new(Box::new(InertDevice::new(2, &[16])), mem, irq, 11).unwrap();
        t.config_mut().enable(CMD_MEM);
        let function = Attached {
            name: "virtio-blk0".into(),
            dev: Arc::new(Mutex::new(t)),
        };
        let mut bar = BarRegion::new(function.dev.clone(), 0);
        // ACKNOWLEDGE, then DRIVER_OK twice without DRIVER and FEATURES_OK: refused.
        bar.write(common::DEVICE_STATUS, &[1]);
        assert_eq!(function.notes(), Vec::<String>::new());
        bar.write(common::DEVICE_STATUS, &[1 | 4]);
        bar.write(common::DEVICE_STATUS, &[1 | 4]);
        assert_eq!(
            function.notes(),
            ["virtio-blk0: 2 device-status writes ignored (illegal transitions)"]
        );
    }

    #[test]
    fn msix_vectors_come_from_the_queue_count() {
        let mem = Memory::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        for n in [1, 2, 4, 9] {
            let sizes = vec![16; n];
            let dev = InertDevice::new(2, &sizes);
            assert_eq!(msix_vectors_of(&dev), n + 1, "{n} queues");
            // The GSIs the wiring allocates match the transport's table.
            let irq = Arc::new(RecordingIrq::default());
            let t =
                VirtioPciDevice::new(Box::new(InertDevice::new(2, &sizes)), mem.clone(), irq, 11)
                    .unwrap();
            assert_eq!(t.msix().vectors() as usize, msix_vectors_of(&dev));
        }
    }

    #[test]
    fn routing_table_keeps_the_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(
            24,
            MsiMessage {
                addr: 0xfee0_1000,
                data: 0x41,
            },
        );
        let e = GsiRouter::entries(&msi);
        // 15 PIC + 24 IOAPIC + 1 MSI.
        assert_eq!(e.len(), 40);
        let chip: Vec<(u32, u32, u32)> = e
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: irqchip is the active member of irqchip-type entries.
            .map(|e| unsafe { (e.gsi, e.u.irqchip.irqchip, e.u.irqchip.pin) })
            .collect();
        assert!(chip.contains(&(0, KVM_IRQCHIP_PIC_MASTER, 0)));
        assert!(!chip.contains(&(2, KVM_IRQCHIP_PIC_MASTER, 2)));
        assert!(chip.contains(&(9, KVM_IRQCHIP_PIC_SLAVE, 1)));
        assert!(chip.contains(&(11, KVM_IRQCHIP_IOAPIC, 11)));
        assert!(chip.contains(&(23, KVM_IRQCHIP_IOAPIC, 23)));
        let m = e.last().unwrap();
        assert_eq!((m.gsi, m.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: msi is the active member of MSI-type entries.
        let (lo, data) = unsafe { (m.u.msi.address_lo, m.u.msi.data) };
        assert_eq!((lo, data), (0xfee0_1000, 0x41));
    }
}
