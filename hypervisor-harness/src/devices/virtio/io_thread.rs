//! The I/O thread of `IoMode::Thread`: one per device. It sleeps in epoll on the queues'
//! notify eventfds (bound to the notify addresses with KVM_IOEVENTFD by `vmm/`, so a notify
//! costs the guest no userspace exit), and processes a queue whenever its eventfd fires. The
//! transport raises the completion interrupt (an irqfd) from this thread.

use super::transport_pci::{QueueWorker, VirtioPciDevice};
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
    let worker = QueueWorker::new(&dev);
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            crate::seccomp::enter(crate::seccomp::ThreadKind::DeviceIo);
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
                        worker.notified(*queue);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_util::{pattern_disk, pattern_sector, BlkRig, GatedDisk};
    use crate::devices::virtio::transport_pci::common;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_S_OK;

    /// Far beyond anything a loaded 2-core machine needs; only a broken test waits this long.
    const PATIENCE: Duration = Duration::from_secs(60);

    fn wait_for_used(rig: &BlkRig, idx: u16) {
        let deadline = Instant::now() + PATIENCE;
        while rig.used_idx() != idx {
            assert!(
                Instant::now() < deadline,
                "I/O thread never completed the request"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn eventfd_wakes_the_thread_which_completes_a_request() {
        let mut rig = BlkRig::new(Box::new(pattern_disk(8)));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn("test-io", rig.dev.clone(), vec![(0, evt)]).unwrap();
        rig.post_read(3);
        writer.write(1).unwrap();
        wait_for_used(&rig, 1);
        // Head descriptor 0; 512 data bytes plus the status byte; status OK; the data.
        assert_eq!(rig.used_elem(0), (0, 513));
        assert_eq!(rig.status_byte(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.data(), pattern_sector(3));
        // The completion interrupt was raised (INTx: MSI-X is off) and the ISR says queue.
        assert_eq!(rig.irq.intx_count(), 1);
        assert_eq!(
            rig.read(crate::devices::virtio::transport_pci::ISR_OFFSET, 1),
            1
        );
    }

    #[test]
    fn register_reads_do_not_wait_for_a_blocked_disk() {
        let (disk, entered, release) = GatedDisk::new(pattern_disk(8));
        let mut rig = BlkRig::new(Box::new(disk));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let writer = evt.try_clone().unwrap();
        spawn("test-io", rig.dev.clone(), vec![(0, evt)]).unwrap();
        rig.post_read(5);
        writer.write(1).unwrap();
        entered
            .recv_timeout(PATIENCE)
            .expect("the I/O thread never reached the disk");
        // The I/O thread is now inside the disk read, mid-request. A vCPU-side register read
        // (device status, device configuration, ISR) must not wait for it.
        let (tx, rx) = mpsc::channel();
        let dev = rig.dev.clone();
        std::thread::spawn(move || {
            let region = |off: u64, len: usize| {
                let mut b = vec![0u8; len];
                crate::devices::bus::BusDevice::read(
                    &mut crate::devices::virtio::transport_pci::BarRegion::new(dev.clone(), 0),
                    off,
                    &mut b,
                );
                crate::devices::le_value(&b)
            };
            let status = region(common::DEVICE_STATUS, 1);
            let capacity = region(crate::devices::virtio::transport_pci::DEVICE_OFFSET, 8);
            let _ = tx.send((status, capacity));
        });
        let got = rx.recv_timeout(Duration::from_secs(20));
        // Release the disk whatever happened, so nothing is left blocked.
        let _ = release.send(());
        let (status, capacity) = got.expect("a register read waited for the disk");
        assert_eq!((status, capacity), (15, 8));
        wait_for_used(&rig, 1);
        assert_eq!(rig.used_elem(0), (0, 513));
        assert_eq!(rig.status_byte(), VIRTIO_BLK_S_OK as u8);
        assert_eq!(rig.data(), pattern_sector(5));
    }
}
