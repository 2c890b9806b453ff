//! What passes between a source and the run loop: the [`PolicySource`] trait, what a
//! look at the source found ([`SourceUpdate`]), how the run loop dealt with it
//! ([`Outcome`]) and how a server-backed source's requests fare ([`SourceHealth`]).
//! Every source implements it; it depends on no source.

use std::sync::Arc;
use std::time::Duration;

use crate::policy::{CompiledPolicy, PolicyError, Validated};

/// What a look at the source found.
#[derive(Debug)]
pub enum SourceUpdate {
    Unchanged,
    /// A new input, validated (compilation happens in the run loop).
    Changed(Validated),
    /// The input changed but is invalid; the last good policy stays enforced.
    Invalid(PolicyError),
    /// The source cannot be read right now (file missing, API unreachable).
    Unavailable(String),
}

/// How the run loop dealt with the last `Changed` input.
pub enum Outcome<'a> {
    Applied {
        generation: u32,
        compiled: &'a CompiledPolicy,
    },
    Rejected(&'a PolicyError),
    /// Valid, but the datapath could not take it (e.g. a map too small).
    Failed(String),
}

/// How the requests of a source that follows a server fare (for `/readyz` and the
/// metrics); sources that read a file have nothing to say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// What fails now, one line each naming what was asked and why it failed
    /// (`zones: list failed: 403 Forbidden: ...`); empty when nothing does.
    pub failing: Vec<String>,
    /// Failed requests so far (running totals).
    pub failures: Vec<RequestFailures>,
    /// Per kind: the wait chosen after its last failure; zero once a request succeeds.
    pub retry_backoff: Vec<(&'static str, Duration)>,
}

/// How many requests of one kind failed so far, for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFailures {
    /// What was asked for (`zones`, `pods`...).
    pub kind: &'static str,
    /// `list` (a streamed list included) or `watch`.
    pub request: &'static str,
    /// One of a few fixed words: `forbidden`, `not_found`, `too_many_requests`,
    /// `server_error`, `connection`...
    pub reason: &'static str,
    pub total: u64,
}

/// A provider of policy input.
pub trait PolicySource {
    /// For logs: where the policy comes from.
    fn describe(&self) -> String;
    /// Returns what changed since the last call. Must not block.
    fn poll(&mut self) -> SourceUpdate;
    /// Notified when `poll` has something new, so changes apply without waiting for the
    /// next poll tick. Sources that are only polled return None.
    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// The result of applying the last input.
    fn outcome(&mut self, _outcome: Outcome<'_>) {}
    /// Who made the last change, when the source knows (Kubernetes managedFields).
    fn changed_by(&self) -> Option<String> {
        None
    }
    /// Whether the source is in sync (for readiness); polled sources always are.
    fn synced(&self) -> bool {
        true
    }
    /// State files (`--state-dir`) that could not be read, parsed or written so far.
    fn state_errors(&self) -> u64 {
        0
    }
    /// How the source's requests fare.
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }
}
