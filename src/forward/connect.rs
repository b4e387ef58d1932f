//! One request's way to its answer's head, for both front ends: admission (pick, or wait
//! for a slot), the rewritten head, open (pooled or new), mark the runtime warm, send,
//! then read the head while watching the client. An unreachable executor fails over to
//! the next; a stale pooled connection replays the request (`reuse::after_silence`).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::admit;
use super::downstream::Downstream;
use super::exchange::{self, ExecutorConn, HeadFailure, OpenError};
use super::pump;
use super::request;
use super::reuse::{self, Attempt, Silence};
use crate::admission::Refused;
use crate::balance::{Addressing, Choice};
use crate::ctx::{Assignment, WorkerCtx};
use crate::http::head::{self, HeaderRef, RequestHead, ResponseHead};
use crate::http::rewrite;
use crate::outcome::Cause;
use crate::snapshot::{ExecutorId, ExecutorStatus};

/// What selection leaves for the answer (`x-opr-route`) and the record: the executor
/// chosen, the first one that could not be reached and how, and the wait for a slot.
#[derive(Default)]
pub(crate) struct Picked {
    pub(crate) choice: Cell<Option<Choice>>,
    pub(crate) failover: Cell<Option<(ExecutorId, &'static str)>>,
    pub(crate) queued: Cell<Option<Duration>>,
}

impl Picked {
    fn failed_over(&self, executor: ExecutorId, why: &'static str) {
        if self.failover.get().is_none() {
            self.failover.set(Some((executor, why)));
        }
    }
}

/// The request as connecting sees it.
pub(crate) struct Outgoing<'a> {
    pub(crate) addressing: Addressing,
    pub(crate) runtime: Option<&'a str>,
    pub(crate) idempotent: bool,
    /// The whole request (body included) is in hand: it may be sent again.
    pub(crate) in_hand: bool,
    /// A body still streams after the head: its answer's head is read alongside it
    /// (`upload`), not here.
    pub(crate) streams_body: bool,
    /// The request is `HEAD`: its answer has no body, whatever it declares.
    pub(crate) head_only: bool,
    /// How long the executor works before the client is watched too (`ZERO`: at once).
    pub(crate) watch_after: Duration,
}

/// How connecting ended.
pub(crate) enum Connected<'c> {
    /// The request went out; its answer's head, unless a body is still to stream
    /// (`silent`: the 502 cause should the executor then close without answering).
    Sent {
        ex: ExecutorConn<'c>,
        response: Option<ResponseHead>,
        silent: Cause,
    },
    Refused(Refused),
    /// A 502 with this cause (the exchange is counted failed by the caller).
    Failed(Cause),
    /// The client left while the head was awaited: the request is abandoned.
    Gone,
}

/// Connect a client's request (`conn`, whatever its protocol): its head is the rewrite
/// of `head`, followed by the `sent` body bytes in hand (the whole request when
/// `in_hand`; otherwise the rest of the body streams after); a client that leaves
/// abandons it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect_client<'c, D: Downstream>(
    ctx: &'c WorkerCtx,
    conn: &D,
    (head, headers, addressing): (&RequestHead, &[HeaderRef], Addressing),
    (sent, in_hand): (usize, bool),
    picked: &Picked,
    assigned: &mut Option<Assignment<'c>>,
    out: &mut Vec<u8>,
    bufs: (&mut Vec<u8>, &mut Vec<HeaderRef>),
) -> Connected<'c> {
    let pending = conn.pending();
    let outgoing = Outgoing {
        addressing,
        runtime: request::runtime_id(head::find_header(pending, headers, "x-opr-runtime-id")),
        idempotent: reuse::is_idempotent(&pending[head.method.clone()]),
        in_hand,
        streams_body: !in_hand,
        head_only: conn.head_only(),
        watch_after: D::WATCH_AFTER,
    };
    let write_head = |executor: &ExecutorStatus, out: &mut Vec<u8>| {
        out.clear();
        let rw = request::rewrite(ctx, conn.peer(), executor, conn.strips_expect(head));
        rewrite::write_request_head(out, pending, head, headers, &rw);
        let start = head.head_len;
        out.extend_from_slice(&pending[start..start + sent]);
    };
    let gone = || conn.gone();
    connect(
        ctx, &outgoing, picked, assigned, out, bufs, write_head, gone,
    )
    .await
}

/// Connect one request. `write_head` writes the head (and any body bytes in hand) for the
/// executor chosen into `out`; `gone` makes a future that completes when the client
/// leaves; the head is read into `rb` and `response_headers`. The request counts in
/// flight to the executor it was last assigned to while `assigned` holds it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn connect<'c, G: Future<Output = ()>>(
    ctx: &'c WorkerCtx,
    req: &Outgoing<'_>,
    picked: &Picked,
    assigned: &mut Option<Assignment<'c>>,
    out: &mut Vec<u8>,
    (rb, response_headers): (&mut Vec<u8>, &mut Vec<HeaderRef>),
    mut write_head: impl FnMut(&ExecutorStatus, &mut Vec<u8>),
    gone: impl Fn() -> G,
) -> Connected<'c> {
    let mut snapshot = ctx.snapshot();
    let mut replayed = false;
    loop {
        let unresolved = |i| picked.failed_over(i, "unresolved");
        let addressing = req.addressing;
        let admitted = admit::admit(
            ctx,
            &mut snapshot,
            addressing,
            req.runtime,
            assigned,
            unresolved,
            &gone,
        )
        .await;
        let admitted = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => return Connected::Refused(refused),
        };
        if admitted.waited.is_some() {
            picked.queued.set(admitted.waited);
        }
        let i = admitted.choice.executor;
        picked.choice.set(Some(admitted.choice));
        write_head(snapshot.executor(i), out);
        let ex = match exchange::open(ctx, i, admitted.addr, !replayed).await {
            Ok(ex) => ex,
            // Refused or unreachable: flagged offline for every worker; nothing was sent.
            Err(OpenError::Unreachable(why)) => {
                picked.failed_over(i, why);
                continue;
            }
            Err(OpenError::Failed(cause)) => return Connected::Failed(cause),
        };
        if let Some(rt) = req.runtime {
            ctx.picker.mark_warm(&snapshot, i, rt);
        }
        let attempt = Attempt {
            idempotent: req.idempotent,
            reused: ex.reused,
            replayed,
            in_hand: req.in_hand,
        };
        let bufs = (&mut *rb, &mut *response_headers);
        match send(ex, req, attempt, out, bufs, &gone).await {
            Some(connected) => return connected,
            // A pooled connection the executor closed just as it was taken: its other
            // idle ones are likely stale too.
            None => {
                replayed = true;
                ctx.pool.drop_idle(i);
            }
        }
    }
}

/// Send the request in `out` on `ex` and read its answer's head (unless a body is still to
/// stream). `None`: the executor closed a reused connection without a byte of an answer
/// and the request may go again (`reuse::after_silence`).
async fn send<'c, G: Future<Output = ()>>(
    mut ex: ExecutorConn<'c>,
    req: &Outgoing<'_>,
    attempt: Attempt,
    out: &mut Vec<u8>,
    (rb, response_headers): (&mut Vec<u8>, &mut Vec<HeaderRef>),
    gone: &impl Fn() -> G,
) -> Option<Connected<'c>> {
    if let Err(e) = pump::write_keep(ex.stream(), out).await {
        return match reuse::after_silence(attempt) {
            Silence::Replay => None,
            Silence::Fail(_) => Some(Connected::Failed(Cause::Send(e.kind()))),
        };
    }
    if req.streams_body {
        // The body streams on: the request cannot be sent again.
        let silent = match reuse::after_silence(Attempt {
            in_hand: false,
            ..attempt
        }) {
            Silence::Fail(cause) => cause,
            Silence::Replay => Cause::ClosedNotReplayed,
        };
        let response = None;
        return Some(Connected::Sent {
            ex,
            response,
            silent,
        });
    }
    rb.clear();
    let head = {
        let read = exchange::read_response_head(ex.stream(), rb, req.head_only, response_headers);
        watching(req.watch_after, std::pin::pin!(read), gone).await
    };
    Some(match head {
        None => Connected::Gone,
        Some(Ok(r)) => {
            let (response, silent) = (Some(r), Cause::ClosedNotReplayed);
            Connected::Sent {
                ex,
                response,
                silent,
            }
        }
        Some(Err(HeadFailure::Silent)) => match reuse::after_silence(attempt) {
            Silence::Replay => return None,
            Silence::Fail(cause) => Connected::Failed(cause),
        },
        Some(Err(HeadFailure::Failed(cause))) => Connected::Failed(cause),
    })
}

/// Wait for `read`; once it took `after`, also watch the client (`gone`). `None`: the
/// client left (docs/behaviour.md §5: a client that leaves abandons its request). Most
/// answers come sooner than `after`, so they cost no extra poll.
pub(crate) async fn watching<F: Future, G: Future<Output = ()>>(
    after: Duration,
    mut read: Pin<&mut F>,
    gone: impl FnOnce() -> G,
) -> Option<F::Output> {
    if !after.is_zero() {
        if let Ok(r) = monoio::time::timeout(after, read.as_mut()).await {
            return Some(r);
        }
    }
    monoio::select! {
        r = read.as_mut() => Some(r),
        _ = gone() => None,
    }
}
