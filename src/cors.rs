//! Calls from web pages on other origins (CORS, the Fetch standard): which origins may call
//! the API, with which request headers, and which answer headers their scripts may read.
//!
//! Off unless `RUSTLE_CORS_ALLOWED_ORIGINS` names origins (or `*`). Off, no answer carries
//! an `Access-Control-*` header, so browsers refuse cross-origin calls; a preflight
//! (`OPTIONS`) still gets `204` with `Allow`, never a 405
//! (`ucxl_service::errors::method_not_allowed`).
//!
//! On, tower-http's `CorsLayer` takes every request with an `Origin` header, outside the
//! request frame ([`crate::edge`]): it answers a preflight (`OPTIONS`) itself, before
//! authentication (a preflight carries no credentials) and load shedding, and adds its
//! headers to every other answer, the UCXL error bodies the frame writes included, so a page
//! can read why a call failed. Preflights are therefore not in the request metrics or logs.
//! Requests without `Origin` (no browser sent them) go straight to the router; with a list
//! of origins their answers get `Vary: Origin`.
//!
//! There is no credentials mode (`Access-Control-Allow-Credentials`): callers send a bearer
//! token in `Authorization`, which a page sets itself; the API uses no cookies a browser
//! would add on its own.

use axum::http::{HeaderName, HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::{Config, CorsOrigins};
use crate::reply::{
    X_RUSTLE_ATTEMPTS, X_RUSTLE_BACKEND, X_RUSTLE_CACHE, X_RUSTLE_ENDPOINT, X_RUSTLE_FEED_LAG_MS,
    X_RUSTLE_STALE,
};

/// The methods of the API's routes.
pub const ALLOWED_METHODS: [Method; 5] = [
    Method::GET,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::OPTIONS,
];

/// The request headers a page may send: every one the gateway reads. `Content-Type` is
/// among them because `application/json` is not a type a page may send without asking.
#[must_use]
pub fn allowed_headers() -> Vec<HeaderName> {
    vec![
        header::AUTHORIZATION,
        header::CONTENT_TYPE,
        ucxl_service::X_REQUEST_ID.clone(),
        HeaderName::from_static(ucxl_service::headers::IDEMPOTENCY_KEY),
        HeaderName::from_static(ucxl_service::headers::REQUEST_TIMEOUT),
        // GET /v1/envelopes (routes::envelopes).
        HeaderName::from_static("x-rustle-consistency"),
        // GET /v1/watch (routes::watch): a page's own resuming client sends it.
        HeaderName::from_static("last-event-id"),
        // W3C trace context: the request joins the page's trace.
        ucxl_service::trace_context::TRACEPARENT.clone(),
        ucxl_service::trace_context::TRACESTATE.clone(),
        // /mcp (the Streamable HTTP transport).
        HeaderName::from_static("mcp-protocol-version"),
        HeaderName::from_static("mcp-session-id"),
    ]
}

/// The answer headers a page's script may read, besides those every script may (such as
/// `Content-Type` and `Cache-Control`).
#[must_use]
pub fn exposed_headers() -> Vec<HeaderName> {
    vec![
        ucxl_service::X_REQUEST_ID.clone(),
        X_RUSTLE_BACKEND.clone(),
        X_RUSTLE_ENDPOINT.clone(),
        X_RUSTLE_ATTEMPTS.clone(),
        X_RUSTLE_STALE.clone(),
        X_RUSTLE_CACHE.clone(),
        X_RUSTLE_FEED_LAG_MS.clone(),
        // 429 and 503.
        header::RETRY_AFTER,
        // 401: the challenge, and where the OAuth metadata of /mcp is.
        header::WWW_AUTHENTICATE,
    ]
}

/// The CORS layer of `config`, or `None` when no origin is allowed.
#[must_use]
pub fn layer(config: &Config) -> Option<CorsLayer> {
    let origins = match &config.http.cors_allowed_origins {
        CorsOrigins::None => return None,
        CorsOrigins::Any => AllowOrigin::any(),
        // Validated when the configuration was read (`config::parse_origin`): ASCII only.
        CorsOrigins::List(origins) => {
            AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(ALLOWED_METHODS)
            .allow_headers(allowed_headers())
            .expose_headers(exposed_headers())
            .max_age(config.http.cors_max_age),
    )
}
