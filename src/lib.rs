//! opr-proxy: a thread-per-core io_uring drop-in replacement for Open Runtimes Proxy.
//! `run(Config)` is the one entry for main, tests and benches.

mod access_log;
mod admission;
mod answer;
mod auth;
mod balance;
mod buffers;
mod config;
mod ctx;
mod forward;
mod health;
mod http;
mod http1;
mod http2;
mod idle;
mod io_driver;
// Public for the `info!`/`warn!`/`error!` macros, which expand to `$crate::logging::log`.
#[doc(hidden)]
pub mod logging;
mod metrics;
mod outcome;
mod outlier;
mod pool;
mod report;
mod reuseport;
mod snapshot;
mod socket;
mod text;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

pub use config::{probe_address, Config, ConfigError};
use health::checker::{Checker, CheckerHandle};
pub use report::ReportStats;
use report::{Reporter, ReporterThread};
pub use snapshot::{Board, ExecutorId};
pub use worker::Driver;

/// What fuzz/ and benches/ exercise directly (the codecs, the health body reader, the
/// executor picker): not an API, no stability promised.
#[doc(hidden)]
pub mod internals {
    pub use crate::balance::{Addressing, Picker};
    pub use crate::config::Algorithm;
    pub use crate::health::probe::{parse_health, ProbeResult};
    pub use crate::http::chunked::{decode_chunks, ChunkedDecoder, ChunkedError, ChunkedOutput};
    pub use crate::http::head::{
        parse_request, parse_response, HeadError, HeaderRef, RequestFraming, RequestHead,
        ResponseFraming, ResponseHead, MAX_HEAD, MAX_HEADERS,
    };
    pub use crate::http::rewrite::{
        canonical_reason, write_request_head, write_response_head, RequestRewrite, ResponseRewrite,
    };
    pub use crate::snapshot::{ExecutorStatus, RuntimeState, Snapshot, SnapshotReader};
}

/// Something the main thread must react to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// SIGTERM / SIGINT (the signal number).
    Signal(i32),
    /// A worker thread ended although nobody asked it to (a panic): the process should
    /// exit so its supervisor restarts it with every worker healthy.
    WorkerExited(usize),
}

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    Bind(SocketAddr, std::io::Error),
    Worker(usize, std::io::Error),
    Thread(std::io::Error),
    /// `OPR_PROXY_IO_DRIVER=io_uring` on a kernel whose io_uring cannot serve (missing
    /// operations, locked-memory limit): a configuration error, exit 2.
    IoDriver(config::ConfigError),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            StartError::Worker(id, e) => write!(f, "worker {id} failed to start: {e}"),
            StartError::Thread(e) => write!(f, "cannot start a thread: {e}"),
            StartError::IoDriver(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running proxy.
pub struct Server {
    addr: SocketAddr,
    drivers: Vec<Driver>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    checker: Option<CheckerHandle>,
    reporter: Reporter,
    reporter_thread: Option<ReporterThread>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    board: Arc<Board>,
    access_writer: Option<access_log::Writer>,
}

/// Start the proxy: the io driver decision (io_driver.rs: the kernel's io_uring probe;
/// `StartError::IoDriver` when `OPR_PROXY_IO_DRIVER=io_uring` cannot work), the error
/// reporter (when a provider is configured), the checker's
/// first round (before accepting), then one pinned worker per core (times
/// `OPR_PROXY_WORKER_PER_CORE`), each with its own listener.
pub fn run(mut config: Config) -> Result<Server, StartError> {
    let (workers_wanted, cores) = worker_cores(&config);
    let count = workers_wanted * config.worker_per_core;
    let io = choose_io_driver(&mut config, count)?;
    let config = Arc::new(config);
    let common = report::Common::new(&config.version, config.is_development());
    let (reporter, reporter_thread) =
        report::start(config.reporting.as_ref(), common).map_err(StartError::Thread)?;
    let mut checker = Checker::new(config.clone(), reporter.clone());
    let board = Board::new(checker.round());
    let checker = checker.spawn(board.clone());

    let metrics = Arc::new(metrics::Metrics::new(count, config.executors.len()));
    let access_writer = if config.access_log {
        Some(access_log::Writer::start().map_err(StartError::Thread)?)
    } else {
        None
    };
    let (addr, listeners) = listen(&config, count)?;
    let cpu_of_worker: Vec<usize> = (0..count)
        .filter_map(|id| cores.get(id % cores.len().max(1)).map(|c| c.id))
        .collect();
    balance_connections(&config, &listeners, &cpu_of_worker);
    log_concurrency_cap(&config, count);

    let stop = Arc::new(AtomicBool::new(false));
    let (events_tx, events_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(count);
    for (id, listener) in listeners.into_iter().enumerate() {
        let spec = worker::WorkerSpec {
            id,
            core: cores.get(id % cores.len().max(1)).copied(),
            io,
            listener,
            config: config.clone(),
            board: board.clone(),
            metrics: metrics.clone(),
            access_log: access_writer
                .as_ref()
                .map(|w| w.log(config.access_log_format)),
            stop: stop.clone(),
            reporter: reporter.clone(),
        };
        let exit = ExitNotice {
            id,
            tx: events_tx.clone(),
            stop: stop.clone(),
        };
        workers.push(spawn_worker(spec, ready_tx.clone(), exit)?);
    }
    drop(ready_tx);

    let (drivers, failure) = await_ready(&ready_rx, count);
    let server = Server {
        addr,
        drivers,
        stop,
        workers,
        checker: Some(checker),
        reporter,
        reporter_thread,
        events_tx,
        events_rx,
        board,
        access_writer,
    };
    match failure {
        Some(e) => {
            server.shutdown();
            Err(e)
        }
        None => Ok(server),
    }
}

/// The io driver the workers get (io_driver.rs: the kernel's io_uring probe), logged;
/// `StartError::IoDriver` when `OPR_PROXY_IO_DRIVER=io_uring` cannot work.
fn choose_io_driver(config: &mut Config, workers: usize) -> Result<config::IoDriver, StartError> {
    let decision = io_driver::decide(&io_driver::gather(config.io_driver, workers));
    let io = match decision.plan {
        io_driver::Plan::Refuse(e) => return Err(StartError::IoDriver(e)),
        io_driver::Plan::Epoll => config::IoDriver::Epoll,
        io_driver::Plan::IoUring { splice } => {
            // A ring without the splice operation (before 5.7): bodies are copied.
            config.splice &= splice;
            config.io_driver
        }
    };
    if decision.warn {
        warn!("{}", decision.line);
    } else {
        info!("{}", decision.line);
    }
    Ok(io)
}

/// One `SO_REUSEPORT` listener per worker on `OPR_PROXY_HOST`:`PORT` (the first decides
/// the port when `PORT` is 0), and the address they listen on.
fn listen(
    config: &Config,
    count: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), StartError> {
    let wanted = SocketAddr::new(config.host, config.port);
    let first = worker::reuse_port_listener(wanted).map_err(|e| StartError::Bind(wanted, e))?;
    let addr = first
        .local_addr()
        .map_err(|e| StartError::Bind(wanted, e))?;
    // All listeners here, in worker order: a listener's index in the reuseport group is
    // then its worker's id, which the per-CPU program relies on.
    let mut listeners = vec![first];
    for _ in 1..count {
        listeners.push(worker::reuse_port_listener(addr).map_err(|e| StartError::Bind(addr, e))?);
    }
    Ok((addr, listeners))
}

/// One worker thread; it says on `ready` whether it started, and `exit` tells the main
/// thread when it ends.
fn spawn_worker(
    spec: worker::WorkerSpec,
    ready: mpsc::Sender<(usize, std::io::Result<Driver>)>,
    exit: ExitNotice,
) -> Result<JoinHandle<()>, StartError> {
    let id = spec.id;
    std::thread::Builder::new()
        .name(format!("opr-worker-{id}"))
        .spawn(move || {
            let _exit = exit;
            worker::run(spec, move |r| {
                let _ = ready.send((id, r));
            });
        })
        .map_err(StartError::Thread)
}

/// Every worker's start result: the driver each got, and the first failure.
fn await_ready(
    ready: &mpsc::Receiver<(usize, std::io::Result<Driver>)>,
    count: usize,
) -> (Vec<Driver>, Option<StartError>) {
    let mut drivers = vec![Driver::Epoll; count];
    let mut failure = None;
    for _ in 0..count {
        match ready.recv() {
            Ok((id, Ok(driver))) => drivers[id] = driver,
            Ok((id, Err(e))) => {
                failure.get_or_insert(StartError::Worker(id, e));
            }
            Err(_) => {
                failure.get_or_insert(StartError::Thread(std::io::Error::other(
                    "worker exited early",
                )));
                break;
            }
        }
    }
    (drivers, failure)
}

/// Attach the per-CPU program (reuseport.rs) when every worker is pinned and balance by
/// CPU is asked for; otherwise the kernel's hash spreads connections. Logged either way.
fn balance_connections(
    config: &Config,
    listeners: &[std::net::TcpListener],
    cpu_of_worker: &[usize],
) {
    if listeners.len() < 2 {
        return;
    }
    let hash = |why: &dyn std::fmt::Display| {
        info!("connections spread over workers by the kernel's hash ({why})");
    };
    if config.connection_balance == config::ConnectionBalance::Hash {
        return hash(&"OPR_PROXY_CONNECTION_BALANCE=hash");
    }
    if cpu_of_worker.len() != listeners.len() {
        return hash(&"workers are not pinned");
    }
    let Some(program) = reuseport::program(cpu_of_worker) else {
        return hash(&"too many workers for a reuseport program");
    };
    match socket::attach_reuseport_cbpf(&listeners[0], &program) {
        Ok(()) => info!(
            "connections go to a worker pinned to the CPU that received them (reuseport CBPF; CPUs of workers 0..{}: {cpu_of_worker:?})",
            listeners.len() - 1
        ),
        Err(e) => {
            warn!("reuseport CBPF program refused: {e}");
            hash(&"reuseport CBPF refused")
        }
    }
}

/// Say how the per-executor cap is split over the workers (docs/behaviour.md §4.3),
/// and when the split raises it: every worker keeps at least one slot.
fn log_concurrency_cap(config: &Config, workers: usize) {
    let Some(cap) = config.executor_concurrency else {
        return;
    };
    let shares: Vec<u32> = (0..workers)
        .map(|w| admission::share(cap, workers, w))
        .collect();
    let effective: u64 = shares.iter().map(|&s| u64::from(s)).sum();
    info!(
        "at most {effective} requests in flight per executor (OPR_PROXY_EXECUTOR_CONCURRENCY={cap}; worker shares {shares:?}); up to {} waiting per worker for at most {} ms (OPR_PROXY_QUEUE_SIZE, OPR_PROXY_QUEUE_TIMEOUT)",
        config.queue_size,
        config.queue_timeout.as_millis()
    );
    if effective > u64::from(cap) {
        warn!(
            "OPR_PROXY_EXECUTOR_CONCURRENCY={cap} is below the {workers} workers: each keeps one slot, so up to {effective} requests reach one executor at once; raise it to at least {workers} or run fewer workers (OPR_PROXY_CORES)"
        );
    }
}

/// How many workers (before `OPR_PROXY_WORKER_PER_CORE`) and the cores to pin them to.
fn worker_cores(config: &Config) -> (usize, Vec<core_affinity::CoreId>) {
    let mask = core_affinity::get_core_ids().unwrap_or_default();
    let quota = std::thread::available_parallelism().map_or(1, |n| n.get());
    plan_workers(mask, quota, config.cores)
}

/// One worker per CPU of the affinity mask, each pinned, unless `OPR_PROXY_CORES` says
/// how many. A CPU quota (cgroup) narrower than the mask, with no `OPR_PROXY_CORES`:
/// `quota` workers, unpinned. Pinning them to the mask's first CPUs would put every
/// replica on a node on the same CPUs (Kubernetes without the static CPU manager gives
/// each pod the whole node's mask and a quota); the scheduler spreads them instead. No
/// affinity information: unpinned too.
fn plan_workers(
    mask: Vec<core_affinity::CoreId>,
    quota: usize,
    cores: Option<usize>,
) -> (usize, Vec<core_affinity::CoreId>) {
    let quota = quota.max(1);
    match cores {
        _ if mask.is_empty() => (cores.unwrap_or(quota).max(1), Vec::new()),
        None if quota < mask.len() => (quota, Vec::new()),
        _ => {
            let n = cores.unwrap_or(mask.len()).max(1);
            (n, mask.into_iter().cycle().take(n).collect())
        }
    }
}

/// Sends `WorkerExited` when a worker thread ends without a stop request (also when it
/// unwinds from a panic).
struct ExitNotice {
    id: usize,
    tx: mpsc::Sender<Event>,
    stop: Arc<AtomicBool>,
}

impl Drop for ExitNotice {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            let _ = self.tx.send(Event::WorkerExited(self.id));
        }
    }
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The io driver each worker got.
    pub fn drivers(&self) -> &[Driver] {
        &self.drivers
    }

    /// For the signal thread in main.
    pub fn event_sender(&self) -> mpsc::Sender<Event> {
        self.events_tx.clone()
    }

    /// Block until a signal arrives or a worker dies.
    pub fn next_event(&self) -> Event {
        // The server holds a sender itself, so recv cannot fail.
        self.events_rx.recv().unwrap_or(Event::Signal(0))
    }

    /// The shared board (tests inspect offline flags through it).
    pub fn board(&self) -> &Arc<Board> {
        &self.board
    }

    /// Error reports sent, failed and dropped so far (all zero without a provider).
    pub fn report_stats(&self) -> ReportStats {
        self.reporter.stats()
    }

    /// Stop accepting, let in-flight requests finish (bounded by
    /// `OPR_PROXY_SHUTDOWN_TIMEOUT`), stop the checker. Returns when every thread ended.
    pub fn shutdown(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.workers.drain(..) {
            let _ = handle.join();
        }
        if let Some(checker) = self.checker.take() {
            checker.stop();
        }
        // Every worker flushed its lines when it stopped; write them out.
        if let Some(writer) = self.access_writer.take() {
            writer.finish();
        }
        // Last, so reports from the drain and the checker's last round go out too.
        if let Some(reporter) = self.reporter_thread.take() {
            reporter.stop();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::plan_workers;
    use core_affinity::CoreId;

    fn ids(n: usize) -> Vec<CoreId> {
        (0..n).map(|id| CoreId { id }).collect()
    }

    fn pinned(plan: &(usize, Vec<CoreId>)) -> Vec<usize> {
        plan.1.iter().map(|c| c.id).collect()
    }

    #[test]
    fn one_pinned_worker_per_cpu_of_the_mask() {
        let plan = plan_workers(ids(4), 4, None);
        assert_eq!((plan.0, pinned(&plan)), (4, vec![0, 1, 2, 3]));
    }

    #[test]
    fn a_quota_narrower_than_the_mask_runs_that_many_workers_unpinned() {
        // A pod with a 2-CPU limit on a 16-CPU node, no static CPU manager.
        let plan = plan_workers(ids(16), 2, None);
        assert_eq!((plan.0, pinned(&plan)), (2, vec![]));
    }

    #[test]
    fn opr_proxy_cores_pins_that_many_whatever_the_quota() {
        let plan = plan_workers(ids(16), 2, Some(3));
        assert_eq!((plan.0, pinned(&plan)), (3, vec![0, 1, 2]));
        let plan = plan_workers(ids(2), 2, Some(3));
        assert_eq!((plan.0, pinned(&plan)), (3, vec![0, 1, 0]));
    }

    #[test]
    fn no_affinity_information_runs_unpinned() {
        let plan = plan_workers(Vec::new(), 4, None);
        assert_eq!((plan.0, pinned(&plan)), (4, vec![]));
        let plan = plan_workers(Vec::new(), 4, Some(2));
        assert_eq!((plan.0, pinned(&plan)), (2, vec![]));
    }
}
