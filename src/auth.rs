//! Client authentication (docs/behaviour.md §3): the `Authorization` value is split at the first
//! space and the rest must equal `OPR_PROXY_SECRET`, compared in constant time.

/// True when `authorization` (the raw header value, if any) carries `secret`.
pub(crate) fn is_authorized(authorization: Option<&[u8]>, secret: &[u8]) -> bool {
    let Some(value) = authorization else {
        return false;
    };
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return false;
    };
    let key = &value[space + 1..];
    !key.is_empty() && constant_time_eq(key, secret)
}

/// Compares without an early exit so timing does not reveal how much of the key matched.
/// The length difference is folded in rather than returned early.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_any_scheme_word_before_the_key() {
        assert!(is_authorized(Some(b"Bearer s3cret"), b"s3cret"));
        assert!(is_authorized(Some(b"Token s3cret"), b"s3cret"));
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(!is_authorized(None, b"s3cret"));
        assert!(!is_authorized(Some(b""), b"s3cret"));
        assert!(!is_authorized(Some(b"s3cret"), b"s3cret")); // no space
        assert!(!is_authorized(Some(b"Bearer "), b"s3cret"));
        assert!(!is_authorized(Some(b"Bearer s3cre"), b"s3cret"));
        assert!(!is_authorized(Some(b"Bearer s3crett"), b"s3cret"));
        assert!(!is_authorized(Some(b"Bearer S3cret"), b"s3cret"));
    }

    #[test]
    fn split_is_at_the_first_space_only() {
        // The original splits at every space and takes the second part; we keep the
        // whole rest, so a key with spaces works and "Bearer key extra" does not pass.
        assert!(is_authorized(Some(b"Bearer a b"), b"a b"));
        assert!(!is_authorized(Some(b"Bearer a b"), b"a"));
    }
}
