//! cargo fuzz run --sanitizer none request_head — checks in src/lib.rs (`check_request_stream`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| opr_proxy_fuzz::check_request_stream(data));
