//! `cargo xtask build`: the agent in release mode. Its build script builds the eBPF
//! object with the pinned nightly toolchain and embeds it.

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// Builds the release agent and returns the path of its binary.
pub fn release_agent() -> Result<PathBuf> {
    built_binary(&["--release"], "firewall-agent")
}

/// Builds the binary `name` of the `firewall-agent` package with `profile_args` and
/// returns its path, as cargo reports it (so `CARGO_TARGET_DIR` and the like are
/// honoured).
pub fn built_binary(profile_args: &[&str], name: &str) -> Result<PathBuf> {
    built_package_binary("firewall-agent", profile_args, name)
}

/// Builds the binary `name` of `package` with `profile_args` and returns its path.
pub fn built_package_binary(package: &str, profile_args: &[&str], name: &str) -> Result<PathBuf> {
    let mut command = cmd::cargo();
    command
        .current_dir(crate::workspace_root())
        .args(["build", "-p", package, "--bin", name])
        .args(profile_args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    println!("$ {}", cmd::display(&command));
    // Progress and diagnostics go to stderr as usual; stdout carries the JSON messages.
    let output = command
        .spawn()
        .context("start cargo build")?
        .wait_with_output()
        .context("wait for cargo build")?;
    if !output.status.success() {
        bail!("building {name} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    executable_of(&stdout, name)
        .with_context(|| format!("cargo built {name} but reported no executable for it"))
}

/// The `executable` of the last compiler artifact whose target is the binary `name`.
fn executable_of(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == name
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"firewall_common","kind":["lib"]},"executable":null}
{"reason":"compiler-artifact","target":{"name":"firewall-agent","kind":["bin"]},"executable":"/t/release/firewall-agent"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_of(messages, "firewall-agent"),
            Some(PathBuf::from("/t/release/firewall-agent"))
        );
        assert_eq!(executable_of(messages, "zonectl"), None);
    }
}
