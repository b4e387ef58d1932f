//! Request and response heads (RFC 9112 §2–§6): line and field grammar through
//! `httparse`, size limits, request-target form, Host, and the message-body framing
//! decision. Pure: positions go into a caller-owned `Vec<HeaderRef>`, nothing allocates.

use std::ops::Range;

/// Longest request line (method SP target SP version, without CRLF); longer → 414.
pub(crate) const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest head including the final empty line; longer → 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header field lines in one head; more → 431.
pub const MAX_HEADERS: usize = 100;

/// One field line: `name` and `value` are offsets into the parsed buffer. The value has
/// its leading and trailing whitespace removed (RFC 9112 §5.1: OWS is not part of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderRef {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// How a request's body is delimited (RFC 9112 §6.3 items 3–7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// Neither Content-Length nor Transfer-Encoding: no body.
    Empty,
    /// Content-Length given (may be 0).
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

/// How a response's body is delimited (RFC 9112 §6.3 items 1–8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFraming {
    /// HEAD request, 1xx, 204 or 304: the head is the whole message.
    NoBody,
    Length(u64),
    Chunked,
    /// The body runs until the executor closes the connection.
    UntilClose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 or 1.
    pub minor_version: u8,
    /// Bytes of the buffer taken by the head; the body starts here.
    pub head_len: usize,
    pub framing: RequestFraming,
    /// HTTP/1.1 and no `close` in Connection. HTTP/1.0 is always false: we do not
    /// implement HTTP/1.0 keep-alive.
    pub keep_alive: bool,
    /// HTTP/1.1 and `Expect: 100-continue` (case-insensitive).
    pub expect_continue: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Reason phrase bytes as sent (may be empty, may hold obs-text).
    pub reason: Range<usize>,
    pub minor_version: u8,
    pub head_len: usize,
    pub framing: ResponseFraming,
    /// HTTP/1.1 and no `close` in Connection; HTTP/1.0 is always false. Says nothing
    /// about framing: an `UntilClose` body also ends the connection.
    pub keep_alive: bool,
}

impl RequestHead {
    /// The request carries body bytes. A request the proxy answers itself without reading
    /// its body must close the connection after the answer.
    pub fn has_body(&self) -> bool {
        !matches!(
            self.framing,
            RequestFraming::Empty | RequestFraming::Length(0)
        )
    }
}

/// Why a head was refused. For requests the status is what the client gets; for
/// responses the caller answers 502 whatever the variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    Malformed(&'static str),
    UriTooLong,
    HeadTooLarge,
    TooManyHeaders,
    ConflictingFraming,
    BadContentLength,
    UnsupportedTransferEncoding,
    TargetForm,
    /// A CONNECT request: it takes an authority-form target (RFC 9112 §3.2.3), which we
    /// refuse like every form but origin-form; in any other form it is malformed.
    Connect,
    MissingHost,
    DuplicateHost,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge | HeadError::TooManyHeaders => 431,
            HeadError::UnsupportedTransferEncoding => 501,
            HeadError::Malformed(_)
            | HeadError::ConflictingFraming
            | HeadError::BadContentLength
            | HeadError::TargetForm
            | HeadError::Connect
            | HeadError::MissingHost
            | HeadError::DuplicateHost => 400,
        }
    }

    /// A short sentence naming the rule; never echoes bytes of the message.
    pub fn message(&self) -> &'static str {
        match self {
            HeadError::Malformed(why) => why,
            HeadError::UriTooLong => "Request line is longer than 8 KiB.",
            HeadError::HeadTooLarge => "Header section is larger than 64 KiB.",
            HeadError::TooManyHeaders => "More than 100 header fields.",
            HeadError::ConflictingFraming => {
                "Both Content-Length and Transfer-Encoding are present."
            }
            HeadError::BadContentLength => {
                "Content-Length is not a number, or several Content-Length values differ."
            }
            HeadError::UnsupportedTransferEncoding => {
                "Transfer-Encoding other than chunked is not supported."
            }
            HeadError::TargetForm => {
                "Request target must be a path (origin-form); absolute and authority forms are refused."
            }
            HeadError::Connect => {
                "CONNECT is refused: it takes an authority-form target, which this proxy does not accept."
            }
            HeadError::MissingHost => "HTTP/1.1 request without a Host header.",
            HeadError::DuplicateHost => "More than one Host header.",
        }
    }
}

/// Parses a request head from the start of `buf`.
///
/// `Ok(None)`: incomplete, read more — unless a limit is already exceeded by the bytes
/// at hand, which is reported at once so that a client cannot stream an endless head.
/// `headers` is cleared and receives every field line in order.
pub fn parse_request(
    buf: &[u8],
    headers: &mut Vec<HeaderRef>,
) -> Result<Option<RequestHead>, HeadError> {
    headers.clear();
    // Nothing past MAX_HEAD can belong to an acceptable head: httparse never looks there.
    let window = &buf[..buf.len().min(MAX_HEAD)];
    if request_line_too_long(window) {
        return Err(HeadError::UriTooLong);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(buf),
        Err(e) => return Err(from_httparse(e)),
    };
    let (Some(method), Some(target), Some(minor_version)) = (req.method, req.path, req.version)
    else {
        return Err(HeadError::Malformed("Malformed request line."));
    };
    for h in req.headers.iter() {
        headers.push(HeaderRef {
            name: range_in(buf, h.name.as_bytes()),
            value: range_in(buf, h.value),
        });
    }

    // RFC 9112 §3.2: origin-form is the only form a server sends on; asterisk-form is
    // for OPTIONS only (§3.2.4). §3.2.2 asks servers to accept absolute-form, but we are
    // not a forward proxy (docs/behaviour.md §5): absolute and authority forms are refused.
    // §3.2.3: CONNECT takes authority-form only, so a CONNECT in any form is refused
    // (in origin-form it is malformed, not a request for that path).
    if method == "CONNECT" {
        return Err(HeadError::Connect);
    }
    let t = target.as_bytes();
    let origin_form = t.first() == Some(&b'/');
    let asterisk = t == b"*" && method == "OPTIONS";
    if !origin_form && !asterisk {
        return Err(HeadError::TargetForm);
    }

    let fields = scan_fields(buf, headers);
    // RFC 9112 §3.2: 400 for an HTTP/1.1 request without Host, for any request with more
    // than one Host line, and for a Host with an invalid value.
    if fields.hosts > 1 {
        return Err(HeadError::DuplicateHost);
    }
    if fields.hosts == 0 && minor_version == 1 {
        return Err(HeadError::MissingHost);
    }
    if fields.bad_host {
        return Err(HeadError::Malformed("Invalid Host header value."));
    }

    let framing = request_framing(&fields, minor_version)?;

    Ok(Some(RequestHead {
        method: range_in(buf, method.as_bytes()),
        target: range_in(buf, t),
        minor_version,
        head_len,
        framing,
        keep_alive: minor_version == 1 && !fields.close,
        // RFC 9110 §10.1.1: a 100-continue expectation in HTTP/1.0 is ignored.
        expect_continue: minor_version == 1 && fields.expect_continue,
    }))
}

/// Parses a response head from the start of `buf`. `request_method_is_head` and the
/// status decide `NoBody` (HEAD, 1xx, 204, 304).
pub fn parse_response(
    buf: &[u8],
    request_method_is_head: bool,
    headers: &mut Vec<HeaderRef>,
) -> Result<Option<ResponseHead>, HeadError> {
    headers.clear();
    let window = &buf[..buf.len().min(MAX_HEAD)];
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    // RFC 9112 §5.1: a proxy MUST remove whitespace between a response field name and
    // the colon before forwarding: accept it (the name range excludes it) and rewrite.
    let parsed = httparse::ParserConfig::default()
        .allow_spaces_after_header_name_in_responses(true)
        .parse_response(&mut resp, window);
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return incomplete(buf),
        Err(e) => return Err(from_httparse(e)),
    };
    let (Some(minor_version), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Malformed("Malformed status line."));
    };
    // RFC 9112 §4: status-code = 3DIGIT. RFC 9110 §15 calls only 100..=599 valid; we
    // pass 600..=999 on (clients treat them as 5xx) and refuse what cannot be a status.
    if status < 100 {
        return Err(HeadError::Malformed("Status code is below 100."));
    }
    for h in resp.headers.iter() {
        headers.push(HeaderRef {
            name: range_in(buf, h.name.as_bytes()),
            value: range_in(buf, h.value),
        });
    }
    let reason = reason_range(window);

    let fields = scan_fields(buf, headers);
    let no_body = request_method_is_head || status < 200 || status == 204 || status == 304;
    let framing = response_framing_of(&fields, minor_version, no_body)?;

    Ok(Some(ResponseHead {
        status,
        reason,
        minor_version,
        head_len,
        framing,
        keep_alive: minor_version == 1 && !fields.close,
    }))
}

/// How a request's body is framed (RFC 9112 §6), from its fields; what cannot be
/// framed safely is refused.
fn request_framing(fields: &Fields, minor_version: u8) -> Result<RequestFraming, HeadError> {
    let framing = if fields.te.present {
        // RFC 9112 §6.3 item 3: TE overrides CL, but such a message "ought to be handled
        // as an error" (smuggling): we refuse it.
        if fields.cl != ContentLength::Absent {
            return Err(HeadError::ConflictingFraming);
        }
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        if minor_version == 0 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding is not allowed in an HTTP/1.0 request.",
            ));
        }
        // RFC 9112 §6.1: chunked must not be applied more than once.
        if fields.te.chunked > 1 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding lists chunked twice.",
            ));
        }
        // RFC 9112 §6.1: an unknown transfer coding → 501. We also refuse codings
        // before chunked: Transfer-Encoding is hop-by-hop and re-framed, so passing the
        // body on without them would change its meaning.
        if fields.te.other {
            return Err(HeadError::UnsupportedTransferEncoding);
        }
        // RFC 9112 §6.3 item 4: chunked not final in a request (here: no coding at all)
        // → 400.
        if fields.te.chunked == 0 {
            return Err(HeadError::Malformed("Transfer-Encoding names no coding."));
        }
        RequestFraming::Chunked
    } else {
        match fields.cl {
            // RFC 9112 §6.3 item 7: a request without CL or TE has no body.
            ContentLength::Absent => RequestFraming::Empty,
            // RFC 9112 §6.3 item 6.
            ContentLength::Valid(n) => RequestFraming::Length(n),
            // RFC 9112 §6.3 item 5: invalid CL in a request → 400.
            ContentLength::Invalid => return Err(HeadError::BadContentLength),
        }
    };
    Ok(framing)
}

/// How a response's body is framed (RFC 9112 §6), from its fields and whether it can
/// have a body at all; what cannot be relayed safely is refused.
fn response_framing_of(
    fields: &Fields,
    minor_version: u8,
    no_body: bool,
) -> Result<ResponseFraming, HeadError> {
    let framing = if no_body {
        // RFC 9112 §6.3 item 1: HEAD, 1xx, 204 and 304 end at the empty line whatever
        // the fields say. TE is ignored, whatever codings it names (hop-by-hop, dropped
        // on rewrite, and there is no body it could apply to); CL is
        // forwarded unchanged, so it must at least be valid.
        if fields.cl == ContentLength::Invalid {
            return Err(HeadError::BadContentLength);
        }
        ResponseFraming::NoBody
    } else if fields.te.present {
        // RFC 9112 §6.3 item 3: CL together with TE is refused (response splitting).
        if fields.cl != ContentLength::Absent {
            return Err(HeadError::ConflictingFraming);
        }
        // RFC 9112 §6.1: Transfer-Encoding in an HTTP/1.0 message means faulty framing.
        if minor_version == 0 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding is not allowed in an HTTP/1.0 response.",
            ));
        }
        // RFC 9112 §6.1: chunked must not be applied more than once.
        if fields.te.chunked > 1 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding lists chunked twice.",
            ));
        }
        // docs/behaviour.md §5: a coding other than chunked is never stripped. Transfer-Encoding is
        // hop-by-hop and the body is re-framed, so relaying it would hand the client
        // coded bytes without their coding: refused (the caller answers 502). This
        // includes chunked not final (RFC 9112 §6.3 item 4 would read until close).
        if fields.te.other {
            return Err(HeadError::UnsupportedTransferEncoding);
        }
        // Only chunked is left: decode chunks. A field naming no coding at all frames
        // nothing (RFC 9112 §6.3 item 4: chunked is not final) → until close.
        if fields.te.last_chunked {
            ResponseFraming::Chunked
        } else {
            ResponseFraming::UntilClose
        }
    } else {
        match fields.cl {
            // RFC 9112 §6.3 item 8: no declared length → until close.
            ContentLength::Absent => ResponseFraming::UntilClose,
            // RFC 9112 §6.3 item 6.
            ContentLength::Valid(n) => ResponseFraming::Length(n),
            // RFC 9112 §6.3 item 5: invalid CL from the server → discard, 502.
            ContentLength::Invalid => return Err(HeadError::BadContentLength),
        }
    };
    Ok(framing)
}

/// Value of the first field named `name` (case-insensitive).
pub(crate) fn find_header<'b>(
    buf: &'b [u8],
    headers: &[HeaderRef],
    name: &str,
) -> Option<&'b [u8]> {
    headers
        .iter()
        .find(|h| buf[h.name.clone()].eq_ignore_ascii_case(name.as_bytes()))
        .map(|h| &buf[h.value.clone()])
}

/// The target up to (not including) the first `?`.
pub(crate) fn path_of(target: &[u8]) -> &[u8] {
    match target.iter().position(|&b| b == b'?') {
        Some(i) => &target[..i],
        None => target,
    }
}

/// Whether the comma-separated list `value` holds `token` (case-insensitive, OWS
/// around elements ignored; RFC 9110 §5.6.1).
pub(crate) fn has_token(value: &[u8], token: &str) -> bool {
    has_token_bytes(value, token.as_bytes())
}

pub(crate) fn has_token_bytes(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|item| trim_ows(item).eq_ignore_ascii_case(token))
}

/// Hop-by-hop fields (RFC 9110 §7.6.1 and the usual legacy ones): never forwarded.
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    let eq = |lower: &[u8]| name.eq_ignore_ascii_case(lower);
    // Dispatch on length first: it is called for every forwarded field.
    match name.len() {
        2 => eq(b"te"),
        7 => eq(b"trailer") || eq(b"upgrade"),
        10 => eq(b"connection") || eq(b"keep-alive"),
        16 => eq(b"proxy-connection"),
        17 => eq(b"transfer-encoding"),
        _ => false,
    }
}

/// RFC 9110 §5.6.2 tchar.
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strips optional whitespace (SP / HTAB) at both ends (RFC 9110 §5.6.3).
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Offsets of `part`, a sub-slice of `buf`, within `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    debug_assert!(start + part.len() <= buf.len());
    start..start + part.len()
}

/// An incomplete head is refused once it can no longer fit in MAX_HEAD.
fn incomplete<T>(buf: &[u8]) -> Result<Option<T>, HeadError> {
    if buf.len() >= MAX_HEAD {
        Err(HeadError::HeadTooLarge)
    } else {
        Ok(None)
    }
}

fn from_httparse(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::HeaderName => HeadError::Malformed(
            "Invalid header line: names are tokens, no space before the colon, no line folding.",
        ),
        httparse::Error::HeaderValue => {
            HeadError::Malformed("Invalid header value: control characters are not allowed.")
        }
        httparse::Error::NewLine => HeadError::Malformed("Invalid line ending."),
        httparse::Error::Status => HeadError::Malformed("Malformed status line."),
        httparse::Error::Token => HeadError::Malformed("Malformed request line."),
        httparse::Error::Version => {
            HeadError::Malformed("Unsupported HTTP version: HTTP/1.0 or HTTP/1.1 only.")
        }
    }
}

/// Start of the start-line: httparse skips empty lines before it (RFC 9112 §2.2).
fn start_line_offset(buf: &[u8]) -> usize {
    buf.iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len())
}

/// True when the request line (without its line ending) is longer than
/// MAX_REQUEST_LINE, judged on the bytes at hand even if the line is not complete.
fn request_line_too_long(buf: &[u8]) -> bool {
    let line = &buf[start_line_offset(buf)..];
    let seen = &line[..line.len().min(MAX_REQUEST_LINE + 2)];
    let content = match seen.iter().position(|&b| b == b'\n') {
        Some(lf) => &seen[..lf],
        None => seen,
    };
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    content.len() > MAX_REQUEST_LINE
}

/// The reason phrase as sent, taken from the bytes because httparse replaces a phrase
/// holding obs-text with "". Only called after httparse accepted the status line, which
/// is then exactly `HTTP/1.x SP 3DIGIT [SP reason] (CRLF | LF)`.
fn reason_range(buf: &[u8]) -> Range<usize> {
    let start = start_line_offset(buf);
    let line = &buf[start..];
    let lf = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    let line = &line[..lf];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > 12 && line[12] == b' ' {
        start + 13..start + line.len()
    } else {
        start + line.len()..start + line.len()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ContentLength {
    Absent,
    Valid(u64),
    Invalid,
}

#[derive(Default)]
struct TransferCodings {
    present: bool,
    /// How many times `chunked` appears.
    chunked: u32,
    /// Some coding other than chunked appears.
    other: bool,
    /// The final coding is chunked.
    last_chunked: bool,
}

/// What the framing and connection decisions need, in one pass over the fields.
struct Fields {
    hosts: u32,
    bad_host: bool,
    cl: ContentLength,
    te: TransferCodings,
    close: bool,
    expect_continue: bool,
}

fn scan_fields(buf: &[u8], headers: &[HeaderRef]) -> Fields {
    let mut f = Fields {
        hosts: 0,
        bad_host: false,
        cl: ContentLength::Absent,
        te: TransferCodings::default(),
        close: false,
        expect_continue: false,
    };
    for h in headers {
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        // Dispatch on length first: most fields are none of these.
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                f.hosts += 1;
                // RFC 9110 §7.2: Host = uri-host [ ":" port ]; an empty value is allowed.
                f.bad_host |= !value.iter().all(|&b| is_host_char(b));
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                f.expect_continue |= has_token(value, "100-continue");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                f.close |= has_token(value, "close");
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                f.cl = merge_content_length(f.cl, value);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                f.te.present = true;
                // RFC 9112 §6.1: codings listed over several lines form one list, in order.
                for item in value.split(|&b| b == b',') {
                    let coding = trim_ows(item);
                    // RFC 9110 §5.6.1.2: empty list elements are ignored.
                    if coding.is_empty() {
                        continue;
                    }
                    let chunked = coding.eq_ignore_ascii_case(b"chunked");
                    if chunked {
                        f.te.chunked += 1;
                    } else {
                        f.te.other = true;
                    }
                    f.te.last_chunked = chunked;
                }
            }
            _ => {}
        }
    }
    f
}

/// RFC 9112 §6.3 item 5 / RFC 9110 §8.6: Content-Length is 1*DIGIT; several lines or a
/// comma list are accepted only when every value is valid and all are equal.
fn merge_content_length(acc: ContentLength, value: &[u8]) -> ContentLength {
    let mut acc = acc;
    let mut any = false;
    for item in value.split(|&b| b == b',') {
        let item = trim_ows(item);
        // RFC 9110 §5.6.1.2: empty list elements are ignored.
        if item.is_empty() {
            continue;
        }
        any = true;
        let Some(n) = parse_decimal(item) else {
            return ContentLength::Invalid;
        };
        acc = match acc {
            ContentLength::Absent => ContentLength::Valid(n),
            ContentLength::Valid(m) if m == n => acc,
            _ => return ContentLength::Invalid,
        };
    }
    if any {
        acc
    } else {
        ContentLength::Invalid
    }
}

/// 1*DIGIT into u64; None on any other byte or on overflow.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Bytes of uri-host (reg-name, IPv4, IP-literal) and port (RFC 3986 §3.2.2–3.2.3).
fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut h = Vec::new();
        parse_request(bytes, &mut h)
    }

    fn req_ok(bytes: &[u8]) -> RequestHead {
        req(bytes).expect("valid").expect("complete")
    }

    fn req_err(bytes: &[u8]) -> HeadError {
        req(bytes).expect_err("should be refused")
    }

    fn resp(bytes: &[u8], head: bool) -> Result<Option<ResponseHead>, HeadError> {
        let mut h = Vec::new();
        parse_response(bytes, head, &mut h)
    }

    fn resp_ok(bytes: &[u8]) -> ResponseHead {
        resp(bytes, false).expect("valid").expect("complete")
    }

    fn resp_err(bytes: &[u8]) -> HeadError {
        resp(bytes, false).expect_err("should be refused")
    }

    fn malformed(e: HeadError) -> bool {
        matches!(e, HeadError::Malformed(_))
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /v1/runtimes?x=1 HTTP/1.1\r\nHost: proxy\r\nAccept: */*\r\n\r\nBODY";
        let mut hs = Vec::new();
        let h = parse_request(buf, &mut hs).unwrap().unwrap();
        assert_eq!(&buf[h.method.clone()], b"GET");
        assert_eq!(&buf[h.target.clone()], b"/v1/runtimes?x=1");
        assert_eq!(h.minor_version, 1);
        assert_eq!(h.head_len, buf.len() - 4);
        assert_eq!(h.framing, RequestFraming::Empty);
        assert!(h.keep_alive);
        assert!(!h.expect_continue);
        assert_eq!(hs.len(), 2);
        assert_eq!(&buf[hs[0].name.clone()], b"Host");
        assert_eq!(&buf[hs[0].value.clone()], b"proxy");
        assert_eq!(&buf[hs[1].name.clone()], b"Accept");
        assert_eq!(&buf[hs[1].value.clone()], b"*/*");
        assert_eq!(find_header(buf, &hs, "accept"), Some(&b"*/*"[..]));
        assert_eq!(find_header(buf, &hs, "missing"), None);
    }

    #[test]
    fn headers_vec_is_cleared_and_reused() {
        let mut hs = vec![
            HeaderRef {
                name: 0..1,
                value: 0..1
            };
            5
        ];
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        parse_request(buf, &mut hs).unwrap().unwrap();
        assert_eq!(hs.len(), 1);
        // Incomplete input leaves it empty.
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHo", &mut hs), Ok(None));
        assert!(hs.is_empty());
    }

    #[test]
    fn incomplete_at_every_prefix() {
        let buf = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        for i in 0..buf.len() {
            assert_eq!(req(&buf[..i]), Ok(None), "prefix {i}");
        }
        let h = req_ok(buf);
        assert_eq!(h.head_len, buf.len());
        assert_eq!(h.framing, RequestFraming::Length(3));
    }

    #[test]
    fn value_whitespace_is_trimmed() {
        let buf = b"GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v  a \t\r\nX-B:\r\nX-C:   \r\n\r\n";
        let mut hs = Vec::new();
        parse_request(buf, &mut hs).unwrap().unwrap();
        assert_eq!(&buf[hs[0].value.clone()], b"a");
        assert_eq!(&buf[hs[1].value.clone()], b"v  a");
        assert_eq!(&buf[hs[2].value.clone()], b"");
        assert_eq!(&buf[hs[3].value.clone()], b"");
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        // RFC 9112 §2.2.
        let buf = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let h = req_ok(buf);
        assert_eq!(&buf[h.method.clone()], b"GET");
        assert_eq!(h.head_len, buf.len());
    }

    #[test]
    fn bare_lf_line_endings_are_accepted() {
        // RFC 9112 §2.2: a recipient MAY take a lone LF as a line terminator. httparse
        // does; we re-serialise heads with CRLF, so the executor never sees it.
        let buf = b"GET / HTTP/1.1\nHost: a\nX: y\n\n";
        let h = req_ok(buf);
        assert_eq!(h.head_len, buf.len());
        let r = resp_ok(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nhi");
        assert_eq!(r.framing, ResponseFraming::Length(2));
    }

    #[test]
    fn http10_request() {
        let h = req_ok(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(h.minor_version, 0);
        assert!(!h.keep_alive);
        let h = req_ok(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nExpect: 100-continue\r\n\r\n");
        assert!(!h.keep_alive);
        // RFC 9110 §10.1.1: ignored in HTTP/1.0.
        assert!(!h.expect_continue);
    }

    #[test]
    fn versions_other_than_1x_are_malformed() {
        assert!(malformed(req_err(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET / HTTP/0.9\r\n\r\n")));
        assert!(malformed(req_err(b"GET / http/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET /\r\n\r\n")));
        // HTTP/2 prior-knowledge preface.
        assert!(malformed(req_err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")));
        // Detected before the version is complete.
        assert!(malformed(req_err(b"GET / HTTX")));
    }

    #[test]
    fn request_line_grammar() {
        // httparse: one SP between parts, token method, no empty target.
        assert!(malformed(req_err(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET /  HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(
            b"GET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET /a\x00b HTTP/1.1\r\nHost: a\r\n\r\n"
        )));
        assert!(malformed(req_err(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n")));
        assert!(malformed(req_err(b"GET / HTTP/1.1\rHost: a\r\n\r\n")));
        // Non-UTF-8 target bytes are refused by httparse; UTF-8 ones pass through.
        assert!(malformed(req_err(b"GET /\xff HTTP/1.1\r\nHost: a\r\n\r\n")));
        let buf = "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes();
        assert_eq!(&buf[req_ok(buf).target], "/caf\u{e9}".as_bytes());
        // Extension methods are tokens.
        let buf = b"PURGE-x /a HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(&buf[req_ok(buf).method], b"PURGE-x");
    }

    #[test]
    fn header_grammar() {
        // RFC 9112 §5.1: whitespace before the colon → 400.
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX\t: b\r\n\r\n"
        )));
        // RFC 9112 §5.2: obs-fold in a request → 400.
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n"
        )));
        // RFC 9112 §2.2: whitespace before the first field line.
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n")));
        // RFC 9110 §5.5: NUL, bare CR, other CTLs and DEL are not field-value bytes.
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x00c\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x0bc\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX: b\x7fc\r\n\r\n"
        )));
        // Field names are tokens.
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nNoColon\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: b\r\n\r\n"
        )));
        // A CR not followed by LF at the end of the head.
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\nHost: a\r\n\rX")));
        // obs-text in values is allowed and kept as bytes.
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xe9\r\n\r\n";
        let mut hs = Vec::new();
        parse_request(buf, &mut hs).unwrap().unwrap();
        assert_eq!(&buf[hs[1].value.clone()], b"caf\xe9");
    }

    #[test]
    fn request_line_limit() {
        let mut ok = b"GET /".to_vec();
        ok.resize(MAX_REQUEST_LINE - 9, b'a');
        ok.extend_from_slice(b" HTTP/1.1");
        assert_eq!(ok.len(), MAX_REQUEST_LINE);
        ok.extend_from_slice(b"\r\nHost: a\r\n\r\n");
        assert!(req(&ok).unwrap().is_some());

        let mut long = b"GET /".to_vec();
        long.resize(MAX_REQUEST_LINE - 8, b'a');
        long.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(req_err(&long), HeadError::UriTooLong);
        assert_eq!(req_err(&long).status(), 414);

        // Incomplete: no line end yet, but already too long.
        let mut partial = b"GET /".to_vec();
        partial.resize(MAX_REQUEST_LINE, b'a');
        assert_eq!(req(&partial), Ok(None));
        partial.push(b'a');
        assert_eq!(req_err(&partial), HeadError::UriTooLong);
        // A trailing CR alone does not count against the line.
        let mut at_limit = b"GET /".to_vec();
        at_limit.resize(MAX_REQUEST_LINE - 9, b'a');
        at_limit.extend_from_slice(b" HTTP/1.1\r");
        assert_eq!(req(&at_limit), Ok(None));
    }

    #[test]
    fn head_size_limit() {
        // A head of exactly MAX_HEAD bytes is accepted.
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        let fill = MAX_HEAD - buf.len() - 4;
        buf.resize(buf.len() + fill, b'v');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(buf.len(), MAX_HEAD);
        assert_eq!(req_ok(&buf).head_len, MAX_HEAD);
        // With body bytes after it too.
        buf.extend_from_slice(b"pipelined");
        assert_eq!(req_ok(&buf).head_len, MAX_HEAD);

        // One byte more → 431, complete or not.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.resize(big.len() + fill + 1, b'v');
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req_err(&big), HeadError::HeadTooLarge);
        assert_eq!(req_err(&big[..MAX_HEAD]), HeadError::HeadTooLarge);
        assert_eq!(req(&big[..MAX_HEAD - 1]), Ok(None));
        assert_eq!(HeadError::HeadTooLarge.status(), 431);

        // Same limit for responses.
        let mut r = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        r.resize(MAX_HEAD + 10, b'v');
        assert_eq!(resp(&r, false), Err(HeadError::HeadTooLarge));
    }

    #[test]
    fn header_count_limit() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        let mut complete = buf.clone();
        complete.extend_from_slice(b"\r\n");
        let mut hs = Vec::new();
        assert!(parse_request(&complete, &mut hs).unwrap().is_some());
        assert_eq!(hs.len(), MAX_HEADERS);

        buf.extend_from_slice(b"X-101: v\r\n");
        // Refused even before the head is complete.
        assert_eq!(req_err(&buf), HeadError::TooManyHeaders);
        buf.extend_from_slice(b"\r\n");
        assert_eq!(req_err(&buf), HeadError::TooManyHeaders);
        assert_eq!(HeadError::TooManyHeaders.status(), 431);
    }

    #[test]
    fn target_forms() {
        // RFC 9112 §3.2.4: asterisk-form only with OPTIONS.
        let buf = b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(&buf[req_ok(buf).target], b"*");
        assert_eq!(
            req_err(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::TargetForm
        );
        // Absolute-form and authority-form.
        assert_eq!(
            req_err(b"GET http://evil/x HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::TargetForm
        );
        // CONNECT (RFC 9112 §3.2.3): authority-form only, refused; in origin-form (or any
        // other) it is malformed, never a request for that path.
        for buf in [
            &b"CONNECT host:443 HTTP/1.1\r\nHost: host:443\r\n\r\n"[..],
            b"CONNECT /path HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT / HTTP/1.0\r\n\r\n",
            b"CONNECT * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"CONNECT http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert_eq!(req_err(buf), HeadError::Connect, "{buf:?}");
        }
        assert_eq!(HeadError::Connect.status(), 400);
        assert!(HeadError::Connect.message().contains("CONNECT"));
        // Methods are case-sensitive (RFC 9110 §9.1): `connect` is an extension method.
        let buf = b"connect /path HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(&buf[req_ok(buf).target], b"/path");
        assert_eq!(
            req_err(b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n"),
            HeadError::TargetForm
        );
        assert_eq!(HeadError::TargetForm.status(), 400);
        // Origin-form is byte-exact, no normalisation.
        let buf = b"GET //a/../b/%2e?q=%20#f HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(&buf[req_ok(buf).target], b"//a/../b/%2e?q=%20#f");
    }

    #[test]
    fn host_rules() {
        assert_eq!(req_err(b"GET / HTTP/1.1\r\n\r\n"), HeadError::MissingHost);
        assert_eq!(
            req_err(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            HeadError::DuplicateHost
        );
        // Duplicate Host is refused in HTTP/1.0 too; a missing one is fine there.
        assert_eq!(
            req_err(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            HeadError::DuplicateHost
        );
        assert!(req_ok(b"GET / HTTP/1.0\r\n\r\n").framing == RequestFraming::Empty);
        // Empty Host is allowed (RFC 9112 §3.2); so are IP literals and ports.
        req_ok(b"GET / HTTP/1.1\r\nHost:\r\n\r\n");
        req_ok(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
        req_ok(b"GET / HTTP/1.1\r\nHOST: my_host.example-1.com:80\r\n\r\n");
        // Invalid Host values (RFC 9112 §3.2).
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")));
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n")));
        assert!(malformed(req_err(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n")));
        assert_eq!(HeadError::MissingHost.status(), 400);
        assert_eq!(HeadError::DuplicateHost.status(), 400);
    }

    #[test]
    fn content_length_rules() {
        let f = |b: &[u8]| req(b).map(|h| h.unwrap().framing);
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"),
            Ok(RequestFraming::Length(0))
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 0042\r\n\r\n"),
            Ok(RequestFraming::Length(42))
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 18446744073709551615\r\n\r\n"),
            Ok(RequestFraming::Length(u64::MAX))
        );
        // Equal repeats, as lines or a list, are one value (RFC 9112 §6.3 item 5).
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(RequestFraming::Length(5))
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 ,5,\t5\r\n\r\n"),
            Ok(RequestFraming::Length(5))
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, ,5\r\n\r\n"),
            Ok(RequestFraming::Length(5))
        );
        for bad in [
            &b"Content-Length: 5\r\nContent-Length: 6"[..],
            b"Content-Length: 5, 6",
            b"Content-Length: 5, 05x",
            b"Content-Length:",
            b"Content-Length: ,",
            b"Content-Length: -1",
            b"Content-Length: +1",
            b"Content-Length: 1.0",
            b"Content-Length: 0x10",
            b"Content-Length: 1 2",
            b"Content-Length: 18446744073709551616",
            b"Content-Length: 99999999999999999999999",
        ] {
            let mut buf = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            buf.extend_from_slice(bad);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(req_err(&buf), HeadError::BadContentLength, "{bad:?}");
        }
        assert_eq!(HeadError::BadContentLength.status(), 400);
    }

    #[test]
    fn transfer_encoding_rules() {
        let f = |b: &[u8]| req(b).map(|h| h.unwrap().framing);
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Ok(RequestFraming::Chunked)
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  CHUNKED \r\n\r\n"),
            Ok(RequestFraming::Chunked)
        );
        assert_eq!(
            f(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , chunked,\r\n\r\n"),
            Ok(RequestFraming::Chunked)
        );
        // Final coding not chunked, or another coding before it → 501.
        for te in [
            &b"Transfer-Encoding: gzip"[..],
            b"Transfer-Encoding: chunked, gzip",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
            b"Transfer-Encoding: gzip, chunked",
            b"Transfer-Encoding: identity",
            b"Transfer-Encoding: chunked;q=1",
            b"Transfer-Encoding: xchunked",
            b"Transfer-Encoding: \"chunked\"",
        ] {
            let mut buf = b"POST / HTTP/1.1\r\nHost: a\r\n".to_vec();
            buf.extend_from_slice(te);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                req_err(&buf),
                HeadError::UnsupportedTransferEncoding,
                "{te:?}"
            );
        }
        assert_eq!(HeadError::UnsupportedTransferEncoding.status(), 501);
        // chunked twice (RFC 9112 §6.1), across lines or in one list.
        assert!(malformed(req_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        )));
        assert!(malformed(req_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, Chunked\r\n\r\n"
        )));
        // No coding at all.
        assert!(malformed(req_err(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n"
        )));
        // HTTP/1.0 with TE (RFC 9112 §6.1).
        assert!(malformed(req_err(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
        )));
        // CL and TE together (RFC 9112 §6.3 item 3), in either order, valid or not.
        for buf in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ] {
            assert_eq!(req_err(buf), HeadError::ConflictingFraming);
        }
        assert_eq!(HeadError::ConflictingFraming.status(), 400);
    }

    #[test]
    fn connection_and_expect() {
        let h = req_ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!h.keep_alive);
        let h = req_ok(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nConnection: close\r\n\r\n",
        );
        assert!(!h.keep_alive);
        let h = req_ok(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, x-close\r\n\r\n");
        assert!(h.keep_alive);
        let h = req_ok(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n",
        );
        assert!(h.expect_continue);
        let h = req_ok(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\n\r\n");
        assert!(!h.expect_continue);
    }

    #[test]
    fn helpers() {
        assert_eq!(path_of(b"/a/b?c=d?e"), b"/a/b");
        assert_eq!(path_of(b"/a/b"), b"/a/b");
        assert_eq!(path_of(b"?x"), b"");
        assert!(has_token(b"keep-alive, Upgrade", "upgrade"));
        assert!(has_token(b" close ", "close"));
        assert!(has_token(b"a,,\tclose\t,", "CLOSE"));
        assert!(!has_token(b"closed", "close"));
        assert!(!has_token(b"", "close"));
        assert!(!has_token(b"clo se", "close"));
        for h in [
            &b"Connection"[..],
            b"keep-alive",
            b"PROXY-CONNECTION",
            b"TE",
            b"Trailer",
            b"Transfer-Encoding",
            b"upgrade",
        ] {
            assert!(is_hop_by_hop(h), "{h:?}");
        }
        for h in [
            &b"Host"[..],
            b"Trailers",
            b"Content-Length",
            b"Authorization",
            b"t",
        ] {
            assert!(!is_hop_by_hop(h), "{h:?}");
        }
        assert_eq!(trim_ows(b" \t a b\t "), b"a b");
        assert_eq!(trim_ows(b"  "), b"");
        assert_eq!(parse_decimal(b"0"), Some(0));
        assert_eq!(parse_decimal(b""), None);
    }

    #[test]
    fn error_messages_are_plain_sentences() {
        for e in [
            HeadError::Malformed("Malformed request line."),
            HeadError::UriTooLong,
            HeadError::HeadTooLarge,
            HeadError::TooManyHeaders,
            HeadError::ConflictingFraming,
            HeadError::BadContentLength,
            HeadError::UnsupportedTransferEncoding,
            HeadError::TargetForm,
            HeadError::Connect,
            HeadError::MissingHost,
            HeadError::DuplicateHost,
        ] {
            assert!(e.message().ends_with('.'), "{e:?}");
            assert!((400..=501).contains(&e.status()));
        }
    }

    /// Small deterministic PRNG (xorshift64*), so the tests need no dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn mutated_heads_never_panic() {
        let seeds: [&[u8]; 3] = [
            b"POST /a?b HTTP/1.1\r\nHost: h:1\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbody",
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        ];
        let alphabet = b"\r\n :,;\t\x00\x7f\xffGETHTP/1.0chunkedContent-Length";
        let mut rng = 0x1234_5678_9abc_def1u64;
        let mut hs = Vec::new();
        for _ in 0..30_000 {
            let seed = seeds[(xorshift(&mut rng) % 3) as usize];
            let mut buf = seed.to_vec();
            for _ in 0..1 + xorshift(&mut rng) % 4 {
                let i = (xorshift(&mut rng) as usize) % buf.len();
                let b = alphabet[(xorshift(&mut rng) as usize) % alphabet.len()];
                match xorshift(&mut rng) % 3 {
                    0 => buf[i] = b,
                    1 => buf.insert(i, b),
                    _ => {
                        buf.remove(i);
                    }
                }
                if buf.is_empty() {
                    buf.push(b);
                }
            }
            let cut = (xorshift(&mut rng) as usize) % (buf.len() + 1);
            let buf = &buf[..cut];
            if let Ok(Some(h)) = parse_request(buf, &mut hs) {
                assert!(h.head_len <= buf.len());
                assert!(h.method.end <= h.head_len && h.target.end <= h.head_len);
                assert!(hs.iter().all(|r| r.value.end <= h.head_len));
            }
            for head in [false, true] {
                if let Ok(Some(r)) = parse_response(buf, head, &mut hs) {
                    assert!(r.head_len <= buf.len());
                    assert!(r.reason.start <= r.reason.end && r.reason.end <= r.head_len);
                    assert!((100..=999).contains(&r.status));
                    assert!(hs.iter().all(|h| h.value.end <= r.head_len));
                }
            }
        }
    }

    // ---- responses ----

    #[test]
    fn simple_response() {
        let buf = b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        let mut hs = Vec::new();
        let r = parse_response(buf, false, &mut hs).unwrap().unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(&buf[r.reason.clone()], b"Created");
        assert_eq!(r.minor_version, 1);
        assert_eq!(r.head_len, buf.len() - 5);
        assert_eq!(r.framing, ResponseFraming::Length(5));
        assert!(r.keep_alive);
        assert_eq!(hs.len(), 2);
        for i in 0..buf.len() - 5 {
            assert_eq!(resp(&buf[..i], false), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn reason_phrase() {
        let buf = b"HTTP/1.1 200 \r\n\r\n";
        assert_eq!(resp_ok(buf).reason, 13..13);
        // Missing reason and missing SP are both accepted.
        let buf = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
        let r = resp_ok(buf);
        assert_eq!(r.reason, 12..12);
        assert_eq!(r.framing, ResponseFraming::Length(0));
        // Reason with spaces and obs-text is kept as sent (httparse would give "").
        let buf = b"\r\nHTTP/1.1 404 Nicht gef\xfcnden \r\n\r\n";
        assert_eq!(&buf[resp_ok(buf).reason], b"Nicht gef\xfcnden ");
        let buf = b"HTTP/1.0 200 OK\n\n";
        assert_eq!(&buf[resp_ok(buf).reason], b"OK");
        assert!(malformed(resp_err(b"HTTP/1.1 200 O\x00K\r\n\r\n")));
    }

    #[test]
    fn status_code_grammar() {
        assert!(malformed(resp_err(b"HTTP/1.1 099 X\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/1.1 000 X\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/1.1 20 X\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/1.1 2000 X\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/1.1 abc X\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/2 200 OK\r\n\r\n")));
        assert!(malformed(resp_err(b"HTTP/1.1  200 OK\r\n\r\n")));
        assert_eq!(
            resp_ok(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n").status,
            999
        );
    }

    #[test]
    fn response_header_grammar() {
        // obs-fold: RFC 9112 §5.2 lets a proxy reply 502 instead of unfolding.
        assert!(malformed(resp_err(
            b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"
        )));
        assert!(malformed(resp_err(b"HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n")));
        // RFC 9112 §5.1: whitespace before the colon is removed by a proxy, so accepted.
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length  : 2\r\n\r\nhi";
        let mut hs = Vec::new();
        let r = parse_response(buf, false, &mut hs).unwrap().unwrap();
        assert_eq!(&buf[hs[0].name.clone()], b"Content-Length");
        assert_eq!(r.framing, ResponseFraming::Length(2));
    }

    #[test]
    fn response_framing() {
        let f = |b: &[u8], head: bool| resp(b, head).map(|r| r.unwrap().framing);
        use ResponseFraming::*;
        assert_eq!(f(b"HTTP/1.1 200 OK\r\n\r\n", false), Ok(UntilClose));
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok(Chunked)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: , Chunked ,\r\n\r\n",
                false
            ),
            Ok(Chunked)
        );
        // docs/behaviour.md §5: any coding other than chunked is refused (502), never stripped:
        // before chunked, after it (RFC 9112 §6.3 item 4 would read until close), alone,
        // over several lines; also on HTTP/1.1 responses with a close.
        for te in [
            &b"Transfer-Encoding: gzip, chunked"[..],
            b"Transfer-Encoding: gzip\r\nTransfer-Encoding: Chunked",
            b"Transfer-Encoding: chunked, gzip",
            b"Transfer-Encoding: gzip",
            b"Transfer-Encoding: identity",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: br",
            b"Transfer-Encoding: chunked;q=1",
            b"Connection: close\r\nTransfer-Encoding: deflate, chunked",
        ] {
            let mut buf = b"HTTP/1.1 200 OK\r\n".to_vec();
            buf.extend_from_slice(te);
            buf.extend_from_slice(b"\r\n\r\n");
            assert_eq!(
                f(&buf, false),
                Err(HeadError::UnsupportedTransferEncoding),
                "{te:?}"
            );
            // No body (HEAD): nothing to decode, TE is ignored.
            assert_eq!(f(&buf, true), Ok(NoBody), "{te:?}");
        }
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n", false),
            Ok(UntilClose)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
                false
            )
            .map_err(malformed),
            Err(true)
        );
        assert_eq!(
            f(
                b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .map_err(malformed),
            Err(true)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Err(HeadError::ConflictingFraming)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false
            ),
            Err(HeadError::BadContentLength)
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n", false),
            Ok(Length(7))
        );
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", false),
            Err(HeadError::BadContentLength)
        );
    }

    #[test]
    fn response_no_body() {
        let f = |b: &[u8], head: bool| resp(b, head).map(|r| r.unwrap().framing);
        use ResponseFraming::*;
        // HEAD, 1xx, 204, 304: no body whatever the fields say (RFC 9112 §6.3 item 1).
        assert_eq!(
            f(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", true),
            Ok(NoBody)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true
            ),
            Ok(NoBody)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n",
                true
            ),
            Ok(NoBody)
        );
        // Other codings too: there is no body to decode.
        for status in [
            &b"100 Continue"[..],
            b"103 Early Hints",
            b"204 No Content",
            b"304 Not Modified",
        ] {
            let mut buf = b"HTTP/1.1 ".to_vec();
            buf.extend_from_slice(status);
            buf.extend_from_slice(b"\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
            assert_eq!(f(&buf, false), Ok(NoBody), "{status:?}");
        }
        assert_eq!(f(b"HTTP/1.1 100 Continue\r\n\r\n", false), Ok(NoBody));
        assert_eq!(
            f(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Ok(NoBody)
        );
        assert_eq!(
            f(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", false),
            Ok(NoBody)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
                false
            ),
            Ok(NoBody)
        );
        assert_eq!(
            f(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1234\r\n\r\n",
                false
            ),
            Ok(NoBody)
        );
        assert_eq!(
            f(b"HTTP/1.1 205 Reset Content\r\n\r\n", false),
            Ok(UntilClose)
        );
        // The forwarded CL must still be valid.
        assert_eq!(
            f(
                b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1, 2\r\n\r\n",
                false
            ),
            Err(HeadError::BadContentLength)
        );
        // Bytes after a body-less head are the next response, not a body.
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(resp_ok(buf).head_len, 25);
    }

    #[test]
    fn response_keep_alive() {
        assert!(resp_ok(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
        assert!(
            !resp_ok(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(
            !resp_ok(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .keep_alive
        );
        // keep_alive reports the header only; UntilClose framing still ends the connection.
        assert!(resp_ok(b"HTTP/1.1 200 OK\r\n\r\n").keep_alive);
    }
}
