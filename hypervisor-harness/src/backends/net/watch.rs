//! A NIC model's backend thread watches its backend's fds on an epoll: the readiness fd
//! ([`super::NetBackend::rx_ready_fd`]) while the device can take frames, and the
//! [`super::NetBackend::tx_wait_fd`] while a transmit pass waits for room. Some backends (a
//! stream socket) use one fd for both, and an fd can be registered only once, so the two
//! interests then share one registration. Every NIC model's thread (virtio-net, e1000,
//! RTL8139) keeps its watches through this.

use std::io;
use std::os::fd::RawFd;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub struct BackendWatches {
    rx_fd: RawFd,
    tx_fd: Option<RawFd>,
    rx_token: u64,
    tx_token: u64,
    rx_on: bool,
    tx_on: bool,
}

/// What an event on one of the watches means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Readiness {
    /// Frames may be waiting (or the backend hung up: a receive pass finds out).
    pub rx: bool,
    /// Room may have come for a held transmit.
    pub tx: bool,
}

impl BackendWatches {
    /// Nothing watched yet; events carry `rx_token` (the readiness fd, and a shared fd) or
    /// `tx_token` (a separate wait fd).
    pub fn new(rx_fd: RawFd, tx_fd: Option<RawFd>, rx_token: u64, tx_token: u64) -> Self {
        Self {
            rx_fd,
            tx_fd,
            rx_token,
            tx_token,
            rx_on: false,
            tx_on: false,
        }
    }

    /// Whether the backend has a wait fd at all (without one, a held transmit is retried on a
    /// timer).
    pub fn has_tx_fd(&self) -> bool {
        self.tx_fd.is_some()
    }

    /// Watch for frames while `rx`, for room while `tx`.
    pub fn update(&mut self, epoll: &Epoll, rx: bool, tx: bool) -> io::Result<()> {
        let tx = tx && self.tx_fd.is_some();
        match self.tx_fd {
            Some(fd) if fd == self.rx_fd => {
                let set = |rx: bool, tx: bool| {
                    let mut s = EventSet::empty();
                    if rx {
                        s |= EventSet::IN;
                    }
                    if tx {
                        s |= EventSet::OUT;
                    }
                    s
                };
                let (had, want) = (set(self.rx_on, self.tx_on), set(rx, tx));
                if had != want {
                    let op = match (had.is_empty(), want.is_empty()) {
                        (true, _) => ControlOperation::Add,
                        (false, true) => ControlOperation::Delete,
                        (false, false) => ControlOperation::Modify,
                    };
                    epoll.ctl(op, fd, EpollEvent::new(want, self.rx_token))?;
                }
                (self.rx_on, self.tx_on) = (rx, tx);
            }
            tx_fd => {
                if rx != self.rx_on {
                    watch(epoll, self.rx_fd, rx, EventSet::IN, self.rx_token)?;
                    self.rx_on = rx;
                }
                if let Some(fd) = tx_fd.filter(|_| tx != self.tx_on) {
                    watch(epoll, fd, tx, EventSet::OUT, self.tx_token)?;
                    self.tx_on = tx;
                }
            }
        }
        Ok(())
    }

    /// What `ev` says, if it is one of these watches' events (`None` for other tokens).
    pub fn readiness(&self, ev: &EpollEvent) -> Option<Readiness> {
        let on_rx_fd = ev.data() == self.rx_token;
        if !on_rx_fd && ev.data() != self.tx_token {
            return None;
        }
        let set = ev.event_set();
        let any = EventSet::HANG_UP | EventSet::ERROR;
        let tx_here = !on_rx_fd || self.tx_fd == Some(self.rx_fd);
        Some(Readiness {
            rx: on_rx_fd && self.rx_on && set.intersects(EventSet::IN | any),
            tx: tx_here && self.tx_on && set.intersects(EventSet::OUT | any),
        })
    }
}

fn watch(epoll: &Epoll, fd: RawFd, on: bool, set: EventSet, token: u64) -> io::Result<()> {
    let op = if on {
        ControlOperation::Add
    } else {
        ControlOperation::Delete
    };
    epoll.ctl(op, fd, EpollEvent::new(set, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn events(epoll: &Epoll) -> Vec<EpollEvent> {
        let mut ev = [EpollEvent::default(); 4];
        let n = epoll.wait(0, &mut ev).unwrap();
        ev[..n].to_vec()
    }

    /// One socket for both directions: one registration, IN and OUT as asked, and an event
    /// on it says which of the two it is for.
    #[test]
    fn a_shared_fd_is_registered_once() {
        let (a, b) = UnixStream::pair().unwrap();
        let epoll = Epoll::new().unwrap();
        let fd = a.as_raw_fd();
        let mut w = BackendWatches::new(fd, Some(fd), 1, 2);
        w.update(&epoll, true, false).unwrap();
        assert!(events(&epoll).is_empty(), "nothing to read yet");
        w.update(&epoll, true, true).unwrap();
        let ev = events(&epoll);
        assert_eq!(ev.len(), 1);
        assert_eq!(
            w.readiness(&ev[0]),
            Some(Readiness {
                rx: false,
                tx: true
            })
        );
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        let ev = events(&epoll);
        assert_eq!(w.readiness(&ev[0]), Some(Readiness { rx: true, tx: true }));
        w.update(&epoll, false, false).unwrap();
        assert!(events(&epoll).is_empty(), "unwatched");
        // Watching again after a delete is an add, not an error.
        w.update(&epoll, false, true).unwrap();
        assert_eq!(events(&epoll).len(), 1);
        assert_eq!(w.readiness(&EpollEvent::new(EventSet::IN, 7)), None);
    }

    /// Separate fds: each its own registration and token.
    #[test]
    fn separate_fds_each_have_their_token() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        let epoll = Epoll::new().unwrap();
        let mut w = BackendWatches::new(a.as_raw_fd(), Some(c.as_raw_fd()), 1, 2);
        w.update(&epoll, true, true).unwrap();
        std::io::Write::write_all(&mut &b, b"x").unwrap();
        let ev = events(&epoll);
        let r: Vec<Readiness> = ev.iter().filter_map(|e| w.readiness(e)).collect();
        assert!(
            r.contains(&Readiness {
                rx: true,
                tx: false
            }),
            "{r:?}"
        );
        assert!(
            r.contains(&Readiness {
                rx: false,
                tx: true
            }),
            "{r:?}"
        );
        // No wait fd: asking for room watches nothing.
        let mut none = BackendWatches::new(a.as_raw_fd(), None, 3, 4);
        let epoll = Epoll::new().unwrap();
        none.update(&epoll, false, true).unwrap();
        assert!(!none.has_tx_fd());
        assert!(events(&epoll).is_empty());
    }
}
