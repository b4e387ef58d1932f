//! `loadtest`: capacity planning for opr-proxy. Starts mock executors and the proxy (or
//! targets `--url`), drives load with the generator, writes the report (`--help`).

use opr_loadtest::cli::{self, Args, MockKind, Mode};
use opr_loadtest::coldstart::{self, Mix, Tally};
use opr_loadtest::gen::stats::{ms, Summary};
use opr_loadtest::gen::{self, Load, Request, RunConfig, RunResult};
use opr_loadtest::idle;
use opr_loadtest::plan::{self, CpuSets, Scenario, ScenarioRun, Step, Verdict};
use opr_loadtest::procs::{self, BusyMeter, CpuMeter, ProxyProcess, ProxySpec};
use opr_loadtest::report::{self, Machine, Report};
use opr_loadtest::{FastMock, FastMockOptions, MockExecutor, MockOptions};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(msg) if msg.is_empty() => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("loadtest: {msg}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("loadtest: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// What the load is pointed at, and how to measure it.
struct Target {
    addrs: Vec<SocketAddr>,
    host_header: String,
    headers: Vec<(String, String)>,
    proxy_meter: Option<CpuMeter>,
    /// Kept alive (and killed on drop) for the whole run.
    proxy: Option<ProxyProcess>,
    mocks: Mocks,
    setup: Vec<(String, String)>,
    /// CPUs the generator (and in-process mocks) may use.
    client_cpus: Vec<usize>,
    /// CPUs the proxy runs on, when known.
    proxy_cpus: Vec<usize>,
}

fn run(args: &Args) -> Result<(), String> {
    // Read before pinning ourselves, which would shrink it.
    let cpus = procs::allowed_cpus();
    let machine = Machine::detect(cpus.len());
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    let mut target = match &args.url {
        Some(url) => remote_target(args, url)?,
        None => local_target(args, &cpus)?,
    };
    smoke(args, &target)?;

    preflight(&cpus, &mut target);
    // Indices as in plan::{CPU_CLIENT, CPU_PROXY, BUSY_CLIENT, BUSY_PROXY}.
    let client_meter = CpuMeter::new(vec![std::process::id()]);
    let proxy_meter = target.proxy_meter.clone();
    let busy_client = BusyMeter::new(target.client_cpus.clone());
    let busy_proxy = BusyMeter::new(target.proxy_cpus.clone());
    let sampler = move || -> Vec<Option<Duration>> {
        vec![
            client_meter.sample(),
            proxy_meter.as_ref().and_then(CpuMeter::sample),
            busy_client.sample(),
            busy_proxy
                .sample()
                .filter(|_| !busy_proxy.cpus().is_empty()),
        ]
    };
    let slo_us = u64::try_from(args.slo_p99.as_micros()).unwrap_or(u64::MAX);
    let runner = Runner {
        args,
        stop: &stop,
        sampler: &sampler,
        slo_us,
        sets: CpuSets {
            proxy: target.proxy_cpus.len(),
            client: target.client_cpus.len(),
        },
    };

    match args.mode {
        Mode::Closed | Mode::Open => {
            for (scenario, conns) in args.combos() {
                let load = match args.mode {
                    Mode::Open => Load::Open {
                        rate: args.rate.unwrap_or(1.0),
                    },
                    _ => Load::Closed,
                };
                if args.runtimes.is_some() {
                    coldstart_run(&runner, &mut target, scenario, conns, load)?;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    continue;
                }
                let before = target.mocks.requests();
                let r = runner.run(&target, scenario, conns, load, args.window())?;
                print_run(scenario, conns, load, &r, &runner);
                // Warm-up included: how the proxy spread the requests.
                if let (Some(before), Some(after)) = (before, target.mocks.requests()) {
                    let counts: Vec<String> = before
                        .iter()
                        .zip(&after)
                        .enumerate()
                        .map(|(i, (b, a))| format!("executor-{}={}", i + 1, a - b))
                        .collect();
                    println!("EXECUTORS {}", counts.join(" "));
                }
                check_alive(&mut target)?;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Ok(())
        }
        Mode::Plan => plan_mode(args, &runner, &mut target, machine),
        Mode::Idle => idle_mode(args, &target, &stop),
    }
}

/// Mock executors running in this process (stopped on drop).
enum Mocks {
    None,
    Fast(Vec<FastMock>),
    Std(Vec<MockExecutor>),
}

impl Mocks {
    fn start(args: &Args) -> Result<Mocks, String> {
        let (kind, n, slow, queue) = (
            args.mock,
            args.executors,
            args.slow_executor,
            args.slow_queue,
        );
        let model = FastMockOptions {
            warm: args.warm,
            service: args.service,
            slots: args.mock_concurrency,
        };
        let any = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0));
        let err = |e: std::io::Error| format!("cannot start mock executor: {e}");
        if slow.is_some() && kind != MockKind::Std {
            return Err("--slow-executor needs --mock std".into());
        }
        Ok(match kind {
            MockKind::Fast => Mocks::Fast(
                (1..=n)
                    .map(|i| {
                        FastMock::start_with(&format!("executor-{i}"), any, model).map_err(err)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            MockKind::Std => Mocks::Std(
                (1..=n)
                    .map(|i| {
                        MockExecutor::start(MockOptions {
                            name: format!("executor-{i}"),
                            delay: slow.filter(|_| i == 1).unwrap_or_default(),
                            serial: queue,
                            ..MockOptions::default()
                        })
                        .map_err(err)
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        match self {
            Mocks::None => Vec::new(),
            Mocks::Fast(m) => m.iter().map(FastMock::addr).collect(),
            Mocks::Std(m) => m.iter().map(MockExecutor::addr).collect(),
        }
    }

    fn hostnames(&self) -> Vec<String> {
        match self {
            Mocks::None => Vec::new(),
            Mocks::Fast(m) => m.iter().map(FastMock::hostname).collect(),
            Mocks::Std(m) => m.iter().map(MockExecutor::hostname).collect(),
        }
    }

    /// Fast mocks' counters, in executor order (empty otherwise).
    fn stats(&self) -> Vec<opr_loadtest::MockStats> {
        match self {
            Mocks::Fast(m) => m.iter().map(FastMock::stats).collect(),
            _ => Vec::new(),
        }
    }

    /// Stops mock executor `i` (0-based): its port refuses connections from now on.
    fn stop(&mut self, i: usize) {
        match self {
            Mocks::None => {}
            Mocks::Fast(m) => {
                if let Some(m) = m.get_mut(i) {
                    m.stop();
                }
            }
            Mocks::Std(m) => {
                if let Some(m) = m.get(i) {
                    m.stop();
                }
            }
        }
    }

    /// Non-health requests each executor has answered so far (std mocks only).
    fn requests(&self) -> Option<Vec<u64>> {
        match self {
            Mocks::Std(m) => Some(m.iter().map(MockExecutor::requests).collect()),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        let what = match self {
            Mocks::None => return "none".into(),
            Mocks::Fast(_) => "in-process fast mock executors (monoio, one thread each)",
            Mocks::Std(_) => {
                "in-process std mock executors (MockExecutor: a thread per connection)"
            }
        };
        let hosts = self.hostnames();
        format!("{} {what} at {}", hosts.len(), hosts.join(", "))
    }
}

/// Other processes busy on our CPUs make every number lower and noisier: measured for a
/// second before the load starts, warned about, and written into the report.
fn preflight(cpus: &[usize], target: &mut Target) {
    let busy = BusyMeter::busy_now(cpus, Duration::from_secs(1));
    let text = busy
        .iter()
        .map(|(id, f)| format!("CPU {id} {:.0} %", f * 100.0))
        .collect::<Vec<_>>()
        .join(", ");
    if busy.iter().any(|(_, f)| *f > 0.2) {
        eprintln!(
            "loadtest: warning: CPUs already busy before the load ({text}); \
             results will be lower and noisier than on a quiet machine"
        );
    }
    target
        .setup
        .push(("CPU busy before the load (1 s)".into(), text));
}

/// A spawned set: mock executors in this process, the proxy pinned beside them.
fn local_target(args: &Args, cpus: &[usize]) -> Result<Target, String> {
    let mut setup = Vec::new();
    // Proxy on its own CPUs (--proxy-cpus, else the first --cores), ours on the rest.
    let proxy_cpus: Vec<usize> = match &args.proxy_cpus {
        Some(list) => list.clone(),
        None => cpus.iter().copied().take(args.cores).collect(),
    };
    let client: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !proxy_cpus.contains(c))
        .collect();
    let pinned = args.pin && !args.direct && !client.is_empty() && procs::have("taskset");
    let (proxy_cpus, client_cpus) = if pinned {
        procs::pin_self(&client).map_err(|e| format!("cannot pin the generator: {e}"))?;
        (proxy_cpus, client)
    } else {
        (cpus.to_vec(), cpus.to_vec())
    };
    let mocks = Mocks::start(args)?;
    setup.push(("executors".to_string(), mocks.describe()));
    if args.direct {
        setup.push((
            "target".into(),
            "the mock executors directly (no proxy)".into(),
        ));
        return Ok(Target {
            addrs: mocks.addrs(),
            host_header: mocks.hostnames().first().cloned().unwrap_or_default(),
            headers: Vec::new(),
            proxy_meter: None,
            proxy: None,
            mocks,
            setup,
            client_cpus,
            proxy_cpus: Vec::new(),
        });
    }
    let secret = format!("loadtest-{}-{}", std::process::id(), nanos_now());
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let log = args.out.join("loadtest-proxy.log");
    let spec = ProxySpec {
        bin: args.proxy_bin.clone(),
        cpus: pinned.then(|| proxy_cpus.clone()),
        cores: args.cores,
        executors: mocks.hostnames(),
        secret: secret.clone(),
        env: args.proxy_env.clone(),
        log: log.clone(),
    };
    let proxy = ProxyProcess::spawn(&spec).map_err(|e| e.to_string())?;
    eprintln!("loadtest: {}", proxy.banner.trim());
    let pinning = if pinned {
        format!(
            "proxy on CPU {} (taskset), generator and mocks on CPU {}",
            procs::format_cpu_list(&proxy_cpus),
            procs::format_cpu_list(&client_cpus)
        )
    } else {
        "none (all processes share every CPU)".into()
    };
    setup.insert(
        0,
        (
            "proxy".into(),
            format!(
                "`{}` with OPR_PROXY_CORES={}, round-robin, no body limit{}; log `{}`",
                args.proxy_bin.display(),
                args.cores,
                env_note(&args.proxy_env),
                log.display()
            ),
        ),
    );
    setup.push(("pinning".into(), pinning));
    setup.push(("proxy said".into(), format!("`{}`", proxy.banner.trim())));
    Ok(Target {
        addrs: vec![proxy.addr],
        host_header: proxy.addr.to_string(),
        headers: vec![("Authorization".into(), format!("Bearer {secret}"))],
        proxy_meter: Some(CpuMeter::new(vec![proxy.pid])),
        proxy: Some(proxy),
        mocks,
        setup,
        client_cpus,
        proxy_cpus,
    })
}

fn env_note(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!(", {k}={v}")).collect()
}

fn remote_target(args: &Args, url: &cli::Url) -> Result<Target, String> {
    // Resolved once here: the generator threads never touch DNS.
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{} resolved to nothing", url.host))?;
    if !addr.ip().is_loopback() && !args.allow_remote {
        return Err(format!(
            "{} is not loopback; pass --allow-remote to load a remote deployment",
            addr.ip()
        ));
    }
    let mut headers = Vec::new();
    if let Some(secret) = &args.secret {
        headers.push(("Authorization".into(), format!("Bearer {secret}")));
    }
    let proxy_meter = (!args.proxy_pids.is_empty()).then(|| CpuMeter::new(args.proxy_pids.clone()));
    let mut setup = vec![(
        "target".to_string(),
        format!("running deployment at {} ({addr})", url.authority()),
    )];
    if let Some(m) = &proxy_meter {
        setup.push(("proxy CPU".into(), format!("processes {:?}", m.pids())));
    }
    Ok(Target {
        addrs: vec![addr],
        host_header: url.authority(),
        headers,
        proxy_meter,
        proxy: None,
        mocks: Mocks::None,
        setup,
        client_cpus: procs::allowed_cpus(),
        proxy_cpus: args.proxy_cpus.clone().unwrap_or_default(),
    })
}

/// One request per scenario before any load: a wrong secret or a dead executor should be
/// a clear message, not a table of errors.
fn smoke(args: &Args, target: &Target) -> Result<(), String> {
    let mut seen = Vec::new();
    for (scenario, _) in args.combos() {
        if seen.contains(&scenario) {
            continue;
        }
        seen.push(scenario);
        let req = request(target, scenario);
        let addr = target.addrs[0];
        match gen::once(addr, &req, Duration::from_secs(10)) {
            Ok(r) if (200..300).contains(&r.status) => {}
            Ok(r) => {
                return Err(format!(
                    "{scenario}: {} {} answered {} before the load started{}",
                    scenario.method(),
                    scenario.path(),
                    r.status,
                    if r.status == 401 {
                        " (wrong or missing --secret?)"
                    } else {
                        ""
                    }
                ))
            }
            Err(e) => return Err(format!("{scenario}: request to {addr} failed: {e}")),
        }
    }
    Ok(())
}

fn request(target: &Target, scenario: Scenario) -> Request {
    Request::new(
        scenario.method(),
        scenario.path(),
        &target.host_header,
        &target.headers,
        scenario.body_len(),
    )
}

struct Runner<'a> {
    args: &'a Args,
    stop: &'a Arc<AtomicBool>,
    sampler: &'a (dyn Fn() -> Vec<Option<Duration>> + Sync),
    slo_us: u64,
    sets: CpuSets,
}

impl Runner<'_> {
    fn run(
        &self,
        target: &Target,
        scenario: Scenario,
        connections: usize,
        load: Load,
        window: Duration,
    ) -> Result<RunResult, String> {
        self.run_on(target, &target.addrs, scenario, connections, load, window)
    }

    fn run_on(
        &self,
        target: &Target,
        addrs: &[SocketAddr],
        scenario: Scenario,
        connections: usize,
        load: Load,
        window: Duration,
    ) -> Result<RunResult, String> {
        self.run_mix(target, addrs, scenario, connections, load, window, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_mix(
        &self,
        target: &Target,
        addrs: &[SocketAddr],
        scenario: Scenario,
        connections: usize,
        load: Load,
        window: Duration,
        mix: Option<Arc<Mix>>,
    ) -> Result<RunResult, String> {
        let cfg = RunConfig {
            addrs: addrs.to_vec(),
            request: request(target, scenario),
            connections,
            threads: self.args.threads,
            load,
            warmup: self.args.warmup,
            duration: window,
            timeout: self.args.timeout,
            stop: Arc::clone(self.stop),
            mix,
        };
        gen::run(&cfg, Some(self.sampler)).map_err(|e| format!("load generator: {e}"))
    }
}

/// A cold-start run (`--runtimes`): requests spread over runtimes by popularity; prints the
/// usual RESULT line, then `COLDSTART key=value ...` for coldstart.sh. With
/// `--stop-executor` a second phase follows with that executor stopped, and the line says
/// how many runtimes moved to another executor.
fn coldstart_run(
    runner: &Runner<'_>,
    target: &mut Target,
    scenario: Scenario,
    conns: usize,
    load: Load,
) -> Result<(), String> {
    let args = runner.args;
    let runtimes = args.runtimes.unwrap_or(1);
    let mix = {
        let t = &*target;
        Arc::new(Mix::new(
            runtimes,
            args.zipf,
            args.seed,
            args.executors,
            |id| {
                let mut headers = t.headers.clone();
                headers.push(("x-opr-runtime-id".into(), id.to_string()));
                Request::new(
                    scenario.method(),
                    scenario.path(),
                    &t.host_header,
                    &headers,
                    scenario.body_len(),
                )
            },
        ))
    };
    let window = args.window();
    let r = runner.run_mix(
        target,
        &target.addrs,
        scenario,
        conns,
        load,
        window,
        Some(Arc::clone(&mix)),
    )?;
    print_run(scenario, conns, load, &r, runner);
    check_alive(target)?;
    let mut line = coldstart_fields(&r, args.executors);
    let stats = target.mocks.stats();
    for (i, s) in stats.iter().enumerate() {
        println!(
            "MOCK executor-{} requests={} cold_starts={} cold_waits={} warm_hits={} max_in_flight={}",
            i + 1,
            s.requests,
            s.cold_starts,
            s.cold_waits,
            s.warm_hits,
            s.max_in_flight
        );
    }
    let max_inflight = stats.iter().map(|s| s.max_in_flight).max();
    line.push_str(&format!(
        " mock_max_inflight={}",
        max_inflight.map_or_else(|| "NA".to_string(), |m| m.to_string())
    ));
    if let (Some(stop), Some(before)) = (args.stop_executor, r.tally.as_ref()) {
        target.mocks.stop(stop - 1);
        eprintln!(
            "loadtest: stopped executor-{stop}; settling {:.1} s",
            args.settle.as_secs_f64()
        );
        std::thread::sleep(args.settle);
        let r2 = runner.run_mix(
            target,
            &target.addrs,
            scenario,
            conns,
            load,
            window,
            Some(mix),
        )?;
        print_run(scenario, conns, load, &r2, runner);
        check_alive(target)?;
        let empty = Tally::new(0, 1);
        let after = r2.tally.as_ref().unwrap_or(&empty);
        let (both, moved) = coldstart::moved(before, after, args.moved_min);
        let pct = if both > 0 {
            format!("{:.1}", 100.0 * moved as f64 / both as f64)
        } else {
            "NA".into()
        };
        let (shares2, _) = coldstart::shares(&after.per_executor, args.executors - 1);
        line.push_str(&format!(
            " moved_runtimes={both} moved={moved} moved_pct={pct} moved_min={} phase2_errors={} \
             phase2_shares={}",
            args.moved_min,
            r2.errors.total(),
            join_pct(&shares2)
        ));
    }
    println!("COLDSTART {line}");
    Ok(())
}

/// The COLDSTART fields of one window.
fn coldstart_fields(r: &RunResult, executors: usize) -> String {
    let s = Summary::of(&r.latency);
    let shed = Summary::of(&r.shed);
    let shed_n = r.errors.status.get(&503).copied().unwrap_or(0);
    let opt = |v: Option<f64>, digits: usize| {
        v.map_or_else(|| "NA".to_string(), |v| format!("{v:.digits$}"))
    };
    let empty = Tally::new(0, executors.max(1));
    let t = r.tally.as_ref().unwrap_or(&empty);
    let (shares, max_share) = coldstart::shares(&t.per_executor, executors);
    format!(
        "requests={} ok={} rps={:.0} p50_ms={} p99_ms={} p999_ms={} cold_pct={} wait_pct={} cold_starts={} cold_waits={} warm={} untracked={} shares={} max_share={} shed={shed_n} shed_p50_ms={} shed_p99_ms={} errors={} other_errors={}",
        r.sent,
        r.ok,
        r.throughput(),
        if s.count > 0 { ms(s.p50) } else { "NA".into() },
        if s.count > 0 { ms(s.p99) } else { "NA".into() },
        if s.count > 0 { ms(s.p999) } else { "NA".into() },
        opt(t.cold_pct(), 2),
        opt(t.wait_pct(), 2),
        t.cold_starts,
        t.cold_waits,
        t.warm,
        t.untracked,
        join_pct(&shares),
        opt(max_share, 2),
        if shed.count > 0 { ms(shed.p50) } else { "NA".into() },
        if shed.count > 0 { ms(shed.p99) } else { "NA".into() },
        r.errors.total(),
        r.errors.total() - shed_n,
    )
}

/// `25.1/24.9/...`
fn join_pct(v: &[f64]) -> String {
    v.iter()
        .map(|p| format!("{p:.1}"))
        .collect::<Vec<_>>()
        .join("/")
}

fn check_alive(target: &mut Target) -> Result<(), String> {
    if let Some(p) = &mut target.proxy {
        if !p.alive() {
            return Err(format!(
                "the proxy exited during the run; log {}:\n{}",
                p.log.display(),
                procs::tail(&p.log, 20)
            ));
        }
    }
    Ok(())
}

fn print_run(scenario: Scenario, conns: usize, load: Load, r: &RunResult, runner: &Runner<'_>) {
    let s = Summary::of(&r.latency);
    let step = Step::from_run(r, None, runner.slo_us, runner.sets);
    let (mode, offered) = match load {
        Load::Closed => ("closed", String::new()),
        Load::Open { rate } => ("open", format!(" offered={rate:.0}")),
    };
    println!(
        "{scenario} × {conns} conns, {mode} loop{offered}: {:.0} req/s over {:.1} s, latency ms \
         p50 {} p90 {} p99 {} p99.9 {} max {}, errors: {}, generator {}",
        r.throughput(),
        r.window.as_secs_f64(),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        r.errors,
        r.driver
    );
    // One machine-readable line for scripts (validate.sh, compare.sh).
    println!(
        "RESULT scenario={scenario} connections={conns} mode={mode}{offered} rps={:.0} \
         p50_ms={} p90_ms={} p99_ms={} p999_ms={} max_ms={} errors={} proxy_cpu_us={} \
         client_cpu_pct={} proxy_cpus_busy_pct={} client_cpus_busy_pct={} p50_us={} p99_us={}",
        r.throughput(),
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        r.errors.total(),
        step.proxy_cpu_us
            .map_or_else(|| "NA".to_string(), |v| format!("{v:.1}")),
        pct_or_na(step.client_util),
        pct_or_na(step.proxy_cpus_busy),
        pct_or_na(step.client_cpus_busy),
        s.p50,
        s.p99,
    );
}

/// `--mode idle`: the proxy's RSS before and with N idle keep-alive connections (one
/// answered request each), how long a new connection's request takes meanwhile, and the RSS
/// after they are closed.
fn idle_mode(args: &Args, target: &Target, stop: &AtomicBool) -> Result<(), String> {
    let pids: Vec<u32> = target
        .proxy_meter
        .as_ref()
        .map(|m| m.pids().to_vec())
        .unwrap_or_default();
    if pids.is_empty() {
        return Err("--mode idle needs the proxy's PIDs (--proxy-pid with --url)".into());
    }
    let (scenario, n) = args.idle_load();
    if let Some(limit) = procs::nofile_limit() {
        // Our own connections plus a few descriptors for everything else.
        if (n as u64) + 64 > limit {
            return Err(format!(
                "{n} connections need more open files than this process may have ({limit}); \
                 raise it first (ulimit -n {})",
                n + 1024
            ));
        }
    }
    let rss = || procs::rss_kib(&pids).ok_or_else(|| "cannot read the proxy's RSS".to_string());
    let req = request(target, scenario);
    let addr = target.addrs[0];
    let before = rss()?;
    let started = std::time::Instant::now();
    let set = idle::open_idle(addr, &req, n, args.timeout, stop);
    let opening = started.elapsed();
    std::thread::sleep(args.hold);
    let held = rss()?;
    // A new connection while the others sit idle should be served at once.
    let t = std::time::Instant::now();
    let fresh = gen::once(addr, &req, args.timeout);
    let fresh_ms = t.elapsed().as_secs_f64() * 1000.0;
    let fresh_ok = fresh.as_ref().is_ok_and(|r| (200..300).contains(&r.status));
    let opened = set.opened();
    let errors = set.errors;
    let first_error = set.first_error.clone();
    drop(set);
    std::thread::sleep(args.hold);
    let closed = rss()?;
    let per_conn = idle::kib_per_connection(before, held, opened);
    let fmt_per = per_conn.map_or_else(|| "NA".to_string(), |v| format!("{v:.2}"));
    println!(
        "idle × {n} conns ({scenario} once each) to {addr}: opened {opened} in {:.1} s, errors \
         {errors}{}; proxy RSS {:.1} MiB before, {:.1} MiB with them idle ({} KiB per \
         connection), {:.1} MiB {:.1} s after closing; a new connection meanwhile: {}",
        opening.as_secs_f64(),
        first_error.map_or_else(String::new, |e| format!(" (first: {e})")),
        before as f64 / 1024.0,
        held as f64 / 1024.0,
        fmt_per,
        closed as f64 / 1024.0,
        args.hold.as_secs_f64(),
        match &fresh {
            Ok(r) => format!("{} in {fresh_ms:.2} ms", r.status),
            Err(e) => format!("failed: {e}"),
        }
    );
    println!(
        "RESULT scenario=idle connections={n} opened={opened} errors={errors} \
         rss_before_kib={before} rss_idle_kib={held} rss_closed_kib={closed} \
         kib_per_conn={fmt_per} new_conn_ms={} open_s={:.1}",
        if fresh_ok {
            format!("{fresh_ms:.2}")
        } else {
            "NA".into()
        },
        opening.as_secs_f64()
    );
    Ok(())
}

fn pct_or_na(v: Option<f64>) -> String {
    v.map_or_else(|| "NA".to_string(), |v| format!("{:.0}", v * 100.0))
}

fn plan_mode(
    args: &Args,
    runner: &Runner<'_>,
    target: &mut Target,
    machine: Machine,
) -> Result<(), String> {
    let window = args.window();
    let mut notes = Vec::new();

    // The client side alone: generator straight to the mocks, same core budget.
    let addrs = target.mocks.addrs();
    let baseline = if args.baseline && !addrs.is_empty() && target.proxy.is_some() {
        let conns = args.combos().first().map_or(256, |c| c.1);
        eprintln!("loadtest: client-side ceiling: ping × {conns}, generator → mocks directly");
        let r = runner.run_on(target, &addrs, Scenario::Ping, conns, Load::Closed, window)?;
        let mut step = Step::from_run(&r, None, runner.slo_us, runner.sets);
        // The proxy idled meanwhile; its CPU is not part of this number.
        step.proxy_cpu_us = None;
        step.proxy_util = None;
        eprintln!(
            "loadtest:   {:.0} req/s, p99 {} ms, client CPU {}",
            step.achieved,
            ms(step.latency.p99),
            step.client_util
                .map_or_else(|| "?".into(), |u| format!("{:.0} %", u * 100.0))
        );
        Some((
            format!(
                "ping × {conns} connections, generator → {} mock executors directly",
                addrs.len()
            ),
            step,
        ))
    } else {
        None
    };

    let mut runs: Vec<ScenarioRun> = Vec::new();
    let mut driver = String::new();
    // Each scenario is searched `--repeat` times; a repeat starts near the previous
    // answer. The summary gives the median and range of the answers.
    let searches = args
        .combos()
        .into_iter()
        .flat_map(|combo| (1..=args.repeat).map(move |n| (combo, n)));
    let mut previous: Option<f64> = None;
    for ((scenario, conns), nth) in searches {
        if runner.stop.load(Ordering::Relaxed) {
            notes.push("Interrupted: the plan did not finish.".into());
            break;
        }
        if nth == 1 {
            previous = None;
        }
        if args.repeat > 1 {
            eprintln!(
                "loadtest: {scenario} × {conns}: search {nth} of {}{}",
                args.repeat,
                previous.map_or_else(String::new, |p| format!(", starting near {p:.0}"))
            );
        }
        let mut offered_so_far: Vec<f64> = Vec::new();
        let result = plan::search(scenario, conns, args.rules, previous, |load| {
            if runner.stop.load(Ordering::Relaxed) {
                return Err("interrupted".to_string());
            }
            let r = runner.run(target, scenario, conns, load, window)?;
            driver.clone_from(&r.driver);
            let offered = match load {
                Load::Open { rate } => Some(rate),
                Load::Closed => None,
            };
            let step = Step::from_run(&r, offered, runner.slo_us, runner.sets);
            let attempt = offered.map_or(0, |rate| {
                offered_so_far.push(rate);
                offered_so_far.iter().filter(|&&r| r == rate).count()
            });
            eprintln!("loadtest: {}", progress(scenario, conns, &step, attempt));
            Ok(step)
        });
        let run = match result {
            Ok(run) => run,
            Err(e) if e == "interrupted" => {
                notes.push("Interrupted: the plan did not finish.".into());
                break;
            }
            Err(e) => return Err(e),
        };
        if let Err(e) = check_alive(target) {
            notes.push(format!("The proxy died during {scenario} × {conns}."));
            runs.push(run);
            write_report(args, target, machine, baseline, runs, notes, &driver)?;
            return Err(e);
        }
        note_findings(&run, runner.slo_us, runner.sets, &mut notes);
        previous = run.bracket().pass.or(previous);
        runs.push(run);
    }
    write_report(args, target, machine, baseline, runs, notes, &driver)
}

fn progress(scenario: Scenario, conns: usize, s: &Step, attempt: usize) -> String {
    let what = match s.offered {
        None => "closed loop".to_string(),
        Some(rate) if attempt > 1 => format!("offered {rate:.0} (try {attempt})"),
        Some(rate) => format!("offered {rate:.0}"),
    };
    format!(
        "{scenario} × {conns}: {what} → {:.0} req/s, p50 {} p99 {} p99.9 {} ms, errors: {}, proxy {} µs/req {}, {}",
        s.achieved,
        ms(s.latency.p50),
        ms(s.latency.p99),
        ms(s.latency.p999),
        s.errors,
        s.proxy_cpu_us.map_or_else(|| "?".into(), |v| format!("{v:.1}")),
        s.proxy_util.map_or_else(String::new, |u| format!("({:.0} % CPU)", u * 100.0)),
        s.verdict.label()
    )
}

/// Things the proxy engineers should look at, in words.
fn note_findings(run: &ScenarioRun, slo_us: u64, sets: CpuSets, notes: &mut Vec<String>) {
    let what = format!("{} × {}", run.scenario, run.connections);
    let steps = || std::iter::once(&run.probe).chain(&run.steps);
    let most = |f: &dyn Fn(&Step) -> Option<f64>| steps().filter_map(f).fold(0.0, f64::max);
    let other_proxy = most(&|s| report::other_load(s.proxy_util, sets.proxy, s.proxy_cpus_busy));
    let other_client =
        most(&|s| report::other_load(s.client_util, sets.client, s.client_cpus_busy));
    if other_proxy >= 0.15 || other_client >= 0.15 {
        notes.push(format!(
            "{what}: up to {:.0} % of the proxy's CPUs and {:.0} % of the client's were busy \
             with other work (other processes, kernel threads, hypervisor steal time) during \
             these steps: these numbers are lower and noisier than on a dedicated machine.",
            other_proxy * 100.0,
            other_client * 100.0
        ));
    }
    for s in std::iter::once(&run.probe).chain(&run.steps) {
        if s.errors.total() > 0 {
            let at = s
                .offered
                .map_or_else(|| "closed loop".into(), |r| format!("{r:.0} req/s offered"));
            notes.push(format!("{what}: errors at {at}: {}.", s.errors));
        }
        if s.verdict == Verdict::Pass && s.lag_p99 * 2 > slo_us {
            notes.push(format!(
                "{what}: generator send lag p99 {} ms at {:.0} req/s — the client side is \
                 overloaded there, latency may be understated.",
                ms(s.lag_p99),
                s.achieved
            ));
        }
    }
    if let Some(best) = run.sustainable() {
        if best.latency.max > 20 * best.latency.p99.max(1) && best.latency.max > 50_000 {
            notes.push(format!(
                "{what}: latency spike at a passing rate ({:.0} req/s): max {} ms vs p99 {} ms.",
                best.achieved,
                ms(best.latency.max),
                ms(best.latency.p99)
            ));
        }
    }
}

fn write_report(
    args: &Args,
    target: &Target,
    machine: Machine,
    baseline: Option<(String, Step)>,
    runs: Vec<ScenarioRun>,
    notes: Vec<String>,
    driver: &str,
) -> Result<(), String> {
    let mut setup = target.setup.clone();
    setup.push((
        "generator".into(),
        format!(
            "{} thread(s), {} keep-alive HTTP/1.1; per step {:.1} s warm-up + {:.1} s measured, \
             timeout {:.1} s per request",
            args.threads,
            if driver.is_empty() { "monoio" } else { driver },
            args.warmup.as_secs_f64(),
            args.window().as_secs_f64(),
            args.timeout.as_secs_f64()
        ),
    ));
    let report = Report {
        machine,
        command: command_line(),
        setup,
        cores: args.cores,
        sets: CpuSets {
            proxy: target.proxy_cpus.len(),
            client: target.client_cpus.len(),
        },
        slo_p99_us: u64::try_from(args.slo_p99.as_micros()).unwrap_or(u64::MAX),
        target_rps: args.target_rps,
        rules: args.rules,
        baseline,
        runs,
        notes,
    };
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let md = args.out.join("loadtest-report.md");
    let svg = args.out.join("loadtest-report.svg");
    std::fs::write(&md, report::markdown(&report)).map_err(|e| format!("{}: {e}", md.display()))?;
    std::fs::write(&svg, report::svg(&report)).map_err(|e| format!("{}: {e}", svg.display()))?;
    eprintln!("loadtest: wrote {} and {}", md.display(), svg.display());
    for run in &report.runs {
        let line = report::summary_line(run, report.cores, report.slo_p99_us, report.target_rps);
        let cpu = run
            .sustainable()
            .and_then(|s| s.proxy_cpu_us)
            .or(run.probe.proxy_cpu_us)
            .map_or_else(String::new, |v| format!(" (proxy CPU {v:.1} µs/req)"));
        println!("{line}{cpu}");
    }
    if args.repeat > 1 {
        for group in report::by_scenario(&report.runs) {
            println!(
                "{}",
                report::repeated_line(&group, report.cores, report.slo_p99_us, report.target_rps)
            );
        }
    }
    Ok(())
}

fn command_line() -> String {
    let mut parts = vec!["loadtest".to_string()];
    parts.extend(std::env::args().skip(1));
    parts.join(" ")
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
