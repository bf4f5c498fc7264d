//! The UCXI API of a BZZZ node (SPEC §9): what the gateway sends ([`NodeRequest`]) and how
//! what a node answers is classified (SPEC §7, §12) before it is believed. Garbage,
//! oversized, mistyped or mislabelled answers are the endpoint's failure (502), never a
//! panic; a node's 4xx is a definite answer passed on to the client.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use ucxl::{Address, Code, Failure, Success};

use super::transport::{RawAnswer, TransportError};

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
    /// A valid answer about another address than the one asked (a confused or lying node).
    #[error("answered for another address ({0})")]
    WrongAddress(String),
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
            Self::WrongAddress(_) => "answered for another address".into(),
            other => other.to_string(),
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

/// How much larger than an envelope answer a list answer (history, discover) may be.
pub const LIST_ANSWER_FACTOR: usize = 8;

/// One request to a node, as sent (shared by every attempt).
#[derive(Debug, Clone)]
pub struct NodeRequest {
    /// The method.
    pub method: Method,
    /// Path and query, e.g. `/ucxi/v1/get?address=...`.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: Option<Bytes>,
    /// The endpoint to try first when it is available (the one that took the address's
    /// last write, so a client reads its own writes even before every replica has them).
    pub prefer: Option<String>,
    /// Whether the answer is a list (history, discover), allowed [`LIST_ANSWER_FACTOR`]
    /// times the size of an envelope answer.
    pub list: bool,
    /// What the answer must be about: an answer about another address (or with another
    /// number of results than items sent) is the endpoint's failure, decided before its
    /// outcome is recorded.
    pub about: Subject,
    /// Whether a late answer may be raced by the same request to another endpoint (the
    /// request must be idempotent: every read is, and every write carries its id).
    pub hedge: bool,
}

/// What an answer must be about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// Nothing in particular (search, health).
    Any,
    /// This canonical address (no temporal segment): an answer that names an address must
    /// name this one. (The text, shared with the request's [`Address`]: comparing is all
    /// it is for.)
    Address(std::sync::Arc<str>),
    /// One result per item sent (a batch), in order, each about its item's address.
    Items(Vec<Address>),
}

/// The address an answer's data is about, when its shape names one.
pub trait About {
    /// The address, if any.
    fn about(&self) -> Option<&Address> {
        None
    }

    /// For an answer of one result per item sent (a batch): each result's address, in
    /// order; `None` for any other answer.
    fn results_about(&self) -> Option<Vec<&Address>> {
        None
    }
}

impl About for ucxl::Envelope {
    fn about(&self) -> Option<&Address> {
        Some(&self.address)
    }
}

impl About for ucxl::History {
    fn about(&self) -> Option<&Address> {
        Some(&self.address)
    }
}

impl About for Value {}

impl About for ucxl::batch::Results {
    fn results_about(&self) -> Option<Vec<&Address>> {
        Some(self.results.iter().map(|r| &r.address).collect())
    }
}

/// `answer` when it is about what was asked: the address `subject` names (or none), or
/// one result per item sent, each about its item's address.
///
/// # Errors
/// [`AttemptError::WrongAddress`] for data about another address;
/// [`AttemptError::BadAnswer`] for a batch answer with another number of results.
pub fn check_about<T: About>(
    answer: Answer<T>,
    subject: &Subject,
) -> Result<Answer<T>, AttemptError> {
    let Answer::Ok { data, .. } = &answer else {
        return Ok(answer);
    };
    let wrong = |asked: &str, answered: &Address| {
        tracing::warn!(asked = %asked, answered = %answered, "a node answered for another address");
        AttemptError::WrongAddress(ucxl::error::excerpt(answered.canonical()))
    };
    match subject {
        Subject::Any => {}
        Subject::Address(asked) => {
            if let Some(answered) = data.about()
                && answered.canonical() != &**asked
            {
                return Err(wrong(asked, answered));
            }
        }
        Subject::Items(sent) => {
            let Some(answered) = data.results_about() else {
                return Err(AttemptError::BadAnswer(
                    "not an answer of one result per item".into(),
                ));
            };
            if answered.len() != sent.len() {
                return Err(AttemptError::BadAnswer(format!(
                    "{} results for {} items",
                    answered.len(),
                    sent.len()
                )));
            }
            if let Some((asked, answered)) = sent
                .iter()
                .zip(answered)
                .find(|(asked, answered)| asked.canonical() != answered.canonical())
            {
                return Err(wrong(asked.canonical(), answered));
            }
        }
    }
    Ok(answer)
}

impl NodeRequest {
    /// The largest answer believed when an envelope answer may be `max_answer_bytes`.
    #[must_use]
    pub fn answer_limit(&self, max_answer_bytes: usize) -> usize {
        if self.list {
            max_answer_bytes.saturating_mul(LIST_ANSWER_FACTOR)
        } else {
            max_answer_bytes
        }
    }
}

/// Classifies an exchange: a believed answer (data or a definite refusal), or why the
/// attempt failed.
///
/// # Errors
/// [`AttemptError`], classified.
pub fn classify<T: DeserializeOwned>(
    exchanged: Result<RawAnswer, TransportError>,
) -> Result<Answer<T>, AttemptError> {
    let raw = match exchanged {
        Ok(raw) => raw,
        Err(TransportError::Connect(why)) => return Err(AttemptError::Connect(why)),
        Err(TransportError::Timeout(ms)) => return Err(AttemptError::Timeout(ms)),
        Err(TransportError::TooLarge) => {
            return Err(AttemptError::BadAnswer(
                "answer larger than the limit".into(),
            ));
        }
        Err(TransportError::Body(why)) => return Err(AttemptError::BadAnswer(why)),
    };
    let status = raw.status;
    if status == 401 || status == 403 {
        return Err(AttemptError::Credentials(status));
    }
    if status == 429 || status >= 500 {
        return Err(AttemptError::Unavailable {
            status,
            retry_after: raw
                .retry_after
                .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER)),
        });
    }
    if !raw.json {
        return Err(AttemptError::BadAnswer(format!(
            "{status} without a JSON body"
        )));
    }
    decode(status, &raw.body)
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
        }
    }

    #[test]
    fn a_batch_answer_holds_one_result_per_item_each_about_its_items_address() {
        use ucxl::batch::{ItemResult, Results};
        let address = |p: &str| Address::parse(&format!("ucxl://a:r@p:t/{p}")).expect("address");
        let result =
            |p: &str| ItemResult::failed(address(p), Code::Conflict, "m".into(), json!({}));
        let answer = |paths: &[&str]| Answer::Ok {
            code: Code::Ok,
            data: Results {
                results: paths.iter().map(|p| result(p)).collect(),
            },
        };
        let sent = Subject::Items(vec![address("x"), address("y")]);
        assert!(check_about(answer(&["x", "y"]), &sent).is_ok());
        for short_or_long in [&["x"][..], &["x", "y", "y"], &[]] {
            assert!(
                matches!(
                    check_about(answer(short_or_long), &sent),
                    Err(AttemptError::BadAnswer(_))
                ),
                "{short_or_long:?}"
            );
        }
        assert_eq!(
            check_about(answer(&["x", "z"]), &sent),
            Err(AttemptError::WrongAddress("ucxl://a:r@p:t/z".into()))
        );
        assert_eq!(
            check_about(answer(&["y", "x"]), &sent),
            Err(AttemptError::WrongAddress("ucxl://a:r@p:t/y".into())),
            "in order"
        );
        // An answer of another shape cannot answer a batch.
        let envelope_like = Answer::Ok {
            code: Code::Ok,
            data: json!({"results": []}),
        };
        assert!(matches!(
            check_about(envelope_like, &sent),
            Err(AttemptError::BadAnswer(_))
        ));
        // A refusal names no results: it is passed on as it is.
        let refused: Answer<Results> = Answer::Refused(Refusal {
            code: Code::NotFound,
            message: "no route".into(),
            details: json!({}),
        });
        assert!(check_about(refused, &sent).is_ok());
    }

    #[test]
    fn statuses_are_classified_before_bodies() {
        let raw = |status, json, retry_after| -> Result<RawAnswer, TransportError> {
            Ok(RawAnswer {
                status,
                json,
                retry_after,
                body: Bytes::new(),
            })
        };
        assert_eq!(
            classify::<Data>(raw(401, true, None)),
            Err(AttemptError::Credentials(401))
        );
        assert_eq!(
            classify::<Data>(raw(503, false, Some(60))),
            Err(AttemptError::Unavailable {
                status: 503,
                retry_after: Some(MAX_RETRY_AFTER)
            }),
            "Retry-After is capped"
        );
        assert!(matches!(
            classify::<Data>(raw(200, false, None)),
            Err(AttemptError::BadAnswer(_))
        ));
        assert_eq!(
            classify::<Data>(Err(TransportError::Timeout(7))),
            Err(AttemptError::Timeout(7))
        );
        assert!(matches!(
            classify::<Data>(Err(TransportError::TooLarge)),
            Err(AttemptError::BadAnswer(_))
        ));
    }
}
