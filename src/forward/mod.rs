//! One client request forwarded: the body limit and `100-continue`, then anycast (pick
//! one executor, stream the request, relay the answer) or broadcast. The whole-request
//! deadline wraps it. Framing goes through `pump`, reuse and replay through `reuse`.

mod broadcast;
pub(crate) mod exchange;
pub(crate) mod pump;
pub(crate) mod reuse;

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balance::{Addressing, Choice};
use crate::buffers::Loan;
use crate::ctx::{Assignment, WorkerCtx};
use crate::error::{Cause, ProxyError};
use crate::http::chunked::ChunkedDecoder;
use crate::http::client::{After, ClientConn};
use crate::http::head::{
    self, HeaderRef, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
};
use crate::http::rewrite::{self, RequestRewrite, ResponseRewrite};
use crate::snapshot::Snapshot;
use exchange::{HeadFailure, OpenError};
use pump::{Body, Delimit, Emit, PumpError, Sink};
use reuse::{ResponseEnd, Reuse, Silence};

pub(crate) use broadcast::{body_limit as broadcast_body_limit, fan_out};
pub(crate) use reuse::Discard;

/// How long the executor may work on a request before the proxy starts watching the
/// client for a close (SPEC §5: a client that leaves abandons its request). Most answers
/// come sooner, so they cost no extra poll.
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(5);

/// Where a request stands when the deadline fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing sent to the client yet: a 504 can still be answered.
    BeforeHead,
    /// The response head (with this status) went out: only closing is left.
    HeadSent(u16),
}

/// How one request was served: what happens to the client connection, the status sent,
/// and the executor chosen (for metrics, the access log and `x-opr-route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) after: After,
    pub(crate) status: u16,
    pub(crate) choice: Option<Choice>,
}

impl Served {
    pub(crate) fn local((after, status): (After, u16)) -> Served {
        Served {
            after,
            status,
            choice: None,
        }
    }
}

/// Forward one request (anycast or broadcast) and answer the client.
pub(crate) async fn forward(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    response_headers: &mut Vec<HeaderRef>,
    out: &mut Vec<u8>,
) -> Served {
    let choice = Cell::new(None);
    let (after, status) =
        forward_request(ctx, conn, head, (headers, response_headers), out, &choice).await;
    Served {
        after,
        status,
        choice: choice.get(),
    }
}

async fn forward_request(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    (headers, response_headers): (&[HeaderRef], &mut Vec<HeaderRef>),
    out: &mut Vec<u8>,
    choice: &Cell<Option<Choice>>,
) -> (After, u16) {
    let config = &ctx.config;
    let addressing = Addressing::from_header(head::find_header(
        conn.pending(),
        headers,
        "x-opr-addressing-method",
    ));
    let limit = match addressing {
        Addressing::Broadcast => Some(broadcast::body_limit(config)),
        _ => config.max_body_size,
    };
    // RFC 9110 §15.5.14: a declared length over the limit is refused before reading it.
    if let (RequestFraming::Length(n), Some(max)) = (head.framing, limit) {
        if n > max {
            return ctx.answer(conn, out, ProxyError::BodyTooLarge, false).await;
        }
    }
    // RFC 9110 §10.1.1: answer 100-continue ourselves so the client starts sending; the
    // executor never sees Expect (the rewrite drops it).
    if head.expect_continue && head.has_body() && conn.pending().len() == head.head_len {
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if conn.write_answer(out, config.body_timeout).await.is_err() {
            return (After::Close, 0);
        }
    }
    if addressing == Addressing::Broadcast {
        // Rare: its state lives in its own allocation, not in every connection's task.
        return Box::pin(broadcast::broadcast(ctx, conn, head, headers, out, limit)).await;
    }

    let phase = Cell::new(Phase::BeforeHead);
    let deadline = Instant::now() + config.max_timeout;
    let debug = config.is_development()
        || head::find_header(conn.pending(), headers, "x-opr-debug") == Some(b"1");
    let anycast = Anycast {
        ctx,
        head,
        headers,
        addressing,
        limit,
        phase: &phase,
        choice,
        failover: Cell::new(None),
        failed: Cell::new(false),
        debug,
    };
    let run = anycast.run(conn, out, response_headers);
    match monoio::time::timeout_at(deadline.into(), run).await {
        Ok(result) => result,
        Err(_) => match phase.get() {
            Phase::BeforeHead => {
                let request = Some((head, choice.get().map(|c| c.executor)));
                let e = ProxyError::GatewayTimeout;
                ctx.answer_forwarded(conn, out, e, false, request).await
            }
            Phase::HeadSent(status) => (After::Close, status),
        },
    }
}

/// The request body as far as it came with the head.
struct FirstBytes {
    /// The rest of the body, when it did not all come with the head.
    rest: Option<Body>,
    /// Body bytes of the client's buffer taken (framing included).
    consumed: usize,
    /// Of those, the bytes to send (`buf[..sent]` after the head; trailers removed).
    sent: usize,
}

/// One anycast request.
struct Anycast<'a> {
    ctx: &'a Rc<WorkerCtx>,
    head: &'a RequestHead,
    headers: &'a [HeaderRef],
    addressing: Addressing,
    limit: Option<u64>,
    phase: &'a Cell<Phase>,
    /// The executor the request went to, and why.
    choice: &'a Cell<Option<Choice>>,
    /// The first executor that could not be reached, and how (for `x-opr-route`).
    failover: Cell<Option<(usize, &'static str)>>,
    /// A `502` was answered for the executor (`fail`): the exchange does not count as
    /// answered for outlier detection.
    failed: Cell<bool>,
    /// Explain the choice in `x-opr-route` (dev mode, or `x-opr-debug: 1`).
    debug: bool,
}

/// One selection, shared by HTTP/1 requests and HTTP/2 streams: the picker's choice
/// within the tiers, counted in flight to that executor (`assigned` holds the count until
/// the request ends or moves on to another executor), with its address. An executor
/// whose name did not resolve is flagged offline for every worker and the next one is
/// tried (`unresolved` hears of it). `None`: no online executor is left.
pub(crate) fn pick<'c>(
    ctx: &'c WorkerCtx,
    snapshot: &Snapshot,
    addressing: Addressing,
    runtime: Option<&str>,
    assigned: &mut Option<Assignment<'c>>,
    mut unresolved: impl FnMut(usize),
) -> Option<(Choice, SocketAddr)> {
    loop {
        let flagged = |i| ctx.board.is_flagged_offline(i);
        let choice = ctx.picker.select(snapshot, addressing, runtime, flagged)?;
        let i = choice.executor;
        *assigned = Some(ctx.assign(i));
        match snapshot.executors[i].addrs.first() {
            Some(&addr) => {
                if let Some(owner) = choice.spilled_from {
                    ctx.m().affinity_spilled(owner);
                }
                return Some((choice, addr));
            }
            None => {
                ctx.flag_offline(i, &"its address did not resolve");
                unresolved(i);
            }
        }
    }
}

impl Anycast<'_> {
    async fn run(
        &self,
        conn: &mut ClientConn,
        out: &mut Vec<u8>,
        response_headers: &mut Vec<HeaderRef>,
    ) -> (After, u16) {
        let ctx = self.ctx;
        let head = self.head;
        let snapshot = ctx.snapshot();
        let is_head = conn.head_request;
        let idempotent = reuse::is_idempotent(&conn.pending()[head.method.clone()]);
        let mut first = match self.first_bytes(conn) {
            Ok(first) => first,
            Err(e) => return ctx.answer(conn, out, e, false).await,
        };
        let in_hand = first.rest.is_none();
        // A body buffer only if a body is copied. The answer is read into a head buffer,
        // unless this worker's recent answers were larger than one: then into the body
        // buffer, which saves a read and a write per answer.
        let mut eb = ctx.bodies.lend();
        let mut hb = ctx.heads.lend();
        let big = ctx.answer_sizes.expect_large();
        let mut replayed = false;
        // Pending request bytes to consume when the request turns out to be read whole.
        let request_len = head.head_len + first.consumed;
        let mut read_whole = in_hand.then_some(request_len);
        // The request counts as in flight to the executor it was last assigned to until
        // `run` ends or its future is dropped (deadline, client gone).
        let mut _assigned = None;

        let (mut ex, response, early_answer) = loop {
            // Selection: every refusal flags that executor offline for every worker and
            // moves on (nothing was sent).
            let runtime = self.runtime_id(conn);
            let unresolved = |i| self.failed_over(i, "unresolved");
            let picked = pick(
                ctx,
                &snapshot,
                self.addressing,
                runtime,
                &mut _assigned,
                unresolved,
            );
            let Some((choice, addr)) = picked else {
                // The request is answered: it must not be parsed again on keep-alive.
                conn.consume(request_len);
                let keep = head.keep_alive && in_hand;
                return ctx
                    .answer(conn, out, ProxyError::NoOnlineExecutor, keep)
                    .await;
            };
            let i = choice.executor;
            self.choice.set(Some(choice));
            let status = &snapshot.executors[i];
            self.write_head(conn, out, &status.hostname, first.sent);
            let mut ex = match exchange::open(ctx, i, addr, !replayed).await {
                Ok(ex) => ex,
                Err(OpenError::Unreachable(why)) => {
                    self.failed_over(i, why);
                    continue;
                }
                Err(OpenError::Failed(cause)) => {
                    return self.fail(conn, out, cause, read_whole).await
                }
            };
            if let Some(rt) = self.runtime_id(conn) {
                ctx.picker.mark_warm(&snapshot, i, rt);
            }
            if let Err(e) = pump::write_keep(ex.stream(), out).await {
                match reuse::after_silence(idempotent, ex.reused, replayed, in_hand) {
                    Silence::Replay => {
                        replayed = true;
                        ctx.pool.drop_idle(i);
                        continue;
                    }
                    Silence::Fail(_) => {
                        let cause = Cause::Send(e.kind());
                        return self.fail(conn, out, cause, read_whole).await;
                    }
                }
            }

            // The rest of the request body.
            let mut early_answer = false;
            if let Some(rest) = first.rest.as_mut() {
                let stall = Some(ctx.config.body_timeout);
                let sink = Sink::Socket(ex.stream());
                let pipes = ctx.config.splice.then_some(&ctx.pipes);
                let pumped = rest
                    .pump(&mut conn.stream, sink, &mut eb, stall, pipes)
                    .await;
                ctx.m().spliced(rest.spliced, rest.splice_fallback);
                match pumped {
                    // Pipelined bytes of the next request: keep them for the client loop.
                    Ok(after) => {
                        conn.bytes_in += rest.read - after.len() as u64;
                        if !after.is_empty() {
                            conn.buf.extend_from_slice(&eb.get()[after]);
                        }
                        read_whole = Some(request_len);
                    }
                    Err(PumpError::SourceClosed) => return (After::Close, 0),
                    Err(PumpError::Stalled) => {
                        return ctx.answer(conn, out, ProxyError::BodyTimeout, false).await
                    }
                    Err(PumpError::Chunk(e)) => {
                        return ctx.answer(conn, out, ProxyError::BadChunk(e), false).await
                    }
                    Err(PumpError::TooLarge) => {
                        return ctx.answer(conn, out, ProxyError::BodyTooLarge, false).await
                    }
                    // The executor stopped reading; it may have answered early (e.g. 413).
                    Err(PumpError::Sink) => early_answer = true,
                }
            }

            let rb = if big { eb.get() } else { hb.get() };
            rb.clear();
            match wait_head(conn, ex.stream(), rb, is_head, response_headers).await {
                None => return (After::Close, 0),
                Some(Ok(r)) => break (ex, r, early_answer),
                Some(Err(HeadFailure::Silent)) => {
                    match reuse::after_silence(idempotent, ex.reused, replayed, in_hand) {
                        // A pooled connection the executor closed just as it was taken:
                        // its other idle ones are likely stale too.
                        Silence::Replay => {
                            replayed = true;
                            ctx.pool.drop_idle(i);
                        }
                        Silence::Fail(cause) => {
                            return self.fail(conn, out, cause, read_whole).await
                        }
                    }
                }
                Some(Err(HeadFailure::Failed(cause))) => {
                    return self.fail(conn, out, cause, read_whole).await
                }
            }
        };
        let (after, status, reuse) = self
            .relay(
                conn,
                ex.stream(),
                (&mut hb, &mut eb, big),
                out,
                (&response, response_headers),
                early_answer,
            )
            .await;
        if !self.failed.get() {
            if let Some(choice) = self.choice.get() {
                ctx.exchange_answered(choice.executor);
            }
        }
        // After the relay: a 502 it answers reports the request's method and path.
        conn.consume(request_len);
        ex.release(reuse);
        (after, status)
    }

    fn failed_over(&self, executor: usize, why: &'static str) {
        if self.failover.get().is_none() {
            self.failover.set(Some((executor, why)));
        }
    }

    /// `x-opr-runtime-id`, read from the head in place (no copy per request).
    fn runtime_id<'c>(&self, conn: &'c ClientConn) -> Option<&'c str> {
        head::find_header(conn.pending(), self.headers, "x-opr-runtime-id")
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty())
    }

    /// Answer 502. The client connection stays open only when its request was read whole
    /// (`read_whole`: its bytes still pending in the client's buffer, then consumed) and
    /// the client allows it.
    async fn fail(
        &self,
        conn: &mut ClientConn,
        out: &mut Vec<u8>,
        cause: Cause,
        read_whole: Option<usize>,
    ) -> (After, u16) {
        let keep_alive = self.head.keep_alive && read_whole.is_some();
        if let Some(choice) = self.choice.get() {
            self.failed.set(true);
            self.ctx.exchange_failed(choice.executor, &cause);
        }
        // Consumed after the answer: its report reads the request's method and path.
        let e = ProxyError::BadGateway(cause);
        let request = Some((self.head, self.choice.get().map(|c| c.executor)));
        let answered = self
            .ctx
            .answer_forwarded(conn, out, e, keep_alive, request)
            .await;
        if let Some(n) = read_whole {
            conn.consume(n);
        }
        answered
    }

    /// Frame the body bytes that arrived with the head (in place: trailer fields are
    /// removed) and decide whether the whole body is in hand.
    fn first_bytes(&self, conn: &mut ClientConn) -> Result<FirstBytes, ProxyError> {
        let head = self.head;
        let delimit = match head.framing {
            RequestFraming::Empty => {
                return Ok(FirstBytes {
                    rest: None,
                    consumed: 0,
                    sent: 0,
                })
            }
            RequestFraming::Length(n) => Delimit::Length(n),
            RequestFraming::Chunked => Delimit::Chunked(ChunkedDecoder::new()),
        };
        let mut body = Body::new(delimit, Emit::RawWithoutTrailers, self.limit);
        let from = conn.start + head.head_len;
        let to = conn.buf.len();
        let (sent, consumed) = body.frame(&mut conn.buf, from, to).map_err(|e| match e {
            PumpError::Chunk(e) => ProxyError::BadChunk(e),
            _ => ProxyError::BodyTooLarge,
        })?;
        Ok(FirstBytes {
            rest: (!body.is_done()).then_some(body),
            consumed,
            sent,
        })
    }

    /// The rewritten head followed by the body bytes already buffered.
    fn write_head(&self, conn: &ClientConn, out: &mut Vec<u8>, hostname: &str, sent: usize) {
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
        out.extend_from_slice(&pending[start..start + sent]);
    }

    /// Send the response head and stream the body to the client. Returns what happens to
    /// the client connection, the status, and whether the executor connection is reusable.
    async fn relay(
        &self,
        conn: &mut ClientConn,
        ex: &mut TcpStream,
        (hb, eb, big): (&mut Loan<'_, Vec<u8>>, &mut Loan<'_, Vec<u8>>, bool),
        out: &mut Vec<u8>,
        (response, response_headers): (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> (After, u16, Reuse) {
        let client_http10 = self.head.minor_version == 0;
        let (mut body, framing) = exchange::response_body(response.framing, client_http10);
        let close = !self.head.keep_alive
            || framing == ResponseFraming::UntilClose
            || early_answer
            || self.ctx.stopping.get();
        // The buffer the answer was read into.
        let rb = if big { eb.get() } else { hb.get() };
        out.clear();
        let rw = ResponseRewrite { framing, close };
        rewrite::write_response_head(out, rb, response, response_headers, &rw);
        if self.debug {
            explain(self.ctx, self.choice.get(), self.failover.get(), out);
        }
        let status = response.status;
        let broken = reuse::Reuse::Discard(reuse::Discard::Unfinished);

        let end = match exchange::frame_first_bytes(body.as_mut(), rb, response.head_len, Some(out))
        {
            Ok(end) => end,
            Err(e) => {
                // The head is not sent yet: a clean 502 is still possible.
                let cause = match e {
                    PumpError::Chunk(e) => Cause::MalformedBody(e),
                    _ => Cause::ClosedMidHead,
                };
                let read_whole = (!early_answer).then_some(0);
                let (after, status) = self.fail(conn, out, cause, read_whole).await;
                return (after, status, broken);
            }
        };
        self.phase.set(Phase::HeadSent(status));
        // The read filled its buffer, so more of the body is likely waiting: the head goes
        // out with it in one write. Otherwise it goes now (the executor may pause).
        let unfinished = matches!((end, &body), (ResponseEnd::Unfinished, Some(_)));
        let head_len = out.len() as u64;
        let hold = unfinished && rb.len() == rb.capacity();
        if !hold && conn.write_out(out).await.is_err() {
            return (After::Close, status, broken);
        }
        let mut answer_len = head_len;
        let end = match (end, body.as_mut()) {
            (ResponseEnd::Unfinished, Some(body)) => {
                let pipes = self.ctx.config.splice.then_some(&self.ctx.pipes);
                let sink = Sink::Socket(&mut conn.stream);
                let held = !out.is_empty();
                let pumped = body.pump_after(ex, sink, eb, None, pipes, out).await;
                if held && out.is_empty() {
                    conn.bytes_out += head_len;
                }
                conn.bytes_out += body.written;
                answer_len += body.written;
                self.ctx.m().spliced(body.spliced, body.splice_fallback);
                match pumped {
                    Ok(after) if after.is_empty() => ResponseEnd::Clean,
                    Ok(_) => ResponseEnd::Leftover,
                    // The held head never left: nothing reached the client, so a clean 502
                    // is still possible (a client that left gets nothing).
                    Err(e) if !out.is_empty() && e != PumpError::Sink => {
                        let cause = match e {
                            PumpError::Chunk(e) => Cause::MalformedBody(e),
                            _ => Cause::ClosedMidBody,
                        };
                        let read_whole = (!early_answer).then_some(0);
                        let (after, status) = self.fail(conn, out, cause, read_whole).await;
                        return (after, status, broken);
                    }
                    // Truncated or malformed: the client must see it (close), and a client
                    // that left takes the executor connection with it.
                    Err(_) => return (After::Close, status, broken),
                }
            }
            (end, _) => end,
        };
        self.ctx.answer_sizes.saw(answer_len);
        let after = After::close_if(close);
        (
            after,
            status,
            reuse::after_exchange(response, !early_answer, end),
        )
    }
}

/// Add `x-opr-route: executor=<host>; tier=<n>; reason=<why>[; failover from <host>:
/// <how>]` to the response head (`affinity`: the reason is `affinity owner` or
/// `spilled from <host>: load`) in `out` (it ends with the empty line). Shared by
/// HTTP/1 requests and HTTP/2 streams.
pub(crate) fn explain(
    ctx: &WorkerCtx,
    choice: Option<Choice>,
    failover: Option<(usize, &'static str)>,
    out: &mut Vec<u8>,
) {
    let Some(choice) = choice else {
        return;
    };
    let snapshot = ctx.snapshot();
    let host = |i: usize| {
        snapshot
            .executors
            .get(i)
            .map_or("?", |e| e.hostname.as_str())
    };
    out.truncate(out.len() - 2);
    let mut w = crate::error::VecWriter(out);
    let _ = write!(w, "x-opr-route: executor={}; tier=", host(choice.executor));
    let _ = match choice.tier {
        0 => write!(w, "none"),
        n => write!(w, "{n}"),
    };
    let _ = match choice.spilled_from {
        Some(owner) => write!(w, "; reason=spilled from {}: load", host(owner)),
        None => write!(w, "; reason={}", choice.reason),
    };
    if let Some((from, why)) = failover {
        let _ = write!(w, "; failover from {}: {why}", host(from));
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Wait for the response head; once the executor has worked for `WATCH_CLIENT_AFTER`,
/// also watch the client. `None`: the client left, so the request is abandoned and its
/// executor connection closed (SPEC §5).
async fn wait_head(
    conn: &ClientConn,
    ex: &mut TcpStream,
    eb: &mut Vec<u8>,
    is_head: bool,
    headers: &mut Vec<HeaderRef>,
) -> Option<Result<ResponseHead, HeadFailure>> {
    let mut read = std::pin::pin!(exchange::read_response_head(ex, eb, is_head, headers));
    if let Ok(r) = monoio::time::timeout(WATCH_CLIENT_AFTER, read.as_mut()).await {
        return Some(r);
    }
    monoio::select! {
        r = read.as_mut() => Some(r),
        _ = conn.gone() => None,
    }
}
