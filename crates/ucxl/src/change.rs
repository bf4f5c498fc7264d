//! A change to an address, as a node's change feed records it and as the gateway's watch
//! stream reports it: a new version or a delete, without content.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::rfc3339;
use crate::{Address, ContentHash, Envelope, EnvelopeId, PrincipalName, Version};

/// What a feed entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// A new version.
    Put {
        /// The canonical address.
        address: Address,
        /// The version's id.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        id: EnvelopeId,
        /// Its number within its history when it was committed here (a version merged
        /// later with an earlier time can shift it on reads).
        version: u32,
        /// When it was written.
        #[serde(with = "rfc3339")]
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        created_at: DateTime<Utc>,
        /// Its content's hash.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        hash: ContentHash,
        /// Its content's JCS size in bytes.
        size: u64,
        /// Its content's media type.
        content_type: String,
        /// Who wrote it, when the gateway said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(value_type = Option<String>))]
        written_by: Option<PrincipalName>,
    },
    /// A delete (tombstone).
    Delete {
        /// The canonical address.
        address: Address,
        /// The delete's id.
        #[cfg_attr(feature = "openapi", schema(value_type = String))]
        id: EnvelopeId,
        /// When the delete was accepted.
        #[serde(with = "rfc3339")]
        #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
        deleted_at: DateTime<Utc>,
    },
}

impl Change {
    /// The change of a new version numbered `version` at `address`.
    #[must_use]
    pub fn put(address: &Address, version: u32, stored: &Version) -> Self {
        Self::Put {
            address: address.clone(),
            id: stored.id.clone(),
            version,
            created_at: stored.created_at,
            hash: stored.hash.clone(),
            size: stored.size,
            content_type: stored.content_type.clone(),
            written_by: stored.written_by.clone(),
        }
    }

    /// The change of a stored envelope (the version it is).
    #[must_use]
    pub fn written(envelope: &Envelope) -> Self {
        Self::Put {
            address: envelope.address.without_temporal(),
            id: envelope.id.clone(),
            version: envelope.version,
            created_at: envelope.created_at,
            hash: envelope.hash.clone(),
            size: envelope.size,
            content_type: envelope.content_type.clone(),
            written_by: envelope.written_by.clone(),
        }
    }

    /// The address changed.
    #[must_use]
    pub fn address(&self) -> &Address {
        match self {
            Self::Put { address, .. } | Self::Delete { address, .. } => address,
        }
    }

    /// The id of the version or delete.
    #[must_use]
    pub fn id(&self) -> &EnvelopeId {
        match self {
            Self::Put { id, .. } | Self::Delete { id, .. } => id,
        }
    }
}
