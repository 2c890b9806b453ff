//! What readiness (`/readyz`) depends on, and the reasons not to be ready in words an
//! operator can act on.

/// What readiness depends on. The agent fills it every round; [`Readiness::reasons`]
/// says, in words an operator can act on, why it is not ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// A policy generation is enforced (this agent's or one it adopted).
    pub policy_enforced: bool,
    pub source_synced: bool,
    /// Pod interfaces left without the programs: (interface, attempts, last error).
    pub unprotected: Vec<(String, u32, String)>,
    /// The newest policy could not be written: the map at fault (if known), the error,
    /// and the attempts so far.
    pub apply_failed: Option<ApplyFailure>,
    /// What the policy source fails at now, one line each (see
    /// [`crate::source::SourceHealth::failing`]).
    pub source_failing: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyFailure {
    pub map: Option<String>,
    pub error: String,
    pub attempts: u32,
}

impl Readiness {
    /// One line per reason not to be ready; empty when ready.
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if !self.policy_enforced {
            reasons.push("no policy enforced yet".to_owned());
        }
        if !self.source_synced {
            reasons.push("the policy source is not in sync".to_owned());
        }
        reasons.extend(self.source_failing.iter().cloned());
        for (interface, attempts, error) in &self.unprotected {
            reasons.push(format!(
                "interface {interface} is NOT protected: attach failed {attempts} time(s), retrying: {error}"
            ));
        }
        if let Some(failure) = &self.apply_failed {
            let map = failure
                .map
                .as_deref()
                .map(|map| format!(" (map {map})"))
                .unwrap_or_default();
            reasons.push(format!(
                "the newest policy could not be written{map}: failed {} time(s), retrying; the previous policy stays enforced: {}",
                failure.attempts, failure.error
            ));
        }
        reasons
    }
}
