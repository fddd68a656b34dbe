//! virtio (1.x) devices: a transport-agnostic [`device::VirtioDevice`] trait, the virtio-pci
//! modern transport, device models (blk), and the I/O-thread glue.
//!
//! Interrupts leave the transport through [`VirtioInterrupt`], which `vmm/` implements with
//! KVM irqfds (MSI routes, and a level-triggered INTx with resampling). Nothing here talks to KVM.

pub mod blk;
pub mod device;
pub mod io_thread;
pub mod transport_pci;

pub use crate::devices::pci::msix::MsiMessage;

/// Guest memory as device models see it.
pub type Memory = vm_memory::GuestMemoryMmap<()>;

/// How a virtio-pci function raises interrupts.
pub trait VirtioInterrupt: Send + Sync {
    /// Deliver MSI-X `vector` with `msg` (the transport has checked enable and masks). The
    /// implementation makes sure the message it sends is `msg` (updating its route if needed).
    fn msi(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()>;
    /// The guest programmed (or unmasked) `vector` with `msg`: a route may be updated now.
    fn msi_update(&self, _vector: u16, _msg: MsiMessage) {}
    /// Assert the INTx line (level): it stays asserted until [`Self::intx_deassert`].
    fn intx_assert(&self) -> std::io::Result<()>;
    /// The guest read the ISR, reset the device or enabled MSI-X: the line goes low.
    fn intx_deassert(&self);
}

#[cfg(test)]
pub mod test_util {
    use super::{MsiMessage, VirtioInterrupt};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Records every interrupt raised.
    #[derive(Default)]
    pub struct RecordingIrq {
        pub msis: Mutex<Vec<(u16, MsiMessage)>>,
        pub updates: Mutex<Vec<(u16, MsiMessage)>>,
        pub intx_asserts: Mutex<u32>,
        pub intx_level: AtomicBool,
    }

    impl RecordingIrq {
        pub fn msi_vectors(&self) -> Vec<u16> {
            self.msis.lock().unwrap().iter().map(|m| m.0).collect()
        }
        pub fn intx_count(&self) -> u32 {
            *self.intx_asserts.lock().unwrap()
        }
        pub fn level(&self) -> bool {
            self.intx_level.load(Ordering::SeqCst)
        }
    }

    impl VirtioInterrupt for RecordingIrq {
        fn msi(&self, vector: u16, msg: MsiMessage) -> std::io::Result<()> {
            self.msis.lock().unwrap().push((vector, msg));
            Ok(())
        }
        fn msi_update(&self, vector: u16, msg: MsiMessage) {
            self.updates.lock().unwrap().push((vector, msg));
        }
        fn intx_assert(&self) -> std::io::Result<()> {
            *self.intx_asserts.lock().unwrap() += 1;
            self.intx_level.store(true, Ordering::SeqCst);
            Ok(())
        }
        fn intx_deassert(&self) {
            self.intx_level.store(false, Ordering::SeqCst);
        }
    }
}
