//! The files under bpffs that stand for attachments, so that they outlive the agent and
//! a restarted agent, a prune or `firewall-agent detach` can find them again.
//!
//! TCX links are pinned under `<pin_dir>/links` as `<ifname>@<ifindex>@<direction>@<nonce>`,
//! with dots of the interface name written as colons (bpffs refuses names with dots;
//! interface names never contain colons); the nonce lets a new link be pinned before the
//! old one of the same hook is removed. TC filters, which belong to their interface and
//! need no pin, are recorded as empty folders
//! `<pin_dir>/tc/net-<netns inode>/<ifname>@<ifindex>@<direction>` (bpffs holds folders
//! but no plain files).

use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

/// A parsed pin file name.
pub(super) struct PinName {
    pub(super) ifname: String,
    pub(super) ifindex: u32,
    pub(super) direction: String,
}

/// A TCX link's pin: its record name and the nonce that tells two pins of one hook apart.
pub(super) fn pin_name(ifname: &str, ifindex: u32, direction: &str, nonce: u128) -> String {
    format!("{}@{nonce}", record_name(ifname, ifindex, direction))
}

pub(super) fn parse_pin_name(file_name: &str) -> Option<PinName> {
    let (record, _nonce) = file_name.rsplit_once('@')?;
    parse_record_name(record)
}

/// A TC filter's record: `<ifname>@<ifindex>@<direction>`, dots written as colons.
pub(super) fn record_name(ifname: &str, ifindex: u32, direction: &str) -> String {
    format!("{}@{ifindex}@{direction}", ifname.replace('.', ":"))
}

pub(super) fn parse_record_name(file_name: &str) -> Option<PinName> {
    // An interface name may itself contain '@', so split from the right.
    let mut parts = file_name.rsplitn(3, '@');
    let direction = parts.next()?.to_owned();
    let ifindex = parts.next()?.parse().ok()?;
    let ifname = parts.next()?.replace(':', ".");
    Some(PinName {
        ifname,
        ifindex,
        direction,
    })
}

/// The TC filters recorded under `tc_dir`.
pub(super) fn records(tc_dir: &Path) -> Vec<(PathBuf, PinName)> {
    named_entries(tc_dir, parse_record_name)
}

/// The TCX links pinned under `links_dir`.
pub(super) fn pins_in(links_dir: &Path) -> Vec<(PathBuf, PinName)> {
    named_entries(links_dir, parse_pin_name)
}

/// The entries of `dir` whose names `parse` understands; none when `dir` cannot be read.
fn named_entries(dir: &Path, parse: fn(&str) -> Option<PinName>) -> Vec<(PathBuf, PinName)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            Some((entry.path(), parse(&name)?))
        })
        .collect()
}

pub(super) fn unpin(path: &Path) {
    match PinnedLink::from_pin(path) {
        // Dropping the unpinned link releases it: the program leaves that hook.
        Ok(link) => match link.unpin() {
            Ok(link) => drop(link),
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot unpin link"),
        },
        Err(_) => {
            // A link whose interface vanished, or a stray file: just remove it.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The folder of TC records of the calling thread's network namespace. Filters belong to
/// interfaces of one namespace: only a process in that namespace can find, replace or
/// remove them, so each namespace's records are kept apart, named by its inode.
pub(super) fn tc_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("tc").join(format!("net-{}", netns_inode()))
}

pub(super) fn netns_inode() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/thread-self/ns/net")
        .map(|metadata| metadata.ino())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_round_trip_without_dots() {
        let name = pin_name("veth.a@b", 12, "ingress", 99);
        assert!(!name.contains('.'), "{name}");
        let pin = parse_pin_name(&name).unwrap();
        assert_eq!(pin.ifname, "veth.a@b");
        assert_eq!(pin.ifindex, 12);
        assert_eq!(pin.direction, "ingress");
        assert!(parse_pin_name("garbage").is_none());
        assert!(parse_pin_name("veth0@notanumber@ingress@1").is_none());
    }

    #[test]
    fn tc_record_names_round_trip_without_dots() {
        let name = record_name("veth.a@b", 7, "egress");
        assert!(!name.contains('.'), "{name}");
        let record = parse_record_name(&name).unwrap();
        assert_eq!(record.ifname, "veth.a@b");
        assert_eq!(record.ifindex, 7);
        assert_eq!(record.direction, "egress");
        assert!(parse_record_name("veth0@x@ingress").is_none());
        assert!(parse_record_name("veth0").is_none());
    }
}
