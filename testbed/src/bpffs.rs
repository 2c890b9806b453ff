//! bpffs mounts for an agent's or a test's pins, made from the root mount namespace.
//!
//! `ip netns exec` gives the program it runs a private mount namespace in which `/sys` is
//! mounted anew, so a bpffs mounted (or pins made) under `/sys` in there vanish with it.
//! The test bed mounts a bpffs elsewhere (under `/run`, or in a test's own folder) before
//! it starts the agent, where pins outlive the agent and `firewall-agent detach` finds
//! them afterwards. [`Bpffs`] unmounts its mount when dropped, which frees whatever is
//! still pinned there.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use nix::mount::{MntFlags, MsFlags};

/// Mounts a bpffs on `path`, creating the folder first.
pub fn mount(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).with_context(|| format!("create {}", path.display()))?;
    nix::mount::mount(
        Some("bpffs"),
        path,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| format!("mount a bpffs on {}", path.display()))
}

/// Unmounts whatever is mounted on `path` (lazily: a process still holding a pinned
/// object keeps it until it lets go), ignoring a path that is not mounted.
pub fn unmount(path: &Path) {
    let _ = nix::mount::umount2(path, MntFlags::MNT_DETACH);
}

/// A mounted bpffs, unmounted when dropped (and its folder removed, when the guard made
/// it under `/run`).
#[derive(Debug)]
pub struct Bpffs {
    path: PathBuf,
    remove_folder: bool,
}

impl Bpffs {
    /// A bpffs on a fresh folder `/run/<prefix><pid>-<random>`, after unmounting those of
    /// earlier runs with the same prefix whose process is gone (killed before cleaning
    /// up, see [`cleanup_stale`]).
    pub fn mount_in_run(prefix: &str) -> Result<Self> {
        cleanup_stale(prefix, |_| {});
        let path = Path::new("/run").join(format!(
            "{prefix}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        mount(&path)?;
        Ok(Self {
            path,
            remove_folder: true,
        })
    }

    /// A bpffs on `path` (created if needed), e.g. inside a test's temporary folder,
    /// which the folder's owner removes.
    pub fn mount_at(path: &Path) -> Result<Self> {
        mount(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            remove_folder: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        unmount(&self.path);
        if self.remove_folder {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

/// Unmounts and removes the folders `/run/<prefix><pid>-…` whose process no longer
/// exists, calling `before_unmount` on each first (to detach what was attached from its
/// pins). Folders of live processes are never touched. Returns how many it removed.
pub fn cleanup_stale(prefix: &str, mut before_unmount: impl FnMut(&Path)) -> usize {
    let stale = crate::left_by_dead_processes(Path::new("/run"), prefix);
    for (_, path) in &stale {
        before_unmount(path);
        unmount(path);
        let _ = std::fs::remove_dir_all(path);
    }
    stale.len()
}
