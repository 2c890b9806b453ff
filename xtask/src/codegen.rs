//! `cargo xtask codegen`: regenerates the files derived from the Rust types, today the
//! CustomResourceDefinitions in `deploy/crds/`. The agent's `zonewall-crds` binary renders
//! them; xtask only runs it, since xtask must build before the eBPF toolchain exists and
//! so cannot link the agent. The manifests test fails when the files are out of date.

use std::path::PathBuf;

use anyhow::Result;

use crate::cmd;

/// Where the generated CRDs live, relative to the workspace root.
pub const CRD_DIR: &str = "deploy/crds";

pub fn run() -> Result<()> {
    let root = crate::workspace_root();
    let mut command = cmd::cargo();
    command
        .current_dir(&root)
        // The CRDs need no eBPF object: the agent's build script then skips building it,
        // so this works on a machine without bpf-linker.
        .env("AYA_BUILD_SKIP", "1")
        .args([
            "run",
            "--quiet",
            "-p",
            "firewall-agent",
            "--bin",
            "zonewall-crds",
        ])
        // A folder of its own: the agent built without its eBPF object must not replace
        // the real one in the usual target folder (and make the next build redo it).
        .arg("--target-dir")
        .arg(target_dir().join("codegen"))
        .arg("--")
        .arg("--out")
        .arg(root.join(CRD_DIR));
    cmd::run(&mut command)
}

/// The target folder cargo uses for this workspace.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target"))
}
