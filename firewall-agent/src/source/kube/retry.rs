//! How one watcher retries: an exponential backoff with jitter, what each failure was (a
//! list or a watch, and why), and when a run of failures is over.
//!
//! kube-runtime's `StreamBackoff` starts its schedule over on every event, and the
//! watcher sends `Init` before each list attempt: a list that keeps failing (403 from
//! RBAC, 404 while the CRDs are missing, 429, a server down at start) would be retried
//! every 125-250 ms for ever, by every node's agent at once. Here the schedule starts
//! over only when a list completes (`InitDone`), a watch event arrives, or a retried
//! watch stays open without error for [`WATCH_SETTLE`].

use std::time::Duration;

use kube::runtime::watcher::{self, Event};

/// First wait after a failure; each further failure doubles it, up to [`BACKOFF_MAX`].
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A watch retried after a failure that stays open this long without an error works
/// again: on a quiet kind no event would ever say so.
pub(super) const WATCH_SETTLE: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter between retries: quick after a blip, gentle on an API
/// server that is down or refuses (every node's agent retries at once).
pub(super) struct RetryBackoff {
    step: Duration,
    seed: u64,
}

impl RetryBackoff {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            step: BACKOFF_FIRST,
            seed: seed | 1,
        }
    }

    /// The wait before the next attempt: between half and all of the current step, which
    /// then doubles (up to [`BACKOFF_MAX`]).
    pub(super) fn next_delay(&mut self) -> Duration {
        // xorshift: enough randomness to spread the retries of many agents.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let step = self.step;
        self.step = (self.step * 2).min(BACKOFF_MAX);
        let jitter = (self.seed % 1000) as u32;
        step / 2 + step / 2 * jitter / 1000
    }

    pub(super) fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

/// Which request failed: the list (a streamed list included) or the watch after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Request {
    List,
    Watch,
}

impl Request {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Request::List => "list",
            Request::Watch => "watch",
        }
    }
}

/// One failed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) request: Request,
    /// The metrics' `reason` label: one of a few fixed words.
    pub(crate) reason: &'static str,
    /// For people: the status and the server's message, or what broke the connection.
    pub(crate) cause: String,
}

/// What the watcher does after an error.
#[derive(Debug, PartialEq)]
pub(super) enum Next {
    /// A failure: wait `delay`, then let the watcher try again.
    Retry {
        failure: Failure,
        delay: Duration,
        /// Failures in a row, this one included.
        attempts: u32,
    },
    /// The watch's resourceVersion expired (410 Gone): routine, the watcher lists again
    /// after `delay`.
    Relist { delay: Duration },
}

/// The retry state of one watcher.
pub(super) struct Retry {
    backoff: RetryBackoff,
    /// A list is due or under way (no `InitDone` since it was started or became due):
    /// what fails now is a list.
    listing: bool,
    /// Failures since the last success.
    attempts: u32,
    failing: Option<Failure>,
}

impl Retry {
    pub(super) fn new(seed: u64) -> Self {
        Self {
            backoff: RetryBackoff::new(seed),
            listing: true,
            attempts: 0,
            failing: None,
        }
    }

    /// Whether a list is due or under way.
    pub(super) fn listing(&self) -> bool {
        self.listing
    }

    /// Takes one event; true when it ends a run of failures.
    pub(super) fn event<K>(&mut self, event: &Event<K>) -> bool {
        match event {
            // Sent before every list attempt, failed ones included: no reset here.
            Event::Init => {
                self.listing = true;
                false
            }
            Event::InitApply(_) => false,
            Event::InitDone => {
                self.listing = false;
                self.succeeded()
            }
            Event::Apply(_) | Event::Delete(_) => self.succeeded(),
        }
    }

    /// Takes one error: what to do about it.
    pub(super) fn error(&mut self, error: &watcher::Error) -> Next {
        if expired(error) {
            self.listing = true;
            return Next::Relist {
                delay: self.backoff.next_delay(),
            };
        }
        if matches!(
            error,
            watcher::Error::InitialListFailed(_) | watcher::Error::NoResourceVersion
        ) {
            // The watcher lists again after both.
            self.listing = true;
        }
        let (reason, cause) = describe(error);
        let failure = Failure {
            request: if self.listing {
                Request::List
            } else {
                Request::Watch
            },
            reason,
            cause,
        };
        self.attempts = self.attempts.saturating_add(1);
        self.failing = Some(failure.clone());
        Next::Retry {
            failure,
            delay: self.backoff.next_delay(),
            attempts: self.attempts,
        }
    }

    /// Whether the last failure was a watch's, retried since: a quiet [`WATCH_SETTLE`]
    /// then means the new watch is open.
    pub(super) fn awaiting_watch(&self) -> bool {
        !self.listing
            && self
                .failing
                .as_ref()
                .is_some_and(|failure| failure.request == Request::Watch)
    }

    /// The retried watch stayed open without error; true when that ends a run of
    /// failures.
    pub(super) fn watch_settled(&mut self) -> bool {
        self.awaiting_watch() && self.succeeded()
    }

    fn succeeded(&mut self) -> bool {
        self.backoff.reset();
        let ended = self.attempts > 0;
        self.attempts = 0;
        self.failing = None;
        ended
    }
}

/// A watch whose resourceVersion is too old for the server: the watcher relists.
fn expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// Whether the server refused a streamed list (`sendInitialEvents`) as it does when it
/// does not offer them (the WatchList feature off: Kubernetes 1.27 to 1.31 by default,
/// and 1.33): 422 Invalid, or 400 Bad Request.
pub(super) fn streaming_refused(error: &watcher::Error) -> bool {
    matches!(
        error,
        watcher::Error::WatchStartFailed(kube::Error::Api(status))
            if status.code == 422 || status.code == 400
    )
}

/// The `reason` label and the text for people of an error.
fn describe(error: &watcher::Error) -> (&'static str, String) {
    match error {
        watcher::Error::InitialListFailed(error)
        | watcher::Error::WatchStartFailed(error)
        | watcher::Error::WatchFailed(error) => describe_client_error(error),
        watcher::Error::WatchError(status) => (reason_of(status.code), status_text(status)),
        watcher::Error::NoResourceVersion => (
            "no_resource_version",
            "the API server sent no resourceVersion".to_string(),
        ),
    }
}

fn describe_client_error(error: &kube::Error) -> (&'static str, String) {
    match error {
        kube::Error::Api(status) => (reason_of(status.code), status_text(status)),
        kube::Error::SerdeError(error) => {
            ("decode", format!("the response could not be read: {error}"))
        }
        other => ("connection", with_causes(other)),
    }
}

/// The metrics' `reason` label of an HTTP status.
fn reason_of(code: u16) -> &'static str {
    match code {
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        410 => "expired",
        429 => "too_many_requests",
        500..=599 => "server_error",
        400..=499 => "client_error",
        _ => "api_error",
    }
}

/// `403 Forbidden: <the server's message>`.
fn status_text(status: &kube::core::Status) -> String {
    let phrase = match status.code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ if !status.reason.is_empty() => status.reason.as_str(),
        _ => "error",
    };
    let message = status.message.trim();
    if message.is_empty() {
        format!("{} {phrase}", status.code)
    } else {
        format!("{} {phrase}: {message}", status.code)
    }
}

/// The error with its causes, on one line.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests;
