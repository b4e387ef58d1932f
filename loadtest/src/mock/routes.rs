//! One connection of the mock executor: the keep-alive request loop, the routes
//! (/v1/health, ping, echo/upload, download, sleep, status, close, reset, truncate, garbage)
//! and how the connection ends.

use super::http;
use super::{hex, lock, pattern_block, HealthMode, RecordedRequest, Shared, BLOCK, TARGETS_KEPT};
use crate::h1::{self, BodyError, Framing, Head, HeadError};
use sha2::{Digest, Sha256};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Size of the `HealthMode::Huge` body.
const HUGE_BODY: u64 = 2 * 1024 * 1024;

/// One request counted in `Shared::active` (and `max_active`) until dropped.
struct Active<'a>(&'a Shared);

impl<'a> Active<'a> {
    fn enter(shared: &'a Shared) -> Active<'a> {
        let now = shared.active.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_active.fetch_max(now, Ordering::SeqCst);
        Active(shared)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How an exchange leaves the connection.
enum Next {
    KeepAlive,
    /// Response sent with `Connection: close`: half-close, then drain briefly so unread
    /// input does not turn our FIN into a RST that could destroy the response.
    Close,
    /// Nothing more to say (peer gone, or stopping): just drop the socket.
    Drop,
    /// Close at once without answering (/v1/reset).
    Reset,
}

struct Conn<'a> {
    shared: &'a Shared,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
    /// Whether this connection already counted in `connections()`.
    counted: bool,
}

/// Serves one accepted connection until it closes. Never panics on peer input.
pub(crate) fn serve(shared: &Shared, stream: TcpStream) {
    // Heads and bodies are written through a buffer and flushed per response; Nagle would
    // only add latency to the flushes.
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut conn = Conn {
        shared,
        reader: BufReader::with_capacity(BLOCK, read_half),
        writer: BufWriter::with_capacity(BLOCK, stream),
        counted: false,
    };
    loop {
        match conn.exchange() {
            Ok(Next::KeepAlive) => continue,
            Ok(Next::Close) => {
                conn.linger_close();
                return;
            }
            Ok(Next::Reset) => {
                let _ = conn.writer.get_ref().shutdown(Shutdown::Both);
                return;
            }
            Ok(Next::Drop) | Err(_) => return,
        }
    }
}

impl Conn<'_> {
    /// Reads one request (head and whole body) and answers it.
    fn exchange(&mut self) -> io::Result<Next> {
        let head = match h1::read_head(&mut self.reader) {
            Ok(head) => head,
            Err(HeadError::Closed | HeadError::Failed(_)) => return Ok(Next::Drop),
            Err(HeadError::TooLarge) => {
                return self.message(431, "request head too large", false, true);
            }
            Err(HeadError::Malformed) => return self.message(400, "bad request", false, true),
        };
        let (path, query) = split_target(&head.target);
        let is_health = path == "/v1/health";
        if !is_health && !self.counted {
            self.counted = true;
            self.shared.connections.fetch_add(1, Ordering::SeqCst);
        }
        let head_only = head.method == "HEAD";

        let framing = match h1::request_framing(&head.headers) {
            Ok(f) => f,
            Err(why) => return self.message(400, why, head_only, true),
        };
        if head.expects_continue() && framing != Framing::Length(0) {
            http::write_head(&mut self.writer, &self.shared.name, 100, &[])?;
            self.writer.flush()?;
        }
        let mut hasher = Sha256::new();
        let body = match h1::read_body(&mut self.reader, framing, &mut |b| hasher.update(b)) {
            Ok(body) => body,
            // Cut off (or failed: it cannot be finished either way).
            Err(BodyError::Aborted | BodyError::Failed(_) | BodyError::Stopped) => {
                // A connection cut by stop() is not the client's doing.
                if !self.shared.stopping.load(Ordering::SeqCst) {
                    self.shared.aborted.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(Next::Drop);
            }
            Err(BodyError::Malformed(why)) => return self.message(400, why, head_only, true),
        };
        let close = head.wants_close();

        if is_health {
            self.shared.health_requests.fetch_add(1, Ordering::SeqCst);
            return self.health(head_only, close);
        }

        let rec = RecordedRequest {
            method: head.method.clone(),
            target: head.target.clone(),
            headers: head.headers.clone(),
            body_len: body.len,
            body_sha256: hex(&hasher.finalize()),
            chunked: framing == Framing::Chunked,
            trailers: body.trailers,
        };
        // Recorded before counting, so a test that sees the count also sees the request;
        // both happen before the response is written.
        *lock(&self.shared.last) = Some(rec.clone());
        {
            let mut targets = lock(&self.shared.targets);
            if targets.len() < TARGETS_KEPT {
                targets.push(rec.target.clone());
            }
        }
        let active = Active::enter(self.shared);
        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        let delay = self.shared.delay;
        if !delay.is_zero() {
            let _one_at_a_time = self.shared.serial.as_ref().map(lock);
            if self.shared.wait_stopped(Some(delay)) {
                return Ok(Next::Drop);
            }
        }
        // Before the answer starts: a client that reads it may send its next request at
        // once, and that one must not be counted together with this one.
        drop(active);

        match path {
            "/v1/ping" => self.ping(&head, head_only, close),
            "/v1/echo" | "/v1/upload" => {
                let body = echo_json(&self.shared.name, &rec);
                self.respond(200, "application/json", body.as_bytes(), head_only, close)
            }
            "/v1/download" => self.download(&head, query, head_only, close),
            "/v1/sleep" => self.sleep(query, head_only, close),
            "/v1/status" => self.status(query, head_only, close),
            "/v1/close" => self.respond(200, "text/plain", b"bye", head_only, true),
            "/v1/reset" => Ok(Next::Reset),
            "/v1/truncate" => self.truncate(query, head_only),
            "/v1/garbage" => {
                self.writer.write_all(b"this is not http\r\n\r\n")?;
                self.writer.flush()?;
                Ok(Next::Close)
            }
            _ => self.message(404, "not found", head_only, close),
        }
    }

    fn health(&mut self, head_only: bool, close: bool) -> io::Result<Next> {
        let mode = lock(&self.shared.health).clone();
        let json = "application/json";
        match mode {
            HealthMode::Pass { usage, runtimes } => {
                let mut s = format!("{{\"status\":\"pass\",\"usage\":{usage},\"runtimes\":{{");
                for (i, (id, status, usage)) in runtimes.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    http::json_str(&mut s, id);
                    s.push_str(":{\"status\":");
                    http::json_str(&mut s, status);
                    s.push_str(&format!(",\"usage\":{usage}}}"));
                }
                s.push_str("}}");
                self.respond(200, json, s.as_bytes(), head_only, close)
            }
            HealthMode::NewStyle { usage: Some(usage) } => {
                let s = format!("{{\"usage\":{usage}}}");
                self.respond(200, json, s.as_bytes(), head_only, close)
            }
            HealthMode::NewStyle { usage: None } => {
                self.respond(200, json, b"{}", head_only, close)
            }
            HealthMode::Text => self.respond(200, "text/plain", b"OK", head_only, close),
            HealthMode::Fail => self.respond(
                200,
                json,
                b"{\"status\":\"fail\",\"usage\":0,\"runtimes\":{}}",
                head_only,
                close,
            ),
            HealthMode::Status(code) => {
                self.respond(code, json, b"{\"message\":\"unhealthy\"}", head_only, close)
            }
            HealthMode::Raw(body) => self.respond(200, json, body.as_bytes(), head_only, close),
            HealthMode::Huge => self.huge(head_only, close),
            HealthMode::Hang => {
                self.shared.wait_stopped(None);
                Ok(Next::Drop)
            }
        }
    }

    /// Exactly [`HUGE_BODY`] bytes of `{"status":"pass",...,"padding":"xxx…"}`, streamed.
    fn huge(&mut self, head_only: bool, close: bool) -> io::Result<Next> {
        const PREFIX: &[u8] = b"{\"status\":\"pass\",\"usage\":0,\"runtimes\":{},\"padding\":\"";
        const SUFFIX: &[u8] = b"\"}";
        let len = HUGE_BODY.to_string();
        let mut headers = vec![
            ("content-type", "application/json"),
            ("content-length", &*len),
        ];
        if close {
            headers.push(("connection", "close"));
        }
        http::write_head(&mut self.writer, &self.shared.name, 200, &headers)?;
        if !head_only {
            self.writer.write_all(PREFIX)?;
            let pad = [b'x'; 4096];
            let mut left = HUGE_BODY - (PREFIX.len() + SUFFIX.len()) as u64;
            while left > 0 {
                let n = left.min(pad.len() as u64) as usize;
                self.writer.write_all(&pad[..n])?;
                left -= n as u64;
            }
            self.writer.write_all(SUFFIX)?;
        }
        self.finish(close)
    }

    fn ping(&mut self, head: &Head, head_only: bool, close: bool) -> io::Result<Next> {
        let mut s = String::from("{\"ping\":\"pong\",\"server\":");
        let server = head.header("x-opr-executor-hostname").unwrap_or("UNKNOWN");
        http::json_str(&mut s, server);
        s.push_str(",\"secret\":");
        http::json_str(&mut s, head.header("authorization").unwrap_or("UNKNOWN"));
        s.push_str(",\"name\":");
        http::json_str(&mut s, &self.shared.name);
        s.push('}');
        self.respond(200, "application/json", s.as_bytes(), head_only, close)
    }

    /// `?bytes=N[&chunked=1][&chunk=K]`: N pattern bytes, streamed in blocks.
    fn download(
        &mut self,
        head: &Head,
        query: &str,
        head_only: bool,
        close: bool,
    ) -> io::Result<Next> {
        let Some(n) = num_param(query, "bytes") else {
            return self.message(400, "bytes=N required", head_only, close);
        };
        let chunked = matches!(param(query, "chunked"), Some("1" | "true"));
        let chunk = match param(query, "chunk") {
            None => 65_536,
            Some(k) => match k.parse::<u64>() {
                Ok(k) if k > 0 => k,
                _ => {
                    return self.message(400, "chunk must be a positive integer", head_only, close)
                }
            },
        };
        // HTTP/1.0 clients cannot decode chunked framing.
        let chunked = chunked && head.minor == 1;
        let len = n.to_string();
        let mut headers = vec![("content-type", "application/octet-stream")];
        if chunked {
            headers.push(("transfer-encoding", "chunked"));
        } else {
            headers.push(("content-length", &len));
        }
        if close {
            headers.push(("connection", "close"));
        }
        http::write_head(&mut self.writer, &self.shared.name, 200, &headers)?;
        if !head_only {
            if chunked {
                let mut i = 0;
                while i < n {
                    let size = chunk.min(n - i);
                    write!(self.writer, "{size:x}\r\n")?;
                    self.write_pattern(i, size)?;
                    self.writer.write_all(b"\r\n")?;
                    i += size;
                }
                self.writer.write_all(b"0\r\n\r\n")?;
            } else {
                self.write_pattern(0, n)?;
            }
        }
        self.finish(close)
    }

    fn write_pattern(&mut self, start: u64, len: u64) -> io::Result<()> {
        let end = start + len;
        let mut i = start;
        while i < end {
            let block = pattern_block(i, end - i);
            self.writer.write_all(block)?;
            i += block.len() as u64;
        }
        Ok(())
    }

    fn sleep(&mut self, query: &str, head_only: bool, close: bool) -> io::Result<Next> {
        let Some(ms) = num_param(query, "ms") else {
            return self.message(400, "ms=N required", head_only, close);
        };
        if self.shared.wait_stopped(Some(Duration::from_millis(ms))) {
            return Ok(Next::Drop);
        }
        let body = format!("{{\"slept\":{ms}}}");
        self.respond(200, "application/json", body.as_bytes(), head_only, close)
    }

    /// `?code=N`. A 1xx other than 101 is sent as an interim response followed by a final
    /// 200 (a lone 1xx would leave the client waiting); 101 is sent and the socket closed.
    fn status(&mut self, query: &str, head_only: bool, close: bool) -> io::Result<Next> {
        let code = match num_param(query, "code") {
            Some(c @ 100..=999) => c as u16,
            _ => return self.message(400, "code=100..999 required", head_only, close),
        };
        let body = format!("{{\"status\":{code}}}");
        match code {
            101 => {
                http::write_head(&mut self.writer, &self.shared.name, 101, &[])?;
                self.writer.flush()?;
                Ok(Next::Close)
            }
            100..=199 => {
                http::write_head(&mut self.writer, &self.shared.name, code, &[])?;
                self.respond(200, "application/json", body.as_bytes(), head_only, close)
            }
            205 => self.respond(205, "application/json", b"", head_only, close),
            _ => self.respond(code, "application/json", body.as_bytes(), head_only, close),
        }
    }

    /// `?bytes=N`: announce N bytes, send N/2, close.
    fn truncate(&mut self, query: &str, head_only: bool) -> io::Result<Next> {
        let Some(n) = num_param(query, "bytes") else {
            return self.message(400, "bytes=N required", head_only, true);
        };
        let len = n.to_string();
        let headers = [
            ("content-type", "application/octet-stream"),
            ("content-length", &*len),
        ];
        http::write_head(&mut self.writer, &self.shared.name, 200, &headers)?;
        if !head_only {
            self.write_pattern(0, n / 2)?;
        }
        self.writer.flush()?;
        Ok(Next::Close)
    }

    /// Small JSON `{"message":...}` response.
    fn message(
        &mut self,
        status: u16,
        msg: &str,
        head_only: bool,
        close: bool,
    ) -> io::Result<Next> {
        let mut body = String::from("{\"message\":");
        http::json_str(&mut body, msg);
        body.push('}');
        self.respond(
            status,
            "application/json",
            body.as_bytes(),
            head_only,
            close,
        )
    }

    /// A complete response with Content-Length framing (none for body-less statuses).
    fn respond(
        &mut self,
        status: u16,
        content_type: &str,
        body: &[u8],
        head_only: bool,
        close: bool,
    ) -> io::Result<Next> {
        let len = body.len().to_string();
        let has_body = !http::bodyless(status);
        let mut headers = Vec::with_capacity(3);
        if has_body {
            headers.push(("content-type", content_type));
            headers.push(("content-length", &*len));
        }
        if close {
            headers.push(("connection", "close"));
        }
        http::write_head(&mut self.writer, &self.shared.name, status, &headers)?;
        if has_body && !head_only {
            self.writer.write_all(body)?;
        }
        self.finish(close)
    }

    fn finish(&mut self, close: bool) -> io::Result<Next> {
        self.writer.flush()?;
        Ok(if close { Next::Close } else { Next::KeepAlive })
    }

    /// Sends FIN, then discards input for a moment (bounded) before the socket is dropped.
    fn linger_close(&mut self) {
        if self.writer.flush().is_err() {
            return;
        }
        let stream = self.writer.get_ref();
        let _ = stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut buf = [0u8; 4096];
        let mut drained = 0usize;
        let sock = self.reader.get_mut();
        while drained < (1 << 20) {
            let now = Instant::now();
            if now >= deadline || sock.set_read_timeout(Some(deadline - now)).is_err() {
                return;
            }
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    }
}

/// The /v1/echo (and /v1/upload) JSON document.
fn echo_json(name: &str, rec: &RecordedRequest) -> String {
    let mut s = String::from("{\"name\":");
    http::json_str(&mut s, name);
    s.push_str(",\"method\":");
    http::json_str(&mut s, &rec.method);
    s.push_str(",\"target\":");
    http::json_str(&mut s, &rec.target);
    s.push_str(",\"headers\":");
    pairs(&mut s, &rec.headers);
    s.push_str(&format!(
        ",\"bodyLength\":{},\"bodySha256\":\"{}\",\"chunked\":{},\"trailers\":",
        rec.body_len, rec.body_sha256, rec.chunked
    ));
    pairs(&mut s, &rec.trailers);
    s.push('}');
    s
}

/// `[[name,value],...]`
fn pairs(s: &mut String, list: &[(String, String)]) {
    s.push('[');
    for (i, (n, v)) in list.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push('[');
        http::json_str(s, n);
        s.push(',');
        http::json_str(s, v);
        s.push(']');
    }
    s.push(']');
}

/// Splits a request target into path and query; an absolute-form target is reduced to its
/// path so routing still works if a client sends one.
fn split_target(target: &str) -> (&str, &str) {
    let mut t = target;
    if let Some(rest) = t
        .strip_prefix("http://")
        .or_else(|| t.strip_prefix("https://"))
    {
        t = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    match t.split_once('?') {
        Some((path, query)) => (path, query),
        None => (t, ""),
    }
}

/// First value of `key` in a query string (no percent-decoding: values here are numbers).
fn param<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn num_param(query: &str, key: &str) -> Option<u64> {
    param(query, key)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_params() {
        assert_eq!(split_target("/v1/a?x=1&y"), ("/v1/a", "x=1&y"));
        assert_eq!(split_target("/v1/a"), ("/v1/a", ""));
        assert_eq!(split_target("http://h:1/v1/a?q"), ("/v1/a", "q"));
        assert_eq!(split_target("http://h:1"), ("/", ""));
        assert_eq!(param("a=1&bytes=20&bytes=3", "bytes"), Some("20"));
        assert_eq!(param("chunked", "chunked"), Some(""));
        assert_eq!(param("xbytes=1", "bytes"), None);
        assert_eq!(num_param("bytes=-1", "bytes"), None);
    }

    #[test]
    fn echo_document() {
        let rec = RecordedRequest {
            method: "POST".into(),
            target: "/v1/echo?a=\"b\"".into(),
            headers: vec![("X-A".into(), "1".into())],
            body_len: 3,
            body_sha256: "ab".into(),
            chunked: true,
            trailers: vec![],
        };
        assert_eq!(
            echo_json("n", &rec),
            "{\"name\":\"n\",\"method\":\"POST\",\"target\":\"/v1/echo?a=\\\"b\\\"\",\
             \"headers\":[[\"X-A\",\"1\"]],\"bodyLength\":3,\"bodySha256\":\"ab\",\
             \"chunked\":true,\"trailers\":[]}"
        );
    }
}
