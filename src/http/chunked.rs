//! Streaming decoder for the chunked transfer coding (RFC 9112 §7.1): validates size
//! lines, extensions, CRLFs and trailers byte by byte, hands payload (and trailer fields)
//! back as ranges of the caller's buffer, and never reads past the end of the message.
//! `decode_chunks` is the in-place buffer loop over it that the body pumps use.

use std::ops::Range;

use super::head::is_tchar;

/// Longest chunk size line, extensions included, CRLF excluded.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section (after the last-chunk line, final CRLF included).
pub(crate) const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    /// Empty or non-hex size, or a malformed chunk extension.
    BadSize,
    /// More than 16 hex digits (does not fit in u64).
    SizeOverflow,
    /// A line not ended by CRLF (bare LF, or CR followed by something else), or chunk
    /// data not followed by CRLF.
    MissingCrlf,
    /// Size line longer than MAX_CHUNK_LINE.
    LineTooLong,
    /// Trailer section larger than MAX_TRAILERS.
    TrailersTooLarge,
    /// A trailer line that is not `name: value`.
    BadTrailer,
}

impl ChunkedError {
    /// A short sentence naming the rule; never echoes bytes of the message.
    pub fn message(&self) -> &'static str {
        match self {
            ChunkedError::BadSize => "Malformed chunk size line.",
            ChunkedError::SizeOverflow => "Chunk size has more than 16 hex digits.",
            ChunkedError::MissingCrlf => "Chunked body line not ended by CRLF.",
            ChunkedError::LineTooLong => "Chunk size line is longer than 4 KiB.",
            ChunkedError::TrailersTooLarge => "Chunked trailer section is larger than 64 KiB.",
            ChunkedError::BadTrailer => "Malformed chunked trailer field.",
        }
    }
}

/// Result of one `decode` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Bytes of the input taken; the rest belongs to a later call (or, once `done`, to
    /// the next message).
    pub consumed: usize,
    /// Payload within `input[..consumed]`; empty (`0..0`) when the call took only framing.
    pub data: Range<usize>,
    /// Trailer-field bytes taken by this call, within `input[..consumed]`: whole or partial
    /// trailer lines with their CRLFs, never the last-chunk line (`0[;ext]` CRLF) nor the
    /// final CRLF. Contiguous (they come after all payload, just before the final CRLF);
    /// empty (`0..0`) when the call took none, always so when `data` is not empty.
    pub trailers: Range<usize>,
    /// The last chunk and the trailer section are complete.
    pub done: bool,
}

/// Where the decoder is in the message. The size-line states follow RFC 9112 §7.1 and
/// §7.1.1:
/// `chunk-size [ chunk-ext ] CRLF`, `chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS val ] )`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of the size.
    Size,
    /// After the size or an extension: BWS, `;` or CR.
    ExtAfter,
    /// After `;`: BWS or the first byte of an extension name.
    ExtNameStart,
    /// Inside an extension name.
    ExtName,
    /// BWS after an extension name: `=`, `;` or CR may follow.
    ExtAfterName,
    /// After `=`: BWS, a token or a quoted string.
    ExtValueStart,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted-string value.
    ExtQuoted,
    /// After a backslash inside a quoted string.
    ExtQuotedEscape,
    /// CR of the size line seen; LF must follow.
    SizeLf,
    /// This many payload bytes remain in the current chunk (never 0).
    Data(u64),
    /// Payload done; CR must follow.
    DataCr,
    /// CR after the payload seen; LF must follow.
    DataLf,
    /// Start of a trailer line or of the final CRLF.
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value (until CR).
    TrailerValue,
    /// CR ending a trailer line seen; LF must follow.
    TrailerLf,
    /// CR of the final empty line seen; LF must follow.
    FinalLf,
    /// The message is complete.
    Done,
    /// An error was returned; the decoder repeats it.
    Failed(ChunkedError),
}

/// Decodes one chunked body. Create one per message.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    line_len: usize,
    trailer_len: usize,
    body_len: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            size: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
            body_len: 0,
        }
    }

    /// Consumes a prefix of `input`. `data` is the (possibly empty) sub-range of
    /// `input[..consumed]` that is chunk payload; a call returns after at most one payload
    /// run, so the caller loops until `consumed == input.len()` or `done`. Bytes after the
    /// end of the message are never consumed. `consumed == 0` only for empty input or
    /// when the message was already done. After an error every call returns that error.
    pub fn decode(&mut self, input: &[u8]) -> Result<Decoded, ChunkedError> {
        let mut pos = 0;
        // Trailer-field bytes seen by this call (start, end); contiguous, see `Decoded`.
        let mut trailers: Option<(usize, usize)> = None;
        while pos < input.len() {
            match self.state {
                State::Data(remaining) => {
                    // Bulk: as much of the chunk as the input holds, then return.
                    let avail = (input.len() - pos) as u64;
                    let take = remaining.min(avail);
                    let start = pos;
                    // take <= avail, which came from a usize.
                    pos += take as usize;
                    self.body_len = self.body_len.saturating_add(take);
                    self.state = if take == remaining {
                        State::DataCr
                    } else {
                        State::Data(remaining - take)
                    };
                    // No trailer byte comes before a payload run in the same call.
                    debug_assert!(trailers.is_none());
                    return Ok(Decoded {
                        consumed: pos,
                        data: start..pos,
                        trailers: 0..0,
                        done: false,
                    });
                }
                State::Done => break,
                State::Failed(e) => return Err(e),
                _ => {
                    let b = input[pos];
                    let trailer_byte = self.is_trailer_field_byte(b);
                    if let Err(e) = self.step(b) {
                        self.state = State::Failed(e);
                        return Err(e);
                    }
                    if trailer_byte {
                        let start = trailers.map_or(pos, |(start, _)| start);
                        debug_assert!(trailers.is_none_or(|(_, end)| end == pos));
                        trailers = Some((start, pos + 1));
                    }
                    pos += 1;
                }
            }
        }
        if let State::Failed(e) = self.state {
            return Err(e);
        }
        Ok(Decoded {
            consumed: pos,
            data: 0..0,
            trailers: trailers.map_or(0..0, |(start, end)| start..end),
            done: self.is_done(),
        })
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Payload bytes decoded so far (for the body-size limit while streaming).
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Advances over one framing byte (any state but Data, Done, Failed).
    fn step(&mut self, b: u8) -> Result<(), ChunkedError> {
        use State::*;
        if self.in_size_line() && b != b'\r' && b != b'\n' {
            // RFC 9112 §7.1.1: extensions are unbounded in the grammar; we bound the line.
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkedError::LineTooLong);
            }
        }
        if self.in_trailers() {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILERS {
                return Err(ChunkedError::TrailersTooLarge);
            }
        }
        self.state = match (self.state, b) {
            // RFC 9112 §7.1: chunk-size = 1*HEXDIG. More than 16 digits cannot fit u64.
            (Size, _) if b.is_ascii_hexdigit() => {
                if self.digits == 16 {
                    return Err(ChunkedError::SizeOverflow);
                }
                self.digits += 1;
                self.size = (self.size << 4) | u64::from(hex_value(b));
                Size
            }
            (Size, _) if self.digits == 0 => {
                return Err(match b {
                    b'\n' => ChunkedError::MissingCrlf,
                    _ => ChunkedError::BadSize,
                })
            }
            // The size is complete: the byte is read as in ExtAfter.
            (Size | ExtAfter, b' ' | b'\t') => ExtAfter,
            (Size | ExtAfter, b';') => ExtNameStart,
            (Size | ExtAfter, b'\r') => SizeLf,

            // RFC 9112 §7.1.1: chunk-ext-name = token, BWS around ";" and "=".
            (ExtNameStart, b' ' | b'\t') => ExtNameStart,
            (ExtNameStart, _) if is_tchar(b) => ExtName,
            (ExtName, _) if is_tchar(b) => ExtName,
            (ExtName | ExtAfterName, b' ' | b'\t') => ExtAfterName,
            (ExtName | ExtAfterName, b'=') => ExtValueStart,
            (ExtName | ExtAfterName, b';') => ExtNameStart,
            (ExtName | ExtAfterName, b'\r') => SizeLf,

            // chunk-ext-val = token / quoted-string
            (ExtValueStart, b' ' | b'\t') => ExtValueStart,
            (ExtValueStart, b'"') => ExtQuoted,
            (ExtValueStart | ExtToken, _) if is_tchar(b) => ExtToken,
            (ExtToken, b' ' | b'\t') => ExtAfter,
            (ExtToken, b';') => ExtNameStart,
            (ExtToken, b'\r') => SizeLf,
            // RFC 9110 §5.6.4: qdtext and quoted-pair; CR and LF never appear inside.
            (ExtQuoted, b'"') => ExtAfter,
            (ExtQuoted, b'\\') => ExtQuotedEscape,
            (ExtQuoted, _) if is_qdtext(b) => ExtQuoted,
            (ExtQuotedEscape, _) if is_field_vchar(b) => ExtQuoted,

            // RFC 9112 §7.1: the size line ends with CRLF; a bare LF is refused (a
            // leniency here is a classic request-smuggling vector).
            (SizeLf, b'\n') => {
                let size = self.size;
                self.size = 0;
                self.digits = 0;
                self.line_len = 0;
                // RFC 9112 §7.1: last-chunk = 1*("0") [ chunk-ext ] CRLF.
                if size == 0 {
                    TrailerStart
                } else {
                    Data(size)
                }
            }
            (SizeLf, _) => return Err(ChunkedError::MissingCrlf),

            // RFC 9112 §7.1: chunk-data is followed by CRLF.
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err(ChunkedError::MissingCrlf),

            // RFC 9112 §7.1.2: trailer-section = *( field-line CRLF ), then CRLF.
            (TrailerStart, b'\r') => FinalLf,
            (TrailerStart | TrailerName, _) if is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            // RFC 9110 §5.5: field-value bytes are HTAB, SP, VCHAR and obs-text.
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if is_field_vchar(b) || b == b' ' => TrailerValue,
            (TrailerLf, b'\n') => TrailerStart,
            (FinalLf, b'\n') => Done,
            (TrailerLf | FinalLf, _) => return Err(ChunkedError::MissingCrlf),

            // Anything else: a bare LF is a line-ending error; other bytes break the
            // grammar of the part they appear in.
            (_, b'\n') => return Err(ChunkedError::MissingCrlf),
            (TrailerStart | TrailerName | TrailerValue, _) => {
                // Includes obs-fold (a line starting with SP/HTAB) and space before ':'.
                return Err(ChunkedError::BadTrailer);
            }
            (
                Size | ExtAfter | ExtNameStart | ExtName | ExtAfterName | ExtValueStart | ExtToken
                | ExtQuoted | ExtQuotedEscape,
                _,
            ) => return Err(ChunkedError::BadSize),
            (Data(_) | Done | Failed(_), _) => unreachable!("decode handles these states"),
        };
        Ok(())
    }

    fn in_size_line(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            Size | ExtAfter
                | ExtNameStart
                | ExtName
                | ExtAfterName
                | ExtValueStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedEscape
        )
    }

    /// Whether `b`, read in the current state, belongs to a trailer field line (CRLF
    /// included): anything in the trailer section but the final CRLF.
    fn is_trailer_field_byte(&self, b: u8) -> bool {
        use State::*;
        match self.state {
            TrailerName | TrailerValue | TrailerLf => true,
            // CR here starts the final empty line.
            TrailerStart => b != b'\r',
            _ => false,
        }
    }

    fn in_trailers(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | FinalLf
        )
    }
}

/// What `decode_chunks` leaves in the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedOutput {
    /// The validated bytes, unchanged.
    Raw,
    /// The validated bytes minus the trailer fields (docs/behaviour.md §5: a request's trailers are not
    /// forwarded): still a valid chunked body, ending `0[;ext]` CRLF CRLF (chunk extensions
    /// are kept).
    RawWithoutTrailers,
    /// The payload only (for HTTP/1.0 clients, which cannot take chunked).
    Payload,
}

/// Decodes `buf[from..]` with `dec`: the buffer-level loop shared by the body pumps and
/// the fuzz harness. Returns `(consumed, kept)`: `consumed` bytes from `from` on were
/// validated (all of `buf[from..]`, or up to the end of the message once `dec` is done)
/// and the output chosen by `output` is compacted, in place, to `buf[from..from + kept]`.
/// Bytes after `from + consumed` (the next message) are never touched, nor is
/// `buf[..from]`. Feed a message in any pieces, split at any byte: the outputs of the
/// calls, concatenated, are the output for the whole message. No allocation.
///
/// On an error the decoder keeps failing and `buf[from..]` is unspecified.
pub fn decode_chunks(
    dec: &mut ChunkedDecoder,
    buf: &mut [u8],
    from: usize,
    output: ChunkedOutput,
) -> Result<(usize, usize), ChunkedError> {
    let mut pos = from;
    // End of the output so far; never past `pos`, so copies only move bytes left.
    let mut write = from;
    while pos < buf.len() && !dec.is_done() {
        let d = dec.decode(&buf[pos..])?;
        match output {
            ChunkedOutput::Raw => {}
            ChunkedOutput::Payload => keep(buf, &mut write, pos + d.data.start, pos + d.data.end),
            ChunkedOutput::RawWithoutTrailers => {
                if d.trailers.is_empty() {
                    keep(buf, &mut write, pos, pos + d.consumed);
                } else {
                    keep(buf, &mut write, pos, pos + d.trailers.start);
                    keep(buf, &mut write, pos + d.trailers.end, pos + d.consumed);
                }
            }
        }
        if d.consumed == 0 {
            break;
        }
        pos += d.consumed;
    }
    let consumed = pos - from;
    let kept = match output {
        ChunkedOutput::Raw => consumed,
        _ => write - from,
    };
    Ok((consumed, kept))
}

/// Appends `buf[start..end]` to the output ending at `*write` (`*write <= start`).
fn keep(buf: &mut [u8], write: &mut usize, start: usize, end: usize) {
    if *write != start {
        buf.copy_within(start..end, *write);
    }
    *write += end - start;
}

fn hex_value(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// HTAB, VCHAR or obs-text (RFC 9110 §5.6.4 quoted-pair, §5.5 field-vchar).
fn is_field_vchar(b: u8) -> bool {
    b == b'\t' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// RFC 9110 §5.6.4: qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text.
fn is_qdtext(b: u8) -> bool {
    b == b'\t' || b == b' ' || (is_field_vchar(b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces whose lengths come from `split`, looping as a caller
    /// would. Returns the payload, the total consumed and whether it finished.
    fn run(
        input: &[u8],
        mut split: impl FnMut() -> usize,
    ) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        let mut dec = ChunkedDecoder::new();
        let mut payload = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + split().max(1)).min(input.len());
            let mut piece = &input[pos..end];
            while !piece.is_empty() {
                let d = dec.decode(piece)?;
                assert!(d.consumed <= piece.len());
                assert!(d.data.end <= d.consumed);
                payload.extend_from_slice(&piece[d.data.clone()]);
                pos += d.consumed;
                piece = &piece[d.consumed..];
                if d.done {
                    assert!(dec.is_done());
                    assert_eq!(dec.body_len(), payload.len() as u64);
                    return Ok((payload, pos, true));
                }
                assert!(d.consumed > 0, "no progress on non-empty input");
            }
        }
        assert_eq!(dec.body_len(), payload.len() as u64);
        Ok((payload, pos, dec.is_done()))
    }

    fn whole(input: &[u8]) -> Result<(Vec<u8>, usize, bool), ChunkedError> {
        run(input, || usize::MAX)
    }

    fn err(input: &[u8]) -> ChunkedError {
        whole(input).expect_err("should be refused")
    }

    /// Small deterministic PRNG (xorshift64*), so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    /// A message exercising every part of the grammar, and its payload.
    fn sample() -> (Vec<u8>, Vec<u8>) {
        let mut msg = Vec::new();
        let mut payload = Vec::new();
        let chunks: [&[u8]; 4] = [b"hello", b" wor", b"ld\r\n\r\n0\r\n", &[7u8; 300]];
        let exts = [
            "",
            ";a",
            " ; name=value ;flag\t;q=\"quoted \\\" ;\\\\ str\"",
            ";x = \"\"",
        ];
        for (c, e) in chunks.iter().zip(exts) {
            msg.extend_from_slice(format!("{:X}{e}\r\n", c.len()).as_bytes());
            msg.extend_from_slice(c);
            msg.extend_from_slice(b"\r\n");
            payload.extend_from_slice(c);
        }
        msg.extend_from_slice(b"000;last=1\r\nExpires: never\r\nX-Sum:  \t abc \xff\r\n\r\n");
        (msg, payload)
    }

    #[test]
    fn simple() {
        let msg = b"4\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\n\r\n";
        let (p, used, done) = whole(msg).unwrap();
        assert_eq!(p, b"Wikipedia in\r\n\r\nchunks.");
        assert_eq!(used, msg.len());
        assert!(done);
    }

    #[test]
    fn decode_steps_and_ranges() {
        let mut d = ChunkedDecoder::new();
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET";
        assert_eq!(
            d.decode(input),
            Ok(Decoded {
                consumed: 6,
                data: 3..6,
                trailers: 0..0,
                done: false
            })
        );
        let rest = &input[6..];
        assert_eq!(
            d.decode(rest),
            Ok(Decoded {
                consumed: 7,
                data: 5..7,
                trailers: 0..0,
                done: false
            })
        );
        let rest = &rest[7..];
        assert_eq!(
            d.decode(rest),
            Ok(Decoded {
                consumed: 7,
                data: 0..0,
                trailers: 0..0,
                done: true
            })
        );
        assert_eq!(&rest[7..], b"GET");
        assert!(d.is_done());
        assert_eq!(d.body_len(), 5);
        // Once done, nothing more is taken.
        assert_eq!(
            d.decode(b"GET"),
            Ok(Decoded {
                consumed: 0,
                data: 0..0,
                trailers: 0..0,
                done: true
            })
        );
        // Empty input.
        let mut d = ChunkedDecoder::default();
        assert_eq!(
            d.decode(b""),
            Ok(Decoded {
                consumed: 0,
                data: 0..0,
                trailers: 0..0,
                done: false
            })
        );
    }

    #[test]
    fn one_byte_at_a_time() {
        let (msg, payload) = sample();
        let (p, used, done) = run(&msg, || 1).unwrap();
        assert_eq!(p, payload);
        assert_eq!(used, msg.len());
        assert!(done);
    }

    #[test]
    fn every_split_point() {
        let (msg, payload) = sample();
        for cut in 0..=msg.len() {
            let mut d = ChunkedDecoder::new();
            let mut got = Vec::new();
            for part in [&msg[..cut], &msg[cut..]] {
                let mut part = part;
                while !part.is_empty() {
                    let r = d.decode(part).unwrap();
                    got.extend_from_slice(&part[r.data.clone()]);
                    part = &part[r.consumed..];
                }
            }
            assert!(d.is_done(), "cut {cut}");
            assert_eq!(got, payload, "cut {cut}");
        }
    }

    #[test]
    fn random_splits() {
        let (mut msg, payload) = sample();
        msg.extend_from_slice(b"POST / HTTP/1.1\r\n");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let max = 1 + (rng.next() % 64) as usize;
            let (p, used, done) = run(&msg, || 1 + (rng.next() as usize % max)).unwrap();
            assert_eq!(p, payload);
            assert!(done);
            assert_eq!(&msg[used..], b"POST / HTTP/1.1\r\n");
        }
    }

    #[test]
    fn zero_chunks_and_trailers() {
        assert_eq!(whole(b"0\r\n\r\n").unwrap(), (vec![], 5, true));
        assert_eq!(whole(b"00000\r\n\r\n").unwrap(), (vec![], 9, true));
        let msg = b"0\r\nA: b\r\nC-D:e f\r\nEmpty:\r\n\r\n";
        assert_eq!(whole(msg).unwrap(), (vec![], msg.len(), true));
        // Incomplete until the final CRLF.
        assert_eq!(whole(b"0\r\nA: b\r\n").unwrap(), (vec![], 9, false));
        assert_eq!(whole(b"0\r\n\r").unwrap(), (vec![], 4, false));
    }

    #[test]
    fn extensions() {
        for line in [
            &b"5;a"[..],
            b"5;a=b",
            b"5 ;a=b",
            b"5\t; a = b ; c",
            b"5;a=\"\"",
            b"5;a=\"x;y=\\\"z\\\"\"",
            b"5;a=\"obs\xfftext\"",
            b"5  ",
        ] {
            let mut msg = line.to_vec();
            msg.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            assert_eq!(whole(&msg).unwrap().0, b"hello", "{line:?}");
        }
        for line in [
            &b"5;"[..],
            b"5;=b",
            b"5;a=",
            b"5;a b",
            b"5;a=b c",
            b"5;a=\"unterminated",
            b"5;a=\"x\"y",
            b"5;a=\"\x01\"",
            b"5;a(b)",
            b"5 5",
            b"5,",
        ] {
            let mut msg = line.to_vec();
            msg.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
            assert_eq!(err(&msg), ChunkedError::BadSize, "{line:?}");
        }
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(err(b"\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b";a\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b" 5\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b"g\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b"-1\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b"0x5\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b"+5\r\n"), ChunkedError::BadSize);
        assert_eq!(err(b"5\x00\r\n"), ChunkedError::BadSize);
    }

    #[test]
    fn size_overflow() {
        assert_eq!(err(b"FFFFFFFFFFFFFFFFF\r\n"), ChunkedError::SizeOverflow);
        assert_eq!(err(b"10000000000000000\r\n"), ChunkedError::SizeOverflow);
        // Leading zeros count as digits too.
        assert_eq!(err(b"00000000000000001\r\n"), ChunkedError::SizeOverflow);
        // Detected before the line is complete.
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.decode(b"FFFFFFFFFFFFFFFFF"),
            Err(ChunkedError::SizeOverflow)
        );
    }

    #[test]
    fn big_chunk_sizes() {
        // 16 digits is the largest size accepted: the decoder streams it.
        let mut d = ChunkedDecoder::new();
        let input = b"FFFFFFFFFFFFFFFF\r\nabcdef";
        assert_eq!(
            d.decode(input),
            Ok(Decoded {
                consumed: input.len(),
                data: 18..24,
                trailers: 0..0,
                done: false
            })
        );
        assert_eq!(d.body_len(), 6);
        assert_eq!(d.state, State::Data(u64::MAX - 6));
        // A 1 MiB chunk in 4 KiB pieces.
        let size = 1usize << 20;
        let mut msg = format!("{size:x}\r\n").into_bytes();
        msg.extend(std::iter::repeat_n(b'z', size));
        msg.extend_from_slice(b"\r\n0\r\n\r\n");
        let (p, _, done) = run(&msg, || 4096).unwrap();
        assert!(done);
        assert_eq!(p.len(), size);
        assert!(p.iter().all(|&b| b == b'z'));
        let mut d = ChunkedDecoder::new();
        assert_eq!(
            d.decode(b"7fffffffffffffff\r\n").map(|d| d.consumed),
            Ok(18)
        );
        assert_eq!(d.state, State::Data(i64::MAX as u64));
    }

    #[test]
    fn missing_crlf() {
        // After data: wrong byte, bare LF, or nothing but the next size.
        assert_eq!(err(b"3\r\nabcX\r\n0\r\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3\r\nabc\n0\r\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3\r\nabc0\r\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3\r\nabc\rX"), ChunkedError::MissingCrlf);
        // Size line with bare LF or CR not followed by LF.
        assert_eq!(err(b"3\nabc\r\n0\r\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3;a=b\nabc\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3;a=\"b\nc\"\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"3\rabc"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"\n"), ChunkedError::MissingCrlf);
        // Last-chunk and trailers.
        assert_eq!(err(b"0\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"0\r\n\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"0\r\n\rX"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"0\r\nA: b\n\r\n"), ChunkedError::MissingCrlf);
        assert_eq!(err(b"0\r\nA: b\rX\r\n"), ChunkedError::MissingCrlf);
    }

    #[test]
    fn bad_trailers() {
        for t in [
            &b"A : b\r\n"[..],
            b": b\r\n",
            b"A\r\n",
            b" A: b\r\n",
            b"A: b\r\n c\r\n",
            b"A(: b\r\n",
            b"A: b\x00\r\n",
            b"A: b\x7f\r\n",
        ] {
            let mut msg = b"1\r\nx\r\n0\r\n".to_vec();
            msg.extend_from_slice(t);
            msg.extend_from_slice(b"\r\n");
            assert_eq!(err(&msg), ChunkedError::BadTrailer, "{t:?}");
        }
    }

    #[test]
    fn limits() {
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE, b'a');
        line.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(whole(&line).unwrap().2);
        let mut line = b"1;".to_vec();
        line.resize(MAX_CHUNK_LINE + 1, b'a');
        assert_eq!(err(&line), ChunkedError::LineTooLong);

        let mut t = b"0\r\nX: ".to_vec();
        t.resize(3 + MAX_TRAILERS - 4, b'v');
        t.extend_from_slice(b"\r\n\r\n");
        assert_eq!(t.len(), 3 + MAX_TRAILERS);
        assert!(whole(&t).unwrap().2);
        let mut t = b"0\r\nX: ".to_vec();
        t.resize(3 + MAX_TRAILERS - 3, b'v');
        t.extend_from_slice(b"\r\n\r\n");
        assert_eq!(err(&t), ChunkedError::TrailersTooLarge);
        // Many small trailer lines count together.
        let mut t = b"0\r\n".to_vec();
        while t.len() < MAX_TRAILERS + 10 {
            t.extend_from_slice(b"A: b\r\n");
        }
        assert_eq!(err(&t), ChunkedError::TrailersTooLarge);
    }

    #[test]
    fn pipelined_bytes_stay() {
        let msg = b"2\r\nok\r\n0\r\nT: 1\r\n\r\n2\r\nno\r\n0\r\n\r\n";
        let (p, used, done) = whole(msg).unwrap();
        assert_eq!(p, b"ok");
        assert!(done);
        assert_eq!(&msg[used..], b"2\r\nno\r\n0\r\n\r\n");
    }

    #[test]
    fn mutated_bodies_never_panic() {
        let (msg, _) = sample();
        let alphabet = b"\r\n0123456789abcdefF;= \t\"\\:xZ\x00\xff";
        let mut rng = Rng(0xdead_beef_cafe_f00d);
        for _ in 0..20_000 {
            let mut m = msg.clone();
            for _ in 0..1 + rng.next() % 3 {
                let i = rng.next() as usize % m.len();
                let b = alphabet[rng.next() as usize % alphabet.len()];
                match rng.next() % 3 {
                    0 => m[i] = b,
                    1 => m.insert(i, b),
                    _ => {
                        m.remove(i);
                    }
                }
            }
            let max = 1 + (rng.next() % 16) as usize;
            if let Ok((p, used, done)) = run(&m, || 1 + rng.next() as usize % max) {
                assert!(used <= m.len());
                assert!(p.len() <= used);
                assert!(!done || used > 0);
            }
        }
    }

    /// A short message with extensions (token and quoted, with `;` inside) and two
    /// trailer lines; its payload; and the same message without the trailer lines.
    fn small_sample() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let head = b"3;a=1\r\nabc\r\n1 ; q=\"x;y\\\"\"\r\nd\r\n00;last\r\n".to_vec();
        let trailers = b"T1: v\r\nX-Two:  w x \xff\r\n";
        let mut msg = head.clone();
        msg.extend_from_slice(trailers);
        msg.extend_from_slice(b"\r\n");
        let mut stripped = head;
        stripped.extend_from_slice(b"\r\n");
        (msg, b"abcd".to_vec(), stripped)
    }

    /// `sample()` without its two trailer lines.
    fn sample_stripped() -> Vec<u8> {
        let (msg, _) = sample();
        let trailers: &[u8] = b"Expires: never\r\nX-Sum:  \t abc \xff\r\n";
        let at = msg
            .windows(trailers.len())
            .position(|w| w == trailers)
            .unwrap();
        let mut out = msg[..at].to_vec();
        out.extend_from_slice(&msg[at + trailers.len()..]);
        assert!(out.ends_with(b"000;last=1\r\n\r\n"));
        out
    }

    #[test]
    fn trailer_ranges() {
        let mut d = ChunkedDecoder::new();
        let input = b"1\r\nx\r\n0;e=1\r\nA: b\r\nC:\r\n\r\nNEXT";
        assert_eq!(d.decode(input).unwrap().data, 3..4);
        let rest = &input[4..];
        // `\r\n0;e=1\r\n` is framing, then the two trailer lines, then the final CRLF.
        assert_eq!(
            d.decode(rest),
            Ok(Decoded {
                consumed: rest.len() - 4,
                data: 0..0,
                trailers: 9..19,
                done: true
            })
        );
        assert_eq!(&rest[9..19], b"A: b\r\nC:\r\n");
        // No trailers: empty range, also for the last-chunk line and the final CRLF.
        let mut d = ChunkedDecoder::new();
        let r = d.decode(b"0;t=\"A: b\"\r\n\r\n").unwrap();
        assert!(r.done);
        assert_eq!(r.trailers, 0..0);

        // Split anywhere: the calls' trailer bytes, in order, are the trailer lines, and
        // a call with payload has none.
        let (msg, payload) = sample();
        let want: &[u8] = b"Expires: never\r\nX-Sum:  \t abc \xff\r\n";
        for cut in 0..=msg.len() {
            let mut d = ChunkedDecoder::new();
            let (mut got, mut data) = (Vec::new(), Vec::new());
            for mut part in [&msg[..cut], &msg[cut..]] {
                while !part.is_empty() {
                    let r = d.decode(part).unwrap();
                    assert!(r.trailers.end <= r.consumed);
                    assert!(r.data.is_empty() || r.trailers.is_empty());
                    got.extend_from_slice(&part[r.trailers.clone()]);
                    data.extend_from_slice(&part[r.data.clone()]);
                    part = &part[r.consumed..];
                }
            }
            assert!(d.is_done());
            assert_eq!(got, want, "cut {cut}");
            assert_eq!(data, payload, "cut {cut}");
        }
        // Byte by byte: every trailer byte is reported exactly once, no other byte is.
        let mut d = ChunkedDecoder::new();
        let mut got = Vec::new();
        for b in msg.chunks(1) {
            let r = d.decode(b).unwrap();
            assert_eq!(r.consumed, 1);
            got.extend_from_slice(&b[r.trailers]);
        }
        assert!(d.is_done());
        assert_eq!(got, want);
    }

    /// Feeds `msg` to `decode_chunks` in the pieces between `cuts`, each piece in its own
    /// buffer behind a 3-byte prefix (`from` = 3) and, for the last one, followed by the
    /// next message; checks consumed, the untouched bytes, and returns the concatenated
    /// output.
    fn drive_chunks(msg: &[u8], cuts: &[usize], output: ChunkedOutput) -> Vec<u8> {
        const NEXT: &[u8] = b"GET / HTTP/1.1\r\n";
        let mut dec = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend_from_slice(cuts);
        bounds.push(msg.len());
        for (i, w) in bounds.windows(2).enumerate() {
            let piece = &msg[w[0]..w[1]];
            let mut buf = b"pre".to_vec();
            buf.extend_from_slice(piece);
            let last = i == bounds.len() - 2;
            if last {
                buf.extend_from_slice(NEXT);
            }
            let original = buf.clone();
            let (consumed, kept) = decode_chunks(&mut dec, &mut buf, 3, output).unwrap();
            assert_eq!(consumed, piece.len(), "{cuts:?} {output:?}");
            assert!(kept <= consumed);
            assert_eq!(&buf[..3], b"pre");
            assert_eq!(&buf[3 + consumed..], &original[3 + consumed..]);
            out.extend_from_slice(&buf[3..3 + kept]);
            // Done exactly when the message's last byte was fed.
            assert_eq!(dec.is_done(), w[1] == msg.len());
        }
        out
    }

    #[test]
    fn decode_chunks_at_every_split() {
        use ChunkedOutput::*;
        let (msg, payload, stripped) = small_sample();
        let outputs = [
            (Raw, &msg),
            (RawWithoutTrailers, &stripped),
            (Payload, &payload),
        ];
        for (output, want) in outputs {
            assert_eq!(&drive_chunks(&msg, &[], output), want, "{output:?}");
            // Every split into two and three pieces (a trailer line or a CRLF split
            // over two buffers, a piece holding only part of a trailer, ...).
            for a in 0..=msg.len() {
                assert_eq!(&drive_chunks(&msg, &[a], output), want, "{output:?} {a}");
                for b in a..=msg.len() {
                    let got = drive_chunks(&msg, &[a, b], output);
                    assert_eq!(&got, want, "{output:?} {a} {b}");
                }
            }
            let bytes: Vec<usize> = (1..msg.len()).collect();
            assert_eq!(&drive_chunks(&msg, &bytes, output), want, "{output:?}");
        }
        // The longer sample (300-byte chunk, BWS, quoted pairs): every split in two.
        let (msg, payload) = sample();
        let stripped = sample_stripped();
        let outputs = [
            (Raw, &msg),
            (RawWithoutTrailers, &stripped),
            (Payload, &payload),
        ];
        for (output, want) in outputs {
            for a in 0..=msg.len() {
                assert_eq!(&drive_chunks(&msg, &[a], output), want, "{output:?} {a}");
            }
        }
        // Without trailers, RawWithoutTrailers is Raw.
        let plain = b"2;x\r\nab\r\n0\r\n\r\n";
        assert_eq!(drive_chunks(plain, &[7], RawWithoutTrailers), plain);
    }

    #[test]
    fn decode_chunks_output_without_trailers_is_a_valid_body() {
        let stripped = sample_stripped();
        let (_, payload) = sample();
        let mut d = ChunkedDecoder::new();
        let mut pos = 0;
        let mut got = Vec::new();
        while !d.is_done() {
            let r = d.decode(&stripped[pos..]).unwrap();
            assert!(r.trailers.is_empty());
            got.extend_from_slice(&stripped[pos + r.data.start..pos + r.data.end]);
            pos += r.consumed;
        }
        assert_eq!(pos, stripped.len());
        assert_eq!(got, payload);
    }

    #[test]
    fn decode_chunks_edges() {
        // Done before the call: nothing consumed, nothing kept, nothing touched.
        let mut dec = ChunkedDecoder::new();
        let mut buf = b"0\r\nT: 1\r\n\r\nNEXT".to_vec();
        let r = decode_chunks(&mut dec, &mut buf, 0, ChunkedOutput::RawWithoutTrailers);
        assert_eq!(r, Ok((11, 5)));
        assert_eq!(&buf[..5], b"0\r\n\r\n");
        assert_eq!(&buf[11..], b"NEXT");
        let r = decode_chunks(&mut dec, &mut buf, 11, ChunkedOutput::Payload);
        assert_eq!(r, Ok((0, 0)));
        assert_eq!(&buf[11..], b"NEXT");
        // Empty input; `from` at the end.
        let mut dec = ChunkedDecoder::new();
        assert_eq!(
            decode_chunks(&mut dec, &mut buf, 15, ChunkedOutput::Raw),
            Ok((0, 0))
        );
        // Errors come back (and stay).
        let mut buf = b"2\r\nabX".to_vec();
        for output in [ChunkedOutput::Raw, ChunkedOutput::Payload] {
            assert_eq!(
                decode_chunks(&mut dec, &mut buf, 0, output),
                Err(ChunkedError::MissingCrlf)
            );
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"z"), Err(ChunkedError::BadSize));
        assert_eq!(d.decode(b"0\r\n\r\n"), Err(ChunkedError::BadSize));
        assert_eq!(d.decode(b""), Err(ChunkedError::BadSize));
        assert!(!d.is_done());
    }

    #[test]
    fn errors_have_messages() {
        for e in [
            ChunkedError::BadSize,
            ChunkedError::SizeOverflow,
            ChunkedError::MissingCrlf,
            ChunkedError::LineTooLong,
            ChunkedError::TrailersTooLarge,
            ChunkedError::BadTrailer,
        ] {
            assert!(e.message().ends_with('.'));
        }
    }
}
