//! The swarm itself: the node's identity key, the transport (TCP, the private-network
//! handshake when there is a swarm key, Noise, Yamux), the behaviours it runs, and the
//! listener.

use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::core::Transport as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::kad::{self, StoreInserts};
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, identify, identity, noise, ping, tcp, yamux,
};

use super::P2pError;
use super::replication::{PUSH_TIMEOUT, Push, Pushed, REPLICATE_PROTOCOL, REPLICATION_STREAMS};
use crate::config::NodeConfig;
use crate::dht::DhtStore;
use crate::store::NodeStore;

/// The Kademlia protocol of BZZZ clusters.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/bzzz/kad/1.0.0");
/// Largest Kademlia message: a version set of `BZZZ_MAX_RECORD_BYTES` plus framing.
const PACKET_SLACK: usize = 64 * 1024;

/// The swarm's behaviours.
#[derive(NetworkBehaviour)]
#[allow(missing_debug_implementations)] // libp2p's behaviours do not all implement Debug
pub struct Behaviour {
    pub(super) kad: kad::Behaviour<DhtStore>,
    pub(super) replicate: request_response::json::Behaviour<Push, Pushed>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
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
pub(super) fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        libp2p::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
        libp2p::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
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

/// Builds the swarm of a node and starts listening on its p2p address.
///
/// # Errors
/// [`P2pError`] when the key, transport or listener fails.
pub(super) fn build(
    config: &NodeConfig,
    store: &Arc<NodeStore>,
) -> Result<(Swarm<Behaviour>, PeerId), P2pError> {
    let key = load_or_create_key(&config.data_dir)?;
    let peer_id = key.public().to_peer_id();
    let swarm_key = config.swarm_key;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_other_transport(|key| tcp_transport(key, swarm_key))
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_dns()
        .map_err(|e| P2pError::Build(e.to_string()))?
        .with_behaviour(|key| behaviour(key, config, store))
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
    Ok((swarm, peer_id))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use libp2p::swarm::{SwarmEvent, dummy};

    use super::*;

    #[test]
    fn loopback_addresses_are_recognised() {
        for (addr, loopback) in [
            ("/ip4/127.0.0.1/tcp/4001", true),
            ("/ip4/127.8.9.10/tcp/4001", true),
            ("/ip6/::1/tcp/4001", true),
            ("/ip4/10.0.0.2/tcp/4001", false),
            ("/ip4/0.0.0.0/tcp/4001", false),
            ("/ip6/fe80::1/tcp/4001", false),
            ("/dns4/localhost/tcp/4001", false),
        ] {
            let parsed: Multiaddr = addr.parse().expect("a multiaddr");
            assert_eq!(is_loopback(&parsed), loopback, "{addr}");
        }
    }

    #[test]
    fn the_node_key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let data = dir.path().join("data");
        let first = load_or_create_key(&data).expect("created");
        let again = load_or_create_key(&data).expect("read back");
        assert_eq!(
            first.public(),
            again.public(),
            "the peer id survives restarts"
        );
        assert!(!data.join("node.key.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join("node.key"))
                .expect("the key file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "readable by the node's user only");
        }
    }

    #[test]
    fn a_node_key_that_does_not_decode_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join("node.key"), b"not a key").expect("written");
        match load_or_create_key(dir.path()) {
            Err(P2pError::Key { path, .. }) => assert!(path.ends_with("node.key"), "{path}"),
            other => panic!("expected a key error, got {other:?}"),
        }
    }

    fn psk(byte: u8) -> PreSharedKey {
        PreSharedKey::new([byte; 32])
    }

    /// A swarm with the node's transport and nothing else on top.
    fn swarm(swarm_key: Option<PreSharedKey>) -> Swarm<dummy::Behaviour> {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| tcp_transport(key, swarm_key))
            .expect("a transport")
            .with_behaviour(|_| dummy::Behaviour)
            .expect("a behaviour")
            .build()
    }

    /// A swarm with `listener_key` listening on loopback, and its address.
    async fn listening(listener_key: Option<PreSharedKey>) -> (Swarm<dummy::Behaviour>, Multiaddr) {
        let mut listener = swarm(listener_key);
        listener
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr"))
            .expect("listening");
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = listener.select_next_some().await {
                return (listener, address);
            }
        }
    }

    /// Whether a node with `dialer_key` reaches one with `listener_key`: waits until the
    /// connection is established or fails.
    async fn connects(
        listener_key: Option<PreSharedKey>,
        dialer_key: Option<PreSharedKey>,
    ) -> bool {
        let (mut listener, addr) = listening(listener_key).await;
        let mut dialer = swarm(dialer_key);
        dialer.dial(addr).expect("dialling");
        loop {
            tokio::select! {
                event = dialer.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => return true,
                    SwarmEvent::OutgoingConnectionError { .. } => return false,
                    _ => {}
                },
                _ = listener.select_next_some() => {}
            }
        }
    }

    /// Whether an outsider with `outsider_key` joins a node with `listener_key`. A key
    /// mismatch can stall a handshake (garbage read as a frame length) rather than fail it,
    /// so the outsider's dial is not waited for: a control node with the listener's key
    /// dials once the listener has taken the outsider's connection, and when the control
    /// is in, the outsider, with the same handshake and a head start, had every chance.
    async fn outsider_joins(
        listener_key: Option<PreSharedKey>,
        outsider_key: Option<PreSharedKey>,
    ) -> bool {
        let (mut listener, addr) = listening(listener_key).await;
        let mut outsider = swarm(outsider_key);
        let mut control = swarm(listener_key);
        let outsider_id = *outsider.local_peer_id();
        outsider.dial(addr.clone()).expect("dialling");
        let mut control_dialled = false;
        let mut joined = false;
        loop {
            tokio::select! {
                event = listener.select_next_some() => match event {
                    SwarmEvent::IncomingConnection { .. } if !control_dialled => {
                        control.dial(addr.clone()).expect("dialling");
                        control_dialled = true;
                    }
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == outsider_id => {
                        joined = true;
                    }
                    _ => {}
                },
                event = outsider.select_next_some() => {
                    if matches!(event, SwarmEvent::ConnectionEstablished { .. }) {
                        joined = true;
                    }
                }
                event = control.select_next_some() => match event {
                    SwarmEvent::ConnectionEstablished { .. } => return joined,
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        panic!("the control did not connect: {error}")
                    }
                    _ => {}
                },
            }
        }
    }

    /// Fails a test that hangs instead (no outcome is waited for this long).
    async fn guarded<T>(test: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), test)
            .await
            .expect("settled long before the guard")
    }

    #[tokio::test]
    async fn nodes_with_the_same_swarm_key_connect() {
        assert!(guarded(connects(Some(psk(7)), Some(psk(7)))).await);
    }

    #[tokio::test]
    async fn nodes_without_a_swarm_key_connect() {
        assert!(guarded(connects(None, None)).await);
    }

    #[tokio::test]
    async fn a_node_with_another_swarm_key_never_joins() {
        assert!(!guarded(outsider_joins(Some(psk(7)), Some(psk(8)))).await);
    }

    #[tokio::test]
    async fn a_node_without_the_swarm_key_never_joins() {
        assert!(!guarded(outsider_joins(Some(psk(7)), None)).await);
    }

    #[tokio::test]
    async fn a_node_with_a_swarm_key_never_joins_an_open_network() {
        assert!(!guarded(outsider_joins(None, Some(psk(7)))).await);
    }
}
