//! The checks behind the fuzz targets, kept in a library so that `cargo test` here can
//! replay the committed corpus and the regressions without libFuzzer (see the tests at
//! the end and README.md). Every check panics (via `assert!`) on a broken invariant;
//! libFuzzer turns the panic into a crash report with the message and location.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use opr_proxy::internals::{
    canonical_reason, decode_chunks, parse_health, parse_request, parse_response,
    write_request_head, write_response_head, ChunkedDecoder, ChunkedError, ChunkedOutput,
    HeadError, HeaderRef, ProbeResult, RequestFraming, RequestHead, RequestRewrite,
    ResponseFraming, ResponseHead, ResponseRewrite, MAX_HEAD, MAX_HEADERS,
};

/// Requests parsed from one input (pipelining), so a target stays fast.
const MAX_MESSAGES: usize = 8;
/// Strict prefixes of a complete head re-parsed per message.
const MAX_PREFIXES: usize = 48;

// ---------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------

/// RFC 9110 §5.6.2 tchar.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Strips SP and HTAB at both ends (RFC 9110 §5.6.3 OWS).
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

fn check_error(e: &HeadError) {
    let status = e.status();
    assert!(
        status == 400 || status == 414 || status == 431 || status == 501,
        "unexpected status {status} for {e:?}"
    );
    let msg = e.message();
    assert!(
        !msg.is_empty() && msg.ends_with('.'),
        "message of {e:?}: {msg:?}"
    );
}

/// Field lines shared by requests and responses: in order, inside the head, names are
/// tokens, values are trimmed and hold no CR, LF or NUL.
fn check_field_lines(buf: &[u8], head_len: usize, after_start_line: usize, hs: &[HeaderRef]) {
    assert!(hs.len() <= MAX_HEADERS, "{} headers", hs.len());
    let mut prev_end = after_start_line;
    for h in hs {
        assert!(
            h.name.start <= h.name.end && h.value.start <= h.value.end,
            "{h:?}"
        );
        assert!(h.name.start >= prev_end, "field lines out of order: {hs:?}");
        assert!(h.name.end <= h.value.start, "name after value: {h:?}");
        assert!(
            h.value.end <= head_len,
            "value past the head: {h:?}, head_len {head_len}"
        );
        let name = &buf[h.name.clone()];
        let value = &buf[h.value.clone()];
        assert!(!name.is_empty(), "empty field name: {h:?}");
        assert!(
            name.iter().all(|&b| is_tchar(b)),
            "field name not a token: {name:?}"
        );
        assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "CR/LF/NUL in field value: {value:?}"
        );
        assert!(
            !matches!(value.first(), Some(b' ' | b'\t'))
                && !matches!(value.last(), Some(b' ' | b'\t')),
            "field value not trimmed: {value:?}"
        );
        prev_end = h.value.end;
    }
}

/// Every LF is preceded by CR and every CR is followed by LF; the head ends with the
/// empty line and contains no earlier one (no header injection, no early end of head).
fn check_crlf_discipline(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        match b {
            b'\n' => assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} in {out:?}"),
            b'\r' => assert!(out.get(i + 1) == Some(&b'\n'), "bare CR at {i} in {out:?}"),
            0 => panic!("NUL at {i} in rewritten head {out:?}"),
            _ => {}
        }
    }
    assert!(
        out.ends_with(b"\r\n\r\n"),
        "head does not end with CRLF CRLF: {out:?}"
    );
    let first_empty = out.windows(4).position(|w| w == b"\r\n\r\n");
    assert_eq!(
        first_empty,
        Some(out.len() - 4),
        "empty line inside the rewritten head: {out:?}"
    );
}

/// Field lines of a rewritten head (everything after the start line), as (name, value).
fn written_fields(out: &[u8]) -> Vec<(&[u8], &[u8])> {
    let body = &out[..out.len() - 2];
    let mut lines = body
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    lines.next(); // start line
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let colon = l
                .iter()
                .position(|&b| b == b':')
                .expect("field line without colon");
            let value = &l[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            (&l[..colon], value)
        })
        .collect()
}

/// Positions at which a strict prefix of a complete head is re-parsed: after each line
/// ending, SP and colon (where a parser's state changes), and the last few bytes.
fn prefix_points(head: &[u8]) -> Vec<usize> {
    let n = head.len();
    let mut points: Vec<usize> = (1..n)
        .filter(|&k| matches!(head[k - 1], b'\r' | b'\n' | b' ' | b':'))
        .take(MAX_PREFIXES)
        .collect();
    points.extend((n.saturating_sub(3)..n).filter(|&k| k > 0));
    points.push(0);
    points.sort_unstable();
    points.dedup();
    points
}

// ---------------------------------------------------------------------------------------
// Request heads
// ---------------------------------------------------------------------------------------

/// One input: parse heads one after another as the connection loop does (skip the body
/// by its framing), checking each head, its prefixes and its rewrite.
pub fn check_request_stream(data: &[u8]) {
    let mut hs = Vec::new();
    let mut off = 0;
    for _ in 0..MAX_MESSAGES {
        let buf = &data[off..];
        if buf.is_empty() {
            return;
        }
        let head = match parse_request(buf, &mut hs) {
            Err(e) => {
                check_error(&e);
                return;
            }
            Ok(None) => {
                assert!(buf.len() < MAX_HEAD, "Ok(None) for {} bytes", buf.len());
                return;
            }
            Ok(Some(head)) => head,
        };
        check_request_head(buf, &head, &hs);
        // Determinism: the same bytes give the same head and fields.
        let mut again = Vec::new();
        assert_eq!(parse_request(buf, &mut again), Ok(Some(head.clone())));
        assert_eq!(again, hs);
        // Trailing bytes (the next request) change nothing.
        assert_eq!(
            parse_request(&buf[..head.head_len], &mut again),
            Ok(Some(head.clone())),
            "head parsed differently without the bytes after it"
        );
        // The connection re-parses after every read: a strict prefix is never an error
        // and never a (different) complete head.
        for k in prefix_points(&buf[..head.head_len]) {
            let r = parse_request(&buf[..k], &mut again);
            assert_eq!(r, Ok(None), "prefix of {k} bytes of a valid head");
        }
        check_request_rewrite(buf, &head, &hs);

        let body_start = head.head_len;
        let body_len = match head.framing {
            RequestFraming::Empty => 0,
            RequestFraming::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= buf.len() - body_start => n,
                _ => return,
            },
            RequestFraming::Chunked => {
                let mut dec = ChunkedDecoder::new();
                match drive(&mut dec, &buf[body_start..], &[]) {
                    Feed {
                        outcome: Outcome::Done,
                        consumed,
                        ..
                    } => consumed,
                    _ => return,
                }
            }
        };
        off += body_start + body_len;
    }
}

fn check_request_head(buf: &[u8], h: &RequestHead, hs: &[HeaderRef]) {
    assert!(
        h.head_len > 0 && h.head_len <= buf.len(),
        "head_len {}",
        h.head_len
    );
    assert!(h.head_len <= MAX_HEAD, "head_len {} > MAX_HEAD", h.head_len);
    assert_eq!(buf[h.head_len - 1], b'\n', "head does not end with LF");
    assert!(h.minor_version <= 1, "minor version {}", h.minor_version);
    assert!(h.method.start < h.method.end, "empty method");
    assert!(
        h.method.end < h.target.start,
        "method {:?} target {:?}",
        h.method,
        h.target
    );
    assert!(h.target.start < h.target.end, "empty target");
    assert!(h.target.end <= h.head_len, "target past the head");
    let method = &buf[h.method.clone()];
    let target = &buf[h.target.clone()];
    assert!(method.iter().all(|&b| is_tchar(b)), "method {method:?}");
    assert!(
        target.first() == Some(&b'/') || (target == b"*" && method == b"OPTIONS"),
        "target form {target:?} {method:?}"
    );
    // CONNECT takes authority-form only (RFC 9112 §3.2.3): refused in every form.
    assert_ne!(method, b"CONNECT", "CONNECT accepted");
    assert!(
        !target.iter().any(|&b| b <= b' ' || b == 0x7f),
        "control byte or SP in target {target:?}"
    );
    let start_line_end = h.target.end;
    check_field_lines(buf, h.head_len, start_line_end, hs);

    let named = |n: &[u8]| {
        hs.iter()
            .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(n))
            .count()
    };
    let hosts = named(b"host");
    assert!(hosts <= 1, "{hosts} Host lines accepted");
    assert!(
        h.minor_version == 0 || hosts == 1,
        "HTTP/1.1 without Host accepted"
    );
    let cl = named(b"content-length");
    let te = named(b"transfer-encoding");
    match h.framing {
        RequestFraming::Empty => assert!(cl == 0 && te == 0, "Empty with CL {cl} TE {te}"),
        RequestFraming::Length(_) => assert!(cl > 0 && te == 0, "Length with CL {cl} TE {te}"),
        RequestFraming::Chunked => {
            assert!(
                cl == 0 && te > 0 && h.minor_version == 1,
                "Chunked with CL {cl} TE {te}"
            )
        }
    }
    if h.keep_alive || h.expect_continue {
        assert_eq!(h.minor_version, 1, "keep-alive/expect on HTTP/1.0");
    }
}

/// Two rewrite settings, as the forwarder builds them (production and dev mode).
fn request_rewrites(head: &RequestHead) -> [RequestRewrite<'static>; 2] {
    [
        RequestRewrite {
            authorization: b"Bearer executor-secret-key",
            forwarded_for: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            executor_host: "executor-1:80",
            dev_executor_hostname: None,
            strip_expect: head.expect_continue,
        },
        RequestRewrite {
            authorization: b"Bearer s3cret",
            forwarded_for: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            executor_host: "127.0.0.1:8081",
            dev_executor_hostname: Some("127.0.0.1:8081"),
            strip_expect: false,
        },
    ]
}

fn check_request_rewrite(buf: &[u8], head: &RequestHead, hs: &[HeaderRef]) {
    for rw in request_rewrites(head) {
        let mut out = Vec::new();
        write_request_head(&mut out, buf, head, hs, &rw);
        check_crlf_discipline(&out);

        // Start line: method and target byte-exact, HTTP/1.1.
        let mut expected_line = buf[head.method.clone()].to_vec();
        expected_line.push(b' ');
        expected_line.extend_from_slice(&buf[head.target.clone()]);
        expected_line.extend_from_slice(b" HTTP/1.1\r\n");
        assert!(
            out.starts_with(&expected_line),
            "request line rewritten: {out:?}"
        );

        let fields = written_fields(&out);
        let count = |n: &[u8]| {
            fields
                .iter()
                .filter(|(f, _)| f.eq_ignore_ascii_case(n))
                .count()
        };
        let value = |n: &[u8]| {
            fields
                .iter()
                .find(|(f, _)| f.eq_ignore_ascii_case(n))
                .map(|(_, v)| *v)
        };
        assert_eq!(count(b"host"), 1, "Host lines in {out:?}");
        assert_eq!(count(b"authorization"), 1, "Authorization lines in {out:?}");
        assert_eq!(value(b"authorization"), Some(rw.authorization), "{out:?}");
        assert!(
            count(b"x-forwarded-for") >= 1,
            "no X-Forwarded-For in {out:?}"
        );
        for (name, _) in &fields {
            assert!(
                !is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"transfer-encoding"),
                "hop-by-hop field {name:?} forwarded: {out:?}"
            );
        }
        if rw.strip_expect {
            assert_eq!(
                count(b"expect"),
                0,
                "Expect kept although answered: {out:?}"
            );
        }
        // Ours once in dev mode; a client's copy never (it must not be spoofable).
        if let Some(dev) = rw.dev_executor_hostname {
            assert_eq!(count(b"x-opr-executor-hostname"), 1, "{out:?}");
            assert_eq!(value(b"x-opr-executor-hostname"), Some(dev.as_bytes()));
        } else {
            assert_eq!(count(b"x-opr-executor-hostname"), 0, "{out:?}");
        }
        let (cl, te) = (count(b"content-length"), count(b"transfer-encoding"));
        match head.framing {
            RequestFraming::Empty => assert!(cl == 0 && te == 0, "{out:?}"),
            RequestFraming::Length(_) => assert!(cl == 1 && te == 0, "{out:?}"),
            RequestFraming::Chunked => {
                assert!(cl == 0 && te == 1, "{out:?}");
                assert_eq!(value(b"transfer-encoding"), Some(&b"chunked"[..]));
            }
        }

        // Round trip: what the executor gets parses to the same request. Up to five
        // fields are added, so a head at the limits may legitimately exceed them.
        let mut hs2 = Vec::new();
        if fields.len() > MAX_HEADERS || out.len() > MAX_HEAD {
            continue;
        }
        let h2 = match parse_request(&out, &mut hs2) {
            Ok(Some(h2)) => h2,
            other => panic!("rewritten head does not parse: {other:?}\n{out:?}"),
        };
        assert_eq!(h2.head_len, out.len(), "rewritten head ends early: {out:?}");
        assert_eq!(h2.minor_version, 1);
        assert_eq!(&out[h2.method.clone()], &buf[head.method.clone()]);
        assert_eq!(&out[h2.target.clone()], &buf[head.target.clone()]);
        assert_eq!(
            h2.framing, head.framing,
            "framing changed by the rewrite: {out:?}"
        );
        assert!(
            h2.keep_alive,
            "Connection: close reached the executor: {out:?}"
        );
        assert_eq!(hs2.len(), fields.len());
    }
}

// ---------------------------------------------------------------------------------------
// Response heads
// ---------------------------------------------------------------------------------------

pub fn check_response(data: &[u8]) {
    let mut hs = Vec::new();
    for is_head in [false, true] {
        let head = match parse_response(data, is_head, &mut hs) {
            Err(e) => {
                check_error(&e);
                continue;
            }
            Ok(None) => {
                assert!(data.len() < MAX_HEAD, "Ok(None) for {} bytes", data.len());
                continue;
            }
            Ok(Some(head)) => head,
        };
        check_response_head(data, is_head, &head, &hs);
        let mut again = Vec::new();
        assert_eq!(
            parse_response(data, is_head, &mut again),
            Ok(Some(head.clone()))
        );
        assert_eq!(again, hs);
        assert_eq!(
            parse_response(&data[..head.head_len], is_head, &mut again),
            Ok(Some(head.clone())),
            "head parsed differently without the bytes after it"
        );
        for k in prefix_points(&data[..head.head_len]) {
            let r = parse_response(&data[..k], is_head, &mut again);
            assert_eq!(r, Ok(None), "prefix of {k} bytes of a valid response head");
        }
        check_response_rewrite(data, is_head, &head, &hs);
    }
}

fn check_response_head(buf: &[u8], is_head: bool, r: &ResponseHead, hs: &[HeaderRef]) {
    assert!(
        r.head_len > 0 && r.head_len <= buf.len(),
        "head_len {}",
        r.head_len
    );
    assert!(r.head_len <= MAX_HEAD, "head_len {} > MAX_HEAD", r.head_len);
    assert_eq!(buf[r.head_len - 1], b'\n', "head does not end with LF");
    assert!((100..=999).contains(&r.status), "status {}", r.status);
    assert!(r.minor_version <= 1, "minor version {}", r.minor_version);
    assert!(
        r.reason.start <= r.reason.end && r.reason.end <= r.head_len,
        "reason {:?} head_len {}",
        r.reason,
        r.head_len
    );
    let reason = &buf[r.reason.clone()];
    assert!(
        !reason.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
        "CR/LF/NUL in reason {reason:?}"
    );
    // The reason sits on the status line, right after "HTTP/1.x NNN ".
    let line_start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .expect("a head has a status line");
    assert!(
        r.reason.start >= line_start + 12,
        "reason {:?} inside the status",
        r.reason
    );
    assert!(
        !buf[line_start..r.reason.start].contains(&b'\n'),
        "reason {:?} not on the status line",
        r.reason
    );
    check_field_lines(buf, r.head_len, r.reason.end, hs);

    let no_body = is_head || r.status < 200 || r.status == 204 || r.status == 304;
    assert_eq!(
        r.framing == ResponseFraming::NoBody,
        no_body,
        "{r:?} is_head={is_head}"
    );
    let named = |n: &[u8]| {
        hs.iter()
            .filter(|f| buf[f.name.clone()].eq_ignore_ascii_case(n))
            .count()
    };
    let cl = named(b"content-length");
    let te = named(b"transfer-encoding");
    match r.framing {
        ResponseFraming::NoBody => {}
        ResponseFraming::Length(_) => assert!(cl > 0 && te == 0, "Length with CL {cl} TE {te}"),
        ResponseFraming::Chunked => {
            assert!(
                cl == 0 && te > 0 && r.minor_version == 1,
                "Chunked with CL {cl} TE {te}"
            )
        }
        ResponseFraming::UntilClose => assert_eq!(cl, 0, "UntilClose with Content-Length"),
    }
    // docs/behaviour.md §5: a body's transfer codings other than chunked are refused, never stripped
    // (the TE field is dropped on rewrite). Without a body they are ignored.
    if r.framing != ResponseFraming::NoBody {
        for f in hs {
            if !buf[f.name.clone()].eq_ignore_ascii_case(b"transfer-encoding") {
                continue;
            }
            for item in buf[f.value.clone()].split(|&b| b == b',') {
                let coding = trim_ows(item);
                assert!(
                    coding.is_empty() || coding.eq_ignore_ascii_case(b"chunked"),
                    "transfer coding {coding:?} accepted for {:?}",
                    r.framing
                );
            }
        }
    }
    if r.keep_alive {
        assert_eq!(r.minor_version, 1, "keep-alive on HTTP/1.0");
    }
}

fn check_response_rewrite(buf: &[u8], is_head: bool, r: &ResponseHead, hs: &[HeaderRef]) {
    // As the relay: chunked only to HTTP/1.1 clients, HTTP/1.0 gets the payload until
    // close; close for UntilClose and otherwise either way.
    let mut settings = vec![(r.framing, false), (r.framing, true)];
    if r.framing == ResponseFraming::Chunked {
        settings.push((ResponseFraming::UntilClose, true));
    }
    for (framing, close) in settings {
        let close = close || framing == ResponseFraming::UntilClose;
        let rw = ResponseRewrite { framing, close };
        let mut out = Vec::new();
        write_response_head(&mut out, buf, r, hs, &rw);
        check_crlf_discipline(&out);
        let mut status_line = format!("HTTP/1.1 {:03} ", r.status).into_bytes();
        let reason = &buf[r.reason.clone()];
        if reason.is_empty() {
            status_line.extend_from_slice(canonical_reason(r.status).as_bytes());
        } else {
            status_line.extend_from_slice(reason);
        }
        status_line.extend_from_slice(b"\r\n");
        assert!(
            out.starts_with(&status_line),
            "status line rewritten: {out:?}"
        );

        let fields = written_fields(&out);
        let count = |n: &[u8]| {
            fields
                .iter()
                .filter(|(f, _)| f.eq_ignore_ascii_case(n))
                .count()
        };
        for (name, value) in &fields {
            let allowed = name.eq_ignore_ascii_case(b"transfer-encoding")
                || (name.eq_ignore_ascii_case(b"connection") && *value == b"close");
            assert!(
                !is_hop_by_hop(name) || allowed,
                "hop-by-hop field {name:?} forwarded: {out:?}"
            );
        }
        assert_eq!(count(b"connection"), usize::from(close), "{out:?}");
        let (cl, te) = (count(b"content-length"), count(b"transfer-encoding"));
        match framing {
            ResponseFraming::NoBody => assert_eq!(te, 0, "{out:?}"),
            ResponseFraming::UntilClose => assert!(cl == 0 && te == 0, "{out:?}"),
            ResponseFraming::Length(_) => assert!(cl == 1 && te == 0, "{out:?}"),
            ResponseFraming::Chunked => assert!(cl == 0 && te == 1, "{out:?}"),
        }
        // RFC 9110 §8.6: never a Content-Length in 1xx and 204 (HEAD and 304 keep theirs).
        if r.status < 200 || r.status == 204 {
            assert_eq!(cl, 0, "Content-Length in a {} answer: {out:?}", r.status);
        }

        let mut hs2 = Vec::new();
        if fields.len() > MAX_HEADERS || out.len() > MAX_HEAD {
            continue;
        }
        let r2 = match parse_response(&out, is_head, &mut hs2) {
            Ok(Some(r2)) => r2,
            other => panic!("rewritten response head does not parse: {other:?}\n{out:?}"),
        };
        assert_eq!(r2.head_len, out.len(), "rewritten head ends early: {out:?}");
        assert_eq!(r2.status, r.status);
        assert_eq!(r2.minor_version, 1);
        assert_eq!(
            r2.framing, framing,
            "framing changed by the rewrite: {out:?}"
        );
        assert_eq!(r2.keep_alive, !close, "{out:?}");
        assert_eq!(hs2.len(), fields.len());
        if !reason.is_empty() {
            assert_eq!(&out[r2.reason.clone()], reason, "reason changed: {out:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Chunked bodies
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The last chunk and the trailers were complete.
    Done,
    /// The input ended inside the message.
    NeedMore,
    Failed(ChunkedError),
}

/// What feeding one input gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feed {
    pub payload: Vec<u8>,
    /// Trailer-field bytes reported (`Decoded::trailers`), in order; empty after an error
    /// (the failing call reports none, so what came before depends on the split).
    pub trailers: Vec<u8>,
    /// Bytes of the input taken until done or the input's end (0 after an error).
    pub consumed: usize,
    pub outcome: Outcome,
}

/// Feeds `input` to `dec` in pieces whose lengths cycle through `pieces` (the whole input
/// at once when `pieces` is empty), each piece looped over as the body pumps do, and
/// checks the contract of `decode` on every call.
pub fn drive(dec: &mut ChunkedDecoder, input: &[u8], pieces: &[usize]) -> Feed {
    let mut payload = Vec::new();
    let mut trailers = Vec::new();
    let mut pos = 0;
    let mut piece = 0;
    while pos < input.len() {
        let len = if pieces.is_empty() {
            input.len() - pos
        } else {
            let l = pieces[piece % pieces.len()].max(1);
            piece += 1;
            l.min(input.len() - pos)
        };
        let chunk = &input[pos..pos + len];
        let mut at = 0;
        while at < chunk.len() {
            let was_done = dec.is_done();
            let before = dec.body_len();
            match dec.decode(&chunk[at..]) {
                Err(e) => {
                    assert!(!was_done, "error {e:?} after done");
                    // After an error every call repeats it, whatever the input.
                    assert_eq!(dec.decode(&chunk[at..]), Err(e));
                    assert_eq!(dec.decode(b"0\r\n\r\n"), Err(e));
                    assert_eq!(dec.decode(b""), Err(e));
                    assert!(!dec.is_done());
                    // Where within the failing call the bad byte was is not reported,
                    // so `consumed` is not comparable across splits: 0.
                    return Feed {
                        payload,
                        trailers: Vec::new(),
                        consumed: 0,
                        outcome: Outcome::Failed(e),
                    };
                }
                Ok(d) => {
                    let rest = chunk.len() - at;
                    assert!(d.consumed <= rest, "consumed {} of {rest}", d.consumed);
                    assert!(
                        d.data.start <= d.data.end && d.data.end <= d.consumed,
                        "data {:?} outside consumed {}",
                        d.data,
                        d.consumed
                    );
                    let t = &d.trailers;
                    assert!(
                        t.start <= t.end && t.end <= d.consumed,
                        "trailers {t:?} outside consumed {}",
                        d.consumed
                    );
                    assert!(
                        t.is_empty() || d.data.is_empty(),
                        "trailers {t:?} and data {:?} in one call",
                        d.data
                    );
                    assert!(t.end > t.start || *t == (0..0), "empty trailers {t:?}");
                    // Trailer lines never start with the final CRLF's CR.
                    if !t.is_empty() && trailers.last().is_none_or(|&b| b == b'\n') {
                        assert_ne!(chunk[at + t.start], b'\r', "final CRLF reported as trailer");
                    }
                    trailers.extend_from_slice(&chunk[at + t.start..at + t.end]);
                    assert_eq!(d.done, dec.is_done());
                    assert_eq!(
                        dec.body_len() - before,
                        d.data.len() as u64,
                        "body_len does not count the payload"
                    );
                    if was_done {
                        assert_eq!(d.consumed, 0, "consumed {} after done", d.consumed);
                        assert!(d.done && d.data.is_empty());
                    } else {
                        // Non-empty input and not done: progress, or the caller spins.
                        assert!(d.consumed > 0, "no progress on {} bytes", rest);
                    }
                    payload.extend_from_slice(&chunk[at + d.data.start..at + d.data.end]);
                    at += d.consumed;
                    if d.done {
                        // Bytes after the message belong to the next one: never taken.
                        let after = dec.decode(&chunk[at..]).expect("done decoder errs");
                        assert_eq!(after.consumed, 0);
                        assert!(after.done && after.data.is_empty());
                        let after = dec.decode(b"5\r\nhello\r\n0\r\n\r\n").expect("done");
                        assert_eq!((after.consumed, after.done), (0, true));
                        // Whole trailer lines: each ends with CRLF.
                        assert!(
                            trailers.is_empty() || trailers.ends_with(b"\r\n"),
                            "trailers {trailers:?}"
                        );
                        return Feed {
                            payload,
                            trailers,
                            consumed: pos + at,
                            outcome: Outcome::Done,
                        };
                    }
                }
            }
        }
        pos += len;
    }
    // An empty call changes nothing.
    let d = dec.decode(b"").expect("empty input after success");
    assert_eq!(d.consumed, 0);
    assert!(d.data.is_empty());
    let outcome = if dec.is_done() {
        Outcome::Done
    } else {
        Outcome::NeedMore
    };
    Feed {
        payload,
        trailers,
        consumed: pos,
        outcome,
    }
}

/// Runs the product's buffer driver (`http::chunked::decode_chunks`) over `input` fed in
/// pieces whose lengths cycle through `pieces` (the whole input at once when empty), each
/// piece in its own buffer behind a prefix and followed by sentinel bytes, as a pump's
/// read buffer would be. Checks the untouched bytes on every call; returns the bytes
/// consumed and the concatenated output.
fn drive_buffer(
    input: &[u8],
    pieces: &[usize],
    output: ChunkedOutput,
) -> Result<(usize, Vec<u8>), ChunkedError> {
    const PREFIX: &[u8] = b"<from>";
    const AFTER: &[u8] = b"GET /next HTTP/1.1\r\n";
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut piece = 0;
    let mut buf = Vec::new();
    while pos < input.len() && !dec.is_done() {
        let len = if pieces.is_empty() {
            input.len() - pos
        } else {
            let l = pieces[piece % pieces.len()].max(1);
            piece += 1;
            l.min(input.len() - pos)
        };
        buf.clear();
        buf.extend_from_slice(PREFIX);
        buf.extend_from_slice(&input[pos..pos + len]);
        buf.extend_from_slice(AFTER);
        let original = buf.clone();
        let from = PREFIX.len();
        // The sentinel is not part of the input: give the driver only the piece.
        let end = from + len;
        let (consumed, kept) = decode_chunks(&mut dec, &mut buf[..end], from, output)?;
        assert!(consumed <= len, "consumed {consumed} of {len}");
        assert!(
            consumed == len || dec.is_done(),
            "stopped at {consumed} of {len}"
        );
        assert!(kept <= consumed, "kept {kept} of {consumed}");
        if output == ChunkedOutput::Raw {
            assert_eq!(kept, consumed);
        }
        assert_eq!(&buf[..from], PREFIX, "bytes before `from` changed");
        assert_eq!(
            &buf[from + consumed..],
            &original[from + consumed..],
            "bytes after the consumed ones changed"
        );
        out.extend_from_slice(&buf[from..from + kept]);
        pos += consumed;
    }
    Ok((pos, out))
}

/// `RawWithoutTrailers` output for a body that `drive` fed as `whole`: the validated
/// bytes minus exactly the trailer fields, a chunked body that decodes to the same
/// payload with no trailer field, ending `0[;ext]` CRLF CRLF once the message is done.
fn check_without_trailers(out: &[u8], whole: &Feed) {
    assert_eq!(
        out.len() + whole.trailers.len(),
        whole.consumed,
        "not exactly the trailer fields removed"
    );
    let again = drive(&mut ChunkedDecoder::new(), out, &[]);
    assert_eq!(again.payload, whole.payload, "payload changed");
    assert!(again.trailers.is_empty(), "trailer fields left: {out:?}");
    assert_eq!(again.consumed, out.len());
    match whole.outcome {
        Outcome::Done => {
            assert_eq!(again.outcome, Outcome::Done, "not a complete body: {out:?}");
            // The last-chunk line, then the final CRLF and nothing else.
            let body = out
                .strip_suffix(b"\r\n\r\n")
                .unwrap_or_else(|| panic!("does not end with CRLF CRLF: {out:?}"));
            let line_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            let line = &body[line_start..];
            let size_end = line
                .iter()
                .position(|b| !b.is_ascii_hexdigit())
                .unwrap_or(line.len());
            assert!(
                size_end > 0 && line[..size_end].iter().all(|&b| b == b'0'),
                "last line is not a last-chunk: {line:?}"
            );
        }
        Outcome::NeedMore => assert_eq!(again.outcome, Outcome::NeedMore),
        Outcome::Failed(_) => unreachable!("no output for a failed body"),
    }
}

/// Input layout: byte 0 = `k` (mod 16), then `k` piece lengths (1..=256), then the
/// chunked body. The body is decoded at once, byte by byte and in the chosen pieces: all
/// three must agree. Then the body's bytes, taken as payload, are chunk-encoded with the
/// chosen sizes and must decode back to themselves.
pub fn check_chunked(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k % 16).min(rest.len());
    let (lens, body) = rest.split_at(k);
    let pieces: Vec<usize> = lens.iter().map(|&b| usize::from(b) + 1).collect();

    let whole = drive(&mut ChunkedDecoder::new(), body, &[]);
    let bytewise = drive(&mut ChunkedDecoder::new(), body, &[1]);
    assert_eq!(whole, bytewise, "one call vs byte by byte");
    if !pieces.is_empty() {
        let split = drive(&mut ChunkedDecoder::new(), body, &pieces);
        assert_eq!(whole, split, "one call vs pieces {pieces:?}");
    }
    if whole.outcome == Outcome::NeedMore {
        assert_eq!(whole.consumed, body.len());
    }

    // The pumps' in-place buffer driver, for each output, at once and in the pieces.
    for output in [
        ChunkedOutput::Raw,
        ChunkedOutput::RawWithoutTrailers,
        ChunkedOutput::Payload,
    ] {
        let at_once = drive_buffer(body, &[], output);
        if !pieces.is_empty() {
            let split = drive_buffer(body, &pieces, output);
            assert_eq!(at_once, split, "{output:?}: at once vs pieces {pieces:?}");
        }
        assert_eq!(
            at_once,
            drive_buffer(body, &[1], output),
            "{output:?}: at once vs byte by byte"
        );
        match (at_once, &whole.outcome) {
            (Ok((consumed, out)), Outcome::Done | Outcome::NeedMore) => {
                assert_eq!(consumed, whole.consumed, "{output:?}");
                match output {
                    ChunkedOutput::Raw => assert_eq!(out, &body[..consumed]),
                    ChunkedOutput::Payload => assert_eq!(out, whole.payload),
                    ChunkedOutput::RawWithoutTrailers => check_without_trailers(&out, &whole),
                }
            }
            (Err(e), Outcome::Failed(f)) => assert_eq!(e, *f, "{output:?}"),
            (r, o) => panic!("{output:?}: buffer driver {r:?} vs decoder {o:?}"),
        }
    }

    check_chunked_roundtrip(body, &pieces, lens.first().copied().unwrap_or(0));
}

/// Encodes `payload` in chunks of the `sizes` (cycled), in the style chosen by `style`
/// (hex case, leading zeros, extensions, trailers), and checks it decodes back.
fn check_chunked_roundtrip(payload: &[u8], sizes: &[usize], style: u8) {
    let mut enc = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < payload.len() {
        let n = if sizes.is_empty() {
            payload.len()
        } else {
            sizes[i % sizes.len()]
        }
        .min(payload.len() - at);
        i += 1;
        let size = if style & 1 != 0 {
            format!("{n:X}")
        } else {
            format!("{n:x}")
        };
        if style & 2 != 0 {
            enc.extend_from_slice(b"000");
        }
        enc.extend_from_slice(size.as_bytes());
        if style & 4 != 0 {
            enc.extend_from_slice(b" ; name=\"quoted \\\" value\"; flag ;t=tok");
        }
        enc.extend_from_slice(b"\r\n");
        enc.extend_from_slice(&payload[at..at + n]);
        enc.extend_from_slice(b"\r\n");
        at += n;
    }
    enc.extend_from_slice(if style & 2 != 0 { b"00000" } else { b"0" });
    if style & 4 != 0 {
        enc.extend_from_slice(b";last");
    }
    enc.extend_from_slice(b"\r\n");
    let trailers: &[u8] = if style & 8 != 0 {
        b"Server-Timing: total;dur=12\r\nX-Checksum:\r\n"
    } else {
        b""
    };
    enc.extend_from_slice(trailers);
    enc.extend_from_slice(b"\r\n");
    let mut next = enc.clone();
    next.extend_from_slice(b"GET / HTTP/1.1\r\n");
    for pieces in [&[][..], sizes] {
        let fed = drive(&mut ChunkedDecoder::new(), &next, pieces);
        assert_eq!(fed.trailers, trailers, "trailer fields reported");
        assert_eq!(
            fed.outcome,
            Outcome::Done,
            "valid encoding refused: {enc:?}"
        );
        assert_eq!(fed.consumed, enc.len(), "consumed past the message end");
        assert_eq!(fed.payload, payload, "payload changed by encode/decode");
    }
}

// ---------------------------------------------------------------------------------------
// Health bodies
// ---------------------------------------------------------------------------------------

fn check_probe(r: &ProbeResult) {
    if let Some(u) = r.usage {
        assert!(u <= 100, "usage {u}");
    }
    for (id, rt) in &r.runtimes {
        assert!(rt.usage <= 100, "runtime {id:?} usage {}", rt.usage);
    }
    if let Some(s) = &r.state_status {
        assert!(
            s.chars().count() <= 64,
            "status kept whole: {} chars",
            s.chars().count()
        );
    }
    assert_eq!(
        r.online,
        r.error.is_none(),
        "online {} error {:?}",
        r.online,
        r.error
    );
    if let Some(e) = &r.error {
        // At most 64 status characters, each at most 10 when Debug-escaped.
        assert!(
            e.chars().count() <= 700,
            "reason of {} chars",
            e.chars().count()
        );
    }
}

pub fn check_health(body: &[u8]) {
    let r = parse_health(200, body);
    check_probe(&r);
    // JSON around-whitespace is insignificant, and parsing is deterministic.
    let mut padded = b" \n\t".to_vec();
    padded.extend_from_slice(body);
    padded.extend_from_slice(b"\r\n ");
    let p = parse_health(200, &padded);
    // A body that is not JSON at all may turn into one only if whitespace completes it,
    // which JSON never allows: both must be read the same.
    assert_eq!(p, r, "leading/trailing whitespace changed the result");
    assert_eq!(parse_health(200, body), r, "not deterministic");
    if r.online {
        if let Some(s) = &r.state_status {
            assert_eq!(s, "pass", "online with status {s:?}");
        }
    }
    for status in [0, 204, 500, 503] {
        let off = parse_health(status, body);
        check_probe(&off);
        assert!(!off.online && off.usage.is_none() && off.runtimes.is_empty());
    }
}

// ---------------------------------------------------------------------------------------
// Replay of the committed corpus and the regressions with `cargo test` (stable, no
// libFuzzer): the quick check that a fix holds.
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn replay(target: &str, check: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                if !path.is_file() {
                    continue;
                }
                let data = std::fs::read(&path).unwrap();
                let result = std::panic::catch_unwind(|| check(&data));
                assert!(result.is_ok(), "{} fails its checks", path.display());
                n += 1;
            }
        }
        assert!(n > 0, "no inputs for {target}");
    }

    #[test]
    fn request_head_corpus() {
        replay("request_head", super::check_request_stream);
    }

    #[test]
    fn response_head_corpus() {
        replay("response_head", super::check_response);
    }

    #[test]
    fn chunked_decoder_corpus() {
        replay("chunked_decoder", super::check_chunked);
    }

    #[test]
    fn health_body_corpus() {
        replay("health_body", super::check_health);
    }
}
