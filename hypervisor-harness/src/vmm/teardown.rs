//! The VM's teardown, off the run's critical path.
//!
//! Destroying a KVM VM waits for RCU grace periods and for the in-kernel PIT's worker thread to
//! stop: on kvm_pvm here 12 to 20 ms of an empty run's 31, all of it after the guest's exit
//! (with no PIT the close of the VM fd took 5 ms instead of 18 to 24). A process that is about
//! to exit can hand that wait to a helper: a forked child holds copies of every fd (the VM's
//! among them) until this process has exited, so the child, not we, drops the last reference
//! and destroys the VM, and whoever waits for our exit does not wait for it.

use std::io;

/// Fork the helper. Call it only from a process that exits soon after (the helper keeps the
/// VM alive until then). Returns in the parent only.
pub fn hand_off() -> io::Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the two-element array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    // SAFETY: fork has no preconditions; the child below makes only async-signal-safe calls
    // (close, read, _exit): no allocation, no locks, no destructors, as a child of a
    // multithreaded process must.
    match unsafe { libc::fork() } {
        -1 => {
            let e = io::Error::last_os_error();
            // SAFETY: both fds are ours, from pipe2 above.
            unsafe {
                libc::close(read_end);
                libc::close(write_end);
            }
            Err(e)
        }
        0 => {
            // SAFETY: closing fds the child inherited; `byte` is a live one-byte buffer.
            unsafe {
                libc::close(write_end);
                // Our stdin, stdout and stderr: whoever reads our output sees its end at our
                // exit, not the helper's.
                for fd in 0..3 {
                    libc::close(fd);
                }
                let mut byte = 0u8;
                // End of file once the parent's copy of the write end is closed: it exited.
                while libc::read(read_end, (&raw mut byte).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::_exit(0)
            }
        }
        _helper => {
            // The write end stays open until we exit: that is the helper's signal.
            // SAFETY: the read end is ours and only the helper needs it.
            unsafe { libc::close(read_end) };
            Ok(())
        }
    }
}
