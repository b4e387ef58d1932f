//! One HTTP/2 stream served like an HTTP/1.1 request: same routing, auth, selection,
//! executor pool, rewrites, limits and error answers. The request body streams from the
//! h2 `RecvStream` to the executor (capacity released as it is written), the answer
//! through the one pump into the h2 `SendStream` (as its window allows).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use monoio::io::splice::SpliceSource;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use crate::access_log;
use crate::admission::{self, Refused};
use crate::api::{self, Route};
use crate::balance::{Addressing, Choice};
use crate::buffers::Loan;
use crate::ctx::WorkerCtx;
use crate::error::{Cause, ProxyError};
use crate::forward;
use crate::forward::duplex::{self, Step, Upload};
use crate::forward::exchange::{self, HeadFailure, OpenError};
use crate::forward::pump::{self, PumpError, Sink};
use crate::forward::reuse::{self, Discard, ResponseEnd, Reuse, Silence};
use crate::http::head::{
    self, HeaderRef, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
};
use crate::http::rewrite::{self, RequestRewrite, ResponseRewrite};
use crate::report::Report;
use crate::snapshot::ExecutorId;

/// What an answer is read and written with: the head buffer, the body buffer, and the
/// vector its head is written into.
type Buffers<'b, 'p> = (
    &'b mut Loan<'p, Vec<u8>>,
    &'b mut Loan<'p, Vec<u8>>,
    &'b mut Vec<u8>,
);

/// What a relayed answer needs of its stream's request.
struct Answer<'a> {
    request: &'a Request,
    /// The first executor that could not be reached, and how (for `x-opr-route`).
    failover: Option<(ExecutorId, &'static str)>,
    /// Explain the choice in `x-opr-route`.
    debug: bool,
    /// How long the stream waited for a slot (`OPR_PROXY_EXECUTOR_CONCURRENCY`).
    queued: Option<Duration>,
}

/// A stream's request as the HTTP/1 code sees it: its head written out as HTTP/1.1.
struct Request {
    buf: Vec<u8>,
    head: RequestHead,
    headers: Vec<HeaderRef>,
}

impl Request {
    fn method(&self) -> &[u8] {
        &self.buf[self.head.method.clone()]
    }

    fn find(&self, name: &str) -> Option<&[u8]> {
        head::find_header(&self.buf, &self.headers, name)
    }
}

/// How the request body could not be sent.
enum BodyError {
    /// The client reset the stream (or its connection ended).
    Client,
    Stalled,
    TooLarge,
    /// The executor stopped reading: it may have answered early.
    Executor,
}

/// The next DATA frame's bytes of a request body; `None` at its end.
async fn next_data(body: &mut RecvStream, stall: Duration) -> Result<Option<Bytes>, BodyError> {
    match monoio::time::timeout(stall, body.data()).await {
        Err(_) => Err(BodyError::Stalled),
        Ok(None) => Ok(None),
        Ok(Some(Err(_))) => Err(BodyError::Client),
        Ok(Some(Ok(data))) => Ok(Some(data)),
    }
}

/// Where the stream stands: a JSON error can still be answered before the head left.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    BeforeHead,
    HeadSent(u16),
}

struct Stream {
    ctx: Rc<WorkerCtx>,
    peer: SocketAddr,
    head_only: bool,
    phase: Cell<Phase>,
    choice: Cell<Option<Choice>>,
    bytes_in: Cell<u64>,
    bytes_out: Cell<u64>,
    /// `METHOD target` for the access log (kept only when it is on).
    request_line: RefCell<Vec<u8>>,
    /// The request body was stopped because its answer ended first: the stream ends with
    /// `RST_STREAM(NO_ERROR)` (h2 sends it once the handles drop) instead of lingering.
    stopped: Cell<bool>,
    /// The connection's budget for broadcast bodies.
    budget: Rc<forward::Budget>,
}

/// Serve one stream to its end. Never panics on anything the client or the executor
/// sends: every failure ends this stream only.
pub(crate) async fn serve(
    ctx: Rc<WorkerCtx>,
    peer: SocketAddr,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    budget: Rc<forward::Budget>,
) {
    let started = Instant::now();
    ctx.m().request_started();
    let (parts, mut body) = request.into_parts();
    let s = Stream {
        ctx: ctx.clone(),
        peer,
        head_only: parts.method == http::Method::HEAD,
        phase: Cell::new(Phase::BeforeHead),
        choice: Cell::new(None),
        bytes_in: Cell::new(0),
        bytes_out: Cell::new(0),
        request_line: RefCell::new(Vec::new()),
        stopped: Cell::new(false),
        budget,
    };
    let status = s.handle(parts, &mut body, &mut respond).await;
    let executor = s.choice.get().map(|c| c.executor);
    let took = started.elapsed();
    let (bytes_in, bytes_out) = (s.bytes_in.get(), s.bytes_out.get());
    ctx.m()
        .request_done(executor, status, took, bytes_in, bytes_out);
    if let Some(log) = &ctx.access_log {
        let snapshot = ctx.snapshot();
        let entry = access_log::Entry {
            client: peer.ip(),
            request_line: &s.request_line.borrow(),
            status,
            executor: executor
                .and_then(|i| snapshot.executors.get(i.index()))
                .map(|e| e.hostname.as_str()),
            tier: s.choice.get().map(|c| c.tier),
            bytes_in,
            bytes_out,
            duration: took,
        };
        log.write(&entry, ctx.m());
    }
    if !s.stopped.get() {
        linger(&mut body).await;
    }
}

/// How long the rest of a request body answered early (an error, or an executor that
/// answered before reading it all) is still read and dropped.
const LINGER: Duration = Duration::from_secs(2);

/// Read and drop what the client still sends of its body, for up to `LINGER`, so the
/// stream ends cleanly and the client reads its answer rather than a reset (as HTTP/1's
/// lingering close); past that, dropping the stream resets it.
async fn linger(body: &mut RecvStream) {
    if body.is_end_stream() {
        return;
    }
    let drain = async {
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
        }
    };
    let _ = monoio::time::timeout(LINGER, drain).await;
}

impl Stream {
    /// Route the request; returns the status sent (0: none, the stream was reset).
    async fn handle(
        &self,
        parts: http::request::Parts,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> u16 {
        let has_body = !body.is_end_stream();
        let mut buf = Vec::with_capacity(512);
        super::head::write_request(&mut buf, &parts, has_body);
        drop(parts);
        let mut headers = Vec::new();
        if self.ctx.access_log.is_some() {
            // A head refused below is logged with its request line, as over HTTP/1.
            access_log::keep_partial_request_line(&mut self.request_line.borrow_mut(), &buf);
        }
        let head = match head::parse_request(&buf, &mut headers) {
            Ok(Some(head)) => head,
            Ok(None) => {
                return self.error(respond, ProxyError::BadHead(head::HeadError::HeadTooLarge))
            }
            Err(e) => return self.error(respond, ProxyError::BadHead(e)),
        };
        let request = Request { buf, head, headers };
        let ctx = &self.ctx;
        if ctx.access_log.is_some() {
            let mut line = self.request_line.borrow_mut();
            access_log::keep_request_line(&mut line, &request.buf, &request.head);
        }
        let path = head::path_of(&request.buf[request.head.target.clone()]);
        let authorization = request.find("authorization");
        let mut out = Vec::new();
        match api::route(
            request.method(),
            path,
            authorization,
            ctx.config.secret.as_bytes(),
        ) {
            Route::Health => {
                api::health(false, self.head_only, &mut out);
                return self.local(respond, &out);
            }
            Route::Unauthorized => return self.error(respond, ProxyError::Unauthorized),
            Route::Containers => {
                api::containers(&ctx.snapshot(), ctx, self.head_only, false, &mut out);
                return self.local(respond, &out);
            }
            Route::Metrics => {
                api::metrics(&ctx.snapshot(), ctx, self.head_only, false, &mut out);
                return self.local(respond, &out);
            }
            Route::Forward => {}
        }

        let addressing = Addressing::from_header(request.find("x-opr-addressing-method"));
        let limit = ctx.config.max_body_size;
        if let (RequestFraming::Length(n), Some(max)) = (request.head.framing, limit) {
            if n > max {
                return self.error(respond, ProxyError::BodyTooLarge);
            }
        }
        // RFC 9110 §10.1.1: as over HTTP/1, the proxy answers 100-continue itself so the
        // client starts sending; the executor never sees Expect (the rewrite drops it).
        if request.head.expect_continue && request.head.has_body() {
            let mut interim = http::Response::new(());
            *interim.status_mut() = http::StatusCode::CONTINUE;
            let _ = respond.send_informational(interim);
        }
        if addressing == Addressing::Broadcast {
            return self.broadcast(&request, body, respond).await;
        }
        let deadline = Instant::now() + ctx.config.max_timeout;
        let run = self.forward(&request, body, respond, addressing, limit);
        match monoio::time::timeout_at(deadline.into(), run).await {
            Ok(status) => status,
            Err(_) => match self.phase.get() {
                Phase::BeforeHead => {
                    self.report(&request, &ProxyError::GatewayTimeout);
                    self.error(respond, ProxyError::GatewayTimeout)
                }
                // The SendStream was dropped with the future: h2 resets the stream.
                Phase::HeadSent(status) => status,
            },
        }
    }

    /// Pick an executor, send the request, relay the answer.
    async fn forward(
        &self,
        request: &Request,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
        addressing: Addressing,
        limit: Option<u64>,
    ) -> u16 {
        let ctx = &*self.ctx;
        let mut snapshot = ctx.snapshot();
        let has_body = request.head.has_body();
        let idempotent = reuse::is_idempotent(request.method());
        let runtime = request
            .find("x-opr-runtime-id")
            .and_then(|v| std::str::from_utf8(v).ok())
            .filter(|v| !v.is_empty());
        let mut replayed = false;
        let mut out = Vec::new();
        let mut hb = ctx.heads.lend();
        let mut eb = ctx.bodies.lend();
        let mut response_headers = Vec::new();

        // Counted in flight to the executor it was last assigned to (least-request, p2c)
        // until the stream's future ends or is dropped.
        let mut assigned = None;
        // The first executor that could not be reached, and how (for `x-opr-route`).
        let failover = Cell::new(None);
        let failed_over = |i: ExecutorId, why: &'static str| {
            if failover.get().is_none() {
                failover.set(Some((i, why)));
            }
        };
        // How long the stream waited for a slot (`OPR_PROXY_EXECUTOR_CONCURRENCY`).
        let mut queued = None;

        let (mut ex, response) = loop {
            // A stream waiting for a slot is dropped from the queue when its client
            // resets it.
            let admitted = admission::admit(
                ctx,
                &mut snapshot,
                addressing,
                runtime,
                &mut assigned,
                |i| failed_over(i, "unresolved"),
                || async {
                    let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
                },
            )
            .await;
            let (choice, addr) = match admitted {
                Ok(admitted) => {
                    queued = queued.or(admitted.waited);
                    (admitted.choice, admitted.addr)
                }
                Err(Refused::ClientGone) => return 0,
                Err(Refused::Answer(e)) => return self.error(respond, e),
            };
            let i = choice.executor;
            self.choice.set(Some(choice));
            let status = snapshot.executor(i);
            out.clear();
            let rw = RequestRewrite {
                authorization: &ctx.executor_authorization,
                forwarded_for: self.peer.ip(),
                executor_host: &status.authority,
                dev_executor_hostname: ctx.config.is_development().then_some(&status.hostname),
                strip_expect: true,
            };
            rewrite::write_request_head(
                &mut out,
                &request.buf,
                &request.head,
                &request.headers,
                &rw,
            );
            let mut ex = match exchange::open(ctx, i, addr, !replayed).await {
                Ok(ex) => ex,
                Err(OpenError::Unreachable(why)) => {
                    failed_over(i, why);
                    continue;
                }
                Err(OpenError::Failed(cause)) => return self.bad_gateway(request, respond, cause),
            };
            if let Some(rt) = runtime {
                ctx.picker.mark_warm(&snapshot, i, rt);
            }
            if let Err(e) = pump::write_keep(ex.stream(), &mut out).await {
                match reuse::after_silence(idempotent, ex.reused, replayed, !has_body) {
                    Silence::Replay => {
                        replayed = true;
                        ctx.pool.drop_idle(i);
                        continue;
                    }
                    Silence::Fail(_) => {
                        return self.bad_gateway(request, respond, Cause::Send(e.kind()))
                    }
                }
            }
            // A body streams while the answer is read (`upload`).
            if has_body {
                break (ex, None);
            }
            let rb = hb.get();
            rb.clear();
            let read = exchange::read_response_head(
                ex.stream(),
                rb,
                self.head_only,
                &mut response_headers,
            );
            // A client that resets the stream abandons the request: the executor
            // connection is closed with `ex` (SPEC §5).
            let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
            let r = monoio::select! {
                r = read => r,
                _ = reset => return 0,
            };
            match r {
                Ok(r) => break (ex, Some(r)),
                Err(HeadFailure::Silent) => {
                    match reuse::after_silence(idempotent, ex.reused, replayed, !has_body) {
                        Silence::Replay => {
                            replayed = true;
                            ctx.pool.drop_idle(i);
                        }
                        Silence::Fail(cause) => return self.bad_gateway(request, respond, cause),
                    }
                }
                Err(HeadFailure::Failed(cause)) => {
                    return self.bad_gateway(request, respond, cause)
                }
            }
        };

        let debug = ctx.config.is_development() || request.find("x-opr-debug") == Some(b"1");
        let answer = Answer {
            request,
            failover: failover.get(),
            queued,
            debug,
        };
        let (status, reuse) = match response {
            Some(response) => {
                let answered = (&response, &response_headers[..]);
                let bufs = (&mut hb, &mut eb, &mut out);
                self.relay(&answer, respond, ex.stream(), bufs, answered, false)
                    .await
            }
            None => {
                let silent = match reuse::after_silence(idempotent, ex.reused, replayed, false) {
                    Silence::Fail(cause) => cause,
                    Silence::Replay => Cause::ClosedNotReplayed,
                };
                let bufs = (&mut hb, &mut eb, &mut out);
                let upload = self.upload(
                    &answer,
                    body,
                    respond,
                    &mut ex,
                    bufs,
                    response_headers,
                    limit,
                    silent,
                );
                // Its state lives in its own allocation, not in every stream's.
                Box::pin(upload).await
            }
        };
        // `None`: the exchange failed (already counted) or the client reset the stream;
        // the executor connection is closed with `ex`.
        if let Some(reuse) = reuse {
            ex.release(reuse);
            if let Some(choice) = self.choice.get() {
                ctx.exchange_answered(choice.executor);
            }
        }
        status
    }

    /// The request body streams to the executor while its answer is read (RFC 9112 §9.6),
    /// as over HTTP/1 (`forward::Anycast::upload`): an answer that begins first is relayed
    /// at once while the body goes on as long as the executor takes it; sending stops
    /// when the answer has ended, and the executor connection is then never pooled. A
    /// body stopped that way ends the stream with `RST_STREAM(NO_ERROR)` after the
    /// complete answer (RFC 9113 §8.1). `silent`: the 502 cause when the executor closes
    /// without a byte of an answer.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        answer: &Answer<'_>,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
        ex: &mut exchange::ExecutorConn<'_>,
        (hb, eb, out): Buffers<'_, '_>,
        mut response_headers: Vec<HeaderRef>,
        limit: Option<u64>,
        silent: Cause,
    ) -> (u16, Option<Reuse>) {
        let ctx = &*self.ctx;
        let request = answer.request;
        let is_head = self.head_only;
        let (ex_r, mut ex_w) = ex.split();
        // The head read owns its reader and buffers, so it can outlive the body's sending
        // (or not) and give them back.
        let rb = std::mem::take(hb.get());
        let headers = std::mem::take(&mut response_headers);
        let mut head = std::pin::pin!(async move {
            let (mut ex_r, mut rb, mut headers) = (ex_r, rb, headers);
            rb.clear();
            let r = exchange::read_response_head(&mut ex_r, &mut rb, is_head, &mut headers).await;
            (r, ex_r, rb, headers)
        });
        let mut upload = Upload::Sending;
        let chunked = request.head.framing == RequestFraming::Chunked;
        let stall = ctx.config.body_timeout;
        let executor_side = |e: &BodyError| matches!(e, BodyError::Executor);
        // Chunk framing of the body, apart from `out` (the answer's head meanwhile).
        let mut framed = Vec::new();
        let step = {
            let up = self.send_body(body, &mut ex_w, chunked, limit, stall, &mut framed);
            let mut up = std::pin::pin!(up);
            let first = duplex::first(up.as_mut(), &mut upload, head.as_mut(), executor_side);
            // A client that resets the stream abandons the request: the executor
            // connection is closed with `ex`.
            let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
            let first = monoio::select! {
                r = first => r,
                _ = reset => return (0, None),
            };
            match first {
                Err(e) => Step::Client(e),
                Ok(None) => Step::BodyEnded,
                Ok(Some((r, mut ex_r, rb, headers))) => {
                    *hb.get() = rb;
                    response_headers = headers;
                    match r {
                        Ok(response) => {
                            let answered = (&response, &response_headers[..]);
                            let bufs = (&mut *hb, &mut *eb, &mut *out);
                            let relay =
                                self.relay(answer, respond, &mut ex_r, bufs, answered, true);
                            let relayed =
                                duplex::alongside(up.as_mut(), &mut upload, relay, executor_side)
                                    .await;
                            match relayed {
                                Ok(relayed) => Step::Relayed(relayed, ex_r),
                                Err(e) => Step::Client(e),
                            }
                        }
                        Err(failure) => Step::Head(Err::<ResponseHead, _>(failure), ex_r),
                    }
                }
            }
        };
        let sent = upload.is_sent();
        // An answer of the executor's while the body was not sent whole: no lingering, the
        // stream ends with RST_STREAM(NO_ERROR) once its handles drop.
        let stopped = !sent && matches!(step, Step::Relayed(..) | Step::BodyEnded);
        self.stopped.set(stopped);
        let (relayed, ex_r) = match step {
            Step::Client(e) => {
                if let Phase::HeadSent(status) = self.phase.get() {
                    return (status, None);
                }
                return match e {
                    // The executor connection is dropped (closed) with `ex`.
                    BodyError::Client | BodyError::Executor => (0, None),
                    BodyError::Stalled => (self.error(respond, ProxyError::BodyTimeout), None),
                    BodyError::TooLarge => (self.error(respond, ProxyError::BodyTooLarge), None),
                };
            }
            Step::Relayed(relayed, ex_r) => (relayed, ex_r),
            // The head could not be read while the body was being sent.
            Step::Head(r, ex_r) => {
                let cause = match r {
                    Ok(_) | Err(HeadFailure::Silent) => silent,
                    Err(HeadFailure::Failed(cause)) => cause,
                };
                ex.join(ex_r, ex_w);
                return (self.bad_gateway(request, respond, cause), None);
            }
            Step::BodyEnded => {
                // The body ended first: wait for the head, watching for a reset.
                let reset = std::future::poll_fn(|cx| respond.poll_reset(cx));
                let (r, mut ex_r, rb, headers) = monoio::select! {
                    r = head.as_mut() => r,
                    _ = reset => return (0, None),
                };
                *hb.get() = rb;
                response_headers = headers;
                let relayed = match r {
                    Ok(response) => {
                        let answered = (&response, &response_headers[..]);
                        let bufs = (&mut *hb, &mut *eb, &mut *out);
                        self.relay(answer, respond, &mut ex_r, bufs, answered, !sent)
                            .await
                    }
                    Err(failure) => {
                        let cause = match failure {
                            HeadFailure::Silent => silent,
                            HeadFailure::Failed(cause) => cause,
                        };
                        (self.bad_gateway(request, respond, cause), None)
                    }
                };
                (relayed, ex_r)
            }
        };
        ex.join(ex_r, ex_w);
        relayed
    }

    /// The answer: the rewrite of HTTP/1 (hop-by-hop fields, Connection-listed ones), then
    /// as h2 fields. A length is kept; chunked and close-delimited bodies leave as DATA
    /// frames of their payload. Returns the status and, when the executor answered, whether
    /// its connection is reusable (`early_answer`: the request body was not sent whole, so
    /// it is not). A client whose window grants nothing for `OPR_PROXY_BODY_TIMEOUT` gets
    /// its stream reset, and the executor connection is closed.
    async fn relay<R: AsyncReadRent + SpliceSource>(
        &self,
        answer: &Answer<'_>,
        respond: &mut SendResponse<Bytes>,
        ex: &mut R,
        (hb, eb, out): Buffers<'_, '_>,
        (response, response_headers): (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> (u16, Option<Reuse>) {
        let ctx = &*self.ctx;
        let request = answer.request;
        let rb = hb.get();
        let (mut rbody, _) = exchange::response_body(response.framing, true);
        let framing = match response.framing {
            ResponseFraming::Length(n) => ResponseFraming::Length(n),
            ResponseFraming::NoBody => ResponseFraming::NoBody,
            _ => ResponseFraming::UntilClose,
        };
        out.clear();
        let rw = ResponseRewrite {
            framing,
            close: false,
        };
        rewrite::write_response_head(out, rb, response, response_headers, &rw);
        if answer.debug {
            forward::explain(ctx, self.choice.get(), answer.failover, out);
            forward::explain_queued(answer.queued, out);
        }
        let mut headers = Vec::new();
        let head = match head::parse_response(out, self.head_only, &mut headers) {
            Ok(Some(r)) => super::head::response(out, &r, &headers),
            _ => {
                return (
                    self.bad_gateway(request, respond, Cause::ClosedMidHead),
                    None,
                )
            }
        };
        let status = response.status;
        let mut first = Vec::new();
        let end = match exchange::frame_first_bytes(
            rbody.as_mut(),
            rb,
            response.head_len,
            Some(&mut first),
        ) {
            Ok(end) => end,
            Err(e) => {
                let cause = match e {
                    PumpError::Chunk(e) => Cause::MalformedBody(e),
                    _ => Cause::ClosedMidHead,
                };
                return (self.bad_gateway(request, respond, cause), None);
            }
        };
        let no_body = rbody.is_none();
        let Ok(send) = respond.send_response(head, no_body) else {
            return (0, None);
        };
        let send = RefCell::new(send);
        self.phase.set(Phase::HeadSent(status));
        let stall = ctx.config.body_timeout;
        // The client stopped reading: its stream is reset, the executor connection closed.
        let stalled = |send: &RefCell<SendStream<Bytes>>| {
            send.borrow_mut().send_reset(Reason::CANCEL);
            (status, Some(Reuse::Discard(Discard::ClientStalled)))
        };
        let end = match (end, rbody.as_mut()) {
            (ResponseEnd::Unfinished, Some(rbody)) => {
                let sink = Sink::H2(&send, stall);
                let pump = rbody.pump_after(ex, sink, eb, None, None, &mut first);
                // A client that resets the stream mid-body abandons it: the executor
                // connection is closed with `ex`, even while the executor is silent.
                let pumped = monoio::select! {
                    r = pump => Some(r),
                    _ = super::reset(&send) => None,
                };
                self.bytes_out.set(rbody.written);
                match pumped {
                    None => return (status, None),
                    Some(Ok(after)) if after.is_empty() => ResponseEnd::Clean,
                    Some(Ok(_)) => ResponseEnd::Leftover,
                    Some(Err(PumpError::SinkStalled)) => return stalled(&send),
                    // Truncated or malformed: the client sees a reset, the executor
                    // connection is closed.
                    Some(Err(_)) => {
                        send.borrow_mut().send_reset(Reason::INTERNAL_ERROR);
                        return (status, None);
                    }
                }
            }
            (end, _) => {
                if !first.is_empty() {
                    match super::send_data(&send, &first, stall).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            return stalled(&send)
                        }
                        Err(_) => return (status, None),
                    }
                    self.bytes_out.set(first.len() as u64);
                }
                end
            }
        };
        if !no_body && send.borrow_mut().send_data(Bytes::new(), true).is_err() {
            return (status, None);
        }
        (
            status,
            Some(reuse::after_exchange(response, !early_answer, end)),
        )
    }

    /// `x-opr-addressing-method: broadcast`: the whole (bounded) body, then every online
    /// executor at once through HTTP/1's fan-out; `204` once all have answered.
    async fn broadcast(
        &self,
        request: &Request,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> u16 {
        let ctx = &self.ctx;
        let limit = forward::broadcast_body_limit(&ctx.config);
        if let RequestFraming::Length(n) = request.head.framing {
            if n > limit {
                return self.error(respond, ProxyError::BodyTooLarge);
            }
        }
        let deadline = Instant::now() + ctx.config.max_timeout;
        let mut collected = Vec::new();
        let stall = ctx.config.body_timeout;
        let need = match request.head.framing {
            RequestFraming::Length(n) => n,
            RequestFraming::Empty => 0,
            RequestFraming::Chunked => limit,
        };
        // Room in the worker's and this connection's budgets, or the stream is refused
        // before anything was read or sent (RFC 9113 §8.7: the client may retry it).
        let Some(mut held) = forward::try_hold_broadcast(need, Some(&self.budget)) else {
            respond.send_reset(Reason::REFUSED_STREAM);
            return 0;
        };
        let read = async {
            while let Some(data) = next_data(body, stall).await? {
                if (collected.len() + data.len()) as u64 > limit {
                    return Err(BodyError::TooLarge);
                }
                collected.extend_from_slice(&data);
                self.bytes_in.set(collected.len() as u64);
                let _ = body.flow_control().release_capacity(data.len());
            }
            held.shrink(collected.len() as u64);
            Ok(held)
        };
        let _held = match monoio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(held)) => held,
            Ok(Err(BodyError::Stalled)) => return self.error(respond, ProxyError::BodyTimeout),
            Ok(Err(BodyError::TooLarge)) => return self.error(respond, ProxyError::BodyTooLarge),
            Ok(Err(_)) => return 0,
            Err(_) => return self.error(respond, ProxyError::GatewayTimeout),
        };
        let (buf, head, headers) = (&request.buf, &request.head, &request.headers);
        let peer = self.peer.ip();
        let collected = Bytes::from(collected);
        if !forward::fan_out(ctx, buf, head, headers, &collected, peer, deadline).await {
            return self.error(respond, ProxyError::NoOnlineExecutor);
        }
        self.local(respond, b"HTTP/1.1 204 No Content\r\n\r\n")
    }

    /// Stream the request body to the executor: a length as it came, otherwise as
    /// chunks; flow-control capacity is released once a frame was written on.
    async fn send_body<W: AsyncWriteRent>(
        &self,
        body: &mut RecvStream,
        ex: &mut W,
        chunked: bool,
        limit: Option<u64>,
        stall: Duration,
        out: &mut Vec<u8>,
    ) -> Result<(), BodyError> {
        let mut total = 0u64;
        while let Some(data) = next_data(body, stall).await? {
            let n = data.len();
            total += n as u64;
            self.bytes_in.set(total);
            if limit.is_some_and(|max| total > max) {
                return Err(BodyError::TooLarge);
            }
            if n == 0 {
                continue;
            }
            if chunked {
                out.clear();
                pump::push_chunk(out, &data);
                pump::write_keep(ex, out)
                    .await
                    .map_err(|_| BodyError::Executor)?;
            } else {
                let (res, _) = ex.write_all(data).await;
                res.map_err(|_| BodyError::Executor)?;
            }
            let _ = body.flow_control().release_capacity(n);
        }
        if chunked {
            out.clear();
            out.extend_from_slice(pump::LAST_CHUNK);
            pump::write_keep(ex, out)
                .await
                .map_err(|_| BodyError::Executor)?;
        }
        Ok(())
    }

    /// Answer an error as SPEC §7 JSON on this stream.
    fn error(&self, respond: &mut SendResponse<Bytes>, e: ProxyError) -> u16 {
        let mut out = Vec::new();
        let config = &self.ctx.config;
        e.write_response(
            &mut out,
            &config.version,
            config.is_development(),
            false,
            self.head_only,
        );
        self.local(respond, &out);
        e.status()
    }

    fn bad_gateway(
        &self,
        request: &Request,
        respond: &mut SendResponse<Bytes>,
        cause: Cause,
    ) -> u16 {
        // Counted for passive ejection exactly as over HTTP/1.
        if let Some(choice) = self.choice.get() {
            self.ctx.exchange_failed(choice.executor, &cause);
        }
        let e = ProxyError::BadGateway(cause);
        self.report(request, &e);
        self.error(respond, e)
    }

    /// Send an answer the proxy made itself (a complete HTTP/1.1 response in `out`).
    /// These are small, so they go without waiting for window.
    fn local(&self, respond: &mut SendResponse<Bytes>, out: &[u8]) -> u16 {
        let Some((answer, body)) = super::head::local_answer(out, self.head_only) else {
            respond.send_reset(Reason::INTERNAL_ERROR);
            return 0;
        };
        let status = answer.status().as_u16();
        let empty = body.is_empty();
        if let Ok(mut send) = respond.send_response(answer, empty) {
            if !empty {
                self.bytes_out.set(body.len() as u64);
                let _ = send.send_data(Bytes::copy_from_slice(&out[body]), true);
            }
        }
        status
    }

    /// Queue the report of a 502 / 504 (SPEC §8), as HTTP/1 does.
    fn report(&self, request: &Request, e: &ProxyError) {
        let ctx = &self.ctx;
        if !ctx.reporter.is_enabled() {
            return;
        }
        let target = &request.buf[request.head.target.clone()];
        let executor = self.choice.get().and_then(|c| {
            ctx.snapshot()
                .executors
                .get(c.executor.index())
                .map(|e| e.hostname.clone())
        });
        ctx.reporter.report(Report::HttpError {
            status: e.status(),
            method: String::from_utf8_lossy(request.method()).into_owned(),
            path: String::from_utf8_lossy(head::path_of(target)).into_owned(),
            executor,
            cause: e.to_string(),
            worker: ctx.id,
        });
    }
}
