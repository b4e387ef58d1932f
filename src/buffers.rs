//! Per-worker free lists of body buffers and pipes: bodies stream through a few
//! fixed-size buffers (or are spliced through pipes) that are reused across requests, so
//! memory never grows with body size.

use std::cell::RefCell;

/// Size of one body read/write step. Measured (loadtest/README.md, "Body step size"):
/// 128 KiB cuts the proxy's CPU per 1 MiB upload by about a third and per 1 MiB download
/// by a quarter against 64 KiB (fewer ops, fewer small segments); 256 KiB gains nothing more.
pub(crate) const BODY_BUF: usize = 128 * 1024;
/// Buffers kept for reuse (16 MiB at most); more in flight at once are allocated and freed.
const KEEP: usize = 128;

#[derive(Default)]
pub(crate) struct BufPool {
    free: RefCell<Vec<Vec<u8>>>,
}

impl BufPool {
    pub(crate) fn new() -> BufPool {
        BufPool::default()
    }

    /// An empty buffer with `BODY_BUF` capacity that goes back to the pool when dropped,
    /// on every path (errors included).
    pub(crate) fn take(&self) -> PooledBuf<'_> {
        PooledBuf {
            pool: self,
            buf: self.get(),
        }
    }

    /// An empty buffer with `BODY_BUF` capacity.
    fn get(&self) -> Vec<u8> {
        self.free
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BODY_BUF))
    }

    /// Return a buffer; ones that were resized or lost their capacity are dropped.
    fn put(&self, mut buf: Vec<u8>) {
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

/// A body buffer on loan from the worker's pool.
pub(crate) struct PooledBuf<'a> {
    pool: &'a BufPool,
    buf: Vec<u8>,
}

impl std::ops::Deref for PooledBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

/// Pipes kept for reuse per worker (two fds each); more in flight at once are made and
/// closed per request.
const KEEP_PIPES: usize = 64;

/// A pipe for splicing: what is written to `w` is read from `r`.
pub(crate) struct PipePair {
    pub(crate) r: monoio::net::Pipe,
    pub(crate) w: monoio::net::Pipe,
}

/// Per-worker free list of empty pipes for splicing bodies.
#[derive(Default)]
pub(crate) struct PipePool {
    free: RefCell<Vec<PipePair>>,
}

impl PipePool {
    /// An empty pipe, or `None` when none can be made (fd limit): the caller copies
    /// through a buffer instead.
    pub(crate) fn take(&self) -> Option<PipePair> {
        if let Some(pipe) = self.free.borrow_mut().pop() {
            return Some(pipe);
        }
        let (r, w) = monoio::net::unix::new_pipe().ok()?;
        Some(PipePair { r, w })
    }

    /// Return a pipe that is empty (every byte spliced in was spliced out); a pipe that
    /// may hold bytes must be dropped instead.
    pub(crate) fn put(&self, pipe: PipePair) {
        let mut free = self.free.borrow_mut();
        if free.len() < KEEP_PIPES {
            free.push(pipe);
        }
    }

    /// Close every kept pipe (shutdown).
    pub(crate) fn clear(&self) {
        self.free.borrow_mut().clear();
    }
}
