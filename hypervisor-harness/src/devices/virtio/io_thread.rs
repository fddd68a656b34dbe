//! The I/O thread of `IoMode::Thread`: one per device. It sleeps in epoll on the queues'
//! notify eventfds (bound to the notify addresses with KVM_IOEVENTFD by `vmm/`, so a notify
//! costs the guest no userspace exit), and processes a queue whenever its eventfd fires. The
//! transport raises the completion interrupt (an irqfd) from this thread.

use super::transport_pci::VirtioPciDevice;
use crate::devices::lock;
use std::io;
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Spawn the thread. `notifies` pairs a queue index with its eventfd. The thread ends when
/// epoll fails (never in a normal run; the process exits with the VM).
pub fn spawn(
    name: &str,
    dev: Arc<Mutex<VirtioPciDevice>>,
    notifies: Vec<(usize, EventFd)>,
) -> io::Result<std::thread::JoinHandle<()>> {
    let epoll = Epoll::new()?;
    for (i, (_, evt)) in notifies.iter().enumerate() {
        use std::os::unix::io::AsRawFd;
        epoll.ctl(
            ControlOperation::Add,
            evt.as_raw_fd(),
            EpollEvent::new(EventSet::IN, i as u64),
        )?;
    }
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let mut events = vec![EpollEvent::default(); notifies.len().max(1)];
            loop {
                let n = match epoll.wait(-1, &mut events) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                for ev in &events[..n] {
                    let Some((queue, evt)) = notifies.get(ev.data() as usize) else {
                        continue;
                    };
                    // Non-blocking: a spurious wakeup just finds nothing.
                    if evt.read().is_ok() {
                        lock(&dev).process_queue(*queue);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::blk::Blk;
    use crate::devices::virtio::test_util::RecordingIrq;
    use crate::devices::virtio::Memory;
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;

    #[test]
    fn eventfd_wakes_the_thread_which_processes_the_queue() {
        let dir = std::env::temp_dir().join(format!("vblk-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.img");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let disk = crate::backends::disk::RawDisk::open(&path, false).unwrap();
        let mem = Memory::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let irq = Arc::new(RecordingIrq::default());
        let dev = VirtioPciDevice::new(Box::new(Blk::on_raw(disk)), mem, irq.clone(), 11).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn("test-io", dev.clone(), vec![(0, evt)]).unwrap();
        writer.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while lock(&dev).stats.notifies == 0 {
            assert!(Instant::now() < deadline, "I/O thread never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
