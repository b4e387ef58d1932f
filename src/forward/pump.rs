//! The one body pump: how a message body is delimited (RFC 9112 §6.3) and how it leaves
//! (as received, without trailer fields, payload only, or re-framed as chunks). Used for
//! request bodies (client → executor), response bodies (executor → client) and broadcast
//! answers (executor → nowhere). Fixed buffers, exact lengths, framing checked as it flows.

use std::io;
use std::ops::Range;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::splice::{SpliceDestination, SpliceSource};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::tcp::TcpOwnedWriteHalf;
use monoio::net::TcpStream;

use crate::buffers::{Loan, PipePool};
use crate::http::chunked::{decode_chunks, ChunkedDecoder, ChunkedError, ChunkedOutput};

/// Room kept before the data of each read for a chunk-size line, and after it for the
/// CRLF, when a close-delimited body is re-framed as chunks: the size of one read
/// (≤ 128 KiB, `20000` in hex) and CRLF fit in 8 bytes.
const CHUNK_ROOM: usize = 8;
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// Bodies with at least this much left go socket → pipe → socket with splice: no copy
/// through user space. Smaller ones are one read and one write through the buffer.
const SPLICE_MIN: u64 = 64 * 1024;

/// How the body ends (RFC 9112 §6.3).
#[derive(Clone, Debug)]
pub(crate) enum Delimit {
    /// This many bytes remain.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the sender closes (responses only).
    Close,
}

/// What the pump writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Emit {
    /// The bytes as received (after validation).
    Raw,
    /// Chunked framing without the trailer fields (requests: docs/behaviour.md §5).
    RawWithoutTrailers,
    /// Only the payload of a chunked body (for HTTP/1.0 clients: delimited by close).
    Payload,
    /// A close-delimited body re-framed as chunks (for HTTP/1.1 clients, so their
    /// connection stays usable).
    AsChunks,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PumpError {
    /// The source closed or failed before the end of the body.
    SourceClosed,
    /// The source sent nothing for the stall limit.
    Stalled,
    /// The chunked framing broke RFC 9112 §7.1.
    Chunk(ChunkedError),
    /// The payload grew past the limit.
    TooLarge,
    /// Writing to the destination failed.
    Sink,
    /// The destination took no byte for its stall limit (a client that stopped reading).
    SinkStalled,
}

/// A front end's own body sink (HTTP/2: DATA frames on one stream), given to the back
/// end through its downstream. Used generically: one implementation per front end.
pub(crate) trait Front {
    /// Send `data` whole; a sink that takes nothing for `stall` fails with `TimedOut`.
    async fn send(&self, data: &[u8], stall: Duration) -> io::Result<()>;
}

/// No front-end sink (the pump writes to sockets or memory).
pub(crate) enum NoFront {}

impl Front for NoFront {
    async fn send(&self, _: &[u8], _: Duration) -> io::Result<()> {
        match *self {}
    }
}

/// A sink without a front end's own.
pub(crate) type PlainSink<'a> = Sink<'a, NoFront>;

/// Where the pump puts the body.
pub(crate) enum Sink<'a, F: Front> {
    /// A client's socket: a write that moves no byte within the duration is a stall (the
    /// client stopped reading its answer).
    Client(&'a mut TcpStream, Duration),
    /// The write side of an executor connection whose read side reads the answer
    /// meanwhile (a request body: the executor may answer before it is sent whole).
    Executor(&'a mut TcpOwnedWriteHalf),
    /// Kept in memory (a broadcast body, bounded by the body's limit).
    Collect(&'a mut Vec<u8>),
    /// Read and dropped (a broadcast's answers).
    Discard,
    /// A front end's sink (an HTTP/2 stream: the payload only, the body is pumped with
    /// `Emit::Payload` or a length); one that takes nothing for the duration is a stall.
    Front(&'a F, Duration),
}

impl<F: Front> Sink<'_, F> {
    async fn write(&mut self, buf: &mut Vec<u8>, from: usize, to: usize) -> Result<(), PumpError> {
        match self {
            // The socket's TCP_USER_TIMEOUT (socket::set_user_timeout) bounds a stall.
            Sink::Client(stream, _) => write_within(stream, buf, from, to, None)
                .await
                .map_err(sink_error),
            Sink::Executor(half) => write_within(half, buf, from, to, None)
                .await
                .map_err(|_| PumpError::Sink),
            Sink::Collect(body) => {
                body.extend_from_slice(&buf[from..to]);
                Ok(())
            }
            Sink::Discard => Ok(()),
            Sink::Front(front, stall) => {
                front.send(&buf[from..to], *stall).await.map_err(sink_error)
            }
        }
    }
}

/// A failed write: a stall (`TimedOut`) or anything else.
fn sink_error(e: io::Error) -> PumpError {
    if e.kind() == io::ErrorKind::TimedOut {
        PumpError::SinkStalled
    } else {
        PumpError::Sink
    }
}

/// One body in flight.
pub(crate) struct Body {
    delimit: Delimit,
    emit: Emit,
    /// Largest payload allowed (request bodies).
    limit: Option<u64>,
    /// Bytes `pump` read from its source and wrote to its sink (metrics, access log).
    pub(crate) read: u64,
    pub(crate) written: u64,
    /// Splice was wanted but no pipe could be made or the kernel refused it: the body
    /// was copied instead (counted in the metrics).
    pub(crate) splice_fallback: bool,
    /// Of `written`, the bytes moved with splice.
    pub(crate) spliced: u64,
}

impl Body {
    pub(crate) fn new(delimit: Delimit, emit: Emit, limit: Option<u64>) -> Body {
        Body {
            delimit,
            emit,
            limit,
            read: 0,
            written: 0,
            splice_fallback: false,
            spliced: 0,
        }
    }

    /// The whole body has been framed.
    pub(crate) fn is_done(&self) -> bool {
        match &self.delimit {
            Delimit::Length(n) => *n == 0,
            Delimit::Chunked(dec) => dec.is_done(),
            Delimit::Close => false,
        }
    }

    /// Frame `buf[from..to]` in place: returns `(emitted, consumed)`, the output being
    /// `buf[from..from + emitted]` (without chunk framing for `AsChunks`; see
    /// `push_framed`). Bytes after `from + consumed` belong to what follows the body.
    pub(crate) fn frame(
        &mut self,
        buf: &mut [u8],
        from: usize,
        to: usize,
    ) -> Result<(usize, usize), PumpError> {
        match &mut self.delimit {
            Delimit::Length(remaining) => {
                let take = (to - from).min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                *remaining -= take as u64;
                Ok((take, take))
            }
            Delimit::Chunked(dec) => {
                let output = match self.emit {
                    Emit::RawWithoutTrailers => ChunkedOutput::RawWithoutTrailers,
                    Emit::Payload => ChunkedOutput::Payload,
                    Emit::Raw | Emit::AsChunks => ChunkedOutput::Raw,
                };
                let (consumed, kept) =
                    decode_chunks(dec, &mut buf[..to], from, output).map_err(PumpError::Chunk)?;
                if self.limit.is_some_and(|max| dec.body_len() > max) {
                    return Err(PumpError::TooLarge);
                }
                Ok((kept, consumed))
            }
            Delimit::Close => Ok((to - from, to - from)),
        }
    }

    /// Append `data` to `out` as this body emits it (chunk framing for `AsChunks`).
    pub(crate) fn push_framed(&self, out: &mut Vec<u8>, data: &[u8]) {
        if self.emit == Emit::AsChunks {
            push_chunk(out, data);
        } else {
            out.extend_from_slice(data);
        }
    }

    /// Read the rest of the body from `src` and write it to `dst`, spliced through a
    /// pipe or copied through `buf` (taken from its pool only then). `stall` bounds each
    /// read (client bodies). Returns the bytes read past the end of the body
    /// (`buf[range]`, empty when none): pipelined client bytes, or leftovers that make an
    /// executor connection unusable.
    pub(crate) async fn pump<S: AsyncReadRent + SpliceSource, F: Front>(
        &mut self,
        src: &mut S,
        dst: Sink<'_, F>,
        buf: &mut Loan<'_, Vec<u8>>,
        stall: Option<Duration>,
        pipes: Option<&PipePool>,
    ) -> Result<Range<usize>, PumpError> {
        self.pump_after(src, dst, buf, stall, pipes, &mut Vec::new())
            .await
    }

    /// `pump`, with `held` (a response head and the body bytes that came with it) sent
    /// first: in the same write as the next body bytes when they are copied, which saves
    /// a write (and a small TCP segment) per mid-sized answer. `held` comes back empty
    /// once it was sent; still full on an error, nothing reached `dst`.
    pub(crate) async fn pump_after<S: AsyncReadRent + SpliceSource, F: Front>(
        &mut self,
        src: &mut S,
        mut dst: Sink<'_, F>,
        buf: &mut Loan<'_, Vec<u8>>,
        stall: Option<Duration>,
        pipes: Option<&PipePool>,
        held: &mut Vec<u8>,
    ) -> Result<Range<usize>, PumpError> {
        let splice = match (pipes, &self.delimit, &dst) {
            // A length-delimited body leaves as it came, whatever `emit` says.
            (Some(pipes), Delimit::Length(n), Sink::Client(..) | Sink::Executor(_))
                if *n >= SPLICE_MIN =>
            {
                Some(pipes)
            }
            _ => None,
        };
        let room = if self.emit == Emit::AsChunks {
            CHUNK_ROOM
        } else {
            0
        };
        if !held.is_empty() && (splice.is_some() || room != 0) {
            let len = held.len();
            dst.write(held, 0, len).await?;
            held.clear();
        }
        if let Some(pipes) = splice {
            if self.splice_to(src, &mut dst, pipes, stall).await? {
                return Ok(0..0);
            }
            self.splice_fallback = true;
        }
        let buf = buf.get();
        // Where the next read lands: after the held bytes the first time, else after room
        // for a chunk-size line.
        let mut at = room;
        if !held.is_empty() {
            buf.clear();
            buf.extend_from_slice(held);
            at = held.len();
        }
        while !self.is_done() {
            let space = buf.capacity() - 2 * room;
            let want = match self.delimit {
                Delimit::Length(n) => space.min(usize::try_from(n).unwrap_or(usize::MAX)),
                _ => space,
            };
            let n = read_at(src, buf, at, want, stall).await?;
            if n == 0 {
                let buffered = (at > room).then_some(at);
                return self.source_closed(&mut dst, buf, buffered, held).await;
            }
            self.read += n as u64;
            let (emitted, consumed) = self.frame(buf, at, at + n)?;
            // Held bytes (`buf[..at]`, only ever without room) go out with these.
            let held_len = at - room;
            let (start, end) = if self.emit == Emit::AsChunks {
                frame_in_place(buf, at, emitted)
            } else {
                (0, at + emitted)
            };
            dst.write(buf, start, end).await?;
            held.clear();
            self.written += (end - start - held_len) as u64;
            if consumed < n {
                return Ok(at + consumed..at + n);
            }
            at = room;
        }
        Ok(0..0)
    }
}

impl Body {
    /// The source closed: the end of a close-delimited body (`buf[..buffered]` goes out,
    /// and the last chunk when re-framed); for any other body, an error.
    async fn source_closed<F: Front>(
        &mut self,
        dst: &mut Sink<'_, F>,
        buf: &mut Vec<u8>,
        buffered: Option<usize>,
        held: &mut Vec<u8>,
    ) -> Result<Range<usize>, PumpError> {
        if !matches!(self.delimit, Delimit::Close) {
            return Err(PumpError::SourceClosed);
        }
        if let Some(len) = buffered {
            dst.write(buf, 0, len).await?;
            held.clear();
        }
        if self.emit == Emit::AsChunks {
            if let Sink::Client(stream, _) = dst {
                let (res, _) = stream.write_all(LAST_CHUNK).await;
                res.map_err(sink_error)?;
                self.written += LAST_CHUNK.len() as u64;
            }
        }
        Ok(0..0)
    }

    /// Splice the rest of the body to a socket sink (`splice`); `Ok(false)`: copy instead.
    async fn splice_to<S: SpliceSource, F: Front>(
        &mut self,
        src: &mut S,
        dst: &mut Sink<'_, F>,
        pipes: &PipePool,
        stall: Option<Duration>,
    ) -> Result<bool, PumpError> {
        match dst {
            Sink::Client(out, sink_stall) => {
                let stalls = (stall, Some(*sink_stall));
                self.splice(src, *out, pipes, stalls).await
            }
            Sink::Executor(out) => self.splice(src, *out, pipes, (stall, None)).await,
            _ => Ok(false),
        }
    }

    /// Move the rest of a Content-Length body with splice. `Ok(false)`: nothing was moved
    /// because no pipe could be made or the kernel refused the first splice; copy instead.
    /// A pipe goes back to the pool only empty; on any error it is closed.
    /// `stall`: the bounds of each step into the pipe (a source that sends nothing) and
    /// out of it (a destination that takes nothing).
    async fn splice<S: SpliceSource, D: SpliceDestination>(
        &mut self,
        src: &mut S,
        dst: &mut D,
        pipes: &PipePool,
        (stall, sink_stall): (Option<Duration>, Option<Duration>),
    ) -> Result<bool, PumpError> {
        let Some(mut pipe) = pipes.take() else {
            return Ok(false);
        };
        let mut moved = false;
        while let Delimit::Length(remaining) = self.delimit {
            if remaining == 0 {
                break;
            }
            // One step fills the pipe at most (`buffers::PIPE_SIZE`, when it could grow).
            let want = remaining.min(u64::from(pipe.size)) as u32;
            let into = src.splice_to_pipe(&mut pipe.w, want);
            let got = match stall {
                Some(limit) => match monoio::time::timeout(limit, into).await {
                    Ok(r) => r,
                    Err(_) => return Err(PumpError::Stalled),
                },
                None => into.await,
            };
            let got = match got {
                Ok(0) => return Err(PumpError::SourceClosed),
                Ok(n) => n,
                Err(_) if !moved => {
                    pipes.put(pipe);
                    return Ok(false);
                }
                Err(_) => return Err(PumpError::SourceClosed),
            };
            moved = true;
            self.read += u64::from(got);
            let mut left = got;
            while left > 0 {
                let out = dst.splice_from_pipe(&mut pipe.r, left);
                let put = match sink_stall {
                    Some(limit) => match monoio::time::timeout(limit, out).await {
                        Ok(r) => r,
                        Err(_) => return Err(PumpError::SinkStalled),
                    },
                    None => out.await,
                };
                match put {
                    Ok(0) | Err(_) => return Err(PumpError::Sink),
                    Ok(n) => left -= n.min(left),
                }
            }
            self.written += u64::from(got);
            self.spliced += u64::from(got);
            self.delimit = Delimit::Length(remaining - u64::from(got));
        }
        pipes.put(pipe);
        Ok(true)
    }
}

/// Read at most `want` bytes into `buf[at..]` (`buf` is reset to `at` zero bytes first).
async fn read_at<S: AsyncReadRent>(
    src: &mut S,
    buf: &mut Vec<u8>,
    at: usize,
    want: usize,
    stall: Option<Duration>,
) -> Result<usize, PumpError> {
    let mut owned = std::mem::take(buf);
    // Bytes before `at` are kept (held bytes) or room for a chunk-size line.
    owned.truncate(at);
    owned.resize(at, 0);
    let end = at + want.min(owned.capacity() - at);
    let read = src.read(owned.slice_mut(at..end));
    let (res, slice) = match stall {
        Some(limit) => match monoio::time::timeout(limit, read).await {
            Ok(r) => r,
            Err(_) => return Err(PumpError::Stalled),
        },
        None => read.await,
    };
    *buf = slice.into_inner();
    match res {
        Ok(n) => Ok(n),
        Err(_) => Err(PumpError::SourceClosed),
    }
}

/// Put the chunk-size line before `buf[at..at + len]` and CRLF after it; returns the
/// range to write. `len == 0` gives an empty range (a zero-size chunk would end the body).
fn frame_in_place(buf: &mut Vec<u8>, at: usize, len: usize) -> (usize, usize) {
    if len == 0 {
        return (at, at);
    }
    let mut line = [0u8; CHUNK_ROOM];
    let n = chunk_size_line(&mut line, len);
    let start = at - n;
    buf[start..at].copy_from_slice(&line[..n]);
    buf.truncate(at + len);
    buf.extend_from_slice(b"\r\n");
    (start, at + len + 2)
}

/// Append `data` as one chunk (RFC 9112 §7.1); nothing for no data (an empty chunk
/// would end the body).
pub(crate) fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        push_chunk_size(out, data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut line = [0u8; 20];
    let n = chunk_size_line(&mut line, len);
    out.extend_from_slice(&line[..n]);
}

/// `<hex len>\r\n` into `line`; returns its length.
fn chunk_size_line(line: &mut [u8], len: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = ((usize::BITS - len.leading_zeros()).div_ceil(4)).max(1) as usize;
    for i in 0..digits {
        line[digits - 1 - i] = HEX[(len >> (4 * i)) & 15];
    }
    line[digits] = b'\r';
    line[digits + 1] = b'\n';
    digits + 2
}

/// Write `buf[from..to]` whole; `buf` comes back unchanged. With `stall`, a write that
/// moves no byte for that long fails with `TimedOut` (and `buf` is lost with the
/// cancelled write: the caller closes the connection).
pub(crate) async fn write_within<W: AsyncWriteRent>(
    stream: &mut W,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    stall: Option<Duration>,
) -> io::Result<()> {
    let Some(limit) = stall else {
        if from == to {
            return Ok(());
        }
        let owned = std::mem::take(buf);
        let (res, slice) = stream.write_all(owned.slice(from..to)).await;
        *buf = slice.into_inner();
        return res.map(|_| ());
    };
    let mut at = from;
    while at < to {
        let owned = std::mem::take(buf);
        let write = stream.write(owned.slice(at..to));
        let Ok((res, slice)) = monoio::time::timeout(limit, write).await else {
            return Err(io::ErrorKind::TimedOut.into());
        };
        *buf = slice.into_inner();
        match res? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => at += n,
        }
    }
    Ok(())
}

/// Write `buf` whole without clearing it (it may be needed again for a replay).
pub(crate) async fn write_keep<W: AsyncWriteRent>(
    stream: &mut W,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let owned = std::mem::take(buf);
    let (res, owned) = stream.write_all(owned).await;
    *buf = owned;
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_lines() {
        let mut line = [0u8; 20];
        for (len, want) in [
            (1, "1\r\n"),
            (15, "f\r\n"),
            (16, "10\r\n"),
            (0x20000, "20000\r\n"),
        ] {
            let n = chunk_size_line(&mut line, len);
            assert_eq!(&line[..n], want.as_bytes());
        }
        let n = chunk_size_line(&mut line, 128 * 1024);
        assert!(n <= CHUNK_ROOM);
    }

    #[test]
    fn as_chunks_frames_in_place_and_in_out() {
        let mut buf = Vec::with_capacity(64);
        buf.resize(CHUNK_ROOM, 0);
        buf.extend_from_slice(b"hello");
        let (s, e) = frame_in_place(&mut buf, CHUNK_ROOM, 5);
        assert_eq!(&buf[s..e], b"5\r\nhello\r\n");
        let body = Body::new(Delimit::Close, Emit::AsChunks, None);
        let mut out = b"HEAD".to_vec();
        body.push_framed(&mut out, b"abc");
        body.push_framed(&mut out, b"");
        assert_eq!(out, b"HEAD3\r\nabc\r\n");
    }

    #[test]
    fn length_frames_only_its_bytes() {
        let mut body = Body::new(Delimit::Length(3), Emit::Raw, None);
        let mut buf = b"abcdef".to_vec();
        assert_eq!(body.frame(&mut buf, 0, 6), Ok((3, 3)));
        assert!(body.is_done());
    }

    #[test]
    fn chunked_request_limit_and_trailers() {
        let mut body = Body::new(
            Delimit::Chunked(ChunkedDecoder::new()),
            Emit::RawWithoutTrailers,
            Some(4),
        );
        let mut buf = b"3\r\nabc\r\n0\r\nAuthorization: x\r\n\r\nNEXT".to_vec();
        let len = buf.len();
        let (kept, consumed) = body.frame(&mut buf, 0, len).unwrap();
        assert!(body.is_done());
        assert_eq!(&buf[..kept], b"3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(&buf[consumed..len], b"NEXT");
        let mut big = Body::new(Delimit::Chunked(ChunkedDecoder::new()), Emit::Raw, Some(4));
        let mut buf = b"5\r\nabcde\r\n".to_vec();
        assert_eq!(big.frame(&mut buf, 0, 10), Err(PumpError::TooLarge));
    }
}
