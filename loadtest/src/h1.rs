//! The one independent HTTP/1.1 reader of the test and load tooling: request and response
//! heads (httparse), body framing (RFC 9112 §6.3) and streamed bodies (Content-Length,
//! chunked with extensions and trailers, until close). The mocks, the scripted executor,
//! the integration tests' client, the soak test and the load generator all read HTTP/1
//! with it, never with the proxy's own parser (tests must not share the code under test).

use std::io::{self, BufRead};

/// Largest head accepted (start line + headers).
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in a head.
const MAX_HEADERS: usize = 256;
/// Longest chunk-size line (size + extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;

/// A parsed request head. Header names and values are kept as received.
#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// True when the connection must close after this exchange.
    pub fn wants_close(&self) -> bool {
        if self.minor == 0 {
            // Keep-alive for HTTP/1.0 is opt-in and rare; always closing is simpler and legal.
            return true;
        }
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }

    /// True when the client waits for `100 Continue` before sending its body.
    pub fn expects_continue(&self) -> bool {
        self.minor == 1
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }
}

#[derive(Debug)]
pub enum HeadError {
    /// The peer closed (or reset) the connection before a complete head; nothing to answer.
    Closed,
    /// A read failed otherwise before a complete head (a read timeout, for instance).
    Failed(io::ErrorKind),
    /// The head exceeds [`MAX_HEAD`] or has too many fields.
    TooLarge,
    /// Not HTTP/1.x.
    Malformed,
}

/// Reads one request head, leaving any following bytes (the body, pipelined requests) in `r`.
pub fn read_head<R: BufRead>(r: &mut R) -> Result<Head, HeadError> {
    parse_head(&read_head_bytes(r, true)?)
}

/// Reads one response head (an interim 1xx one too), leaving the body in `r`.
pub fn read_response_head<R: BufRead>(r: &mut R) -> Result<ResponseHead, HeadError> {
    parse_response_head(&read_head_bytes(r, false)?)
}

/// The request head at the start of `buf` and its length; `None` while it is incomplete.
pub fn parse_request_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HeadError> {
    match find(buf, b"\r\n\r\n") {
        Some(pos) => Ok(Some((parse_head(&buf[..pos + 4])?, pos + 4))),
        None if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        None => {
            // Not a head even in part: say so now rather than wait for more bytes.
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match httparse::Request::new(&mut fields).parse(buf) {
                Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
                Err(_) => Err(HeadError::Malformed),
                Ok(_) => Ok(None),
            }
        }
    }
}

/// The bytes of one head up to and including its empty line. A request may be preceded by
/// empty lines (`skip_empty_lines`); a response may not.
fn read_head_bytes<R: BufRead>(r: &mut R, skip_empty_lines: bool) -> Result<Vec<u8>, HeadError> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let avail = match fill(r) {
            Ok([]) => return Err(HeadError::Closed),
            Err(e) => {
                return Err(match read_error(e) {
                    BodyError::Failed(kind) => HeadError::Failed(kind),
                    _ => HeadError::Closed,
                })
            }
            Ok(a) => a,
        };
        // Skip empty lines before the request line (RFC 9112 §2.2), so that the terminator
        // search below cannot match them.
        if buf.is_empty() && skip_empty_lines {
            let skip = avail
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 {
                r.consume(skip);
                continue;
            }
        }
        let old = buf.len();
        let take = avail.len().min(MAX_HEAD + 4 - old);
        buf.extend_from_slice(&avail[..take]);
        let from = old.saturating_sub(3);
        if let Some(pos) = find(&buf[from..], b"\r\n\r\n") {
            let end = from + pos + 4;
            r.consume(end - old);
            buf.truncate(end);
            break;
        }
        r.consume(take);
        if buf.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
    Ok(buf)
}

fn parse_head(buf: &[u8]) -> Result<Head, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (method, target, minor, fields) = parse_request_fields(buf, &mut fields)?;
    let headers = fields
        .iter()
        .map(|h| (h.name.to_string(), bytes_to_string(h.value)))
        .collect();
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers,
    })
}

/// A request head's borrowed parts (method, target, minor version, fields).
pub type RequestFields<'b, 'h> = (&'b str, &'b str, u8, &'h [httparse::Header<'b>]);

/// Method, target, minor version and fields of the complete request head in `buf` (its
/// empty line included), borrowed from it: no allocation, for the fast mock's hot path.
/// `fields` bounds how many fields are accepted.
pub fn parse_request_fields<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> Result<RequestFields<'b, 'h>, HeadError> {
    let mut req = httparse::Request::new(fields);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed);
    };
    Ok((method, target, minor, req.headers))
}

/// A parsed response head. Header names and values are kept as received.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub status: u16,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn parse_response_head(buf: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (status, minor, fields) = parse_response_fields(buf, &mut fields)?;
    let headers = fields
        .iter()
        .map(|h| (h.name.to_string(), bytes_to_string(h.value)))
        .collect();
    Ok(ResponseHead {
        status,
        minor,
        headers,
    })
}

/// Status, minor version and fields of the complete response head in `buf` (its empty
/// line included), borrowed from it: no allocation, for the load generator's hot path.
/// `fields` bounds how many fields are accepted.
pub fn parse_response_fields<'b, 'h>(
    buf: &'b [u8],
    fields: &'h mut [httparse::Header<'b>],
) -> Result<(u16, u8, &'h [httparse::Header<'b>]), HeadError> {
    let mut resp = httparse::Response::new(fields);
    match resp.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    }
    let (Some(status), Some(minor)) = (resp.code, resp.version) else {
        return Err(HeadError::Malformed);
    };
    Ok((status, minor, resp.headers))
}

/// UTF-8 when valid, else Latin-1 (one char per byte), so no byte is ever lost.
pub fn bytes_to_string(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_string(),
        Err(_) => b.iter().map(|&c| char::from(c)).collect(),
    }
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// A response body that ends when the connection does.
    UntilClose,
}

/// Body framing of a request per RFC 9112 §6.3; `Err` means answer 400.
pub fn request_framing(headers: &[(String, String)]) -> Result<Framing, &'static str> {
    let mut codings: Vec<String> = Vec::new();
    let mut length: Option<u64> = None;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            for c in value.split(',') {
                let c = c.trim();
                if !c.is_empty() {
                    codings.push(c.to_ascii_lowercase());
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // A list of identical values ("5, 5") is tolerated; anything else is ambiguous.
            for v in value.split(',') {
                let n = parse_decimal(v.trim()).ok_or("invalid content-length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting content-length");
                }
                length = Some(n);
            }
        }
    }
    if codings.is_empty() {
        return Ok(Framing::Length(length.unwrap_or(0)));
    }
    // Strict on purpose (smuggling hygiene): a proxy must never forward both.
    if length.is_some() {
        return Err("both transfer-encoding and content-length");
    }
    let chunked_count = codings.iter().filter(|c| *c == "chunked").count();
    if codings.last().map(String::as_str) != Some("chunked") || chunked_count != 1 {
        return Err("transfer-encoding without final chunked");
    }
    Ok(Framing::Chunked)
}

/// Body framing of a response to a `HEAD` request or not (RFC 9112 §6.3): none for 1xx,
/// 204, 304 and answers to HEAD; then chunked, Content-Length, or until close. `Err` is an
/// invalid combination.
pub fn response_framing(head_request: bool, head: &ResponseHead) -> Result<Framing, &'static str> {
    if head_request || (100..200).contains(&head.status) || matches!(head.status, 204 | 304) {
        return Ok(Framing::Length(0));
    }
    let chunked = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .rfind(|c| !c.trim().is_empty())
        .map(|c| c.trim().eq_ignore_ascii_case("chunked"));
    match chunked {
        Some(true) => Ok(Framing::Chunked),
        // A transfer coding other than chunked last: the body runs until close.
        Some(false) => Ok(Framing::UntilClose),
        None => match request_framing(&head.headers)? {
            Framing::Length(n) if head.header("content-length").is_some() => Ok(Framing::Length(n)),
            _ => Ok(Framing::UntilClose),
        },
    }
}

/// A Content-Length value (`1*DIGIT`, at most 19 digits): `None` when it is not one.
pub fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[derive(Debug)]
pub enum BodyError {
    /// The peer closed or reset the connection before the body was complete.
    Aborted,
    /// Invalid chunked framing.
    Malformed(&'static str),
    /// The sink asked to stop (`read_body_until`).
    Stopped,
    /// A read failed otherwise (a read timeout, for instance).
    Failed(io::ErrorKind),
}

/// What was learnt while reading a body.
#[derive(Debug, Default)]
pub struct BodyInfo {
    pub len: u64,
    pub trailers: Vec<(String, String)>,
}

/// Streams a body through `sink` without buffering it whole.
pub fn read_body<R: BufRead>(
    r: &mut R,
    framing: Framing,
    sink: &mut dyn FnMut(&[u8]),
) -> Result<BodyInfo, BodyError> {
    read_body_until(r, framing, &mut |b| {
        sink(b);
        true
    })
}

/// [`read_body`] whose `sink` may stop the read early (it returns false: `Stopped`).
pub fn read_body_until<R: BufRead>(
    r: &mut R,
    framing: Framing,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<BodyInfo, BodyError> {
    match framing {
        Framing::Length(n) => {
            copy_exact(r, n, sink)?;
            Ok(BodyInfo {
                len: n,
                trailers: Vec::new(),
            })
        }
        Framing::Chunked => read_chunked(r, sink),
        Framing::UntilClose => {
            let mut len = 0u64;
            match copy_exact(r, u64::MAX, &mut |b: &[u8]| {
                len += b.len() as u64;
                sink(b)
            }) {
                Ok(()) | Err(BodyError::Aborted) => Ok(BodyInfo {
                    len,
                    trailers: Vec::new(),
                }),
                Err(e) => Err(e),
            }
        }
    }
}

fn read_chunked<R: BufRead>(
    r: &mut R,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<BodyInfo, BodyError> {
    let mut info = BodyInfo::default();
    loop {
        let line = read_line(r, MAX_CHUNK_LINE)?;
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            break;
        }
        copy_exact(r, size, sink)?;
        info.len = info
            .len
            .checked_add(size)
            .ok_or(BodyError::Malformed("body too long"))?;
        let mut crlf = Vec::with_capacity(2);
        copy_exact(r, 2, &mut |b: &[u8]| {
            crlf.extend_from_slice(b);
            true
        })?;
        if crlf != b"\r\n" {
            return Err(BodyError::Malformed("chunk data not followed by CRLF"));
        }
    }
    let mut total = 0usize;
    loop {
        let line = read_line(r, MAX_TRAILERS)?;
        if line.is_empty() {
            return Ok(info);
        }
        total += line.len() + 2;
        if total > MAX_TRAILERS {
            return Err(BodyError::Malformed("trailer section too large"));
        }
        info.trailers.push(parse_field_line(&line)?);
    }
}

/// Parses `1*HEXDIG *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] )`; extensions are ignored
/// after checking they contain no control characters. (The load generator's streaming
/// parser uses it too.)
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(BodyError::Malformed("missing chunk size"));
    }
    let mut size: u64 = 0;
    for &b in &line[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(u64::from(d)))
            .ok_or(BodyError::Malformed("chunk size overflows"))?;
    }
    let rest = &line[digits..];
    let ext_at = rest.iter().position(|&b| b != b' ' && b != b'\t');
    if let Some(at) = ext_at {
        if rest[at] != b';' {
            return Err(BodyError::Malformed("invalid chunk size"));
        }
        if rest[at..]
            .iter()
            .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            return Err(BodyError::Malformed("invalid chunk extension"));
        }
    }
    Ok(size)
}

/// Parses a trailer field line `name ":" OWS value OWS`.
fn parse_field_line(line: &[u8]) -> Result<(String, String), BodyError> {
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or(BodyError::Malformed("trailer without colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(BodyError::Malformed("invalid trailer name"));
    }
    let value = trim_ows(&line[colon + 1..]);
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(BodyError::Malformed("invalid trailer value"));
    }
    Ok((bytes_to_string(name), bytes_to_string(value)))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads one CRLF-terminated line (CRLF stripped); a bare LF is a framing error.
fn read_line<R: BufRead>(r: &mut R, max: usize) -> Result<Vec<u8>, BodyError> {
    let mut line = Vec::new();
    loop {
        let avail = fill(r).map_err(read_error)?;
        if avail.is_empty() {
            return Err(BodyError::Aborted);
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                line.extend_from_slice(&avail[..pos]);
                r.consume(pos + 1);
                if line.pop() != Some(b'\r') {
                    return Err(BodyError::Malformed("line not terminated by CRLF"));
                }
                if line.len() > max {
                    return Err(BodyError::Malformed("line too long"));
                }
                return Ok(line);
            }
            None => {
                let n = avail.len();
                line.extend_from_slice(avail);
                r.consume(n);
                if line.len() > max {
                    return Err(BodyError::Malformed("line too long"));
                }
            }
        }
    }
}

/// Passes exactly `n` bytes from `r` to `sink`, straight out of the read buffer.
fn copy_exact<R: BufRead>(
    r: &mut R,
    mut n: u64,
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Result<(), BodyError> {
    while n > 0 {
        let avail = fill(r).map_err(read_error)?;
        if avail.is_empty() {
            return Err(BodyError::Aborted);
        }
        let take = usize::try_from(n).unwrap_or(usize::MAX).min(avail.len());
        let more = sink(&avail[..take]);
        r.consume(take);
        n -= take as u64;
        if !more {
            return Err(BodyError::Stopped);
        }
    }
    Ok(())
}

/// A reset ends the body like EOF does; a timeout or other failure is reported as such.
fn read_error(e: io::Error) -> BodyError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => BodyError::Aborted,
        kind => BodyError::Failed(kind),
    }
}

/// `fill_buf`, retrying on EINTR.
fn fill<R: BufRead>(r: &mut R) -> io::Result<&[u8]> {
    // Two-step to satisfy the borrow checker: probe, then return a fresh borrow.
    loop {
        match r.fill_buf() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    r.fill_buf()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Cursor, Read};

    /// Feeds input in tiny pieces to exercise every buffer boundary.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn head(input: &[u8]) -> Result<Head, HeadError> {
        read_head(&mut Cursor::new(input))
    }

    fn body(input: &[u8], framing: Framing) -> Result<(Vec<u8>, BodyInfo), BodyError> {
        let mut last: Option<Result<(Vec<u8>, BodyInfo), BodyError>> = None;
        for step in [1, 3, 7, 4096] {
            let mut r = BufReader::with_capacity(16, Trickle(input, step));
            let mut got = Vec::new();
            let res = read_body(&mut r, framing, &mut |b| got.extend_from_slice(b));
            let res = res.map(|i| (got, i));
            // Same outcome whatever the segmentation.
            if let Some(prev) = &last {
                assert_eq!(format!("{prev:?}"), format!("{res:?}"), "step {step}");
            }
            last = Some(res);
        }
        last.expect("ran")
    }

    #[test]
    fn parses_head_and_leaves_body() {
        let mut c = Cursor::new(
            &b"\r\nPOST /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a:  2 \r\n\r\nBODY"[..],
        );
        let h = read_head(&mut c).expect("head");
        assert_eq!(h.method, "POST");
        assert_eq!(h.target, "/a?b=1");
        assert_eq!(h.minor, 1);
        assert_eq!(
            h.headers,
            vec![
                ("Host".into(), "x".into()),
                ("X-A".into(), "1".into()),
                ("x-a".into(), "2".into())
            ]
        );
        let mut rest = String::new();
        c.read_to_string(&mut rest).expect("rest");
        assert_eq!(rest, "BODY");
        assert!(!h.wants_close());
    }

    #[test]
    fn head_split_across_reads() {
        let input = b"GET / HTTP/1.0\r\nA: b\r\n\r\nNEXT";
        let mut r = BufReader::with_capacity(4, Trickle(input, 1));
        let h = read_head(&mut r).expect("head");
        assert_eq!(h.minor, 0);
        assert!(h.wants_close());
        let mut rest = String::new();
        r.read_to_string(&mut rest).expect("rest");
        assert_eq!(rest, "NEXT");
    }

    #[test]
    fn head_errors() {
        assert!(matches!(head(b""), Err(HeadError::Closed)));
        assert!(matches!(
            head(b"GET / HTTP/1.1\r\n"),
            Err(HeadError::Closed)
        ));
        assert!(matches!(
            head(b"this is not http\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
        assert!(matches!(
            head(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Err(HeadError::Malformed)
        ));
        let big = format!("GET / HTTP/1.1\r\nA: {}\r\n\r\n", "x".repeat(MAX_HEAD));
        assert!(matches!(head(big.as_bytes()), Err(HeadError::TooLarge)));
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(head(many.as_bytes()), Err(HeadError::TooLarge)));
    }

    #[test]
    fn connection_and_expect() {
        let h = head(
            b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\nExpect: 100-Continue\r\n\r\n",
        )
        .expect("head");
        assert!(h.wants_close());
        assert!(h.expects_continue());
    }

    #[test]
    fn latin1_fallback() {
        let h = head(b"GET / HTTP/1.1\r\nX: caf\xe9\r\nY: caf\xc3\xa9\r\n\r\n").expect("head");
        assert_eq!(h.header("x"), Some("caf\u{e9}"));
        assert_eq!(h.header("y"), Some("caf\u{e9}"));
    }

    fn hs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn framing_rules() {
        assert_eq!(request_framing(&hs(&[])), Ok(Framing::Length(0)));
        assert_eq!(
            request_framing(&hs(&[("Content-Length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            request_framing(&hs(&[("content-length", "5, 5"), ("Content-Length", "5")])),
            Ok(Framing::Length(5))
        );
        assert!(request_framing(&hs(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(request_framing(&hs(&[("content-length", "-1")])).is_err());
        assert!(request_framing(&hs(&[("content-length", "+1")])).is_err());
        assert!(request_framing(&hs(&[("content-length", "")])).is_err());
        assert!(request_framing(&hs(&[("content-length", "99999999999999999999")])).is_err());
        assert_eq!(
            request_framing(&hs(&[("Transfer-Encoding", "Chunked")])),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            request_framing(&hs(&[
                ("Transfer-Encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ])),
            Ok(Framing::Chunked)
        );
        assert!(request_framing(&hs(&[("Transfer-Encoding", "chunked, gzip")])).is_err());
        assert!(request_framing(&hs(&[("Transfer-Encoding", "chunked, chunked")])).is_err());
        assert!(request_framing(&hs(&[
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", "3")
        ]))
        .is_err());
    }

    #[test]
    fn content_length_body() {
        let (got, info) = body(b"hello world", Framing::Length(5)).expect("body");
        assert_eq!(got, b"hello");
        assert_eq!(info.len, 5);
        assert!(matches!(
            body(b"hel", Framing::Length(5)),
            Err(BodyError::Aborted)
        ));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let input = b"5;name=value\r\nhello\r\n6 ; a=\"q;x\"\r\n world\r\n0\r\nX-Sum: abc\r\nX-B:\r\n\r\nNEXT";
        let (got, info) = body(input, Framing::Chunked).expect("body");
        assert_eq!(got, b"hello world");
        assert_eq!(info.len, 11);
        assert_eq!(
            info.trailers,
            vec![
                ("X-Sum".into(), "abc".into()),
                ("X-B".into(), String::new())
            ]
        );
        let (got, _) = body(b"A\r\n0123456789\r\n0\r\n\r\n", Framing::Chunked).expect("hex");
        assert_eq!(got, b"0123456789");
    }

    #[test]
    fn chunked_rejects_bad_framing() {
        let bad: &[&[u8]] = &[
            b"x\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"-5\r\nhello\r\n0\r\n\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nno colon here\r\n\r\n",
            b"0\r\nbad name: v\r\n\r\n",
        ];
        for input in bad {
            assert!(
                matches!(body(input, Framing::Chunked), Err(BodyError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert!(matches!(
            body(long.as_bytes(), Framing::Chunked),
            Err(BodyError::Malformed(_))
        ));
    }

    #[test]
    fn chunked_cut_off_is_aborted() {
        for input in [
            &b"5\r\nhel"[..],
            b"5\r\nhello",
            b"5\r\nhello\r\n",
            b"0\r\nX: y\r\n",
            b"5",
        ] {
            assert!(
                matches!(body(input, Framing::Chunked), Err(BodyError::Aborted)),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
