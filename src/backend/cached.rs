//! Reads that need no hop: a `GET` that asks `X-Rustle-Consistency: cached` is answered
//! from the gateway's cache of cluster data while that cache is provably current, else from
//! a node as usual.
//!
//! The cache is current because every change any node's feed reports drops the copy of its
//! address (`store::coherence`), and a copy read from a node is kept only if no change
//! raced the read. "Provably" means: the mode reads the cluster, no fallback is in force,
//! and every endpoint's feed is streaming and was heard from (a change or a heartbeat)
//! within `RUSTLE_CACHE_MAX_LAG_MS`. A cached answer is then at most that much older than
//! what the nodes' feeds had committed, and never older than a node read of a replica that
//! had not yet received the change.

use std::time::Duration;

use ucxl::{Address, Envelope};

use super::{BackendError, BackendKind, CacheRead, NotServed, Outcome, Served, Via};
use crate::config::BackendMode;
use crate::state::AppState;
use crate::store::local::Lookup;

/// What `X-Rustle-Consistency` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// A node read (the default).
    #[default]
    Node,
    /// The cache when it is current, else a node read.
    Cached,
}

impl Consistency {
    /// Parses the header value.
    #[must_use]
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "node" => Some(Self::Node),
            "cached" => Some(Self::Cached),
            _ => None,
        }
    }
}

/// How far behind the nodes the cache may be now, when it can answer at all.
#[must_use]
pub fn lag(state: &AppState) -> Option<Duration> {
    if state.active.load().mode == BackendMode::Mock
        || state.fallback.get().is_some_and(|f| f.active())
    {
        return None;
    }
    let endpoints = state.cluster.endpoints();
    state.watch.behind(endpoints.iter().map(|e| e.url()))
}

/// The cache's answer for `address`, when it is current and holds what the address selects
/// (`None`: read a node). `lag` is what [`lag`] said.
#[must_use]
pub fn read(
    state: &AppState,
    address: &Address,
    lag: Option<Duration>,
    max_lag: Duration,
) -> Option<Outcome<Envelope>> {
    let answer = answer(state, address, lag, max_lag);
    crate::metrics::cache_read(answer.is_some());
    answer
}

fn answer(
    state: &AppState,
    address: &Address,
    lag: Option<Duration>,
    max_lag: Duration,
) -> Option<Outcome<Envelope>> {
    let lag = lag.filter(|l| *l <= max_lag)?;
    if state.store.is_owned(address) {
        // The gateway's own data (a write not yet replayed): the backend answers for it.
        return None;
    }
    let via = Via {
        cache: Some(CacheRead::new(true, Some(lag))),
        ..Via::local(BackendKind::Cache)
    };
    match state.store.lookup(address) {
        Lookup::Found(number, version) => Some(Ok(Served {
            value: Envelope::new(address, number, &version),
            via,
        })),
        Lookup::Missing => Some(Err(NotServed::new(
            BackendError::NotFound {
                address: address.to_string(),
            },
            via,
        ))),
        Lookup::NotHeld => None,
    }
}
