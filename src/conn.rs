//! One client connection: read heads under idle/header timeouts, route each request
//! (proxy API or forwarding), keep the connection alive only while both halves of every
//! exchange finished cleanly.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::ctx::WorkerCtx;
use crate::error::ProxyError;
use crate::forward::{self, Served};
use crate::http::client::{After, ClientConn};
use crate::http::head::{self, HeaderRef, RequestHead};
use crate::metrics::ClientClose;
use crate::{access_log, api, auth};

/// Serve one accepted connection until it closes.
pub(crate) async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr) {
    ctx.m().client_opened();
    let mut conn = ClientConn::new(stream, peer);
    let why = serve_requests(&ctx, &mut conn).await;
    ctx.m().client_closed(why);
}

async fn serve_requests(ctx: &Rc<WorkerCtx>, conn: &mut ClientConn) -> ClientClose {
    let mut headers: Vec<HeaderRef> = Vec::with_capacity(32);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match read_head(ctx, conn, &mut headers).await {
            Ok(head) => head,
            Err(Ended::Quietly(why)) => return why,
            Err(Ended::Badly(e)) => {
                conn.head_request = false;
                ctx.answer(conn, &mut out, e, false).await;
                return match e {
                    ProxyError::HeadTimeout => ClientClose::HeaderTimeout,
                    _ => ClientClose::Closed,
                };
            }
        };
        let started = Instant::now();
        let (in_before, out_before) = (conn.bytes_in, conn.bytes_out);
        conn.head_request = &conn.pending()[head.method.clone()] == b"HEAD";
        if ctx.access_log.is_some() {
            keep_request_line(conn, &head);
        }
        ctx.m().request_started();
        let served = handle(ctx, conn, &head, &headers, &mut out).await;
        let took = started.elapsed();
        let (bytes_in, bytes_out) = (conn.bytes_in - in_before, conn.bytes_out - out_before);
        let executor = served.choice.map(|c| c.executor);
        ctx.m()
            .request_done(executor, served.status, took, bytes_in, bytes_out);
        if let Some(log) = &ctx.access_log {
            let snapshot = ctx.snapshot();
            let entry = access_log::Entry {
                client: conn.peer.ip(),
                request_line: &conn.request_line,
                status: served.status,
                executor: executor
                    .and_then(|i| snapshot.executors.get(i))
                    .map(|e| e.hostname.as_str()),
                tier: served.choice.map(|c| c.tier),
                bytes_in,
                bytes_out,
                duration: took,
            };
            log.write(&entry, ctx.m());
        }
        if served.after == After::Close {
            return ClientClose::Closed;
        }
        if ctx.stopping.get() {
            return ClientClose::Drain;
        }
    }
}

/// Why no request head came.
enum Ended {
    /// Closed, idle or draining between requests: nothing to answer.
    Quietly(ClientClose),
    /// A bad or late head: answer it, then close.
    Badly(ProxyError),
}

/// Read until a complete head is pending.
async fn read_head(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    headers: &mut Vec<HeaderRef>,
) -> Result<RequestHead, Ended> {
    let mut deadline = None;
    loop {
        if !conn.pending().is_empty() {
            match head::parse_request(conn.pending(), headers) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err(Ended::Badly(ProxyError::BadHead(e))),
            }
            deadline.get_or_insert_with(|| Instant::now() + ctx.config.header_timeout);
        }
        let read = match deadline {
            // Between requests: wait for the first byte, idle timeout, or stop.
            None => {
                if ctx.stopping.get() {
                    return Err(Ended::Quietly(ClientClose::Drain));
                }
                let read_or_stop = async {
                    monoio::select! {
                        r = conn.read_more() => Some(r),
                        _ = ctx.stop_notify.wait() => None,
                    }
                };
                match monoio::time::timeout(ctx.config.idle_timeout, read_or_stop).await {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(Ended::Quietly(ClientClose::Drain)),
                    Err(_) => return Err(Ended::Quietly(ClientClose::Idle)),
                }
            }
            // Inside a head: the whole head must arrive before the header deadline.
            Some(at) => match monoio::time::timeout_at(at.into(), conn.read_more()).await {
                Ok(r) => r,
                Err(_) => return Err(Ended::Badly(ProxyError::HeadTimeout)),
            },
        };
        match read {
            Ok(0) | Err(_) => return Err(Ended::Quietly(ClientClose::Client)),
            Ok(_) => {
                if deadline.is_none() {
                    deadline = Some(Instant::now() + ctx.config.header_timeout);
                }
            }
        }
    }
}

/// Keep `METHOD target` for the access log: the head's bytes may be gone by the time
/// the line is written. The buffer is reused, so this allocates only while it grows.
fn keep_request_line(conn: &mut ClientConn, head: &RequestHead) {
    let pending = &conn.buf[conn.start..];
    conn.request_line.clear();
    conn.request_line
        .extend_from_slice(&pending[head.method.clone()]);
    conn.request_line.push(b' ');
    let target = &pending[head.target.clone()];
    conn.request_line
        .extend_from_slice(&target[..target.len().min(4096)]);
}

/// Route one request.
async fn handle(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    out: &mut Vec<u8>,
) -> Served {
    let pending = conn.pending();
    let method = &pending[head.method.clone()];
    let path = head::path_of(&pending[head.target.clone()]);
    let is_get = method == b"GET" || method == b"HEAD";

    // Liveness needs no key (container health checks).
    if is_get && path == b"/v1/proxy/health" {
        let close = !head.keep_alive || head.has_body();
        let after = api::health(close, method == b"HEAD", out);
        return Served::local(finish_local(ctx, conn, head, out, after, 200).await);
    }

    let authorization = head::find_header(pending, headers, "authorization");
    if !auth::is_authorized(authorization, ctx.config.secret.as_bytes()) {
        // The body (if any) is not read: the answer closes and lingers.
        let keep_alive = head.keep_alive && !head.has_body();
        conn.consume(head.head_len);
        let e = ProxyError::Unauthorized;
        return Served::local(ctx.answer(conn, out, e, keep_alive).await);
    }

    if is_get && path == b"/v1/proxy/containers" {
        let snapshot = ctx.snapshot();
        let close = !head.keep_alive || head.has_body();
        api::containers(&snapshot, ctx, method == b"HEAD", close, out);
        let after = After::close_if(close);
        return Served::local(finish_local(ctx, conn, head, out, after, 200).await);
    }

    if is_get && path == b"/v1/proxy/metrics" {
        let snapshot = ctx.snapshot();
        let close = !head.keep_alive || head.has_body();
        api::metrics(&snapshot, ctx, method == b"HEAD", close, out);
        let after = After::close_if(close);
        return Served::local(finish_local(ctx, conn, head, out, after, 200).await);
    }

    forward::forward(ctx, conn, head, headers, out).await
}

/// Send a response the proxy made itself (within the answer deadline) and consume the
/// request head.
async fn finish_local(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    head: &RequestHead,
    out: &mut Vec<u8>,
    after: After,
    status: u16,
) -> (After, u16) {
    conn.consume(head.head_len);
    if conn
        .write_answer(out, ctx.config.body_timeout)
        .await
        .is_err()
    {
        return (After::Close, status);
    }
    (after, status)
}
