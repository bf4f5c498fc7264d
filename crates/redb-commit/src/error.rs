//! Why a batch, an open or a read failed, classified by what the owner can do about it:
//! storage that is full or unwritable (wait, or send the write elsewhere), any other
//! database failure, a database closed until the writer reopens it, a stopped writer.

use std::error::Error;
use std::fmt;
use std::io::ErrorKind;
use std::sync::Arc;

/// Why a batch, an open or a read failed.
///
/// Cloneable, so every job of a failed batch gets the same error; the causes are shared,
/// not flattened to text, so the chain (`source()`) reaches the storage's own error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// The storage refused to write: it is full (no space, a quota) or failing (any I/O
    /// error the database reported). Nothing of the batch is durable; the writer reopens the
    /// database for the next batch, which succeeds once the storage does.
    #[error("the storage is full or unwritable")]
    Unwritable(#[source] Cause),
    /// The database failed otherwise (corruption, a value too large, a file held by another
    /// process). Nothing of the batch is durable.
    #[error("the database failed")]
    Database(#[source] Cause),
    /// The database is closed after a failed batch until the writer reopens it (readers
    /// see this; asking for the database asks the writer to reopen it).
    #[error("the database is closed after a storage failure; the writer is reopening it")]
    Closed,
    /// The writer thread has stopped (its owner is shutting down) or could not start.
    #[error("the writer has stopped")]
    Stopped,
}

impl CommitError {
    /// True for [`CommitError::Unwritable`]: full or failing storage.
    #[must_use]
    pub fn is_unwritable(&self) -> bool {
        matches!(self, Self::Unwritable(_))
    }

    fn classify(e: redb::Error) -> Self {
        let unwritable = match &e {
            // redb reports every failure of its storage as an I/O error (and refuses all use
            // after one until reopened): whether the disk is full or broken, this database
            // cannot take writes now.
            redb::Error::Io(_) | redb::Error::Backend(_) | redb::Error::PreviousIo => true,
            _ => false,
        };
        if unwritable {
            Self::Unwritable(Cause(Arc::new(e)))
        } else {
            Self::Database(Cause(Arc::new(e)))
        }
    }
}

/// A redb error, shared by every job of a batch. Unlike [`redb::Error`] itself, it reports
/// the storage's `io::Error` as its source, so the chain reaches the error kind.
#[derive(Debug, Clone)]
pub struct Cause(Arc<redb::Error>);

impl Cause {
    /// The redb error.
    #[must_use]
    pub fn redb(&self) -> &redb::Error {
        &self.0
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The storage's own error is the source: not repeated here.
        match &*self.0 {
            redb::Error::Io(_) => f.write_str("I/O error"),
            redb::Error::Backend(_) => f.write_str("storage backend error"),
            other => other.fmt(f),
        }
    }
}

impl Error for Cause {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &*self.0 {
            redb::Error::Io(e) => Some(e),
            redb::Error::Backend(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Storage that is full, over quota, read-only or too small for the file is unwritable;
/// other I/O errors (a missing directory, a permission) are the database's failure.
impl From<std::io::Error> for CommitError {
    fn from(e: std::io::Error) -> Self {
        let full = matches!(
            e.kind(),
            ErrorKind::StorageFull
                | ErrorKind::QuotaExceeded
                | ErrorKind::ReadOnlyFilesystem
                | ErrorKind::FileTooLarge
        );
        let e = Cause(Arc::new(redb::Error::Io(e)));
        if full {
            Self::Unwritable(e)
        } else {
            Self::Database(e)
        }
    }
}

/// Every redb error converts through [`redb::Error`], which keeps the storage's
/// `io::Error` as its source.
macro_rules! from_redb {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for CommitError {
            fn from(e: $t) -> Self {
                Self::classify(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
);

/// An error and its causes on one line (`a: b: c`), for the writer's log.
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_or_failing_storage_is_unwritable_and_other_failures_are_not() {
        for kind in [ErrorKind::StorageFull, ErrorKind::QuotaExceeded] {
            let e = CommitError::from(std::io::Error::from(kind));
            assert!(e.is_unwritable(), "{kind:?}");
        }
        let failing = redb::StorageError::Io(std::io::Error::other("EIO"));
        assert!(CommitError::from(failing).is_unwritable());
        let poisoned = redb::CommitError::Storage(redb::StorageError::PreviousIo);
        assert!(
            CommitError::from(poisoned).is_unwritable(),
            "redb's refusal after an I/O error is the same storage failure"
        );
        let corrupted = redb::StorageError::Corrupted("bad page".into());
        assert!(matches!(
            CommitError::from(corrupted),
            CommitError::Database(_)
        ));
        assert!(matches!(
            CommitError::from(std::io::Error::from(ErrorKind::NotFound)),
            CommitError::Database(_)
        ));
    }

    #[test]
    fn the_cause_chain_reaches_the_storage_error() {
        let e = CommitError::from(redb::StorageError::Io(std::io::Error::new(
            ErrorKind::StorageFull,
            "no space left on device",
        )));
        let chain = Chain(&e).to_string();
        assert_eq!(
            chain,
            "the storage is full or unwritable: I/O error: no space left on device"
        );
        let io = std::iter::successors(Some(&e as &(dyn Error + 'static)), |e| (*e).source())
            .find_map(|e| e.downcast_ref::<std::io::Error>())
            .expect("an io::Error in the chain");
        assert_eq!(io.kind(), ErrorKind::StorageFull);
    }
}
