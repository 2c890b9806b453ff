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

use super::state::StateDir;
use super::{Outcome, SourceUpdate};
use crate::policy::documents::{Digest, digest};

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
    documents: crate::policy::DocumentCache,
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
    pub fn parse(
        &mut self,
        content: &str,
    ) -> Result<crate::policy::PolicySet, crate::policy::PolicyError> {
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
    fn last_good(&mut self, problem: &str) -> Option<crate::policy::PolicySet> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_changes_once_and_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        let mut source = FileSource::new(&path);
        assert!(matches!(source.poll(), FileState::Unreadable(_)));
        assert!(matches!(source.poll(), FileState::Unchanged));
        std::fs::write(&path, "a: 1\n").unwrap();
        assert!(matches!(source.poll(), FileState::Changed(content) if content == "a: 1\n"));
        assert!(matches!(source.poll(), FileState::Unchanged));
        std::fs::write(&path, "a: 2\n").unwrap();
        assert!(matches!(source.poll(), FileState::Changed(_)));
    }

    /// Waits (2 s at most) until an announced change reads as one. A burst of events
    /// can be announced in two parts on a busy machine, so an announcement may find the
    /// change already read; polling happens only when announced.
    fn announced(source: &mut FileSource) -> FileState {
        let changes = source.changes().expect("a watched source");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let woke = runtime
                .block_on(async { tokio::time::timeout(left, changes.notified()).await.is_ok() });
            assert!(woke, "no change announced");
            match source.poll() {
                FileState::Unchanged => continue,
                other => return other,
            }
        }
    }

    /// Lets every pending event be announced and forgets it.
    fn settle(source: &mut FileSource) {
        std::thread::sleep(MAX_DELAY * 2);
        source.poll();
        let changes = source.changes().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let _ = tokio::time::timeout(Duration::from_millis(1), changes.notified()).await;
        });
    }

    fn assert_changed(state: FileState, expected: &str) {
        match state {
            FileState::Changed(content) => assert_eq!(content, expected),
            other => panic!("expected a change to {expected:?}, got {other:?}"),
        }
    }

    #[test]
    fn inotify_sees_writes_in_place_renames_over_and_symlink_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "v: 1\n").unwrap();
        let mut source = FileSource::watched(&path);
        assert!(source.is_watched());
        assert_changed(source.poll(), "v: 1\n");

        // Written in place, same size: only the event tells.
        std::fs::write(&path, "v: 2\n").unwrap();
        assert_changed(announced(&mut source), "v: 2\n");

        // An editor's write-then-rename.
        let temporary = dir.path().join(".policy.yaml.swp");
        std::fs::write(&temporary, "v: 3\n").unwrap();
        std::fs::rename(&temporary, &path).unwrap();
        assert_changed(announced(&mut source), "v: 3\n");

        // Events of other files in the folder are not announced.
        settle(&mut source);
        std::fs::write(dir.path().join("flows.jsonl"), "{}\n").unwrap();
        std::thread::sleep(MAX_DELAY * 2);
        assert!(!source.watch.as_ref().unwrap().dirty.load(Ordering::Acquire));
    }

    #[test]
    fn inotify_sees_a_configmap_style_symlink_swap() {
        // Kubernetes mounts a ConfigMap as `policy.yaml -> ..data/policy.yaml` and
        // `..data -> ..<timestamp>`; an update renames a new `..data` over the old one.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = |name: &str, content: &str| {
            std::fs::create_dir(root.join(name)).unwrap();
            std::fs::write(root.join(name).join("policy.yaml"), content).unwrap();
        };
        version("..v1", "v: 1\n");
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/policy.yaml", root.join("policy.yaml")).unwrap();
        let path = root.join("policy.yaml");
        let mut source = FileSource::watched(&path);
        assert_changed(source.poll(), "v: 1\n");

        version("..v2", "v: 2\n");
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert_changed(announced(&mut source), "v: 2\n");
    }

    #[test]
    fn a_watched_file_is_still_polled_and_reread_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, "v: 1\n").unwrap();
        let mut source = FileSource::watched(&path);
        assert_changed(source.poll(), "v: 1\n");
        // A change whose event is lost (simulated: the dirty flag is cleared) but whose
        // metadata moved is still found by the next poll.
        std::fs::write(&path, "v: 22\n").unwrap();
        std::thread::sleep(QUIET * 4);
        source
            .watch
            .as_ref()
            .unwrap()
            .dirty
            .store(false, Ordering::Release);
        assert_changed(source.poll(), "v: 22\n");
        // Unchanged metadata and no event: no read, until the periodic one.
        for _ in 0..FULL_READ_EVERY * 2 {
            assert!(matches!(source.poll(), FileState::Unchanged));
        }
    }

    const GOOD: &str = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: a}\nspec: {networks: [\"198.18.1.0/24\"]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: b}\nspec: {networks: [\"198.18.2.0/24\"]}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: a-to-b}\nspec: {from: [a], to: [b], action: Deny}\n";

    fn broken() -> String {
        GOOD.replace("to: [b]", "to: [nowhere]")
    }

    fn compiled(set: &crate::policy::PolicySet) -> crate::policy::CompiledPolicy {
        crate::policy::compile(set).expect("a valid set")
    }

    /// One start of the agent: a source on `path` with `state`, whose first version is
    /// applied when valid. Returns the source and what its first two polls gave.
    fn start(path: &Path, state: &Path) -> (FileSource, Vec<SourceUpdate>) {
        let mut source = FileSource::new(path).remembering(StateDir::open(state));
        let mut updates = Vec::new();
        for _ in 0..2 {
            let update = source.next_update();
            match &update {
                SourceUpdate::Changed(set) => source.record_outcome(&Outcome::Applied {
                    generation: 1,
                    compiled: &compiled(set),
                }),
                SourceUpdate::Invalid(error) => source.record_outcome(&Outcome::Rejected(error)),
                _ => {}
            }
            updates.push(update);
        }
        (source, updates)
    }

    fn policy_targets(update: &SourceUpdate) -> Vec<String> {
        match update {
            SourceUpdate::Changed(set) => set.policies.iter().flat_map(|p| p.to.clone()).collect(),
            other => panic!("expected a policy, got {other:?}"),
        }
    }

    /// A scratch folder with the paths of a policy file and a state folder in it.
    fn policy_and_state() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let folder = tempfile::tempdir().unwrap();
        let (path, state) = (
            folder.path().join("policy.yaml"),
            folder.path().join("state"),
        );
        (folder, path, state)
    }

    #[test]
    fn a_restart_with_an_invalid_file_enforces_the_saved_last_good_file_first() {
        let (_folder, path, state) = policy_and_state();
        std::fs::write(&path, GOOD).unwrap();
        let (mut running, updates) = start(&path, &state);
        assert_eq!(policy_targets(&updates[0]), ["b"]);
        assert!(matches!(updates[1], SourceUpdate::Unchanged));
        // Broken while running: rejected, nothing stands in (the run loop keeps the
        // policy it enforces).
        std::fs::write(&path, broken()).unwrap();
        assert!(matches!(running.next_update(), SourceUpdate::Invalid(_)));
        drop(running);

        // Restarted with the broken file: the saved file first, then the file's problem.
        let (restarted, updates) = start(&path, &state);
        assert_eq!(policy_targets(&updates[0]), ["b"]);
        match &updates[1] {
            SourceUpdate::Invalid(error) => {
                assert!(error.to_string().contains("nowhere"), "{error}")
            }
            other => panic!("the file's problem must follow, got {other:?}"),
        }
        assert_eq!(restarted.state().errors(), 0);

        // Missing at start: the same.
        std::fs::remove_file(&path).unwrap();
        let (_, updates) = start(&path, &state);
        assert_eq!(policy_targets(&updates[0]), ["b"]);
        assert!(matches!(updates[1], SourceUpdate::Unavailable(_)));

        // A valid file at start wins, and becomes the saved one.
        let edited = GOOD.replace("action: Deny", "action: Allow");
        std::fs::write(&path, &edited).unwrap();
        let (_, updates) = start(&path, &state);
        assert!(
            matches!(&updates[0], SourceUpdate::Changed(set) if set.policies[0].action == crate::policy::model::Action::Allow)
        );
        std::fs::write(&path, broken()).unwrap();
        let (_, updates) = start(&path, &state);
        assert!(
            matches!(&updates[0], SourceUpdate::Changed(set) if set.policies[0].action == crate::policy::model::Action::Allow)
        );
    }

    #[test]
    fn without_state_or_for_another_file_nothing_stands_in() {
        let (folder, path, state) = policy_and_state();
        std::fs::write(&path, GOOD).unwrap();
        start(&path, &state);
        // Another --config path: its own history only.
        let other = folder.path().join("other.yaml");
        std::fs::write(&other, broken()).unwrap();
        let (_, updates) = start(&other, &state);
        assert!(matches!(updates[0], SourceUpdate::Invalid(_)));
        assert!(matches!(updates[1], SourceUpdate::Unchanged));
        // No state folder: the invalid file is all there is.
        std::fs::write(&path, broken()).unwrap();
        let mut source = FileSource::new(&path);
        assert!(matches!(source.next_update(), SourceUpdate::Invalid(_)));
    }

    #[test]
    fn a_corrupt_saved_file_is_counted_and_ignored() {
        let (_folder, path, state) = policy_and_state();
        std::fs::write(&path, GOOD).unwrap();
        start(&path, &state);
        let saved = state.join(LAST_GOOD_FILE);
        let text = std::fs::read_to_string(&saved).unwrap();
        std::fs::write(&saved, &text[..text.len() / 2]).unwrap();
        std::fs::write(&path, broken()).unwrap();
        let (source, updates) = start(&path, &state);
        assert!(matches!(updates[0], SourceUpdate::Invalid(_)));
        assert_eq!(source.state().errors(), 1);
        // Well-formed, but its policy does not parse (saved by hand, or by a version
        // that read it differently): the same.
        std::fs::write(
            &saved,
            serde_json::json!({"format": 1, "state": {"config": path.to_string_lossy(), "yaml": broken()}}).to_string(),
        )
        .unwrap();
        let (source, updates) = start(&path, &state);
        assert!(matches!(updates[0], SourceUpdate::Invalid(_)));
        assert_eq!(source.state().errors(), 1);
        assert!(!saved.exists(), "set aside");
    }

    #[test]
    fn a_first_version_the_run_loop_rejects_is_replaced_by_the_saved_one() {
        let (_folder, path, state) = policy_and_state();
        std::fs::write(&path, GOOD).unwrap();
        start(&path, &state);
        let mut source = FileSource::new(&path).remembering(StateDir::open(&state));
        let SourceUpdate::Changed(_) = source.next_update() else {
            panic!("the file parses");
        };
        // As if the compiler refused what the parser let through.
        let error = crate::policy::parse(&broken()).unwrap_err();
        source.record_outcome(&Outcome::Rejected(&error));
        assert_eq!(policy_targets(&source.next_update()), ["b"]);
        assert!(matches!(source.next_update(), SourceUpdate::Unchanged));
    }
}
