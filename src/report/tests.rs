use super::*;
use std::net::TcpListener;

use opr_loadtest::provider::{ProviderAnswer, ProviderMock};

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

fn common() -> Common {
    Common {
        version: "9.9.9".to_string(),
        environment: "production",
        server_name: "box-1".to_string(),
    }
}

fn at() -> SystemTime {
    // 2026-11-28T01:50:56.123Z
    SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_830_656_123)
}

fn offline() -> Report {
    Report::HealthCheckError {
        executor: "exc1:80".to_string(),
        reason: "connection refused".to_string(),
        worker: None,
    }
}

fn bad_gateway() -> Report {
    Report::HttpError {
        status: 502,
        method: "POST".to_string(),
        path: "/v1/runtimes".to_string(),
        executor: Some("exc2:80".to_string()),
        cause: "Executor failed to answer the request. (boom)".to_string(),
        worker: 3,
    }
}

fn url_failed() -> Report {
    Report::HealthcheckUrlFailed {
        url: "https://hooks.example.com/ping".to_string(),
        reason: "status 500".to_string(),
    }
}

fn target(provider: LoggingProvider) -> Target {
    Target {
        provider,
        base: "http://127.0.0.1:9".to_string(),
        key: "the-key".to_string(),
        project_id: "42".to_string(),
    }
}

fn body(request: &Request) -> Value {
    sonic_rs::from_slice(&request.body).expect("JSON body")
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    let found = request.headers.iter().find(|(n, _)| *n == name);
    found.map(|(_, v)| v.as_str())
}

fn s<'a>(v: &'a Value, pointer: &[&str]) -> &'a str {
    let mut v = v;
    for key in pointer {
        v = v.get(key).unwrap_or_else(|| panic!("no {pointer:?}"));
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{pointer:?} is not a string"))
}

#[test]
fn events_carry_message_tags_and_extra() {
    let c = common();
    let e = offline().event(&c, at());
    assert_eq!(e.action, "healthCheckError");
    assert_eq!(
        e.message,
        "Executor \"exc1:80\" went offline: connection refused"
    );
    let tags: Vec<_> = e.tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let want = [
        ("code", "500"),
        ("executor", "exc1:80"),
        ("worker", "checker"),
    ];
    assert_eq!(tags, want);
    assert_eq!(e.extra["reason"], "connection refused");

    let e = bad_gateway().event(&c, at());
    assert_eq!(e.action, "httpError");
    assert_eq!(e.message, "Executor failed to answer the request. (boom)");
    let tags: Vec<_> = e.tags.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let want = [
        ("code", "502"),
        ("executor", "exc2:80"),
        ("method", "POST"),
        ("url", "/v1/runtimes"),
        ("worker", "3"),
    ];
    assert_eq!(tags, want);
    assert_eq!(e.extra["cause"], e.message);

    let e = url_failed().event(&c, at());
    assert_eq!(e.action, "healthCheckError");
    assert_eq!(e.message, "Healthcheck URL call failed: status 500");
    assert_eq!(e.tags["url"], "https://hooks.example.com/ping");
    assert_eq!(e.tags["worker"], "checker");

    // A 504 before any executor was tried has no executor tag; long values are cut.
    let timeout = Report::HttpError {
        status: 504,
        method: "GET".to_string(),
        path: format!("/{}", "a".repeat(300)),
        executor: None,
        cause: "Executor did not answer in time.".to_string(),
        worker: 0,
    };
    let e = timeout.event(&c, at());
    assert!(!e.tags.contains_key("executor"));
    assert_eq!(e.tags["url"].chars().count(), 200);
    let flagged = Report::HealthCheckError {
        executor: "x:1".to_string(),
        reason: "r".to_string(),
        worker: Some(1),
    };
    assert_eq!(flagged.event(&c, at()).tags["worker"], "1");
}

#[test]
fn sentry_request() {
    let c = common();
    for report in [offline(), bad_gateway(), url_failed()] {
        let event = report.event(&c, at());
        let r = target(LoggingProvider::Sentry).request(&event);
        assert_eq!(r.url, "http://127.0.0.1:9/api/42/store/");
        assert!(r.query.is_empty());
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        let auth = format!(
            "Sentry sentry_version=7, sentry_key=the-key, sentry_client=opr-proxy/{}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(header(&r, "x-sentry-auth"), Some(auth.as_str()));
        let b = body(&r);
        let id = s(&b, &["event_id"]);
        assert!(
            id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()),
            "{id}"
        );
        assert_eq!(s(&b, &["timestamp"]), "2026-11-28T01:50:56.123Z");
        assert_eq!(s(&b, &["platform"]), "other");
        assert_eq!(s(&b, &["level"]), "error");
        assert_eq!(s(&b, &["logger"]), "proxy");
        assert_eq!(s(&b, &["transaction"]), event.action);
        assert_eq!(s(&b, &["server_name"]), "box-1");
        assert_eq!(s(&b, &["release"]), "9.9.9");
        assert_eq!(s(&b, &["environment"]), "production");
        assert_eq!(s(&b, &["message", "message"]), event.message);
        let exception = &b["exception"]["values"][0];
        assert_eq!(s(exception, &["type"]), event.action);
        assert_eq!(s(exception, &["value"]), event.message);
        for (k, v) in &event.tags {
            assert_eq!(s(&b, &["tags", k]), v);
        }
        assert_eq!(
            b["tags"].as_object().map(|o| o.len()),
            Some(event.tags.len())
        );
        for (k, v) in &event.extra {
            assert_eq!(s(&b, &["extra", k]), v);
        }
    }
    // Two events never share an id.
    let event = offline().event(&c, at());
    let a = body(&target(LoggingProvider::Sentry).request(&event));
    let b = body(&target(LoggingProvider::Sentry).request(&event));
    assert_ne!(s(&a, &["event_id"]), s(&b, &["event_id"]));
}

#[test]
fn appsignal_request() {
    let c = common();
    for report in [offline(), bad_gateway(), url_failed()] {
        let event = report.event(&c, at());
        let r = target(LoggingProvider::AppSignal).request(&event);
        assert_eq!(r.url, "http://127.0.0.1:9/collect");
        let version = env!("CARGO_PKG_VERSION").to_string();
        let want = vec![("api_key", "the-key".to_string()), ("version", version)];
        assert_eq!(r.query, want);
        assert_eq!(r.headers, vec![("content-type", "application/json".into())]);
        let b = body(&r);
        assert_eq!(b["timestamp"].as_u64(), Some(1_795_830_656));
        assert_eq!(s(&b, &["namespace"]), "proxy");
        assert_eq!(s(&b, &["error", "name"]), event.action);
        assert_eq!(s(&b, &["error", "message"]), event.message);
        assert_eq!(b["error"]["backtrace"].as_array().map(|a| a.len()), Some(0));
        assert_eq!(s(&b, &["environment", "environment"]), "production");
        assert_eq!(s(&b, &["environment", "server"]), "box-1");
        assert_eq!(s(&b, &["environment", "version"]), "9.9.9");
        assert_eq!(s(&b, &["revision"]), "9.9.9");
        assert_eq!(s(&b, &["action"]), event.action);
        for (k, v) in &event.tags {
            assert_eq!(s(&b, &["tags", k]), v);
        }
        for (k, v) in &event.extra {
            assert_eq!(s(&b, &["params", k]), v);
        }
    }
}

#[test]
fn raygun_request() {
    let c = common();
    for report in [offline(), bad_gateway(), url_failed()] {
        let event = report.event(&c, at());
        let r = target(LoggingProvider::Raygun).request(&event);
        assert_eq!(r.url, "http://127.0.0.1:9/entries");
        assert!(r.query.is_empty());
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "x-apikey"), Some("the-key"));
        let b = body(&r);
        assert_eq!(s(&b, &["occurredOn"]), "2026-11-28T01:50:56.123Z");
        let d = &b["details"];
        assert_eq!(s(d, &["machineName"]), "box-1");
        assert_eq!(s(d, &["version"]), "9.9.9");
        assert_eq!(s(d, &["error", "className"]), event.action);
        assert_eq!(s(d, &["error", "message"]), event.message);
        let tags: Vec<&str> = d["tags"]
            .as_array()
            .expect("tags")
            .iter()
            .filter_map(|t| t.as_str())
            .collect();
        let mut want: Vec<String> = event
            .tags
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        want.push("type: error".to_string());
        want.push("environment: production".to_string());
        assert_eq!(tags, want);
        for (k, v) in &event.extra {
            assert_eq!(s(d, &["userCustomData", k]), v);
        }
    }
}

#[test]
fn logowl_request() {
    let c = common();
    for report in [offline(), bad_gateway(), url_failed()] {
        let event = report.event(&c, at());
        let r = target(LoggingProvider::LogOwl).request(&event);
        assert_eq!(r.url, "http://127.0.0.1:9/logging/error");
        assert!(r.query.is_empty());
        assert_eq!(r.headers, vec![("content-type", "application/json".into())]);
        let b = body(&r);
        assert_eq!(s(&b, &["ticket"]), "the-key");
        assert_eq!(s(&b, &["message"]), event.message);
        assert_eq!(s(&b, &["type"]), "error");
        for field in ["path", "line", "stacktrace"] {
            assert_eq!(s(&b, &[field]), "");
        }
        assert_eq!(b["timestamp"].as_u64(), Some(1_795_830_656));
        assert_eq!(s(&b, &["metrics", "platform"]), "box-1");
        assert_eq!(s(&b, &["badges", "action"]), event.action);
        assert_eq!(s(&b, &["badges", "environment"]), "production");
        assert_eq!(s(&b, &["badges", "namespace"]), "proxy");
        assert_eq!(s(&b, &["badges", "version"]), "9.9.9");
        for (k, v) in event.tags.iter().chain(&event.extra) {
            assert_eq!(s(&b, &["badges", k]), v);
        }
        assert_eq!(s(&b, &["adapter", "name"]), "opr-proxy");
        assert_eq!(b["logs"].as_array().map(|a| a.len()), Some(0));
    }
}

#[test]
fn base_urls() {
    let config = |provider, host: Option<&str>, endpoint: Option<&str>| ReportingConfig {
        provider,
        key: "k".to_string(),
        project_id: Some("1".to_string()),
        host: host.map(Into::into),
        endpoint: endpoint.map(Into::into),
    };
    use LoggingProvider::*;
    let cases = [
        (config(Sentry, None, None), "https://sentry.io"),
        (
            config(Sentry, Some("s.example:8443"), None),
            "https://s.example:8443",
        ),
        (
            config(AppSignal, None, None),
            "https://appsignal-endpoint.net",
        ),
        (config(Raygun, None, None), "https://api.raygun.com"),
        (config(LogOwl, None, None), "https://api.logowl.io"),
        (
            config(LogOwl, Some("owl.example"), None),
            "https://owl.example",
        ),
        (
            config(Sentry, Some("s.example"), Some("http://127.0.0.1:9/relay")),
            "http://127.0.0.1:9/relay",
        ),
    ];
    for (config, want) in cases {
        assert_eq!(Target::new(&config).base, want, "{config:?}");
    }
}

#[test]
fn urls_are_redacted() {
    let cases = [
        (
            "https://u:p@h.io:8443/a/b?token=x#f",
            "https://h.io:8443/a/b",
        ),
        ("http://h/ping?token=t", "http://h/ping"),
        ("http://h", "http://h"),
        ("http://[::1]:9/x", "http://[::1]:9/x"),
    ];
    for (url, want) in cases {
        assert_eq!(redact_url(url), want);
    }
}

#[test]
fn a_disabled_reporter_does_nothing() {
    let reporter = Reporter::default();
    assert!(!reporter.is_enabled());
    reporter.report(offline());
    assert_eq!(reporter.stats(), ReportStats::default());
}

/// The one mock provider (opr_loadtest::provider), as these tests read it: each
/// request's target and body.
struct Provider(ProviderMock);

impl Provider {
    fn start(answer: ProviderAnswer) -> Provider {
        Provider(ProviderMock::start(answer))
    }

    fn seen(&self) -> Vec<(String, Vec<u8>)> {
        let requests = self.0.requests().into_iter();
        requests.map(|r| (r.target, r.body)).collect()
    }
}

fn reporter_to(base: String, capacity: usize) -> (Reporter, ReporterThread) {
    let settings = Settings {
        target: Target {
            provider: LoggingProvider::Raygun,
            base,
            key: "k".to_string(),
            project_id: String::new(),
        },
        common: common(),
        capacity,
        connect_timeout: Duration::from_millis(500),
        send_timeout: Duration::from_millis(500),
    };
    spawn(settings).expect("reporter thread starts")
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn delivered_reports_are_counted_as_sent() {
    let provider = Provider::start(ProviderAnswer::status(202));
    let (reporter, thread) = reporter_to(provider.0.endpoint(), 16);
    assert!(reporter.is_enabled());
    for report in [offline(), bad_gateway(), url_failed()] {
        reporter.report(report);
    }
    wait_for("3 sent", || reporter.stats().sent == 3);
    assert_eq!(
        reporter.stats(),
        ReportStats {
            sent: 3,
            failed: 0,
            dropped: 0
        }
    );
    let seen = provider.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|(target, _)| target == "/entries"));
    let message = |body: &[u8]| -> String {
        let v: Value = sonic_rs::from_slice(body).expect("json");
        s(&v, &["details", "error", "message"]).to_string()
    };
    assert_eq!(
        message(&seen[1].1),
        "Executor failed to answer the request. (boom)"
    );
    thread.stop();
}

#[test]
fn refused_and_non_2xx_reports_are_counted_as_failed() {
    let provider = Provider::start(ProviderAnswer::status(500));
    let (reporter, thread) = reporter_to(provider.0.endpoint(), 16);
    reporter.report(offline());
    reporter.report(offline());
    wait_for("2 failed", || reporter.stats().failed == 2);
    thread.stop();

    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr");
    drop(dead);
    let (reporter, thread) = reporter_to(format!("http://{addr}"), 16);
    reporter.report(bad_gateway());
    wait_for("1 failed", || reporter.stats().failed == 1);
    assert_eq!(
        reporter.stats(),
        ReportStats {
            sent: 0,
            failed: 1,
            dropped: 0
        }
    );
    thread.stop();
}

#[test]
fn a_full_queue_drops_and_counts_without_waiting() {
    let provider = Provider::start(ProviderAnswer::Hang);
    let (reporter, thread) = reporter_to(provider.0.endpoint(), 2);
    // The thread takes the first report and hangs on it.
    reporter.report(offline());
    wait_for("the first request", || provider.seen().len() == 1);
    let started = Instant::now();
    for _ in 0..100 {
        reporter.report(bad_gateway());
    }
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    // Two fit in the queue, the rest are dropped.
    assert_eq!(reporter.stats().dropped, 98);
    // The hung request times out (failed); the queued ones follow (and hang too).
    wait_for("a failure", || reporter.stats().failed >= 1);
    let started = Instant::now();
    thread.stop();
    assert!(
        started.elapsed() < FLUSH + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn stop_sends_what_is_queued() {
    let provider = Provider::start(ProviderAnswer::status(200));
    let (reporter, thread) = reporter_to(provider.0.endpoint(), 64);
    for _ in 0..20 {
        reporter.report(url_failed());
    }
    thread.stop();
    assert_eq!(
        reporter.stats(),
        ReportStats {
            sent: 20,
            failed: 0,
            dropped: 0
        }
    );
    assert_eq!(provider.seen().len(), 20);
    // A report after the stop goes nowhere and is counted as dropped.
    reporter.report(url_failed());
    assert_eq!(reporter.stats().dropped, 1);
}
