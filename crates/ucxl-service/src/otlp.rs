//! Optional span export over OTLP/HTTP (protobuf), configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables; off, at the cost of one atomic load per span, when no
//! endpoint is set.
//!
//! The spans are the ones the services already have ids for: each request's span (kind
//! server, child of the caller's `traceparent` span) and each attempt the gateway makes to
//! a node (kind client, child of its request; its id is the `traceparent` parent the node
//! gets). They are built here from those ids and handed to the SDK's batch processor,
//! rather than through `tracing-opentelemetry`, which would give every `tracing` span `OpenTelemetry`
//! data of its own and ids of its own (different from the ones logged and forwarded unless
//! read back from the span), at a cost per span even when nothing is exported.
//!
//! The HTTP client is reqwest 0.12's blocking client (the version the workspace already
//! has; `opentelemetry-otlp`'s own would bring reqwest 0.13). The batch processor exports
//! from a thread of its own, so a slow or absent collector never holds up a request;
//! spans that do not fit its queue are dropped (and counted by the SDK).

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanKind, Status, TraceFlags, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_http::{Bytes, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor as _,
};

use crate::trace_context::TraceContext;

/// The collector's default timeout (the OTLP exporter specification's).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest collector answer read (it carries at most a partial-success message).
const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// Where and how spans are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The traces URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as given, or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended).
    pub endpoint: String,
    /// `service.name` (`OTEL_SERVICE_NAME`, else `service.name` in
    /// `OTEL_RESOURCE_ATTRIBUTES`, else the service's own name).
    pub service_name: String,
    /// Time allowed for one export (`OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT`, milliseconds).
    pub timeout: Duration,
    /// Extra trusted CA certificates for an `https` collector
    /// (`OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE`, PEM), besides the public roots.
    pub ca: Option<PathBuf>,
}

impl Settings {
    /// The settings the standard variables in `env` give: `None` when no endpoint is set,
    /// or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`.
    ///
    /// # Errors
    /// One line per problem: an endpoint that is not an http(s) URL, a protocol other than
    /// `http/protobuf`, an exporter other than `otlp` or `none`, a timeout that is not a
    /// number of milliseconds.
    pub fn from_env(
        env: &HashMap<String, String>,
        default_service: &str,
    ) -> Result<Option<Self>, Vec<String>> {
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let signal = |specific: &'static str, general: &'static str| {
            get(specific)
                .map(|v| (specific, v))
                .or_else(|| get(general).map(|v| (general, v)))
        };
        if get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let mut problems = Vec::new();
        match get("OTEL_TRACES_EXPORTER") {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => problems.push(format!(
                "OTEL_TRACES_EXPORTER: {other:?} is not supported (otlp or none)"
            )),
        }
        let endpoint = if let Some(url) = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.to_owned()))
        } else {
            get("OTEL_EXPORTER_OTLP_ENDPOINT").map(|base| {
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("{}/v1/traces", base.trim_end_matches('/')),
                )
            })
        };
        let Some((endpoint_var, endpoint)) = endpoint else {
            return if problems.is_empty() {
                Ok(None)
            } else {
                Err(problems)
            };
        };
        if !is_http_url(&endpoint) {
            problems.push(format!(
                "{endpoint_var}: {endpoint:?} is not an http(s) URL"
            ));
        }
        if let Some((var, protocol)) = signal(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) && protocol != "http/protobuf"
        {
            problems.push(format!(
                "{var}: {protocol:?} is not supported (only http/protobuf)"
            ));
        }
        let timeout = match signal(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            None => DEFAULT_TIMEOUT,
            Some((var, ms)) => ms.parse::<u64>().map_or_else(
                |_| {
                    problems.push(format!("{var}: {ms:?} is not a number of milliseconds"));
                    DEFAULT_TIMEOUT
                },
                Duration::from_millis,
            ),
        };
        let ca = signal(
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        )
        .map(|(_, path)| PathBuf::from(path));
        let service_name = get("OTEL_SERVICE_NAME")
            .map(str::to_owned)
            .or_else(|| {
                get("OTEL_RESOURCE_ATTRIBUTES").and_then(|attributes| {
                    attributes.split(',').find_map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        (k.trim() == "service.name").then(|| v.trim().to_owned())
                    })
                })
            })
            .unwrap_or_else(|| default_service.to_owned());
        if problems.is_empty() {
            Ok(Some(Self {
                endpoint,
                service_name,
                timeout,
                ca,
            }))
        } else {
            Err(problems)
        }
    }
}

fn is_http_url(url: &str) -> bool {
    url.parse::<axum::http::Uri>().is_ok_and(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
    })
}

/// The installed exporter.
struct Export {
    processor: BatchSpanProcessor,
    scope: InstrumentationScope,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// Whether spans are exported.
#[must_use]
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// The installed exporter: flush it before the process ends.
#[derive(Debug)]
pub struct Exporter(());

impl Exporter {
    /// Exports the spans ended so far (blocks until the collector answered or the export
    /// timed out).
    pub fn flush(&self) {
        if let Some(export) = EXPORT.get()
            && let Err(e) = export.processor.force_flush()
        {
            tracing::warn!(error = %e, "spans not exported");
        }
    }

    /// Exports what is left and stops exporting (blocks as [`Exporter::flush`]; call it
    /// off the async runtime's threads, or where blocking is allowed).
    pub fn shutdown(self) {
        if let Some(export) = EXPORT.get()
            && let Err(e) = export.processor.shutdown()
        {
            tracing::warn!(error = %e, "spans not exported at shutdown");
        }
    }
}

/// Starts exporting with `settings`, once per process.
///
/// # Errors
/// When the HTTP client or the exporter cannot be built (an unreadable CA file), or an
/// exporter is already installed.
pub fn install(settings: &Settings) -> Result<Exporter, String> {
    let client = BlockingClient::new(settings)?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(settings.endpoint.clone())
        .with_protocol(Protocol::HttpBinary)
        .with_timeout(settings.timeout)
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    // The batch settings come from `OTEL_BSP_*` (the SDK reads them).
    let mut processor = BatchSpanProcessor::builder(exporter).build();
    processor.set_resource(
        &Resource::builder()
            .with_service_name(settings.service_name.clone())
            .build(),
    );
    let scope = InstrumentationScope::builder("ucxl-service")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    EXPORT
        .set(Export { processor, scope })
        .map_err(|_| "an OTLP exporter is already installed".to_owned())?;
    tracing::info!(endpoint = %settings.endpoint, service = %settings.service_name, "exporting spans over OTLP");
    Ok(Exporter(()))
}

/// What kind of span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A request this service answers; its parent (if any) is the caller's, remote.
    Server,
    /// A request this service makes; its parent is one of this service's spans.
    Client,
}

/// A span being recorded: exported when dropped. Inert (no allocation, nothing exported)
/// when export is off or the trace is not sampled.
#[derive(Debug)]
pub struct Span(Option<Box<Recording>>);

#[derive(Debug)]
struct Recording {
    kind: Kind,
    name: &'static str,
    context: TraceContext,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl Span {
    /// Starts recording span `name` of `context` now.
    #[must_use]
    pub fn start(kind: Kind, name: &'static str, context: &TraceContext) -> Self {
        if !context.sampled || !enabled() {
            return Self(None);
        }
        Self(Some(Box::new(Recording {
            kind,
            name,
            context: context.clone(),
            start: SystemTime::now(),
            attributes: Vec::with_capacity(8),
            status: Status::Unset,
        })))
    }

    /// An inert span.
    #[must_use]
    pub fn none() -> Self {
        Self(None)
    }

    /// Whether it records (attributes are worth computing).
    #[must_use]
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(r) = &mut self.0 {
            r.attributes.push(KeyValue::new(key, value));
        }
    }

    /// Marks it done as it should be.
    pub fn succeed(&mut self) {
        if let Some(r) = &mut self.0 {
            r.status = Status::Ok;
        }
    }

    /// Marks it failed, saying why.
    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        if let Some(r) = &mut self.0 {
            r.status = Status::error(description);
        }
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        let (Some(r), Some(export)) = (self.0.take(), EXPORT.get()) else {
            return;
        };
        let Recording {
            kind,
            name,
            context,
            start,
            attributes,
            status,
        } = *r;
        let state = context
            .tracestate
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        export.processor.on_end(SpanData {
            span_context: SpanContext::new(
                opentelemetry::trace::TraceId::from_bytes(context.trace_id.to_bytes()),
                opentelemetry::trace::SpanId::from_bytes(context.span_id.to_bytes()),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: context
                .parent_id
                .map_or(opentelemetry::trace::SpanId::INVALID, |p| {
                    opentelemetry::trace::SpanId::from_bytes(p.to_bytes())
                }),
            parent_span_is_remote: kind == Kind::Server && context.parent_id.is_some(),
            span_kind: match kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            },
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: SystemTime::now(),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: export.scope.clone(),
        });
    }
}

/// reqwest 0.12's blocking client as the exporter's HTTP client. The batch processor
/// exports from its own thread (its futures run on `futures_executor::block_on`, not on
/// a Tokio runtime), where blocking is what is wanted.
#[derive(Debug)]
struct BlockingClient(Arc<reqwest::blocking::Client>);

impl BlockingClient {
    fn new(settings: &Settings) -> Result<Self, String> {
        let tls = tls(settings.ca.as_ref())?;
        let timeout = settings.timeout;
        // The blocking client starts a runtime of its own, which must not be built (or
        // dropped) on an async runtime's thread.
        std::thread::Builder::new()
            .name("otlp-client".into())
            .spawn(move || {
                reqwest::blocking::Client::builder()
                    .use_preconfigured_tls(tls)
                    .timeout(timeout)
                    .build()
            })
            .map_err(|e| format!("cannot start the OTLP client: {e}"))?
            .join()
            .map_err(|_| "the OTLP client could not be built".to_owned())?
            .map(|c| Self(Arc::new(c)))
            .map_err(|e| format!("cannot build the OTLP client: {e}"))
    }
}

#[async_trait::async_trait]
impl HttpClient for BlockingClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let request = reqwest::blocking::Request::try_from(request)?;
        let response = self.0.execute(request)?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            headers.extend(
                response
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone())),
            );
        }
        let mut body = Vec::new();
        response.take(MAX_ANSWER_BYTES).read_to_end(&mut body)?;
        Ok(answer.body(Bytes::from(body))?)
    }
}

/// Public roots plus the CA bundle, when set.
fn tls(ca: Option<&PathBuf>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca {
        let fail = |e: &dyn std::fmt::Display| {
            format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}: {e}", path.display())
        };
        for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
            roots
                .add(cert.map_err(|e| fail(&e))?)
                .map_err(|e| fail(&e))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
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
    fn off_without_an_endpoint_or_when_disabled() {
        assert_eq!(Settings::from_env(&env(&[]), "svc"), Ok(None));
        let with = |extra: (&str, &str)| {
            Settings::from_env(
                &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), extra]),
                "svc",
            )
        };
        assert_eq!(with(("OTEL_SDK_DISABLED", "true")), Ok(None));
        assert_eq!(with(("OTEL_TRACES_EXPORTER", "none")), Ok(None));
        assert!(with(("OTEL_TRACES_EXPORTER", "otlp")).is_ok_and(|s| s.is_some()));
    }

    #[test]
    fn the_endpoint_gets_the_traces_path_unless_it_is_the_traces_endpoint() {
        let s = Settings::from_env(
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]),
            "svc",
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.endpoint, "http://c:4318/v1/traces");
        assert_eq!(s.service_name, "svc");
        assert_eq!(s.timeout, DEFAULT_TIMEOUT);
        let s = Settings::from_env(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://t:1/custom"),
                ("OTEL_SERVICE_NAME", "named"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
            "svc",
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.endpoint, "https://t:1/custom");
        assert_eq!(s.service_name, "named");
        assert_eq!(s.timeout, Duration::from_millis(2500));
        let s = Settings::from_env(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "a=b, service.name = from-attributes",
                ),
            ]),
            "svc",
        )
        .expect("valid")
        .expect("on");
        assert_eq!(s.service_name, "from-attributes");
    }

    #[test]
    fn what_cannot_be_honoured_is_a_configuration_error() {
        let problems = Settings::from_env(
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
                ("OTEL_TRACES_EXPORTER", "zipkin"),
            ]),
            "svc",
        )
        .expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(
            problems[1].starts_with("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "{problems:?}"
        );
        assert!(problems[2].contains("only http/protobuf"), "{problems:?}");
    }

    #[test]
    fn spans_are_inert_while_nothing_is_exported() {
        // This test binary installs no exporter.
        let mut span = Span::start(Kind::Server, "request", &TraceContext::root());
        assert!(!span.is_recording());
        span.set("k", 1);
        span.fail("nothing");
        assert!(!TraceContext::root().sampled, "nothing records a new trace");
    }
}
