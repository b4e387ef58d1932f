//! The one mock error-reporting provider (Sentry, AppSignal, Raygun, LogOwl all POST JSON
//! over HTTP/1.1): a server on 127.0.0.1 that records every request whole and answers as
//! told. The reporter's unit tests and the integration suite's reporting tests both use it;
//! it reads HTTP/1 with `h1`, never with the proxy's own parser.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::h1;

/// How the provider answers each request.
#[derive(Clone, Copy, Debug)]
pub enum ProviderAnswer {
    /// This status (with a 2-byte body), after waiting `delay`.
    Status { status: u16, delay: Duration },
    /// Read the request, answer nothing, keep the connection open (30 s).
    Hang,
}

impl ProviderAnswer {
    /// `status` at once.
    pub fn status(status: u16) -> ProviderAnswer {
        ProviderAnswer::Status {
            status,
            delay: Duration::ZERO,
        }
    }
}

/// One request as the provider read it.
#[derive(Clone, Debug)]
pub struct ProviderRequest {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The path, without the query.
    pub path: String,
    /// Percent-decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    /// Names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ProviderRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A provider on 127.0.0.1; its threads end with the test process.
pub struct ProviderMock {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProviderRequest>>>,
}

impl ProviderMock {
    pub fn start(answer: ProviderAnswer) -> ProviderMock {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let log = log.clone();
                thread::spawn(move || serve(stream, answer, &log));
            }
        });
        ProviderMock { addr, seen }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`: the base URL a reporter is configured with.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<ProviderRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

fn serve(stream: TcpStream, answer: ProviderAnswer, log: &Mutex<Vec<ProviderRequest>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let Ok(head) = h1::read_head(&mut reader) else {
            return;
        };
        let Ok(framing) = h1::request_framing(&head.headers) else {
            return;
        };
        let mut body = Vec::new();
        if h1::read_body(&mut reader, framing, &mut |b| body.extend_from_slice(b)).is_err() {
            return;
        }
        let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
        let request = ProviderRequest {
            method: head.method.clone(),
            path: path.to_string(),
            query: query_pairs(query),
            target: head.target.clone(),
            headers: head
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
                .collect(),
            body,
        };
        log.lock().expect("lock").push(request);
        match answer {
            ProviderAnswer::Status { status, delay } => {
                thread::sleep(delay);
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                if writer.write_all(head.as_bytes()).is_err() {
                    return;
                }
            }
            ProviderAnswer::Hang => thread::sleep(Duration::from_secs(30)),
        }
    }
}

fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `%XX` and `+`.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_are_percent_decoded_in_order() {
        assert_eq!(
            query_pairs("api_key=a%20b&version=1.0+x&flag"),
            vec![
                ("api_key".to_string(), "a b".to_string()),
                ("version".to_string(), "1.0 x".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
    }
}
