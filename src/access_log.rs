//! The access log (`OPR_PROXY_ACCESS_LOG=enabled`): one line per request, text or JSON
//! (`OPR_PROXY_ACCESS_LOG_FORMAT`), on stdout. A worker appends lines to its own buffer
//! (no I/O, no lock, no allocation once warm) and hands full buffers to one writer
//! thread every `FLUSH` through a bounded channel; when the writer falls behind, lines
//! are dropped and counted, and the worker never waits.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crate::config::AccessLogFormat;
use crate::http::head::RequestHead;
use crate::metrics::WorkerMetrics;
use crate::text::{write_rfc3339, JsonEscape, VecWriter};

/// How often a worker hands its lines to the writer.
pub(crate) const FLUSH: Duration = Duration::from_millis(100);
/// Batches waiting for the writer before workers start dropping lines.
const QUEUE: usize = 64;
/// A worker's buffer never grows past this between flushes; further lines are dropped.
const MAX_PENDING: usize = 4 * 1024 * 1024;
const BATCH: usize = 64 * 1024;
/// Longest target written (longer ones are cut).
const MAX_TARGET: usize = 2048;

struct Batch {
    lines: Vec<u8>,
    back: Sender<Vec<u8>>,
}

/// The writer thread; it ends when every worker's log is dropped.
pub(crate) struct Writer {
    tx: SyncSender<Batch>,
    thread: JoinHandle<()>,
}

impl Writer {
    pub(crate) fn start() -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel::<Batch>(QUEUE);
        let thread = std::thread::Builder::new()
            .name("opr-access-log".into())
            .spawn(move || {
                for mut batch in rx {
                    let _ = std::io::stdout().lock().write_all(&batch.lines);
                    batch.lines.clear();
                    let _ = batch.back.send(batch.lines);
                }
            })?;
        Ok(Writer { tx, thread })
    }

    /// A worker's end of the log.
    pub(crate) fn log(&self, format: AccessLogFormat) -> AccessLog {
        let (back, spare) = mpsc::channel();
        AccessLog {
            format,
            lines: RefCell::new(Vec::with_capacity(BATCH)),
            tx: RefCell::new(Some(self.tx.clone())),
            back,
            spare,
        }
    }

    /// Wait until every line handed over is written (after the workers stopped).
    pub(crate) fn finish(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

/// One request as the access log shows it.
pub(crate) struct Entry<'a> {
    pub(crate) client: IpAddr,
    /// `METHOD target` as received.
    pub(crate) request_line: &'a [u8],
    pub(crate) status: u16,
    pub(crate) executor: Option<&'a str>,
    /// 1–3, 0 for `anycast-fast`; `None` when no executor was chosen.
    pub(crate) tier: Option<u8>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
}

/// One worker's access log buffer.
pub(crate) struct AccessLog {
    format: AccessLogFormat,
    lines: RefCell<Vec<u8>>,
    /// Taken by `close`, so the writer can end even if a task still holds this log.
    tx: RefCell<Option<SyncSender<Batch>>>,
    back: Sender<Vec<u8>>,
    spare: Receiver<Vec<u8>>,
}

impl AccessLog {
    /// Hand over what is left and let go of the writer (the worker is stopping).
    pub(crate) fn close(&self, m: &WorkerMetrics) {
        self.flush(m);
        self.tx.borrow_mut().take();
    }

    /// Append one line (dropped and counted when the buffer is full).
    pub(crate) fn write(&self, e: &Entry<'_>, m: &WorkerMetrics) {
        let mut lines = self.lines.borrow_mut();
        if lines.len() >= MAX_PENDING {
            m.access_log_dropped(1);
            return;
        }
        let (method, target) = split_request_line(e.request_line);
        let target = &target[..target.len().min(MAX_TARGET)];
        let mut w = VecWriter(&mut lines);
        let _ = match self.format {
            AccessLogFormat::Text => text(&mut w, e, method, target),
            AccessLogFormat::Json => {
                let target = String::from_utf8_lossy(target);
                json(&mut w, e, &String::from_utf8_lossy(method), &target)
            }
        };
    }

    /// Hand the buffered lines to the writer; if it is behind, drop them (counted).
    pub(crate) fn flush(&self, m: &WorkerMetrics) {
        let mut lines = self.lines.borrow_mut();
        let tx = self.tx.borrow();
        let Some(tx) = tx.as_ref() else {
            return;
        };
        if lines.is_empty() {
            return;
        }
        let fresh = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(BATCH));
        let full = std::mem::replace(&mut *lines, fresh);
        let batch = Batch {
            lines: full,
            back: self.back.clone(),
        };
        if let Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) =
            tx.try_send(batch)
        {
            let dropped = batch.lines.iter().filter(|&&b| b == b'\n').count();
            m.access_log_dropped(dropped as u64);
        }
    }
}

/// Keep `METHOD target` of the head in `buf` for the access log (HTTP/1 and HTTP/2): the
/// head's bytes may be gone by the time the line is written. The buffer is reused, so
/// this allocates only while it grows.
pub(crate) fn keep_request_line(line: &mut Vec<u8>, buf: &[u8], head: &RequestHead) {
    line.clear();
    line.extend_from_slice(&buf[head.method.clone()]);
    line.push(b' ');
    let target = &buf[head.target.clone()];
    line.extend_from_slice(&target[..target.len().min(4096)]);
}

/// Keep the request line of a head the proxy refused (or one still arriving), as far as
/// it was read: from its first byte (empty lines before it skipped) up to CR, LF or 4 KiB,
/// without the version when the line is whole, so it reads like any other line.
pub(crate) fn keep_partial_request_line(line: &mut Vec<u8>, pending: &[u8]) {
    line.clear();
    let skip = pending
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(pending.len());
    let read = &pending[skip..pending.len().min(skip + 4096)];
    let (mut kept, whole) = match read.iter().position(|&b| b == b'\r' || b == b'\n') {
        Some(end) => (&read[..end], true),
        None => (read, false),
    };
    if whole {
        kept = kept
            .strip_suffix(b" HTTP/1.1")
            .or_else(|| kept.strip_suffix(b" HTTP/1.0"))
            .unwrap_or(kept);
    }
    line.extend_from_slice(kept);
}

fn split_request_line(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[]),
    }
}

/// `2026-12-02T01:02:03.456Z 10.0.0.1 "GET /v1/x" 200 executor=10.0.0.2:80 tier=1 in=312 out=2048 us=845`
fn text(w: &mut VecWriter<'_>, e: &Entry<'_>, method: &[u8], target: &[u8]) -> std::fmt::Result {
    write_rfc3339(w, SystemTime::now())?;
    write!(w, " {} \"", e.client)?;
    escape_bytes(w, method);
    w.write_char(' ')?;
    escape_bytes(w, target);
    write!(
        w,
        "\" {} executor={} tier=",
        e.status,
        e.executor.unwrap_or("-")
    )?;
    match e.tier {
        Some(t) => write!(w, "{t}")?,
        None => w.write_char('-')?,
    }
    writeln!(
        w,
        " in={} out={} us={}",
        e.bytes_in,
        e.bytes_out,
        e.duration.as_micros()
    )
}

/// Request bytes inside the text line's quotes: printable ASCII as it is (`"` and `\`
/// escaped), every other byte as `\xHH` — C0 controls, DEL, and each byte of non-ASCII
/// text, C1 controls (U+0080–U+009F) included — so no byte a client sent reaches a
/// terminal raw, and none is lost to a lossy UTF-8 conversion.
fn escape_bytes(w: &mut VecWriter<'_>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        match b {
            b'"' | b'\\' => w.0.extend_from_slice(&[b'\\', b]),
            0x20..=0x7e => w.0.push(b),
            _ => w.0.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
    }
}

/// `{"time":…,"client":…,"method":…,"target":…,"status":…,"executor":…,"tier":…,
/// "bytesIn":…,"bytesOut":…,"durationUs":…}`
fn json(w: &mut VecWriter<'_>, e: &Entry<'_>, method: &str, target: &str) -> std::fmt::Result {
    w.write_str("{\"time\":\"")?;
    write_rfc3339(w, SystemTime::now())?;
    write!(w, "\",\"client\":\"{}\",\"method\":\"", e.client)?;
    JsonEscape(w).write_str(method)?;
    w.write_str("\",\"target\":\"")?;
    JsonEscape(w).write_str(target)?;
    write!(w, "\",\"status\":{},\"executor\":", e.status)?;
    match e.executor {
        Some(host) => {
            w.write_char('"')?;
            JsonEscape(w).write_str(host)?;
            w.write_char('"')?;
        }
        None => w.write_str("null")?,
    }
    w.write_str(",\"tier\":")?;
    match e.tier {
        Some(t) => write!(w, "{t}")?,
        None => w.write_str("null")?,
    }
    writeln!(
        w,
        ",\"bytesIn\":{},\"bytesOut\":{},\"durationUs\":{}}}",
        e.bytes_in,
        e.bytes_out,
        e.duration.as_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(line: &[u8]) -> Entry<'_> {
        Entry {
            client: "10.0.0.1".parse().unwrap(),
            request_line: line,
            status: 200,
            executor: Some("10.0.0.2:80"),
            tier: Some(1),
            bytes_in: 12,
            bytes_out: 34,
            duration: Duration::from_micros(845),
        }
    }

    #[test]
    fn text_and_json_lines() {
        let mut out = Vec::new();
        text(
            &mut VecWriter(&mut out),
            &entry(b"GET /v1/x?a=\"b\""),
            b"GET",
            b"/v1/x?a=\"b\"",
        )
        .unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.ends_with(
                " 10.0.0.1 \"GET /v1/x?a=\\\"b\\\"\" 200 executor=10.0.0.2:80 tier=1 in=12 out=34 us=845\n"
            ),
            "{line}"
        );
        let mut out = Vec::new();
        json(&mut VecWriter(&mut out), &entry(b"GET /"), "GET", "/\u{1}").unwrap();
        let line = String::from_utf8(out).unwrap();
        let v: sonic_rs::Value = sonic_rs::from_str(line.trim_end()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v["target"].as_str(), Some("/\u{1}"));
        assert_eq!(v["durationUs"].as_u64(), Some(845));
        assert_eq!(v["tier"].as_u64(), Some(1));
    }

    /// Every byte outside printable ASCII is escaped in text lines: C0 controls, DEL, the
    /// UTF-8 bytes of C1 controls (U+0085 NEL, U+009B CSI), invalid UTF-8; JSON lines
    /// escape DEL and C1 controls as `\u` sequences.
    #[test]
    fn non_printable_bytes_are_escaped() {
        let raw = b"G\x1bT /a\x7fb\xc2\x85c\xc2\x9b[2Jd\xffe\\f\x00\xc3\xa9";
        let mut out = Vec::new();
        let (method, target) = split_request_line(raw);
        text(&mut VecWriter(&mut out), &entry(raw), method, target).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.is_ascii(), "{line}");
        assert!(
            line.bytes()
                .all(|b| (0x20..0x7f).contains(&b) || b == b'\n'),
            "{line}"
        );
        assert!(
            line.contains(r#""G\x1bT /a\x7fb\xc2\x85c\xc2\x9b[2Jd\xffe\\f\x00\xc3\xa9" 200"#),
            "{line}"
        );
        let mut out = Vec::new();
        let target = String::from_utf8_lossy(target);
        json(&mut VecWriter(&mut out), &entry(raw), "G", &target).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains(r#"\u007fb\u0085c\u009b[2J"#), "{line}");
        let v: sonic_rs::Value = sonic_rs::from_str(line.trim_end()).unwrap();
        use sonic_rs::JsonValueTrait;
        assert_eq!(v["target"].as_str(), Some(&*target));
    }

    #[test]
    fn partial_request_lines() {
        let mut line = b"stale".to_vec();
        let cases: [(&[u8], &[u8]); 6] = [
            (b"GET /a HTTP/1.1\r\nHost: h\r\n", b"GET /a"),
            (b"\r\nPOST /b?x HTTP/1.0\n", b"POST /b?x"),
            (b"GET /partial?q=", b"GET /partial?q="),
            (b"GET /v HTTP/2.0\r\n", b"GET /v HTTP/2.0"),
            (b"G\x7fT /\xc2\x85", b"G\x7fT /\xc2\x85"),
            (b"", b""),
        ];
        for (pending, want) in cases {
            keep_partial_request_line(&mut line, pending);
            assert_eq!(line, want);
        }
        keep_partial_request_line(&mut line, &[b'a'; 10_000]);
        assert_eq!(line.len(), 4096);
    }

    #[test]
    fn a_writer_that_falls_behind_costs_lines_not_time() {
        // A writer whose queue is never drained: its receiver is kept but not read.
        let (tx, _rx) = mpsc::sync_channel::<Batch>(1);
        let (back, spare) = mpsc::channel();
        let log = AccessLog {
            format: AccessLogFormat::Text,
            lines: RefCell::new(Vec::new()),
            tx: RefCell::new(Some(tx)),
            back,
            spare,
        };
        let m = crate::metrics::Metrics::new(1, 0);
        let worker = m.worker(0);
        log.write(&entry(b"GET /a"), worker);
        log.flush(worker); // queued
        log.write(&entry(b"GET /b"), worker);
        log.write(&entry(b"GET /c"), worker);
        log.flush(worker); // queue full: two lines dropped
        assert_eq!(worker.access_log_dropped_lines(), 2);
    }
}
