//! The proxy's own endpoints: the route table (`/v1/proxy/health`, liveness, no key;
//! `/v1/proxy/containers`, executor states, and `/v1/proxy/metrics`, Prometheus, with
//! the key) and the bodies of the last two.

use serde::Serialize;

use crate::ctx::WorkerCtx;
use crate::snapshot::Snapshot;
use crate::text::rfc3339;

/// Where a request goes. One table for HTTP/1 requests and HTTP/2 streams, so the endpoints and the key rule cannot drift apart.
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
pub(crate) fn containers_body(snapshot: &Snapshot, ctx: &WorkerCtx) -> String {
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
    sonic_rs::to_string(&list).unwrap_or_else(|_| "[]".into())
}

/// Every metric in the Prometheus text format (version 0.0.4).
pub(crate) fn metrics_body(snapshot: &Snapshot, ctx: &WorkerCtx) -> String {
    let mut body = String::with_capacity(16 * 1024);
    let flagged = |i| ctx.board.is_flagged_offline(i);
    let reports = ctx.reporter.stats();
    ctx.metrics
        .render(&mut body, snapshot, flagged, &ctx.config.version, reports);
    body
}
