//! Reading the nodes' feeds into the hub: one task per endpoint, while the mode uses the
//! cluster. A feed new to the gateway is first read over its retained past (up to the
//! history bound), which is remembered and not delivered: that is what lets a cursor from
//! before a restart, or from another gateway, be continued exactly. Then live changes are
//! delivered as they come. A lost connection is taken up again after the last number
//! read; a node whose feed changed (wiped, replaced) is read as a new feed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::hub::{FeedState, Hub};
use crate::config::EndpointUrl;
use crate::upstream::cluster::Cluster;
use crate::upstream::feed::{FeedClient, FeedError, FeedLine};
use crate::upstream::transport::ClientSettings;

/// What the followers need to know of the configuration, read afresh on every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// Whether the mode in force uses the cluster (real, hybrid).
    pub cluster: bool,
    /// How to connect to nodes.
    pub client: ClientSettings,
    /// The heartbeat interval asked of the nodes: how soon a silent feed is known to be
    /// current (cached reads need it within `RUSTLE_CACHE_MAX_LAG_MS`).
    pub heartbeat: Duration,
}

/// Reads the configuration.
pub type SourceFn = Arc<dyn Fn() -> Source + Send + Sync>;

/// How long a status request or a feed's answer head may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the set of endpoints (and the mode) is looked at.
const RECONCILE: Duration = Duration::from_millis(500);
/// First reconnect delay; doubled per failure in a row, up to [`MAX_DELAY`], with jitter.
const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Follows every endpoint of `cluster` while the mode uses it, until `stop`.
pub async fn run(hub: Arc<Hub>, cluster: Arc<Cluster>, source: SourceFn, stop: CancellationToken) {
    let mut tasks: HashMap<String, CancellationToken> = HashMap::new();
    loop {
        let wanted: Vec<EndpointUrl> = if source().cluster {
            cluster
                .endpoints()
                .iter()
                .map(|e| e.endpoint_url().clone())
                .collect()
        } else {
            Vec::new()
        };
        tasks.retain(|url, token| {
            let keep = wanted.iter().any(|w| w.as_str() == url);
            if !keep {
                token.cancel();
                if let Some((ix, _, _)) = hub.feed_of(url) {
                    hub.set_state(ix, FeedState::Detached, None);
                }
            }
            keep
        });
        for endpoint in wanted {
            if tasks.contains_key(endpoint.as_str()) {
                continue;
            }
            let token = stop.child_token();
            tasks.insert(endpoint.as_str().to_owned(), token.clone());
            tokio::spawn(follow(
                Arc::clone(&hub),
                endpoint,
                Arc::clone(&source),
                token,
            ));
        }
        tokio::select! {
            () = tokio::time::sleep(RECONCILE) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Follows one endpoint until `stop`.
async fn follow(hub: Arc<Hub>, endpoint: EndpointUrl, source: SourceFn, stop: CancellationToken) {
    let mut client: Option<(ClientSettings, FeedClient)> = None;
    let mut failures: u32 = 0;
    loop {
        let settings = source().client;
        if client.as_ref().is_none_or(|(s, _)| *s != settings) {
            match FeedClient::new(&settings) {
                Ok(c) => client = Some((settings, c)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the feed client");
                    client = None;
                }
            }
        }
        let heartbeat = source().heartbeat;
        let outcome = match &client {
            Some((_, c)) => tokio::select! {
                outcome = once(&hub, c, &endpoint, heartbeat) => outcome,
                () = stop.cancelled() => return,
            },
            None => Err("no client".to_owned()),
        };
        match outcome {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(endpoint = endpoint.as_str(), error = %e, "a feed cannot be read");
                if let Some((ix, _, _)) = hub.feed_of(endpoint.as_str()) {
                    hub.set_state(ix, FeedState::Down, Some(e));
                } else {
                    hub.unreachable(endpoint.as_str(), e);
                }
            }
        }
        let delay = if failures == 0 {
            MIN_DELAY / 10
        } else {
            let exp = MIN_DELAY
                .saturating_mul(1 << failures.min(8))
                .min(MAX_DELAY);
            // Full jitter keeps a restarted cluster from being reconnected to in lockstep.
            exp.mul_f64(0.5 + fastrand::f64() / 2.0)
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One connection: attach (or take up) the endpoint's feed and read it until it breaks.
/// `Ok` when the feed must be started afresh at once (it changed, or lost entries).
async fn once(
    hub: &Arc<Hub>,
    client: &FeedClient,
    endpoint: &EndpointUrl,
    heartbeat: Duration,
) -> Result<(), String> {
    let history = hub.settings().history as u64;
    let (ix, id, since) = if let Some(known) = hub.feed_of(endpoint.as_str()) {
        known
    } else {
        let position = client
            .position(endpoint, ANSWER_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let from = position
            .oldest_seq
            .saturating_sub(1)
            .max(position.current_seq.saturating_sub(history));
        hub.attach(endpoint.as_str(), &position.id, from, position.current_seq)
    };
    let mut stream = match client
        .open(
            endpoint,
            Some(since),
            Some(&id),
            Some(heartbeat),
            ANSWER_TIMEOUT,
        )
        .await
    {
        Ok(stream) => stream,
        Err(FeedError::Gone {
            reason,
            oldest_seq,
            current_seq,
            ..
        }) if reason == "compacted" => {
            let current = current_seq.unwrap_or(0);
            let from = oldest_seq
                .unwrap_or(0)
                .saturating_sub(1)
                .max(current.saturating_sub(history));
            tracing::warn!(
                endpoint = endpoint.as_str(),
                since,
                "a node's feed compacted changes the gateway had not read"
            );
            hub.gap(ix, from, current);
            return Ok(());
        }
        Err(FeedError::Gone { reason, .. }) => {
            tracing::info!(
                endpoint = endpoint.as_str(),
                reason,
                "a node's feed changed: reading it as a new feed"
            );
            hub.set_state(ix, FeedState::Detached, Some(format!("feed {reason}")));
            return Ok(());
        }
        Err(e) => return Err(e.to_string()),
    };
    hub.set_state(ix, FeedState::CatchingUp, None);
    while let Some(line) = stream.next().await {
        match line {
            Ok(FeedLine::Change {
                seq,
                committed_at,
                change,
            }) => hub.ingest(ix, seq, *change, committed_at),
            Ok(FeedLine::Heartbeat { seq }) => hub.passed(ix, seq),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("the node ended the stream".into())
}
