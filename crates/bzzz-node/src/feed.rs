//! The node's change feed: every change the store commits (a new version or a delete, from
//! a client, a batch, a peer's push, a catch-up or a DHT merge) gets the next number of a
//! per-node sequence, written to the `feed` table in the same transaction as the change.
//! The last `retain` numbers are kept (older ones are compacted after the commit, off the
//! request path); committed entries are also broadcast to live watchers.
//!
//! A random [`FeedId`] is created with the store file and kept in it: a wiped node gets a
//! new id, so a consumer's cursor from the old numbering can never match the new one.

use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use redb_commit::CommitError;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
pub use ucxl::Change as FeedChange;
use ucxl::envelope::rfc3339;

/// seq → JSON of its [`FeedEntry`].
const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// The feed's identity and numbering: [`META_ID`] and [`META_LAST_SEQ`].
const FEED_META: TableDefinition<&str, &[u8]> = TableDefinition::new("feed_meta");
/// The feed id: 16 bytes.
const META_ID: &str = "id";
/// The last number given: 8 bytes, big-endian. The `feed` table's last key says the same
/// while it holds anything; this survives its compaction to nothing.
const META_LAST_SEQ: &str = "last_seq";

/// Entries kept unless `BZZZ_FEED_RETAIN` says otherwise.
pub const DEFAULT_RETAIN: u64 = 100_000;
/// Committed batches a live watcher may fall behind before it reads from the table instead.
pub(crate) const LIVE_CAPACITY: usize = 1024;

/// A feed's identity: 128 random bits, shown as 32 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeedId([u8; 16]);

impl FeedId {
    fn random() -> Result<Self, CommitError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| {
            CommitError::from(std::io::Error::other(format!(
                "no randomness for the feed id: {e}"
            )))
        })?;
        Ok(Self(bytes))
    }

    /// Parses the hex form (either case).
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 16];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

impl std::fmt::Display for FeedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Serialize for FeedId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One numbered change, as stored and as watchers receive it (without content).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEntry {
    /// Its number in this node's feed.
    pub seq: u64,
    /// When this node committed it (absent in entries written before it was recorded).
    #[serde(
        default,
        with = "rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub committed_at: Option<DateTime<Utc>>,
    /// What changed.
    #[serde(flatten)]
    pub change: FeedChange,
}

/// A committed entry as live watchers receive it: with the version's content, so a watcher
/// asking for content needs no lookup.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The entry.
    pub entry: FeedEntry,
    /// A put's content.
    pub content: Option<ucxl::Content>,
}

/// Where the feed stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Position {
    /// The feed's id.
    pub id: FeedId,
    /// The last number committed (0 before the first change).
    pub current_seq: u64,
    /// The oldest number still retained; `current_seq + 1` when none is.
    pub oldest_seq: u64,
}

impl Position {
    /// Whether a watcher that has seen everything up to `since` can go on without a gap.
    #[must_use]
    pub fn continues(&self, since: u64) -> bool {
        since.saturating_add(1) >= self.oldest_seq && since <= self.current_seq
    }
}

/// The feed as readers see it: its position and the live broadcast. Written only by the
/// store's writer thread, after each commit.
#[derive(Debug)]
pub struct Feed {
    position: RwLock<Position>,
    live: broadcast::Sender<Arc<[Committed]>>,
    retain: u64,
}

impl Feed {
    pub(crate) fn new(retain: u64) -> Self {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Self {
            position: RwLock::new(Position {
                id: FeedId([0; 16]),
                current_seq: 0,
                oldest_seq: 1,
            }),
            live,
            retain: retain.max(1),
        }
    }

    /// Where the feed stands now.
    #[must_use]
    pub fn position(&self) -> Position {
        *self.position.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Entries kept.
    #[must_use]
    pub fn retain(&self) -> u64 {
        self.retain
    }

    /// Every batch of entries committed from now on. Subscribe before reading the table,
    /// so nothing committed in between is missed (what is both read and received has a
    /// number already seen).
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Committed]>> {
        self.live.subscribe()
    }

    fn set(&self, position: Position) {
        *self
            .position
            .write()
            .unwrap_or_else(PoisonError::into_inner) = position;
    }
}

/// The writer thread's side of the feed: the numbers given to the batch being built.
#[derive(Debug)]
pub(crate) struct Numbering {
    feed: Arc<Feed>,
    id: FeedId,
    /// The last number committed.
    committed: u64,
    /// The oldest number on disk.
    oldest: u64,
    /// The batch's entries, numbered `committed + 1 ..`, with their encodings.
    staged: Vec<(Committed, Vec<u8>)>,
}

impl Numbering {
    pub(crate) fn new(feed: Arc<Feed>) -> Self {
        Self {
            feed,
            id: FeedId([0; 16]),
            committed: 0,
            oldest: 1,
            staged: Vec::new(),
        }
    }

    /// Creates the tables and the feed id when missing, compacts to the retained window and
    /// reads where the numbering stands: at start and after every reopen, so numbers a
    /// failed commit took are given again (unless that commit reached the disk after all:
    /// then numbering continues after it).
    pub(crate) fn load(&mut self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let mut meta = txn.open_table(FEED_META)?;
        let stored_id = meta
            .get(META_ID)?
            .map(|v| <[u8; 16]>::try_from(v.value()).map(FeedId));
        let id = match stored_id {
            Some(Ok(id)) => id,
            other => {
                if other.is_some() {
                    // A new id is safe: consumers of the old one are told it changed.
                    tracing::error!("the stored feed id does not decode; the feed gets a new id");
                }
                let id = FeedId::random()?;
                meta.insert(META_ID, id.0.as_slice())?;
                id
            }
        };
        let mut last = meta
            .get(META_LAST_SEQ)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_be_bytes);
        let mut feed = txn.open_table(FEED)?;
        if let Some((seq, _)) = feed.last()? {
            last = last.max(seq.value());
        }
        let keep_from = last.saturating_sub(self.feed.retain) + 1;
        feed.retain_in(..keep_from, |_, _| false)?;
        let oldest = feed.first()?.map_or(last + 1, |(seq, _)| seq.value());
        self.id = id;
        self.committed = last;
        self.oldest = oldest;
        self.staged.clear();
        self.publish_position();
        Ok(())
    }

    /// Numbers `changes` (in order) for the batch, after what it holds already. Nothing is
    /// numbered unless all of them encode.
    pub(crate) fn stage(
        &mut self,
        changes: Vec<(FeedChange, Option<ucxl::Content>)>,
    ) -> Result<(), serde_json::Error> {
        let next = self.committed + self.staged.len() as u64 + 1;
        let mut numbered = Vec::with_capacity(changes.len());
        let committed_at = Some(Utc::now());
        for (seq, (change, content)) in (next..).zip(changes) {
            let entry = FeedEntry {
                seq,
                committed_at,
                change,
            };
            let bytes = serde_json::to_vec(&entry)?;
            numbered.push((Committed { entry, content }, bytes));
        }
        self.staged.extend(numbered);
        Ok(())
    }

    /// Writes the batch's entries and the last number into the batch's transaction.
    pub(crate) fn write(&self, txn: &WriteTransaction) -> Result<(), CommitError> {
        let Some((last, _)) = self.staged.last() else {
            return Ok(());
        };
        let mut feed = txn.open_table(FEED)?;
        for (committed, bytes) in &self.staged {
            feed.insert(committed.entry.seq, bytes.as_slice())?;
        }
        let mut meta = txn.open_table(FEED_META)?;
        meta.insert(META_LAST_SEQ, last.entry.seq.to_be_bytes().as_slice())?;
        Ok(())
    }

    /// The batch is durable: its numbers are taken; live watchers receive its entries.
    pub(crate) fn committed(&mut self) {
        let staged = std::mem::take(&mut self.staged);
        let Some((last, _)) = staged.last() else {
            return;
        };
        self.committed = last.entry.seq;
        self.publish_position();
        let entries: Arc<[Committed]> = staged.into_iter().map(|(c, _)| c).collect();
        // No watcher is no error.
        let _ = self.feed.live.send(entries);
    }

    /// The batch failed: its numbers are free again (the reload after the reopen reads
    /// where the disk stands).
    pub(crate) fn failed(&mut self) {
        self.staged.clear();
    }

    /// Whether the batch so far has entries.
    pub(crate) fn dirty(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Drops entries older than the retained window, once they exceed it by a 64th (so a
    /// large window is compacted in chunks, not after every batch). Runs after the batch
    /// was answered, without an fsync: a compaction lost to a crash is done again.
    pub(crate) fn compact(&mut self, db: &Database) -> Result<(), CommitError> {
        let retain = self.feed.retain;
        let held = (self.committed + 1).saturating_sub(self.oldest);
        if held <= retain + retain / 64 {
            return Ok(());
        }
        let keep_from = self.committed + 1 - retain;
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::None)?;
        txn.open_table(FEED)?.retain_in(..keep_from, |_, _| false)?;
        txn.commit()?;
        self.oldest = keep_from;
        self.publish_position();
        Ok(())
    }

    fn publish_position(&self) {
        self.feed.set(Position {
            id: self.id,
            current_seq: self.committed,
            oldest_seq: self.oldest,
        });
    }
}

/// Entries read from the table.
#[derive(Debug, Default)]
pub struct Page {
    /// The entries that decode, in order.
    pub entries: Vec<FeedEntry>,
    /// The last number read (the `after` asked for when none was).
    pub through: u64,
}

/// Why entries cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Entries after the number asked for were compacted away.
    #[error("the feed no longer holds the entries after {after}")]
    Gone {
        /// The number asked for.
        after: u64,
    },
    /// The database cannot be read.
    #[error(transparent)]
    Storage(#[from] CommitError),
}

/// Up to `limit` entries numbered after `after`, from the table.
///
/// # Errors
/// [`ReadError::Gone`] when the next entry after `after` was compacted away.
pub(crate) fn read(db: &Database, after: u64, limit: usize) -> Result<Page, ReadError> {
    let read = db.begin_read().map_err(CommitError::from)?;
    let table = read.open_table(FEED).map_err(CommitError::from)?;
    let mut page = Page {
        entries: Vec::new(),
        through: after,
    };
    let Some(from) = after.checked_add(1) else {
        return Ok(page);
    };
    for row in table.range(from..).map_err(CommitError::from)?.take(limit) {
        let (seq, value) = row.map_err(CommitError::from)?;
        let seq = seq.value();
        if seq != page.through + 1 {
            // Numbers are given without gaps: a missing one was compacted.
            return Err(ReadError::Gone { after });
        }
        page.through = seq;
        match serde_json::from_slice::<FeedEntry>(value.value()) {
            Ok(entry) if entry.seq == seq => page.entries.push(entry),
            Ok(_) | Err(_) => {
                tracing::error!(seq, "skipped a feed entry that does not decode");
            }
        }
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_ids_are_hex_and_parse_back() {
        let id = FeedId::random().expect("random");
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(FeedId::parse(&text), Some(id));
        assert_eq!(FeedId::parse(&text.to_uppercase()), Some(id));
        assert_eq!(FeedId::parse("xyz"), None);
        assert_ne!(FeedId::random().expect("random"), id);
    }

    #[test]
    fn a_position_continues_a_cursor_inside_its_window_only() {
        let at = Position {
            id: FeedId([0; 16]),
            current_seq: 10,
            oldest_seq: 5,
        };
        assert!(!at.continues(3), "5 is the oldest: 4 is missing");
        assert!(at.continues(4));
        assert!(at.continues(10));
        assert!(!at.continues(11), "ahead of the feed: another numbering");
        let empty = Position {
            id: FeedId([0; 16]),
            current_seq: 0,
            oldest_seq: 1,
        };
        assert!(empty.continues(0));
    }

    #[test]
    fn entries_have_the_wire_form() {
        use ucxl::{Address, EnvelopeId};
        let address = Address::parse("ucxl://a:r@p:t/x").expect("address");
        let at = DateTime::parse_from_rfc3339("2026-11-24T10:00:01Z")
            .expect("time")
            .with_timezone(&Utc);
        let entry = FeedEntry {
            seq: 7,
            committed_at: Some(at),
            change: FeedChange::Delete {
                address,
                id: EnvelopeId::parse("d1").expect("id"),
                deleted_at: DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
                    .expect("time")
                    .with_timezone(&Utc),
            },
        };
        let json = serde_json::to_value(&entry).expect("encodes");
        assert_eq!(
            json,
            serde_json::json!({"seq": 7, "committed_at": "2026-11-24T10:00:01.000000Z",
                "op": "delete", "address": "ucxl://a:r@p:t/x",
                "id": "d1", "deleted_at": "2026-11-24T10:00:00.000000Z"})
        );
        let back: FeedEntry = serde_json::from_value(json).expect("decodes");
        assert_eq!(back, entry);
        // Entries stored before the commit time was recorded still decode.
        let old: FeedEntry = serde_json::from_value(serde_json::json!({"seq": 7,
            "op": "delete", "address": "ucxl://a:r@p:t/x", "id": "d1",
            "deleted_at": "2026-11-24T10:00:00.000000Z"}))
        .expect("decodes");
        assert_eq!(old.committed_at, None);
    }
}
