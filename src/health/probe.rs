//! One health probe: `GET http://<executor>/v1/health`, and the pure reading of its
//! answer into a `ProbeResult` (docs/behaviour.md §6). Nothing an executor sends can make it panic.

use std::collections::HashMap;
use std::time::Duration;

use sonic_rs::{JsonContainerTrait, JsonValueTrait, Value};

use crate::report::reason::{describe, truncate};
use crate::snapshot::RuntimeState;

/// Largest health body read; a bigger one marks the executor offline.
pub(crate) const MAX_HEALTH_BODY: u64 = 1024 * 1024;

/// Longest executor-supplied status string kept (in `state_status` and the reason).
const MAX_STATUS_CHARS: usize = 64;

/// Deepest `[`/`{` nesting parsed. sonic-rs recurses per level (~40 KiB of stack each in
/// a debug build): 1 MiB of `[` would overflow any thread's stack and abort the process.
/// Real health bodies are 3 levels deep; 16 fits a 2 MiB thread stack in any build.
const MAX_JSON_DEPTH: usize = 16;

/// Idle connections kept by the checker's agent: one per executor is what a round
/// reuses; the total only has to exceed any realistic executor count.
const MAX_IDLE_CONNECTIONS: usize = 1024;

/// What one probe learnt about one executor.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub online: bool,
    /// Top-level `status` of a JSON body, when it was a string.
    pub state_status: Option<String>,
    /// 0–100 from the body; `None` = unknown (counts as 100).
    pub usage: Option<u8>,
    pub runtimes: HashMap<String, RuntimeState>,
    /// Why the executor is offline: short, never holds the secret.
    pub error: Option<String>,
}

impl ProbeResult {
    pub(crate) fn offline(reason: String) -> ProbeResult {
        ProbeResult {
            online: false,
            state_status: None,
            usage: None,
            runtimes: HashMap::new(),
            error: Some(reason),
        }
    }

    /// Online with nothing else known: plain-text bodies, or health checks disabled.
    pub(crate) fn online_unknown() -> ProbeResult {
        ProbeResult {
            online: true,
            state_status: None,
            usage: None,
            runtimes: HashMap::new(),
            error: None,
        }
    }
}

/// Pure: decide from a status code and a body (docs/behaviour.md §6).
///
/// 200 is online unless a JSON object body has a string `status` other than `pass`.
/// A body that is not a JSON object (plain `OK`, empty, truncated JSON, invalid UTF-8,
/// nested deeper than 16 levels) says nothing against the executor, so a 200 with it
/// is online with unknown usage.
pub fn parse_health(status: u16, body: &[u8]) -> ProbeResult {
    if status != 200 {
        return ProbeResult::offline(format!("health check returned status {status}"));
    }
    if nests_deeper_than(body, MAX_JSON_DEPTH) {
        return ProbeResult::online_unknown();
    }
    let Ok(value) = sonic_rs::from_slice::<Value>(body) else {
        return ProbeResult::online_unknown();
    };
    let Some(object) = value.as_object() else {
        return ProbeResult::online_unknown();
    };

    // Wrong types count as absent: a numeric `status` neither passes nor fails.
    let reported = object.get(&"status").and_then(|v| v.as_str());
    let (online, error) = match reported {
        Some(s) if s != "pass" => (
            false,
            Some(format!(
                "executor reported status {:?}",
                truncate(s, MAX_STATUS_CHARS)
            )),
        ),
        _ => (true, None),
    };
    let runtimes = object
        .get(&"runtimes")
        .and_then(|v| v.as_object())
        .map(|runtimes| {
            runtimes
                .iter()
                .filter_map(|(id, runtime)| {
                    let runtime = runtime.as_object()?;
                    let status = runtime.get(&"status").and_then(|v| v.as_str());
                    let state = RuntimeState {
                        status: status.unwrap_or("").to_string(),
                        // A runtime that does not say how busy it is counts as full.
                        usage: runtime.get(&"usage").and_then(usage_of).unwrap_or(100),
                    };
                    Some((id.to_string(), state))
                })
                .collect()
        })
        .unwrap_or_default();

    ProbeResult {
        online,
        state_status: reported.map(|s| truncate(s, MAX_STATUS_CHARS)),
        usage: object.get(&"usage").and_then(usage_of),
        runtimes,
        error,
    }
}

/// Whether `[`/`{` nest deeper than `max` outside strings. Scans the way a JSON parser
/// reads (strings and escapes alike), so the parser never goes deeper than this saw.
fn nests_deeper_than(body: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// A JSON number as a 0–100 percentage: clamped, then rounded. Non-numbers are unknown.
fn usage_of(value: &Value) -> Option<u8> {
    let n = value.as_f64()?;
    if n.is_nan() {
        return None;
    }
    Some(n.clamp(0.0, 100.0).round() as u8)
}

/// One GET http://<hostname>/v1/health with `Authorization: Bearer <executor secret>`,
/// bounded by the agent's global timeout and a 1 MiB body cap.
pub(crate) fn probe(agent: &ureq::Agent, hostname: &str, executor_secret: &str) -> ProbeResult {
    let url = format!("http://{hostname}/v1/health");
    let mut response = match agent
        .get(&url)
        .header("Authorization", format!("Bearer {executor_secret}"))
        .call()
    {
        Ok(response) => response,
        Err(err) => return ProbeResult::offline(describe(&err, agent)),
    };
    let status = response.status().as_u16();
    if status != 200 {
        // The body cannot make a non-200 online; do not wait for it.
        return parse_health(status, &[]);
    }
    match response
        .body_mut()
        .with_config()
        .limit(MAX_HEALTH_BODY)
        .read_to_vec()
    {
        Ok(body) => parse_health(status, &body),
        Err(err) => ProbeResult::offline(describe(&err, agent)),
    }
}

/// The checker's HTTP client: status codes are answers (not errors), one global timeout
/// per request, no redirects (a 3xx is just "not 200"), idle connections kept per executor.
pub(crate) fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .max_idle_connections(MAX_IDLE_CONNECTIONS)
        .max_idle_connections_per_host(1)
        .user_agent(concat!("opr-proxy/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    fn runtime(status: &str, usage: u8) -> RuntimeState {
        RuntimeState {
            status: status.to_string(),
            usage,
        }
    }

    #[test]
    fn original_era_body() {
        // Shape of tests/fixtures/mockoon.json's /v1/health answer.
        let body = br#"{
  "status": "pass",
  "usage": 37,
  "runtimes": {
    "runtime0": { "status":"pass", "usage":12 },
    "runtime1": { "status":"pass", "usage":95 }
  }
}"#;
        let r = parse_health(200, body);
        assert!(r.online);
        assert_eq!(r.state_status.as_deref(), Some("pass"));
        assert_eq!(r.usage, Some(37));
        assert_eq!(r.runtimes.len(), 2);
        assert_eq!(r.runtimes["runtime0"], runtime("pass", 12));
        assert_eq!(r.runtimes["runtime1"], runtime("pass", 95));
        assert_eq!(r.error, None);
    }

    #[test]
    fn original_era_body_with_no_runtimes() {
        let r = parse_health(200, br#"{"status":"pass","usage":0,"runtimes":{}}"#);
        assert!(r.online);
        assert_eq!(r.usage, Some(0));
        assert!(r.runtimes.is_empty());
    }

    #[test]
    fn newer_body_without_status() {
        let r = parse_health(
            200,
            br#"{"usage":55,"runtimes":{"rt":{"status":"pass","usage":3}},"extra":[1,2]}"#,
        );
        assert!(r.online);
        assert_eq!(r.state_status, None);
        assert_eq!(r.usage, Some(55));
        assert_eq!(r.runtimes["rt"], runtime("pass", 3));
    }

    #[test]
    fn plain_text_and_empty_bodies_are_online_with_unknown_usage() {
        for body in [&b"OK"[..], b"", b"OK\n", b"   "] {
            assert_eq!(
                parse_health(200, body),
                ProbeResult::online_unknown(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn status_other_than_pass_is_offline() {
        let r = parse_health(200, br#"{"status":"fail","usage":10}"#);
        assert!(!r.online);
        assert_eq!(r.state_status.as_deref(), Some("fail"));
        assert_eq!(
            r.error.as_deref(),
            Some(r#"executor reported status "fail""#)
        );
        // Case matters, as in the original.
        assert!(!parse_health(200, br#"{"status":"PASS"}"#).online);
    }

    #[test]
    fn long_or_hostile_status_is_truncated_and_escaped() {
        let long = "x".repeat(500);
        let body = format!(r#"{{"status":"{long}"}}"#);
        let r = parse_health(200, body.as_bytes());
        assert!(!r.online);
        assert_eq!(r.state_status.as_deref().map(str::len), Some(64));
        let error = r.error.unwrap_or_default();
        assert!(error.len() < 100, "{error}");
        // A newline in the status cannot split a log line.
        let r = parse_health(200, br#"{"status":"bad\nWARN forged"}"#);
        assert_eq!(
            r.error.as_deref(),
            Some(r#"executor reported status "bad\nWARN forged""#)
        );
        // Multi-byte characters are cut on a character boundary.
        let body = format!(r#"{{"status":"{}"}}"#, "é".repeat(100));
        let r = parse_health(200, body.as_bytes());
        assert_eq!(r.state_status.map(|s| s.chars().count()), Some(64));
    }

    #[test]
    fn non_200_is_offline_whatever_the_body() {
        for status in [201, 204, 301, 401, 404, 500, 503] {
            let r = parse_health(status, br#"{"status":"pass","usage":1}"#);
            assert!(!r.online);
            assert_eq!(r.usage, None);
            assert_eq!(
                r.error.as_deref(),
                Some(format!("health check returned status {status}").as_str())
            );
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_online() {
        for body in [
            &br#"{"status":"fail","usage":"#[..],
            br#"{"status":"pass""#,
            b"null",
            b"[]",
            br#"[{"status":"fail"}]"#,
            b"42",
            br#""fail""#,
            b"true",
            br#"{"status":"pass"} trailing"#,
            b"{\"status\":\"f\xffil\"}",
            b"\xff\xfe\x00",
            br#"{"usage":1e999}"#,
        ] {
            let r = parse_health(200, body);
            assert_eq!(
                r,
                ProbeResult::online_unknown(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn wrong_types_count_as_absent() {
        let r = parse_health(
            200,
            br#"{"status":null,"usage":"42","runtimes":[{"status":"pass"}]}"#,
        );
        assert_eq!(r, ProbeResult::online_unknown());
        let r = parse_health(200, br#"{"status":1,"usage":true,"runtimes":"x"}"#);
        assert_eq!(r, ProbeResult::online_unknown());
        let r = parse_health(200, br#"{"status":{"a":1},"usage":null,"runtimes":null}"#);
        assert_eq!(r, ProbeResult::online_unknown());
    }

    #[test]
    fn usage_is_clamped_and_rounded() {
        let usage = |raw: &str| parse_health(200, format!(r#"{{"usage":{raw}}}"#).as_bytes()).usage;
        assert_eq!(usage("-5"), Some(0));
        assert_eq!(usage("150"), Some(100));
        assert_eq!(usage("42.7"), Some(43));
        assert_eq!(usage("42.2"), Some(42));
        assert_eq!(usage("99.5"), Some(100));
        assert_eq!(usage("-0.4"), Some(0));
        assert_eq!(usage("1e300"), Some(100));
        assert_eq!(usage("18446744073709551616"), Some(100));
        assert_eq!(usage("-9223372036854775809"), Some(0));
        assert_eq!(usage(r#""x""#), None);
        assert_eq!(usage("[]"), None);
    }

    #[test]
    fn runtimes_with_missing_or_wrong_fields() {
        let r = parse_health(
            200,
            br#"{"runtimes":{
                "no-status":{"usage":5},
                "no-usage":{"status":"pass"},
                "empty":{},
                "not-object":7,
                "wrong-types":{"status":3,"usage":"low"},
                "clamped":{"status":"pass","usage":-1.5}
            }}"#,
        );
        assert!(r.online);
        assert_eq!(r.runtimes.len(), 5);
        assert_eq!(r.runtimes["no-status"], runtime("", 5));
        assert_eq!(r.runtimes["no-usage"], runtime("pass", 100));
        assert_eq!(r.runtimes["empty"], runtime("", 100));
        assert_eq!(r.runtimes["wrong-types"], runtime("", 100));
        assert_eq!(r.runtimes["clamped"], runtime("pass", 0));
        assert!(!r.runtimes["no-status"].is_warm());
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        // A hostile executor's 1 MiB of brackets, parsed on a probe thread's default stack.
        let deep = "[".repeat(MAX_HEALTH_BODY as usize);
        let handle = std::thread::spawn(move || parse_health(200, deep.as_bytes()));
        assert!(handle
            .join()
            .is_ok_and(|r| r == ProbeResult::online_unknown()));
        let deep = format!(r#"{{"status":"fail","x":{}"#, r#"{"a":"#.repeat(200_000));
        let handle = std::thread::spawn(move || parse_health(200, deep.as_bytes()));
        assert!(handle
            .join()
            .is_ok_and(|r| r == ProbeResult::online_unknown()));
    }

    #[test]
    fn nesting_up_to_the_limit_is_read() {
        // Runs on a test thread's 2 MiB stack, like a probe thread.
        let nested = format!(
            r#"{{"usage":9,"x":{}1{}}}"#,
            "[".repeat(MAX_JSON_DEPTH - 1),
            "]".repeat(MAX_JSON_DEPTH - 1)
        );
        assert_eq!(parse_health(200, nested.as_bytes()).usage, Some(9));
        let nested = format!(
            r#"{{"usage":9,"x":{}1{}}}"#,
            r#"{"a":"#.repeat(MAX_JSON_DEPTH - 1),
            "}".repeat(MAX_JSON_DEPTH - 1)
        );
        assert_eq!(parse_health(200, nested.as_bytes()).usage, Some(9));
        let too_deep = format!(r#"{{"usage":9,"x":{}]}}"#, "[".repeat(MAX_JSON_DEPTH));
        assert_eq!(parse_health(200, too_deep.as_bytes()).usage, None);
        // Brackets inside strings (escaped quotes too) are not nesting.
        let body = format!(r#"{{"usage":8,"s":"\"{}"}}"#, "[".repeat(1000));
        assert_eq!(parse_health(200, body.as_bytes()).usage, Some(8));
        assert!(nests_deeper_than(b"[[[", 2));
        assert!(!nests_deeper_than(b"[[]][[]]", 2));
        assert!(!nests_deeper_than(br#"["[[[", "\"[[["]"#, 1));
    }

    /// A one-thread HTTP server on 127.0.0.1:0 answering every connection with
    /// `response`, then closing it. Returns its address and the last request head seen.
    fn serve(response: Vec<u8>) -> (SocketAddr, Arc<Mutex<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(String::new()));
        let seen_by_server = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                *seen_by_server.lock().expect("lock") = String::from_utf8_lossy(&head).into();
                let _ = stream.write_all(&response);
            }
        });
        (addr, seen)
    }

    fn http_response(status: &str, body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    #[test]
    fn probe_reads_a_json_answer_and_sends_the_secret() {
        let body = br#"{"status":"pass","usage":21,"runtimes":{"r":{"status":"pass","usage":7}}}"#;
        let (addr, seen) = serve(http_response("200 OK", body));
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "s3cret");
        assert!(r.online, "{r:?}");
        assert_eq!(r.usage, Some(21));
        assert_eq!(r.runtimes["r"], runtime("pass", 7));
        let head = seen.lock().expect("lock").to_lowercase();
        assert!(head.starts_with("get /v1/health http/1.1\r\n"), "{head}");
        assert!(
            head.contains("\r\nauthorization: bearer s3cret\r\n"),
            "{head}"
        );
    }

    #[test]
    fn probe_plain_ok_and_non_200() {
        let (addr, _) = serve(http_response("200 OK", b"OK"));
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "");
        assert_eq!(r, ProbeResult::online_unknown());

        let (addr, _) = serve(http_response("503 Service Unavailable", b"{}"));
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "");
        assert!(!r.online);
        assert_eq!(r.error.as_deref(), Some("health check returned status 503"));
    }

    #[test]
    fn probe_refused_port() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").port()
        };
        let r = probe(
            &agent(Duration::from_secs(2)),
            &format!("127.0.0.1:{port}"),
            "secret",
        );
        assert!(!r.online);
        assert_eq!(r.error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn probe_times_out_on_a_silent_server() {
        // The kernel completes the handshake from the backlog; nobody ever answers.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let started = Instant::now();
        let r = probe(
            &agent(Duration::from_millis(200)),
            &addr.to_string(),
            "secret",
        );
        let took = started.elapsed();
        assert!(!r.online);
        assert_eq!(r.error.as_deref(), Some("timed out after 200 ms"));
        assert!(
            took >= Duration::from_millis(190) && took < Duration::from_secs(2),
            "{took:?}"
        );
        drop(listener);
    }

    #[test]
    fn probe_rejects_a_body_over_1_mib() {
        let body = vec![b' '; 2 * 1024 * 1024];
        let (addr, _) = serve(http_response("200 OK", &body));
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "secret");
        assert!(!r.online);
        assert_eq!(r.error.as_deref(), Some("health body over 1 MiB"));

        // Same without a Content-Length: the cap applies while reading.
        let mut response = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        response.extend_from_slice(&body);
        let (addr, _) = serve(response);
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "secret");
        assert_eq!(r.error.as_deref(), Some("health body over 1 MiB"));
    }

    #[test]
    fn probe_accepts_a_body_of_exactly_1_mib() {
        let mut body = br#"{"usage":12}"#.to_vec();
        body.resize(MAX_HEALTH_BODY as usize, b' ');
        let (addr, _) = serve(http_response("200 OK", &body));
        let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "secret");
        assert!(r.online, "{r:?}");
        assert_eq!(r.usage, Some(12));
    }

    #[test]
    fn probe_survives_garbage_responses() {
        for response in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"",
        ] {
            let (addr, _) = serve(response.to_vec());
            let r = probe(&agent(Duration::from_secs(2)), &addr.to_string(), "secret");
            assert!(!r.online, "{}", String::from_utf8_lossy(response));
            let error = r.error.unwrap_or_default();
            assert!(
                !error.is_empty() && error.len() <= crate::report::reason::MAX_REASON_CHARS,
                "{error}"
            );
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
