//! A stand-in for Mockoon, the original's mock executor: serves the routes of a Mockoon
//! environment file (method, path, status, headers, body rendered with the few Handlebars
//! helpers the original's fixture uses) over HTTP/1.1 with keep-alive, on std threads.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// One route of the environment: its default response.
#[derive(Clone, Debug)]
struct Route {
    method: String,
    path: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

/// A running stand-in; stops (and closes its listener) when dropped.
pub struct Mockoon {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Mockoon {
    /// Serve the environment in `fixture` (a Mockoon JSON file's text) on `addr`.
    pub fn start(fixture: &str, addr: SocketAddr) -> io::Result<Mockoon> {
        let routes = Arc::new(parse(fixture));
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let seed = Arc::new(AtomicU64::new(u64::from(addr.port()) | 1));
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let routes = routes.clone();
                        let seed = seed.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
                        thread::spawn(move || serve(stream, &routes, seed));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Mockoon {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Mockoon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The routes of a Mockoon environment: each route's default response (or its first),
/// with the environment's headers before the route's own.
fn parse(fixture: &str) -> Vec<Route> {
    let env: sonic_rs::Value = sonic_rs::from_str(fixture).expect("Mockoon fixture is JSON");
    let text = |v: &sonic_rs::Value, key: &str| v[key].as_str().unwrap_or("").to_string();
    let pairs = |v: &sonic_rs::Value| -> Vec<(String, String)> {
        let Some(list) = v.as_array() else {
            return Vec::new();
        };
        list.iter()
            .map(|h| (text(h, "key"), text(h, "value")))
            .filter(|(k, _)| !k.is_empty())
            .collect()
    };
    let common = pairs(&env["headers"]);
    let prefix = text(&env, "endpointPrefix");
    let routes = env["routes"].as_array().expect("routes");
    routes
        .iter()
        .filter(|r| r["enabled"].as_bool() != Some(false))
        .map(|r| {
            let responses = r["responses"].as_array().expect("responses");
            let response = responses
                .iter()
                .find(|x| x["default"].as_bool() == Some(true))
                .or_else(|| responses.iter().next())
                .expect("a response");
            let mut headers = common.clone();
            headers.extend(pairs(&response["headers"]));
            let path = [prefix.as_str(), &text(r, "endpoint")]
                .iter()
                .filter(|s| !s.is_empty())
                .fold(String::new(), |acc, s| acc + "/" + s.trim_matches('/'));
            Route {
                method: text(r, "method").to_ascii_uppercase(),
                path,
                status: response["statusCode"].as_u64().unwrap_or(200) as u16,
                headers,
                body: text(response, "body"),
            }
        })
        .collect()
}

/// One request as the templates see it.
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        let found = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name));
        found.map(|(_, v)| v.as_str())
    }
}

/// Answer requests on one connection until the peer closes or asks to.
fn serve(mut stream: TcpStream, routes: &[Route], mut seed: u64) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = Vec::new();
    while let Some((request, close)) = read_request(&mut stream, &mut buf) {
        let route = routes
            .iter()
            .find(|r| r.method == request.method && r.path == request.path);
        let (status, headers, body) = match route {
            Some(r) => (
                r.status,
                r.headers.clone(),
                render(&r.body, &request, &mut seed),
            ),
            // Express's answer to an unknown route.
            None => (
                404,
                vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
                format!("Cannot {} {}", request.method, request.path),
            ),
        };
        let mut answer = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in &headers {
            answer.push_str(&format!("{k}: {v}\r\n"));
        }
        answer.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if close {
            answer.push_str("Connection: close\r\n");
        }
        answer.push_str("\r\n");
        if request.method != "HEAD" {
            answer.push_str(&body);
        }
        if stream.write_all(answer.as_bytes()).is_err() || close {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        404 => "Not Found",
        _ => "Status",
    }
}

/// Read one request (its Content-Length body is read and dropped). `None`: closed.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(Request, bool)> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut slots);
        if let httparse::Status::Complete(head_len) = req.parse(buf).ok()? {
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value).into_owned();
                    (h.name.to_string(), value)
                })
                .collect();
            let target = req.path.unwrap_or("/");
            let request = Request {
                method: req.method.unwrap_or("GET").to_string(),
                path: target.split('?').next().unwrap_or("/").to_string(),
                headers,
            };
            let close = request
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                || req.version == Some(0);
            let length: usize = request
                .header("content-length")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            // Chunked bodies are not needed by the suite: refuse them loudly.
            assert!(
                request.header("transfer-encoding").is_none(),
                "the Mockoon stand-in reads Content-Length bodies only"
            );
            while buf.len() < head_len + length {
                let mut chunk = [0u8; 16 * 1024];
                let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..head_len + length);
            return Some((request, close));
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A number in `min..=max` (xorshift; the answers need variety, not quality).
fn random(seed: &mut u64, min: u64, max: u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    min + *seed % (max - min + 1)
}

/// Render a Mockoon body template. Supported (all the original's fixture uses):
/// `{{header 'name' 'default'}}`, `{{int min max}}`, `{{#repeat min max comma=true}}…
/// {{/repeat}}` and `{{@index}}` inside it. Anything else panics, so a fixture the
/// stand-in cannot render never passes silently.
fn render(template: &str, request: &Request, seed: &mut u64) -> String {
    render_with(template, request, seed, None)
}

fn render_with(template: &str, request: &Request, seed: &mut u64, index: Option<u64>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let close = after.find("}}").expect("unterminated {{");
        let tag = after[..close].trim();
        rest = &after[close + 2..];
        let args = words(tag);
        match args.first().map(String::as_str) {
            Some("header") => {
                let name = args.get(1).expect("header name");
                let default = args.get(2).map_or("", String::as_str);
                out.push_str(request.header(name).unwrap_or(default));
            }
            Some("int") => {
                let min = args[1].parse().expect("int min");
                let max = args[2].parse().expect("int max");
                out.push_str(&random(seed, min, max).to_string());
            }
            Some("@index") => out.push_str(&index.expect("@index outside repeat").to_string()),
            Some("#repeat") => {
                let end = rest.find("{{/repeat}}").expect("{{/repeat}}");
                let body = &rest[..end];
                rest = &rest[end + "{{/repeat}}".len()..];
                let min = args[1].parse().expect("repeat min");
                let max = args[2].parse().expect("repeat max");
                let comma = args.iter().any(|a| a == "comma=true");
                let n = random(seed, min, max);
                for i in 0..n {
                    if comma && i > 0 {
                        out.push(',');
                    }
                    out.push_str(&render_with(body, request, seed, Some(i)));
                }
            }
            _ => panic!("the Mockoon stand-in cannot render {{{{{tag}}}}}"),
        }
    }
    out.push_str(rest);
    out
}

/// A tag's words; '…' and "…" quote.
fn words(tag: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = tag.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' || c == '"' {
            chars.next();
            words.push(chars.by_ref().take_while(|&x| x != c).collect());
        } else {
            let mut word = String::new();
            while let Some(&x) = chars.peek() {
                if x.is_whitespace() {
                    break;
                }
                word.push(x);
                chars.next();
            }
            words.push(word);
        }
    }
    words
}
