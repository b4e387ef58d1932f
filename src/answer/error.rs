//! Every error the proxy answers itself: one enum, one mapping to status and message, and
//! the JSON body of docs/behaviour.md §7 (its fields are `Answer`'s).

use std::fmt::Write as _;

use crate::http::chunked::ChunkedError;
use crate::http::head::HeadError;
use crate::outcome::{Cause, Shed};
use crate::text::JsonEscape;

/// An error answered by the proxy (never by an executor).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum ProxyError {
    /// Missing or wrong key in `Authorization`.
    Unauthorized,
    /// No executor in any tier.
    NoOnlineExecutor,
    /// The request head broke a framing or grammar rule.
    BadHead(HeadError),
    /// A chunked request body broke RFC 9112 §7.1.
    BadChunk(ChunkedError),
    /// The request body is over `OPR_PROXY_MAX_BODY_SIZE` (or the broadcast buffer).
    BodyTooLarge,
    /// The request head did not arrive within `OPR_PROXY_HEADER_TIMEOUT`.
    HeadTimeout,
    /// The request body stalled longer than `OPR_PROXY_BODY_TIMEOUT`.
    BodyTimeout,
    /// The executor failed before its response head; the cause is shown in dev mode only.
    BadGateway(Cause),
    /// The whole-request deadline passed before the executor's response head.
    GatewayTimeout,
    /// Every executor is at `OPR_PROXY_EXECUTOR_CONCURRENCY` and the request could not
    /// wait for a slot (`503` with `Retry-After`).
    Overloaded(Shed),
}

/// `Retry-After` of a `503` for lack of capacity (RFC 9110 §10.2.3), in seconds: soon, so
/// a client retries once the burst passed (or on another replica when this one stops).
pub(crate) const RETRY_AFTER_SECONDS: u32 = 1;

impl ProxyError {
    pub(crate) fn status(&self) -> u16 {
        match self {
            ProxyError::Unauthorized => 401,
            ProxyError::NoOnlineExecutor => 404,
            ProxyError::BadHead(e) => e.status(),
            ProxyError::BadChunk(_) => 400,
            ProxyError::BodyTooLarge => 413,
            ProxyError::HeadTimeout | ProxyError::BodyTimeout => 408,
            ProxyError::BadGateway(_) => 502,
            ProxyError::GatewayTimeout => 504,
            ProxyError::Overloaded(_) => 503,
        }
    }

    pub(crate) fn message(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized => "Incorrect proxy key.",
            ProxyError::NoOnlineExecutor => "No online executor found",
            ProxyError::BadHead(e) => e.message(),
            ProxyError::BadChunk(_) => "Malformed chunked request body.",
            ProxyError::BodyTooLarge => "Request body is too large.",
            ProxyError::HeadTimeout => "Request head was not received in time.",
            ProxyError::BodyTimeout => "Request body was not received in time.",
            ProxyError::BadGateway(_) => "Executor failed to answer the request.",
            ProxyError::GatewayTimeout => "Executor did not answer in time.",
            ProxyError::Overloaded(Shed::QueueFull) => {
                "Every executor is at its concurrency limit and the queue is full."
            }
            ProxyError::Overloaded(Shed::QueueTimeout) => {
                "Every executor stayed at its concurrency limit for the queue timeout."
            }
            ProxyError::Overloaded(Shed::Draining) => {
                "The proxy is shutting down; the request was not sent to an executor."
            }
        }
    }

    /// Extra detail shown only in dev mode.
    fn detail(&self, f: &mut dyn std::fmt::Write) -> std::fmt::Result {
        match self {
            ProxyError::BadGateway(cause) => write!(f, "{cause}"),
            ProxyError::BadChunk(e) => write!(f, "{e:?}"),
            ProxyError::BadHead(e) => write!(f, "{e:?}"),
            _ => Ok(()),
        }
    }

    fn has_detail(&self) -> bool {
        matches!(
            self,
            ProxyError::BadGateway(_) | ProxyError::BadChunk(_) | ProxyError::BadHead(_)
        )
    }

    /// After answering this error the client connection must close: the rest of the
    /// request was not read, or the stream is out of step. The others close only when
    /// the caller says the request was not read whole.
    pub(crate) fn closes_connection(&self) -> bool {
        !matches!(
            self,
            ProxyError::Unauthorized
                | ProxyError::NoOnlineExecutor
                | ProxyError::BadGateway(_)
                | ProxyError::GatewayTimeout
                | ProxyError::Overloaded(_)
        )
    }

    /// The length of the JSON body `write_body` writes.
    pub(super) fn body_len(&self, version: &str, dev: bool) -> usize {
        let mut counter = Counter(0);
        let _ = self.write_body(&mut counter, version, dev);
        counter.0
    }

    /// The JSON body of docs/behaviour.md §7 (with `detail` in dev mode), as a String.
    #[cfg(test)]
    pub(crate) fn body(&self, version: &str, dev: bool) -> String {
        let mut body = String::new();
        let _ = self.write_body(&mut body, version, dev);
        body
    }

    /// The JSON body of docs/behaviour.md §7 (with `detail` in dev mode).
    pub(super) fn write_body(
        &self,
        w: &mut dyn std::fmt::Write,
        version: &str,
        dev: bool,
    ) -> std::fmt::Result {
        w.write_str("{\"message\":")?;
        write_json_string(w, self.message())?;
        write!(w, ",\"code\":{}", self.status())?;
        w.write_str(",\"version\":")?;
        write_json_string(w, version)?;
        if dev && self.has_detail() {
            w.write_str(",\"detail\":")?;
            let mut escaped = JsonEscape(w);
            escaped.0.write_char('"')?;
            self.detail(&mut escaped)?;
            escaped.0.write_char('"')?;
        }
        w.write_char('}')
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())?;
        if self.has_detail() {
            f.write_str(" (")?;
            self.detail(f)?;
            f.write_str(")")?;
        }
        Ok(())
    }
}

fn write_json_string(w: &mut dyn std::fmt::Write, s: &str) -> std::fmt::Result {
    w.write_char('"')?;
    JsonEscape(w).write_str(s)?;
    w.write_char('"')
}

/// Counts the bytes a body will take, so its Content-Length is known before writing.
struct Counter(usize);

impl std::fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(e: &ProxyError, dev: bool, close: bool) -> String {
        let mut out = Vec::new();
        super::super::Answer::error_with(*e, "1.2.3", dev).write_http1(&mut out, close, false);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn unauthorized_has_spec_shape() {
        let text = render(&ProxyError::Unauthorized, false, false);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 401 Unauthorized\r\n"));
        for h in [
            "Content-Type: application/json",
            "Cache-Control: no-cache, no-store, must-revalidate",
            "Expires: 0",
            "Pragma: no-cache",
        ] {
            assert!(head.contains(h), "missing {h} in {head}");
        }
        assert!(!head.contains("Connection: close"));
        assert_eq!(
            body,
            r#"{"message":"Incorrect proxy key.","code":401,"version":"1.2.3"}"#
        );
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn detail_only_in_dev_mode() {
        let e = ProxyError::BadGateway(Cause::ClosedBeforeAnswer);
        assert!(!render(&e, false, true).contains("detail"));
        let dev = render(&e, true, true);
        assert!(dev.contains(r#""detail":"executor closed the connection before answering""#));
        let (head, body) = dev.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{dev}"
        );
        assert_eq!(body, e.body("1.2.3", true));
        assert!(dev.contains("Connection: close"));
        assert!(dev.starts_with("HTTP/1.1 502 Bad Gateway"));
    }

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::NoOnlineExecutor.status(), 404);
        assert_eq!(ProxyError::BodyTooLarge.status(), 413);
        assert_eq!(ProxyError::GatewayTimeout.status(), 504);
        assert_eq!(ProxyError::HeadTimeout.status(), 408);
        assert_eq!(ProxyError::BadHead(HeadError::HeadTooLarge).status(), 431);
        assert_eq!(
            ProxyError::BadHead(HeadError::UnsupportedTransferEncoding).status(),
            501
        );
    }

    #[test]
    fn head_answers_have_headers_but_no_body() {
        let mut out = Vec::new();
        let answer = super::super::Answer::error_with(ProxyError::NoOnlineExecutor, "1", false);
        answer.write_http1(&mut out, false, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 63"), "{text}");
    }

    #[test]
    fn overload_answers_are_503_with_retry_after() {
        for shed in Shed::ALL {
            let e = ProxyError::Overloaded(shed);
            let text = render(&e, false, false);
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
                "{head}"
            );
            assert!(head.lines().any(|l| l == "Retry-After: 1"), "{head}");
            assert!(head.contains("Content-Type: application/json"), "{head}");
            assert!(
                body.contains("\"code\":503") && body.contains(e.message()),
                "{body}"
            );
            assert!(!e.closes_connection());
        }
        // Other errors carry no Retry-After.
        assert!(!render(&ProxyError::NoOnlineExecutor, false, false).contains("Retry-After"));
        let labels: Vec<_> = Shed::ALL.iter().map(|s| s.label()).collect();
        assert_eq!(labels, ["queue_full", "queue_timeout", "draining"]);
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        let _ = write_json_string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
    }
}
