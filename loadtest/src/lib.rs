//! opr-loadtest: test and load tooling for opr-proxy. For now: the mock executor
//! (`mock`), a std-threads HTTP/1.1 server used by integration tests, `make run` and load tests.

pub mod mock;

pub use mock::{
    pattern_byte, pattern_sha256, sha256_hex, HealthMode, MockExecutor, MockOptions,
    RecordedRequest,
};
