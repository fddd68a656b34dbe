//! The allow-list of each thread kind: the system calls it makes once its set-up is done (found
//! with `strace -f` over the integration tests), grouped by what needs them. `ioctl` is allowed
//! only with the request numbers listed (KVM_RUN, the interrupt lines, ...); `socket` only
//! for IPv4 and IPv6.

use super::ThreadKind;
use seccompiler::{
    BackendError as Error, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule,
};
use std::collections::BTreeMap;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

// The KVM ioctls made after set-up, from the kernel's <linux/kvm.h> (KVMIO = 0xAE).
vmm_sys_util::ioctl_io_nr!(KVM_RUN, 0xAE, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, 0xAE, 0x81, kvm_bindings::kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, 0xAE, 0x83, kvm_bindings::kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, 0xAE, 0x85, kvm_bindings::kvm_translation);
vmm_sys_util::ioctl_iow_nr!(KVM_IRQ_LINE, 0xAE, 0x61, kvm_bindings::kvm_irq_level);
vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    0xAE,
    0x6a,
    kvm_bindings::kvm_irq_routing
);

/// Every thread: memory, locks, time, signals, its own end, and the SIGSYS handler's write and
/// _exit (a handler whose call traps again would die of SIGSYS without its line). `openat`
/// passes here to the second filter, which makes it fail with EACCES (see the module above).
const COMMON: &[libc::c_long] = &[
    libc::SYS_openat,
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_madvise,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getrandom,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_restart_syscall,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// A disk backend's I/O (RawDisk: positioned reads and writes, flush, and fallocate for
/// discard and write-zeroes).
const DISK: &[libc::c_long] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_lseek,
    libc::SYS_fallocate,
    // cache=none's io_uring: submitting and reaping. The ring is set up (io_uring_setup,
    // io_uring_register for its eventfd) on the main thread before any filter, so neither
    // of those is allowed here.
    libc::SYS_io_uring_enter,
];

/// A NIC backend's I/O: TAP and stream reads and writes, and the user-mode backend's host
/// sockets, which it opens and closes as the guest's flows come and go.
const NET: &[libc::c_long] = &[
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_sendmsg,
    libc::SYS_recvmsg,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
];

/// A socket's clients (the console's port, the monitor).
const SOCKET_SERVER: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_setsockopt,
    libc::SYS_sendto,
    libc::SYS_recvfrom,
    libc::SYS_shutdown,
    libc::SYS_fcntl,
];

/// The watchdog's kick: pthread_kill. (Its hard deadline's report and end, write and
/// exit_group, are common.)
const SIGNAL_THREAD: &[libc::c_long] = &[libc::SYS_tgkill];

/// The ioctl requests of a kind.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    // Raising an interrupt: an INTx level, or a new MSI route for a vector the guest moved.
    let interrupts = [KVM_IRQ_LINE(), KVM_SET_GSI_ROUTING()];
    let mut v: Vec<u64> = match kind {
        // The state in a fault's report: registers, and RIP's code through KVM_TRANSLATE.
        ThreadKind::Vcpu => vec![KVM_RUN(), KVM_GET_REGS(), KVM_GET_SREGS(), KVM_TRANSLATE()],
        ThreadKind::Watchdog => return vec![],
        ThreadKind::DeviceIo
        | ThreadKind::NicBackend
        | ThreadKind::ConsolePort
        | ThreadKind::Monitor => vec![],
    };
    v.extend(interrupts);
    // std's set_nonblocking on a socket.
    v.push(libc::FIONBIO);
    v
}

fn syscalls(kind: ThreadKind) -> Vec<libc::c_long> {
    let groups: &[&[libc::c_long]] = match kind {
        // Inline virtio queues and IDE reach the disks; the emulated NICs transmit on the
        // guest's register write; the stats fd is read at each phase mark.
        // (--balloon: the guest's RSS at each phase mark, by mincore.)
        ThreadKind::Vcpu => &[COMMON, DISK, NET, &[libc::SYS_mincore]],
        // The console's queues write to its port's socket.
        ThreadKind::DeviceIo => &[COMMON, DISK, NET],
        ThreadKind::NicBackend => &[COMMON, NET],
        ThreadKind::ConsolePort => &[COMMON, SOCKET_SERVER],
        // `info exits` reads the KVM stats fds.
        ThreadKind::Monitor => &[COMMON, SOCKET_SERVER, &[libc::SYS_pread64]],
        ThreadKind::Watchdog => &[COMMON, SIGNAL_THREAD],
    };
    let mut v: Vec<libc::c_long> = groups.iter().flat_map(|g| g.iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn arg_equals(index: u8, value: u64) -> Result<SeccompRule, Error> {
    let len = if value > u64::from(u32::MAX) {
        SeccompCmpArgLen::Qword
    } else {
        SeccompCmpArgLen::Dword
    };
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        len,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// The filter rules of `kind`: an empty rule list allows the call outright.
pub(super) fn rules(kind: ThreadKind) -> Result<Rules, Error> {
    let mut rules: Rules = syscalls(kind).into_iter().map(|nr| (nr, vec![])).collect();
    let requests = ioctls(kind);
    if !requests.is_empty() {
        let chain = requests
            .into_iter()
            .map(|r| arg_equals(1, r))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_ioctl, chain);
    }
    if syscalls(kind).contains(&libc::SYS_connect) {
        let chain = [libc::AF_INET, libc::AF_INET6]
            .into_iter()
            .map(|domain| arg_equals(0, domain as u64))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_socket, chain);
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_kind_may_execute_or_open() {
        for kind in ThreadKind::ALL {
            let r = rules(kind).unwrap();
            for nr in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_open,
                libc::SYS_clone,
                libc::SYS_fork,
                libc::SYS_ptrace,
            ] {
                assert!(!r.contains_key(&nr), "{} allows {nr}", kind.name());
            }
        }
    }

    #[test]
    fn only_the_vcpu_runs_the_vcpu() {
        for kind in ThreadKind::ALL {
            let has_run = ioctls(kind).contains(&KVM_RUN());
            assert_eq!(has_run, kind == ThreadKind::Vcpu, "{}", kind.name());
        }
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_IRQ_LINE(), 0x4008_ae61);
    }

    /// The watchdog's hard deadline writes its report and ends the process from the watchdog
    /// thread (tests/watchdog.rs does it under the filter).
    #[test]
    fn the_watchdog_may_report_and_exit() {
        let r = rules(ThreadKind::Watchdog).unwrap();
        for nr in [libc::SYS_write, libc::SYS_exit_group, libc::SYS_tgkill] {
            assert!(r.contains_key(&nr), "watchdog lacks {nr}");
        }
    }

    /// Discard and write-zeroes run on whichever thread serves the queue.
    #[test]
    fn disk_threads_may_fallocate() {
        for kind in [ThreadKind::Vcpu, ThreadKind::DeviceIo] {
            assert!(
                rules(kind).unwrap().contains_key(&libc::SYS_fallocate),
                "{}",
                kind.name()
            );
        }
    }
}
