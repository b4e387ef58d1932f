//! The hot path allocates once per request, a fixed size: the request's own state (its
//! future, boxed so an idle connection does not carry it; buffers and vectors come from
//! per-worker pools). A counting global allocator observes every allocation in the test
//! process (the test re-runs itself alone in a copy of the suite's binary); the mock
//! executor and the client below reuse fixed buffers, so what is counted while requests
//! flow is the proxy's own.

// A global allocator is an `unsafe impl`; it only forwards to `System` and counts.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::support::*;

/// The request's state (its future) is a few KiB; a body buffer would be 128 KiB.
const REQUEST_STATE_MAX: f64 = 8192.0;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";

/// An executor that answers every request head with `RESPONSE`, from a fixed buffer; a
/// thread per connection (allocations happen at accept only).
fn fixed_executor() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                let mut len = 0;
                loop {
                    match s.read(&mut buf[len..]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => len += n,
                    }
                    // Requests carry no body: each head ends the request.
                    while let Some(end) = find(&buf[..len], b"\r\n\r\n") {
                        if s.write_all(RESPONSE).is_err() {
                            return;
                        }
                        buf.copy_within(end + 4..len, 0);
                        len -= end + 4;
                    }
                    if len == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One keep-alive GET and its whole answer (Content-Length framed), into `buf` (no
/// allocation); returns the status line's first bytes checked against `status`.
fn round_trip(c: &mut TcpStream, request: &[u8], buf: &mut [u8], status: &[u8]) {
    c.write_all(request).unwrap();
    let mut len = 0;
    loop {
        let n = c.read(&mut buf[len..]).unwrap();
        assert!(n > 0, "proxy closed the connection");
        len += n;
        if let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            assert!(
                buf[9..12] == *status,
                "expected {}: {}",
                String::from_utf8_lossy(status),
                String::from_utf8_lossy(&buf[..len])
            );
            let body = content_length(&buf[..end]);
            if len >= end + 4 + body {
                assert_eq!(len, end + 4 + body, "more than one answer");
                return;
            }
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let at = find(head, b"Content-Length: ").expect("Content-Length") + 16;
    let digits = head[at..].iter().take_while(|b| b.is_ascii_digit());
    digits.fold(0, |n, d| n * 10 + usize::from(d - b'0'))
}

/// Allocations and allocated bytes per request while `N` requests flow through one
/// keep-alive client connection to `executor`, each answered with `status`.
fn per_request(executor: SocketAddr, env: &[(&str, &str)], status: &[u8]) -> (f64, f64) {
    per_request_to("/v1/ping", executor, env, status)
}

fn per_request_to(
    path: &str,
    executor: SocketAddr,
    env: &[(&str, &str)],
    status: &[u8],
) -> (f64, f64) {
    // No health or DNS round (and so no snapshot copy per worker) while measuring: what
    // is left in the background is the accept loop's stop-flag wake-up every 100 ms.
    let mut all = vec![("OPR_PROXY_HEALTHCHECK_INTERVAL", "600000")];
    all.extend_from_slice(env);
    let proxy = Proxy::start_hosts(&[executor.to_string()], &all);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nUser-Agent: t\r\n\
         Accept: */*\r\nx-opr-runtime-id: rt-1\r\n\r\n",
        bearer()
    )
    .into_bytes();
    let mut c = TcpStream::connect(proxy.addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut buf = [0u8; 4096];
    // Warm-up: pools, buffers and the executor connection are set up once.
    for _ in 0..500 {
        round_trip(&mut c, &request, &mut buf, status);
    }
    const N: u64 = 5000;
    let before = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..N {
        round_trip(&mut c, &request, &mut buf, status);
    }
    let after = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    (
        (after.0 - before.0) as f64 / N as f64,
        (after.1 - before.1) as f64 / N as f64,
    )
}

/// An executor that serves one connection at a time from one thread without allocating:
/// it reads a request head, answers `answer` and closes.
fn closing_executor(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            let mut len = 0;
            while find(&buf[..len], b"\r\n\r\n").is_none() && len < buf.len() {
                match s.read(&mut buf[len..]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => len += n,
                }
            }
            let _ = s.write_all(answer);
        }
    });
    addr
}

/// One test, not several: the counter is process-wide, so measurements must not overlap;
/// and it runs in a copy of the suite's binary of its own, where no other test allocates.
#[test]
fn forwarding_and_error_answers_do_not_allocate() {
    if !alone("alloc::forwarding_and_error_answers_do_not_allocate") {
        return;
    }
    let disabled = [("OPR_PROXY_HEALTHCHECK", "disabled")];
    let (per_request_200, bytes_200) = per_request(fixed_executor(), &disabled, b"200");
    eprintln!("allocations per forwarded request: {per_request_200:.4} ({bytes_200:.0} bytes)");
    // One: the request's state. Not exactly one: background wake-ups allocate now and
    // then, more per request when a loaded machine slows the requests down; anything
    // else per request shows up as >= 2, a body buffer as 128 KiB.
    assert!(
        (0.99..1.1).contains(&per_request_200) && bytes_200 < REQUEST_STATE_MAX,
        "{per_request_200:.3} allocations ({bytes_200:.0} bytes) per forwarded request"
    );

    // 404: every executor is offline (the only one refuses connections).
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (per_404, bytes_404) = per_request(dead, &[], b"404");
    eprintln!("allocations per 404 answer: {per_404:.4} ({bytes_404:.0} bytes)");
    assert!(
        (0.99..1.1).contains(&per_404) && bytes_404 < REQUEST_STATE_MAX,
        "{per_404:.3} allocations ({bytes_404:.0} bytes) per 404"
    );

    // 502: the executor answers with two different Content-Lengths and closes. The
    // executor connection cannot be reused, so each request opens one: monoio's connect
    // costs three small allocations (the fd's `Rc`, the address, the op; ~90 bytes in
    // all), besides the request's state. The answer itself, the error body, its cause and
    // the buffers must cost nothing: a formatted cause or a fresh 128 KiB buffer shows up
    // here.
    let bad =
        closing_executor(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nok");
    let (per_502, bytes_502) = per_request(bad, &disabled, b"502");
    eprintln!("allocations per 502 answer: {per_502:.4} ({bytes_502:.0} bytes)");
    assert!(
        per_502 <= 4.05 && bytes_502 < REQUEST_STATE_MAX + 256.0,
        "{per_502:.3} allocations ({bytes_502:.0} bytes) per 502"
    );

    // The access log formats every line into a per-worker buffer: no allocation either.
    let logged_env = [
        ("OPR_PROXY_HEALTHCHECK", "disabled"),
        ("OPR_PROXY_ACCESS_LOG", "enabled"),
    ];
    let (logged, _) = per_request(fixed_executor(), &logged_env, b"200");
    eprintln!("with the access log on: {logged:.4}");
    assert!(
        logged < 1.1,
        "{logged:.3} allocations per request with the access log on"
    );

    // `affinity` orders the executors for the runtime id in one pass, without a heap.
    let affinity_env = [
        ("OPR_PROXY_HEALTHCHECK", "disabled"),
        ("OPR_PROXY_ALGORITHM", "affinity"),
    ];
    let (affinity, _) = per_request(fixed_executor(), &affinity_env, b"200");
    eprintln!("with affinity: {affinity:.4}");
    assert!(
        affinity < 1.1,
        "{affinity:.3} allocations per request with affinity"
    );

    // The meter itself: `/v1/proxy/containers` serialises a JSON array per request, which
    // must show.
    let (listed, _) = per_request_to("/v1/proxy/containers", fixed_executor(), &disabled, b"200");
    eprintln!("allocations per /v1/proxy/containers: {listed:.4}");
    assert!(
        listed >= 2.0,
        "{listed:.3} allocations per containers answer: the counter is blind"
    );
}
