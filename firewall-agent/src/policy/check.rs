//! `firewall-agent check`: a [`CompiledPolicy`] as a security engineer reads it. Zones
//! with their members, the compiler's warnings, the zone-to-zone matrix and, per zone
//! pair a policy covers, which rule decides which traffic. Everything is derived from
//! the compiled entries (what the kernel will do), not from the input.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use firewall_common::{
    POLICY_PREFIX_PAIR, POLICY_PREFIX_PROTO, PolicyValue, RULE_DEFAULT_INTER_DENY,
    RULE_DEFAULT_INTRA_ALLOW, VERDICT_ALLOW, VERDICT_DENY,
};

use super::compiled::{CompiledPolicy, EndpointKind, PolicyEntry, ZoneInfo};
use super::model::Protocol;

/// Members listed per zone before the rest is counted.
const MEMBERS_SHOWN: usize = 5;
/// Matrix cells longer than this are cut; the per-pair section has the details.
const CELL_WIDTH: usize = 36;

/// Renders zones, warnings, the matrix and the per-pair decisions.
pub fn render_check(compiled: &CompiledPolicy) -> String {
    let mut out = String::new();
    let zones = ordered_zones(compiled);
    render_zones(compiled, &zones, &mut out);
    render_warnings(compiled, &mut out);

    let mut by_pair: BTreeMap<(u32, u32), Vec<&PolicyEntry>> = BTreeMap::new();
    for entry in &compiled.entries {
        by_pair
            .entry((entry.src_zone, entry.dst_zone))
            .or_default()
            .push(entry);
    }
    let views: BTreeMap<(u32, u32), PairView> = by_pair
        .iter()
        .map(|(pair, entries)| (*pair, PairView::new(entries)))
        .collect();
    render_matrix(&zones, &views, &mut out);
    render_pairs(compiled, &zones, &views, &mut out);
    out
}

/// Reserved zones first (world, unzoned, host), then user zones by name.
fn ordered_zones(compiled: &CompiledPolicy) -> Vec<&ZoneInfo> {
    let mut zones: Vec<&ZoneInfo> = compiled.zones.values().collect();
    zones.sort_by(|left, right| {
        (
            !left.reserved,
            if left.reserved { left.id } else { 0 },
            &left.name,
        )
            .cmp(&(
                !right.reserved,
                if right.reserved { right.id } else { 0 },
                &right.name,
            ))
    });
    zones
}

fn render_zones(compiled: &CompiledPolicy, zones: &[&ZoneInfo], out: &mut String) {
    let mut nodes: Vec<&str> = compiled
        .endpoints
        .values()
        .filter_map(|endpoint| match &endpoint.kind {
            EndpointKind::Node { name } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    nodes.sort_unstable();
    nodes.dedup();

    let rows: Vec<[String; 3]> = zones
        .iter()
        .map(|zone| {
            let mut members = Vec::new();
            if zone.reserved {
                members.push(match zone.name.as_str() {
                    "world" => "reserved: any address in no zone".to_string(),
                    "unzoned" => "reserved: pods in no zone".to_string(),
                    _ => "reserved: node addresses".to_string(),
                });
            }
            if !zone.networks.is_empty() {
                let networks: Vec<String> = zone.networks.iter().map(ToString::to_string).collect();
                members.push(format!("networks {}", networks.join(", ")));
            }
            if !zone.members.is_empty() {
                members.push(listing(&zone.members, "pod", "pods"));
            }
            if zone.id == firewall_common::ZONE_HOST && !nodes.is_empty() {
                members.push(listing(&nodes, "node", "nodes"));
            }
            if members.is_empty() {
                members.push("no members".to_string());
            }
            [zone.name.clone(), zone.id.to_string(), members.join("; ")]
        })
        .collect();
    let _ = writeln!(out, "Zones ({})", zones.len());
    let name_width = rows
        .iter()
        .map(|row| row[0].len())
        .max()
        .unwrap_or(0)
        .max(4);
    let id_width = rows
        .iter()
        .map(|row| row[1].len())
        .max()
        .unwrap_or(0)
        .max(2);
    let _ = writeln!(
        out,
        "  {:name_width$}  {:>id_width$}  MEMBERS",
        "NAME", "ID"
    );
    for [name, id, members] in rows {
        let _ = writeln!(out, "  {name:name_width$}  {id:>id_width$}  {members}");
    }
}

/// "3 pods: a, b, c" with at most `MEMBERS_SHOWN` names.
fn listing<T: AsRef<str>>(names: &[T], one: &str, many: &str) -> String {
    let noun = if names.len() == 1 { one } else { many };
    let shown: Vec<&str> = names
        .iter()
        .take(MEMBERS_SHOWN)
        .map(AsRef::as_ref)
        .collect();
    let more = names.len().saturating_sub(MEMBERS_SHOWN);
    let tail = if more > 0 {
        format!(", and {more} more")
    } else {
        String::new()
    };
    format!("{} {noun}: {}{tail}", names.len(), shown.join(", "))
}

fn render_warnings(compiled: &CompiledPolicy, out: &mut String) {
    let _ = writeln!(out, "\nWarnings ({})", compiled.warnings.len());
    if compiled.warnings.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for warning in &compiled.warnings {
        let _ = writeln!(out, "  - {warning}");
    }
}

/// Ports `start..=end` and what they get.
type Segment = (u32, u32, PolicyValue);

/// What a pair's entries decide, per protocol, as the kernel's lookup sees it.
struct PairView {
    /// The pair-level entry: every protocol without entries of its own.
    other: PolicyValue,
    /// Protocols with entries: (protocol number, sorted segments covering 0..=65535).
    protocols: Vec<(u8, Vec<Segment>)>,
}

impl PairView {
    fn new(entries: &[&PolicyEntry]) -> Self {
        let other = entries
            .iter()
            .find(|entry| entry.prefix_len == POLICY_PREFIX_PAIR)
            .map(|entry| entry.value)
            .unwrap_or_default();
        let mut by_protocol: BTreeMap<u8, Vec<&PolicyEntry>> = BTreeMap::new();
        for entry in entries {
            if entry.prefix_len >= POLICY_PREFIX_PROTO {
                by_protocol.entry(entry.proto).or_default().push(entry);
            }
        }
        let mut protocols: Vec<(u8, Vec<Segment>)> = by_protocol
            .into_iter()
            .map(|(protocol, entries)| (protocol, segments(&entries, other)))
            .collect();
        // The order policies are written in: TCP, UDP, SCTP, ICMP, ICMPv6, then others.
        protocols.sort_by_key(|(number, _)| {
            let position = Protocol::ALL
                .iter()
                .position(|protocol| protocol.number() == *number);
            (position.unwrap_or(Protocol::ALL.len()), *number)
        });
        PairView { other, protocols }
    }

    /// Whether the defaults decide all of the pair's traffic (the policies covering it
    /// change nothing), so it reads like a pair no policy covers.
    fn only_defaults(&self) -> bool {
        let is_default = |value: &PolicyValue| {
            value.audit == 0
                && (value.rule == RULE_DEFAULT_INTRA_ALLOW || value.rule == RULE_DEFAULT_INTER_DENY)
        };
        is_default(&self.other)
            && self
                .protocols
                .iter()
                .all(|(_, segments)| segments.iter().all(|segment| is_default(&segment.2)))
    }

    /// Whether any traffic of the pair is allowed with the audit flag.
    fn any_audit(&self) -> bool {
        self.other.audit == 1
            || self
                .protocols
                .iter()
                .any(|(_, segments)| segments.iter().any(|segment| segment.2.audit == 1))
    }
}

/// Ports covered by an entry of one protocol.
fn entry_range(entry: &PolicyEntry) -> (u32, u32) {
    let bits = (entry.prefix_len - POLICY_PREFIX_PROTO).min(16);
    let size = 1u32 << (16 - bits);
    let start = u32::from(entry.port) & !(size - 1);
    (start, start + size - 1)
}

/// Evaluates a protocol's entries by longest prefix over its whole port space.
fn segments(entries: &[&PolicyEntry], other: PolicyValue) -> Vec<Segment> {
    let mut starts: Vec<u32> = vec![0];
    for entry in entries {
        let (start, end) = entry_range(entry);
        starts.push(start);
        if end < 65_535 {
            starts.push(end + 1);
        }
    }
    starts.sort_unstable();
    starts.dedup();
    let mut result: Vec<Segment> = Vec::new();
    for (index, start) in starts.iter().enumerate() {
        let end = starts.get(index + 1).map_or(65_535, |next| next - 1);
        let value = entries
            .iter()
            .filter(|entry| {
                let (low, high) = entry_range(entry);
                low <= *start && *start <= high
            })
            .max_by_key(|entry| entry.prefix_len)
            .map_or(other, |entry| entry.value);
        match result.last_mut() {
            Some(last) if last.2 == value => last.1 = end,
            _ => result.push((*start, end, value)),
        }
    }
    result
}

fn protocol_name(number: u8) -> String {
    firewall_common::protocol_name(number).map_or_else(|| format!("proto {number}"), str::to_string)
}

fn port_range(start: u32, end: u32) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// `tcp/443,8080-8090 udp/53 icmp` for the segments that satisfy `keep`; `other` is
/// added when the pair-level value satisfies it.
fn traffic_list(view: &PairView, keep: impl Fn(&PolicyValue) -> bool) -> Vec<String> {
    let mut parts = Vec::new();
    for (protocol, segments) in &view.protocols {
        let mut ranges: Vec<(u32, u32)> = Vec::new();
        for (start, end, value) in segments {
            if !keep(value) {
                continue;
            }
            match ranges.last_mut() {
                Some(last) if last.1 + 1 == *start => last.1 = *end,
                _ => ranges.push((*start, *end)),
            }
        }
        if ranges.is_empty() {
            continue;
        }
        let name = protocol_name(*protocol);
        let whole = ranges == [(0, 65_535)];
        let has_ports = Protocol::from_number(*protocol).is_some_and(Protocol::has_ports);
        if whole || !has_ports {
            parts.push(name);
        } else {
            let ranges: Vec<String> = ranges
                .iter()
                .map(|(start, end)| port_range(*start, *end))
                .collect();
            parts.push(format!("{name}/{}", ranges.join(",")));
        }
    }
    if keep(&view.other) {
        parts.push("other".to_string());
    }
    parts
}

fn verdict_word(verdict: u8) -> &'static str {
    match verdict {
        VERDICT_ALLOW => "allow",
        VERDICT_DENY => "deny",
        _ => "?",
    }
}

/// The matrix cell of a pair covered by policies.
fn summarize(view: &PairView) -> String {
    let base = view.other.verdict;
    let exceptions: Vec<String> = traffic_list(view, |value| value.verdict != base)
        .into_iter()
        .filter(|part| part != "other")
        .collect();
    let mut cell = if exceptions.is_empty() {
        verdict_word(base).to_string()
    } else if base == VERDICT_DENY {
        format!("allow {}", exceptions.join(" "))
    } else {
        format!("allow except {}", exceptions.join(" "))
    };
    if view.any_audit() {
        let audited = traffic_list(view, |value| value.audit == 1);
        let allowed = traffic_list(view, |value| value.verdict == VERDICT_ALLOW);
        if audited == allowed {
            cell.push_str(" (audit: would deny)");
        } else {
            let _ = write!(cell, " (audit: would deny {})", audited.join(" "));
        }
    }
    cell
}

fn default_verdict(source: u32, destination: u32) -> &'static str {
    if source == destination {
        "allow"
    } else {
        "deny"
    }
}

fn render_matrix(zones: &[&ZoneInfo], views: &BTreeMap<(u32, u32), PairView>, out: &mut String) {
    let _ = writeln!(out, "\nZone matrix (rows: from, columns: to)");
    let corner = "from \\ to";
    let mut cells: Vec<Vec<String>> = Vec::new();
    for source in zones {
        let mut row = vec![source.name.clone()];
        for destination in zones {
            let cell = match views.get(&(source.id, destination.id)) {
                Some(view) if !view.only_defaults() => summarize(view),
                _ => format!("[{}]", default_verdict(source.id, destination.id)),
            };
            row.push(shorten(&cell));
        }
        cells.push(row);
    }
    let mut widths: Vec<usize> = Vec::new();
    let header: Vec<String> = std::iter::once(corner.to_string())
        .chain(zones.iter().map(|zone| zone.name.clone()))
        .collect();
    for column in 0..header.len() {
        let width = cells
            .iter()
            .map(|row| row[column].chars().count())
            .chain(std::iter::once(header[column].chars().count()))
            .max()
            .unwrap_or(0);
        widths.push(width);
    }
    let line = |row: &[String]| {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("  {}", padded.join(" | ").trim_end())
    };
    let _ = writeln!(out, "{}", line(&header));
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let _ = writeln!(out, "  {}", rule.join("-+-"));
    for row in &cells {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(
        out,
        "\n  allow / deny: all traffic; \"allow tcp/443 udp/53\": only that is allowed; \
         \"allow except tcp/22\": all but that is allowed;\n  \"(audit: would deny ...)\": \
         allowed, but an Audit policy would deny it; [allow] / [deny]: the default decides \
         all of the pair's traffic."
    );
}

fn shorten(cell: &str) -> String {
    if cell.chars().count() <= CELL_WIDTH {
        return cell.to_string();
    }
    let cut: String = cell.chars().take(CELL_WIDTH - 1).collect();
    format!("{cut}…")
}

fn rule_name(compiled: &CompiledPolicy, rule: u32) -> String {
    compiled
        .rules
        .get(&rule)
        .map_or_else(|| format!("rule {rule}"), |info| info.name.clone())
}

fn describe_value(compiled: &CompiledPolicy, value: &PolicyValue) -> String {
    let kind = if value.rule == RULE_DEFAULT_INTRA_ALLOW || value.rule == RULE_DEFAULT_INTER_DENY {
        "default"
    } else {
        "policy"
    };
    let mut text = format!(
        "{:<5}  {kind} {}",
        verdict_word(value.verdict),
        rule_name(compiled, value.rule)
    );
    if value.audit == 1 {
        let _ = write!(
            text,
            "  (audit: {} would deny)",
            rule_name(compiled, value.audit_rule)
        );
    }
    text
}

fn render_pairs(
    compiled: &CompiledPolicy,
    zones: &[&ZoneInfo],
    views: &BTreeMap<(u32, u32), PairView>,
    out: &mut String,
) {
    let _ = writeln!(
        out,
        "\nDecisions by zone pair (other pairs follow the defaults: allow within a zone, deny \
         between zones)"
    );
    let views: BTreeMap<&(u32, u32), &PairView> = views
        .iter()
        .filter(|(_, view)| !view.only_defaults())
        .collect();
    if views.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let position: BTreeMap<u32, usize> = zones
        .iter()
        .enumerate()
        .map(|(index, zone)| (zone.id, index))
        .collect();
    let name = |id: u32| {
        position
            .get(&id)
            .map_or_else(|| format!("zone {id}"), |index| zones[*index].name.clone())
    };
    let mut pairs: Vec<&(u32, u32)> = views.keys().copied().collect();
    pairs.sort_by_key(|(source, destination)| {
        (
            position.get(source).copied().unwrap_or(usize::MAX),
            position.get(destination).copied().unwrap_or(usize::MAX),
        )
    });
    for pair in pairs {
        let view = views[pair];
        let _ = writeln!(out, "  {} -> {}", name(pair.0), name(pair.1));
        let mut lines: Vec<(String, String)> = Vec::new();
        for (protocol, segments) in &view.protocols {
            for (start, end, value) in segments {
                if *value == view.other {
                    continue;
                }
                let traffic = match (start, end) {
                    (0, 65_535) => protocol_name(*protocol),
                    _ => format!("{}/{}", protocol_name(*protocol), port_range(*start, *end)),
                };
                lines.push((traffic, describe_value(compiled, value)));
            }
        }
        lines.push((
            "everything else".to_string(),
            describe_value(compiled, &view.other),
        ));
        let width = lines
            .iter()
            .map(|(traffic, _)| traffic.len())
            .max()
            .unwrap_or(0);
        for (traffic, decision) in lines {
            let _ = writeln!(out, "    {traffic:width$}  {decision}");
        }
    }
}

#[cfg(test)]
mod tests;
