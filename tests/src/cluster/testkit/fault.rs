//! Faults between the nodes and the control plane:
//!
//! - [`Partition`]: a node cut off from the API server (an nftables table in the node's
//!   namespace resets every packet to it, open connections included), healed on drop;
//! - the API server restarted with flags of the test's choosing (e.g. without its watch
//!   cache, so a compaction of etcd reaches the watches);
//! - the API server's audit log of Zone and ZonePolicy status writes and Lease updates:
//!   who wrote, from which address.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::cluster::{APISERVER_IP, APISERVER_PORT, Cluster};
use crate::topology::Netns;

/// Status writes and Lease updates, at the level that names who wrote from where.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    verbs: [create, update, patch]
    resources:
      - group: zonewall.dev
        resources: [zones/status, zonepolicies/status]
      - group: coordination.k8s.io
        resources: [leases]
  - level: None
";

/// The nftables table of a partition.
const PARTITION_TABLE: &str = "zonewall-test-partition";

/// Node `node` cannot reach the API server while this lives.
pub struct Partition {
    netns: String,
    pub node: usize,
}

impl Partition {
    fn nft(&self, args: &[&str]) -> Result<()> {
        let netns = Netns::adopt(&self.netns);
        let mut command = vec!["nft"];
        command.extend_from_slice(args);
        let result = netns.run(&command).map(drop);
        // The guard only borrowed the name: the node owns the namespace.
        netns.keep();
        result
    }

    /// Reconnects the node.
    pub fn heal(self) -> Result<()> {
        let result = self.nft(&["delete", "table", "ip", PARTITION_TABLE]);
        std::mem::forget(self);
        result
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(error) = self.nft(&["delete", "table", "ip", PARTITION_TABLE]) {
            eprintln!("warning: healing a partition: {error:#}");
        }
    }
}

impl Cluster {
    /// Cuts node `node` off from the API server: every packet its programs send there is
    /// answered with a reset (new connections are refused, open ones, watches included,
    /// end at once). Healed when the guard is dropped or [`Partition::heal`]ed.
    pub fn partition(&self, node: usize) -> Result<Partition> {
        let partition = Partition {
            netns: self.nodes[node].netns.name().to_string(),
            node,
        };
        let rule =
            format!("ip daddr {APISERVER_IP} tcp dport {APISERVER_PORT} reject with tcp reset");
        partition.nft(&["add", "table", "ip", PARTITION_TABLE])?;
        partition.nft(&[
            "add",
            "chain",
            "ip",
            PARTITION_TABLE,
            "output",
            "{ type filter hook output priority 0; policy accept; }",
        ])?;
        partition.nft(&["add", "rule", "ip", PARTITION_TABLE, "output", &rule])?;
        // An idle watch sends nothing the rule could answer: end those now.
        self.cut_watches(node)?;
        Ok(partition)
    }

    /// Stops the API server (its graceful shutdown waits for open watches: it gets 2 s,
    /// then SIGKILL), adds `args` to its command line and starts it again; waits until
    /// it is ready. (`ClusterOptions::apiserver_args` is not passed to the API server.)
    pub fn restart_apiserver_with(&mut self, args: &[String]) -> Result<()> {
        self.apiserver.stop(Duration::from_secs(2));
        self.apiserver
            .recipe
            .args
            .extend(args.iter().map(Into::into));
        self.apiserver.resume()?;
        self.wait_apiserver_ready(Duration::from_secs(90))
    }
}

/// The API server's audit log of what the status tests look at: writes of Zone and
/// ZonePolicy status and of Leases. Its policy and log live in a folder of its own; the
/// API server writes it once started with [`AuditLog::apiserver_args`]
/// ([`Cluster::restart_apiserver_with`]).
pub struct AuditLog {
    pub path: PathBuf,
    policy: PathBuf,
    _folder: tempfile::TempDir,
}

/// One write the audit log recorded.
#[derive(Clone, Debug)]
pub struct Write {
    /// The first source address of the request.
    pub source: Option<IpAddr>,
    pub user: String,
    pub verb: String,
    /// `zones`, `zonepolicies`, `leases`.
    pub resource: String,
    pub subresource: String,
    pub name: String,
    pub code: i64,
}

impl AuditLog {
    /// Writes the audit policy; the log is written by the API server it is given to.
    pub fn new() -> Result<Self> {
        let folder = tempfile::Builder::new()
            .prefix("zonewall-audit-")
            .tempdir()
            .context("a folder for the audit log")?;
        let policy = folder.path().join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).context("writing the audit policy")?;
        Ok(Self {
            path: folder.path().join("audit.log"),
            policy,
            _folder: folder,
        })
    }

    /// The kube-apiserver flags that write this log.
    pub fn apiserver_args(&self) -> Vec<String> {
        vec![
            format!("--audit-policy-file={}", self.policy.display()),
            format!("--audit-log-path={}", self.path.display()),
            "--audit-log-format=json".into(),
            "--audit-log-mode=blocking".into(),
        ]
    }

    /// Every write recorded so far, oldest first.
    pub fn writes(&self) -> Vec<Write> {
        std::fs::read_to_string(&self.path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|event| Write {
                source: event["sourceIPs"][0]
                    .as_str()
                    .and_then(|text| text.parse().ok()),
                user: event["user"]["username"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                verb: event["verb"].as_str().unwrap_or_default().into(),
                resource: event["objectRef"]["resource"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                subresource: event["objectRef"]["subresource"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                name: event["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
                code: event["responseStatus"]["code"].as_i64().unwrap_or(0),
            })
            .collect()
    }

    /// The successful writes of Zone and ZonePolicy status, oldest first.
    pub fn status_writes(&self) -> Vec<Write> {
        self.writes()
            .into_iter()
            .filter(|write| write.subresource == "status" && write.code < 300)
            .collect()
    }
}
