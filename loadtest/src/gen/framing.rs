//! Response framing for the load generator: finds where each HTTP/1.1 response ends
//! (RFC 9112 §6.3: no body, Content-Length, chunked, or until close) while the body streams
//! through. Only the head is buffered; body bytes are counted and dropped.

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;
/// Most header fields accepted in a response head.
const MAX_HEADERS: usize = 128;

use crate::h1;
use crate::warm::Warmth;

/// A complete response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// False when the server asked to close, or the body was delimited by the close.
    pub keep_alive: bool,
    /// Decoded body length (chunk framing excluded).
    pub body_len: u64,
    /// N of `x-mock-name: …-N` (the mock executors of a load test are `executor-N`).
    pub executor: Option<u16>,
    /// `x-mock-cold`: how warm the mock's runtime was.
    pub warmth: Warmth,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramingError {
    HeadTooLarge,
    BadHead(&'static str),
    BadChunk(&'static str),
    /// The connection ended inside a response (or before any byte of it).
    Truncated,
    /// Valid HTTP the generator does not handle (101 Switching Protocols).
    Unsupported(&'static str),
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::HeadTooLarge => write!(f, "response head over {MAX_HEAD} bytes"),
            FramingError::BadHead(why) => write!(f, "bad response head: {why}"),
            FramingError::BadChunk(why) => write!(f, "bad chunked body: {why}"),
            FramingError::Truncated => write!(f, "connection closed inside a response"),
            FramingError::Unsupported(why) => write!(f, "unsupported response: {why}"),
        }
    }
}

impl std::error::Error for FramingError {}

/// What one `feed` call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feed {
    /// Bytes of the input that belong to the current response.
    pub consumed: usize,
    /// Set when the response ended within the input; the parser is then ready for the next.
    pub done: Option<Response>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Head,
    /// Content-Length body; bytes still to come.
    Length(u64),
    /// Accumulating a chunk-size line into `line`.
    ChunkSize,
    /// Inside chunk data; bytes still to come.
    ChunkData(u64),
    /// The CRLF after chunk data (accumulated into `line`, must be empty).
    ChunkEnd,
    /// A trailer line (accumulated into `line`); an empty one ends the message.
    Trailer,
    /// Body delimited by the connection closing.
    UntilClose,
}

/// Incremental response parser; feed it whatever a read returned.
#[derive(Debug)]
pub struct ResponseParser {
    state: State,
    /// The head so far (only while in `State::Head`).
    head: Vec<u8>,
    /// The current chunk-size / trailer line.
    line: Vec<u8>,
    status: u16,
    keep_alive: bool,
    body_len: u64,
    executor: Option<u16>,
    warmth: Warmth,
    /// The request was HEAD: no response carries a body.
    head_request: bool,
}

impl ResponseParser {
    pub fn new(head_request: bool) -> ResponseParser {
        ResponseParser {
            state: State::Head,
            head: Vec::with_capacity(512),
            line: Vec::new(),
            status: 0,
            keep_alive: true,
            body_len: 0,
            executor: None,
            warmth: Warmth::Untracked,
            head_request,
        }
    }

    /// True when no byte of a response has been seen since the last one ended.
    pub fn is_idle(&self) -> bool {
        self.state == State::Head && self.head.is_empty()
    }

    /// Forgets any partial response (after an error, before reusing the parser).
    pub fn reset(&mut self) {
        self.state = State::Head;
        self.head.clear();
        self.line.clear();
    }

    /// Consumes bytes of the current response from `data`. Stops right after a response
    /// ends: bytes beyond `consumed` belong to whatever comes next.
    pub fn feed(&mut self, data: &[u8]) -> Result<Feed, FramingError> {
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            match self.state {
                State::Head => {
                    let (used, complete) = self.take_head(rest)?;
                    i += used;
                    if complete {
                        if let Some(done) = self.parse_head()? {
                            return Ok(Feed {
                                consumed: i,
                                done: Some(done),
                            });
                        }
                    }
                }
                State::Length(left) => {
                    let n = left.min(rest.len() as u64);
                    i += n as usize;
                    self.body_len += n;
                    if n == left {
                        return Ok(self.finish(i));
                    }
                    self.state = State::Length(left - n);
                }
                State::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    i += n as usize;
                    self.body_len += n;
                    self.state = if n == left {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left - n)
                    };
                }
                State::UntilClose => {
                    self.body_len += rest.len() as u64;
                    i = data.len();
                }
                State::ChunkSize | State::ChunkEnd | State::Trailer => {
                    let (used, complete) = self.take_line(rest)?;
                    i += used;
                    if complete && self.line_done()? {
                        return Ok(self.finish(i));
                    }
                }
            }
        }
        Ok(Feed {
            consumed: i,
            done: None,
        })
    }

    /// The connection reached EOF. A body delimited by the close ends here; anything else
    /// in progress (or nothing at all) is a truncation.
    pub fn eof(&mut self) -> Result<Response, FramingError> {
        if self.state == State::UntilClose {
            let done = self.finish(0).done;
            if let Some(done) = done {
                return Ok(done);
            }
        }
        self.reset();
        Err(FramingError::Truncated)
    }

    /// Appends head bytes up to the blank line. Returns (bytes used, head complete).
    fn take_head(&mut self, rest: &[u8]) -> Result<(usize, bool), FramingError> {
        // Find the blank line before copying, so body bytes never land in the head buffer.
        // It may straddle the previous input: look at (last 3 head bytes + first 3 new).
        let old = self.head.len();
        let carried = old.min(3);
        let mut seam = self.head[old - carried..].to_vec();
        seam.extend_from_slice(&rest[..rest.len().min(3)]);
        let end = match find(&seam, b"\r\n\r\n") {
            Some(pos) => Some(pos + 4 - carried),
            None => find(rest, b"\r\n\r\n").map(|pos| pos + 4),
        };
        if let Some(end) = end.filter(|&e| old + e <= MAX_HEAD) {
            self.head.extend_from_slice(&rest[..end]);
            return Ok((end, true));
        }
        if end.is_some() || old + rest.len() > MAX_HEAD {
            return Err(FramingError::HeadTooLarge);
        }
        self.head.extend_from_slice(rest);
        Ok((rest.len(), false))
    }

    /// Parses the buffered head and chooses the body framing. `Some` when the response is
    /// already complete (no body).
    fn parse_head(&mut self) -> Result<Option<Response>, FramingError> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (status, minor, fields) =
            h1::parse_response_fields(&self.head, &mut fields).map_err(|e| match e {
                h1::HeadError::TooLarge => FramingError::BadHead("too many header fields"),
                _ => FramingError::BadHead("not an HTTP/1.x response"),
            })?;
        // 1xx are interim (RFC 9110 §15.2): the final response follows on the same stream.
        if status == 101 {
            return Err(FramingError::Unsupported("101 Switching Protocols"));
        }
        if (100..200).contains(&status) {
            self.head.clear();
            return Ok(None);
        }

        let mut keep_alive = minor == 1;
        let mut chunked_last = None;
        let mut length: Option<u64> = None;
        let mut executor = None;
        let mut warmth = Warmth::Untracked;
        for h in fields {
            if h.name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|&b| b == b',') {
                    let token = trim(token);
                    if token.eq_ignore_ascii_case(b"close") {
                        keep_alive = false;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && minor == 0 {
                        keep_alive = true;
                    }
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                let last = h
                    .value
                    .split(|&b| b == b',')
                    .map(trim)
                    .rfind(|c| !c.is_empty());
                if let Some(last) = last {
                    chunked_last = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            } else if h.name.eq_ignore_ascii_case("x-mock-name") {
                executor = trailing_number(h.value);
            } else if h.name.eq_ignore_ascii_case("x-mock-cold") {
                warmth = Warmth::parse(trim(h.value));
            } else if h.name.eq_ignore_ascii_case("content-length") {
                for v in h.value.split(|&b| b == b',') {
                    let n = parse_decimal(trim(v))
                        .ok_or(FramingError::BadHead("invalid content-length"))?;
                    if length.is_some_and(|l| l != n) {
                        return Err(FramingError::BadHead("conflicting content-length"));
                    }
                    length = Some(n);
                }
            }
        }
        self.status = status;
        self.keep_alive = keep_alive;
        self.body_len = 0;
        self.executor = executor;
        self.warmth = warmth;
        self.head.clear();

        // RFC 9112 §6.3, in order.
        if self.head_request || status == 204 || status == 304 {
            return Ok(self.finish(0).done);
        }
        match (chunked_last, length) {
            (Some(true), _) => self.state = State::ChunkSize,
            // Transfer-Encoding without final chunked: read until close (§6.3 item 4/7).
            (Some(false), _) | (None, None) => {
                self.keep_alive = false;
                self.state = State::UntilClose;
            }
            (None, Some(0)) => return Ok(self.finish(0).done),
            (None, Some(n)) => self.state = State::Length(n),
        }
        Ok(None)
    }

    /// Appends to `line` up to LF. Returns (bytes used, line complete); `line` then holds
    /// the line without CRLF.
    fn take_line(&mut self, rest: &[u8]) -> Result<(usize, bool), FramingError> {
        let (used, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(pos) => (pos + 1, true),
            None => (rest.len(), false),
        };
        self.line.extend_from_slice(&rest[..used]);
        if self.line.len() > MAX_LINE + 2 {
            return Err(FramingError::BadChunk("line too long"));
        }
        if complete {
            self.line.pop();
            if self.line.pop() != Some(b'\r') {
                return Err(FramingError::BadChunk("line not ended by CRLF"));
            }
        }
        Ok((used, complete))
    }

    /// Acts on a complete line in a chunked body. True when the message ended.
    fn line_done(&mut self) -> Result<bool, FramingError> {
        let line = std::mem::take(&mut self.line);
        let ended = match self.state {
            State::ChunkSize => match parse_chunk_size(&line)? {
                0 => {
                    self.state = State::Trailer;
                    false
                }
                n => {
                    self.state = State::ChunkData(n);
                    false
                }
            },
            State::ChunkEnd => {
                if !line.is_empty() {
                    return Err(FramingError::BadChunk("chunk data not followed by CRLF"));
                }
                self.state = State::ChunkSize;
                false
            }
            // Trailer fields are accepted and ignored; the empty line ends the message.
            _ => line.is_empty(),
        };
        self.line = line;
        self.line.clear();
        Ok(ended)
    }

    fn finish(&mut self, consumed: usize) -> Feed {
        let done = Response {
            status: self.status,
            keep_alive: self.keep_alive,
            body_len: self.body_len,
            executor: self.executor,
            warmth: self.warmth,
        };
        self.reset();
        Feed {
            consumed,
            done: Some(done),
        }
    }
}

/// The chunk-size line's rule is the one HTTP/1 reader's (`crate::h1`).
fn parse_chunk_size(line: &[u8]) -> Result<u64, FramingError> {
    h1::parse_chunk_size(line).map_err(|e| match e {
        h1::BodyError::Malformed(why) => FramingError::BadChunk(why),
        _ => FramingError::BadChunk("invalid chunk size"),
    })
}

/// `12` of `executor-12`.
fn trailing_number(v: &[u8]) -> Option<u16> {
    let v = trim(v);
    let digits = v.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let n = parse_decimal(&v[v.len() - digits..])?;
    u16::try_from(n).ok()
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    h1::parse_decimal(std::str::from_utf8(s).ok()?)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `step` bytes, the way reads would deliver it, and collects
    /// every complete response. Leftover bytes after a response start the next one.
    fn run(input: &[u8], step: usize, head_request: bool) -> Result<Vec<Response>, FramingError> {
        let mut p = ResponseParser::new(head_request);
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let mut piece = piece;
            while !piece.is_empty() {
                let feed = p.feed(piece)?;
                piece = &piece[feed.consumed..];
                if let Some(done) = feed.done {
                    out.push(done);
                }
            }
        }
        if !p.is_idle() {
            out.push(p.eof()?);
        }
        Ok(out)
    }

    /// Same outcome whatever the segmentation.
    fn all_steps(input: &[u8]) -> Result<Vec<Response>, FramingError> {
        let first = run(input, input.len().max(1), false);
        for step in [1, 2, 3, 5, 7, 16, 100] {
            assert_eq!(run(input, step, false), first, "step {step}");
        }
        first
    }

    fn ok(status: u16, keep_alive: bool, body_len: u64) -> Response {
        Response {
            status,
            keep_alive,
            body_len,
            executor: None,
            warmth: Warmth::Untracked,
        }
    }

    #[test]
    fn content_length_and_keep_alive() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            all_steps(input),
            Ok(vec![ok(200, true, 5), ok(404, true, 0)])
        );
    }

    #[test]
    fn feed_stops_at_the_end_of_a_response() {
        let mut p = ResponseParser::new(false);
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabEXTRA";
        let feed = p.feed(input).expect("valid");
        assert_eq!(feed.consumed, input.len() - 5);
        assert_eq!(feed.done, Some(ok(200, true, 2)));
        assert!(p.is_idle());
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                      5;name=val\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
                      HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            all_steps(input),
            Ok(vec![ok(200, true, 15), ok(204, true, 0)])
        );
    }

    #[test]
    fn large_chunked_body_is_not_buffered() {
        let mut input = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..16 {
            input.extend_from_slice(b"10000\r\n");
            input.extend(std::iter::repeat_n(b'x', 65_536));
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
        let mut p = ResponseParser::new(false);
        let mut done = None;
        for piece in input.chunks(65_536) {
            let feed = p.feed(piece).expect("valid");
            assert_eq!(feed.consumed, piece.len());
            done = done.or(feed.done);
            assert!(p.head.capacity() <= 1024 && p.line.capacity() <= 1024);
        }
        assert_eq!(done, Some(ok(200, true, 1 << 20)));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n\
                      HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nz";
        assert_eq!(all_steps(input), Ok(vec![ok(201, true, 1)]));
    }

    #[test]
    fn close_delimited_and_connection_close() {
        assert_eq!(
            all_steps(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
            Ok(vec![ok(200, false, 13)])
        );
        assert_eq!(
            all_steps(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n"
            ),
            Ok(vec![ok(200, false, 0)])
        );
        assert_eq!(
            all_steps(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
            Ok(vec![ok(200, false, 0)])
        );
        assert_eq!(
            all_steps(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"),
            Ok(vec![ok(200, true, 0)])
        );
    }

    #[test]
    fn head_requests_and_304_have_no_body() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(run(input, 7, true), Ok(vec![ok(200, true, 0)]));
        let input = b"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\n\r\n";
        assert_eq!(all_steps(input), Ok(vec![ok(304, true, 0)]));
    }

    #[test]
    fn truncation_and_garbage_are_errors() {
        assert_eq!(
            all_steps(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
            Err(FramingError::Truncated)
        );
        assert_eq!(
            all_steps(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Err(FramingError::Truncated)
        );
        assert!(matches!(
            all_steps(b"this is not http\r\n\r\n"),
            Err(FramingError::BadHead(_))
        ));
        assert!(matches!(
            all_steps(b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\n"),
            Err(FramingError::BadHead(_))
        ));
        assert!(matches!(
            all_steps(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err(FramingError::BadChunk(_))
        ));
        assert!(matches!(
            all_steps(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n0\r\n\r\n"),
            Err(FramingError::BadChunk(_))
        ));
        assert!(matches!(
            all_steps(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n"
            ),
            Err(FramingError::BadChunk(_))
        ));
        assert_eq!(
            all_steps(b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(FramingError::Unsupported("101 Switching Protocols"))
        );
        let mut p = ResponseParser::new(false);
        assert_eq!(p.eof(), Err(FramingError::Truncated));
    }

    #[test]
    fn oversized_head_is_refused() {
        let mut input = b"HTTP/1.1 200 OK\r\n".to_vec();
        while input.len() <= MAX_HEAD + 10 {
            input.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(run(&input, 4096, false), Err(FramingError::HeadTooLarge));
    }

    #[test]
    fn mock_tags_are_captured() {
        let r = run(
            b"HTTP/1.1 200 OK\r\nX-Mock-Name: executor-12\r\nx-mock-cold: wait \r\ncontent-length: 0\r\n\r\n\
              HTTP/1.1 200 OK\r\nx-mock-name: b\r\ncontent-length: 0\r\n\r\n",
            7,
            false,
        )
        .expect("two responses");
        assert_eq!((r[0].executor, r[0].warmth), (Some(12), Warmth::ColdWait));
        // Nothing carried over from the previous response.
        assert_eq!((r[1].executor, r[1].warmth), (None, Warmth::Untracked));
        assert_eq!(trailing_number(b"executor-70000"), None);
    }
}
