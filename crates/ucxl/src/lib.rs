//! UCXL: addresses, search patterns, envelopes, version sets and the UCXL response format,
//! shared by the RUSTLE gateway and the BZZZ node.
//!
//! Everything here is a type that can only hold valid values: parse at the edge, then
//! pass [`Address`], [`Pattern`] and [`EnvelopeId`] around.

pub mod address;
pub mod batch;
pub mod change;
pub mod content;
pub mod envelope;
pub mod error;
pub mod pattern;
pub mod response;
pub mod search;
pub mod version_set;

pub use address::{Address, Temporal};
pub use change::Change;
pub use content::{Content, ContentError};
pub use envelope::{
    ContentHash, DEFAULT_CONTENT_TYPE, DigestError, Envelope, EnvelopeId, History, PrincipalName,
    SearchItem, Version, VersionSummary, content_digest,
};
pub use error::{AddressError, ErrorKind, Field};
pub use pattern::Pattern;
pub use response::{Code, Failure, FailureBody, Success, SuccessBody};
pub use search::{SearchQuery, SearchTimeout, same_media_type};
pub use version_set::{
    DeleteOutcome, Entry, NewVersion, PutOutcome, Tombstone, VersionSet, WriteError,
};
