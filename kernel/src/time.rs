//! Time: the TSC, with its frequency from CPUID when the hypervisor publishes it (leaf 0x40000010,
//! or Intel's 0x15/0x16), otherwise calibrated against PIT channel 2.

use crate::arch::kcall::cpuid;
use crate::port::{inb, outb};
use core::arch::x86_64::_rdtsc;
use core::sync::atomic::{AtomicU64, Ordering};

static TSC_HZ: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    HypervisorLeaf,
    CpuidCrystal,
    CpuidBase,
    Pit,
}

impl TscSource {
    pub fn name(self) -> &'static str {
        match self {
            Self::HypervisorLeaf => "cpuid 0x40000010",
            Self::CpuidCrystal => "cpuid 0x15",
            Self::CpuidBase => "cpuid 0x16",
            Self::Pit => "PIT",
        }
    }
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD clear) and has no side effects.
    unsafe { _rdtsc() }
}

/// An empty loop the optimiser keeps: the same code is timed in ring 3 and in ring 0.
#[inline(never)]
pub fn spin_loop(iterations: u64) {
    let mut i = 0;
    while i < iterations {
        i = core::hint::black_box(i + 1);
    }
}

pub fn tsc_hz() -> u64 {
    TSC_HZ.load(Ordering::Relaxed)
}

pub fn cycles_to_ns(cycles: u64) -> u64 {
    let hz = tsc_hz().max(1);
    ((cycles as u128) * 1_000_000_000 / hz as u128) as u64
}

pub fn now_ns() -> u64 {
    cycles_to_ns(rdtsc())
}

/// Find the TSC frequency; returns it and where it came from.
pub fn init() -> (u64, TscSource) {
    let (hz, src) = from_cpuid().unwrap_or_else(|| (pit_calibrate_best(3, 20), TscSource::Pit));
    TSC_HZ.store(hz, Ordering::Relaxed);
    (hz, src)
}

fn from_cpuid() -> Option<(u64, TscSource)> {
    // Through ring 0: the VMM's CPUID, not the host CPU's (see kcall::CPUID).
    let leaf1 = cpuid(1, 0);
    let hypervisor = leaf1.ecx & (1 << 31) != 0;
    if hypervisor {
        let max = cpuid(0x4000_0000, 0).eax;
        if max >= 0x4000_0010 {
            let khz = cpuid(0x4000_0010, 0).eax as u64;
            if khz != 0 {
                return Some((khz * 1000, TscSource::HypervisorLeaf));
            }
        }
    }
    let max_std = cpuid(0, 0).eax;
    if max_std >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some((
                l.ecx as u64 * l.ebx as u64 / l.eax as u64,
                TscSource::CpuidCrystal,
            ));
        }
    }
    if max_std >= 0x16 {
        let mhz = cpuid(0x16, 0).eax as u64 & 0xffff;
        if mhz != 0 {
            return Some((mhz * 1_000_000, TscSource::CpuidBase));
        }
    }
    None
}

const PIT_HZ: u64 = 1_193_182;

/// The lowest of `runs` calibrations: being descheduled (a busy host) only makes the end of
/// the window noticed late, which inflates the result, never deflates it.
pub fn pit_calibrate_best(runs: u32, ms: u64) -> u64 {
    (0..runs.max(1))
        .map(|_| pit_calibrate(ms))
        .min()
        .unwrap_or(0)
}

/// Count TSC cycles across `ms` milliseconds of PIT channel 2 (mode 0, gate via port 0x61).
pub fn pit_calibrate(ms: u64) -> u64 {
    let count = (PIT_HZ * ms / 1000).min(0xffff);
    let gate = inb(0x61);
    outb(0x61, (gate & !0x02) | 0x01); // gate on, speaker off
    outb(0x43, 0b1011_0000); // channel 2, lo/hi byte, mode 0, binary
    outb(0x42, count as u8);
    // The count starts with the high byte's write, so the TSC is read before it: a vCPU
    // descheduled between the two then only lengthens the window measured, as one
    // descheduled at the end does, and the lowest of several runs is the truest. Read after,
    // a long deschedule there let the count run out unmeasured (a tiny result), and the lowest
    // run was the wrong one.
    let start = rdtsc();
    outb(0x42, (count >> 8) as u8);
    let mut polls = 0u64;
    // OUT2 (port 0x61 bit 5) goes high when the count reaches zero. Bounded, in case there is no
    // PIT: a few million polls is seconds even at native speed.
    while inb(0x61) & 0x20 == 0 && polls < 50_000_000 {
        polls += 1;
    }
    let cycles = rdtsc() - start;
    outb(0x61, gate);
    cycles * PIT_HZ / count
}
