//! 82540EM register offsets in BAR0 and their bits (8254x Software Developer's Manual, §13).

use bitflags::bitflags;

pub const CTRL: u64 = 0x0000;
pub const STATUS: u64 = 0x0008;
pub const EECD: u64 = 0x0010;
pub const EERD: u64 = 0x0014;
pub const CTRL_EXT: u64 = 0x0018;
pub const MDIC: u64 = 0x0020;
pub const ICR: u64 = 0x00c0;
pub const ITR: u64 = 0x00c4;
pub const ICS: u64 = 0x00c8;
pub const IMS: u64 = 0x00d0;
pub const IMC: u64 = 0x00d8;
pub const RCTL: u64 = 0x0100;
pub const TCTL: u64 = 0x0400;
pub const RDBAL: u64 = 0x2800;
pub const RDBAH: u64 = 0x2804;
pub const RDLEN: u64 = 0x2808;
pub const RDH: u64 = 0x2810;
pub const RDT: u64 = 0x2818;
pub const TDBAL: u64 = 0x3800;
pub const TDBAH: u64 = 0x3804;
pub const TDLEN: u64 = 0x3808;
pub const TDH: u64 = 0x3810;
pub const TDT: u64 = 0x3818;
/// Statistics: 64 dwords from here, all clear on read.
pub const STATS_BASE: u64 = 0x4000;
pub const STATS_END: u64 = 0x4100;
/// Multicast table array: 128 dwords (a 4096-bit hash filter).
pub const MTA_BASE: u64 = 0x5200;
pub const MTA_LEN: usize = 128;
/// Receive address registers: 16 pairs of RAL/RAH.
pub const RA_BASE: u64 = 0x5400;
pub const RA_PAIRS: usize = 16;
/// VLAN filter table array (stored, not acted on: VFE is not modelled).
pub const VFTA_BASE: u64 = 0x5600;
pub const VFTA_LEN: usize = 128;

/// Registers that hold what the driver writes and do nothing else here (flow control, timers
/// the model does not honour, LED control, packet buffer split, checksum control...).
pub const PLAIN: [u64; 20] = [
    CTRL_EXT, 0x0028, 0x002c, 0x0030, 0x0038, // FCAL FCAH FCT VET
    ITR, 0x0170, 0x0178, // FCTTV TXCW
    0x0410, 0x0e00, 0x1000, // TIPG LEDCTL PBA
    0x2820, 0x2828, 0x282c, // RDTR RXDCTL RADV
    0x3820, 0x3828, 0x382c, // TIDV TXDCTL TADV
    0x2c00, 0x5000, 0x5800, // RSRPD RXCSUM WUC
];

/// BAR0: 128 KiB of registers.
pub const MMIO_SIZE: u64 = 128 << 10;
/// BAR1: IOADDR at 0, IODATA at 4 (indirect access to BAR0).
pub const IO_SIZE: u64 = 0x40;
pub const IOADDR: u64 = 0;
pub const IODATA: u64 = 4;

bitflags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ctrl: u32 {
        const FD = 1 << 0;
        const LRST = 1 << 3;
        const ASDE = 1 << 5;
        const SLU = 1 << 6;
        const RST = 1 << 26;
        const VME = 1 << 30;
        const PHY_RST = 1 << 31;
        const _ = !0;
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status: u32 {
        const FD = 1 << 0;
        const LU = 1 << 1;
        const TXOFF = 1 << 4;
        /// SPEED = 10b: 1000 Mb/s.
        const SPEED_1000 = 1 << 7;
        /// ASDV = 10b: auto-detected 1000 Mb/s.
        const ASDV_1000 = 1 << 9;
    }

    /// Interrupt causes (ICR, ICS, IMS, IMC).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cause: u32 {
        const TXDW = 1 << 0;
        const TXQE = 1 << 1;
        const LSC = 1 << 2;
        const RXSEQ = 1 << 3;
        const RXDMT0 = 1 << 4;
        const RXO = 1 << 6;
        const RXT0 = 1 << 7;
        const MDAC = 1 << 9;
        const RXCFG = 1 << 10;
        const TXD_LOW = 1 << 15;
        const SRPD = 1 << 16;
        /// ICR only: some unmasked cause is set.
        const INT_ASSERTED = 1 << 31;
        const _ = 0x0001_ffff;
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rctl: u32 {
        const EN = 1 << 1;
        const SBP = 1 << 2;
        const UPE = 1 << 3;
        const MPE = 1 << 4;
        const LPE = 1 << 5;
        const BAM = 1 << 15;
        const BSEX = 1 << 25;
        const SECRC = 1 << 26;
        const _ = !0;
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tctl: u32 {
        const EN = 1 << 1;
        const PSP = 1 << 3;
        const _ = !0;
    }

    /// EERD on the 82540: START, DONE, ADDR in 15:8, DATA in 31:16.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Eerd: u32 {
        const START = 1 << 0;
        const DONE = 1 << 4;
        const _ = !0;
    }

    /// MDIC: DATA 15:0, REGADD 20:16, PHYADD 25:21, OP 27:26.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Mdic: u32 {
        const OP_WRITE = 1 << 26;
        const OP_READ = 1 << 27;
        const READY = 1 << 28;
        const IE = 1 << 29;
        const ERROR = 1 << 30;
        const _ = !0;
    }

    /// EECD: the microwire pins and the access handshake.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Eecd: u32 {
        const SK = 1 << 0;
        const CS = 1 << 1;
        const DI = 1 << 2;
        const DO = 1 << 3;
        const REQ = 1 << 6;
        const GNT = 1 << 7;
        const PRES = 1 << 8;
        const _ = !0;
    }

    /// The command byte of every TX descriptor (byte 11): legacy CMD or extended DCMD/TUCMD.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TxCmd: u8 {
        const EOP = 1 << 0;
        const IFCS = 1 << 1;
        /// Legacy: insert checksum. Extended: TSE (segmentation).
        const IC_TSE = 1 << 2;
        const RS = 1 << 3;
        const DEXT = 1 << 5;
        const VLE = 1 << 6;
        const IDE = 1 << 7;
    }

    /// RX descriptor status byte.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxStatus: u8 {
        const DD = 1 << 0;
        const EOP = 1 << 1;
        /// Ignore checksum indication: the model does not check received checksums.
        const IXSM = 1 << 2;
    }
}

/// MDIC field positions.
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_PHY_SHIFT: u32 = 21;
/// EERD field positions.
pub const EERD_ADDR_SHIFT: u32 = 8;
pub const EERD_DATA_SHIFT: u32 = 16;
/// RAH bit 31: address valid.
pub const RAH_AV: u32 = 1 << 31;
/// TX descriptor status byte (byte 12): descriptor done.
pub const TX_STATUS_DD: u8 = 1 << 0;
/// Data descriptor POPTS (byte 13): insert the IP / TCP-UDP checksum.
pub const POPTS_IXSM: u8 = 1 << 0;
pub const POPTS_TXSM: u8 = 1 << 1;
/// DTYP (bits 23:20 of the length dword) of extended descriptors.
pub const DTYP_CONTEXT: u32 = 0;
pub const DTYP_DATA: u32 = 1;
