//! Attaches RTL8139 NICs (`--net rtl8139[:BACKEND][,mac=..][,link=..]`), after the e1000s: one
//! RTL8139C function each (`rtl8139-<N>`), BAR0 (256 bytes of registers) on the port bus, BAR1
//! (the same registers) on the MMIO bus, INTA on its own GSI as a real level line
//! (`KVM_IRQ_LINE` high while `ISR & IMR`), and one thread per NIC for its backend.
//!
//! The thread sleeps on the backend's `rx_ready_fd` and `poll()` timeout and runs the model's
//! receive pass. While the ring is full (the model holds the frame back) it stops watching the
//! level-triggered fd, and the CAPR write that makes room wakes it through the wake eventfd.
//! While a TX slot waits for a full backend (the model leaves it unfinished) it watches the
//! backend's `tx_wait_fd` for room (or retries each millisecond without one) and resumes TX.
//! Frames that move on a vCPU thread (a TSD or CAPR write) may arm the backend's timers while
//! the thread sleeps without a timeout: the model then polls the backend and wakes the thread
//! if it has a deadline now.
//!
//! The report gets one note per NIC: `rtl8139-counters: ` and the model's counters as JSON.

use super::device_manager::DeviceManager;
use super::e1000_wiring::{own_vm_fd, KvmLevelLine};
use super::emulated_nic_thread::{self, BackendFds, BackendThread, EmulatedNic};
use super::memory::GuestMem;
use crate::backends::net::spec::{NetSpec, NicModel};
use crate::backends::net::NetBackend;
use crate::devices::lock;
use crate::devices::net::rtl8139::regs::REGS_SIZE;
use crate::devices::net::rtl8139::{
    Rtl8139, Rtl8139Function, Rtl8139Io, Rtl8139Mmio, SharedRtl8139, BAR_IO, BAR_MMIO,
};
use crate::error::HarnessError;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// The prefix of an RTL8139's counters note.
pub const COUNTERS_NOTE: &str = "rtl8139-counters: ";

#[derive(Serialize)]
struct CountersJson<'a> {
    name: &'a str,
    backend: &'a str,
    tx_frames: u64,
    rx_frames: u64,
    tx_bad_size: u64,
    tx_too_long: u64,
    tx_buffer_fault: u64,
    tx_backend_errors: u64,
    tx_holds: u64,
    rx_buffer_fault: u64,
    rx_dropped: u64,
    rx_filtered: u64,
    rx_holds: u64,
    rx_backend_errors: u64,
    cplus_writes: u64,
    bad_access_width: u64,
    eeprom_refused_writes: u64,
    backend_rx_dropped: u64,
    backend_tx_dropped: u64,
}

/// An RTL8139 of the machine: kept for the run (its thread) and its report.
pub struct AttachedRtl8139 {
    pub name: String,
    pub dev: SharedRtl8139<GuestMem>,
    pub backend: String,
    _thread: BackendThread,
}

impl AttachedRtl8139 {
    pub fn notes(&self) -> Vec<String> {
        let d = lock(&self.dev);
        let c = d.counters();
        let b = d.backend().counters();
        let json = CountersJson {
            name: &self.name,
            backend: &self.backend,
            tx_frames: c.tx_frames,
            rx_frames: c.rx_frames,
            tx_bad_size: c.tx_bad_size,
            tx_too_long: c.tx_too_long,
            tx_buffer_fault: c.tx_buffer_fault,
            tx_backend_errors: c.tx_backend_errors,
            tx_holds: c.tx_holds,
            rx_buffer_fault: c.rx_buffer_fault,
            rx_dropped: c.rx_dropped,
            rx_filtered: c.rx_filtered,
            rx_holds: c.rx_holds,
            rx_backend_errors: c.rx_backend_errors,
            cplus_writes: c.cplus_writes,
            bad_access_width: c.bad_access_width,
            eeprom_refused_writes: c.eeprom_refused_writes,
            backend_rx_dropped: b.rx_dropped,
            backend_tx_dropped: b.tx_dropped,
        };
        serde_json::to_string(&json)
            .map(|j| vec![format!("{COUNTERS_NOTE}{j}")])
            .unwrap_or_default()
    }
}

/// Refuse what the RTL8139 cannot be: several queues (the INTx lines are counted for all NICs
/// at once: [`super::virtio_wiring::check_intx_lines`]).
pub fn check_spec(spec: &NetSpec) -> Result<(), HarnessError> {
    debug_assert_eq!(spec.model, NicModel::Rtl8139);
    if spec.queues != 1 {
        return Err(HarnessError::Usage(
            "--net rtl8139: the RTL8139 has one queue (no queues=)".into(),
        ));
    }
    Ok(())
}

/// Attach one RTL8139 (`--net` number `n` of this model, its GSI given) with its opened
/// backend.
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    spec: &NetSpec,
    backend: Box<dyn NetBackend>,
    gsi: u8,
) -> Result<(AttachedRtl8139, String), HarnessError> {
    let (nic, note) = attach_one(dm, mem, n, spec.mac_or_default(n), backend, gsi)?;
    // `link=down`: MSR.LINKB set and BMSR's link bit clear from the driver's first read
    // (the LinkChg this latches is cleared by the driver's reset; IMR is 0 until then).
    if !spec.link_up {
        lock(&nic.dev).set_link(false);
    }
    Ok((nic, note))
}

fn attach_one(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    mac: [u8; 6],
    backend: Box<dyn NetBackend>,
    gsi: u8,
) -> Result<(AttachedRtl8139, String), HarnessError> {
    let name = format!("rtl8139-{n}");
    let other =
        |what: &str, e: &dyn std::fmt::Display| HarnessError::Other(format!("{name}: {what}: {e}"));
    let described = backend.describe();
    let fds = BackendFds {
        rx: backend.rx_ready_fd(),
        tx_wait: backend.tx_wait_fd(),
    };
    let line = Arc::new(KvmLevelLine {
        vm: own_vm_fd(dm)?,
        gsi: u32::from(gsi),
    });
    let io = dm.alloc_io_bar(REGS_SIZE)?;
    let mmio = dm.alloc_mmio_bar(REGS_SIZE)?;
    let mut nic = Rtl8139::new(mem.clone(), backend, mac, line, gsi);
    {
        let c = nic.config_mut();
        c.set_bar_address(BAR_IO, io)
            .map_err(|e| other("BAR0", &e))?;
        c.set_bar_address(BAR_MMIO, mmio)
            .map_err(|e| other("BAR1", &e))?;
        c.enable(DeviceManager::DECODE_ALL);
    }
    let wake = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| other("eventfd", &e))?;
    nic.set_wake(wake.try_clone().map_err(|e| other("eventfd", &e))?);
    let dev = Arc::new(Mutex::new(nic));
    let bdf = dm.next_bdf()?;
    dm.add_pci(bdf, Arc::new(Mutex::new(Rtl8139Function(dev.clone()))));
    dm.insert_pio(
        &format!("{name}-io"),
        io,
        REGS_SIZE,
        Arc::new(Mutex::new(Rtl8139Io(dev.clone()))),
    )?;
    dm.insert_mmio(
        &format!("{name}-regs"),
        mmio,
        REGS_SIZE,
        Arc::new(Mutex::new(Rtl8139Mmio(dev.clone()))),
    )?;
    let thread = emulated_nic_thread::spawn(&name, dev.clone(), fds, wake)
        .map_err(|e| other("backend thread", &e))?;
    let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
    let note = format!(
        "{name}: {described}, MAC {mac_text}, RTL8139C at {bdf}, BAR0 {io:#x}, BAR1 \
         {mmio:#x}, INTA GSI {gsi}"
    );
    Ok((
        AttachedRtl8139 {
            name,
            dev,
            backend: described,
            _thread: thread,
        },
        note,
    ))
}

impl EmulatedNic for Rtl8139<GuestMem> {
    fn service(&mut self) -> Option<Duration> {
        let wait = self.backend_poll();
        self.tx_resume();
        self.rx_pass();
        wait
    }

    fn rx_blocked(&self) -> bool {
        Rtl8139::rx_blocked(self)
    }

    fn tx_waiting(&self) -> bool {
        self.tx_blocked()
    }
}

#[cfg(test)]
mod tests {
    use super::emulated_nic_thread::test_backend::ResendingBackend;
    use super::*;
    use crate::backends::net::FrameMeta;
    use crate::devices::net::rtl8139::regs::*;
    use crate::devices::net::IrqLevel;
    use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_IO};
    use crate::devices::virtio::net::test_util::TestBackend;
    use std::time::Instant;
    use vm_memory::{Bytes, GuestAddress};

    struct NoLine;
    impl IrqLevel for NoLine {
        fn set_level(&self, _: bool) {}
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn rig() -> (GuestMem, TestBackend, SharedRtl8139<GuestMem>, EventFd) {
        let mem = super::super::memory::create(1 << 20).unwrap();
        let backend = TestBackend::new();
        let mut nic = Rtl8139::new(
            mem.clone(),
            Box::new(backend.clone()),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            Arc::new(NoLine),
            11,
        );
        nic.config_mut().enable(CMD_IO | CMD_BUS_MASTER);
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        nic.set_wake(wake.try_clone().unwrap());
        (mem, backend, Arc::new(Mutex::new(nic)), wake)
    }

    fn w(dev: &SharedRtl8139<GuestMem>, reg: u8, v: &[u8]) {
        lock(dev).io_write(u64::from(reg), v);
    }

    /// The thread delivers frames as they arrive, stops while the ring is full, and after the
    /// CAPR write that makes room delivers frames that arrive later.
    #[test]
    fn backend_thread_delivers_and_resumes_rx() {
        let (mem, backend, dev, wake) = rig();
        w(&dev, RBSTART, &0x1_0000u32.to_le_bytes());
        w(&dev, CR, &[(Cmd::RE | Cmd::TE).bits()]);
        w(&dev, RCR, &Rcr::APM.bits().to_le_bytes());
        let fds = BackendFds {
            rx: backend.rx_ready_fd(),
            tx_wait: None,
        };
        let _thread = emulated_nic_thread::spawn("rtl8139-test", dev.clone(), fds, wake).unwrap();
        let frame = |seed: u8| {
            let mut f = vec![seed; 1000];
            f[..6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
            f
        };
        let rx_frames = || lock(&dev).counters().rx_frames;
        backend.push(&frame(1), FrameMeta::default());
        wait_for("first frame", || rx_frames() == 1);
        for s in 2..=10 {
            backend.push(&frame(s), FrameMeta::default());
        }
        wait_for("ring full", || rx_frames() == 8 && lock(&dev).rx_blocked());
        assert_eq!(backend.waiting(), 1, "one held, one in the backend");
        // The driver read everything: CAPR = CBR - 16.
        let cbr = {
            let mut b = [0u8; 2];
            lock(&dev).io_read(u64::from(CBR), &mut b);
            u16::from_le_bytes(b)
        };
        w(&dev, CAPR, &cbr.wrapping_sub(16).to_le_bytes());
        assert_eq!(rx_frames(), 10, "the CAPR write's own pass took both");
        backend.push(&frame(11), FrameMeta::default());
        wait_for("a frame after the resume", || rx_frames() == 11);
        let mut hdr = [0u8; 4];
        mem.read_slice(
            &mut hdr,
            GuestAddress(0x1_0000 + (u64::from(cbr) + 2 * 1008) % 8192),
        )
        .unwrap();
        assert_eq!(u16::from_le_bytes([hdr[2], hdr[3]]), 1004);
    }

    /// A slot held for a full backend goes out when the backend's tx_wait_fd says there is
    /// room, without a guest access.
    #[test]
    fn backend_thread_resumes_a_held_tx_slot() {
        let (mem, backend, dev, wake) = rig();
        w(&dev, CR, &[Cmd::TE.bits()]);
        let fds = BackendFds {
            rx: backend.rx_ready_fd(),
            tx_wait: backend.tx_wait_fd(),
        };
        let _thread = emulated_nic_thread::spawn("rtl8139-test", dev.clone(), fds, wake).unwrap();
        backend.set_tx_room(Some(0));
        mem.write_slice(&[0xab; 64], GuestAddress(0x2000)).unwrap();
        w(&dev, TSAD0, &0x2000u32.to_le_bytes());
        w(&dev, TSD0, &64u32.to_le_bytes());
        std::thread::sleep(Duration::from_millis(20));
        assert!(backend.sent().is_empty());
        assert!(lock(&dev).tx_blocked());
        backend.set_tx_room(None);
        wait_for("the held slot sent", || backend.sent().len() == 1);
        wait_for("TOK", || {
            let mut b = [0u8; 4];
            lock(&dev).io_read(u64::from(TSD0), &mut b);
            u32::from_le_bytes(b) & Tsd::TOK.bits() != 0
        });
    }

    /// The thread first finds the backend with no deadline and sleeps without a timeout; a
    /// transmit on the vCPU thread then arms the backend's timer (as the peer's TCP arms its
    /// retransmission). The frame that timer sends must still come.
    #[test]
    fn backend_timer_armed_by_a_transmit_runs() {
        let mem = super::super::memory::create(1 << 20).unwrap();
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let mut reply = vec![7u8; 64];
        reply[..6].copy_from_slice(&mac);
        let backend = ResendingBackend::new(reply);
        let mut nic = Rtl8139::new(
            mem.clone(),
            Box::new(backend.clone()),
            mac,
            Arc::new(NoLine),
            11,
        );
        nic.config_mut().enable(CMD_IO | CMD_BUS_MASTER);
        let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        nic.set_wake(wake.try_clone().unwrap());
        let dev = Arc::new(Mutex::new(nic));
        w(&dev, RBSTART, &0x1_0000u32.to_le_bytes());
        w(&dev, CR, &[(Cmd::RE | Cmd::TE).bits()]);
        w(&dev, RCR, &Rcr::APM.bits().to_le_bytes());
        let fds = BackendFds {
            rx: backend.rx_ready_fd(),
            tx_wait: None,
        };
        let _thread = emulated_nic_thread::spawn("rtl8139-test", dev.clone(), fds, wake).unwrap();
        // Let the thread's first round find no deadline and go to sleep without one.
        std::thread::sleep(Duration::from_millis(20));
        mem.write_slice(&[0xab; 64], GuestAddress(0x2000)).unwrap();
        w(&dev, TSAD0, &0x2000u32.to_le_bytes());
        w(&dev, TSD0, &64u32.to_le_bytes());
        wait_for("the frame the backend's timer sends", || {
            lock(&dev).counters().rx_frames == 1
        });
    }

    #[test]
    fn specs_checked() {
        let rtl = NetSpec::parse("rtl8139").unwrap();
        check_spec(&rtl).unwrap();
        // user-mode networking attaches like any backend.
        check_spec(&NetSpec::parse("rtl8139:user").unwrap()).unwrap();
        let many = NetSpec { queues: 2, ..rtl };
        let e = check_spec(&many).unwrap_err();
        assert!(e.to_string().contains("one queue"), "{e}");
    }
}
