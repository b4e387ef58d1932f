//! Admission on the request path: choose an executor under the per-executor cap
//! (`pick`), or wait in the worker's queue (`admission`) until one has a free slot. One
//! step for HTTP/1 requests and HTTP/2 streams.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use crate::admission::{any_online, Admitted, Refused, Ticket, Woke, RECHECK};
use crate::balance::Addressing;
use crate::balance::Choice;
use crate::ctx::{Assignment, WorkerCtx};
use crate::outcome::Shed;
use crate::snapshot::{ExecutorId, Snapshot};

/// One selection, shared by HTTP/1 requests and HTTP/2 streams (through
/// `admit`): the picker's choice within the tiers, counted in flight to that
/// executor (`assigned` holds the count until the request ends or moves on to another
/// executor), with its address. Executors at their concurrency cap are skipped. An
/// executor whose name did not resolve is flagged offline for every worker and the next
/// one is tried (`unresolved` hears of it). `None`: no online executor under its cap.
pub(crate) fn pick<'c>(
    ctx: &'c WorkerCtx,
    snapshot: &Snapshot,
    addressing: Addressing,
    runtime: Option<&str>,
    assigned: &mut Option<Assignment<'c>>,
    mut unresolved: impl FnMut(ExecutorId),
) -> Option<(Choice, SocketAddr)> {
    loop {
        let flagged = |i| ctx.board.is_flagged_offline(i) || ctx.admission.at_cap(ctx, i);
        let choice = ctx.picker.select(snapshot, addressing, runtime, flagged)?;
        let i = choice.executor;
        *assigned = Some(ctx.executor(i).assign());
        match snapshot.executor(i).addrs.first() {
            Some(&addr) => {
                if let Some(owner) = choice.spilled_from {
                    ctx.m().affinity_spilled(owner);
                }
                return Some((choice, addr));
            }
            None => {
                ctx.executor(i).flag_offline(&"its address did not resolve");
                unresolved(i);
            }
        }
    }
}

/// The worker's `RECHECK` loop (spawned only when a cap is set); ends when it stops.
pub(crate) async fn watch(ctx: Rc<WorkerCtx>) {
    while !ctx.stopping.get() {
        monoio::time::sleep(RECHECK).await;
        ctx.admission.recheck(&*ctx);
    }
}

/// Choose an executor for an anycast request (`pick`, which skips executors at
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
    let no_online = Err(Refused::NoOnlineExecutor);
    let again = assigned.is_some();
    if again && adm.enabled() {
        // Its own slot (a refused connection, a replay) is free for it to choose again.
        *assigned = None;
    }
    let ahead = adm.enabled()
        && (adm.depth() > 0
            || (adm.granted.get() > 0 && adm.granted.get() >= adm.free_slots(ctx, snapshot)));
    if again || !ahead {
        let picked = pick(
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
        return Err(Refused::Overloaded(why));
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
                    if let Refused::Overloaded(why) = e {
                        ctx.m().shed(why);
                    }
                    return Err(e);
                }
                Woke::Timeout => {
                    ctx.m().shed(Shed::QueueTimeout);
                    return Err(Refused::Overloaded(Shed::QueueTimeout));
                }
                Woke::Gone => return Err(Refused::ClientGone),
            }
            ticket.run();
            *self.snapshot = ctx.snapshot();
            let picked = pick(
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
                return Err(Refused::NoOnlineExecutor);
            }
            // The slot went elsewhere (a broadcast copy, an executor gone): wait again,
            // first in line.
            ticket.requeue();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::snapshot::{Board, ExecutorStatus};
    use std::cell::{Cell, RefCell};
    use std::sync::Arc;
    use std::time::Duration;

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
            let held = ctx.executor(ExecutorId::new(0)).assign();
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
            let _held = full.executor(ExecutorId::new(0)).assign();
            let served = Rc::new(RefCell::new(Vec::new()));
            let release = Rc::new(Cell::new(0));
            let _waiter = monoio::spawn(request(full.clone(), 1, served.clone(), release.clone()));
            monoio::time::sleep(Duration::from_millis(2)).await;
            let r = request(full.clone(), 2, served.clone(), release.clone()).await;
            assert_eq!(r, Err(Refused::Overloaded(Shed::QueueFull)));
            // Draining answers the waiter at once.
            full.admission.drain(&*full);
            assert_eq!(full.admission.depth(), 0);
        });
        let none = ctx(1, 1, 0);
        block_on(async {
            let _held = none.executor(ExecutorId::new(0)).assign();
            let r = request(none.clone(), 1, Default::default(), Default::default()).await;
            assert_eq!(
                r,
                Err(Refused::Overloaded(Shed::QueueFull)),
                "OPR_PROXY_QUEUE_SIZE=0: no waiting"
            );
        });
    }

    #[test]
    fn a_request_choosing_again_has_its_own_slot_and_goes_first() {
        let ctx = ctx(1, 1, 16);
        block_on(async {
            let mut snapshot = ctx.snapshot();
            let mut assigned = Some(ctx.executor(ExecutorId::new(0)).assign());
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
            let _held: Vec<_> = (0..100)
                .map(|_| ctx.executor(ExecutorId::new(0)).assign())
                .collect();
            let r = request(ctx.clone(), 0, Default::default(), Rc::new(Cell::new(1))).await;
            assert_eq!(r, Ok(0));
        });
    }
}
