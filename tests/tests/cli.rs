//! The agent's command line: `check` as the security engineer's lint, flag validation and
//! environment variables. No privileges needed.

use std::process::Command;

use zonewall_tests::agent::agent_binary;
use zonewall_tests::fixtures::THREE_ZONES;

fn write(dir: &tempfile::TempDir, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn check_prints_zones_and_matrix_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "policy.yaml", THREE_ZONES);
    let output = Command::new(agent_binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for expected in [
        "dmz",
        "trusted",
        "restricted",
        "partners",
        "203.0.113.0/24",
        "web/web-1",
        "tcp/8080",
        "dmz-to-trusted-http",
    ] {
        assert!(
            stdout.contains(expected),
            "check output lacks {expected:?}:\n{stdout}"
        );
    }
    // The same through the environment variable.
    let output = Command::new(agent_binary())
        .arg("check")
        .env("ZONEWALL_CONFIG", &path)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), stdout);
}

#[test]
fn check_lists_every_error_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = THREE_ZONES.to_owned()
        + "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {name: typo}\nspec:\n  from: [dmz]\n  to: [trustd]\n  ports: [{protocol: TCP, port: 443, endPort: 80}]\n  action: Allow\n"
        + "---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: bad-net}\nspec: {networks: [10.0.0.0/33]}\n";
    let path = write(&dir, "bad.yaml", &bad);
    let output = Command::new(agent_binary())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    for expected in [
        "ZonePolicy/typo",
        "spec.to[0]",
        "trustd",
        "spec.ports[0].endPort",
        "Zone/bad-net",
        "spec.networks[0]",
    ] {
        assert!(
            stderr.contains(expected),
            "errors lack {expected:?}:\n{stderr}"
        );
    }
    let missing = Command::new(agent_binary())
        .args(["check", "--config", "/nonexistent/zonewall.yaml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/zonewall.yaml")
    );
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let output = Command::new(agent_binary())
        .args([
            "--config",
            "/tmp/x.yaml",
            "--interfaces",
            "veth[",
            "--bpffs",
            "/tmp/zonewall-never-used",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--interfaces"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(agent_binary())
        .args(["--unknown-source", "maybe"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("maybe"));
    let output = Command::new(agent_binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--config",
        "--interfaces",
        "--flow-log",
        "--bpffs",
        "--unknown-source",
        "ZONEWALL_BPFFS",
        "check",
        "detach",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}
