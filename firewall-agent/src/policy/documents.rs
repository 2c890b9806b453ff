//! Parsing a policy file again after a small change, at the cost of the change.
//!
//! A YAML stream splits into documents at lines that start with `---`: the YAML spec
//! forbids such a line inside any document's content (c-forbidden), so each piece parses
//! alone exactly as it does inside the stream. [`DocumentCache`] keeps the objects each
//! piece decoded to, under a 128-bit digest of the piece's text, and decodes only the
//! pieces it has not seen; a file of 10 000 pods with one changed policy costs one
//! document's decode plus the validation of the whole set.
//!
//! Whenever the shortcut could differ from [`super::parse`] it is not taken: a stream
//! with directives (`%YAML`), document end markers (`...`), a byte order mark or any
//! problem at all is parsed whole, so error messages and their document numbers are
//! exactly those of a full parse.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

use super::model::PolicySet;
use super::{PolicyError, decode, validate};

/// 128 bits of two independently seeded SipHash runs over the same bytes.
pub type Digest = (u64, u64);

/// Digest of `bytes` (not cryptographic: it tells versions of one file apart).
pub fn digest(bytes: &[u8]) -> Digest {
    let mut first = std::collections::hash_map::DefaultHasher::new();
    let mut second = std::collections::hash_map::DefaultHasher::new();
    0x7a6f_6e65_7761_6c6cu64.hash(&mut first);
    0x6469_6765_7374_2d32u64.hash(&mut second);
    first.write(bytes);
    second.write(bytes);
    (first.finish(), second.finish() ^ bytes.len() as u64)
}

/// Decoded documents of the last stream that parsed cleanly, by digest of their text.
#[derive(Default)]
pub struct DocumentCache {
    documents: HashMap<Digest, PolicySet>,
}

/// What a parse did, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Pieces of the stream (documents, and the text before the first `---`).
    pub pieces: usize,
    /// Pieces decoded now (the others came from the cache).
    pub decoded: usize,
    /// Whether the stream was parsed whole (no shortcut).
    pub whole: bool,
}

impl DocumentCache {
    /// [`super::parse`], reusing what earlier calls decoded.
    pub fn parse(&mut self, yaml: &str) -> Result<PolicySet, PolicyError> {
        self.parse_with_stats(yaml).0
    }

    pub fn parse_with_stats(&mut self, yaml: &str) -> (Result<PolicySet, PolicyError>, ParseStats) {
        let Some(pieces) = split(yaml) else {
            self.documents.clear();
            return (
                super::parse(yaml),
                ParseStats {
                    whole: true,
                    ..Default::default()
                },
            );
        };
        let mut stats = ParseStats {
            pieces: pieces.len(),
            ..Default::default()
        };
        let mut documents: HashMap<Digest, PolicySet> = HashMap::with_capacity(pieces.len());
        let mut set = PolicySet::default();
        for piece in pieces {
            let key = digest(piece.as_bytes());
            if !documents.contains_key(&key) {
                let decoded = match self.documents.remove(&key) {
                    Some(decoded) => decoded,
                    None => {
                        stats.decoded += 1;
                        let (decoded, issues, _) = decode::decode(piece);
                        if !issues.is_empty() {
                            // The whole stream's messages, numbered as a user counts.
                            return self.parse_whole(yaml, documents, stats);
                        }
                        decoded
                    }
                };
                documents.insert(key, decoded);
            }
            let decoded = &documents[&key];
            append(&mut set, decoded);
        }
        let mut issues = Vec::new();
        validate::validate_into(&set, &Default::default(), &mut issues);
        if !issues.is_empty() {
            // Decoding was clean, so a full parse reports the same problems; it is run
            // anyway so that the messages can never differ from it.
            return self.parse_whole(yaml, documents, stats);
        }
        self.documents = documents;
        (Ok(set), stats)
    }

    /// The fallback for a stream with problems: a full parse. What was decoded cleanly
    /// stays cached with the last good stream's documents, so fixing the problem costs
    /// no more than making it.
    fn parse_whole(
        &mut self,
        yaml: &str,
        decoded: HashMap<Digest, PolicySet>,
        stats: ParseStats,
    ) -> (Result<PolicySet, PolicyError>, ParseStats) {
        self.documents.extend(decoded);
        (
            super::parse(yaml),
            ParseStats {
                whole: true,
                ..stats
            },
        )
    }
}

/// Appends `piece`'s objects in order (the stream's order is the pieces' order).
fn append(set: &mut PolicySet, piece: &PolicySet) {
    set.zones.extend_from_slice(&piece.zones);
    set.policies.extend_from_slice(&piece.policies);
    set.namespaces.extend_from_slice(&piece.namespaces);
    set.pods.extend_from_slice(&piece.pods);
    set.services.extend_from_slice(&piece.services);
    set.nodes.extend_from_slice(&piece.nodes);
}

/// The stream cut before every `---` line, or None when cutting could change its
/// meaning.
fn split(yaml: &str) -> Option<Vec<&str>> {
    if yaml.starts_with('\u{feff}') {
        return None;
    }
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut line_start = 0;
    let bytes = yaml.as_bytes();
    while line_start < bytes.len() {
        let line_end = memchr_newline(bytes, line_start);
        let line = &bytes[line_start..line_end];
        let marker = |prefix: &[u8]| {
            line.starts_with(prefix)
                && matches!(line.get(prefix.len()), None | Some(b' ' | b'\t' | b'\r'))
        };
        if line.first() == Some(&b'%') || marker(b"...") {
            return None;
        }
        if marker(b"---") && line_start > start {
            pieces.push(&yaml[start..line_start]);
            start = line_start;
        }
        line_start = line_end + 1;
    }
    if start < yaml.len() {
        pieces.push(&yaml[start..]);
    }
    Some(pieces)
}

fn memchr_newline(bytes: &[u8], from: usize) -> usize {
    bytes[from..]
        .iter()
        .position(|byte| *byte == b'\n')
        .map_or(bytes.len(), |offset| from + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONES: &str = "apiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: dmz}\nspec: {namespaceSelector: {matchLabels: {zone: dmz}}}\n---\napiVersion: zonewall.dev/v1alpha1\nkind: Zone\nmetadata: {name: db}\nspec: {networks: [\"10.9.0.0/16\"]}\n";

    fn pod(index: usize) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p-{index}, namespace: shop, uid: u-{index}, labels: {{app: a{}}}}}\nstatus: {{podIP: 198.18.0.{}}}\n",
            index % 3,
            index + 1
        )
    }

    fn policy(name: &str, port: u16) -> String {
        format!(
            "---\napiVersion: zonewall.dev/v1alpha1\nkind: ZonePolicy\nmetadata: {{name: {name}}}\nspec: {{from: [dmz], to: [db], ports: [{{protocol: TCP, port: {port}}}], action: Allow}}\n"
        )
    }

    fn base() -> String {
        let mut yaml = String::from(ZONES);
        for index in 0..20 {
            yaml.push_str(&pod(index));
        }
        yaml.push_str(&policy("web", 443));
        yaml
    }

    /// The cached parse agrees with a full parse: same set, same error text.
    fn agrees(cache: &mut DocumentCache, yaml: &str) -> ParseStats {
        let (cached, stats) = cache.parse_with_stats(yaml);
        match (cached, super::super::parse(yaml)) {
            (Ok(cached), Ok(full)) => assert_eq!(cached, full, "for {yaml:?}"),
            (Err(cached), Err(full)) => assert_eq!(cached.to_string(), full.to_string()),
            (cached, full) => panic!("cached {cached:?} but full {full:?} for {yaml:?}"),
        }
        stats
    }

    #[test]
    fn only_changed_documents_are_decoded_again() {
        let mut cache = DocumentCache::default();
        let first = agrees(&mut cache, &base());
        assert_eq!(first.decoded, first.pieces);
        assert!(!first.whole);
        let again = agrees(&mut cache, &base());
        assert_eq!(again.decoded, 0, "nothing changed");
        let changed = base().replace("port: 443", "port: 8443");
        assert_eq!(agrees(&mut cache, &changed).decoded, 1);
        let added = format!("{changed}{}", policy("extra", 22));
        assert_eq!(agrees(&mut cache, &added).decoded, 1);
        // Removing a document decodes nothing; two identical documents share one entry.
        assert_eq!(agrees(&mut cache, &changed).decoded, 0);
    }

    #[test]
    fn problems_are_reported_as_a_full_parse_reports_them() {
        let mut cache = DocumentCache::default();
        agrees(&mut cache, &base());
        // A syntax error in one document, an unknown zone, a duplicate: all exactly as a
        // full parse words and numbers them.
        for broken in [
            base().replace("port: 443}", "port: 443"),
            base().replace("to: [db]", "to: [nowhere]"),
            format!("{}{}", base(), pod(3)),
            format!("{}---\nkind: Mystery\n", base()),
        ] {
            let stats = agrees(&mut cache, &broken);
            assert!(stats.whole, "{broken:?}");
        }
        // The last good file's documents are still cached.
        assert_eq!(agrees(&mut cache, &base()).decoded, 0);
    }

    #[test]
    fn streams_that_cannot_be_cut_are_parsed_whole() {
        let mut cache = DocumentCache::default();
        for yaml in [
            format!("%YAML 1.2\n---\n{ZONES}"),
            format!("{ZONES}...\n"),
            format!("\u{feff}{ZONES}"),
        ] {
            assert!(agrees(&mut cache, &yaml).whole, "{yaml:?}");
        }
    }

    #[test]
    fn random_edits_agree_with_a_full_parse() {
        let mut seed = 0x2545_f491u32;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as usize
        };
        let mut documents: Vec<String> = (0..12).map(pod).collect();
        documents.push(policy("web", 443));
        let mut cache = DocumentCache::default();
        for round in 0..200 {
            match next() % 6 {
                0 => documents.push(pod(next() % 40)),
                1 if documents.len() > 1 => {
                    documents.remove(next() % documents.len());
                }
                2 => {
                    let at = next() % documents.len();
                    documents[at] = policy(&format!("p{}", next() % 5), (next() % 1000) as u16);
                }
                3 => {
                    // Comments, blank lines and markers with trailing text.
                    let at = next() % documents.len();
                    documents[at] = documents[at].replacen("---\n", "--- # edited\n\n", 1);
                }
                4 => {
                    let at = next() % documents.len();
                    documents.swap(0, at);
                }
                _ => {}
            }
            let yaml = format!("{ZONES}{}", documents.concat());
            agrees(&mut cache, &yaml);
            if round % 50 == 0 {
                cache = DocumentCache::default();
            }
        }
    }
}
