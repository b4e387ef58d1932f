//! The capacity plan: scenarios, what one step measured, the SLO verdict, and the search
//! that steps the offered (open-loop) rate up from a closed-loop probe until p99 breaks
//! (past the probe while nothing fails), and the spread of repeated searches.

use crate::gen::stats::{ErrorCounts, Summary};
use crate::gen::{Load, RunResult};
use std::fmt;

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Small GET: `/v1/ping` (~150-byte JSON answer).
    Ping,
    /// 64 KiB response: `/v1/download?bytes=65536`.
    Download64k,
    /// 1 MiB response.
    Download1m,
    /// 1 MiB request body: `POST /v1/upload` (small JSON answer).
    Upload1m,
}

impl Scenario {
    pub const ALL: [Scenario; 4] = [
        Scenario::Ping,
        Scenario::Download64k,
        Scenario::Download1m,
        Scenario::Upload1m,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Ping => "ping",
            Scenario::Download64k => "download-64k",
            Scenario::Download1m => "download-1m",
            Scenario::Upload1m => "upload-1m",
        }
    }

    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|sc| sc.name() == s)
    }

    pub fn method(self) -> &'static str {
        match self {
            Scenario::Upload1m => "POST",
            _ => "GET",
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            Scenario::Ping => "/v1/ping",
            Scenario::Download64k => "/v1/download?bytes=65536",
            Scenario::Download1m => "/v1/download?bytes=1048576",
            Scenario::Upload1m => "/v1/upload",
        }
    }

    /// Request body bytes.
    pub fn body_len(self) -> usize {
        match self {
            Scenario::Upload1m => 1 << 20,
            _ => 0,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `make loadtest`'s plan: every scenario at 256 connections, the cheap ones at 1024 too.
/// About 15 s each on a 2-core machine, so the whole plan stays well under 3 minutes.
pub const DEFAULT_PLAN: [(Scenario, usize); 6] = [
    (Scenario::Ping, 256),
    (Scenario::Ping, 1024),
    (Scenario::Download64k, 256),
    (Scenario::Download64k, 1024),
    (Scenario::Download1m, 256),
    (Scenario::Upload1m, 256),
];

/// How a step went against the SLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The closed-loop probe (not judged).
    Probe,
    Pass,
    /// p99 above the SLO.
    SloMissed,
    /// At least one error.
    Errors,
    /// Less than 95 % of the offered rate completed in the window.
    Behind,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Probe => "probe",
            Verdict::Pass => "pass",
            Verdict::SloMissed => "p99 > SLO",
            Verdict::Errors => "errors",
            Verdict::Behind => "behind",
        }
    }
}

/// One step of a plan, reduced to what the report needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Offered rate (open loop); None for the closed-loop probe.
    pub offered: Option<f64>,
    /// Successful requests/s.
    pub achieved: f64,
    pub latency: Summary,
    /// p99 of the open-loop send lag (µs), to spot an overloaded generator.
    pub lag_p99: u64,
    pub errors: ErrorCounts,
    /// Proxy CPU time per successful request, µs.
    pub proxy_cpu_us: Option<f64>,
    /// Proxy CPU time over the window as a fraction of one core.
    pub proxy_util: Option<f64>,
    /// Load generator process (with in-process mocks) CPU as a fraction of one core.
    pub client_util: Option<f64>,
    /// How busy the proxy's CPUs were, all processes counted (0..1 of the set).
    pub proxy_cpus_busy: Option<f64>,
    /// How busy the client's CPUs were, all processes counted (0..1 of the set).
    pub client_cpus_busy: Option<f64>,
    pub verdict: Verdict,
}

/// What the sampler of a run reports, by index (see the loadtest binary).
pub const CPU_CLIENT: usize = 0;
pub const CPU_PROXY: usize = 1;
/// Busy time of the client's CPU set, all processes.
pub const BUSY_CLIENT: usize = 2;
/// Busy time of the proxy's CPU set, all processes.
pub const BUSY_PROXY: usize = 3;

/// Sizes of the CPU sets the busy times cover (0 = not measured).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuSets {
    pub proxy: usize,
    pub client: usize,
}

impl Step {
    /// Summarises a run and judges it: errors first, then falling behind, then the SLO.
    pub fn from_run(r: &RunResult, offered: Option<f64>, slo_p99_us: u64, sets: CpuSets) -> Step {
        let latency = Summary::of(&r.latency);
        let achieved = r.throughput();
        let busy =
            |i: usize, n: usize| r.cpu_utilisation(i).filter(|_| n > 0).map(|u| u / n as f64);
        let verdict = match offered {
            None => Verdict::Probe,
            Some(_) if r.errors.total() > 0 => Verdict::Errors,
            Some(rate) if achieved < rate * 0.95 => Verdict::Behind,
            Some(_) if latency.count == 0 || latency.p99 > slo_p99_us => Verdict::SloMissed,
            Some(_) => Verdict::Pass,
        };
        Step {
            offered,
            achieved,
            latency,
            lag_p99: Summary::of(&r.lag).p99,
            errors: r.errors.clone(),
            proxy_cpu_us: r.cpu_per_request(CPU_PROXY),
            proxy_util: r.cpu_utilisation(CPU_PROXY),
            client_util: r.cpu_utilisation(CPU_CLIENT),
            proxy_cpus_busy: busy(BUSY_PROXY, sets.proxy),
            client_cpus_busy: busy(BUSY_CLIENT, sets.client),
            verdict,
        }
    }
}

/// One scenario at one connection count: the probe and the open-loop steps in order.
#[derive(Clone, Debug, PartialEq)]
pub struct ScenarioRun {
    pub scenario: Scenario,
    pub connections: usize,
    pub probe: Step,
    pub steps: Vec<Step>,
}

impl ScenarioRun {
    /// Every offered rate with its tries, in the order first offered.
    pub fn levels(&self) -> Vec<Level> {
        levels(
            self.steps
                .iter()
                .filter_map(|s| Some((s.offered?, s.verdict == Verdict::Pass))),
        )
    }

    /// The highest rate judged a pass (below every rate judged a fail) and the lowest rate
    /// judged a fail: the true limit lies between them.
    pub fn bracket(&self) -> Bracket {
        Bracket::of(&self.levels())
    }

    /// The answer: the best passing try at the highest rate judged a pass.
    pub fn sustainable(&self) -> Option<&Step> {
        let rate = self.bracket().pass?;
        self.tries_at(rate)
            .filter(|s| s.verdict == Verdict::Pass)
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }

    /// The steps offered at `rate`, in order.
    pub fn tries_at(&self, rate: f64) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.offered == Some(rate))
    }

    /// Tries outvoted by the other tries at their rate (a noisy step that did not decide).
    pub fn outvoted(&self) -> u32 {
        self.levels().iter().map(Level::outvoted).sum()
    }
}

/// All tries at one offered rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Level {
    pub rate: f64,
    pub passes: u32,
    pub fails: u32,
}

/// What the tries at one rate add up to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judged {
    /// Passed the first try, or two tries.
    Pass,
    /// Failed two tries: one failure alone never ends the search.
    Fail,
    /// Failed once and has not yet passed twice: try again.
    Open,
}

impl Level {
    pub fn judged(&self) -> Judged {
        if self.fails >= 2 {
            Judged::Fail
        } else if self.passes >= 2 || (self.passes >= 1 && self.fails == 0) {
            Judged::Pass
        } else {
            Judged::Open
        }
    }

    pub fn tries(&self) -> u32 {
        self.passes + self.fails
    }

    /// Tries that disagree with the judgement.
    pub fn outvoted(&self) -> u32 {
        match self.judged() {
            Judged::Pass => self.fails,
            Judged::Fail => self.passes,
            Judged::Open => 0,
        }
    }
}

/// Groups (offered rate, passed) tries by rate, in the order each rate first appears. A
/// repeated rate is the same `f64` value, offered again by [`Stepper`].
pub fn levels(tries: impl IntoIterator<Item = (f64, bool)>) -> Vec<Level> {
    let mut out: Vec<Level> = Vec::new();
    for (rate, passed) in tries {
        let i = match out.iter().position(|l| l.rate == rate) {
            Some(i) => i,
            None => {
                out.push(Level {
                    rate,
                    passes: 0,
                    fails: 0,
                });
                out.len() - 1
            }
        };
        if passed {
            out[i].passes += 1;
        } else {
            out[i].fails += 1;
        }
    }
    out
}

/// Last pass and first (confirmed) fail of a search, offered req/s.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Bracket {
    pub pass: Option<f64>,
    pub fail: Option<f64>,
}

impl Bracket {
    pub fn of(levels: &[Level]) -> Bracket {
        let fail = levels
            .iter()
            .filter(|l| l.judged() == Judged::Fail)
            .map(|l| l.rate)
            .reduce(f64::min);
        let pass = levels
            .iter()
            .filter(|l| l.judged() == Judged::Pass && fail.is_none_or(|f| l.rate < f))
            .map(|l| l.rate)
            .reduce(f64::max);
        Bracket { pass, fail }
    }

    /// (fail − pass) / fail, when both are known.
    pub fn width(&self) -> Option<f64> {
        let (p, f) = (self.pass?, self.fail?);
        Some((f - p) / f)
    }
}

/// Offered rates as fractions of the closed-loop probe's throughput, climbed in order.
pub const FRACTIONS: [f64; 7] = [0.25, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3];

/// A search after the first starts near the previous answer (fractions of it): the low
/// steps only repeat what the first search showed.
pub const REPEAT_FRACTIONS: [f64; 3] = [0.85, 1.0, 1.15];

/// Past the last fraction with nothing failed, keep climbing by this factor: a noisy probe
/// must not cap the answer (one run answered 28 786 req/s per core because nothing up to
/// 1.3 × its probe failed, while the run minutes before found 42 802)...
pub const CLIMB: f64 = 1.25;

/// ...up to this multiple of the probe (or of the previous answer), so the search stays
/// bounded; the report then says nothing up to there failed.
pub const CLIMB_LIMIT: f64 = 3.0;

/// How the search copes with noise and when it stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchRules {
    /// Bisect until (first fail − last pass) / first fail is below this.
    pub resolution: f64,
    /// Open-loop steps at most per scenario: bounds the plan's time whatever the noise.
    pub max_steps: usize,
    /// Try the answer (the highest pass) a second time before reporting it; if that
    /// fails, a third try decides, and a rate failed twice becomes the new upper end.
    pub confirm_pass: bool,
}

/// What `make loadtest` uses: a limit known within 5 %, at most 18 steps per search (a
/// limit 3 × above the probe takes about that many; one at the probe's figure 9–12).
pub const DEFAULT_RULES: SearchRules = SearchRules {
    resolution: 0.05,
    max_steps: 18,
    confirm_pass: true,
};

/// `make loadtest` searches each scenario this many times (`--repeat`).
pub const DEFAULT_REPEATS: usize = 3;

/// Chooses the next offered rate from the tries so far (pure: unit-tested against
/// scripted outcomes). A rate that fails once is tried again and fails only if two of
/// (at most) three tries fail, so a single noisy step cannot end the search; once a rate
/// failed twice, the search bisects between it and the highest pass below it. While nothing
/// has failed it climbs past the last fraction by [`CLIMB`], up to [`CLIMB_LIMIT`].
#[derive(Clone, Debug)]
pub struct Stepper {
    ceiling: f64,
    fractions: &'static [f64],
    rules: SearchRules,
    tries: Vec<(f64, bool)>,
    next_fraction: usize,
    retried_low: bool,
}

impl Stepper {
    /// `ceiling`: closed-loop throughput of the probe.
    pub fn new(ceiling: f64, rules: SearchRules) -> Stepper {
        Stepper {
            ceiling: ceiling.max(1.0),
            fractions: &FRACTIONS,
            rules,
            tries: Vec::new(),
            next_fraction: 0,
            retried_low: false,
        }
    }

    /// A search that starts near `answer`, a previous search's (see [`REPEAT_FRACTIONS`]).
    pub fn near(answer: f64, rules: SearchRules) -> Stepper {
        Stepper {
            fractions: &REPEAT_FRACTIONS,
            ..Stepper::new(answer, rules)
        }
    }

    /// How a try at `rate` went.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.tries.push((rate, passed));
    }

    pub fn levels(&self) -> Vec<Level> {
        levels(self.tries.iter().copied())
    }

    pub fn bracket(&self) -> Bracket {
        Bracket::of(&self.levels())
    }

    /// The next rate to offer, or None when the search is over.
    pub fn next_rate(&mut self) -> Option<f64> {
        if self.tries.len() >= self.rules.max_steps {
            return None;
        }
        let levels = self.levels();
        // A rate that failed once is tried again until two tries agree.
        if let Some(open) = levels.iter().find(|l| l.judged() == Judged::Open) {
            return Some(open.rate);
        }
        let confirm = |rate: Option<f64>| -> Option<f64> {
            let level = levels.iter().find(|l| Some(l.rate) == rate)?;
            (self.rules.confirm_pass && level.passes < 2).then_some(level.rate)
        };
        match Bracket::of(&levels) {
            // Nothing failed yet: keep climbing, past the fractions by CLIMB; past the
            // bound, confirm the highest pass.
            Bracket { pass, fail: None } => match self.fractions.get(self.next_fraction) {
                Some(f) => {
                    self.next_fraction += 1;
                    Some(f * self.ceiling)
                }
                None => {
                    let (top, bound) = (pass.unwrap_or(self.ceiling), self.ceiling * CLIMB_LIMIT);
                    if top < bound {
                        Some((top * CLIMB).min(bound))
                    } else {
                        confirm(pass)
                    }
                }
            },
            // Even the lowest step failed: one try far lower, then give up.
            Bracket {
                pass: None,
                fail: Some(fail),
            } => {
                if self.retried_low {
                    return None;
                }
                self.retried_low = true;
                Some((fail * 0.4).max(1.0))
            }
            // Bracketed: bisect down to the resolution, then confirm the answer.
            Bracket {
                pass: Some(pass),
                fail: Some(fail),
            } => {
                if (fail - pass) / fail >= self.rules.resolution {
                    Some((pass + fail) / 2.0)
                } else {
                    confirm(Some(pass))
                }
            }
        }
    }
}

/// Runs a scenario: a closed-loop probe, then open-loop steps chosen by [`Stepper`],
/// starting low (relative to the probe) or near `previous`, an earlier search's answer
/// (offered req/s). `run` executes one load and returns its summarised step.
pub fn search<E>(
    scenario: Scenario,
    connections: usize,
    rules: SearchRules,
    previous: Option<f64>,
    mut run: impl FnMut(Load) -> Result<Step, E>,
) -> Result<ScenarioRun, E> {
    let probe = run(Load::Closed)?;
    let mut stepper = match previous {
        Some(answer) => Stepper::near(answer, rules),
        None => Stepper::new(probe.achieved, rules),
    };
    let mut steps: Vec<Step> = Vec::new();
    while let Some(rate) = stepper.next_rate() {
        let step = run(Load::Open { rate })?;
        stepper.record(rate, step.verdict == Verdict::Pass);
        steps.push(step);
    }
    Ok(ScenarioRun {
        scenario,
        connections,
        probe,
        steps,
    })
}

/// Median and range of one figure over repeated searches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// How many searches gave the figure.
    pub n: usize,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => v[n / 2],
            _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    /// (max − min) / median.
    pub fn relative(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }
}

/// Repeated searches of one scenario: the sustainable rate (req/s, not per core) and the
/// proxy's CPU µs per request there, each as median and range. Searches that found no
/// sustainable rate count in neither.
pub fn repeated(runs: &[&ScenarioRun]) -> (Option<Spread>, Option<Spread>) {
    let best = || runs.iter().filter_map(|r| r.sustainable());
    (
        Spread::of(best().map(|s| s.achieved)),
        Spread::of(best().filter_map(|s| s.proxy_cpu_us)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_step(offered: Option<f64>, pass: bool) -> Step {
        Step {
            offered,
            achieved: offered.unwrap_or(10_000.0),
            latency: Summary::default(),
            lag_p99: 0,
            errors: ErrorCounts::default(),
            proxy_cpu_us: None,
            proxy_util: None,
            client_util: None,
            proxy_cpus_busy: None,
            client_cpus_busy: None,
            verdict: match offered {
                None => Verdict::Probe,
                Some(_) if pass => Verdict::Pass,
                Some(_) => Verdict::SloMissed,
            },
        }
    }

    /// Runs the search with `oracle(rate, try at this rate (1, 2, 3), step index)` deciding
    /// each step's pass; returns the run and the offered rates in order.
    fn simulate_with(
        probe: f64,
        rules: SearchRules,
        oracle: impl FnMut(f64, usize, usize) -> bool,
    ) -> (ScenarioRun, Vec<f64>) {
        simulate_from(probe, None, rules, oracle)
    }

    /// As `simulate_with`, for a search that starts near `previous` (a repeat).
    fn simulate_from(
        probe: f64,
        previous: Option<f64>,
        rules: SearchRules,
        mut oracle: impl FnMut(f64, usize, usize) -> bool,
    ) -> (ScenarioRun, Vec<f64>) {
        let mut offered: Vec<f64> = Vec::new();
        let run = search(Scenario::Ping, 8, rules, previous, |load| {
            Ok::<_, ()>(match load {
                Load::Closed => {
                    let mut s = fake_step(None, true);
                    s.achieved = probe;
                    s
                }
                Load::Open { rate } => {
                    let attempt = offered.iter().filter(|&&r| r == rate).count() + 1;
                    let pass = oracle(rate, attempt, offered.len());
                    offered.push(rate);
                    fake_step(Some(rate), pass)
                }
            })
        })
        .expect("fake runs never fail");
        assert_eq!(run.steps.len(), offered.len());
        assert!(offered.len() <= rules.max_steps);
        (run, offered)
    }

    /// A server that passes at and below `limit` req/s, every time.
    fn simulate(probe: f64, limit: f64) -> Vec<f64> {
        simulate_with(probe, DEFAULT_RULES, |rate, _, _| rate <= limit).1
    }

    fn rules(resolution: f64, max_steps: usize, confirm_pass: bool) -> SearchRules {
        SearchRules {
            resolution,
            max_steps,
            confirm_pass,
        }
    }

    #[test]
    fn climbs_confirms_the_failure_bisects_and_confirms_the_answer() {
        let r = simulate(1000.0, 800.0);
        // 850 fails twice; bisect: 775 passes, 812.5 fails twice; the bracket 775–812.5 is
        // under 5 %, so 775 is tried once more to confirm it.
        assert_eq!(
            r,
            vec![250.0, 500.0, 700.0, 850.0, 850.0, 775.0, 812.5, 812.5, 775.0]
        );
    }

    #[test]
    fn one_noisy_failure_does_not_end_the_search() {
        let quiet = simulate_with(1000.0, DEFAULT_RULES, |rate, _, _| rate <= 800.0).0;
        // The first try at 500 req/s fails (a noisy step); the second and third pass.
        let (noisy, offered) = simulate_with(1000.0, DEFAULT_RULES, |rate, attempt, _| {
            rate <= 800.0 && !(rate == 500.0 && attempt == 1)
        });
        assert_eq!(&offered[..4], &[250.0, 500.0, 500.0, 500.0]);
        assert_eq!(noisy.bracket(), quiet.bracket());
        assert_eq!(noisy.sustainable().and_then(|s| s.offered), Some(775.0));
        assert_eq!(noisy.outvoted(), 1);
        assert_eq!(quiet.outvoted(), 0);
        // The old search stopped at the first failure: it would have answered 250.
        // A noisy failure anywhere, any single step, never moves the answer below the
        // quiet run's bracket.
        for bad in 0..12 {
            let (run, _) = simulate_with(1000.0, DEFAULT_RULES, |rate, _, i| {
                rate <= 800.0 && i != bad
            });
            let b = run.bracket();
            let pass = b.pass.expect("a pass");
            assert!(
                (800.0 * 0.95..=800.0).contains(&pass),
                "noise at step {bad}: {b:?}"
            );
        }
    }

    #[test]
    fn a_persistent_failure_ends_the_search() {
        // Everything from 700 up fails every time: 700 is confirmed after two tries, and
        // the search never climbs past it.
        let (run, offered) = simulate_with(1000.0, DEFAULT_RULES, |rate, _, _| rate < 700.0);
        assert_eq!(&offered[..4], &[250.0, 500.0, 700.0, 700.0]);
        assert!(offered.iter().all(|&r| r <= 700.0));
        let b = run.bracket();
        assert_eq!(b.fail.map(|f| f <= 700.0), Some(true));
        assert!(b.pass.expect("a pass") < 700.0);
        // Two of three: fail, pass, fail is a failure.
        let (run, offered) = simulate_with(1000.0, rules(0.05, 4, false), |rate, attempt, _| {
            rate < 500.0 || attempt == 2
        });
        assert_eq!(offered, vec![250.0, 500.0, 500.0, 500.0]);
        assert_eq!(run.bracket().fail, Some(500.0));
        assert_eq!(run.outvoted(), 1);
    }

    #[test]
    fn bisection_converges_within_the_bracket() {
        for limit in [
            150.0, 260.0, 333.0, 499.0, 640.0, 701.0, 849.0, 999.0, 1_120.0, 1_290.0,
        ] {
            let (run, _) = simulate_with(1000.0, DEFAULT_RULES, |rate, _, _| rate <= limit);
            let b = run.bracket();
            let (pass, fail) = (b.pass.expect("pass"), b.fail.expect("fail"));
            assert!(pass <= limit && limit < fail, "{limit}: {b:?}");
            assert!(
                b.width().expect("width") < DEFAULT_RULES.resolution,
                "{limit}: {b:?}"
            );
            // The answer was tried twice and passed both times.
            let answer = run
                .levels()
                .into_iter()
                .find(|l| l.rate == pass)
                .expect("level");
            assert_eq!(answer.passes, 2, "{limit}");
        }
    }

    #[test]
    fn an_answer_that_fails_its_second_try_is_replaced() {
        // 775 passes the first time only (a lucky step): its confirmation fails twice, so it
        // becomes the upper end and the search settles below it.
        let (run, offered) = simulate_with(1000.0, DEFAULT_RULES, |rate, attempt, _| {
            rate <= 800.0 && !(rate == 775.0 && attempt > 1)
        });
        assert_eq!(&offered[8..], &[775.0, 775.0, 737.5, 737.5], "{offered:?}");
        assert_eq!(
            run.bracket(),
            Bracket {
                pass: Some(737.5),
                fail: Some(775.0)
            }
        );
    }

    /// A system that fails above `limit`, every time, whatever the probe said.
    fn bracket_holds(run: &ScenarioRun, limit: f64) {
        let b = run.bracket();
        let levels = run.levels();
        let (Some(pass), Some(fail)) = (b.pass, b.fail) else {
            panic!("{limit}: {b:?} {levels:?}")
        };
        assert!(pass <= limit && limit < fail, "{limit}: {b:?}");
        assert!(
            b.width().expect("width") < DEFAULT_RULES.resolution,
            "{b:?}"
        );
    }

    #[test]
    fn finds_a_limit_far_above_a_low_probe() {
        // The probe undershot (a noisy closed-loop window): the answer must still be the
        // limit, not the probe's figure. Before, the search stopped at 1.3 × the probe and
        // answered that ("nothing up to 1300 failed twice").
        for (probe, limit) in [
            (1000.0, 1400.0),
            (1000.0, 2000.0),
            (1000.0, 2450.0),
            (1000.0, 2900.0),
            (700.0, 2000.0),
        ] {
            let (run, offered) = simulate_with(probe, DEFAULT_RULES, |rate, _, _| rate <= limit);
            bracket_holds(&run, limit);
            assert!(offered.len() <= DEFAULT_RULES.max_steps);
            let answer = run.sustainable().and_then(|s| s.offered).expect("answer");
            assert!(answer > limit * 0.95, "{probe} {limit}: {offered:?}");
        }
        // The climb is bounded: past CLIMB_LIMIT × the probe it stops and confirms.
        let (run, offered) = simulate_with(1000.0, DEFAULT_RULES, |rate, _, _| rate <= 9000.0);
        assert!(
            offered.iter().all(|&r| r <= 1000.0 * CLIMB_LIMIT),
            "{offered:?}"
        );
        assert_eq!(run.bracket().fail, None);
    }

    #[test]
    fn repeated_searches_start_near_the_answer_and_report_the_spread() {
        let limit = 2000.0;
        // Three searches, probes 700, 2100 and 1500: each finds the limit.
        let (first, _) = simulate_with(700.0, DEFAULT_RULES, |rate, _, _| rate <= limit);
        let previous = first.bracket().pass;
        let (second, offered) =
            simulate_from(2100.0, previous, DEFAULT_RULES, |rate, _, _| rate <= limit);
        // Near the previous answer: 85 % of it first, no low steps.
        assert_eq!(offered[0], previous.unwrap() * 0.85);
        assert!(offered.len() < 10, "{offered:?}");
        let (third, _) = simulate_from(
            1500.0,
            second.bracket().pass,
            DEFAULT_RULES,
            |rate, _, _| rate <= limit,
        );
        for run in [&first, &second, &third] {
            bracket_holds(run, limit);
        }
        let (rate, cpu) = repeated(&[&first, &second, &third]);
        let rate = rate.expect("spread");
        assert_eq!(rate.n, 3);
        assert!(rate.min <= rate.median && rate.median <= rate.max);
        assert!(rate.median > limit * 0.95 && rate.max <= limit, "{rate:?}");
        assert_eq!(cpu, None, "the fake steps have no CPU figure");
        // A repeat whose previous answer was far too low still climbs to the limit.
        let (low, _) = simulate_from(1500.0, Some(900.0), DEFAULT_RULES, |rate, _, _| {
            rate <= limit
        });
        bracket_holds(&low, limit);
    }

    #[test]
    fn spread_is_median_and_range() {
        let s = Spread::of([30.0, 10.0, 20.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (20.0, 10.0, 30.0, 3));
        assert_eq!(s.relative(), 1.0);
        let s = Spread::of([4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(Spread::of([]), None);
    }

    #[test]
    fn passes_to_the_top_or_narrow_brackets_stop() {
        let r = simulate(1000.0, 1e9);
        // Everything passes: past the fractions it climbs by CLIMB up to CLIMB_LIMIT × the
        // probe (1625, 2031.25, 2539.06, 3000), confirms the highest pass, and ends.
        assert_eq!(r.len(), FRACTIONS.len() + 5, "{r:?}");
        assert_eq!(
            &r[FRACTIONS.len()..],
            &[1625.0, 2031.25, 2539.0625, 3000.0, 3000.0]
        );
        // Without confirmation, a bracket narrower than the resolution is not split.
        let mut s = Stepper::new(1000.0, rules(0.06, 20, false));
        assert_eq!(s.next_rate(), Some(250.0));
        s.record(250.0, true);
        assert_eq!(s.next_rate(), Some(500.0));
        s.record(500.0, false);
        s.record(500.0, false);
        s.record(480.0, true);
        assert_eq!(s.next_rate(), None);
    }

    #[test]
    fn the_step_budget_bounds_the_search() {
        // A resolution no search reaches: the budget ends it.
        for max_steps in [1, 5, 14] {
            let (run, offered) =
                simulate_with(1000.0, rules(1e-9, max_steps, true), |rate, _, _| {
                    rate <= 800.0
                });
            assert_eq!(offered.len(), max_steps);
            if let Some(pass) = run.bracket().pass {
                assert!(pass <= 800.0);
            }
        }
        // A server that flips every step, whatever the rate, still ends in budget.
        let (_, offered) = simulate_with(1000.0, DEFAULT_RULES, |_, _, i| i % 2 == 0);
        assert!(offered.len() <= DEFAULT_RULES.max_steps);
    }

    #[test]
    fn lowest_step_failing_tries_once_lower() {
        assert_eq!(simulate(1000.0, 10.0), vec![250.0, 250.0, 100.0, 100.0]);
        let (run, _) = simulate_with(1000.0, DEFAULT_RULES, |rate, _, _| rate <= 150.0);
        let b = run.bracket();
        assert!(b.pass.expect("pass") <= 150.0 && b.fail.expect("fail") > 150.0);
        assert!(b.width().expect("width") < 0.05);
    }

    #[test]
    fn levels_and_judgements() {
        let l = levels([
            (1.0, true),
            (2.0, false),
            (2.0, true),
            (1.0, false),
            (2.0, true),
        ]);
        assert_eq!(
            l,
            vec![
                Level {
                    rate: 1.0,
                    passes: 1,
                    fails: 1
                },
                Level {
                    rate: 2.0,
                    passes: 2,
                    fails: 1
                }
            ]
        );
        assert_eq!(l[0].judged(), Judged::Open);
        assert_eq!(l[1].judged(), Judged::Pass);
        assert_eq!(l[1].outvoted(), 1);
        let fail = Level {
            rate: 3.0,
            passes: 1,
            fails: 2,
        };
        assert_eq!(fail.judged(), Judged::Fail);
        assert_eq!(fail.tries(), 3);
        // A pass above a confirmed failure does not count.
        let b = Bracket::of(&[
            Level {
                rate: 5.0,
                passes: 1,
                fails: 0,
            },
            fail,
            Level {
                rate: 2.0,
                passes: 1,
                fails: 0,
            },
        ]);
        assert_eq!(
            b,
            Bracket {
                pass: Some(2.0),
                fail: Some(3.0)
            }
        );
    }

    #[test]
    fn scenarios_round_trip() {
        for s in Scenario::ALL {
            assert_eq!(Scenario::parse(s.name()), Some(s));
        }
        assert_eq!(Scenario::parse("nope"), None);
        assert_eq!(Scenario::Upload1m.body_len(), 1 << 20);
    }
}
