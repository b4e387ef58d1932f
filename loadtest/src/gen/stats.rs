//! What a run measured: latency histograms (HDR, microseconds), their percentile summary,
//! and errors counted by kind.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Highest latency the histograms track (larger values are clamped to it).
const MAX_MICROS: u64 = 3_600_000_000;

/// A latency histogram in microseconds with 3 significant digits (0.1 % error).
pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h with 3 digits is always a valid configuration.
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Records a duration, clamped to the histogram's range.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us.min(MAX_MICROS));
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    Connect,
    Write,
    Read,
    Timeout,
    /// The response could not be framed (malformed, truncated, unexpected bytes).
    Protocol,
    /// A complete response with a status outside 200..=299.
    Status(u16),
}

/// Errors by kind; non-2xx statuses by code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    pub connect: u64,
    pub write: u64,
    pub read: u64,
    pub timeout: u64,
    pub protocol: u64,
    pub status: BTreeMap<u16, u64>,
}

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        match kind {
            ErrorKind::Connect => self.connect += 1,
            ErrorKind::Write => self.write += 1,
            ErrorKind::Read => self.read += 1,
            ErrorKind::Timeout => self.timeout += 1,
            ErrorKind::Protocol => self.protocol += 1,
            ErrorKind::Status(code) => *self.status.entry(code).or_default() += 1,
        }
    }

    pub fn merge(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.write += other.write;
        self.read += other.read;
        self.timeout += other.timeout;
        self.protocol += other.protocol;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
    }

    pub fn total(&self) -> u64 {
        self.connect
            + self.write
            + self.read
            + self.timeout
            + self.protocol
            + self.status.values().sum::<u64>()
    }
}

/// `none`, or e.g. `read 3, timeout 1, status 502×4`.
impl fmt::Display for ErrorCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = [
            ("connect", self.connect),
            ("write", self.write),
            ("read", self.read),
            ("timeout", self.timeout),
            ("protocol", self.protocol),
        ]
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
        parts.extend(self.status.iter().map(|(c, n)| format!("status {c}×{n}")));
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }

    /// (label, value in µs) for the percentiles drawn and tabulated.
    pub fn percentiles(&self) -> [(&'static str, u64); 4] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
        ]
    }
}

/// Microseconds as milliseconds with 2 decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_a_known_distribution() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(us));
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 10_000);
        // HDR with 3 significant digits: within 0.1 %.
        let close = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.001;
        assert!(close(s.p50, 5_000), "{s:?}");
        assert!(close(s.p90, 9_000), "{s:?}");
        assert!(close(s.p99, 9_900), "{s:?}");
        assert!(close(s.p999, 9_990), "{s:?}");
        assert!(close(s.max, 10_000), "{s:?}");
        assert!((s.mean - 5_000.5).abs() < 10.0, "{s:?}");
        assert_eq!(Summary::of(&new_histogram()), Summary::default());
    }

    #[test]
    fn record_clamps() {
        let mut h = new_histogram();
        record(&mut h, Duration::ZERO);
        record(&mut h, Duration::from_secs(100_000));
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_MICROS && h.max() <= MAX_MICROS + MAX_MICROS / 1000);
    }

    #[test]
    fn errors_count_and_print() {
        let mut e = ErrorCounts::default();
        assert_eq!(e.to_string(), "none");
        e.add(ErrorKind::Read);
        e.add(ErrorKind::Status(502));
        e.add(ErrorKind::Status(502));
        let mut f = ErrorCounts::default();
        f.add(ErrorKind::Timeout);
        f.add(ErrorKind::Status(404));
        e.merge(&f);
        assert_eq!(e.total(), 5);
        assert_eq!(
            e.to_string(),
            "read 1, timeout 1, status 404×1, status 502×2"
        );
        assert_eq!(ms(1234), "1.23");
    }
}
