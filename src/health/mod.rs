//! Health checks (docs/behaviour.md §6): `probe` asks one executor `GET /v1/health` and reads the
//! answer; `checker` runs rounds over every executor and publishes snapshots;
//! `streak` applies rise/fall so one probe does not flip a status.

pub(crate) mod checker;
pub(crate) mod probe;
mod streak;
