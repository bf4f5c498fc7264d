//! Gateway configuration (SPEC §10): CLI flags > environment > config file > defaults.
//!
//! Every setting has one key (the config-file name), one environment variable and a
//! default. All sources are read as text and parsed in one pass that collects every
//! problem, so an operator sees all mistakes at once, before the process binds.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

/// Exit code for invalid configuration (`EX_USAGE`).
pub const EXIT_CONFIG: u8 = 64;

/// Command-line interface. Every setting can also be given with `--set key=value`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "rustle-gateway",
    version,
    about = "RUSTLE Gateway: one reliable REST service in front of a BZZZ cluster"
)]
pub struct Cli {
    /// TOML config file (keys as listed by `rustle-gateway settings`) [env: `RUSTLE_CONFIG`]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [env: `RUSTLE_LISTEN_ADDR`] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "HOST:PORT")]
    pub listen_addr: Option<String>,
    /// mock, real or hybrid [env: `RUSTLE_BACKEND_MODE`]
    #[arg(long, value_name = "MODE")]
    pub backend_mode: Option<String>,
    /// Comma-separated BZZZ node URLs [env: `RUSTLE_BZZZ_ENDPOINTS`]
    #[arg(long, value_name = "URLS")]
    pub bzzz_endpoints: Option<String>,
    /// json or pretty [env: `RUSTLE_LOG_FORMAT`] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Any other setting, as KEY=VALUE (repeatable); see `rustle-gateway settings`
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the `OpenAPI` document and exit.
    Openapi,
    /// Validate the configuration, print the effective values and exit.
    CheckConfig,
    /// List every setting with its environment variable and default.
    Settings,
    /// Exit 0 when the gateway on this host answers `/ready` (a container healthcheck).
    Healthcheck,
    /// API keys for the policy file.
    #[command(subcommand)]
    Auth(AuthCommand),
}

/// `rustle-gateway auth ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum AuthCommand {
    /// Print a fresh API key for principal NAME and the policy lines to paste (which hold
    /// only the key's SHA-256).
    NewKey {
        /// The principal's name (1..=128 printable ASCII characters).
        name: String,
    },
}

/// One configurable value.
#[derive(Debug)]
pub struct Setting {
    /// Config-file key, also the `--set` key.
    pub key: &'static str,
    /// Environment variable.
    pub env: &'static str,
    /// Default, if any.
    pub default: Option<&'static str>,
    /// What it does, with its unit.
    pub help: &'static str,
}

macro_rules! settings {
    ($($key:ident, $env:literal, $default:expr, $help:literal;)*) => {
        /// Every setting, in documentation order.
        pub const SETTINGS: &[Setting] = &[$(Setting { key: stringify!($key), env: $env, default: $default, help: $help },)*];
    };
}

settings! {
    listen_addr, "RUSTLE_LISTEN_ADDR", Some("127.0.0.1:8080"), "address the API listens on; one that is not loopback needs RUSTLE_AUTH_POLICY or RUSTLE_AUTH=none";
    backend_mode, "RUSTLE_BACKEND_MODE", None, "mock, real or hybrid; overrides the two seed flags below";
    use_real_connector, "RUSTLE_USE_REAL_CONNECTOR", Some("false"), "seed flag: false = mock; true = real or hybrid";
    fallback_enabled, "RUSTLE_FALLBACK_ENABLED", Some("true"), "seed flag: with a real connector, true = hybrid, false = real";
    bzzz_endpoints, "RUSTLE_BZZZ_ENDPOINTS", Some(""), "comma-separated http(s) URLs of the BZZZ nodes";
    request_timeout_ms, "RUSTLE_REQUEST_TIMEOUT_MS", Some("5000"), "deadline of one request, all attempts included (ms)";
    attempt_timeout_ms, "RUSTLE_ATTEMPT_TIMEOUT_MS", Some("1500"), "timeout of one attempt against one node (ms)";
    connect_timeout_ms, "RUSTLE_CONNECT_TIMEOUT_MS", Some("250"), "TCP connect timeout (ms)";
    max_retries, "RUSTLE_MAX_RETRIES", Some("2"), "retries after the first attempt";
    backoff_base_ms, "RUSTLE_BACKOFF_BASE_MS", Some("25"), "first backoff step, full jitter (ms)";
    backoff_max_ms, "RUSTLE_BACKOFF_MAX_MS", Some("1000"), "backoff cap (ms)";
    retry_budget_percent, "RUSTLE_RETRY_BUDGET_PERCENT", Some("20"), "retries may add this share of the request rate (%)";
    retry_budget_min_per_sec, "RUSTLE_RETRY_BUDGET_MIN_PER_SEC", Some("10"), "retries always allowed per second";
    health_interval_ms, "RUSTLE_HEALTH_INTERVAL_MS", Some("1000"), "active health check period (ms)";
    health_timeout_ms, "RUSTLE_HEALTH_TIMEOUT_MS", Some("500"), "active health check timeout (ms)";
    breaker_consecutive_failures, "RUSTLE_BREAKER_CONSECUTIVE_FAILURES", Some("5"), "consecutive failures that open a breaker";
    breaker_failure_rate_percent, "RUSTLE_BREAKER_FAILURE_RATE_PERCENT", Some("50"), "failure rate over the window that opens a breaker (%)";
    breaker_window, "RUSTLE_BREAKER_WINDOW", Some("20"), "calls in the failure-rate window";
    breaker_min_calls, "RUSTLE_BREAKER_MIN_CALLS", Some("10"), "calls needed before the failure rate counts";
    breaker_open_ms, "RUSTLE_BREAKER_OPEN_MS", Some("1000"), "first open period (ms)";
    breaker_open_max_ms, "RUSTLE_BREAKER_OPEN_MAX_MS", Some("30000"), "longest open period (ms)";
    breaker_half_open_probes, "RUSTLE_BREAKER_HALF_OPEN_PROBES", Some("3"), "probe requests admitted half-open; as many successes close";
    journal_dir, "RUSTLE_JOURNAL_DIR", Some("./data/journal"), "directory of the durable write journal";
    cache_max_entries, "RUSTLE_CACHE_MAX_ENTRIES", Some("100000"), "versions the local store holds at most";
    max_body_bytes, "RUSTLE_MAX_BODY_BYTES", Some("1048576"), "largest request body (bytes)";
    max_answer_bytes, "RUSTLE_MAX_ANSWER_BYTES", Some("4194304"), "largest node answer about one envelope (bytes); history and search answers may be 8 times larger";
    client_header_timeout_ms, "RUSTLE_CLIENT_HEADER_TIMEOUT_MS", Some("60000"), "time a client has to send a whole request head, on a new or an idle kept-alive connection; slower clients are disconnected (ms)";
    max_in_flight, "RUSTLE_MAX_IN_FLIGHT", Some("1024"), "requests in flight before load shedding";
    admin_token, "RUSTLE_ADMIN_TOKEN", None, "bearer token of the admin API (besides principals granted admin); unset and no admin principal = admin API answers 403";
    auth, "RUSTLE_AUTH", None, "required or none; unset = required when RUSTLE_AUTH_POLICY is set, else none (and then only a loopback listen address is allowed)";
    auth_policy, "RUSTLE_AUTH_POLICY", None, "TOML policy file: principals with API keys, roles of grants over UCXL patterns, [jwt] settings";
    anonymous_rate_per_sec, "RUSTLE_ANONYMOUS_RATE_PER_SEC", None, "requests per second each anonymous caller (client address) may send when auth is none; unset = unlimited";
    audit_log, "RUSTLE_AUDIT_LOG", Some("stdout"), "where audit records (JSON lines) are appended: a file path, stdout, or off";
    tls_cert, "RUSTLE_TLS_CERT", None, "PEM certificate chain; with RUSTLE_TLS_KEY the API is served over HTTPS only";
    tls_key, "RUSTLE_TLS_KEY", None, "PEM private key of RUSTLE_TLS_CERT";
    bzzz_token, "RUSTLE_BZZZ_TOKEN", None, "cluster token sent to nodes as Authorization: Bearer (the nodes' BZZZ_API_TOKEN)";
    bzzz_ca, "RUSTLE_BZZZ_CA", None, "PEM CA bundle trusted for https:// endpoints besides the public roots";
    bzzz_client_cert, "RUSTLE_BZZZ_CLIENT_CERT", None, "PEM client certificate presented to https:// endpoints (mTLS; with RUSTLE_BZZZ_CLIENT_KEY)";
    bzzz_client_key, "RUSTLE_BZZZ_CLIENT_KEY", None, "PEM private key of RUSTLE_BZZZ_CLIENT_CERT";
    shutdown_grace_ms, "RUSTLE_SHUTDOWN_GRACE_MS", Some("10000"), "drain time on SIGTERM/SIGINT (ms)";
    log_format, "RUSTLE_LOG_FORMAT", Some("json"), "json or pretty";
    log_filter, "RUST_LOG", Some("info"), "tracing filter directives";
}

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
    /// Requests in flight before shedding.
    pub max_in_flight: usize,
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

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
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

/// Where a value came from, for messages that point at the right place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Default,
    File(PathBuf),
    Env,
    Cli,
}

/// The raw inputs of configuration.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Command-line flags.
    pub cli: Cli,
    /// A snapshot of the environment.
    pub env: HashMap<String, String>,
    /// Config file contents (path and text), when a file was named.
    pub file: Option<(PathBuf, String)>,
}

/// Everything wrong with a configuration, one message per problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ConfigProblems(pub Vec<String>);

impl Sources {
    /// Reads the config file named by `--config` or `RUSTLE_CONFIG`, if any.
    ///
    /// # Errors
    /// A problem message when the file cannot be read.
    pub fn load(cli: Cli, env: HashMap<String, String>) -> Result<Self, ConfigProblems> {
        let path = cli.config.clone().or_else(|| {
            env.get("RUSTLE_CONFIG")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        });
        let file = match path {
            Some(path) => match std::fs::read_to_string(&path) {
                Ok(text) => Some((path, text)),
                Err(e) => {
                    return Err(ConfigProblems(vec![format!(
                        "{}: cannot read config file: {e}",
                        path.display()
                    )]));
                }
            },
            None => None,
        };
        Ok(Self { cli, env, file })
    }

    /// The value of every key, with where it came from (highest precedence wins).
    fn layered(&self) -> (BTreeMap<&'static str, (Origin, String)>, Vec<String>) {
        let mut problems = Vec::new();
        let mut values = BTreeMap::new();
        for s in SETTINGS {
            if let Some(d) = s.default {
                values.insert(s.key, (Origin::Default, d.to_owned()));
            }
        }
        if let Some((path, text)) = &self.file {
            match text.parse::<toml::Table>() {
                Ok(table) => {
                    for (key, value) in table {
                        let Some(setting) = SETTINGS.iter().find(|s| s.key == key) else {
                            problems.push(format!("{}: unknown key {key:?}", path.display()));
                            continue;
                        };
                        match toml_text(&value) {
                            Some(text) => {
                                values.insert(setting.key, (Origin::File(path.clone()), text));
                            }
                            None => problems.push(format!(
                                "{}: {key}: expected a string, number, boolean or list of strings",
                                path.display()
                            )),
                        }
                    }
                }
                Err(e) => problems.push(format!(
                    "{}: not valid TOML: {}",
                    path.display(),
                    e.message()
                )),
            }
        }
        for s in SETTINGS {
            if let Some(v) = self.env.get(s.env) {
                values.insert(s.key, (Origin::Env, v.clone()));
            }
        }
        let flags = [
            ("listen_addr", &self.cli.listen_addr),
            ("backend_mode", &self.cli.backend_mode),
            ("bzzz_endpoints", &self.cli.bzzz_endpoints),
            ("log_format", &self.cli.log_format),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                values.insert(key, (Origin::Cli, v.clone()));
            }
        }
        for pair in &self.cli.set {
            let Some((key, value)) = pair.split_once('=') else {
                problems.push(format!("--set {pair:?}: expected KEY=VALUE"));
                continue;
            };
            match SETTINGS.iter().find(|s| s.key == key.trim()) {
                Some(s) => {
                    values.insert(s.key, (Origin::Cli, value.to_owned()));
                }
                None => problems.push(format!("--set {pair:?}: unknown key {:?}", key.trim())),
            }
        }
        (values, problems)
    }

    /// Parses and validates every setting.
    ///
    /// # Errors
    /// [`ConfigProblems`] listing every problem found.
    pub fn resolve(&self) -> Result<Config, ConfigProblems> {
        let (values, problems) = self.layered();
        let mut p = Parse {
            values,
            problems,
            failed: Vec::new(),
        };
        let explicit_mode = p.optional::<BackendMode>("backend_mode");
        let real = p.parse_bool("use_real_connector");
        let fallback = p.parse_bool("fallback_enabled");
        let backend_mode = explicit_mode.unwrap_or(match (real, fallback) {
            (true, false) => BackendMode::Real,
            (true, true) => BackendMode::Hybrid,
            (false, _) => BackendMode::Mock,
        });
        let config = Config {
            listen_addr: p
                .parse::<SocketAddr>("listen_addr", "is not a HOST:PORT socket address")
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            backend_mode,
            bzzz_endpoints: p.endpoints(),
            request_timeout: p.millis("request_timeout_ms", 1, 600_000),
            attempt_timeout: p.millis("attempt_timeout_ms", 1, 600_000),
            connect_timeout: p.millis("connect_timeout_ms", 1, 60_000),
            retry: RetryConfig {
                max_retries: p.number("max_retries", 0, 10),
                backoff_base: p.millis("backoff_base_ms", 0, 60_000),
                backoff_max: p.millis("backoff_max_ms", 0, 600_000),
                budget_percent: p.number("retry_budget_percent", 0, 1000),
                budget_min_per_sec: p.number("retry_budget_min_per_sec", 0, 1_000_000),
            },
            health_interval: p.millis("health_interval_ms", 10, 3_600_000),
            health_timeout: p.millis("health_timeout_ms", 1, 600_000),
            breaker: BreakerConfig {
                consecutive_failures: p.number("breaker_consecutive_failures", 1, 1000),
                failure_rate_percent: p.number("breaker_failure_rate_percent", 1, 100),
                window: p.number("breaker_window", 1, 10_000),
                min_calls: p.number("breaker_min_calls", 1, 10_000),
                open: p.millis("breaker_open_ms", 1, 3_600_000),
                open_max: p.millis("breaker_open_max_ms", 1, 3_600_000),
                half_open_probes: p.number("breaker_half_open_probes", 1, 1000),
            },
            journal_dir: PathBuf::from(p.text("journal_dir")),
            cache_max_entries: p.number("cache_max_entries", 1, 1 << 40),
            max_body_bytes: p.number("max_body_bytes", 1, 1 << 34),
            max_answer_bytes: p.number("max_answer_bytes", 1024, 1 << 34),
            client_header_timeout: p.millis("client_header_timeout_ms", 1, 3_600_000),
            max_in_flight: p.number("max_in_flight", 1, 1 << 24),
            admin_token: Some(p.text("admin_token"))
                .filter(|t| !t.is_empty())
                .map(Secret),
            auth: p.optional::<AuthMode>("auth").unwrap_or(
                if p.text("auth_policy").trim().is_empty() {
                    AuthMode::None
                } else {
                    AuthMode::Required
                },
            ),
            auth_policy: p.path("auth_policy"),
            anonymous_rate_per_sec: p
                .optional_number("anonymous_rate_per_sec", 1, 1_000_000)
                .and_then(std::num::NonZeroU32::new),
            audit_log: p
                .parse::<AuditSink>("audit_log", "")
                .unwrap_or(AuditSink::Stdout),
            tls_cert: p.path("tls_cert"),
            tls_key: p.path("tls_key"),
            bzzz_token: Some(p.text("bzzz_token"))
                .filter(|t| !t.is_empty())
                .map(Secret),
            bzzz_ca: p.path("bzzz_ca"),
            bzzz_client_cert: p.path("bzzz_client_cert"),
            bzzz_client_key: p.path("bzzz_client_key"),
            shutdown_grace: p.millis("shutdown_grace_ms", 0, 3_600_000),
            log_format: p
                .parse::<LogFormat>("log_format", "")
                .unwrap_or(LogFormat::Json),
            log_filter: p.log_filter(),
        };
        config.cross_check(&mut p);
        if p.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigProblems(p.problems))
        }
    }
}

impl Config {
    /// Rules that tie settings together; each runs only when its settings parsed.
    fn cross_check(&self, p: &mut Parse) {
        if p.ok(&[
            "backend_mode",
            "use_real_connector",
            "fallback_enabled",
            "bzzz_endpoints",
        ]) && self.backend_mode != BackendMode::Mock
            && self.bzzz_endpoints.is_empty()
        {
            p.problems.push(format!(
                "RUSTLE_BZZZ_ENDPOINTS: backend mode {} needs at least one endpoint",
                self.backend_mode
            ));
        }
        let pairs = [
            (
                "attempt_timeout_ms",
                self.attempt_timeout,
                "request_timeout_ms",
                self.request_timeout,
                "longer than",
            ),
            (
                "backoff_base_ms",
                self.retry.backoff_base,
                "backoff_max_ms",
                self.retry.backoff_max,
                "more than",
            ),
            (
                "breaker_open_ms",
                self.breaker.open,
                "breaker_open_max_ms",
                self.breaker.open_max,
                "more than",
            ),
        ];
        for (small_key, small, big_key, big, relation) in pairs {
            if p.ok(&[small_key, big_key]) && small > big {
                p.problems.push(format!(
                    "{}: {} ms is {relation} {} ({} ms)",
                    Parse::env_name(small_key),
                    small.as_millis(),
                    Parse::env_name(big_key),
                    big.as_millis()
                ));
            }
        }
        // An envelope the gateway accepted must come back: its answer wraps the body once,
        // with the other fields (id, address, hash, ...) in well under 64 KiB.
        if p.ok(&["max_body_bytes", "max_answer_bytes"])
            && self.max_answer_bytes < self.max_body_bytes.saturating_add(ANSWER_OVERHEAD_BYTES)
        {
            p.problems.push(format!(
                "RUSTLE_MAX_ANSWER_BYTES: {} is less than RUSTLE_MAX_BODY_BYTES ({}) plus {} bytes: envelopes the gateway accepts could not be read back",
                self.max_answer_bytes, self.max_body_bytes, ANSWER_OVERHEAD_BYTES
            ));
        }
        self.check_security(p);
        if p.ok(&["breaker_window", "breaker_min_calls"])
            && self.breaker.min_calls > self.breaker.window
        {
            p.problems.push(format!(
                "RUSTLE_BREAKER_MIN_CALLS: {} is more than RUSTLE_BREAKER_WINDOW ({})",
                self.breaker.min_calls, self.breaker.window
            ));
        }
    }
}

impl Config {
    /// The security rules: a listener beyond loopback needs a policy or an explicit
    /// `RUSTLE_AUTH=none`; `required` needs a policy; certificates come with their keys.
    fn check_security(&self, p: &mut Parse) {
        let explicit = p
            .values
            .get("auth")
            .is_some_and(|(_, v)| !v.trim().is_empty());
        if p.ok(&["auth", "auth_policy"])
            && self.auth == AuthMode::Required
            && self.auth_policy.is_none()
        {
            p.problems.push(
                "RUSTLE_AUTH: required needs a policy: set RUSTLE_AUTH_POLICY (see README, Security)"
                    .into(),
            );
        }
        if p.ok(&["auth", "auth_policy", "listen_addr"])
            && !explicit
            && self.auth == AuthMode::None
            && !self.listen_addr.ip().is_loopback()
        {
            p.problems.push(format!(
                "RUSTLE_LISTEN_ADDR: {} is not a loopback address and no RUSTLE_AUTH_POLICY is set: anyone who can reach it could read, overwrite and delete every envelope. Set RUSTLE_AUTH_POLICY (see README, Security), or RUSTLE_AUTH=none to serve without authentication",
                self.listen_addr
            ));
        }
        for (cert_key, cert, key_key, key) in [
            ("tls_cert", &self.tls_cert, "tls_key", &self.tls_key),
            (
                "bzzz_client_cert",
                &self.bzzz_client_cert,
                "bzzz_client_key",
                &self.bzzz_client_key,
            ),
        ] {
            if cert.is_some() != key.is_some() {
                p.problems.push(format!(
                    "{}: {} and {} are set together or not at all",
                    Parse::env_name(if cert.is_some() { key_key } else { cert_key }),
                    Parse::env_name(cert_key),
                    Parse::env_name(key_key)
                ));
            }
        }
    }
}

/// A TOML value as the same text an environment variable would hold.
fn toml_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        _ => None,
    }
}

/// Parses values one by one, recording a message per problem.
struct Parse {
    values: BTreeMap<&'static str, (Origin, String)>,
    problems: Vec<String>,
    /// Keys whose value was refused.
    failed: Vec<String>,
}

impl Parse {
    fn setting(key: &str) -> Option<&'static Setting> {
        SETTINGS.iter().find(|s| s.key == key)
    }

    fn env_name(key: &str) -> &str {
        Self::setting(key).map_or(key, |s| s.env)
    }

    /// True when none of `keys` was refused.
    fn ok(&self, keys: &[&str]) -> bool {
        keys.iter().all(|k| !self.failed.iter().any(|f| f == k))
    }

    /// How a message names where the value came from.
    fn label(key: &str, origin: &Origin) -> String {
        let env = Self::setting(key).map_or(key, |s| s.env);
        match origin {
            Origin::Default => format!("{env} (default)"),
            Origin::File(path) => format!("{}: {key}", path.display()),
            Origin::Env => env.to_owned(),
            Origin::Cli => format!("--{}", key.replace('_', "-")),
        }
    }

    fn problem(&mut self, key: &str, origin: &Origin, value: &str, what: &str) {
        self.failed.push(key.to_owned());
        self.problems
            .push(format!("{}: {value:?} {what}", Self::label(key, origin)));
    }

    fn text(&mut self, key: &str) -> String {
        self.values
            .get(key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    fn parse<T: FromStr>(&mut self, key: &str, what: &str) -> Option<T>
    where
        T::Err: fmt::Display,
    {
        let (origin, value) = self.values.get(key)?.clone();
        match value.trim().parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = if what.is_empty() {
                    e.to_string()
                } else {
                    what.to_owned()
                };
                self.problem(key, &origin, &value, &msg);
                None
            }
        }
    }

    fn optional<T: FromStr<Err = String>>(&mut self, key: &str) -> Option<T> {
        let (origin, value) = self.values.get(key)?.clone();
        if value.trim().is_empty() {
            return None;
        }
        match value.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(key, &origin, &value, &e);
                None
            }
        }
    }

    /// A boolean; `false` when absent or refused.
    fn parse_bool(&mut self, key: &str) -> bool {
        let Some((origin, value)) = self.values.get(key).cloned() else {
            return false;
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                self.problem(key, &origin, &value, "is not a boolean (true or false)");
                false
            }
        }
    }

    /// An integer in `min..=max`; the type's default when absent or refused.
    fn number<T: TryFrom<u64> + Default>(&mut self, key: &str, min: u64, max: u64) -> T {
        let Some((origin, value)) = self.values.get(key).cloned() else {
            return T::default();
        };
        match value.trim().parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => T::try_from(n).unwrap_or_default(),
            _ => {
                self.problem(
                    key,
                    &origin,
                    &value,
                    &format!("is not an integer in {min}..={max}"),
                );
                T::default()
            }
        }
    }

    /// A path; `None` when absent or empty.
    fn path(&mut self, key: &str) -> Option<PathBuf> {
        Some(self.text(key))
            .filter(|t| !t.trim().is_empty())
            .map(|t| PathBuf::from(t.trim()))
    }

    /// An integer in `min..=max` when set (an empty value is unset).
    fn optional_number(&mut self, key: &str, min: u64, max: u64) -> Option<u32> {
        let (_, value) = self.values.get(key)?.clone();
        if value.trim().is_empty() {
            return None;
        }
        let n: u32 = self.number(key, min, max);
        Some(n)
    }

    fn millis(&mut self, key: &str, min: u64, max: u64) -> Duration {
        Duration::from_millis(self.number::<u64>(key, min, max))
    }

    fn endpoints(&mut self) -> Vec<EndpointUrl> {
        let Some((origin, value)) = self.values.get("bzzz_endpoints").cloned() else {
            return Vec::new();
        };
        let mut urls = Vec::new();
        for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item.parse::<EndpointUrl>() {
                Ok(url) if urls.contains(&url) => {
                    self.problem("bzzz_endpoints", &origin, item, "is listed twice");
                }
                Ok(url) => urls.push(url),
                Err(e) => self.problem("bzzz_endpoints", &origin, item, &e),
            }
        }
        urls
    }

    fn log_filter(&mut self) -> String {
        let Some((origin, value)) = self.values.get("log_filter").cloned() else {
            return String::new();
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&value) {
            self.problem(
                "log_filter",
                &origin,
                &value,
                &format!("is not a tracing filter: {e}"),
            );
        }
        value
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
    fn bad_log_filter_is_reported() {
        let p = problems(&Sources {
            env: env(&[("RUST_LOG", "info,[[[")]),
            ..Sources::default()
        });
        assert!(p[0].starts_with("RUST_LOG:"), "{p:?}");
    }
}
