//! `X-Request-Id`: echoed when usable, generated otherwise, available to handlers.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;

/// `X-Request-Id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied request id that is echoed; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The request id of the current request (echoed from the client or generated).
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Takes the client's `X-Request-Id` when it is 1..=128 visible ASCII characters, else
/// generates a `UUIDv7`; stores it for handlers and returns it (to echo on the response).
pub fn assign(req: &mut Request) -> Arc<str> {
    let id: Arc<str> = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string().into(), Into::into);
    req.extensions_mut().insert(RequestId(Arc::clone(&id)));
    id
}

/// Echoes the request id on the response.
pub fn echo(response: &mut Response, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert(X_REQUEST_ID.clone(), value);
    }
}

/// Just the request id, for handlers that read no other header.
#[derive(Debug, Clone)]
pub struct Rid(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Rid {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<RequestId>().map_or_else(
            || uuid::Uuid::now_v7().to_string(),
            |r| r.0.to_string(),
        )))
    }
}
