//! Which NIC a network test or the network bench drives, and opening it. `net_model=` picks the
//! kind (`virtio`, `e1000`, `rtl8139`); without it, the first kind present in that order, so a
//! VM with one NIC needs no argument. `net_nic=N` picks the Nth function of that kind, in bus
//! order. Everything above this file sees a `&mut dyn Nic`; the per-kind extras (virtio's
//! queue pairs, e1000's ring state) are logged here.

use super::NetArgs;
use crate::arch::{apic, ioapic, vectors};
use crate::platform::{KernelPlatform, PLATFORM};
use crate::{bootinfo, pci, println};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use drivers::net::e1000::{is_e1000, E1000Interrupts, E1000Options, E1000};
use drivers::net::rtl8139::{is_rtl8139, Rtl8139, Rtl8139Interrupts, Rtl8139Options, RxBufferSize};
use drivers::net::Nic;
use drivers::pci::PciFunction;
use drivers::virtio::net::{NetInterrupts, NetOptions, VirtioNet};
use drivers::virtio::pci::{device_type, msix_table_size, virtio_device_type, InterruptPlan};

pub type Net = VirtioNet<'static, KernelPlatform>;

/// Most queue pairs anyone asks for (one vector each from `vectors::NET_PAIR0`).
pub const MAX_PAIRS: u16 = 8;

/// A kind of NIC the kernel has a driver for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicKind {
    Virtio,
    E1000,
    Rtl8139,
}

impl NicKind {
    /// The order a VM's NICs are looked for without `net_model=`.
    pub const ALL: [NicKind; 3] = [NicKind::Virtio, NicKind::E1000, NicKind::Rtl8139];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "virtio" => Some(Self::Virtio),
            "e1000" => Some(Self::E1000),
            "rtl8139" => Some(Self::Rtl8139),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::E1000 => "e1000",
            Self::Rtl8139 => "rtl8139",
        }
    }

    fn matches(self, f: &PciFunction) -> bool {
        match self {
            Self::Virtio => virtio_device_type(f) == Some(device_type::NET),
            Self::E1000 => is_e1000(f),
            Self::Rtl8139 => is_rtl8139(f),
        }
    }

    /// This kind's functions, in bus order.
    pub fn functions(self) -> impl Iterator<Item = &'static PciFunction> {
        pci::devices().iter().filter(move |f| self.matches(f))
    }
}

/// An opened NIC of any kind (boxed: the drivers are hundreds of bytes, of different sizes).
pub enum OpenedNic {
    Virtio(Box<Net>),
    E1000(Box<E1000<'static, KernelPlatform>>),
    Rtl8139(Box<Rtl8139<'static, KernelPlatform>>),
}

impl OpenedNic {
    pub fn nic(&mut self) -> &mut dyn Nic {
        match self {
            Self::Virtio(n) => n.as_mut(),
            Self::E1000(n) => n.as_mut(),
            Self::Rtl8139(n) => n.as_mut(),
        }
    }

    pub fn kind(&self) -> NicKind {
        match self {
            Self::Virtio(_) => NicKind::Virtio,
            Self::E1000(_) => NicKind::E1000,
            Self::Rtl8139(_) => NicKind::Rtl8139,
        }
    }

    /// Queue pairs in use (1 for a NIC without multiqueue).
    pub fn queue_pairs(&self) -> u16 {
        match self {
            Self::Virtio(n) => n.queue_pairs(),
            _ => 1,
        }
    }

    /// Log what only this kind of NIC counts (after a test, for the record).
    pub fn log_extras(&self) {
        match self {
            Self::Virtio(nic) => {
                for i in 0..usize::from(nic.queue_pairs()) {
                    if let Some(p) = nic.pair_counters(i) {
                        println!(
                            "# net: pair {}: tx {} rx {} packets, {} interrupts, {} notifies, {} \
                             device errors, {} merged, {} csum completed",
                            i,
                            p.nic.tx_packets,
                            p.nic.rx_packets,
                            p.nic.interrupts,
                            p.nic.notifies,
                            p.device_errors,
                            p.rx_merged,
                            p.rx_csum_completed
                        );
                    }
                }
            }
            Self::E1000(nic) => {
                let x = nic.extra_counters();
                println!(
                    "# net: e1000: rx {} bad lengths, {} errors, {} overruns; tx {} contexts; \
                     failure {:?}; rdh rdt tdh tdt icr / rx_next tx_tail tx_clean rx_status {:?}",
                    x.rx_bad_length,
                    x.rx_errors,
                    x.rx_overruns,
                    x.tx_contexts,
                    nic.failure(),
                    nic.ring_state()
                );
            }
            Self::Rtl8139(nic) => {
                let x = nic.extra_counters();
                println!(
                    "# net: rtl8139: rx {} bad lengths, {} errors, {} in progress, {} overruns \
                     ({} missed), {} past the end; tx {} errors, {} timeouts; {} resets, {} isr \
                     storms; failure {:?}; cr capr cbr isr imr / rx_offset tsd0-3 clean<<4|used \
                     {:x?}",
                    x.rx_bad_length,
                    x.rx_errors,
                    x.rx_in_progress,
                    x.rx_overruns,
                    x.rx_missed,
                    x.rx_past_end,
                    x.tx_errors,
                    x.tx_timeouts,
                    x.resets,
                    x.isr_storms,
                    nic.failure(),
                    nic.ring_state()
                );
            }
        }
    }
}

/// The NICs a test runs on: the one `net_model=` and `net_nic=` pick, or with
/// `net_model=each` every NIC of a kind the kernel drives, in bus order, each as the
/// arguments that pick it alone.
pub fn targets(args: &NetArgs) -> Vec<NetArgs> {
    if !args.each {
        return alloc::vec![*args];
    }
    let mut seen = [0usize; NicKind::ALL.len()];
    pci::devices()
        .iter()
        .filter_map(|f| {
            let k = NicKind::ALL.iter().position(|k| k.matches(f))?;
            let nic = seen[k];
            seen[k] += 1;
            Some(NetArgs {
                model: Some(NicKind::ALL[k]),
                each: false,
                nic,
                ..*args
            })
        })
        .collect()
}

/// The NIC the command line picks (`net_model=`, `net_nic=`), opened with up to `pairs` queue
/// pairs where the kind has them. `Ok(None)`: no such NIC in this VM.
pub fn open(args: &NetArgs, pairs: u16) -> Result<Option<OpenedNic>, String> {
    let kind = match args.model {
        Some(k) => k,
        None => match NicKind::ALL
            .into_iter()
            .find(|k| k.functions().next().is_some())
        {
            Some(k) => k,
            None => return Ok(None),
        },
    };
    let Some(f) = kind.functions().nth(args.nic) else {
        return Ok(None);
    };
    Ok(Some(match kind {
        NicKind::Virtio => OpenedNic::Virtio(Box::new(open_virtio(f, pairs)?)),
        NicKind::E1000 => OpenedNic::E1000(Box::new(open_e1000(f)?)),
        NicKind::Rtl8139 => OpenedNic::Rtl8139(Box::new(open_rtl8139(f)?)),
    }))
}

/// Interrupts for `f` wanting `pairs` pairs: MSI-X (config + a vector per pair), INTx on its
/// line, or polling, whichever its capabilities allow first.
fn virtio_interrupts(f: &PciFunction, pairs: u16) -> (NetInterrupts, InterruptPlan) {
    let table = msix_table_size(&PLATFORM, f).unwrap_or(None);
    let wanted = VirtioNet::<KernelPlatform>::msix_entries_for(pairs, true);
    let plan = InterruptPlan::choose(f, table, wanted, ioapic::pins());
    let mode = match plan {
        InterruptPlan::Msix { .. } => NetInterrupts::Msix {
            dest_apic_id: apic::id() as u8,
            config: vectors::NET_CONFIG,
            pairs: (0..pairs).map(|i| vectors::NET_PAIR0 + i as u8).collect(),
        },
        InterruptPlan::Intx { line } => {
            ioapic::route(line, vectors::NET_INTX, ioapic::Trigger::Level, apic::id());
            NetInterrupts::Intx {
                vector: vectors::NET_INTX,
            }
        }
        InterruptPlan::Polled => NetInterrupts::Polled,
    };
    (mode, plan)
}

/// Open virtio-net function `f` with up to `pairs` queue pairs, logging what was negotiated.
pub fn open_virtio(f: &PciFunction, pairs: u16) -> Result<Net, String> {
    let (mode, plan) = virtio_interrupts(f, pairs.clamp(1, MAX_PAIRS));
    let options = NetOptions {
        queue_pairs: pairs,
        interrupts: mode,
        ..NetOptions::default()
    };
    let mut nic = VirtioNet::new(&PLATFORM, f, options)
        .map_err(|e| format!("virtio-net {}: init: {}", f.address, e))?;
    let o = nic.offloads();
    // What the driver made of the plan: it fits the pairs to the MSI-X table.
    let plan = match plan {
        InterruptPlan::Msix { .. } => format!("msix, vectors {:x?}", nic.interrupt_vectors()),
        other => format!("{other}"),
    };
    let mac = nic.mac().map(|b| format!("{b:02x}")).join(":");
    println!(
        "# net: virtio-net {}: mac {}, features {:#x}, {} queue pair(s){}, interrupts: {}, \
         offload tx_csum={} rx_csum={}, link {:?}",
        f.address,
        mac,
        nic.features(),
        nic.queue_pairs(),
        if nic.mq_refused() {
            " (the device refused more)"
        } else {
            ""
        },
        plan,
        o.tx_checksum,
        o.rx_checksum,
        nic.link()
    );
    Ok(nic)
}

/// INTx on `f`'s line routed to the NIC vector, or polling without one.
fn intx_line(f: &PciFunction) -> Option<u8> {
    match InterruptPlan::choose(f, None, 1, ioapic::pins()) {
        InterruptPlan::Intx { line } => {
            ioapic::route(line, vectors::NET_INTX, ioapic::Trigger::Level, apic::id());
            Some(vectors::NET_INTX)
        }
        _ => None,
    }
}

/// Open 82540EM function `f` on its INTx line (or polled), logging what it found.
fn open_e1000(f: &PciFunction) -> Result<E1000<'static, KernelPlatform>, String> {
    let interrupts = match intx_line(f) {
        Some(vector) => E1000Interrupts::Intx { vector },
        None => E1000Interrupts::Polled,
    };
    let options = E1000Options {
        interrupts,
        ..E1000Options::default()
    };
    let mut nic = E1000::new(&PLATFORM, f, options)
        .map_err(|e| format!("e1000 {}: init: {}", f.address, e))?;
    let mac = nic.mac().map(|b| format!("{b:02x}")).join(":");
    println!(
        "# net: e1000 {}: mac {}, rings {:?}, interrupts: {:?}, offload tx_csum={}, link {:?}",
        f.address,
        mac,
        nic.ring_sizes(),
        interrupts,
        nic.offloads().tx_checksum,
        nic.link()
    );
    Ok(nic)
}

/// Open RTL8139 function `f` on its INTx line (or polled), with the RX ring
/// `rtl8139_rx_kib=8|16|32|64` asks for (default 32), logging what it found.
fn open_rtl8139(f: &PciFunction) -> Result<Rtl8139<'static, KernelPlatform>, String> {
    let rx_buffer = match bootinfo::get().arg("rtl8139_rx_kib") {
        None => Rtl8139Options::default().rx_buffer,
        Some("8") => RxBufferSize::K8,
        Some("16") => RxBufferSize::K16,
        Some("32") => RxBufferSize::K32,
        Some("64") => RxBufferSize::K64,
        Some(v) => return Err(format!("rtl8139_rx_kib={v:?} is not 8, 16, 32 or 64")),
    };
    let interrupts = match intx_line(f) {
        Some(vector) => Rtl8139Interrupts::Intx { vector },
        None => Rtl8139Interrupts::Polled,
    };
    let options = Rtl8139Options {
        interrupts,
        rx_buffer,
    };
    let mut nic = Rtl8139::new(&PLATFORM, f, options)
        .map_err(|e| format!("rtl8139 {}: init: {}", f.address, e))?;
    let mac = nic.mac().map(|b| format!("{b:02x}")).join(":");
    println!(
        "# net: rtl8139 {}: revision {:#04x}, mac {} ({:?}), rx ring {} KiB, interrupts: {:?}, \
         link {:?}",
        f.address,
        f.revision,
        mac,
        nic.mac_source(),
        nic.rx_buffer_bytes() / 1024,
        interrupts,
        nic.link()
    );
    Ok(nic)
}
