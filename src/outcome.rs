//! How a request and its connections ended: the types every layer above reports and
//! counts (the client connection's fate, why an executor connection was not pooled, why
//! an exchange failed or a request was shed). Plain data, no I/O.

use std::io;

use crate::balance::Choice;
use crate::http::chunked::ChunkedError;
use crate::http::head::{HeadError, RequestHead};

/// Whether the client connection may carry another request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
}

impl After {
    pub(crate) fn close_if(close: bool) -> After {
        if close {
            After::Close
        } else {
            After::KeepAlive
        }
    }
}

/// The request, as the client connection's keep-alive rule sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Asked {
    /// Its head allows another request (RFC 9112 §9.3).
    pub(crate) keep_alive: bool,
    /// Its body was read whole: the next bytes are the next request's.
    pub(crate) read_whole: bool,
}

impl Asked {
    /// A request the connection cannot be trusted past (a bad head, a body not read).
    pub(crate) const UNREAD: Asked = Asked {
        keep_alive: false,
        read_whole: false,
    };

    pub(crate) fn of(head: &RequestHead, read_whole: bool) -> Asked {
        Asked {
            keep_alive: head.keep_alive,
            read_whole,
        }
    }
}

/// How an answer ended, as the client connection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AnswerEnd {
    /// At a message boundary.
    AtBoundary,
    /// Only closing ends it: a close-delimited body, or an error that leaves the stream
    /// out of step.
    ByClose,
}

/// The one keep-alive rule for client connections (RFC 9112 §9.3, §9.6): another request
/// only when the request allows it, its body was read whole, the answer ended at a
/// message boundary and the worker is not draining.
pub(crate) fn fate(asked: Asked, ended: AnswerEnd, draining: bool) -> After {
    let keep = asked.keep_alive && asked.read_whole && ended == AnswerEnd::AtBoundary && !draining;
    After::close_if(!keep)
}

/// How one request was served: what happens to the client connection, the status sent,
/// and the executor chosen (for metrics, the access log and `x-opr-route`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Served {
    pub(crate) after: After,
    pub(crate) status: u16,
    pub(crate) choice: Option<Choice>,
}

impl Served {
    /// Served without an executor's answer (yet: `forward` adds the choice).
    pub(crate) fn new(after: After, status: u16) -> Served {
        Served {
            after,
            status,
            choice: None,
        }
    }

    /// The connection closes; `status` went out (0: nothing did).
    pub(crate) fn closed(status: u16) -> Served {
        Served::new(After::Close, status)
    }
}

/// Why a client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientClose {
    /// The client closed it (EOF or reset between requests).
    Client,
    /// Idle longer than `OPR_PROXY_IDLE_TIMEOUT` between requests.
    Idle,
    /// The head did not arrive within `OPR_PROXY_HEADER_TIMEOUT`.
    HeaderTimeout,
    /// The exchange ended the connection (`Connection: close`, a framing error, a fault).
    Closed,
    /// The worker is draining (SIGTERM/SIGINT).
    Drain,
}

impl ClientClose {
    pub(crate) const ALL: [ClientClose; 5] = [
        ClientClose::Client,
        ClientClose::Idle,
        ClientClose::HeaderTimeout,
        ClientClose::Closed,
        ClientClose::Drain,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            ClientClose::Client => "client",
            ClientClose::Idle => "idle",
            ClientClose::HeaderTimeout => "header_timeout",
            ClientClose::Closed => "closed",
            ClientClose::Drain => "drain",
        }
    }
}

/// Why an executor connection was closed instead of pooled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Discard {
    /// The executor said `Connection: close`, or spoke HTTP/1.0.
    ExecutorClose,
    /// The response body ran until the executor closed.
    CloseDelimited,
    /// The executor answered before the request body was sent whole.
    RequestUnfinished,
    /// Bytes arrived after the end of the response: a late or stray answer that would
    /// reach the next client as its own.
    Leftover,
    /// The response did not end cleanly (truncated, malformed, or its client left).
    Unfinished,
    /// Its client took no byte of the answer for `OPR_PROXY_BODY_TIMEOUT`.
    ClientStalled,
    /// Bytes arrived while it sat in the pool (checked when taken).
    IdleBytes,
    /// The executor closed it while it sat in the pool.
    IdleClosed,
    /// Idle longer than `OPR_PROXY_POOL_IDLE_TIMEOUT`.
    Expired,
    /// The pool was full (`OPR_PROXY_POOL_SIZE`).
    PoolFull,
    /// The exchange failed (an error, a timeout, or the client left before an answer).
    Failed,
}

/// Why an exchange with an executor failed before its response head (a `502`): typed and
/// `Copy`, so failing costs no allocation; shown in dev-mode bodies and in logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Connecting failed for a reason that does not make the executor unreachable.
    Connect(io::ErrorKind),
    /// Writing the request failed.
    Send(io::ErrorKind),
    /// EOF or reset before any byte of a response, on a fresh connection.
    ClosedBeforeAnswer,
    /// The same on a pooled connection, for a request that must not be sent twice
    /// (RFC 9110 §9.2.2), or after a byte (even `1xx`) had come back.
    ClosedNotReplayed,
    /// EOF in the middle of the response head.
    ClosedMidHead,
    /// EOF in the response body before any of the answer was relayed.
    ClosedMidBody,
    /// Reading the response failed.
    Read(io::ErrorKind),
    /// The response head broke a rule (RFC 9112).
    MalformedHead(HeadError),
    /// The chunked response body broke RFC 9112 §7.1 before anything was relayed.
    MalformedBody(ChunkedError),
    /// `101 Switching Protocols`: not relayed.
    Upgrade,
}

impl Cause {
    /// Whether the failure is the executor's, for passive ejection
    /// (`OPR_PROXY_EJECT_AFTER`). Not a connect error left after refusals and timeouts
    /// (those flag the executor at once): what remains is local, such as running out of
    /// file descriptors. Not `101`: the client asked for the upgrade, and a client must
    /// not be able to eject executors.
    pub(crate) fn is_executor_fault(&self) -> bool {
        !matches!(self, Cause::Connect(_) | Cause::Upgrade)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::Connect(kind) => write!(f, "connecting to the executor failed: {kind}"),
            Cause::Send(kind) => write!(f, "sending the request to the executor failed: {kind}"),
            Cause::ClosedBeforeAnswer => f.write_str("executor closed the connection before answering"),
            Cause::ClosedNotReplayed => f.write_str(
                "executor closed a reused connection before answering; the request is not replayed \
                 (not idempotent, or part of an answer had arrived)",
            ),
            Cause::ClosedMidHead => f.write_str("executor closed the connection inside its response head"),
            Cause::ClosedMidBody => f.write_str("executor closed the connection inside its response body"),
            Cause::Read(kind) => write!(f, "reading the executor's response failed: {kind}"),
            Cause::MalformedHead(e) => write!(f, "malformed response head from executor: {}", e.message()),
            Cause::MalformedBody(e) => write!(f, "malformed chunked body from executor: {}", e.message()),
            Cause::Upgrade => f.write_str("executor switched protocols, which the proxy does not relay"),
        }
    }
}

/// Why a request was answered `503` for lack of capacity (the `reason` label of
/// `opr_proxy_shed_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The worker's queue was full (or `OPR_PROXY_QUEUE_SIZE=0`).
    QueueFull,
    /// No slot freed within `OPR_PROXY_QUEUE_TIMEOUT`.
    QueueTimeout,
    /// The proxy began to stop while the request waited.
    Draining,
}

impl Shed {
    pub(crate) const ALL: [Shed; 3] = [Shed::QueueFull, Shed::QueueTimeout, Shed::Draining];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
            Shed::Draining => "draining",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executors_faults_count_for_ejection() {
        assert!(Cause::ClosedBeforeAnswer.is_executor_fault());
        assert!(Cause::Read(io::ErrorKind::ConnectionReset).is_executor_fault());
        assert!(Cause::MalformedHead(HeadError::HeadTooLarge).is_executor_fault());
        // Out of file descriptors here; an upgrade the client asked for.
        assert!(!Cause::Connect(io::ErrorKind::Other).is_executor_fault());
        assert!(!Cause::Upgrade.is_executor_fault());
    }

    #[test]
    fn a_connection_is_kept_only_when_everything_allows_it() {
        let whole = Asked {
            keep_alive: true,
            read_whole: true,
        };
        assert_eq!(fate(whole, AnswerEnd::AtBoundary, false), After::KeepAlive);
        assert_eq!(fate(whole, AnswerEnd::ByClose, false), After::Close);
        assert_eq!(fate(whole, AnswerEnd::AtBoundary, true), After::Close);
        let unread = Asked {
            read_whole: false,
            ..whole
        };
        assert_eq!(fate(unread, AnswerEnd::AtBoundary, false), After::Close);
        assert_eq!(
            fate(Asked::UNREAD, AnswerEnd::AtBoundary, false),
            After::Close
        );
    }
}
