//! `x-opr-addressing-method: broadcast`: send the request to every online executor at
//! once, answer `204` when all have answered; failures are logged, not returned.

use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::{
    connect, decode_chunks, read_client_body, read_into, read_response_head, write_keep, Failure,
};
use crate::buffers::BODY_BUF;
use crate::error::ProxyError;
use crate::http::chunked::ChunkedDecoder;
use crate::http::conn::{After, ClientConn};
use crate::http::head::{HeaderRef, RequestFraming, RequestHead, ResponseFraming};
use crate::http::rewrite::{self, RequestRewrite};
use crate::warn;
use crate::worker::WorkerCtx;

/// The body is copied to every executor, so it is held in memory: bounded by this (or
/// by `OPR_PROXY_MAX_BODY_SIZE` when smaller). Appwrite broadcasts body-less deletions.
pub const BROADCAST_MAX_BODY: u64 = 1024 * 1024;

pub async fn broadcast(
    ctx: &Rc<WorkerCtx>,
    conn: &mut ClientConn,
    head: &RequestHead,
    headers: &[HeaderRef],
    out: &mut Vec<u8>,
) -> (After, u16) {
    let limit = ctx
        .config
        .max_body_size
        .map_or(BROADCAST_MAX_BODY, |m| m.min(BROADCAST_MAX_BODY));
    let deadline = Instant::now() + ctx.config.max_timeout;
    let body =
        match monoio::time::timeout_at(deadline.into(), read_body(ctx, conn, head, limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(Some(e))) => return super::answer(ctx, conn, out, e, true).await,
            Ok(Err(None)) | Err(_) => return (After::Close, 0),
        };

    let snapshot = ctx.snapshot();
    let targets = ctx
        .picker
        .all_online(&snapshot, |i| ctx.board.is_flagged_offline(i));
    if targets.is_empty() {
        let close = !head.keep_alive;
        conn.consume(head.head_len);
        return super::answer(ctx, conn, out, ProxyError::NoOnlineExecutor, close).await;
    }

    // Every executor gets the body with a Content-Length, whatever the client used.
    let mut fixed = head.clone();
    fixed.framing = if body.is_empty() && head.framing == RequestFraming::Empty {
        RequestFraming::Empty
    } else {
        RequestFraming::Length(body.len() as u64)
    };
    let is_head = &conn.pending()[head.method.clone()] == b"HEAD";
    let mut tasks = Vec::with_capacity(targets.len());
    for &i in &targets {
        let status = &snapshot.executors[i];
        let Some(&addr) = status.addrs.first() else {
            warn!(
                "Broadcast to executor \"{}\" skipped: address not resolved",
                status.hostname
            );
            continue;
        };
        let mut request = Vec::with_capacity(1024 + body.len());
        let rw = RequestRewrite {
            authorization: &ctx.executor_authorization,
            forwarded_for: conn.peer.ip(),
            executor_host: &status.hostname,
            dev_executor_hostname: ctx
                .config
                .is_development()
                .then_some(status.hostname.as_str()),
            strip_expect: head.expect_continue,
        };
        rewrite::write_request_head(&mut request, conn.pending(), &fixed, headers, &rw);
        request.extend_from_slice(&body);
        let ctx = ctx.clone();
        let hostname = status.hostname.clone();
        tasks.push(monoio::spawn(async move {
            let result = monoio::time::timeout_at(
                deadline.into(),
                send_one(&ctx, i, addr, request, is_head),
            )
            .await;
            match result {
                Ok(Ok(_status)) => {}
                Ok(Err(reason)) => warn!("Broadcast to executor \"{hostname}\" failed: {reason}"),
                Err(_) => warn!("Broadcast to executor \"{hostname}\" failed: timed out"),
            }
        }));
    }
    conn.consume(head.head_len);
    for task in tasks {
        task.await;
    }

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n");
    let close = !head.keep_alive || ctx.stopping.get();
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let ok = conn.write_out(out).await.is_ok();
    (
        if close || !ok {
            After::Close
        } else {
            After::KeepAlive
        },
        204,
    )
}

/// Read the whole (bounded) request body. `Err(None)`: the client went away.
/// The head stays pending; body bytes are consumed.
async fn read_body(
    ctx: &WorkerCtx,
    conn: &mut ClientConn,
    head: &RequestHead,
    limit: u64,
) -> Result<Vec<u8>, Option<ProxyError>> {
    let body_start = conn.start + head.head_len;
    let stall = ctx.config.body_timeout;
    let mut body = Vec::new();
    match head.framing {
        RequestFraming::Empty => {}
        RequestFraming::Length(n) => {
            if n > limit {
                return Err(Some(ProxyError::BodyTooLarge));
            }
            let n = n as usize;
            let have = (conn.buf.len() - body_start).min(n);
            body.extend_from_slice(&conn.buf[body_start..body_start + have]);
            conn.buf.drain(body_start..body_start + have);
            let mut buf = ctx.bufs.get();
            while body.len() < n {
                match read_client_body(&mut conn.stream, &mut buf, n - body.len(), stall).await {
                    Ok(Some(got)) => body.extend_from_slice(&buf[..got]),
                    Ok(None) => return Err(None),
                    Err(()) => return Err(Some(ProxyError::BodyTimeout)),
                }
            }
            ctx.bufs.put(buf);
        }
        RequestFraming::Chunked => {
            let mut dec = ChunkedDecoder::new();
            // Decode what is buffered, then keep reading; payload is compacted in place.
            let mut pending = conn.buf.split_off(body_start);
            let mut buf = ctx.bufs.get();
            loop {
                let (consumed, kept) = decode_chunks(&mut dec, &mut pending, 0, true)
                    .map_err(|e| Some(ProxyError::BadChunk(e)))?;
                body.extend_from_slice(&pending[..kept]);
                if body.len() as u64 > limit {
                    return Err(Some(ProxyError::BodyTooLarge));
                }
                if dec.is_done() {
                    // Pipelined bytes after the body go back behind the head.
                    conn.buf.extend_from_slice(&pending[consumed..]);
                    break;
                }
                match read_client_body(&mut conn.stream, &mut buf, BODY_BUF, stall).await {
                    Ok(Some(got)) => {
                        pending.clear();
                        pending.extend_from_slice(&buf[..got]);
                    }
                    Ok(None) => return Err(None),
                    Err(()) => return Err(Some(ProxyError::BodyTimeout)),
                }
            }
            ctx.bufs.put(buf);
        }
    }
    Ok(body)
}

/// Deliver one copy and read (and discard) the executor's whole answer.
async fn send_one(
    ctx: &WorkerCtx,
    executor: usize,
    addr: std::net::SocketAddr,
    mut request: Vec<u8>,
    is_head: bool,
) -> Result<u16, String> {
    let pooled = ctx.pool.take(executor, addr);
    let mut ex: TcpStream = match pooled {
        Some(ex) => ex,
        None => match connect(ctx, addr).await {
            Ok(ex) => ex,
            Err(Failure::Unreachable(reason)) | Err(Failure::Failed(reason)) => return Err(reason),
        },
    };
    write_keep(&mut ex, &mut request)
        .await
        .map_err(|e| format!("sending failed: {e}"))?;
    let mut eb = ctx.bufs.get();
    let mut headers = Vec::new();
    let response = read_response_head(&mut ex, &mut eb, is_head, &mut headers)
        .await
        .map_err(|e| e.describe())?;
    let mut clean = response.keep_alive;
    let avail = eb.len() - response.head_len;
    match response.framing {
        ResponseFraming::NoBody => clean &= avail == 0,
        ResponseFraming::Length(n) => {
            let mut remaining = n.saturating_sub(avail as u64);
            clean &= avail as u64 <= n;
            while remaining > 0 {
                match read_into(&mut ex, &mut eb, remaining.min(BODY_BUF as u64) as usize).await {
                    Ok(0) | Err(_) => return Err("executor closed mid-body".into()),
                    Ok(got) => remaining -= got as u64,
                }
            }
        }
        ResponseFraming::Chunked => {
            let mut dec = ChunkedDecoder::new();
            let from = response.head_len;
            let (consumed, _) =
                decode_chunks(&mut dec, &mut eb, from, false).map_err(|e| format!("{e:?}"))?;
            let mut extra = avail - consumed;
            while !dec.is_done() {
                let got = match read_into(&mut ex, &mut eb, BODY_BUF).await {
                    Ok(0) | Err(_) => return Err("executor closed mid-body".into()),
                    Ok(got) => got,
                };
                let (consumed, _) =
                    decode_chunks(&mut dec, &mut eb, 0, false).map_err(|e| format!("{e:?}"))?;
                extra = got - consumed;
            }
            clean &= extra == 0;
        }
        ResponseFraming::UntilClose => {
            clean = false;
            loop {
                match read_into(&mut ex, &mut eb, BODY_BUF).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(format!("reading failed: {e}")),
                }
            }
        }
    }
    ctx.bufs.put(eb);
    if clean {
        ctx.pool.put(executor, addr, ex);
    }
    Ok(response.status)
}
