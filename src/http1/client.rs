//! The client side of a connection as the request path uses it: the socket, the bytes
//! read but not yet used, and the I/O on it — reads, answers written under a deadline,
//! noticing a client that leaves, and the lingering close after an error.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::answer::{Answer, ProxyError};
use crate::buffers::{FreeList, FIRST_HEAD_READ, HEAD_BUF};
use crate::ctx::WorkerCtx;
use crate::forward::downstream::{Downstream, SocketDownstream};
use crate::forward::request::LINGER;
use crate::http::head::{RequestHead, MAX_HEAD};
use crate::outcome::{self, After, AnswerEnd, Asked, Served};
use crate::socket::{self, Waiting};

/// The client side of a connection: the socket and the bytes read but not yet used.
pub(crate) struct ClientConn {
    stream: TcpStream,
    peer: SocketAddr,
    /// Unconsumed bytes are `buf[start..]`. A head buffer from the worker's pool while a
    /// request runs or pipelined bytes wait; none (no capacity) between requests.
    buf: Vec<u8>,
    start: usize,
    /// The request in hand is `HEAD`: answers the proxy makes carry no body.
    head_request: bool,
    /// Request bytes taken (heads and bodies) and response bytes written, since the
    /// connection opened (metrics and the access log take differences).
    bytes_in: u64,
    bytes_out: u64,
}

impl ClientConn {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr) -> ClientConn {
        ClientConn {
            stream,
            peer,
            buf: Vec::new(),
            start: 0,
            head_request: false,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    pub(crate) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub(crate) fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Request bytes taken and response bytes written since the connection opened.
    pub(crate) fn bytes(&self) -> (u64, u64) {
        (self.bytes_in, self.bytes_out)
    }

    /// The request in hand is `HEAD` (or, `false`, none was read).
    pub(crate) fn set_head_request(&mut self, head: bool) {
        self.head_request = head;
    }

    pub(crate) fn head_request(&self) -> bool {
        self.head_request
    }

    /// The socket and the peer, for HTTP/2 to take over.
    pub(crate) fn into_parts(self) -> (TcpStream, SocketAddr) {
        (self.stream, self.peer)
    }

    /// Take a head buffer from the worker's pool, unless one is held. A new connection's
    /// first head starts small when none is kept (a burst of new connections, or clients
    /// that send part of a head and stop): `read_more` grows it as bytes come. Later heads
    /// take a full head buffer, so a keep-alive connection returns one to the pool.
    pub(crate) fn take_buffer(&mut self, heads: &FreeList<Vec<u8>>) {
        if self.buf.capacity() == 0 {
            self.buf = match heads.take_kept() {
                Some(buf) => buf,
                None if self.bytes_in == 0 => Vec::with_capacity(FIRST_HEAD_READ),
                None => Vec::with_capacity(HEAD_BUF),
            };
            self.start = 0;
        }
    }

    /// Give the head buffer back (only when nothing is pending in it).
    pub(crate) fn release_buffer(&mut self, heads: &FreeList<Vec<u8>>) {
        if self.pending().is_empty() && self.buf.capacity() > 0 {
            heads.put(std::mem::take(&mut self.buf));
            self.start = 0;
        }
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.start += n;
        if self.start >= self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }

    /// Read more bytes after the pending ones. `Ok(0)` is EOF.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.buf.len() == self.buf.capacity() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.len() == self.buf.capacity() {
            // Only reached while a head is incomplete. Grow as bytes come: to a head
            // buffer (kept for reuse afterwards), then a head buffer at a time up to the
            // head limit (a head that fills it is refused before the next read).
            let grown = if self.buf.capacity() < HEAD_BUF {
                HEAD_BUF
            } else {
                (self.buf.capacity() + HEAD_BUF).min(MAX_HEAD)
            };
            let grown = grown.max(self.buf.len() + 1);
            self.buf.reserve_exact(grown - self.buf.len());
        }
        let buf = std::mem::take(&mut self.buf);
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        self.buf = slice.into_inner();
        res
    }

    /// Write an answer the proxy made itself within `limit`: a client that does not take
    /// it in time is given up on (the caller closes the connection).
    pub(crate) async fn write_answer(
        &mut self,
        out: &mut Vec<u8>,
        limit: Duration,
    ) -> io::Result<()> {
        self.bytes_out += out.len() as u64;
        match monoio::time::timeout(limit, write_vec(&mut self.stream, out)).await {
            Ok(r) => r,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Answer an error the proxy makes itself (docs/behaviour.md §7) and return what
    /// happens to the connection and the status sent (`outcome::fate`; errors that leave
    /// the stream out of step close, `ProxyError::closes_connection`). A closing answer
    /// lingers, so a client still sending its body reads the answer instead of a reset.
    pub(crate) async fn answer_error(
        &mut self,
        ctx: &WorkerCtx,
        out: &mut Vec<u8>,
        e: ProxyError,
        asked: Asked,
    ) -> Served {
        let ended = if e.closes_connection() {
            AnswerEnd::ByClose
        } else {
            AnswerEnd::AtBoundary
        };
        let close = outcome::fate(asked, ended, ctx.stopping.get()) == After::Close;
        out.clear();
        Answer::error(e, &ctx.config).write_http1(out, close, self.head_request);
        let written = self
            .write_answer(out, ctx.config.body_timeout)
            .await
            .is_ok();
        if close && written {
            self.linger_close().await;
        }
        Served::new(After::close_if(close || !written), e.status())
    }

    /// Completes only when the client closed or reset its connection; pipelined bytes of
    /// a next request are left where they are (and then this never completes).
    pub(crate) async fn gone(&self) {
        loop {
            if self.stream.readable(false).await.is_err() {
                return;
            }
            match socket::peek(&self.stream) {
                Waiting::Eof | Waiting::Error => return,
                Waiting::Bytes => std::future::pending::<()>().await,
                Waiting::Nothing => {}
            }
        }
    }

    /// Close after an error answer while the client may still be sending (a body the
    /// proxy did not read): shut our side down so the client reads the whole answer, then
    /// discard what still arrives until EOF or `LINGER`. Closing at once with unread data
    /// would send a reset, and a reset can destroy the answer before the client reads it.
    pub(crate) async fn linger_close(&mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER;
        self.buf.clear();
        self.buf.reserve(HEAD_BUF);
        self.start = 0;
        loop {
            let buf = std::mem::take(&mut self.buf);
            let read = monoio::time::timeout_at(deadline.into(), self.stream.read(buf)).await;
            match read {
                Ok((Ok(n), mut buf)) if n > 0 => {
                    buf.clear();
                    self.buf = buf;
                }
                _ => return,
            }
        }
    }
}

/// Write a whole Vec on any stream and hand the (cleared) Vec back.
pub(crate) async fn write_vec(stream: &mut TcpStream, out: &mut Vec<u8>) -> io::Result<()> {
    let owned = std::mem::take(out);
    let (res, mut owned) = stream.write_all(owned).await;
    owned.clear();
    *out = owned;
    res.map(|_| ())
}

impl Downstream for ClientConn {
    /// Most answers come sooner, so they cost no extra poll (docs/behaviour.md §5).
    const WATCH_AFTER: Duration = Duration::from_millis(5);

    fn pending(&self) -> &[u8] {
        ClientConn::pending(self)
    }

    fn head_only(&self) -> bool {
        self.head_request
    }

    fn peer(&self) -> IpAddr {
        self.peer.ip()
    }

    /// Only an `Expect: 100-continue` the proxy answers; another expectation is the
    /// executor's to refuse.
    fn strips_expect(&self, head: &RequestHead) -> bool {
        head.expect_continue
    }

    fn gone(&self) -> impl Future<Output = ()> + '_ {
        ClientConn::gone(self)
    }
}

impl SocketDownstream for ClientConn {
    fn consume(&mut self, n: usize) {
        ClientConn::consume(self, n);
    }

    fn buffer(&mut self) -> (&mut Vec<u8>, usize) {
        (&mut self.buf, self.start)
    }

    fn socket(&mut self) -> (&mut TcpStream, &mut u64) {
        (&mut self.stream, &mut self.bytes_out)
    }

    fn count_in(&mut self, n: u64) {
        self.bytes_in += n;
    }

    async fn write_answer(&mut self, out: &mut Vec<u8>, limit: Duration) -> io::Result<()> {
        ClientConn::write_answer(self, out, limit).await
    }

    async fn linger_close(&mut self) {
        ClientConn::linger_close(self).await;
    }

    async fn answer_error(
        &mut self,
        ctx: &WorkerCtx,
        out: &mut Vec<u8>,
        e: ProxyError,
        asked: Asked,
    ) -> Served {
        ClientConn::answer_error(self, ctx, out, e, asked).await
    }
}
