//! A scriptable raw executor for exchange-level tests: exact bytes out, exact bytes in.
//!
//! It listens on 127.0.0.1:0 (std threads: one accept thread, one thread per connection).
//! `GET /v1/health…` is answered `200 OK` with body `OK` and keep-alive, and is not
//! recorded. Every other request is read whole (Content-Length or chunked framing,
//! trailers included, so pipelined and keep-alive requests are separated correctly),
//! recorded byte for byte, and handed to the script, which returns what to do next.
//!
//! Started with `start_on_head`, the script runs as soon as a request's head arrived
//! (its record holds what came so far; it is completed once the request was read whole),
//! so it can answer before the body and stop reading (`Action::Pause`).
//!
//! Connections get an index (0, 1, …) at their first non-health request; requests are
//! numbered per connection. The executor also records when each connection saw EOF or a
//! reset from the proxy, so a test can assert "the proxy closed this connection within X".

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use opr_loadtest::h1;

/// Index of a connection that carried at least one non-health request (0, 1, … in the
/// order of those first requests).
pub type ConnIndex = usize;
/// Index of a non-health request on its connection (0, 1, …).
pub type RequestIndex = usize;

/// One step of the executor's answer to a request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Write these bytes (write errors are ignored).
    Write(Vec<u8>),
    /// Wait this many milliseconds (bytes and EOF from the proxy are still recorded).
    Sleep(u64),
    /// Wait up to this many milliseconds, ending the connection early if the proxy
    /// closes it meanwhile.
    WaitForClose(u64),
    /// Close the connection (both directions) and stop serving it.
    Close,
    /// Send FIN (shut down the write side) but keep reading and recording requests.
    CloseWrite,
    /// Stop here and read the next request (the same as ending the list).
    KeepReading,
    /// Wait this many milliseconds without reading: the proxy's writes back up.
    Pause(u64),
    /// Read until the request is whole (`start_on_head`: its body may still be coming).
    ReadRequest,
}

/// What the script gets for each non-health request.
pub type Script = dyn Fn(ConnIndex, RequestIndex, &RecordedRaw) -> Vec<Action> + Send + Sync;

/// One non-health request exactly as it arrived.
#[derive(Clone, Debug)]
pub struct RecordedRaw {
    pub conn: ConnIndex,
    pub index: RequestIndex,
    /// Head, body and trailers, byte for byte.
    pub bytes: Vec<u8>,
    /// Length of the head (request line and fields, up to and including the empty line).
    pub head_len: usize,
    pub at: Instant,
}

impl RecordedRaw {
    pub fn head(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.head_len]).into_owned()
    }

    /// The body as framed on the wire (chunk sizes and trailers included).
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.head_len..]
    }

    pub fn method(&self) -> String {
        self.head().split(' ').next().unwrap_or("").to_string()
    }

    pub fn target(&self) -> String {
        self.head().split(' ').nth(1).unwrap_or("").to_string()
    }

    /// First value of a header field, name matched case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head().split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// What happened to one accepted connection (health connections included).
#[derive(Clone, Debug)]
pub struct ConnRecord {
    pub accepted_at: Instant,
    /// Set at the connection's first non-health request.
    pub index: Option<ConnIndex>,
    /// When a read saw EOF or a reset from the proxy.
    pub eof_at: Option<Instant>,
    /// The proxy reset the connection (rather than closing it with FIN).
    pub reset: bool,
    /// When the executor itself closed it (`Action::Close` or `stop()`).
    pub closed_by_executor_at: Option<Instant>,
    /// Requests on it whose script ran to its end (every write and FIN of it done), so a
    /// test can wait for bytes the script sends after the answer.
    pub scripts_done: usize,
}

#[derive(Default)]
struct State {
    conns: Vec<ConnRecord>,
    /// Clones of the open sockets, so `stop()` can close them.
    streams: Vec<Option<TcpStream>>,
    requests: Vec<RecordedRaw>,
    health: Vec<Instant>,
    next_index: ConnIndex,
}

struct Shared {
    state: Mutex<State>,
    script: Box<Script>,
    /// The script runs when a head arrived, not when the whole request did.
    on_head: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Listening {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The scriptable executor. Dropping it is `stop()`.
pub struct ScriptedExecutor {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listening: Option<Listening>,
}

impl ScriptedExecutor {
    pub fn start(
        script: impl Fn(ConnIndex, RequestIndex, &RecordedRaw) -> Vec<Action> + Send + Sync + 'static,
    ) -> ScriptedExecutor {
        ScriptedExecutor::with(Box::new(script), false)
    }

    /// The script runs as soon as each request's head arrived (see the module doc).
    pub fn start_on_head(
        script: impl Fn(ConnIndex, RequestIndex, &RecordedRaw) -> Vec<Action> + Send + Sync + 'static,
    ) -> ScriptedExecutor {
        ScriptedExecutor::with(Box::new(script), true)
    }

    fn with(script: Box<Script>, on_head: bool) -> ScriptedExecutor {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind scripted executor");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            script,
            on_head,
        });
        let listening = Some(listen(listener, shared.clone()));
        ScriptedExecutor {
            addr,
            shared,
            listening,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as the proxy names it.
    pub fn hostname(&self) -> String {
        self.addr.to_string()
    }

    /// Every non-health request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRaw> {
        self.shared.lock().requests.clone()
    }

    /// The requests whose target is exactly `target`.
    pub fn requests_to(&self, target: &str) -> Vec<RecordedRaw> {
        self.requests()
            .into_iter()
            .filter(|r| r.target() == target)
            .collect()
    }

    /// Connections accepted so far (health connections included).
    pub fn accepted(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Connections that carried a non-health request.
    pub fn request_connections(&self) -> usize {
        self.shared.lock().next_index
    }

    /// The record of connection `index` (see [`ConnIndex`]).
    pub fn conn(&self, index: ConnIndex) -> Option<ConnRecord> {
        self.shared
            .lock()
            .conns
            .iter()
            .find(|c| c.index == Some(index))
            .cloned()
    }

    /// Every accepted connection's record, in accept order (health connections included).
    pub fn conns(&self) -> Vec<ConnRecord> {
        self.shared.lock().conns.clone()
    }

    /// When each `GET /v1/health` arrived.
    pub fn health_checks(&self) -> Vec<Instant> {
        self.shared.lock().health.clone()
    }

    /// Stop listening (later connects are refused) and close every open connection,
    /// as if the executor process died. Returns once the listening socket is closed.
    pub fn stop(&mut self) {
        if let Some(l) = self.listening.take() {
            l.stop.store(true, Ordering::Relaxed);
            let _ = l.thread.join();
        }
        let now = Instant::now();
        let mut state = self.shared.lock();
        let state = &mut *state;
        for (conn, stream) in state.conns.iter_mut().zip(state.streams.iter_mut()) {
            if let Some(s) = stream.take() {
                conn.closed_by_executor_at.get_or_insert(now);
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Listen again on the same port after `stop()` (recorded state is kept).
    pub fn listen_again(&mut self) {
        assert!(self.listening.is_none(), "already listening");
        let listener = TcpListener::bind(self.addr).expect("bind the same port again");
        self.listening = Some(listen(listener, self.shared.clone()));
    }
}

impl Drop for ScriptedExecutor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `HTTP/1.1 200 OK` with a Content-Length body.
pub fn answer_200(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The identifiable body of a genuine answer: `conn-<i>-req-<j>`.
pub fn genuine_body(conn: ConnIndex, index: RequestIndex) -> String {
    format!("conn-{conn}-req-{index}")
}

/// `200 OK` with the genuine body for this request.
pub fn genuine(conn: ConnIndex, index: RequestIndex) -> Vec<u8> {
    answer_200(&genuine_body(conn, index))
}

/// The accept loop: non-blocking, so `stop()` can close the listener promptly.
fn listen(listener: TcpListener, shared: Arc<Shared>) -> Listening {
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_nodelay(true);
                    let slot = {
                        let mut state = shared.lock();
                        state.conns.push(ConnRecord {
                            accepted_at: Instant::now(),
                            index: None,
                            eof_at: None,
                            reset: false,
                            closed_by_executor_at: None,
                            scripts_done: 0,
                        });
                        state.streams.push(stream.try_clone().ok());
                        state.conns.len() - 1
                    };
                    let shared = shared.clone();
                    thread::spawn(move || Conn::new(stream, shared, slot).serve());
                }
                Err(_) => thread::sleep(Duration::from_millis(5)),
            }
        }
        // The listener is dropped here: connects are refused from now on.
    });
    Listening { stop, thread }
}

/// One accepted connection.
struct Conn {
    stream: TcpStream,
    shared: Arc<Shared>,
    slot: usize,
    buf: Vec<u8>,
    /// The proxy closed (or reset) the connection, or the executor closed it.
    ended: bool,
}

const HEALTH_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK";

impl Conn {
    fn new(stream: TcpStream, shared: Arc<Shared>, slot: usize) -> Conn {
        Conn {
            stream,
            shared,
            slot,
            buf: Vec::new(),
            ended: false,
        }
    }

    fn serve(mut self) {
        let mut index: Option<ConnIndex> = None;
        let mut next: RequestIndex = 0;
        loop {
            let framed = if self.shared.on_head {
                self.next_head().map(|head_len| (None, head_len))
            } else {
                self.next_request()
                    .map(|(len, head_len)| (Some(len), head_len))
            };
            let Some((len, head_len)) = framed else {
                return;
            };
            if self.buf.starts_with(b"GET /v1/health") {
                let Some((len, _)) = self.next_request() else {
                    return;
                };
                self.buf.drain(..len);
                self.shared.lock().health.push(Instant::now());
                let _ = self.stream.write_all(HEALTH_ANSWER);
                continue;
            }
            let bytes: Vec<u8> = match len {
                Some(len) => self.buf.drain(..len).collect(),
                None => self.buf.clone(),
            };
            let conn = *index.get_or_insert_with(|| {
                let mut state = self.shared.lock();
                let i = state.next_index;
                state.next_index += 1;
                state.conns[self.slot].index = Some(i);
                i
            });
            let recorded = RecordedRaw {
                conn,
                index: next,
                bytes,
                head_len,
                at: Instant::now(),
            };
            next += 1;
            let slot = {
                let mut state = self.shared.lock();
                state.requests.push(recorded.clone());
                state.requests.len() - 1
            };
            let mut whole = len.is_some();
            let actions = (self.shared.script)(conn, recorded.index, &recorded);
            for action in actions {
                match action {
                    Action::Write(bytes) => {
                        let _ = self.stream.write_all(&bytes);
                    }
                    Action::Sleep(ms) => self.pump(ms, false),
                    Action::WaitForClose(ms) => self.pump(ms, true),
                    Action::Close => {
                        self.close_by_executor();
                        return;
                    }
                    Action::CloseWrite => {
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                    Action::KeepReading => break,
                    Action::Pause(ms) => thread::sleep(Duration::from_millis(ms)),
                    Action::ReadRequest => {
                        if !whole && !self.finish_request(slot) {
                            return;
                        }
                        whole = true;
                    }
                }
                if self.ended && self.buf.is_empty() {
                    return;
                }
            }
            self.shared.lock().conns[self.slot].scripts_done += 1;
            if !whole && !self.finish_request(slot) {
                return;
            }
        }
    }

    /// Read until a head is buffered: its length, or None when the connection ended.
    fn next_head(&mut self) -> Option<usize> {
        loop {
            if !self.buf.is_empty() {
                match h1::parse_request_head(&self.buf) {
                    Ok(Some((_, n))) => return Some(n),
                    Ok(None) => {}
                    Err(_) => return Some(self.buf.len()),
                }
            }
            if self.ended {
                return None;
            }
            self.read_once(Duration::from_millis(100));
        }
    }

    /// Read the rest of the request recorded at `slot` (its head is at the start of the
    /// buffer) and complete its record; false when the connection ended first.
    fn finish_request(&mut self, slot: usize) -> bool {
        let Some((len, _)) = self.next_request() else {
            return false;
        };
        let bytes: Vec<u8> = self.buf.drain(..len).collect();
        self.shared.lock().requests[slot].bytes = bytes;
        true
    }

    /// Read until a whole request is buffered: `(its length, its head length)`, or None
    /// when the connection ended first.
    fn next_request(&mut self) -> Option<(usize, usize)> {
        loop {
            if let Some(framed) = frame(&self.buf) {
                return Some(framed);
            }
            if self.ended {
                return None;
            }
            self.read_once(Duration::from_millis(100));
        }
    }

    /// Keep reading (and recording EOF) for `ms`; with `until_close`, return as soon as
    /// the connection ends.
    fn pump(&mut self, ms: u64, until_close: bool) {
        let end = Instant::now() + Duration::from_millis(ms);
        loop {
            let now = Instant::now();
            if now >= end || (until_close && self.ended) {
                return;
            }
            if self.ended {
                thread::sleep(end - now);
                return;
            }
            self.read_once((end - now).min(Duration::from_millis(100)));
        }
    }

    /// One read with a timeout; records EOF or reset from the proxy.
    fn read_once(&mut self, timeout: Duration) {
        let _ = self
            .stream
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))));
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => self.ended(false),
            Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => self.ended(e.kind() == io::ErrorKind::ConnectionReset),
        }
    }

    fn ended(&mut self, reset: bool) {
        self.ended = true;
        let mut state = self.shared.lock();
        let record = &mut state.conns[self.slot];
        // A read ending after the executor closed the socket itself is not the proxy's.
        if record.closed_by_executor_at.is_none() && record.eof_at.is_none() {
            record.eof_at = Some(Instant::now());
            record.reset = reset;
        }
    }

    fn close_by_executor(&mut self) {
        let mut state = self.shared.lock();
        state.conns[self.slot]
            .closed_by_executor_at
            .get_or_insert_with(Instant::now);
        state.streams[self.slot] = None;
        drop(state);
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// The length of the first whole request in `buf` and of its head; None while it is
/// incomplete. Bytes that are not a request head (or not a valid request) are taken whole
/// (recorded as they are).
fn frame(buf: &[u8]) -> Option<(usize, usize)> {
    if buf.is_empty() {
        return None;
    }
    let whole = Some((buf.len(), buf.len()));
    let (head, head_len) = match h1::parse_request_head(buf) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return None,
        Err(_) => return whole,
    };
    let Ok(framing) = h1::request_framing(&head.headers) else {
        return whole;
    };
    let mut body = std::io::Cursor::new(&buf[head_len..]);
    match h1::read_body(&mut body, framing, &mut |_| {}) {
        Ok(_) => Some((head_len + body.position() as usize, head_len)),
        Err(h1::BodyError::Aborted) => None,
        Err(_) => whole,
    }
}
