//! The pod interfaces: which of this node's interfaces match the globs, attaching the
//! programs to new ones (retrying failed attaches with backoff, reported as unprotected
//! until they succeed), letting go of vanished ones, and binding pod addresses to their
//! interface (anti-spoofing).

use std::time::Instant;

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::apply::{Backoff, RETRY_FIRST, RETRY_MAX};
use super::{Agent, AgentError};

/// An interface left unprotected by a failed attach.
pub(super) struct AttachFailure {
    pub(super) ifindex: u32,
    pub(super) backoff: Backoff,
    pub(super) next_attempt: Instant,
    pub(super) error: String,
}

pub(super) fn glob_set(globs: &[String]) -> Result<GlobSet, AgentError> {
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        let glob = glob.trim();
        if glob.is_empty() {
            continue;
        }
        builder.add(
            Glob::new(glob)
                .map_err(|error| AgentError::Config(format!("--interfaces {glob:?}: {error}")))?,
        );
    }
    builder
        .build()
        .map_err(|error| AgentError::Config(format!("--interfaces: {error}")))
}

/// Whether `name` is still an interface of this namespace with index `index`.
pub(super) fn interface_exists(name: &str, index: u32) -> bool {
    nix::net::if_::if_nametoindex(name).is_ok_and(|current| current == index)
}

impl Agent {
    /// The pod interfaces of this node: (name, index) of interfaces matching the globs.
    /// `None` when the listing failed (e.g. out of file descriptors): that must not read as
    /// "every pod interface is gone", or a scan would detach them all.
    pub(super) fn pod_interfaces(&self) -> Option<Vec<(String, u32)>> {
        let listed = match nix::net::if_::if_nameindex() {
            Ok(listed) => listed,
            Err(errno) => {
                tracing::warn!(%errno, "cannot list interfaces; attachments left as they are until the next scan");
                return None;
            }
        };
        let wanted = listed
            .iter()
            .filter_map(|interface| {
                Some((
                    interface.name().to_str().ok()?.to_owned(),
                    interface.index(),
                ))
            })
            .filter(|(name, _)| self.globs.is_match(name))
            .collect();
        Some(wanted)
    }

    /// Finds which pod interface each pod address is on and, when that changed, binds the
    /// addresses anew (in place: bindings are not policy). Before a policy is enforced the
    /// bindings are only remembered; the first sync writes them.
    pub(super) fn refresh_bindings(&mut self, interfaces: &[(String, u32)]) {
        let indexes = interfaces.iter().map(|(_, index)| *index).collect();
        let bindings = match self.discovery.discover(&indexes) {
            Ok(bindings) => bindings,
            Err(error) => {
                tracing::warn!(%error, "cannot find the pod interfaces' addresses; bindings unchanged");
                return;
            }
        };
        if bindings == self.bindings {
            return;
        }
        self.bindings = bindings;
        if self.generation == 0 {
            return;
        }
        match self.datapath.rebind(&self.bindings) {
            Ok(0) => {}
            Ok(changed) => {
                tracing::info!(
                    changed,
                    bound = self.bindings.len(),
                    "pod addresses bound to their interfaces"
                )
            }
            Err(error) => {
                tracing::error!(%error, "binding pod addresses to their interfaces failed; retried next scan")
            }
        }
    }

    /// Attaches to new matching interfaces and lets go of vanished ones.
    pub(super) fn scan_interfaces(&mut self) -> Result<bool, AgentError> {
        let Some(wanted) = self.pod_interfaces() else {
            return Ok(false);
        };
        self.refresh_bindings(&wanted);
        let mut changed = false;
        let now = Instant::now();
        for (name, index) in &wanted {
            if self.datapath.is_attached(name, *index) {
                continue;
            }
            let waiting = self
                .attach_failures
                .get(name)
                .is_some_and(|failure| failure.ifindex == *index && now < failure.next_attempt);
            if waiting {
                continue;
            }
            match self.datapath.attach(name, *index) {
                Ok(_) => {
                    if let Some(failure) = self.attach_failures.remove(name) {
                        tracing::info!(
                            interface = %name,
                            ifindex = index,
                            failed_attempts = failure.backoff.failures(),
                            "attached after earlier failures; the interface is protected now"
                        );
                    }
                    self.enricher.name_interface(*index, name);
                    changed = true;
                }
                // A veth can vanish between listing and attaching: nothing left to protect.
                Err(error) if !interface_exists(name, *index) => {
                    tracing::debug!(interface = %name, %error, "interface vanished while attaching");
                    self.attach_failures.remove(name);
                }
                Err(error) => {
                    let mut failure = match self.attach_failures.remove(name) {
                        Some(failure) if failure.ifindex == *index => failure,
                        _ => AttachFailure {
                            ifindex: *index,
                            backoff: Backoff::new(RETRY_FIRST, RETRY_MAX),
                            next_attempt: now,
                            error: String::new(),
                        },
                    };
                    let retry_in = failure.backoff.failed();
                    failure.next_attempt = now + retry_in;
                    failure.error = error.to_string();
                    self.metrics
                        .attach_failures
                        .get_or_create(&crate::metrics::InterfaceLabels {
                            interface: name.clone(),
                        })
                        .inc();
                    tracing::error!(
                        interface = %name,
                        ifindex = index,
                        attempt = failure.backoff.failures(),
                        retry_in_ms = retry_in.as_millis() as u64,
                        %error,
                        "attach failed: the interface is NOT protected"
                    );
                    self.attach_failures.insert(name.clone(), failure);
                }
            }
        }
        // An interface that is gone (or no longer matched) is no longer unprotected.
        let metrics = &self.metrics;
        self.attach_failures.retain(|name, failure| {
            let kept = wanted
                .iter()
                .any(|(wanted_name, index)| wanted_name == name && *index == failure.ifindex);
            if !kept {
                metrics
                    .attach_failures
                    .remove(&crate::metrics::InterfaceLabels {
                        interface: name.clone(),
                    });
            }
            kept
        });
        let before = self.datapath.attached().count();
        // Listed again under the lock the CNI plugin takes: an interface it attached
        // after the listing above is not taken for a vanished one.
        let _lock = self.datapath.lock_links();
        if let Some(current) = self.pod_interfaces() {
            self.datapath.prune(&current);
        }
        Ok(changed || before != self.datapath.attached().count())
    }
}
