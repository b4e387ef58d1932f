//! Body pumps: the client's request body to the executor, the executor's response
//! body to the client. Fixed-size buffers, exact lengths, framing validated as it flows.

use std::io;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::http::chunked::{ChunkedDecoder, ChunkedError};

/// Decode `buf[from..]` as chunked framing. Returns `(consumed, kept)`: with `strip` the
/// payload is compacted to `buf[from..from + kept]` (for HTTP/1.0 clients); without it the
/// raw, validated bytes `buf[from..from + consumed]` pass through unchanged.
pub fn decode_chunks(
    dec: &mut ChunkedDecoder,
    buf: &mut [u8],
    from: usize,
    strip: bool,
) -> Result<(usize, usize), ChunkedError> {
    let mut pos = from;
    let mut write = from;
    while pos < buf.len() && !dec.is_done() {
        let d = dec.decode(&buf[pos..])?;
        if strip && !d.data.is_empty() {
            buf.copy_within(pos + d.data.start..pos + d.data.end, write);
            write += d.data.len();
        }
        if d.consumed == 0 {
            break;
        }
        pos += d.consumed;
    }
    let consumed = pos - from;
    Ok((consumed, if strip { write - from } else { consumed }))
}

/// Read into `buf[..want]` (buf is cleared first). `Ok(0)` is EOF.
pub async fn read_into(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
) -> io::Result<usize> {
    let mut owned = std::mem::take(buf);
    owned.clear();
    let want = want.min(owned.capacity());
    let (res, slice) = stream.read(owned.slice_mut(0..want)).await;
    *buf = slice.into_inner();
    res
}

/// Read the next bytes of a client's body into `buf[..want]`: `Ok(None)` when the client
/// went away, `Err(())` when it sent nothing for `stall` (slow or stalled upload).
pub async fn read_client_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    want: usize,
    stall: std::time::Duration,
) -> Result<Option<usize>, ()> {
    match monoio::time::timeout(stall, read_into(stream, buf, want)).await {
        Err(_) => Err(()),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(None),
        Ok(Ok(n)) => Ok(Some(n)),
    }
}

/// Append to `buf` after its current bytes, up to its capacity. `Ok(0)` is EOF (or full).
pub async fn read_append(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let owned = std::mem::take(buf);
    let len = owned.len();
    if len == owned.capacity() {
        *buf = owned;
        return Ok(0);
    }
    let (res, slice) = stream.read(owned.slice_mut(len..)).await;
    *buf = slice.into_inner();
    res
}

/// Write `buf[from..to]` whole; `buf` comes back unchanged.
pub async fn write_range(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
) -> io::Result<()> {
    if from == to {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    let (res, slice) = stream.write_all(owned.slice(from..to)).await;
    *buf = slice.into_inner();
    res.map(|_| ())
}

/// Write `buf` whole without clearing it (it may be needed again for a retry).
pub async fn write_keep(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let owned = std::mem::take(buf);
    let (res, owned) = stream.write_all(owned).await;
    *buf = owned;
    res.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_compacts_payload_and_passthrough_keeps_bytes() {
        let msg = b"XX4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nT: v\r\n\r\nNEXT";
        let mut a = msg.to_vec();
        let mut dec = ChunkedDecoder::new();
        let (consumed, kept) = decode_chunks(&mut dec, &mut a, 2, true).unwrap();
        assert!(dec.is_done());
        assert_eq!(consumed, msg.len() - 2 - 4);
        assert_eq!(&a[2..2 + kept], b"Wikipedia");

        let mut b = msg.to_vec();
        let mut dec = ChunkedDecoder::new();
        let (consumed, kept) = decode_chunks(&mut dec, &mut b, 2, false).unwrap();
        assert_eq!(consumed, kept);
        assert_eq!(&b[2..2 + consumed], &msg[2..msg.len() - 4]);
    }

    #[test]
    fn split_input_decodes_across_calls() {
        let msg = b"3\r\nabc\r\n0\r\n\r\n";
        let mut dec = ChunkedDecoder::new();
        let mut payload = Vec::new();
        for part in msg.chunks(2) {
            let mut buf = part.to_vec();
            let (consumed, kept) = decode_chunks(&mut dec, &mut buf, 0, true).unwrap();
            assert_eq!(consumed, part.len());
            payload.extend_from_slice(&buf[..kept]);
        }
        assert!(dec.is_done());
        assert_eq!(payload, b"abc");
    }
}
