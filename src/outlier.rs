//! Passive outlier detection (`OPR_PROXY_EJECT_AFTER`): one worker's count of
//! consecutive failed exchanges per executor. Pure and `!Sync`: the shared part is the
//! board's offline flag, which the worker raises when a count reaches the limit.

use std::cell::Cell;

use crate::snapshot::ExecutorId;
/// Consecutive failures per executor on one worker.
pub(crate) struct Outliers {
    /// `None`: ejection is off and nothing is counted.
    after: Option<u32>,
    failures: Box<[Cell<u32>]>,
}

impl Outliers {
    pub(crate) fn new(after: Option<u32>, executors: usize) -> Outliers {
        let slots = if after.is_some() { executors } else { 0 };
        Outliers {
            after,
            failures: (0..slots).map(|_| Cell::new(0)).collect(),
        }
    }

    /// One more failed exchange with `executor`. Returns the count when it reaches the
    /// limit (and starts counting again), i.e. when the executor is to be ejected.
    pub(crate) fn failed(&self, executor: ExecutorId) -> Option<u32> {
        let after = self.after?;
        let count = self.failures.get(executor.index())?;
        let n = count.get() + 1;
        if n >= after {
            count.set(0);
            Some(n)
        } else {
            count.set(n);
            None
        }
    }

    /// The executor answered: failures are no longer consecutive.
    pub(crate) fn answered(&self, executor: ExecutorId) {
        if let Some(count) = self.failures.get(executor.index()) {
            count.set(0);
        }
    }

    #[cfg(test)]
    fn count(&self, executor: ExecutorId) -> u32 {
        self.failures.get(executor.index()).map_or(0, Cell::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let o = Outliers::new(Some(3), 2);
        assert_eq!(o.failed(ExecutorId::new(0)), None);
        assert_eq!(o.failed(ExecutorId::new(0)), None);
        // A success in between: the count starts again.
        o.answered(ExecutorId::new(0));
        assert_eq!(o.count(ExecutorId::new(0)), 0);
        assert_eq!(o.failed(ExecutorId::new(0)), None);
        assert_eq!(o.failed(ExecutorId::new(1)), None, "counted per executor");
        assert_eq!(o.failed(ExecutorId::new(0)), None);
        assert_eq!(o.failed(ExecutorId::new(0)), Some(3));
        assert_eq!(
            o.count(ExecutorId::new(0)),
            0,
            "counting starts again after an ejection"
        );
        assert_eq!(o.count(ExecutorId::new(1)), 1);
        assert_eq!(
            o.failed(ExecutorId::new(9)),
            None,
            "out of range is ignored"
        );
    }

    #[test]
    fn one_failure_is_enough_with_one() {
        let o = Outliers::new(Some(1), 1);
        assert_eq!(o.failed(ExecutorId::new(0)), Some(1));
        assert_eq!(o.failed(ExecutorId::new(0)), Some(1));
    }

    #[test]
    fn off_counts_nothing() {
        let o = Outliers::new(None, 3);
        for _ in 0..100 {
            assert_eq!(o.failed(ExecutorId::new(0)), None);
        }
        o.answered(ExecutorId::new(0));
        assert_eq!(o.count(ExecutorId::new(0)), 0);
    }
}
