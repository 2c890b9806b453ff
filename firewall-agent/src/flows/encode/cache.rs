//! The encoders' render cache: what an owner (a pod, a node, a service) contributes to an
//! endpoint object, rendered once and copied into every record that mentions the owner.
//!
//! Renderings are kept under the owner's [`OwnerId`], which no other owner ever gets, and
//! owners never change: a rendering can therefore never describe anything but the owner
//! it was made from, whatever generations come and go. The owners of one generation form
//! one batch, numbered from 0, so a batch's renderings are a vector indexed by owner: a
//! lookup is one comparison and one index. The two newest batches are kept (records of
//! the previous generation may still be queued when the next one starts); an older
//! batch's owners are rendered again if they ever come back.

use std::cell::RefCell;
use std::fmt;

use crate::flows::record::{Owner, OwnerId};

/// An owner's part of an endpoint object, in two pieces: what comes before the port and
/// what comes after it (fields are written in name order).
pub(super) struct Rendered {
    pub before_port: Box<[u8]>,
    pub after_port: Box<[u8]>,
}

/// Renderings of one encoder (one format), by owner.
#[derive(Default)]
pub(super) struct OwnerCache {
    /// Oldest first, at most KEPT_BATCHES.
    batches: RefCell<Vec<Batch>>,
}

/// The renderings of one batch's owners, by index (None: not rendered yet).
struct Batch {
    batch: u64,
    renderings: Vec<Option<Rendered>>,
}

/// Batches kept: the current generation's owners and the previous one's.
const KEPT_BATCHES: usize = 2;

impl OwnerCache {
    /// Calls `write` with the rendering of `owner`, made by `render` on first use.
    #[inline]
    pub(super) fn with<R>(
        &self,
        owner: &Owner,
        render: fn(&Owner) -> Rendered,
        write: impl FnOnce(&Rendered) -> R,
    ) -> R {
        let OwnerId { batch, index } = owner.id();
        let mut batches = self.batches.borrow_mut();
        let position = match batches.iter().rposition(|kept| kept.batch == batch) {
            Some(position) => position,
            None => {
                if batches.len() == KEPT_BATCHES {
                    batches.remove(0);
                }
                batches.push(Batch {
                    batch,
                    renderings: Vec::new(),
                });
                batches.len() - 1
            }
        };
        let renderings = &mut batches[position].renderings;
        let index = index as usize;
        if index >= renderings.len() {
            renderings.resize_with(index + 1, || None);
        }
        write(renderings[index].get_or_insert_with(|| render(owner)))
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.batches
            .borrow()
            .iter()
            .map(|batch| batch.renderings.iter().flatten().count())
            .sum()
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
        let batches: Vec<u64> = self
            .batches
            .try_borrow()
            .map(|batches| batches.iter().map(|batch| batch.batch).collect())
            .unwrap_or_default();
        formatter
            .debug_struct("OwnerCache")
            .field("batches", &batches)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::flows::record::OwnerBatch;

    fn pod(batch: &mut OwnerBatch, name: &str) -> Owner {
        batch.add(Owner::new(
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            Some("shop".into()),
            Some(name.into()),
            None,
            None,
            BTreeMap::new(),
        ))
    }

    fn pod_name(owner: &Owner) -> Rendered {
        Rendered {
            before_port: owner.pod().unwrap_or_default().as_bytes().into(),
            after_port: Box::default(),
        }
    }

    fn rendered(cache: &OwnerCache, owner: &Owner) -> String {
        cache.with(owner, pod_name, |rendered| {
            String::from_utf8_lossy(&rendered.before_port).into_owned()
        })
    }

    #[test]
    fn an_owner_is_rendered_once_and_never_read_for_another() {
        let cache = OwnerCache::default();
        let mut first = OwnerBatch::new();
        let web = pod(&mut first, "web-1");
        let db = pod(&mut first, "db-0");
        assert_eq!(rendered(&cache, &web), "web-1");
        assert_eq!(rendered(&cache, &db), "db-0");
        assert_eq!(rendered(&cache, &web), "web-1");
        assert_eq!(cache.len(), 2);
        // Every generation numbers its owners from 0 again, in a batch of its own.
        for generation in 0..100 {
            let mut batch = OwnerBatch::new();
            let web = pod(&mut batch, &format!("web-{generation}"));
            assert_eq!(web.id().index, 0);
            assert_eq!(rendered(&cache, &web), format!("web-{generation}"));
            assert_eq!(rendered(&cache, &web), format!("web-{generation}"));
        }
        // The first batch was let go, not mixed up: its owners are rendered again.
        assert_eq!(rendered(&cache, &db), "db-0");
        assert!(cache.len() <= KEPT_BATCHES, "{} renderings", cache.len());
    }

    #[test]
    fn owners_made_alone_are_each_their_own() {
        let cache = OwnerCache::default();
        let owners: Vec<Owner> = (0..10)
            .map(|index| {
                Owner::new(
                    IpAddr::V4(Ipv4Addr::new(198, 18, 0, index)),
                    None,
                    Some(format!("pod-{index}")),
                    None,
                    None,
                    BTreeMap::new(),
                )
            })
            .collect();
        for _ in 0..3 {
            for (index, owner) in owners.iter().enumerate() {
                assert_eq!(rendered(&cache, owner), format!("pod-{index}"));
            }
        }
    }
}
