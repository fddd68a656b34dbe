//! The 82540EM's registers and descriptors (8254x Software Developer's Manual, sections 13
//! and 3): MMIO offsets into BAR0, their bits, and the legacy RX/TX and TCP/IP context/data
//! TX descriptors as wire structs.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// MMIO register offsets into BAR0.
pub mod reg {
    pub const CTRL: u64 = 0x0000;
    pub const STATUS: u64 = 0x0008;
    pub const EECD: u64 = 0x0010;
    pub const EERD: u64 = 0x0014;
    pub const MDIC: u64 = 0x0020;
    pub const ICR: u64 = 0x00C0;
    pub const ITR: u64 = 0x00C4;
    pub const ICS: u64 = 0x00C8;
    pub const IMS: u64 = 0x00D0;
    pub const IMC: u64 = 0x00D8;
    pub const RCTL: u64 = 0x0100;
    pub const TCTL: u64 = 0x0400;
    pub const TIPG: u64 = 0x0410;
    pub const RDBAL: u64 = 0x2800;
    pub const RDBAH: u64 = 0x2804;
    pub const RDLEN: u64 = 0x2808;
    pub const RDH: u64 = 0x2810;
    pub const RDT: u64 = 0x2818;
    /// RX delay timer (interrupt delay per frame, 1.024 us units).
    pub const RDTR: u64 = 0x2820;
    pub const TDBAL: u64 = 0x3800;
    pub const TDBAH: u64 = 0x3804;
    pub const TDLEN: u64 = 0x3808;
    pub const TDH: u64 = 0x3810;
    pub const TDT: u64 = 0x3818;
    /// Multicast table array: 128 dwords.
    pub const MTA: u64 = 0x5200;
    pub const MTA_LEN: u64 = 128;
    /// Receive address 0 (low and high dwords); entries 1..15 follow at 8-byte steps.
    pub const RAL0: u64 = 0x5400;
    pub const RAH0: u64 = 0x5404;
    /// Bytes of BAR0 the driver touches (the whole register file is 128 KiB).
    pub const BAR0_LEN: u64 = 0x2_0000;
}

bitflags! {
    /// Device control (CTRL).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ctrl: u32 {
        const FD = 1 << 0;
        const ASDE = 1 << 5;
        const SLU = 1 << 6;
        const RST = 1 << 26;
        const PHY_RST = 1 << 31;
    }

    /// Device status (STATUS).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status: u32 {
        const FD = 1 << 0;
        const LU = 1 << 1;
        const TXOFF = 1 << 4;
    }

    /// Interrupt cause bits, shared by ICR, ICS, IMS and IMC.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Intr: u32 {
        /// A TX descriptor was written back.
        const TXDW = 1 << 0;
        const TXQE = 1 << 1;
        /// Link status change.
        const LSC = 1 << 2;
        const RXSEQ = 1 << 3;
        /// RX descriptors below the minimum threshold.
        const RXDMT0 = 1 << 4;
        /// RX overrun: the ring was full.
        const RXO = 1 << 6;
        /// RX timer: frames were received.
        const RXT0 = 1 << 7;
        const MDAC = 1 << 9;
    }

    /// Receive control (RCTL).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Rctl: u32 {
        const EN = 1 << 1;
        const SBP = 1 << 2;
        const UPE = 1 << 3;
        const MPE = 1 << 4;
        const LPE = 1 << 5;
        /// Broadcast accept.
        const BAM = 1 << 15;
        /// Buffer size 2048 is BSIZE = 00 with BSEX = 0 (no bits set).
        const BSIZE_2048 = 0;
        const BSEX = 1 << 25;
        /// Strip the Ethernet CRC before DMA.
        const SECRC = 1 << 26;
    }

    /// Transmit control (TCTL); CT and COLD are fields (see [`tctl`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tctl: u32 {
        const EN = 1 << 1;
        /// Pad short packets.
        const PSP = 1 << 3;
        const _ = !0;
    }

    /// Legacy TX descriptor command byte, and the DCMD byte of data/context descriptors.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TxCmd: u8 {
        const EOP = 1 << 0;
        /// Insert the FCS.
        const IFCS = 1 << 1;
        const IC = 1 << 2;
        /// Report status (write DD back).
        const RS = 1 << 3;
        /// Extended descriptor (context or data), with DTYP.
        const DEXT = 1 << 5;
        const IDE = 1 << 7;
    }

    /// TX descriptor status.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TxStatus: u8 {
        const DD = 1 << 0;
        const _ = !0;
    }

    /// RX descriptor status.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxStatus: u8 {
        const DD = 1 << 0;
        const EOP = 1 << 1;
        /// Ignore the checksum indications.
        const IXSM = 1 << 2;
        const TCPCS = 1 << 5;
        const IPCS = 1 << 6;
        const _ = !0;
    }

    /// RX descriptor errors.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RxErrors: u8 {
        /// CRC or alignment error.
        const CE = 1 << 0;
        const SE = 1 << 1;
        const SEQ = 1 << 2;
        const CXE = 1 << 4;
        const TCPE = 1 << 5;
        const IPE = 1 << 6;
        const RXE = 1 << 7;
    }
}

/// TCTL's collision threshold and distance fields, as the manual recommends (full duplex).
pub mod tctl {
    pub const CT_SHIFT: u32 = 4;
    pub const CT_DEFAULT: u32 = 0x0F;
    pub const COLD_SHIFT: u32 = 12;
    pub const COLD_FULL_DUPLEX: u32 = 0x40;
}

/// TIPG for the 82540EM on copper: IPGT 10, IPGR1 8, IPGR2 6 (manual, table 13-77).
pub const TIPG_82540_COPPER: u32 = 10 | (8 << 10) | (6 << 20);

/// Receive address high: the address-valid bit.
pub const RAH_AV: u32 = 1 << 31;

/// EEPROM read register (EERD) on the 82540EM: start bit, done bit, address and data fields.
pub mod eerd {
    pub const START: u32 = 1 << 0;
    pub const DONE: u32 = 1 << 4;
    pub const ADDR_SHIFT: u32 = 8;
    pub const DATA_SHIFT: u32 = 16;
}

/// EEPROM words summed by the checksum (0x00..=0x3F) and the sum they must give.
pub const EEPROM_CHECKSUM_WORDS: u16 = 0x40;
pub const EEPROM_SUM: u16 = 0xBABA;

/// MDI control (MDIC): PHY register access.
pub mod mdic {
    pub const DATA_MASK: u32 = 0xFFFF;
    pub const REG_SHIFT: u32 = 16;
    pub const PHY_SHIFT: u32 = 21;
    pub const OP_WRITE: u32 = 1 << 26;
    pub const OP_READ: u32 = 2 << 26;
    pub const READY: u32 = 1 << 28;
    pub const ERROR: u32 = 1 << 30;
    /// The internal PHY's address.
    pub const PHY_ADDR: u32 = 1;
    /// PHY status register and its link-status bit.
    pub const PHY_STATUS: u32 = 1;
    pub const PHY_STATUS_LINK: u16 = 1 << 2;
}

/// Data descriptor type (DTYP = 0001 in bits 20..24 of the length/command dword); a context
/// descriptor has DTYP = 0000.
pub const DTYP_DATA: u32 = 1 << 20;
/// Data descriptor POPTS: insert the TCP/UDP checksum.
pub const POPTS_TXSM: u8 = 1 << 1;
/// Context descriptor TUCMD bits (beside DEXT/RS in the same byte): IPv4, TCP (else UDP).
pub const TUCMD_IP: u8 = 1 << 1;
pub const TUCMD_TCP: u8 = 1 << 0;

/// A legacy receive descriptor.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct RxDesc {
    pub buffer_addr: u64,
    pub length: u16,
    pub checksum: u16,
    pub status: u8,
    pub errors: u8,
    pub special: u16,
}

/// A legacy transmit descriptor.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct TxDesc {
    pub buffer_addr: u64,
    pub length: u16,
    /// Checksum offset (legacy insertion; unused here).
    pub cso: u8,
    pub cmd: u8,
    pub status: u8,
    pub css: u8,
    pub special: u16,
}

/// A TCP/IP context descriptor: where the checksums start, go and end.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ContextDesc {
    pub ipcss: u8,
    pub ipcso: u8,
    pub ipcse: u16,
    pub tucss: u8,
    pub tucso: u8,
    /// Last byte summed; 0 means to the end of the packet.
    pub tucse: u16,
    /// PAYLEN (bits 0..20), DTYP (20..24, 0 here), TUCMD (24..32).
    pub cmd_and_length: u32,
    pub status: u8,
    pub hdr_len: u8,
    pub mss: u16,
}

/// A TCP/IP data descriptor.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct DataDesc {
    pub buffer_addr: u64,
    /// DTALEN (bits 0..20), DTYP (20..24, 0001), DCMD (24..32).
    pub cmd_and_length: u32,
    pub status: u8,
    pub popts: u8,
    pub special: u16,
}

const _: () = {
    assert!(size_of::<RxDesc>() == 16);
    assert!(size_of::<TxDesc>() == 16);
    assert!(size_of::<ContextDesc>() == 16);
    assert!(size_of::<DataDesc>() == 16);
    assert!(core::mem::offset_of!(TxDesc, status) == 12);
    assert!(core::mem::offset_of!(ContextDesc, status) == 12);
    assert!(core::mem::offset_of!(DataDesc, status) == 12);
    assert!(core::mem::offset_of!(RxDesc, status) == 12);
};
