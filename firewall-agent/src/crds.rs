//! The CustomResourceDefinitions of `Zone` and `ZonePolicy` rendered as the files of
//! `deploy/crds/` (from the Rust types of [`crate::policy::crd`]), compared with a folder
//! and written into one. The `zonewall-crds` binary (run by `cargo xtask codegen`) and the
//! manifests test both call this, so the files checked are rendered by the very code that
//! writes them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The first lines of every generated file.
pub const HEADER: &str = "# Generated from the Rust types of firewall-agent/src/policy/crd.rs by \
                          `cargo xtask codegen`.\n# Do not edit: change the types and run the \
                          command again.\n";

/// What went wrong rendering, reading or writing the CRD files.
#[derive(Debug, thiserror::Error)]
pub enum CrdsError {
    #[error("cannot render the CustomResourceDefinition {name} as YAML: {source}")]
    Render {
        name: String,
        source: serde_yaml_ng::Error,
    },
    #[error("cannot read or write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CrdsError + '_ {
    move |source| CrdsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Every file of the CRD folder, as (file name, content), in a stable order: one file per
/// CRD, named `<group>_<plural>.yaml` as controller-gen names them, and a
/// `kustomization.yaml` listing them, so the folder can be a kustomize resource.
pub fn generated_files() -> Result<Vec<(String, String)>, CrdsError> {
    let mut files = Vec::new();
    let mut kustomization = format!(
        "{HEADER}apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for crd in crate::policy::crd::crds() {
        let name = format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural);
        let yaml = serde_yaml_ng::to_string(&crd).map_err(|source| CrdsError::Render {
            name: name.clone(),
            source,
        })?;
        kustomization.push_str(&format!("  - {name}\n"));
        files.push((name, format!("{HEADER}{yaml}")));
    }
    files.push(("kustomization.yaml".to_string(), kustomization));
    Ok(files)
}

/// What differs between `dir` and [`generated_files`]: files missing or different, and
/// YAML files that nothing generates any more.
pub fn stale_files(dir: &Path) -> Result<Vec<String>, CrdsError> {
    let files = generated_files()?;
    let mut stale = Vec::new();
    for (name, content) in &files {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing == *content => {}
            Ok(_) => stale.push(format!("{name} differs")),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                stale.push(format!("{name} is missing"))
            }
            Err(error) => return Err(io_error(&path)(error)),
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
fn yaml_files(dir: &Path) -> Result<BTreeSet<String>, CrdsError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(error) => return Err(io_error(dir)(error)),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let name = entry
            .map_err(io_error(dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            names.insert(name);
        }
    }
    Ok(names)
}

/// What [`write`] did to one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Unchanged,
    Wrote,
    Removed,
}

/// Writes the generated files into `dir`, leaving unchanged files untouched and removing
/// YAML files that nothing generates any more (the folder holds generated files only).
/// Returns what it did to each file, in order.
pub fn write(dir: &Path) -> Result<Vec<(Written, PathBuf)>, CrdsError> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let files = generated_files()?;
    let mut done = Vec::new();
    for (name, content) in &files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            done.push((Written::Unchanged, path));
            continue;
        }
        std::fs::write(&path, content).map_err(io_error(&path))?;
        done.push((Written::Wrote, path));
    }
    for name in yaml_files(dir)? {
        if !files.iter().any(|(generated, _)| *generated == name) {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            done.push((Written::Removed, path));
        }
    }
    Ok(done)
}
