//! The libp2p side of a node: TCP (+ a pre-shared key handshake on a private network) +
//! Noise + Yamux, Kademlia (server mode) over the node
//! store for routing and lookups, Identify and Ping; bootstrap dialling with backoff;
//! replication of writes to a majority; catch-up of peers that (re)connect.
//!
//! Writes are pushed with [`REPLICATE_PROTOCOL`], a request-response protocol: the
//! receiver merges the records into its store and answers only once the merges are
//! committed to disk, so an acknowledgement means a durable copy, which is what the write
//! quorum counts. The merges run on the store's writer thread (group commit), never on the
//! network task. Whatever is queued for a peer when the network task comes round (live
//! writes and catch-up alike) travels in one push, so a burst of writes costs a few
//! streams and disk flushes rather than one of each per record.
//!
//! The swarm runs in one task. HTTP handlers talk to it through [`P2p`], a cloneable
//! handle that sends [`Command`]s and reads a shared [`PeerView`].
//!
//! One file per concern: `swarm` (identity key, transport, behaviours, listener),
//! `bootstrap` (dialling the bootstrap peers), `replication` (the push protocol both ways),
//! `quorum` (when a write has its majority), `catch_up` (records for peers that connect),
//! `kademlia` (lookups and puts from peers) and `network` (the task's loop and connections).

mod bootstrap;
mod catch_up;
mod kademlia;
mod network;
mod quorum;
mod replication;
mod swarm;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use replication::{Push, Pushed, REPLICATE_PROTOCOL};
pub use swarm::{Behaviour, BehaviourEvent, KAD_PROTOCOL, load_or_create_key};

use crate::config::NodeConfig;
use crate::store::{DhtKey, NodeStore};
use network::Network;

/// What HTTP handlers ask of the swarm.
#[derive(Debug)]
pub enum Command {
    /// Push a record to the closest connected peers; answer once `need` stored it.
    Replicate {
        /// DHT key.
        key: DhtKey,
        /// DHT value.
        value: Box<RawValue>,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<usize, ReplicateError>>,
    },
    /// Look a record up in the DHT.
    Fetch {
        /// DHT key.
        key: DhtKey,
        /// Every replica's value found (merged by the caller).
        reply: oneshot::Sender<Vec<Vec<u8>>>,
    },
}

/// Why a write did not reach a majority.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicateError {
    /// Too few peers are connected.
    #[error("{have} peers connected; a majority needs {need}")]
    NotEnoughPeers {
        /// Connected peers.
        have: usize,
        /// Peers needed besides this node.
        need: usize,
    },
    /// Peers did not confirm in time or refused.
    #[error("{acked} of the {need} peers a majority needs confirmed the write")]
    QuorumFailed {
        /// Peers that stored the record.
        acked: usize,
        /// Peers needed besides this node.
        need: usize,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
}

/// What the HTTP side can see of the network.
#[derive(Debug)]
pub struct PeerView {
    /// This node's peer id.
    pub peer_id: PeerId,
    connected: RwLock<BTreeSet<PeerId>>,
    listen: RwLock<Vec<Multiaddr>>,
    /// Set once any peer has connected: from then on, writes need a majority.
    ever_connected: AtomicBool,
}

impl PeerView {
    fn new(peer_id: PeerId) -> Self {
        Self {
            peer_id,
            connected: RwLock::new(BTreeSet::new()),
            listen: RwLock::new(Vec::new()),
            ever_connected: AtomicBool::new(false),
        }
    }

    /// The connected peers.
    #[must_use]
    pub fn connected(&self) -> Vec<PeerId> {
        self.connected
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// The p2p addresses this node listens on, with its `/p2p/<id>` suffix.
    #[must_use]
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.listen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A handle on the swarm task.
#[derive(Debug, Clone)]
pub struct P2p {
    commands: mpsc::Sender<Command>,
    view: Arc<PeerView>,
    /// Peers (besides this node) a write needs: majority of the replication factor − 1.
    peers_needed: usize,
    /// Whether this node was told to join a cluster.
    clustered: bool,
}

impl P2p {
    /// The shared network view.
    #[must_use]
    pub fn view(&self) -> &PeerView {
        &self.view
    }

    /// Peers besides this node that must store a write: a majority of the replication
    /// factor counts the local copy, so `rf / 2`; none for a standalone node (no bootstrap
    /// peers and never joined by one).
    #[must_use]
    pub fn peers_needed(&self) -> usize {
        if self.clustered || self.view.ever_connected.load(Ordering::Relaxed) {
            self.peers_needed
        } else {
            0
        }
    }

    /// Replicates a record to the peers a majority needs.
    ///
    /// # Errors
    /// [`ReplicateError`] when the majority was not reached.
    pub async fn replicate(
        &self,
        key: DhtKey,
        value: Box<RawValue>,
    ) -> Result<usize, ReplicateError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Replicate { key, value, reply })
            .await
            .map_err(|_| ReplicateError::Stopped)?;
        answer.await.map_err(|_| ReplicateError::Stopped)?
    }

    /// Looks a record up in the DHT: the values of the replicas found.
    pub async fn fetch(&self, key: DhtKey) -> Vec<Vec<u8>> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Fetch { key, reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The node key could not be read or written.
    #[error("node key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The transport or behaviour could not be built.
    #[error("cannot build the swarm: {0}")]
    Build(String),
    /// The listen address could not be used.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Builds the swarm, starts listening and spawns the network task.
///
/// Returns the handle, the address the node listens on (with `/p2p/<id>`), and the task.
///
/// # Errors
/// [`P2pError`] when the key, transport or listener fails.
pub async fn start(
    config: &NodeConfig,
    store: Arc<NodeStore>,
    shutdown: CancellationToken,
) -> Result<(P2p, Multiaddr, tokio::task::JoinHandle<()>), P2pError> {
    let (swarm, peer_id) = swarm::build(config, &store)?;
    let view = Arc::new(PeerView::new(peer_id));
    let (commands, rx) = mpsc::channel(1024);
    let (first_listen, listening) = oneshot::channel();
    let network = Network::new(swarm, store, Arc::clone(&view), config, first_listen);
    let task = tokio::spawn(network.run(rx, shutdown));
    let addr = tokio::time::timeout(Duration::from_secs(10), listening)
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| P2pError::Listen {
            addr: config.p2p_addr.clone(),
            reason: "no listen address within 10 s".into(),
        })?;
    let handle = P2p {
        commands,
        view,
        peers_needed: config.write_majority().saturating_sub(1),
        clustered: !config.bootstrap.is_empty(),
    };
    Ok((handle, addr, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle on no network task: `commands` receives what it sends.
    fn handle(clustered: bool) -> (P2p, mpsc::Receiver<Command>) {
        let (commands, rx) = mpsc::channel(4);
        let p2p = P2p {
            commands,
            view: Arc::new(PeerView::new(PeerId::random())),
            peers_needed: 1,
            clustered,
        };
        (p2p, rx)
    }

    #[test]
    fn a_standalone_node_needs_no_peers_until_one_has_connected() {
        let (p2p, _rx) = handle(false);
        assert_eq!(p2p.peers_needed(), 0);
        p2p.view.ever_connected.store(true, Ordering::Relaxed);
        assert_eq!(
            p2p.peers_needed(),
            1,
            "a peer has joined: writes need a majority"
        );
    }

    #[test]
    fn a_clustered_node_needs_a_majority_from_the_start() {
        let (p2p, _rx) = handle(true);
        assert_eq!(p2p.peers_needed(), 1);
    }

    #[tokio::test]
    async fn a_write_reaches_the_network_task_and_hears_its_outcome() {
        let (p2p, mut rx) = handle(true);
        let task = tokio::spawn(async move {
            let Some(Command::Replicate { key, reply, .. }) = rx.recv().await else {
                panic!("a replicate command");
            };
            assert_eq!(key, [1; 32]);
            let _ = reply.send(Ok(2));
        });
        let value = RawValue::from_string("1".into()).expect("JSON");
        assert_eq!(p2p.replicate([1; 32], value).await, Ok(2));
        task.await.expect("the task ran");
    }

    #[tokio::test]
    async fn a_stopped_network_fails_writes_and_finds_nothing() {
        let (p2p, rx) = handle(true);
        drop(rx);
        let value = RawValue::from_string("1".into()).expect("JSON");
        assert_eq!(
            p2p.replicate([1; 32], value).await,
            Err(ReplicateError::Stopped)
        );
        assert!(p2p.fetch([1; 32]).await.is_empty());
    }

    #[tokio::test]
    async fn a_network_task_that_drops_a_command_stops_the_caller_waiting() {
        let (p2p, mut rx) = handle(true);
        let task = tokio::spawn(async move {
            // Take two commands and answer neither.
            for _ in 0..2 {
                drop(rx.recv().await);
            }
        });
        let value = RawValue::from_string("1".into()).expect("JSON");
        assert_eq!(
            p2p.replicate([1; 32], value).await,
            Err(ReplicateError::Stopped)
        );
        assert!(p2p.fetch([1; 32]).await.is_empty());
        task.await.expect("the task ran");
    }
}
