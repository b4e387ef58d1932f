//! The integration suite: one test binary, one module per area, the fixtures in `support/`
//! compiled once. Real sockets and real processes; `OPR_TEST_IO_DRIVER` picks the io driver.

mod support;

mod affinity;
mod alloc;
mod balance;
mod connection_balance;
mod container;
mod early;
mod exchange;
mod hardening;
mod http2;
mod layers;
mod memory;
mod monitoring;
mod observability;
mod original_suite;
mod process;
mod proxy;
mod queue;
mod reporting;
