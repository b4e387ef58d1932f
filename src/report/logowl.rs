//! LogOwl: `POST {base}/logging/error` with the ticket in the JSON body (docs/behaviour.md §8.2).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{json, Event, Request, Target, JSON, NAMESPACE};

/// The original's default (the older config form names no host).
pub(super) const BASE: &str = "https://api.logowl.io";

#[derive(Serialize)]
struct Body<'a> {
    ticket: &'a str,
    message: &'a str,
    /// Source file, line and stack trace of the error: the proxy has none to give.
    path: &'static str,
    line: &'static str,
    stacktrace: &'static str,
    badges: BTreeMap<&'static str, &'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    metrics: Metrics<'a>,
    logs: [&'a str; 0],
    timestamp: u64,
    adapter: Adapter,
}

#[derive(Serialize)]
struct Metrics<'a> {
    platform: &'a str,
}

#[derive(Serialize)]
struct Adapter {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    version: &'static str,
}

pub(super) fn request(target: &Target, event: &Event<'_>) -> Request {
    let common = event.common;
    let mut badges: BTreeMap<&'static str, &str> = event
        .tags
        .iter()
        .chain(&event.extra)
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    badges.insert("action", event.action);
    badges.insert("environment", common.environment);
    badges.insert("namespace", NAMESPACE);
    badges.insert("version", &common.version);
    let body = Body {
        ticket: &target.key,
        message: &event.message,
        path: "",
        line: "",
        stacktrace: "",
        badges,
        kind: "error",
        metrics: Metrics {
            platform: &common.server_name,
        },
        logs: [],
        timestamp: event.seconds(),
        adapter: Adapter {
            name: "opr-proxy",
            kind: "opr-proxy",
            version: env!("CARGO_PKG_VERSION"),
        },
    };
    Request {
        url: format!("{}/logging/error", target.base),
        query: Vec::new(),
        headers: vec![(JSON.0, JSON.1.to_string())],
        body: json(&body),
    }
}
