//! Guest RAM: one region at GPA 0, and the `--mem` size parser.

use vm_memory::{GuestAddress, GuestMemoryMmap};

pub type GuestMem = GuestMemoryMmap<()>;

pub const MIN_MEM: u64 = 32 << 20;
/// The PCI/LAPIC hole starts at 0xC000_0000.
pub const MAX_MEM: u64 = 0xc000_0000;

/// Parse a size like `256M`, `1G`, `512MiB`, `65536K` or a plain number of MiB (as QEMU's
/// `-m`), and check it against the guest limits (32 MiB ..= 3 GiB).
pub fn parse_mem(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits_end);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (try 256M or 1G)"))?;
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => 20,
        "k" | "kb" | "kib" => 10,
        "g" | "gb" | "gib" => 30,
        "b" => 0,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit '{suffix}' (use K, M or G)"
            ))
        }
    };
    let bytes = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large (at most 3G)"))?;
    if bytes < MIN_MEM {
        return Err(format!("'{s}' is too small (at least 32M)"));
    }
    if bytes > MAX_MEM {
        return Err(format!(
            "'{s}' is too large (at most 3G: the PCI hole starts at 0xc0000000)"
        ));
    }
    if bytes % 4096 != 0 {
        return Err(format!("'{s}' is not a multiple of 4 KiB"));
    }
    Ok(bytes)
}

/// The host's MemTotal in bytes.
pub fn host_mem_total() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reject a size larger than the host's memory.
pub fn check_host(bytes: u64) -> Result<(), String> {
    match host_mem_total() {
        Some(total) if bytes > total => Err(format!(
            "--mem {} MiB is more than the host's memory ({} MiB)",
            bytes >> 20,
            total >> 20
        )),
        _ => Ok(()),
    }
}

pub fn create(bytes: u64) -> Result<GuestMem, String> {
    GuestMem::from_ranges(&[(GuestAddress(0), bytes as usize)])
        .map_err(|e| format!("cannot allocate {} MiB of guest memory: {e}", bytes >> 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_mem("256M"), Ok(256 << 20));
        assert_eq!(parse_mem("256m"), Ok(256 << 20));
        assert_eq!(parse_mem("256MiB"), Ok(256 << 20));
        assert_eq!(parse_mem("128"), Ok(128 << 20));
        assert_eq!(parse_mem("1G"), Ok(1 << 30));
        assert_eq!(parse_mem("3G"), Ok(3 << 30));
        assert_eq!(parse_mem("65536K"), Ok(64 << 20));
        assert_eq!(parse_mem("33554432B"), Ok(32 << 20));
    }

    #[test]
    fn bad_sizes() {
        for s in [
            "12Q",
            "",
            "M",
            "-5M",
            "1.5G",
            "16M",
            "4G",
            "3073M",
            "99999999999999999999G",
            "18446744073709551615G",
            "33554433B",
        ] {
            assert!(parse_mem(s).is_err(), "{s} accepted");
        }
        assert!(parse_mem("12Q").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn host_check() {
        assert!(check_host(32 << 20).is_ok());
        assert!(check_host(u64::MAX).is_err());
    }

    #[test]
    fn create_memory() {
        let m = create(32 << 20).unwrap();
        use vm_memory::GuestMemoryBackend;
        assert_eq!(m.num_regions(), 1);
    }
}
