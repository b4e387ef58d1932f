//! Executor selection (docs/behaviour.md §4): tiers, the algorithms (runtime
//! affinity included), runtime preference, the bounded per-worker optimistic runtime
//! overlay and the per-worker in-flight counts that `least-request`, `p2c` and
//! `affinity` read. Pure: no I/O, one picker per worker.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::config::{Algorithm, ExecutorAddr, LOAD_FACTOR_SCALE};
use crate::snapshot::{ExecutorId, Snapshot};

/// Longest `x-opr-runtime-id` the optimistic overlay remembers, in bytes. Appwrite's
/// runtime ids join a project and a deployment id of at most 36 characters each
/// (`<project>-<deployment>`, `-build` for builds: under 80 bytes): 256 leaves room for
/// other schemes while keeping one mark small. A longer id is still routed
/// (reported-warm tier, affinity), just not marked.
pub(crate) const MAX_MARKED_ID: usize = 256;
/// Runtimes one worker's overlay remembers; past it the oldest mark goes. A health round
/// clears them all anyway; this bounds a round (`OPR_PROXY_HEALTHCHECK_INTERVAL` may be a
/// day) against clients sending endless distinct ids.
pub(crate) const MAX_MARKS: usize = 4096;

/// How the client asked to address executors (`x-opr-addressing-method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Addressing {
    /// Default: the tiers of docs/behaviour.md §4 with the configured algorithm.
    AnycastEfficient,
    /// Random among online executors, tiers ignored.
    AnycastFast,
    /// Every online executor.
    Broadcast,
}

impl Addressing {
    /// Unknown values fall back to the default, as the original does.
    pub(crate) fn from_header(value: Option<&[u8]>) -> Addressing {
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
    pub executor: ExecutorId,
    /// Tier 1–3; 0 for `anycast-fast` (no tiers).
    pub tier: u8,
    pub reason: &'static str,
    /// `affinity`: the runtime's owner in the tier, passed over because it was at its
    /// bounded load (`x-opr-route` says "spilled from <host>: load").
    pub spilled_from: Option<ExecutorId>,
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
    /// At most `MAX_MARKS` ids of at most `MAX_MARKED_ID` bytes; `marked` holds them
    /// oldest first (the same `Rc`, so each id is stored once).
    overlay: RefCell<HashMap<Rc<str>, Vec<ExecutorId>>>,
    marked: RefCell<VecDeque<Rc<str>>>,
    overlay_generation: Cell<u64>,
    candidates: RefCell<Vec<ExecutorId>>,
    /// `affinity`: each executor's rendezvous key (`executor_key`), by index.
    keys: Box<[u64]>,
    /// `affinity`: `OPR_PROXY_AFFINITY_LOAD_FACTOR` in thousandths.
    load_factor: u32,
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
            marked: RefCell::new(VecDeque::new()),
            overlay_generation: Cell::new(0),
            candidates: RefCell::new(Vec::new()),
            // Stand-in names until `with_affinity` gives the configured ones (tests).
            keys: (0..executors)
                .map(|i| executor_key(&format!("executor-{i}:80")))
                .collect(),
            load_factor: 1250,
        }
    }

    /// The executors' `host:port` as configured (in `OPR_PROXY_EXECUTORS` order) and
    /// `OPR_PROXY_AFFINITY_LOAD_FACTOR` in thousandths, for `affinity`.
    pub(crate) fn with_affinity(mut self, executors: &[ExecutorAddr], load_factor: u32) -> Picker {
        self.keys = executors
            .iter()
            .map(|e| executor_key(&e.hostname()))
            .collect();
        self.load_factor = load_factor;
        self
    }

    /// Choose one executor for an anycast request, and say why. `unavailable(i)`
    /// excludes executors a worker flagged offline or that this request already failed on.
    pub fn select(
        &self,
        snapshot: &Snapshot,
        addressing: Addressing,
        runtime_id: Option<&str>,
        unavailable: impl Fn(ExecutorId) -> bool,
    ) -> Option<Choice> {
        // `affinity` with a runtime id: its order decides inside the tier.
        let affinity = match self.algorithm {
            Algorithm::Affinity => runtime_id.map(runtime_key),
            _ => None,
        };
        let choice = |(executor, spilled_from), tier, reason| Choice {
            executor,
            tier,
            reason: match spilled_from {
                Some(_) => "spilled",
                None if affinity.is_some() => "affinity owner",
                None => reason,
            },
            spilled_from,
        };
        self.sync_overlay(snapshot.generation);
        let mut candidates = self.candidates.borrow_mut();
        let online = |i: ExecutorId| snapshot.executor(i).online && !unavailable(i);
        match addressing {
            Addressing::AnycastFast => {
                fill(&mut candidates, snapshot, online);
                self.random(&candidates).map(|i| Choice {
                    executor: i,
                    tier: 0,
                    reason: "anycast-fast",
                    spilled_from: None,
                })
            }
            Addressing::AnycastEfficient | Addressing::Broadcast => {
                let low_usage = |i: ExecutorId| {
                    online(i) && snapshot.executor(i).effective_usage() < WARM_USAGE
                };
                // Tier 1: the runtime is warm on a low-usage executor.
                if let Some(runtime) = runtime_id {
                    // Reported warm (snapshot index) or just sent there (overlay); in
                    // configuration order, as `first`/`last` need.
                    candidates.clear();
                    let reported = snapshot.warm_on(runtime);
                    candidates.extend(reported.iter().copied().filter(|&i| low_usage(i)));
                    if let Some(list) = self.overlay.borrow().get(runtime) {
                        candidates.extend(list.iter().copied().filter(|&i| low_usage(i)));
                        candidates.sort_unstable();
                        candidates.dedup();
                    }
                    if let Some(i) = self.choose(&candidates, affinity) {
                        return Some(choice(i, 1, "runtime warm"));
                    }
                }
                // Tier 2: low usage (tier 1 when no runtime was asked for). Tier 3: online.
                fill(&mut candidates, snapshot, low_usage);
                if let Some(i) = self.choose(&candidates, affinity) {
                    return Some(match runtime_id {
                        Some(_) => choice(i, 2, "usage < 80, runtime not warm"),
                        None => choice(i, 1, "usage < 80"),
                    });
                }
                fill(&mut candidates, snapshot, online);
                self.choose(&candidates, affinity)
                    .map(|i| choice(i, 3, "fallback: all busy"))
            }
        }
    }

    /// Every online executor, in configuration order (for broadcast).
    pub(crate) fn all_online(
        &self,
        snapshot: &Snapshot,
        unavailable: impl Fn(ExecutorId) -> bool,
    ) -> Vec<ExecutorId> {
        snapshot
            .ids()
            .filter(|&i| snapshot.executor(i).online && !unavailable(i))
            .collect()
    }

    /// The original's optimistic update: after sending a runtime's request to an
    /// executor, treat the runtime as warm there until the next snapshot. Bounded: ids
    /// over `MAX_MARKED_ID` bytes are not marked, and past `MAX_MARKS` runtimes the
    /// oldest mark goes (worst case in docs/deploy.md "Operating it").
    pub(crate) fn mark_warm(&self, snapshot: &Snapshot, executor: ExecutorId, runtime_id: &str) {
        self.sync_overlay(snapshot.generation);
        if runtime_id.len() > MAX_MARKED_ID {
            return;
        }
        let mut overlay = self.overlay.borrow_mut();
        if let Some(list) = overlay.get_mut(runtime_id) {
            if !list.contains(&executor) {
                list.push(executor);
            }
            return;
        }
        let mut marked = self.marked.borrow_mut();
        if marked.len() == MAX_MARKS {
            if let Some(oldest) = marked.pop_front() {
                overlay.remove(&oldest);
            }
        }
        let id: Rc<str> = runtime_id.into();
        marked.push_back(id.clone());
        overlay.insert(id, vec![executor]);
    }

    /// Runtimes the overlay remembers now (the tests of its bound).
    #[cfg(test)]
    pub(crate) fn marks(&self) -> usize {
        self.overlay.borrow().len()
    }

    /// Count a request as in flight to `executor` until the returned guard drops (every
    /// way an exchange can end, the task being dropped included, so a count cannot leak).
    pub(crate) fn assign(&self, executor: ExecutorId) -> Assigned<'_> {
        if let Some(c) = self.in_flight.get(executor.index()) {
            c.set(c.get().saturating_add(1));
        }
        Assigned {
            picker: self,
            executor,
        }
    }

    /// Requests this worker has in flight to `executor`.
    pub(crate) fn in_flight(&self, executor: ExecutorId) -> u32 {
        self.in_flight.get(executor.index()).map_or(0, Cell::get)
    }

    fn sync_overlay(&self, generation: u64) {
        if self.overlay_generation.get() != generation {
            self.overlay.borrow_mut().clear();
            self.marked.borrow_mut().clear();
            self.overlay_generation.set(generation);
        }
    }

    /// One of `candidates` (not empty), and for `affinity` the owner it spilled from.
    /// `affinity`: the runtime's key when the request has a runtime id.
    fn choose(
        &self,
        candidates: &[ExecutorId],
        affinity: Option<u64>,
    ) -> Option<(ExecutorId, Option<ExecutorId>)> {
        if let Some(runtime) = affinity {
            return self.bounded_owner(candidates, runtime);
        }
        self.choose_by_algorithm(candidates).map(|i| (i, None))
    }

    /// Rendezvous (highest random weight) hashing with bounded loads (Mirrokni, Thorup
    /// and Zadimoghaddam 2017): the runtime's order of executors is by descending
    /// `weight(runtime, executor key)`, the same in every worker and replica that has
    /// the same executor list; the first candidate in that order under the bound takes
    /// the request, which is the heaviest candidate under the bound (one pass, no sort,
    /// no heap). Returns it, and the owner (the heaviest candidate) when it was passed
    /// over.
    fn bounded_owner(
        &self,
        candidates: &[ExecutorId],
        runtime: u64,
    ) -> Option<(ExecutorId, Option<ExecutorId>)> {
        // The new request counts: this worker's requests in flight plus it.
        let total = self
            .in_flight
            .iter()
            .map(|c| u64::from(c.get()))
            .sum::<u64>()
            + 1;
        let bound = load_bound(self.load_factor, total, candidates.len());
        let weight =
            |i: ExecutorId| weight(runtime, self.keys.get(i.index()).copied().unwrap_or(0));
        // Equal weights (the same host listed twice): the first in configuration order.
        let heavier = |w: u64, than: Option<(u64, ExecutorId)>| than.is_none_or(|(t, _)| w > t);
        let mut owner = None;
        let mut taker = None;
        for &i in candidates {
            let w = weight(i);
            if heavier(w, owner) {
                owner = Some((w, i));
            }
            // Room for the new request: with it, `i` stays within the bound.
            if u64::from(self.in_flight(i)) < bound && heavier(w, taker) {
                taker = Some((w, i));
            }
        }
        // The bounds of the candidates add up to more than this worker has in flight,
        // so one of them always has room; the owner is the fallback in name only.
        let (_, owner) = owner?;
        let taker = taker.map_or(owner, |(_, i)| i);
        Some((taker, (taker != owner).then_some(owner)))
    }

    fn choose_by_algorithm(&self, candidates: &[ExecutorId]) -> Option<ExecutorId> {
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
            // `affinity` without a runtime id: power of two choices.
            Algorithm::P2c | Algorithm::Affinity => {
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

    fn random(&self, candidates: &[ExecutorId]) -> Option<ExecutorId> {
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[self.random_below(candidates.len())])
    }

    /// Uniform in `0..len` (`len` > 0).
    fn random_below(&self, len: usize) -> usize {
        let r = self.next_random();
        // Lemire's multiply-shift maps r onto 0..len without modulo bias worth noting.
        ((u128::from(r) * len as u128) >> 64) as usize
    }

    /// xorshift64* (Vigna 2016): fast, good enough to spread load, no shared state.
    fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One request counted in flight to an executor (`Picker::assign`); the count drops
/// with the guard.
pub(crate) struct Assigned<'a> {
    picker: &'a Picker,
    executor: ExecutorId,
}

impl Assigned<'_> {
    pub(crate) fn executor(&self) -> ExecutorId {
        self.executor
    }
}

impl Drop for Assigned<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.picker.in_flight.get(self.executor.index()) {
            c.set(c.get().saturating_sub(1));
        }
    }
}

/// Most requests one executor may have in flight from this worker once the new request
/// is placed: `ceil(factor × total / candidates)`, where `total` counts this worker's
/// requests in flight plus the new one and `factor` is in thousandths. An executor with
/// fewer than that many in flight takes the request; one with that many or more is
/// skipped. The bounds of all candidates sum to at least `total`, so one always has room.
pub(crate) fn load_bound(factor: u32, total: u64, candidates: usize) -> u64 {
    let scale = u128::from(LOAD_FACTOR_SCALE) * candidates.max(1) as u128;
    let wanted = u128::from(factor) * u128::from(total);
    wanted.div_ceil(scale).try_into().unwrap_or(u64::MAX)
}

/// FNV-1a (64-bit), the published offset basis and prime: a fixed hash, unlike std's
/// per-process random SipHash keys, so every process computes the same orders.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The SplitMix64 finaliser (Steele, Lea and Flood 2014): full avalanche, so weights of
/// similar ids and hosts are unrelated.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// An executor's rendezvous key, from its normalised `host:port` (`ExecutorAddr::hostname`:
/// `a`, `a:80` and `http://a:80` are one executor; host names compare without case).
pub(crate) fn executor_key(hostname: &str) -> u64 {
    mix(fnv1a(hostname.bytes().map(|b| b.to_ascii_lowercase())))
}

/// A runtime id's rendezvous key.
pub(crate) fn runtime_key(runtime_id: &str) -> u64 {
    fnv1a(runtime_id.bytes())
}

/// The runtime's weight on an executor: its order is by descending weight.
pub(crate) fn weight(runtime: u64, executor: u64) -> u64 {
    mix(runtime ^ executor)
}

fn fill(candidates: &mut Vec<ExecutorId>, snapshot: &Snapshot, keep: impl Fn(ExecutorId) -> bool) {
    candidates.clear();
    candidates.extend(snapshot.ids().filter(|&i| keep(i)));
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

    fn id(i: usize) -> ExecutorId {
        ExecutorId::new(i)
    }

    fn ids(list: &[usize]) -> Vec<ExecutorId> {
        list.iter().copied().map(id).collect()
    }

    fn none<T>(_: T) -> bool {
        false
    }

    fn pick(p: &Picker, s: &Snapshot, runtime: Option<&str>) -> Option<usize> {
        p.select(s, Addressing::AnycastEfficient, runtime, none)
            .map(|c| c.executor.index())
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
        let _a = [p.assign(id(0)), p.assign(id(0)), p.assign(id(1))];
        for _ in 0..5 {
            assert_eq!(pick(&p, &s, None), Some(2));
        }
        let held = p.assign(id(2));
        let _b = p.assign(id(2));
        assert_eq!(pick(&p, &s, None), Some(1));
        drop(held);
        assert_eq!(p.in_flight(id(2)), 1);
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
            let _a = p.assign(id(0));
            let _b = p.assign(id(0));
            let _c = p.assign(id(1));
            assert_eq!((p.in_flight(id(0)), p.in_flight(id(1))), (2, 1));
        }
        assert_eq!((p.in_flight(id(0)), p.in_flight(id(1))), (0, 0));
        // Out of range (never happens: one slot per executor) is ignored.
        drop(p.assign(id(9)));
        assert_eq!(p.in_flight(id(9)), 0);
    }

    #[test]
    fn p2c_never_takes_the_more_loaded_of_two() {
        let s = snap((0..2).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::P2c, 2, 9);
        let _held = p.assign(id(0));
        // With two candidates both are always sampled: the idle one wins.
        for _ in 0..50 {
            assert_eq!(pick(&p, &s, None), Some(1));
        }
        // Among four with one loaded, every pair holding it has a lighter partner: it is
        // never chosen, and the others share evenly.
        let s = snap((0..4).map(|_| executor(true, Some(0), &[])).collect());
        let p = Picker::new(Algorithm::P2c, 4, 9);
        let _held = p.assign(id(3));
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
        p.mark_warm(&s, id(0), "rt");
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
            p.mark_warm(&s, id(3), "rt"); // already reported: no duplicate
            p.mark_warm(&s, id(1), "rt");
            p.mark_warm(&s, id(2), "rt");
        }
        assert_eq!(pick(&first, &s, Some("rt")), Some(1));
        assert_eq!(pick(&last, &s, Some("rt")), Some(3));
        let rr = Picker::new(Algorithm::RoundRobin, 4, 1);
        rr.mark_warm(&s, id(3), "rt");
        rr.mark_warm(&s, id(1), "rt");
        let got: Vec<_> = (0..4).map(|_| pick(&rr, &s, Some("rt")).unwrap()).collect();
        assert_eq!(got, vec![1, 3, 1, 3], "each warm executor once per turn");
        assert_eq!(s.warm_on("rt"), &[id(3)]);
    }

    #[test]
    fn unavailable_executors_are_skipped() {
        let s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 1);
        assert_eq!(pick_unless(&p, &s, |i| i == id(0)), Some(id(1)));
        assert_eq!(pick_unless(&p, &s, |_| true), None);
        assert_eq!(p.all_online(&s, |i| i == id(1)), ids(&[0]));
    }

    fn pick_unless(
        p: &Picker,
        s: &Snapshot,
        out: impl Fn(ExecutorId) -> bool,
    ) -> Option<ExecutorId> {
        p.select(s, Addressing::AnycastEfficient, None, out)
            .map(|c| c.executor)
    }

    #[test]
    fn anycast_fast_ignores_usage_tiers() {
        let s = snap(vec![
            executor(true, Some(99), &[]),
            executor(false, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 7);
        for _ in 0..20 {
            let c = p.select(&s, Addressing::AnycastFast, None, none);
            assert_eq!(c.map(|c| c.executor), Some(id(0)));
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

    #[test]
    fn usage_80_is_busy() {
        // Exactly 80 is not "under 80": tier 2 is the one at 79.
        let s = snap(vec![
            executor(true, Some(80), &[]),
            executor(true, Some(79), &[]),
        ]);
        assert_eq!(
            pick(&Picker::new(Algorithm::First, 2, 1), &s, None),
            Some(1)
        );
        let s = snap(vec![executor(true, Some(80), &[])]);
        let p = Picker::new(Algorithm::First, 1, 1);
        let c = p.select(&s, Addressing::AnycastEfficient, None, none);
        assert_eq!(c.map(|c| (c.executor, c.tier)), Some((id(0), 3)));
    }

    #[test]
    fn all_online_lists_every_online_available_executor_in_order() {
        let s = snap(vec![
            executor(true, None, &[]),
            executor(false, Some(0), &[]),
            executor(true, Some(99), &[]),
            executor(true, Some(0), &[]),
        ]);
        let p = Picker::new(Algorithm::First, 4, 1);
        assert_eq!(p.all_online(&s, none), ids(&[0, 2, 3]));
        assert_eq!(p.all_online(&s, |i| i == id(2)), ids(&[0, 3]));
        assert_eq!(p.all_online(&s, |_| true), Vec::<ExecutorId>::new());
    }

    #[test]
    fn an_assignment_names_its_executor() {
        let p = Picker::new(Algorithm::LeastRequest, 3, 1);
        assert_eq!(p.assign(id(2)).executor(), id(2));
        assert_eq!(p.assign(id(1)).executor(), id(1));
        assert_eq!(p.assign(id(0)).executor(), id(0));
    }

    #[test]
    fn random_numbers_are_xorshift64_star() {
        // Reference values of xorshift64* from state 1 (computed independently).
        let p = Picker::new(Algorithm::Random, 1, 1);
        let got: Vec<u64> = (0..3).map(|_| p.next_random()).collect();
        assert_eq!(
            got,
            [
                0x47e4_ce4b_896c_dd1d,
                0xabcf_a6a8_e079_651d,
                0xb9d1_0d8f_eb73_1f57
            ]
        );
        // Lemire's mapping: the high bits of r × len.
        let p = Picker::new(Algorithm::Random, 1, 1);
        let want = ((0x47e4_ce4b_896c_dd1d_u128 * 10) >> 64) as usize;
        assert_eq!(p.random_below(10), want);
    }

    #[test]
    fn p2c_takes_the_first_draw_on_a_tie() {
        // Idle: every pair ties, so p2c takes its first draw, which is what `random`
        // draws from the same seed.
        let s = snap((0..5).map(|_| executor(true, None, &[])).collect());
        for seed in 0..200 {
            let p2c = Picker::new(Algorithm::P2c, 5, seed);
            let random = Picker::new(Algorithm::Random, 5, seed);
            assert_eq!(pick(&p2c, &s, None), pick(&random, &s, None), "seed {seed}");
        }
    }

    #[test]
    fn overlay_marks_are_bounded_in_length_and_number() {
        let s = snap(vec![
            executor(true, Some(0), &[]),
            executor(true, Some(0), &[]),
        ]);
        // `last` takes executor 1 unless a mark on 0 makes 0 tier 1.
        let p = Picker::new(Algorithm::Last, 2, 1);
        let warm_on_0 = |id: &str| pick(&p, &s, Some(id)) == Some(0);
        let longest = "x".repeat(MAX_MARKED_ID);
        let too_long = "x".repeat(MAX_MARKED_ID + 1);
        p.mark_warm(&s, id(0), &longest);
        p.mark_warm(&s, id(0), &too_long);
        assert!(warm_on_0(&longest));
        assert!(!warm_on_0(&too_long), "over the length bound: not marked");
        assert_eq!(p.marks(), 1);
        // Past MAX_MARKS the oldest go first; marking a known id again adds nothing.
        for n in 0..MAX_MARKS + 10 {
            p.mark_warm(&s, id(0), &format!("rt-{n}"));
            p.mark_warm(&s, id(0), &format!("rt-{n}"));
        }
        assert_eq!(p.marks(), MAX_MARKS);
        assert!(!warm_on_0(&longest), "the oldest was evicted first");
        for n in 0..10 {
            assert!(!warm_on_0(&format!("rt-{n}")), "rt-{n} evicted");
        }
        for n in [10, 11, MAX_MARKS + 9] {
            assert!(warm_on_0(&format!("rt-{n}")), "rt-{n} kept");
        }
        // A new health round forgets every mark, and the bound starts over.
        let mut s2 = s.clone();
        s2.generation = 2;
        p.mark_warm(&s2, id(0), "fresh");
        assert_eq!(p.marks(), 1);
        for n in 0..MAX_MARKS {
            p.mark_warm(&s2, id(0), &format!("again-{n}"));
        }
        assert_eq!(p.marks(), MAX_MARKS);
        assert!(pick(&p, &s2, Some("fresh")) == Some(1), "evicted");
    }

    // ---- affinity ----

    fn addrs(names: &[&str]) -> Vec<ExecutorAddr> {
        names
            .iter()
            .map(|n| {
                let (host, port) = n.split_once(':').unwrap();
                ExecutorAddr {
                    host: host.into(),
                    port: port.parse().unwrap(),
                    name: n.to_string(),
                }
            })
            .collect()
    }

    fn affinity(names: &[&str], factor: u32, seed: u64) -> Picker {
        Picker::new(Algorithm::Affinity, names.len(), seed).with_affinity(&addrs(names), factor)
    }

    /// `n` online executors without usage reports (today's executors).
    fn blind(n: usize) -> Snapshot {
        snap((0..n).map(|_| executor(true, None, &[])).collect())
    }

    fn owner(p: &Picker, s: &Snapshot, runtime: &str, out: impl Fn(usize) -> bool) -> usize {
        p.select(s, Addressing::AnycastEfficient, Some(runtime), |i| {
            out(i.index())
        })
        .unwrap()
        .executor
        .index()
    }

    const FIVE: [&str; 5] = ["a:80", "b:80", "c:80", "d:80", "e:80"];

    #[test]
    fn the_hash_is_fixed_and_documented() {
        // FNV-1a's published test vectors, and SplitMix64's first output from state 0.
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(mix(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        // Pinned: a proxy of another version must order runtimes the same way, or a
        // rolling upgrade moves every runtime.
        let rt = runtime_key("rt-1");
        assert_eq!(weight(rt, executor_key("a:80")), 0xf8e9_3a8d_a8e9_1118);
        assert_eq!(weight(rt, executor_key("B:80")), 0x145f_36d9_f63d_a607);
        assert_eq!(weight(rt, executor_key("c:80")), 0xb7be_d149_4e25_1d73);
        let p = affinity(&FIVE[..3], 1250, 1);
        assert_eq!(owner(&p, &blind(3), "rt-1", none), 0);
    }

    #[test]
    fn affinity_order_is_the_same_in_every_worker_and_replica() {
        let s = blind(5);
        let (one, two) = (affinity(&FIVE, 1250, 1), affinity(&FIVE, 1250, 99));
        // In another replica the executors may be listed in another order: the owner is
        // the same host.
        let reversed: Vec<&str> = FIVE.iter().rev().copied().collect();
        let other = affinity(&reversed, 1250, 7);
        for n in 0..1000 {
            let rt = format!("runtime-{n}");
            let o = owner(&one, &s, &rt, none);
            assert_eq!(owner(&one, &s, &rt, none), o, "stable across calls");
            assert_eq!(owner(&two, &s, &rt, none), o, "stable across pickers");
            assert_eq!(
                4 - owner(&other, &s, &rt, none),
                o,
                "independent of list order"
            );
        }
    }

    #[test]
    fn normalised_host_port_gives_the_same_order() {
        let parsed = |list: &str| {
            let c = crate::config::Config::from_lookup(|name| match name {
                "OPR_PROXY_EXECUTORS" => Some(list.into()),
                "OPR_PROXY_SECRET" => Some("k".into()),
                _ => None,
            })
            .unwrap();
            Picker::new(Algorithm::Affinity, 2, 1).with_affinity(&c.executors, 1250)
        };
        let a = parsed("exc1,[::1]");
        let b = parsed("http://EXC1:80, http://[::1]:80/");
        let c = parsed("exc1:8080,[::1]:80");
        assert_eq!(a.keys, b.keys);
        assert_eq!(a.keys[1], c.keys[1]);
        assert_ne!(a.keys[0], c.keys[0], "another port is another executor");
        assert_eq!(a.keys[0], executor_key("exc1:80"));
        assert_eq!(a.keys[1], executor_key("[::1]:80"));
    }

    #[test]
    fn affinity_spreads_runtimes_evenly() {
        for n in [2, 4, 5] {
            let p = affinity(&FIVE[..n], 1250, 1);
            let s = blind(n);
            let mut counts = vec![0u32; n];
            for k in 0..10_000 {
                counts[owner(&p, &s, &format!("rt-{k}"), none)] += 1;
            }
            let mean = 10_000 / n as u32;
            for c in &counts {
                assert!(
                    c.abs_diff(mean) * 100 <= mean * 4,
                    "{n} executors: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn an_executor_leaving_or_joining_moves_only_its_runtimes() {
        let s = blind(5);
        let p = affinity(&FIVE, 1250, 1);
        let four = affinity(&["a:80", "b:80", "d:80", "e:80"], 1250, 1);
        let six = affinity(&["a:80", "b:80", "c:80", "d:80", "e:80", "f:80"], 1250, 1);
        let (mut left, mut joined) = (0, 0);
        for k in 0..10_000 {
            let rt = format!("rt-{k}");
            let before = owner(&p, &s, &rt, none);
            // c (index 2) taken offline, or gone from the list: the same new owner.
            let offline = owner(&p, &s, &rt, |i| i == 2);
            let without = owner(&four, &blind(4), &rt, none);
            assert_eq!(FIVE[offline], ["a:80", "b:80", "d:80", "e:80"][without]);
            if before == 2 {
                left += 1;
            } else {
                assert_eq!(offline, before, "{rt} moved although its owner stayed");
            }
            let after = owner(&six, &blind(6), &rt, none);
            if after == 5 {
                joined += 1;
            } else {
                assert_eq!(after, before, "{rt} moved to an old executor");
            }
        }
        // About 1/5 leave with c, and 1/6 move to f.
        assert!((1800..=2200).contains(&left), "{left}");
        assert!((1500..=1830).contains(&joined), "{joined}");
    }

    #[test]
    fn load_bound_is_the_ceiling_of_the_factor_times_the_mean() {
        // (factor ‰, in flight + the new one, candidates) → bound.
        let cases = [
            (1250, 1, 4, 1), // 0.3125
            (1250, 4, 5, 1), // exactly 1
            (1250, 5, 5, 2), // 1.25
            (1000, 2, 2, 1),
            (1000, 3, 2, 2),
            (1500, 7, 3, 4), // 3.5
            (100_000, 1, 1, 100),
            (1000, 0, 3, 0),
            (1250, 8, 0, 10), // no candidates: as one
            (100_000, u64::MAX, 1, u64::MAX),
        ];
        for (factor, total, n, want) in cases {
            assert_eq!(load_bound(factor, total, n), want, "{factor} {total} {n}");
        }
    }

    #[test]
    fn affinity_spills_at_the_bound_and_the_new_request_counts() {
        let s = blind(5);
        let p = affinity(&FIVE, 1250, 1);
        let rt = "hot";
        let o = owner(&p, &s, rt, none);
        let successor = owner(&p, &s, rt, |i| i == o);
        let other = (0..5).find(|&i| i != o && i != successor).unwrap();
        let select = |p: &Picker| {
            p.select(&s, Addressing::AnycastEfficient, Some(rt), none)
                .unwrap()
        };
        // Idle: the owner. Bound ceil(1.25 × 1 / 5) = 1, and it has 0.
        let c = select(&p);
        assert_eq!(
            (
                c.executor.index(),
                c.spilled_from.map(ExecutorId::index),
                c.reason
            ),
            (o, None, "affinity owner")
        );
        // One in flight on the owner, two elsewhere: with the new one 4, the bound is
        // ceil(1.25 × 4 / 5) = 1, and the owner has 1: it is full, the request spills.
        let _held = [p.assign(id(o)), p.assign(id(other)), p.assign(id(other))];
        let c = select(&p);
        assert_eq!(
            (
                c.executor.index(),
                c.spilled_from.map(ExecutorId::index),
                c.reason
            ),
            (successor, Some(o), "spilled")
        );
        assert_eq!(c.tier, 3);
        // One more elsewhere: 5 with the new one, bound ceil(1.25) = 2: the owner takes it.
        // (Without counting the new request the bound would still be 1.)
        let _more = p.assign(id(other));
        assert_eq!(select(&p).executor, id(o));
        // Loaded successors spill further, in the runtime's order.
        let third = owner(&p, &s, rt, |i| i == o || i == successor);
        let _owner_full = [p.assign(id(o)), p.assign(id(o)), p.assign(id(o))];
        let c = select(&p);
        assert_eq!((c.executor, c.spilled_from), (id(successor), Some(id(o))));
        let _successor_full = [
            p.assign(id(successor)),
            p.assign(id(successor)),
            p.assign(id(successor)),
        ];
        // 11 with the new one: bound 3; owner 4, successor 3: both full.
        assert_eq!(select(&p).executor, id(third));
    }

    #[test]
    fn the_same_host_twice_gives_its_runtimes_to_the_first() {
        let p = affinity(&["a:80", "a:80", "b:80"], 1000, 1);
        let s = blind(3);
        let mut seen = [0u32; 3];
        for k in 0..300 {
            let rt = format!("rt-{k}");
            let o = owner(&p, &s, &rt, none);
            seen[o] += 1;
            if o == 0 {
                assert_eq!(owner(&p, &s, &rt, |i| i == 0), 1, "its twin is next");
            }
        }
        assert_eq!(seen[1], 0, "{seen:?}");
        assert!(seen[0] > 0 && seen[2] > 0, "{seen:?}");
    }

    #[test]
    fn affinity_decides_inside_the_tiers() {
        // Older executors report usage and runtimes: the tiers come first.
        let p = affinity(&FIVE, 1250, 1);
        let rt = "rt-7";
        let o = owner(&p, &blind(5), rt, none);
        let successor = owner(&p, &blind(5), rt, |i| i == o);
        // The owner is busy (usage 90): tier 2 is the others, and the order decides.
        let s = snap(
            (0..5)
                .map(|i| executor(true, Some(if i == o { 90 } else { 10 }), &[]))
                .collect(),
        );
        let c = p
            .select(&s, Addressing::AnycastEfficient, Some(rt), none)
            .unwrap();
        assert_eq!(
            (c.executor, c.tier, c.reason),
            (id(successor), 2, "affinity owner")
        );
        // Warm (tier 1) on two executors that are not the owner: the earlier of them in
        // the runtime's order.
        let warm: Vec<usize> = (0..5).filter(|&i| i != o).take(2).collect();
        let s = snap(
            (0..5)
                .map(|i| {
                    let runtimes: &[(&str, &str, u8)] = if warm.contains(&i) {
                        &[("rt-7", "pass", 0)]
                    } else {
                        &[]
                    };
                    executor(true, Some(10), runtimes)
                })
                .collect(),
        );
        let first_warm = owner(&p, &blind(5), rt, |i| !warm.contains(&i));
        let c = p
            .select(&s, Addressing::AnycastEfficient, Some(rt), none)
            .unwrap();
        assert_eq!((c.executor, c.tier), (id(first_warm), 1));
    }

    #[test]
    fn affinity_without_a_runtime_id_is_p2c() {
        let s = blind(5);
        for seed in 0..20 {
            let a = affinity(&FIVE, 1250, seed);
            let b = Picker::new(Algorithm::P2c, 5, seed);
            let _held = [
                a.assign(id(1)),
                a.assign(id(1)),
                b.assign(id(1)),
                b.assign(id(1)),
            ];
            for _ in 0..20 {
                let (ca, cb) = (
                    a.select(&s, Addressing::AnycastEfficient, None, none),
                    b.select(&s, Addressing::AnycastEfficient, None, none),
                );
                assert_eq!(ca, cb);
                assert_eq!(ca.unwrap().reason, "fallback: all busy");
            }
        }
        // And other algorithms never take the runtime's order.
        let p = Picker::new(Algorithm::First, 5, 1);
        let c = p.select(&s, Addressing::AnycastEfficient, Some("rt"), none);
        let c = c.unwrap();
        assert_eq!(
            (c.executor, c.reason, c.spilled_from),
            (id(0), "fallback: all busy", None)
        );
    }
}
