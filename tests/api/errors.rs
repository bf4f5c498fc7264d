//! Every error of every route in the UCXL shape (SPEC §5, §12).

use reqwest::Method;
use serde_json::json;

use super::helpers::{assert_error, enc, json, project, spawn_app, spawn_app_with, test_config};
use super::raw_http;

#[tokio::test]
async fn unknown_route_is_404() {
    let app = spawn_app().await;
    let (status, body) = json(app.get_path("/v1/nope").await).await;
    let e = assert_error(status, &body, "UCXL-404-NOT_FOUND");
    assert_eq!(e["path"], "/v1/nope");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let app = spawn_app().await;
    let response = app
        .request(Method::POST, "/v1/envelopes?address=x")
        .send()
        .await
        .expect("sent");
    let allow = response.headers()["allow"]
        .to_str()
        .expect("ascii")
        .to_owned();
    for m in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
    let (status, body) = json(response).await;
    assert_error(status, &body, "UCXL-405-METHOD_NOT_ALLOWED");
    let (status, body) = json(
        app.request(Method::DELETE, "/v1/status")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_error(status, &body, "UCXL-405-METHOD_NOT_ALLOWED");
}

#[tokio::test]
async fn malformed_json_is_400_with_the_position() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let response = app
        .client
        .put(app.envelope_url(&a))
        .header("content-type", "application/json")
        .body("{\n  \"content\": [1, 2,\n}")
        .send()
        .await
        .expect("sent");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_PAYLOAD");
    assert_eq!(e["details"]["line"], 3);
    assert_eq!(e["details"]["column"], 1);
    assert_eq!(e["details"]["category"], "syntax");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("line 3")),
        "{e}"
    );
}

#[tokio::test]
async fn mistyped_or_incomplete_bodies_name_the_field() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    for (body, path) in [
        (json!({"metadata": {}}), "."),
        (json!({"content": 1, "metadata": "nope"}), "metadata"),
        (json!({"content": 1, "content_type": 5}), "content_type"),
        (json!({"content": 1, "version": 9}), "version"),
    ] {
        let (status, response) = json(app.put(&a, body.clone()).await).await;
        let e = assert_error(status, &response, "UCXL-400-INVALID_PAYLOAD");
        assert_eq!(e["details"]["path"], path, "{body}: {e}");
    }
    let (status, response) = json(app.put(&a, json!([1])).await).await;
    assert_error(status, &response, "UCXL-400-INVALID_PAYLOAD");
    assert!(app.get(&a).await.status() == 404, "nothing was stored");
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = app
            .client
            .put(app.envelope_url(&a))
            .body(r#"{"content": 1}"#);
        if let Some(ct) = ct {
            request = request.header("content-type", ct);
        }
        let (status, body) = json(request.send().await.expect("sent")).await;
        assert_error(status, &body, "UCXL-415-UNSUPPORTED_MEDIA_TYPE");
    }
}

#[tokio::test]
async fn oversized_body_is_413() {
    let mut config = test_config();
    config.max_body_bytes = 64;
    let app = spawn_app_with(config, rustle_gateway::startup::Options::default()).await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let big = json!({"content": "x".repeat(100)});
    let (status, body) = json(app.put(&a, big.clone()).await).await;
    let e = assert_error(status, &body, "UCXL-413-PAYLOAD_TOO_LARGE");
    assert_eq!(e["details"]["limit_bytes"], 64);
    // without Content-Length (chunked), the limit still holds
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
        Ok(br#"{"content": ""#.to_vec()),
        Ok(vec![b'x'; 100]),
        Ok(br#""}"#.to_vec()),
    ];
    let stream = futures_util::stream::iter(chunks);
    let response = app
        .client
        .put(app.envelope_url(&a))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("sent");
    let (status, body) = json(response).await;
    assert_error(status, &body, "UCXL-413-PAYLOAD_TOO_LARGE");
    assert_eq!(app.put(&a, json!({"content": "small"})).await.status(), 201);
}

#[tokio::test]
async fn invalid_addresses_name_the_component() {
    let app = spawn_app().await;
    for (address, code, field) in [
        (
            "ucxl://claude:arch itect@bzzz:t/x",
            "UCXL-400-INVALID_ADDRESS",
            "role",
        ),
        (
            "ucxl://claude:architect@bzzz:t/x/../y",
            "UCXL-400-INVALID_ADDRESS",
            "path",
        ),
        (
            "http://claude:architect@bzzz:t",
            "UCXL-400-INVALID_ADDRESS",
            "scheme",
        ),
        (
            "ucxl://claude:architect@bzzz:t/*~x/y",
            "UCXL-400-TEMPORAL_INVALID",
            "temporal",
        ),
        (
            "ucxl://claude:architect@bzzz:t/~~4294967296",
            "UCXL-400-TEMPORAL_INVALID",
            "temporal",
        ),
        (
            "ucxl://cl%61ude:architect@bzzz:t",
            "UCXL-400-INVALID_ADDRESS",
            "agent",
        ),
    ] {
        let (status, body) = json(app.get(address).await).await;
        let e = assert_error(status, &body, code);
        assert_eq!(e["details"]["field"], field, "{address}: {e}");
        assert!(e["details"]["provided"].is_string());
        assert!(e["details"]["expected"].is_string());
    }
    let (status, body) = json(app.get("ucxl://claude:arch itect@bzzz:t").await).await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_ADDRESS");
    assert_eq!(e["details"]["provided"], "arch itect");
    assert_eq!(e["details"]["expected"], "[A-Za-z0-9_-]{1,64} or any");
}

#[tokio::test]
async fn star_components_are_refused_on_envelope_routes() {
    let app = spawn_app().await;
    let (status, body) = json(app.put("ucxl://*:r@p:t/x", json!({"content": 1})).await).await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_ADDRESS");
    assert_eq!(e["details"]["field"], "agent");
    let (status, body) = json(app.get("ucxl://a:r@p:*/x").await).await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_ADDRESS");
    assert_eq!(e["details"]["field"], "task");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("search")),
        "{e}"
    );
}

#[tokio::test]
async fn a_stalled_body_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut config = test_config();
    config.request_timeout = std::time::Duration::from_millis(200);
    let app = spawn_app_with(config, rustle_gateway::startup::Options::default()).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    // Content-Length promises 100 bytes; 10 arrive, then nothing.
    let head = format!(
        "PUT /v1/envelopes?address={} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"content\"",
        enc("ucxl://a:r@p:t/x")
    );
    stream.write_all(head.as_bytes()).await.expect("writes");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The server answers and closes or keeps the connection; read until the body is in.
    while !String::from_utf8_lossy(&answer).contains("}}") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("the gateway answers a stalled body")
            .expect("reads");
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("UCXL-408-REQUEST_TIMEOUT"), "{text}");
}

#[tokio::test]
async fn a_stalled_body_is_answered_by_the_deadline_the_client_set() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config();
    // Longer than `read_answer` waits: an answer at the configured deadline fails the test.
    config.request_timeout = std::time::Duration::from_secs(120);
    let app = spawn_app_with(config, rustle_gateway::startup::Options::default()).await;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let path = format!("/v1/envelopes?address={}", enc("ucxl://a:r@p:t/x"));
    let mut request = raw_http::head(
        &path,
        raw_http::Framing::Length(100),
        &["x-request-timeout-ms: 500"],
    );
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    let answer = raw_http::read_answer(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("UCXL-408-REQUEST_TIMEOUT"), "{answer}");
    assert!(answer.contains(r#""timeout_ms":500"#), "{answer}");
}

#[tokio::test]
async fn a_client_that_writes_a_too_large_body_before_reading_gets_the_413() {
    const LIMIT: usize = 1 << 20;
    let mut config = test_config();
    config.max_body_bytes = LIMIT;
    let app = spawn_app_with(config, rustle_gateway::startup::Options::default()).await;
    let path = format!("/v1/envelopes?address={}", enc("ucxl://a:r@p:t/x"));
    for framing in [
        raw_http::Framing::Length(2 * LIMIT),
        raw_http::Framing::Chunked,
    ] {
        let answer = raw_http::put_whole_then_read(app.addr, &path, framing, 2 * LIMIT).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{framing:?}: {answer}");
        assert!(
            answer.contains("UCXL-413-PAYLOAD_TOO_LARGE"),
            "{framing:?}: {answer}"
        );
    }
}

#[tokio::test]
async fn missing_duplicate_or_unknown_query_parameters_are_400() {
    let app = spawn_app().await;
    for path in [
        "/v1/envelopes",
        "/v1/envelopes?adress=ucxl://a:r@p:t",
        "/v1/envelopes?address=ucxl://a:r@p:t&address=ucxl://a:r@p:u",
        "/v1/envelopes/history",
        "/v1/search",
        "/v1/search?pattern=ucxl://any:any@any:any&limit=abc",
        "/v1/search?pattern=ucxl://any:any@any:any&extra=1",
    ] {
        let (status, body) = json(app.get_path(path).await).await;
        assert_error(status, &body, "UCXL-400-BAD_REQUEST");
    }
}

#[tokio::test]
async fn bad_headers_are_400() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let response = app
        .client
        .get(app.envelope_url(&a))
        .header("X-Request-Timeout-Ms", "soon")
        .send()
        .await
        .expect("sent");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-400-BAD_REQUEST");
    assert_eq!(e["details"]["header"], "X-Request-Timeout-Ms");
    let response = app
        .client
        .put(app.envelope_url(&a))
        .header("Idempotency-Key", "x".repeat(129))
        .json(&json!({"content": 1}))
        .send()
        .await
        .expect("sent");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-400-BAD_REQUEST");
    assert_eq!(e["details"]["header"], "Idempotency-Key");
}

#[tokio::test]
async fn a_panicking_handler_answers_an_opaque_500() {
    use axum::routing::get;
    use tower::ServiceExt;
    async fn boom() -> &'static str {
        panic!("secret internals at /etc/secret")
    }
    let app = rustle_gateway::startup::with_layers(axum::Router::new().route("/boom", get(boom)));
    let response = app
        .oneshot(
            axum::http::Request::get("/boom")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("a response");
    assert_eq!(response.status(), 500);
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
    let e = assert_error(500, &body, "UCXL-500-INTERNAL_ERROR");
    assert!(!body.to_string().contains("secret"), "{e}");
}

#[tokio::test]
async fn addresses_work_raw_or_url_encoded() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    // The query value is URL-encoded by the client; a raw, unencoded address also works
    // when it contains nothing the query syntax reserves.
    assert_eq!(app.put(&a, json!({"content": 1})).await.status(), 201);
    let raw = app.get_path(&format!("/v1/envelopes?address={a}")).await;
    assert_eq!(raw.status(), 200);
    let encoded = app
        .get_path(&format!("/v1/envelopes?address={}", enc(&a)))
        .await;
    assert_eq!(encoded.status(), 200);
}
