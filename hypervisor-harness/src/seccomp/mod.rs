//! Least privilege for the threads that run guest-facing code: each kind of thread installs a
//! seccomp filter (built with rust-vmm's `seccompiler` from the allow-list of its kind,
//! [`allow_lists`]) once its set-up is done, so a guest that takes over one of them can make
//! only the system calls that kind makes anyway.
//!
//! A call outside the list traps (`SIGSYS`); the handler writes one line to stderr,
//! `hypervisor-harness: seccomp: thread <kind> made forbidden system call <nr>`, with write(2)
//! alone, and ends the process with [`EXIT_SECCOMP`] (148, as Firecracker's). One exception:
//! `openat` fails with EACCES instead, because glibc's malloc opens files of /proc and /sys by
//! itself the first time it needs them (`/proc/sys/vm/overcommit_memory` when a thread's heap
//! first shrinks, at any moment), and does without them when they cannot be opened.
//!
//! The filters are process-wide policy set once by `vmm::run` ([`configure`]); until then
//! (unit tests, the `qemu` subcommand, `bench`'s parent) [`enter`] does nothing. A leaf
//! module: it knows libc and seccompiler, and every layer may call it.

mod allow_lists;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The exit code of a process whose thread made a forbidden system call.
pub const EXIT_SECCOMP: i32 = 148;

/// The kinds of harness thread, each with an allow-list of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ThreadKind {
    /// The vCPU thread: KVM_RUN, exit dispatch, and the device work done on an exit (inline
    /// virtio queues, IDE, the emulated NICs' transmit, the serial port's output).
    Vcpu,
    /// A device's I/O thread woken by an ioeventfd (virtio-blk, balloon, console queues; the
    /// floor device's doorbell): disk I/O and interrupts.
    DeviceIo,
    /// A NIC's backend thread (virtio-net's event loop, the e1000's and RTL8139's receive
    /// thread): the backend's fds, sockets included (the user-mode backend's flows).
    NicBackend,
    /// A virtio-console port's host side: its socket's clients or the terminal.
    ConsolePort,
    /// A monitor socket's thread (HMP or QMP).
    Monitor,
    /// The run's watchdog: a timer that signals the vCPU thread.
    Watchdog,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 6] = [
        ThreadKind::Vcpu,
        ThreadKind::DeviceIo,
        ThreadKind::NicBackend,
        ThreadKind::ConsolePort,
        ThreadKind::Monitor,
        ThreadKind::Watchdog,
    ];

    /// As the message and `--seccomp-selftest` spell it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::DeviceIo => "device-io",
            ThreadKind::NicBackend => "nic-backend",
            ThreadKind::ConsolePort => "console-port",
            ThreadKind::Monitor => "monitor",
            ThreadKind::Watchdog => "watchdog",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What `vmm::run` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SeccompConfig {
    /// Install the filters (`--seccomp on`, the default).
    pub enabled: bool,
    /// Test only (`--seccomp-selftest KIND`): the first thread of this kind makes a forbidden
    /// call right after its filter is in place.
    pub selftest: Option<ThreadKind>,
}

struct Policy {
    /// One compiled filter per kind, in [`ThreadKind::ALL`] order, and the filter that turns
    /// opens into EACCES; None when disabled.
    filters: Option<(Vec<BpfProgram>, BpfProgram)>,
    selftest: Option<ThreadKind>,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

thread_local! {
    /// The kind of this thread, for the SIGSYS handler (const-initialised and without a
    /// destructor, so reading it there takes no lock and allocates nothing).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Compile every kind's filter and install the SIGSYS handler. Once per process: a second
/// call keeps the first policy.
pub fn configure(cfg: SeccompConfig) -> Result<(), String> {
    let filters = if cfg.enabled {
        let mut v = Vec::with_capacity(ThreadKind::ALL.len());
        for kind in ThreadKind::ALL {
            v.push(compile(kind)?);
        }
        install_sigsys_handler()?;
        Some((v, compile_refused_opens()?))
    } else {
        None
    };
    let _ = POLICY.set(Policy {
        filters,
        selftest: cfg.selftest,
    });
    Ok(())
}

/// The calling thread is a `kind` thread whose set-up is done: from now on it runs under that
/// kind's filter (when the policy has them). A filter that cannot be installed ends the
/// process, with the same exit code as a violation: running unconfined was not asked for.
pub fn enter(kind: ThreadKind) {
    let Some(policy) = POLICY.get() else {
        return;
    };
    KIND.with(|k| k.set(Some(kind)));
    if let Some((filters, refused_opens)) = &policy.filters {
        // The refusal first: the allow-list has no seccomp(2) to install it after.
        let applied = seccompiler::apply_filter(refused_opens)
            .and_then(|()| seccompiler::apply_filter(&filters[kind.index()]));
        if let Err(e) = applied {
            eprintln!(
                "hypervisor-harness: seccomp: cannot install the filter of thread {}: {e}",
                kind.name()
            );
            std::process::exit(EXIT_SECCOMP);
        }
    }
    if policy.selftest == Some(kind) {
        forbidden_call();
    }
}

/// A call no allow-list has: executing a program. Harmless without a filter (there is no such
/// program), fatal under one.
fn forbidden_call() {
    let path = c"/nonexistent/hypervisor-harness-seccomp-selftest";
    let argv = [path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    // SAFETY: path, argv and envp are NUL-terminated and outlive the call; it fails (ENOENT)
    // or traps, and does not return into anything else.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
}

fn compile(kind: ThreadKind) -> Result<BpfProgram, String> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        allow_lists::rules(kind).map_err(|e| format!("seccomp {}: {e}", kind.name()))?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Trap,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| format!("seccomp {}: {e}", kind.name()))?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp {}: {e}", kind.name()))
}

/// openat fails with EACCES, every other call passes (to the allow-list, which lets openat
/// through to this one: of two filters' answers the kernel takes the stricter).
fn compile_refused_opens() -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_openat, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp: {e}"))
}

fn install_sigsys_handler() -> Result<(), String> {
    // SAFETY: a zeroed sigaction is valid; we fill in the handler, its flags and its mask.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = sigsys_handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: sa_mask is ours to initialise; the handler is async-signal-safe (see it).
    let rc = unsafe {
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(format!(
            "seccomp: SIGSYS handler: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Byte offset of `si_syscall` in a SIGSYS siginfo_t (x86_64): si_signo, si_errno, si_code and
/// padding (16 bytes), then `_sigsys { void *_call_addr; int _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Formats the line into a stack buffer and writes it with write(2), then _exit(2): nothing
/// here allocates or locks. Both calls are on every allow-list.
extern "C" fn sigsys_handler(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t; for SIGSYS from seccomp (si_code
    // SYS_SECCOMP) the int at SI_SYSCALL_OFFSET is the system call's number.
    let nr =
        unsafe { std::ptr::read_unaligned(info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>()) };
    let kind = KIND.with(|k| k.get()).map_or("unknown", ThreadKind::name);
    let mut line = LineBuf::default();
    line.push(b"hypervisor-harness: seccomp: thread ");
    line.push(kind.as_bytes());
    line.push(b" made forbidden system call ");
    line.push_number(nr);
    line.push(b"\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is live for the call.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// A fixed buffer for the handler's one line.
struct LineBuf {
    buf: [u8; 128],
    len: usize,
}

impl Default for LineBuf {
    fn default() -> Self {
        Self {
            buf: [0; 128],
            len: 0,
        }
    }
}

impl LineBuf {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if let Some(slot) = self.buf.get_mut(self.len) {
                *slot = b;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, n: i32) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 10];
        let mut v = n.unsigned_abs();
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in ThreadKind::ALL {
            let prog = compile(kind).unwrap();
            assert!(!prog.is_empty(), "{}", kind.name());
        }
    }

    #[test]
    fn the_open_refusal_compiles() {
        assert!(!compile_refused_opens().unwrap().is_empty());
    }

    /// Under a kind's filters (on a thread of this test process, which filters it alone):
    /// allowed calls work and opening a file fails with EACCES. (A forbidden call would kill
    /// the test process: tests/seccomp.rs checks those in the harness binary.)
    #[test]
    fn under_the_filters_opens_fail_with_eacces() {
        let allow = compile(ThreadKind::DeviceIo).unwrap();
        let refused = compile_refused_opens().unwrap();
        let (opened, wrote) = std::thread::spawn(move || {
            seccompiler::apply_filter(&refused).unwrap();
            seccompiler::apply_filter(&allow).unwrap();
            let opened = std::fs::File::open("/proc/self/status").map_err(|e| e.raw_os_error());
            // SAFETY: a zero-length write to stderr.
            let wrote = unsafe { libc::write(2, [0u8; 1].as_ptr().cast(), 0) };
            (opened, wrote)
        })
        .join()
        .unwrap();
        assert_eq!(opened.unwrap_err(), Some(libc::EACCES));
        assert_eq!(wrote, 0);
    }

    #[test]
    fn the_line_formats_without_allocating() {
        let mut l = LineBuf::default();
        l.push(b"call ");
        l.push_number(59);
        l.push(b" ");
        l.push_number(0);
        l.push(b" ");
        l.push_number(-1);
        assert_eq!(&l.buf[..l.len], b"call 59 0 -1");
        let mut full = LineBuf::default();
        full.push(&[b'x'; 200]);
        assert_eq!(full.len, 128, "cut, not overrun");
    }

    #[test]
    fn names_are_the_selftest_values() {
        use clap::ValueEnum;
        for kind in ThreadKind::ALL {
            let v = kind.to_possible_value().unwrap();
            assert_eq!(v.get_name(), kind.name());
        }
    }
}
