//! COM1: a 16550 from vm-superio. Output goes to a sink (stdout or a log file) and, line by
//! line, to a callback (the KTAP parser).

use super::bus::BusDevice;
use super::Interrupt;
use std::io::{self, Write};
use std::sync::Arc;
use vm_superio::{Serial, Trigger};

pub const COM1_BASE: u64 = 0x3f8;
pub const COM1_LEN: u64 = 8;
pub const COM1_GSI: u32 = 4;

/// vm-superio's interrupt trigger, forwarded to our own [`Interrupt`] trait.
pub struct SerialIrq(pub Arc<dyn Interrupt>);

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// Writes guest output to `out`, buffering until a newline, and hands each complete line
/// (without the newline, `\r` stripped) to `on_line`. The buffer holds at most [`MAX_LINE`]
/// bytes: a longer line reaches `out` whole but `on_line` cut, and is counted.
pub struct LineTee {
    out: Box<dyn Write + Send>,
    line: Vec<u8>,
    /// The most a line keeps: [`MAX_LINE`], or less for a fuzz target, whose guest would
    /// otherwise need 64 K writes per input to reach the cut.
    max_line: usize,
    on_line: LineSink,
    overflowed: bool,
    /// Lines longer than [`MAX_LINE`] (cut before `on_line` saw them).
    pub cut_lines: u64,
}

pub const MAX_LINE: usize = 64 * 1024;

impl LineTee {
    pub fn new(out: Box<dyn Write + Send>, on_line: LineSink) -> Self {
        Self::with_max_line(out, on_line, MAX_LINE)
    }

    /// A tee whose lines keep at most `max_line` bytes (at least 1).
    pub fn with_max_line(out: Box<dyn Write + Send>, on_line: LineSink, max_line: usize) -> Self {
        Self {
            out,
            line: Vec::new(),
            max_line: max_line.max(1),
            on_line,
            overflowed: false,
            cut_lines: 0,
        }
    }

    fn emit_line(&mut self) {
        if std::mem::take(&mut self.overflowed) {
            self.cut_lines += 1;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        (self.on_line)(text);
        self.line.clear();
    }

    /// Flush a partial last line (at the end of a run).
    pub fn finish(&mut self) {
        if !self.line.is_empty() {
            self.emit_line();
        }
        let _ = self.out.flush();
    }
}

impl Write for LineTee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // A broken output must not stop the guest: errors on `out` are ignored.
        let _ = self.out.write_all(buf);
        for &b in buf {
            if b == b'\n' {
                let _ = self.out.flush();
                self.emit_line();
            } else if self.line.len() < self.max_line {
                self.line.push(b);
            } else {
                self.overflowed = true;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // vm-superio flushes after every byte; we flush at line ends and in `finish`.
        Ok(())
    }
}

pub struct SerialDevice {
    serial: Serial<SerialIrq, vm_superio::serial::NoEvents, LineTee>,
}

impl SerialDevice {
    pub fn new(irq: Arc<dyn Interrupt>, out: LineTee) -> Self {
        Self {
            serial: Serial::new(SerialIrq(irq), out),
        }
    }

    pub fn finish(&mut self) {
        self.serial.writer_mut().finish();
    }

    /// What was cut, for the run's notes.
    pub fn note(&mut self) -> Option<String> {
        let n = self.serial.writer_mut().cut_lines;
        (n > 0).then(|| format!("{n} serial lines longer than {MAX_LINE} bytes were cut"))
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            *b = if off < COM1_LEN {
                self.serial.read(off as u8)
            } else {
                0xff
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let off = offset.saturating_add(i as u64);
            if off < COM1_LEN {
                // Errors are the interrupt or output failing; the guest can't do anything
                // about them and the byte is already accounted for.
                let _ = self.serial.write(off as u8, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::test_util::CountingIrq;
    use std::sync::Mutex;

    #[test]
    fn lines_and_thre_interrupt() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        let tee = LineTee::new(
            Box::new(io::sink()),
            Box::new(move |s| l2.lock().unwrap().push(s.to_string())),
        );
        let irq = Arc::new(CountingIrq::default());
        let mut dev = SerialDevice::new(irq.clone(), tee);
        dev.write(1, &[0x02]); // IER: THR empty interrupt
        assert_eq!(irq.count(), 1);
        for b in b"ok 1 a\r\nok 2" {
            // The guest's ISR reads IIR, which acknowledges the THR-empty interrupt.
            let mut iir = [0u8];
            dev.read(2, &mut iir);
            dev.write(0, &[*b]);
        }
        assert_eq!(irq.count(), 1 + 12);
        dev.finish();
        assert_eq!(
            *lines.lock().unwrap(),
            vec!["ok 1 a".to_string(), "ok 2".to_string()]
        );
        // Odd widths and offsets never panic.
        let mut buf = [0u8; 4];
        dev.read(6, &mut buf);
        assert_eq!(&buf[2..], &[0xff, 0xff]);
        dev.write(u64::MAX, &[1, 2, 3]);
    }

    #[test]
    fn a_smaller_line_buffer_cuts_at_its_size() {
        let lines = Arc::new(Mutex::new(Vec::<usize>::new()));
        let l2 = lines.clone();
        let mut tee = LineTee::with_max_line(
            Box::new(io::sink()),
            Box::new(move |s| l2.lock().unwrap().push(s.len())),
            10,
        );
        tee.write_all(&[b'y'; 25]).unwrap();
        assert_eq!(tee.line.len(), 10);
        tee.write_all(
            b"
0123456789
",
        )
        .unwrap();
        assert_eq!(*lines.lock().unwrap(), vec![10, 10]);
        assert_eq!(tee.cut_lines, 1, "a line of exactly the size is not cut");
        // A size of 0 keeps one byte: the tee never holds nothing by mistake.
        let tee = LineTee::with_max_line(Box::new(io::sink()), Box::new(|_| {}), 0);
        assert_eq!(tee.max_line, 1);
    }

    #[test]
    fn endless_line_is_bounded_and_counted() {
        let lines = Arc::new(Mutex::new(Vec::<usize>::new()));
        let l2 = lines.clone();
        let mut tee = LineTee::new(
            Box::new(io::sink()),
            Box::new(move |s| l2.lock().unwrap().push(s.len())),
        );
        let chunk = [b'x'; 4096];
        for _ in 0..(3 * MAX_LINE / chunk.len()) {
            tee.write_all(&chunk).unwrap();
            assert!(tee.line.len() <= MAX_LINE);
        }
        tee.write_all(b"\nshort\n").unwrap();
        assert_eq!(*lines.lock().unwrap(), vec![MAX_LINE, 5]);
        assert_eq!(tee.cut_lines, 1);
        let irq = Arc::new(CountingIrq::default());
        let mut dev = SerialDevice::new(irq, tee);
        assert_eq!(
            dev.note().unwrap(),
            format!("1 serial lines longer than {MAX_LINE} bytes were cut")
        );
    }
}
