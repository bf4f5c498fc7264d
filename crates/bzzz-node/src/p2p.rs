//! The libp2p side of a node: TCP + Noise + Yamux, Kademlia (server mode) over the node
//! store, Identify and Ping; bootstrap dialling with backoff; replication of writes to a
//! majority; catch-up of peers that (re)connect.
//!
//! The swarm runs in one task. HTTP handlers talk to it through [`P2p`], a cloneable
//! handle that sends [`Command`]s and reads a shared [`PeerView`].

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use libp2p::kad::{
    self, GetRecordOk, KBucketKey, PeerRecord, QueryId, QueryResult, Quorum, Record, RecordKey,
};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity, noise, ping, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::dht::DhtStore;
use crate::store::{DhtKey, NodeStore};

/// The Kademlia protocol of BZZZ clusters.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/kad/1.0.0");
/// Catch-up pushes in flight at once (well under Kademlia's 32 streams per connection, so
/// live writes are not queued behind a catch-up).
const CATCH_UP_IN_FLIGHT: usize = 8;
/// Largest Kademlia message: a version set of `BZZZ_MAX_RECORD_BYTES` plus framing.
const PACKET_SLACK: usize = 64 * 1024;

/// The swarm's behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // libp2p's behaviours do not all implement Debug
pub struct Behaviour {
    kad: kad::Behaviour<DhtStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// What HTTP handlers ask of the swarm.
#[derive(Debug)]
pub enum Command {
    /// Push a record to the closest connected peers; answer once `need` stored it.
    Replicate {
        /// DHT key.
        key: DhtKey,
        /// DHT value.
        value: Vec<u8>,
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
    pub async fn replicate(&self, key: DhtKey, value: Vec<u8>) -> Result<usize, ReplicateError> {
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

/// Loads the node key from `dir/node.key`, creating it on first start, so the peer id
/// survives restarts.
///
/// # Errors
/// [`P2pError::Key`].
pub fn load_or_create_key(dir: &Path) -> Result<identity::Keypair, P2pError> {
    let path = dir.join("node.key");
    let fail = |reason: String| P2pError::Key {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            identity::Keypair::from_protobuf_encoding(&bytes).map_err(|e| fail(e.to_string()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = identity::Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| fail(e.to_string()))?;
            std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            let tmp = dir.join("node.key.tmp");
            std::fs::write(&tmp, bytes).map_err(|e| fail(e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| fail(e.to_string()))?;
            }
            std::fs::rename(&tmp, &path).map_err(|e| fail(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Whether a multiaddr is on a loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
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

/// A DHT lookup: where the answer goes and the replicas found so far.
type PendingFetch = (oneshot::Sender<Vec<Vec<u8>>>, Vec<Vec<u8>>);

/// A write being replicated: answered once `need` peers stored it, or once every push
/// has ended without that.
struct PendingWrite {
    need: usize,
    acked: usize,
    outstanding: usize,
    reply: Option<oneshot::Sender<Result<usize, ReplicateError>>>,
    /// When a majority had acknowledged while other pushes were still out.
    quorum_at: Option<Instant>,
}

/// How long a write with a majority waits for its remaining replicas before it is
/// acknowledged anyway (those get it through catch-up). Waiting for every reachable replica
/// first means a read at any healthy node sees an acknowledged write.
const REMAINING_REPLICAS_GRACE: Duration = Duration::from_millis(100);

/// The swarm task's state.
struct Network {
    swarm: Swarm<Behaviour>,
    store: Arc<NodeStore>,
    view: Arc<PeerView>,
    bootstraps: Vec<Bootstrap>,
    replication_factor: usize,
    /// One push per target peer: query → (write, peer, key).
    puts: HashMap<QueryId, (u64, PeerId, DhtKey)>,
    writes: HashMap<u64, PendingWrite>,
    next_write: u64,
    gets: HashMap<QueryId, PendingFetch>,
    catch_up: VecDeque<(PeerId, DhtKey)>,
    catch_up_in_flight: HashSet<QueryId>,
    first_listen: Option<oneshot::Sender<Multiaddr>>,
    /// The Kademlia bootstrap query in progress.
    bootstrapping: Option<QueryId>,
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
    let key = load_or_create_key(&config.data_dir)?;
    let peer_id = key.public().to_peer_id();
    let rf = NonZeroUsize::new(config.replication_factor).unwrap_or(NonZeroUsize::MIN);
    let packet = config.max_record_bytes.saturating_add(PACKET_SLACK);
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_dns()
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_behaviour(|key| {
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config
                .set_replication_factor(rf)
                .set_record_ttl(None)
                .set_publication_interval(None)
                // Catch-up on every connection re-sends what a peer missed; kad's hourly
                // re-put of every record would encode the whole store on the swarm task.
                .set_replication_interval(None)
                .set_provider_publication_interval(None)
                .set_max_packet_size(packet)
                .set_query_timeout(Duration::from_secs(10))
                .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
            let local = key.public().to_peer_id();
            let mut kad = kad::Behaviour::with_config(
                local,
                DhtStore::new(local, Arc::clone(&store)),
                kad_config,
            );
            kad.set_mode(Some(kad::Mode::Server));
            Behaviour {
                kad,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/bzzz/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
            }
        })
        .map_err(|e| P2pError::Build(e.to_string()))?
        // Cluster links stay open: they are the replication targets and the health signal.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(365 * 24 * 3600)))
        .build();
    swarm
        .listen_on(config.p2p_addr.clone())
        .map_err(|e| P2pError::Listen {
            addr: config.p2p_addr.clone(),
            reason: e.to_string(),
        })?;
    let view = Arc::new(PeerView {
        peer_id,
        connected: RwLock::new(BTreeSet::new()),
        listen: RwLock::new(Vec::new()),
        ever_connected: AtomicBool::new(false),
    });
    let (commands, rx) = mpsc::channel(1024);
    let (first_listen, listening) = oneshot::channel();
    let network = Network {
        swarm,
        store,
        view: Arc::clone(&view),
        bootstraps: config
            .bootstrap
            .iter()
            .cloned()
            .map(Bootstrap::new)
            .collect(),
        replication_factor: config.replication_factor,
        puts: HashMap::new(),
        writes: HashMap::new(),
        next_write: 0,
        gets: HashMap::new(),
        catch_up: VecDeque::new(),
        catch_up_in_flight: HashSet::new(),
        first_listen: Some(first_listen),
        bootstrapping: None,
    };
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

impl Network {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.command(command),
                event = self.swarm.select_next_some() => self.event(event),
                _ = tick.tick() => {
                    self.dial_bootstraps();
                    self.acknowledge_slow_writes();
                }
            }
            self.pump_catch_up();
        }
        tracing::info!("network stopped");
    }

    fn kad(&mut self) -> &mut kad::Behaviour<DhtStore> {
        &mut self.swarm.behaviour_mut().kad
    }

    /// The connected peers closest to `key`, at most `n`.
    fn closest_connected(&self, key: &RecordKey, n: usize) -> Vec<PeerId> {
        let target = KBucketKey::new(key.clone());
        let mut peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        peers.sort_by_key(|p| KBucketKey::from(*p).distance(&target));
        peers.truncate(n);
        peers
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Replicate { key, value, reply } => {
                let record_key = RecordKey::new(&key);
                let targets =
                    self.closest_connected(&record_key, self.replication_factor.saturating_sub(1));
                let need =
                    (self.replication_factor / 2).min(self.replication_factor.saturating_sub(1));
                if need == 0 {
                    let _ = reply.send(Ok(0));
                    return;
                }
                if targets.len() < need {
                    let _ = reply.send(Err(ReplicateError::NotEnoughPeers {
                        have: targets.len(),
                        need,
                    }));
                    return;
                }
                // One push per target, so every target's outcome is known: a target that
                // misses the write gets it again through catch-up.
                let write = self.next_write;
                self.next_write += 1;
                let record = Record::new(record_key, value);
                for peer in &targets {
                    let id = self.kad().put_record_to(
                        record.clone(),
                        std::iter::once(*peer),
                        Quorum::One,
                    );
                    self.puts.insert(id, (write, *peer, key));
                }
                self.writes.insert(
                    write,
                    PendingWrite {
                        need,
                        acked: 0,
                        outstanding: targets.len(),
                        reply: Some(reply),
                        quorum_at: None,
                    },
                );
            }
            Command::Fetch { key, reply } => {
                let id = self.kad().get_record(RecordKey::new(&key));
                self.gets.insert(id, (reply, Vec::new()));
            }
        }
    }

    fn dial_bootstraps(&mut self) {
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

    /// Pushes queued records to (re)connected peers, a bounded number at a time.
    fn pump_catch_up(&mut self) {
        while self.catch_up_in_flight.len() < CATCH_UP_IN_FLIGHT {
            let Some((peer, key)) = self.catch_up.pop_front() else {
                break;
            };
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            let Some(value) = self.store.dht_value(&key) else {
                continue;
            };
            let record = Record::new(RecordKey::new(&key), value);
            let id = self
                .kad()
                .put_record_to(record, std::iter::once(peer), Quorum::One);
            self.catch_up_in_flight.insert(id);
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

    /// Acknowledges writes that have a majority and waited long enough for the rest.
    fn acknowledge_slow_writes(&mut self) {
        let now = Instant::now();
        for pending in self.writes.values_mut() {
            if pending
                .quorum_at
                .is_some_and(|at| now.duration_since(at) >= REMAINING_REPLICAS_GRACE)
                && let Some(reply) = pending.reply.take()
            {
                metrics::counter!("bzzz_replications_total", "outcome" => "ok").increment(1);
                let _ = reply.send(Ok(pending.acked));
            }
        }
    }

    /// One push of a write ended.
    fn push_ended(&mut self, write: u64, peer: PeerId, key: DhtKey, stored: bool) {
        if !stored && !self.catch_up.contains(&(peer, key)) {
            // The peer missed it: it gets the record again through catch-up.
            self.catch_up.push_back((peer, key));
        }
        let Some(pending) = self.writes.get_mut(&write) else {
            return;
        };
        pending.outstanding = pending.outstanding.saturating_sub(1);
        if stored {
            pending.acked += 1;
        }
        let (need, acked, outstanding) = (pending.need, pending.acked, pending.outstanding);
        if acked >= need && outstanding > 0 {
            pending.quorum_at.get_or_insert_with(Instant::now);
        } else if acked >= need {
            if let Some(reply) = pending.reply.take() {
                metrics::counter!("bzzz_replications_total", "outcome" => "ok").increment(1);
                let _ = reply.send(Ok(acked));
            }
        } else if outstanding == 0
            && let Some(reply) = pending.reply.take()
        {
            metrics::counter!("bzzz_replications_total", "outcome" => "failed").increment(1);
            let _ = reply.send(Err(ReplicateError::QuorumFailed { acked, need }));
        }
        if outstanding == 0 {
            self.writes.remove(&write);
        }
    }

    fn connected(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        endpoint: &libp2p::core::ConnectedPoint,
        num_established: u32,
    ) {
        if let Some(b) = self
            .bootstraps
            .iter_mut()
            .find(|b| b.pending == Some(connection_id))
        {
            b.pending = None;
            b.peer = Some(peer_id);
            b.reset();
        }
        if endpoint.is_dialer() {
            let addr = endpoint.get_remote_address().clone();
            self.kad().add_address(&peer_id, addr);
        }
        // Catch the peer up on everything this node holds: records written while it was
        // away reach it within seconds. A new connection replaces what was queued for the
        // peer, so a flapping peer does not pile up pushes.
        self.catch_up.retain(|(p, _)| *p != peer_id);
        let keys = self.store.dht_keys();
        self.catch_up.extend(keys.into_iter().map(|k| (peer_id, k)));
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
                for b in self
                    .bootstraps
                    .iter_mut()
                    .filter(|b| b.peer == Some(peer_id))
                {
                    b.reset();
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some(b) = self
                    .bootstraps
                    .iter_mut()
                    .find(|b| b.pending == Some(connection_id))
                {
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
                // A peer's loopback address is this host's own unless the cluster runs on
                // loopback, so loopback addresses count only when this node listens there.
                let local_only = self.view.listen_addrs().iter().all(is_loopback);
                for addr in info.listen_addrs {
                    if local_only || !is_loopback(&addr) {
                        self.kad().add_address(&peer_id, addr);
                    }
                }
            }
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

    fn query_progressed(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
            QueryResult::PutRecord(outcome) => {
                if self.catch_up_in_flight.remove(&id) {
                    if let Err(e) = outcome {
                        tracing::debug!(error = %e, "catch-up push failed");
                    }
                    return;
                }
                if let Some((write, peer, key)) = self.puts.remove(&id) {
                    self.push_ended(write, peer, key, outcome.is_ok());
                }
            }
            QueryResult::Bootstrap(_) if last && self.bootstrapping == Some(id) => {
                self.bootstrapping = None;
            }
            QueryResult::GetRecord(outcome) => {
                let Some((_, found)) = self.gets.get_mut(&id) else {
                    return;
                };
                if let Ok(GetRecordOk::FoundRecord(PeerRecord { record, .. })) = outcome {
                    found.push(record.value);
                }
                // Every replica answered (or the query ended): the caller merges them all,
                // not just the first, so a partial replica cannot hide versions.
                let enough = found.len() >= self.replication_factor;
                if (last || enough)
                    && let Some((reply, found)) = self.gets.remove(&id)
                {
                    let _ = reply.send(found);
                    if let Some(mut query) = self.kad().query_mut(&id) {
                        query.finish();
                    }
                }
            }
            _ => {}
        }
    }
}
