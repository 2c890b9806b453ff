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
