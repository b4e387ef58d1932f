//! What the back end needs of the client a front end serves (its downstream): the request
//! bytes in hand, the socket the rest of the body comes from and the answer goes to,
//! whether the client is gone, and how an error answer is written. HTTP/1's client
//! connection implements it; the back end uses it generically (no `dyn`).

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use monoio::net::TcpStream;

use crate::answer::ProxyError;
use crate::ctx::WorkerCtx;
use crate::http::head::RequestHead;
use crate::outcome::{Asked, Served};

pub(crate) trait Downstream {
    /// How long the executor works on a request before the client is watched too
    /// (`ZERO`: at once, when watching costs nothing extra).
    const WATCH_AFTER: Duration;
    /// The request head as HTTP/1 bytes, and what followed it, not yet consumed.
    fn pending(&self) -> &[u8];
    /// The request is `HEAD`: its answer has no body, and answers the proxy makes none.
    fn head_only(&self) -> bool;
    fn peer(&self) -> IpAddr;
    /// The rewrite drops the request's `Expect` field: the proxy answers `100-continue`
    /// itself, so the executor never sees it.
    fn strips_expect(&self, head: &RequestHead) -> bool;
    /// Completes only when the client closed or reset its connection (or stream).
    fn gone(&self) -> impl Future<Output = ()> + '_;
}

/// What the back end still needs of a client it reaches through a socket (HTTP/1): the
/// client's buffer, the socket the rest of the body comes from and the answer goes to,
/// and how the connection is answered and closed.
pub(crate) trait SocketDownstream: Downstream {
    /// The request in hand was answered: drop its `n` bytes from what is pending.
    fn consume(&mut self, n: usize);
    /// The client's buffer and where the pending bytes start in it, to frame the body
    /// bytes that came with the head in place.
    fn buffer(&mut self) -> (&mut Vec<u8>, usize);
    /// The client's socket, and the count of bytes written to it.
    fn socket(&mut self) -> (&mut TcpStream, &mut u64);
    /// Count bytes of the request body read from the socket.
    fn count_in(&mut self, n: u64);
    /// Write an answer the proxy made itself within `limit`.
    async fn write_answer(&mut self, out: &mut Vec<u8>, limit: Duration) -> io::Result<()>;
    /// Close while the client may still be sending: it reads the answer, not a reset.
    async fn linger_close(&mut self);
    /// Answer an error (docs/behaviour.md §7); the connection's fate is `outcome::fate`'s.
    async fn answer_error(
        &mut self,
        ctx: &WorkerCtx,
        out: &mut Vec<u8>,
        e: ProxyError,
        asked: Asked,
    ) -> Served;
}
