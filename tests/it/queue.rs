//! Issue 18 item 2 against real sockets: the per-executor concurrency cap
//! (`OPR_PROXY_EXECUTOR_CONCURRENCY`) is never exceeded at the executor, requests over it
//! wait in FIFO order, and the queue sheds with `503` + `Retry-After` (timeout, full,
//! drain); clients that leave are dropped from it, lost executors re-pick, HTTP/2 streams
//! queue the same way, and broadcast is never shed.

use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::support::*;
use bytes::Bytes;
use sonic_rs::JsonValueTrait;

const WAIT: Duration = Duration::from_secs(10);

fn slow_mock(name: &str, delay: Duration) -> MockExecutor {
    MockExecutor::start(MockOptions {
        name: name.into(),
        delay,
        ..MockOptions::default()
    })
    .expect("mock executor starts")
}

/// One request on a fresh connection in its own thread, with the proxy key and `extra`
/// headers.
fn spawn_request(
    addr: std::net::SocketAddr,
    method: &'static str,
    path: String,
    extra: &'static [(&'static str, &'static str)],
) -> JoinHandle<(Response, Duration)> {
    thread::spawn(move || {
        let started = Instant::now();
        let auth = bearer();
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend_from_slice(extra);
        let r = Client::connect(addr).request(method, &path, &headers, b"");
        (r, started.elapsed())
    })
}

fn spawn_get(addr: std::net::SocketAddr, path: &str) -> JoinHandle<(Response, Duration)> {
    spawn_request(addr, "GET", path.to_string(), &[])
}

/// The value of one series (`name{labels}`) in the proxy's metrics.
fn metric(proxy: &Proxy, series: &str) -> f64 {
    let text = proxy.get("/v1/proxy/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn depth(proxy: &Proxy) -> f64 {
    metric(proxy, "opr_proxy_queue_depth{worker=\"0\"}")
}

fn shed(proxy: &Proxy, reason: &str) -> f64 {
    metric(
        proxy,
        &format!("opr_proxy_shed_total{{reason=\"{reason}\"}}"),
    )
}

/// A `503` for lack of capacity: `Retry-After` and the JSON error shape.
fn assert_shed(r: &Response, message_part: &str) {
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json = r.json();
    assert_eq!(json["code"].as_u64(), Some(503));
    let message = json["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_part), "{message}");
    assert_eq!(r.executor(), "", "answered by the proxy");
}

#[test]
fn the_cap_is_never_exceeded_at_the_executor_under_concurrency() {
    let a = slow_mock("a", Duration::from_millis(30));
    let b = slow_mock("b", Duration::from_millis(30));
    // Two workers holding two slots each: at most four at each executor.
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_CORES", "2"),
            // Connections from this test's threads spread over both workers.
            ("OPR_PROXY_CONNECTION_BALANCE", "hash"),
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "4"),
            ("OPR_PROXY_ALGORITHM", "round-robin"),
        ],
    );
    let addr = proxy.addr;
    let clients: Vec<_> = (0..24)
        .map(|_| {
            thread::spawn(move || {
                let mut c = Client::connect(addr);
                for _ in 0..8 {
                    let r = c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client thread");
    }
    assert_eq!(a.requests() + b.requests(), 24 * 8);
    let (max_a, max_b) = (a.max_active(), b.max_active());
    eprintln!("most at once: a {max_a}, b {max_b}");
    assert!(
        max_a <= 4 && max_b <= 4,
        "cap 4 exceeded: a {max_a}, b {max_b}"
    );
    // 24 clients on two executors: the load was there (without the cap each executor
    // sees about 12 at once).
    assert!(max_a >= 2 && max_b >= 2, "a {max_a}, b {max_b}");
    assert_eq!(
        metric(&proxy, "opr_proxy_queue_depth{worker=\"1\"}") + depth(&proxy),
        0.0
    );
    assert!(metric(&proxy, "opr_proxy_queue_wait_seconds_count") > 0.0);
    assert_eq!(
        shed(&proxy, "queue_full") + shed(&proxy, "queue_timeout"),
        0.0
    );
}

#[test]
fn queued_requests_are_served_in_arrival_order() {
    // Long enough that all five are queued while the first is served, even on a loaded
    // machine (at 150 ms the first answer came before the third was queued).
    let a = slow_mock("a", Duration::from_millis(1000));
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_EXECUTOR_CONCURRENCY", "1")]);
    let mut waiting = Vec::new();
    waiting.push(spawn_get(proxy.addr, "/v1/ping?n=0"));
    assert!(eventually(WAIT, || a.active() == 1));
    for n in 1..=5 {
        let path = format!("/v1/ping?n={n}");
        waiting.push(spawn_request(
            proxy.addr,
            "GET",
            path,
            &[("x-opr-debug", "1")],
        ));
        // Queued before the next one is sent.
        assert!(eventually(WAIT, || depth(&proxy) == n as f64), "{n} queued");
    }
    let answers: Vec<_> = waiting.into_iter().map(|t| t.join().unwrap()).collect();
    for (r, _) in &answers {
        assert_eq!(r.status, 200);
    }
    let want: Vec<String> = (0..=5).map(|n| format!("/v1/ping?n={n}")).collect();
    assert_eq!(a.targets(), want, "first come, first served");
    assert_eq!(a.max_active(), 1);
    // The route explains the wait.
    let route = answers[5]
        .0
        .header("x-opr-route")
        .unwrap_or_default()
        .to_string();
    assert!(route.contains("; queued "), "{route}");
    assert_eq!(depth(&proxy), 0.0);
    assert!(metric(&proxy, "opr_proxy_queue_wait_seconds_count") >= 5.0);
}

#[test]
fn a_request_that_waits_past_the_queue_timeout_gets_503_with_retry_after() {
    let a = slow_mock("a", Duration::from_millis(2500));
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_QUEUE_TIMEOUT", "400"),
        ],
    );
    let first = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let (r, took) = spawn_get(proxy.addr, "/v1/ping?n=1").join().unwrap();
    assert_shed(&r, "queue timeout");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(2000),
        "answered after {took:?}"
    );
    assert_eq!(shed(&proxy, "queue_timeout"), 1.0);
    assert_eq!(depth(&proxy), 0.0);
    assert!(metric(&proxy, "opr_proxy_queue_wait_seconds_sum") >= 0.35);
    assert_eq!(first.join().unwrap().0.status, 200);
    assert_eq!(a.targets(), vec!["/v1/ping?n=0"], "the shed one never left");
}

#[test]
fn a_full_queue_answers_503_at_once() {
    let a = slow_mock("a", Duration::from_millis(1500));
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_QUEUE_SIZE", "1"),
        ],
    );
    let first = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let second = spawn_get(proxy.addr, "/v1/ping?n=1");
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    // Keep-alive stays: the request was read whole.
    let mut c = proxy.client();
    let started = Instant::now();
    let r = c.request("GET", "/v1/ping?n=2", &[("Authorization", &bearer())], b"");
    assert_shed(&r, "queue is full");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(c.request("GET", "/v1/proxy/health", &[], b"").status, 200);
    assert_eq!(shed(&proxy, "queue_full"), 1.0);
    assert_eq!(first.join().unwrap().0.status, 200);
    assert_eq!(second.join().unwrap().0.status, 200);
    assert_eq!(a.targets(), vec!["/v1/ping?n=0", "/v1/ping?n=1"]);
}

#[test]
fn queue_size_zero_means_no_waiting() {
    let a = slow_mock("a", Duration::from_millis(1500));
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_QUEUE_SIZE", "0"),
        ],
    );
    let first = spawn_get(proxy.addr, "/v1/ping");
    assert!(eventually(WAIT, || a.active() == 1));
    let (r, took) = spawn_get(proxy.addr, "/v1/ping").join().unwrap();
    assert_shed(&r, "queue is full");
    assert!(took < Duration::from_millis(1000), "{took:?}");
    assert_eq!(first.join().unwrap().0.status, 200);
}

#[test]
fn a_client_that_leaves_while_queued_is_dropped_from_the_queue() {
    let a = slow_mock("a", Duration::from_millis(2000));
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_EXECUTOR_CONCURRENCY", "1")]);
    let first = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let mut leaving = proxy.client();
    leaving.send(
        format!(
            "GET /v1/ping?n=1 HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    drop(leaving);
    // Out of the queue while the first request still runs.
    assert!(eventually(WAIT, || depth(&proxy) == 0.0));
    assert_eq!(a.active(), 1, "dropped before the slot freed");
    assert_eq!(first.join().unwrap().0.status, 200);
    // The slot it would have had serves the next request; the one that left never ran.
    assert_eq!(proxy.get("/v1/ping?n=2").status, 200);
    assert_eq!(a.targets(), vec!["/v1/ping?n=0", "/v1/ping?n=2"]);
    assert_eq!(
        shed(&proxy, "queue_timeout") + shed(&proxy, "queue_full"),
        0.0
    );
}

#[test]
fn requests_waiting_for_a_lost_executor_are_re_picked_to_another() {
    let a = slow_mock("a", Duration::from_millis(5000));
    let b = slow_mock("b", Duration::from_millis(800));
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_ALGORITHM", "first"),
        ],
    );
    let on_a = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let on_b = spawn_get(proxy.addr, "/v1/ping?n=1");
    assert!(eventually(WAIT, || b.active() == 1));
    let waiting = spawn_get(proxy.addr, "/v1/ping?n=2");
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    // "a" goes away with its request: that frees its slot, but the waiter must not be
    // sent there (refused, or offline by then): it waits for "b" and is served there.
    a.stop();
    let (r, _) = waiting.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.executor(), "b");
    assert_eq!(on_b.join().unwrap().0.status, 200);
    let _ = on_a.join().unwrap();
    assert_eq!(a.targets(), vec!["/v1/ping?n=0"]);
    assert_eq!(b.targets(), vec!["/v1/ping?n=1", "/v1/ping?n=2"]);
    assert_eq!(b.max_active(), 1);
}

#[test]
fn waiting_requests_get_404_once_no_executor_is_online() {
    let a = slow_mock("a", Duration::from_millis(4000));
    let proxy = Proxy::start(&[&a], &[("OPR_PROXY_EXECUTOR_CONCURRENCY", "1")]);
    let first = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let waiting = spawn_get(proxy.addr, "/v1/ping?n=1");
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    a.set_health(HealthMode::Status(503));
    let (r, took) = waiting.join().unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    assert!(
        took < Duration::from_millis(3500),
        "answered at once, not after {took:?}"
    );
    assert_eq!(a.targets(), vec!["/v1/ping?n=0"]);
    assert_eq!(first.join().unwrap().0.status, 200, "in flight: finished");
}

#[test]
fn drain_answers_queued_requests_503_and_finishes_those_in_flight() {
    let a = slow_mock("a", Duration::from_millis(1500));
    let mut proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_SHUTDOWN_TIMEOUT", "10"),
        ],
    );
    let first = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    let waiting = spawn_get(proxy.addr, "/v1/ping?n=1");
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    let stopped = Instant::now();
    let stopper = thread::spawn(move || proxy.stop());
    let (r, _) = waiting.join().unwrap();
    assert_shed(&r, "shutting down");
    let answered_after = stopped.elapsed();
    assert!(
        answered_after < Duration::from_millis(1200),
        "{answered_after:?}"
    );
    assert_eq!(first.join().unwrap().0.status, 200, "in flight: finished");
    stopper.join().unwrap();
    assert_eq!(a.targets(), vec!["/v1/ping?n=0"]);
}

#[test]
fn broadcast_copies_count_in_flight_but_never_queue_or_shed() {
    let a = slow_mock("a", Duration::from_millis(1000));
    let b = slow_mock("b", Duration::from_millis(1000));
    let proxy = Proxy::start(
        &[&a, &b],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_ALGORITHM", "first"),
        ],
    );
    let on_a = spawn_get(proxy.addr, "/v1/ping?n=0");
    assert!(eventually(WAIT, || a.active() == 1));
    // "a" is at its cap: the broadcast still reaches it (and "b").
    let broadcast = spawn_request(
        proxy.addr,
        "DELETE",
        "/v1/runtimes/rt".into(),
        &[("x-opr-addressing-method", "broadcast")],
    );
    assert!(eventually(WAIT, || a.active() == 2 && b.active() == 1));
    // Its copy holds "b"'s slot: an anycast request now waits.
    let waiting = spawn_get(proxy.addr, "/v1/ping?n=2");
    assert!(eventually(WAIT, || depth(&proxy) == 1.0));
    let (r, _) = broadcast.join().unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(waiting.join().unwrap().0.status, 200);
    assert_eq!(on_a.join().unwrap().0.status, 200);
    assert_eq!(
        shed(&proxy, "queue_full") + shed(&proxy, "queue_timeout"),
        0.0
    );
}

#[test]
fn bad_values_of_every_queue_variable_exit_2_naming_it() {
    let base = [("OPR_PROXY_EXECUTORS", "a:1"), ("OPR_PROXY_SECRET", "s")];
    for (var, value) in [
        ("OPR_PROXY_EXECUTOR_CONCURRENCY", "-1"),
        ("OPR_PROXY_EXECUTOR_CONCURRENCY", "lots"),
        ("OPR_PROXY_QUEUE_SIZE", "1048577"),
        ("OPR_PROXY_QUEUE_TIMEOUT", "0"),
        ("OPR_PROXY_QUEUE_TIMEOUT", "30s"),
    ] {
        let mut env = base.to_vec();
        env.push((var, value));
        let line = assert_start_error(&env, var);
        assert!(line.contains(value), "{line}");
    }
}

#[test]
fn fewer_slots_than_workers_is_said_at_start() {
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[
            ("OPR_PROXY_CORES", "2"),
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
        ],
    );
    p.wait_for_log("worker shares [1, 1]", WAIT);
    let log = p.log();
    assert!(
        log.contains("at most 2 requests in flight per executor")
            && log.contains("below the 2 workers"),
        "{log}"
    );
}

// HTTP/2: the same queue behind the streams of one connection.

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

type H2Answer = (u16, Option<String>, Vec<u8>);

/// One GET stream to its end: status, `retry-after`, body.
async fn h2_get(
    mut send: h2::client::SendRequest<Bytes>,
    addr: std::net::SocketAddr,
    path: String,
) -> Result<H2Answer, String> {
    let request = http::Request::builder()
        .method("GET")
        .uri(format!("http://{addr}{path}"))
        .header("authorization", bearer())
        .body(())
        .unwrap();
    let (response, _) = send
        .send_request(request, true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, retry, bytes))
}

/// `opr_proxy_queue_depth` of worker 0, read over the same HTTP/2 connection.
async fn h2_depth(send: &h2::client::SendRequest<Bytes>, addr: std::net::SocketAddr) -> f64 {
    let (_, _, body) = h2_get(send.clone(), addr, "/v1/proxy/metrics".into())
        .await
        .expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("opr_proxy_queue_depth{worker=\"0\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("queue depth")
}

async fn until_depth(send: &h2::client::SendRequest<Bytes>, addr: std::net::SocketAddr, n: f64) {
    let end = Instant::now() + WAIT;
    while h2_depth(send, addr).await != n {
        assert!(Instant::now() < end, "queue depth never reached {n}");
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn http2_streams_queue_shed_and_leave_the_queue_like_http1() {
    let a = slow_mock("a", Duration::from_millis(800));
    let proxy = Proxy::start(
        &[&a],
        &[
            ("OPR_PROXY_EXECUTOR_CONCURRENCY", "1"),
            ("OPR_PROXY_QUEUE_SIZE", "1"),
        ],
    );
    let addr = proxy.addr;
    let ex = &a;
    let (first, second, full, after) = on_runtime(async move {
        let send = h2_connect(addr).await;
        let go = |path: &str| monoio::spawn(h2_get(send.clone(), addr, path.to_string()));
        let first = go("/v1/ping?n=0");
        while ex.active() == 0 {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = go("/v1/ping?n=1");
        until_depth(&send, addr, 1.0).await;
        let started = Instant::now();
        let full = h2_get(send.clone(), addr, "/v1/ping?n=2".into()).await;
        assert!(started.elapsed() < Duration::from_millis(700), "at once");
        let (first, second) = (first.await, second.await);
        // A stream reset while it waits leaves the queue and never reaches the executor.
        let holder = go("/v1/ping?n=3");
        while ex.active() == 0 {
            monoio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut sender = send.clone();
        let request = http::Request::builder()
            .uri(format!("http://{addr}/v1/ping?n=4"))
            .header("authorization", bearer())
            .body(())
            .unwrap();
        let (response, stream) = sender.send_request(request, true).unwrap();
        until_depth(&send, addr, 1.0).await;
        drop((response, stream));
        until_depth(&send, addr, 0.0).await;
        let after = holder.await;
        (first, second, full, after)
    });
    assert_eq!(first.map(|r| r.0), Ok(200));
    assert_eq!(second.map(|r| r.0), Ok(200));
    let (status, retry, body) = full.expect("an answer");
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    assert!(String::from_utf8_lossy(&body).contains("\"code\":503"));
    assert_eq!(after.map(|r| r.0), Ok(200));
    let want = ["/v1/ping?n=0", "/v1/ping?n=1", "/v1/ping?n=3"];
    assert_eq!(a.targets(), want);
    assert_eq!(a.max_active(), 1);
    assert_eq!(shed(&proxy, "queue_full"), 1.0);
}
