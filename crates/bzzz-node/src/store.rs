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
//!
//! Every entry a change adds to a record (a version or a tombstone) is numbered in the
//! node's change feed ([`crate::feed`]) in the same transaction as the change.

use std::collections::{BTreeMap, HashMap, HashSet};
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
    VersionSet, WriteError,
};

use crate::feed::{self, Feed, FeedChange, Numbering};

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

/// How a store is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// Largest version set of one address, in bytes (`BZZZ_MAX_RECORD_BYTES`).
    pub max_record_bytes: usize,
    /// Change feed entries kept (`BZZZ_FEED_RETAIN`, default [`feed::DEFAULT_RETAIN`]).
    pub feed_retain: u64,
}

impl StoreSettings {
    /// Records of at most `max_record_bytes`, the default feed window.
    #[must_use]
    pub fn new(max_record_bytes: usize) -> Self {
        Self {
            max_record_bytes,
            feed_retain: feed::DEFAULT_RETAIN,
        }
    }

    /// What `config` says.
    #[must_use]
    pub fn of(config: &crate::config::NodeConfig) -> Self {
        Self {
            max_record_bytes: config.max_record_bytes,
            feed_retain: config.feed_retain,
        }
    }
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
    feed: Arc<Feed>,
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
    pub fn open(dir: &Path, settings: StoreSettings) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Directory(Arc::new(e)))?;
        let file = dir.join("records.redb");
        Self::start(Box::new(move || Database::create(&file)), settings)
    }

    /// Opens (or creates) the store on `storage` instead of a file: each open of the
    /// database (at start, and again after a failed commit) takes a clone, so clones must
    /// share the same bytes.
    ///
    /// # Errors
    /// When the database cannot be opened or the writer thread cannot start.
    pub fn open_with_backend<S: StorageBackend + Clone>(
        storage: S,
        settings: StoreSettings,
    ) -> Result<Self, StoreError> {
        Self::start(
            Box::new(move || Database::builder().create_with_backend(storage.clone())),
            settings,
        )
    }

    fn start(open: Opener, settings: StoreSettings) -> Result<Self, StoreError> {
        let published = Arc::new(Published::default());
        let feed = Arc::new(Feed::new(settings.feed_retain));
        let changes = Changes {
            published: Arc::clone(&published),
            max_record_bytes: settings.max_record_bytes,
            staged: Staged::new(),
            numbering: Numbering::new(Arc::clone(&feed)),
        };
        let writer = GroupCommit::start(Settings::new("bzzz-store"), open, changes)?;
        Ok(Self {
            published,
            feed,
            writer,
        })
    }

    /// The change feed: where it stands, and its live broadcast.
    #[must_use]
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Up to `limit` feed entries numbered after `after`, from disk (blocking: call it off
    /// the async workers).
    ///
    /// # Errors
    /// [`feed::ReadError::Gone`] when the entry after `after` was compacted away; a
    /// storage error when the database cannot be read (closed after a failed commit, say).
    pub fn read_feed(&self, after: u64, limit: usize) -> Result<feed::Page, feed::ReadError> {
        let db = self.writer.database()?;
        feed::read(&db, after, limit)
    }

    /// The content of the version `id` at `address`, if this node holds it.
    #[must_use]
    pub fn content_of(&self, address: &Address, id: &EnvelopeId) -> Option<ucxl::Content> {
        let record = self.get(address)?;
        record.set.entries().iter().find_map(|e| match e {
            Entry::Version(v) if &v.id == id => Some(v.content.clone()),
            _ => None,
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

/// Answers a refused change at once: nothing to settle after the commit.
fn refuse<T>(answer: Answer<T>, error: StoreError) -> Option<Settle> {
    drop(answer.send(Err(error)));
    None
}

/// A change being applied: its address, the record before it, and that record's size.
struct Applied {
    address: Address,
    current: Option<Arc<Record>>,
    before: usize,
}

/// The feed changes of the entries a merge added to `set` (those whose ids are in
/// `added`), in the set's order, each version with its number within its history.
fn merged_changes(
    address: &Address,
    set: &VersionSet,
    added: &HashSet<EnvelopeId>,
) -> Vec<(FeedChange, Option<ucxl::Content>)> {
    let mut changes = Vec::with_capacity(added.len());
    let mut number: u32 = 0;
    for entry in set.entries() {
        match entry {
            Entry::Tombstone(t) => {
                number = 0;
                if added.contains(&t.id) {
                    let change = FeedChange::Delete {
                        address: address.clone(),
                        id: t.id.clone(),
                        deleted_at: t.created_at,
                    };
                    changes.push((change, None));
                }
            }
            Entry::Version(v) => {
                number = number.saturating_add(1);
                if added.contains(&v.id) {
                    let change = FeedChange::put(address, number, v);
                    changes.push((change, Some(v.content.clone())));
                }
            }
        }
    }
    changes
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
    /// The feed numbers the batch so far took.
    numbering: Numbering,
}

impl Batch for Changes {
    type Job = Job;
    type Pending = Settle;

    /// Publishes every record on disk: at start, and after the reopen that follows a failed
    /// commit (a commit reported failed may still have reached the disk; what the disk holds
    /// is what the node serves).
    fn load(&mut self, db: &Database) -> Result<(), CommitError> {
        // Make sure the tables exist, so reads of a fresh store work; the feed's id and
        // numbering are read (and created) in the same transaction.
        let txn = db.begin_write()?;
        txn.open_table(RECORDS)?;
        self.numbering.load(&txn)?;
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
        !self.staged.is_empty() || self.numbering.dirty()
    }

    fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let mut table = txn.open_table(RECORDS)?;
        for (canonical, (_, bytes)) in &self.staged {
            table.insert(canonical.as_str(), bytes.as_slice())?;
        }
        self.numbering.write(txn)
    }

    fn committed(&mut self, settled: Vec<Settle>) {
        let staged = std::mem::take(&mut self.staged);
        // Records first, so a watcher told of a change finds it.
        self.publish(staged);
        self.numbering.committed();
        for settle in settled {
            settle(Ok(()));
        }
    }

    fn failed(&mut self, settled: Vec<Settle>, error: &CommitError) {
        self.staged.clear();
        self.numbering.failed();
        for settle in settled {
            settle(Err(error));
        }
    }

    fn tidy(&mut self, db: &Database) -> Result<(), CommitError> {
        self.numbering.compact(db)
    }
}

impl Changes {
    /// Applies one change on top of the batch so far. Refusals are answered at once; an
    /// applied change is settled after the commit.
    fn apply_change(&mut self, job: Job) -> Option<Settle> {
        let Job { address, change } = job;
        let current = self
            .staged
            .get(address.canonical())
            .map(|(r, _)| Arc::clone(r))
            .or_else(|| self.published.get(address.canonical()));
        let mut set = current.as_ref().map(|r| r.set.clone()).unwrap_or_default();
        let applied = Applied {
            address,
            current,
            before: set.len(),
        };
        match change {
            Change::Put { new, now, answer } => match set.put(new, now) {
                Ok(outcome) => {
                    let added = match &outcome {
                        PutOutcome::Created { version, stored } => vec![(
                            FeedChange::put(&applied.address, *version, stored),
                            Some(stored.content.clone()),
                        )],
                        PutOutcome::Existing { .. } => Vec::new(),
                    };
                    self.stage(applied, set, added, answer, outcome)
                }
                Err(e) => refuse(answer, e.into()),
            },
            Change::Delete {
                id,
                created_at,
                now,
                answer,
            } => match set.delete(id, created_at, now) {
                Ok(outcome) => {
                    let added = match &outcome {
                        DeleteOutcome::Deleted(t) => vec![(
                            FeedChange::Delete {
                                address: applied.address.clone(),
                                id: t.id.clone(),
                                deleted_at: t.created_at,
                            },
                            None,
                        )],
                        DeleteOutcome::AlreadyDeleted(_) => Vec::new(),
                    };
                    self.stage(applied, set, added, answer, outcome)
                }
                Err(e) => refuse(answer, e.into()),
            },
            Change::Merge { set: other, answer } => {
                // Only what is new here is checked: the rest was checked when it came.
                if let Err(e) = verify_digests(set.missing_from(&other)) {
                    return refuse(answer, e);
                }
                let missing: HashSet<EnvelopeId> =
                    set.missing_from(&other).map(|e| e.id().clone()).collect();
                let changed = set.merge(&other);
                let added = merged_changes(&applied.address, &set, &missing);
                self.stage(applied, set, added, answer, changed)
            }
        }
    }

    /// Stages the record `set` (unless the change left it as it was) and numbers the
    /// entries it added; the change is answered after the commit. A record grown too large
    /// is refused at once, and takes no number.
    fn stage<T: Send + 'static>(
        &mut self,
        applied: Applied,
        set: VersionSet,
        added: Vec<(FeedChange, Option<ucxl::Content>)>,
        answer: Answer<T>,
        outcome: T,
    ) -> Option<Settle> {
        let Applied {
            address,
            current,
            before,
        } = applied;
        if set.len() == before {
            // Nothing changed: nothing to persist or number (and an empty set is never
            // stored).
            let record = current.unwrap_or_else(|| Arc::new(Record { address, set }));
            return Some(settle(answer, outcome, record));
        }
        let bytes = match serde_json::to_vec(&set) {
            Ok(bytes) => bytes,
            Err(e) => return refuse(answer, StoreError::Undecodable(e.to_string())),
        };
        if bytes.len() > self.max_record_bytes {
            let limit = self.max_record_bytes;
            return refuse(answer, StoreError::TooLarge { limit });
        }
        if let Err(e) = self.numbering.stage(added) {
            return refuse(answer, StoreError::Undecodable(e.to_string()));
        }
        let canonical = address.canonical().to_owned();
        let record = Arc::new(Record { address, set });
        self.staged.insert(canonical, (Arc::clone(&record), bytes));
        Some(settle(answer, outcome, record))
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
            let (hash, size) = v
                .content
                .digest()
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
    use crate::feed::FeedChange;
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
        let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("opens");
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
            let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("opens");
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
        let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("reopens");
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
        let one =
            NodeStore::open(&dir.path().join("one"), StoreSettings::new(1 << 20)).expect("opens");
        let two =
            NodeStore::open(&dir.path().join("two"), StoreSettings::new(1 << 20)).expect("opens");
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
        let one =
            NodeStore::open(&dir.path().join("one"), StoreSettings::new(1 << 20)).expect("opens");
        let two =
            NodeStore::open(&dir.path().join("two"), StoreSettings::new(1 << 20)).expect("opens");
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
        let store = NodeStore::open_with_backend(storage.clone(), StoreSettings::new(1 << 20))
            .expect("opens");
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
        let reopened =
            NodeStore::open_with_backend(storage, StoreSettings::new(1 << 20)).expect("reopens");
        assert_eq!(reopened.len(), 2, "a and b, durable");
        assert_eq!(reopened.get(&b).expect("kept").set.len(), 1);
    }

    #[tokio::test]
    async fn records_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = NodeStore::open(dir.path(), StoreSettings::new(1024)).expect("opens");
        let a = addr("ucxl://a:r@p:t/x");
        let err = store
            .put(&a, new("1", json!("x".repeat(2000))), Utc::now())
            .await
            .expect_err("too large");
        assert!(matches!(err, StoreError::TooLarge { limit: 1024 }));
        assert!(store.get(&a).is_none());
    }

    fn id(s: &str) -> EnvelopeId {
        EnvelopeId::parse(s).expect("valid id")
    }

    /// (seq, op, address path, id, version) of every retained feed entry.
    fn feed_of(store: &NodeStore) -> Vec<(u64, &'static str, String, String, u32)> {
        let oldest = store.feed().position().oldest_seq;
        let page = store.read_feed(oldest - 1, 1000).expect("readable");
        page.entries
            .into_iter()
            .map(|e| {
                let (op, version) = match &e.change {
                    FeedChange::Put { version, .. } => ("put", *version),
                    FeedChange::Delete { .. } => ("delete", 0),
                };
                let path = e.change.address().path().to_owned();
                (e.seq, op, path, e.change.id().as_str().to_owned(), version)
            })
            .collect()
    }

    /// Waits until the writer has finished everything queued before (compaction included):
    /// a merge that adds nothing goes through it and is answered after its batch.
    async fn settled(store: &NodeStore) {
        let nothing = addr("ucxl://a:r@p:t/nothing");
        assert!(
            !store
                .merge(&nothing, VersionSet::default())
                .await
                .expect("merged")
        );
    }

    fn row(
        seq: u64,
        op: &'static str,
        path: &str,
        id: &str,
        version: u32,
    ) -> (u64, &'static str, String, String, u32) {
        (seq, op, path.to_owned(), id.to_owned(), version)
    }

    #[tokio::test]
    async fn every_change_gets_the_next_number_once_and_numbering_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (addr("ucxl://a:r@p:t/a"), addr("ucxl://a:r@p:t/b"));
        let feed_id = {
            let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("opens");
            assert_eq!(store.feed().position().current_seq, 0);
            store
                .put(&a, new("1", json!(1)), Utc::now())
                .await
                .expect("put");
            store
                .put(&b, new("2", json!(2)), Utc::now())
                .await
                .expect("put");
            // Retries change nothing and take no number.
            store
                .put(&a, new("1", json!(1)), Utc::now())
                .await
                .expect("retry");
            store
                .delete(&a, id("d"), None, Utc::now())
                .await
                .expect("delete");
            store
                .delete(&a, id("d"), None, Utc::now())
                .await
                .expect("retry");
            // Refusals take none either.
            store
                .put(&a, new("d", json!(0)), Utc::now())
                .await
                .expect_err("a delete's id");
            let position = store.feed().position();
            assert_eq!((position.current_seq, position.oldest_seq), (3, 1));
            position.id
        };
        let store = NodeStore::open(dir.path(), StoreSettings::new(1 << 20)).expect("reopens");
        let position = store.feed().position();
        assert_eq!(
            position.id, feed_id,
            "the feed id is kept in the store file"
        );
        assert_eq!(position.current_seq, 3);
        store
            .put(&a, new("3", json!(3)), Utc::now())
            .await
            .expect("put");
        assert_eq!(
            feed_of(&store),
            [
                row(1, "put", "a", "1", 1),
                row(2, "put", "b", "2", 1),
                row(3, "delete", "a", "d", 0),
                row(4, "put", "a", "3", 1),
            ]
        );

        let wiped = tempfile::tempdir().expect("tempdir");
        let fresh = NodeStore::open(wiped.path(), StoreSettings::new(1 << 20)).expect("opens");
        assert_ne!(
            fresh.feed().position().id,
            feed_id,
            "a new store file, a new feed"
        );
    }

    #[tokio::test]
    async fn a_merge_numbers_each_entry_it_adds_in_the_set_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one =
            NodeStore::open(&dir.path().join("one"), StoreSettings::new(1 << 20)).expect("opens");
        let two =
            NodeStore::open(&dir.path().join("two"), StoreSettings::new(1 << 20)).expect("opens");
        let a = addr("ucxl://a:r@p:t/a");
        one.put(&a, new("v1", json!(1)), Utc::now())
            .await
            .expect("put");
        one.put(&a, new("v2", json!(2)), Utc::now())
            .await
            .expect("put");
        one.delete(&a, id("d"), None, Utc::now())
            .await
            .expect("delete");
        one.put(&a, new("v3", json!(3)), Utc::now())
            .await
            .expect("put");
        let set = one.get(&a).expect("held").set.clone();

        let mut live = two.feed().subscribe();
        assert!(two.merge(&a, set.clone()).await.expect("merged"));
        assert!(!two.merge(&a, set).await.expect("merged"), "adds nothing");
        assert_eq!(
            feed_of(&two),
            [
                row(1, "put", "a", "v1", 1),
                row(2, "put", "a", "v2", 2),
                row(3, "delete", "a", "d", 0),
                row(4, "put", "a", "v3", 1),
            ],
            "one number per entry added, none for a merge adding nothing"
        );
        let batch = live.try_recv().expect("broadcast once committed");
        let seqs: Vec<u64> = batch.iter().map(|c| c.entry.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(
            batch[0].content.as_ref().and_then(|c| c.to_value().ok()),
            Some(json!(1)),
            "live entries carry content"
        );
        assert!(
            live.try_recv().is_err(),
            "nothing for the merge that added nothing"
        );

        // A later entry from a peer takes the next number.
        one.put(&a, new("v4", json!(4)), Utc::now())
            .await
            .expect("put");
        let set = one.get(&a).expect("held").set.clone();
        assert!(two.merge(&a, set).await.expect("merged"));
        assert_eq!(feed_of(&two).last(), Some(&row(5, "put", "a", "v4", 2)));
    }

    #[tokio::test]
    async fn a_failed_commit_takes_no_number_and_numbering_continues_from_the_disk() {
        let storage = redb_commit::testing::FillableStorage::new();
        let store = NodeStore::open_with_backend(storage.clone(), StoreSettings::new(1 << 20))
            .expect("opens");
        let (a, b) = (addr("ucxl://a:r@p:t/a"), addr("ucxl://a:r@p:t/b"));
        store
            .put(&a, new("1", json!(1)), Utc::now())
            .await
            .expect("put");
        let mut live = store.feed().subscribe();

        storage.fill_after(0);
        let refused = futures::future::join_all(
            (0..3).map(|n| store.put(&b, new(&format!("b{n}"), json!(n)), Utc::now())),
        )
        .await;
        assert!(refused.iter().all(Result::is_err), "the disk is full");
        assert_eq!(store.feed().position().current_seq, 1, "no number taken");
        assert!(live.try_recv().is_err(), "nothing published");

        storage.grow();
        store
            .put(&b, new("b9", json!(9)), Utc::now())
            .await
            .expect("stored");
        let batch = live.try_recv().expect("published");
        let seqs: Vec<u64> = batch.iter().map(|c| c.entry.seq).collect();
        assert_eq!(seqs, [2], "the next number after the last committed one");
        drop(store);
        let reopened =
            NodeStore::open_with_backend(storage, StoreSettings::new(1 << 20)).expect("reopens");
        assert_eq!(
            feed_of(&reopened),
            [row(1, "put", "a", "1", 1), row(2, "put", "b", "b9", 1)]
        );
    }

    #[tokio::test]
    async fn the_feed_keeps_its_window_and_reports_older_cursors_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = addr("ucxl://a:r@p:t/a");
        let settings = StoreSettings {
            feed_retain: 3,
            ..StoreSettings::new(1 << 20)
        };
        {
            let store = NodeStore::open(dir.path(), settings).expect("opens");
            for n in 1..=10 {
                store
                    .put(&a, new(&format!("v{n}"), json!(n)), Utc::now())
                    .await
                    .expect("put");
            }
            settled(&store).await;
            let position = store.feed().position();
            assert_eq!((position.oldest_seq, position.current_seq), (8, 10));
            let seqs: Vec<u64> = feed_of(&store).iter().map(|r| r.0).collect();
            assert_eq!(seqs, [8, 9, 10]);
            assert!(position.continues(7) && !position.continues(6));
            let page = store.read_feed(7, 10).expect("continues");
            assert_eq!((page.entries.len(), page.through), (3, 10));
            for after in [0, 6] {
                assert!(matches!(
                    store.read_feed(after, 10),
                    Err(feed::ReadError::Gone { .. })
                ));
            }
            assert!(
                store
                    .read_feed(10, 10)
                    .expect("at the end")
                    .entries
                    .is_empty()
            );
        }
        // A smaller window applies at once on reopening; numbering goes on.
        let store = NodeStore::open(
            dir.path(),
            StoreSettings {
                feed_retain: 1,
                ..settings
            },
        )
        .expect("reopens");
        let position = store.feed().position();
        assert_eq!((position.oldest_seq, position.current_seq), (10, 10));
        store
            .put(&a, new("v11", json!(11)), Utc::now())
            .await
            .expect("put");
        settled(&store).await;
        assert_eq!(feed_of(&store), [row(11, "put", "a", "v11", 11)]);
    }
}
