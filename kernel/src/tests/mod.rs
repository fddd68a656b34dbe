//! Kernel tests, registered by name; `tests=` on the command line selects them.

mod balloon;
mod boot;
mod console;
pub mod disk;
mod foreign_virtio_blk;
pub mod ide;
mod irq;
pub mod net;
mod net_bridge;
mod net_serve;
mod net_services;
mod pci;
mod selftest;
mod time;
pub mod virtio_blk;
mod virtio_blk_discard;

use crate::ktap::Test;

pub static REGISTRY: &[Test] = &[
    Test::in_all("boot_info", boot::boot_info),
    Test::in_all("boot_info_checks", boot::boot_info_checks),
    Test::in_all("ring3", boot::ring3),
    Test::in_all("identity_map", boot::identity_map),
    Test::in_all("heap", boot::heap),
    Test::in_all("tsc", time::tsc),
    Test::in_all("irq_lapic_timer", irq::lapic_timer),
    Test::in_all("irq_ioapic_serial", irq::ioapic_serial),
    Test::in_all("pci", pci::enumerate),
    Test::in_all("virtio_blk_integrity", virtio_blk::integrity),
    Test::in_all("virtio_blk_interrupt_modes", virtio_blk::interrupt_modes),
    Test::in_all("virtio_blk_qd32", virtio_blk::queue_depth_32),
    Test::in_all("virtio_blk_hostile_chains", virtio_blk::hostile_chains),
    Test::in_all("virtio_blk_read_only", virtio_blk::read_only),
    Test::in_all("virtio_blk_every_disk", virtio_blk::every_disk),
    Test::in_all("ide_pio_integrity", ide::pio_integrity),
    Test::in_all("ide_dma_integrity", ide::dma_integrity),
    Test::in_all("ide_interrupts", ide::interrupts),
    Test::in_all("balloon_inflate", balloon::inflate),
    Test::in_all("balloon_deflate_reuse", balloon::deflate_reuse),
    Test::in_all("balloon_deflate_on_oom", balloon::deflate_on_oom),
    Test::in_all("balloon_free_page_reporting", balloon::free_page_reporting),
    // The host must move the target while it waits: tests/monitor.rs does.
    Test::by_name("balloon_follows_interrupts", balloon::follows_interrupts),
    Test::in_all("net_bridge_checksums", net_bridge::checksums),
    Test::in_all("net_link", net::link),
    Test::in_all("net_ping", net::ping),
    Test::in_all("net_udp_echo", net::udp_echo),
    Test::in_all("net_tcp_echo", net::tcp_echo),
    Test::in_all("net_tcp_tx", net::tcp_tx),
    Test::in_all("net_tcp_rx", net::tcp_rx),
    // Never in `all`: DHCP needs a DHCP server (QEMU's user-mode network), MQ a device with
    // several queue pairs, the pair test a second VM on the same switch (net_role=), the
    // flood the peer's UDP source.
    Test::by_name("net_dhcp", net::dhcp),
    Test::by_name("net_host_tcp", net::host_tcp),
    Test::by_name("net_host_udp", net_services::host_udp),
    Test::by_name("net_tftp", net_services::tftp),
    Test::by_name("net_dns", net_services::dns),
    Test::by_name("net_mq", net::mq),
    Test::by_name("net_rx_flood", net::rx_flood),
    Test::by_name("net_tcp_pair", net::tcp_pair),
    Test::by_name("net_tcp_serve", net_serve::tcp_serve),
    // Never in `all`: the host drives it through the console's sockets.
    Test::by_name("console_roundtrip", console::roundtrip),
    Test::by_name("console_prompt", console::prompt),
    // Never in `all`: the host kills the VMM while it sleeps.
    Test::by_name("virtio_blk_durability", virtio_blk::durability),
    // Never in `all`: it needs a disk larger than the integrity tests' and changes its data.
    Test::by_name("virtio_blk_discard", virtio_blk_discard::run),
    Test::by_name("ide_durability", ide::durability),
    // Never in `all`: a second virtio-blk driver (the virtio-drivers crate's) on the same disk
    // would only repeat the checks the host tests run it for on their own.
    Test::by_name("foreign_virtio_blk", foreign_virtio_blk::run),
    // Self-tests of the machinery: each must fail, hang or crash, so they are never in `all`.
    Test::by_name("selftest_fail", selftest::fail),
    Test::by_name("selftest_hang", selftest::hang),
    Test::by_name("selftest_fault", selftest::fault),
    Test::by_name("selftest_ring0_fault", selftest::ring0_fault),
    Test::by_name("selftest_panic", selftest::panic),
    Test::by_name("selftest_triple_fault", selftest::triple_fault),
    Test::by_name("selftest_emulation_failure", selftest::emulation_failure),
    Test::by_name("selftest_spin", selftest::spin),
];
