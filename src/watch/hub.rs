//! The hub: one merge of every feed (the nodes' and the gateway's own), shared by all
//! watchers. Each feed is read once, whatever the number of watchers; each change is
//! delivered once (the first feed to report it wins, later reports only add where that
//! feed holds it); each watcher gets what matches its pattern and grants through a bounded
//! queue, and is dropped when it lets the queue fill.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use ucxl::{Address, Change, Pattern};

use super::cursor::{Cursor, Key, MAX_PENDING};
use super::event::Event;
use super::history::{FeedIx, History, Known};
use crate::auth::{Op, Principal};

/// How watching is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchSettings {
    /// Concurrent streams (`RUSTLE_MAX_WATCHES`).
    pub max_watches: usize,
    /// Events queued per watcher before it is dropped as too slow (`RUSTLE_WATCH_BUFFER`).
    pub buffer: usize,
    /// Silence after which a stream sends a keep-alive comment (`RUSTLE_WATCH_HEARTBEAT_MS`).
    pub heartbeat: Duration,
    /// Changes remembered for resuming and for delivering each change once
    /// (`RUSTLE_WATCH_HISTORY`).
    pub history: usize,
}

/// What a watcher gets: events matching its pattern that its principal may watch.
#[derive(Debug, Clone)]
pub struct Filter {
    /// The pattern asked for.
    pub pattern: Pattern,
    /// Who is watching.
    pub principal: Arc<Principal>,
    /// True when the principal may watch every address (no per-event check).
    pub everywhere: bool,
}

impl Filter {
    /// A filter for `pattern` as `principal` sees it.
    #[must_use]
    pub fn new(pattern: Pattern, principal: Arc<Principal>) -> Self {
        let everywhere = principal.may_everywhere(Op::Watch);
        Self {
            pattern,
            principal,
            everywhere,
        }
    }

    /// Whether the watcher gets changes at `address`.
    #[must_use]
    pub fn admits(&self, address: &Address) -> bool {
        self.pattern.matches(address)
            && (self.everywhere || self.principal.allows(Op::Watch, address))
    }
}

/// Why a stream ended from the hub's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Its queue filled: the client did not read fast enough.
    Slow,
    /// The feeds lost changes nobody else reported: the client must re-list.
    Gap(String),
    /// The gateway is stopping.
    Shutdown,
}

/// A registered watcher's side of the hub.
#[derive(Debug)]
pub struct Subscription {
    /// The watcher's number.
    pub id: u64,
    /// Changes delivered before the live ones (a resume's backlog), oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// Live changes.
    pub live: mpsc::Receiver<Arc<Event>>,
    /// What the watcher has been delivered so far (its cursor when it resumed, or the
    /// hub's when it started).
    pub base: Cursor,
    /// Why the hub ended the stream, once it did.
    pub end: Arc<OnceLock<End>>,
}

/// Why a watch cannot start (or resume) here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `RUSTLE_MAX_WATCHES` streams are open.
    Full(usize),
    /// The cursor cannot be continued: what was not delivered is no longer known.
    Gone {
        /// `history` (older than the remembered changes) or `unknown_feeds` (none of its
        /// feeds is one of this cluster's).
        reason: &'static str,
        /// For humans.
        message: String,
    },
    /// The cursor is ahead of what this gateway has read: wait for it.
    Ahead,
}

struct Tx {
    filter: Filter,
    queue: mpsc::Sender<Arc<Event>>,
    end: Arc<OnceLock<End>>,
}

/// A feed's state as `/v1/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedState {
    /// Connecting (or waiting to reconnect).
    Connecting,
    /// Reading the feed's past (not delivered: changes from before this gateway read it).
    CatchingUp,
    /// Streaming live changes.
    Streaming,
    /// The endpoint cannot be reached; retrying.
    Down,
    /// No endpoint serves this feed now (a node that was replaced or wiped).
    Detached,
    /// The gateway's own feed (writes it served itself: mock mode, fallback).
    Local,
}

struct Slot {
    id: Arc<str>,
    local: bool,
    /// The last number read.
    through: u64,
    /// The history holds every change of this feed numbered after this.
    coverage: u64,
    /// Changes numbered up to this were committed before this gateway read the feed.
    past_until: u64,
    endpoint: Option<Arc<str>>,
    state: FeedState,
    last_error: Option<String>,
    lag_ms: Option<f64>,
    /// When a line (change or heartbeat) last came.
    heard: Option<tokio::time::Instant>,
}

/// One feed in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FeedStatus {
    /// The feed id (32 hex characters); `null` for an endpoint not reached yet.
    pub feed: Option<String>,
    /// The endpoint that serves it (`local` for the gateway's own writes), if any.
    pub endpoint: Option<String>,
    /// Its state.
    pub state: FeedState,
    /// The last number read.
    pub seq: u64,
    /// Resuming needs a cursor at or after this number for this feed.
    pub resumable_from: u64,
    /// Time from the node's commit to delivery of the last change first reported by this
    /// feed, in milliseconds.
    pub lag_ms: Option<f64>,
    /// The last error reading it.
    pub last_error: Option<String>,
}

/// `watch` in `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WatchStatus {
    /// Open streams.
    pub active: usize,
    /// `RUSTLE_MAX_WATCHES`.
    pub max: usize,
    /// Changes remembered.
    pub history: usize,
    /// `RUSTLE_WATCH_HISTORY`.
    pub history_capacity: usize,
    /// Every feed the gateway reads or has read.
    pub feeds: Vec<FeedStatus>,
}

struct Core {
    feeds: Vec<Slot>,
    by_id: HashMap<Arc<str>, FeedIx>,
    history: History,
    /// Keys of delivered changes only one node feed has reported yet, newest last.
    pending: VecDeque<Key>,
    watchers: HashMap<u64, Tx>,
    next_watcher: u64,
    /// The gateway's own feed and its last number.
    local: Option<(FeedIx, u64)>,
    /// Endpoints whose feed could not be reached yet, with why.
    unreached: HashMap<String, String>,
    /// The cache of cluster data, which changes reported by node feeds invalidate.
    cache: Option<Arc<crate::store::local::LocalStore>>,
}

/// The hub.
pub struct Hub {
    core: Mutex<Core>,
    settings: Mutex<WatchSettings>,
    /// Streams open (`rustle_watchers_active`).
    active: AtomicUsize,
    /// Woken whenever a feed moves on or changes state.
    progress: Notify,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// Decrements the open-stream count when a stream ends.
#[derive(Debug)]
pub struct Open(Arc<Hub>, u64);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("rustle_watchers_active").decrement(1.0);
        self.0.lock().watchers.remove(&self.1);
    }
}

impl Core {
    fn cursor(&self) -> Cursor {
        Cursor {
            feeds: self
                .feeds
                .iter()
                .map(|s| (Arc::clone(&s.id), s.through))
                .collect(),
            pending: self.pending.iter().copied().collect(),
        }
    }

    fn node_feeds_streaming(&self) -> usize {
        self.feeds
            .iter()
            .filter(|s| !s.local && s.state == FeedState::Streaming)
            .count()
    }

    /// Sends `event` to every watcher it concerns; drops the ones whose queue is full.
    fn fan_out(&mut self, event: &Arc<Event>) {
        let address = event.change.address();
        let mut gone = Vec::new();
        for (id, tx) in &self.watchers {
            if !tx.filter.admits(address) {
                continue;
            }
            match tx.queue.try_send(Arc::clone(event)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let _ = tx.end.set(End::Slow);
                    metrics::counter!("rustle_watchers_dropped_total", "reason" => "slow")
                        .increment(1);
                    gone.push(*id);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(*id),
            }
        }
        for id in gone {
            self.watchers.remove(&id);
        }
    }

    /// Records the time from `event`'s commit to its delivery, for feed `ix`.
    fn record_lag(&mut self, ix: FeedIx, event: &Event) {
        let Some(at) = event.committed_at else {
            return;
        };
        let lag = (Utc::now() - at).to_std().unwrap_or_default();
        metrics::histogram!("rustle_watch_feed_lag_seconds", "endpoint" => event.source.to_string())
            .record(lag.as_secs_f64());
        if let Some(slot) = self.feeds.get_mut(usize::from(ix)) {
            slot.lag_ms = Some(lag.as_secs_f64() * 1000.0);
        }
    }

    /// Adds what `key`'s change is known to be before the history lets it go.
    fn trimmed(&mut self, positions: Vec<(FeedIx, u64)>) {
        for (ix, seq) in positions {
            if let Some(slot) = self.feeds.get_mut(usize::from(ix)) {
                slot.coverage = slot.coverage.max(seq);
            }
        }
    }

    fn ingest(
        &mut self,
        ix: FeedIx,
        seq: u64,
        change: Change,
        committed_at: Option<DateTime<Utc>>,
    ) {
        let Some(slot) = self.feeds.get_mut(usize::from(ix)) else {
            return;
        };
        slot.heard = Some(tokio::time::Instant::now());
        if seq <= slot.through {
            return;
        }
        slot.through = seq;
        let past = seq <= slot.past_until;
        let local = slot.local;
        if !local
            && !past
            && let Some(cache) = &self.cache
        {
            // The cache's copy of the address is no longer the newest (unless it is this).
            cache.invalidate(change.address(), change.id());
        }
        let source: Arc<str> = slot.endpoint.clone().unwrap_or_else(|| Arc::from("local"));
        let origin = (Arc::clone(&slot.id), seq);
        let key = Key::of(change.address(), change.id());
        let known_sightings = self.history.get_mut(key).map(|known| {
            if !known.positions.iter().any(|(f, _)| *f == ix) {
                known.positions.push((ix, seq));
            }
            known.positions.len()
        });
        if let Some(sightings) = known_sightings {
            if sightings >= 2 {
                self.pending.retain(|k| *k != key);
            }
            let undelivered = self.history.get(key).is_some_and(|k| !k.delivered);
            if undelivered && !past {
                // Learnt while catching up on another feed's past, and now reported live:
                // new to the watchers after all.
                let event = Arc::new(Event::new(
                    key,
                    change,
                    self.cursor(),
                    committed_at,
                    source,
                    origin,
                ));
                if let Some(known) = self.history.get_mut(key) {
                    known.delivered = true;
                    known.event = Arc::clone(&event);
                }
                self.fan_out(&event);
                self.record_lag(ix, &event);
            }
            return;
        }
        if !past && !local && self.node_feeds_streaming() >= 2 {
            self.pending.push_back(key);
            while self.pending.len() > MAX_PENDING {
                self.pending.pop_front();
            }
        }
        let event = Arc::new(Event::new(
            key,
            change,
            self.cursor(),
            committed_at,
            source,
            origin,
        ));
        if let Some(positions) = self.history.push(Known {
            event: Arc::clone(&event),
            positions: vec![(ix, seq)],
            delivered: !past,
        }) {
            self.trimmed(positions);
        }
        if !past {
            self.fan_out(&event);
            self.record_lag(ix, &event);
        }
    }

    /// Which of the history's changes `cursor` says were not delivered, when it can say.
    fn after(&self, cursor: &Cursor) -> Result<Vec<Arc<Event>>, Refusal> {
        let mut upto: Vec<Option<u64>> = vec![None; self.feeds.len()];
        let mut known_any = false;
        for (id, seq) in &cursor.feeds {
            if let Some(ix) = self.by_id.get(id) {
                upto[usize::from(*ix)] = Some(*seq);
                known_any = true;
            }
        }
        // The feeds the cursor itself numbers (the others get their coverage below).
        let named: Vec<bool> = upto.iter().map(Option::is_some).collect();
        let node_feeds = self.feeds.iter().any(|s| !s.local);
        if !cursor.feeds.is_empty() && !known_any && (node_feeds || self.local.is_some()) {
            return Err(Refusal::Gone {
                reason: "unknown_feeds",
                message: "none of the cursor's feeds is one this gateway reads: it is from another cluster, or from a gateway in mock mode that restarted; re-list, then watch without a cursor".into(),
            });
        }
        for (slot, seq) in self.feeds.iter().zip(upto.iter_mut()) {
            match *seq {
                Some(s) if s < slot.coverage => {
                    return Err(Refusal::Gone {
                        reason: "history",
                        message: format!(
                            "the changes after this cursor are no longer all remembered (feed {} from {} on, RUSTLE_WATCH_HISTORY); re-list, then watch without a cursor",
                            slot.id, slot.coverage
                        ),
                    });
                }
                Some(s) if s > slot.through && slot.state == FeedState::Streaming => {
                    return Err(Refusal::Ahead);
                }
                Some(_) => {}
                None => *seq = Some(slot.coverage),
            }
        }
        let delivered = |known: &Known| {
            cursor.pending.contains(&known.event.key)
                || known.positions.iter().any(|(ix, seq)| {
                    upto.get(usize::from(*ix))
                        .copied()
                        .flatten()
                        .is_some_and(|c| *seq <= c)
                })
        };
        // A change read from a feed's past was not delivered by this gateway, yet it is
        // what a cursor from before a restart, or from another gateway, has not seen when a
        // feed the cursor numbers holds it after that number: it is part of the backlog.
        let past_unseen = |known: &Known| {
            known
                .positions
                .iter()
                .any(|(ix, _)| named.get(usize::from(*ix)).copied().unwrap_or(false))
        };
        Ok(self
            .history
            .iter()
            .filter(|k| !delivered(k) && (k.delivered || past_unseen(k)))
            .map(|k| Arc::clone(&k.event))
            .collect())
    }
}

impl Hub {
    /// An empty hub; changes node feeds report invalidate `cache`'s copies.
    #[must_use]
    pub fn new(
        settings: WatchSettings,
        cache: Option<Arc<crate::store::local::LocalStore>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            core: Mutex::new(Core {
                feeds: Vec::new(),
                by_id: HashMap::new(),
                history: History::new(settings.history),
                pending: VecDeque::new(),
                watchers: HashMap::new(),
                next_watcher: 0,
                local: None,
                unreached: HashMap::new(),
                cache,
            }),
            settings: Mutex::new(settings),
            active: AtomicUsize::new(0),
            progress: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The settings in force.
    #[must_use]
    pub fn settings(&self) -> WatchSettings {
        *self.settings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies reloaded settings (the history bound stays as it was started).
    pub fn set_settings(&self, settings: WatchSettings) {
        let mut s = self.settings.lock().unwrap_or_else(PoisonError::into_inner);
        *s = WatchSettings {
            history: s.history,
            ..settings
        };
    }

    /// Resolves when some feed moves on or changes state.
    pub async fn progressed(&self) {
        self.progress.notified().await;
    }

    /// Takes a stream slot, or says the limit is reached.
    ///
    /// # Errors
    /// [`Refusal::Full`] beyond `RUSTLE_MAX_WATCHES`.
    pub fn open(self: &Arc<Self>) -> Result<Open, Refusal> {
        let max = self.settings().max_watches;
        let before = self.active.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full(max));
        }
        metrics::gauge!("rustle_watchers_active").increment(1.0);
        let mut core = self.lock();
        core.next_watcher += 1;
        Ok(Open(Arc::clone(self), core.next_watcher))
    }

    /// Registers the watcher of `open` from `cursor` (or from now), with its backlog.
    ///
    /// # Errors
    /// A cursor that cannot be continued here (gone), or not yet (ahead).
    pub fn subscribe(
        &self,
        open: &Open,
        filter: Filter,
        cursor: Option<&Cursor>,
    ) -> Result<Subscription, Refusal> {
        let buffer = self.settings().buffer.max(1);
        let mut core = self.lock();
        let (backlog, base) = match cursor {
            None => (Vec::new(), core.cursor()),
            Some(cursor) => {
                let backlog: Vec<Arc<Event>> = core
                    .after(cursor)?
                    .into_iter()
                    .filter(|e| filter.admits(e.change.address()))
                    .collect();
                // Keys the history can place need not be carried further.
                let mut base = cursor.clone();
                base.pending.retain(|k| core.history.get(*k).is_none());
                (backlog, base)
            }
        };
        let (queue, live) = mpsc::channel(buffer);
        let end = Arc::new(OnceLock::new());
        core.watchers.insert(
            open.1,
            Tx {
                filter,
                queue,
                end: Arc::clone(&end),
            },
        );
        Ok(Subscription {
            id: open.1,
            backlog,
            live,
            base,
            end,
        })
    }

    /// Whether `key`'s change is among what `cursor` says was delivered: `Some(true)` or
    /// `Some(false)` when the history holds it, `None` when it does not.
    #[must_use]
    pub fn delivered_by(&self, key: Key, cursor: &Cursor) -> Option<bool> {
        let core = self.lock();
        let known = core.history.get(key)?;
        Some(known.positions.iter().any(|(ix, seq)| {
            core.feeds
                .get(usize::from(*ix))
                .and_then(|s| cursor.feeds.get(&*s.id))
                .is_some_and(|c| seq <= c)
        }))
    }

    /// Ends every stream with `why`.
    pub fn end_all(&self, why: &End) {
        let mut core = self.lock();
        for (_, tx) in core.watchers.drain() {
            let _ = tx.end.set(why.clone());
        }
    }

    /// Open streams.
    #[must_use]
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// A change the gateway served itself (mock mode, or a write accepted in fallback):
    /// delivered from the gateway's own feed.
    pub fn local_change(&self, change: Change) {
        let mut core = self.lock();
        let (ix, seq) = if let Some((ix, seq)) = core.local {
            (ix, seq + 1)
        } else {
            let id: Arc<str> = Arc::from(random_feed_id());
            (core.add_feed(id, true, 0, 0, None, FeedState::Local), 1)
        };
        core.local = Some((ix, seq));
        core.ingest(ix, seq, change, Some(Utc::now()));
        drop(core);
        self.progress.notify_waiters();
    }

    /// The feed `endpoint` served last, with how far it was read.
    #[must_use]
    pub fn feed_of(&self, endpoint: &str) -> Option<(FeedIx, Arc<str>, u64)> {
        let core = self.lock();
        core.feeds.iter().enumerate().find_map(|(ix, s)| {
            (s.endpoint.as_deref() == Some(endpoint) && s.state != FeedState::Detached).then(|| {
                (
                    FeedIx::try_from(ix).unwrap_or(FeedIx::MAX),
                    Arc::clone(&s.id),
                    s.through,
                )
            })
        })
    }

    /// `endpoint` serves feed `id`, whose entries up to `past_until` were committed before
    /// this gateway reads it; reading starts after `from`. A feed already known (the same
    /// node, reconnected) keeps its place.
    pub fn attach(
        &self,
        endpoint: &str,
        id: &str,
        from: u64,
        past_until: u64,
    ) -> (FeedIx, Arc<str>, u64) {
        let mut core = self.lock();
        core.unreached.remove(endpoint);
        let endpoint: Arc<str> = Arc::from(endpoint);
        for slot in &mut core.feeds {
            if slot.endpoint.as_deref() == Some(&*endpoint) && &*slot.id != id {
                slot.endpoint = None;
                slot.state = FeedState::Detached;
            }
        }
        let ix = if let Some(ix) = core.by_id.get(id).copied() {
            if let Some(slot) = core.feeds.get_mut(usize::from(ix)) {
                slot.endpoint = Some(endpoint);
                slot.state = FeedState::Connecting;
            }
            ix
        } else {
            core.add_feed(
                Arc::from(id),
                false,
                from,
                past_until,
                Some(endpoint),
                FeedState::Connecting,
            )
        };
        let (id, through) = core
            .feeds
            .get(usize::from(ix))
            .map_or((Arc::from(id), from), |s| (Arc::clone(&s.id), s.through));
        drop(core);
        self.progress.notify_waiters();
        (ix, id, through)
    }

    /// `endpoint`'s feed cannot be reached (before it was ever attached).
    pub fn unreachable(&self, endpoint: &str, error: String) {
        self.lock().unreached.insert(endpoint.to_owned(), error);
        self.progress.notify_waiters();
    }

    /// A numbered change read from feed `ix`.
    pub fn ingest(
        &self,
        ix: FeedIx,
        seq: u64,
        change: Change,
        committed_at: Option<DateTime<Utc>>,
    ) {
        self.lock().ingest(ix, seq, change, committed_at);
        self.progress.notify_waiters();
    }

    /// Feed `ix` has passed every number up to `seq`.
    pub fn passed(&self, ix: FeedIx, seq: u64) {
        let mut core = self.lock();
        if let Some(slot) = core.feeds.get_mut(usize::from(ix)) {
            slot.through = slot.through.max(seq);
            slot.heard = Some(tokio::time::Instant::now());
            if slot.through >= slot.past_until {
                slot.state = FeedState::Streaming;
            }
        }
        drop(core);
        self.progress.notify_waiters();
    }

    /// Feed `ix`'s state (and its last error).
    pub fn set_state(&self, ix: FeedIx, state: FeedState, error: Option<String>) {
        let mut core = self.lock();
        if let Some(slot) = core.feeds.get_mut(usize::from(ix)) {
            slot.state = state;
            if error.is_some() {
                slot.last_error = error;
            }
        }
        drop(core);
        self.progress.notify_waiters();
    }

    /// Feed `ix` cannot go on from where it was read (its node compacted what this
    /// gateway had not read yet): when no other node feed is streaming to cover it, every
    /// watcher is told to re-list. Reading goes on from `from`, what lies before being the
    /// feed's past.
    pub fn gap(&self, ix: FeedIx, from: u64, past_until: u64) {
        let mut core = self.lock();
        let covered = core
            .feeds
            .iter()
            .enumerate()
            .any(|(i, s)| i != usize::from(ix) && !s.local && s.state == FeedState::Streaming);
        if let Some(slot) = core.feeds.get_mut(usize::from(ix)) {
            slot.through = from;
            slot.coverage = slot.coverage.max(from);
            slot.past_until = past_until;
            slot.state = FeedState::CatchingUp;
        }
        metrics::counter!("rustle_watch_feed_gaps_total").increment(1);
        if !covered {
            let why = End::Gap(
                "a node's feed compacted changes this gateway had not read, and no other node's feed covers them"
                    .into(),
            );
            for (_, tx) in core.watchers.drain() {
                let _ = tx.end.set(why.clone());
            }
        }
    }

    /// Whether every endpoint in `endpoints` has a feed that is streaming, or is down.
    #[must_use]
    pub fn settled(&self, endpoints: &[String]) -> bool {
        let core = self.lock();
        endpoints.iter().all(|e| {
            core.unreached.contains_key(e)
                || core.feeds.iter().any(|s| {
                    s.endpoint.as_deref() == Some(e.as_str())
                        && matches!(s.state, FeedState::Streaming | FeedState::Down)
                })
        })
    }

    /// How far behind the nodes the gateway may be: the longest time since a line came from
    /// the feed of each of `endpoints`, when every one of them is streaming; `None` when one
    /// is not (then nothing says the cache is current).
    #[must_use]
    pub fn behind<'a>(&self, endpoints: impl IntoIterator<Item = &'a str>) -> Option<Duration> {
        let core = self.lock();
        let now = tokio::time::Instant::now();
        let mut worst = None;
        for endpoint in endpoints {
            let heard = core.feeds.iter().find_map(|s| {
                (s.endpoint.as_deref() == Some(endpoint) && s.state == FeedState::Streaming)
                    .then_some(s.heard)
                    .flatten()
            })?;
            worst = Some(
                worst
                    .unwrap_or(Duration::ZERO)
                    .max(now.saturating_duration_since(heard)),
            );
        }
        worst
    }

    /// What `/v1/status` shows.
    #[must_use]
    pub fn status(&self) -> WatchStatus {
        let core = self.lock();
        WatchStatus {
            active: self.active(),
            max: self.settings().max_watches,
            history: core.history.len(),
            history_capacity: core.history.capacity(),
            feeds: core
                .feeds
                .iter()
                .map(|s| FeedStatus {
                    feed: Some(s.id.to_string()),
                    endpoint: if s.local {
                        Some("local".into())
                    } else {
                        s.endpoint.as_deref().map(str::to_owned)
                    },
                    state: s.state,
                    seq: s.through,
                    resumable_from: s.coverage,
                    lag_ms: s.lag_ms,
                    last_error: s.last_error.clone(),
                })
                .chain(core.unreached.iter().map(|(endpoint, error)| FeedStatus {
                    feed: None,
                    endpoint: Some(endpoint.clone()),
                    state: FeedState::Down,
                    seq: 0,
                    resumable_from: 0,
                    lag_ms: None,
                    last_error: Some(error.clone()),
                }))
                .collect(),
        }
    }
}

impl Core {
    fn add_feed(
        &mut self,
        id: Arc<str>,
        local: bool,
        from: u64,
        past_until: u64,
        endpoint: Option<Arc<str>>,
        state: FeedState,
    ) -> FeedIx {
        let ix = FeedIx::try_from(self.feeds.len()).unwrap_or(FeedIx::MAX);
        self.by_id.insert(Arc::clone(&id), ix);
        self.feeds.push(Slot {
            id,
            local,
            through: from,
            coverage: from,
            past_until,
            endpoint,
            state,
            last_error: None,
            lag_ms: None,
            heard: None,
        });
        ix
    }
}

/// A new random feed id (32 hex characters) for the gateway's own feed.
fn random_feed_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the time keeps ids of restarts apart.
        bytes[..16].copy_from_slice(
            &Utc::now()
                .timestamp_nanos_opt()
                .unwrap_or_default()
                .to_be_bytes()
                .repeat(2),
        );
    }
    hex::encode(bytes)
}
