//! The seam between the monitor (`--monitor`, `--qmp`) and the virtio-balloon device: the
//! monitor asks for a guest memory size and reads back what the guest gave up, and knows
//! nothing else of the device. The balloon's wiring hands an `Arc<dyn BalloonControl>` to the
//! monitor when `--balloon` is given.

/// What the balloon holds, in 4 KiB pages (the balloon's unit), and the RAM it is taken from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BalloonInfo {
    /// Guest RAM, in bytes.
    pub ram_bytes: u64,
    /// Pages the device asks the guest to hold (`num_pages`).
    pub target_pages: u32,
    /// Pages the guest says it holds (`actual`).
    pub actual_pages: u32,
}

impl BalloonInfo {
    /// The guest's memory as QEMU's `info balloon` and `query-balloon` report it: RAM less the
    /// pages in the balloon.
    pub fn actual_bytes(&self) -> u64 {
        self.ram_bytes
            .saturating_sub(u64::from(self.actual_pages) * 4096)
    }
}

pub trait BalloonControl: Send + Sync {
    /// Ask for the guest to have `bytes` of memory, as QEMU's `balloon` command does: the
    /// target becomes RAM less `bytes`, in whole pages, and the device signals a config change.
    /// More than the RAM, or less than nothing left, is an error the monitor reports.
    fn set_guest_memory(&self, bytes: u64) -> Result<(), String>;
    fn info(&self) -> BalloonInfo;
}
