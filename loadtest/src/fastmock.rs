//! A cheap mock executor for load tests: one monoio thread, keep-alive HTTP/1.1, only the
//! load routes (/v1/health, /v1/ping, /v1/download, /v1/upload, /v1/echo). The std-threads
//! `MockExecutor` costs a thread wake-up per request and becomes the bottleneck under load.

use crate::gen::Runtime;
use crate::mock::pattern_block;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{ListenerOpts, TcpListener, TcpStream};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_HEAD: usize = 64 * 1024;
const READ_BUF: usize = 64 * 1024;
const BACKLOG: i32 = 4096;
/// Largest `bytes=` a download may ask for (64 GiB): a typo should not stream forever.
const MAX_DOWNLOAD: u64 = 64 << 30;

struct Shared {
    name: String,
    stop: AtomicBool,
    requests: AtomicU64,
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
                            accept_loop(listener, thread_shared).await;
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

    /// Stops accepting, drops every connection and joins the thread. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The accept loop notices the flag on its next accept: give it one.
            for _ in 0..50 {
                if thread.is_finished() {
                    break;
                }
                let _ = std::net::TcpStream::connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, self.addr.port())),
                    Duration::from_millis(100),
                );
                std::thread::sleep(Duration::from_millis(2));
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

/// Returns when stopped; the runtime then drops every connection task with it.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = listener.accept().await;
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                monoio::spawn(serve(stream, Arc::clone(&shared)));
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
}

/// Parses a complete head (`\r\n\r\n` included). Err = 400.
fn parse_head(bytes: &[u8]) -> Result<Head, ()> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(()),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(());
    };
    let mut head = Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length: 0,
        chunked: false,
        close: minor == 0,
    };
    for h in req.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| ())?;
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().map_err(|_| ())?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = true;
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

fn route(head: &Head, name: &str) -> Reply {
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let json = "application/json";
    match path {
        "/v1/health" => Reply::Small(
            200,
            json,
            "{\"status\":\"pass\",\"usage\":0,\"runtimes\":{}}".into(),
        ),
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
async fn serve(mut stream: TcpStream, shared: Arc<Shared>) {
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
            let (r, b) = stream.read(rbuf).await;
            rbuf = b;
            match r {
                Ok(0) | Err(_) => return,
                Ok(n) => pending.extend_from_slice(&rbuf[..n]),
            }
        };
        let head = parse_head(&pending[..end]);
        pending.drain(..end);
        let Ok(head) = head else {
            let _ = respond(&mut stream, 400, "text/plain", b"bad request", true).await;
            return;
        };
        if head.chunked {
            // Not needed by the load scenarios (every client sends Content-Length).
            let _ = respond(&mut stream, 501, "text/plain", b"chunked unsupported", true).await;
            return;
        }
        // Body: discarded as it arrives.
        let mut left = head.content_length;
        let take = left.min(pending.len() as u64) as usize;
        pending.drain(..take);
        left -= take as u64;
        while left > 0 {
            let (r, b) = stream.read(rbuf).await;
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
        let ok = match route(&head, &shared.name) {
            Reply::Small(status, ctype, body) => {
                respond(&mut stream, status, ctype, body.as_bytes(), head.close).await
            }
            Reply::Download(n) => download(&mut stream, n, head.close).await,
        };
        if ok.is_err() || head.close {
            return;
        }
    }
}

fn head_bytes(status: u16, ctype: &str, len: u64, close: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        _ => "Status",
    };
    let conn = if close { "connection: close\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len}\r\n{conn}\r\n"
    )
    .into_bytes()
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let mut out = head_bytes(status, ctype, body.len() as u64, close);
    out.extend_from_slice(body);
    stream.write_all(out).await.0.map(drop)
}

async fn download(stream: &mut TcpStream, n: u64, close: bool) -> io::Result<()> {
    let head = head_bytes(200, "application/octet-stream", n, close);
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
            route(&h, "m"),
            Reply::Small(
                200,
                "application/json",
                "{\"name\":\"m\",\"bodyLength\":12}".into()
            )
        );
        let h = parse_head(b"GET /v1/download?x=1&bytes=65536 HTTP/1.1\r\n\r\n").expect("valid");
        assert!(!h.close);
        assert_eq!(route(&h, "m"), Reply::Download(65_536));
        let h = parse_head(b"GET /v1/download?bytes=-1 HTTP/1.0\r\n\r\n").expect("valid");
        assert!(h.close);
        assert!(matches!(route(&h, "m"), Reply::Small(400, _, _)));
        let h = parse_head(b"GET /nope HTTP/1.1\r\n\r\n").expect("valid");
        assert!(matches!(route(&h, "m"), Reply::Small(404, _, _)));
        assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(FastMock::start_named("bad\"name").is_err());
    }
}
