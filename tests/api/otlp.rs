//! Span export over OTLP/HTTP, as operators run it: a gateway process and a node process
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector (here a test server that
//! decodes the protobuf), a client request that carries a `traceparent`, then SIGTERM. The
//! batch delay is a minute, so what arrives was flushed at shutdown.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;
use serde_json::json;

use super::helpers::enc;
use super::nodes::NodeProc;
use super::process::{spawn_reaped, terminate};

const TRACE: &str = "3d1e6f5a4b2c1d0e9f8a7b6c5d4e3f2a";
const CLIENT_SPAN: &str = "9a8b7c6d5e4f3a2b";

/// A span as the collector got it, with the service that sent it.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: Vec<(String, String)>,
}

impl Got {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

type Collected = Arc<Mutex<Vec<Got>>>;

/// `POST /v1/traces` of a collector: decodes each export and keeps its spans.
async fn collect(State(got): State<Collected>, body: Bytes) -> axum::http::StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return axum::http::StatusCode::BAD_REQUEST;
    };
    let mut got = got.lock().expect("lock");
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .map(|a| text(a.value.as_ref()))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(a.value.as_ref())))
                        .collect(),
                });
            }
        }
    }
    axum::http::StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_spans_reach_the_collector_from_gateway_and_node_joined_up() {
    let collected = Collected::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let collector = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new()
        .route("/v1/traces", axum::routing::post(collect))
        .with_state(Arc::clone(&collected));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.as_str()),
        // Nothing is sent before shutdown but what fills a batch.
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
    ];
    let mut node = NodeProc::start("otel-node", &[], None, &otel).await;
    let data = tempfile::tempdir().expect("tempdir");
    let data_dir = data.path().display().to_string();
    let node_url = node.url("");
    let mut env = otel.to_vec();
    env.extend([
        ("RUSTLE_BACKEND_MODE", "real"),
        ("RUSTLE_BZZZ_ENDPOINTS", node_url.as_str()),
        ("RUSTLE_DATA_DIR", data_dir.as_str()),
        ("RUSTLE_HEALTH_INTERVAL_MS", "3600000"),
    ]);
    let (mut gateway, addr) = spawn_reaped(&env);
    let response = reqwest::Client::new()
        .put(format!(
            "http://{addr}/v1/envelopes?address={}",
            enc("ucxl://agent:otel@bzzz:trace/notes/a")
        ))
        .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"content": {"n": 1}}))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 201);
    assert_eq!(terminate(&mut gateway.0).code(), Some(0));
    node.stop();
    let spans: Vec<Got> = collected
        .lock()
        .expect("lock")
        .iter()
        .filter(|s| s.trace_id == TRACE)
        .cloned()
        .collect();
    let one = |service: &str, name: &str| -> Got {
        let found: Vec<&Got> = spans
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "one {name} of {service}: {spans:#?}");
        found[0].clone()
    };
    let request = one("rustle-gateway", "request");
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(
        request.parent_span_id, CLIENT_SPAN,
        "the client's span is its parent"
    );
    assert_eq!(request.attribute("http.route"), Some("/v1/envelopes"));
    assert_eq!(request.attribute("http.response.status_code"), Some("201"));
    assert_eq!(request.attribute("backend"), Some("real"));
    let attempt = one("rustle-gateway", "attempt");
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(attempt.parent_span_id, request.span_id, "request → attempt");
    assert_eq!(attempt.attribute("endpoint"), Some(node_url.as_str()));
    assert_eq!(attempt.attribute("outcome"), Some("ok"));
    let served = one("bzzz-node", "request");
    assert_eq!(served.kind, SpanKind::Server as i32);
    assert_eq!(
        served.parent_span_id, attempt.span_id,
        "attempt → node request"
    );
    assert_eq!(served.attribute("http.route"), Some("/ucxi/v1/put"));
}
