//! The version set of one address (SPEC §3): a grow-only set of versions and tombstones,
//! ordered by (`created_at`, `id`) and merged by union, so replicas converge and no
//! version written anywhere is silently dropped.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::address::Temporal;
use crate::content::Content;
use crate::envelope::{
    ContentHash, EnvelopeId, PrincipalName, Version, VersionSummary, normalise_time, rfc3339,
};

/// A delete: versions before it are no longer visible; a later put starts a new history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// The delete's id (its `Idempotency-Key` or a `UUIDv7`), so replays are no-ops.
    pub id: EnvelopeId,
    /// When the delete was accepted.
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

/// One member of a version set.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A stored version.
    Version(Arc<Version>),
    /// A delete.
    Tombstone(Tombstone),
}

impl<'de> Deserialize<'de> for Entry {
    /// What serde derives for the internally tagged form (`kind` beside the fields, other
    /// members ignored), read in one pass. The derived reader buffers every entry into a
    /// generic tree before it knows the kind, so content read from a stored record or a
    /// peer's copy became a `Value` tree, written out again on every read of it; read in
    /// one pass, content keeps its JSON text ([`Content`]).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;

        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Kind {
            Version,
            Tombstone,
        }
        /// `Some` for any value, `null` included (`null` is content).
        fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Content>, D::Error> {
            Content::deserialize(d).map(Some)
        }
        #[derive(Deserialize)]
        struct Flat {
            kind: Kind,
            id: EnvelopeId,
            #[serde(with = "rfc3339")]
            created_at: DateTime<Utc>,
            #[serde(default, deserialize_with = "present")]
            content: Option<Content>,
            content_type: Option<String>,
            metadata: Option<Map<String, Value>>,
            hash: Option<ContentHash>,
            size: Option<u64>,
            written_by: Option<PrincipalName>,
        }
        let flat = Flat::deserialize(deserializer)?;
        Ok(match flat.kind {
            Kind::Tombstone => Self::Tombstone(Tombstone {
                id: flat.id,
                created_at: flat.created_at,
            }),
            Kind::Version => Self::Version(Arc::new(Version {
                id: flat.id,
                content: flat
                    .content
                    .ok_or_else(|| D::Error::missing_field("content"))?,
                content_type: flat
                    .content_type
                    .ok_or_else(|| D::Error::missing_field("content_type"))?,
                metadata: flat
                    .metadata
                    .ok_or_else(|| D::Error::missing_field("metadata"))?,
                created_at: flat.created_at,
                hash: flat.hash.ok_or_else(|| D::Error::missing_field("hash"))?,
                size: flat.size.ok_or_else(|| D::Error::missing_field("size"))?,
                written_by: flat.written_by,
            })),
        })
    }
}

impl Entry {
    /// The entry's id.
    #[must_use]
    pub fn id(&self) -> &EnvelopeId {
        match self {
            Self::Version(v) => &v.id,
            Self::Tombstone(t) => &t.id,
        }
    }

    /// When the entry was written.
    #[must_use]
    pub fn created_at(&self) -> DateTime<Utc> {
        match self {
            Self::Version(v) => v.created_at,
            Self::Tombstone(t) => t.created_at,
        }
    }

    fn key(&self) -> (DateTime<Utc>, &str) {
        (self.created_at(), self.id().as_str())
    }
}

/// A write request for one new version, as a client or the gateway sends it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// The id to store it under (an existing id makes the write a no-op).
    pub id: EnvelopeId,
    /// The content.
    pub content: Content,
    /// Its media type.
    pub content_type: String,
    /// Free-form metadata.
    pub metadata: Map<String, Value>,
    /// Set by a writer that already fixed the time (journal replay); else the store's clock.
    pub created_at: Option<DateTime<Utc>>,
    /// When given, checked against the content.
    pub hash: Option<ContentHash>,
    /// When given, checked against the content.
    pub size: Option<u64>,
    /// The authenticated principal writing it (set by the gateway, never by a client).
    pub written_by: Option<PrincipalName>,
}

impl NewVersion {
    /// A new JSON version with no metadata; the store fixes time, hash and size.
    #[must_use]
    pub fn json(id: EnvelopeId, content: Value) -> Self {
        Self {
            id,
            content: Content::from(content),
            content_type: crate::envelope::DEFAULT_CONTENT_TYPE.to_owned(),
            metadata: Map::new(),
            created_at: None,
            hash: None,
            size: None,
            written_by: None,
        }
    }
}

impl From<&Version> for NewVersion {
    /// The write of an already stored version, as it was (a journal replay): the same id,
    /// time, hash and size, so every replica stores the same version.
    fn from(v: &Version) -> Self {
        Self {
            id: v.id.clone(),
            content: v.content.clone(),
            content_type: v.content_type.clone(),
            metadata: v.metadata.clone(),
            created_at: Some(v.created_at),
            hash: Some(v.hash.clone()),
            size: Some(v.size),
            written_by: v.written_by.clone(),
        }
    }
}

impl From<Version> for NewVersion {
    /// The same, taking the version (no copy of its content or metadata).
    fn from(v: Version) -> Self {
        Self {
            id: v.id,
            content: v.content,
            content_type: v.content_type,
            metadata: v.metadata,
            created_at: Some(v.created_at),
            hash: Some(v.hash),
            size: Some(v.size),
            written_by: v.written_by,
        }
    }
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The given hash is not the content's.
    #[error("hash {provided} does not match the content's JCS hash {computed}")]
    HashMismatch {
        /// What the writer sent.
        provided: ContentHash,
        /// What the content hashes to.
        computed: ContentHash,
    },
    /// The given size is not the content's.
    #[error("size {provided} does not match the content's JCS size {computed}")]
    SizeMismatch {
        /// What the writer sent.
        provided: u64,
        /// The content's size.
        computed: u64,
    },
    /// A put reused the id of a delete.
    #[error("id {0} already names a delete of this address")]
    IdIsTombstone(EnvelopeId),
    /// A delete reused the id of a version.
    #[error("id {0} already names a version of this address")]
    IdIsVersion(EnvelopeId),
    /// A delete of an address that has no live version.
    #[error("the address has no version to delete")]
    NotFound,
    /// A put reused the id of a version that a delete freed here, with other content: the
    /// store kept the id (so a retry stays a no-op) but not the content to answer with.
    #[error("id {0} names a deleted version whose content differs; use a new id")]
    IdOfFreedVersion(EnvelopeId),
    /// The content has no canonical JSON form.
    #[error(transparent)]
    Digest(#[from] crate::envelope::DigestError),
}

/// What a put did.
#[derive(Debug, Clone, PartialEq)]
pub enum PutOutcome {
    /// A new version was stored.
    Created {
        /// Its version number.
        version: u32,
        /// The stored version.
        stored: Arc<Version>,
    },
    /// The id existed: nothing changed.
    Existing {
        /// Its version number within its history.
        version: u32,
        /// The stored version.
        stored: Arc<Version>,
    },
}

impl PutOutcome {
    /// The version number and stored version, whichever the outcome.
    #[must_use]
    pub fn parts(&self) -> (u32, &Arc<Version>) {
        match self {
            Self::Created { version, stored } | Self::Existing { version, stored } => {
                (*version, stored)
            }
        }
    }
}

/// What a delete did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// A tombstone was written.
    Deleted(Tombstone),
    /// A tombstone with this id existed: nothing changed.
    AlreadyDeleted(Tombstone),
}

impl DeleteOutcome {
    /// The tombstone, whichever the outcome.
    #[must_use]
    pub fn tombstone(&self) -> &Tombstone {
        match self {
            Self::Deleted(t) | Self::AlreadyDeleted(t) => t,
        }
    }
}

/// All versions and tombstones of one address, sorted by (`created_at`, `id`), ids unique.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct VersionSet {
    entries: Vec<Entry>,
}

impl<'de> Deserialize<'de> for VersionSet {
    /// Sorts and deduplicates whatever a replica sent, so the invariants hold.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            entries: Vec<Entry>,
        }
        let mut entries = Raw::deserialize(deserializer)?.entries;
        entries.sort_by(|a, b| a.key().cmp(&b.key()));
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        entries.retain(|e| seen.insert(e.id().clone()));
        Ok(Self { entries })
    }
}

/// Saturating conversion for version numbers (a history longer than `u32::MAX` is not
/// reachable, but the conversion must not panic).
fn number(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl VersionSet {
    /// All entries, oldest first.
    #[must_use]
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries, tombstones included.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the set holds nothing at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Index of the first entry of the current history (after the last tombstone).
    fn generation_start(&self) -> usize {
        self.entries
            .iter()
            .rposition(|e| matches!(e, Entry::Tombstone(_)))
            .map_or(0, |t| t + 1)
    }

    /// The versions visible to reads, oldest first (empty after a delete).
    pub fn current(&self) -> impl Iterator<Item = &Arc<Version>> {
        self.entries[self.generation_start()..]
            .iter()
            .filter_map(|e| match e {
                Entry::Version(v) => Some(v),
                Entry::Tombstone(_) => None,
            })
    }

    /// True when reads find a version.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.generation_start() < self.entries.len()
    }

    /// The version a temporal selector picks, with its number.
    #[must_use]
    pub fn resolve(&self, temporal: Temporal) -> Option<(u32, &Arc<Version>)> {
        let current = &self.entries[self.generation_start()..];
        let n = temporal.select(current.len())?;
        match &current[n - 1] {
            Entry::Version(v) => Some((number(n), v)),
            Entry::Tombstone(_) => None,
        }
    }

    /// The latest visible version, with its number.
    #[must_use]
    pub fn latest(&self) -> Option<(u32, &Arc<Version>)> {
        self.resolve(Temporal::Latest)
    }

    /// The current history, oldest first.
    #[must_use]
    pub fn history(&self) -> Vec<VersionSummary> {
        self.current()
            .enumerate()
            .map(|(i, v)| VersionSummary::new(number(i + 1), v))
            .collect()
    }

    fn position(&self, id: &EnvelopeId) -> Option<usize> {
        self.entries.iter().position(|e| e.id() == id)
    }

    /// Version number of the version at `index`, counted within its own history.
    fn number_at(&self, index: usize) -> u32 {
        let start = self.entries[..index]
            .iter()
            .rposition(|e| matches!(e, Entry::Tombstone(_)))
            .map_or(0, |t| t + 1);
        number(index - start + 1)
    }

    /// A write time after every entry's, so a writer's own writes keep their order even
    /// when its clock stands still or steps back.
    #[must_use]
    pub fn next_time(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let now = normalise_time(now);
        match self.entries.last() {
            Some(last) if last.created_at() >= now => {
                last.created_at() + TimeDelta::microseconds(1)
            }
            _ => now,
        }
    }

    /// Inserts an entry in order; false when its id was already there.
    pub fn insert(&mut self, entry: Entry) -> bool {
        if self.position(entry.id()).is_some() {
            return false;
        }
        let at = self.entries.partition_point(|e| e.key() < entry.key());
        self.entries.insert(at, entry);
        true
    }

    /// The entries of `other` whose ids this set lacks.
    pub fn missing_from<'a>(&self, other: &'a Self) -> impl Iterator<Item = &'a Entry> {
        let mine: std::collections::HashSet<&EnvelopeId> =
            self.entries.iter().map(Entry::id).collect();
        other.entries.iter().filter(move |e| !mine.contains(e.id()))
    }

    /// Removes the entry with this id (a write taken back because its journal append
    /// failed); true when there was one.
    pub fn remove(&mut self, id: &EnvelopeId) -> bool {
        match self.position(id) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// True when an entry (version or tombstone) has this id.
    #[must_use]
    pub fn contains(&self, id: &EnvelopeId) -> bool {
        self.position(id).is_some()
    }

    /// Set union with another replica's set (linear in both sizes); true when anything
    /// was added.
    pub fn merge(&mut self, other: &Self) -> bool {
        let missing: Vec<Entry> = self.missing_from(other).cloned().collect();
        if missing.is_empty() {
            return false;
        }
        self.entries.extend(missing);
        self.entries.sort_by(|a, b| a.key().cmp(&b.key()));
        true
    }

    /// Drops what reads can no longer see: versions and tombstones before the last
    /// tombstone. Only for the sole copy of a record (replicas must keep the whole set to
    /// merge by union). Returns the dropped entries, each version with its number within
    /// its own history (a caller that must stay idempotent remembers their ids).
    pub fn compact(&mut self) -> Vec<(u32, Entry)> {
        let start = self.generation_start();
        let drop = start.saturating_sub(1);
        let numbers: Vec<u32> = (0..drop).map(|i| self.number_at(i)).collect();
        numbers
            .into_iter()
            .zip(self.entries.drain(..drop))
            .collect()
    }

    /// Stores a new version unless its id exists (then a no-op returning that version).
    ///
    /// # Errors
    /// Hash or size mismatch, or an id that names a delete.
    pub fn put(&mut self, new: NewVersion, now: DateTime<Utc>) -> Result<PutOutcome, WriteError> {
        if let Some(i) = self.position(&new.id) {
            return match &self.entries[i] {
                Entry::Version(v) => Ok(PutOutcome::Existing {
                    version: self.number_at(i),
                    stored: Arc::clone(v),
                }),
                Entry::Tombstone(t) => Err(WriteError::IdIsTombstone(t.id.clone())),
            };
        }
        let (computed, size) = new.content.digest()?;
        if let Some(provided) = new.hash
            && provided != computed
        {
            return Err(WriteError::HashMismatch { provided, computed });
        }
        if let Some(provided) = new.size
            && provided != size
        {
            return Err(WriteError::SizeMismatch {
                provided,
                computed: size,
            });
        }
        let created_at = new
            .created_at
            .map_or_else(|| self.next_time(now), normalise_time);
        let stored = Arc::new(Version {
            id: new.id,
            content: new.content,
            content_type: new.content_type,
            metadata: new.metadata,
            created_at,
            hash: computed,
            size,
            written_by: new.written_by,
        });
        self.insert(Entry::Version(Arc::clone(&stored)));
        let index = self.position(&stored.id).unwrap_or(0);
        Ok(PutOutcome::Created {
            version: self.number_at(index),
            stored,
        })
    }

    /// Writes a tombstone unless its id exists (then a no-op).
    ///
    /// # Errors
    /// Nothing to delete, or an id that names a version.
    pub fn delete(
        &mut self,
        id: EnvelopeId,
        created_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<DeleteOutcome, WriteError> {
        if let Some(i) = self.position(&id) {
            return match &self.entries[i] {
                Entry::Tombstone(t) => Ok(DeleteOutcome::AlreadyDeleted(t.clone())),
                Entry::Version(v) => Err(WriteError::IdIsVersion(v.id.clone())),
            };
        }
        if !self.is_live() {
            return Err(WriteError::NotFound);
        }
        let created_at = created_at.map_or_else(|| self.next_time(now), normalise_time);
        let tombstone = Tombstone { id, created_at };
        self.insert(Entry::Tombstone(tombstone.clone()));
        Ok(DeleteOutcome::Deleted(tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn entries_read_in_one_pass_keep_content_text_and_the_derived_form() {
        let (hash, size) = crate::content_digest(&json!({"b": 1.5})).expect("digest");
        let text = format!(
            r#"{{"entries":[
              {{"kind":"version","id":"v1","content":{{"b":1.50}},"content_type":"application/json",
                "metadata":{{"m":1}},"created_at":"2027-01-15T08:00:00.000001Z","hash":{hash},
                "size":{size},"extra":"ignored"}},
              {{"id":"v0","kind":"version","content":null,"content_type":"text/plain",
                "metadata":{{}},"created_at":"2027-01-15T07:00:00Z","hash":{hash},"size":4,
                "written_by":"key:ops"}},
              {{"created_at":"2027-01-15T09:00:00Z","kind":"tombstone","id":"t1","size":3}}]}}"#,
            hash = json!(hash)
        );
        let set: VersionSet = serde_json::from_str(&text).expect("a version set");
        let [
            Entry::Version(first),
            Entry::Version(second),
            Entry::Tombstone(t),
        ] = set.entries()
        else {
            panic!("{set:?}");
        };
        assert_eq!(first.id.as_str(), "v0");
        assert_eq!(first.content, json!(null));
        assert_eq!(
            first.written_by.as_ref().map(PrincipalName::as_str),
            Some("key:ops")
        );
        assert_eq!(second.content.json_text(), Some(r#"{"b":1.50}"#));
        assert_eq!(second.metadata, *json!({"m": 1}).as_object().expect("map"));
        assert_eq!(t.id.as_str(), "t1");
        // Written back as the derived form writes it, and read again the same.
        let again: VersionSet =
            serde_json::from_str(&serde_json::to_string(&set).expect("written")).expect("read");
        assert_eq!(again, set);
        for bad in [
            r#"{"entries":[{"kind":"version","id":"x","created_at":"2027-01-15T08:00:00Z"}]}"#,
            r#"{"entries":[{"kind":"other","id":"x","created_at":"2027-01-15T08:00:00Z"}]}"#,
            r#"{"entries":[{"id":"x","created_at":"2027-01-15T08:00:00Z"}]}"#,
        ] {
            assert!(serde_json::from_str::<VersionSet>(bad).is_err(), "{bad}");
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("valid time")
    }

    fn new(id: &str, content: Value) -> NewVersion {
        NewVersion::json(EnvelopeId::parse(id).expect("valid id"), content)
    }

    fn id(s: &str) -> EnvelopeId {
        EnvelopeId::parse(s).expect("valid id")
    }

    fn put(set: &mut VersionSet, id: &str, at: i64) -> PutOutcome {
        set.put(new(id, json!(id)), t(at)).expect("put succeeds")
    }

    #[test]
    fn versions_are_numbered_by_time() {
        let mut set = VersionSet::default();
        assert!(matches!(
            put(&mut set, "a", 1),
            PutOutcome::Created { version: 1, .. }
        ));
        assert!(matches!(
            put(&mut set, "b", 2),
            PutOutcome::Created { version: 2, .. }
        ));
        assert!(matches!(
            put(&mut set, "c", 3),
            PutOutcome::Created { version: 3, .. }
        ));
        let ids = |tmp| set.resolve(tmp).map(|(n, v)| (n, v.id.as_str().to_owned()));
        assert_eq!(ids(Temporal::Latest), Some((3, "c".into())));
        assert_eq!(ids(Temporal::First), Some((1, "a".into())));
        assert_eq!(ids(Temporal::Version(2)), Some((2, "b".into())));
        assert_eq!(ids(Temporal::Back(1)), Some((2, "b".into())));
        assert_eq!(ids(Temporal::Forward(2)), Some((3, "c".into())));
        assert_eq!(ids(Temporal::Version(4)), None);
        assert_eq!(set.history().len(), 3);
    }

    #[test]
    fn same_id_is_a_no_op_returning_the_existing_version() {
        let mut set = VersionSet::default();
        put(&mut set, "a", 1);
        put(&mut set, "b", 2);
        let again = set.put(new("a", json!("different")), t(9)).expect("no-op");
        match again {
            PutOutcome::Existing { version, stored } => {
                assert_eq!(version, 1);
                assert_eq!(stored.content, json!("a"));
            }
            other @ PutOutcome::Created { .. } => panic!("expected Existing, got {other:?}"),
        }
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn clock_going_backwards_keeps_write_order() {
        let mut set = VersionSet::default();
        put(&mut set, "z", 10);
        put(&mut set, "a", 5); // clock stepped back: still after "z"
        assert_eq!(
            set.latest().map(|(n, v)| (n, v.id.as_str())),
            Some((2, "a"))
        );
    }

    #[test]
    fn equal_times_order_by_id() {
        let mut set = VersionSet::default();
        let mut b = new("b", json!(1));
        b.created_at = Some(t(1));
        let mut a = new("a", json!(2));
        a.created_at = Some(t(1));
        set.put(b, t(0)).expect("put");
        set.put(a, t(0)).expect("put");
        assert_eq!(set.latest().map(|(_, v)| v.id.as_str()), Some("b"));
    }

    #[test]
    fn tombstones_hide_history_and_a_later_put_starts_anew() {
        let mut set = VersionSet::default();
        put(&mut set, "a", 1);
        put(&mut set, "b", 2);
        let deleted = set.delete(id("d1"), None, t(3)).expect("delete");
        assert!(matches!(deleted, DeleteOutcome::Deleted(_)));
        assert!(!set.is_live());
        assert!(set.latest().is_none());
        assert!(set.history().is_empty());
        // replaying the same delete is a no-op; a new delete finds nothing
        assert!(matches!(
            set.delete(id("d1"), None, t(4)),
            Ok(DeleteOutcome::AlreadyDeleted(_))
        ));
        assert_eq!(set.delete(id("d2"), None, t(4)), Err(WriteError::NotFound));
        assert!(matches!(
            put(&mut set, "c", 5),
            PutOutcome::Created { version: 1, .. }
        ));
        assert_eq!(set.history().len(), 1);
        // a retry of a put from before the delete still answers with its old number
        assert!(matches!(
            set.put(new("b", json!("b")), t(6)),
            Ok(PutOutcome::Existing { version: 2, .. })
        ));
    }

    #[test]
    fn id_reuse_across_kinds_is_refused() {
        let mut set = VersionSet::default();
        put(&mut set, "a", 1);
        assert_eq!(
            set.delete(id("a"), None, t(2)),
            Err(WriteError::IdIsVersion(id("a")))
        );
        set.delete(id("d"), None, t(2)).expect("delete");
        assert_eq!(
            set.put(new("d", json!(1)), t(3)).err(),
            Some(WriteError::IdIsTombstone(id("d")))
        );
    }

    #[test]
    fn delete_of_nothing_is_not_found() {
        let mut set = VersionSet::default();
        assert_eq!(set.delete(id("d"), None, t(1)), Err(WriteError::NotFound));
    }

    #[test]
    fn hash_and_size_are_verified() {
        let mut set = VersionSet::default();
        let (hash, size) = crate::content_digest(&json!({"k": 1})).expect("canonical");
        let mut good = new("a", json!({"k": 1}));
        good.hash = Some(hash.clone());
        good.size = Some(size);
        set.put(good, t(1)).expect("matching hash accepted");
        let mut bad = new("b", json!({"k": 2}));
        bad.hash = Some(hash);
        assert!(matches!(
            set.put(bad, t(2)),
            Err(WriteError::HashMismatch { .. })
        ));
        let mut bad_size = new("c", json!({"k": 1}));
        bad_size.size = Some(size + 1);
        assert!(matches!(
            set.put(bad_size, t(2)),
            Err(WriteError::SizeMismatch { .. })
        ));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn merge_is_union_commutative_and_idempotent() {
        let mut left = VersionSet::default();
        let mut right = VersionSet::default();
        put(&mut left, "a", 1);
        put(&mut right, "b", 2);
        put(&mut left, "c", 3);
        right.delete(id("d"), None, t(4)).expect("delete");
        put(&mut right, "e", 5);
        let mut lr = left.clone();
        assert!(lr.merge(&right));
        let mut rl = right.clone();
        assert!(rl.merge(&left));
        assert_eq!(lr, rl);
        assert!(!lr.merge(&right), "merging again changes nothing");
        assert_eq!(lr.len(), 5);
        assert_eq!(lr.latest().map(|(n, v)| (n, v.id.as_str())), Some((1, "e")));
    }

    #[test]
    fn compact_keeps_only_what_reads_see() {
        let mut set = VersionSet::default();
        put(&mut set, "a", 1);
        put(&mut set, "b", 2);
        set.delete(id("d1"), None, t(3)).expect("delete");
        let dropped = set.compact();
        let ids: Vec<(u32, &str)> = dropped.iter().map(|(n, e)| (*n, e.id().as_str())).collect();
        assert_eq!(ids, [(1, "a"), (2, "b")], "versions keep their numbers");
        assert_eq!(set.len(), 1, "the tombstone stays");
        assert!(!set.is_live());
        put(&mut set, "c", 4);
        assert!(set.compact().is_empty());
        assert_eq!(
            set.latest().map(|(n, v)| (n, v.id.as_str())),
            Some((1, "c"))
        );
        let mut fresh = VersionSet::default();
        assert!(fresh.compact().is_empty());
    }

    #[test]
    fn serde_round_trip_normalises_order() {
        let mut set = VersionSet::default();
        put(&mut set, "a", 1);
        set.delete(id("d"), None, t(2)).expect("delete");
        put(&mut set, "b", 3);
        let text = serde_json::to_string(&set).expect("serialises");
        let back: VersionSet = serde_json::from_str(&text).expect("deserialises");
        assert_eq!(back, set);
        // entries out of order or duplicated are normalised
        let mut raw: Value = serde_json::from_str(&text).expect("json");
        let entries = raw["entries"].as_array_mut().expect("array");
        entries.reverse();
        let dup = entries[0].clone();
        entries.push(dup);
        let back: VersionSet = serde_json::from_value(raw).expect("deserialises");
        assert_eq!(back, set);
    }
}
