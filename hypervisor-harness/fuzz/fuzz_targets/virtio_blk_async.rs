#![no_main]

// virtio_blk's programs on a cache=none device (an O_DIRECT image through io_uring).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    hypervisor_harness::fuzzing::virtio_blk::virtio_blk_async(data)
});
