//! The uplink program on the node's uplinks (`--uplinks`): one TCX link on egress per
//! uplink, pinned under `<pin_dir>/uplinks` with the pod links' naming, and the `UPLINKS`
//! map of their ifindexes (traffic that entered on one uplink and leaves on another is
//! transit, not a pod's). Like the pod links, a new agent's link goes in front of the
//! pinned one before that one is removed, so an uplink is never without the program.

use std::path::{Path, PathBuf};

use aya::{
    maps::HashMap,
    programs::{
        LinkOrder,
        links::{FdLink, PinnedLink},
        tc::{TcAttachOptions, TcAttachType},
    },
};
use firewall_common::{MAP_UPLINKS, PROG_UPLINK};

use super::{pin_name, pins_in, unpin};
use crate::datapath::{Datapath, DatapathError};

const DIRECTION: &str = "egress";

/// The uplinks' pin folder.
pub(in crate::datapath) fn uplinks_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("uplinks")
}

/// The id of the program a pinned link runs, if the pin holds a link.
pub(in crate::datapath) fn pinned_program_id(path: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    link.info().ok().map(|info| info.program_id())
}

impl Datapath {
    /// Makes this agent's uplink program run on exactly the uplinks `wanted` (name,
    /// ifindex): attached where it is not yet (in front of an earlier agent's link, which
    /// then goes), detached from uplinks no longer wanted. Returns what changed, by
    /// uplink: `Ok(true)` attached now, `Ok(false)` detached, `Err` left without it.
    pub fn sync_uplinks(
        &mut self,
        wanted: &[(String, u32)],
    ) -> Vec<(String, Result<bool, DatapathError>)> {
        let dir = uplinks_dir(&self.pin_dir);
        let mut changes = Vec::new();
        if let Err(error) = std::fs::create_dir_all(&dir) {
            for (name, _) in wanted {
                changes.push((
                    name.clone(),
                    Err(DatapathError::Attach {
                        interface: name.clone(),
                        reason: format!("uplink pin folder {}: {error}", dir.display()),
                    }),
                ));
            }
            return changes;
        }
        let own = self
            .classifier(PROG_UPLINK)
            .and_then(|program| program.info().ok())
            .map(|info| info.id());
        let pins = pins_in(&dir);
        for (name, index) in wanted {
            let current = pins.iter().any(|(path, pin)| {
                pin.ifname == *name
                    && pin.ifindex == *index
                    && own.is_some()
                    && pinned_program_id(path) == own
            });
            if current {
                continue;
            }
            let change = self.attach_uplink(&dir, name, *index).map(|()| true);
            changes.push((name.clone(), change));
        }
        for (path, pin) in pins_in(&dir) {
            if !wanted
                .iter()
                .any(|(name, index)| *name == pin.ifname && *index == pin.ifindex)
            {
                unpin(&path);
                self.forget_uplink(pin.ifindex);
                changes.push((pin.ifname, Ok(false)));
            }
        }
        changes
    }

    fn attach_uplink(&mut self, dir: &Path, name: &str, index: u32) -> Result<(), DatapathError> {
        let error = |reason: String| DatapathError::Attach {
            interface: name.to_owned(),
            reason,
        };
        // Known as an uplink before the program runs there: transit never hits a gap.
        self.uplinks_map()?
            .insert(index, 1, 0)
            .map_err(|source| DatapathError::Map {
                name: MAP_UPLINKS,
                source,
            })?;
        let earlier = pins_in(dir);
        let program = self
            .classifier(PROG_UPLINK)
            .ok_or_else(|| error(format!("program {PROG_UPLINK} not loaded")))?;
        let link_id = program
            .attach_with_options(
                name,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            )
            .map_err(|attach| error(format!("TCX attach egress (Linux 6.6+ needed): {attach}")))?;
        let link: FdLink = program
            .take_link(link_id)
            .map_err(|take| error(format!("take link: {take}")))?
            .try_into()
            .map_err(|link| error(format!("not a TCX link: {link}")))?;
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default();
        let path = dir.join(pin_name(name, index, DIRECTION, nonce));
        link.pin(&path)
            .map_err(|pin| error(format!("pin {}: {pin}", path.display())))?;
        for (old, pin) in earlier {
            if pin.ifname == name && pin.ifindex == index {
                unpin(&old);
            }
        }
        tracing::info!(interface = name, ifindex = index, "uplink program attached");
        Ok(())
    }

    fn forget_uplink(&mut self, index: u32) {
        if let Ok(mut map) = self.uplinks_map() {
            let _ = map.remove(&index);
        }
    }

    fn uplinks_map(&mut self) -> Result<HashMap<&mut aya::maps::MapData, u32, u32>, DatapathError> {
        let map = self
            .ebpf
            .map_mut(MAP_UPLINKS)
            .ok_or(DatapathError::MissingMap(MAP_UPLINKS))?;
        HashMap::try_from(map).map_err(|source| DatapathError::Map {
            name: MAP_UPLINKS,
            source,
        })
    }
}

/// Removes every uplink pin under `pin_dir` (for `firewall-agent detach`); returns how
/// many.
pub(in crate::datapath) fn remove_all(pin_dir: &Path) -> usize {
    let dir = uplinks_dir(pin_dir);
    let pins = pins_in(&dir);
    for (path, _) in &pins {
        unpin(path);
    }
    let _ = std::fs::remove_dir(&dir);
    pins.len()
}
