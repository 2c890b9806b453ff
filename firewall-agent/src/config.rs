//! The agent's command line. Every flag also reads an environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

mod first_packet;
pub use first_packet::FirstPacketArgs;

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
    /// Prometheus metrics, /healthz and /readyz on this address and port, e.g.
    /// 127.0.0.1:9965 or [2001:db8::1]:9965. Brackets are accepted around IPv4 too, so
    /// `[$(HOST_IP)]:9965` works for both families. Off by default.
    #[arg(long, env = "ZONEWALL_METRICS_ADDRESS", value_parser = parse_metrics_address)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Connections the metrics endpoint serves at once (1 to 1024); more are closed at
    /// once and counted in zonewall_metrics_connections_refused_total.
    #[arg(
        long,
        env = "ZONEWALL_METRICS_MAX_CONNECTIONS",
        default_value_t = crate::metrics::DEFAULT_MAX_CONNECTIONS
    )]
    pub metrics_max_connections: usize,
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
    #[arg(long, env = "ZONEWALL_CT_TCP_TIMEOUT", default_value_t = firewall_common::CtTimeout::TcpEstablished.default_secs())]
    pub ct_tcp_timeout: u64,
    #[arg(long, env = "ZONEWALL_CT_UDP_TIMEOUT", default_value_t = firewall_common::CtTimeout::Udp.default_secs())]
    pub ct_udp_timeout: u64,
    #[arg(long, env = "ZONEWALL_CT_ICMP_TIMEOUT", default_value_t = firewall_common::CtTimeout::Icmp.default_secs())]
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
    /// How programs are hooked to pod interfaces: `auto` uses TCX links and falls back to
    /// a clsact qdisc with TC filters where the kernel has no TCX (before 6.6); `tcx` and
    /// `tc` force one of them.
    #[arg(long, env = "ZONEWALL_ATTACH_MODE", value_enum, default_value = "auto")]
    pub attach_mode: crate::datapath::AttachMode,
    /// Entries of the ENDPOINTS map (one per pod address). Map sizes apply when the maps
    /// are first pinned; a pinned map keeps its size until `firewall-agent detach`.
    #[arg(long, env = "ZONEWALL_MAX_ENDPOINTS", default_value_t = firewall_common::ENDPOINTS_MAX_ENTRIES)]
    pub max_endpoints: u32,
    /// Entries of the NETWORKS map (one per CIDR of a zone).
    #[arg(long, env = "ZONEWALL_MAX_NETWORKS", default_value_t = firewall_common::NETWORKS_MAX_ENTRIES)]
    pub max_networks: u32,
    /// Entries of the POLICY map (it holds two generations of rules during an update).
    #[arg(long, env = "ZONEWALL_MAX_POLICY", default_value_t = firewall_common::POLICY_MAX_ENTRIES)]
    pub max_policy: u32,
    /// Entries of the CONNTRACK map (an LRU: when full, the least recently used
    /// connection is forgotten).
    #[arg(long, env = "ZONEWALL_MAX_CONNTRACK", default_value_t = firewall_common::CONNTRACK_MAX_ENTRIES)]
    pub max_conntrack: u32,
    #[command(flatten)]
    pub first_packet: FirstPacketArgs,
}

/// The largest map size the flags accept: beyond it a map costs gigabytes of kernel memory.
const MAX_MAP_ENTRIES: u32 = 1 << 24;

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

    /// The map sizes asked for on the command line.
    pub fn map_sizes(&self) -> crate::datapath::MapSizes {
        crate::datapath::MapSizes {
            endpoints: self.max_endpoints,
            networks: self.max_networks,
            policy: self.max_policy,
            conntrack: self.max_conntrack,
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
        for (flag, entries) in [
            ("--max-endpoints", self.max_endpoints),
            ("--max-networks", self.max_networks),
            ("--max-policy", self.max_policy),
            ("--max-conntrack", self.max_conntrack),
        ] {
            if entries == 0 || entries > MAX_MAP_ENTRIES {
                return Err(format!(
                    "{flag} must be between 1 and {MAX_MAP_ENTRIES}, not {entries}"
                ));
            }
        }
        if self.ct_tcp_timeout == 0 || self.ct_udp_timeout == 0 || self.ct_icmp_timeout == 0 {
            return Err("conntrack timeouts must be at least 1 second".into());
        }
        self.first_packet.uplink_globs()?;
        if !(1..=MAX_METRICS_CONNECTIONS).contains(&self.metrics_max_connections) {
            return Err(format!(
                "--metrics-max-connections must be between 1 and {MAX_METRICS_CONNECTIONS}"
            ));
        }
        Ok(())
    }

    /// Limits of the metrics endpoint: the configured connection count, fixed deadlines.
    pub fn metrics_limits(&self) -> crate::metrics::ServeLimits {
        crate::metrics::ServeLimits {
            max_connections: self.metrics_max_connections,
            ..Default::default()
        }
    }
}

/// Highest --metrics-max-connections: each connection may hold a task and a file
/// descriptor for up to the endpoint's deadlines.
const MAX_METRICS_CONNECTIONS: usize = 1024;

/// `IP:PORT`, `[IPv6]:PORT`, or `[IPv4]:PORT`: the last so that one template filled from
/// the downward API (`[$(HOST_IP)]:9965`) is valid on IPv4 and IPv6 nodes alike.
fn parse_metrics_address(text: &str) -> Result<std::net::SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<std::net::SocketAddr>() {
        return Ok(address);
    }
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("]:"))
        .and_then(|(ip, port)| {
            Some((
                ip.parse::<std::net::IpAddr>().ok()?,
                port.parse::<u16>().ok()?,
            ))
        });
    match unbracketed {
        Some((ip, port)) => Ok(std::net::SocketAddr::new(ip, port)),
        None => Err(format!(
            "{text:?} is not an address and port: write 127.0.0.1:9965, [2001:db8::1]:9965 or [198.18.0.1]:9965"
        )),
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

    fn run_args(extra: &[&str]) -> Result<RunArgs, clap::Error> {
        let mut arguments = vec!["firewall-agent", "--config", "policy.yaml"];
        arguments.extend(extra);
        Cli::try_parse_from(arguments).map(|cli| cli.run)
    }

    #[test]
    fn the_metrics_address_takes_brackets_around_either_family() {
        for (given, wanted) in [
            ("127.0.0.1:9965", "127.0.0.1:9965"),
            ("[198.18.0.1]:9965", "198.18.0.1:9965"),
            ("[2001:db8::1]:9965", "[2001:db8::1]:9965"),
            (" 0.0.0.0:1 ", "0.0.0.0:1"),
        ] {
            let args = run_args(&["--metrics-address", given]).expect(given);
            assert_eq!(
                args.metrics_address,
                Some(wanted.parse().unwrap()),
                "{given}"
            );
        }
        for wrong in [
            "2001:db8::1:9965",
            "[$(HOST_IP)]:9965",
            "[198.18.0.1]",
            "198.18.0.1",
            "[198.18.0.1]:70000",
            "node-1:9965",
            "",
        ] {
            let error = run_args(&["--metrics-address", wrong])
                .expect_err(wrong)
                .to_string();
            assert!(error.contains("--metrics-address"), "{wrong}: {error}");
        }
    }

    #[test]
    fn the_metrics_connection_limit_is_checked_at_start() {
        let args = run_args(&[]).unwrap();
        assert_eq!(
            args.metrics_max_connections,
            crate::metrics::DEFAULT_MAX_CONNECTIONS
        );
        assert!(args.validate().is_ok());
        assert_eq!(
            args.metrics_limits().max_connections,
            crate::metrics::DEFAULT_MAX_CONNECTIONS
        );
        for wrong in ["0", "1025"] {
            let error = run_args(&["--metrics-max-connections", wrong])
                .unwrap()
                .validate()
                .expect_err(wrong);
            assert!(error.contains("--metrics-max-connections"), "{error}");
        }
        assert!(run_args(&["--metrics-max-connections", "-1"]).is_err());
        assert!(
            run_args(&["--metrics-max-connections", "1024"])
                .unwrap()
                .validate()
                .is_ok()
        );
    }

    fn parsed(args: &[&str]) -> RunArgs {
        let mut argv = vec!["firewall-agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).expect("flags parse").run
    }

    #[test]
    fn map_sizes_and_attach_mode_come_from_the_flags_and_are_checked() {
        let defaults = parsed(&[]);
        assert_eq!(defaults.attach_mode, crate::datapath::AttachMode::Auto);
        assert_eq!(
            defaults.map_sizes().endpoints,
            firewall_common::ENDPOINTS_MAX_ENTRIES
        );
        assert!(defaults.validate().is_ok());

        let small = parsed(&["--max-endpoints", "8", "--attach-mode", "tc"]);
        assert_eq!(small.map_sizes().endpoints, 8);
        assert_eq!(small.attach_mode, crate::datapath::AttachMode::Tc);
        assert!(small.validate().is_ok());

        for flag in [
            "--max-endpoints",
            "--max-networks",
            "--max-policy",
            "--max-conntrack",
        ] {
            let error = parsed(&[flag, "0"]).validate().unwrap_err();
            assert!(error.contains(flag), "{error}");
            let error = parsed(&[flag, "100000000"]).validate().unwrap_err();
            assert!(error.contains(flag), "{error}");
        }
        assert!(Cli::try_parse_from(["firewall-agent", "--attach-mode", "xdp"]).is_err());
    }

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
