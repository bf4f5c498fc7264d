//! The settings catalogue: every setting's key (the config-file name and `--set` key), its
//! environment variable, its default and what it does, in documentation order.

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
    data_dir, "RUSTLE_DATA_DIR", Some("./data"), "directory of the gateway's own data: the durable local store (local-store.redb) and, unless RUSTLE_JOURNAL_DIR is set, the journal (journal/)";
    local_store, "RUSTLE_LOCAL_STORE", Some("disk"), "disk or memory: where the local store keeps what it holds as the only copy (mock mode's data); disk keeps it across restarts, memory loses it (tests, throwaway runs)";
    journal_dir, "RUSTLE_JOURNAL_DIR", None, "directory of the durable write journal; unset = <RUSTLE_DATA_DIR>/journal";
    cache_max_entries, "RUSTLE_CACHE_MAX_ENTRIES", Some("100000"), "versions the local store holds at most";
    max_body_bytes, "RUSTLE_MAX_BODY_BYTES", Some("1048576"), "largest request body (bytes)";
    max_answer_bytes, "RUSTLE_MAX_ANSWER_BYTES", Some("4194304"), "largest node answer about one envelope (bytes); history and search answers may be 8 times larger";
    client_header_timeout_ms, "RUSTLE_CLIENT_HEADER_TIMEOUT_MS", Some("60000"), "time a client has to send a whole request head, on a new or an idle kept-alive connection; slower clients are disconnected (ms)";
    cors_allowed_origins, "RUSTLE_CORS_ALLOWED_ORIGINS", Some(""), "comma-separated browser origins (scheme://host[:port]) whose pages may call the API, or * for any; empty = none: no CORS headers, so browsers refuse cross-origin calls";
    cors_max_age_secs, "RUSTLE_CORS_MAX_AGE_SECS", Some("600"), "how long a browser may reuse a preflight answer (s)";
    compression_min_bytes, "RUSTLE_COMPRESSION_MIN_BYTES", Some("1024"), "answers at least this large are compressed with gzip, br or zstd when Accept-Encoding asks for one (never event streams); 0 = no compression (bytes)";
    max_in_flight, "RUSTLE_MAX_IN_FLIGHT", Some("1024"), "requests in flight before load shedding";
    max_watches, "RUSTLE_MAX_WATCHES", Some("1024"), "concurrent GET /v1/watch streams; beyond, 503 with Retry-After";
    watch_buffer, "RUSTLE_WATCH_BUFFER", Some("1024"), "events queued for one watcher; a watcher that lets its queue fill is sent an error event and dropped";
    watch_heartbeat_ms, "RUSTLE_WATCH_HEARTBEAT_MS", Some("15000"), "silence after which a watch stream sends a keep-alive comment (ms)";
    watch_history, "RUSTLE_WATCH_HISTORY", Some("20000"), "changes remembered for resuming watch streams exactly (a cursor older than them is answered UCXL-410-GONE) and for delivering each change once";
    cache_max_lag_ms, "RUSTLE_CACHE_MAX_LAG_MS", Some("1000"), "reads asking X-Rustle-Consistency: cached are served from the local cache only while every node's change feed has been heard from within this (ms); otherwise they read a node";
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
