//! IDE/ATA: taskfile PIO and bus-master DMA.
