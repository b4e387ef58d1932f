//! One worker's idle keep-alive connections to executors, per executor. Connections are
//! checked in only when `forward::reuse` said so, and checked out only when nothing
//! arrived on them while idle (no bytes, no EOF); stale ones expire.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::metrics::WorkerMetrics;
use crate::outcome::Discard;
use crate::snapshot::ExecutorId;
use crate::socket::{self, Waiting};

struct Idle {
    stream: TcpStream,
    addr: SocketAddr,
    since: Instant,
}

/// `!Send`: owned by one worker, touched only by its tasks.
pub(crate) struct Pool {
    idle: RefCell<Vec<VecDeque<Idle>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub(crate) fn new(executors: usize, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: RefCell::new((0..executors).map(|_| VecDeque::new()).collect()),
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently used idle connection to `addr` of `executor` that is still
    /// clean. Most recent first: it is the least likely to have been closed by the
    /// executor. One that received bytes (a late answer, a stray response) or EOF while
    /// idle is closed: its bytes would reach the next client as its answer.
    pub(crate) fn take(
        &self,
        executor: ExecutorId,
        addr: SocketAddr,
        m: &WorkerMetrics,
    ) -> Option<TcpStream> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(executor.index())?;
        let now = Instant::now();
        expire(list, now, self.idle_timeout, executor, m);
        while let Some(pos) = list.iter().rposition(|c| c.addr == addr) {
            let conn = list.remove(pos)?;
            match socket::peek(&conn.stream) {
                Waiting::Nothing => return Some(conn.stream),
                Waiting::Bytes => m.executor_discarded(executor, Discard::IdleBytes),
                Waiting::Eof | Waiting::Error => {
                    m.executor_discarded(executor, Discard::IdleClosed)
                }
            }
        }
        None
    }

    /// Check a connection in after a clean exchange; dropped when the pool is full.
    pub(crate) fn put(
        &self,
        executor: ExecutorId,
        addr: SocketAddr,
        stream: TcpStream,
        m: &WorkerMetrics,
    ) {
        if self.max_idle == 0 {
            m.executor_discarded(executor, Discard::PoolFull);
            return;
        }
        let mut idle = self.idle.borrow_mut();
        let Some(list) = idle.get_mut(executor.index()) else {
            return;
        };
        let now = Instant::now();
        expire(list, now, self.idle_timeout, executor, m);
        if list.len() >= self.max_idle {
            list.pop_front();
            m.executor_discarded(executor, Discard::PoolFull);
        }
        list.push_back(Idle {
            stream,
            addr,
            since: now,
        });
    }

    /// Close every idle connection to `executor` (they failed or are likely stale).
    pub(crate) fn drop_idle(&self, executor: ExecutorId) {
        if let Some(list) = self.idle.borrow_mut().get_mut(executor.index()) {
            list.clear();
        }
    }

    /// Close the connections idle longer than the pool's idle timeout, for every
    /// executor (the worker's sweep calls this: a quiet worker must not keep a burst's
    /// connections open until its next request to that executor).
    pub(crate) fn expire_idle(&self, m: &WorkerMetrics) {
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        for (executor, list) in ExecutorId::all(idle.len()).zip(idle.iter_mut()) {
            expire(list, now, self.idle_timeout, executor, m);
        }
    }

    /// Close every idle connection (shutdown).
    pub(crate) fn clear(&self) {
        for list in self.idle.borrow_mut().iter_mut() {
            list.clear();
        }
    }
}

/// Oldest entries are at the front; drop those idle for too long.
fn expire(
    list: &mut VecDeque<Idle>,
    now: Instant,
    timeout: Duration,
    executor: ExecutorId,
    m: &WorkerMetrics,
) {
    while list
        .front()
        .is_some_and(|c| now.duration_since(c.since) >= timeout)
    {
        list.pop_front();
        m.executor_discarded(executor, Discard::Expired);
    }
}
