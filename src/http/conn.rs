//! One client connection: read heads under idle/header timeouts, route each request
//! (proxy API or forwarding), keep the connection alive only while both halves of every
//! exchange finished cleanly.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::head::{self, HeaderRef, RequestFraming, RequestHead};
use crate::error::ProxyError;
use crate::worker::WorkerCtx;
use crate::{api, auth, forward, info};

/// Initial capacity of a connection's head buffer; grows (up to the head limit) only for
/// unusually large heads.
const HEAD_BUF: usize = 8 * 1024;

/// Whether the client connection may carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    KeepAlive,
    Close,
}

/// The client side of a connection: the socket and the bytes read but not yet used.
pub struct ClientConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Unconsumed bytes are `buf[start..]`.
    pub buf: Vec<u8>,
    pub start: usize,
    /// Reused for every response head on this connection (no allocation per request).
    pub response_headers: Vec<HeaderRef>,
    /// The request in hand is `HEAD`: answers the proxy makes carry no body.
    pub head_request: bool,
}

impl ClientConn {
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Read more bytes after the pending ones. `Ok(0)` is EOF.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            // Only reached while a head is incomplete; the head limits bound the growth.
            self.buf.reserve(self.buf.capacity().max(HEAD_BUF));
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Write all of `out`; `out` comes back cleared (or empty if the write was cancelled).
    pub async fn write_out(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        write_vec(&mut self.stream, out).await
    }
}

/// Write a whole Vec on any stream and hand the (cleared) Vec back.
pub async fn write_vec(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let owned = std::mem::take(out);
    let (res, mut owned) = stream.write_all(owned).await;
    owned.clear();
    *out = owned;
    res.map(|_| ())
}

/// Serve one accepted connection until it closes.
pub async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr) {
    let mut conn = ClientConn {
        stream,
        peer,
        buf: Vec::with_capacity(HEAD_BUF),
        start: 0,
        response_headers: Vec::with_capacity(32),
        head_request: false,
    };
    let mut headers: Vec<HeaderRef> = Vec::with_capacity(32);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match read_head(&ctx, &mut conn, &mut headers).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                conn.head_request = false;
                answer_error(&ctx, &mut conn, &mut out, &e, true).await;
                return;
            }
        };
        conn.head_request = &conn.pending()[head.method.clone()] == b"HEAD";
        // Opt-in: costs a small allocation and a clock read per request, so only when asked.
        let line = ctx
            .config
            .access_log
            .then(|| (request_line(&conn, &head), Instant::now()));
        let (after, status) = handle(&ctx, &mut conn, &head, &headers, &mut out).await;
        if let Some((line, started)) = line {
            info!(
                "access {} \"{line}\" {status} {:.3}ms",
                conn.peer.ip(),
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        if after == After::Close || ctx.stopping.get() {
            return;
        }
    }
}

/// Read until a complete head is pending. `Ok(None)`: the client closed, went idle past
/// the idle timeout, or the worker is stopping between requests.
async fn read_head(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    headers: &mut Vec<HeaderRef>,
) -> Result<Option<RequestHead>, ProxyError> {
    let mut deadline = None;
    loop {
        if !conn.pending().is_empty() {
            match head::parse_request(conn.pending(), headers) {
                Ok(Some(head)) => return Ok(Some(head)),
                Ok(None) => {}
                Err(e) => return Err(ProxyError::BadHead(e)),
            }
            deadline.get_or_insert_with(|| Instant::now() + ctx.config.header_timeout);
        }
        let read = match deadline {
            // Between requests: wait for the first byte, idle timeout, or stop.
            None => {
                if ctx.stopping.get() {
                    return Ok(None);
                }
                let read_or_stop = async {
                    monoio::select! {
                        r = conn.read_more() => Some(r),
                        _ = ctx.stop_notify.wait() => None,
                    }
                };
                match monoio::time::timeout(ctx.config.idle_timeout, read_or_stop).await {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => return Ok(None),
                }
            }
            // Inside a head: the whole head must arrive before the header deadline.
            Some(at) => match monoio::time::timeout_at(at.into(), conn.read_more()).await {
                Ok(r) => r,
                Err(_) => return Err(ProxyError::HeadTimeout),
            },
        };
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + ctx.config.header_timeout);
                }
            }
        }
    }
}

/// Route one request. Returns what happens to the connection and the status sent.
async fn handle(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    out: &mut Vec<u8>,
) -> (After, u16) {
    let pending = conn.pending();
    let method = &pending[head.method.clone()];
    let path = head::path_of(&pending[head.target.clone()]);
    let is_get = method == b"GET" || method == b"HEAD";

    // Liveness needs no key (container health checks).
    if is_get && path == b"/v1/proxy/health" {
        let close = !head.keep_alive || has_body(head);
        let after = api::health(close, method == b"HEAD", out);
        return finish_local(conn, head, out, after, 200).await;
    }

    let authorization = head::find_header(pending, headers, "authorization");
    if !auth::is_authorized(authorization, ctx.config.secret.as_bytes()) {
        let e = ProxyError::Unauthorized;
        let close = !head.keep_alive || has_body(head);
        let dev = ctx.config.is_development();
        e.write_response(out, &ctx.config.version, dev, close, method == b"HEAD");
        let after = if close {
            After::Close
        } else {
            After::KeepAlive
        };
        return finish_local(conn, head, out, after, e.status()).await;
    }

    if is_get && path == b"/v1/proxy/containers" {
        let snapshot = ctx.snapshot();
        let close = !head.keep_alive || has_body(head);
        api::containers(&snapshot, ctx, method == b"HEAD", close, out);
        let after = if close {
            After::Close
        } else {
            After::KeepAlive
        };
        return finish_local(conn, head, out, after, 200).await;
    }

    forward::forward(ctx, conn, head, headers, out).await
}

/// A request with a body the proxy answers itself: the body is not read, so the
/// connection must close after the answer.
fn has_body(head: &RequestHead) -> bool {
    !matches!(
        head.framing,
        RequestFraming::Empty | RequestFraming::Length(0)
    )
}

/// Send a response the proxy made itself and consume the request head.
async fn finish_local(
    conn: &mut ClientConn,
    head: &RequestHead,
    out: &mut Vec<u8>,
    after: After,
    status: u16,
) -> (After, u16) {
    conn.consume(head.head_len);
    if conn.write_out(out).await.is_err() {
        return (After::Close, status);
    }
    (after, status)
}

/// Answer an error that ends the connection (bad head, head timeout).
pub async fn answer_error(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    out: &mut Vec<u8>,
    e: &ProxyError,
    close: bool,
) {
    out.clear();
    let dev = ctx.config.is_development();
    e.write_response(out, &ctx.config.version, dev, close, conn.head_request);
    let _ = conn.write_out(out).await;
}

/// `METHOD target` for the access log (target cut to 512 bytes, lossy UTF-8).
fn request_line(conn: &ClientConn, head: &RequestHead) -> String {
    let pending = conn.pending();
    let method = String::from_utf8_lossy(&pending[head.method.clone()]);
    let target = &pending[head.target.clone()];
    let target = String::from_utf8_lossy(&target[..target.len().min(512)]);
    format!("{method} {target}")
}
