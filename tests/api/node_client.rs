//! The HTTP transport and the UCXI classification against real servers that misbehave on
//! purpose (`super::wire`): refuse, hang, 503 with Retry-After, garbage, wrong content
//! type, oversized and truncated answers.

use std::time::Duration;

use std::sync::Arc;

use rustle_gateway::config::EndpointUrl;
use rustle_gateway::resilience::retry::retryable;
use rustle_gateway::upstream::transport::{ClientSettings, Exchange, HttpTransport};
use rustle_gateway::upstream::ucxi::{self, Answer, AttemptError, NodeRequest, Subject};
use tower::ServiceExt as _;

use super::wire::{Fault, server};

/// The part of an envelope these tests look at.
#[derive(Debug, serde::Deserialize, PartialEq)]
struct Data {
    content: Content,
}

#[derive(Debug, serde::Deserialize, PartialEq)]
struct Content {
    n: u32,
}

async fn attempt(endpoint: &EndpointUrl, timeout: Duration) -> Result<Answer<Data>, AttemptError> {
    let transport = HttpTransport::boxed(&ClientSettings::plain(Duration::from_millis(250)))
        .expect("transport");
    let exchange = Exchange {
        endpoint: endpoint.clone(),
        request: Arc::new(NodeRequest {
            method: reqwest::Method::GET,
            path: "/ucxi/v1/get?address=x".into(),
            headers: Vec::new(),
            body: None,
            prefer: None,
            list: false,
            about: Subject::Any,
            hedge: false,
        }),
        request_id: "test".into(),
        trace: ucxl_service::TraceContext::root(),
        timeout,
        max_answer_bytes: 4 << 20,
    };
    ucxi::classify::<Data>(transport.oneshot(exchange).await)
}

#[tokio::test]
async fn a_valid_answer_is_believed() {
    let endpoint = server(Fault::Fine).await;
    let answer = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect("valid");
    assert!(matches!(
        answer,
        Answer::Ok {
            data: Data {
                content: Content { n: 7 }
            },
            ..
        }
    ));
}

#[tokio::test]
async fn refused_connections_are_retryable_connect_errors() {
    let refused = super::faults::refused();
    let endpoint: EndpointUrl = refused.url.parse().expect("url");
    let e = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect_err("refused");
    assert!(matches!(e, AttemptError::Connect(_)), "{e}");
    assert!(retryable(&e));
}

#[tokio::test]
async fn a_hanging_node_times_out() {
    let endpoint = server(Fault::Hang).await;
    let started = std::time::Instant::now();
    let e = attempt(&endpoint, Duration::from_millis(200))
        .await
        .expect_err("hangs");
    assert_eq!(e, AttemptError::Timeout(200));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the attempt timeout"
    );
}

#[tokio::test]
async fn unavailable_carries_a_capped_retry_after() {
    let endpoint = server(Fault::Unavailable).await;
    let e = attempt(&endpoint, Duration::from_secs(2))
        .await
        .expect_err("503");
    assert_eq!(
        e,
        AttemptError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(5)),
        }
    );
    assert!(retryable(&e));
}

#[tokio::test]
async fn garbage_truncated_mistyped_and_oversized_answers_are_bad_answers() {
    for fault in [
        Fault::Garbage,
        Fault::Truncated,
        Fault::WrongType,
        Fault::Huge,
        Fault::TenMegabytes,
        Fault::TenMegabytesChunked,
    ] {
        let endpoint = server(fault).await;
        let e = attempt(&endpoint, Duration::from_secs(5))
            .await
            .expect_err("bad");
        assert!(matches!(e, AttemptError::BadAnswer(_)), "{fault:?}: {e}");
    }
}

#[tokio::test]
async fn a_body_that_never_ends_is_cut_by_the_timeout() {
    let endpoint = server(Fault::EndlessChunks).await;
    let started = std::time::Instant::now();
    let e = attempt(&endpoint, Duration::from_millis(300))
        .await
        .expect_err("endless");
    assert!(
        matches!(e, AttemptError::Timeout(_) | AttemptError::BadAnswer(_)),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
