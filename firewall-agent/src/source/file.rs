//! The standalone source: one multi-document YAML file, re-read when its content changes.
//!
//! The file's folder is watched with inotify (through `notify`), so a change is seen
//! within milliseconds: writes in place, editors' write-then-rename, `ln -sf` and
//! Kubernetes ConfigMap updates (a `..data` symlink swapped in the folder) all raise an
//! event there. Events are debounced ([`QUIET`] without events, at most [`MAX_DELAY`]) so
//! a file still being written is not read half way. Polling stays as the fallback (bind
//! mounts, network file systems, inotify limits): each poll compares the file's metadata
//! and re-reads only when it moved, and re-reads regardless every [`FULL_READ_EVERY`]
//! polls. What decides "changed" is a digest of the content, never the text itself: the
//! agent keeps no copy of the file in memory.
//!
//! With a state folder ([`FileSource::remembering`]) the last file that was enforced is
//! saved there. When a restarted agent finds the file invalid or unreadable before it
//! enforced anything, it enforces that saved file first and then reports the problem:
//! the pinned maps alone keep the old rules but not what they mean (zone and pod names
//! of flow records, the policy's objects), and after a reboot there are no pins at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::policy_source::{Outcome, PolicySource, SourceUpdate};
use super::state::StateDir;
use crate::policy::documents::{Digest, digest};
use crate::policy::{DocumentCache, PolicyError, Validated};

/// The state file of the last good policy file.
const LAST_GOOD_FILE: &str = "standalone-last-good.json";

/// The last policy file that was enforced, as the state folder keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct LastGoodFile {
    /// The `--config` path it was read from: another file's last good version is no
    /// stand-in for this one.
    config: String,
    yaml: String,
}

/// Quiet time after the last event before the file is read.
pub const QUIET: Duration = Duration::from_millis(5);
/// Longest a stream of events delays the read.
pub const MAX_DELAY: Duration = Duration::from_millis(100);
/// Polls between reads of a file whose metadata did not change (a safety net for file
/// systems whose time stamps are too coarse to show a rewrite).
pub const FULL_READ_EVERY: u32 = 25;

/// What the last look at the file found.
#[derive(Debug)]
pub enum FileState {
    Unchanged,
    Changed(String),
    /// The file cannot be read (missing, permissions): keep the last good policy.
    Unreadable(String),
}

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Signature {
    fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let metadata = std::fs::metadata(path).ok()?;
        Some(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        })
    }
}

/// Watches the file's folder; dropping it stops the watch and its debouncer.
struct Watch {
    _watcher: notify::RecommendedWatcher,
    /// Set by the debouncer when an event concerned the file: read it at the next poll
    /// whatever its metadata says.
    dirty: Arc<AtomicBool>,
    changes: Arc<tokio::sync::Notify>,
}

pub struct FileSource {
    path: PathBuf,
    last_digest: Option<Digest>,
    /// Metadata of the version behind `last_digest`.
    last_signature: Option<Signature>,
    last_error: Option<String>,
    polls_since_read: u32,
    watch: Option<Watch>,
    /// Decoded documents of the last good file: a change re-decodes only what changed.
    documents: DocumentCache,
    state: StateDir,
    /// The text of the version being applied, with a state folder only, and only until
    /// its outcome (when it is saved as the last good file).
    applying: Option<String>,
    /// Whether a version was enforced since the start.
    applied: bool,
    /// Whether the saved last good file was looked at (once per start at most).
    last_good_tried: bool,
    /// The first version was rejected by the run loop: the next poll offers the saved
    /// last good file.
    offer_last_good: bool,
    /// What the file itself gave while the saved last good file stood in for it; the
    /// next poll reports it.
    deferred: Option<SourceUpdate>,
}

impl FileSource {
    /// A polled-only source (see [`FileSource::watched`]).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            last_digest: None,
            last_signature: None,
            last_error: None,
            polls_since_read: 0,
            watch: None,
            documents: Default::default(),
            state: StateDir::disabled(),
            applying: None,
            applied: false,
            last_good_tried: false,
            offer_last_good: false,
            deferred: None,
        }
    }

    /// Saves each enforced version of the file in `state`, and falls back to the saved
    /// one when the file is invalid or unreadable at start.
    pub fn remembering(mut self, state: StateDir) -> Self {
        self.state = state;
        self
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// A source that also watches the file's folder with inotify. When the watch cannot
    /// be set up (no folder yet, inotify limits) it says why and falls back to polling.
    pub fn watched(path: &Path) -> Self {
        let mut source = Self::new(path);
        match Self::watch(path) {
            Ok(watch) => source.watch = Some(watch),
            Err(error) => tracing::warn!(
                path = %path.display(),
                %error,
                "cannot watch the policy file's folder; changes are seen by polling only"
            ),
        }
        source
    }

    fn watch(path: &Path) -> Result<Watch, notify::Error> {
        use notify::Watcher as _;
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        // Names in a watched folder whose events concern the file: its own name, the
        // name of what it links to, and Kubernetes' `..data` machinery.
        let mut names = vec![path.file_name().map(|name| name.to_owned())];
        let mut folders = vec![folder.clone()];
        if let Ok(target) = std::fs::canonicalize(path) {
            names.push(target.file_name().map(|name| name.to_owned()));
            if let Some(parent) = target.parent()
                && parent != folder
                && std::fs::canonicalize(&folder).ok().as_deref() != Some(parent)
            {
                folders.push(parent.to_owned());
            }
        }
        let names: Vec<std::ffi::OsString> = names.into_iter().flatten().collect();
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Overflow or an error: better read once too often.
                    Err(_) => true,
                    Ok(event) => {
                        use notify::event::{AccessKind, AccessMode, EventKind};
                        // Opening and reading (the agent's own reads among them) change
                        // nothing; a write ends with a modify or close-after-write.
                        let reads_only = matches!(event.kind, EventKind::Access(access)
                            if access != AccessKind::Close(AccessMode::Write));
                        event.need_rescan()
                            || !reads_only
                                && event.paths.iter().any(|path| {
                                    path.file_name().is_some_and(|name| {
                                        names.iter().any(|wanted| wanted == name)
                                            || name.as_encoded_bytes().starts_with(b"..")
                                    })
                                })
                    }
                };
                if relevant {
                    let _ = sender.send(());
                }
            })?;
        for folder in &folders {
            watcher.watch(folder, notify::RecursiveMode::NonRecursive)?;
        }
        let dirty = Arc::new(AtomicBool::new(false));
        let changes = Arc::new(tokio::sync::Notify::new());
        std::thread::Builder::new()
            .name("policy-file-watch".into())
            .spawn({
                let dirty = dirty.clone();
                let changes = changes.clone();
                move || debounce(&receiver, &dirty, &changes)
            })
            .map_err(|error| notify::Error::generic(&error.to_string()))?;
        Ok(Watch {
            _watcher: watcher,
            dirty,
            changes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Woken (after debouncing) when an event concerned the file; None when unwatched.
    pub fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        self.watch.as_ref().map(|watch| watch.changes.clone())
    }

    /// Whether the folder is watched.
    pub fn is_watched(&self) -> bool {
        self.watch.is_some()
    }

    /// Parses a version of the file, reusing the documents earlier versions shared.
    pub fn parse(&mut self, content: &str) -> Result<Validated, PolicyError> {
        self.documents.parse(content)
    }

    /// Looks at the file and says whether its content changed since the last call.
    pub fn poll(&mut self) -> FileState {
        let signature = Signature::of(&self.path);
        let event = self
            .watch
            .as_ref()
            .is_some_and(|watch| watch.dirty.swap(false, Ordering::AcqRel));
        self.polls_since_read += 1;
        // Unwatched, every poll reads: only a watched file's events make skipping safe
        // enough (time stamps alone can miss a same-size rewrite within one tick).
        let skip = self.watch.is_some()
            && !event
            && signature.is_some()
            && signature == self.last_signature
            && self.last_error.is_none()
            && self.polls_since_read < FULL_READ_EVERY;
        if skip {
            return FileState::Unchanged;
        }
        self.polls_since_read = 0;
        match std::fs::read_to_string(&self.path) {
            Ok(content) => {
                self.last_error = None;
                self.last_signature = signature;
                let digest = digest(content.as_bytes());
                if self.last_digest == Some(digest) {
                    FileState::Unchanged
                } else {
                    self.last_digest = Some(digest);
                    FileState::Changed(content)
                }
            }
            Err(error) => {
                let message = format!("cannot read {}: {error}", self.path.display());
                if self.last_error.as_deref() == Some(message.as_str()) {
                    FileState::Unchanged
                } else {
                    self.last_error = Some(message.clone());
                    FileState::Unreadable(message)
                }
            }
        }
    }
}

impl FileSource {
    /// What the run loop gets from a poll: the file parsed, or the saved last good file
    /// standing in for an invalid or unreadable one before anything was enforced (the
    /// file's own problem follows at the next poll).
    pub fn next_update(&mut self) -> SourceUpdate {
        if std::mem::take(&mut self.offer_last_good)
            && let Some(set) = self.last_good("the policy file was rejected")
        {
            return SourceUpdate::Changed(set);
        }
        if let Some(update) = self.deferred.take() {
            return update;
        }
        let update = match self.poll() {
            FileState::Unchanged => SourceUpdate::Unchanged,
            FileState::Unreadable(message) => SourceUpdate::Unavailable(message),
            FileState::Changed(content) => match self.parse(&content) {
                Ok(set) => {
                    if self.state.folder().is_some() {
                        self.applying = Some(content);
                    }
                    SourceUpdate::Changed(set)
                }
                Err(error) => SourceUpdate::Invalid(error),
            },
        };
        let problem = match &update {
            SourceUpdate::Invalid(_) => "the policy file is invalid",
            SourceUpdate::Unavailable(_) => "the policy file cannot be read",
            _ => return update,
        };
        if self.applied {
            return update;
        }
        match self.last_good(problem) {
            Some(set) => {
                self.deferred = Some(update);
                SourceUpdate::Changed(set)
            }
            None => update,
        }
    }

    /// Takes note of how the run loop dealt with the last update.
    pub fn record_outcome(&mut self, outcome: &Outcome<'_>) {
        let content = self.applying.take();
        match outcome {
            Outcome::Applied { .. } => {
                self.applied = true;
                if let Some(yaml) = content {
                    let saved = LastGoodFile {
                        config: self.path.to_string_lossy().into_owned(),
                        yaml,
                    };
                    self.state.save(LAST_GOOD_FILE, &saved);
                }
            }
            Outcome::Rejected(_) => {
                if !self.applied && !self.last_good_tried {
                    self.offer_last_good = true;
                }
            }
            Outcome::Failed(_) => {}
        }
    }

    /// The saved last good file, parsed; looked at once per start at most.
    fn last_good(&mut self, problem: &str) -> Option<Validated> {
        if self.last_good_tried {
            return None;
        }
        self.last_good_tried = true;
        let saved: LastGoodFile = self.state.load(LAST_GOOD_FILE)?;
        let path = self.path.to_string_lossy();
        if saved.config != path {
            tracing::info!(saved_for = %saved.config, config = %path, "the last good policy saved on this node is of another policy file; not used");
            return None;
        }
        match self.documents.parse(&saved.yaml) {
            Ok(set) => {
                tracing::warn!(config = %path, problem, "enforcing the last good policy file saved on this node until the file is fixed");
                Some(set)
            }
            Err(error) => {
                self.state.reject(
                    LAST_GOOD_FILE,
                    format!("the saved policy no longer parses: {error}"),
                );
                None
            }
        }
    }
}

/// Turns bursts of events into one `dirty` + notification, [`QUIET`] after the last event
/// of a burst (at most [`MAX_DELAY`] after its first). Ends when the watcher is dropped.
fn debounce(
    events: &std::sync::mpsc::Receiver<()>,
    dirty: &AtomicBool,
    changes: &tokio::sync::Notify,
) {
    use std::sync::mpsc::RecvTimeoutError;
    while events.recv().is_ok() {
        let first = Instant::now();
        loop {
            let left = MAX_DELAY.saturating_sub(first.elapsed());
            if left.is_zero() {
                break;
            }
            match events.recv_timeout(QUIET.min(left)) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        dirty.store(true, Ordering::Release);
        changes.notify_one();
    }
}

impl PolicySource for FileSource {
    fn describe(&self) -> String {
        format!("file {}", self.path().display())
    }

    fn poll(&mut self) -> SourceUpdate {
        self.next_update()
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        FileSource::changes(self)
    }

    fn outcome(&mut self, outcome: Outcome<'_>) {
        self.record_outcome(&outcome);
    }

    fn state_errors(&self) -> u64 {
        self.state().errors()
    }
}

#[cfg(test)]
mod tests;
