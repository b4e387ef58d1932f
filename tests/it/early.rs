//! Issue 19: an executor that answers before it read the request body (RFC 9112 §9.6), and
//! a client that stops reading a forwarded answer, over HTTP/1 and h2c. The proxy runs as a
//! child process (its open fds are counted) against the scripted raw executor.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::h2raw::*;
use crate::support::scripted::*;
use crate::support::*;
use bytes::Bytes;
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const TOO_LARGE: &[u8] = b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!";
const NO_HEALTH: (&str, &str) = ("OPR_PROXY_HEALTHCHECK", "disabled");

/// `/upload` is answered `413` as soon as its head arrived, and then not read for 30 s;
/// anything else is read whole and answered with its genuine body.
fn answers_413_early() -> ScriptedExecutor {
    ScriptedExecutor::start_on_head(|conn, index, req| {
        if req.target() == "/upload" {
            vec![Action::Write(TOO_LARGE.to_vec()), Action::Pause(30_000)]
        } else {
            vec![Action::ReadRequest, Action::Write(genuine(conn, index))]
        }
    })
}

/// `/upload` is answered with a `200` head as soon as its head arrived; the answer's body
/// (`OK`) follows once the whole request was read.
fn answers_200_early() -> ScriptedExecutor {
    ScriptedExecutor::start_on_head(|conn, index, req| {
        if req.target() == "/upload" {
            vec![
                Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec()),
                Action::ReadRequest,
                Action::Write(b"OK".to_vec()),
            ]
        } else {
            vec![Action::ReadRequest, Action::Write(genuine(conn, index))]
        }
    })
}

fn get(addr: std::net::SocketAddr, target: &str) -> Response {
    let auth = bearer();
    Client::connect(addr).request("GET", target, &[("Authorization", &auth)], b"")
}

/// The proxy's open sockets (its pipes come and go with its pipe pool).
fn sockets(p: &ProxyProcess) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", p.pid())) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// Wait until the proxy holds `want` sockets (clients close asynchronously): none is
/// left behind.
fn assert_fds(p: &ProxyProcess, want: usize, what: &str) {
    let settled = eventually(Duration::from_secs(10), || sockets(p) == want);
    assert!(
        settled,
        "{what}: {} open sockets, {want} expected",
        sockets(p)
    );
}

/// The proxy with one executor; returns it and its socket count with one executor
/// connection pooled (after a warm-up upload, which the next request reuses).
fn warm_proxy(ex: &ScriptedExecutor, extra: &[(&str, &str)]) -> (ProxyProcess, usize) {
    let mut env = vec![NO_HEALTH, ("OPR_PROXY_MAX_BODY_SIZE", "0")];
    env.extend_from_slice(extra);
    let p = ProxyProcess::start(&[ex.hostname()], &env);
    let idle = sockets(&p);
    // A 1 MiB upload the executor reads before it answers: the body streams while the
    // answer is awaited, and the connection is pooled after it as before.
    let auth = bearer();
    let body = vec![b'w'; MIB as usize];
    let r = Client::connect(p.addr).request("POST", "/warm", &[("Authorization", &auth)], &body);
    assert_eq!(r.status, 200, "warm-up: {}", r.text());
    assert_eq!(ex.requests_to("/warm")[0].body().len(), body.len());
    assert_fds(
        &p,
        idle + 1,
        "one executor connection pooled after a streamed upload",
    );
    (p, idle + 1)
}

/// Issue 19 item 1 over HTTP/1: the executor answers `413` right after the head of a
/// 64 MiB upload and stops reading. The client gets the answer at once (not when the
/// executor closes 30 s later), the connection ends after it (lingering close), the
/// executor connection is not pooled, and no fd is left behind.
#[test]
fn an_early_413_is_relayed_at_once_while_the_client_uploads() {
    let ex = answers_413_early();
    let (p, fds) = warm_proxy(&ex, &[]);
    let mut c = Client::connect(p.addr);
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
            bearer(),
            64 * MIB
        )
        .as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0u64;
        while sent < 64 * MIB {
            match writer.write(&piece) {
                Ok(n) if n > 0 => sent += n as u64,
                _ => break,
            }
        }
    });
    let started = Instant::now();
    let r = c.read_response(false).expect("the executor's answer");
    let took = started.elapsed();
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.text(), "too big!");
    assert!(
        took < Duration::from_secs(5),
        "the early answer took {took:?}: it waited for the upload"
    );
    assert_eq!(r.header("connection"), Some("close"));
    // The connection ends after the answer: EOF (or a reset once the drain gave up).
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let after = c.stream.read(&mut [0u8; 1]);
    assert!(
        matches!(after, Ok(0))
            || after
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "after the early answer: {after:?} instead of the end of the connection"
    );
    drop(c);
    uploader.join().unwrap();

    // The next request opens a new executor connection: the early one was not pooled.
    let r = get(p.addr, "/b");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        ex.request_connections(),
        2,
        "the early answer's connection was reused"
    );
    assert_fds(&p, fds, "after the early answer");
}

/// Issue 19 item 1: an executor that answers `200` at once but reads the whole body
/// before it ends its answer gets every byte (checksum), and the client gets the head
/// while it is still uploading.
#[test]
fn an_early_200_whose_executor_keeps_reading_gets_the_whole_body() {
    const N: u64 = 16 * MIB;
    let ex = answers_200_early();
    let (p, fds) = warm_proxy(&ex, &[]);
    let mut c = Client::connect(p.addr);
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nContent-Length: {N}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    // Half the body, then the rest only once the answer's head arrived (or 20 s passed).
    let head_seen = Arc::new(AtomicBool::new(false));
    let seen = head_seen.clone();
    let mut writer = c.stream.try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let mut hasher = Sha256::new();
        let mut piece = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        let mut seen_while_uploading = false;
        while sent < N {
            if sent == N / 2 {
                seen_while_uploading =
                    eventually(Duration::from_secs(20), || seen.load(Ordering::Relaxed));
            }
            for (i, b) in piece.iter_mut().enumerate() {
                *b = pattern_byte(sent + i as u64);
            }
            writer.write_all(&piece).expect("upload");
            hasher.update(&piece);
            sent += piece.len() as u64;
        }
        (seen_while_uploading, hex(&hasher.finalize()))
    });
    let (status, headers) = c.read_head().expect("the answer's head");
    head_seen.store(true, Ordering::Relaxed);
    assert_eq!(status, 200);
    let mut body = Vec::new();
    let cl = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.clone());
    let truncated = c
        .read_body(None, cl.as_deref(), &mut |b| body.extend_from_slice(b))
        .expect("the answer's body");
    assert!(!truncated);
    assert_eq!(body, b"OK");
    let (seen_while_uploading, sha) = uploader.join().unwrap();
    assert!(
        seen_while_uploading,
        "the answer's head waited for the whole upload"
    );
    let recorded = ex.requests_to("/upload");
    assert_eq!(recorded.len(), 1);
    let got = recorded[0].body();
    assert_eq!(got.len() as u64, N, "the executor got part of the body");
    assert_eq!(
        hex(&Sha256::digest(got)),
        sha,
        "the executor got other bytes"
    );
    drop(c);
    assert_fds(
        &p,
        fds - 1,
        "after the early answer (its executor connection closed)",
    );
}

/// A request pipelined right after a streamed chunked upload (the same write: the body's
/// last read takes its first bytes) is kept while the upload's answer is awaited and
/// served next, on the executor connection the upload left in the pool.
#[test]
fn a_request_pipelined_after_a_streamed_upload_is_served_next() {
    let ex = answers_413_early();
    let p = ProxyProcess::start(
        &[ex.hostname()],
        &[NO_HEALTH, ("OPR_PROXY_MAX_BODY_SIZE", "0")],
    );
    let auth = bearer();
    let mut raw = format!(
        "POST /up HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n\r\n{MIB:x}\r\n"
    )
    .into_bytes();
    raw.resize(raw.len() + MIB as usize, b'u');
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    raw.extend_from_slice(
        format!("GET /next HTTP/1.1\r\nHost: t\r\nAuthorization: {auth}\r\n\r\n").as_bytes(),
    );
    let mut c = Client::connect(p.addr);
    c.send(&raw);
    let first = c.read_response(false).expect("the upload's answer");
    assert_eq!(first.text(), genuine_body(0, 0), "{}", first.text());
    let second = c
        .read_response(false)
        .expect("the pipelined request's answer");
    assert_eq!(second.text(), genuine_body(0, 1), "{}", second.text());
    let up = ex.requests_to("/up")[0].body().to_vec();
    assert!(up.ends_with(b"\r\n0\r\n\r\n") && up.len() as u64 > MIB);
}

/// Run `f` on a monoio runtime (the `h2` crate's client over monoio-compat).
fn on_runtime<F: std::future::Future>(f: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap();
    rt.block_on(f)
}

fn h2_request(addr: std::net::SocketAddr, method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("authorization", bearer())
        .body(())
        .unwrap()
}

/// Issue 19 item 1 over h2c: the stream gets the early `413` whole, then
/// `RST_STREAM(NO_ERROR)` for its upload (RFC 9113 §8.1); the next stream on the same
/// connection is served on a new executor connection.
#[test]
fn an_early_413_over_h2_ends_the_stream_with_no_error() {
    let ex = answers_413_early();
    let (p, fds) = warm_proxy(&ex, &[]);
    let addr = p.addr;
    let (status, body, took, reset, next) = on_runtime(async move {
        let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(monoio_compat::StreamWrapper::new(tcp))
            .await
            .unwrap();
        monoio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = h2_request(addr, "POST", "/upload");
        request
            .headers_mut()
            .insert("content-length", (64 * MIB).to_string().parse().unwrap());
        let (response, mut upload) = send.send_request(request, false).unwrap();
        // Upload as the window allows until the stream is reset; then its reason.
        let uploader = monoio::spawn(async move {
            let piece = Bytes::from(vec![b'x'; 64 * 1024]);
            let mut sent = 0u64;
            while sent < 64 * MIB {
                upload.reserve_capacity(piece.len());
                match std::future::poll_fn(|cx| upload.poll_capacity(cx)).await {
                    Some(Ok(n)) if n > 0 => {
                        let n = n.min(piece.len());
                        if upload.send_data(piece.slice(..n), false).is_err() {
                            break;
                        }
                        sent += n as u64;
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            std::future::poll_fn(|cx| upload.poll_reset(cx)).await
        });
        let started = Instant::now();
        let response = monoio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("the early answer within 10 s")
            .expect("a response");
        let took = started.elapsed();
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut stream = response.into_body();
        while let Some(Ok(data)) = stream.data().await {
            let _ = stream.flow_control().release_capacity(data.len());
            body.extend_from_slice(&data);
        }
        let reset = monoio::time::timeout(Duration::from_secs(10), uploader)
            .await
            .map(|r| r.map_err(|e| e.to_string()));
        let (next, _) = send
            .send_request(h2_request(addr, "GET", "/b"), true)
            .unwrap();
        let next = next.await.map(|r| r.status().as_u16()).ok();
        (status, body, took, reset, next)
    });
    assert_eq!(status, 413);
    assert_eq!(body, b"too big!");
    assert!(
        took < Duration::from_secs(5),
        "the early answer took {took:?}: it waited for the upload"
    );
    assert_eq!(
        reset,
        Ok(Ok(h2::Reason::NO_ERROR)),
        "the upload must be reset with NO_ERROR after the answer"
    );
    assert_eq!(next, Some(200), "the connection's next stream");
    assert_eq!(
        ex.request_connections(),
        2,
        "the early answer's connection was reused"
    );
    assert_fds(&p, fds, "after the early answer");
}

/// Issue 19 item 1 over h2c: an executor that answers `200` at once and reads the whole
/// body before it ends its answer gets every byte (checksum), and the stream gets the
/// head while the client is still uploading.
#[test]
fn an_early_200_over_h2_whose_executor_keeps_reading_gets_the_whole_body() {
    const N: u64 = 16 * MIB;
    let ex = answers_200_early();
    let (p, fds) = warm_proxy(&ex, &[]);
    let addr = p.addr;
    let (status, body, seen_while_uploading, sha) = on_runtime(async move {
        let tcp = monoio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(monoio_compat::StreamWrapper::new(tcp))
            .await
            .unwrap();
        monoio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = h2_request(addr, "POST", "/upload");
        request
            .headers_mut()
            .insert("content-length", N.to_string().parse().unwrap());
        let (response, mut upload) = send.send_request(request, false).unwrap();
        // Half the body, then the rest only once the answer's head arrived (or 20 s passed).
        let head_seen = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = head_seen.clone();
        let uploader = monoio::spawn(async move {
            let mut hasher = Sha256::new();
            let mut sent = 0u64;
            let mut seen_while_uploading = false;
            while sent < N {
                if sent == N / 2 {
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while !seen.get() && Instant::now() < deadline {
                        monoio::time::sleep(Duration::from_millis(10)).await;
                    }
                    seen_while_uploading = seen.get();
                }
                let step = (N / 2 - sent % (N / 2)).min(64 * 1024);
                upload.reserve_capacity(step as usize);
                let n = match std::future::poll_fn(|cx| upload.poll_capacity(cx)).await {
                    Some(Ok(n)) => (n as u64).min(step),
                    _ => break,
                };
                if n == 0 {
                    continue;
                }
                let piece: Vec<u8> = (sent..sent + n).map(pattern_byte).collect();
                hasher.update(&piece);
                sent += n;
                if upload.send_data(Bytes::from(piece), sent == N).is_err() {
                    break;
                }
            }
            (seen_while_uploading, hex(&hasher.finalize()))
        });
        let response = monoio::time::timeout(Duration::from_secs(20), response)
            .await
            .expect("the answer's head within 20 s")
            .expect("a response");
        head_seen.set(true);
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut stream = response.into_body();
        while let Some(Ok(data)) = stream.data().await {
            let _ = stream.flow_control().release_capacity(data.len());
            body.extend_from_slice(&data);
        }
        let (seen_while_uploading, sha) = uploader.await;
        (status, body, seen_while_uploading, sha)
    });
    assert_eq!(status, 200);
    assert_eq!(body, b"OK");
    assert!(
        seen_while_uploading,
        "the answer's head waited for the whole upload"
    );
    let recorded = ex.requests_to("/upload");
    assert_eq!(recorded.len(), 1);
    let got = recorded[0].body();
    assert_eq!(got.len() as u64, N, "the executor got part of the body");
    assert_eq!(
        hex(&Sha256::digest(got)),
        sha,
        "the executor got other bytes"
    );
    assert_fds(
        &p,
        fds - 1,
        "after the early answer (its executor connection closed)",
    );
}

/// `/big` is answered with a 64 MiB body.
fn big_answer() -> ScriptedExecutor {
    ScriptedExecutor::start(|conn, index, req| {
        if req.target() != "/big" {
            return vec![Action::Write(genuine(conn, index))];
        }
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 64 * MIB).into_bytes();
        answer.resize(answer.len() + 64 * MIB as usize, b'd');
        vec![Action::Write(answer)]
    })
}

/// The proxy's count of executor connections closed because their client stalled.
fn stalled_count(addr: std::net::SocketAddr) -> u64 {
    let r = get(addr, "/v1/proxy/metrics");
    r.text()
        .lines()
        .filter(|l| l.starts_with("opr_proxy_executor_connections_discarded_total"))
        .filter(|l| l.contains("reason=\"client_stalled\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The scripted executor's connection `i` saw the proxy close it within `within`.
fn closed_by_proxy(ex: &ScriptedExecutor, i: usize, within: Duration) -> bool {
    eventually(within, || ex.conn(i).is_some_and(|c| c.eof_at.is_some()))
}

/// Issue 19 item 2 over HTTP/1: a client that reads nothing of a 64 MiB answer is cut off
/// after `OPR_PROXY_BODY_TIMEOUT` (1 s here) instead of `OPR_PROXY_MAX_TIMEOUT`: both
/// connections close, and the stall is counted. Spliced (a stall bound per step) ...
#[test]
fn a_client_that_reads_nothing_of_a_large_answer_is_cut_off() {
    reads_nothing_of_a_large_answer("auto");
}

/// ... and copied (writes bounded by the client socket's `TCP_USER_TIMEOUT`).
#[test]
fn a_client_that_reads_nothing_of_a_copied_answer_is_cut_off() {
    reads_nothing_of_a_large_answer("off");
}

fn reads_nothing_of_a_large_answer(splice: &str) {
    let ex = big_answer();
    let p = ProxyProcess::start(
        &[ex.hostname()],
        &[
            NO_HEALTH,
            ("OPR_PROXY_BODY_TIMEOUT", "1"),
            ("OPR_PROXY_SPLICE", splice),
        ],
    );
    let idle = sockets(&p);
    let mut c = Client::connect(p.addr);
    c.send(
        format!(
            "GET /big HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    assert!(
        closed_by_proxy(&ex, 0, Duration::from_secs(20)),
        "the executor connection of a client that stopped reading stayed open"
    );
    // What the client can still read ends well before the answer's end.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n as u64,
        }
    }
    assert!(
        got < 64 * MIB,
        "the client got the whole answer ({got} bytes)"
    );
    drop(c);
    assert_eq!(stalled_count(p.addr), 1);
    assert!(
        p.log().contains("took no byte of its answer"),
        "the stall is not logged: {}",
        p.log()
    );
    assert_fds(&p, idle, "after the stalled client");
}

/// Issue 19 item 2 over h2c: a stream whose client never opens its window past the
/// initial 64 KiB is reset after `OPR_PROXY_BODY_TIMEOUT`, and its executor connection
/// closed; the client's connection goes on.
#[test]
fn an_h2_stream_whose_window_stays_shut_is_reset() {
    let ex = big_answer();
    let p = ProxyProcess::start(
        &[ex.hostname()],
        &[NO_HEALTH, ("OPR_PROXY_BODY_TIMEOUT", "1")],
    );
    let idle = sockets(&p);
    let mut c = H2Raw::connect(p.addr);
    let block = request_block(
        "GET",
        "/big",
        &p.addr.to_string(),
        &[("authorization", &bearer())],
    );
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
    // Read every frame (TCP never backs up) but grant no window.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut reset = None;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.read_frame(left) {
            Some(f) if f.kind == RST_STREAM && f.stream == 1 => {
                reset = Some(u32::from_be_bytes([
                    f.payload[0],
                    f.payload[1],
                    f.payload[2],
                    f.payload[3],
                ]));
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    assert!(reset.is_some(), "the stalled stream was not reset");
    assert!(
        closed_by_proxy(&ex, 0, Duration::from_secs(10)),
        "the executor connection of the stalled stream stayed open"
    );
    // The connection still answers: PING gets its ACK.
    c.send(&frame(PING, 0, 0, &[7u8; 8]));
    let mut pong = false;
    while let Some(f) = c.read_frame(Duration::from_secs(5)) {
        if f.kind == PING && f.flags & 1 == 1 {
            pong = true;
            break;
        }
    }
    assert!(pong, "the connection stopped answering");
    drop(c);
    assert_eq!(stalled_count(p.addr), 1);
    assert_fds(&p, idle, "after the stalled stream");
}
