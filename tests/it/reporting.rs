//! Error reporting (docs/behaviour.md §8): the real proxy reports to a mock provider on 127.0.0.1
//! (`OPR_PROXY_LOGGING_ENDPOINT`), one per provider, in both `OPR_PROXY_LOGGING_CONFIG`
//! forms. Each event kind is triggered for real — a failing healthcheck URL, a `502` from
//! an executor answering garbage, a `504` past `OPR_PROXY_MAX_TIMEOUT`, an executor that
//! stops — and the provider's request is checked field by field. A dead or slow provider
//! must change nothing for clients; what it costs is counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use crate::support::*;
use opr_loadtest::provider::{ProviderAnswer, ProviderMock, ProviderRequest};
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

const WAIT: Duration = Duration::from_secs(15);
const VERSION: &str = "7.7.7";

/// One request the mock provider received.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    /// Percent-decoded, in order.
    query: Vec<(String, String)>,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Value,
}

impl Recorded {
    fn text(&self) -> String {
        sonic_rs::to_string(&self.body).unwrap()
    }

    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().find(|(n, _)| n == name);
        found.map(|(_, v)| v.as_str())
    }
}

/// The one mock provider (opr_loadtest::provider), answering `202` after `delay`; its
/// requests with their JSON bodies parsed.
struct MockProvider(ProviderMock);

impl MockProvider {
    fn start(delay: Duration) -> MockProvider {
        let answer = ProviderAnswer::Status { status: 202, delay };
        MockProvider(ProviderMock::start(answer))
    }

    fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    fn requests(&self) -> Vec<Recorded> {
        let requests = self.0.requests().into_iter();
        requests.map(Recorded::from).collect()
    }

    /// The first request `matches` accepts, waiting for it.
    fn wait_for(&self, what: &str, matches: impl Fn(&Recorded) -> bool) -> Recorded {
        let mut found = None;
        let ok = eventually(WAIT, || {
            found = self.requests().into_iter().find(|r| matches(r));
            found.is_some()
        });
        assert!(ok, "no {what} report; got {:#?}", self.requests());
        found.unwrap()
    }
}

impl From<ProviderRequest> for Recorded {
    fn from(r: ProviderRequest) -> Recorded {
        let body = sonic_rs::from_slice(&r.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&r.body)
            )
        });
        Recorded {
            method: r.method,
            path: r.path,
            query: r.query,
            headers: r.headers,
            body,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Provider {
    Sentry,
    AppSignal,
    Raygun,
    LogOwl,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Form {
    Dsn,
    Older,
}

/// The key each test configures (the sentry project id is 42).
fn key(provider: Provider) -> &'static str {
    match provider {
        Provider::Sentry => "sentry-key",
        Provider::AppSignal => "appsignal-key",
        Provider::Raygun => "raygun-key",
        Provider::LogOwl => "logowl-ticket",
    }
}

/// `OPR_PROXY_LOGGING_PROVIDER` and `OPR_PROXY_LOGGING_CONFIG`. The DSN hosts do not
/// resolve: the endpoint override must win.
fn logging_env(provider: Provider, form: Form) -> [(&'static str, &'static str); 2] {
    let config = match (provider, form) {
        (Provider::Sentry, Form::Dsn) => "sentry://42:sentry-key@sentry.invalid",
        (Provider::Sentry, Form::Older) => "sentry-key;42",
        (Provider::AppSignal, Form::Dsn) => "appsignal://appsignal-key",
        (Provider::Raygun, Form::Dsn) => "raygun://raygun-key",
        (Provider::LogOwl, Form::Dsn) => "logowl://logowl-ticket@logowl.invalid:8443",
        (p, Form::Older) => key(p),
    };
    let name = match (form, provider) {
        (Form::Dsn, _) => "",
        (Form::Older, Provider::Sentry) => "sentry",
        (Form::Older, Provider::AppSignal) => "appsignal",
        (Form::Older, Provider::Raygun) => "raygun",
        (Form::Older, Provider::LogOwl) => "logowl",
    };
    [
        ("OPR_PROXY_LOGGING_PROVIDER", name),
        ("OPR_PROXY_LOGGING_CONFIG", config),
    ]
}

/// What one report must say, whatever the provider.
struct Expected {
    action: &'static str,
    message: String,
    /// Only a prefix of the message is known (a parser's wording).
    message_is_prefix: bool,
    tags: BTreeMap<String, String>,
    /// `reason` or `cause`, which is the message's tail.
    extra: &'static str,
    environment: &'static str,
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    let pairs = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    pairs.collect()
}

fn server_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = name.trim().to_string();
    if name.is_empty() {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into())
    } else {
        name
    }
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for key in path {
        v = v.get(key).unwrap_or_else(|| panic!("no {path:?} in {v}"));
    }
    v.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn object(v: &Value) -> BTreeMap<String, String> {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v:?}"));
    let pairs = object.iter().map(|(k, v)| {
        let v = v.as_str().unwrap_or_else(|| panic!("{k} is not a string"));
        (k.to_string(), v.to_string())
    });
    pairs.collect()
}

fn now_secs() -> u64 {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
    since.unwrap().as_secs()
}

fn check_message(got: &str, want: &Expected) {
    if want.message_is_prefix {
        assert!(
            got.starts_with(&want.message),
            "{got:?} vs {:?}",
            want.message
        );
    } else {
        assert_eq!(got, want.message);
    }
}

/// The action and `code` tag of a recorded report, read the provider's way.
fn kind(provider: Provider, r: &Recorded) -> (String, String) {
    let b = &r.body;
    let (action, code) = match provider {
        Provider::Sentry => (str_at(b, &["transaction"]), str_at(b, &["tags", "code"])),
        Provider::AppSignal => (str_at(b, &["action"]), str_at(b, &["tags", "code"])),
        Provider::Raygun => {
            let tags = b["details"]["tags"].as_array().expect("tags");
            let code = tags
                .iter()
                .filter_map(|t| t.as_str())
                .find_map(|t| t.strip_prefix("code: "))
                .unwrap_or("");
            (str_at(b, &["details", "error", "className"]), code)
        }
        Provider::LogOwl => (
            str_at(b, &["badges", "action"]),
            str_at(b, &["badges", "code"]),
        ),
    };
    (action.to_string(), code.to_string())
}

/// The whole request, exactly as the provider's API wants it.
fn check(provider: Provider, r: &Recorded, want: &Expected, since: u64) {
    assert_eq!(r.method, "POST");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let b = &r.body;
    let crate_version = env!("CARGO_PKG_VERSION");
    let extra_name = want.extra;
    let extra_value = |got: &str| {
        // The reason or cause is the message's tail (the whole message for a cause).
        assert!(!got.is_empty() && want.message.contains(got) || got.starts_with(&want.message));
    };
    match provider {
        Provider::Sentry => {
            assert_eq!(r.path, "/api/42/store/");
            assert!(r.query.is_empty(), "{:?}", r.query);
            let auth = format!(
                "Sentry sentry_version=7, sentry_key=sentry-key, sentry_client=opr-proxy/{crate_version}"
            );
            assert_eq!(r.header("x-sentry-auth"), Some(auth.as_str()));
            let id = str_at(b, &["event_id"]);
            assert!(id.len() == 32 && id.bytes().all(|c| c.is_ascii_hexdigit()));
            let ts = str_at(b, &["timestamp"]);
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && ts.starts_with("20"),
                "{ts}"
            );
            assert_eq!(str_at(b, &["platform"]), "other");
            assert_eq!(str_at(b, &["level"]), "error");
            assert_eq!(str_at(b, &["logger"]), "proxy");
            assert_eq!(str_at(b, &["transaction"]), want.action);
            assert_eq!(str_at(b, &["server_name"]), server_name());
            assert_eq!(str_at(b, &["release"]), VERSION);
            assert_eq!(str_at(b, &["environment"]), want.environment);
            check_message(str_at(b, &["message", "message"]), want);
            let exception = &b["exception"]["values"][0];
            assert_eq!(str_at(exception, &["type"]), want.action);
            check_message(str_at(exception, &["value"]), want);
            assert_eq!(object(&b["tags"]), want.tags);
            let extra = object(&b["extra"]);
            assert_eq!(extra.keys().collect::<Vec<_>>(), [extra_name]);
            extra_value(&extra[extra_name]);
        }
        Provider::AppSignal => {
            assert_eq!(r.path, "/collect");
            let query = vec![
                ("api_key".to_string(), "appsignal-key".to_string()),
                ("version".to_string(), crate_version.to_string()),
            ];
            assert_eq!(r.query, query);
            let ts = b["timestamp"].as_u64().expect("timestamp");
            assert!(ts >= since && ts <= now_secs(), "{ts}");
            assert_eq!(str_at(b, &["namespace"]), "proxy");
            assert_eq!(str_at(b, &["error", "name"]), want.action);
            check_message(str_at(b, &["error", "message"]), want);
            assert_eq!(b["error"]["backtrace"].as_array().map(|a| a.len()), Some(0));
            let environment = tags(&[
                ("environment", want.environment),
                ("server", &server_name()),
                ("version", VERSION),
            ]);
            assert_eq!(object(&b["environment"]), environment);
            assert_eq!(str_at(b, &["revision"]), VERSION);
            assert_eq!(str_at(b, &["action"]), want.action);
            assert_eq!(object(&b["tags"]), want.tags);
            let params = object(&b["params"]);
            assert_eq!(params.keys().collect::<Vec<_>>(), [extra_name]);
            extra_value(&params[extra_name]);
        }
        Provider::Raygun => {
            assert_eq!(r.path, "/entries");
            assert!(r.query.is_empty(), "{:?}", r.query);
            assert_eq!(r.header("x-apikey"), Some("raygun-key"));
            let ts = str_at(b, &["occurredOn"]);
            assert!(
                ts.len() == 24 && ts.ends_with('Z') && ts.starts_with("20"),
                "{ts}"
            );
            let d = &b["details"];
            assert_eq!(str_at(d, &["machineName"]), server_name());
            assert_eq!(str_at(d, &["version"]), VERSION);
            assert_eq!(str_at(d, &["error", "className"]), want.action);
            check_message(str_at(d, &["error", "message"]), want);
            let got: Vec<&str> = d["tags"]
                .as_array()
                .expect("tags")
                .iter()
                .map(|t| t.as_str().expect("string tag"))
                .collect();
            let mut expected: Vec<String> =
                want.tags.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            expected.push("type: error".to_string());
            expected.push(format!("environment: {}", want.environment));
            assert_eq!(got, expected);
            let custom = object(&d["userCustomData"]);
            assert_eq!(custom.keys().collect::<Vec<_>>(), [extra_name]);
            extra_value(&custom[extra_name]);
        }
        Provider::LogOwl => {
            assert_eq!(r.path, "/logging/error");
            assert!(r.query.is_empty(), "{:?}", r.query);
            assert_eq!(str_at(b, &["ticket"]), "logowl-ticket");
            check_message(str_at(b, &["message"]), want);
            assert_eq!(str_at(b, &["type"]), "error");
            for field in ["path", "line", "stacktrace"] {
                assert_eq!(str_at(b, &[field]), "");
            }
            let ts = b["timestamp"].as_u64().expect("timestamp");
            assert!(ts >= since && ts <= now_secs(), "{ts}");
            assert_eq!(str_at(b, &["metrics", "platform"]), server_name());
            let mut badges = object(&b["badges"]);
            let extra = badges.remove(extra_name).expect("reason or cause badge");
            extra_value(&extra);
            let mut expected = want.tags.clone();
            expected.insert("action".into(), want.action.into());
            expected.insert("environment".into(), want.environment.into());
            expected.insert("namespace".into(), "proxy".into());
            expected.insert("version".into(), VERSION.into());
            assert_eq!(badges, expected);
            assert_eq!(str_at(b, &["adapter", "name"]), "opr-proxy");
            assert_eq!(b["logs"].as_array().map(|a| a.len()), Some(0));
        }
    }
}

/// Every event kind through `provider` configured in `form`.
fn reports_every_event(provider: Provider, form: Form) {
    let since = now_secs();
    let endpoint = MockProvider::start(Duration::ZERO);
    let a = mock("a");
    let b = mock("b");
    // The healthcheck URL answers 500; its token must not be reported.
    let hook = format!("http://{}/v1/status?code=500&token=hide-me", a.hostname());
    // Dev mode is `staging` for the providers, as in the original.
    let (env, environment) = match form {
        Form::Dsn => ("development", "staging"),
        Form::Older => ("production", "production"),
    };
    let mut extra = vec![
        ("OPR_PROXY_ALGORITHM", "first"),
        ("OPR_PROXY_MAX_TIMEOUT", "1"),
        ("OPR_PROXY_HEALTHCHECK_URL", hook.as_str()),
        ("OPR_PROXY_VERSION", VERSION),
        ("OPR_PROXY_ENV", env),
    ];
    let url = endpoint.endpoint();
    extra.push(("OPR_PROXY_LOGGING_ENDPOINT", &url));
    extra.extend(logging_env(provider, form));
    let mut proxy = Proxy::start(&[&a, &b], &extra);
    let is = |action: &'static str, code: &'static str| {
        move |r: &Recorded| kind(provider, r) == (action.to_string(), code.to_string())
    };

    // Every executor online after the first round: the URL is called and fails.
    let r = endpoint.wait_for("healthcheck URL", |r| {
        is("healthCheckError", "500")(r) && !r.text().contains("went offline")
    });
    let url_tag = format!("http://{}/v1/status", a.hostname());
    let want = Expected {
        action: "healthCheckError",
        message: "Healthcheck URL call failed: status 500".to_string(),
        message_is_prefix: false,
        tags: tags(&[("code", "500"), ("url", &url_tag), ("worker", "checker")]),
        extra: "reason",
        environment,
    };
    check(provider, &r, &want, since);
    assert!(!r.text().contains("hide-me"));

    // 502: the executor answers garbage. The query is not reported.
    let started = Instant::now();
    let response = proxy.get("/v1/garbage?secret=hide-me");
    assert_eq!(response.status, 502);
    assert!(started.elapsed() < Duration::from_secs(1));
    let r = endpoint.wait_for("502", is("httpError", "502"));
    let executor = a.hostname();
    let want = Expected {
        action: "httpError",
        message: "Executor failed to answer the request. (malformed response head from \
                  executor: "
            .to_string(),
        message_is_prefix: true,
        tags: tags(&[
            ("code", "502"),
            ("executor", &executor),
            ("method", "GET"),
            ("url", "/v1/garbage"),
            ("worker", "0"),
        ]),
        extra: "cause",
        environment,
    };
    check(provider, &r, &want, since);
    assert!(!r.text().contains("hide-me"));

    // 504: the executor takes longer than OPR_PROXY_MAX_TIMEOUT.
    let response = proxy.client().request(
        "POST",
        "/v1/sleep?ms=3000",
        &[("Authorization", &bearer())],
        b"{}",
    );
    assert_eq!(response.status, 504);
    let r = endpoint.wait_for("504", is("httpError", "504"));
    let want = Expected {
        action: "httpError",
        message: "Executor did not answer in time.".to_string(),
        message_is_prefix: false,
        tags: tags(&[
            ("code", "504"),
            ("executor", &executor),
            ("method", "POST"),
            ("url", "/v1/sleep"),
            ("worker", "0"),
        ]),
        extra: "cause",
        environment,
    };
    check(provider, &r, &want, since);

    // An executor goes offline.
    b.stop();
    let r = endpoint.wait_for("executor offline", |r| {
        is("healthCheckError", "500")(r) && r.text().contains("went offline")
    });
    let name = b.hostname();
    let want = Expected {
        action: "healthCheckError",
        message: format!("Executor \"{name}\" went offline: connection refused"),
        message_is_prefix: false,
        tags: tags(&[("code", "500"), ("executor", &name), ("worker", "checker")]),
        extra: "reason",
        environment,
    };
    check(provider, &r, &want, since);

    // Counted once the provider answered.
    assert!(eventually(WAIT, || proxy.server().report_stats().sent >= 4));
    let stats = proxy.server().report_stats();
    assert_eq!((stats.failed, stats.dropped), (0, 0), "{stats:?}");
    proxy.stop();
}

#[test]
fn sentry_dsn() {
    reports_every_event(Provider::Sentry, Form::Dsn);
}

#[test]
fn sentry_key_and_project() {
    reports_every_event(Provider::Sentry, Form::Older);
}

#[test]
fn appsignal_dsn() {
    reports_every_event(Provider::AppSignal, Form::Dsn);
}

#[test]
fn appsignal_key() {
    reports_every_event(Provider::AppSignal, Form::Older);
}

#[test]
fn raygun_dsn() {
    reports_every_event(Provider::Raygun, Form::Dsn);
}

#[test]
fn raygun_key() {
    reports_every_event(Provider::Raygun, Form::Older);
}

#[test]
fn logowl_dsn() {
    reports_every_event(Provider::LogOwl, Form::Dsn);
}

#[test]
fn logowl_ticket() {
    reports_every_event(Provider::LogOwl, Form::Older);
}

/// `n` requests for a 502 on one keep-alive connection, each answered within `limit`.
fn bad_gateways(proxy: &Proxy, n: usize, limit: Duration) {
    let mut client = proxy.client();
    let auth = bearer();
    for i in 0..n {
        let started = Instant::now();
        let r = client.request("GET", "/v1/garbage", &[("Authorization", &auth)], b"");
        assert_eq!(r.status, 502, "request {i}");
        let took = started.elapsed();
        assert!(took < limit, "request {i} took {took:?}");
        // Ordinary requests keep working too.
        if i % 100 == 0 {
            let r = client.request("GET", "/v1/ping", &[("Authorization", &auth)], b"");
            assert_eq!(r.status, 200);
        }
    }
}

#[test]
fn a_dead_provider_changes_nothing_for_clients() {
    let a = mock("a");
    let dead = format!("http://{}", dead_hostname());
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_LOGGING_CONFIG", "raygun://k"),
            ("OPR_PROXY_LOGGING_ENDPOINT", &dead),
        ],
    );
    bad_gateways(&proxy, 200, Duration::from_secs(1));
    // Every report failed or was dropped; none was sent.
    let done = eventually(WAIT, || {
        let stats = proxy.server().report_stats();
        stats.failed + stats.dropped == 200
    });
    let stats = proxy.server().report_stats();
    assert!(done && stats.sent == 0 && stats.failed > 0, "{stats:?}");
}

#[test]
fn a_slow_provider_changes_nothing_for_clients() {
    // Answers each report after 5 s: the reporter is stuck on its first report while
    // the queue (1024) fills and overflows.
    let slow = MockProvider::start(Duration::from_secs(5));
    let a = mock("a");
    let endpoint = slow.endpoint();
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_LOGGING_CONFIG", "appsignal://k"),
            ("OPR_PROXY_LOGGING_ENDPOINT", &endpoint),
        ],
    );
    let started = Instant::now();
    bad_gateways(&proxy, 1200, Duration::from_secs(1));
    let stats = proxy.server().report_stats();
    if started.elapsed() < Duration::from_secs(4) {
        // One report in flight, 1024 queued, the rest dropped.
        assert_eq!(stats.dropped, 1200 - 1024 - 1, "{stats:?}");
        assert_eq!((stats.sent, stats.failed), (0, 0));
        assert_eq!(slow.requests().len(), 1);
    } else {
        // A slow machine: the first report may have been answered meanwhile.
        assert!(stats.dropped >= 1200 - 1024 - 3, "{stats:?}");
    }
}

#[test]
fn a_bad_logging_config_exits_2_without_showing_the_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("OPR_PROXY_LOGGING_CONFIG", "sentry://S3CRET@host")],
            "OPR_PROXY_LOGGING_CONFIG",
        ),
        (
            &[("OPR_PROXY_LOGGING_CONFIG", "S3CRET")],
            "OPR_PROXY_LOGGING_PROVIDER",
        ),
        (
            &[
                ("OPR_PROXY_LOGGING_PROVIDER", "sentry"),
                ("OPR_PROXY_LOGGING_CONFIG", "S3CRET"),
            ],
            "OPR_PROXY_LOGGING_CONFIG",
        ),
        (
            &[
                ("OPR_PROXY_LOGGING_PROVIDER", "raygun"),
                ("OPR_PROXY_LOGGING_CONFIG", "appsignal://S3CRET"),
            ],
            "OPR_PROXY_LOGGING_PROVIDER",
        ),
        (
            &[("OPR_PROXY_LOGGING_PROVIDER", "logowl")],
            "OPR_PROXY_LOGGING_CONFIG",
        ),
        (
            &[
                ("OPR_PROXY_LOGGING_CONFIG", "raygun://S3CRET"),
                ("OPR_PROXY_LOGGING_ENDPOINT", "127.0.0.1:9"),
            ],
            "OPR_PROXY_LOGGING_ENDPOINT",
        ),
    ];
    for (env, var) in cases {
        let mut all = vec![("OPR_PROXY_EXECUTORS", "a:1"), ("OPR_PROXY_SECRET", "s")];
        all.extend_from_slice(env);
        let stderr = assert_start_error(&all, var);
        assert!(!stderr.contains("S3CRET"), "{stderr}");
    }
}
