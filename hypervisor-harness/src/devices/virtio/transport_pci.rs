//! The virtio-pci modern transport (virtio 1.x §4.1) around a [`VirtioDevice`].
//!
//! One PCI function: vendor 0x1af4, device 0x1040 + device type, revision 1, INTA with the
//! interrupt line the harness assigns. Everything lives in BAR0, a 64-bit memory BAR:
//!
//! | offset  | what                                                     | capability |
//! |---------|----------------------------------------------------------|------------|
//! | 0x0000  | common configuration (`virtio_pci_common_cfg`, 0x38)     | vendor, cfg_type 1 |
//! | 0x1000  | ISR status (1 byte, read to clear)                       | vendor, cfg_type 3 |
//! | 0x2000  | device configuration                                     | vendor, cfg_type 4 |
//! | 0x3000  | notify: queue N at 0x3000 + 4 * N (multiplier 4)         | vendor, cfg_type 2 |
//! | 0x4000  | MSI-X table (queues + 1 entries)                         | MSI-X (0x11) |
//! | 0x5000  | MSI-X PBA                                                | |
//!
//! Each queue has its own notify address, so `vmm/` can bind one ioeventfd per queue.
//!
//! The transport is three parts with a lock each: the register half ([`VirtioPciDevice`]: PCI
//! configuration, the common configuration of [`super::common_config`], the status machine),
//! the [`QueueEngine`] around the device model, and [`PciInterrupt`] (ISR, MSI-X, INTx), which
//! the model holds as its [`InterruptTrigger`] from DRIVER_OK to reset.
//!
//! The guest is not trusted: queue registers are validated as they are written, rings are
//! checked against guest memory before use, and a broken ring sets DEVICE_NEEDS_RESET (status
//! bit 64) and raises a configuration interrupt instead of stopping anything.

use super::common_config::{CommonConfig, CommonWrite};
use super::device::{Activation, InterruptTrigger, InterruptType, QueueBroken, VirtioDevice};
use super::drain::drains_cut;
use super::{Memory, VirtioInterrupt};
use crate::devices::bus::BusDevice;
use crate::devices::lock;
use crate::devices::pci::config::{PciConfig, CMD_BUS_MASTER, CMD_MEM};
use crate::devices::pci::msix::{self, Msix, Trigger};
use crate::devices::pci::PciFunction;
use std::mem::{offset_of, size_of};
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{ByteValued, Bytes, GuestAddress};

pub use super::common_config::{offsets as common, COMMON_LEN, NO_VECTOR};

pub const VENDOR_ID: u16 = 0x1af4;
pub const DEVICE_ID_BASE: u16 = 0x1040;
pub const SUBSYSTEM_ID: u16 = 0x1100;
pub const REVISION: u8 = 1;

/// The BAR everything lives in (64-bit: slots 0 and 1).
pub const BAR: usize = 0;
pub const BAR_SIZE: u64 = 0x8000;
/// Each register block has a page of its own in the BAR.
const REGION: u64 = 0x1000;
pub const COMMON_OFFSET: u64 = 0;
pub const ISR_OFFSET: u64 = COMMON_OFFSET + REGION;
/// The ISR status is one byte.
pub const ISR_LEN: u64 = size_of::<u8>() as u64;
pub const DEVICE_OFFSET: u64 = ISR_OFFSET + REGION;
pub const NOTIFY_OFFSET: u64 = DEVICE_OFFSET + REGION;
/// Bytes between two queues' notify registers (each a 16-bit queue index write).
pub const NOTIFY_MULTIPLIER: u32 = 2 * size_of::<u16>() as u32;
pub const MSIX_TABLE_OFFSET: u64 = NOTIFY_OFFSET + REGION;
pub const MSIX_PBA_OFFSET: u64 = MSIX_TABLE_OFFSET + REGION;

/// The bus regions of BAR0: (name suffix, offset in the BAR, length). Each becomes its own bus
/// range so that exits are counted per register block.
pub const REGIONS: [(&str, u64, u64); 5] = [
    ("common", COMMON_OFFSET, REGION),
    ("isr", ISR_OFFSET, REGION),
    ("device", DEVICE_OFFSET, REGION),
    ("notify", NOTIFY_OFFSET, REGION),
    ("msix", MSIX_TABLE_OFFSET, 2 * REGION),
];

pub const CAP_VENDOR: u8 = 0x09;
/// `cfg_type` of a `virtio_pci_cap` (virtio 1.x §4.1.4).
pub const CFG_COMMON: u8 = 1;
pub const CFG_NOTIFY: u8 = 2;
pub const CFG_ISR: u8 = 3;
pub const CFG_DEVICE: u8 = 4;

/// ISR status bits (virtio 1.x §4.1.4.5): a used buffer, a configuration change.
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// `struct virtio_pci_cap` (virtio 1.x §4.1.4), as it sits in configuration space.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciCap {
    pub cap_vndr: u8,
    pub cap_next: u8,
    pub cap_len: u8,
    pub cfg_type: u8,
    pub bar: u8,
    pub id: u8,
    pub padding: [u8; 2],
    pub offset: u32,
    pub length: u32,
}

/// `struct virtio_pci_notify_cap`: the capability and the notify offset multiplier.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciNotifyCap {
    pub cap: VirtioPciCap,
    pub notify_off_multiplier: u32,
}

/// The MSI-X capability (PCI 3.0 §6.8.2) as the transport places it: table and PBA in BAR0.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    pub cap_id: u8,
    pub cap_next: u8,
    pub message_control: u16,
    /// Table offset in the BAR, BAR index in the low 3 bits.
    pub table: u32,
    pub pba: u32,
}

const _: () = {
    assert!(size_of::<MsixCap>() == 12);
    assert!(size_of::<VirtioPciCap>() == 16);
    assert!(offset_of!(VirtioPciCap, offset) == 8);
    assert!(size_of::<VirtioPciNotifyCap>() == 20);
};

// SAFETY: `#[repr(C)]` structs of integers and byte arrays without padding (sizes checked
// above), so every byte pattern is a valid value.
unsafe impl ByteValued for VirtioPciCap {}
// SAFETY: as for `VirtioPciCap`; the multiplier follows it without padding.
unsafe impl ByteValued for VirtioPciNotifyCap {}
// SAFETY: `#[repr(C)]`, integers only, naturally aligned without padding (12 bytes, checked).
unsafe impl ByteValued for MsixCap {}

/// Where a BAR0 offset falls: a register block and the offset inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarBlock {
    Common(u64),
    Isr(u64),
    Device(u64),
    Notify(u64),
    MsixTable(u64),
    MsixPba(u64),
    /// Beyond the blocks: reads 0, writes ignored.
    Unused,
}

impl BarBlock {
    pub fn decode(offset: u64) -> Self {
        match offset {
            o if o < ISR_OFFSET => Self::Common(o - COMMON_OFFSET),
            o if o < DEVICE_OFFSET => Self::Isr(o - ISR_OFFSET),
            o if o < NOTIFY_OFFSET => Self::Device(o - DEVICE_OFFSET),
            o if o < MSIX_TABLE_OFFSET => Self::Notify(o - NOTIFY_OFFSET),
            o if o < MSIX_PBA_OFFSET => Self::MsixTable(o - MSIX_TABLE_OFFSET),
            o if o < MSIX_PBA_OFFSET + REGION => Self::MsixPba(o - MSIX_PBA_OFFSET),
            _ => Self::Unused,
        }
    }
}

const STATUS_ACKNOWLEDGE: u8 = VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const STATUS_DRIVER: u8 = VIRTIO_CONFIG_S_DRIVER as u8;
const STATUS_FAILED: u8 = VIRTIO_CONFIG_S_FAILED as u8;
const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;
const STATUS_NEEDS_RESET: u8 = VIRTIO_CONFIG_S_NEEDS_RESET as u8;
/// The initialisation steps, in the order a driver takes them (§3.1.1).
const INIT_STEPS: [u8; 4] = [
    STATUS_ACKNOWLEDGE,
    STATUS_DRIVER,
    STATUS_FEATURES_OK,
    STATUS_DRIVER_OK,
];
/// Command register: INTx disable.
const CMD_INTX_DISABLE: u16 = 1 << 10;

/// The PCI class triple for a virtio device type.
fn class_of(device_type: u16) -> (u8, u8, u8) {
    match device_type {
        1 => (0x02, 0x00, 0x00), // network controller
        2 => (0x01, 0x80, 0x00), // mass storage, other
        3 => (0x07, 0x80, 0x00), // communication, other
        _ => (0xff, 0x00, 0x00),
    }
}

/// A `virtio_pci_cap` of `len` bytes in all (more for the notify capability).
fn pci_cap(cfg_type: u8, offset: u64, length: u64, len: usize) -> VirtioPciCap {
    VirtioPciCap {
        cap_vndr: CAP_VENDOR,
        cap_len: len as u8,
        cfg_type,
        bar: BAR as u8,
        offset: (offset as u32).to_le(),
        length: (length as u32).to_le(),
        ..Default::default()
    }
}

/// The body of a vendor capability as `PciConfig::add_capability` takes it: without the ID
/// and next-pointer bytes, which config space fills in.
fn cap_body(cap: &impl ByteValued) -> &[u8] {
    &cap.as_slice()[offset_of!(VirtioPciCap, cap_len)..]
}

/// MSI-X table entries of a function with `num_queues` queues: one per queue plus one for
/// configuration changes. `vmm/` allocates one GSI and irqfd per entry from the same count.
pub fn msix_vectors(num_queues: usize) -> u16 {
    u16::try_from(num_queues).map_or(u16::MAX, |n| n.saturating_add(1))
}

/// Counters of what the transport saw (for tests and diagnostics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportStats {
    pub notifies: u64,
    pub queue_interrupts: u64,
    pub config_interrupts: u64,
    pub resets: u64,
    /// Device status writes the state machine refused (and ignored).
    pub illegal_status_writes: u64,
    /// Notifies that arrived with bus mastering off (their queues wait for it).
    pub deferred_notifies: u64,
    /// Accesses to BAR0 while memory decode was off (reads all-ones, writes dropped).
    pub undecoded_accesses: u64,
}

impl TransportStats {
    /// What a driver did that the transport ignored or held back, one line per kind of event
    /// (none when it did nothing wrong): the first thing to look at when a driver misbehaves.
    pub fn driver_errors(&self) -> Vec<String> {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut out = Vec::new();
        if self.illegal_status_writes != 0 {
            out.push(format!(
                "{} ignored (illegal transitions)",
                plural(
                    self.illegal_status_writes,
                    "device-status write",
                    "device-status writes"
                )
            ));
        }
        if self.deferred_notifies != 0 {
            out.push(format!(
                "{} with bus mastering off (held until it is on)",
                plural(self.deferred_notifies, "queue notify", "queue notifies")
            ));
        }
        if self.undecoded_accesses != 0 {
            out.push(format!(
                "{} with memory decode off (reads all-ones, writes dropped)",
                plural(self.undecoded_accesses, "BAR0 access", "BAR0 accesses")
            ));
        }
        out
    }
}

/// Per-queue notifies and interrupts, counted lock-free where they happen: an I/O thread's
/// ioeventfd read ([`QueueWorker::notified`]), a vCPU's notify write that exited
/// ([`VirtioPciDevice::bar_write`]), a device's queue interrupt ([`PciInterrupt`]'s trigger,
/// whether or not a vector or INTx was there to deliver it, as `queue_interrupts` counts),
/// and the batches an I/O thread found by polling the avail ring, without a notify
/// ([`QueueWorker::process_polled`]). Indices beyond the function's queues are not counted.
#[derive(Debug)]
pub struct QueueCounters {
    notifies: Box<[AtomicU64]>,
    interrupts: Box<[AtomicU64]>,
    polled: Box<[AtomicU64]>,
}

impl QueueCounters {
    fn new(num_queues: usize) -> Self {
        let zeros = || (0..num_queues).map(|_| AtomicU64::new(0)).collect();
        Self {
            notifies: zeros(),
            interrupts: zeros(),
            polled: zeros(),
        }
    }

    fn bump(counters: &[AtomicU64], index: usize) {
        if let Some(c) = counters.get(index) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn read(counters: &[AtomicU64], index: usize) -> u64 {
        counters.get(index).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Notifies of queue `index`, by ioeventfd and by exit.
    pub fn notifies(&self, index: usize) -> u64 {
        Self::read(&self.notifies, index)
    }

    /// Interrupts the device raised for queue `index`.
    pub fn interrupts(&self, index: usize) -> u64 {
        Self::read(&self.interrupts, index)
    }

    /// Batches of queue `index` an I/O thread found by polling (no notify came for them).
    pub fn polled(&self, index: usize) -> u64 {
        Self::read(&self.polled, index)
    }
}

/// The routing half of a function's interrupts: ISR, MSI-X table and vectors, INTx. A device
/// model holds it (as its [`InterruptTrigger`]) from activation on and triggers it from
/// wherever it completes work; the register half takes its lock for ISR reads, MSI-X table and
/// message-control accesses, and its own configuration interrupts. Its lock is innermost
/// (register half, then queue engine, then this) and never held across I/O.
pub struct PciInterrupt {
    state: Mutex<InterruptState>,
    lines: Arc<dyn VirtioInterrupt>,
    queue_counters: Arc<QueueCounters>,
}

struct InterruptState {
    msix: Msix,
    isr: u8,
    /// Queue vectors as the driver programmed them, copied at DRIVER_OK (they are frozen
    /// from then on); NO_VECTOR before.
    queue_vectors: Vec<u16>,
    config_vector: u16,
    /// The command register's INTx disable bit, mirrored by the register half.
    intx_disabled: bool,
    queue_interrupts: u64,
    config_interrupts: u64,
}

impl PciInterrupt {
    fn new(
        msix: Msix,
        num_queues: usize,
        lines: Arc<dyn VirtioInterrupt>,
        queue_counters: Arc<QueueCounters>,
    ) -> Self {
        Self {
            state: Mutex::new(InterruptState {
                msix,
                isr: 0,
                queue_vectors: vec![NO_VECTOR; num_queues],
                config_vector: NO_VECTOR,
                intx_disabled: false,
                queue_interrupts: 0,
                config_interrupts: 0,
            }),
            lines,
            queue_counters,
        }
    }

    fn state(&self) -> MutexGuard<'_, InterruptState> {
        lock(&self.state)
    }

    /// Deliver on `vector` with MSI-X on, else assert INTx (unless the command register
    /// disables it).
    fn signal(&self, st: &mut InterruptState, vector: u16) {
        if st.msix.enabled() {
            if vector == NO_VECTOR {
                return;
            }
            if let Trigger::Deliver(msg) = st.msix.trigger(vector) {
                let _ = self.lines.msi(vector, msg);
            }
        } else if !st.intx_disabled {
            let _ = self.lines.intx_assert();
        }
    }

    /// The driver read the ISR: it clears, and the INTx line falls.
    fn read_isr(&self) -> u8 {
        let isr = std::mem::take(&mut self.state().isr);
        self.lines.intx_deassert();
        isr
    }

    /// Device reset: no ISR bits, no vectors, INTx low. The MSI-X table is PCI state and stays.
    fn reset(&self) {
        let mut st = self.state();
        st.isr = 0;
        st.queue_vectors.fill(NO_VECTOR);
        st.config_vector = NO_VECTOR;
        drop(st);
        self.lines.intx_deassert();
    }

    fn write_msix_table(&self, offset: u64, data: &[u8]) {
        let w = self.state().msix.write_table(offset, data);
        if let Some((v, msg)) = w.changed {
            self.lines.msi_update(v, msg);
        }
        if let Some((v, msg)) = w.deliver {
            let _ = self.lines.msi(v, msg);
        }
    }

    /// The MSI-X message control register changed: pending vectors it unmasks are delivered,
    /// and with MSI-X on the function never uses INTx.
    fn set_msix_control(&self, control: u16) {
        let mut st = self.state();
        for (v, msg) in st.msix.set_control(control) {
            let _ = self.lines.msi(v, msg);
        }
        if st.msix.enabled() {
            self.lines.intx_deassert();
        }
    }
}

impl InterruptTrigger for PciInterrupt {
    fn trigger(&self, why: InterruptType) {
        let mut st = self.state();
        let vector = match why {
            InterruptType::Queue(index) => {
                st.isr |= ISR_QUEUE;
                st.queue_interrupts += 1;
                QueueCounters::bump(&self.queue_counters.interrupts, index);
                st.queue_vectors.get(index).copied().unwrap_or(NO_VECTOR)
            }
            InterruptType::Config => {
                st.isr |= ISR_CONFIG;
                st.config_interrupts += 1;
                st.config_vector
            }
        };
        self.signal(&mut st, vector);
    }
}

/// The MSI-X state of a function, borrowed from its interrupt routing (see
/// [`VirtioPciDevice::msix`]).
pub struct MsixGuard<'a>(MutexGuard<'a, InterruptState>);

impl Deref for MsixGuard<'_> {
    type Target = Msix;
    fn deref(&self) -> &Msix {
        &self.0.msix
    }
}

/// The queue-processing half of a virtio-pci function: the device model, which owns the live
/// queues from activation on. It has its own lock, held across a queue's processing (disk I/O
/// included). The register half ([`VirtioPciDevice`]) takes it only to activate, reset or
/// write device configuration, never for a register read or a notify, so a vCPU reading
/// registers never waits for a disk. Lock order: the register lock may be held while taking
/// this one, never the reverse.
pub struct QueueEngine {
    device: Box<dyn VirtioDevice>,
    /// Guest memory, to check the rings before the device sees them.
    mem: Memory,
    active: bool,
    /// The register half's epoch at activation: work admitted in another epoch is dropped.
    epoch: u64,
    /// Activations in the device's lifetime (for tests: exactly one per DRIVER_OK).
    pub activations: u64,
}

impl QueueEngine {
    /// The device model (the run's report reads its counters).
    pub fn device(&self) -> &dyn VirtioDevice {
        &*self.device
    }

    /// Process queue `index`, admitted by the register half in `epoch`. The device triggers
    /// its own interrupts; an error means the device needs a reset.
    pub fn run(&mut self, index: usize, epoch: u64) -> Result<(), QueueBroken> {
        if !self.active || self.epoch != epoch {
            return Ok(());
        }
        let Some(q) = self.device.queues().get(index) else {
            return Ok(());
        };
        if !q.ready() {
            return Ok(());
        }
        let result = if q.is_valid(&self.mem) {
            self.device.process_queue(index)
        } else {
            Err(QueueBroken("ring outside guest memory".into()))
        };
        if result.is_err() {
            // Nothing more runs until the driver resets the device.
            self.active = false;
        }
        result
    }

    /// Queue `index` of the running device, if an I/O thread may poll it: active, ready and
    /// with its rings in guest memory.
    fn pollable(&mut self, index: usize) -> Option<&mut Queue> {
        if !self.active {
            return None;
        }
        let q = self.device.queues_mut().get_mut(index)?;
        (q.ready() && q.is_valid(&self.mem)).then_some(q)
    }

    /// Polling begins (see [`super::poll`]): the driver need not notify queue `index` while
    /// the I/O thread watches its avail ring. Without the event index that is
    /// VRING_USED_F_NO_NOTIFY; with it, avail_event a queue's length and one behind the next
    /// entry the device takes, which every avail index the driver can publish next has
    /// already passed. (One behind is not enough: when the device takes an entry and
    /// suppresses again before the driver reads avail_event, the driver finds the entry it
    /// just published named and notifies for nothing. Half the index space is too far: a
    /// driver may read a value that far off as one ahead of what it published, garbage, and
    /// notify to be safe, as ours does.) Returns false if the queue is not there to poll.
    pub fn suppress_notifications(&mut self, index: usize) -> bool {
        let mem = self.mem.clone();
        let Some(q) = self.pollable(index) else {
            return false;
        };
        if !q.event_idx_enabled() {
            return q.disable_notification(&mem).is_ok();
        }
        // used->ring[size] is avail_event (virtio 1.x §2.7.8); in memory: `pollable` checked
        // the used ring against it.
        let Some(avail_event) = q
            .used_ring()
            .checked_add(USED_RING_HEADER + USED_ELEM_LEN * u64::from(q.size()))
        else {
            return false;
        };
        // The driver publishes at most a queue's length past next_avail, so no index it can
        // publish, nor the one it just published, makes vring_need_event true.
        let behind = q.next_avail().wrapping_sub(q.size()).wrapping_sub(1);
        mem.store(behind.to_le(), GuestAddress(avail_event), Ordering::Release)
            .is_ok()
    }

    /// While polling: does queue `index` have entries the device has not taken? None if the
    /// queue can no longer be polled (a reset, a broken ring).
    pub fn has_available(&mut self, index: usize) -> Option<bool> {
        let mem = self.mem.clone();
        let q = self.pollable(index)?;
        let avail = q.avail_idx(&mem, Ordering::Acquire).ok()?;
        Some(avail.0 != q.next_avail())
    }

    /// Polling ends: the driver must notify again. Then the avail ring is read once more
    /// (after a full fence, virtio-queue's `enable_notification`), so that an entry
    /// published while notifications were off is not left waiting for a notify that never
    /// comes. True if there is work (or the ring could not be read: processing it then
    /// reports the broken queue).
    pub fn resume_notifications(&mut self, index: usize) -> bool {
        let mem = self.mem.clone();
        let Some(q) = self.pollable(index) else {
            return false;
        };
        q.enable_notification(&mem).unwrap_or(true)
    }
}

/// The used ring's flags and idx before its elements, and one element (id, len).
const USED_RING_HEADER: u64 = 2 * size_of::<u16>() as u64;
const USED_ELEM_LEN: u64 = 2 * size_of::<u32>() as u64;

/// A handle for an I/O thread: admits a notify under the register lock, then lets the device
/// work under the [`QueueEngine`] lock only (the one step that can take long). The register
/// lock is taken again only if the queue broke.
#[derive(Clone)]
pub struct QueueWorker {
    regs: Arc<Mutex<VirtioPciDevice>>,
    engine: Arc<Mutex<QueueEngine>>,
    queue_counters: Arc<QueueCounters>,
}

impl QueueWorker {
    pub fn new(regs: &Arc<Mutex<VirtioPciDevice>>) -> Self {
        let r = lock(regs);
        let (engine, queue_counters) = (r.engine.clone(), r.queue_counters.clone());
        drop(r);
        Self {
            regs: regs.clone(),
            engine,
            queue_counters,
        }
    }

    /// The driver notified queue `index`: its ioeventfd fired and was read. Counted, then
    /// processed. True: the pass stopped at its bound ([`super::drain`]) with chains left,
    /// so the caller notifies the queue again (writes the ioeventfd itself) to run the rest
    /// after whatever else it has to do.
    pub fn notified(&self, index: usize) -> bool {
        QueueCounters::bump(&self.queue_counters.notifies, index);
        self.process(index)
    }

    /// Process queue `index` (after a notify, or when a backend has work for it). True as
    /// for [`Self::notified`].
    pub fn process(&self, index: usize) -> bool {
        let admitted = lock(&self.regs).admit(index);
        self.run_admitted(index, admitted)
    }

    /// Process queue `index`, whose work an I/O thread found by polling: admitted as a
    /// notify would be, but counted as polled, not as a notify. False if it was not admitted
    /// (the device is not running, or bus mastering is off: then the queue waits for it as
    /// a notified one does), so that the poller stops polling.
    pub fn process_polled(&self, index: usize) -> bool {
        let admitted = lock(&self.regs).admit_work(index);
        if admitted.is_none() {
            return false;
        }
        QueueCounters::bump(&self.queue_counters.polled, index);
        self.run_admitted(index, admitted);
        true
    }

    /// Whether the pass stopped at its bound. Told by the process-wide count of cut passes:
    /// another device's cut at the same moment only costs this queue a pass that finds
    /// nothing, and none is missed.
    fn run_admitted(&self, index: usize, admitted: Option<u64>) -> bool {
        let Some(epoch) = admitted else {
            return false;
        };
        let cuts = drains_cut();
        if let Err(broken) = lock(&self.engine).run(index, epoch) {
            lock(&self.regs).queue_broken(epoch, broken);
            return false;
        }
        drains_cut() != cuts
    }

    /// See [`QueueEngine::suppress_notifications`].
    pub fn suppress_notifications(&self, index: usize) -> bool {
        lock(&self.engine).suppress_notifications(index)
    }

    /// See [`QueueEngine::has_available`].
    pub fn has_available(&self, index: usize) -> Option<bool> {
        lock(&self.engine).has_available(index)
    }

    /// See [`QueueEngine::resume_notifications`].
    pub fn resume_notifications(&self, index: usize) -> bool {
        lock(&self.engine).resume_notifications(index)
    }

    /// Per-queue counters of the function.
    pub fn queue_counters(&self) -> &QueueCounters {
        &self.queue_counters
    }
}

/// The register half of a virtio-pci function: PCI configuration, the common configuration
/// (with an image of the queue registers), the status machine and a copy of the device
/// configuration. This is what the vCPU's accesses lock.
pub struct VirtioPciDevice {
    config: PciConfig,
    /// Config offset of the MSI-X capability; None for a function without MSI-X (INTx only),
    /// whose MSI-X region then reads as zeros and ignores writes.
    msix_cap: Option<usize>,
    engine: Arc<Mutex<QueueEngine>>,
    interrupt: Arc<PciInterrupt>,
    /// The device configuration as the driver reads it (refreshed after a write).
    device_config: Vec<u8>,
    /// The common configuration, with the queue registers as the driver programmed them
    /// (frozen from DRIVER_OK on).
    common: CommonConfig,
    /// Set at DRIVER_OK, cleared by reset: the device is activated at most once per cycle.
    activated: bool,
    /// Bumped by every reset; completions of work admitted before it are dropped.
    epoch: u64,
    /// Queues notified while bus mastering was off; processed when it is turned on.
    deferred: Vec<bool>,
    /// Why the device needs a reset, if it does.
    broken: Option<String>,
    /// Counted here; the interrupt counts are the routing half's (see [`Self::stats`]).
    stats: TransportStats,
    /// Per queue, shared with the routing half and the I/O threads' workers.
    queue_counters: Arc<QueueCounters>,
}

impl VirtioPciDevice {
    /// Wrap `device`. `intx_line` is the interrupt line (GSI) preset in config space.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        irq: Arc<dyn VirtioInterrupt>,
        intx_line: u8,
    ) -> Result<Self, String> {
        Self::with_msix(device, mem, irq, intx_line, true)
    }

    /// As [`Self::new`]; `msix` false gives the function no MSI-X capability, as QEMU's
    /// `vectors=0` does, so that a driver must use INTx (or poll).
    pub fn with_msix(
        device: Box<dyn VirtioDevice>,
        mem: Memory,
        irq: Arc<dyn VirtioInterrupt>,
        intx_line: u8,
        with_msix: bool,
    ) -> Result<Self, String> {
        let ty = device.device_type();
        let (class, subclass, prog_if) = class_of(ty);
        let mut config = PciConfig::new(VENDOR_ID, DEVICE_ID_BASE + ty, class, subclass, prog_if);
        config.set_revision(REVISION);
        config.set_subsystem(VENDOR_ID, SUBSYSTEM_ID);
        config.set_interrupt(1, intx_line);
        let e = |e: crate::devices::pci::config::ConfigError| e.to_string();
        config.add_mem64_bar(BAR, BAR_SIZE, false).map_err(e)?;
        let nq = device.queue_max_sizes().len();
        if nq == 0 || nq > 1024 {
            return Err(format!("virtio device with {nq} queues"));
        }
        let msix = Msix::new(msix_vectors(nq));
        if msix.table_len() > REGION || msix.pba_len() > REGION {
            return Err("too many queues for the MSI-X table".into());
        }
        let common = CommonConfig::new(
            device.features(),
            device.queue_max_sizes(),
            if with_msix { msix.vectors() } else { 0 },
        )?;
        const CAP_LEN: usize = size_of::<VirtioPciCap>();
        let notify = VirtioPciNotifyCap {
            cap: pci_cap(
                CFG_NOTIFY,
                NOTIFY_OFFSET,
                nq as u64 * NOTIFY_MULTIPLIER as u64,
                size_of::<VirtioPciNotifyCap>(),
            ),
            notify_off_multiplier: NOTIFY_MULTIPLIER.to_le(),
        };
        let dev_len = (device.config_len() as u64).clamp(1, REGION);
        for body in [
            cap_body(&pci_cap(CFG_COMMON, COMMON_OFFSET, COMMON_LEN, CAP_LEN)),
            cap_body(&notify),
            cap_body(&pci_cap(CFG_ISR, ISR_OFFSET, ISR_LEN, CAP_LEN)),
            cap_body(&pci_cap(CFG_DEVICE, DEVICE_OFFSET, dev_len, CAP_LEN)),
        ] {
            config.add_capability(CAP_VENDOR, body, &[]).map_err(e)?;
        }
        let msix_cap = if with_msix {
            let cap = MsixCap {
                cap_id: msix::CAP_ID,
                cap_next: 0,
                message_control: msix.control_table_size().to_le(),
                table: (MSIX_TABLE_OFFSET as u32 | BAR as u32).to_le(),
                pba: (MSIX_PBA_OFFSET as u32 | BAR as u32).to_le(),
            };
            // Message control: enable and function mask are writable.
            let writable = (msix::CTRL_ENABLE | msix::CTRL_FUNCTION_MASK).to_le_bytes();
            let body = &cap.as_slice()[offset_of!(MsixCap, message_control)..];
            let at = config
                .add_capability(msix::CAP_ID, body, &writable)
                .map_err(e)?;
            Some(at)
        } else {
            None
        };
        let mut device_config = vec![0u8; device.config_len().min(REGION as usize)];
        device.read_config(0, &mut device_config);
        let engine = QueueEngine {
            device,
            mem,
            active: false,
            epoch: 0,
            activations: 0,
        };
        let queue_counters = Arc::new(QueueCounters::new(nq));
        let interrupt = PciInterrupt::new(msix, nq, irq, queue_counters.clone());
        interrupt.state().intx_disabled = config.command() & CMD_INTX_DISABLE != 0;
        Ok(Self {
            config,
            msix_cap,
            engine: Arc::new(Mutex::new(engine)),
            interrupt: Arc::new(interrupt),
            device_config,
            deferred: vec![false; nq],
            common,
            activated: false,
            epoch: 0,
            broken: None,
            stats: TransportStats::default(),
            queue_counters,
        })
    }

    pub fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    pub fn num_queues(&self) -> usize {
        self.common.queues().len()
    }

    pub fn status(&self) -> u8 {
        self.common.status
    }

    /// The function's MSI-X state (its table lives with the interrupt routing; this holds
    /// that lock while borrowed).
    pub fn msix(&self) -> MsixGuard<'_> {
        MsixGuard(self.interrupt.state())
    }

    /// What the transport counted, interrupts included.
    pub fn stats(&self) -> TransportStats {
        let st = self.interrupt.state();
        TransportStats {
            queue_interrupts: st.queue_interrupts,
            config_interrupts: st.config_interrupts,
            ..self.stats
        }
    }

    /// Per-queue notifies and interrupts.
    pub fn queue_counters(&self) -> &QueueCounters {
        &self.queue_counters
    }

    /// Queue `index` as its registers were programmed (the running copy is the engine's).
    pub fn queue(&self, index: usize) -> Option<&Queue> {
        self.common.queues().get(index)
    }

    pub fn driver_features(&self) -> u64 {
        self.common.driver_features()
    }

    /// The MSI-X vector the driver gave queue `index` (NO_VECTOR for none), for diagnostics.
    pub fn queue_vector(&self, index: usize) -> Option<u16> {
        self.common.queue_vectors().get(index).copied()
    }

    /// Why DEVICE_NEEDS_RESET is set, if it is.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// The queue-processing half, for tests and diagnostics.
    pub fn engine(&self) -> &Arc<Mutex<QueueEngine>> {
        &self.engine
    }

    /// Offset in the BAR of queue `index`'s notify register.
    pub fn notify_offset(index: usize) -> u64 {
        NOTIFY_OFFSET + index as u64 * NOTIFY_MULTIPLIER as u64
    }

    fn mem_decode(&self) -> bool {
        self.config.command() & CMD_MEM != 0
    }

    fn bus_master(&self) -> bool {
        self.config.command() & CMD_BUS_MASTER != 0
    }

    // ---- common configuration ----

    fn common_write(&mut self, offset: u64, data: &[u8]) {
        match self.common.write(offset, data) {
            CommonWrite::Status(v) => self.write_status(v),
            CommonWrite::ConfigVector(v) => self.interrupt.state().config_vector = v,
            CommonWrite::Done => {}
        }
    }

    /// The device status state machine (virtio 1.x §2.1, §3.1.1). The driver may only:
    ///
    /// - write 0: reset, from any state;
    /// - set FAILED, from any state (the other bits of that write are ignored); after FAILED
    ///   only a reset is accepted;
    /// - take the next steps of ACKNOWLEDGE -> DRIVER -> FEATURES_OK -> DRIVER_OK in order,
    ///   keeping the bits it has: one step per write, or several at once (the `virtio-drivers`
    ///   crate writes ACKNOWLEDGE | DRIVER together; QEMU and cloud-hypervisor accept it). The
    ///   steps are taken one by one: FEATURES_OK is refused, as the spec says, if the features
    ///   written are not acceptable, and then nothing after it is taken; DRIVER_OK activates
    ///   the device, once per reset;
    /// - write the current value again (no change).
    ///
    /// Anything else (skipping a step, clearing a bit, a reserved bit) is ignored: the status
    /// stays as it was, so the driver sees its write did not take, and
    /// `stats.illegal_status_writes` counts it. NEEDS_RESET is the device's: a driver writing it
    /// is not an error, the bit is simply not the driver's to change.
    fn write_status(&mut self, v: u8) {
        let v = v & !STATUS_NEEDS_RESET;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.common.status & !STATUS_NEEDS_RESET;
        if v == old {
            return;
        }
        if old & STATUS_FAILED != 0 {
            self.stats.illegal_status_writes += 1;
            return;
        }
        if v & STATUS_FAILED != 0 {
            self.common.status |= STATUS_FAILED;
            return;
        }
        // Legal: the new value keeps every bit set so far and is a prefix of INIT_STEPS.
        let is_prefix = INIT_STEPS
            .iter()
            .scan(0u8, |prefix, &step| {
                *prefix |= step;
                Some(*prefix)
            })
            .any(|prefix| prefix == v);
        if v & old != old || !is_prefix {
            self.stats.illegal_status_writes += 1;
            return;
        }
        for step in INIT_STEPS.into_iter().filter(|&step| v & !old & step != 0) {
            match step {
                STATUS_FEATURES_OK if !self.common.features_acceptable() => return,
                STATUS_DRIVER_OK => {
                    if self.activated {
                        self.stats.illegal_status_writes += 1;
                        return;
                    }
                    self.activated = true;
                    if let Err(e) = self.activate() {
                        self.common.status |= step;
                        self.set_needs_reset(format!("activation failed: {e}"));
                        return;
                    }
                }
                _ => {}
            }
            self.common.status |= step;
        }
    }

    /// DRIVER_OK: the device gets its memory, the programmed queues, its features and the
    /// interrupt handle; the interrupt routing gets the queues' vectors.
    fn activate(&mut self) -> Result<(), String> {
        let features = self.common.driver_features();
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.num_queues());
        for q in self.common.queues() {
            // A copy through its saved state (virtio-queue's Queue is not Clone).
            let mut copy = Queue::try_from(q.state()).map_err(|e| e.to_string())?;
            copy.set_event_idx(event_idx);
            queues.push(copy);
        }
        self.interrupt
            .state()
            .queue_vectors
            .copy_from_slice(self.common.queue_vectors());
        let mut e = lock(&self.engine);
        let activation = Activation {
            mem: e.mem.clone(),
            features,
            queues,
            interrupt: self.interrupt.clone(),
        };
        e.device.activate(activation)?;
        e.epoch = self.epoch;
        e.active = true;
        e.activations += 1;
        Ok(())
    }

    /// Device reset (status 0): the device drops its queues and interrupt handle, and the
    /// negotiation starts over. The MSI-X table is PCI state and stays. A request the engine
    /// is processing finishes first (this waits for its lock; the spec lets a reset complete
    /// only when the device has stopped), and a queue it found broken is forgotten.
    pub fn reset(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        {
            let mut e = lock(&self.engine);
            e.device.reset();
            e.active = false;
            e.epoch = self.epoch;
        }
        self.common.reset();
        self.deferred.fill(false);
        self.activated = false;
        self.broken = None;
        self.stats.resets += 1;
        self.interrupt.reset();
    }

    /// The device's configuration changed by itself (virtio-net's link status): the driver
    /// sees the new bytes with a new configuration generation, and a configuration interrupt
    /// once the device runs.
    pub fn device_config_changed(&mut self) {
        let mut fresh = vec![0u8; self.device_config.len()];
        lock(&self.engine).device.read_config(0, &mut fresh);
        if fresh == self.device_config {
            return;
        }
        self.device_config = fresh;
        self.common.config_generation = self.common.config_generation.wrapping_add(1);
        if self.common.status & STATUS_DRIVER_OK != 0 {
            self.interrupt.trigger(InterruptType::Config);
        }
    }

    // ---- interrupts ----

    fn set_needs_reset(&mut self, why: String) {
        if self.common.status & STATUS_NEEDS_RESET != 0 {
            return;
        }
        self.broken = Some(why);
        self.common.status |= STATUS_NEEDS_RESET;
        self.interrupt.trigger(InterruptType::Config);
    }

    // ---- queues ----

    /// First step of processing queue `index` (under the register lock): may it run now?
    /// Returns the epoch to run it in. A queue notified with bus mastering off waits: it is
    /// remembered and processed when the driver turns bus mastering on (a device with bus
    /// mastering off does no DMA, so its rings stay untouched until then).
    fn admit(&mut self, index: usize) -> Option<u64> {
        self.stats.notifies += 1;
        self.admit_work(index)
    }

    /// [`Self::admit`] without counting a notify (work an I/O thread found by polling).
    fn admit_work(&mut self, index: usize) -> Option<u64> {
        if !self.mem_decode() {
            // The notify write was not decoded (it can still reach us through an ioeventfd).
            return None;
        }
        if self.common.status & STATUS_DRIVER_OK == 0
            || self.common.status & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0
        {
            return None;
        }
        if !self.common.queues().get(index)?.ready() {
            return None;
        }
        if !self.bus_master() {
            self.stats.deferred_notifies += 1;
            self.deferred[index] = true;
            return None;
        }
        Some(self.epoch)
    }

    /// The device found a queue broken processing work admitted in `epoch` (under the
    /// register lock again): NEEDS_RESET, unless a reset came in between.
    fn queue_broken(&mut self, epoch: u64, broken: QueueBroken) {
        if epoch == self.epoch {
            self.set_needs_reset(broken.0);
        }
    }

    /// The driver notified queue `index` with a notify write that exited (inline processing:
    /// the caller, the vCPU, does the device's work itself).
    pub fn process_queue(&mut self, index: usize) {
        let Some(epoch) = self.admit(index) else {
            return;
        };
        let result = lock(&self.engine).run(index, epoch);
        if let Err(broken) = result {
            self.queue_broken(epoch, broken);
        }
    }

    /// Bus mastering came on: the queues that were notified without it run now.
    fn run_deferred(&mut self) {
        for i in 0..self.deferred.len() {
            if std::mem::take(&mut self.deferred[i]) {
                self.process_queue(i);
            }
        }
    }

    // ---- BAR ----

    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match BarBlock::decode(offset) {
            BarBlock::Common(o) => self.common.read(o, data),
            BarBlock::Isr(o) => {
                data.fill(0);
                if o == 0 && !data.is_empty() {
                    data[0] = self.interrupt.read_isr();
                }
            }
            BarBlock::Device(o) => {
                data.fill(0);
                if let Some(src) = usize::try_from(o)
                    .ok()
                    .and_then(|o| self.device_config.get(o..o.checked_add(data.len())?))
                {
                    data.copy_from_slice(src);
                }
            }
            BarBlock::Notify(_) | BarBlock::Unused => data.fill(0),
            _ if self.msix_cap.is_none() => data.fill(0),
            BarBlock::MsixTable(o) => self.interrupt.state().msix.read_table(o, data),
            BarBlock::MsixPba(o) => self.interrupt.state().msix.read_pba(o, data),
        }
    }

    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match BarBlock::decode(offset) {
            BarBlock::Common(o) => self.common_write(o, data),
            BarBlock::Device(off) => {
                if off.saturating_add(data.len() as u64) <= self.device_config.len() as u64 {
                    // Device configuration writes reach the device (under the engine's lock;
                    // no device here has writable fields, so this never waits in practice).
                    let mut e = lock(&self.engine);
                    e.device.write_config(off, data);
                    let mut fresh = vec![0u8; self.device_config.len()];
                    e.device.read_config(0, &mut fresh);
                    drop(e);
                    self.device_config = fresh;
                }
            }
            BarBlock::Notify(off) => {
                if off.is_multiple_of(NOTIFY_MULTIPLIER as u64) {
                    let index = (off / NOTIFY_MULTIPLIER as u64) as usize;
                    QueueCounters::bump(&self.queue_counters.notifies, index);
                    self.process_queue(index);
                }
            }
            BarBlock::MsixTable(o) if self.msix_cap.is_some() => {
                self.interrupt.write_msix_table(o, data)
            }
            _ => {}
        }
    }
}

impl PciFunction for VirtioPciDevice {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data)
    }

    fn config_write(&mut self, offset: u64, data: &[u8]) {
        let bus_master_before = self.bus_master();
        self.config.write(offset, data);
        // BAR re-programming is accepted into config space, but the device stays where the
        // harness put it (as the floor device does). Message control changes reach MSI-X.
        let end = offset.saturating_add(data.len() as u64);
        if let Some(ctrl) = self
            .msix_cap
            .map(|cap| cap as u64 + 2)
            .filter(|&ctrl| offset < ctrl + 2 && end > ctrl)
        {
            let mut b = [0u8; 2];
            self.config.read(ctrl, &mut b);
            self.interrupt.set_msix_control(u16::from_le_bytes(b));
        }
        // INTx disable takes effect at the next interrupt; bus mastering coming on releases
        // the queues notified while it was off.
        self.interrupt.state().intx_disabled = self.config.command() & CMD_INTX_DISABLE != 0;
        if !bus_master_before && self.bus_master() {
            self.run_deferred();
        }
    }
}

/// One register block of BAR0 on the MMIO bus. With memory decode off in the command register
/// the BAR does not answer: reads return all-ones and writes are dropped.
pub struct BarRegion {
    dev: Arc<Mutex<VirtioPciDevice>>,
    base: u64,
}

impl BarRegion {
    pub fn new(dev: Arc<Mutex<VirtioPciDevice>>, base: u64) -> Self {
        Self { dev, base }
    }
}

impl BusDevice for BarRegion {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut d = lock(&self.dev);
        match self.base.checked_add(offset) {
            Some(o) if d.mem_decode() => d.bar_read(o, data),
            Some(_) => {
                d.stats.undecoded_accesses += 1;
                data.fill(0xff);
            }
            None => data.fill(0),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut d = lock(&self.dev);
        match self.base.checked_add(offset) {
            Some(o) if d.mem_decode() => d.bar_write(o, data),
            Some(_) => d.stats.undecoded_accesses += 1,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::le_value;
    use crate::devices::pci::config::REG_COMMAND;
    use crate::devices::virtio::test_util::RecordingIrq;
    use std::sync::atomic::{AtomicU32, Ordering};
    use vm_memory::GuestAddress;

    /// A device with two queues that counts what it is asked to do.
    struct Fake {
        sizes: Vec<u16>,
        processed: Arc<AtomicU32>,
        resets: Arc<AtomicU32>,
        activated: Arc<AtomicU32>,
        fail: bool,
        active: Option<Activation>,
    }

    impl VirtioDevice for Fake {
        fn device_type(&self) -> u16 {
            2
        }
        fn features(&self) -> u64 {
            1 << 9 | 1 << VIRTIO_RING_F_EVENT_IDX
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn config_len(&self) -> usize {
            8
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = 0x10 + offset as u8 + i as u8;
            }
        }
        fn activate(&mut self, activation: Activation) -> Result<(), String> {
            self.activated.fetch_add(1, Ordering::SeqCst);
            self.active = Some(activation);
            Ok(())
        }
        fn activation(&self) -> Option<&Activation> {
            self.active.as_ref()
        }
        fn activation_mut(&mut self) -> Option<&mut Activation> {
            self.active.as_mut()
        }
        /// Every notify of a ready queue is a used buffer the driver wants to hear about.
        fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken> {
            self.processed.fetch_add(1, Ordering::SeqCst);
            if self.fail {
                return Err(QueueBroken("test".into()));
            }
            if let Some(irq) = self.interrupt_trigger() {
                irq.trigger(InterruptType::Queue(index));
            }
            Ok(())
        }
        fn reset(&mut self) {
            self.resets.fetch_add(1, Ordering::SeqCst);
            self.active = None;
        }
    }

    struct T {
        dev: VirtioPciDevice,
        irq: Arc<RecordingIrq>,
        processed: Arc<AtomicU32>,
        resets: Arc<AtomicU32>,
        activated: Arc<AtomicU32>,
    }

    fn setup(fail: bool) -> T {
        setup_with_msix(fail, true)
    }

    fn setup_with_msix(fail: bool, with_msix: bool) -> T {
        let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(RecordingIrq::default());
        let processed = Arc::new(AtomicU32::new(0));
        let resets = Arc::new(AtomicU32::new(0));
        let activated = Arc::new(AtomicU32::new(0));
        let fake = Fake {
            sizes: vec![256, 16],
            processed: processed.clone(),
            resets: resets.clone(),
            activated: activated.clone(),
            fail,
            active: None,
        };
        let mut dev =
            VirtioPciDevice::with_msix(Box::new(fake), mem, irq.clone(), 11, with_msix).unwrap();
        // As the harness and a driver leave it: memory decode and bus mastering on.
        dev.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
        T {
            dev,
            irq,
            processed,
            resets,
            activated,
        }
    }

    fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        d.bar_read(off, &mut b);
        le_value(&b)
    }

    fn w(d: &mut VirtioPciDevice, off: u64, len: usize, v: u64) {
        d.bar_write(off, &v.to_le_bytes()[..len]);
    }

    fn negotiate(d: &mut VirtioPciDevice, lo: u32, hi: u32) -> u8 {
        w(d, common::DEVICE_STATUS, 1, 1);
        w(d, common::DEVICE_STATUS, 1, 3);
        w(d, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(d, common::DRIVER_FEATURE, 4, lo as u64);
        w(d, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(d, common::DRIVER_FEATURE, 4, hi as u64);
        w(d, common::DEVICE_STATUS, 1, 3 | 8);
        r(d, common::DEVICE_STATUS, 1) as u8
    }

    fn setup_queue(d: &mut VirtioPciDevice, i: u16, size: u16) {
        setup_queue_with_vector(d, i, size, NO_VECTOR);
    }

    fn setup_queue_with_vector(d: &mut VirtioPciDevice, i: u16, size: u16, vector: u16) {
        w(d, common::QUEUE_SELECT, 2, i as u64);
        w(d, common::QUEUE_MSIX_VECTOR, 2, vector as u64);
        w(d, common::QUEUE_SIZE, 2, size as u64);
        w(d, common::QUEUE_DESC, 8, 0x1000 + 0x4000 * i as u64);
        w(d, common::QUEUE_DRIVER, 4, 0x2000 + 0x4000 * i as u64);
        w(d, common::QUEUE_DRIVER + 4, 4, 0);
        w(d, common::QUEUE_DEVICE, 4, 0x3000 + 0x4000 * i as u64);
        w(d, common::QUEUE_ENABLE, 2, 1);
    }

    #[test]
    fn bar_offsets_decode_to_their_blocks() {
        use BarBlock::*;
        let cases = [
            (0, Common(0)),
            (COMMON_LEN, Common(COMMON_LEN)),
            (ISR_OFFSET, Isr(0)),
            (DEVICE_OFFSET + 8, Device(8)),
            (VirtioPciDevice::notify_offset(3), Notify(12)),
            (MSIX_TABLE_OFFSET + 16, MsixTable(16)),
            (MSIX_PBA_OFFSET, MsixPba(0)),
            (MSIX_PBA_OFFSET + REGION, Unused),
            (BAR_SIZE, Unused),
            (u64::MAX, Unused),
        ];
        for (offset, block) in cases {
            assert_eq!(BarBlock::decode(offset), block, "{offset:#x}");
        }
        // Every bus region starts a block of its own.
        for (_, off, _) in REGIONS {
            assert_ne!(BarBlock::decode(off), Unused);
        }
    }

    #[test]
    fn pci_identity_and_capabilities() {
        let t = setup(false);
        let c = t.dev.config();
        assert_eq!(c.read_u32(0), 0x1042_1af4);
        assert_eq!(c.read_u32(8), 0x0180_0001);
        assert_eq!(c.read_u32(0x2c), 0x1100_1af4);
        assert_eq!(c.read_u32(0x3c) & 0xffff, 0x010b);
        // Walk the capability list.
        let mut caps = Vec::new();
        let mut p = c.read_u32(0x34) as u8 as usize;
        while p != 0 {
            let id = c.read_u32(p) as u8;
            caps.push((id, p));
            p = (c.read_u32(p) >> 8) as u8 as usize;
        }
        let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
        assert_eq!(ids, [9, 9, 9, 9, 0x11]);
        let types: Vec<u8> = caps[..4]
            .iter()
            .map(|&(_, p)| (c.read_u32(p) >> 24) as u8)
            .collect();
        assert_eq!(types, [CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE]);
        let notify = caps[1].1;
        assert_eq!(c.read_u32(notify + 8), NOTIFY_OFFSET as u32);
        assert_eq!(c.read_u32(notify + 12), 8);
        assert_eq!(c.read_u32(notify + 16), NOTIFY_MULTIPLIER);
        let m = caps[4].1;
        assert_eq!(c.read_u32(m) >> 16, 2, "table size - 1 = queues");
        assert_eq!(c.read_u32(m + 4), MSIX_TABLE_OFFSET as u32);
        assert_eq!(c.read_u32(m + 8), MSIX_PBA_OFFSET as u32);
    }

    /// `msix=off`: no MSI-X capability, vectors read back as NO_VECTOR, the MSI-X region is
    /// inert, and a used buffer raises INTx.
    #[test]
    fn function_without_msix_uses_intx() {
        let mut t = setup_with_msix(false, false);
        let c = t.dev.config();
        let mut ids = Vec::new();
        let mut p = c.read_u32(0x34) as u8 as usize;
        while p != 0 {
            ids.push(c.read_u32(p) as u8);
            p = (c.read_u32(p) >> 8) as u8 as usize;
        }
        assert_eq!(ids, [9, 9, 9, 9], "no MSI-X capability");
        let d = &mut t.dev;
        w(d, common::CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(r(d, common::CONFIG_MSIX_VECTOR, 2), NO_VECTOR as u64);
        setup_queue_with_vector(d, 0, 256, 0);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        // The table region ignores writes and reads as zeros.
        w(d, MSIX_TABLE_OFFSET, 4, 0xfee0_0000);
        assert_eq!(r(d, MSIX_TABLE_OFFSET, 4), 0);
        assert_eq!(
            r(d, MSIX_TABLE_OFFSET + 12, 4),
            0,
            "entries are not masked-by-default"
        );
        // Where the MSI-X capability would be, config writes change nothing MSI-X.
        d.config_write(0x84, &msix::CTRL_ENABLE.to_le_bytes());
        assert!(!d.msix().enabled());
        assert_eq!(negotiate(d, 0, 1), 11);
        w(d, common::DEVICE_STATUS, 1, 15);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert!(t.irq.msi_vectors().is_empty());
        assert_eq!(t.irq.intx_count(), 1);
    }

    #[test]
    fn feature_negotiation() {
        let mut t = setup(false);
        let d = &mut t.dev;
        w(d, common::DEVICE_FEATURE_SELECT, 4, 0);
        assert_eq!(r(d, common::DEVICE_FEATURE, 4), 1 << 9 | 1 << 29);
        w(d, common::DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(d, common::DEVICE_FEATURE, 4), 1);
        w(d, common::DEVICE_FEATURE_SELECT, 4, 7);
        assert_eq!(r(d, common::DEVICE_FEATURE, 4), 0);
        // Without VERSION_1: FEATURES_OK refused.
        assert_eq!(negotiate(d, 1 << 9, 0), 3);
        // A feature the device does not offer: refused.
        w(d, common::DEVICE_STATUS, 1, 0);
        assert_eq!(negotiate(d, 1 << 9 | 1 << 3, 1), 3);
        // DRIVER_OK without FEATURES_OK is not accepted either.
        w(d, common::DEVICE_STATUS, 1, 3 | 4);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 3);
        assert_eq!(t.activated.load(Ordering::SeqCst), 0);
        w(d, common::DEVICE_STATUS, 1, 0);
        assert_eq!(negotiate(d, 1 << 9, 1), 11);
        assert_eq!(d.driver_features(), 1 << 32 | 1 << 9);
        // Features are frozen after FEATURES_OK.
        w(d, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(d, common::DRIVER_FEATURE, 4, 0);
        assert_eq!(d.driver_features(), 1 << 32 | 1 << 9);
        w(d, common::DEVICE_STATUS, 1, 15);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 15);
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn queue_registers_and_reset() {
        let mut t = setup(false);
        let d = &mut t.dev;
        assert_eq!(r(d, common::NUM_QUEUES, 2), 2);
        w(d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 16);
        assert_eq!(r(d, common::QUEUE_NOTIFY_OFF, 2), 1);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        // Not a power of two, zero, above max: refused.
        for bad in [3, 0, 32, 0xffff] {
            w(d, common::QUEUE_SIZE, 2, bad);
            assert_eq!(r(d, common::QUEUE_SIZE, 2), 16, "size {bad} accepted");
        }
        w(d, common::QUEUE_SIZE, 2, 8);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 8);
        // Vectors beyond the table read back NO_VECTOR.
        w(d, common::QUEUE_MSIX_VECTOR, 2, 3);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        w(d, common::QUEUE_MSIX_VECTOR, 2, 1);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), 1);
        w(d, common::CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(r(d, common::CONFIG_MSIX_VECTOR, 2), 0);
        // Misaligned descriptor table: refused.
        w(d, common::QUEUE_DESC, 4, 0x1008);
        assert_eq!(r(d, common::QUEUE_DESC, 8), 0);
        w(d, common::QUEUE_DESC, 4, 0x5000);
        w(d, common::QUEUE_DESC + 4, 4, 0x1);
        assert_eq!(r(d, common::QUEUE_DESC, 8), 0x1_0000_5000);
        w(d, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(r(d, common::QUEUE_ENABLE, 2), 1);
        // Enabled: the queue's registers are frozen.
        w(d, common::QUEUE_SIZE, 2, 4);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 8);
        // An absent queue reads zeros.
        w(d, common::QUEUE_SELECT, 2, 2);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 0);
        assert_eq!(r(d, common::QUEUE_ENABLE, 2), 0);
        w(d, common::QUEUE_ENABLE, 2, 1);
        // Reset clears the queues and the vectors.
        w(d, common::DEVICE_STATUS, 1, 0);
        assert_eq!(t.resets.load(Ordering::SeqCst), 1);
        let d = &mut t.dev;
        assert_eq!(r(d, common::QUEUE_SELECT, 2), 0);
        w(d, common::QUEUE_SELECT, 2, 1);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 16);
        assert_eq!(r(d, common::QUEUE_ENABLE, 2), 0);
        assert_eq!(r(d, common::QUEUE_DESC, 8), 0);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        assert_eq!(r(d, common::CONFIG_MSIX_VECTOR, 2), NO_VECTOR as u64);
        // Odd accesses never panic.
        d.bar_read(u64::MAX, &mut [0u8; 4]);
        d.bar_write(u64::MAX - 1, &[1, 2, 3, 4]);
        d.bar_read(0x37, &mut [0u8; 4]);
        d.bar_write(0x3001, &[1]);
    }

    #[test]
    fn queue_registers_frozen_after_driver_ok_and_notify_processing() {
        let mut t = setup(false);
        let d = &mut t.dev;
        // Notify before DRIVER_OK: nothing is processed.
        setup_queue(d, 0, 256);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        assert_eq!(negotiate(d, 0, 1), 11);
        w(d, common::DEVICE_STATUS, 1, 15);
        w(d, common::QUEUE_SELECT, 2, 1);
        w(d, common::QUEUE_SIZE, 2, 4);
        assert_eq!(r(d, common::QUEUE_SIZE, 2), 16);
        w(d, common::QUEUE_ENABLE, 2, 1);
        assert_eq!(r(d, common::QUEUE_ENABLE, 2), 0);
        // Queue 1 not enabled: its notify is ignored; queue 0 is processed.
        w(d, VirtioPciDevice::notify_offset(1), 2, 1);
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 1);
        // MSI-X disabled: INTx, with ISR bit 0; reading ISR clears it and lowers the line.
        assert_eq!(t.irq.intx_count(), 1);
        assert!(t.irq.level());
        assert_eq!(r(d, ISR_OFFSET, 1), 1);
        assert!(!t.irq.level());
        assert_eq!(r(d, ISR_OFFSET, 1), 0);
        // A notify with INTx disabled in the command register: no interrupt.
        d.config_write(
            REG_COMMAND as u64,
            &(CMD_INTX_DISABLE | CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.irq.intx_count(), 1);
        assert_eq!(r(d, ISR_OFFSET, 1), 1);
    }

    #[test]
    fn a_notify_and_an_interrupt_on_queue_1_count_on_queue_1_only() {
        let mut t = setup(false);
        let d = &mut t.dev;
        setup_queue(d, 0, 256);
        setup_queue(d, 1, 16);
        assert_eq!(negotiate(d, 0, 1), 11);
        w(d, common::DEVICE_STATUS, 1, 15);
        // By exit: the notify write lands on the register; the fake interrupts for it.
        w(d, VirtioPciDevice::notify_offset(1), 2, 1);
        assert_eq!(t.processed.load(Ordering::SeqCst), 1);
        let c = d.queue_counters();
        assert_eq!((c.notifies(1), c.interrupts(1)), (1, 1));
        assert_eq!((c.notifies(0), c.interrupts(0)), (0, 0));
        // By ioeventfd: the I/O thread's worker counts what it read.
        let regs = Arc::new(Mutex::new(t.dev));
        let worker = QueueWorker::new(&regs);
        worker.notified(1);
        // A backend's kick is not a notify; the interrupt it brings is queue 1's.
        worker.process(1);
        // Beyond the queues: neither counted nor a panic.
        worker.notified(7);
        let d = lock(&regs);
        let c = d.queue_counters();
        assert_eq!((c.notifies(1), c.interrupts(1)), (2, 3));
        assert_eq!((c.notifies(0), c.interrupts(0)), (0, 0));
        assert_eq!((c.notifies(7), c.interrupts(7)), (0, 0));
        assert_eq!(d.stats().queue_interrupts, 3, "the function's total agrees");
    }

    #[test]
    fn msix_delivery_and_masking() {
        let mut t = setup(false);
        let d = &mut t.dev;
        setup_queue_with_vector(d, 0, 256, 1);
        // Frozen once the queue is enabled.
        w(d, common::QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!(r(d, common::QUEUE_MSIX_VECTOR, 2), 1);
        w(d, common::CONFIG_MSIX_VECTOR, 2, 0);
        assert_eq!(negotiate(d, 0, 1), 11);
        w(d, common::DEVICE_STATUS, 1, 15);
        let cap = d.msix_cap.unwrap() as u64;
        // Enable MSI-X, vectors still masked: the interrupt pends.
        d.config_write(cap + 2, &msix::CTRL_ENABLE.to_le_bytes());
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert!(t.irq.msi_vectors().is_empty());
        assert_eq!(t.irq.intx_count(), 0);
        assert_eq!(r(d, MSIX_PBA_OFFSET, 8), 0b10);
        // Program and unmask vector 1: the pending interrupt is delivered.
        w(d, MSIX_TABLE_OFFSET + 16, 4, 0xfee0_0000);
        w(d, MSIX_TABLE_OFFSET + 24, 4, 0x41);
        w(d, MSIX_TABLE_OFFSET + 28, 4, 0);
        assert_eq!(t.irq.msi_vectors(), [1]);
        assert_eq!(t.irq.msis.lock().unwrap()[0].1.data, 0x41);
        assert_eq!(r(d, MSIX_PBA_OFFSET, 8), 0);
        assert!(!t.irq.updates.lock().unwrap().is_empty());
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.irq.msi_vectors(), [1, 1]);
        // Function mask: pends; clearing it delivers.
        d.config_write(
            cap + 2,
            &(msix::CTRL_ENABLE | msix::CTRL_FUNCTION_MASK).to_le_bytes(),
        );
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.irq.msi_vectors(), [1, 1]);
        d.config_write(cap + 2, &msix::CTRL_ENABLE.to_le_bytes());
        assert_eq!(t.irq.msi_vectors(), [1, 1, 1]);
        // NO_VECTOR for the queue: no interrupt at all.
        w(d, common::DEVICE_STATUS, 1, 0);
        setup_queue(d, 0, 256);
        negotiate(d, 0, 1);
        w(d, common::DEVICE_STATUS, 1, 15);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.irq.msi_vectors(), [1, 1, 1]);
        assert_eq!(t.irq.intx_count(), 0);
    }

    #[test]
    fn broken_queue_sets_needs_reset_and_raises_config_interrupt() {
        let mut t = setup(true);
        let d = &mut t.dev;
        setup_queue(d, 0, 256);
        negotiate(d, 0, 1);
        w(d, common::DEVICE_STATUS, 1, 15);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 15 | 64);
        assert_eq!(d.broken(), Some("test"));
        assert_eq!(r(d, ISR_OFFSET, 1), ISR_CONFIG as u64);
        assert_eq!(t.irq.intx_count(), 1);
        // Further notifies are ignored until reset; the driver cannot clear the bit.
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 1);
        w(d, common::DEVICE_STATUS, 1, 15);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 15 | 64);
        w(d, common::DEVICE_STATUS, 1, 0);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 0);
        assert_eq!(d.broken(), None);
    }

    #[test]
    fn driver_cannot_set_needs_reset() {
        // Found by fuzzing::virtio_blk: status 0x40 from the driver read back as NEEDS_RESET with
        // no reason recorded, and notifies were then silently ignored.
        let mut t = setup(false);
        let d = &mut t.dev;
        setup_queue(d, 0, 256);
        negotiate(d, 0, 1);
        w(d, common::DEVICE_STATUS, 1, 15 | 64);
        assert_eq!(r(d, common::DEVICE_STATUS, 1), 15);
        assert_eq!(d.broken(), None);
        w(d, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 1);
        assert_eq!(t.dev.stats().config_interrupts, 0);
    }

    #[test]
    fn ring_outside_memory_needs_reset_without_calling_the_device() {
        let mut t = setup(false);
        let d = &mut t.dev;
        w(d, common::QUEUE_SELECT, 2, 0);
        w(d, common::QUEUE_DESC, 8, 0xffff_0000);
        w(d, common::QUEUE_DRIVER, 8, 0x2000);
        w(d, common::QUEUE_DEVICE, 8, 0x3000);
        w(d, common::QUEUE_ENABLE, 2, 1);
        negotiate(d, 0, 1);
        w(d, common::DEVICE_STATUS, 1, 15);
        w(d, VirtioPciDevice::notify_offset(0), 4, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        assert_ne!(r(d, common::DEVICE_STATUS, 1) & 64, 0);
    }

    fn status(d: &mut VirtioPciDevice) -> u8 {
        r(d, common::DEVICE_STATUS, 1) as u8
    }

    /// Write `v` to the status and check that it was refused: nothing changes.
    fn refused(t: &mut T, v: u8) {
        let before = status(&mut t.dev);
        let illegal = t.dev.stats().illegal_status_writes;
        w(&mut t.dev, common::DEVICE_STATUS, 1, v as u64);
        assert_eq!(status(&mut t.dev), before, "{before:#x} -> {v:#x} accepted");
        assert_eq!(
            t.dev.stats().illegal_status_writes,
            illegal + 1,
            "{before:#x} -> {v:#x} not counted"
        );
    }

    /// Bring the status to `steps` (each written in turn), from a reset.
    fn walk(t: &mut T, steps: &[u8]) {
        w(&mut t.dev, common::DEVICE_STATUS, 1, 0);
        for &s in steps {
            if s == 11 {
                w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, 1);
                w(&mut t.dev, common::DRIVER_FEATURE, 4, 1);
            }
            w(&mut t.dev, common::DEVICE_STATUS, 1, s as u64);
            assert_eq!(status(&mut t.dev), s);
        }
    }

    #[test]
    fn status_skipping_a_step_is_ignored() {
        let mut t = setup(false);
        // From reset: DRIVER, FEATURES_OK or DRIVER_OK before ACKNOWLEDGE, alone or with
        // other steps but a gap.
        for v in [2, 8, 4, 2 | 8, 1 | 8, 1 | 4, 1 | 2 | 4, 2 | 8 | 4] {
            walk(&mut t, &[]);
            refused(&mut t, v);
        }
        // From ACKNOWLEDGE: FEATURES_OK or DRIVER_OK before DRIVER.
        for v in [1 | 8, 1 | 4, 1 | 8 | 4] {
            walk(&mut t, &[1]);
            refused(&mut t, v);
        }
        // From DRIVER: DRIVER_OK before FEATURES_OK.
        walk(&mut t, &[1, 3]);
        refused(&mut t, 3 | 4);
        assert_eq!(t.activated.load(Ordering::SeqCst), 0);
    }

    /// Several steps in one write, in order, as the `virtio-drivers` crate writes them
    /// (ACKNOWLEDGE | DRIVER, then | FEATURES_OK, then | DRIVER_OK); each step is still checked.
    #[test]
    fn status_may_take_several_steps_in_order() {
        let mut t = setup(false);
        walk(&mut t, &[3]);
        walk(&mut t, &[3, 11, 15]);
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
        // Everything at once, features never written: ACKNOWLEDGE and DRIVER are taken,
        // FEATURES_OK is refused (VERSION_1 missing), so DRIVER_OK is not reached.
        w(&mut t.dev, common::DEVICE_STATUS, 1, 0);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        assert_eq!(status(&mut t.dev), 3);
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
        // With acceptable features written first, one write of 15 activates once.
        w(&mut t.dev, common::DEVICE_STATUS, 1, 0);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 3);
        w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut t.dev, common::DRIVER_FEATURE, 4, 1);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        assert_eq!(status(&mut t.dev), 15);
        assert_eq!(t.activated.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn status_clearing_bits_or_reserved_bits_is_ignored() {
        let mut t = setup(false);
        // Dropping a bit the driver set, in every state.
        walk(&mut t, &[1, 3]);
        refused(&mut t, 2);
        refused(&mut t, 1);
        walk(&mut t, &[1, 3, 11]);
        refused(&mut t, 3);
        refused(&mut t, 9);
        walk(&mut t, &[1, 3, 11, 15]);
        refused(&mut t, 11);
        refused(&mut t, 7);
        // Reserved bits (0x10, 0x20).
        refused(&mut t, 15 | 0x10);
        refused(&mut t, 15 | 0x20);
        walk(&mut t, &[]);
        refused(&mut t, 0x10);
        // Through all of it the running device was activated once and still runs.
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn failed_is_accepted_any_time_and_then_only_reset() {
        let mut t = setup(false);
        for steps in [&[][..], &[1], &[1, 3], &[1, 3, 11], &[1, 3, 11, 15]] {
            walk(&mut t, steps);
            let before = status(&mut t.dev);
            w(&mut t.dev, common::DEVICE_STATUS, 1, (before | 0x80) as u64);
            assert_eq!(status(&mut t.dev), before | 0x80);
            // Rewriting it is no change; anything but a reset is refused.
            w(&mut t.dev, common::DEVICE_STATUS, 1, (before | 0x80) as u64);
            assert_eq!(status(&mut t.dev), before | 0x80);
            refused(&mut t, 15);
            refused(&mut t, 1);
        }
        // A failed device does no work.
        walk(&mut t, &[]);
        setup_queue(&mut t.dev, 0, 256);
        walk_keep_queue(&mut t);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15 | 0x80);
        w(&mut t.dev, VirtioPciDevice::notify_offset(0), 2, 0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 0);
        assert_eq!(status(&mut t.dev), 0);
    }

    /// Negotiate and set DRIVER_OK without resetting (the queues stay as programmed).
    fn walk_keep_queue(t: &mut T) {
        assert_eq!(negotiate(&mut t.dev, 0, 1), 11);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        assert_eq!(status(&mut t.dev), 15);
    }

    #[test]
    fn activation_happens_exactly_once_per_reset() {
        let mut t = setup(false);
        walk(&mut t, &[1, 3, 11, 15]);
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
        // DRIVER_OK again, or a way back and forth: no second activation.
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        refused(&mut t, 11);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        assert_eq!(t.activated.load(Ordering::SeqCst), 1);
        assert_eq!(t.dev.engine().lock().unwrap().activations, 1);
        // After a reset, the next DRIVER_OK activates again, once.
        walk(&mut t, &[1, 3, 11, 15]);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        assert_eq!(t.activated.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn features_are_frozen_from_features_ok_on() {
        let mut t = setup(false);
        walk(&mut t, &[1, 3]);
        w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut t.dev, common::DRIVER_FEATURE, 4, 1 << 9);
        w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut t.dev, common::DRIVER_FEATURE, 4, 1);
        w(&mut t.dev, common::DEVICE_STATUS, 1, 11);
        assert_eq!(status(&mut t.dev), 11);
        for (sel, v) in [(0, 0), (0, 0xffff_ffff), (1, 0)] {
            w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, sel);
            w(&mut t.dev, common::DRIVER_FEATURE, 4, v);
            assert_eq!(t.dev.driver_features(), 1 << 32 | 1 << 9);
        }
        w(&mut t.dev, common::DEVICE_STATUS, 1, 15);
        w(&mut t.dev, common::DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut t.dev, common::DRIVER_FEATURE, 4, 0);
        assert_eq!(t.dev.driver_features(), 1 << 32 | 1 << 9);
        // A reset unfreezes them (and clears them).
        w(&mut t.dev, common::DEVICE_STATUS, 1, 0);
        assert_eq!(t.dev.driver_features(), 0);
    }

    #[test]
    fn msix_table_size_follows_the_queue_count() {
        for n in [1usize, 2, 3, 7] {
            let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let fake = Fake {
                sizes: vec![16; n],
                processed: Arc::default(),
                resets: Arc::default(),
                activated: Arc::default(),
                fail: false,
                active: None,
            };
            let irq = Arc::new(RecordingIrq::default());
            let d = VirtioPciDevice::new(Box::new(fake), mem, irq, 11).unwrap();
            assert_eq!(d.msix().vectors() as usize, n + 1);
            assert_eq!(msix_vectors(n) as usize, n + 1);
        }
        assert_eq!(msix_vectors(usize::MAX), u16::MAX);
    }

    #[test]
    fn bar_does_not_answer_with_memory_decode_off() {
        let mut t = setup(false);
        let dev = Arc::new(Mutex::new(std::mem::replace(&mut t.dev, setup(false).dev)));
        let mut common_region = BarRegion::new(dev.clone(), COMMON_OFFSET);
        let mut device_region = BarRegion::new(dev.clone(), DEVICE_OFFSET);
        let read = |reg: &mut BarRegion, off: u64, len: usize| {
            let mut b = vec![0u8; len];
            reg.read(off, &mut b);
            le_value(&b)
        };
        assert_eq!(read(&mut common_region, common::NUM_QUEUES, 2), 2);
        lock(&dev).config_write(REG_COMMAND as u64, &CMD_BUS_MASTER.to_le_bytes());
        // Reads are all-ones, writes are dropped.
        assert_eq!(read(&mut common_region, common::NUM_QUEUES, 2), 0xffff);
        assert_eq!(read(&mut device_region, 0, 4), 0xffff_ffff);
        common_region.write(common::DEVICE_STATUS, &[1]);
        common_region.write(common::QUEUE_SELECT, &1u16.to_le_bytes());
        assert!(lock(&dev).stats().undecoded_accesses >= 4);
        lock(&dev).config_write(
            REG_COMMAND as u64,
            &(CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(read(&mut common_region, common::DEVICE_STATUS, 1), 0);
        assert_eq!(read(&mut common_region, common::QUEUE_SELECT, 2), 0);
        assert_eq!(read(&mut device_region, 0, 4), 0x1312_1110);
    }

    #[test]
    fn notify_reaching_an_undecoded_bar_does_nothing() {
        // An ioeventfd still fires with decode off; the transport drops such a notify.
        let mut t = setup(false);
        setup_queue(&mut t.dev, 0, 256);
        walk_keep_queue(&mut t);
        t.dev
            .config_write(REG_COMMAND as u64, &CMD_BUS_MASTER.to_le_bytes());
        t.dev.process_queue(0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        // Nor is it remembered: turning decode back on processes nothing.
        t.dev.config_write(
            REG_COMMAND as u64,
            &(CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(t.processed.load(Ordering::SeqCst), 0);
        t.dev.process_queue(0);
        assert_eq!(t.processed.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn no_dma_without_bus_mastering_and_the_request_waits_for_it() {
        use crate::devices::virtio::test_util::{pattern_disk, pattern_sector, BlkRig};
        let mut rig = BlkRig::with_command(Box::new(pattern_disk(8)), CMD_MEM);
        rig.post_read(2);
        rig.write(VirtioPciDevice::notify_offset(0), &0u16.to_le_bytes());
        // Guest memory untouched: no used entry, status byte and data buffer as posted.
        assert_eq!(rig.used_idx(), 0);
        assert_eq!(rig.status_byte(), 0xff);
        assert_eq!(rig.data(), [0xee; 512]);
        assert_eq!(rig.irq.intx_count(), 0);
        assert_eq!(lock(&rig.dev).stats().deferred_notifies, 1);
        // Bus mastering on: the waiting request is processed.
        lock(&rig.dev).config_write(
            REG_COMMAND as u64,
            &(CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(rig.used_idx(), 1);
        assert_eq!(rig.used_elem(0), (0, 513));
        assert_eq!(rig.status_byte(), 0);
        assert_eq!(rig.data(), pattern_sector(2));
        assert_eq!(rig.irq.intx_count(), 1);
        // Off again and a reset: nothing is left waiting.
        lock(&rig.dev).config_write(REG_COMMAND as u64, &CMD_MEM.to_le_bytes());
        rig.post_read(3);
        rig.write(VirtioPciDevice::notify_offset(0), &0u16.to_le_bytes());
        rig.write(common::DEVICE_STATUS, &[0]);
        lock(&rig.dev).config_write(
            REG_COMMAND as u64,
            &(CMD_MEM | CMD_BUS_MASTER).to_le_bytes(),
        );
        assert_eq!(rig.used_idx(), 1);
    }

    #[test]
    fn driver_errors_name_each_nonzero_counter() {
        assert_eq!(
            TransportStats::default().driver_errors(),
            Vec::<String>::new()
        );
        let quiet = TransportStats {
            notifies: 5,
            queue_interrupts: 5,
            config_interrupts: 1,
            resets: 2,
            ..TransportStats::default()
        };
        assert_eq!(quiet.driver_errors(), Vec::<String>::new(), "normal events");
        let one = TransportStats {
            illegal_status_writes: 1,
            ..TransportStats::default()
        };
        assert_eq!(
            one.driver_errors(),
            ["1 device-status write ignored (illegal transitions)"]
        );
        let all = TransportStats {
            illegal_status_writes: 3,
            deferred_notifies: 2,
            undecoded_accesses: 4,
            ..TransportStats::default()
        };
        assert_eq!(
            all.driver_errors(),
            [
                "3 device-status writes ignored (illegal transitions)",
                "2 queue notifies with bus mastering off (held until it is on)",
                "4 BAR0 accesses with memory decode off (reads all-ones, writes dropped)",
            ]
        );
    }
}
