//! The one back end, behind both front ends. Both go through `setup` (the body limit,
//! `100-continue`, broadcast or anycast, the whole-request deadline), `connect`, `upload`
//! (the body while the answer is read) and `relay`, with `pump`, `duplex`, `exchange`,
//! `reuse`, `request` and the 502 accounting (`bad_gateway`). Here is HTTP/1's side of an
//! anycast (`Anycast`, for a `SocketDownstream`): the body bytes that came with the head,
//! the body's pump from the client's socket, and `SocketReply`, which writes an answer as
//! bytes to it.

pub(crate) mod admit;
mod broadcast;
pub(crate) mod connect;
pub(crate) mod downstream;
pub(crate) mod duplex;
pub(crate) mod exchange;
pub(crate) mod pump;
pub(crate) mod relay;
pub(crate) mod request;
pub(crate) mod reuse;
pub(crate) mod setup;
pub(crate) mod upload;

use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::ops::Range;

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use monoio::io::splice::SpliceSource;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;

use crate::admission::Refused;
use crate::answer::ProxyError;
use crate::balance::{Addressing, Choice};
use crate::buffers::Loan;
use crate::ctx::WorkerCtx;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{
    self, HeaderRef, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
};
use crate::http::rewrite::{self, ResponseRewrite};
use crate::outcome::{self, After, AnswerEnd, Asked, Cause, Discard, Served};
use crate::report::Report;
use crate::snapshot::ExecutorId;
use crate::socket;
use connect::{connect_client, Connected, Picked};
use downstream::SocketDownstream;
use duplex::{Step, Upload};
use exchange::ExecutorConn;
use pump::{Body, Delimit, Emit, PlainSink, PumpError};
use relay::{Bufs, Ended, Explain, Head, Relaying, Reply};
use request::Phase;
use reuse::Reuse;
use setup::{Answers, Way};
use upload::Answered;

pub(crate) use broadcast::{body_limit as broadcast_body_limit, fan_out};
pub(crate) use broadcast::{try_hold as try_hold_broadcast, Budget, CONNECTION_BUDGET};

/// Forward one request (anycast or broadcast) and answer the client.
pub(crate) async fn forward<D: SocketDownstream>(
    ctx: &Rc<WorkerCtx>,
    conn: &mut D,
    head: &RequestHead,
    headers: &[HeaderRef],
    response_headers: &mut Vec<HeaderRef>,
    out: &mut Vec<u8>,
) -> Served {
    let picked = Picked::default();
    let served = forward_request(ctx, conn, head, (headers, response_headers), out, &picked).await;
    Served {
        choice: picked.choice.get(),
        ..served
    }
}

async fn forward_request<D: SocketDownstream>(
    ctx: &Rc<WorkerCtx>,
    conn: &mut D,
    head: &RequestHead,
    (headers, response_headers): (&[HeaderRef], &mut Vec<HeaderRef>),
    out: &mut Vec<u8>,
    picked: &Picked,
) -> Served {
    let addressing = Addressing::from_header(head::find_header(
        conn.pending(),
        headers,
        "x-opr-addressing-method",
    ));
    let mut down = Socket { conn, out };
    let limit = match setup::prepare(ctx, &mut down, head, addressing).await {
        Ok(Way::Anycast(limit)) => limit,
        // Rare: its state lives in its own allocation, not in every connection's task.
        Ok(Way::Broadcast(limit)) => {
            let (conn, out) = (&mut *down.conn, &mut *down.out);
            let broadcast = broadcast::broadcast(ctx, conn, head, headers, out, Some(limit));
            return Box::pin(broadcast).await;
        }
        Err(served) => return served,
    };
    let phase = Cell::new(Phase::BeforeHead);
    let deadline = setup::deadline(ctx);
    let debug = request::debug(
        &ctx.config,
        head::find_header(down.conn.pending(), headers, "x-opr-debug"),
    );
    let anycast = Anycast {
        ctx,
        head,
        headers,
        addressing,
        limit,
        relaying: Relaying {
            ctx,
            phase: &phase,
            picked,
            debug,
        },
        failed: Cell::new(false),
    };
    let run = anycast.run(down.conn, down.out, response_headers);
    match monoio::time::timeout_at(deadline.into(), run).await {
        Ok(served) => served,
        Err(_) => setup::deadline_passed(ctx, &mut down, head, (&phase, picked)).await,
    }
}

/// An HTTP/1 client as the shared setup answers it: its connection and the vector its
/// answers are written into.
struct Socket<'a, D> {
    conn: &'a mut D,
    out: &'a mut Vec<u8>,
}

impl<D: SocketDownstream> Answers for Socket<'_, D> {
    type Out = Served;

    fn pending(&self) -> &[u8] {
        self.conn.pending()
    }

    async fn send_continue(&mut self, ctx: &WorkerCtx) -> io::Result<()> {
        self.out.clear();
        self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        self.conn
            .write_answer(self.out, ctx.config.body_timeout)
            .await
    }

    async fn refuse(&mut self, ctx: &WorkerCtx, e: ProxyError) -> Served {
        self.conn
            .answer_error(ctx, self.out, e, Asked::UNREAD)
            .await
    }

    fn cut(status: u16) -> Served {
        Served::closed(status)
    }
}

/// An exchange that did not end cleanly: its executor connection is closed.
const BROKEN: Reuse = Reuse::Discard(Discard::Unfinished);

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
    /// The phase, the executor the request went to and why, and whether to explain it;
    /// a field, so a relay borrows it rather than keeping a copy in the task's state.
    relaying: Relaying<'a>,
    /// A `502` was answered for the executor (`fail`): the exchange does not count as
    /// answered for outlier detection.
    failed: Cell<bool>,
}

impl Anycast<'_> {
    async fn run<D: SocketDownstream>(
        &self,
        conn: &mut D,
        out: &mut Vec<u8>,
        response_headers: &mut Vec<HeaderRef>,
    ) -> Served {
        let ctx = self.ctx;
        let head = self.head;
        let mut first = match self.first_bytes(conn) {
            Ok(first) => first,
            Err(e) => return conn.answer_error(ctx, out, e, Asked::UNREAD).await,
        };
        let in_hand = first.rest.is_none();
        // A body buffer only if a body is copied. The answer is read into a head buffer,
        // unless this worker's recent answers were larger than one: then into the body
        // buffer, which saves a read and a write per answer.
        let mut eb = ctx.bodies.lend();
        let mut hb = ctx.heads.lend();
        let big = ctx.answer_sizes.expect_large();
        // Pending request bytes to consume when the request turns out to be read whole.
        let request_len = head.head_len + first.consumed;
        let read_whole = in_hand.then_some(request_len);
        // The request counts as in flight to the executor it was last assigned to until
        // `run` ends or its future is dropped (deadline, client gone).
        let mut _assigned = None;

        let rb = if big { eb.get() } else { hb.get() };
        let bufs = (rb, &mut *response_headers);
        let request = (head, self.headers, self.addressing);
        let sent = (first.sent, in_hand);
        let picked = self.relaying.picked;
        // Matched as a temporary: a named `Connected` would stay in the task's state
        // beside the `ex` moved out of it.
        let connected = connect_client(ctx, conn, request, sent, picked, &mut _assigned, out, bufs);
        let (mut ex, response, silent) = match connected.await {
            Connected::Sent {
                ex,
                response,
                silent,
            } => (ex, response, silent),
            Connected::Refused(Refused::ClientGone) | Connected::Gone => return Served::closed(0),
            Connected::Refused(refused) => {
                let e = refused_answer(refused);
                // The request is answered: it must not be parsed again on keep-alive.
                conn.consume(request_len);
                return conn
                    .answer_error(ctx, out, e, Asked::of(head, in_hand))
                    .await;
            }
            Connected::Failed(cause) => return self.fail(conn, out, cause, read_whole).await,
        };
        let bufs = (&mut hb, &mut eb, big);
        let answer = (response.as_ref(), first.rest.as_mut(), silent);
        let (served, reuse) = self
            .answer(conn, &mut ex, answer, bufs, out, response_headers)
            .await;
        if !self.failed.get() {
            if let Some(choice) = self.relaying.picked.choice.get() {
                ctx.executor(choice.executor).answered();
            }
        }
        // After the relay: a 502 it answers reports the request's method and path.
        conn.consume(request_len);
        ex.release(reuse);
        served
    }

    /// Relay the answer whose head was read, or stream the rest of the body while it is
    /// read (`upload`, with `silent` the 502 cause of an executor that closes unanswering).
    async fn answer<D: SocketDownstream>(
        &self,
        conn: &mut D,
        ex: &mut ExecutorConn<'_>,
        (response, rest, silent): (Option<&ResponseHead>, Option<&mut Body>, Cause),
        (hb, eb, big): Bufs<'_, '_>,
        out: &mut Vec<u8>,
        response_headers: &mut Vec<HeaderRef>,
    ) -> (Served, Reuse) {
        match (response, rest) {
            (Some(response), _) => {
                let mut reply = SocketReply::of(conn, self.head);
                let answer = (response, &response_headers[..]);
                let relaying = &self.relaying;
                let relayed =
                    relaying.relay(&mut reply, ex.stream(), (hb, eb, big), out, answer, false);
                match relayed.await.map(served) {
                    Ok(relayed) => relayed,
                    Err(cause) => {
                        let served = self.fail(conn, out, cause, Some(0)).await;
                        (served, Reuse::Discard(Discard::Unfinished))
                    }
                }
            }
            (None, Some(rest)) => {
                let request = (rest, silent);
                // Its state lives in its own allocation, not in every request's.
                let upload = self.upload(conn, ex, request, (hb, eb, big), out, response_headers);
                Box::pin(upload).await
            }
            // Connecting ends without an answer's head only for a body still to come.
            (None, None) => (Served::closed(0), Reuse::Discard(Discard::Failed)),
        }
    }

    /// Answer 502. The client connection stays open only when its request was read whole
    /// (`read_whole`: its bytes still pending in the client's buffer, then consumed) and
    /// the client allows it.
    async fn fail<D: SocketDownstream>(
        &self,
        conn: &mut D,
        out: &mut Vec<u8>,
        cause: Cause,
        read_whole: Option<usize>,
    ) -> Served {
        let asked = Asked::of(self.head, read_whole.is_some());
        if self.relaying.picked.choice.get().is_some() {
            self.failed.set(true);
        }
        // Consumed after the answer: its report reads the request's method and path.
        let pending = conn.pending();
        let head = self.head;
        let asked_for = (&pending[head.method.clone()], &pending[head.target.clone()]);
        let e = bad_gateway(self.ctx, self.relaying.picked, cause, asked_for);
        let answered = conn.answer_error(self.ctx, out, e, asked).await;
        if let Some(n) = read_whole {
            conn.consume(n);
        }
        answered
    }

    /// Frame the body bytes that arrived with the head (in place: trailer fields are
    /// removed) and decide whether the whole body is in hand.
    fn first_bytes<D: SocketDownstream>(&self, conn: &mut D) -> Result<FirstBytes, ProxyError> {
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
        let (buf, start) = conn.buffer();
        let (from, to) = (start + head.head_len, buf.len());
        let (sent, consumed) = body.frame(buf, from, to).map_err(|e| match e {
            PumpError::Chunk(e) => ProxyError::BadChunk(e),
            _ => ProxyError::BodyTooLarge,
        })?;
        Ok(FirstBytes {
            rest: (!body.is_done()).then_some(body),
            consumed,
            sent,
        })
    }

    /// The rest of the request body streams to the executor while its answer is read
    /// (`upload`): from the client's socket, and an answer that begins first goes out
    /// through a second handle on it (`Twin`). Such an exchange closes both connections:
    /// the executor's is never pooled, and the client's closes after the answer with a
    /// lingering close when its body was not read whole. `silent`: the 502 cause when the
    /// executor closes without a byte of an answer.
    async fn upload<D: SocketDownstream>(
        &self,
        conn: &mut D,
        ex: &mut ExecutorConn<'_>,
        (rest, silent): (&mut Body, Cause),
        (hb, eb, big): Bufs<'_, '_>,
        out: &mut Vec<u8>,
        response_headers: &mut Vec<HeaderRef>,
    ) -> (Served, Reuse) {
        let ctx = self.ctx;
        let (ex_r, mut ex_w) = ex.split();
        let rb = std::mem::take(if big { eb.get() } else { hb.get() });
        let read =
            exchange::read_head_owned(ex_r, rb, std::mem::take(response_headers), conn.head_only());
        let mut head = std::pin::pin!(read);
        let mut ub = ctx.bodies.lend();
        let mut upload = Upload::Sending;
        let stall = Some(ctx.config.body_timeout);
        let pipes = ctx.config.splice.then_some(&ctx.pipes);
        let mut twin = Twin {
            fd: conn.socket().0.as_raw_fd(),
            client: None,
            bytes_out: 0,
            asked: self.head,
        };
        let step = {
            let sink = PlainSink::Executor(&mut ex_w);
            let up = std::pin::pin!(rest.pump(conn.socket().0, sink, &mut ub, stall, pipes));
            let bufs = ((&mut *hb, &mut *eb, big), &mut *out, &mut *response_headers);
            let first = upload::first(
                &self.relaying,
                (up, &mut upload),
                head.as_mut(),
                &mut twin,
                bufs,
            );
            match first.await {
                Some(step) => step,
                // Not reached: `Twin::gone` never completes (the pump sees a client that
                // left); were it to, the client is gone and nothing more is sent.
                None => return (Served::closed(0), BROKEN),
            }
        };
        // The second handle on the client's socket, if one was made, closes now.
        let Twin { bytes_out, .. } = twin;
        let sent = upload.is_sent();
        // The client's connection stays in step only when its body was read whole before
        // the answer began: pipelined bytes of the next request are kept only then.
        let in_step = sent && matches!(step, Step::BodyEnded);
        self.count_upload(conn, (rest, bytes_out), &upload, in_step, ub);
        let asked = self.head;
        let down = (&mut *conn, move |conn| SocketReply::of(conn, asked));
        let bufs = ((&mut *hb, &mut *eb, big), &mut *out, &mut *response_headers);
        let answered = upload::answer(
            &self.relaying,
            down,
            step,
            head.as_mut(),
            bufs,
            (sent, silent),
        );
        let (relayed, ex_r) = match answered.await {
            // The client's side of the body failed: its error, if no answer went out yet.
            Answered::Client(e) => return (self.body_failed(conn, out, e).await, BROKEN),
            Answered::Gone => return (Served::closed(0), BROKEN),
            Answered::Relayed(relayed, ex_r) => (relayed.map(served), ex_r),
        };
        ex.join(ex_r, ex_w);
        self.upload_answered(conn, out, relayed, sent, in_step)
            .await
    }

    /// The client's side of the body failed: its error, if no answer went out yet.
    async fn body_failed<D: SocketDownstream>(
        &self,
        conn: &mut D,
        out: &mut Vec<u8>,
        e: PumpError,
    ) -> Served {
        match request::body_failure(self.relaying.phase.get(), e) {
            Ok(e) => conn.answer_error(self.ctx, out, e, Asked::UNREAD).await,
            Err(status) => Served::closed(status),
        }
    }

    /// After an upload's answer: a closing answer to a body not read whole lingers, so the
    /// client still sending reads the answer (RFC 9112 §9.6); a 502 when nothing of the
    /// answer went out (the client's connection is kept only `in_step`).
    async fn upload_answered<D: SocketDownstream>(
        &self,
        conn: &mut D,
        out: &mut Vec<u8>,
        relayed: Result<(Served, Reuse), Cause>,
        sent: bool,
        in_step: bool,
    ) -> (Served, Reuse) {
        match relayed {
            Ok((served, reuse)) => {
                if !sent && served.after == After::Close {
                    conn.linger_close().await;
                }
                (served, reuse)
            }
            Err(cause) => {
                let served = self.fail(conn, out, cause, in_step.then_some(0)).await;
                (served, Reuse::Discard(Discard::Unfinished))
            }
        }
    }

    /// Count what the upload moved (`bytes_out`: of an answer relayed alongside), and keep
    /// the bytes read past the body when they belong to the client's next request
    /// (`in_step`), before `ub` goes back to the pool (the answer may take a body buffer
    /// of its own).
    fn count_upload<D: SocketDownstream>(
        &self,
        conn: &mut D,
        (rest, bytes_out): (&Body, u64),
        upload: &Upload<std::ops::Range<usize>>,
        in_step: bool,
        mut ub: Loan<'_, Vec<u8>>,
    ) {
        self.ctx.m().spliced(rest.spliced, rest.splice_fallback);
        *conn.socket().1 += bytes_out;
        conn.count_in(match upload {
            Upload::Sent(after) => rest.read - after.len() as u64,
            _ => rest.read,
        });
        if let (true, Upload::Sent(after)) = (in_step, upload) {
            if !after.is_empty() {
                conn.buffer().0.extend_from_slice(&ub.get()[after.clone()]);
            }
        }
    }
}

/// A relayed answer as HTTP/1 counts it (a cut answer's connection is closed).
fn served(ended: Ended) -> (Served, Reuse) {
    let reuse = ended.reuse.unwrap_or(BROKEN);
    (Served::new(ended.after, ended.status), reuse)
}

/// An HTTP/1 client's socket as the answer's side: the head as bytes (with the fate's
/// Connection field) held for one write with the first body bytes when the read filled
/// its buffer, the body spliced or copied, the connection closed when cut.
struct SocketReply<'a> {
    client: &'a mut TcpStream,
    bytes_out: &'a mut u64,
    asked: &'a RequestHead,
}

impl<'a> SocketReply<'a> {
    fn of<D: SocketDownstream>(conn: &'a mut D, asked: &'a RequestHead) -> SocketReply<'a> {
        let (client, bytes_out) = conn.socket();
        SocketReply {
            client,
            bytes_out,
            asked,
        }
    }
}

impl Reply for SocketReply<'_> {
    const BROKEN: Option<Reuse> = Some(BROKEN);

    fn body(&self, framing: ResponseFraming) -> (Option<Body>, ResponseFraming) {
        exchange::response_body(framing, self.asked.minor_version == 0)
    }

    /// `outcome::fate`: a body delimited by close, or an early answer (the body not read
    /// whole), closes the connection.
    fn fate(&self, ctx: &WorkerCtx, framing: ResponseFraming, early_answer: bool) -> After {
        let ended = match framing {
            ResponseFraming::UntilClose => AnswerEnd::ByClose,
            _ => AnswerEnd::AtBoundary,
        };
        let asked = Asked::of(self.asked, !early_answer);
        outcome::fate(asked, ended, ctx.stopping.get())
    }

    /// The executor's head through the rewrite, and `x-opr-route` when asked.
    fn head(&mut self, out: &mut Vec<u8>, rb: &[u8], answer: Head<'_>, route: Explain<'_>) {
        out.clear();
        let rw = ResponseRewrite {
            framing: answer.framing,
            close: answer.close,
        };
        rewrite::write_response_head(out, rb, answer.response, answer.headers, &rw);
        if let Some((ctx, p)) = route {
            let (choice, failover, queued) = (p.choice.get(), p.failover.get(), p.queued.get());
            explain(ctx, choice, failover, queued, out);
        }
    }

    async fn send_head(
        &mut self,
        out: &mut Vec<u8>,
        hold: bool,
        _: bool,
        status: u16,
    ) -> Result<bool, Ended> {
        if hold {
            return Ok(true);
        }
        *self.bytes_out += out.len() as u64;
        let len = out.len();
        // Bounded by the socket's TCP_USER_TIMEOUT (socket::set_user_timeout).
        let written = pump::write_within(self.client, out, 0, len, None).await;
        out.clear();
        written.map(|()| false).map_err(|e| {
            let stalled = e.kind() == io::ErrorKind::TimedOut;
            let how = if stalled {
                Discard::ClientStalled
            } else {
                Discard::Unfinished
            };
            Ended::cut(status, Some(Reuse::Discard(how)))
        })
    }

    /// Never called: bytes that end the body went out with the head.
    async fn send_rest(
        &mut self,
        _: &WorkerCtx,
        out: &mut Vec<u8>,
        status: u16,
    ) -> Result<(), Ended> {
        self.send_head(out, false, false, status).await.map(|_| ())
    }

    fn pump<R: AsyncReadRent + SpliceSource>(
        &mut self,
        ctx: &WorkerCtx,
        body: &mut Body,
        ex: &mut R,
        eb: &mut Loan<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = Result<Range<usize>, PumpError>> {
        let pipes = ctx.config.splice.then_some(&ctx.pipes);
        let sink = PlainSink::Client(self.client, ctx.config.body_timeout);
        body.pump_after(ex, sink, eb, None, pipes, out)
    }

    fn count(&mut self, held: u64, written: u64) {
        *self.bytes_out += held + written;
    }

    /// The connection closes (`Served::closed`).
    fn abort(&mut self, _: bool) {}

    async fn finish(&mut self, ctx: &WorkerCtx, len: u64, _: bool) -> bool {
        ctx.answer_sizes.saw(len);
        true
    }
}

/// HTTP/1's reply to an answer that begins while the body is still read from the
/// client's socket: a second handle on that socket (`socket::twin`), made only then.
struct Twin<'a> {
    fd: RawFd,
    client: Option<TcpStream>,
    /// Bytes of the answer written through it.
    bytes_out: u64,
    asked: &'a RequestHead,
}

impl upload::Alongside for Twin<'_> {
    type Reply<'r>
        = SocketReply<'r>
    where
        Self: 'r;

    /// The body's pump reads the client's socket: it sees a client that left.
    fn gone(&mut self) -> impl Future<Output = ()> + '_ {
        std::future::pending()
    }

    fn reply(&mut self) -> Option<SocketReply<'_>> {
        self.client = Some(socket::twin(self.fd).ok()?);
        Some(SocketReply {
            client: self.client.as_mut()?,
            bytes_out: &mut self.bytes_out,
            asked: self.asked,
        })
    }
}

/// Add `x-opr-route: <route>` (`write_route`) to the HTTP/1 response head in `out` (it
/// ends with the empty line).
fn explain(
    ctx: &WorkerCtx,
    choice: Option<Choice>,
    failover: Option<(ExecutorId, &'static str)>,
    queued: Option<Duration>,
    out: &mut Vec<u8>,
) {
    if choice.is_none() {
        return;
    }
    out.truncate(out.len() - 2);
    out.extend_from_slice(b"x-opr-route: ");
    write_route(ctx, choice, failover, queued, out);
    out.extend_from_slice(b"\r\n\r\n");
}

/// Append the value of `x-opr-route`: `executor=<host>; tier=<n>; reason=<why>[; failover
/// from <host>: <how>][; queued <n> ms]` (`affinity`: the reason is `affinity owner` or
/// `spilled from <host>: load`). Shared by HTTP/1 requests and HTTP/2 streams.
pub(crate) fn write_route(
    ctx: &WorkerCtx,
    choice: Option<Choice>,
    failover: Option<(ExecutorId, &'static str)>,
    queued: Option<Duration>,
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
    let mut w = crate::text::VecWriter(out);
    let _ = write!(w, "executor={}; tier=", host(choice.executor));
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
    if let Some(waited) = queued {
        let _ = write!(w, "; queued {} ms", waited.as_millis());
    }
}

/// The answer to a request admission refused (`ClientGone` has none: nothing is sent).
pub(crate) fn refused_answer(refused: Refused) -> ProxyError {
    match refused {
        Refused::Overloaded(why) => ProxyError::Overloaded(why),
        Refused::NoOnlineExecutor | Refused::ClientGone => ProxyError::NoOnlineExecutor,
    }
}

/// An exchange that failed with `cause` (both front ends): counted against the executor
/// it went to for passive ejection, reported with the request's method and target, and
/// the `502` to answer.
pub(crate) fn bad_gateway(
    ctx: &WorkerCtx,
    picked: &Picked,
    cause: Cause,
    (method, target): (&[u8], &[u8]),
) -> ProxyError {
    if let Some(choice) = picked.choice.get() {
        ctx.executor(choice.executor)
            .failed(cause.is_executor_fault(), &cause);
    }
    let e = ProxyError::BadGateway(cause);
    report_http_error(ctx, &e, method, target, picked.choice.get());
    e
}

/// Queue the report of a `502` or `504` (docs/behaviour.md §8) with the request's method
/// and path and the executor it went to last. Only on that path, and only when reporting
/// is on: the allocations here never touch a request that succeeds.
pub(crate) fn report_http_error(
    ctx: &WorkerCtx,
    e: &ProxyError,
    method: &[u8],
    target: &[u8],
    choice: Option<Choice>,
) {
    if !ctx.reporter.is_enabled() {
        return;
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let executor = choice.and_then(|c| {
        let snapshot = ctx.snapshot();
        snapshot
            .executors
            .get(c.executor.index())
            .map(|e| e.hostname.clone())
    });
    ctx.reporter.report(Report::HttpError {
        status: e.status(),
        method: text(method),
        path: text(head::path_of(target)),
        executor,
        cause: e.to_string(),
        worker: ctx.id,
    });
}
