//! The agent's command line. Every flag also reads an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Host-side veth names of common CNIs.
pub const DEFAULT_INTERFACES: &str = "veth*,cali*,lxc*,gke*,eni*,azv*";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "firewall-agent",
    version,
    about = "zonewall node agent: zone policy enforced in the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Validate a policy file without touching the kernel; print zones and the matrix.
    Check {
        #[arg(long, env = "ZONEWALL_CONFIG")]
        config: PathBuf,
    },
    /// Remove every program, link and map zonewall pinned (opens the firewall).
    Detach {
        #[arg(long, env = "ZONEWALL_BPFFS", default_value = "/sys/fs/bpf/zonewall")]
        bpffs: PathBuf,
    },
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownSource {
    Deny,
    Allow,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Standalone mode: the multi-document YAML of Zones, ZonePolicies, Namespaces, Pods,
    /// Services and Nodes, re-read when it changes.
    #[arg(long, env = "ZONEWALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Comma-separated globs of host-side pod interfaces to enforce on.
    #[arg(long, env = "ZONEWALL_INTERFACES", default_value = DEFAULT_INTERFACES, value_delimiter = ',')]
    pub interfaces: Vec<String>,
    /// Flow log: a file (appended) or `-` for stdout, JSON lines.
    #[arg(long, env = "ZONEWALL_FLOW_LOG")]
    pub flow_log: Option<String>,
    /// More flow sinks, as URLs (repeat the flag; space-separated in the variable):
    /// `file:PATH?max-size=100M&keep=5`, `stdout:`, `syslog+udp://HOST:PORT`,
    /// `syslog+tcp://HOST:PORT`, `syslog+tls://HOST:PORT?ca=PEM[&cert=PEM&key=PEM]`, each
    /// with `format=json|ocsf|cef`, `fields=a,b.c`, `sample=FROM/TO=RATE,...`, `queue=N`.
    #[arg(long = "sink", env = "ZONEWALL_SINKS", value_delimiter = ' ')]
    pub sinks: Vec<String>,
    /// Prometheus metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9965).
    #[arg(long, env = "ZONEWALL_METRICS_ADDRESS")]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// bpffs folder for pinned maps and links (mounted if needed).
    #[arg(long, env = "ZONEWALL_BPFFS", default_value = "/sys/fs/bpf/zonewall")]
    pub bpffs: PathBuf,
    /// Folder on the node for what must outlive the agent besides the pins: the last
    /// accepted version of each Zone and ZonePolicy (or the last good policy file), so a
    /// restarted agent keeps enforcing them while they are invalid. Empty: keep nothing.
    #[arg(
        long,
        env = "ZONEWALL_STATE_DIR",
        default_value = "/var/lib/zonewall",
        // The path parser refuses an empty value, which here means "keep nothing".
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub state_dir: PathBuf,
    /// Verdict for traffic of a local interface whose IP the agent does not know.
    #[arg(
        long,
        env = "ZONEWALL_UNKNOWN_SOURCE",
        value_enum,
        default_value = "deny"
    )]
    pub unknown_source: UnknownSource,
    /// Written (atomically, JSON) after every applied policy generation.
    #[arg(long, env = "ZONEWALL_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    /// This node's name: pods whose spec.nodeName differs are remote.
    #[arg(long, env = "ZONEWALL_NODE_NAME")]
    pub node_name: Option<String>,
    /// Kubernetes mode (no --config): kubeconfig file(s), ':'-separated as in KUBECONFIG.
    /// Without it: the in-cluster service account, then ~/.kube/config.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<String>,
    /// Kubernetes mode: the Lease whose holder writes Zone and ZonePolicy status (one
    /// agent of the cluster at a time).
    #[arg(long, env = "ZONEWALL_STATUS_LEASE", default_value = "zonewall-status")]
    pub status_lease: String,
    /// Namespace of the status Lease (the agent's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "zonewall-system")]
    pub status_lease_namespace: String,
    /// Seconds a status writer that stopped renewing keeps the Lease.
    #[arg(long, env = "ZONEWALL_STATUS_LEASE_SECONDS", default_value_t = 15)]
    pub status_lease_seconds: u64,
    /// This agent's name as a Lease holder; default: the node name and process id.
    #[arg(long, env = "POD_NAME")]
    pub status_identity: Option<String>,
    /// How often the interfaces are checked, and the policy file as a fallback to watching
    /// its folder with inotify, in milliseconds.
    #[arg(long, env = "ZONEWALL_POLL_MS", default_value_t = 200)]
    pub poll_ms: u64,
    /// Conntrack timeouts in seconds.
    #[arg(long, env = "ZONEWALL_CT_TCP_TIMEOUT", default_value_t = 21600)]
    pub ct_tcp_timeout: u64,
    #[arg(long, env = "ZONEWALL_CT_UDP_TIMEOUT", default_value_t = 60)]
    pub ct_udp_timeout: u64,
    #[arg(long, env = "ZONEWALL_CT_ICMP_TIMEOUT", default_value_t = 30)]
    pub ct_icmp_timeout: u64,
    /// A long flow reports an update event this often, in seconds (0: never).
    #[arg(long, env = "ZONEWALL_FLOW_UPDATE_INTERVAL", default_value_t = 60)]
    pub flow_update_interval: u64,
    /// How often expired conntrack entries are removed (and their end reported), in ms.
    #[arg(long, env = "ZONEWALL_CT_GC_INTERVAL_MS", default_value_t = 2000)]
    pub ct_gc_interval_ms: u64,
    /// Deny events per source address and second; the rest are counted as suppressed.
    #[arg(long, env = "ZONEWALL_DENY_EVENTS_PER_SECOND", default_value_t = 10)]
    pub deny_events_per_second: u32,
}

impl RunArgs {
    pub fn tuning(&self) -> crate::datapath::Tuning {
        crate::datapath::Tuning {
            unknown_source_allow: self.unknown_source == UnknownSource::Allow,
            deny_events_per_window: self.deny_events_per_second,
            deny_event_window: Duration::from_secs(1),
            tcp_established_timeout: Duration::from_secs(self.ct_tcp_timeout),
            udp_timeout: Duration::from_secs(self.ct_udp_timeout),
            icmp_timeout: Duration::from_secs(self.ct_icmp_timeout),
            update_interval: Duration::from_secs(self.flow_update_interval),
            ..Default::default()
        }
    }

    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.interfaces.iter().all(|glob| glob.trim().is_empty()) {
            return Err("--interfaces is empty: name at least one glob, e.g. 'veth*'".into());
        }
        for glob in &self.interfaces {
            globset::Glob::new(glob.trim())
                .map_err(|error| format!("--interfaces: bad glob {glob:?}: {error}"))?;
        }
        if self.status_lease_seconds == 0 || self.status_lease_seconds > 3600 {
            return Err("--status-lease-seconds must be between 1 and 3600".into());
        }
        if self.poll_ms == 0 || self.poll_ms > 10_000 {
            return Err("--poll-ms must be between 1 and 10000".into());
        }
        for url in &self.sinks {
            crate::flows::SinkSpec::parse(url).map_err(|error| error.to_string())?;
        }
        if self.ct_gc_interval_ms < 100 {
            return Err("--ct-gc-interval-ms must be at least 100".into());
        }
        if self.ct_tcp_timeout == 0 || self.ct_udp_timeout == 0 || self.ct_icmp_timeout == 0 {
            return Err("conntrack timeouts must be at least 1 second".into());
        }
        Ok(())
    }
}

impl RunArgs {
    /// Every configured sink: `--flow-log` first, then each `--sink`.
    pub fn sink_specs(&self) -> Result<Vec<crate::flows::SinkSpec>, crate::flows::SinkError> {
        let mut specs = Vec::new();
        if let Some(target) = &self.flow_log {
            specs.push(crate::flows::SinkSpec::flow_log(target));
        }
        for url in self.sinks.iter().filter(|url| !url.trim().is_empty()) {
            specs.push(crate::flows::SinkSpec::parse(url.trim())?);
        }
        Ok(specs)
    }
}

impl RunArgs {
    /// How the Kubernetes source connects and who writes status; `node_name` names this
    /// agent in the status Lease when no identity is given.
    pub fn kube_options(&self, node_name: Option<&str>) -> crate::source::kube::KubeOptions {
        let kubeconfig = self
            .kubeconfig
            .iter()
            .flat_map(|paths| std::env::split_paths(paths))
            .filter(|path| !path.as_os_str().is_empty())
            .collect();
        let identity = self.status_identity.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                node_name.unwrap_or("zonewall-agent"),
                std::process::id()
            )
        });
        crate::source::kube::KubeOptions {
            kubeconfig,
            status: crate::source::kube::StatusOptions {
                lease_name: self.status_lease.clone(),
                lease_namespace: self.status_lease_namespace.clone(),
                identity,
                lease_duration: Duration::from_secs(self.status_lease_seconds),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_folder_defaults_to_var_lib_and_can_be_turned_off() {
        let parse = |arguments: &[&str]| {
            Cli::try_parse_from(std::iter::once("firewall-agent").chain(arguments.iter().copied()))
                .map(|cli| cli.run.state_dir)
        };
        assert_eq!(parse(&[]).unwrap(), PathBuf::from("/var/lib/zonewall"));
        assert_eq!(
            parse(&["--state-dir", "/tmp/state"]).unwrap(),
            PathBuf::from("/tmp/state")
        );
        assert_eq!(parse(&["--state-dir", ""]).unwrap(), PathBuf::new());
    }
}
