//! `mock-executor`: runs one mock executor from the command line (demo, manual and load
//! tests) until killed.

use opr_loadtest::{FastMock, FastMockOptions, HealthMode, MockExecutor, MockOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: mock-executor --port PORT [--host 127.0.0.1] [--name NAME] \
                     [--health pass|text|newstyle|fail] [--usage N] [--engine std|fast] \
                     [--delay-ms N] [--warm-capacity K --cold-start-ms C] [--service-ms S] \
                     [--concurrency M]\n\
                     --delay-ms: wait N ms before every non-health answer (std engine)\n\
                     --engine fast: one monoio thread serving only the load-test routes \
                     (health, ping, download, upload, echo, mock/stats), for load tests\n\
                     --warm-capacity K --cold-start-ms C (fast engine): at most K runtimes \
                     (x-opr-runtime-id) warm, least recently used evicted; a request for a \
                     cold one waits C ms (concurrent ones wait for the same start); answers \
                     carry x-mock-cold: 0, 1 or wait\n\
                     --service-ms S (fast engine): every request takes S ms once its runtime \
                     is warm, on at most --concurrency M at once (0: no limit), the rest \
                     waiting in arrival order\n\
                     GET /v1/mock/stats (fast engine): requests, coldStarts, coldWaits, \
                     warmHits, inFlight, maxInFlight";

struct Args {
    host: IpAddr,
    port: u16,
    name: String,
    health: String,
    usage: Option<u8>,
    fast: bool,
    delay_ms: u64,
    warm_capacity: Option<usize>,
    cold_start_ms: Option<u64>,
    service_ms: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        host: IpAddr::from([127, 0, 0, 1]),
        port: 0,
        name: "mock-executor".to_string(),
        health: "pass".to_string(),
        usage: None,
        fast: false,
        delay_ms: 0,
        warm_capacity: None,
        cold_start_ms: None,
        service_ms: 0,
        concurrency: 0,
    };
    let mut port = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        if arg == "-h" || arg == "--help" {
            return Err(String::new());
        }
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg, None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--port" => {
                let v = value()?;
                port = Some(v.parse().map_err(|_| format!("invalid port {v:?}"))?);
            }
            "--host" => {
                let v = value()?;
                args.host = v.parse().map_err(|_| format!("invalid host IP {v:?}"))?;
            }
            "--name" => args.name = value()?,
            "--health" => args.health = value()?,
            "--usage" => {
                let v = value()?;
                args.usage = Some(v.parse().map_err(|_| format!("invalid usage {v:?}"))?);
            }
            "--delay-ms" => {
                let v = value()?;
                args.delay_ms = v.parse().map_err(|_| format!("invalid delay {v:?}"))?;
            }
            "--warm-capacity" => {
                let v = value()?;
                let k = v.parse().ok().filter(|k| (1..=1_000_000).contains(k));
                args.warm_capacity =
                    Some(k.ok_or_else(|| format!("invalid warm capacity {v:?} (1..=1000000)"))?);
            }
            "--cold-start-ms" => {
                let v = value()?;
                let c = v.parse().ok().filter(|c| *c <= 600_000);
                args.cold_start_ms =
                    Some(c.ok_or_else(|| format!("invalid cold start {v:?} (0..=600000 ms)"))?);
            }
            "--service-ms" => {
                let v = value()?;
                let ms = v.parse().ok().filter(|ms| *ms <= 600_000);
                args.service_ms =
                    ms.ok_or_else(|| format!("invalid service time {v:?} (0..=600000 ms)"))?;
            }
            "--concurrency" => {
                let v = value()?;
                let m = v.parse().ok().filter(|m| *m <= 1_000_000);
                args.concurrency =
                    m.ok_or_else(|| format!("invalid concurrency {v:?} (0..=1000000)"))?;
            }
            "--engine" => {
                args.fast = match value()?.as_str() {
                    "std" => false,
                    "fast" => true,
                    v => return Err(format!("unknown engine {v:?}")),
                }
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    args.port = port.ok_or("--port is required")?;
    if args.fast && args.delay_ms > 0 {
        return Err("--delay-ms needs --engine std".into());
    }
    if args.warm_capacity.is_some() != args.cold_start_ms.is_some() {
        return Err("--warm-capacity and --cold-start-ms go together".into());
    }
    let modelled = args.warm_capacity.is_some() || args.service_ms > 0 || args.concurrency > 0;
    if modelled && !args.fast {
        return Err(
            "--warm-capacity, --cold-start-ms, --service-ms and --concurrency need --engine fast"
                .into(),
        );
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("mock-executor: {msg}");
            }
            eprintln!("{USAGE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    let bind = SocketAddr::new(args.host, args.port);
    let cannot_listen = |e: std::io::Error| {
        eprintln!("mock-executor: cannot listen on {bind}: {e}");
        ExitCode::FAILURE
    };
    if args.fast {
        let model = FastMockOptions {
            warm: args
                .warm_capacity
                .zip(args.cold_start_ms)
                .map(|(k, c)| (k, Duration::from_millis(c))),
            service: Duration::from_millis(args.service_ms),
            slots: args.concurrency,
        };
        let mock = match FastMock::start_with(&args.name, bind, model) {
            Ok(m) => m,
            Err(e) => return cannot_listen(e),
        };
        println!(
            "mock executor {} (fast) listening on {}",
            args.name,
            mock.addr()
        );
        let _ = std::io::stdout().flush();
        loop {
            std::thread::park();
        }
    }
    let usage = args.usage.unwrap_or(0);
    let health = match args.health.as_str() {
        "pass" => HealthMode::Pass {
            usage,
            runtimes: Vec::new(),
        },
        "text" => HealthMode::Text,
        "newstyle" => HealthMode::NewStyle { usage: args.usage },
        "fail" => HealthMode::Fail,
        other => {
            eprintln!("mock-executor: unknown health mode {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let opts = MockOptions {
        name: args.name,
        bind,
        health,
        delay: Duration::from_millis(args.delay_ms),
        serial: false,
    };
    let mock = match MockExecutor::start(opts) {
        Ok(m) => m,
        Err(e) => return cannot_listen(e),
    };
    println!("mock executor {} listening on {}", mock.name(), mock.addr());
    let _ = std::io::stdout().flush();
    // Serve until killed (SIGTERM's default action ends the process).
    loop {
        std::thread::park();
    }
}
