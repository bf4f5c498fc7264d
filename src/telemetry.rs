//! Logging: `tracing` with JSON or pretty output and a filter that can be reloaded live.

use std::sync::Arc;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, fmt, reload};

use crate::config::LogFormat;
use crate::state::LogReload;

/// Installs the global subscriber; returns how to change its filter later, or `None` when
/// a subscriber was already installed.
#[must_use]
pub fn init(format: LogFormat, filter: &str) -> Option<LogReload> {
    let initial =
        EnvFilter::try_new(quiet_sdk(filter)).unwrap_or_else(|_| EnvFilter::new(quiet_sdk("info")));
    let (filter_layer, handle) = reload::Layer::new(initial);
    let registry = tracing_subscriber::registry().with(filter_layer);
    let installed = match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(fmt::layer().pretty()).try_init(),
    };
    installed.ok()?;
    Some(Arc::new(move |directives: &str| {
        let filter = EnvFilter::try_new(quiet_sdk(directives)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// The MCP SDK logs three `info` lines for every stateless request (a server is built and
/// ends each time); the gateway logs the call itself. Unless the filter names `rmcp`, it
/// logs warnings only.
fn quiet_sdk(directives: &str) -> String {
    if directives.contains("rmcp") {
        directives.to_owned()
    } else {
        format!("{directives},rmcp=warn")
    }
}
