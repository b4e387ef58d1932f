//! Metrics (parsed by a real Prometheus text parser), the access log in both formats, and
//! `x-opr-route`, against real processes and mock executors on 127.0.0.1.

use crate::support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// One sample: metric name, labels, value.
type Sample = (String, HashMap<String, String>, f64);

/// Parse the exposition with the Python `prometheus_client` parser (the reference
/// implementation's parser; `.ci/run` installs it). Panics, naming the fix, when absent.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    const SCRIPT: &str = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        out = [[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]\n\
        print(json.dumps(out))\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse metrics");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the exposition (pip install prometheus_client?): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: sonic_rs::Value = sonic_rs::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let labels = s[1]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_str().unwrap().to_string()))
                .collect();
            (
                s[0].as_str().unwrap().to_string(),
                labels,
                s[2].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The value of the sample `name` whose labels include all of `labels` (0 if absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

fn scrape(proxy: &Proxy) -> Vec<Sample> {
    let r = proxy.get("/v1/proxy/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        r.header("content-type")
    );
    parse_prometheus(&r.text())
}

#[test]
fn metrics_count_the_traffic_sent() {
    let a = mock("a");
    let b = mock("b");
    let proxy = Proxy::start(&[&a, &b], &[("OPR_PROXY_ALGORITHM", "round-robin")]);
    let (ha, hb) = (a.hostname(), b.hostname());

    // Without the key: 401 like every other proxy endpoint.
    let r = proxy.client().request("GET", "/v1/proxy/metrics", &[], b"");
    assert_eq!(r.status, 401);

    let mut c = proxy.client();
    let key = bearer();
    for _ in 0..10 {
        let r = c.request("GET", "/v1/ping", &[("Authorization", &key)], b"");
        assert_eq!(r.status, 200);
    }
    for _ in 0..2 {
        let r = c.request(
            "GET",
            "/v1/status?code=503",
            &[("Authorization", &key)],
            b"",
        );
        assert_eq!(r.status, 503);
    }
    let body = vec![7u8; 100_000];
    let r = c.request("POST", "/v1/upload", &[("Authorization", &key)], &body);
    assert_eq!(r.status, 200);
    drop(c);
    for _ in 0..3 {
        let r =
            proxy
                .client()
                .request("GET", "/v1/ping", &[("Authorization", "Bearer wrong")], b"");
        assert_eq!(r.status, 401);
    }

    // A request is counted once its answer is written, so a client can read its answer
    // before it counts: scrape until all 17 are (each scrape before is one more, a 200).
    let mut scrapes = 0.0;
    let mut s = scrape(&proxy);
    let counted = |s: &[Sample]| value(s, "opr_proxy_request_duration_seconds_count", &[]);
    let settled = eventually(Duration::from_secs(5), || {
        if counted(&s) >= 17.0 + scrapes {
            return true;
        }
        scrapes += 1.0;
        s = scrape(&proxy);
        false
    });
    assert!(settled, "{} requests counted", counted(&s));
    let total = |code: &str| value(&s, "opr_proxy_requests_total", &[("code", code)]);
    assert_eq!(
        total("200"),
        11.0 + scrapes,
        "10 pings, an upload, earlier scrapes"
    );
    assert_eq!(
        value(
            &s,
            "opr_proxy_requests_total",
            &[("code", "200"), ("executor", &ha)]
        ) + value(
            &s,
            "opr_proxy_requests_total",
            &[("code", "200"), ("executor", &hb)]
        ),
        11.0
    );
    assert!(
        value(&s, "opr_proxy_requests_total", &[("executor", &ha)]) >= 5.0,
        "round-robin"
    );
    assert_eq!(total("503"), 2.0);
    // The keyless scrape and the three wrong keys: answered by the proxy itself.
    assert_eq!(
        value(
            &s,
            "opr_proxy_requests_total",
            &[("code", "401"), ("executor", "none")]
        ),
        4.0
    );
    // Every answered request is in the histogram; the scrape in hand is in flight.
    assert_eq!(counted(&s), 17.0 + scrapes);
    assert_eq!(
        value(
            &s,
            "opr_proxy_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        17.0 + scrapes
    );
    assert_eq!(value(&s, "opr_proxy_requests_in_flight", &[]), 1.0);
    assert!(value(&s, "opr_proxy_received_bytes_total", &[]) > 100_000.0);
    assert!(value(&s, "opr_proxy_sent_bytes_total", &[]) > 0.0);
    assert_eq!(
        value(&s, "opr_proxy_executor_up", &[("executor", &ha)]),
        1.0
    );
    assert_eq!(
        value(&s, "opr_proxy_executor_usage", &[("executor", &hb)]),
        0.0
    );
    // 13 forwarded requests on one keep-alive client connection: executor connections
    // were opened once per executor and reused after that.
    let opened = value(&s, "opr_proxy_executor_connections_opened_total", &[]);
    let reused = value(&s, "opr_proxy_executor_connections_reused_total", &[]);
    assert_eq!(opened + reused, 13.0, "opened {opened}, reused {reused}");
    assert!(reused >= 9.0, "reused {reused}");
    assert!(
        value(
            &s,
            "opr_proxy_health_probe_duration_seconds",
            &[("executor", &ha)]
        ) > 0.0
    );
    assert_eq!(
        value(
            &s,
            "opr_proxy_health_probe_failures_total",
            &[("executor", &ha)]
        ),
        0.0
    );
    assert_eq!(value(&s, "opr_proxy_client_connections_open", &[]), 1.0);
    assert!(
        value(
            &s,
            "opr_proxy_client_connections_closed_total",
            &[("reason", "client")]
        ) + value(
            &s,
            "opr_proxy_client_connections_closed_total",
            &[("reason", "closed")]
        ) >= 4.0
    );
    assert_eq!(value(&s, "opr_proxy_worker_info", &[("worker", "0")]), 1.0);
    assert_eq!(value(&s, "opr_proxy_error_reports_dropped_total", &[]), 0.0);

    // A stopped executor: down in the next round, with its probe failures counted.
    b.stop();
    assert!(eventually(Duration::from_secs(10), || {
        let s = scrape(&proxy);
        value(&s, "opr_proxy_executor_up", &[("executor", &hb)]) == 0.0
            && value(
                &s,
                "opr_proxy_health_probe_failures_total",
                &[("executor", &hb)],
            ) >= 1.0
    }));
}

#[test]
fn stray_bytes_show_as_discarded_connections() {
    // An executor that answers `204` and then sends a body nobody asked for.
    let ex = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ex.local_addr().unwrap();
    let strays = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent = strays.clone();
    std::thread::spawn(move || {
        for s in ex.incoming() {
            let Ok(mut s) = s else { return };
            let sent = sent.clone();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if buf[..n].starts_with(b"GET /v1/health") => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
                        }
                        Ok(_) => {
                            let _ = s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
                            std::thread::sleep(Duration::from_millis(100));
                            let _ = s.write_all(b"stray");
                            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    let proxy = Proxy::start_hosts(&[addr.to_string()], &[]);
    let mut c = proxy.client();
    let key = bearer();
    assert_eq!(
        c.request("GET", "/x", &[("Authorization", &key)], b"")
            .status,
        204
    );
    // The stray bytes are on their way to the pooled connection.
    assert!(eventually(Duration::from_secs(10), || strays
        .load(std::sync::atomic::Ordering::SeqCst)
        >= 1));
    assert_eq!(
        c.request("GET", "/y", &[("Authorization", &key)], b"")
            .status,
        204
    );
    let s = scrape(&proxy);
    let discarded = |reason| {
        value(
            &s,
            "opr_proxy_executor_connections_discarded_total",
            &[("reason", reason)],
        )
    };
    assert!(discarded("idle_bytes") >= 1.0, "{s:?}");
}

#[test]
fn access_log_lines_in_json_and_text() {
    let a = mock("a");
    for format in ["json", "text"] {
        let p = ProxyProcess::start(
            &[a.hostname()],
            &[
                ("OPR_PROXY_ACCESS_LOG", "enabled"),
                ("OPR_PROXY_ACCESS_LOG_FORMAT", format),
            ],
        );
        let mut c = Client::connect(p.addr);
        let key = bearer();
        let r = c.request(
            "POST",
            "/v1/echo?x=\"1\"",
            &[("Authorization", &key)],
            b"hello",
        );
        assert_eq!(r.status, 200);
        let r = c.request("GET", "/v1/ping", &[("Authorization", "Bearer no")], b"");
        assert_eq!(r.status, 401);
        assert!(
            eventually(Duration::from_secs(5), || p.stdout().lines().count() >= 2),
            "{format}: access log lines: {:?}",
            p.stdout()
        );
        let out = p.stdout();
        let lines: Vec<&str> = out.lines().collect();
        if format == "json" {
            let first: sonic_rs::Value = sonic_rs::from_str(lines[0]).unwrap();
            assert_eq!(first["client"].as_str(), Some("127.0.0.1"));
            assert_eq!(first["method"].as_str(), Some("POST"));
            assert_eq!(first["target"].as_str(), Some("/v1/echo?x=\"1\""));
            assert_eq!(first["status"].as_u64(), Some(200));
            assert_eq!(first["executor"].as_str(), Some(a.hostname().as_str()));
            assert_eq!(first["tier"].as_u64(), Some(1));
            assert!(first["bytesIn"].as_u64().unwrap() > 5);
            assert!(first["bytesOut"].as_u64().unwrap() > 0);
            assert!(first["durationUs"].as_u64().is_some());
            assert!(first["time"].as_str().unwrap().ends_with('Z'));
            let second: sonic_rs::Value = sonic_rs::from_str(lines[1]).unwrap();
            assert_eq!(second["status"].as_u64(), Some(401));
            assert!(second["executor"].is_null());
        } else {
            let want = format!(
                " 127.0.0.1 \"POST /v1/echo?x=\\\"1\\\"\" 200 executor={} tier=1 in=",
                a.hostname()
            );
            assert!(lines[0].contains(&want), "{}", lines[0]);
            assert!(lines[0].contains(" us="), "{}", lines[0]);
            assert!(
                lines[1].contains("\"GET /v1/ping\" 401 executor=- tier=- in="),
                "{}",
                lines[1]
            );
        }
    }
}

#[test]
fn route_is_explained_only_when_asked() {
    let a = mock("a");
    let b = mock("b");
    let key = bearer();
    let env = [
        ("OPR_PROXY_ALGORITHM", "first"),
        ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
    ];
    let proxy = Proxy::start(&[&a, &b], &env);
    let r = proxy.get("/v1/ping");
    assert_eq!(r.header("x-opr-route"), None, "production, not asked");
    let r = proxy.client().request(
        "GET",
        "/v1/ping",
        &[("Authorization", &key), ("x-opr-debug", "1")],
        b"",
    );
    assert_eq!(
        r.header("x-opr-route"),
        Some(format!("executor={}; tier=1; reason=usage < 80", a.hostname()).as_str())
    );
    // The runtime tier, and a failover after the first executor stopped listening.
    a.stop();
    let r = proxy.client().request(
        "GET",
        "/v1/ping",
        &[
            ("Authorization", &key),
            ("x-opr-debug", "1"),
            ("x-opr-runtime-id", "rt-9"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-opr-route"),
        Some(
            format!(
                "executor={}; tier=2; reason=usage < 80, runtime not warm; failover from {}: refused",
                b.hostname(),
                a.hostname()
            )
            .as_str()
        )
    );
    // Dev mode explains every answer.
    let c = mock("c");
    let dev = Proxy::start(&[&c], &[("OPR_PROXY_ENV", "development")]);
    let r = dev.client().request(
        "GET",
        "/v1/ping",
        &[
            ("Authorization", &key),
            ("x-opr-addressing-method", "anycast-fast"),
        ],
        b"",
    );
    assert_eq!(
        r.header("x-opr-route"),
        Some(format!("executor={}; tier=none; reason=anycast-fast", c.hostname()).as_str())
    );
}

/// Content-Length bodies of 64 KiB or more are spliced (socket → pipe → socket) unless
/// `OPR_PROXY_SPLICE=off`; both paths deliver the same bytes.
#[test]
fn large_bodies_are_spliced_unless_turned_off() {
    let a = mock("a");
    for (splice, expect_spliced) in [("auto", true), ("off", false)] {
        let proxy = Proxy::start(&[&a], &[("OPR_PROXY_SPLICE", splice)]);
        let len = 3 * 1024 * 1024 + 17;
        let (status, got, sha, truncated) =
            download(proxy.addr, &format!("/v1/download?bytes={len}"));
        assert_eq!((status, got, truncated), (200, len, false), "{splice}");
        assert_eq!(sha, pattern_sha256(len), "{splice}");
        let r = upload(proxy.addr, "/v1/upload", len, false);
        assert_eq!(r.status, 200, "{splice}");
        assert_eq!(r.json_sha(), pattern_sha256(len), "{splice}");
        let s = scrape(&proxy);
        let spliced = value(&s, "opr_proxy_spliced_bytes_total", &[]);
        assert_eq!(
            value(&s, "opr_proxy_splice_fallbacks_total", &[]),
            0.0,
            "{splice}"
        );
        if expect_spliced {
            // Both bodies, less what came with the heads.
            assert!(
                spliced > 2.0 * (len as f64) - 300_000.0,
                "{splice}: {spliced}"
            );
        } else {
            assert_eq!(spliced, 0.0, "{splice}");
        }
    }
}

/// Issue 19: an executor's own `x-opr-route` never reaches the client — not in
/// production, and in debug mode only the proxy's explanation is there.
#[test]
fn an_executors_route_header_is_dropped() {
    use support::scripted::{Action, ScriptedExecutor};
    let ex = ScriptedExecutor::start(|_, _, _| {
        let answer = b"HTTP/1.1 200 OK\r\nX-Opr-Route: executor=spoofed; tier=1\r\n\
x-opr-route: again\r\nContent-Length: 2\r\n\r\nok";
        vec![Action::Write(answer.to_vec())]
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let key = bearer();
    let routes = |r: &Response| -> Vec<String> {
        let all = r.headers.iter();
        let routes = all.filter(|(k, _)| k.eq_ignore_ascii_case("x-opr-route"));
        routes.map(|(_, v)| v.clone()).collect()
    };
    let r = proxy.get("/v1/ping");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(routes(&r), Vec::<String>::new(), "production");
    let debug = [("Authorization", key.as_str()), ("x-opr-debug", "1")];
    let r = proxy.client().request("GET", "/v1/ping", &debug, b"");
    let routes = routes(&r);
    assert_eq!(routes.len(), 1, "debug: {routes:?}");
    let want = format!("executor={}; tier=", ex.hostname());
    assert!(routes[0].starts_with(&want), "debug: {routes:?}");
}

/// Issue 19: requests the proxy refuses itself leave an access log line too, with the
/// request line as far as it was read (escaped), in both formats.
#[test]
fn refused_requests_are_logged() {
    let a = mock("a");
    let key = bearer();
    let long_field = format!("X-Big: {}\r\n", "a".repeat(70_000));
    let smuggle = "POST /smuggle HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\
                   Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    let too_large = format!(
        "POST /v1/echo HTTP/1.1\r\nHost: h\r\nAuthorization: {key}\r\nContent-Length: 100\r\n\r\n"
    );
    // (bytes sent, status, the request line as read, as the text log shows it)
    let cases: Vec<(Vec<u8>, u16, &[u8], &str)> = vec![
        (smuggle.into(), 400, b"POST /smuggle", "POST /smuggle"),
        // A DEL and C1 controls (NEL, CSI) in the target.
        (
            b"GET /a\x7f\xc2\x85\xc2\x9b[2Jb HTTP/1.1\r\nHost: h\r\n\r\n".to_vec(),
            400,
            b"GET /a\x7f\xc2\x85\xc2\x9b[2Jb",
            r"GET /a\x7f\xc2\x85\xc2\x9b[2Jb",
        ),
        (
            format!("GET /big HTTP/1.1\r\nHost: h\r\n{long_field}\r\n").into_bytes(),
            431,
            b"GET /big",
            "GET /big",
        ),
        (
            b"POST /gz HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
            b"POST /gz",
            "POST /gz",
        ),
        (too_large.into(), 413, b"POST /v1/echo", "POST /v1/echo"),
        // Cut off by the header timeout inside the request line.
        (
            b"GET /slow?q=\"1\" HT".to_vec(),
            408,
            b"GET /slow?q=\"1\" HT",
            r#"GET /slow?q=\"1\" HT"#,
        ),
    ];
    for format in ["text", "json"] {
        let env = [
            ("OPR_PROXY_ACCESS_LOG", "enabled"),
            ("OPR_PROXY_ACCESS_LOG_FORMAT", format),
            ("OPR_PROXY_HEADER_TIMEOUT", "1"),
            ("OPR_PROXY_MAX_BODY_SIZE", "10"),
        ];
        let p = ProxyProcess::start(&[a.hostname()], &env);
        for (i, (bytes, status, _, _)) in cases.iter().enumerate() {
            let mut c = Client::connect(p.addr);
            c.send(bytes);
            let r = c.read_response(false).unwrap();
            assert_eq!(r.status, *status, "{format}: case {i}");
            assert!(
                eventually(Duration::from_secs(10), || p.stdout().lines().count() > i),
                "{format}: no line for {status}: {:?}",
                p.stdout()
            );
        }
        let out = p.stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), cases.len(), "{out}");
        for (line, (_, status, raw, shown)) in lines.iter().zip(&cases) {
            assert!(line.bytes().all(|b| (0x20..0x7f).contains(&b)), "{line:?}");
            if format == "text" {
                let want = format!(" 127.0.0.1 \"{shown}\" {status} executor=- tier=- in=");
                assert!(line.contains(&want), "{line}\nwant {want}");
            } else {
                let v: sonic_rs::Value = sonic_rs::from_str(line).unwrap();
                assert_eq!(v["status"].as_u64(), Some(u64::from(*status)), "{line}");
                assert!(v["executor"].is_null(), "{line}");
                let raw = String::from_utf8_lossy(raw);
                let (method, target) = raw.split_once(' ').unwrap();
                assert_eq!(v["method"].as_str(), Some(method), "{line}");
                assert_eq!(v["target"].as_str(), Some(target), "{line}");
                // What was read of a refused head: at least its request line.
                let read = v["bytesIn"].as_u64().unwrap();
                assert!(*status == 413 || read >= raw.len() as u64, "{line}");
            }
        }
    }
}
