//! Every answer the proxy writes itself: errors (`error`), health, containers and metrics
//! (`endpoints`), broadcast's 204. Each is one status, fields and body built here; HTTP/1
//! writes it with `write_http1`, HTTP/2 builds its HEADERS from `fields`.

mod endpoints;
mod error;

pub(crate) use endpoints::{containers_body, metrics_body, route, Route};
pub(crate) use error::{ProxyError, RETRY_AFTER_SECONDS};

use std::fmt::Write as _;

use crate::config::Config;
use crate::http::rewrite::canonical_reason;
use crate::text::VecWriter;

/// `Cache-Control` of every answer the proxy makes that has a body: never cached.
const NO_CACHE: &str = "no-cache, no-store, must-revalidate";

/// What the body is, which decides the fields before `Content-Length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// docs/behaviour.md §7: JSON with the no-cache fields (errors, containers).
    Json,
    /// `OK` as the original's health check answers it.
    Health,
    /// Prometheus text format 0.0.4.
    Metrics,
    /// No body, no field but `Content-Length: 0` (broadcast's 204, as the original).
    Empty,
}

/// The body: bytes made before, or an error's JSON, written where it goes (so an error
/// answer costs no buffer of its own).
#[derive(Clone, Copy, Debug)]
enum Body<'a> {
    Bytes(&'a [u8]),
    Error {
        e: ProxyError,
        version: &'a str,
        dev: bool,
    },
}

/// A field value: text, or a number (a length, seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    Text(&'static str),
    Number(u64),
}

/// One answer of the proxy's own, whatever protocol carries it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Answer<'a> {
    pub(crate) status: u16,
    kind: Kind,
    body: Body<'a>,
}

impl<'a> Answer<'a> {
    /// An error, as `config` says to render it (version; detail in dev mode).
    pub(crate) fn error(e: ProxyError, config: &'a Config) -> Answer<'a> {
        Answer::error_with(e, &config.version, config.is_development())
    }

    pub(crate) fn error_with(e: ProxyError, version: &'a str, dev: bool) -> Answer<'a> {
        let body = Body::Error { e, version, dev };
        Answer {
            status: e.status(),
            kind: Kind::Json,
            body,
        }
    }

    /// `200 OK` with body `OK`, as the original answers.
    pub(crate) fn health() -> Answer<'static> {
        Answer {
            status: 200,
            kind: Kind::Health,
            body: Body::Bytes(b"OK"),
        }
    }

    /// `200` with a JSON body (`/v1/proxy/containers`).
    pub(crate) fn json(body: &'a [u8]) -> Answer<'a> {
        Answer {
            status: 200,
            kind: Kind::Json,
            body: Body::Bytes(body),
        }
    }

    /// `200` with the Prometheus text (`/v1/proxy/metrics`).
    pub(crate) fn metrics(body: &'a [u8]) -> Answer<'a> {
        Answer {
            status: 200,
            kind: Kind::Metrics,
            body: Body::Bytes(body),
        }
    }

    /// Broadcast's `204`. RFC 9110 §8.6 says a 204 carries no Content-Length, but the
    /// original sends `Content-Length: 0` over HTTP/1 and its clients read the field.
    pub(crate) fn no_content() -> Answer<'static> {
        Answer {
            status: 204,
            kind: Kind::Empty,
            body: Body::Bytes(b""),
        }
    }

    pub(crate) fn body_len(&self) -> usize {
        match self.body {
            Body::Bytes(b) => b.len(),
            Body::Error { e, version, dev } => e.body_len(version, dev),
        }
    }

    /// Append the body to `out`.
    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        match self.body {
            Body::Bytes(b) => out.extend_from_slice(b),
            Body::Error { e, version, dev } => {
                let _ = e.write_body(&mut VecWriter(out), version, dev);
            }
        }
    }

    /// The fields in order, named as HTTP/1 spells them (HTTP/2 lowercases them).
    pub(crate) fn fields(&self, mut field: impl FnMut(&'static str, Value)) {
        let text = |t| Value::Text(t);
        match self.kind {
            Kind::Json => {
                field("Content-Type", text("application/json"));
                field("Cache-Control", text(NO_CACHE));
                field("Expires", text("0"));
                field("Pragma", text("no-cache"));
            }
            Kind::Health => {
                field("Content-Type", text("text/plain"));
                field("Cache-Control", text(NO_CACHE));
            }
            Kind::Metrics => {
                field(
                    "Content-Type",
                    text("text/plain; version=0.0.4; charset=utf-8"),
                );
                field("Cache-Control", text(NO_CACHE));
            }
            Kind::Empty => {}
        }
        field("Content-Length", Value::Number(self.body_len() as u64));
        if let Body::Error {
            e: ProxyError::Overloaded(_),
            ..
        } = self.body
        {
            field("Retry-After", Value::Number(RETRY_AFTER_SECONDS.into()));
        }
    }

    /// The whole HTTP/1.1 answer, appended to `out` (no body bytes when answering `HEAD`,
    /// RFC 9110 §9.3.2). Allocates nothing unless `out` must grow.
    pub(crate) fn write_http1(&self, out: &mut Vec<u8>, close: bool, head_only: bool) {
        let reason = canonical_reason(self.status);
        let _ = write!(VecWriter(out), "HTTP/1.1 {} {reason}\r\n", self.status);
        self.fields(|name, value| {
            let _ = match value {
                Value::Text(t) => write!(VecWriter(out), "{name}: {t}\r\n"),
                Value::Number(n) => write!(VecWriter(out), "{name}: {n}\r\n"),
            };
        });
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            self.write_body(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http1(answer: &Answer<'_>, close: bool, head_only: bool) -> String {
        let mut out = Vec::new();
        answer.write_http1(&mut out, close, head_only);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_proxys_own_answers_keep_their_http1_bytes() {
        assert_eq!(
            http1(&Answer::health(), true, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-cache, no-store, \
             must-revalidate\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK"
        );
        assert_eq!(
            http1(&Answer::no_content(), false, false),
            "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            http1(&Answer::json(b"[]"), false, true),
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-cache, \
             no-store, must-revalidate\r\nExpires: 0\r\nPragma: no-cache\r\nContent-Length: \
             2\r\n\r\n"
        );
        let metrics = http1(&Answer::metrics(b"# x\n"), false, false);
        assert!(metrics.starts_with(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
        ));
        assert!(
            metrics.ends_with("Content-Length: 4\r\n\r\n# x\n"),
            "{metrics}"
        );
    }
}
