//! Frame-rate limits that `h2` does not have: the client's bytes are scanned for frame
//! headers as they arrive (nothing is copied or decoded), and a connection that sends
//! too many resets or control frames per interval is cut off (SETTINGS and PING floods,
//! rapid reset CVE-2023-44487 on accepted streams, empty-frame floods).

use std::time::{Duration, Instant};

/// The interval the counts below are kept for.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);
/// RST_STREAM frames per interval. h2's `max_pending_accept_reset_streams` only counts
/// streams reset before the server accepted them; ours are accepted at once, so this is
/// the cap that stops a rapid reset.
pub(crate) const MAX_RESETS: u32 = 100;
/// SETTINGS, PING, PRIORITY and empty DATA / HEADERS-less frames per interval: each costs
/// work (an ACK, a scheduler pass) and carries no request. WINDOW_UPDATE is not counted:
/// a client downloading fast sends many.
pub(crate) const MAX_CONTROL: u32 = 100;

const DATA: u8 = 0x0;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const END_STREAM: u8 = 0x1;

/// Why a connection was cut off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offense {
    Resets,
    ControlFrames,
    /// A header block over `fields::MAX_BLOCK` or `fields::MAX_FIELDS`.
    HeaderBlock,
    /// A header block left incomplete past the header timeout.
    SlowHeaders,
}

impl Offense {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Offense::Resets => "too many stream resets",
            Offense::ControlFrames => "too many control frames",
            Offense::HeaderBlock => "header block over 80 KiB or 400 fields",
            Offense::SlowHeaders => "header block incomplete past the header timeout",
        }
    }
}

/// Where the scanner stands in the client's byte stream.
#[derive(Clone, Copy, Debug)]
enum At {
    /// Inside the 24-byte connection preface (`n` bytes of it left).
    Preface(usize),
    /// Collecting a 9-byte frame header (`n` bytes of it so far).
    Header(usize),
    /// Skipping a frame's payload.
    Payload(u32),
}

/// Counts frames per interval in the bytes a client sends.
#[derive(Debug)]
pub(crate) struct FrameGuard {
    at: At,
    header: [u8; 9],
    since: Instant,
    resets: u32,
    control: u32,
}

impl FrameGuard {
    pub(crate) fn new(now: Instant) -> FrameGuard {
        FrameGuard {
            at: At::Preface(super::PREFACE.len()),
            header: [0; 9],
            since: now,
            resets: 0,
            control: 0,
        }
    }

    /// Scan the next bytes the client sent. `Err` once a limit is passed.
    pub(crate) fn scan(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Offense> {
        if now.saturating_duration_since(self.since) >= INTERVAL {
            self.since = now;
            self.resets = 0;
            self.control = 0;
        }
        while !bytes.is_empty() {
            match self.at {
                At::Preface(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.at = if n == left {
                        At::Header(0)
                    } else {
                        At::Preface(left - n)
                    };
                }
                At::Header(have) => {
                    let n = (9 - have).min(bytes.len());
                    self.header[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < 9 {
                        self.at = At::Header(have + n);
                        continue;
                    }
                    self.count()?;
                    let len =
                        u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                    self.at = if len == 0 {
                        At::Header(0)
                    } else {
                        At::Payload(len)
                    };
                }
                At::Payload(left) => {
                    let n = (left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u32;
                    self.at = if left == 0 {
                        At::Header(0)
                    } else {
                        At::Payload(left)
                    };
                }
            }
        }
        Ok(())
    }

    /// Count the frame whose header was just read.
    fn count(&mut self) -> Result<(), Offense> {
        let len = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
        let (kind, flags) = (self.header[3], self.header[4]);
        match kind {
            RST_STREAM => {
                self.resets += 1;
                if self.resets > MAX_RESETS {
                    return Err(Offense::Resets);
                }
            }
            SETTINGS | PING | PRIORITY => self.control(),
            // An empty DATA frame that does not end the stream moves nothing.
            DATA if len == 0 && flags & END_STREAM == 0 => self.control(),
            _ => {}
        }
        if self.control > MAX_CONTROL {
            return Err(Offense::ControlFrames);
        }
        Ok(())
    }

    fn control(&mut self) {
        self.control += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = len.to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags, 0, 0, 0, 1]);
        f.extend_from_slice(payload);
        f
    }

    const PREFACE_LEN: usize = 24;

    fn preface() -> Vec<u8> {
        super::super::PREFACE.to_vec()
    }

    #[test]
    fn pings_over_the_cap_trip_within_an_interval_only() {
        let now = Instant::now();
        let mut g = FrameGuard::new(now);
        let mut bytes = preface();
        for _ in 0..MAX_CONTROL {
            bytes.extend(frame(PING, 0, &[0; 8]));
        }
        assert_eq!(g.scan(&bytes, now), Ok(()));
        let ping = frame(PING, 0, &[0; 8]);
        assert_eq!(g.scan(&ping, now), Err(Offense::ControlFrames));
        // A new interval starts the count again.
        let mut g = FrameGuard::new(now);
        assert_eq!(g.scan(&bytes, now), Ok(()));
        assert_eq!(g.scan(&ping, now + INTERVAL), Ok(()));
    }

    #[test]
    fn frames_split_across_reads_are_counted_once() {
        let now = Instant::now();
        let mut g = FrameGuard::new(now);
        let mut bytes = preface();
        for _ in 0..=MAX_RESETS {
            bytes.extend(frame(RST_STREAM, 0, &[0, 0, 0, 8]));
        }
        // The 101st header trips at its last byte, whatever the reads' sizes.
        let trip_at = PREFACE_LEN + MAX_RESETS as usize * 13 + 8;
        for (i, b) in bytes.iter().enumerate() {
            let r = g.scan(std::slice::from_ref(b), now);
            if i == trip_at {
                assert_eq!(r, Err(Offense::Resets));
                return;
            }
            assert_eq!(r, Ok(()), "byte {i}");
        }
        panic!("never tripped");
    }

    #[test]
    fn data_and_window_updates_are_not_control_frames() {
        let now = Instant::now();
        let mut g = FrameGuard::new(now);
        let mut bytes = preface();
        for _ in 0..10 * MAX_CONTROL {
            bytes.extend(frame(DATA, 0, &[7; 100]));
            bytes.extend(frame(0x8, 0, &[0, 0, 1, 0]));
        }
        bytes.extend(frame(DATA, END_STREAM, &[]));
        assert_eq!(g.scan(&bytes, now), Ok(()));
        let mut empty = Vec::new();
        for _ in 0..=MAX_CONTROL {
            empty.extend(frame(DATA, 0, &[]));
        }
        assert_eq!(g.scan(&empty, now), Err(Offense::ControlFrames));
    }
}
