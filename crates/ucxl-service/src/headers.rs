//! The request headers every UCXL service reads: `X-Request-Timeout-Ms` (the request's
//! [`Deadline`]) and `Idempotency-Key`.

use std::time::Duration;

use axum::http::{Extensions, HeaderMap};
use serde_json::json;
use tokio::time::Instant;
use ucxl::{Code, EnvelopeId};

use crate::errors::ErrorReport;

/// `X-Request-Timeout-Ms`: the client lowers the request deadline.
pub const REQUEST_TIMEOUT: &str = "x-request-timeout-ms";
/// `Idempotency-Key`: the id of a write.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The time a journaled delete was accepted, sent when the gateway replays it.
pub const DELETED_AT: &str = "x-deleted-at";

/// The time a request may take: `default`, lowered by `X-Request-Timeout-Ms`.
///
/// Any positive integer is accepted, however long: one beyond `u64` milliseconds lowers
/// nothing, as any value above the default does.
///
/// # Errors
/// 400 when the header is not a positive integer (decimal digits only).
pub fn request_budget(headers: &HeaderMap, default: Duration) -> Result<Duration, ErrorReport> {
    let Some(value) = headers.get(REQUEST_TIMEOUT) else {
        return Ok(default);
    };
    value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX))
        .filter(|ms| *ms >= 1)
        .map(|ms| default.min(Duration::from_millis(ms)))
        .ok_or_else(|| {
            ErrorReport::new(
                Code::BadRequest,
                "X-Request-Timeout-Ms must be a positive integer (milliseconds)",
                json!({"header": "X-Request-Timeout-Ms", "expected": "a positive integer of milliseconds"}),
            )
        })
}

/// When the answer to a request is due. Everything the request waits for, its body
/// included, waits until then at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// When the answer is due.
    pub at: Instant,
    /// The time the request was given (what a timeout reports).
    pub budget: Duration,
}

impl Deadline {
    /// `budget` from now.
    #[must_use]
    pub fn after(budget: Duration) -> Self {
        Self {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The request's deadline: the one in its `extensions` when a layer has set it, else
    /// `default` from now, lowered by `X-Request-Timeout-Ms` ([`request_budget`]). The
    /// request context and the body reader both take it from here, so they agree.
    ///
    /// # Errors
    /// 400 when `X-Request-Timeout-Ms` is not a positive integer.
    pub fn of(
        headers: &HeaderMap,
        extensions: &Extensions,
        default: Duration,
    ) -> Result<Self, ErrorReport> {
        if let Some(deadline) = extensions.get::<Self>() {
            return Ok(*deadline);
        }
        request_budget(headers, default).map(Self::after)
    }
}

/// The client's `Idempotency-Key`, if any.
///
/// # Errors
/// 400 when it is not 1..=128 printable ASCII characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<EnvelopeId>, ErrorReport> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| EnvelopeId::parse(v).ok())
        .map(Some)
        .ok_or_else(|| {
            ErrorReport::new(
                Code::BadRequest,
                "Idempotency-Key must be 1 to 128 printable ASCII characters",
                json!({
                    "header": "Idempotency-Key",
                    "expected": "1..=128 printable ASCII characters, no leading or trailing space",
                }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn the_deadline_can_only_be_lowered() {
        let d = Duration::from_secs(5);
        assert_eq!(request_budget(&headers(&[]), d), Ok(d));
        assert_eq!(
            request_budget(&headers(&[(REQUEST_TIMEOUT, "250")]), d),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            request_budget(&headers(&[(REQUEST_TIMEOUT, "60000")]), d),
            Ok(d)
        );
        // Beyond u64 (found by schemathesis: the documented integer has no maximum).
        assert_eq!(
            request_budget(&headers(&[(REQUEST_TIMEOUT, "99999999999999999999999")]), d),
            Ok(d)
        );
        for bad in ["0", "000", "-1", "+5", "1.5", "null", "soon", ""] {
            assert!(
                request_budget(&headers(&[(REQUEST_TIMEOUT, bad)]), d).is_err(),
                "{bad}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_is_the_header_s_budget_unless_the_request_carries_one() {
        let default = Duration::from_secs(5);
        let header = headers(&[(REQUEST_TIMEOUT, "500")]);
        let mut extensions = Extensions::new();
        let lowered = Deadline::of(&header, &extensions, default).expect("valid header");
        assert_eq!(lowered.budget, Duration::from_millis(500));
        assert_eq!(lowered.at, Instant::now() + Duration::from_millis(500));
        assert!(
            Deadline::of(&headers(&[(REQUEST_TIMEOUT, "soon")]), &extensions, default).is_err()
        );
        let carried = Deadline::after(Duration::from_millis(20));
        extensions.insert(carried);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(Deadline::of(&header, &extensions, default), Ok(carried));
    }

    #[test]
    fn idempotency_keys_are_validated() {
        assert_eq!(idempotency_key(&headers(&[])), Ok(None));
        assert_eq!(
            idempotency_key(&headers(&[(IDEMPOTENCY_KEY, "k-1")]))
                .map(|k| k.map(|k| k.as_str().to_owned())),
            Ok(Some("k-1".to_owned()))
        );
        assert!(idempotency_key(&headers(&[(IDEMPOTENCY_KEY, &"x".repeat(129))])).is_err());
    }
}
