//! `zonewall-cni install`: puts the plugin into a node's CNI setup, as the DaemonSet's
//! init container runs it. The binary is copied into the CNI bin folder, and an entry
//! `{"type": "zonewall-cni", ...}` is inserted right after the main plugin of the
//! configuration the runtime uses: the first file of the conf folder in lexical order
//! with the extension `.conflist`, `.conf` or `.json`, as containerd and CRI-O choose. A
//! single-plugin `.conf` (bridge-style, flannel's own) becomes a `.conflist` of the same
//! name, the original kept beside it as `<name>.zonewall-orig` (an extension runtimes
//! ignore). Running it again changes nothing; `uninstall` undoes it.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::spec::PLUGIN_TYPE;

/// Extensions of the files a runtime reads from the conf folder.
const CONF_EXTENSIONS: [&str; 3] = ["conflist", "conf", "json"];
/// Suffix of a single-plugin file that was turned into a conflist.
const ORIGINAL_SUFFIX: &str = "zonewall-orig";

/// Errors of the installer.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a CNI configuration: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "no CNI configuration in {0} (the main CNI plugin writes one; --wait-seconds waits for it)"
    )]
    NoConfiguration(PathBuf),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What `install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    pub conf_dir: PathBuf,
    pub bin_dir: PathBuf,
    /// The agent's `--bpffs`, written into the plugin's entry.
    pub bpffs: PathBuf,
    /// The binary to copy (the running one, normally).
    pub binary: PathBuf,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// The configuration that holds the plugin now.
    pub conf_file: PathBuf,
    pub conf_changed: bool,
    pub binary_changed: bool,
}

/// The configuration file a runtime uses in `conf_dir`, if any.
pub fn primary_conf(conf_dir: &Path) -> Result<Option<PathBuf>, InstallError> {
    let entries = std::fs::read_dir(conf_dir).map_err(io_error(conf_dir))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.is_file()
                && path
                    .extension()
                    .and_then(|extension| extension.to_str())
                    .is_some_and(|extension| CONF_EXTENSIONS.contains(&extension))
        })
        .collect();
    files.sort();
    Ok(files.into_iter().next())
}

/// The plugin's entry in a conflist.
pub fn plugin_entry(bpffs: &Path) -> Value {
    serde_json::json!({
        "type": PLUGIN_TYPE,
        "bpffs": bpffs.display().to_string(),
    })
}

/// A single-plugin configuration as a conflist: `cniVersion` and `name` move to the
/// list, the rest stays the plugin's.
pub fn conf_to_list(conf: &Value) -> Result<Value, String> {
    let mut plugin = conf.as_object().ok_or("not a JSON object")?.clone();
    if !plugin.get("type").is_some_and(Value::is_string) {
        return Err("no plugin type".into());
    }
    let mut list = Map::new();
    for key in ["cniVersion", "name"] {
        if let Some(value) = plugin.remove(key) {
            list.insert(key.into(), value);
        }
    }
    list.insert("plugins".into(), Value::Array(vec![Value::Object(plugin)]));
    Ok(Value::Object(list))
}

/// The conflist with the plugin's entry right after the main plugin (any earlier entry
/// of this plugin replaced). Errors say why the text is no conflist.
pub fn with_plugin(conflist: &Value, entry: &Value) -> Result<Value, String> {
    let mut conflist = conflist.clone();
    let plugins = conflist
        .get_mut("plugins")
        .and_then(Value::as_array_mut)
        .ok_or("no \"plugins\" list")?;
    plugins.retain(|plugin| !is_ours(plugin));
    if plugins.is_empty() {
        return Err("no main plugin to chain after".into());
    }
    plugins.insert(1, entry.clone());
    Ok(conflist)
}

/// The conflist without the plugin's entries.
pub fn without_plugin(conflist: &Value) -> Value {
    let mut conflist = conflist.clone();
    if let Some(plugins) = conflist.get_mut("plugins").and_then(Value::as_array_mut) {
        plugins.retain(|plugin| !is_ours(plugin));
    }
    conflist
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn read_json(path: &Path) -> Result<Value, InstallError> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    serde_json::from_str(&text).map_err(|error| InstallError::Invalid {
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// Writes `content` to `path` through a temporary file in the same folder (named so no
/// runtime reads it) and a rename: a runtime never reads half a file.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt as _;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.zonewall-tmp"));
    std::fs::write(&temporary, content).map_err(io_error(&temporary))?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
        .map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    text.into_bytes()
}

/// Copies the binary into the bin folder unless the same bytes are there already.
fn install_binary(options: &InstallOptions) -> Result<bool, InstallError> {
    let target = options.bin_dir.join(PLUGIN_TYPE);
    let content = std::fs::read(&options.binary).map_err(io_error(&options.binary))?;
    if std::fs::read(&target).is_ok_and(|present| present == content) {
        return Ok(false);
    }
    std::fs::create_dir_all(&options.bin_dir).map_err(io_error(&options.bin_dir))?;
    write_atomically(&target, &content, 0o755)?;
    Ok(true)
}

/// Copies the binary and chains the plugin into the runtime's configuration.
pub fn install(options: &InstallOptions) -> Result<InstallReport, InstallError> {
    let binary_changed = install_binary(options)?;
    let conf = primary_conf(&options.conf_dir)?
        .ok_or_else(|| InstallError::NoConfiguration(options.conf_dir.clone()))?;
    let invalid = |reason: String| InstallError::Invalid {
        path: conf.clone(),
        reason,
    };
    let current = read_json(&conf)?;
    let is_list = current.get("plugins").is_some();
    let list = if is_list {
        current.clone()
    } else {
        conf_to_list(&current).map_err(invalid)?
    };
    let wanted = with_plugin(&list, &plugin_entry(&options.bpffs)).map_err(invalid)?;
    if is_list {
        let conf_changed = wanted != current;
        if conf_changed {
            write_atomically(&conf, &pretty(&wanted), 0o644)?;
        }
        return Ok(InstallReport {
            conf_file: conf,
            conf_changed,
            binary_changed,
        });
    }
    // A single-plugin file: the conflist takes its name (the same stem sorts the same
    // among other files), the original is kept under a name runtimes ignore.
    let list_path = conf.with_extension("conflist");
    let file_name = conf
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let original = conf.with_file_name(format!("{file_name}.{ORIGINAL_SUFFIX}"));
    write_atomically(&list_path, &pretty(&wanted), 0o644)?;
    std::fs::rename(&conf, &original).map_err(io_error(&conf))?;
    Ok(InstallReport {
        conf_file: list_path,
        conf_changed: true,
        binary_changed,
    })
}

/// Takes the plugin out of the runtime's configuration (restoring a single-plugin file
/// `install` converted) and removes the binary. Returns whether anything changed.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<bool, InstallError> {
    let mut changed = false;
    let entries = std::fs::read_dir(conf_dir).map_err(io_error(conf_dir))?;
    let mut originals: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            path.extension()
                .is_some_and(|extension| extension == ORIGINAL_SUFFIX)
        })
        .collect();
    originals.sort();
    for original in originals {
        let restored = original.with_extension("");
        let list = restored.with_extension("conflist");
        if list.is_file() {
            std::fs::remove_file(&list).map_err(io_error(&list))?;
        }
        std::fs::rename(&original, &restored).map_err(io_error(&original))?;
        changed = true;
    }
    if let Some(conf) = primary_conf(conf_dir)? {
        let current = read_json(&conf)?;
        let cleaned = without_plugin(&current);
        if cleaned != current {
            write_atomically(&conf, &pretty(&cleaned), 0o644)?;
            changed = true;
        }
    }
    let binary = bin_dir.join(PLUGIN_TYPE);
    match std::fs::remove_file(&binary) {
        Ok(()) => changed = true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(&binary)(error)),
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALICO: &str = include_str!("testdata/calico.conflist");
    const FLANNEL: &str = include_str!("testdata/flannel.conflist");
    const BRIDGE: &str = include_str!("testdata/bridge.conf");

    struct Node {
        _dir: tempfile::TempDir,
        conf_dir: PathBuf,
        bin_dir: PathBuf,
        options: InstallOptions,
    }

    fn node(files: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&conf_dir).unwrap();
        for (name, content) in files {
            std::fs::write(conf_dir.join(name), content).unwrap();
        }
        let binary = dir.path().join("zonewall-cni-build");
        std::fs::write(&binary, b"\x7fELF plugin").unwrap();
        let options = InstallOptions {
            conf_dir: conf_dir.clone(),
            bin_dir: bin_dir.clone(),
            bpffs: PathBuf::from("/sys/fs/bpf/zonewall"),
            binary,
        };
        Node {
            _dir: dir,
            conf_dir,
            bin_dir,
            options,
        }
    }

    fn json(path: &Path) -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn types(conflist: &Value) -> Vec<String> {
        conflist["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|plugin| plugin["type"].as_str().unwrap().to_owned())
            .collect()
    }

    /// What `install` makes of each style is what deploy/cni/ shows.
    #[test]
    fn each_style_gets_the_plugin_after_its_main_plugin_as_deploy_cni_shows() {
        for (file, pristine, example) in [
            ("10-calico.conflist", CALICO, "calico.conflist"),
            ("10-flannel.conflist", FLANNEL, "flannel.conflist"),
            ("10-bridge.conf", BRIDGE, "bridge.conflist"),
        ] {
            let node = node(&[(file, pristine)]);
            let report = install(&node.options).unwrap();
            assert!(report.conf_changed && report.binary_changed, "{file}");
            let installed = json(&report.conf_file);
            let shown_path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/cni")
                .join(example);
            let shown: Value =
                serde_json::from_str(&std::fs::read_to_string(&shown_path).unwrap()).unwrap();
            assert_eq!(
                installed, shown,
                "{file}: deploy/cni/{example} differs from what install writes"
            );
            assert_eq!(types(&installed)[1], PLUGIN_TYPE, "{file}");
            assert_eq!(
                std::fs::read(node.bin_dir.join(PLUGIN_TYPE)).unwrap(),
                b"\x7fELF plugin"
            );
        }
    }

    #[test]
    fn installing_again_changes_nothing_and_uninstall_restores_the_original() {
        for (file, pristine) in [("10-calico.conflist", CALICO), ("10-bridge.conf", BRIDGE)] {
            let node = node(&[(file, pristine), ("99-other.conflist", FLANNEL)]);
            let first = install(&node.options).unwrap();
            let written = std::fs::read(&first.conf_file).unwrap();
            let again = install(&node.options).unwrap();
            assert_eq!(again.conf_file, first.conf_file, "{file}");
            assert!(
                !again.conf_changed && !again.binary_changed,
                "{file}: {again:?}"
            );
            assert_eq!(std::fs::read(&first.conf_file).unwrap(), written, "{file}");
            // Exactly one entry of the plugin, whatever was there before.
            let plugins = types(&json(&first.conf_file));
            assert_eq!(
                plugins.iter().filter(|kind| *kind == PLUGIN_TYPE).count(),
                1
            );
            // The other configuration is not the runtime's: untouched.
            assert_eq!(
                std::fs::read_to_string(node.conf_dir.join("99-other.conflist")).unwrap(),
                FLANNEL
            );

            assert!(uninstall(&node.conf_dir, &node.bin_dir).unwrap());
            let restored = json(&node.conf_dir.join(file));
            assert_eq!(
                restored,
                serde_json::from_str::<Value>(pristine).unwrap(),
                "{file}"
            );
            assert!(!node.bin_dir.join(PLUGIN_TYPE).exists());
            assert!(
                !uninstall(&node.conf_dir, &node.bin_dir).unwrap(),
                "{file}: second uninstall"
            );
            let names: Vec<String> = std::fs::read_dir(&node.conf_dir)
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 2, "{file}: {names:?}");
        }
    }

    #[test]
    fn a_misplaced_or_updated_entry_is_moved_after_the_main_plugin() {
        let mut list: Value = serde_json::from_str(CALICO).unwrap();
        let plugins = list["plugins"].as_array_mut().unwrap();
        plugins.push(serde_json::json!({"type": PLUGIN_TYPE, "bpffs": "/old"}));
        let node = node(&[("10-calico.conflist", &list.to_string())]);
        let report = install(&node.options).unwrap();
        assert!(report.conf_changed);
        let installed = json(&report.conf_file);
        assert_eq!(
            types(&installed),
            ["calico", PLUGIN_TYPE, "bandwidth", "portmap"]
        );
        assert_eq!(installed["plugins"][1]["bpffs"], "/sys/fs/bpf/zonewall");
    }

    #[test]
    fn the_runtime_s_file_is_the_first_in_lexical_order_and_bad_ones_are_refused() {
        let several = node(&[
            ("20-b.conflist", FLANNEL),
            ("10-a.conflist", CALICO),
            ("05-notes.txt", "x"),
        ]);
        assert_eq!(
            primary_conf(&several.conf_dir).unwrap(),
            Some(several.conf_dir.join("10-a.conflist"))
        );
        let empty = node(&[]);
        assert!(matches!(
            install(&empty.options),
            Err(InstallError::NoConfiguration(_))
        ));
        for bad in [
            "{",
            r#"{"name": "x", "plugins": []}"#,
            r#"{"name": "x"}"#,
            "[1]",
        ] {
            let node = node(&[("10-bad.conflist", bad)]);
            let error = install(&node.options).unwrap_err();
            assert!(
                matches!(error, InstallError::Invalid { .. }),
                "{bad}: {error}"
            );
            // Nothing written over a file it could not read.
            assert_eq!(
                std::fs::read_to_string(node.conf_dir.join("10-bad.conflist")).unwrap(),
                bad
            );
        }
    }
}
