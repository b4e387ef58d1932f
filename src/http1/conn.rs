//! One client connection: read heads under idle/header timeouts, route each request
//! (proxy API or forwarding), keep the connection alive only while both halves of every
//! exchange finished cleanly.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::access_log;
use crate::answer::{self, Answer, ProxyError, Route};
use crate::buffers::Scratch;
use crate::ctx::WorkerCtx;
use crate::forward::{self, request};
use crate::http::head::{self, HeaderRef, RequestHead};
use crate::http1::client::ClientConn;
use crate::idle::{Closed, Registration};
use crate::outcome::{self, After, AnswerEnd, Asked, ClientClose, Served};

/// Serve one accepted connection until it closes.
pub(crate) async fn serve(ctx: Rc<WorkerCtx>, stream: TcpStream, peer: SocketAddr) {
    ctx.m().client_opened();
    let mut conn = ClientConn::new(stream, peer);
    // Dropped before `conn`, so the sweep never sees this fd after it closes.
    let registration = ctx.idle.register(conn.stream().as_raw_fd());
    let why = match serve_requests(&ctx, &mut conn, &registration).await {
        Stop::Close(why) => why,
        Stop::Http2 => {
            // The preface and what followed it go to h2; its state lives in its own
            // allocation, not in every HTTP/1 connection's task. The registration is
            // never marked idle again (h2 keeps its own idle time), so the sweep leaves
            // this fd alone.
            let prefix = conn.pending().to_vec();
            conn.consume(prefix.len());
            conn.release_buffer(&ctx.heads);
            let (stream, peer) = conn.into_parts();
            let why = Box::pin(crate::http2::serve(&ctx, stream, peer, prefix)).await;
            drop(registration);
            ctx.m().client_closed(why);
            return;
        }
    };
    drop(registration);
    conn.release_buffer(&ctx.heads);
    ctx.m().client_closed(why);
}

/// Why the HTTP/1 loop ended.
enum Stop {
    Close(ClientClose),
    /// The connection opened with the HTTP/2 preface (RFC 9113 §3.3, prior knowledge).
    Http2,
}

/// Between requests a connection holds no buffer and its task only this loop's small
/// state: it waits for readability, and each request (head to answer) runs in its own
/// allocation with buffers and vectors borrowed from the worker, given back at its end.
async fn serve_requests(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    registration: &Registration<'_>,
) -> Stop {
    loop {
        if conn.pending().is_empty() {
            conn.release_buffer(&ctx.heads);
            if let Err(why) = wait_for_request(ctx, conn, registration).await {
                return Stop::Close(why);
            }
        }
        let mut scratch = ctx.scratch.lend();
        let request = Box::pin(serve_request(ctx, conn, scratch.get()));
        if let Some(why) = request.await {
            return why;
        }
    }
}

/// Read one request and answer it. `Some`: the HTTP/1 loop ends, and why.
async fn serve_request(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    scratch: &mut Scratch,
) -> Option<Stop> {
    let out = &mut scratch.out;
    let reading = Instant::now();
    let line = &mut scratch.request_line;
    let head = match read_head(ctx, conn, &mut scratch.headers, line).await {
        Ok(head) => head,
        Err(Ended::Quietly(why)) => return Some(Stop::Close(why)),
        Err(Ended::Http2) => return Some(Stop::Http2),
        Err(Ended::Badly(e, read)) => {
            conn.set_head_request(false);
            let out_before = conn.bytes().1;
            conn.answer_error(ctx, out, e, Asked::UNREAD).await;
            // A refused head leaves a line too (a smuggling attempt must leave a trace),
            // with its request line as far as it was read.
            if let Some(log) = &ctx.access_log {
                let entry = access_log::Entry {
                    client: conn.peer().ip(),
                    request_line: &scratch.request_line,
                    status: e.status(),
                    executor: None,
                    tier: None,
                    bytes_in: read,
                    bytes_out: conn.bytes().1 - out_before,
                    duration: reading.elapsed(),
                };
                log.write(&entry, ctx.m());
            }
            return Some(Stop::Close(match e {
                ProxyError::HeadTimeout => ClientClose::HeaderTimeout,
                _ => ClientClose::Closed,
            }));
        }
    };
    let started = Instant::now();
    let (in_before, out_before) = conn.bytes();
    conn.set_head_request(&conn.pending()[head.method.clone()] == b"HEAD");
    if ctx.access_log.is_some() {
        access_log::keep_request_line(&mut scratch.request_line, conn.pending(), &head);
    }
    ctx.m().request_started();
    let headers = &scratch.headers;
    let response_headers = &mut scratch.response_headers;
    let served = handle(ctx, conn, &head, headers, response_headers, out).await;
    let record = request::Record {
        client: conn.peer().ip(),
        request_line: &scratch.request_line,
        status: served.status,
        choice: served.choice,
        bytes_in: conn.bytes().0 - in_before,
        bytes_out: conn.bytes().1 - out_before,
        took: started.elapsed(),
    };
    request::record(ctx, &record);
    if served.after == After::Close {
        return Some(Stop::Close(ClientClose::Closed));
    }
    if ctx.stopping.get() {
        return Some(Stop::Close(ClientClose::Drain));
    }
    None
}

/// Why no request head came.
enum Ended {
    /// Closed, idle or draining between requests: nothing to answer.
    Quietly(ClientClose),
    /// A bad or late head: answer it, then close. With the bytes of it that were read.
    Badly(ProxyError, u64),
    /// The connection's first bytes are the HTTP/2 preface.
    Http2,
}

/// Between requests: wait until the client sends (or closes). Waits on readability, not
/// on a read, so no buffer is held; and on no timer: the worker's idle sweep shuts the
/// socket down past the idle timeout or when the worker stops, which ends the wait.
async fn wait_for_request(
    ctx: &WorkerCtx,
    conn: &ClientConn,
    registration: &Registration<'_>,
) -> Result<(), ClientClose> {
    if ctx.stopping.get() {
        return Err(ClientClose::Drain);
    }
    registration.idle();
    let ready = conn.stream().readable(false).await;
    match (registration.busy(), ready) {
        (Some(Closed::Idle), _) => Err(ClientClose::Idle),
        (Some(Closed::Drain), _) => Err(ClientClose::Drain),
        // Readable may also mean closed: the read that follows tells.
        (None, Ok(())) => Ok(()),
        (None, Err(_)) => Err(ClientClose::Client),
    }
}

/// Read until a complete head is pending; the whole head must arrive within the header
/// timeout, counted from the moment its first bytes could be read. With the access log
/// on, `line` keeps the request line as far as it was read, for the line of a refused
/// head (a read cut off by the timeout takes the buffer with it).
async fn read_head(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    headers: &mut Vec<HeaderRef>,
    line: &mut Vec<u8>,
) -> Result<RequestHead, Ended> {
    let deadline = Instant::now() + ctx.config.header_timeout;
    conn.take_buffer(&ctx.heads);
    let mut read = conn.pending().len() as u64;
    let logged = ctx.access_log.is_some();
    loop {
        // Only a connection's first bytes can be the HTTP/2 preface; an HTTP/1 request
        // costs one comparison here.
        let first = conn.bytes().0 == 0 && conn.pending().first() == Some(&b'P');
        let preface = if first {
            crate::http2::preface(conn.pending())
        } else {
            crate::http2::Preface::No
        };
        if preface == crate::http2::Preface::Yes {
            return Err(Ended::Http2);
        }
        if !conn.pending().is_empty() && preface == crate::http2::Preface::No {
            match head::parse_request(conn.pending(), headers) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => {
                    if logged {
                        access_log::keep_partial_request_line(line, conn.pending());
                    }
                    return Err(Ended::Badly(ProxyError::BadHead(e), read));
                }
            }
        }
        if logged {
            access_log::keep_partial_request_line(line, conn.pending());
        }
        match monoio::time::timeout_at(deadline.into(), conn.read_more()).await {
            Ok(Ok(0) | Err(_)) => return Err(Ended::Quietly(ClientClose::Client)),
            Ok(Ok(n)) => read += n as u64,
            // The cancelled read took the buffer with it; the answer needs none.
            Err(_) => return Err(Ended::Badly(ProxyError::HeadTimeout, read)),
        }
    }
}

/// Route one request.
async fn handle(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    response_headers: &mut Vec<HeaderRef>,
    out: &mut Vec<u8>,
) -> Served {
    let pending = conn.pending();
    let method = &pending[head.method.clone()];
    let path = head::path_of(&pending[head.target.clone()]);
    let authorization = head::find_header(pending, headers, "authorization");
    // A body is not read: the answer closes.
    let asked = Asked::of(head, !head.has_body());
    let own = match answer::route(method, path, authorization, ctx.config.secret.as_bytes()) {
        Route::Health => None,
        Route::Unauthorized => {
            // The body (if any) is not read: the answer closes and lingers.
            conn.consume(head.head_len);
            let e = ProxyError::Unauthorized;
            return conn.answer_error(ctx, out, e, asked).await;
        }
        Route::Containers => Some((false, answer::containers_body(&ctx.snapshot(), ctx))),
        Route::Metrics => Some((true, answer::metrics_body(&ctx.snapshot(), ctx))),
        Route::Forward => {
            return forward::forward(ctx, conn, head, headers, response_headers, out).await
        }
    };
    let answer = match &own {
        None => Answer::health(),
        Some((true, body)) => Answer::metrics(body.as_bytes()),
        Some((false, body)) => Answer::json(body.as_bytes()),
    };
    // A draining worker closes after the answer (counted as a drain, `serve_request`).
    let close = outcome::fate(asked, AnswerEnd::AtBoundary, false) == After::Close;
    finish_local(ctx, conn, head, out, &answer, close).await
}

/// Send an answer the proxy made itself (within the answer deadline) and consume the
/// request head.
async fn finish_local(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    head: &RequestHead,
    out: &mut Vec<u8>,
    answer: &Answer<'_>,
    close: bool,
) -> Served {
    conn.consume(head.head_len);
    out.clear();
    answer.write_http1(out, close, conn.head_request());
    let written = conn.write_answer(out, ctx.config.body_timeout).await;
    Served::new(After::close_if(close || written.is_err()), answer.status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::snapshot::{Board, Snapshot};
    use std::sync::Arc;

    /// An idle connection carries its whole task: the future is allocated at its largest
    /// state when the connection is accepted (issue 12: keep it small).
    #[test]
    fn connection_and_request_futures_are_small() {
        let config = Config::from_lookup(|k| match k {
            "OPR_PROXY_EXECUTORS" => Some("127.0.0.1:9".into()),
            "OPR_PROXY_SECRET" => Some("s".into()),
            _ => None,
        })
        .unwrap();
        let board = Board::new(Snapshot::new(0, Vec::new()));
        let metrics = Arc::new(Metrics::new(1, 1));
        let ctx = Rc::new(WorkerCtx::new(
            0,
            Arc::new(config),
            board,
            metrics,
            None,
            Default::default(),
        ));
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let fut = serve(ctx.clone(), stream, addr);
            let size = std::mem::size_of_val(&fut);
            println!("connection future: {size} bytes");
            // 520 bytes now; a timer (monoio's is 640 bytes) or a request's state here
            // would show as a jump.
            assert!(size <= 640, "connection future is {size} bytes");
            // A request's task is allocated whole when its head starts, so its size is
            // what every unfinished request holds (tests/it/memory.rs): 4480 bytes now.
            let stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let mut conn = ClientConn::new(stream, addr);
            let mut scratch = ctx.scratch.lend();
            let request = serve_request(&ctx, &mut conn, scratch.get());
            let size = std::mem::size_of_val(&request);
            println!("request future: {size} bytes");
            assert!(size <= 4608, "request future is {size} bytes");
        });
    }
}
