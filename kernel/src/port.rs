//! Port I/O instructions. Allowed in ring 3 by the TSS I/O bitmap.

pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: port I/O has no memory effects; ring 3 may issue it (TSS I/O bitmap).
    unsafe { core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack)) };
    v
}

pub fn inw(port: u16) -> u16 {
    let v: u16;
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("in ax, dx", out("ax") v, in("dx") port, options(nomem, nostack)) };
    v
}

pub fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack)) };
    v
}

pub fn outb(port: u16, v: u8) {
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack)) };
}

pub fn outw(port: u16, v: u16) {
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack)) };
}

pub fn outl(port: u16, v: u32) {
    // SAFETY: as in `inb`.
    unsafe { core::arch::asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack)) };
}
