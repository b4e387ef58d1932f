//! AppSignal: `POST {base}/collect?api_key=<key>&version=<v>`, the public error endpoint
//! the original's logger library uses (docs/behaviour.md §8.2).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{json, Event, Request, Target, JSON, NAMESPACE};

pub(super) const BASE: &str = "https://appsignal-endpoint.net";

#[derive(Serialize)]
struct Body<'a> {
    timestamp: u64,
    namespace: &'static str,
    error: Error<'a>,
    environment: Environment<'a>,
    revision: &'a str,
    action: &'a str,
    params: &'a BTreeMap<&'static str, String>,
    tags: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Error<'a> {
    name: &'a str,
    message: &'a str,
    backtrace: [&'a str; 0],
}

#[derive(Serialize)]
struct Environment<'a> {
    environment: &'a str,
    server: &'a str,
    version: &'a str,
}

pub(super) fn request(target: &Target, event: &Event<'_>) -> Request {
    let common = event.common;
    let body = Body {
        timestamp: event.seconds(),
        namespace: NAMESPACE,
        error: Error {
            name: event.action,
            message: &event.message,
            backtrace: [],
        },
        environment: Environment {
            environment: common.environment,
            server: &common.server_name,
            version: &common.version,
        },
        revision: &common.version,
        action: event.action,
        params: &event.extra,
        tags: &event.tags,
    };
    Request {
        url: format!("{}/collect", target.base),
        query: vec![
            ("api_key", target.key.clone()),
            ("version", env!("CARGO_PKG_VERSION").to_string()),
        ],
        headers: vec![(JSON.0, JSON.1.to_string())],
        body: json(&body),
    }
}
