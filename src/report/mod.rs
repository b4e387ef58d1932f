//! Error reporting (docs/behaviour.md §8): the events the proxy reports, the cheap handle the request
//! path and the checker report through, and the "opr-reporter" thread that sends them to
//! the configured provider (one module per provider's wire format).
//!
//! `Reporter::report` never blocks: it offers the event to a bounded queue and counts it
//! as dropped when the queue is full. One thread takes events off the queue and POSTs
//! each to the provider over HTTPS (ureq with rustls), counting what was sent and what
//! failed. Without a provider the handle is a no-op and there is no thread.

mod appsignal;
mod logowl;
mod raygun;
pub(crate) mod reason;
mod sentry;
pub(crate) mod settings;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crate::{info, warn};
use settings::{LoggingProvider, ReportingConfig};

/// Events the queue holds; what comes on top while it is full is dropped (and counted).
pub(crate) const QUEUE_CAPACITY: usize = 1024;
/// Opening a connection to the provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One whole request to the provider, connect included.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping proxy keeps sending what is queued.
const FLUSH: Duration = Duration::from_secs(2);
/// Longest tag value (Sentry's limit).
const MAX_TAG_CHARS: usize = 200;
/// Response bodies are read (so the connection can be reused) up to this, then dropped.
const MAX_RESPONSE_BODY: u64 = 64 * 1024;
/// The original's namespace (`logger` in Sentry, `namespace` in AppSignal and LogOwl).
const NAMESPACE: &str = "proxy";

/// Something to report. Reasons and causes are the texts the log lines carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    /// An executor is offline: the checker saw it go offline (or found it offline in its
    /// first round), or a worker flagged it after a refused connection (`worker`).
    HealthCheckError {
        executor: String,
        reason: String,
        worker: Option<usize>,
    },
    /// The proxy answered a `502` or `504` to a forwarded request.
    HttpError {
        status: u16,
        method: String,
        /// Without the query string (it may carry tokens).
        path: String,
        /// The executor the request went to last, when it got that far.
        executor: Option<String>,
        /// The error's message and cause (`ProxyError`'s `Display`).
        cause: String,
        worker: usize,
    },
    /// `OPR_PROXY_HEALTHCHECK_URL` failed or answered other than `2xx`.
    HealthcheckUrlFailed {
        /// Without user info, query or fragment (`redact_url`).
        url: String,
        reason: String,
    },
}

/// Counters for metrics: reports the provider accepted (`2xx`), reports that failed
/// (another status, unreachable, timed out) and reports dropped because the queue was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportStats {
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

enum Msg {
    Report(SystemTime, Report),
    Stop,
}

/// The handle: cheap to clone, `Send`, never blocks. `Reporter::default()` is disabled.
#[derive(Clone, Default)]
pub(crate) struct Reporter {
    tx: Option<SyncSender<Msg>>,
    counters: Arc<Counters>,
}

impl Reporter {
    /// Whether reports go anywhere: callers skip building a report when they do not.
    pub(crate) fn is_enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queue `report` for the reporter thread, or count it as dropped when the queue is
    /// full. Never waits.
    pub(crate) fn report(&self, report: Report) {
        let Some(tx) = &self.tx else {
            return;
        };
        if tx.try_send(Msg::Report(SystemTime::now(), report)).is_err() {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> ReportStats {
        ReportStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            dropped: self.counters.dropped.load(Ordering::Relaxed),
        }
    }
}

/// The running reporter thread.
#[must_use = "stop it to send what is queued before the process exits"]
pub(crate) struct ReporterThread {
    tx: SyncSender<Msg>,
    stopping: Arc<AtomicBool>,
    /// Disconnected when the thread ends.
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl ReporterThread {
    /// Let the thread send what is queued for up to `FLUSH`, then leave it: a provider
    /// that hangs cannot hold up the exit. What is still queued then is counted dropped.
    pub(crate) fn stop(self) {
        self.stopping.store(true, Ordering::Release);
        // Wakes a thread waiting on an empty queue; a full queue is seen through the flag.
        let _ = self.tx.try_send(Msg::Stop);
        drop(self.tx);
        if let Err(mpsc::RecvTimeoutError::Disconnected) = self.done.recv_timeout(FLUSH) {
            let _ = self.thread.join();
        }
    }
}

/// Settings of one reporter (tests shorten the timeouts and the queue).
pub(crate) struct Settings {
    pub target: Target,
    pub common: Common,
    pub capacity: usize,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
}

/// Start reporting to `reporting`: a disabled handle and no thread without a provider.
pub(crate) fn start(
    reporting: Option<&ReportingConfig>,
    common: Common,
) -> io::Result<(Reporter, Option<ReporterThread>)> {
    let Some(reporting) = reporting else {
        return Ok((Reporter::default(), None));
    };
    let target = Target::new(reporting);
    info!(
        "error reports go to {} at {}",
        reporting.provider.name(),
        target.base
    );
    let settings = Settings {
        target,
        common,
        capacity: QUEUE_CAPACITY,
        connect_timeout: CONNECT_TIMEOUT,
        send_timeout: SEND_TIMEOUT,
    };
    let (reporter, thread) = spawn(settings)?;
    Ok((reporter, Some(thread)))
}

pub(crate) fn spawn(settings: Settings) -> io::Result<(Reporter, ReporterThread)> {
    let (tx, rx) = mpsc::sync_channel(settings.capacity);
    let counters = Arc::new(Counters::default());
    let stopping = Arc::new(AtomicBool::new(false));
    let (done_tx, done) = mpsc::channel::<()>();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(settings.connect_timeout))
        .timeout_global(Some(settings.send_timeout))
        .max_redirects(0)
        .max_idle_connections(2)
        .max_idle_connections_per_host(1)
        .user_agent(concat!("opr-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent();
    let mut sender = Sender {
        agent,
        target: settings.target,
        common: settings.common,
        counters: counters.clone(),
        failing: false,
        dropped_logged: 0,
    };
    let flag = stopping.clone();
    let thread = thread::Builder::new()
        .name("opr-reporter".to_string())
        .spawn(move || {
            let _done = done_tx;
            sender.run(&rx, &flag);
        })?;
    let reporter = Reporter {
        tx: Some(tx.clone()),
        counters,
    };
    let thread = ReporterThread {
        tx,
        stopping,
        done,
        thread,
    };
    Ok((reporter, thread))
}

/// What the reporter thread owns.
struct Sender {
    agent: ureq::Agent,
    target: Target,
    common: Common,
    counters: Arc<Counters>,
    /// The last send failed: the next failure is not logged again, a success is.
    failing: bool,
    /// Drops already logged.
    dropped_logged: u64,
}

impl Sender {
    fn run(&mut self, rx: &Receiver<Msg>, stopping: &AtomicBool) {
        let mut deadline = None;
        loop {
            let msg = if stopping.load(Ordering::Acquire) {
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + FLUSH);
                if Instant::now() >= deadline {
                    let left = rx.try_iter().filter(|m| matches!(m, Msg::Report(..)));
                    let left = left.count() as u64;
                    self.counters.dropped.fetch_add(left, Ordering::Relaxed);
                    return;
                }
                match rx.try_recv() {
                    Ok(msg) => msg,
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => return,
                }
            };
            match msg {
                Msg::Stop => return,
                Msg::Report(at, report) => self.send(at, &report),
            }
        }
    }

    fn send(&mut self, at: SystemTime, report: &Report) {
        let event = report.event(&self.common, at);
        let request = self.target.request(&event);
        let provider = self.target.provider.name();
        match post(&self.agent, &request) {
            Ok(status) if (200..300).contains(&status) => {
                self.counters.sent.fetch_add(1, Ordering::Relaxed);
                if self.failing {
                    self.failing = false;
                    info!("error reports to {provider} are delivered again");
                }
            }
            result => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    let reason = match result {
                        Ok(status) => format!("it answered status {status}"),
                        Err(reason) => reason,
                    };
                    warn!(
                        "error report to {provider} failed: {reason} (further failures are \
                         counted, not logged, until one is delivered)"
                    );
                }
            }
        }
        let dropped = self.counters.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_logged {
            warn!(
                "{} error report(s) dropped: the queue was full ({dropped} in all)",
                dropped - self.dropped_logged
            );
            self.dropped_logged = dropped;
        }
    }
}

/// POST one request; the status, or why there is none. The URL is never part of the
/// reason (AppSignal's key is in its query).
fn post(agent: &ureq::Agent, request: &Request) -> Result<u16, String> {
    let mut builder = agent.post(&request.url);
    for (name, value) in &request.query {
        builder = builder.query(name, value);
    }
    for (name, value) in &request.headers {
        builder = builder.header(*name, value.as_str());
    }
    match builder.send(&request.body[..]) {
        Ok(mut response) => {
            let body = response.body_mut().with_config().limit(MAX_RESPONSE_BODY);
            let _ = body.read_to_vec();
            Ok(response.status().as_u16())
        }
        Err(e) => Err(reason::describe(&e, agent)),
    }
}

/// What every event says about the process.
pub(crate) struct Common {
    /// `OPR_PROXY_VERSION`.
    pub version: String,
    /// `production`, or `staging` in dev mode (the original's two values).
    pub environment: &'static str,
    /// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`, else `unknown`).
    pub server_name: String,
}

impl Common {
    /// `version`: `OPR_PROXY_VERSION`; `development`: `OPR_PROXY_ENV=development`.
    pub(crate) fn new(version: &str, development: bool) -> Common {
        Common {
            version: version.to_string(),
            environment: if development { "staging" } else { "production" },
            server_name: server_name(),
        }
    }
}

fn server_name() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    [kernel, std::env::var("HOSTNAME").ok()]
        .into_iter()
        .flatten()
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// A report as every provider sees it: the fields of the original's log entry.
pub(crate) struct Event<'a> {
    pub common: &'a Common,
    pub timestamp: SystemTime,
    /// `healthCheckError` or `httpError`: Sentry's exception type and transaction,
    /// AppSignal's error name and action, Raygun's class name, a LogOwl badge.
    pub action: &'static str,
    /// The line the proxy logs for it.
    pub message: String,
    /// `code`, `worker` and what the event is about (`executor`, `method`, `url`), each
    /// at most 200 characters.
    pub tags: BTreeMap<&'static str, String>,
    /// The long texts: `reason` or `cause`.
    pub extra: BTreeMap<&'static str, String>,
}

impl Event<'_> {
    fn seconds(&self) -> u64 {
        self.timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    }

    fn rfc3339(&self) -> String {
        crate::text::rfc3339(self.timestamp)
    }
}

pub(crate) const HEALTH_CHECK_ERROR: &str = "healthCheckError";
pub(crate) const HTTP_ERROR: &str = "httpError";

impl Report {
    pub(crate) fn event<'a>(&self, common: &'a Common, timestamp: SystemTime) -> Event<'a> {
        let mut tags = BTreeMap::new();
        let mut extra = BTreeMap::new();
        let mut tag = |name, value: &str| {
            if !value.is_empty() {
                tags.insert(name, reason::truncate(value, MAX_TAG_CHARS));
            }
        };
        let (action, message) = match self {
            Report::HealthCheckError {
                executor,
                reason,
                worker,
            } => {
                tag("code", "500");
                tag("executor", executor);
                tag("worker", &worker_name(*worker));
                extra.insert("reason", reason.clone());
                let message = format!("Executor \"{executor}\" went offline: {reason}");
                (HEALTH_CHECK_ERROR, message)
            }
            Report::HttpError {
                status,
                method,
                path,
                executor,
                cause,
                worker,
            } => {
                tag("code", &status.to_string());
                tag("method", method);
                tag("url", path);
                tag("executor", executor.as_deref().unwrap_or(""));
                tag("worker", &worker.to_string());
                extra.insert("cause", cause.clone());
                (HTTP_ERROR, cause.clone())
            }
            Report::HealthcheckUrlFailed { url, reason } => {
                tag("code", "500");
                tag("url", url);
                tag("worker", "checker");
                extra.insert("reason", reason.clone());
                let message = format!("Healthcheck URL call failed: {reason}");
                (HEALTH_CHECK_ERROR, message)
            }
        };
        Event {
            common,
            timestamp,
            action,
            message,
            tags,
            extra,
        }
    }
}

fn worker_name(worker: Option<usize>) -> String {
    worker.map_or_else(|| "checker".to_string(), |w| w.to_string())
}

/// `url` without user info, query and fragment: a healthcheck URL may carry a token.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

/// One request to a provider, as its module builds it.
#[derive(Debug)]
pub(crate) struct Request {
    pub url: String,
    /// Added to the URL, percent-encoded.
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(&'static str, String)>,
    /// JSON.
    pub body: Vec<u8>,
}

/// Where events go and with which key.
pub(crate) struct Target {
    pub provider: LoggingProvider,
    /// Scheme, host and optional path prefix, without a trailing `/`.
    pub base: String,
    pub key: String,
    pub project_id: String,
}

impl Target {
    pub(crate) fn new(config: &ReportingConfig) -> Target {
        let base = match (&config.endpoint, &config.host, config.provider) {
            (Some(endpoint), _, _) => endpoint.clone(),
            (None, Some(host), _) => format!("https://{host}"),
            (None, None, LoggingProvider::Sentry) => sentry::BASE.to_string(),
            (None, None, LoggingProvider::AppSignal) => appsignal::BASE.to_string(),
            (None, None, LoggingProvider::Raygun) => raygun::BASE.to_string(),
            (None, None, LoggingProvider::LogOwl) => logowl::BASE.to_string(),
        };
        Target {
            provider: config.provider,
            base,
            key: config.key.clone(),
            project_id: config.project_id.clone().unwrap_or_default(),
        }
    }

    pub(crate) fn request(&self, event: &Event<'_>) -> Request {
        match self.provider {
            LoggingProvider::Sentry => sentry::request(self, event),
            LoggingProvider::AppSignal => appsignal::request(self, event),
            LoggingProvider::Raygun => raygun::request(self, event),
            LoggingProvider::LogOwl => logowl::request(self, event),
        }
    }
}

/// Serialize a provider body; these types cannot fail to serialize.
fn json<T: serde::Serialize>(body: &T) -> Vec<u8> {
    sonic_rs::to_vec(body).unwrap_or_default()
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// A reporter whose queue the test reads instead of a thread.
#[cfg(test)]
pub(crate) fn capture() -> (Reporter, Captured) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_CAPACITY);
    let reporter = Reporter {
        tx: Some(tx),
        counters: Arc::default(),
    };
    (reporter, Captured(rx))
}

#[cfg(test)]
pub(crate) struct Captured(Receiver<Msg>);

#[cfg(test)]
impl Captured {
    /// The reports queued since the last call.
    pub(crate) fn take(&self) -> Vec<Report> {
        let reports = self.0.try_iter().filter_map(|msg| match msg {
            Msg::Report(_, report) => Some(report),
            Msg::Stop => None,
        });
        reports.collect()
    }
}

#[cfg(test)]
mod tests;
