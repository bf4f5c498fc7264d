//! Logging: `tracing` with JSON or pretty output and a filter that can be reloaded live.
//!
//! Every line a request logs carries its request id, trace id and span id (its span's
//! fields: the JSON format's `span` object, the pretty format's `in request with ...`), and
//! each request ends with one line of the `access` target (`ucxl_service::observe`).

use std::sync::Arc;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::LogFormat;
use crate::state::LogReload;

/// Installs the global subscriber; returns how to change its filter later, or `None` when
/// a subscriber was already installed.
#[must_use]
pub fn init(format: LogFormat, filter: &str) -> Option<LogReload> {
    let (subscriber, handle) = subscriber(format, filter, std::io::stdout);
    subscriber.try_init().ok()?;
    Some(Arc::new(move |directives: &str| {
        let filter = EnvFilter::try_new(quiet_sdk(directives)).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// The handle that changes the filter of a [`subscriber`].
pub type FilterHandle = reload::Handle<EnvFilter, Registry>;

/// The subscriber [`init`] installs, writing to `writer` (tests capture what it writes).
pub fn subscriber<W>(
    format: LogFormat,
    filter: &str,
    writer: W,
) -> (
    impl tracing::Subscriber + Send + Sync + 'static,
    FilterHandle,
)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let initial =
        EnvFilter::try_new(quiet_sdk(filter)).unwrap_or_else(|_| EnvFilter::new(quiet_sdk("info")));
    let (filter_layer, handle) = reload::Layer::new(initial);
    let output = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .fmt_fields(ucxl_service::log_fields::JsonSpanFields)
            .with_writer(writer)
            .boxed(),
        LogFormat::Pretty => fmt::layer().pretty().with_writer(writer).boxed(),
    };
    (
        tracing_subscriber::registry()
            .with(filter_layer)
            .with(output),
        handle,
    )
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
