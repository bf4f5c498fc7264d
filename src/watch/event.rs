//! One change as watchers receive it: the change, its JSON (made once, shared by every
//! watcher) and the cursor of the hub just after it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use ucxl::Change;

use super::cursor::{Cursor, Key};

/// A change, ready to be sent.
#[derive(Debug)]
pub struct Event {
    /// Its identity (address and id).
    pub key: Key,
    /// The change.
    pub change: Change,
    /// The JSON of the change (the `data:` of a watcher without content).
    pub data: Arc<str>,
    /// The hub's cursor just after this change: every change before it, and it.
    pub cursor: Arc<Cursor>,
    /// Its text (the `id:`).
    pub cursor_text: Arc<str>,
    /// When the node that first reported it committed it, when it said.
    pub committed_at: Option<DateTime<Utc>>,
    /// The endpoint (or `local`) that first reported it, for the lag metric.
    pub source: Arc<str>,
    /// The feed that first reported it, and its number there.
    pub origin: (Arc<str>, u64),
}

impl Event {
    /// An event for `change`, with the hub's cursor after it.
    #[must_use]
    pub fn new(
        key: Key,
        change: Change,
        cursor: Cursor,
        committed_at: Option<DateTime<Utc>>,
        source: Arc<str>,
        origin: (Arc<str>, u64),
    ) -> Self {
        let data = data_of(&change, None);
        let cursor_text = Arc::from(cursor.render());
        Self {
            key,
            change,
            data,
            cursor: Arc::new(cursor),
            cursor_text,
            committed_at,
            source,
            origin,
        }
    }

    /// `put` or `delete`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self.change {
            Change::Put { .. } => "put",
            Change::Delete { .. } => "delete",
        }
    }
}

/// The data of a change event sent with content: the change's fields, and `content` or
/// `content_omitted: true`.
#[derive(Debug, Serialize)]
struct WithContent<'a> {
    #[serde(flatten)]
    change: &'a Change,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a ucxl::Content>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    content_omitted: bool,
}

/// The JSON of `change`; with `content` = `Some(None)` when content was asked for and cannot
/// be given (too large, or gone).
#[must_use]
pub fn data_of(change: &Change, content: Option<Option<&ucxl::Content>>) -> Arc<str> {
    let with = WithContent {
        change,
        content: content.flatten(),
        content_omitted: matches!(content, Some(None)),
    };
    // A change of validated parts always encodes.
    Arc::from(serde_json::to_string(&with).unwrap_or_else(|_| String::from("{}")))
}
