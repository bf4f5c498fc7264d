//! Speaking the UCXI API of one BZZZ node, one attempt at a time, and classifying the
//! outcome (SPEC §7, §12): what a node answers is validated before it is believed.
//! Garbage, oversized, mistyped or mislabelled answers are the endpoint's failure (502),
//! never a panic; a node's 4xx is a definite answer passed on to the client.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::de::DeserializeOwned;
use serde_json::Value;
use ucxl::{Code, Failure, Success};

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{EndpointUrl, Secret};

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Why one attempt against one node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// No connection (refused, unreachable, reset before an answer).
    #[error("cannot connect: {0}")]
    Connect(String),
    /// No answer within the attempt timeout.
    #[error("no answer within {0} ms")]
    Timeout(u128),
    /// The node answered 5xx or 429.
    #[error("answered {status}{}", retry_after.map(|d| format!(" (retry after {} ms)", d.as_millis())).unwrap_or_default())]
    Unavailable {
        /// The HTTP status.
        status: u16,
        /// Its `Retry-After`, capped at [`MAX_RETRY_AFTER`].
        retry_after: Option<Duration>,
    },
    /// The answer is not a valid UCXL answer of the expected shape.
    #[error("invalid answer: {0}")]
    BadAnswer(String),
    /// The node refused the gateway's own credentials (401 or 403): its cluster token
    /// (`RUSTLE_BZZZ_TOKEN`) or client certificate is wrong. Not the client's doing, so
    /// never passed on as the client's 401.
    #[error("refused the gateway's credentials ({0}): check RUSTLE_BZZZ_TOKEN")]
    Credentials(u16),
}

impl AttemptError {
    /// A description without any dependency's error text, for client answers.
    #[must_use]
    pub fn public(&self) -> String {
        match self {
            Self::Connect(_) => "cannot connect".into(),
            Self::BadAnswer(_) => "answered with an invalid UCXI answer".into(),
            other => other.to_string(),
        }
    }

    /// Whether another attempt (elsewhere) may succeed: connection errors, timeouts,
    /// 502/503/504, 429 and 507. Everything else would fail the same way again.
    #[must_use]
    pub fn retryable(&self) -> bool {
        match self {
            // Another node may hold the right token: a misconfigured one is avoided.
            Self::Connect(_) | Self::Timeout(_) | Self::Credentials(_) => true,
            // 507: that node's disk is full or failing and it stored nothing; another
            // node's disk is not that one.
            Self::Unavailable { status, .. } => matches!(status, 429 | 502 | 503 | 504 | 507),
            Self::BadAnswer(_) => false,
        }
    }
}

/// A node's definite refusal (4xx other than 429): passed on to the client as is.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// The node's code.
    pub code: Code,
    /// The node's message.
    pub message: String,
    /// The node's details.
    pub details: Value,
}

/// What one attempt produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    /// 2xx with valid data.
    Ok {
        /// The success code (201 for created, 200 for an existing id).
        code: Code,
        /// The data.
        data: T,
    },
    /// A 4xx refusal.
    Refused(Refusal),
}

/// The connector of node connections: plain TCP for `http://` endpoints, rustls with the
/// Mozilla roots (and `RUSTLE_BZZZ_CA`, and the client certificate for mTLS) for `https://`.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

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

/// The HTTP client of all nodes: one connection pool, connect timeout, `TCP_NODELAY`, no
/// redirects (hyper's client follows none).
///
/// Built on hyper-util's pooled client rather than reqwest: a request is one `http::Uri`
/// parse and one hyper call, where reqwest parsed a `url::Url` (with IDNA host
/// processing), converted it back to a `Uri` and wrapped the call in more futures; on the
/// read path that was a fifth of the gateway's instructions.
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: Client<Connector, Full<Bytes>>,
    /// `Bearer <cluster token>`, marked sensitive (never logged by hyper).
    authorization: Option<HeaderValue>,
}

/// The HTTP client could not be built (TLS set-up).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// The pieces of one attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpec<'a> {
    /// The node.
    pub endpoint: &'a EndpointUrl,
    /// The request id, forwarded as `X-Request-Id`.
    pub request_id: &'a str,
    /// Time allowed for this attempt; also forwarded as `X-Request-Timeout-Ms`.
    pub timeout: Duration,
    /// Largest answer body read; a larger one is a bad answer.
    pub max_answer_bytes: usize,
}

impl NodeClient {
    /// A client with `settings`.
    ///
    /// # Errors
    /// When the TLS configuration cannot be built (unreadable CA or client certificate).
    pub fn new(settings: &ClientSettings) -> Result<Self, ClientError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(settings.connect_timeout));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(settings.tls()?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let authorization = match &settings.token {
            None => None,
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        ClientError("RUSTLE_BZZZ_TOKEN is not a valid header value".into())
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
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

    /// Sends one request and validates the answer.
    ///
    /// # Errors
    /// [`AttemptError`], classified.
    pub async fn call<T: DeserializeOwned>(
        &self,
        spec: AttemptSpec<'_>,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Answer<T>, AttemptError> {
        let timeout_ms = spec.timeout.as_millis();
        let limit = spec.max_answer_bytes;
        let mut request = Self::request(spec, method, path_and_query, headers, body)?;
        if let Some(authorization) = &self.authorization {
            request
                .headers_mut()
                .insert(axum::http::header::AUTHORIZATION, authorization.clone());
        }
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| AttemptError::Connect(short(&e)))?;
            Self::answer(response, limit).await
        };
        match tokio::time::timeout(spec.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(AttemptError::Timeout(timeout_ms)),
        }
    }

    fn request(
        spec: AttemptSpec<'_>,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Option<Bytes>,
    ) -> Result<Request<Full<Bytes>>, AttemptError> {
        let bad =
            |e: &dyn std::error::Error| AttemptError::Connect(ucxl::error::excerpt(&e.to_string()));
        let uri = Uri::try_from(format!("{}{path_and_query}", spec.endpoint.as_str()))
            .map_err(|e| bad(&e))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(&ucxl_service::request_id::X_REQUEST_ID, spec.request_id)
            .header(
                ucxl_service::headers::REQUEST_TIMEOUT,
                spec.timeout.as_millis().max(1).to_string(),
            );
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let body = match body {
            Some(body) => {
                builder =
                    builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Full::new(body)
            }
            None => Full::default(),
        };
        builder.body(body).map_err(|e| bad(&e))
    }

    /// Reads and validates an answer.
    async fn answer<T: DeserializeOwned>(
        response: Response<Incoming>,
        limit: usize,
    ) -> Result<Answer<T>, AttemptError> {
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(AttemptError::Credentials(status.as_u16()));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
            return Err(AttemptError::Unavailable {
                status: status.as_u16(),
                retry_after,
            });
        }
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(ucxl_service::is_json);
        if !is_json {
            return Err(AttemptError::BadAnswer(format!(
                "{status} without a JSON body"
            )));
        }
        let too_large = || AttemptError::BadAnswer("answer larger than the limit".into());
        if response
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > limit as u64)
        {
            return Err(too_large());
        }
        let bytes = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    too_large()
                } else {
                    AttemptError::BadAnswer(short(&*e))
                }
            })?
            .to_bytes();
        decode(status.as_u16(), &bytes)
    }
}

/// A dependency's error text, shortened, for logs and status (never for clients).
fn short(e: &(dyn std::error::Error + 'static)) -> String {
    ucxl::error::excerpt(&ucxl::error::Chain(e).to_string())
}

/// Validates a 2xx/4xx answer body: the UCXL shape, a code whose status is the HTTP
/// status, and data of the expected type.
///
/// # Errors
/// [`AttemptError::BadAnswer`].
pub fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<Answer<T>, AttemptError> {
    let bad = |what: String| AttemptError::BadAnswer(ucxl::error::excerpt(&what));
    if (200..300).contains(&status) {
        let body: Success<T> =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{status} answer: {e}")))?;
        let code = body.response.code;
        if code.status() != status || !code.is_success() {
            return Err(bad(format!("{status} answer carries code {code}")));
        }
        return Ok(Answer::Ok {
            code,
            data: body.response.data,
        });
    }
    if (400..500).contains(&status) {
        let body: Failure =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("{status} answer: {e}")))?;
        let error = body.error;
        if error.code.status() != status {
            return Err(bad(format!("{status} answer carries code {}", error.code)));
        }
        return Ok(Answer::Refused(Refusal {
            code: error.code,
            message: error.message,
            details: error.details,
        }));
    }
    Err(bad(format!("unexpected status {status}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Data {
        n: u32,
    }

    fn success(code: &str, data: &Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"response": {
            "code": code, "message": "m", "data": data,
            "request_id": "r", "timestamp": "2026-11-24T10:00:00Z"
        }}))
        .expect("json")
    }

    #[test]
    fn valid_answers_decode() {
        let ok =
            decode::<Data>(201, &success("UCXL-201-CREATED", &json!({"n": 1}))).expect("valid");
        assert_eq!(
            ok,
            Answer::Ok {
                code: Code::Created,
                data: Data { n: 1 }
            }
        );
        // the seed system's success code is accepted
        let seed =
            decode::<Data>(200, &success("UCXL-200-SUCCESS", &json!({"n": 2}))).expect("valid");
        assert!(matches!(seed, Answer::Ok { code: Code::Ok, .. }));
        let refused = serde_json::to_vec(&json!({"error": {
            "code": "UCXL-404-NOT_FOUND", "message": "nothing", "details": {"address": "x"},
            "source": "bzzz-node", "path": "/p", "request_id": "r", "timestamp": "2026-11-24T10:00:00Z"
        }}))
        .expect("json");
        let refused = decode::<Data>(404, &refused).expect("valid");
        assert!(matches!(
            refused,
            Answer::Refused(Refusal {
                code: Code::NotFound,
                ..
            })
        ));
    }

    #[test]
    fn garbage_mistyped_and_mislabelled_answers_are_bad() {
        for (status, body) in [
            (200, b"not json".to_vec()),
            (200, b"{\"response\": ".to_vec()),
            (200, success("UCXL-200-OK", &json!({"n": "one"}))),
            (200, success("UCXL-201-CREATED", &json!({"n": 1}))),
            (201, success("UCXL-404-NOT_FOUND", &json!({"n": 1}))),
            (404, success("UCXL-200-OK", &json!({"n": 1}))),
            (200, success("UCXL-299-WHAT", &json!({"n": 1}))),
            (302, b"{}".to_vec()),
        ] {
            let e = decode::<Data>(status, &body).expect_err("bad");
            assert!(matches!(e, AttemptError::BadAnswer(_)), "{status}: {e}");
            assert!(!e.retryable());
        }
    }

    #[test]
    fn retry_classification() {
        assert!(AttemptError::Connect("refused".into()).retryable());
        assert!(AttemptError::Timeout(10).retryable());
        for status in [429, 502, 503, 504, 507] {
            assert!(
                AttemptError::Unavailable {
                    status,
                    retry_after: None
                }
                .retryable(),
                "{status}"
            );
        }
        for status in [500, 501, 505] {
            assert!(
                !AttemptError::Unavailable {
                    status,
                    retry_after: None
                }
                .retryable(),
                "{status}"
            );
        }
    }
}
