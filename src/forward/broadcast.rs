//! `x-opr-addressing-method: broadcast`: send the request to every online executor at
//! once, answer `204` when all have answered; failures are logged, not returned. Built
//! from the same parts as anycast: the pump, `exchange::open` (pool cleanliness, offline
//! flagging), the replay and reuse rules.

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use monoio::io::AsyncWriteRentExt;

use super::downstream::SocketDownstream;
use super::exchange::{self, HeadFailure, OpenError};
use super::pump::{self, Body, Delimit, Emit, PlainSink, PumpError};
use super::reuse::{self, Attempt, ResponseEnd, Silence};
use crate::answer::{Answer, ProxyError};
use crate::ctx::WorkerCtx;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{HeaderRef, RequestFraming, RequestHead};
use crate::http::rewrite;
use crate::outcome::{self, After, AnswerEnd, Asked, Cause, Served};
use crate::snapshot::ExecutorId;
use crate::warn;

/// The body is copied to every executor, so it is held in memory: bounded by this (or
/// by `OPR_PROXY_MAX_BODY_SIZE` when smaller). Appwrite broadcasts body-less deletions.
pub(crate) const BROADCAST_MAX_BODY: u64 = 1024 * 1024;

/// The body limit of a broadcast: `BROADCAST_MAX_BODY`, or `OPR_PROXY_MAX_BODY_SIZE`
/// when smaller (HTTP/1 and HTTP/2 alike).
pub(crate) fn body_limit(config: &crate::config::Config) -> u64 {
    config
        .max_body_size
        .map_or(BROADCAST_MAX_BODY, |m| m.min(BROADCAST_MAX_BODY))
}

/// Broadcast bodies held at once by one worker (HTTP/1 and HTTP/2 together): 64 bodies of
/// the largest size. Broadcasts are operator traffic (Appwrite's are body-less deletions),
/// so only abuse reaches it.
pub(crate) const WORKER_BUDGET: u64 = 64 * BROADCAST_MAX_BODY;
/// Broadcast bodies held at once by one HTTP/2 connection: 4 bodies of the largest size
/// (a load balancer multiplexing a few broadcasting users).
pub(crate) const CONNECTION_BUDGET: u64 = 4 * BROADCAST_MAX_BODY;
// A body within the limit fits once the bodies ahead of it are done.
const _: () =
    assert!(CONNECTION_BUDGET >= BROADCAST_MAX_BODY && WORKER_BUDGET >= CONNECTION_BUDGET);

/// Bytes held against a cap, and the HTTP/1 broadcasts waiting for room.
pub(crate) struct Budget {
    cap: u64,
    held: Cell<u64>,
    waiting: RefCell<Vec<Waker>>,
}

impl Budget {
    pub(crate) fn new(cap: u64) -> Budget {
        Budget {
            cap,
            held: Cell::new(0),
            waiting: RefCell::new(Vec::new()),
        }
    }

    fn fits(&self, n: u64) -> bool {
        self.held.get() + n <= self.cap
    }

    fn give_back(&self, n: u64) {
        self.held.set(self.held.get() - n);
        for w in self.waiting.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

thread_local! {
    /// This worker's budget (a worker is a thread).
    static WORKER: Rc<Budget> = Rc::new(Budget::new(WORKER_BUDGET));
}

/// Room for `n` bytes of one broadcast body, given back when dropped.
pub(crate) struct Held {
    n: u64,
    worker: Rc<Budget>,
    connection: Option<Rc<Budget>>,
}

impl Held {
    /// Keep only `n` bytes (the body turned out smaller than reserved).
    pub(crate) fn shrink(&mut self, n: u64) {
        let extra = self.n.saturating_sub(n);
        self.n -= extra;
        self.worker.give_back(extra);
        if let Some(c) = &self.connection {
            c.give_back(extra);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shrink(0);
    }
}

/// Hold `n` bytes in this worker's budget and in `connection`'s (an HTTP/2 connection's)
/// if both have room now. `n` is the declared length, or the body limit when the length
/// is not known in advance. An HTTP/2 stream does not wait for room: its unread DATA
/// would keep its share of the connection's window, and enough waiting streams would
/// starve the ones that hold room (it is refused with `REFUSED_STREAM` instead).
pub(crate) fn try_hold(n: u64, connection: Option<&Rc<Budget>>) -> Option<Held> {
    let worker = WORKER.with(Rc::clone);
    if !worker.fits(n) || connection.is_some_and(|c| !c.fits(n)) {
        return None;
    }
    for b in std::iter::once(&worker).chain(connection) {
        b.held.set(b.held.get() + n);
    }
    Some(Held {
        n,
        worker,
        connection: connection.cloned(),
    })
}

/// Hold `n` bytes in this worker's budget, waiting for room (an HTTP/1 client sends
/// nothing more meanwhile: it waits in its socket buffers).
async fn hold(n: u64) -> Held {
    std::future::poll_fn(|cx| match try_hold(n, None) {
        Some(held) => Poll::Ready(held),
        None => {
            WORKER.with(|w| w.waiting.borrow_mut().push(cx.waker().clone()));
            Poll::Pending
        }
    })
    .await
}

pub(super) async fn broadcast<D: SocketDownstream>(
    ctx: &Rc<WorkerCtx>,
    conn: &mut D,
    head: &RequestHead,
    headers: &[HeaderRef],
    out: &mut Vec<u8>,
    limit: Option<u64>,
) -> Served {
    let deadline = Instant::now() + ctx.config.max_timeout;
    let need = match head.framing {
        RequestFraming::Empty => 0,
        RequestFraming::Length(n) => n,
        RequestFraming::Chunked => limit.unwrap_or(BROADCAST_MAX_BODY),
    };
    let read = async {
        let mut held = hold(need).await;
        let body = read_body(ctx, conn, head, limit).await?;
        held.shrink(body.len() as u64);
        Ok((held, body))
    };
    let (_held, body) = match monoio::time::timeout_at(deadline.into(), read).await {
        Ok(Ok(read)) => read,
        Ok(Err(Some(e))) => return conn.answer_error(ctx, out, e, Asked::UNREAD).await,
        Ok(Err(None)) | Err(_) => return Served::closed(0),
    };

    let peer = conn.peer();
    let body = Bytes::from(body);
    let delivered = fan_out(ctx, conn.pending(), head, headers, &body, peer, deadline).await;
    conn.consume(head.head_len);
    if !delivered {
        let e = ProxyError::NoOnlineExecutor;
        return conn.answer_error(ctx, out, e, Asked::of(head, true)).await;
    }

    out.clear();
    let after = outcome::fate(
        Asked::of(head, true),
        AnswerEnd::AtBoundary,
        ctx.stopping.get(),
    );
    let close = after == After::Close;
    Answer::no_content().write_http1(out, close, false);
    let ok = conn
        .write_answer(out, ctx.config.body_timeout)
        .await
        .is_ok();
    Served::new(After::close_if(close || !ok), 204)
}

/// Send the request (its head in `buf`, its whole `body`) to every online executor at
/// once and wait for every answer, each bounded by `deadline`; failures are logged and
/// counted for ejection, not returned. `false`: no executor was online. Shared by
/// HTTP/1 (above) and HTTP/2 streams (src/http2/stream.rs).
pub(crate) async fn fan_out(
    ctx: &Rc<WorkerCtx>,
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderRef],
    body: &Bytes,
    peer: IpAddr,
    deadline: Instant,
) -> bool {
    let snapshot = ctx.snapshot();
    let targets = ctx
        .picker
        .all_online(&snapshot, |i| ctx.board.is_flagged_offline(i));
    if targets.is_empty() {
        return false;
    }

    // Every executor gets the body with a Content-Length, whatever the client used.
    let mut fixed = head.clone();
    fixed.framing = if body.is_empty() && head.framing == RequestFraming::Empty {
        RequestFraming::Empty
    } else {
        RequestFraming::Length(body.len() as u64)
    };
    let method = &buf[head.method.clone()];
    let idempotent = reuse::is_idempotent(method);
    let is_head = method == b"HEAD";
    let mut tasks = Vec::with_capacity(targets.len());
    for &i in &targets {
        let status = snapshot.executor(i);
        let Some(&addr) = status.addrs.first() else {
            ctx.executor(i).flag_offline(&"its address did not resolve");
            continue;
        };
        let mut request = Vec::with_capacity(1024);
        let rw = super::request::rewrite(ctx, peer, status, head.expect_continue);
        rewrite::write_request_head(&mut request, buf, &fixed, headers, &rw);
        // Every copy shares the one body (its bytes are counted once, in the budget).
        let body = body.clone();
        let ctx = ctx.clone();
        let hostname = status.hostname.clone();
        tasks.push(monoio::spawn(async move {
            let one = Delivery {
                ctx: &ctx,
                executor: i,
                addr,
                is_head,
                idempotent,
            };
            // Counted in flight like an anycast request, so least-request sees the load.
            let _assigned = ctx.executor(i).assign();
            match monoio::time::timeout_at(deadline.into(), one.send(request, body)).await {
                Ok(Ok(_status)) => ctx.executor(i).answered(),
                Ok(Err(Failed::Unreachable)) => {} // flagged and logged by `open`
                Ok(Err(why)) => {
                    warn!("Broadcast to executor \"{hostname}\" failed: {why}");
                    ctx.executor(i).failed(why.is_executor_fault(), &why);
                }
                // A slow executor is not a broken one: timeouts are not counted.
                Err(_) => warn!("Broadcast to executor \"{hostname}\" failed: timed out"),
            }
        }));
    }
    for task in tasks {
        task.await;
    }
    true
}

/// Read the whole (bounded) request body, decoded. `Err(None)`: the client went away.
/// The head stays pending; the body's bytes are taken out of the client's buffer.
async fn read_body<D: SocketDownstream>(
    ctx: &WorkerCtx,
    conn: &mut D,
    head: &RequestHead,
    limit: Option<u64>,
) -> Result<Vec<u8>, Option<ProxyError>> {
    let delimit = match head.framing {
        RequestFraming::Empty => return Ok(Vec::new()),
        RequestFraming::Length(n) => Delimit::Length(n),
        RequestFraming::Chunked => Delimit::Chunked(ChunkedDecoder::new()),
    };
    let mut body = Body::new(delimit, Emit::Payload, limit);
    let mut collected = Vec::new();
    let (buf, start) = conn.buffer();
    let (from, to) = (start + head.head_len, buf.len());
    let (kept, consumed) = body
        .frame(buf, from, to)
        .map_err(super::request::client_body_error)?;
    collected.extend_from_slice(&buf[from..from + kept]);
    // Keep the head (it is rewritten for every executor) and what follows the body.
    buf.drain(from..from + consumed);
    conn.count_in(consumed as u64);
    if !body.is_done() {
        let mut buf = ctx.bodies.lend();
        let stall = Some(ctx.config.body_timeout);
        let sink = PlainSink::Collect(&mut collected);
        let after = body
            .pump(conn.socket().0, sink, &mut buf, stall, None)
            .await
            .map_err(super::request::client_body_error)?;
        conn.count_in(body.read - after.len() as u64);
        if !after.is_empty() {
            conn.buffer().0.extend_from_slice(&buf.get()[after]);
        }
    }
    Ok(collected)
}

/// Why one copy did not get an answer.
enum Failed {
    /// Refused or unreachable: flagged offline (and logged) by `exchange::open`.
    Unreachable,
    Exchange(Cause),
    Body(PumpError),
}

impl Failed {
    /// Counted for passive ejection (as `Cause` says, for an exchange).
    fn is_executor_fault(&self) -> bool {
        match self {
            Failed::Unreachable => false,
            Failed::Exchange(cause) => cause.is_executor_fault(),
            Failed::Body(_) => true,
        }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Unreachable => f.write_str("executor unreachable"),
            Failed::Exchange(cause) => write!(f, "{cause}"),
            Failed::Body(e) => write!(f, "response body: {e:?}"),
        }
    }
}

/// One copy of the request to one executor.
struct Delivery<'a> {
    ctx: &'a WorkerCtx,
    executor: ExecutorId,
    addr: SocketAddr,
    is_head: bool,
    idempotent: bool,
}

impl Delivery<'_> {
    /// Deliver the copy and read (and drop) the executor's whole answer; a stale pooled
    /// connection is replaced once when the request may be replayed.
    async fn send(&self, mut request: Vec<u8>, body: Bytes) -> Result<u16, Failed> {
        let ctx = self.ctx;
        let mut replayed = false;
        loop {
            let mut ex = match exchange::open(ctx, self.executor, self.addr, !replayed).await {
                Ok(ex) => ex,
                Err(OpenError::Unreachable(_)) => return Err(Failed::Unreachable),
                Err(OpenError::Failed(cause)) => return Err(Failed::Exchange(cause)),
            };
            let reused = ex.reused;
            let silence = |replayed| {
                reuse::after_silence(Attempt {
                    idempotent: self.idempotent,
                    reused,
                    replayed,
                    in_hand: true,
                })
            };
            let mut sent = pump::write_keep(ex.stream(), &mut request).await;
            if sent.is_ok() && !body.is_empty() {
                sent = ex.stream().write_all(body.clone()).await.0.map(|_| ());
            }
            if let Err(e) = sent {
                match silence(replayed) {
                    Silence::Replay => {
                        replayed = true;
                        continue;
                    }
                    Silence::Fail(_) => return Err(Failed::Exchange(Cause::Send(e.kind()))),
                }
            }
            let mut hb = ctx.heads.lend();
            let hb = hb.get();
            let mut headers = Vec::new();
            let response =
                match exchange::read_response_head(ex.stream(), hb, self.is_head, &mut headers)
                    .await
                {
                    Ok(r) => r,
                    Err(HeadFailure::Silent) => match silence(replayed) {
                        Silence::Replay => {
                            replayed = true;
                            continue;
                        }
                        Silence::Fail(cause) => return Err(Failed::Exchange(cause)),
                    },
                    Err(HeadFailure::Failed(cause)) => return Err(Failed::Exchange(cause)),
                };
            let (mut body, _) = exchange::response_body(response.framing, false);
            let from = response.head_len;
            let mut end =
                exchange::frame_first_bytes(body.as_mut(), hb, from, None).map_err(Failed::Body)?;
            if let (ResponseEnd::Unfinished, Some(body)) = (end, body.as_mut()) {
                let mut eb = ctx.bodies.lend();
                let after = body
                    .pump(ex.stream(), PlainSink::Discard, &mut eb, None, None)
                    .await
                    .map_err(Failed::Body)?;
                end = if after.is_empty() {
                    ResponseEnd::Clean
                } else {
                    ResponseEnd::Leftover
                };
            }
            ex.release(reuse::after_exchange(&response, true, end));
            return Ok(response.status);
        }
    }
}
