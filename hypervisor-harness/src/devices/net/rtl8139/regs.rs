//! RTL8139C register offsets (the same in the I/O BAR and the MMIO BAR) and their bits, from
//! Realtek's RTL8139C(L) datasheet, §5 "Register Descriptions".

use bitflags::bitflags;

/// Both BARs: 256 bytes of registers.
pub const REGS_SIZE: u64 = 0x100;

pub const IDR0: u8 = 0x00;
pub const MAR0: u8 = 0x08;
pub const TSD0: u8 = 0x10;
pub const TSAD0: u8 = 0x20;
pub const RBSTART: u8 = 0x30;
pub const ERBCR: u8 = 0x34;
pub const ERSR: u8 = 0x36;
pub const CR: u8 = 0x37;
pub const CAPR: u8 = 0x38;
pub const CBR: u8 = 0x3a;
pub const IMR: u8 = 0x3c;
pub const ISR: u8 = 0x3e;
pub const TCR: u8 = 0x40;
pub const RCR: u8 = 0x44;
pub const TCTR: u8 = 0x48;
pub const MPC: u8 = 0x4c;
pub const CR9346: u8 = 0x50;
pub const CONFIG0: u8 = 0x51;
pub const CONFIG1: u8 = 0x52;
pub const TIMER_INT: u8 = 0x54;
pub const MSR: u8 = 0x58;
pub const CONFIG3: u8 = 0x59;
pub const CONFIG4: u8 = 0x5a;
pub const MULINT: u8 = 0x5c;
/// Transmit status of all descriptors (a summary of the four TSDs).
pub const TSAD_SUMMARY: u8 = 0x60;
pub const BMCR: u8 = 0x62;
pub const BMSR: u8 = 0x64;
pub const ANAR: u8 = 0x66;
pub const ANLPAR: u8 = 0x68;
pub const ANER: u8 = 0x6a;
pub const CSCR: u8 = 0x74;
pub const PARA78: u8 = 0x78;
pub const PARA7C: u8 = 0x7c;
pub const CONFIG5: u8 = 0xd8;
/// C+ mode registers (RTL8139C+ only): not modelled, writes ignored and counted.
pub const CPLUS_RMS: u8 = 0xda;
pub const CPCR: u8 = 0xe0;
pub const CPLUS_RDSAR: u8 = 0xe4;
pub const CPLUS_ETTHR: u8 = 0xec;

pub const TX_SLOTS: usize = 4;

/// The register an offset falls in: its first offset and width in bytes. `None`: nothing
/// there (reads 0, writes ignored).
pub fn span(off: u8) -> Option<(u8, u8)> {
    let dword = off & !3;
    let word = off & !1;
    Some(match off {
        0x00..=0x05
        | 0x08..=0x0f
        | ERSR
        | CR
        | CR9346
        | CONFIG0
        | CONFIG1
        | MSR
        | CONFIG3
        | CONFIG4
        | CONFIG5 => (off, 1),
        0x10..=0x33 | 0x40..=0x4f | 0x54..=0x57 | 0x78..=0x7f => (dword, 4),
        0x34..=0x35 | 0x38..=0x3f | 0x5c..=0x5d | 0x60..=0x6b | 0x74..=0x75 => (word, 2),
        0xda..=0xdb | 0xe0..=0xe1 => (word, 2),
        0xe4..=0xef => (dword, 4),
        _ => return None,
    })
}

/// Whether a register belongs to C+ mode.
pub fn is_cplus(start: u8) -> bool {
    matches!(start, CPLUS_RMS | CPCR | CPLUS_RDSAR | 0xe8 | CPLUS_ETTHR)
}

bitflags! {
    /// CR (command register).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cmd: u8 {
        /// RX buffer empty (read-only): CBR has caught up with CAPR.
        const BUFE = 1 << 0;
        const TE = 1 << 2;
        const RE = 1 << 3;
        const RST = 1 << 4;
    }

    /// ISR and IMR.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Intr: u16 {
        const ROK = 1 << 0;
        const RER = 1 << 1;
        const TOK = 1 << 2;
        const TER = 1 << 3;
        /// RX buffer overflow: a frame was lost for want of ring space.
        const RXOVW = 1 << 4;
        /// Packet underrun / link change.
        const LINK_CHG = 1 << 5;
        const FOVW = 1 << 6;
        const LEN_CHG = 1 << 13;
        const TIMEOUT = 1 << 14;
        /// System error: a DMA access outside guest RAM.
        const SERR = 1 << 15;
    }

    /// RCR (receive configuration).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rcr: u32 {
        /// Accept all packets with a physical destination (promiscuous).
        const AAP = 1 << 0;
        /// Accept physical match (our IDR).
        const APM = 1 << 1;
        /// Accept multicast (through the MAR hash).
        const AM = 1 << 2;
        /// Accept broadcast.
        const AB = 1 << 3;
        const AR = 1 << 4;
        const AER = 1 << 5;
        /// 1: a frame that runs past the ring's end goes on into the slack after it; 0: it is
        /// split and continues at the ring's start.
        const WRAP = 1 << 7;
        const _ = !0;
    }

    /// The status bits of a TSD register (the low 13 bits are the size).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tsd: u32 {
        /// The host owns the slot: the device has DMAed the frame (or never had one).
        const OWN = 1 << 13;
        const TUN = 1 << 14;
        const TOK = 1 << 15;
        const OWC = 1 << 29;
        const TABT = 1 << 30;
        const CRS = 1 << 31;
        const _ = !0;
    }

    /// The 4-byte RX packet header's status half.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxStatus: u16 {
        const ROK = 1 << 0;
        /// Broadcast address received.
        const BAR = 1 << 13;
        /// Physical address matched.
        const PAM = 1 << 14;
        /// Multicast address received.
        const MAR = 1 << 15;
    }
}

/// TSD: the frame's size in bytes.
pub const TSD_SIZE_MASK: u32 = 0x1fff;
/// TSD bits the driver's write keeps: size, OWN, the early-TX threshold (ERTXTH, 21:16).
pub const TSD_WRITABLE: u32 = TSD_SIZE_MASK | Tsd::OWN.bits() | 0x003f_0000;
/// The largest frame a TX slot takes (the datasheet's 1792 bytes).
pub const TX_MAX_SIZE: u32 = 1792;

/// RCR.RBLEN (12:11): 8 KiB << RBLEN of ring, plus 16 bytes of slack.
pub const RCR_RBLEN_SHIFT: u32 = 11;
/// RCR bits that are read-only (reserved): 31:28, 23:18 and 6, as QEMU masks them.
pub const RCR_READ_ONLY: u32 = 0xf0fc_0040;

/// TCR's hardware version bits (30:26, 23:22) as the RTL8139C reports them (QEMU's chip table
/// and Linux's `8139too` call 1,1,1,0,1 / 0,0 "RTL-8139C").
pub const TCR_HWVERID: u32 = 1 << 30 | 1 << 29 | 1 << 28 | 1 << 26;
pub const TCR_HWVERID_MASK: u32 = 0x7c00_0000 | 0x00c0_0000;
/// TCR.CLRABT: retransmit an aborted slot (nothing here aborts for a wire reason: ignored).
pub const TCR_CLRABT: u32 = 1 << 0;

/// 9346CR: EEM (7:6) operating mode and the EEPROM pins.
pub const EEM_SHIFT: u8 = 6;
pub const EEM_NORMAL: u8 = 0;
pub const EEM_AUTOLOAD: u8 = 1;
pub const EEM_PROGRAM: u8 = 2;
pub const EEM_CONFIG_WRITE: u8 = 3;
pub const EE_CS: u8 = 1 << 3;
pub const EE_SK: u8 = 1 << 2;
pub const EE_DI: u8 = 1 << 1;
pub const EE_DO: u8 = 1 << 0;

/// MSR: LINKB (link fail, 0 while the link is up); the rest as QEMU reports it (TX/RX flow
/// control enabled, 100 Mb/s).
pub const MSR_LINKB: u8 = 1 << 2;
pub const MSR_BASE: u8 = 0xc0;

/// BMCR: reset (self-clearing), autonegotiation enable, restart autonegotiation.
pub const BMCR_RESET: u16 = 1 << 15;
pub const BMCR_ANE: u16 = 1 << 12;
pub const BMCR_RESTART_AN: u16 = 1 << 9;
/// BMSR: 100BASE-TX full/half, 10BASE-T full/half, autonegotiation complete and able,
/// extended capabilities; the link bit (2) while up.
pub const BMSR_BASE: u16 = 0x7809 | 0x0020;
pub const BMSR_LINK: u16 = 1 << 2;
/// ANAR/ANLPAR: 100/10 full and half duplex, flow control, 802.3 selector.
pub const ANAR_DEFAULT: u16 = 0x05e1;
/// ANER: link partner autonegotiation able.
pub const ANER_DEFAULT: u16 = 0x0001;
/// CSCR: LD (power saving off), HEART_BIT, F_LINK_100.
pub const CSCR_DEFAULT: u16 = 1 << 9 | 1 << 8 | 1 << 6;

/// CONFIG1 at reset: I/O and memory mapping (bits 2 and 3, read-only).
pub const CONFIG1_DEFAULT: u8 = 0x0c;
pub const CONFIG1_READ_ONLY: u8 = 0x0c;
/// CONFIG3 at reset: fast back-to-back capable (bit 0, read-only).
pub const CONFIG3_DEFAULT: u8 = 0x01;
pub const CONFIG3_READ_ONLY: u8 = 0x01;
