//! `OPR_PROXY_ALGORITHM=affinity` against real sockets: one runtime stays on one
//! executor on every worker and over HTTP/1 and HTTP/2, a loaded owner spills to the next
//! executor (explained in `x-opr-route`, counted in `opr_proxy_affinity_spills_total`),
//! an executor taken offline moves only its own runtimes, and requests without a
//! runtime id are spread as by `p2c`. The mocks answer `/v1/health` with a plain `OK`,
//! as today's executors do.

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::thread;
use std::time::Duration;

use crate::support::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

const WAIT: Duration = Duration::from_secs(10);

/// Three executors that answer `/v1/health` with a plain `OK` (no usage, no runtimes).
fn executors() -> Vec<MockExecutor> {
    ["a", "b", "c"]
        .iter()
        .map(|n| mock_with(n, HealthMode::Text))
        .collect()
}

fn start(mocks: &[MockExecutor], extra: &[(&str, &str)]) -> Proxy {
    let refs: Vec<&MockExecutor> = mocks.iter().collect();
    let mut env = vec![("OPR_PROXY_ALGORITHM", "affinity")];
    env.extend_from_slice(extra);
    Proxy::start(&refs, &env)
}

/// One request on a fresh connection for `runtime`, with `x-opr-debug: 1`.
fn for_runtime(addr: std::net::SocketAddr, path: &str, runtime: &str) -> Response {
    let mut c = Client::connect(addr);
    let mut headers = vec![("Authorization", bearer()), ("x-opr-debug", "1".into())];
    if !runtime.is_empty() {
        headers.push(("x-opr-runtime-id", runtime.into()));
    }
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = c.request("GET", path, &headers, b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn route(r: &Response) -> String {
    r.header("x-opr-route").unwrap_or("").to_string()
}

/// A metric line's value: `name{label="value"}`.
fn metric(proxy: &Proxy, line_prefix: &str) -> u64 {
    let text = proxy.get("/v1/proxy/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_prefix}"))
}

fn spills(proxy: &Proxy, host: &str) -> u64 {
    metric(
        proxy,
        &format!("opr_proxy_affinity_spills_total{{executor=\"{host}\"}} "),
    )
}

fn in_flight(proxy: &Proxy, host: &str) -> u64 {
    metric(
        proxy,
        &format!("opr_proxy_executor_requests_in_flight{{executor=\"{host}\"}} "),
    )
}

fn accepted(proxy: &Proxy, worker: usize) -> u64 {
    metric(
        proxy,
        &format!("opr_proxy_worker_connections_accepted_total{{worker=\"{worker}\"}} "),
    )
}

/// One HTTP/2 (h2c, prior knowledge) request with curl: status and headers. `None` when
/// curl with HTTP/2 is missing (SKIP locally, a failure under CI).
fn h2(addr: std::net::SocketAddr, path: &str, runtime: &str) -> Option<(u16, Vec<String>)> {
    let ok = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("HTTP2"));
    if !ok {
        skip_unless_ci("curl with HTTP/2 support is not installed");
        return None;
    }
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--http2-prior-knowledge",
        ])
        .args(["--max-time", "30", "-H", "x-opr-debug: 1"])
        .args(["-H", &format!("Authorization: {}", bearer())])
        .args(["-H", &format!("x-opr-runtime-id: {runtime}")])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl runs");
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = head.lines().map(str::trim);
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/2 "))
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP/2 answer: {head}"));
    Some((status, lines.map(str::to_string).collect()))
}

fn h2_header(headers: &[String], name: &str) -> String {
    headers
        .iter()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

#[test]
fn one_runtime_stays_on_one_executor_on_every_worker_and_over_http2() {
    let mocks = executors();
    let proxy = start(
        &mocks,
        &[
            ("OPR_PROXY_CORES", "2"),
            ("OPR_PROXY_CONNECTION_BALANCE", "hash"),
        ],
    );
    let mut owners = HashMap::new();
    for k in 0..8 {
        let rt = format!("rt-{k}");
        let first = for_runtime(proxy.addr, "/v1/ping", &rt);
        assert!(
            route(&first).ends_with("reason=affinity owner"),
            "{}",
            route(&first)
        );
        owners.insert(rt, first.executor());
    }
    assert!(
        owners.values().collect::<HashSet<_>>().len() >= 2,
        "8 runtimes all on one executor: {owners:?}"
    );
    // Fresh connections until both workers have served a few of each runtime's requests.
    let (w0, w1) = (accepted(&proxy, 0), accepted(&proxy, 1));
    let mut rounds = 0;
    while accepted(&proxy, 0) < w0 + 3 || accepted(&proxy, 1) < w1 + 3 {
        rounds += 1;
        assert!(rounds <= 200, "connections never reached both workers");
        for (rt, owner) in &owners {
            let r = for_runtime(proxy.addr, "/v1/ping", rt);
            assert_eq!(&r.executor(), owner, "{rt} moved: {}", route(&r));
        }
    }
    // HTTP/2 streams go through the same selection.
    for (rt, owner) in &owners {
        let Some((status, headers)) = h2(proxy.addr, "/v1/ping", rt) else {
            return;
        };
        assert_eq!(status, 200);
        assert_eq!(&h2_header(&headers, "x-mock-name"), owner, "{rt} over h2");
        let route = h2_header(&headers, "x-opr-route");
        assert!(route.ends_with("reason=affinity owner"), "{route}");
    }
}

#[test]
fn a_loaded_owner_spills_to_the_next_executor() {
    let mocks = executors();
    let hosts: HashMap<String, String> = mocks
        .iter()
        .map(|m| (m.name().to_string(), m.hostname()))
        .collect();
    let proxy = start(&mocks, &[]);
    let owner = for_runtime(proxy.addr, "/v1/ping", "hot").executor();
    let owner_host = hosts[&owner].clone();
    // One slow request in flight on the owner: with the next one, 2 requests over 3
    // executors give a bound of ceil(1.25 × 2 / 3) = 1, which the owner has reached.
    let addr = proxy.addr;
    let slow = thread::spawn(move || for_runtime(addr, "/v1/sleep?ms=3000", "hot"));
    assert!(eventually(WAIT, || in_flight(&proxy, &owner_host) == 1));
    let spilled = for_runtime(proxy.addr, "/v1/ping", "hot");
    assert_ne!(spilled.executor(), owner);
    let want = format!("reason=spilled from {owner_host}: load");
    assert!(route(&spilled).ends_with(&want), "{}", route(&spilled));
    // The same over HTTP/2, to the same successor.
    let mut spills_now = 1;
    if let Some((status, headers)) = h2(proxy.addr, "/v1/ping", "hot") {
        assert_eq!(status, 200);
        assert_eq!(h2_header(&headers, "x-mock-name"), spilled.executor());
        assert!(h2_header(&headers, "x-opr-route").ends_with(&want));
        spills_now = 2;
    }
    assert_eq!(spills(&proxy, &owner_host), spills_now);
    for other in hosts.values().filter(|h| **h != owner_host) {
        assert_eq!(spills(&proxy, other), 0, "{other}");
    }
    // The slow one was the owner's; once it ends the owner takes the runtime again.
    let slow = slow.join().unwrap();
    assert_eq!(slow.executor(), owner);
    assert!(route(&slow).ends_with("reason=affinity owner"));
    assert!(eventually(WAIT, || in_flight(&proxy, &owner_host) == 0));
    assert_eq!(for_runtime(proxy.addr, "/v1/ping", "hot").executor(), owner);
}

/// `status` of executor `host` in `/v1/proxy/containers`.
fn status_of(proxy: &Proxy, host: &str) -> String {
    let list = proxy.get("/v1/proxy/containers").json();
    let list = list.as_array().expect("an array");
    let e = list
        .iter()
        .find(|e| e["hostname"].as_str() == Some(host))
        .expect("listed");
    e["status"].as_str().unwrap_or_default().to_string()
}

#[test]
fn an_executor_taken_offline_moves_only_its_runtimes() {
    let mocks = executors();
    let proxy = start(&mocks, &[]);
    let runtimes: Vec<String> = (0..30).map(|k| format!("fn-{k}")).collect();
    let before: Vec<String> = runtimes
        .iter()
        .map(|rt| for_runtime(proxy.addr, "/v1/ping", rt).executor())
        .collect();
    let victim = mocks
        .iter()
        .find(|m| before.iter().any(|o| o == m.name()))
        .expect("some executor owns a runtime");
    let victims = before.iter().filter(|o| *o == victim.name()).count();
    victim.stop();
    assert!(eventually(WAIT, || status_of(&proxy, &victim.hostname()) == "offline"));
    for (rt, old) in runtimes.iter().zip(&before) {
        let r = for_runtime(proxy.addr, "/v1/ping", rt);
        if old == victim.name() {
            assert_ne!(&r.executor(), old, "{rt}");
        } else {
            assert_eq!(&r.executor(), old, "{rt} moved although its owner stayed");
        }
        assert!(
            route(&r).ends_with("reason=affinity owner"),
            "{}",
            route(&r)
        );
    }
    assert!(victims > 0 && victims < runtimes.len(), "{victims}");
}

#[test]
fn without_a_runtime_id_requests_spread_as_with_p2c() {
    let mocks = executors();
    let proxy = start(&mocks, &[]);
    let mut seen = HashSet::new();
    for _ in 0..60 {
        let r = for_runtime(proxy.addr, "/v1/ping", "");
        // No usage reports: every executor is in tier 3.
        assert!(
            route(&r).ends_with("tier=3; reason=fallback: all busy"),
            "{}",
            route(&r)
        );
        seen.insert(r.executor());
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}
