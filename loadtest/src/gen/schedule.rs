//! Open-loop send schedule: a total rate spread evenly over the connections, so the
//! union of all connections' send times is one evenly spaced sequence at the offered rate.

use std::time::Duration;

/// Send times of one connection, relative to the start of the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    /// First send, in seconds.
    first: f64,
    /// Seconds between two sends of this connection.
    interval: f64,
}

impl Schedule {
    /// Connection `index` of `connections`, for `rate` requests/s in total. Connection `i`
    /// starts at `i / rate`, then sends every `connections / rate` seconds.
    pub fn new(rate: f64, connections: usize, index: usize) -> Schedule {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        let connections = connections.max(1) as f64;
        Schedule {
            first: index as f64 / rate,
            interval: connections / rate,
        }
    }

    /// When send number `k` (from 0) is due. Computed from `k`, not accumulated, so rounding
    /// never drifts over a long run.
    pub fn at(&self, k: u64) -> Duration {
        Duration::try_from_secs_f64(self.first + self.interval * k as f64).unwrap_or(Duration::MAX)
    }

    pub fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(self.interval).unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_into_one_even_sequence() {
        let (rate, conns) = (1000.0, 4);
        let mut all: Vec<Duration> = (0..conns)
            .flat_map(|i| {
                let s = Schedule::new(rate, conns, i);
                (0..250).map(move |k| s.at(k))
            })
            .collect();
        all.sort();
        assert_eq!(all.len(), 1000);
        for (n, t) in all.iter().enumerate() {
            let want = n as f64 / rate;
            assert!((t.as_secs_f64() - want).abs() < 1e-9, "send {n} at {t:?}");
        }
        assert_eq!(
            Schedule::new(rate, conns, 0).interval(),
            Duration::from_millis(4)
        );
    }

    #[test]
    fn count_within_a_window_matches_the_rate() {
        let (rate, conns) = (12_345.0, 256);
        let window = Duration::from_secs(2);
        let sent: usize = (0..conns)
            .map(|i| {
                let s = Schedule::new(rate, conns, i);
                (0..).take_while(|&k| s.at(k) < window).count()
            })
            .sum();
        assert!((sent as f64 - rate * 2.0).abs() <= 1.0, "sent {sent}");
    }

    #[test]
    fn no_drift_after_many_sends() {
        let s = Schedule::new(3.0, 1, 0);
        assert_eq!(s.at(3_000_000).as_secs(), 1_000_000);
        // Nonsense rates give a schedule that never fires rather than a panic.
        assert_eq!(Schedule::new(0.0, 1, 0).at(1), Duration::MAX);
        assert_eq!(Schedule::new(f64::NAN, 1, 0).at(1), Duration::MAX);
    }
}
