//! The mock executor's execution model for the cold-start and overload runs: which runtimes
//! are warm (at most K, least recently used evicted, a cold one costs a start-up delay) and
//! how many requests run at once (a fixed service time on M slots, the rest wait in order).
//! Pure and clock-driven (`now` is passed in), so it is unit-tested without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// How a request met its runtime (sent back in `x-mock-cold`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warmth {
    /// No `x-opr-runtime-id` (or no warm model): nothing to start.
    Untracked,
    /// The runtime was warm.
    Warm,
    /// This request started the runtime and paid the cold start.
    ColdStart,
    /// Another request was starting the runtime; this one waited for that start (as an
    /// executor's concurrent creators of one runtime do), without starting it again.
    ColdWait,
}

impl Warmth {
    /// The `x-mock-cold` value: `0` warm, `1` started it, `wait` waited for a start.
    pub fn header(self) -> Option<&'static str> {
        match self {
            Warmth::Untracked => None,
            Warmth::Warm => Some("0"),
            Warmth::ColdStart => Some("1"),
            Warmth::ColdWait => Some("wait"),
        }
    }

    /// Parses an `x-mock-cold` value.
    pub fn parse(v: &[u8]) -> Warmth {
        match v {
            b"0" => Warmth::Warm,
            b"1" => Warmth::ColdStart,
            b"wait" => Warmth::ColdWait,
            _ => Warmth::Untracked,
        }
    }
}

/// Longest runtime id kept (longer ids are cut): an id is a key, not a payload.
const MAX_ID: usize = 256;

#[derive(Debug)]
struct Entry {
    /// When the runtime is (or was) ready to serve.
    ready_at: Instant,
    /// Position in the LRU order (higher = used more recently).
    used: u64,
}

/// At most `capacity` warm runtimes. Memory: `capacity` entries of at most [`MAX_ID`]
/// bytes each, whatever the clients send.
#[derive(Debug)]
pub struct WarmModel {
    capacity: usize,
    cold_start: Duration,
    entries: HashMap<String, Entry>,
    /// `used` → runtime id, oldest first.
    lru: BTreeMap<u64, String>,
    tick: u64,
}

impl WarmModel {
    /// `capacity` ≥ 1 runtimes warm at once; a cold runtime takes `cold_start` to start.
    pub fn new(capacity: usize, cold_start: Duration) -> WarmModel {
        WarmModel {
            capacity: capacity.max(1),
            cold_start,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            tick: 0,
        }
    }

    /// A request for `runtime` arrives at `now`: whether it was warm and when it can run.
    /// A cold runtime evicts the least recently used one when the model is full.
    pub fn admit(&mut self, runtime: &str, now: Instant) -> (Warmth, Instant) {
        let id = cut(runtime);
        self.tick += 1;
        let tick = self.tick;
        if let Some(e) = self.entries.get_mut(id) {
            self.lru.remove(&e.used);
            e.used = tick;
            self.lru.insert(tick, id.to_string());
            return if e.ready_at > now {
                (Warmth::ColdWait, e.ready_at)
            } else {
                (Warmth::Warm, now)
            };
        }
        if self.entries.len() >= self.capacity {
            if let Some((_, oldest)) = self.lru.pop_first() {
                self.entries.remove(&oldest);
            }
        }
        let ready_at = now + self.cold_start;
        self.entries.insert(
            id.to_string(),
            Entry {
                ready_at,
                used: tick,
            },
        );
        self.lru.insert(tick, id.to_string());
        (Warmth::ColdStart, ready_at)
    }

    /// Runtimes currently held (warm or starting).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `runtime` is held (warm or starting).
    pub fn holds(&self, runtime: &str) -> bool {
        self.entries.contains_key(cut(runtime))
    }
}

fn cut(id: &str) -> &str {
    if id.len() <= MAX_ID {
        return id;
    }
    let mut end = MAX_ID;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    &id[..end]
}

/// A fixed service time on `slots` parallel slots (0 = unlimited): a request ready at `t`
/// starts on the slot that frees first (first come, first served), so under overload the
/// wait grows like an executor's queue.
#[derive(Debug)]
pub struct Slots {
    service: Duration,
    /// When each slot is free again (empty = unlimited).
    free_at: Vec<Instant>,
}

impl Slots {
    pub fn new(service: Duration, slots: usize, now: Instant) -> Slots {
        Slots {
            service,
            free_at: vec![now; slots],
        }
    }

    /// When a request that can start at `ready` is answered.
    pub fn done_at(&mut self, ready: Instant) -> Instant {
        let Some(slot) = self.free_at.iter_mut().min_by_key(|t| **t) else {
            return ready + self.service;
        };
        let done = (*slot).max(ready) + self.service;
        *slot = done;
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: Duration = Duration::from_millis(50);

    #[test]
    fn cold_then_warm_and_waiters_share_one_start() {
        let t0 = Instant::now();
        let mut m = WarmModel::new(2, C);
        assert_eq!(m.admit("a", t0), (Warmth::ColdStart, t0 + C));
        // Concurrent request during the start: waits for the same start, no new one.
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(m.admit("a", t1), (Warmth::ColdWait, t0 + C));
        assert_eq!(m.admit("a", t0 + C), (Warmth::Warm, t0 + C));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let t = Instant::now() + C * 10;
        let mut m = WarmModel::new(2, C);
        let t0 = t - C * 5;
        m.admit("a", t0);
        m.admit("b", t0);
        // "a" used again: "b" is now the oldest.
        assert_eq!(m.admit("a", t).0, Warmth::Warm);
        assert_eq!(m.admit("c", t).0, Warmth::ColdStart);
        assert!(m.holds("a") && m.holds("c") && !m.holds("b"));
        assert_eq!(m.len(), 2);
        assert_eq!(m.admit("b", t).0, Warmth::ColdStart);
        assert!(!m.holds("a"));
    }

    #[test]
    fn long_ids_are_cut() {
        let mut m = WarmModel::new(4, C);
        let t = Instant::now();
        let long = "x".repeat(10_000);
        m.admit(&long, t);
        assert!(m.holds(&"x".repeat(MAX_ID)));
        assert_eq!(m.admit(&long, t + C).0, Warmth::Warm);
        let wide = "é".repeat(200); // 400 bytes, cut on a char boundary
        m.admit(&wide, t);
        assert!(m.holds(&wide));
    }

    #[test]
    fn header_values_round_trip() {
        for w in [Warmth::Warm, Warmth::ColdStart, Warmth::ColdWait] {
            assert_eq!(Warmth::parse(w.header().unwrap_or("").as_bytes()), w);
        }
        assert_eq!(Warmth::parse(b"2"), Warmth::Untracked);
        assert_eq!(Warmth::Untracked.header(), None);
    }

    #[test]
    fn slots_queue_first_come_first_served() {
        let t = Instant::now();
        let s = Duration::from_millis(10);
        let mut slots = Slots::new(s, 2, t);
        assert_eq!(slots.done_at(t), t + s);
        assert_eq!(slots.done_at(t), t + s);
        // Both busy: the third waits for the first to free.
        assert_eq!(slots.done_at(t), t + 2 * s);
        // Ready later than a slot frees: starts when ready.
        assert_eq!(slots.done_at(t + 5 * s), t + 6 * s);
        let mut unlimited = Slots::new(s, 0, t);
        for _ in 0..100 {
            assert_eq!(unlimited.done_at(t), t + s);
        }
    }
}
