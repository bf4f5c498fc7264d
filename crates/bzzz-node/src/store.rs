//! The node's record store: the version set of every address it holds, in memory for
//! reads and in redb on disk (committed before a write is acknowledged), so a restarted
//! node keeps everything.
//!
//! When the disk fills (or fails), the writes of the failing batch are refused with
//! [`CommitError::Unwritable`] (the API answers 507) and the store reopens its database
//! for the next batch, reloading its records from disk: once the disk has room again, the
//! node stores writes again without a restart. Reads never touch the disk.
//!
//! The same records are the node's Kademlia records: key = SHA-256 of the canonical
//! address, value = [`DhtValue`] (the address and its version set). Every write, local or
//! from a peer, merges by set union.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use redb::{
    Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition, WriteTransaction,
};
use redb_commit::{Batch, CommitError, GroupCommit, Opener, Settings};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use ucxl::{
    Address, DeleteOutcome, Entry, EnvelopeId, NewVersion, PutOutcome, SearchItem, SearchQuery,
    VersionSet, WriteError, content_digest,
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
#[derive(Debug, Clone, thiserror::Error)]
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
    /// The data directory cannot be created.
    #[error("cannot create the data directory")]
    Directory(#[source] Arc<std::io::Error>),
    /// The disk store failed: the storage is full or unwritable, the database failed
    /// otherwise, or the writer has stopped (the node is shutting down). Every write of the
    /// batch being committed failed with it; none was acknowledged.
    #[error(transparent)]
    Storage(#[from] CommitError),
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

/// The published records, shared by readers and the writer thread.
#[derive(Debug, Default)]
struct Published(RwLock<Records>);

impl Published {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, canonical: &str) -> Option<Arc<Record>> {
        self.read().by_address.get(canonical).cloned()
    }
}

/// Where the outcome of a change goes.
type Answer<T> = oneshot::Sender<Result<(T, Arc<Record>), StoreError>>;

/// A change for the writer thread.
enum Change {
    Put {
        new: NewVersion,
        now: DateTime<Utc>,
        answer: Answer<PutOutcome>,
    },
    Delete {
        id: EnvelopeId,
        created_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        answer: Answer<DeleteOutcome>,
    },
    Merge {
        set: VersionSet,
        answer: Answer<bool>,
    },
}

struct Job {
    address: Address,
    change: Change,
}

/// The node's durable record store.
///
/// Reads are served from memory and never wait for the disk. Every change goes to one
/// writer thread ([`GroupCommit`]), which applies whatever has queued up (in arrival
/// order, each on top of the previous ones) and commits them to disk in one transaction
/// before it publishes the new records and answers their callers (group commit). A change
/// is therefore durable before anyone sees it, and a burst of writes, local or from peers,
/// costs one disk flush instead of one each.
#[derive(Debug)]
pub struct NodeStore {
    published: Arc<Published>,
    writer: GroupCommit<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("address", &self.address.canonical())
            .finish_non_exhaustive()
    }
}

impl NodeStore {
    /// Opens (or creates) the store in `dir`, loads every record and starts the writer.
    ///
    /// # Errors
    /// When the database cannot be opened or the writer thread cannot start.
    pub fn open(dir: &Path, max_record_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Directory(Arc::new(e)))?;
        let file = dir.join("records.redb");
        Self::start(Box::new(move || Database::create(&file)), max_record_bytes)
    }

    /// Opens (or creates) the store on `storage` instead of a file: each open of the
    /// database (at start, and again after a failed commit) takes a clone, so clones must
    /// share the same bytes.
    ///
    /// # Errors
    /// When the database cannot be opened or the writer thread cannot start.
    pub fn open_with_backend<S: StorageBackend + Clone>(
        storage: S,
        max_record_bytes: usize,
    ) -> Result<Self, StoreError> {
        Self::start(
            Box::new(move || Database::builder().create_with_backend(storage.clone())),
            max_record_bytes,
        )
    }

    fn start(open: Opener, max_record_bytes: usize) -> Result<Self, StoreError> {
        let published = Arc::new(Published::default());
        let changes = Changes {
            published: Arc::clone(&published),
            max_record_bytes,
            staged: Staged::new(),
        };
        let writer = GroupCommit::start(Settings::new("bzzz-store"), open, changes)?;
        Ok(Self { published, writer })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Records> {
        self.published.read()
    }

    /// The record of an address, if any.
    #[must_use]
    pub fn get(&self, address: &Address) -> Option<Arc<Record>> {
        self.published.get(address.canonical())
    }

    /// The record stored under a DHT key.
    #[must_use]
    pub fn by_key(&self, key: &[u8]) -> Option<Arc<Record>> {
        let records = self.read();
        let key: DhtKey = key.try_into().ok()?;
        let canonical = records.by_key.get(&key)?;
        records.by_address.get(canonical).cloned()
    }

    /// The record stored under a DHT key, as a DHT value.
    #[must_use]
    pub fn dht_value(&self, key: &[u8]) -> Option<Vec<u8>> {
        let record = self.by_key(key)?;
        encode(&record).ok().map(into_bytes)
    }

    /// Every record as (DHT key, DHT value).
    #[must_use]
    pub fn dht_records(&self) -> Vec<(DhtKey, Vec<u8>)> {
        let records: Vec<Arc<Record>> = self.read().by_address.values().cloned().collect();
        records
            .iter()
            .filter_map(|r| encode(r).ok().map(|v| (dht_key(&r.address), into_bytes(v))))
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

    /// Queues a change for the writer thread; `answer` hears of it once it is durable.
    fn submit(&self, address: &Address, change: Change) {
        let job = Job {
            address: address.without_temporal(),
            change,
        };
        // When the writer has stopped the job (and its answer) is dropped: the caller's
        // receiver reports the store stopped.
        let _ = self.writer.submit(job);
    }

    /// Stores a new version (or finds the one with the same id); resolves once durable.
    ///
    /// # Errors
    /// Write refusals, a record grown too large, or a disk failure.
    pub async fn put(
        &self,
        address: &Address,
        new: NewVersion,
        now: DateTime<Utc>,
    ) -> Result<(PutOutcome, Arc<Record>), StoreError> {
        let (answer, outcome) = oneshot::channel();
        self.submit(address, Change::Put { new, now, answer });
        outcome.await.map_err(|_| CommitError::Stopped)?
    }

    /// Writes a tombstone (or finds the one with the same id); resolves once durable.
    ///
    /// # Errors
    /// Nothing to delete, an id that names a version, or a disk failure.
    pub async fn delete(
        &self,
        address: &Address,
        id: EnvelopeId,
        created_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<(DeleteOutcome, Arc<Record>), StoreError> {
        let (answer, outcome) = oneshot::channel();
        self.submit(
            address,
            Change::Delete {
                id,
                created_at,
                now,
                answer,
            },
        );
        outcome.await.map_err(|_| CommitError::Stopped)?
    }

    /// Merges a replica's set (set union). The returned future (which does not borrow the
    /// store) resolves once the result is durable: true when anything was added.
    ///
    /// # Errors
    /// A record grown too large, or a disk failure.
    pub fn merge(
        &self,
        address: &Address,
        set: VersionSet,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + use<> {
        let (answer, outcome) = oneshot::channel();
        self.submit(address, Change::Merge { set, answer });
        async move {
            outcome
                .await
                .map_err(|_| CommitError::Stopped)?
                .map(|(changed, _)| changed)
        }
    }

    /// Merges a DHT record sent by a peer, after checking its key is its address's.
    ///
    /// # Errors
    /// An undecodable record or a key mismatch, at once; the returned future carries the
    /// outcome of the merge itself.
    pub fn merge_dht(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<impl Future<Output = Result<bool, StoreError>> + Send + use<>, StoreError> {
        let value = decode(value)?;
        if key != dht_key(&value.address).as_slice() {
            return Err(StoreError::KeyMismatch);
        }
        Ok(self.merge(&value.address, value.set))
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

/// A change applied to the batch, waiting for its commit.
type Settle = Box<dyn FnOnce(Result<(), &CommitError>) + Send>;

/// Builds the settlement of an applied change: its outcome once the batch is durable, the
/// batch's failure otherwise.
fn settle<T: Send + 'static>(answer: Answer<T>, outcome: T, record: Arc<Record>) -> Settle {
    Box::new(move |committed| {
        let _ = answer.send(
            committed
                .map(|()| (outcome, record))
                .map_err(|e| StoreError::Storage(e.clone())),
        );
    })
}

/// The records a batch changed: canonical address → (record, its encoding).
type Staged = HashMap<String, (Arc<Record>, Vec<u8>)>;

/// Every record on disk. A row that does not decode (written by a later release, say) is
/// reported and skipped: the node still serves everything else, and peers refill it.
fn load(db: &Database) -> Result<Records, CommitError> {
    let mut records = Records::default();
    let read = db.begin_read()?;
    let table = read.open_table(RECORDS)?;
    for row in table.iter()? {
        let (key, value) = row?;
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
    Ok(records)
}

/// The store's side of the writer thread.
struct Changes {
    published: Arc<Published>,
    max_record_bytes: usize,
    /// What the batch so far changed.
    staged: Staged,
}

impl Batch for Changes {
    type Job = Job;
    type Pending = Settle;

    /// Publishes every record on disk: at start, and after the reopen that follows a failed
    /// commit (a commit reported failed may still have reached the disk; what the disk holds
    /// is what the node serves).
    fn load(&mut self, db: &Database) -> Result<(), CommitError> {
        // Make sure the table exists, so reads of a fresh store work.
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        txn.commit()?;
        let records = load(db)?;
        let count = records.by_address.len();
        *self
            .published
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = records;
        metrics::gauge!("bzzz_records").set(u32::try_from(count).unwrap_or(u32::MAX));
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Option<Settle> {
        self.apply_change(job)
    }

    fn dirty(&self) -> bool {
        !self.staged.is_empty()
    }

    fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let mut table = txn.open_table(RECORDS)?;
        for (canonical, (_, bytes)) in &self.staged {
            table.insert(canonical.as_str(), bytes.as_slice())?;
        }
        Ok(())
    }

    fn committed(&mut self, settled: Vec<Settle>) {
        let staged = std::mem::take(&mut self.staged);
        self.publish(staged);
        for settle in settled {
            settle(Ok(()));
        }
    }

    fn failed(&mut self, settled: Vec<Settle>, error: &CommitError) {
        self.staged.clear();
        for settle in settled {
            settle(Err(error));
        }
    }
}

impl Changes {
    /// Applies one change on top of the batch so far. Refusals are answered at once; an
    /// applied change is settled after the commit.
    fn apply_change(&mut self, job: Job) -> Option<Settle> {
        let Self {
            published,
            max_record_bytes,
            staged,
        } = self;
        let max_record_bytes = *max_record_bytes;
        let Job { address, change } = job;
        let canonical = address.canonical();
        let current = staged
            .get(canonical)
            .map(|(r, _)| Arc::clone(r))
            .or_else(|| published.get(canonical));
        let mut set = current.as_ref().map(|r| r.set.clone()).unwrap_or_default();
        let before = set.len();
        let mut record = |set: VersionSet| -> Result<Arc<Record>, StoreError> {
            if set.len() == before {
                // Nothing changed: nothing to persist (and an empty set is never stored).
                return Ok(current.clone().unwrap_or_else(|| {
                    Arc::new(Record {
                        address: address.clone(),
                        set,
                    })
                }));
            }
            let bytes =
                serde_json::to_vec(&set).map_err(|e| StoreError::Undecodable(e.to_string()))?;
            if bytes.len() > max_record_bytes {
                return Err(StoreError::TooLarge {
                    limit: max_record_bytes,
                });
            }
            let record = Arc::new(Record {
                address: address.clone(),
                set,
            });
            staged.insert(canonical.to_owned(), (Arc::clone(&record), bytes));
            Ok(record)
        };
        match change {
            Change::Put { new, now, answer } => match set.put(new, now) {
                Ok(outcome) => match record(set) {
                    Ok(r) => return Some(settle(answer, outcome, r)),
                    Err(e) => drop(answer.send(Err(e))),
                },
                Err(e) => drop(answer.send(Err(e.into()))),
            },
            Change::Delete {
                id,
                created_at,
                now,
                answer,
            } => match set.delete(id, created_at, now) {
                Ok(outcome) => match record(set) {
                    Ok(r) => return Some(settle(answer, outcome, r)),
                    Err(e) => drop(answer.send(Err(e))),
                },
                Err(e) => drop(answer.send(Err(e.into()))),
            },
            Change::Merge { set: other, answer } => {
                // Only what is new here is checked: the rest was checked when it came.
                if let Err(e) = verify_digests(set.missing_from(&other)) {
                    drop(answer.send(Err(e)));
                    return None;
                }
                let changed = set.merge(&other);
                match record(set) {
                    Ok(r) => return Some(settle(answer, changed, r)),
                    Err(e) => drop(answer.send(Err(e))),
                }
            }
        }
        None
    }

    fn publish(&self, staged: Staged) {
        let mut records = self
            .published
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (canonical, (record, _)) in staged {
            records
                .by_key
                .insert(dht_key(&record.address), canonical.clone());
            records.by_address.insert(canonical, record);
        }
        let count = records.by_address.len();
        drop(records);
        metrics::gauge!("bzzz_records").set(u32::try_from(count).unwrap_or(u32::MAX));
    }
}

/// The bytes of an encoded value.
fn into_bytes(raw: Box<RawValue>) -> Vec<u8> {
    Box::<str>::from(raw).into_boxed_bytes().into_vec()
}

/// Encodes a record as a DHT value (the JSON of a [`DhtValue`]).
///
/// # Errors
/// Only if serialisation fails.
pub fn encode(record: &Record) -> Result<Box<RawValue>, serde_json::Error> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        address: &'a Address,
        set: &'a VersionSet,
    }
    serde_json::value::to_raw_value(&Borrowed {
        address: &record.address,
        set: &record.set,
    })
}

/// Checks that every version among `entries` carries the hash and size of its own content,
/// so a peer cannot make this node serve content under another content's hash. Writes from
/// clients are checked when they are made (`VersionSet::put`); records from peers are
/// checked here, for the versions a merge would add.
///
/// # Errors
/// [`StoreError::Undecodable`] naming the first version that fails.
pub fn verify_digests<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Result<(), StoreError> {
    for entry in entries {
        if let Entry::Version(v) = entry {
            let (hash, size) = content_digest(&v.content)
                .map_err(|e| StoreError::Undecodable(format!("version {:?}: {e}", v.id)))?;
            if hash != v.hash || size != v.size {
                return Err(StoreError::Undecodable(format!(
                    "version {:?}: its hash or size is not its content's",
                    v.id
                )));
            }
        }
    }
    Ok(())
}

/// Decodes a DHT value.
///
/// # Errors
/// [`StoreError::Undecodable`].
pub fn decode(value: &[u8]) -> Result<DhtValue, StoreError> {
    let value: DhtValue =
        serde_json::from_slice(value).map_err(|e| StoreError::Undecodable(e.to_string()))?;
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

    #[tokio::test]
    async fn a_replica_whose_version_is_not_its_contents_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NodeStore::open(dir.path(), 1 << 20).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        let mut good = VersionSet::default();
        good.put(new("1", json!({"k": 1})), Utc::now())
            .expect("put");
        for (field, value) in [("content", json!({"k": 2})), ("size", json!(99))] {
            let mut tampered = serde_json::to_value(&good).expect("encodes");
            tampered["entries"][0][field] = value;
            let tampered: VersionSet = serde_json::from_value(tampered).expect("decodes");
            let e = store.merge(&a, tampered).await.expect_err("refused");
            assert!(matches!(e, StoreError::Undecodable(_)), "{field}: {e}");
            assert!(store.get(&a).is_none(), "{field}: nothing stored");
        }
        assert!(store.merge(&a, good.clone()).await.expect("merged"));
        // Versions already held are not checked again, and a merge adding none changes nothing.
        assert!(!store.merge(&a, good).await.expect("merged"));
    }

    #[tokio::test]
    async fn records_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = addr("ucxl://a:r@p:t/x");
        {
            let store = NodeStore::open(dir.path(), 1 << 20).expect("opens");
            store
                .put(&a, new("1", json!(1)), Utc::now())
                .await
                .expect("put");
            store
                .put(&a, new("2", json!(2)), Utc::now())
                .await
                .expect("put");
            store
                .delete(
                    &addr("ucxl://a:r@p:t/x"),
                    EnvelopeId::parse("d").expect("id"),
                    None,
                    Utc::now(),
                )
                .await
                .expect("delete");
            store
                .put(&a, new("3", json!(3)), Utc::now())
                .await
                .expect("put");
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

    #[tokio::test]
    async fn dht_values_round_trip_and_merge_by_union() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = NodeStore::open(&dir.path().join("one"), 1 << 20).expect("opens");
        let two = NodeStore::open(&dir.path().join("two"), 1 << 20).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        one.put(&a, new("1", json!(1)), Utc::now())
            .await
            .expect("put");
        two.put(&a, new("2", json!(2)), Utc::now())
            .await
            .expect("put");
        let key = dht_key(&a);
        let value = one.dht_value(&key).expect("held");
        let value = value.as_slice();
        assert!(
            two.merge_dht(&key, value)
                .expect("decodes")
                .await
                .expect("merges")
        );
        assert!(
            !two.merge_dht(&key, value)
                .expect("decodes")
                .await
                .expect("merges"),
            "idempotent"
        );
        assert_eq!(two.get(&a).expect("held").set.len(), 2);
        let wrong = dht_key(&addr("ucxl://a:r@p:t/y"));
        assert!(matches!(
            two.merge_dht(&wrong, value),
            Err(StoreError::KeyMismatch)
        ));
        assert!(matches!(
            two.merge_dht(&key, b"garbage"),
            Err(StoreError::Undecodable(_))
        ));
    }

    /// A record at a literal-`any` address replicates like any other: `any` is an exact
    /// key, kept apart from the record of a concrete agent at the same path.
    #[tokio::test]
    async fn literal_any_records_replicate_as_exact_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = NodeStore::open(&dir.path().join("one"), 1 << 20).expect("opens");
        let two = NodeStore::open(&dir.path().join("two"), 1 << 20).expect("opens");
        let shared = addr("ucxl://any:any@BZZZ:RUSTLE-testing/shared/ctx");
        let claude = addr("ucxl://claude:any@BZZZ:RUSTLE-testing/shared/ctx");
        one.put(&shared, new("1", json!("for anyone")), Utc::now())
            .await
            .expect("put");
        let key = dht_key(&shared);
        assert_ne!(key, dht_key(&claude));
        let value = one.dht_value(&key).expect("held");
        assert!(
            two.merge_dht(&key, value.as_slice())
                .expect("decodes")
                .await
                .expect("merges")
        );
        assert_eq!(two.get(&shared).expect("held").address, shared);
        assert!(two.get(&claude).is_none());
    }

    #[tokio::test]
    async fn a_full_disk_refuses_writes_keeps_reads_and_the_store_recovers_with_room() {
        let storage = redb_commit::testing::FillableStorage::new();
        let store = NodeStore::open_with_backend(storage.clone(), 1 << 20).expect("opens");
        let (a, b) = (addr("ucxl://a:r@p:t/a"), addr("ucxl://a:r@p:t/b"));
        store
            .put(&a, new("1", json!(1)), Utc::now())
            .await
            .expect("put");

        storage.fill_after(0);
        let refused = futures::future::join_all(
            (0..5).map(|n| store.put(&b, new(&format!("b{n}"), json!(n)), Utc::now())),
        )
        .await;
        for outcome in refused {
            let e = outcome.expect_err("the disk is full");
            assert!(
                matches!(&e, StoreError::Storage(c) if c.is_unwritable()),
                "{e}"
            );
        }
        assert!(
            store.get(&b).is_none(),
            "nothing of a refused write is seen"
        );
        assert_eq!(store.get(&a).expect("readable").set.len(), 1);
        let held = store.get(&a).expect("held").set.clone();
        assert!(
            !store.merge(&a, held).await.expect("needs no disk"),
            "a replica adding nothing is answered without the disk"
        );

        storage.grow();
        let (outcome, _) = store
            .put(&b, new("b0", json!(0)), Utc::now())
            .await
            .expect("stored once the disk has room");
        assert!(matches!(outcome, PutOutcome::Created { .. }));
        drop(store);
        let reopened = NodeStore::open_with_backend(storage, 1 << 20).expect("reopens");
        assert_eq!(reopened.len(), 2, "a and b, durable");
        assert_eq!(reopened.get(&b).expect("kept").set.len(), 1);
    }

    #[tokio::test]
    async fn records_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NodeStore::open(dir.path(), 1024).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        let err = store
            .put(&a, new("1", json!("x".repeat(2000))), Utc::now())
            .await
            .expect_err("too large");
        assert!(matches!(err, StoreError::TooLarge { limit: 1024 }));
        assert!(store.get(&a).is_none());
    }
}
