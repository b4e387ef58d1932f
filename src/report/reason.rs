//! Short reasons for a failed HTTP request made with ureq (health probes, error reports),
//! for logs and `/v1/proxy/containers`: the kind of failure, never the URL or a header.

use std::io;

/// Longest reason text taken from a transport error.
pub(crate) const MAX_REASON_CHARS: usize = 160;

/// A short reason for a failed request. Built from the error kind only where the text
/// could echo request details.
pub(crate) fn describe(err: &ureq::Error, agent: &ureq::Agent) -> String {
    match err {
        ureq::Error::Timeout(_) => timed_out(agent),
        ureq::Error::Io(e) => describe_io(e, agent),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::BodyExceedsLimit(_) => "health body over 1 MiB".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::LargeResponseHeader(_, _) => "response header too large".to_string(),
        ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
            "invalid request URL or header".to_string()
        }
        ureq::Error::TlsRequired => "https is not supported".to_string(),
        ureq::Error::Protocol(e) => {
            truncate(&format!("invalid HTTP response: {e}"), MAX_REASON_CHARS)
        }
        other => truncate(&other.to_string(), MAX_REASON_CHARS),
    }
}

fn describe_io(err: &io::Error, agent: &ureq::Agent) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
        io::ErrorKind::ConnectionReset => "connection reset".to_string(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_string(),
        io::ErrorKind::UnexpectedEof => "connection closed before the response ended".to_string(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => timed_out(agent),
        _ => truncate(&format!("i/o error: {err}"), MAX_REASON_CHARS),
    }
}

fn timed_out(agent: &ureq::Agent) -> String {
    match agent.config().timeouts().global {
        Some(timeout) => format!("timed out after {} ms", timeout.as_millis()),
        None => "timed out".to_string(),
    }
}

/// At most `max` characters of `s` (never splits a character).
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => s[..end].to_string(),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncate_counts_characters() {
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("ééé", 1), "é");
        assert_eq!(truncate("", 4), "");
    }
}
