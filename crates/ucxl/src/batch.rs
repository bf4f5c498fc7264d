//! Batched writes (UCXI `POST /ucxi/v1/batch`): many puts of whole versions and deletes
//! in one body, answered with one result per item, in order, each with the code its single
//! route (`PUT /ucxi/v1/put`, `DELETE /ucxi/v1/delete`) would answer. The node applies
//! them; the gateway's journal replay sends them.
//!
//! ```json
//! {"items": [
//!   {"put": {"address": "ucxl://a:r@p:t/x", "version": {"id": "…", "created_at": "…",
//!            "hash": "sha256:…", "size": 7, "content": …, "content_type": "…",
//!            "metadata": {}, "written_by": "…"}}},
//!   {"delete": {"address": "ucxl://a:r@p:t/y", "id": "…", "deleted_at": "…"}}
//! ]}
//! ```
//!
//! answered (as the `data` of a `UCXL-200-OK` success) with
//!
//! ```json
//! {"results": [
//!   {"address": "ucxl://a:r@p:t/x", "code": "UCXL-201-CREATED", "message": "…", "id": "…", "version": 1},
//!   {"address": "ucxl://a:r@p:t/y", "code": "UCXL-404-NOT_FOUND", "message": "…", "details": {}}
//! ]}
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::address::Address;
use crate::envelope::{EnvelopeId, Version, rfc3339};
use crate::response::Code;

/// The node route that takes a batch.
pub const ROUTE: &str = "/ucxi/v1/batch";
/// Most items one batch may hold; a node refuses a larger batch (400).
pub const MAX_ITEMS: usize = 1000;

/// The body of `POST /ucxi/v1/batch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch {
    /// The writes, applied in order within each address.
    pub items: Vec<Item>,
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Item {
    /// A put of a whole version, as the writer accepted it (its id, time, hash and size
    /// fixed), so every replica stores the same version.
    Put {
        /// Where (no temporal segment).
        address: Address,
        /// The version.
        version: Version,
    },
    /// A delete, with the time it was accepted.
    Delete {
        /// Where (no temporal segment).
        address: Address,
        /// The delete's id.
        id: EnvelopeId,
        /// When it was accepted.
        #[serde(with = "rfc3339")]
        deleted_at: DateTime<Utc>,
    },
}

impl Item {
    /// The address the item writes.
    #[must_use]
    pub fn address(&self) -> &Address {
        match self {
            Self::Put { address, .. } | Self::Delete { address, .. } => address,
        }
    }
}

/// The `data` of a batch answer: one result per item, in the items' order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The results.
    pub results: Vec<ItemResult>,
}

/// What became of one item: the code (and message) its single route would have answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The item's address, as sent.
    pub address: Address,
    /// `UCXL-201-CREATED` (a new version), `UCXL-200-OK` (the id existed, or deleted), a 4xx
    /// refusal, or a 5xx failure: not stored, or stored on the node but not replicated.
    pub code: Code,
    /// What happened, for humans.
    pub message: String,
    /// The id of the version or delete, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EnvelopeId>,
    /// A put's version number, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// A delete's time, on success.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rfc3339::option"
    )]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Structured details of a refusal or failure (an object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// How the writer of an item should take its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Stored and replicated (`created`: a new version or delete; else the id existed).
    Done {
        /// True for `UCXL-201-CREATED`.
        created: bool,
    },
    /// A definite refusal (4xx): sent again, it would be refused again.
    Refused,
    /// Not stored, or not replicated (5xx, 408, 429, or a success code a write never
    /// answers): safe to send again, with the same id, later.
    NotStored,
}

impl ItemResult {
    /// A stored put: `created` or the id existed.
    #[must_use]
    pub fn put(address: Address, created: bool, id: EnvelopeId, version: u32) -> Self {
        let (code, message) = if created {
            (Code::Created, "stored a new version")
        } else {
            (
                Code::Ok,
                "an envelope with this id already exists; nothing changed",
            )
        };
        Self {
            address,
            code,
            message: message.to_owned(),
            id: Some(id),
            version: Some(version),
            deleted_at: None,
            details: None,
        }
    }

    /// A stored delete (or one whose id existed).
    #[must_use]
    pub fn deleted(address: Address, id: EnvelopeId, deleted_at: DateTime<Utc>) -> Self {
        Self {
            address,
            code: Code::Ok,
            message: "deleted".to_owned(),
            id: Some(id),
            version: None,
            deleted_at: Some(deleted_at),
            details: None,
        }
    }

    /// A refusal or failure with `code`.
    #[must_use]
    pub fn failed(address: Address, code: Code, message: String, details: Value) -> Self {
        Self {
            address,
            code,
            message,
            id: None,
            version: None,
            deleted_at: None,
            details: Some(details),
        }
    }

    /// How the writer should take it, by its code.
    #[must_use]
    pub fn outcome(&self) -> ItemOutcome {
        match self.code {
            Code::Created => ItemOutcome::Done { created: true },
            Code::Ok => ItemOutcome::Done { created: false },
            Code::RequestTimeout | Code::TooManyRequests => ItemOutcome::NotStored,
            code if (400..500).contains(&code.status()) => ItemOutcome::Refused,
            _ => ItemOutcome::NotStored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn address(path: &str) -> Address {
        Address::parse(&format!("ucxl://a:r@p:t/{path}")).expect("an address")
    }

    #[test]
    fn the_wire_format_of_a_batch() {
        let content = json!({"n": 1});
        let (hash, size) = crate::content_digest(&content).expect("a digest");
        let at = "2026-11-24T10:00:00.123456Z";
        let text = json!({"items": [
            {"put": {"address": "ucxl://a:r@p:t/x", "version": {
                "id": "v1", "created_at": at, "hash": hash, "size": size, "content": content,
                "content_type": "application/json", "metadata": {}, "written_by": "bot"}}},
            {"delete": {"address": "ucxl://a:r@p:t/y", "id": "d1", "deleted_at": at}}
        ]});
        let batch: Batch = serde_json::from_value(text.clone()).expect("decodes");
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.items[0].address(), &address("x"));
        assert!(
            matches!(&batch.items[1], Item::Delete { id, .. } if id.as_str() == "d1"),
            "{batch:?}"
        );
        assert_eq!(serde_json::to_value(&batch).expect("encodes"), text);
        for bad in [
            json!({"items": [{"move": {"address": "ucxl://a:r@p:t/x"}}]}),
            json!({"items": [{"delete": {"address": "ucxl://a:r@p:t/x", "id": "d"}}]}),
            json!({"items": [{"delete": {"address": "no", "id": "d", "deleted_at": at}}]}),
            json!({"items": [], "extra": 1}),
        ] {
            assert!(
                serde_json::from_value::<Batch>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_wire_format_of_results() {
        let at = "2026-11-24T10:00:00.123456Z";
        let deleted_at = DateTime::parse_from_rfc3339(at)
            .expect("a time")
            .with_timezone(&Utc);
        let id = |s: &str| EnvelopeId::parse(s).expect("an id");
        let results = Results {
            results: vec![
                ItemResult::put(address("x"), true, id("v1"), 3),
                ItemResult::deleted(address("y"), id("d1"), deleted_at),
                ItemResult::failed(address("z"), Code::Conflict, "no".into(), json!({"why": 1})),
            ],
        };
        let text = serde_json::to_value(&results).expect("encodes");
        assert_eq!(
            text,
            json!({"results": [
                {"address": "ucxl://a:r@p:t/x", "code": "UCXL-201-CREATED",
                 "message": "stored a new version", "id": "v1", "version": 3},
                {"address": "ucxl://a:r@p:t/y", "code": "UCXL-200-OK", "message": "deleted",
                 "id": "d1", "deleted_at": at},
                {"address": "ucxl://a:r@p:t/z", "code": "UCXL-409-CONFLICT", "message": "no",
                 "details": {"why": 1}}
            ]})
        );
        let back: Results = serde_json::from_value(text).expect("decodes");
        assert_eq!(back, results);
    }

    #[test]
    fn an_items_outcome_follows_its_code() {
        let with = |code| ItemResult::failed(address("x"), code, String::new(), json!({}));
        assert_eq!(
            with(Code::Created).outcome(),
            ItemOutcome::Done { created: true }
        );
        assert_eq!(
            with(Code::Ok).outcome(),
            ItemOutcome::Done { created: false }
        );
        for refused in [
            Code::Conflict,
            Code::NotFound,
            Code::InvalidPayload,
            Code::TemporalInvalid,
            Code::PayloadTooLarge,
        ] {
            assert_eq!(with(refused).outcome(), ItemOutcome::Refused, "{refused}");
        }
        for again in [
            Code::ServiceUnavailable,
            Code::InsufficientStorage,
            Code::GatewayTimeout,
            Code::InternalError,
            Code::TooManyRequests,
            Code::RequestTimeout,
            Code::Accepted,
        ] {
            assert_eq!(with(again).outcome(), ItemOutcome::NotStored, "{again}");
        }
    }
}
