//! The transport-agnostic side of a virtio device: what a transport (virtio-pci here) needs
//! from a device model, and what the model gets from the transport.
//!
//! The shape is Firecracker's `VirtioDevice`: the transport handles registers, feature
//! negotiation and the status machine; at DRIVER_OK it hands the model an [`Activation`]
//! (guest memory, the queues as the driver programmed them, and an [`InterruptTrigger`]). From
//! then on the model owns its queues and signals used buffers itself, so a second transport,
//! or completions that arrive later from another thread, need no change to the model. A reset
//! takes everything back.

use super::Memory;
use std::fmt;
use std::sync::Arc;
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The driver broke a virtqueue (unreadable ring, an available index that runs ahead by more
/// than the queue size, an out-of-range head): the device needs a reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueBroken(pub String);

impl fmt::Display for QueueBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "virtqueue broken: {}", self.0)
    }
}

impl std::error::Error for QueueBroken {}

impl From<virtio_queue::Error> for QueueBroken {
    fn from(e: virtio_queue::Error) -> Self {
        Self(e.to_string())
    }
}

/// After a device added used buffers to `queue`: does the driver want an interrupt? With the
/// event index, virtio-queue decides; without it, VRING_AVAIL_F_NO_INTERRUPT in the avail
/// ring's flags, which virtio-queue leaves to the device.
pub fn driver_wants_interrupt(queue: &mut Queue, mem: &Memory) -> Result<bool, QueueBroken> {
    if queue.event_idx_enabled() {
        return Ok(queue.needs_notification(mem)?);
    }
    let flags: u16 = mem
        .read_obj(GuestAddress(queue.avail_ring()))
        .map_err(|e| QueueBroken(format!("avail flags: {e}")))?;
    Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
}

/// Why a device interrupts the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptType {
    /// Queue `index` has used buffers the driver asked to hear about.
    Queue(usize),
    /// The device configuration changed.
    Config,
}

/// How a device model interrupts the driver. The transport implements it (virtio-pci: the
/// ISR bit, then the queue's MSI-X vector or INTx), so the model never sees how.
pub trait InterruptTrigger: Send + Sync {
    fn trigger(&self, why: InterruptType);
}

/// What a device receives at DRIVER_OK and keeps until reset.
pub struct Activation {
    pub mem: Memory,
    /// The features the driver accepted.
    pub features: u64,
    /// One per queue the device declared, as the driver programmed them (event-index
    /// suppression already set from `features`). A queue the driver left disabled is here
    /// too, not ready.
    pub queues: Vec<Queue>,
    pub interrupt: Arc<dyn InterruptTrigger>,
}

pub trait VirtioDevice: Send {
    /// virtio device type (2 = block).
    fn device_type(&self) -> u16;
    /// Offered feature bits (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Largest size of each queue (its length is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Length of the device configuration space in bytes.
    fn config_len(&self) -> usize;
    /// Read device configuration (any offset and length; outside reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration (ignored by devices without writable fields).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: the device takes its memory, queues and interrupt handle.
    /// An error leaves it inactive (the transport then sets DEVICE_NEEDS_RESET).
    fn activate(&mut self, activation: Activation) -> Result<(), String>;
    /// What the device was activated with, until reset.
    fn activation(&self) -> Option<&Activation>;
    fn activation_mut(&mut self) -> Option<&mut Activation>;
    /// The driver notified queue `index`: process everything available on it, and trigger a
    /// queue interrupt if the driver wants one.
    fn process_queue(&mut self, index: usize) -> Result<(), QueueBroken>;
    /// The driver reset the device (status 0): it drops its activation.
    fn reset(&mut self);

    /// The device's queues (none before activation).
    fn queues(&self) -> &[Queue] {
        self.activation().map_or(&[], |a| &a.queues)
    }
    fn queues_mut(&mut self) -> &mut [Queue] {
        match self.activation_mut() {
            Some(a) => &mut a.queues,
            None => &mut [],
        }
    }
    /// The interrupt handle (none before activation).
    fn interrupt_trigger(&self) -> Option<&dyn InterruptTrigger> {
        self.activation().map(|a| &*a.interrupt)
    }
    fn is_activated(&self) -> bool {
        self.activation().is_some()
    }
    /// What the device counted, for the run's report (`--exits-json` notes, `--verbose`).
    fn counters_json(&self) -> Option<serde_json::Value> {
        None
    }
}
