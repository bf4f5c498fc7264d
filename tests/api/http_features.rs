//! What browsers and HTTP clients expect of the gateway, over real sockets: CORS (preflights,
//! allowed and refused origins, headers on answers and errors, nothing when unconfigured),
//! answer compression (gzip, br, zstd, the size threshold, never the watch stream) and
//! HTTP/2 with prior knowledge (h2c) beside HTTP/1.1 on the same port.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::time::Duration;

use futures_util::StreamExt as _;
use reqwest::{Method, Response, Version};
use rustle_gateway::config::{Config, CorsOrigins};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::helpers::{
    TestApp, assert_error, enc, json, project, spawn_app, spawn_app_with, test_config,
};

/// The origin the CORS tests allow.
const ORIGIN: &str = "https://app.example.com";
/// An origin they do not.
const OTHER: &str = "https://elsewhere.example.net";
/// Bounds waits that should end; never waited for in a passing run.
const WAIT: Duration = Duration::from_secs(10);

async fn app_with(change: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    change(&mut config);
    spawn_app_with(config, Options::default()).await
}

/// A gateway allowing [`ORIGIN`], with preflights cached for 120 s.
async fn cors_app() -> TestApp {
    app_with(|c| {
        c.http.cors_allowed_origins = CorsOrigins::List(vec![ORIGIN.to_owned()]);
        c.http.cors_max_age = Duration::from_secs(120);
    })
    .await
}

/// The values of header `name`, joined by commas.
fn header(response: &Response, name: &str) -> Option<String> {
    let values: Vec<&str> = response
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The comma-separated items of header `name`, in lower case.
fn items(response: &Response, name: &str) -> BTreeSet<String> {
    header(response, name)
        .unwrap_or_default()
        .split(',')
        .map(|i| i.trim().to_ascii_lowercase())
        .filter(|i| !i.is_empty())
        .collect()
}

/// The names of the `Access-Control-*` headers of `response`.
fn cors_headers(response: &Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

/// A browser's preflight of `method` on `path` from `origin`, asking for `headers`.
async fn preflight(
    app: &TestApp,
    path: &str,
    origin: &str,
    method: &str,
    headers: &[&str],
) -> Response {
    let mut request = app
        .request(Method::OPTIONS, path)
        .header("origin", origin)
        .header("access-control-request-method", method);
    if !headers.is_empty() {
        request = request.header("access-control-request-headers", headers.join(", "));
    }
    request.send().await.expect("answered")
}

/// The document the gateway serves at `/openapi.json`.
async fn openapi(app: &TestApp) -> Value {
    let (status, doc) = json(app.get_path("/openapi.json").await).await;
    assert_eq!(status, 200);
    doc
}

/// Every operation of the document: method, path, header parameters, answer headers.
fn operations(doc: &Value) -> Vec<(String, String, Vec<String>, Vec<String>)> {
    let mut all = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "header")
                .map(|p| p["name"].as_str().expect("name").to_ascii_lowercase())
                .collect();
            let answers = op["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.values())
                .filter_map(|r| r["headers"].as_object())
                .flat_map(|h| h.keys().map(|k| k.to_ascii_lowercase()))
                .collect();
            all.push((method.to_ascii_uppercase(), path.clone(), params, answers));
        }
    }
    all
}

// ---- CORS ----

#[tokio::test]
async fn a_preflight_from_an_allowed_origin_is_answered_for_every_route() {
    let app = cors_app().await;
    let doc = openapi(&app).await;
    let mut routes: Vec<(String, String, Vec<String>)> = operations(&doc)
        .into_iter()
        .map(|(method, path, params, _)| (method, path, params))
        .collect();
    routes.push((
        "POST".into(),
        "/mcp".into(),
        vec!["mcp-protocol-version".into()],
    ));
    assert!(routes.len() > 10, "{routes:?}");
    for (method, path, params) in routes {
        let mut asked = vec!["authorization", "content-type", "x-request-id"];
        asked.extend(params.iter().map(String::as_str));
        let response = preflight(&app, &path, ORIGIN, &method, &asked).await;
        let what = format!("{method} {path}");
        assert!(
            response.status() == 200 || response.status() == 204,
            "{what}: {}",
            response.status()
        );
        assert_eq!(
            header(&response, "access-control-allow-origin").as_deref(),
            Some(ORIGIN),
            "{what}"
        );
        assert!(
            items(&response, "access-control-allow-methods").contains(&method.to_ascii_lowercase()),
            "{what}"
        );
        let allowed = items(&response, "access-control-allow-headers");
        for h in &asked {
            assert!(allowed.contains(*h), "{what}: {h} not in {allowed:?}");
        }
        assert_eq!(
            header(&response, "access-control-max-age").as_deref(),
            Some("120"),
            "{what}"
        );
        assert!(items(&response, "vary").contains("origin"), "{what}");
        assert_eq!(header(&response, "access-control-allow-credentials"), None);
    }
}

#[tokio::test]
async fn the_cors_lists_cover_every_header_the_api_documents() {
    // Answer headers a page's script may always read (Fetch: CORS-safelisted).
    const SAFELISTED: [&str; 7] = [
        "cache-control",
        "content-language",
        "content-length",
        "content-type",
        "expires",
        "last-modified",
        "pragma",
    ];
    let app = cors_app().await;
    let doc = openapi(&app).await;
    let allowed = items(
        &preflight(&app, "/v1/envelopes", ORIGIN, "PUT", &[]).await,
        "access-control-allow-headers",
    );
    let answer = app
        .request(Method::GET, "/health")
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    let exposed = items(&answer, "access-control-expose-headers");
    for (method, path, params, answers) in operations(&doc) {
        for p in params {
            assert!(
                allowed.contains(&p),
                "{method} {path} reads {p}; allowed: {allowed:?}"
            );
        }
        for h in answers {
            assert!(
                exposed.contains(&h) || SAFELISTED.contains(&h.as_str()),
                "{method} {path} answers {h}; exposed: {exposed:?}"
            );
        }
    }
    for h in [
        "x-rustle-cache",
        "x-rustle-feed-lag-ms",
        "retry-after",
        "www-authenticate",
    ] {
        assert!(exposed.contains(h), "{h}: {exposed:?}");
    }
}

#[tokio::test]
async fn cross_origin_answers_and_errors_carry_the_cors_headers() {
    let app = cors_app().await;
    let address = format!("ucxl://agent:tester@{}:t/cors/doc.json", project());
    let put = app
        .client
        .put(app.envelope_url(&address))
        .header("origin", ORIGIN)
        .json(&json!({"content": {"n": 1}}))
        .send()
        .await
        .expect("answered");
    let get = app
        .client
        .get(app.envelope_url(&address))
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    let bad_address = app
        .client
        .get(app.url("/v1/envelopes?address=not-an-address"))
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    let no_route = app
        .client
        .get(app.url("/v1/nothing-here"))
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    for (response, status) in [(put, 201), (get, 200), (bad_address, 400), (no_route, 404)] {
        assert_eq!(response.status(), status);
        assert_eq!(
            header(&response, "access-control-allow-origin").as_deref(),
            Some(ORIGIN),
            "{status}"
        );
        let exposed = items(&response, "access-control-expose-headers");
        for h in [
            "x-request-id",
            "x-rustle-backend",
            "x-rustle-attempts",
            "retry-after",
        ] {
            assert!(exposed.contains(h), "{status}: {h} not in {exposed:?}");
        }
        assert!(items(&response, "vary").contains("origin"), "{status}");
        let (status, body) = json(response).await;
        if status >= 400 {
            assert_error(
                status,
                &body,
                if status == 400 {
                    "UCXL-400-INVALID_ADDRESS"
                } else {
                    "UCXL-404-NOT_FOUND"
                },
            );
        }
    }
}

#[tokio::test]
async fn a_cross_origin_answer_is_compressed_too() {
    let app = cors_app().await;
    let plain = app
        .get_path("/openapi.json")
        .await
        .bytes()
        .await
        .expect("body");
    let response = app
        .request(Method::GET, "/openapi.json")
        .header("origin", ORIGIN)
        .header("accept-encoding", "br")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(header(&response, "content-encoding").as_deref(), Some("br"));
    let vary = items(&response, "vary");
    assert!(
        vary.contains("origin") && vary.contains("accept-encoding"),
        "{vary:?}"
    );
    let wire = response.bytes().await.expect("body");
    assert_eq!(decode("br", &wire), plain);
}

#[tokio::test]
async fn a_refused_call_carries_the_cors_headers_and_exposes_its_challenge() {
    let (app, _dir) = super::mcp::policy_app(
        "[roles.reader]\ngrants = [{ ops = [\"read\"], pattern = \"ucxl://any:any@any:any/**\" }]\n",
        &[("RUSTLE_CORS_ALLOWED_ORIGINS", ORIGIN)],
    )
    .await;
    let response = app
        .client
        .get(app.url("/v1/search?pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**"))
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 401);
    assert_eq!(
        header(&response, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert!(items(&response, "access-control-expose-headers").contains("www-authenticate"));
    assert!(header(&response, "www-authenticate").is_some());
    // The preflight needs no credentials: it is answered before authentication.
    let preflight = preflight(&app, "/v1/search", ORIGIN, "GET", &["authorization"]).await;
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
}

#[tokio::test]
async fn an_origin_not_allowed_gets_no_allow_origin() {
    let app = cors_app().await;
    let preflight = preflight(&app, "/v1/envelopes", OTHER, "PUT", &["content-type"]).await;
    assert_ne!(preflight.status(), 405);
    assert_eq!(header(&preflight, "access-control-allow-origin"), None);
    let answer = app
        .request(Method::GET, "/health")
        .header("origin", OTHER)
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    // Without `Origin` (no browser sent it): no CORS headers, but the answer varies by it,
    // and an OPTIONS request is the router's.
    let answer = app.get_path("/health").await;
    assert_eq!(cors_headers(&answer), Vec::<String>::new());
    assert!(items(&answer, "vary").contains("origin"));
    let options = app
        .request(Method::OPTIONS, "/v1/envelopes")
        .send()
        .await
        .expect("answered");
    assert_eq!(options.status(), 204);
    assert!(items(&options, "allow").contains("put"));
    assert_eq!(cors_headers(&options), Vec::<String>::new());
}

#[tokio::test]
async fn a_lone_star_allows_every_origin() {
    let app = app_with(|c| c.http.cors_allowed_origins = CorsOrigins::Any).await;
    for origin in [ORIGIN, OTHER, "http://localhost:3000"] {
        let preflight = preflight(
            &app,
            "/v1/envelopes",
            origin,
            "DELETE",
            &["idempotency-key"],
        )
        .await;
        assert_eq!(
            header(&preflight, "access-control-allow-origin").as_deref(),
            Some("*")
        );
        let answer = app
            .request(Method::GET, "/health")
            .header("origin", origin)
            .send()
            .await
            .expect("answered");
        assert_eq!(
            header(&answer, "access-control-allow-origin").as_deref(),
            Some("*")
        );
    }
}

#[tokio::test]
async fn without_configuration_there_are_no_cors_headers_and_options_is_not_a_405() {
    let app = spawn_app().await;
    for (path, allow) in [
        ("/v1/envelopes", ["GET", "PUT", "DELETE"].as_slice()),
        ("/v1/search", &["GET"]),
        ("/mcp", &["POST"]),
    ] {
        let preflight = preflight(&app, path, ORIGIN, "GET", &["authorization"]).await;
        assert_eq!(preflight.status(), 204, "{path}");
        assert_eq!(cors_headers(&preflight), Vec::<String>::new(), "{path}");
        let methods = items(&preflight, "allow");
        for m in allow {
            assert!(
                methods.contains(&m.to_ascii_lowercase()),
                "{path}: {methods:?}"
            );
        }
        assert!(header(&preflight, "x-request-id").is_some());
    }
    let answer = app
        .request(Method::GET, "/health")
        .header("origin", ORIGIN)
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    assert_eq!(cors_headers(&answer), Vec::<String>::new());
    // Other methods a route lacks stay 405.
    let (status, body) = json(
        app.request(Method::PATCH, "/v1/envelopes")
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_error(status, &body, "UCXL-405-METHOD_NOT_ALLOWED");
}

#[test]
fn an_origin_that_is_not_one_stops_the_start_with_a_clear_message() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rustle-gateway"))
        .env_clear()
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .env(
            "RUSTLE_CORS_ALLOWED_ORIGINS",
            "https://app.example.com/ui, http://localhost:3000",
        )
        .env("RUSTLE_COMPRESSION_MIN_BYTES", "some")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"RUSTLE_CORS_ALLOWED_ORIGINS: "https://app.example.com/ui" is not an origin: only scheme://host[:port], without a path"#),
        "{stderr}"
    );
    assert!(
        stderr.contains(r#"RUSTLE_COMPRESSION_MIN_BYTES: "some""#),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

#[tokio::test]
async fn a_reload_reports_cors_and_compression_as_needing_a_restart_and_keeps_them() {
    const TOKEN: &str = "a-reload-token";
    let app = app_with(|c| c.admin_token = Some(super::admin::secret(TOKEN))).await;
    {
        let mut env = app.env.lock().expect("env");
        // As the test configuration has them, so that only these two change.
        env.insert("RUSTLE_ADMIN_TOKEN".into(), TOKEN.into());
        env.insert("RUSTLE_LISTEN_ADDR".into(), "127.0.0.1:0".into());
        env.insert("RUSTLE_AUDIT_LOG".into(), "off".into());
        env.insert("RUSTLE_CORS_ALLOWED_ORIGINS".into(), ORIGIN.into());
        env.insert("RUSTLE_COMPRESSION_MIN_BYTES".into(), "0".into());
    }
    let (status, body) = app.reload(TOKEN).await;
    assert_eq!(status, 200, "{body}");
    let restart: BTreeSet<&str> = body["response"]["data"]["restart_required"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        restart,
        BTreeSet::from(["compression_min_bytes", "cors_allowed_origins"]),
        "{body}"
    );
    // What runs is what started: no CORS headers, compression on.
    let answer = app
        .request(Method::GET, "/openapi.json")
        .header("origin", ORIGIN)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .expect("answered");
    assert_eq!(cors_headers(&answer), Vec::<String>::new());
    assert_eq!(header(&answer, "content-encoding").as_deref(), Some("gzip"));
    // An invalid origin is refused by the reload as at start.
    app.env.lock().expect("env").insert(
        "RUSTLE_CORS_ALLOWED_ORIGINS".into(),
        "https://*.example.com".into(),
    );
    let (status, body) = app.reload(TOKEN).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("RUSTLE_CORS_ALLOWED_ORIGINS"),
        "{body}"
    );
}

// ---- compression ----

/// `bytes` decoded from `encoding`.
fn decode(encoding: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        "gzip" => {
            flate2::read::GzDecoder::new(bytes)
                .read_to_end(&mut out)
                .expect("gzip");
        }
        "br" => {
            brotli::Decompressor::new(bytes, 4096)
                .read_to_end(&mut out)
                .expect("br");
        }
        "zstd" => out = zstd::decode_all(bytes).expect("zstd"),
        other => panic!("unexpected encoding {other}"),
    }
    out
}

/// GET `path` asking for `accept_encoding`: the `Content-Encoding` and the body as sent.
async fn fetch(
    app: &TestApp,
    client: &reqwest::Client,
    path: &str,
    accept_encoding: Option<&str>,
) -> (Option<String>, Response) {
    let mut request = client.get(app.url(path));
    if let Some(ae) = accept_encoding {
        request = request.header("accept-encoding", ae);
    }
    let response = request.send().await.expect("answered");
    assert_eq!(response.status(), 200, "{path}");
    (header(&response, "content-encoding"), response)
}

/// An envelope of about 8 KiB of JSON under a fresh address, and that address's path.
async fn large_envelope(app: &TestApp) -> String {
    let address = format!("ucxl://agent:tester@{}:t/compress/doc.json", project());
    let lines: Vec<String> = (0..200)
        .map(|i| format!("line {i} of a longer document"))
        .collect();
    let response = app
        .put(&address, json!({"content": {"lines": lines}}))
        .await;
    assert_eq!(response.status(), 201);
    format!("/v1/envelopes?address={}", enc(&address))
}

#[tokio::test]
async fn gzip_br_and_zstd_are_negotiated_and_decode_to_the_plain_answer() {
    let app = spawn_app().await;
    let envelope = large_envelope(&app).await;
    let client = reqwest::Client::new();
    let (encoding, plain) = fetch(&app, &client, "/openapi.json", None).await;
    assert_eq!(encoding, None, "nothing asked, nothing compressed");
    assert!(items(&plain, "vary").contains("accept-encoding"));
    let plain = plain.bytes().await.expect("body");
    assert!(plain.len() > 10_000);
    let (_, plain_envelope) = fetch(&app, &client, &envelope, None).await;
    let plain_envelope: Value = plain_envelope.json().await.expect("JSON");
    for encoding in ["gzip", "br", "zstd"] {
        let (sent, response) = fetch(&app, &client, "/openapi.json", Some(encoding)).await;
        assert_eq!(sent.as_deref(), Some(encoding));
        assert!(items(&response, "vary").contains("accept-encoding"));
        let wire = response.bytes().await.expect("body");
        assert!(
            wire.len() * 4 < plain.len(),
            "{encoding}: {} of {}",
            wire.len(),
            plain.len()
        );
        assert_eq!(decode(encoding, &wire), plain, "{encoding}");

        let (sent, response) = fetch(&app, &client, &envelope, Some(encoding)).await;
        assert_eq!(sent.as_deref(), Some(encoding));
        let body: Value =
            serde_json::from_slice(&decode(encoding, &response.bytes().await.expect("body")))
                .expect("JSON");
        assert_eq!(
            body["response"]["data"], plain_envelope["response"]["data"],
            "{encoding}"
        );
    }
    // The client's preference decides; encodings the gateway does not offer are passed over.
    for (asked, chosen) in [
        ("gzip;q=0.5, br;q=0.9, zstd;q=0.1", "br"),
        ("deflate, gzip;q=0.2", "gzip"),
        ("zstd, *;q=0.1", "zstd"),
    ] {
        let (sent, _) = fetch(&app, &client, "/openapi.json", Some(asked)).await;
        assert_eq!(sent.as_deref(), Some(chosen), "{asked}");
    }
}

#[tokio::test]
async fn answers_below_the_threshold_are_not_compressed_and_zero_turns_it_off() {
    let client = reqwest::Client::new();
    let app = spawn_app().await;
    // A small envelope answer (a few hundred bytes) and /health stay plain at 1 KiB...
    let address = format!("ucxl://agent:tester@{}:t/small", project());
    assert_eq!(app.put(&address, json!({"content": 1})).await.status(), 201);
    let small = format!("/v1/envelopes?address={}", enc(&address));
    for path in ["/health", small.as_str()] {
        let (sent, response) = fetch(&app, &client, path, Some("gzip, br, zstd")).await;
        assert_eq!(sent, None, "{path}");
        let len = response.bytes().await.expect("body").len();
        assert!((100..1024).contains(&len), "{path}: {len}");
    }
    // ... and are compressed with a lower threshold.
    let low = app_with(|c| c.http.compression_min_bytes = 64).await;
    assert_eq!(low.put(&address, json!({"content": 1})).await.status(), 201);
    let (sent, _) = fetch(&low, &client, &small, Some("gzip")).await;
    assert_eq!(sent.as_deref(), Some("gzip"));
    // 0: nothing is compressed.
    let off = app_with(|c| c.http.compression_min_bytes = 0).await;
    let (sent, response) = fetch(&off, &client, "/openapi.json", Some("gzip, br, zstd")).await;
    assert_eq!(sent, None);
    assert!(!items(&response, "vary").contains("accept-encoding"));
}

#[tokio::test]
async fn the_watch_stream_is_never_compressed() {
    let app = spawn_app().await;
    let p = project();
    let response = reqwest::Client::new()
        .get(app.url(&format!(
            "/v1/watch?pattern={}",
            enc(&format!("ucxl://any:any@{p}:any/**"))
        )))
        .header("accept", "text/event-stream")
        .header("accept-encoding", "gzip, br, zstd")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "content-type").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(header(&response, "content-encoding"), None);
    let mut body = response.bytes_stream();
    let address = format!("ucxl://agent:tester@{p}:t/watched");
    assert_eq!(
        app.put(&address, json!({"content": "x".repeat(4096)}))
            .await
            .status(),
        201
    );
    // The event arrives as text, at once: a compressor would hold it back.
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains("event: put") {
            let chunk = body
                .next()
                .await
                .expect("the stream goes on")
                .expect("a chunk");
            seen.push_str(std::str::from_utf8(&chunk).expect("plain text"));
        }
    })
    .await
    .expect("the put event, uncompressed");
    assert!(seen.contains(&address), "{seen}");
}

#[tokio::test]
async fn a_client_refusing_an_unencoded_answer_gets_its_write_answered_not_406() {
    let app = spawn_app().await;
    let address = format!("ucxl://agent:tester@{}:t/identity", project());
    let response = app
        .client
        .put(app.envelope_url(&address))
        .header("accept-encoding", "deflate, identity;q=0")
        .json(&json!({"content": 1}))
        .send()
        .await
        .expect("answered");
    assert_eq!(header(&response, "content-encoding"), None);
    let (status, body) = json(response).await;
    assert_eq!(status, 201, "{body}");
    // One write, version 1.
    assert_eq!(body["response"]["data"]["version"], 1);
}

#[tokio::test]
async fn a_compressed_request_body_is_not_decompressed_but_refused() {
    let app = spawn_app().await;
    let address = format!("ucxl://agent:tester@{}:t/gz", project());
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, br#"{"content": 1}"#).expect("compressed");
    let response = app
        .client
        .put(app.envelope_url(&address))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gz.finish().expect("compressed"))
        .send()
        .await
        .expect("answered");
    let (status, body) = json(response).await;
    assert_error(status, &body, "UCXL-400-INVALID_PAYLOAD");
}

// ---- HTTP/2 with prior knowledge ----

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client")
}

#[tokio::test]
async fn h2c_and_http1_share_the_gateway_port() {
    let app = spawn_app().await;
    let h2 = h2c();
    let address = format!("ucxl://agent:tester@{}:t/h2c", project());
    let put = h2
        .put(app.envelope_url(&address))
        .json(&json!({"content": {"over": "h2c"}}))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        (put.version(), put.status().as_u16()),
        (Version::HTTP_2, 201)
    );
    let get = h2
        .get(app.envelope_url(&address))
        .send()
        .await
        .expect("answered");
    assert_eq!(get.version(), Version::HTTP_2);
    assert!(header(&get, "x-request-id").is_some());
    let (status, over_h2) = json(get).await;
    assert_eq!(status, 200);
    let http1 = app.get(&address).await;
    assert_eq!(http1.version(), Version::HTTP_11);
    let (_, over_http1) = json(http1).await;
    assert_eq!(over_h2["response"]["data"], over_http1["response"]["data"]);
    assert_eq!(
        over_h2["response"]["data"]["content"],
        json!({"over": "h2c"})
    );
    // Compression and error bodies work the same over HTTP/2.
    let (sent, response) = fetch(&app, &h2, "/openapi.json", Some("zstd")).await;
    assert_eq!(
        (sent.as_deref(), response.version()),
        (Some("zstd"), Version::HTTP_2)
    );
    let (status, body) = json(
        h2.get(app.url("/v1/nothing-here"))
            .send()
            .await
            .expect("answered"),
    )
    .await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
}

#[tokio::test]
async fn the_watch_stream_runs_over_h2c() {
    let app = spawn_app().await;
    let p = project();
    let response = h2c()
        .get(app.url(&format!(
            "/v1/watch?pattern={}",
            enc(&format!("ucxl://any:any@{p}:any/**"))
        )))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        (response.version(), response.status().as_u16()),
        (Version::HTTP_2, 200)
    );
    let mut body = response.bytes_stream();
    let address = format!("ucxl://agent:tester@{p}:t/over-h2");
    assert_eq!(app.put(&address, json!({"content": 2})).await.status(), 201);
    let mut seen = String::new();
    tokio::time::timeout(WAIT, async {
        while !seen.contains(&address) {
            let chunk = body
                .next()
                .await
                .expect("the stream goes on")
                .expect("a chunk");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .expect("the put event over HTTP/2");
}

#[tokio::test]
async fn over_h2c_the_mcp_metadata_names_the_authority_the_client_used() {
    // HTTP/2 requests carry no Host: the metadata's origin comes from :authority.
    let (app, _dir) = super::mcp::policy_app(
        "[roles.reader]\ngrants = [{ ops = [\"read\"], pattern = \"ucxl://any:any@any:any/**\" }]\n\n[jwt]\nhs256_secret_env = \"RUSTLE_JWT_SECRET\"\nissuer = \"https://auth.example\"\n",
        &[("RUSTLE_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")],
    )
    .await;
    let response = h2c()
        .get(app.url("/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .expect("answered");
    assert_eq!(response.version(), Version::HTTP_2);
    let (status, doc) = json(response).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["resource"], format!("http://{}/mcp", app.addr));
}
