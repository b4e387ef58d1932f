//! The capacity plan: scenarios, what one step measured, the SLO verdict, and the search
//! that steps the offered (open-loop) rate up from a closed-loop probe until p99 breaks.

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
    /// The highest offered rate that passed.
    pub fn sustainable(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.verdict == Verdict::Pass)
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }
}

/// Offered rates as fractions of the closed-loop probe's throughput, tried in order.
const FRACTIONS: [f64; 7] = [0.25, 0.5, 0.7, 0.85, 1.0, 1.15, 1.3];
/// Below this relative gap between the last pass and the first failure, no bisection step.
const BISECT_GAP: f64 = 0.06;

/// Chooses the next offered rate from what happened so far.
#[derive(Clone, Debug)]
pub struct Stepper {
    ceiling: f64,
    next: usize,
    best_pass: Option<f64>,
    first_fail: Option<f64>,
    bisected: bool,
    retried_low: bool,
}

impl Stepper {
    /// `ceiling`: closed-loop throughput of the probe.
    pub fn new(ceiling: f64) -> Stepper {
        Stepper {
            ceiling: ceiling.max(1.0),
            next: 0,
            best_pass: None,
            first_fail: None,
            bisected: false,
            retried_low: false,
        }
    }

    /// The next rate to offer given how the previous one went (`None` before the first),
    /// or None when the search is over.
    pub fn next(&mut self, last: Option<(f64, bool)>) -> Option<f64> {
        if let Some((rate, passed)) = last {
            if passed {
                self.best_pass = Some(self.best_pass.map_or(rate, |b: f64| b.max(rate)));
            } else if self.first_fail.is_none_or(|f| rate < f) {
                self.first_fail = Some(rate);
            }
        }
        match (self.best_pass, self.first_fail) {
            // Not failed yet: keep climbing.
            (_, None) => {
                let rate = FRACTIONS.get(self.next).map(|f| f * self.ceiling);
                self.next += 1;
                rate
            }
            // Even the lowest step failed: one try far lower, then give up.
            (None, Some(fail)) => {
                if self.retried_low {
                    return None;
                }
                self.retried_low = true;
                Some((fail * 0.4).max(1.0))
            }
            // Bracketed: one bisection step if the bracket is wide.
            (Some(pass), Some(fail)) => {
                if self.bisected || fail <= pass || (fail - pass) / fail < BISECT_GAP {
                    return None;
                }
                self.bisected = true;
                Some((pass + fail) / 2.0)
            }
        }
    }
}

/// Runs a scenario: a closed-loop probe, then open-loop steps chosen by [`Stepper`].
/// `run` executes one load and returns its summarised step.
pub fn search<E>(
    scenario: Scenario,
    connections: usize,
    mut run: impl FnMut(Load) -> Result<Step, E>,
) -> Result<ScenarioRun, E> {
    let probe = run(Load::Closed)?;
    let mut stepper = Stepper::new(probe.achieved);
    let mut steps: Vec<Step> = Vec::new();
    let mut last = None;
    while let Some(rate) = stepper.next(last) {
        let step = run(Load::Open { rate })?;
        last = Some((rate, step.verdict == Verdict::Pass));
        steps.push(step);
    }
    Ok(ScenarioRun {
        scenario,
        connections,
        probe,
        steps,
    })
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

    /// Runs the search against a server that passes below `limit` req/s.
    fn simulate(probe: f64, limit: f64) -> Vec<f64> {
        let mut offered = Vec::new();
        let run = search(Scenario::Ping, 8, |load| {
            Ok::<_, ()>(match load {
                Load::Closed => {
                    let mut s = fake_step(None, true);
                    s.achieved = probe;
                    s
                }
                Load::Open { rate } => {
                    offered.push(rate);
                    fake_step(Some(rate), rate <= limit)
                }
            })
        })
        .expect("fake runs never fail");
        assert_eq!(run.steps.len(), offered.len());
        if let Some(best) = run.sustainable() {
            assert!(best.achieved <= limit);
        }
        offered
    }

    #[test]
    fn climbs_then_bisects_once() {
        let r = simulate(1000.0, 800.0);
        assert_eq!(r, vec![250.0, 500.0, 700.0, 850.0, 775.0]);
    }

    #[test]
    fn passes_to_the_top_or_narrow_brackets_stop() {
        let r = simulate(1000.0, 1_100.0);
        assert_eq!(r, vec![250.0, 500.0, 700.0, 850.0, 1000.0, 1150.0, 1075.0]);
        // Everything passes: stops after the last fraction.
        assert_eq!(simulate(1000.0, 1e9).len(), FRACTIONS.len());
        // A bracket narrower than BISECT_GAP is not split.
        let mut s = Stepper::new(1000.0);
        assert_eq!(s.next(None), Some(250.0));
        assert_eq!(s.next(Some((1000.0, true))), Some(500.0));
        assert_eq!(s.next(Some((1040.0, false))), None);
    }

    #[test]
    fn lowest_step_failing_tries_once_lower() {
        assert_eq!(simulate(1000.0, 10.0), vec![250.0, 100.0]);
        assert_eq!(simulate(1000.0, 150.0), vec![250.0, 100.0, 175.0]);
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
