//! What each zone pair gets: rule ids, the policies ranked, and the POLICY LPM
//! partition.
//!
//! For every zone pair some policy covers, one entry at `POLICY_PREFIX_PAIR` holds the
//! decision for protocols no policy names; for every protocol a policy names whose
//! decision differs from that, port blocks (aligned powers of two, `POLICY_PREFIX_PROTO +
//! k` bits) cover all of 0..=65535, so a longest-prefix lookup of (src zone, dst zone,
//! protocol, port) returns exactly what ranking the policies would.
//!
//! Policies are grouped by zone pair first (exact pairs, `*` on one side, `*` on both) so
//! the work per pair is the policies that cover it, not all of them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use firewall_common::{
    FIRST_USER_RULE_ID, POLICY_PREFIX_PAIR, POLICY_PREFIX_PROTO, PolicyValue,
    RULE_DEFAULT_INTER_DENY, RULE_DEFAULT_INTRA_ALLOW, RULE_FRAGMENT, RULE_NONE, RULE_SPOOFED,
    RULE_UNKNOWN_SOURCE, VERDICT_ALLOW, VERDICT_DENY,
};

use crate::policy::compiled::{PolicyEntry, RuleInfo, Subject, Warning, ZoneInfo};
use crate::policy::model::{ANY_ZONE, Action, Mode, PolicySet, Protocol, ZonePolicy};

/// Port space of TCP, UDP and SCTP: 0..=65535 (port 0 included, as any port).
const PORT_SPACE_END: u32 = 65_535;

/// The POLICY entries of `input` over `zones`; fills `rules`, and warns about every
/// policy that never decides anything.
pub(super) fn entries(
    input: &PolicySet,
    zones: &BTreeMap<String, ZoneInfo>,
    rules: &mut BTreeMap<u32, RuleInfo>,
    warnings: &mut Vec<Warning>,
) -> Vec<PolicyEntry> {
    let prepared = prepare_policies(input, zones, rules);
    let mut decided = vec![false; prepared.len()];
    let entries = compile_entries(&prepared, zones, &mut decided);
    for (policy, decided) in prepared.iter().zip(decided) {
        if !decided {
            warnings.push(Warning::object(
                Subject::ZonePolicy,
                &policy.name,
                "",
                "never decides any traffic: policies ranked before it (lower priority, or \
                 equal priority and a smaller name) cover everything it matches",
            ));
        }
    }
    entries
}

/// One policy, ready for evaluation. Ranked: index 0 is evaluated first.
struct Prepared {
    name: String,
    rule: u32,
    verdict: u8,
    enforce: bool,
    /// No `ports`: every protocol, every port.
    all_traffic: bool,
    /// Port ranges per protocol (indexed like `Protocol::ALL`); empty: protocol not named.
    ranges: [Vec<(u32, u32)>; 5],
    from: Side,
    to: Side,
}

enum Side {
    Any,
    Zones(Vec<u32>),
}

fn protocol_index(protocol: Protocol) -> usize {
    // The variants follow firewall-common's PROTOCOLS table (asserted in `model`).
    protocol as usize
}

/// Rule ids (by name) and the ranked list of policies; fills `rules`.
fn prepare_policies(
    input: &PolicySet,
    zones: &BTreeMap<String, ZoneInfo>,
    rules: &mut BTreeMap<u32, RuleInfo>,
) -> Vec<Prepared> {
    for (id, name, action) in [
        (
            RULE_DEFAULT_INTRA_ALLOW,
            "default-allow-intra-zone",
            "Allow",
        ),
        (RULE_DEFAULT_INTER_DENY, "default-deny-inter-zone", "Deny"),
        (RULE_UNKNOWN_SOURCE, "unknown-source", "Configured"),
        (RULE_FRAGMENT, "fragment", "Deny"),
        (RULE_SPOOFED, "spoofed-source", "Deny"),
    ] {
        rules.insert(
            id,
            RuleInfo {
                name: name.to_string(),
                action: action.to_string(),
                mode: Mode::Enforce.as_str().to_string(),
                // Defaults apply after every policy.
                priority: i64::MAX,
            },
        );
    }

    let mut by_name: Vec<&ZonePolicy> = input.policies.iter().collect();
    by_name.sort_by(|left, right| left.name.cmp(&right.name));
    let side = |names: &[String]| {
        if names.iter().any(|name| name == ANY_ZONE) {
            return Side::Any;
        }
        let mut ids: Vec<u32> = names
            .iter()
            .filter_map(|name| zones.get(name).map(|zone| zone.id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Side::Zones(ids)
    };
    let mut prepared = Vec::with_capacity(by_name.len());
    for (index, policy) in by_name.iter().enumerate() {
        let rule = FIRST_USER_RULE_ID + index as u32;
        rules.insert(
            rule,
            RuleInfo {
                name: policy.name.clone(),
                action: policy.action.as_str().to_string(),
                mode: policy.mode.as_str().to_string(),
                priority: i64::from(policy.priority),
            },
        );
        let mut ranges: [Vec<(u32, u32)>; 5] = Default::default();
        for port_rule in &policy.ports {
            let range = match (
                port_rule.protocol.has_ports(),
                port_rule.port,
                port_rule.end_port,
            ) {
                (true, Some(port), end) => (port as u32, end.unwrap_or(port) as u32),
                _ => (0, PORT_SPACE_END),
            };
            ranges[protocol_index(port_rule.protocol)].push(range);
        }
        prepared.push((
            policy.priority,
            Prepared {
                name: policy.name.clone(),
                rule,
                verdict: match policy.action {
                    Action::Allow => VERDICT_ALLOW,
                    Action::Deny => VERDICT_DENY,
                },
                enforce: policy.mode == Mode::Enforce,
                all_traffic: policy.ports.is_empty(),
                ranges,
                from: side(&policy.from),
                to: side(&policy.to),
            },
        ));
    }
    // Rank: priority, then name (the list is in name order and the sort is stable).
    prepared.sort_by_key(|(priority, _)| *priority);
    prepared.into_iter().map(|(_, policy)| policy).collect()
}

/// Policies (as rank indices, ascending) grouped by the zone pairs they cover.
#[derive(Default)]
struct PairIndex {
    exact: HashMap<(u32, u32), Vec<u32>>,
    any_source: HashMap<u32, Vec<u32>>,
    any_destination: HashMap<u32, Vec<u32>>,
    any_pair: Vec<u32>,
}

impl PairIndex {
    fn new(policies: &[Prepared]) -> Self {
        let mut index = PairIndex::default();
        for (rank, policy) in policies.iter().enumerate() {
            let rank = rank as u32;
            match (&policy.from, &policy.to) {
                (Side::Any, Side::Any) => index.any_pair.push(rank),
                (Side::Any, Side::Zones(destinations)) => {
                    for destination in destinations {
                        index.any_source.entry(*destination).or_default().push(rank);
                    }
                }
                (Side::Zones(sources), Side::Any) => {
                    for source in sources {
                        index.any_destination.entry(*source).or_default().push(rank);
                    }
                }
                (Side::Zones(sources), Side::Zones(destinations)) => {
                    for source in sources {
                        for destination in destinations {
                            index
                                .exact
                                .entry((*source, *destination))
                                .or_default()
                                .push(rank);
                        }
                    }
                }
            }
        }
        index
    }

    /// Every pair at least one policy covers.
    fn pairs(&self, all_zones: &[u32]) -> BTreeSet<(u32, u32)> {
        let mut pairs = BTreeSet::new();
        if !self.any_pair.is_empty() {
            for source in all_zones {
                for destination in all_zones {
                    pairs.insert((*source, *destination));
                }
            }
            return pairs;
        }
        pairs.extend(self.exact.keys().copied());
        for destination in self.any_source.keys() {
            pairs.extend(all_zones.iter().map(|source| (*source, *destination)));
        }
        for source in self.any_destination.keys() {
            pairs.extend(all_zones.iter().map(|destination| (*source, *destination)));
        }
        pairs
    }

    /// The four sorted rank lists that apply to a pair.
    fn lists(&self, source: u32, destination: u32) -> [&[u32]; 4] {
        [
            self.exact
                .get(&(source, destination))
                .map_or(&[][..], Vec::as_slice),
            self.any_source
                .get(&destination)
                .map_or(&[][..], Vec::as_slice),
            self.any_destination
                .get(&source)
                .map_or(&[][..], Vec::as_slice),
            &self.any_pair,
        ]
    }
}

fn compile_entries(
    policies: &[Prepared],
    zones: &BTreeMap<String, ZoneInfo>,
    decided: &mut [bool],
) -> Vec<PolicyEntry> {
    let index = PairIndex::new(policies);
    let mut all_zones: Vec<u32> = zones.values().map(|zone| zone.id).collect();
    all_zones.sort_unstable();
    let pairs: Vec<(u32, u32)> = index.pairs(&all_zones).into_iter().collect();
    // Pairs are independent: compile contiguous runs of them on every core and
    // concatenate in pair order, so the result does not depend on the thread count.
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, 8);
    let chunk = pairs.len().div_ceil(threads).max(PAIRS_PER_THREAD);
    let compile_run = |run: &[(u32, u32)]| {
        let mut entries = Vec::new();
        let mut winners = Vec::new();
        for (source, destination) in run {
            compile_pair(
                policies,
                &index,
                *source,
                *destination,
                &mut winners,
                &mut entries,
            );
        }
        (entries, winners)
    };
    let results: Vec<(Vec<PolicyEntry>, Vec<usize>)> = if pairs.len() <= chunk {
        vec![compile_run(&pairs)]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = pairs
                .chunks(chunk)
                .map(|run| scope.spawn(|| compile_run(run)))
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("a pair compiler thread panicked"))
                .collect()
        })
    };
    let mut entries = Vec::with_capacity(results.iter().map(|(entries, _)| entries.len()).sum());
    for (run, winners) in results {
        entries.extend(run);
        for rank in winners {
            decided[rank] = true;
        }
    }
    entries
}

/// Below this many pairs per thread, starting threads costs more than it saves.
const PAIRS_PER_THREAD: usize = 256;

/// One pair's entries, sorted by (prefix length, protocol, port), appended to `entries`.
fn compile_pair(
    policies: &[Prepared],
    index: &PairIndex,
    source: u32,
    destination: u32,
    winners: &mut Vec<usize>,
    entries: &mut Vec<PolicyEntry>,
) {
    let mut pair = PairCompiler::new(policies);
    let mut cursors = [0usize; 4];
    let lists = index.lists(source, destination);
    // Merge the four sorted lists in rank order; stop once nothing later can matter.
    while !pair.complete() {
        let next = (0..4)
            .filter(|list| cursors[*list] < lists[*list].len())
            .min_by_key(|list| lists[*list][cursors[*list]]);
        let Some(list) = next else {
            break;
        };
        pair.add(lists[list][cursors[list]] as usize);
        cursors[list] += 1;
    }
    let first = entries.len();
    pair.emit(source, destination, winners, entries);
    entries[first..].sort_unstable_by_key(|entry| (entry.prefix_len, entry.proto, entry.port));
}

/// First-come painting of the port space: each port goes to the first (best ranked)
/// policy that covers it.
pub(super) struct Painter {
    /// Unclaimed ranges, start -> end (inclusive).
    free: BTreeMap<u32, u32>,
    /// Claimed ranges: (start, end, rank).
    claimed: Vec<(u32, u32, usize)>,
}

impl Painter {
    pub(super) fn new() -> Self {
        Painter {
            free: BTreeMap::from([(0, PORT_SPACE_END)]),
            claimed: Vec::new(),
        }
    }

    /// Claims the unclaimed part of `low..=high` for `rank`; whether it claimed anything.
    pub(super) fn paint(&mut self, low: u32, high: u32, rank: usize) -> bool {
        let mut painted = false;
        // The free range containing `low`, if any, then every one starting inside.
        let first = self
            .free
            .range(..=low)
            .next_back()
            .filter(|(_, end)| **end >= low)
            .map(|(start, _)| *start)
            .unwrap_or(low);
        let overlapping: Vec<(u32, u32)> = self
            .free
            .range(first..=high)
            .map(|(start, end)| (*start, *end))
            .collect();
        for (start, end) in overlapping {
            self.free.remove(&start);
            if start < low {
                self.free.insert(start, low - 1);
            }
            if end > high {
                self.free.insert(high + 1, end);
            }
            self.claimed.push((start.max(low), end.min(high), rank));
            painted = true;
        }
        painted
    }

    pub(super) fn is_full(&self) -> bool {
        self.free.is_empty()
    }

    /// The whole port space as sorted (start, end, winner) segments.
    pub(super) fn finish(self) -> Vec<(u32, u32, Option<usize>)> {
        let mut segments: Vec<(u32, u32, Option<usize>)> = self
            .claimed
            .into_iter()
            .map(|(start, end, rank)| (start, end, Some(rank)))
            .chain(self.free.into_iter().map(|(start, end)| (start, end, None)))
            .collect();
        segments.sort_unstable_by_key(|segment| segment.0);
        segments
    }
}

/// The decision of one zone pair, built by feeding its policies in rank order.
struct PairCompiler<'a> {
    policies: &'a [Prepared],
    /// First Enforce policy without ports, first policy of any mode without ports.
    enforced_pair: Option<usize>,
    audited_pair: Option<usize>,
    /// Per protocol (like `Protocol::ALL`): (enforced painter, any-mode painter), created
    /// when a policy first names the protocol.
    protocols: [Option<(Painter, Painter)>; 5],
    /// Ranks that decided something here.
    winners: Vec<usize>,
}

impl<'a> PairCompiler<'a> {
    fn new(policies: &'a [Prepared]) -> Self {
        PairCompiler {
            policies,
            enforced_pair: None,
            audited_pair: None,
            protocols: Default::default(),
            winners: Vec::new(),
        }
    }

    /// Nothing ranked later can change the result.
    fn complete(&self) -> bool {
        self.enforced_pair.is_some() && self.audited_pair.is_some()
    }

    fn add(&mut self, rank: usize) {
        let policy = &self.policies[rank];
        // (mode slot, whether this policy takes part in it): 0 = enforced, 1 = any mode.
        let takes_part = [policy.enforce, true];
        if policy.all_traffic {
            for (slot, pair) in [&mut self.enforced_pair, &mut self.audited_pair]
                .into_iter()
                .enumerate()
            {
                if takes_part[slot] && pair.is_none() {
                    *pair = Some(rank);
                    self.winners.push(rank);
                }
            }
            for (enforced, audited) in self.protocols.iter_mut().flatten() {
                if policy.enforce {
                    enforced.paint(0, PORT_SPACE_END, rank);
                }
                audited.paint(0, PORT_SPACE_END, rank);
            }
            return;
        }
        for (protocol, ranges) in policy.ranges.iter().enumerate() {
            if ranges.is_empty() {
                continue;
            }
            let (enforced_pair, audited_pair) = (self.enforced_pair, self.audited_pair);
            let (enforced, audited) = self.protocols[protocol].get_or_insert_with(|| {
                // A policy without ports ranked earlier already owns the whole protocol.
                let painter = |owner: Option<usize>| {
                    let mut painter = Painter::new();
                    if let Some(owner) = owner {
                        painter.paint(0, PORT_SPACE_END, owner);
                    }
                    painter
                };
                (painter(enforced_pair), painter(audited_pair))
            });
            let mut won = false;
            for (low, high) in ranges {
                if policy.enforce && !enforced.is_full() {
                    won |= enforced.paint(*low, *high, rank);
                }
                if !audited.is_full() {
                    won |= audited.paint(*low, *high, rank);
                }
            }
            if won {
                self.winners.push(rank);
            }
        }
    }

    fn value(
        &self,
        enforced: Option<usize>,
        audited: Option<usize>,
        default: (u8, u32),
    ) -> PolicyValue {
        let (verdict, rule) = enforced.map_or(default, |rank| {
            (self.policies[rank].verdict, self.policies[rank].rule)
        });
        let mut value = PolicyValue {
            verdict,
            rule,
            audit_rule: RULE_NONE,
            ..PolicyValue::default()
        };
        if let Some(rank) = audited
            && verdict == VERDICT_ALLOW
            && self.policies[rank].verdict == VERDICT_DENY
        {
            value.audit = 1;
            value.audit_rule = self.policies[rank].rule;
        }
        value
    }

    fn emit(
        mut self,
        source: u32,
        destination: u32,
        winners: &mut Vec<usize>,
        entries: &mut Vec<PolicyEntry>,
    ) {
        winners.append(&mut self.winners);
        let default = if source == destination {
            (VERDICT_ALLOW, RULE_DEFAULT_INTRA_ALLOW)
        } else {
            (VERDICT_DENY, RULE_DEFAULT_INTER_DENY)
        };
        let pair_value = self.value(self.enforced_pair, self.audited_pair, default);
        let entry = |prefix_len: u32, proto: u8, port: u16, value: PolicyValue| PolicyEntry {
            src_zone: source,
            dst_zone: destination,
            prefix_len,
            proto,
            port,
            value,
        };
        entries.push(entry(POLICY_PREFIX_PAIR, 0, 0, pair_value));
        let protocols = std::mem::take(&mut self.protocols);
        for (protocol, painters) in Protocol::ALL.iter().zip(protocols) {
            let Some((enforced, audited)) = painters else {
                continue;
            };
            let mut segments: Vec<(u32, u32, PolicyValue)> = Vec::new();
            for (start, end, enforced, audited) in overlay(&enforced.finish(), &audited.finish()) {
                let value = self.value(enforced, audited, default);
                match segments.last_mut() {
                    Some(last) if last.2 == value => last.1 = end,
                    _ => segments.push((start, end, value)),
                }
            }
            for (block_start, size_bits, value) in fewest_blocks(&segments, pair_value) {
                entries.push(entry(
                    POLICY_PREFIX_PROTO + 16 - size_bits,
                    protocol.number(),
                    block_start as u16,
                    value,
                ));
            }
        }
    }
}

/// Two partitions of the port space laid over each other: (start, end, left, right).
fn overlay(
    left: &[(u32, u32, Option<usize>)],
    right: &[(u32, u32, Option<usize>)],
) -> Vec<(u32, u32, Option<usize>, Option<usize>)> {
    let mut result = Vec::with_capacity(left.len() + right.len());
    let (mut left_index, mut right_index) = (0, 0);
    let mut start = 0;
    while left_index < left.len() && right_index < right.len() {
        let (_, left_end, left_owner) = left[left_index];
        let (_, right_end, right_owner) = right[right_index];
        let end = left_end.min(right_end);
        result.push((start, end, left_owner, right_owner));
        if left_end == end {
            left_index += 1;
        }
        if right_end == end {
            right_index += 1;
        }
        start = end + 1;
    }
    result
}

/// The fewest prefix entries that give every port of a protocol the value of its
/// segment under longest-prefix match: (block start, log2 of block size, value). Ports no
/// entry covers get `inherited` (the pair entry). Blocks nest: a wide block carries the
/// most common value and narrower ones carve out the exceptions, so one allowed port
/// costs one entry instead of the ~30 a flat partition of the port space needs.
///
/// This is ORTC (Draves et al., "Constructing optimal IP routing tables"): bottom up,
/// every block of the binary trie over the port space gets the set of values that
/// minimise the entries below it (the children's intersection when they share one,
/// their union otherwise); top down, a block gets an entry only when the value it
/// inherits is not in its set. Only blocks whose ports do not all share one value are
/// split, so the work grows with the number of segments, not with the port space.
pub(super) fn fewest_blocks(
    segments: &[(u32, u32, PolicyValue)],
    inherited: PolicyValue,
) -> Vec<(u32, u32, PolicyValue)> {
    /// A block of the trie: its best values (indices into `values`, sorted) and children.
    struct Block {
        best: Vec<u16>,
        children: Option<[usize; 2]>,
    }
    fn build(
        start: u32,
        bits: u32,
        segments: &[(u32, u32, u16)],
        blocks: &mut Vec<Block>,
    ) -> usize {
        let end = start + (1 << bits) - 1;
        // `segments` holds exactly the segments overlapping this block, in order.
        let (first_end, first_value) = (segments[0].1, segments[0].2);
        let block = if first_end >= end || bits == 0 {
            Block {
                best: vec![first_value],
                children: None,
            }
        } else {
            let middle = start + (1 << (bits - 1));
            // A segment straddling the middle belongs to both halves.
            let left_to = segments.partition_point(|segment| segment.0 < middle);
            let right_from = segments.partition_point(|segment| segment.1 < middle);
            let left = build(start, bits - 1, &segments[..left_to], blocks);
            let right = build(middle, bits - 1, &segments[right_from..], blocks);
            let (left_best, right_best) = (&blocks[left].best, &blocks[right].best);
            let shared: Vec<u16> = left_best
                .iter()
                .copied()
                .filter(|value| right_best.binary_search(value).is_ok())
                .collect();
            let best = if shared.is_empty() {
                let mut union: Vec<u16> = left_best.iter().chain(right_best).copied().collect();
                union.sort_unstable();
                union.dedup();
                union
            } else {
                shared
            };
            Block {
                best,
                children: Some([left, right]),
            }
        };
        blocks.push(block);
        blocks.len() - 1
    }
    fn emit(
        blocks: &[Block],
        block: usize,
        start: u32,
        bits: u32,
        inherited: u16,
        out: &mut Vec<(u32, u32, u16)>,
    ) {
        let own = &blocks[block];
        let value = if own.best.binary_search(&inherited).is_ok() {
            inherited
        } else {
            out.push((start, bits, own.best[0]));
            own.best[0]
        };
        if let Some([left, right]) = own.children {
            emit(blocks, left, start, bits - 1, value, out);
            emit(
                blocks,
                right,
                start + (1 << (bits - 1)),
                bits - 1,
                value,
                out,
            );
        }
    }

    let mut values: Vec<PolicyValue> = vec![inherited];
    let indexed: Vec<(u32, u32, u16)> = segments
        .iter()
        .map(|(start, end, value)| {
            let index = match values.iter().position(|known| known == value) {
                Some(index) => index,
                None => {
                    values.push(*value);
                    values.len() - 1
                }
            };
            (*start, *end, index as u16)
        })
        .collect();
    let mut blocks = Vec::new();
    let root = build(0, 16, &indexed, &mut blocks);
    let mut out = Vec::new();
    emit(&blocks, root, 0, 16, 0, &mut out);
    out.into_iter()
        .map(|(start, bits, value)| (start, bits, values[value as usize]))
        .collect()
}
