//! The transport seam (`tower::Service`): one HTTP exchange with one node, bounded in time
//! and size, and nothing more. What the answer means is the UCXI layer's business
//! (`ucxi`); which node to ask, how often and when is the cluster's. The HTTP transport
//! speaks HTTP/1.1 over TCP, or TLS with the public roots, `RUSTLE_BZZZ_CA` and an optional
//! client certificate; tests put a fake in its place.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ucxi::NodeRequest;
use crate::config::{EndpointUrl, Secret};

/// The connector of node connections: plain TCP for `http://` endpoints, rustls with the
/// Mozilla roots (and `RUSTLE_BZZZ_CA`, and the client certificate for mTLS) for `https://`.
pub(crate) type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How the gateway connects and proves itself to nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// The cluster token, sent as `Authorization: Bearer`.
    pub token: Option<Secret>,
    /// Extra trusted CA certificates (PEM), besides the public roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key (PEM), for nodes that require mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl ClientSettings {
    /// The settings of `config`.
    #[must_use]
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            connect_timeout: config.connect_timeout,
            token: config.bzzz_token.clone(),
            ca: config.bzzz_ca.clone(),
            client_cert: config
                .bzzz_client_cert
                .clone()
                .zip(config.bzzz_client_key.clone()),
        }
    }

    /// A bare client with `connect_timeout` (tests, tools).
    #[must_use]
    pub fn plain(connect_timeout: Duration) -> Self {
        Self {
            connect_timeout,
            token: None,
            ca: None,
            client_cert: None,
        }
    }

    /// The connector of node connections with these settings (TCP options and TLS).
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub(crate) fn connector(&self) -> Result<Connector, ClientError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(self.connect_timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        Ok(hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(self.tls()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp))
    }

    /// `Bearer <cluster token>`, marked sensitive (never logged by hyper), when a token is set.
    ///
    /// # Errors
    /// When the token is not a valid header value.
    pub(crate) fn authorization(&self) -> Result<Option<HeaderValue>, ClientError> {
        let Some(token) = &self.token else {
            return Ok(None);
        };
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| ClientError("RUSTLE_BZZZ_TOKEN is not a valid header value".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// The rustls client configuration: public roots plus the CA bundle, and the client
    /// certificate when set.
    fn tls(&self) -> Result<rustls::ClientConfig, ClientError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let fail = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
            ClientError(format!("{what} {}: {e}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.ca {
            let mut added = 0;
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| fail("RUSTLE_BZZZ_CA", path, &e))?
            {
                let cert = cert.map_err(|e| fail("RUSTLE_BZZZ_CA", path, &e))?;
                roots
                    .add(cert)
                    .map_err(|e| fail("RUSTLE_BZZZ_CA", path, &e))?;
                added += 1;
            }
            if added == 0 {
                return Err(fail("RUSTLE_BZZZ_CA", path, &"holds no certificate"));
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError(e.to_string()))?
        .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                    .map_err(|e| fail("RUSTLE_BZZZ_CLIENT_CERT", cert, &e))?;
                if chain.is_empty() {
                    return Err(fail(
                        "RUSTLE_BZZZ_CLIENT_CERT",
                        cert,
                        &"holds no certificate",
                    ));
                }
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| fail("RUSTLE_BZZZ_CLIENT_KEY", key, &e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    ClientError(format!(
                        "the client certificate and key do not go together: {e}"
                    ))
                })
            }
        }
    }
}

/// The HTTP transport could not be built (TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// One request to one node, as the transport sends it.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The node.
    pub endpoint: EndpointUrl,
    /// What to send (shared by every attempt of a request).
    pub request: Arc<NodeRequest>,
    /// The request id, forwarded as `X-Request-Id`.
    pub request_id: String,
    /// The exchange's own span (a child of its request's): the node gets it as the
    /// `traceparent` parent, and the request's `tracestate` unchanged.
    pub trace: ucxl_service::TraceContext,
    /// Time allowed for this exchange; also forwarded as `X-Request-Timeout-Ms`.
    pub timeout: Duration,
    /// Largest answer body read; a larger one is refused.
    pub max_answer_bytes: usize,
}

/// What a node sent back, before the UCXI layer believes any of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawAnswer {
    /// The HTTP status.
    pub status: u16,
    /// Whether the body is declared JSON.
    pub json: bool,
    /// `Retry-After`, in seconds, as sent (unparsed values are dropped).
    pub retry_after: Option<u64>,
    /// The body (empty when the status says all there is: 5xx, 429, 401, 403).
    pub body: Bytes,
}

/// Why an exchange produced no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No connection (refused, unreachable, TLS refused, reset before an answer).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No whole answer within the timeout.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// The body is larger than the exchange allows.
    #[error("answer larger than the limit")]
    TooLarge,
    /// The body broke off.
    #[error("answer body: {0}")]
    Body(String),
}

/// The transport seam: one exchange with one node. The cluster only ever calls nodes
/// through it, so tests drive the whole attempt loop with a fake (and paused time).
pub type Transport = tower::util::BoxCloneSyncService<Exchange, RawAnswer, TransportError>;

/// Builds the transport for a set of client settings (the cluster rebuilds it when a
/// reload changes them).
pub type TransportFactory =
    Arc<dyn Fn(&ClientSettings) -> Result<Transport, ClientError> + Send + Sync>;

/// The HTTP transport of all nodes: one connection pool, connect timeout, `TCP_NODELAY`,
/// no redirects (hyper's client follows none).
///
/// Built on hyper-util's pooled client rather than reqwest: a request is one `http::Uri`
/// parse and one hyper call, where reqwest parsed a `url::Url` (with IDNA host
/// processing), converted it back to a `Uri` and wrapped the call in more futures; on the
/// read path that was a fifth of the gateway's instructions.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    http: Client<Connector, Full<Bytes>>,
    /// `Bearer <cluster token>`, marked sensitive (never logged by hyper).
    authorization: Option<HeaderValue>,
}

impl HttpTransport {
    /// A transport with `settings`.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built (unreadable CA or client certificate).
    pub fn new(settings: &ClientSettings) -> Result<Self, ClientError> {
        let connector = settings.connector()?;
        let authorization = settings.authorization()?;
        let http = Client::builder(TokioExecutor::new())
            // Below the nodes' header read timeout (`ucxl_service::serve`, 60 s), which also
            // closes idle kept-alive connections: the client lets a connection go before the
            // node does, so no request is sent on a socket the node is closing.
            .pool_idle_timeout(ucxl_service::serve::DEFAULT_HEADER_READ_TIMEOUT / 2)
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self {
            http,
            authorization,
        })
    }

    /// The HTTP transport for `settings`, boxed as the seam.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built.
    pub fn boxed(settings: &ClientSettings) -> Result<Transport, ClientError> {
        Ok(Transport::new(Self::new(settings)?))
    }

    fn request(&self, exchange: &Exchange) -> Result<Request<Full<Bytes>>, TransportError> {
        let bad = |e: &dyn std::error::Error| {
            TransportError::Connect(ucxl::error::excerpt(&e.to_string()))
        };
        let r = &exchange.request;
        let uri = Uri::try_from(format!("{}{}", exchange.endpoint.as_str(), r.path))
            .map_err(|e| bad(&e))?;
        let mut builder = Request::builder()
            .method(r.method.clone())
            .uri(uri)
            .header(
                &ucxl_service::request_id::X_REQUEST_ID,
                &exchange.request_id,
            )
            .header(
                ucxl_service::headers::REQUEST_TIMEOUT,
                exchange.timeout.as_millis().max(1).to_string(),
            )
            .header(
                &ucxl_service::trace_context::TRACEPARENT,
                exchange.trace.traceparent(),
            );
        if let Some(tracestate) = &exchange.trace.tracestate {
            builder = builder.header(&ucxl_service::trace_context::TRACESTATE, tracestate.clone());
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        for (name, value) in &r.headers {
            builder = builder.header(*name, value);
        }
        let body = match &r.body {
            Some(body) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(body.clone())
            }
            None => Full::default(),
        };
        builder.body(body).map_err(|e| bad(&e))
    }

    async fn exchange(&self, exchange: Exchange) -> Result<RawAnswer, TransportError> {
        let timeout = exchange.timeout;
        let limit = exchange.max_answer_bytes;
        let request = self.request(&exchange)?;
        let work = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| TransportError::Connect(short(&e)))?;
            read(response, limit).await
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Timeout(timeout.as_millis())),
        }
    }
}

impl tower::Service<Exchange> for HttpTransport {
    type Response = RawAnswer;
    type Error = TransportError;
    type Future = Pin<Box<dyn Future<Output = Result<RawAnswer, TransportError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        // The pool opens connections as needed: always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, exchange: Exchange) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.exchange(exchange).await })
    }
}

/// Reads an answer: the head always, the body only where a UCXI answer carries meaning
/// in it (2xx and 4xx but 401, 403 and 429), bounded by `limit`.
async fn read(response: Response<Incoming>, limit: usize) -> Result<RawAnswer, TransportError> {
    let status = response.status();
    let headers = response.headers();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(ucxl_service::is_json);
    let meaningless = status.is_server_error()
        || matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        );
    if meaningless || !json {
        return Ok(RawAnswer {
            status: status.as_u16(),
            json,
            retry_after,
            body: Bytes::new(),
        });
    }
    if headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
    {
        return Err(TransportError::TooLarge);
    }
    let body = Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                TransportError::TooLarge
            } else {
                TransportError::Body(short(&*e))
            }
        })?
        .to_bytes();
    Ok(RawAnswer {
        status: status.as_u16(),
        json,
        retry_after,
        body,
    })
}

/// A dependency's error text, shortened, for logs and status (never for clients).
fn short(e: &(dyn std::error::Error + 'static)) -> String {
    ucxl::error::excerpt(&ucxl::error::Chain(e).to_string())
}
