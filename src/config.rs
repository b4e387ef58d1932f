//! Configuration (docs/behaviour.md §1): every environment variable's name, default and rule, parsed
//! into a typed, validated `Config` from any key→value source (tests use a map).
//! Invalid values are errors naming the variable, the bad value and what is allowed.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::report::settings::{
    self, Lookup, ReportingConfig, OPR_PROXY_LOGGING_ENDPOINT, OPR_PROXY_LOGGING_PROVIDER,
    PROVIDERS,
};

type Parsed<T> = Result<T, ConfigError>;
type Range = RangeInclusive<u64>;

pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

// Variable names, used everywhere instead of string literals.
pub(crate) const PORT: &str = "PORT";
pub(crate) const OPR_PROXY_HOST: &str = "OPR_PROXY_HOST";
pub(crate) const OPR_PROXY_ALGORITHM: &str = "OPR_PROXY_ALGORITHM";
pub(crate) const OPR_PROXY_WORKER_PER_CORE: &str = "OPR_PROXY_WORKER_PER_CORE";
pub(crate) const OPR_PROXY_CORES: &str = "OPR_PROXY_CORES";
pub(crate) const OPR_PROXY_EXECUTORS: &str = "OPR_PROXY_EXECUTORS";
pub(crate) const OPR_PROXY_HEALTHCHECK: &str = "OPR_PROXY_HEALTHCHECK";
pub(crate) const OPR_PROXY_HEALTHCHECK_INTERVAL: &str = "OPR_PROXY_HEALTHCHECK_INTERVAL";
pub(crate) const OPR_PROXY_HEALTHCHECK_TIMEOUT: &str = "OPR_PROXY_HEALTHCHECK_TIMEOUT";
pub(crate) const OPR_PROXY_HEALTHCHECK_URL: &str = "OPR_PROXY_HEALTHCHECK_URL";
pub(crate) const OPR_PROXY_MAX_TIMEOUT: &str = "OPR_PROXY_MAX_TIMEOUT";
pub(crate) const OPR_PROXY_CONNECT_TIMEOUT: &str = "OPR_PROXY_CONNECT_TIMEOUT";
pub(crate) const OPR_PROXY_ENV: &str = "OPR_PROXY_ENV";
pub(crate) const OPR_PROXY_SECRET: &str = "OPR_PROXY_SECRET";
pub(crate) const OPR_PROXY_EXECUTOR_SECRET: &str = "OPR_PROXY_EXECUTOR_SECRET";
// OPR_PROXY_LOGGING_PROVIDER, _CONFIG and _ENDPOINT: report/settings.rs, beside the reporters.
pub(crate) const OPR_PROXY_MAX_BODY_SIZE: &str = "OPR_PROXY_MAX_BODY_SIZE";
pub(crate) const OPR_PROXY_VERSION: &str = "OPR_PROXY_VERSION";
pub(crate) const OPR_PROXY_IO_DRIVER: &str = "OPR_PROXY_IO_DRIVER";
pub(crate) const OPR_PROXY_IDLE_TIMEOUT: &str = "OPR_PROXY_IDLE_TIMEOUT";
pub(crate) const OPR_PROXY_HEADER_TIMEOUT: &str = "OPR_PROXY_HEADER_TIMEOUT";
pub(crate) const OPR_PROXY_POOL_SIZE: &str = "OPR_PROXY_POOL_SIZE";
pub(crate) const OPR_PROXY_POOL_IDLE_TIMEOUT: &str = "OPR_PROXY_POOL_IDLE_TIMEOUT";
pub(crate) const OPR_PROXY_SHUTDOWN_TIMEOUT: &str = "OPR_PROXY_SHUTDOWN_TIMEOUT";
pub(crate) const OPR_PROXY_ACCESS_LOG: &str = "OPR_PROXY_ACCESS_LOG";
pub(crate) const OPR_PROXY_ACCESS_LOG_FORMAT: &str = "OPR_PROXY_ACCESS_LOG_FORMAT";
pub(crate) const OPR_PROXY_SPLICE: &str = "OPR_PROXY_SPLICE";
pub(crate) const OPR_PROXY_BODY_TIMEOUT: &str = "OPR_PROXY_BODY_TIMEOUT";
pub(crate) const OPR_PROXY_MAX_CONNECTIONS: &str = "OPR_PROXY_MAX_CONNECTIONS";
pub(crate) const OPR_PROXY_CONNECTION_BALANCE: &str = "OPR_PROXY_CONNECTION_BALANCE";
pub(crate) const OPR_PROXY_HEALTHCHECK_RISE: &str = "OPR_PROXY_HEALTHCHECK_RISE";
pub(crate) const OPR_PROXY_HEALTHCHECK_FALL: &str = "OPR_PROXY_HEALTHCHECK_FALL";
pub(crate) const OPR_PROXY_EJECT_AFTER: &str = "OPR_PROXY_EJECT_AFTER";
/// The later original's Redis DSN for sharing "runtime is warm here" marks: accepted and
/// not used (logged once at start).
pub(crate) const OPR_PROXY_CONNECTIONS_STATE: &str = "OPR_PROXY_CONNECTIONS_STATE";
pub(crate) const OPR_PROXY_EXECUTOR_CONCURRENCY: &str = "OPR_PROXY_EXECUTOR_CONCURRENCY";
pub(crate) const OPR_PROXY_QUEUE_SIZE: &str = "OPR_PROXY_QUEUE_SIZE";
pub(crate) const OPR_PROXY_QUEUE_TIMEOUT: &str = "OPR_PROXY_QUEUE_TIMEOUT";
pub(crate) const OPR_PROXY_AFFINITY_LOAD_FACTOR: &str = "OPR_PROXY_AFFINITY_LOAD_FACTOR";

/// 22 MiB, the original's request body limit.
pub(crate) const DEFAULT_MAX_BODY_SIZE: u64 = 23_068_672;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    Random,
    First,
    Last,
    /// Fewest requests in flight from this worker; ties by round-robin.
    LeastRequest,
    /// Power of two choices: two random candidates, the one with fewer in flight.
    P2c,
    /// A stable order of executors per runtime (rendezvous hashing) with bounded loads;
    /// `p2c` for requests without a runtime id.
    Affinity,
}

impl Algorithm {
    /// The `OPR_PROXY_ALGORITHM` word, as logs and messages show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::Random => "random",
            Algorithm::First => "first",
            Algorithm::Last => "last",
            Algorithm::LeastRequest => "least-request",
            Algorithm::P2c => "p2c",
            Algorithm::Affinity => "affinity",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const ALGORITHMS: [(&str, Algorithm); 7] = [
    ("round-robin", Algorithm::RoundRobin),
    ("random", Algorithm::Random),
    ("first", Algorithm::First),
    ("last", Algorithm::Last),
    ("least-request", Algorithm::LeastRequest),
    ("p2c", Algorithm::P2c),
    ("affinity", Algorithm::Affinity),
];

/// `OPR_PROXY_AFFINITY_LOAD_FACTOR` in thousandths (1.25 = 1250), so the bound is integer
/// arithmetic and exact.
pub(crate) const LOAD_FACTOR_SCALE: u32 = 1000;
/// 1.0 (no executor may take more than its share) to 100 (almost plain affinity).
const LOAD_FACTORS: RangeInclusive<u32> = 1000..=100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    Production,
    Development,
}

const ENVS: [(&str, Env); 2] = [
    ("production", Env::Production),
    ("development", Env::Development),
];

/// How access log lines are written (`OPR_PROXY_ACCESS_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessLogFormat {
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

const ACCESS_LOG_FORMATS: [(&str, AccessLogFormat); 2] = [
    ("text", AccessLogFormat::Text),
    ("json", AccessLogFormat::Json),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

const IO_DRIVERS: [(&str, IoDriver); 3] = [
    ("auto", IoDriver::Auto),
    ("io_uring", IoDriver::IoUring),
    ("epoll", IoDriver::Epoll),
];

/// How the kernel spreads new connections over the workers' `SO_REUSEPORT` listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionBalance {
    /// To the worker pinned to the CPU that received the connection (a reuseport CBPF
    /// program), when workers are pinned; the kernel's hash otherwise.
    Cpu,
    /// The kernel's hash of the connection's addresses and ports.
    Hash,
}

const CONNECTION_BALANCES: [(&str, ConnectionBalance); 2] = [
    ("cpu", ConnectionBalance::Cpu),
    ("hash", ConnectionBalance::Hash),
];

const BODY_UNIT: &str = "bytes, 0 = no limit";

const ON_OFF: [(&str, bool); 2] = [("enabled", true), ("disabled", false)];
const AUTO_OFF: [(&str, bool); 2] = [("auto", true), ("off", false)];

/// One executor from `OPR_PROXY_EXECUTORS`; `host` is a name or IP (IPv6 without brackets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutorAddr {
    pub host: String,
    pub port: u16,
    /// The item as the operator spelled it (trimmed): the executor's name in
    /// `x-opr-executor-hostname`, `/v1/proxy/containers`, logs, reports and metrics, as
    /// the original shows it (`mockoon1`, not `mockoon1:80`).
    pub name: String,
}

impl ExecutorAddr {
    /// `host:port`, with IPv6 in brackets (`[::1]:8080`): where the executor is reached
    /// (the health probe's URL and the `Host` header sent for HTTP/1.0 clients).
    pub(crate) fn hostname(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The whole configuration; each field's variable, default and range are in docs/behaviour.md §1 and
/// in `Config::from_lookup` below.
#[derive(Clone)]
pub struct Config {
    pub port: u16,
    pub host: IpAddr,
    pub algorithm: Algorithm,
    pub worker_per_core: usize,
    /// `None` = every CPU in the process's affinity mask.
    pub cores: Option<usize>,
    /// In `OPR_PROXY_EXECUTORS` order, duplicates kept.
    pub executors: Vec<ExecutorAddr>,
    pub healthcheck: bool,
    pub healthcheck_interval: Duration,
    pub healthcheck_timeout: Duration,
    pub healthcheck_url: Option<String>,
    /// Consecutive passing probes before an offline executor goes online.
    pub healthcheck_rise: u32,
    /// Consecutive failing probes before an online executor goes offline.
    pub healthcheck_fall: u32,
    /// Consecutive exchange failures (proxy `502`s, connect failures) from one executor
    /// on one worker that flag it offline for every worker; `None` = off.
    pub eject_after: Option<u32>,
    pub max_timeout: Duration,
    pub connect_timeout: Duration,
    pub env: Env,
    pub secret: String,
    pub executor_secret: String,
    /// `None` = no error reporting.
    pub reporting: Option<ReportingConfig>,
    /// `None` = no limit (`OPR_PROXY_MAX_BODY_SIZE=0`).
    pub max_body_size: Option<u64>,
    pub version: String,
    pub io_driver: IoDriver,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    /// Idle executor connections kept per worker per executor; 0 = no pooling.
    pub pool_size: usize,
    pub pool_idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// Move Content-Length bodies with splice (socket → pipe → socket).
    pub splice: bool,
    /// Longest wait for the next bytes of a request body (slow or stalled uploads).
    pub body_timeout: Duration,
    /// Client connections one worker serves at once; at the cap it stops accepting.
    pub max_connections: usize,
    pub connection_balance: ConnectionBalance,
    /// `OPR_PROXY_CONNECTIONS_STATE` with its user-info, query and fragment removed
    /// (`redact_dsn`), kept only to say at start that it is not used; `None` when unset.
    pub connections_state: Option<String>,
    /// Most requests in flight to one executor from this process, shared among the
    /// workers (`admission.rs`); `None` = no cap.
    pub executor_concurrency: Option<u32>,
    /// Requests one worker keeps waiting for a free slot; 0 = none wait (503 at once).
    pub queue_size: usize,
    /// Longest wait in the queue before a `503`.
    pub queue_timeout: Duration,
    /// `OPR_PROXY_AFFINITY_LOAD_FACTOR` in thousandths of the mean load (`LOAD_FACTOR_SCALE`).
    pub affinity_load_factor: u32,
}

impl Config {
    /// Reads every variable through `lookup`; the first invalid one is the error.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let src = Source(&lookup);
        // The `as` casts are lossless: each number was range-checked to fit.
        Ok(Config {
            port: src.number(PORT, 80, 0..=65_535, "")? as u16,
            host: src.host()?,
            algorithm: src.choice(OPR_PROXY_ALGORITHM, Algorithm::Random, &ALGORITHMS)?,
            worker_per_core: src.number(OPR_PROXY_WORKER_PER_CORE, 1, 1..=64, "")? as usize,
            cores: src
                .optional(OPR_PROXY_CORES, 1..=1024, "")?
                .map(|n| n as usize),
            executors: src.executors()?,
            healthcheck: src.choice(OPR_PROXY_HEALTHCHECK, true, &ON_OFF)?,
            healthcheck_interval: src.millis(
                OPR_PROXY_HEALTHCHECK_INTERVAL,
                10_000,
                100..=86_400_000,
            )?,
            healthcheck_timeout: src.millis(
                OPR_PROXY_HEALTHCHECK_TIMEOUT,
                10_000,
                1..=3_600_000,
            )?,
            healthcheck_url: src.healthcheck_url()?,
            healthcheck_rise: src.number(OPR_PROXY_HEALTHCHECK_RISE, 1, 1..=100, "checks")? as u32,
            healthcheck_fall: src.number(OPR_PROXY_HEALTHCHECK_FALL, 1, 1..=100, "checks")? as u32,
            eject_after: src
                .optional(OPR_PROXY_EJECT_AFTER, 1..=10_000, "failures")?
                .map(|n| n as u32),
            max_timeout: src.seconds(OPR_PROXY_MAX_TIMEOUT, 600, 1..=86_400)?,
            connect_timeout: src.seconds(OPR_PROXY_CONNECT_TIMEOUT, 10, 1..=3_600)?,
            env: src.choice(OPR_PROXY_ENV, Env::Production, &ENVS)?,
            secret: src.required(OPR_PROXY_SECRET, "set it to the key clients must send")?,
            executor_secret: src.get(OPR_PROXY_EXECUTOR_SECRET).unwrap_or_default(),
            reporting: src.reporting()?,
            max_body_size: match src.optional(OPR_PROXY_MAX_BODY_SIZE, 0..=u64::MAX, BODY_UNIT)? {
                None => Some(DEFAULT_MAX_BODY_SIZE),
                Some(0) => None,
                Some(n) => Some(n),
            },
            version: src.get(OPR_PROXY_VERSION).unwrap_or_else(|| VERSION.into()),
            io_driver: src.choice(OPR_PROXY_IO_DRIVER, IoDriver::Auto, &IO_DRIVERS)?,
            idle_timeout: src.seconds(OPR_PROXY_IDLE_TIMEOUT, 60, 1..=86_400)?,
            header_timeout: src.seconds(OPR_PROXY_HEADER_TIMEOUT, 30, 1..=3_600)?,
            pool_size: src.number(OPR_PROXY_POOL_SIZE, 1024, 0..=65_536, "")? as usize,
            pool_idle_timeout: src.seconds(OPR_PROXY_POOL_IDLE_TIMEOUT, 30, 1..=3_600)?,
            shutdown_timeout: src.seconds(OPR_PROXY_SHUTDOWN_TIMEOUT, 30, 0..=3_600)?,
            access_log: src.choice(OPR_PROXY_ACCESS_LOG, false, &ON_OFF)?,
            access_log_format: src.choice(
                OPR_PROXY_ACCESS_LOG_FORMAT,
                AccessLogFormat::Text,
                &ACCESS_LOG_FORMATS,
            )?,
            splice: src.choice(OPR_PROXY_SPLICE, true, &AUTO_OFF)?,
            body_timeout: src.seconds(OPR_PROXY_BODY_TIMEOUT, 60, 1..=86_400)?,
            max_connections: src.number(OPR_PROXY_MAX_CONNECTIONS, 16_384, 1..=1_048_576, "")?
                as usize,
            connection_balance: src.choice(
                OPR_PROXY_CONNECTION_BALANCE,
                ConnectionBalance::Cpu,
                &CONNECTION_BALANCES,
            )?,
            connections_state: src.get(OPR_PROXY_CONNECTIONS_STATE).map(|v| redact_dsn(&v)),
            executor_concurrency: match src.optional(
                OPR_PROXY_EXECUTOR_CONCURRENCY,
                0..=1_000_000,
                "requests, 0 = no cap",
            )? {
                None | Some(0) => None,
                Some(n) => Some(n as u32),
            },
            queue_size: src.number(
                OPR_PROXY_QUEUE_SIZE,
                1024,
                0..=1_048_576,
                "requests per worker, 0 = no waiting",
            )? as usize,
            queue_timeout: src.millis(OPR_PROXY_QUEUE_TIMEOUT, 30_000, 1..=3_600_000)?,
            affinity_load_factor: src.load_factor()?,
        })
    }

    /// Reads the process environment. A value that is not UTF-8 is converted lossily so it
    /// fails validation visibly instead of counting as unset (which would mean the default).
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
    }

    pub(crate) fn is_development(&self) -> bool {
        self.env == Env::Development
    }
}

// Written out rather than derived so that logging a `Config` never prints the secrets.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redact = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Config")
            .field("port", &self.port)
            .field("host", &self.host)
            .field("algorithm", &self.algorithm)
            .field("worker_per_core", &self.worker_per_core)
            .field("cores", &self.cores)
            .field("executors", &self.executors)
            .field("healthcheck", &self.healthcheck)
            .field("healthcheck_interval", &self.healthcheck_interval)
            .field("healthcheck_timeout", &self.healthcheck_timeout)
            .field("healthcheck_url", &self.healthcheck_url)
            .field("healthcheck_rise", &self.healthcheck_rise)
            .field("healthcheck_fall", &self.healthcheck_fall)
            .field("eject_after", &self.eject_after)
            .field("max_timeout", &self.max_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("env", &self.env)
            .field("secret", &redact(&self.secret))
            .field("executor_secret", &redact(&self.executor_secret))
            .field("reporting", &self.reporting)
            .field("max_body_size", &self.max_body_size)
            .field("version", &self.version)
            .field("io_driver", &self.io_driver)
            .field("idle_timeout", &self.idle_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("pool_size", &self.pool_size)
            .field("pool_idle_timeout", &self.pool_idle_timeout)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("access_log", &self.access_log)
            .field("access_log_format", &self.access_log_format)
            .field("splice", &self.splice)
            .field("body_timeout", &self.body_timeout)
            .field("max_connections", &self.max_connections)
            .field("connection_balance", &self.connection_balance)
            .field("connections_state", &self.connections_state)
            .field("executor_concurrency", &self.executor_concurrency)
            .field("queue_size", &self.queue_size)
            .field("queue_timeout", &self.queue_timeout)
            .field("affinity_load_factor", &self.affinity_load_factor)
            .finish()
    }
}

/// Why the configuration was rejected. An empty `value` means a required variable is
/// missing; otherwise `value` is the offending (trimmed) value or executor item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    /// What would have been accepted, as a phrase ("allowed values are ...").
    pub allowed: String,
}

impl ConfigError {
    /// The value of a URL-valued variable is shown without its user info: the message
    /// goes to logs, the password must not.
    fn new(variable: &'static str, value: &str, allowed: impl Into<String>) -> ConfigError {
        let value = if URL_VALUED.contains(&variable) {
            redact_user_info(value)
        } else {
            value.to_string()
        };
        let allowed = allowed.into();
        ConfigError {
            variable,
            value,
            allowed,
        }
    }
}

/// Variables whose values are URLs (or lists of them) that may carry `user:password@`.
const URL_VALUED: [&str; 3] = [
    OPR_PROXY_EXECUTORS,
    OPR_PROXY_HEALTHCHECK_URL,
    OPR_PROXY_LOGGING_ENDPOINT,
];

/// `value` with the user info of each comma-separated item shown as `<redacted>`
/// (`http://<redacted>@host/`): everything between the scheme (or the item's start) and
/// its last `@` goes, so a password holding `/`, `?` or `#` cannot leak either.
fn redact_user_info(value: &str) -> String {
    let items: Vec<String> = value
        .split(',')
        .map(|item| {
            let Some(at) = item.rfind('@') else {
                return item.to_string();
            };
            let start = match item.find("://") {
                Some(i) if i < at => i + 3,
                _ => item.len() - item.trim_start().len(),
            };
            format!("{}<redacted>{}", &item[..start], &item[at..])
        })
        .collect();
    items.join(",")
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (variable, value, allowed) = (self.variable, &self.value, &self.allowed);
        if value.is_empty() {
            write!(f, "{variable} is required: {allowed}")
        } else {
            // `{:?}` quotes and escapes, so a value holding a newline still prints one line.
            write!(f, "invalid {variable}={value:?}: {allowed}")
        }
    }
}

impl std::error::Error for ConfigError {}

const EXECUTOR_FORMS: &str = "allowed items are host, host:port, http://host or \
    http://host:port (IPv6 as [::1] or [::1]:8080; port 1-65535, 80 when absent)";

/// The lookup plus the rules shared by many variables.
struct Source<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Source<'_> {
    /// The trimmed value, or `None` when unset, empty or blank: compose files pass empty
    /// values for "not configured", so those take the default.
    fn get(&self, name: &str) -> Option<String> {
        let value = (self.0)(name)?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    fn required(&self, name: &'static str, hint: &str) -> Parsed<String> {
        self.get(name)
            .ok_or_else(|| ConfigError::new(name, "", hint))
    }

    /// A plain decimal integer within `range`, or `None` when unset. Signs, inner blanks,
    /// underscores and overflow are rejected rather than guessed at.
    fn optional(&self, name: &'static str, range: Range, unit: &str) -> Parsed<Option<u64>> {
        let Some(value) = self.get(name) else {
            return Ok(None);
        };
        let digits = value.bytes().all(|b| b.is_ascii_digit());
        match value.parse::<u64>() {
            Ok(n) if digits && range.contains(&n) => Ok(Some(n)),
            _ => {
                let (min, max) = range.into_inner();
                let unit = if unit.is_empty() {
                    String::new()
                } else {
                    format!(" ({unit})")
                };
                let allowed = format!("allowed values are whole numbers from {min} to {max}{unit}");
                Err(ConfigError::new(name, &value, allowed))
            }
        }
    }

    fn number(&self, name: &'static str, default: u64, range: Range, unit: &str) -> Parsed<u64> {
        Ok(self.optional(name, range, unit)?.unwrap_or(default))
    }

    fn seconds(&self, name: &'static str, default: u64, range: Range) -> Parsed<Duration> {
        let seconds = self.number(name, default, range, "seconds")?;
        Ok(Duration::from_secs(seconds))
    }

    fn millis(&self, name: &'static str, default: u64, range: Range) -> Parsed<Duration> {
        let millis = self.number(name, default, range, "milliseconds")?;
        Ok(Duration::from_millis(millis))
    }

    /// One of a fixed set of lower-case words, matched exactly.
    fn choice<T: Copy>(&self, name: &'static str, default: T, options: &[(&str, T)]) -> Parsed<T> {
        let Some(value) = self.get(name) else {
            return Ok(default);
        };
        match options.iter().find(|(word, _)| *word == value) {
            Some((_, v)) => Ok(*v),
            None => {
                let words: Vec<&str> = options.iter().map(|(word, _)| *word).collect();
                let allowed = format!("allowed values are {}", words.join(", "));
                Err(ConfigError::new(name, &value, allowed))
            }
        }
    }

    fn host(&self) -> Parsed<IpAddr> {
        let Some(value) = self.get(OPR_PROXY_HOST) else {
            return Ok(IpAddr::from([0, 0, 0, 0]));
        };
        let allowed = "allowed values are IP addresses such as 0.0.0.0, 127.0.0.1 or ::";
        let error = |_| ConfigError::new(OPR_PROXY_HOST, &value, allowed);
        value.parse().map_err(error)
    }

    fn executors(&self) -> Parsed<Vec<ExecutorAddr>> {
        let hint = "set it to a comma-separated list of executors, e.g. exc1:80,exc2:80";
        let list = self.required(OPR_PROXY_EXECUTORS, hint)?;
        let mut executors = Vec::new();
        for item in list.split(',').map(str::trim) {
            // A stray comma usually means a lost host; say so instead of skipping it.
            if item.is_empty() {
                let allowed = format!("the list has an empty item; {EXECUTOR_FORMS}");
                return Err(ConfigError::new(OPR_PROXY_EXECUTORS, &list, allowed));
            }
            match parse_executor(item) {
                Ok(executor) => executors.push(executor),
                Err(why) => {
                    let allowed = format!("{why}; {EXECUTOR_FORMS}");
                    return Err(ConfigError::new(OPR_PROXY_EXECUTORS, item, allowed));
                }
            }
        }
        Ok(executors)
    }

    /// The error-reporting variables, parsed beside the reporters (report/settings.rs)
    /// with this lookup and these rules; a rejection is a `ConfigError` like any other.
    fn reporting(&self) -> Parsed<Option<ReportingConfig>> {
        let named = self.choice(OPR_PROXY_LOGGING_PROVIDER, None, &PROVIDERS)?;
        let get = |name: &str| self.get(name);
        let lookup = Lookup {
            get: &get,
            host_port: |host| parse_executor(host).map(drop),
            http_url: valid_http_url,
        };
        settings::parse(&lookup, named)
            .map_err(|r| ConfigError::new(r.variable, &r.value, r.allowed))
    }

    /// A plain decimal with at most three decimals (`1`, `1.5`, `1.25`), kept in
    /// thousandths; default 1.25.
    fn load_factor(&self) -> Parsed<u32> {
        let Some(value) = self.get(OPR_PROXY_AFFINITY_LOAD_FACTOR) else {
            return Ok(1250);
        };
        let (whole, fraction) = match value.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (value.as_str(), None),
        };
        let digits = |s: &str, most: usize| {
            (1..=most).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
        };
        let parsed = match fraction {
            _ if !digits(whole, 3) => None,
            Some(f) if !digits(f, 3) => None,
            // Both parts are 1-3 digits, so neither parse nor the sum can fail or overflow.
            f => {
                let thousandths = format!("{:0<3}", f.unwrap_or(""));
                let (w, f) = (whole.parse::<u32>(), thousandths.parse::<u32>());
                w.ok().zip(f.ok()).map(|(w, f)| w * LOAD_FACTOR_SCALE + f)
            }
        };
        match parsed {
            Some(n) if LOAD_FACTORS.contains(&n) => Ok(n),
            _ => Err(ConfigError::new(
                OPR_PROXY_AFFINITY_LOAD_FACTOR,
                &value,
                "allowed values are decimals from 1.0 to 100 with at most 3 decimals \
                 (e.g. 1.25: an executor may take 25 % more than its share)",
            )),
        }
    }

    fn healthcheck_url(&self) -> Parsed<Option<String>> {
        match self.get(OPR_PROXY_HEALTHCHECK_URL) {
            Some(url) if !valid_http_url(&url) => {
                let allowed = "allowed values are http:// or https:// URLs with a host (and a \
                    port from 1 to 65535), or empty for none";
                Err(ConfigError::new(OPR_PROXY_HEALTHCHECK_URL, &url, allowed))
            }
            url => Ok(url),
        }
    }
}

/// One trimmed, non-empty `OPR_PROXY_EXECUTORS` item; the error is the reason.
fn parse_executor(item: &str) -> Result<ExecutorAddr, String> {
    let authority = match item.split_once("://") {
        None => item,
        // The original's docs show `http://host:port`; a trailing "/" is harmless.
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => {
            rest.strip_suffix('/').unwrap_or(rest)
        }
        // Executors are reached over plain HTTP only; accepting https would silently drop TLS.
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
            return Err("https:// is not supported (executors are reached over plain HTTP)".into())
        }
        Some((scheme, _)) => return Err(format!("scheme {scheme}:// is not supported")),
    };
    if authority.contains(['/', '?', '#']) {
        return Err("a path, query or fragment is not allowed".into());
    }
    if authority.contains('@') {
        return Err("user info (user@) is not allowed".into());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, tail) = bracketed
            .split_once(']')
            .ok_or("missing ] after the IPv6 address")?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{inside:?} is not an IPv6 address"));
        }
        let port = match tail {
            "" => None,
            _ => Some(tail.strip_prefix(':').ok_or("expected :port after ]")?),
        };
        (inside, port)
    } else {
        if authority.matches(':').count() > 1 {
            return Err("IPv6 addresses need brackets, e.g. [::1]:8080".into());
        }
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host_char = |b: u8| b.is_ascii_alphanumeric() || b".-_".contains(&b);
        if host.is_empty() {
            return Err("the host is empty".into());
        } else if !host.bytes().all(host_char) {
            return Err("the host may only hold letters, digits, '.', '-' and '_'".into());
        }
        (host, port)
    };
    let port = match port {
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    };
    let host = host.to_string();
    let name = item.to_string();
    Ok(ExecutorAddr { host, port, name })
}

/// A DSN as it may be logged: scheme, host, port and path; user-info becomes
/// `<redacted>@` (everything up to the last `@`, so a password holding `/` or `@` is
/// cut too), and the query and fragment (`?password=`) are dropped.
pub(crate) fn redact_dsn(dsn: &str) -> String {
    let redacted = redact_user_info(dsn);
    redacted.split(['?', '#']).next().unwrap_or("").to_string()
}

/// `http://` or `https://`, a non-empty host, and no blanks or control characters.
fn valid_http_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let http = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if !http || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    // authority = [userinfo@]host[:port], up to the path, query or fragment.
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, tail) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            (host, tail.strip_prefix(':'))
        }
        None => match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    // RFC 3986 §3.2.3: the port is decimal digits; a connection needs 1-65535 (empty
    // means the scheme's default).
    let port_ok = port.is_none_or(|p| {
        p.is_empty()
            || (p.bytes().all(|b| b.is_ascii_digit()) && matches!(p.parse::<u16>(), Ok(1..)))
    });
    !host.is_empty() && port_ok
}

/// Where `opr-proxy healthcheck` reaches the proxy on this host: `OPR_PROXY_HOST` and
/// `PORT` as the proxy reads them, with an any-address listener (`0.0.0.0`, `::`, unset)
/// reached over loopback.
pub fn probe_address(host: Option<&str>, port: &str) -> Result<SocketAddr, String> {
    let port: u16 = port
        .trim()
        .parse()
        .map_err(|_| format!("invalid PORT={port:?}"))?;
    let ip = match host.map(str::trim).filter(|h| !h.is_empty()) {
        None => IpAddr::from([127, 0, 0, 1]),
        Some(h) => match h.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            Ok(IpAddr::V6(v6)) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            Ok(ip) => ip,
            Err(_) => return Err(format!("invalid OPR_PROXY_HOST={h:?}")),
        },
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    #[test]
    fn healthcheck_probes_where_the_proxy_listens() {
        let probe = |h: Option<&str>, p: &str| probe_address(h, p).map(|a| a.to_string());
        assert_eq!(probe(None, "80"), Ok("127.0.0.1:80".into()));
        assert_eq!(probe(Some("0.0.0.0"), "8080"), Ok("127.0.0.1:8080".into()));
        assert_eq!(probe(Some("::"), "80"), Ok("[::1]:80".into()));
        assert_eq!(probe(Some("10.1.2.3"), "80"), Ok("10.1.2.3:80".into()));
        assert_eq!(probe(Some("::1"), "80"), Ok("[::1]:80".into()));
        assert!(probe(Some("nope"), "80").is_err());
        assert!(probe(None, "eighty").is_err());
    }

    use super::*;
    use crate::report::settings::{LoggingProvider, OPR_PROXY_LOGGING_CONFIG};
    use std::collections::HashMap;

    const REQUIRED: [(&str, &str); 2] = [(OPR_PROXY_EXECUTORS, "exc1"), (OPR_PROXY_SECRET, "key")];

    /// The two required variables plus `pairs` (later pairs override earlier ones).
    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<&str, &str> = REQUIRED.iter().chain(pairs).copied().collect();
        Config::from_lookup(|name| map.get(name).map(|v| v.to_string()))
    }

    fn ok(pairs: &[(&str, &str)]) -> Config {
        parse(pairs).unwrap_or_else(|e| panic!("{pairs:?} rejected: {e}"))
    }

    fn err(pairs: &[(&str, &str)]) -> ConfigError {
        let Err(e) = parse(pairs) else {
            panic!("{pairs:?} accepted")
        };
        e
    }

    fn executors(list: &str) -> Result<Vec<ExecutorAddr>, ConfigError> {
        parse(&[(OPR_PROXY_EXECUTORS, list)]).map(|c| c.executors)
    }

    fn addr(host: &str, port: u16) -> ExecutorAddr {
        ExecutorAddr {
            host: host.into(),
            port,
            name: format!("{host}:{port}"),
        }
    }

    /// Where the executors are reached, without the names they are shown by.
    fn reached(executors: &[ExecutorAddr]) -> Vec<(String, u16)> {
        executors.iter().map(|e| (e.host.clone(), e.port)).collect()
    }

    #[test]
    fn defaults_with_only_required_vars() {
        let c = ok(&[]);
        assert_eq!((c.port, c.host), (80, IpAddr::from([0, 0, 0, 0])));
        assert_eq!(
            (c.algorithm, c.worker_per_core, c.cores),
            (Algorithm::Random, 1, None)
        );
        assert_eq!(reached(&c.executors), reached(&[addr("exc1", 80)]));
        assert_eq!(c.executors[0].name, "exc1");
        assert!(c.healthcheck);
        assert_eq!(c.healthcheck_interval, Duration::from_millis(10_000));
        assert_eq!(c.healthcheck_timeout, Duration::from_millis(10_000));
        assert_eq!(c.healthcheck_url, None);
        assert_eq!((c.healthcheck_rise, c.healthcheck_fall), (1, 1));
        assert_eq!(c.eject_after, None);
        assert_eq!(c.max_timeout, Duration::from_secs(600));
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert!(c.env == Env::Production && !c.is_development());
        assert_eq!((c.secret.as_str(), c.executor_secret.as_str()), ("key", ""));
        assert_eq!(c.reporting, None);
        assert_eq!(c.max_body_size, Some(23_068_672));
        assert_eq!((c.version.as_str(), c.io_driver), (VERSION, IoDriver::Auto));
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.pool_size, 1024);
        assert_eq!(c.pool_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert!(!c.access_log);
        assert_eq!(c.access_log_format, AccessLogFormat::Text);
        assert!(c.splice);
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        assert_eq!(c.max_connections, 16_384);
        assert_eq!(c.connection_balance, ConnectionBalance::Cpu);
        assert_eq!(c.executor_concurrency, None);
        assert_eq!(c.queue_size, 1024);
        assert_eq!(c.queue_timeout, Duration::from_millis(30_000));
        assert_eq!(c.affinity_load_factor, 1250);
    }

    #[test]
    fn empty_or_blank_values_take_the_default() {
        let defaults = format!("{:?}", ok(&[]));
        for blank in ["", " \t "] {
            // Every variable asked for is blank except the two required ones.
            let c = Config::from_lookup(|name| match name {
                OPR_PROXY_EXECUTORS => Some("exc1".into()),
                OPR_PROXY_SECRET => Some("key".into()),
                _ => Some(blank.into()),
            });
            assert_eq!(format!("{:?}", c.unwrap()), defaults);
        }
    }

    #[test]
    fn valid_forms_of_every_variable() {
        // (variable, value, the field as `Debug` prints it); the field is named after the
        // variable, e.g. OPR_PROXY_MAX_BODY_SIZE -> max_body_size.
        let cases = [
            (PORT, " 8080 ", "8080"),
            (PORT, "0", "0"),
            (PORT, "065535", "65535"),
            (OPR_PROXY_HOST, "::1", "::1"),
            (OPR_PROXY_HOST, "127.0.0.1", "127.0.0.1"),
            (OPR_PROXY_ALGORITHM, "round-robin", "RoundRobin"),
            (OPR_PROXY_ALGORITHM, "random", "Random"),
            (OPR_PROXY_ALGORITHM, "first", "First"),
            (OPR_PROXY_ALGORITHM, "last", "Last"),
            (OPR_PROXY_ALGORITHM, "least-request", "LeastRequest"),
            (OPR_PROXY_ALGORITHM, "p2c", "P2c"),
            (OPR_PROXY_ALGORITHM, "affinity", "Affinity"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "1", "1000"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "1.0", "1000"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, " 1.25 ", "1250"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "1.5", "1500"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "2.005", "2005"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "010", "10000"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "100", "100000"),
            (OPR_PROXY_AFFINITY_LOAD_FACTOR, "100.000", "100000"),
            (OPR_PROXY_HEALTHCHECK_RISE, "2", "2"),
            (OPR_PROXY_HEALTHCHECK_RISE, "100", "100"),
            (OPR_PROXY_HEALTHCHECK_FALL, "1", "1"),
            (OPR_PROXY_HEALTHCHECK_FALL, "3", "3"),
            (OPR_PROXY_EJECT_AFTER, "1", "Some(1)"),
            (OPR_PROXY_EJECT_AFTER, "10000", "Some(10000)"),
            (OPR_PROXY_WORKER_PER_CORE, "6", "6"), // the original's value
            (OPR_PROXY_WORKER_PER_CORE, "64", "64"),
            (OPR_PROXY_CORES, "1", "Some(1)"),
            (OPR_PROXY_CORES, "1024", "Some(1024)"),
            (OPR_PROXY_HEALTHCHECK, "enabled", "true"),
            (OPR_PROXY_HEALTHCHECK, "disabled", "false"),
            (OPR_PROXY_HEALTHCHECK_INTERVAL, "100", "100ms"),
            (OPR_PROXY_HEALTHCHECK_INTERVAL, "86400000", "86400s"),
            (OPR_PROXY_HEALTHCHECK_TIMEOUT, "1", "1ms"),
            (OPR_PROXY_HEALTHCHECK_TIMEOUT, "3600000", "3600s"),
            (
                OPR_PROXY_HEALTHCHECK_URL,
                "http://[::1]:9",
                "Some(\"http://[::1]:9\")",
            ),
            (
                OPR_PROXY_HEALTHCHECK_URL,
                "https://u@h.io/p?q",
                "Some(\"https://u@h.io/p?q\")",
            ),
            (OPR_PROXY_MAX_TIMEOUT, "1", "1s"),
            (OPR_PROXY_MAX_TIMEOUT, "86400", "86400s"),
            (OPR_PROXY_CONNECT_TIMEOUT, "3600", "3600s"),
            (OPR_PROXY_ENV, "production", "Production"),
            (OPR_PROXY_ENV, "development", "Development"),
            (OPR_PROXY_MAX_BODY_SIZE, "1024", "Some(1024)"),
            (OPR_PROXY_MAX_BODY_SIZE, "0", "None"),
            (
                OPR_PROXY_MAX_BODY_SIZE,
                "18446744073709551615",
                "Some(18446744073709551615)",
            ),
            (OPR_PROXY_VERSION, " 0.7.0 ", "\"0.7.0\""),
            (OPR_PROXY_IO_DRIVER, "auto", "Auto"),
            (OPR_PROXY_IO_DRIVER, "io_uring", "IoUring"),
            (OPR_PROXY_IO_DRIVER, "epoll", "Epoll"),
            (OPR_PROXY_IDLE_TIMEOUT, "1", "1s"),
            (OPR_PROXY_HEADER_TIMEOUT, "3600", "3600s"),
            (OPR_PROXY_POOL_SIZE, "0", "0"),
            (OPR_PROXY_POOL_SIZE, "65536", "65536"),
            (OPR_PROXY_POOL_IDLE_TIMEOUT, "3600", "3600s"),
            (OPR_PROXY_SHUTDOWN_TIMEOUT, "0", "0ns"),
            (OPR_PROXY_ACCESS_LOG, "enabled", "true"),
            (OPR_PROXY_ACCESS_LOG, "disabled", "false"),
            (OPR_PROXY_CONNECTION_BALANCE, "cpu", "Cpu"),
            (OPR_PROXY_CONNECTION_BALANCE, "hash", "Hash"),
            (OPR_PROXY_EXECUTOR_CONCURRENCY, "0", "None"),
            (OPR_PROXY_EXECUTOR_CONCURRENCY, "1", "Some(1)"),
            (OPR_PROXY_EXECUTOR_CONCURRENCY, "1000000", "Some(1000000)"),
            (OPR_PROXY_QUEUE_SIZE, "0", "0"),
            (OPR_PROXY_QUEUE_SIZE, "1048576", "1048576"),
            (OPR_PROXY_QUEUE_TIMEOUT, "1", "1ms"),
            (OPR_PROXY_QUEUE_TIMEOUT, "3600000", "3600s"),
        ];
        for (variable, value, want) in cases {
            let field = variable.trim_start_matches("OPR_PROXY_").to_lowercase();
            let debug = format!("{:?}", ok(&[(variable, value)]));
            let (mid, last) = (format!(" {field}: {want},"), format!(" {field}: {want} }}"));
            let found = debug.contains(&mid) || debug.ends_with(&last);
            assert!(
                found,
                "{variable}={value:?} should give {field}: {want}: {debug}"
            );
        }
        // The strings, which `Debug` redacts.
        let c = ok(&[
            (OPR_PROXY_SECRET, " s3cret "),
            (OPR_PROXY_EXECUTOR_SECRET, "exec-secret"),
            (OPR_PROXY_LOGGING_CONFIG, "sentry://1:KEY@host"),
        ]);
        assert_eq!(
            (c.secret.as_str(), c.executor_secret.as_str()),
            ("s3cret", "exec-secret")
        );
        assert_eq!(c.reporting.as_ref().map(|r| r.key.as_str()), Some("KEY"));
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("s3cret") && !debug.contains("exec-secret") && !debug.contains("KEY")
        );
    }

    #[test]
    fn every_invalid_value_names_its_variable() {
        let cases: &[(&str, &[&str])] = &[
            (PORT, &["65536", "-1", "+80", "8 0", "http"]),
            (PORT, &["99999999999999999999"]), // overflow
            (OPR_PROXY_HOST, &["localhost", "[::1]", "0.0.0.0:80"]),
            (OPR_PROXY_ALGORITHM, &["fastest", "Random", "round_robin"]),
            (OPR_PROXY_ALGORITHM, &["least_request", "P2C", "least-conn"]),
            (OPR_PROXY_HEALTHCHECK_RISE, &["0", "101", "two", "-1"]),
            (OPR_PROXY_HEALTHCHECK_FALL, &["0", "101", "1.5"]),
            (OPR_PROXY_EJECT_AFTER, &["0", "10001", "off", "5x"]),
            (OPR_PROXY_WORKER_PER_CORE, &["0", "65", "1.0"]),
            (OPR_PROXY_CORES, &["0", "1025", "all"]),
            (OPR_PROXY_HEALTHCHECK, &["true", "Enabled"]),
            (OPR_PROXY_HEALTHCHECK_INTERVAL, &["99", "86400001", "10s"]),
            (OPR_PROXY_HEALTHCHECK_TIMEOUT, &["0", "3600001"]),
            (OPR_PROXY_HEALTHCHECK_URL, &["h.io", "ftp://h/", "http://"]),
            (OPR_PROXY_HEALTHCHECK_URL, &["https:///p", "http://:80/"]),
            (
                OPR_PROXY_HEALTHCHECK_URL,
                &["http://[]/", "http://h:99999/"],
            ),
            (
                OPR_PROXY_HEALTHCHECK_URL,
                &["http://h:0/", "http://h:8o/", "http://[::1]:65536"],
            ),
            (OPR_PROXY_HEALTHCHECK_URL, &["http://h/a b"]),
            (OPR_PROXY_MAX_TIMEOUT, &["0", "86401", "1.5"]),
            (OPR_PROXY_CONNECT_TIMEOUT, &["0", "3601"]),
            (OPR_PROXY_ENV, &["dev", "Production"]),
            (OPR_PROXY_LOGGING_PROVIDER, &["datadog", "AppSignal"]),
            (OPR_PROXY_MAX_BODY_SIZE, &["-1", "22MB"]),
            (OPR_PROXY_MAX_BODY_SIZE, &["18446744073709551616"]), // overflow
            (OPR_PROXY_IO_DRIVER, &["uring", "io-uring", "EPOLL"]),
            (OPR_PROXY_IDLE_TIMEOUT, &["0", "86401"]),
            (OPR_PROXY_HEADER_TIMEOUT, &["0", "3601"]),
            (OPR_PROXY_POOL_SIZE, &["65537", "-0", "1_000"]),
            (OPR_PROXY_POOL_IDLE_TIMEOUT, &["0", "3601"]),
            (OPR_PROXY_SHUTDOWN_TIMEOUT, &["3601"]),
            (OPR_PROXY_ACCESS_LOG, &["on", "1"]),
            (OPR_PROXY_CONNECTION_BALANCE, &["CPU", "random", "off"]),
            (
                OPR_PROXY_EXECUTOR_CONCURRENCY,
                &["-1", "1000001", "off", "4.0"],
            ),
            (OPR_PROXY_QUEUE_SIZE, &["1048577", "-1", "1k"]),
            (OPR_PROXY_QUEUE_TIMEOUT, &["0", "3600001", "30s"]),
            (
                OPR_PROXY_AFFINITY_LOAD_FACTOR,
                &[
                    "0.999",
                    "0",
                    "100.001",
                    "101",
                    "1000",
                    "1.2345",
                    "1.",
                    ".5",
                    "1,25",
                    "-1.5",
                    "+1.5",
                    "1e0",
                    "1.2.3",
                    "1 .5",
                    "NaN",
                    "inf",
                    "1.-5",
                    "1.+5",
                    "4294967.296",
                ],
            ),
            (OPR_PROXY_EXECUTORS, &["https://exc1"]),
        ];
        for (variable, values) in cases {
            for value in *values {
                let e = err(&[(variable, value)]);
                assert_eq!((e.variable, e.value.as_str()), (*variable, *value), "{e}");
                let line = e.to_string();
                let prefix = format!("invalid {variable}=\"");
                assert!(line.starts_with(&prefix) && !e.allowed.is_empty(), "{line}");
            }
        }
    }

    #[test]
    fn error_lines_read_well() {
        let e = err(&[(OPR_PROXY_ALGORITHM, "fastest")]).to_string();
        let want = "invalid OPR_PROXY_ALGORITHM=\"fastest\": \
                    allowed values are round-robin, random, first, last, least-request, p2c, \
                    affinity";
        assert_eq!(e, want);
        let e = err(&[(OPR_PROXY_AFFINITY_LOAD_FACTOR, "0.5")]).to_string();
        let want = "invalid OPR_PROXY_AFFINITY_LOAD_FACTOR=\"0.5\": allowed values are decimals \
                    from 1.0 to 100 with at most 3 decimals (e.g. 1.25: an executor may take \
                    25 % more than its share)";
        assert_eq!(e, want);
        let e = err(&[(OPR_PROXY_HEALTHCHECK_INTERVAL, "5")]).to_string();
        let want = "invalid OPR_PROXY_HEALTHCHECK_INTERVAL=\"5\": \
                    allowed values are whole numbers from 100 to 86400000 (milliseconds)";
        assert_eq!(e, want);
        // Control characters are escaped so the message stays one line.
        let e = err(&[(OPR_PROXY_ENV, "prod\nuction")]).to_string();
        assert_eq!(e.lines().count(), 1);
        let e = err(&[(OPR_PROXY_EXECUTORS, "a, https://b:443")]).to_string();
        let want = "invalid OPR_PROXY_EXECUTORS=\"https://b:443\": https:// is not supported";
        assert!(e.starts_with(want), "{e}");
    }

    #[test]
    fn required_variables_missing_or_empty() {
        let cases = [
            (OPR_PROXY_SECRET, ""),
            (OPR_PROXY_SECRET, "  "),
            (OPR_PROXY_EXECUTORS, " "),
        ];
        for (variable, value) in cases {
            let e = err(&[(variable, value)]);
            assert_eq!((e.variable, e.value.as_str()), (variable, ""));
            let prefix = format!("{variable} is required: ");
            assert!(e.to_string().starts_with(&prefix), "{e}");
        }
        let e = err(&[(OPR_PROXY_SECRET, "")]).to_string();
        assert_eq!(
            e,
            "OPR_PROXY_SECRET is required: set it to the key clients must send"
        );
        let nothing = Config::from_lookup(|_| None).map(|_| ());
        assert_eq!(nothing.unwrap_err().variable, OPR_PROXY_EXECUTORS);
        let no_secret = Config::from_lookup(|n| (n == OPR_PROXY_EXECUTORS).then(|| "a".into()));
        assert_eq!(
            no_secret.map(|_| ()).unwrap_err().variable,
            OPR_PROXY_SECRET
        );
    }

    #[test]
    fn executor_forms() {
        let cases: &[(&str, &[ExecutorAddr])] = &[
            ("exc1", &[addr("exc1", 80)]),
            ("exc1:3000", &[addr("exc1", 3000)]),
            ("http://exc1:3000", &[addr("exc1", 3000)]),
            ("http://exc1", &[addr("exc1", 80)]),
            ("HTTP://exc1:1/", &[addr("exc1", 1)]),
            ("10.0.0.1:65535", &[addr("10.0.0.1", 65535)]),
            ("my_exec.internal-1", &[addr("my_exec.internal-1", 80)]),
            ("[::1]", &[addr("::1", 80)]),
            ("[::1]:8080", &[addr("::1", 8080)]),
            ("http://[fd00::2]:81/", &[addr("fd00::2", 81)]),
            (
                " a , b:81 ,\thttp://c ",
                &[addr("a", 80), addr("b", 81), addr("c", 80)],
            ),
            ("a,a", &[addr("a", 80), addr("a", 80)]),
        ];
        for (list, want) in cases {
            assert_eq!(reached(&executors(list).unwrap()), reached(want), "{list}");
        }
        assert_eq!(addr("exc1", 80).hostname(), "exc1:80");
        assert_eq!(addr("::1", 8080).hostname(), "[::1]:8080");
    }

    #[test]
    fn executors_are_named_as_spelled() {
        let list = " mockoon1 , mockoon2:80,http://exc3:3000/ ,\t[::1]:8080";
        let names: Vec<String> = executors(list)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names,
            ["mockoon1", "mockoon2:80", "http://exc3:3000/", "[::1]:8080"]
        );
    }

    #[test]
    fn algorithms_are_shown_as_spelled() {
        for (word, algorithm) in ALGORITHMS {
            assert_eq!(algorithm.as_str(), word);
            assert_eq!(algorithm.to_string(), word);
            assert_eq!(ok(&[(OPR_PROXY_ALGORITHM, word)]).algorithm, algorithm);
        }
    }

    #[test]
    fn url_errors_never_show_user_info() {
        let cases = [
            (
                OPR_PROXY_HEALTHCHECK_URL,
                "http://u:s3cret@h:99999/x",
                "http://<redacted>@h:99999/x",
            ),
            (
                OPR_PROXY_HEALTHCHECK_URL,
                "https://u:s3/c#r?et@/x",
                "https://<redacted>@/x",
            ),
            (
                OPR_PROXY_EXECUTORS,
                "a, http://u:s3cret@b:80",
                "http://<redacted>@b:80",
            ),
            (OPR_PROXY_EXECUTORS, "u:s3cret@b", "<redacted>@b"),
            (
                OPR_PROXY_EXECUTORS,
                "a,,http://u:s3cret@b",
                "a,,http://<redacted>@b",
            ),
        ];
        for (variable, value, shown) in cases {
            let e = err(&[(variable, value)]);
            assert_eq!((e.variable, e.value.as_str()), (variable, shown));
            assert!(!e.to_string().contains("s3"), "{e}");
        }
        let pairs = [
            (OPR_PROXY_LOGGING_CONFIG, "raygun://k"),
            (
                OPR_PROXY_LOGGING_ENDPOINT,
                "https://u:s3cret@relay.internal/",
            ),
        ];
        let e = err(&pairs);
        assert_eq!(e.variable, OPR_PROXY_LOGGING_ENDPOINT);
        assert_eq!(e.value, "https://<redacted>@relay.internal/");
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn executor_errors_name_the_item() {
        let bad = "https://exc1 ftp://exc1 http://exc1/v1 exc1/v1 http://exc1:80/x exc1? exc1?x \
                   exc1#x http://exc1// user@exc1 http://u:p@exc1 exc1:0 exc1:65536 exc1:http \
                   exc1: exc1:+80 :80 http:// exc1! ::1 ::1:80 [::1 [::1]8080 [nothost]:80 \
                   [::1]:0 []:80";
        for item in bad.split_whitespace().chain(["exc 1"]) {
            let e = executors(&format!("good, {item}")).unwrap_err();
            // Shown without user info (`<redacted>@exc1`).
            assert_eq!(
                (e.variable, e.value.as_str()),
                (OPR_PROXY_EXECUTORS, redact_user_info(item).as_str()),
                "{e}"
            );
        }
        // An empty item names the whole list, since the item itself has no text.
        for list in ["a,,b", "a,", ",a", "a, ,b", ","] {
            let e = executors(list).unwrap_err();
            assert_eq!((e.variable, e.value.as_str()), (OPR_PROXY_EXECUTORS, list));
            assert!(e.allowed.contains("empty item"), "{e}");
        }
    }

    /// Variable/value pairs for one case.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn reporting(pairs: &[(&str, &str)]) -> Option<ReportingConfig> {
        ok(pairs).reporting
    }

    fn reported(
        provider: LoggingProvider,
        key: &str,
        project_id: Option<&str>,
        host: Option<&str>,
    ) -> Option<ReportingConfig> {
        Some(ReportingConfig {
            provider,
            key: key.into(),
            project_id: project_id.map(Into::into),
            host: host.map(Into::into),
            endpoint: None,
        })
    }

    #[test]
    fn reporting_forms() {
        use LoggingProvider::*;
        const P: &str = OPR_PROXY_LOGGING_PROVIDER;
        const C: &str = OPR_PROXY_LOGGING_CONFIG;
        let cases: &[(Pairs, Option<ReportingConfig>)] = &[
            (&[], None),
            (&[(P, ""), (C, " ")], None),
            // DSNs: the provider comes from the scheme (named too, or not at all).
            (
                &[(C, "sentry://42:abc123@sentry.example.com")],
                reported(Sentry, "abc123", Some("42"), Some("sentry.example.com")),
            ),
            (
                &[
                    (P, "sentry"),
                    (C, "sentry://42:abc@o1.ingest.sentry.io:8443/"),
                ],
                reported(Sentry, "abc", Some("42"), Some("o1.ingest.sentry.io:8443")),
            ),
            (
                &[(C, "logowl://T-1@logowl.example.com")],
                reported(LogOwl, "T-1", None, Some("logowl.example.com")),
            ),
            (
                &[(C, "raygun://RG-KEY")],
                reported(Raygun, "RG-KEY", None, None),
            ),
            (
                &[(P, "appsignal"), (C, "AppSignal://as-key")],
                reported(AppSignal, "as-key", None, None),
            ),
            // The older form: the provider is named, the host is the provider's own.
            (
                &[(P, "sentry"), (C, "abc123;42")],
                reported(Sentry, "abc123", Some("42"), None),
            ),
            (
                &[(P, "logowl"), (C, "ticket-1")],
                reported(LogOwl, "ticket-1", None, None),
            ),
            (
                &[(P, "raygun"), (C, " rg;key ")],
                reported(Raygun, "rg;key", None, None),
            ),
            (
                &[(P, "appsignal"), (C, "as-key")],
                reported(AppSignal, "as-key", None, None),
            ),
        ];
        for (pairs, want) in cases {
            assert_eq!(reporting(pairs), *want, "{pairs:?}");
        }
        // The endpoint replaces the base URL; a trailing slash is dropped.
        let endpoints = [
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
            (
                "https://relay.internal/sentry/",
                "https://relay.internal/sentry",
            ),
            ("HTTP://[::1]:8080/", "HTTP://[::1]:8080"),
        ];
        for (url, want) in endpoints {
            let pairs = [(C, "raygun://k"), (OPR_PROXY_LOGGING_ENDPOINT, url)];
            let endpoint = reporting(&pairs).and_then(|r| r.endpoint);
            assert_eq!(endpoint.as_deref(), Some(want), "{url}");
        }
    }

    #[test]
    fn reporting_errors_name_their_variable() {
        const P: &str = OPR_PROXY_LOGGING_PROVIDER;
        const C: &str = OPR_PROXY_LOGGING_CONFIG;
        const E: &str = OPR_PROXY_LOGGING_ENDPOINT;
        // (pairs, variable, value as shown, a phrase of the reason)
        let cases: &[(Pairs, &str, &str, &str)] = &[
            (&[(P, "datadog")], P, "datadog", "allowed values are sentry"),
            // A provider without its key, a key without a provider.
            (&[(P, "sentry")], C, "", "<key>;<projectId> or sentry://"),
            (&[(P, "raygun"), (C, " ")], C, "", "<key> or raygun://<key>"),
            (&[(C, "abc123;42")], P, "", "is not a DSN"),
            // DSNs.
            (
                &[(C, "datadog://k")],
                C,
                "datadog://<redacted>",
                "is not a provider",
            ),
            (
                &[(C, "https://k@o1.ingest.sentry.io/42")],
                C,
                "https://<redacted>",
                "sentry://<projectId>:<key>@<host>",
            ),
            (
                &[(C, "a;b://k")],
                C,
                "<redacted>://<redacted>",
                "is not a provider",
            ),
            (
                &[(P, "raygun"), (C, "sentry://1:k@h")],
                P,
                "raygun",
                "leave the provider empty or set it to sentry",
            ),
            (
                &[(C, "sentry://k@h")],
                C,
                "sentry://<redacted>",
                "<projectId>:<key> before the @",
            ),
            (
                &[(C, "sentry://1:k")],
                C,
                "sentry://<redacted>",
                "no @<host>",
            ),
            (
                &[(C, "sentry://:k@h")],
                C,
                "sentry://<redacted>",
                "project id is empty",
            ),
            (
                &[(C, "sentry://1:@h")],
                C,
                "sentry://<redacted>",
                "key is empty",
            ),
            (
                &[(C, "sentry://1:k@")],
                C,
                "sentry://<redacted>",
                "bad host: the host is empty",
            ),
            (
                &[(C, "sentry://1:k@h/42")],
                C,
                "sentry://<redacted>",
                "path, query or fragment",
            ),
            (
                &[(C, "sentry://1:k@h:0")],
                C,
                "sentry://<redacted>",
                "bad host: port",
            ),
            (
                &[(C, "sentry://1:k@h?x")],
                C,
                "sentry://<redacted>",
                "path, query or fragment",
            ),
            (&[(C, "logowl://h")], C, "logowl://<redacted>", "no @<host>"),
            (
                &[(C, "logowl://@h")],
                C,
                "logowl://<redacted>",
                "key is empty",
            ),
            (
                &[(C, "logowl://t@bad host")],
                C,
                "logowl://<redacted>",
                "blanks",
            ),
            (
                &[(C, "raygun://")],
                C,
                "raygun://<redacted>",
                "key is empty",
            ),
            (
                &[(C, "raygun://u@k")],
                C,
                "raygun://<redacted>",
                "may not hold @ or :",
            ),
            (
                &[(C, "appsignal://k:1")],
                C,
                "appsignal://<redacted>",
                "may not hold @ or :",
            ),
            // The older form.
            (
                &[(P, "sentry"), (C, "abc123")],
                C,
                "<redacted>",
                "expected <key>;<projectId>",
            ),
            (
                &[(P, "sentry"), (C, ";42")],
                C,
                "<redacted>",
                "both non-empty",
            ),
            (
                &[(P, "sentry"), (C, "abc;")],
                C,
                "<redacted>",
                "both non-empty",
            ),
            (&[(P, "sentry"), (C, "a;4;2")], C, "<redacted>", "one ;"),
            (
                &[(P, "appsignal"), (C, "as key")],
                C,
                "<redacted>",
                "blanks",
            ),
            (
                &[(P, "logowl"), (C, "t\u{7f}")],
                C,
                "<redacted>",
                "control characters",
            ),
            // The endpoint.
            (
                &[(E, "http://127.0.0.1:9")],
                E,
                "http://127.0.0.1:9",
                "needs OPR_PROXY_LOGGING_CONFIG",
            ),
            (
                &[(C, "raygun://k"), (E, "127.0.0.1:9")],
                E,
                "127.0.0.1:9",
                "base URLs",
            ),
            (
                &[(C, "raygun://k"), (E, "ftp://h")],
                E,
                "ftp://h",
                "base URLs",
            ),
            (
                &[(C, "raygun://k"), (E, "http://h/?a=1")],
                E,
                "http://h/?a=1",
                "no user info, query",
            ),
            (
                &[(C, "raygun://k"), (E, "http://h#x")],
                E,
                "http://h#x",
                "no user info, query",
            ),
            (
                &[(C, "raygun://k"), (E, "http://u:p@h")],
                E,
                "http://<redacted>@h",
                "no user info",
            ),
        ];
        for (pairs, variable, value, phrase) in cases {
            let e = err(pairs);
            let line = e.to_string();
            assert_eq!(
                (e.variable, e.value.as_str()),
                (*variable, *value),
                "{line}"
            );
            assert!(
                line.contains(phrase),
                "{pairs:?}: {line:?} lacks {phrase:?}"
            );
            assert_eq!(line.lines().count(), 1, "{line}");
        }
    }

    #[test]
    fn reporting_keys_never_appear_in_errors_or_debug() {
        const C: &str = OPR_PROXY_LOGGING_CONFIG;
        let bad = [
            "sentry://1:SeCrEt@",
            "sentry://SeCrEt@h",
            "raygun://SeCrEt:x",
            "https://SeCrEt@o1.ingest.sentry.io/1",
            "SeCrEt;x;y",
        ];
        for config in bad {
            let e = err(&[(OPR_PROXY_LOGGING_PROVIDER, "sentry"), (C, config)]);
            assert!(!e.to_string().contains("SeCrEt"), "{e}");
        }
        for config in ["sentry://1:SeCrEt@h", "SeCrEt;1"] {
            let c = ok(&[(OPR_PROXY_LOGGING_PROVIDER, "sentry"), (C, config)]);
            assert!(c.reporting.is_some());
            assert!(!format!("{c:?}").contains("SeCrEt"), "{c:?}");
        }
    }

    #[test]
    fn secrets_never_appear_in_errors() {
        let secrets = [
            (OPR_PROXY_SECRET, "top-secret"),
            (OPR_PROXY_EXECUTOR_SECRET, "x-secret"),
        ];
        let e = err(&[secrets[0], secrets[1], (PORT, "x")]);
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn connections_state_is_accepted_and_redacted() {
        assert_eq!(ok(&[]).connections_state, None);
        assert_eq!(
            ok(&[(OPR_PROXY_CONNECTIONS_STATE, " ")]).connections_state,
            None
        );
        let cases = [
            (
                "redis://user:pa55@redis:6379",
                "redis://<redacted>@redis:6379",
            ),
            (
                "redis://:pa55@redis:6379/0",
                "redis://<redacted>@redis:6379/0",
            ),
            (
                "rediss://u:p@ss/w@rd@h:6380/1?x#y",
                "rediss://<redacted>@h:6380/1",
            ),
            ("redis://redis:6379?password=pa55", "redis://redis:6379"),
            ("redis://redis:6379", "redis://redis:6379"),
            ("u:pa55@redis", "<redacted>@redis"),
        ];
        for (value, shown) in cases {
            let c = ok(&[(OPR_PROXY_CONNECTIONS_STATE, value)]);
            assert_eq!(c.connections_state.as_deref(), Some(shown), "{value}");
            assert!(!format!("{c:?}").contains("pa55"), "{c:?}");
        }
    }
}
