//! A PIIX3-style IDE controller: two ATA channels with taskfile PIO and bus-master DMA.
//!
//! - [`ata`]: one channel's taskfile state machine (registers, commands, PIO buffer, status).
//! - [`identify`]: the IDENTIFY DEVICE data block, word by word.
//! - [`bmdma`]: the bus-master engine (registers, the PRD table walk in guest memory).
//! - [`piix`]: the PCI function 8086:7010 tying both channels and engines together, and the
//!   bus regions `vmm/ide_wiring.rs` puts on the port bus.

pub mod ata;
pub mod bmdma;
pub mod identify;
pub mod piix;
