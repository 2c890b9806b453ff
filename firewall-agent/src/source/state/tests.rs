//! Tests of the state folder: atomic saves, formats, and files that cannot be read.

use super::*;

#[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
struct Sample {
    names: Vec<String>,
    generation: i64,
}

fn sample() -> Sample {
    Sample {
        names: vec!["a".into(), "b".into()],
        generation: 7,
    }
}

#[test]
fn saves_and_loads_and_replaces() {
    let folder = tempfile::tempdir().unwrap();
    let state = StateDir::open(&folder.path().join("nested/state"));
    assert_eq!(state.load::<Sample>("x.json"), None, "nothing saved yet");
    assert!(state.save("x.json", &sample()));
    assert_eq!(state.load::<Sample>("x.json"), Some(sample()));
    let newer = Sample {
        generation: 8,
        ..sample()
    };
    assert!(state.save("x.json", &newer));
    assert_eq!(state.load::<Sample>("x.json"), Some(newer));
    assert_eq!(state.errors(), 0);
    // No temporary file is left behind.
    let names: Vec<String> = std::fs::read_dir(folder.path().join("nested/state"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["x.json"]);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(folder.path().join("nested/state/x.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_corrupt_file_is_counted_set_aside_and_ignored() {
    let folder = tempfile::tempdir().unwrap();
    let state = StateDir::open(folder.path());
    let path = folder.path().join("x.json");
    for (broken, count) in [
        ("{\"format\": 1, \"state\": {\"names\": [\"a\"", 1),
        ("", 2),
        (
            "{\"format\": 1, \"state\": {\"names\": 5, \"generation\": 1}}",
            3,
        ),
        ("{\"format\": 99, \"state\": {}}", 4),
        ("\u{0}\u{1}binary", 5),
    ] {
        std::fs::write(&path, broken).unwrap();
        assert_eq!(state.load::<Sample>("x.json"), None, "{broken:?}");
        assert_eq!(state.errors(), count, "{broken:?}");
        assert!(!path.exists(), "moved aside");
        assert_eq!(
            std::fs::read_to_string(folder.path().join("x.json.corrupt")).unwrap(),
            broken
        );
    }
    std::fs::write(&path, [0xff, 0xfe, 0x00]).unwrap();
    assert_eq!(state.load::<Sample>("x.json"), None);
    assert_eq!(state.errors(), 6);
    // The next save works as if there had been nothing.
    assert!(state.save("x.json", &sample()));
    assert_eq!(state.load::<Sample>("x.json"), Some(sample()));
}

#[test]
fn an_unreadable_file_or_folder_is_counted_and_the_agent_goes_on() {
    let folder = tempfile::tempdir().unwrap();
    let state = StateDir::open(folder.path());
    // A folder where the file should be: reading fails, writing fails.
    std::fs::create_dir(folder.path().join("x.json")).unwrap();
    assert_eq!(state.load::<Sample>("x.json"), None);
    assert_eq!(state.errors(), 1);
    assert!(!state.save("x.json", &sample()));
    assert_eq!(state.errors(), 2);
    // A state folder that cannot be created (a file is in the way).
    let blocked = folder.path().join("file");
    std::fs::write(&blocked, "").unwrap();
    let state = StateDir::open(&blocked.join("state"));
    assert_eq!(state.errors(), 1);
    assert!(!state.save("x.json", &sample()));
    assert_eq!(state.errors(), 2);
    assert_eq!(state.load::<Sample>("x.json"), None);
}

#[test]
fn an_empty_path_keeps_nothing() {
    let state = StateDir::open(Path::new(""));
    assert!(state.folder().is_none());
    assert!(!state.save("x.json", &sample()));
    assert_eq!(state.load::<Sample>("x.json"), None);
    assert_eq!(state.errors(), 0);
}
