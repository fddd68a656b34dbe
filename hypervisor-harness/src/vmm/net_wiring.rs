//! Attaches virtio-net NICs (`--net virtio[:BACKEND][,mac=..][,queues=N]`), after the virtio
//! disks: one virtio-pci function each (`virtio-net<N>`, its BAR0 blocks on the MMIO bus as for
//! a disk), MSI-X with 2N + 2 vectors (one per queue and the configuration vector), the MAC
//! from the spec or QEMU's default for its index. The backend is opened here, before the guest
//! starts, so that a missing socket or TAP device is an error up front.
//!
//! Threads ([`event_loop`]): with `IoMode::Inline` the notifies exit and the vCPU runs the
//! queue (TX, then the receive pass for a synchronous backend's replies); one thread per NIC
//! waits on the backend. With `IoMode::Thread` each queue pair has a thread woken by its
//! queues' ioeventfds, the first also taking the control queue and the backend.
//!
//! The run's report gets one note per NIC: `net-counters: ` and its [`NicJson`] (per queue:
//! frames, bytes, drops, notifies, interrupts; drops by reason), which tests parse back.

use super::device_manager::DeviceManager;
use super::memory::GuestMem;
use super::virtio_wiring::{function_irq, place, Attached, GsiRouter};
use super::IoMode;
use crate::backends::net::spec::{BackendSpec, NetSpec, NicModel};
use crate::backends::net::NetBackend;
use crate::devices::lock;
use crate::devices::virtio::net::event_loop::{self, EventLoop};
use crate::devices::virtio::net::{Net, NetShared, NetStats};
use crate::devices::virtio::transport_pci::{self, VirtioPciDevice};
use crate::error::HarnessError;
use kvm_ioctls::IoEventAddress;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The prefix of a NIC's counters note.
pub const COUNTERS_NOTE: &str = "net-counters: ";

/// One queue's counters in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueJson {
    /// `rx0`, `tx0`, ..., `ctrl`.
    pub queue: String,
    pub frames: u64,
    pub bytes: u64,
    pub drops: u64,
    pub notifies: u64,
    pub interrupts: u64,
}

/// One NIC's counters in the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicJson {
    pub name: String,
    pub backend: String,
    pub pairs: u16,
    /// Pairs the driver put in use (MQ_VQ_PAIRS_SET).
    pub active_pairs: u16,
    pub queues: Vec<QueueJson>,
    /// Drops by reason (only those that happened).
    pub drops: BTreeMap<String, u64>,
    /// Times the device held frames back in the backend (no receive buffers).
    #[serde(default)]
    pub rx_holds: u64,
    /// Times the device left frames in a transmit ring because the backend could take no
    /// more (TX backpressure).
    #[serde(default)]
    pub tx_holds: u64,
    /// Frames for the guest the backend itself dropped (its queue full, too large).
    #[serde(default)]
    pub backend_rx_dropped: u64,
    /// Frames from the guest the backend dropped (the far side full).
    #[serde(default)]
    pub backend_tx_dropped: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_error: Option<String>,
}

impl NicJson {
    pub fn new(name: &str, backend: &str, pairs: u16, s: &NetStats) -> Self {
        let queues = s
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| QueueJson {
                queue: queue_name(i, pairs),
                frames: q.frames,
                bytes: q.bytes,
                drops: q.drops,
                notifies: q.notifies,
                interrupts: q.interrupts,
            })
            .collect();
        Self {
            name: name.into(),
            backend: backend.into(),
            pairs,
            active_pairs: s.ctrl.active_pairs,
            queues,
            drops: s
                .nonzero_drops()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            rx_holds: s.rx_holds,
            tx_holds: s.tx_holds,
            backend_rx_dropped: 0,
            backend_tx_dropped: 0,
            backend_error: s.backend_error.clone(),
        }
    }

    /// Read a counters note back (None for any other note).
    pub fn from_note(note: &str) -> Option<Self> {
        serde_json::from_str(note.strip_prefix(COUNTERS_NOTE)?).ok()
    }
}

fn queue_name(i: usize, pairs: u16) -> String {
    if i == Net::ctrl_queue(pairs) {
        "ctrl".into()
    } else if i.is_multiple_of(2) {
        format!("rx{}", i / 2)
    } else {
        format!("tx{}", i / 2)
    }
}

/// A NIC of the machine, kept for the run's report (and its threads for the run).
pub struct AttachedNic {
    pub function: Attached,
    pub shared: Arc<NetShared>,
    pub backend: String,
    pub pairs: u16,
    _threads: Vec<EventLoop>,
}

impl AttachedNic {
    pub fn counters(&self) -> NicJson {
        let mut json = NicJson::new(
            &self.function.name,
            &self.backend,
            self.pairs,
            &self.shared.stats(),
        );
        let backend = self.shared.backend().counters();
        json.backend_rx_dropped = backend.rx_dropped;
        json.backend_tx_dropped = backend.tx_dropped;
        json
    }

    /// The run's notes: the driver's errors, then the counters.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.function.notes();
        if let Ok(json) = serde_json::to_string(&self.counters()) {
            notes.push(format!("{COUNTERS_NOTE}{json}"));
        }
        notes
    }

    /// Link up or down, as the driver then sees it (status field, configuration interrupt).
    pub fn set_link(&self, up: bool) {
        self.shared.set_link(up);
        lock(&self.function.dev).device_config_changed();
    }
}

/// Refuse what this harness cannot attach as a virtio-net NIC, with the reason (the INTx
/// lines are counted for all NICs at once: [`super::virtio_wiring::check_intx_lines`]).
pub fn check_spec(spec: &NetSpec) -> Result<(), HarnessError> {
    if spec.model != NicModel::VirtioNet {
        return Err(HarnessError::Usage(format!(
            "--net {}: the {} NIC is not supported yet (use virtio)",
            spec.model.name(),
            spec.model.name()
        )));
    }
    Ok(())
}

/// Open a NIC's backend: a failure (no socket, no TAP permission, `user` not built yet) is an
/// error before the guest starts.
pub fn open_backend(spec: &BackendSpec) -> Result<Box<dyn NetBackend>, HarnessError> {
    crate::backends::net::open(spec)
}

/// Attach one virtio-net (`--net` number `n` of this model, its INTx GSI given) with its
/// opened backend.
#[allow(clippy::too_many_arguments)]
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    spec: &NetSpec,
    backend: Box<dyn NetBackend>,
    gsi: u8,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
) -> Result<(AttachedNic, String), HarnessError> {
    let (nic, note) = attach_net(dm, mem, n, spec, backend, gsi, io_mode, router)?;
    // `link=down`: the status the transport shows lacks LINK_UP from the driver's first
    // read (no configuration interrupt: the driver is not running yet).
    if !spec.link_up {
        nic.set_link(false);
    }
    Ok((nic, note))
}

#[allow(clippy::too_many_arguments)]
fn attach_net(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    spec: &NetSpec,
    backend: Box<dyn NetBackend>,
    gsi: u8,
    io_mode: IoMode,
    router: &Arc<Mutex<GsiRouter>>,
) -> Result<(AttachedNic, String), HarnessError> {
    let name = format!("virtio-net{n}");
    let other =
        |what: &str, e: &dyn std::fmt::Display| HarnessError::Other(format!("{name}: {what}: {e}"));
    let described = backend.describe();
    let mac = spec.mac_or_default(n);
    let pairs = spec.queues.max(1);
    let net = Net::new(backend, mac, pairs);
    let shared = net.shared();
    let num_queues = 2 * pairs as usize + 1;
    let vectors = transport_pci::msix_vectors(num_queues) as usize;
    let irq = function_irq(dm, router, &name, vectors, gsi)?;
    let dev = VirtioPciDevice::new(Box::new(net), mem.clone(), irq, gsi)
        .map_err(|e| HarnessError::Other(format!("{name}: {e}")))?;
    let dev = Arc::new(Mutex::new(dev));
    let (bar, bdf) = place(dm, &name, &dev)?;

    let mut threads = Vec::new();
    let mut mode = "inline";
    if io_mode == IoMode::Thread {
        // Queue q belongs to pair q / 2's thread; the control queue (2N) to the first.
        let mut per_pair: Vec<Vec<_>> = (0..pairs).map(|_| Vec::new()).collect();
        for q in 0..num_queues {
            let addr = bar + VirtioPciDevice::notify_offset(q);
            if let Some(evt) = dm.ioeventfd(IoEventAddress::Mmio(addr), libc::EFD_NONBLOCK) {
                let p = (q / 2).min(pairs as usize - 1);
                per_pair[if q == num_queues - 1 { 0 } else { p }].push((q, evt));
            }
        }
        // Queues whose ioeventfd KVM refused still work: their notify exits.
        for (p, notifies) in per_pair.into_iter().enumerate() {
            let backend_side = (p == 0).then(|| shared.clone());
            threads.push(
                event_loop::spawn(&format!("{name}-q{p}"), &dev, backend_side, notifies)
                    .map_err(|e| other("I/O thread", &e))?,
            );
        }
        mode = "thread";
    } else {
        threads.push(
            event_loop::spawn(
                &format!("{name}-rx"),
                &dev,
                Some(shared.clone()),
                Vec::new(),
            )
            .map_err(|e| other("backend thread", &e))?,
        );
    }
    let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
    let note = format!(
        "{name}: {described}, MAC {mac_text}, {pairs} queue pair(s) at {bdf}, BAR0 {bar:#x}, \
         INTx GSI {gsi}, {vectors} MSI-X vectors, I/O {mode}"
    );
    let nic = AttachedNic {
        function: Attached { name, dev },
        shared,
        backend: described,
        pairs,
        _threads: threads,
    };
    Ok((nic, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::net::test_util::TestBackend;
    use crate::devices::virtio::net::QueueCounters;

    #[test]
    fn unsupported_models_and_backends_are_usage_errors() {
        let e = check_spec(&NetSpec::parse("e1000").unwrap()).unwrap_err();
        assert!(e.to_string().contains("not supported yet"), "{e}");
        // user-mode networking attaches like any backend.
        check_spec(&NetSpec::parse("virtio:user").unwrap()).unwrap();
        check_spec(&NetSpec::parse("virtio,queues=2").unwrap()).unwrap();
    }

    /// One INTx line per virtio disk, NIC and the balloon, counted over all of them.
    #[test]
    fn intx_lines_are_counted_over_disks_nics_and_the_balloon() {
        use super::super::virtio_wiring::{check_intx_lines, INTX_GSIS};
        let n = INTX_GSIS.len();
        check_intx_lines(0, 1, false, false).unwrap();
        check_intx_lines(n - 2, 2, false, false).unwrap();
        let e = check_intx_lines(n - 1, 2, false, false).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        let e = check_intx_lines(n, 1, false, false).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
        check_intx_lines(0, n - 1, true, false).unwrap();
        let e = check_intx_lines(0, n, true, false).unwrap_err();
        assert!(e.to_string().contains("--balloon: at most"), "{e}");
        check_intx_lines(0, n - 2, true, true).unwrap();
        let e = check_intx_lines(0, n - 1, true, true).unwrap_err();
        assert!(e.to_string().contains("--console: at most"), "{e}");
    }

    #[test]
    fn counters_note_round_trips() {
        let net = Net::new(Box::new(TestBackend::new()), [2, 0, 0, 0, 0, 1], 2);
        let mut s = net.shared().stats();
        s.queues[3] = QueueCounters {
            frames: 5,
            bytes: 300,
            drops: 1,
            notifies: 4,
            interrupts: 2,
        };
        let j = NicJson::new("virtio-net0", "peer", 2, &s);
        let names: Vec<_> = j.queues.iter().map(|q| q.queue.as_str()).collect();
        assert_eq!(names, ["rx0", "tx0", "rx1", "tx1", "ctrl"]);
        let note = format!("{COUNTERS_NOTE}{}", serde_json::to_string(&j).unwrap());
        assert_eq!(NicJson::from_note(&note), Some(j));
        assert_eq!(NicJson::from_note("virtio-blk0: something"), None);
    }
}
