//! Hostile input and failing executors: each RFC 9112 rule with the exact bytes, slow
//! clients, executor faults, client faults, and the file-descriptor baseline afterwards.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use sonic_rs::JsonValueTrait;

/// Send raw bytes on a new connection; return the answer and whether the proxy then
/// closed the connection.
fn exchange(proxy: &Proxy, raw: &[u8]) -> (Response, bool) {
    let mut c = proxy.client();
    c.send(raw);
    let r = c.read_response(false).expect("an answer");
    let closed = c.is_closed();
    (r, closed)
}

/// Send raw bytes on a new connection and read one answer (keep-alive left alone).
fn send_raw(proxy: &Proxy, raw: &[u8]) -> Response {
    let mut c = proxy.client();
    c.send(raw);
    c.read_response(false).expect("an answer")
}

fn with_key(lines: &str) -> Vec<u8> {
    lines.replace("{KEY}", &bearer()).into_bytes()
}

/// Every framing rule of RFC 9112 the proxy enforces, as exact bytes → status.
#[test]
fn request_framing_rules() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_BODY_SIZE", "100000")]);
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9000));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..101)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        // §6.3 ¶3: Content-Length with Transfer-Encoding.
        ("cl+te", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        // §6.3 ¶5: differing Content-Length values.
        ("cl differ", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"), 400),
        ("cl list differ", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!"), 400),
        ("cl not numeric", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5a\r\n\r\nhello"), 400),
        ("cl negative", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n"), 400),
        // §6.3 ¶4.4 (RFC 9112 §6.1): final coding must be chunked.
        ("te gzip", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n"), 501),
        ("te chunked,gzip", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 501),
        ("te chunked twice", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        // §7.1: chunk framing.
        ("bad chunk size", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"), 400),
        ("chunk size overflow", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n"), 400),
        ("missing crlf after data", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"), 400),
        // §5.2: obs-fold; §5.1: whitespace before the colon; §5.5: NUL in a value.
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n".to_vec(), 400),
        ("nul in value", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n".to_vec(), 400),
        ("bad header name", b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n".to_vec(), 400),
        ("bad method", b"G(T / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        // §3.2.2 / §3.2.3: absolute and authority forms are not fetched.
        ("absolute form", b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n".to_vec(), 400),
        ("authority form", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n".to_vec(), 400),
        // §3.2: Host.
        ("host missing", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("host twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400),
        // Limits.
        ("request line over 8 KiB", long_target.into_bytes(), 414),
        ("head over 64 KiB", big_header.into_bytes(), 431),
        ("over 100 headers", many_headers.into_bytes(), 431),
        ("declared body over limit", with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 100001\r\n\r\n"), 413),
    ];
    for (name, raw, status) in cases {
        let (r, closed) = exchange(&proxy, &raw);
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(r.json()["code"].as_u64(), Some(status as u64), "{name}");
        assert_eq!(r.header("connection"), Some("close"), "{name}");
        assert!(
            closed,
            "{name}: connection must close after a framing error"
        );
    }
    assert_eq!(a.requests(), 0, "nothing malformed reached the executor");
}

#[test]
fn equal_content_lengths_extensions_and_trailers_pass() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let r = send_raw(
        &proxy,
        &with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"].as_u64(), Some(5));
    let r = send_raw(
        &proxy,
        &with_key("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n4;name=\"v\"\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"].as_u64(), Some(9));
    assert_eq!(
        r.json()["bodySha256"].as_str(),
        Some(opr_loadtest::sha256_hex(b"Wikipedia").as_str())
    );
}

#[test]
fn chunked_body_over_limit_is_413_and_executor_connection_dropped() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_BODY_SIZE", "100000")]);
    let mut c = proxy.client();
    c.send(&with_key("POST /v1/upload HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"));
    let piece = vec![b'x'; 40_000];
    let mut status = None;
    for _ in 0..5 {
        if c.stream
            .write_all(format!("{:x}\r\n", piece.len()).as_bytes())
            .is_err()
            || c.stream.write_all(&piece).is_err()
            || c.stream.write_all(b"\r\n").is_err()
        {
            break;
        }
    }
    if let Ok(r) = c.read_response(false) {
        status = Some(r.status);
    }
    assert_eq!(status, Some(413));
    // The executor saw its request cut off: the connection was closed, not pooled.
    assert!(eventually(Duration::from_secs(5), || a.aborted() == 1));
    assert_eq!(a.requests(), 0);
}

#[test]
fn http10_client_gets_no_chunked() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let (r, closed) = exchange(
        &proxy,
        &with_key(
            "GET /v1/download?bytes=70000&chunked=1 HTTP/1.0\r\nAuthorization: {KEY}\r\n\r\n",
        ),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.body.len(), 70000);
    assert!((0..70000u64).all(|i| r.body[i as usize] == pattern_byte(i)));
    assert!(closed, "HTTP/1.0 connections close after the response");
}

#[test]
fn slow_head_gets_408_and_idle_connection_closes() {
    let a = mock("a");
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_HEADER_TIMEOUT", "1"),
            ("OPR_PROXY_IDLE_TIMEOUT", "1"),
        ],
    );
    // Slowloris: half a head, then nothing.
    let mut c = proxy.client();
    c.send(b"GET /v1/ping HTTP/1.1\r\nHost: t\r\n");
    let started = Instant::now();
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(c.is_closed());
    // Idle keep-alive connection: closed silently after the idle timeout.
    let mut c = proxy.client();
    let started = Instant::now();
    assert!(c.is_closed());
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn stalled_upload_gets_408() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_BODY_TIMEOUT", "1")]);
    let mut c = proxy.client();
    c.send(&with_key("POST /v1/upload HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 1000\r\n\r\nabc"));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 408);
    assert!(eventually(Duration::from_secs(5), || a.aborted() == 1));
}

#[test]
fn connection_cap_applies_backpressure() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_CONNECTIONS", "2")]);
    let first = proxy.client();
    let second = proxy.client();
    // A third connection is not served while two are open...
    let mut third = proxy.client();
    third.send(&with_key(
        "GET /v1/ping HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\n\r\n",
    ));
    third
        .stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(third.stream.read(&mut byte).is_err(), "served past the cap");
    // ...and is served, not failed, once one closes.
    drop(first);
    third
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(third.read_response(false).unwrap().status, 200);
    drop(second);
}

/// A tiny executor that is healthy but answers every other request with fixed bytes.
struct RawExecutor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
}

impl RawExecutor {
    fn start(answer: Vec<u8>) -> RawExecutor {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = stream else { continue };
                let answer = answer.clone();
                let served = served2.clone();
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_string();
                            buf.drain(..end + 4);
                            if head.starts_with("GET /v1/health") {
                                let _ =
                                    s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
                            } else {
                                served.fetch_add(1, Ordering::Relaxed);
                                let _ = s.write_all(&answer);
                                let _ = s.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                        }
                        match s.read(&mut tmp) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                });
            }
        });
        RawExecutor { addr, stop, served }
    }
}

impl Drop for RawExecutor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

#[test]
fn malformed_executor_responses_are_502() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "bad status line",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
        ("not http", b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()),
        (
            "cl+te",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "differing cl",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello".to_vec(),
        ),
        (
            "bad header",
            b"HTTP/1.1 200 OK\r\nBad\0Header: x\r\n\r\n".to_vec(),
        ),
        ("oversized head", {
            let mut v = b"HTTP/1.1 200 OK\r\n".to_vec();
            v.extend_from_slice(format!("X-Big: {}\r\n\r\n", "y".repeat(70_000)).as_bytes());
            v
        }),
        ("closed before head", Vec::new()),
    ];
    for (name, answer) in cases {
        let ex = RawExecutor::start(answer);
        let proxy = Proxy::start_hosts(&[ex.addr.to_string()], &[]);
        let r = proxy.get("/v1/anything");
        assert_eq!(r.status, 502, "{name}: {}", r.text());
        assert_eq!(r.json()["code"].as_u64(), Some(502), "{name}");
        assert!(ex.served.load(Ordering::Relaxed) >= 1, "{name}");
    }
}

#[test]
fn unhealthy_health_bodies_take_executor_offline_and_proxy_keeps_serving() {
    let good = mock("good");
    for (name, mode) in [
        ("garbage 500", HealthMode::Status(500)),
        ("2 MiB body", HealthMode::Huge),
        ("hangs", HealthMode::Hang),
        ("fail", HealthMode::Fail),
    ] {
        let bad = mock_with("bad", mode);
        let proxy = Proxy::start(
            &[&bad, &good],
            &[
                ("OPR_PROXY_ALGORITHM", "first"),
                ("OPR_PROXY_HEALTHCHECK_TIMEOUT", "300"),
            ],
        );
        let v = proxy.get("/v1/proxy/containers").json();
        assert_eq!(v[0]["status"].as_str(), Some("offline"), "{name}");
        for _ in 0..3 {
            assert_eq!(proxy.get("/v1/ping").executor(), "good", "{name}");
        }
    }
}

#[test]
fn client_abort_mid_upload_reaches_executor() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    c.send(&with_key("POST /v1/upload HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 10000000\r\n\r\n"));
    c.send(&vec![7u8; 300_000]);
    drop(c);
    assert!(eventually(Duration::from_secs(5), || a.aborted() == 1));
    assert_eq!(a.requests(), 0);
    // The proxy is fine and uses a fresh executor connection.
    assert_eq!(proxy.get("/v1/ping").status, 200);
}

#[test]
fn client_abort_mid_download_drops_executor_connection() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    c.send(&with_key(
        "GET /v1/download?bytes=50000000 HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\n\r\n",
    ));
    let (status, _) = c.read_head().unwrap();
    assert_eq!(status, 200);
    let mut buf = [0u8; 65536];
    let _ = c.stream.read(&mut buf);
    drop(c);
    // Next request cannot reuse the aborted exchange's executor connection: wait until
    // the proxy is done with that exchange.
    let in_flight = format!(
        "opr_proxy_executor_requests_in_flight{{executor=\"{}\"}}",
        a.hostname()
    );
    assert!(eventually(Duration::from_secs(10), || metric(
        proxy.addr, &in_flight
    ) == Some(0.0)));
    assert_eq!(proxy.get("/v1/ping").status, 200);
    assert_eq!(a.connections(), 2);
}

/// After every kind of executor and client fault, the proxy process is back at its
/// file-descriptor baseline and still serves.
#[test]
fn faults_leak_no_file_descriptors() {
    let a = mock("a");
    let dead = dead_hostname();
    let p = ProxyProcess::start(
        &[a.hostname(), dead],
        &[
            ("OPR_PROXY_POOL_IDLE_TIMEOUT", "1"),
            ("OPR_PROXY_MAX_TIMEOUT", "1"),
        ],
    );
    let get = |path: &str| {
        Client::connect(p.addr).request("GET", path, &[("Authorization", &bearer())], b"")
    };
    assert_eq!(get("/v1/ping").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let baseline = p.open_fds();
    for _ in 0..3 {
        assert_eq!(get("/v1/garbage").status, 502);
        assert_eq!(get("/v1/reset").status, 502);
        assert_eq!(get("/v1/sleep?ms=2000").status, 504);
        assert!(get("/v1/truncate?bytes=100000").truncated);
        assert_eq!(get("/v1/close").status, 200);
        let mut c = Client::connect(p.addr);
        c.send(&with_key("POST /v1/upload HTTP/1.1\r\nHost: t\r\nAuthorization: {KEY}\r\nContent-Length: 1000000\r\n\r\nabc"));
        drop(c);
    }
    assert_eq!(get("/v1/ping").status, 200);
    // Idle pooled connections expire after 1 s; then the count must be back.
    assert!(
        eventually(Duration::from_secs(10), || {
            let _ = get("/v1/proxy/health");
            p.open_fds() <= baseline
        }),
        "fds {} > baseline {baseline}",
        p.open_fds()
    );
}

/// Pooled executor connections close after `OPR_PROXY_POOL_IDLE_TIMEOUT` even when no
/// later request touches that pool (the worker's sweep): a burst must not leave the
/// executor holding idle connections until the next request to it.
#[test]
fn idle_pooled_connections_close_without_further_traffic() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_POOL_IDLE_TIMEOUT", "1")]);
    let addr = proxy.addr;
    // Eight at once: eight executor connections, pooled after their answers.
    let burst: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                Client::connect(addr)
                    .request(
                        "GET",
                        "/v1/sleep?ms=300",
                        &[("Authorization", &bearer())],
                        b"",
                    )
                    .status
            })
        })
        .collect();
    for t in burst {
        assert_eq!(t.join().unwrap(), 200);
    }
    let opened = a.connections();
    assert!(opened >= 8, "{opened}");
    // Only the metrics are asked for from now on: nothing is forwarded.
    let expired = format!(
        "opr_proxy_executor_connections_discarded_total{{executor=\"{}\",reason=\"idle_expired\"}} {opened}",
        a.hostname()
    );
    assert!(
        eventually(Duration::from_secs(5), || proxy
            .get("/v1/proxy/metrics")
            .text()
            .contains(&expired)),
        "{}",
        proxy.get("/v1/proxy/metrics").text()
    );
}
