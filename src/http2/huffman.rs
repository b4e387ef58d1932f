//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B) decoded for the header-block check in
//! `fields`: the code is canonical, so the code lengths alone define it.

/// Code length in bits of each symbol (0–255, then 256 = EOS), from RFC 7541 Appendix B.
const LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

const MAX_LEN: usize = 30;

/// The canonical code: per length, the first code, how many codes, where their symbols
/// start in `SYMBOLS` (symbols ordered by length, then value).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u16; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

const fn canonical() -> Canonical {
    let mut c = Canonical {
        first: [0; MAX_LEN + 1],
        count: [0; MAX_LEN + 1],
        offset: [0; MAX_LEN + 1],
        symbols: [0; 257],
    };
    let mut s = 0;
    while s < 257 {
        c.count[LENGTHS[s] as usize] += 1;
        s += 1;
    }
    let (mut code, mut at, mut len) = (0u32, 0u16, 1);
    while len <= MAX_LEN {
        code <<= 1;
        c.first[len] = code;
        c.offset[len] = at;
        code += c.count[len] as u32;
        at += c.count[len];
        len += 1;
    }
    let mut next = c.offset;
    let mut s = 0;
    while s < 257 {
        let l = LENGTHS[s] as usize;
        c.symbols[next[l] as usize] = s as u16;
        next[l] += 1;
        s += 1;
    }
    c
}

static CODE: Canonical = canonical();

/// Decode `src` into `out`. `None`: not a valid Huffman string (EOS inside, padding
/// longer than 7 bits or not all ones: a compression error, RFC 7541 §5.2).
pub(crate) fn decode(src: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in src {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let n = u32::from(CODE.count[len]);
            if n > 0 && code >= CODE.first[len] && code - CODE.first[len] < n {
                let sym =
                    CODE.symbols[(u32::from(CODE.offset[len]) + code - CODE.first[len]) as usize];
                if sym == 256 {
                    return None;
                }
                out.push(sym as u8);
                (code, len) = (0, 0);
            } else if len == MAX_LEN {
                return None;
            }
        }
    }
    // What is left must be a prefix of EOS (all ones) shorter than a byte.
    (len < 8 && code == (1 << len) - 1).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7541_examples_decode() {
        // RFC 7541 C.4.1: "www.example.com"; C.4.2: "no-cache"; C.4.3: "custom-key".
        let cases: [(&[u8], &[u8]); 3] = [
            (
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
                b"www.example.com",
            ),
            (&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], b"no-cache"),
            (
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f],
                b"custom-key",
            ),
        ];
        for (src, want) in cases {
            let mut out = Vec::new();
            assert_eq!(decode(src, &mut out), Some(()));
            assert_eq!(out, want);
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        let mut out = Vec::new();
        // "0" is 00000: padding of zeros is not EOS's prefix.
        assert_eq!(decode(&[0x00], &mut out), None);
        // A whole byte of ones as padding is too long.
        assert_eq!(decode(&[0x07, 0xff], &mut out), None);
        // EOS itself (30 ones).
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xfc], &mut out), None);
    }
}
