//! Idle keep-alive connections (`--mode idle`): open N connections to the target one after
//! another, send one request on each, keep them all open and idle, and see what they cost
//! the proxy in resident memory (`/proc/<pid>/status` VmRSS before and after).

use crate::gen::{self, Request};
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Consecutive failures after which opening more connections stops (a full fd table or a
/// proxy at its connection limit fails every further attempt).
const GIVE_UP_AFTER: usize = 50;

/// Connections held open after one answered request each.
#[derive(Debug, Default)]
pub struct IdleSet {
    /// Open connections whose one request was answered 2xx.
    pub streams: Vec<TcpStream>,
    /// Connections that failed (connect, request or a non-2xx answer).
    pub errors: usize,
    pub first_error: Option<String>,
}

impl IdleSet {
    pub fn opened(&self) -> usize {
        self.streams.len()
    }
}

/// Opens up to `n` connections to `addr`, one at a time, each answering one `req` 2xx,
/// and keeps them open. Stops early on `stop` or after [`GIVE_UP_AFTER`] failures in a row.
pub fn open_idle(
    addr: SocketAddr,
    req: &Request,
    n: usize,
    timeout: Duration,
    stop: &AtomicBool,
) -> IdleSet {
    let mut set = IdleSet::default();
    let mut failed_in_a_row = 0;
    while set.streams.len() < n && failed_in_a_row < GIVE_UP_AFTER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match one(addr, req, timeout) {
            Ok(s) => {
                set.streams.push(s);
                failed_in_a_row = 0;
            }
            Err(e) => {
                set.errors += 1;
                failed_in_a_row += 1;
                set.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    set
}

fn one(addr: SocketAddr, req: &Request, timeout: Duration) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let resp = gen::exchange_blocking(&mut s, req)?;
    if !(200..300).contains(&resp.status) {
        return Err(io::Error::other(format!("answered {}", resp.status)));
    }
    Ok(s)
}

/// RSS growth per connection, KiB (None when nothing was opened).
pub fn kib_per_connection(before_kib: u64, after_kib: u64, opened: usize) -> Option<f64> {
    (opened > 0).then(|| (after_kib as f64 - before_kib as f64) / opened as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_per_connection() {
        assert_eq!(kib_per_connection(10_000, 30_000, 10_000), Some(2.0));
        assert_eq!(kib_per_connection(10_000, 9_000, 1_000), Some(-1.0));
        assert_eq!(kib_per_connection(1, 2, 0), None);
    }
}
