//! Tests of the file source: change detection by polling and by inotify, and the saved
//! last good file standing in for an invalid or unreadable one at start.

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

fn compiled(set: &Validated) -> crate::policy::CompiledPolicy {
    crate::policy::compile(set)
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
