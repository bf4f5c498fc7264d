//! The node's record store: the version set of every address it holds, in memory for
//! reads and in redb on disk (committed before a write is acknowledged), so a restarted
//! node keeps everything.
//!
//! The same records are the node's Kademlia records: key = SHA-256 of the canonical
//! address, value = [`DhtValue`] (the address and its version set). Every write, local or
//! from a peer, merges by set union.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ucxl::{
    Address, DeleteOutcome, EnvelopeId, NewVersion, PutOutcome, SearchItem, SearchQuery,
    VersionSet, WriteError,
};

/// canonical address → JSON of its [`VersionSet`].
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// A DHT key: SHA-256 of a canonical address.
pub type DhtKey = [u8; 32];

/// The DHT key of an address.
#[must_use]
pub fn dht_key(address: &Address) -> DhtKey {
    Sha256::digest(address.canonical().as_bytes()).into()
}

/// The value of a DHT record: an address and its version set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhtValue {
    /// The canonical address.
    pub address: Address,
    /// Its version set.
    pub set: VersionSet,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The version set refused the write.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The address's history would grow past the record limit.
    #[error("the history of this address would exceed {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A peer sent a record whose key is not its address's.
    #[error("record key does not match its address")]
    KeyMismatch,
    /// A record that does not decode.
    #[error("record does not decode: {0}")]
    Undecodable(String),
    /// The disk store failed.
    #[error("storage failed: {0}")]
    Disk(#[from] redb::Error),
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        Self::Disk(e.into())
    }
}
impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Disk(e.into())
    }
}
impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        Self::Disk(e.into())
    }
}
impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        Self::Disk(e.into())
    }
}
impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        Self::Disk(e.into())
    }
}

/// One address and its version set.
#[derive(Debug)]
pub struct Record {
    /// The canonical address.
    pub address: Address,
    /// Its version set.
    pub set: VersionSet,
}

#[derive(Debug, Default)]
struct Records {
    by_address: BTreeMap<String, Arc<Record>>,
    by_key: HashMap<DhtKey, String>,
}

/// The node's durable record store.
#[derive(Debug)]
pub struct NodeStore {
    db: Database,
    records: RwLock<Records>,
    /// Serialises writers, so that read-merge-persist-publish is atomic while readers
    /// never wait for a disk commit.
    writer: Mutex<()>,
    max_record_bytes: usize,
}

impl NodeStore {
    /// Opens (or creates) the store in `dir` and loads every record.
    ///
    /// # Errors
    /// When the database cannot be opened or a stored record does not decode.
    pub fn open(dir: &Path, max_record_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Disk(redb::Error::Io(e)))?;
        let db = Database::create(dir.join("records.redb"))?;
        // Make sure the table exists, so reads of a fresh store work.
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        let mut records = Records::default();
        let read = db.begin_read()?;
        let table = read.open_table(RECORDS)?;
        for row in table.iter()? {
            let (key, value) = row?;
            // A row that does not decode (written by a later release, say) is reported and
            // skipped: the node still serves everything else, and peers refill it.
            let decoded = Address::parse(key.value())
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    serde_json::from_slice::<VersionSet>(value.value())
                        .map(|s| (a, s))
                        .map_err(|e| e.to_string())
                });
            let (address, set) = match decoded {
                Ok(row) => row,
                Err(e) => {
                    tracing::error!(key = key.value(), error = %e, "skipped a stored record that does not decode");
                    continue;
                }
            };
            records
                .by_key
                .insert(dht_key(&address), address.canonical().to_owned());
            records.by_address.insert(
                address.canonical().to_owned(),
                Arc::new(Record { address, set }),
            );
        }
        drop(table);
        drop(read);
        Ok(Self {
            db,
            records: RwLock::new(records),
            writer: Mutex::new(()),
            max_record_bytes,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.records.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The record of an address, if any.
    #[must_use]
    pub fn get(&self, address: &Address) -> Option<Arc<Record>> {
        self.read().by_address.get(address.canonical()).cloned()
    }

    /// The record stored under a DHT key, as a DHT value.
    #[must_use]
    pub fn dht_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let records = self.read();
        let key: DhtKey = key.try_into().ok()?;
        let canonical = records.by_key.get(&key)?;
        let record = records.by_address.get(canonical)?;
        encode(record).ok()
    }

    /// Every record as (DHT key, DHT value).
    #[must_use]
    pub fn dht_records(&self) -> Vec<(DhtKey, Vec<u8>)> {
        self.read()
            .by_address
            .values()
            .filter_map(|r| encode(r).ok().map(|v| (dht_key(&r.address), v)))
            .collect()
    }

    /// Every DHT key.
    #[must_use]
    pub fn dht_keys(&self) -> Vec<DhtKey> {
        self.read().by_key.keys().copied().collect()
    }

    /// How many addresses the node holds.
    #[must_use]
    pub fn len(&self) -> usize {
        self.read().by_address.len()
    }

    /// True when the node holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies `change` to a copy of the address's set; when it changed the set, persists
    /// and publishes the result. Returns the change's outcome and the resulting set.
    fn update<T>(
        &self,
        address: &Address,
        change: impl FnOnce(&mut VersionSet) -> Result<T, StoreError>,
    ) -> Result<(T, Arc<Record>), StoreError> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let canonical = address.canonical();
        let current = self.get(address);
        let mut set = current.as_ref().map(|r| r.set.clone()).unwrap_or_default();
        let before = set.len();
        let outcome = change(&mut set)?;
        if set.len() == before {
            // Nothing changed: nothing to persist (and an empty set is never stored).
            let record = current.unwrap_or_else(|| {
                Arc::new(Record {
                    address: address.without_temporal(),
                    set,
                })
            });
            return Ok((outcome, record));
        }
        let bytes = serde_json::to_vec(&set).map_err(|e| StoreError::Undecodable(e.to_string()))?;
        if bytes.len() > self.max_record_bytes {
            return Err(StoreError::TooLarge {
                limit: self.max_record_bytes,
            });
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            table.insert(canonical, bytes.as_slice())?;
        }
        txn.commit()?;
        let record = Arc::new(Record {
            address: address.without_temporal(),
            set,
        });
        let mut records = self.records.write().unwrap_or_else(PoisonError::into_inner);
        records
            .by_key
            .insert(dht_key(address), canonical.to_owned());
        records
            .by_address
            .insert(canonical.to_owned(), Arc::clone(&record));
        drop(records);
        metrics::gauge!("bzzz_records").set(u32::try_from(self.len()).unwrap_or(u32::MAX));
        Ok((outcome, record))
    }

    /// Stores a new version (or finds the one with the same id).
    ///
    /// # Errors
    /// Write refusals, a record grown too large, or a disk failure.
    pub fn put(
        &self,
        address: &Address,
        new: NewVersion,
        now: DateTime<Utc>,
    ) -> Result<(PutOutcome, Arc<Record>), StoreError> {
        self.update(address, |set| Ok(set.put(new, now)?))
    }

    /// Writes a tombstone (or finds the one with the same id).
    ///
    /// # Errors
    /// Nothing to delete, an id that names a version, or a disk failure.
    pub fn delete(
        &self,
        address: &Address,
        id: EnvelopeId,
        created_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(DeleteOutcome, Arc<Record>), StoreError> {
        self.update(address, |set| Ok(set.delete(id, created_at, now)?))
    }

    /// Merges a replica's set (set union); true when anything was added.
    ///
    /// # Errors
    /// A record grown too large, or a disk failure.
    pub fn merge(&self, address: &Address, other: &VersionSet) -> Result<bool, StoreError> {
        self.update(address, |set| Ok(set.merge(other)))
            .map(|(changed, _)| changed)
    }

    /// Merges a DHT record sent by a peer, after checking its key is its address's.
    ///
    /// # Errors
    /// An undecodable record, a key mismatch, or a store failure.
    pub fn merge_dht(&self, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        let value = decode(value)?;
        if key != dht_key(&value.address).as_slice() {
            return Err(StoreError::KeyMismatch);
        }
        self.merge(&value.address, &value.set)
    }

    /// One page of matches among the records this node holds.
    ///
    /// # Errors
    /// [`ucxl::SearchTimeout`] once `deadline` passed.
    pub fn search(
        &self,
        query: &SearchQuery,
        deadline: Instant,
    ) -> Result<(Vec<SearchItem>, bool), ucxl::SearchTimeout> {
        let records = self.read();
        query.scan(&records.by_address, |r| (&r.address, &r.set), deadline)
    }
}

/// Encodes a record as a DHT value.
///
/// # Errors
/// Only if serialisation fails.
pub fn encode(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        address: &'a Address,
        set: &'a VersionSet,
    }
    serde_json::to_vec(&Borrowed {
        address: &record.address,
        set: &record.set,
    })
}

/// Decodes a DHT value.
///
/// # Errors
/// [`StoreError::Undecodable`].
pub fn decode(value: &[u8]) -> Result<DhtValue, StoreError> {
    let value: DhtValue =
        serde_json::from_slice(value).map_err(|e| StoreError::Undecodable(e.to_string()))?;
    value
        .address
        .require_concrete()
        .map_err(|e| StoreError::Undecodable(e.to_string()))?;
    if value.address.temporal() != ucxl::Temporal::Latest {
        return Err(StoreError::Undecodable(
            "a record address must not have a temporal segment".into(),
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn addr(s: &str) -> Address {
        Address::parse(s).expect("valid address")
    }

    fn new(id: &str, content: serde_json::Value) -> NewVersion {
        NewVersion::json(EnvelopeId::parse(id).expect("valid id"), content)
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = addr("ucxl://a:r@p:t/x");
        {
            let store = NodeStore::open(dir.path(), 1 << 20).expect("opens");
            store.put(&a, new("1", json!(1)), Utc::now()).expect("put");
            store.put(&a, new("2", json!(2)), Utc::now()).expect("put");
            store
                .delete(
                    &addr("ucxl://a:r@p:t/x"),
                    EnvelopeId::parse("d").expect("id"),
                    None,
                    Utc::now(),
                )
                .expect("delete");
            store.put(&a, new("3", json!(3)), Utc::now()).expect("put");
        }
        let store = NodeStore::open(dir.path(), 1 << 20).expect("reopens");
        let record = store.get(&a).expect("kept");
        assert_eq!(record.set.len(), 4);
        assert_eq!(
            record.set.latest().map(|(n, v)| (n, v.id.as_str())),
            Some((1, "3"))
        );
        assert_eq!(store.dht_keys(), vec![dht_key(&a)]);
    }

    #[test]
    fn dht_values_round_trip_and_merge_by_union() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = NodeStore::open(&dir.path().join("one"), 1 << 20).expect("opens");
        let two = NodeStore::open(&dir.path().join("two"), 1 << 20).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        one.put(&a, new("1", json!(1)), Utc::now()).expect("put");
        two.put(&a, new("2", json!(2)), Utc::now()).expect("put");
        let key = dht_key(&a);
        let value = one.dht_value(&key).expect("held");
        assert!(two.merge_dht(&key, &value).expect("merges"));
        assert!(!two.merge_dht(&key, &value).expect("merges"), "idempotent");
        assert_eq!(two.get(&a).expect("held").set.len(), 2);
        let wrong = dht_key(&addr("ucxl://a:r@p:t/y"));
        assert!(matches!(
            two.merge_dht(&wrong, &value),
            Err(StoreError::KeyMismatch)
        ));
        assert!(matches!(
            two.merge_dht(&key, b"garbage"),
            Err(StoreError::Undecodable(_))
        ));
    }

    #[test]
    fn records_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NodeStore::open(dir.path(), 1024).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        let err = store
            .put(&a, new("1", json!("x".repeat(2000))), Utc::now())
            .expect_err("too large");
        assert!(matches!(err, StoreError::TooLarge { limit: 1024 }));
        assert!(store.get(&a).is_none());
    }
}
