//! The mock executor's response writing: status lines, heads and hand-written JSON
//! escaping. Reading requests is `crate::h1`'s (independent of the proxy's parser).

use std::io::{self, Write};

/// Canonical reason phrase, or a generic one (the phrase carries no meaning in HTTP/1.1).
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        102 => "Processing",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        418 => "I'm a teapot",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// True for statuses that never carry a body (RFC 9110 §6.4.1).
pub(crate) fn bodyless(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Writes a status line and headers (always with `x-mock-name`), ending with the blank line.
pub(crate) fn write_head(
    w: &mut impl Write,
    name: &str,
    status: u16,
    headers: &[(&str, &str)],
) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nx-mock-name: {name}\r\n",
        reason(status)
    );
    for (n, v) in headers {
        head.push_str(n);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())
}

/// Appends `s` as a JSON string literal (quotes included).
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escaping() {
        let mut s = String::new();
        json_str(&mut s, "a\"b\\c\n\r\t\u{1}\u{7f}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\r\\t\\u0001\\u007fé\"");
    }

    #[test]
    fn head_writer() {
        let mut out = Vec::new();
        write_head(&mut out, "m", 404, &[("content-length", "0")]).expect("write");
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nx-mock-name: m\r\ncontent-length: 0\r\n\r\n"
        );
    }
}
