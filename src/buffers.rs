//! Per-worker free list of body buffers: bodies stream through a few fixed-size buffers
//! that are reused across requests, so memory never grows with body size.

use std::cell::RefCell;

/// Size of one body read/write step (TECH.md: 64 KiB steps kept RSS flat).
pub const BODY_BUF: usize = 64 * 1024;
/// Buffers kept for reuse; more in flight at once are allocated and freed.
const KEEP: usize = 256;

#[derive(Default)]
pub struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub fn new() -> BufPool {
        BufPool::default()
    }

    /// An empty buffer with `BODY_BUF` capacity.
    pub fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BODY_BUF))
    }

    /// Return a buffer; ones that were resized or lost their capacity are dropped.
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BODY_BUF {
            return;
        }
        buf.clear();
        let mut free = self.free.borrow_mut();
        if free.len() < KEEP {
            free.push(buf);
        }
    }
}
