//! The parts of an exchange with an executor that anycast and broadcast share: opening a
//! connection (a clean pooled one, or a new one; an unreachable executor is flagged
//! offline for every worker), reading the response head, and the response body's framing
//! on the way out.

use std::io;
use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, Splitable};
use monoio::net::tcp::{TcpOwnedReadHalf, TcpOwnedWriteHalf};
use monoio::net::TcpStream;

use super::pump::{Body, Delimit, Emit, PumpError};
use super::reuse::{ResponseEnd, Reuse};
use crate::ctx::WorkerCtx;
use crate::http::chunked::ChunkedDecoder;
use crate::http::head::{self, HeaderRef, ResponseFraming, ResponseHead};
use crate::outcome::Cause;
use crate::outcome::Discard;
use crate::snapshot::ExecutorId;

/// A connection to an executor, and whether it came from the pool. It goes back to the
/// pool only through `release` with `Reuse::Reusable`; dropped any other way it is
/// closed and counted as a failed exchange.
pub(crate) struct ExecutorConn<'a> {
    stream: Option<TcpStream>,
    /// Its halves are out (`split`): dropped without `join`, it counts as failed.
    split: bool,
    pub(crate) reused: bool,
    executor: ExecutorId,
    addr: SocketAddr,
    ctx: &'a WorkerCtx,
}

impl ExecutorConn<'_> {
    pub(crate) fn stream(&mut self) -> &mut TcpStream {
        // Present from `open` until `release` consumes the connection.
        self.stream
            .as_mut()
            .expect("executor stream is present until released")
    }

    /// Both halves, so the answer can be read while the request body is still written
    /// (RFC 9112 §9.6). Give them back with `join` before `release`.
    pub(crate) fn split(&mut self) -> (TcpOwnedReadHalf, TcpOwnedWriteHalf) {
        self.split = true;
        self.stream
            .take()
            .expect("executor stream is present until released")
            .into_split()
    }

    pub(crate) fn join(&mut self, read: TcpOwnedReadHalf, write: TcpOwnedWriteHalf) {
        // Halves of one stream always reunite; others are dropped (closed).
        if let Ok(stream) = read.reunite(write) {
            self.stream = Some(stream);
            self.split = false;
        }
    }

    /// The exchange ended: pool the connection or close it, as `reuse` says.
    pub(crate) fn release(mut self, reuse: Reuse) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let m = self.ctx.m();
        match reuse {
            Reuse::Reusable => self.ctx.pool.put(self.executor, self.addr, stream, m),
            Reuse::Discard(why) => {
                if why == Discard::ClientStalled {
                    log_client_stalled(self.ctx.config.body_timeout);
                }
                m.executor_discarded(self.executor, why);
            }
        }
    }
}

impl Drop for ExecutorConn<'_> {
    fn drop(&mut self) {
        if self.stream.is_some() || self.split {
            self.ctx
                .m()
                .executor_discarded(self.executor, Discard::Failed);
        }
    }
}

/// At most one line per worker per `STALL_LOG_EVERY` about clients that stopped reading:
/// many such clients must not turn into a log flood.
const STALL_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// When this worker last logged a stalled client, and how many it has not logged since.
    static STALL_LOG: std::cell::Cell<(Option<std::time::Instant>, u64)> =
        const { std::cell::Cell::new((None, 0)) };
}

fn log_client_stalled(bound: std::time::Duration) {
    STALL_LOG.with(|c| {
        let (last, quiet) = c.get();
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < STALL_LOG_EVERY) {
            c.set((last, quiet + 1));
            return;
        }
        c.set((Some(now), 0));
        let more = match quiet {
            0 => String::new(),
            n => format!(" ({n} more since the last line)"),
        };
        crate::warn!(
            "a client took no byte of its answer for {} s (OPR_PROXY_BODY_TIMEOUT): \
             its connection and the executor's closed{more}",
            bound.as_secs()
        );
    });
}

/// Why no connection could be had.
pub(crate) enum OpenError {
    /// Refused, unreachable or timed out (which one): nothing was sent, the executor is
    /// flagged offline, another one may be tried.
    Unreachable(&'static str),
    /// Anything else: 502.
    Failed(Cause),
}

/// A clean pooled connection to `executor` (when `pooled` allows), else a new one within
/// the connect timeout.
pub(crate) async fn open(
    ctx: &WorkerCtx,
    executor: ExecutorId,
    addr: SocketAddr,
    pooled: bool,
) -> Result<ExecutorConn<'_>, OpenError> {
    let conn = |stream, reused| ExecutorConn {
        stream: Some(stream),
        split: false,
        reused,
        executor,
        addr,
        ctx,
    };
    if pooled {
        if let Some(stream) = ctx.pool.take(executor, addr, ctx.m()) {
            ctx.m().executor_reused(executor);
            return Ok(conn(stream, true));
        }
    }
    let timeout = ctx.config.connect_timeout;
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Err(_) => {
            let reason = format_args!("connect timed out after {} s", timeout.as_secs());
            ctx.executor(executor).flag_offline(&reason);
            Err(OpenError::Unreachable("timed out"))
        }
        Ok(Err(e)) => match e.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::TimedOut => {
                ctx.executor(executor).flag_offline(&e);
                let why = match e.kind() {
                    io::ErrorKind::ConnectionRefused => "refused",
                    io::ErrorKind::TimedOut => "timed out",
                    _ => "unreachable",
                };
                Err(OpenError::Unreachable(why))
            }
            kind => Err(OpenError::Failed(Cause::Connect(kind))),
        },
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            ctx.m().executor_opened(executor);
            Ok(conn(stream, false))
        }
    }
}

/// Why no response head could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeadFailure {
    /// EOF or reset before any byte came back: the request may be replayed
    /// (`reuse::after_silence` decides).
    Silent,
    Failed(Cause),
}

/// Read until a final response head is in `eb`; interim `1xx` heads are skipped (the
/// proxy answers `100-continue` itself), but they count as an answer for replays.
/// The 502 cause of a head that did not come (`silent`: when the executor closed without
/// a byte of it).
pub(crate) fn failure_cause(failure: HeadFailure, silent: Cause) -> Cause {
    match failure {
        HeadFailure::Silent => silent,
        HeadFailure::Failed(cause) => cause,
    }
}

/// An answer's head read alongside the request body: the outcome, and the reader and
/// buffers it owned meanwhile.
pub(crate) type HeadRead = (
    Result<ResponseHead, HeadFailure>,
    TcpOwnedReadHalf,
    Vec<u8>,
    Vec<HeaderRef>,
);

/// `read_response_head` owning its reader and buffers, so it can outlive the body's
/// sending (or not) and give them back.
pub(crate) async fn read_head_owned(
    mut ex_r: TcpOwnedReadHalf,
    mut rb: Vec<u8>,
    mut headers: Vec<HeaderRef>,
    is_head: bool,
) -> HeadRead {
    rb.clear();
    let r = read_response_head(&mut ex_r, &mut rb, is_head, &mut headers).await;
    (r, ex_r, rb, headers)
}

pub(crate) async fn read_response_head<R: AsyncReadRent>(
    ex: &mut R,
    eb: &mut Vec<u8>,
    is_head: bool,
    headers: &mut Vec<HeaderRef>,
) -> Result<ResponseHead, HeadFailure> {
    let mut answered = false;
    loop {
        if !eb.is_empty() {
            match head::parse_response(eb, is_head, headers) {
                Ok(Some(r)) if r.status == 101 => return Err(HeadFailure::Failed(Cause::Upgrade)),
                // RFC 9110 §15.2: interim responses are not relayed.
                Ok(Some(r)) if r.status < 200 => {
                    eb.drain(..r.head_len);
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(e) => return Err(HeadFailure::Failed(Cause::MalformedHead(e))),
            }
        }
        match read_append(ex, eb).await {
            Ok(0) if !answered => return Err(HeadFailure::Silent),
            Ok(0) if eb.is_empty() => return Err(HeadFailure::Failed(Cause::ClosedBeforeAnswer)),
            Ok(0) if eb.len() == eb.capacity() => {
                return Err(HeadFailure::Failed(Cause::MalformedHead(
                    head::HeadError::HeadTooLarge,
                )))
            }
            Ok(0) => return Err(HeadFailure::Failed(Cause::ClosedMidHead)),
            Ok(_) => answered = true,
            Err(e)
                if !answered
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                    ) =>
            {
                return Err(HeadFailure::Silent)
            }
            Err(e) => return Err(HeadFailure::Failed(Cause::Read(e.kind()))),
        }
    }
}

/// Append to `buf` after its current bytes, growing a full head buffer up to the head
/// limit. `Ok(0)` is EOF (or a head larger than the limit).
async fn read_append<R: AsyncReadRent>(stream: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut owned = std::mem::take(buf);
    let len = owned.len();
    if len == owned.capacity() {
        if len >= head::MAX_HEAD {
            *buf = owned;
            return Ok(0);
        }
        owned.reserve(len.max(crate::buffers::HEAD_BUF));
    }
    let (res, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// The response body as the pump reads it, and the framing the client gets: lengths are
/// kept; chunked passes through to HTTP/1.1 clients, HTTP/1.0 clients get the payload
/// delimited by close (RFC 9112 §7.1: no chunked to 1.0); a close-delimited body is
/// re-framed as chunks for HTTP/1.1 clients so their connection stays usable (docs/behaviour.md §5).
pub(crate) fn response_body(
    framing: ResponseFraming,
    client_http10: bool,
) -> (Option<Body>, ResponseFraming) {
    let chunked = || Delimit::Chunked(ChunkedDecoder::new());
    match (framing, client_http10) {
        (ResponseFraming::NoBody, _) => (None, ResponseFraming::NoBody),
        (ResponseFraming::Length(n), _) => (
            Some(Body::new(Delimit::Length(n), Emit::Raw, None)),
            ResponseFraming::Length(n),
        ),
        (ResponseFraming::Chunked, false) => (
            Some(Body::new(chunked(), Emit::Raw, None)),
            ResponseFraming::Chunked,
        ),
        (ResponseFraming::Chunked, true) => (
            Some(Body::new(chunked(), Emit::Payload, None)),
            ResponseFraming::UntilClose,
        ),
        (ResponseFraming::UntilClose, false) => (
            Some(Body::new(Delimit::Close, Emit::AsChunks, None)),
            ResponseFraming::Chunked,
        ),
        (ResponseFraming::UntilClose, true) => (
            Some(Body::new(Delimit::Close, Emit::Raw, None)),
            ResponseFraming::UntilClose,
        ),
    }
}

/// Frame the body bytes that came with the response head (`eb[from..]`) and append what
/// the client gets to `out`. Returns how the response stands: `Clean` when the body is
/// complete with nothing after it, `Leftover` when bytes follow its end, `Unfinished`
/// when more body is to come.
pub(crate) fn frame_first_bytes(
    body: Option<&mut Body>,
    eb: &mut [u8],
    from: usize,
    out: Option<&mut Vec<u8>>,
) -> Result<ResponseEnd, PumpError> {
    let avail = eb.len() - from;
    let Some(body) = body else {
        return Ok(if avail == 0 {
            ResponseEnd::Clean
        } else {
            ResponseEnd::Leftover
        });
    };
    let (emitted, consumed) = body.frame(eb, from, eb.len())?;
    if let Some(out) = out {
        body.push_framed(out, &eb[from..from + emitted]);
    }
    Ok(if !body.is_done() {
        ResponseEnd::Unfinished
    } else if consumed < avail {
        ResponseEnd::Leftover
    } else {
        ResponseEnd::Clean
    })
}
