//! The cluster API token (`BZZZ_API_TOKEN`): when set, every route but `/health` and
//! `/metrics` needs `Authorization: Bearer <token>` (RFC 6750), so only the gateway and
//! operators holding the token can read or write records or see the cluster's peers.
//!
//! [`require_token`] is a route layer: it runs before any extractor, so a refused request
//! never has its body read, and unknown paths still answer 404.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::NodeError;
use crate::config::{API_TOKEN_MAX_LEN, ApiToken};

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "bzzz";
/// Largest `Authorization` header looked at: the scheme, a space and the longest token.
/// Anything larger is refused before it is parsed or hashed.
pub const MAX_AUTHORIZATION_BYTES: usize = API_TOKEN_MAX_LEN + "Bearer ".len();
/// At most one info line about refused requests per this period, so a scanner cannot
/// flood the log (each refusal is also logged at debug level).
const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(60);

/// Why a request was refused. The message never contains what was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Authorization` header.
    #[error("this node requires Authorization: Bearer <BZZZ_API_TOKEN>")]
    Missing,
    /// Another scheme than `Bearer` (RFC 6750 §3.1: no error code in the challenge).
    #[error("this node requires the Bearer scheme: Authorization: Bearer <BZZZ_API_TOKEN>")]
    NotBearer,
    /// A bearer credential that cannot be a token: too large, not UTF-8, empty, or more
    /// than one `Authorization` header.
    #[error("the Authorization header is not a valid bearer token")]
    Malformed,
    /// A well-formed bearer token that is not this node's.
    #[error("the bearer token is not valid")]
    Invalid,
}

impl Refusal {
    /// The `reason` in the error body's details.
    #[must_use]
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::NotBearer => "not_bearer",
            Self::Malformed => "malformed_token",
            Self::Invalid => "invalid_token",
        }
    }

    /// The `WWW-Authenticate` challenge: `error="invalid_token"` once a bearer token was
    /// presented (RFC 6750 §3.1), none when the client sent no bearer credential at all.
    #[must_use]
    pub fn challenge(self) -> HeaderValue {
        match self {
            Self::Missing | Self::NotBearer => HeaderValue::from_static("Bearer realm=\"bzzz\""),
            Self::Malformed | Self::Invalid => {
                HeaderValue::from_static("Bearer realm=\"bzzz\", error=\"invalid_token\"")
            }
        }
    }
}

/// Checks requests against the configured token.
#[derive(Debug)]
pub struct TokenGuard {
    /// SHA-256 of the token: requests compare digests, so the comparison takes the same
    /// time whatever the length or content of what was sent.
    digest: [u8; 32],
    log: RefusalLog,
}

impl TokenGuard {
    /// A guard for `token`.
    #[must_use]
    pub fn new(token: &ApiToken) -> Self {
        Self {
            digest: Sha256::digest(token.expose().as_bytes()).into(),
            log: RefusalLog::default(),
        }
    }

    /// Whether `headers` carry the token as `Authorization: Bearer <token>` (the scheme
    /// in any case, RFC 7235).
    ///
    /// # Errors
    /// [`Refusal`] says why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        let Some(value) = values.next() else {
            return Err(Refusal::Missing);
        };
        if values.next().is_some() {
            return Err(Refusal::Malformed);
        }
        let bytes = value.as_bytes();
        if bytes.len() > MAX_AUTHORIZATION_BYTES {
            return Err(Refusal::Malformed);
        }
        let (scheme, token) = match bytes.iter().position(|b| *b == b' ') {
            Some(space) => (&bytes[..space], &bytes[space + 1..]),
            None => (bytes, &b""[..]),
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Refusal::NotBearer);
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| Refusal::Malformed)?
            .trim();
        if token.is_empty() {
            return Err(Refusal::Malformed);
        }
        let same: bool = Sha256::digest(token.as_bytes())
            .as_slice()
            .ct_eq(&self.digest)
            .into();
        if same { Ok(()) } else { Err(Refusal::Invalid) }
    }
}

/// Counts refusals and says when the next info line is due.
#[derive(Debug, Default)]
struct RefusalLog {
    state: Mutex<RefusalTally>,
}

#[derive(Debug, Default)]
struct RefusalTally {
    /// When the last info line was written.
    logged_at: Option<Instant>,
    /// Refusals since then, this one included.
    count: u64,
}

impl RefusalLog {
    /// Counts a refusal at `now`; returns the refusals to report when an info line is due
    /// (the first refusal, then at most one line per [`REFUSAL_LOG_PERIOD`]).
    fn tally(&self, now: Instant) -> Option<u64> {
        let mut tally = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        tally.count += 1;
        if tally
            .logged_at
            .is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_PERIOD)
        {
            return None;
        }
        tally.logged_at = Some(now);
        Some(std::mem::take(&mut tally.count))
    }
}

/// Refuses requests without the token with 401 (a UCXL error body and a
/// `WWW-Authenticate` challenge); passes the others on.
pub async fn require_token(
    State(guard): State<Arc<TokenGuard>>,
    req: Request,
    next: Next,
) -> Response {
    match guard.check(req.headers()) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            let path = req.uri().path();
            let reason = refusal.reason();
            tracing::debug!(reason, path, "refused a request without a valid API token");
            if let Some(refused) = guard.log.tally(Instant::now()) {
                tracing::info!(
                    refused,
                    reason,
                    path,
                    "refused requests without a valid API token (at most one such line a minute)"
                );
            }
            NodeError::Unauthorized(refusal).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef-the-cluster-token";

    fn guard() -> TokenGuard {
        TokenGuard::new(&ApiToken::new(TOKEN).expect("valid token"))
    }

    fn with(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                header::AUTHORIZATION,
                HeaderValue::from_bytes(v).expect("a header value"),
            );
        }
        headers
    }

    #[test]
    fn the_token_passes_in_any_scheme_case() {
        let g = guard();
        for value in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN} "),
        ] {
            assert_eq!(g.check(&with(&[value.as_bytes()])), Ok(()), "{value}");
        }
    }

    #[test]
    fn everything_else_is_refused_with_its_reason() {
        let g = guard();
        let right = format!("Bearer {TOKEN}");
        let long = format!("Bearer {}", "x".repeat(MAX_AUTHORIZATION_BYTES));
        let cases: Vec<(Vec<&[u8]>, Refusal)> = vec![
            (vec![], Refusal::Missing),
            (vec![b"Basic dXNlcjpwYXNz"], Refusal::NotBearer),
            (vec![TOKEN.as_bytes()], Refusal::NotBearer),
            (vec![b"Bearer"], Refusal::Malformed),
            (vec![b"Bearer "], Refusal::Malformed),
            (vec![b"Bearer \xff\xfe0123456789abcdef"], Refusal::Malformed),
            (vec![long.as_bytes()], Refusal::Malformed),
            (vec![right.as_bytes(), right.as_bytes()], Refusal::Malformed),
            (
                vec![b"Bearer 0123456789abcdef-the-cluster-toke"],
                Refusal::Invalid,
            ),
            (
                vec![b"Bearer 0123456789abcdef-the-cluster-tokenX"],
                Refusal::Invalid,
            ),
            (vec![b"Bearer wrong"], Refusal::Invalid),
        ];
        for (values, refusal) in cases {
            let headers = with(&values);
            assert_eq!(g.check(&headers), Err(refusal), "{headers:?}");
        }
    }

    #[test]
    fn a_token_presented_but_wrong_is_an_invalid_token_challenge() {
        assert_eq!(Refusal::Missing.challenge(), "Bearer realm=\"bzzz\"");
        assert_eq!(Refusal::NotBearer.challenge(), "Bearer realm=\"bzzz\"");
        assert_eq!(
            Refusal::Invalid.challenge(),
            "Bearer realm=\"bzzz\", error=\"invalid_token\""
        );
        assert_eq!(Refusal::Malformed.challenge(), Refusal::Invalid.challenge());
    }

    #[test]
    fn refusals_are_logged_at_info_at_most_once_a_period() {
        let log = RefusalLog::default();
        let start = Instant::now();
        assert_eq!(log.tally(start), Some(1), "the first refusal is reported");
        for i in 1..100 {
            assert_eq!(log.tally(start + Duration::from_millis(i)), None);
        }
        assert_eq!(
            log.tally(start + REFUSAL_LOG_PERIOD),
            Some(100),
            "the next line counts the refusals it stood for"
        );
        assert_eq!(log.tally(start + REFUSAL_LOG_PERIOD), None);
    }
}
