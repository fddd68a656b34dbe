//! A fake VM for the monitor's tests: fixed devices and counters, a balloon that records what
//! it was asked, and a quit flag.

use super::*;
use crate::vmm::balloon_control::BalloonInfo;
use std::sync::Mutex;

pub struct FakeBalloon {
    pub info: Mutex<BalloonInfo>,
}

impl BalloonControl for FakeBalloon {
    fn set_guest_memory(&self, bytes: u64) -> Result<(), String> {
        let mut info = self.info.lock().unwrap();
        if bytes > info.ram_bytes {
            return Err(format!(
                "more than the guest's {} bytes of RAM",
                info.ram_bytes
            ));
        }
        info.target_pages = ((info.ram_bytes - bytes) / 4096) as u32;
        // The fake guest follows at once.
        info.actual_pages = info.target_pages;
        Ok(())
    }

    fn info(&self) -> BalloonInfo {
        *self.info.lock().unwrap()
    }
}

#[derive(Default)]
pub struct FakeTarget {
    pub quit: AtomicBool,
    pub balloon: Option<Arc<FakeBalloon>>,
}

impl FakeTarget {
    pub fn with_balloon(ram_bytes: u64) -> Self {
        Self {
            quit: AtomicBool::new(false),
            balloon: Some(Arc::new(FakeBalloon {
                info: Mutex::new(BalloonInfo {
                    ram_bytes,
                    ..Default::default()
                }),
            })),
        }
    }

    pub fn quit_called(&self) -> bool {
        self.quit.load(Ordering::SeqCst)
    }
}

impl MonitorTarget for FakeTarget {
    fn running(&self) -> bool {
        !self.quit_called()
    }

    fn exits_table(&self) -> String {
        "exits: 7 total\n  io                          5\n  mmio                        2\n".into()
    }

    fn stats(&self, target: StatsTarget) -> Vec<StatsProvider> {
        match target {
            StatsTarget::Vm => vec![StatsProvider {
                provider: "kvm".into(),
                qom_path: None,
                stats: vec![("remote_tlb_flush".into(), 3)],
            }],
            StatsTarget::Vcpu => vec![
                StatsProvider {
                    provider: "kvm".into(),
                    qom_path: Some("/machine/unattached/device[0]".into()),
                    stats: vec![("exits".into(), 40), ("io_exits".into(), 5)],
                },
                StatsProvider {
                    provider: "harness".into(),
                    qom_path: Some("/machine/unattached/device[0]".into()),
                    stats: vec![("userspace_exits".into(), 7)],
                },
            ],
        }
    }

    fn pci(&self) -> Vec<PciFunctionInfo> {
        vec![
            PciFunctionInfo {
                bdf: "00:00.0".into(),
                vendor: 0x8086,
                device: 0x1237,
                class: [6, 0, 0],
                ..Default::default()
            },
            PciFunctionInfo {
                bdf: "00:02.0".into(),
                vendor: 0x1af4,
                device: 0x1042,
                class: [1, 0, 0],
                command: 0x6,
                bars: vec![PciBarInfo {
                    index: 0,
                    addr: 0xc000_4000,
                    io: false,
                    mem64: true,
                }],
                irq_pin: 1,
                irq_line: 10,
                msix: Some(MsixInfo {
                    table_size: 2,
                    enabled: true,
                    function_masked: false,
                    table_bar: 0,
                    table_offset: 0x2000,
                    entries: vec![MsixEntryInfo {
                        vector: 0,
                        addr: 0xfee0_0000,
                        data: 0x41,
                        masked: false,
                        pending: false,
                    }],
                }),
            },
        ]
    }

    fn queues(&self) -> Vec<VirtioQueuesInfo> {
        vec![VirtioQueuesInfo {
            name: "virtio-blk0".into(),
            bdf: "00:02.0".into(),
            status: 0x0f,
            notifies: 12,
            queue_interrupts: 11,
            config_interrupts: 0,
            queues: vec![QueueInfo {
                index: 0,
                size: 256,
                ready: true,
                avail_idx: Some(12),
                used_idx: Some(12),
                notify_exits: 12,
                notifies: 12,
                interrupts: 11,
                msix_vector: Some(1),
            }],
        }]
    }

    fn balloon(&self) -> Option<Arc<dyn BalloonControl>> {
        self.balloon.clone().map(|b| b as Arc<dyn BalloonControl>)
    }

    fn quit(&self) {
        self.quit.store(true, Ordering::SeqCst);
    }
}
