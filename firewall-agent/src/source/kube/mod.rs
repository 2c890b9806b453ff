//! The Kubernetes source: Zones, ZonePolicies, Namespaces, Nodes, Services and Pods of the
//! whole cluster, watched through the API server, turned into a validated snapshot
//! whenever they change, and the status of every Zone and ZonePolicy written back.
//!
//! - `watch`: one watcher per kind, lists from the API server's watch cache, objects
//!   trimmed on arrival.
//! - `retry`: the backoff between attempts, and what each failure was.
//! - `lenient`: Zones and ZonePolicies decoded one by one, so that one this agent cannot
//!   read is reported on itself instead of failing its whole list.
//! - `cache`: what the watchers keep and the validated snapshot built from it.
//! - `status`: the Lease that elects one writer, and the conditions it writes.
//! - `shared`: what the watchers, the status writer and the source share.
//!
//! The last accepted version of every Zone and ZonePolicy is kept in the node's state
//! folder ([`KubeSource::remember_in`]), so that a restarted agent enforces what it did
//! before even for objects that are invalid now, as the agents that did not restart do.
//!
//! Nothing is enforced from a partial view: the first snapshot comes after every initial
//! list; until then (and whenever the API server is unreachable) the run loop keeps what
//! is enforced. Bursts of events are folded into one snapshot (a millisecond of
//! quiet, at most [`MAX_DELAY`] after the first).

mod cache;
mod lenient;
mod retry;
mod shared;
mod status;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::Notify;

pub use status::StatusOptions;

use self::cache::{Resource, SavedObject, Verdict};
use self::shared::Shared;
use self::status::{Desired, DesiredStatus, Summary};
use super::policy_source::{Outcome, PolicySource, SourceHealth, SourceUpdate};
use super::state::StateDir;

/// The state file of the accepted versions.
const ACCEPTED_FILE: &str = "kubernetes-accepted.json";

/// Quiet time that ends a burst of events.
const QUIET: Duration = Duration::from_millis(1);
/// Longest a change waits for a burst to end.
const MAX_DELAY: Duration = Duration::from_millis(50);

/// Errors of the Kubernetes source.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot read the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration: not in a cluster (no service account) and no kubeconfig \
         ({0}); pass --kubeconfig, set KUBECONFIG, or run standalone with --config FILE"
    )]
    Infer(#[from] kube::config::InferConfigError),
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// How to reach the API server and who writes status.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Kubeconfig files (KUBECONFIG may list several); none: in-cluster, then the default
    /// kubeconfig.
    pub kubeconfig: Vec<PathBuf>,
    pub status: StatusOptions,
}

/// The Kubernetes [`PolicySource`].
pub struct KubeSource {
    shared: Arc<Shared>,
    changes: Arc<Notify>,
    server: String,
    statuses: tokio::sync::watch::Sender<Arc<Desired>>,
    /// Verdicts of the snapshot the run loop is applying.
    pending: Option<Vec<Verdict>>,
    synced_logged: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    state: StateDir,
    /// What the state file holds (as far as this agent knows): saved again only when the
    /// accepted versions differ from it.
    saved: Option<Vec<SavedObject>>,
}

impl KubeSource {
    /// Connects (lazily: nothing is sent before the watchers start) and starts the
    /// watchers, the debouncer and the status writer on the current runtime.
    pub async fn start(options: KubeOptions) -> Result<Self, KubeError> {
        let config = match options.kubeconfig.as_slice() {
            [] => kube::Config::infer().await?,
            paths => {
                let mut merged: Option<Kubeconfig> = None;
                for path in paths {
                    let read =
                        Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                            path: path.display().to_string(),
                            source,
                        })?;
                    merged = Some(match merged {
                        None => read,
                        Some(merged) => {
                            merged.merge(read).map_err(|source| KubeError::Kubeconfig {
                                path: path.display().to_string(),
                                source,
                            })?
                        }
                    });
                }
                let merged = merged.expect("at least one path");
                kube::Config::from_custom_kubeconfig(merged, &KubeConfigOptions::default())
                    .await
                    .map_err(|source| KubeError::Kubeconfig {
                        path: paths
                            .iter()
                            .map(|path| path.display().to_string())
                            .collect::<Vec<_>>()
                            .join(":"),
                        source,
                    })?
            }
        };
        let server = config.cluster_url.to_string();
        let client = kube::Client::try_from(config)?;
        let shared = Arc::new(Shared::new());
        let changes = Arc::new(Notify::new());
        let (statuses, desired) = tokio::sync::watch::channel(Arc::new(Desired::new()));
        let mut tasks = watch::spawn_all(&client, &shared);
        tasks.push(tokio::spawn(debounce(
            Arc::clone(&shared),
            Arc::clone(&changes),
        )));
        tasks.push(status::spawn(
            client,
            Arc::clone(&shared),
            options.status,
            desired,
        ));
        tracing::info!(%server, "watching the Kubernetes API; nothing changes until every initial list is complete");
        Ok(Self {
            shared,
            changes,
            server,
            statuses,
            pending: None,
            synced_logged: false,
            tasks,
            state: StateDir::disabled(),
            saved: None,
        })
    }

    /// Keeps the accepted versions in `state` from now on, and hands the ones a previous
    /// run saved there to the first snapshot (call it before the first `poll`).
    pub fn remember_in(mut self, state: StateDir) -> Self {
        let saved: Option<Vec<SavedObject>> = state.load(ACCEPTED_FILE);
        if let Some(saved) = saved {
            tracing::info!(
                objects = saved.len(),
                folder = %state.folder().map(|folder| folder.display().to_string()).unwrap_or_default(),
                "accepted versions of Zones and ZonePolicies saved by a previous run loaded"
            );
            self.shared
                .cache
                .lock()
                .expect("cache lock")
                .restore(saved.clone());
            self.saved = Some(saved);
        }
        self.state = state;
        self
    }

    /// Saves the accepted versions when they changed since the last save.
    fn save_accepted(&mut self) {
        if self.state.folder().is_none() {
            return;
        }
        let objects = self
            .shared
            .cache
            .lock()
            .expect("cache lock")
            .saved_objects();
        if self.saved.as_ref() == Some(&objects) {
            return;
        }
        if self.state.save(ACCEPTED_FILE, &objects) {
            tracing::debug!(objects = objects.len(), "accepted versions saved");
            self.saved = Some(objects);
        }
    }

    fn publish(&self, update: impl FnOnce(&mut Desired)) {
        self.statuses
            .send_modify(|desired| update(Arc::make_mut(desired)));
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Turns bursts of watcher wake-ups into one `changes()` notification.
async fn debounce(shared: Arc<Shared>, changes: Arc<Notify>) {
    loop {
        shared.wake.notified().await;
        let first = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(QUIET) => break,
                _ = shared.wake.notified() => {
                    if first.elapsed() >= MAX_DELAY {
                        break;
                    }
                }
            }
        }
        changes.notify_one();
    }
}

impl PolicySource for KubeSource {
    fn describe(&self) -> String {
        format!("Kubernetes API {}", self.server)
    }

    fn poll(&mut self) -> SourceUpdate {
        let problems = self.shared.take_problems();
        let snapshot = {
            let mut cache = self.shared.cache.lock().expect("cache lock");
            if cache.all_synced() && cache.dirty {
                if !self.synced_logged {
                    self.synced_logged = true;
                    let counts: Vec<String> = cache
                        .counts()
                        .iter()
                        .map(|(kind, count)| format!("{count} {}", kind.as_str()))
                        .collect();
                    tracing::info!(objects = %counts.join(", "), "every initial list complete: enforcing the cluster's policy");
                }
                let started = std::time::Instant::now();
                let snapshot = cache.snapshot();
                tracing::debug!(
                    pods = snapshot.set.as_ref().map_or(0, |set| set.pods.len()),
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "snapshot built"
                );
                Some(snapshot)
            } else {
                None
            }
        };
        if let Some(snapshot) = snapshot {
            self.pending = Some(snapshot.verdicts);
            return match snapshot.set {
                Ok(set) => SourceUpdate::Changed(set),
                // The run loop reports it, and tells `outcome` it was rejected.
                Err(error) => SourceUpdate::Invalid(error),
            };
        }
        if !problems.is_empty() {
            return SourceUpdate::Unavailable(problems.join("; "));
        }
        SourceUpdate::Unchanged
    }

    fn changes(&self) -> Option<Arc<Notify>> {
        Some(Arc::clone(&self.changes))
    }

    fn outcome(&mut self, outcome: Outcome<'_>) {
        match outcome {
            Outcome::Applied { compiled, .. } => {
                let Some(verdicts) = self.pending.take() else {
                    return;
                };
                let summary = Summary::of(compiled);
                let desired = status::desired(&verdicts, &summary);
                self.publish(|current| *current = desired);
                // Saved once enforced: a restart then resumes exactly this policy.
                self.save_accepted();
            }
            Outcome::Rejected(error) => {
                // The snapshot had problems no single object could be blamed for (the
                // source leaves out what it can blame): name the objects the error names.
                self.pending = None;
                let mut named: BTreeMap<(Resource, String), Vec<String>> = BTreeMap::new();
                for issue in error.issues() {
                    let Some(resource) = Resource::of_issue(issue) else {
                        continue;
                    };
                    named
                        .entry((resource, issue.name.clone()))
                        .or_default()
                        .push(format!("{}: {}", issue.field, issue.reason));
                }
                self.publish(|current| {
                    for (key, problems) in named {
                        if let Some(status) = current.get_mut(&key) {
                            *status = DesiredStatus {
                                accepted: false,
                                message: format!(
                                    "{}; the previous policy stays enforced",
                                    problems.join("; ")
                                ),
                                ..status.clone()
                            };
                        }
                    }
                });
            }
            Outcome::Failed(_) => self.pending = None,
        }
    }

    fn changed_by(&self) -> Option<String> {
        self.shared
            .cache
            .lock()
            .expect("cache lock")
            .changed_by
            .clone()
    }

    fn synced(&self) -> bool {
        self.shared.cache.lock().expect("cache lock").all_synced()
    }

    fn state_errors(&self) -> u64 {
        self.state.errors()
    }

    fn health(&self) -> SourceHealth {
        self.shared.health()
    }
}
