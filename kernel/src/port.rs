//! Port I/O through `x86_64`'s `Port`. Allowed in ring 3 by the TSS I/O bitmap.

use x86_64::instructions::port::{Port, PortRead, PortWrite};

fn read<T: PortRead>(port: u16) -> T {
    // SAFETY: port I/O has no memory effects on this machine's RAM; ring 3 may issue it (TSS
    // I/O bitmap), and every device port is owned by exactly one driver.
    unsafe { Port::<T>::new(port).read() }
}

fn write<T: PortWrite>(port: u16, v: T) {
    // SAFETY: as in `read`.
    unsafe { Port::<T>::new(port).write(v) }
}

pub fn inb(port: u16) -> u8 {
    read(port)
}

pub fn inw(port: u16) -> u16 {
    read(port)
}

pub fn inl(port: u16) -> u32 {
    read(port)
}

pub fn outb(port: u16, v: u8) {
    write(port, v)
}

pub fn outw(port: u16, v: u16) {
    write(port, v)
}

pub fn outl(port: u16, v: u32) {
    write(port, v)
}
