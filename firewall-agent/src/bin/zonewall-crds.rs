//! `zonewall-crds`: the CustomResourceDefinitions of `Zone` and `ZonePolicy`, generated
//! from their Rust types (`firewall_agent::policy::crd`). `cargo xtask codegen` runs it to
//! refresh `deploy/crds/`; the manifests test compiles this file in too, so the files it
//! compares are rendered by this very code.
//!
//! ```text
//! zonewall-crds              both CRDs on stdout, as one YAML stream
//! zonewall-crds --out DIR    DIR/<group>_<plural>.yaml per CRD, DIR/kustomization.yaml
//! zonewall-crds --check DIR  exit status 1, naming the files, when DIR is out of date
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

/// The first lines of every generated file.
pub const HEADER: &str = "# Generated from the Rust types of firewall-agent/src/policy/crd.rs by \
                          `cargo xtask codegen`.\n# Do not edit: change the types and run the \
                          command again.\n";

/// Every file of the CRD folder, as (file name, content), in a stable order: one file per
/// CRD, named `<group>_<plural>.yaml` as controller-gen names them, and a
/// `kustomization.yaml` listing them, so the folder can be a kustomize resource.
pub fn generated_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut kustomization = format!(
        "{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for crd in firewall_agent::policy::crd::crds() {
        let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
        let yaml =
            serde_yaml_ng::to_string(&crd).expect("a CustomResourceDefinition serialises to YAML");
        kustomization.push_str(&format!("  - {name}\n"));
        files.push((name, format!("{HEADER}{yaml}")));
    }
    files.push(("kustomization.yaml".to_string(), kustomization));
    files
}

/// What differs between `dir` and [`generated_files`]: files missing or different, and
/// YAML files that nothing generates any more.
pub fn stale_files(dir: &Path) -> std::io::Result<Vec<String>> {
    let files = generated_files();
    let mut stale = Vec::new();
    for (name, content) in &files {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(existing) if existing == *content => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                stale.push(format!("{name} is missing"))
            }
            Err(error) => return Err(error),
        }
    }
    for name in yaml_files(dir)? {
        if !files.iter().any(|(generated, _)| *generated == name) {
            stale.push(format!("{name} is not generated from the types"));
        }
    }
    Ok(stale)
}

/// Names of the `.yaml` files in `dir` (none when it does not exist).
fn yaml_files(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(error) => return Err(error),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.insert(name);
        }
    }
    Ok(names)
}

/// Writes the generated files into `dir`, leaving unchanged files untouched and removing
/// YAML files that nothing generates any more (the folder holds generated files only).
fn write(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files = generated_files();
    for (name, content) in &files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            println!("unchanged {}", path.display());
            continue;
        }
        std::fs::write(&path, content)?;
        println!("wrote     {}", path.display());
    }
    for name in yaml_files(dir)? {
        if !files.iter().any(|(generated, _)| *generated == name) {
            std::fs::remove_file(dir.join(&name))?;
            println!("removed   {}", dir.join(&name).display());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: zonewall-crds [--out DIR | --check DIR]";
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        [] => {
            let files = generated_files();
            let crds: Vec<&str> = files
                .iter()
                .filter(|(name, _)| name != "kustomization.yaml")
                .map(|(_, content)| content.as_str())
                .collect();
            print!("{}", crds.join("---\n"));
            ExitCode::SUCCESS
        }
        ["--out", dir] => match write(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("zonewall-crds: cannot write the CRDs into {dir}: {error}");
                ExitCode::FAILURE
            }
        },
        ["--check", dir] => match stale_files(Path::new(dir)) {
            Ok(stale) if stale.is_empty() => {
                println!("{dir}: up to date");
                ExitCode::SUCCESS
            }
            Ok(stale) => {
                eprintln!(
                    "{dir} is out of date with the Rust types:\n  {}\nrun `cargo xtask codegen`",
                    stale.join("\n  ")
                );
                ExitCode::FAILURE
            }
            Err(error) => {
                eprintln!("zonewall-crds: cannot read {dir}: {error}");
                ExitCode::FAILURE
            }
        },
        ["-h" | "--help"] => {
            println!("{usage}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}
