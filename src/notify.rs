//! A one-shot, worker-local wake-up for every waiting task (the stop signal inside a
//! worker). `!Send`: lives on one runtime, no atomics.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Waiters are keyed so a dropped `Wait` removes its waker: a waker keeps its task alive,
/// and every connection waits here between requests (a leak of each finished task
/// otherwise, found by the soak test).
#[derive(Default)]
pub(crate) struct LocalNotify {
    fired: Cell<bool>,
    next_id: Cell<u64>,
    waiters: RefCell<HashMap<u64, Waker>>,
}

impl LocalNotify {
    pub(crate) fn new() -> LocalNotify {
        LocalNotify::default()
    }

    /// Fire once; every current and future `wait()` completes.
    pub(crate) fn notify(&self) {
        self.fired.set(true);
        let waiters: Vec<Waker> = self.waiters.borrow_mut().drain().map(|(_, w)| w).collect();
        for waker in waiters {
            waker.wake();
        }
    }

    pub(crate) fn wait(&self) -> Wait<'_> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        Wait { notify: self, id }
    }

    /// Registered waiters (for tests).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

pub(crate) struct Wait<'a> {
    notify: &'a LocalNotify,
    id: u64,
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        self.notify.waiters.borrow_mut().remove(&self.id);
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.fired.get() {
            return Poll::Ready(());
        }
        self.notify
            .waiters
            .borrow_mut()
            .insert(self.id, cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn dropped_waiters_are_forgotten_and_live_ones_woken() {
        let notify = LocalNotify::new();
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        for _ in 0..100 {
            let mut w = std::pin::pin!(notify.wait());
            assert!(w.as_mut().poll(&mut cx).is_pending());
        }
        // Regression: every dropped wait used to keep its waker (and task) forever.
        assert_eq!(notify.waiting(), 0);
        let mut live = std::pin::pin!(notify.wait());
        assert!(live.as_mut().poll(&mut cx).is_pending());
        assert_eq!(notify.waiting(), 1);
        notify.notify();
        assert!(flag.0.load(std::sync::atomic::Ordering::Relaxed));
        assert!(live.as_mut().poll(&mut cx).is_ready());
    }
}
