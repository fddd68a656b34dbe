//! COM1 console (16550 via `uart_16550`), used from ring 3; plus a lock-free writer for the crash
//! path in ring 0, which must not wait on a lock the faulting code may hold.

use core::fmt::{self, Write};
use spin::Mutex;
use uart_16550::SerialPort;

pub const COM1: u16 = 0x3f8;
const LSR: u16 = COM1 + 5;
const IER: u16 = COM1 + 1;
const LSR_THR_EMPTY: u8 = 1 << 5;

static PORT: Mutex<Option<SerialPort>> = Mutex::new(None);

pub fn init() {
    // SAFETY: COM1 is a 16550 at its standard ports on every platform we boot on.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    // uart_16550 enables the receive interrupt; we only poll, so leave interrupts off until a
    // test asks for them.
    crate::port::outb(IER, 0);
    *PORT.lock() = Some(port);
}

/// Enable (or disable) the "transmit holding register empty" interrupt, for the IOAPIC test.
pub fn set_thr_empty_interrupt(on: bool) {
    crate::port::outb(IER, if on { 0x02 } else { 0 });
}

pub fn write_fmt(args: fmt::Arguments) {
    let mut guard = PORT.lock();
    match guard.as_mut() {
        Some(port) => {
            let _ = port.write_fmt(args);
        }
        None => {
            let _ = EmergencyWriter.write_fmt(args);
        }
    }
}

/// Writes straight to the UART, no lock. For exception and panic reports.
pub struct EmergencyWriter;

impl Write for EmergencyWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                raw_byte(b'\r');
            }
            raw_byte(b);
        }
        Ok(())
    }
}

fn raw_byte(b: u8) {
    let mut spins = 0u32;
    while crate::port::inb(LSR) & LSR_THR_EMPTY == 0 && spins < 100_000 {
        spins += 1;
    }
    crate::port::outb(COM1, b);
}

/// Unlock the console after a panic left it locked (the panicking code never returns).
pub fn force_unlock() {
    if PORT.is_locked() {
        // SAFETY: called only on the panic path, where the lock holder will never run again.
        unsafe { PORT.force_unlock() };
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => ($crate::serial::write_fmt(format_args!($($arg)*)));
}

#[macro_export]
macro_rules! println {
    () => ($crate::print!("\n"));
    ($($arg:tt)*) => ($crate::serial::write_fmt(format_args!("{}\n", format_args!($($arg)*))));
}
