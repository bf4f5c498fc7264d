//! Dialling the configured bootstrap peers: each address is dialled until it connects,
//! again with backoff after a failed dial, at once after a disconnection, and never again
//! once it turns out to be this node.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour};
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::time::Instant;

/// What dialling needs of the swarm.
pub(super) trait Dialer {
    /// Whether a connection to `peer` is open.
    fn is_connected(&self, peer: &PeerId) -> bool;
    /// Starts dialling `addr` (whoever answers there); the dial's connection id.
    ///
    /// # Errors
    /// When the dial cannot even start.
    fn dial(&mut self, addr: &Multiaddr) -> Result<ConnectionId, DialError>;
}

impl<B: NetworkBehaviour> Dialer for Swarm<B> {
    fn is_connected(&self, peer: &PeerId) -> bool {
        Swarm::is_connected(self, peer)
    }

    fn dial(&mut self, addr: &Multiaddr) -> Result<ConnectionId, DialError> {
        let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
        let id = opts.connection_id();
        Swarm::dial(self, opts).map(|()| id)
    }
}

/// A configured bootstrap address and how dialling it goes.
#[derive(Debug)]
struct Bootstrap {
    addr: Multiaddr,
    /// Learned through the first connection (or given as `/p2p/<id>`).
    peer: Option<PeerId>,
    /// The dial in progress.
    pending: Option<ConnectionId>,
    next_dial: Instant,
    backoff: ExponentialBackoff,
    /// The address turned out to be this node.
    is_self: bool,
}

/// Waits between failed dials of one address: 100 ms doubling to 5 s, each plus up to as
/// much again of jitter, so restarted nodes do not dial in step.
fn redial_backoff() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Bootstrap {
    fn new(addr: Multiaddr) -> Self {
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

    fn schedule(&mut self) {
        let wait = self.backoff.next().unwrap_or(Duration::from_secs(5));
        self.next_dial = Instant::now() + wait;
    }

    fn reset(&mut self) {
        self.backoff = redial_backoff();
        self.next_dial = Instant::now();
    }
}

/// The configured bootstrap addresses and how dialling each goes.
#[derive(Debug)]
pub(super) struct Bootstraps(Vec<Bootstrap>);

impl Bootstraps {
    /// The bootstrap addresses, each to be dialled at once.
    pub(super) fn new(addrs: impl IntoIterator<Item = Multiaddr>) -> Self {
        Self(addrs.into_iter().map(Bootstrap::new).collect())
    }

    /// Dials every address that is due: not this node, its peer not connected, no dial in
    /// progress, and its backoff over.
    pub(super) fn dial_due(&mut self, dialer: &mut impl Dialer) {
        let now = Instant::now();
        for b in &mut self.0 {
            let connected = b.peer.is_some_and(|p| dialer.is_connected(&p));
            if b.is_self || connected || b.pending.is_some() || b.next_dial > now {
                continue;
            }
            match dialer.dial(&b.addr) {
                Ok(id) => b.pending = Some(id),
                Err(e) => {
                    tracing::debug!(addr = %b.addr, error = %e, "cannot dial bootstrap peer");
                    b.schedule();
                }
            }
        }
    }

    /// A connection was established: if it is a bootstrap dial, that address reaches
    /// `peer`, and its backoff starts over.
    pub(super) fn connected(&mut self, connection: ConnectionId, peer: PeerId) {
        if let Some(b) = self.0.iter_mut().find(|b| b.pending == Some(connection)) {
            b.pending = None;
            b.peer = Some(peer);
            b.reset();
        }
    }

    /// The last connection to `peer` closed: its bootstrap addresses are dialled again at
    /// once.
    pub(super) fn disconnected(&mut self, peer: PeerId) {
        for b in self.0.iter_mut().filter(|b| b.peer == Some(peer)) {
            b.reset();
        }
    }

    /// A dial failed: a bootstrap dial is tried again after its backoff, unless the address
    /// turned out to be this node.
    pub(super) fn dial_failed(&mut self, connection: ConnectionId, error: &DialError) {
        if let Some(b) = self.0.iter_mut().find(|b| b.pending == Some(connection)) {
            b.pending = None;
            if matches!(error, DialError::LocalPeerId { .. }) {
                tracing::info!(addr = %b.addr, "bootstrap address is this node; not dialling it again");
                b.is_self = true;
            } else {
                tracing::debug!(addr = %b.addr, error = %error, "bootstrap dial failed; retrying with backoff");
                b.schedule();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// A swarm stand-in: which peers are connected, and the dials started.
    #[derive(Default)]
    struct FakeDialer {
        connected: HashSet<PeerId>,
        /// Dials cannot start (as when the transport refuses the address).
        refuse: bool,
        dials: Vec<(ConnectionId, Multiaddr)>,
    }

    impl Dialer for FakeDialer {
        fn is_connected(&self, peer: &PeerId) -> bool {
            self.connected.contains(peer)
        }

        fn dial(&mut self, addr: &Multiaddr) -> Result<ConnectionId, DialError> {
            if self.refuse {
                return Err(DialError::Aborted);
            }
            let id = ConnectionId::new_unchecked(self.dials.len());
            self.dials.push((id, addr.clone()));
            Ok(id)
        }
    }

    impl FakeDialer {
        fn last(&self) -> ConnectionId {
            self.dials.last().expect("a dial").0
        }
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/10.0.0.1/tcp/{port}")
            .parse()
            .expect("a multiaddr")
    }

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[tokio::test(start_paused = true)]
    async fn every_address_is_dialled_at_once_and_not_again_while_its_dial_is_pending() {
        let mut bootstraps = Bootstraps::new([addr(1), addr(2)]);
        let mut swarm = FakeDialer::default();
        bootstraps.dial_due(&mut swarm);
        let dialled: Vec<&Multiaddr> = swarm.dials.iter().map(|(_, a)| a).collect();
        assert_eq!(dialled, [&addr(1), &addr(2)]);
        tokio::time::advance(Duration::from_secs(60)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 2, "the dials are still pending");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_dial_is_retried_after_a_backoff_that_doubles_up_to_five_seconds() {
        let mut bootstraps = Bootstraps::new([addr(1)]);
        let mut swarm = FakeDialer::default();
        bootstraps.dial_due(&mut swarm);
        // Each wait is its delay plus up to as much again of jitter.
        for delay in [100, 200, 400, 800, 1600, 3200, 5000, 5000] {
            let dials = swarm.dials.len();
            bootstraps.dial_failed(swarm.last(), &DialError::Aborted);
            tokio::time::advance(millis(delay - 1)).await;
            bootstraps.dial_due(&mut swarm);
            assert_eq!(swarm.dials.len(), dials, "redialled before {delay} ms");
            tokio::time::advance(millis(delay + 1)).await;
            bootstraps.dial_due(&mut swarm);
            assert_eq!(
                swarm.dials.len(),
                dials + 1,
                "not redialled by {} ms",
                2 * delay
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_dial_that_cannot_start_is_retried_with_backoff() {
        let mut bootstraps = Bootstraps::new([addr(1)]);
        let mut swarm = FakeDialer {
            refuse: true,
            ..FakeDialer::default()
        };
        bootstraps.dial_due(&mut swarm);
        swarm.refuse = false;
        bootstraps.dial_due(&mut swarm);
        assert!(swarm.dials.is_empty(), "backing off");
        tokio::time::advance(millis(200)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_starts_the_backoff_over_and_its_loss_redials_at_once() {
        let peer = PeerId::random();
        let mut bootstraps = Bootstraps::new([addr(1)]);
        let mut swarm = FakeDialer::default();
        bootstraps.dial_due(&mut swarm);
        for _ in 0..5 {
            bootstraps.dial_failed(swarm.last(), &DialError::Aborted);
            tokio::time::advance(Duration::from_secs(10)).await;
            bootstraps.dial_due(&mut swarm);
        }
        bootstraps.connected(swarm.last(), peer);
        swarm.connected.insert(peer);
        tokio::time::advance(Duration::from_secs(60)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 6, "not dialled while connected");

        swarm.connected.remove(&peer);
        bootstraps.disconnected(peer);
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 7, "redialled at once");
        // The backoff started over: the next failure waits 100 to 200 ms, not seconds.
        bootstraps.dial_failed(swarm.last(), &DialError::Aborted);
        tokio::time::advance(millis(200)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_is_this_node_is_never_dialled_again() {
        let mut bootstraps = Bootstraps::new([addr(1)]);
        let mut swarm = FakeDialer::default();
        bootstraps.dial_due(&mut swarm);
        bootstraps.dial_failed(swarm.last(), &DialError::LocalPeerId { address: addr(1) });
        tokio::time::advance(Duration::from_secs(3600)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_naming_a_connected_peer_is_not_dialled() {
        let peer = PeerId::random();
        let named = addr(1).with_p2p(peer).expect("a /p2p address");
        let mut bootstraps = Bootstraps::new([named.clone()]);
        let mut swarm = FakeDialer::default();
        swarm.connected.insert(peer);
        bootstraps.dial_due(&mut swarm);
        assert!(swarm.dials.is_empty());
        swarm.connected.remove(&peer);
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 1);
        assert_eq!(swarm.dials[0].1, named);
    }

    #[tokio::test(start_paused = true)]
    async fn events_of_other_connections_change_nothing() {
        let peer = PeerId::random();
        let mut bootstraps = Bootstraps::new([addr(1)]);
        let mut swarm = FakeDialer::default();
        bootstraps.dial_due(&mut swarm);
        let other = ConnectionId::new_unchecked(99);
        bootstraps.dial_failed(other, &DialError::Aborted);
        bootstraps.connected(other, peer);
        bootstraps.disconnected(peer);
        tokio::time::advance(Duration::from_secs(60)).await;
        bootstraps.dial_due(&mut swarm);
        assert_eq!(swarm.dials.len(), 1, "the first dial is still pending");
    }
}
