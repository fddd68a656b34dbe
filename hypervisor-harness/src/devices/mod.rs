//! Device models. Nothing here talks to KVM: models see the bus through [`bus::BusDevice`] and
//! raise interrupts through [`Interrupt`], which `vmm/` implements with an irqfd.

pub mod bus;
pub mod debug_exit;
pub mod floor;
pub mod ide;
pub mod net;
pub mod pci;
pub mod recording;
pub mod serial;
pub mod virtio;

use std::sync::{Mutex, MutexGuard};

/// An interrupt line a device can raise (edge: one call, one interrupt).
pub trait Interrupt: Send + Sync {
    fn trigger(&self) -> std::io::Result<()>;
}

/// Lock a mutex, ignoring poisoning (a poisoned device is still better than a harness panic).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Little-endian value of an access of 1..=8 bytes (longer slices are truncated).
pub fn le_value(data: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = data.len().min(8);
    buf[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(buf)
}

#[cfg(test)]
pub mod test_util {
    use super::Interrupt;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An interrupt that counts how often it was raised.
    #[derive(Default)]
    pub struct CountingIrq(pub AtomicU64);

    impl CountingIrq {
        pub fn count(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Interrupt for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
}
