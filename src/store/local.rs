//! The local store: version sets in memory with node semantics, bounded by
//! `RUSTLE_CACHE_MAX_ENTRIES`.
//!
//! Records are *owned* (the only copy: mock-mode writes, journaled fallback writes) or
//! *cached* (copies of cluster data). Only cached records are evicted, least recently used
//! first; when owned data fills the store, writes of new versions are refused rather than
//! silently dropping acknowledged data.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use ucxl::{
    Address, DeleteOutcome, EnvelopeId, NewVersion, PutOutcome, SearchItem, Version, VersionSet,
    VersionSummary,
};

use crate::backend::{LocalStoreStatus, SearchQuery};
use crate::config::LocalStorage;

/// Why the local store could not do what was asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The version set refused the write (id reuse, hash mismatch, nothing to delete).
    #[error(transparent)]
    Write(#[from] ucxl::WriteError),
    /// Data the store must keep (the only copy) fills it.
    #[error("the local store is full ({limit} versions)")]
    Full {
        /// The configured bound.
        limit: usize,
    },
    /// A search ran past its deadline.
    #[error("the search deadline passed")]
    Timeout,
    /// A search task failed (a bug).
    #[error("a search task failed: {0}")]
    Task(String),
}

/// Whether a write makes its record the only copy of its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// The only copy: never evicted.
    Owned,
    /// A copy of data held elsewhere: evictable.
    Cached,
}

/// Most freed ids one record remembers; past this the oldest are forgotten.
pub const FREED_MAX: usize = 4096;

/// What a delete freed, remembered by id so that a late retry of the same write stays a
/// no-op instead of bringing the deleted content back (a node keeps every version; the
/// only copy drops what reads cannot see).
#[derive(Debug, Clone)]
enum Freed {
    /// A version: its number in its history, and its fields without the content.
    Version(u32, Arc<Version>),
    /// A delete.
    Tombstone(ucxl::Tombstone),
}

/// Freed ids of one record, oldest first. Only owned records that saw a delete have any,
/// so the table is boxed on first use: a cached record carries one null pointer.
#[derive(Debug, Default)]
struct FreedIds(Option<Box<FreedTable>>);

#[derive(Debug, Default)]
struct FreedTable {
    by_id: std::collections::HashMap<EnvelopeId, Freed>,
    order: std::collections::VecDeque<EnvelopeId>,
}

impl FreedIds {
    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|t| t.by_id.is_empty())
    }

    fn get(&self, id: &EnvelopeId) -> Option<&Freed> {
        self.0.as_ref()?.by_id.get(id)
    }

    /// The freed entries, oldest first.
    fn rows(&self) -> Vec<FreedRow> {
        self.0.as_ref().map_or_else(Vec::new, |t| {
            t.order
                .iter()
                .filter_map(|id| t.by_id.get(id))
                .map(Freed::row)
                .collect()
        })
    }

    /// Adds `freed` under `id` (kept where it is in the order when already held).
    fn insert(&mut self, id: EnvelopeId, freed: Freed) {
        let table = self.0.get_or_insert_with(Box::default);
        if table.by_id.insert(id.clone(), freed).is_none() {
            table.order.push_back(id);
        }
        while table.order.len() > FREED_MAX {
            if let Some(old) = table.order.pop_front() {
                table.by_id.remove(&old);
            }
        }
    }

    fn remember(&mut self, dropped: Vec<(u32, ucxl::Entry)>) {
        for (number, entry) in dropped {
            let id = entry.id().clone();
            let freed = match entry {
                ucxl::Entry::Version(v) => Freed::Version(
                    number,
                    Arc::new(Version {
                        content: serde_json::Value::Null.into(),
                        ..(*v).clone()
                    }),
                ),
                ucxl::Entry::Tombstone(t) => Freed::Tombstone(t),
            };
            self.insert(id, freed);
        }
    }

    /// A put of a freed id: the version as it was when the content is the same (the same
    /// write retried), else a conflict; a freed delete's id is a tombstone's.
    fn put(&self, new: &NewVersion) -> Option<Result<PutOutcome, StoreError>> {
        Some(match self.get(&new.id)? {
            Freed::Version(number, ghost) => match new.content.digest() {
                Ok((hash, _)) if hash == ghost.hash => Ok(PutOutcome::Existing {
                    version: *number,
                    stored: Arc::new(Version {
                        content: new.content.clone(),
                        ..(**ghost).clone()
                    }),
                }),
                _ => Err(ucxl::WriteError::IdOfFreedVersion(new.id.clone()).into()),
            },
            Freed::Tombstone(t) => Err(ucxl::WriteError::IdIsTombstone(t.id.clone()).into()),
        })
    }

    /// A delete with a freed id: a no-op when it named a delete, a conflict when a version.
    fn delete(&self, id: &EnvelopeId) -> Option<Result<DeleteOutcome, StoreError>> {
        Some(match self.get(id)? {
            Freed::Tombstone(t) => Ok(DeleteOutcome::AlreadyDeleted(t.clone())),
            Freed::Version(..) => Err(ucxl::WriteError::IdIsVersion(id.clone()).into()),
        })
    }
}

impl Freed {
    fn row(&self) -> FreedRow {
        match self {
            Self::Version(number, v) => FreedRow {
                number: Some(*number),
                entry: ucxl::Entry::Version(Arc::clone(v)),
            },
            Self::Tombstone(t) => FreedRow {
                number: None,
                entry: ucxl::Entry::Tombstone(t.clone()),
            },
        }
    }

    fn from_row(row: FreedRow) -> (EnvelopeId, Self) {
        let id = row.entry.id().clone();
        let freed = match (row.entry, row.number) {
            (ucxl::Entry::Version(v), n) => Self::Version(n.unwrap_or(0), v),
            (ucxl::Entry::Tombstone(t), _) => Self::Tombstone(t),
        };
        (id, freed)
    }
}

/// An id a delete freed, as the durable store keeps it: the entry (a version without its
/// content, or a tombstone) and a version's number in its history.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FreedRow {
    /// A version's number in its history; `None` for a tombstone.
    pub number: Option<u32>,
    /// The freed entry.
    pub entry: ucxl::Entry,
}

/// Everything the store holds of one address as the only copy: its entries, oldest first,
/// and the ids deletes freed, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordImage {
    /// The address, without a temporal segment.
    pub address: Address,
    /// Versions and tombstones, oldest first.
    pub entries: Vec<ucxl::Entry>,
    /// Freed ids, oldest first.
    pub freed: Vec<FreedRow>,
}

#[derive(Debug)]
struct Record {
    address: Address,
    set: VersionSet,
    /// Ids a delete freed (owned records only).
    freed: FreedIds,
    owned: bool,
    /// LRU tick of the last access (cached records only are in the LRU index).
    touched: u64,
    /// Versions of the current history that precede the ones held (a cache may hold only
    /// the newest part of a history the cluster knows in full); 0 once the record holds a
    /// tombstone, since a delete starts a new history the store sees from its start.
    offset: u32,
}

/// What the local store knows of the version an address selects.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The version, with its number.
    Found(u32, Arc<Version>),
    /// No such version (nothing stored, deleted, or past the latest).
    Missing,
    /// The version precedes the part of the history this cache holds.
    NotHeld,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keyed by canonical address: the text each record's address shares.
    records: BTreeMap<Arc<str>, Record>,
    /// tick → canonical address, for cached records.
    lru: BTreeMap<u64, Arc<str>>,
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
    /// Whether the owned records are kept on disk (a durable store loaded them).
    on_disk: std::sync::atomic::AtomicBool,
    /// The numbering of invalidations by the change feeds (`coherence`).
    coherence: super::coherence::Coherence,
}

impl Inner {
    fn offset(&self, address: &Address) -> u32 {
        self.records
            .get(address.canonical())
            .map_or(0, |r| r.offset)
    }

    fn touch(&mut self, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(record) = self.records.get_mut(key) {
            if !record.owned {
                self.lru.remove(&record.touched);
                self.lru.insert(tick, record.address.canonical_shared());
            }
            record.touched = tick;
        }
    }

    /// Removes the record at `key`, owned or cached, with its counters and LRU entry.
    fn forget(&mut self, key: &str) {
        if let Some(old) = self.records.remove(key) {
            self.entries -= old.set.len();
            if old.owned {
                self.owned_entries -= old.set.len();
            } else {
                self.lru.remove(&old.touched);
            }
        }
    }

    /// Adds `image` as an owned record (the address must hold none). Never refused for
    /// space: this is data the store already acknowledged.
    fn install(&mut self, image: RecordImage) {
        let mut set = VersionSet::default();
        for entry in image.entries {
            set.insert(entry);
        }
        let mut freed = FreedIds::default();
        for row in image.freed {
            let (id, f) = Freed::from_row(row);
            freed.insert(id, f);
        }
        if set.is_empty() && freed.is_empty() {
            return;
        }
        let key = image.address.canonical_shared();
        self.entries += set.len();
        self.owned_entries += set.len();
        self.tick += 1;
        self.records.insert(
            key,
            Record {
                address: image.address.without_temporal(),
                set,
                freed,
                owned: true,
                touched: self.tick,
                offset: 0,
            },
        );
    }

    /// Removes a cached record with its counters and LRU entry (owned records stay).
    fn remove_cached(&mut self, key: &str) {
        if self.records.get(key).is_some_and(|r| !r.owned)
            && let Some(old) = self.records.remove(key)
        {
            self.entries -= old.set.len();
            self.lru.remove(&old.touched);
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
            if &*key == keep {
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
    ///
    /// `growth` entries must fit first (evicting cached records); `None` skips the check,
    /// for changes that may not be refused for space (deletes). A change that adds nothing
    /// needs no room and changes no ownership. Returns the change's result and how many
    /// records were evicted.
    fn update<T>(
        &mut self,
        address: &Address,
        retention: Retention,
        growth: Option<usize>,
        change: impl FnOnce(&mut VersionSet) -> T,
    ) -> Result<(T, u64), StoreError> {
        let key = address.canonical();
        let mut evicted = 0;
        if let Some(growth) = growth.filter(|g| *g > 0) {
            evicted = self.make_room(growth, key).ok_or(StoreError::Full {
                limit: self.max_entries,
            })?;
        }
        let record = self
            .records
            .entry(address.canonical_shared())
            .or_insert_with(|| Record {
                address: address.without_temporal(),
                set: VersionSet::default(),
                freed: FreedIds::default(),
                owned: false,
                touched: 0,
                offset: 0,
            });
        let before = record.set.len();
        let out = change(&mut record.set);
        // Decided before compaction: a delete that compacts a record to its tombstone
        // leaves the length as it was, yet the tombstone is new data.
        let changed = record.set.len() != before;
        if record
            .set
            .entries()
            .iter()
            .any(|e| matches!(e, ucxl::Entry::Tombstone(_)))
        {
            record.offset = 0;
        }
        if retention == Retention::Owned {
            // The only copy: what reads cannot see any more is dropped, not kept; its ids
            // are remembered.
            let dropped = record.set.compact();
            record.freed.remember(dropped);
        }
        let after = record.set.len();
        if retention == Retention::Owned && changed && !record.owned {
            record.owned = true;
            self.lru.remove(&record.touched);
            self.owned_entries += before;
        }
        if record.owned {
            self.owned_entries = self.owned_entries + after - before;
        }
        self.entries = self.entries + after - before;
        if after == 0 && record.freed.is_empty() {
            self.records.remove(key);
        } else {
            self.touch(key);
        }
        // Shrinking changes (compaction) or skipped checks may leave the store over its
        // bound: evict cached records to get back under it where possible.
        evicted += self.make_room(0, key).unwrap_or(0);
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
            on_disk: std::sync::atomic::AtomicBool::new(false),
            coherence: super::coherence::Coherence::default(),
        }
    }

    pub(super) fn coherence(&self) -> &super::coherence::Coherence {
        &self.coherence
    }

    /// Drops the cached (not owned) record of `address` unless its newest entry is `id`.
    /// Whether the cached copy at `address` (not data held as the only copy) has entry `id`.
    pub(super) fn holds_cached(&self, address: &Address, id: &EnvelopeId) -> bool {
        self.read()
            .records
            .get(address.canonical())
            .is_some_and(|r| !r.owned && r.set.contains(id))
    }

    pub(super) fn drop_cached_unless(&self, address: &Address, id: &EnvelopeId) {
        let mut inner = self.write();
        let key = address.canonical();
        let keep = inner
            .records
            .get(key)
            .is_none_or(|r| r.owned || r.set.entries().last().is_some_and(|e| e.id() == id));
        if !keep {
            inner.remove_cached(key);
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
    /// Write refusals of the version set, or [`StoreError::Full`].
    pub fn put(
        &self,
        address: &Address,
        new: NewVersion,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<PutOutcome, StoreError> {
        let mut inner = self.write();
        if let Some(freed) = inner
            .records
            .get(address.canonical())
            .and_then(|r| r.freed.put(&new))
        {
            return freed;
        }
        let exists = inner
            .records
            .get(address.canonical())
            .is_some_and(|r| r.set.contains(&new.id));
        let growth = usize::from(!exists);
        let (outcome, evicted) =
            inner.update(address, retention, Some(growth), |set| set.put(new, now))?;
        let offset = inner.offset(address);
        drop(inner);
        self.count_evictions(evicted);
        Ok(match outcome? {
            PutOutcome::Created { version, stored } => PutOutcome::Created {
                version: version.saturating_add(offset),
                stored,
            },
            PutOutcome::Existing { version, stored } => PutOutcome::Existing {
                version: version.saturating_add(offset),
                stored,
            },
        })
    }

    /// Writes a tombstone (or finds the existing one with the same id).
    ///
    /// # Errors
    /// Nothing to delete, an id that names a version, or [`StoreError::Full`].
    pub fn delete(
        &self,
        address: &Address,
        id: EnvelopeId,
        retention: Retention,
        now: DateTime<Utc>,
    ) -> Result<DeleteOutcome, StoreError> {
        let mut inner = self.write();
        match inner.records.get(address.canonical()) {
            None => return Err(ucxl::WriteError::NotFound.into()),
            Some(record) => {
                if let Some(freed) = record.freed.delete(&id) {
                    return freed;
                }
            }
        }
        // A delete is never refused for space: it makes a record smaller or keeps it.
        let (outcome, evicted) =
            inner.update(address, retention, None, |set| set.delete(id, None, now))?;
        drop(inner);
        self.count_evictions(evicted);
        Ok(outcome?)
    }

    /// Writes a tombstone whether or not the store holds a live version (a fallback delete
    /// of an address only the cluster holds): the cluster decides on replay.
    ///
    /// # Errors
    /// An id that names a version, or [`StoreError::Full`].
    pub fn delete_blind(
        &self,
        address: &Address,
        id: EnvelopeId,
        now: DateTime<Utc>,
    ) -> Result<DeleteOutcome, StoreError> {
        let mut inner = self.write();
        if let Some(freed) = inner
            .records
            .get(address.canonical())
            .and_then(|r| r.freed.delete(&id))
        {
            return freed;
        }
        let known = inner
            .records
            .get(address.canonical())
            .is_some_and(|r| r.set.is_live() || r.set.contains(&id));
        let (outcome, evicted) = if known {
            inner.update(address, Retention::Owned, None, |set| {
                set.delete(id, None, now)
            })?
        } else {
            let tombstone = ucxl::Tombstone {
                id,
                created_at: ucxl::envelope::normalise_time(now),
            };
            inner.update(address, Retention::Owned, Some(1), |set| {
                set.insert(ucxl::Entry::Tombstone(tombstone.clone()));
                Ok(DeleteOutcome::Deleted(tombstone))
            })?
        };
        drop(inner);
        self.count_evictions(evicted);
        Ok(outcome?)
    }

    /// Caches version `number` of `address` as the cluster answered it. The record keeps
    /// a contiguous newest part of the history: a version that continues it is added, a
    /// newer one that does not replaces it, an older one is ignored. Owned records (data
    /// not yet replayed) are left alone. Returns false when the store had no room.
    pub fn observe(&self, address: &Address, number: u32, version: &Arc<Version>) -> bool {
        let mut inner = self.write();
        let key = address.canonical();
        let (replace, append) = match inner.records.get(key) {
            None => (true, false),
            Some(r) if r.owned || r.set.contains(&version.id) => (false, false),
            Some(r) => {
                let newest = r.set.entries().last().map(ucxl::Entry::created_at);
                let newer = newest.is_none_or(|t| version.created_at > t);
                let held = u32::try_from(r.set.current().count()).unwrap_or(u32::MAX);
                let next = r.offset.saturating_add(held).saturating_add(1);
                let contiguous = r.set.is_live() && number == next;
                (newer && !contiguous, newer && contiguous)
            }
        };
        if !replace && !append {
            inner.touch(key);
            return true;
        }
        if replace {
            inner.remove_cached(key);
        }
        let entry = ucxl::Entry::Version(Arc::clone(version));
        let Ok(((), evicted)) = inner.update(address, Retention::Cached, Some(1), |set| {
            set.insert(entry);
        }) else {
            return false;
        };
        if replace && let Some(record) = inner.records.get_mut(key) {
            record.offset = number.saturating_sub(1);
        }
        drop(inner);
        self.count_evictions(evicted);
        true
    }

    /// Caches a delete the cluster acknowledged: reads find nothing until a new put.
    pub fn observe_delete(&self, address: &Address, tombstone: ucxl::Tombstone) {
        let mut inner = self.write();
        let key = address.canonical();
        let Some(newest) = inner.records.get(key).map(|r| {
            if r.owned {
                None
            } else {
                Some(r.set.entries().last().map(ucxl::Entry::created_at))
            }
        }) else {
            return self.observe_delete_afresh(inner, address, tombstone);
        };
        let Some(newest) = newest else {
            return;
        };
        if newest.is_some_and(|t| tombstone.created_at <= t) {
            return self.observe_delete_afresh(inner, address, tombstone);
        }
        // The delete follows everything the copy holds: it joins them, so a late report of
        // a change the copy holds is still recognised as known (`holds_cached`).
        if let Ok(((), evicted)) = inner.update(address, Retention::Cached, Some(1), |set| {
            set.insert(ucxl::Entry::Tombstone(tombstone));
        }) {
            drop(inner);
            self.count_evictions(evicted);
        }
    }

    fn observe_delete_afresh(
        &self,
        mut inner: RwLockWriteGuard<'_, Inner>,
        address: &Address,
        tombstone: ucxl::Tombstone,
    ) {
        inner.remove_cached(address.canonical());
        if let Ok(((), evicted)) = inner.update(address, Retention::Cached, Some(1), |set| {
            set.insert(ucxl::Entry::Tombstone(tombstone));
        }) {
            drop(inner);
            self.count_evictions(evicted);
        }
    }

    /// The record at `address` now has a copy on the cluster (its journal entries were
    /// replayed): it becomes an evictable cache entry.
    pub fn release(&self, address: &Address) {
        let mut inner = self.write();
        let key = address.canonical();
        let Some(record) = inner.records.get_mut(key) else {
            return;
        };
        if !record.owned {
            return;
        }
        record.owned = false;
        let n = record.set.len();
        inner.owned_entries -= n;
        inner.touch(key);
    }

    /// Takes back a version this request stored as the only copy, when its journal append
    /// failed: the store must not show a write the client is told failed.
    pub fn undo_put(&self, address: &Address, id: &EnvelopeId) {
        let mut inner = self.write();
        let key = address.canonical();
        let Some(record) = inner.records.get_mut(key) else {
            return;
        };
        if !record.set.remove(id) {
            return;
        }
        let owned = record.owned;
        let empty = record.set.is_empty() && record.freed.is_empty();
        inner.entries -= 1;
        if owned {
            inner.owned_entries -= 1;
        }
        if empty {
            inner.records.remove(key);
        }
    }

    /// Forgets what the store holds of `address` (a delete whose journal append failed:
    /// the versions it hid are gone from the only copy, so the record cannot be restored;
    /// reads then go to the cluster, or answer "not held"). The journal keeps whatever it
    /// holds for the address.
    pub fn discard(&self, address: &Address) {
        let mut inner = self.write();
        let key = address.canonical();
        if let Some(record) = inner.records.remove(key) {
            inner.entries -= record.set.len();
            if record.owned {
                inner.owned_entries -= record.set.len();
            } else {
                inner.lru.remove(&record.touched);
            }
        }
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
        match self.lookup(address) {
            Lookup::Found(n, v) => Some((n, v)),
            Lookup::Missing | Lookup::NotHeld => None,
        }
    }

    /// The version the address's temporal segment selects, telling a version that does
    /// not exist from one this cache does not hold.
    #[must_use]
    pub fn lookup(&self, address: &Address) -> Lookup {
        self.with_record(address, |r| {
            let held: Vec<&Arc<Version>> = r.set.current().collect();
            let total = usize::try_from(r.offset)
                .unwrap_or(usize::MAX)
                .saturating_add(held.len());
            let Some(n) = address.temporal().select(total) else {
                return Lookup::Missing;
            };
            let offset = usize::try_from(r.offset).unwrap_or(usize::MAX);
            match n.checked_sub(offset + 1).and_then(|i| held.get(i)) {
                Some(v) => Lookup::Found(u32::try_from(n).unwrap_or(u32::MAX), Arc::clone(v)),
                None => Lookup::NotHeld,
            }
        })
        .unwrap_or(Lookup::NotHeld)
    }

    /// True when the store holds the address's record as the only copy (fallback writes
    /// not yet replayed, or mock data).
    #[must_use]
    pub fn is_owned(&self, address: &Address) -> bool {
        self.read()
            .records
            .get(address.canonical())
            .is_some_and(|r| r.owned)
    }

    /// The current history of the address (empty when deleted or absent).
    #[must_use]
    pub fn history(&self, address: &Address) -> Vec<VersionSummary> {
        self.with_record(address, |r| r.set.history())
            .unwrap_or_default()
    }

    /// The current history when the store holds all of it; `None` when it holds only the
    /// newest part, or nothing.
    #[must_use]
    pub fn full_history(&self, address: &Address) -> Option<Vec<VersionSummary>> {
        self.with_record(address, |r| (r.offset == 0).then(|| r.set.history()))
            .flatten()
    }

    /// One page of matches, sorted by canonical address, plus whether more follow.
    ///
    /// Scans only the address range the pattern's literal prefix allows, and gives up with
    /// [`StoreError::Timeout`] once `deadline` has passed.
    ///
    /// # Errors
    /// [`StoreError::Timeout`].
    pub fn search(
        &self,
        query: &SearchQuery,
        deadline: Instant,
    ) -> Result<(Vec<SearchItem>, bool), StoreError> {
        let inner = self.read();
        let (mut items, more) = query
            .scan(&inner.records, |r| (&r.address, &r.set), deadline)
            .map_err(|_| StoreError::Timeout)?;
        for item in &mut items {
            let offset = inner.offset(&item.address);
            item.version = item.version.saturating_add(offset);
        }
        Ok((items, more))
    }

    /// One page of matches with its cursor, scanned off the async workers (the scan is
    /// CPU-bound) and within the request deadline.
    ///
    /// # Errors
    /// [`StoreError::Timeout`], or [`StoreError::Task`] if the scan panicked.
    pub async fn search_page(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
        query: &SearchQuery,
    ) -> Result<(Vec<SearchItem>, Option<String>), StoreError> {
        let store = Arc::clone(self);
        let owned = query.clone();
        let deadline = deadline.into_std();
        let (items, more) = tokio::task::spawn_blocking(move || store.search(&owned, deadline))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let next_cursor = more
            .then(|| {
                items
                    .last()
                    .map(|i| crate::backend::encode_cursor(i.address.canonical()))
            })
            .flatten();
        Ok((items, next_cursor))
    }

    /// Changes the bound; lowering it evicts cached records at once.
    pub fn set_max_entries(&self, max_entries: usize) {
        let mut inner = self.write();
        inner.max_entries = max_entries;
        let evicted = inner.make_room(0, "").unwrap_or(0);
        drop(inner);
        self.count_evictions(evicted);
    }

    /// What the store holds of `address` as the only copy (`None` when nothing, or only a
    /// cache of cluster data): what the durable store writes to disk and restores.
    #[must_use]
    pub fn image(&self, address: &Address) -> Option<RecordImage> {
        let inner = self.read();
        let record = inner.records.get(address.canonical())?;
        record.owned.then(|| RecordImage {
            address: record.address.clone(),
            entries: record.set.entries().to_vec(),
            freed: record.freed.rows(),
        })
    }

    /// Puts back what [`image`](Self::image) returned for the address (or forgets the
    /// address when it returned `None`): a change the disk refused is taken back.
    pub fn restore(&self, address: &Address, image: Option<RecordImage>) {
        let mut inner = self.write();
        inner.forget(address.canonical());
        if let Some(image) = image {
            inner.install(image);
        }
    }

    /// Installs `images` (what the disk holds) as the only copy, replacing what the store
    /// holds at their addresses, and marks the store as kept on disk. Other records stay
    /// (a hybrid fallback's journaled data is not the disk store's to drop).
    pub fn install_owned(&self, images: Vec<RecordImage>) {
        let mut inner = self.write();
        for image in images {
            let key = image.address.canonical_shared();
            inner.forget(&key);
            inner.install(image);
        }
        drop(inner);
        self.on_disk.store(true, Ordering::Relaxed);
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
            storage: if self.on_disk.load(Ordering::Relaxed) {
                LocalStorage::Disk
            } else {
                LocalStorage::Memory
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;
    use ucxl::Pattern;

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("valid address")
    }

    fn new(id: &str) -> NewVersion {
        NewVersion::json(EnvelopeId::parse(id).expect("valid id"), json!({"id": id}))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
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
        assert_eq!(full.err(), Some(StoreError::Full { limit: 2 }));
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
    fn a_cached_record_holds_its_address_text_once_and_no_freed_table() {
        let store = LocalStore::new(10);
        let a = addr("ucxl://a:b@c:d/*~1/x/y.json");
        let content: ucxl::Content = json!({"x": 1}).into();
        let (hash, size) = content.digest().expect("hashable");
        let version = ucxl::Version {
            id: EnvelopeId::parse("v1").expect("valid id"),
            content,
            content_type: ucxl::DEFAULT_CONTENT_TYPE.to_owned(),
            metadata: serde_json::Map::new(),
            created_at: Utc::now(),
            hash,
            size,
            written_by: None,
        };
        assert!(store.observe(&a, 1, &Arc::new(version)));
        assert!(store.get(&a.without_temporal()).is_some());
        let inner = store.read();
        let (key, record) = inner.records.iter().next().expect("one record");
        let (_, lru) = inner.lru.iter().next().expect("in the LRU index");
        let text = record.address.canonical_shared();
        // the index key, the LRU entry and the record's address: one allocation
        assert!(Arc::ptr_eq(key, &text) && Arc::ptr_eq(lru, &text));
        assert_eq!(&**key, "ucxl://a:b@c:d/x/y.json");
        assert_eq!(record.address.temporal(), ucxl::Temporal::Latest);
        // only a delete of owned data creates a freed table
        assert!(record.freed.0.is_none());
        assert_eq!(
            std::mem::size_of::<FreedIds>(),
            std::mem::size_of::<usize>()
        );
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
        assert_eq!(full.err(), Some(StoreError::Full { limit: 2 }));
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
    fn search_pages_in_address_order() {
        let store = LocalStore::new(100);
        let now = Utc::now();
        for p in ["c", "a", "b", "d"] {
            let a = addr(&format!("ucxl://a:b@c:d/{p}"));
            store.put(&a, new(p), Retention::Owned, now).expect("fits");
        }
        let (page, more) = store.search(&everything(2), far()).expect("in time");
        let names: Vec<_> = page.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(names, ["ucxl://a:b@c:d/a", "ucxl://a:b@c:d/b"]);
        assert!(more);
        let mut q = everything(2);
        q.after = Some("ucxl://a:b@c:d/b".into());
        let (page, more) = store.search(&q, far()).expect("in time");
        assert_eq!(page.len(), 2);
        assert!(!more);
    }

    #[test]
    fn a_full_store_still_takes_retries_and_deletes() {
        let store = LocalStore::new(2);
        let now = Utc::now();
        let a = addr("ucxl://a:b@c:d/x");
        store
            .put(&a, new("1"), Retention::Owned, now)
            .expect("fits");
        store
            .put(&a, new("2"), Retention::Owned, now)
            .expect("fits");
        store.set_max_entries(1);
        // a retry adds nothing, so it needs no room even over the bound
        assert!(store.put(&a, new("2"), Retention::Owned, now).is_ok());
        // a delete is never refused; it compacts the record to its tombstone
        store
            .delete(
                &a,
                EnvelopeId::parse("d").expect("id"),
                Retention::Owned,
                now,
            )
            .expect("delete");
        assert_eq!(store.status().entries, 1);
        assert!(store.get(&a).is_none());
        // and the freed room takes a new version
        store
            .put(&addr("ucxl://a:b@c:d/y"), new("3"), Retention::Owned, now)
            .expect_err("one slot, held by the tombstone");
        store.set_max_entries(2);
        store
            .put(&addr("ucxl://a:b@c:d/y"), new("3"), Retention::Owned, now)
            .expect("fits");
    }

    #[test]
    fn the_record_being_written_is_never_the_one_evicted() {
        let store = LocalStore::new(2);
        let now = Utc::now();
        let a = addr("ucxl://a:b@c:d/a");
        store
            .put(&a, new("1"), Retention::Cached, now)
            .expect("fits");
        store
            .put(&addr("ucxl://a:b@c:d/b"), new("2"), Retention::Cached, now)
            .expect("fits");
        // a is the least recently used, but it is the record being written
        assert!(store.get(&addr("ucxl://a:b@c:d/b")).is_some());
        store
            .put(&a, new("3"), Retention::Cached, now)
            .expect("evicts b");
        assert_eq!(store.history(&a).len(), 2);
        assert!(store.get(&addr("ucxl://a:b@c:d/b")).is_none());
    }

    #[test]
    fn failed_or_no_op_writes_change_no_ownership() {
        let store = LocalStore::new(10);
        let now = Utc::now();
        let a = addr("ucxl://a:b@c:d/x");
        store
            .put(&a, new("1"), Retention::Cached, now)
            .expect("fits");
        store
            .put(&a, new("1"), Retention::Owned, now)
            .expect("no-op");
        let mut bad = new("2");
        bad.hash = Some(ucxl::content_digest(&json!("other")).expect("hash").0);
        assert!(store.put(&a, bad, Retention::Owned, now).is_err());
        assert_eq!(store.status().owned_entries, 0, "still a cached record");
    }

    #[test]
    fn search_scans_only_the_literal_prefix_and_honours_the_deadline() {
        let store = LocalStore::new(1000);
        let now = Utc::now();
        for p in ["p1", "p2"] {
            for i in 0..300 {
                store
                    .put(
                        &addr(&format!("ucxl://a:b@{p}:t/{i}")),
                        new(&i.to_string()),
                        Retention::Owned,
                        now,
                    )
                    .expect("fits");
            }
        }
        let q = SearchQuery {
            pattern: Pattern::parse("ucxl://a:b@p2:any/**").expect("pattern"),
            limit: 1000,
            after: None,
            content_type: None,
        };
        let (items, more) = store.search(&q, far()).expect("in time");
        assert_eq!((items.len(), more), (300, false));
        assert!(items.iter().all(|i| i.address.project() == "p2"));
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap_or_else(Instant::now);
        assert_eq!(
            store.search(&everything(1000), past).err(),
            Some(StoreError::Timeout)
        );
    }

    /// A version as the cluster would answer it, written `secs` after a fixed time.
    fn seen(id: &str, secs: i64) -> Arc<Version> {
        let mut set = VersionSet::default();
        let at = DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).expect("time");
        let mut write = new(id);
        write.created_at = Some(at);
        let outcome = set.put(write, at).expect("put");
        Arc::clone(outcome.parts().1)
    }

    fn at(address: &str, temporal: &str) -> Address {
        let (head, path) = address.split_at(address.rfind('/').expect("path"));
        addr(&format!("{head}/{temporal}{path}"))
    }

    #[test]
    fn the_cache_answers_with_the_cluster_numbers_and_knows_what_it_lacks() {
        let store = LocalStore::new(100);
        let a = "ucxl://a:b@c:d/x";
        // The cluster answered version 7: versions 1..=6 exist but are not held.
        assert!(store.observe(&addr(a), 7, &seen("v7", 7)));
        assert_eq!(
            store.lookup(&addr(a)),
            Lookup::Found(7, seen("v7", 7)),
            "the latest keeps its number"
        );
        assert_eq!(store.lookup(&at(a, "*~7")), Lookup::Found(7, seen("v7", 7)));
        assert_eq!(store.lookup(&at(a, "*~3")), Lookup::NotHeld);
        assert_eq!(store.lookup(&at(a, "*~")), Lookup::NotHeld);
        assert_eq!(store.lookup(&at(a, "*~8")), Lookup::Missing);
        assert_eq!(store.full_history(&addr(a)), None, "only part is held");
        // Version 8 continues the held part; version 10 does not: it replaces it.
        assert!(store.observe(&addr(a), 8, &seen("v8", 8)));
        assert_eq!(store.lookup(&at(a, "~~1")), Lookup::Found(7, seen("v7", 7)));
        assert!(store.observe(&addr(a), 10, &seen("v10", 10)));
        assert_eq!(store.lookup(&addr(a)), Lookup::Found(10, seen("v10", 10)));
        assert_eq!(store.lookup(&at(a, "*~8")), Lookup::NotHeld);
        // An older answer changes nothing.
        assert!(store.observe(&addr(a), 8, &seen("v8", 8)));
        assert_eq!(store.lookup(&addr(a)), Lookup::Found(10, seen("v10", 10)));
        assert_eq!(store.status().entries, 1);
        // Addresses never seen are not held (not missing).
        assert_eq!(store.lookup(&addr("ucxl://a:b@c:d/y")), Lookup::NotHeld);
        // A delete the cluster acknowledged: reads find nothing, the history is complete.
        store.observe_delete(
            &addr(a),
            ucxl::Tombstone {
                id: id("gone"),
                created_at: DateTime::<Utc>::from_timestamp(1_800_000_100, 0).expect("time"),
            },
        );
        assert_eq!(store.lookup(&addr(a)), Lookup::Missing);
        assert_eq!(store.full_history(&addr(a)), Some(Vec::new()));
        // the delete joins what the copy held (it follows all of it), so a late feed
        // report of v10 is recognised as known
        assert_eq!(store.status().entries, 2);
    }

    #[test]
    fn fallback_writes_are_owned_until_released_and_never_replaced_by_the_cache() {
        let store = LocalStore::new(100);
        let a = addr("ucxl://a:b@c:d/x");
        assert!(store.observe(&a, 4, &seen("v4", 4)));
        // A fallback put continues the cluster's numbering and makes the record owned.
        let outcome = store
            .put(&a, new("local"), Retention::Owned, Utc::now())
            .expect("fits");
        assert_eq!(outcome.parts().0, 5);
        assert_eq!(store.status().owned_entries, 2);
        // The cache does not overwrite data that is not yet on the cluster.
        assert!(store.observe(&a, 9, &seen("v9", 9)));
        assert_eq!(
            store.lookup(&a),
            Lookup::Found(5, Arc::clone(outcome.parts().1))
        );
        store.release(&a);
        assert_eq!(store.status().owned_entries, 0);
        store.release(&a);
        assert_eq!(
            store.status().owned_entries,
            0,
            "releasing twice changes nothing"
        );
        // Once released it is a cache entry like any other, evictable.
        store.set_max_entries(1);
        assert_eq!(store.status().entries, 0);
    }

    #[test]
    fn a_blind_delete_writes_a_tombstone_even_for_an_address_not_held() {
        let store = LocalStore::new(100);
        let a = addr("ucxl://a:b@c:d/x");
        let outcome = store
            .delete_blind(&a, id("d1"), Utc::now())
            .expect("accepted");
        assert!(matches!(outcome, DeleteOutcome::Deleted(_)));
        assert_eq!(store.lookup(&a), Lookup::Missing);
        assert_eq!(store.status().owned_entries, 1);
        // The same id again is the same delete; a version's id is refused.
        let again = store
            .delete_blind(&a, id("d1"), Utc::now())
            .expect("replay");
        assert!(matches!(again, DeleteOutcome::AlreadyDeleted(_)));
        store
            .put(&a, new("v1"), Retention::Owned, Utc::now())
            .expect("fits");
        assert_eq!(
            store.delete_blind(&a, id("v1"), Utc::now()).err(),
            Some(StoreError::Write(ucxl::WriteError::IdIsVersion(id("v1"))))
        );
    }

    fn id(s: &str) -> EnvelopeId {
        EnvelopeId::parse(s).expect("valid id")
    }

    #[test]
    fn a_fallback_delete_of_a_cached_address_is_owned_and_never_evicted() {
        let store = LocalStore::new(2);
        let a = addr("ucxl://a:b@c:d/x");
        assert!(store.observe(&a, 1, &seen("v1", 1)));
        // [v1] becomes [v1, T] and compacts to [T]: the length stays, the data is new.
        store
            .delete_blind(&a, id("d1"), Utc::now())
            .expect("accepted");
        assert_eq!(store.status().owned_entries, 1);
        for i in 0..4 {
            assert!(store.observe(
                &addr(&format!("ucxl://a:b@c:d/{i}")),
                1,
                &seen(&format!("o{i}"), i)
            ));
        }
        assert_eq!(
            store.lookup(&a),
            Lookup::Missing,
            "the tombstone is still held"
        );
    }

    #[test]
    fn a_late_retry_of_a_deleted_write_changes_nothing() {
        let store = LocalStore::new(10);
        let a = addr("ucxl://a:b@c:d/x");
        let now = Utc::now();
        let first = store.put(&a, new("k"), Retention::Owned, now).expect("put");
        assert!(matches!(first, PutOutcome::Created { .. }));
        store
            .delete(&a, id("del"), Retention::Owned, now)
            .expect("delete");
        // The retry of the same write: 200 with what was stored, and still deleted.
        let again = store
            .put(&a, new("k"), Retention::Owned, now)
            .expect("retry");
        assert!(matches!(again, PutOutcome::Existing { version: 1, .. }));
        assert_eq!(again.parts().1.hash, first.parts().1.hash);
        assert_eq!(again.parts().1.content, first.parts().1.content);
        assert!(store.get(&a).is_none(), "the address stays deleted");
        // The same id with other content cannot be answered with what was stored.
        let mut other = new("k");
        other.content = serde_json::json!("something else").into();
        assert_eq!(
            store.put(&a, other, Retention::Owned, now).err(),
            Some(StoreError::Write(ucxl::WriteError::IdOfFreedVersion(id(
                "k"
            ))))
        );
        // A later write, then a replayed old delete, stay no-ops.
        store
            .put(&a, new("k2"), Retention::Owned, now)
            .expect("put");
        store
            .delete(&a, id("del2"), Retention::Owned, now)
            .expect("delete");
        assert!(matches!(
            store.delete(&a, id("del"), Retention::Owned, now),
            Ok(DeleteOutcome::AlreadyDeleted(_))
        ));
        assert!(matches!(
            store.delete_blind(&a, id("del"), now),
            Ok(DeleteOutcome::AlreadyDeleted(_))
        ));
        assert!(store.get(&a).is_none());
        assert_eq!(
            store.status().owned_entries,
            1,
            "only the tombstone is held"
        );
    }

    #[test]
    fn a_write_taken_back_leaves_the_store_as_it_was() {
        let store = LocalStore::new(10);
        let a = addr("ucxl://a:b@c:d/x");
        let now = Utc::now();
        store
            .put(&a, new("v1"), Retention::Owned, now)
            .expect("put");
        store
            .put(&a, new("v2"), Retention::Owned, now)
            .expect("put");
        store.undo_put(&a, &id("v2"));
        let (n, latest) = store.get(&a).expect("still there");
        assert_eq!((n, latest.id.as_str()), (1, "v1"));
        assert_eq!(store.status().entries, 1);
        assert_eq!(store.status().owned_entries, 1);
        store.undo_put(&a, &id("v1"));
        assert!(store.get(&a).is_none());
        assert_eq!(store.status().addresses, 0, "an emptied record is gone");
        // A delete cannot be taken back on the only copy: the record is forgotten.
        store
            .put(&a, new("v3"), Retention::Owned, now)
            .expect("put");
        store.delete_blind(&a, id("d"), now).expect("delete");
        store.discard(&a);
        assert_eq!(store.lookup(&a), Lookup::NotHeld);
        assert_eq!(store.status().entries, 0);
        assert_eq!(store.status().owned_entries, 0);
    }
}
