//! Health without flapping (HAProxy's `rise`/`fall`): an executor's status changes only
//! after `OPR_PROXY_HEALTHCHECK_RISE` passing or `OPR_PROXY_HEALTHCHECK_FALL` failing
//! probes in a row. Pure: the previous round's status in, this round's out.

use crate::snapshot::ExecutorStatus;

/// Consecutive results needed to change status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Thresholds {
    pub(crate) rise: u32,
    pub(crate) fall: u32,
}

impl Default for Thresholds {
    /// The original's behaviour: every probe decides.
    fn default() -> Thresholds {
        Thresholds { rise: 1, fall: 1 }
    }
}

/// The status to publish for an executor whose probe gave `probed`, given what the
/// previous round published. The first round (no `previous`) takes the probe as it is,
/// as the original does. A probe that disagrees with the published status counts
/// towards a change (`ExecutorStatus::contrary`); until the count reaches the
/// threshold the published status holds:
/// - still online after a failed probe: keeps the last passing probe's usage, runtimes
///   and state, so selection does not change, and this probe's error as `last_error`;
/// - still offline after a passing probe: keeps the reason it went offline.
pub(crate) fn settle(
    previous: Option<&ExecutorStatus>,
    mut probed: ExecutorStatus,
    thresholds: Thresholds,
) -> ExecutorStatus {
    let Some(previous) = previous else {
        probed.contrary = 0;
        return probed;
    };
    if probed.online == previous.online {
        probed.contrary = 0;
        return probed;
    }
    let contrary = previous.contrary + 1;
    let needed = if previous.online {
        thresholds.fall
    } else {
        thresholds.rise
    };
    if contrary >= needed {
        // The status changes; the transition line gives the count when it is over one.
        if !probed.online && needed > 1 {
            let last = probed.last_error.take().unwrap_or_default();
            probed.last_error = Some(format!("{needed} failed checks (last: {last})"));
        }
        probed.contrary = 0;
        return probed;
    }
    probed.contrary = contrary;
    if previous.online {
        probed.online = true;
        probed.state_status = previous.state_status.clone();
        probed.usage = previous.usage;
        probed.runtimes = previous.runtimes.clone();
        // A failed resolution keeps the last addresses (as `probe_one` does).
        if probed.addrs.is_empty() {
            probed.addrs = previous.addrs.clone();
        }
    } else {
        probed.online = false;
        probed.last_error = previous.last_error.clone();
    }
    probed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(online: bool, usage: Option<u8>, error: Option<&str>) -> ExecutorStatus {
        ExecutorStatus {
            hostname: "a:80".into(),
            online,
            usage,
            last_error: error.map(str::to_string),
            ..ExecutorStatus::default()
        }
    }

    fn up() -> ExecutorStatus {
        status(true, Some(10), None)
    }

    fn down() -> ExecutorStatus {
        status(false, None, Some("connection refused"))
    }

    /// Run probes through `settle` from a first round; the published `online` of each.
    fn run(t: Thresholds, probes: &[bool]) -> Vec<bool> {
        let mut published: Option<ExecutorStatus> = None;
        probes
            .iter()
            .map(|&ok| {
                let probed = if ok { up() } else { down() };
                let next = settle(published.as_ref(), probed, t);
                let online = next.online;
                published = Some(next);
                online
            })
            .collect()
    }

    #[test]
    fn defaults_follow_every_probe() {
        let t = Thresholds::default();
        let probes = [true, false, true, false, false, true];
        assert_eq!(run(t, &probes), probes.to_vec());
    }

    #[test]
    fn fall_needs_consecutive_failures() {
        let t = Thresholds { rise: 1, fall: 2 };
        let got = run(t, &[true, false, true, false, false, false, true, false]);
        assert_eq!(got, [true, true, true, true, false, false, true, true]);
    }

    #[test]
    fn rise_needs_consecutive_passes() {
        let t = Thresholds { rise: 2, fall: 1 };
        let got = run(t, &[false, true, false, true, true, true, false]);
        assert_eq!(got, [false, false, false, false, true, true, false]);
    }

    #[test]
    fn the_first_round_decides_at_once() {
        let t = Thresholds { rise: 3, fall: 3 };
        assert_eq!(run(t, &[true]), [true]);
        assert_eq!(run(t, &[false]), [false]);
    }

    #[test]
    fn held_statuses_keep_what_selection_reads() {
        let t = Thresholds { rise: 2, fall: 2 };
        let mut before = up();
        before.addrs = vec![([127, 0, 0, 1], 80).into()];
        let held = settle(Some(&before), down(), t);
        assert!(held.online);
        assert_eq!(held.usage, Some(10), "last passing usage kept");
        assert_eq!(held.addrs, before.addrs, "no address this round: last kept");
        assert_eq!(held.contrary, 1);
        assert_eq!(held.last_error.as_deref(), Some("connection refused"));
        // The second failure flips it, and says how many.
        let gone = settle(Some(&held), down(), t);
        assert!(!gone.online);
        assert_eq!(
            gone.last_error.as_deref(),
            Some("2 failed checks (last: connection refused)")
        );
        assert_eq!(gone.contrary, 0, "a change starts a new count");
        // One pass is not enough to come back; the reason stays.
        let still = settle(Some(&gone), up(), t);
        assert!(!still.online);
        assert_eq!(still.usage, Some(10), "this probe's usage");
        assert_eq!(still.last_error, gone.last_error);
        assert!(settle(Some(&still), up(), t).online);
    }
}
