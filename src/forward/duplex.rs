//! The request body and the answer at once (RFC 9112 §9.6): while a body is sent, the
//! executor's answer is read, and relayed as it comes; sending stops when the answer has
//! ended or the executor stopped taking the body. HTTP/1 requests and HTTP/2 streams share it.

use std::future::Future;
use std::pin::Pin;

/// Where a request body stands while its answer may already be coming.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Upload<U> {
    /// Still being sent.
    Sending,
    /// Sent whole (with what the sender returned).
    Sent(U),
    /// Not sent whole: the executor stopped taking it (a write failed).
    Stopped,
}

impl<U> Upload<U> {
    pub(crate) fn is_sending(&self) -> bool {
        matches!(self, Upload::Sending)
    }

    /// The body reached the executor whole: only then may its connection be pooled, and
    /// only then is the client's connection still in step.
    pub(crate) fn is_sent(&self) -> bool {
        matches!(self, Upload::Sent(_))
    }
}

/// Drive the body (`up`, while `upload` is `Sending`) and `down` (reading or relaying the
/// answer) until one of them ends: `Some` with `down`'s output, or `None` when `up` ended
/// first (`upload` says how). A failure on the executor's side of `up`
/// (`executor_side`) only stops the body: its answer may be there already. Any other
/// failure is the client's: `Err`, and the caller drops both. When `down` ends first,
/// `up` is left pending: the caller either goes on driving it or drops it, and a body
/// dropped unfinished leaves the executor connection unusable (it is never pooled).
pub(crate) async fn first<U, E, T>(
    up: Pin<&mut impl Future<Output = Result<U, E>>>,
    upload: &mut Upload<U>,
    down: Pin<&mut impl Future<Output = T>>,
    executor_side: impl Fn(&E) -> bool,
) -> Result<Option<T>, E> {
    monoio::select! {
        r = up => {
            match r {
                Ok(sent) => *upload = Upload::Sent(sent),
                Err(e) if executor_side(&e) => *upload = Upload::Stopped,
                Err(e) => return Err(e),
            }
            Ok(None)
        },
        t = down => Ok(Some(t)),
    }
}

/// Drive `down` to its end, and the body (`up`) alongside it while it is `Sending`
/// (`first`'s rules). `up` is left as it is when `down` ends.
pub(crate) async fn alongside<U, E, T>(
    mut up: Pin<&mut impl Future<Output = Result<U, E>>>,
    upload: &mut Upload<U>,
    down: impl Future<Output = T>,
    executor_side: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut down = std::pin::pin!(down);
    loop {
        if !upload.is_sending() {
            return Ok(down.await);
        }
        let both = first(up.as_mut(), upload, down.as_mut(), &executor_side);
        if let Some(t) = both.await? {
            return Ok(t);
        }
    }
}

/// How the first part of an upload ended (`R`: the executor connection's read half).
pub(crate) enum Step<E, H, T, R> {
    /// The body ended first (sent whole, or the executor stopped taking it): the head is
    /// still to come.
    BodyEnded,
    /// The client's side of the body failed.
    Client(E),
    /// The head came while the body was being sent (`H`: the read's outcome) and the body
    /// was stopped.
    Head(H, R),
    /// The answer came while the body was being sent, and was relayed alongside it.
    Relayed(T, R),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::{pending, ready};
    use std::pin::pin;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// `E = bool`: `true` is a failure on the executor's side.
    fn executor_side(e: &bool) -> bool {
        *e
    }

    #[test]
    fn an_answer_that_ends_first_leaves_the_body_unsent() {
        run(async {
            let mut up = pin!(pending::<Result<u8, bool>>());
            let mut upload = Upload::Sending;
            let r = alongside(up.as_mut(), &mut upload, ready(7), executor_side).await;
            assert_eq!(r, Ok(7));
            assert!(upload.is_sending() && !upload.is_sent());
        });
    }

    #[test]
    fn a_body_sent_first_lets_the_answer_go_on() {
        run(async {
            let mut up = pin!(ready(Ok::<u8, bool>(3)));
            let mut upload = Upload::Sending;
            let mut down = pin!(pending::<u8>());
            let r = first(up.as_mut(), &mut upload, down.as_mut(), executor_side).await;
            assert_eq!(r, Ok(None));
            assert_eq!(upload, Upload::Sent(3));

            let mut up = pin!(ready(Ok::<u8, bool>(3)));
            let mut upload = Upload::Sending;
            let later = async {
                monoio::time::sleep(std::time::Duration::from_millis(5)).await;
                9
            };
            let r = alongside(up.as_mut(), &mut upload, later, executor_side).await;
            assert_eq!(r, Ok(9));
            assert!(upload.is_sent());
        });
    }

    #[test]
    fn an_executor_side_failure_stops_the_body_only_and_a_client_one_ends_both() {
        run(async {
            let mut up = pin!(ready(Err::<u8, bool>(true)));
            let mut upload = Upload::Sending;
            let mut down = pin!(pending::<u8>());
            let r = first(up.as_mut(), &mut upload, down.as_mut(), executor_side).await;
            assert_eq!(r, Ok(None));
            assert_eq!(upload, Upload::Stopped);

            let mut up = pin!(ready(Err::<u8, bool>(false)));
            let mut upload = Upload::Sending;
            let r = alongside(up.as_mut(), &mut upload, pending::<u8>(), executor_side).await;
            assert_eq!(r, Err(false));
            assert!(upload.is_sending());
        });
    }
}
