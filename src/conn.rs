//! One client connection: read heads under idle/header timeouts, route each request
//! (proxy API or forwarding), keep the connection alive only while both halves of every
//! exchange finished cleanly.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::ctx::WorkerCtx;
use crate::error::ProxyError;
use crate::http::client::{After, ClientConn};
use crate::http::head::{self, HeaderRef, RequestFraming, RequestHead};
use crate::{api, auth, forward, info};

/// Serve one accepted connection until it closes.
pub(crate) async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr) {
    let mut conn = ClientConn::new(stream, peer);
    let mut headers: Vec<HeaderRef> = Vec::with_capacity(32);
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match read_head(&ctx, &mut conn, &mut headers).await {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(e) => {
                conn.head_request = false;
                ctx.answer(&mut conn, &mut out, e, false).await;
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
        return finish_local(ctx, conn, head, out, after, 200).await;
    }

    let authorization = head::find_header(pending, headers, "authorization");
    if !auth::is_authorized(authorization, ctx.config.secret.as_bytes()) {
        // The body (if any) is not read: the answer closes and lingers.
        let keep_alive = head.keep_alive && !has_body(head);
        conn.consume(head.head_len);
        return ctx
            .answer(conn, out, ProxyError::Unauthorized, keep_alive)
            .await;
    }

    if is_get && path == b"/v1/proxy/containers" {
        let snapshot = ctx.snapshot();
        let close = !head.keep_alive || has_body(head);
        api::containers(&snapshot, ctx, method == b"HEAD", close, out);
        return finish_local(ctx, conn, head, out, After::close_if(close), 200).await;
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

/// `METHOD target` for the access log (target cut to 512 bytes, lossy UTF-8).
fn request_line(conn: &ClientConn, head: &RequestHead) -> String {
    let pending = conn.pending();
    let method = String::from_utf8_lossy(&pending[head.method.clone()]);
    let target = &pending[head.target.clone()];
    let target = String::from_utf8_lossy(&target[..target.len().min(512)]);
    format!("{method} {target}")
}
