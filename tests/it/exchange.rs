//! Issue 8: the exchange with executors, byte for byte. Each test drives the real proxy
//! over 127.0.0.1 against a scripted raw executor (`support::scripted`) and asserts what
//! the client gets and what reached the executor.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::scripted::*;
use crate::support::*;
use sonic_rs::JsonValueTrait;

/// A complete fake response an executor sends on an idle connection.
const EVIL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!";
const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

fn key() -> (&'static str, String) {
    ("Authorization", bearer())
}

/// `GET target` with the key on `c`.
fn get(c: &mut Client, target: &str) -> Response {
    let (k, v) = key();
    c.request("GET", target, &[(k, &v)], b"")
}

/// A broadcast `method target` with the key on `c`.
fn broadcast(c: &mut Client, method: &str, target: &str) -> Response {
    let (k, v) = key();
    c.request(
        method,
        target,
        &[(k, &v), ("x-opr-addressing-method", "broadcast")],
        b"",
    )
}

/// The executor saw exactly one request to `target`, and `r` is its genuine answer
/// (`conn-<i>-req-<j>` of that very exchange, not of another one).
fn assert_genuine(ex: &ScriptedExecutor, target: &str, r: &Response, what: &str) -> RecordedRaw {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(
        r.text().starts_with("conn-"),
        "{what}: the client got bytes no exchange of its own produced: {:?}",
        r.text()
    );
    let recorded = ex.requests_to(target);
    let seen: Vec<_> = recorded.iter().map(|r| (r.conn, r.index)).collect();
    assert_eq!(
        recorded.len(),
        1,
        "{what}: the executor saw {target} {} times (conn, request) {seen:?}; answer {:?}",
        recorded.len(),
        r.text()
    );
    let rec = recorded[0].clone();
    assert_eq!(
        r.text(),
        genuine_body(rec.conn, rec.index),
        "{what}: the client got another exchange's answer"
    );
    rec
}

fn assert_json_error(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(
        v["code"].as_u64(),
        Some(status as u64),
        "{what}: {}",
        r.text()
    );
    assert!(v["message"].as_str().is_some(), "{what}: {}", r.text());
}

/// Wait until the executor's script for the (first) request to `target` has run to its
/// end (the bytes or FIN it sends after the answer are on their way to the proxy), or the
/// proxy closed that connection (nothing of it can reach the pool then).
fn script_done(ex: &ScriptedExecutor, target: &str) {
    let conn = ex.requests_to(target)[0].conn;
    assert!(
        eventually(Duration::from_secs(10), || ex
            .conn(conn)
            .is_some_and(|r| r.scripts_done >= 1 || r.eof_at.is_some())),
        "the executor's script for {target} did not finish"
    );
}

/// Item 1 scenario: client A's request to `/a` is answered with `answer`; ~300 ms later
/// the executor sends `stray` on that same connection, which now sits in the pool. After
/// ~600 ms client B (a new client connection) sends `GET /b`, then `GET /c` on the same
/// client connection: both must get the genuine answer of a fresh exchange, B on a new
/// executor connection.
fn poisoned_pool(a_method: &str, answer: &[u8], stray: &[u8], a_status: u16) {
    let (answer, stray) = (answer.to_vec(), stray.to_vec());
    let ex = ScriptedExecutor::start(move |conn, index, req| {
        if req.target().starts_with("/a") {
            vec![
                Action::Write(answer.clone()),
                Action::Sleep(300),
                Action::Write(stray.clone()),
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let (k, v) = key();
    let a = proxy.client().request(a_method, "/a", &[(k, &v)], b"");
    assert_eq!(a.status, a_status, "A: {}", a.text());
    // Timing situation: the stray bytes arrive while the connection is idle in the pool.
    script_done(&ex, "/a");

    let mut b = proxy.client();
    let rb = get(&mut b, "/b");
    let rec_b = assert_genuine(&ex, "/b", &rb, "B");
    let rec_a = ex.requests_to("/a")[0].clone();
    assert_ne!(
        rec_b.conn, rec_a.conn,
        "B was sent on A's executor connection, which was not clean"
    );
    let rc = get(&mut b, "/c");
    assert_genuine(&ex, "/c", &rc, "third request (shifted by one?)");
}

/// Issue 8 item 1: poisoned pool, `204 No Content` then a stray response while idle.
#[test]
fn item1_stray_response_after_204_is_not_read_as_next_answer() {
    poisoned_pool("GET", NO_CONTENT, EVIL, 204);
}

/// Issue 8 item 1: poisoned pool, `304` with `Content-Length: 10` (no body) then a stray
/// response while idle.
#[test]
fn item1_stray_response_after_304_is_not_read_as_next_answer() {
    poisoned_pool(
        "GET",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        EVIL,
        304,
    );
}

/// Issue 8 item 1: poisoned pool, an answer to `HEAD` with `Content-Length: 5`, then the
/// 5 body bytes (which a HEAD answer must not have) arrive late.
#[test]
fn item1_late_body_after_head_answer_is_not_read_as_next_answer() {
    poisoned_pool(
        "HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        b"hello",
        200,
    );
}

/// Issue 8 item 1: poisoned pool, a `Content-Length` 200 answer then a second response.
#[test]
fn item1_stray_response_after_length_answer_is_not_read_as_next_answer() {
    poisoned_pool(
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        EVIL,
        200,
    );
}

/// Issue 8 item 1: poisoned pool, a chunked 200 answer then a second response.
#[test]
fn item1_stray_response_after_chunked_answer_is_not_read_as_next_answer() {
    poisoned_pool(
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        EVIL,
        200,
    );
}

/// Issue 8 item 1: stray bytes in the same write as the answer
/// (`Content-Length: 2` then `okEXTRA`): the next request uses a new executor connection.
#[test]
fn item1_extra_bytes_with_the_answer_make_the_connection_unusable() {
    poisoned_pool(
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
        b"",
        200,
    );
}

/// Issue 8 item 1: the same with the body sent after the head (100 ms later), the extra
/// bytes in the same write as the body (`okEXTRA`): the proxy must not leave them unread
/// in a pooled connection.
#[test]
fn item1_extra_bytes_with_a_late_body_make_the_connection_unusable() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        if req.target().starts_with("/a") {
            vec![
                Action::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec()),
                Action::Sleep(100),
                Action::Write(b"okEXTRA".to_vec()),
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let a = get(&mut proxy.client(), "/a");
    assert_eq!((a.status, a.text().as_str()), (200, "ok"));
    let mut b = proxy.client();
    let rec_b = assert_genuine(&ex, "/b", &get(&mut b, "/b"), "B");
    assert_ne!(
        rec_b.conn,
        ex.requests_to("/a")[0].conn,
        "B was sent on a connection with unread bytes"
    );
    assert_genuine(&ex, "/c", &get(&mut b, "/c"), "third request");
}

/// Issue 8 item 1: EOF while idle. The executor answers keep-alive, then closes its side
/// (FIN) 200 ms later; the next request is a POST with a body: it gets 200 from a fresh
/// connection and the executor receives that POST exactly once (the half-closed
/// connection must not be used at all, so nothing has to be replayed).
#[test]
fn item1_connection_closed_while_idle_is_not_used_for_a_post() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        if req.target().starts_with("/a") {
            vec![
                Action::Write(genuine(conn, index)),
                Action::Sleep(200),
                Action::CloseWrite,
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let ra = get(&mut proxy.client(), "/a");
    let rec_a = assert_genuine(&ex, "/a", &ra, "A");
    // Timing situation: the executor's FIN arrives while the connection is pooled.
    script_done(&ex, "/a");

    let (k, v) = key();
    let rp = proxy.client().request("POST", "/p", &[(k, &v)], b"hello");
    let posts = ex.requests_to("/p");
    assert_eq!(
        posts.len(),
        1,
        "the executor received the POST {} times: {:?}",
        posts.len(),
        posts.iter().map(|p| (p.conn, p.index)).collect::<Vec<_>>()
    );
    let rec_p = assert_genuine(&ex, "/p", &rp, "POST");
    assert_ne!(
        rec_p.conn, rec_a.conn,
        "the POST went to the half-closed connection"
    );
    assert!(rec_p.body() == b"hello", "{:?}", rec_p.head());
}

/// Item 2 executor: the first request on a connection is answered (keep-alive, so the
/// connection is pooled); every later one is read whole and then met with `then`.
fn answer_first_only(then: Vec<Action>) -> ScriptedExecutor {
    ScriptedExecutor::start(move |conn, index, _| {
        if index == 0 {
            vec![Action::Write(genuine(conn, index))]
        } else {
            then.clone()
        }
    })
}

/// Issue 8 item 2 (a): no automatic retry of a non-idempotent request. The executor
/// reads a POST on a pooled connection and closes without answering: the client gets a
/// 502 JSON and the POST reached the executor exactly once.
#[test]
fn item2_post_on_pooled_connection_closed_unanswered_is_502_not_replayed() {
    let ex = answer_first_only(vec![Action::Close]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    assert_genuine(&ex, "/first", &get(&mut c, "/first"), "first");
    let (k, v) = key();
    let r = c.request("POST", "/second", &[(k, &v)], b"hello");
    let posts = ex.requests_to("/second");
    assert_eq!(
        posts.len(),
        1,
        "the POST was replayed: the executor received it {} times",
        posts.len()
    );
    assert_json_error(&r, 502, "POST closed unanswered");
}

/// Issue 8 item 2 (b): an idempotent GET on a pooled connection that the executor closes
/// unanswered is replayed once on a fresh connection: 200, and the executor saw it twice.
#[test]
fn item2_get_on_pooled_connection_closed_unanswered_is_replayed_once() {
    let ex = answer_first_only(vec![Action::Close]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    assert_genuine(&ex, "/first", &get(&mut c, "/first"), "first");
    let r = get(&mut c, "/second");
    let gets = ex.requests_to("/second");
    assert_eq!(
        gets.len(),
        2,
        "the GET reached the executor {} times",
        gets.len()
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let replay = &gets[1];
    assert_ne!(
        replay.conn, gets[0].conn,
        "the replay must use a fresh connection"
    );
    assert_eq!(r.text(), genuine_body(replay.conn, replay.index));
}

/// Issue 8 item 2 (c): as (b), but the executor sends `100 Continue` before closing: a
/// response byte came back, so the GET is not replayed: 502, and the executor saw it once.
#[test]
fn item2_get_after_interim_100_is_not_replayed() {
    let ex = answer_first_only(vec![
        Action::Write(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec()),
        Action::Close,
    ]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    assert_genuine(&ex, "/first", &get(&mut c, "/first"), "first");
    let r = get(&mut c, "/second");
    let gets = ex.requests_to("/second");
    assert_eq!(
        gets.len(),
        1,
        "the GET was replayed after a 100 Continue: the executor saw it {} times",
        gets.len()
    );
    assert_json_error(&r, 502, "GET after 100 Continue then close");
}

/// Issue 8 item 3 (a): framing to the client. A `204` carries no `Content-Length`
/// (RFC 9110 §8.6) even when the executor sent `Content-Length: 0`; a `304` and a HEAD
/// answer keep `Content-Length: 10` (it describes the representation).
#[test]
fn item3_204_has_no_content_length_but_304_and_head_keep_it() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        let answer: &[u8] = match (req.method().as_str(), req.target().as_str()) {
            ("GET", "/204") => b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            ("GET", "/304") => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
            ("HEAD", "/head") => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
            _ => return vec![Action::Write(genuine(conn, index))],
        };
        vec![Action::Write(answer.to_vec())]
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let (k, v) = key();

    let r = get(&mut proxy.client(), "/304");
    assert_eq!(r.status, 304);
    assert_eq!(
        r.header("content-length"),
        Some("10"),
        "304: {:?}",
        r.headers
    );

    let r = proxy.client().request("HEAD", "/head", &[(k, &v)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("10"),
        "HEAD: {:?}",
        r.headers
    );

    let mut c = proxy.client();
    let r = get(&mut c, "/204");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("content-length"),
        None,
        "a 204 must not carry Content-Length: {:?}",
        r.headers
    );
    // The connection stays usable after the 204.
    assert_genuine(&ex, "/after", &get(&mut c, "/after"), "after 204");
}

/// Issue 8 item 3 (b): a transfer coding other than chunked (`gzip, chunked`) is refused
/// with a 502 JSON, never stripped.
#[test]
fn item3_response_with_gzip_transfer_coding_is_502() {
    let ex = ScriptedExecutor::start(|_, _, _| {
        vec![Action::Write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
        )]
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let r = get(&mut proxy.client(), "/gz");
    assert_json_error(
        &r,
        502,
        &format!("gzip coding must not be stripped, headers {:?}", r.headers),
    );
}

/// Issue 8 item 3 (c): a close-delimited executor answer reaches an HTTP/1.1 client
/// chunked, and that client connection then serves a second request; an HTTP/1.0 client
/// gets the body delimited by close, not chunked.
#[test]
fn item3_close_delimited_answer_is_chunked_to_http11_and_keeps_the_client() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        if req.target().starts_with("/close") {
            vec![
                Action::Write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello".to_vec()),
                Action::Close,
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);

    // HTTP/1.0: close-delimited, no chunked.
    let mut c = proxy.client();
    c.send(
        format!(
            "GET /close10 HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let r = c.read_response(false).expect("an answer to HTTP/1.0");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), None, "{:?}", r.headers);
    assert_eq!(r.text(), "hello");
    assert!(c.is_closed(), "HTTP/1.0: the body ends with the connection");

    // HTTP/1.1: chunked, and the client connection stays.
    let mut c = proxy.client();
    let r = get(&mut c, "/close11");
    assert_eq!(r.status, 200);
    assert!(
        r.header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked")),
        "HTTP/1.1 client must get the close-delimited body chunked: {:?}",
        r.headers
    );
    assert_eq!(r.text(), "hello");
    assert!(!r.truncated);
    assert_genuine(&ex, "/next", &get(&mut c, "/next"), "second request");
}

/// Issue 8 item 4: trailer fields of a chunked request are not forwarded. The executor
/// gets the body with its chunked framing (ending `0\r\n\r\n`) and none of the trailers.
#[test]
fn item4_request_trailers_are_not_forwarded() {
    let ex = ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "POST /x HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nTransfer-Encoding: chunked\r\n\r\n\
             5\r\nhello\r\n0\r\nAuthorization: Bearer {SECRET}\r\nX-Trailer: v\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let r = c.read_response(false).expect("an answer");
    let rec = assert_genuine(&ex, "/x", &r, "chunked POST");
    let body = String::from_utf8_lossy(rec.body()).into_owned();
    let all = String::from_utf8_lossy(&rec.bytes).to_ascii_lowercase();
    assert!(body.contains("hello"), "{body:?}");
    assert!(
        !all.contains(SECRET) && !all.contains("x-trailer"),
        "trailer fields reached the executor: {body:?}"
    );
    assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
}

/// Issue 8 item 5: a client that leaves while the executor computes. The executor holds
/// its answer for 5 s (or until the proxy closes); the client sends a GET and closes its
/// socket 300 ms later: the proxy closes the executor connection within 2 s.
#[test]
fn item5_client_leaving_closes_the_executor_connection() {
    let ex = ScriptedExecutor::start(|conn, index, _| {
        vec![
            Action::WaitForClose(5000),
            Action::Write(genuine(conn, index)),
        ]
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "GET /slow HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    assert!(eventually(Duration::from_secs(5), || ex
        .requests_to("/slow")
        .len()
        == 1));
    let conn = ex.requests_to("/slow")[0].conn;
    thread::sleep(Duration::from_millis(300));
    drop(c);
    let left = Instant::now();
    let closed = eventually(Duration::from_secs(3), || {
        ex.conn(conn).is_some_and(|r| r.eof_at.is_some())
    });
    assert!(
        closed,
        "the executor connection is still open {:?} after the client left",
        left.elapsed()
    );
    let eof = ex.conn(conn).unwrap().eof_at.unwrap();
    let after = eof.saturating_duration_since(left);
    assert!(
        after <= Duration::from_secs(2),
        "closed only {after:?} after the client left"
    );
}

/// Issue 8 item 5 (companion): a pipelined request that arrives while the executor is
/// still working (1 s) is not mistaken for the client leaving: both answers arrive, in
/// order, on the same connection.
#[test]
fn item5_pipelined_request_during_slow_answer_is_served_in_order() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        let mut actions = Vec::new();
        if req.target().starts_with("/slow") {
            actions.push(Action::Sleep(1000));
        }
        actions.push(Action::Write(genuine(conn, index)));
        actions
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "GET /slow HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    // The second request is pipelined while the first is at the executor.
    assert!(eventually(Duration::from_secs(5), || ex
        .requests_to("/slow")
        .len()
        == 1));
    c.send(
        format!(
            "GET /fast HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let first = c.read_response(false).expect("first answer");
    let second = c.read_response(false).expect("second answer");
    assert_genuine(&ex, "/slow", &first, "first (slow)");
    assert_genuine(&ex, "/fast", &second, "second (pipelined)");
}

/// Issue 8 item 6 (a): broadcast with `Expect: 100-continue`: the client gets
/// `100 Continue` within 1 s of sending the head, then 204; every executor got the body.
#[test]
fn item6_broadcast_answers_100_continue() {
    let script =
        |_: ConnIndex, _: RequestIndex, _: &RecordedRaw| vec![Action::Write(NO_CONTENT.to_vec())];
    let (e1, e2) = (
        ScriptedExecutor::start(script),
        ScriptedExecutor::start(script),
    );
    let proxy = Proxy::start_hosts(&[e1.hostname(), e2.hostname()], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "POST /bc HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\nx-opr-addressing-method: broadcast\r\n\
             Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    c.stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    match c.read_head() {
        Ok((status, _)) => assert_eq!(status, 100, "expected 100 Continue first"),
        Err(e) => panic!("no 100 Continue within 1 s of the head: {e}"),
    }
    c.stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    c.send(b"hello");
    let r = c.read_response(false).expect("the broadcast answer");
    assert_eq!(r.status, 204, "{}", r.text());
    for ex in [&e1, &e2] {
        let got = ex.requests_to("/bc");
        assert_eq!(got.len(), 1, "{}", ex.hostname());
        assert_eq!(got[0].body(), b"hello", "{}", ex.hostname());
    }
}

/// Issue 8 item 6 (b): an executor answers the broadcast `204` and sends stray bytes
/// 300 ms later: the next normal (anycast) request gets a genuine answer.
#[test]
fn item6_stray_bytes_after_broadcast_do_not_poison_the_pool() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        if req.target().starts_with("/bc") {
            vec![
                Action::Write(NO_CONTENT.to_vec()),
                Action::Sleep(300),
                Action::Write(EVIL.to_vec()),
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let r = broadcast(&mut proxy.client(), "DELETE", "/bc");
    assert_eq!(r.status, 204);
    assert_eq!(ex.requests_to("/bc").len(), 1);
    // Timing situation: the stray bytes arrive while the connection is pooled.
    script_done(&ex, "/bc");

    let mut c = proxy.client();
    let rb = assert_genuine(
        &ex,
        "/next",
        &get(&mut c, "/next"),
        "anycast after broadcast",
    );
    assert_ne!(
        rb.conn,
        ex.requests_to("/bc")[0].conn,
        "reused the poisoned connection"
    );
    assert_genuine(&ex, "/third", &get(&mut c, "/third"), "third request");
}

/// Issue 8 item 6 (c): an executor that was up at start and then stops listening: a
/// broadcast that gets its connection refused marks it offline at once (the health checker
/// is 60 s away and does not intervene).
#[test]
fn item6_broadcast_refused_marks_executor_offline() {
    let script =
        |_: ConnIndex, _: RequestIndex, _: &RecordedRaw| vec![Action::Write(NO_CONTENT.to_vec())];
    let good = ScriptedExecutor::start(script);
    let mut doomed = ScriptedExecutor::start(script);
    let proxy = Proxy::start_hosts(
        &[good.hostname(), doomed.hostname()],
        &[("OPR_PROXY_HEALTHCHECK_INTERVAL", "60000")],
    );
    let status = |i: usize| {
        let v = proxy.get("/v1/proxy/containers").json();
        (
            v[i]["hostname"].as_str().unwrap_or("").to_string(),
            v[i]["status"].as_str().unwrap_or("").to_string(),
        )
    };
    assert!(eventually(Duration::from_secs(5), || status(0).1
        == "online"
        && status(1).1 == "online"));
    doomed.stop();

    let r = broadcast(&mut proxy.client(), "DELETE", "/bc");
    assert_eq!(r.status, 204);
    assert_eq!(good.requests_to("/bc").len(), 1);
    let (host, state) = status(1);
    assert_eq!(host, doomed.hostname());
    assert_eq!(
        state, "offline",
        "a refused broadcast must flag the executor offline"
    );
}

/// Issue 8 item 6 (d): a stale pooled connection. The executor closes its idle keep-alive
/// connection after a first broadcast; a second broadcast (DELETE) still reaches it and
/// the client gets 204.
#[test]
fn item6_broadcast_survives_a_stale_pooled_connection() {
    let ex = ScriptedExecutor::start(|_, _, req| {
        if req.target().starts_with("/bc1") {
            vec![
                Action::Write(NO_CONTENT.to_vec()),
                Action::Sleep(100),
                Action::Close,
            ]
        } else {
            vec![Action::Write(NO_CONTENT.to_vec())]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    assert_eq!(broadcast(&mut c, "DELETE", "/bc1").status, 204);
    let first = ex.requests_to("/bc1")[0].conn;
    assert!(eventually(Duration::from_secs(5), || {
        ex.conn(first)
            .is_some_and(|r| r.closed_by_executor_at.is_some())
    }));
    // Timing situation: let the FIN reach the proxy's pooled socket.
    thread::sleep(Duration::from_millis(100));

    assert_eq!(broadcast(&mut c, "DELETE", "/bc2").status, 204);
    assert!(
        eventually(Duration::from_secs(2), || ex.requests_to("/bc2").len() == 1),
        "the second broadcast never reached the executor ({} requests recorded)",
        ex.requests().len()
    );
}

/// Issue 8 item 7 (a): a worker flags an executor offline after a refused connection;
/// the executor listens again on the same port before the next health round; that round
/// logs `Executor "<host:port>" went online` (the flag is not cleared silently).
#[test]
fn item7_flag_cleared_by_health_round_logs_went_online() {
    let mut ex =
        ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let host = ex.hostname();
    let p = ProxyProcess::start(
        std::slice::from_ref(&host),
        &[("OPR_PROXY_HEALTHCHECK_INTERVAL", "1000")],
    );
    // Start right after a health round, so the next one is about 1 s away.
    let seen = ex.health_checks().len();
    assert!(eventually(Duration::from_secs(5), || ex
        .health_checks()
        .len()
        > seen));
    ex.stop();
    let (k, v) = key();
    let _ = Client::connect(p.addr).request("GET", "/v1/x", &[(k, &v)], b"");
    p.wait_for_log("went offline", Duration::from_secs(2));
    ex.listen_again();
    let seen = ex.health_checks().len();
    assert!(
        eventually(Duration::from_secs(5), || ex.health_checks().len() > seen),
        "no health round reached the executor after it came back"
    );
    let online = format!("Executor \"{host}\" went online");
    let logged = eventually(Duration::from_secs(3), || p.log().contains(&online));
    let log = p.log();
    let by_checker = log
        .lines()
        .filter(|l| l.contains("went offline") && !l.contains("flagged by worker"))
        .count();
    assert_eq!(
        by_checker, 0,
        "timing: a health round saw the executor down too, so the flag-only case was not tested:\n{log}"
    );
    assert!(logged, "missing `{online}` after the health round:\n{log}");
}

/// Issue 8 item 7 (b): in production mode a client's `x-opr-executor-hostname` header
/// does not reach the executor.
#[test]
fn item7_client_executor_hostname_header_is_dropped_in_production() {
    let ex = ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let (k, v) = key();
    let r = proxy.client().request(
        "GET",
        "/x",
        &[(k, &v), ("x-opr-executor-hostname", "spoofed")],
        b"",
    );
    let rec = assert_genuine(&ex, "/x", &r, "GET");
    let head = rec.head().to_ascii_lowercase();
    assert!(
        !head.contains("x-opr-executor-hostname") && !head.contains("spoofed"),
        "the client's header reached the executor:\n{}",
        rec.head()
    );
}

/// Issue 8 item 7 (c): `CONNECT` with an origin-form target is refused with 400 JSON.
#[test]
fn item7_connect_is_400() {
    let ex = ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let mut c = proxy.client();
    c.send(
        format!(
            "CONNECT /path HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let r = c.read_response(false).expect("an answer");
    let forwarded = ex.requests().len();
    assert_json_error(&r, 400, &format!("CONNECT (forwarded {forwarded} times)"));
    assert_eq!(forwarded, 0, "CONNECT reached the executor");
}

/// Send a head announcing a 5 MB body, keep writing body bytes from another thread
/// (errors ignored), and read the whole answer on this thread; then the connection must
/// end with a clean EOF (the proxy shut its side down and drains the body), not a reset
/// (closing with unread bytes, which on a real network can destroy the answer in flight).
fn answer_while_uploading(proxy: &Proxy, authorization: &str) -> Response {
    let mut c = proxy.client();
    c.send(
        format!(
            "POST /v1/x HTTP/1.1\r\nHost: t\r\nAuthorization: {authorization}\r\nContent-Length: 5000000\r\n\r\n"
        )
        .as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let uploader = thread::spawn(move || {
        let piece = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < 5_000_000 {
            match writer.write(&piece) {
                Ok(n) if n > 0 => sent += n,
                _ => break,
            }
        }
    });
    let r = c.read_response(false);
    let after = c.stream.read(&mut [0u8; 1]);
    let _ = c.stream.shutdown(std::net::Shutdown::Both);
    let _ = uploader.join();
    let r = r.unwrap_or_else(|e| panic!("no complete answer while the body was still coming: {e}"));
    assert!(
        matches!(after, Ok(0)),
        "after the answer: {after:?} instead of a clean EOF (no lingering close)"
    );
    r
}

/// Issue 8 item 7 (d): lingering close. A request refused before its body was read
/// (wrong key → 401; body over `OPR_PROXY_MAX_BODY_SIZE` → 413) while the client keeps
/// sending the body: the client still reads the complete JSON answer.
#[test]
fn item7_refused_upload_answer_survives_lingering_close() {
    let ex = ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);
    let r = answer_while_uploading(&proxy, "Bearer wrong");
    assert_json_error(&r, 401, "wrong key");
    assert!(!r.truncated, "401 body truncated");
    assert_eq!(r.header("content-type"), Some("application/json"));

    let proxy = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_MAX_BODY_SIZE", "1000")]);
    let r = answer_while_uploading(&proxy, &bearer());
    assert_json_error(&r, 413, "body over the limit");
    assert!(!r.truncated, "413 body truncated");
    assert_eq!(ex.requests().len(), 0);
}

/// Issue 8 item 7 (e): the proxy's own answers are written under a deadline. A client
/// pipelines `GET /v1/proxy/health` requests without reading until the proxy stalls on
/// writing, then 3 s more; when it reads, the connection reaches EOF within 10 s with
/// fewer answers than requests sent (the proxy gave up on the connection).
#[test]
fn item7_client_that_does_not_read_answers_is_closed() {
    let ex = ScriptedExecutor::start(|conn, index, _| vec![Action::Write(genuine(conn, index))]);
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_BODY_TIMEOUT", "1")]);
    let c = proxy.client();
    const REQUEST: &[u8] = b"GET /v1/proxy/health HTTP/1.1\r\nHost: t\r\n\r\n";
    let block: Vec<u8> = REQUEST.repeat(64 * 1024 / REQUEST.len());
    let written = Arc::new(AtomicU64::new(0));
    let mut writer = c.stream.try_clone().unwrap();
    let written2 = written.clone();
    let uploader = thread::spawn(move || {
        // Up to 256 MB: far more than every socket buffer on the way.
        while written2.load(Ordering::Relaxed) < 256 << 20 {
            match writer.write(&block) {
                Ok(n) if n > 0 => written2.fetch_add(n as u64, Ordering::Relaxed),
                _ => break,
            };
        }
    });
    // Wait until the writer is blocked (the proxy stopped reading: it is stuck writing
    // answers nobody reads), then do not read for 3 s more.
    let mut last = (0, Instant::now());
    let stalled = eventually(Duration::from_secs(60), || {
        let now = written.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        last.1.elapsed() > Duration::from_millis(500)
    });
    assert!(
        stalled,
        "the proxy kept reading requests nobody reads answers to"
    );
    thread::sleep(Duration::from_secs(3));

    let mut stream = c.stream;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    let (mut answers, mut tail, mut eof) = (0u64, Vec::new(), false);
    let mut buf = vec![0u8; 256 * 1024];
    while started.elapsed() < Duration::from_secs(10) {
        match stream.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => {
                // Count answer heads across read boundaries.
                tail.extend_from_slice(&buf[..n]);
                answers += tail.windows(12).filter(|w| w == b"HTTP/1.1 200").count() as u64;
                let keep = tail.len().min(11);
                tail.drain(..tail.len() - keep);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                eof = true;
                break;
            }
            Err(_) => {}
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = uploader.join();
    let requests = written.load(Ordering::Relaxed) / REQUEST.len() as u64;
    assert!(
        eof,
        "no EOF within 10 s of reading ({answers} answers to {requests} requests so far)"
    );
    assert!(
        answers < requests,
        "all {requests} requests were answered: the proxy never gave up"
    );
}

/// Answers larger than the 8 KiB head buffer: the head is held back and leaves in one
/// write with the next body bytes (when they are copied). Every framing must arrive byte
/// for byte, and a head whose body pauses must not wait for it.
#[test]
fn item3_answers_past_the_head_buffer_arrive_exactly_and_heads_are_not_held_by_a_pause() {
    const N: usize = 30_000;
    let body: Vec<u8> = (0..N).map(|i| b'a' + (i % 26) as u8).collect();
    let chunked = {
        let mut c = Vec::new();
        for part in body.chunks(7_000) {
            c.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            c.extend_from_slice(part);
            c.extend_from_slice(b"\r\n");
        }
        c.extend_from_slice(b"0\r\n\r\n");
        c
    };
    let (b, ch) = (body.clone(), chunked.clone());
    let ex = ScriptedExecutor::start(move |conn, index, req| {
        let with = |head: &str, rest: &[u8]| {
            let mut w = head.as_bytes().to_vec();
            w.extend_from_slice(rest);
            w
        };
        let target = req.target();
        if target.starts_with("/length") {
            vec![Action::Write(with(
                &format!("HTTP/1.1 200 OK\r\nContent-Length: {N}\r\n\r\n"),
                &b,
            ))]
        } else if target.starts_with("/chunked") {
            vec![Action::Write(with(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                &ch,
            ))]
        } else if target.starts_with("/close") {
            vec![
                Action::Write(with("HTTP/1.1 200 OK\r\n\r\n", &b)),
                Action::Close,
            ]
        } else if target.starts_with("/pause") {
            // The head and a little body, then a pause before the rest.
            vec![
                Action::Write(with(
                    &format!("HTTP/1.1 200 OK\r\nContent-Length: {N}\r\n\r\n"),
                    &b[..100],
                )),
                Action::Sleep(1_500),
                Action::Write(b[100..].to_vec()),
            ]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[]);

    let mut c = proxy.client();
    for target in ["/length", "/chunked", "/close11"] {
        let r = get(&mut c, target);
        assert_eq!(r.status, 200, "{target}");
        assert!(!r.truncated, "{target}");
        assert!(
            r.body == body,
            "{target}: body differs ({} bytes)",
            r.body.len()
        );
        if target == "/close11" {
            break; // its executor connection is gone; the client's stays usable
        }
    }
    assert_genuine(
        &ex,
        "/next",
        &get(&mut c, "/next"),
        "after the large answers",
    );

    // HTTP/1.0 clients: a chunked answer as its payload, a close-delimited one as is.
    for target in ["/chunked10", "/close10"] {
        let mut c = proxy.client();
        c.send(
            format!(
                "GET {target} HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
                bearer()
            )
            .as_bytes(),
        );
        let r = c.read_response(false).expect("an answer to HTTP/1.0");
        assert_eq!(r.status, 200, "{target}");
        assert!(
            r.body == body,
            "{target}: body differs ({} bytes)",
            r.body.len()
        );
    }

    // A pause after the first bytes: the head is not held for the rest.
    let mut c = proxy.client();
    c.send(
        format!(
            "GET /pause HTTP/1.1\r\nHost: t\r\nAuthorization: {}\r\n\r\n",
            bearer()
        )
        .as_bytes(),
    );
    let started = std::time::Instant::now();
    let mut first = [0u8; 64];
    let n = std::io::Read::read(&mut c.stream, &mut first).unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &first[..n]);
    assert!(
        started.elapsed() < std::time::Duration::from_millis(1_000),
        "the head waited {:?} for the paused body",
        started.elapsed()
    );
}

/// A head held back to leave with the next body bytes, and then the executor closes:
/// nothing reached the client yet, so it gets a clean `502` (not a silent close), keeps
/// its connection, and the next request is served.
#[test]
fn item3_executor_closing_before_a_held_head_left_is_a_clean_502() {
    let ex = ScriptedExecutor::start(|conn, index, req| {
        if req.target().starts_with("/cut") {
            // Exactly a head buffer (8 KiB) in one write, so the head is held for the
            // next bytes; then EOF, 30 000 bytes short.
            let mut w = b"HTTP/1.1 200 OK\r\nContent-Length: 38000\r\n\r\n".to_vec();
            w.resize(8 * 1024, b'x');
            vec![Action::Write(w), Action::Close]
        } else {
            vec![Action::Write(genuine(conn, index))]
        }
    });
    let proxy = Proxy::start_hosts(&[ex.hostname()], &[("OPR_PROXY_ENV", "development")]);
    let mut c = proxy.client();
    let r = get(&mut c, "/cut");
    assert_json_error(&r, 502, "executor closed mid-body before the head left");
    assert!(
        r.text().contains("inside its response body"),
        "{}",
        r.text()
    );
    assert_genuine(&ex, "/next", &get(&mut c, "/next"), "after the 502");
}
