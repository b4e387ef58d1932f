//! The only state shared between the checker and the workers: immutable health
//! snapshots (published by the checker, picked up by workers without a lock on the
//! request path) and one "offline" flag per executor that any worker may raise.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// An executor's identity: its position in `OPR_PROXY_EXECUTORS`, which is also its
/// position in `Snapshot::executors`, the board's flags and every per-executor table.
/// A `usize` inside, so indexing costs nothing and no executor count needs a bound.
/// Public while `snapshot` is (integration tests read the board's flags by id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(transparent)]
pub struct ExecutorId(usize);

impl ExecutorId {
    /// The executor at `index` in configuration order (the proxy itself enumerates
    /// them with `Snapshot::ids`).
    pub const fn new(index: usize) -> ExecutorId {
        ExecutorId(index)
    }

    /// Every executor of a list of `count`, in configuration order.
    pub(crate) fn all(count: usize) -> impl Iterator<Item = ExecutorId> {
        (0..count).map(ExecutorId)
    }

    /// The position to index per-executor slices with.
    pub const fn index(self) -> usize {
        self.0
    }
}

/// One runtime as reported in an executor's health body.
#[derive(Clone, Debug, PartialEq)]
pub struct RuntimeState {
    /// `status` field of the runtime; `pass` is the only healthy value.
    pub status: String,
    /// 0–100; unknown counts as 100.
    pub usage: u8,
}

impl RuntimeState {
    pub(crate) fn is_warm(&self) -> bool {
        self.status == "pass" && self.usage < 80
    }
}

/// What the checker knows about one executor after a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExecutorStatus {
    /// As the operator spelled it in `OPR_PROXY_EXECUTORS` (trimmed, e.g. `mockoon1`):
    /// the executor's name in `x-opr-executor-hostname`, `/v1/proxy/containers`, logs,
    /// reports and metrics labels.
    pub hostname: String,
    /// `host:port` (`[v6]:port`, port 80 when not spelled): the `Host` sent for HTTP/1.0
    /// clients.
    pub authority: String,
    pub online: bool,
    /// `status` string of the health body when it had one (`stateStatus`).
    pub state_status: Option<String>,
    /// 0–100 from the health body; `None` = unknown (counts as 100).
    pub usage: Option<u8>,
    pub runtimes: HashMap<String, RuntimeState>,
    /// Addresses resolved this round; workers connect to these and never resolve DNS.
    pub addrs: Vec<SocketAddr>,
    pub last_check: Option<SystemTime>,
    /// Why the executor is offline (kept for `/v1/proxy/containers` and the logs).
    pub last_error: Option<String>,
    /// How long the last health probe took (DNS included), in seconds (metrics).
    pub probe_seconds: f64,
    /// Probes that found the executor offline since start (metrics).
    pub probe_failures: u64,
    /// Consecutive probes that disagreed with `online` (rise/fall): 0 when the last
    /// probe agreed (so an online executor with 0 passed its last probe).
    pub contrary: u32,
}

impl ExecutorStatus {
    /// Usage for the tiers: unknown counts as 100.
    pub(crate) fn effective_usage(&self) -> u8 {
        self.usage.unwrap_or(100)
    }
}

/// Everything workers need to pick an executor, frozen at the end of a round.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// Increases with every publication; workers use it to drop per-round overlays.
    pub generation: u64,
    /// In `OPR_PROXY_EXECUTORS` order; the position is the executor's identity (`ExecutorId`).
    pub executors: Vec<ExecutorStatus>,
    /// Runtime id → executors (ascending) that report it warm: tier 1 of docs/behaviour.md §4 costs one
    /// lookup per request instead of one per executor. Derived from `executors` in `new`,
    /// off the request path; private so no snapshot can carry a stale index.
    warm: HashMap<String, Vec<ExecutorId>>,
}

impl Snapshot {
    pub fn new(generation: u64, executors: Vec<ExecutorStatus>) -> Snapshot {
        let mut warm: HashMap<String, Vec<ExecutorId>> = HashMap::new();
        for (i, e) in ExecutorId::all(executors.len()).zip(&executors) {
            for (id, runtime) in &e.runtimes {
                if runtime.is_warm() {
                    warm.entry(id.clone()).or_default().push(i);
                }
            }
        }
        Snapshot {
            generation,
            executors,
            warm,
        }
    }

    /// Executors (ascending) that report `runtime` warm.
    pub(crate) fn warm_on(&self, runtime: &str) -> &[ExecutorId] {
        self.warm.get(runtime).map_or(&[], Vec::as_slice)
    }

    /// Every executor, in configuration order.
    pub(crate) fn ids(&self) -> impl Iterator<Item = ExecutorId> {
        ExecutorId::all(self.executors.len())
    }

    /// The executor `id` (ids come from this configuration, so it exists).
    pub(crate) fn executor(&self, id: ExecutorId) -> &ExecutorStatus {
        &self.executors[id.index()]
    }
}

/// The publication point: written by the checker, read by every worker.
///
/// Workers read `generation` (one atomic load per request) and take the mutex only when
/// it changed, i.e. once per health round per worker, never in steady state.
pub struct Board {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
    offline: Box<[AtomicBool]>,
}

impl Board {
    pub fn new(first: Snapshot) -> Arc<Board> {
        let offline = (0..first.executors.len())
            .map(|_| AtomicBool::new(false))
            .collect();
        Arc::new(Board {
            generation: AtomicU64::new(first.generation),
            current: Mutex::new(Arc::new(first)),
            offline,
        })
    }

    /// Publish the next snapshot; its generation must be greater than the current one.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        let generation = snapshot.generation;
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        *current = Arc::new(snapshot);
        drop(current);
        self.generation.store(generation, Ordering::Release);
    }

    pub(crate) fn load(&self) -> Arc<Snapshot> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A worker saw the executor refuse or time out a connection: every worker skips it
    /// until the checker sees a probe pass. Returns whether this call raised the flag
    /// (it was not set), so that only one worker logs the change.
    pub(crate) fn flag_offline(&self, executor: ExecutorId) -> bool {
        self.offline
            .get(executor.index())
            .is_some_and(|flag| !flag.swap(true, Ordering::Relaxed))
    }

    /// The checker saw the executor's probe pass. Returns whether the flag was set, i.e.
    /// whether a worker had taken the executor offline (and logged it).
    pub(crate) fn clear_offline(&self, executor: ExecutorId) -> bool {
        self.offline
            .get(executor.index())
            .is_some_and(|flag| flag.swap(false, Ordering::Relaxed))
    }

    pub fn is_flagged_offline(&self, executor: ExecutorId) -> bool {
        self.offline
            .get(executor.index())
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

/// A worker's view of the board: caches the current snapshot and refreshes it only when
/// the generation moved.
pub struct SnapshotReader {
    board: Arc<Board>,
    seen: u64,
    cached: Arc<Snapshot>,
}

impl SnapshotReader {
    pub fn new(board: Arc<Board>) -> SnapshotReader {
        let cached = board.load();
        SnapshotReader {
            seen: cached.generation,
            board,
            cached,
        }
    }

    /// The newest snapshot; costs one atomic load unless a new round was published.
    pub fn current(&mut self) -> &Arc<Snapshot> {
        let generation = self.board.generation.load(Ordering::Acquire);
        if generation != self.seen {
            self.cached = self.board.load();
            self.seen = self.cached.generation;
        }
        &self.cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(generation: u64, online: bool) -> Snapshot {
        Snapshot::new(
            generation,
            vec![ExecutorStatus {
                hostname: "a:80".into(),
                online,
                state_status: None,
                usage: None,
                runtimes: HashMap::new(),
                addrs: vec![],
                last_check: None,
                last_error: None,
                ..ExecutorStatus::default()
            }],
        )
    }

    #[test]
    fn reader_picks_up_new_generation() {
        let board = Board::new(snapshot(1, false));
        let mut reader = SnapshotReader::new(board.clone());
        assert!(!reader.current().executors[0].online);
        board.publish(snapshot(2, true));
        assert_eq!(reader.current().generation, 2);
        assert!(reader.current().executors[0].online);
    }

    #[test]
    fn offline_flags_are_per_executor() {
        let board = Board::new(snapshot(1, true));
        assert!(!board.is_flagged_offline(ExecutorId::new(0)));
        assert!(
            board.flag_offline(ExecutorId::new(0)),
            "raised by this call"
        );
        assert!(board.is_flagged_offline(ExecutorId::new(0)));
        assert!(!board.flag_offline(ExecutorId::new(0)), "already set");
        assert!(
            !board.flag_offline(ExecutorId::new(7)),
            "out of range is ignored"
        );
        assert!(!board.is_flagged_offline(ExecutorId::new(7)));
        assert!(board.clear_offline(ExecutorId::new(0)), "was set");
        assert!(!board.is_flagged_offline(ExecutorId::new(0)));
        assert!(!board.clear_offline(ExecutorId::new(0)), "was not set");
        assert!(!board.clear_offline(ExecutorId::new(7)));
    }
}
