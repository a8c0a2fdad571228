#![no_main]
//! See `hookshim::fuzzing::status_mapping` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookshim::fuzzing::status_mapping(data));
