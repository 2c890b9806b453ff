//! `zonewall-cni`, the chained CNI plugin: on ADD it attaches the agent's pinned programs
//! to the pod's host-side interface before the runtime starts the pod's containers, and
//! fails the ADD (so the pod does not start) when it cannot. The agent adopts the links
//! (see `datapath::handoff`). Also the installer that puts the plugin into a node's CNI
//! folders (`install`).

pub mod install;
mod netns;
pub mod spec;

use spec::{CniError, Command, Invocation, NetConf, code};

use crate::datapath::handoff::{self, Handoff, HandoffError};

/// What one invocation printed on stdout, if anything.
pub type Output = Option<String>;

/// Runs one invocation: the command from `invocation`, the configuration from `stdin`.
/// The error is what the binary prints as the spec's error object.
pub fn run(invocation: &Invocation, stdin: &[u8]) -> Result<Output, CniError> {
    let command = invocation.command()?;
    if command == Command::Version {
        // The configuration is optional here; its version names the answer's.
        let version = NetConf::parse(stdin)
            .map(|conf| conf.cni_version)
            .unwrap_or_else(|_| spec::DEFAULT_VERSION.to_owned());
        return Ok(Some(spec::version_info(&version)));
    }
    let conf = NetConf::parse(stdin)?;
    let mode = conf.attach_mode()?;
    match command {
        Command::Add => {
            // Checked first: without a previous result there is nothing to pass on.
            let result = conf.result()?;
            let (interface, _) = host_interface(invocation, &conf)?;
            match handoff::attach_pinned(&conf.bpffs, &interface, mode) {
                Ok(Handoff::Attached(hook)) => {
                    eprintln!("zonewall-cni: {interface}: attached ({})", hook.as_str())
                }
                Ok(Handoff::AlreadyAttached) => {
                    eprintln!("zonewall-cni: {interface}: already attached by the agent")
                }
                Err(error) => return Err(handoff_error(error, &interface)),
            }
            Ok(Some(result))
        }
        Command::Del => {
            // Enforcement stays while the interface exists (the main plugin, after this
            // one, deletes it); pins of interfaces already gone are removed.
            handoff::release_gone(&conf.bpffs);
            Ok(None)
        }
        Command::Check => {
            if !conf.has_check() {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("CHECK does not exist in cniVersion {}", conf.cni_version),
                    "CHECK needs cniVersion 0.4.0 or later",
                ));
            }
            let (interface, _) = host_interface(invocation, &conf)?;
            handoff::check_attached(&conf.bpffs, &interface).map_err(|error| {
                CniError::new(
                    code::NOT_ENFORCED,
                    format!("{interface} is not enforced by zonewall"),
                    error.to_string(),
                )
            })?;
            Ok(None)
        }
        Command::Status => {
            handoff::ready(&conf.bpffs).map_err(|error| {
                CniError::new(
                    code::NOT_AVAILABLE,
                    "the zonewall agent is not ready on this node",
                    error.to_string(),
                )
            })?;
            Ok(None)
        }
        Command::Gc => {
            handoff::release_gone(&conf.bpffs);
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}

fn handoff_error(error: HandoffError, interface: &str) -> CniError {
    match error {
        HandoffError::NotReady(reason) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("zonewall cannot enforce {interface} yet, so the pod must not start"),
            reason,
        ),
        HandoffError::Attach { reason, .. } => CniError::new(
            code::ATTACH_FAILED,
            format!("zonewall could not attach to {interface}, so the pod must not start"),
            reason,
        ),
    }
}

/// The pod's host-side interface: the peer of `CNI_IFNAME` in `CNI_NETNS`, which the
/// previous result should list as a host interface too (a mismatch is reported).
fn host_interface(invocation: &Invocation, conf: &NetConf) -> Result<(String, u32), CniError> {
    invocation.required(invocation.container_id.as_deref(), "CNI_CONTAINERID")?;
    let netns = invocation.required(invocation.netns.as_deref(), "CNI_NETNS")?;
    let ifname = invocation.required(invocation.ifname.as_deref(), "CNI_IFNAME")?;
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the pod's network namespace does not exist",
            netns.display().to_string(),
        ));
    }
    let found = netns::host_side(netns, ifname).map_err(|reason| {
        CniError::new(
            code::NO_HOST_INTERFACE,
            format!("cannot find the host-side interface of {ifname}"),
            reason,
        )
    })?;
    let listed = conf.host_interfaces();
    if !listed.is_empty() && !listed.contains(&found.0) {
        eprintln!(
            "zonewall-cni: {} is the peer of {ifname}, but the previous result lists {listed:?}",
            found.0
        );
    }
    Ok(found)
}
