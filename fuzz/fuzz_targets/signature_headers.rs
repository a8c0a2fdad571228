#![no_main]
//! See `hookshim::fuzzing::signature_headers` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookshim::fuzzing::signature_headers(data));
