//! The load generator: keep-alive HTTP/1.1 connections on one monoio runtime per thread,
//! closed loop (each connection back-to-back) or open loop (fixed schedule; latency counted
//! from the *scheduled* send time, i.e. corrected for coordinated omission).

pub mod framing;
pub mod schedule;
pub mod stats;

use crate::coldstart::{Mix, Tally};
use framing::{FramingError, Response, ResponseParser};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use schedule::Schedule;
use stats::{new_histogram, record, ErrorCounts, ErrorKind};
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Read buffer per connection: large bodies stream through it.
const READ_BUF: usize = 64 * 1024;
/// Connects in flight at once per thread while the connections are opened (a burst of
/// 1024 SYNs can overflow a 511-entry accept backlog and cost a 1 s SYN retry).
const CONNECT_BATCH: usize = 64;
/// Pause after a failed connect in closed-loop mode, so a dead target is not hammered.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
const RING_ENTRIES: u32 = 4096;

/// One request, serialised once (head and body) and shared by every connection.
#[derive(Clone, Debug)]
pub struct Request {
    wire: Arc<Vec<u8>>,
    head_request: bool,
}

impl Request {
    /// `body_len` bytes of the mock's pattern are sent with Content-Length framing.
    pub fn new(
        method: &str,
        path: &str,
        host: &str,
        headers: &[(String, String)],
        body_len: usize,
    ) -> Request {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if body_len > 0 || method == "POST" || method == "PUT" {
            head.push_str(&format!("Content-Length: {body_len}\r\n"));
        }
        head.push_str("\r\n");
        let mut wire = head.into_bytes();
        wire.reserve(body_len);
        wire.extend((0..body_len as u64).map(crate::pattern_byte));
        Request {
            wire: Arc::new(wire),
            head_request: method == "HEAD",
        }
    }

    /// The bytes sent per request (head and body).
    pub fn wire_len(&self) -> usize {
        self.wire.len()
    }
}

/// One blocking request on a fresh std connection (readiness and smoke checks).
pub fn once(addr: SocketAddr, req: &Request, timeout: Duration) -> io::Result<Response> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    exchange_blocking(&mut s, req)
}

/// One request on an open blocking connection (its timeouts apply); the connection stays
/// usable for the next request when the response was complete.
pub fn exchange_blocking(s: &mut std::net::TcpStream, req: &Request) -> io::Result<Response> {
    use std::io::{Read, Write};
    s.write_all(&req.wire)?;
    let mut parser = ResponseParser::new(req.head_request);
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return parser.eof().map_err(io::Error::other);
        }
        let feed = parser.feed(&buf[..n]).map_err(io::Error::other)?;
        if let Some(resp) = feed.done {
            return Ok(resp);
        }
    }
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Every connection sends its next request as soon as the previous response ended.
    Closed,
    /// `rate` requests/s in total on a fixed schedule, whatever the responses do.
    Open { rate: f64 },
}

#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Connection `i` goes to `addrs[i % addrs.len()]`.
    pub addrs: Vec<SocketAddr>,
    pub request: Request,
    pub connections: usize,
    pub threads: usize,
    pub load: Load,
    /// Load runs this long before the measured window starts.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// Per request (from its scheduled start); also the longest wait after the window.
    pub timeout: Duration,
    /// Set to end the run early (Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Cold-start runs: send one request per runtime by popularity instead of `request`,
    /// and tally who answered each runtime.
    pub mix: Option<Arc<Mix>>,
}

/// What a run measured inside its window.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// Latency of successful requests started in the window, µs.
    pub latency: Histogram<u64>,
    /// Latency of `503` answers started in the window (shed by the proxy), µs.
    pub shed: Histogram<u64>,
    /// With a `mix`: successful answers in the window by runtime and executor.
    pub tally: Option<Tally>,
    /// Open loop: how late sends left after their scheduled time when the connection was
    /// free (timer granularity and generator overload, not the server), µs.
    pub lag: Histogram<u64>,
    /// 2xx responses that completed inside the window.
    pub ok: u64,
    /// Requests started inside the window.
    pub sent: u64,
    /// Errors of requests started inside the window (plus failed initial connects).
    pub errors: ErrorCounts,
    pub window: Duration,
    /// Response body bytes of successful requests started in the window.
    pub body_bytes: u64,
    /// Per quantity the sampler reports (e.g. client, proxy): CPU time used in the window;
    /// None where a reading failed. Empty without a sampler or when the run was stopped.
    pub cpu: Vec<Option<Duration>>,
    /// io driver of the generator threads, e.g. `io_uring (coop_taskrun+single_issuer)`.
    pub driver: String,
}

impl RunResult {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// CPU time of sampled quantity `i` per successful request, µs.
    pub fn cpu_per_request(&self, i: usize) -> Option<f64> {
        let cpu = self.cpu.get(i).copied().flatten()?;
        (self.ok > 0).then(|| cpu.as_secs_f64() * 1e6 / self.ok as f64)
    }

    /// CPU time of sampled quantity `i` as a fraction of one core.
    pub fn cpu_utilisation(&self, i: usize) -> Option<f64> {
        let cpu = self.cpu.get(i).copied().flatten()?;
        Some(cpu.as_secs_f64() / self.window.as_secs_f64().max(1e-9))
    }
}

/// Reads cumulative CPU times (e.g. of the client and the proxy) for [`run`] to sample;
/// always the same number of quantities, None for one that cannot be read.
pub type CpuSampler<'a> = &'a (dyn Fn() -> Vec<Option<Duration>> + Sync);

/// Runs the load described by `cfg`. `cpu` is sampled at the start and the end of the
/// measured window; the result holds the differences.
pub fn run(cfg: &RunConfig, cpu: Option<CpuSampler<'_>>) -> io::Result<RunResult> {
    if cfg.addrs.is_empty() || cfg.connections == 0 || cfg.threads == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "need at least one address, connection and thread",
        ));
    }
    let threads = cfg.threads.min(cfg.connections);
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let conns: Vec<usize> = (t..cfg.connections).step_by(threads).collect();
                let barrier = &barrier;
                std::thread::Builder::new()
                    .name(format!("loadgen-{t}"))
                    .spawn_scoped(scope, move || thread_main(cfg, conns, barrier))
            })
            .collect::<io::Result<_>>()?;
        let sampled = sample_window(cfg, cpu, &barrier);
        let mut total = ThreadStats::new(cfg.mix.as_deref());
        let mut driver = String::new();
        let mut first_err = None;
        for w in workers {
            match w.join() {
                Ok(Ok((stats, d))) => {
                    total.merge(&stats);
                    driver = d;
                }
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(io::Error::other("generator panicked"))),
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(RunResult {
            latency: total.latency,
            shed: total.shed,
            tally: total.tally,
            lag: total.lag,
            ok: total.ok,
            sent: total.sent,
            errors: total.errors,
            window: cfg.duration,
            body_bytes: total.body_bytes,
            cpu: sampled,
            driver,
        })
    })
}

/// Waits with the generator threads, then samples `cpu` at both edges of the window.
fn sample_window(
    cfg: &RunConfig,
    cpu: Option<CpuSampler<'_>>,
    barrier: &Barrier,
) -> Vec<Option<Duration>> {
    barrier.wait();
    let t0 = Instant::now();
    let sample = || -> Option<Vec<Option<Duration>>> {
        let cpu = cpu?;
        let start = t0 + cfg.warmup;
        sleep_until_or_stop(start, &cfg.stop)?;
        let before = cpu();
        sleep_until_or_stop(start + cfg.duration, &cfg.stop)?;
        let after = cpu();
        Some(
            after
                .iter()
                .zip(&before)
                .map(|(a, b)| Some(a.as_ref()?.saturating_sub((*b)?)))
                .collect(),
        )
    };
    sample().unwrap_or_default()
}

/// None when stopped first.
fn sleep_until_or_stop(deadline: Instant, stop: &AtomicBool) -> Option<()> {
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        let now = Instant::now();
        if now >= deadline {
            return Some(());
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

#[derive(Clone, Debug)]
struct ThreadStats {
    latency: Histogram<u64>,
    shed: Histogram<u64>,
    tally: Option<Tally>,
    lag: Histogram<u64>,
    ok: u64,
    sent: u64,
    errors: ErrorCounts,
    body_bytes: u64,
}

impl ThreadStats {
    fn new(mix: Option<&Mix>) -> ThreadStats {
        ThreadStats {
            latency: new_histogram(),
            shed: new_histogram(),
            tally: mix.map(|m| Tally::new(m.requests.len(), m.executors)),
            lag: new_histogram(),
            ok: 0,
            sent: 0,
            errors: ErrorCounts::default(),
            body_bytes: 0,
        }
    }

    fn merge(&mut self, other: &ThreadStats) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.shed.add(&other.shed);
        if let (Some(a), Some(b)) = (&mut self.tally, &other.tally) {
            a.merge(b);
        }
        let _ = self.lag.add(&other.lag);
        self.ok += other.ok;
        self.sent += other.sent;
        self.errors.merge(&other.errors);
        self.body_bytes += other.body_bytes;
    }
}

/// One generator thread: its own runtime, its share of the connections.
fn thread_main(
    cfg: &RunConfig,
    conns: Vec<usize>,
    barrier: &Barrier,
) -> io::Result<(ThreadStats, String)> {
    let rt = match Runtime::build() {
        Ok(rt) => rt,
        Err(e) => {
            barrier.wait(); // the others must not wait for us forever
            return Err(e);
        }
    };
    let driver = rt.name();
    let stats = rt.block_on(thread_async(cfg.clone(), conns, barrier));
    Ok((stats, driver))
}

/// Per-thread state shared by its connection tasks.
struct Ctx {
    cfg: RunConfig,
    t0: Instant,
    win_start: Instant,
    win_end: Instant,
    stats: RefCell<ThreadStats>,
}

async fn thread_async(cfg: RunConfig, conns: Vec<usize>, barrier: &Barrier) -> ThreadStats {
    let mut initial_errors = ErrorCounts::default();
    let mut streams = Vec::with_capacity(conns.len());
    for batch in conns.chunks(CONNECT_BATCH) {
        let handles: Vec<_> = batch
            .iter()
            .map(|&i| monoio::spawn(connect(cfg.addrs[i % cfg.addrs.len()])))
            .collect();
        for h in handles {
            let stream = h.await.ok();
            if stream.is_none() {
                initial_errors.add(ErrorKind::Connect);
            }
            streams.push(stream);
        }
    }
    // Every thread starts loading at the same moment; nothing runs on this thread meanwhile.
    barrier.wait();
    let t0 = Instant::now();
    let win_start = t0 + cfg.warmup;
    let ctx = Rc::new(Ctx {
        t0,
        win_start,
        win_end: win_start + cfg.duration,
        stats: RefCell::new(ThreadStats::new(cfg.mix.as_deref())),
        cfg,
    });
    ctx.stats.borrow_mut().errors = initial_errors;
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(streams)
        .map(|(i, stream)| monoio::spawn(drive(Rc::clone(&ctx), i, stream)))
        .collect();
    for t in tasks {
        t.await;
    }
    let stats = ctx.stats.borrow().clone();
    stats
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_addr(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One connection's request loop until the window ends (or stop).
async fn drive(ctx: Rc<Ctx>, index: usize, mut stream: Option<TcpStream>) {
    let cfg = &ctx.cfg;
    let addr = cfg.addrs[index % cfg.addrs.len()];
    let schedule = match cfg.load {
        Load::Open { rate } => Some(Schedule::new(rate, cfg.connections, index)),
        Load::Closed => None,
    };
    let mut parser = ResponseParser::new(cfg.request.head_request);
    let mut rng = cfg.mix.as_ref().map(|m| m.rng_for(index));
    let mut buf = Vec::with_capacity(READ_BUF);
    let mut k: u64 = 0;
    // When the previous response ended (or the run started).
    let mut free_since = ctx.t0;
    loop {
        if cfg.stop.load(Ordering::Relaxed) {
            break;
        }
        // `start` is where latency is counted from; the request belongs to the window when
        // it starts inside it.
        let start = match &schedule {
            None => {
                let now = Instant::now();
                if now >= ctx.win_end {
                    break;
                }
                now
            }
            Some(s) => {
                let due = ctx.t0 + s.at(k);
                k += 1;
                if due >= ctx.win_end {
                    break;
                }
                if due > Instant::now() {
                    monoio::time::sleep_until(monoio::time::Instant::from_std(due)).await;
                }
                let sent = Instant::now();
                if free_since > due {
                    // The connection was still busy with the previous request: the server
                    // made us late, and that wait counts (coordinated omission).
                    due
                } else {
                    // Free in time: any delay is the timer's (1 ms wheel) or ours.
                    if in_window(&ctx, due) {
                        record(&mut ctx.stats.borrow_mut().lag, sent - due);
                    }
                    sent
                }
            }
        };
        let belongs = in_window(&ctx, start);
        if belongs {
            ctx.stats.borrow_mut().sent += 1;
        }
        let (request, runtime) = match (&cfg.mix, &mut rng) {
            (Some(mix), Some(rng)) => {
                let i = mix.zipf.draw(rng);
                (&mix.requests[i], Some(i))
            }
            _ => (&cfg.request, None),
        };
        let left = cfg.timeout.saturating_sub(start.elapsed());
        let outcome =
            monoio::time::timeout(left, exchange(&mut stream, addr, request, &mut parser, buf))
                .await;
        let done = Instant::now();
        free_since = done;
        let result = match outcome {
            Ok((result, b)) => {
                buf = b;
                result
            }
            Err(_) => {
                // The buffer went with the cancelled read; the stream may hold half a
                // response, so it is never reused.
                buf = Vec::with_capacity(READ_BUF);
                Err(ErrorKind::Timeout)
            }
        };
        match result {
            Ok(resp) => {
                if !resp.keep_alive {
                    stream = None;
                }
                let mut st = ctx.stats.borrow_mut();
                if (200..300).contains(&resp.status) {
                    if belongs {
                        record(&mut st.latency, done - start);
                        st.body_bytes += resp.body_len;
                        if let (Some(t), Some(i)) = (&mut st.tally, runtime) {
                            t.record(i, &resp);
                        }
                    }
                    if done >= ctx.win_start && done <= ctx.win_end {
                        st.ok += 1;
                    }
                } else if belongs {
                    st.errors.add(ErrorKind::Status(resp.status));
                    if resp.status == 503 {
                        record(&mut st.shed, done - start);
                    }
                }
            }
            Err(kind) => {
                stream = None;
                parser.reset();
                if belongs {
                    ctx.stats.borrow_mut().errors.add(kind);
                }
                if kind == ErrorKind::Connect && schedule.is_none() {
                    monoio::time::sleep(CONNECT_BACKOFF).await;
                }
            }
        }
    }
}

fn in_window(ctx: &Ctx, t: Instant) -> bool {
    t >= ctx.win_start && t < ctx.win_end
}

/// Sends the request (connecting first if needed) and reads one whole response.
async fn exchange(
    slot: &mut Option<TcpStream>,
    addr: SocketAddr,
    req: &Request,
    parser: &mut ResponseParser,
    mut buf: Vec<u8>,
) -> (Result<Response, ErrorKind>, Vec<u8>) {
    if slot.is_none() {
        match connect(addr).await {
            Ok(s) => *slot = Some(s),
            Err(_) => return (Err(ErrorKind::Connect), buf),
        }
    }
    let Some(stream) = slot.as_mut() else {
        return (Err(ErrorKind::Connect), buf);
    };
    let (written, _) = stream.write_all(Arc::clone(&req.wire)).await;
    if written.is_err() {
        return (Err(ErrorKind::Write), buf);
    }
    loop {
        let (read, b) = stream.read(buf).await;
        buf = b;
        let n = match read {
            Ok(n) => n,
            Err(_) => return (Err(ErrorKind::Read), buf),
        };
        if n == 0 {
            let result = parser.eof().map_err(|e| match e {
                FramingError::Truncated => ErrorKind::Read,
                _ => ErrorKind::Protocol,
            });
            return (result, buf);
        }
        match parser.feed(&buf[..n]) {
            Err(_) => return (Err(ErrorKind::Protocol), buf),
            // Bytes after the response: nothing was pipelined, so the server is confused.
            Ok(feed) if feed.done.is_some() && feed.consumed != n => {
                return (Err(ErrorKind::Protocol), buf)
            }
            Ok(feed) => {
                if let Some(resp) = feed.done {
                    return (Ok(resp), buf);
                }
            }
        }
    }
}

/// io_uring with the cheapest setup flags the kernel accepts, else epoll (as the proxy
/// does, docs/performance.md "io_uring setup flags"): the generator shares a core with the mocks, so its cost matters.
pub(crate) enum Runtime {
    Uring(
        monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>,
        &'static str,
    ),
    Epoll(monoio::Runtime<monoio::time::TimeDriver<LegacyDriver>>),
}

type FlagSet = (&'static str, fn(&mut io_uring::Builder));

const URING_FLAG_SETS: [FlagSet; 3] = [
    ("coop_taskrun+single_issuer", |b| {
        b.setup_coop_taskrun().setup_single_issuer();
    }),
    ("coop_taskrun", |b| {
        b.setup_coop_taskrun();
    }),
    ("default", |_| {}),
];

impl Runtime {
    pub(crate) fn build() -> io::Result<Runtime> {
        if std::env::var_os("LOADTEST_EPOLL").is_none() {
            for (name, flags) in URING_FLAG_SETS {
                let mut urb = io_uring::IoUring::builder();
                flags(&mut urb);
                if let Ok(rt) = RuntimeBuilder::<IoUringDriver>::new()
                    .with_entries(RING_ENTRIES)
                    .uring_builder(urb)
                    .enable_timer()
                    .build()
                {
                    return Ok(Runtime::Uring(rt, name));
                }
            }
        }
        let rt = RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(RING_ENTRIES)
            .enable_timer()
            .build()?;
        Ok(Runtime::Epoll(rt))
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Runtime::Uring(_, flags) => format!("io_uring ({flags})"),
            Runtime::Epoll(_) => "epoll".to_string(),
        }
    }

    pub(crate) fn block_on<F: Future>(self, f: F) -> F::Output {
        match self {
            Runtime::Uring(mut rt, _) => rt.block_on(f),
            Runtime::Epoll(mut rt) => rt.block_on(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let headers = vec![("Authorization".to_string(), "Bearer k".to_string())];
        let r = Request::new("GET", "/v1/ping", "127.0.0.1:9", &headers, 0);
        assert_eq!(
            r.wire.as_slice(),
            b"GET /v1/ping HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAuthorization: Bearer k\r\n\r\n"
        );
        let r = Request::new("POST", "/v1/upload", "h", &[], 300);
        let head = b"POST /v1/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 300\r\n\r\n";
        assert_eq!(r.wire_len(), head.len() + 300);
        assert_eq!(&r.wire[..head.len()], head);
        assert_eq!(r.wire[head.len() + 251], crate::pattern_byte(251));
    }
}
