//! One client request forwarded to one executor: pick, connect (pool or new), send the
//! rewritten head and stream the body, relay the response, release or drop the
//! executor connection. The whole-request deadline wraps all of it.

mod body;
pub mod broadcast;

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use crate::balance::Addressing;
use crate::buffers::BODY_BUF;
use crate::error::ProxyError;
use crate::http::chunked::ChunkedDecoder;
use crate::http::conn::{After, ClientConn};
use crate::http::head::{
    self, HeaderRef, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
};
use crate::http::rewrite::{self, RequestRewrite, ResponseRewrite};
use crate::warn;
use crate::worker::WorkerCtx;

pub(crate) use body::{
    decode_chunks, read_append, read_client_body, read_into, write_keep, write_range,
};

/// Where a request stands when the deadline fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing sent to the client yet: a 504 can still be answered.
    BeforeHead,
    /// The response head (with this status) went out: only closing is left.
    HeadSent(u16),
}

/// Forward one request (anycast or broadcast) and answer the client.
pub async fn forward(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    out: &mut Vec<u8>,
) -> (After, u16) {
    let config = &ctx.config;
    // RFC 9110 §15.5.14: a declared length over the limit is refused before reading it.
    if let (RequestFraming::Length(n), Some(max)) = (head.framing, config.max_body_size) {
        if n > max {
            return answer(ctx, conn, out, ProxyError::BodyTooLarge, true).await;
        }
    }
    let addressing = Addressing::from_header(head::find_header(
        conn.pending(),
        headers,
        "x-opr-addressing-method",
    ));
    if addressing == Addressing::Broadcast {
        return broadcast::broadcast(ctx, conn, head, headers, out).await;
    }

    // RFC 9110 §10.1.1: answer 100-continue ourselves so the client starts sending; the
    // executor never sees Expect (the rewrite drops it).
    if head.expect_continue && has_body(head) && conn.pending().len() == head.head_len {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if conn.write_out(out).await.is_err() {
            return (After::Close, 0);
        }
    }

    let phase = Cell::new(Phase::BeforeHead);
    let deadline = Instant::now() + config.max_timeout;
    let exchange = Exchange {
        ctx,
        head,
        headers,
        addressing,
        phase: &phase,
    };
    match monoio::time::timeout_at(deadline.into(), exchange.run(conn, out)).await {
        Ok(result) => result,
        Err(_) => match phase.get() {
            Phase::BeforeHead => {
                let mut out = Vec::new();
                answer(ctx, conn, &mut out, ProxyError::GatewayTimeout, true).await
            }
            Phase::HeadSent(status) => (After::Close, status),
        },
    }
}

fn has_body(head: &RequestHead) -> bool {
    !matches!(
        head.framing,
        RequestFraming::Empty | RequestFraming::Length(0)
    )
}

/// Answer an error made by the proxy.
async fn answer(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    out: &mut Vec<u8>,
    e: ProxyError,
    close: bool,
) -> (After, u16) {
    out.clear();
    let dev = ctx.config.is_development();
    e.write_response(out, &ctx.config.version, dev, close, conn.head_request);
    let ok = conn.write_out(out).await.is_ok();
    let after = if close || !ok {
        After::Close
    } else {
        After::KeepAlive
    };
    (after, e.status())
}

/// Why an executor could not be used.
pub(crate) enum Failure {
    /// Refused / unreachable / connect timeout: nothing was sent, try another executor.
    Unreachable(String),
    /// Anything else before the response head: 502.
    Failed(String),
}

/// How the request body stands after the head was sent.
struct BodyState {
    /// Body bytes that were already buffered with the head (and went out with it).
    initial: usize,
    /// The whole body went out with the head: the request can be replayed on a fresh
    /// connection if a pooled one turns out to be dead.
    complete_with_head: bool,
    decoder: Option<ChunkedDecoder>,
}

struct Exchange<'a> {
    ctx: &'a Rc<WorkerCtx>,
    head: &'a RequestHead,
    headers: &'a [HeaderRef],
    addressing: Addressing,
    phase: &'a Cell<Phase>,
}

enum BodyError {
    /// The client closed or reset mid-body: nobody to answer.
    ClientGone,
    /// The client's body broke a rule (framing, size): answer it and close.
    Client(ProxyError),
    /// Writing to the executor failed.
    ExecutorWrite,
}

enum HeadFailure {
    /// EOF or reset before any response byte.
    Closed,
    Io(io::Error),
    Malformed(head::HeadError),
    Upgrade,
}

impl HeadFailure {
    fn describe(&self) -> String {
        match self {
            HeadFailure::Closed => "executor closed the connection before answering".into(),
            HeadFailure::Io(e) => format!("reading the executor's response failed: {e}"),
            HeadFailure::Malformed(e) => format!("malformed response head from executor: {e:?}"),
            HeadFailure::Upgrade => {
                "executor switched protocols, which the proxy does not relay".into()
            }
        }
    }
}

/// How the response relay ended.
struct Relayed {
    after: After,
    status: u16,
    executor_reusable: bool,
}

impl Exchange<'_> {
    async fn run(&self, conn: &mut ClientConn, out: &mut Vec<u8>) -> (After, u16) {
        let ctx = self.ctx;
        let head = self.head;
        let snapshot = ctx.snapshot();
        let is_head = &conn.pending()[head.method.clone()] == b"HEAD";

        let mut body = match self.buffered_body(conn) {
            Ok(b) => b,
            Err(e) => return answer(ctx, conn, out, e, true).await,
        };
        let mut eb = ctx.bufs.get();
        let mut response_headers = std::mem::take(&mut conn.response_headers);
        let mut replayed = false;
        let (executor, addr, mut ex, response, early_answer) = loop {
            // Try candidates until one takes the request; each refusal flags that executor
            // offline for every worker (nothing was sent, so moving on is safe).
            let (executor, addr, mut ex, reused) = loop {
                let flagged = |i| ctx.board.is_flagged_offline(i);
                let Some(i) =
                    ctx.picker
                        .pick(&snapshot, self.addressing, self.runtime_id(conn), flagged)
                else {
                    let close = !head.keep_alive || !body.complete_with_head;
                    // The request is answered: it must not be parsed again on keep-alive.
                    conn.consume(head.head_len + body.initial);
                    return answer(ctx, conn, out, ProxyError::NoOnlineExecutor, close).await;
                };
                let status = &snapshot.executors[i];
                let Some(&addr) = status.addrs.first() else {
                    self.flag(i, "its address did not resolve");
                    continue;
                };
                self.write_head(conn, out, &status.hostname, body.initial);
                match self.open_and_send(i, addr, out).await {
                    Ok((ex, reused)) => {
                        if let Some(rt) = self.runtime_id(conn) {
                            ctx.picker.mark_warm(&snapshot, i, rt);
                        }
                        break (i, addr, ex, reused);
                    }
                    Err(Failure::Unreachable(reason)) => self.flag(i, &reason),
                    Err(Failure::Failed(reason)) => {
                        let e = ProxyError::BadGateway(reason);
                        return answer(ctx, conn, out, e, true).await;
                    }
                }
            };

            // Stream the rest of the request body.
            let mut early_answer = false;
            if !body.complete_with_head {
                match self.send_body_rest(conn, &mut ex, &mut eb, &mut body).await {
                    Ok(()) => {}
                    Err(BodyError::ClientGone) => return (After::Close, 0),
                    Err(BodyError::Client(e)) => return answer(ctx, conn, out, e, true).await,
                    // The executor stopped reading; it may have answered early (e.g. 413).
                    Err(BodyError::ExecutorWrite) => early_answer = true,
                }
            }

            eb.clear();
            match read_response_head(&mut ex, &mut eb, is_head, &mut response_headers).await {
                Ok(r) => break (executor, addr, ex, r, early_answer),
                // A pooled connection the executor closed while it sat idle (restart, its
                // own idle timeout). The whole request is still in `out`, so nothing is
                // lost: drop that executor's other idle connections (likely stale too) and
                // go through selection once more.
                Err(HeadFailure::Closed) if reused && body.complete_with_head && !replayed => {
                    replayed = true;
                    ctx.pool.drop_idle(executor);
                }
                Err(e) => {
                    ctx.bufs.put(eb);
                    let e = ProxyError::BadGateway(e.describe());
                    return answer(ctx, conn, out, e, true).await;
                }
            }
        };
        conn.consume(head.head_len + body.initial);

        let relayed = self
            .relay(
                conn,
                &mut ex,
                &mut eb,
                out,
                (&response, &response_headers),
                early_answer,
            )
            .await;
        conn.response_headers = response_headers;
        ctx.bufs.put(eb);
        if relayed.executor_reusable {
            ctx.pool.put(executor, addr, ex);
        }
        (relayed.after, relayed.status)
    }

    /// `x-opr-runtime-id`, read from the head in place (no copy per request).
    fn runtime_id<'c>(&self, conn: &'c ClientConn) -> Option<&'c str> {
        head::find_header(conn.pending(), self.headers, "x-opr-runtime-id")
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, executor: usize, reason: &str) {
        let ctx = self.ctx;
        if !ctx.board.is_flagged_offline(executor) {
            ctx.board.flag_offline(executor);
            let snapshot = ctx.snapshot();
            let name = snapshot
                .executors
                .get(executor)
                .map_or("?", |e| e.hostname.as_str());
            warn!(
                "Executor \"{name}\" went offline: {reason} (flagged by worker {})",
                ctx.id
            );
        }
    }

    /// Body bytes that arrived with the head, validated; decides whether the whole body
    /// is already in hand.
    fn buffered_body(&self, conn: &mut ClientConn) -> Result<BodyState, ProxyError> {
        let head = self.head;
        let available = conn.pending().len() - head.head_len;
        Ok(match head.framing {
            RequestFraming::Empty => BodyState {
                initial: 0,
                complete_with_head: true,
                decoder: None,
            },
            RequestFraming::Length(n) => {
                let initial = (n.min(available as u64)) as usize;
                BodyState {
                    initial,
                    complete_with_head: initial as u64 == n,
                    decoder: None,
                }
            }
            RequestFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                let from = conn.start + head.head_len;
                let (consumed, _) = decode_chunks(&mut dec, &mut conn.buf, from, false)
                    .map_err(ProxyError::BadChunk)?;
                self.check_size(dec.body_len())?;
                BodyState {
                    initial: consumed,
                    complete_with_head: dec.is_done(),
                    decoder: Some(dec),
                }
            }
        })
    }

    fn check_size(&self, len: u64) -> Result<(), ProxyError> {
        match self.ctx.config.max_body_size {
            Some(max) if len > max => Err(ProxyError::BodyTooLarge),
            _ => Ok(()),
        }
    }

    /// The rewritten head followed by the body bytes already buffered.
    fn write_head(&self, conn: &ClientConn, out: &mut Vec<u8>, hostname: &str, initial: usize) {
        let ctx = self.ctx;
        let pending = conn.pending();
        out.clear();
        let rw = RequestRewrite {
            authorization: &ctx.executor_authorization,
            forwarded_for: conn.peer.ip(),
            executor_host: hostname,
            dev_executor_hostname: ctx.config.is_development().then_some(hostname),
            strip_expect: self.head.expect_continue,
        };
        rewrite::write_request_head(out, pending, self.head, self.headers, &rw);
        let start = self.head.head_len;
        out.extend_from_slice(&pending[start..start + initial]);
    }

    /// A pooled connection, or a new one; a pooled one that fails the first write is
    /// replaced by a new one (the executor closed it while idle; nothing was delivered).
    async fn open_and_send(
        &self,
        executor: usize,
        addr: SocketAddr,
        out: &mut Vec<u8>,
    ) -> Result<(TcpStream, bool), Failure> {
        let ctx = self.ctx;
        if let Some(mut ex) = ctx.pool.take(executor, addr) {
            if write_keep(&mut ex, out).await.is_ok() {
                return Ok((ex, true));
            }
        }
        let mut ex = connect(ctx, addr).await?;
        match write_keep(&mut ex, out).await {
            Ok(()) => Ok((ex, false)),
            Err(e) => Err(Failure::Failed(format!("sending to executor failed: {e}"))),
        }
    }

    /// Stream the part of the request body that was not buffered with the head.
    async fn send_body_rest(
        &self,
        conn: &mut ClientConn,
        ex: &mut TcpStream,
        buf: &mut Vec<u8>,
        body: &mut BodyState,
    ) -> Result<(), BodyError> {
        let stall = self.ctx.config.body_timeout;
        match (self.head.framing, body.decoder.as_mut()) {
            (RequestFraming::Length(n), _) => {
                let mut remaining = n - body.initial as u64;
                while remaining > 0 {
                    let want = remaining.min(BODY_BUF as u64) as usize;
                    let got = match read_client_body(&mut conn.stream, buf, want, stall).await {
                        Ok(Some(got)) => got,
                        Ok(None) => return Err(BodyError::ClientGone),
                        Err(()) => return Err(BodyError::Client(ProxyError::BodyTimeout)),
                    };
                    write_range(ex, buf, 0, got)
                        .await
                        .map_err(|_| BodyError::ExecutorWrite)?;
                    remaining -= got as u64;
                }
                Ok(())
            }
            (RequestFraming::Chunked, Some(dec)) => {
                while !dec.is_done() {
                    let got = match read_client_body(&mut conn.stream, buf, BODY_BUF, stall).await {
                        Ok(Some(got)) => got,
                        Ok(None) => return Err(BodyError::ClientGone),
                        Err(()) => return Err(BodyError::Client(ProxyError::BodyTimeout)),
                    };
                    let (consumed, _) = decode_chunks(dec, buf, 0, false)
                        .map_err(|e| BodyError::Client(ProxyError::BadChunk(e)))?;
                    self.check_size(dec.body_len()).map_err(BodyError::Client)?;
                    write_range(ex, buf, 0, consumed)
                        .await
                        .map_err(|_| BodyError::ExecutorWrite)?;
                    if consumed < got {
                        // Pipelined bytes of the next request: keep them for the client loop.
                        conn.buf.extend_from_slice(&buf[consumed..got]);
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Send the response head and stream the body to the client.
    async fn relay(
        &self,
        conn: &mut ClientConn,
        ex: &mut TcpStream,
        eb: &mut Vec<u8>,
        out: &mut Vec<u8>,
        (response, response_headers): (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> Relayed {
        let client_http10 = self.head.minor_version == 0;
        // What the client gets: chunked only to HTTP/1.1 clients; HTTP/1.0 gets the
        // payload delimited by close (RFC 9112 §7.1: no chunked to 1.0).
        let (framing, strip) = match response.framing {
            ResponseFraming::Chunked if client_http10 => (ResponseFraming::UntilClose, true),
            f => (f, false),
        };
        let close = !self.head.keep_alive
            || framing == ResponseFraming::UntilClose
            || early_answer
            || self.ctx.stopping.get();
        out.clear();
        let rw = ResponseRewrite { framing, close };
        rewrite::write_response_head(out, eb, response, response_headers, &rw);
        let status = response.status;
        let after = if close {
            After::Close
        } else {
            After::KeepAlive
        };
        let failed = |reusable: bool| Relayed {
            after: After::Close,
            status,
            executor_reusable: reusable,
        };

        // Body bytes that came with the head.
        let from = response.head_len;
        let mut executor_clean = response.keep_alive && !early_answer;
        let mut remaining = 0u64;
        let mut decoder = ChunkedDecoder::new();
        let avail = eb.len() - from;
        match response.framing {
            ResponseFraming::NoBody => executor_clean &= avail == 0,
            ResponseFraming::Length(n) => {
                let take = (n.min(avail as u64)) as usize;
                out.extend_from_slice(&eb[from..from + take]);
                executor_clean &= take == avail;
                remaining = n - take as u64;
            }
            ResponseFraming::Chunked => match decode_chunks(&mut decoder, eb, from, strip) {
                Ok((consumed, kept)) => {
                    out.extend_from_slice(&eb[from..from + kept]);
                    if decoder.is_done() {
                        executor_clean &= consumed == avail;
                    }
                }
                Err(_) => {
                    // The head is not sent yet: a clean 502 is still possible.
                    let e = ProxyError::BadGateway("malformed chunked body from executor".into());
                    let (after, status) = answer(self.ctx, conn, out, e, true).await;
                    return Relayed {
                        after,
                        status,
                        executor_reusable: false,
                    };
                }
            },
            ResponseFraming::UntilClose => {
                out.extend_from_slice(&eb[from..]);
                executor_clean = false;
            }
        }
        self.phase.set(Phase::HeadSent(status));
        if conn.write_out(out).await.is_err() {
            return failed(false);
        }

        // The rest of the body.
        match response.framing {
            ResponseFraming::NoBody => {}
            ResponseFraming::Length(_) => {
                while remaining > 0 {
                    let want = remaining.min(BODY_BUF as u64) as usize;
                    let got = match read_into(ex, eb, want).await {
                        Ok(0) | Err(_) => return failed(false), // truncated: the client must see it
                        Ok(got) => got,
                    };
                    if write_range(&mut conn.stream, eb, 0, got).await.is_err() {
                        return failed(false);
                    }
                    remaining -= got as u64;
                }
            }
            ResponseFraming::Chunked => {
                while !decoder.is_done() {
                    let got = match read_into(ex, eb, BODY_BUF).await {
                        Ok(0) | Err(_) => return failed(false),
                        Ok(got) => got,
                    };
                    let (consumed, kept) = match decode_chunks(&mut decoder, eb, 0, strip) {
                        Ok(v) => v,
                        Err(_) => return failed(false),
                    };
                    if decoder.is_done() {
                        executor_clean &= consumed == got;
                    }
                    if write_range(&mut conn.stream, eb, 0, kept).await.is_err() {
                        return failed(false);
                    }
                }
            }
            ResponseFraming::UntilClose => loop {
                match read_into(ex, eb, BODY_BUF).await {
                    Ok(0) => break,
                    Ok(got) => {
                        if write_range(&mut conn.stream, eb, 0, got).await.is_err() {
                            return failed(false);
                        }
                    }
                    Err(_) => return failed(false),
                }
            },
        }
        Relayed {
            after,
            status,
            executor_reusable: executor_clean,
        }
    }
}

/// Read until a final response head is in `eb`; interim 1xx heads are skipped.
async fn read_response_head(
    ex: &mut TcpStream,
    eb: &mut Vec<u8>,
    is_head: bool,
    headers: &mut Vec<HeaderRef>,
) -> Result<ResponseHead, HeadFailure> {
    loop {
        if !eb.is_empty() {
            match head::parse_response(eb, is_head, headers) {
                Ok(Some(r)) if r.status == 101 => return Err(HeadFailure::Upgrade),
                // RFC 9110 §15.2: interim responses; the proxy answered 100-continue itself.
                Ok(Some(r)) if r.status < 200 => {
                    eb.drain(..r.head_len);
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Malformed(e)),
            }
        }
        let before = eb.len();
        match read_append(ex, eb).await {
            Ok(0) if before == 0 => return Err(HeadFailure::Closed),
            Ok(0) => {
                // Full buffer (head over 64 KiB) or EOF mid-head.
                if eb.len() == eb.capacity() {
                    return Err(HeadFailure::Malformed(head::HeadError::HeadTooLarge));
                }
                return Err(HeadFailure::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(_) => {}
            Err(e) if before == 0 && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(HeadFailure::Closed)
            }
            Err(e) => return Err(HeadFailure::Io(e)),
        }
    }
}

/// Connect within the connect timeout; classify failures that make the executor
/// unreachable (try another) apart from the rest (502).
pub(crate) async fn connect(ctx: &WorkerCtx, addr: SocketAddr) -> Result<TcpStream, Failure> {
    match monoio::time::timeout(ctx.config.connect_timeout, TcpStream::connect_addr(addr)).await {
        Err(_) => Err(Failure::Unreachable(format!(
            "connect timed out after {} s",
            ctx.config.connect_timeout.as_secs()
        ))),
        Ok(Err(e)) => match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::TimedOut => Err(Failure::Unreachable(e.to_string())),
            _ => Err(Failure::Failed(format!("connect failed: {e}"))),
        },
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}
