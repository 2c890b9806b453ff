//! What the agent keeps on the node between its runs (`--state-dir`): the last accepted
//! version of every Zone and ZonePolicy (Kubernetes mode) and the last good policy file
//! (standalone mode).
//!
//! The pinned maps keep enforcing across a restart, but they hold compiled rules, not the
//! input: a restarted agent that finds an object (or the file) invalid needs the last
//! good input itself to enforce and report what it enforced before, and after a reboot
//! (an empty bpffs) nothing else remembers it. Without this, a restarted node drops a
//! broken Deny that its neighbours still enforce.
//!
//! Each state file is JSON (`{"format": N, "state": ...}`), written atomically: a
//! temporary file in the same folder, fsync, rename over the old one, fsync of the folder.
//! A file that cannot be read or parsed is logged, counted ([`StateDir::errors`], the
//! `zonewall_state_file_errors` metric), moved aside as `NAME.corrupt` for a person to
//! look at, and otherwise ignored: the agent starts as if it had no state.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The layout of every state file this agent writes and reads.
pub const FORMAT: u32 = 1;

/// Larger files are not read: no state the agent writes comes near it, and reading a
/// runaway file whole could exhaust the container's memory.
const MAX_BYTES: u64 = 512 << 20;

/// Problems with the state folder or one of its files. None of them stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "cannot create the state folder {path}: {source}; last good versions will not survive \
         a restart (fix the folder or its volume)"
    )]
    Folder {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the state file {path}: {source}; it is ignored")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the state file {path} is unusable ({reason}); it is ignored{kept}")]
    Corrupt {
        path: PathBuf,
        reason: String,
        /// Where the file was moved for inspection, as text for the message.
        kept: String,
    },
    #[error("cannot write the state file {path}: {source}; the previous copy stays")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The folder of the state files, or none (`--state-dir ''`).
#[derive(Clone, Debug)]
pub struct StateDir {
    folder: Option<PathBuf>,
    errors: Arc<AtomicU64>,
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    format: u32,
    state: &'a T,
}

/// Only the format, read first: a file of another format must not be parsed as this one.
#[derive(serde::Deserialize)]
struct Format {
    format: u32,
}

#[derive(serde::Deserialize)]
struct Owned<T> {
    state: T,
}

impl StateDir {
    /// The state folder `folder`, created (mode 0700) when missing; an empty path keeps no
    /// state. A folder that cannot be created is logged and counted; every later save
    /// tries again (the volume may appear).
    pub fn open(folder: &Path) -> Self {
        if folder.as_os_str().is_empty() {
            tracing::info!(
                "no state folder (--state-dir is empty): last good versions of invalid objects do not survive a restart"
            );
            return Self::disabled();
        }
        let state = Self {
            folder: Some(folder.to_owned()),
            errors: Arc::default(),
        };
        if let Err(source) = create_folder(folder) {
            state.failed(StateError::Folder {
                path: folder.to_owned(),
                source,
            });
        }
        state
    }

    /// Keeps nothing.
    pub fn disabled() -> Self {
        Self {
            folder: None,
            errors: Arc::default(),
        }
    }

    pub fn folder(&self) -> Option<&Path> {
        self.folder.as_deref()
    }

    /// State files that could not be read, parsed or written since the start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn failed(&self, error: StateError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        tracing::error!(%error, "state file problem");
    }

    /// The content of state file `name`; None when there is none (or no folder), or when
    /// it is unusable (logged, counted, moved aside).
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.folder.as_ref()?.join(name);
        let text = match read_limited(&path) {
            Ok(Some(text)) => text,
            Ok(None) => return None,
            Err(ReadProblem::Io(source)) => {
                self.failed(StateError::Read { path, source });
                return None;
            }
            Err(ReadProblem::Unusable(reason)) => {
                self.set_aside(&path, reason);
                return None;
            }
        };
        let parsed = serde_json::from_str::<Format>(&text)
            .map_err(|error| error.to_string())
            .and_then(|Format { format }| {
                if format == FORMAT {
                    Ok(())
                } else {
                    Err(format!("format {format}, this agent reads format {FORMAT}"))
                }
            })
            .and_then(|()| {
                serde_json::from_str::<Owned<T>>(&text).map_err(|error| error.to_string())
            });
        match parsed {
            Ok(owned) => Some(owned.state),
            Err(reason) => {
                self.set_aside(&path, reason);
                None
            }
        }
    }

    /// Calls an unusable file what it is and moves it out of the way, so the next save
    /// starts clean and a person can still look at it.
    pub fn reject(&self, name: &str, reason: String) {
        if let Some(folder) = &self.folder {
            self.set_aside(&folder.join(name), reason);
        }
    }

    fn set_aside(&self, path: &Path, reason: String) {
        let mut aside = path.as_os_str().to_owned();
        aside.push(".corrupt");
        let aside = PathBuf::from(aside);
        let kept = match std::fs::rename(path, &aside) {
            Ok(()) => format!(" and kept as {}", aside.display()),
            Err(error) => format!(" (moving it aside failed: {error})"),
        };
        self.failed(StateError::Corrupt {
            path: path.to_owned(),
            reason,
            kept,
        });
    }

    /// Replaces state file `name` with `state`, atomically. False (logged, counted) when
    /// it could not be written; the previous file then stays as it was.
    pub fn save<T: Serialize>(&self, name: &str, state: &T) -> bool {
        let Some(folder) = &self.folder else {
            return false;
        };
        let path = folder.join(name);
        match write_atomically(folder, &path, state) {
            Ok(()) => {
                tracing::debug!(path = %path.display(), "state saved");
                true
            }
            Err(source) => {
                self.failed(StateError::Write { path, source });
                false
            }
        }
    }
}

fn create_folder(folder: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(folder)
}

enum ReadProblem {
    Io(std::io::Error),
    Unusable(String),
}

/// The file's text; None when it does not exist.
fn read_limited(path: &Path) -> Result<Option<String>, ReadProblem> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(ReadProblem::Io(error)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadProblem::Io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ReadProblem::Unusable(format!(
            "larger than {} MiB",
            MAX_BYTES >> 20
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| ReadProblem::Unusable("not UTF-8 text".into()))
}

fn write_atomically<T: Serialize>(folder: &Path, path: &Path, state: &T) -> std::io::Result<()> {
    create_folder(folder)?;
    let text = serde_json::to_vec(&Envelope {
        format: FORMAT,
        state,
    })
    .map_err(std::io::Error::other)?;
    // The process id keeps two agents that wrongly share a folder from writing into one
    // temporary file; the rename still makes each save whole.
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{}.tmp", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&text)?;
        // On disk before the rename makes it the state: a crash leaves the old file or
        // the new one, never a torn one.
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written?;
    // The rename itself is durable only once the folder is synced.
    std::fs::File::open(folder)?.sync_all()
}

#[cfg(test)]
mod tests;
