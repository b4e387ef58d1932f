//! Command line of the `loadtest` binary: options, their defaults and validation (pure, so
//! it is unit-tested; the binary only orchestrates).

use crate::plan::{Scenario, SearchRules, DEFAULT_PLAN, DEFAULT_REPEATS, DEFAULT_RULES};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
loadtest: capacity planning for opr-proxy (load generator, capacity report)

usage: loadtest [options]

modes:
  --mode plan          (default) per scenario: closed-loop probe, then open-loop steps
                       until p99 passes the SLO or errors appear; writes
                       loadtest-report.md and loadtest-report.svg
  --mode closed        one closed-loop run per scenario and connection count
  --mode open          one open-loop run at --rate per scenario and connection count
  --mode idle          open --connections [10000] keep-alive connections one by one, one
                       request (--scenario, ping) on each, hold them idle --hold seconds
                       and report the proxy's RSS growth per connection (needs the proxy's
                       PIDs: a spawned proxy, or --proxy-pid with --url; raise `ulimit -n`
                       above the connection count)

target (default: 2 in-process mock executors and opr-proxy, all on 127.0.0.1):
  --proxy-bin PATH     proxy binary [target/release/opr-proxy]
  --cores N            proxy workers, OPR_PROXY_CORES [1]
  --executors N        mock executors [2]
  --slow-executor MS   the first mock executor waits MS ms before every answer (needs
                       --mock std); closed/open runs print requests per executor
  --slow-queue         ... and serves one request at a time (capacity 1000/MS req/s):
                       requests queue on it under load, like an overloaded host
  --mock fast|std      fast: monoio mock, one thread each; std: the std-threads
                       MockExecutor (a thread per connection, costlier) [fast]
  --warm-capacity K    fast mocks: at most K runtimes warm each (least recently used
                       evicted); needs --cold-start-ms
  --cold-start-ms C    fast mocks: a request for a cold runtime waits C ms first
  --service-ms S       fast mocks: every request takes S ms once its runtime is warm [0]
  --mock-concurrency M fast mocks: at most M requests run at once, the rest wait in
                       arrival order (0: no limit) [0]
  --proxy-env K=V      extra proxy environment (repeatable)
  --pin auto|off       auto: proxy on the first --cores CPUs, generator and mocks on the
                       others (taskset) [auto]
  --proxy-cpus LIST    CPUs for the spawned proxy (e.g. 0 or 0-1); with --url: where the
                       proxy runs, to report how busy those CPUs were
  --direct             load the mock executors directly, no proxy (the client-side ceiling)
  --url URL            load a running deployment instead (http://host:port)
  --secret KEY         key sent as `Authorization: Bearer KEY` with --url
  --proxy-pid PIDS     comma list of processes whose CPU time is the proxy's (with --url)
  --allow-remote       permit a --url that is not loopback

load:
  --scenario LIST      comma list of ping, download-64k, download-1m, upload-1m, or all
                       [plan: ping@256,1024 download-64k@256,1024 download-1m@256
                       upload-1m@256; other modes: ping]
  --connections LIST   comma list [plan: as above; other modes: 256]
  --threads N          generator threads, one monoio runtime each [1]
  --rate R             offered requests/s for --mode open
  --duration SECS      measured window: per step in plan mode [4], per run otherwise [10]
  --warmup SECS        load before each window [0.5]
  --timeout SECS       per request [5]
  --runtimes R         send x-opr-runtime-id rt-1..rt-R drawn by Zipf popularity and
                       print a COLDSTART line (cold starts, executor shares, 503s)
  --zipf S             popularity exponent: rank k drawn ∝ k^-S [1.0]
  --seed N             draws of connection c start from seed N+c (reproducible) [1]
  --stop-executor I    with --runtimes: after the run stop mock executor I, wait
                       --settle, run again and report the runtimes that moved
  --settle SECS        wait after stopping the executor [1]
  --moved-min N        count a runtime as moved or not only when it was answered at
                       least N times in each phase [5]
  --hold SECS          idle mode: wait before reading the proxy's RSS [1]
  --slo-p99 MS         latency objective for p99 [10]
  --target-rps N       capacity asked about in the summary [100000]
  --resolution PCT     plan mode: bisect until the pass-fail bracket is narrower than
                       PCT % of the failing rate [5]
  --max-steps N        plan mode: open-loop steps at most per search [18]
  --no-confirm         plan mode: do not try the answer a second time
  --repeat N           plan mode: searches per scenario; the summary gives the median
                       and range of their answers [3]
  --out DIR            where the report files go [.]
  --no-baseline        plan mode: skip the client-side ceiling run
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Closed,
    Open,
    /// Idle keep-alive connections: RSS per connection.
    Idle,
}

/// Which mock executor serves the spawned set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockKind {
    /// `FastMock`: one monoio thread per mock.
    Fast,
    /// `MockExecutor`: std threads, one per connection.
    Std,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Args {
    pub mode: Mode,
    pub scenarios: Option<Vec<Scenario>>,
    pub connections: Option<Vec<usize>>,
    pub threads: usize,
    pub rate: Option<f64>,
    pub duration: Option<Duration>,
    pub warmup: Duration,
    pub timeout: Duration,
    /// Idle mode: how long the connections sit idle before RSS is read.
    pub hold: Duration,
    pub slo_p99: Duration,
    pub target_rps: f64,
    pub proxy_bin: PathBuf,
    pub cores: usize,
    pub executors: usize,
    pub mock: MockKind,
    /// The first mock executor waits this long before every answer (needs `--mock std`):
    /// how balancing copes with one slow executor.
    pub slow_executor: Option<Duration>,
    /// The slow executor serves one request at a time (`--slow-queue`).
    pub slow_queue: bool,
    /// Fast mocks: `(K, C)` warm runtimes at most and the cold-start delay.
    pub warm: Option<(usize, Duration)>,
    /// Fast mocks: service time per request and parallel slots (0 = no limit).
    pub service: Duration,
    pub mock_concurrency: usize,
    /// Runtimes (`x-opr-runtime-id`) drawn by Zipf popularity, with its exponent and seed.
    pub runtimes: Option<usize>,
    pub zipf: f64,
    pub seed: u64,
    /// Mock executor (1-based) stopped between the two phases of a cold-start run.
    pub stop_executor: Option<usize>,
    pub settle: Duration,
    pub moved_min: u64,
    pub proxy_env: Vec<(String, String)>,
    pub pin: bool,
    pub proxy_cpus: Option<Vec<usize>>,
    pub direct: bool,
    pub url: Option<Url>,
    pub secret: Option<String>,
    pub proxy_pids: Vec<u32>,
    pub allow_remote: bool,
    pub out: PathBuf,
    pub baseline: bool,
    /// Plan mode: how the rate search copes with noise and when it stops.
    pub rules: SearchRules,
    /// Plan mode: searches per scenario (the spread of their answers says how sure).
    pub repeat: usize,
}

/// `http://host:port` of a running deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub host: String,
    pub port: u16,
}

impl Url {
    pub fn parse(s: &str) -> Result<Url, String> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| format!("--url {s:?}: only http:// is supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(format!("--url {s:?}: missing host"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            // A bracketed IPv6 literal without a port has its last colon inside brackets.
            Some((h, p)) if !p.contains(']') => {
                (h, p.parse().map_err(|_| format!("--url {s:?}: bad port"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("--url {s:?}: missing host"));
        }
        Ok(Url {
            host: host.to_string(),
            port,
        })
    }

    /// The Host header value.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Args {
    /// (scenario, connections) pairs to run, in order.
    pub fn combos(&self) -> Vec<(Scenario, usize)> {
        match (&self.scenarios, &self.connections, self.mode) {
            (None, None, Mode::Plan) => DEFAULT_PLAN.to_vec(),
            (scenarios, connections, _) => {
                let scenarios = scenarios.clone().unwrap_or_else(|| match self.mode {
                    Mode::Plan => Scenario::ALL.to_vec(),
                    _ => vec![Scenario::Ping],
                });
                let connections = connections.clone().unwrap_or_else(|| match self.mode {
                    Mode::Plan => vec![256, 1024],
                    _ => vec![256],
                });
                scenarios
                    .iter()
                    .flat_map(|&s| connections.iter().map(move |&c| (s, c)))
                    .collect()
            }
        }
    }

    /// Idle mode: the scenario whose request each connection sends once, and how many
    /// connections (the first of each list; ping and 10000 by default).
    pub fn idle_load(&self) -> (Scenario, usize) {
        let scenario = self
            .scenarios
            .as_ref()
            .and_then(|s| s.first().copied())
            .unwrap_or(Scenario::Ping);
        let connections = self
            .connections
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(10_000);
        (scenario, connections)
    }

    /// The measured window per step (plan) or per run. Plan steps take 4 s: with 2 s
    /// windows two consecutive runs' small-GET answers differed by 46 %, with 4 s by 2 %
    /// and 10 % (docs/performance.md "Capacity planning").
    pub fn window(&self) -> Duration {
        self.duration.unwrap_or(match self.mode {
            Mode::Plan => Duration::from_secs(4),
            _ => Duration::from_secs(10),
        })
    }
}

/// Parses the arguments after the program name. `Err("")` means help was asked for.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        mode: Mode::Plan,
        scenarios: None,
        connections: None,
        threads: 1,
        rate: None,
        duration: None,
        warmup: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
        hold: Duration::from_secs(1),
        slo_p99: Duration::from_millis(10),
        target_rps: 100_000.0,
        proxy_bin: PathBuf::from("target/release/opr-proxy"),
        cores: 1,
        executors: 2,
        mock: MockKind::Fast,
        slow_executor: None,
        slow_queue: false,
        warm: None,
        service: Duration::ZERO,
        mock_concurrency: 0,
        runtimes: None,
        zipf: 1.0,
        seed: 1,
        stop_executor: None,
        settle: Duration::from_secs(1),
        moved_min: 5,
        proxy_env: Vec::new(),
        pin: true,
        proxy_cpus: None,
        direct: false,
        url: None,
        secret: None,
        proxy_pids: Vec::new(),
        allow_remote: false,
        out: PathBuf::from("."),
        baseline: true,
        rules: DEFAULT_RULES,
        repeat: DEFAULT_REPEATS,
    };
    let (mut warm_capacity, mut cold_start) = (false, false);
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(String::new()),
            "--mode" => {
                a.mode = match value()?.as_str() {
                    "plan" => Mode::Plan,
                    "closed" => Mode::Closed,
                    "open" => Mode::Open,
                    "idle" => Mode::Idle,
                    m => return Err(format!("--mode {m:?}: expected plan, closed, open or idle")),
                }
            }
            "--scenario" => {
                let v = value()?;
                a.scenarios = Some(if v == "all" {
                    Scenario::ALL.to_vec()
                } else {
                    list(&v, Scenario::parse)
                        .ok_or_else(|| format!("--scenario {v:?}: expected a list of ping, download-64k, download-1m, upload-1m, or all"))?
                });
            }
            "--connections" => {
                let v = value()?;
                a.connections = Some(
                    list(&v, |s| {
                        s.parse().ok().filter(|&n| (1..=100_000).contains(&n))
                    })
                    .ok_or_else(|| format!("--connections {v:?}: expected a list of 1..=100000"))?,
                );
            }
            "--threads" => a.threads = number(&flag, &value()?, 1..=256)?,
            "--cores" => a.cores = number(&flag, &value()?, 1..=1024)?,
            "--executors" => a.executors = number(&flag, &value()?, 1..=64)?,
            "--rate" => a.rate = Some(positive(&flag, &value()?)?),
            "--target-rps" => a.target_rps = positive(&flag, &value()?)?,
            "--duration" => a.duration = Some(seconds(&flag, &value()?, 0.1, 600.0)?),
            "--warmup" => a.warmup = seconds(&flag, &value()?, 0.0, 60.0)?,
            "--timeout" => a.timeout = seconds(&flag, &value()?, 0.01, 600.0)?,
            "--hold" => a.hold = seconds(&flag, &value()?, 0.0, 3600.0)?,
            "--slo-p99" => {
                let v = value()?;
                let ms = v.trim_end_matches("ms").parse::<f64>().ok();
                let ms = ms
                    .filter(|m| m.is_finite() && *m > 0.0 && *m <= 600_000.0)
                    .ok_or_else(|| format!("--slo-p99 {v:?}: expected milliseconds"))?;
                a.slo_p99 = Duration::from_secs_f64(ms / 1000.0);
            }
            "--proxy-bin" => a.proxy_bin = PathBuf::from(value()?),
            "--proxy-env" => {
                let v = value()?;
                let (k, val) = v
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| format!("--proxy-env {v:?}: expected KEY=VALUE"))?;
                a.proxy_env.push((k.to_string(), val.to_string()));
            }
            "--pin" => {
                a.pin = match value()?.as_str() {
                    "auto" => true,
                    "off" => false,
                    p => return Err(format!("--pin {p:?}: expected auto or off")),
                }
            }
            "--mock" => {
                a.mock = match value()?.as_str() {
                    "fast" => MockKind::Fast,
                    "std" => MockKind::Std,
                    m => return Err(format!("--mock {m:?}: expected fast or std")),
                }
            }
            "--slow-executor" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .ok()
                    .filter(|ms| (1..=60_000).contains(ms))
                    .ok_or_else(|| format!("--slow-executor {v:?}: expected 1..=60000 ms"))?;
                a.slow_executor = Some(Duration::from_millis(ms));
            }
            "--slow-queue" => a.slow_queue = true,
            "--warm-capacity" => {
                let k = number(&flag, &value()?, 1..=1_000_000)?;
                a.warm = Some((k, a.warm.map_or(Duration::ZERO, |w| w.1)));
                warm_capacity = true;
            }
            "--cold-start-ms" => {
                let c = number(&flag, &value()?, 0..=600_000)?;
                let c = Duration::from_millis(c as u64);
                a.warm = Some((a.warm.map_or(1, |w| w.0), c));
                cold_start = true;
            }
            "--service-ms" => {
                a.service = Duration::from_millis(number(&flag, &value()?, 0..=600_000)? as u64)
            }
            "--mock-concurrency" => a.mock_concurrency = number(&flag, &value()?, 0..=1_000_000)?,
            "--runtimes" => a.runtimes = Some(number(&flag, &value()?, 1..=100_000)?),
            "--zipf" => {
                let v = value()?;
                a.zipf = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && (0.0..=10.0).contains(s))
                    .ok_or_else(|| format!("--zipf {v:?}: expected an exponent in 0..=10"))?;
            }
            "--seed" => {
                let v = value()?;
                a.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: expected an unsigned integer"))?;
            }
            "--stop-executor" => a.stop_executor = Some(number(&flag, &value()?, 1..=64)?),
            "--settle" => a.settle = seconds(&flag, &value()?, 0.0, 60.0)?,
            "--moved-min" => a.moved_min = number(&flag, &value()?, 1..=1_000_000)? as u64,
            "--proxy-cpus" => {
                let v = value()?;
                a.proxy_cpus = Some(
                    crate::procs::parse_cpu_list(&v)
                        .ok_or_else(|| format!("--proxy-cpus {v:?}: expected a CPU list"))?,
                );
            }
            "--direct" => a.direct = true,
            "--url" => a.url = Some(Url::parse(&value()?)?),
            "--secret" => a.secret = Some(value()?),
            "--proxy-pid" => {
                let v = value()?;
                a.proxy_pids = list(&v, |s| s.parse().ok())
                    .ok_or_else(|| format!("--proxy-pid {v:?}: expected a list of PIDs"))?;
            }
            "--allow-remote" => a.allow_remote = true,
            "--out" => a.out = PathBuf::from(value()?),
            "--no-baseline" => a.baseline = false,
            "--resolution" => {
                let v = value()?;
                let pct = v.trim_end_matches('%').parse::<f64>().ok();
                a.rules.resolution = pct
                    .filter(|p| p.is_finite() && (0.1..=50.0).contains(p))
                    .ok_or_else(|| {
                        format!("--resolution {v:?}: expected a percentage in 0.1..=50")
                    })?
                    / 100.0;
            }
            "--max-steps" => a.rules.max_steps = number(&flag, &value()?, 1..=100)?,
            "--no-confirm" => a.rules.confirm_pass = false,
            "--repeat" => a.repeat = number(&flag, &value()?, 1..=20)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.mode == Mode::Open && a.rate.is_none() {
        return Err("--mode open needs --rate".into());
    }
    if a.mode == Mode::Idle && a.direct {
        return Err("--mode idle measures the proxy's memory; it cannot go with --direct".into());
    }
    if a.url.is_some() && a.direct {
        return Err("--direct loads the spawned mocks; it cannot go with --url".into());
    }
    if a.slow_queue && a.slow_executor.is_none() {
        return Err("--slow-queue needs --slow-executor MS".into());
    }
    if warm_capacity != cold_start {
        return Err("--warm-capacity and --cold-start-ms go together".into());
    }
    let modelled = a.warm.is_some() || !a.service.is_zero() || a.mock_concurrency > 0;
    if modelled && (a.mock != MockKind::Fast || a.url.is_some()) {
        return Err(
            "--warm-capacity, --cold-start-ms, --service-ms and --mock-concurrency model the \
             spawned fast mocks (--mock fast, no --url)"
                .into(),
        );
    }
    if let Some(i) = a.stop_executor {
        if a.runtimes.is_none() || a.url.is_some() || a.direct {
            return Err("--stop-executor needs --runtimes and the spawned proxy and mocks".into());
        }
        if i > a.executors {
            return Err(format!(
                "--stop-executor {i}: only {} executors (--executors)",
                a.executors
            ));
        }
    }
    if a.runtimes.is_some() && !matches!(a.mode, Mode::Open | Mode::Closed) {
        return Err("--runtimes goes with --mode open or closed".into());
    }
    if a.url.is_none() && !a.proxy_pids.is_empty() {
        return Err("--proxy-pid is for --url (a spawned proxy is measured anyway)".into());
    }
    Ok(a)
}

fn list<T>(v: &str, f: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let items: Option<Vec<T>> = v.split(',').map(|s| f(s.trim())).collect();
    items.filter(|i| !i.is_empty())
}

fn number(flag: &str, v: &str, range: std::ops::RangeInclusive<usize>) -> Result<usize, String> {
    v.parse()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| format!("{flag} {v:?}: expected {}..={}", range.start(), range.end()))
}

fn positive(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .ok_or_else(|| format!("{flag} {v:?}: expected a positive number"))
}

/// `2`, `2s`, `1.5`, `500ms`.
fn seconds(flag: &str, v: &str, min: f64, max: f64) -> Result<Duration, String> {
    let secs = match v.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().ok().map(|m| m / 1000.0),
        None => v.trim_end_matches('s').parse::<f64>().ok(),
    };
    secs.filter(|s| s.is_finite() && (min..=max).contains(s))
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{flag} {v:?}: expected seconds in {min}..={max}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Args, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn defaults_and_default_plan() {
        let a = args("").expect("defaults");
        assert_eq!(a.mode, Mode::Plan);
        assert_eq!(a.combos(), DEFAULT_PLAN.to_vec());
        assert_eq!(a.window(), Duration::from_secs(4));
        assert_eq!(a.slo_p99, Duration::from_millis(10));
        assert_eq!(a.threads, 1);
        assert_eq!(a.mock, MockKind::Fast);
        assert_eq!(args("--mock=std").map(|a| a.mock), Ok(MockKind::Std));
        assert_eq!(a.slow_executor, None);
        assert_eq!(
            args("--mock std --slow-executor 5").map(|a| a.slow_executor),
            Ok(Some(Duration::from_millis(5)))
        );
        let a = args("--mock std --slow-executor 2 --slow-queue").expect("slow queue");
        assert!(a.slow_queue);
        assert_eq!(a.proxy_bin, PathBuf::from("target/release/opr-proxy"));
        assert_eq!(a.rules, DEFAULT_RULES);
        assert_eq!(a.repeat, DEFAULT_REPEATS);
        assert_eq!(args("--repeat 1").expect("repeat").repeat, 1);
        assert!(args("--repeat 0").is_err());
        let a = args("--resolution 2.5 --max-steps 20 --no-confirm").expect("rules");
        assert_eq!(
            a.rules,
            SearchRules {
                resolution: 0.025,
                max_steps: 20,
                confirm_pass: false
            }
        );
        let a = args("--mode idle --hold 2").expect("idle");
        assert_eq!(a.idle_load(), (Scenario::Ping, 10_000));
        assert_eq!(a.hold, Duration::from_secs(2));
        let a = args("--mode idle --connections 500,9 --scenario download-64k").expect("idle");
        assert_eq!(a.idle_load(), (Scenario::Download64k, 500));
        let a = args("--mode closed").expect("closed");
        assert_eq!(a.combos(), vec![(Scenario::Ping, 256)]);
        assert_eq!(a.window(), Duration::from_secs(10));
    }

    #[test]
    fn lists_and_values() {
        let a = args("--scenario ping,upload-1m --connections=8,16 --duration 500ms --slo-p99 2.5ms --proxy-env A=b=c")
            .expect("valid");
        assert_eq!(
            a.combos(),
            vec![
                (Scenario::Ping, 8),
                (Scenario::Ping, 16),
                (Scenario::Upload1m, 8),
                (Scenario::Upload1m, 16)
            ]
        );
        assert_eq!(a.window(), Duration::from_millis(500));
        assert_eq!(a.slo_p99, Duration::from_micros(2500));
        assert_eq!(a.proxy_env, vec![("A".into(), "b=c".into())]);
        assert_eq!(
            args("--scenario all --connections 4")
                .expect("all")
                .combos()
                .len(),
            4
        );
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(args("--help"), Err(String::new()));
        for bad in [
            "--mode fast",
            "--mode open",
            "--scenario pong",
            "--connections 0",
            "--threads",
            "--duration 1h",
            "--rate -1",
            "--url https://x",
            "--url http://:80",
            "--proxy-pid 12",
            "--url http://h:1 --direct",
            "--mock slow",
            "--slow-executor 0",
            "--slow-executor 5ms",
            "--slow-queue",
            "--mode idle --direct",
            "--resolution 0",
            "--max-steps 0",
            "--bogus",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cold_start_options() {
        let a = args("--mode open --rate 10").expect("defaults");
        assert_eq!((a.runtimes, a.zipf, a.seed), (None, 1.0, 1));
        assert_eq!(
            (a.warm, a.service, a.mock_concurrency),
            (None, Duration::ZERO, 0)
        );
        assert_eq!((a.stop_executor, a.settle), (None, Duration::from_secs(1)));
        assert_eq!(a.moved_min, 5);
        let a = args(
            "--mode open --rate 10 --executors 4 --runtimes 100 --zipf 0.8 --seed 5 \
             --cold-start-ms 20 --warm-capacity 8 --service-ms 2 --mock-concurrency 3 \
             --stop-executor 4 --settle 0.5",
        )
        .expect("valid");
        assert_eq!((a.runtimes, a.zipf, a.seed), (Some(100), 0.8, 5));
        assert_eq!(a.warm, Some((8, Duration::from_millis(20))));
        assert_eq!(
            (a.service, a.mock_concurrency),
            (Duration::from_millis(2), 3)
        );
        assert_eq!(
            (a.stop_executor, a.settle),
            (Some(4), Duration::from_millis(500))
        );
        for bad in [
            "--mode open --rate 1 --warm-capacity 8",
            "--mode open --rate 1 --cold-start-ms 5",
            "--mode open --rate 1 --warm-capacity 0 --cold-start-ms 5",
            "--mode open --rate 1 --mock std --service-ms 1",
            "--mode open --rate 1 --url http://127.0.0.1:1 --mock-concurrency 1",
            "--mode open --rate 1 --stop-executor 1",
            "--mode open --rate 1 --runtimes 5 --stop-executor 3",
            "--mode open --rate 1 --runtimes 5 --direct --stop-executor 1",
            "--mode open --rate 1 --runtimes 0",
            "--mode open --rate 1 --zipf -1",
            "--mode open --rate 1 --seed x",
            "--runtimes 5",
        ] {
            assert!(args(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(
            Url::parse("http://127.0.0.1:9800/x"),
            Ok(Url {
                host: "127.0.0.1".into(),
                port: 9800
            })
        );
        let u = Url::parse("http://[::1]:81").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert_eq!(u.authority(), "[::1]:81");
        assert_eq!(Url::parse("http://proxy").map(|u| u.port), Ok(80));
        assert!(Url::parse("http://h:99999").is_err());
    }
}
