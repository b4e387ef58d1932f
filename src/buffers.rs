//! Per-worker free lists of what a request borrows while it runs: head buffers, body
//! buffers, the per-request vectors, and pipes. Bodies stream through a few fixed-size
//! buffers (or are spliced through pipes) reused across requests, so memory never grows
//! with body size; and a connection between requests holds none of them, so an idle
//! keep-alive connection costs only its socket and its small task.

use std::cell::{Cell, RefCell};

use crate::http::head::HeaderRef;
use crate::socket;

/// Size of one body read/write step. Measured (loadtest/README.md, "Body step size"):
/// 128 KiB cuts the proxy's CPU per 1 MiB upload by about a third and per 1 MiB download
/// by a quarter against 64 KiB (fewer ops, fewer small segments); 256 KiB gains nothing more.
pub(crate) const BODY_BUF: usize = 128 * 1024;
/// Size of a head buffer (a client's request head, an executor's response head); it grows
/// (up to the head limit) only for unusually large heads, and a grown one is not kept.
pub(crate) const HEAD_BUF: usize = 8 * 1024;
/// A new connection's first head is read into this much when no head buffer is kept (a
/// burst of new connections): a connection that sent only a few bytes holds no more.
pub(crate) const FIRST_HEAD_READ: usize = 1024;
/// Body buffers kept for reuse (16 MiB at most); more in flight at once are allocated
/// and freed.
const KEEP_BODIES: usize = 128;
/// Head buffers kept for reuse (2 MiB at most).
const KEEP_HEADS: usize = 256;
/// Request vectors kept for reuse: their output vectors may have grown to hold an
/// answer's head and first body bytes (up to a body buffer's worth; 17 MiB at most).
const KEEP_SCRATCH: usize = 128;
/// An output vector that grew past this (a large proxy API answer) is not kept.
const OUT_KEEP: usize = HEAD_BUF + BODY_BUF;

/// A free list of one kind of item: `make` builds a fresh one, `clean` readies a returned
/// one for reuse or says it must be dropped (it grew, or lost its capacity).
pub(crate) struct FreeList<T> {
    free: RefCell<Vec<T>>,
    keep: usize,
    make: fn() -> T,
    clean: fn(&mut T) -> bool,
}

impl<T> FreeList<T> {
    /// Take an item: a kept one, or a fresh one.
    pub(crate) fn get(&self) -> T {
        self.free.borrow_mut().pop().unwrap_or_else(self.make)
    }

    /// Take a kept item, if there is one.
    pub(crate) fn take_kept(&self) -> Option<T> {
        self.free.borrow_mut().pop()
    }

    /// Give an item back; it is kept while the free list has room and `clean` allows.
    pub(crate) fn put(&self, mut item: T) {
        if !(self.clean)(&mut item) {
            return;
        }
        let mut free = self.free.borrow_mut();
        if free.len() < self.keep {
            free.push(item);
        }
    }

    /// An item on loan, taken from the pool at its first use (`get`) and given back when
    /// the loan is dropped, on every path (errors included).
    pub(crate) fn lend(&self) -> Loan<'_, T> {
        Loan {
            pool: self,
            item: None,
        }
    }
}

/// Body buffers: `BODY_BUF` bytes of capacity.
pub(crate) fn body_buffers() -> FreeList<Vec<u8>> {
    FreeList {
        free: RefCell::default(),
        keep: KEEP_BODIES,
        make: || Vec::with_capacity(BODY_BUF),
        clean: |buf| clear_if_capacity(buf, BODY_BUF),
    }
}

/// Head buffers: `HEAD_BUF` bytes of capacity.
pub(crate) fn head_buffers() -> FreeList<Vec<u8>> {
    FreeList {
        free: RefCell::default(),
        keep: KEEP_HEADS,
        make: || Vec::with_capacity(HEAD_BUF),
        clean: |buf| clear_if_capacity(buf, HEAD_BUF),
    }
}

fn clear_if_capacity(buf: &mut Vec<u8>, capacity: usize) -> bool {
    buf.clear();
    buf.capacity() == capacity
}

/// What one request works with besides its buffers: the field positions of its head
/// and of the executor's response head, the output vector (heads and answers), and the
/// request line kept for the access log.
#[derive(Default)]
pub(crate) struct Scratch {
    pub(crate) headers: Vec<HeaderRef>,
    pub(crate) response_headers: Vec<HeaderRef>,
    pub(crate) out: Vec<u8>,
    pub(crate) request_line: Vec<u8>,
}

/// Request vectors, reused by whichever request is running.
pub(crate) fn scratch() -> FreeList<Scratch> {
    FreeList {
        free: RefCell::default(),
        keep: KEEP_SCRATCH,
        make: || Scratch {
            headers: Vec::with_capacity(32),
            response_headers: Vec::with_capacity(32),
            out: Vec::with_capacity(1024),
            request_line: Vec::new(),
        },
        clean: |s| {
            s.headers.clear();
            s.response_headers.clear();
            s.out.clear();
            s.request_line.clear();
            s.out.capacity() <= OUT_KEEP
        },
    }
}

/// An item borrowed from a pool (`FreeList::lend`).
pub(crate) struct Loan<'a, T> {
    pool: &'a FreeList<T>,
    item: Option<T>,
}

impl<T> Loan<'_, T> {
    /// The item, taken from the pool the first time.
    pub(crate) fn get(&mut self) -> &mut T {
        let pool = self.pool;
        self.item.get_or_insert_with(|| pool.get())
    }
}

impl<T> Drop for Loan<'_, T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.put(item);
        }
    }
}

/// Whether a worker's answers lately were larger than a head buffer: a saturating count
/// of large minus small answers. Workloads are mostly uniform, so it picks the buffer the
/// next answer is read into; a wrong guess costs a read and a write, never correctness.
#[derive(Default)]
pub(crate) struct AnswerSizes {
    large: Cell<u8>,
}

impl AnswerSizes {
    const MAX: u8 = 8;

    pub(crate) fn expect_large(&self) -> bool {
        self.large.get() > Self::MAX / 2
    }

    /// Count an answer of `len` bytes (head and body as sent to the client).
    pub(crate) fn saw(&self, len: u64) {
        let n = self.large.get();
        self.large.set(if len > HEAD_BUF as u64 {
            (n + 1).min(Self::MAX)
        } else {
            n.saturating_sub(1)
        });
    }
}

/// Pipes kept for reuse per worker (two fds each); more in flight at once are made and
/// closed per request.
const KEEP_PIPES: usize = 64;
/// The size asked for each pipe. Measured (docs/performance.md "Splice through a big pipe"): 1 MiB pipes cut the CPU
/// of a 1 MiB download by about a fifth against the default 64 KiB (fewer, larger
/// splices). It is also the kernel's default `fs.pipe-max-size`.
pub(crate) const PIPE_SIZE: u32 = 1024 * 1024;
/// The kernel's default pipe size (16 pages): what a pipe has when it cannot be grown.
pub(crate) const PIPE_DEFAULT: u32 = 64 * 1024;

/// A pipe for splicing: what is written to `w` is read from `r`; it holds `size` bytes.
pub(crate) struct PipePair {
    pub(crate) r: monoio::net::Pipe,
    pub(crate) w: monoio::net::Pipe,
    pub(crate) size: u32,
}

/// Per-worker free list of empty pipes for splicing bodies.
#[derive(Default)]
pub(crate) struct PipePool {
    free: RefCell<Vec<PipePair>>,
}

impl PipePool {
    /// An empty pipe, or `None` when none can be made (fd limit) or the kernel gave it
    /// less than the default size (past `fs.pipe-user-pages-soft` a new pipe gets one
    /// page): the caller copies through a buffer instead.
    pub(crate) fn take(&self) -> Option<PipePair> {
        if let Some(pipe) = self.free.borrow_mut().pop() {
            return Some(pipe);
        }
        // monoio makes the pipe and does not tell its fds: the read end takes the lowest
        // free fd, found just before. If another thread took that fd meanwhile, the check
        // in `grow_pipe` sees no pipe there and this one keeps its size.
        let expected = socket::lowest_free_fd();
        let (r, w) = monoio::net::unix::new_pipe().ok()?;
        let size = expected
            .and_then(|fd| socket::grow_pipe(fd, PIPE_SIZE))
            .unwrap_or(PIPE_DEFAULT);
        (size >= PIPE_DEFAULT).then_some(PipePair { r, w, size })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_are_grown_to_pipe_size() {
        let max: u32 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async {
            let pipes = PipePool::default();
            // Fresh pipes (none returned); another test thread opening a file at the same
            // moment can leave one at the default size, never all three.
            let made: Vec<PipePair> = (0..3).map(|_| pipes.take().expect("a pipe")).collect();
            assert!(made.iter().all(|p| p.size >= PIPE_DEFAULT));
            if max >= PIPE_SIZE {
                assert!(made.iter().any(|p| p.size == PIPE_SIZE));
            }
            let size = made[0].size;
            pipes.put(made.into_iter().next().unwrap());
            assert_eq!(
                pipes.take().unwrap().size,
                size,
                "a kept pipe keeps its size"
            );
        });
    }

    #[test]
    fn answer_sizes_follow_the_workload_with_hysteresis() {
        let s = AnswerSizes::default();
        assert!(!s.expect_large());
        for _ in 0..5 {
            s.saw(64 * 1024);
        }
        assert!(s.expect_large());
        for _ in 0..3 {
            s.saw(64 * 1024);
        }
        // One small answer among large ones does not flip it.
        s.saw(100);
        assert!(s.expect_large());
        for _ in 0..4 {
            s.saw(100);
        }
        assert!(!s.expect_large());
        // Exactly a head buffer is small.
        s.saw(HEAD_BUF as u64);
        assert!(!s.expect_large());
    }

    #[test]
    fn free_lists_keep_only_clean_items_up_to_their_bound() {
        let heads = head_buffers();
        let mut grown = heads.get();
        grown.reserve(HEAD_BUF * 2);
        heads.put(grown);
        assert!(heads.free.borrow().is_empty(), "a grown buffer is dropped");
        for _ in 0..KEEP_HEADS + 10 {
            heads.put(Vec::with_capacity(HEAD_BUF));
        }
        assert_eq!(heads.free.borrow().len(), KEEP_HEADS);
        let mut loan = heads.lend();
        loan.get().extend_from_slice(b"abc");
        drop(loan);
        assert!(
            heads.get().is_empty(),
            "a returned buffer comes back cleared"
        );
    }
}
