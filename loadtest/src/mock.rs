//! Mock executor: a small std-threads HTTP/1.1 server (accept thread + one thread per
//! connection) with scriptable health answers, request recording and stop(). Routes live in
//! `mock/routes.rs`, the wire format in `mock/http.rs`.

mod http;
mod routes;

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// What `GET /v1/health` answers.
#[derive(Clone, Debug)]
pub enum HealthMode {
    /// `{"status":"pass","usage":N,"runtimes":{"id":{"status":S,"usage":N}}}`; runtimes are
    /// `(id, status, usage)`.
    Pass {
        usage: u8,
        runtimes: Vec<(String, String, u8)>,
    },
    /// JSON without a top-level status: `{"usage":N}` or `{}`.
    NewStyle { usage: Option<u8> },
    /// 200 `OK` as text/plain.
    Text,
    /// 200 `{"status":"fail","usage":0,"runtimes":{}}`.
    Fail,
    /// That status with body `{"message":"unhealthy"}`.
    Status(u16),
    /// 200 with exactly this body (application/json).
    Raw(String),
    /// 200 with a 2 MiB JSON-looking body.
    Huge,
    /// Read the request, never answer (until stop).
    Hang,
}

/// Start options; see [`Default`] for the defaults.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// Sent back in `x-mock-name` on every response.
    pub name: String,
    /// Default `127.0.0.1:0` (any free port).
    pub bind: SocketAddr,
    /// Default `Pass { usage: 0, runtimes: vec![] }`.
    pub health: HealthMode,
    /// Added before answering every non-health request: a slow executor (balancing tests
    /// and the `--slow-executor` load test). Default zero.
    pub delay: Duration,
    /// With a `delay`: serve one request at a time, so the delay is also a capacity
    /// (1/delay requests/s) and requests queue under load, like an overloaded host.
    pub serial: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions {
            name: "mock".to_string(),
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            health: HealthMode::Pass {
                usage: 0,
                runtimes: Vec::new(),
            },
            delay: Duration::ZERO,
            serial: false,
        }
    }
}

/// One non-health request as the mock received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Exact request target, query included.
    pub target: String,
    /// In order, as received (values: UTF-8 when valid, else Latin-1).
    pub headers: Vec<(String, String)>,
    /// Decoded body length (chunk framing excluded).
    pub body_len: u64,
    /// Hex SHA-256 of the decoded body.
    pub body_sha256: String,
    /// True when the body came with chunked framing.
    pub chunked: bool,
    /// Trailer fields of a chunked body, in order.
    pub trailers: Vec<(String, String)>,
}

impl RecordedRequest {
    /// First value of a header, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Byte `i` of every generated body: deterministic, and 251 (prime) avoids aligning with
/// power-of-two buffer sizes, so shifted or repeated blocks change the hash.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of the first `len` pattern bytes, computed streaming.
pub fn pattern_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut i = 0u64;
    while i < len {
        let block = pattern_block(i, len - i);
        h.update(block);
        i += block.len() as u64;
    }
    hex(&h.finalize())
}

/// Request targets a mock keeps for `targets()` (a load test must not grow it forever).
pub const TARGETS_KEPT: usize = 4096;

/// Size of each write of generated bodies.
const BLOCK: usize = 64 * 1024;

/// Pattern bytes `start..start+min(max, BLOCK)` without computing them: a slice of a
/// precomputed block that is 251 bytes longer than [`BLOCK`].
pub(crate) fn pattern_block(start: u64, max: u64) -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    let table = TABLE.get_or_init(|| (0..(BLOCK + 251) as u64).map(pattern_byte).collect());
    let off = (start % 251) as usize;
    let n = usize::try_from(max).unwrap_or(BLOCK).min(BLOCK);
    &table[off..off + n]
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// State shared by the handle, the accept thread and the connection threads.
pub(crate) struct Shared {
    pub name: String,
    pub health: Mutex<HealthMode>,
    pub delay: Duration,
    /// Held during the delay when requests are served one at a time.
    pub serial: Option<Mutex<()>>,
    pub requests: AtomicU64,
    pub health_requests: AtomicU64,
    pub connections: AtomicU64,
    pub aborted: AtomicU64,
    /// Requests between being read and the start of their answer (the `delay`), now and
    /// at most so far: what a concurrency cap in front of this executor must bound.
    pub active: AtomicU64,
    pub max_active: AtomicU64,
    /// Targets of the first [`TARGETS_KEPT`] non-health requests, in arrival order.
    pub targets: Mutex<Vec<String>>,
    pub last: Mutex<Option<RecordedRequest>>,
    /// Set first by stop(); checked without locking.
    pub stopping: AtomicBool,
    /// Same flag under a mutex, so sleeping/hanging handlers can wait on `stop_cv`.
    stopped: Mutex<bool>,
    stop_cv: Condvar,
    /// Clones of every open connection, so stop() can shut them down.
    conns: Mutex<HashMap<u64, TcpStream>>,
}

impl Shared {
    /// Waits until stop() or until `timeout` passes (`None`: forever). True when stopped.
    pub fn wait_stopped(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|d| Instant::now().checked_add(d));
        let mut stopped = lock(&self.stopped);
        loop {
            if *stopped {
                return true;
            }
            match deadline {
                None => {
                    stopped = self
                        .stop_cv
                        .wait(stopped)
                        .unwrap_or_else(|e| e.into_inner());
                }
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return false;
                    }
                    stopped = self
                        .stop_cv
                        .wait_timeout(stopped, deadline - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    fn forget(&self, id: u64) {
        lock(&self.conns).remove(&id);
    }
}

/// Locks, ignoring poisoning: counters and snapshots stay usable even if a thread panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock executor. Dropping it stops it.
pub struct MockExecutor {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl MockExecutor {
    /// Binds `opts.bind` and starts serving on a background thread.
    pub fn start(opts: MockOptions) -> io::Result<MockExecutor> {
        // The name goes verbatim into a response header.
        if opts.name.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "mock name must not contain control characters",
            ));
        }
        let listener = TcpListener::bind(opts.bind)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: opts.name,
            health: Mutex::new(opts.health),
            delay: opts.delay,
            serial: opts.serial.then(|| Mutex::new(())),
            requests: AtomicU64::new(0),
            health_requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            active: AtomicU64::new(0),
            max_active: AtomicU64::new(0),
            targets: Mutex::new(Vec::new()),
            last: Mutex::new(None),
            stopping: AtomicBool::new(false),
            stopped: Mutex::new(false),
            stop_cv: Condvar::new(),
            conns: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let handle = thread::Builder::new()
            .name(format!("mock-accept-{}", addr.port()))
            .spawn(move || accept_loop(&accept_shared, listener))?;
        Ok(MockExecutor {
            shared,
            addr,
            accept: Mutex::new(Some(handle)),
        })
    }

    /// Starts with default options and this name.
    pub fn start_named(name: &str) -> io::Result<MockExecutor> {
        MockExecutor::start(MockOptions {
            name: name.to_string(),
            ..MockOptions::default()
        })
    }

    /// The bound address (actual port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` a client can connect to (loopback when bound to a wildcard address).
    pub fn hostname(&self) -> String {
        connectable(self.addr).to_string()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Changes the health answer for subsequent health requests.
    pub fn set_health(&self, mode: HealthMode) {
        *lock(&self.shared.health) = mode;
    }

    /// Non-health requests whose head and body were read completely.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn health_requests(&self) -> u64 {
        self.shared.health_requests.load(Ordering::SeqCst)
    }

    /// Connections that carried at least one non-health request head.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Requests whose body the peer cut off (closed or reset before it was complete).
    pub fn aborted(&self) -> u64 {
        self.shared.aborted.load(Ordering::SeqCst)
    }

    /// Most requests this executor worked on at once (read, not yet answering; see
    /// `MockOptions::delay`).
    pub fn max_active(&self) -> u64 {
        self.shared.max_active.load(Ordering::SeqCst)
    }

    /// Requests being worked on now (read, not yet answering).
    pub fn active(&self) -> u64 {
        self.shared.active.load(Ordering::SeqCst)
    }

    /// Targets of the first non-health requests, in the order they arrived (bounded).
    pub fn targets(&self) -> Vec<String> {
        lock(&self.shared.targets).clone()
    }

    /// The last non-health request fully received (set before `requests()` is incremented).
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.last).clone()
    }

    /// Closes the listener (further connects are refused) and shuts down every open
    /// connection; sleeping and hanging handlers return at once. Idempotent.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);

        let handle = lock(&self.accept).take();
        if let Some(handle) = handle {
            // The accept thread owns the listener; wake it from accept() so it sees the flag
            // and drops the listener. Retry a few times in case a connect gets lost.
            let wake = connectable(self.addr);
            for _ in 0..50 {
                if handle.is_finished() {
                    break;
                }
                let _ = TcpStream::connect_timeout(&wake, Duration::from_millis(200));
                thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }

        // Requests in hand end only once the listener is gone, as when a process dies: a
        // slot they free is never taken by a connection this executor would still accept.
        *lock(&self.shared.stopped) = true;
        self.shared.stop_cv.notify_all();

        // Taken after the accept thread ended, so no connection can be registered later.
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for stream in conns.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for MockExecutor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `addr` with a wildcard IP replaced by loopback of the same family.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        ip if !ip.is_unspecified() => addr,
        std::net::IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port())),
        std::net::IpAddr::V6(_) => SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port())),
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: TcpListener) {
    let mut next_id: u64 = 0;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if shared.stopping.load(Ordering::SeqCst) => return,
            Err(_) => {
                // EMFILE and friends: back off instead of spinning; the peer will retry.
                thread::sleep(Duration::from_millis(5));
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        {
            // Checked under the registry lock, so stop() cannot miss this connection.
            let mut conns = lock(&shared.conns);
            if shared.stopping.load(Ordering::SeqCst) {
                return; // drops the listener and this (wake-up) connection
            }
            match stream.try_clone() {
                Ok(clone) => {
                    conns.insert(id, clone);
                }
                Err(_) => continue,
            }
        }
        let conn_shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("mock-conn-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                routes::serve(&conn_shared, stream);
                conn_shared.forget(id);
            });
        if spawned.is_err() {
            // Out of threads: drop the connection (the closure and its stream are gone).
            shared.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_hash_matches_materialised_bytes() {
        for len in [0u64, 1, 250, 251, 252, 65_535, 65_536, 65_537, 200_000] {
            let bytes: Vec<u8> = (0..len).map(pattern_byte).collect();
            assert_eq!(pattern_sha256(len), sha256_hex(&bytes), "len {len}");
        }
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn pattern_block_is_a_window() {
        for start in [0u64, 1, 250, 251, 1_000_003] {
            let b = pattern_block(start, 10);
            let want: Vec<u8> = (start..start + 10).map(pattern_byte).collect();
            assert_eq!(b, &want[..]);
        }
        assert_eq!(pattern_block(7, u64::MAX).len(), BLOCK);
    }

    #[test]
    fn rejects_control_chars_in_name() {
        let opts = MockOptions {
            name: "a\r\nb".into(),
            ..MockOptions::default()
        };
        assert!(MockExecutor::start(opts).is_err());
    }
}
