#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hypervisor_harness::fuzzing::console(data));
