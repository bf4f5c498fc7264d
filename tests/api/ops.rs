//! Operations routes: health, readiness, status, metrics, `OpenAPI` and Swagger UI.

use serde_json::json;

use super::helpers::{assert_success, enc, json, project, spawn_app};

#[tokio::test]
async fn health_and_ready() {
    let app = spawn_app().await;
    let (status, body) = json(app.get_path("/health").await).await;
    assert_eq!(status, 200);
    assert_eq!(assert_success(&body, "UCXL-200-OK")["status"], "ok");
    let (status, body) = json(app.get_path("/ready").await).await;
    assert_eq!(status, 200);
    assert_eq!(assert_success(&body, "UCXL-200-OK")["status"], "ready");
}

#[tokio::test]
async fn probes_ignore_headers_they_do_not_use() {
    let app = spawn_app().await;
    for path in ["/health", "/ready", "/v1/status"] {
        let response = app
            .request(reqwest::Method::GET, path)
            .header("X-Request-Timeout-Ms", "garbage")
            .header("Idempotency-Key", "x".repeat(300))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn custom_methods_do_not_create_metric_series() {
    let app = spawn_app().await;
    let method = reqwest::Method::from_bytes(b"BREW4711").expect("token");
    let response = app.request(method, "/health").send().await.expect("sent");
    assert_eq!(response.status(), 405);
    let text = app.get_path("/metrics").await.text().await.expect("text");
    assert!(!text.contains("BREW4711"), "{text}");
    assert!(text.contains(r#"method="other""#), "{text}");
}

#[tokio::test]
async fn status_reports_mode_backend_and_local_store() {
    let app = spawn_app().await;
    app.put(
        &format!("ucxl://a:r@{}:t/x", project()),
        json!({"content": 1}),
    )
    .await;
    let (status, body) = json(app.get_path("/v1/status").await).await;
    assert_eq!(status, 200);
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["mode"], "mock");
    assert_eq!(data["active_backend"], "mock");
    assert_eq!(data["fallback"], json!({"active": false, "since": null}));
    assert_eq!(data["journal"], json!({"pending": 0}));
    assert_eq!(data["endpoints"], json!([]));
    assert_eq!(data["local_store"]["addresses"], 1);
    assert_eq!(data["local_store"]["entries"], 1);
    assert_eq!(data["local_store"]["owned_entries"], 1);
    assert_eq!(data["local_store"]["max_entries"], 100_000);
    assert!(data["uptime_seconds"].is_u64());
    assert_eq!(data["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn metrics_are_labelled_by_route_template() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/secret-path-segment", project());
    app.put(&a, json!({"content": 1})).await;
    app.get(&a).await;
    app.get_path("/no/such/route/for-metrics").await;
    let response = app.get_path("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/plain"))
    );
    let text = response.text().await.expect("text");
    assert!(
        text.contains(r#"rustle_requests_total{route="/v1/envelopes",method="PUT",status="201"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"rustle_requests_total{route="/v1/envelopes",method="GET",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(
        text.contains("rustle_request_duration_seconds_bucket{route=\"/v1/envelopes\""),
        "{text}"
    );
    assert!(
        !text.contains("secret-path-segment"),
        "raw URIs never become labels"
    );
    assert!(
        !text.contains("for-metrics"),
        "raw URIs never become labels"
    );
}

#[tokio::test]
async fn openapi_is_served_and_matches_the_generated_document() {
    let app = spawn_app().await;
    let (status, served) = json(app.get_path("/openapi.json").await).await;
    assert_eq!(status, 200);
    let generated = serde_json::to_value(rustle_gateway::openapi::document()).expect("json");
    assert_eq!(served, generated);
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1"))
    );
}

#[tokio::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let response = app.get_path("/docs/").await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no CDN: {html}"
    );
    for asset in [
        "/docs/swagger-ui.css",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-initializer.js",
    ] {
        let response = app.get_path(asset).await;
        assert_eq!(response.status(), 200, "{asset}");
    }
    let init = app
        .get_path("/docs/swagger-initializer.js")
        .await
        .text()
        .await
        .expect("js");
    assert!(init.contains("/openapi.json"), "{init}");
    assert!(
        init.contains(r#""validatorUrl": "none""#) || init.contains(r#""validatorUrl":"none""#),
        "no call to validator.swagger.io: {init}"
    );
    // /docs redirects to /docs/
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let response = no_redirect
        .get(app.url("/docs"))
        .send()
        .await
        .expect("sent");
    assert!(
        response.status().is_redirection() || response.status() == 200,
        "{}",
        response.status()
    );
}

#[tokio::test]
async fn every_documented_operation_exists_on_the_router() {
    let app = spawn_app().await;
    let doc = serde_json::to_value(rustle_gateway::openapi::document()).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    for path in [
        "/v1/envelopes",
        "/v1/envelopes/history",
        "/v1/search",
        "/v1/status",
        "/v1/admin/mode",
        "/v1/admin/reload",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(path), "{path} is documented");
    }
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let response = app
                .request(m, &format!("{path}?address={}", enc("ucxl://a:r@p:t")))
                .send()
                .await
                .expect("sent");
            assert_ne!(response.status(), 405, "{method} {path} is routed");
            if response.status() == 404 {
                let (_, body) = json(response).await;
                let message = body["error"]["message"].as_str().unwrap_or_default();
                assert!(
                    !message.starts_with("no route"),
                    "{method} {path} is routed: {body}"
                );
            }
        }
    }
}

#[tokio::test]
async fn graceful_stop_returns() {
    let app = spawn_app().await;
    assert_eq!(app.get_path("/health").await.status(), 200);
    app.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn counters_that_alerts_watch_exist_from_the_start() {
    // Prometheus's increase() takes a series' first sample as its baseline: a counter born
    // at 1 would hide its first event from docker/prometheus/alerts.yml.
    let endpoint = super::faults::refused();
    let config = super::resilience::cluster_config(
        std::slice::from_ref(&endpoint.url),
        rustle_gateway::config::BackendMode::Real,
    );
    let app =
        super::helpers::spawn_app_with(config, rustle_gateway::startup::Options::default()).await;
    let text = app.get_path("/metrics").await.text().await.expect("text");
    for series in [
        "rustle_load_shed_total ".to_owned(),
        "rustle_retry_budget_exhausted_total ".to_owned(),
        format!(
            "rustle_breaker_transitions_total{{endpoint=\"{}\",from=\"closed\",to=\"open\"}}",
            endpoint.url
        ),
        format!(
            "rustle_breaker_transitions_total{{endpoint=\"{}\",from=\"half_open\",to=\"open\"}}",
            endpoint.url
        ),
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&series)),
            "{series} missing:\n{text}"
        );
    }
}
