//! A raw HTTP/2 client over a std socket for attack and lifecycle tests: frames are
//! written by hand (header blocks as HPACK literals, RFC 7541 §6.2.2), frames read back
//! are only told apart by type and flags, never decoded.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const ENHANCE_YOUR_CALM: u32 = 0xb;

#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// GOAWAY's error code.
    pub fn error_code(&self) -> u32 {
        let p = &self.payload;
        u32::from_be_bytes([p[4], p[5], p[6], p[7]])
    }
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix (the first byte's high bits in `first`).
pub fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header field as a literal without indexing, new name (RFC 7541 §6.2.2).
pub fn hpack_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// A header block for a request.
pub fn request_block(method: &str, path: &str, authority: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_literal(&mut b, ":method", method.as_bytes());
    hpack_literal(&mut b, ":scheme", b"http");
    hpack_literal(&mut b, ":path", path.as_bytes());
    hpack_literal(&mut b, ":authority", authority.as_bytes());
    for (n, v) in extra {
        hpack_literal(&mut b, n, v.as_bytes());
    }
    b
}

pub struct H2Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl H2Raw {
    /// Connect and send the preface and an empty SETTINGS frame.
    pub fn connect(addr: SocketAddr) -> H2Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        let mut c = H2Raw {
            stream,
            buf: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        c.send(&hello);
        c
    }

    /// A client on a socket the caller already wrote the preface to.
    pub fn from_stream(stream: TcpStream) -> H2Raw {
        H2Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Write bytes; a connection the proxy already closed is not an error here.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// The next frame, `None` on EOF, reset or timeout.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: f[3],
                        flags: f[4],
                        stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                        payload: f[9..].to_vec(),
                    });
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Read until GOAWAY (its frame) or the end of the connection (`None`); every frame
    /// before it is returned too.
    pub fn until_goaway(&mut self, timeout: Duration) -> (Option<Frame>, Vec<Frame>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.read_frame(left) {
                Some(f) if f.kind == GOAWAY => return (Some(f), seen),
                Some(f) => seen.push(f),
                None => break,
            }
        }
        (None, seen)
    }

    /// Whether the proxy closed the connection within `timeout` (frames are skipped).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut tmp = [0u8; 65536];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
        false
    }
}
