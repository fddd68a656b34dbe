//! virtio-balloon through the guest driver, against our harness's model and QEMU's
//! `virtio-balloon-pci` alike: inflate to the device's target (the host measures its RSS at the
//! `# phase:` marks around it), deflate and reuse the memory with correct contents, and an
//! allocation past the limit that DEFLATE_ON_OOM satisfies (or, without it, that fails as it
//! must). Each test skips without a balloon or a target (`--balloon-target`, or QEMU's
//! `balloon` command, which may come a little after boot).

use crate::ktap::Outcome;
use crate::mem::balloon::{self, KernelFrames, OutOfFrames, OOM_DEFLATE_PAGES};
use crate::mem::frames::{self, FRAME_SIZE};
use crate::time;
use crate::{check, fail, println, try_or_fail};
use alloc::vec::Vec;
use drivers::virtio::balloon::{balloon_feature, BalloonError};

/// How long to wait for a target to appear.
const TARGET_WAIT_NS: u64 = 10_000_000_000;

/// The device's target, once non-zero. Err: skip.
fn wait_target() -> Result<u32, Outcome> {
    let deadline = time::now_ns() + TARGET_WAIT_NS;
    loop {
        match balloon::with(|b| b.requested_pages()) {
            Ok(None) => return Err(Outcome::Skip("no virtio-balloon")),
            Err(e) => return Err(Outcome::Fail(alloc::format!("balloon start: {}", e))),
            Ok(Some(Err(e))) => return Err(Outcome::Fail(alloc::format!("num_pages: {}", e))),
            Ok(Some(Ok(0))) if time::now_ns() >= deadline => {
                return Err(Outcome::Skip(
                    "the balloon has no target (--balloon-target)",
                ))
            }
            Ok(Some(Ok(0))) => core::hint::spin_loop(),
            Ok(Some(Ok(n))) => return Ok(n),
        }
    }
}

/// Follow the target; the balloon's PFNs afterwards.
fn serve() -> Result<(drivers::virtio::balloon::Progress, Vec<u32>), BalloonError> {
    balloon::with(|b| b.serve(&mut KernelFrames).map(|p| (p, b.pfns().to_vec())))?
        .unwrap_or(Err(BalloonError::NotBalloon(None)))
}

/// A word that differs per frame and per offset.
fn pattern(phys: u64, word: u64) -> u64 {
    phys.rotate_left(17) ^ word.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn frame_words(phys: u64) -> *mut u64 {
    phys as *mut u64
}

/// Write the pattern over every word of `phys`.
fn fill(phys: u64) {
    let p = frame_words(phys);
    for w in 0..FRAME_SIZE / 8 {
        // SAFETY: `phys` is a frame the caller allocated from the frame allocator: RAM inside
        // the identity map (virtual = physical), owned by this test until it frees it.
        unsafe { p.add(w as usize).write_volatile(pattern(phys, w)) };
    }
}

/// Whether every word of `phys` holds the pattern.
fn holds_pattern(phys: u64) -> bool {
    let p = frame_words(phys);
    // SAFETY: as in `fill`.
    (0..FRAME_SIZE / 8).all(|w| unsafe { p.add(w as usize).read_volatile() } == pattern(phys, w))
}

/// Whether every word of `phys` is zero.
fn is_zero(phys: u64) -> bool {
    let p = frame_words(phys);
    // SAFETY: as in `fill`.
    (0..FRAME_SIZE / 8).all(|w| unsafe { p.add(w as usize).read_volatile() } == 0)
}

fn take(n: u32) -> Option<Vec<u64>> {
    let mut v = Vec::with_capacity(n as usize);
    for _ in 0..n {
        match frames::alloc() {
            Some(f) => v.push(f),
            None => {
                v.into_iter().for_each(|f| {
                    frames::free(f);
                });
                return None;
            }
        }
    }
    Some(v)
}

fn give_back(v: Vec<u64>) {
    for f in v.into_iter().rev() {
        frames::free(f);
    }
}

fn sorted_phys(pfns: &[u32]) -> Vec<u64> {
    let mut v: Vec<u64> = pfns.iter().map(|&p| u64::from(p) * FRAME_SIZE).collect();
    v.sort_unstable();
    v
}

/// Inflate to the target. The frames the balloon will take (the allocator's lowest) are
/// written first, so that the host has them resident and can see its RSS fall.
pub fn inflate() -> Outcome {
    let target = match wait_target() {
        Ok(t) => t,
        Err(o) => return o,
    };
    let already = balloon::with(|b| b.actual()).ok().flatten().unwrap_or(0);
    let want = target.saturating_sub(already);
    let Some(touched) = take(want) else {
        fail!("fewer than {} free frames for a target of {}", want, target);
    };
    for &f in &touched {
        fill(f);
    }
    let mut expect = touched.clone();
    expect.sort_unstable();
    give_back(touched);
    println!("# phase: balloon-touched");
    let (p, pfns) = try_or_fail!(serve(), "inflate to {} pages", target);
    println!("# phase: balloon-inflated");
    println!(
        "# balloon: target {} pages, inflated {} ({} MiB), actual {}{}",
        p.target,
        p.inflated,
        (u64::from(p.inflated) * FRAME_SIZE) >> 20,
        p.actual,
        if p.short { ", source ran dry" } else { "" }
    );
    check!(
        p.actual == target && !p.short,
        "{} of {} pages in the balloon",
        p.actual,
        target
    );
    let device_actual = try_or_fail!(
        balloon::with(|b| b.device_actual()).map(|o| o.unwrap_or(Ok(0))),
        "read actual"
    );
    check!(
        device_actual == Ok(target),
        "the device's actual is {:?}, not {}",
        device_actual,
        target
    );
    let mut newest = sorted_phys(&pfns[already as usize..]);
    newest.dedup();
    check!(
        newest == expect,
        "the balloon took other frames than the {} it was expected to",
        expect.len()
    );
    Outcome::Pass
}

/// Deflate everything, then allocate the same frames again and use them: the contents written
/// are read back. Also says how many came back zeroed (the host dropped them).
pub fn deflate_reuse() -> Outcome {
    if let Err(o) = wait_target() {
        return o;
    }
    let (p, pfns) = try_or_fail!(serve(), "inflate");
    check!(p.actual > 0, "nothing in the balloon");
    let n = p.actual;
    let deflated = try_or_fail!(
        balloon::with(|b| b.deflate(&mut KernelFrames, n)).map(|o| o.unwrap_or(Ok(0))),
        "deflate"
    );
    let deflated = try_or_fail!(deflated, "deflate {} pages", n);
    check!(deflated == n, "deflated {} of {}", deflated, n);
    let actual = balloon::with(|b| b.device_actual()).ok().flatten();
    check!(actual == Some(Ok(0)), "the device's actual is {:?}", actual);
    println!("# phase: balloon-deflated");
    let Some(reused) = take(n) else {
        fail!("the {} deflated frames are not free again", n);
    };
    let mut got = reused.clone();
    got.sort_unstable();
    check!(
        got == sorted_phys(&pfns),
        "the allocator gave other frames than the deflated ones"
    );
    let zero = reused.iter().filter(|&&f| is_zero(f)).count();
    for &f in &reused {
        fill(f);
    }
    let bad = reused.iter().filter(|&&f| !holds_pattern(f)).count();
    give_back(reused);
    println!(
        "# balloon: deflated {} pages; {} of them read back zero; {} reused with wrong contents",
        n, zero, bad
    );
    println!("# phase: balloon-reused");
    check!(bad == 0, "{} reused frames lost their contents", bad);
    Outcome::Pass
}

/// Take every free frame, then one more: with DEFLATE_ON_OOM the balloon gives pages back and
/// the allocation succeeds; without it the allocation fails and the balloon keeps its pages.
pub fn deflate_on_oom() -> Outcome {
    if let Err(o) = wait_target() {
        return o;
    }
    let (p, _) = try_or_fail!(serve(), "inflate");
    check!(p.actual > 0, "nothing in the balloon");
    let features = balloon::with(|b| b.features()).ok().flatten().unwrap_or(0);
    let mut held = Vec::new();
    while let Some(f) = frames::alloc() {
        held.push(f);
    }
    let before = p.actual;
    let r = balloon::alloc_frame_or_deflate();
    let after = balloon::with(|b| b.actual()).ok().flatten().unwrap_or(0);
    let device_actual = balloon::with(|b| b.device_actual()).ok().flatten();
    let outcome = if features & balloon_feature::DEFLATE_ON_OOM != 0 {
        match r {
            Ok(f) => {
                held.push(f);
                println!(
                    "# balloon: out of frames after {}: deflated {} pages for the allocation",
                    held.len() - 1,
                    before - after
                );
                if before - after != OOM_DEFLATE_PAGES.min(before) {
                    Outcome::Fail(alloc::format!("deflated {} pages", before - after))
                } else if device_actual != Some(Ok(after)) {
                    Outcome::Fail(alloc::format!("device actual {:?}", device_actual))
                } else {
                    Outcome::Pass
                }
            }
            Err(e) => Outcome::Fail(alloc::format!("allocation failed: {:?}", e)),
        }
    } else {
        println!("# balloon: DEFLATE_ON_OOM not negotiated: the allocation fails, the balloon keeps its pages");
        match r {
            Err(OutOfFrames::Balloon(BalloonError::DeflateOnOomNotNegotiated))
                if after == before =>
            {
                Outcome::Pass
            }
            other => Outcome::Fail(alloc::format!(
                "without DEFLATE_ON_OOM: {:?}, balloon {} -> {}",
                other,
                before,
                after
            )),
        }
    };
    give_back(held);
    outcome
}

/// Free page reporting: write 32 MiB of frames and free them, report the free frames (the
/// host drops them: it measures its RSS at the `# phase:` marks), then take the same frames
/// again and use them: the memory was lent, not given up.
pub fn free_page_reporting() -> Outcome {
    const PAGES: u32 = 8192;
    let features = match balloon::with(|b| b.features()) {
        Ok(None) => return Outcome::Skip("no virtio-balloon"),
        Err(e) => fail!("balloon start: {}", e),
        Ok(Some(f)) => f,
    };
    if features & balloon_feature::PAGE_REPORTING == 0 {
        return Outcome::Skip("PAGE_REPORTING not offered (QEMU: free-page-reporting=on)");
    }
    let Some(buffer) = take(PAGES) else {
        fail!("fewer than {} free frames", PAGES);
    };
    for &f in &buffer {
        fill(f);
    }
    let mut expect = buffer.clone();
    expect.sort_unstable();
    give_back(buffer);
    println!("# phase: balloon-freed");
    let reported = try_or_fail!(
        balloon::with(|b| b.report_free(&mut KernelFrames, PAGES)).map(|o| o.unwrap_or(Ok(0))),
        "report"
    );
    let reported = try_or_fail!(reported, "report {} free pages", PAGES);
    println!("# phase: balloon-reported");
    check!(reported == PAGES, "reported {} of {}", reported, PAGES);
    let Some(again) = take(PAGES) else {
        fail!("the reported frames are not free");
    };
    let mut got = again.clone();
    got.sort_unstable();
    check!(
        got == expect,
        "the allocator gave other frames than the reported ones"
    );
    let zero = again.iter().filter(|&&f| is_zero(f)).count();
    for &f in &again {
        fill(f);
    }
    let bad = again.iter().filter(|&&f| !holds_pattern(f)).count();
    give_back(again);
    println!(
        "# balloon: reported {} free pages; {} of them read back zero; {} reused with wrong contents",
        reported, zero, bad
    );
    println!("# phase: balloon-reused-reported");
    check!(bad == 0, "{} reported frames lost their contents", bad);
    Outcome::Pass
}

/// How long `balloon_follows_interrupts` waits for the host to move the target.
const INTERRUPT_WAIT_NS: u64 = 60_000_000_000;

/// The host moves the target while the test sleeps: follow the current target, say so, then
/// sleep on interrupts alone (the platform's epoch and wait, never reading the configuration)
/// until the device's config-change interrupt, and follow the new target from there. Fails if
/// no such interrupt comes, whatever the device's configuration holds by then.
pub fn follows_interrupts() -> Outcome {
    use drivers::platform::Platform;
    let platform = crate::platform::KernelPlatform;
    let start = balloon::with(|b| {
        let p = b.serve(&mut KernelFrames)?;
        // What came before the serve is followed by it.
        let _ = balloon::target_signalled(b);
        Ok::<_, BalloonError>((p, alloc::format!("{}", b.interrupt_mode())))
    });
    let (before, mode) = match start {
        Ok(None) => return Outcome::Skip("no virtio-balloon"),
        Err(e) => fail!("balloon start: {}", e),
        Ok(Some(Err(e))) => fail!("follow the first target: {}", e),
        Ok(Some(Ok(p))) => p,
    };
    if mode == "polled" {
        return Outcome::Skip("the balloon has no interrupt (no MSI-X, no INTx line)");
    }
    println!(
        "# balloon: waiting for a config-change interrupt ({}; target {} pages, actual {})",
        mode, before.requested, before.actual
    );
    let deadline = time::now_ns() + INTERRUPT_WAIT_NS;
    let mut wakeups = 0u64;
    loop {
        let epoch = platform.interrupt_epoch();
        let signalled = balloon::with(balloon::target_signalled)
            .ok()
            .flatten()
            .unwrap_or(false);
        if signalled {
            let (p, _) = try_or_fail!(serve(), "follow the new target");
            if p.requested != before.requested {
                println!(
                    "# balloon: config-change interrupt after {} wakeups: target {} -> {} pages, \
                     actual {}",
                    wakeups, before.requested, p.requested, p.actual
                );
                check!(
                    p.actual == p.target && !p.short,
                    "{} of {} pages in the balloon",
                    p.actual,
                    p.target
                );
                let device_actual = balloon::with(|b| b.device_actual()).ok().flatten();
                check!(
                    device_actual == Some(Ok(p.target)),
                    "the device's actual is {:?}, not {}",
                    device_actual,
                    p.target
                );
                return Outcome::Pass;
            }
        }
        if time::now_ns() >= deadline {
            fail!(
                "no config-change interrupt with a new target in {} s ({} wakeups)",
                INTERRUPT_WAIT_NS / 1_000_000_000,
                wakeups
            );
        }
        platform.wait_for_interrupt(epoch);
        wakeups += 1;
    }
}
