//! `/v1/search` over HTTP: matching, pagination, validation.

use serde_json::json;

use super::helpers::{assert_error, assert_success, enc, json, project, spawn_app};

#[tokio::test]
async fn search_returns_latest_versions_sorted_with_cursor_pages() {
    let app = spawn_app().await;
    let p = project();
    for path in ["c", "a", "b", "d/e"] {
        app.put(
            &format!("ucxl://agent:role@{p}:t/{path}"),
            json!({"content": path}),
        )
        .await;
    }
    app.put(
        &format!("ucxl://agent:role@{p}:t/a"),
        json!({"content": "a2"}),
    )
    .await;
    let pattern = enc(&format!("ucxl://any:any@{p}:any/*"));
    let response = app
        .get_path(&format!("/v1/search?pattern={pattern}&limit=2"))
        .await;
    assert_eq!(response.headers()["x-rustle-backend"], "mock");
    let (status, body) = json(response).await;
    assert_eq!(status, 200);
    let data = assert_success(&body, "UCXL-200-OK");
    let addresses: Vec<_> = data["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["address"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        addresses,
        [
            format!("ucxl://agent:role@{p}:t/a"),
            format!("ucxl://agent:role@{p}:t/b")
        ]
    );
    assert_eq!(data["items"][0]["version"], 2);
    assert_eq!(data["partial"], false);
    assert_eq!(data["failed_endpoints"], json!([]));
    for key in ["id", "created_at", "content_type", "size"] {
        assert!(data["items"][0].get(key).is_some(), "{key}");
    }
    let cursor = data["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let (_, body) = json(
        app.get_path(&format!(
            "/v1/search?pattern={pattern}&limit=2&cursor={}",
            enc(&cursor)
        ))
        .await,
    )
    .await;
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        data["items"][0]["address"],
        format!("ucxl://agent:role@{p}:t/c")
    );
    assert_eq!(data["next_cursor"], serde_json::Value::Null);
}

#[tokio::test]
async fn default_limit_is_50() {
    let app = spawn_app().await;
    let p = project();
    for i in 0..55 {
        app.put(&format!("ucxl://a:r@{p}:t/n{i:03}"), json!({"content": i}))
            .await;
    }
    let (_, body) = json(
        app.get_path(&format!(
            "/v1/search?pattern={}",
            enc(&format!("ucxl://a:r@{p}:t/**"))
        ))
        .await,
    )
    .await;
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["items"].as_array().map(Vec::len), Some(50));
    assert!(data["next_cursor"].is_string());
}

#[tokio::test]
async fn content_type_filter() {
    let app = spawn_app().await;
    let p = project();
    app.put(&format!("ucxl://a:r@{p}:t/j"), json!({"content": 1}))
        .await;
    app.put(
        &format!("ucxl://a:r@{p}:t/m"),
        json!({"content": "# hi", "content_type": "text/markdown"}),
    )
    .await;
    let path = format!(
        "/v1/search?pattern={}&content_type={}",
        enc(&format!("ucxl://a:r@{p}:t/*")),
        enc("text/markdown")
    );
    let (_, body) = json(app.get_path(&path).await).await;
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(data["items"][0]["content_type"], "text/markdown");
}

#[tokio::test]
async fn invalid_search_parameters_are_400() {
    let app = spawn_app().await;
    let ok = enc("ucxl://any:any@any:any/**");
    let (status, body) = json(
        app.get_path(&format!(
            "/v1/search?pattern={}",
            enc("ucxl://any:any@any:any/a**")
        ))
        .await,
    )
    .await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_ADDRESS");
    assert_eq!(e["details"]["field"], "path");
    let (status, body) = json(
        app.get_path(&format!(
            "/v1/search?pattern={}",
            enc("ucxl://any:any@any:any/~~x")
        ))
        .await,
    )
    .await;
    assert_error(status, &body, "UCXL-400-TEMPORAL_INVALID");
    for bad in ["limit=0", "limit=1001", "cursor=garbage"] {
        let (status, body) = json(
            app.get_path(&format!("/v1/search?pattern={ok}&{bad}"))
                .await,
        )
        .await;
        let e = assert_error(status, &body, "UCXL-400-BAD_REQUEST");
        assert!(e["details"]["field"].is_string(), "{bad}: {e}");
    }
}
