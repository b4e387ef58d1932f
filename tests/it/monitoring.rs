//! What operators plug in, against a real Prometheus (Debian's `prometheus` package)
//! scraping a running proxy with the key: every query of the Grafana dashboard
//! (deploy/grafana/opr-proxy.json) and every alert rule (deploy/prometheus/alerts.yml).
//! Without `prometheus` the test prints SKIP, except under CI (`CI` set), where it fails.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

/// Metric names the dashboard and the alerts use that this proxy does not expose yet
/// (they come with the queue, the shedding and `OPR_PROXY_ALGORITHM=affinity`). Their
/// queries must still run; only the name check tolerates them. Empty it when they exist.
const NOT_YET_EXPOSED: &[&str] = &[];

/// The Prometheus scrape job; `$job` matches it.
const JOB: &str = "opr-proxy";

/// Whether `tool` can run; absent, SKIP locally and fail under CI.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip_unless_ci(&format!(
            "{tool} is not installed (apt-get install prometheus)"
        ));
    }
    ok
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A Prometheus process with its own config and storage in a temp dir; killed (by its
/// PID) and its dir removed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    fn start(proxy: SocketAddr, rules: &Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "opr-monitoring-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: {JOB}\n    metrics_path: /v1/proxy/metrics\n\
             \x20   authorization:\n      type: Bearer\n      credentials: {SECRET}\n\
             \x20   static_configs:\n      - targets: ['{proxy}']\n",
            rules = rules.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` from the HTTP API: status and body.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        let mut c = Client::connect(self.addr);
        let r = c.request("GET", path, &[("Connection", "close")], b"");
        Some((r.status, r.text()))
    }

    /// An instant query; panics unless Prometheus answers `success`. Returns the result.
    fn query(&self, expr: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/v1/query?query={}", encode(expr)))
            .expect("Prometheus answers");
        let v: Value = sonic_rs::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert!(
            status == 200 && v["status"].as_str() == Some("success"),
            "query failed ({status}): {expr}\n{body}"
        );
        v["data"]["result"]
            .as_array()
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The single value of an instant query, if it has exactly one series.
    fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr);
        let [series] = result.as_slice() else {
            return None;
        };
        series["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this child's PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encoding for a query parameter (everything but RFC 3986 unreserved characters).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Poll until `cond` holds; panics with `what` and the Prometheus log at the deadline.
fn wait_for(prom: &Prometheus, deadline: Instant, what: &str, mut cond: impl FnMut() -> bool) {
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; Prometheus log:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Grafana's template variables replaced as a dashboard with "All" selected sends them.
fn substitute(expr: &str) -> String {
    let mut out = expr.to_string();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "5m"),
        ("${job}", ".+"),
        ("$job", ".+"),
        ("${instance}", ".+"),
        ("$instance", ".+"),
        ("${executor}", ".+"),
        ("$executor", ".+"),
    ] {
        out = out.replace(var, value);
    }
    // What is left must be a regex group reference of label_replace (`${1}`).
    let mut rest = out.as_str();
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        assert!(
            rest.starts_with('{') && rest[1..].starts_with(|c: char| c.is_ascii_digit()),
            "an unknown template variable in: {expr}"
        );
    }
    out
}

/// The `opr_proxy_*` metric names an expression refers to.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("opr_proxy_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The family a sample name belongs to (a histogram's `_bucket`, `_sum`, `_count`).
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|f| NOT_YET_EXPOSED.contains(f) || f.ends_with("_seconds"))
        .unwrap_or(name)
}

/// Every sample and family name in the proxy's exposition.
fn exposed_names(proxy: SocketAddr) -> BTreeSet<String> {
    let r = Client::connect(proxy).request(
        "GET",
        "/v1/proxy/metrics",
        &[("Authorization", &bearer())],
        b"",
    );
    assert_eq!(r.status, 200);
    let mut names = BTreeSet::new();
    for line in r.text().lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(typed) => typed.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        names.extend(name.filter(|n| !n.is_empty()).map(str::to_string));
    }
    names
}

/// Requests of every kind the dashboard shows: 2xx, an executor's 404 and 502, the
/// proxy's own 401, an upload.
fn drive(proxy: SocketAddr) {
    let key = bearer();
    let mut c = Client::connect(proxy);
    for _ in 0..20 {
        let r = c.request("GET", "/v1/ping", &[("Authorization", &key)], b"");
        assert_eq!(r.status, 200);
    }
    for code in [404, 502] {
        let r = c.request(
            "GET",
            &format!("/v1/status?code={code}"),
            &[("Authorization", &key)],
            b"",
        );
        assert_eq!(r.status, code);
    }
    let r = c.request(
        "POST",
        "/v1/upload",
        &[("Authorization", &key)],
        &[7u8; 4096],
    );
    assert_eq!(r.status, 200);
    let r =
        Client::connect(proxy).request("GET", "/v1/ping", &[("Authorization", "Bearer no")], b"");
    assert_eq!(r.status, 401);
}

/// A dashboard query as found in the JSON: where it is, and the expression.
struct Query {
    place: String,
    expr: String,
}

/// Every panel target (rows included) and every template variable of the dashboard, after
/// checking that it imports: a `DS_PROMETHEUS` input, the datasource as a variable on
/// every panel and target, unique panel ids.
fn dashboard_queries(dashboard: &Value) -> (Vec<Query>, Vec<Query>) {
    let ds = "${DS_PROMETHEUS}";
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(inputs
        .iter()
        .any(|i| i["name"].as_str() == Some("DS_PROMETHEUS")
            && i["pluginId"].as_str() == Some("prometheus")));
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating");
    assert!(variables
        .iter()
        .any(|v| v["type"].as_str() == Some("datasource")
            && v["name"].as_str() == Some("DS_PROMETHEUS")
            && v["query"].as_str() == Some("prometheus")));

    let mut panels: Vec<Value> = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels").iter() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner.iter().cloned());
        }
        panels.push(p.clone());
    }
    let mut ids = BTreeSet::new();
    let mut targets = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "{title}: id"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{title}: gridPos");
        if p["type"].as_str() == Some("row") {
            continue;
        }
        assert_eq!(p["datasource"]["uid"].as_str(), Some(ds), "{title}");
        let panel_targets = p["targets"].as_array().expect("targets");
        assert!(!panel_targets.is_empty(), "{title}: no query");
        for t in panel_targets.iter() {
            assert_eq!(t["datasource"]["uid"].as_str(), Some(ds), "{title}");
            targets.push(Query {
                place: format!("panel \"{title}\" {}", t["refId"].as_str().unwrap_or("?")),
                expr: t["expr"].as_str().expect("expr").to_string(),
            });
        }
    }
    let mut vars = Vec::new();
    for v in variables
        .iter()
        .filter(|v| v["type"].as_str() == Some("query"))
    {
        assert_eq!(v["datasource"]["uid"].as_str(), Some(ds));
        let name = v["name"].as_str().unwrap_or("?");
        let query = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .expect("variable query");
        // label_values(<selector>, <label>): the series that give the label its values.
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("${name}: only label_values() is supported: {query}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        vars.push(Query {
            place: format!("variable ${name}"),
            expr: format!("count by ({}) ({selector})", label.trim()),
        });
    }
    (targets, vars)
}

#[test]
fn dashboard_and_alert_queries_run_against_prometheus_scraping_the_proxy() {
    if !have("prometheus") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules_file = root.join("deploy/prometheus/alerts.yml");
    let dashboard_text = std::fs::read_to_string(root.join("deploy/grafana/opr-proxy.json"))
        .expect("deploy/grafana/opr-proxy.json");
    let dashboard: Value = sonic_rs::from_str(&dashboard_text).expect("dashboard JSON");
    let (targets, variables) = dashboard_queries(&dashboard);

    let a = mock("a");
    let b = mock("b");
    // An executor that is down: its `opr_proxy_executor_up` is 0.
    let down = dead_hostname();
    let proxy = ProxyProcess::start(
        &[a.hostname(), b.hostname(), down.clone()],
        &[("OPR_PROXY_ALGORITHM", "round-robin")],
    );
    drive(proxy.addr);

    let mut prom = Prometheus::start(proxy.addr, &rules_file);
    let deadline = Instant::now() + Duration::from_secs(90);
    // A rules file Prometheus refuses stops it at start.
    while prom.get("/-/ready").is_none_or(|(s, _)| s != 200) {
        if let Ok(Some(status)) = prom.child.try_wait() {
            panic!("Prometheus exited ({status}):\n{}", prom.log());
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus not ready:\n{}",
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(&prom, deadline, "a successful scrape of the proxy", || {
        prom.scalar(&format!("up{{job=\"{JOB}\"}}")) == Some(1.0)
    });
    // More traffic after the first scrape, so rates see it; then enough scrapes for
    // every rate() and increase() (two samples at least) to have a value.
    drive(proxy.addr);
    wait_for(&prom, deadline, "the second batch to be scraped", || {
        prom.scalar("sum(opr_proxy_requests_total{code=\"502\"})") == Some(2.0)
    });
    wait_for(&prom, deadline, "four scrapes", || {
        prom.scalar(&format!("count_over_time(up{{job=\"{JOB}\"}}[1m])"))
            .is_some_and(|n| n >= 4.0)
    });

    // Every alert rule is loaded, and evaluated by Prometheus without an error.
    let want_rules = std::fs::read_to_string(&rules_file)
        .unwrap()
        .matches("- alert:")
        .count();
    let mut alerts: Vec<Query> = Vec::new();
    wait_for(&prom, deadline, "every rule to be evaluated", || {
        let (_, body) = prom.get("/api/v1/rules?type=alert").expect("rules");
        let v: Value = sonic_rs::from_str(&body).unwrap();
        alerts.clear();
        let mut evaluated = true;
        for group in v["data"]["groups"].as_array().unwrap().iter() {
            for rule in group["rules"].as_array().unwrap().iter() {
                let name = rule["name"].as_str().unwrap_or("?");
                assert_ne!(rule["health"].as_str(), Some("err"), "{name}: {rule:?}");
                evaluated &= rule["health"].as_str() == Some("ok");
                alerts.push(Query {
                    place: format!("alert {name}"),
                    expr: rule["query"].as_str().unwrap().to_string(),
                });
            }
        }
        evaluated && alerts.len() == want_rules
    });

    // The rules see the proxy's series: the stopped executor's alert is pending.
    wait_for(
        &prom,
        deadline,
        "OprProxyExecutorDown for the stopped executor",
        || {
            let (_, body) = prom.get("/api/v1/alerts").expect("alerts");
            let v: Value = sonic_rs::from_str(&body).unwrap();
            let alerts = v["data"]["alerts"]
                .as_array()
                .map(|a| a.iter().cloned().collect());
            let alerts: Vec<Value> = alerts.unwrap_or_default();
            alerts.iter().any(|a| {
                a["labels"]["alertname"].as_str() == Some("OprProxyExecutorDown")
                    && a["labels"]["executor"].as_str() == Some(down.as_str())
                    && a["labels"]["job"].as_str() == Some(JOB)
            })
        },
    );

    let exposed = exposed_names(proxy.addr);
    let mut checked = 0;
    for (kind, queries) in [
        ("dashboard", &targets),
        ("variables", &variables),
        ("alerts", &alerts),
    ] {
        for q in queries.iter() {
            let expr = substitute(&q.expr);
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "{}: no opr_proxy_ metric: {expr}",
                q.place
            );
            let mut all_exposed = true;
            for name in &names {
                let tolerated = NOT_YET_EXPOSED.contains(&family(name));
                all_exposed &= !tolerated;
                assert!(
                    tolerated || exposed.contains(name.as_str()),
                    "{}: {name} is not in the proxy's exposition",
                    q.place
                );
            }
            let result = prom.query(&expr);
            // A panel or variable over exposed metrics shows data once traffic flowed;
            // alerts are expected to be quiet.
            if kind != "alerts" && all_exposed {
                assert!(!result.is_empty(), "{}: no data: {expr}", q.place);
            }
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} queries");
    for name in NOT_YET_EXPOSED {
        assert!(
            [&targets, &alerts].iter().any(|qs| qs
                .iter()
                .any(|q| metric_names(&q.expr).iter().any(|n| family(n) == *name))),
            "{name} is listed as not yet exposed but nothing uses it"
        );
    }
    drop(prom);
}
