//! `GET /ucxi/v1/watch`: the node's change feed ([`crate::feed`]) as newline-delimited
//! JSON. First the retained entries after `since` that match the pattern, then a heartbeat
//! (caught up), then live entries as they commit, and a heartbeat whenever the stream has
//! been silent for the heartbeat interval.
//!
//! A watcher subscribes to the live broadcast before it reads the table, and skips numbers
//! it has passed, so nothing falls between backlog and live and nothing comes twice. A
//! watcher that falls behind the broadcast (or finds a number missing from it) reads the
//! table instead. When what it needs was compacted meanwhile, or the store cannot be read,
//! or the node stops, the stream ends: the consumer reconnects with its cursor, and hears
//! 410 if the feed can no longer continue it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use ucxl::Pattern;

use super::{NodeError, NodeState, blocking};
use crate::feed::{Committed, FeedEntry, FeedId, Page, Position, ReadError};
use crate::store::NodeStore;

/// The response header naming the feed.
pub const FEED_ID_HEADER: HeaderName = HeaderName::from_static("x-bzzz-feed-id");
/// Entries read from the table at once.
const PAGE: usize = 256;
/// Lines queued for a slow client before the watcher waits for it (each may carry a
/// version's content, so few).
const QUEUED_LINES: usize = 16;

/// How watch streams run.
#[derive(Debug, Clone)]
pub struct WatchSettings {
    /// Silence after which a heartbeat line is sent (`BZZZ_FEED_HEARTBEAT_MS`).
    pub heartbeat: Duration,
    /// Largest content sent with `content=true`, in bytes (the node's record limit): a
    /// larger version's line says `"content_omitted": true` instead.
    pub content_limit: u64,
    /// Ends every stream when the node stops, so the graceful shutdown need not wait for
    /// watchers.
    pub stop: CancellationToken,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    pattern: String,
    since: Option<String>,
    feed: Option<String>,
    content: Option<bool>,
    heartbeat_ms: Option<u64>,
}

/// The heartbeat intervals a watcher may ask for (`heartbeat_ms`), in milliseconds: a
/// consumer that must know the stream is current within a bound asks for less than it.
const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 10..=3_600_000;

/// Why a watch cannot continue the caller's cursor: 410 with where the feed stands.
fn gone(position: &Position, reason: &'static str, message: String) -> NodeError {
    NodeError::FeedGone {
        reason,
        message,
        position: *position,
    }
}

pub(super) async fn watch(
    State(state): State<NodeState>,
    uri: axum::http::Uri,
) -> Result<Response, NodeError> {
    let q: WatchQuery =
        ucxl_service::query(&uri).map_err(|r| NodeError::Rejected(r.message, r.details))?;
    let pattern = Pattern::parse(&q.pattern)?;
    let since = match &q.since {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            NodeError::Rejected(
                "since must be a feed sequence number: an integer of at least 0".into(),
                json!({"field": "since", "provided": ucxl::error::excerpt(text)}),
            )
        })?),
    };
    let heartbeat = match q.heartbeat_ms {
        None => state.watch.heartbeat,
        Some(ms) if HEARTBEAT_MS.contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(NodeError::Rejected(
                "heartbeat_ms must be between 10 and 3600000".into(),
                json!({"field": "heartbeat_ms", "provided": ms, "expected": "10..=3600000"}),
            ));
        }
    };
    let position = state.store.feed().position();
    if let Some(feed) = &q.feed
        && FeedId::parse(feed) != Some(position.id)
    {
        return Err(gone(
            &position,
            "feed_changed",
            format!(
                "this node's feed is {}, not the one given: its numbering is another; start again from 0",
                position.id
            ),
        ));
    }
    let since = since.unwrap_or(position.current_seq);
    if !position.continues(since) {
        return Err(beyond(&position, since));
    }
    // Subscribed before the table is read: whatever commits meanwhile is either read or
    // received (or both: then skipped by number).
    let live = state.store.feed().subscribe();
    let store = Arc::clone(&state.store);
    let first = blocking(move || store.read_feed(since, PAGE))
        .await?
        .map_err(|e| match e {
            ReadError::Gone { after } => beyond(&state.store.feed().position(), after),
            ReadError::Storage(e) => NodeError::FeedUnreadable(e),
        })?;
    let (lines, body) = mpsc::channel::<Bytes>(QUEUED_LINES);
    let watcher = Watcher {
        store: Arc::clone(&state.store),
        pattern,
        content: q.content.unwrap_or(false),
        content_limit: state.watch.content_limit,
        heartbeat,
        cursor: since,
        lines,
        last_line: Instant::now(),
    };
    tokio::spawn(watcher.run(first, live, state.watch.stop.clone()));
    let body = futures::stream::unfold(body, |mut body| async move {
        body.recv()
            .await
            .map(|line| (Ok::<_, Infallible>(line), body))
    });
    let mut response = (StatusCode::OK, Body::from_stream(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(&position.id.to_string()) {
        headers.insert(FEED_ID_HEADER, id);
    }
    Ok(response)
}

/// The 410 of a cursor outside the feed's window.
fn beyond(position: &Position, since: u64) -> NodeError {
    if since > position.current_seq {
        gone(
            position,
            "ahead",
            format!(
                "since {since} is ahead of this feed (current {}): the cursor is not of this numbering",
                position.current_seq
            ),
        )
    } else {
        gone(
            position,
            "compacted",
            format!(
                "the entries after {since} are no longer retained (oldest {}); resynchronise, then watch from current_seq",
                position.oldest_seq
            ),
        )
    }
}

/// A heartbeat line: the stream is alive and has passed every number up to `seq`.
#[derive(Debug, Serialize)]
struct Heartbeat {
    op: &'static str,
    seq: u64,
    #[serde(with = "ucxl::envelope::rfc3339")]
    at: chrono::DateTime<Utc>,
}

/// A change line: the entry, with its content when asked for.
#[derive(Debug, Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    entry: &'a FeedEntry,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a ucxl::Content>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    content_omitted: bool,
}

/// Why a stream ends.
#[derive(Debug)]
enum End {
    /// The client went away, or the node is stopping.
    Closed,
    /// What the watcher needs next is not retained any more, or cannot be read: the
    /// consumer's reconnect hears which.
    Unreadable,
}

/// One watch stream's state.
struct Watcher {
    store: Arc<NodeStore>,
    pattern: Pattern,
    content: bool,
    content_limit: u64,
    heartbeat: Duration,
    /// The last number passed (sent, or skipped as not matching).
    cursor: u64,
    lines: mpsc::Sender<Bytes>,
    last_line: Instant,
}

impl Watcher {
    async fn run(
        mut self,
        first: Page,
        mut live: broadcast::Receiver<Arc<[Committed]>>,
        stop: CancellationToken,
    ) {
        let ended = tokio::select! {
            ended = self.stream(first, &mut live) => ended,
            () = stop.cancelled() => End::Closed,
        };
        tracing::debug!(?ended, cursor = self.cursor, "a watch stream ended");
    }

    async fn stream(
        &mut self,
        first: Page,
        live: &mut broadcast::Receiver<Arc<[Committed]>>,
    ) -> End {
        if let Err(end) = self.backlog(Some(first)).await {
            return end;
        }
        // Caught up: the consumer learns where the stream stands at once.
        if let Err(end) = self.send_heartbeat().await {
            return end;
        }
        loop {
            let quiet_until = self.last_line + self.heartbeat;
            let event = tokio::select! {
                received = live.recv() => Some(received),
                () = self.lines.closed() => return End::Closed,
                () = tokio::time::sleep_until(quiet_until) => None,
            };
            let outcome = match event {
                Some(Ok(batch)) => self.live_batch(&batch).await,
                Some(Err(broadcast::error::RecvError::Lagged(_))) => self.backlog(None).await,
                Some(Err(broadcast::error::RecvError::Closed)) => Err(End::Closed),
                None => self.idle().await,
            };
            if let Err(end) = outcome {
                return end;
            }
        }
    }

    /// The stream was silent for the heartbeat interval: say where it stands. A commit
    /// reported failed may have reached the disk after all, and its entries were never
    /// broadcast: they are read first.
    async fn idle(&mut self) -> Result<(), End> {
        if self.store.feed().position().current_seq > self.cursor {
            self.backlog(None).await?;
        }
        self.send_heartbeat().await
    }

    /// Entries received live, in order; a number missing before one of them is read from
    /// the table first.
    async fn live_batch(&mut self, batch: &[Committed]) -> Result<(), End> {
        for committed in batch {
            let seq = committed.entry.seq;
            if seq <= self.cursor {
                continue;
            }
            if seq > self.cursor + 1 {
                self.backlog(None).await?;
                if seq <= self.cursor {
                    continue;
                }
            }
            let content = committed.content.as_ref();
            self.send_entry(&committed.entry, content).await?;
        }
        Ok(())
    }

    /// Sends what the table holds after the cursor, page by page, until a page is short
    /// (the end of the table when it was read); `first` is a page read already.
    async fn backlog(&mut self, mut first: Option<Page>) -> Result<(), End> {
        loop {
            let page = match first.take() {
                Some(page) => page,
                None => self.read_page().await?,
            };
            let read = page.through.saturating_sub(self.cursor);
            for entry in &page.entries {
                if entry.seq <= self.cursor {
                    continue;
                }
                let content = if self.content && self.pattern.matches(entry.change.address()) {
                    self.store
                        .content_of(entry.change.address(), entry.change.id())
                } else {
                    None
                };
                self.send_entry(entry, content.as_ref()).await?;
            }
            // Numbers whose entries do not decode are passed too.
            self.cursor = self.cursor.max(page.through);
            if read < PAGE as u64 {
                return Ok(());
            }
        }
    }

    /// The page of the table after the cursor.
    async fn read_page(&self) -> Result<Page, End> {
        let store = Arc::clone(&self.store);
        let after = self.cursor;
        match tokio::task::spawn_blocking(move || store.read_feed(after, PAGE)).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, cursor = after, "a watch stream cannot read the feed");
                Err(End::Unreadable)
            }
            Err(_) => Err(End::Unreadable),
        }
    }

    /// Sends `entry` when it matches, and passes its number either way.
    async fn send_entry(
        &mut self,
        entry: &FeedEntry,
        content: Option<&ucxl::Content>,
    ) -> Result<(), End> {
        if self.pattern.matches(entry.change.address()) {
            let (content, content_omitted) = match (&entry.change, self.content) {
                (crate::feed::FeedChange::Put { size, .. }, true) if *size > self.content_limit => {
                    (None, true)
                }
                (crate::feed::FeedChange::Put { .. }, true) => (content, content.is_none()),
                _ => (None, false),
            };
            let line = Line {
                entry,
                content,
                content_omitted,
            };
            self.send(&line).await?;
        }
        self.cursor = entry.seq;
        Ok(())
    }

    async fn send_heartbeat(&mut self) -> Result<(), End> {
        let heartbeat = Heartbeat {
            op: "heartbeat",
            seq: self.cursor,
            at: Utc::now(),
        };
        self.send(&heartbeat).await
    }

    async fn send(&mut self, line: &impl Serialize) -> Result<(), End> {
        let mut bytes = match serde_json::to_vec(line) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "a watch line does not encode");
                return Err(End::Unreadable);
            }
        };
        bytes.push(b'\n');
        self.lines
            .send(Bytes::from(bytes))
            .await
            .map_err(|_| End::Closed)?;
        self.last_line = Instant::now();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use redb_commit::testing::FillableStorage;
    use serde_json::{Value, json};
    use ucxl::{Address, EnvelopeId, NewVersion};

    use super::*;
    use crate::store::StoreSettings;

    /// The lines a watcher sent, until `changes` change lines have come.
    async fn lines(body: &mut mpsc::Receiver<Bytes>, changes: usize) -> Vec<Value> {
        let mut seen = Vec::new();
        let mut count = 0;
        while count < changes {
            let line = body.recv().await.expect("the stream goes on");
            let line: Value = serde_json::from_slice(&line).expect("JSON");
            if line["op"] != "heartbeat" {
                count += 1;
            }
            seen.push(line);
        }
        seen
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_behind_the_broadcast_reads_the_table_and_loses_nothing() {
        let store = Arc::new(
            NodeStore::open_with_backend(FillableStorage::new(), StoreSettings::new(1 << 20))
                .expect("opens"),
        );
        let live = store.feed().subscribe();
        let first = store.read_feed(0, PAGE).expect("readable");
        let (lines_tx, mut body) = mpsc::channel(QUEUED_LINES);
        let watcher = Watcher {
            store: Arc::clone(&store),
            pattern: Pattern::parse("ucxl://a:r@p:t/x/*").expect("pattern"),
            content: true,
            content_limit: 1 << 20,
            heartbeat: Duration::from_secs(3600),
            cursor: 0,
            lines: lines_tx,
            last_line: Instant::now(),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(watcher.run(first, live, stop.clone()));

        // Nobody reads the stream meanwhile: the watcher fills its queue, then the
        // broadcast passes it by (one batch per write, more than it holds).
        let writes = crate::feed::LIVE_CAPACITY + 2 * QUEUED_LINES;
        for n in 0..writes {
            let path = if n % 3 == 0 { "other" } else { "x" };
            let at = Address::parse(&format!("ucxl://a:r@p:t/{path}/{n}")).expect("address");
            let id = EnvelopeId::parse(&format!("v{n}")).expect("id");
            store
                .put(&at, NewVersion::json(id, json!(n)), Utc::now())
                .await
                .expect("put");
        }
        let matching = (0..writes).filter(|n| n % 3 != 0).count();
        let seen = lines(&mut body, matching).await;
        let changes: Vec<&Value> = seen.iter().filter(|l| l["op"] == "put").collect();
        let seqs: Vec<u64> = changes.iter().filter_map(|l| l["seq"].as_u64()).collect();
        let expected: Vec<u64> = (1..=writes as u64).filter(|s| (s - 1) % 3 != 0).collect();
        assert_eq!(seqs, expected, "every match once, in order");
        assert!(
            changes.iter().all(|l| l["content"].is_number()),
            "content read from the record when not carried live"
        );
        assert_eq!(changes.len(), matching);
        stop.cancel();
        task.await.expect("the watcher ends");
        assert!(
            body.recv().await.is_none(),
            "the stream ends when the node stops"
        );
    }
}
