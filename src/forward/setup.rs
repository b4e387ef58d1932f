//! The setup both front ends share around forwarding a request: the body limit and the
//! declared-size check, `100-continue` through the downstream, broadcast or anycast, and
//! the whole-request deadline (a 504 while nothing of the answer went out).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::time::Instant;

use crate::answer::ProxyError;
use crate::balance::Addressing;
use crate::ctx::WorkerCtx;
use crate::http::head::RequestHead;

use super::connect::Picked;
use super::request::{self, Phase};

/// How a front end answers around the relay: `100 Continue`, and an error the proxy made
/// itself to a request whose body was not read (each in its protocol).
pub(crate) trait Answers {
    /// The request head as HTTP/1 bytes, and what followed it (`Downstream::pending`).
    fn pending(&self) -> &[u8];
    /// What the front end's forwarding returns (HTTP/1: `Served`; HTTP/2: the status).
    type Out;
    /// Ask the client for its body (RFC 9110 §10.1.1). `Err`: the client is gone.
    fn send_continue(&mut self, ctx: &WorkerCtx) -> impl Future<Output = io::Result<()>>;
    /// Answer `e` (docs/behaviour.md §7); the request's body was not read.
    fn refuse(&mut self, ctx: &WorkerCtx, e: ProxyError) -> impl Future<Output = Self::Out>;
    /// The exchange ends here with `status` sent (0: nothing was): the client's
    /// connection (HTTP/1) or stream (HTTP/2) is cut.
    fn cut(status: u16) -> Self::Out;
}

/// How the request goes on, with its body limit.
pub(crate) enum Way {
    /// To every online executor; the body is collected first, under this limit.
    Broadcast(u64),
    /// To one executor, under `OPR_PROXY_MAX_BODY_SIZE`.
    Anycast(Option<u64>),
}

/// Before forwarding: the body limit of the request's way, a declared length over it
/// refused, and `100-continue` answered by the proxy itself (the executor never sees
/// `Expect`: the rewrite drops it). `Err`: how the request ended instead. The caller runs
/// an anycast under `deadline(ctx)` and hands a timeout to `deadline_passed` (broadcast
/// keeps its own deadline). Two plain steps rather than one wrapper around the run: a
/// future wrapping the run would add its own state to every request's task.
pub(crate) async fn prepare<D: Answers>(
    ctx: &WorkerCtx,
    down: &mut D,
    head: &RequestHead,
    addressing: Addressing,
) -> Result<Way, D::Out> {
    let config = &ctx.config;
    let way = match addressing {
        Addressing::Broadcast => Way::Broadcast(super::broadcast_body_limit(config)),
        _ => Way::Anycast(config.max_body_size),
    };
    let limit = match way {
        Way::Broadcast(limit) => Some(limit),
        Way::Anycast(limit) => limit,
    };
    if request::declared_too_large(head.framing, limit) {
        return Err(down.refuse(ctx, ProxyError::BodyTooLarge).await);
    }
    // Only when no body byte came with the head: a client that sent some is not waiting.
    let waiting = down.pending().len() == head.head_len;
    if head.expect_continue && head.has_body() && waiting && down.send_continue(ctx).await.is_err()
    {
        return Err(D::cut(0));
    }
    Ok(way)
}

/// When the whole-request deadline passes (`OPR_PROXY_MAX_TIMEOUT` from now).
pub(crate) fn deadline(ctx: &WorkerCtx) -> Instant {
    Instant::now() + ctx.config.max_timeout
}

/// The deadline passed: before the answer's head went out (`phase`) a 504 is reported
/// and answered; after, the answer is cut.
pub(crate) async fn deadline_passed<D: Answers>(
    ctx: &WorkerCtx,
    down: &mut D,
    head: &RequestHead,
    (phase, picked): (&Cell<Phase>, &Picked),
) -> D::Out {
    match phase.get() {
        Phase::BeforeHead => {
            let e = ProxyError::GatewayTimeout;
            let pending = down.pending();
            let (method, target) = (&pending[head.method.clone()], &pending[head.target.clone()]);
            super::report_http_error(ctx, &e, method, target, picked.choice.get());
            down.refuse(ctx, e).await
        }
        Phase::HeadSent(status) => D::cut(status),
    }
}
