//! What the integration tests share: the built kernel and harness, platform checks, output
//! handling and a self-deleting temporary directory.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const KERNEL: &str = env!("KERNEL_IMAGE");

/// The harness binary under test.
pub fn harness() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hypervisor-harness"))
}

use hypervisor_harness::qemu::kvm_usable;

fn qemu_installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A platform a test needs is missing: print `SKIP` with the reason and carry on, except under
/// `CI=true`, where `.ci/run` has installed QEMU on a machine with KVM, so a missing one is a
/// broken machine and the test fails.
fn platform_missing(test: &str, reason: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "{test}: {reason}, and CI=true demands it");
    eprintln!("SKIP {test}: {reason}");
    false
}

/// Whether `/dev/kvm` is usable; if not, SKIP (or, under CI=true, fail) `test`.
pub fn have_kvm(test: &str) -> bool {
    kvm_usable() || platform_missing(test, "/dev/kvm is not usable here")
}

/// Whether this machine can give a test a TAP device in a network namespace of its own (root,
/// /dev/net/tun, the `ip` command); if not, SKIP (or, under CI=true, fail) `test`.
pub fn have_tap(test: &str) -> bool {
    let reason = if !Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing"
    // SAFETY: geteuid has no preconditions.
    } else if unsafe { libc::geteuid() } != 0 {
        "not root (a TAP and a network namespace need CAP_NET_ADMIN/CAP_SYS_ADMIN)"
    } else if Command::new("ip").arg("-V").output().is_err() {
        "the `ip` command (iproute2) is missing"
    } else {
        return true;
    };
    platform_missing(test, reason)
}

/// Whether `qemu-system-x86_64` runs; if not, SKIP (or, under CI=true, fail) `test`.
pub fn have_qemu(test: &str) -> bool {
    qemu_installed() || platform_missing(test, "qemu-system-x86_64 is not installed")
}

/// stdout then stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Exit code 64 and exactly one `error:` line, which mentions `what`.
pub fn assert_usage_error(o: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(64), "{}", text(o));
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "stderr:\n{stderr}");
    assert!(errors[0].contains(what), "{what:?} not in {:?}", errors[0]);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Whether a KTAP line `ok N name` (not SKIP) is in the output.
pub fn passed(t: &str, name: &str) -> bool {
    t.lines()
        .any(|l| l.starts_with("ok ") && l.trim_end().ends_with(&format!(" {name}")))
}

/// A temporary directory, removed with its contents when dropped (vmm-sys-util's `TempDir`);
/// `.0` is its path.
pub struct TempDir(pub PathBuf, vmm_sys_util::tempdir::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let prefix = std::env::temp_dir().join(format!("hh-test-{tag}-"));
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(prefix).unwrap();
        Self(dir.as_path().to_path_buf(), dir)
    }

    /// A file of `len` zero bytes in the directory.
    pub fn file(&self, name: &str, len: u64) -> PathBuf {
        let p = self.0.join(name);
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        p
    }
}

// ---- seeded disk images ----

pub const SECTOR: usize = 512;
/// An odd capacity: the last 128 KiB request is partial.
pub const SECTORS: u64 = 4096 + 7;
pub const WRITE_REGION: u64 = 64;

/// The kernel's seeded pattern (kernel/src/pattern.rs), written again here on purpose: the two
/// sides share no code.
pub fn fill(seed: u64, lba: u64, buf: &mut [u8]) {
    for (i, sector) in buf.as_chunks_mut::<SECTOR>().0.iter_mut().enumerate() {
        let mut state = seed ^ (lba + i as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for word in sector.as_chunks_mut::<8>().0 {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *word = (z ^ (z >> 31)).to_le_bytes();
        }
    }
}

pub fn make_image(path: &Path, seed: u64) {
    let mut data = vec![0u8; SECTORS as usize * SECTOR];
    fill(seed, 0, &mut data);
    std::fs::write(path, data).unwrap();
}

/// Check the image: `written` sectors hold the write pattern, every other the original.
pub fn verify_image(
    path: &Path,
    seed: u64,
    wseed: u64,
    written: std::ops::Range<u64>,
) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| e.to_string())?;
    if data.len() != SECTORS as usize * SECTOR {
        return Err(format!("{} changed size to {}", path.display(), data.len()));
    }
    let mut expect = [0u8; SECTOR];
    for (lba, sector) in data.as_chunks::<SECTOR>().0.iter().enumerate() {
        let lba = lba as u64;
        let s = if written.contains(&lba) { wseed } else { seed };
        fill(s, lba, &mut expect);
        if *sector != expect {
            let what = if written.contains(&lba) {
                "the guest's write"
            } else {
                "the original"
            };
            return Err(format!(
                "{}: sector {lba} does not hold {what}",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A connection to the UNIX socket at `path`, retried for up to 60 s while the VMM that
/// listens on it starts.
pub fn connect_unix(path: &Path) -> std::os::unix::net::UnixStream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{}: {e}",
                    path.display()
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

/// The kernel's `tests=console_prompt` driven on port 0's socket: every command, one unknown,
/// then `quit`; what the prompt answered, up to its `bye`.
pub fn drive_console_prompt(s: &mut std::os::unix::net::UnixStream) -> Vec<u8> {
    use std::io::{Read, Write};
    s.write_all(b"help\necho hello console\nuptime\r\nbogus\n\nmem\nquit\n")
        .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"bye\n") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
        }
    }
    got
}
