//! An HTTP/2 stream's request body as a source for the back end: its DATA frames, with
//! flow-control capacity released once a frame was written on. Failures are the pump's
//! (`PumpError`), so both front ends answer a failed body by one rule
//! (`forward::request::client_body_error`).

use std::cell::Cell;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use monoio::io::{AsyncWriteRent, AsyncWriteRentExt};

use crate::forward::pump::{self, PumpError};

/// The next DATA frame's bytes of a request body; `None` at its end. A reset stream (or
/// an ended connection) is a source that closed.
async fn next_data(body: &mut RecvStream, stall: Duration) -> Result<Option<Bytes>, PumpError> {
    match monoio::time::timeout(stall, body.data()).await {
        Err(_) => Err(PumpError::Stalled),
        Ok(None) => Ok(None),
        Ok(Some(Err(_))) => Err(PumpError::SourceClosed),
        Ok(Some(Ok(data))) => Ok(Some(data)),
    }
}

/// Stream the request body to the executor (`ex`): a length as it came, otherwise as
/// chunks framed in `out`; `bytes_in` counts what was read. A write that fails is the
/// executor's side (`PumpError::Sink`): it may have answered early.
pub(super) async fn send<W: AsyncWriteRent>(
    body: &mut RecvStream,
    ex: &mut W,
    (chunked, limit, stall): (bool, Option<u64>, Duration),
    bytes_in: &Cell<u64>,
    out: &mut Vec<u8>,
) -> Result<(), PumpError> {
    let mut total = 0u64;
    while let Some(data) = next_data(body, stall).await? {
        let n = data.len();
        total += n as u64;
        bytes_in.set(total);
        if limit.is_some_and(|max| total > max) {
            return Err(PumpError::TooLarge);
        }
        if n == 0 {
            continue;
        }
        if chunked {
            out.clear();
            pump::push_chunk(out, &data);
            pump::write_keep(ex, out)
                .await
                .map_err(|_| PumpError::Sink)?;
        } else {
            let (res, _) = ex.write_all(data).await;
            res.map_err(|_| PumpError::Sink)?;
        }
        let _ = body.flow_control().release_capacity(n);
    }
    if chunked {
        out.clear();
        out.extend_from_slice(pump::LAST_CHUNK);
        pump::write_keep(ex, out)
            .await
            .map_err(|_| PumpError::Sink)?;
    }
    Ok(())
}

/// Read the whole body into `collected`, at most `limit` bytes (a broadcast's);
/// `bytes_in` counts what was read.
pub(super) async fn collect(
    body: &mut RecvStream,
    collected: &mut Vec<u8>,
    (limit, stall): (u64, Duration),
    bytes_in: &Cell<u64>,
) -> Result<(), PumpError> {
    while let Some(data) = next_data(body, stall).await? {
        if (collected.len() + data.len()) as u64 > limit {
            return Err(PumpError::TooLarge);
        }
        collected.extend_from_slice(&data);
        bytes_in.set(collected.len() as u64);
        let _ = body.flow_control().release_capacity(data.len());
    }
    Ok(())
}
