//! Conntrack seen from user space: ageing, flushing and the fill level. Ageing removes
//! expired entries by the timeouts the datapath applies (`Config::ct_timeout_ns`, one
//! table for both) and returns those whose end the kernel did not report (it does on TCP
//! close), so an end event can be written for them.

use firewall_common::*;

use super::{
    error::{DatapathError, map_error},
    load::Datapath,
};

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

impl Datapath {
    /// Removes expired entries; returns those whose end was not reported yet.
    pub fn expire_conntrack(
        &mut self,
        now_ns: u64,
    ) -> Result<Vec<(CtKey, CtValue)>, DatapathError> {
        let config = self.config()?;
        if config.ready == 0 {
            return Ok(Vec::new());
        }
        let mut expired = Vec::new();
        let mut seen = 0;
        for entry in self.conntrack.iter() {
            let (key, value) = match entry {
                Ok(entry) => entry,
                // Entries can vanish under the iterator (LRU eviction, kernel updates).
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(error) => return Err(map_error(MAP_CONNTRACK)(error)),
            };
            seen += 1;
            if now_ns.saturating_sub(value.last_seen_ns)
                > config.ct_timeout_ns(key.proto, value.state)
            {
                expired.push((key, value));
            }
        }
        self.conntrack_seen = seen;
        let mut unreported = Vec::new();
        for (key, value) in expired {
            // Re-check: a packet may have refreshed the entry since we read it.
            let Ok(current) = self.conntrack.get(&key, 0) else {
                continue;
            };
            if now_ns.saturating_sub(current.last_seen_ns)
                <= config.ct_timeout_ns(key.proto, current.state)
            {
                continue;
            }
            let _ = self.conntrack.remove(&key);
            if current.flags & CT_FLAG_END_REPORTED == 0 {
                unreported.push((key, current));
            }
            let _ = value;
        }
        Ok(unreported)
    }
}

impl Datapath {
    /// Forgets every tracked connection (their end is not reported). Used by tests and by
    /// operators who want a policy change to apply to existing connections too.
    pub fn flush_conntrack(&mut self) -> Result<usize, DatapathError> {
        let keys: Vec<CtKey> = self.conntrack.keys().filter_map(Result::ok).collect();
        for key in &keys {
            let _ = self.conntrack.remove(key);
        }
        Ok(keys.len())
    }
}

impl Datapath {
    /// (entries at the last ageing pass, capacity) of CONNTRACK.
    pub fn conntrack_fill(&self) -> (usize, usize) {
        (self.conntrack_seen, self.conntrack_capacity)
    }
}

impl Datapath {
    /// Removes every tracked connection with an end at one of `addresses`.
    pub fn flush_connections_of(
        &mut self,
        addresses: &[EndpointKey],
    ) -> Result<usize, DatapathError> {
        let addresses: std::collections::HashSet<[u8; 16]> =
            addresses.iter().map(|key| key.addr).collect();
        let doomed: Vec<CtKey> = self
            .conntrack
            .keys()
            .filter_map(Result::ok)
            .filter(|key| addresses.contains(&key.addr_lo) || addresses.contains(&key.addr_hi))
            .collect();
        for key in &doomed {
            let _ = self.conntrack.remove(key);
        }
        Ok(doomed.len())
    }
}
