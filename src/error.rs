//! Every error the proxy answers itself: one enum, one mapping to status + message, one
//! JSON shape with the no-cache headers of SPEC §7, rendered in one place.

use std::fmt::Write as _;

use crate::http::chunked::ChunkedError;
use crate::http::head::HeadError;

/// An error answered by the proxy (never by an executor).
#[derive(Clone, Debug, PartialEq)]
pub enum ProxyError {
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
    /// The executor failed before its response head; the detail is shown in dev mode only.
    BadGateway(String),
    /// The whole-request deadline passed before the executor's response head.
    GatewayTimeout,
}

impl ProxyError {
    pub fn status(&self) -> u16 {
        match self {
            ProxyError::Unauthorized => 401,
            ProxyError::NoOnlineExecutor => 404,
            ProxyError::BadHead(e) => e.status(),
            ProxyError::BadChunk(_) => 400,
            ProxyError::BodyTooLarge => 413,
            ProxyError::HeadTimeout | ProxyError::BodyTimeout => 408,
            ProxyError::BadGateway(_) => 502,
            ProxyError::GatewayTimeout => 504,
        }
    }

    pub fn message(&self) -> &'static str {
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
        }
    }

    /// Extra detail shown only in dev mode (may name executors).
    fn detail(&self) -> Option<String> {
        match self {
            ProxyError::BadGateway(cause) => Some(cause.clone()),
            ProxyError::BadChunk(e) => Some(format!("{e:?}")),
            ProxyError::BadHead(e) => Some(format!("{e:?}")),
            _ => None,
        }
    }

    /// After answering this error the client connection must close: the rest of the
    /// request (its body) was not read, or the stream is out of sync.
    pub fn closes_connection(&self) -> bool {
        !matches!(
            self,
            ProxyError::Unauthorized | ProxyError::NoOnlineExecutor
        )
    }

    /// The whole response: status line, SPEC §7 headers and JSON body (no body bytes
    /// when answering `HEAD`, RFC 9110 §9.3.2).
    pub fn write_response(
        &self,
        out: &mut Vec<u8>,
        version: &str,
        dev: bool,
        close: bool,
        head_only: bool,
    ) {
        let body = self.body(version, dev);
        write_json_response(out, self.status(), &body, close, head_only);
    }

    pub fn body(&self, version: &str, dev: bool) -> String {
        let mut body = String::with_capacity(96);
        body.push_str("{\"message\":");
        push_json_string(&mut body, self.message());
        let _ = write!(body, ",\"code\":{}", self.status());
        body.push_str(",\"version\":");
        push_json_string(&mut body, version);
        if dev {
            if let Some(detail) = self.detail() {
                body.push_str(",\"detail\":");
                push_json_string(&mut body, &detail);
            }
        }
        body.push('}');
        body
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.detail() {
            Some(d) => write!(f, "{} ({d})", self.message()),
            None => f.write_str(self.message()),
        }
    }
}

/// A JSON response with the no-cache headers every proxy-made answer carries.
pub fn write_json_response(
    out: &mut Vec<u8>,
    status: u16,
    body: &str,
    close: bool,
    head_only: bool,
) {
    let reason = crate::http::rewrite::canonical_reason(status);
    let _ = write!(
        Adapter(out),
        "HTTP/1.1 {status} {reason}\r\n\
         Content-Type: application/json\r\n\
         Cache-Control: no-cache, no-store, must-revalidate\r\n\
         Expires: 0\r\n\
         Pragma: no-cache\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
}

/// Append `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `fmt::Write` into a byte buffer without an intermediate String.
struct Adapter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Adapter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(e: &ProxyError, dev: bool, close: bool) -> String {
        let mut out = Vec::new();
        e.write_response(&mut out, "1.2.3", dev, close, false);
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
        let e = ProxyError::BadGateway("connection reset by 10.0.0.7:80".into());
        assert!(!render(&e, false, true).contains("10.0.0.7"));
        let dev = render(&e, true, true);
        assert!(dev.contains(r#""detail":"connection reset by 10.0.0.7:80""#));
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
        ProxyError::NoOnlineExecutor.write_response(&mut out, "1", false, false, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 63"), "{text}");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_string(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
    }
}
