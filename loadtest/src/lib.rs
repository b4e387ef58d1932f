//! opr-loadtest: test and load tooling for opr-proxy: the one independent HTTP/1 reader
//! (`h1`), mock executors (`mock`, `fastmock`), the load generator (`gen`), idle connections (`idle`), processes (`procs`), the capacity
//! plan (`plan`) and report.

pub mod cli;
pub mod coldstart;
pub mod fastmock;
pub mod gen;
pub mod h1;
pub mod idle;
pub mod mock;
pub mod plan;
pub mod procs;
pub mod provider;
pub mod report;
pub mod warm;

pub use fastmock::{FastMock, FastMockOptions, MockStats};
pub use mock::{
    pattern_byte, pattern_sha256, sha256_hex, HealthMode, MockExecutor, MockOptions,
    RecordedRequest,
};
