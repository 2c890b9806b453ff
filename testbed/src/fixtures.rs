//! Policy files shared by the tests: the same zones the demo shows.

/// dmz (web namespace), trusted (app), restricted (db), a CIDR zone `partners`
/// (203.0.113.0/24, 2001:db8:ffff::/48); dmz -> trusted TCP 8080 allowed; trusted ->
/// partners TCP 443 and ICMP allowed.
pub const THREE_ZONES: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {tier: dmz}}
---
apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {tier: trusted}}
---
apiVersion: v1
kind: Namespace
metadata: {name: db, labels: {tier: restricted}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: web}
status: {podIP: 198.18.0.10, podIPs: [{ip: 198.18.0.10}, {ip: "2001:db8::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: web}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: app-1, namespace: app}
status: {podIP: 198.18.0.20, podIPs: [{ip: 198.18.0.20}, {ip: "2001:db8::20"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db-1, namespace: db}
status: {podIP: 198.18.0.30}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: dmz}
spec: {namespaceSelector: {matchLabels: {tier: dmz}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: trusted}
spec: {namespaceSelector: {matchLabels: {tier: trusted}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: restricted}
spec: {namespaceSelector: {matchLabels: {tier: restricted}}}
---
apiVersion: zonewall.dev/v1alpha1
kind: Zone
metadata: {name: partners}
spec: {networks: [203.0.113.0/24, "2001:db8:ffff::/48"]}
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: dmz-to-trusted-http}
spec:
  from: [dmz]
  to: [trusted]
  ports: [{protocol: TCP, port: 8080}]
  action: Allow
---
apiVersion: zonewall.dev/v1alpha1
kind: ZonePolicy
metadata: {name: trusted-to-partners}
spec:
  from: [trusted]
  to: [partners]
  ports: [{protocol: TCP, port: 443}, {protocol: ICMP}, {protocol: ICMPv6}]
  action: Allow
"#;

/// Builds a standalone policy file for pods of a test topology: each pod lives in a
/// namespace named after its zone (labelled `zone: <zone>`), each zone selects its
/// namespace, and `extra` (Zones with networks, ZonePolicies) is appended as is.
#[derive(Clone)]
pub struct PolicyFile {
    documents: Vec<String>,
    zones: std::collections::BTreeSet<String>,
}

impl Default for PolicyFile {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyFile {
    pub fn new() -> Self {
        Self {
            documents: Vec::new(),
            zones: Default::default(),
        }
    }

    /// A pod named `name` in zone `zone` with these addresses.
    pub fn pod(mut self, name: &str, zone: &str, ips: &[std::net::IpAddr]) -> Self {
        if self.zones.insert(zone.to_owned()) {
            self.documents.push(format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {zone}\n  labels:\n    zone: {zone}\n"
            ));
            self.documents.push(format!(
                "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata:\n  name: {zone}\nspec:\n  namespaceSelector:\n    matchLabels:\n      zone: {zone}\n"
            ));
        }
        let pod_ips: Vec<String> = ips.iter().map(|ip| format!("    - ip: \"{ip}\"")).collect();
        self.documents.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {zone}\n  uid: uid-{name}\n  labels:\n    app: {name}\n    pod-template-hash: 7f9c\n  ownerReferences:\n  - {{apiVersion: apps/v1, kind: ReplicaSet, name: {name}-7f9c, uid: rs-{name}, controller: true}}\nstatus:\n  podIP: \"{}\"\n  podIPs:\n{}\n",
            ips[0],
            pod_ips.join("\n")
        ));
        self
    }

    /// Appends raw YAML documents.
    pub fn extra(mut self, yaml: &str) -> Self {
        self.documents.push(yaml.trim().to_owned() + "\n");
        self
    }

    pub fn build(&self) -> String {
        self.documents.join("---\n")
    }
}

/// A ZonePolicy document.
/// The policy most lab tests start from: dmz may reach trusted on TCP 8080.
pub fn dmz_to_trusted_http() -> String {
    zone_policy(
        "dmz-to-trusted",
        "dmz",
        "trusted",
        "[{protocol: TCP, port: 8080}]",
        "Allow",
        "",
    )
}

pub fn zone_policy(
    name: &str,
    from: &str,
    to: &str,
    ports: &str,
    action: &str,
    extra: &str,
) -> String {
    let ports = if ports.is_empty() {
        String::new()
    } else {
        format!("  ports: {ports}\n")
    };
    format!(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata:\n  name: {name}\nspec:\n  from: [{from}]\n  to: [{to}]\n{ports}  action: {action}\n{extra}"
    )
}
