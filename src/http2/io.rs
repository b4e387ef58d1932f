//! The client socket as `h2` reads and writes it: the bytes already read while looking
//! for the preface come first, then the socket through `monoio-compat`; every byte read
//! passes the frame guard, and once it trips reads stop and the driver is woken.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::guard::{FrameGuard, Offense};

/// Read and write buffer of the adapter (h2 writes frames of up to 16 KiB plus headers).
const ADAPTER_BUF: usize = 16 * 1024;

/// Set when the guard trips; the driver waits on it.
#[derive(Default)]
pub(crate) struct Trip {
    offense: Cell<Option<Offense>>,
    waker: RefCell<Option<Waker>>,
}

impl Trip {
    fn set(&self, offense: Offense) {
        self.offense.set(Some(offense));
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
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
    trip: Rc<Trip>,
}

impl H2Io {
    pub(crate) fn new(stream: TcpStream, prefix: Vec<u8>, trip: Rc<Trip>) -> H2Io {
        H2Io {
            prefix,
            taken: 0,
            inner: StreamWrapper::new_with_buffer_size(stream, ADAPTER_BUF, ADAPTER_BUF),
            guard: FrameGuard::new(Instant::now()),
            trip,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Tripped: nothing more from this client reaches h2 (the driver sends GOAWAY).
        if this.trip.offense.get().is_some() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
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
        if let Err(offense) = this.guard.scan(&buf.filled()[before..], Instant::now()) {
            // Take the bytes back: the offending frames never reach h2.
            buf.set_filled(before);
            this.trip.set(offense);
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
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
