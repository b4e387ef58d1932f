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

    /// The whole exposition. `flagged(i)`: a worker flagged executor `i` offline.
    pub(crate) fn render(
        &self,
        out: &mut String,
        snapshot: &Snapshot,
        flagged: impl Fn(ExecutorId) -> bool,
        version: &str,
        reports: ReportStats,
    ) {
        let hosts: Vec<&str> = snapshot
            .executors
            .iter()
            .map(|e| e.hostname.as_str())
            .collect();
        let executors = hosts.len();

        family(
            out,
            "opr_proxy_info",
            "gauge",
            "Version of this proxy (value 1).",
        );
        let _ = writeln!(out, "opr_proxy_info{{version=\"{}\"}} 1", esc(version));
        family(
            out,
            "opr_proxy_worker_info",
            "gauge",
            "The io driver each worker runs on and the CPU it is pinned to (value 1).",
        );
        for (w, m) in self.workers.iter().enumerate() {
            let driver = m.driver.get().map_or("unknown", String::as_str);
            let cpu = match m.cpu.get() {
                Some(Some(cpu)) => cpu.to_string(),
                _ => "none".to_string(),
            };
            let _ = writeln!(
                out,
                "opr_proxy_worker_info{{worker=\"{w}\",io_driver=\"{}\",cpu=\"{cpu}\"}} 1",
                esc(driver)
            );
        }
        // Per worker, to see how evenly connections spread over the cores.
        family(
            out,
            "opr_proxy_worker_connections_accepted_total",
            "counter",
            "Client connections each worker accepted.",
        );
        for (w, m) in self.workers.iter().enumerate() {
            let n = m.clients_accepted.get();
            let _ = writeln!(
                out,
                "opr_proxy_worker_connections_accepted_total{{worker=\"{w}\"}} {n}"
            );
        }
        family(
            out,
            "opr_proxy_worker_connections_open",
            "gauge",
            "Client connections each worker serves now.",
        );
        for (w, m) in self.workers.iter().enumerate() {
            let n = m.clients_open.get();
            let _ = writeln!(
                out,
                "opr_proxy_worker_connections_open{{worker=\"{w}\"}} {n}"
            );
        }

        family(
            out,
            "opr_proxy_requests_total",
            "counter",
            "Requests answered, by status code and executor (\"none\": answered by the proxy).",
        );
        for row in 0..=executors {
            let host = hosts.get(row).copied().unwrap_or("none");
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
                    Some(code) => writeln!(
                        out,
                        "opr_proxy_requests_total{{code=\"{code}\",executor=\"{}\"}} {n}",
                        esc(host)
                    ),
                    None => writeln!(
                        out,
                        "opr_proxy_requests_total{{code=\"other\",executor=\"{}\"}} {n}",
                        esc(host)
                    ),
                };
            }
        }
        gauge(
            out,
            "opr_proxy_requests_in_flight",
            "Requests being served now.",
            self.sum(|m| m.in_flight.get()),
        );

        family(
            out,
            "opr_proxy_request_duration_seconds",
            "histogram",
            "Time from a complete request head to the end of the answer.",
        );
        let mut cumulative = 0u64;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.sum(|m| m.duration[i].get());
            let _ = writeln!(
                out,
                "opr_proxy_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|m| m.duration[BUCKETS.len()].get());
        let _ = writeln!(
            out,
            "opr_proxy_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum_us = self.sum(|m| m.duration_sum_us.get());
        let _ = writeln!(
            out,
            "opr_proxy_request_duration_seconds_sum {}",
            sum_us as f64 / 1e6
        );
        let _ = writeln!(out, "opr_proxy_request_duration_seconds_count {cumulative}");

        counter(
            out,
            "opr_proxy_received_bytes_total",
            "Bytes received from clients (heads and bodies).",
            self.sum(|m| m.bytes_in.get()),
        );
        counter(
            out,
            "opr_proxy_sent_bytes_total",
            "Bytes sent to clients (heads and bodies).",
            self.sum(|m| m.bytes_out.get()),
        );

        family(
            out,
            "opr_proxy_executor_up",
            "gauge",
            "1 when the executor is online (health checks, not flagged by a worker).",
        );
        for (i, e) in snapshot.ids().zip(&snapshot.executors) {
            let up = u8::from(e.online && !flagged(i));
            let _ = writeln!(
                out,
                "opr_proxy_executor_up{{executor=\"{}\"}} {up}",
                esc(&e.hostname)
            );
        }
        family(
            out,
            "opr_proxy_executor_usage",
            "gauge",
            "Usage (0-100) from the executor's last health answer; absent when unknown.",
        );
        for e in &snapshot.executors {
            if let Some(usage) = e.usage {
                let _ = writeln!(
                    out,
                    "opr_proxy_executor_usage{{executor=\"{}\"}} {usage}",
                    esc(&e.hostname)
                );
            }
        }
        family(
            out,
            "opr_proxy_health_probe_duration_seconds",
            "gauge",
            "Duration of the executor's last health probe.",
        );
        for e in &snapshot.executors {
            let _ = writeln!(
                out,
                "opr_proxy_health_probe_duration_seconds{{executor=\"{}\"}} {}",
                esc(&e.hostname),
                e.probe_seconds
            );
        }
        family(
            out,
            "opr_proxy_health_probe_failures_total",
            "counter",
            "Health probes that found the executor offline.",
        );
        for e in &snapshot.executors {
            let _ = writeln!(
                out,
                "opr_proxy_health_probe_failures_total{{executor=\"{}\"}} {}",
                esc(&e.hostname),
                e.probe_failures
            );
        }

        for (name, help, pick) in [
            (
                "opr_proxy_executor_connections_opened_total",
                "Connections opened to the executor.",
                (|m: &WorkerMetrics| &m.opened) as fn(&WorkerMetrics) -> &Box<[Counter]>,
            ),
            (
                "opr_proxy_executor_connections_reused_total",
                "Requests sent on a pooled (kept-alive) executor connection.",
                |m: &WorkerMetrics| &m.reused,
            ),
        ] {
            family(out, name, "counter", help);
            for (i, host) in hosts.iter().enumerate() {
                let n = self.sum(|m| pick(m).get(i).map_or(0, Counter::get));
                let _ = writeln!(out, "{name}{{executor=\"{}\"}} {n}", esc(host));
            }
        }
        family(
            out,
            "opr_proxy_executor_requests_in_flight",
            "gauge",
            "Requests assigned to the executor and not finished, summed over workers.",
        );
        for (i, host) in hosts.iter().enumerate() {
            let n = self.sum(|m| m.executor_in_flight.get(i).map_or(0, Counter::get));
            let _ = writeln!(
                out,
                "opr_proxy_executor_requests_in_flight{{executor=\"{}\"}} {n}",
                esc(host)
            );
        }
        family(
            out,
            "opr_proxy_executor_ejections_total",
            "counter",
            "Times a worker flagged the executor offline after OPR_PROXY_EJECT_AFTER consecutive failures.",
        );
        for (i, host) in hosts.iter().enumerate() {
            let n = self.sum(|m| m.ejections.get(i).map_or(0, Counter::get));
            let _ = writeln!(
                out,
                "opr_proxy_executor_ejections_total{{executor=\"{}\"}} {n}",
                esc(host)
            );
        }
        family(
            out,
            "opr_proxy_affinity_spills_total",
            "counter",
            "Requests for a runtime this executor owns (OPR_PROXY_ALGORITHM=affinity) sent to the next executor because it was at its bounded load.",
        );
        for (i, host) in hosts.iter().enumerate() {
            let n = self.sum(|m| m.affinity_spills.get(i).map_or(0, Counter::get));
            let _ = writeln!(
                out,
                "opr_proxy_affinity_spills_total{{executor=\"{}\"}} {n}",
                esc(host)
            );
        }
        family(
            out,
            "opr_proxy_executor_connections_discarded_total",
            "counter",
            "Executor connections closed instead of pooled or reused, by reason.",
        );
        for (i, host) in hosts.iter().enumerate() {
            for (slot, why) in DISCARDS.iter().enumerate() {
                let n = self.sum(|m| {
                    m.discarded
                        .get(i * DISCARDS.len() + slot)
                        .map_or(0, Counter::get)
                });
                let _ = writeln!(
                    out,
                    "opr_proxy_executor_connections_discarded_total{{executor=\"{}\",reason=\"{}\"}} {n}",
                    esc(host),
                    discard_label(*why)
                );
            }
        }

        gauge(
            out,
            "opr_proxy_client_connections_open",
            "Client connections open now.",
            self.sum(|m| m.clients_open.get()),
        );
        family(
            out,
            "opr_proxy_client_connections_closed_total",
            "counter",
            "Client connections closed, by reason.",
        );
        for (slot, why) in ClientClose::ALL.iter().enumerate() {
            let n = self.sum(|m| m.clients_closed[slot].get());
            let _ = writeln!(
                out,
                "opr_proxy_client_connections_closed_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }

        counter(
            out,
            "opr_proxy_error_reports_sent_total",
            "Error reports the provider accepted.",
            reports.sent,
        );
        counter(
            out,
            "opr_proxy_error_reports_failed_total",
            "Error reports the provider refused or could not be reached for.",
            reports.failed,
        );
        counter(
            out,
            "opr_proxy_error_reports_dropped_total",
            "Error reports dropped because the reporter's queue was full.",
            reports.dropped,
        );
        counter(
            out,
            "opr_proxy_spliced_bytes_total",
            "Body bytes moved socket to pipe to socket with splice (no copy through the proxy).",
            self.sum(|m| m.spliced_bytes.get()),
        );
        counter(
            out,
            "opr_proxy_splice_fallbacks_total",
            "Bodies copied through a buffer because no pipe could be made or splice was refused.",
            self.sum(|m| m.splice_fallbacks.get()),
        );
        self.render_queue(out);
        counter(
            out,
            "opr_proxy_access_log_dropped_total",
            "Access log lines dropped because the log writer fell behind.",
            self.sum(|m| m.access_log_dropped.get()),
        );
    }
}

impl Metrics {
    /// The queue in front of capped executors (`OPR_PROXY_EXECUTOR_CONCURRENCY`).
    fn render_queue(&self, out: &mut String) {
        family(
            out,
            "opr_proxy_queue_depth",
            "gauge",
            "Requests waiting in each worker's queue for an executor under its concurrency cap.",
        );
        for (w, m) in self.workers.iter().enumerate() {
            let n = m.queue_depth.get();
            let _ = writeln!(out, "opr_proxy_queue_depth{{worker=\"{w}\"}} {n}");
        }
        let name = "opr_proxy_queue_wait_seconds";
        family(
            out,
            name,
            "histogram",
            "Time each queued request waited, whether it was then served or shed.",
        );
        let mut cumulative = 0u64;
        for (i, bound) in QUEUE_BUCKETS.iter().enumerate() {
            cumulative += self.sum(|m| m.queue_wait[i].get());
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.sum(|m| m.queue_wait[QUEUE_BUCKETS.len()].get());
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum_us = self.sum(|m| m.queue_wait_sum_us.get());
        let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
        family(
            out,
            "opr_proxy_shed_total",
            "counter",
            "Requests the proxy answered 503 for lack of executor capacity, by reason.",
        );
        for (slot, why) in Shed::ALL.iter().enumerate() {
            let n = self.sum(|m| m.shed[slot].get());
            let _ = writeln!(
                out,
                "opr_proxy_shed_total{{reason=\"{}\"}} {n}",
                why.label()
            );
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "counter", help);
    let _ = writeln!(out, "{name} {value}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    family(out, name, "gauge", help);
    // In-flight and open gauges are inc/dec pairs on one worker; a sum read while another
    // worker is mid-update is never negative, but wrapping arithmetic could show it so.
    let _ = writeln!(out, "{name} {}", value as i64);
}

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
        m.render_queue(&mut out);
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
