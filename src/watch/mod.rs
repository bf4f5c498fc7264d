//! Watching for changes (`GET /v1/watch`): the nodes' change feeds merged into one stream
//! of changes, each delivered once, resumable from any event's id.
//!
//! - `cursor`: the resume cursor (how far each feed was read).
//! - `history`: the bounded merged history that makes resuming exact.
//! - `event`: a change as watchers receive it.
//! - `hub`: the merge, the watchers and their limits.
//! - `follow`: the tasks that read the nodes' feeds into the hub.
//! - `stream`: one watcher's SSE stream.
//!
//! Writes the gateway serves itself (mock mode, fallback) enter the hub as its own feed, so
//! watchers see them at once, and once only when the journal replays them to the cluster.

pub mod cursor;
pub mod event;
pub mod follow;
pub mod history;
pub mod hub;
pub mod stream;

pub use cursor::{Cursor, Key};
pub use hub::{End, Filter, Hub, Refusal, WatchSettings, WatchStatus};

#[cfg(test)]
mod tests;
