//! The rules every forwarded request shares, whichever front end it came through: where
//! it stands when the deadline fires, how long an early-answered body is still read, the
//! routing fields (`x-opr-runtime-id`, `x-opr-debug`), the rewrite to the executor, the
//! body limit, how a body failure becomes a 502 cause, and the record of its end
//! (metrics, access log).

use std::net::IpAddr;
use std::time::Duration;

use crate::access_log;
use crate::answer::ProxyError;
use crate::balance::Choice;
use crate::config::Config;
use crate::ctx::WorkerCtx;
use crate::http::head::RequestFraming;
use crate::http::rewrite::RequestRewrite;
use crate::outcome::Cause;
use crate::snapshot::ExecutorStatus;

use super::pump::PumpError;

/// How long the rest of a request body answered early (an error, or an executor that
/// answered before reading it all) is still read and dropped, so the client reads its
/// answer rather than a reset (RFC 9112 §9.6; HTTP/2 streams alike).
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// Where a request stands when the deadline fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing sent to the client yet: a 504 can still be answered.
    BeforeHead,
    /// The response head (with this status) went out: only closing is left.
    HeadSent(u16),
}

/// `x-opr-runtime-id` as the picker uses it: UTF-8 and not empty.
pub(crate) fn runtime_id(value: Option<&[u8]>) -> Option<&str> {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| !v.is_empty())
}

/// Explain the choice in `x-opr-route`: dev mode, or `x-opr-debug: 1`.
pub(crate) fn debug(config: &Config, value: Option<&[u8]>) -> bool {
    config.is_development() || value == Some(b"1")
}

/// RFC 9110 §15.5.14: a declared length over the limit is refused before reading it.
pub(crate) fn declared_too_large(framing: RequestFraming, limit: Option<u64>) -> bool {
    matches!((framing, limit), (RequestFraming::Length(n), Some(max)) if n > max)
}

/// The rewrite of a request for `executor` (docs/behaviour.md §5).
pub(crate) fn rewrite<'a>(
    ctx: &'a WorkerCtx,
    client: IpAddr,
    executor: &'a ExecutorStatus,
    strip_expect: bool,
) -> RequestRewrite<'a> {
    RequestRewrite {
        authorization: &ctx.executor_authorization,
        forwarded_for: client,
        executor_host: &executor.authority,
        dev_executor_hostname: ctx
            .config
            .is_development()
            .then_some(executor.hostname.as_str()),
        strip_expect,
    }
}

/// The 502 cause of an answer's body that failed before anything reached the client.
pub(crate) fn body_cause(e: PumpError, otherwise: Cause) -> Cause {
    match e {
        PumpError::Chunk(e) => Cause::MalformedBody(e),
        _ => otherwise,
    }
}

/// The answer to a request body the client failed to send (`None`: it left, nothing to
/// answer).
pub(crate) fn client_body_error(e: PumpError) -> Option<ProxyError> {
    match e {
        PumpError::SourceClosed | PumpError::Sink | PumpError::SinkStalled => None,
        PumpError::Stalled => Some(ProxyError::BodyTimeout),
        PumpError::Chunk(e) => Some(ProxyError::BadChunk(e)),
        PumpError::TooLarge => Some(ProxyError::BodyTooLarge),
    }
}

/// A request body that failed on the client's side before its answer ended (both front
/// ends): the error to answer, or `Err` with the status already sent (0: none, the client
/// left), when there is nothing left to answer.
pub(crate) fn body_failure(phase: Phase, e: PumpError) -> Result<ProxyError, u16> {
    match (phase, client_body_error(e)) {
        (Phase::HeadSent(status), _) => Err(status),
        (_, None) => Err(0),
        (_, Some(e)) => Ok(e),
    }
}

/// How one request ended, for its record.
pub(crate) struct Record<'a> {
    pub(crate) client: IpAddr,
    /// `METHOD target` as far as it was read (kept only with the access log on).
    pub(crate) request_line: &'a [u8],
    /// 0: nothing was answered.
    pub(crate) status: u16,
    pub(crate) choice: Option<Choice>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) took: Duration,
}

/// The end of a request: counted in the metrics and written to the access log.
pub(crate) fn record(ctx: &WorkerCtx, r: &Record<'_>) {
    let executor = r.choice.map(|c| c.executor);
    ctx.m()
        .request_done(executor, r.status, r.took, r.bytes_in, r.bytes_out);
    if let Some(log) = &ctx.access_log {
        let snapshot = ctx.snapshot();
        let entry = access_log::Entry {
            client: r.client,
            request_line: r.request_line,
            status: r.status,
            executor: executor
                .and_then(|i| snapshot.executors.get(i.index()))
                .map(|e| e.hostname.as_str()),
            tier: r.choice.map(|c| c.tier),
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            duration: r.took,
        };
        log.write(&entry, ctx.m());
    }
}
