//! Integration tests of the mock executor over real sockets, with a tiny std TcpStream
//! client written here (independent of the mock's own parser).

use opr_loadtest::{
    pattern_byte, pattern_sha256, sha256_hex, HealthMode, MockExecutor, MockOptions,
};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Chunk sizes when the body was chunked.
    chunks: Option<Vec<usize>>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }
}

struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Client {
    fn new(mock: &MockExecutor) -> Client {
        let w = TcpStream::connect(mock.addr()).expect("connect");
        w.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Client {
            r: BufReader::new(w.try_clone().expect("clone")),
            w,
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.w.write_all(raw).expect("send");
    }

    fn get(&mut self, target: &str) -> Resp {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: mock\r\n\r\n").as_bytes());
        self.response(false)
    }

    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        let mut raw = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = self.r.read_until(b'\n', &mut line).expect("read head");
            assert!(n > 0, "EOF inside response head");
            raw.extend_from_slice(&line);
            if line == b"\r\n" {
                break;
            }
        }
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut fields);
        let status = resp.parse(&raw).expect("valid head");
        assert!(status.is_complete());
        let code = resp.code.expect("code");
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        (code, headers)
    }

    /// Reads one final response (skipping nothing: a 1xx is returned as is).
    fn response(&mut self, head_only: bool) -> Resp {
        let (status, headers) = self.head();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: None,
        };
        if head_only || (100..200).contains(&status) || status == 204 || status == 304 {
            return resp;
        }
        if resp.header("transfer-encoding").is_some() {
            assert_eq!(resp.header("content-length"), None);
            let mut sizes = Vec::new();
            loop {
                let mut line = String::new();
                self.r.read_line(&mut line).expect("chunk line");
                let size = usize::from_str_radix(line.trim_end(), 16).expect("hex size");
                if size == 0 {
                    let mut end = String::new();
                    self.r.read_line(&mut end).expect("last CRLF");
                    assert_eq!(end, "\r\n");
                    break;
                }
                sizes.push(size);
                let at = resp.body.len();
                resp.body.resize(at + size, 0);
                self.r.read_exact(&mut resp.body[at..]).expect("chunk data");
                let mut crlf = [0u8; 2];
                self.r.read_exact(&mut crlf).expect("chunk CRLF");
                assert_eq!(&crlf, b"\r\n");
            }
            resp.chunks = Some(sizes);
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("content-length");
            resp.body.resize(len, 0);
            self.r.read_exact(&mut resp.body).expect("body");
        } else {
            self.r.read_to_end(&mut resp.body).expect("body to EOF");
        }
        resp
    }

    /// True when the server closed (EOF or reset) without sending anything more.
    fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.r.read(&mut buf), Ok(0) | Err(_))
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn mock(name: &str) -> MockExecutor {
    MockExecutor::start_named(name).expect("start mock")
}

#[test]
fn api_basics() {
    let m = mock("exec-a");
    assert_eq!(m.name(), "exec-a");
    assert_eq!(m.hostname(), format!("127.0.0.1:{}", m.addr().port()));
    assert_ne!(m.addr().port(), 0);
    assert!(m.last_request().is_none());
    assert_eq!(
        (
            m.requests(),
            m.health_requests(),
            m.connections(),
            m.aborted()
        ),
        (0, 0, 0, 0)
    );
}

#[test]
fn ping_reports_headers_and_name() {
    let m = mock("exec-ping");
    let mut c = Client::new(&m);
    c.send(b"POST /v1/ping?x=1 HTTP/1.1\r\nHost: a\r\nx-opr-executor-hostname: exc1\r\nAuthorization: Bearer s\"x\r\ncontent-length: 3\r\n\r\nabc");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-name"), Some("exec-ping"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"ping":"pong","server":"exc1","secret":"Bearer s\"x","name":"exec-ping"}"#
    );
    let r = c.get("/v1/ping");
    assert_eq!(
        r.text(),
        r#"{"ping":"pong","server":"UNKNOWN","secret":"UNKNOWN","name":"exec-ping"}"#
    );
    assert_eq!(m.requests(), 2);
    let last = m.last_request().expect("recorded");
    assert_eq!(last.method, "GET");
    assert_eq!(last.target, "/v1/ping");
}

#[test]
fn health_modes() {
    let m = MockExecutor::start(MockOptions {
        name: "exec-h".into(),
        health: HealthMode::Pass {
            usage: 42,
            runtimes: vec![
                ("rt-1".into(), "pass".into(), 7),
                ("rt\"2".into(), "fail".into(), 100),
            ],
        },
        ..MockOptions::default()
    })
    .expect("start");
    let mut c = Client::new(&m);
    let r = c.get("/v1/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-name"), Some("exec-h"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.text(),
        r#"{"status":"pass","usage":42,"runtimes":{"rt-1":{"status":"pass","usage":7},"rt\"2":{"status":"fail","usage":100}}}"#
    );

    let cases: Vec<(HealthMode, u16, &str, &str)> = vec![
        (
            HealthMode::Pass {
                usage: 0,
                runtimes: vec![],
            },
            200,
            "application/json",
            r#"{"status":"pass","usage":0,"runtimes":{}}"#,
        ),
        (
            HealthMode::NewStyle { usage: Some(9) },
            200,
            "application/json",
            r#"{"usage":9}"#,
        ),
        (
            HealthMode::NewStyle { usage: None },
            200,
            "application/json",
            "{}",
        ),
        (HealthMode::Text, 200, "text/plain", "OK"),
        (
            HealthMode::Fail,
            200,
            "application/json",
            r#"{"status":"fail","usage":0,"runtimes":{}}"#,
        ),
        (
            HealthMode::Status(503),
            503,
            "application/json",
            r#"{"message":"unhealthy"}"#,
        ),
        (
            HealthMode::Raw("{not json".into()),
            200,
            "application/json",
            "{not json",
        ),
    ];
    for (mode, status, ctype, body) in cases {
        m.set_health(mode.clone());
        let r = c.get("/v1/health?x=1");
        assert_eq!((r.status, r.text()), (status, body), "{mode:?}");
        assert_eq!(r.header("content-type"), Some(ctype), "{mode:?}");
    }

    m.set_health(HealthMode::Huge);
    let r = c.get("/v1/health");
    assert_eq!(r.body.len(), 2 * 1024 * 1024);
    assert!(r.text().starts_with(r#"{"status":"pass","#));
    assert!(r.text().ends_with(r#"xx"}"#));

    assert_eq!(m.health_requests(), 9);
    assert_eq!(m.requests(), 0);
    assert_eq!(
        m.connections(),
        0,
        "health-only connections are not counted"
    );
    assert!(m.last_request().is_none());
}

#[test]
fn health_hang_until_stop() {
    let m = mock("exec-hang");
    m.set_health(HealthMode::Hang);
    let mut c = Client::new(&m);
    c.w.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    c.send(b"GET /v1/health HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut buf = [0u8; 1];
    let err = c.r.read(&mut buf).expect_err("no answer");
    assert!(matches!(
        err.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    wait_until("health request", || m.health_requests() == 1);
    let t = Instant::now();
    m.stop();
    assert!(t.elapsed() < Duration::from_secs(1));
    c.w.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert!(c.closed());
}

#[test]
fn echo_records_request() {
    let m = mock("exec-echo");
    let mut c = Client::new(&m);
    c.send(b"PUT /v1/echo?a=1&b=%20 HTTP/1.1\r\nHost: a\r\nX-Dup: 1\r\ncontent-length: 5\r\nx-dup: two\r\n\r\nhello");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    let sha = sha256_hex(b"hello");
    assert_eq!(
        r.text(),
        format!(
            r#"{{"name":"exec-echo","method":"PUT","target":"/v1/echo?a=1&b=%20","headers":[["Host","a"],["X-Dup","1"],["content-length","5"],["x-dup","two"]],"bodyLength":5,"bodySha256":"{sha}","chunked":false,"trailers":[]}}"#
        )
    );
    let last = m.last_request().expect("recorded");
    assert_eq!(last.method, "PUT");
    assert_eq!(last.target, "/v1/echo?a=1&b=%20");
    assert_eq!(last.header("X-DUP"), Some("1"));
    assert_eq!(last.header_all("x-dup"), vec!["1", "two"]);
    assert_eq!(last.header("missing"), None);
    assert_eq!(
        (last.body_len, last.body_sha256.as_str()),
        (5, sha.as_str())
    );
    assert!(!last.chunked);
    assert_eq!(m.requests(), 1);
}

#[test]
fn chunked_upload_hash() {
    let m = mock("exec-up");
    let mut c = Client::new(&m);
    let total = 300_001u64;
    let data: Vec<u8> = (0..total).map(pattern_byte).collect();
    let mut raw =
        b"POST /v1/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut at = 0usize;
    for (i, size) in [1usize, 4096, 65_536, 100_000].iter().cycle().enumerate() {
        if at == data.len() {
            break;
        }
        let size = (*size).min(data.len() - at);
        let ext = if i % 2 == 0 { ";ext=\"v\"" } else { "" };
        raw.extend_from_slice(format!("{size:X}{ext}\r\n").as_bytes());
        raw.extend_from_slice(&data[at..at + size]);
        raw.extend_from_slice(b"\r\n");
        at += size;
    }
    raw.extend_from_slice(b"0\r\nX-Checksum: abc\r\n\r\n");
    c.send(&raw);
    let r = c.response(false);
    assert_eq!(r.status, 200);
    let want = pattern_sha256(total);
    assert!(r.text().contains(&format!(
        r#""bodyLength":{total},"bodySha256":"{want}","chunked":true,"trailers":[["X-Checksum","abc"]]"#
    )));
    let last = m.last_request().expect("recorded");
    assert!(last.chunked);
    assert_eq!(last.body_len, total);
    assert_eq!(last.body_sha256, want);
    assert_eq!(last.trailers, vec![("X-Checksum".into(), "abc".into())]);
    // The connection is still usable.
    assert_eq!(c.get("/v1/ping").status, 200);
}

#[test]
fn keep_alive_counts_connections() {
    let m = mock("exec-ka");
    let mut a = Client::new(&m);
    assert_eq!(a.get("/v1/ping").status, 200);
    assert_eq!(a.get("/v1/echo").status, 200);
    assert_eq!((m.connections(), m.requests()), (1, 2));

    let mut h = Client::new(&m);
    assert_eq!(h.get("/v1/health").status, 200);
    assert_eq!(m.connections(), 1, "health-only connection not counted");
    assert_eq!(h.get("/v1/ping").status, 200);
    assert_eq!(m.connections(), 2);

    // Pipelined requests in one write.
    let mut p = Client::new(&m);
    p.send(b"GET /v1/ping HTTP/1.1\r\nHost: a\r\n\r\nGET /v1/status?code=201 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(p.response(false).status, 200);
    assert_eq!(p.response(false).status, 201);
    assert_eq!((m.connections(), m.requests()), (3, 5));
}

#[test]
fn download_content_length() {
    let m = mock("exec-dl");
    let mut c = Client::new(&m);
    for n in [0u64, 1, 251, 1_000_000] {
        let r = c.get(&format!("/v1/download?bytes={n}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(sha256_hex(&r.body), pattern_sha256(n), "n={n}");
    }
}

#[test]
fn download_chunked() {
    let m = mock("exec-dlc");
    let mut c = Client::new(&m);
    let r = c.get("/v1/download?bytes=10500&chunked=1&chunk=1000");
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let mut want = vec![1000; 10];
    want.push(500);
    assert_eq!(r.chunks.as_deref(), Some(&want[..]));
    assert_eq!(sha256_hex(&r.body), pattern_sha256(10_500));

    let r = c.get("/v1/download?chunked=1&bytes=200000");
    assert_eq!(
        r.chunks.as_deref(),
        Some(&[65_536, 65_536, 65_536, 3_392][..])
    );
    assert_eq!(sha256_hex(&r.body), pattern_sha256(200_000));

    let r = c.get("/v1/download?bytes=0&chunked=1");
    assert_eq!(r.chunks.as_deref(), Some(&[][..]));

    for bad in [
        "/v1/download",
        "/v1/download?bytes=x",
        "/v1/download?bytes=5&chunk=0",
    ] {
        assert_eq!(c.get(bad).status, 400, "{bad}");
    }
}

#[test]
fn head_download_has_headers_only() {
    let m = mock("exec-head");
    let mut c = Client::new(&m);
    c.send(b"HEAD /v1/download?bytes=1000 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"));
    c.send(b"HEAD /v1/download?bytes=1000&chunked=1 HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response(true);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    // No body was sent: the next response follows directly.
    let r = c.get("/v1/ping");
    assert_eq!(r.status, 200);
    assert!(r.text().starts_with(r#"{"ping":"pong""#));
}

#[test]
fn sleep_and_stop_does_not_wait() {
    let m = mock("exec-sleep");
    let mut c = Client::new(&m);
    let t = Instant::now();
    let r = c.get("/v1/sleep?ms=50");
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(r.text(), r#"{"slept":50}"#);

    let mut long = Client::new(&m);
    long.send(b"GET /v1/sleep?ms=60000 HTTP/1.1\r\nHost: a\r\n\r\n");
    wait_until("sleep request", || m.requests() == 2);
    let t = Instant::now();
    m.stop();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(long.closed());
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn status_codes() {
    let m = mock("exec-st");
    let mut c = Client::new(&m);
    let r = c.get("/v1/status?code=204");
    assert_eq!((r.status, r.header("content-length")), (204, None));
    assert_eq!(r.header("x-mock-name"), Some("exec-st"));
    let r = c.get("/v1/status?code=304");
    assert_eq!((r.status, r.header("content-length")), (304, None));
    let r = c.get("/v1/status?code=418");
    assert_eq!((r.status, r.text()), (418, r#"{"status":418}"#));
    let r = c.get("/v1/status?code=500");
    assert_eq!((r.status, r.text()), (500, r#"{"status":500}"#));
    let r = c.get("/v1/status?code=205");
    assert_eq!((r.status, r.header("content-length")), (205, Some("0")));

    // 1xx: interim, then a final 200.
    c.send(b"GET /v1/status?code=103 HTTP/1.1\r\nHost: a\r\n\r\n");
    let interim = c.response(false);
    assert_eq!(interim.status, 103);
    assert_eq!(interim.header("x-mock-name"), Some("exec-st"));
    let r = c.response(false);
    assert_eq!((r.status, r.text()), (200, r#"{"status":103}"#));

    assert_eq!(c.get("/v1/status").status, 400);
    assert_eq!(c.get("/v1/status?code=99").status, 400);
    assert_eq!(c.get("/v1/status?code=1000").status, 400);
}

#[test]
fn close_route() {
    let m = mock("exec-close");
    let mut c = Client::new(&m);
    let r = c.get("/v1/close");
    assert_eq!((r.status, r.text()), (200, "bye"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn reset_route() {
    let m = mock("exec-reset");
    let mut c = Client::new(&m);
    c.send(b"POST /v1/reset HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert!(c.closed());
    assert_eq!(m.requests(), 1);
    assert_eq!(m.last_request().expect("recorded").body_len, 3);
}

#[test]
fn truncate_route() {
    let m = mock("exec-trunc");
    let mut c = Client::new(&m);
    c.send(b"GET /v1/truncate?bytes=1001 HTTP/1.1\r\nHost: a\r\n\r\n");
    let (status, headers) = c.head();
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("content-length") && v == "1001"));
    let mut body = Vec::new();
    c.r.read_to_end(&mut body).expect("read to EOF");
    assert_eq!(body.len(), 500);
    assert_eq!(sha256_hex(&body), pattern_sha256(500));
}

#[test]
fn garbage_route() {
    let m = mock("exec-garbage");
    let mut c = Client::new(&m);
    c.send(b"GET /v1/garbage HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut all = Vec::new();
    c.r.read_to_end(&mut all).expect("read to EOF");
    assert_eq!(all, b"this is not http\r\n\r\n");
}

#[test]
fn unknown_route_is_404() {
    let m = mock("exec-404");
    let mut c = Client::new(&m);
    let r = c.get("/v1/nope?x");
    assert_eq!((r.status, r.text()), (404, r#"{"message":"not found"}"#));
    assert_eq!(r.header("x-mock-name"), Some("exec-404"));
    assert_eq!(m.requests(), 1);
}

#[test]
fn bad_requests_get_400_and_close() {
    let m = mock("exec-400");
    let bad: &[&[u8]] = &[
        b"this is not http\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /v1/echo HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /v1/echo HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",
    ];
    for raw in bad {
        let mut c = Client::new(&m);
        c.send(raw);
        let r = c.response(false);
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert_eq!(r.header("connection"), Some("close"));
        assert_eq!(r.header("x-mock-name"), Some("exec-400"));
        assert!(c.closed());
    }
    let mut c = Client::new(&m);
    c.send(format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000)).as_bytes());
    assert_eq!(c.response(false).status, 431);
    assert_eq!(m.requests(), 0);
}

#[test]
fn aborted_bodies_are_counted() {
    let m = mock("exec-abort");
    let mut c = Client::new(&m);
    c.send(b"POST /v1/upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n0123456789");
    c.w.shutdown(Shutdown::Write).expect("shutdown");
    wait_until("aborted", || m.aborted() == 1);

    let mut c = Client::new(&m);
    c.send(b"POST /v1/upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc");
    drop(c);
    wait_until("aborted", || m.aborted() == 2);
    assert_eq!(m.requests(), 0);
    assert_eq!(m.connections(), 2);
}

#[test]
fn expect_continue() {
    let m = mock("exec-100");
    let mut c = Client::new(&m);
    c.send(
        b"POST /v1/echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    let interim = c.response(false);
    assert_eq!(interim.status, 100);
    c.send(b"data");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(r.text().contains(r#""bodyLength":4"#));
}

#[test]
fn http10_and_connection_close() {
    let m = mock("exec-10");
    let mut c = Client::new(&m);
    c.send(b"GET /v1/ping HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());

    let mut c = Client::new(&m);
    c.send(b"GET /v1/download?bytes=10&chunked=1 HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("content-length"), Some("10"), "no chunked for 1.0");

    let mut c = Client::new(&m);
    c.send(b"GET /v1/ping HTTP/1.1\r\nConnection: close\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
}

#[test]
fn stop_refuses_connections_and_closes_idle_ones() {
    let m = mock("exec-stop");
    let addr = m.addr();
    let mut idle = Client::new(&m);
    assert_eq!(idle.get("/v1/ping").status, 200);
    m.stop();
    let err = TcpStream::connect(addr).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
    assert!(idle.closed());
    m.stop(); // idempotent
    drop(m);
}

#[test]
fn drop_stops() {
    let m = mock("exec-drop");
    let addr = m.addr();
    drop(m);
    let err = TcpStream::connect(addr).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn parallel_clients() {
    let m = mock("exec-par");
    thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| {
                let mut c = Client::new(&m);
                for i in 0..25 {
                    let r = c.get(&format!("/v1/download?bytes={}", i * 100));
                    assert_eq!(r.body.len(), i * 100);
                }
            });
        }
    });
    assert_eq!((m.requests(), m.connections()), (400, 16));
}

#[test]
fn random_input_never_kills_the_server() {
    let m = mock("exec-fuzz");
    // Deterministic LCG: mutated valid requests and plain noise.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as usize
    };
    let base: &[u8] =
        b"POST /v1/echo?a=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: v\r\n\r\n";
    for round in 0..60 {
        let mut raw = base.to_vec();
        if round % 3 == 2 {
            raw = (0..next() % 300).map(|_| next() as u8).collect();
        } else {
            for _ in 0..1 + next() % 4 {
                let at = next() % raw.len();
                raw[at] = next() as u8;
            }
            raw.truncate(next() % (raw.len() + 1));
        }
        let mut c = Client::new(&m);
        c.w.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let _ = c.w.write_all(&raw);
        let _ = c.w.shutdown(Shutdown::Write);
        let mut sink = Vec::new();
        let _ = c.r.read_to_end(&mut sink);
    }
    let mut c = Client::new(&m);
    assert_eq!(c.get("/v1/ping").status, 200);
}
