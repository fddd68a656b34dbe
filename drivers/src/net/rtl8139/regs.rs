//! The RTL8139C's registers (Realtek RTL8139C(L) datasheet, section 6) as offsets into the
//! I/O BAR and their bits, and the 4-byte header the chip writes before each received frame.

use bitflags::bitflags;

/// I/O register offsets from BAR0.
pub mod reg {
    /// ID registers: the station address, bytes 0..6.
    pub const IDR0: u16 = 0x00;
    /// Multicast filter, 8 bytes.
    pub const MAR0: u16 = 0x08;
    /// Transmit status of descriptors 0..3 (32-bit each, 4 apart).
    pub const TSD0: u16 = 0x10;
    /// Transmit start address of descriptors 0..3 (32-bit each, 4 apart).
    pub const TSAD0: u16 = 0x20;
    /// Receive buffer start address (32-bit, physical).
    pub const RBSTART: u16 = 0x30;
    /// Command register (8-bit).
    pub const CR: u16 = 0x37;
    /// Current address of packet read (16-bit): where the driver has read up to, minus 16.
    pub const CAPR: u16 = 0x38;
    /// Current buffer address (16-bit): where the chip writes next.
    pub const CBR: u16 = 0x3A;
    /// Interrupt mask (16-bit).
    pub const IMR: u16 = 0x3C;
    /// Interrupt status (16-bit, write 1 to clear).
    pub const ISR: u16 = 0x3E;
    /// Transmit configuration (32-bit).
    pub const TCR: u16 = 0x40;
    /// Receive configuration (32-bit).
    pub const RCR: u16 = 0x44;
    /// Missed packet counter (24 bits valid; a write clears it).
    pub const MPC: u16 = 0x4C;
    /// 93C46 command register (8-bit).
    pub const CR9346: u16 = 0x50;
    pub const CONFIG1: u16 = 0x52;
    /// Media status (8-bit).
    pub const MSR: u16 = 0x58;
    /// Transmit status of all descriptors (16-bit, read-only): TOK, TUN, TABT and OWN of
    /// each slot, so one read reclaims all four.
    pub const TX_SUMMARY: u16 = 0x60;
    /// Basic mode control and status of the internal PHY (16-bit each).
    pub const BMCR: u16 = 0x62;
    pub const BMSR: u16 = 0x64;
    /// Bytes of the register window.
    pub const IO_LEN: u32 = 0x100;
}

/// The TX descriptor registers of slot `i` (0..4).
pub const fn tsd(i: usize) -> u16 {
    reg::TSD0 + 4 * i as u16
}

pub const fn tsad(i: usize) -> u16 {
    reg::TSAD0 + 4 * i as u16
}

/// TX_SUMMARY's bits for slot `i`: `own`, `tabt`, `tun`, `tok` at 0, 4, 8, 12 plus `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxSummary(pub u16);

impl TxSummary {
    pub fn tok(self, i: usize) -> bool {
        self.0 >> (12 + i) & 1 != 0
    }

    pub fn tun(self, i: usize) -> bool {
        self.0 >> (8 + i) & 1 != 0
    }

    pub fn tabt(self, i: usize) -> bool {
        self.0 >> (4 + i) & 1 != 0
    }

    pub fn own(self, i: usize) -> bool {
        self.0 >> i & 1 != 0
    }
}

bitflags! {
    /// Command register (CR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr: u8 {
        /// The RX buffer holds no unread packet (read-only).
        const BUFE = 1 << 0;
        const TE = 1 << 2;
        const RE = 1 << 3;
        /// Software reset; reads 1 until the reset is done.
        const RST = 1 << 4;
    }

    /// Interrupt status and mask (ISR, IMR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Intr: u16 {
        /// Receive OK.
        const ROK = 1 << 0;
        /// Receive error.
        const RER = 1 << 1;
        /// Transmit OK.
        const TOK = 1 << 2;
        /// Transmit error.
        const TER = 1 << 3;
        /// RX buffer overflow: a frame did not fit between CBR and CAPR.
        const RXOVW = 1 << 4;
        /// Packet underrun / link change.
        const PUN_LINKCHG = 1 << 5;
        /// RX FIFO overflow.
        const FIFOOVW = 1 << 6;
        const LENCHG = 1 << 13;
        const TIMEOUT = 1 << 14;
        /// System error on the PCI bus.
        const SERR = 1 << 15;
    }

    /// Transmit status of one descriptor (TSD0..3).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tsd: u32 {
        /// The chip has moved the frame to its FIFO; the buffer is free again. Writing 0
        /// here (with the size) hands the descriptor to the chip.
        const OWN = 1 << 13;
        /// Transmit FIFO underrun.
        const TUN = 1 << 14;
        /// Transmit OK.
        const TOK = 1 << 15;
        /// Out of window collision.
        const OWC = 1 << 29;
        /// Transmit aborted (excessive collisions).
        const TABT = 1 << 30;
        /// Carrier sense lost.
        const CRS = 1 << 31;
    }

    /// Receive configuration (RCR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rcr: u32 {
        /// Accept all packets with a physical destination address (promiscuous).
        const AAP = 1 << 0;
        /// Accept packets for our own address.
        const APM = 1 << 1;
        /// Accept multicast packets (through MAR).
        const AM = 1 << 2;
        /// Accept broadcast packets.
        const AB = 1 << 3;
        /// Accept runts and error packets.
        const AR = 1 << 4;
        const AER = 1 << 5;
        /// 1: a packet that reaches the end of the buffer goes on past it (into the slack);
        /// 0: it wraps to the start. Not honoured with the 64 KiB buffer, which always wraps.
        const WRAP = 1 << 7;
    }

    /// Transmit configuration (TCR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tcr: u32 {
        /// Retransmit the aborted packet (write only).
        const CLRABT = 1 << 0;
        /// Do not append a CRC.
        const CRC = 1 << 16;
    }

    /// Media status (MSR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Msr: u8 {
        const RXPF = 1 << 0;
        const TXPF = 1 << 1;
        /// Inverse of the link status: 1 = link down.
        const LINKB = 1 << 2;
        /// 1 = 10 Mb/s, 0 = 100 Mb/s.
        const SPEED_10 = 1 << 3;
        const AUX = 1 << 4;
        const RXFCE = 1 << 6;
        const TXFCE = 1 << 7;
    }

    /// Configuration register 1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Config1: u8 {
        const PMEN = 1 << 0;
        const VPD = 1 << 1;
        const IOMAP = 1 << 2;
        const MEMMAP = 1 << 3;
        const LWACT = 1 << 4;
        const DVRLOAD = 1 << 5;
        const LEDS0 = 1 << 6;
        const LEDS1 = 1 << 7;
    }

    /// 93C46 command register (9346CR): the operating mode and the EEPROM's pins.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cr9346: u8 {
        /// Data out of the EEPROM (read-only).
        const EEDO = 1 << 0;
        /// Data into the EEPROM.
        const EEDI = 1 << 1;
        /// Serial clock.
        const EESK = 1 << 2;
        /// Chip select.
        const EECS = 1 << 3;
        const EEM0 = 1 << 6;
        const EEM1 = 1 << 7;
        /// EEM = 10: the pins above drive the EEPROM.
        const PROGRAM = Self::EEM1.bits();
        /// EEM = 11: the configuration registers are writable.
        const CONFIG_WRITE = Self::EEM1.bits() | Self::EEM0.bits();
    }

    /// Basic mode control of the PHY (BMCR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Bmcr: u16 {
        const DUPLEX = 1 << 8;
        const RESTART_ANEG = 1 << 9;
        const ANEG = 1 << 12;
        const SPEED_100 = 1 << 13;
        const RESET = 1 << 15;
    }

    /// Basic mode status of the PHY (BMSR).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Bmsr: u16 {
        const EXTENDED = 1 << 0;
        const JABBER = 1 << 1;
        /// Link is up.
        const LINK = 1 << 2;
        const ANEG_ABLE = 1 << 3;
        const REMOTE_FAULT = 1 << 4;
        const ANEG_DONE = 1 << 5;
    }

    /// Status half of the header before each received frame.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxStatus: u16 {
        /// Receive OK.
        const ROK = 1 << 0;
        /// Frame alignment error.
        const FAE = 1 << 1;
        const CRC = 1 << 2;
        /// Longer than 4 KiB.
        const LONG = 1 << 3;
        /// Shorter than 64 bytes.
        const RUNT = 1 << 4;
        /// Invalid symbol error.
        const ISE = 1 << 5;
        const BAR = 1 << 13;
        const PAM = 1 << 14;
        const MAR = 1 << 15;
    }
}

impl RxStatus {
    /// The error bits: any of them means the frame is bad.
    pub const ERRORS: Self = Self::FAE
        .union(Self::CRC)
        .union(Self::LONG)
        .union(Self::RUNT)
        .union(Self::ISE);
}

/// RCR.RBLEN: the RX buffer length, 8 KiB << n (plus 16 bytes), bits 11..12.
pub const RCR_RBLEN_SHIFT: u32 = 11;
/// RCR.MXDMA (bits 8..10) and TCR.MXDMA: 7 = unlimited (RX), 2048 bytes (TX); 6 = 1024.
pub const RCR_MXDMA_UNLIMITED: u32 = 7 << 8;
pub const TCR_MXDMA_1024: u32 = 6 << 8;
/// RCR.RXFTH (bits 13..15): 7 = no threshold, a whole packet before DMA.
pub const RCR_RXFTH_NONE: u32 = 7 << 13;
/// TCR.IFG (bits 24..25): 3 = the 802.3 inter-frame gap of 9.6 us / 960 ns.
pub const TCR_IFG_STANDARD: u32 = 3 << 24;
/// TSD.SIZE (bits 0..12) and TSD.ERTXTH (bits 16..21, in 32-byte units: the FIFO fill at
/// which transmission starts).
pub const TSD_SIZE_MASK: u32 = 0x1FFF;
pub const TSD_ERTXTH_SHIFT: u32 = 16;
/// Early TX threshold of 256 bytes (8 x 32), as Linux's 8139too.
pub const TSD_ERTXTH_256: u32 = 8 << TSD_ERTXTH_SHIFT;

/// The length the chip leaves in a header while the frame is still being copied in.
pub const RX_LENGTH_IN_PROGRESS: u16 = 0xFFF0;

/// The 93C46 layout: word 0 the Realtek ID, words 7..9 the station address (little-endian
/// byte pairs).
pub const EEPROM_ID: u16 = 0x8129;
pub const EEPROM_MAC_WORD: u8 = 7;
/// Address bits of a 93C46 (64 words).
pub const EEPROM_ADDR_BITS: u32 = 6;
/// The READ opcode (10) after the start bit (1).
pub const EEPROM_READ: u16 = 0b110;
