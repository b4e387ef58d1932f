//! A one-shot, worker-local wake-up for every waiting task (the stop signal inside a
//! worker). `!Send`: lives on one runtime, no atomics.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalNotify {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalNotify {
    pub fn new() -> LocalNotify {
        LocalNotify::default()
    }

    /// Fire once; every current and future `wait()` completes.
    pub fn notify(&self) {
        self.fired.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> Wait<'_> {
        Wait { notify: self }
    }
}

pub struct Wait<'a> {
    notify: &'a LocalNotify,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        // Waiters re-poll rarely (only on spurious wakes); avoid duplicates anyway.
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
