//! Sentry: `POST {base}/api/{projectId}/store/` with `X-Sentry-Auth` (the store endpoint
//! the original's logger library uses; docs/behaviour.md §8.2).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::{json, Event, Request, Target, JSON, NAMESPACE};

/// The original's default host (the older config form names none).
pub(super) const BASE: &str = "https://sentry.io";

#[derive(Serialize)]
struct Body<'a> {
    event_id: String,
    timestamp: String,
    platform: &'static str,
    level: &'static str,
    logger: &'static str,
    transaction: &'a str,
    server_name: &'a str,
    release: &'a str,
    environment: &'a str,
    message: Message<'a>,
    exception: Exceptions<'a>,
    tags: &'a BTreeMap<&'static str, String>,
    extra: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Message<'a> {
    message: &'a str,
}

#[derive(Serialize)]
struct Exceptions<'a> {
    values: [Exception<'a>; 1],
}

#[derive(Serialize)]
struct Exception<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    value: &'a str,
}

pub(super) fn request(target: &Target, event: &Event<'_>) -> Request {
    let common = event.common;
    let body = Body {
        event_id: event_id(),
        timestamp: event.rfc3339(),
        // Sentry's platform list has no Rust; "other" is its catch-all.
        platform: "other",
        level: "error",
        logger: NAMESPACE,
        transaction: event.action,
        server_name: &common.server_name,
        release: &common.version,
        environment: common.environment,
        message: Message {
            message: &event.message,
        },
        exception: Exceptions {
            values: [Exception {
                kind: event.action,
                value: &event.message,
            }],
        },
        tags: &event.tags,
        extra: &event.extra,
    };
    let auth = format!(
        "Sentry sentry_version=7, sentry_key={}, sentry_client=opr-proxy/{}",
        target.key,
        env!("CARGO_PKG_VERSION")
    );
    Request {
        url: format!("{}/api/{}/store/", target.base, target.project_id),
        query: Vec::new(),
        headers: vec![(JSON.0, JSON.1.to_string()), ("x-sentry-auth", auth)],
        body: json(&body),
    }
}

/// 32 hex digits, as Sentry wants its event ids: random per process and event.
fn event_id() -> String {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new();
    format!("{:016x}{:016x}", random.hash_one(n), random.hash_one(!n))
}
