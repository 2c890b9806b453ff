//! The bpffs folder where zonewall pins its maps and links. The agent mounts a bpffs there
//! when none is mounted (as Cilium does), so a new machine needs no preparation.

use std::path::{Path, PathBuf};

use super::error::DatapathError;

fn is_bpffs(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(stat) => stat.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC,
        Err(_) => false,
    }
}

/// Makes sure `root` lies on a bpffs, mounting one at `root` if needed, and returns the
/// versioned folder of this map layout (`<root>/v<SCHEMA_VERSION>`).
pub fn prepare(root: &Path) -> Result<PathBuf, DatapathError> {
    std::fs::create_dir_all(root).map_err(|source| DatapathError::Bpffs {
        path: root.to_owned(),
        reason: format!("cannot create the folder: {source}"),
    })?;
    if !is_bpffs(root) {
        nix::mount::mount(
            Some("bpffs"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| DatapathError::Bpffs {
            path: root.to_owned(),
            reason: format!(
                "not on a bpffs and mounting one failed ({errno}); mount one (mount -t bpf bpffs {}) or pass --bpffs",
                root.display()
            ),
        })?;
        tracing::info!(path = %root.display(), "mounted bpffs");
        if in_private_mount_namespace() {
            tracing::warn!(
                path = %root.display(),
                "this bpffs was mounted in a private mount namespace (e.g. under `ip netns exec`): \
                 its pins vanish when the agent exits and enforcement goes with them; mount a bpffs \
                 there from the host's mount namespace first, or pass --bpffs to one"
            );
        }
    }
    let versioned = versioned(root);
    for dir in [versioned.clone(), versioned.join("links")] {
        std::fs::create_dir_all(&dir).map_err(|source| DatapathError::Bpffs {
            path: dir.clone(),
            reason: format!("cannot create the folder: {source}"),
        })?;
    }
    Ok(versioned)
}

/// Whether this process runs in another mount namespace than PID 1 (as under
/// `ip netns exec`, which unshares it to remount /sys).
fn in_private_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(own), Ok(init)) => own != init,
        _ => false,
    }
}

/// `<root>/v<SCHEMA_VERSION>`.
pub fn versioned(root: &Path) -> PathBuf {
    root.join(format!("v{}", firewall_common::SCHEMA_VERSION))
}
