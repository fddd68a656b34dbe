//! 00:00.0, an i440FX-like host bridge (identity only).

use super::config::PciConfig;
use super::PciFunction;

pub struct HostBridge {
    config: PciConfig,
}

impl HostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfig::new(0x8086, 0x1237, 0x06, 0x00, 0x00),
        }
    }
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciFunction for HostBridge {
    fn config_read(&mut self, offset: u64, data: &mut [u8]) {
        self.config.read(offset, data)
    }
    fn config_write(&mut self, offset: u64, data: &[u8]) {
        self.config.write(offset, data)
    }
}
