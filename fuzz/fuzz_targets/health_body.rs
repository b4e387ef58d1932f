//! cargo fuzz run --sanitizer none health_body — checks in src/lib.rs (`check_health`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| opr_proxy_fuzz::check_health(data));
