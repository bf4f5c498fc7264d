//! Gateway configuration (SPEC §10): the validated [`Config`] and the types of its values.
//! The settings catalogue is `settings`, where values come from and how they are parsed
//! `sources`, the command line `cli`.

mod cli;
mod settings;
mod sources;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

pub use cli::{AuthCommand, Cli, Command};
pub use settings::{SETTINGS, Setting};
pub use sources::{ConfigProblems, Sources};

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;
/// Room an envelope answer needs beyond its content (the other fields and the UCXL frame).
pub const ANSWER_OVERHEAD_BYTES: usize = 64 << 10;

/// The backend the gateway serves from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BackendMode {
    /// The in-process local backend only.
    Mock,
    /// The BZZZ endpoints only.
    Real,
    /// The BZZZ endpoints, falling back to the local backend and journal.
    Hybrid,
}

impl BackendMode {
    /// The mode's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Real => "real",
            Self::Hybrid => "hybrid",
        }
    }
}

impl fmt::Display for BackendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mock" => Ok(Self::Mock),
            "real" => Ok(Self::Real),
            "hybrid" => Ok(Self::Hybrid),
            _ => Err("is not one of mock, real, hybrid".into()),
        }
    }
}

/// Where the local store keeps the data it holds as the only copy (mock mode's data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LocalStorage {
    /// On disk under `RUSTLE_DATA_DIR`, durable before a write is answered, loaded at start.
    Disk,
    /// In memory only: lost when the gateway stops (tests, throwaway runs).
    Memory,
}

impl FromStr for LocalStorage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disk" => Ok(Self::Disk),
            "memory" => Ok(Self::Memory),
            _ => Err("is not one of disk, memory".into()),
        }
    }
}

/// Whether callers must authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every data and admin request needs an API key, a JWT or the admin token.
    Required,
    /// Callers are anonymous (every data operation allowed); the admin API still needs the
    /// admin token.
    None,
}

impl FromStr for AuthMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "required" => Ok(Self::Required),
            "none" => Ok(Self::None),
            _ => Err("is not one of required, none".into()),
        }
    }
}

/// Where audit records go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditSink {
    /// Standard output, beside the logs (records carry `"audit": true`).
    Stdout,
    /// Appended to this file.
    File(PathBuf),
    /// Not written (not recommended).
    Off,
}

impl FromStr for AuditSink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" => Err("is empty (a file path, stdout or off)".into()),
            "stdout" | "-" => Ok(Self::Stdout),
            "off" => Ok(Self::Off),
            path => Ok(Self::File(PathBuf::from(path))),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured when a terminal.
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            _ => Err("is not one of json, pretty".into()),
        }
    }
}

/// An http(s) URL of a BZZZ node: no user-info, query or fragment; no trailing slash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EndpointUrl(String);

impl EndpointUrl {
    /// The URL text (no trailing slash).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EndpointUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = url::Url::parse(s.trim()).map_err(|_| "is not an http(s) URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
            return Err("is not an http(s) URL".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not carry credentials".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must not have a query or fragment".into());
        }
        Ok(Self(url.as_str().trim_end_matches('/').to_owned()))
    }
}

/// The browser origins allowed to call the API across origins (CORS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CorsOrigins {
    /// None: no CORS headers, so browsers refuse cross-origin calls (the default).
    #[default]
    None,
    /// Every origin (`*`).
    Any,
    /// These origins, as browsers send them in `Origin` (see [`parse_origin`]).
    List(Vec<String>),
}

impl Serialize for CorsOrigins {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::None => serializer.collect_seq(std::iter::empty::<&str>()),
            Self::Any => serializer.serialize_str("*"),
            Self::List(origins) => serializer.collect_seq(origins),
        }
    }
}

/// An origin as browsers send it in `Origin` and compare it in CORS: `scheme://host[:port]`
/// with the host in lowercase ASCII (an international name in its punycode form) and the
/// scheme's default port left out. A trailing `/` is accepted and dropped.
///
/// # Errors
/// Anything but an http(s) origin: a path, query, fragment or credentials, a wildcard.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let text = text.trim();
    let url = url::Url::parse(text).map_err(|_| {
        "is not an origin: scheme://host[:port], such as https://app.example.com".to_owned()
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err("is not an http(s) origin (scheme://host[:port])".into());
    }
    if url.host_str().is_some_and(|h| h.contains('*')) {
        return Err("has a wildcard: list each origin, or give * alone for every origin".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "is not an origin: only scheme://host[:port], without a path, query or fragment".into(),
        );
    }
    Ok(url.origin().ascii_serialization())
}

/// A secret whose `Debug` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret text.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

/// Retry policy (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryConfig {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff step.
    #[serde(with = "millis")]
    pub backoff_base: Duration,
    /// Backoff cap.
    #[serde(with = "millis")]
    pub backoff_max: Duration,
    /// Retries may add this share of the request rate (percent).
    pub budget_percent: u32,
    /// Retries always allowed per second.
    pub budget_min_per_sec: u32,
}

/// Circuit-breaker policy (SPEC §7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure rate over the window that opens it (percent).
    pub failure_rate_percent: u32,
    /// Calls in the window.
    pub window: u32,
    /// Calls needed before the rate counts.
    pub min_calls: u32,
    /// First open period.
    #[serde(with = "millis")]
    pub open: Duration,
    /// Longest open period.
    #[serde(with = "millis")]
    pub open_max: Duration,
    /// Half-open probes (and successes needed to close).
    pub half_open_probes: u32,
}

/// What the HTTP layers around the routes do (built once, at start).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpLayers {
    /// Browser origins allowed to call the API (CORS).
    pub cors_allowed_origins: CorsOrigins,
    /// How long a browser may reuse a preflight answer.
    #[serde(with = "secs")]
    pub cors_max_age: Duration,
    /// Answers at least this large are compressed when the client accepts it; 0 = never.
    pub compression_min_bytes: u64,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Address to listen on (port 0 picks a free port).
    pub listen_addr: SocketAddr,
    /// Backend mode.
    pub backend_mode: BackendMode,
    /// BZZZ node URLs.
    pub bzzz_endpoints: Vec<EndpointUrl>,
    /// Deadline of one request.
    #[serde(with = "millis")]
    pub request_timeout: Duration,
    /// Timeout of one attempt.
    #[serde(with = "millis")]
    pub attempt_timeout: Duration,
    /// TCP connect timeout.
    #[serde(with = "millis")]
    pub connect_timeout: Duration,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Health check period.
    #[serde(with = "millis")]
    pub health_interval: Duration,
    /// Health check timeout.
    #[serde(with = "millis")]
    pub health_timeout: Duration,
    /// Breaker policy.
    pub breaker: BreakerConfig,
    /// The gateway's data directory (the durable local store; the journal by default).
    pub data_dir: PathBuf,
    /// Where the local store keeps what it holds as the only copy.
    pub local_store: LocalStorage,
    /// Journal directory.
    pub journal_dir: PathBuf,
    /// Versions the local store holds at most.
    pub cache_max_entries: usize,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Largest node answer about one envelope, in bytes (list answers: 8 times more).
    pub max_answer_bytes: usize,
    /// Time a client has to send a whole request head (slowloris and idle connections).
    #[serde(with = "millis")]
    pub client_header_timeout: Duration,
    /// CORS and compression.
    #[serde(flatten)]
    pub http: HttpLayers,
    /// Requests in flight before shedding.
    pub max_in_flight: usize,
    /// Concurrent watch streams.
    pub max_watches: usize,
    /// Events queued per watcher before it is dropped as too slow.
    pub watch_buffer: usize,
    /// Silence after which a watch stream sends a keep-alive comment.
    #[serde(with = "millis")]
    pub watch_heartbeat: Duration,
    /// Changes remembered for resuming and once-only delivery.
    pub watch_history: usize,
    /// Cached reads are served while every feed was heard from within this.
    #[serde(with = "millis")]
    pub cache_max_lag: Duration,
    /// Admin bearer token; `None` disables the admin API.
    pub admin_token: Option<Secret>,
    /// Whether callers must authenticate.
    pub auth: AuthMode,
    /// The policy file.
    pub auth_policy: Option<PathBuf>,
    /// Requests per second of each anonymous caller when auth is none.
    pub anonymous_rate_per_sec: Option<std::num::NonZeroU32>,
    /// Where audit records go.
    pub audit_log: AuditSink,
    /// HTTPS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Cluster token sent to nodes.
    pub bzzz_token: Option<Secret>,
    /// Extra CA bundle for https:// endpoints.
    pub bzzz_ca: Option<PathBuf>,
    /// Client certificate for https:// endpoints.
    pub bzzz_client_cert: Option<PathBuf>,
    /// Its private key.
    pub bzzz_client_key: Option<PathBuf>,
    /// Drain time on shutdown.
    #[serde(with = "millis")]
    pub shutdown_grace: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Tracing filter directives.
    pub log_filter: String,
}

mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

impl Config {
    /// The watch limits of this configuration.
    #[must_use]
    pub fn watch(&self) -> crate::watch::WatchSettings {
        crate::watch::WatchSettings {
            max_watches: self.max_watches,
            buffer: self.watch_buffer,
            heartbeat: self.watch_heartbeat,
            history: self.watch_history,
        }
    }
}

impl Default for Config {
    /// The defaults of [`SETTINGS`] (what `cargo run` serves with no configuration).
    fn default() -> Self {
        match Sources::default().resolve() {
            Ok(config) => config,
            // The defaults are valid by construction; `defaults_are_valid` tests it.
            Err(problems) => unreachable!("invalid defaults: {problems}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser as _;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("rustle-gateway").chain(args.iter().copied()))
            .expect("valid flags")
    }

    #[allow(clippy::unnecessary_wraps)] // `Sources::file` is optional
    fn file(text: &str) -> Option<(PathBuf, String)> {
        Some((PathBuf::from("rustle.toml"), text.to_owned()))
    }

    fn problems(sources: &Sources) -> Vec<String> {
        sources.resolve().expect_err("should be invalid").0
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert_eq!(c.listen_addr, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.backend_mode, BackendMode::Mock);
        assert_eq!(c.request_timeout, Duration::from_secs(5));
        assert_eq!(c.attempt_timeout, Duration::from_millis(1500));
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.retry.max_retries, 2);
        assert_eq!(c.retry.backoff_base, Duration::from_millis(25));
        assert_eq!(c.retry.backoff_max, Duration::from_secs(1));
        assert_eq!(c.breaker.consecutive_failures, 5);
        assert_eq!(c.breaker.half_open_probes, 3);
        assert_eq!(c.max_body_bytes, 1 << 20);
        assert_eq!(c.max_in_flight, 1024);
        assert_eq!(c.admin_token, None);
        assert_eq!(c.log_format, LogFormat::Json);
    }

    #[test]
    fn precedence_is_cli_then_env_then_file_then_default() {
        let text = "listen_addr = \"127.0.0.1:1\"\nmax_retries = 1\ncache_max_entries = 7\n";
        let s = Sources {
            cli: cli(&["--listen-addr", "127.0.0.1:3", "--set", "max_retries=4"]),
            env: env(&[
                ("RUSTLE_LISTEN_ADDR", "127.0.0.1:2"),
                ("RUSTLE_MAX_RETRIES", "3"),
            ]),
            file: file(text),
        };
        let c = s.resolve().expect("valid");
        assert_eq!(c.listen_addr.port(), 3);
        assert_eq!(c.retry.max_retries, 4);
        assert_eq!(c.cache_max_entries, 7, "file beats default");
        let s = Sources {
            cli: Cli::default(),
            ..s
        };
        let c = s.resolve().expect("valid");
        assert_eq!(c.listen_addr.port(), 2, "env beats file");
        assert_eq!(c.retry.max_retries, 3);
    }

    #[test]
    fn seed_flags_map_to_modes_and_backend_mode_overrides() {
        let eps = ("RUSTLE_BZZZ_ENDPOINTS", "http://a:8080,http://b:8080/");
        let mode = |pairs: &[(&str, &str)]| {
            let mut e = env(pairs);
            e.insert(eps.0.into(), eps.1.into());
            Sources {
                env: e,
                ..Sources::default()
            }
            .resolve()
            .expect("valid")
            .backend_mode
        };
        assert_eq!(
            mode(&[("RUSTLE_USE_REAL_CONNECTOR", "false")]),
            BackendMode::Mock
        );
        assert_eq!(
            mode(&[
                ("RUSTLE_USE_REAL_CONNECTOR", "true"),
                ("RUSTLE_FALLBACK_ENABLED", "true")
            ]),
            BackendMode::Hybrid
        );
        assert_eq!(
            mode(&[("RUSTLE_USE_REAL_CONNECTOR", "true")]),
            BackendMode::Hybrid
        );
        assert_eq!(
            mode(&[
                ("RUSTLE_USE_REAL_CONNECTOR", "true"),
                ("RUSTLE_FALLBACK_ENABLED", "false")
            ]),
            BackendMode::Real
        );
        assert_eq!(
            mode(&[
                ("RUSTLE_USE_REAL_CONNECTOR", "true"),
                ("RUSTLE_BACKEND_MODE", "mock")
            ]),
            BackendMode::Mock
        );
        let c = Sources {
            env: env(&[eps]),
            ..Sources::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(
            c.bzzz_endpoints
                .iter()
                .map(EndpointUrl::as_str)
                .collect::<Vec<_>>(),
            ["http://a:8080", "http://b:8080"]
        );
    }

    #[test]
    fn every_problem_is_reported_once_with_its_source() {
        let s = Sources {
            cli: cli(&["--log-format", "xml"]),
            env: env(&[
                ("RUSTLE_BZZZ_ENDPOINTS", "htp://x,http://ok:1"),
                ("RUSTLE_MAX_RETRIES", "many"),
                ("RUSTLE_BACKEND_MODE", "turbo"),
                ("RUSTLE_LISTEN_ADDR", "nowhere"),
            ]),
            file: file("breaker_window = 0\n"),
        };
        let p = problems(&s);
        assert!(
            p.contains(&"RUSTLE_BZZZ_ENDPOINTS: \"htp://x\" is not an http(s) URL".to_owned()),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("RUSTLE_MAX_RETRIES: \"many\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("RUSTLE_BACKEND_MODE: \"turbo\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("RUSTLE_LISTEN_ADDR: \"nowhere\"")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|m| m.starts_with("--log-format: \"xml\"")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.starts_with("rustle.toml: breaker_window: \"0\"")),
            "{p:?}"
        );
        assert_eq!(p.len(), 6, "{p:?}");
    }

    #[test]
    fn cross_field_rules() {
        let p = problems(&Sources {
            env: env(&[
                ("RUSTLE_BACKEND_MODE", "real"),
                ("RUSTLE_ATTEMPT_TIMEOUT_MS", "9000"),
                ("RUSTLE_BACKOFF_BASE_MS", "2000"),
                ("RUSTLE_BREAKER_OPEN_MS", "60000"),
                ("RUSTLE_BREAKER_MIN_CALLS", "50"),
                ("RUSTLE_MAX_BODY_BYTES", "8388608"),
            ]),
            ..Sources::default()
        });
        assert_eq!(p.len(), 6, "{p:?}");
        assert!(p[0].contains("needs at least one endpoint"), "{p:?}");
        assert!(
            p.iter().any(|m| m.starts_with(
                "RUSTLE_MAX_ANSWER_BYTES: 4194304 is less than RUSTLE_MAX_BODY_BYTES (8388608)"
            )),
            "{p:?}"
        );
    }

    #[test]
    fn file_problems() {
        let p = problems(&Sources {
            file: file("nope = 1\nlisten_addr = { a = 1 }\n"),
            ..Sources::default()
        });
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("unknown key \"nope\"")),
            "{p:?}"
        );
        let p = problems(&Sources {
            file: file("this is not toml"),
            ..Sources::default()
        });
        assert!(p[0].contains("not valid TOML"), "{p:?}");
        let c = Sources {
            file: file(
                "bzzz_endpoints = [\"http://a:1\", \"https://b\"]\nbackend_mode = \"hybrid\"\n",
            ),
            ..Sources::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.backend_mode, BackendMode::Hybrid);
        assert_eq!(c.bzzz_endpoints.len(), 2);
    }

    #[test]
    fn set_flag_problems() {
        let p = problems(&Sources {
            cli: cli(&["--set", "nokey", "--set", "bogus=1"]),
            ..Sources::default()
        });
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn endpoint_urls_are_strict() {
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@x",
            "http://x/?q",
            "not a url",
            "http://x#f",
        ] {
            assert!(bad.parse::<EndpointUrl>().is_err(), "{bad}");
        }
        let dup = problems(&Sources {
            env: env(&[("RUSTLE_BZZZ_ENDPOINTS", "http://a,http://a/")]),
            ..Sources::default()
        });
        assert!(dup[0].contains("listed twice"), "{dup:?}");
    }

    #[test]
    fn admin_token_is_secret_and_empty_means_unset() {
        let c = Sources {
            env: env(&[("RUSTLE_ADMIN_TOKEN", "s3cret")]),
            ..Sources::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.admin_token.as_ref().map(Secret::expose), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!serde_json::to_string(&c).expect("json").contains("s3cret"));
        let c = Sources {
            env: env(&[("RUSTLE_ADMIN_TOKEN", "")]),
            ..Sources::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(c.admin_token, None);
    }

    #[test]
    fn config_file_from_env_and_missing_file() {
        let e = Sources::load(
            Cli::default(),
            env(&[("RUSTLE_CONFIG", "/nonexistent/rustle.toml")]),
        )
        .expect_err("missing file");
        assert!(e.0[0].contains("cannot read config file"), "{e}");
    }

    #[test]
    fn readme_documents_every_setting() {
        let readme = include_str!("../../README.md");
        for s in SETTINGS {
            assert!(
                readme.contains(&format!("`{}`", s.env)),
                "README lacks {}",
                s.env
            );
            assert!(
                readme.contains(&format!("`{}`", s.key)),
                "README lacks {}",
                s.key
            );
        }
    }

    #[test]
    fn cors_origins_are_exact_origins_or_a_lone_star() {
        let origins = |value: &str| {
            Sources {
                env: env(&[("RUSTLE_CORS_ALLOWED_ORIGINS", value)]),
                ..Sources::default()
            }
            .resolve()
            .map(|c| c.http.cors_allowed_origins)
        };
        assert_eq!(
            Config::default().http.cors_allowed_origins,
            CorsOrigins::None
        );
        assert_eq!(origins(" , "), Ok(CorsOrigins::None));
        assert_eq!(origins(" * "), Ok(CorsOrigins::Any));
        assert_eq!(
            origins("https://App.Example.com:443/, http://localhost:3000,http://[::1]:8080"),
            Ok(CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
                "http://[::1]:8080".into(),
            ]))
        );
        for (bad, why) in [
            ("https://app.example.com/ui", "without a path"),
            ("https://app.example.com?x=1", "without a path, query"),
            ("ftp://files.example.com", "not an http(s) origin"),
            ("app.example.com", "is not an origin"),
            ("https://*.example.com", "has a wildcard"),
            ("null", "is not an origin"),
            ("https://user:pw@app.example.com", "credentials"),
            ("*, https://app.example.com", "give it alone"),
            ("http://a.example, http://A.example:80", "listed twice"),
        ] {
            let p = origins(bad).expect_err(bad).0;
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(
                p[0].starts_with("RUSTLE_CORS_ALLOWED_ORIGINS: ") && p[0].contains(why),
                "{bad}: {p:?}"
            );
        }
    }

    #[test]
    fn http_feature_defaults_and_limits() {
        let c = Config::default();
        assert_eq!(c.http.cors_max_age, Duration::from_secs(600));
        assert_eq!(c.http.compression_min_bytes, 1024);
        let c = Sources {
            env: env(&[
                ("RUSTLE_COMPRESSION_MIN_BYTES", "0"),
                ("RUSTLE_CORS_MAX_AGE_SECS", "0"),
            ]),
            ..Sources::default()
        }
        .resolve()
        .expect("valid");
        assert_eq!(
            (c.http.compression_min_bytes, c.http.cors_max_age),
            (0, Duration::ZERO)
        );
        let p = problems(&Sources {
            env: env(&[
                ("RUSTLE_COMPRESSION_MIN_BYTES", "-1"),
                ("RUSTLE_CORS_MAX_AGE_SECS", "86401"),
            ]),
            ..Sources::default()
        });
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn bad_log_filter_is_reported() {
        let p = problems(&Sources {
            env: env(&[("RUST_LOG", "info,[[[")]),
            ..Sources::default()
        });
        assert!(p[0].starts_with("RUST_LOG:"), "{p:?}");
    }
}
