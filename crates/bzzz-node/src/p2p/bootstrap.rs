//! Dialling the configured bootstrap peers: each address is dialled until it connects,
//! again with backoff after a failed dial, at once after a disconnection, and never again
//! once it turns out to be this node.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use libp2p::swarm::ConnectionId;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;

use super::network::Network;

/// A configured bootstrap address and how dialling it goes.
#[derive(Debug)]
pub(super) struct Bootstrap {
    pub(super) addr: Multiaddr,
    /// Learned through the first connection (or given as `/p2p/<id>`).
    pub(super) peer: Option<PeerId>,
    /// The dial in progress.
    pub(super) pending: Option<ConnectionId>,
    next_dial: Instant,
    backoff: ExponentialBackoff,
    /// The address turned out to be this node.
    pub(super) is_self: bool,
}

fn redial_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Bootstrap {
    pub(super) fn new(addr: Multiaddr) -> Self {
        let peer = addr.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        Self {
            addr,
            peer,
            pending: None,
            next_dial: Instant::now(),
            backoff: redial_backoff(),
            is_self: false,
        }
    }

    pub(super) fn schedule(&mut self) {
        let wait = self.backoff.next().unwrap_or(Duration::from_secs(5));
        self.next_dial = Instant::now() + wait;
    }

    pub(super) fn reset(&mut self) {
        self.backoff = redial_backoff();
        self.next_dial = Instant::now();
    }
}

impl Network {
    pub(super) fn dial_bootstraps(&mut self) {
        let now = Instant::now();
        for i in 0..self.bootstraps.len() {
            let b = &self.bootstraps[i];
            let connected = b.peer.is_some_and(|p| self.swarm.is_connected(&p));
            if b.is_self || connected || b.pending.is_some() || b.next_dial > now {
                continue;
            }
            let opts = DialOpts::unknown_peer_id().address(b.addr.clone()).build();
            let id = opts.connection_id();
            let addr = b.addr.clone();
            match self.swarm.dial(opts) {
                Ok(()) => self.bootstraps[i].pending = Some(id),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot dial bootstrap peer");
                    self.bootstraps[i].schedule();
                }
            }
        }
    }
}
