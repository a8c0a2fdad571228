#![no_main]
//! See `hookshim::fuzzing::hints` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookshim::fuzzing::hints(data));
