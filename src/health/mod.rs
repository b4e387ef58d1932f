//! Health checks (SPEC §6): `probe` asks one executor `GET /v1/health` and reads the
//! answer; `checker` runs rounds over every executor and publishes snapshots;
//! `streak` applies rise/fall so one probe does not flip a status.

pub mod checker;
pub mod probe;
mod streak;

pub use checker::{Checker, CheckerHandle};
pub use probe::{parse_health, probe, ProbeResult, MAX_HEALTH_BODY};
