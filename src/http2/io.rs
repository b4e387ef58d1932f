//! The client socket as `h2` reads and writes it: the bytes already read while looking
//! for the preface come first, then the socket through `monoio-compat`; header blocks are
//! checked on the way (`fields`), every byte passes the frame guard, and once it trips
//! reads stop and the driver is woken. Also the send side of one stream: DATA as its
//! window allows, and noticing its reset.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, SendStream};
use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::fields::Blocks;
use super::guard::{FrameGuard, Offense};
use crate::forward::pump::Front;

/// Read and write buffer of the adapter (h2 writes frames of up to 16 KiB plus headers).
const ADAPTER_BUF: usize = 16 * 1024;

/// Set when the guard trips; the driver waits on it.
#[derive(Default)]
pub(crate) struct Trip {
    offense: Cell<Option<Offense>>,
    waker: RefCell<Option<Waker>>,
    /// Since when a header block has been incomplete (the driver times it out).
    block_since: Cell<Option<Instant>>,
}

impl Trip {
    pub(crate) fn set(&self, offense: Offense) {
        self.offense.set(Some(offense));
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Since when the client has left a header block incomplete.
    pub(crate) fn block_since(&self) -> Option<Instant> {
        self.block_since.get()
    }

    /// Resolves once the guard tripped.
    pub(crate) async fn wait(&self) -> Offense {
        std::future::poll_fn(|cx| match self.offense.get() {
            Some(o) => Poll::Ready(o),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

pub(crate) struct H2Io {
    prefix: Vec<u8>,
    taken: usize,
    inner: StreamWrapper<TcpStream>,
    guard: FrameGuard,
    blocks: Blocks,
    trip: Rc<Trip>,
}

impl H2Io {
    pub(crate) fn new(stream: TcpStream, prefix: Vec<u8>, trip: Rc<Trip>) -> H2Io {
        H2Io {
            prefix,
            taken: 0,
            inner: StreamWrapper::new_with_buffer_size(stream, ADAPTER_BUF, ADAPTER_BUF),
            guard: FrameGuard::new(Instant::now()),
            blocks: Blocks::new(),
            trip,
        }
    }
}

impl H2Io {
    /// Bytes `buf.filled()[before..]` are about to go to h2: the guard sees them first.
    fn guarded(&mut self, buf: &mut ReadBuf<'_>, before: usize) -> Poll<io::Result<()>> {
        if let Err(offense) = self.guard.scan(&buf.filled()[before..], Instant::now()) {
            // Take the bytes back: the offending frames never reach h2.
            buf.set_filled(before);
            self.trip.set(offense);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Tripped: nothing more from this client reaches h2 (the driver sends GOAWAY).
            if this.trip.offense.get().is_some() {
                return Poll::Pending;
            }
            let before = buf.filled().len();
            if this.blocks.has_ready() {
                let n = this.blocks.take(buf.initialize_unfilled());
                buf.advance(n);
                return this.guarded(buf, before);
            }
            if this.taken < this.prefix.len() {
                let n = (this.prefix.len() - this.taken).min(buf.remaining());
                buf.put_slice(&this.prefix[this.taken..this.taken + n]);
                this.taken += n;
                if this.taken == this.prefix.len() {
                    this.prefix = Vec::new();
                    this.taken = 0;
                }
            } else {
                match Pin::new(&mut this.inner).poll_read(cx, buf) {
                    Poll::Ready(Ok(())) => {}
                    other => return other,
                }
            }
            let read = buf.filled().len() - before;
            if read == 0 {
                // The client's end: what is held goes to h2, which sees it end.
                if this.blocks.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.blocks.flush();
                continue;
            }
            let pass = if this.blocks.is_empty() {
                this.blocks.pass_in_place(&buf.filled()[before..])
            } else {
                0
            };
            if pass < read {
                let held = this.blocks.push(&buf.filled()[before + pass..]);
                buf.set_filled(before + pass);
                if held.is_err() {
                    this.trip.set(Offense::HeaderBlock);
                    return Poll::Pending;
                }
                let since = this.trip.block_since.get();
                this.trip
                    .block_since
                    .set(match (this.blocks.in_block(), since) {
                        (false, _) => None,
                        (true, Some(t)) => Some(t),
                        (true, None) => Some(Instant::now()),
                    });
            }
            if pass > 0 {
                return this.guarded(buf, before);
            }
        }
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Send `data` on an h2 stream as its window allows: h2 buffers no more than it granted
/// (`MAX_SEND_BUFFER`), so a slow client holds the pump, not memory. The stream is
/// borrowed only between awaits, so a reset can be watched on it meanwhile. A window
/// that grants nothing for `stall` fails with `TimedOut` (a client that stopped reading).
pub(crate) async fn send_data(
    send: &RefCell<SendStream<Bytes>>,
    mut data: &[u8],
    stall: Duration,
) -> std::io::Result<()> {
    while !data.is_empty() {
        send.borrow_mut().reserve_capacity(data.len());
        let granted = std::future::poll_fn(|cx| send.borrow_mut().poll_capacity(cx));
        let n = match monoio::time::timeout(stall, granted).await {
            Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
            Ok(Some(Ok(n))) => n.min(data.len()),
            Ok(Some(Err(e))) => return Err(std::io::Error::other(e)),
            Ok(None) => return Err(std::io::Error::other(h2::Error::from(Reason::CANCEL))),
        };
        if n == 0 {
            continue;
        }
        send.borrow_mut()
            .send_data(Bytes::copy_from_slice(&data[..n]), false)
            .map_err(std::io::Error::other)?;
        data = &data[n..];
    }
    Ok(())
}

/// Resolves when the client resets the stream (or its connection ends).
pub(crate) async fn reset(send: &RefCell<SendStream<Bytes>>) {
    let _ = std::future::poll_fn(|cx| send.borrow_mut().poll_reset(cx)).await;
}

/// The answer's body over h2, as the back end's pump writes it.
impl Front for RefCell<SendStream<Bytes>> {
    async fn send(&self, data: &[u8], stall: Duration) -> io::Result<()> {
        send_data(self, data, stall).await
    }
}
