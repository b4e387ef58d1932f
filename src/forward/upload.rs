//! One upload for both front ends: the rest of a request body streams to the executor
//! while its answer is read (RFC 9112 §9.6). An answer that begins first is relayed at
//! once, alongside the body, as long as the executor takes it; sending stops when the
//! answer has ended. Otherwise the answer's head is awaited once the body ended (watching
//! the client) and relayed then.
//!
//! A front end hands over its body's pump (HTTP/1: the client's socket through
//! `pump::Body`; HTTP/2: the stream's DATA frames) as a future that borrows its source,
//! and an `Alongside`: the reply for an answer that begins while that source is busy.
//! `first` drives the two at once; `answer` relays whatever is left through the
//! downstream's own reply once the body's pump is dropped.

use std::future::Future;
use std::pin::Pin;

use monoio::net::tcp::TcpOwnedReadHalf;

use crate::http::head::{HeaderRef, ResponseHead};
use crate::outcome::Cause;

use super::connect::watching;
use super::downstream::Downstream;
use super::duplex::{self, Step, Upload};
use super::exchange::{self, HeadFailure, HeadRead};
use super::pump::PumpError;
use super::relay::{Bufs, Ended, Relaying, Reply};

/// The reply for an answer that begins while the body is still being sent, made apart
/// from the body's source, which holds the downstream meanwhile.
pub(crate) trait Alongside {
    type Reply<'r>: Reply
    where
        Self: 'r;
    /// Completes when the client left while the body's pump does not see it (HTTP/2: a
    /// reset of the stream); HTTP/1's pump reads the client's socket and sees it itself.
    fn gone(&mut self) -> impl Future<Output = ()> + '_;
    /// `None`: no reply can be made now (HTTP/1: no descriptor for a second handle on the
    /// client's socket); the body then stops and the answer is relayed after it.
    fn reply(&mut self) -> Option<Self::Reply<'_>>;
}

/// How the first part of an upload ended: the body ended first, the client's side of it
/// failed, the answer's head came (read or failed) and the body was stopped, or the
/// answer came and was relayed alongside the body.
pub(crate) type FirstPart =
    Step<PumpError, Result<ResponseHead, HeadFailure>, Result<Ended, Cause>, TcpOwnedReadHalf>;

/// How an upload ended for the front end to answer.
pub(crate) enum Answered {
    /// The client's side of the body failed (`request::body_failure` says what follows).
    Client(PumpError),
    /// The client left while the answer was awaited: nothing more is sent.
    Gone,
    /// The answer was relayed, or (`Err`) nothing of it reached the client and a 502
    /// with this cause is still possible.
    Relayed(Result<Ended, Cause>, TcpOwnedReadHalf),
}

/// Drive the body's pump (`up`, `upload` says where it stands) and the read of the
/// answer's head (`head`) until one ends; an answer that begins first is relayed through
/// `alongside`'s reply while the body goes on. `None`: the client left (`Alongside::gone`).
/// The answer's buffer and fields come back into `bufs` and `response_headers`.
pub(crate) async fn first<U, A: Alongside>(
    relaying: &Relaying<'_>,
    (mut up, upload): (
        Pin<&mut impl Future<Output = Result<U, PumpError>>>,
        &mut Upload<U>,
    ),
    head: Pin<&mut impl Future<Output = HeadRead>>,
    alongside: &mut A,
    (bufs, out, response_headers): (Bufs<'_, '_>, &mut Vec<u8>, &mut Vec<HeaderRef>),
) -> Option<FirstPart> {
    let executor_side = |e: &PumpError| *e == PumpError::Sink;
    let first = duplex::first(up.as_mut(), upload, head, executor_side);
    let first = monoio::select! {
        r = first => r,
        _ = alongside.gone() => return None,
    };
    let (r, mut ex_r, rb, headers) = match first {
        Err(e) => return Some(Step::Client(e)),
        Ok(None) => return Some(Step::BodyEnded),
        Ok(Some(read)) => read,
    };
    let (hb, eb, big) = bufs;
    *(if big { eb.get() } else { hb.get() }) = rb;
    *response_headers = headers;
    let (response, mut reply) = match (r, alongside.reply()) {
        (Ok(response), Some(reply)) => (response, reply),
        (r, _) => return Some(Step::Head(r, ex_r)),
    };
    let answer = (&response, &response_headers[..]);
    // An early answer: the executor connection is not pooled.
    let relay = relaying.relay(&mut reply, &mut ex_r, (hb, eb, big), out, answer, true);
    Some(
        match duplex::alongside(up, upload, relay, executor_side).await {
            Ok(relayed) => Step::Relayed(relayed, ex_r),
            Err(e) => Step::Client(e),
        },
    )
}

/// After the first part, with the body's pump dropped: an answer relayed alongside is
/// done; otherwise its head (read while the body was sent, or awaited now from `head`
/// while watching the client) is relayed through the reply `reply` makes of the
/// downstream (`sent`: the body went whole; `silent`: the 502 cause of an executor that
/// closes unanswering).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn answer<'d, D: Downstream, P: Reply>(
    relaying: &Relaying<'_>,
    (down, reply): (&'d mut D, impl FnOnce(&'d mut D) -> P),
    step: FirstPart,
    head: Pin<&mut impl Future<Output = HeadRead>>,
    (bufs, out, response_headers): (Bufs<'_, '_>, &mut Vec<u8>, &mut Vec<HeaderRef>),
    (sent, silent): (bool, Cause),
) -> Answered {
    let (hb, eb, big) = bufs;
    let (r, mut ex_r) = match step {
        Step::Client(e) => return Answered::Client(e),
        Step::Relayed(relayed, ex_r) => return Answered::Relayed(relayed, ex_r),
        Step::Head(r, ex_r) => (r, ex_r),
        Step::BodyEnded => {
            let gone = || down.gone();
            let Some((r, ex_r, rb, headers)) = watching(D::WATCH_AFTER, head, gone).await else {
                return Answered::Gone;
            };
            *(if big { eb.get() } else { hb.get() }) = rb;
            *response_headers = headers;
            (r, ex_r)
        }
    };
    let relayed = match r {
        Ok(response) => {
            let mut reply = reply(down);
            let answer = (&response, &response_headers[..]);
            let relay = relaying.relay(&mut reply, &mut ex_r, (hb, eb, big), out, answer, !sent);
            relay.await
        }
        Err(failure) => Err(exchange::failure_cause(failure, silent)),
    };
    Answered::Relayed(relayed, ex_r)
}
