//! Overload protection: the per-executor concurrency cap (`OPR_PROXY_EXECUTOR_CONCURRENCY`,
//! each worker holding its share) and the worker's FIFO queue of requests waiting for a
//! free slot (`OPR_PROXY_QUEUE_SIZE`, `OPR_PROXY_QUEUE_TIMEOUT`). One admission step for
//! HTTP/1 requests and HTTP/2 streams, in front of the shared selection (`forward::pick`).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::balance::{Addressing, Choice};
use crate::ctx::{Assignment, WorkerCtx};
use crate::error::{ProxyError, Shed};
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
    /// Answer this error: no online executor (404), or no capacity (503, counted as shed).
    Answer(ProxyError),
    /// The client left while the request waited: nothing to answer.
    ClientGone,
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
    Refused(ProxyError),
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
    size: usize,
    timeout: Duration,
    /// Oldest first. Bounded by `size`: a waiter costs one pointer here and one small
    /// allocation (`Waiter`); the request itself is held by its connection either way.
    queue: RefCell<VecDeque<Rc<Waiter>>>,
    /// Waiters woken for a free slot that have not run yet: slots promised to them, which
    /// a newcomer must not take (first come, first served).
    granted: Cell<usize>,
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
    pub(crate) fn at_cap(&self, ctx: &WorkerCtx, executor: ExecutorId) -> bool {
        self.cap > 0 && ctx.picker.in_flight(executor) >= self.cap
    }

    /// Requests waiting now.
    pub(crate) fn depth(&self) -> usize {
        self.queue.borrow().len()
    }

    /// Slots free on executors a request may use now.
    fn free_slots(&self, ctx: &WorkerCtx, snapshot: &Snapshot) -> usize {
        snapshot
            .ids()
            .filter(|&i| usable(ctx, snapshot, i))
            .map(|i| self.cap.saturating_sub(ctx.picker.in_flight(i)) as usize)
            .sum()
    }

    /// Wake the oldest waiters, one per free slot not yet promised. Called whenever a slot
    /// may have freed (a request ended, a waiter left) and on every `RECHECK`.
    pub(crate) fn kick(&self, ctx: &WorkerCtx) {
        if self.cap == 0 || self.queue.borrow().is_empty() {
            return;
        }
        let snapshot = ctx.snapshot();
        let free = self.free_slots(ctx, &snapshot);
        let mut queue = self.queue.borrow_mut();
        while self.granted.get() < free {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            self.granted.set(self.granted.get() + 1);
            waiter.set(State::Woken);
        }
        ctx.m().queue_depth(queue.len());
    }

    /// Take every waiter off the queue with this answer.
    fn refuse_all(&self, ctx: &WorkerCtx, e: ProxyError) {
        let waiters: Vec<_> = self.queue.borrow_mut().drain(..).collect();
        ctx.m().queue_depth(0);
        for waiter in waiters {
            waiter.set(State::Refused(e));
        }
    }

    /// The worker stops: waiting requests are answered `503` at once.
    pub(crate) fn drain(&self, ctx: &WorkerCtx) {
        self.refuse_all(ctx, ProxyError::Overloaded(Shed::Draining));
    }

    /// The `RECHECK` tick: new capacity is handed out; with no online executor left every
    /// waiter gets the `404` it would get now.
    fn recheck(&self, ctx: &WorkerCtx) {
        if self.queue.borrow().is_empty() {
            return;
        }
        let snapshot = ctx.snapshot();
        if !any_online(ctx, &snapshot) {
            self.refuse_all(ctx, ProxyError::NoOnlineExecutor);
        } else {
            self.kick(ctx);
        }
    }
}

fn usable(ctx: &WorkerCtx, snapshot: &Snapshot, i: ExecutorId) -> bool {
    snapshot.executor(i).online && !ctx.board.is_flagged_offline(i)
}

fn any_online(ctx: &WorkerCtx, snapshot: &Snapshot) -> bool {
    snapshot.ids().any(|i| usable(ctx, snapshot, i))
}

/// The worker's `RECHECK` loop (spawned only when a cap is set); ends when it stops.
pub(crate) async fn watch(ctx: Rc<WorkerCtx>) {
    while !ctx.stopping.get() {
        monoio::time::sleep(RECHECK).await;
        ctx.admission.recheck(&ctx);
    }
}

/// Choose an executor for an anycast request (`forward::pick`, which skips executors at
/// their cap) or wait in the worker's queue until one has a free slot. `snapshot` is
/// replaced by the newest one after a wait. `gone` makes a future that completes when
/// the client leaves; it is polled only while the request waits.
///
/// A newcomer goes to the back of the queue when others wait, even if a slot looks free:
/// that slot is promised to the oldest waiter. A request choosing again (its executor
/// refused the connection) already had its turn and is not queued behind newcomers.
pub(crate) async fn admit<'c, G: Future<Output = ()>>(
    ctx: &'c WorkerCtx,
    snapshot: &mut Rc<Snapshot>,
    addressing: Addressing,
    runtime: Option<&str>,
    assigned: &mut Option<Assignment<'c>>,
    mut unresolved: impl FnMut(ExecutorId),
    gone: impl FnOnce() -> G,
) -> Result<Admitted, Refused> {
    let adm = &ctx.admission;
    let no_online = Err(Refused::Answer(ProxyError::NoOnlineExecutor));
    let again = assigned.is_some();
    if again && adm.enabled() {
        // Its own slot (a refused connection, a replay) is free for it to choose again.
        *assigned = None;
    }
    let ahead = adm.enabled()
        && (!adm.queue.borrow().is_empty()
            || (adm.granted.get() > 0 && adm.granted.get() >= adm.free_slots(ctx, snapshot)));
    if again || !ahead {
        let picked = crate::forward::pick(
            ctx,
            snapshot,
            addressing,
            runtime,
            assigned,
            &mut unresolved,
        );
        if let Some((choice, addr)) = picked {
            let waited = None;
            return Ok(Admitted {
                choice,
                addr,
                waited,
            });
        }
        if !adm.enabled() {
            return no_online;
        }
    }
    if !any_online(ctx, snapshot) {
        return no_online;
    }
    // Every online executor is at its cap, or others wait first.
    let shed = if ctx.stopping.get() {
        Some(Shed::Draining)
    } else if adm.depth() >= adm.size {
        Some(Shed::QueueFull)
    } else {
        None
    };
    if let Some(why) = shed {
        ctx.m().shed(why);
        return Err(Refused::Answer(ProxyError::Overloaded(why)));
    }
    // The slow path lives in its own allocation, so requests that never wait do not carry
    // its state (timers) in their futures.
    let wait = Wait {
        ctx,
        snapshot,
        addressing,
        runtime,
        assigned,
        unresolved: &mut unresolved,
    };
    Box::pin(wait.run(gone(), again)).await
}

/// One request waiting for a slot.
struct Wait<'w, 'c, U> {
    ctx: &'c WorkerCtx,
    snapshot: &'w mut Rc<Snapshot>,
    addressing: Addressing,
    runtime: Option<&'w str>,
    assigned: &'w mut Option<Assignment<'c>>,
    unresolved: &'w mut U,
}

/// How one wait ended.
enum Woke {
    Slot,
    Refused(ProxyError),
    Timeout,
    Gone,
}

impl<U: FnMut(ExecutorId)> Wait<'_, '_, U> {
    async fn run(self, gone: impl Future<Output = ()>, first: bool) -> Result<Admitted, Refused> {
        let ctx = self.ctx;
        let adm = &ctx.admission;
        let deadline = Instant::now() + adm.timeout;
        let ticket = Ticket::enter(ctx, first);
        let mut gone = std::pin::pin!(gone);
        loop {
            let woke = monoio::select! {
                woke = ticket.woken() => woke,
                _ = monoio::time::sleep_until(deadline.into()) => Woke::Timeout,
                _ = gone.as_mut() => Woke::Gone,
            };
            match woke {
                Woke::Slot => {}
                Woke::Refused(e) => {
                    if let ProxyError::Overloaded(why) = e {
                        ctx.m().shed(why);
                    }
                    return Err(Refused::Answer(e));
                }
                Woke::Timeout => {
                    ctx.m().shed(Shed::QueueTimeout);
                    return Err(Refused::Answer(ProxyError::Overloaded(Shed::QueueTimeout)));
                }
                Woke::Gone => return Err(Refused::ClientGone),
            }
            ticket.run();
            *self.snapshot = ctx.snapshot();
            let picked = crate::forward::pick(
                ctx,
                self.snapshot,
                self.addressing,
                self.runtime,
                self.assigned,
                &mut *self.unresolved,
            );
            if let Some((choice, addr)) = picked {
                let waited = Some(ticket.since.elapsed());
                drop(ticket);
                // More slots may be free than waiters were woken for (an executor came
                // online): the next in line may go too.
                adm.kick(ctx);
                return Ok(Admitted {
                    choice,
                    addr,
                    waited,
                });
            }
            if !any_online(ctx, self.snapshot) {
                return Err(Refused::Answer(ProxyError::NoOnlineExecutor));
            }
            // The slot went elsewhere (a broadcast copy, an executor gone): wait again,
            // first in line.
            ticket.requeue();
        }
    }
}

/// A request's place in the queue. Dropping it (answered, timed out, client gone, the
/// whole-request deadline) leaves the queue, passes an unused grant on, and records the
/// wait in `opr_proxy_queue_wait_seconds`.
struct Ticket<'c> {
    ctx: &'c WorkerCtx,
    waiter: Rc<Waiter>,
    since: Instant,
}

impl<'c> Ticket<'c> {
    /// Join the back of the queue, or its front (`first`) for a request choosing again.
    fn enter(ctx: &'c WorkerCtx, first: bool) -> Ticket<'c> {
        let waiter = Rc::new(Waiter {
            state: Cell::new(State::Queued),
            waker: RefCell::new(None),
        });
        let adm = &ctx.admission;
        {
            let mut queue = adm.queue.borrow_mut();
            if first {
                queue.push_front(waiter.clone());
            } else {
                queue.push_back(waiter.clone());
            }
            ctx.m().queue_depth(queue.len());
        }
        Ticket {
            ctx,
            waiter,
            since: Instant::now(),
        }
    }

    /// Until the waiter is taken off the queue.
    fn woken(&self) -> impl Future<Output = Woke> + '_ {
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
    fn run(&self) {
        let adm = &self.ctx.admission;
        if self.waiter.state.get() == State::Woken {
            adm.granted.set(adm.granted.get() - 1);
        }
        self.waiter.state.set(State::Running);
    }

    /// Back to the front of the queue (it keeps its place ahead of later requests).
    fn requeue(&self) {
        let mut queue = self.ctx.admission.queue.borrow_mut();
        self.waiter.state.set(State::Queued);
        queue.push_front(self.waiter.clone());
        self.ctx.m().queue_depth(queue.len());
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let ctx = self.ctx;
        let adm = &ctx.admission;
        match self.waiter.state.get() {
            State::Queued => {
                let mut queue = adm.queue.borrow_mut();
                queue.retain(|w| !Rc::ptr_eq(w, &self.waiter));
                ctx.m().queue_depth(queue.len());
            }
            // Woken for a slot it will not use: the next waiter gets it.
            State::Woken => {
                adm.granted.set(adm.granted.get() - 1);
                adm.kick(ctx);
            }
            State::Running | State::Refused(_) => {}
        }
        ctx.m().queue_waited(self.since.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::snapshot::{Board, ExecutorStatus};
    use std::sync::Arc;

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

    /// A worker context over `executors` online executors (never connected to), with a
    /// cap of `cap` and a queue of `size`.
    fn ctx(executors: usize, cap: u32, size: usize) -> Rc<WorkerCtx> {
        let list = (0..executors)
            .map(|i| format!("127.0.0.1:{}", 10 + i))
            .collect::<Vec<_>>()
            .join(",");
        let (cap, size) = (cap.to_string(), size.to_string());
        let config = Config::from_lookup(|k| match k {
            "OPR_PROXY_EXECUTORS" => Some(list.clone()),
            "OPR_PROXY_SECRET" => Some("s".into()),
            "OPR_PROXY_ALGORITHM" => Some("first".into()),
            "OPR_PROXY_EXECUTOR_CONCURRENCY" => Some(cap.clone()),
            "OPR_PROXY_QUEUE_SIZE" => Some(size.clone()),
            _ => None,
        })
        .unwrap();
        let statuses = (0..executors)
            .map(|i| ExecutorStatus {
                hostname: format!("127.0.0.1:{}", 10 + i),
                online: true,
                addrs: vec![SocketAddr::from(([127, 0, 0, 1], 10 + i as u16))],
                ..ExecutorStatus::default()
            })
            .collect();
        let board = Board::new(Snapshot::new(1, statuses));
        let metrics = Arc::new(Metrics::new(1, executors));
        Rc::new(WorkerCtx::new(
            0,
            Arc::new(config),
            board,
            metrics,
            None,
            Default::default(),
        ))
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    /// Request `n` of a test: admitted, it holds its slot until `release` says so, and
    /// notes its number in `served` (in the order they got a slot).
    async fn request(
        ctx: Rc<WorkerCtx>,
        n: usize,
        served: Rc<RefCell<Vec<usize>>>,
        release: Rc<Cell<usize>>,
    ) -> Result<usize, Refused> {
        let mut snapshot = ctx.snapshot();
        let mut assigned = None;
        let how = Addressing::AnycastEfficient;
        let never = std::future::pending::<()>;
        let picked = admit(&ctx, &mut snapshot, how, None, &mut assigned, |_| {}, never).await?;
        served.borrow_mut().push(n);
        while release.get() < n + 1 {
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(picked.choice.executor.index())
    }

    #[test]
    fn waiters_are_served_in_arrival_order_as_slots_free() {
        let ctx = ctx(2, 1, 16);
        let served = Rc::new(RefCell::new(Vec::new()));
        let release = Rc::new(Cell::new(0));
        block_on(async {
            let mut tasks = Vec::new();
            for n in 0..6 {
                let task = request(ctx.clone(), n, served.clone(), release.clone());
                tasks.push(monoio::spawn(task));
                // Each one reaches the queue before the next starts.
                monoio::time::sleep(Duration::from_millis(2)).await;
            }
            // Two executors, one slot each: 0 and 1 run, 2..6 wait in order.
            assert_eq!(*served.borrow(), vec![0, 1]);
            assert_eq!(ctx.admission.depth(), 4);
            for step in 1..=6 {
                release.set(step);
                let want: Vec<usize> = (0..(step + 2).min(6)).collect();
                for _ in 0..200 {
                    if *served.borrow() == want {
                        break;
                    }
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                assert_eq!(*served.borrow(), want, "after {step} released");
            }
            let mut executors = Vec::new();
            for t in tasks {
                executors.push(t.await.unwrap());
            }
            assert_eq!(ctx.admission.depth(), 0);
            assert_eq!(ctx.admission.granted.get(), 0);
            assert_eq!(
                (
                    ctx.picker.in_flight(ExecutorId::new(0)),
                    ctx.picker.in_flight(ExecutorId::new(1))
                ),
                (0, 0)
            );
            assert_eq!(&executors[..2], &[0, 1]);
        });
    }

    #[test]
    fn a_newcomer_does_not_take_a_slot_promised_to_a_waiter() {
        let ctx = ctx(1, 1, 16);
        block_on(async {
            let held = ctx.assign(ExecutorId::new(0));
            let served = Rc::new(RefCell::new(Vec::new()));
            let release = Rc::new(Cell::new(0));
            let waiter = monoio::spawn(request(ctx.clone(), 1, served.clone(), release.clone()));
            monoio::time::sleep(Duration::from_millis(2)).await;
            assert_eq!(ctx.admission.depth(), 1);
            // The slot frees and, before the waiter runs, a newcomer arrives: it queues.
            drop(held);
            assert_eq!(ctx.admission.granted.get(), 1);
            let newcomer = monoio::spawn(request(ctx.clone(), 2, served.clone(), release.clone()));
            monoio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(*served.borrow(), vec![1]);
            assert_eq!(ctx.admission.depth(), 1);
            drop((waiter, newcomer));
        });
    }

    #[test]
    fn full_queue_and_timeout_and_drain_answer_503() {
        let full = ctx(1, 1, 1);
        block_on(async {
            let _held = full.assign(ExecutorId::new(0));
            let served = Rc::new(RefCell::new(Vec::new()));
            let release = Rc::new(Cell::new(0));
            let _waiter = monoio::spawn(request(full.clone(), 1, served.clone(), release.clone()));
            monoio::time::sleep(Duration::from_millis(2)).await;
            let r = request(full.clone(), 2, served.clone(), release.clone()).await;
            assert_eq!(
                r,
                Err(Refused::Answer(ProxyError::Overloaded(Shed::QueueFull)))
            );
            // Draining answers the waiter at once.
            full.admission.drain(&full);
            assert_eq!(full.admission.depth(), 0);
        });
        let none = ctx(1, 1, 0);
        block_on(async {
            let _held = none.assign(ExecutorId::new(0));
            let r = request(none.clone(), 1, Default::default(), Default::default()).await;
            assert_eq!(
                r,
                Err(Refused::Answer(ProxyError::Overloaded(Shed::QueueFull))),
                "OPR_PROXY_QUEUE_SIZE=0: no waiting"
            );
        });
    }

    #[test]
    fn a_request_choosing_again_has_its_own_slot_and_goes_first() {
        let ctx = ctx(1, 1, 16);
        block_on(async {
            let mut snapshot = ctx.snapshot();
            let mut assigned = Some(ctx.assign(ExecutorId::new(0)));
            // Someone waits for the one slot; the request that holds it chooses again
            // (say its pooled connection was stale): it keeps the slot, without waiting.
            let release = Rc::new(Cell::new(0));
            let waiter = monoio::spawn(request(ctx.clone(), 1, Default::default(), release));
            monoio::time::sleep(Duration::from_millis(2)).await;
            assert_eq!(ctx.admission.depth(), 1);
            let how = Addressing::AnycastEfficient;
            let never = std::future::pending::<()>;
            let again = admit(&ctx, &mut snapshot, how, None, &mut assigned, |_| {}, never);
            let r = monoio::time::timeout(Duration::from_secs(1), again).await;
            let r = r
                .expect("not queued")
                .map(|a| (a.choice.executor.index(), a.waited));
            assert_eq!(r, Ok((0, None)));
            assert_eq!(ctx.picker.in_flight(ExecutorId::new(0)), 1);
            monoio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(ctx.admission.depth(), 1, "the waiter still waits");
            drop(waiter);
        });
    }

    #[test]
    fn no_cap_never_queues() {
        let ctx = ctx(1, 0, 0);
        block_on(async {
            let _held: Vec<_> = (0..100).map(|_| ctx.assign(ExecutorId::new(0))).collect();
            let r = request(ctx.clone(), 0, Default::default(), Rc::new(Cell::new(1))).await;
            assert_eq!(r, Ok(0));
        });
    }
}
