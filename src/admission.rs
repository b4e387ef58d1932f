//! Overload protection: the per-executor concurrency cap (`OPR_PROXY_EXECUTOR_CONCURRENCY`,
//! each worker holding its share) and the worker's FIFO queue of requests waiting for a
//! free slot (`OPR_PROXY_QUEUE_SIZE`, `OPR_PROXY_QUEUE_TIMEOUT`): the state and its
//! bookkeeping. Choosing and waiting on the request path is `forward::admit`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::balance::Choice;
use crate::metrics::WorkerMetrics;
use crate::outcome::Shed;
use crate::snapshot::{ExecutorId, Snapshot};

/// How often a worker with waiting requests looks again at the snapshot and the offline
/// flags (set by the checker and other workers, which cannot wake this worker's tasks):
/// an executor that came online adds slots, no online executor left ends the waits.
pub(crate) const RECHECK: Duration = Duration::from_millis(50);

/// Worker `worker`'s share of a process-wide cap of `total` requests per executor over
/// `workers` workers: an even split, the remainder to the first workers, and at least
/// one each (so with fewer slots than workers the effective cap is the worker count).
pub(crate) fn share(total: u32, workers: usize, worker: usize) -> u32 {
    let workers = u32::try_from(workers.max(1)).unwrap_or(u32::MAX);
    let worker = u32::try_from(worker).unwrap_or(u32::MAX);
    let extra = u32::from(worker < total % workers);
    (total / workers + extra).max(1)
}

/// The executor a request may go to, and how long it waited in the queue for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Admitted {
    pub(crate) choice: Choice,
    pub(crate) addr: SocketAddr,
    /// `None`: it did not wait.
    pub(crate) waited: Option<Duration>,
}

/// Why a request got no executor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Refused {
    /// No online executor (a 404).
    NoOnlineExecutor,
    /// No capacity (a 503, counted as shed).
    Overloaded(Shed),
    /// The client left while the request waited: nothing to answer.
    ClientGone,
}

/// What the queue reads of its worker (`WorkerCtx`): one implementation, used
/// generically, so this layer holds the queue without knowing the worker.
pub(crate) trait Worker {
    fn admission(&self) -> &Admission;
    /// The newest snapshot.
    fn current(&self) -> Rc<Snapshot>;
    /// Requests of this worker in flight to `executor`.
    fn in_flight(&self, executor: ExecutorId) -> u32;
    /// Flagged offline by a worker since the snapshot.
    fn flagged_offline(&self, executor: ExecutorId) -> bool;
    fn counters(&self) -> &WorkerMetrics;
}

/// Where a waiting request stands.
#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// In the queue.
    Queued,
    /// Taken off the queue for a free slot, not yet run (counted in `granted`).
    Woken,
    /// Off the queue, choosing again (the grant taken).
    Running,
    /// Taken off the queue with an answer (no online executor left; draining).
    Refused(Refused),
}

struct Waiter {
    state: Cell<State>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn set(&self, state: State) {
        self.state.set(state);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// One worker's cap and queue. With no cap nothing here is touched per request.
pub(crate) struct Admission {
    /// This worker's share of the cap, for each executor; 0 = no cap.
    cap: u32,
    pub(crate) size: usize,
    pub(crate) timeout: Duration,
    /// Oldest first. Bounded by `size`: a waiter costs one pointer here and one small
    /// allocation (`Waiter`); the request itself is held by its connection either way.
    queue: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters woken for a free slot that have not run yet: slots promised to them, which
    /// a newcomer must not take (first come, first served).
    pub(crate) granted: Cell<usize>,
}

impl Admission {
    pub(crate) fn new(cap: u32, size: usize, timeout: Duration) -> Admission {
        Admission {
            cap,
            size,
            timeout,
            queue: RefCell::new(VecDeque::new()),
            granted: Cell::new(0),
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cap > 0
    }

    /// Whether `executor` holds this worker's share of requests (selection skips it).
    pub(crate) fn at_cap(&self, w: &impl Worker, executor: ExecutorId) -> bool {
        self.cap > 0 && w.in_flight(executor) >= self.cap
    }

    /// Requests waiting now.
    pub(crate) fn depth(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Slots free on executors a request may use now.
    pub(crate) fn free_slots(&self, ctx: &impl Worker, snapshot: &Snapshot) -> usize {
        snapshot
            .ids()
            .filter(|&i| usable(ctx, snapshot, i))
            .map(|i| self.cap.saturating_sub(ctx.in_flight(i)) as usize)
            .sum()
    }

    /// Wake the oldest waiters, one per free slot not yet promised. Called whenever a slot
    /// may have freed (a request ended, a waiter left) and on every `RECHECK`.
    pub(crate) fn kick(&self, w: &impl Worker) {
        if self.cap == 0 || self.queue.borrow().is_empty() {
            return;
        }
        let snapshot = w.current();
        let free = self.free_slots(w, &snapshot);
        let mut queue = self.queue.borrow_mut();
        while self.granted.get() < free {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            self.granted.set(self.granted.get() + 1);
            waiter.set(State::Woken);
        }
        w.counters().queue_depth(queue.len());
    }

    /// Take every waiter off the queue with this answer.
    fn refuse_all(&self, w: &impl Worker, e: Refused) {
        let waiters: Vec<_> = self.queue.borrow_mut().drain(..).collect();
        w.counters().queue_depth(0);
        for waiter in waiters {
            waiter.set(State::Refused(e));
        }
    }

    /// The worker stops: waiting requests are answered `503` at once.
    pub(crate) fn drain(&self, w: &impl Worker) {
        self.refuse_all(w, Refused::Overloaded(Shed::Draining));
    }

    /// The `RECHECK` tick: new capacity is handed out; with no online executor left every
    /// waiter gets the `404` it would get now.
    pub(crate) fn recheck(&self, w: &impl Worker) {
        if self.queue.borrow().is_empty() {
            return;
        }
        let snapshot = w.current();
        if !any_online(w, &snapshot) {
            self.refuse_all(w, Refused::NoOnlineExecutor);
        } else {
            self.kick(w);
        }
    }
}

fn usable(ctx: &impl Worker, snapshot: &Snapshot, i: ExecutorId) -> bool {
    snapshot.executor(i).online && !ctx.flagged_offline(i)
}

pub(crate) fn any_online(ctx: &impl Worker, snapshot: &Snapshot) -> bool {
    snapshot.ids().any(|i| usable(ctx, snapshot, i))
}

/// How one wait ended.
pub(crate) enum Woke {
    Slot,
    Refused(Refused),
    Timeout,
    Gone,
}

/// A request's place in the queue. Dropping it (answered, timed out, client gone, the
/// whole-request deadline) leaves the queue, passes an unused grant on, and records the
/// wait in `opr_proxy_queue_wait_seconds`.
pub(crate) struct Ticket<'c, W: Worker> {
    ctx: &'c W,
    waiter: Rc<Waiter>,
    pub(crate) since: Instant,
}

impl<'c, W: Worker> Ticket<'c, W> {
    /// Join the back of the queue, or its front (`first`) for a request choosing again.
    pub(crate) fn enter(ctx: &'c W, first: bool) -> Ticket<'c, W> {
        let waiter = Rc::new(Waiter {
            state: Cell::new(State::Queued),
            waker: RefCell::new(None),
        });
        let adm = &ctx.admission();
        {
            let mut queue = adm.queue.borrow_mut();
            if first {
                queue.push_front(waiter.clone());
            } else {
                queue.push_back(waiter.clone());
            }
            ctx.counters().queue_depth(queue.len());
        }
        Ticket {
            ctx,
            waiter,
            since: Instant::now(),
        }
    }

    /// Until the waiter is taken off the queue.
    pub(crate) fn woken(&self) -> impl Future<Output = Woke> + '_ {
        std::future::poll_fn(move |cx| match self.waiter.state.get() {
            State::Woken => Poll::Ready(Woke::Slot),
            State::Refused(e) => Poll::Ready(Woke::Refused(e)),
            State::Queued | State::Running => {
                *self.waiter.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    /// The grant is taken: this request chooses now.
    pub(crate) fn run(&self) {
        let adm = &self.ctx.admission();
        if self.waiter.state.get() == State::Woken {
            adm.granted.set(adm.granted.get() - 1);
        }
        self.waiter.state.set(State::Running);
    }

    /// Back to the front of the queue (it keeps its place ahead of later requests).
    pub(crate) fn requeue(&self) {
        let mut queue = self.ctx.admission().queue.borrow_mut();
        self.waiter.state.set(State::Queued);
        queue.push_front(self.waiter.clone());
        self.ctx.counters().queue_depth(queue.len());
    }
}

impl<W: Worker> Drop for Ticket<'_, W> {
    fn drop(&mut self) {
        let ctx = self.ctx;
        let adm = &ctx.admission();
        match self.waiter.state.get() {
            State::Queued => {
                let mut queue = adm.queue.borrow_mut();
                queue.retain(|w| !Rc::ptr_eq(w, &self.waiter));
                ctx.counters().queue_depth(queue.len());
            }
            // Woken for a slot it will not use: the next waiter gets it.
            State::Woken => {
                adm.granted.set(adm.granted.get() - 1);
                adm.kick(ctx);
            }
            State::Running | State::Refused(_) => {}
        }
        ctx.counters().queue_waited(self.since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_cap_evenly_with_at_least_one_each() {
        let shares = |total, workers| -> Vec<u32> {
            (0..workers).map(|w| share(total, workers, w)).collect()
        };
        assert_eq!(shares(8, 4), vec![2, 2, 2, 2]);
        assert_eq!(shares(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(shares(5, 1), vec![5]);
        // Fewer slots than workers: one each, so the process allows `workers`.
        assert_eq!(shares(2, 4), vec![1, 1, 1, 1]);
        assert_eq!(shares(1, 3), vec![1, 1, 1]);
        // The shares add up to the cap whenever it is at least the worker count.
        for workers in 1..=16 {
            for total in workers as u32..=64 {
                let sum: u32 = shares(total, workers).iter().sum();
                assert_eq!(sum, total, "{total} over {workers}");
            }
        }
        assert_eq!(share(7, 0, 0), 7, "no workers counts as one");
    }
}
