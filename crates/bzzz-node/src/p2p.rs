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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::Transport as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::kad::{
    self, GetRecordOk, InboundRequest, KBucketKey, PeerRecord, QueryId, QueryResult, RecordKey,
    StoreInserts,
};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity, noise, ping, tcp, yamux,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::dht::DhtStore;
use crate::store::{self, DhtKey, NodeStore};

/// The Kademlia protocol of BZZZ clusters.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/kad/1.0.0");
/// The replication protocol: a push of one record, answered once it is durable.
pub const REPLICATE_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/replicate/1.0.0");
/// Catch-up records in flight at once, over all peers (so live writes are not queued
/// behind a catch-up).
const CATCH_UP_IN_FLIGHT: usize = 64;
/// Most records one push carries.
const PUSH_RECORDS: usize = 256;
/// Replication streams one connection carries at once, each way.
const REPLICATION_STREAMS: usize = 256;
/// Commands taken in one turn of the network task before it sends what they queued.
const COMMANDS_PER_TURN: usize = 256;
/// Bytes of inbound pushes a node merges at once, at least (4 × the largest record, when
/// that is more).
const INBOUND_MIN_CAP: usize = 64 << 20;
/// Bytes of one catch-up push, at most (a single larger record still goes, alone).
const CATCH_UP_PUSH_BYTES: usize = 1 << 20;
/// How long a push may wait for its answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest Kademlia message: a version set of `BZZZ_MAX_RECORD_BYTES` plus framing.
const PACKET_SLACK: usize = 64 * 1024;

/// A push of [`REPLICATE_PROTOCOL`]: records, each the JSON of a [`store::DhtValue`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Push {
    /// The records.
    pub records: Vec<Box<RawValue>>,
}

/// The answer to a [`Push`], once every record is settled.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pushed {
    /// Per record, in order: true once merged and on disk, false when refused.
    pub stored: Vec<bool>,
    /// True when the receiver had too much in flight and took none of it: send it again
    /// later.
    #[serde(default)]
    pub busy: bool,
}

/// An inbound push being merged: where its answer goes, the outcome, and its size.
type Merging = BoxFuture<'static, (ResponseChannel<Pushed>, Vec<bool>, usize)>;

/// What a push carried, per record: the write it belongs to (none for catch-up), and key.
type PushedItem = (Option<u64>, DhtKey);

/// A record queued for a peer: for a write being replicated, or for catch-up (`None`).
struct Outgoing {
    write: Option<u64>,
    key: DhtKey,
    record: Box<RawValue>,
}

/// The swarm's behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // libp2p's behaviours do not all implement Debug
pub struct Behaviour {
    kad: kad::Behaviour<DhtStore>,
    replicate: request_response::json::Behaviour<Push, Pushed>,
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

/// Records to push to peers, in order, each (peer, key) queued at most once.
#[derive(Default)]
struct CatchUp {
    queue: VecDeque<(PeerId, DhtKey)>,
    queued: HashSet<(PeerId, DhtKey)>,
}

impl CatchUp {
    fn push(&mut self, item: (PeerId, DhtKey)) {
        if self.queued.insert(item) {
            self.queue.push_back(item);
        }
    }

    fn pop_front(&mut self) -> Option<(PeerId, DhtKey)> {
        let item = self.queue.pop_front()?;
        self.queued.remove(&item);
        Some(item)
    }

    /// Queues every key for `peer`, replacing what was queued for it.
    fn replace(&mut self, peer: PeerId, keys: Vec<DhtKey>) {
        self.queue.retain(|(p, _)| *p != peer);
        self.queued.retain(|(p, _)| *p != peer);
        for key in keys {
            self.push((peer, key));
        }
    }
}

/// The swarm task's state.
struct Network {
    swarm: Swarm<Behaviour>,
    store: Arc<NodeStore>,
    view: Arc<PeerView>,
    bootstraps: Vec<Bootstrap>,
    replication_factor: usize,
    /// Records queued per peer, sent at the end of the network task's turn.
    outbox: HashMap<PeerId, Vec<Outgoing>>,
    /// Pushes in flight: request → peer and, per record, (write, key).
    puts: HashMap<OutboundRequestId, (PeerId, Vec<PushedItem>)>,
    /// Largest push in bytes (a single larger record still goes, alone).
    push_bytes: usize,
    writes: HashMap<u64, PendingWrite>,
    next_write: u64,
    gets: HashMap<QueryId, PendingFetch>,
    catch_up: CatchUp,
    /// Catch-up records queued or in flight.
    catch_up_in_flight: usize,
    /// Pushes from peers being merged: answered once durable.
    merges: FuturesUnordered<Merging>,
    /// Bytes of inbound pushes being merged; past [`Network::inbound_cap`] pushes are
    /// answered busy at once rather than queued.
    inbound_bytes: usize,
    inbound_cap: usize,
    first_listen: Option<oneshot::Sender<Multiaddr>>,
    /// The Kademlia bootstrap query in progress.
    bootstrapping: Option<QueryId>,
}

/// The swarm's behaviours for a node with `key`.
fn behaviour(key: &identity::Keypair, config: &NodeConfig, store: &Arc<NodeStore>) -> Behaviour {
    let rf = NonZeroUsize::new(config.replication_factor).unwrap_or(NonZeroUsize::MIN);
    let packet = config.max_record_bytes.saturating_add(PACKET_SLACK);
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
        // Writes arrive through the replication protocol; a Kademlia put from
        // elsewhere is merged by the network task, and lookups do not cache.
        .set_record_filtering(StoreInserts::FilterBoth)
        .set_caching(kad::Caching::Disabled)
        .set_query_timeout(Duration::from_secs(10))
        .set_periodic_bootstrap_interval(Some(Duration::from_secs(60)));
    let local = key.public().to_peer_id();
    let mut kad =
        kad::Behaviour::with_config(local, DhtStore::new(local, Arc::clone(store)), kad_config);
    kad.set_mode(Some(kad::Mode::Server));
    let codec = request_response::json::codec::Codec::default()
        .set_request_size_maximum(u64::try_from(packet).unwrap_or(u64::MAX));
    let replicate = request_response::Behaviour::with_codec(
        codec,
        [(REPLICATE_PROTOCOL, ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(PUSH_TIMEOUT)
            .with_max_concurrent_streams(REPLICATION_STREAMS),
    );
    Behaviour {
        kad,
        replicate,
        identify: identify::Behaviour::new(identify::Config::new(
            "/bzzz/1.0.0".into(),
            key.public(),
        )),
        ping: ping::Behaviour::default(),
    }
}

/// The TCP transport: TCP (no Nagle delay), then with a swarm key the private-network
/// handshake, then multistream-select, Noise and Yamux.
///
/// Built by hand because the builder's `with_tcp` cannot put the pre-shared key handshake
/// under Noise. Without a key this is the stack `with_tcp` builds.
fn tcp_transport(
    key: &identity::Keypair,
    swarm_key: Option<PreSharedKey>,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
    let noise = noise::Config::new(key)?;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let transport = match swarm_key {
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        // Every byte after the nonces is encrypted with the key: a peer without it (or
        // with another) sees noise where multistream-select should be, and the
        // connection fails before Noise, so it never becomes a peer.
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    Ok(transport)
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
    let swarm_key = config.swarm_key;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| tcp_transport(key, swarm_key))
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_dns()
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_behaviour(|key| behaviour(key, config, &store))
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
        catch_up: CatchUp::default(),
        catch_up_in_flight: 0,
        outbox: HashMap::new(),
        push_bytes: config.max_record_bytes,
        merges: FuturesUnordered::new(),
        inbound_bytes: 0,
        inbound_cap: config
            .max_record_bytes
            .saturating_mul(4)
            .max(INBOUND_MIN_CAP),
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
                    self.inbound_bytes = self.inbound_bytes.saturating_sub(size);
                    // Answer in the order merges settle; the pusher matches by request.
                    // The pusher may have gone; it gets the record through catch-up.
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .replicate
                        .send_response(channel, Pushed { stored, busy: false });
                }
                _ = tick.tick() => {
                    self.dial_bootstraps();
                    self.acknowledge_slow_writes();
                }
            }
            self.pump_catch_up();
            self.flush();
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
                for peer in &targets {
                    self.outbox.entry(*peer).or_default().push(Outgoing {
                        write: Some(write),
                        key,
                        record: value.clone(),
                    });
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
        while self.catch_up_in_flight < CATCH_UP_IN_FLIGHT {
            let Some((peer, key)) = self.catch_up.pop_front() else {
                break;
            };
            if !self.swarm.is_connected(&peer) {
                continue;
            }
            let Some(record) = self.store.by_key(&key) else {
                continue;
            };
            let Ok(record) = store::encode(&record) else {
                continue;
            };
            self.outbox.entry(peer).or_default().push(Outgoing {
                write: None,
                key,
                record,
            });
            self.catch_up_in_flight += 1;
        }
    }

    /// Sends what is queued for each peer: live writes first, in pushes of at most
    /// [`PUSH_RECORDS`] records and `push_bytes` bytes, then catch-up records in pushes of
    /// their own (at most [`CATCH_UP_PUSH_BYTES`]), so a write's acknowledgement never
    /// waits for a catch-up's merge.
    fn flush(&mut self) {
        for (peer, queued) in std::mem::take(&mut self.outbox) {
            let (live, catch_up): (Vec<Outgoing>, Vec<Outgoing>) =
                queued.into_iter().partition(|o| o.write.is_some());
            self.send_chunked(peer, live, self.push_bytes);
            self.send_chunked(peer, catch_up, self.push_bytes.min(CATCH_UP_PUSH_BYTES));
        }
    }

    fn send_chunked(&mut self, peer: PeerId, queued: Vec<Outgoing>, max_bytes: usize) {
        let mut records = Vec::new();
        let mut items = Vec::new();
        let mut bytes = 0;
        for out in queued {
            let size = out.record.get().len();
            if !records.is_empty() && (records.len() == PUSH_RECORDS || bytes + size > max_bytes) {
                self.send_push(
                    peer,
                    std::mem::take(&mut records),
                    std::mem::take(&mut items),
                );
                bytes = 0;
            }
            bytes += size;
            records.push(out.record);
            items.push((out.write, out.key));
        }
        if !records.is_empty() {
            self.send_push(peer, records, items);
        }
    }

    fn send_push(&mut self, peer: PeerId, records: Vec<Box<RawValue>>, items: Vec<PushedItem>) {
        let id = self
            .swarm
            .behaviour_mut()
            .replicate
            .send_request(&peer, Push { records });
        self.puts.insert(id, (peer, items));
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
        if !stored {
            // The peer missed it: it gets the record again through catch-up.
            self.catch_up.push((peer, key));
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

    fn replication(&mut self, event: request_response::Event<Push, Pushed>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.pushed_to_us(peer, &request, channel),
            request_response::Event::Message {
                message:
                    request_response::Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.push_answered(request_id, &response.stored, response.busy),
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "a push failed");
                self.push_answered(request_id, &[], true);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "a push from a peer failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// A peer pushed records: merge them, answer once every merge is durable (or refused).
    fn pushed_to_us(&mut self, peer: PeerId, push: &Push, channel: ResponseChannel<Pushed>) {
        let size: usize = push.records.iter().map(|r| r.get().len()).sum();
        if self.inbound_bytes > 0 && self.inbound_bytes.saturating_add(size) > self.inbound_cap {
            // Too much is being merged already (a slow disk): refuse at once rather than
            // queue without bound; the pusher sends it again later.
            metrics::counter!("bzzz_pushes_busy_total").increment(1);
            let _ = self.swarm.behaviour_mut().replicate.send_response(
                channel,
                Pushed {
                    stored: vec![false; push.records.len()],
                    busy: true,
                },
            );
            return;
        }
        self.inbound_bytes += size;
        let merges: Vec<_> = push
            .records
            .iter()
            .map(|record| {
                let merging = store::decode(record.get().as_bytes())
                    .map(|value| self.store.merge(&value.address, value.set));
                async move {
                    match merging {
                        Ok(merging) => merging.await,
                        Err(e) => Err(e),
                    }
                }
            })
            .collect();
        self.merges.push(Box::pin(async move {
            let stored = futures::future::join_all(merges)
                .await
                .into_iter()
                .map(|merged| match merged {
                    Ok(changed) => {
                        if changed {
                            tracing::debug!(%peer, "merged a replica from a peer");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "refused a record from a peer");
                        metrics::counter!("bzzz_records_refused_total").increment(1);
                        false
                    }
                })
                .collect();
            (channel, stored, size)
        }));
    }

    /// A Kademlia put from a peer. Not part of BZZZ replication (which has its own
    /// protocol): merged, but Kademlia has already answered.
    fn kad_put(&self, source: PeerId, record: &kad::Record) {
        match self.store.merge_dht(record.key.as_ref(), &record.value) {
            Ok(merging) => drop(merging),
            Err(e) => {
                tracing::warn!(peer = %source, error = %e, "refused a Kademlia record");
                metrics::counter!("bzzz_records_refused_total").increment(1);
            }
        }
    }

    /// A push of ours was answered (`stored` per record) or failed (empty: none stored).
    /// `again`: the peer was busy or did not answer, so catch-up records not stored are
    /// queued again (a record the peer refused is not).
    fn push_answered(&mut self, id: OutboundRequestId, stored: &[bool], again: bool) {
        let Some((peer, items)) = self.puts.remove(&id) else {
            return;
        };
        for (i, (write, key)) in items.into_iter().enumerate() {
            let stored = stored.get(i).copied().unwrap_or(false);
            if let Some(write) = write {
                self.push_ended(write, peer, key, stored);
            } else {
                self.catch_up_in_flight = self.catch_up_in_flight.saturating_sub(1);
                if !stored {
                    tracing::debug!(%peer, again, "a catch-up record was not stored");
                    if again && self.swarm.is_connected(&peer) {
                        self.catch_up.push((peer, key));
                    }
                }
            }
        }
    }

    fn query_progressed(&mut self, id: QueryId, result: QueryResult, last: bool) {
        match result {
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
