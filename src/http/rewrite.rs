//! Header rewrites for forwarding (docs/behaviour.md §5, RFC 9110 §7.6): the request head sent to an
//! executor and the response head sent back to the client, appended to a caller-owned
//! buffer. Pure and allocation-free beyond the growth of that buffer.

use std::io::Write as _;
use std::net::IpAddr;

use super::head::{
    has_token_bytes, is_hop_by_hop, trim_ows, HeaderRef, RequestFraming, RequestHead,
    ResponseFraming, ResponseHead,
};

/// What the proxy changes in a request on its way to an executor.
pub struct RequestRewrite<'a> {
    /// Full Authorization value for the executor, e.g. `b"Bearer s3cret"`.
    pub authorization: &'a [u8],
    /// The client's address, appended to X-Forwarded-For.
    pub forwarded_for: IpAddr,
    /// `host:port` of the executor: the Host sent when the client sent none (HTTP/1.0).
    pub executor_host: &'a str,
    /// Dev mode: add `x-opr-executor-hostname: <value>`. A client's field of that name is
    /// dropped either way.
    pub dev_executor_hostname: Option<&'a str>,
    /// The proxy answered `100 Continue` itself: drop Expect.
    pub strip_expect: bool,
}

/// What the proxy changes in a response on its way to the client.
pub struct ResponseRewrite {
    /// The framing the client will get.
    pub framing: ResponseFraming,
    /// Add `Connection: close`.
    pub close: bool,
}

/// Appends the head to send to the executor for the request `head` parsed from `buf`:
/// request line with method and target byte-exact, fields in their original order and
/// bytes except for the rewrites of docs/behaviour.md §5, then the framing field and the empty line.
pub fn write_request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    headers: &[HeaderRef],
    rw: &RequestRewrite,
) {
    // We speak HTTP/1.1 to executors whatever the client spoke (RFC 9110 §6.2: an
    // intermediary sends its own version).
    out.extend_from_slice(&buf[head.method.clone()]);
    out.push(b' ');
    out.extend_from_slice(&buf[head.target.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\n");

    let connection = connection_fields(buf, headers);
    let listed = |name: &[u8]| connection_lists(buf, connection, name);

    // RFC 9112 §3.2: HTTP/1.1 needs Host; an HTTP/1.0 client may have sent none. RFC
    // 9110 §7.2: send it first.
    if !headers.iter().any(|h| is(buf, h, b"host")) {
        field(out, b"Host", rw.executor_host.as_bytes());
    }

    let mut authorization_done = false;
    // Only the last X-Forwarded-For line gets the client appended (the nearest hop comes
    // last). If Connection lists it, every copy goes and a fresh one is added.
    let last_xff = if listed(b"x-forwarded-for") {
        None
    } else {
        headers.iter().rposition(|h| is(buf, h, b"x-forwarded-for"))
    };

    for (i, h) in headers.iter().enumerate() {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        // docs/behaviour.md §3, §5: the client's Authorization never reaches an executor; ours takes
        // the place of the first one.
        if name.eq_ignore_ascii_case(b"authorization") {
            if !authorization_done {
                field(out, b"Authorization", rw.authorization);
                authorization_done = true;
            }
            continue;
        }
        // RFC 9110 §7.6.1: hop-by-hop fields and the fields Connection names are
        // removed; Host is exempt, the request cannot do without it.
        if is_hop_by_hop(name) || (listed(name) && !name.eq_ignore_ascii_case(b"host")) {
            continue;
        }
        // Re-emitted from the framing below (RFC 9112 §6.2: never CL together with TE).
        if name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if rw.strip_expect && name.eq_ignore_ascii_case(b"expect") {
            continue;
        }
        // Only we say which executor served the request: a client's copy is never
        // forwarded (it would be spoofable), in production as in dev mode.
        if name.eq_ignore_ascii_case(b"x-opr-executor-hostname") {
            continue;
        }
        if Some(i) == last_xff {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            if !value.is_empty() {
                out.extend_from_slice(b", ");
            }
            push_ip(out, rw.forwarded_for);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        field(out, name, value);
    }

    if !authorization_done {
        field(out, b"Authorization", rw.authorization);
    }
    if last_xff.is_none() {
        out.extend_from_slice(b"X-Forwarded-For: ");
        push_ip(out, rw.forwarded_for);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(host) = rw.dev_executor_hostname {
        field(out, b"x-opr-executor-hostname", host.as_bytes());
    }
    match head.framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => content_length(out, n),
        RequestFraming::Chunked => field(out, b"Transfer-Encoding", b"chunked"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the head to send to the client for the executor's response `head` parsed
/// from `buf`: status line, fields minus hop-by-hop ones, the framing field chosen by
/// the caller, `Connection: close` if asked, and the empty line.
pub fn write_response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &ResponseHead,
    headers: &[HeaderRef],
    rw: &ResponseRewrite,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, head.status);
    out.push(b' ');
    let reason = &buf[head.reason.clone()];
    if reason.is_empty() {
        out.extend_from_slice(canonical_reason(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");

    for (name, value) in forwarded_response_fields(buf, head, headers, rw.framing) {
        field(out, name, value);
    }
    match rw.framing {
        ResponseFraming::NoBody | ResponseFraming::UntilClose => {}
        ResponseFraming::Length(n) => content_length(out, n),
        ResponseFraming::Chunked => field(out, b"Transfer-Encoding", b"chunked"),
    }
    if rw.close {
        field(out, b"Connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// The executor's response fields that reach the client, in order, for HTTP/1 and
/// HTTP/2 alike; the framing field the client's protocol needs is the caller's
/// (`framing`: the one it will get).
pub(crate) fn forwarded_response_fields<'a>(
    buf: &'a [u8],
    head: &ResponseHead,
    headers: &'a [HeaderRef],
    framing: ResponseFraming,
) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
    let connection = connection_fields(buf, headers);
    // RFC 9110 §8.6: a Content-Length in a body-less answer to HEAD or in a 304 describes
    // the representation and passes unchanged; 1xx and 204 never carry one ("MUST NOT
    // send"), so it is dropped there. With a body it is re-emitted from the framing.
    let keep_content_length =
        framing == ResponseFraming::NoBody && head.status >= 200 && head.status != 204;
    headers.iter().filter_map(move |h| {
        let name = &buf[h.name.clone()];
        // RFC 9110 §7.6.1: hop-by-hop fields and the fields Connection names.
        let dropped = is_hop_by_hop(name)
            || connection_lists(buf, connection, name)
            || (!keep_content_length && name.eq_ignore_ascii_case(b"content-length"))
            // Only the proxy explains its routing (docs/behaviour.md §4.4): an
            // executor's copy would mislead, in production as in debug mode.
            || name.eq_ignore_ascii_case(b"x-opr-route");
        (!dropped).then(|| (name, &buf[h.value.clone()]))
    })
}

/// Reason phrase for a status code (RFC 9110 §15); "" for codes it does not define.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        207 => "Multi-Status",
        208 => "Already Reported",
        226 => "IM Used",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        424 => "Failed Dependency",
        425 => "Too Early",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        506 => "Variant Also Negotiates",
        507 => "Insufficient Storage",
        508 => "Loop Detected",
        510 => "Not Extended",
        511 => "Network Authentication Required",
        _ => "",
    }
}

fn is(buf: &[u8], h: &HeaderRef, lower_name: &[u8]) -> bool {
    buf[h.name.clone()].eq_ignore_ascii_case(lower_name)
}

/// The span of `headers` from the first to the last Connection field, so that looking
/// up listed names does not rescan every header. Empty when no Connection field names
/// anything but `close` and fields that are dropped anyway (the usual `keep-alive`).
fn connection_fields<'h>(buf: &[u8], headers: &'h [HeaderRef]) -> &'h [HeaderRef] {
    let Some(first) = headers.iter().position(|h| is(buf, h, b"connection")) else {
        return &[];
    };
    let last = headers
        .iter()
        .rposition(|h| is(buf, h, b"connection"))
        .unwrap_or(first);
    let span = &headers[first..=last];
    let names_others = span.iter().any(|h| {
        is(buf, h, b"connection")
            && buf[h.value.clone()].split(|&b| b == b',').any(|item| {
                let token = trim_ows(item);
                !token.is_empty() && !token.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(token)
            })
    });
    if names_others {
        span
    } else {
        &[]
    }
}

/// Whether a Connection field in `span` lists `name` (RFC 9110 §7.6.1: connection
/// options).
fn connection_lists(buf: &[u8], span: &[HeaderRef], name: &[u8]) -> bool {
    span.iter()
        .any(|h| is(buf, h, b"connection") && has_token_bytes(&buf[h.value.clone()], name))
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Three digits: the parser guarantees 100..=999.
fn push_status(out: &mut Vec<u8>, status: u16) {
    let s = status.min(999);
    out.extend_from_slice(&[
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]);
}

/// Plain address, no brackets or port; an IPv4-mapped IPv6 address (dual-stack
/// listener) is written as the IPv4 address it is.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip.to_canonical() {
        // The common case, without the formatting machinery.
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::head::{parse_request, parse_response};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));

    fn rw() -> RequestRewrite<'static> {
        RequestRewrite {
            authorization: b"Bearer s3cret",
            forwarded_for: CLIENT,
            executor_host: "exc1:80",
            dev_executor_hostname: None,
            strip_expect: false,
        }
    }

    fn request(input: &[u8], rw: &RequestRewrite) -> String {
        let mut headers = Vec::new();
        let head = parse_request(input, &mut headers).unwrap().unwrap();
        let mut out = b"prefix|".to_vec();
        write_request_head(&mut out, input, &head, &headers, rw);
        let out = out.strip_prefix(b"prefix|").expect("appends").to_vec();
        String::from_utf8(out).unwrap()
    }

    fn response(input: &[u8], method_head: bool, framing: ResponseFraming, close: bool) -> String {
        let mut headers = Vec::new();
        let head = parse_response(input, method_head, &mut headers)
            .unwrap()
            .unwrap();
        let mut out = b"prefix|".to_vec();
        write_response_head(
            &mut out,
            input,
            &head,
            &headers,
            &ResponseRewrite { framing, close },
        );
        let out = out.strip_prefix(b"prefix|").expect("appends").to_vec();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn realistic_request() {
        let input = b"POST /v1/runtimes/rt-1/executions?async=false&x=%20y HTTP/1.1\r\n\
Host: proxy.internal:8080\r\n\
User-Agent: Appwrite/1.6\r\n\
Accept: application/json, */*;q=0.5\r\n\
Accept-Encoding: gzip, deflate\r\n\
Content-Type: application/json\r\n\
Authorization: Bearer proxy-secret\r\n\
x-opr-runtime-id: rt-1\r\n\
X-Forwarded-For: 198.51.100.1, 10.0.0.2\r\n\
Connection: keep-alive, X-Internal\r\n\
X-Internal: drop-me\r\n\
Keep-Alive: timeout=5\r\n\
Content-Length: 17\r\n\
\r\n\
{\"path\":\"/hello\"}";
        let out = request(input, &rw());
        assert_eq!(
            out,
            "POST /v1/runtimes/rt-1/executions?async=false&x=%20y HTTP/1.1\r\n\
Host: proxy.internal:8080\r\n\
User-Agent: Appwrite/1.6\r\n\
Accept: application/json, */*;q=0.5\r\n\
Accept-Encoding: gzip, deflate\r\n\
Content-Type: application/json\r\n\
Authorization: Bearer s3cret\r\n\
x-opr-runtime-id: rt-1\r\n\
X-Forwarded-For: 198.51.100.1, 10.0.0.2, 203.0.113.7\r\n\
Content-Length: 17\r\n\
\r\n"
        );
    }

    #[test]
    fn minimal_request_gets_authorization_and_xff_at_the_end() {
        let out = request(b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n", &rw());
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn http10_request_gets_host_and_becomes_1_1() {
        let out = request(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\n", &rw());
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: exc1:80\r\nAccept: */*\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn method_and_target_are_byte_exact() {
        let out = request(
            b"PATCH //x/../y/%2F?q=a+b&&#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            &rw(),
        );
        assert!(
            out.starts_with("PATCH //x/../y/%2F?q=a+b&&#frag HTTP/1.1\r\n"),
            "{out}"
        );
        let out = request(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &rw());
        assert!(out.starts_with("OPTIONS * HTTP/1.1\r\n"), "{out}");
    }

    #[test]
    fn authorization_first_position_extra_dropped() {
        let out = request(
            b"GET / HTTP/1.1\r\nX-A: 1\r\nauthorization: Basic Zm9v\r\nHost: h\r\nAuthorization: Bearer two\r\nX-B: 2\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nX-A: 1\r\nAuthorization: Bearer s3cret\r\nHost: h\r\nX-B: 2\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
        // Even when Connection lists it, ours is sent.
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: authorization\r\nAuthorization: x\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn x_forwarded_for_last_line_only() {
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX: y\r\nx-forwarded-for: 2.2.2.2 , 3.3.3.3\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nX: y\r\nx-forwarded-for: 2.2.2.2 , 3.3.3.3, 203.0.113.7\r\nAuthorization: Bearer s3cret\r\n\r\n"
        );
        // An empty last value gets the address alone.
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:  \r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.7\r\nAuthorization: Bearer s3cret\r\n\r\n"
        );
        // Listed in Connection: every copy goes, a fresh one is added.
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn ipv6_client_address() {
        let mut r = rw();
        r.forwarded_for = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
            &r,
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1, 2001:db8::1\r\nAuthorization: Bearer s3cret\r\n\r\n"
        );
        r.forwarded_for = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let out = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &r);
        assert!(out.contains("\r\nX-Forwarded-For: ::1\r\n"), "{out}");
        // IPv4-mapped (dual-stack listener) is written as IPv4.
        r.forwarded_for = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 9).to_ipv6_mapped());
        let out = request(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", &r);
        assert!(out.contains("\r\nX-Forwarded-For: 192.0.2.9\r\n"), "{out}");
    }

    #[test]
    fn hop_by_hop_and_connection_listed_are_dropped() {
        let out = request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, x-a, Host\r\nUpgrade: websocket\r\nX-A: 1\r\nX-B: 2\r\n\
Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nconnection: x-b\r\n\r\n",
            &rw(),
        );
        // Host survives even when listed.
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn request_framing_is_re_emitted() {
        let out = request(
            b"PUT / HTTP/1.1\r\nContent-Length: 5\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "PUT / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 5\r\n\r\n"
        );
        let out = request(
            b"PUT / HTTP/1.1\r\nContent-Length: 0\r\nHost: h\r\n\r\n",
            &rw(),
        );
        assert!(out.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{out}");
        let out = request(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n",
            &rw(),
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn expect_is_kept_or_stripped() {
        let input =
            b"PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        let out = request(input, &rw());
        assert_eq!(
            out,
            "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 1\r\n\r\n"
        );
        let mut r = rw();
        r.strip_expect = true;
        let out = request(input, &r);
        assert_eq!(
            out,
            "PUT / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 1\r\n\r\n"
        );
    }

    #[test]
    fn dev_mode_executor_hostname() {
        let input =
            b"GET / HTTP/1.1\r\nHost: h\r\nX-OPR-Executor-Hostname: spoofed\r\nX: y\r\n\r\n";
        let mut r = rw();
        r.dev_executor_hostname = Some("exc1");
        assert_eq!(
            request(input, &r),
            "GET / HTTP/1.1\r\nHost: h\r\nX: y\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\nx-opr-executor-hostname: exc1\r\n\r\n"
        );
        // Production drops the client's field too (it must not be spoofable), every copy.
        assert_eq!(
            request(input, &rw()),
            "GET / HTTP/1.1\r\nHost: h\r\nX: y\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
        let input = b"GET / HTTP/1.1\r\nx-opr-executor-hostname: a\r\nHost: h\r\nx-opr-executor-hostname: b\r\n\r\n";
        assert_eq!(
            request(input, &rw()),
            "GET / HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn values_keep_their_bytes() {
        let input = b"GET / HTTP/1.1\r\nHost: h\r\nX-Obs: caf\xe9 \tok\r\nX-Empty:\r\n\r\n";
        let mut headers = Vec::new();
        let head = parse_request(input, &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        write_request_head(&mut out, input, &head, &headers, &rw());
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Obs: caf\xe9 \tok\r\nX-Empty: \r\nAuthorization: Bearer s3cret\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
        );
    }

    #[test]
    fn output_buffer_is_reused_without_reallocation() {
        let input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
        let mut headers = Vec::with_capacity(16);
        let mut out = Vec::with_capacity(1024);
        let (hp, op) = (headers.as_ptr(), out.as_ptr());
        for _ in 0..3 {
            out.clear();
            let head = parse_request(input, &mut headers).unwrap().unwrap();
            write_request_head(&mut out, input, &head, &headers, &rw());
        }
        assert_eq!(headers.as_ptr(), hp);
        assert_eq!(out.as_ptr(), op);
    }

    // ---- responses ----

    #[test]
    fn response_length() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Request-Id: abc\r\n\r\nhello";
        assert_eq!(
            response(input, false, ResponseFraming::Length(5), false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\nContent-Length: 5\r\n\r\n"
        );
        assert_eq!(
            response(input, false, ResponseFraming::Length(5), true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Request-Id: abc\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_chunked_and_until_close() {
        let input =
            b"HTTP/1.1 201 Made\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\nX: 1\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::Chunked, false),
            "HTTP/1.1 201 Made\r\nX: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        // An HTTP/1.0 response delimited by close, re-chunked or passed on until close.
        let input = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::Chunked, false),
            "HTTP/1.1 200 OK\r\nServer: old\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            response(input, false, ResponseFraming::UntilClose, true),
            "HTTP/1.1 200 OK\r\nServer: old\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_no_body_content_length() {
        // HEAD and 304: Content-Length describes the representation, kept unchanged.
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n";
        assert_eq!(
            response(input, true, ResponseFraming::NoBody, false),
            "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: \"x\"\r\n\r\n"
        );
        let input = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::NoBody, false),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
        );
        assert_eq!(
            response(input, true, ResponseFraming::NoBody, false),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"
        );
        // RFC 9110 §8.6: 1xx and 204 carry none (docs/behaviour.md §5), also in answer to HEAD.
        let input = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::NoBody, false),
            "HTTP/1.1 204 No Content\r\n\r\n"
        );
        let input =
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX: 1\r\ncontent-length: 0\r\n\r\n";
        for method_head in [false, true] {
            assert_eq!(
                response(input, method_head, ResponseFraming::NoBody, false),
                "HTTP/1.1 204 No Content\r\nX: 1\r\n\r\n"
            );
        }
        let input = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::NoBody, false),
            "HTTP/1.1 100 Continue\r\n\r\n"
        );
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "103 Early Hints",
            "199 X",
        ] {
            let input = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\nLink: </a>\r\n\r\n");
            assert_eq!(
                response(input.as_bytes(), false, ResponseFraming::NoBody, false),
                format!("HTTP/1.1 {status}\r\nLink: </a>\r\n\r\n")
            );
        }
    }

    #[test]
    fn response_reason_and_status() {
        assert_eq!(
            response(
                b"HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n",
                false,
                ResponseFraming::Length(0),
                false
            ),
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            response(
                b"HTTP/1.1 599 \r\n\r\n",
                false,
                ResponseFraming::UntilClose,
                false
            ),
            "HTTP/1.1 599 \r\n\r\n"
        );
        let mut headers = Vec::new();
        let input = b"HTTP/1.1 418 I'm a t\xe9apot\r\nContent-Length: 0\r\n\r\n";
        let head = parse_response(input, false, &mut headers).unwrap().unwrap();
        let mut out = Vec::new();
        let rw = ResponseRewrite {
            framing: ResponseFraming::Length(0),
            close: false,
        };
        write_response_head(&mut out, input, &head, &headers, &rw);
        assert_eq!(
            out,
            b"HTTP/1.1 418 I'm a t\xe9apot\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn response_connection_listed_dropped() {
        let input = b"HTTP/1.1 200 OK\r\nConnection: close, X-Private\r\nX-Private: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::Length(0), true),
            "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn executors_route_explanation_is_dropped() {
        let input = b"HTTP/1.1 200 OK\r\nX-Opr-Route: executor=evil; tier=1\r\nX: 1\r\nx-opr-route: b\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::Length(0), false),
            "HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn response_whitespace_before_colon_removed() {
        let input = b"HTTP/1.1 200 OK\r\nX-Odd  : v\r\nContent-Length : 0\r\n\r\n";
        assert_eq!(
            response(input, false, ResponseFraming::Length(0), false),
            "HTTP/1.1 200 OK\r\nX-Odd: v\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn numbers() {
        let mut out = Vec::new();
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            out.clear();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        out.clear();
        push_status(&mut out, 100);
        push_status(&mut out, 204);
        push_status(&mut out, 999);
        assert_eq!(out, b"100204999");
        assert_eq!(canonical_reason(200), "OK");
        assert_eq!(canonical_reason(413), "Content Too Large");
        assert_eq!(canonical_reason(299), "");
    }
}
