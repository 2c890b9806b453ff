//! Tests of the per-document cache: it always agrees with a full parse.

use super::*;
use crate::policy::load::parse;

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
    match (cached, parse(yaml)) {
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
