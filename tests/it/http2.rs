//! HTTP/2 with prior knowledge (h2c) on the client side: real HTTP/2 clients (curl,
//! h2load, the `h2` crate), 100 MiB both ways, resets mid-body, GOAWAY on drain and idle,
//! and the HTTP/2 attacks (rapid reset, CONTINUATION flood, HPACK bomb, SETTINGS and PING
//! floods), each against a raw attacker client.
//!
//! curl and h2load (Debian's `nghttp2-client`) must be installed; without them a test
//! prints SKIP, except under CI (`CI` set), where it fails.

use crate::support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::h2raw::*;
use crate::support::scripted::{Action, ScriptedExecutor};
use crate::support::*;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// Whether `tool` can run; absent, SKIP locally and fail under CI.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| tool != "curl" || String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !ok {
        skip_unless_ci(&format!("{tool} with HTTP/2 support is not installed"));
    }
    ok
}

struct CurlResponse {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl CurlResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

/// One curl run with `--http2-prior-knowledge`; stdin is `input`.
fn curl(args: &[&str], input: &[u8]) -> CurlResponse {
    let mut child = Command::new("curl")
        .args(["-s", "-i", "--http2-prior-knowledge", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl runs");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    let mut raw = &out.stdout[..];
    // Interim heads (`100 Continue`) come first with -i.
    while raw.starts_with(b"HTTP/2 1") {
        match raw.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => raw = &raw[end + 4..],
            None => break,
        }
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no head from curl {args:?} ({}): {}",
                out.status,
                String::from_utf8_lossy(raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap().to_string();
    let status = parts.next().unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    CurlResponse {
        status,
        version,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn auth() -> String {
    format!("Authorization: {}", bearer())
}

fn url(addr: std::net::SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// docs/behaviour.md §7: the JSON shape and its no-cache headers.
fn assert_spec_error(r: &CurlResponse, status: u16, message: &str) {
    assert_eq!(r.version, "HTTP/2");
    assert_eq!(
        r.status,
        status,
        "body {}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("cache-control"),
        Some("no-cache, no-store, must-revalidate")
    );
    let j = r.json();
    assert_eq!(j["message"].as_str(), Some(message));
    assert_eq!(j["code"].as_u64(), Some(u64::from(status)));
    assert!(j["version"].as_str().is_some());
}

#[test]
fn curl_h2c_is_forwarded_with_the_http1_rules() {
    if !have("curl") {
        return;
    }
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    // Health needs no key.
    let r = curl(&[&url(p.addr, "/v1/proxy/health")], b"");
    assert_eq!((r.version.as_str(), r.status), ("HTTP/2", 200));
    assert_eq!(r.body, b"OK");

    let r = curl(
        &[
            "-H",
            &auth(),
            "-H",
            "x-forwarded-for: 10.0.0.1",
            "-H",
            "x-opr-executor-hostname: spoofed",
            "--data-binary",
            "hello",
            &url(p.addr, "/v1/echo?q=1"),
        ],
        b"",
    );
    assert_eq!((r.version.as_str(), r.status), ("HTTP/2", 200));
    let j = r.json();
    assert_eq!(j["target"].as_str(), Some("/v1/echo?q=1"));
    assert_eq!(j["bodyLength"].as_u64(), Some(5));
    let headers: Vec<(String, String)> = j["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_ascii_lowercase(),
                h[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .filter(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    // :authority became Host; the client's key never reaches the executor.
    assert_eq!(get("host"), vec![p.addr.to_string()]);
    assert_eq!(get("x-forwarded-for"), vec!["10.0.0.1, 127.0.0.1"]);
    assert_eq!(get("authorization").len(), 1);
    assert!(!get("authorization")[0].contains(SECRET));
    assert!(get("x-opr-executor-hostname").is_empty());
    assert_eq!(get("content-length"), vec!["5"]);

    // A body without a length goes to the executor chunked.
    let body = vec![b'z'; 300_000];
    let r = curl(
        &["-H", &auth(), "-T", "-", &url(p.addr, "/v1/upload")],
        &body,
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["bodyLength"].as_u64(), Some(300_000));
    assert_eq!(j["chunked"].as_bool(), Some(true));
    assert_eq!(
        j["bodySha256"].as_str().unwrap(),
        hex(&Sha256::digest(&body))
    );

    // A chunked download leaves as DATA frames of its payload.
    let r = curl(
        &[
            "-H",
            &auth(),
            &url(p.addr, "/v1/download?bytes=1000000&chunked=1"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1_000_000);
    assert_eq!(hex(&Sha256::digest(&r.body)), pattern_sha256(1_000_000));
}

#[test]
fn connection_specific_response_fields_are_not_sent_over_h2() {
    if !have("curl") {
        return;
    }
    let ex = ScriptedExecutor::start(|_, _, _| {
        vec![Action::Write(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nKeep-Alive: timeout=5\r\n\
              x-hop: 1\r\nx-kept: yes\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )]
    });
    let p = Proxy::start_hosts(&[ex.hostname()], &[]);
    // curl refuses an HTTP/2 response with connection-specific fields.
    let r = curl(&["-H", &auth(), &url(p.addr, "/v1/x")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("x-kept"), Some("yes"));
    for gone in ["connection", "keep-alive", "x-hop", "transfer-encoding"] {
        assert_eq!(r.header(gone), None, "{gone}");
    }
}

/// Issue 19: an executor's own `x-opr-route` is dropped over h2 as over HTTP/1; asked
/// for, only the proxy's explanation is there.
#[test]
fn an_executors_route_header_is_dropped_over_h2() {
    if !have("curl") {
        return;
    }
    let ex = ScriptedExecutor::start(|_, _, _| {
        let answer =
            b"HTTP/1.1 200 OK\r\nx-opr-route: executor=spoofed\r\nContent-Length: 2\r\n\r\nok";
        vec![Action::Write(answer.to_vec())]
    });
    let p = Proxy::start_hosts(&[ex.hostname()], &[]);
    let routes = |r: &CurlResponse| -> Vec<String> {
        let all = r.headers.iter();
        let routes = all.filter(|(n, _)| n.eq_ignore_ascii_case("x-opr-route"));
        routes.map(|(_, v)| v.clone()).collect()
    };
    let r = curl(&["-H", &auth(), &url(p.addr, "/v1/x")], b"");
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    assert_eq!(routes(&r), Vec::<String>::new());
    let debug = ["-H", &auth(), "-H", "x-opr-debug: 1", &url(p.addr, "/v1/x")];
    let r = curl(&debug, b"");
    let routes = routes(&r);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert!(
        routes[0].starts_with(&format!("executor={}; ", ex.hostname())),
        "{routes:?}"
    );
}

#[test]
fn h2c_errors_are_spec_json_on_their_stream() {
    if !have("curl") {
        return;
    }
    let a = mock("a");
    let p = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_MAX_BODY_SIZE", "1000"),
            ("OPR_PROXY_MAX_TIMEOUT", "1"),
        ],
    );
    let r = curl(&[&url(p.addr, "/v1/ping")], b"");
    assert_spec_error(&r, 401, "Incorrect proxy key.");
    let r = curl(
        &[
            "-H",
            "Authorization: Bearer wrong",
            &url(p.addr, "/v1/ping"),
        ],
        b"",
    );
    assert_spec_error(&r, 401, "Incorrect proxy key.");
    // Declared too large, and too large as it streams (no length).
    let big = vec![b'x'; 5000];
    let r = curl(
        &[
            "-H",
            &auth(),
            "--data-binary",
            "@-",
            &url(p.addr, "/v1/upload"),
        ],
        &big,
    );
    assert_spec_error(&r, 413, "Request body is too large.");
    let r = curl(
        &["-H", &auth(), "-T", "-", &url(p.addr, "/v1/upload")],
        &big,
    );
    assert_spec_error(&r, 413, "Request body is too large.");
    // The whole-request deadline before the answer: 504.
    let r = curl(&["-H", &auth(), &url(p.addr, "/v1/sleep?ms=3000")], b"");
    assert_spec_error(&r, 504, "Executor did not answer in time.");
    // A broadcast body over the broadcast buffer (1 MiB): 413 on the stream.
    let r = curl(
        &[
            "-H",
            &auth(),
            "-H",
            "x-opr-addressing-method: broadcast",
            "-T",
            "-",
            &url(p.addr, "/v1/upload"),
        ],
        &vec![b'x'; 1024 * 1024 + 1],
    );
    assert_spec_error(&r, 413, "Request body is too large.");

    // No executor online: 404.
    let dead = dead_hostname();
    let p2 = Proxy::start_hosts(&[dead], &[]);
    let r = curl(&["-H", &auth(), &url(p2.addr, "/v1/ping")], b"");
    assert_spec_error(&r, 404, "No online executor found");

    // An executor that closes without answering: 502, and the next stream is served.
    let ex = ScriptedExecutor::start(|conn, _, _| {
        if conn == 0 {
            vec![Action::Close]
        } else {
            vec![Action::Write(support::scripted::answer_200("fine"))]
        }
    });
    let p3 = Proxy::start_hosts(&[ex.hostname()], &[]);
    let r = curl(&["-H", &auth(), "-X", "POST", &url(p3.addr, "/v1/x")], b"");
    assert_spec_error(&r, 502, "Executor failed to answer the request.");
    let r = curl(&["-H", &auth(), &url(p3.addr, "/v1/x")], b"");
    assert_eq!((r.status, r.body.as_slice()), (200, b"fine".as_slice()));
}

#[test]
fn an_http1_request_with_upgrade_h2c_is_served_as_http1() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let r = p.client().request(
        "GET",
        "/v1/ping",
        &[
            ("Authorization", &bearer()),
            ("Connection", "Upgrade, HTTP2-Settings"),
            ("Upgrade", "h2c"),
            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn h2load_many_concurrent_streams_on_one_connection() {
    if !have("h2load") {
        return;
    }
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let out = Command::new("h2load")
        .args(["-n", "3000", "-c", "1", "-m", "100", "-H", &auth()])
        .arg(url(p.addr, "/v1/ping"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("3000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 3000 2xx"), "{text}");
    // Uploads on many streams at once, each body intact.
    let out = Command::new("h2load")
        .args(["-n", "400", "-c", "2", "-m", "50", "-H", &auth()])
        .args(["-d", "/proc/self/exe"])
        .arg(url(p.addr, "/v1/upload"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("400 succeeded, 0 failed"), "{text}");
}

#[test]
fn hundred_mib_up_and_down_over_h2c_with_flat_memory() {
    if !have("curl") {
        return;
    }
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[("OPR_PROXY_MAX_BODY_SIZE", "0")]);
    let len: u64 = 100 * 1024 * 1024;

    // Down: hash the body as it arrives.
    let mut child = Command::new("curl")
        .args(["-s", "--http2-prior-knowledge", "-H", &auth()])
        .arg(url(p.addr, &format!("/v1/download?bytes={len}")))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (mut hasher, mut got, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 16]);
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(got, len);
    assert_eq!(hex(&hasher.finalize()), pattern_sha256(len));

    // Up, with a length and without (chunked to the executor).
    for with_length in [true, false] {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "--http2-prior-knowledge", "-H", &auth(), "-T", "-"]);
        if with_length {
            cmd.args(["-H", &format!("content-length: {len}")]);
        }
        let mut child = cmd
            .arg(url(p.addr, "/v1/upload"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let feeder = std::thread::spawn(move || {
            let mut block = vec![0u8; 1 << 16];
            let mut sent = 0u64;
            while sent < len {
                let n = (len - sent).min(block.len() as u64) as usize;
                for (i, b) in block[..n].iter_mut().enumerate() {
                    *b = pattern_byte(sent + i as u64);
                }
                stdin.write_all(&block[..n]).unwrap();
                sent += n as u64;
            }
        });
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap();
        let j: sonic_rs::Value = sonic_rs::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(j["bodyLength"].as_u64(), Some(len));
        assert_eq!(j["chunked"].as_bool(), Some(!with_length));
        assert_eq!(j["bodySha256"].as_str().unwrap(), pattern_sha256(len));
    }
    let peak = p.status_kib("VmHWM");
    assert!(
        peak < 40 * 1024,
        "peak RSS {peak} KiB: bodies must not be buffered"
    );
}

/// Run `f` on a monoio runtime (the `h2` crate's client over monoio-compat).
fn on_runtime<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(f)
}

async fn h2_connect(addr: std::net::SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
    let io = monoio_compat::StreamWrapper::new(tcp);
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    monoio::spawn(async move {
        let _ = conn.await;
    });
    send
}

fn h2_request(addr: std::net::SocketAddr, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", bearer())
        .body(())
        .unwrap()
}

/// The proxied connection (health checks are off, so it is the only one).
fn closed_by_proxy(ex: &ScriptedExecutor, within: Duration) -> bool {
    eventually(within, || {
        ex.conns().first().is_some_and(|c| c.eof_at.is_some())
    })
}

#[test]
fn a_client_reset_mid_upload_closes_the_executor_connection() {
    let ex = ScriptedExecutor::start(|_, _, _| vec![Action::WaitForClose(10_000)]);
    let p = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_HEALTHCHECK", "disabled")]);
    let addr = p.addr;
    on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let mut request = h2_request(addr, "POST", "/v1/upload");
        request
            .headers_mut()
            .insert("content-length", "10000000".parse().unwrap());
        let (_response, mut body) = send.send_request(request, false).unwrap();
        body.send_data(Bytes::from(vec![7u8; 100_000]), false)
            .unwrap();
        monoio::time::sleep(Duration::from_millis(300)).await;
        body.send_reset(h2::Reason::CANCEL);
        monoio::time::sleep(Duration::from_millis(100)).await;
    });
    assert_eq!(ex.conns().len(), 1);
    assert!(
        closed_by_proxy(&ex, Duration::from_secs(3)),
        "the executor connection of a reset stream must be closed"
    );
}

#[test]
fn a_client_reset_mid_download_closes_the_executor_connection() {
    let ex = ScriptedExecutor::start(|_, _, _| {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n".to_vec();
        answer.extend(vec![b'd'; 65536]);
        // The executor then goes silent: only the client's reset can end this.
        vec![Action::Write(answer), Action::WaitForClose(10_000)]
    });
    let p = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_HEALTHCHECK", "disabled")]);
    let addr = p.addr;
    let got = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let (response, _) = send
            .send_request(h2_request(addr, "GET", "/v1/big"), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let first = body.data().await.unwrap().unwrap();
        // Dropping the body resets the stream (CANCEL).
        drop(body);
        monoio::time::sleep(Duration::from_millis(100)).await;
        first.len()
    });
    assert!(got > 0);
    assert!(
        closed_by_proxy(&ex, Duration::from_secs(3)),
        "the executor connection of a reset stream must be closed"
    );
}

#[test]
fn many_streams_in_flight_on_one_connection_with_h2_client() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let addr = p.addr;
    let ok = on_runtime(async move {
        let send = h2_connect(addr).await;
        let mut tasks = Vec::new();
        for i in 0..50 {
            let mut send = send.clone();
            tasks.push(monoio::spawn(async move {
                let path = format!("/v1/download?bytes={}", 1000 + i * 997);
                let (response, _) = send
                    .send_request(h2_request(addr, "GET", &path), true)
                    .ok()?;
                let response = response.await.ok()?;
                let mut body = response.into_body();
                let mut n = 0;
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.ok()?;
                    n += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                (n == 1000 + i * 997).then_some(())
            }));
        }
        let mut ok = 0;
        for t in tasks {
            if t.await.is_some() {
                ok += 1;
            }
        }
        ok
    });
    assert_eq!(ok, 50);
}

#[test]
fn drain_sends_goaway_and_finishes_streams_in_flight() {
    let a = mock("a");
    let mut p = Proxy::start(&[&a], &[("OPR_PROXY_SHUTDOWN_TIMEOUT", "10")]);
    let mut c = H2Raw::connect(p.addr);
    // Answered 2.5 s after it arrives: well after the GOAWAY (at most a second after the
    // stop), well within the drain time.
    let block = request_block(
        "GET",
        "/v1/sleep?ms=2500",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    assert!(eventually(Duration::from_secs(5), || a.requests() == 1));
    let stopper = std::thread::spawn(move || p.stop());
    let (goaway, before) = c.until_goaway(Duration::from_secs(5));
    let goaway = goaway.expect("GOAWAY on drain");
    assert_eq!(goaway.error_code(), 0, "a graceful GOAWAY is NO_ERROR");
    assert!(
        !before.iter().any(|f| f.stream == 1),
        "the answer came before the GOAWAY: the test proves nothing"
    );
    // The stream in flight still gets its whole answer, then the connection closes.
    let mut ended = false;
    let started = Instant::now();
    while let Some(f) = c.read_frame(Duration::from_secs(5)) {
        if f.stream == 1 && f.flags & END_STREAM != 0 && matches!(f.kind, DATA | HEADERS) {
            ended = true;
        }
    }
    assert!(ended, "the in-flight stream was not finished");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "closed only at the drain deadline"
    );
    stopper.join().unwrap();
}

#[test]
fn an_idle_h2_connection_is_closed_with_goaway() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[("OPR_PROXY_IDLE_TIMEOUT", "1")]);
    let mut c = H2Raw::connect(p.addr);
    let started = Instant::now();
    let (goaway, _) = c.until_goaway(Duration::from_secs(5));
    assert!(goaway.is_some(), "no GOAWAY for an idle connection");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(c.closed_within(Duration::from_secs(3)));
}

/// After an attack on one connection the worker still serves others.
fn still_serves(addr: std::net::SocketAddr) {
    let r = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let (response, _) = send
            .send_request(h2_request(addr, "GET", "/v1/ping"), true)
            .unwrap();
        response.await.map(|r| r.status().as_u16())
    });
    assert_eq!(r.ok(), Some(200));
    let r = Client::connect(addr).request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
}

/// The attacker is cut off with GOAWAY ENHANCE_YOUR_CALM and the connection closes.
fn assert_cut_off(c: &mut H2Raw, what: &str) {
    let (goaway, _) = c.until_goaway(Duration::from_secs(5));
    let goaway = goaway.unwrap_or_else(|| panic!("{what}: no GOAWAY"));
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM, "{what}");
    assert!(
        c.closed_within(Duration::from_secs(3)),
        "{what}: not closed"
    );
}

#[test]
fn rapid_reset_is_cut_off() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block(
        "GET",
        "/v1/sleep?ms=2000",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    c.send(&burst);
    // h2's own limit on streams reset before they were accepted, or ours on resets
    // per second (accepted streams), whichever comes first.
    assert_cut_off(&mut c, "rapid reset");
    // Far fewer than 2000 requests reached the executor.
    assert!(a.requests() < 300, "{} requests forwarded", a.requests());
    still_serves(p.addr);
}

#[test]
fn resets_of_accepted_streams_are_cut_off() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block(
        "GET",
        "/v1/sleep?ms=2000",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    // Each stream is accepted (and forwarded) before its reset arrives, so h2's limit on
    // streams reset before acceptance never fires: the proxy's reset rate does.
    for i in 0..400u32 {
        let id = 2 * i + 1;
        if !c.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        if !c.send(&frame(RST_STREAM, 0, id, &8u32.to_be_bytes())) {
            break;
        }
    }
    assert_cut_off(&mut c, "resets of accepted streams");
    p.wait_for_log("too many stream resets", Duration::from_secs(2));
    still_serves(p.addr);
}

#[test]
fn settings_and_ping_floods_are_cut_off() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    for (kind, payload, what) in [
        (SETTINGS, vec![], "SETTINGS flood"),
        (PING, vec![0u8; 8], "PING flood"),
    ] {
        let mut c = H2Raw::connect(p.addr);
        let mut burst = Vec::new();
        for _ in 0..5000 {
            burst.extend(frame(kind, 0, 0, &payload));
        }
        c.send(&burst);
        assert_cut_off(&mut c, what);
    }
    p.wait_for_log("too many control frames", Duration::from_secs(2));
    still_serves(p.addr);
}

#[test]
fn continuation_flood_is_cut_off() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block("GET", "/v1/ping", &p.addr.to_string(), &[]);
    let mut burst = frame(HEADERS, 0, 1, &block);
    // Endless CONTINUATION frames, none ending the header block.
    for _ in 0..20_000 {
        burst.extend(frame(CONTINUATION, 0, 1, &[0x00, 0x01, b'a', 0x01, b'b']));
        if burst.len() > 1 << 20 {
            if !c.send(&burst) {
                break;
            }
            burst.clear();
        }
    }
    c.send(&burst);
    assert_cut_off(&mut c, "CONTINUATION flood");
    still_serves(p.addr);
    let peak = p.status_kib("VmHWM");
    assert!(peak < 40 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn hpack_bomb_is_cut_off() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let mut c = H2Raw::connect(p.addr);
    let authority = p.addr.to_string();
    let auth_value = bearer();
    let extra = [("authorization", auth_value.as_str())];
    // One 4000-byte field into the dynamic table (literal with incremental indexing,
    // RFC 7541 §6.2.1), then referenced by its 1-byte index: 4 KiB of block decodes to
    // 16 MB.
    let mut first = request_block("GET", "/v1/ping", &authority, &extra);
    first.push(0x40);
    hpack_int(&mut first, 0, 7, 6);
    first.extend_from_slice(b"x-bomb");
    hpack_int(&mut first, 0, 7, 4000);
    first.extend(vec![b'a'; 4000]);
    let bomb = |block: &mut Vec<u8>| block.extend(vec![0x80 | 62; 4000]);
    bomb(&mut first);
    let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, 1, &first);
    for i in 1..40u32 {
        let mut block = request_block("GET", "/v1/ping", &authority, &extra);
        bomb(&mut block);
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    c.send(&burst);
    // h2 measures the decoded list while decoding and drops what is over the limit;
    // a block this far over it ends the connection ("header_list_way_too_large").
    let (goaway, _) = c.until_goaway(Duration::from_secs(5));
    let goaway = goaway.expect("an HPACK bomb ends with GOAWAY");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(c.closed_within(Duration::from_secs(3)));
    assert_eq!(a.requests(), 0);
    still_serves(p.addr);
    let peak = p.status_kib("VmHWM");
    assert!(peak < 40 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn h2_streams_are_in_the_access_log() {
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[
            ("OPR_PROXY_ACCESS_LOG", "enabled"),
            ("OPR_PROXY_ACCESS_LOG_FORMAT", "json"),
        ],
    );
    let addr = p.addr;
    let status = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let (response, _) = send
            .send_request(h2_request(addr, "GET", "/v1/ping?n=1"), true)
            .unwrap();
        response.await.unwrap().status().as_u16()
    });
    assert_eq!(status, 200);
    assert!(
        eventually(Duration::from_secs(5), || p.stdout().lines().count() >= 1),
        "no access log line"
    );
    let line: sonic_rs::Value = sonic_rs::from_str(p.stdout().lines().next().unwrap()).unwrap();
    assert_eq!(line["client"].as_str(), Some("127.0.0.1"));
    assert_eq!(line["status"].as_u64(), Some(200));
    assert_eq!(line["method"].as_str(), Some("GET"));
    assert_eq!(line["target"].as_str(), Some("/v1/ping?n=1"));
    assert_eq!(line["executor"].as_str(), Some(a.hostname().as_str()));
}

#[test]
fn a_preface_split_across_reads_is_still_http2_and_p_methods_stay_http1() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    // The preface in three writes, then a stream for the health endpoint.
    let mut s = std::net::TcpStream::connect(p.addr).unwrap();
    s.set_nodelay(true).unwrap();
    for part in [&PREFACE[..1], &PREFACE[1..10], &PREFACE[10..]] {
        s.write_all(part).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = H2Raw::from_stream(s);
    c.send(&frame(SETTINGS, 0, 0, &[]));
    let block = request_block("GET", "/v1/proxy/health", &p.addr.to_string(), &[]);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    let mut body = Vec::new();
    while let Some(f) = c.read_frame(Duration::from_secs(3)) {
        if f.kind == DATA && f.stream == 1 {
            body.extend_from_slice(&f.payload);
            if f.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert_eq!(body, b"OK");

    // HTTP/1 requests whose method starts with P, sent a byte at a time.
    for method in ["PUT", "POST", "PATCH"] {
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        s.set_nodelay(true).unwrap();
        let request = format!(
            "{method} /v1/echo HTTP/1.1\r\nHost: x\r\nAuthorization: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
            bearer()
        );
        for (i, b) in request.bytes().enumerate() {
            s.write_all(&[b]).unwrap();
            if i < 6 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{method}: {answer}");
    }
}

/// One stream's outcome: the status and the body, or the error that ended it.
async fn fetch(
    mut send: h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: String,
) -> Result<(u16, usize), String> {
    let (response, _) = send
        .send_request(h2_request(addr, "GET", &path), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut n = 0;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        n += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok((status, n))
}

#[test]
fn failing_streams_end_alone_and_the_connection_and_pool_go_on() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let addr = p.addr;
    let (failed, truncated, fine, after) = on_runtime(async move {
        let send = h2_connect(addr).await;
        let go = |path: &str| monoio::spawn(fetch(send.clone(), addr, path.to_string()));
        // An executor that resets before answering (502), one that closes mid-body (the
        // stream is reset), and slow good ones, all on one connection at once.
        let failed = go("/v1/reset");
        let truncated = go("/v1/truncate?bytes=200000");
        let fine: Vec<_> = (0..10).map(|_| go("/v1/sleep?ms=200")).collect();
        let failed = failed.await;
        let truncated = truncated.await;
        let mut ok = Vec::new();
        for f in fine {
            ok.push(f.await);
        }
        // The same connection, and the executor connections pooled since, still serve.
        let mut after = Vec::new();
        for _ in 0..20 {
            after.push(fetch(send.clone(), addr, "/v1/ping".into()).await);
        }
        (failed, truncated, ok, after)
    });
    assert_eq!(failed.map(|(s, _)| s), Ok(502));
    assert!(
        truncated.is_err(),
        "a truncated answer must not end cleanly: {truncated:?}"
    );
    for r in fine {
        assert_eq!(r.map(|(s, _)| s), Ok(200));
    }
    for r in after {
        assert_eq!(r.map(|(s, _)| s), Ok(200));
    }
}

#[test]
fn a_client_that_closes_its_connection_abandons_its_streams() {
    let ex = ScriptedExecutor::start(|_, _, _| vec![Action::WaitForClose(10_000)]);
    let p = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_HEALTHCHECK", "disabled")]);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block(
        "GET",
        "/v1/slow",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    assert!(eventually(Duration::from_secs(3), || ex.requests().len() == 1));
    drop(c);
    assert!(
        closed_by_proxy(&ex, Duration::from_secs(3)),
        "the executor connection of an abandoned stream must be closed"
    );
}

#[test]
fn expect_100_continue_is_answered_by_the_proxy() {
    if !have("curl") {
        return;
    }
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let started = Instant::now();
    // curl would wait 20 s for the 100 before sending the body anyway.
    let r = curl(
        &[
            "-H",
            &auth(),
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "20",
            "--data-binary",
            "@-",
            &url(p.addr, "/v1/upload"),
        ],
        &[b'e'; 2_000_000],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"].as_u64(), Some(2_000_000));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// As over HTTP/1 (docs/behaviour.md §5.2): a stream whose body is declared over the
/// limit gets `413` with no body sent, anycast and broadcast alike.
#[test]
fn expect_continue_over_the_limit_gets_413() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[("OPR_PROXY_MAX_BODY_SIZE", "1000")]);
    let addr = p.addr;
    let statuses = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let mut statuses = Vec::new();
        for (len, broadcast) in [(5_000u64, false), (2_000_000, true)] {
            let mut request = h2_request(addr, "POST", "/v1/echo");
            let headers = request.headers_mut();
            headers.insert("content-length", len.into());
            headers.insert("expect", "100-continue".parse().unwrap());
            if broadcast {
                headers.insert("x-opr-addressing-method", "broadcast".parse().unwrap());
            }
            let (response, _body) = send.send_request(request, false).unwrap();
            let response = monoio::time::timeout(Duration::from_secs(5), response)
                .await
                .expect("an answer without the body")
                .unwrap();
            statuses.push(response.status().as_u16());
        }
        statuses
    });
    assert_eq!(statuses, [413, 413]);
    assert_eq!(a.requests(), 0);
}

#[test]
fn a_header_list_over_the_limit_is_refused_on_its_stream_only() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let mut c = H2Raw::connect(p.addr);
    let authority = p.addr.to_string();
    // 66 000 bytes of header: over the 64 KiB list limit, under h2's abuse limit (4×),
    // in a HEADERS frame and 4 CONTINUATION frames (within h2's cap for that limit).
    let big = "b".repeat(66_000);
    let block = request_block(
        "GET",
        "/v1/ping",
        &authority,
        &[("authorization", &bearer()), ("x-big", &big)],
    );
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut burst = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let flags = if last { END_HEADERS } else { 0 };
        let (kind, flags) = if i == 0 {
            (HEADERS, flags | END_STREAM)
        } else {
            (CONTINUATION, flags)
        };
        burst.extend(frame(kind, flags, 1, chunk));
    }
    // Then a good stream on the same connection.
    let health = request_block("GET", "/v1/proxy/health", &authority, &[]);
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &health));
    c.send(&burst);
    let (mut refused, mut body) = (false, Vec::new());
    while let Some(f) = c.read_frame(Duration::from_secs(3)) {
        assert_ne!(f.kind, GOAWAY, "the connection must survive: {f:?}");
        if f.stream == 1 && matches!(f.kind, HEADERS | RST_STREAM) {
            refused = true;
        }
        if f.stream == 3 && f.kind == DATA {
            body.extend_from_slice(&f.payload);
            if f.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert!(refused, "stream 1 got neither an answer nor a reset");
    assert_eq!(body, b"OK");
    assert_eq!(a.requests(), 0);
}

#[test]
fn streams_over_the_concurrency_cap_are_refused() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block(
        "GET",
        "/v1/sleep?ms=1500",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    // 150 streams at once, ignoring the proxy's SETTINGS_MAX_CONCURRENT_STREAMS (100).
    let mut burst = Vec::new();
    for i in 0..150u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    c.send(&burst);
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.read_frame(left) {
            // REFUSED_STREAM (RFC 9113 §8.7: safe for the client to retry).
            Some(f) if f.kind == RST_STREAM && f.payload == 7u32.to_be_bytes() => refused += 1,
            Some(f) => assert_ne!(f.kind, GOAWAY, "{f:?}"),
            None => break,
        }
    }
    assert_eq!(refused, 50);
    assert!(eventually(Duration::from_secs(3), || a.requests() == 100));
    still_serves(p.addr);

    // A client that keeps provoking refusals is cut off (h2's local reset limit).
    let mut c = H2Raw::connect(p.addr);
    let mut burst = Vec::new();
    for i in 0..300u32 {
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, &block));
    }
    c.send(&burst);
    assert_cut_off(&mut c, "provoked resets");
    still_serves(p.addr);
}

/// `x-opr-addressing-method: broadcast` on an HTTP/2 stream: every online executor gets
/// the request (with its body, as a Content-Length copy, as over HTTP/1) and the stream
/// is answered `204` once all have answered.
#[test]
fn broadcast_over_http2_reaches_every_executor() {
    if !have("curl") {
        return;
    }
    let (a, b) = (mock("a"), mock("b"));
    let p = Proxy::start(&[&a, &b], &[]);
    let body = b"delete runtime 42".repeat(100);
    let r = curl(
        &[
            "-H",
            &auth(),
            "-H",
            "x-opr-addressing-method: broadcast",
            "-H",
            "x-opr-runtime-id: rt-42",
            "-X",
            "DELETE",
            "-T",
            "-",
            &url(p.addr, "/v1/runtimes/rt-42"),
        ],
        &body,
    );
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let want = hex(&Sha256::digest(&body));
    for m in [&a, &b] {
        let got = m.last_request().expect("the executor got the broadcast");
        assert_eq!(
            (got.method.as_str(), got.target.as_str()),
            ("DELETE", "/v1/runtimes/rt-42")
        );
        assert_eq!(
            (got.body_len, got.body_sha256.as_str()),
            (body.len() as u64, want.as_str())
        );
        assert!(!got.chunked, "a Content-Length copy, as over HTTP/1");
        assert_eq!(got.header("x-opr-runtime-id"), Some("rt-42"));
    }
}

/// HTTP/2 streams go through the same selection and failure accounting as HTTP/1:
/// counted in flight to their executor (least-request, p2c, the gauge), counted for
/// passive ejection, explained in `x-opr-route`.
#[test]
fn h2_streams_count_in_flight_and_for_ejection() {
    if !have("curl") {
        return;
    }
    let (a, b) = (mock("a"), mock("b"));
    let p = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_ALGORITHM", "first"),
            ("OPR_PROXY_EJECT_AFTER", "3"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
        ],
    );
    // A slow stream is in flight to "a" while the metrics are read over HTTP/1.
    let addr = p.addr;
    let slow =
        std::thread::spawn(move || curl(&["-H", &auth(), &url(addr, "/v1/sleep?ms=1500")], b""));
    let gauge = format!(
        "opr_proxy_executor_requests_in_flight{{executor=\"{}\"}} 1",
        a.hostname()
    );
    assert!(
        eventually(Duration::from_secs(5), || p
            .get("/v1/proxy/metrics")
            .text()
            .contains(&gauge)),
        "the h2 stream counts in flight"
    );
    assert_eq!(slow.join().unwrap().status, 200);
    // Three proxy 502s in a row from "a" over h2: ejected, the next stream goes to "b".
    for _ in 0..3 {
        let r = curl(&["-H", &auth(), &url(p.addr, "/v1/reset")], b"");
        assert_eq!(r.status, 502);
    }
    let r = curl(&["-H", &auth(), &url(p.addr, "/v1/ping")], b"");
    assert_eq!((r.status, r.header("x-mock-name")), (200, Some("b")));
    // `x-opr-debug: 1` explains the choice over HTTP/2 too.
    let r = curl(
        &[
            "-H",
            &auth(),
            "-H",
            "x-opr-debug: 1",
            &url(p.addr, "/v1/ping"),
        ],
        b"",
    );
    let route = r.header("x-opr-route").unwrap_or("").to_string();
    assert!(
        route.starts_with(&format!("executor={}; tier=", b.hostname())),
        "{route:?}"
    );
}

/// Broadcast bodies are held whole while every executor gets its copy, so they are
/// budgeted: 4 MiB per HTTP/2 connection (and 64 MiB per worker). 30 streams × 1 MB on
/// one connection to a slow executor used to hold all 30 bodies at once (and a copy per
/// executor: 60 MiB); now 4 are taken and the others are refused with `REFUSED_STREAM`
/// before anything is read or sent (RFC 9113 §8.7), which clients may retry.
#[test]
fn broadcast_bodies_over_http2_are_budgeted_per_connection() {
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000")],
    );
    let addr = p.addr;
    let broadcast = |ms: u32, len: usize| {
        let mut request = h2_request(addr, "POST", &format!("/v1/sleep?ms={ms}"));
        let headers = request.headers_mut();
        headers.insert("x-opr-addressing-method", "broadcast".parse().unwrap());
        headers.insert("content-length", len.to_string().parse().unwrap());
        request
    };
    // Warm the worker (allocator, pools) with one small broadcast.
    let warm = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let (response, mut body) = send.send_request(broadcast(1, 10), false).unwrap();
        body.send_data(Bytes::from_static(b"0123456789"), true)
            .unwrap();
        response.await.unwrap().status()
    });
    assert_eq!(warm, 204);
    let before = p.status_kib("VmHWM");
    let streams = 30;
    let outcomes = on_runtime(async move {
        let mut send = h2_connect(addr).await;
        let mut waiting = Vec::new();
        for _ in 0..streams {
            let (response, mut body) = send.send_request(broadcast(600, 1_000_000), false).unwrap();
            body.send_data(Bytes::from(vec![b'b'; 1_000_000]), true)
                .unwrap();
            waiting.push((response, body));
        }
        let mut outcomes = Vec::new();
        for (response, _body) in waiting {
            let response = monoio::time::timeout(Duration::from_secs(30), response).await;
            outcomes.push(match response {
                Ok(Ok(r)) => format!("{}", r.status().as_u16()),
                Ok(Err(e)) => format!("{:?}", e.reason()),
                Err(_) => "timeout".to_string(),
            });
        }
        outcomes
    });
    let peak = p.status_kib("VmHWM");
    let grew = peak.saturating_sub(before);
    let taken = outcomes.iter().filter(|o| *o == "204").count();
    let refused = outcomes
        .iter()
        .filter(|o| *o == "Some(REFUSED_STREAM)")
        .count();
    eprintln!(
        "{streams} broadcasts of 1 MB on one connection: {taken} taken, {refused} refused; \
         peak RSS {before} -> {peak} KiB (+{grew})"
    );
    assert_eq!(taken + refused, streams, "{outcomes:?}");
    assert!((4..streams).contains(&taken), "{outcomes:?}");
    // 4 MiB of bodies, h2's 1 MiB connection window and allocator slack.
    assert!(grew < 14 * 1024, "peak RSS grew by {grew} KiB");
}

/// A literal field with incremental indexing, new name (RFC 7541 §6.2.1).
fn hpack_indexed_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x40);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// Read frames until stream `good` ends; returns its status line bytes seen (HEADERS
/// count), its body, and the RST_STREAM codes per stream.
fn answers(c: &mut H2Raw, good: u32) -> (bool, Vec<u8>, Vec<(u32, u32)>) {
    let (mut headers, mut body, mut resets) = (false, Vec::new(), Vec::new());
    while let Some(f) = c.read_frame(Duration::from_secs(5)) {
        assert_ne!(f.kind, GOAWAY, "the connection must survive: {f:?}");
        if f.kind == RST_STREAM {
            let p = &f.payload;
            resets.push((f.stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]])));
        }
        if f.stream == good && f.kind == HEADERS {
            headers = true;
        }
        if f.stream == good && f.kind == DATA {
            body.extend_from_slice(&f.payload);
        }
        if f.stream == good && f.flags & END_STREAM != 0 {
            break;
        }
    }
    (headers, body, resets)
}

const PROTOCOL_ERROR: u32 = 0x1;

/// RFC 9113 §8.1.1: a malformed request is a stream error. An upper-case field name or a
/// CR/LF in a value used to close the whole connection (GOAWAY PROTOCOL_ERROR), losing a
/// slow stream's answer; now only the offending streams are reset, also a later stream
/// that refers to a bad field through the HPACK table, and the table stays in step.
#[test]
fn a_bad_header_resets_its_stream_only() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let mut c = H2Raw::connect(p.addr);
    let authority = p.addr.to_string();
    let auth = bearer();
    let slow = request_block(
        "GET",
        "/v1/sleep?ms=700",
        &authority,
        &[("authorization", &auth)],
    );
    let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, 1, &slow);
    // Stream 3: an upper-case name, indexed into the dynamic table (index 62).
    let mut upper = request_block("GET", "/v1/ping", &authority, &[("authorization", &auth)]);
    hpack_indexed_literal(&mut upper, "X-Upper", b"1");
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &upper));
    // Stream 5: CR LF in a value.
    let crlf = request_block(
        "GET",
        "/v1/ping",
        &authority,
        &[("authorization", &auth), ("x-split", "a\r\nx-injected: 1")],
    );
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &crlf));
    // Stream 7: the bad field again, by its index.
    let mut by_index = request_block("GET", "/v1/ping", &authority, &[("authorization", &auth)]);
    by_index.push(0x80 | 62);
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 7, &by_index));
    // Stream 9: a good request that adds to the table after the bad entry.
    let mut good = request_block("GET", "/v1/ping", &authority, &[("authorization", &auth)]);
    hpack_indexed_literal(&mut good, "x-good", b"yes");
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 9, &good));
    c.send(&burst);
    let (headers, body, resets) = answers(&mut c, 1);
    assert!(headers, "the slow stream was answered");
    assert!(!body.is_empty(), "the slow stream's body arrived");
    for stream in [3, 5, 7] {
        assert!(
            resets.contains(&(stream, PROTOCOL_ERROR)),
            "stream {stream} reset with PROTOCOL_ERROR: {resets:?}"
        );
    }
    assert!(
        !resets.iter().any(|(s, _)| *s == 1 || *s == 9),
        "{resets:?}"
    );
    // The table is in step: index 62 is now `x-good: yes` (newest first).
    let mut again = request_block("GET", "/v1/ping", &authority, &[("authorization", &auth)]);
    again.push(0x80 | 62);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 11, &again));
    let (headers, _, resets) = answers(&mut c, 11);
    assert!(headers && resets.is_empty(), "{resets:?}");
    // Neither the bad requests nor their fields reached an executor.
    let seen = a.last_request().expect("the good requests were forwarded");
    assert_eq!(seen.header("x-good"), Some("yes"));
    assert!(eventually(Duration::from_secs(2), || a.requests() == 3));
}

/// RFC 9113 §8.3.1: `#` is not allowed in `:path`. The `http` crate used to cut the
/// fragment silently (`/v1/ping?q=1#x` went out as `/v1/ping?q=1`); the stream is reset.
#[test]
fn a_fragment_in_path_resets_the_stream() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let mut c = H2Raw::connect(p.addr);
    let authority = p.addr.to_string();
    let auth = bearer();
    let bad = request_block(
        "GET",
        "/v1/ping?q=1#x",
        &authority,
        &[("authorization", &auth)],
    );
    let mut burst = frame(HEADERS, END_HEADERS | END_STREAM, 1, &bad);
    let health = request_block("GET", "/v1/proxy/health", &authority, &[]);
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &health));
    c.send(&burst);
    let (headers, body, resets) = answers(&mut c, 3);
    assert!(headers && body == b"OK");
    assert_eq!(resets, vec![(1, PROTOCOL_ERROR)]);
    assert_eq!(a.requests(), 0, "the request must not be forwarded");
}

/// RFC 9113 §8.1: trailers must not carry pseudo-header fields; such a request is
/// malformed: its stream is reset and its executor connection closed (the request
/// never completes there). It used to be forwarded and answered.
#[test]
fn trailers_with_a_pseudo_header_reset_the_stream() {
    let a = mock("a");
    let p = Proxy::start(&[&a], &[]);
    let mut c = H2Raw::connect(p.addr);
    let authority = p.addr.to_string();
    let auth = bearer();
    let head = request_block(
        "POST",
        "/v1/upload",
        &authority,
        &[("authorization", &auth)],
    );
    let mut burst = frame(HEADERS, END_HEADERS, 1, &head);
    burst.extend(frame(DATA, 0, 1, b"hello"));
    let mut trailers = Vec::new();
    hpack_literal(&mut trailers, ":path", b"/v1/other");
    hpack_literal(&mut trailers, "x-trailer", b"1");
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
    let health = request_block("GET", "/v1/proxy/health", &authority, &[]);
    burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &health));
    c.send(&burst);
    let (headers, body, resets) = answers(&mut c, 3);
    assert!(headers && body == b"OK");
    assert!(resets.contains(&(1, PROTOCOL_ERROR)), "{resets:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        a.requests(),
        0,
        "the executor must not get a complete request"
    );
}

/// An incomplete header block gets the header timeout, as an HTTP/1 head does (it held
/// its memory until the idle timeout, 60 s by default): the connection is cut off.
#[test]
fn an_unfinished_header_block_is_cut_off_at_the_header_timeout() {
    let a = mock("a");
    let p = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_HEADER_TIMEOUT", "1"),
            ("OPR_PROXY_IDLE_TIMEOUT", "600"),
        ],
    );
    let mut c = H2Raw::connect(p.addr);
    let block = request_block("GET", "/v1/ping", &p.addr.to_string(), &[]);
    // HEADERS without END_HEADERS: a CONTINUATION should follow and never does.
    c.send(&frame(HEADERS, END_STREAM, 1, &block));
    let started = Instant::now();
    let (goaway, _) = c.until_goaway(Duration::from_secs(8));
    let goaway = goaway.expect("GOAWAY within the header timeout");
    assert_eq!(goaway.error_code(), ENHANCE_YOUR_CALM);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
