//! The capacity report: Markdown tables (`loadtest-report.md`), a hand-written SVG chart of
//! latency percentiles vs offered rate (`loadtest-report.svg`) and the one-line summary.

mod svg;

pub use svg::svg;

use crate::gen::stats::ms;
use crate::plan::{self, CpuSets, Judged, ScenarioRun, SearchRules, Step, Verdict};
use std::fmt::Write as _;

/// Where the numbers were measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    /// CPUs available to the run (`nproc`).
    pub nproc: usize,
    /// `uname -r`.
    pub kernel: String,
    pub cpu_model: String,
    /// UTC, e.g. `2026-11-28 02:30 UTC`.
    pub date: String,
}

impl Machine {
    pub fn detect(nproc: usize) -> Machine {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Machine {
            nproc,
            kernel,
            cpu_model,
            date: utc_datetime(secs),
        }
    }
}

/// `YYYY-MM-DD HH:MM UTC` for seconds since the Unix epoch (proleptic Gregorian).
pub fn utc_datetime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60
    )
}

/// Everything the report shows.
#[derive(Clone, Debug)]
pub struct Report {
    pub machine: Machine,
    /// The command line that produced it.
    pub command: String,
    /// (what, how): proxy, executors, generator, pinning, windows...
    pub setup: Vec<(String, String)>,
    /// Proxy worker cores (per-core numbers divide by this).
    pub cores: usize,
    /// Sizes of the proxy's and the client's CPU sets.
    pub sets: CpuSets,
    pub slo_p99_us: u64,
    pub target_rps: f64,
    /// How the rate search was run (for the method text).
    pub rules: SearchRules,
    /// The client side alone (generator straight to the mocks): its ceiling.
    pub baseline: Option<(String, Step)>,
    pub runs: Vec<ScenarioRun>,
    /// Things worth a look (errors, generator lag, a proxy that died...).
    pub notes: Vec<String>,
}

/// Sustainable rate per proxy core, if any step passed.
pub fn per_core(run: &ScenarioRun, cores: usize) -> Option<f64> {
    run.sustainable().map(|s| s.achieved / cores.max(1) as f64)
}

/// Cores needed for `target` at `per_core` req/s each.
pub fn cores_needed(per_core: f64, target: f64) -> u64 {
    if per_core <= 0.0 {
        return u64::MAX;
    }
    (target / per_core).ceil().max(1.0) as u64
}

/// `ping × 256 conns: N req/s per core at p99 ≤ 10 ms → X cores for Y req/s (spread)`: the
/// spread is what the search saw at both ends of its bracket (see [`spread`]).
pub fn summary_line(run: &ScenarioRun, cores: usize, slo_p99_us: u64, target_rps: f64) -> String {
    let what = format!("{} × {} conns", run.scenario, run.connections);
    let spread = spread(run, cores);
    match per_core(run, cores) {
        Some(n) => format!(
            "{what}: {n:.0} req/s per core at p99 ≤ {} ms → {} cores for {target_rps:.0} req/s ({spread})",
            ms_short(slo_p99_us),
            cores_needed(n, target_rps)
        ),
        None => format!(
            "{what}: no offered rate met p99 ≤ {} ms without errors ({spread})",
            ms_short(slo_p99_us)
        ),
    }
}

/// The searches of one scenario × connections, grouped (repeats are consecutive).
pub fn by_scenario(runs: &[ScenarioRun]) -> Vec<Vec<&ScenarioRun>> {
    let mut groups: Vec<Vec<&ScenarioRun>> = Vec::new();
    for run in runs {
        match groups.last_mut() {
            Some(g) if (g[0].scenario, g[0].connections) == (run.scenario, run.connections) => {
                g.push(run);
            }
            _ => groups.push(vec![run]),
        }
    }
    groups
}

/// The answer of repeated searches: the median sustainable rate per core, its range, and
/// the proxy's CPU µs per request there (median and range), e.g. `ping × 256 conns, 3
/// searches: 30000 req/s per core (median; range 28000–33000, 17 %) at p99 ≤ 10 ms → 4
/// cores for 100000 req/s; proxy CPU 20.1 µs/req (19.5–21.0)`.
pub fn repeated_line(
    runs: &[&ScenarioRun],
    cores: usize,
    slo_p99_us: u64,
    target_rps: f64,
) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    let what = format!(
        "{} × {} conns, {} search{}",
        first.scenario,
        first.connections,
        runs.len(),
        if runs.len() == 1 { "" } else { "es" }
    );
    let (rate, cpu) = plan::repeated(runs);
    let Some(rate) = rate else {
        return format!(
            "{what}: no offered rate met p99 ≤ {} ms without errors in any",
            ms_short(slo_p99_us)
        );
    };
    let c = cores.max(1) as f64;
    let mut found = if rate.n < runs.len() {
        format!(", {} of {} found one", rate.n, runs.len())
    } else {
        String::new()
    };
    // A search that climbed to its bound without a failure found no limit: its answer
    // is a floor.
    let unbounded = runs
        .iter()
        .filter(|r| r.sustainable().is_some() && r.bracket().fail.is_none())
        .count();
    if unbounded > 0 {
        let _ = write!(found, ", {unbounded} without a failing rate: a floor");
    }
    let cpu = cpu.map_or_else(String::new, |s| {
        format!(
            "; proxy CPU {:.1} µs/req ({:.1}–{:.1})",
            s.median, s.min, s.max
        )
    });
    format!(
        "{what}: {:.0} req/s per core (median; range {:.0}–{:.0}, {:.0} %{found}) at p99 ≤ {} ms → {} cores for {target_rps:.0} req/s{cpu}",
        rate.median / c,
        rate.min / c,
        rate.max / c,
        rate.relative() * 100.0,
        ms_short(slo_p99_us),
        cores_needed(rate.median / c, target_rps)
    )
}

/// How sure the answer is, in words: the offered rate per core that passed and the one that
/// failed twice, with the p99 of each try there, and how many tries were
/// outvoted by the other tries at their rate. E.g. `offered per core: 9800 passed 2 of 2, p99
/// 1.20/1.35 ms; 10200 failed 2 of 2, p99 14.10/22.00 ms; 1 try outvoted`.
pub fn spread(run: &ScenarioRun, cores: usize) -> String {
    let b = run.bracket();
    let levels = run.levels();
    let per_core = |rate: f64| rate / cores.max(1) as f64;
    let tries = |rate: f64, verb: &str| {
        let Some(level) = levels.iter().find(|l| l.rate == rate) else {
            return String::new();
        };
        let n = if verb == "passed" {
            level.passes
        } else {
            level.fails
        };
        let p99s: Vec<String> = run.tries_at(rate).map(|s| ms(s.latency.p99)).collect();
        format!(
            "{:.0} {verb} {n} of {}, p99 {} ms",
            per_core(rate),
            level.tries(),
            p99s.join("/")
        )
    };
    let mut parts = Vec::new();
    if let Some(p) = b.pass {
        parts.push(tries(p, "passed"));
    }
    match b.fail {
        Some(f) => parts.push(tries(f, "failed")),
        None => {
            let top = levels.iter().map(|l| l.rate).fold(0.0, f64::max);
            parts.push(format!("nothing up to {:.0} failed twice", per_core(top)));
        }
    }
    let mut out = format!("offered per core: {}", parts.join("; "));
    match run.outvoted() {
        0 => {}
        1 => out.push_str("; 1 try outvoted"),
        n => {
            let _ = write!(out, "; {n} tries outvoted");
        }
    }
    out
}

/// The try number of each open-loop step at its rate, and on the last try at a rate tried
/// more than once what the tries add up to: `1`, `2`, `3 (pass, 2 of 3)`.
pub fn try_labels(run: &ScenarioRun) -> Vec<String> {
    let levels = run.levels();
    let mut seen: Vec<f64> = Vec::new();
    run.steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let Some(rate) = s.offered else {
                return "–".to_string();
            };
            seen.push(rate);
            let k = seen.iter().filter(|&&r| r == rate).count();
            let last = !run.steps[i + 1..].iter().any(|t| t.offered == Some(rate));
            match levels.iter().find(|l| l.rate == rate) {
                Some(l) if last && l.tries() > 1 => {
                    let (verdict, n) = match l.judged() {
                        Judged::Pass => ("pass", l.passes),
                        Judged::Fail => ("fail", l.fails),
                        Judged::Open => ("undecided", 0),
                    };
                    if n == 0 {
                        format!("{k} ({verdict})")
                    } else {
                        format!("{k} ({verdict}, {n} of {})", l.tries())
                    }
                }
                _ => k.to_string(),
            }
        })
        .collect()
}

/// Share of a CPU set (0..1) busy with something else — other processes, kernel threads,
/// or steal time taken by the hypervisor: busy minus our own use.
pub fn other_load(own_cores: Option<f64>, set_size: usize, busy: Option<f64>) -> Option<f64> {
    let own = own_cores? / set_size.max(1) as f64;
    Some((busy? - own).max(0.0))
}

/// What limited the closed-loop probe: the CPU set that was (nearly) saturated, and how
/// much of it went to something else. `cores`: proxy workers; `sets`: CPU set sizes.
pub fn limited_by(probe: &Step, cores: usize, sets: CpuSets) -> String {
    // own: cores used; cap: cores it could use; set: CPUs its busy figure covers.
    let judge = |own: Option<f64>, cap: usize, set: usize, busy: Option<f64>, what: &str| {
        let own = own?;
        let full = own / cap.max(1) as f64 >= 0.9 || busy.is_some_and(|b| b >= 0.9);
        if !full {
            return None;
        }
        Some(
            match other_load(Some(own), set, busy).filter(|o| *o >= 0.1) {
                Some(other) => format!(
                    "{what} ({:.0} % of its CPUs busy with other work)",
                    other * 100.0
                ),
                None => what.to_string(),
            },
        )
    };
    judge(
        probe.proxy_util,
        cores,
        sets.proxy,
        probe.proxy_cpus_busy,
        "proxy CPU",
    )
    .or_else(|| {
        judge(
            probe.client_util,
            sets.client,
            sets.client,
            probe.client_cpus_busy,
            "client CPU (generator + mocks)",
        )
    })
    .unwrap_or_else(|| {
        if probe.proxy_util.is_none() {
            "unknown (proxy CPU not measured)".into()
        } else {
            "no CPU saturated".into()
        }
    })
}

/// 10000 µs → "10", 2500 → "2.5".
fn ms_short(us: u64) -> String {
    let s = format!("{:.3}", us as f64 / 1000.0);
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "–".to_string(), f)
}

fn pct(v: Option<f64>) -> String {
    opt(v, |u| format!("{:.0} %", u * 100.0))
}

/// Escapes `|` so a value cannot break a Markdown table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}

pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let slo = ms_short(r.slo_p99_us);
    let _ = writeln!(out, "# opr-proxy capacity report\n");
    let _ = writeln!(
        out,
        "Measured {} on {} CPU(s) ({}), Linux {}, with:\n\n```\n{}\n```\n",
        r.machine.date, r.machine.nproc, r.machine.cpu_model, r.machine.kernel, r.command
    );
    let groups = by_scenario(&r.runs);
    let repeated = groups.iter().any(|g| g.len() > 1);
    if repeated {
        for group in &groups {
            let _ = writeln!(
                out,
                "- **{}**",
                repeated_line(group, r.cores, r.slo_p99_us, r.target_rps)
            );
        }
        let _ = writeln!(out, "\nEach search:\n");
    }
    for run in &r.runs {
        let line = summary_line(run, r.cores, r.slo_p99_us, r.target_rps);
        if repeated {
            let _ = writeln!(out, "- {line}");
        } else {
            let _ = writeln!(out, "- **{line}**");
        }
    }
    let _ = writeln!(out, "\n## Setup\n");
    for (k, v) in &r.setup {
        let _ = writeln!(out, "- {k}: {v}");
    }

    let _ = writeln!(out, "\n## Summary\n");
    let _ = writeln!(
        out,
        "Sustainable = the highest offered open-loop rate with p99 ≤ {slo} ms, no errors and \
         ≥ 95 % of it completed, judged by two of up to three tries. Closed-loop max = the \
         probe (every connection back-to-back). Bracket = the offered rates per core that \
         passed and failed (twice) at the end of the search: the limit lies between them; \
         their p99s are the tries at those two rates. Outvoted = tries whose verdict \
         the other tries at their rate overruled (noisy steps). CPU columns: share of one core, over \
         the measured window.\n"
    );
    if repeated {
        let _ = writeln!(
            out,
            "Each scenario was searched several times, one row per search (the second and \
             later start near the previous answer); the lines at the top give the median \
             sustainable rate, the range of the searches' answers and the proxy's CPU µs per \
             request there. A wide range means the machine, not the proxy, set the figure.\n"
        );
    }
    let _ = writeln!(
        out,
        "| scenario | conns | closed-loop max req/s | sustainable req/s | per proxy core | p99 there (ms) | bracket per core (pass–fail) | p99 of the tries (pass; fail) ms | outvoted | proxy CPU µs/req | proxy CPU | client CPU | cores for {:.0} req/s | probe limited by |",
        r.target_rps
    );
    let _ = writeln!(
        out,
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
    );
    for run in &r.runs {
        let best = run.sustainable();
        let pc = per_core(run, r.cores);
        let bracket = run.bracket();
        let cores = r.cores.max(1) as f64;
        let p99s = |rate: Option<f64>| {
            rate.map_or_else(
                || "–".to_string(),
                |rate| {
                    run.tries_at(rate)
                        .map(|s| ms(s.latency.p99))
                        .collect::<Vec<_>>()
                        .join("/")
                },
            )
        };
        let _ = writeln!(
            out,
            "| {} | {} | {:.0} | {} | {} | {} | {}–{} | {}; {} | {} | {} | {} | {} | {} | {} |",
            run.scenario,
            run.connections,
            run.probe.achieved,
            opt(best.map(|s| s.achieved), |v| format!("{v:.0}")),
            opt(pc, |v| format!("{v:.0}")),
            best.map_or_else(|| "–".into(), |s| ms(s.latency.p99)),
            opt(bracket.pass, |v| format!("{:.0}", v / cores)),
            opt(bracket.fail, |v| format!("{:.0}", v / cores)),
            p99s(bracket.pass),
            p99s(bracket.fail),
            run.outvoted(),
            opt(
                best.and_then(|s| s.proxy_cpu_us).or(run.probe.proxy_cpu_us),
                |v| format!("{v:.1}")
            ),
            pct(best.and_then(|s| s.proxy_util)),
            pct(best.and_then(|s| s.client_util)),
            opt(pc, |v| cores_needed(v, r.target_rps).to_string()),
            limited_by(&run.probe, r.cores, r.sets),
        );
    }

    if let Some((what, base)) = &r.baseline {
        let _ = writeln!(out, "\n## Client-side ceiling (no proxy)\n");
        let _ = writeln!(
            out,
            "{}: **{:.0} req/s** closed loop, p99 {} ms, client CPU {}, errors: {}. When a \
             proxied scenario's closed-loop max comes close to this, the generator and the \
             mocks — not the proxy — set the limit; the proxy's CPU µs/request is then the \
             number to plan with.",
            cell(what),
            base.achieved,
            ms(base.latency.p99),
            pct(base.client_util),
            base.errors
        );
    }

    let _ = writeln!(out, "\n## Steps\n");
    let _ = writeln!(
        out,
        "Latency in ms. Open-loop latency counts from each request's *scheduled* send time \
         (coordinated omission corrected); send lag is how late the generator itself sent \
         (1 ms timer) and should stay far below the SLO. Proxy / client CPU: what those \
         processes used (share of one core); busy: how busy their CPU sets were, every \
         process and the hypervisor's steal time counted — the difference is other work \
         (a shared machine, kernel threads).\n"
    );
    let _ = writeln!(
        out,
        "![latency percentiles vs offered rate](loadtest-report.svg)\n"
    );
    for run in &r.runs {
        let _ = writeln!(
            out,
            "### {} × {} connections\n",
            run.scenario, run.connections
        );
        let _ = writeln!(
            out,
            "| offered req/s | try | achieved req/s | p50 | p90 | p99 | p99.9 | max | errors | proxy CPU µs/req | proxy CPU | client CPU | busy proxy / client CPUs | send lag p99 | verdict |"
        );
        let _ = writeln!(
            out,
            "|--:|---|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|---|"
        );
        let tries = std::iter::once("–".to_string()).chain(try_labels(run));
        for (s, try_label) in std::iter::once(&run.probe).chain(&run.steps).zip(tries) {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} | {} |",
                opt(s.offered, |v| format!("{v:.0}")).replace('–', "closed loop"),
                try_label,
                s.achieved,
                ms(s.latency.p50),
                ms(s.latency.p90),
                ms(s.latency.p99),
                ms(s.latency.p999),
                ms(s.latency.max),
                cell(&s.errors.to_string()),
                opt(s.proxy_cpu_us, |v| format!("{v:.1}")),
                pct(s.proxy_util),
                pct(s.client_util),
                pct(s.proxy_cpus_busy),
                pct(s.client_cpus_busy),
                if s.offered.is_some() {
                    ms(s.lag_p99)
                } else {
                    "–".into()
                },
                s.verdict.label(),
            );
        }
        let _ = writeln!(out);
    }

    if !r.notes.is_empty() {
        let _ = writeln!(out, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(out, "- {}", n);
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "## Method\n\n\
         - Each scenario: a closed-loop probe, then open-loop steps at 25/50/70/85/100/115/130 % \
         of the probe's throughput until a rate fails. A failing rate is tried again and counts \
         as failed only when two of (at most) three tries fail, so one noisy step does not end \
         the search. Then bisection between the highest pass and the lowest confirmed failure \
         until they are within {:.0} % (each failing midpoint tried again the same way){}; \
         {} open-loop steps at most per scenario.\n\
         - Proxy CPU µs/request = Δ(utime + stime) of the proxy process(es) from \
         `/proc/<pid>/stat` over the window ÷ successful requests in the window (10 ms tick \
         resolution).\n\
         - Per proxy core = sustainable rate ÷ proxy worker cores; cores for the target = \
         ⌈target ÷ per core⌉ — linear scaling assumed, so keep headroom.\n\
         - Verdicts: {} = any error; {} = under 95 % of the offered rate completed; {} = p99 \
         over the SLO.",
        r.rules.resolution * 100.0,
        if r.rules.confirm_pass {
            ", then the answer is tried a second time (a third try decides if that fails)"
        } else {
            ""
        },
        r.rules.max_steps,
        Verdict::Errors.label(),
        Verdict::Behind.label(),
        Verdict::SloMissed.label()
    );
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gen::stats::{ErrorCounts, ErrorKind, Summary};
    use crate::plan::Scenario;

    pub(crate) fn step(offered: Option<f64>, achieved: f64, p99: u64, verdict: Verdict) -> Step {
        Step {
            offered,
            achieved,
            latency: Summary {
                count: 100,
                mean: p99 as f64 / 3.0,
                p50: p99 / 4,
                p90: p99 / 2,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
            },
            lag_p99: 900,
            errors: ErrorCounts::default(),
            proxy_cpu_us: Some(17.5),
            proxy_util: Some(0.5),
            client_util: Some(0.95),
            proxy_cpus_busy: Some(0.55),
            client_cpus_busy: Some(0.97),
            verdict,
        }
    }

    pub(crate) fn sample_report() -> Report {
        let mut failed = step(Some(30_000.0), 29_000.0, 25_000, Verdict::SloMissed);
        failed.errors.add(ErrorKind::Status(502));
        failed.verdict = Verdict::Errors;
        let run = ScenarioRun {
            scenario: Scenario::Ping,
            connections: 256,
            probe: step(None, 30_000.0, 8_000, Verdict::Probe),
            steps: vec![
                step(Some(7_500.0), 7_500.0, 400, Verdict::Pass),
                // A noisy step, outvoted by the two tries after it.
                step(Some(15_000.0), 14_990.0, 12_000, Verdict::SloMissed),
                step(Some(15_000.0), 14_990.0, 900, Verdict::Pass),
                step(Some(15_000.0), 14_990.0, 950, Verdict::Pass),
                step(Some(21_000.0), 20_950.0, 2_000, Verdict::Pass),
                failed,
                step(Some(30_000.0), 29_500.0, 31_000, Verdict::SloMissed),
                step(Some(21_000.0), 20_900.0, 2_200, Verdict::Pass),
            ],
        };
        let empty = ScenarioRun {
            scenario: Scenario::Upload1m,
            connections: 1024,
            probe: step(None, 500.0, 80_000, Verdict::Probe),
            steps: vec![step(Some(125.0), 120.0, 40_000, Verdict::SloMissed)],
        };
        Report {
            machine: Machine {
                nproc: 2,
                kernel: "6.1.0".into(),
                cpu_model: "Test <CPU> & co".into(),
                date: utc_datetime(0),
            },
            command: "loadtest --scenario ping".into(),
            setup: vec![("proxy".into(), "opr-proxy, 1 worker on CPU 0".into())],
            cores: 1,
            sets: CpuSets {
                proxy: 1,
                client: 1,
            },
            slo_p99_us: 10_000,
            target_rps: 100_000.0,
            rules: crate::plan::DEFAULT_RULES,
            baseline: Some((
                "2 mocks | direct".into(),
                step(None, 40_000.0, 5_000, Verdict::Probe),
            )),
            runs: vec![run, empty],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn repeated_searches_give_median_and_range() {
        let r = sample_report();
        let (ping, empty) = (&r.runs[0], &r.runs[1]);
        // The sample's answer is 20 950 req/s at 17.5 µs; two more searches around it.
        let scaled = |k: f64, cpu: f64| {
            let mut run = ping.clone();
            for s in &mut run.steps {
                s.achieved *= k;
                s.proxy_cpu_us = Some(cpu);
            }
            run
        };
        let (low, high) = (scaled(0.8, 21.0), scaled(1.1, 16.0));
        let runs = vec![ping.clone(), low, high, empty.clone()];
        let groups = by_scenario(&runs);
        assert_eq!(groups.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(
            repeated_line(&groups[0], 2, 10_000, 100_000.0),
            "ping × 256 conns, 3 searches: 10475 req/s per core (median; range 8380–11523, 30 %) \
             at p99 ≤ 10 ms → 10 cores for 100000 req/s; proxy CPU 17.5 µs/req (16.0–21.0)"
        );
        assert_eq!(
            repeated_line(&groups[1], 1, 10_000, 100_000.0),
            "upload-1m × 1024 conns, 1 search: no offered rate met p99 ≤ 10 ms without errors in any"
        );
        let mixed = [groups[0][0], empty];
        assert!(
            repeated_line(&mixed, 1, 10_000, 1.0).contains("0 %, 1 of 2 found one)"),
            "{}",
            repeated_line(&mixed, 1, 10_000, 1.0)
        );
        // A search that never failed (it stopped at its climb bound) is named.
        let mut never_failed = ping.clone();
        never_failed.steps.retain(|s| s.verdict == Verdict::Pass);
        let line = repeated_line(&[ping, &never_failed], 1, 10_000, 1.0);
        assert!(
            line.contains("0 %, 1 without a failing rate: a floor)"),
            "{line}"
        );
        let report = Report {
            runs: runs.clone(),
            ..sample_report()
        };
        let md = markdown(&report);
        assert!(
            md.contains("- **ping × 256 conns, 3 searches: 20950 req/s per core"),
            "{md}"
        );
        assert!(md.contains("Each search:"), "{md}");
        assert!(
            md.contains("Each scenario was searched several times"),
            "{md}"
        );
        assert!(!markdown(&sample_report()).contains("Each search:"));
    }

    #[test]
    fn what_limited_a_probe() {
        let one = CpuSets {
            proxy: 1,
            client: 1,
        };
        let mut p = step(None, 1.0, 1, Verdict::Probe);
        assert_eq!(limited_by(&p, 1, one), "client CPU (generator + mocks)");
        p.proxy_util = Some(0.5);
        p.proxy_cpus_busy = Some(1.0);
        assert_eq!(
            limited_by(&p, 1, one),
            "proxy CPU (50 % of its CPUs busy with other work)"
        );
        p.proxy_util = Some(1.9);
        p.proxy_cpus_busy = Some(0.97);
        let two = CpuSets {
            proxy: 2,
            client: 1,
        };
        assert_eq!(limited_by(&p, 2, two), "proxy CPU");
        p.proxy_util = Some(0.2);
        p.proxy_cpus_busy = None;
        p.client_util = Some(0.3);
        p.client_cpus_busy = Some(0.35);
        assert_eq!(limited_by(&p, 1, one), "no CPU saturated");
        p.proxy_util = None;
        assert_eq!(limited_by(&p, 1, one), "unknown (proxy CPU not measured)");
        assert_eq!(other_load(Some(0.5), 1, Some(0.4)), Some(0.0));
    }

    #[test]
    fn dates() {
        assert_eq!(utc_datetime(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_datetime(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_datetime(1_798_432_200), "2026-12-28 04:30 UTC");
    }

    #[test]
    fn summary_lines() {
        let r = sample_report();
        assert_eq!(
            summary_line(&r.runs[0], 1, 10_000, 100_000.0),
            "ping × 256 conns: 20950 req/s per core at p99 ≤ 10 ms → 5 cores for 100000 req/s \
             (offered per core: 21000 passed 2 of 2, p99 2.00/2.20 ms; 30000 failed 2 of 2, \
             p99 25.00/31.00 ms; 1 try outvoted)"
        );
        assert_eq!(
            summary_line(&r.runs[0], 2, 2_500, 100_000.0),
            "ping × 256 conns: 10475 req/s per core at p99 ≤ 2.5 ms → 10 cores for 100000 req/s \
             (offered per core: 10500 passed 2 of 2, p99 2.00/2.20 ms; 15000 failed 2 of 2, \
             p99 25.00/31.00 ms; 1 try outvoted)"
        );
        assert_eq!(
            summary_line(&r.runs[1], 1, 10_000, 1.0),
            "upload-1m × 1024 conns: no offered rate met p99 ≤ 10 ms without errors \
             (offered per core: nothing up to 125 failed twice)"
        );
        assert_eq!(
            try_labels(&r.runs[0]),
            [
                "1",
                "1",
                "2",
                "3 (pass, 2 of 3)",
                "1",
                "1",
                "2 (fail, 2 of 2)",
                "2 (pass, 2 of 2)"
            ]
        );
        assert_eq!(cores_needed(0.0, 5.0), u64::MAX);
        assert_eq!(cores_needed(1000.0, 1.0), 1);
    }

    #[test]
    fn markdown_tables_are_rectangular() {
        let md = markdown(&sample_report());
        assert!(md.contains("20950 req/s per core"));
        assert!(md.contains("status 502×1"));
        assert!(md.contains("2 mocks \\| direct"));
        // Every table row has as many cells as its header.
        let mut cols = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                cols = None;
                continue;
            }
            let n = line.replace("\\|", "").matches('|').count();
            match cols {
                None => cols = Some(n),
                Some(c) => assert_eq!(n, c, "row {line:?}"),
            }
        }
        assert_eq!(md.matches("| closed loop |").count(), 2);
        assert!(md.contains("| client CPU (generator + mocks) |"), "{md}");
    }
}
