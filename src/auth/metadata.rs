//! OAuth 2.0 protected-resource metadata (RFC 9728) for `/mcp`, as the MCP authorization
//! specification asks: an MCP client that gets a 401 learns from the challenge where the
//! metadata is, and from the metadata which authorization server issues the tokens the
//! gateway accepts. Served only when the policy accepts JWTs from a named issuer (`[jwt]
//! issuer`); API keys have no authorization server to point to.

use axum::extract::State;
use axum::http::header::{HOST, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Json, Response};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// Where the metadata of `/mcp` is served (RFC 9728 §3.1: the well-known prefix before the
/// resource's path).
pub const MCP_METADATA_PATH: &str = "/.well-known/oauth-protected-resource/mcp";

/// This gateway's origin as the client reached it: the scheme it serves and the request's
/// `Host` (a plain authority; anything else gives no origin, so no URL is made from it).
fn origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let host = headers.get(HOST)?.to_str().ok()?;
    let authority: axum::http::uri::Authority = host.parse().ok()?;
    // Userinfo or characters that would break a quoted challenge parameter: none of ours.
    if authority.as_str().contains(['@', '"', '\\']) {
        return None;
    }
    let scheme = if state.tls.is_some() { "https" } else { "http" };
    Some(format!("{scheme}://{authority}"))
}

/// The issuer of the tokens the policy accepts, when it names one.
fn issuer(state: &AppState) -> Option<String> {
    state.auth.verifier()?.settings().issuer.clone()
}

/// The metadata document of `/mcp` for a request with `headers`.
fn document(state: &AppState, headers: &HeaderMap) -> Option<Value> {
    let issuer = issuer(state)?;
    let origin = origin(state, headers)?;
    Some(json!({
        "resource": format!("{origin}/mcp"),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "RUSTLE Gateway (MCP)",
    }))
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: the metadata, or 404 when the policy
/// names no JWT issuer (or the request names no usable host).
pub async fn protected_resource(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match document(&state, &headers) {
        Some(doc) => Json(doc).into_response(),
        None => ApiError::not_found(
            "no protected-resource metadata: the policy names no JWT issuer",
            json!({}),
        )
        .into_response(),
    }
}

/// Adds `resource_metadata` to the `WWW-Authenticate` challenge of a 401 from `/mcp`, when
/// there is metadata to point to (RFC 9728 §5.1).
pub fn point_to_metadata(state: &AppState, headers: &HeaderMap, response: &mut Response) {
    if issuer(state).is_none() {
        return;
    }
    let Some(origin) = origin(state, headers) else {
        return;
    };
    let Some(challenge) = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
    else {
        return;
    };
    let extended = format!(r#"{challenge}, resource_metadata="{origin}{MCP_METADATA_PATH}""#);
    if let Ok(value) = HeaderValue::from_str(&extended) {
        response.headers_mut().insert(WWW_AUTHENTICATE, value);
    }
}
