//! One HTTP/2 stream, the front end's side of the one request path: routing and the
//! proxy's own answers (`answer`), then the back end's `setup` (size, `100-continue`,
//! deadline) and `connect::connect_client` with the stream as its `Downstream` (the head
//! as HTTP/1 bytes, a reset as the client leaving). The request body's pump reads the h2
//! `RecvStream` (`body`) and goes through the back end's one `upload`; the answer goes
//! through its one `relay` into `StreamReply` (h2 fields, DATA frames as the window
//! allows, a reset when cut). A failed body and a 502 follow the back end's rules
//! (`request::body_failure`, `forward::bad_gateway`).

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use monoio::io::splice::SpliceSource;
use monoio::io::AsyncReadRent;

use crate::access_log;
use crate::admission::Refused;
use crate::answer::{self, Answer, ProxyError, Route};
use crate::balance::Addressing;
use crate::buffers::Loan;
use crate::ctx::{Assignment, WorkerCtx};
use crate::forward;
use crate::forward::connect::{connect_client, Connected, Picked};
use crate::forward::downstream::Downstream;
use crate::forward::duplex::{Step, Upload};
use crate::forward::exchange::{self};
use crate::forward::pump::{self, PumpError, Sink};
use crate::forward::relay::{Ended, Explain, Head, Relaying, Reply};
use crate::forward::request::{self, Phase, LINGER};
use crate::forward::reuse::Reuse;
use crate::forward::setup::{self, Answers, Way};
use crate::forward::upload::{self, Answered};
use crate::http::head::{
    self, HeaderRef, RequestFraming, RequestHead, ResponseFraming, ResponseHead,
};
use crate::outcome::{After, Cause, Discard};

/// What an answer is read and written with: the head buffer, the body buffer, and the
/// vector its head is written into.
type Buffers<'b, 'p> = (
    &'b mut Loan<'p, Vec<u8>>,
    &'b mut Loan<'p, Vec<u8>>,
    &'b mut Vec<u8>,
);

/// What a relayed answer needs of its stream's request.
struct Relay<'a> {
    request: &'a Request,
    /// Explain the choice in `x-opr-route`.
    debug: bool,
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

/// A stream as the back end's downstream while its request is connected: the head as
/// HTTP/1 bytes, and a reset as the client leaving.
struct Client<'s> {
    stream: &'s Stream,
    request: &'s Request,
    respond: RefCell<&'s mut SendResponse<Bytes>>,
}

impl Downstream for Client<'_> {
    /// Watching a stream for a reset costs no system call: from the start.
    const WATCH_AFTER: Duration = Duration::ZERO;

    fn pending(&self) -> &[u8] {
        &self.request.buf
    }

    fn head_only(&self) -> bool {
        self.stream.head_only
    }

    fn peer(&self) -> IpAddr {
        self.stream.peer.ip()
    }

    /// The proxy answers `100-continue` itself; no `Expect` field reaches the executor.
    fn strips_expect(&self, _: &RequestHead) -> bool {
        true
    }

    async fn gone(&self) {
        let _ = std::future::poll_fn(|cx| self.respond.borrow_mut().poll_reset(cx)).await;
    }
}

impl Answers for Client<'_> {
    type Out = u16;

    fn pending(&self) -> &[u8] {
        &self.request.buf
    }

    /// An interim `100` on the stream; a stream already reset ends at the next step.
    async fn send_continue(&mut self, _: &WorkerCtx) -> std::io::Result<()> {
        let mut interim = http::Response::new(());
        *interim.status_mut() = http::StatusCode::CONTINUE;
        let _ = self.respond.get_mut().send_informational(interim);
        Ok(())
    }

    async fn refuse(&mut self, _: &WorkerCtx, e: ProxyError) -> u16 {
        self.stream.error(self.respond.get_mut(), e)
    }

    /// Nothing more to send: h2 resets the stream when its handles drop unfinished.
    fn cut(status: u16) -> u16 {
        status
    }
}

/// A stream as the answer's side: the head as h2 fields (`head::executor_answer`: a
/// length kept, chunked and close-delimited bodies sent as DATA of their payload), the
/// body through the pump into the `SendStream` as its window allows, `END_STREAM` at the
/// end, and a reset when the answer is cut (`CANCEL` for a client that stopped reading).
struct StreamReply<'r> {
    respond: &'r mut SendResponse<Bytes>,
    /// The head, until it is sent.
    head: http::Response<()>,
    /// The body's stream, once the head went out.
    send: Option<RefCell<SendStream<Bytes>>>,
    bytes_out: &'r Cell<u64>,
}

impl<'r> StreamReply<'r> {
    fn new(respond: &'r mut SendResponse<Bytes>, bytes_out: &'r Cell<u64>) -> StreamReply<'r> {
        StreamReply {
            respond,
            head: http::Response::default(),
            send: None,
            bytes_out,
        }
    }
}

impl<'s> Client<'s> {
    /// The stream as the answer's side, once its reset is no longer watched for here.
    fn reply(&mut self) -> StreamReply<'_> {
        StreamReply::new(self.respond.get_mut(), &self.stream.bytes_out)
    }
}

impl Reply for StreamReply<'_> {
    /// A cut answer does not count as answered; the executor connection is closed.
    const BROKEN: Option<Reuse> = None;

    fn body(&self, framing: ResponseFraming) -> (Option<pump::Body>, ResponseFraming) {
        let (body, _) = exchange::response_body(framing, true);
        let framing = match framing {
            ResponseFraming::Length(n) => ResponseFraming::Length(n),
            ResponseFraming::NoBody => ResponseFraming::NoBody,
            _ => ResponseFraming::UntilClose,
        };
        (body, framing)
    }

    /// A stream ends with its answer; the connection goes on.
    fn fate(&self, _: &WorkerCtx, _: ResponseFraming, _: bool) -> After {
        After::KeepAlive
    }

    fn head(&mut self, out: &mut Vec<u8>, rb: &[u8], answer: Head<'_>, route: Explain<'_>) {
        out.clear();
        if let Some((ctx, p)) = route {
            forward::write_route(ctx, p.choice.get(), p.failover.get(), p.queued.get(), out);
        }
        let (response, headers) = (answer.response, answer.headers);
        self.head = super::head::executor_answer(rb, response, headers, answer.framing, out);
        out.clear();
    }

    async fn send_head(
        &mut self,
        _: &mut Vec<u8>,
        _: bool,
        no_body: bool,
        _: u16,
    ) -> Result<bool, Ended> {
        let head = std::mem::take(&mut self.head);
        let Ok(send) = self.respond.send_response(head, no_body) else {
            return Err(Ended::cut(0, None));
        };
        self.send = Some(RefCell::new(send));
        Ok(false)
    }

    async fn send_rest(
        &mut self,
        ctx: &WorkerCtx,
        out: &mut Vec<u8>,
        status: u16,
    ) -> Result<(), Ended> {
        let Some(send) = &self.send else {
            return Err(Ended::cut(status, None));
        };
        match super::io::send_data(send, out, ctx.config.body_timeout).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.abort(true);
                return Err(Ended::cut(
                    status,
                    Some(Reuse::Discard(Discard::ClientStalled)),
                ));
            }
            Err(_) => return Err(Ended::cut(status, None)),
        }
        self.bytes_out.set(out.len() as u64);
        out.clear();
        Ok(())
    }

    async fn pump<R: AsyncReadRent + SpliceSource>(
        &mut self,
        ctx: &WorkerCtx,
        body: &mut pump::Body,
        ex: &mut R,
        eb: &mut Loan<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<Range<usize>, PumpError> {
        let Some(send) = self.send.as_ref() else {
            return Err(PumpError::Sink);
        };
        let sink = Sink::Front(send, ctx.config.body_timeout);
        let pump = body.pump_after(ex, sink, eb, None, None, out);
        // A client that resets the stream mid-body abandons it (the sink failed): the
        // executor connection is closed with `ex`, even while the executor is silent.
        // The reset that follows is not sent twice (h2 never resets a reset stream).
        monoio::select! {
            r = pump => r,
            _ = super::io::reset(send) => Err(PumpError::Sink),
        }
    }

    fn count(&mut self, _: u64, written: u64) {
        self.bytes_out.set(written);
    }

    fn abort(&mut self, stalled: bool) {
        if let Some(send) = &self.send {
            let reason = if stalled {
                Reason::CANCEL
            } else {
                Reason::INTERNAL_ERROR
            };
            send.borrow_mut().send_reset(reason);
        }
    }

    async fn finish(&mut self, _: &WorkerCtx, _: u64, no_body: bool) -> bool {
        match &self.send {
            Some(send) if !no_body => send.borrow_mut().send_data(Bytes::new(), true).is_ok(),
            _ => true,
        }
    }
}

/// The stream's reply to an answer that begins while the body still comes from its
/// DATA frames; the stream's reset is watched meanwhile.
struct StreamAlongside<'r> {
    respond: &'r mut SendResponse<Bytes>,
    bytes_out: &'r Cell<u64>,
}

impl upload::Alongside for StreamAlongside<'_> {
    type Reply<'a>
        = StreamReply<'a>
    where
        Self: 'a;

    async fn gone(&mut self) {
        let _ = std::future::poll_fn(|cx| self.respond.poll_reset(cx)).await;
    }

    fn reply(&mut self) -> Option<StreamReply<'_>> {
        Some(StreamReply::new(self.respond, self.bytes_out))
    }
}

struct Stream {
    ctx: Rc<WorkerCtx>,
    peer: SocketAddr,
    head_only: bool,
    phase: Cell<Phase>,
    picked: Picked,
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
        picked: Picked::default(),
        bytes_in: Cell::new(0),
        bytes_out: Cell::new(0),
        request_line: RefCell::new(Vec::new()),
        stopped: Cell::new(false),
        budget,
    };
    let status = s.handle(parts, &mut body, &mut respond).await;
    {
        let line = s.request_line.borrow();
        let record = request::Record {
            client: peer.ip(),
            request_line: &line,
            status,
            choice: s.picked.choice.get(),
            bytes_in: s.bytes_in.get(),
            bytes_out: s.bytes_out.get(),
            took: started.elapsed(),
        };
        request::record(&ctx, &record);
    }
    if !s.stopped.get() {
        linger(&mut body).await;
    }
}

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
        let secret = ctx.config.secret.as_bytes();
        match answer::route(request.method(), path, authorization, secret) {
            Route::Health => return self.local(respond, &Answer::health()),
            Route::Unauthorized => return self.error(respond, ProxyError::Unauthorized),
            Route::Containers => {
                let body = answer::containers_body(&ctx.snapshot(), ctx);
                return self.local(respond, &Answer::json(body.as_bytes()));
            }
            Route::Metrics => {
                let body = answer::metrics_body(&ctx.snapshot(), ctx);
                return self.local(respond, &Answer::metrics(body.as_bytes()));
            }
            Route::Forward => {}
        }

        let addressing = Addressing::from_header(request.find("x-opr-addressing-method"));
        let mut client = Client {
            stream: self,
            request: &request,
            respond: RefCell::new(respond),
        };
        let way = match setup::prepare(ctx, &mut client, &request.head, addressing).await {
            Ok(way) => way,
            Err(status) => return status,
        };
        let respond = &mut **client.respond.get_mut();
        let limit = match way {
            Way::Broadcast(limit) => return self.broadcast(&request, limit, body, respond).await,
            Way::Anycast(limit) => limit,
        };
        let deadline = setup::deadline(ctx);
        let run = self.forward(&request, body, respond, addressing, limit);
        match monoio::time::timeout_at(deadline.into(), run).await {
            Ok(status) => status,
            // The SendStream was dropped with the future: h2 resets the stream.
            Err(_) => {
                let around = (&self.phase, &self.picked);
                setup::deadline_passed(ctx, &mut client, &request.head, around).await
            }
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
        let mut out = Vec::new();
        let mut hb = ctx.heads.lend();
        let mut eb = ctx.bodies.lend();
        let mut response_headers = Vec::new();
        // Counted in flight to the executor it was last assigned to (least-request, p2c)
        // until the stream's future ends or is dropped.
        let mut assigned = None;
        let bufs = (hb.get(), &mut response_headers);
        let connected = self
            .connect(request, respond, addressing, &mut assigned, &mut out, bufs)
            .await;
        let (mut ex, response, silent) = match connected {
            Connected::Sent {
                ex,
                response,
                silent,
            } => (ex, response, silent),
            Connected::Refused(Refused::ClientGone) | Connected::Gone => return 0,
            Connected::Refused(refused) => {
                return self.error(respond, forward::refused_answer(refused))
            }
            Connected::Failed(cause) => return self.bad_gateway(request, respond, cause),
        };

        let debug = request::debug(&ctx.config, request.find("x-opr-debug"));
        let answer = Relay { request, debug };
        let (status, reuse) = match response {
            Some(response) => {
                let answered = (&response, &response_headers[..]);
                let bufs = (&mut hb, &mut eb, &mut out);
                self.relay(&answer, respond, ex.stream(), bufs, answered, false)
                    .await
            }
            None => {
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
            if let Some(choice) = self.picked.choice.get() {
                ctx.executor(choice.executor).answered();
            }
        }
        status
    }

    /// Connect the stream's request (`forward::connect`): its head is the rewrite of the
    /// HTTP/1 form, and a reset abandons it at any point (docs/behaviour.md §5).
    async fn connect<'c>(
        &'c self,
        request: &Request,
        respond: &mut SendResponse<Bytes>,
        addressing: Addressing,
        assigned: &mut Option<Assignment<'c>>,
        out: &mut Vec<u8>,
        bufs: (&mut Vec<u8>, &mut Vec<HeaderRef>),
    ) -> Connected<'c> {
        let client = Client {
            stream: self,
            request,
            respond: RefCell::new(respond),
        };
        let asked = (&request.head, &request.headers[..], addressing);
        // Nothing of the body is in hand: it streams after the head, if there is one.
        let sent = (0, !request.head.has_body());
        let picked = &self.picked;
        connect_client(&self.ctx, &client, asked, sent, picked, assigned, out, bufs).await
    }

    /// The request body streams to the executor while its answer is read (`upload`, as
    /// over HTTP/1): from the stream's DATA frames, and an answer that begins first goes
    /// out on the stream while the body goes on (the executor connection is then never
    /// pooled). A body stopped that way ends the stream with `RST_STREAM(NO_ERROR)` after
    /// the complete answer (RFC 9113 §8.1). `silent`: the 502 cause when the executor
    /// closes without a byte of an answer.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        answer: &Relay<'_>,
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
        let (ex_r, mut ex_w) = ex.split();
        let rb = std::mem::take(hb.get());
        let headers = std::mem::take(&mut response_headers);
        let read = exchange::read_head_owned(ex_r, rb, headers, self.head_only);
        let mut head = std::pin::pin!(read);
        let mut upload = Upload::Sending;
        let chunked = request.head.framing == RequestFraming::Chunked;
        let stall = ctx.config.body_timeout;
        // Chunk framing of the body, apart from `out` (the answer's head meanwhile).
        let mut framed = Vec::new();
        let relaying = self.relaying(answer.debug);
        let mut alongside = StreamAlongside {
            respond,
            bytes_out: &self.bytes_out,
        };
        let step = {
            let how = (chunked, limit, stall);
            let up = super::body::send(body, &mut ex_w, how, &self.bytes_in, &mut framed);
            let up = (std::pin::pin!(up), &mut upload);
            let bufs = (
                (&mut *hb, &mut *eb, false),
                &mut *out,
                &mut response_headers,
            );
            match upload::first(&relaying, up, head.as_mut(), &mut alongside, bufs).await {
                Some(step) => step,
                // A client that resets the stream abandons the request: the executor
                // connection is closed with `ex`.
                None => return (0, None),
            }
        };
        let sent = upload.is_sent();
        // An answer of the executor's while the body was not sent whole: no lingering, the
        // stream ends with RST_STREAM(NO_ERROR) once its handles drop.
        let stopped = !sent && matches!(step, Step::Relayed(..) | Step::BodyEnded);
        self.stopped.set(stopped);
        let mut client = Client {
            stream: self,
            request,
            respond: RefCell::new(alongside.respond),
        };
        let down = (&mut client, Client::reply);
        let bufs = (
            (&mut *hb, &mut *eb, false),
            &mut *out,
            &mut response_headers,
        );
        let answered = upload::answer(&relaying, down, step, head.as_mut(), bufs, (sent, silent));
        let (relayed, ex_r) = match answered.await {
            Answered::Client(e) => return (self.body_failed(client.respond.get_mut(), e), None),
            Answered::Gone => return (0, None),
            Answered::Relayed(relayed, ex_r) => (relayed, ex_r),
        };
        ex.join(ex_r, ex_w);
        match relayed {
            Ok(ended) => (ended.status, ended.reuse),
            Err(cause) => (
                self.bad_gateway(request, client.respond.get_mut(), cause),
                None,
            ),
        }
    }

    /// The request body failed on the client's side: its error, if no answer went out yet
    /// (the executor connection is dropped, closed, with the exchange).
    fn body_failed(&self, respond: &mut SendResponse<Bytes>, e: PumpError) -> u16 {
        match request::body_failure(self.phase.get(), e) {
            Ok(e) => self.error(respond, e),
            Err(status) => status,
        }
    }

    /// Relay the answer on the stream (`relay::Relaying::relay`, through `StreamReply`);
    /// returns the status and, when the executor answered, whether its connection is
    /// reusable. A body that failed before the head went out is answered 502.
    fn relaying(&self, debug: bool) -> Relaying<'_> {
        Relaying {
            ctx: &self.ctx,
            phase: &self.phase,
            picked: &self.picked,
            debug,
        }
    }

    async fn relay<R: AsyncReadRent + SpliceSource>(
        &self,
        answer: &Relay<'_>,
        respond: &mut SendResponse<Bytes>,
        ex: &mut R,
        (hb, eb, out): Buffers<'_, '_>,
        answered: (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> (u16, Option<Reuse>) {
        let relaying = self.relaying(answer.debug);
        let mut reply = StreamReply::new(respond, &self.bytes_out);
        let bufs = (hb, eb, false);
        let relayed = relaying.relay(&mut reply, ex, bufs, out, answered, early_answer);
        match relayed.await {
            Ok(ended) => (ended.status, ended.reuse),
            Err(cause) => (self.bad_gateway(answer.request, reply.respond, cause), None),
        }
    }

    /// `x-opr-addressing-method: broadcast`: the whole (bounded) body, then every online
    /// executor at once through HTTP/1's fan-out; `204` once all have answered.
    async fn broadcast(
        &self,
        request: &Request,
        limit: u64,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> u16 {
        let ctx = &self.ctx;
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
            let how = (limit, stall);
            super::body::collect(body, &mut collected, how, &self.bytes_in).await?;
            held.shrink(collected.len() as u64);
            Ok::<_, PumpError>(held)
        };
        let _held = match monoio::time::timeout_at(deadline.into(), read).await {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => match request::client_body_error(e) {
                Some(e) => return self.error(respond, e),
                None => return 0,
            },
            Err(_) => return self.error(respond, ProxyError::GatewayTimeout),
        };
        let (buf, head, headers) = (&request.buf, &request.head, &request.headers);
        let peer = self.peer.ip();
        let collected = Bytes::from(collected);
        if !forward::fan_out(ctx, buf, head, headers, &collected, peer, deadline).await {
            return self.error(respond, ProxyError::NoOnlineExecutor);
        }
        self.local(respond, &Answer::no_content())
    }

    /// Answer an error as docs/behaviour.md §7 JSON on this stream.
    fn error(&self, respond: &mut SendResponse<Bytes>, e: ProxyError) -> u16 {
        self.local(respond, &Answer::error(e, &self.ctx.config))
    }

    /// Answer `502` for an exchange that failed (`forward::bad_gateway`).
    fn bad_gateway(
        &self,
        request: &Request,
        respond: &mut SendResponse<Bytes>,
        cause: Cause,
    ) -> u16 {
        let asked_for = (request.method(), &request.buf[request.head.target.clone()]);
        let e = forward::bad_gateway(&self.ctx, &self.picked, cause, asked_for);
        self.error(respond, e)
    }

    /// Send an answer the proxy made itself. These are small, so they go without
    /// waiting for window.
    fn local(&self, respond: &mut SendResponse<Bytes>, answer: &Answer<'_>) -> u16 {
        let len = answer.body_len();
        let empty = self.head_only || len == 0;
        if let Ok(mut send) = respond.send_response(super::head::own_answer(answer), empty) {
            if !empty {
                let mut body = Vec::with_capacity(len);
                answer.write_body(&mut body);
                self.bytes_out.set(len as u64);
                let _ = send.send_data(Bytes::from(body), true);
            }
        }
        answer.status
    }
}
