//! What a privileged test, benchmark or demo needs of this machine before it starts: root,
//! the tools it runs on `PATH`, and whether it runs in CI (where a test that cannot run
//! fails instead of skipping).

use std::path::PathBuf;

/// Whether a privileged network test can run here: root, and every tool of `tools` on
/// `PATH` (`ip` is always required).
///
/// Outside CI it prints why not and returns `false`, so the test can return early. Under
/// `CI=true` it panics instead: in CI a test that cannot run is a failure, not a skip.
pub fn can_run(tools: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push(
            "root privileges (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".to_string(),
        );
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        if find_on_path(tool).is_none() {
            missing.push(format!("`{tool}` on PATH (run `cargo xtask setup`)"));
        }
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!("this test needs {}", missing.join(" and "));
    if in_ci() {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("skipped: {why}");
    false
}

/// Whether the `CI` environment variable says we run in CI.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true" || value == "1")
}

/// The first `name` in a `PATH` folder, if any.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
