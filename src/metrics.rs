//! Every metric the proxy exposes on `GET /v1/proxy/metrics` (Prometheus text format
//! 0.0.4): names, help and labels in one place. Counters live per worker and only that
//! worker writes them (a plain load and store: no locked instruction, no shared cache
//! line); a scrape sums them. Executor states come from the snapshot.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use crate::outcome::{ClientClose, Discard, Shed};
use crate::report::ReportStats;
use crate::snapshot::{ExecutorId, Snapshot};

/// Status codes counted one by one (RFC 9110 §15 and common extensions); any other code
/// is counted as `code="other"`.
const CODES: [u16; 62] = [
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304,
    305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
    416, 417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505,
    506, 507, 508, 510, 511,
];
const CODE_SLOTS: usize = CODES.len() + 1;

/// Upper bounds of the request-duration histogram, in seconds: 100 µs to 10 min.
const BUCKETS: [f64; 21] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Upper bounds of the queue-wait histogram, in seconds: 1 ms to 5 min.
const QUEUE_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

const DISCARDS: [Discard; 11] = [
    Discard::ExecutorClose,
    Discard::CloseDelimited,
    Discard::RequestUnfinished,
    Discard::Leftover,
    Discard::Unfinished,
    Discard::ClientStalled,
    Discard::IdleBytes,
    Discard::IdleClosed,
    Discard::Expired,
    Discard::PoolFull,
    Discard::Failed,
];

fn discard_label(d: Discard) -> &'static str {
    match d {
        Discard::ExecutorClose => "executor_close",
        Discard::CloseDelimited => "close_delimited",
        Discard::RequestUnfinished => "request_unfinished",
        Discard::Leftover => "leftover_bytes",
        Discard::Unfinished => "unfinished",
        Discard::ClientStalled => "client_stalled",
        Discard::IdleBytes => "idle_bytes",
        Discard::IdleClosed => "idle_closed",
        Discard::Expired => "idle_expired",
        Discard::PoolFull => "pool_full",
        Discard::Failed => "failed",
    }
}

/// A counter written by one thread only.
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    #[inline]
    fn add(&self, n: u64) {
        // Single writer: load + store is enough and avoids a locked read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline]
    fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

fn counters(n: usize) -> Box<[Counter]> {
    (0..n).map(|_| Counter::default()).collect()
}

/// One worker's counters; aligned so two workers never share a cache line.
#[repr(align(128))]
pub(crate) struct WorkerMetrics {
    /// `(executors + 1) × CODE_SLOTS`; the last row is "no executor".
    requests: Box<[Counter]>,
    in_flight: Counter,
    duration: [Counter; BUCKETS.len() + 1],
    duration_sum_us: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    opened: Box<[Counter]>,
    reused: Box<[Counter]>,
    /// Requests assigned to each executor and not finished (the picker's counts, mirrored
    /// for scrapes).
    executor_in_flight: Box<[Counter]>,
    /// Times this worker flagged the executor offline after `OPR_PROXY_EJECT_AFTER`
    /// consecutive failures.
    ejections: Box<[Counter]>,
    /// `executors × DISCARDS`.
    discarded: Box<[Counter]>,
    /// `affinity`: requests the executor owned but could not take (bounded load).
    affinity_spills: Box<[Counter]>,
    clients_open: Counter,
    clients_accepted: Counter,
    clients_closed: [Counter; ClientClose::ALL.len()],
    access_log_dropped: Counter,
    splice_fallbacks: Counter,
    spliced_bytes: Counter,
    /// Requests waiting in this worker's queue now (`admission.rs`).
    queue_depth: Counter,
    queue_wait: [Counter; QUEUE_BUCKETS.len() + 1],
    queue_wait_sum_us: Counter,
    /// `503`s for lack of capacity, by `Shed` (in `Shed::ALL` order).
    shed: [Counter; Shed::ALL.len()],
    driver: OnceLock<String>,
    /// The CPU the worker is pinned to; `None` when unpinned.
    cpu: OnceLock<Option<usize>>,
}

impl WorkerMetrics {
    fn new(executors: usize) -> WorkerMetrics {
        WorkerMetrics {
            requests: counters((executors + 1) * CODE_SLOTS),
            in_flight: Counter::default(),
            duration: Default::default(),
            duration_sum_us: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            opened: counters(executors),
            reused: counters(executors),
            executor_in_flight: counters(executors),
            ejections: counters(executors),
            discarded: counters(executors * DISCARDS.len()),
            affinity_spills: counters(executors),
            clients_open: Counter::default(),
            clients_accepted: Counter::default(),
            clients_closed: Default::default(),
            access_log_dropped: Counter::default(),
            splice_fallbacks: Counter::default(),
            spliced_bytes: Counter::default(),
            queue_depth: Counter::default(),
            queue_wait: Default::default(),
            queue_wait_sum_us: Counter::default(),
            shed: Default::default(),
            driver: OnceLock::new(),
            cpu: OnceLock::new(),
        }
    }

    pub(crate) fn set_driver(&self, driver: String, cpu: Option<usize>) {
        let _ = self.driver.set(driver);
        let _ = self.cpu.set(cpu);
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.add(1);
    }

    /// A request was answered: `executor` is `None` when the proxy answered it itself.
    pub(crate) fn request_done(
        &self,
        executor: Option<ExecutorId>,
        status: u16,
        took: Duration,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        self.in_flight.sub(1);
        let executors = self.opened.len();
        let row = executor
            .map(ExecutorId::index)
            .filter(|&e| e < executors)
            .unwrap_or(executors);
        self.requests[row * CODE_SLOTS + code_slot(status)].add(1);
        let us = took.as_micros().min(u128::from(u64::MAX)) as u64;
        let seconds = us as f64 / 1e6;
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.duration[bucket].add(1);
        self.duration_sum_us.add(us);
        self.bytes_in.add(bytes_in);
        self.bytes_out.add(bytes_out);
    }

    pub(crate) fn executor_opened(&self, executor: ExecutorId) {
        if let Some(c) = self.opened.get(executor.index()) {
            c.add(1);
        }
    }

    pub(crate) fn executor_reused(&self, executor: ExecutorId) {
        if let Some(c) = self.reused.get(executor.index()) {
            c.add(1);
        }
    }

    /// A request was assigned to the executor (`started`) or finished with it.
    pub(crate) fn executor_in_flight(&self, executor: ExecutorId, started: bool) {
        if let Some(c) = self.executor_in_flight.get(executor.index()) {
            if started {
                c.add(1);
            } else {
                c.sub(1);
            }
        }
    }

    pub(crate) fn executor_ejected(&self, executor: ExecutorId) {
        if let Some(c) = self.ejections.get(executor.index()) {
            c.add(1);
        }
    }

    /// `affinity` sent a request its runtime's owner `executor` would have taken, had
    /// it been under its bounded load, to the next executor in the order.
    pub(crate) fn affinity_spilled(&self, executor: ExecutorId) {
        if let Some(c) = self.affinity_spills.get(executor.index()) {
            c.add(1);
        }
    }

    pub(crate) fn executor_discarded(&self, executor: ExecutorId, why: Discard) {
        let slot = DISCARDS.iter().position(|&d| d == why).unwrap_or(0);
        if let Some(c) = self.discarded.get(executor.index() * DISCARDS.len() + slot) {
            c.add(1);
        }
    }

    pub(crate) fn client_opened(&self) {
        self.clients_open.add(1);
        self.clients_accepted.add(1);
    }

    pub(crate) fn client_closed(&self, why: ClientClose) {
        self.clients_open.sub(1);
        let slot = ClientClose::ALL.iter().position(|&c| c == why).unwrap_or(0);
        self.clients_closed[slot].add(1);
    }

    /// A body was pumped: `bytes` of it with splice; `fallback` when splice was wanted
    /// but the body was copied.
    pub(crate) fn spliced(&self, bytes: u64, fallback: bool) {
        self.spliced_bytes.add(bytes);
        self.splice_fallbacks.add(u64::from(fallback));
    }

    /// Requests waiting in this worker's queue now.
    pub(crate) fn queue_depth(&self, depth: usize) {
        self.queue_depth.0.store(depth as u64, Ordering::Relaxed);
    }

    /// A request left the queue (served, shed, or its client gone) after `waited`.
    pub(crate) fn queue_waited(&self, waited: Duration) {
        let us = waited.as_micros().min(u128::from(u64::MAX)) as u64;
        let seconds = us as f64 / 1e6;
        let bucket = QUEUE_BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(QUEUE_BUCKETS.len());
        self.queue_wait[bucket].add(1);
        self.queue_wait_sum_us.add(us);
    }

    /// A request was answered `503` for lack of capacity.
    pub(crate) fn shed(&self, why: Shed) {
        let slot = Shed::ALL.iter().position(|&s| s == why).unwrap_or(0);
        self.shed[slot].add(1);
    }

    pub(crate) fn access_log_dropped(&self, lines: u64) {
        self.access_log_dropped.add(lines);
    }

    #[cfg(test)]
    pub(crate) fn access_log_dropped_lines(&self) -> u64 {
        self.access_log_dropped.get()
    }
}

fn code_slot(status: u16) -> usize {
    CODES.binary_search(&status).unwrap_or(CODES.len())
}

/// All workers' counters.
pub(crate) struct Metrics {
    workers: Box<[WorkerMetrics]>,
}

impl Metrics {
    pub(crate) fn new(workers: usize, executors: usize) -> Metrics {
        Metrics {
            workers: (0..workers)
                .map(|_| WorkerMetrics::new(executors))
                .collect(),
        }
    }

    /// How many workers the process runs (one set of counters each).
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn worker(&self, id: usize) -> &WorkerMetrics {
        &self.workers[id.min(self.workers.len() - 1)]
    }

    fn sum(&self, f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(f).fold(0, u64::wrapping_add)
    }

    /// The whole exposition, one `FAMILIES` entry after the other. `flagged(i)`: a worker
    /// flagged executor `i` offline.
    pub(crate) fn render(
        &self,
        out: &mut String,
        snapshot: &Snapshot,
        flagged: impl Fn(ExecutorId) -> bool,
        version: &str,
        reports: ReportStats,
    ) {
        let scrape = Scrape {
            snapshot,
            flagged: &flagged,
            version,
            reports,
        };
        for family in &FAMILIES {
            let name = family.name;
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind.as_str());
            self.samples(out, family, &scrape);
        }
    }

    /// The sample lines of one family.
    fn samples(&self, out: &mut String, family: &Family, scrape: &Scrape<'_>) {
        let name = family.name;
        let executors = &scrape.snapshot.executors;
        match family.samples {
            Samples::Version => {
                let _ = writeln!(out, "{name}{{version=\"{}\"}} 1", esc(scrape.version));
            }
            Samples::WorkerInfo => self.worker_info(out, name),
            Samples::Total(counter) => {
                let n = self.sum(|m| counter(m).get());
                // In-flight and open gauges are inc/dec pairs on one worker; a sum read
                // while another worker is mid-update is never negative, but wrapping
                // arithmetic could show it so.
                let _ = match family.kind {
                    Kind::Gauge => writeln!(out, "{name} {}", n as i64),
                    _ => writeln!(out, "{name} {n}"),
                };
            }
            Samples::PerWorker(counter) => {
                for (w, m) in self.workers.iter().enumerate() {
                    let _ = writeln!(out, "{name}{{worker=\"{w}\"}} {}", counter(m).get());
                }
            }
            Samples::PerExecutor(counters) => {
                for (i, e) in executors.iter().enumerate() {
                    let n = self.sum(|m| counters(m).get(i).map_or(0, Counter::get));
                    let _ = writeln!(out, "{name}{{executor=\"{}\"}} {n}", esc(&e.hostname));
                }
            }
            Samples::Requests => self.requests(out, name, scrape.snapshot),
            Samples::Histogram(h) => self.histogram(out, name, h),
            Samples::ExecutorUp => {
                for (i, e) in scrape.snapshot.ids().zip(executors) {
                    let up = u8::from(e.online && !(scrape.flagged)(i));
                    let _ = writeln!(out, "{name}{{executor=\"{}\"}} {up}", esc(&e.hostname));
                }
            }
            Samples::ExecutorUsage => {
                for e in executors {
                    if let Some(usage) = e.usage {
                        let host = esc(&e.hostname);
                        let _ = writeln!(out, "{name}{{executor=\"{host}\"}} {usage}");
                    }
                }
            }
            Samples::ProbeSeconds => {
                for e in executors {
                    let (host, v) = (esc(&e.hostname), e.probe_seconds);
                    let _ = writeln!(out, "{name}{{executor=\"{host}\"}} {v}");
                }
            }
            Samples::ProbeFailures => {
                for e in executors {
                    let (host, v) = (esc(&e.hostname), e.probe_failures);
                    let _ = writeln!(out, "{name}{{executor=\"{host}\"}} {v}");
                }
            }
            Samples::Discarded => self.discarded(out, name, scrape.snapshot),
            Samples::ClientsClosed => {
                for (slot, why) in ClientClose::ALL.iter().enumerate() {
                    let n = self.sum(|m| m.clients_closed[slot].get());
                    let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", why.label());
                }
            }
            Samples::Reports(stat) => {
                let _ = writeln!(out, "{name} {}", stat(&scrape.reports));
            }
            Samples::Shed => {
                for (slot, why) in Shed::ALL.iter().enumerate() {
                    let n = self.sum(|m| m.shed[slot].get());
                    let _ = writeln!(out, "{name}{{reason=\"{}\"}} {n}", why.label());
                }
            }
        }
    }

    fn worker_info(&self, out: &mut String, name: &str) {
        for (w, m) in self.workers.iter().enumerate() {
            let driver = esc(m.driver.get().map_or("unknown", String::as_str));
            let _ = match m.cpu.get() {
                Some(Some(cpu)) => writeln!(
                    out,
                    "{name}{{worker=\"{w}\",io_driver=\"{driver}\",cpu=\"{cpu}\"}} 1"
                ),
                _ => writeln!(
                    out,
                    "{name}{{worker=\"{w}\",io_driver=\"{driver}\",cpu=\"none\"}} 1"
                ),
            };
        }
    }

    /// By executor (then "none") and status code; codes never seen are left out.
    fn requests(&self, out: &mut String, name: &str, snapshot: &Snapshot) {
        let executors = snapshot.executors.len();
        for row in 0..=executors {
            let host = esc(snapshot.executors.get(row).map_or("none", |e| &e.hostname));
            for slot in 0..CODE_SLOTS {
                let n = self.sum(|m| {
                    m.requests
                        .get(row * CODE_SLOTS + slot)
                        .map_or(0, Counter::get)
                });
                if n == 0 {
                    continue;
                }
                let _ = match CODES.get(slot) {
                    Some(code) => {
                        writeln!(out, "{name}{{code=\"{code}\",executor=\"{host}\"}} {n}")
                    }
                    None => writeln!(out, "{name}{{code=\"other\",executor=\"{host}\"}} {n}"),
                };
            }
        }
    }

    fn histogram(&self, out: &mut String, name: &str, h: Histogram) {
        let mut cumulative = 0u64;
        for (i, bound) in h.bounds.iter().enumerate() {
            cumulative += self.sum(|m| (h.counts)(m)[i].get());
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.sum(|m| (h.counts)(m)[h.bounds.len()].get());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_us = self.sum(|m| (h.sum_us)(m).get());
        let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }

    fn discarded(&self, out: &mut String, name: &str, snapshot: &Snapshot) {
        for (i, e) in snapshot.executors.iter().enumerate() {
            let host = esc(&e.hostname);
            for (slot, why) in DISCARDS.iter().enumerate() {
                let n = self.sum(|m| {
                    m.discarded
                        .get(i * DISCARDS.len() + slot)
                        .map_or(0, Counter::get)
                });
                let reason = discard_label(*why);
                let _ = writeln!(out, "{name}{{executor=\"{host}\",reason=\"{reason}\"}} {n}");
            }
        }
    }
}

/// What a scrape shows besides the workers' counters.
struct Scrape<'a> {
    snapshot: &'a Snapshot,
    flagged: &'a dyn Fn(ExecutorId) -> bool,
    version: &'a str,
    reports: ReportStats,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A histogram's bucket bounds and where its counts and sum live.
#[derive(Clone, Copy)]
struct Histogram {
    bounds: &'static [f64],
    /// `bounds.len() + 1` counts; the last is `+Inf`.
    counts: fn(&WorkerMetrics) -> &[Counter],
    sum_us: fn(&WorkerMetrics) -> &Counter,
}

/// Where a family's samples come from.
#[derive(Clone, Copy)]
enum Samples {
    /// `{version="…"} 1`.
    Version,
    /// `{worker,io_driver,cpu} 1` per worker.
    WorkerInfo,
    /// One value, summed over the workers.
    Total(fn(&WorkerMetrics) -> &Counter),
    /// `{worker="w"}`, one per worker.
    PerWorker(fn(&WorkerMetrics) -> &Counter),
    /// `{executor="host"}`, summed over the workers.
    PerExecutor(fn(&WorkerMetrics) -> &[Counter]),
    /// `{code,executor}`, the codes seen only.
    Requests,
    Histogram(Histogram),
    /// From the snapshot and the workers' offline flags.
    ExecutorUp,
    /// From the snapshot, when the executor reported a usage.
    ExecutorUsage,
    ProbeSeconds,
    ProbeFailures,
    /// `{executor,reason}` over `DISCARDS`.
    Discarded,
    /// `{reason}` over `ClientClose::ALL`.
    ClientsClosed,
    /// From the reporter's counters.
    Reports(fn(&ReportStats) -> u64),
    /// `{reason}` over `Shed::ALL`.
    Shed,
}

/// One metric family: name, type and help are written once, here.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    samples: Samples,
}

const fn family(name: &'static str, kind: Kind, help: &'static str, samples: Samples) -> Family {
    Family {
        name,
        kind,
        help,
        samples,
    }
}

use Kind::{Counter as C, Gauge as G, Histogram as H};

/// Every family `GET /v1/proxy/metrics` shows, in the order it shows them.
const FAMILIES: [Family; 30] = [
    family("opr_proxy_info", G, "Version of this proxy (value 1).", Samples::Version),
    family(
        "opr_proxy_worker_info",
        G,
        "The io driver each worker runs on and the CPU it is pinned to (value 1).",
        Samples::WorkerInfo,
    ),
    // Per worker, to see how evenly connections spread over the cores.
    family(
        "opr_proxy_worker_connections_accepted_total",
        C,
        "Client connections each worker accepted.",
        Samples::PerWorker(|m| &m.clients_accepted),
    ),
    family(
        "opr_proxy_worker_connections_open",
        G,
        "Client connections each worker serves now.",
        Samples::PerWorker(|m| &m.clients_open),
    ),
    family(
        "opr_proxy_requests_total",
        C,
        "Requests answered, by status code and executor (\"none\": answered by the proxy).",
        Samples::Requests,
    ),
    family(
        "opr_proxy_requests_in_flight",
        G,
        "Requests being served now.",
        Samples::Total(|m| &m.in_flight),
    ),
    family(
        "opr_proxy_request_duration_seconds",
        H,
        "Time from a complete request head to the end of the answer.",
        Samples::Histogram(Histogram {
            bounds: &BUCKETS,
            counts: |m| &m.duration,
            sum_us: |m| &m.duration_sum_us,
        }),
    ),
    family(
        "opr_proxy_received_bytes_total",
        C,
        "Bytes received from clients (heads and bodies).",
        Samples::Total(|m| &m.bytes_in),
    ),
    family(
        "opr_proxy_sent_bytes_total",
        C,
        "Bytes sent to clients (heads and bodies).",
        Samples::Total(|m| &m.bytes_out),
    ),
    family(
        "opr_proxy_executor_up",
        G,
        "1 when the executor is online (health checks, not flagged by a worker).",
        Samples::ExecutorUp,
    ),
    family(
        "opr_proxy_executor_usage",
        G,
        "Usage (0-100) from the executor's last health answer; absent when unknown.",
        Samples::ExecutorUsage,
    ),
    family(
        "opr_proxy_health_probe_duration_seconds",
        G,
        "Duration of the executor's last health probe.",
        Samples::ProbeSeconds,
    ),
    family(
        "opr_proxy_health_probe_failures_total",
        C,
        "Health probes that found the executor offline.",
        Samples::ProbeFailures,
    ),
    family(
        "opr_proxy_executor_connections_opened_total",
        C,
        "Connections opened to the executor.",
        Samples::PerExecutor(|m| &m.opened),
    ),
    family(
        "opr_proxy_executor_connections_reused_total",
        C,
        "Requests sent on a pooled (kept-alive) executor connection.",
        Samples::PerExecutor(|m| &m.reused),
    ),
    family(
        "opr_proxy_executor_requests_in_flight",
        G,
        "Requests assigned to the executor and not finished, summed over workers.",
        Samples::PerExecutor(|m| &m.executor_in_flight),
    ),
    family(
        "opr_proxy_executor_ejections_total",
        C,
        "Times a worker flagged the executor offline after OPR_PROXY_EJECT_AFTER consecutive failures.",
        Samples::PerExecutor(|m| &m.ejections),
    ),
    family(
        "opr_proxy_affinity_spills_total",
        C,
        "Requests for a runtime this executor owns (OPR_PROXY_ALGORITHM=affinity) sent to the next executor because it was at its bounded load.",
        Samples::PerExecutor(|m| &m.affinity_spills),
    ),
    family(
        "opr_proxy_executor_connections_discarded_total",
        C,
        "Executor connections closed instead of pooled or reused, by reason.",
        Samples::Discarded,
    ),
    family(
        "opr_proxy_client_connections_open",
        G,
        "Client connections open now.",
        Samples::Total(|m| &m.clients_open),
    ),
    family(
        "opr_proxy_client_connections_closed_total",
        C,
        "Client connections closed, by reason.",
        Samples::ClientsClosed,
    ),
    family(
        "opr_proxy_error_reports_sent_total",
        C,
        "Error reports the provider accepted.",
        Samples::Reports(|r| r.sent),
    ),
    family(
        "opr_proxy_error_reports_failed_total",
        C,
        "Error reports the provider refused or could not be reached for.",
        Samples::Reports(|r| r.failed),
    ),
    family(
        "opr_proxy_error_reports_dropped_total",
        C,
        "Error reports dropped because the reporter's queue was full.",
        Samples::Reports(|r| r.dropped),
    ),
    family(
        "opr_proxy_spliced_bytes_total",
        C,
        "Body bytes moved socket to pipe to socket with splice (no copy through the proxy).",
        Samples::Total(|m| &m.spliced_bytes),
    ),
    family(
        "opr_proxy_splice_fallbacks_total",
        C,
        "Bodies copied through a buffer because no pipe could be made or splice was refused.",
        Samples::Total(|m| &m.splice_fallbacks),
    ),
    // The queue in front of capped executors (`OPR_PROXY_EXECUTOR_CONCURRENCY`).
    family(
        "opr_proxy_queue_depth",
        G,
        "Requests waiting in each worker's queue for an executor under its concurrency cap.",
        Samples::PerWorker(|m| &m.queue_depth),
    ),
    family(
        "opr_proxy_queue_wait_seconds",
        H,
        "Time each queued request waited, whether it was then served or shed.",
        Samples::Histogram(Histogram {
            bounds: &QUEUE_BUCKETS,
            counts: |m| &m.queue_wait,
            sum_us: |m| &m.queue_wait_sum_us,
        }),
    ),
    family(
        "opr_proxy_shed_total",
        C,
        "Requests the proxy answered 503 for lack of executor capacity, by reason.",
        Samples::Shed,
    ),
    family(
        "opr_proxy_access_log_dropped_total",
        C,
        "Access log lines dropped because the log writer fell behind.",
        Samples::Total(|m| &m.access_log_dropped),
    ),
];

/// A label value escaped per the text format (backslash, quote, newline).
fn esc(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_slots_and_buckets() {
        assert_eq!(CODES[code_slot(200)], 200);
        assert_eq!(CODES[code_slot(511)], 511);
        assert_eq!(code_slot(299), CODES.len());
        assert_eq!(code_slot(999), CODES.len());
        assert!(
            CODES.windows(2).all(|w| w[0] < w[1]),
            "sorted for binary search"
        );
        assert!(BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn counts_add_up_across_workers() {
        let m = Metrics::new(2, 1);
        m.worker(0).request_started();
        m.worker(0).request_done(
            Some(ExecutorId::new(0)),
            200,
            Duration::from_micros(300),
            10,
            20,
        );
        m.worker(1).request_started();
        m.worker(1)
            .request_done(None, 404, Duration::from_secs(700), 5, 6);
        assert_eq!(m.sum(|w| w.in_flight.get()), 0);
        assert_eq!(m.sum(|w| w.bytes_in.get()), 15);
        assert_eq!(m.worker(0).requests[code_slot(200)].get(), 1);
        assert_eq!(m.worker(1).requests[CODE_SLOTS + code_slot(404)].get(), 1);
        assert_eq!(
            m.worker(0).duration[2].get(),
            1,
            "300 µs is in the 500 µs bucket"
        );
        assert_eq!(
            m.worker(1).duration[BUCKETS.len()].get(),
            1,
            "past 600 s: +Inf"
        );
    }

    #[test]
    fn queue_metrics_render_with_the_agreed_names() {
        let m = Metrics::new(2, 1);
        m.worker(1).queue_depth(3);
        m.worker(0).queue_waited(Duration::from_millis(2));
        m.worker(1).queue_waited(Duration::from_secs(400));
        m.worker(1).shed(Shed::QueueTimeout);
        let mut out = String::new();
        let snapshot = Snapshot::new(1, Vec::new());
        m.render(&mut out, &snapshot, |_| false, "1", ReportStats::default());
        for line in [
            "opr_proxy_queue_depth{worker=\"0\"} 0",
            "opr_proxy_queue_depth{worker=\"1\"} 3",
            "opr_proxy_queue_wait_seconds_bucket{le=\"0.001\"} 0",
            "opr_proxy_queue_wait_seconds_bucket{le=\"0.0025\"} 1",
            "opr_proxy_queue_wait_seconds_bucket{le=\"300\"} 1",
            "opr_proxy_queue_wait_seconds_bucket{le=\"+Inf\"} 2",
            "opr_proxy_queue_wait_seconds_sum 400.002",
            "opr_proxy_queue_wait_seconds_count 2",
            "opr_proxy_shed_total{reason=\"queue_full\"} 0",
            "opr_proxy_shed_total{reason=\"queue_timeout\"} 1",
            "opr_proxy_shed_total{reason=\"draining\"} 0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in:\n{out}");
        }
        assert!(QUEUE_BUCKETS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(esc("10.0.0.1:80"), "10.0.0.1:80");
    }
}
