//! Kernel tests, registered by name; `tests=` on the command line selects them.

mod boot;
mod irq;
mod pci;
mod selftest;
mod time;

use crate::ktap::Test;

pub static REGISTRY: &[Test] = &[
    Test {
        name: "boot_info",
        run: boot::boot_info,
        in_all: true,
    },
    Test {
        name: "ring3",
        run: boot::ring3,
        in_all: true,
    },
    Test {
        name: "heap",
        run: boot::heap,
        in_all: true,
    },
    Test {
        name: "tsc",
        run: time::tsc,
        in_all: true,
    },
    Test {
        name: "irq_lapic_timer",
        run: irq::lapic_timer,
        in_all: true,
    },
    Test {
        name: "irq_ioapic_serial",
        run: irq::ioapic_serial,
        in_all: true,
    },
    Test {
        name: "pci",
        run: pci::enumerate,
        in_all: true,
    },
    // Self-tests of the machinery: each must fail, hang or crash, so they are never in `all`.
    Test {
        name: "selftest_fail",
        run: selftest::fail,
        in_all: false,
    },
    Test {
        name: "selftest_hang",
        run: selftest::hang,
        in_all: false,
    },
    Test {
        name: "selftest_fault",
        run: selftest::fault,
        in_all: false,
    },
    Test {
        name: "selftest_panic",
        run: selftest::panic,
        in_all: false,
    },
];
