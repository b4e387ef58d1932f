//! Executor selection (SPEC §4): tiers, the algorithms, runtime preference, the
//! per-worker optimistic runtime overlay and the per-worker in-flight counts that
//! `least-request` and `p2c` read. Pure: no I/O, one picker per worker.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::config::Algorithm;
use crate::snapshot::Snapshot;

/// How the client asked to address executors (`x-opr-addressing-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// Default: the tiers of SPEC §4 with the configured algorithm.
    AnycastEfficient,
    /// Random among online executors, tiers ignored.
    AnycastFast,
    /// Every online executor.
    Broadcast,
}

impl Addressing {
    /// Unknown values fall back to the default, as the original does.
    pub fn from_header(value: Option<&[u8]>) -> Addressing {
        match value {
            Some(b"anycast-fast") => Addressing::AnycastFast,
            Some(b"broadcast") => Addressing::Broadcast,
            _ => Addressing::AnycastEfficient,
        }
    }
}

/// The executor chosen for a request, with the tier and reason (for the access log and
/// `x-opr-route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub executor: usize,
    /// SPEC §4 tier 1–3; 0 for `anycast-fast` (no tiers).
    pub tier: u8,
    pub reason: &'static str,
}

/// One worker's selection state: round-robin counter, random generator, requests in
/// flight per executor, the optimistic runtime overlay and a reusable candidate buffer.
/// `!Sync` by design.
pub struct Picker {
    algorithm: Algorithm,
    next: Cell<usize>,
    /// Requests this worker has assigned to each executor and not finished (`Assigned`).
    /// Per worker: no shared counter on the request path, at the price of each worker
    /// seeing only its own load.
    in_flight: Box<[Cell<u32>]>,
    rng: Cell<u64>,
    /// runtime id → executors it was just sent to; valid for `overlay_generation` only.
    overlay: RefCell<HashMap<Box<str>, Vec<usize>>>,
    overlay_generation: Cell<u64>,
    candidates: RefCell<Vec<usize>>,
}

const WARM_USAGE: u8 = 80;

impl Picker {
    pub fn new(algorithm: Algorithm, executors: usize, seed: u64) -> Picker {
        Picker {
            algorithm,
            next: Cell::new(0),
            in_flight: (0..executors).map(|_| Cell::new(0)).collect(),
            // xorshift must not start at 0.
            rng: Cell::new(seed | 1),
            overlay: RefCell::new(HashMap::new()),
            overlay_generation: Cell::new(0),
            candidates: RefCell::new(Vec::new()),
        }
    }

    /// Choose one executor for an anycast request (see `select`).
    pub fn pick(
        &self,
        snapshot: &Snapshot,
        addressing: Addressing,
        runtime_id: Option<&str>,
        unavailable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        self.select(snapshot, addressing, runtime_id, unavailable)
            .map(|c| c.executor)
    }

    /// Choose one executor for an anycast request, and say why. `unavailable(i)`
    /// excludes executors a worker flagged offline or that this request already failed on.
    pub fn select(
        &self,
        snapshot: &Snapshot,
        addressing: Addressing,
        runtime_id: Option<&str>,
        unavailable: impl Fn(usize) -> bool,
    ) -> Option<Choice> {
        let choice = |executor, tier, reason| Choice {
            executor,
            tier,
            reason,
        };
        self.sync_overlay(snapshot.generation);
        let mut candidates = self.candidates.borrow_mut();
        let online = |i: usize| snapshot.executors[i].online && !unavailable(i);
        match addressing {
            Addressing::AnycastFast => {
                fill(&mut candidates, snapshot, online);
                self.random(&candidates)
                    .map(|i| choice(i, 0, "anycast-fast"))
            }
            Addressing::AnycastEfficient | Addressing::Broadcast => {
                let low_usage =
                    |i: usize| online(i) && snapshot.executors[i].effective_usage() < WARM_USAGE;
                // Tier 1: the runtime is warm on a low-usage executor.
                if let Some(runtime) = runtime_id {
                    // Reported warm (snapshot index) or just sent there (overlay); in
                    // configuration order, as `first`/`last` need.
                    candidates.clear();
                    let reported = snapshot.warm_on(runtime);
                    candidates.extend(reported.iter().copied().filter(|&i| low_usage(i)));
                    if let Some(list) = self.overlay.borrow().get(runtime) {
                        let before = candidates.len();
                        candidates.extend(list.iter().copied().filter(|&i| low_usage(i)));
                        if candidates.len() > before {
                            candidates.sort_unstable();
                            candidates.dedup();
                        }
                    }
                    if let Some(i) = self.choose(&candidates) {
                        return Some(choice(i, 1, "runtime warm"));
                    }
                }
                // Tier 2: low usage (tier 1 when no runtime was asked for). Tier 3: online.
                fill(&mut candidates, snapshot, low_usage);
                if let Some(i) = self.choose(&candidates) {
                    return Some(match runtime_id {
                        Some(_) => choice(i, 2, "usage < 80, runtime not warm"),
                        None => choice(i, 1, "usage < 80"),
                    });
                }
                fill(&mut candidates, snapshot, online);
                self.choose(&candidates)
                    .map(|i| choice(i, 3, "fallback: all busy"))
            }
        }
    }

    /// Every online executor, in configuration order (for broadcast).
    pub fn all_online(
        &self,
        snapshot: &Snapshot,
        unavailable: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..snapshot.executors.len())
            .filter(|&i| snapshot.executors[i].online && !unavailable(i))
            .collect()
    }

    /// The original's optimistic update: after sending a runtime's request to an
    /// executor, treat the runtime as warm there until the next snapshot.
    pub fn mark_warm(&self, snapshot: &Snapshot, executor: usize, runtime_id: &str) {
        self.sync_overlay(snapshot.generation);
        let mut overlay = self.overlay.borrow_mut();
        match overlay.get_mut(runtime_id) {
            Some(list) => {
                if !list.contains(&executor) {
                    list.push(executor);
                }
            }
            None => {
                overlay.insert(runtime_id.into(), vec![executor]);
            }
        }
    }

    /// Count a request as in flight to `executor` until the returned guard drops (every
    /// way an exchange can end, the task being dropped included, so a count cannot leak).
    pub fn assign(&self, executor: usize) -> Assigned<'_> {
        if let Some(c) = self.in_flight.get(executor) {
            c.set(c.get().saturating_add(1));
        }
        Assigned {
            picker: self,
            executor,
        }
    }

    /// Requests this worker has in flight to `executor`.
    pub fn in_flight(&self, executor: usize) -> u32 {
        self.in_flight.get(executor).map_or(0, Cell::get)
    }

    fn sync_overlay(&self, generation: u64) {
        if self.overlay_generation.get() != generation {
            self.overlay.borrow_mut().clear();
            self.overlay_generation.set(generation);
        }
    }

    fn choose(&self, candidates: &[usize]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        match self.algorithm {
            Algorithm::First => candidates.first().copied(),
            Algorithm::Last => candidates.last().copied(),
            Algorithm::Random => self.random(candidates),
            Algorithm::RoundRobin => {
                let n = self.next.get();
                self.next.set(n.wrapping_add(1));
                Some(candidates[n % candidates.len()])
            }
            Algorithm::LeastRequest => {
                // The scan starts where round-robin would, so ties (an idle worker: all
                // zero) still spread instead of piling on the first candidate.
                let n = self.next.get();
                self.next.set(n.wrapping_add(1));
                let len = candidates.len();
                let at = |k: usize| candidates[(n.wrapping_add(k)) % len];
                let mut best = at(0);
                for k in 1..len {
                    let i = at(k);
                    if self.in_flight(i) < self.in_flight(best) {
                        best = i;
                    }
                }
                Some(best)
            }
            Algorithm::P2c => {
                let a = self.random(candidates)?;
                if candidates.len() == 1 {
                    return Some(a);
                }
                // A second draw distinct from the first: pick among the others.
                let k = candidates.iter().position(|&i| i == a).unwrap_or(0);
                let r = self.random_below(candidates.len() - 1);
                let b = candidates[if r >= k { r + 1 } else { r }];
                Some(if self.in_flight(b) < self.in_flight(a) {
                    b
                } else {
                    a
                })
            }
        }
    }

    fn random(&self, candidates: &[usize]) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.random_below(candidates.len())])
    }

    /// Uniform in `0..len` (`len` > 0).
    fn random_below(&self, len: usize) -> usize {
        // xorshift64*: fast, good enough to spread load, no shared state.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Lemire's multiply-shift maps r onto 0..len without modulo bias worth noting.
        ((u128::from(r) * len as u128) >> 64) as usize
    }
}

/// One request counted in flight to an executor (`Picker::assign`); the count drops
/// with the guard.
pub struct Assigned<'a> {
    picker: &'a Picker,
    executor: usize,
}

impl Assigned<'_> {
    pub fn executor(&self) -> usize {
        self.executor
    }
}

impl Drop for Assigned<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.picker.in_flight.get(self.executor) {
            c.set(c.get().saturating_sub(1));
        }
    }
}

fn fill(candidates: &mut Vec<usize>, snapshot: &Snapshot, keep: impl Fn(usize) -> bool) {
    candidates.clear();
    candidates.extend((0..snapshot.executors.len()).filter(|&i| keep(i)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ExecutorStatus, RuntimeState};

    fn executor(online: bool, usage: Option<u8>, runtimes: &[(&str, &str, u8)]) -> ExecutorStatus {
        ExecutorStatus {
            hostname: "x:80".into(),
            online,
            state_status: Some("pass".into()),
            usage,
            runtimes: runtimes
                .iter()
                .map(|(id, status, usage)| {
                    (
                        id.to_string(),
                        RuntimeState {
                            status: status.to_string(),
                            usage: *usage,
                        },
                    )
                })
                .collect(),
            addrs: vec![],
            last_check: None,
            last_error: None,
            ..ExecutorStatus::default()
        }
    }

    fn snap(executors: Vec<ExecutorStatus>) -> Snapshot {
        Snapshot::new(1, executors)
    }

    fn none(_: usize) -> bool {
        false
    }

    fn pick(p: &Picker, s: &Snapshot, runtime: Option<&str>) -> Option<usize> {
        p.pick(s, Addressing::AnycastEfficient, runtime, none)
    }

    #[test]
    fn first_and_last_pick_ends_of_the_tier() {
        let s = snap(vec![
            executor(true, Some(10), &[]),
            executor(true, Some(90), &[]),
            executor(true, Some(20), &[]),
        ]);
        assert_eq!(
            pick(&Picker::new(Algorithm::First, 4, 1), &s, None),
            Some(0)
        );
        // Executor 1 is over 80 % so tier 2 is {0, 2}.
        assert_eq!(pick(&Picker::new(Algorithm::Last, 4, 1), &s, None), Some(2));
    }

    #[test]
    fn round_robin_walks_and_wraps() {
        let s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::RoundRobin, 4, 1);
        let got: Vec<_> = (0..7).map(|_| pick(&p, &s, None).unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn least_request_takes_the_least_loaded_and_breaks_ties_in_turn() {
        let s = snap((0..3).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::LeastRequest, 3, 1);
        // Idle: ties walk the candidates like round-robin.
        let got: Vec<_> = (0..4).map(|_| pick(&p, &s, None).unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2, 0]);
        // Executor 0 holds two requests, 1 holds one: 2 wins whatever the turn.
        let _a = [p.assign(0), p.assign(0), p.assign(1)];
        for _ in 0..5 {
            assert_eq!(pick(&p, &s, None), Some(2));
        }
        let held = p.assign(2);
        let _b = p.assign(2);
        assert_eq!(pick(&p, &s, None), Some(1));
        drop(held);
        assert_eq!(p.in_flight(2), 1);
        // 1 and 2 tie at one each: both get turns, 0 none.
        let got: Vec<_> = (0..6).map(|_| pick(&p, &s, None).unwrap()).collect();
        assert!(
            got.contains(&1) && got.contains(&2) && !got.contains(&0),
            "{got:?}"
        );
    }

    #[test]
    fn in_flight_counts_return_to_zero_when_guards_drop() {
        let p = Picker::new(Algorithm::LeastRequest, 2, 1);
        {
            let _a = p.assign(0);
            let _b = p.assign(0);
            let _c = p.assign(1);
            assert_eq!((p.in_flight(0), p.in_flight(1)), (2, 1));
        }
        assert_eq!((p.in_flight(0), p.in_flight(1)), (0, 0));
        // Out of range (never happens: one slot per executor) is ignored.
        drop(p.assign(9));
        assert_eq!(p.in_flight(9), 0);
    }

    #[test]
    fn p2c_never_takes_the_more_loaded_of_two() {
        let s = snap((0..2).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::P2c, 2, 9);
        let _held = p.assign(0);
        // With two candidates both are always sampled: the idle one wins.
        for _ in 0..50 {
            assert_eq!(pick(&p, &s, None), Some(1));
        }
        // Among four with one loaded, every pair holding it has a lighter partner: it is
        // never chosen, and the others share evenly.
        let s = snap((0..4).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::P2c, 4, 9);
        let _held = p.assign(3);
        let mut counts = [0u32; 4];
        for _ in 0..3000 {
            counts[pick(&p, &s, None).unwrap()] += 1;
        }
        assert_eq!(counts[3], 0, "{counts:?}");
        for c in &counts[..3] {
            assert!((800..1200).contains(c), "{counts:?}");
        }
        // One candidate: it is taken.
        let one = snap(vec![executor(true, Some(0), &[])]);
        assert_eq!(
            pick(&Picker::new(Algorithm::P2c, 1, 3), &one, None),
            Some(0)
        );
    }

    #[test]
    fn random_covers_all_candidates_roughly_evenly() {
        let s = snap((0..4).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::Random, 4, 42);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[pick(&p, &s, None).unwrap()] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn tiers_fall_back_in_order() {
        // Nothing under 80 %: tier 3 (online) is used.
        let s = snap(vec![
            executor(false, Some(0), &[]),
            executor(true, Some(95), &[]),
            executor(true, None, &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 1);
        assert_eq!(pick(&p, &s, None), Some(1));
        // Unknown usage counts as 100 so it is not tier 2.
        let s = snap(vec![
            executor(true, None, &[]),
            executor(true, Some(79), &[]),
        ]);
        assert_eq!(pick(&p, &s, None), Some(1));
        // Nobody online: no executor.
        let s = snap(vec![executor(false, Some(0), &[])]);
        assert_eq!(pick(&p, &s, None), None);
    }

    #[test]
    fn runtime_preference_needs_pass_and_low_usage() {
        let s = snap(vec![
            executor(true, Some(0), &[("rt", "pass", 90)]), // runtime busy
            executor(true, Some(0), &[("rt", "fail", 0)]),  // runtime failing
            executor(true, Some(85), &[("rt", "pass", 0)]), // executor busy
            executor(true, Some(50), &[("rt", "pass", 10)]), // warm
        ]);
        let p = Picker::new(Algorithm::First, 4, 1);
        assert_eq!(pick(&p, &s, Some("rt")), Some(3));
        // Unknown runtime: tier 2.
        assert_eq!(pick(&p, &s, Some("other")), Some(0));
    }

    #[test]
    fn optimistic_overlay_lasts_until_next_snapshot() {
        let mut s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::Last, 4, 1);
        assert_eq!(pick(&p, &s, Some("rt")), Some(1));
        p.mark_warm(&s, 0, "rt");
        assert_eq!(pick(&p, &s, Some("rt")), Some(0));
        s.generation = 2;
        assert_eq!(pick(&p, &s, Some("rt")), Some(1));
    }

    #[test]
    fn reported_and_overlay_warm_merge_in_configuration_order() {
        let s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
            executor(true, Some(90), &[]), // busy: overlay must not lift it into tier 1
            executor(true, Some(0), &[("rt", "pass", 0)]),
        ]);
        let first = Picker::new(Algorithm::First, 4, 1);
        let last = Picker::new(Algorithm::Last, 4, 1);
        for p in [&first, &last] {
            p.mark_warm(&s, 3, "rt"); // already reported: no duplicate
            p.mark_warm(&s, 1, "rt");
            p.mark_warm(&s, 2, "rt");
        }
        assert_eq!(pick(&first, &s, Some("rt")), Some(1));
        assert_eq!(pick(&last, &s, Some("rt")), Some(3));
        let rr = Picker::new(Algorithm::RoundRobin, 4, 1);
        rr.mark_warm(&s, 3, "rt");
        rr.mark_warm(&s, 1, "rt");
        let got: Vec<_> = (0..4).map(|_| pick(&rr, &s, Some("rt")).unwrap()).collect();
        assert_eq!(got, vec![1, 3, 1, 3], "each warm executor once per turn");
        assert_eq!(s.warm_on("rt"), &[3]);
    }

    #[test]
    fn unavailable_executors_are_skipped() {
        let s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 1);
        assert_eq!(
            p.pick(&s, Addressing::AnycastEfficient, None, |i| i == 0),
            Some(1)
        );
        assert_eq!(
            p.pick(&s, Addressing::AnycastEfficient, None, |_| true),
            None
        );
        assert_eq!(p.all_online(&s, |i| i == 1), vec![0]);
    }

    #[test]
    fn anycast_fast_ignores_usage_tiers() {
        let s = snap(vec![
            executor(true, Some(99), &[]),
            executor(false, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 7);
        for _ in 0..20 {
            assert_eq!(p.pick(&s, Addressing::AnycastFast, None, none), Some(0));
        }
    }

    #[test]
    fn addressing_header_values() {
        assert_eq!(Addressing::from_header(None), Addressing::AnycastEfficient);
        assert_eq!(
            Addressing::from_header(Some(b"anycast-fast")),
            Addressing::AnycastFast
        );
        assert_eq!(
            Addressing::from_header(Some(b"broadcast")),
            Addressing::Broadcast
        );
        assert_eq!(
            Addressing::from_header(Some(b"weird")),
            Addressing::AnycastEfficient
        );
    }
}
