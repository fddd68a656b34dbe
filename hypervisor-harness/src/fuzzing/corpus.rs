//! The seed corpus (`hypervisor-harness/fuzz/corpus/<target>/`) and the fixed-budget run CI
//! makes of every target without cargo-fuzz.
//!
//! - [`write_seed_corpus`] (ignored; run it to rebuild the files) writes valid programs built
//!   here: the requests a driver makes, from setup to data.
//! - [`every_target_runs_its_corpus_and_a_budget_of_mutations`] runs each target's corpus
//!   files, then `FUZZ_CI_INPUTS` (default 32) inputs per target: mutations of its corpus
//!   files (byte flips, insertions, truncations, splices), or seeded random programs for a
//!   target without a corpus. `fuzz/ci-budget.sh` runs it with a larger budget.

use super::virtio_rig::rop;
use std::path::PathBuf;

/// A target's entry point.
type EntryPoint = fn(&[u8]);

/// Every fuzz target, by its cargo-fuzz name.
const TARGETS: [(&str, EntryPoint); 13] = [
    ("balloon", super::balloon),
    ("console", super::console),
    ("debug_exit", super::debug_exit),
    ("e1000", super::e1000),
    ("exit_dispatch", super::exit_dispatch),
    ("floor", super::floor),
    ("ide", super::ide),
    ("msix", super::msix),
    ("pci_config", super::pci_config),
    ("rtl8139", super::rtl8139),
    ("serial", super::serial),
    ("virtio_blk", super::virtio_blk),
    ("virtio_net", super::virtio_net),
];

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(dir) = std::fs::read_dir(corpus_dir(target)) else {
        return Vec::new();
    };
    let mut files: Vec<_> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).ok()?,
            ))
        })
        .collect();
    files.sort();
    files
}

/// splitmix64.
fn next(s: &mut u64) -> u64 {
    crate::backends::net::peer::pattern::splitmix(s)
}

/// One mutation of `seed` (with `other` for splices), as libFuzzer's simplest mutators do.
fn mutate(seed: &[u8], other: &[u8], rng: &mut u64) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + next(rng) % 4 {
        let r = next(rng);
        let at = if v.is_empty() {
            0
        } else {
            (r >> 8) as usize % v.len()
        };
        match r % 5 {
            0 if !v.is_empty() => v[at] ^= 1 << ((r >> 40) % 8),
            1 if !v.is_empty() => v[at] = (r >> 40) as u8,
            2 => v.insert(at, (r >> 40) as u8),
            3 => v.truncate(at.max(1)),
            _ => {
                let from = (r >> 40) as usize % other.len().max(1);
                let tail = other.get(from..).unwrap_or_default();
                v.truncate(at);
                v.extend_from_slice(tail);
            }
        }
    }
    v
}

fn budget() -> usize {
    std::env::var("FUZZ_CI_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32)
}

#[test]
fn every_target_runs_its_corpus_and_a_budget_of_mutations() {
    let inputs = budget();
    for (i, (name, run)) in TARGETS.iter().enumerate() {
        let start = std::time::Instant::now();
        let files = corpus(name);
        for (file, data) in &files {
            let r = std::panic::catch_unwind(|| run(data));
            assert!(r.is_ok(), "{name}: corpus file {file} failed");
        }
        let mut rng = 0xc0de_0000 + i as u64;
        for k in 0..inputs {
            let input = if files.is_empty() {
                let n = next(&mut rng) as usize % 400;
                (0..n).map(|_| next(&mut rng) as u8).collect()
            } else {
                let a = &files[k % files.len()].1;
                let b = &files[next(&mut rng) as usize % files.len()].1;
                mutate(a, b, &mut rng)
            };
            let r = std::panic::catch_unwind(|| run(&input));
            assert!(r.is_ok(), "{name}: input {k} failed: {input:02x?}");
        }
        eprintln!(
            "fuzz budget: {name}: {} corpus files, {inputs} inputs, {} ms",
            files.len(),
            start.elapsed().as_millis()
        );
    }
}

/// A program builder, as the decoders read bytes.
#[derive(Default)]
struct Program(Vec<u8>);

impl Program {
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// Canonical queues 0..n (8 entries, vector 0, enabled), then the offered features and
    /// DRIVER_OK.
    fn ready(mut self, queues: u8) -> Self {
        for q in 0..queues {
            self = self.op(&[rop::QUEUE, 0, q, 3, 0, 0, 1]);
        }
        self.op(&[rop::NEGOTIATE, 0])
    }
    /// One readable buffer on queue `q` from the device's payload maker: the payload's own
    /// bytes follow.
    fn readable(self, q: u8, payload: &[u8]) -> Self {
        self.op(&[rop::CHAIN, q, 0, 0, 1]).op(payload)
    }
    /// One device-writable buffer of `len` (1..=0x1000) bytes on queue `q`.
    fn writable(self, q: u8, len: u16) -> Self {
        let l = (len - 1).to_le_bytes();
        self.op(&[rop::CHAIN, q, 0, 1, 1, l[0], l[1]])
    }
}

/// The balloon as its driver runs it: stats first, then inflate to a target in batches,
/// deflate some back, report free pages.
fn balloon_programs() -> Vec<(&'static str, Vec<u8>)> {
    let ready = || Program::default().op(&[0]).ready(4);
    // n PFNs (mode 0: u8 % 16).
    let pfns = |first: u8, n: u8| -> Vec<u8> {
        let mut v = vec![n - 1];
        for k in 0..n {
            v.extend([0, first + k]);
        }
        v
    };
    // Stats: (tag, value) entries, tags 0..=9.
    let stats = {
        let mut v = vec![9];
        for tag in 0..10u8 {
            v.extend([1, tag]);
            v.extend((u64::from(tag) << 20).to_le_bytes());
        }
        v
    };
    vec![
        (
            "inflate-deflate",
            ready()
                .op(&[super::balloon::bop::TARGET, 1, 8])
                .readable(0, &pfns(2, 8))
                .readable(1, &pfns(2, 4))
                .0,
        ),
        ("stats", ready().readable(2, &stats).readable(2, &stats).0),
        ("report", ready().writable(3, 0x1000).writable(3, 0x800).0),
    ]
}

/// The console as its driver runs it: receive buffers posted, DEVICE_READY, ports ready and
/// open, writes, and the host typing.
fn console_programs() -> Vec<(&'static str, Vec<u8>)> {
    use super::console::cop;
    let ready = || Program::default().op(&[0]).ready(6);
    // A control message on the control transmit queue: id, event, value 1, no name.
    let control =
        |p: Program, id: u8, event: u8| p.readable(3, &[1, id % 3, 1, event % 8, 1, 0, 7]);
    let hello: Vec<u8> = [0x0c].into_iter().chain(*b"hello, host\n").collect();
    let multiport = {
        let p = ready()
            .writable(0, 0x40)
            .writable(2, 0x40)
            .writable(4, 0x40);
        let p = control(p, 0, 0);
        let p = control(control(p, 0, 3), 1, 3);
        let p = control(control(p, 0, 6), 1, 6);
        p.readable(1, &hello)
            .readable(5, &hello)
            .op(&[cop::INPUT, 0, 5])
            .op(b"typed")
            .op(&[rop::NOTIFY, 0])
    };
    vec![
        (
            "port0",
            ready()
                .writable(0, 0x100)
                .readable(1, &hello)
                .op(&[cop::INPUT, 0, 3])
                .op(b"abc")
                .op(&[rop::NOTIFY, 0])
                .0,
        ),
        ("multiport", multiport.0),
        (
            "reconnect",
            ready()
                .op(&[cop::HOST, 0, 0])
                .readable(1, &hello)
                .op(&[cop::HOST, 0, 1])
                .readable(1, &hello)
                .0,
        ),
    ]
}

/// Rebuild the seed corpus files (`cargo test -p hypervisor-harness --lib write_seed_corpus --
/// --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (target, programs) in [
        ("balloon", balloon_programs()),
        ("console", console_programs()),
    ] {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in programs {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// The seeds are what they say: each one does real work in its device.
#[test]
fn the_seed_programs_reach_the_devices() {
    for (name, p) in balloon_programs() {
        let s = super::run_balloon(&p);
        let work = s.inflated + s.deflated + s.reported;
        assert!(work > 0 || name == "stats", "{name}: {s:?}");
    }
    for (name, p) in console_programs() {
        let s = super::run_console(&p);
        assert!(s.from_guest > 0, "{name}: {s:?}");
    }
}
