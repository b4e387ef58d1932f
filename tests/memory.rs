//! Memory per connection (issue 12): an idle keep-alive connection holds no buffer, no
//! timer and no request state, so thousands of them cost little; requests in flight are
//! bounded too; and a new connection is served promptly while thousands are open.
//! Real process, real sockets; figures printed for the README (`--nocapture`).
//! `OPR_TEST_IDLE_CONNECTIONS` sets how many (default 3000; 10000 for the README figure,
//! which needs `ulimit -n` above 20000).

mod support;

use std::time::{Duration, Instant};

use support::*;

fn connections_to_open() -> usize {
    let wanted = std::env::var("OPR_TEST_IDLE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    // Two fds per connection in this process (one in the proxy), and room for the
    // test's own files and the other tests running in parallel.
    let limit = opr_loadtest::procs::nofile_limit().unwrap_or(1024) as usize;
    let room = limit.saturating_sub(400) / 2;
    if room < wanted {
        eprintln!("only {room} connections fit under the open-file limit (wanted {wanted})");
    }
    wanted.min(room)
}

fn ping(c: &mut Client) {
    let r = c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn idle_keep_alive_connections_cost_under_2_kib_each() {
    let n = connections_to_open();
    assert!(
        n >= 500,
        "too few connections for a meaningful figure ({n})"
    );
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[
            ("OPR_PROXY_IDLE_TIMEOUT", "600"),
            ("OPR_PROXY_MAX_CONNECTIONS", "100000"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
        ],
    );
    // Warm the worker's pools and allocator with requests on a few connections.
    let mut warm: Vec<Client> = (0..64).map(|_| Client::connect(p.addr)).collect();
    for c in warm.iter_mut() {
        ping(c);
        ping(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = p.status_kib("VmRSS");
    let mut idle = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = Client::connect(p.addr);
        ping(&mut c);
        idle.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = p.status_kib("VmRSS");
    let per = (after.saturating_sub(before)) as f64 / n as f64;
    // Served promptly while they are all open, and they are all still usable.
    let started = Instant::now();
    let mut fresh = Client::connect(p.addr);
    ping(&mut fresh);
    let took = started.elapsed();
    ping(&mut idle[0]);
    ping(&mut idle[n - 1]);
    eprintln!(
        "{n} idle keep-alive connections: RSS {before} -> {after} KiB, {per:.2} KiB per connection; \
         a new connection answered in {:.1} ms",
        took.as_secs_f64() * 1e3
    );
    // Before issue 12: 11.9-13.1 KiB (an 8 KiB head buffer, vectors, a 4.5 KiB task).
    assert!(per <= 2.0, "{per:.2} KiB per idle connection");
    assert!(
        took < Duration::from_secs(1),
        "new connection took {took:?}"
    );
}

#[test]
fn requests_in_flight_are_bounded() {
    let n = connections_to_open().min(1000);
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[
            ("OPR_PROXY_MAX_CONNECTIONS", "100000"),
            ("OPR_PROXY_POOL_SIZE", "2000"),
            ("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000"),
        ],
    );
    let mut warm = Client::connect(p.addr);
    ping(&mut warm);
    std::thread::sleep(Duration::from_millis(300));
    let before = p.status_kib("VmRSS");
    let request = format!(
        "GET /v1/sleep?ms=3000 HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
        bearer()
    );
    let mut clients: Vec<Client> = (0..n)
        .map(|_| {
            let mut c = Client::connect(p.addr);
            c.send(request.as_bytes());
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let during = p.status_kib("VmRSS");
    let per = during.saturating_sub(before) as f64 / n as f64;
    for c in clients.iter_mut() {
        assert_eq!(c.read_response(false).unwrap().status, 200);
    }
    eprintln!("{n} requests in flight: RSS {before} -> {during} KiB, {per:.2} KiB per request");
    // The request's state, a head buffer page, its vectors and an executor connection:
    // about 12 KiB (before issue 12, 16 KiB). Never a body buffer (128 KiB).
    assert!(per <= 24.0, "{per:.2} KiB per request in flight");
}

/// `n` GETs on `c`, pipelined in batches, the i-th with `x-opr-runtime-id: id(i)`.
fn runtime_requests(c: &mut Client, n: usize, id: impl Fn(usize) -> String) {
    const BATCH: usize = 32;
    let auth = bearer();
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let mut raw = String::new();
        for i in start..end {
            raw.push_str(&format!(
                "GET /v1/ping HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\
                 x-opr-runtime-id: {}\r\n\r\n",
                id(i)
            ));
        }
        c.send(raw.as_bytes());
        for _ in start..end {
            assert_eq!(c.read_response(false).unwrap().status, 200);
        }
    }
}

/// Issue 19, item 2: the optimistic "runtime warm here" marks are bounded per worker. Before,
/// every distinct `x-opr-runtime-id` stayed until the next health round: 1000 requests
/// with 30 KB ids grew RSS by 31 MiB. Now ids over 256 bytes are not marked and at most
/// 4096 marks are kept (the oldest go).
#[test]
fn warm_marks_stay_bounded_for_long_and_many_runtime_ids() {
    let a = mock("a");
    // No health round during the test: nothing clears the marks but their bounds.
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[("OPR_PROXY_HEALTHCHECK_INTERVAL", "3600000")],
    );
    let mut c = Client::connect(p.addr);
    runtime_requests(&mut c, 200, |i| format!("warm-up-{i}"));
    std::thread::sleep(Duration::from_millis(300));
    let before = p.status_kib("VmRSS");
    // 1000 distinct 30 KB ids: over the length bound, none is kept.
    let long = "x".repeat(30_000);
    runtime_requests(&mut c, 1000, |i| format!("{long}-{i}"));
    let after_long = p.status_kib("VmRSS");
    // 16384 distinct ids of 250 bytes: only the last 4096 are kept (about 1.5 MiB, where
    // keeping all would take about 6 MiB).
    let pad = "y".repeat(240);
    runtime_requests(&mut c, 16_384, |i| format!("{pad}-{i:08}"));
    let after_many = p.status_kib("VmRSS");
    eprintln!(
        "warm marks: RSS {before} KiB, after 1000 x 30 KB ids {after_long} KiB, \
         after 16384 x 250 B ids {after_many} KiB"
    );
    let long_growth = after_long.saturating_sub(before);
    assert!(
        long_growth < 4 * 1024,
        "1000 long ids grew RSS by {long_growth} KiB"
    );
    let many_growth = after_many.saturating_sub(after_long);
    assert!(
        many_growth < 3 * 1024,
        "16384 ids grew RSS by {many_growth} KiB"
    );
}
