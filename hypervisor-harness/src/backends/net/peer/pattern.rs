//! The byte streams of the network contract: the seeded pattern (the disk pattern's sectors
//! 0, 1, 2, ... concatenated) and FNV-1a 64, which the sink reports.

/// One sector of the pattern, as in kernel/src/pattern.rs (shared by definition, not by code).
const SECTOR: usize = 512;

pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fill_sector(seed: u64, n: u64, sector: &mut [u8; SECTOR]) {
    let mut state = seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    for word in sector.as_chunks_mut::<8>().0 {
        *word = splitmix(&mut state).to_le_bytes();
    }
}

/// The seeded pattern as a byte stream, read in pieces of any size.
#[derive(Clone)]
pub struct PatternStream {
    seed: u64,
    pos: u64,
    sector: [u8; SECTOR],
    /// Which sector `sector` holds (`u64::MAX`: none yet).
    cached: u64,
}

impl PatternStream {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            pos: 0,
            sector: [0; SECTOR],
            cached: u64::MAX,
        }
    }

    /// Bytes produced so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The next `buf.len()` bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let n = self.pos / SECTOR as u64;
            if self.cached != n {
                fill_sector(self.seed, n, &mut self.sector);
                self.cached = n;
            }
            let at = (self.pos % SECTOR as u64) as usize;
            let take = (SECTOR - at).min(buf.len() - done);
            buf[done..done + take].copy_from_slice(&self.sector[at..at + take]);
            done += take;
            self.pos += take as u64;
        }
    }

    /// Whether `data` is the stream's next `data.len()` bytes (and moves past them).
    pub fn matches(&mut self, data: &[u8]) -> bool {
        let mut expect = [0u8; SECTOR];
        data.chunks(SECTOR).fold(true, |ok, chunk| {
            let expect = &mut expect[..chunk.len()];
            self.fill(expect);
            ok && expect == chunk
        })
    }
}

/// FNV-1a 64 over everything passed to `update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv1a64(pub u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_the_disk_pattern_in_any_piece_size() {
        // Sector 0 word 0 for seed 0: splitmix64 from state 0, the well-known first output.
        let mut first = [0u8; 8];
        PatternStream::new(0).fill(&mut first);
        assert_eq!(u64::from_le_bytes(first), 0xE220_A839_7B1D_CDAF);
        let mut whole = vec![0u8; 3 * SECTOR + 100];
        PatternStream::new(7).fill(&mut whole);
        let mut sector = [0u8; SECTOR];
        fill_sector(7, 2, &mut sector);
        assert_eq!(&whole[2 * SECTOR..3 * SECTOR], &sector[..]);
        let mut pieces = PatternStream::new(7);
        let mut again = vec![0u8; whole.len()];
        for chunk in again.chunks_mut(37) {
            pieces.fill(chunk);
        }
        assert_eq!(again, whole);
        assert!(PatternStream::new(7).matches(&whole));
        whole[600] ^= 1;
        assert!(!PatternStream::new(7).matches(&whole));
    }

    #[test]
    fn fnv_reference_values() {
        let mut h = Fnv1a64::default();
        assert_eq!(h.0, 0xcbf29ce484222325);
        h.update(b"a");
        assert_eq!(h.0, 0xaf63dc4c8601ec8c);
        let mut h = Fnv1a64::default();
        h.update(b"foobar");
        assert_eq!(h.0, 0x85944171f73967e8);
    }
}
