//! Group commit for redb, shared by the gateway's journal and the node's record store.
//!
//! A [`GroupCommit`] is one writer thread that owns every write transaction of a database:
//! callers queue jobs, the writer applies as many as are waiting (up to
//! [`Settings::max_batch`]) in one transaction with one fsync, and the owner answers each
//! job only once its batch is durable. A burst of concurrent writes costs one fsync
//! instead of one each.
//!
//! A failed commit fails every job of its batch (none was acknowledged) with a
//! [`CommitError`] that says whether the storage is full or unwritable. redb refuses all
//! further use of a database after an I/O error, so the writer then closes it and reopens
//! it for the next batch, reloading the owner's state from disk ([`Batch::load`]): once the
//! disk works again, so does the store, without a restart.

mod error;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;

pub use error::{Cause, CommitError};
pub use writer::{Batch, GroupCommit, Opener, Settings};
