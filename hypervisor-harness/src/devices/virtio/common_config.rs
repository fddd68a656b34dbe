//! The common configuration structure of the virtio-pci transport (virtio 1.x §4.1.4.3): its
//! layout as a `#[repr(C)]` struct, and the logic of its registers: feature windows, MSI-X
//! vector numbers, and the queue registers with the rules for when the driver may change them.
//!
//! The device status register lives here too, but its state machine is the transport's: a
//! status write is handed back ([`CommonWrite::Status`]) because it activates or resets the
//! device, which this structure knows nothing about.

use crate::devices::le_value;
use std::mem::{offset_of, size_of};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::ByteValued;

/// "No vector" for config_msix_vector / queue_msix_vector.
pub const NO_VECTOR: u16 = 0xffff;

/// `struct virtio_pci_common_cfg`, little-endian on the wire. The register image a read is
/// served from is one of these.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VirtioPciCommonCfg {
    pub device_feature_select: u32,
    pub device_feature: u32,
    pub driver_feature_select: u32,
    pub driver_feature: u32,
    pub config_msix_vector: u16,
    pub num_queues: u16,
    pub device_status: u8,
    pub config_generation: u8,
    pub queue_select: u16,
    pub queue_size: u16,
    pub queue_msix_vector: u16,
    pub queue_enable: u16,
    pub queue_notify_off: u16,
    pub queue_desc: u64,
    pub queue_driver: u64,
    pub queue_device: u64,
}

// The spec's offsets, so a reordered field cannot go unnoticed.
const _: () = {
    assert!(offset_of!(VirtioPciCommonCfg, config_msix_vector) == 0x10);
    assert!(offset_of!(VirtioPciCommonCfg, device_status) == 0x14);
    assert!(offset_of!(VirtioPciCommonCfg, queue_select) == 0x16);
    assert!(offset_of!(VirtioPciCommonCfg, queue_notify_off) == 0x1e);
    assert!(offset_of!(VirtioPciCommonCfg, queue_desc) == 0x20);
    assert!(offset_of!(VirtioPciCommonCfg, queue_device) == 0x30);
    assert!(size_of::<VirtioPciCommonCfg>() == 0x38);
};

// SAFETY: a `#[repr(C)]` struct of integers only, without padding (its size is the sum of its
// fields, checked above), so every byte pattern is a valid value.
unsafe impl ByteValued for VirtioPciCommonCfg {}

/// Register offsets in the common configuration, from [`VirtioPciCommonCfg`].
pub mod offsets {
    use super::VirtioPciCommonCfg as C;
    use std::mem::offset_of;

    pub const DEVICE_FEATURE_SELECT: u64 = offset_of!(C, device_feature_select) as u64;
    pub const DEVICE_FEATURE: u64 = offset_of!(C, device_feature) as u64;
    pub const DRIVER_FEATURE_SELECT: u64 = offset_of!(C, driver_feature_select) as u64;
    pub const DRIVER_FEATURE: u64 = offset_of!(C, driver_feature) as u64;
    pub const CONFIG_MSIX_VECTOR: u64 = offset_of!(C, config_msix_vector) as u64;
    pub const NUM_QUEUES: u64 = offset_of!(C, num_queues) as u64;
    pub const DEVICE_STATUS: u64 = offset_of!(C, device_status) as u64;
    pub const CONFIG_GENERATION: u64 = offset_of!(C, config_generation) as u64;
    pub const QUEUE_SELECT: u64 = offset_of!(C, queue_select) as u64;
    pub const QUEUE_SIZE: u64 = offset_of!(C, queue_size) as u64;
    pub const QUEUE_MSIX_VECTOR: u64 = offset_of!(C, queue_msix_vector) as u64;
    pub const QUEUE_ENABLE: u64 = offset_of!(C, queue_enable) as u64;
    pub const QUEUE_NOTIFY_OFF: u64 = offset_of!(C, queue_notify_off) as u64;
    pub const QUEUE_DESC: u64 = offset_of!(C, queue_desc) as u64;
    pub const QUEUE_DRIVER: u64 = offset_of!(C, queue_driver) as u64;
    pub const QUEUE_DEVICE: u64 = offset_of!(C, queue_device) as u64;
}

/// Length of the common configuration window.
pub const COMMON_LEN: u64 = size_of::<VirtioPciCommonCfg>() as u64;

const STATUS_DRIVER_OK: u8 = VIRTIO_CONFIG_S_DRIVER_OK as u8;
const STATUS_FEATURES_OK: u8 = VIRTIO_CONFIG_S_FEATURES_OK as u8;

/// What a write asks of the transport afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonWrite {
    /// Nothing (the register took the value, or ignored it).
    Done,
    /// The driver wrote the device status: the transport's state machine decides.
    Status(u8),
    /// The configuration vector changed (to a valid vector or [`NO_VECTOR`]).
    ConfigVector(u16),
}

/// The common configuration registers of one function.
pub struct CommonConfig {
    /// Offered features, VERSION_1 included.
    device_features: u64,
    driver_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    config_vector: u16,
    queue_select: u16,
    /// The queue registers as the driver programmed them.
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    /// MSI-X table entries; 0 for a function without MSI-X (every vector reads NO_VECTOR).
    msix_vectors: u16,
    /// The device status register (its rules are the transport's).
    pub status: u8,
    pub config_generation: u8,
}

impl CommonConfig {
    /// Registers for a device offering `device_features` with queues of `queue_max_sizes`,
    /// and a function with `msix_vectors` MSI-X table entries (0: no MSI-X).
    pub fn new(
        device_features: u64,
        queue_max_sizes: &[u16],
        msix_vectors: u16,
    ) -> Result<Self, String> {
        let mut queues = Vec::with_capacity(queue_max_sizes.len());
        for &max in queue_max_sizes {
            queues.push(Queue::new(max).map_err(|e| format!("queue size {max}: {e}"))?);
        }
        Ok(Self {
            device_features: device_features | 1 << VIRTIO_F_VERSION_1,
            driver_features: 0,
            device_feature_select: 0,
            driver_feature_select: 0,
            config_vector: NO_VECTOR,
            queue_select: 0,
            queue_vectors: vec![NO_VECTOR; queues.len()],
            queues,
            msix_vectors,
            status: 0,
            config_generation: 0,
        })
    }

    pub fn device_features(&self) -> u64 {
        self.device_features
    }

    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }

    /// MSI-X vector of each queue (index = queue).
    pub fn queue_vectors(&self) -> &[u16] {
        &self.queue_vectors
    }

    pub fn config_vector(&self) -> u16 {
        self.config_vector
    }

    /// The driver wrote only features the device offers, VERSION_1 among them.
    pub fn features_acceptable(&self) -> bool {
        self.driver_features & !self.device_features == 0
            && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0
    }

    /// Device reset: the registers as at power-on (the offered features stay).
    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector = NO_VECTOR;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.status = 0;
    }

    fn selected_queue(&self) -> Option<usize> {
        let i = self.queue_select as usize;
        (i < self.queues.len()).then_some(i)
    }

    /// The register image a read is served from (little-endian, as on the wire).
    pub fn image(&self) -> VirtioPciCommonCfg {
        let window = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        let mut img = VirtioPciCommonCfg {
            device_feature_select: self.device_feature_select.to_le(),
            device_feature: window(self.device_features, self.device_feature_select).to_le(),
            driver_feature_select: self.driver_feature_select.to_le(),
            driver_feature: window(self.driver_features, self.driver_feature_select).to_le(),
            config_msix_vector: self.config_vector.to_le(),
            num_queues: (self.queues.len() as u16).to_le(),
            device_status: self.status,
            config_generation: self.config_generation,
            queue_select: self.queue_select.to_le(),
            // An absent queue reads size 0 and NO_VECTOR.
            queue_msix_vector: NO_VECTOR.to_le(),
            ..Default::default()
        };
        if let Some(i) = self.selected_queue() {
            let q = &self.queues[i];
            img.queue_size = q.size().to_le();
            img.queue_msix_vector = self.queue_vectors[i].to_le();
            img.queue_enable = (q.ready() as u16).to_le();
            img.queue_notify_off = (i as u16).to_le();
            img.queue_desc = q.desc_table().to_le();
            img.queue_driver = q.avail_ring().to_le();
            img.queue_device = q.used_ring().to_le();
        }
        img
    }

    /// A read of any offset and width; outside the structure (or straddling its end) reads 0.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        let img = self.image();
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= COMMON_LEN => {
                data.copy_from_slice(&img.as_slice()[offset as usize..end as usize])
            }
            _ => data.fill(0),
        }
    }

    /// The selected queue, if the driver may still change its registers: not after
    /// DRIVER_OK, and not once the queue is enabled.
    fn writable_queue(&mut self) -> Option<&mut Queue> {
        let i = self.selected_queue()?;
        if self.status & STATUS_DRIVER_OK != 0 || self.queues[i].ready() {
            return None;
        }
        Some(&mut self.queues[i])
    }

    fn valid_vector(&self, v: u16) -> u16 {
        if v < self.msix_vectors {
            v
        } else {
            NO_VECTOR
        }
    }

    /// A write of any offset and width. Read-only registers, odd widths and values the rules
    /// refuse are ignored (the register keeps its value).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> CommonWrite {
        use offsets::*;
        let v = le_value(data);
        let (v32, v16) = (v as u32, v as u16);
        match (offset, data.len()) {
            (DEVICE_FEATURE_SELECT, 4) => self.device_feature_select = v32,
            (DRIVER_FEATURE_SELECT, 4) => self.driver_feature_select = v32,
            (DRIVER_FEATURE, 4) => {
                if self.status & STATUS_FEATURES_OK == 0 {
                    match self.driver_feature_select {
                        0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xffff_ffff) | (v & 0xffff_ffff) << 32
                        }
                        _ => {}
                    }
                }
            }
            (CONFIG_MSIX_VECTOR, 2) => {
                self.config_vector = self.valid_vector(v16);
                return CommonWrite::ConfigVector(self.config_vector);
            }
            (DEVICE_STATUS, 1) => return CommonWrite::Status(v as u8),
            (QUEUE_SELECT, 2) => self.queue_select = v16,
            (QUEUE_SIZE, 2) => {
                if let Some(q) = self.writable_queue() {
                    // Power of two, 1..=max; anything else is refused (the old size stays).
                    let _ = q.try_set_size(v16);
                }
            }
            (QUEUE_MSIX_VECTOR, 2) => {
                let vector = self.valid_vector(v16);
                if let Some(i) = self.selected_queue() {
                    if self.writable_queue().is_some() {
                        self.queue_vectors[i] = vector;
                    }
                }
            }
            (QUEUE_ENABLE, 2) => {
                // Writing 0 is not allowed (and means nothing); 1 enables.
                if v16 == 1 {
                    if let Some(q) = self.writable_queue() {
                        q.set_ready(true);
                    }
                }
            }
            (off @ QUEUE_DESC..COMMON_LEN, 4 | 8) if off % data.len() as u64 == 0 => {
                let Some(q) = self.writable_queue() else {
                    return CommonWrite::Done;
                };
                // Three 64-bit registers, each writable whole or as two 32-bit halves.
                let reg = (off - QUEUE_DESC) / 8;
                let high = off % 8 == 4;
                let (lo, hi) = if data.len() == 8 {
                    (Some(v as u32), Some((v >> 32) as u32))
                } else if high {
                    (None, Some(v32))
                } else {
                    (Some(v32), None)
                };
                // virtio-queue refuses misaligned addresses (and keeps the old value).
                match reg {
                    0 => q.set_desc_table_address(lo, hi),
                    1 => q.set_avail_ring_address(lo, hi),
                    _ => q.set_used_ring_address(lo, hi),
                }
            }
            _ => {}
        }
        CommonWrite::Done
    }
}

#[cfg(test)]
mod tests {
    use super::offsets::*;
    use super::*;

    fn regs() -> CommonConfig {
        CommonConfig::new(1 << 9, &[256, 16], 3).unwrap()
    }

    fn r(c: &CommonConfig, off: u64, len: usize) -> u64 {
        let mut b = vec![0u8; len];
        c.read(off, &mut b);
        le_value(&b)
    }

    fn w(c: &mut CommonConfig, off: u64, len: usize, v: u64) -> CommonWrite {
        c.write(off, &v.to_le_bytes()[..len])
    }

    #[test]
    fn offsets_are_the_specs() {
        assert_eq!(
            [
                DEVICE_FEATURE,
                DRIVER_FEATURE_SELECT,
                DRIVER_FEATURE,
                NUM_QUEUES
            ],
            [0x04, 0x08, 0x0c, 0x12]
        );
        assert_eq!(
            [
                CONFIG_GENERATION,
                QUEUE_SIZE,
                QUEUE_MSIX_VECTOR,
                QUEUE_ENABLE
            ],
            [0x15, 0x18, 0x1a, 0x1c]
        );
        assert_eq!(QUEUE_DRIVER, 0x28);
        assert_eq!(COMMON_LEN, 0x38);
    }

    #[test]
    fn feature_windows_and_version_1() {
        let mut c = regs();
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 1 << 9);
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 1);
        w(&mut c, DEVICE_FEATURE_SELECT, 4, 2);
        assert_eq!(r(&c, DEVICE_FEATURE, 4), 0);
        w(&mut c, DRIVER_FEATURE, 4, 1 << 9);
        assert!(!c.features_acceptable(), "VERSION_1 missing");
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 1);
        w(&mut c, DRIVER_FEATURE, 4, 1);
        assert_eq!(r(&c, DRIVER_FEATURE, 4), 1);
        assert!(c.features_acceptable());
        assert_eq!(c.driver_features(), 1 << 32 | 1 << 9);
        // A feature not offered.
        w(&mut c, DRIVER_FEATURE_SELECT, 4, 0);
        w(&mut c, DRIVER_FEATURE, 4, 1 << 9 | 1);
        assert!(!c.features_acceptable());
        // Frozen from FEATURES_OK on.
        c.status = STATUS_FEATURES_OK;
        w(&mut c, DRIVER_FEATURE, 4, 0);
        assert_eq!(c.driver_features(), 1 << 32 | 1 << 9 | 1);
    }

    #[test]
    fn status_and_vectors_go_back_to_the_transport() {
        let mut c = regs();
        assert_eq!(w(&mut c, DEVICE_STATUS, 1, 7), CommonWrite::Status(7));
        assert_eq!(c.status, 0, "the transport sets the status, not the write");
        assert_eq!(w(&mut c, DEVICE_STATUS, 2, 7), CommonWrite::Done);
        assert_eq!(
            w(&mut c, CONFIG_MSIX_VECTOR, 2, 2),
            CommonWrite::ConfigVector(2)
        );
        assert_eq!(
            w(&mut c, CONFIG_MSIX_VECTOR, 2, 3),
            CommonWrite::ConfigVector(NO_VECTOR)
        );
        // Without MSI-X every vector is NO_VECTOR.
        let mut none = CommonConfig::new(0, &[16], 0).unwrap();
        w(&mut none, QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!(r(&none, QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        assert_eq!(
            w(&mut none, CONFIG_MSIX_VECTOR, 2, 0),
            CommonWrite::ConfigVector(NO_VECTOR)
        );
    }

    #[test]
    fn queue_registers_follow_the_rules() {
        let mut c = regs();
        assert_eq!(r(&c, NUM_QUEUES, 2), 2);
        w(&mut c, QUEUE_SELECT, 2, 1);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 16);
        assert_eq!(r(&c, QUEUE_NOTIFY_OFF, 2), 1);
        for bad in [3, 0, 32] {
            w(&mut c, QUEUE_SIZE, 2, bad);
            assert_eq!(r(&c, QUEUE_SIZE, 2), 16, "size {bad}");
        }
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 2);
        assert_eq!(c.queue_vectors(), [NO_VECTOR, 2]);
        // 64-bit registers whole or in halves; misaligned refused; wrong widths ignored.
        w(&mut c, QUEUE_DESC, 4, 0x1000);
        w(&mut c, QUEUE_DESC + 4, 4, 2);
        assert_eq!(r(&c, QUEUE_DESC, 8), 0x2_0000_1000);
        w(&mut c, QUEUE_DRIVER, 8, 0x3000);
        w(&mut c, QUEUE_DEVICE, 8, 0x3001);
        w(&mut c, QUEUE_DEVICE + 2, 2, 0x4000);
        assert_eq!(r(&c, QUEUE_DRIVER, 8), 0x3000);
        assert_eq!(r(&c, QUEUE_DEVICE, 8), 0);
        w(&mut c, QUEUE_ENABLE, 2, 0);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 0);
        w(&mut c, QUEUE_ENABLE, 2, 1);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 1);
        // Enabled: frozen.
        w(&mut c, QUEUE_SIZE, 2, 8);
        w(&mut c, QUEUE_MSIX_VECTOR, 2, 0);
        assert_eq!((r(&c, QUEUE_SIZE, 2), c.queue_vectors()[1]), (16, 2));
        // Queue 0 is frozen by DRIVER_OK although not enabled.
        c.status = STATUS_DRIVER_OK;
        w(&mut c, QUEUE_SELECT, 2, 0);
        w(&mut c, QUEUE_SIZE, 2, 8);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 256);
        // An absent queue reads zeros and NO_VECTOR.
        w(&mut c, QUEUE_SELECT, 2, 9);
        assert_eq!(r(&c, QUEUE_SIZE, 2), 0);
        assert_eq!(r(&c, QUEUE_MSIX_VECTOR, 2), NO_VECTOR as u64);
        // Reset: all back, the offer stays.
        c.reset();
        w(&mut c, QUEUE_SELECT, 2, 1);
        assert_eq!(r(&c, QUEUE_ENABLE, 2), 0);
        assert_eq!(r(&c, QUEUE_DESC, 8), 0);
        assert_eq!(c.queue_vectors(), [NO_VECTOR; 2]);
        assert_eq!(c.device_features(), 1 << 32 | 1 << 9);
    }

    #[test]
    fn odd_accesses_read_zero_and_never_panic() {
        let mut c = regs();
        for (off, len) in [(0x37, 4), (COMMON_LEN, 1), (u64::MAX, 4), (u64::MAX - 1, 2)] {
            let mut b = vec![0xaa; len];
            c.read(off, &mut b);
            assert!(b.iter().all(|&x| x == 0), "{off:#x}+{len}");
            assert_eq!(c.write(off, &b), CommonWrite::Done);
        }
        assert_eq!(c.write(QUEUE_DESC + 2, &[1, 2, 3, 4]), CommonWrite::Done);
        assert_eq!(c.write(0, &[]), CommonWrite::Done);
    }
}
