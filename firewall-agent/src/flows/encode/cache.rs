//! The encoders' render cache: what an owner (a pod, a node, a service) contributes to an
//! endpoint object, rendered once and copied into every record that mentions the owner.
//!
//! An entry is keyed by the owner's allocation and holds a `Weak` to it. While the entry
//! lives, that allocation cannot be freed, so no other owner can appear at its address;
//! and an owner cannot change (records share it behind an `Arc`, and `Arc::get_mut`
//! refuses while a `Weak` exists). An entry therefore always describes the very owner it
//! was rendered from: it cannot go stale, whatever generations come and go. Entries of
//! owners no record holds any more are swept out whenever the cache has doubled since
//! the last sweep, which keeps it within about twice the owners in use.

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Weak};

use crate::flows::enrich::IdMap;
use crate::flows::record::Owner;

/// An owner's part of an endpoint object, in two pieces: what comes before the port and
/// what comes after it (fields are written in name order).
pub(super) struct Rendered {
    pub before_port: Box<[u8]>,
    pub after_port: Box<[u8]>,
}

/// Renderings of one encoder (one format), by owner.
#[derive(Default)]
pub(super) struct OwnerCache {
    entries: RefCell<Entries>,
}

#[derive(Default)]
struct Entries {
    by_owner: IdMap<usize, (Weak<Owner>, Rendered)>,
    /// Size at which the next sweep of dead owners runs.
    sweep_at: usize,
}

/// Fewest entries before the first sweep: a node's owners fit without any.
const FIRST_SWEEP: usize = 4096;

impl OwnerCache {
    /// Calls `write` with the rendering of `owner`, made by `render` on first use.
    pub(super) fn with<R>(
        &self,
        owner: &Arc<Owner>,
        render: fn(&Owner) -> Rendered,
        write: impl FnOnce(&Rendered) -> R,
    ) -> R {
        let mut entries = self.entries.borrow_mut();
        let key = Arc::as_ptr(owner) as usize;
        if let Some((_, rendered)) = entries.by_owner.get(&key) {
            return write(rendered);
        }
        entries.sweep_if_due();
        let (_, rendered) = entries
            .by_owner
            .entry(key)
            .or_insert_with(|| (Arc::downgrade(owner), render(owner)));
        write(rendered)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.borrow().by_owner.len()
    }
}

impl Entries {
    fn sweep_if_due(&mut self) {
        if self.by_owner.len() < self.sweep_at.max(FIRST_SWEEP) {
            return;
        }
        self.by_owner
            .retain(|_, (owner, _)| owner.strong_count() > 0);
        self.sweep_at = self.by_owner.len() * 2;
    }
}

impl Clone for OwnerCache {
    /// A copy of an encoder starts with an empty cache of its own.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for OwnerCache {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owners = self
            .entries
            .try_borrow()
            .map(|entries| entries.by_owner.len())
            .unwrap_or_default();
        formatter
            .debug_struct("OwnerCache")
            .field("owners", &owners)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn owner(pod: &str) -> Arc<Owner> {
        Arc::new(Owner::new(
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            Some("shop".into()),
            Some(pod.into()),
            None,
            None,
            BTreeMap::new(),
        ))
    }

    fn pod_name(owner: &Owner) -> Rendered {
        Rendered {
            before_port: owner.pod.clone().unwrap_or_default().into_bytes().into(),
            after_port: Box::default(),
        }
    }

    fn rendered(cache: &OwnerCache, owner: &Arc<Owner>) -> String {
        cache.with(owner, pod_name, |rendered| {
            String::from_utf8_lossy(&rendered.before_port).into_owned()
        })
    }

    #[test]
    fn an_owner_is_rendered_once_and_a_new_one_never_reads_an_old_rendering() {
        let cache = OwnerCache::default();
        let first = owner("web-1");
        assert_eq!(rendered(&cache, &first), "web-1");
        assert_eq!(rendered(&cache, &first), "web-1");
        assert_eq!(cache.len(), 1);
        // Owners come and go with every generation; the next one may be allocated where
        // a dropped one lived, unless the cache still holds that place.
        drop(first);
        for index in 0..10_000 {
            let name = format!("web-{index}");
            let next = owner(&name);
            assert_eq!(rendered(&cache, &next), name);
        }
    }

    #[test]
    fn owners_nobody_holds_are_swept_out() {
        let cache = OwnerCache::default();
        let kept: Vec<Arc<Owner>> = (0..100)
            .map(|index| owner(&format!("kept-{index}")))
            .collect();
        for owner in &kept {
            rendered(&cache, owner);
        }
        for index in 0..10 * FIRST_SWEEP {
            rendered(&cache, &owner(&format!("gone-{index}")));
        }
        assert!(cache.len() <= 2 * FIRST_SWEEP, "{} entries", cache.len());
        for (index, owner) in kept.iter().enumerate() {
            assert_eq!(rendered(&cache, owner), format!("kept-{index}"));
        }
    }
}
