//! The durable write journal of hybrid mode (SPEC §6): writes accepted while the cluster is
//! unreachable, in order, on disk (redb), committed with an fsync before the client gets
//! its 202, so an acknowledged write survives a crash or SIGKILL of the gateway. The replay
//! sends them to the cluster in order and removes each once the cluster has it.
//!
//! One writer thread owns all write transactions and commits whatever has queued up in one
//! transaction (group commit): concurrent fallback writes share one fsync instead of
//! queueing for one each.
//!
//! A failed commit (a full or failing disk) refuses every write of its batch, none of which
//! was acknowledged. redb refuses all further use of a database after an I/O error, so the
//! journal then closes the file and reopens it (reloading its state from disk) at the next
//! write: once the disk works again, so does the journal, without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, oneshot};
use ucxl::{Address, EnvelopeId, Version};

/// The journal's file name in `RUSTLE_JOURNAL_DIR`.
pub const FILE_NAME: &str = "journal.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
/// Most commands committed in one transaction.
const MAX_BATCH: usize = 512;
/// Extra attempts to reopen the database after a disk error, 10 ms apart.
const REOPEN_TRIES: u32 = 10;

/// What a journaled write does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A put, with the version as the gateway accepted it (id, time, hash fixed).
    Put {
        /// The version.
        version: Version,
    },
    /// A delete, with its id and the time it was accepted.
    Delete {
        /// The delete's id.
        id: EnvelopeId,
        /// When it was accepted.
        #[serde(with = "ucxl::envelope::rfc3339")]
        deleted_at: DateTime<Utc>,
    },
}

/// One journaled write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The canonical address.
    pub address: Address,
    /// The write.
    pub op: Op,
    /// The request that was answered 202 (for logs).
    pub request_id: String,
}

/// Why the journal failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal {path}: {message}")]
pub struct JournalError {
    path: String,
    message: String,
}

enum Command {
    /// Entry bytes, canonical address, ack.
    Append(Vec<u8>, String, oneshot::Sender<Result<u64, String>>),
    /// Sequence number, ack (true when no entry for its address is left).
    Remove(u64, oneshot::Sender<Result<bool, String>>),
    /// Reopen the database if a disk error closed it (a reader found it closed).
    Reopen,
}

#[derive(Debug, Default)]
struct Pending {
    per_address: HashMap<String, u64>,
    /// seq → canonical address, for removals.
    addresses: HashMap<u64, String>,
}

impl Pending {
    fn count(&self) -> u64 {
        self.addresses.len() as u64
    }

    /// Forgets a removed entry; true when it was the last of its address.
    fn forget(&mut self, seq: u64) -> bool {
        let Some(address) = self.addresses.remove(&seq) else {
            return false;
        };
        let Some(n) = self.per_address.get_mut(&address) else {
            return false;
        };
        *n -= 1;
        if *n > 0 {
            return false;
        }
        self.per_address.remove(&address);
        true
    }
}

/// Opens the database: at start, and again after a disk error.
type Opener = Box<dyn Fn() -> Result<Database, String> + Send + Sync>;

/// The open database, shared by the writer thread and readers; empty after a disk error
/// until the writer reopens it.
struct Store {
    open: Opener,
    db: Mutex<Option<Arc<Database>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("open", &self.slot().is_some())
            .finish_non_exhaustive()
    }
}

impl Store {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Database>>> {
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The open database, for readers.
    fn current(&self) -> Result<Arc<Database>, String> {
        self.slot().clone().ok_or_else(|| {
            "the journal is closed after a disk error; the next write reopens it".into()
        })
    }

    /// Opens the database (creating its table) and publishes it. A reader that still holds
    /// the closed database keeps its file locked for a moment: the open is retried briefly.
    fn reopen(&self) -> Result<Arc<Database>, String> {
        let mut slot = self.slot();
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let mut tries = 0;
        let db = loop {
            match (self.open)() {
                Ok(db) => break db,
                Err(e) if tries >= REOPEN_TRIES => return Err(e),
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        };
        let txn = db.begin_write().map_err(|e| e.to_string())?;
        txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        txn.commit().map_err(|e| e.to_string())?;
        let db = Arc::new(db);
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    fn close(&self) {
        *self.slot() = None;
    }
}

/// What the journal holds: the pending entries and the next sequence number.
fn load(db: &Database) -> Result<(Pending, u64), String> {
    let mut pending = Pending::default();
    let mut next = 1;
    let read = db.begin_read().map_err(|e| e.to_string())?;
    let table = read.open_table(ENTRIES).map_err(|e| e.to_string())?;
    for row in table.iter().map_err(|e| e.to_string())? {
        let (seq, bytes) = row.map_err(|e| e.to_string())?;
        let seq = seq.value();
        next = seq + 1;
        let address = serde_json::from_slice::<Entry>(bytes.value())
            .map_or_else(|_| String::new(), |e| e.address.canonical().to_owned());
        *pending.per_address.entry(address.clone()).or_default() += 1;
        pending.addresses.insert(seq, address);
    }
    Ok((pending, next))
}

/// The journal: a redb file in `RUSTLE_JOURNAL_DIR`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    store: Arc<Store>,
    commands: mpsc::UnboundedSender<Command>,
    pending: Arc<Mutex<Pending>>,
    /// Woken by every append (the replayer waits on it).
    appended: Notify,
    replayed: AtomicU64,
}

#[allow(clippy::cast_precision_loss)] // a journal never holds 2^52 entries
fn set_pending_gauge(count: u64) {
    metrics::gauge!("rustle_journal_pending").set(count as f64);
}

fn fail(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, counting what it holds, and starts its
    /// writer thread.
    ///
    /// # Errors
    /// When the directory or file cannot be created or read.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let path = dir.join(FILE_NAME);
        let file = path.clone();
        Self::start(
            path,
            Box::new(move || Database::create(&file).map_err(|e| e.to_string())),
        )
    }

    /// Opens the journal with `open` (the file, or a test's storage) and starts its writer.
    fn start(path: PathBuf, open: Opener) -> Result<Arc<Self>, JournalError> {
        let store = Arc::new(Store {
            open,
            db: Mutex::new(None),
        });
        let db = store.reopen().map_err(|e| fail(&path, e))?;
        let (pending, next) = load(&db).map_err(|e| fail(&path, e))?;
        let (commands, rx) = mpsc::unbounded_channel();
        set_pending_gauge(pending.count());
        if pending.count() > 0 {
            tracing::warn!(pending = pending.count(), path = %path.display(), "journal holds writes not yet replayed");
        }
        let pending = Arc::new(Mutex::new(pending));
        let writer = Writer {
            store: Arc::clone(&store),
            db: Some(db),
            next,
            pending: Arc::clone(&pending),
        };
        std::thread::Builder::new()
            .name("rustle-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| fail(&path, e))?;
        Ok(Arc::new(Self {
            path,
            store,
            commands,
            pending,
            appended: Notify::new(),
            replayed: AtomicU64::new(0),
        }))
    }

    fn pending_lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `entry` durably (committed and fsynced when this returns `Ok`).
    ///
    /// # Errors
    /// When the entry could not be committed.
    pub async fn append(&self, entry: &Entry) -> Result<u64, JournalError> {
        let bytes = serde_json::to_vec(entry).map_err(|e| fail(&self.path, e))?;
        let address = entry.address.canonical().to_owned();
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Append(bytes, address, ack))
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?;
        let seq = done
            .await
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?
            .map_err(|e| fail(&self.path, e))?;
        self.appended.notify_waiters();
        Ok(seq)
    }

    /// Removes a replayed entry. Returns true when no entry for its address is left.
    ///
    /// # Errors
    /// When the removal could not be committed.
    pub async fn remove(&self, seq: u64) -> Result<bool, JournalError> {
        let (ack, done) = oneshot::channel();
        self.commands
            .send(Command::Remove(seq, ack))
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?;
        let last_for_address = done
            .await
            .map_err(|_| fail(&self.path, "the journal writer has stopped"))?
            .map_err(|e| fail(&self.path, e))?;
        self.replayed.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("rustle_journal_replayed_total").increment(1);
        Ok(last_for_address)
    }

    /// The oldest entries, up to `limit`, in order. An entry that cannot be decoded (it
    /// was never written by this gateway) is returned as `Err` so the replay can drop it.
    ///
    /// # Errors
    /// When the file cannot be read.
    pub fn oldest(&self, limit: usize) -> Result<Vec<(u64, Option<Entry>)>, JournalError> {
        let db = self.store.current().map_err(|e| {
            // Only the writer reopens; ask it to, so the replay resumes without waiting for
            // a client's write.
            let _ = self.commands.send(Command::Reopen);
            fail(&self.path, e)
        })?;
        let read = db.begin_read().map_err(|e| fail(&self.path, e))?;
        let table = read.open_table(ENTRIES).map_err(|e| fail(&self.path, e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| fail(&self.path, e))?.take(limit) {
            let (seq, bytes) = row.map_err(|e| fail(&self.path, e))?;
            out.push((seq.value(), serde_json::from_slice(bytes.value()).ok()));
        }
        Ok(out)
    }

    /// Entries not yet replayed.
    #[must_use]
    pub fn pending(&self) -> u64 {
        self.pending_lock().count()
    }

    /// True when writes to `address` wait in the journal.
    #[must_use]
    pub fn pending_for(&self, address: &Address) -> bool {
        self.pending_lock()
            .per_address
            .contains_key(address.canonical())
    }

    /// Entries replayed since start.
    #[must_use]
    pub fn replayed(&self) -> u64 {
        self.replayed.load(Ordering::Relaxed)
    }

    /// Waits for the next append.
    pub async fn appended(&self) {
        self.appended.notified().await;
    }
}

/// The writer thread's state.
struct Writer {
    store: Arc<Store>,
    /// The open database; none after a disk error until the next batch reopens it.
    db: Option<Arc<Database>>,
    next: u64,
    pending: Arc<Mutex<Pending>>,
}

impl Writer {
    /// Commits queued commands in batches, one fsync per batch, until every sender is
    /// gone; the pending counts change with each commit, before anyone is answered.
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let writes = batch.iter().any(|c| !matches!(c, Command::Reopen));
            let result = self.database().and_then(|db| {
                if !writes {
                    return Ok(());
                }
                let start = self.next;
                commit(&db, &batch, &mut self.next).inspect_err(|e| {
                    // Nothing of the batch is durable: its sequence numbers may be used
                    // again, and the database must be reopened before further use.
                    tracing::error!(error = %e, writes = batch.len(), "a journal commit failed; its writes were refused");
                    self.next = start;
                    self.db = None;
                    self.store.close();
                })
            });
            self.answer(batch, &result);
        }
    }

    /// The open database, reopened (and the state reloaded from it) after a disk error.
    fn database(&mut self) -> Result<Arc<Database>, String> {
        if let Some(db) = &self.db {
            return Ok(Arc::clone(db));
        }
        let db = self.store.reopen()?;
        let (pending, next) = match load(&db) {
            Ok(loaded) => loaded,
            Err(e) => {
                self.store.close();
                return Err(e);
            }
        };
        tracing::warn!(
            pending = pending.count(),
            "journal reopened after a disk error"
        );
        set_pending_gauge(pending.count());
        *self.pending.lock().unwrap_or_else(PoisonError::into_inner) = pending;
        self.next = next;
        self.db = Some(Arc::clone(&db));
        Ok(db)
    }

    fn answer(&self, batch: Vec<Command>, result: &Result<(), String>) {
        // Sequence numbers of the batch's appends, in order, from where the commit began.
        let appends = batch
            .iter()
            .filter(|c| matches!(c, Command::Append(..)))
            .count() as u64;
        let mut seq = self.next - if result.is_ok() { appends } else { 0 };
        let mut counts = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        for command in batch {
            match command {
                Command::Append(_, address, ack) => {
                    if result.is_ok() {
                        *counts.per_address.entry(address.clone()).or_default() += 1;
                        counts.addresses.insert(seq, address);
                    }
                    let _ = ack.send(result.clone().map(|()| seq));
                    seq += 1;
                }
                Command::Remove(removed, ack) => {
                    let last = result.is_ok() && counts.forget(removed);
                    let _ = ack.send(result.clone().map(|()| last));
                }
                Command::Reopen => {}
            }
        }
        set_pending_gauge(counts.count());
    }
}

fn commit(db: &Database, batch: &[Command], next: &mut u64) -> Result<(), String> {
    let mut txn = db.begin_write().map_err(|e| e.to_string())?;
    txn.set_durability(Durability::Immediate)
        .map_err(|e| e.to_string())?;
    {
        let mut table = txn.open_table(ENTRIES).map_err(|e| e.to_string())?;
        for command in batch {
            match command {
                Command::Append(bytes, _, _) => {
                    table
                        .insert(*next, bytes.as_slice())
                        .map_err(|e| e.to_string())?;
                    *next += 1;
                }
                Command::Remove(seq, _) => {
                    table.remove(*seq).map_err(|e| e.to_string())?;
                }
                Command::Reopen => {}
            }
        }
    }
    txn.commit().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc as StdArc;

    fn entry(path: &str, n: u32) -> Entry {
        let address = Address::parse(&format!("ucxl://a:b@c:d/{path}")).expect("address");
        let content = serde_json::json!({"n": n});
        let (hash, size) = ucxl::content_digest(&content).expect("digest");
        Entry {
            address,
            op: Op::Put {
                version: Version {
                    id: EnvelopeId::parse(&format!("id-{n}")).expect("id"),
                    content: StdArc::new(content),
                    content_type: "application/json".into(),
                    metadata: serde_json::Map::new(),
                    created_at: Utc::now(),
                    hash,
                    size,
                    written_by: None,
                },
            },
            request_id: format!("r{n}"),
        }
    }

    #[tokio::test]
    async fn entries_survive_reopening_in_order_and_removal_is_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let journal = Journal::open(dir.path()).expect("open");
            let appends = (0..20).map(|n| {
                let journal = StdArc::clone(&journal);
                async move { journal.append(&entry("x", n)).await.expect("append") }
            });
            let seqs = futures_util::future::join_all(appends).await;
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 20, "every append has its own sequence number");
            journal.append(&entry("y", 99)).await.expect("append");
            assert_eq!(journal.pending(), 21);
            assert!(journal.pending_for(&entry("y", 0).address));
            let first = journal.oldest(1).expect("read")[0].0;
            assert!(!journal.remove(first).await.expect("remove"));
        }
        // The writer thread may still hold the file for a moment: reopen until it is free.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let journal = loop {
            match Journal::open(dir.path()) {
                Ok(j) => break j,
                Err(e) if std::time::Instant::now() > until => panic!("cannot reopen: {e}"),
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        };
        assert_eq!(journal.pending(), 20);
        let oldest = journal.oldest(100).expect("read");
        assert_eq!(oldest.len(), 20);
        assert!(oldest.windows(2).all(|w| w[0].0 < w[1].0), "in order");
        let last = oldest.last().and_then(|(_, e)| e.clone()).expect("entry");
        assert_eq!(last.request_id, "r99");
        assert!(journal.remove(oldest[19].0).await.expect("remove"));
        assert!(!journal.pending_for(&entry("y", 0).address));
    }

    /// Storage in memory that fails every write and flush while `fail` is set (a full or
    /// failing disk).
    #[derive(Debug)]
    struct Flaky {
        memory: StdArc<redb::backends::InMemoryBackend>,
        fail: StdArc<std::sync::atomic::AtomicBool>,
    }

    impl Flaky {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.fail.load(Ordering::SeqCst) {
                Err(std::io::Error::other("no space left on device"))
            } else {
                Ok(())
            }
        }
    }

    impl redb::StorageBackend for Flaky {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.memory.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.memory.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.memory.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.memory.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.memory.write(offset, data)
        }
    }

    #[tokio::test]
    async fn a_failed_commit_refuses_its_writes_and_the_journal_recovers_with_the_disk() {
        let memory = StdArc::new(redb::backends::InMemoryBackend::new());
        let fail = StdArc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, f) = (StdArc::clone(&memory), StdArc::clone(&fail));
        let journal = Journal::start(
            PathBuf::from("memory"),
            Box::new(move || {
                Database::builder()
                    .create_with_backend(Flaky {
                        memory: StdArc::clone(&m),
                        fail: StdArc::clone(&f),
                    })
                    .map_err(|e| e.to_string())
            }),
        )
        .expect("open");
        let first = journal.append(&entry("x", 1)).await.expect("append");

        fail.store(true, Ordering::SeqCst);
        let refused = journal.append(&entry("x", 2)).await;
        assert!(refused.is_err(), "a write the disk did not take is refused");
        assert_eq!(journal.pending(), 1, "and not counted");
        assert!(
            journal.remove(first).await.is_err(),
            "the journal cannot reopen while the disk fails"
        );
        assert!(journal.oldest(10).is_err(), "closed until reopened");
        assert_eq!(journal.pending(), 1);

        fail.store(false, Ordering::SeqCst);
        // A reader finding the journal closed asks the writer to reopen it: the replay
        // resumes without waiting for a client's write.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while journal.oldest(10).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "the journal never reopened"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let third = journal
            .append(&entry("x", 3))
            .await
            .expect("the journal reopens once the disk works");
        assert!(third > first);
        let held: Vec<String> = journal
            .oldest(10)
            .expect("read")
            .into_iter()
            .filter_map(|(_, e)| e.map(|e| e.request_id))
            .collect();
        assert_eq!(held, ["r1", "r3"], "the acknowledged writes, nothing else");
        assert_eq!(journal.pending(), 2);
        assert!(!journal.remove(first).await.expect("remove"));
        assert!(journal.remove(third).await.expect("remove"));
        assert_eq!(journal.pending(), 0);
    }
}
