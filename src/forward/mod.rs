//! One client request forwarded: the body limit and `100-continue`, then anycast (pick
//! one executor, stream the request, relay the answer) or broadcast. The whole-request
//! deadline wraps it. Framing goes through `pump`, reuse and replay through `reuse`.

mod broadcast;
pub(crate) mod duplex;
pub(crate) mod exchange;
pub(crate) mod pump;
pub(crate) mod reuse;

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::splice::SpliceSource;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::admission::{self, Refused};
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
use crate::snapshot::{ExecutorId, ExecutorStatus, Snapshot};
use crate::socket;
use duplex::{Step, Upload};
use exchange::{ExecutorConn, HeadFailure, OpenError};
use pump::{Body, Delimit, Emit, PumpError, Sink};
use reuse::{ResponseEnd, Reuse, Silence};

pub(crate) use broadcast::{body_limit as broadcast_body_limit, fan_out};
pub(crate) use broadcast::{try_hold as try_hold_broadcast, Budget, CONNECTION_BUDGET};
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
        queued: Cell::new(None),
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
    failover: Cell<Option<(ExecutorId, &'static str)>>,
    /// A `502` was answered for the executor (`fail`): the exchange does not count as
    /// answered for outlier detection.
    failed: Cell<bool>,
    /// Explain the choice in `x-opr-route` (dev mode, or `x-opr-debug: 1`).
    debug: bool,
    /// How long the request waited for a slot (`OPR_PROXY_EXECUTOR_CONCURRENCY`).
    queued: Cell<Option<Duration>>,
}

/// One selection, shared by HTTP/1 requests and HTTP/2 streams (through
/// `admission::admit`): the picker's choice within the tiers, counted in flight to that
/// executor (`assigned` holds the count until the request ends or moves on to another
/// executor), with its address. Executors at their concurrency cap are skipped. An
/// executor whose name did not resolve is flagged offline for every worker and the next
/// one is tried (`unresolved` hears of it). `None`: no online executor under its cap.
pub(crate) fn pick<'c>(
    ctx: &'c WorkerCtx,
    snapshot: &Snapshot,
    addressing: Addressing,
    runtime: Option<&str>,
    assigned: &mut Option<Assignment<'c>>,
    mut unresolved: impl FnMut(ExecutorId),
) -> Option<(Choice, SocketAddr)> {
    loop {
        let flagged = |i| ctx.board.is_flagged_offline(i) || ctx.admission.at_cap(ctx, i);
        let choice = ctx.picker.select(snapshot, addressing, runtime, flagged)?;
        let i = choice.executor;
        *assigned = Some(ctx.assign(i));
        match snapshot.executor(i).addrs.first() {
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
        let mut snapshot = ctx.snapshot();
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
        let read_whole = in_hand.then_some(request_len);
        // The request counts as in flight to the executor it was last assigned to until
        // `run` ends or its future is dropped (deadline, client gone).
        let mut _assigned = None;

        let (mut ex, response) = loop {
            // Selection: every refusal flags that executor offline for every worker and
            // moves on (nothing was sent).
            let runtime = self.runtime_id(conn);
            let unresolved = |i| self.failed_over(i, "unresolved");
            // A request waiting for a slot watches its client, as it does while the
            // executor works.
            let client: &ClientConn = conn;
            let admitted = admission::admit(
                ctx,
                &mut snapshot,
                self.addressing,
                runtime,
                &mut _assigned,
                unresolved,
                || client.gone(),
            )
            .await;
            let (choice, addr) = match admitted {
                Ok(admitted) => {
                    if admitted.waited.is_some() {
                        self.queued.set(admitted.waited);
                    }
                    (admitted.choice, admitted.addr)
                }
                Err(Refused::ClientGone) => return (After::Close, 0),
                Err(Refused::Answer(e)) => {
                    // The request is answered: it must not be parsed again on keep-alive.
                    conn.consume(request_len);
                    let keep = head.keep_alive && in_hand;
                    return ctx.answer(conn, out, e, keep).await;
                }
            };
            let i = choice.executor;
            self.choice.set(Some(choice));
            let status = snapshot.executor(i);
            self.write_head(conn, out, status, first.sent);
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

            // The rest of the request body streams while the answer is read (`upload`).
            if first.rest.is_some() {
                break (ex, None);
            }

            let rb = if big { eb.get() } else { hb.get() };
            rb.clear();
            let head = {
                let read = exchange::read_response_head(ex.stream(), rb, is_head, response_headers);
                wait_head(conn, std::pin::pin!(read)).await
            };
            match head {
                None => return (After::Close, 0),
                Some(Ok(r)) => break (ex, Some(r)),
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
        let (after, status, reuse) = match (response, first.rest.as_mut()) {
            (Some(response), _) => {
                let client = (&mut conn.stream, &mut conn.bytes_out);
                let bufs = (&mut hb, &mut eb, big);
                let answer = (&response, &response_headers[..]);
                match self
                    .relay(client, ex.stream(), bufs, out, answer, false)
                    .await
                {
                    Ok(relayed) => relayed,
                    Err(cause) => {
                        let (after, status) = self.fail(conn, out, cause, Some(0)).await;
                        (after, status, Reuse::Discard(Discard::Unfinished))
                    }
                }
            }
            (None, Some(rest)) => {
                let bufs = (&mut hb, &mut eb, big);
                let silent = match reuse::after_silence(idempotent, ex.reused, replayed, false) {
                    Silence::Fail(cause) => cause,
                    Silence::Replay => Cause::ClosedNotReplayed,
                };
                let request = (rest, silent);
                // Its state lives in its own allocation, not in every request's.
                let upload = self.upload(conn, &mut ex, request, bufs, out, response_headers);
                Box::pin(upload).await
            }
            // The loop breaks without an answer only for a body still to come.
            (None, None) => (After::Close, 0, Reuse::Discard(Discard::Failed)),
        };
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

    fn failed_over(&self, executor: ExecutorId, why: &'static str) {
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
    fn write_head(
        &self,
        conn: &ClientConn,
        out: &mut Vec<u8>,
        executor: &ExecutorStatus,
        sent: usize,
    ) {
        let hostname = executor.hostname.as_str();
        let ctx = self.ctx;
        let pending = conn.pending();
        out.clear();
        let rw = RequestRewrite {
            authorization: &ctx.executor_authorization,
            forwarded_for: conn.peer.ip(),
            executor_host: &executor.authority,
            dev_executor_hostname: ctx.config.is_development().then_some(hostname),
            strip_expect: self.head.expect_continue,
        };
        rewrite::write_request_head(out, pending, self.head, self.headers, &rw);
        let start = self.head.head_len;
        out.extend_from_slice(&pending[start..start + sent]);
    }

    /// The rest of the request body streams to the executor while its answer is read
    /// (RFC 9112 §9.6). An answer that begins first is relayed at once, through a second
    /// handle on the client's socket, while the body goes on as long as the executor takes
    /// it; sending stops when the answer has ended. Such an exchange closes both
    /// connections: the executor's is never pooled, and the client's closes after the
    /// answer with a lingering close when its body was not read whole.
    /// `silent`: the 502 cause when the executor closes without a byte of an answer.
    async fn upload(
        &self,
        conn: &mut ClientConn,
        ex: &mut ExecutorConn<'_>,
        (rest, silent): (&mut Body, Cause),
        (hb, eb, big): (&mut Loan<'_, Vec<u8>>, &mut Loan<'_, Vec<u8>>, bool),
        out: &mut Vec<u8>,
        response_headers: &mut Vec<HeaderRef>,
    ) -> (After, u16, Reuse) {
        let ctx = self.ctx;
        let broken = Reuse::Discard(Discard::Unfinished);
        let is_head = conn.head_request;
        let (ex_r, mut ex_w) = ex.split();
        // The head read owns its reader and buffers, so it can outlive the body's sending
        // (or not) and give them back.
        let rb = std::mem::take(if big { eb.get() } else { hb.get() });
        let headers = std::mem::take(response_headers);
        let mut head = std::pin::pin!(async move {
            let (mut ex_r, mut rb, mut headers) = (ex_r, rb, headers);
            rb.clear();
            let r = exchange::read_response_head(&mut ex_r, &mut rb, is_head, &mut headers).await;
            (r, ex_r, rb, headers)
        });
        let mut ub = ctx.bodies.lend();
        let mut upload = Upload::Sending;
        let stall = Some(ctx.config.body_timeout);
        let pipes = ctx.config.splice.then_some(&ctx.pipes);
        let client_fd = conn.stream.as_raw_fd();
        let mut bytes_out = 0;
        let executor_side = |e: &PumpError| *e == PumpError::Sink;
        let step = {
            let sink = Sink::Executor(&mut ex_w);
            let mut up = std::pin::pin!(rest.pump(&mut conn.stream, sink, &mut ub, stall, pipes));
            match duplex::first(up.as_mut(), &mut upload, head.as_mut(), executor_side).await {
                Err(e) => Step::Client(e),
                Ok(None) => Step::BodyEnded,
                Ok(Some((r, ex_r, rb, headers))) => {
                    *(if big { eb.get() } else { hb.get() }) = rb;
                    *response_headers = headers;
                    match (r, socket::twin(client_fd)) {
                        (Ok(response), Ok(mut client)) => {
                            let mut ex_r = ex_r;
                            let bufs = (&mut *hb, &mut *eb, big);
                            let answer = (&response, &response_headers[..]);
                            let client = (&mut client, &mut bytes_out);
                            let relay = self.relay(client, &mut ex_r, bufs, out, answer, true);
                            let relayed =
                                duplex::alongside(up.as_mut(), &mut upload, relay, executor_side)
                                    .await;
                            match relayed {
                                Ok(relayed) => Step::Relayed(relayed, ex_r),
                                Err(e) => Step::Client(e),
                            }
                        }
                        // No second handle (out of fds): stop sending and relay after.
                        (r, _) => Step::Head(r, ex_r),
                    }
                }
            }
        };
        ctx.m().spliced(rest.spliced, rest.splice_fallback);
        conn.bytes_out += bytes_out;
        conn.bytes_in += match &upload {
            Upload::Sent(after) => rest.read - after.len() as u64,
            _ => rest.read,
        };
        let sent = upload.is_sent();
        // The client's connection stays in step only when its body was read whole before
        // the answer began: pipelined bytes of the next request are kept only then.
        let in_step = sent && matches!(step, Step::BodyEnded);
        if let (true, Upload::Sent(after)) = (in_step, &upload) {
            if !after.is_empty() {
                conn.buf.extend_from_slice(&ub.get()[after.clone()]);
            }
        }
        // Back to the pool before the answer takes a body buffer of its own.
        drop(ub);
        let (relayed, ex_r) = match step {
            // The client's side of the body failed: its error, if no answer went out yet.
            Step::Client(e) => {
                if let Phase::HeadSent(status) = self.phase.get() {
                    return (After::Close, status, broken);
                }
                let e = match e {
                    PumpError::Stalled => ProxyError::BodyTimeout,
                    PumpError::Chunk(e) => ProxyError::BadChunk(e),
                    PumpError::TooLarge => ProxyError::BodyTooLarge,
                    _ => return (After::Close, 0, broken),
                };
                let (after, status) = ctx.answer(conn, out, e, false).await;
                return (after, status, broken);
            }
            Step::Relayed(relayed, ex_r) => (relayed, ex_r),
            step => {
                let (r, mut ex_r) = match step {
                    Step::Head(r, ex_r) => (r, ex_r),
                    _ => {
                        // The body ended first: wait for the head, watching the client.
                        let Some((r, ex_r, rb, headers)) = wait_head(conn, head.as_mut()).await
                        else {
                            return (After::Close, 0, broken);
                        };
                        *(if big { eb.get() } else { hb.get() }) = rb;
                        *response_headers = headers;
                        (r, ex_r)
                    }
                };
                let relayed = match r {
                    Ok(response) => {
                        let client = (&mut conn.stream, &mut conn.bytes_out);
                        let answer = (&response, &response_headers[..]);
                        let bufs = (&mut *hb, &mut *eb, big);
                        self.relay(client, &mut ex_r, bufs, out, answer, !sent)
                            .await
                    }
                    Err(HeadFailure::Silent) => Err(silent),
                    Err(HeadFailure::Failed(cause)) => Err(cause),
                };
                (relayed, ex_r)
            }
        };
        ex.join(ex_r, ex_w);
        match relayed {
            Ok((after, status, reuse)) => {
                // The client may still be sending the rest of its body: it reads the answer
                // before the connection closes (RFC 9112 §9.6).
                if !sent && after == After::Close {
                    conn.linger_close().await;
                }
                (after, status, reuse)
            }
            Err(cause) => {
                let (after, status) = self.fail(conn, out, cause, in_step.then_some(0)).await;
                (after, status, broken)
            }
        }
    }

    /// Send the response head and stream the body to the client (`client`: its socket
    /// and byte count). Returns what happens to the client connection, the status, and
    /// whether the executor connection is reusable; `Err` when nothing reached the client
    /// yet, so a 502 with that cause is still possible. `early_answer`: the request body
    /// was not sent whole (both connections close). A client that takes no byte for
    /// `OPR_PROXY_BODY_TIMEOUT` is given up on, and the executor connection with it.
    async fn relay<R: AsyncReadRent + SpliceSource>(
        &self,
        (client, bytes_out): (&mut TcpStream, &mut u64),
        ex: &mut R,
        (hb, eb, big): (&mut Loan<'_, Vec<u8>>, &mut Loan<'_, Vec<u8>>, bool),
        out: &mut Vec<u8>,
        (response, response_headers): (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> Result<(After, u16, Reuse), Cause> {
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
            explain_queued(self.queued.get(), out);
        }
        let status = response.status;
        let broken = reuse::Reuse::Discard(reuse::Discard::Unfinished);
        let stalled = reuse::Reuse::Discard(reuse::Discard::ClientStalled);
        let stall = self.ctx.config.body_timeout;

        // The head is not sent yet: a clean 502 is still possible.
        let end = exchange::frame_first_bytes(body.as_mut(), rb, response.head_len, Some(out))
            .map_err(|e| match e {
                PumpError::Chunk(e) => Cause::MalformedBody(e),
                _ => Cause::ClosedMidHead,
            })?;
        self.phase.set(Phase::HeadSent(status));
        // The read filled its buffer, so more of the body is likely waiting: the head goes
        // out with it in one write. Otherwise it goes now (the executor may pause).
        let unfinished = matches!((end, &body), (ResponseEnd::Unfinished, Some(_)));
        let head_len = out.len() as u64;
        let hold = unfinished && rb.len() == rb.capacity();
        if !hold {
            *bytes_out += head_len;
            let len = out.len();
            // Bounded by the socket's TCP_USER_TIMEOUT (socket::set_user_timeout).
            let written = pump::write_within(client, out, 0, len, None).await;
            out.clear();
            if let Err(e) = written {
                let why = if e.kind() == io::ErrorKind::TimedOut {
                    stalled
                } else {
                    broken
                };
                return Ok((After::Close, status, why));
            }
        }
        let mut answer_len = head_len;
        let end = match (end, body.as_mut()) {
            (ResponseEnd::Unfinished, Some(body)) => {
                let pipes = self.ctx.config.splice.then_some(&self.ctx.pipes);
                let sink = Sink::Client(client, stall);
                let held = !out.is_empty();
                let pumped = body.pump_after(ex, sink, eb, None, pipes, out).await;
                if held && out.is_empty() {
                    *bytes_out += head_len;
                }
                *bytes_out += body.written;
                answer_len += body.written;
                self.ctx.m().spliced(body.spliced, body.splice_fallback);
                match pumped {
                    Ok(after) if after.is_empty() => ResponseEnd::Clean,
                    Ok(_) => ResponseEnd::Leftover,
                    Err(PumpError::SinkStalled) => return Ok((After::Close, status, stalled)),
                    // The held head never left: nothing reached the client, so a clean 502
                    // is still possible (a client that left gets nothing).
                    Err(e) if !out.is_empty() && e != PumpError::Sink => {
                        return Err(match e {
                            PumpError::Chunk(e) => Cause::MalformedBody(e),
                            _ => Cause::ClosedMidBody,
                        });
                    }
                    // Truncated or malformed: the client must see it (close), and a client
                    // that left takes the executor connection with it.
                    Err(_) => return Ok((After::Close, status, broken)),
                }
            }
            (end, _) => end,
        };
        self.ctx.answer_sizes.saw(answer_len);
        let after = After::close_if(close);
        Ok((
            after,
            status,
            reuse::after_exchange(response, !early_answer, end),
        ))
    }
}

/// Add `x-opr-route: executor=<host>; tier=<n>; reason=<why>[; failover from <host>:
/// <how>]` to the response head (`affinity`: the reason is `affinity owner` or
/// `spilled from <host>: load`) in `out` (it ends with the empty line). Shared by
/// HTTP/1 requests and HTTP/2 streams.
pub(crate) fn explain(
    ctx: &WorkerCtx,
    choice: Option<Choice>,
    failover: Option<(ExecutorId, &'static str)>,
    out: &mut Vec<u8>,
) {
    let Some(choice) = choice else {
        return;
    };
    let snapshot = ctx.snapshot();
    let host = |i: ExecutorId| {
        snapshot
            .executors
            .get(i.index())
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

/// Add `; queued <n> ms` to the `x-opr-route` line `explain` just wrote (the last one of
/// the head in `out`) when the request waited for a slot.
pub(crate) fn explain_queued(waited: Option<Duration>, out: &mut Vec<u8>) {
    let Some(waited) = waited else {
        return;
    };
    if !out.ends_with(b"\r\n\r\n") {
        return;
    }
    out.truncate(out.len() - 4);
    let _ = write!(
        crate::error::VecWriter(out),
        "; queued {} ms\r\n\r\n",
        waited.as_millis()
    );
}

/// Wait for the response head (`read`); once the executor has worked for
/// `WATCH_CLIENT_AFTER`, also watch the client. `None`: the client left, so the request is
/// abandoned and its executor connection closed.
async fn wait_head<F: Future>(conn: &ClientConn, mut read: Pin<&mut F>) -> Option<F::Output> {
    if let Ok(r) = monoio::time::timeout(WATCH_CLIENT_AFTER, read.as_mut()).await {
        return Some(r);
    }
    monoio::select! {
        r = read.as_mut() => Some(r),
        _ = conn.gone() => None,
    }
}
