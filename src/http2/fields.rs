//! Request header blocks checked before `h2` decodes them. HPACK is decoded here too, in
//! step with h2's table, so that a malformed request (RFC 9113 §8.1.1: a field h2 cannot
//! represent, a `#` in `:path`, a pseudo-header in trailers) costs its stream only: the
//! block is rewritten so that h2 resets that stream instead of closing the connection.

use std::collections::VecDeque;

use super::huffman;

/// h2's `SETTINGS_HEADER_TABLE_SIZE` (its default; the proxy does not change it): the
/// largest dynamic table a client's encoder may use.
const HEADER_TABLE_SIZE: usize = 4096;
/// RFC 7541 §4.1: an entry's size is its name's and value's lengths plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// Static table entries (RFC 7541 Appendix A); 1–14 are pseudo-header fields.
const STATIC_ENTRIES: usize = 61;

/// A field that makes h2 reset the stream (RFC 9113 §8.2.2: a connection-specific field
/// is malformed), appended to a block that must be refused: a literal without indexing,
/// so h2's table is untouched. `connection` with an empty value.
const MALFORMED_MARK: &[u8] = b"\x00\x0aconnection\x00";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pseudo {
    Authority,
    Method,
    Path,
    Scheme,
    Protocol,
    Status,
}

impl Pseudo {
    fn parse(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":authority" => Pseudo::Authority,
            b":method" => Pseudo::Method,
            b":path" => Pseudo::Path,
            b":scheme" => Pseudo::Scheme,
            b":protocol" => Pseudo::Protocol,
            b":status" => Pseudo::Status,
            _ => return None,
        })
    }

    fn name(self) -> &'static [u8] {
        match self {
            Pseudo::Authority => b":authority",
            Pseudo::Method => b":method",
            Pseudo::Path => b":path",
            Pseudo::Scheme => b":scheme",
            Pseudo::Protocol => b":protocol",
            Pseudo::Status => b":status",
        }
    }

    /// Whether h2 can represent this value (else it fails the whole connection).
    fn value_ok(self, v: &[u8]) -> bool {
        match self {
            Pseudo::Method => http::Method::from_bytes(v).is_ok(),
            Pseudo::Status => http::StatusCode::from_bytes(v).is_ok(),
            _ => std::str::from_utf8(v).is_ok(),
        }
    }
}

/// A field name as h2 sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Name {
    Pseudo(Pseudo),
    Regular,
    /// Not a name h2 accepts (upper case, not a token, unknown pseudo-header); in h2's
    /// table it stands as the regular name it was rewritten to.
    Invalid,
}

impl Name {
    fn of(name: &[u8]) -> Name {
        if name.first() == Some(&b':') {
            return Pseudo::parse(name).map_or(Name::Invalid, Name::Pseudo);
        }
        if http::HeaderName::from_lowercase(name).is_ok() {
            Name::Regular
        } else {
            Name::Invalid
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    size: usize,
    name_len: usize,
    name: Name,
    /// A request referring to it is malformed.
    bad: bool,
}

/// Why decoding stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// The field goes on in the next frame.
    More,
    /// Not valid HPACK.
    Bad,
}

/// How one decoded field reached the block h2 gets.
enum Emitted {
    /// Its bytes as they came (the caller copies them).
    AsItCame,
    /// Rewritten into the output already.
    Rewritten,
}

/// Not valid HPACK: h2 ends the connection on it; nothing after it can be followed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Broken;

/// What one header block showed so far.
struct BlockCheck {
    /// Not the stream's first block.
    trailers: bool,
    malformed: bool,
    fields: usize,
    /// The header list's size so far as RFC 9113 §6.5.2 counts it (names, values and 32
    /// per field).
    list: usize,
}

impl BlockCheck {
    fn new(trailers: bool) -> BlockCheck {
        BlockCheck {
            trailers,
            malformed: false,
            fields: 0,
            list: 0,
        }
    }
}

/// What a header block needs before h2 may decode it.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Clean,
    /// Malformed: this block instead (same table effect, h2 resets the stream).
    Refuse(Vec<u8>),
    /// Not valid HPACK: h2 ends the connection on it; nothing after it can be followed.
    Broken,
}

/// The HPACK decoder's dynamic table as h2 has it, with what each entry means for a
/// request (RFC 7541 §2.3, §4).
pub(crate) struct Hpack {
    entries: VecDeque<Entry>,
    size: usize,
    max: usize,
    scratch: Vec<u8>,
}

/// One string of a field: where it is in the block and its decoded bytes.
struct Str {
    /// Decoded bytes (in `Hpack::scratch` from `at`).
    at: usize,
    len: usize,
}

impl Hpack {
    pub(crate) fn new() -> Hpack {
        Hpack {
            entries: VecDeque::new(),
            size: 0,
            max: HEADER_TABLE_SIZE,
            scratch: Vec::new(),
        }
    }

    fn entry(&self, index: usize) -> Option<Entry> {
        match index {
            0 => None,
            1..=14 => {
                let pseudo = match index {
                    1 => Pseudo::Authority,
                    2 | 3 => Pseudo::Method,
                    4 | 5 => Pseudo::Path,
                    6 | 7 => Pseudo::Scheme,
                    _ => Pseudo::Status,
                };
                Some(Entry {
                    size: 0,
                    name_len: pseudo.name().len(),
                    name: Name::Pseudo(pseudo),
                    bad: false,
                })
            }
            15..=STATIC_ENTRIES => Some(Entry {
                size: 0,
                name_len: static_name_len(index),
                name: Name::Regular,
                bad: false,
            }),
            _ => self.entries.get(index - STATIC_ENTRIES - 1).copied(),
        }
    }

    fn evict_to(&mut self, room: usize) {
        while self.size > room {
            let Some(e) = self.entries.pop_back() else {
                break;
            };
            self.size -= e.size;
        }
    }

    fn insert(&mut self, e: Entry) {
        if e.size > self.max {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.max - e.size);
        self.size += e.size;
        self.entries.push_front(e);
    }

    /// Check one complete header block (`trailers`: not the stream's first).
    #[cfg(test)]
    fn check(&mut self, block: &[u8], trailers: bool) -> Verdict {
        let mut st = BlockCheck::new(trailers);
        let mut out = Vec::new();
        match self.fields(block, &mut st, &mut out) {
            Ok(n) if n == block.len() && st.malformed => {
                out.extend_from_slice(MALFORMED_MARK);
                Verdict::Refuse(out)
            }
            Ok(n) if n == block.len() => Verdict::Clean,
            _ => Verdict::Broken,
        }
    }

    /// Decode the complete fields at the start of `block` (part of a header block),
    /// appending each to `out` as it came, or rewritten when h2 could not decode it.
    /// Returns the bytes used: an incomplete last field waits for the next frame.
    fn fields(
        &mut self,
        block: &[u8],
        st: &mut BlockCheck,
        out: &mut Vec<u8>,
    ) -> Result<usize, Broken> {
        let mut pos = 0;
        while pos < block.len() {
            let start = pos;
            let first = block[pos];
            let step = if first & 0x80 != 0 {
                self.indexed(block, &mut pos, st)
            } else if first & 0xe0 == 0x20 {
                self.size_update(block, &mut pos, st)
            } else {
                self.literal(block, &mut pos, st, out)
            };
            match step {
                Ok(Emitted::AsItCame) => out.extend_from_slice(&block[start..pos]),
                Ok(Emitted::Rewritten) => {}
                // Truncated: wait for more; anything else is a compression error.
                Err(Stop::More) => return Ok(start),
                Err(Stop::Bad) => return Err(Broken),
            }
        }
        Ok(pos)
    }

    /// An indexed field (RFC 7541 §6.1).
    fn indexed(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        st: &mut BlockCheck,
    ) -> Result<Emitted, Stop> {
        let index = int(block, pos, 7)?;
        let e = self.entry(index).ok_or(Stop::Bad)?;
        st.malformed |= e.bad || (st.trailers && matches!(e.name, Name::Pseudo(_)));
        st.fields += 1;
        st.list += e.size.max(e.name_len + ENTRY_OVERHEAD);
        Ok(Emitted::AsItCame)
    }

    /// A dynamic table size update (RFC 7541 §6.3): only before the first field.
    fn size_update(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        st: &BlockCheck,
    ) -> Result<Emitted, Stop> {
        let size = int(block, pos, 5)?;
        if st.fields > 0 || size > HEADER_TABLE_SIZE {
            return Err(Stop::Bad);
        }
        self.max = size;
        self.evict_to(size);
        Ok(Emitted::AsItCame)
    }

    /// A literal field (RFC 7541 §6.2), with or without indexing: checked, rewritten into
    /// `out` when h2 could not decode it, and entered in the table as h2 will.
    fn literal(
        &mut self,
        block: &[u8],
        pos: &mut usize,
        st: &mut BlockCheck,
        out: &mut Vec<u8>,
    ) -> Result<Emitted, Stop> {
        let first = block[*pos];
        let (indexing, prefix, bits) = if first & 0xc0 == 0x40 {
            (true, 0x40, 6)
        } else {
            (false, first & 0xf0, 4)
        };
        let index = int(block, pos, bits)?;
        self.scratch.clear();
        let (name, name_len, name_str) = if index == 0 {
            let s = self.string(block, pos)?;
            (Name::of(&self.scratch[s.at..s.at + s.len]), s.len, Some(s))
        } else {
            let e = self.entry(index).ok_or(Stop::Bad)?;
            (e.name, e.name_len, None)
        };
        let value = self.string(block, pos)?;
        if index != 0 {
            st.malformed |= self.entry(index).is_some_and(|e| e.bad);
        }
        st.fields += 1;
        st.list += name_len + value.len + ENTRY_OVERHEAD;
        let v = &self.scratch[value.at..value.at + value.len];
        // What h2 would fail the connection on, and what else is malformed.
        let fails = match name {
            Name::Invalid => name_str.is_some() || http::HeaderValue::from_bytes(v).is_err(),
            Name::Regular => http::HeaderValue::from_bytes(v).is_err(),
            Name::Pseudo(p) => !p.value_ok(v),
        };
        let bad = fails
            || name == Name::Invalid
            || (name == Name::Pseudo(Pseudo::Path) && v.contains(&b'#'));
        st.malformed |= bad || (st.trailers && matches!(name, Name::Pseudo(_)));
        let emitted = if fails {
            let bytes = self
                .rewrite(prefix, bits, index, name, &name_str, &value)
                .ok_or(Stop::Bad)?;
            out.extend_from_slice(&bytes);
            Emitted::Rewritten
        } else {
            Emitted::AsItCame
        };
        if indexing {
            // A rewritten pseudo-header stands in h2's table as a regular name.
            let name = if fails && matches!(name, Name::Pseudo(_)) {
                Name::Invalid
            } else {
                name
            };
            self.insert(Entry {
                size: name_len + value.len + ENTRY_OVERHEAD,
                name_len,
                name,
                bad,
            });
        }
        Ok(emitted)
    }

    /// Decode a string literal (RFC 7541 §5.2) into `scratch`.
    fn string(&mut self, block: &[u8], pos: &mut usize) -> Result<Str, Stop> {
        let huffman = *block.get(*pos).ok_or(Stop::More)? & 0x80 != 0;
        let len = int(block, pos, 7)?;
        let raw = block.get(*pos..*pos + len).ok_or(Stop::More)?;
        *pos += len;
        let at = self.scratch.len();
        if huffman {
            huffman::decode(raw, &mut self.scratch).ok_or(Stop::Bad)?;
        } else {
            self.scratch.extend_from_slice(raw);
        }
        Ok(Str {
            at,
            len: self.scratch.len() - at,
        })
    }

    /// The same field as one h2 can decode, with the same table size: bytes h2 refuses
    /// become `x` in a name (a pseudo-header's colon too: it becomes a regular name) and
    /// a space in a value. `None`: no such field (an empty name and value).
    fn rewrite(
        &self,
        prefix: u8,
        bits: u32,
        index: usize,
        name: Name,
        name_str: &Option<Str>,
        value: &Str,
    ) -> Option<Vec<u8>> {
        let mut v = self.scratch[value.at..value.at + value.len].to_vec();
        let mut out = Vec::with_capacity(v.len() + 64);
        let literal_name = match (name_str, name) {
            (Some(s), _) => Some(self.scratch[s.at..s.at + s.len].to_vec()),
            (None, Name::Pseudo(p)) => Some(p.name().to_vec()),
            (None, _) => None,
        };
        for b in v.iter_mut() {
            if !(*b == b'\t' || (*b >= 0x20 && *b != 0x7f)) {
                *b = b' ';
            }
        }
        match literal_name {
            Some(mut n) => {
                if n.is_empty() {
                    // Keep the sum of the lengths: one byte moves from the value.
                    if v.is_empty() {
                        return None;
                    }
                    v.remove(0);
                    n.push(b'x');
                }
                for b in n.iter_mut() {
                    let keep = b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || b"!#$%&'*+-.^_`|~".contains(b);
                    if !keep {
                        *b = b'x';
                    }
                }
                put_int(&mut out, prefix, bits, 0);
                put_string(&mut out, &n);
            }
            None => put_int(&mut out, prefix, bits, index),
        }
        put_string(&mut out, &v);
        Some(out)
    }
}

/// RFC 7541 §5.1 integer with an `n`-bit prefix, at `pos`.
fn int(block: &[u8], pos: &mut usize, n: u32) -> Result<usize, Stop> {
    let max = (1usize << n) - 1;
    let mut value = usize::from(*block.get(*pos).ok_or(Stop::More)?) & max;
    *pos += 1;
    if value < max {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(Stop::More)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return if value <= u32::MAX as usize {
                Ok(value)
            } else {
                Err(Stop::Bad)
            };
        }
        shift += 7;
        if shift > 28 {
            return Err(Stop::Bad);
        }
    }
}

fn put_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
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

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Name lengths of the static table's regular entries (15–61), RFC 7541 Appendix A.
fn static_name_len(index: usize) -> usize {
    const NAMES: [&str; 47] = [
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "accept",
        "access-control-allow-origin",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-range",
        "content-type",
        "cookie",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "link",
        "location",
        "max-forwards",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "refresh",
        "retry-after",
        "server",
        "set-cookie",
        "strict-transport-security",
        "transfer-encoding",
        "user-agent",
        "vary",
        "via",
        "www-authenticate",
    ];
    NAMES[index - 15].len()
}

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// h2's `SETTINGS_MAX_FRAME_SIZE` (its default; the proxy does not change it).
const MAX_FRAME: usize = 16 * 1024;
/// The most a header block may hold while incomplete: its header list so far (what h2
/// has decoded) and the field that goes on in the next frame (its bytes as sent). A
/// block past it cannot be served (h2 refuses a list over the limit), so its client is
/// cut off rather than left to fill memory until the header timeout.
pub(crate) const MAX_BLOCK: usize = super::MAX_HEADER_LIST as usize + MAX_FRAME;
/// The most fields a header block may have: a request over HTTP/1's 100 header fields is
/// refused anyway, and h2 stores every decoded field in its header map.
const MAX_FIELDS: usize = 4 * crate::http::head::MAX_HEADERS;

/// Where the walk through the client's bytes stands.
#[derive(Clone, Copy, Debug)]
enum At {
    /// Inside the connection preface (`n` bytes of it left).
    Preface(usize),
    /// At a frame header.
    Header,
    /// Inside a frame's payload that passes as it is (`n` bytes left).
    Payload(usize),
}

/// The client's bytes on their way to h2: every frame passes as it came except header
/// block frames, which pass once complete with the fields they complete (checked, as
/// they came or rewritten: `Hpack::fields`); a field split across frames waits for its
/// end (`MAX_BLOCK` at most), so h2 decodes as much of a block as it did without this.
pub(crate) struct Blocks {
    hpack: Hpack,
    at: At,
    /// Bytes read and not yet given to h2: `pend[..ready]` may go, the rest is a frame
    /// header or a header block frame still incomplete (walked up to `walked`).
    pend: Vec<u8>,
    ready: usize,
    walked: usize,
    /// The header block in progress.
    block: Option<Block>,
    /// Highest stream a request opened: a later block on it is its trailers.
    last_request: u32,
    /// The HPACK state could not be followed (h2 ends the connection on the same bytes):
    /// everything passes unchecked.
    unchecked: bool,
}

/// A header block in progress.
struct Block {
    stream: u32,
    end_stream: bool,
    check: BlockCheck,
    /// The start of a field that goes on in the next frame.
    carry: Vec<u8>,
    /// Its HEADERS frame went to h2: what follows goes as CONTINUATION.
    started: bool,
}

/// A header block over `MAX_BLOCK` or `MAX_FIELDS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooLarge;

impl Blocks {
    pub(crate) fn new() -> Blocks {
        Blocks {
            hpack: Hpack::new(),
            at: At::Preface(super::PREFACE.len()),
            pend: Vec::new(),
            ready: 0,
            walked: 0,
            block: None,
            last_request: 0,
            unchecked: false,
        }
    }

    /// Whether nothing is held: new bytes can be walked where they were read.
    pub(crate) fn is_empty(&self) -> bool {
        self.pend.is_empty()
    }

    /// Whether a header block is incomplete (its client holds memory here).
    pub(crate) fn in_block(&self) -> bool {
        self.block.is_some()
    }

    /// Walk bytes just read (nothing held before them): how many of them pass to h2 as
    /// they are. The rest must go to `push`.
    pub(crate) fn pass_in_place(&mut self, bytes: &[u8]) -> usize {
        if self.unchecked {
            return bytes.len();
        }
        let mut pos = 0;
        while pos < bytes.len() {
            match self.at {
                At::Preface(left) | At::Payload(left) => {
                    let n = left.min(bytes.len() - pos);
                    pos += n;
                    self.at = if n == left {
                        At::Header
                    } else {
                        At::Payload(left - n)
                    };
                }
                At::Header => {
                    let Some(h) = bytes.get(pos..pos + 9) else {
                        return pos;
                    };
                    if matches!(h[3], HEADERS | CONTINUATION) {
                        return pos;
                    }
                    pos += 9;
                    self.at = At::Payload(frame_len(h));
                }
            }
        }
        pos
    }

    /// Take bytes that could not pass in place, and walk them.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        self.pend.extend_from_slice(bytes);
        self.walk()
    }

    /// At the end of the client's bytes: give h2 whatever is held (it sees the end).
    pub(crate) fn flush(&mut self) {
        self.ready = self.pend.len();
        self.walked = self.pend.len();
        self.block = None;
    }

    /// Move bytes that may go to h2 into `out` (as many as fit); how many.
    pub(crate) fn take(&mut self, out: &mut [u8]) -> usize {
        let n = self.ready.min(out.len());
        out[..n].copy_from_slice(&self.pend[..n]);
        self.pend.drain(..n);
        self.ready -= n;
        self.walked -= n;
        if self.pend.is_empty() {
            // An idle connection keeps no buffer.
            self.pend = Vec::new();
        }
        n
    }

    pub(crate) fn has_ready(&self) -> bool {
        self.ready > 0
    }

    fn walk(&mut self) -> Result<(), TooLarge> {
        loop {
            if self.unchecked {
                self.flush();
                return Ok(());
            }
            let left_in_pend = self.pend.len() - self.walked;
            match self.at {
                At::Preface(left) | At::Payload(left) => {
                    let n = left.min(left_in_pend);
                    self.walked += n;
                    self.ready = self.walked;
                    if n < left {
                        self.at = At::Payload(left - n);
                        return Ok(());
                    }
                    self.at = At::Header;
                }
                At::Header => {
                    let Some(h) = self.pend.get(self.walked..self.walked + 9) else {
                        return Ok(());
                    };
                    let (len, kind) = (frame_len(h), h[3]);
                    let block_kind = matches!(kind, HEADERS | CONTINUATION);
                    // Out of order or over-size frames: h2 ends the connection on them.
                    if block_kind != self.block.is_some() && kind != HEADERS
                        || kind == HEADERS && self.block.is_some()
                        || len > MAX_FRAME
                    {
                        self.unchecked = true;
                        continue;
                    }
                    if !block_kind {
                        self.walked += 9;
                        self.ready = self.walked;
                        self.at = At::Payload(len);
                        continue;
                    }
                    if left_in_pend < 9 + len {
                        return Ok(());
                    }
                    let end = self.walked + 9 + len;
                    let frames = self.frame_out(end)?;
                    let n = frames.len();
                    self.pend.splice(self.walked..end, frames);
                    self.walked += n;
                    self.ready = self.walked;
                }
            }
        }
    }

    /// The header block frame `pend[walked..end]` is complete: check the fields it
    /// completes and return what h2 gets instead: those fields, as they came or
    /// rewritten, in a HEADERS or CONTINUATION frame (none while a field is incomplete);
    /// at the block's end a malformed request gets the field that makes h2 reset it.
    fn frame_out(&mut self, end: usize) -> Result<Vec<u8>, TooLarge> {
        let frame = &self.pend[self.walked..end];
        let (kind, flags) = (frame[3], frame[4]);
        let stream = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let Some(fragment) = fragment(kind, flags, &frame[9..]) else {
            // Bad padding: h2 ends the connection on it.
            self.unchecked = true;
            return Ok(frame.to_vec());
        };
        if kind == HEADERS {
            // Client streams are odd and rise (RFC 9113 §5.1.1): a block on one already
            // opened is its trailers.
            let trailers = stream <= self.last_request;
            if !trailers {
                self.last_request = stream;
            }
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                check: BlockCheck::new(trailers),
                carry: Vec::new(),
                started: false,
            });
        }
        let Some(block) = self.block.as_mut() else {
            self.unchecked = true;
            return Ok(frame.to_vec());
        };
        block.carry.extend_from_slice(fragment);
        let mut out = Vec::new();
        match self.hpack.fields(&block.carry, &mut block.check, &mut out) {
            Ok(n) => {
                block.carry.drain(..n);
            }
            Err(Broken) => {
                // h2 gets the fields as they came and fails on the same bytes.
                self.unchecked = true;
                out = std::mem::take(&mut block.carry);
            }
        }
        let check = &block.check;
        if check.list + block.carry.len() > MAX_BLOCK || check.fields > MAX_FIELDS {
            return Err(TooLarge);
        }
        let last = flags & END_HEADERS != 0;
        if last {
            // A block that ends inside a field: h2 fails on it as well.
            out.append(&mut block.carry);
            if block.check.malformed && !self.unchecked {
                out.extend_from_slice(MALFORMED_MARK);
            }
        }
        let frames = if out.is_empty() && !last {
            Vec::new()
        } else {
            block.frames(&out, last)
        };
        if last {
            self.block = None;
        }
        Ok(frames)
    }
}

impl Block {
    /// `out` (this frame's checked fields) as the HEADERS or CONTINUATION frames h2 gets,
    /// END_HEADERS on the last one of the block.
    fn frames(&mut self, out: &[u8], last: bool) -> Vec<u8> {
        let mut frames = Vec::new();
        let chunks: Vec<&[u8]> = if out.is_empty() {
            vec![&[]]
        } else {
            out.chunks(MAX_FRAME).collect()
        };
        for (i, chunk) in chunks.iter().enumerate() {
            let (kind, mut f) = if self.started {
                (CONTINUATION, 0)
            } else if self.end_stream {
                (HEADERS, END_STREAM)
            } else {
                (HEADERS, 0)
            };
            self.started = true;
            if last && i + 1 == chunks.len() {
                f |= END_HEADERS;
            }
            frames.extend_from_slice(&(chunk.len() as u32).to_be_bytes()[1..]);
            frames.extend_from_slice(&[kind, f]);
            frames.extend_from_slice(&self.stream.to_be_bytes());
            frames.extend_from_slice(chunk);
        }
        frames
    }
}

fn frame_len(h: &[u8]) -> usize {
    u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize
}

/// The header block fragment of a HEADERS or CONTINUATION frame's payload (padding and
/// priority left out). `None`: bad padding.
fn fragment(kind: u8, flags: u8, mut payload: &[u8]) -> Option<&[u8]> {
    if kind == HEADERS {
        if flags & PADDED != 0 {
            let pad = usize::from(*payload.first()?);
            payload = payload.get(1..payload.len().checked_sub(pad)?)?;
        }
        if flags & PRIORITY != 0 {
            payload = payload.get(5..)?;
        }
    }
    Some(payload)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn literal(out: &mut Vec<u8>, first: u8, name: &[u8], value: &[u8]) {
        out.push(first);
        put_string(out, name);
        put_string(out, value);
    }

    #[test]
    fn rfc7541_request_examples_are_clean_and_tracked() {
        // RFC 7541 C.4.1–C.4.3 (Huffman), in order on one decoder.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut h = Hpack::new();
        for b in blocks {
            assert_eq!(h.check(b, false), Verdict::Clean);
        }
        // The table as in C.4.3: 3 entries, 164 bytes.
        assert_eq!((h.entries.len(), h.size), (3, 164));
    }

    #[test]
    fn a_bad_field_is_rewritten_with_the_same_size_and_marked() {
        let mut h = Hpack::new();
        let mut block = vec![0x82];
        literal(&mut block, 0x40, b"X-Up", b"a\r\nb");
        let Verdict::Refuse(out) = h.check(&block, false) else {
            panic!("not refused");
        };
        let mut want = vec![0x82];
        literal(&mut want, 0x40, b"x-xp", b"a  b");
        want.extend_from_slice(MALFORMED_MARK);
        assert_eq!(out, want);
        assert_eq!(h.size, 4 + 4 + 32);
        // Referring to it is malformed too; a clean block after it is clean.
        assert!(matches!(h.check(&[0x82, 0xbe], false), Verdict::Refuse(_)));
        assert_eq!(h.check(&[0x82, 0x84], false), Verdict::Clean);
    }

    #[test]
    fn fragments_and_pseudo_trailers_are_malformed() {
        let mut h = Hpack::new();
        let mut block = vec![0x82];
        literal(&mut block, 0x00, b":path", b"/a?q=1#x");
        assert!(matches!(h.check(&block, false), Verdict::Refuse(_)));
        let mut trailer = Vec::new();
        literal(&mut trailer, 0x00, b"x-t", b"1");
        assert_eq!(h.check(&trailer, true), Verdict::Clean);
        assert!(matches!(h.check(&[0x84], true), Verdict::Refuse(_)));
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// All bytes `Blocks` lets through for `input`, fed in one piece.
    fn through(input: &[u8]) -> Vec<u8> {
        let mut b = Blocks::new();
        let pass = b.pass_in_place(input);
        let mut out = input[..pass].to_vec();
        b.push(&input[pass..]).unwrap();
        let mut buf = vec![0; 1 << 20];
        let n = b.take(&mut buf);
        out.extend_from_slice(&buf[..n]);
        out
    }

    #[test]
    fn a_bad_field_split_across_frames_is_rewritten_in_the_last_one() {
        let mut block = vec![0x82, 0x84];
        literal(&mut block, 0x00, b"x-bad", b"a\nb");
        let (first, rest) = block.split_at(5);
        // PADDED HEADERS with END_STREAM: pad length 2, the fragment, 2 bytes of padding.
        let mut padded = vec![2];
        padded.extend_from_slice(first);
        padded.extend_from_slice(&[0, 0]);
        let mut input = crate::http2::PREFACE.to_vec();
        input.extend(frame(HEADERS, END_STREAM | PADDED, 1, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
        input.extend(frame(0x0, 0, 3, b"data"));
        let mut want = crate::http2::PREFACE.to_vec();
        // The complete fields of the first frame, then the rewritten one and the mark.
        want.extend(frame(HEADERS, END_STREAM, 1, &[0x82, 0x84]));
        let mut last = Vec::new();
        literal(&mut last, 0x00, b"x-bad", b"a b");
        last.extend_from_slice(MALFORMED_MARK);
        want.extend(frame(CONTINUATION, END_HEADERS, 1, &last));
        want.extend(frame(0x0, 0, 3, b"data"));
        assert_eq!(through(&input), want);
    }

    #[test]
    fn clean_frames_pass_as_they_came() {
        let mut input = crate::http2::PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[]));
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &[0x82, 0x84, 0x86],
        ));
        input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        assert_eq!(through(&input), input);
    }
}
