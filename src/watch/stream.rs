//! One watcher's event stream: the initial listing (with `initial=true`) and `synced`, a
//! resume's backlog, then live changes; an `error` event and the end when the hub drops
//! the watcher. Each change event's `id` is the cursor that resumes right after it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::Event as SseEvent;
use chrono::Utc;
use serde_json::{Value, json};
use ucxl::{Change, Code, Temporal};

use super::cursor::{Cursor, Key};
use super::event::{Event, data_of};
use super::hub::{End, Open, Subscription};
use crate::backend::{Backend, Call};

/// Fetches a put's content when the watcher asked for it.
#[derive(Debug)]
pub struct Content {
    /// The backend that serves reads now.
    pub backend: Arc<dyn Backend>,
    /// The time each fetch may take.
    pub timeout: std::time::Duration,
    /// Largest content sent (the answer size limit); larger is `content_omitted`.
    pub limit: u64,
    /// The request id the fetches are made under.
    pub request_id: String,
}

/// Why a version's content could not be read (yet).
#[derive(Debug)]
struct NotYet;

/// How long a content read keeps trying: the event may come from the node that took the
/// write before the node that answers the read has it (replication takes milliseconds).
fn content_retries() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(10))
        .with_max_delay(std::time::Duration::from_millis(400))
        .with_max_times(7)
        .with_jitter()
}

impl Content {
    /// The content of the version `change` names, if it can be read (retried a little
    /// while the cluster has not caught up with the change).
    async fn of(&self, change: &Change) -> Option<ucxl::Content> {
        use backon::Retryable as _;
        let Change::Put { size, .. } = change else {
            return None;
        };
        if *size > self.limit {
            return None;
        }
        (|| self.once(change)).retry(content_retries()).await.ok()
    }

    async fn once(&self, change: &Change) -> Result<ucxl::Content, NotYet> {
        let Change::Put {
            address,
            id,
            version,
            ..
        } = change
        else {
            return Err(NotYet);
        };
        let call = Call::new(
            self.request_id.clone(),
            tokio::time::Instant::now() + self.timeout,
        );
        let at = address.clone().with_temporal(Temporal::Version(*version));
        if let Ok(served) = self.backend.get(&call, &at).await
            && served.value.id == *id
        {
            return Ok(served.value.content);
        }
        // Its number moved (a version merged later with an earlier time): find it by id.
        let history = self
            .backend
            .history(&call, address)
            .await
            .map_err(|_| NotYet)?;
        let number = history
            .value
            .versions
            .iter()
            .find(|v| v.id == *id)
            .ok_or(NotYet)?
            .version;
        let served = self
            .backend
            .get(
                &call,
                &address.clone().with_temporal(Temporal::Version(number)),
            )
            .await
            .map_err(|_| NotYet)?;
        if served.value.id == *id {
            Ok(served.value.content)
        } else {
            Err(NotYet)
        }
    }
}

/// A listed address's version and whether live changes up to it must be skipped.
pub type Skips = HashMap<String, Key>;

/// The state of one stream.
#[derive(Debug)]
pub struct Stream {
    /// Holds the stream's slot while it lives.
    pub open: Open,
    /// The hub's side.
    pub sub: Subscription,
    /// Initial `put` events still to send, then `synced` when `synced` is set.
    pub initial: VecDeque<Change>,
    /// Whether `synced` is still to be sent.
    pub synced: Option<usize>,
    /// Addresses listed at a version committed after the stream's start: live changes at
    /// them are skipped up to and including that version.
    pub skips: Skips,
    /// Content fetching, with `content=true`.
    pub content: Option<Content>,
    /// The backlog, still to send.
    pub backlog: VecDeque<Arc<Event>>,
    /// What the client has been delivered, while event cursors do not say all of it (a
    /// resumed cursor ahead of this gateway in some feed); `None` once they do.
    pub base: Option<Cursor>,
    /// The cursor the stream resumed from: a live change it already covers (one a feed
    /// that was behind here reports late, or one only a node now gone had reported) is not
    /// delivered again.
    pub resumed: Option<Cursor>,
    /// Set once the stream has said its last.
    pub done: bool,
    /// The request's path, for error events.
    pub path: String,
    /// The request's id, for error events.
    pub request_id: String,
}

impl Stream {
    /// The next SSE event; `None` at the end.
    pub async fn next(&mut self) -> Option<SseEvent> {
        if self.done {
            return None;
        }
        if let Some(change) = self.initial.pop_front() {
            metrics::counter!("rustle_watch_events_total", "event" => "put").increment(1);
            let data = match &self.content {
                Some(content) => {
                    let value = content.of(&change).await;
                    data_of(&change, Some(value.as_ref()))
                }
                None => data_of(&change, None),
            };
            // No id: a client that reconnects during the listing starts it again.
            return Some(SseEvent::default().event("put").data(&*data));
        }
        if let Some(listed) = self.synced.take() {
            metrics::counter!("rustle_watch_events_total", "event" => "synced").increment(1);
            let cursor = self.sub.base.render();
            return Some(
                SseEvent::default()
                    .event("synced")
                    .id(cursor.clone())
                    .data(json!({"cursor": cursor, "initial": listed}).to_string()),
            );
        }
        loop {
            let event = match self.backlog.pop_front() {
                Some(event) => event,
                None => match self.sub.live.recv().await {
                    Some(event) => event,
                    None => return self.ended(),
                },
            };
            if self.skipped(&event) {
                continue;
            }
            return Some(self.render(&event).await);
        }
    }

    /// Whether `event` was delivered before the stream resumed, or is at or before the
    /// version the initial listing gave.
    fn skipped(&mut self, event: &Event) -> bool {
        if let Some(resumed) = &mut self.resumed {
            let (feed, seq) = &event.origin;
            if resumed.feeds.get(&**feed).is_some_and(|c| seq <= c) {
                return true;
            }
            if let Some(at) = resumed.pending.iter().position(|k| *k == event.key) {
                resumed.pending.swap_remove(at);
                return true;
            }
        }
        if self.skips.is_empty() {
            return false;
        }
        let address = event.change.address().canonical();
        match self.skips.get(address) {
            Some(listed) if *listed == event.key => {
                self.skips.remove(address);
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    async fn render(&mut self, event: &Event) -> SseEvent {
        let id = match &self.base {
            Some(base) if base.within(&event.cursor) => {
                self.base = None;
                event.cursor_text()
            }
            Some(base) => Arc::from(event.cursor.merged(base).render()),
            None => event.cursor_text(),
        };
        let data = match (&self.content, &event.change) {
            (Some(content), Change::Put { .. }) => {
                let value = content.of(&event.change).await;
                data_of(&event.change, Some(value.as_ref()))
            }
            _ => event.data(),
        };
        let name = event.name();
        metrics::counter!("rustle_watch_events_total", "event" => name).increment(1);
        SseEvent::default().event(name).id(&*id).data(&*data)
    }

    /// The hub let go of the stream: say why (an `error` event), or just end.
    fn ended(&mut self) -> Option<SseEvent> {
        self.done = true;
        let (code, message, details) = match self.sub.end.get() {
            Some(End::Slow) => (
                Code::TooManyRequests,
                "this watcher did not read its events fast enough and was dropped; reconnect with the id of the last event received".to_owned(),
                json!({"reason": "slow_consumer"}),
            ),
            Some(End::Gap(why)) => (
                Code::Gone,
                format!("{why}: re-list, then watch without a cursor"),
                json!({"reason": "gap"}),
            ),
            Some(End::Shutdown) | None => return None,
        };
        metrics::counter!("rustle_watch_events_total", "event" => "error").increment(1);
        Some(error_event(
            code,
            &message,
            details,
            &self.path,
            &self.request_id,
        ))
    }
}

/// An `event: error` whose data is a UCXL error body.
pub fn error_event(
    code: Code,
    message: &str,
    details: Value,
    path: &str,
    request_id: &str,
) -> SseEvent {
    let body = ucxl::Failure {
        error: ucxl::FailureBody {
            code,
            message: message.to_owned(),
            details,
            source: crate::startup::SOURCE.0.to_owned(),
            path: path.to_owned(),
            request_id: request_id.to_owned(),
            timestamp: Utc::now(),
        },
    };
    SseEvent::default()
        .event("error")
        .data(serde_json::to_string(&body).unwrap_or_default())
}

/// The stream as axum's `Sse` takes it.
pub fn into_stream(
    stream: Stream,
) -> impl futures_util::Stream<Item = Result<SseEvent, Infallible>> + Send {
    futures_util::stream::unfold(
        stream,
        |mut s| async move { s.next().await.map(|e| (Ok(e), s)) },
    )
}
