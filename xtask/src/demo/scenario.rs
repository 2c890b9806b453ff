//! What the demo probes and what `deploy/examples/demo.yaml` says should happen. The pods'
//! addresses come from the YAML itself ([`pods_of`]); the internet hosts are the
//! topology's first two (203.0.113.10 in zone `partner`, 198.51.100.10 in `world`).

use std::fmt;
use std::net::IpAddr;

use anyhow::{Context as _, Result, bail};
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The hosts that are not pods, in the order the topology adds them.
pub const INTERNET_HOSTS: [(&str, &str); 2] = [("partner", "partner"), ("internet", "world")];

/// The zones, in the order the summary shows them.
pub const ZONES: [&str; 5] = ["dmz", "trusted", "restricted", "partner", "world"];

/// One pod of the YAML: where it lives and its addresses (IPv4 first).
#[derive(Clone, Debug, PartialEq)]
pub struct YamlPod {
    pub name: String,
    pub namespace: String,
    pub ips: Vec<IpAddr>,
}

/// The pods of the demo, with the zone the YAML puts them in (by their namespace).
pub const PODS: [(&str, &str); 3] = [("web", "dmz"), ("app", "trusted"), ("db", "restricted")];

/// Traffic a probe sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Traffic {
    Tcp(u16),
    Udp(u16),
    Ping,
}

impl Traffic {
    /// The flow log's spelling of the protocol for the given family.
    pub fn protocol(self, v6: bool) -> &'static str {
        match self {
            Traffic::Tcp(_) => "tcp",
            Traffic::Udp(_) => "udp",
            Traffic::Ping if v6 => "icmpv6",
            Traffic::Ping => "icmp",
        }
    }

    pub fn port(self) -> Option<u16> {
        match self {
            Traffic::Tcp(port) | Traffic::Udp(port) => Some(port),
            Traffic::Ping => None,
        }
    }
}

impl fmt::Display for Traffic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Traffic::Tcp(port) => write!(formatter, "tcp/{port}"),
            Traffic::Udp(port) => write!(formatter, "udp/{port}"),
            Traffic::Ping => formatter.write_str("ping"),
        }
    }
}

/// One path the demo probes, and the verdict the policy gives it.
#[derive(Clone, Copy, Debug)]
pub struct Expectation {
    pub from: &'static str,
    pub to: &'static str,
    pub traffic: Traffic,
    pub allowed: bool,
    /// The policy that decides, or `default` for the zone defaults.
    pub policy: &'static str,
    /// The Audit-mode policy that reports the flow, if any.
    pub audit: Option<&'static str>,
}

const fn expect(
    from: &'static str,
    to: &'static str,
    traffic: Traffic,
    allowed: bool,
    policy: &'static str,
) -> Expectation {
    Expectation {
        from,
        to,
        traffic,
        allowed,
        policy,
        audit: None,
    }
}

/// Every probe, grouped by source.
pub const EXPECTATIONS: [Expectation; 14] = [
    expect(
        "partner",
        "web",
        Traffic::Tcp(8080),
        true,
        "internet-to-web",
    ),
    expect(
        "internet",
        "web",
        Traffic::Tcp(8080),
        true,
        "internet-to-web",
    ),
    expect(
        "internet",
        "app",
        Traffic::Tcp(8080),
        false,
        "default-deny-inter-zone",
    ),
    expect("web", "app", Traffic::Tcp(8080), true, "web-to-app"),
    expect(
        "web",
        "db",
        Traffic::Tcp(5432),
        false,
        "default-deny-inter-zone",
    ),
    expect(
        "web",
        "partner",
        Traffic::Tcp(443),
        false,
        "default-deny-inter-zone",
    ),
    expect("app", "db", Traffic::Tcp(5432), true, "app-to-db"),
    expect(
        "app",
        "db",
        Traffic::Udp(5432),
        false,
        "default-deny-inter-zone",
    ),
    expect("app", "db", Traffic::Ping, false, "default-deny-inter-zone"),
    Expectation {
        audit: Some("stage-cut-partner"),
        ..expect(
            "app",
            "partner",
            Traffic::Tcp(443),
            true,
            "app-to-partner-https",
        )
    },
    expect(
        "app",
        "internet",
        Traffic::Tcp(443),
        false,
        "default-deny-inter-zone",
    ),
    expect(
        "db",
        "app",
        Traffic::Tcp(8080),
        false,
        "default-deny-inter-zone",
    ),
    expect(
        "db",
        "partner",
        Traffic::Tcp(443),
        false,
        "default-deny-inter-zone",
    ),
    expect("db", "web", Traffic::Ping, false, "default-deny-inter-zone"),
];

/// The zone the scenario puts `endpoint` (a pod or internet host name) in.
pub fn zone_of(endpoint: &str) -> &'static str {
    PODS.iter()
        .chain(&INTERNET_HOSTS)
        .find(|(name, _)| *name == endpoint)
        .map(|(_, zone)| *zone)
        .unwrap_or("?")
}

/// The Pods of a multi-document policy file, with the addresses of `status.podIPs`
/// (or `status.podIP`).
pub fn pods_of(yaml: &str) -> Result<Vec<YamlPod>> {
    let mut pods = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).context("parse YAML")?;
        if value["kind"].as_str() != Some("Pod") {
            continue;
        }
        let name = value["metadata"]["name"]
            .as_str()
            .context("a Pod without metadata.name")?
            .to_string();
        let namespace = value["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let status = &value["status"];
        let texts: Vec<&str> = match status["podIPs"].as_sequence() {
            Some(entries) => entries
                .iter()
                .filter_map(|entry| entry["ip"].as_str())
                .collect(),
            None => status["podIP"].as_str().into_iter().collect(),
        };
        let mut ips = texts
            .iter()
            .map(|text| text.parse::<IpAddr>())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("Pod {namespace}/{name}: bad status.podIPs"))?;
        ips.sort_by_key(IpAddr::is_ipv6);
        ips.dedup();
        pods.push(YamlPod {
            name,
            namespace,
            ips,
        });
    }
    Ok(pods)
}

/// The IPv4 and IPv6 address of the scenario's pod `name` in `pods`.
pub fn addresses(pods: &[YamlPod], name: &str) -> Result<(std::net::Ipv4Addr, std::net::Ipv6Addr)> {
    let Some(pod) = pods.iter().find(|pod| pod.name == name) else {
        bail!("the demo needs a Pod named {name} in the policy file");
    };
    let v4 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let v6 = pod.ips.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    match (v4, v6) {
        (Some(v4), Some(v6)) => Ok((v4, v6)),
        _ => bail!(
            "Pod {}/{name} needs an IPv4 and an IPv6 address in status.podIPs",
            pod.namespace
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pods_of_the_example() {
        let yaml =
            std::fs::read_to_string(crate::workspace_root().join("deploy/examples/demo.yaml"))
                .expect("read the example");
        let pods = pods_of(&yaml).expect("parse the example");
        for (name, _) in PODS {
            let (v4, v6) = addresses(&pods, name).expect("both families");
            assert!(v4.octets()[..2] == [198, 18], "{name}: {v4}");
            assert!(v6.segments()[..2] == [0x2001, 0xdb8], "{name}: {v6}");
        }
    }

    #[test]
    fn every_endpoint_has_a_zone() {
        for expectation in EXPECTATIONS {
            assert_ne!(zone_of(expectation.from), "?");
            assert_ne!(zone_of(expectation.to), "?");
        }
    }

    #[test]
    fn pod_ip_alone_is_enough() {
        let yaml = "kind: Pod\nmetadata: {name: a}\nstatus: {podIP: 198.18.1.9}\n---\nkind: Zone\n";
        let pods = pods_of(yaml).expect("parse");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].namespace, "default");
        assert_eq!(pods[0].ips, ["198.18.1.9".parse::<IpAddr>().unwrap()]);
    }
}
