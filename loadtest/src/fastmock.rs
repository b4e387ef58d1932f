//! A cheap mock executor for load tests: one monoio thread, keep-alive HTTP/1.1, only the
//! load routes (/v1/health, /v1/ping, /v1/download, /v1/upload, /v1/echo, /v1/mock/stats)
//! and optionally the warm-runtime and service-time model of `warm.rs`. The std-threads
//! `MockExecutor` costs a thread wake-up per request and becomes the bottleneck under load.

use crate::gen::Runtime;
use crate::mock::pattern_block;
use crate::warm::{Slots, WarmModel, Warmth};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 64 * 1024;
const READ_BUF: usize = 64 * 1024;
const BACKLOG: i32 = 4096;
/// Largest `bytes=` a download may ask for (64 GiB): a typo should not stream forever.
const MAX_DOWNLOAD: u64 = 64 << 30;

struct Shared {
    name: String,
    stop: AtomicBool,
    requests: AtomicU64,
    cold_starts: AtomicU64,
    cold_waits: AtomicU64,
    warm_hits: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// How the mock executes requests other than health checks (default: at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastMockOptions {
    /// `(K, C)`: at most K runtimes (`x-opr-runtime-id`) warm, least recently used
    /// evicted; a request for a cold one waits C first. Answers carry `x-mock-cold`.
    pub warm: Option<(usize, Duration)>,
    /// Every request takes this long once it can run (its runtime is warm)...
    pub service: Duration,
    /// ... on at most this many at once, the rest waiting in arrival order (0 = no limit).
    pub slots: usize,
}

/// Counters of a fast mock since it started (non-health requests unless said otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MockStats {
    /// Every request answered, health checks included.
    pub requests: u64,
    /// Runtimes started (requests that paid a cold start).
    pub cold_starts: u64,
    /// Requests that waited for a start another request had begun.
    pub cold_waits: u64,
    /// Requests whose runtime was warm.
    pub warm_hits: u64,
    /// Requests read and not yet answered, now and at most at once.
    pub in_flight: u64,
    pub max_in_flight: u64,
}

/// A running fast mock; stopped on drop.
pub struct FastMock {
    shared: Arc<Shared>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl FastMock {
    /// Listens on `bind` (`127.0.0.1:0` for any free port) and serves on a new thread.
    pub fn start(name: &str, bind: SocketAddr) -> io::Result<FastMock> {
        FastMock::start_with(name, bind, FastMockOptions::default())
    }

    /// Same, with an execution model.
    pub fn start_with(
        name: &str,
        bind: SocketAddr,
        model: FastMockOptions,
    ) -> io::Result<FastMock> {
        if name
            .bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b'"' || b == b'\\')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mock name must be plain text",
            ));
        }
        let shared = Arc::new(Shared {
            name: name.to_string(),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            cold_waits: AtomicU64::new(0),
            warm_hits: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("fastmock-{}", bind.port()))
            .spawn(move || {
                let rt = match Runtime::build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    // A deep accept queue: a proxy that opens executor connections in bursts
                    // must not meet SYN drops (a 1 s retransmit) at the mock. No
                    // SO_REUSEPORT, so a busy port is an error, not a silent second listener.
                    let opts = ListenerOpts::new()
                        .reuse_port(false)
                        .reuse_addr(true)
                        .backlog(BACKLOG);
                    let bound = TcpListener::bind_with_config(bind, &opts)
                        .and_then(|l| Ok((l.local_addr()?, l)));
                    match bound {
                        Ok((addr, listener)) => {
                            let _ = tx.send(Ok(addr));
                            let model = Rc::new(Model::new(&model));
                            let stopper = Rc::new(Stopper::default());
                            accept_loop(listener, thread_shared, model, &stopper).await;
                            // io_uring closes sockets with operations of their own: keep
                            // the ring turning until the listener's and the connections'
                            // closes went out, or the port keeps accepting after stop().
                            monoio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let addr = rx
            .recv()
            .map_err(|_| io::Error::other("fast mock thread died"))??;
        Ok(FastMock {
            shared,
            addr,
            thread: Some(thread),
        })
    }

    /// Loopback, any free port.
    pub fn start_named(name: &str) -> io::Result<FastMock> {
        FastMock::start(name, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` to connect to.
    pub fn hostname(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            Ipv4Addr::LOCALHOST.into()
        } else {
            self.addr.ip()
        };
        SocketAddr::new(ip, self.addr.port()).to_string()
    }

    /// Requests answered, health checks included.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> MockStats {
        self.shared.stats()
    }

    /// Stops accepting, drops every connection and joins the thread. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The accept loop notices the flag on its next accept: give it one (again, in
            // case one is lost), until the thread ended (bounded: 5 s).
            let deadline = Instant::now() + Duration::from_secs(5);
            while !thread.is_finished() && Instant::now() < deadline {
                let _ = std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port())),
                    Duration::from_millis(100),
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for FastMock {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn stats(&self) -> MockStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MockStats {
            requests: get(&self.requests),
            cold_starts: get(&self.cold_starts),
            cold_waits: get(&self.cold_waits),
            warm_hits: get(&self.warm_hits),
            in_flight: get(&self.in_flight),
            max_in_flight: get(&self.max_in_flight),
        }
    }
}

/// The execution model, owned by the mock's thread (its connection tasks share it).
struct Model {
    warm: Option<RefCell<WarmModel>>,
    slots: Option<RefCell<Slots>>,
}

impl Model {
    fn new(opts: &FastMockOptions) -> Model {
        let timed = !opts.service.is_zero() || opts.slots > 0;
        Model {
            warm: opts.warm.map(|(k, c)| RefCell::new(WarmModel::new(k, c))),
            slots: timed
                .then(|| RefCell::new(Slots::new(opts.service, opts.slots, Instant::now()))),
        }
    }

    /// Whether the request's runtime was warm, and when it is answered.
    fn admit(&self, runtime: Option<&str>, now: Instant) -> (Warmth, Instant) {
        let (warmth, ready) = match (&self.warm, runtime) {
            (Some(w), Some(id)) => w.borrow_mut().admit(id, now),
            _ => (Warmth::Untracked, now),
        };
        let done = match &self.slots {
            Some(s) => s.borrow_mut().done_at(ready),
            None => ready,
        };
        (warmth, done)
    }
}

/// Ends the connection tasks when the mock stops, while the runtime still runs (so their
/// sockets are closed). Holds one waker per open connection.
#[derive(Default)]
struct Stopper {
    stopped: Cell<bool>,
    next_id: Cell<u64>,
    wakers: RefCell<HashMap<u64, Waker>>,
}

impl Stopper {
    fn stop(&self) {
        self.stopped.set(true);
        for (_, w) in self.wakers.borrow_mut().drain() {
            w.wake();
        }
    }

    fn open(self: &Rc<Self>) -> Registration {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        Registration {
            stopper: Rc::clone(self),
            id,
        }
    }
}

/// One connection's place in the [`Stopper`]; leaves it on drop.
struct Registration {
    stopper: Rc<Stopper>,
    id: u64,
}

impl Registration {
    /// `fut`'s output, or None once the mock stops (`fut` is dropped unfinished).
    async fn or_stop<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if self.stopper.stopped.get() {
                return Poll::Ready(None);
            }
            if let Poll::Ready(v) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(v));
            }
            let mut wakers = self.stopper.wakers.borrow_mut();
            match wakers.get(&self.id) {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => {
                    wakers.insert(self.id, cx.waker().clone());
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.stopper.wakers.borrow_mut().remove(&self.id);
    }
}

/// Returns when stopped, after every connection task has ended (bounded: 1 s).
async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    model: Rc<Model>,
    stopper: &Rc<Stopper>,
) {
    loop {
        let accepted = listener.accept().await;
        if shared.stop.load(Ordering::SeqCst) {
            drop(listener);
            stopper.stop();
            for _ in 0..200 {
                if Rc::strong_count(stopper) == 1 {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                let reg = stopper.open();
                monoio::spawn(serve(stream, Arc::clone(&shared), Rc::clone(&model), reg));
            }
            // EMFILE and friends: back off instead of spinning.
            Err(_) => monoio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// A request head, reduced to what the routes need.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    method: String,
    target: String,
    content_length: u64,
    chunked: bool,
    close: bool,
    /// `x-opr-runtime-id`, when sent.
    runtime: Option<String>,
}

/// Parses a complete head (`\r\n\r\n` included). Err = 400.
fn parse_head(bytes: &[u8]) -> Result<Head, ()> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let (method, target, minor, fields) =
        crate::h1::parse_request_fields(bytes, &mut fields).map_err(|_| ())?;
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length: 0,
        chunked: false,
        close: minor == 0,
        runtime: None,
    };
    for h in fields {
        let value = std::str::from_utf8(h.value).map_err(|_| ())?;
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().map_err(|_| ())?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
        } else if h.name.eq_ignore_ascii_case("x-opr-runtime-id") {
            head.runtime = Some(value.to_string());
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    Ok(head)
}

/// What to send back.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// Status, content type, body.
    Small(u16, &'static str, String),
    /// 200 with this many pattern bytes.
    Download(u64),
}

/// `stats` is read only for `/v1/mock/stats`.
fn route(head: &Head, name: &str, stats: &dyn Fn() -> MockStats) -> Reply {
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let json = "application/json";
    match path {
        "/v1/health" => Reply::Small(
            200,
            json,
            "{\"status\":\"pass\",\"usage\":0,\"runtimes\":{}}".into(),
        ),
        "/v1/mock/stats" => {
            let s = stats();
            Reply::Small(
                200,
                json,
                format!(
                    "{{\"name\":\"{name}\",\"requests\":{},\"coldStarts\":{},\"coldWaits\":{},\
                     \"warmHits\":{},\"inFlight\":{},\"maxInFlight\":{}}}",
                    s.requests,
                    s.cold_starts,
                    s.cold_waits,
                    s.warm_hits,
                    s.in_flight,
                    s.max_in_flight
                ),
            )
        }
        "/v1/ping" => Reply::Small(
            200,
            json,
            format!("{{\"ping\":\"pong\",\"name\":\"{name}\"}}"),
        ),
        "/v1/upload" | "/v1/echo" => Reply::Small(
            200,
            json,
            format!(
                "{{\"name\":\"{name}\",\"bodyLength\":{}}}",
                head.content_length
            ),
        ),
        "/v1/download" => {
            let bytes = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("bytes="))
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|&n| n <= MAX_DOWNLOAD);
            match bytes {
                Some(n) => Reply::Download(n),
                None => Reply::Small(400, json, "{\"message\":\"bytes=N required\"}".into()),
            }
        }
        _ => Reply::Small(404, json, "{\"message\":\"not found\"}".into()),
    }
}

/// One connection: requests one after another until close or error.
async fn serve(mut stream: TcpStream, shared: Arc<Shared>, model: Rc<Model>, reg: Registration) {
    let mut pending: Vec<u8> = Vec::with_capacity(1024);
    let mut rbuf: Vec<u8> = Vec::with_capacity(READ_BUF);
    loop {
        // Head.
        let end = loop {
            if let Some(pos) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if pending.len() > MAX_HEAD {
                return;
            }
            let Some((r, b)) = reg.or_stop(stream.read(rbuf)).await else {
                return;
            };
            rbuf = b;
            match r {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&rbuf[..n]),
            }
        };
        let head = parse_head(&pending[..end]);
        pending.drain(..end);
        let Ok(head) = head else {
            let tags = Tags::plain(&shared.name);
            let _ = respond(&mut stream, &tags, 400, "text/plain", b"bad request", true).await;
            return;
        };
        if head.chunked {
            // Not needed by the load scenarios (every client sends Content-Length).
            let tags = Tags::plain(&shared.name);
            let _ = respond(
                &mut stream,
                &tags,
                501,
                "text/plain",
                b"chunked unsupported",
                true,
            )
            .await;
            return;
        }
        // Body: discarded as it arrives.
        let mut left = head.content_length;
        let take = left.min(pending.len() as u64) as usize;
        pending.drain(..take);
        left -= take as u64;
        while left > 0 {
            let Some((r, b)) = reg.or_stop(stream.read(rbuf)).await else {
                return;
            };
            rbuf = b;
            let n = match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let body = (n as u64).min(left) as usize;
            left -= body as u64;
            pending.extend_from_slice(&rbuf[body..n]);
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let (path, _) = head.target.split_once('?').unwrap_or((&head.target, ""));
        let executes = !matches!(path, "/v1/health" | "/v1/mock/stats");
        let mut warmth = Warmth::Untracked;
        if executes {
            let now = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
            shared.max_in_flight.fetch_max(now, Ordering::Relaxed);
            let (w, done) = model.admit(head.runtime.as_deref(), Instant::now());
            warmth = w;
            let counter = match w {
                Warmth::Untracked => None,
                Warmth::Warm => Some(&shared.warm_hits),
                Warmth::ColdStart => Some(&shared.cold_starts),
                Warmth::ColdWait => Some(&shared.cold_waits),
            };
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            if done > Instant::now() {
                let wait = monoio::time::sleep_until(monoio::time::Instant::from_std(done));
                if reg.or_stop(wait).await.is_none() {
                    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        let tags = Tags {
            name: &shared.name,
            cold: warmth.header(),
        };
        let ok = match route(&head, &shared.name, &|| shared.stats()) {
            Reply::Small(status, ctype, body) => {
                respond(
                    &mut stream,
                    &tags,
                    status,
                    ctype,
                    body.as_bytes(),
                    head.close,
                )
                .await
            }
            Reply::Download(n) => download(&mut stream, &tags, n, head.close).await,
        };
        if executes {
            shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        if ok.is_err() || head.close {
            return;
        }
    }
}

/// Headers every answer carries: who answered, and how warm the runtime was.
struct Tags<'a> {
    name: &'a str,
    cold: Option<&'static str>,
}

impl<'a> Tags<'a> {
    fn plain(name: &'a str) -> Tags<'a> {
        Tags { name, cold: None }
    }
}

fn head_bytes(tags: &Tags<'_>, status: u16, ctype: &str, len: u64, close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Status",
    };
    let conn = if close { "connection: close\r\n" } else { "" };
    let name = tags.name;
    let cold = match tags.cold {
        Some(v) => format!("x-mock-cold: {v}\r\n"),
        None => String::new(),
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len}\r\n\
         x-mock-name: {name}\r\n{cold}{conn}\r\n"
    )
    .into_bytes()
}

async fn respond(
    stream: &mut TcpStream,
    tags: &Tags<'_>,
    status: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut out = head_bytes(tags, status, ctype, body.len() as u64, close);
    out.extend_from_slice(body);
    stream.write_all(out).await.0.map(drop)
}

async fn download(stream: &mut TcpStream, tags: &Tags<'_>, n: u64, close: bool) -> io::Result<()> {
    let head = head_bytes(tags, 200, "application/octet-stream", n, close);
    stream.write_all(head).await.0?;
    let mut sent = 0u64;
    while sent < n {
        let block = pattern_block(sent, n - sent);
        sent += block.len() as u64;
        stream.write_all(block).await.0?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_routes() {
        let h = parse_head(
            b"POST /v1/upload HTTP/1.1\r\nContent-Length: 12\r\nConnection: keep-alive, close\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(h.content_length, 12);
        assert!(h.close && !h.chunked);
        assert_eq!(
            route(&h, "m", &MockStats::default),
            Reply::Small(
                200,
                "application/json",
                "{\"name\":\"m\",\"bodyLength\":12}".into()
            )
        );
        let h = parse_head(b"GET /v1/download?x=1&bytes=65536 HTTP/1.1\r\n\r\n").expect("valid");
        assert!(!h.close);
        assert_eq!(route(&h, "m", &MockStats::default), Reply::Download(65_536));
        let h = parse_head(b"GET /v1/download?bytes=-1 HTTP/1.0\r\n\r\n").expect("valid");
        assert!(h.close);
        assert!(matches!(
            route(&h, "m", &MockStats::default),
            Reply::Small(400, _, _)
        ));
        let h = parse_head(b"GET /nope HTTP/1.1\r\n\r\n").expect("valid");
        assert!(matches!(
            route(&h, "m", &MockStats::default),
            Reply::Small(404, _, _)
        ));
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(FastMock::start_named("bad\"name").is_err());
    }
}
