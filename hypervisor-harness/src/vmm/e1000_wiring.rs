//! Attaches e1000 NICs (`--net e1000[:BACKEND][,mac=..]`), after the virtio NICs: one 82540EM
//! function each (`e1000<N>`), BAR0 (128 KiB of registers) on the MMIO bus, BAR1 (the
//! IOADDR/IODATA window) on the port bus, INTA on its own GSI as a real level line
//! (`KVM_IRQ_LINE` high while `ICR & IMS`, low when ICR is read), and one thread per NIC for
//! its backend: it sleeps on the backend's `rx_ready_fd` and `poll()` timeout and runs the
//! model's receive pass. While the ring is full (the model holds the frame back) it stops
//! watching the level-triggered fd, and the register write that makes room wakes it through
//! the resume eventfd. The same thread raises interrupts that ITR moderation held back, when
//! their time comes (the model writes the eventfd when it starts holding one), and finishes a
//! transmit that stalled for want of room in the backend (a full stream socket or TAP queue)
//! when the backend's `tx_wait_fd` turns writable, so nothing the guest sent is dropped.
//! Frames that move on a vCPU thread (a TDT or RDT write) may arm the backend's timers while
//! the thread sleeps without a timeout: the model then polls the backend and wakes the thread
//! if it has a deadline now.
//!
//! The report gets one note per NIC: `e1000-counters: ` and the model's counters as JSON.

use super::device_manager::DeviceManager;
use super::emulated_nic_thread::{self, BackendFds, BackendThread, EmulatedNic};
use super::memory::GuestMem;
use crate::backends::net::spec::NetSpec;
use crate::backends::net::NetBackend;
use crate::devices::lock;
use crate::devices::net::e1000::regs::{IO_SIZE, MMIO_SIZE};
use crate::devices::net::e1000::{
    E1000Function, E1000Io, E1000Mmio, SharedE1000, BAR_IO, BAR_MMIO, E1000,
};
use crate::devices::net::IrqLevel;
use crate::error::HarnessError;
use kvm_ioctls::VmFd;
use serde::Serialize;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

/// The prefix of an e1000's counters note.
pub const COUNTERS_NOTE: &str = "e1000-counters: ";

/// INTA through `KVM_IRQ_LINE` on the function's GSI (the RTL8139's too).
pub(super) struct KvmLevelLine {
    pub(super) vm: VmFd,
    pub(super) gsi: u32,
}

impl IrqLevel for KvmLevelLine {
    fn set_level(&self, high: bool) {
        // A failure here leaves the line where it was; the guest's timeouts still run.
        let _ = self.vm.set_irq_line(self.gsi, high);
    }
}

/// A handle on the VM of its own (a dup of the VM fd), so the line can outlive the borrow the
/// device manager holds and be raised from the backend thread.
pub(super) fn own_vm_fd(dm: &DeviceManager) -> Result<VmFd, HarnessError> {
    // SAFETY: dup has no memory-safety preconditions; the result is checked below.
    let fd = unsafe { libc::dup(dm.vm.fd.as_raw_fd()) };
    if fd < 0 {
        return Err(HarnessError::Other(format!(
            "dup VM fd: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` is a fresh duplicate of a valid VM fd that nothing else owns; the VmFd
    // takes ownership and closes it.
    unsafe { dm.vm.kvm.create_vmfd_from_rawfd(fd) }
        .map_err(|e| HarnessError::Other(format!("VM fd: {e}")))
}

#[derive(Serialize)]
struct CountersJson<'a> {
    name: &'a str,
    backend: &'a str,
    tx_frames: u64,
    rx_frames: u64,
    tx_desc_fault: u64,
    tx_buffer_fault: u64,
    tx_oversize: u64,
    tx_empty: u64,
    tx_tso_dropped: u64,
    tx_bad_checksum_offsets: u64,
    tx_bad_desc_type: u64,
    tx_backend_errors: u64,
    bad_index_writes: u64,
    rx_desc_fault: u64,
    rx_buffer_fault: u64,
    rx_dropped: u64,
    rx_filtered: u64,
    rx_holds: u64,
    tx_stalls: u64,
    rx_backend_errors: u64,
    backend_rx_dropped: u64,
}

/// An e1000 of the machine: kept for the run (its thread) and its report.
pub struct AttachedE1000 {
    pub name: String,
    pub dev: SharedE1000<GuestMem>,
    pub backend: String,
    _thread: BackendThread,
}

impl AttachedE1000 {
    pub fn notes(&self) -> Vec<String> {
        let d = lock(&self.dev);
        let c = d.counters();
        let json = CountersJson {
            name: &self.name,
            backend: &self.backend,
            tx_frames: c.tx_frames,
            rx_frames: c.rx_frames,
            tx_desc_fault: c.tx_desc_fault,
            tx_buffer_fault: c.tx_buffer_fault,
            tx_oversize: c.tx_oversize,
            tx_empty: c.tx_empty,
            tx_tso_dropped: c.tx_tso_dropped,
            tx_bad_checksum_offsets: c.tx_bad_checksum_offsets,
            tx_bad_desc_type: c.tx_bad_desc_type,
            tx_backend_errors: c.tx_backend_errors,
            bad_index_writes: c.bad_index_writes,
            rx_desc_fault: c.rx_desc_fault,
            rx_buffer_fault: c.rx_buffer_fault,
            rx_dropped: c.rx_dropped,
            rx_filtered: c.rx_filtered,
            rx_holds: c.rx_holds,
            tx_stalls: c.tx_stalls,
            rx_backend_errors: c.rx_backend_errors,
            backend_rx_dropped: d.backend().counters().rx_dropped,
        };
        serde_json::to_string(&json)
            .map(|j| vec![format!("{COUNTERS_NOTE}{j}")])
            .unwrap_or_default()
    }
}

/// Attach one e1000 (`--net` number `n` of this model, its GSI given) with its opened
/// backend.
pub fn attach(
    dm: &mut DeviceManager,
    mem: &GuestMem,
    n: usize,
    spec: &NetSpec,
    backend: Box<dyn NetBackend>,
    gsi: u8,
) -> Result<(AttachedE1000, String), HarnessError> {
    let (nic, note) = attach_one(dm, mem, n, spec.mac_or_default(n), backend, gsi)?;
    // `link=down`: STATUS.LU and the PHY's link bits clear from the driver's first read
    // (the LSC cause this latches is cleared by the driver's reset; IMS is 0 until then).
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
) -> Result<(AttachedE1000, String), HarnessError> {
    let name = format!("e1000-{n}");
    let other =
        |what: &str, e: &dyn std::fmt::Display| HarnessError::Other(format!("{name}: {what}: {e}"));
    let described = backend.describe();
    let (backend_fd, tx_wait_fd) = (backend.rx_ready_fd(), backend.tx_wait_fd());
    let line = Arc::new(KvmLevelLine {
        vm: own_vm_fd(dm)?,
        gsi: u32::from(gsi),
    });
    let mmio = dm.alloc_mmio_bar(MMIO_SIZE)?;
    let io = dm.alloc_io_bar(IO_SIZE)?;
    let mut e1000 = E1000::new(mem.clone(), backend, mac, line, gsi);
    {
        let c = e1000.config_mut();
        c.set_bar_address(BAR_MMIO, mmio)
            .map_err(|e| other("BAR0", &e))?;
        c.set_bar_address(BAR_IO, io)
            .map_err(|e| other("BAR1", &e))?;
        c.enable(DeviceManager::DECODE_ALL);
    }
    let resume = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| other("eventfd", &e))?;
    e1000.set_rx_resume(resume.try_clone().map_err(|e| other("eventfd", &e))?);
    let dev = Arc::new(Mutex::new(e1000));
    let bdf = dm.next_bdf()?;
    dm.add_pci(bdf, Arc::new(Mutex::new(E1000Function(dev.clone()))));
    dm.insert_mmio(
        &format!("{name}-regs"),
        mmio,
        MMIO_SIZE,
        Arc::new(Mutex::new(E1000Mmio(dev.clone()))),
    )?;
    dm.insert_pio(
        &format!("{name}-io"),
        io,
        IO_SIZE,
        Arc::new(Mutex::new(E1000Io(dev.clone()))),
    )?;
    let fds = BackendFds {
        rx: backend_fd,
        tx_wait: tx_wait_fd,
    };
    let thread = emulated_nic_thread::spawn(&name, dev.clone(), fds, resume)
        .map_err(|e| other("backend thread", &e))?;
    let mac_text = mac.map(|b| format!("{b:02x}")).join(":");
    let note = format!(
        "{name}: {described}, MAC {mac_text}, 82540EM at {bdf}, BAR0 {mmio:#x}, BAR1 \
         {io:#x}, INTA GSI {gsi}"
    );
    Ok((
        AttachedE1000 {
            name,
            dev,
            backend: described,
            _thread: thread,
        },
        note,
    ))
}

impl EmulatedNic for E1000<GuestMem> {
    fn service(&mut self) -> Option<Duration> {
        self.irq_timer();
        let mut wait = self.backend_poll();
        self.tx_retry();
        self.rx_pass();
        // A moderated interrupt (ITR) waiting for its time.
        if let Some(due) = self.irq_deadline() {
            let until = due.saturating_duration_since(std::time::Instant::now());
            wait = Some(wait.map_or(until, |w| w.min(until)));
        }
        wait
    }

    fn rx_blocked(&self) -> bool {
        E1000::rx_blocked(self)
    }

    fn tx_waiting(&self) -> bool {
        self.tx_stalled()
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory::GuestMem;
    use super::emulated_nic_thread::test_backend::ResendingBackend;
    use super::*;
    use crate::backends::net::FrameMeta;
    use crate::devices::net::e1000::regs::*;
    use crate::devices::pci::config::{CMD_BUS_MASTER, CMD_MEM};
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

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// An e1000 on `backend` with memory decode and bus mastering on, its RX resume eventfd
    /// set, and an RX ring of 8 descriptors at 0x1000 (buffers from 0x8000) whose RDT is the
    /// caller's to write.
    fn e1000_with_rx_ring(
        backend: Box<dyn crate::backends::net::NetBackend>,
    ) -> (GuestMem, Arc<Mutex<E1000<GuestMem>>>, EventFd) {
        let mem = super::super::memory::create(1 << 20).unwrap();
        let mut e = E1000::new(mem.clone(), backend, MAC, Arc::new(NoLine), 11);
        e.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
        let resume = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        e.set_rx_resume(resume.try_clone().unwrap());
        let dev = Arc::new(Mutex::new(e));
        for i in 0..8u64 {
            mem.write_slice(
                &(0x8000 + i * 2048).to_le_bytes(),
                GuestAddress(0x1000 + i * 16),
            )
            .unwrap();
        }
        let w = |reg: u64, v: u32| lock(&dev).mmio_write(reg, &v.to_le_bytes());
        w(RDBAL, 0x1000);
        w(RDLEN, 128);
        (mem, dev, resume)
    }

    /// The backend thread delivers frames as they arrive, stops while the ring is full, and
    /// after the RDT write that makes room it delivers frames that arrive later.
    #[test]
    fn backend_thread_delivers_and_resumes() {
        let backend = TestBackend::new();
        let fd = backend.rx_ready_fd();
        let (mem, dev, resume) = e1000_with_rx_ring(Box::new(backend.clone()));
        let w = |reg: u64, v: u32| lock(&dev).mmio_write(reg, &v.to_le_bytes());
        w(RDT, 2);
        w(RCTL, (Rctl::EN | Rctl::SECRC).bits());
        let tx_fd = backend.tx_wait_fd();
        let fds = BackendFds {
            rx: fd,
            tx_wait: tx_fd,
        };
        let _thread = emulated_nic_thread::spawn("e1000-test", dev.clone(), fds, resume).unwrap();
        let frame = |seed: u8| {
            let mut f = vec![seed; 64];
            f[..6].copy_from_slice(&MAC);
            f
        };
        let rx_frames = || lock(&dev).counters().rx_frames;
        backend.push(&frame(1), FrameMeta::default());
        wait_for("first frame", || rx_frames() == 1);
        for s in 2..5 {
            backend.push(&frame(s), FrameMeta::default());
        }
        wait_for("ring full", || rx_frames() == 2 && lock(&dev).rx_blocked());
        assert_eq!(
            backend.waiting(),
            1,
            "one held in the device, one in the backend"
        );
        w(RDT, 7);
        assert_eq!(rx_frames(), 4, "the RDT write's own pass took both");
        backend.push(&frame(5), FrameMeta::default());
        wait_for("a frame after the resume", || rx_frames() == 5);
        assert!(!lock(&dev).rx_blocked());
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x8000 + 4 * 2048))
            .unwrap();
        assert_eq!(got.to_vec(), frame(5));
    }

    /// A transmit stalled on a backend without room is finished by the backend thread when
    /// the backend's wait fd says there is room, with no further register write.
    #[test]
    fn backend_thread_finishes_a_stalled_transmit() {
        let mem = super::super::memory::create(1 << 20).unwrap();
        let backend = TestBackend::new();
        let mut e = E1000::new(
            mem.clone(),
            Box::new(backend.clone()),
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            Arc::new(NoLine),
            11,
        );
        e.config_mut().enable(CMD_MEM | CMD_BUS_MASTER);
        let resume = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        e.set_rx_resume(resume.try_clone().unwrap());
        let dev = Arc::new(Mutex::new(e));
        let fds = (backend.rx_ready_fd(), backend.tx_wait_fd());
        let fds = BackendFds {
            rx: fds.0,
            tx_wait: fds.1,
        };
        let _thread = emulated_nic_thread::spawn("e1000-test", dev.clone(), fds, resume).unwrap();
        let w = |reg: u64, v: u32| lock(&dev).mmio_write(reg, &v.to_le_bytes());
        for i in 0..6u64 {
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&(0x8000 + i * 2048).to_le_bytes());
            d[8..10].copy_from_slice(&60u16.to_le_bytes());
            d[11] = (TxCmd::EOP | TxCmd::RS).bits();
            mem.write_slice(&d, GuestAddress(0x1000 + i * 16)).unwrap();
        }
        w(TDBAL, 0x1000);
        w(TDLEN, 8 * 16);
        w(TCTL, Tctl::EN.bits());
        backend.set_tx_room(Some(1));
        w(TDT, 6);
        assert_eq!(backend.sent().len(), 1);
        assert!(lock(&dev).tx_stalled());
        // Still no room: the thread must not spin it out or drop anything.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(backend.sent().len(), 1);
        backend.set_tx_room(None);
        wait_for("the rest sent", || backend.sent().len() == 6);
        assert!(!lock(&dev).tx_stalled());
        assert_eq!(lock(&dev).counters().tx_backend_errors, 0);
    }

    /// The backend thread first finds the backend with no deadline and sleeps without a
    /// timeout; a transmit on the vCPU thread then arms the backend's timer. The model must
    /// give the backend its `poll` and the thread the new deadline, or the frame the timer
    /// sends (a TCP retransmission) never comes: e1000's stall under `faults=drop`.
    #[test]
    fn backend_timer_armed_by_a_transmit_runs() {
        let mut reply = vec![7u8; 64];
        reply[..6].copy_from_slice(&MAC);
        let backend = ResendingBackend::new(reply.clone());
        let (mem, dev, resume) = e1000_with_rx_ring(Box::new(backend.clone()));
        let w = |reg: u64, v: u32| lock(&dev).mmio_write(reg, &v.to_le_bytes());
        // TX: one frame at 0x2000.
        w(RDT, 7);
        w(RCTL, (Rctl::EN | Rctl::SECRC).bits());
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&0x4000u64.to_le_bytes());
        d[8..10].copy_from_slice(&60u16.to_le_bytes());
        d[11] = (TxCmd::EOP | TxCmd::RS).bits();
        mem.write_slice(&d, GuestAddress(0x2000)).unwrap();
        w(TDBAL, 0x2000);
        w(TDLEN, 128);
        w(TCTL, Tctl::EN.bits());
        let fds = BackendFds {
            rx: backend.rx_ready_fd(),
            tx_wait: None,
        };
        let _thread = emulated_nic_thread::spawn("e1000-test", dev.clone(), fds, resume).unwrap();
        // Let the thread's first round find no deadline and go to sleep without one.
        std::thread::sleep(Duration::from_millis(20));
        w(TDT, 1);
        wait_for("the frame the backend's timer sends", || {
            lock(&dev).counters().rx_frames == 1
        });
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_eq!(got.to_vec(), reply);
    }
}
