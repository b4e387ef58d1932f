//! cargo fuzz run --sanitizer none response_head — checks in src/lib.rs (`check_response`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| opr_proxy_fuzz::check_response(data));
