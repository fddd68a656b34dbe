//! The user network's read-only TFTP server (RFC 1350, octet mode, with the blksize and tsize
//! options of RFC 2347/2348/2349) at the host alias's port 69, serving the files under
//! `tftp=DIR`, as slirp's does: replies come from port 69, one transfer per guest port, at
//! most [`MAX_SESSIONS`] at once. A name that is absolute, holds `..`, or resolves (through
//! symlinks) outside DIR is an access violation; a write request too. Without `tftp=`, every
//! request is refused the same way.
//!
//! The files are read when the backend opens, before the VMM's threads lose the right to open
//! files (seccomp): the guest gets them as they were at start, up to [`MAX_FILES`] files and
//! [`MAX_BYTES`] in all (more is an error at start, not a silent cut).
//!
//! Each DATA block waits for its ACK; a block not acknowledged within [`RETRANSMIT`] is sent
//! again, [`MAX_RETRIES`] times, then the transfer is dropped. A duplicate ACK is ignored
//! (answering it would double every later block: the "Sorcerer's Apprentice" bug).

use super::frame::{udp_frame, UdpDatagram};
use smoltcp::wire::{EthernetAddress, Ipv4Address};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PORT: u16 = 69;
pub const MAX_SESSIONS: usize = 20;
pub const RETRANSMIT: Duration = Duration::from_secs(1);
pub const MAX_RETRIES: u32 = 5;
/// What `tftp=DIR` may hold, read at start; and how deep its directories are followed.
pub const MAX_FILES: usize = 4096;
pub const MAX_BYTES: usize = 256 << 20;
const MAX_DEPTH: usize = 16;
/// RFC 1350's block size, and the largest we grant: a DATA packet in one 1500-byte frame.
pub const DEFAULT_BLOCK: usize = 512;
pub const MAX_BLOCK: usize = 1500 - 20 - 8 - 4;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// RFC 1350's error codes.
pub const ERR_NOT_DEFINED: u16 = 0;
pub const ERR_NOT_FOUND: u16 = 1;
pub const ERR_ACCESS: u16 = 2;
pub const ERR_ILLEGAL: u16 = 4;

/// What the server did, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TftpCounters {
    pub requests: u64,
    /// Transfers that ended with the last block acknowledged; their bytes.
    pub completed: u64,
    pub bytes_sent: u64,
    /// Blocks sent again after [`RETRANSMIT`]; transfers dropped after [`MAX_RETRIES`].
    pub retransmits: u64,
    pub timed_out: u64,
    /// Error packets sent (file not found, access violation, ...).
    pub errors_sent: u64,
    /// Transfers the guest aborted with an error packet.
    pub aborted_by_guest: u64,
}

/// One transfer, known by the guest's address and port.
struct Session {
    guest_mac: EthernetAddress,
    guest: (Ipv4Address, u16),
    /// The host alias: the source of our packets.
    alias: Ipv4Address,
    content: Arc<[u8]>,
    /// Bytes of `content` sent before the block in flight.
    offset: usize,
    block_size: usize,
    /// The block sent last and waiting for its ACK (0: the OACK).
    block: u16,
    /// The packet sent last, for a retransmission.
    packet: Vec<u8>,
    /// The block in flight is the last (shorter than `block_size`).
    last: bool,
    sent_at: Instant,
    retries: u32,
}

/// `tftp=DIR` as read at start.
#[derive(Default)]
struct Served {
    /// Each regular file by its name under DIR (`a/b`, no `.` or empty components).
    files: HashMap<String, Arc<[u8]>>,
    /// Names (files or directories) whose symlinks lead outside DIR.
    escaping: HashSet<String>,
}

pub struct TftpServer {
    /// `None`: no `tftp=`, no TFTP service.
    served: Option<Served>,
    /// The MAC our packets come from (the host alias's).
    mac: EthernetAddress,
    sessions: Vec<Session>,
    counters: TftpCounters,
}

impl TftpServer {
    /// Serve the files under `root` (canonical), read now; an error names what is wrong.
    pub fn new(root: Option<&Path>, mac: EthernetAddress) -> io::Result<Self> {
        let served = match root {
            None => None,
            Some(root) => {
                let mut served = Served::default();
                let mut bytes = 0;
                read_tree(root, root, "", 0, &mut served, &mut bytes).map_err(|e| {
                    io::Error::new(e.kind(), format!("tftp={}: {e}", root.display()))
                })?;
                Some(served)
            }
        };
        Ok(Self {
            served,
            mac,
            sessions: Vec::new(),
            counters: TftpCounters::default(),
        })
    }

    pub fn counters(&self) -> TftpCounters {
        self.counters
    }

    /// A guest datagram to the alias's port 69; replies into `out`.
    pub fn handle(&mut self, d: &UdpDatagram<'_>, mut out: impl FnMut(Vec<u8>)) {
        let guest = (d.src_ip, d.src_port);
        let p = d.payload;
        if p.len() < 2 {
            return;
        }
        let reply =
            |s: &Self, packet: &[u8]| udp_frame(s.mac, d.src_mac, (d.dst_ip, PORT), guest, packet);
        let error = |s: &mut Self, code: u16, message: &str| {
            s.counters.errors_sent += 1;
            reply(s, &error_packet(code, message))
        };
        match u16::from_be_bytes([p[0], p[1]]) {
            RRQ => {
                self.counters.requests += 1;
                // A new request from the same port starts over.
                self.sessions.retain(|s| s.guest != guest);
                match self.open(&p[2..]) {
                    Err((code, message)) => out(error(self, code, &message)),
                    Ok(_) if self.sessions.len() >= MAX_SESSIONS => {
                        out(error(self, ERR_NOT_DEFINED, "too many transfers"))
                    }
                    Ok((content, options)) => {
                        let mut s = Session {
                            guest_mac: d.src_mac,
                            guest,
                            alias: d.dst_ip,
                            content,
                            offset: 0,
                            block_size: options.block_size.unwrap_or(DEFAULT_BLOCK),
                            block: 0,
                            packet: Vec::new(),
                            last: false,
                            sent_at: Instant::now(),
                            retries: 0,
                        };
                        s.packet = if options.granted.is_empty() {
                            s.next_block()
                        } else {
                            oack_packet(&options.granted)
                        };
                        out(reply(self, &s.packet));
                        self.counters.bytes_sent += s.data_len() as u64;
                        self.sessions.push(s);
                    }
                }
            }
            WRQ => out(error(self, ERR_ACCESS, "read-only server")),
            ACK if p.len() >= 4 => {
                let block = u16::from_be_bytes([p[2], p[3]]);
                let Some(i) = self.sessions.iter().position(|s| s.guest == guest) else {
                    return;
                };
                let s = &mut self.sessions[i];
                if block != s.block {
                    return; // a duplicate: the timer resends, not this
                }
                if s.last {
                    self.sessions.swap_remove(i);
                    self.counters.completed += 1;
                    return;
                }
                s.packet = s.next_block();
                s.sent_at = Instant::now();
                s.retries = 0;
                self.counters.bytes_sent += s.data_len() as u64;
                out(udp_frame(
                    self.mac,
                    s.guest_mac,
                    (s.alias, PORT),
                    guest,
                    &s.packet,
                ));
            }
            ERROR => {
                let before = self.sessions.len();
                self.sessions.retain(|s| s.guest != guest);
                if self.sessions.len() < before {
                    self.counters.aborted_by_guest += 1;
                }
            }
            // A DATA or OACK to a server, a short ACK, an unknown opcode.
            _ => out(error(self, ERR_ILLEGAL, "illegal TFTP operation")),
        }
    }

    /// Resend what waited too long, drop what waited too often; how long until the next.
    pub fn tick(&mut self, mut out: impl FnMut(Vec<u8>)) -> Option<Duration> {
        let now = Instant::now();
        let (mac, counters) = (self.mac, &mut self.counters);
        let mut next: Option<Duration> = None;
        self.sessions.retain_mut(|s| {
            let waited = now - s.sent_at;
            if waited >= RETRANSMIT {
                if s.retries == MAX_RETRIES {
                    counters.timed_out += 1;
                    return false;
                }
                s.retries += 1;
                s.sent_at = now;
                counters.retransmits += 1;
                out(udp_frame(
                    mac,
                    s.guest_mac,
                    (s.alias, PORT),
                    s.guest,
                    &s.packet,
                ));
            }
            let left = RETRANSMIT.saturating_sub(now - s.sent_at);
            next = Some(next.map_or(left, |n| n.min(left)));
            true
        });
        next
    }

    /// A read request's file and the options granted; or the error to send.
    fn open(&self, request: &[u8]) -> Result<(Arc<[u8]>, Options), ErrorReply> {
        let mut fields = request.split(|&b| b == 0);
        let (Some(name), Some(mode)) = (fields.next(), fields.next()) else {
            return Err((ERR_ILLEGAL, "malformed request".into()));
        };
        if !request.ends_with(&[0]) {
            return Err((ERR_ILLEGAL, "malformed request".into()));
        }
        if !mode.eq_ignore_ascii_case(b"octet") {
            return Err((ERR_ILLEGAL, "only octet mode is served".into()));
        }
        let Some(served) = &self.served else {
            return Err((ERR_ACCESS, "no TFTP directory (tftp=)".into()));
        };
        let name = std::str::from_utf8(name).map_err(|_| (ERR_ACCESS, "bad name".into()))?;
        let content = served.lookup(name)?;
        let size = content.len() as u64;
        let mut options = Options::default();
        let mut rest: Vec<&[u8]> = fields.collect();
        rest.pop(); // the empty field after the final NUL
        for pair in rest.chunks(2) {
            let [key, value] = pair else { break };
            let key = String::from_utf8_lossy(key).to_ascii_lowercase();
            let value = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match (key.as_str(), value) {
                ("blksize", Some(v)) if v >= 8 => {
                    let granted = (v as usize).min(MAX_BLOCK);
                    options.block_size = Some(granted);
                    options.granted.push(("blksize", granted as u64));
                }
                ("tsize", Some(_)) => options.granted.push(("tsize", size)),
                _ => {} // not granted: left out of the OACK (RFC 2347)
            }
        }
        Ok((content, options))
    }
}

/// The error packet to send instead: its code and message.
type ErrorReply = (u16, String);

#[derive(Default)]
struct Options {
    block_size: Option<usize>,
    granted: Vec<(&'static str, u64)>,
}

impl Session {
    /// The next block's DATA packet (after the OACK, or the block acknowledged).
    fn next_block(&mut self) -> Vec<u8> {
        self.offset += self.data_len();
        self.block = self.block.wrapping_add(1);
        let end = (self.offset + self.block_size).min(self.content.len());
        let data = &self.content[self.offset..end];
        self.last = data.len() < self.block_size;
        let mut packet = Vec::with_capacity(4 + data.len());
        packet.extend_from_slice(&DATA.to_be_bytes());
        packet.extend_from_slice(&self.block.to_be_bytes());
        packet.extend_from_slice(data);
        packet
    }

    /// File bytes in the packet in flight.
    fn data_len(&self) -> usize {
        match self.packet.get(..2) {
            Some(op) if op == DATA.to_be_bytes() => self.packet.len() - 4,
            _ => 0,
        }
    }
}

impl Served {
    /// The file a request names, or the error to send: the name must be relative, without
    /// `..`, and not through a symlink that leads outside DIR.
    fn lookup(&self, name: &str) -> Result<Arc<[u8]>, ErrorReply> {
        let denied = || (ERR_ACCESS, "access violation".to_string());
        if name.is_empty() || name.starts_with('/') {
            return Err(denied());
        }
        let mut key = String::new();
        for part in name.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if part == ".." {
                return Err(denied());
            }
            if !key.is_empty() {
                key.push('/');
            }
            key.push_str(part);
            if self.escaping.contains(&key) {
                return Err(denied());
            }
        }
        self.files
            .get(&key)
            .cloned()
            .ok_or_else(|| (ERR_NOT_FOUND, "file not found".to_string()))
    }
}

/// Read the regular files under `dir` (named `prefix/...`) into `served`, following symlinks
/// that stay under `root` and noting those that do not.
fn read_tree(
    root: &Path,
    dir: &Path,
    prefix: &str,
    depth: usize,
    served: &mut Served,
    bytes: &mut usize,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // not UTF-8: no TFTP name reaches it
        };
        let key = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let Ok(target) = entry.path().canonicalize() else {
            continue; // a dangling symlink
        };
        if !target.starts_with(root) {
            served.escaping.insert(key);
        } else if target.is_dir() && depth < MAX_DEPTH {
            read_tree(root, &target, &key, depth + 1, served, bytes)?;
        } else if target.is_file() {
            let content = std::fs::read(&target)?;
            *bytes += content.len();
            if served.files.len() == MAX_FILES || *bytes > MAX_BYTES {
                return Err(io::Error::other(format!(
                    "more than {MAX_FILES} files or {} MiB to serve",
                    MAX_BYTES >> 20
                )));
            }
            served.files.insert(key, content.into());
        }
    }
    Ok(())
}

fn error_packet(code: u16, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + message.len());
    p.extend_from_slice(&ERROR.to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

fn oack_packet(granted: &[(&str, u64)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (k, v) in granted {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.to_string().as_bytes());
        p.push(0);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::super::frame::parse_udp;
    use super::*;

    const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const HOST_MAC: EthernetAddress = EthernetAddress([0x52, 0x55, 10, 0, 2, 2]);
    const GUEST: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
    const ALIAS: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A directory with `boot.bin` (`len` bytes of a pattern), `sub/x`, a symlink inside
    /// (`inside` -> boot.bin) and one out (`outside` -> /etc/passwd).
    fn served(tag: &str, len: usize) -> (Dir, Vec<u8>) {
        served_with(tag, len, &[])
    }

    fn served_with(tag: &str, len: usize, more: &[(&str, &[u8])]) -> (Dir, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("hh-tftp-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let content: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(dir.join("boot.bin"), &content).unwrap();
        std::fs::write(dir.join("sub/x"), b"x").unwrap();
        std::os::unix::fs::symlink("boot.bin", dir.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("outside")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("etc")).unwrap();
        for (name, content) in more {
            std::fs::write(dir.join(name), content).unwrap();
        }
        (Dir(dir.canonicalize().unwrap()), content)
    }

    fn server(dir: &Dir) -> TftpServer {
        TftpServer::new(Some(&dir.0), HOST_MAC).unwrap()
    }

    fn request(op: u16, name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut p = op.to_be_bytes().to_vec();
        for f in [name, mode]
            .into_iter()
            .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
        {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    fn ack(block: u16) -> Vec<u8> {
        let mut p = ACK.to_be_bytes().to_vec();
        p.extend_from_slice(&block.to_be_bytes());
        p
    }

    /// Send `payload` from the guest's `port`; the payloads of the answers.
    fn send(server: &mut TftpServer, port: u16, payload: &[u8]) -> Vec<Vec<u8>> {
        let frame = udp_frame(GUEST_MAC, HOST_MAC, (GUEST, port), (ALIAS, PORT), payload);
        let mut replies = Vec::new();
        server.handle(&parse_udp(&frame).unwrap(), |f| {
            let d = parse_udp(&f).unwrap();
            assert_eq!((d.src_ip, d.src_port), (ALIAS, PORT));
            assert_eq!((d.dst_ip, d.dst_port, d.dst_mac), (GUEST, port, GUEST_MAC));
            replies.push(d.payload.to_vec());
        });
        replies
    }

    fn error_of(replies: &[Vec<u8>]) -> (u16, String) {
        assert_eq!(replies.len(), 1);
        let p = &replies[0];
        assert_eq!(&p[..2], &ERROR.to_be_bytes(), "{p:?}");
        let msg = String::from_utf8_lossy(&p[4..p.len() - 1]).into_owned();
        (u16::from_be_bytes([p[2], p[3]]), msg)
    }

    /// Fetch `name` with `options`, acknowledging every block; the file's bytes.
    fn fetch(server: &mut TftpServer, port: u16, name: &str, options: &[(&str, &str)]) -> Vec<u8> {
        let mut replies = send(server, port, &request(RRQ, name, "octet", options));
        let mut content = Vec::new();
        let mut expected = 1u16;
        loop {
            assert_eq!(replies.len(), 1);
            let p = replies.pop().unwrap();
            match u16::from_be_bytes([p[0], p[1]]) {
                OACK => replies = send(server, port, &ack(0)),
                DATA => {
                    let block = u16::from_be_bytes([p[2], p[3]]);
                    assert_eq!(block, expected);
                    content.extend_from_slice(&p[4..]);
                    replies = send(server, port, &ack(block));
                    expected = expected.wrapping_add(1);
                    if replies.is_empty() {
                        return content;
                    }
                }
                other => panic!("opcode {other}: {p:?}"),
            }
        }
    }

    #[test]
    fn serves_a_file_in_512_byte_blocks_and_with_blksize() {
        let (dir, content) = served_with("fetch", 100 * 1024, &[("even", &[5u8; 1024])]);
        let mut s = server(&dir);
        assert_eq!(fetch(&mut s, 1000, "boot.bin", &[]), content);
        assert_eq!(
            fetch(&mut s, 1001, "./inside", &[("blksize", "1432")]),
            content
        );
        // An exact multiple of the block size ends with an empty block.
        assert_eq!(fetch(&mut s, 1002, "even", &[]), [5u8; 1024]);
        assert_eq!(fetch(&mut s, 1003, "sub/x", &[]), b"x");
        let c = s.counters();
        assert_eq!((c.requests, c.completed), (4, 4));
        assert_eq!(c.bytes_sent, 2 * 100 * 1024 + 1024 + 1);
    }

    #[test]
    fn the_oack_grants_blksize_capped_and_tsize() {
        let (dir, _) = served("oack", 3000);
        let mut s = server(&dir);
        let opts = [("blksize", "65464"), ("tsize", "0"), ("windowsize", "4")];
        let r = send(&mut s, 1000, &request(RRQ, "boot.bin", "OCTET", &opts));
        assert_eq!(
            r,
            [oack_packet(&[
                ("blksize", MAX_BLOCK as u64),
                ("tsize", 3000)
            ])]
        );
        let r = send(&mut s, 1000, &ack(0));
        assert_eq!(r[0].len(), 4 + MAX_BLOCK);
    }

    #[test]
    fn refuses_what_is_not_under_the_directory() {
        let (dir, _) = served("refuse", 10);
        let mut s = server(&dir);
        for name in [
            "../etc/passwd",
            "/etc/passwd",
            "sub/../../x",
            "outside",
            "etc/passwd",
            "",
        ] {
            let r = send(&mut s, 1000, &request(RRQ, name, "octet", &[]));
            assert_eq!(error_of(&r).0, ERR_ACCESS, "{name:?}");
        }
        for name in ["missing", "sub"] {
            let r = send(&mut s, 1000, &request(RRQ, name, "octet", &[]));
            assert_eq!(error_of(&r).0, ERR_NOT_FOUND, "{name:?}");
        }
        let r = send(&mut s, 1000, &request(WRQ, "boot.bin", "octet", &[]));
        assert_eq!(error_of(&r).0, ERR_ACCESS);
        let r = send(&mut s, 1000, &request(RRQ, "boot.bin", "netascii", &[]));
        assert_eq!(error_of(&r).0, ERR_ILLEGAL);
        let r = send(&mut s, 1000, b"\x00\x01boot.bin");
        assert_eq!(error_of(&r).0, ERR_ILLEGAL);
        let r = send(&mut s, 1000, &[0, 9, 0, 0]);
        assert_eq!(error_of(&r).0, ERR_ILLEGAL);
        assert!(send(&mut s, 1000, &[0]).is_empty());
        // Without tftp=, nothing is served.
        let mut none = TftpServer::new(None, HOST_MAC).unwrap();
        let r = send(&mut none, 1000, &request(RRQ, "boot.bin", "octet", &[]));
        assert_eq!(error_of(&r).0, ERR_ACCESS);
        assert_eq!(s.counters().errors_sent, 12);
        assert!(s.sessions.is_empty());
    }

    #[test]
    fn resends_on_time_ignores_duplicates_and_gives_up() {
        let (dir, content) = served("resend", 1000);
        let mut s = server(&dir);
        let first = send(&mut s, 1000, &request(RRQ, "boot.bin", "octet", &[]));
        assert_eq!(&first[0][4..], &content[..512]);
        // A duplicate ACK (of the OACK-less start) is not answered.
        assert!(send(&mut s, 1000, &ack(0)).is_empty());
        let mut resent = Vec::new();
        assert!(s.tick(|f| resent.push(f)).unwrap() <= RETRANSMIT);
        assert!(resent.is_empty());
        for round in 1..=MAX_RETRIES + 1 {
            s.sessions[0].sent_at -= RETRANSMIT;
            s.tick(|f| resent.push(parse_udp(&f).unwrap().payload.to_vec()));
            assert_eq!(resent.len() as u32, round.min(MAX_RETRIES), "round {round}");
        }
        assert_eq!(resent[0], first[0]);
        assert!(s.sessions.is_empty());
        let c = s.counters();
        assert_eq!((c.retransmits, c.timed_out), (MAX_RETRIES as u64, 1));
        // The guest may abort with an error packet.
        send(&mut s, 1001, &request(RRQ, "boot.bin", "octet", &[]));
        assert!(send(&mut s, 1001, &error_packet(0, "bye")).is_empty());
        assert_eq!((s.sessions.len(), s.counters().aborted_by_guest), (0, 1));
    }

    #[test]
    fn a_directory_too_large_is_an_error_at_start() {
        let dir = std::env::temp_dir().join(format!("hh-tftp-many-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Dir(dir.canonicalize().unwrap());
        for i in 0..=MAX_FILES {
            std::fs::write(dir.0.join(format!("f{i}")), b"").unwrap();
        }
        let e = TftpServer::new(Some(&dir.0), HOST_MAC)
            .err()
            .expect("too many");
        assert!(e.to_string().contains("more than 4096 files"), "{e}");
        assert!(TftpServer::new(Some(Path::new("/nonexistent")), HOST_MAC).is_err());
    }

    #[test]
    fn sessions_are_bounded() {
        let (dir, _) = served("bounded", 10_000);
        let mut s = server(&dir);
        for port in 0..MAX_SESSIONS as u16 {
            let r = send(&mut s, 2000 + port, &request(RRQ, "boot.bin", "octet", &[]));
            assert_eq!(&r[0][..2], &DATA.to_be_bytes());
        }
        let r = send(&mut s, 3000, &request(RRQ, "boot.bin", "octet", &[]));
        assert_eq!(error_of(&r).0, ERR_NOT_DEFINED);
        // The same port again replaces its own transfer.
        let r = send(&mut s, 2000, &request(RRQ, "boot.bin", "octet", &[]));
        assert_eq!(&r[0][..2], &DATA.to_be_bytes());
    }
}
