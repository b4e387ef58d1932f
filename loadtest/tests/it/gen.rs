//! The load generator end to end against in-process mock executors: closed and open loop,
//! large and chunked bodies, uploads, and errors counted by kind when the target is gone.

use opr_loadtest::gen::stats::Summary;
use opr_loadtest::gen::{self, Load, Request, RunConfig};
use opr_loadtest::{FastMock, MockExecutor};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn config(addrs: Vec<SocketAddr>, request: Request, connections: usize, load: Load) -> RunConfig {
    RunConfig {
        addrs,
        request,
        connections,
        threads: 1,
        load,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(900),
        timeout: Duration::from_secs(5),
        stop: Arc::new(AtomicBool::new(false)),
        mix: None,
    }
}

fn get(path: &str, host: &str) -> Request {
    Request::new("GET", path, host, &[], 0)
}

#[test]
fn closed_loop_against_the_mock_executor() {
    let mock = MockExecutor::start_named("gen-test").expect("mock");
    let cfg = config(
        vec![mock.addr()],
        get("/v1/ping", &mock.hostname()),
        8,
        Load::Closed,
    );
    let cpu = || vec![Some(Duration::from_millis(1)), None];
    let r = gen::run(&cfg, Some(&cpu)).expect("run");
    assert!(r.ok > 0, "no request completed");
    assert_eq!(r.errors.total(), 0, "errors: {}", r.errors);
    assert_eq!(r.window, cfg.duration);
    assert!(mock.requests() >= r.ok);
    let s = Summary::of(&r.latency);
    assert!(s.count > 0 && s.p50 <= s.p99 && s.p99 <= s.max, "{s:?}");
    // The sampler ran at both edges of the window (and its constant reading gives 0).
    assert_eq!(r.cpu, vec![Some(Duration::ZERO), None]);
    assert!(r.throughput() > 0.0);
}

#[test]
fn open_loop_keeps_the_offered_rate() {
    let mock = FastMock::start_named("gen-open").expect("mock");
    let rate = 2_000.0;
    let cfg = config(
        vec![mock.addr()],
        get("/v1/ping", &mock.hostname()),
        16,
        Load::Open { rate },
    );
    let r = gen::run(&cfg, None).expect("run");
    assert_eq!(r.errors.total(), 0, "errors: {}", r.errors);
    let expected = rate * cfg.duration.as_secs_f64();
    assert!(
        (r.sent as f64 - expected).abs() <= expected * 0.1,
        "sent {} of {expected}",
        r.sent
    );
    assert!(
        (r.throughput() - rate).abs() <= rate * 0.2,
        "{} req/s",
        r.throughput()
    );
    // The 1 ms timer wheel: sends leave a few ms late at most, unless the machine is
    // very busy (the bound is loose so a shared CI machine does not fail it).
    assert!(Summary::of(&r.lag).p50 < 20_000);
    assert!(r.cpu.is_empty());
}

#[test]
fn large_chunked_and_upload_bodies() {
    let std_mock = MockExecutor::start_named("gen-chunked").expect("mock");
    let fast = FastMock::start_named("gen-fast").expect("mock");
    let cases = [
        (
            std_mock.addr(),
            get("/v1/download?bytes=300000&chunked=1&chunk=7000", "h"),
            300_000,
        ),
        (fast.addr(), get("/v1/download?bytes=1048576", "h"), 1 << 20),
        (
            fast.addr(),
            Request::new("POST", "/v1/upload", "h", &[], 1 << 20),
            0,
        ),
    ];
    for (addr, req, body) in cases {
        let mut cfg = config(vec![addr], req, 2, Load::Closed);
        cfg.warmup = Duration::ZERO;
        cfg.duration = Duration::from_millis(400);
        let r = gen::run(&cfg, None).expect("run");
        assert!(r.ok > 0);
        assert_eq!(r.errors.total(), 0, "errors: {}", r.errors);
        if body > 0 {
            assert_eq!(r.body_bytes % body, 0, "whole bodies only");
            assert!(r.body_bytes >= body);
        }
    }
    assert!(fast.requests() > 0);
    // One blocking request, as the binary's smoke check does.
    let resp = gen::once(
        std_mock.addr(),
        &get("/v1/status?code=503", "h"),
        Duration::from_secs(5),
    )
    .expect("response");
    assert_eq!(resp.status, 503);
}

#[test]
fn errors_are_counted_by_kind() {
    // Statuses: every response is a 404.
    let mock = FastMock::start_named("gen-404").expect("mock");
    let mut cfg = config(vec![mock.addr()], get("/nope", "h"), 2, Load::Closed);
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_millis(300);
    let r = gen::run(&cfg, None).expect("run");
    assert_eq!(r.ok, 0);
    assert!(
        r.errors.status.get(&404).copied().unwrap_or(0) > 0,
        "{}",
        r.errors
    );

    // Connect: nothing listens any more.
    let addr = mock.addr();
    drop(mock);
    let mut cfg = config(
        vec![addr],
        get("/v1/ping", "h"),
        2,
        Load::Open { rate: 200.0 },
    );
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_millis(300);
    let started = Instant::now();
    let r = gen::run(&cfg, None).expect("run");
    assert_eq!(r.ok, 0);
    assert!(r.errors.connect > 0, "{}", r.errors);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn timeouts_end_requests_and_stop_ends_runs() {
    // /v1/sleep answers after 2 s; the timeout is 200 ms.
    let mock = MockExecutor::start_named("gen-slow").expect("mock");
    let mut cfg = config(
        vec![mock.addr()],
        get("/v1/sleep?ms=2000", "h"),
        2,
        Load::Closed,
    );
    cfg.warmup = Duration::ZERO;
    cfg.duration = Duration::from_millis(500);
    cfg.timeout = Duration::from_millis(200);
    let started = Instant::now();
    let r = gen::run(&cfg, None).expect("run");
    assert!(r.errors.timeout >= 2, "{}", r.errors);
    assert!(started.elapsed() < Duration::from_secs(2));

    // A stop flag already set: the run returns at once with nothing sent.
    cfg.stop = Arc::new(AtomicBool::new(true));
    cfg.duration = Duration::from_secs(60);
    let started = Instant::now();
    let r = gen::run(&cfg, None).expect("run");
    assert_eq!(r.sent, 0);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn idle_connections_stay_open_after_one_request_each() {
    use opr_loadtest::idle;
    use std::io::Read;
    let mock = FastMock::start_named("gen-idle").expect("mock");
    let stop = AtomicBool::new(false);
    let req = get("/v1/ping", &mock.hostname());
    let mut set = idle::open_idle(mock.addr(), &req, 40, Duration::from_secs(5), &stop);
    assert_eq!(set.opened(), 40);
    assert_eq!(set.errors, 0, "{:?}", set.first_error);
    assert_eq!(mock.requests(), 40);
    // Still open and idle: nothing to read, no EOF; and each is usable for another request.
    let s = &mut set.streams[7];
    s.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 16];
    let e = s.read(&mut buf).expect_err("no bytes, no EOF");
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    assert_eq!(
        gen::exchange_blocking(s, &req)
            .expect("second request")
            .status,
        200
    );

    // A non-2xx answer is a failure, and opening gives up on a target that always fails.
    let set = idle::open_idle(
        mock.addr(),
        &get("/nope", "h"),
        1_000,
        Duration::from_secs(5),
        &stop,
    );
    assert_eq!(set.opened(), 0);
    assert_eq!(set.errors, 50);
    assert!(set.first_error.expect("error").contains("404"));
}
