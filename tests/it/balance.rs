//! Issue 13, items 1 and 2 against real sockets: `least-request` and `p2c` steer load
//! away from a slow executor, in-flight counts never leak, rise/fall hold a status
//! through one odd probe, and passive ejection flags a failing executor for every worker
//! until a probe passes.

use std::thread;
use std::time::{Duration, Instant};

use crate::support::*;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

const WAIT: Duration = Duration::from_secs(10);

fn slow_mock(name: &str, delay: Duration) -> MockExecutor {
    MockExecutor::start(MockOptions {
        name: name.into(),
        delay,
        ..MockOptions::default()
    })
    .expect("mock executor starts")
}

/// `CLIENTS` keep-alive clients at once, `EACH` GETs each; the share of them the slow
/// executor answered.
fn slow_share(algorithm: &str, fast: &MockExecutor, slow: &MockExecutor) -> f64 {
    const CLIENTS: usize = 8;
    const EACH: usize = 30;
    let mut proxy = Proxy::start(&[fast, slow], &[("OPR_PROXY_ALGORITHM", algorithm)]);
    let before = (fast.requests(), slow.requests());
    let addr = proxy.addr;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..EACH {
                    let r = c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    proxy.stop();
    let fast_n = fast.requests() - before.0;
    let slow_n = slow.requests() - before.1;
    assert_eq!(fast_n + slow_n, (CLIENTS * EACH) as u64);
    slow_n as f64 / (fast_n + slow_n) as f64
}

#[test]
fn least_request_and_p2c_send_less_to_a_slow_executor() {
    let fast = mock("fast");
    let slow = slow_mock("slow", Duration::from_millis(20));
    // Round-robin alternates whatever the speed: half of the requests wait on the slow one.
    let rr = slow_share("round-robin", &fast, &slow);
    assert!((0.45..=0.55).contains(&rr), "round-robin share {rr}");
    // `affinity` without a runtime id is `p2c`.
    for algorithm in ["least-request", "p2c", "affinity"] {
        let share = slow_share(algorithm, &fast, &slow);
        eprintln!("{algorithm}: slow executor share {share:.3} (round-robin {rr:.3})");
        assert!(
            share < 0.3,
            "{algorithm}: slow executor share {share} (round-robin {rr})"
        );
    }
}

/// `opr_proxy_executor_requests_in_flight` for `host`, from the metrics text.
fn in_flight(proxy: &Proxy, host: &str) -> u64 {
    let text = proxy.get("/v1/proxy/metrics").text();
    let prefix = format!("opr_proxy_executor_requests_in_flight{{executor=\"{host}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no in-flight gauge for {host}"))
}

#[test]
fn in_flight_counts_return_to_zero_on_every_ending() {
    let a = mock("a");
    let host = a.hostname();
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_ALGORITHM", "least-request"),
            ("OPR_PROXY_MAX_TIMEOUT", "1"),
        ],
    );
    // Counted while the executor works on it.
    let addr = proxy.addr;
    let sleeper = thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.request(
            "GET",
            "/v1/sleep?ms=600",
            &[("Authorization", &bearer())],
            b"",
        )
        .status
    });
    assert!(eventually(WAIT, || in_flight(&proxy, &host) == 1));
    assert_eq!(sleeper.join().unwrap(), 200);
    // Answered, failed (502), timed out (504), client gone, broadcast.
    assert_eq!(proxy.get("/v1/ping").status, 200);
    assert_eq!(proxy.get("/v1/reset").status, 502);
    assert_eq!(proxy.get("/v1/sleep?ms=3000").status, 504);
    let mut gone = proxy.client();
    gone.send(
        format!(
            "GET /v1/sleep?ms=3000 HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    assert!(eventually(WAIT, || in_flight(&proxy, &host) == 1));
    drop(gone);
    let mut c = proxy.client();
    let r = c.request(
        "DELETE",
        "/v1/ping",
        &[
            ("Authorization", &bearer()),
            ("x-opr-addressing-method", "broadcast"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert!(
        eventually(WAIT, || in_flight(&proxy, &host) == 0),
        "the count leaked"
    );
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

/// Wait until the executor has answered `n` more health probes than `from`, then long
/// enough for the round to be published (the interval is much longer than that).
fn after_probes(m: &MockExecutor, from: u64, n: u64) {
    assert!(eventually(WAIT, || m.health_requests() >= from + n));
    thread::sleep(Duration::from_millis(150));
}

#[test]
fn rise_and_fall_need_consecutive_probes() {
    let a = mock("a");
    let host = a.hostname();
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "600"),
            ("OPR_PROXY_HEALTHCHECK_RISE", "2"),
            ("OPR_PROXY_HEALTHCHECK_FALL", "2"),
        ],
    );
    assert_eq!(status_of(&proxy, &host), "online");
    // One failed probe (at most): still online, and still served.
    let h = a.health_requests();
    a.set_health(HealthMode::Status(503));
    after_probes(&a, h, 1);
    assert_eq!(status_of(&proxy, &host), "online", "FALL=2 holds after one");
    assert_eq!(proxy.get("/v1/ping").status, 200);
    // Two in a row: offline.
    assert!(eventually(WAIT, || status_of(&proxy, &host) == "offline"));
    assert!(a.health_requests() >= h + 2);
    assert_eq!(proxy.get("/v1/ping").status, 404);
    // One passing probe (at most) is not enough to come back with RISE=2.
    let h = a.health_requests();
    a.set_health(HealthMode::Text);
    after_probes(&a, h, 1);
    assert_eq!(
        status_of(&proxy, &host),
        "offline",
        "RISE=2 holds after one"
    );
    assert!(eventually(WAIT, || status_of(&proxy, &host) == "online"));
    assert!(a.health_requests() >= h + 2);
}

#[test]
fn defaults_flip_on_one_probe() {
    let a = mock("a");
    let host = a.hostname();
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_HEALTHCHECK_INTERVAL", "600")]);
    let h = a.health_requests();
    a.set_health(HealthMode::Status(503));
    // Within the round after the first failing probe (the original's behaviour).
    let started = Instant::now();
    assert!(eventually(WAIT, || status_of(&proxy, &host) == "offline"));
    assert!(a.health_requests() <= h + 2, "{:?}", started.elapsed());
}

fn ejections(proxy: &Proxy, host: &str) -> u64 {
    let text = proxy.get("/v1/proxy/metrics").text();
    let prefix = format!("opr_proxy_executor_ejections_total{{executor=\"{host}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ejection counter for {host}"))
}

/// `n` requests to `/v1/reset` (the executor closes without answering: a proxy 502) on
/// one connection, so one worker sees them all.
fn failures(c: &mut Client, n: usize) {
    for _ in 0..n {
        let r = c.request("GET", "/v1/reset", &[("Authorization", &bearer())], b"");
        assert_eq!(r.status, 502);
        assert_eq!(r.executor(), "");
    }
}

/// Which executor answers `/v1/ping` on each of `n` fresh connections (spread over the
/// workers by SO_REUSEPORT).
fn answered_by(proxy: &Proxy, n: usize) -> Vec<String> {
    (0..n).map(|_| proxy.get("/v1/ping").executor()).collect()
}

#[test]
fn ejection_flags_an_executor_for_every_worker_until_a_probe_passes() {
    let a = mock("a");
    let b = mock("b");
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_ALGORITHM", "first"),
            ("OPR_PROXY_CORES", "2"),
            ("OPR_PROXY_EJECT_AFTER", "3"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "2000"),
        ],
    );
    // Right after a probe, so that the next one (which clears the flag) is an interval
    // away.
    let h = a.health_requests();
    assert!(eventually(WAIT, || a.health_requests() > h));
    // One connection: one worker counts. Two failures, then an answer: not consecutive.
    let mut c = proxy.client();
    failures(&mut c, 2);
    let ping = |c: &mut Client| {
        c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"")
            .executor()
    };
    assert_eq!(ping(&mut c), "a");
    failures(&mut c, 2);
    assert_eq!(ejections(&proxy, &a.hostname()), 0);
    assert_eq!(ping(&mut c), "a");
    // Three in a row: every worker skips "a".
    failures(&mut c, 3);
    assert_eq!(ejections(&proxy, &a.hostname()), 1);
    assert_eq!(answered_by(&proxy, 8), vec!["b"; 8]);
    assert_eq!(status_of(&proxy, &a.hostname()), "offline");
    // The next passing probe brings it back.
    assert!(eventually(WAIT, || proxy.get("/v1/ping").executor() == "a"));
    assert_eq!(status_of(&proxy, &a.hostname()), "online");
}

#[test]
fn ejection_is_off_by_default() {
    let a = mock("a");
    let b = mock("b");
    let proxy = Proxy::start(&[&a, &b], &[("OPR_PROXY_ALGORITHM", "first")]);
    failures(&mut proxy.client(), 6);
    assert_eq!(ejections(&proxy, &a.hostname()), 0);
    assert_eq!(answered_by(&proxy, 3), vec!["a"; 3]);
}
