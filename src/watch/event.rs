//! One change as watchers receive it: the change, its JSON (made once, shared by every
//! watcher) and the cursor of the hub just after it.

use std::sync::{Arc, OnceLock};

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
    /// The JSON of the change (the `data:` of a watcher without content), made when a
    /// watcher first needs it: the history holds thousands of changes no watcher may ask
    /// for (those read while catching up, those made while nobody watched).
    data: OnceLock<Arc<str>>,
    /// The hub's cursor just after this change: every change before it, and it.
    pub cursor: Arc<Cursor>,
    /// Its text (the `id:`), made when first sent, as `data`.
    cursor_text: OnceLock<Arc<str>>,
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
        Self {
            key,
            change,
            data: OnceLock::new(),
            cursor: Arc::new(cursor),
            cursor_text: OnceLock::new(),
            committed_at,
            source,
            origin,
        }
    }

    /// The JSON of the change, shared by every watcher that sends it without content.
    pub fn data(&self) -> Arc<str> {
        Arc::clone(self.data.get_or_init(|| data_of(&self.change, None)))
    }

    /// The text of the hub's cursor just after this change (the `id:`).
    pub fn cursor_text(&self) -> Arc<str> {
        Arc::clone(
            self.cursor_text
                .get_or_init(|| Arc::from(self.cursor.render())),
        )
    }

    /// Whether its JSON or cursor text was made.
    #[cfg(test)]
    pub(super) fn rendered(&self) -> bool {
        self.data.get().is_some() || self.cursor_text.get().is_some()
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
