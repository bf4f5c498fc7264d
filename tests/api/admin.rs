//! `/v1/admin`: bearer auth, mode switching, live reload.

use reqwest::Method;
use rustle_gateway::config::{Cli, Secret};
use rustle_gateway::startup::Options;
use serde_json::json;

use super::helpers::{
    TestApp, assert_error, assert_success, json, spawn_app, spawn_app_with, test_config,
};

const TOKEN: &str = "correct-horse-battery-staple";

async fn admin_app() -> TestApp {
    let mut config = test_config();
    config.admin_token = Some(secret(TOKEN));
    spawn_app_with(config, Options::default()).await
}

pub fn secret(s: &str) -> Secret {
    let sources = rustle_gateway::config::Sources {
        env: [("RUSTLE_ADMIN_TOKEN".to_owned(), s.to_owned())].into(),
        ..Default::default()
    };
    sources
        .resolve()
        .expect("valid")
        .admin_token
        .expect("token set")
}

/// An app started with the admin token and `--config <dir>/rustle.toml` holding `text`
/// (whose cache bound is `cache_max_entries`); its environment has the token too, so
/// reloads keep it.
async fn app_with_config_file(
    text: &str,
    cache_max_entries: usize,
) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rustle.toml");
    std::fs::write(&file, text).expect("write config");
    let cli = Cli {
        config: Some(file),
        ..Cli::default()
    };
    let mut config = test_config();
    config.admin_token = Some(secret(TOKEN));
    config.cache_max_entries = cache_max_entries;
    let app = spawn_app_with(
        config,
        Options {
            cli,
            ..Options::default()
        },
    )
    .await;
    app.env
        .lock()
        .expect("env")
        .insert("RUSTLE_ADMIN_TOKEN".into(), TOKEN.into());
    (app, dir)
}

async fn set_mode(app: &TestApp, token: Option<&str>, mode: &str) -> (u16, serde_json::Value) {
    let mut request = app
        .request(Method::PUT, "/v1/admin/mode")
        .json(&json!({"mode": mode}));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    json(request.send().await.expect("sent")).await
}

#[tokio::test]
async fn admin_routes_are_403_without_a_configured_token() {
    let app = spawn_app().await;
    let (status, body) = set_mode(&app, Some("anything"), "mock").await;
    assert_error(status, &body, "UCXL-403-FORBIDDEN");
    let (status, body) = json(
        app.request(Method::POST, "/v1/admin/reload")
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_error(status, &body, "UCXL-403-FORBIDDEN");
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    let app = admin_app().await;
    for token in [
        None,
        Some("wrong"),
        Some("correct-horse-battery-stapl"),
        Some(""),
    ] {
        let (status, body) = set_mode(&app, token, "mock").await;
        assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
    }
    let response = app
        .request(Method::PUT, "/v1/admin/mode")
        .header("authorization", format!("Basic {TOKEN}"))
        .json(&json!({"mode": "mock"}))
        .send()
        .await
        .expect("sent");
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .expect("ascii");
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert_eq!(response.status(), 401);
}

#[tokio::test]
async fn mode_mock_is_accepted_and_unavailable_modes_are_409() {
    let app = admin_app().await;
    let (status, body) = set_mode(&app, Some(TOKEN), "mock").await;
    assert_eq!(status, 200);
    let data = assert_success(&body, "UCXL-200-OK");
    assert_eq!(data, json!({"mode": "mock", "previous": "mock"}));
    for mode in ["real", "hybrid"] {
        let (status, body) = set_mode(&app, Some(TOKEN), mode).await;
        let e = assert_error(status, &body, "UCXL-409-CONFLICT");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains(mode)),
            "{e}"
        );
    }
    let (status, body) = set_mode(&app, Some(TOKEN), "turbo").await;
    assert_error(status, &body, "UCXL-400-INVALID_PAYLOAD");
    let (_, status_body) = json(app.get_path("/v1/status").await).await;
    assert_eq!(status_body["response"]["data"]["mode"], "mock");
}

#[tokio::test]
async fn reload_applies_file_and_env_changes_and_reports_the_rest() {
    let (app, dir) = app_with_config_file("cache_max_entries = 100\n", 100).await;
    let file = dir.path().join("rustle.toml");

    std::fs::write(
        &file,
        "cache_max_entries = 7\nlisten_addr = \"127.0.0.1:1\"\nmax_body_bytes = 32\n",
    )
    .expect("write config");
    app.env
        .lock()
        .expect("env")
        .insert("RUST_LOG".into(), "debug".into());
    let (status, body) = app.reload(TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let report = assert_success(&body, "UCXL-200-OK");
    let applied: Vec<_> = report["applied"]
        .as_array()
        .expect("applied")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(applied.contains(&"cache_max_entries"), "{report}");
    assert!(applied.contains(&"max_body_bytes"), "{report}");
    assert_eq!(report["restart_required"], json!(["listen_addr"]));
    assert_eq!(
        report["not_applied"][0]["key"], "log_filter",
        "this test process owns no log subscriber"
    );
    // the new values are in force
    let (_, status_body) = json(app.get_path("/v1/status").await).await;
    assert_eq!(
        status_body["response"]["data"]["local_store"]["max_entries"],
        7
    );
    let too_big = app
        .put(
            "ucxl://a:r@p:t/x",
            json!({"content": "this body is longer than 32 bytes"}),
        )
        .await;
    assert_eq!(too_big.status(), 413);

    // rotating the token through the environment takes effect at once
    app.env
        .lock()
        .expect("env")
        .insert("RUSTLE_ADMIN_TOKEN".into(), "rotated".into());
    let (status, _) = app.reload(TOKEN).await;
    assert_eq!(status, 200);
    let (status, _) = set_mode(&app, Some(TOKEN), "mock").await;
    assert_eq!(status, 401);
    let (status, _) = set_mode(&app, Some("rotated"), "mock").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn invalid_reload_changes_nothing() {
    let before = test_config().cache_max_entries;
    let (app, dir) = app_with_config_file("", before).await;
    let file = dir.path().join("rustle.toml");

    std::fs::write(&file, "cache_max_entries = 0\nmax_retries = \"many\"\n").expect("write config");
    let (status, body) = app.reload(TOKEN).await;
    let e = assert_error(status, &body, "UCXL-400-BAD_REQUEST");
    assert_eq!(
        e["details"]["problems"].as_array().map(Vec::len),
        Some(2),
        "{e}"
    );
    let (_, status_body) = json(app.get_path("/v1/status").await).await;
    assert_eq!(
        status_body["response"]["data"]["local_store"]["max_entries"],
        before
    );
    // endpoints and a mode that needs them apply together, live
    let refused = super::faults::refused();
    std::fs::write(
        &file,
        format!(
            "backend_mode = \"hybrid\"\nbzzz_endpoints = [\"{}\"]\n",
            refused.url
        ),
    )
    .expect("write config");
    let (status, body) = app.reload(TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let report = assert_success(&body, "UCXL-200-OK");
    let applied = report["applied"].as_array().expect("applied");
    assert!(applied.contains(&json!("backend_mode")), "{report}");
    assert!(applied.contains(&json!("bzzz_endpoints")), "{report}");
    let (_, status_body) = json(app.get_path("/v1/status").await).await;
    let data = &status_body["response"]["data"];
    assert_eq!(data["mode"], "hybrid", "{data}");
    assert_eq!(data["endpoints"][0]["url"], refused.url, "{data}");
}
