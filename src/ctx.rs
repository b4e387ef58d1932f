//! What one worker's connection tasks share: config, the snapshot reader, picker, pool,
//! buffers, the stop signal and the count of active connections. `!Send` by design.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::admission::{self, Admission};
use crate::balance::{Assigned, Picker};
use crate::buffers::{self, AnswerSizes, FreeList, PipePool, Scratch};
use crate::config::Config;
use crate::error::ProxyError;
use crate::http::client::{After, ClientConn};
use crate::http::head::{self, RequestHead};
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
    /// Error reports (SPEC §8): a 502/504 answered, an executor flagged offline.
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

    /// Answer an error the proxy makes itself (SPEC §7) and return what happens to the
    /// connection and the status sent. `keep_alive`: the request was read whole and its
    /// client allows another; errors that leave the stream out of step close anyway
    /// (`ProxyError::closes_connection`). A closing answer lingers, so a client still
    /// sending its body reads the answer instead of a reset.
    pub(crate) async fn answer(
        &self,
        conn: &mut ClientConn,
        out: &mut Vec<u8>,
        e: ProxyError,
        keep_alive: bool,
    ) -> (After, u16) {
        self.answer_forwarded(conn, out, e, keep_alive, None).await
    }

    /// `answer` for a request being forwarded. A `502` or `504` is also reported (SPEC §8)
    /// with the request's method and path, read from `request`'s head (its bytes must
    /// still be pending in `conn`), and the executor it went to last.
    pub(crate) async fn answer_forwarded(
        &self,
        conn: &mut ClientConn,
        out: &mut Vec<u8>,
        e: ProxyError,
        keep_alive: bool,
        request: Option<(&RequestHead, Option<ExecutorId>)>,
    ) -> (After, u16) {
        if matches!(e, ProxyError::BadGateway(_) | ProxyError::GatewayTimeout) {
            self.report_http_error(conn, &e, request);
        }
        let close = !keep_alive || e.closes_connection() || self.stopping.get();
        out.clear();
        let dev = self.config.is_development();
        e.write_response(out, &self.config.version, dev, close, conn.head_request);
        let written = conn
            .write_answer(out, self.config.body_timeout)
            .await
            .is_ok();
        if close && written {
            conn.linger_close().await;
        }
        (After::close_if(close || !written), e.status())
    }

    /// Queue the report of an error answer (only on that path, and only when reporting is
    /// on: the allocations here never touch a request that succeeds).
    fn report_http_error(
        &self,
        conn: &ClientConn,
        e: &ProxyError,
        request: Option<(&RequestHead, Option<ExecutorId>)>,
    ) {
        if !self.reporter.is_enabled() {
            return;
        }
        let pending = conn.pending();
        let text =
            |bytes: Option<&[u8]>| String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned();
        let (method, path, executor) = match request {
            Some((head, executor)) => {
                let method = pending.get(head.method.clone());
                let target = pending.get(head.target.clone());
                let executor = executor.and_then(|i| {
                    let snapshot = self.snapshot();
                    snapshot
                        .executors
                        .get(i.index())
                        .map(|e| e.hostname.clone())
                });
                (text(method), text(target.map(head::path_of)), executor)
            }
            None => (String::new(), String::new(), None),
        };
        self.reporter.report(Report::HttpError {
            status: e.status(),
            method,
            path,
            executor,
            cause: e.to_string(),
            worker: self.id,
        });
    }

    /// Count a request in flight to `executor` (for `least-request`, `p2c` and the
    /// metrics) until the returned guard drops.
    pub(crate) fn assign(&self, executor: ExecutorId) -> Assignment<'_> {
        self.m().executor_in_flight(executor, true);
        Assignment {
            ctx: self,
            picked: Some(self.picker.assign(executor)),
        }
    }

    /// An exchange with `executor` failed in a way the proxy answers `502` (or logs, for a
    /// broadcast copy). After `OPR_PROXY_EJECT_AFTER` of them in a row on this worker the
    /// executor is flagged offline for every worker until a probe passes.
    /// Failures that are not the executor's (see `ExecutorFault`) are not counted.
    pub(crate) fn exchange_failed(&self, executor: ExecutorId, cause: &dyn ExecutorFault) {
        if !cause.is_executor_fault() {
            return;
        }
        if let Some(n) = self.outliers.failed(executor) {
            let reason = format_args!("{n} consecutive failed requests (last: {cause})");
            if self.flag_offline(executor, &reason) {
                self.m().executor_ejected(executor);
            }
        }
    }

    /// The executor answered: its failures are no longer consecutive.
    pub(crate) fn exchange_answered(&self, executor: ExecutorId) {
        self.outliers.answered(executor);
    }

    /// The executor refused or did not answer a connection: every worker skips it until
    /// the checker sees a probe pass. Logged once, by the worker that flagged it. Returns
    /// whether this call raised the flag.
    pub(crate) fn flag_offline(
        &self,
        executor: ExecutorId,
        reason: &dyn std::fmt::Display,
    ) -> bool {
        // Raised by this call only once, however many workers see the refusal.
        if !self.board.flag_offline(executor) {
            return false;
        }
        let snapshot = self.snapshot();
        let name = snapshot
            .executors
            .get(executor.index())
            .map_or("?", |e| e.hostname.as_str());
        warn!(
            "Executor \"{name}\" went offline: {reason} (flagged by worker {})",
            self.id
        );
        if self.reporter.is_enabled() {
            self.reporter.report(Report::HealthCheckError {
                executor: name.to_string(),
                reason: reason.to_string(),
                worker: Some(self.id),
            });
        }
        true
    }
}

/// A failed exchange, as passive ejection (`OPR_PROXY_EJECT_AFTER`) sees it: whether it
/// was the executor's fault, and what to log.
pub(crate) trait ExecutorFault: std::fmt::Display {
    fn is_executor_fault(&self) -> bool;
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
