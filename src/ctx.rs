//! What one worker's connection tasks share: config, the snapshot reader, picker, pool,
//! buffers, the stop signal and the count of active connections (`!Send` by design),
//! and the actions on one executor's health (`ExecutorHealth`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::admission::{self, Admission, Worker};
use crate::balance::{Assigned, Picker};
use crate::buffers::{self, AnswerSizes, FreeList, PipePool, Scratch};
use crate::config::Config;
use crate::idle::{Closed, IdleConns};
use crate::metrics::{Metrics, WorkerMetrics};
use crate::outlier::Outliers;
use crate::pool::Pool;
use crate::report::{Report, Reporter};
use crate::snapshot::{Board, ExecutorId, Snapshot, SnapshotReader};
use crate::warn;

/// Everything one worker owns; shared by its connection tasks through `Rc`.
pub(crate) struct WorkerCtx {
    pub id: usize,
    pub config: Arc<Config>,
    pub board: Arc<Board>,
    reader: RefCell<SnapshotReader>,
    /// A worker-local copy of the current snapshot, so taking it per request is a
    /// non-atomic `Rc` clone instead of an atomic on a cache line every core shares.
    local: RefCell<Rc<Snapshot>>,
    pub picker: Picker,
    /// This worker's share of the per-executor cap and its queue of waiting requests.
    pub admission: Admission,
    /// Consecutive failed exchanges per executor (`OPR_PROXY_EJECT_AFTER`).
    outliers: Outliers,
    pub pool: Pool,
    /// Body buffers, taken only while a body is copied.
    pub bodies: FreeList<Vec<u8>>,
    /// Head buffers: a client's while its request runs, an executor's for its answer.
    pub heads: FreeList<Vec<u8>>,
    /// The vectors of each running request.
    pub scratch: FreeList<Scratch>,
    /// Which buffer the next answer is read into.
    pub answer_sizes: AnswerSizes,
    /// Pipes for splicing Content-Length bodies (`OPR_PROXY_SPLICE`).
    pub pipes: PipePool,
    /// `Bearer <OPR_PROXY_EXECUTOR_SECRET>`, built once.
    pub executor_authorization: Box<[u8]>,
    /// Set when the process is stopping: answer the request in hand, then close.
    pub stopping: Cell<bool>,
    /// Connections waiting between requests (closed by the idle sweep and at stop).
    pub idle: IdleConns,
    /// Error reports (docs/behaviour.md §8): a 502/504 answered, an executor flagged offline.
    pub reporter: Reporter,
    active: Cell<usize>,
    /// Every worker's counters; this worker writes only its own (`m()`).
    pub metrics: Arc<Metrics>,
    /// This worker's access log buffer (`OPR_PROXY_ACCESS_LOG=enabled`).
    pub access_log: Option<AccessLog>,
}

impl WorkerCtx {
    pub(crate) fn new(
        id: usize,
        config: Arc<Config>,
        board: Arc<Board>,
        metrics: Arc<Metrics>,
        access_log: Option<AccessLog>,
        reporter: Reporter,
    ) -> WorkerCtx {
        let mut reader = SnapshotReader::new(board.clone());
        let local = Rc::new(Snapshot::clone(reader.current()));
        let executors = config.executors.len();
        let seed = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
        WorkerCtx {
            id,
            picker: Picker::new(config.algorithm, executors, seed)
                .with_affinity(&config.executors, config.affinity_load_factor),
            admission: Admission::new(
                config
                    .executor_concurrency
                    .map_or(0, |n| admission::share(n, metrics.workers(), id)),
                config.queue_size,
                config.queue_timeout,
            ),
            outliers: Outliers::new(config.eject_after, executors),
            pool: Pool::new(executors, config.pool_size, config.pool_idle_timeout),
            bodies: buffers::body_buffers(),
            heads: buffers::head_buffers(),
            scratch: buffers::scratch(),
            answer_sizes: AnswerSizes::default(),
            pipes: PipePool::default(),
            executor_authorization: format!("Bearer {}", config.executor_secret)
                .into_bytes()
                .into_boxed_slice(),
            stopping: Cell::new(false),
            idle: IdleConns::default(),
            reporter,
            active: Cell::new(0),
            reader: RefCell::new(reader),
            local: RefCell::new(local),
            config,
            board,
            metrics,
            access_log,
        }
    }

    /// This worker's counters.
    #[inline]
    pub(crate) fn m(&self) -> &WorkerMetrics {
        self.metrics.worker(self.id)
    }

    /// The newest snapshot: one atomic load, plus one copy per health round.
    pub(crate) fn snapshot(&self) -> Rc<Snapshot> {
        let mut reader = self.reader.borrow_mut();
        let current = reader.current();
        let mut local = self.local.borrow_mut();
        if local.generation != current.generation {
            *local = Rc::new(Snapshot::clone(current));
        }
        local.clone()
    }

    /// The worker stops: requests in hand finish and close; idle connections close now.
    pub(crate) fn begin_stop(&self) {
        self.stopping.set(true);
        self.admission.drain(self);
        let now = std::time::Instant::now();
        self.idle
            .sweep(now, std::time::Duration::ZERO, Closed::Drain);
    }

    pub(crate) fn active_connections(&self) -> usize {
        self.active.get()
    }

    /// One executor's health, as this worker acts on it.
    pub(crate) fn executor(&self, id: ExecutorId) -> ExecutorHealth<'_> {
        ExecutorHealth { ctx: self, id }
    }
}

/// The actions on one executor's health, in one place: count a request in flight to it,
/// count an exchange failed (ejection after `OPR_PROXY_EJECT_AFTER`) or answered, flag it
/// offline for every worker.
pub(crate) struct ExecutorHealth<'a> {
    ctx: &'a WorkerCtx,
    id: ExecutorId,
}

impl<'a> ExecutorHealth<'a> {
    /// Count a request in flight to this executor (for `least-request`, `p2c` and the
    /// metrics) until the returned guard drops.
    pub(crate) fn assign(&self) -> Assignment<'a> {
        let (ctx, executor) = (self.ctx, self.id);
        ctx.m().executor_in_flight(executor, true);
        Assignment {
            ctx,
            picked: Some(ctx.picker.assign(executor)),
        }
    }

    /// An exchange with this executor failed in a way the proxy answers `502` (or logs, for a
    /// broadcast copy). After `OPR_PROXY_EJECT_AFTER` of them in a row on this worker the
    /// executor is flagged offline for every worker until a probe passes.
    /// Failures that are not the executor's (`fault` false, see
    /// `Cause::is_executor_fault`) are not counted; `cause` is what the log says.
    pub(crate) fn failed(&self, fault: bool, cause: &dyn std::fmt::Display) {
        if !fault {
            return;
        }
        if let Some(n) = self.ctx.outliers.failed(self.id) {
            let reason = format_args!("{n} consecutive failed requests (last: {cause})");
            if self.flag_offline(&reason) {
                self.ctx.m().executor_ejected(self.id);
            }
        }
    }

    /// The executor answered: its failures are no longer consecutive.
    pub(crate) fn answered(&self) {
        self.ctx.outliers.answered(self.id);
    }

    /// The executor refused or did not answer a connection: every worker skips it until
    /// the checker sees a probe pass. Logged once, by the worker that flagged it. Returns
    /// whether this call raised the flag.
    pub(crate) fn flag_offline(&self, reason: &dyn std::fmt::Display) -> bool {
        let ctx = self.ctx;
        // Raised by this call only once, however many workers see the refusal.
        if !ctx.board.flag_offline(self.id) {
            return false;
        }
        let snapshot = ctx.snapshot();
        let name = snapshot
            .executors
            .get(self.id.index())
            .map_or("?", |e| e.hostname.as_str());
        warn!(
            "Executor \"{name}\" went offline: {reason} (flagged by worker {})",
            ctx.id
        );
        if ctx.reporter.is_enabled() {
            ctx.reporter.report(Report::HealthCheckError {
                executor: name.to_string(),
                reason: reason.to_string(),
                worker: Some(ctx.id),
            });
        }
        true
    }
}

impl Worker for WorkerCtx {
    fn admission(&self) -> &Admission {
        &self.admission
    }

    fn current(&self) -> Rc<Snapshot> {
        self.snapshot()
    }

    fn in_flight(&self, executor: ExecutorId) -> u32 {
        self.picker.in_flight(executor)
    }

    fn flagged_offline(&self, executor: ExecutorId) -> bool {
        self.board.is_flagged_offline(executor)
    }

    fn counters(&self) -> &WorkerMetrics {
        self.m()
    }
}

/// One request in flight to one executor: counted in the picker (selection) and the
/// metrics until it drops, whichever way the exchange ends (answered, failed, timed out,
/// client gone: the task's future is dropped with it).
pub(crate) struct Assignment<'a> {
    ctx: &'a WorkerCtx,
    /// Always `Some` until dropped (taken first, so the count is down when the queue
    /// hears of the free slot).
    picked: Option<Assigned<'a>>,
}

impl Drop for Assignment<'_> {
    fn drop(&mut self) {
        if let Some(picked) = self.picked.take() {
            self.ctx.m().executor_in_flight(picked.executor(), false);
            drop(picked);
            self.ctx.admission.kick(self.ctx);
        }
    }
}

/// Counts a connection task as active for the drain; decrements on drop (also on panic).
pub(crate) struct ActiveGuard(Rc<WorkerCtx>);

impl ActiveGuard {
    pub(crate) fn new(ctx: Rc<WorkerCtx>) -> ActiveGuard {
        ctx.active.set(ctx.active.get() + 1);
        ActiveGuard(ctx)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.set(self.0.active.get() - 1);
    }
}
