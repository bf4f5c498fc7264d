//! Keeping the cache of cluster data coherent with the nodes' change feeds: a change a
//! feed reports drops the cached copy of its address (unless the copy already is that
//! change), and a copy read from a node is kept only if no change at its address was
//! reported while the read was on its way (else the read may have raced the change and
//! would put back what the change replaced).
//!
//! Invalidations are numbered; a fill says the number it started at. A bounded map keeps,
//! for each address, the number and change of its last invalidation and the number of the
//! last one about another change; when it is full it is cleared and a floor raised, so a
//! fill older than the floor is refused (a few spurious misses, never a stale copy).
//!
//! A fill raced only by reports of its own change (a write's answer arriving after the
//! nodes' feeds reported that write, as each replica does) is kept: nothing else changed
//! at the address meanwhile, so the copy is the newest. Refusing it would forget, say, a
//! delete the gateway itself made, and a fallback read would then not know the address is
//! gone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ucxl::{Address, EnvelopeId, Version};

use super::local::LocalStore;

/// Addresses whose last invalidation is remembered before the map starts afresh.
const REMEMBERED: usize = 65_536;

/// The invalidation numbering.
#[derive(Debug, Default)]
pub(super) struct Coherence {
    inner: Mutex<Numbers>,
}

#[derive(Debug, Default)]
struct Numbers {
    /// The last invalidation's number.
    generation: u64,
    /// Fills that started before this are refused.
    floor: u64,
    /// Canonical address → its last invalidations.
    last: HashMap<std::sync::Arc<str>, Reported>,
}

/// What was last reported at one address.
#[derive(Debug)]
struct Reported {
    /// The number of the last invalidation.
    generation: u64,
    /// The change it reported.
    id: EnvelopeId,
    /// The number of the last invalidation that reported another change (0: none).
    other: u64,
}

impl Coherence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Numbers> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl LocalStore {
    /// The invalidation number a fill starts at: read it before asking a node.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.coherence().lock().generation
    }

    /// A node reported a change (`id`) at `address`: the cached copy goes, unless it holds
    /// that change already. Data the store holds as the only copy is left alone.
    pub fn invalidate(&self, address: &Address, id: &EnvelopeId) {
        let mut numbers = self.coherence().lock();
        if self.holds_cached(address, id) {
            // Already part of the copy (its own write's answer, or a report that came late,
            // after a newer change the copy has): nothing new, nothing to drop, and no fill
            // can have raced it into an older state (a fill never makes a copy older).
            return;
        }
        numbers.generation += 1;
        let generation = numbers.generation;
        if numbers.last.len() >= REMEMBERED && !numbers.last.contains_key(address.canonical()) {
            numbers.last.clear();
            numbers.floor = generation;
        }
        match numbers.last.get_mut(address.canonical()) {
            Some(reported) if reported.id == *id => reported.generation = generation,
            Some(reported) => {
                reported.other = reported.generation;
                reported.generation = generation;
                reported.id = id.clone();
            }
            None => {
                // Anything before this is unknown here: the floor speaks for it.
                let other = numbers.floor;
                numbers.last.insert(
                    address.canonical_shared(),
                    Reported {
                        generation,
                        id: id.clone(),
                        other,
                    },
                );
            }
        }
        // Under the numbering's lock: a fill checks and inserts under it too.
        self.drop_cached_unless(address, id);
    }

    /// Caches version `number` of `address` (as [`LocalStore::observe`]) only if no change
    /// at the address was reported since `generation`.
    pub fn observe_since(
        &self,
        generation: u64,
        address: &Address,
        number: u32,
        version: &Arc<Version>,
    ) {
        let numbers = self.coherence().lock();
        if Self::raced(&numbers, generation, address, &version.id) {
            return;
        }
        self.observe(address, number, version);
    }

    /// Caches a delete (as [`LocalStore::observe_delete`]) only if no change at the address
    /// was reported since `generation`.
    pub fn observe_delete_since(
        &self,
        generation: u64,
        address: &Address,
        tombstone: ucxl::Tombstone,
    ) {
        let numbers = self.coherence().lock();
        if Self::raced(&numbers, generation, address, &tombstone.id) {
            return;
        }
        self.observe_delete(address, tombstone);
    }

    /// Whether a fill of change `id` that started at `generation` may have raced another
    /// change at `address` (reports of `id` itself do not count).
    fn raced(numbers: &Numbers, generation: u64, address: &Address, id: &EnvelopeId) -> bool {
        generation < numbers.floor
            || numbers.last.get(address.canonical()).is_some_and(|last| {
                last.generation > generation && (last.id != *id || last.other > generation)
            })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::*;
    use crate::store::local::Lookup;

    fn version(id: &str, secs: i64) -> Arc<Version> {
        let at = Utc
            .timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("time");
        let mut write = ucxl::NewVersion::json(EnvelopeId::parse(id).expect("id"), json!(secs));
        write.created_at = Some(at);
        let mut set = ucxl::VersionSet::default();
        let outcome = set.put(write, at).expect("put");
        Arc::clone(outcome.parts().1)
    }

    #[test]
    fn a_reported_change_drops_the_copy_and_a_racing_fill_is_refused() {
        let store = LocalStore::new(100);
        let at = Address::parse("ucxl://a:r@p:t/x").expect("address");
        let g0 = store.generation();
        store.observe_since(g0, &at, 1, &version("v1", 1));
        assert!(matches!(store.lookup(&at), Lookup::Found(1, _)));
        // The feed reports v1 itself: the copy is that change, it stays.
        store.invalidate(&at, &EnvelopeId::parse("v1").expect("id"));
        assert!(matches!(store.lookup(&at), Lookup::Found(1, _)));
        // A read starts, v2 is reported meanwhile, the read answers v1: not cached.
        let started = store.generation();
        store.invalidate(&at, &EnvelopeId::parse("v2").expect("id"));
        assert!(matches!(store.lookup(&at), Lookup::NotHeld));
        store.observe_since(started, &at, 1, &version("v1", 1));
        assert!(
            matches!(store.lookup(&at), Lookup::NotHeld),
            "the raced fill is refused"
        );
        // A read that starts after the report is kept.
        let after = store.generation();
        store.observe_since(after, &at, 2, &version("v2", 2));
        assert!(matches!(store.lookup(&at), Lookup::Found(2, _)));
        // A fill raced only by reports of its own change is kept: each replica reports it.
        let started = store.generation();
        store.invalidate(&at, &EnvelopeId::parse("v4").expect("id"));
        store.invalidate(&at, &EnvelopeId::parse("v4").expect("id"));
        store.observe_since(started, &at, 4, &version("v4", 4));
        assert!(matches!(store.lookup(&at), Lookup::Found(4, _)));
        // ... but not when another change was reported too, before or after it.
        for (first, second) in [("v5", "v6"), ("v6", "v5")] {
            let started = store.generation();
            store.invalidate(&at, &EnvelopeId::parse(first).expect("id"));
            store.invalidate(&at, &EnvelopeId::parse(second).expect("id"));
            store.observe_since(started, &at, 5, &version("v5", 5));
            assert!(
                !matches!(store.lookup(&at), Lookup::Found(5, _)),
                "{first} then {second}"
            );
        }
        // Other addresses' changes do not refuse a fill.
        let other = Address::parse("ucxl://a:r@p:t/y").expect("address");
        let started = store.generation();
        store.invalidate(&other, &EnvelopeId::parse("w1").expect("id"));
        store.observe_since(started, &at, 3, &version("v3", 3));
        assert!(matches!(store.lookup(&at), Lookup::Found(3, _)));
        // A report of a change the copy already holds (late, or its own write's) drops
        // nothing and refuses no fill.
        let started = store.generation();
        store.observe_since(started, &at, 5, &version("v7", 7));
        assert!(matches!(store.lookup(&at), Lookup::Found(5, _)));
        let started = store.generation();
        store.invalidate(&at, &EnvelopeId::parse("v7").expect("id"));
        store.observe_since(started, &at, 5, &version("v7", 7));
        assert!(matches!(store.lookup(&at), Lookup::Found(5, _)));
    }
}
