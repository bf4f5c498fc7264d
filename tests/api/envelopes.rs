//! `/v1/envelopes` over HTTP: status codes, headers, idempotency, temporal reads, deletes.

use serde_json::json;

use super::helpers::{assert_error, assert_success, json, project, spawn_app};

#[tokio::test]
async fn put_creates_and_get_returns_the_envelope() {
    let app = spawn_app().await;
    let a = format!(
        "ucxl://claude:architect@{}:v2-migration/decisions/protocol.json",
        project()
    );
    let response = app
        .put(
            &a,
            json!({"content": {"decision": "libp2p"}, "metadata": {"author": "claude"}}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-rustle-backend"], "mock");
    assert_eq!(response.headers()["x-rustle-attempts"], "1");
    assert!(response.headers().get("x-rustle-stale").is_none());
    assert!(response.headers().get("x-request-id").is_some());
    let (_, body) = json(response).await;
    let data = assert_success(&body, "UCXL-201-CREATED");
    assert_eq!(data["version"], 1);
    assert_eq!(data["address"], a);
    assert_eq!(data["content_type"], "application/json");
    assert_eq!(data["metadata"]["author"], "claude");
    assert!(
        data["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:"))
    );
    assert_eq!(data["size"], r#"{"decision":"libp2p"}"#.len());

    let (status, got) = json(app.get(&a).await).await;
    assert_eq!(status, 200);
    let got = assert_success(&got, "UCXL-200-OK");
    assert_eq!(got, data);
}

#[tokio::test]
async fn idempotency_key_makes_retries_no_ops() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let (s1, first) = json(app.put_keyed(&a, "retry-1", json!({"content": 1})).await).await;
    assert_eq!(s1, 201);
    let (s2, second) = json(app.put_keyed(&a, "retry-1", json!({"content": 2})).await).await;
    assert_eq!(s2, 200);
    let second = assert_success(&second, "UCXL-200-OK");
    assert_eq!(second, first["response"]["data"]);
    assert_eq!(second["id"], "retry-1");
    let (_, h) = json(
        app.get_path(&format!(
            "/v1/envelopes/history?address={}",
            super::helpers::enc(&a)
        ))
        .await,
    )
    .await;
    assert_eq!(
        assert_success(&h, "UCXL-200-OK")["versions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn temporal_segments_select_versions() {
    let app = spawn_app().await;
    let p = project();
    for i in 1..=3 {
        assert_eq!(
            app.put(&format!("ucxl://a:r@{p}:t/doc"), json!({"content": i}))
                .await
                .status(),
            201
        );
    }
    for (temporal, version) in [("*^", 3), ("*~", 1), ("*~2", 2), ("~~2", 1), ("^^1", 2)] {
        let (status, body) = json(app.get(&format!("ucxl://a:r@{p}:t/{temporal}/doc")).await).await;
        assert_eq!(status, 200, "{temporal}");
        let data = assert_success(&body, "UCXL-200-OK");
        assert_eq!(data["version"], version, "{temporal}");
        assert_eq!(data["content"], version, "{temporal}");
        assert_eq!(
            data["address"],
            format!("ucxl://a:r@{p}:t/doc"),
            "the canonical address"
        );
    }
    let (status, body) = json(app.get(&format!("ucxl://a:r@{p}:t/*~9/doc")).await).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
}

#[tokio::test]
async fn delete_then_get_is_404_and_put_restarts_history() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    app.put(&a, json!({"content": 1})).await;
    app.put(&a, json!({"content": 2})).await;
    let response = app
        .client
        .delete(app.envelope_url(&a))
        .header("Idempotency-Key", "del-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-rustle-backend"], "mock");
    let (status, body) = json(response).await;
    assert_eq!(status, 200);
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["id"], "del-1");
    assert_eq!(data["address"], a);
    assert!(data["deleted_at"].is_string());
    let response = app.get(&a).await;
    // Error answers of backend calls say which backend answered, too.
    assert_eq!(response.headers()["x-rustle-backend"], "mock");
    assert_eq!(response.headers()["x-rustle-attempts"], "1");
    let (status, body) = json(response).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
    // the same delete again is a no-op; a new one finds nothing
    let replay = app
        .client
        .delete(app.envelope_url(&a))
        .header("Idempotency-Key", "del-1")
        .send()
        .await
        .expect("sent");
    assert_eq!(replay.status(), 200);
    let (status, body) = json(app.delete(&a).await).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
    let (status, body) = json(app.put(&a, json!({"content": 3})).await).await;
    assert_eq!(status, 201);
    assert_eq!(body["response"]["data"]["version"], 1);
}

#[tokio::test]
async fn idempotency_key_of_a_delete_cannot_store_a_version() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    app.put(&a, json!({"content": 1})).await;
    app.client
        .delete(app.envelope_url(&a))
        .header("Idempotency-Key", "k")
        .send()
        .await
        .expect("sent");
    let (status, body) = json(app.put_keyed(&a, "k", json!({"content": 2})).await).await;
    assert_error(status, &body, "UCXL-409-CONFLICT");
}

#[tokio::test]
async fn writes_take_no_temporal_segment() {
    let app = spawn_app().await;
    let p = project();
    let (status, body) = json(
        app.put(&format!("ucxl://a:r@{p}:t/*~1/x"), json!({"content": 1}))
            .await,
    )
    .await;
    let e = assert_error(status, &body, "UCXL-400-TEMPORAL_INVALID");
    assert_eq!(e["details"]["field"], "temporal");
    let (status, body) = json(app.delete(&format!("ucxl://a:r@{p}:t/~~1/x")).await).await;
    assert_error(status, &body, "UCXL-400-TEMPORAL_INVALID");
    // `*^` is the latest, so it is allowed
    assert_eq!(
        app.put(&format!("ucxl://a:r@{p}:t/*^/x"), json!({"content": 1}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn content_type_defaults_and_is_validated() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let (_, body) = json(
        app.put(
            &a,
            json!({"content": "hi", "content_type": "text/plain; charset=utf-8"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        body["response"]["data"]["content_type"],
        "text/plain; charset=utf-8"
    );
    let (status, body) = json(
        app.put(&a, json!({"content": "hi", "content_type": "not a type"}))
            .await,
    )
    .await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_PAYLOAD");
    assert_eq!(e["details"]["path"], "content_type");
}

#[tokio::test]
async fn content_may_be_any_json_value() {
    let app = spawn_app().await;
    let p = project();
    for (i, content) in [
        json!(null),
        json!(0),
        json!("s"),
        json!([1, {"a": []}]),
        json!(true),
    ]
    .into_iter()
    .enumerate()
    {
        let a = format!("ucxl://a:r@{p}:t/v{i}");
        assert_eq!(
            app.put(&a, json!({"content": content})).await.status(),
            201,
            "{content}"
        );
        let (_, body) = json(app.get(&a).await).await;
        assert_eq!(body["response"]["data"]["content"], content);
    }
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    let response = app
        .client
        .get(app.envelope_url(&a))
        .header("X-Request-Id", "trace-abc-123")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let (_, body) = json(response).await;
    assert_eq!(body["error"]["request_id"], "trace-abc-123");
    // an unusable id (too long) is replaced by a generated one
    let long = "x".repeat(200);
    let response = app
        .client
        .get(app.envelope_url(&a))
        .header("X-Request-Id", &long)
        .send()
        .await
        .expect("sent");
    let echoed = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(echoed, long);
    assert!(uuid::Uuid::parse_str(&echoed).is_ok());
    let (_, body) = json(response).await;
    assert_eq!(body["error"]["request_id"], echoed);
}

#[tokio::test]
async fn version_zero_does_not_exist() {
    let app = spawn_app().await;
    let p = project();
    app.put(&format!("ucxl://a:r@{p}:t/x"), json!({"content": 1}))
        .await;
    let (status, body) = json(app.get(&format!("ucxl://a:r@{p}:t/*~0/x")).await).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
}

#[tokio::test]
async fn every_served_answer_says_how_it_was_served() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    app.put(&a, json!({"content": 1})).await;
    let history = app
        .get_path(&format!(
            "/v1/envelopes/history?address={}",
            super::helpers::enc(&a)
        ))
        .await;
    assert_eq!(history.headers()["x-rustle-backend"], "mock");
    assert_eq!(history.headers()["x-rustle-attempts"], "1");
    let deleted = app.delete(&a).await;
    assert_eq!(deleted.headers()["x-rustle-backend"], "mock");
}

#[tokio::test]
async fn history_lists_versions_without_content() {
    let app = spawn_app().await;
    let a = format!("ucxl://a:r@{}:t/x", project());
    app.put(&a, json!({"content": {"big": "value"}})).await;
    app.put(
        &a,
        json!({"content": 2, "content_type": "application/vnd.x+json"}),
    )
    .await;
    let (status, body) = json(
        app.get_path(&format!(
            "/v1/envelopes/history?address={}",
            super::helpers::enc(&a)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["address"], a);
    let versions = data["versions"].as_array().expect("array");
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 1);
    assert_eq!(versions[1]["content_type"], "application/vnd.x+json");
    for v in versions {
        assert!(v.get("content").is_none());
        for key in ["id", "created_at", "hash", "size"] {
            assert!(v.get(key).is_some(), "{key}");
        }
    }
}

/// BZZZ keeps context for any agent and role at `ucxl://any:any@...`: on the envelope routes
/// `any` is a literal component, an exact key, not a wildcard.
#[tokio::test]
async fn literal_any_addresses_are_stored_read_and_deleted() {
    let app = spawn_app().await;
    let shared = "ucxl://any:any@BZZZ:RUSTLE-testing/notes/x";
    let claude = "ucxl://claude:any@BZZZ:RUSTLE-testing/notes/x";
    let (status, body) = json(app.put(shared, json!({"content": "for anyone"})).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(assert_success(&body, "UCXL-201-CREATED")["address"], shared);
    let (status, body) = json(app.put(shared, json!({"content": "again"})).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        app.put(claude, json!({"content": "for claude"}))
            .await
            .status(),
        201
    );

    let (status, body) = json(app.get(shared).await).await;
    assert_eq!(status, 200, "{body}");
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(
        (&data["content"], &data["version"]),
        (&json!("again"), &json!(2))
    );
    let (_, body) = json(
        app.get("ucxl://any:any@BZZZ:RUSTLE-testing/*~/notes/x")
            .await,
    )
    .await;
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["content"],
        "for anyone"
    );
    let (status, body) = json(app.get("ucxl://ANY:any@BZZZ:RUSTLE-testing/notes/x").await).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");

    let (status, body) = json(
        app.get_path(&format!(
            "/v1/envelopes/history?address={}",
            super::helpers::enc(shared)
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let history = assert_success(&body, "UCXL-200-OK");
    assert_eq!(history["address"], shared);
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));

    let (status, body) = json(app.delete(shared).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(assert_success(&body, "UCXL-200-OK")["address"], shared);
    let (status, body) = json(app.get(shared).await).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
    let (status, body) = json(app.get(claude).await).await;
    assert_eq!(status, 200, "the other address stays: {body}");
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["content"],
        "for claude"
    );
}
