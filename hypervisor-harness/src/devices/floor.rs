//! The exit-floor device, PCI 00:01.0 (1234:f100, class ff/00/00, INTA, line 10). It lets the
//! guest measure what one exit costs, for each way a write can leave the guest:
//!
//! BAR0 (I/O, 16 bytes): +0 write handled in userspace; +4 write bound to an ioeventfd; +8
//! doorbell, bound to an ioeventfd whose wakeups raise the device interrupt (notify->irq).
//! BAR1 (32-bit memory, 4 KiB): +0 write handled in userspace; +0x100 bound to an ioeventfd.
//! All reads return 0.
//!
//! The command register is honoured: with I/O (memory) decode off, BAR0 (BAR1) does not answer:
//! reads return all-ones and writes are dropped, doorbells included (an ioeventfd still fires
//! with decode off, so the doorbell thread checks too). The device does no DMA and raises only
//! INTx, so bus mastering does not change what it does.
//!
//! The ioeventfd bindings themselves are made by `vmm/`; if KVM refuses one, the write reaches
//! this model instead and is handled the same way (the doorbell then raises the interrupt
//! directly), so the guest still works and the exit counters show the difference.

use super::bus::BusDevice;
use super::pci::config::{PciConfig, CMD_IO, CMD_MEM};
use super::pci::PciFunction;
use super::{lock, Interrupt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0xf100;
pub const GSI: u8 = 10;

pub const BAR0_SIZE: u64 = 16;
pub const BAR1_SIZE: u64 = 4096;

pub const IO_USERSPACE: u64 = 0;
pub const IO_IOEVENTFD: u64 = 4;
pub const IO_DOORBELL: u64 = 8;
pub const MMIO_USERSPACE: u64 = 0;
pub const MMIO_IOEVENTFD: u64 = 0x100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloorAction {
    /// Nothing to do (the write itself was the point).
    Nothing,
    /// Raise the device interrupt.
    Interrupt,
}

/// Register logic of BAR0 writes.
pub fn io_write_action(offset: u64) -> FloorAction {
    if offset == IO_DOORBELL {
        FloorAction::Interrupt
    } else {
        FloorAction::Nothing
    }
}

/// Statistics of what reached userspace (for tests and diagnostics).
#[derive(Default)]
pub struct FloorStats {
    pub io_writes: AtomicU64,
    pub mmio_writes: AtomicU64,
    pub doorbells: AtomicU64,
    /// Accesses (and doorbell wakeups) that arrived with their BAR's decode off.
    pub undecoded: AtomicU64,
}

pub struct FloorFunction {
    config: PciConfig,
}

impl FloorFunction {
    pub fn new() -> Self {
        let mut config = PciConfig::new(VENDOR, DEVICE, 0xff, 0x00, 0x00);
        config.set_interrupt(1, GSI);
        // The indices and sizes are constants that satisfy the model's rules.
        config.add_io_bar(0, BAR0_SIZE).expect("floor BAR0 layout");
        config
            .add_mem32_bar(1, BAR1_SIZE, false)
            .expect("floor BAR1 layout");
        Self { config }
    }

    pub fn config_mut(&mut self) -> &mut PciConfig {
        &mut self.config
    }

    pub fn config(&self) -> &PciConfig {
        &self.config
    }

    /// BAR0 (ports) answers.
    pub fn io_decode(&self) -> bool {
        self.config.command() & CMD_IO != 0
    }

    /// BAR1 (memory) answers.
    pub fn mem_decode(&self) -> bool {
        self.config.command() & CMD_MEM != 0
    }
}

impl Default for FloorFunction {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for FloorFunction {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        // BAR re-programming is accepted into config space but the device stays where the
        // harness put it (the guest keeps the firmware assignment).
        self.config.write(offset, data)
    }
}

pub struct FloorIo {
    irq: Arc<dyn Interrupt>,
    stats: Arc<FloorStats>,
    function: SharedFloor,
}

impl FloorIo {
    pub fn new(irq: Arc<dyn Interrupt>, stats: Arc<FloorStats>, function: SharedFloor) -> Self {
        Self {
            irq,
            stats,
            function,
        }
    }

    fn decode(&self) -> bool {
        let on = lock(&self.function).io_decode();
        if !on {
            self.stats.undecoded.fetch_add(1, Ordering::Relaxed);
        }
        on
    }
}

impl BusDevice for FloorIo {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(if self.decode() { 0 } else { 0xff });
    }
    fn write(&mut self, offset: u64, _data: &[u8]) {
        if !self.decode() {
            return;
        }
        self.stats.io_writes.fetch_add(1, Ordering::Relaxed);
        if io_write_action(offset) == FloorAction::Interrupt {
            self.stats.doorbells.fetch_add(1, Ordering::Relaxed);
            let _ = self.irq.trigger();
        }
    }
}

pub struct FloorMmio {
    stats: Arc<FloorStats>,
    function: SharedFloor,
}

impl FloorMmio {
    pub fn new(stats: Arc<FloorStats>, function: SharedFloor) -> Self {
        Self { stats, function }
    }

    fn decode(&self) -> bool {
        let on = lock(&self.function).mem_decode();
        if !on {
            self.stats.undecoded.fetch_add(1, Ordering::Relaxed);
        }
        on
    }
}

impl BusDevice for FloorMmio {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(if self.decode() { 0 } else { 0xff });
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {
        if self.decode() {
            self.stats.mmio_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The doorbell path: every wakeup of `doorbell` (an ioeventfd) raises `irq`, unless I/O
/// decode is off (then the write would not have reached the device). The thread ends when the
/// eventfd read fails.
pub fn spawn_doorbell_thread(
    doorbell: EventFd,
    irq: Arc<dyn Interrupt>,
    stats: Arc<FloorStats>,
    function: SharedFloor,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("floor-doorbell".into())
        .spawn(move || {
            crate::seccomp::enter(crate::seccomp::ThreadKind::DeviceIo);
            while let Ok(n) = doorbell.read() {
                if !lock(&function).io_decode() {
                    stats.undecoded.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                stats.doorbells.fetch_add(n, Ordering::Relaxed);
                // `run --record-exits`: the doorbells are no exits (an ioeventfd), for the
                // fuzz seed corpus.
                if let Some(rec) = crate::devices::recording::active() {
                    rec.record_doorbells("floor-bar0", IO_DOORBELL, n);
                }
                if irq.trigger().is_err() {
                    break;
                }
            }
        })
}

/// Shared handle to the PCI function, for the PCI config-space bus.
pub type SharedFloor = Arc<Mutex<FloorFunction>>;

/// BAR addresses currently programmed.
pub fn bar_addresses(f: &SharedFloor) -> (Option<u64>, Option<u64>) {
    let f = lock(f);
    (f.config().bar_address(0), f.config().bar_address(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::pci::config::{REG_BAR0, REG_COMMAND};
    use crate::devices::test_util::CountingIrq;

    #[test]
    fn register_logic() {
        assert_eq!(io_write_action(IO_USERSPACE), FloorAction::Nothing);
        assert_eq!(io_write_action(IO_IOEVENTFD), FloorAction::Nothing);
        assert_eq!(io_write_action(IO_DOORBELL), FloorAction::Interrupt);
        assert_eq!(io_write_action(12), FloorAction::Nothing);

        let irq = Arc::new(CountingIrq::default());
        let stats = Arc::new(FloorStats::default());
        let function = decoding();
        let mut io = FloorIo::new(irq.clone(), stats.clone(), function.clone());
        io.write(0, &1u32.to_le_bytes());
        io.write(8, &1u32.to_le_bytes());
        io.write(8, &[1]);
        io.write(u64::MAX, &[]);
        assert_eq!(irq.count(), 2);
        assert_eq!(stats.io_writes.load(Ordering::Relaxed), 4);
        let mut b = [0xaau8; 4];
        io.read(2, &mut b);
        assert_eq!(b, [0; 4]);

        let mut mmio = FloorMmio::new(stats.clone(), function);
        mmio.write(0x100, &[1, 2, 3, 4]);
        mmio.read(0xfff, &mut b[..1]);
        assert_eq!(stats.mmio_writes.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn config_identity() {
        let mut f = FloorFunction::new();
        assert_eq!(f.config().read_u32(0), 0xf100_1234);
        assert_eq!(f.config().read_u32(8) >> 8, 0xff_00_00);
        assert_eq!(f.config().read_u32(0x3c) & 0xffff, 0x010a);
        f.config_mut().set_bar_address(0, 0xc000).unwrap();
        f.config_mut().set_bar_address(1, 0xc000_0000).unwrap();
        f.config_write(REG_BAR0 as u64, &0xffff_ffffu32.to_le_bytes());
        let mut b = [0u8; 4];
        f.config_read(REG_BAR0 as u64, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xffff_fff1);
        f.config_read(REG_BAR0 as u64 + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0xc000_0000);
    }

    /// The function as the harness leaves it: both BARs decoded.
    fn decoding() -> SharedFloor {
        let mut f = FloorFunction::new();
        f.config_mut().enable(CMD_IO | CMD_MEM);
        Arc::new(Mutex::new(f))
    }

    fn set_command(f: &SharedFloor, cmd: u16) {
        lock(f).config_write(REG_COMMAND as u64, &cmd.to_le_bytes());
    }

    #[test]
    fn bars_do_not_answer_with_decode_off() {
        let irq = Arc::new(CountingIrq::default());
        let stats = Arc::new(FloorStats::default());
        let function = decoding();
        let mut io = FloorIo::new(irq.clone(), stats.clone(), function.clone());
        let mut mmio = FloorMmio::new(stats.clone(), function.clone());
        let mut b = [0u8; 4];
        // I/O decode off: BAR0 reads ones and drops writes (no doorbell); BAR1 still works.
        set_command(&function, CMD_MEM);
        io.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
        io.write(IO_DOORBELL, &1u32.to_le_bytes());
        io.write(IO_USERSPACE, &1u32.to_le_bytes());
        assert_eq!(irq.count(), 0);
        assert_eq!(stats.io_writes.load(Ordering::Relaxed), 0);
        mmio.write(0, &[1]);
        mmio.read(0, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(stats.mmio_writes.load(Ordering::Relaxed), 1);
        // Memory decode off: the other way round.
        set_command(&function, CMD_IO);
        mmio.write(0, &[1]);
        mmio.read(0, &mut b);
        assert_eq!(b, [0xff; 4]);
        assert_eq!(stats.mmio_writes.load(Ordering::Relaxed), 1);
        io.write(IO_DOORBELL, &1u32.to_le_bytes());
        assert_eq!(irq.count(), 1);
        assert_eq!(stats.undecoded.load(Ordering::Relaxed), 5);
    }

    /// Far beyond what a loaded 2-core machine needs to wake a thread.
    const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    #[test]
    fn doorbell_thread_raises_irq_only_with_io_decode() {
        let irq = Arc::new(CountingIrq::default());
        let stats = Arc::new(FloorStats::default());
        let function = decoding();
        let evt = EventFd::new(0).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn_doorbell_thread(evt, irq.clone(), stats.clone(), function.clone()).unwrap();
        writer.write(1).unwrap();
        wait_for("doorbell never raised the interrupt", || irq.count() >= 1);
        assert_eq!(irq.count(), 1);
        // Decode off: the wakeup is consumed and counted, no interrupt.
        set_command(&function, CMD_MEM);
        writer.write(1).unwrap();
        wait_for("doorbell thread never ran", || {
            stats.undecoded.load(Ordering::Relaxed) >= 1
        });
        assert_eq!(irq.count(), 1);
    }
}
