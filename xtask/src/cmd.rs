//! Running external commands: echo them, fail with a message that names them.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// The command as a shell line, for humans.
pub fn display(command: &Command) -> String {
    let envs = command.get_envs().filter_map(|(key, value)| {
        value.map(|value| {
            format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            )
        })
    });
    let words = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|word| quote(&word.to_string_lossy()));
    envs.chain(words).collect::<Vec<_>>().join(" ")
}

fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Prints and runs `command` with inherited output; fails if it does not exit with 0.
pub fn run(command: &mut Command) -> Result<()> {
    println!("$ {}", display(command));
    let status = command
        .status()
        .with_context(|| format!("cannot start `{}`", display(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(command));
    }
    Ok(())
}

/// Runs `command` quietly and returns its stdout; fails with its stderr if it does not
/// exit with 0.
pub fn output(command: &mut Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The cargo that runs xtask, so nested builds use the same toolchain.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_commands_as_shell_lines() {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            "zw-1-ab-node",
            "agent",
            "--interfaces",
            "veth*",
        ]);
        command.env("RUST_LOG", "info");
        assert_eq!(
            display(&command),
            "RUST_LOG=info ip netns exec zw-1-ab-node agent --interfaces 'veth*'"
        );
    }
}
