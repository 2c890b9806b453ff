//! Compiler tests of the POLICY partition: the fewest blocks per protocol, the painter,
//! priorities, port ranges, audit marks, defaults and wildcards, each checked by lookups.

use firewall_common::{FIRST_USER_RULE_ID, RULE_DEFAULT_INTER_DENY, RULE_DEFAULT_INTRA_ALLOW};

use super::*;
use crate::policy::compile::partition::{Painter, fewest_blocks};
use crate::policy::compiled::PolicyEntry;
use crate::policy::load::{load_str, parse};

/// What a longest-prefix lookup of `port` finds among `blocks`, else `inherited`.
fn lookup_blocks(
    blocks: &[(u32, u32, PolicyValue)],
    inherited: PolicyValue,
    port: u32,
) -> PolicyValue {
    blocks
        .iter()
        .filter(|(start, bits, _)| port >> bits == start >> bits)
        .min_by_key(|(_, bits, _)| *bits)
        .map_or(inherited, |(_, _, value)| *value)
}

#[test]
fn fewest_blocks_nest_exceptions_inside_a_wider_block() {
    let (pair, rule_a, rule_b) = (deny(RULE_DEFAULT_INTER_DENY), allow(70), deny(71));
    let single = [(0, 442, pair), (443, 443, rule_a), (444, 65_535, pair)];
    assert_eq!(fewest_blocks(&single, pair), [(443, 0, rule_a)]);
    // The same port when the protocol's background differs from the pair entry: one
    // entry for the protocol, one for the port.
    let other = [(0, 442, rule_b), (443, 443, rule_a), (444, 65_535, rule_b)];
    assert_eq!(
        fewest_blocks(&other, pair),
        [(0, 16, rule_b), (443, 0, rule_a)]
    );
    assert_eq!(fewest_blocks(&[(0, 65_535, pair)], pair), []);
    assert_eq!(
        fewest_blocks(&[(0, 65_535, rule_a)], pair),
        [(0, 16, rule_a)]
    );
}

#[test]
fn fewest_blocks_match_every_port_and_beat_a_flat_partition() {
    let values = [
        deny(RULE_DEFAULT_INTER_DENY),
        allow(70),
        allow(71),
        deny(72),
    ];
    let mut seed = 0x1234_5678u32;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..300 {
        // Random cut points, random values, neighbours merged as the compiler does.
        let mut cuts: Vec<u32> = (0..next() % 12).map(|_| 1 + next() % 65_535).collect();
        if next() % 4 == 0 {
            let port = next() % 65_535;
            cuts.extend([port, port + 1]);
        }
        cuts.push(0);
        cuts.sort_unstable();
        cuts.dedup();
        let mut segments: Vec<(u32, u32, PolicyValue)> = Vec::new();
        for (index, start) in cuts.iter().enumerate() {
            let end = cuts.get(index + 1).map_or(65_535, |next| next - 1);
            let value = values[next() as usize % values.len()];
            match segments.last_mut() {
                Some(last) if last.2 == value => last.1 = end,
                _ => segments.push((*start, end, value)),
            }
        }
        let inherited = values[next() as usize % values.len()];
        let blocks = fewest_blocks(&segments, inherited);
        for (start, end, value) in &segments {
            let mut probes = vec![*start, *end, (start + end) / 2];
            probes.extend((0..8).map(|_| start + next() % (end - start + 1)));
            for port in probes {
                assert_eq!(
                    lookup_blocks(&blocks, inherited, port),
                    *value,
                    "port {port} of {segments:?}: {blocks:?}"
                );
            }
        }
        // Every block is aligned and distinct.
        let mut seen = std::collections::BTreeSet::new();
        for (start, bits, _) in &blocks {
            assert_eq!(start % (1 << bits), 0, "aligned");
            assert!(seen.insert((*start, *bits)), "one entry per prefix");
        }
        // Never more entries than the flat partition into aligned blocks.
        let flat: usize = segments
            .iter()
            .filter(|_| !(segments.len() == 1 && segments[0].2 == inherited))
            .map(|(start, end, _)| flat_blocks(*start, *end))
            .sum();
        assert!(blocks.len() <= flat, "{} > {flat}", blocks.len());
    }
}

/// How many aligned power-of-two blocks exactly cover `start..=end`.
fn flat_blocks(mut start: u32, end: u32) -> usize {
    let mut count = 0;
    while start <= end {
        let mut bits = if start == 0 {
            16
        } else {
            start.trailing_zeros().min(16)
        };
        while start + (1 << bits) - 1 > end {
            bits -= 1;
        }
        count += 1;
        start += 1 << bits;
    }
    count
}

#[test]
fn painter_gives_each_port_to_the_first_policy() {
    let mut painter = Painter::new();
    assert!(painter.paint(100, 200, 0));
    assert!(painter.paint(150, 300, 1));
    assert!(!painter.paint(120, 180, 2));
    assert!(painter.paint(0, 65_535, 3));
    assert!(painter.is_full());
    assert_eq!(
        painter.finish(),
        [
            (0, 99, Some(3)),
            (100, 200, Some(0)),
            (201, 300, Some(1)),
            (301, 65_535, Some(3)),
        ]
    );
    let mut painter = Painter::new();
    painter.paint(5, 5, 0);
    assert_eq!(
        painter.finish(),
        [(0, 4, None), (5, 5, Some(0)), (6, 65_535, None)]
    );
}

const EDGE_PORTS: [u16; 17] = [
    0, 1, 2, 52, 53, 54, 79, 80, 81, 442, 443, 444, 8079, 8080, 8090, 8091, 65_535,
];

#[test]
fn port_ranges_and_protocols_follow_priority() {
    let yaml = yaml_zones(&["dmz", "db"])
        + &yaml_policy(
            "web",
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 10\n  ports:\n    - {protocol: TCP, port: 443}\n    - {protocol: TCP, port: 8080, endPort: 8090}\n    - {protocol: UDP, port: 53}\n    - {protocol: ICMP}",
        )
        + &yaml_policy(
            "no-8085",
            "  from: [dmz]\n  to: [db]\n  action: Deny\n  priority: 5\n  ports: [{protocol: TCP, port: 8085}]",
        )
        + &yaml_policy(
            "sctp-all",
            "  from: [dmz]\n  to: [db]\n  action: Allow\n  priority: 20\n  ports: [{protocol: SCTP}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set);
    assert_unique_keys(&compiled);
    let mut ports = EDGE_PORTS.to_vec();
    ports.extend([8084, 8085, 8086]);
    assert_agrees(&set, &compiled, &ports);

    let (dmz, db) = (id(&compiled, "dmz"), id(&compiled, "db"));
    let web = FIRST_USER_RULE_ID + 2;
    let no_8085 = FIRST_USER_RULE_ID;
    assert_eq!(lookup(&compiled, dmz, db, 6, 443), allow(web));
    assert_eq!(lookup(&compiled, dmz, db, 6, 8085), deny(no_8085));
    assert_eq!(lookup(&compiled, dmz, db, 6, 8090), allow(web));
    assert_eq!(
        lookup(&compiled, dmz, db, 6, 8091),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    assert_eq!(lookup(&compiled, dmz, db, 17, 53), allow(web));
    assert_eq!(lookup(&compiled, dmz, db, 1, 0), allow(web));
    assert_eq!(
        lookup(&compiled, dmz, db, 58, 0),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    assert_eq!(
        lookup(&compiled, dmz, db, 132, 0),
        allow(FIRST_USER_RULE_ID + 1)
    );
    assert_eq!(
        lookup(&compiled, db, dmz, 6, 443),
        deny(RULE_DEFAULT_INTER_DENY)
    );

    let pair: Vec<&PolicyEntry> = compiled
        .entries
        .iter()
        .filter(|entry| entry.src_zone == dmz && entry.dst_zone == db)
        .collect();
    let pair_level: Vec<_> = pair
        .iter()
        .filter(|entry| entry.prefix_len == POLICY_PREFIX_PAIR)
        .collect();
    assert_eq!(pair_level.len(), 1);
    assert_eq!(pair_level[0].value, deny(RULE_DEFAULT_INTER_DENY));
    let icmp: Vec<_> = pair.iter().filter(|entry| entry.proto == 1).collect();
    assert_eq!(icmp.len(), 1);
    assert_eq!((icmp[0].prefix_len, icmp[0].port), (POLICY_PREFIX_PROTO, 0));
    let sctp: Vec<_> = pair.iter().filter(|entry| entry.proto == 132).collect();
    assert_eq!(sctp.len(), 1, "a constant protocol is one /112 entry");
    assert_eq!(pair.iter().filter(|entry| entry.proto == 58).count(), 0);
    // Only the pair some policy covers has entries.
    assert!(
        compiled
            .entries
            .iter()
            .all(|entry| entry.src_zone == dmz && entry.dst_zone == db)
    );
}

#[test]
fn every_port_of_a_partition_matches_the_ranking() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "p1",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 3\n  ports: [{protocol: TCP, port: 1000, endPort: 2000}, {protocol: TCP, port: 3}]",
        )
        + &yaml_policy(
            "p2",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 2\n  ports: [{protocol: TCP, port: 1500, endPort: 1501}]",
        )
        + &yaml_policy(
            "p3",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 4\n  mode: Audit\n  ports: [{protocol: TCP, port: 1, endPort: 65535}]",
        )
        + &yaml_policy(
            "p4",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 4\n  mode: Audit\n  ports: [{protocol: TCP, port: 1999, endPort: 2001}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set);
    assert_unique_keys(&compiled);
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let lpm = Lpm::new(&compiled);
    for port in 0..=65_535u16 {
        let value = lpm.lookup(a, b, 6, port);
        let (verdict, rule, audit) = naive(&set, "a", "b", 6, port);
        assert_eq!(
            (value.verdict, rule_name(&compiled, value.rule)),
            (verdict, rule),
            "port {port}"
        );
        assert_eq!(
            (value.audit == 1).then(|| rule_name(&compiled, value.audit_rule)),
            audit
        );
    }
    assert_eq!(
        lookup(&compiled, a, b, 6, 0),
        deny(RULE_DEFAULT_INTER_DENY),
        "port 0 is outside 1..=65535"
    );
}

#[test]
fn protocols_equal_to_the_pair_entry_are_skipped() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "all",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 1",
        )
        + &yaml_policy(
            "shadowed",
            "  from: [a]\n  to: [b]\n  action: Deny\n  priority: 2\n  ports: [{protocol: TCP, port: 22}, {protocol: ICMP}]",
        );
    let compiled = load_str(&yaml).unwrap();
    assert_eq!(compiled.entries.len(), 1, "{:?}", compiled.entries);
    assert_eq!(compiled.entries[0].value, allow(FIRST_USER_RULE_ID));
    assert_eq!(
        texts(&compiled.warnings),
        [
            "ZonePolicy/shadowed never decides any traffic: policies ranked before it (lower \
         priority, or equal priority and a smaller name) cover everything it matches",
        ]
    );
}

#[test]
fn priority_ties_are_broken_by_name() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy("b-allow", "  from: [a]\n  to: [b]\n  action: Allow")
        + &yaml_policy("a-deny", "  from: [a]\n  to: [b]\n  action: Deny")
        + &yaml_policy(
            "c-allow",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 999",
        );
    let compiled = load_str(&yaml).unwrap();
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let value = lookup(&compiled, a, b, 6, 80);
    assert_eq!(rule_name(&compiled, value.rule), "c-allow");
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy("b-allow", "  from: [a]\n  to: [b]\n  action: Allow")
        + &yaml_policy("a-deny", "  from: [a]\n  to: [b]\n  action: Deny");
    let compiled = load_str(&yaml).unwrap();
    let value = lookup(&compiled, a, b, 6, 80);
    assert_eq!(rule_name(&compiled, value.rule), "a-deny");
    assert_eq!(value.verdict, VERDICT_DENY);
}

#[test]
fn intra_zone_defaults_and_overrides() {
    let yaml = yaml_zones(&["a"])
        + &yaml_policy(
            "lock-a",
            "  from: [a]\n  to: [a]\n  action: Deny\n  ports: [{protocol: TCP, port: 22}]",
        );
    let compiled = load_str(&yaml).unwrap();
    let a = id(&compiled, "a");
    assert_eq!(lookup(&compiled, a, a, 6, 22), deny(FIRST_USER_RULE_ID));
    assert_eq!(
        lookup(&compiled, a, a, 6, 23),
        allow(RULE_DEFAULT_INTRA_ALLOW)
    );
    assert_eq!(
        lookup(&compiled, a, a, 17, 22),
        allow(RULE_DEFAULT_INTRA_ALLOW)
    );
    let pair_entry = compiled
        .entries
        .iter()
        .find(|entry| entry.prefix_len == POLICY_PREFIX_PAIR)
        .unwrap();
    assert_eq!(pair_entry.value, allow(RULE_DEFAULT_INTRA_ALLOW));
}

#[test]
fn audit_marks_without_changing_the_enforced_verdict() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "allow-all",
            "  from: [a]\n  to: [b]\n  action: Allow\n  priority: 100",
        )
        + &yaml_policy(
            "stage-deny-ssh",
            "  from: [a]\n  to: [b]\n  action: Deny\n  mode: Audit\n  priority: 50\n  ports: [{protocol: TCP, port: 22}]",
        )
        + &yaml_policy(
            "stage-deny-late",
            "  from: [a]\n  to: [b]\n  action: Deny\n  mode: Audit\n  priority: 200\n  ports: [{protocol: TCP, port: 80}]",
        )
        + &yaml_policy(
            "stage-allow",
            "  from: [b]\n  to: [a]\n  action: Allow\n  mode: Audit",
        )
        + &yaml_policy(
            "stage-deny-b",
            "  from: [b]\n  to: [b]\n  action: Deny\n  mode: Audit",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set);
    assert_agrees(&set, &compiled, &[0, 21, 22, 23, 80, 443]);
    let (a, b) = (id(&compiled, "a"), id(&compiled, "b"));
    let allow_all = FIRST_USER_RULE_ID;
    let stage_deny_b = FIRST_USER_RULE_ID + 2;
    let stage_deny_ssh = FIRST_USER_RULE_ID + 4;
    // Audit deny ranked before the enforced allow: marked.
    assert_eq!(
        lookup(&compiled, a, b, 6, 22),
        audited(allow_all, stage_deny_ssh)
    );
    // Audit deny ranked after the enforced allow: the allow decides both ways.
    assert_eq!(lookup(&compiled, a, b, 6, 80), allow(allow_all));
    assert_eq!(lookup(&compiled, a, b, 17, 22), allow(allow_all));
    // An Audit allow never opens anything.
    assert_eq!(
        lookup(&compiled, b, a, 6, 22),
        deny(RULE_DEFAULT_INTER_DENY)
    );
    // Audit deny over the intra-zone default allow.
    assert_eq!(
        lookup(&compiled, b, b, 17, 53),
        audited(RULE_DEFAULT_INTRA_ALLOW, stage_deny_b)
    );
    assert!(
        compiled.warnings.iter().any(|warning| warning
            .to_string()
            .contains("stage-deny-late never decides")),
        "{:?}",
        compiled.warnings
    );
    assert!(
        !compiled
            .warnings
            .iter()
            .any(|warning| warning.to_string().contains("stage-allow ")),
        "{:?}",
        compiled.warnings
    );
}

#[test]
fn wildcards_expand_to_every_zone_including_reserved() {
    let yaml = yaml_zones(&["a", "b"])
        + &yaml_policy(
            "to-b",
            "  from: [\"*\"]\n  to: [b]\n  action: Allow\n  ports: [{protocol: TCP, port: 443}]",
        )
        + &yaml_policy(
            "a-out",
            "  from: [a]\n  to: [\"*\", world]\n  action: Allow\n  ports: [{protocol: UDP, port: 53}]",
        );
    let set = parse(&yaml).unwrap();
    let compiled = compile(&set);
    assert_unique_keys(&compiled);
    assert_agrees(&set, &compiled, &EDGE_PORTS);
    let b = id(&compiled, "b");
    let a = id(&compiled, "a");
    for source in ["world", "unzoned", "host", "a", "b"] {
        let source = id(&compiled, source);
        assert_eq!(
            lookup(&compiled, source, b, 6, 443),
            allow(FIRST_USER_RULE_ID + 1)
        );
        assert!(
            compiled
                .entries
                .iter()
                .any(|entry| entry.src_zone == source && entry.dst_zone == b)
        );
    }
    for destination in ["world", "unzoned", "host", "a", "b"] {
        let destination = id(&compiled, destination);
        assert_eq!(
            lookup(&compiled, a, destination, 17, 53),
            allow(FIRST_USER_RULE_ID)
        );
    }
    let pairs: std::collections::BTreeSet<(u32, u32)> = compiled
        .entries
        .iter()
        .map(|entry| (entry.src_zone, entry.dst_zone))
        .collect();
    assert_eq!(pairs.len(), 5 + 5 - 1);

    let any = load_str(
        &(yaml_zones(&["a"])
            + &yaml_policy("any", "  from: [\"*\"]\n  to: [\"*\"]\n  action: Deny")),
    )
    .unwrap();
    assert_eq!(
        any.entries.len(),
        16,
        "every pair of 4 zones, one entry each"
    );
    assert!(
        any.entries
            .iter()
            .all(|entry| entry.value == deny(FIRST_USER_RULE_ID))
    );
}
