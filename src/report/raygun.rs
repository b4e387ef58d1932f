//! Raygun: `POST {base}/entries` with `X-ApiKey` (docs/behaviour.md §8.2).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{json, Event, Request, Target, JSON};

pub(super) const BASE: &str = "https://api.raygun.com";

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "occurredOn")]
    occurred_on: String,
    details: Details<'a>,
}

#[derive(Serialize)]
struct Details<'a> {
    #[serde(rename = "machineName")]
    machine_name: &'a str,
    version: &'a str,
    error: Error<'a>,
    /// `name: value`, as the original's logger library writes them.
    tags: Vec<String>,
    #[serde(rename = "userCustomData")]
    user_custom_data: &'a BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Error<'a> {
    #[serde(rename = "className")]
    class_name: &'a str,
    message: &'a str,
}

pub(super) fn request(target: &Target, event: &Event<'_>) -> Request {
    let common = event.common;
    let mut tags: Vec<String> = event
        .tags
        .iter()
        .map(|(name, value)| format!("{name}: {value}"))
        .collect();
    tags.push("type: error".to_string());
    tags.push(format!("environment: {}", common.environment));
    let body = Body {
        occurred_on: event.rfc3339(),
        details: Details {
            machine_name: &common.server_name,
            version: &common.version,
            error: Error {
                class_name: event.action,
                message: &event.message,
            },
            tags,
            user_custom_data: &event.extra,
        },
    };
    Request {
        url: format!("{}/entries", target.base),
        query: Vec::new(),
        headers: vec![
            (JSON.0, JSON.1.to_string()),
            ("x-apikey", target.key.clone()),
        ],
        body: json(&body),
    }
}
