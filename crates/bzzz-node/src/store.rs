//! The node's record store: the version set of every address it holds, in memory for
//! reads and in redb on disk (committed before a write is acknowledged), so a restarted
//! node keeps everything.
//!
//! The same records are the node's Kademlia records: key = SHA-256 of the canonical
//! address, value = [`DhtValue`] (the address and its version set). Every write, local or
//! from a peer, merges by set union.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
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
    /// The disk store failed (the whole batch of writes it was committing failed).
    #[error("storage failed: {0}")]
    Disk(String),
    /// The writer thread has stopped (the node is shutting down).
    #[error("the store is closed")]
    Closed,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        Self::Disk(e.to_string())
    }
}
impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        Self::Disk(e.to_string())
    }
}
impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Disk(e.to_string())
    }
}
impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        Self::Disk(e.to_string())
    }
}
impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        Self::Disk(e.to_string())
    }
}
impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        Self::Disk(e.to_string())
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

/// Most changes one disk commit carries.
const MAX_BATCH: usize = 512;

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
/// writer thread, which applies whatever has queued up (up to [`MAX_BATCH`] changes, in
/// arrival order, each on top of the previous ones) and commits them to disk in one
/// transaction before it publishes the new records and answers their callers (group
/// commit). A change is therefore durable before anyone sees it, and a burst of writes,
/// local or from peers, costs one disk flush instead of one each.
#[derive(Debug)]
pub struct NodeStore {
    published: Arc<Published>,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("address", &self.address.canonical())
            .finish_non_exhaustive()
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what it holds and release the file.
        self.jobs = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl NodeStore {
    /// Opens (or creates) the store in `dir`, loads every record and starts the writer.
    ///
    /// # Errors
    /// When the database cannot be opened or the writer thread cannot start.
    pub fn open(dir: &Path, max_record_bytes: usize) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Disk(e.to_string()))?;
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
        let published = Arc::new(Published(RwLock::new(records)));
        let (jobs, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            db,
            published: Arc::clone(&published),
            max_record_bytes,
        };
        let writer = std::thread::Builder::new()
            .name("bzzz-store".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| StoreError::Disk(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            published,
            jobs: Some(jobs),
            writer: Some(writer),
        })
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
        // receiver reports the store closed.
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send(job);
        }
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
        outcome.await.map_err(|_| StoreError::Closed)?
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
        outcome.await.map_err(|_| StoreError::Closed)?
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
                .map_err(|_| StoreError::Closed)?
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
type Settle = Box<dyn FnOnce(&Result<(), StoreError>) + Send>;

/// Builds the settlement of an applied change: its outcome once the batch is durable, the
/// batch's failure otherwise.
fn settle<T: Send + 'static>(answer: Answer<T>, outcome: T, record: Arc<Record>) -> Settle {
    Box::new(move |committed| {
        let _ = answer.send(committed.clone().map(|()| (outcome, record)));
    })
}

/// The writer thread: owns every write transaction.
struct Writer {
    db: Database,
    published: Arc<Published>,
    max_record_bytes: usize,
}

/// The records a batch changed: canonical address → (record, its encoding).
type Staged = HashMap<String, (Arc<Record>, Vec<u8>)>;

impl Writer {
    fn run(self, mut queue: mpsc::UnboundedReceiver<Job>) {
        while let Some(first) = queue.blocking_recv() {
            let mut staged = Staged::new();
            let mut settles = Vec::new();
            self.apply(first, &mut staged, &mut settles);
            while settles.len() < MAX_BATCH {
                let Ok(job) = queue.try_recv() else { break };
                self.apply(job, &mut staged, &mut settles);
            }
            let committed = if staged.is_empty() {
                Ok(())
            } else {
                self.commit(&staged)
            };
            match &committed {
                Ok(()) => self.publish(staged),
                Err(e) => {
                    tracing::error!(error = %e, changes = settles.len(), "a store commit failed; its writes were refused");
                }
            }
            for settle in settles {
                settle(&committed);
            }
        }
    }

    /// Applies one change on top of the batch so far. Refusals are answered at once; an
    /// applied change is settled after the commit.
    fn apply(&self, job: Job, staged: &mut Staged, settles: &mut Vec<Settle>) {
        let Job { address, change } = job;
        let canonical = address.canonical();
        let current = staged
            .get(canonical)
            .map(|(r, _)| Arc::clone(r))
            .or_else(|| self.published.get(canonical));
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
            if bytes.len() > self.max_record_bytes {
                return Err(StoreError::TooLarge {
                    limit: self.max_record_bytes,
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
                    Ok(r) => settles.push(settle(answer, outcome, r)),
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
                    Ok(r) => settles.push(settle(answer, outcome, r)),
                    Err(e) => drop(answer.send(Err(e))),
                },
                Err(e) => drop(answer.send(Err(e.into()))),
            },
            Change::Merge { set: other, answer } => {
                // Only what is new here is checked: the rest was checked when it came.
                if let Err(e) = verify_digests(set.missing_from(&other)) {
                    drop(answer.send(Err(e)));
                    return;
                }
                let changed = set.merge(&other);
                match record(set) {
                    Ok(r) => settles.push(settle(answer, changed, r)),
                    Err(e) => drop(answer.send(Err(e))),
                }
            }
        }
    }

    fn commit(&self, staged: &Staged) -> Result<(), StoreError> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for (canonical, (_, bytes)) in staged {
                table.insert(canonical.as_str(), bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
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
