//! The durable local store: what the embedded default (mock mode) holds as the only copy,
//! kept on disk under `RUSTLE_DATA_DIR` and loaded at start.
//!
//! Every write goes through one writer thread (`redb-commit`'s group commit): the writer
//! applies it to the in-memory [`LocalStore`] (so the store's rules, bound and answers stay
//! the ones it has in memory), writes what changed for the address — entries and freed
//! ids, one row each, so a write costs what it changes and not the size of its history —
//! and answers only once its batch is committed and fsynced. A burst of concurrent writes
//! shares one fsync.
//!
//! A batch the disk refuses is answered as failed (507 when the storage is full or
//! unwritable) and taken back from memory at once; the writer then reopens the database
//! and reloads the store from it, so memory never keeps what the disk does not hold, and
//! the store works again once the disk does, without a restart. Reads go to memory and
//! never wait for the disk. While a batch is being committed, a read may see a write of
//! it; should the commit fail, that write is taken back and answered as failed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use redb_commit::{Batch, CommitError, GroupCommit, Opener, Settings};
use tokio::sync::oneshot;
use ucxl::{Address, DeleteOutcome, EnvelopeId, NewVersion, PutOutcome};

use super::local::{FreedRow, LocalStore, RecordImage, Retention, StoreError};

/// The file in `RUSTLE_DATA_DIR`.
pub const FILE_NAME: &str = "local-store.redb";

/// (canonical address, entry id) → the entry (JSON).
const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("entries");
/// (canonical address, freed id) → the freed entry and its number (JSON).
const FREED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("freed");

/// Why a durable write failed.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// The store refused the write (as it would in memory): nothing changed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The disk did not take the write: nothing of it is kept.
    #[error("the data directory cannot take the write")]
    Storage(#[source] CommitError),
}

/// Why the durable store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The database cannot be opened or read.
    #[error("cannot open the local store {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CommitError,
    },
}

/// The local store kept on disk.
#[derive(Debug)]
pub struct DurableStore {
    writer: GroupCommit<Job>,
    store: Arc<LocalStore>,
    path: PathBuf,
}

impl DurableStore {
    /// Opens (or creates) the store file in `dir`, loads what it holds into `store` (as
    /// the only copy), and starts the writer.
    ///
    /// # Errors
    /// When the directory or file cannot be created or read.
    pub fn open(dir: &Path, store: Arc<LocalStore>) -> Result<Arc<Self>, OpenError> {
        std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let file = path.clone();
        Self::start(&path, Box::new(move || Database::create(&file)), store)
    }

    /// Opens the store with `open` (the file, or a test's storage).
    fn start(path: &Path, open: Opener, store: Arc<LocalStore>) -> Result<Arc<Self>, OpenError> {
        let batch = Writes {
            store: Arc::clone(&store),
            staged: BTreeMap::new(),
        };
        let writer = GroupCommit::start(Settings::new("rustle-local-store"), open, batch).map_err(
            |source| OpenError::Open {
                path: path.to_owned(),
                source,
            },
        )?;
        let status = store.status();
        tracing::info!(
            path = %path.display(),
            addresses = status.addresses,
            entries = status.owned_entries,
            "local store loaded from disk"
        );
        Ok(Arc::new(Self {
            writer,
            store,
            path: path.to_owned(),
        }))
    }

    /// The store file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The in-memory store the writes land in (reads go there).
    #[must_use]
    pub fn store(&self) -> &Arc<LocalStore> {
        &self.store
    }

    async fn submit<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<Result<T, DurableError>>) -> Job,
    ) -> Result<T, DurableError> {
        let (tx, rx) = oneshot::channel();
        self.writer.submit(job(tx)).map_err(DurableError::Storage)?;
        // A writer that stops drops the sender: nothing was acknowledged.
        rx.await
            .unwrap_or(Err(DurableError::Storage(CommitError::Stopped)))
    }

    /// Stores a new version as the only copy; answered once it is on disk.
    ///
    /// # Errors
    /// The store's refusals, or [`DurableError::Storage`] when the disk did not take it.
    pub async fn put(
        &self,
        address: &Address,
        new: NewVersion,
        now: DateTime<Utc>,
    ) -> Result<PutOutcome, DurableError> {
        let address = address.clone();
        self.submit(|answer| Job::Put {
            address,
            new,
            now,
            answer,
        })
        .await
    }

    /// Deletes as the only copy; answered once the tombstone is on disk.
    ///
    /// # Errors
    /// The store's refusals, or [`DurableError::Storage`] when the disk did not take it.
    pub async fn delete(
        &self,
        address: &Address,
        id: EnvelopeId,
        now: DateTime<Utc>,
    ) -> Result<DeleteOutcome, DurableError> {
        let address = address.clone();
        self.submit(|answer| Job::Delete {
            address,
            id,
            now,
            answer,
        })
        .await
    }
}

/// A write sent to the writer thread.
enum Job {
    Put {
        address: Address,
        new: NewVersion,
        now: DateTime<Utc>,
        answer: oneshot::Sender<Result<PutOutcome, DurableError>>,
    },
    Delete {
        address: Address,
        id: EnvelopeId,
        now: DateTime<Utc>,
        answer: oneshot::Sender<Result<DeleteOutcome, DurableError>>,
    },
}

/// An applied write waiting for its batch: its answer, and the address as it was before,
/// to take the write back if the batch fails.
struct Settle {
    address: Address,
    before: Option<RecordImage>,
    answer: Answer,
}

enum Answer {
    Put(
        PutOutcome,
        oneshot::Sender<Result<PutOutcome, DurableError>>,
    ),
    Delete(
        DeleteOutcome,
        oneshot::Sender<Result<DeleteOutcome, DurableError>>,
    ),
}

/// Which table a staged row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Entries,
    Freed,
}

/// (table, canonical address, id) → the row's bytes, or `None` to remove it.
type Staged = BTreeMap<(Table, String, String), Option<Vec<u8>>>;

/// The durable store's side of the writer thread.
struct Writes {
    store: Arc<LocalStore>,
    staged: Staged,
}

/// The rows of one address's image, keyed by id.
fn rows(image: Option<&RecordImage>) -> (HashMap<&str, &ucxl::Entry>, HashMap<&str, &FreedRow>) {
    let Some(image) = image else {
        return (HashMap::new(), HashMap::new());
    };
    (
        image.entries.iter().map(|e| (e.id().as_str(), e)).collect(),
        image
            .freed
            .iter()
            .map(|f| (f.entry.id().as_str(), f))
            .collect(),
    )
}

/// Stages the rows that turn `before` into `after` for `key`: new or changed rows are
/// written, rows that went away removed. Entries are immutable once written (an id names
/// one entry), so a row present on both sides is unchanged.
fn stage_diff(
    staged: &mut Staged,
    key: &str,
    before: Option<&RecordImage>,
    after: Option<&RecordImage>,
) {
    let (old_entries, old_freed) = rows(before);
    let (new_entries, new_freed) = rows(after);
    let mut put = |table: Table, id: &str, bytes: Option<Vec<u8>>| {
        staged.insert((table, key.to_owned(), id.to_owned()), bytes);
    };
    for (id, entry) in &new_entries {
        if !old_entries.contains_key(id) {
            put(Table::Entries, id, serde_json::to_vec(entry).ok());
        }
    }
    for id in old_entries.keys() {
        if !new_entries.contains_key(id) {
            put(Table::Entries, id, None);
        }
    }
    for (id, row) in &new_freed {
        if !old_freed.contains_key(id) {
            put(Table::Freed, id, serde_json::to_vec(row).ok());
        }
    }
    for id in old_freed.keys() {
        if !new_freed.contains_key(id) {
            put(Table::Freed, id, None);
        }
    }
}

/// Reads every record the disk holds.
/// The image of `key` in `images`, created empty when the key is new.
fn image_for<'a>(
    images: &'a mut BTreeMap<String, RecordImage>,
    key: &str,
) -> Result<&'a mut RecordImage, CommitError> {
    if !images.contains_key(key) {
        let address = Address::parse(key)
            .map_err(|e| corrupt(format!("local store: address {key:?}: {e}")))?;
        images.insert(
            key.to_owned(),
            RecordImage {
                address,
                entries: Vec::new(),
                freed: Vec::new(),
            },
        );
    }
    images
        .get_mut(key)
        .ok_or_else(|| corrupt("local store: lost a record while loading".into()))
}

fn corrupt(what: String) -> CommitError {
    CommitError::from(redb::Error::Corrupted(what))
}

fn load_images(db: &Database) -> Result<Vec<RecordImage>, CommitError> {
    let read = db.begin_read()?;
    let mut images: BTreeMap<String, RecordImage> = BTreeMap::new();
    let entries = read.open_table(ENTRIES)?;
    for row in entries.iter()? {
        let (key, bytes) = row?;
        let (address, id) = key.value();
        let entry: ucxl::Entry = serde_json::from_slice(bytes.value())
            .map_err(|e| corrupt(format!("local store: entry {id:?} of {address:?}: {e}")))?;
        image_for(&mut images, address)?.entries.push(entry);
    }
    let freed = read.open_table(FREED)?;
    for row in freed.iter()? {
        let (key, bytes) = row?;
        let (address, id) = key.value();
        let row: FreedRow = serde_json::from_slice(bytes.value())
            .map_err(|e| corrupt(format!("local store: freed {id:?} of {address:?}: {e}")))?;
        image_for(&mut images, address)?.freed.push(row);
    }
    let mut images: Vec<RecordImage> = images.into_values().collect();
    for image in &mut images {
        // Freed ids are forgotten oldest first: the order they were written in.
        image.freed.sort_by_key(|f| f.entry.created_at());
    }
    Ok(images)
}

impl Batch for Writes {
    type Job = Job;
    type Pending = Settle;

    /// Memory holds what the disk holds: at start, and after a failed batch (whose writes
    /// [`failed`](Batch::failed) took back already).
    fn load(&mut self, db: &Database) -> Result<(), CommitError> {
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(FREED)?;
        txn.commit()?;
        self.store.install_owned(load_images(db)?);
        Ok(())
    }

    fn apply(&mut self, job: Job) -> Option<Settle> {
        let (address, answer, before) = match job {
            Job::Put {
                address,
                new,
                now,
                answer,
            } => {
                let before = self.store.image(&address);
                match self.store.put(&address, new, Retention::Owned, now) {
                    Ok(outcome) => (address, Answer::Put(outcome, answer), before),
                    Err(e) => {
                        // Refused as in memory: nothing changed, nothing to write.
                        let _ = answer.send(Err(e.into()));
                        return None;
                    }
                }
            }
            Job::Delete {
                address,
                id,
                now,
                answer,
            } => {
                let before = self.store.image(&address);
                match self.store.delete(&address, id, Retention::Owned, now) {
                    Ok(outcome) => (address, Answer::Delete(outcome, answer), before),
                    Err(e) => {
                        let _ = answer.send(Err(e.into()));
                        return None;
                    }
                }
            }
        };
        let after = self.store.image(&address);
        stage_diff(
            &mut self.staged,
            address.canonical(),
            before.as_ref(),
            after.as_ref(),
        );
        Some(Settle {
            address,
            before,
            answer,
        })
    }

    fn dirty(&self) -> bool {
        !self.staged.is_empty()
    }

    fn write(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut freed = txn.open_table(FREED)?;
        for ((table, address, id), bytes) in &self.staged {
            let table = match table {
                Table::Entries => &mut entries,
                Table::Freed => &mut freed,
            };
            let key = (address.as_str(), id.as_str());
            match bytes {
                Some(bytes) => {
                    table.insert(key, bytes.as_slice())?;
                }
                None => {
                    table.remove(key)?;
                }
            }
        }
        Ok(())
    }

    fn committed(&mut self, settled: Vec<Settle>) {
        self.staged.clear();
        for settle in settled {
            match settle.answer {
                Answer::Put(outcome, answer) => drop(answer.send(Ok(outcome))),
                Answer::Delete(outcome, answer) => drop(answer.send(Ok(outcome))),
            }
        }
    }

    fn failed(&mut self, settled: Vec<Settle>, error: &CommitError) {
        self.staged.clear();
        tracing::error!(error = %ucxl::error::Chain(error), writes = settled.len(), "the local store's disk refused a batch of writes; they are refused");
        // Taken back newest first, so each address ends as it was before the batch; the
        // reload after the reopen makes memory what the disk holds in any case.
        for settle in settled.into_iter().rev() {
            self.store.restore(&settle.address, settle.before);
            let refused = || DurableError::Storage(error.clone());
            match settle.answer {
                Answer::Put(_, answer) => drop(answer.send(Err(refused()))),
                Answer::Delete(_, answer) => drop(answer.send(Err(refused()))),
            }
        }
    }
}

#[cfg(test)]
mod tests;
