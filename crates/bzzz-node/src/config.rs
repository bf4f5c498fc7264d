//! Node configuration from the environment (SPEC §9). Every problem is reported at once,
//! before anything binds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// How a node is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// `BZZZ_HTTP_ADDR`: where the UCXI API listens (default `0.0.0.0:8080`).
    pub http_addr: SocketAddr,
    /// `BZZZ_P2P_ADDR`: the libp2p listen multiaddr (default `/ip4/0.0.0.0/tcp/4001`).
    pub p2p_addr: Multiaddr,
    /// `BZZZ_BOOTSTRAP_PEERS`: comma-separated multiaddrs, `/p2p/<id>` optional.
    pub bootstrap: Vec<Multiaddr>,
    /// `BZZZ_DATA_DIR`: records and the node key (default `./data/bzzz`).
    pub data_dir: PathBuf,
    /// `BZZZ_REPLICATION_FACTOR`: copies of each record (default 3).
    pub replication_factor: usize,
    /// `BZZZ_NODE_NAME`: a name for logs and status (default `bzzz`).
    pub node_name: String,
    /// `BZZZ_MAX_BODY_BYTES`: largest request body (default 1 MiB plus envelope room).
    pub max_body_bytes: usize,
    /// `BZZZ_MAX_RECORD_BYTES`: largest version set of one address (default 16 MiB).
    pub max_record_bytes: usize,
    /// `BZZZ_REQUEST_TIMEOUT_MS`: deadline of one request (default 5000);
    /// `X-Request-Timeout-Ms` may lower it.
    pub request_timeout: Duration,
    /// `BZZZ_LOG_FORMAT`: `json` (default) or `pretty`.
    pub log_json: bool,
}

impl NodeConfig {
    /// Reads the configuration from environment variables.
    ///
    /// # Errors
    /// One message per problem.
    pub fn from_env(env: &HashMap<String, String>) -> Result<Self, Vec<String>> {
        let mut r = Reader {
            env,
            problems: Vec::new(),
        };
        let http_addr = r.parse::<SocketAddr>(
            "BZZZ_HTTP_ADDR",
            "0.0.0.0:8080",
            "is not a HOST:PORT socket address",
        );
        let p2p_addr = r.parse::<Multiaddr>(
            "BZZZ_P2P_ADDR",
            "/ip4/0.0.0.0/tcp/4001",
            "is not a multiaddr",
        );
        let mut bootstrap = Vec::new();
        for item in r
            .text("BZZZ_BOOTSTRAP_PEERS", "")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            match item.parse::<Multiaddr>() {
                Ok(addr) => bootstrap.push(addr),
                Err(_) => r
                    .problems
                    .push(format!("BZZZ_BOOTSTRAP_PEERS: {item:?} is not a multiaddr")),
            }
        }
        let replication_factor = r.number("BZZZ_REPLICATION_FACTOR", 3, 1, 20);
        let max_body_bytes = r.number("BZZZ_MAX_BODY_BYTES", 2 << 20, 1, 1 << 30);
        let max_record_bytes = r.number("BZZZ_MAX_RECORD_BYTES", 16 << 20, 1024, 1 << 30);
        let request_timeout = r.number("BZZZ_REQUEST_TIMEOUT_MS", 5000, 1, 600_000);
        let log_json = match r
            .text("BZZZ_LOG_FORMAT", "json")
            .to_ascii_lowercase()
            .as_str()
        {
            "json" => true,
            "pretty" => false,
            other => {
                r.problems.push(format!(
                    "BZZZ_LOG_FORMAT: {other:?} is not one of json, pretty"
                ));
                true
            }
        };
        let data_dir = PathBuf::from(r.text("BZZZ_DATA_DIR", "./data/bzzz"));
        let node_name = r.text("BZZZ_NODE_NAME", "bzzz");
        match (http_addr, p2p_addr) {
            (Some(http_addr), Some(p2p_addr)) if r.problems.is_empty() => Ok(Self {
                http_addr,
                p2p_addr,
                bootstrap,
                data_dir,
                replication_factor,
                node_name,
                max_body_bytes,
                max_record_bytes,
                request_timeout: Duration::from_millis(request_timeout),
                log_json,
            }),
            _ => Err(r.problems),
        }
    }

    /// Copies a write needs, the local one included: a majority of the replication factor.
    #[must_use]
    pub fn write_majority(&self) -> usize {
        self.replication_factor / 2 + 1
    }
}

/// Reads variables, collecting a message per problem.
struct Reader<'a> {
    env: &'a HashMap<String, String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    fn text(&self, key: &str, default: &str) -> String {
        self.env
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
            .to_owned()
    }

    fn parse<T: std::str::FromStr>(&mut self, key: &str, default: &str, what: &str) -> Option<T> {
        let value = self.text(key, default);
        let parsed = value.parse::<T>().ok();
        if parsed.is_none() {
            self.problems.push(format!("{key}: {value:?} {what}"));
        }
        parsed
    }

    fn number<T: TryFrom<u64> + Copy>(&mut self, key: &str, default: T, min: u64, max: u64) -> T {
        let value = self.text(key, "");
        if value.is_empty() {
            return default;
        }
        if let Some(n) = value
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
        {
            n
        } else {
            self.problems.push(format!(
                "{key}: {value:?} is not an integer in {min}..={max}"
            ));
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = NodeConfig::from_env(&env(&[])).expect("valid");
        assert_eq!(c.http_addr.port(), 8080);
        assert_eq!(c.p2p_addr.to_string(), "/ip4/0.0.0.0/tcp/4001");
        assert!(c.bootstrap.is_empty());
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.write_majority(), 2);
    }

    #[test]
    fn bootstrap_peers_with_and_without_ids() {
        let c = NodeConfig::from_env(&env(&[(
            "BZZZ_BOOTSTRAP_PEERS",
            "/dns4/bzzz-1/tcp/4001, /ip4/10.0.0.2/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        )]))
        .expect("valid");
        assert_eq!(c.bootstrap.len(), 2);
    }

    #[test]
    fn every_problem_is_reported() {
        let p = NodeConfig::from_env(&env(&[
            ("BZZZ_HTTP_ADDR", "nowhere"),
            ("BZZZ_P2P_ADDR", "tcp:4001"),
            ("BZZZ_BOOTSTRAP_PEERS", "/dns4/ok/tcp/1,garbage"),
            ("BZZZ_REPLICATION_FACTOR", "0"),
            ("BZZZ_LOG_FORMAT", "xml"),
        ]))
        .expect_err("invalid");
        assert_eq!(p.len(), 5, "{p:?}");
    }
}
