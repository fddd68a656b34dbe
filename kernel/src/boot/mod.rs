//! Boot: the PVH entry (32-bit, paging off) up to the first Rust function in long mode.
pub mod pvh;
