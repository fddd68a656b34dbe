//! virtio-blk's device configuration (virtio 1.x §5.2.4), its limits and the features it offers.

use std::mem::{offset_of, size_of};
use virtio_bindings::virtio_blk::{
    virtio_blk_config, virtio_blk_outhdr, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::ByteValued;

pub const DEVICE_TYPE: u16 = 2;
pub const SECTOR_SIZE: u64 = 512;
pub const QUEUE_SIZE: u16 = 256;
/// Segments per request the driver may use (the queue size minus header and status).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest segment the driver should use.
pub const SIZE_MAX: u32 = 1 << 20;
/// The device configuration the driver sees: `virtio_blk_config` up to and including
/// `write_zeroes_may_unmap` and its padding (the secure-erase and zoned fields after it belong
/// to features this device does not offer).
pub const CONFIG_LEN: usize = offset_of!(virtio_blk_config, max_secure_erase_sectors);
/// The request header (`virtio_blk_outhdr`: type, reserved/ioprio, sector).
pub const HEADER_LEN: usize = size_of::<virtio_blk_outhdr>();

const _: () = assert!(CONFIG_LEN == 60 && HEADER_LEN == 16);

/// `virtio_blk_config` as the device keeps it (little-endian fields).
#[repr(transparent)]
#[derive(Debug, Default, Clone, Copy)]
pub struct BlkConfig(pub virtio_blk_config);

// SAFETY: `virtio_blk_config` is `#[repr(C)]` with integer and byte-array fields only and no
// padding (virtio-bindings asserts its size of 96 bytes, the sum of its fields), so every byte
// pattern is a valid value.
unsafe impl ByteValued for BlkConfig {}

impl BlkConfig {
    /// What this device offers for a disk of `capacity` sectors.
    pub fn new(capacity: u64) -> Self {
        Self(virtio_blk_config {
            capacity: capacity.to_le(),
            size_max: SIZE_MAX.to_le(),
            seg_max: SEG_MAX.to_le(),
            blk_size: (SECTOR_SIZE as u32).to_le(),
            ..super::discard::config(capacity)
        })
    }

    /// The bytes the driver reads.
    pub fn visible(&self) -> &[u8] {
        &self.as_slice()[..CONFIG_LEN]
    }
}
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;

/// The feature bits the device offers, for a disk that is read-only or not.
pub fn device_features(read_only: bool) -> u64 {
    let mut f = 1u64 << VIRTIO_F_VERSION_1
        | 1 << VIRTIO_RING_F_EVENT_IDX
        | 1 << VIRTIO_RING_F_INDIRECT_DESC
        | 1 << VIRTIO_BLK_F_FLUSH
        | 1 << VIRTIO_BLK_F_BLK_SIZE
        | 1 << VIRTIO_BLK_F_SEG_MAX
        | 1 << VIRTIO_BLK_F_SIZE_MAX
        | super::discard::FEATURES;
    if read_only {
        f |= 1 << VIRTIO_BLK_F_RO;
    }
    f
}
