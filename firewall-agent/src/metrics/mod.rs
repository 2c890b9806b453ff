//! Prometheus metrics (the prometheus-client crate) and the health endpoints: `/metrics`,
//! `/healthz` (the run loop is alive) and `/readyz` (a policy is enforced, the source is
//! in sync, the last policy was written whole and every pod interface is attached;
//! otherwise a 503 whose body names what is wrong).
//!
//! `registry` holds every metric (the flow path's come from `crate::flows`),
//! `readiness` what `/readyz` depends on, `http` the bounded endpoint that serves them.

mod http;
mod readiness;
mod registry;

pub use crate::flows::{PolicyLabels, SinkLabels, ZonePairLabels};
pub use http::{AcceptBackoff, AcceptFailure, DEFAULT_MAX_CONNECTIONS, ServeLimits, serve};
pub use readiness::{ApplyFailure, Readiness};
pub use registry::{
    HookLabels, InterfaceLabels, KindLabels, KindReasonLabels, MapLabels, Metrics, ReasonLabels,
};

#[cfg(test)]
mod tests;
