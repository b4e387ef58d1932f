//! One worker thread: pinned to a core, its own monoio runtime (io_uring with setup
//! flags, falling back to epoll), its own SO_REUSEPORT listener, picker, pool and
//! buffers; the accept loop and the drain on stop.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::access_log::{self, AccessLog};
use crate::config::{Config, IoDriver};
use crate::ctx::{ActiveGuard, WorkerCtx};
use crate::idle::Closed;
use crate::io_driver::RING_ENTRIES;
use crate::metrics::Metrics;
use crate::snapshot::Board;
use crate::{error, info, warn};

/// How often the accept loop looks at the process-wide stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How often a worker at its connection cap looks for a free slot.
const CAP_POLL: Duration = Duration::from_millis(5);
const LISTEN_BACKLOG: i32 = 4096;

/// What a worker thread needs from the process.
pub(crate) struct WorkerSpec {
    pub id: usize,
    pub core: Option<core_affinity::CoreId>,
    /// The driver to build: `OPR_PROXY_IO_DRIVER`, or epoll when the start-up probe
    /// (io_driver.rs) found io_uring unable to serve.
    pub io: IoDriver,
    /// Bound by the main thread, in worker order (lib.rs).
    pub listener: std::net::TcpListener,
    pub config: Arc<Config>,
    pub board: Arc<Board>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<AccessLog>,
    pub stop: Arc<AtomicBool>,
    pub reporter: crate::report::Reporter,
}

/// Which io driver a worker ended up with (logged once per worker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    IoUring(&'static str),
    Epoll,
}

/// Build the runtime and serve until stopped. Runs on the worker's own thread.
/// `ready` is called once the listener is bound, with the driver chosen.
pub(crate) fn run(spec: WorkerSpec, ready: impl FnOnce(std::io::Result<Driver>)) {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            warn!("worker {}: could not pin to core {}", spec.id, core.id);
        }
    }
    match build_runtime(spec.io) {
        Ok(Runtime::Uring(mut rt, flags)) => {
            rt.block_on(serve(spec, Driver::IoUring(flags), ready));
        }
        Ok(Runtime::Epoll(mut rt, why)) => {
            if let Some(why) = why {
                info!(
                    "worker {}: io_uring refused ({why}); falling back to epoll",
                    spec.id
                );
            }
            rt.block_on(serve(spec, Driver::Epoll, ready));
        }
        Err(e) => ready(Err(e)),
    }
}

enum Runtime {
    Uring(monoio::Runtime<TimeDriver<IoUringDriver>>, &'static str),
    /// With the reason io_uring was not used, when it was tried.
    Epoll(
        monoio::Runtime<TimeDriver<LegacyDriver>>,
        Option<std::io::Error>,
    ),
}

/// io_uring with the cheapest setup flags this kernel accepts, then plain io_uring,
/// then epoll (Docker's default seccomp profile refuses io_uring).
fn build_runtime(choice: IoDriver) -> std::io::Result<Runtime> {
    let mut last_err = None;
    if choice != IoDriver::Epoll {
        for (name, flags) in URING_FLAG_SETS {
            let mut urb = io_uring::IoUring::builder();
            flags(&mut urb);
            match RuntimeBuilder::<IoUringDriver>::new()
                .with_entries(RING_ENTRIES)
                .uring_builder(urb)
                .enable_timer()
                .build()
            {
                Ok(rt) => return Ok(Runtime::Uring(rt, name)),
                Err(e) => last_err = Some(e),
            }
        }
        if choice == IoDriver::IoUring {
            let e = last_err.unwrap_or_else(|| std::io::Error::other("unavailable"));
            return Err(std::io::Error::new(e.kind(), format!("io_uring: {e}")));
        }
    }
    let rt = RuntimeBuilder::<LegacyDriver>::new()
        .with_entries(RING_ENTRIES)
        .enable_timer()
        .build()?;
    Ok(Runtime::Epoll(rt, last_err))
}

type FlagSet = (&'static str, fn(&mut io_uring::Builder));

/// Measured in docs/performance.md "io_uring setup flags": COOP_TASKRUN + SINGLE_ISSUER cuts a third of the kernel time per
/// request. Both need 6.0; older 5.x kernels reject them with EINVAL, hence the ladder.
const URING_FLAG_SETS: [FlagSet; 3] = [
    ("coop_taskrun+single_issuer", |b| {
        b.setup_coop_taskrun().setup_single_issuer();
    }),
    ("coop_taskrun", |b| {
        b.setup_coop_taskrun();
    }),
    ("default", |_| {}),
];

/// A listener with SO_REUSEPORT, so every worker has its own accept queue on one port.
/// Bound with socket2 because the main thread has no runtime: it binds the first one to
/// learn the port (when 0 was asked), then the others, and hands each to its worker.
pub(crate) fn reuse_port_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    // The epoll driver needs a non-blocking socket; a blocking accept would stall the
    // whole worker thread.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn serve(spec: WorkerSpec, driver: Driver, ready: impl FnOnce(std::io::Result<Driver>)) {
    let listener = match TcpListener::from_std(spec.listener) {
        Ok(l) => l,
        Err(e) => {
            ready(Err(e));
            return;
        }
    };
    let ctx = Rc::new(WorkerCtx::new(
        spec.id,
        spec.config.clone(),
        spec.board.clone(),
        spec.metrics.clone(),
        spec.access_log,
        spec.reporter.clone(),
    ));
    if ctx.access_log.is_some() {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            loop {
                monoio::time::sleep(access_log::FLUSH).await;
                if let Some(log) = &ctx.access_log {
                    log.flush(ctx.m());
                }
            }
        });
    }
    {
        // The idle sweep (idle.rs): a quarter of the idle timeout late at most, up to 1 s.
        // Pooled executor connections past their idle timeout are closed on the same tick.
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let every = (ctx.config.idle_timeout / 4).min(Duration::from_secs(1));
            while !ctx.stopping.get() {
                monoio::time::sleep(every).await;
                let timeout = ctx.config.idle_timeout;
                ctx.idle.sweep(Instant::now(), timeout, Closed::Idle);
                ctx.pool.expire_idle(ctx.m());
            }
        });
    }
    if ctx.admission.enabled() {
        monoio::spawn(crate::forward::admit::watch(ctx.clone()));
    }
    let driver_name = match driver {
        Driver::IoUring(flags) => format!("io_uring ({flags})"),
        Driver::Epoll => "epoll".to_string(),
    };
    info!("worker {} serving with {driver_name}", spec.id);
    ctx.m().set_driver(driver_name, spec.core.map(|c| c.id));
    ready(Ok(driver));

    accept_loop(&listener, &ctx, &spec.stop).await;
    drop(listener);
    drain(&ctx).await;
}

/// Failed accepts in a row between two log lines: a minute of 50 ms retries.
const ACCEPT_FAILURES_LOGGED_EVERY: u64 = 1200;

async fn accept_loop(listener: &TcpListener, ctx: &Rc<WorkerCtx>, stop: &AtomicBool) {
    let cap = ctx.config.max_connections;
    let failures = Cell::new(0u64);
    loop {
        // Backpressure: at the cap, stop accepting and let the kernel's backlog hold new
        // clients until a connection closes (rather than accepting and failing them).
        while ctx.active_connections() >= cap {
            if stop.load(Ordering::Relaxed) {
                ctx.begin_stop();
                return;
            }
            monoio::time::sleep(CAP_POLL).await;
        }
        // The accept stays pinned across stop polls so no accepted socket is dropped.
        let accept = listener.accept();
        futures_pin(accept, ctx, stop, &failures).await;
        if ctx.stopping.get() {
            return;
        }
    }
}

/// Wait for one accept (spawning its task) or for the stop flag.
/// `failures` counts accepts failed in a row: the first is logged, then one line a minute
/// while it lasts, and one when accepting works again (not a line per 50 ms retry).
async fn futures_pin<F>(accept: F, ctx: &Rc<WorkerCtx>, stop: &AtomicBool, failures: &Cell<u64>)
where
    F: std::future::Future<Output = std::io::Result<(monoio::net::TcpStream, SocketAddr)>>,
{
    let mut accept = std::pin::pin!(accept);
    loop {
        monoio::select! {
            accepted = &mut accept => {
                match accepted {
                    Ok((stream, peer)) => {
                        if failures.get() > 0 {
                            info!(
                                "worker {}: accepting again after {} failed accepts",
                                ctx.id,
                                failures.replace(0)
                            );
                        }
                        let _ = stream.set_nodelay(true);
                        // A client that stops reading an answer is cut off after
                        // OPR_PROXY_BODY_TIMEOUT by the kernel, not by a timer per write.
                        crate::socket::set_user_timeout(
                            std::os::fd::AsRawFd::as_raw_fd(&stream),
                            ctx.config.body_timeout,
                        );
                        let guard = ActiveGuard::new(ctx.clone());
                        let ctx = ctx.clone();
                        monoio::spawn(async move {
                            crate::http1::serve(ctx, stream, peer).await;
                            drop(guard);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        let n = failures.get() + 1;
                        failures.set(n);
                        if n == 1 {
                            error!(
                                "worker {}: accept failed: {e} (retrying every 50 ms)",
                                ctx.id
                            );
                        } else if n % ACCEPT_FAILURES_LOGGED_EVERY == 0 {
                            error!("worker {}: accept still failing ({n} in a row): {e}", ctx.id);
                        }
                        monoio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                return;
            }
            _ = monoio::time::sleep(STOP_POLL) => {
                if stop.load(Ordering::Relaxed) {
                    ctx.begin_stop();
                    return;
                }
            }
        }
    }
}

/// Let in-flight requests finish within the shutdown timeout; idle keep-alive
/// connections were shut down by `begin_stop` and close themselves.
async fn drain(ctx: &Rc<WorkerCtx>) {
    ctx.pool.clear();
    ctx.pipes.clear();
    let deadline = std::time::Instant::now() + ctx.config.shutdown_timeout;
    while ctx.active_connections() > 0 && std::time::Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = ctx.active_connections();
    if left > 0 {
        warn!(
            "worker {}: shutdown timeout, closing {left} connection(s)",
            ctx.id
        );
    }
    if let Some(log) = &ctx.access_log {
        log.close(ctx.m());
    }
}
