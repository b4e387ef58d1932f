//! Integration tests: the real proxy against mock executors on 127.0.0.1, over real
//! sockets. Run on both io drivers (`OPR_TEST_IO_DRIVER=io_uring|epoll`).

use std::time::Duration;

use crate::support::*;
use opr_proxy::ExecutorId;
use sonic_rs::JsonValueTrait;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn health_endpoint_needs_no_key() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    let r = c.request("GET", "/v1/proxy/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "OK");
    // Keep-alive: the same connection answers again.
    let r = c.request("GET", "/v1/proxy/health", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(a.requests(), 0, "health is answered by the proxy itself");
}

#[test]
fn wrong_or_missing_key_is_401_json() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    for auth in [None, Some("Bearer nope"), Some(SECRET), Some("Bearer ")] {
        let mut c = proxy.client();
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("Authorization", *v)).collect();
        let r = c.request("GET", "/v1/ping", &headers, b"");
        assert_eq!(r.status, 401, "auth {auth:?}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(
            r.header("cache-control"),
            Some("no-cache, no-store, must-revalidate")
        );
        assert_eq!(r.header("expires"), Some("0"));
        assert_eq!(r.header("pragma"), Some("no-cache"));
        let body = r.json();
        assert_eq!(body["message"].as_str(), Some("Incorrect proxy key."));
        assert_eq!(body["code"].as_u64(), Some(401));
        assert_eq!(body["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    }
    assert_eq!(a.requests(), 0);
}

#[test]
fn round_robin_alternates_executors() {
    let (a, b) = (mock("a"), mock("b"));
    let proxy = Proxy::start(&[&a, &b], &[("OPR_PROXY_ALGORITHM", "round-robin")]);
    let mut c = proxy.client();
    let names: Vec<String> = (0..6)
        .map(|_| {
            c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"")
                .executor()
        })
        .collect();
    assert_eq!(names, ["a", "b", "a", "b", "a", "b"]);
}

#[test]
fn first_and_last_pick_ends() {
    let (a, b, c) = (mock("a"), mock("b"), mock("c"));
    let first = Proxy::start(&[&a, &b, &c], &[("OPR_PROXY_ALGORITHM", "first")]);
    let last = Proxy::start(&[&a, &b, &c], &[("OPR_PROXY_ALGORITHM", "last")]);
    for _ in 0..3 {
        assert_eq!(first.get("/v1/ping").executor(), "a");
        assert_eq!(last.get("/v1/ping").executor(), "c");
    }
}

#[test]
fn random_reaches_every_executor() {
    let (a, b) = (mock("a"), mock("b"));
    let proxy = Proxy::start(&[&a, &b], &[("OPR_PROXY_ALGORITHM", "random")]);
    let mut c = proxy.client();
    for _ in 0..60 {
        c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    }
    assert!(
        a.requests() > 5 && b.requests() > 5,
        "{} / {}",
        a.requests(),
        b.requests()
    );
}

#[test]
fn busy_executor_falls_to_lower_tier() {
    let busy = mock_with(
        "busy",
        HealthMode::Pass {
            usage: 95,
            runtimes: vec![],
        },
    );
    let calm = mock_with(
        "calm",
        HealthMode::Pass {
            usage: 10,
            runtimes: vec![],
        },
    );
    let proxy = Proxy::start(&[&busy, &calm], &[("OPR_PROXY_ALGORITHM", "first")]);
    for _ in 0..3 {
        assert_eq!(proxy.get("/v1/ping").executor(), "calm");
    }
    // Both busy: tier 3 (online) takes the first.
    calm.set_health(HealthMode::Pass {
        usage: 90,
        runtimes: vec![],
    });
    assert!(eventually(WAIT, || proxy.get("/v1/ping").executor() == "busy"));
}

#[test]
fn runtime_preference_and_optimistic_update() {
    let a = mock_with(
        "a",
        HealthMode::Pass {
            usage: 10,
            runtimes: vec![],
        },
    );
    let b = mock_with(
        "b",
        HealthMode::Pass {
            usage: 10,
            runtimes: vec![("rt-warm".into(), "pass".into(), 5)],
        },
    );
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_ALGORITHM", "round-robin"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
        ],
    );
    let mut c = proxy.client();
    let auth = bearer();
    // The warm runtime always goes to b.
    for _ in 0..4 {
        let r = c.request(
            "GET",
            "/v1/ping",
            &[("Authorization", &auth), ("x-opr-runtime-id", "rt-warm")],
            b"",
        );
        assert_eq!(r.executor(), "b");
    }
    // A cold runtime goes wherever round-robin says, then sticks there.
    let first = c
        .request(
            "GET",
            "/v1/ping",
            &[("Authorization", &auth), ("x-opr-runtime-id", "rt-cold")],
            b"",
        )
        .executor();
    for _ in 0..4 {
        let r = c.request(
            "GET",
            "/v1/ping",
            &[("Authorization", &auth), ("x-opr-runtime-id", "rt-cold")],
            b"",
        );
        assert_eq!(
            r.executor(),
            first,
            "optimistic update keeps the runtime on its host"
        );
    }
}

#[test]
fn executor_going_offline_and_back() {
    let (a, b) = (mock("a"), mock("b"));
    let proxy = Proxy::start(&[&a, &b], &[("OPR_PROXY_ALGORITHM", "first")]);
    assert_eq!(proxy.get("/v1/ping").executor(), "a");
    a.set_health(HealthMode::Status(500));
    assert!(eventually(WAIT, || proxy.get("/v1/ping").executor() == "b"));
    let containers = proxy.get("/v1/proxy/containers").json();
    assert_eq!(containers[0]["status"].as_str(), Some("offline"));
    assert_eq!(containers[1]["status"].as_str(), Some("online"));
    a.set_health(HealthMode::Pass {
        usage: 0,
        runtimes: vec![],
    });
    assert!(eventually(WAIT, || proxy.get("/v1/ping").executor() == "a"));
}

#[test]
fn all_executors_down_is_404_json() {
    let a = mock_with("a", HealthMode::Fail);
    let proxy = Proxy::start(&[&a], &[]);
    let r = proxy.get("/v1/ping");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["message"].as_str(),
        Some("No online executor found")
    );
    assert_eq!(r.json()["code"].as_u64(), Some(404));
    assert_eq!(a.requests(), 0);
}

#[test]
fn healthcheck_disabled_treats_all_as_online() {
    let a = mock_with("a", HealthMode::Fail);
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_HEALTHCHECK", "disabled")]);
    assert_eq!(proxy.get("/v1/ping").status, 200);
    assert_eq!(a.health_requests(), 0);
}

#[test]
fn containers_lists_executors_in_order() {
    let a = mock_with(
        "a",
        HealthMode::Pass {
            usage: 42,
            runtimes: vec![("r1".into(), "pass".into(), 1)],
        },
    );
    let b = mock_with("b", HealthMode::Status(503));
    let proxy = Proxy::start(&[&a, &b], &[]);
    let r = proxy.get("/v1/proxy/containers");
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v[0]["hostname"].as_str(), Some(a.hostname().as_str()));
    assert_eq!(v[0]["status"].as_str(), Some("online"));
    assert_eq!(v[0]["stateStatus"].as_str(), Some("pass"));
    assert_eq!(v[0]["stateUsage"].as_u64(), Some(42));
    assert_eq!(v[0]["runtimes"].as_u64(), Some(1));
    assert_eq!(v[1]["hostname"].as_str(), Some(b.hostname().as_str()));
    assert_eq!(v[1]["status"].as_str(), Some("offline"));
    assert!(v[1]["lastError"].as_str().unwrap().contains("503"));
    // Key needed.
    let r = proxy
        .client()
        .request("GET", "/v1/proxy/containers", &[], b"");
    assert_eq!(r.status, 401);
}

/// An executor is shown as the operator spelled it in `OPR_PROXY_EXECUTORS` (here
/// `http://127.0.0.1:<port>/`), as the original shows it; it is still reached at
/// host:port, which is also the `Host` an HTTP/1.0 request gets.
#[test]
fn executors_are_shown_as_spelled() {
    let a = mock("a");
    let spelled = format!("http://{}/", a.hostname());
    let env = [("OPR_PROXY_ENV", "development")];
    let proxy = Proxy::start_hosts(&[format!(" {spelled} ")], &env);
    let r = proxy.get("/v1/echo");
    assert_eq!(r.status, 200);
    let seen = a.last_request().unwrap();
    assert_eq!(
        seen.header_all("x-opr-executor-hostname"),
        vec![spelled.as_str()]
    );
    let route = format!("executor={spelled}; tier=1; reason=usage < 80");
    assert_eq!(r.header("x-opr-route"), Some(route.as_str()));
    let v = proxy.get("/v1/proxy/containers").json();
    assert_eq!(v[0]["hostname"].as_str(), Some(spelled.as_str()));
    let metrics = proxy.get("/v1/proxy/metrics").text();
    assert!(
        metrics.contains(&format!("executor=\"{spelled}\"")),
        "{metrics}"
    );
    let mut c = proxy.client();
    let key = bearer();
    c.send(format!("GET /v1/echo HTTP/1.0\r\nAuthorization: {key}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(false).unwrap().status, 200);
    let seen = a.last_request().unwrap();
    assert_eq!(seen.header("host"), Some(a.hostname().as_str()));
}

#[test]
fn headers_are_rewritten_for_the_executor() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_ENV", "development")]);
    let mut c = proxy.client();
    let r = c.request(
        "POST",
        "/v1/echo?x=1&y=%2F..//z",
        &[
            ("Authorization", &bearer()),
            ("X-Custom", "kept"),
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "gone"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("x-opr-executor-hostname", "spoofed"),
        ],
        b"hello",
    );
    assert_eq!(r.status, 200);
    let seen = a.last_request().unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(
        seen.target, "/v1/echo?x=1&y=%2F..//z",
        "path and query byte-exact"
    );
    assert_eq!(
        seen.header("authorization"),
        Some(&*format!("Bearer {EXECUTOR_SECRET}"))
    );
    assert_eq!(seen.header_all("authorization").len(), 1);
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("x-drop-me"), None, "named in Connection");
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("connection"), None);
    assert_eq!(
        seen.header("host"),
        Some("proxy.test"),
        "Host passes unchanged"
    );
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(
        seen.header_all("x-opr-executor-hostname"),
        vec![a.hostname().as_str()]
    );
    assert_eq!(seen.body_len, 5);
    assert!(
        !seen.headers.iter().any(|(_, v)| v.contains(SECRET)),
        "client key never reaches executors"
    );
}

#[test]
fn production_mode_adds_no_executor_hostname() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let r = proxy.get("/v1/ping");
    assert_eq!(r.json()["server"].as_str(), Some("UNKNOWN"));
    assert_eq!(
        r.json()["secret"].as_str(),
        Some(&*format!("Bearer {EXECUTOR_SECRET}"))
    );
}

#[test]
fn keep_alive_connections_to_executors_are_reused() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    for _ in 0..10 {
        // A new client connection each time: reuse is on the executor side.
        assert_eq!(proxy.get("/v1/ping").status, 200);
    }
    assert_eq!(a.requests(), 10);
    assert_eq!(
        a.connections(),
        1,
        "one pooled executor connection served all"
    );
}

#[test]
fn executor_closing_is_not_pooled() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    assert_eq!(proxy.get("/v1/close").text(), "bye");
    assert_eq!(proxy.get("/v1/ping").status, 200);
    assert_eq!(a.connections(), 2);
}

#[test]
fn whole_request_timeout_is_504() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_TIMEOUT", "1")]);
    let started = std::time::Instant::now();
    let r = proxy.get("/v1/sleep?ms=3000");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["code"].as_u64(), Some(504));
    assert!(started.elapsed() < Duration::from_millis(2500));
    // The proxy still serves.
    assert_eq!(proxy.get("/v1/ping").status, 200);
}

#[test]
fn refused_executor_fails_over_and_is_flagged() {
    let a = mock("a");
    let dead = dead_hostname();
    let proxy = Proxy::start_hosts(
        &[dead.clone(), a.hostname()],
        &[
            ("OPR_PROXY_HEALTHCHECK", "disabled"),
            ("OPR_PROXY_ALGORITHM", "first"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
        ],
    );
    let r = proxy.get("/v1/ping");
    assert_eq!(r.status, 200);
    assert_eq!(r.executor(), "a");
    assert!(proxy
        .server()
        .board()
        .is_flagged_offline(ExecutorId::new(0)));
    let v = proxy.get("/v1/proxy/containers").json();
    assert_eq!(v[0]["status"].as_str(), Some("offline"));
}

#[test]
fn garbage_from_executor_is_502() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let r = proxy.get("/v1/garbage");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["code"].as_u64(), Some(502));
    let r = proxy.get("/v1/reset");
    assert_eq!(r.status, 502);
    assert_eq!(proxy.get("/v1/ping").status, 200);
}

#[test]
fn truncated_response_closes_client_connection() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "GET /v1/truncate?bytes=100000 HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert!(r.truncated, "client must see a truncated message");
    assert!(r.body.len() < 100000);
}

#[test]
fn head_204_304_carry_no_body_and_keep_alive() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    let auth = bearer();
    let r = c.request(
        "HEAD",
        "/v1/download?bytes=5000",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5000"));
    let r = c.request(
        "GET",
        "/v1/status?code=204",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 204);
    let r = c.request(
        "GET",
        "/v1/status?code=304",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 304);
    let r = c.request("GET", "/v1/ping", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 200, "connection still in sync");
}

#[test]
fn chunked_upload_and_download() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let len = 3 * 1024 * 1024 + 17;
    let r = upload(proxy.addr, "/v1/upload", len, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"].as_u64(), Some(len));
    assert_eq!(
        r.json()["bodySha256"].as_str(),
        Some(pattern_sha256(len).as_str())
    );
    let (status, got, sha, truncated) = download(
        proxy.addr,
        &format!("/v1/download?bytes={len}&chunked=1&chunk=10000"),
    );
    assert_eq!((status, got, truncated), (200, len, false));
    assert_eq!(sha, pattern_sha256(len));
}

#[test]
fn expect_continue_does_not_stall() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    c.send(format!("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n", bearer()).as_bytes());
    let (status, _) = c.read_head().unwrap();
    assert_eq!(status, 100);
    c.send(b"ping");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["bodyLength"].as_u64(), Some(4));
    assert_eq!(a.last_request().unwrap().header("expect"), None);
}

/// docs/behaviour.md §5.2: a body declared over the limit gets `413` at once, not a
/// `100` that asks for a body the proxy would refuse (anycast and broadcast alike).
#[test]
fn expect_continue_over_the_limit_gets_413_instead_of_100() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_BODY_SIZE", "1000")]);
    let broadcast = "x-opr-addressing-method: broadcast\r\n";
    for (len, extra) in [(5_000, ""), (2_000_000, broadcast)] {
        let mut c = proxy.client();
        c.send(format!("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n{extra}Expect: 100-continue\r\nContent-Length: {len}\r\n\r\n", bearer()).as_bytes());
        let (status, _) = c.read_head().unwrap();
        assert_eq!(status, 413, "{len} bytes {extra}");
    }
    assert_eq!(a.requests(), 0);
}

#[test]
fn broadcast_reaches_every_online_executor() {
    let (a, b) = (mock("a"), mock("b"));
    let down = mock_with("down", HealthMode::Fail);
    let proxy = Proxy::start(&[&a, &b, &down], &[]);
    let mut c = proxy.client();
    let r = c.request(
        "DELETE",
        "/v1/echo",
        &[
            ("Authorization", &bearer()),
            ("x-opr-addressing-method", "broadcast"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    // As the original answers it (its own test suite reads the field).
    assert_eq!(r.header("content-length"), Some("0"));
    assert_eq!((a.requests(), b.requests(), down.requests()), (1, 1, 0));
    assert_eq!(a.last_request().unwrap().method, "DELETE");
}

#[test]
fn anycast_fast_ignores_usage() {
    let busy = mock_with(
        "busy",
        HealthMode::Pass {
            usage: 99,
            runtimes: vec![],
        },
    );
    let proxy = Proxy::start(&[&busy], &[]);
    let r = proxy.client().request(
        "GET",
        "/v1/ping",
        &[
            ("Authorization", &bearer()),
            ("x-opr-addressing-method", "anycast-fast"),
        ],
        b"",
    );
    assert_eq!(r.executor(), "busy");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    let auth = bearer();
    let mut raw = String::new();
    for i in 0..3 {
        raw.push_str(&format!("POST /v1/echo?n={i} HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nContent-Length: 1\r\n\r\n{i}"));
    }
    c.send(raw.as_bytes());
    for i in 0..3 {
        let r = c.read_response(false).unwrap();
        assert_eq!(
            r.json()["target"].as_str(),
            Some(&*format!("/v1/echo?n={i}"))
        );
    }
}

#[test]
fn malformed_request_is_400_json() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    c.send(b"GET /v1/ping HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n");
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"].as_u64(), Some(400));
    let mut c = proxy.client();
    c.send(b"GET http://evil.example/ HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response(false).unwrap().status, 400);
}

#[test]
fn declared_body_over_limit_is_413() {
    let a = mock("a");
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_MAX_BODY_SIZE", "1000")]);
    let mut c = proxy.client();
    c.send(format!("POST /v1/echo HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Length: 1001\r\n\r\n", bearer()).as_bytes());
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(a.requests(), 0);
}

#[test]
fn refused_executor_comes_back_after_a_passing_probe() {
    let a = mock("a");
    let b = mock("b");
    let addr = a.addr();
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_ALGORITHM", "first"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "300"),
        ],
    );
    assert_eq!(proxy.get("/v1/ping").executor(), "a");
    a.stop();
    // The next request finds `a` refusing, flags it and is served by `b`.
    assert_eq!(proxy.get("/v1/ping").executor(), "b");
    // `a` returns on the same port; the checker's passing probe clears the flag.
    let again = MockExecutor::start(MockOptions {
        name: "a2".into(),
        bind: addr,
        ..MockOptions::default()
    })
    .expect("rebind the executor's port");
    assert!(eventually(WAIT, || proxy.get("/v1/ping").executor() == "a2"));
    assert!(!proxy
        .server()
        .board()
        .is_flagged_offline(ExecutorId::new(0)));
    drop(again);
}

/// Regression: a 404 on a keep-alive connection used to leave the request unconsumed, so
/// the proxy parsed it again and answered it forever.
#[test]
fn no_executor_404_keeps_connection_in_sync() {
    let a = mock_with("a", HealthMode::Fail);
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    let auth = bearer();
    for method in ["GET", "POST", "GET"] {
        let r = c.request(method, "/v1/ping", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 404);
    }
    let r = c.request(
        "DELETE",
        "/v1/x",
        &[
            ("Authorization", &auth),
            ("x-opr-addressing-method", "broadcast"),
        ],
        b"",
    );
    assert_eq!(r.status, 404);
    // Exactly four answers: nothing else is pending on the connection.
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(std::io::Read::read(&mut c.stream, &mut byte).is_err());
}

/// Regression (found by the soak): errors the proxy answered to `HEAD` carried a body,
/// which a keep-alive client then read as the start of the next response.
#[test]
fn head_requests_get_error_answers_without_body() {
    let a = mock_with("a", HealthMode::Fail);
    let proxy = Proxy::start(&[&a], &[]);
    let mut c = proxy.client();
    let r = c.request("HEAD", "/v1/x", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 404);
    assert!(r.header("content-length").is_some());
    let r = c.request("HEAD", "/v1/x", &[("Authorization", "Bearer wrong")], b"");
    assert_eq!(r.status, 401);
    // The connection is still in sync: the next answer is a whole, fresh response.
    let r = c.request("GET", "/v1/proxy/health", &[], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
}
