//! HTTP/2 with prior knowledge (h2c) on the client side: a connection that opens with
//! the HTTP/2 preface is served by `h2`, each stream in its own task and forwarded like
//! an HTTP/1.1 request (`stream`); executors are still spoken to over HTTP/1.1 from the
//! same pool. The limits against HTTP/2's own attacks are set here and in `guard`.

mod body;
mod fields;
mod guard;
mod head;
mod huffman;
mod io;
mod stream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::Reason;
use monoio::net::TcpStream;

use crate::ctx::WorkerCtx;
use crate::outcome::ClientClose;
use crate::warn;
use io::{H2Io, Trip};

/// RFC 9113 §3.4: the client connection preface.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Streams a client may have open at once (RFC 9113 §6.5.2 recommends at least 100).
const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Decoded header list, as HTTP/1's head limit (`http::head::MAX_HEAD`): a larger one is
/// answered 431 by h2 and never decoded into memory (HPACK bomb). h2 also caps the
/// CONTINUATION frames of one header block from this (the 2024 CONTINUATION flood).
const MAX_HEADER_LIST: u32 = crate::http::head::MAX_HEAD as u32;
/// Flow-control windows: what one client may have in flight towards the proxy.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Response bytes h2 buffers per stream before the pump waits for window.
const MAX_SEND_BUFFER: usize = 128 * 1024;
/// Streams reset by the client before they were accepted (rapid reset), and streams h2
/// itself reset for the client's protocol errors over the connection's life (streams
/// over the concurrency cap, over-size header lists, bad frames: "MadeYouReset"): past
/// these the connection gets GOAWAY `ENHANCE_YOUR_CALM`. 100 leaves room for a client
/// that opened streams before it saw the proxy's SETTINGS; a client that follows the
/// protocol provokes none.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 100;
/// How often a connection looks at the worker's stop flag and its own idleness: GOAWAY on
/// drain and the idle timeout are up to this late (as HTTP/1's idle sweep), and 10 000
/// idle HTTP/2 connections cost 10 000 cheap wake-ups a second.
const TICK: Duration = Duration::from_secs(1);
/// How long the GOAWAY to an offending client may take to leave.
const GOAWAY_FLUSH: Duration = Duration::from_secs(1);

/// Whether a connection's first bytes are the HTTP/2 preface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Preface {
    Yes,
    No,
    /// A prefix of it so far: read more.
    Partial,
}

pub(crate) fn preface(first: &[u8]) -> Preface {
    if first.len() >= PREFACE.len() {
        if first.starts_with(PREFACE) {
            Preface::Yes
        } else {
            Preface::No
        }
    } else if PREFACE.starts_with(first) {
        Preface::Partial
    } else {
        Preface::No
    }
}

/// Serve an HTTP/2 connection until it closes. `prefix`: the bytes already read (the
/// preface and whatever followed it).
pub(crate) async fn serve(
    ctx: &Rc<WorkerCtx>,
    stream: TcpStream,
    peer: SocketAddr,
    prefix: Vec<u8>,
) -> ClientClose {
    let trip = Rc::new(Trip::default());
    let io = H2Io::new(stream, prefix, trip.clone());
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
    let handshake = builder.handshake::<_, Bytes>(io);
    let mut conn = match monoio::time::timeout(ctx.config.header_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(_)) => return ClientClose::Closed,
        Err(_) => return ClientClose::HeaderTimeout,
    };

    let live = Rc::new(Cell::new(0usize));
    let budget = Rc::new(crate::forward::Budget::new(
        crate::forward::CONNECTION_BUDGET,
    ));
    let mut idle_since = Instant::now();
    let mut closing: Option<ClientClose> = None;
    let mut tick = monoio::time::interval(TICK);
    loop {
        monoio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    live.set(live.get() + 1);
                    let (ctx, live, budget) = (ctx.clone(), live.clone(), budget.clone());
                    monoio::spawn(async move {
                        stream::serve(ctx, peer, request, respond, budget).await;
                        live.set(live.get() - 1);
                    });
                }
                // h2 sent GOAWAY for a protocol error (CONTINUATION flood, reset limits).
                Some(Err(_)) => return closing.unwrap_or(ClientClose::Closed),
                None => return closing.unwrap_or(ClientClose::Client),
            },
            offense = trip.wait() => {
                log_cut_off(peer, offense);
                conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
                let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
                let _ = monoio::time::timeout(GOAWAY_FLUSH, closed).await;
                return ClientClose::Closed;
            },
            _ = tick.tick() => {
                // RFC 9113 gives no deadline for a header block; the proxy gives it the
                // header timeout, as HTTP/1 gives a head (a held block holds memory).
                let since = trip.block_since();
                if since.is_some_and(|t| t.elapsed() >= ctx.config.header_timeout) {
                    trip.set(guard::Offense::SlowHeaders);
                }
                // Drain: GOAWAY, in-flight streams finish, then h2 closes (accept: None).
                if ctx.stopping.get() && closing.is_none() {
                    conn.graceful_shutdown();
                    closing = Some(ClientClose::Drain);
                }
                if live.get() > 0 {
                    idle_since = Instant::now();
                } else if closing == Some(ClientClose::Drain) {
                    // Nothing left in flight: the final GOAWAY now, without waiting for
                    // the client to acknowledge the first one's PING.
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                } else if closing.is_none() && idle_since.elapsed() >= ctx.config.idle_timeout {
                    // No stream to finish: GOAWAY naming the last stream, then close.
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    closing = Some(ClientClose::Idle);
                }
            },
        }
    }
}

/// At most one line per worker per `CUT_OFF_LOG_EVERY` about cut-off clients: an attacker
/// that reconnects must not turn into a log flood.
const CUT_OFF_LOG_EVERY: Duration = Duration::from_secs(10);

thread_local! {
    /// When this worker last logged a cut-off, and how many it has not logged since.
    static CUT_OFF_LOG: Cell<(Option<Instant>, u64)> = const { Cell::new((None, 0)) };
}

fn log_cut_off(peer: SocketAddr, offense: guard::Offense) {
    CUT_OFF_LOG.with(|c| {
        let (last, quiet) = c.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < CUT_OFF_LOG_EVERY) {
            c.set((last, quiet + 1));
            return;
        }
        c.set((Some(now), 0));
        if quiet > 0 {
            warn!(
                "HTTP/2 client {peer} cut off: {} ({quiet} more cut off since the last line)",
                offense.describe()
            );
        } else {
            warn!("HTTP/2 client {peer} cut off: {}", offense.describe());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preface_is_recognised_whole_and_in_part() {
        assert_eq!(preface(PREFACE), Preface::Yes);
        assert_eq!(
            preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"),
            Preface::Yes
        );
        assert_eq!(preface(b"PRI * HT"), Preface::Partial);
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), Preface::No);
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), Preface::No);
    }
}
