//! The running machine as the monitor sees it ([`MonitorTarget`]): the exit counters the run
//! loop keeps, KVM's statistics, PCI configuration space, the virtio transports and their rings
//! in guest memory, the balloon, and the way to stop the vCPU.

use super::balloon_control::BalloonControl;
use super::exits::{self, ExitCounters, Space};
use super::memory::GuestMem;
use crate::devices::lock;
use crate::devices::pci::{Bdf, SharedFunction};
use crate::devices::virtio::transport_pci::{self, VirtioPciDevice};
use crate::monitor::{
    MonitorTarget, MsixEntryInfo, MsixInfo, PciBarInfo, PciFunctionInfo, QueueInfo, StatsProvider,
    StatsTarget, VirtioQueuesInfo,
};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

/// Asks the run loop to end as quit by the monitor, and the watchdog to kick the vCPU out of
/// KVM_RUN until it does (a signal alone could land before KVM_RUN is entered).
#[derive(Clone, Default)]
pub struct QuitRequest {
    pub(super) requested: Arc<AtomicBool>,
    /// The watchdog's wakeup, so it starts kicking at once.
    pub(super) wake: Arc<(Mutex<bool>, Condvar)>,
}

impl QuitRequest {
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let (m, cv) = &*self.wake;
        // Under the lock the watchdog checks the flag with, so the wakeup cannot fall between
        // its check and its wait.
        let _checked = lock(m);
        cv.notify_all();
    }

    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

/// A virtio function the monitor reports on.
pub struct VirtioFunction {
    pub name: String,
    pub bdf: Bdf,
    pub dev: Arc<Mutex<VirtioPciDevice>>,
}

pub struct VmView {
    pub counters: Arc<Mutex<ExitCounters>>,
    pub vm_stats: Option<OwnedFd>,
    pub vcpu_stats: Option<OwnedFd>,
    pub pci: Vec<(Bdf, SharedFunction)>,
    pub virtio: Vec<VirtioFunction>,
    pub mem: GuestMem,
    pub balloon: Option<Arc<dyn BalloonControl>>,
    pub quit: QuitRequest,
}

/// QEMU's path for the one vCPU.
const VCPU_QOM_PATH: &str = "/machine/unattached/device[0]";

fn config_read<const N: usize>(f: &SharedFunction, offset: u64) -> [u8; N] {
    let mut b = [0u8; N];
    lock(f).config_read(offset, &mut b);
    b
}

fn read16(f: &SharedFunction, offset: u64) -> u16 {
    u16::from_le_bytes(config_read(f, offset))
}

fn read32(f: &SharedFunction, offset: u64) -> u32 {
    u32::from_le_bytes(config_read(f, offset))
}

/// PCI's capability-list bit in the status register, the list head, and MSI-X's ID.
const STATUS_CAP_LIST: u16 = 1 << 4;
const CAP_PTR: u64 = 0x34;
const CAP_ID_MSIX: u8 = 0x11;

/// A function as its configuration space shows it (what the guest sees, BARs as programmed).
pub fn describe(bdf: Bdf, f: &SharedFunction) -> PciFunctionInfo {
    let class = read32(f, 0x08).to_le_bytes();
    let mut bars = Vec::new();
    let mut index = 0u64;
    while index < 6 {
        let low = read32(f, 0x10 + 4 * index);
        let io = low & 1 == 1;
        let mem64 = !io && (low >> 1) & 3 == 2;
        let addr = if io {
            u64::from(low & !3)
        } else if mem64 && index < 5 {
            u64::from(low & !0xf) | u64::from(read32(f, 0x14 + 4 * index)) << 32
        } else {
            u64::from(low & !0xf)
        };
        if addr != 0 {
            bars.push(PciBarInfo {
                index: index as u8,
                addr,
                io,
                mem64,
            });
        }
        index += if mem64 { 2 } else { 1 };
    }
    let mut msix = None;
    if read16(f, 0x06) & STATUS_CAP_LIST != 0 {
        let mut ptr = config_read::<1>(f, CAP_PTR)[0] & !3;
        // At most 48 capabilities fit in 256 bytes: a loop in the list cannot hold us.
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            let [id, next] = config_read::<2>(f, u64::from(ptr));
            if id == CAP_ID_MSIX {
                let control = read16(f, u64::from(ptr) + 2);
                let table = read32(f, u64::from(ptr) + 4);
                msix = Some(MsixInfo {
                    table_size: (control & 0x7ff) + 1,
                    enabled: control & 0x8000 != 0,
                    function_masked: control & 0x4000 != 0,
                    table_bar: (table & 7) as u8,
                    table_offset: table & !7,
                    entries: Vec::new(),
                });
                break;
            }
            ptr = next & !3;
        }
    }
    let [irq_line, irq_pin] = config_read::<2>(f, 0x3c);
    PciFunctionInfo {
        bdf: bdf.to_string(),
        vendor: read16(f, 0x00),
        device: read16(f, 0x02),
        class: [class[3], class[2], class[1]],
        command: read16(f, 0x04),
        bars,
        irq_pin,
        irq_line,
        msix,
    }
}

impl VmView {
    fn ring_idx(&self, ring: u64) -> Option<u16> {
        // `idx` is the second u16 of both the avail and the used ring.
        (ring != 0)
            .then(|| self.mem.read_obj::<u16>(GuestAddress(ring + 2)).ok())
            .flatten()
    }
}

impl MonitorTarget for VmView {
    fn running(&self) -> bool {
        !self.quit.requested()
    }

    fn exits_table(&self) -> String {
        lock(&self.counters).table()
    }

    fn stats(&self, target: StatsTarget) -> Vec<StatsProvider> {
        let (fd, qom_path) = match target {
            StatsTarget::Vm => (&self.vm_stats, None),
            StatsTarget::Vcpu => (&self.vcpu_stats, Some(VCPU_QOM_PATH.to_string())),
        };
        let mut out = Vec::new();
        if let Some(stats) = fd.as_ref().and_then(|fd| exits::read_stats(fd).ok()) {
            out.push(StatsProvider {
                provider: "kvm".into(),
                qom_path: qom_path.clone(),
                stats,
            });
        }
        if target == StatsTarget::Vcpu {
            // Our own counters of the exits that reached userspace, beside KVM's.
            let c = lock(&self.counters);
            let mut stats = vec![("userspace_exits".to_string(), c.total)];
            stats.extend(
                c.by_reason
                    .iter()
                    .map(|(r, n)| (format!("userspace_{}_exits", r.name()), *n)),
            );
            out.push(StatsProvider {
                provider: "harness".into(),
                qom_path,
                stats,
            });
        }
        out
    }

    fn pci(&self) -> Vec<PciFunctionInfo> {
        self.pci
            .iter()
            .map(|(bdf, f)| {
                let mut info = describe(*bdf, f);
                // Our virtio functions' tables, read from their interrupt routing.
                let virtio = self.virtio.iter().find(|v| v.bdf == *bdf);
                if let (Some(v), Some(m)) = (virtio, info.msix.as_mut()) {
                    let dev = lock(&v.dev);
                    let msix = dev.msix();
                    m.entries = (0..msix.vectors())
                        .map(|vector| {
                            let msg = msix.message(vector).unwrap_or_default();
                            MsixEntryInfo {
                                vector,
                                addr: msg.addr,
                                data: msg.data,
                                masked: msix.is_masked(vector),
                                pending: msix.is_pending(vector),
                            }
                        })
                        .collect();
                }
                info
            })
            .collect()
    }

    fn queues(&self) -> Vec<VirtioQueuesInfo> {
        let counters = lock(&self.counters).clone();
        self.virtio
            .iter()
            .map(|v| {
                let dev = lock(&v.dev);
                let stats = dev.stats();
                let bar0 = dev.config().bar_address(0).unwrap_or(0);
                let queues = (0..dev.num_queues())
                    .filter_map(|i| {
                        let q = dev.queue(i)?;
                        let ready = q.ready();
                        let notify = bar0 + VirtioPciDevice::notify_offset(i);
                        Some(QueueInfo {
                            index: i as u16,
                            size: q.size(),
                            ready,
                            avail_idx: ready.then(|| self.ring_idx(q.avail_ring())).flatten(),
                            used_idx: ready.then(|| self.ring_idx(q.used_ring())).flatten(),
                            notify_exits: counters.at(Space::Mmio, notify, None),
                            notifies: dev.queue_counters().notifies(i),
                            interrupts: dev.queue_counters().interrupts(i),
                            msix_vector: dev
                                .queue_vector(i)
                                .filter(|&v| v != transport_pci::NO_VECTOR),
                        })
                    })
                    .collect();
                VirtioQueuesInfo {
                    name: v.name.clone(),
                    bdf: v.bdf.to_string(),
                    status: dev.status(),
                    notifies: stats.notifies,
                    queue_interrupts: stats.queue_interrupts,
                    config_interrupts: stats.config_interrupts,
                    queues,
                }
            })
            .collect()
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon.clone()
    }

    fn quit(&self) {
        self.quit.request();
    }
}
