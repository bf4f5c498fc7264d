//! Authentication and authorization over HTTP: API keys, JWTs (HS256, RS256, ES256, a JWKS
//! file and a JWKS URL), grants per operation and address, search filtering, `written_by`,
//! rates per principal, the audit log, policy reloads and the settings around them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::header::HeaderValue;
use reqwest::{Method, RequestBuilder, Response};
use rustle_gateway::auth::policy::key_digest;
use rustle_gateway::config::{AuthMode, Sources};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::helpers::{
    TestApp, assert_error, assert_success, enc, json, spawn_app, spawn_app_with_env,
};
use super::nodes::wait_until;

/// `architect-bot`: read, search, write and delete everywhere.
const BROAD: &str = "rk_test_broad_0001";
/// `reader`: read in project `alpha`.
const READER: &str = "rk_test_reader_0002";
/// `writer`: write in project `alpha`.
const WRITER: &str = "rk_test_writer_0003";
/// `deleter`: delete in project `alpha`.
const DELETER: &str = "rk_test_deleter_0004";
/// `searcher`: search and read in project `alpha`.
const SEARCHER: &str = "rk_test_searcher_0005";
/// `ops`: the admin API.
const OPS: &str = "rk_test_ops_0006";
/// `limited`: everything, at 1 request per second with a burst of 2.
const LIMITED: &str = "rk_test_limited_0007";
/// `RUSTLE_ADMIN_TOKEN` of every app here.
const ADMIN_TOKEN: &str = "admin-token-of-the-auth-tests";
/// `RUSTLE_JWT_SECRET`, the HS256 secret the `[jwt]` sections name.
const SECRET: &str = "0123456789abcdef0123456789abcdef-hs256-test";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "rustle";

const BARE_CHALLENGE: &str = r#"Bearer realm="rustle""#;
const INVALID_REQUEST: &str = r#"Bearer realm="rustle", error="invalid_request""#;
const INVALID_TOKEN: &str = r#"Bearer realm="rustle", error="invalid_token""#;

fn digest(key: &str) -> String {
    hex::encode(key_digest(key))
}

fn principal(name: &str, key: &str, roles: &[&str], extra: &str) -> String {
    format!(
        "[[principals]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nroles = {}\n{extra}\n",
        digest(key),
        json!(roles)
    )
}

/// The principals and roles every test starts from, then `extra` (a `[jwt]` section, more
/// principals).
fn policy(extra: &str) -> String {
    let principals = [
        principal("architect-bot", BROAD, &["all"], ""),
        principal("reader", READER, &["alpha-reader"], ""),
        principal("writer", WRITER, &["alpha-writer"], ""),
        principal("deleter", DELETER, &["alpha-deleter"], ""),
        principal("searcher", SEARCHER, &["alpha-searcher"], ""),
        principal("ops", OPS, &["admin"], ""),
        principal("limited", LIMITED, &["all"], "rate_per_sec = 1\nburst = 2"),
    ]
    .concat();
    format!(
        r#"{principals}
[roles.all]
grants = [{{ ops = ["read", "search", "write", "delete", "watch"], pattern = "ucxl://any:any@any:any/**" }}]

[roles.alpha-reader]
grants = [{{ ops = ["read"], pattern = "ucxl://any:any@alpha:any/**" }}]

[roles.alpha-writer]
grants = [{{ ops = ["write"], pattern = "ucxl://any:any@alpha:any/**" }}]

[roles.alpha-deleter]
grants = [{{ ops = ["delete"], pattern = "ucxl://any:any@alpha:any/**" }}]

[roles.alpha-searcher]
grants = [{{ ops = ["search", "read"], pattern = "ucxl://any:any@alpha:any/**" }}]

[roles.admin]
grants = [{{ ops = ["admin"], pattern = "ucxl://any:any@any:any/**" }}]

[roles.agent]
grants = [{{ ops = ["write"], pattern = "ucxl://${{claim.agent}}:${{claim.role}}@any:any/**" }}]

{extra}
"#
    )
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwt")
        .join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("fixture")
}

/// A `[jwt]` section: the HS256 secret of `RUSTLE_JWT_SECRET` and the fixture JWKS file.
fn jwt_section() -> String {
    format!(
        "[jwt]\nhs256_secret_env = \"RUSTLE_JWT_SECRET\"\njwks_file = {}\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n",
        json!(fixture("jwks.json").display().to_string())
    )
}

/// A gateway with `auth = required`, `policy` in a file of its own, the admin token and
/// the JWT secret in its environment, no audit log, and `env` on top. The same
/// environment is what its reloads read.
struct AuthApp {
    app: TestApp,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for AuthApp {
    type Target = TestApp;
    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl AuthApp {
    fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn write_policy(&self, text: &str) {
        std::fs::write(self.policy_path(), text).expect("write policy");
    }
}

async fn auth_app(policy: &str, env: &[(&str, &str)]) -> AuthApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("write policy");
    let mut vars: HashMap<String, String> = [
        ("RUSTLE_LISTEN_ADDR", "127.0.0.1:0"),
        ("RUSTLE_AUTH", "required"),
        ("RUSTLE_AUDIT_LOG", "off"),
        ("RUSTLE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("RUSTLE_JWT_SECRET", SECRET),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.insert("RUSTLE_AUTH_POLICY".into(), path.display().to_string());
    let config = Sources {
        env: vars.clone(),
        ..Sources::default()
    }
    .resolve()
    .expect("a valid configuration");
    assert_eq!(config.auth, AuthMode::Required);
    let app = spawn_app_with_env(config, Options::default(), vars).await;
    AuthApp { app, dir }
}

fn envelope_path(address: &str) -> String {
    format!("/v1/envelopes?address={}", enc(address))
}

fn history_path(address: &str) -> String {
    format!("/v1/envelopes/history?address={}", enc(address))
}

fn search_path(pattern: &str, limit: usize, cursor: Option<&str>) -> String {
    let path = format!("/v1/search?pattern={}&limit={limit}", enc(pattern));
    match cursor {
        Some(c) => format!("{path}&cursor={}", enc(c)),
        None => path,
    }
}

async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("request sent")
}

async fn put_as(app: &TestApp, key: &str, address: &str, body: Value) -> (u16, Value) {
    json(
        send(
            app.request(Method::PUT, &envelope_path(address))
                .bearer_auth(key)
                .json(&body),
        )
        .await,
    )
    .await
}

async fn call_as(app: &TestApp, key: &str, method: Method, path: &str) -> (u16, Value) {
    json(send(app.request(method, path).bearer_auth(key)).await).await
}

async fn get_as(app: &TestApp, key: &str, address: &str) -> (u16, Value) {
    call_as(app, key, Method::GET, &envelope_path(address)).await
}

fn challenge(response: &Response) -> String {
    response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// Asserts a 403 naming exactly `operation` and `address`.
fn assert_forbidden(status: u16, body: &Value, operation: &str, address: &str) {
    let e = assert_error(status, body, "UCXL-403-FORBIDDEN");
    assert_eq!(
        e["details"],
        json!({"operation": operation, "address": address}),
        "{body}"
    );
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Valid claims for principal `user-1` holding role `all`.
fn claims() -> Value {
    json!({"sub": "user-1", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "roles": ["all"]})
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).expect("key"),
    )
    .expect("encode")
}

/// A token signed with the fixture private key `pem`.
fn signed(alg: Algorithm, kid: Option<&str>, pem: &str, claims: &Value) -> String {
    let text = fixture_text(pem);
    let key = match alg {
        Algorithm::ES256 => EncodingKey::from_ec_pem(text.as_bytes()),
        _ => EncodingKey::from_rsa_pem(text.as_bytes()),
    }
    .expect("private key");
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("encode")
}

/// An unsigned token (`alg: none`).
fn unsigned(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

#[tokio::test]
async fn requests_without_credentials_are_401_with_a_bare_challenge() {
    let app = auth_app(&policy(""), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    for (method, path) in [
        (Method::PUT, envelope_path(address)),
        (Method::GET, envelope_path(address)),
        (Method::DELETE, envelope_path(address)),
        (Method::GET, history_path(address)),
        (
            Method::GET,
            search_path("ucxl://any:any@any:any/**", 10, None),
        ),
        (Method::POST, "/v1/admin/reload".to_owned()),
    ] {
        let response = send(app.request(method.clone(), &path)).await;
        assert_eq!(challenge(&response), BARE_CHALLENGE, "{method} {path}");
        let (status, body) = json(response).await;
        let e = assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
        assert_eq!(e["details"], json!({}), "{body}");
    }
    // Probes stay open.
    assert_eq!(app.get_path("/health").await.status(), 200);
    // A valid key is let in.
    let (status, body) = put_as(&app, BROAD, address, json!({"content": 1})).await;
    assert_eq!(status, 201, "{body}");
    assert_success(&body, "UCXL-201-CREATED");
    let (status, body) = get_as(&app, BROAD, address).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(assert_success(&body, "UCXL-200-OK")["content"], 1);
}

#[tokio::test]
async fn malformed_authorization_headers_are_401_invalid_request() {
    let app = auth_app(&policy(""), &[]).await;
    let huge = format!("Bearer {}", "a".repeat(9 * 1024));
    let headers = [
        HeaderValue::from_static("Basic eDp5"),
        HeaderValue::from_static("Bearer"),
        HeaderValue::from_bytes(b"Bearer rk_caf\xe9\xff").expect("opaque bytes"),
        HeaderValue::from_str(&huge).expect("header"),
    ];
    let mut messages = Vec::new();
    for header in headers {
        let response = send(
            app.request(Method::GET, &envelope_path("ucxl://a:r@alpha:t/x"))
                .header("authorization", header.clone()),
        )
        .await;
        assert_eq!(challenge(&response), INVALID_REQUEST, "{header:?}");
        let (status, body) = json(response).await;
        let e = assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
        assert_eq!(e["details"], json!({}), "{body}");
        messages.push(e["message"].clone());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "one message for every malformed header");
}

#[tokio::test]
async fn unknown_keys_and_badly_signed_tokens_get_the_same_401() {
    let app = auth_app(&policy(&jwt_section()), &[]).await;
    let wrong_secret = hs256(&claims(), b"another secret that is 32 bytes long!!");
    let wrong_rsa = signed(
        Algorithm::RS256,
        Some("rsa-1"),
        "other-rs256.pem",
        &claims(),
    );
    let mut seen = Vec::new();
    for token in [
        "rk_nobody_has_this_key",
        wrong_secret.as_str(),
        wrong_rsa.as_str(),
    ] {
        let response = send(
            app.request(Method::GET, &envelope_path("ucxl://a:r@alpha:t/x"))
                .bearer_auth(token),
        )
        .await;
        assert_eq!(challenge(&response), INVALID_TOKEN);
        let (status, body) = json(response).await;
        let e = assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
        let text = body.to_string();
        assert!(!text.contains(token), "the token is not echoed: {text}");
        for why in ["signature", "unknown", "key", "expired", "kid"] {
            assert!(
                !e["message"].as_str().unwrap_or_default().contains(why),
                "nothing about why: {e}"
            );
        }
        seen.push((e["message"].clone(), e["details"].clone()));
    }
    seen.dedup();
    assert_eq!(
        seen.len(),
        1,
        "the same answer whatever was wrong: {seen:?}"
    );
}

#[tokio::test]
async fn forbidden_operations_are_403_naming_the_operation_and_the_address_as_sent() {
    let app = auth_app(&policy(""), &[]).await;
    // Non-canonical spellings, to see the address echoed as sent.
    let beta = "UCXL://claude:dev@beta:t//notes/x/";
    let alpha = "ucxl://claude:dev@alpha:t//notes/x";
    let (status, body) = put_as(&app, BROAD, alpha, json!({"content": 1})).await;
    assert_eq!(status, 201, "{body}");

    let (status, body) = put_as(&app, WRITER, beta, json!({"content": 1})).await;
    assert_forbidden(status, &body, "write", beta);
    let (status, body) = get_as(&app, READER, beta).await;
    assert_forbidden(status, &body, "read", beta);
    let (status, body) = call_as(&app, READER, Method::GET, &history_path(beta)).await;
    assert_forbidden(status, &body, "read", beta);
    let (status, body) = call_as(&app, DELETER, Method::DELETE, &envelope_path(beta)).await;
    assert_forbidden(status, &body, "delete", beta);

    // A write grant does not allow reading, nor a read grant writing or deleting.
    let (status, body) = get_as(&app, WRITER, alpha).await;
    assert_forbidden(status, &body, "read", alpha);
    let (status, body) = call_as(&app, WRITER, Method::GET, &history_path(alpha)).await;
    assert_forbidden(status, &body, "read", alpha);
    let (status, body) = put_as(&app, READER, alpha, json!({"content": 2})).await;
    assert_forbidden(status, &body, "write", alpha);
    let (status, body) = call_as(&app, READER, Method::DELETE, &envelope_path(alpha)).await;
    assert_forbidden(status, &body, "delete", alpha);
    let (status, body) = call_as(&app, WRITER, Method::DELETE, &envelope_path(alpha)).await;
    assert_forbidden(status, &body, "delete", alpha);

    // Each grant allows its own operation.
    let (status, body) = put_as(&app, WRITER, alpha, json!({"content": 2})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = get_as(&app, READER, alpha).await;
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["content"],
        2,
        "{status}"
    );
    let (status, body) = call_as(&app, READER, Method::GET, &history_path(alpha)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call_as(&app, DELETER, Method::DELETE, &envelope_path(alpha)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = get_as(&app, READER, alpha).await;
    assert_eq!(status, 404);

    // The challenge of a 403 names the scope.
    let response = send(
        app.request(Method::GET, &envelope_path(beta))
            .bearer_auth(READER),
    )
    .await;
    assert_eq!(
        challenge(&response),
        r#"Bearer realm="rustle", error="insufficient_scope""#
    );
}

#[tokio::test]
async fn a_forbidden_put_is_refused_before_its_body_is_read() {
    let app = auth_app(&policy(""), &[("RUSTLE_MAX_BODY_BYTES", "1024")]).await;
    let address = "ucxl://claude:dev@alpha:t/big";
    let big = json!({"content": "x".repeat(4096)});
    let (status, body) = put_as(&app, READER, address, big.clone()).await;
    assert_forbidden(status, &body, "write", address);
    // The limit is in force for those who may write.
    let (status, body) = put_as(&app, WRITER, address, big).await;
    assert_error(status, &body, "UCXL-413-PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn admin_routes_need_the_admin_grant_or_the_admin_token() {
    let app = auth_app(&policy(""), &[]).await;
    let (status, body) = app.reload(OPS).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = app.reload(ADMIN_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    for key in [BROAD, READER] {
        let (status, body) = app.reload(key).await;
        assert_forbidden(status, &body, "admin", "/v1/admin/reload");
    }
    let (status, body) = json(
        send(
            app.request(Method::PUT, "/v1/admin/mode")
                .bearer_auth(BROAD)
                .json(&json!({"mode": "mock"})),
        )
        .await,
    )
    .await;
    assert_forbidden(status, &body, "admin", "/v1/admin/mode");
    let (status, body) = json(
        send(
            app.request(Method::PUT, "/v1/admin/mode")
                .bearer_auth(OPS)
                .json(&json!({"mode": "mock"})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The admin token is for the admin API only.
    let address = "ucxl://claude:dev@alpha:t/x";
    let (status, body) = get_as(&app, ADMIN_TOKEN, address).await;
    assert_forbidden(status, &body, "read", address);
    let (status, body) = get_as(&app, OPS, address).await;
    assert_forbidden(status, &body, "read", address);
}

#[tokio::test]
async fn valid_hs256_rs256_and_es256_tokens_hold_the_roles_they_name() {
    let app = auth_app(&policy(&jwt_section()), &[]).await;
    let tokens = [
        ("hs", hs256(&claims(), SECRET.as_bytes())),
        (
            "rs",
            signed(Algorithm::RS256, Some("rsa-1"), "rs256.pem", &claims()),
        ),
        (
            "rs-nokid",
            signed(Algorithm::RS256, None, "rs256.pem", &claims()),
        ),
        (
            "es",
            signed(Algorithm::ES256, Some("ec-1"), "es256.pem", &claims()),
        ),
    ];
    for (name, token) in &tokens {
        let address = format!("ucxl://claude:dev@alpha:t/{name}");
        let (status, body) = put_as(&app, token, &address, json!({"content": name})).await;
        assert_eq!(status, 201, "{name}: {body}");
        let data = assert_success(&body, "UCXL-201-CREATED");
        assert_eq!(data["written_by"], "user-1", "{name}");
        let (status, body) = get_as(&app, token, &address).await;
        assert_eq!(status, 200, "{name}: {body}");
    }
    // The roles claim names what the token holds: a reader role reads and writes nothing.
    let mut reader = claims();
    reader["roles"] = json!(["alpha-reader", "no-such-role"]);
    let token = hs256(&reader, SECRET.as_bytes());
    let (status, _) = get_as(&app, &token, "ucxl://claude:dev@alpha:t/hs").await;
    assert_eq!(status, 200);
    let address = "ucxl://claude:dev@alpha:t/new";
    let (status, body) = put_as(&app, &token, address, json!({"content": 1})).await;
    assert_forbidden(status, &body, "write", address);
    let mut none = claims();
    none.as_object_mut().expect("object").remove("roles");
    let token = hs256(&none, SECRET.as_bytes());
    let (status, body) = get_as(&app, &token, "ucxl://claude:dev@alpha:t/hs").await;
    assert_forbidden(status, &body, "read", "ucxl://claude:dev@alpha:t/hs");
}

#[tokio::test]
async fn invalid_tokens_are_401_invalid_token() {
    let app = auth_app(&policy(&jwt_section()), &[]).await;
    let secret = SECRET.as_bytes();
    let with = |key: &str, value: Value| {
        let mut c = claims();
        c[key] = value;
        c
    };
    let jwks = std::fs::read(fixture("jwks.json")).expect("jwks");
    let mut keyed_with_jwks = Header::new(Algorithm::HS256);
    keyed_with_jwks.kid = Some("rsa-1".into());
    let confused = jsonwebtoken::encode(
        &keyed_with_jwks,
        &claims(),
        &EncodingKey::from_secret(&jwks).expect("key"),
    )
    .expect("encode");
    let cases = [
        ("expired", hs256(&with("exp", json!(now() - 3600)), secret)),
        (
            "not yet valid",
            hs256(&with("nbf", json!(now() + 3600)), secret),
        ),
        (
            "wrong audience",
            hs256(&with("aud", json!("other")), secret),
        ),
        (
            "wrong issuer",
            hs256(&with("iss", json!("https://evil.test")), secret),
        ),
        ("alg none", unsigned(&claims())),
        (
            "an untrusted RSA key",
            signed(
                Algorithm::RS256,
                Some("rsa-1"),
                "other-rs256.pem",
                &claims(),
            ),
        ),
        (
            "an untrusted RSA key without kid",
            signed(Algorithm::RS256, None, "other-rs256.pem", &claims()),
        ),
        (
            "an unknown kid",
            signed(
                Algorithm::RS256,
                Some("rsa-2"),
                "other-rs256.pem",
                &claims(),
            ),
        ),
        (
            "expired RS256",
            signed(
                Algorithm::RS256,
                Some("rsa-1"),
                "rs256.pem",
                &with("exp", json!(now() - 3600)),
            ),
        ),
        ("HS256 keyed with the public JWKS", confused),
    ];
    for (why, token) in cases {
        let response = send(
            app.request(Method::PUT, &envelope_path("ucxl://claude:dev@alpha:t/x"))
                .bearer_auth(&token)
                .json(&json!({"content": 1})),
        )
        .await;
        assert_eq!(challenge(&response), INVALID_TOKEN, "{why}");
        let (status, body) = json(response).await;
        assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
    }
    let (status, _) = get_as(&app, BROAD, "ucxl://claude:dev@alpha:t/x").await;
    assert_eq!(status, 404, "nothing was written");
}

#[tokio::test]
async fn claim_grants_follow_the_tokens_claims() {
    let app = auth_app(&policy(&jwt_section()), &[]).await;
    let agent = |agent: &str, role: &str| {
        let mut c = claims();
        c["roles"] = json!(["agent"]);
        c["agent"] = json!(agent);
        c["role"] = json!(role);
        hs256(&c, SECRET.as_bytes())
    };
    let claude = agent("claude", "dev");
    let (status, body) = put_as(
        &app,
        &claude,
        "ucxl://claude:dev@p:t/x",
        json!({"content": 1}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    for other in ["ucxl://gpt:dev@p:t/x", "ucxl://claude:ops@p:t/x"] {
        let (status, body) = put_as(&app, &claude, other, json!({"content": 1})).await;
        assert_forbidden(status, &body, "write", other);
    }
    // A claim that is the wildcard, or no component at all, grants nothing.
    for (a, r) in [
        ("any", "dev"),
        ("ANY", "dev"),
        ("*", "dev"),
        ("claude", "any"),
    ] {
        let token = agent(a, r);
        for address in [
            "ucxl://claude:dev@p:t/x",
            "ucxl://gpt:dev@p:t/x",
            "ucxl://ANY:dev@p:t/x",
        ] {
            let (status, body) = put_as(&app, &token, address, json!({"content": 1})).await;
            assert_forbidden(status, &body, "write", address);
        }
    }
}

/// A JWKS document served over HTTP on a free port, replaceable while it runs.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&body), Arc::clone(&hits));
        let router = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let text = served.lock().expect("jwks").clone();
                counted.fetch_add(1, Ordering::SeqCst);
                async move { ([("content-type", "application/json")], text) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serves");
        });
        Self {
            url,
            body,
            hits,
            task,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test]
async fn keys_of_a_jwks_url_are_fetched_and_an_unknown_kid_refreshes_them() {
    let server = JwksServer::start(fixture_text("jwks.json")).await;
    let section = format!(
        "[jwt]\njwks_url = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n",
        server.url
    );
    let app = auth_app(&policy(&section), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    // Once the gateway fetched the keys, a token they verify is accepted.
    assert!(
        wait_until(Duration::from_secs(20), || async { server.hits() >= 1 }).await,
        "the gateway fetches the JWKS at start"
    );
    let first = signed(Algorithm::RS256, Some("rsa-1"), "rs256.pem", &claims());
    let accepted = wait_until(Duration::from_secs(20), || async {
        get_as(&app, &first, address).await.0 == 404
    })
    .await;
    assert!(accepted, "an RS256 token of the served JWKS is accepted");

    // The issuer rotates its keys: a token with a key id the gateway has not seen makes
    // it fetch the JWKS again (the refresh period, 300 s, is far off).
    *server.body.lock().expect("jwks") = fixture_text("other-jwks.json");
    let before = server.hits();
    let rotated = signed(
        Algorithm::RS256,
        Some("rsa-2"),
        "other-rs256.pem",
        &claims(),
    );
    // Unknown key ids refresh at most every 30 s: allow for one refresh spent at start.
    let accepted = wait_until(Duration::from_secs(45), || async {
        get_as(&app, &rotated, address).await.0 == 404
    })
    .await;
    assert!(accepted, "the rotated key is fetched and trusted");
    assert!(server.hits() > before, "fetched again");
}

/// The addresses on every page of a search, following `next_cursor` to the end, with the
/// page sizes and messages.
async fn all_pages(
    app: &TestApp,
    key: &str,
    pattern: &str,
    limit: usize,
) -> (Vec<String>, Vec<usize>, Vec<String>) {
    let mut addresses = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor: Option<String> = None;
    let mut cursors = Vec::new();
    for _ in 0..50 {
        let (status, body) = call_as(
            app,
            key,
            Method::GET,
            &search_path(pattern, limit, cursor.as_deref()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let data = assert_success(&body, "UCXL-200-OK");
        let items = data["items"].as_array().expect("items");
        assert_eq!(
            body["response"]["message"],
            format!("{} matches", items.len()),
            "{body}"
        );
        sizes.push(items.len());
        addresses.extend(
            items
                .iter()
                .map(|i| i["address"].as_str().expect("address").to_owned()),
        );
        match data["next_cursor"].as_str() {
            Some(next) => {
                cursors.push(next.to_owned());
                cursor = Some(next.to_owned());
            }
            None => return (addresses, sizes, cursors),
        }
    }
    panic!("the pages do not end");
}

fn decode_cursor(cursor: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .expect("base64url");
    let text = String::from_utf8(bytes).expect("utf-8");
    text.strip_prefix("v1:").expect("v1: prefix").to_owned()
}

#[tokio::test]
async fn search_shows_only_what_the_caller_may_search_on_every_page() {
    let app = auth_app(&policy(""), &[]).await;
    // Sorted by agent, the projects interleave; the last matches are not alpha's.
    let stored = [
        ("a0", "alpha"),
        ("a1", "beta"),
        ("a2", "alpha"),
        ("a3", "alpha"),
        ("a4", "alpha"),
        ("a5", "beta"),
        ("a6", "beta"),
    ];
    for (agent, project) in stored {
        let address = format!("ucxl://{agent}:dev@{project}:t/doc");
        let (status, body) = put_as(&app, BROAD, &address, json!({"content": agent})).await;
        assert_eq!(status, 201, "{body}");
    }
    let everything = "ucxl://any:any@any:any/**";
    let (all, sizes, _) = all_pages(&app, BROAD, everything, 2).await;
    assert_eq!(all.len(), stored.len());
    assert_eq!(sizes, [2, 2, 2, 1]);

    let expected: Vec<String> = stored
        .iter()
        .filter(|(_, p)| *p == "alpha")
        .map(|(a, p)| format!("ucxl://{a}:dev@{p}:t/doc"))
        .collect();
    for limit in 1..=5 {
        let (seen, sizes, cursors) = all_pages(&app, SEARCHER, everything, limit).await;
        assert_eq!(
            seen, expected,
            "exactly alpha's addresses, in order (limit {limit})"
        );
        let as_if_alone: Vec<usize> = expected.chunks(limit).map(<[String]>::len).collect();
        assert_eq!(
            sizes, as_if_alone,
            "pages as if only alpha's addresses existed (limit {limit})"
        );
        for cursor in &cursors {
            let at = decode_cursor(cursor);
            assert!(expected.contains(&at), "a cursor names {at}");
        }
    }

    // Without a search grant: 403 naming the pattern.
    let (status, body) =
        call_as(&app, READER, Method::GET, &search_path(everything, 2, None)).await;
    assert_forbidden(status, &body, "search", everything);
    let (status, body) =
        call_as(&app, WRITER, Method::GET, &search_path(everything, 2, None)).await;
    assert_forbidden(status, &body, "search", everything);
}

#[tokio::test]
async fn written_by_names_the_authenticated_writer() {
    let app = auth_app(&policy(""), &[]).await;
    let address = "ucxl://claude:architect@alpha:t/decision";
    let (status, body) = put_as(&app, BROAD, address, json!({"content": "use libp2p"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        assert_success(&body, "UCXL-201-CREATED")["written_by"],
        "architect-bot"
    );
    let (_, body) = get_as(&app, BROAD, address).await;
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["written_by"],
        "architect-bot"
    );
    let (_, body) = call_as(&app, BROAD, Method::GET, &history_path(address)).await;
    let history = assert_success(&body, "UCXL-200-OK");
    assert_eq!(
        history["versions"][0]["written_by"], "architect-bot",
        "{history}"
    );

    // Clients cannot claim to be someone else.
    let (status, body) = put_as(
        &app,
        BROAD,
        address,
        json!({"content": "forged", "written_by": "someone-else"}),
    )
    .await;
    let e = assert_error(status, &body, "UCXL-400-INVALID_PAYLOAD");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("written_by")),
        "{e}"
    );
    let (_, body) = call_as(&app, BROAD, Method::GET, &history_path(address)).await;
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["versions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn without_authentication_no_written_by_is_recorded() {
    let app = spawn_app().await;
    let address = "ucxl://claude:architect@alpha:t/anonymous";
    let (status, body) = json(app.put(address, json!({"content": 1})).await).await;
    assert_eq!(status, 201, "{body}");
    let data = assert_success(&body, "UCXL-201-CREATED");
    assert!(data.get("written_by").is_none(), "{data}");
    let (_, body) = json(app.get(address).await).await;
    assert!(
        assert_success(&body, "UCXL-200-OK")
            .get("written_by")
            .is_none()
    );
    let (_, body) = json(app.get_path(&history_path(address)).await).await;
    let history = assert_success(&body, "UCXL-200-OK");
    assert!(
        history["versions"][0].get("written_by").is_none(),
        "{history}"
    );
}

#[tokio::test]
async fn a_principal_over_its_rate_gets_429_while_others_go_on() {
    let app = auth_app(&policy(""), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/none";
    // Burst 2: two requests pass at once, the third finds the bucket empty.
    for _ in 0..2 {
        let (status, body) = get_as(&app, LIMITED, address).await;
        assert_eq!(status, 404, "{body}");
    }
    let response = send(
        app.request(Method::GET, &envelope_path(address))
            .bearer_auth(LIMITED),
    )
    .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry_after >= 1);
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-429-TOO_MANY_REQUESTS");
    assert_eq!(e["details"]["retry_after_seconds"], retry_after);
    for _ in 0..5 {
        let (status, body) = get_as(&app, BROAD, address).await;
        assert_eq!(status, 404, "another principal is not limited: {body}");
    }
}

/// The audit log's lines, parsed.
fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

/// Sends `method path` as `key` with request id `id` (and a JSON body to PUTs); checks the
/// id is echoed and the status; returns the body.
async fn audited(
    app: &TestApp,
    (method, path): (Method, &str),
    key: &str,
    id: &str,
    expect: u16,
) -> Value {
    let mut request = app
        .request(method.clone(), path)
        .bearer_auth(key)
        .header("x-request-id", id);
    if method == Method::PUT {
        request = request.json(&json!({"content": AUDITED_CONTENT}));
    }
    let response = send(request).await;
    assert_eq!(response.headers()["x-request-id"], id);
    let (status, body) = json(response).await;
    assert_eq!(status, expect, "{id}: {body}");
    body
}

const AUDITED_CONTENT: &str = "secret-content-that-never-reaches-the-log";

/// Asserts the line of request `id` holds `expected` (and a valid time).
fn assert_line(lines: &[Value], id: &str, expected: &Value) {
    let line = lines
        .iter()
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id}"));
    for (key, value) in expected.as_object().expect("object") {
        assert_eq!(&line[key], value, "{key} of {id}: {line}");
    }
    let time = line["time"].as_str().expect("time");
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "RFC 3339: {time}"
    );
}

#[tokio::test]
async fn the_audit_log_has_one_line_per_write_delete_admin_call_and_refusal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl");
    let log_text = log.display().to_string();
    let app = auth_app(&policy(&jwt_section()), &[("RUSTLE_AUDIT_LOG", &log_text)]).await;
    let address = "ucxl://claude:dev@alpha:t/audited";
    let path = envelope_path(address);
    let bad_key = "rk_wrong_key_never_in_the_log";
    let token = hs256(&claims(), SECRET.as_bytes());

    let body = audited(&app, (Method::PUT, &path), BROAD, "audit-put", 201).await;
    let put_id = assert_success(&body, "UCXL-201-CREATED")["id"].clone();
    audited(&app, (Method::GET, &path), BROAD, "audit-get", 200).await;
    let body = audited(&app, (Method::DELETE, &path), BROAD, "audit-delete", 200).await;
    let delete_id = assert_success(&body, "UCXL-200-OK")["id"].clone();
    let reload = (Method::POST, "/v1/admin/reload");
    audited(&app, reload, OPS, "audit-reload", 200).await;
    audited(&app, (Method::PUT, &path), bad_key, "audit-401", 401).await;
    audited(&app, (Method::PUT, &path), READER, "audit-403", 403).await;
    for id in ["audit-limited-0", "audit-limited-1"] {
        audited(&app, (Method::GET, &path), LIMITED, id, 404).await;
    }
    audited(&app, (Method::GET, &path), LIMITED, "audit-429", 429).await;
    let by_token = envelope_path("ucxl://claude:dev@alpha:t/by-token");
    audited(&app, (Method::PUT, &by_token), &token, "audit-jwt", 201).await;

    // Records are written before their answers leave: nothing to wait for.
    let lines = audit_lines(&log);
    let ids: Vec<&str> = lines
        .iter()
        .map(|l| l["request_id"].as_str().expect("request_id"))
        .collect();
    assert_eq!(
        ids,
        [
            "audit-put",
            "audit-delete",
            "audit-reload",
            "audit-401",
            "audit-403",
            "audit-429",
            "audit-jwt"
        ],
        "one line each, and none for reads under their rate"
    );
    let expected = [
        (
            "audit-put",
            json!({"principal": "architect-bot", "operation": "write", "address": address,
                   "envelope_id": put_id, "status": 201, "outcome": "UCXL-201-CREATED",
                   "backend": "mock"}),
        ),
        (
            "audit-delete",
            json!({"principal": "architect-bot", "operation": "delete", "address": address,
                   "envelope_id": delete_id, "status": 200, "outcome": "UCXL-200-OK",
                   "backend": "mock"}),
        ),
        (
            "audit-reload",
            json!({"principal": "ops", "operation": "admin", "address": "/v1/admin/reload",
                   "status": 200, "outcome": "UCXL-200-OK"}),
        ),
        (
            "audit-401",
            json!({"principal": "anonymous", "operation": "write", "status": 401,
                   "outcome": "UCXL-401-UNAUTHORIZED", "envelope_id": null, "backend": null}),
        ),
        (
            "audit-403",
            json!({"principal": "reader", "operation": "write", "address": address,
                   "status": 403, "outcome": "UCXL-403-FORBIDDEN", "envelope_id": null,
                   "backend": null}),
        ),
        (
            "audit-429",
            json!({"principal": "limited", "operation": "read", "status": 429,
                   "outcome": "UCXL-429-TOO_MANY_REQUESTS", "backend": null}),
        ),
        (
            "audit-jwt",
            json!({"principal": "user-1", "operation": "write", "status": 201,
                   "address": "ucxl://claude:dev@alpha:t/by-token", "backend": "mock"}),
        ),
    ];
    for (id, fields) in &expected {
        assert_line(&lines, id, fields);
    }
    let text = std::fs::read_to_string(&log).expect("log");
    for secret in [
        AUDITED_CONTENT,
        bad_key,
        BROAD,
        READER,
        OPS,
        LIMITED,
        ADMIN_TOKEN,
        token.as_str(),
        SECRET,
    ] {
        assert!(!text.contains(secret), "the log holds {secret}");
    }
}

#[tokio::test]
async fn an_audit_log_that_cannot_be_written_refuses_writes_and_deletes() {
    let app = auth_app(&policy(""), &[("RUSTLE_AUDIT_LOG", "/dev/full")]).await;
    let first = "ucxl://claude:dev@alpha:t/first";
    let second = "ucxl://claude:dev@alpha:t/second";
    // The first write finds the sink broken when its record is appended: 503.
    let (status, body) = put_as(&app, BROAD, first, json!({"content": 1})).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    // From then on writes and deletes are refused before they happen.
    let (status, body) = put_as(&app, BROAD, second, json!({"content": 2})).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    for address in [first, second] {
        let (status, body) = call_as(&app, BROAD, Method::DELETE, &envelope_path(address)).await;
        assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    }
    // Reads go on, and the refused write is nowhere.
    let (status, body) = get_as(&app, BROAD, second).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
    let (status, body) = call_as(
        &app,
        BROAD,
        Method::GET,
        &search_path("ucxl://any:any@any:any/second", 10, None),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(assert_success(&body, "UCXL-200-OK")["items"], json!([]));
}

#[tokio::test]
async fn a_sink_that_breaks_refuses_writes_and_deletes_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("audit.jsonl").display().to_string();
    let app = auth_app(&policy(""), &[("RUSTLE_AUDIT_LOG", &log)]).await;
    let kept = "ucxl://claude:dev@alpha:t/kept";
    let refused = "ucxl://claude:dev@alpha:t/refused";
    let (status, body) = put_as(&app, BROAD, kept, json!({"content": "kept"})).await;
    assert_eq!(status, 201, "{body}");
    // The sink becomes one that takes nothing; the reload's own record finds it broken.
    app.env
        .lock()
        .expect("env")
        .insert("RUSTLE_AUDIT_LOG".into(), "/dev/full".into());
    let (status, body) = app.reload(OPS).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = put_as(&app, BROAD, refused, json!({"content": 1})).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    let (status, body) = call_as(&app, BROAD, Method::DELETE, &envelope_path(kept)).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    // Nothing was stored or deleted, and reads go on.
    let (status, body) = get_as(&app, BROAD, refused).await;
    assert_error(status, &body, "UCXL-404-NOT_FOUND");
    let (status, body) = get_as(&app, BROAD, kept).await;
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["content"],
        "kept",
        "{status}"
    );
    let (status, body) = call_as(&app, BROAD, Method::GET, &history_path(kept)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        assert_success(&body, "UCXL-200-OK")["versions"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
}

#[tokio::test]
async fn a_reloaded_policy_is_in_force_at_once_and_an_invalid_one_changes_nothing() {
    let app = auth_app(&policy(""), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    let newcomer = "rk_test_newcomer_0100";
    let (status, _) = get_as(&app, newcomer, address).await;
    assert_eq!(status, 401);
    let added = principal("newcomer", newcomer, &["alpha-reader"], "");
    app.write_policy(&policy(&added));
    let (status, body) = app.reload(OPS).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get_as(&app, newcomer, address).await;
    assert_eq!(status, 404, "the new key is let in: {body}");

    // An unknown operation and a bad pattern: both reported, nothing applied.
    let intruder = "rk_test_intruder_0200";
    let invalid = format!(
        "{}{}\n[roles.broken]\ngrants = [\n  {{ ops = [\"fly\"], pattern = \"ucxl://any:any@any:any/**\" }},\n  {{ ops = [\"read\"], pattern = \"ucxl://a b:any@any:any/**\" }},\n]\n",
        policy(""),
        principal("intruder", intruder, &["all"], "")
    );
    app.write_policy(&invalid);
    let (status, body) = app.reload(OPS).await;
    let e = assert_error(status, &body, "UCXL-400-BAD_REQUEST");
    let problems: Vec<&str> = e["details"]["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| p.as_str().expect("text"))
        .collect();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(problems.iter().all(|p| !p.contains('\n')), "{problems:#?}");
    assert!(
        problems[0].contains("unknown operation \"fly\""),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("ucxl://a b:any@any:any/**"),
        "{problems:#?}"
    );
    // The policy in force is the last valid one.
    let (status, _) = get_as(&app, newcomer, address).await;
    assert_eq!(status, 404);
    let (status, _) = get_as(&app, BROAD, address).await;
    assert_eq!(status, 404);
    let (status, body) = get_as(&app, intruder, address).await;
    assert_error(status, &body, "UCXL-401-UNAUTHORIZED");
    let (_, status_body) = json(app.get_path("/v1/status").await).await;
    assert_eq!(
        status_body["response"]["data"]["auth"],
        json!({"mode": "required", "principals": 8, "jwt": false}),
        "{status_body}"
    );
}

#[tokio::test]
async fn a_reload_forgets_the_keys_and_tokens_already_accepted() {
    let app = auth_app(&policy(&jwt_section()), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    let token = hs256(&claims(), SECRET.as_bytes());
    // Each credential is used twice, so the second use is answered from what the first
    // one left behind.
    for _ in 0..2 {
        assert_eq!(get_as(&app, BROAD, address).await.0, 404);
        assert_eq!(get_as(&app, &token, address).await.0, 404);
    }
    // architect-bot loses its key, and role `all` (the token's) shrinks to project beta.
    let all = r#"grants = [{ ops = ["read", "search", "write", "delete", "watch"], pattern = "ucxl://any:any@any:any/**" }]"#;
    let narrowed = policy(&jwt_section())
        .replace(&principal("architect-bot", BROAD, &["all"], ""), "")
        .replace(
            all,
            r#"grants = [{ ops = ["read"], pattern = "ucxl://any:any@beta:any/**" }]"#,
        );
    assert_ne!(narrowed, policy(&jwt_section()));
    app.write_policy(&narrowed);
    let (status, body) = app.reload(OPS).await;
    assert_eq!(status, 200, "{body}");
    let response = send(
        app.request(Method::GET, &envelope_path(address))
            .bearer_auth(BROAD),
    )
    .await;
    assert_eq!(response.status(), 401, "the removed key is refused at once");
    assert_eq!(challenge(&response), INVALID_TOKEN);
    let (status, body) = get_as(&app, &token, address).await;
    assert_forbidden(status, &body, "read", address);
    assert_eq!(
        get_as(&app, &token, "ucxl://claude:dev@beta:t/x").await.0,
        404,
        "the token holds its role as the new policy defines it"
    );
}

#[tokio::test]
async fn an_accepted_token_is_refused_once_it_expires() {
    let jwt = format!("{}leeway_seconds = 0\n", jwt_section());
    let app = auth_app(&policy(&jwt), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    let expires = now() + 3;
    let mut claims = claims();
    claims["exp"] = json!(expires);
    let token = hs256(&claims, SECRET.as_bytes());
    for _ in 0..2 {
        assert_eq!(get_as(&app, &token, address).await.0, 404);
    }
    while now() <= expires {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = send(
        app.request(Method::GET, &envelope_path(address))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(
        response.status(),
        401,
        "expired: accepted before is no excuse"
    );
    assert_eq!(challenge(&response), INVALID_TOKEN);
}

#[tokio::test]
async fn the_admin_token_wins_over_a_policy_key_equal_to_it_every_time() {
    let shadow = principal("shadow", ADMIN_TOKEN, &["all"], "");
    let app = auth_app(&policy(&shadow), &[]).await;
    let address = "ucxl://claude:dev@alpha:t/x";
    for _ in 0..2 {
        let (status, body) = get_as(&app, ADMIN_TOKEN, address).await;
        assert_forbidden(status, &body, "read", address);
        let (status, body) = app.reload(ADMIN_TOKEN).await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_of_the_running_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy("")).expect("write policy");
    let policy_env = path.display().to_string();
    let (mut child, addr) = super::process::spawn_listening(&[
        ("RUSTLE_AUTH_POLICY", policy_env.as_str()),
        ("RUSTLE_AUDIT_LOG", "off"),
    ]);
    // The signal comes as soon as the gateway says it listens: it must reload, not end it.
    let newcomer = "rk_test_newcomer_0100";
    std::fs::write(
        &path,
        policy(&principal("newcomer", newcomer, &["alpha-reader"], "")),
    )
    .expect("write policy");
    let pid = child.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let client = reqwest::Client::new();
    let url = format!(
        "http://{addr}/v1/envelopes?address={}",
        enc("ucxl://claude:dev@alpha:t/x")
    );
    let status_of = |key: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(&url)
                .bearer_auth(key)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    let reloaded = wait_until(Duration::from_secs(20), || async {
        status_of(newcomer).await == Some(404)
    })
    .await;
    let alive = child.try_wait().expect("waits").is_none();
    child.kill().expect("killed");
    let _ = child.wait();
    assert!(alive, "SIGHUP does not end the gateway");
    assert!(reloaded, "the new key works after SIGHUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_once_the_audit_sink_takes_records_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy("")).expect("write policy");
    let config_path = dir.path().join("rustle.toml");
    let log = dir.path().join("audit.jsonl");
    std::fs::write(&config_path, "audit_log = \"/dev/full\"\n").expect("write config");
    let (policy_env, config_env) = (
        policy_path.display().to_string(),
        config_path.display().to_string(),
    );
    let (mut child, addr) = super::process::spawn_listening(&[
        ("RUSTLE_AUTH_POLICY", policy_env.as_str()),
        ("RUSTLE_CONFIG", config_env.as_str()),
    ]);
    let client = reqwest::Client::new();
    let put = |path: String| {
        let (client, url) = (
            client.clone(),
            format!("http://{addr}/v1/envelopes?address={}", enc(&path)),
        );
        async move {
            client
                .put(&url)
                .bearer_auth(BROAD)
                .json(&json!({"content": 1}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    for i in 0..2 {
        assert_eq!(
            put(format!("ucxl://claude:dev@alpha:t/broken-{i}")).await,
            Some(503)
        );
    }
    // The operator points the sink at a file and reloads, with no other request in
    // between: writes resume without an admin call or a restart.
    std::fs::write(
        &config_path,
        format!("audit_log = {}\n", json!(log.display().to_string())),
    )
    .expect("write config");
    let pid = child.id().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill runs");
    assert!(signalled.success());
    let attempt = AtomicUsize::new(0);
    let resumed = wait_until(Duration::from_secs(20), || async {
        let n = attempt.fetch_add(1, Ordering::SeqCst);
        put(format!("ucxl://claude:dev@alpha:t/after-{n}")).await == Some(201)
    })
    .await;
    child.kill().expect("killed");
    let _ = child.wait();
    assert!(resumed, "writes stay refused after the sink was fixed");
    // The refusal that found the sink healed is on record, then the write that went through.
    let lines = audit_lines(&log);
    let statuses: Vec<&Value> = lines.iter().map(|l| &l["status"]).collect();
    assert_eq!(statuses.first(), Some(&&json!(503)), "{lines:?}");
    assert_eq!(statuses.last(), Some(&&json!(201)), "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["principal"] == "architect-bot" && l["operation"] == "write"),
        "{lines:?}"
    );
}

#[test]
fn a_listener_beyond_loopback_needs_a_policy_or_auth_none() {
    let resolve = |pairs: &[(&str, &str)]| {
        Sources {
            env: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Sources::default()
        }
        .resolve()
    };
    let problems = resolve(&[("RUSTLE_LISTEN_ADDR", "0.0.0.0:8080")])
        .expect_err("refused")
        .0;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("RUSTLE_LISTEN_ADDR:"),
        "{problems:?}"
    );
    let config = resolve(&[
        ("RUSTLE_LISTEN_ADDR", "0.0.0.0:8080"),
        ("RUSTLE_AUTH", "none"),
    ])
    .expect("explicitly without authentication");
    assert_eq!(config.auth, AuthMode::None);
    let config = resolve(&[
        ("RUSTLE_LISTEN_ADDR", "0.0.0.0:8080"),
        ("RUSTLE_AUTH_POLICY", "/etc/rustle/policy.toml"),
    ])
    .expect("a policy");
    assert_eq!(config.auth, AuthMode::Required, "a policy means required");
    let problems = resolve(&[("RUSTLE_AUTH", "required")])
        .expect_err("required without a policy")
        .0;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("RUSTLE_AUTH_POLICY"), "{problems:?}");
}

const BIN: &str = env!("CARGO_BIN_EXE_rustle-gateway");

fn binary() -> std::process::Command {
    let mut c = std::process::Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

#[test]
fn auth_new_key_prints_a_key_and_policy_lines_with_only_its_digest() {
    let output = binary()
        .args(["auth", "new-key", "bot-1"])
        .output()
        .expect("runs");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let keys: Vec<&str> = text
        .split_whitespace()
        .filter(|w| w.starts_with("rk_"))
        .collect();
    assert_eq!(keys.len(), 1, "{text}");
    let key = keys[0];
    assert!(key.len() >= 40, "{key}");
    let (_, lines) = text.split_once("[[principals]]").expect("policy lines");
    assert!(!lines.contains(key), "the policy lines never hold the key");
    let table: toml::Table = format!("[[principals]]{lines}").parse().expect("TOML");
    let entry = &table["principals"][0];
    assert_eq!(entry["name"].as_str(), Some("bot-1"));
    assert_eq!(entry["key_sha256"].as_str(), Some(digest(key).as_str()));
    // And the printed lines are a valid policy in which the key names bot-1.
    let env = HashMap::new();
    let policy = rustle_gateway::auth::Policy::parse(
        &format!("[[principals]]{lines}"),
        Path::new("."),
        &env,
    )
    .expect("a valid policy");
    assert_eq!(
        policy.by_key(key).map(|p| p.name().as_str().to_owned()),
        Some("bot-1".to_owned())
    );
}

#[test]
fn an_invalid_policy_stops_the_binary_with_exit_64_and_a_line_per_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(
        &path,
        "[roles.r]\ngrants = [\n  { ops = [\"fly\"], pattern = \"ucxl://any:any@any:any/**\" },\n  { ops = [\"read\"], pattern = \"ucxl://a b:any@any:any/**\" },\n]\n",
    )
    .expect("write policy");
    let output = binary()
        .env("RUSTLE_LISTEN_ADDR", "127.0.0.1:0")
        .env("RUSTLE_AUTH_POLICY", &path)
        .env("RUSTLE_AUDIT_LOG", "off")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].contains("unknown operation \"fly\""), "{stderr}");
    assert!(lines[1].contains("pattern"), "{stderr}");
}
