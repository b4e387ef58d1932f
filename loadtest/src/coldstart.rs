//! The cold-start runs (`make coldstart`): Zipf popularity over runtimes (seeded), the
//! per-runtime tally of who answered and how warm, the figures derived from it (cold-start
//! rate, executor shares, runtimes moved), and the medians table over rounds.

use crate::gen::framing::Response;
use crate::gen::Request;
use crate::warm::Warmth;
use std::collections::BTreeMap;

/// splitmix64: small, seedable, and good enough to draw popularity ranks.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf popularity over `n` ranks: rank `k` (from 1) is drawn with probability
/// `k^-s / H(n, s)`. Drawn by binary search in the cumulative table (n floats).
#[derive(Clone, Debug)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut sum = 0.0;
        for k in 1..=n {
            sum += (k as f64).powf(-s);
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        Zipf { cdf }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Probability of rank index `i` (0-based: the most popular is 0).
    pub fn probability(&self, i: usize) -> f64 {
        match i {
            0 => self.cdf[0],
            _ => self.cdf[i] - self.cdf[i - 1],
        }
    }

    /// A rank index (0-based) for a uniform draw `u` in [0, 1).
    pub fn index(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    pub fn draw(&self, rng: &mut Rng) -> usize {
        self.index(rng.unit())
    }
}

/// The runtime id of rank index `i`.
pub fn runtime_id(i: usize) -> String {
    format!("rt-{}", i + 1)
}

/// The requests of a cold-start run: one pre-serialised request per runtime (its
/// `x-opr-runtime-id`), drawn by popularity; connection `c` draws from seed `seed + c`, so
/// a run is reproducible whatever the timing.
#[derive(Clone, Debug)]
pub struct Mix {
    pub requests: Vec<Request>,
    pub zipf: Zipf,
    pub seed: u64,
    /// Executors the tally keeps apart (answers name `executor-1` ... `executor-N`).
    pub executors: usize,
}

impl Mix {
    /// `build(id)` makes the request for one runtime id.
    pub fn new(
        runtimes: usize,
        s: f64,
        seed: u64,
        executors: usize,
        build: impl Fn(&str) -> Request,
    ) -> Mix {
        Mix {
            requests: (0..runtimes.max(1))
                .map(|i| build(&runtime_id(i)))
                .collect(),
            zipf: Zipf::new(runtimes, s),
            seed,
            executors: executors.max(1),
        }
    }

    pub fn rng_for(&self, connection: usize) -> Rng {
        Rng::new(self.seed.wrapping_add(connection as u64))
    }
}

/// Successful answers of a window by runtime and executor, and how warm they were.
/// Memory: runtimes × executors counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tally {
    executors: usize,
    /// `served[runtime * executors + executor]`.
    served: Vec<u32>,
    pub per_executor: Vec<u64>,
    /// Answers from no known executor (no `x-mock-name: executor-N` within range).
    pub unknown: u64,
    pub warm: u64,
    pub cold_starts: u64,
    pub cold_waits: u64,
    /// Answers without `x-mock-cold` (no warm model at the executor).
    pub untracked: u64,
}

impl Tally {
    pub fn new(runtimes: usize, executors: usize) -> Tally {
        Tally {
            executors,
            served: vec![0; runtimes * executors],
            per_executor: vec![0; executors],
            unknown: 0,
            warm: 0,
            cold_starts: 0,
            cold_waits: 0,
            untracked: 0,
        }
    }

    pub fn runtimes(&self) -> usize {
        self.served.len() / self.executors.max(1)
    }

    /// One successful answer for runtime index `runtime`.
    pub fn record(&mut self, runtime: usize, resp: &Response) {
        match resp.warmth {
            Warmth::Untracked => self.untracked += 1,
            Warmth::Warm => self.warm += 1,
            Warmth::ColdStart => self.cold_starts += 1,
            Warmth::ColdWait => self.cold_waits += 1,
        }
        let executor = resp
            .executor
            .and_then(|n| usize::from(n).checked_sub(1))
            .filter(|&e| e < self.executors);
        match executor {
            Some(e) if runtime < self.runtimes() => {
                self.served[runtime * self.executors + e] += 1;
                self.per_executor[e] += 1;
            }
            _ => self.unknown += 1,
        }
    }

    /// Adds another tally of the same shape.
    pub fn merge(&mut self, other: &Tally) {
        for (a, b) in self.served.iter_mut().zip(&other.served) {
            *a += b;
        }
        for (a, b) in self.per_executor.iter_mut().zip(&other.per_executor) {
            *a += b;
        }
        self.unknown += other.unknown;
        self.warm += other.warm;
        self.cold_starts += other.cold_starts;
        self.cold_waits += other.cold_waits;
        self.untracked += other.untracked;
    }

    /// Answers with a warmth header.
    pub fn tracked(&self) -> u64 {
        self.warm + self.cold_starts + self.cold_waits
    }

    /// Cold starts per tracked answer, in percent (None without any).
    pub fn cold_pct(&self) -> Option<f64> {
        let n = self.tracked();
        (n > 0).then(|| 100.0 * self.cold_starts as f64 / n as f64)
    }

    /// Answers that waited for another request's start, in percent.
    pub fn wait_pct(&self) -> Option<f64> {
        let n = self.tracked();
        (n > 0).then(|| 100.0 * self.cold_waits as f64 / n as f64)
    }

    /// Answers to a runtime from known executors.
    pub fn answers(&self, runtime: usize) -> u64 {
        self.served
            .get(runtime * self.executors..(runtime + 1) * self.executors)
            .map_or(0, |row| row.iter().map(|&n| u64::from(n)).sum())
    }

    /// The executor (0-based) that answered a runtime most often; ties go to the lower
    /// index; None when the runtime was not answered.
    pub fn primary(&self, runtime: usize) -> Option<usize> {
        let row = self
            .served
            .get(runtime * self.executors..(runtime + 1) * self.executors)?;
        let (best, n) = row.iter().enumerate().fold(
            (0, 0),
            |(bi, bn), (i, &n)| if n > bn { (i, n) } else { (bi, bn) },
        );
        (n > 0).then_some(best)
    }
}

/// Each executor's share of `counts` in percent, and the largest share over the mean
/// share of the executors that were `up` (a stopped executor is not part of the mean).
pub fn shares(counts: &[u64], up: usize) -> (Vec<f64>, Option<f64>) {
    let total: u64 = counts.iter().sum();
    if total == 0 || up == 0 {
        return (vec![0.0; counts.len()], None);
    }
    let pct: Vec<f64> = counts
        .iter()
        .map(|&c| 100.0 * c as f64 / total as f64)
        .collect();
    let max = pct.iter().copied().fold(0.0, f64::max);
    (pct, Some(max / (100.0 / up as f64)))
}

/// Runtimes answered at least `min` times in each phase, and how many of them have
/// another primary executor in the second (a runtime "moved"). The floor keeps runtimes
/// seen once or twice, whose primary is chance, out of the figure.
pub fn moved(before: &Tally, after: &Tally, min: u64) -> (usize, usize) {
    let mut both = 0;
    let mut moved = 0;
    for r in 0..before.runtimes().min(after.runtimes()) {
        if before.answers(r) < min.max(1) || after.answers(r) < min.max(1) {
            continue;
        }
        if let (Some(a), Some(b)) = (before.primary(r), after.primary(r)) {
            both += 1;
            if a != b {
                moved += 1;
            }
        }
    }
    (both, moved)
}

/// `key=value` fields of a line (words without `=` are skipped).
pub fn fields(line: &str) -> BTreeMap<&str, &str> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect()
}

/// One column of a medians table: the field and its heading.
pub struct Column {
    pub key: &'static str,
    pub title: &'static str,
}

/// The cold-start comparison (rows with `table=cold`).
pub const COLD_COLUMNS: &[Column] = &[
    Column {
        key: "cold_pct",
        title: "cold starts %",
    },
    Column {
        key: "wait_pct",
        title: "waited for a start %",
    },
    Column {
        key: "p50_ms",
        title: "p50 ms",
    },
    Column {
        key: "p99_ms",
        title: "p99 ms",
    },
    Column {
        key: "p999_ms",
        title: "p99.9 ms",
    },
    Column {
        key: "max_share",
        title: "max share / mean",
    },
    Column {
        key: "moved_pct",
        title: "runtimes moved % (1 of 4 stopped)",
    },
    Column {
        key: "rps",
        title: "req/s",
    },
    Column {
        key: "errors",
        title: "errors",
    },
];

/// The per-executor cap under overload (rows with `table=cap`).
pub const CAP_COLUMNS: &[Column] = &[
    Column {
        key: "rps",
        title: "answered req/s",
    },
    Column {
        key: "p50_ms",
        title: "answered p50 ms",
    },
    Column {
        key: "p99_ms",
        title: "answered p99 ms",
    },
    Column {
        key: "p999_ms",
        title: "answered p99.9 ms",
    },
    Column {
        key: "shed",
        title: "503s",
    },
    Column {
        key: "shed_p50_ms",
        title: "503 p50 ms",
    },
    Column {
        key: "shed_p99_ms",
        title: "503 p99 ms",
    },
    Column {
        key: "other_errors",
        title: "other errors",
    },
    Column {
        key: "mock_max_inflight",
        title: "max in flight at one executor",
    },
];

/// `median [min–max]` of the numeric values (NA and missing values skipped), or `NA`.
pub fn median_spread(values: &[f64]) -> String {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return "NA".into();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    // One precision per cell: whole numbers (counts, large values) or two decimals.
    let whole = v[n - 1].abs().max(v[0].abs()) >= 100.0
        || v.iter().chain([&median]).all(|x| *x == x.trunc());
    let f = |x: f64| {
        if whole {
            format!("{x:.0}")
        } else {
            format!("{x:.2}")
        }
    };
    if n == 1 {
        f(median)
    } else {
        format!("{} [{}–{}]", f(median), f(v[0]), f(v[n - 1]))
    }
}

/// A Markdown table of the rows whose `table` field is `table`: one line per `alg` (in
/// order of first appearance), each column the median over the rounds with the spread.
pub fn medians_table(rows: &[String], table: &str, columns: &[Column]) -> String {
    let parsed: Vec<BTreeMap<&str, &str>> = rows
        .iter()
        .map(|l| fields(l))
        .filter(|f| f.get("table") == Some(&table))
        .collect();
    let mut algs: Vec<&str> = Vec::new();
    for f in &parsed {
        if let Some(a) = f.get("alg") {
            if !algs.contains(a) {
                algs.push(a);
            }
        }
    }
    let mut out = String::from("| algorithm | rounds |");
    for c in columns {
        out.push_str(&format!(" {} |", c.title));
    }
    out.push_str("\n|---|--:|");
    out.push_str(&"--:|".repeat(columns.len()));
    out.push('\n');
    for alg in algs {
        let mine: Vec<&BTreeMap<&str, &str>> = parsed
            .iter()
            .filter(|f| f.get("alg") == Some(&alg))
            .collect();
        out.push_str(&format!("| {alg} | {} |", mine.len()));
        for c in columns {
            let values: Vec<f64> = mine
                .iter()
                .filter_map(|f| f.get(c.key)?.parse().ok())
                .collect();
            out.push_str(&format!(" {} |", median_spread(&values)));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_index_edges() {
        let z = Zipf::new(3, 1.0);
        // 1, 1/2, 1/3 over 11/6.
        assert!((z.probability(0) - 6.0 / 11.0).abs() < 1e-12);
        assert!((z.probability(2) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(z.index(0.0), 0);
        assert_eq!(z.index(6.0 / 11.0 - 1e-9), 0);
        assert_eq!(z.index(6.0 / 11.0 + 1e-9), 1);
        assert_eq!(z.index(0.999_999_999), 2);
        assert_eq!(Zipf::new(0, 1.0).len(), 1);
        let flat = Zipf::new(4, 0.0);
        assert!((flat.probability(3) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn median_spread_formats() {
        assert_eq!(median_spread(&[]), "NA");
        assert_eq!(median_spread(&[2.5]), "2.50");
        assert_eq!(median_spread(&[3.0, 1.0, 2.0]), "2 [1–3]");
        assert_eq!(median_spread(&[1.0, 2.0, 4.0, 10.0]), "3 [1–10]");
        assert_eq!(median_spread(&[f64::NAN, 150.4]), "150");
        assert_eq!(median_spread(&[1.0, 2.0]), "1.50 [1.00–2.00]");
    }
}
