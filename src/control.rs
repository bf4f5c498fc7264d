//! Run-time control of the gateway: switching the backend mode and reloading the
//! configuration (with the policy, the audit sink and the certificates it names). The
//! admin routes and SIGHUP both come here; the handlers only translate.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::backend;
use crate::config::{BackendMode, Config, Sources};
use crate::state::{Active, AppState};

/// Settings that only take effect at start.
const RESTART_REQUIRED: &[&str] = &[
    "listen_addr",
    "log_format",
    "journal_dir",
    "data_dir",
    "local_store",
    "client_header_timeout",
    "watch_history",
    // Layers of the HTTP stack, built once at start.
    "cors_allowed_origins",
    "cors_max_age",
    "compression_min_bytes",
    // The certificate files are re-read on reload; other files need a restart.
    "tls_cert",
    "tls_key",
];

/// Why a control action did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The mode cannot be served now.
    #[error("backend mode {mode} is not available: {reason}")]
    ModeUnavailable {
        /// The mode asked for.
        mode: BackendMode,
        /// Why.
        reason: String,
    },
    /// The configuration (or the policy it names) is invalid: nothing was applied.
    #[error("the configuration is invalid; nothing was applied")]
    Invalid(Vec<String>),
    /// A blocking task failed (a bug).
    #[error("a background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A setting a reload could not apply, and why.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotApplied {
    /// The setting.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// What a reload did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ReloadReport {
    /// Settings that changed and are in force now.
    pub applied: Vec<String>,
    /// Settings that changed but take effect only after a restart.
    pub restart_required: Vec<String>,
    /// Settings that changed but could not be applied.
    pub not_applied: Vec<NotApplied>,
}

/// Switches the active backend; the caller holds the admin lock.
///
/// # Errors
/// [`ControlError::ModeUnavailable`] when the mode cannot be served.
pub async fn switch_mode(state: &AppState, mode: BackendMode) -> Result<BackendMode, ControlError> {
    let previous = state.active.load().mode;
    if previous == mode {
        return Ok(previous);
    }
    let unavailable = |reason: String| ControlError::ModeUnavailable { mode, reason };
    backend::can_run(mode, &state.cluster).map_err(|e| unavailable(e.reason))?;
    if mode == BackendMode::Hybrid {
        let dir = state.config.load().journal_dir.clone();
        // Opening reads (and after a crash repairs) the journal file: off the async workers.
        let shared = state.clone();
        let opened = tokio::task::spawn_blocking(move || shared.open_journal(&dir)).await?;
        let fallback = opened.map_err(|e| unavailable(format!("cannot open the journal: {e}")))?;
        fallback.start(&state.background);
    }
    if mode == BackendMode::Mock {
        // Opening reads the whole store file: off the async workers.
        let shared = state.clone();
        tokio::task::spawn_blocking(move || shared.open_durable())
            .await?
            .map_err(|e| unavailable(format!("cannot open the local store: {e}")))?;
    }
    let backend = backend::for_mode(mode, state.parts()).map_err(|e| unavailable(e.reason))?;
    state.active.store(Arc::new(Active { mode, backend }));
    tracing::info!(%previous, %mode, "backend mode switched");
    Ok(previous)
}

/// The top-level settings whose values differ between two configurations.
fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut keys: Vec<String> = b
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    // Tokens serialise masked, so compare them directly.
    if old.admin_token != new.admin_token {
        keys.push("admin_token".into());
    }
    if old.bzzz_token != new.bzzz_token {
        keys.push("bzzz_token".into());
    }
    keys
}

/// Re-reads the config file, the environment and the policy, and applies what can change
/// live; the caller holds the admin lock. Command-line flags keep their precedence. An
/// invalid configuration or policy changes nothing. The audit log is reopened (so a
/// rotated file is followed) and the TLS certificate re-read.
///
/// # Errors
/// [`ControlError::Invalid`] with one line per problem.
pub async fn reload(state: &AppState) -> Result<ReloadReport, ControlError> {
    // Reading the config file and the policy is blocking I/O: off the async workers.
    let (cli, env) = (state.cli.clone(), state.env.clone());
    let (resolved, prepared) = tokio::task::spawn_blocking(move || {
        let env = env();
        let config = Sources::load(cli, env.clone())
            .and_then(|s| s.resolve())
            .map_err(|p| p.0)?;
        let policy = crate::auth::Auth::prepare(&config, &env)?;
        Ok::<_, Vec<String>>((config, policy))
    })
    .await?
    .map_err(ControlError::Invalid)?;
    let mut new = resolved;
    let old = state.config.load_full();
    let mut report = ReloadReport::default();
    if new.log_filter != old.log_filter {
        let outcome = state
            .log_reload
            .as_ref()
            .ok_or_else(|| "this process did not install the log subscriber".to_owned())
            .and_then(|reload| reload(&new.log_filter));
        if let Err(reason) = outcome {
            new.log_filter.clone_from(&old.log_filter);
            report.not_applied.push(NotApplied {
                key: "log_filter".into(),
                reason,
            });
        }
    }
    // Endpoints first, so a reload that adds endpoints and a mode needing them works.
    if let Err(e) = state.cluster.reconfigure(&new) {
        // Nothing of the cluster changed: keep the settings in force and say why.
        for key in [
            "bzzz_endpoints",
            "connect_timeout",
            "bzzz_token",
            "bzzz_ca",
            "bzzz_client_cert",
        ] {
            report.not_applied.push(NotApplied {
                key: key.into(),
                reason: format!("cannot build the HTTP client: {e}"),
            });
        }
        new.bzzz_endpoints.clone_from(&old.bzzz_endpoints);
        new.connect_timeout = old.connect_timeout;
        new.bzzz_token.clone_from(&old.bzzz_token);
        new.bzzz_ca.clone_from(&old.bzzz_ca);
        new.bzzz_client_cert.clone_from(&old.bzzz_client_cert);
        new.bzzz_client_key.clone_from(&old.bzzz_client_key);
    }
    if new.backend_mode != old.backend_mode
        && let Err(e) = switch_mode(state, new.backend_mode).await
    {
        report.not_applied.push(NotApplied {
            key: "backend_mode".into(),
            reason: e.to_string(),
        });
        new.backend_mode = old.backend_mode;
    }
    if let Err(e) = state.audit.reopen(new.audit_log.clone()).await {
        report.not_applied.push(NotApplied {
            key: "audit_log".into(),
            reason: format!("cannot open the audit log: {e}"),
        });
        new.audit_log.clone_from(&old.audit_log);
    }
    if let Some(tls) = &state.tls
        && let Err(e) = tls.reload()
    {
        tracing::error!(error = %e, "TLS certificate not reloaded; the current one stays");
        report.not_applied.push(NotApplied {
            key: "tls_cert".into(),
            reason: e.to_string(),
        });
    }
    if let Some(verifier) = state.auth.install(prepared, &new) {
        tokio::spawn(verifier.refresh_jwks(state.background.clone()));
    }
    for key in changed_keys(&old, &new) {
        if RESTART_REQUIRED.contains(&key.as_str()) {
            report.restart_required.push(key);
        } else {
            report.applied.push(key);
        }
    }
    keep_restart_required(&mut new, &old);
    state.store.set_max_entries(new.cache_max_entries);
    if let Some(fallback) = state.fallback.get() {
        fallback.set_request_timeout(new.request_timeout);
    }
    state.watch.set_settings(new.watch());
    state.config.store(Arc::new(new));
    tracing::info!(applied = ?report.applied, restart_required = ?report.restart_required, "configuration reloaded");
    Ok(report)
}

/// What needs a restart ([`RESTART_REQUIRED`]) keeps its running value, so the config
/// reflects what is in force.
fn keep_restart_required(new: &mut Config, old: &Config) {
    new.listen_addr = old.listen_addr;
    new.log_format = old.log_format;
    new.journal_dir.clone_from(&old.journal_dir);
    new.data_dir.clone_from(&old.data_dir);
    new.local_store = old.local_store;
    new.client_header_timeout = old.client_header_timeout;
    new.watch_history = old.watch_history;
    new.http.clone_from(&old.http);
}

/// Reloads on every SIGHUP until `stop` is cancelled (as `POST /v1/admin/reload` does).
///
/// The handler is installed when this is called, not when the returned task first runs:
/// until then SIGHUP keeps its default action, which ends the process. Call it before the
/// gateway says it listens.
pub fn reload_on_hangup(
    state: AppState,
    stop: tokio_util::sync::CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let Ok(mut hangups) = hangups else {
                tracing::warn!("cannot listen for SIGHUP: reload with POST /v1/admin/reload");
                return;
            };
            loop {
                tokio::select! {
                    received = hangups.recv() => if received.is_none() { return },
                    () = stop.cancelled() => return,
                }
                let _guard = state.admin_lock.lock().await;
                match reload(&state).await {
                    Ok(_) => tracing::info!(signal = "SIGHUP", "reloaded"),
                    Err(ControlError::Invalid(problems)) => {
                        for problem in &problems {
                            tracing::error!(signal = "SIGHUP", problem = %problem, "reload refused: the configuration in force stays");
                        }
                    }
                    Err(e) => tracing::error!(signal = "SIGHUP", error = %e, "reload failed"),
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (state, stop);
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use crate::config::{AuditSink, Config};
    use crate::startup::{Options, build_state};

    /// No other test of this binary listens for SIGHUP: without the handler, the signal
    /// below would end the test process.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sighup_before_the_task_first_runs_reloads_rather_than_ends_the_process() {
        let journal = tempfile::tempdir().expect("tempdir");
        let config = Config {
            audit_log: AuditSink::Off,
            journal_dir: journal.path().to_path_buf(),
            local_store: crate::config::LocalStorage::Memory,
            ..Config::default()
        };
        let env: HashMap<String, String> = [
            ("RUSTLE_CACHE_MAX_ENTRIES", "7"),
            ("RUSTLE_AUDIT_LOG", "off"),
            ("RUSTLE_LOCAL_STORE", "memory"),
            ("RUSTLE_JOURNAL_DIR", &journal.path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let options = Options {
            env: Arc::new(move || env.clone()),
            ..Options::default()
        };
        let state = build_state(config, options).expect("state");
        let stop = CancellationToken::new();
        let task = super::reload_on_hangup(state.clone(), stop.clone());
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let running = tokio::spawn(task);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while state.config.load().cache_max_entries != 7 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the signal was not taken as a reload"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        running.await.expect("the task ends");
    }
}
