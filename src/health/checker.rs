//! The checker: rounds that re-resolve and probe every executor at once, build the next
//! snapshot, log status changes and call `OPR_PROXY_HEALTHCHECK_URL`; and the
//! "opr-checker" thread that runs them every interval and publishes to the board.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use super::probe::{self, ProbeResult};
use super::streak::{self, Thresholds};
use crate::config::{Algorithm, Config, ExecutorAddr};
use crate::report::{self, reason, Report, Reporter};
use crate::snapshot::{Board, ExecutorId, ExecutorStatus, Snapshot};
use crate::{info, warn};

/// Longest DNS error text kept as a reason.
const MAX_DNS_REASON_CHARS: usize = 160;

/// Runs health rounds; owns the previous snapshot to number rounds and see changes.
pub(crate) struct Checker {
    settings: Settings,
    agent: ureq::Agent,
    /// Generation of the last snapshot built (or found on the board), 0 before any.
    generation: u64,
    previous: Option<Snapshot>,
    /// The configured algorithm until the first round with an online executor has been
    /// checked for blind routing (`blind_routing`); `None` after, and in unit tests.
    blind_check: Option<Algorithm>,
}

/// Algorithms that keep each runtime on the same executors without usage or runtime
/// reports from the executors: with these, the start-up warning of `blind_routing` is
/// not logged.
const WARM_WITHOUT_REPORTS: &[Algorithm] = &[Algorithm::Affinity];

/// What the first round with an online executor says about routing (`blind_routing`).
#[derive(Debug, PartialEq)]
enum Blind {
    /// No executor is online yet: nothing to tell.
    Wait,
    /// An online executor reported usage or runtimes, or the algorithm needs no reports.
    Fine,
    /// The warning to log once.
    Warn(String),
}

/// The part of `Config` the checker uses, copied once (tests build it directly).
struct Settings {
    targets: Vec<Target>,
    healthcheck: bool,
    interval: Duration,
    timeout: Duration,
    url: Option<String>,
    executor_secret: String,
    /// Consecutive results before a status changes (rise/fall).
    thresholds: Thresholds,
    /// Offline executors and healthcheck URL failures are reported (docs/behaviour.md §8).
    reporter: Reporter,
}

/// One executor as the checker sees it: what to resolve and what to call it.
struct Target {
    host: String,
    port: u16,
    /// `host:port` (`[v6]:port`): the probe's URL authority, and the `Host` sent for
    /// HTTP/1.0 clients.
    hostname: String,
    /// As the operator spelled it: the name the snapshot shows.
    name: String,
}

impl From<&ExecutorAddr> for Target {
    fn from(executor: &ExecutorAddr) -> Target {
        Target {
            host: executor.host.clone(),
            port: executor.port,
            hostname: executor.hostname(),
            name: executor.name.clone(),
        }
    }
}

impl Checker {
    pub(crate) fn new(config: Arc<Config>, reporter: Reporter) -> Checker {
        let mut checker = Checker::with_settings(Settings {
            targets: config.executors.iter().map(Target::from).collect(),
            healthcheck: config.healthcheck,
            interval: config.healthcheck_interval,
            timeout: config.healthcheck_timeout,
            url: config.healthcheck_url.clone(),
            executor_secret: config.executor_secret.clone(),
            thresholds: Thresholds {
                rise: config.healthcheck_rise,
                fall: config.healthcheck_fall,
            },
            reporter,
        });
        checker.blind_check = Some(config.algorithm);
        checker
    }

    fn with_settings(settings: Settings) -> Checker {
        Checker {
            agent: probe::agent(settings.timeout),
            settings,
            generation: 0,
            previous: None,
            blind_check: None,
        }
    }

    /// One round: resolve and probe every executor in parallel, build the next snapshot,
    /// log changes, then call the healthcheck URL if every executor is online.
    pub(crate) fn round(&mut self) -> Snapshot {
        let (snapshot, _) = self.check();
        self.notify(&snapshot);
        snapshot
    }

    /// Run rounds every interval on the "opr-checker" thread, publishing each snapshot.
    ///
    /// The board already holds the first round's snapshot (main runs it before accepting
    /// connections), so the thread waits one interval before its first round.
    ///
    /// # Panics
    /// If the OS cannot start a thread (as `std::thread::spawn` does).
    pub(crate) fn spawn(mut self, board: Arc<Board>) -> CheckerHandle {
        // Generations must keep growing even if the board was seeded elsewhere.
        self.generation = self.generation.max(board.load().generation);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("opr-checker".to_string())
            .spawn(move || self.run(&board, &stopped))
            .expect("cannot start the opr-checker thread");
        CheckerHandle { stop, thread }
    }

    fn run(mut self, board: &Board, stopped: &mpsc::Receiver<()>) {
        let interval = self.settings.interval;
        let mut next = Instant::now() + interval;
        loop {
            // Rounds start every interval; a round longer than that is followed at once.
            match stopped.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            next = Instant::now() + interval;
            let (snapshot, previous) = self.check();
            // Stopped while probing: publish nothing, call nothing.
            if !matches!(stopped.try_recv(), Err(TryRecvError::Empty)) {
                return;
            }
            board.publish(snapshot.clone());
            for line in clear_flags(board, previous.as_ref(), &snapshot) {
                info!("{line}");
            }
            self.notify(&snapshot);
        }
    }

    /// Resolve and probe every executor (one thread each), number the snapshot and log.
    /// Returns the new snapshot and the one before it (what the logged changes are from).
    fn check(&mut self) -> (Snapshot, Option<Snapshot>) {
        let previous = self.previous.as_ref();
        let settings = &self.settings;
        let agent = &self.agent;
        let executors = thread::scope(|scope| {
            let pending: Vec<_> = settings
                .targets
                .iter()
                .enumerate()
                .map(|(index, target)| {
                    let before = previous.and_then(|p| p.executors.get(index));
                    let job = move || check_one(settings, agent, target, before);
                    // If no thread can be had, check this executor on the current one.
                    thread::Builder::new()
                        .name("opr-probe".to_string())
                        .spawn_scoped(scope, job)
                        .map_err(|_| job)
                })
                .collect();
            pending
                .into_iter()
                .zip(&settings.targets)
                .map(|(pending, target)| match pending {
                    Ok(handle) => handle.join().unwrap_or_else(|_| {
                        failed(target, "health check failed unexpectedly".to_string())
                    }),
                    Err(job) => job(),
                })
                .collect()
        });
        self.generation += 1;
        let snapshot = Snapshot::new(self.generation, executors);
        let rise = self.settings.thresholds.rise;
        for (online, line) in status_lines(self.previous.as_ref(), &snapshot, rise) {
            if online {
                info!("{line}");
            } else {
                warn!("{line}");
            }
        }
        // The original reports every offline executor of the first round and each
        // executor that goes offline later: the `false` lines above.
        for e in went_offline(self.previous.as_ref(), &snapshot) {
            self.settings.reporter.report(Report::HealthCheckError {
                executor: e.hostname.clone(),
                reason: e.last_error.clone().unwrap_or_default(),
                worker: None,
            });
        }
        if let Some(algorithm) = self.blind_check {
            match blind_routing(algorithm, self.settings.healthcheck, &snapshot) {
                Blind::Wait => {}
                Blind::Fine => self.blind_check = None,
                Blind::Warn(line) => {
                    warn!("{line}");
                    self.blind_check = None;
                }
            }
        }
        let previous = self.previous.replace(snapshot.clone());
        (snapshot, previous)
    }

    /// GET the healthcheck URL after a round in which every executor passed its probe.
    /// Only with health checks enabled: otherwise nothing was checked.
    fn notify(&self, snapshot: &Snapshot) {
        let Some(url) = self.settings.url.as_deref() else {
            return;
        };
        let all_online =
            !snapshot.executors.is_empty() && snapshot.executors.iter().all(|e| e.online);
        if url.is_empty() || !self.settings.healthcheck || !all_online {
            return;
        }
        // The URL may carry a token: log the failure, never the URL.
        let reason = match self.agent.get(url).call() {
            Ok(response) if response.status().is_success() => return,
            Ok(response) => {
                let status = response.status().as_u16();
                warn!("Healthcheck URL call returned status {status}");
                format!("status {status}")
            }
            Err(err) => {
                let reason = reason::describe(&err, &self.agent);
                warn!("Healthcheck URL call failed: {reason}");
                reason
            }
        };
        // The report names the URL without user info, query or fragment.
        self.settings.reporter.report(Report::HealthcheckUrlFailed {
            url: report::redact_url(url),
            reason,
        });
    }
}

/// Resolve one executor again, probe it (when enabled) and describe it for the snapshot,
/// its status settled by rise/fall.
fn check_one(
    settings: &Settings,
    agent: &ureq::Agent,
    target: &Target,
    previous: Option<&ExecutorStatus>,
) -> ExecutorStatus {
    let started = Instant::now();
    let mut status = probe_one(settings, agent, target, previous);
    status.probe_seconds = started.elapsed().as_secs_f64();
    status.probe_failures = previous.map_or(0, |p| p.probe_failures) + u64::from(!status.online);
    streak::settle(previous, status, settings.thresholds)
}

/// Resolve and probe one executor.
fn probe_one(
    settings: &Settings,
    agent: &ureq::Agent,
    target: &Target,
    previous: Option<&ExecutorStatus>,
) -> ExecutorStatus {
    let addrs = match resolve(target) {
        Ok(addrs) => addrs,
        Err(reason) => {
            let mut status = failed(target, reason);
            // Workers keep connecting somewhere useful if DNS fails only for a while.
            status.addrs = previous.map(|p| p.addrs.clone()).unwrap_or_default();
            return status;
        }
    };
    let result = if settings.healthcheck {
        probe::probe(agent, &target.hostname, &settings.executor_secret)
    } else {
        ProbeResult::online_unknown()
    };
    ExecutorStatus {
        hostname: target.name.clone(),
        authority: target.hostname.clone(),
        online: result.online,
        state_status: result.state_status,
        usage: result.usage,
        runtimes: result.runtimes,
        addrs,
        last_check: Some(SystemTime::now()),
        last_error: result.error,
        ..ExecutorStatus::default()
    }
}

/// The executor's addresses now (std resolver; an IP literal resolves to itself).
fn resolve(target: &Target) -> Result<Vec<SocketAddr>, String> {
    // Tolerate a bracketed IPv6 host; the resolver wants it bare.
    let host = target.host.trim_start_matches('[').trim_end_matches(']');
    match (host, target.port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() {
                Err("DNS lookup found no address".to_string())
            } else {
                Ok(addrs)
            }
        }
        Err(err) => Err(reason::truncate(
            &format!("DNS lookup failed: {err}"),
            MAX_DNS_REASON_CHARS,
        )),
    }
}

/// An offline executor with no addresses; the caller may keep older ones.
fn failed(target: &Target, reason: String) -> ExecutorStatus {
    ExecutorStatus {
        hostname: target.name.clone(),
        authority: target.hostname.clone(),
        online: false,
        state_status: None,
        usage: None,
        runtimes: Default::default(),
        addrs: Vec::new(),
        last_check: Some(SystemTime::now()),
        last_error: Some(reason),
        ..ExecutorStatus::default()
    }
}

/// Log lines for a new snapshot, each with `true` when it is good news (info) and
/// `false` for bad news (warn): every status after the first round, then only changes
/// (with `rise` over 1, going online says after how many passing checks; going offline
/// after several failed ones is in the reason, see `streak::settle`).
fn status_lines(previous: Option<&Snapshot>, next: &Snapshot, rise: u32) -> Vec<(bool, String)> {
    let reason = |e: &ExecutorStatus| e.last_error.clone().unwrap_or_default();
    let Some(previous) = previous else {
        return next
            .executors
            .iter()
            .map(|e| {
                if e.online {
                    let usage = e.usage.map_or("unknown".to_string(), |u| format!("{u}%"));
                    let line = format!(
                        "Executor \"{}\" is online (usage {usage}, runtimes {})",
                        e.hostname,
                        e.runtimes.len()
                    );
                    (true, line)
                } else {
                    (
                        false,
                        format!("Executor \"{}\" is offline: {}", e.hostname, reason(e)),
                    )
                }
            })
            .collect();
    };
    next.ids()
        .zip(&next.executors)
        .filter(|(index, e)| changed(previous, *index, e))
        .map(|(_, e)| {
            if e.online && rise > 1 {
                let line = format!(
                    "Executor \"{}\" went online: {rise} passing checks",
                    e.hostname
                );
                (true, line)
            } else if e.online {
                (true, format!("Executor \"{}\" went online", e.hostname))
            } else {
                (
                    false,
                    format!("Executor \"{}\" went offline: {}", e.hostname, reason(e)),
                )
            }
        })
        .collect()
}

/// The executors `status_lines` logs as offline (a warning): every offline one after the
/// first round, then each that went offline.
fn went_offline<'a>(
    previous: Option<&'a Snapshot>,
    next: &'a Snapshot,
) -> impl Iterator<Item = &'a ExecutorStatus> {
    let executors = next.ids().zip(&next.executors);
    executors
        .filter(move |(index, e)| !e.online && previous.is_none_or(|p| changed(p, *index, e)))
        .map(|(_, e)| e)
}

/// Whether the transition lines for `next` (`status_lines`) report executor `index`
/// changing status since `previous`, which is every status of the first round.
fn changed(previous: &Snapshot, index: ExecutorId, next: &ExecutorStatus) -> bool {
    previous.executors.get(index.index()).map(|p| p.online) != Some(next.online)
}

/// After `next` is published: clears the worker flag of every executor whose probe
/// passed this round (online with no contrary result: a failed probe that FALL holds
/// online does not clear it), and
/// returns a `went online` line (info, like the transition lines) for each flag that was
/// set — a worker took the executor offline and logged it — unless this round's
/// transition lines from `previous` already said it went online. Without this, an
/// executor flagged between two passing rounds would come back silently (docs/behaviour.md §6: every
/// change is logged).
fn clear_flags(board: &Board, previous: Option<&Snapshot>, next: &Snapshot) -> Vec<String> {
    let mut lines = Vec::new();
    for (index, e) in next.ids().zip(&next.executors) {
        if !e.online || e.contrary > 0 || !board.clear_offline(index) {
            continue;
        }
        let logged = previous.is_some_and(|p| changed(p, index, e));
        if !logged {
            lines.push(format!("Executor \"{}\" went online", e.hostname));
        }
    }
    lines
}

/// Whether routing can follow warm runtimes: the tiers need executors that report usage
/// or runtimes in `GET /v1/health`; Open Runtimes executors since 0.17 answer a plain
/// `OK`, and then every executor is "online, usage unknown" and requests for one runtime
/// spread over all of them (each cold-starts it). Decided on the first snapshot with an
/// online executor.
fn blind_routing(algorithm: Algorithm, healthcheck: bool, snapshot: &Snapshot) -> Blind {
    let mut online = snapshot.executors.iter().filter(|e| e.online).peekable();
    if online.peek().is_none() {
        return Blind::Wait;
    }
    let reported = online.any(|e| e.usage.is_some() || !e.runtimes.is_empty());
    if reported || WARM_WITHOUT_REPORTS.contains(&algorithm) {
        return Blind::Fine;
    }
    let why = if healthcheck {
        "no online executor reported usage or runtimes in GET /v1/health (executors since \
         0.17 answer a plain OK)"
    } else {
        "health checks are disabled (no executor is asked for usage or runtimes)"
    };
    Blind::Warn(format!(
        "Routing is blind to warm runtimes: {why}, so with OPR_PROXY_ALGORITHM={} requests \
         for one runtime spread over every executor and each cold-starts it. Set \
         OPR_PROXY_ALGORITHM=affinity to keep each runtime on the same executors, and \
         optionally OPR_PROXY_EXECUTOR_CONCURRENCY=<N> to cap the requests in flight to \
         each executor",
        algorithm.as_str()
    ))
}

/// Stops the checker thread.
#[must_use = "dropping the handle stops the checker"]
pub(crate) struct CheckerHandle {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl CheckerHandle {
    /// Signal the thread and wait for it: returns within the in-flight round's probes.
    pub(crate) fn stop(self) {
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            crate::error!("Health checker thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    use std::time::Duration;

    /// A tiny HTTP server on 127.0.0.1:0: answers every request with the current
    /// `response` (switchable by the test) and counts the requests.
    struct Server {
        addr: SocketAddr,
        response: Arc<Mutex<Vec<u8>>>,
        hits: Arc<AtomicUsize>,
    }

    impl Server {
        fn start(status: &str, body: &str) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let response = Arc::new(Mutex::new(Vec::new()));
            let hits = Arc::new(AtomicUsize::new(0));
            let (shared, counter) = (response.clone(), hits.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { continue };
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let answer = shared.lock().expect("lock").clone();
                    let _ = stream.write_all(&answer);
                }
            });
            let server = Server {
                addr,
                response,
                hits,
            };
            server.answer(status, body);
            server
        }

        fn answer(&self, status: &str, body: &str) {
            *self.response.lock().expect("lock") = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes();
        }

        fn executor(&self) -> ExecutorAddr {
            ExecutorAddr {
                host: self.addr.ip().to_string(),
                port: self.addr.port(),
                name: self.addr.to_string(),
            }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    fn free_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    }

    /// A checker over `executors` (interval 20 ms, timeout 2 s).
    fn checker_for(executors: &[ExecutorAddr], healthcheck: bool, url: Option<String>) -> Checker {
        Checker::with_settings(Settings {
            targets: executors.iter().map(Target::from).collect(),
            healthcheck,
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            url,
            executor_secret: "secret".to_string(),
            thresholds: Thresholds::default(),
            reporter: Reporter::default(),
        })
    }

    /// `checker_for` with a reporter whose reports the test reads.
    fn reporting_checker_for(
        executors: &[ExecutorAddr],
        url: Option<String>,
    ) -> (Checker, report::Captured) {
        let (reporter, captured) = report::capture();
        let mut checker = checker_for(executors, true, url);
        checker.settings.reporter = reporter;
        (checker, captured)
    }

    fn offline_report(executor: &str, reason: &str) -> Report {
        Report::HealthCheckError {
            executor: executor.to_string(),
            reason: reason.to_string(),
            worker: None,
        }
    }

    fn local(port: u16) -> ExecutorAddr {
        ExecutorAddr {
            host: "127.0.0.1".to_string(),
            port,
            name: format!("127.0.0.1:{port}"),
        }
    }

    const PASS: &str =
        r#"{"status":"pass","usage":30,"runtimes":{"r1":{"status":"pass","usage":5}}}"#;

    #[test]
    fn blind_routing_is_told_once_an_executor_is_online() {
        let status = |online: bool, usage: Option<u8>, runtime: bool| ExecutorStatus {
            online,
            usage,
            runtimes: if runtime {
                let warm = crate::snapshot::RuntimeState {
                    status: "pass".to_string(),
                    usage: 0,
                };
                [("r1".to_string(), warm)].into_iter().collect()
            } else {
                Default::default()
            },
            ..ExecutorStatus::default()
        };
        let snapshot = |executors| Snapshot::new(1, executors);
        let blind = |executors, healthcheck| {
            blind_routing(Algorithm::P2c, healthcheck, &snapshot(executors))
        };
        assert_eq!(blind(vec![], true), Blind::Wait);
        assert_eq!(blind(vec![status(false, None, false)], true), Blind::Wait);
        let plain_ok = vec![status(true, None, false), status(false, Some(10), true)];
        let Blind::Warn(line) = blind(plain_ok, true) else {
            panic!("plain OK executors are blind routing")
        };
        assert!(line.contains("OPR_PROXY_ALGORITHM=p2c requests"), "{line}");
        assert!(line.contains("Set OPR_PROXY_ALGORITHM=affinity"), "{line}");
        assert!(line.contains("OPR_PROXY_EXECUTOR_CONCURRENCY"), "{line}");
        let Blind::Warn(line) = blind(vec![status(true, None, false)], false) else {
            panic!("disabled health checks are blind routing")
        };
        assert!(line.contains("health checks are disabled"), "{line}");
        // One online executor with usage (or runtimes) is enough to route by the tiers.
        let mixed = vec![status(true, None, false), status(true, Some(0), false)];
        assert_eq!(blind(mixed, true), Blind::Fine);
        let runtimes = vec![status(true, None, true)];
        assert_eq!(blind(runtimes, true), Blind::Fine);
    }

    #[test]
    fn round_with_one_executor_up_and_one_down() {
        let up = Server::start("200 OK", PASS);
        let down_port = free_port();
        let executors = [up.executor(), local(down_port)];
        let (mut checker, reports) = reporting_checker_for(&executors, None);

        let first = checker.round();
        assert_eq!(first.generation, 1);
        let (a, b) = (&first.executors[0], &first.executors[1]);
        assert_eq!(a.hostname, up.addr.to_string());
        assert!(a.online);
        assert_eq!(a.state_status.as_deref(), Some("pass"));
        assert_eq!(a.usage, Some(30));
        assert_eq!(a.runtimes["r1"].usage, 5);
        assert_eq!(a.addrs, vec![up.addr]);
        assert!(a.last_check.is_some());
        assert_eq!(a.last_error, None);
        assert_eq!(b.hostname, format!("127.0.0.1:{down_port}"));
        assert!(!b.online);
        assert_eq!(b.last_error.as_deref(), Some("connection refused"));
        assert_eq!(b.addrs.len(), 1);

        // The first round lists every executor once and reports the offline one.
        let down = format!("127.0.0.1:{down_port}");
        assert_eq!(
            reports.take(),
            vec![offline_report(&down, "connection refused")]
        );
        let lines = status_lines(None, &first, 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0],
            (
                true,
                format!("Executor \"{}\" is online (usage 30%, runtimes 1)", up.addr)
            )
        );
        assert_eq!(
            lines[1],
            (
                false,
                format!("Executor \"127.0.0.1:{down_port}\" is offline: connection refused")
            )
        );

        // The first executor fails; the second is unchanged: one transition.
        up.answer("200 OK", r#"{"status":"fail"}"#);
        let second = checker.round();
        assert_eq!(second.generation, 2);
        assert!(!second.executors[0].online);
        assert_eq!(
            second.executors[0].last_error.as_deref(),
            Some(r#"executor reported status "fail""#)
        );
        assert_eq!(
            status_lines(Some(&first), &second, 1),
            vec![(
                false,
                format!(
                    "Executor \"{}\" went offline: executor reported status \"fail\"",
                    up.addr
                )
            )]
        );

        let up_name = up.addr.to_string();
        let failed = r#"executor reported status "fail""#;
        assert_eq!(reports.take(), vec![offline_report(&up_name, failed)]);

        up.answer("200 OK", "OK");
        let third = checker.round();
        assert_eq!(third.generation, 3);
        assert!(third.executors[0].online);
        assert_eq!(third.executors[0].usage, None);
        assert_eq!(
            status_lines(Some(&second), &third, 1),
            vec![(true, format!("Executor \"{}\" went online", up.addr))]
        );
        assert!(status_lines(Some(&third), &third, 1).is_empty());
        assert_eq!(up.hits(), 3);
        // Going online is not an error: nothing more is reported.
        assert!(reports.take().is_empty());
    }

    fn status(hostname: &str, online: bool) -> ExecutorStatus {
        let target = Target {
            host: hostname.to_string(),
            port: 80,
            hostname: hostname.to_string(),
            name: hostname.to_string(),
        };
        let mut status = failed(&target, "connection refused".to_string());
        status.online = online;
        status
    }

    #[test]
    fn cleared_worker_flags_are_logged_once() {
        let snapshot = |generation, online: [bool; 4]| {
            let names = ["a:80", "b:80", "c:80", "d:80"];
            Snapshot::new(
                generation,
                names
                    .iter()
                    .zip(online)
                    .map(|(n, o)| status(n, o))
                    .collect(),
            )
        };
        let previous = snapshot(1, [true, false, true, true]);
        let next = snapshot(2, [true, true, false, true]);
        let board = Board::new(previous.clone());
        // a: flagged by a worker between two passing rounds, the checker saw no change.
        // b: flagged, and the round's own transition line says it went online.
        // c: flagged and still failing. d: never flagged.
        for index in 0..3 {
            assert!(board.flag_offline(ExecutorId::new(index)));
        }
        assert_eq!(
            status_lines(Some(&previous), &next, 1),
            vec![
                (true, "Executor \"b:80\" went online".to_string()),
                (
                    false,
                    "Executor \"c:80\" went offline: connection refused".to_string()
                ),
            ]
        );
        assert_eq!(
            clear_flags(&board, Some(&previous), &next),
            vec!["Executor \"a:80\" went online".to_string()]
        );
        assert!(!board.is_flagged_offline(ExecutorId::new(0)));
        assert!(!board.is_flagged_offline(ExecutorId::new(1)));
        assert!(
            board.is_flagged_offline(ExecutorId::new(2)),
            "still offline: flag kept"
        );
        assert!(!board.is_flagged_offline(ExecutorId::new(3)));
        // Cleared once: the next round says nothing more.
        assert!(clear_flags(&board, Some(&next), &next).is_empty());
        // The checker's first round (no previous) lists statuses, not changes.
        board.flag_offline(ExecutorId::new(3));
        assert_eq!(
            clear_flags(&board, None, &next),
            vec!["Executor \"d:80\" went online".to_string()]
        );
    }

    #[test]
    fn rise_and_fall_hold_the_status_and_log_the_change_once() {
        let a = Server::start("200 OK", "OK");
        let mut checker = checker_for(&[a.executor()], true, None);
        checker.settings.thresholds = Thresholds { rise: 2, fall: 2 };
        let board = Board::new(checker.round());
        let round = |checker: &mut Checker| {
            let (next, previous) = checker.check();
            let lines = status_lines(previous.as_ref(), &next, 2);
            board.publish(next.clone());
            let cleared = clear_flags(&board, previous.as_ref(), &next);
            (next, lines, cleared)
        };
        assert!(board.load().executors[0].online);
        // One failed probe: still online, and a worker's flag is not cleared by it.
        a.answer("503 Service Unavailable", "");
        board.flag_offline(ExecutorId::new(0));
        let (s, lines, cleared) = round(&mut checker);
        assert!(s.executors[0].online && lines.is_empty() && cleared.is_empty());
        assert!(board.is_flagged_offline(ExecutorId::new(0)));
        // The second in a row: offline, one line with the count and the last cause.
        let (s, lines, _) = round(&mut checker);
        assert!(!s.executors[0].online);
        let why = "2 failed checks (last: health check returned status 503)";
        let host = a.addr.to_string();
        let line = format!("Executor \"{host}\" went offline: {why}");
        assert_eq!(lines, vec![(false, line)]);
        // One pass: still offline; the second: online, logged once.
        a.answer("200 OK", "OK");
        let (s, lines, cleared) = round(&mut checker);
        assert!(!s.executors[0].online && lines.is_empty() && cleared.is_empty());
        let (s, lines, cleared) = round(&mut checker);
        assert!(s.executors[0].online);
        let line = format!("Executor \"{host}\" went online: 2 passing checks");
        assert_eq!(lines, vec![(true, line)]);
        assert!(cleared.is_empty(), "already logged by the transition line");
        assert!(!board.is_flagged_offline(ExecutorId::new(0)));
        let (_, lines, _) = round(&mut checker);
        assert!(lines.is_empty());
    }

    #[test]
    fn disabled_mode_probes_nothing_but_resolves() {
        let up = Server::start("500 Internal Server Error", "");
        let unresolvable = ExecutorAddr {
            host: "nonexistent.invalid".to_string(),
            port: 80,
            name: "nonexistent.invalid".to_string(),
        };
        let mut checker = checker_for(
            &[up.executor(), local(free_port()), unresolvable],
            false,
            None,
        );
        let snapshot = checker.round();
        assert_eq!(snapshot.generation, 1);
        for executor in &snapshot.executors[..2] {
            assert!(executor.online);
            assert_eq!(executor.usage, None);
            assert!(executor.runtimes.is_empty());
            assert_eq!(executor.addrs.len(), 1);
            assert_eq!(executor.last_error, None);
        }
        let dns = &snapshot.executors[2];
        // Shown as spelled, reached at host:port.
        assert_eq!(dns.hostname, "nonexistent.invalid");
        assert_eq!(dns.authority, "nonexistent.invalid:80");
        assert!(!dns.online);
        assert!(dns.addrs.is_empty());
        let reason = dns.last_error.as_deref().unwrap_or_default();
        assert!(reason.starts_with("DNS lookup failed"), "{reason}");
        assert_eq!(up.hits(), 0);
    }

    #[test]
    fn failed_resolution_keeps_the_previous_addresses() {
        let executor = ExecutorAddr {
            host: "nonexistent.invalid".to_string(),
            port: 8080,
            name: "nonexistent.invalid:8080".to_string(),
        };
        let mut checker = checker_for(&[executor], true, None);
        let mut before = failed(&checker.settings.targets[0], "old".to_string());
        before.online = true;
        before.addrs = vec![SocketAddr::from(([10, 0, 0, 7], 8080))];
        checker.previous = Some(Snapshot::new(4, vec![before.clone()]));
        checker.generation = 4;
        let snapshot = checker.round();
        assert_eq!(snapshot.generation, 5);
        assert!(!snapshot.executors[0].online);
        assert_eq!(snapshot.executors[0].addrs, before.addrs);
    }

    #[test]
    fn ipv6_executor_is_probed_by_bracketed_hostname() {
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 loopback here
        };
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let executor = ExecutorAddr {
            host: "::1".to_string(),
            port,
            name: format!("[::1]:{port}"),
        };
        let snapshot = checker_for(&[executor], true, None).round();
        let e = &snapshot.executors[0];
        assert_eq!(e.hostname, format!("[::1]:{port}"));
        assert_eq!(
            e.addrs,
            vec![SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 1], port))]
        );
        assert_eq!(e.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn healthcheck_url_is_called_only_when_all_are_online() {
        let a = Server::start("200 OK", PASS);
        let b = Server::start("200 OK", "OK");
        let hook = Server::start("200 OK", "");
        let url = format!("http://user:pw@{}/ping?token=t", hook.addr);
        let executors = [a.executor(), b.executor()];
        let (mut checker, reports) = reporting_checker_for(&executors, Some(url.clone()));

        checker.round();
        assert_eq!(hook.hits(), 1);
        b.answer("503 Service Unavailable", "");
        checker.round();
        assert_eq!(hook.hits(), 1);
        b.answer("200 OK", "OK");
        checker.round();
        assert_eq!(hook.hits(), 2);

        // b going offline was reported; the calls that worked were not.
        let b_reason = "health check returned status 503";
        assert_eq!(
            reports.take(),
            vec![offline_report(&b.addr.to_string(), b_reason)]
        );

        // A failing URL is a warning and a report naming the URL without its secrets;
        // an empty one is no URL.
        hook.answer("500 Internal Server Error", "");
        checker.round();
        assert_eq!(hook.hits(), 3);
        let failed = Report::HealthcheckUrlFailed {
            url: format!("http://{}/ping", hook.addr),
            reason: "status 500".to_string(),
        };
        assert_eq!(reports.take(), vec![failed]);
        let mut quiet = checker_for(&[a.executor()], true, Some(String::new()));
        assert!(quiet.round().executors[0].online);
        let refused_port = free_port();
        let refused_url = format!("http://127.0.0.1:{refused_port}/");
        let (mut refused, reports) = reporting_checker_for(&[a.executor()], Some(refused_url));
        assert!(refused.round().executors[0].online);
        let failed = Report::HealthcheckUrlFailed {
            url: format!("http://127.0.0.1:{refused_port}/"),
            reason: "connection refused".to_string(),
        };
        assert_eq!(reports.take(), vec![failed]);

        // Disabled health checks check nothing, so they vouch for nothing.
        let mut disabled = checker_for(&[a.executor()], false, Some(url));
        disabled.round();
        assert_eq!(hook.hits(), 3);
    }

    #[test]
    fn spawned_checker_publishes_clears_flags_and_stops_promptly() {
        let up = Server::start("200 OK", PASS);
        let down = local(free_port());
        let mut checker = checker_for(&[up.executor(), down], true, None);
        let board = Board::new(checker.round());
        board.flag_offline(ExecutorId::new(0));
        board.flag_offline(ExecutorId::new(1));
        let handle = checker.spawn(board.clone());

        let deadline = Instant::now() + Duration::from_secs(2);
        while board.load().generation < 3 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        let snapshot = board.load();
        assert!(
            snapshot.generation >= 3,
            "generation {}",
            snapshot.generation
        );
        assert!(!board.is_flagged_offline(ExecutorId::new(0)));
        assert!(
            board.is_flagged_offline(ExecutorId::new(1)),
            "an offline executor keeps its flag"
        );

        let started = Instant::now();
        handle.stop();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn stop_does_not_wait_for_the_interval() {
        let up = Server::start("200 OK", "OK");
        let mut checker = checker_for(&[up.executor()], true, None);
        checker.settings.interval = Duration::from_secs(60);
        let board = Board::new(checker.round());
        let handle = checker.spawn(board.clone());
        thread::sleep(Duration::from_millis(10));
        let started = Instant::now();
        handle.stop();
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(board.load().generation, 1);
        assert_eq!(up.hits(), 1);
    }

    #[test]
    fn spawn_continues_the_board_generation() {
        let up = Server::start("200 OK", "OK");
        let mut seed = checker_for(&[up.executor()], true, None).round();
        let checker = checker_for(&[up.executor()], true, None);
        seed.generation = 40;
        let board = Board::new(seed);
        let handle = checker.spawn(board.clone());
        let deadline = Instant::now() + Duration::from_secs(2);
        while board.load().generation == 40 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        handle.stop();
        assert!(board.load().generation > 40);
    }
}
