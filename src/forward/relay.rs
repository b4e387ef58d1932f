//! One relay of an executor's answer for both front ends: the head through the rewrite,
//! the body bytes that came with it, the rest through the one pump, and what a stalled
//! or cut answer means. A front end's `Reply` says how its protocol writes each part.

use std::cell::Cell;
use std::future::Future;
use std::ops::Range;

use monoio::io::splice::SpliceSource;
use monoio::io::AsyncReadRent;

use crate::buffers::Loan;
use crate::ctx::WorkerCtx;
use crate::http::head::{HeaderRef, ResponseFraming, ResponseHead};
use crate::outcome::{After, Cause, Discard};

use super::connect::Picked;
use super::exchange;
use super::pump::{Body, PumpError};
use super::request::{self, Phase};
use super::reuse::{self, ResponseEnd, Reuse};

/// How a relayed answer ended for the client.
pub(crate) struct Ended {
    /// The status sent (0: nothing was).
    pub(crate) status: u16,
    /// The client connection's fate (HTTP/1; an HTTP/2 stream ends with its answer).
    pub(crate) after: After,
    /// Whether the executor connection is reusable; `None`: the exchange was cut in a way
    /// that does not count as answered (HTTP/2), its connection is closed.
    pub(crate) reuse: Option<Reuse>,
}

impl Ended {
    pub(crate) fn cut(status: u16, reuse: Option<Reuse>) -> Ended {
        Ended {
            status,
            after: After::Close,
            reuse,
        }
    }
}

/// The answer side of a front end's downstream: how its protocol writes an answer.
pub(crate) trait Reply {
    /// The verdict on an answer cut mid-body (truncated, malformed, or the client left).
    const BROKEN: Option<Reuse>;
    /// The answer's body as the pump reads it, and its framing to the client.
    fn body(&self, framing: ResponseFraming) -> (Option<Body>, ResponseFraming);
    /// The client connection's fate after an answer of `framing` (`early_answer`: the
    /// request body was not sent whole).
    fn fate(&self, ctx: &WorkerCtx, framing: ResponseFraming, early_answer: bool) -> After;
    /// Prepare the head: HTTP/1 writes it into `out` (cleared first), HTTP/2 keeps it and
    /// leaves `out` empty. `route`: explain the choice in `x-opr-route`.
    fn head(&mut self, out: &mut Vec<u8>, rb: &[u8], answer: Head<'_>, route: Explain<'_>);
    /// Send the head (with `out`, the body bytes that came with it, unless `hold`: then
    /// they go with the next body bytes). `no_body`: the answer ends with its head.
    /// `Ok(true)`: the head itself is held in `out` (HTTP/1), so a failed body before it
    /// left can still be answered 502.
    async fn send_head(
        &mut self,
        out: &mut Vec<u8>,
        hold: bool,
        no_body: bool,
        status: u16,
    ) -> Result<bool, Ended>;
    /// Send the body bytes still in `out` when no more body follows.
    async fn send_rest(
        &mut self,
        ctx: &WorkerCtx,
        out: &mut Vec<u8>,
        status: u16,
    ) -> Result<(), Ended>;
    /// Pump the rest of the body (`out`: held bytes sent first); a client that leaves
    /// (HTTP/2: resets the stream) is `PumpError::Sink`. A plain `fn` so that HTTP/1 hands
    /// back the pump's own future: no wrapper state in every request's task.
    fn pump<R: AsyncReadRent + SpliceSource>(
        &mut self,
        ctx: &WorkerCtx,
        body: &mut Body,
        ex: &mut R,
        eb: &mut Loan<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> impl Future<Output = Result<Range<usize>, PumpError>>;
    /// Count what went out after the head: `held` bytes sent with the body, `written` of it.
    fn count(&mut self, held: u64, written: u64);
    /// The answer was cut: `stalled` when the client stopped reading.
    fn abort(&mut self, stalled: bool);
    /// The whole answer went out (`len` bytes, HTTP/1) and its end is to be sent.
    async fn finish(&mut self, ctx: &WorkerCtx, len: u64, no_body: bool) -> bool;
}

/// The answer's head as read: its parse, its fields, its framing to the client, and
/// whether the client connection closes after it.
pub(crate) struct Head<'a> {
    pub(crate) response: &'a ResponseHead,
    pub(crate) headers: &'a [HeaderRef],
    pub(crate) framing: ResponseFraming,
    pub(crate) close: bool,
}

/// What an answer is read and written with: the head buffer, the body buffer, and
/// whether it was read into the body buffer (`true`) or the head buffer.
pub(crate) type Bufs<'b, 'p> = (&'b mut Loan<'p, Vec<u8>>, &'b mut Loan<'p, Vec<u8>>, bool);

/// The choice to explain in `x-opr-route` (`None`: not asked).
pub(crate) type Explain<'a> = Option<(&'a WorkerCtx, &'a Picked)>;

/// What a relay needs of its request.
pub(crate) struct Relaying<'a> {
    pub(crate) ctx: &'a WorkerCtx,
    pub(crate) phase: &'a Cell<Phase>,
    pub(crate) picked: &'a Picked,
    /// Explain the choice in `x-opr-route` (dev mode, or `x-opr-debug: 1`).
    pub(crate) debug: bool,
}

impl Relaying<'_> {
    /// Send the response head and stream the body to the client. `Err` when nothing
    /// reached the client yet, so a 502 with that cause is still possible. `early_answer`:
    /// the request body was not sent whole (the executor connection is not pooled). A
    /// client that takes no byte for `OPR_PROXY_BODY_TIMEOUT` is given up on, and the
    /// executor connection with it.
    pub(crate) async fn relay<P: Reply, R: AsyncReadRent + SpliceSource>(
        &self,
        reply: &mut P,
        ex: &mut R,
        (hb, eb, big): Bufs<'_, '_>,
        out: &mut Vec<u8>,
        (response, headers): (&ResponseHead, &[HeaderRef]),
        early_answer: bool,
    ) -> Result<Ended, Cause> {
        let ctx = self.ctx;
        let (mut body, framing) = reply.body(response.framing);
        let after = reply.fate(ctx, framing, early_answer);
        // The buffer the answer was read into.
        let rb = if big { eb.get() } else { hb.get() };
        let close = after == After::Close;
        let head = Head {
            response,
            headers,
            framing,
            close,
        };
        reply.head(out, rb, head, self.debug.then_some((ctx, self.picked)));
        let status = response.status;
        // The head is not sent yet: a clean 502 is still possible.
        let end = exchange::frame_first_bytes(body.as_mut(), rb, response.head_len, Some(out))
            .map_err(|e| request::body_cause(e, Cause::ClosedMidHead))?;
        self.phase.set(Phase::HeadSent(status));
        // The read filled its buffer, so more of the body is likely waiting: the head goes
        // out with it in one write. Otherwise it goes now (the executor may pause).
        let unfinished = matches!((end, &body), (ResponseEnd::Unfinished, Some(_)));
        let held_len = out.len() as u64;
        let hold = unfinished && rb.len() == rb.capacity();
        let no_body = body.is_none();
        let head_held = match reply.send_head(out, hold, no_body, status).await {
            Ok(held) => held,
            Err(ended) => return Ok(ended),
        };
        let mut answer_len = held_len;
        let end = match (end, body.as_mut()) {
            (ResponseEnd::Unfinished, Some(body)) => {
                let held = !out.is_empty();
                let pumped = reply.pump(ctx, body, ex, eb, out).await;
                let sent_held = if held && out.is_empty() { held_len } else { 0 };
                reply.count(sent_held, body.written);
                ctx.m().spliced(body.spliced, body.splice_fallback);
                answer_len += body.written;
                let held = head_held && !out.is_empty();
                match pumped_end(reply, pumped, held, status) {
                    Ok(end) => end,
                    Err(ended) => return ended,
                }
            }
            (end, _) => {
                if !out.is_empty() {
                    if let Err(ended) = reply.send_rest(ctx, out, status).await {
                        return Ok(ended);
                    }
                }
                end
            }
        };
        if !reply.finish(ctx, answer_len, no_body).await {
            return Ok(Ended::cut(status, None));
        }
        Ok(Ended {
            status,
            after,
            reuse: Some(reuse::after_exchange(response, !early_answer, end)),
        })
    }
}

/// How the relay goes on after pumping the body: its end, or (`Err`) how the relay ends
/// instead. `head_held`: the head itself never left, so a clean 502 is still possible.
fn pumped_end<P: Reply>(
    reply: &mut P,
    pumped: Result<Range<usize>, PumpError>,
    head_held: bool,
    status: u16,
) -> Result<ResponseEnd, Result<Ended, Cause>> {
    match pumped {
        Ok(after) if after.is_empty() => Ok(ResponseEnd::Clean),
        Ok(_) => Ok(ResponseEnd::Leftover),
        Err(PumpError::SinkStalled) => {
            reply.abort(true);
            let stalled = Some(Reuse::Discard(Discard::ClientStalled));
            Err(Ok(Ended::cut(status, stalled)))
        }
        // Nothing reached the client (a client that left gets nothing).
        Err(e) if head_held && e != PumpError::Sink => {
            Err(Err(request::body_cause(e, Cause::ClosedMidBody)))
        }
        // Truncated or malformed: the client must see it (close or reset), and a client
        // that left takes the executor connection with it.
        Err(_) => {
            reply.abort(false);
            Err(Ok(Ended::cut(status, P::BROKEN)))
        }
    }
}
