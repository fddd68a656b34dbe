//! The PHY behind MDIC: a Marvell 88E1011-like copper PHY at address 1, as an 82540EM has.
//! Link is up and autonegotiation complete (at 1000 full duplex) unless the model's link is
//! down. BMCR's reset and restart-autonegotiation bits self-clear.

pub const ADDRESS: u32 = 1;

pub const BMCR: usize = 0x00;
pub const BMSR: usize = 0x01;
pub const PHYID1: usize = 0x02;
pub const PHYID2: usize = 0x03;
pub const ANAR: usize = 0x04;
pub const ANLPAR: usize = 0x05;
pub const GBCR: usize = 0x09;
pub const GBSR: usize = 0x0a;
/// Marvell PHY specific status: speed 1000, full duplex, resolved, link.
pub const M88_STATUS: usize = 0x11;

/// The 88E1011's identifier (OUI 0x005043, model 0x0C, revision 0).
pub const ID1: u16 = 0x0141;
pub const ID2: u16 = 0x0c20;

pub const BMCR_RESET: u16 = 1 << 15;
pub const BMCR_RESTART_AN: u16 = 1 << 9;
pub const BMSR_LINK: u16 = 1 << 2;
pub const BMSR_AN_COMPLETE: u16 = 1 << 5;
/// BMSR without link and autonegotiation: 100/10 capabilities, extended status, AN ability.
const BMSR_BASE: u16 = 0x7949;

const REGS: usize = 32;

#[derive(Clone)]
pub struct Phy {
    regs: [u16; REGS],
}

impl Default for Phy {
    fn default() -> Self {
        Self::new()
    }
}

impl Phy {
    pub fn new() -> Self {
        let mut regs = [0u16; REGS];
        regs[BMCR] = 0x1140; // autoneg enable, full duplex, 1000 Mb/s
        regs[PHYID1] = ID1;
        regs[PHYID2] = ID2;
        regs[ANAR] = 0x0de1;
        regs[ANLPAR] = 0x41e1;
        regs[0x06] = 0x0001; // ANER
        regs[GBCR] = 0x0e00;
        regs[GBSR] = 0x3c00;
        regs[0x0f] = 0x3000; // extended status: 1000 full/half
        regs[0x10] = 0x0360; // M88 PHY specific control
        regs[M88_STATUS] = 0xac00;
        regs[0x14] = 0x0d60; // M88 extended control
        Self { regs }
    }

    pub fn read(&self, reg: usize, link_up: bool) -> u16 {
        match reg {
            BMSR => {
                BMSR_BASE
                    | if link_up {
                        BMSR_LINK | BMSR_AN_COMPLETE
                    } else {
                        0
                    }
            }
            M88_STATUS if !link_up => self.regs[M88_STATUS] & !(1 << 10),
            _ => self.regs.get(reg).copied().unwrap_or(0),
        }
    }

    pub fn write(&mut self, reg: usize, value: u16) {
        match reg {
            BMCR if value & BMCR_RESET != 0 => *self = Self::new(),
            BMCR => self.regs[BMCR] = value & !BMCR_RESTART_AN,
            // Read-only: status and identifiers.
            BMSR | PHYID1 | PHYID2 | ANLPAR | GBSR | M88_STATUS => {}
            _ => {
                if let Some(r) = self.regs.get_mut(reg) {
                    *r = value;
                }
            }
        }
    }
}
