//! Node configuration from the environment (SPEC §9). Every problem is reported at once,
//! before anything binds.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::pnet::PreSharedKey;

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
    /// `BZZZ_FEED_RETAIN`: change feed entries kept (default 100000).
    pub feed_retain: u64,
    /// `BZZZ_FEED_HEARTBEAT_MS`: how long a watch stream stays silent before a heartbeat
    /// line (default 15000).
    pub feed_heartbeat: Duration,
    /// `BZZZ_API_TOKEN`: when set, every route but `/health` and `/metrics` needs
    /// `Authorization: Bearer <token>`.
    pub api_token: Option<ApiToken>,
    /// `BZZZ_SWARM_KEY` or `BZZZ_SWARM_KEY_FILE`: the pre-shared key of a private libp2p
    /// network; peers without it cannot connect.
    pub swarm_key: Option<PreSharedKey>,
    /// `BZZZ_TLS_CERT`, `BZZZ_TLS_KEY` and optionally `BZZZ_TLS_CLIENT_CA`: serve the API
    /// over HTTPS (and require client certificates signed by the CA: mTLS).
    pub tls: Option<ucxl_service::tls::TlsFiles>,
}

/// Shortest accepted API token: 16 characters (`openssl rand -hex 32` gives 64).
pub const API_TOKEN_MIN_LEN: usize = 16;
/// Longest accepted API token, so the `Authorization` header stays small.
pub const API_TOKEN_MAX_LEN: usize = 4096;
/// The first line of a go-ipfs `swarm.key` file.
pub const SWARM_KEY_HEADER: &str = "/key/swarm/psk/1.0.0/";
/// Largest swarm key file read (the text form is under 100 bytes).
const SWARM_KEY_FILE_MAX: u64 = 4096;

/// The cluster API token. Its `Debug` never shows it, so configuration dumps and logs
/// cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    /// Validates a token: [`API_TOKEN_MIN_LEN`]..=[`API_TOKEN_MAX_LEN`] printable ASCII
    /// characters without spaces, so it fits an `Authorization` header unchanged.
    ///
    /// # Errors
    /// [`TokenError`]; its message never contains the token.
    pub fn new(token: &str) -> Result<Self, TokenError> {
        let len = token.len();
        if let Some(position) = token.bytes().position(|b| !b.is_ascii_graphic()) {
            return Err(TokenError::Character { position });
        }
        if !(API_TOKEN_MIN_LEN..=API_TOKEN_MAX_LEN).contains(&len) {
            return Err(TokenError::Length { len });
        }
        Ok(Self(token.to_owned()))
    }

    /// The token itself, for comparison.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

/// Why an API token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Too short or too long.
    #[error("is {len} characters long; it needs {API_TOKEN_MIN_LEN}..={API_TOKEN_MAX_LEN}")]
    Length {
        /// Its length in bytes.
        len: usize,
    },
    /// A space, control or non-ASCII character.
    #[error(
        "has a space, control or non-ASCII character at byte {position}; only printable ASCII without spaces is accepted"
    )]
    Character {
        /// Byte offset of the first such character.
        position: usize,
    },
}

/// Why a swarm key is refused. Messages never contain the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwarmKeyError {
    /// Neither 64 hex characters nor the `swarm.key` text form.
    #[error(
        "is neither 64 hex characters nor a swarm.key text ({SWARM_KEY_HEADER}, /base16/, 64 hex characters)"
    )]
    Format,
    /// The text form names another encoding than base16.
    #[error("uses encoding {0:?}; only /base16/ is supported")]
    Encoding(String),
    /// The key is not 64 hex characters.
    #[error("the key is not 64 hex characters (32 bytes)")]
    Hex,
}

/// Parses a swarm key: 64 hex characters, or the go-ipfs `swarm.key` text
/// (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex characters, one per line).
///
/// Parsed here rather than with `PreSharedKey::from_str`, which slices the text by byte
/// offsets and would panic on multi-byte characters.
///
/// # Errors
/// [`SwarmKeyError`].
pub fn parse_swarm_key(text: &str) -> Result<PreSharedKey, SwarmKeyError> {
    let text = text.trim();
    let hex_key = if text.starts_with(SWARM_KEY_HEADER) {
        let mut lines = text.lines().map(str::trim);
        let (Some(SWARM_KEY_HEADER), Some(encoding), Some(key), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(SwarmKeyError::Format);
        };
        if encoding != "/base16/" {
            return Err(SwarmKeyError::Encoding(encoding.chars().take(32).collect()));
        }
        key
    } else if text.len() == 64 {
        text
    } else {
        return Err(SwarmKeyError::Format);
    };
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).map_err(|_| SwarmKeyError::Hex)?;
    Ok(PreSharedKey::new(key))
}

/// Reads a swarm key file (either form), refusing files larger than a key file can be.
fn read_swarm_key_file(path: &Path) -> Result<PreSharedKey, String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(SWARM_KEY_FILE_MAX + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.len() as u64 > SWARM_KEY_FILE_MAX {
        return Err(format!(
            "{} is larger than {SWARM_KEY_FILE_MAX} bytes; a swarm key file is under 100",
            path.display()
        ));
    }
    parse_swarm_key(&text).map_err(|e| format!("{}: {e}", path.display()))
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
        let feed_retain = r.number(
            "BZZZ_FEED_RETAIN",
            crate::feed::DEFAULT_RETAIN,
            1,
            1_000_000_000,
        );
        let feed_heartbeat = r.number("BZZZ_FEED_HEARTBEAT_MS", 15_000, 10, 3_600_000);
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
        let api_token = r.api_token();
        let swarm_key = r.swarm_key();
        let tls = r.tls();
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
                feed_retain,
                feed_heartbeat: Duration::from_millis(feed_heartbeat),
                api_token,
                swarm_key,
                tls,
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
    /// The TLS files: a certificate and key together, a client CA only with them.
    fn tls(&mut self) -> Option<ucxl_service::tls::TlsFiles> {
        let path = |key: &str| {
            Some(self.text(key, ""))
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let (cert, key, ca) = (
            path("BZZZ_TLS_CERT"),
            path("BZZZ_TLS_KEY"),
            path("BZZZ_TLS_CLIENT_CA"),
        );
        match (cert, key) {
            (Some(cert), Some(key)) => Some(ucxl_service::tls::TlsFiles {
                cert,
                key,
                client_ca: ca,
            }),
            (None, None) => {
                if ca.is_some() {
                    self.problems
                        .push("BZZZ_TLS_CLIENT_CA: needs BZZZ_TLS_CERT and BZZZ_TLS_KEY".into());
                }
                None
            }
            _ => {
                self.problems
                    .push("BZZZ_TLS_CERT, BZZZ_TLS_KEY: set together or not at all".into());
                None
            }
        }
    }
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

    /// `BZZZ_API_TOKEN`; empty is unset. Problems never quote the token.
    fn api_token(&mut self) -> Option<ApiToken> {
        let token = self.text("BZZZ_API_TOKEN", "");
        if token.is_empty() {
            return None;
        }
        ApiToken::new(&token)
            .inspect_err(|e| self.problems.push(format!("BZZZ_API_TOKEN: {e}")))
            .ok()
    }

    /// `BZZZ_SWARM_KEY` or `BZZZ_SWARM_KEY_FILE` (not both); empty is unset.
    fn swarm_key(&mut self) -> Option<PreSharedKey> {
        let key = self.text("BZZZ_SWARM_KEY", "");
        let file = self.text("BZZZ_SWARM_KEY_FILE", "");
        let parsed = match (key.is_empty(), file.is_empty()) {
            (true, true) => return None,
            (false, false) => Err(
                "BZZZ_SWARM_KEY and BZZZ_SWARM_KEY_FILE are both set; set one of them".to_owned(),
            ),
            (false, true) => parse_swarm_key(&key).map_err(|e| format!("BZZZ_SWARM_KEY: {e}")),
            (true, false) => read_swarm_key_file(Path::new(&file))
                .map_err(|e| format!("BZZZ_SWARM_KEY_FILE: {e}")),
        };
        parsed.inspect_err(|e| self.problems.push(e.clone())).ok()
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
        assert_eq!(c.feed_retain, 100_000);
        assert_eq!(c.feed_heartbeat, Duration::from_secs(15));
    }

    #[test]
    fn the_feed_window_and_heartbeat_are_bounded() {
        let c = NodeConfig::from_env(&env(&[
            ("BZZZ_FEED_RETAIN", "3"),
            ("BZZZ_FEED_HEARTBEAT_MS", "250"),
        ]))
        .expect("valid");
        assert_eq!(
            (c.feed_retain, c.feed_heartbeat),
            (3, Duration::from_millis(250))
        );
        let p = key_problems(&[
            ("BZZZ_FEED_RETAIN", "0"),
            ("BZZZ_FEED_HEARTBEAT_MS", "soon"),
        ]);
        assert_eq!(p.len(), 2, "{p:?}");
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

    const HEX_KEY: &str = "4f9c2a1b0d3e5f67788990aabbccddeeff00112233445566778899aabbccddee";

    fn key_problems(pairs: &[(&str, &str)]) -> Vec<String> {
        NodeConfig::from_env(&env(pairs)).expect_err("invalid")
    }

    #[test]
    fn no_token_and_no_swarm_key_by_default() {
        let c = NodeConfig::from_env(&env(&[
            ("BZZZ_API_TOKEN", "  "),
            ("BZZZ_SWARM_KEY", ""),
            ("BZZZ_SWARM_KEY_FILE", ""),
        ]))
        .expect("valid");
        assert_eq!(c.api_token, None);
        assert_eq!(c.swarm_key, None);
    }

    #[test]
    fn api_tokens_are_validated_without_quoting_them() {
        let good = "Zm9v-YmFy_0123456789.~+/=";
        let c = NodeConfig::from_env(&env(&[("BZZZ_API_TOKEN", good)])).expect("valid");
        assert_eq!(c.api_token.as_ref().map(ApiToken::expose), Some(good));
        assert_eq!(format!("{:?}", c.api_token), "Some(ApiToken(***))");
        for (bad, why) in [
            ("short-token-15c", "15 characters"),
            ("sixteen chars ok", "byte 7"),
            ("sixteen-chars-\u{e9}k", "byte 14"),
            ("tab\tinside-the-token", "byte 3"),
        ] {
            let p = key_problems(&[("BZZZ_API_TOKEN", bad)]);
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(
                p[0].starts_with("BZZZ_API_TOKEN: ") && p[0].contains(why),
                "{p:?}"
            );
            assert!(!p[0].contains(bad), "the token is not quoted: {p:?}");
        }
        let p = key_problems(&[("BZZZ_API_TOKEN", &"x".repeat(4097))]);
        assert!(p[0].contains("4097 characters"), "{p:?}");
        assert!(ApiToken::new(&"x".repeat(4096)).is_ok());
        assert!(ApiToken::new(&"x".repeat(16)).is_ok());
    }

    #[test]
    fn swarm_keys_in_hex_and_in_swarm_key_form_are_the_same_key() {
        let hex = NodeConfig::from_env(&env(&[("BZZZ_SWARM_KEY", HEX_KEY)]))
            .expect("valid")
            .swarm_key
            .expect("set");
        let upper = parse_swarm_key(&HEX_KEY.to_ascii_uppercase()).expect("valid");
        let text = format!("/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\n");
        let file_form = parse_swarm_key(&text).expect("valid");
        let crlf = parse_swarm_key(&text.replace('\n', "\r\n")).expect("valid");
        assert_eq!(hex, upper);
        assert_eq!(hex, file_form);
        assert_eq!(hex, crlf);
        // libp2p's own writer and reader agree with this parser.
        assert_eq!(hex.to_string(), text);
        assert_eq!(text.parse::<PreSharedKey>().ok(), Some(hex));
    }

    #[test]
    fn bad_swarm_keys_are_configuration_problems_that_never_quote_the_key() {
        let mut wrong_char = HEX_KEY.to_owned();
        wrong_char.replace_range(10..12, "zz");
        // 64 bytes of two-byte characters: libp2p's parser would panic slicing it.
        let multibyte = "\u{e9}".repeat(32);
        for (bad, error) in [
            (wrong_char.clone(), SwarmKeyError::Hex),
            (HEX_KEY[..62].to_owned(), SwarmKeyError::Format),
            (format!("{HEX_KEY}00"), SwarmKeyError::Format),
            (multibyte, SwarmKeyError::Hex),
            ("\u{e9}".repeat(31) + "00", SwarmKeyError::Hex),
            ("\u{e9}".repeat(31) + "0", SwarmKeyError::Format),
            (
                format!("/key/swarm/psk/1.0.0/\n/base64/\n{HEX_KEY}"),
                SwarmKeyError::Encoding("/base64/".into()),
            ),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{wrong_char}"),
                SwarmKeyError::Hex,
            ),
            (
                "/key/swarm/psk/1.0.0/\n/base16/".to_owned(),
                SwarmKeyError::Format,
            ),
            (
                format!("/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\nmore"),
                SwarmKeyError::Format,
            ),
        ] {
            assert_eq!(parse_swarm_key(&bad), Err(error), "{bad:?}");
            let p = key_problems(&[("BZZZ_SWARM_KEY", &bad)]);
            assert_eq!(p.len(), 1, "{p:?}");
            assert!(p[0].starts_with("BZZZ_SWARM_KEY: "), "{p:?}");
            assert!(!p[0].contains(&wrong_char), "the key is not quoted: {p:?}");
        }
    }

    #[test]
    fn swarm_key_files_hold_either_form() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = dir.path().join("swarm.key");
        std::fs::write(
            &text,
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{HEX_KEY}\n"),
        )
        .expect("written");
        let hex = dir.path().join("swarm.hex");
        std::fs::write(&hex, format!("{HEX_KEY}\n")).expect("written");
        let expected = parse_swarm_key(HEX_KEY).expect("valid");
        for file in [&text, &hex] {
            let c = NodeConfig::from_env(&env(&[(
                "BZZZ_SWARM_KEY_FILE",
                file.to_str().expect("utf-8 path"),
            )]))
            .expect("valid");
            assert_eq!(c.swarm_key, Some(expected));
        }

        let missing = dir.path().join("missing.key");
        let p = key_problems(&[("BZZZ_SWARM_KEY_FILE", missing.to_str().expect("utf-8"))]);
        assert!(
            p[0].starts_with("BZZZ_SWARM_KEY_FILE: cannot read"),
            "{p:?}"
        );
        let big = dir.path().join("big.key");
        std::fs::write(&big, "0".repeat(5000)).expect("written");
        let p = key_problems(&[("BZZZ_SWARM_KEY_FILE", big.to_str().expect("utf-8"))]);
        assert!(p[0].contains("larger than 4096 bytes"), "{p:?}");
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "not a key").expect("written");
        let p = key_problems(&[("BZZZ_SWARM_KEY_FILE", bad.to_str().expect("utf-8"))]);
        assert!(p[0].contains("is neither 64 hex characters"), "{p:?}");
    }

    #[test]
    fn a_swarm_key_in_both_variables_is_a_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("swarm.key");
        std::fs::write(&file, HEX_KEY).expect("written");
        let p = key_problems(&[
            ("BZZZ_SWARM_KEY", HEX_KEY),
            ("BZZZ_SWARM_KEY_FILE", file.to_str().expect("utf-8")),
            ("BZZZ_API_TOKEN", "short"),
        ]);
        assert_eq!(p.len(), 2, "every problem is reported: {p:?}");
        assert!(p.iter().any(|m| m.contains("both set")), "{p:?}");
    }
}
