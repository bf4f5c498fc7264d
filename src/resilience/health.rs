//! Active health checks (SPEC §7): every endpoint's `/health` each interval, all in
//! parallel, through the same transport as requests. Two consecutive passes mark a down
//! endpoint up, two failures an up one down; a pass moves an open breaker to half-open.
//! A down endpoint that just passed is checked again after a quarter interval, so a
//! recovered node is not left idle for a whole period.

use std::sync::Arc;

use axum::http::Method;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use crate::upstream::cluster::Cluster;
use crate::upstream::endpoint::Endpoint;
use crate::upstream::transport::{Exchange, Transport};
use crate::upstream::ucxi::{self, Answer, NodeRequest};

/// A down endpoint that passed a health check is checked again after this fraction of the
/// health interval.
const CONFIRM_DIVISOR: u32 = 4;
/// Largest health check answer.
const HEALTH_ANSWER_BYTES: usize = 64 << 10;

/// The request id health checks carry (nodes log it).
pub const HEALTH_CHECK_ID: &str = "health-check";

/// Runs the health checks of `cluster` until `stop` is cancelled.
pub async fn run(cluster: Arc<Cluster>, stop: CancellationToken) {
    let request = Arc::new(NodeRequest {
        method: Method::GET,
        path: "/health".into(),
        headers: Vec::new(),
        body: None,
        prefer: None,
        list: false,
        about: ucxi::Subject::Any,
        hedge: false,
    });
    loop {
        let policy = cluster.policy();
        let endpoints = cluster.endpoints();
        let transport = cluster.transport();
        let checks = endpoints
            .iter()
            .map(|e| check(e, transport.clone(), &request, policy.health_timeout));
        let changes = futures_util::future::join_all(checks).await;
        if changes.iter().any(|c| c.passed) {
            cluster.notify_recovered();
        }
        let pause = if changes.iter().any(|c| c.change.confirming) {
            policy.health_interval / CONFIRM_DIVISOR
        } else {
            policy.health_interval
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = cluster.reconfigured() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One endpoint's check and what it changed.
struct Checked {
    passed: bool,
    change: crate::upstream::endpoint::HealthChange,
}

async fn check(
    endpoint: &Endpoint,
    transport: Transport,
    request: &Arc<NodeRequest>,
    timeout: std::time::Duration,
) -> Checked {
    let exchange = Exchange {
        endpoint: endpoint.endpoint_url().clone(),
        request: Arc::clone(request),
        request_id: HEALTH_CHECK_ID.into(),
        trace: ucxl_service::TraceContext::unsampled(),
        timeout,
        max_answer_bytes: HEALTH_ANSWER_BYTES,
    };
    let result = ucxi::classify::<Value>(transport.oneshot(exchange).await);
    let error = match &result {
        Ok(Answer::Ok { .. }) => None,
        Ok(Answer::Refused(r)) => Some((
            format!("health check answered {}", r.code),
            r.message.clone(),
        )),
        Err(e) => Some((format!("health check: {}", e.public()), e.to_string())),
    };
    let passed = error.is_none();
    Checked {
        passed,
        change: endpoint.health_result(passed, error),
    }
}
