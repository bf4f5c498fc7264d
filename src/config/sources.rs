//! Where configuration comes from and how it is read: command-line flags > environment >
//! config file > defaults, all read as text and parsed in one pass that collects every
//! problem (with where each value came from), so an operator sees all mistakes at once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::settings::{SETTINGS, Setting};
use super::{
    ANSWER_OVERHEAD_BYTES, AuditSink, AuthMode, BackendMode, BreakerConfig, Cli, Config,
    CorsOrigins, EndpointUrl, HttpLayers, LocalStorage, LogFormat, RetryConfig, Secret,
};

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
        let data_dir = p
            .path("data_dir")
            .unwrap_or_else(|| PathBuf::from("./data"));
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
            journal_dir: p
                .path("journal_dir")
                .unwrap_or_else(|| data_dir.join("journal")),
            data_dir,
            local_store: p
                .optional::<LocalStorage>("local_store")
                .unwrap_or(LocalStorage::Disk),
            cache_max_entries: p.number("cache_max_entries", 1, 1 << 40),
            max_body_bytes: p.number("max_body_bytes", 1, 1 << 34),
            max_answer_bytes: p.number("max_answer_bytes", 1024, 1 << 34),
            client_header_timeout: p.millis("client_header_timeout_ms", 1, 3_600_000),
            http: p.http_layers(),
            max_in_flight: p.number("max_in_flight", 1, 1 << 24),
            max_watches: p.number("max_watches", 0, 1 << 20),
            watch_buffer: p.number("watch_buffer", 1, 1 << 20),
            watch_heartbeat: p.millis("watch_heartbeat_ms", 10, 3_600_000),
            watch_history: p.number("watch_history", 1, 10_000_000),
            cache_max_lag: p.millis("cache_max_lag_ms", 10, 3_600_000),
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

    fn http_layers(&mut self) -> HttpLayers {
        HttpLayers {
            cors_allowed_origins: self.cors_origins(),
            cors_max_age: Duration::from_secs(self.number("cors_max_age_secs", 0, 86_400)),
            compression_min_bytes: self.number("compression_min_bytes", 0, 1 << 30),
        }
    }

    /// `*` alone, or a list of origins (empty: none).
    fn cors_origins(&mut self) -> CorsOrigins {
        const KEY: &str = "cors_allowed_origins";
        let Some((origin, value)) = self.values.get(KEY).cloned() else {
            return CorsOrigins::None;
        };
        let items: Vec<&str> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if items == ["*"] {
            return CorsOrigins::Any;
        }
        let mut origins = Vec::new();
        for item in items {
            if item == "*" {
                self.problem(
                    KEY,
                    &origin,
                    item,
                    "allows every origin: give it alone, or list origins without it",
                );
                continue;
            }
            match super::parse_origin(item) {
                Ok(o) if origins.contains(&o) => {
                    self.problem(KEY, &origin, item, "is listed twice");
                }
                Ok(o) => origins.push(o),
                Err(e) => self.problem(KEY, &origin, item, &e),
            }
        }
        if origins.is_empty() {
            CorsOrigins::None
        } else {
            CorsOrigins::List(origins)
        }
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
