//! The proxy's own endpoints: `/v1/proxy/health` (liveness, no key),
//! `/v1/proxy/containers` (executor states) and `/v1/proxy/metrics` (Prometheus), the
//! last two with the key.

use serde::Serialize;

use crate::ctx::WorkerCtx;
use crate::error::write_json_response;
use crate::http::client::After;
use crate::logging::rfc3339;
use crate::snapshot::Snapshot;

/// Where a request goes. One table for HTTP/1 (conn.rs) and HTTP/2 streams
/// (http2/stream.rs), so the endpoints and the key rule cannot drift apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET|HEAD /v1/proxy/health`: liveness, no key (container health checks).
    Health,
    /// Missing or wrong key: 401.
    Unauthorized,
    Containers,
    Metrics,
    /// Everything else goes to an executor.
    Forward,
}

pub(crate) fn route(
    method: &[u8],
    path: &[u8],
    authorization: Option<&[u8]>,
    secret: &[u8],
) -> Route {
    let is_get = method == b"GET" || method == b"HEAD";
    if is_get && path == b"/v1/proxy/health" {
        return Route::Health;
    }
    if !crate::auth::is_authorized(authorization, secret) {
        return Route::Unauthorized;
    }
    match path {
        b"/v1/proxy/containers" if is_get => Route::Containers,
        b"/v1/proxy/metrics" if is_get => Route::Metrics,
        _ => Route::Forward,
    }
}

/// `200 OK` with body `OK`, as the original answers.
pub(crate) fn health(close: bool, head_only: bool, out: &mut Vec<u8>) -> After {
    out.clear();
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache, no-store, must-revalidate\r\nContent-Length: 2\r\n",
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(b"OK");
    }
    if close {
        After::Close
    } else {
        After::KeepAlive
    }
}

/// One executor in `/v1/proxy/containers`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container<'a> {
    hostname: &'a str,
    status: &'static str,
    state_status: Option<&'a str>,
    state_usage: Option<u8>,
    runtimes: usize,
    last_check: Option<String>,
    last_error: Option<&'a str>,
}

/// The executors in configuration order, as the checker and the workers see them now.
pub(crate) fn containers(
    snapshot: &Snapshot,
    ctx: &WorkerCtx,
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) {
    let list: Vec<Container<'_>> = snapshot
        .executors
        .iter()
        .zip(snapshot.ids())
        .map(|(e, i)| {
            let online = e.online && !ctx.board.is_flagged_offline(i);
            Container {
                hostname: &e.hostname,
                status: if online { "online" } else { "offline" },
                state_status: e.state_status.as_deref(),
                state_usage: e.usage,
                runtimes: e.runtimes.len(),
                last_check: e.last_check.map(rfc3339),
                // Also while FALL holds an executor online after a failed probe.
                last_error: if online && e.contrary == 0 {
                    None
                } else {
                    e.last_error
                        .as_deref()
                        .or(Some("flagged offline by a worker"))
                },
            }
        })
        .collect();
    let body = sonic_rs::to_string(&list).unwrap_or_else(|_| "[]".into());
    out.clear();
    write_json_response(out, 200, &body, close, head_only);
}

/// Every metric in the Prometheus text format (version 0.0.4).
pub(crate) fn metrics(
    snapshot: &Snapshot,
    ctx: &WorkerCtx,
    head_only: bool,
    close: bool,
    out: &mut Vec<u8>,
) {
    let mut body = String::with_capacity(16 * 1024);
    let flagged = |i| ctx.board.is_flagged_offline(i);
    let reports = ctx.reporter.stats();
    ctx.metrics
        .render(&mut body, snapshot, flagged, &ctx.config.version, reports);
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nCache-Control: no-cache, no-store, must-revalidate\r\n");
    let _ = std::io::Write::write_fmt(out, format_args!("Content-Length: {}\r\n", body.len()));
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}
