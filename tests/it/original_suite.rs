//! The later original's own integration suite — open-runtimes/proxy 0.6.3
//! `tests/HTTPTest.php` (commit 18ea449) — rewritten in Rust: its requests and
//! assertions, against this proxy started with that release's `.env`, with Mockoon
//! executors named `mockoon1` and `mockoon2` resolving to loopback addresses inside a
//! private network namespace.
//!
//! `tests/fixtures/mockoon.json` is the original's Mockoon environment (`mockoon.json` at
//! the same commit), served by `support::mockoon`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::support::mockoon::Mockoon;
use crate::support::{io_driver, netns, ProxyProcess};
use sonic_rs::JsonValueTrait;

const FIXTURE: &str = include_str!("../fixtures/mockoon.json");

/// The names of the original's compose network (each service has its own address there).
const HOSTS: [(&str, &str); 3] = [
    ("openruntimes-proxy", "127.0.0.10"),
    ("mockoon1", "127.0.0.11"),
    ("mockoon2", "127.0.0.12"),
];

/// The original release's `.env`, as its compose file passes it.
const DOT_ENV: [(&str, &str); 13] = [
    ("OPR_PROXY_ALGORITHM", "random"),
    ("OPR_PROXY_WORKER_PER_CORE", "6"),
    ("OPR_PROXY_EXECUTORS", "mockoon1,mockoon2"),
    ("OPR_PROXY_HEALTHCHECK", "enabled"),
    ("OPR_PROXY_HEALTHCHECK_INTERVAL", "5000"),
    ("OPR_PROXY_HEALTHCHECK_URL", ""),
    ("OPR_PROXY_MAX_TIMEOUT", "600"),
    ("OPR_PROXY_ENV", "development"),
    ("OPR_PROXY_SECRET", "proxy-secret-key"),
    ("OPR_PROXY_EXECUTOR_SECRET", "executor-secret-key"),
    ("OPR_PROXY_LOGGING_PROVIDER", ""),
    ("OPR_PROXY_LOGGING_CONFIG", ""),
    ("OPR_PROXY_CONNECTIONS_STATE", "redis://redis:6379"),
];

/// What the original's `tests/Client.php` returns: lower-cased header names (the last
/// copy wins) with `status-code`, and the body, decoded when it is JSON.
struct Answer {
    headers: Vec<(String, String)>,
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self.headers.iter().rev().find(|(k, _)| k == name);
        found.map(|(_, v)| v.as_str())
    }

    fn json(&self) -> sonic_rs::Value {
        assert_eq!(self.header("content-type"), Some("application/json"));
        sonic_rs::from_slice(&self.body).expect("a JSON body")
    }
}

/// One call as the PHP client makes it with curl: a fresh connection to
/// `http://openruntimes-proxy`, its user agent, `authorization: Bearer proxy-secret-key`
/// unless `headers` replaces it.
fn call(path: &str, headers: &[(&str, &str)]) -> Answer {
    let addr: SocketAddr = ("openruntimes-proxy", 80)
        .to_socket_addrs()
        .expect("openruntimes-proxy resolves")
        .next()
        .unwrap();
    let mut all = vec![("authorization", "Bearer proxy-secret-key")];
    for (k, v) in headers {
        all.retain(|(name, _)| name != k);
        all.push((k, v));
    }
    let mut raw = format!(
        "GET {path} HTTP/1.1\r\nHost: openruntimes-proxy\r\nUser-Agent: Mozilla/5.0 (Windows NT \
         10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/70.0.3538.77 \
         Safari/537.36\r\nAccept: */*\r\n"
    );
    for (k, v) in all {
        raw.push_str(&format!("{k}:{v}\r\n"));
    }
    raw.push_str("\r\n");
    let mut stream = TcpStream::connect(addr).expect("connect to the proxy");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    read_answer(&mut stream)
}

/// One answer, framed by Content-Length (or none for 204 and 304).
fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut response = httparse::Response::new(&mut slots);
        if let httparse::Status::Complete(n) = response.parse(&buf).expect("a response") {
            let status = response.code.unwrap();
            let headers: Vec<(String, String)> = response
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).trim().to_string();
                    (h.name.to_ascii_lowercase(), value)
                })
                .collect();
            let mut answer = Answer {
                headers,
                status,
                body: Vec::new(),
            };
            let length: usize = match status {
                204 | 304 => 0,
                _ => answer
                    .header("content-length")
                    .expect("the proxy frames answers by Content-Length")
                    .parse()
                    .unwrap(),
            };
            while buf.len() < n + length {
                let got = stream.read(&mut chunk).expect("the body");
                assert!(got > 0, "closed inside the body");
                buf.extend_from_slice(&chunk[..got]);
            }
            answer.body = buf[n..n + length].to_vec();
            return answer;
        }
        let got = stream.read(&mut chunk).expect("the head");
        assert!(got > 0, "closed before the head");
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// `testHealthEndpoint`.
fn test_health_endpoint() {
    let response = call("/v1/proxy/health", &[]);
    assert_eq!(response.status, 200);
    assert_eq!(response.body, b"OK");
}

/// The assertions the original repeats on a `/v1/ping` answer from Mockoon.
fn assert_pong(response: &Answer) {
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(body["ping"].as_str(), Some("pong"));
    let server = body["server"].as_str().unwrap_or_default();
    assert!(
        ["mockoon1", "mockoon2"].contains(&server),
        "server {server:?}"
    );
    assert_eq!(body["secret"].as_str(), Some("Bearer executor-secret-key"));
}

/// `testBalancer`.
fn test_balancer() {
    assert_pong(&call("/v1/ping", &[]));
    assert_pong(&call("/v1/ping", &[]));
    let wrong = [("authorization", "Bearer wrong-proxy-secret-key")];
    assert_eq!(call("/v1/ping", &wrong).status, 401);
}

/// `testAddressingMethods`.
fn test_addressing_methods() {
    let method = |m| [("x-opr-addressing-method", m)];
    assert_pong(&call("/v1/ping", &method("anycast-efficient")));
    assert_pong(&call("/v1/ping", &method("anycast-fast")));
    let response = call("/v1/ping", &method("broadcast"));
    assert_eq!(response.status, 204);
    // PHP's `assertEquals(0, $headers['content-length'])`: a missing field is an error.
    assert_eq!(response.header("content-length"), Some("0"));
    assert_eq!(response.body, b"");
}

#[test]
fn original_0_6_3_http_test() {
    if !netns::enter("original_suite::original_0_6_3_http_test", &HOSTS) {
        return;
    }
    let at = |name: &str| -> SocketAddr { (name, 80).to_socket_addrs().unwrap().next().unwrap() };
    let _mockoon1 = Mockoon::start(FIXTURE, at("mockoon1")).expect("mockoon1 on port 80");
    let _mockoon2 = Mockoon::start(FIXTURE, at("mockoon2")).expect("mockoon2 on port 80");
    // In the compose network the proxy has an address of its own; here it listens on the
    // one its name resolves to, port 80 (the default) as there.
    let host = at("openruntimes-proxy").ip().to_string();
    let driver = io_driver();
    let mut env = DOT_ENV.to_vec();
    env.push(("OPR_PROXY_HOST", &host));
    env.push(("OPR_PROXY_IO_DRIVER", &driver));
    let proxy = ProxyProcess::start_env(&env);

    let tests: [(&str, fn()); 3] = [
        ("testHealthEndpoint", test_health_endpoint),
        ("testBalancer", test_balancer),
        ("testAddressingMethods", test_addressing_methods),
    ];
    // Each test runs to its end and is reported, as PHPUnit does.
    let failed: Vec<&str> = tests
        .iter()
        .filter(|(name, test)| {
            let outcome = std::panic::catch_unwind(test);
            eprintln!("{name}: {}", if outcome.is_ok() { "ok" } else { "FAILED" });
            outcome.is_err()
        })
        .map(|(name, _)| *name)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 3 passed; failed: {failed:?}\nproxy log:\n{}",
        3 - failed.len(),
        proxy.log()
    );
}
