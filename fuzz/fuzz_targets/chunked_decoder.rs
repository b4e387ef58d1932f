//! cargo fuzz run --sanitizer none chunked_decoder — checks in src/lib.rs (`check_chunked`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| opr_proxy_fuzz::check_chunked(data));
