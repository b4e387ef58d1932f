//! Test fixtures: start the real proxy (in-process via `opr_proxy::run`, or as a child
//! process), mock executors on 127.0.0.1, and a raw HTTP/1.1 client over std sockets.

#![allow(dead_code, unused_imports, unreachable_pub)]

use std::collections::HashMap;
use std::io::{self, BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opr_loadtest::h1;
pub use opr_loadtest::{pattern_byte, pattern_sha256, HealthMode, MockExecutor, MockOptions};
use opr_proxy::{Config, Server};
use sha2::{Digest, Sha256};

pub mod h2raw;
pub mod mockoon;
pub mod netns;
pub mod scripted;

pub const SECRET: &str = "proxy-secret";
pub const EXECUTOR_SECRET: &str = "executor-secret";

/// The io driver the suite runs on (`OPR_TEST_IO_DRIVER`, default auto): CI runs it twice.
pub fn io_driver() -> String {
    std::env::var("OPR_TEST_IO_DRIVER").unwrap_or_else(|_| "auto".into())
}

/// Config for tests: one core, short intervals, the given executors and overrides.
pub fn config(executors: &[String], extra: &[(&str, &str)]) -> Config {
    let mut map: HashMap<String, String> = HashMap::new();
    map.insert("PORT".into(), "0".into());
    map.insert("OPR_PROXY_HOST".into(), "127.0.0.1".into());
    map.insert("OPR_PROXY_EXECUTORS".into(), executors.join(","));
    map.insert("OPR_PROXY_SECRET".into(), SECRET.into());
    map.insert("OPR_PROXY_EXECUTOR_SECRET".into(), EXECUTOR_SECRET.into());
    map.insert("OPR_PROXY_CORES".into(), "1".into());
    map.insert("OPR_PROXY_HEALTHCHECK_INTERVAL".into(), "200".into());
    map.insert("OPR_PROXY_HEALTHCHECK_TIMEOUT".into(), "1000".into());
    map.insert("OPR_PROXY_CONNECT_TIMEOUT".into(), "2".into());
    map.insert("OPR_PROXY_IO_DRIVER".into(), io_driver());
    map.insert("OPR_PROXY_SHUTDOWN_TIMEOUT".into(), "2".into());
    for (k, v) in extra {
        map.insert((*k).into(), (*v).into());
    }
    Config::from_lookup(|k| map.get(k).cloned()).expect("test config is valid")
}

/// The proxy running in this process.
pub struct Proxy {
    server: Option<Server>,
    pub addr: SocketAddr,
}

impl Proxy {
    pub fn start(executors: &[&MockExecutor], extra: &[(&str, &str)]) -> Proxy {
        let names: Vec<String> = executors.iter().map(|m| m.hostname()).collect();
        Proxy::start_hosts(&names, extra)
    }

    pub fn start_hosts(executors: &[String], extra: &[(&str, &str)]) -> Proxy {
        let server = opr_proxy::run(config(executors, extra)).expect("proxy starts");
        let addr = server.local_addr();
        Proxy {
            server: Some(server),
            addr,
        }
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    pub fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One request on a fresh connection, with the proxy key.
    pub fn get(&self, path: &str) -> Response {
        self.client()
            .request("GET", path, &[("Authorization", &bearer())], b"")
    }

    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
    }
}

pub fn bearer() -> String {
    format!("Bearer {SECRET}")
}

pub fn mock(name: &str) -> MockExecutor {
    MockExecutor::start_named(name).expect("mock executor starts")
}

pub fn mock_with(name: &str, health: HealthMode) -> MockExecutor {
    MockExecutor::start(MockOptions {
        name: name.into(),
        health,
        ..MockOptions::default()
    })
    .expect("mock executor starts")
}

/// A port on 127.0.0.1 that refuses connections (bound, then released).
pub fn dead_hostname() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

/// A test cannot run here (a tool, a second CPU, open files missing): it prints SKIP
/// locally, and fails under CI (`CI` set), where `.ci/run` provides what it needs.
pub fn skip_unless_ci(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "required under CI: {why}");
    eprintln!("SKIP: {why}");
}

/// The value of one series (`name{labels}` exactly as rendered) in the proxy's
/// /v1/proxy/metrics at `addr`; `None` when the series is absent.
pub fn metric(addr: SocketAddr, series: &str) -> Option<f64> {
    let r = Client::connect(addr).request(
        "GET",
        "/v1/proxy/metrics",
        &[("Authorization", &bearer())],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Set in a copy of the test binary started by [`alone`].
const ALONE: &str = "OPR_TEST_ALONE";

/// For a test that measures the whole process (a counting global allocator): `true` in a
/// copy of this test binary that runs only the test `name` (its path in the binary: run
/// the body there); `false` in the calling process, after that copy ran it and passed.
pub fn alone(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ALONE, "1")
        .output()
        .expect("run the test binary again");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    assert!(out.status.success(), "{name}, run alone, failed");
    assert!(text.contains("1 passed"), "{name} did not run alone");
    false
}

/// Poll `cond` until it holds or `timeout` passes (no fixed sleeps in tests).
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended by EOF before its declared length (truncated message).
    pub truncated: bool,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> sonic_rs::Value {
        sonic_rs::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// `bodySha256` of a mock echo/upload answer.
    pub fn json_sha(&self) -> String {
        use sonic_rs::JsonValueTrait;
        self.json()["bodySha256"].as_str().unwrap_or("").to_string()
    }

    /// Which mock answered (`x-mock-name`).
    pub fn executor(&self) -> String {
        self.header("x-mock-name").unwrap_or("").to_string()
    }
}

/// A raw HTTP/1.1 client on one connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect to proxy");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).expect("write to proxy");
    }

    /// Send a request with a Content-Length body (when non-empty) and read the answer.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: proxy.test\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_response(method == "HEAD")
            .expect("a response from the proxy")
    }

    /// Read one response; the whole body is kept (use `read_head` + streaming for big ones).
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let (status, headers) = self.read_head()?;
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            truncated: false,
        };
        if head_request || status < 200 || status == 204 || status == 304 {
            return Ok(response);
        }
        let te = find(&response.headers, "transfer-encoding");
        let cl = find(&response.headers, "content-length");
        let mut body = Vec::new();
        response.truncated = self.read_body(te.as_deref(), cl.as_deref(), &mut |b| {
            body.extend_from_slice(b)
        })?;
        response.body = body;
        Ok(response)
    }

    /// Status and headers of the next final response (interim 1xx are returned too).
    pub fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        match h1::read_response_head(&mut Buffered(self)) {
            Ok(head) => Ok((head.status, head.headers)),
            Err(h1::HeadError::Closed) => Err(io::ErrorKind::UnexpectedEof.into()),
            Err(h1::HeadError::Failed(kind)) => Err(kind.into()),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response head: {e:?}"),
            )),
        }
    }

    /// Stream a body to `sink`: chunked when `te` says so, else `cl` bytes, else until
    /// close. Returns true when it ended early (truncated).
    pub fn read_body(
        &mut self,
        te: Option<&str>,
        cl: Option<&str>,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        let framing = if te.is_some_and(|t| t.to_ascii_lowercase().contains("chunked")) {
            h1::Framing::Chunked
        } else if let Some(cl) = cl {
            h1::Framing::Length(cl.trim().parse().unwrap_or(0))
        } else {
            h1::Framing::UntilClose
        };
        match h1::read_body(&mut Buffered(self), framing, sink) {
            Ok(_) => Ok(false),
            Err(h1::BodyError::Aborted) => Ok(true),
            Err(h1::BodyError::Failed(kind)) => Err(kind.into()),
            Err(e) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response body: {e:?}"),
            )),
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = match self.stream.read(&mut tmp) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// True when the proxy closed this connection (EOF with nothing pending).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && matches!(self.fill(), Ok(0) | Err(_))
    }
}

/// A client's pending bytes and then its socket, as the `BufRead` that `h1` reads from.
struct Buffered<'a>(&'a mut Client);

impl Read for Buffered<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Buffered<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.0.buf.is_empty() {
            self.0.fill()?;
        }
        Ok(&self.0.buf)
    }

    fn consume(&mut self, n: usize) {
        self.0.buf.drain(..n);
    }
}

fn find(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Download `target` and return (status, length, sha256) without keeping the body.
pub fn download(addr: SocketAddr, target: &str) -> (u16, u64, String, bool) {
    let mut c = Client::connect(addr);
    c.send(
        format!(
            "GET {target} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let (status, headers) = c.read_head().expect("response head");
    let te = find(&headers, "transfer-encoding");
    let cl = find(&headers, "content-length");
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let truncated = c
        .read_body(te.as_deref(), cl.as_deref(), &mut |b| {
            hasher.update(b);
            len += b.len() as u64;
        })
        .expect("body");
    (status, len, hex(&hasher.finalize()), truncated)
}

/// Upload `len` pattern bytes to `target` (Content-Length or chunked) and return the answer.
pub fn upload(addr: SocketAddr, target: &str, len: u64, chunked: bool) -> Response {
    let mut c = Client::connect(addr);
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    c.send(
        format!(
            "POST {target} HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n{framing}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let mut sent = 0u64;
    let mut piece = vec![0u8; 64 * 1024];
    while sent < len {
        let n = (len - sent).min(piece.len() as u64) as usize;
        for (i, b) in piece[..n].iter_mut().enumerate() {
            *b = pattern_byte(sent + i as u64);
        }
        if chunked {
            c.send(format!("{n:x}\r\n").as_bytes());
            c.send(&piece[..n]);
            c.send(b"\r\n");
        } else {
            c.send(&piece[..n]);
        }
        sent += n as u64;
    }
    if chunked {
        c.send(b"0\r\n\r\n");
    }
    c.read_response(false).expect("upload response")
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The proxy binary as a child process (for exit codes, signals and RSS).
pub struct ProxyProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// What the process wrote to stdout (the access log).
    pub out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ProxyProcess {
    pub fn start(executors: &[String], extra: &[(&str, &str)]) -> ProxyProcess {
        ProxyProcess::start_wrapped(&[], executors, extra)
    }

    /// Start the binary behind a wrapper command (e.g. one that refuses io_uring).
    pub fn start_wrapped(
        wrapper: &[&str],
        executors: &[String],
        extra: &[(&str, &str)],
    ) -> ProxyProcess {
        let bin = env!("CARGO_BIN_EXE_opr-proxy");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.env_clear()
            .env("PORT", "0")
            .env("OPR_PROXY_HOST", "127.0.0.1")
            .env("OPR_PROXY_EXECUTORS", executors.join(","))
            .env("OPR_PROXY_SECRET", SECRET)
            .env("OPR_PROXY_EXECUTOR_SECRET", EXECUTOR_SECRET)
            .env("OPR_PROXY_CORES", "1")
            .env("OPR_PROXY_HEALTHCHECK_INTERVAL", "200")
            .env("OPR_PROXY_IO_DRIVER", io_driver())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        ProxyProcess::spawn(cmd)
    }

    /// Start the binary with exactly `env` (nothing of the test defaults).
    pub fn start_env(env: &[(&str, &str)]) -> ProxyProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_opr-proxy"));
        cmd.env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ProxyProcess::spawn(cmd)
    }

    /// Spawn and wait for the `listening on` line.
    fn spawn(mut cmd: Command) -> ProxyProcess {
        let mut child = cmd.spawn().expect("spawn opr-proxy");
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out2 = out.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut l = out2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("proxy did not start: {}", log.lock().unwrap()));
        ProxyProcess {
            child,
            addr: addr.parse().expect("listen address"),
            log,
            out,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/<pid>/status in KiB (VmRSS, VmHWM).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the exit code (None = killed by a signal or timed out).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until the log has a line with `text`; fail with the whole log past `timeout`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        assert!(
            eventually(timeout, || self.log().contains(text)),
            "no {text:?} in the log within {timeout:?}: {}",
            self.log()
        );
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the binary with exactly `env` and expect a start error: exit code 2 and one
/// stderr line naming `var`. Returns that line.
pub fn assert_start_error(env: &[(&str, &str)], var: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_opr-proxy"))
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A value wrongly accepted starts the proxy, which would never exit by itself.
    let exited = eventually(Duration::from_secs(20), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(exited, "{env:?}: started instead of exiting 2");
    assert_eq!(out.status.code(), Some(2), "{env:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(var), "{var} not named in: {stderr}");
    stderr
}
