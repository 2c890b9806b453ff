//! The CNI contract as the plugin speaks it: the environment a runtime sets, the network
//! configuration on stdin, the version answer and the error object (CNI spec 1.0.0, also
//! 0.4.0, 0.3.x, which Calico's and Flannel's default conflists still name, and 1.1.0,
//! whose STATUS and GC it answers too).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// Spec versions whose configurations the plugin takes.
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version of an answer when the configuration names none (VERSION without stdin).
pub const DEFAULT_VERSION: &str = "1.0.0";
/// The plugin's `type` in a conflist (its binary's name in the CNI bin folder).
pub const PLUGIN_TYPE: &str = "zonewall-cni";
/// The agent's default `--bpffs`.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/zonewall";

/// Error codes of the spec, and the plugin's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODING_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// The programs could not be attached to the pod's interface.
    pub const ATTACH_FAILED: u32 = 100;
    /// The pod's host-side interface was not found.
    pub const NO_HOST_INTERFACE: u32 = 101;
    /// CHECK: the pod's interface is not enforced.
    pub const NOT_ENFORCED: u32 = 102;
}

/// A failure, as the spec's error object: `code`, `msg`, `details`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object the runtime reads from stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::json!({
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}

/// What the runtime asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The `CNI_*` variables of one invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub command: Option<String>,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `KEY=VALUE;...`.
    pub args: BTreeMap<String, String>,
    pub path: Vec<PathBuf>,
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

impl Invocation {
    /// From a variable lookup (`std::env::var` in the binary, a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let args = lookup("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter_map(|pair| pair.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        let path = lookup("CNI_PATH")
            .map(|paths| std::env::split_paths(&paths).collect())
            .unwrap_or_default();
        Self {
            command: non_empty(lookup("CNI_COMMAND")),
            container_id: non_empty(lookup("CNI_CONTAINERID")),
            netns: non_empty(lookup("CNI_NETNS")).map(PathBuf::from),
            ifname: non_empty(lookup("CNI_IFNAME")),
            args,
            path,
        }
    }

    /// The command, or error 4 naming what is wrong.
    pub fn command(&self) -> Result<Command, CniError> {
        match self.command.as_deref() {
            Some("ADD") => Ok(Command::Add),
            Some("DEL") => Ok(Command::Del),
            Some("CHECK") => Ok(Command::Check),
            Some("VERSION") => Ok(Command::Version),
            Some("STATUS") => Ok(Command::Status),
            Some("GC") => Ok(Command::Gc),
            Some(other) => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "unknown CNI_COMMAND",
                format!("{other:?} is none of ADD, DEL, CHECK, VERSION, STATUS, GC"),
            )),
            None => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                "CNI_COMMAND is not set",
                "zonewall-cni is run by a container runtime; `zonewall-cni install` sets it up",
            )),
        }
    }

    /// A variable the command needs, or error 4.
    pub fn required<'a, T: ?Sized>(
        &'a self,
        value: Option<&'a T>,
        name: &str,
    ) -> Result<&'a T, CniError> {
        value.ok_or_else(|| {
            CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("{name} is not set"),
                format!(
                    "{name} is required by CNI_COMMAND={}",
                    self.command.as_deref().unwrap_or("")
                ),
            )
        })
    }
}

/// The plugin's network configuration (its entry of the conflist, as the runtime passes
/// it, with `name`, `cniVersion` and `prevResult` filled in). Unknown fields are ignored:
/// runtimes add their own (`runtimeConfig`, `args`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    /// The agent's `--bpffs`.
    #[serde(default = "default_bpffs")]
    pub bpffs: PathBuf,
    /// `auto` (TCX, else clsact), `tcx` or `tc`, as the agent's `--attach-mode`.
    #[serde(default)]
    pub attach_mode: Option<String>,
    /// What the plugins before this one returned.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
}

fn default_bpffs() -> PathBuf {
    PathBuf::from(DEFAULT_BPFFS)
}

impl NetConf {
    /// Parses stdin; errors 6 (not JSON of this shape) or 1 (a version not supported).
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|error| {
            CniError::new(
                code::DECODING_FAILURE,
                "cannot read the network configuration on stdin",
                error.to_string(),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported", conf.cni_version),
                format!("zonewall-cni supports {}", SUPPORTED_VERSIONS.join(", ")),
            ));
        }
        Ok(conf)
    }

    /// Whether this version knows CHECK (0.4.0 and later).
    pub fn has_check(&self) -> bool {
        !self.cni_version.starts_with("0.3.")
    }

    /// The attach mode, or error 7.
    pub fn attach_mode(&self) -> Result<crate::datapath::AttachMode, CniError> {
        use crate::datapath::AttachMode;
        match self.attach_mode.as_deref() {
            None | Some("auto") => Ok(AttachMode::Auto),
            Some("tcx") => Ok(AttachMode::Tcx),
            Some("tc") => Ok(AttachMode::Tc),
            Some(other) => Err(CniError::new(
                code::INVALID_CONFIG,
                format!("attachMode {other:?} is not auto, tcx or tc"),
                format!("network {}", self.name),
            )),
        }
    }

    /// Host-side interfaces the previous result names (entries without a `sandbox`).
    pub fn host_interfaces(&self) -> Vec<String> {
        let Some(interfaces) = self
            .prev_result
            .as_ref()
            .and_then(|result| result.get("interfaces"))
            .and_then(|list| list.as_array())
        else {
            return Vec::new();
        };
        interfaces
            .iter()
            .filter(|interface| {
                interface
                    .get("sandbox")
                    .and_then(|sandbox| sandbox.as_str())
                    .is_none_or(str::is_empty)
            })
            .filter_map(|interface| interface.get("name")?.as_str().map(str::to_owned))
            .collect()
    }

    /// The result to print after ADD: the previous result, passed through, in this
    /// configuration's version.
    pub fn result(&self) -> Result<String, CniError> {
        let mut result = self.prev_result.clone().ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "no prevResult: zonewall-cni is a chained plugin",
                "list it after the main plugin (calico, flannel, bridge...) in the conflist",
            )
        })?;
        let object = result.as_object_mut().ok_or_else(|| {
            CniError::new(
                code::DECODING_FAILURE,
                "prevResult is not a JSON object",
                "",
            )
        })?;
        object.insert("cniVersion".into(), self.cni_version.clone().into());
        Ok(result.to_string())
    }
}

/// The VERSION answer.
pub fn version_info(cni_version: &str) -> String {
    serde_json::json!({
        "cniVersion": cni_version,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn the_environment_is_read_as_runtimes_set_it() {
        let invocation = Invocation::from_lookup(lookup(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]));
        assert_eq!(invocation.command().unwrap(), Command::Add);
        assert_eq!(invocation.args["K8S_POD_NAME"], "web-0");
        assert_eq!(invocation.args["K8S_POD_NAMESPACE"], "shop");
        assert_eq!(invocation.path.len(), 2);
        assert_eq!(
            invocation.netns.as_deref(),
            Some(std::path::Path::new("/var/run/netns/cni-1"))
        );

        let unset = Invocation::from_lookup(lookup(&[("CNI_COMMAND", "")]));
        assert_eq!(unset.command().unwrap_err().code, code::INVALID_ENVIRONMENT);
        let unknown = Invocation::from_lookup(lookup(&[("CNI_COMMAND", "UP")]));
        let error = unknown.command().unwrap_err();
        assert_eq!(error.code, code::INVALID_ENVIRONMENT);
        assert!(error.details.contains("UP"), "{error:?}");
        let error = unknown
            .required(unknown.ifname.as_deref(), "CNI_IFNAME")
            .unwrap_err();
        assert_eq!(error.msg, "CNI_IFNAME is not set");
    }

    #[test]
    fn configurations_are_checked_and_the_previous_result_passed_through() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"k8s","type":"zonewall-cni","runtimeConfig":{},
                "prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"cni0","mac":"aa"},
                {"name":"veth1234","mac":"bb"},{"name":"eth0","sandbox":"/var/run/netns/x"}],
                "ips":[{"version":"4","address":"10.1.0.5/24","interface":2}]}}"#,
        )
        .unwrap();
        assert_eq!(conf.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(conf.host_interfaces(), ["cni0", "veth1234"]);
        assert_eq!(
            conf.attach_mode().unwrap(),
            crate::datapath::AttachMode::Auto
        );
        let result: serde_json::Value = serde_json::from_str(&conf.result().unwrap()).unwrap();
        assert_eq!(result["cniVersion"], "0.4.0");
        assert_eq!(result["ips"][0]["address"], "10.1.0.5/24");
        assert_eq!(result["interfaces"][2]["sandbox"], "/var/run/netns/x");

        let error = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"k8s","type":"zonewall-cni"}"#)
            .unwrap_err();
        assert_eq!(error.code, code::INCOMPATIBLE_VERSION);
        assert_eq!(
            NetConf::parse(b"{").unwrap_err().code,
            code::DECODING_FAILURE
        );
        let first = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"k8s","type":"zonewall-cni","attachMode":"xdp"}"#,
        )
        .unwrap();
        assert_eq!(first.result().unwrap_err().code, code::INVALID_CONFIG);
        assert_eq!(first.attach_mode().unwrap_err().code, code::INVALID_CONFIG);

        let json: serde_json::Value = serde_json::from_str(&error.to_json("1.0.0")).unwrap();
        assert_eq!(json["code"], 1);
        assert_eq!(json["cniVersion"], "1.0.0");
        assert!(json["msg"].as_str().unwrap().contains("0.2.0"));
        let version: serde_json::Value = serde_json::from_str(&version_info("1.0.0")).unwrap();
        assert_eq!(version["supportedVersions"][3], "1.0.0");
        assert!(
            !NetConf::parse(br#"{"cniVersion":"0.3.1"}"#)
                .unwrap()
                .has_check()
        );
        assert!(
            NetConf::parse(br#"{"cniVersion":"0.4.0"}"#)
                .unwrap()
                .has_check()
        );
    }
}
