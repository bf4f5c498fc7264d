//! `/mcp` over real HTTP, speaking MCP JSON-RPC as a client would: initialize, the tool
//! list, every tool against the backend, tool errors, resources, credentials and grants,
//! and two gateways answering one client alternately (stateless).

use std::collections::HashMap;

use rustle_gateway::auth::policy::key_digest;
use rustle_gateway::config::{AuthMode, Sources};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::helpers::{TestApp, project, spawn_app, spawn_app_with_env};

/// The protocol revision the tests speak.
const PROTOCOL: &str = "2025-06-18";

/// Sends one JSON-RPC message to `/mcp` (with `key` as bearer token): the status and the
/// body (`Null` when there is none).
async fn rpc(app: &TestApp, key: Option<&str>, message: Value) -> (u16, Value) {
    let mut request = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", PROTOCOL)
        .json(&message);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    };
    (status, body)
}

async fn initialize(app: &TestApp, key: Option<&str>) -> Value {
    let (status, body) = rpc(
        app,
        key,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "api-test", "version": "1"}
        }}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = rpc(
        app,
        key,
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    body["result"].clone()
}

/// Calls a tool; returns its result (`content`, `structuredContent`, `isError`).
async fn call(app: &TestApp, key: Option<&str>, tool: &str, arguments: Value) -> Value {
    let (status, body) = rpc(
        app,
        key,
        json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
               "params": {"name": tool, "arguments": arguments}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("error").is_none(), "a protocol error: {body}");
    body["result"].clone()
}

/// The structured content of a successful call.
fn ok(result: &Value, code: &str) -> Value {
    assert_eq!(result["isError"], false, "{result}");
    assert_eq!(result["structuredContent"]["code"], code, "{result}");
    let text = result["content"][0]["text"].as_str().expect("a text block");
    assert!(text.starts_with(code), "{text}");
    result["structuredContent"]["data"].clone()
}

/// The structured content of a tool error.
fn tool_error(result: &Value, code: &str) -> Value {
    assert_eq!(result["isError"], true, "{result}");
    let error = &result["structuredContent"];
    assert_eq!(error["code"], code, "{result}");
    assert!(error["message"].is_string(), "{result}");
    assert!(error["request_id"].is_string(), "{result}");
    error.clone()
}

#[tokio::test]
async fn mcp_initialize_announces_tools_and_resources_without_a_session() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "api-test", "version": "1"}}}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("mcp-session-id").is_none(),
        "stateless: no session"
    );
    assert!(response.headers().get("x-request-id").is_some());
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "one JSON answer, no event stream"
    );
    let body: Value = response.json().await.expect("json");
    let result = &body["result"];
    assert_eq!(result["protocolVersion"], PROTOCOL, "the client's revision");
    assert!(result["capabilities"]["tools"].is_object());
    assert!(result["capabilities"]["resources"].is_object());
    assert_eq!(result["serverInfo"]["name"], "rustle-gateway");
    assert!(result["instructions"].as_str().is_some_and(|i| {
        i.contains("ucxl://claude:architect@bzzz:design/*^/decisions/transport.json")
    }));
}

#[tokio::test]
async fn mcp_tools_list_names_five_tools_with_schemas_that_teach_the_grammar() {
    let app = spawn_app().await;
    initialize(&app, None).await;
    let (status, body) = rpc(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200);
    let tools = body["result"]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "ucxl_store",
            "ucxl_fetch",
            "ucxl_history",
            "ucxl_search",
            "ucxl_delete"
        ]
    );
    let store = &tools[0]["inputSchema"];
    assert_eq!(store["type"], "object");
    let required: Vec<&str> = store["required"]
        .as_array()
        .expect("required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(required.contains(&"address"), "{store}");
    assert!(
        store["properties"]["address"]["description"]
            .as_str()
            .is_some_and(
                |d| d.contains("ucxl://claude:architect@bzzz:design/*^/decisions/transport.json")
            ),
        "{store}"
    );
    let search = &tools[3]["inputSchema"];
    assert!(
        search["properties"]["pattern"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("**")),
        "{search}"
    );
}

#[tokio::test]
async fn mcp_tools_store_fetch_history_search_delete_over_the_backend() {
    let app = spawn_app().await;
    initialize(&app, None).await;
    let p = project();
    let address = format!("ucxl://claude:architect@{p}:design/decisions/transport.json");

    let first = ok(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": address, "content": {"decision": "libp2p"},
                   "metadata": {"reason": "first"}, "idempotency_key": "mcp-store-1"}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    assert_eq!(first["version"], 1);
    assert!(
        first["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:"))
    );
    assert_eq!(first["id"], "mcp-store-1");
    // The same key again: nothing new.
    let again = ok(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": address, "content": {"decision": "libp2p"},
                   "idempotency_key": "mcp-store-1"}),
        )
        .await,
        "UCXL-200-OK",
    );
    assert_eq!(again["version"], 1);
    ok(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": address, "content": {"decision": "nats"}}),
        )
        .await,
        "UCXL-201-CREATED",
    );

    let latest = ok(
        &call(&app, None, "ucxl_fetch", json!({"address": address})).await,
        "UCXL-200-OK",
    );
    assert_eq!(latest["version"], 2);
    assert_eq!(latest["content"]["decision"], "nats");
    let v1 = format!("ucxl://claude:architect@{p}:design/*~1/decisions/transport.json");
    let old = ok(
        &call(&app, None, "ucxl_fetch", json!({"address": v1})).await,
        "UCXL-200-OK",
    );
    assert_eq!(old["content"]["decision"], "libp2p");

    let history = ok(
        &call(&app, None, "ucxl_history", json!({"address": address})).await,
        "UCXL-200-OK",
    );
    assert_eq!(history["versions"].as_array().map(Vec::len), Some(2));

    let pattern = format!("ucxl://any:any@{p}:any/**");
    let page = ok(
        &call(
            &app,
            None,
            "ucxl_search",
            json!({"pattern": pattern, "limit": 10}),
        )
        .await,
        "UCXL-200-OK",
    );
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["partial"], false);

    // The REST API sees what the tools wrote: one backend.
    let rest = app.get(&address).await;
    assert_eq!(rest.status(), 200);

    let deleted = ok(
        &call(&app, None, "ucxl_delete", json!({"address": address})).await,
        "UCXL-200-OK",
    );
    assert_eq!(deleted["address"], address);
    let gone = tool_error(
        &call(&app, None, "ucxl_fetch", json!({"address": address})).await,
        "UCXL-404-NOT_FOUND",
    );
    assert!(gone["message"].is_string());

    assert_counted(&app, "ucxl_store", "UCXL-201-CREATED").await;
}

/// Asserts `/metrics` counts calls of `tool` with `outcome`.
async fn assert_counted(app: &TestApp, tool: &str, outcome: &str) {
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("rustle_mcp_calls_total{")
                && l.contains(&format!(r#"tool="{tool}""#))
                && l.contains(&format!(r#"outcome="{outcome}""#))),
        "{metrics}"
    );
}

#[tokio::test]
async fn mcp_domain_errors_are_tool_errors_naming_what_is_wrong() {
    let app = spawn_app().await;
    let bad = tool_error(
        &call(
            &app,
            None,
            "ucxl_fetch",
            json!({"address": "ucxl://claude!:architect@bzzz:design/x"}),
        )
        .await,
        "UCXL-400-INVALID_ADDRESS",
    );
    assert_eq!(bad["details"]["field"], "agent", "{bad}");
    assert!(bad["message"].as_str().is_some_and(|m| m.contains("agent")));

    let temporal = tool_error(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": "ucxl://a:r@p:t/*~1/x", "content": 1}),
        )
        .await,
        "UCXL-400-TEMPORAL_INVALID",
    );
    assert!(temporal["message"].is_string());

    let missing = tool_error(
        &call(&app, None, "ucxl_store", json!({"content": 1})).await,
        "UCXL-400-INVALID_PAYLOAD",
    );
    assert!(
        missing["message"]
            .as_str()
            .is_some_and(|m| m.contains("address")),
        "{missing}"
    );

    let cursor = tool_error(
        &call(
            &app,
            None,
            "ucxl_search",
            json!({"pattern": "ucxl://any:any@any:any/**", "cursor": "not-ours"}),
        )
        .await,
        "UCXL-400-BAD_REQUEST",
    );
    assert_eq!(cursor["details"]["field"], "cursor");

    // An unknown tool is a protocol error, not a tool result.
    let (status, body) = rpc(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": "ucxl_nope", "arguments": {}}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["code"], -32602, "{body}");
}

#[tokio::test]
async fn mcp_resources_template_read_and_list() {
    let app = spawn_app().await;
    let p = project();
    let address = format!("ucxl://claude:architect@{p}:design/notes/a.md");
    ok(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": address, "content": "# Notes", "content_type": "text/markdown"}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    let (_, templates) = rpc(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 3, "method": "resources/templates/list"}),
    )
    .await;
    assert_eq!(
        templates["result"]["resourceTemplates"][0]["uriTemplate"],
        "ucxl://{agent}:{role}@{project}:{task}/{path}"
    );
    let (_, read) = rpc(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 4, "method": "resources/read", "params": {"uri": address}}),
    )
    .await;
    let contents = &read["result"]["contents"][0];
    assert_eq!(contents["text"], "# Notes", "{read}");
    assert_eq!(contents["mimeType"], "text/markdown");
    let (_, missing) = rpc(
        &app,
        None,
        json!({"jsonrpc": "2.0", "id": 5, "method": "resources/read",
               "params": {"uri": format!("ucxl://claude:architect@{p}:design/none")}}),
    )
    .await;
    assert_eq!(missing["error"]["code"], -32002, "{missing}");
    assert_eq!(missing["error"]["data"]["code"], "UCXL-404-NOT_FOUND");

    // Paging: 51 addresses in all, so the default page of 50 leaves one for a second page.
    for i in 0..50 {
        ok(
            &call(
                &app,
                None,
                "ucxl_store",
                json!({"address": format!("ucxl://claude:architect@{p}:design/more/{i}"), "content": i}),
            )
            .await,
            "UCXL-201-CREATED",
        );
    }
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let params = cursor
            .as_ref()
            .map_or_else(|| json!({}), |c| json!({"cursor": c}));
        let (status, list) = rpc(
            &app,
            None,
            json!({"jsonrpc": "2.0", "id": 6, "method": "resources/list", "params": params}),
        )
        .await;
        assert_eq!(status, 200, "{list}");
        pages += 1;
        for r in list["result"]["resources"].as_array().expect("resources") {
            seen.push(r["uri"].as_str().expect("uri").to_owned());
        }
        match list["result"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    assert_eq!(seen.len(), 51);
    assert!(seen.contains(&address), "{seen:?}");
}

const WRITER_KEY: &str = "rk_test_mcp_writer_0001";

/// A gateway that requires credentials, with one principal who may read, write and
/// delete in project `alpha` and search nowhere.
async fn auth_app(audit_log: Option<&str>) -> (TestApp, tempfile::TempDir) {
    let policy = format!(
        r#"[[principals]]
name = "alpha-writer"
key_sha256 = "{}"
roles = ["alpha"]

[roles.alpha]
grants = [{{ ops = ["read", "write", "delete"], pattern = "ucxl://any:any@alpha:any/**" }}]
"#,
        hex::encode(key_digest(WRITER_KEY))
    );
    policy_app(&policy, &[("RUSTLE_AUDIT_LOG", audit_log.unwrap_or("off"))]).await
}

/// A gateway that requires credentials, with `policy` in a file of its own and `env` (on
/// top of the defaults) in the environment its reloads read.
pub(super) async fn policy_app(policy: &str, env: &[(&str, &str)]) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("policy");
    let mut vars: HashMap<String, String> = [
        ("RUSTLE_LISTEN_ADDR", "127.0.0.1:0"),
        ("RUSTLE_AUTH", "required"),
        ("RUSTLE_AUDIT_LOG", "off"),
    ]
    .into_iter()
    .chain(env.iter().copied())
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    vars.insert("RUSTLE_AUTH_POLICY".to_owned(), path.display().to_string());
    let config = Sources {
        env: vars.clone(),
        ..Sources::default()
    }
    .resolve()
    .expect("a valid configuration");
    assert_eq!(config.auth, AuthMode::Required);
    (
        spawn_app_with_env(config, Options::default(), vars).await,
        dir,
    )
}

#[tokio::test]
async fn mcp_needs_the_rest_credentials_and_grants() {
    let (app, _dir) = auth_app(None).await;
    let response = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="rustle""#
    );

    initialize(&app, Some(WRITER_KEY)).await;
    let address = "ucxl://claude:architect@alpha:design/decisions/transport.json";
    let stored = ok(
        &call(
            &app,
            Some(WRITER_KEY),
            "ucxl_store",
            json!({"address": address, "content": {"ok": true}}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    assert_eq!(stored["written_by"], "alpha-writer", "{stored}");

    let forbidden = tool_error(
        &call(
            &app,
            Some(WRITER_KEY),
            "ucxl_store",
            json!({"address": "ucxl://claude:architect@beta:design/x", "content": 1}),
        )
        .await,
        "UCXL-403-FORBIDDEN",
    );
    assert_eq!(forbidden["details"]["operation"], "write", "{forbidden}");
    let search = tool_error(
        &call(
            &app,
            Some(WRITER_KEY),
            "ucxl_search",
            json!({"pattern": "ucxl://any:any@alpha:any/**"}),
        )
        .await,
        "UCXL-403-FORBIDDEN",
    );
    assert_eq!(search["details"]["operation"], "search", "{search}");
}

#[tokio::test]
async fn mcp_two_gateways_answer_one_client_alternately() {
    let a = spawn_app().await;
    let b = spawn_app().await;
    initialize(&a, None).await;
    // No session to find: every request stands alone, whichever process gets it.
    for (i, app) in [&b, &a, &b, &a].into_iter().enumerate() {
        let (status, body) = rpc(
            app,
            None,
            json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/list"}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["tools"].as_array().map(Vec::len), Some(5));
    }
    let address = format!("ucxl://a:r@{}:t/x", project());
    ok(
        &call(
            &b,
            None,
            "ucxl_store",
            json!({"address": address, "content": 1}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    ok(
        &call(&b, None, "ucxl_fetch", json!({"address": address})).await,
        "UCXL-200-OK",
    );
}

#[tokio::test]
async fn mcp_writes_and_refusals_are_audited_with_the_tool_results_code() {
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("audit.jsonl");
    let (app, _dir) = auth_app(Some(&log.display().to_string())).await;
    let address = "ucxl://claude:architect@alpha:design/audited";
    ok(
        &call(
            &app,
            Some(WRITER_KEY),
            "ucxl_store",
            json!({"address": address, "content": 1, "idempotency_key": "mcp-audited"}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    tool_error(
        &call(
            &app,
            Some(WRITER_KEY),
            "ucxl_delete",
            json!({"address": "ucxl://claude:architect@beta:design/x"}),
        )
        .await,
        "UCXL-403-FORBIDDEN",
    );
    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .expect("the audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["principal"], "alpha-writer");
    assert_eq!(lines[0]["operation"], "write");
    assert_eq!(lines[0]["address"], address);
    assert_eq!(lines[0]["envelope_id"], "mcp-audited");
    assert_eq!(lines[0]["outcome"], "UCXL-201-CREATED");
    assert_eq!(lines[0]["route"], "/mcp");
    assert_eq!(lines[1]["operation"], "delete");
    assert_eq!(lines[1]["outcome"], "UCXL-403-FORBIDDEN");
}

/// A gateway whose policy accepts HS256 JWTs from `issuer` (when given) and nothing else.
async fn jwt_app(issuer: Option<&str>) -> (TestApp, tempfile::TempDir) {
    let issuer_line = issuer.map_or(String::new(), |i| format!("issuer = \"{i}\"\n"));
    let policy = format!(
        "[roles.reader]\ngrants = [{{ ops = [\"read\"], pattern = \"ucxl://any:any@any:any/**\" }}]\n\n[jwt]\nhs256_secret_env = \"RUSTLE_JWT_SECRET\"\n{issuer_line}"
    );
    policy_app(
        &policy,
        &[("RUSTLE_JWT_SECRET", "a-test-secret-of-at-least-32-bytes!!")],
    )
    .await
}

#[tokio::test]
async fn mcp_points_clients_to_the_protected_resource_metadata_of_its_jwt_issuer() {
    let (app, _dir) = jwt_app(Some("https://auth.example")).await;
    let response = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    let origin = format!("http://{}", app.addr);
    assert_eq!(
        response.headers()["www-authenticate"],
        format!(
            r#"Bearer realm="rustle", resource_metadata="{origin}/.well-known/oauth-protected-resource/mcp""#
        )
        .as_str()
    );
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let response = app.client.get(app.url(path)).send().await.expect("request");
        assert_eq!(response.status(), 200, "{path}");
        let doc: Value = response.json().await.expect("json");
        assert_eq!(doc["resource"], format!("{origin}/mcp"));
        assert_eq!(
            doc["authorization_servers"],
            json!(["https://auth.example"])
        );
        assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    }
    // A 401 elsewhere keeps the plain challenge: the metadata is about /mcp.
    let response = app
        .client
        .get(app.url("/v1/envelopes?address=ucxl%3A%2F%2Fa%3Ab%40c%3Ad%2Fx"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer realm="rustle""#
    );
}

#[tokio::test]
async fn without_a_jwt_issuer_there_is_no_protected_resource_metadata() {
    for (app, _dir) in [jwt_app(None).await, auth_app(None).await] {
        let response = app
            .client
            .get(app.url("/.well-known/oauth-protected-resource/mcp"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 404);
        let response = app
            .client
            .post(app.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 401);
        assert_eq!(
            response.headers()["www-authenticate"],
            r#"Bearer realm="rustle""#
        );
    }
}

/// `tools/call` is answered by the gateway itself (`mcp::handle`); a request the direct
/// path leaves to the SDK (here: an upper-case `Host`, which the SDK's allow-list accepts)
/// gets the same answer, byte for byte but for the request id and time.
#[tokio::test]
async fn a_tool_call_answered_directly_is_the_one_the_sdk_gives() {
    let app = spawn_app().await;
    let address = format!("ucxl://claude:architect@{}:t/same", project());
    ok(
        &call(
            &app,
            None,
            "ucxl_store",
            json!({"address": address, "content": {"k": 1}}),
        )
        .await,
        "UCXL-201-CREATED",
    );
    let cases = [
        json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
               "params": {"name": "ucxl_fetch", "arguments": {"address": address}}}),
        json!({"jsonrpc": "2.0", "id": "s", "method": "tools/call",
               "params": {"name": "ucxl_fetch", "arguments": {"address": "ucxl://bad"}}}),
        json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
               "params": {"name": "ucxl_nope", "arguments": {}}}),
        json!({"jsonrpc": "2.0", "id": 11, "method": "tools/call",
               "params": {"name": "ucxl_fetch", "arguments": {"adress": address}}}),
    ];
    let host = format!("LOCALHOST:{}", app.addr.port());
    // The request id and the time differ between two calls: masked.
    let varying = regex::Regex::new(r#"(request_id|timestamp|created_at)\\?":\s*\\?"[^"\\]*\\?""#)
        .expect("regex");
    for case in cases {
        let mut answers = Vec::new();
        for extra_host in [None, Some(host.as_str())] {
            let mut request = app
                .client
                .post(app.url("/mcp"))
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", PROTOCOL)
                .json(&case);
            if let Some(host) = extra_host {
                request = request.header("host", host);
            }
            let response = request.send().await.expect("answer");
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["content-type"], "application/json");
            let text = response.text().await.expect("body");
            let masked = varying.replace_all(&text, "$1:x").into_owned();
            answers.push(masked);
        }
        assert_eq!(answers[0], answers[1], "{case}");
    }
    // The Host header is what was sent: one off the allow-list is the SDK's refusal.
    let refused = app
        .client
        .post(app.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("host", format!("rebound.example:{}", app.addr.port()))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "ucxl_fetch", "arguments": {"address": address}}}))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status(), 403);
}
