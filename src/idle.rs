//! Connections waiting between requests, closed without a timer each: a connection
//! marks itself idle while it waits for readability, and one sweep per worker shuts down
//! the sockets idle past `OPR_PROXY_IDLE_TIMEOUT` (or all idle ones when the worker
//! stops). The shutdown wakes the wait. A timer per connection would cost 640 bytes
//! (monoio's cache-padded timer entry) for every idle keep-alive connection.

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::socket;

/// Why a waiting connection was shut down by its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Closed {
    Idle,
    Drain,
}

#[derive(Clone, Copy)]
struct Slot {
    fd: RawFd,
    /// Waiting for its next request since then.
    since: Option<Instant>,
    closed: Option<Closed>,
}

/// One worker's connections (slots reused as connections come and go).
#[derive(Default)]
pub(crate) struct IdleConns {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
}

/// A connection's slot; the owner must drop it before its socket closes, so the sweep
/// never shuts down an fd that was reused.
pub(crate) struct Registration<'a> {
    conns: &'a IdleConns,
    key: usize,
}

impl IdleConns {
    pub(crate) fn register(&self, fd: RawFd) -> Registration<'_> {
        let slot = Some(Slot {
            fd,
            since: None,
            closed: None,
        });
        let mut slots = self.slots.borrow_mut();
        let key = match self.free.borrow_mut().pop() {
            Some(key) => {
                slots[key] = slot;
                key
            }
            None => {
                slots.push(slot);
                slots.len() - 1
            }
        };
        Registration { conns: self, key }
    }

    /// Shut down every connection idle for `timeout` or more (all of them with
    /// `Closed::Drain`, when the worker stops). Returns how many.
    pub(crate) fn sweep(&self, now: Instant, timeout: Duration, why: Closed) -> usize {
        let mut n = 0;
        for slot in self.slots.borrow_mut().iter_mut().flatten() {
            let expired = match (why, slot.since) {
                (_, None) => false,
                (Closed::Drain, Some(_)) => true,
                (Closed::Idle, Some(since)) => now.saturating_duration_since(since) >= timeout,
            };
            if expired && slot.closed.is_none() {
                slot.closed = Some(why);
                socket::shutdown(slot.fd);
                n += 1;
            }
        }
        n
    }

    fn with<R>(&self, key: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
        let mut slots = self.slots.borrow_mut();
        let slot = slots[key].as_mut().expect("registered slot");
        f(slot)
    }
}

impl Registration<'_> {
    /// The connection starts waiting for its next request.
    pub(crate) fn idle(&self) {
        self.conns
            .with(self.key, |s| s.since = Some(Instant::now()));
    }

    /// The wait ended: `Some` when the worker shut the connection down.
    pub(crate) fn busy(&self) -> Option<Closed> {
        self.conns.with(self.key, |s| {
            s.since = None;
            s.closed
        })
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.conns.slots.borrow_mut()[self.key] = None;
        self.conns.free.borrow_mut().push(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn sweep_shuts_down_only_connections_idle_past_the_timeout() {
        let conns = IdleConns::default();
        let (mut c1, s1) = pair();
        let (_c2, s2) = pair();
        let (_c3, s3) = pair();
        let r1 = conns.register(s1.as_raw_fd());
        let r2 = conns.register(s2.as_raw_fd());
        let r3 = conns.register(s3.as_raw_fd());
        r1.idle();
        r2.idle();
        // r3 is busy (serving a request): never swept.
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(
            conns.sweep(Instant::now(), Duration::from_secs(5), Closed::Idle),
            0
        );
        assert_eq!(r2.busy(), None);
        assert_eq!(conns.sweep(later, Duration::from_secs(5), Closed::Idle), 1);
        assert_eq!(r1.busy(), Some(Closed::Idle));
        // The client sees the close (EOF).
        let mut byte = [0u8; 1];
        assert_eq!(c1.read(&mut byte).unwrap(), 0);
        r2.idle();
        assert_eq!(conns.sweep(Instant::now(), Duration::MAX, Closed::Drain), 1);
        assert_eq!(r2.busy(), Some(Closed::Drain));
        assert_eq!(r3.busy(), None);
    }

    #[test]
    fn slots_are_reused_and_a_dropped_registration_is_never_swept() {
        let conns = IdleConns::default();
        let (_c1, s1) = pair();
        let r1 = conns.register(s1.as_raw_fd());
        r1.idle();
        drop(r1);
        assert_eq!(
            conns.sweep(Instant::now(), Duration::ZERO, Closed::Drain),
            0
        );
        let (_c2, s2) = pair();
        let r2 = conns.register(s2.as_raw_fd());
        assert_eq!(r2.key, 0);
        assert_eq!(conns.slots.borrow().len(), 1);
    }
}
