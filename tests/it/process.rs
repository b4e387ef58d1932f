//! Tests of the binary as a process: start-up validation (exit 2), signals (exit 0),
//! and bounded memory while 100 MiB bodies stream through in both directions.

use std::time::Duration;

use crate::support::*;

#[test]
fn bad_config_exits_2_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("OPR_PROXY_SECRET", "s")], "OPR_PROXY_EXECUTORS"),
        (&[("OPR_PROXY_EXECUTORS", "a:1")], "OPR_PROXY_SECRET"),
        (
            &[
                ("OPR_PROXY_EXECUTORS", "a:1"),
                ("OPR_PROXY_SECRET", "s"),
                ("OPR_PROXY_ALGORITHM", "fastest"),
            ],
            "OPR_PROXY_ALGORITHM",
        ),
        (
            &[("OPR_PROXY_EXECUTORS", "a:1,,b"), ("OPR_PROXY_SECRET", "s")],
            "OPR_PROXY_EXECUTORS",
        ),
        (
            &[
                ("OPR_PROXY_EXECUTORS", "a:1"),
                ("OPR_PROXY_SECRET", "s"),
                ("PORT", "http"),
            ],
            "PORT",
        ),
        (
            &[
                ("OPR_PROXY_EXECUTORS", "a:1"),
                ("OPR_PROXY_SECRET", "s"),
                ("OPR_PROXY_HEALTHCHECK_FALL", "0"),
            ],
            "OPR_PROXY_HEALTHCHECK_FALL",
        ),
        (
            &[
                ("OPR_PROXY_EXECUTORS", "a:1"),
                ("OPR_PROXY_SECRET", "s"),
                ("OPR_PROXY_EJECT_AFTER", "many"),
            ],
            "OPR_PROXY_EJECT_AFTER",
        ),
        (
            &[
                ("OPR_PROXY_EXECUTORS", "a:1"),
                ("OPR_PROXY_SECRET", "s"),
                ("OPR_PROXY_ALGORITHM", "affinity"),
                ("OPR_PROXY_AFFINITY_LOAD_FACTOR", "0.9"),
            ],
            "OPR_PROXY_AFFINITY_LOAD_FACTOR",
        ),
    ];
    for (env, var) in cases {
        assert_start_error(env, var);
    }
}

/// URL-valued variables: a password in the user info never reaches the error line, and
/// a port outside 1-65535 is a start error (issue 19).
#[test]
fn url_errors_exit_2_without_the_password() {
    let base = [("OPR_PROXY_EXECUTORS", "a:1"), ("OPR_PROXY_SECRET", "s")];
    let cases = [
        ("OPR_PROXY_HEALTHCHECK_URL", "http://127.0.0.1:99999/ping"),
        ("OPR_PROXY_HEALTHCHECK_URL", "http://u:hunter2@h:99999/ping"),
        ("OPR_PROXY_EXECUTORS", "a:1,http://u:hunter2@b:80"),
        (
            "OPR_PROXY_LOGGING_ENDPOINT",
            "https://u:hunter2@relay.internal",
        ),
    ];
    for (var, value) in cases {
        let mut env = base.to_vec();
        env.push((var, value));
        env.push(("OPR_PROXY_LOGGING_CONFIG", "raygun://k"));
        let line = assert_start_error(&env, var);
        assert!(!line.contains("hunter2"), "{line}");
        if value.contains('@') {
            assert!(line.contains("<redacted>@"), "{line}");
        }
    }
}

#[test]
fn start_line_spells_the_algorithm_as_configured() {
    let a = mock("a");
    for algorithm in ["p2c", "least-request", "round-robin"] {
        let p = ProxyProcess::start(&[a.hostname()], &[("OPR_PROXY_ALGORITHM", algorithm)]);
        let want = format!(" executor(s), algorithm {algorithm}, health checks ");
        assert!(p.log().contains(&want), "{}", p.log());
    }
}

#[test]
fn sigterm_drains_and_exits_0() {
    let a = mock("a");
    let mut p = ProxyProcess::start(&[a.hostname()], &[]);
    // A request in flight when SIGTERM arrives still gets its answer.
    let addr = p.addr;
    let slow = std::thread::spawn(move || {
        Client::connect(addr).request(
            "GET",
            "/v1/sleep?ms=700",
            &[("Authorization", &bearer())],
            b"",
        )
    });
    // The mock counts the request once its head and body arrived: it is now in flight.
    assert!(eventually(Duration::from_secs(5), || a.requests() == 1));
    p.signal("TERM");
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log: {}",
        p.log()
    );
}

#[test]
fn hundred_mib_streams_with_flat_memory() {
    for splice in ["auto", "off"] {
        hundred_mib_streams(splice);
    }
}

fn hundred_mib_streams(splice: &str) {
    let a = mock("a");
    let p = ProxyProcess::start(
        &[a.hostname()],
        &[
            ("OPR_PROXY_MAX_BODY_SIZE", "0"),
            ("OPR_PROXY_SPLICE", splice),
        ],
    );
    let len: u64 = 100 * 1024 * 1024;
    let r = upload(p.addr, "/v1/upload", len, false);
    assert_eq!(r.status, 200);
    assert_eq!(r.json_sha(), pattern_sha256(len));
    let (status, got, sha, truncated) = download(p.addr, &format!("/v1/download?bytes={len}"));
    assert_eq!((status, got, truncated), (200, len, false));
    assert_eq!(sha, pattern_sha256(len));
    let peak = p.status_kib("VmHWM");
    assert!(
        peak < 40 * 1024,
        "splice {splice}: peak RSS {peak} KiB: bodies must not be buffered"
    );
}

/// The process opts out of transparent huge pages (mimalloc's 2 MiB-aligned arenas would
/// otherwise make every touched chunk 2 MiB of RSS), and 64 concurrent 4 MiB downloads
/// stay within one body buffer each.
#[test]
fn no_huge_pages_and_small_rss_under_concurrency() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
    let len: u64 = 4 * 1024 * 1024;
    let addr = p.addr;
    let clients: Vec<_> = (0..64)
        .map(|_| std::thread::spawn(move || download(addr, &format!("/v1/download?bytes={len}"))))
        .collect();
    for c in clients {
        let (status, got, sha, truncated) = c.join().unwrap();
        assert_eq!((status, got, truncated), (200, len, false));
        assert_eq!(sha, pattern_sha256(len));
    }
    let peak = p.status_kib("VmHWM");
    assert!(peak < 40 * 1024, "peak RSS {peak} KiB for 64 streams");
}

/// Docker's default seccomp profile refuses io_uring: the proxy must start on epoll, say
/// so, and serve; with `OPR_PROXY_IO_DRIVER=io_uring` it must refuse to start instead.
#[test]
fn io_uring_refused_falls_back_to_epoll() {
    let a = mock("a");
    let wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/no_uring.py");
    let p = ProxyProcess::start_wrapped(
        &["python3", wrapper],
        &[a.hostname()],
        &[("OPR_PROXY_IO_DRIVER", "auto")],
    );
    let r =
        Client::connect(p.addr).request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
    let log = p.log();
    assert!(log.contains("io_uring refused"), "{log}");
    assert!(log.contains("worker 0 serving with epoll"), "{log}");

    let out = std::process::Command::new("python3")
        .arg(wrapper)
        .arg(env!("CARGO_BIN_EXE_opr-proxy"))
        .env_clear()
        .envs([
            ("PORT", "0"),
            ("OPR_PROXY_HOST", "127.0.0.1"),
            ("OPR_PROXY_EXECUTORS", a.hostname().as_str()),
            ("OPR_PROXY_SECRET", "s"),
            ("OPR_PROXY_IO_DRIVER", "io_uring"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("io_uring: Operation not permitted"),
        "{stderr}"
    );
}

/// A kernel whose io_uring sets up rings but lacks the operations the proxy submits (as
/// 5.4: `IORING_REGISTER_PROBE` refused, so send, recv, close and read are missing; a
/// seccomp filter plays that kernel): under `auto` the proxy must say which and serve on
/// epoll; with `OPR_PROXY_IO_DRIVER=io_uring` it must exit 2 naming them (before the
/// probe it started on io_uring and kept running).
#[test]
fn io_uring_without_its_operations_falls_back_or_exits_2() {
    let a = mock("a");
    let wrapper = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/old_uring.py");
    let p = ProxyProcess::start_wrapped(
        &["python3", wrapper],
        &[a.hostname()],
        &[("OPR_PROXY_IO_DRIVER", "auto")],
    );
    let r =
        Client::connect(p.addr).request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
    let log = p.log();
    assert!(
        log.contains("WARN io driver: ")
            && log.contains("io_uring lacks send, recv, close, read (Linux 5.6)")
            && log.contains("falling back to epoll"),
        "{log}"
    );
    assert!(log.contains("worker 0 serving with epoll"), "{log}");

    let mut child = std::process::Command::new("python3")
        .arg(wrapper)
        .arg(env!("CARGO_BIN_EXE_opr-proxy"))
        .env_clear()
        .envs([
            ("PORT", "0"),
            ("OPR_PROXY_HOST", "127.0.0.1"),
            ("OPR_PROXY_EXECUTORS", a.hostname().as_str()),
            ("OPR_PROXY_SECRET", "s"),
            ("OPR_PROXY_IO_DRIVER", "io_uring"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a proxy that starts anyway is killed and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("opr-proxy:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("opr-proxy: invalid OPR_PROXY_IO_DRIVER=\"io_uring\": ")
            && lines[0].contains("lacks send, recv, close, read (Linux 5.6)")
            && lines[0].ends_with("allowed values are auto (falls back to epoll) and epoll"),
        "{stderr}"
    );
}

#[test]
fn sigint_exits_0_and_idle_connections_close() {
    let a = mock("a");
    let mut p = ProxyProcess::start(&[a.hostname()], &[("OPR_PROXY_IDLE_TIMEOUT", "600")]);
    // An idle keep-alive connection must not hold the drain for its idle timeout.
    let mut idle = Client::connect(p.addr);
    let r = idle.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
    let started = std::time::Instant::now();
    p.signal("INT");
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log: {}",
        p.log()
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(idle.is_closed());
}

/// As a container entrypoint the proxy is PID 1, where the kernel drops signals that have
/// no handler: SIGTERM must still drain and exit 0. A new PID namespace makes it PID 1.
#[test]
fn sigterm_as_pid_1_exits_0() {
    let a = mock("a");
    let mut p = ProxyProcess::start_wrapped(
        &["unshare", "--pid", "--fork", "--kill-child"],
        &[a.hostname()],
        &[],
    );
    let r =
        Client::connect(p.addr).request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
    // The proxy is the only child of unshare; in its own namespace it is PID 1.
    let children =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", p.pid())).unwrap();
    let proxy_pid: u32 = children.split_whitespace().next().unwrap().parse().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{proxy_pid}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "not PID 1 in its namespace: {nspid}"
    );
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &proxy_pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // unshare exits with its child's status.
    assert_eq!(
        p.wait_exit(Duration::from_secs(10)),
        Some(0),
        "log: {}",
        p.log()
    );
    assert!(p.log().contains("SIGTERM received"));
}

/// Regression (found by the soak): every client connection leaked ~5.5 KiB (its task was
/// kept alive by a waker registered for the stop signal). Memory must stay flat over many
/// short connections.
#[test]
fn short_connections_do_not_grow_memory() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[]);
    let cycle = |n: usize| {
        for _ in 0..n {
            let mut c = std::net::TcpStream::connect(p.addr).unwrap();
            let _ = std::io::Write::write_all(
                &mut c,
                b"GET /v1/proxy/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            );
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut c, &mut sink);
        }
    };
    cycle(1000);
    let before = p.status_kib("VmRSS");
    cycle(6000);
    let after = p.status_kib("VmRSS");
    // 6000 leaked tasks would be ~32 MiB; allocator slack stays far below 8 MiB.
    assert!(
        after < before + 8 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// The container HEALTHCHECK (`opr-proxy healthcheck`) probes the address the proxy
/// listens on: with `OPR_PROXY_HOST=127.0.0.2` a probe of 127.0.0.1 would fail.
#[test]
fn healthcheck_subcommand_probes_the_listen_address() {
    let a = mock("a");
    let p = ProxyProcess::start(&[a.hostname()], &[("OPR_PROXY_HOST", "127.0.0.2")]);
    assert_eq!(p.addr.ip().to_string(), "127.0.0.2");
    let port = p.addr.port().to_string();
    let run = |host: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_opr-proxy"));
        cmd.env_clear().arg("healthcheck").env("PORT", &port);
        if let Some(h) = host {
            cmd.env("OPR_PROXY_HOST", h);
        }
        cmd.output().expect("run opr-proxy healthcheck")
    };
    let ok = run(Some("127.0.0.2"));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Loopback 127.0.0.1 is where an any-address proxy is probed; nothing listens there.
    let miss = run(None);
    assert_eq!(miss.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&miss.stderr).contains("127.0.0.1:"));
}

/// Out of file descriptors: accept fails and the worker retries every 50 ms. The log says
/// so once (not a line per retry) and says when accepting works again.
#[test]
fn fd_exhaustion_is_logged_once_and_its_end_too() {
    let a = mock("a");
    let p = ProxyProcess::start_wrapped(
        &["sh", "-c", "ulimit -n 64 && exec \"$0\""],
        &[a.hostname()],
        &[],
    );
    // More connections than descriptors left: the rest wait in the backlog.
    let clients: Vec<std::net::TcpStream> = (0..80)
        .filter_map(|_| std::net::TcpStream::connect(p.addr).ok())
        .collect();
    p.wait_for_log("accept failed", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(600));
    let failed_lines = p.log().matches("accept failed").count();
    assert_eq!(failed_lines, 1, "log: {}", p.log());
    drop(clients);
    p.wait_for_log("accepting again after", Duration::from_secs(10));
    // Still serving.
    let mut c = Client::connect(p.addr);
    let r = c.request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
}

/// Executors that answer `/v1/health` with a plain `OK` (Open Runtimes executors since 0.17)
/// report no usage and no runtimes: the proxy says once that routing is blind and what to
/// set. Executors that report usage (the older JSON) get no such line.
#[test]
fn blind_routing_is_logged_once_when_executors_report_no_usage() {
    const LINE: &str = "Routing is blind to warm runtimes";
    let a = mock_with("a", HealthMode::Text);
    let b = mock_with("b", HealthMode::Text);
    let p = ProxyProcess::start(&[a.hostname(), b.hostname()], &[]);
    // The first round runs before the proxy listens: its line is already there.
    let log = p.log();
    assert_eq!(log.matches(LINE).count(), 1, "{log}");
    let line = log.lines().find(|l| l.contains(LINE)).unwrap();
    assert!(line.contains(" WARN "), "{line}");
    assert!(
        line.contains("OPR_PROXY_ALGORITHM=random requests"),
        "{line}"
    );
    assert!(line.contains("Set OPR_PROXY_ALGORITHM=affinity"), "{line}");
    assert!(line.contains("OPR_PROXY_EXECUTOR_CONCURRENCY"), "{line}");
    // Later rounds (every 200 ms) say nothing more.
    let seen = a.health_requests();
    assert!(eventually(Duration::from_secs(10), || a.health_requests() >= seen + 3));
    assert_eq!(p.log().matches(LINE).count(), 1, "{}", p.log());

    // One executor that reports usage is enough for the tiers: no line.
    let c = mock("c");
    let d = mock_with("d", HealthMode::Text);
    let p = ProxyProcess::start(&[c.hostname(), d.hostname()], &[]);
    let seen = c.health_requests();
    assert!(eventually(Duration::from_secs(10), || c.health_requests() >= seen + 3));
    assert!(!p.log().contains(LINE), "{}", p.log());

    // Every executor offline at first: decided on the first round with one online.
    let e = mock_with("e", HealthMode::Status(503));
    let p = ProxyProcess::start(&[e.hostname()], &[("OPR_PROXY_ALGORITHM", "p2c")]);
    assert!(!p.log().contains(LINE), "{}", p.log());
    e.set_health(HealthMode::Text);
    p.wait_for_log(LINE, Duration::from_secs(10));
    assert!(p.log().contains("OPR_PROXY_ALGORITHM=p2c requests"));
}

/// The later original's Redis DSN is accepted (the proxy starts and serves) and said once
/// to be unused, without its user-info.
#[test]
fn connections_state_is_accepted_and_logged_without_its_password() {
    let a = mock("a");
    let dsn = "redis://opr:hunter2@redis.internal:6379/0";
    let p = ProxyProcess::start(&[a.hostname()], &[("OPR_PROXY_CONNECTIONS_STATE", dsn)]);
    let r =
        Client::connect(p.addr).request("GET", "/v1/ping", &[("Authorization", &bearer())], b"");
    assert_eq!(r.status, 200);
    let log = p.log();
    assert_eq!(
        log.matches("OPR_PROXY_CONNECTIONS_STATE").count(),
        1,
        "{log}"
    );
    assert!(
        log.contains(
            "OPR_PROXY_CONNECTIONS_STATE=redis://<redacted>@redis.internal:6379/0 is not needed"
        ),
        "{log}"
    );
    assert!(!log.contains("hunter2") && !log.contains("opr:"), "{log}");
    assert!(!p.stdout().contains("hunter2"));
}
