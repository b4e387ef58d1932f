//! The two decisions that keep one client's exchange from leaking into another's: may an
//! executor connection go back to the pool, and may a request be sent again after an
//! executor closed without answering. Every exchange path asks these, nothing else does.

use crate::http::head::{ResponseFraming, ResponseHead};
use crate::outcome::{Cause, Discard};

/// Whether an executor connection may carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reuse {
    Reusable,
    Discard(Discard),
}

/// How the response ended, as far as the executor connection is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResponseEnd {
    /// The body ended exactly at the end of what was read.
    Clean,
    /// More bytes followed the end of the response.
    Leftover,
    /// The relay stopped before the end of the body.
    Unfinished,
}

/// The one reuse rule (RFC 9112 §9.3): both directions finished at a message boundary,
/// nothing unread, and neither side asked to close. Whether the connection stayed clean
/// while idle is checked again when it is taken from the pool.
pub(crate) fn after_exchange(
    response: &ResponseHead,
    request_sent_whole: bool,
    end: ResponseEnd,
) -> Reuse {
    let discard = if end == ResponseEnd::Unfinished {
        Discard::Unfinished
    } else if end == ResponseEnd::Leftover {
        Discard::Leftover
    } else if !request_sent_whole {
        Discard::RequestUnfinished
    } else if response.framing == ResponseFraming::UntilClose {
        Discard::CloseDelimited
    } else if !response.keep_alive {
        Discard::ExecutorClose
    } else {
        return Reuse::Reusable;
    };
    Reuse::Discard(discard)
}

/// After an executor closed a connection without a byte of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Silence {
    /// Send the request again on a fresh connection.
    Replay,
    /// Answer 502.
    Fail(Cause),
}

/// What the replay rule needs to know of a request whose executor closed without a byte
/// of an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// Its method may be sent twice (`is_idempotent`).
    pub(crate) idempotent: bool,
    /// It went out on a pooled connection.
    pub(crate) reused: bool,
    /// It was replayed once already.
    pub(crate) replayed: bool,
    /// The whole request (body included) is still in hand to send again.
    pub(crate) in_hand: bool,
}

/// RFC 9110 §9.2.2: a request is replayed only when its method is idempotent, nothing of
/// an answer came back (not even `1xx`: the caller reports that as an answer), it was
/// sent on a reused connection (a pooled one the executor had closed: a fresh one
/// failing is the executor's answer), it was not replayed already, and the whole
/// request is still in hand.
pub(crate) fn after_silence(a: Attempt) -> Silence {
    if !a.reused {
        return Silence::Fail(Cause::ClosedBeforeAnswer);
    }
    if a.idempotent && !a.replayed && a.in_hand {
        Silence::Replay
    } else {
        Silence::Fail(Cause::ClosedNotReplayed)
    }
}

/// RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT and DELETE.
pub(crate) fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(framing: ResponseFraming, keep_alive: bool) -> ResponseHead {
        ResponseHead {
            status: 200,
            reason: 0..0,
            minor_version: 1,
            head_len: 0,
            framing,
            keep_alive,
        }
    }

    #[test]
    fn only_a_clean_finished_keep_alive_exchange_is_reusable() {
        let ok = response(ResponseFraming::Length(2), true);
        assert_eq!(
            after_exchange(&ok, true, ResponseEnd::Clean),
            Reuse::Reusable
        );
        let cases = [
            (ok.clone(), true, ResponseEnd::Leftover, Discard::Leftover),
            (
                ok.clone(),
                true,
                ResponseEnd::Unfinished,
                Discard::Unfinished,
            ),
            (
                ok.clone(),
                false,
                ResponseEnd::Clean,
                Discard::RequestUnfinished,
            ),
            (
                response(ResponseFraming::UntilClose, true),
                true,
                ResponseEnd::Clean,
                Discard::CloseDelimited,
            ),
            (
                response(ResponseFraming::NoBody, false),
                true,
                ResponseEnd::Clean,
                Discard::ExecutorClose,
            ),
        ];
        for (r, whole, end, why) in cases {
            assert_eq!(after_exchange(&r, whole, end), Reuse::Discard(why));
        }
    }

    #[test]
    fn only_idempotent_requests_on_reused_connections_are_replayed_once() {
        assert_eq!(
            after_silence(Attempt {
                idempotent: true,
                reused: true,
                replayed: false,
                in_hand: true
            }),
            Silence::Replay
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: is_idempotent(b"DELETE"),
                reused: true,
                replayed: false,
                in_hand: true
            }),
            Silence::Replay
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: is_idempotent(b"POST"),
                reused: true,
                replayed: false,
                in_hand: true
            }),
            Silence::Fail(Cause::ClosedNotReplayed)
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: is_idempotent(b"PATCH"),
                reused: true,
                replayed: false,
                in_hand: true
            }),
            Silence::Fail(Cause::ClosedNotReplayed)
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: true,
                reused: true,
                replayed: true,
                in_hand: true
            }),
            Silence::Fail(Cause::ClosedNotReplayed)
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: true,
                reused: true,
                replayed: false,
                in_hand: false
            }),
            Silence::Fail(Cause::ClosedNotReplayed)
        );
        assert_eq!(
            after_silence(Attempt {
                idempotent: true,
                reused: false,
                replayed: false,
                in_hand: true
            }),
            Silence::Fail(Cause::ClosedBeforeAnswer)
        );
        // Methods are case-sensitive (RFC 9110 §9.1).
        assert!(!is_idempotent(b"get"));
    }
}
