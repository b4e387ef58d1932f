//! The cold-start harness over real sockets: the fast mock's warm-runtime and service-time
//! model (cold cost, LRU eviction, one start for concurrent requests, the headers and
//! counters), the generator's Zipf draw and per-runtime tally, and the medians table.

use opr_loadtest::coldstart::{self, medians_table, Mix, Rng, Tally, Zipf, COLD_COLUMNS};
use opr_loadtest::gen::framing::Response;
use opr_loadtest::gen::{self, Load, Request, RunConfig};
use opr_loadtest::warm::Warmth;
use opr_loadtest::{FastMock, FastMockOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn any() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// Polls `cond` until it holds (10 s at most): counters change right after an answer.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn warm_mock(name: &str, k: usize, cold_ms: u64) -> FastMock {
    let opts = FastMockOptions {
        warm: Some((k, Duration::from_millis(cold_ms))),
        ..FastMockOptions::default()
    };
    FastMock::start_with(name, any(), opts).expect("mock")
}

fn get_runtime(host: &str, runtime: &str) -> Request {
    let headers = vec![("x-opr-runtime-id".to_string(), runtime.to_string())];
    Request::new("GET", "/v1/ping", host, &headers, 0)
}

/// One request on a fresh connection: the response and how long it took.
fn timed(mock: &FastMock, runtime: &str) -> (Response, Duration) {
    let req = get_runtime(&mock.hostname(), runtime);
    let t = Instant::now();
    let r = gen::once(mock.addr(), &req, Duration::from_secs(10)).expect("request");
    (r, t.elapsed())
}

#[test]
fn cold_runtimes_cost_the_start_and_lru_evicts() {
    let cold = Duration::from_millis(150);
    let mock = warm_mock("executor-3", 2, 150);
    let (r, took) = timed(&mock, "a");
    assert_eq!(
        (r.status, r.executor, r.warmth),
        (200, Some(3), Warmth::ColdStart)
    );
    assert!(took >= cold, "a cold start took {took:?}");
    let (r, took) = timed(&mock, "a");
    assert_eq!(r.warmth, Warmth::Warm);
    // Generous: a warm answer must not pay the cold start, even on a busy machine.
    assert!(took < cold, "a warm answer took {took:?}");
    assert_eq!(timed(&mock, "b").0.warmth, Warmth::ColdStart);
    // Capacity 2: "c" evicts the least recently used ("a", used before "b").
    assert_eq!(timed(&mock, "c").0.warmth, Warmth::ColdStart);
    assert_eq!(timed(&mock, "b").0.warmth, Warmth::Warm);
    assert_eq!(timed(&mock, "a").0.warmth, Warmth::ColdStart);
    // No runtime id: nothing to start, no header.
    let plain = Request::new("GET", "/v1/ping", &mock.hostname(), &[], 0);
    let r = gen::once(mock.addr(), &plain, Duration::from_secs(10)).expect("plain");
    assert_eq!((r.executor, r.warmth), (Some(3), Warmth::Untracked));
    let s = mock.stats();
    assert_eq!(
        (s.cold_starts, s.warm_hits, s.cold_waits),
        (4, 2, 0),
        "{s:?}"
    );
    wait_until("nothing in flight", || mock.stats().in_flight == 0);
}

#[test]
fn concurrent_requests_for_one_cold_runtime_wait_for_one_start() {
    let cold = Duration::from_millis(300);
    let mock = warm_mock("executor-1", 4, 300);
    let n = 8;
    let barrier = Barrier::new(n);
    let t0 = Instant::now();
    let results: Vec<(Response, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    timed(&mock, "shared")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let total = t0.elapsed();
    let starts = results
        .iter()
        .filter(|(r, _)| r.warmth == Warmth::ColdStart)
        .count();
    let waits = results
        .iter()
        .filter(|(r, _)| r.warmth == Warmth::ColdWait)
        .count();
    let s = mock.stats();
    // The requests may reach the mock spread out (a loaded machine), so a late one can find
    // the runtime already warm; but never a second start.
    assert_eq!(starts, 1, "{results:?}");
    assert_eq!(s.cold_starts, 1, "{s:?}");
    assert_eq!(s.cold_waits as usize, waits);
    assert!(waits >= 1, "no request waited: {results:?}");
    for (r, took) in &results {
        if r.warmth != Warmth::Warm {
            // The start began before any of them was sent back.
            assert!(*took >= cold / 2, "{r:?} after {took:?}");
        }
    }
    // One start, not n starts one after another.
    assert!(total < cold * 4, "{total:?}");
    assert!(s.max_in_flight >= 2, "{s:?}");
}

#[test]
fn service_slots_queue_and_count_in_flight() {
    let opts = FastMockOptions {
        warm: None,
        service: Duration::from_millis(100),
        slots: 2,
    };
    let mock = FastMock::start_with("executor-2", any(), opts).expect("mock");
    let n = 6;
    let barrier = Barrier::new(n);
    let mut took: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    timed(&mock, "rt").1
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    took.sort();
    // Two at a time, 100 ms each: the 3rd and 4th wait one turn, the last two two turns.
    assert!(took[0] >= Duration::from_millis(100), "{took:?}");
    assert!(took[2] >= Duration::from_millis(190), "{took:?}");
    assert!(took[5] >= Duration::from_millis(290), "{took:?}");
    let s = mock.stats();
    assert_eq!(s.requests, 6);
    // The waiting ones are in flight too (the figure a concurrency cap bounds).
    assert!(s.max_in_flight >= 3, "{s:?}");
    wait_until("nothing in flight", || mock.stats().in_flight == 0);
    assert_eq!((s.cold_starts, s.warm_hits), (0, 0));
}

#[test]
fn stats_route_reports_the_counters() {
    let mock = warm_mock("executor-1", 1, 1);
    timed(&mock, "a");
    timed(&mock, "a");
    wait_until("nothing in flight", || mock.stats().in_flight == 0);
    let mut s = TcpStream::connect(mock.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(b"GET /v1/mock/stats HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(
            "\"coldStarts\":1,\"coldWaits\":0,\"warmHits\":1,\"inFlight\":0,\"maxInFlight\":1"
        ),
        "{text}"
    );
}

#[test]
fn zipf_draws_follow_the_distribution() {
    let (n, s) = (50, 1.0);
    let z = Zipf::new(n, s);
    let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
    for k in 1..=n {
        assert!((z.probability(k - 1) - (k as f64).powf(-s) / h).abs() < 1e-12);
    }
    let draws = 400_000;
    let mut counts = vec![0u64; n];
    let mut rng = Rng::new(7);
    for _ in 0..draws {
        counts[z.draw(&mut rng)] += 1;
    }
    // Total variation distance from theory: ~0.003 expected for this many draws.
    let tvd: f64 = counts
        .iter()
        .enumerate()
        .map(|(i, &c)| (c as f64 / draws as f64 - z.probability(i)).abs())
        .sum::<f64>()
        / 2.0;
    assert!(tvd < 0.01, "total variation {tvd}");
    // The most popular rank within 2 % of its share (1/H = 22.2 %).
    let top = counts[0] as f64 / draws as f64;
    assert!((top / z.probability(0) - 1.0).abs() < 0.02, "top {top}");
    // Rank 1 about twice rank 2 and ten times rank 10 (s = 1).
    let ratio = counts[0] as f64 / counts[1] as f64;
    assert!((ratio - 2.0).abs() < 0.1, "{ratio}");
    let ratio = counts[0] as f64 / counts[9] as f64;
    assert!((ratio - 10.0).abs() < 1.0, "{ratio}");
}

#[test]
fn zipf_draws_are_reproducible_with_a_seed() {
    let mix = Mix::new(1000, 1.0, 42, 4, |id| get_runtime("h", id));
    let seq = |mix: &Mix, conn: usize| -> Vec<usize> {
        let mut rng = mix.rng_for(conn);
        (0..1000).map(|_| mix.zipf.draw(&mut rng)).collect()
    };
    let again = Mix::new(1000, 1.0, 42, 4, |id| get_runtime("h", id));
    assert_eq!(seq(&mix, 3), seq(&again, 3));
    assert_ne!(seq(&mix, 3), seq(&mix, 4));
    let other = Mix::new(1000, 1.0, 43, 4, |id| get_runtime("h", id));
    assert_ne!(seq(&mix, 3), seq(&other, 3));
    assert_eq!(coldstart::runtime_id(0), "rt-1");
}

#[test]
fn generator_tallies_runtimes_by_executor_and_warmth() {
    let mocks = [
        warm_mock("executor-1", 8, 20),
        warm_mock("executor-2", 8, 20),
    ];
    let runtimes = 40;
    let mix = Arc::new(Mix::new(runtimes, 1.0, 1, 2, |id| {
        get_runtime(&mocks[0].hostname(), id)
    }));
    let cfg = RunConfig {
        addrs: mocks.iter().map(FastMock::addr).collect(),
        request: get_runtime("h", "unused"),
        connections: 8,
        threads: 1,
        load: Load::Open { rate: 1000.0 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(1000),
        timeout: Duration::from_secs(5),
        stop: Arc::new(AtomicBool::new(false)),
        mix: Some(mix),
    };
    let r = gen::run(&cfg, None).expect("run");
    assert_eq!(r.errors.total(), 0, "{}", r.errors);
    let t = r.tally.expect("a tally with a mix");
    let answered = r.latency.len();
    // Every answer in the window is tallied, by executor and warmth.
    assert_eq!(t.per_executor.iter().sum::<u64>(), answered);
    assert_eq!(t.tracked(), answered);
    assert_eq!((t.unknown, t.untracked), (0, 0));
    assert!(
        t.per_executor.iter().all(|&n| n > 0),
        "{:?}",
        t.per_executor
    );
    // 40 runtimes on 8 warm slots per executor: a good share is cold.
    assert!(t.cold_starts > 0 && t.warm > 0, "{t:?}");
    let cold = t.cold_pct().expect("tracked answers");
    assert!(cold > 1.0 && cold < 100.0, "{cold}");
    // The mocks saw at least as many starts and hits (the warm-up counts there too).
    let starts: u64 = mocks.iter().map(|m| m.stats().cold_starts).sum();
    assert!(starts >= t.cold_starts);
    // The most popular runtime was answered, by some executor.
    assert!(t.primary(0).is_some());
    assert!(r.shed.is_empty());
}

fn answer(executor: u16, warmth: Warmth) -> Response {
    Response {
        status: 200,
        keep_alive: true,
        body_len: 0,
        executor: Some(executor),
        warmth,
    }
}

#[test]
fn tally_shares_and_moved_runtimes() {
    let mut before = Tally::new(4, 4);
    let mut after = Tally::new(4, 4);
    // Runtime 0 on executor 1 (twice) and 2 (once): primary 1; runtime 1 on 4; runtime 2 on
    // 3; runtime 3 never asked before.
    for (rt, ex) in [(0, 1), (0, 1), (0, 2), (1, 4), (2, 3)] {
        before.record(rt, &answer(ex, Warmth::Warm));
    }
    before.record(2, &answer(3, Warmth::ColdStart));
    // After executor 4 stopped: runtime 1 moves to 2, the others stay.
    for (rt, ex) in [(0, 1), (1, 2), (2, 3), (3, 1)] {
        after.record(rt, &answer(ex, Warmth::Warm));
    }
    after.record(0, &answer(70, Warmth::ColdWait));
    assert_eq!(after.unknown, 1);
    assert_eq!(before.primary(0), Some(0));
    assert_eq!(before.primary(3), None);
    assert_eq!(coldstart::moved(&before, &after, 1), (3, 1));
    // With a floor of 2 answers per phase only runtime 0 counts (3 before, 2 after; the
    // answer from an unknown executor does not count), and it stayed.
    let mut busier = after.clone();
    busier.record(0, &answer(1, Warmth::Warm));
    assert_eq!((before.answers(0), busier.answers(0)), (3, 2));
    assert_eq!(coldstart::moved(&before, &busier, 2), (1, 0));
    assert_eq!(coldstart::moved(&before, &after, 2), (0, 0));
    assert!((before.cold_pct().expect("cold") - 100.0 / 6.0).abs() < 1e-9);
    let mut merged = before.clone();
    merged.merge(&after);
    assert_eq!(merged.per_executor, vec![4, 2, 3, 1]);
    assert_eq!(merged.cold_waits, 1);
    // A tie goes to the lower executor.
    let mut tie = Tally::new(1, 4);
    tie.record(0, &answer(2, Warmth::Warm));
    tie.record(0, &answer(1, Warmth::Warm));
    assert_eq!(tie.primary(0), Some(0));

    let (pct, max) = coldstart::shares(&[30, 20, 25, 25], 4);
    assert_eq!(pct, vec![30.0, 20.0, 25.0, 25.0]);
    assert!((max.expect("max") - 1.2).abs() < 1e-9);
    // Executor 4 stopped: the mean is over the 3 that were up.
    let (_, max) = coldstart::shares(&[50, 25, 25, 0], 3);
    assert!((max.expect("max") - 1.5).abs() < 1e-9);
    assert_eq!(coldstart::shares(&[0, 0], 2).1, None);
}

#[test]
fn medians_table_over_rounds() {
    let rows: Vec<String> = [
        "table=cold alg=random round=1 cold_pct=30 p99_ms=52.1 moved_pct=70 rps=1000 errors=0",
        "table=cold alg=affinity round=1 cold_pct=2 p99_ms=3.1 moved_pct=25 rps=999 errors=0",
        "table=cold alg=random round=2 cold_pct=20 p99_ms=51.0 moved_pct=NA rps=1001 errors=0",
        "table=cold alg=affinity round=2 cold_pct=4 p99_ms=2.9 moved_pct=27 rps=1000 errors=1",
        "table=cold alg=random round=3 cold_pct=25 p99_ms=50.5 moved_pct=74 rps=1000 errors=0",
        "table=cap alg=no-cap round=1 rps=1600 shed=0",
        "not a row",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let table = medians_table(&rows, "cold", COLD_COLUMNS);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].starts_with("| algorithm | rounds | cold starts % |"),
        "{table}"
    );
    assert!(lines[1].starts_with("|---|--:|--:|"), "{table}");
    // First appearance order; medians with [min–max]; NA skipped; missing columns NA.
    assert!(
        lines[2].starts_with("| random | 3 | 25 [20–30] | NA | NA | 51.00 [50.50–52.10] |"),
        "{table}"
    );
    assert!(
        lines[2].contains("| 72 [70–74] | 1000 [1000–1001] | 0 [0–0] |"),
        "{table}"
    );
    assert!(
        lines[3].starts_with("| affinity | 2 | 3 [2–4] |"),
        "{table}"
    );
    assert!(lines[3].contains("| 26 [25–27] |"), "{table}");
    let cap = medians_table(&rows, "cap", coldstart::CAP_COLUMNS);
    assert!(cap.contains("| no-cap | 1 | 1600 |"), "{cap}");
}

#[test]
fn a_stopped_mock_refuses_and_closes_its_connections() {
    let mut mock = warm_mock("executor-4", 4, 10);
    let addr = mock.addr();
    let mut idle = TcpStream::connect(addr).expect("connect");
    idle.write_all(b"GET /v1/ping HTTP/1.1\r\nHost: m\r\nx-opr-runtime-id: a\r\n\r\n")
        .expect("write");
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).expect("answer");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    mock.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    // The kept-alive connection ends, and new ones are refused.
    assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
}
