//! The agent's part in a new pod's first moments: a pod interface is attached when the
//! kernel announces it (rtnetlink `RTM_NEWLINK`), the interface scan every `--poll-ms`
//! staying as the fallback, and the node's uplinks carry the program that drops what no
//! pod-side program judged.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use globset::GlobSet;

use super::interfaces::interface_exists;
use super::{Agent, AgentError};
use crate::config::FirstPacketArgs;
use crate::datapath::netlink_watch::{LinkEvent, LinkWatch};

/// After link events, the full scan (bindings, pruning, retries) follows this much later,
/// so that the few messages of one new interface cost one scan.
const RESCAN_AFTER: Duration = Duration::from_millis(20);

/// The link event socket and what it schedules.
pub(super) struct FirstPacket {
    watch: Option<LinkWatch>,
    rescan_at: Option<Instant>,
    uplinks: GlobSet,
    /// Uplinks whose failure was logged as an error already (later ones are debug).
    uplink_failures: BTreeSet<(String, u32)>,
    /// Interfaces both globs match, reported once.
    ambiguous: BTreeSet<String>,
}

impl FirstPacket {
    /// Subscribes to link events (unless `--link-events false`). Called before the first
    /// interface scan, so an interface created after that scan is announced.
    pub(super) fn start(args: &FirstPacketArgs) -> Result<Self, AgentError> {
        let uplinks = args.uplink_globs().map_err(AgentError::Config)?;
        let watch = if args.link_events {
            match LinkWatch::open() {
                Ok(watch) => Some(watch),
                Err(error) => {
                    // Polling still finds every interface, only later.
                    tracing::error!(%error, "no link events: new pod interfaces are found by the scan every --poll-ms only");
                    None
                }
            }
        } else {
            None
        };
        Ok(Self {
            watch,
            rescan_at: None,
            uplinks,
            uplink_failures: BTreeSet::new(),
            ambiguous: BTreeSet::new(),
        })
    }

    /// The next batch of link events; never resolves without a socket. A broken socket
    /// is dropped (logged) and reported as lost events, so a scan follows.
    pub(super) async fn next(&mut self) -> Vec<LinkEvent> {
        let Some(watch) = self.watch.as_mut() else {
            return std::future::pending().await;
        };
        match watch.next_batch().await {
            Ok(events) => events,
            Err(error) => {
                tracing::error!(%error, "link events stopped: new pod interfaces are found by the scan every --poll-ms from now on");
                self.watch = None;
                vec![LinkEvent::Lost]
            }
        }
    }

    /// When the scan that follows link events is due.
    pub(super) fn rescan_at(&self) -> Option<Instant> {
        self.rescan_at
    }

    /// The scan was done (by the timer or the poll).
    pub(super) fn rescanned(&mut self) {
        self.rescan_at = None;
    }

    /// Whether `name` is an uplink of this node.
    pub(super) fn is_uplink(&self, name: &str) -> bool {
        self.uplinks.is_match(name)
    }
}

impl Agent {
    /// Attaches the programs to each new pod interface the events name, at once, and
    /// schedules the full scan (address bindings, pruning, failures and their retries).
    /// Returns whether anything was attached.
    pub(super) fn on_link_events(
        &mut self,
        first: &mut FirstPacket,
        events: Vec<LinkEvent>,
    ) -> bool {
        let mut attached = false;
        let mut uplinks_changed = false;
        for event in events {
            match event {
                LinkEvent::New { index, name } => {
                    tracing::trace!(interface = %name, ifindex = index, "RTM_NEWLINK");
                    if first.is_uplink(&name) {
                        uplinks_changed = true;
                        continue;
                    }
                    if !self.globs.is_match(&name) {
                        continue;
                    }
                    // Named even if the attach fails: records of the uplink program
                    // about this interface then say which one it was.
                    self.enricher.name_interface(index, &name);
                    if self.datapath.is_attached(&name, index) {
                        continue;
                    }
                    match self.datapath.attach(&name, index) {
                        Ok(hook) => {
                            tracing::debug!(interface = %name, ifindex = index, hook = hook.as_str(), "attached on its link event");
                            attached = true;
                        }
                        // The scan below retries it, counts the failure and backs off.
                        Err(error) if interface_exists(&name, index) => {
                            tracing::warn!(interface = %name, ifindex = index, %error, "attach on the link event failed; the scan retries");
                        }
                        Err(_) => {}
                    }
                }
                LinkEvent::Gone { name, .. } => uplinks_changed |= first.is_uplink(&name),
                LinkEvent::Lost => {
                    uplinks_changed = true;
                    tracing::warn!(
                        "link events were lost (the socket's queue overflowed); scanning every interface"
                    );
                }
            }
        }
        if uplinks_changed {
            self.sync_uplinks(first);
        }
        first.rescan_at.get_or_insert(Instant::now() + RESCAN_AFTER);
        attached
    }

    /// Puts this agent's uplink program on every interface `--uplinks` names now, and
    /// takes it off those that are gone (or no longer named). An interface the pod
    /// globs match too is a pod's, never an uplink.
    pub(super) fn sync_uplinks(&mut self, first: &mut FirstPacket) {
        let mut wanted = Vec::new();
        for (name, index) in crate::datapath::interfaces() {
            if !first.is_uplink(&name) {
                continue;
            }
            if self.globs.is_match(&name) {
                if first.ambiguous.insert(name.clone()) {
                    tracing::error!(interface = %name, "--uplinks and --interfaces both match this interface: it is treated as a pod interface, not an uplink");
                }
                continue;
            }
            wanted.push((name, index));
        }
        for (name, change) in self.datapath.sync_uplinks(&wanted) {
            let index = wanted
                .iter()
                .find(|(wanted_name, _)| *wanted_name == name)
                .map(|(_, index)| *index)
                .unwrap_or_default();
            match change {
                Ok(_) => {
                    first.uplink_failures.remove(&(name, index));
                }
                Err(error) => {
                    self.metrics
                        .attach_failures
                        .get_or_create(&crate::metrics::InterfaceLabels {
                            interface: name.clone(),
                        })
                        .inc();
                    if first.uplink_failures.insert((name.clone(), index)) {
                        tracing::error!(interface = %name, %error, "uplink program not attached: this uplink does not stop unjudged pod traffic; retried every scan");
                    } else {
                        tracing::debug!(interface = %name, %error, "uplink program still not attached");
                    }
                }
            }
        }
    }
}
