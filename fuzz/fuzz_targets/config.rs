#![no_main]
//! See `hookshim::fuzzing::config` for the input format and the properties checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookshim::fuzzing::config(data));
