//! The engine against a real file on the work disk's file system (ext4 here, where
//! `O_DIRECT` works; std's temp dir is the same file system).

use super::*;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A temporary image of `len` bytes, byte `i` = pattern(i); removed on drop.
struct Image(PathBuf);

impl Image {
    fn new(len: usize) -> Self {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p = std::env::temp_dir().join(format!("uring-test-{}-{n}.img", std::process::id()));
        let data: Vec<u8> = (0..len).map(pattern).collect();
        std::fs::write(&p, data).unwrap();
        Self(p)
    }
    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pattern(i: usize) -> u8 {
    (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1]
}

/// `len` bytes starting `skew` bytes past a 4 KiB boundary.
struct Buf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, skew: usize) -> Self {
        let raw = vec![0u8; len + 8192];
        let start = (4096 - raw.as_ptr() as usize % 4096) % 4096 + skew;
        Self { raw, start, len }
    }
    fn filled(len: usize, byte: u8) -> Self {
        let mut b = Self::new(len, 0);
        b.bytes_mut().fill(byte);
        b
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
    fn iov(&mut self) -> libc::iovec {
        libc::iovec {
            iov_base: self.bytes_mut().as_mut_ptr().cast(),
            iov_len: self.len,
        }
    }
}

fn engine(img: &Image, read_only: bool) -> (DirectDisk, UringEngine) {
    let disk = DirectDisk::open(&img.0, read_only).unwrap();
    let e = disk.engine(128).unwrap();
    (disk, e)
}

fn wait_all(e: &mut UringEngine) -> Vec<Completion> {
    let mut out = Vec::new();
    e.wait_idle(&mut out);
    out.sort_by_key(|c| c.tag);
    out
}

#[test]
fn direct_alignment_is_what_the_file_system_says() {
    let img = Image::new(64 << 10);
    let disk = DirectDisk::open(&img.0, true).unwrap();
    let a = disk.align();
    assert!(
        a.mem.is_power_of_two() && a.offset.is_power_of_two(),
        "{a:?}"
    );
    assert!(a.offset <= 4096 && a.mem <= 4096, "{a:?}");
    let v = |base: usize, len: usize| libc::iovec {
        iov_base: base as *mut libc::c_void,
        iov_len: len,
    };
    assert!(a.fits(4096, &[v(0x10000, 4096), v(0x20000, 8192)]));
    assert!(!a.fits(4097, &[v(0x10000, 4096)]));
    assert!(!a.fits(0, &[v(0x10000, 100)]));
}

/// 64 writes in flight at once, then 64 reads of the same sectors: each completes once, with
/// all its bytes, and the file holds what was written.
#[test]
fn many_requests_in_flight_complete_with_the_right_data() {
    let img = Image::new(1 << 20);
    let (_disk, mut e) = engine(&img, false);
    let mut writes: Vec<Buf> = (0..64).map(|i| Buf::filled(4096, i as u8 + 1)).collect();
    for (i, b) in writes.iter_mut().enumerate() {
        // Every other 4 KiB block.
        // SAFETY: `writes` outlives the engine's wait below.
        unsafe { e.queue_rw(i as u16, UringOp::Write, i as u64 * 8192, &[b.iov()]) }.unwrap();
    }
    assert_eq!(e.in_flight(), 64, "all queued at once");
    e.submit().unwrap();
    // One enter hands all 64 to the kernel. The waits after it take as many enters as the
    // completions take turns to arrive, which depends on the machine's load: not counted.
    assert_eq!(e.counters.enters, 1, "{:?}", e.counters);
    let done = wait_all(&mut e);
    assert_eq!(done.len(), 64);
    for (i, c) in done.iter().enumerate() {
        assert_eq!((c.tag, c.result.as_ref().ok()), (i as u16, Some(&4096)));
    }
    let mut reads: Vec<Buf> = (0..64).map(|_| Buf::new(8192, 0)).collect();
    for (i, b) in reads.iter_mut().enumerate() {
        // SAFETY: `reads` outlives the engine's wait below.
        unsafe { e.queue_rw(i as u16, UringOp::Read, i as u64 * 8192, &[b.iov()]) }.unwrap();
    }
    let enters = e.counters.enters;
    e.submit().unwrap();
    assert_eq!(e.counters.enters, enters + 1, "{:?}", e.counters);
    let done = wait_all(&mut e);
    assert!(
        done.iter().all(|c| matches!(c.result, Ok(8192))),
        "{done:?}"
    );
    let file = img.contents();
    for (i, b) in reads.iter().enumerate() {
        let at = i * 8192;
        assert_eq!(b.bytes()[..4096], [i as u8 + 1; 4096], "block {i}");
        assert_eq!(b.bytes()[4096..], file[at + 4096..at + 8192], "block {i}");
        assert_eq!(file[at..at + 4096], [i as u8 + 1; 4096]);
    }
    assert_eq!(e.counters.submitted, 128);
    assert_eq!(e.counters.buffered, 0, "all aligned: all through the ring");
}

/// A request split over several buffers, one read of the whole, and a flush after writes.
#[test]
fn vectored_requests_and_a_flush_that_waits_for_the_writes() {
    let img = Image::new(256 << 10);
    let (_disk, mut e) = engine(&img, false);
    let mut parts = [
        Buf::filled(4096, 0xa1),
        Buf::filled(512, 0xb2),
        Buf::filled(3584, 0xc3),
    ];
    let iov: Vec<libc::iovec> = parts.iter_mut().map(Buf::iov).collect();
    // SAFETY: `parts` outlives the wait.
    unsafe { e.queue_rw(7, UringOp::Write, 65536, &iov) }.unwrap();
    e.queue_sync(8).unwrap();
    e.submit().unwrap();
    let done = wait_all(&mut e);
    assert_eq!(done.len(), 2);
    assert!(matches!(done[0].result, Ok(8192)), "{done:?}");
    assert!(matches!(done[1].result, Ok(0)), "{done:?}");
    let file = img.contents();
    assert_eq!(file[65536..69632], [0xa1; 4096]);
    assert_eq!(file[69632..70144], [0xb2; 512]);
    assert_eq!(file[70144..73728], [0xc3; 3584]);
}

/// Buffers or offsets O_DIRECT can't take still move the right bytes, on the buffered file.
#[test]
fn misaligned_requests_are_served_buffered_and_right() {
    let img = Image::new(64 << 10);
    let (_disk, mut e) = engine(&img, false);
    let mut odd = Buf::new(1024, 3);
    // SAFETY: `odd` outlives the wait.
    unsafe { e.queue_rw(0, UringOp::Read, 512, &[odd.iov()]) }.unwrap();
    let done = wait_all(&mut e);
    assert!(matches!(done[0].result, Ok(1024)), "{done:?}");
    let want: Vec<u8> = (512..1536).map(pattern).collect();
    assert_eq!(odd.bytes(), &want[..]);
    let mut w = Buf::new(100, 1);
    w.bytes_mut().fill(0x5a);
    // SAFETY: `w` outlives the wait.
    unsafe { e.queue_rw(1, UringOp::Write, 7, &[w.iov()]) }.unwrap();
    let done = wait_all(&mut e);
    assert!(matches!(done[0].result, Ok(100)), "{done:?}");
    assert_eq!(img.contents()[7..107], [0x5a; 100]);
    assert_eq!(e.counters.buffered, 2);
    assert_eq!(e.counters.submitted, 0);
}

/// A read past the end moves nothing: an error, never Ok with a buffer of old bytes. One that
/// starts inside and runs past is short: the rest is resubmitted, meets the end, and fails.
/// A write on a read-only file fails with the kernel's error.
#[test]
fn errors_are_errors() {
    let img = Image::new(64 << 10);
    let (_disk, mut e) = engine(&img, false);
    let mut past = Buf::new(4096, 0);
    let mut straddle = Buf::new(8192, 0);
    // SAFETY: the buffers outlive the wait.
    unsafe {
        e.queue_rw(0, UringOp::Read, 64 << 10, &[past.iov()])
            .unwrap();
        e.queue_rw(1, UringOp::Read, (64 << 10) - 4096, &[straddle.iov()])
            .unwrap();
    }
    e.submit().unwrap();
    let done = wait_all(&mut e);
    assert!(done.iter().all(|c| c.result.is_err()), "{done:?}");
    assert_eq!(e.counters.resubmitted, 1, "the straddling read's remainder");
    drop(e);
    let (_disk, mut ro) = engine(&img, true);
    let mut w = Buf::filled(4096, 1);
    // SAFETY: `w` outlives the wait.
    unsafe { ro.queue_rw(0, UringOp::Write, 0, &[w.iov()]) }.unwrap();
    ro.submit().unwrap();
    let done = wait_all(&mut ro);
    assert_eq!(
        done[0].result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    assert_eq!(
        img.contents()[..4096],
        (0..4096).map(pattern).collect::<Vec<_>>()[..]
    );
}

#[test]
fn a_tag_in_flight_or_out_of_range_is_refused() {
    let img = Image::new(64 << 10);
    let (_disk, mut e) = engine(&img, false);
    let mut b = Buf::new(4096, 0);
    // SAFETY: `b` outlives the wait.
    unsafe {
        e.queue_rw(5, UringOp::Read, 0, &[b.iov()]).unwrap();
        assert_eq!(
            e.queue_rw(5, UringOp::Read, 0, &[b.iov()]),
            Err(QueueError::TagBusy)
        );
        assert_eq!(
            e.queue_rw(128, UringOp::Read, 0, &[b.iov()]),
            Err(QueueError::TagBusy)
        );
    }
    assert_eq!(e.queue_sync(5), Err(QueueError::TagBusy));
    assert_eq!(wait_all(&mut e).len(), 1);
    assert_eq!(e.in_flight(), 0);
}

/// `wait_idle` returns only once the kernel is done with the memory: a read from a pipe
/// stays in flight until a writer comes, and the eventfd says when it completed.
#[test]
fn wait_idle_waits_for_a_request_in_flight() {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    use std::os::fd::FromRawFd;
    // SAFETY: fresh fds that nothing else owns.
    let (rd, mut wr) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    let rd2 = rd.try_clone().unwrap();
    let mut e = UringEngine::new(rd, rd2, DirectAlign { mem: 1, offset: 1 }, 4).unwrap();
    let mut b = Buf::new(16, 0);
    // SAFETY: `b` outlives the wait.
    unsafe { e.queue_rw(2, UringOp::Read, 0, &[b.iov()]) }.unwrap();
    e.submit().unwrap();
    let mut out = Vec::new();
    e.reap(&mut out);
    assert!(out.is_empty() && e.in_flight() == 1, "the pipe is empty");
    assert!(e.completion_fd().read().is_err(), "no completion yet");
    // Timed from before the writer exists, so that the writer's 50 ms lie inside the measured
    // time however late this thread runs again after the spawn.
    let start = Instant::now();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        wr.write_all(b"sixteen bytes!!!").unwrap();
    });
    e.wait_idle(&mut out);
    assert!(start.elapsed() >= Duration::from_millis(40));
    writer.join().unwrap();
    assert_eq!(out.len(), 1);
    assert!(matches!(out[0].result, Ok(16)), "{out:?}");
    assert_eq!(b.bytes(), b"sixteen bytes!!!");
    assert_eq!(e.completion_fd().read().unwrap(), 1, "the eventfd saw it");
}

/// `--disk virtio:PATH,cache=none` opens the image a second time for the ring; the default
/// does not.
#[test]
fn cache_none_opens_the_image_for_the_ring() {
    use crate::backends::disk::{DiskSpec, OpenedDisks, IDE_POSITIONS};
    let img = Image::new(64 << 10);
    let path = img.0.display().to_string();
    let specs: Vec<DiskSpec> = [
        format!("virtio:{path},cache=none"),
        format!("virtio:{path}"),
    ]
    .iter()
    .map(|a| DiskSpec::parse(a).unwrap())
    .collect();
    let d = OpenedDisks::open(&specs, 2, IDE_POSITIONS).unwrap();
    let direct = d.virtio[0].direct.as_ref().expect("cache=none: O_DIRECT");
    assert_eq!((direct.len(), direct.path()), (64 << 10, img.0.as_path()));
    assert!(
        d.virtio[1].direct.is_none(),
        "writeback: the page cache only"
    );
}
