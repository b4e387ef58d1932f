//! Heads between HTTP/2 and the shared request path: a stream's request is written out as
//! an HTTP/1.1 head (then parsed by the one parser, so framing checks, routing and the
//! rewrite to the executor are the HTTP/1 ones: the one documented conversion), and the
//! answers, an executor's or the proxy's own, become h2 response heads directly.

use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::answer::{Answer, Value};
use crate::http::head::{HeaderRef, ResponseFraming, ResponseHead};
use crate::http::rewrite;

/// Append the HTTP/1.1 head of an h2 request. `:authority` becomes `Host` (RFC 9113
/// §8.3.1: it takes the place of Host, which is then ignored); a body without
/// `content-length` is sent chunked. Cookie fields split by HPACK are joined again (RFC
/// 9113 §8.2.3). h2 has already refused names that are not lowercase tokens, values with
/// CR, LF or NUL, and connection-specific fields.
pub(crate) fn write_request(out: &mut Vec<u8>, parts: &http::request::Parts, has_body: bool) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        field(out, b"host", a.as_str().as_bytes());
    }
    let mut cookie = false;
    for (name, value) in &parts.headers {
        if name == http::header::HOST && authority.is_some() {
            continue;
        }
        if name == http::header::COOKIE {
            if !cookie {
                out.extend_from_slice(b"cookie: ");
                let mut first = true;
                for v in parts.headers.get_all(http::header::COOKIE) {
                    if !first {
                        out.extend_from_slice(b"; ");
                    }
                    first = false;
                    out.extend_from_slice(v.as_bytes());
                }
                out.extend_from_slice(b"\r\n");
                cookie = true;
            }
            continue;
        }
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if has_body && !parts.headers.contains_key(http::header::CONTENT_LENGTH) {
        field(out, b"transfer-encoding", b"chunked");
    }
    out.extend_from_slice(b"\r\n");
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The h2 response head of an executor's answer (head and fields parsed from `buf`):
/// the fields every client gets (`rewrite::forwarded_response_fields`, the one rule
/// HTTP/1 uses too, which drops connection-specific ones, RFC 9113 §8.2.2), the
/// `content-length` of `framing`, and `route` as `x-opr-route` when it is not empty. A
/// field h2 cannot carry (a name or value `http` refuses) is dropped rather than failing
/// the answer.
pub(crate) fn executor_answer(
    buf: &[u8],
    r: &ResponseHead,
    headers: &[HeaderRef],
    framing: ResponseFraming,
    route: &[u8],
) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let map = response.headers_mut();
    for (name, value) in rewrite::forwarded_response_fields(buf, r, headers, framing) {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    if let ResponseFraming::Length(n) = framing {
        map.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    if let (false, Ok(value)) = (route.is_empty(), HeaderValue::from_bytes(route)) {
        map.append(HeaderName::from_static("x-opr-route"), value);
    }
    response
}

/// The h2 response head of an answer the proxy makes itself (`Answer`'s fields; no
/// connection-specific field is among them).
pub(crate) fn own_answer(answer: &Answer<'_>) -> Response<()> {
    let mut response = Response::new(());
    let status = StatusCode::from_u16(answer.status);
    *response.status_mut() = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let map = response.headers_mut();
    answer.fields(|name, value| {
        // RFC 9110 §8.6: a 204 carries no Content-Length (HTTP/1's is for the original's
        // clients).
        if answer.status == 204 && name == "Content-Length" {
            return;
        }
        let value = match value {
            Value::Text(t) => HeaderValue::from_static(t),
            Value::Number(n) => HeaderValue::from(n),
        };
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            map.append(name, value);
        }
    });
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_head_takes_authority_as_host_and_joins_cookies() {
        let request = http::Request::builder()
            .method("POST")
            .uri("http://example.com:8080/a/b?c=d")
            .header("host", "ignored")
            .header("cookie", "a=1")
            .header("x-one", "1")
            .header("cookie", "b=2")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        write_request(&mut out, &parts, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /a/b?c=d HTTP/1.1\r\nhost: example.com:8080\r\ncookie: a=1; b=2\r\n\
             x-one: 1\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn request_with_length_keeps_it_and_without_body_has_no_framing() {
        let request = http::Request::builder()
            .uri("/x")
            .header("host", "h")
            .header("content-length", "3")
            .body(())
            .unwrap();
        let (parts, ()) = request.into_parts();
        let mut out = Vec::new();
        write_request(&mut out, &parts, true);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /x HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn own_answers_carry_their_fields_lowercased() {
        let r = own_answer(&Answer::health());
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["content-length"], "2");
        let r = own_answer(&Answer::no_content());
        assert_eq!(r.status(), 204);
        assert!(r.headers().get("content-length").is_none());
    }
}
