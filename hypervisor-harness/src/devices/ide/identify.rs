//! The IDENTIFY DEVICE data block (ATA/ATAPI-7 vol. 1 §6.17, table 16) as the drive hands it
//! out: 256 words, little-endian through the 16-bit data port. Every word the model sets is a
//! named field; the rest are reserved, retired or unsupported and stay zero.

use vm_memory::{ByteValued, Le16};

/// Word 0: a fixed (non-removable) ATA device.
pub const GENERAL_CONFIG_FIXED: u16 = 1 << 6;
/// Word 47 bit 15 is always one; a zero maximum (bits 7..0) means no READ/WRITE MULTIPLE.
pub const MULTIPLE_NOT_SUPPORTED: u16 = 0x8000;
/// Word 49: IORDY supported, LBA supported, DMA supported.
pub const CAP_IORDY: u16 = 1 << 11;
pub const CAP_LBA: u16 = 1 << 9;
pub const CAP_DMA: u16 = 1 << 8;
/// Words 50, 84, 87 and 106: bits 15..14 = 01 mark the word valid.
pub const WORD_VALID: u16 = 1 << 14;
/// Word 51/52 (obsolete timing words): mode 2 in the high byte, as drives of the era report.
pub const LEGACY_TIMING_MODE_2: u16 = 0x0200;
/// Word 53: words 54-58, 64-70 and 88 are valid.
pub const VALID_54_58: u16 = 1 << 0;
pub const VALID_64_70: u16 = 1 << 1;
pub const VALID_88: u16 = 1 << 2;
/// Word 63 (multiword DMA) and word 88 (Ultra DMA): modes supported in the low byte, the
/// selected mode as bit 8 + n.
pub const MWDMA_0_2_SUPPORTED: u16 = 0x0007;
pub const UDMA_0_5_SUPPORTED: u16 = 0x003f;
pub const DMA_MODE_SELECTED_SHIFT: u8 = 8;
/// Word 64: PIO modes 3 and 4 supported.
pub const PIO_3_4_SUPPORTED: u16 = 0x0003;
/// Words 65-68: the fastest cycle times (ns) for mode 4 PIO and mode 2 multiword DMA.
pub const MIN_CYCLE_NS: u16 = 120;
/// Word 80: ATA-4 through ATA/ATAPI-7.
pub const MAJOR_VERSION_ATA4_TO_7: u16 = 0x00f0;
/// Words 82 and 85: NOP, volatile write cache.
pub const FEATURE_NOP: u16 = 1 << 14;
pub const FEATURE_WRITE_CACHE: u16 = 1 << 5;
/// Words 83 and 86: FLUSH CACHE EXT, FLUSH CACHE, the 48-bit address feature set.
pub const FEATURE2_FLUSH_CACHE_EXT: u16 = 1 << 13;
pub const FEATURE2_FLUSH_CACHE: u16 = 1 << 12;
pub const FEATURE2_LBA48: u16 = 1 << 10;
/// Word 93: valid (bits 15..14 = 01, and bit 0 one), bit 13: CBLID- above V_IH (an
/// 80-conductor cable).
pub const HW_RESET_RESULT: u16 = (1 << 14) | (1 << 13) | 1;
/// Word 255 low byte: the integrity word's signature (the high byte is the checksum).
pub const INTEGRITY_SIGNATURE: u8 = 0xa5;

/// IDENTIFY DEVICE data, word by word.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct IdentifyData {
    /// Word 0.
    pub general_config: Le16,
    /// Word 1: default CHS cylinders.
    pub cylinders: Le16,
    pub _word_2: Le16,
    /// Word 3: default CHS heads.
    pub heads: Le16,
    pub _words_4_5: [Le16; 2],
    /// Word 6: default CHS sectors per track.
    pub sectors_per_track: Le16,
    pub _words_7_9: [Le16; 3],
    /// Words 10-19.
    pub serial: [Le16; 10],
    pub _words_20_22: [Le16; 3],
    /// Words 23-26.
    pub firmware: [Le16; 4],
    /// Words 27-46.
    pub model: [Le16; 20],
    /// Word 47.
    pub max_sectors_per_multiple: Le16,
    pub _word_48: Le16,
    /// Word 49.
    pub capabilities: Le16,
    /// Word 50.
    pub capabilities_2: Le16,
    /// Words 51-52: obsolete PIO and DMA timing modes.
    pub pio_timing: Le16,
    pub dma_timing: Le16,
    /// Word 53: which of the words below are valid.
    pub field_validity: Le16,
    /// Words 54-56: the current CHS translation.
    pub current_cylinders: Le16,
    pub current_heads: Le16,
    pub current_sectors_per_track: Le16,
    /// Words 57-58, low word first: sectors addressable through the current CHS translation.
    pub current_chs_sectors: [Le16; 2],
    pub _word_59: Le16,
    /// Words 60-61, low word first: sectors addressable by LBA28 commands.
    pub lba28_sectors: [Le16; 2],
    pub _word_62: Le16,
    /// Word 63.
    pub multiword_dma: Le16,
    /// Word 64.
    pub pio_modes: Le16,
    /// Words 65-68: minimum multiword DMA cycle, recommended multiword DMA cycle, minimum PIO
    /// cycle without and with IORDY flow control, in ns.
    pub min_mwdma_cycle_ns: Le16,
    pub recommended_mwdma_cycle_ns: Le16,
    pub min_pio_cycle_ns: Le16,
    pub min_pio_iordy_cycle_ns: Le16,
    pub _words_69_79: [Le16; 11],
    /// Word 80.
    pub major_version: Le16,
    pub _word_81: Le16,
    /// Words 82-84: command sets and features supported.
    pub commands_supported: Le16,
    pub commands_supported_2: Le16,
    pub commands_supported_ext: Le16,
    /// Words 85-87: the same, enabled (word 87: defaults).
    pub commands_enabled: Le16,
    pub commands_enabled_2: Le16,
    pub commands_default: Le16,
    /// Word 88.
    pub ultra_dma: Le16,
    pub _words_89_92: [Le16; 4],
    /// Word 93.
    pub hardware_reset_result: Le16,
    pub _words_94_99: [Le16; 6],
    /// Words 100-103, low word first: sectors addressable by LBA48 commands.
    pub lba48_sectors: [Le16; 4],
    pub _words_104_105: [Le16; 2],
    /// Word 106: physical and logical sector size (valid, nothing else set: 512-byte sectors).
    pub sector_size: Le16,
    pub _words_107_254: [Le16; 148],
    /// Word 255: [`INTEGRITY_SIGNATURE`] in the low byte, the checksum in the high byte.
    pub integrity: Le16,
}

// SAFETY: 256 Le16 fields (each a transparent u16), alignment 2, no padding; every bit pattern
// is a valid value.
unsafe impl ByteValued for IdentifyData {}

/// The block's size in bytes: one sector.
pub const IDENTIFY_LEN: usize = size_of::<IdentifyData>();

const fn byte(word: usize) -> usize {
    2 * word
}
const _: () = assert!(IDENTIFY_LEN == 512);
const _: () = assert!(std::mem::offset_of!(IdentifyData, cylinders) == byte(1));
const _: () = assert!(std::mem::offset_of!(IdentifyData, heads) == byte(3));
const _: () = assert!(std::mem::offset_of!(IdentifyData, sectors_per_track) == byte(6));
const _: () = assert!(std::mem::offset_of!(IdentifyData, serial) == byte(10));
const _: () = assert!(std::mem::offset_of!(IdentifyData, firmware) == byte(23));
const _: () = assert!(std::mem::offset_of!(IdentifyData, model) == byte(27));
const _: () = assert!(std::mem::offset_of!(IdentifyData, max_sectors_per_multiple) == byte(47));
const _: () = assert!(std::mem::offset_of!(IdentifyData, capabilities) == byte(49));
const _: () = assert!(std::mem::offset_of!(IdentifyData, field_validity) == byte(53));
const _: () = assert!(std::mem::offset_of!(IdentifyData, current_cylinders) == byte(54));
const _: () = assert!(std::mem::offset_of!(IdentifyData, current_chs_sectors) == byte(57));
const _: () = assert!(std::mem::offset_of!(IdentifyData, lba28_sectors) == byte(60));
const _: () = assert!(std::mem::offset_of!(IdentifyData, multiword_dma) == byte(63));
const _: () = assert!(std::mem::offset_of!(IdentifyData, pio_modes) == byte(64));
const _: () = assert!(std::mem::offset_of!(IdentifyData, min_pio_iordy_cycle_ns) == byte(68));
const _: () = assert!(std::mem::offset_of!(IdentifyData, major_version) == byte(80));
const _: () = assert!(std::mem::offset_of!(IdentifyData, commands_supported) == byte(82));
const _: () = assert!(std::mem::offset_of!(IdentifyData, commands_default) == byte(87));
const _: () = assert!(std::mem::offset_of!(IdentifyData, ultra_dma) == byte(88));
const _: () = assert!(std::mem::offset_of!(IdentifyData, hardware_reset_result) == byte(93));
const _: () = assert!(std::mem::offset_of!(IdentifyData, lba48_sectors) == byte(100));
const _: () = assert!(std::mem::offset_of!(IdentifyData, sector_size) == byte(106));
const _: () = assert!(std::mem::offset_of!(IdentifyData, integrity) == byte(255));

impl IdentifyData {
    /// All words zero.
    pub fn zeroed() -> Self {
        let z = Le16::default();
        Self {
            general_config: z,
            cylinders: z,
            _word_2: z,
            heads: z,
            _words_4_5: [z; 2],
            sectors_per_track: z,
            _words_7_9: [z; 3],
            serial: [z; 10],
            _words_20_22: [z; 3],
            firmware: [z; 4],
            model: [z; 20],
            max_sectors_per_multiple: z,
            _word_48: z,
            capabilities: z,
            capabilities_2: z,
            pio_timing: z,
            dma_timing: z,
            field_validity: z,
            current_cylinders: z,
            current_heads: z,
            current_sectors_per_track: z,
            current_chs_sectors: [z; 2],
            _word_59: z,
            lba28_sectors: [z; 2],
            _word_62: z,
            multiword_dma: z,
            pio_modes: z,
            min_mwdma_cycle_ns: z,
            recommended_mwdma_cycle_ns: z,
            min_pio_cycle_ns: z,
            min_pio_iordy_cycle_ns: z,
            _words_69_79: [z; 11],
            major_version: z,
            _word_81: z,
            commands_supported: z,
            commands_supported_2: z,
            commands_supported_ext: z,
            commands_enabled: z,
            commands_enabled_2: z,
            commands_default: z,
            ultra_dma: z,
            _words_89_92: [z; 4],
            hardware_reset_result: z,
            _words_94_99: [z; 6],
            lba48_sectors: [z; 4],
            _words_104_105: [z; 2],
            sector_size: z,
            _words_107_254: [z; 148],
            integrity: z,
        }
    }

    /// Set the integrity word: the signature, and the checksum that makes all 512 bytes sum
    /// to zero (mod 256). Call it last.
    pub fn seal(&mut self) {
        self.integrity = Le16::from(INTEGRITY_SIGNATURE as u16);
        let sum = self.as_slice()[..IDENTIFY_LEN - 1]
            .iter()
            .fold(0u8, |s, b| s.wrapping_add(*b));
        self.integrity = Le16::from(INTEGRITY_SIGNATURE as u16 | (sum.wrapping_neg() as u16) << 8);
    }
}

/// An ATA string of `N` words: two characters per word, the first in the high byte, padded
/// with spaces (and cut at 2 N characters).
pub fn ata_string<const N: usize>(s: &str) -> [Le16; N] {
    let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
    std::array::from_fn(|_| {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        Le16::from((hi as u16) << 8 | lo as u16)
    })
}

/// `value` as `N` words, low word first (the bits above 16 N are dropped).
pub fn le_words<const N: usize>(value: u64) -> [Le16; N] {
    std::array::from_fn(|i| Le16::from((value >> (16 * i)) as u16))
}
