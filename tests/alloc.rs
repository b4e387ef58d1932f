//! The hot path does not allocate per request. A counting global allocator observes every
//! allocation in this test process; the mock executor and the client below reuse fixed
//! buffers, so what is counted while requests flow is the proxy's own.

// A global allocator is an `unsafe impl`; it only forwards to `System` and counts.
#![allow(unsafe_code)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};

use support::*;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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

/// One keep-alive GET and its 2-byte answer, into `buf` (no allocation).
fn round_trip(c: &mut TcpStream, request: &[u8], buf: &mut [u8]) {
    c.write_all(request).unwrap();
    let mut len = 0;
    loop {
        let n = c.read(&mut buf[len..]).unwrap();
        assert!(n > 0, "proxy closed the connection");
        len += n;
        if let Some(end) = find(&buf[..len], b"\r\n\r\n") {
            assert!(buf.starts_with(b"HTTP/1.1 200"), "not a 200");
            if len >= end + 4 + 2 {
                assert_eq!(&buf[end + 4..len], b"ok");
                return;
            }
        }
    }
}

fn allocations_per_request(path: &str, extra: &[(&str, &str)]) -> f64 {
    let executor = fixed_executor().to_string();
    let mut env = vec![("OPR_PROXY_HEALTHCHECK", "disabled")];
    env.extend_from_slice(extra);
    let proxy = Proxy::start_hosts(&[executor], &env);
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
        round_trip(&mut c, &request, &mut buf);
    }
    const N: u64 = 5000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..N {
        round_trip(&mut c, &request, &mut buf);
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    (after - before) as f64 / N as f64
}

/// One test, not two: the counter is process-wide, so measurements must not overlap.
#[test]
fn forwarding_a_request_does_not_allocate() {
    let per_request = allocations_per_request("/v1/ping", &[]);
    eprintln!("allocations per forwarded request: {per_request:.4}");
    // Not exactly zero: the worker's accept loop wakes every 100 ms to check the stop flag
    // and timers may grow their wheel; anything per request shows up as >= 1.
    assert!(
        per_request < 0.05,
        "{per_request:.3} allocations per forwarded request"
    );
    // The meter itself: the opt-in access log formats a line per request, which must show.
    let logged = allocations_per_request("/v1/ping", &[("OPR_PROXY_ACCESS_LOG", "enabled")]);
    eprintln!("with the access log on: {logged:.4}");
    assert!(
        logged >= 1.0,
        "{logged:.3} allocations per request with the access log on: the counter is blind"
    );
}
