//! The transport-agnostic side of a virtio device: what a transport (virtio-pci here) needs
//! from a device model. The transport owns the virtqueues (their guest-programmed state) and
//! hands one to the device when the driver notifies it.

use super::Memory;
use std::fmt;
use virtio_queue::Queue;

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

pub trait VirtioDevice: Send {
    /// virtio device type (2 = block).
    fn device_type(&self) -> u16;
    /// Offered feature bits, VERSION_1 included.
    fn features(&self) -> u64;
    /// Largest size of each queue (its length is the number of queues).
    fn queue_max_sizes(&self) -> &[u16];
    /// Length of the device configuration space in bytes.
    fn config_len(&self) -> usize;
    /// Read device configuration (any offset and length; outside reads 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write device configuration (ignored by devices without writable fields).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK having accepted `features`.
    fn activate(&mut self, mem: &Memory, features: u64) -> Result<(), String>;
    /// Process everything available on queue `index`. Ok(true): the driver wants an interrupt.
    fn process_queue(
        &mut self,
        index: usize,
        queue: &mut Queue,
        mem: &Memory,
    ) -> Result<bool, QueueBroken>;
    /// The driver reset the device (status 0).
    fn reset(&mut self);
}
