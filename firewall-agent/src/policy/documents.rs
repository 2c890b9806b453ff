//! Parsing a policy file again after a small change, at the cost of the change.
//!
//! A YAML stream splits into documents at lines that start with `---`: the YAML spec
//! forbids such a line inside any document's content (c-forbidden), so each piece parses
//! alone exactly as it does inside the stream. [`DocumentCache`] keeps the objects each
//! piece decoded to, under a 128-bit digest of the piece's text, and decodes only the
//! pieces it has not seen; a file of 10 000 pods with one changed policy costs one
//! document's decode plus the validation of the whole set.
//!
//! Whenever the shortcut could differ from [`parse`] it is not taken: a stream
//! with directives (`%YAML`), document end markers (`...`), a byte order mark or any
//! problem at all is parsed whole, so error messages and their document numbers are
//! exactly those of a full parse.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

use super::decode;
use super::issue::PolicyError;
use super::load::parse;
use super::model::PolicySet;
use super::validate::{Validated, validate};

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
    /// [`parse`], reusing what earlier calls decoded.
    pub fn parse(&mut self, yaml: &str) -> Result<Validated, PolicyError> {
        self.parse_with_stats(yaml).0
    }

    pub fn parse_with_stats(&mut self, yaml: &str) -> (Result<Validated, PolicyError>, ParseStats) {
        let Some(pieces) = split(yaml) else {
            self.documents.clear();
            return (
                parse(yaml),
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
        let Ok(validated) = validate(set) else {
            // Decoding was clean, so a full parse reports the same problems; it is run
            // anyway so that the messages can never differ from it.
            return self.parse_whole(yaml, documents, stats);
        };
        self.documents = documents;
        (Ok(validated), stats)
    }

    /// The fallback for a stream with problems: a full parse. What was decoded cleanly
    /// stays cached with the last good stream's documents, so fixing the problem costs
    /// no more than making it.
    fn parse_whole(
        &mut self,
        yaml: &str,
        decoded: HashMap<Digest, PolicySet>,
        stats: ParseStats,
    ) -> (Result<Validated, PolicyError>, ParseStats) {
        self.documents.extend(decoded);
        (
            parse(yaml),
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
mod tests;
