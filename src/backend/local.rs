//! The local store: version sets in memory with node semantics, bounded by
//! `RUSTLE_CACHE_MAX_ENTRIES`.
//!
//! Records are *owned* (the only copy: mock-mode writes, journaled fallback writes) or
//! *cached* (copies of cluster data). Only cached records are evicted, least recently used
//! first; when owned data fills the store, writes of new versions are refused rather than
//! silently dropping acknowledged data.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use chrono::{DateTime, Utc};
use ucxl::{
    Address, DeleteOutcome, EnvelopeId, NewVersion, PutOutcome, SearchItem, Version, VersionSet,
    VersionSummary,
};

use super::{BackendError, LocalStoreStatus, SearchQuery};

/// Whether a write makes its record the only copy of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The only copy: never evicted.
    Owned,
    /// A copy of data held elsewhere: evictable.
    Cached,
}

#[derive(Debug)]
struct Record {
    address: Address,
    set: VersionSet,
    owned: bool,
    /// LRU tick of the last access (cached records only are in the LRU index).
    touched: u64,
}

#[derive(Debug, Default)]
struct Inner {
    records: BTreeMap<String, Record>,
    /// tick → canonical address, for cached records.
    lru: BTreeMap<u64, String>,
    tick: u64,
    entries: usize,
    owned_entries: usize,
    max_entries: usize,
}

/// The bounded in-memory store behind the mock backend and the hybrid fallback.
#[derive(Debug)]
pub struct LocalStore {
    inner: RwLock<Inner>,
    evictions: AtomicU64,
}

impl Inner {
    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(record) = self.records.get_mut(key) {
            if !record.owned {
                self.lru.remove(&record.touched);
                self.lru.insert(tick, key.to_owned());
            }
            record.touched = tick;
        }
    }

    /// Evicts least recently used cached records (never `keep`) until `extra` more
    /// entries fit. Returns how many records were evicted, or `None` when owned data
    /// leaves no room.
    fn make_room(&mut self, extra: usize, keep: &str) -> Option<u64> {
        let mut evicted = 0;
        let mut skipped = Vec::new();
        while self.entries + extra > self.max_entries {
            let Some((tick, key)) = self.lru.pop_first() else {
                break;
            };
            if key == keep {
                skipped.push((tick, key));
                continue;
            }
            if let Some(record) = self.records.remove(&key) {
                self.entries -= record.set.len();
                evicted += 1;
            }
        }
        self.lru.extend(skipped);
        (self.entries + extra <= self.max_entries).then_some(evicted)
    }

    /// Applies `change` to the record at `address` (created empty if absent), keeping the
    /// counters, ownership and LRU index right.
    fn update<T>(
        &mut self,
        address: &Address,
        retention: Retention,
        growth: usize,
        change: impl FnOnce(&mut VersionSet) -> T,
    ) -> Result<(T, u64), BackendError> {
        let key = address.canonical();
        let evicted = self.make_room(growth, key).ok_or(BackendError::StoreFull {
            limit: self.max_entries,
        })?;
        let record = self
            .records
            .entry(key.to_owned())
            .or_insert_with(|| Record {
                address: address.clone().with_temporal(ucxl::Temporal::Latest),
                set: VersionSet::default(),
                owned: false,
                touched: 0,
            });
        let before = record.set.len();
        let out = change(&mut record.set);
        let after = record.set.len();
        let was_owned = record.owned;
        if retention == Retention::Owned && !was_owned {
            record.owned = true;
            self.lru.remove(&record.touched);
            self.owned_entries += before;
        }
        if record.owned {
            self.owned_entries += after - before;
        }
        self.entries += after - before;
        if after == 0 {
            self.records.remove(key);
        } else {
            self.touch(key);
        }
        Ok((out, evicted))
    }
}

impl LocalStore {
    /// An empty store holding at most `max_entries` versions and tombstones.
    #[must_use]
    pub fn new(max_entries: usize) -> Self {
        Self {
            inner: RwLock::new(Inner {
                max_entries,
                ..Inner::default()
            }),
            evictions: AtomicU64::new(0),
        }
    }

    // A panic while holding the lock cannot leave a record half-written (every mutation is
    // a single `VersionSet` call followed by counter updates), so a poisoned lock is used.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_evictions(&self, n: u64) {
        if n > 0 {
            self.evictions.fetch_add(n, Ordering::Relaxed);
            metrics::counter!("rustle_local_store_evictions_total").increment(n);
        }
    }

    /// Stores a new version (or finds the existing one with the same id).
    ///
    /// # Errors
    /// Write refusals of the version set, or [`BackendError::StoreFull`].
    pub fn put(
        &self,
        address: &Address,
        new: NewVersion,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<PutOutcome, BackendError> {
        let mut inner = self.write();
        let growth = usize::from(
            !inner
                .records
                .get(address.canonical())
                .is_some_and(|r| r.set.entries().iter().any(|e| e.id() == &new.id)),
        );
        let (outcome, evicted) =
            inner.update(address, retention, growth, |set| set.put(new, now))?;
        drop(inner);
        self.count_evictions(evicted);
        Ok(outcome?)
    }

    /// Writes a tombstone (or finds the existing one with the same id).
    ///
    /// # Errors
    /// Nothing to delete, an id that names a version, or [`BackendError::StoreFull`].
    pub fn delete(
        &self,
        address: &Address,
        id: EnvelopeId,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<DeleteOutcome, BackendError> {
        let mut inner = self.write();
        let Some(record) = inner.records.get(address.canonical()) else {
            return Err(ucxl::WriteError::NotFound.into());
        };
        let growth = usize::from(!record.set.entries().iter().any(|e| e.id() == &id));
        let (outcome, evicted) =
            inner.update(address, retention, growth, |set| set.delete(id, None, now))?;
        drop(inner);
        self.count_evictions(evicted);
        Ok(outcome?)
    }

    /// Merges another replica's version set into the record (cache fill and replay).
    ///
    /// # Errors
    /// [`BackendError::StoreFull`] when owned data leaves no room.
    pub fn absorb(
        &self,
        address: &Address,
        other: &VersionSet,
        retention: Retention,
    ) -> Result<bool, BackendError> {
        let mut inner = self.write();
        let growth = match inner.records.get(address.canonical()) {
            Some(r) => other
                .entries()
                .iter()
                .filter(|e| !r.set.entries().iter().any(|mine| mine.id() == e.id()))
                .count(),
            None => other.len(),
        };
        let (changed, evicted) =
            inner.update(address, retention, growth, |set| set.merge(other))?;
        drop(inner);
        self.count_evictions(evicted);
        Ok(changed)
    }

    /// Runs `read` on the record at `address`, if any (marking it recently used).
    fn with_record<T>(&self, address: &Address, read: impl FnOnce(&Record) -> T) -> Option<T> {
        let key = address.canonical();
        let inner = self.read();
        let record = inner.records.get(key)?;
        let out = read(record);
        if record.owned {
            return Some(out);
        }
        drop(inner);
        self.write().touch(key);
        Some(out)
    }

    /// The version the address's temporal segment selects.
    #[must_use]
    pub fn get(&self, address: &Address) -> Option<(u32, Arc<Version>)> {
        self.with_record(address, |r| {
            r.set
                .resolve(address.temporal())
                .map(|(n, v)| (n, Arc::clone(v)))
        })
        .flatten()
    }

    /// The current history of the address (empty when deleted or absent).
    #[must_use]
    pub fn history(&self, address: &Address) -> Vec<VersionSummary> {
        self.with_record(address, |r| r.set.history())
            .unwrap_or_default()
    }

    /// A copy of the record's version set, if any.
    #[must_use]
    pub fn version_set(&self, address: &Address) -> Option<VersionSet> {
        self.with_record(address, |r| r.set.clone())
    }

    /// One page of matches, sorted by canonical address, plus whether more follow.
    #[must_use]
    pub fn search(&self, query: &SearchQuery) -> (Vec<SearchItem>, bool) {
        let inner = self.read();
        let start = query
            .after
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let mut items = Vec::new();
        let mut more = false;
        for record in inner
            .records
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(_, r)| r)
        {
            if !query.pattern.matches(&record.address) {
                continue;
            }
            let Some((version, latest)) = record.set.latest() else {
                continue;
            };
            if let Some(wanted) = &query.content_type
                && !same_media_type(wanted, &latest.content_type)
            {
                continue;
            }
            if items.len() == query.limit {
                more = true;
                break;
            }
            items.push(SearchItem::new(&record.address, version, latest));
        }
        (items, more)
    }

    /// Changes the bound; lowering it evicts cached records at once.
    pub fn set_max_entries(&self, max_entries: usize) {
        let mut inner = self.write();
        inner.max_entries = max_entries;
        let evicted = inner.make_room(0, "").unwrap_or(0);
        drop(inner);
        self.count_evictions(evicted);
    }

    /// Counters for `/v1/status`.
    #[must_use]
    pub fn status(&self) -> LocalStoreStatus {
        let inner = self.read();
        LocalStoreStatus {
            addresses: inner.records.len(),
            entries: inner.entries,
            owned_entries: inner.owned_entries,
            max_entries: inner.max_entries,
            evictions: self.evictions.load(Ordering::Relaxed),
        }
    }
}

/// Compares media types by essence (`type/subtype`), ignoring case and parameters.
#[must_use]
pub fn same_media_type(a: &str, b: &str) -> bool {
    let essence = |s: &str| {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    essence(a) == essence(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};
    use ucxl::Pattern;

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("valid address")
    }

    fn new(id: &str) -> NewVersion {
        NewVersion {
            id: EnvelopeId::parse(id).expect("valid id"),
            content: Arc::new(json!({"id": id})),
            content_type: "application/json".into(),
            metadata: Map::new(),
            created_at: None,
            hash: None,
            size: None,
        }
    }

    fn everything(limit: usize) -> SearchQuery {
        SearchQuery {
            pattern: Pattern::everything(),
            limit,
            after: None,
            content_type: None,
        }
    }

    #[test]
    fn owned_data_is_never_evicted_and_a_full_store_refuses_writes() {
        let store = LocalStore::new(2);
        let now = Utc::now();
        store
            .put(&addr("ucxl://a:b@c:d/1"), new("1"), Retention::Owned, now)
            .expect("fits");
        store
            .put(&addr("ucxl://a:b@c:d/2"), new("2"), Retention::Owned, now)
            .expect("fits");
        let full = store.put(&addr("ucxl://a:b@c:d/3"), new("3"), Retention::Owned, now);
        assert_eq!(full.err(), Some(BackendError::StoreFull { limit: 2 }));
        // retrying an existing id needs no room
        assert!(
            store
                .put(&addr("ucxl://a:b@c:d/2"), new("2"), Retention::Owned, now)
                .is_ok()
        );
        assert_eq!(store.status().entries, 2);
        assert_eq!(store.status().owned_entries, 2);
        assert!(store.get(&addr("ucxl://a:b@c:d/1")).is_some());
    }

    #[test]
    fn cached_data_is_evicted_least_recently_used_first() {
        let store = LocalStore::new(3);
        let now = Utc::now();
        for i in 1..=3 {
            let a = addr(&format!("ucxl://a:b@c:d/{i}"));
            store
                .put(&a, new(&i.to_string()), Retention::Cached, now)
                .expect("fits");
        }
        // touch 1 so that 2 is the least recently used
        assert!(store.get(&addr("ucxl://a:b@c:d/1")).is_some());
        store
            .put(&addr("ucxl://a:b@c:d/4"), new("4"), Retention::Owned, now)
            .expect("evicts");
        assert!(
            store.get(&addr("ucxl://a:b@c:d/2")).is_none(),
            "LRU record evicted"
        );
        assert!(store.get(&addr("ucxl://a:b@c:d/1")).is_some());
        assert!(store.get(&addr("ucxl://a:b@c:d/3")).is_some());
        let status = store.status();
        assert_eq!(
            (status.entries, status.owned_entries, status.evictions),
            (3, 1, 1)
        );
    }

    #[test]
    fn cached_record_becomes_owned_on_an_owned_write() {
        let store = LocalStore::new(2);
        let now = Utc::now();
        let a = addr("ucxl://a:b@c:d/x");
        store
            .put(&a, new("1"), Retention::Cached, now)
            .expect("fits");
        store
            .put(&a, new("2"), Retention::Owned, now)
            .expect("fits");
        assert_eq!(store.status().owned_entries, 2);
        let full = store.put(&addr("ucxl://a:b@c:d/y"), new("3"), Retention::Cached, now);
        assert_eq!(full.err(), Some(BackendError::StoreFull { limit: 2 }));
    }

    #[test]
    fn lowering_the_bound_evicts_cached_records() {
        let store = LocalStore::new(10);
        let now = Utc::now();
        for i in 1..=4 {
            let a = addr(&format!("ucxl://a:b@c:d/{i}"));
            store
                .put(&a, new(&i.to_string()), Retention::Cached, now)
                .expect("fits");
        }
        store.set_max_entries(2);
        assert_eq!(store.status().entries, 2);
        assert_eq!(store.status().max_entries, 2);
    }

    #[test]
    fn absorb_merges_and_counts_growth() {
        let store = LocalStore::new(10);
        let a = addr("ucxl://a:b@c:d/x");
        let mut set = VersionSet::default();
        set.put(new("1"), Utc::now()).expect("put");
        set.put(new("2"), Utc::now()).expect("put");
        assert!(store.absorb(&a, &set, Retention::Cached).expect("fits"));
        assert!(
            !store.absorb(&a, &set, Retention::Cached).expect("fits"),
            "idempotent"
        );
        assert_eq!(store.status().entries, 2);
        assert_eq!(store.history(&a).len(), 2);
    }

    #[test]
    fn search_pages_in_address_order() {
        let store = LocalStore::new(100);
        let now = Utc::now();
        for p in ["c", "a", "b", "d"] {
            let a = addr(&format!("ucxl://a:b@c:d/{p}"));
            store.put(&a, new(p), Retention::Owned, now).expect("fits");
        }
        let (page, more) = store.search(&everything(2));
        let names: Vec<_> = page.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(names, ["ucxl://a:b@c:d/a", "ucxl://a:b@c:d/b"]);
        assert!(more);
        let mut q = everything(2);
        q.after = Some("ucxl://a:b@c:d/b".into());
        let (page, more) = store.search(&q);
        assert_eq!(page.len(), 2);
        assert!(!more);
    }

    #[test]
    fn media_types_compare_by_essence() {
        assert!(same_media_type(
            "application/json",
            "Application/JSON; charset=utf-8"
        ));
        assert!(!same_media_type("text/plain", "application/json"));
    }
}
