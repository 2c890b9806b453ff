//! A policy change reaches packets all at once or not at all, and tracked connections
//! never outlive the owners of their addresses, whatever user space manages to do:
//!
//! - an apply that fails half-way (a map too small) leaves every verdict as it was:
//!   identities (ENDPOINTS, NETWORKS) are double-buffered with the policy, so nothing a
//!   failed write touched is live;
//! - a connection tracked for an address's previous owner is not trusted once the address
//!   has a new owner, even when the entry is still there (the agent crashed or lagged
//!   before removing it): the datapath compares the owners' epochs itself.
//!
//! Verdicts through BPF_PROG_TEST_RUN on the real programs.

use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use firewall_agent::datapath::{DatapathError, MapSizes, Tuning};
use firewall_common::*;
use zonewall_tests::kernel::{DROP, Kernel, PASS, privileged, test_run_bindings};
use zonewall_tests::packet::{ACK, SYN, Spec};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Namespaces `ns-a`, `ns-b`, `ns-c` whose label `tier` names their zone (`labels` gives
/// each namespace's tier), pods `(name, namespace, uid, ip)`, CIDR zones and policies.
fn world(
    labels: [&str; 3],
    pods: &[(&str, &str, &str, &str)],
    networks: &[(&str, &str)],
    policies: &str,
) -> String {
    let mut yaml = String::new();
    for (namespace, tier) in ["ns-a", "ns-b", "ns-c"].iter().zip(labels) {
        yaml += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {{tier: {tier}}}}}\n---\n"
        );
    }
    for zone in ["za", "zb", "zc"] {
        yaml += &format!(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {zone}}}\nspec: {{namespaceSelector: {{matchLabels: {{tier: {zone}}}}}}}\n---\n"
        );
    }
    for (zone, cidr) in networks {
        yaml += &format!(
            "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {{name: {zone}}}\nspec: {{networks: [\"{cidr}\"]}}\n---\n"
        );
    }
    for (name, namespace, uid, address) in pods {
        yaml += &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, uid: {uid}}}\nstatus: {{podIP: \"{address}\"}}\n---\n"
        );
    }
    yaml + policies
}

fn allow(name: &str, from: &str, to: &str, port: u16) -> String {
    format!(
        "apiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec: {{from: [{from}], to: [{to}], ports: [{{protocol: TCP, port: {port}}}], action: Allow}}\n---\n"
    )
}

/// The verdict of a new TCP connection for every (source, destination, port) asked.
fn verdicts(
    kernel: &mut Kernel,
    sources: &[IpAddr],
    destinations: &[IpAddr],
    ports: &[u16],
) -> Vec<(IpAddr, IpAddr, u16, i32)> {
    let mut seen = Vec::new();
    let mut local_port = 30_000;
    for source in sources {
        for destination in destinations {
            for port in ports {
                local_port += 1;
                let frame = Spec::tcp(*source, *destination, local_port, *port, SYN).frame();
                seen.push((
                    *source,
                    *destination,
                    *port,
                    kernel.run(PROG_FROM_POD, &frame),
                ));
            }
        }
        kernel.datapath.flush_conntrack().unwrap();
    }
    seen
}

#[test]
fn an_apply_that_fails_half_way_changes_no_verdict() {
    if !privileged("an_apply_that_fails_half_way_changes_no_verdict") {
        return;
    }
    // Room for the first policy's pods and one more address, no more.
    let mut kernel = Kernel::load_with(MapSizes {
        endpoints: 5,
        networks: 64,
        policy: 4096,
        conntrack: 4096,
    });
    let pods = [
        ("a1", "ns-a", "u-a1", "198.18.0.1"),
        ("a2", "ns-a", "u-a2", "198.18.0.2"),
        ("b1", "ns-b", "u-b1", "198.18.0.3"),
        ("c1", "ns-c", "u-c1", "198.18.0.4"),
    ];
    let before_yaml = world(
        ["za", "zb", "zc"],
        &pods,
        &[("partners", "203.0.113.0/24")],
        &(allow("a-to-b", "za", "zb", 80) + &allow("a-to-partners", "za", "partners", 443)),
    );
    kernel.apply(&before_yaml);
    let sources: Vec<IpAddr> = pods.iter().map(|pod| ip(pod.3)).collect();
    let mut destinations = sources.clone();
    destinations.extend([ip("203.0.113.9"), ip("203.0.113.200"), ip("198.51.100.1")]);
    let ports = [80, 443, 22];
    let before = verdicts(&mut kernel, &sources, &destinations, &ports);
    assert!(before.iter().any(|verdict| verdict.3 == PASS));
    assert!(before.iter().any(|verdict| verdict.3 == DROP));

    // Every namespace changes zone, the rules change, the CIDR zones change (a more
    // specific prefix, another zone for the partner range), and two pods more than the
    // map holds arrive: the write fails part-way.
    let mut more = pods.to_vec();
    more.push(("a3", "ns-a", "u-a3", "198.18.0.5"));
    more.push(("a4", "ns-a", "u-a4", "198.18.0.6"));
    let after_yaml = world(
        ["zc", "za", "zb"],
        &more,
        &[
            ("partners", "203.0.113.0/25"),
            ("elsewhere", "203.0.113.0/24"),
        ],
        &(allow("c-to-a", "zc", "za", 22) + &allow("b-to-elsewhere", "zb", "elsewhere", 443)),
    );
    let compiled = firewall_agent::policy::load_str(&after_yaml).unwrap();
    let bindings = test_run_bindings(&compiled);
    match kernel
        .datapath
        .sync(&compiled, &Tuning::default(), |_| true, &bindings)
    {
        Err(DatapathError::MapFull { name, .. }) => assert_eq!(name, MAP_ENDPOINTS),
        other => panic!("the sync should have failed on a full ENDPOINTS map: {other:?}"),
    }
    let after = verdicts(&mut kernel, &sources, &destinations, &ports);
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(
            old, new,
            "a failed apply changed a verdict (source, destination, port, verdict)"
        );
    }

    // And a successful apply afterwards switches everything together.
    let fits = world(
        ["zc", "za", "zb"],
        &pods,
        &[
            ("partners", "203.0.113.0/25"),
            ("elsewhere", "203.0.113.0/24"),
        ],
        &(allow("c-to-a", "zc", "za", 22) + &allow("b-to-elsewhere", "zb", "elsewhere", 443)),
    );
    kernel.apply(&fits);
    let switched = verdicts(&mut kernel, &sources, &destinations, &ports);
    let verdict_of = |list: &[(IpAddr, IpAddr, u16, i32)], from: &str, to: &str, port: u16| {
        list.iter()
            .find(|verdict| verdict.0 == ip(from) && verdict.1 == ip(to) && verdict.2 == port)
            .map(|verdict| verdict.3)
            .unwrap()
    };
    // a1 (now zc) -> b1 (now za) on 22: allowed by c-to-a; on 80 no longer.
    assert_eq!(verdict_of(&switched, "198.18.0.1", "198.18.0.3", 22), PASS);
    assert_eq!(verdict_of(&switched, "198.18.0.1", "198.18.0.3", 80), DROP);
    // c1 (now zb) -> the /24 outside the /25 is "elsewhere": 443 allowed.
    assert_eq!(
        verdict_of(&switched, "198.18.0.4", "203.0.113.200", 443),
        PASS
    );
    assert_eq!(
        verdict_of(&switched, "198.18.0.4", "203.0.113.9", 443),
        DROP
    );
}

#[test]
fn a_connection_of_an_address_s_previous_owner_is_not_trusted() {
    if !privileged("a_connection_of_an_address_s_previous_owner_is_not_trusted") {
        return;
    }
    let mut kernel = Kernel::load();
    let server = ("server", "ns-b", "u-server", "198.18.0.9");
    let first = world(
        ["za", "zb", "zc"],
        &[("client", "ns-a", "u-client-1", "198.18.0.1"), server],
        &[],
        &allow("a-to-b", "za", "zb", 443),
    );
    kernel.apply(&first);
    let client = ip("198.18.0.1");
    let server_ip = ip(server.3);
    let open = Spec::tcp(client, server_ip, 41000, 443, SYN).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &open), PASS, "a -> b:443");
    let data = Spec::tcp(client, server_ip, 41000, 443, ACK).frame();
    assert_eq!(kernel.run(PROG_FROM_POD, &data), PASS, "tracked");

    // The agent's view: the tracked entries, as they are now.
    let conntrack_path = kernel.datapath.pin_dir().join(MAP_CONNTRACK);
    let open_conntrack = || -> HashMap<MapData, CtKey, CtValue> {
        HashMap::try_from(Map::LruHashMap(MapData::from_pin(&conntrack_path).unwrap())).unwrap()
    };
    let entries: Vec<(CtKey, CtValue)> = open_conntrack().iter().map(Result::unwrap).collect();
    assert_eq!(entries.len(), 1);

    // The client pod is gone; another pod, in a zone that may not reach the server, gets
    // its address. The sync removes the old entry; put it back, as if the agent had died
    // right after switching identities and before removing connections.
    let second = world(
        ["za", "zb", "zc"],
        &[("intruder", "ns-c", "u-intruder", "198.18.0.1"), server],
        &[],
        &allow("a-to-b", "za", "zb", 443),
    );
    kernel.apply(&second);
    let mut conntrack = open_conntrack();
    for (key, value) in &entries {
        conntrack.insert(key, value, 0).unwrap();
    }
    let mismatches = kernel.counter(COUNTER_CT_EPOCH_MISMATCH);
    assert_eq!(
        kernel.run(PROG_FROM_POD, &data),
        DROP,
        "the new owner of the address used the old owner's connection"
    );
    assert_eq!(kernel.counter(COUNTER_CT_EPOCH_MISMATCH), mismatches + 1);
    // The same for the other direction (the server answering the old connection is now
    // a new connection from zb to zc, which no policy allows).
    for (key, value) in &entries {
        conntrack.insert(key, value, 0).unwrap();
    }
    let reply = Spec::tcp(server_ip, client, 443, 41000, ACK).frame();
    assert_eq!(
        kernel.run(PROG_FROM_POD, &reply),
        DROP,
        "reply to the old owner"
    );
}
