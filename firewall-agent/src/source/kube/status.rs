//! Status of every Zone and ZonePolicy: `Accepted` True or False with a message a person
//! can act on, the generation it describes, and for zones the member count. Every agent
//! computes it; one writes it: the holder of a `coordination.k8s.io/v1` Lease, renewed
//! while it lives. Writes are server-side applies to the status subresource, and only
//! when what the API server shows differs from what should be there, so a new holder
//! (or a restarted agent) does not rewrite what is already right.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use tokio::sync::watch;

use super::cache::{Resource, Verdict};
use super::lenient::Lenient;
use super::shared::Shared;
use crate::policy::compiled::{CompiledPolicy, Subject, Warning};
use crate::policy::crd::{
    CONDITION_ACCEPTED, REASON_ACCEPTED, REASON_INVALID, Zone, ZonePolicy, ZonePolicyStatus,
    ZoneStatus,
};
use crate::policy::model::API_VERSION;

/// Field manager of the status writes.
pub(super) const FIELD_MANAGER: &str = "zonewall-agent";
/// Longest condition message written (the API allows 32 KiB).
const MESSAGE_LIMIT: usize = 4000;
/// Most warnings listed in one status.
const WARNING_LIMIT: usize = 10;
/// How long one API call of the writer may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may write status and how.
#[derive(Clone, Debug)]
pub struct StatusOptions {
    /// Name and namespace of the Lease.
    pub lease_name: String,
    pub lease_namespace: String,
    /// This agent's name in the Lease's holderIdentity.
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease.
    pub lease_duration: Duration,
}

/// What one object's status should say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct DesiredStatus {
    pub(super) generation: i64,
    pub(super) accepted: bool,
    pub(super) message: String,
    /// Zones: pods in the zone (network zones: none).
    pub(super) members: Option<i64>,
    pub(super) warnings: Vec<String>,
}

pub(super) type Desired = BTreeMap<(Resource, String), DesiredStatus>;

/// What the compiler said about each zone and policy.
pub(super) struct Summary {
    members: HashMap<String, (usize, usize)>,
    modes: HashMap<String, String>,
    warnings: HashMap<(Resource, String), Vec<String>>,
}

impl Summary {
    pub(super) fn of(compiled: &CompiledPolicy) -> Self {
        let members = compiled
            .zones
            .values()
            .filter(|zone| !zone.reserved)
            .map(|zone| (zone.name.clone(), (zone.members.len(), zone.networks.len())))
            .collect();
        let modes = compiled
            .rules
            .values()
            .map(|rule| (rule.name.clone(), rule.mode.clone()))
            .collect();
        let mut warnings: HashMap<(Resource, String), Vec<String>> = HashMap::new();
        for warning in &compiled.warnings {
            for target in warning_targets(warning) {
                warnings
                    .entry(target)
                    .or_default()
                    .push(warning.to_string());
            }
        }
        Self {
            members,
            modes,
            warnings,
        }
    }
}

/// The zones and policies whose status lists a compiler warning: the Zone or ZonePolicy
/// it is about when it is about the object as a whole (a zone that selects no pod, a
/// policy that never decides anything), and the zones that select a pod several zones
/// select. Warnings about a field (a network written with host bits) and about pods,
/// services or addresses alone are left to `check` and the agent's log.
fn warning_targets(warning: &Warning) -> Vec<(Resource, String)> {
    let mut targets = Vec::new();
    if warning.field.is_empty() {
        match warning.kind {
            Subject::Zone => targets.push((Resource::Zone, warning.name.clone())),
            Subject::ZonePolicy => targets.push((Resource::ZonePolicy, warning.name.clone())),
            Subject::Pod | Subject::Service | Subject::Address => {}
        }
    }
    targets.extend(
        warning
            .zones
            .iter()
            .map(|zone| (Resource::Zone, zone.clone())),
    );
    targets
}

/// The status each object should have, from the verdicts of a snapshot and what the
/// compiler made of it.
pub(super) fn desired(verdicts: &[Verdict], summary: &Summary) -> Desired {
    let mut desired = Desired::new();
    for verdict in verdicts {
        let key = (verdict.resource, verdict.name.clone());
        let mut warnings = summary.warnings.get(&key).cloned().unwrap_or_default();
        if warnings.len() > WARNING_LIMIT {
            let more = warnings.len() - WARNING_LIMIT;
            warnings.truncate(WARNING_LIMIT);
            warnings.push(format!("... and {more} more"));
        }
        let (members, networks) = summary
            .members
            .get(&verdict.name)
            .copied()
            .unwrap_or_default();
        let message = if verdict.accepted() {
            match verdict.resource {
                Resource::Zone if networks > 0 => {
                    format!("enforced: {networks} network{}", plural(networks))
                }
                Resource::Zone => format!("enforced: {members} pod{}", plural(members)),
                Resource::ZonePolicy => {
                    match summary.modes.get(&verdict.name).map(String::as_str) {
                        Some("Audit") => {
                            "audited: matching traffic is reported, never dropped (mode Audit)"
                                .into()
                        }
                        _ => "enforced".into(),
                    }
                }
            }
        } else {
            let mut text = verdict.problems.join("; ");
            match verdict.enforced_instead {
                Some(generation) => text.push_str(&format!(
                    "; generation {generation} of this {} stays enforced until this is fixed",
                    verdict.resource.kind()
                )),
                None => text.push_str("; not enforced until this is fixed"),
            }
            truncate(text)
        };
        let members = match verdict.resource {
            Resource::Zone if networks == 0 => Some(members as i64),
            _ => None,
        };
        desired.insert(
            key,
            DesiredStatus {
                generation: verdict.generation,
                accepted: verdict.accepted(),
                message,
                members,
                warnings,
            },
        );
    }
    desired
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}

fn truncate(mut text: String) -> String {
    if text.len() > MESSAGE_LIMIT {
        let mut end = MESSAGE_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" ...");
    }
    text
}

/// What the API server shows of an object's status.
struct Observed {
    conditions: Vec<Condition>,
    observed_generation: Option<i64>,
    members: Option<i64>,
    warnings: Vec<String>,
}

/// Whether the object's current status already says what `desired` says.
fn already_written(observed: &Observed, desired: &DesiredStatus) -> bool {
    observed.observed_generation == Some(desired.generation)
        && observed.members == desired.members
        && observed.warnings == desired.warnings
        && observed.conditions.iter().any(|condition| {
            condition.type_ == CONDITION_ACCEPTED
                && condition.status == if desired.accepted { "True" } else { "False" }
                && condition.message == desired.message
                && condition.observed_generation == Some(desired.generation)
        })
}

/// The `Accepted` condition, keeping the transition time when the status stays the same.
fn accepted_condition(previous: &[Condition], desired: &DesiredStatus) -> Condition {
    let status = if desired.accepted { "True" } else { "False" };
    let last_transition_time = previous
        .iter()
        .find(|condition| condition.type_ == CONDITION_ACCEPTED && condition.status == status)
        .map_or_else(
            || Time(Timestamp::now()),
            |condition| condition.last_transition_time.clone(),
        );
    Condition {
        type_: CONDITION_ACCEPTED.into(),
        status: status.into(),
        reason: if desired.accepted {
            REASON_ACCEPTED
        } else {
            REASON_INVALID
        }
        .into(),
        message: desired.message.clone(),
        observed_generation: Some(desired.generation),
        last_transition_time,
    }
}

/// Starts the Lease holder and status writer.
pub(super) fn spawn(
    client: kube::Client,
    shared: Arc<Shared>,
    options: StatusOptions,
    desired: watch::Receiver<Arc<Desired>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { Writer::new(client, shared, options).run(desired).await })
}

struct Writer {
    client: kube::Client,
    shared: Arc<Shared>,
    elector: Elector,
    /// What this term of leadership wrote (cleared when leadership changes).
    written: HashMap<(Resource, String), DesiredStatus>,
    leading: bool,
}

impl Writer {
    fn new(client: kube::Client, shared: Arc<Shared>, options: StatusOptions) -> Self {
        Self {
            elector: Elector {
                api: Api::namespaced(client.clone(), &options.lease_namespace),
                options,
                observed: None,
            },
            client,
            shared,
            written: HashMap::new(),
            leading: false,
        }
    }

    async fn run(mut self, mut desired: watch::Receiver<Arc<Desired>>) {
        let renew_every = self.elector.options.lease_duration / 3;
        let mut renew = tokio::time::interval(renew_every.max(Duration::from_millis(200)));
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = renew.tick() => self.elect().await,
                changed = desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            if self.leading {
                let wanted = Arc::clone(&desired.borrow_and_update());
                self.write(&wanted).await;
            }
        }
    }

    async fn elect(&mut self) {
        let leading = match tokio::time::timeout(CALL_TIMEOUT, self.elector.try_acquire_or_renew())
            .await
        {
            Ok(Ok(leading)) => leading,
            Ok(Err(error)) => {
                if self.leading {
                    tracing::warn!(%error, lease = %self.elector.options.lease_name, "cannot renew the status lease; not writing status until it is renewed");
                } else {
                    tracing::debug!(%error, "status lease not acquired");
                }
                false
            }
            Err(_) => {
                if self.leading {
                    tracing::warn!(lease = %self.elector.options.lease_name, "renewing the status lease timed out; not writing status until it is renewed");
                }
                false
            }
        };
        if leading != self.leading {
            self.written.clear();
            if leading {
                tracing::info!(
                    lease = %format!("{}/{}", self.elector.options.lease_namespace, self.elector.options.lease_name),
                    identity = %self.elector.options.identity,
                    "holding the status lease: this agent writes Zone and ZonePolicy status"
                );
            } else {
                tracing::info!("status lease lost: another agent writes status");
            }
        }
        self.leading = leading;
    }

    async fn write(&mut self, desired: &Desired) {
        self.written.retain(|key, _| desired.contains_key(key));
        for (key, status) in desired {
            if self.written.get(key) == Some(status) {
                continue;
            }
            let (resource, name) = key;
            // What the API server shows now (the watchers keep it).
            let observed: Option<Observed> = {
                let cache = self.shared.cache.lock().expect("cache lock");
                match resource {
                    Resource::Zone => cache.zones.items.get(name).map(|entry| {
                        let status = entry.status.clone().unwrap_or_default();
                        Observed {
                            conditions: status.conditions,
                            observed_generation: status.observed_generation,
                            members: status.members,
                            warnings: status.warnings,
                        }
                    }),
                    Resource::ZonePolicy => cache.policies.items.get(name).map(|entry| {
                        let status = entry.status.clone().unwrap_or_default();
                        Observed {
                            conditions: status.conditions,
                            observed_generation: status.observed_generation,
                            members: None,
                            warnings: status.warnings,
                        }
                    }),
                }
            };
            let Some(observed) = observed else {
                // Deleted meanwhile.
                continue;
            };
            if already_written(&observed, status) {
                self.written.insert(key.clone(), status.clone());
                continue;
            }
            match tokio::time::timeout(
                CALL_TIMEOUT,
                self.apply(*resource, name, &observed.conditions, status),
            )
            .await
            {
                Ok(Ok(())) => {
                    tracing::debug!(kind = resource.kind(), %name, accepted = status.accepted, "status written");
                    self.written.insert(key.clone(), status.clone());
                }
                Ok(Err(kube::Error::Api(response))) if response.code == 404 => {}
                Ok(Err(error)) => {
                    tracing::warn!(kind = resource.kind(), %name, %error, "writing status failed; retried at the next lease renewal");
                }
                Err(_) => {
                    tracing::warn!(kind = resource.kind(), %name, "writing status timed out; retried at the next lease renewal");
                }
            }
        }
    }

    async fn apply(
        &self,
        resource: Resource,
        name: &str,
        conditions: &[Condition],
        status: &DesiredStatus,
    ) -> Result<(), kube::Error> {
        let condition = accepted_condition(conditions, status);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match resource {
            Resource::Zone => {
                let body = serde_json::json!({
                    "apiVersion": API_VERSION,
                    "kind": "Zone",
                    "status": ZoneStatus {
                        conditions: vec![condition],
                        observed_generation: Some(status.generation),
                        members: status.members,
                        warnings: status.warnings.clone(),
                    },
                });
                // The answer is the whole object: read leniently, as the watchers do, so
                // that an object this agent cannot read gets its status all the same.
                Api::<Lenient<Zone>>::all(self.client.clone())
                    .patch_status(name, &params, &Patch::Apply(&body))
                    .await?;
            }
            Resource::ZonePolicy => {
                let body = serde_json::json!({
                    "apiVersion": API_VERSION,
                    "kind": "ZonePolicy",
                    "status": ZonePolicyStatus {
                        conditions: vec![condition],
                        observed_generation: Some(status.generation),
                        warnings: status.warnings.clone(),
                    },
                });
                Api::<Lenient<ZonePolicy>>::all(self.client.clone())
                    .patch_status(name, &params, &Patch::Apply(&body))
                    .await?;
            }
        }
        Ok(())
    }
}

/// Lease-based election in the manner of client-go: a Lease whose holder has not renewed
/// it for a lease duration (measured on this agent's clock, from when it last saw the
/// Lease change) is free.
struct Elector {
    api: Api<Lease>,
    options: StatusOptions,
    /// (holderIdentity, renewTime) last seen, and when this agent first saw them.
    observed: Option<(Option<String>, Option<String>, Instant)>,
}

impl Elector {
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let seconds =
            i32::try_from(self.options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(&self.options.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.lease_name.clone()),
                    namespace: Some(self.options.lease_namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.options.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(response)) if response.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec
            .holder_identity
            .clone()
            .filter(|holder| !holder.is_empty());
        let renewed = spec.renew_time.as_ref().map(|time| time.0.to_string());
        let unchanged = matches!(&self.observed, Some((seen_holder, seen_renewed, _)) if *seen_holder == holder && *seen_renewed == renewed);
        if !unchanged {
            self.observed = Some((holder.clone(), renewed, Instant::now()));
        }
        let held_for = spec
            .lease_duration_seconds
            .map_or(self.options.lease_duration, |seconds| {
                Duration::from_secs(seconds.max(1) as u64)
            });
        let seen_at = self
            .observed
            .as_ref()
            .map_or_else(Instant::now, |(_, _, at)| *at);
        let mine = holder.as_deref() == Some(self.options.identity.as_str());
        let free = holder.is_none() || seen_at.elapsed() > held_for;
        if !mine && !free {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.options.identity.clone());
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        // The resourceVersion from the read makes this a compare-and-swap: of two agents
        // taking a free Lease at once, one gets 409 Conflict.
        match self
            .api
            .replace(&self.options.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(response)) if response.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests;
