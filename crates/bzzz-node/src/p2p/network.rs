//! The network task: one loop that takes commands from the HTTP side, swarm events,
//! settled merges of pushes from peers and a timer tick, hands each to the concern that
//! owns it, and at the end of every turn pumps catch-up and sends what is queued.
//! Connections coming and going are handled here: the peer view, catch-up of a peer that
//! connects, and the addresses Kademlia learns.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use libp2p::kad::{self, InboundRequest, QueryId};
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::bootstrap::Bootstraps;
use super::catch_up::CatchUp;
use super::kademlia::Lookup;
use super::quorum::Writes;
use super::replication::{InboundBudget, Merging, Outgoing, Pushed, PushedItem};
use super::swarm::{Behaviour, BehaviourEvent, is_loopback};
use super::{Command, PeerView};
use crate::config::NodeConfig;
use crate::store::NodeStore;

/// Commands taken in one turn of the network task before it sends what they queued.
const COMMANDS_PER_TURN: usize = 256;

/// The swarm task's state.
pub(super) struct Network {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) store: Arc<NodeStore>,
    view: Arc<PeerView>,
    bootstraps: Bootstraps,
    pub(super) replication_factor: usize,
    /// Records queued per peer, sent at the end of the network task's turn.
    pub(super) outbox: HashMap<PeerId, Vec<Outgoing>>,
    /// Pushes in flight: request → peer and, per record, (write, key).
    pub(super) puts: HashMap<OutboundRequestId, (PeerId, Vec<PushedItem>)>,
    /// Largest push in bytes (a single larger record still goes, alone).
    pub(super) push_bytes: usize,
    pub(super) writes: Writes,
    pub(super) gets: HashMap<QueryId, Lookup>,
    pub(super) catch_up: CatchUp,
    /// Pushes from peers being merged: answered once durable.
    pub(super) merges: FuturesUnordered<Merging>,
    /// Bytes of inbound pushes being merged; past its cap pushes are answered busy at
    /// once rather than queued.
    pub(super) inbound: InboundBudget,
    first_listen: Option<oneshot::Sender<Multiaddr>>,
    /// The Kademlia bootstrap query in progress.
    pub(super) bootstrapping: Option<QueryId>,
}

/// The addresses a peer announced that Kademlia should learn, given this node's own. A
/// peer's loopback address is this host's own unless the cluster runs on loopback, so
/// loopback addresses count only when this node listens there alone.
fn addresses_to_learn(own: &[Multiaddr], announced: Vec<Multiaddr>) -> Vec<Multiaddr> {
    let local_only = own.iter().all(is_loopback);
    announced
        .into_iter()
        .filter(|addr| local_only || !is_loopback(addr))
        .collect()
}

impl Network {
    /// The network task's state for `swarm`; `first_listen` hears the first listen address.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        store: Arc<NodeStore>,
        view: Arc<PeerView>,
        config: &NodeConfig,
        first_listen: oneshot::Sender<Multiaddr>,
    ) -> Self {
        Self {
            swarm,
            store,
            view,
            bootstraps: Bootstraps::new(config.bootstrap.iter().cloned()),
            replication_factor: config.replication_factor,
            puts: HashMap::new(),
            writes: Writes::default(),
            gets: HashMap::new(),
            catch_up: CatchUp::default(),
            outbox: HashMap::new(),
            push_bytes: config.max_record_bytes,
            merges: FuturesUnordered::new(),
            inbound: InboundBudget::new(config.max_record_bytes),
            first_listen: Some(first_listen),
            bootstrapping: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => {
                    self.command(command);
                    // Take what else is queued, so it leaves in the same pushes.
                    for _ in 1..COMMANDS_PER_TURN {
                        let Ok(command) = commands.try_recv() else { break };
                        self.command(command);
                    }
                }
                event = self.swarm.select_next_some() => self.event(event),
                Some((channel, stored, size)) = self.merges.next(), if !self.merges.is_empty() => {
                    self.inbound.release(size);
                    // Answer in the order merges settle; the pusher matches by request.
                    // The pusher may have gone; it gets the record through catch-up.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .replicate
                        .send_response(channel, Pushed { stored, busy: false });
                }
                _ = tick.tick() => {
                    self.bootstraps.dial_due(&mut self.swarm);
                    self.writes.acknowledge_slow();
                }
            }
            self.pump_catch_up();
            self.flush();
        }
        tracing::info!("network stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Replicate { key, value, reply } => self.replicate(key, &value, reply),
            Command::Fetch { key, reply } => self.fetch(key, reply),
        }
    }

    fn set_connected(&self, peer: PeerId, connected: bool) {
        let mut peers = self
            .view
            .connected
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if connected {
            peers.insert(peer);
        } else {
            peers.remove(&peer);
        }
        metrics::gauge!("bzzz_peers").set(u32::try_from(peers.len()).unwrap_or(u32::MAX));
    }

    fn connected(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &libp2p::core::ConnectedPoint,
        num_established: u32,
    ) {
        self.bootstraps.connected(connection_id, peer_id);
        if endpoint.is_dialer() {
            let addr = endpoint.get_remote_address().clone();
            self.kad().add_address(&peer_id, addr);
        }
        // Catch the peer up on everything this node holds: records written while it was
        // away reach it within seconds. A new connection replaces what was queued for the
        // peer, so a flapping peer does not pile up pushes.
        self.catch_up.replace(peer_id, self.store.dht_keys());
        if num_established == 1 {
            tracing::info!(peer = %peer_id, "peer connected");
            self.set_connected(peer_id, true);
            self.view.ever_connected.store(true, Ordering::Relaxed);
            // Look for the rest of the cluster through the newcomer, so small clusters
            // become a full mesh: every peer is a replication target.
            if self.bootstrapping.is_none() {
                self.bootstrapping = self.kad().bootstrap().ok();
            }
        }
    }

    fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = address.with_p2p(self.view.peer_id).unwrap_or_else(|a| a);
                tracing::info!(address = %full, "p2p listening");
                self.view
                    .listen
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(full.clone());
                if let Some(tx) = self.first_listen.take() {
                    let _ = tx.send(full);
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.connected(peer_id, connection_id, &endpoint, num_established.get()),
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "peer disconnected");
                self.set_connected(peer_id, false);
                self.bootstraps.disconnected(peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => self.bootstraps.dial_failed(connection_id, &error),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) => {
                // A connection that stops answering pings is dead: close it, so the peer
                // stops counting as connected and is caught up when it comes back.
                tracing::info!(%peer, %error, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let own = self.view.listen_addrs();
                for addr in addresses_to_learn(&own, info.listen_addrs) {
                    self.kad().add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Replicate(event)) => self.replication(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            })) => self.kad_put(source, &record),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                step,
                ..
            })) => {
                self.query_progressed(id, result, step.last);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<Multiaddr> {
        list.iter()
            .map(|a| a.parse().expect("a multiaddr"))
            .collect()
    }

    #[test]
    fn a_node_on_a_network_learns_no_loopback_addresses_of_its_peers() {
        let own = addrs(&["/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.1/tcp/4001"]);
        let announced = addrs(&[
            "/ip4/127.0.0.1/tcp/4001",
            "/ip4/10.0.0.2/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/dns4/bzzz-2/tcp/4001",
        ]);
        assert_eq!(
            addresses_to_learn(&own, announced),
            addrs(&["/ip4/10.0.0.2/tcp/4001", "/dns4/bzzz-2/tcp/4001"])
        );
    }

    #[test]
    fn a_node_on_loopback_alone_learns_every_address_of_its_peers() {
        let own = addrs(&["/ip4/127.0.0.1/tcp/4001"]);
        let announced = addrs(&["/ip4/127.0.0.1/tcp/4002", "/ip4/10.0.0.2/tcp/4001"]);
        assert_eq!(addresses_to_learn(&own, announced.clone()), announced);
    }
}
