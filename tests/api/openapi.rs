//! The `OpenAPI` document as generated clients read it: every status an operation answers is
//! documented (checked against real answers over sockets, from the layers in front of the
//! handlers to a node's bad answer), descriptions sit inside parameter and header schemas,
//! answers are named schemas, error `details` keys are documented and typed, defaults are
//! the code's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use reqwest::{Method, RequestBuilder};
use rustle_gateway::config::{BackendMode, Sources};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::helpers::{TestApp, enc, project, spawn_app_with, spawn_app_with_env, test_config};
use super::resilience::cluster_config;
use super::wire::{Fault, server};

fn document() -> Value {
    serde_json::to_value(rustle_gateway::openapi::document()).expect("json")
}

/// Every operation: (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            all.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    all
}

/// The component `reference` (`#/components/schemas/NAME`) points at.
fn resolve<'a>(doc: &'a Value, reference: &str) -> &'a Value {
    let name = reference
        .strip_prefix("#/components/schemas/")
        .unwrap_or_else(|| panic!("not a schema reference: {reference}"));
    let schema = &doc["components"]["schemas"][name];
    assert!(schema.is_object(), "{reference} is not in components");
    schema
}

#[test]
fn every_operation_documents_what_the_layers_in_front_of_it_answer() {
    let doc = document();
    for (method, path, operation) in operations(&doc) {
        let op = format!("{method} {path}");
        let responses = operation["responses"].as_object().expect("responses");
        let has = |status: &str| responses.contains_key(status);
        let header = |status: &str, name: &str| {
            responses[status]["headers"]
                .as_object()
                .is_some_and(|h| h.contains_key(name))
        };
        assert!(has("500"), "{op}: a panic is a 500");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{op}: a success"
        );
        let guarded = operation.get("security").is_some();
        if guarded {
            for status in ["400", "401", "403", "429"] {
                assert!(has(status), "{op}: {status} (authentication, grants, Ctx)");
            }
            assert!(header("401", "WWW-Authenticate"), "{op}");
            assert!(header("429", "Retry-After"), "{op}");
        }
        if operation.get("requestBody").is_some() {
            for status in ["400", "408", "413", "415"] {
                assert!(has(status), "{op}: {status} (the JSON body)");
            }
        }
        if path.starts_with("/v1/envelopes") || path.starts_with("/v1/search") {
            for status in ["503", "504"] {
                assert!(has(status), "{op}: {status} (backends, shedding)");
            }
        }
        if path.starts_with("/v1/envelopes") {
            assert!(has("502"), "{op}: 502 (a node's bad answer)");
        }
        if has("503") {
            assert!(header("503", "Retry-After"), "{op}: 503 says when");
        }
        for (status, response) in responses {
            assert!(
                header(status, "X-Request-Id"),
                "{op} {status}: X-Request-Id"
            );
            assert!(
                response["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{op} {status}: described"
            );
        }
    }
}

#[test]
fn every_parameter_and_header_is_described_in_its_schema_too() {
    let doc = document();
    let described = |v: &Value| v["description"].as_str().is_some_and(|d| d.len() > 10);
    for (method, path, operation) in operations(&doc) {
        for parameter in operation["parameters"].as_array().into_iter().flatten() {
            let name = format!("{method} {path} {}", parameter["name"]);
            assert!(described(parameter), "{name}: described");
            assert!(described(&parameter["schema"]), "{name}: in its schema");
        }
        for (status, response) in operation["responses"].as_object().expect("responses") {
            for (name, header) in response["headers"].as_object().into_iter().flatten() {
                let name = format!("{method} {path} {status} {name}");
                assert!(described(header), "{name}: described");
                assert!(described(&header["schema"]), "{name}: in its schema");
            }
        }
    }
}

#[test]
fn answers_are_named_schemas_one_per_shape() {
    let doc = document();
    for (method, path, operation) in operations(&doc) {
        for (status, response) in operation["responses"].as_object().expect("responses") {
            let Some(schema) = response["content"]
                .get("application/json")
                .map(|c| &c["schema"])
            else {
                continue;
            };
            let reference = schema["$ref"].as_str().unwrap_or_else(|| {
                panic!("{method} {path} {status}: an anonymous schema {schema}")
            });
            let name = reference.rsplit('/').next().expect("name");
            if status.starts_with('2') {
                assert!(
                    name.ends_with("Response"),
                    "{method} {path} {status}: {name}"
                );
                let body = resolve(&doc, &format!("{reference}Body"));
                let data = body["properties"]["data"]["$ref"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}Body: data is named: {body}"));
                resolve(&doc, data);
            } else {
                assert_eq!(name, "ErrorResponse", "{method} {path} {status}");
            }
            resolve(&doc, reference);
        }
    }
    let error_body = resolve(&doc, "#/components/schemas/ErrorBody");
    assert_eq!(
        error_body["properties"]["details"]["$ref"],
        "#/components/schemas/ErrorDetails"
    );
    let details = resolve(&doc, "#/components/schemas/ErrorDetails");
    assert_eq!(details["additionalProperties"], true, "{details}");
    // Each watch event's data has a name, and nothing is an allOf over a oneOf.
    let event = resolve(&doc, "#/components/schemas/ChangeEvent");
    assert_eq!(event["discriminator"]["propertyName"], "op");
    for name in ["PutEvent", "DeleteEvent"] {
        let schema = resolve(&doc, &format!("#/components/schemas/{name}"));
        assert!(schema["properties"]["op"].is_object(), "{name}: {schema}");
    }
    assert!(
        resolve(&doc, "#/components/schemas/PutEvent")["properties"]["content_omitted"].is_object()
    );
    assert!(
        !doc.to_string().contains("SuccessBody_"),
        "no generic names"
    );
    every_all_of_is_over_objects(&doc, &doc);
}

/// Generators make one class of an `allOf` only when each part is an object.
fn every_all_of_is_over_objects(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            for part in map
                .get("allOf")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let part = part["$ref"]
                    .as_str()
                    .map_or(part, |reference| resolve(doc, reference));
                assert_eq!(part["type"], "object", "an allOf over {part}");
            }
            map.values()
                .for_each(|v| every_all_of_is_over_objects(doc, v));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| every_all_of_is_over_objects(doc, v)),
        _ => {}
    }
}

#[test]
fn the_document_names_its_server_and_the_code_s_defaults_and_bounds() {
    let doc = document();
    assert_eq!(doc["servers"][0]["url"], "/");
    let parameter = |method: &str, path: &str, name: &str| -> Value {
        doc["paths"][path][method]["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{method} {path} {name}"))
            .clone()
    };
    let limit = parameter("get", "/v1/search", "limit")["schema"].clone();
    assert_eq!(
        limit["default"],
        json!(rustle_gateway::routes::search::DEFAULT_LIMIT)
    );
    assert_eq!(limit["minimum"], 1);
    assert_eq!(
        limit["maximum"],
        json!(rustle_gateway::routes::search::MAX_LIMIT)
    );
    for name in ["initial", "content"] {
        assert_eq!(
            parameter("get", "/v1/watch", name)["schema"]["default"],
            false
        );
    }
    assert_eq!(
        parameter("get", "/v1/envelopes", "X-Rustle-Consistency")["schema"]["default"],
        "node"
    );
    let key = parameter("put", "/v1/envelopes", "Idempotency-Key")["schema"].clone();
    assert_eq!(
        (key["minLength"].clone(), key["maxLength"].clone()),
        (json!(1), json!(128))
    );
    assert_eq!(
        parameter("put", "/v1/envelopes", "X-Request-Timeout-Ms")["schema"]["minimum"],
        1
    );
    assert_eq!(
        doc["components"]["schemas"]["PutEnvelope"]["properties"]["content_type"]["default"],
        ucxl::DEFAULT_CONTENT_TYPE
    );
}

/// Whether `value` fits the (small) schema `schema`: `type`, `items`, `oneOf`, `$ref`.
fn fits(doc: &Value, schema: &Value, value: &Value) -> bool {
    if let Some(reference) = schema["$ref"].as_str() {
        return fits(doc, resolve(doc, reference), value);
    }
    if let Some(options) = schema["oneOf"].as_array() {
        return options.iter().any(|o| fits(doc, o, value));
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return true,
    };
    types.iter().any(|t| match *t {
        "string" => value.is_string(),
        "integer" => value.is_u64() || value.is_i64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "array" => value
            .as_array()
            .is_some_and(|items| items.iter().all(|i| fits(doc, &schema["items"], i))),
        "object" => value.as_object().is_some_and(|o| {
            o.iter().all(|(k, v)| {
                schema["properties"]
                    .get(k)
                    .is_none_or(|property| fits(doc, property, v))
            })
        }),
        _ => false,
    })
}

/// One answer: the operation it came from, and what it was.
struct Answer {
    operation: String,
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    async fn of(operation: &str, request: RequestBuilder) -> Self {
        let response = request.send().await.expect("sent");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Self {
            operation: operation.to_owned(),
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
        }
    }
}

/// Asserts that the document says what `answer` shows: its status for its operation, the
/// headers it carries, the keys and types of its error details.
fn assert_documented(doc: &Value, answer: &Answer) {
    let (method, path) = answer.operation.split_once(' ').expect("METHOD /path");
    let responses = &doc["paths"][path][method.to_lowercase()]["responses"];
    let status = answer.status.to_string();
    let what = format!("{} answered {status}: {}", answer.operation, answer.body);
    let documented = &responses[&status];
    assert!(documented.is_object(), "undocumented status: {what}");
    for name in answer.headers.keys() {
        let name = name.as_str();
        if name.starts_with("x-rustle-")
            || name == "retry-after"
            || name == "www-authenticate"
            || name == "x-request-id"
        {
            let header = documented["headers"]
                .as_object()
                .and_then(|h| h.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)));
            let Some((_, header)) = header else {
                panic!("undocumented header {name}: {what}");
            };
            let value = answer.headers[name].to_str().expect("ascii");
            let value = value
                .parse::<u64>()
                .map_or_else(|_| json!(value), |n| json!(n));
            assert!(fits(doc, &header["schema"], &value), "{name}: {what}");
            if let Some(allowed) = header["schema"]["enum"].as_array() {
                assert!(allowed.contains(&value), "{name}: {what}");
            }
        }
    }
    if let Some(error) = answer.body.get("error") {
        assert_eq!(
            error["code"].as_str().map(|c| &c[5..8]),
            Some(status.as_str()),
            "{what}"
        );
        let properties = &resolve(doc, "#/components/schemas/ErrorDetails")["properties"];
        for (key, value) in error["details"].as_object().expect("details") {
            let property = &properties[key];
            assert!(
                property.is_object(),
                "undocumented details key {key}: {what}"
            );
            assert!(fits(doc, property, value), "details.{key}: {what}");
        }
    } else if answer.status < 300 && answer.body.is_object() {
        let reference = documented["content"]["application/json"]["schema"]["$ref"]
            .as_str()
            .expect("a named answer");
        let body = resolve(doc, &format!("{reference}Body"));
        for key in body["required"].as_array().expect("required") {
            let key = key.as_str().expect("key");
            assert!(answer.body["response"].get(key).is_some(), "{key}: {what}");
        }
    }
}

const ALL_KEY: &str = "rk_openapi-test-key-that-may-do-everything-0123456789";
const READER_KEY: &str = "rk_openapi-test-key-that-may-only-read-0123456789";
const LIMITED_KEY: &str = "rk_openapi-test-key-with-a-rate-of-one-0123456789";

fn principal(name: &str, key: &str, role: &str, extra: &str) -> String {
    format!(
        "[[principals]]\nname = \"{name}\"\nkey_sha256 = \"{}\"\nroles = [\"{role}\"]\n{extra}\n",
        hex::encode(rustle_gateway::auth::policy::key_digest(key))
    )
}

/// A mock-mode gateway requiring credentials: `ALL_KEY` may do everything, `READER_KEY`
/// only read, `LIMITED_KEY` everything once; bodies up to 256 bytes.
async fn guarded_gateway(dir: &tempfile::TempDir) -> TestApp {
    let policy = [
        principal("all", ALL_KEY, "all", ""),
        principal("reader", READER_KEY, "reader", ""),
        principal("limited", LIMITED_KEY, "all", "rate_per_sec = 1\nburst = 1"),
        r#"
[roles.all]
grants = [{ ops = ["read", "search", "write", "delete", "watch", "admin"], pattern = "ucxl://any:any@any:any/**" }]

[roles.reader]
grants = [{ ops = ["read"], pattern = "ucxl://any:any@any:any/**" }]
"#
        .to_owned(),
    ]
    .concat();
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, policy).expect("policy");
    let vars: HashMap<String, String> = [
        ("RUSTLE_LISTEN_ADDR", "127.0.0.1:0"),
        ("RUSTLE_AUTH", "required"),
        ("RUSTLE_AUDIT_LOG", "off"),
        ("RUSTLE_LOCAL_STORE", "memory"),
        ("RUSTLE_MAX_BODY_BYTES", "256"),
        ("RUSTLE_AUTH_POLICY", path.to_str().expect("utf-8 path")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Sources {
        env: vars.clone(),
        ..Sources::default()
    }
    .resolve()
    .expect("a valid configuration");
    spawn_app_with_env(config, Options::default(), vars).await
}

/// The answers of a request whose body stops arriving (408), read off the socket.
async fn stalled_put(app: &TestApp, address: &str) -> Answer {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connects");
    let path = format!("/v1/envelopes?address={}", enc(address));
    let auth = format!("authorization: Bearer {ALL_KEY}");
    let mut request = super::raw_http::head(
        &path,
        super::raw_http::Framing::Length(100),
        &["x-request-timeout-ms: 300", &auth],
    );
    request.push_str(r#"{"content""#);
    stream.write_all(request.as_bytes()).await.expect("writes");
    let text = super::raw_http::read_answer(&mut stream).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let status = head[9..12].parse().expect("status");
    let mut headers = reqwest::header::HeaderMap::new();
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).expect("name"),
                value.trim().parse().expect("value"),
            );
        }
    }
    Answer {
        operation: "PUT /v1/envelopes".into(),
        status,
        headers,
        body: serde_json::from_str(body.trim()).expect("a JSON body"),
    }
}

/// The statuses each operation answered, every answer checked against the document.
struct Seen {
    doc: Value,
    statuses: BTreeMap<String, BTreeSet<u16>>,
}

impl Seen {
    fn check(&mut self, answer: &Answer) {
        assert_documented(&self.doc, answer);
        self.statuses
            .entry(answer.operation.clone())
            .or_default()
            .insert(answer.status);
    }

    async fn send(&mut self, cases: Vec<(&str, RequestBuilder)>) {
        for (operation, request) in cases {
            self.check(&Answer::of(operation, request).await);
        }
    }

    /// Asserts that `operation` answered each of `statuses`.
    fn expect(&self, operation: &str, statuses: &[u16]) {
        let got = &self.statuses[operation];
        for status in statuses {
            assert!(
                got.contains(status),
                "{operation}: {status} not seen, only {got:?}"
            );
        }
    }
}

fn query(path: &str, name: &str, value: &str) -> String {
    format!("{path}?{name}={}", enc(value))
}

/// Stores, retries, reads, conflicts and bad input at `address`, as `ALL_KEY`.
fn envelope_cases(app: &TestApp, address: &str) -> Vec<(&'static str, RequestBuilder)> {
    let (project, rest) = address.split_once(":task/").expect("a task");
    let as_all = |method: Method, path: &str| app.request(method, path).bearer_auth(ALL_KEY);
    let envelope = query("/v1/envelopes", "address", address);
    let history = query("/v1/envelopes/history", "address", address);
    let version = |n: &str| {
        query(
            "/v1/envelopes",
            "address",
            &format!("{project}:task/{n}/{rest}"),
        )
    };
    let put = |key: &str, body: &str| {
        as_all(Method::PUT, &envelope)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_owned())
    };
    let get = |headers: &[(&str, &str)]| {
        headers
            .iter()
            .fold(as_all(Method::GET, &envelope), |r, (k, v)| r.header(*k, *v))
    };
    let long = format!(r#"{{"content": "{}"}}"#, "x".repeat(300));
    let (put_op, get_op, delete_op) = (
        "PUT /v1/envelopes",
        "GET /v1/envelopes",
        "DELETE /v1/envelopes",
    );
    vec![
        (get_op, get(&[])),
        ("GET /v1/envelopes/history", as_all(Method::GET, &history)),
        (delete_op, as_all(Method::DELETE, &envelope)),
        (put_op, put("k1", r#"{"content": {"n": 1}}"#)),
        (put_op, put("k1", r#"{"content": {"n": 1}}"#)),
        (put_op, put("k2", r#"{"content": {"n": 2}}"#)),
        (get_op, as_all(Method::GET, &version("*~1"))),
        (get_op, as_all(Method::GET, &version("*~9"))),
        (get_op, get(&[("x-rustle-consistency", "cached")])),
        (get_op, get(&[("x-rustle-consistency", "always")])),
        (get_op, get(&[("x-request-timeout-ms", "soon")])),
        (
            get_op,
            as_all(Method::GET, "/v1/envelopes?address=not-an-address"),
        ),
        ("GET /v1/envelopes/history", as_all(Method::GET, &history)),
        (
            put_op,
            put("k3", r#"{"content": 1, "content_type": "not a type"}"#),
        ),
        (put_op, put("k3", r#"{"content": "#)),
        (put_op, put("k3", &long)),
        (
            put_op,
            as_all(Method::PUT, &envelope)
                .header("content-type", "text/plain")
                .body("x"),
        ),
        (put_op, put(" bad ", r#"{"content": 1}"#)),
        (
            delete_op,
            as_all(Method::DELETE, &envelope).header("idempotency-key", "k1"),
        ),
        (
            delete_op,
            as_all(Method::DELETE, &envelope).header("idempotency-key", "d1"),
        ),
        (
            delete_op,
            as_all(Method::DELETE, &envelope).header("idempotency-key", "d1"),
        ),
        (delete_op, as_all(Method::DELETE, &envelope)),
        (put_op, put("d1", r#"{"content": 3}"#)),
    ]
}

/// Callers without credentials, with too few grants or beyond their rate; search, watch,
/// admin and operations routes.
fn caller_cases(app: &TestApp, address: &str) -> Vec<(&'static str, RequestBuilder)> {
    let as_all = |method: Method, path: &str| app.request(method, path).bearer_auth(ALL_KEY);
    let envelope = query("/v1/envelopes", "address", address);
    let pattern = address
        .replace("agent:role@", "any:any@")
        .replace("/notes/a", "/**");
    let search = |more: &str| format!("{}{more}", query("/v1/search", "pattern", &pattern));
    let watch = query("/v1/watch", "pattern", &pattern);
    let mode = |body: Value| as_all(Method::PUT, "/v1/admin/mode").json(&body);
    let reader = |method: Method, path: &str| app.request(method, path).bearer_auth(READER_KEY);
    let limited = || app.request(Method::GET, &envelope).bearer_auth(LIMITED_KEY);
    let (get_op, put_op) = ("GET /v1/envelopes", "PUT /v1/envelopes");
    let (search_op, watch_op, mode_op) = ("GET /v1/search", "GET /v1/watch", "PUT /v1/admin/mode");
    vec![
        (get_op, app.request(Method::GET, &envelope)),
        (
            get_op,
            app.request(Method::GET, &envelope).bearer_auth("rk_nobody"),
        ),
        (
            put_op,
            app.request(Method::PUT, &envelope)
                .json(&json!({"content": 1})),
        ),
        (
            put_op,
            reader(Method::PUT, &envelope).json(&json!({"content": 1})),
        ),
        (search_op, reader(Method::GET, &search(""))),
        (watch_op, reader(Method::GET, &watch)),
        (
            mode_op,
            reader(Method::PUT, "/v1/admin/mode").json(&json!({"mode": "mock"})),
        ),
        (get_op, limited()),
        (get_op, limited()),
        (search_op, as_all(Method::GET, &search("&limit=1"))),
        (search_op, as_all(Method::GET, &search("&limit=0"))),
        (search_op, as_all(Method::GET, &search("&cursor=nope"))),
        (search_op, as_all(Method::GET, &search("&colour=blue"))),
        (search_op, as_all(Method::GET, "/v1/search?pattern=nope")),
        (watch_op, as_all(Method::GET, "/v1/watch?pattern=nope")),
        (
            watch_op,
            as_all(Method::GET, &format!("{watch}&cursor=nope")),
        ),
        (mode_op, mode(json!({"mode": "real"}))),
        (mode_op, mode(json!({"mode": "nope"}))),
        (
            mode_op,
            as_all(Method::PUT, "/v1/admin/mode")
                .header("content-type", "text/plain")
                .body("mock"),
        ),
        (
            "POST /v1/admin/reload",
            as_all(Method::POST, "/v1/admin/reload"),
        ),
        ("GET /health", app.request(Method::GET, "/health")),
        ("GET /ready", app.request(Method::GET, "/ready")),
        ("GET /v1/status", app.request(Method::GET, "/v1/status")),
        ("GET /metrics", app.request(Method::GET, "/metrics")),
    ]
}

/// Load shedding (no request may be in flight), and real mode over nodes that answer
/// garbage (502), never answer (504), or are not there (503).
async fn backend_answers(seen: &mut Seen) {
    let envelope = query("/v1/envelopes", "address", super::wire::ADDRESS);
    let history = query("/v1/envelopes/history", "address", super::wire::ADDRESS);
    let search = query("/v1/search", "pattern", "ucxl://a:r@p:t/**");
    let mut config = test_config();
    config.max_in_flight = 0;
    let shedding = spawn_app_with(config, Options::default()).await;
    seen.send(vec![
        (
            "GET /v1/envelopes",
            shedding.request(Method::GET, &envelope),
        ),
        ("GET /v1/search", shedding.request(Method::GET, &search)),
    ])
    .await;
    for fault in [Fault::Truncated, Fault::Hang] {
        let endpoint = server(fault).await;
        let mut config = cluster_config(&[endpoint.as_str().to_owned()], BackendMode::Real);
        // An attempt may outlast the deadline: a node that never answers is a 504.
        config.request_timeout = Duration::from_millis(400);
        config.attempt_timeout = Duration::from_secs(2);
        let real = spawn_app_with(config, Options::default()).await;
        seen.send(vec![
            ("GET /v1/envelopes", real.request(Method::GET, &envelope)),
            (
                "GET /v1/envelopes/history",
                real.request(Method::GET, &history),
            ),
            (
                "DELETE /v1/envelopes",
                real.request(Method::DELETE, &envelope),
            ),
            ("GET /v1/search", real.request(Method::GET, &search)),
            (
                "PUT /v1/envelopes",
                real.request(Method::PUT, &envelope)
                    .json(&json!({"content": 1})),
            ),
        ])
        .await;
    }
    let gone = super::faults::refused();
    let mut config = cluster_config(std::slice::from_ref(&gone.url), BackendMode::Real);
    // The first failure opens the breaker: then no backend can serve, and /ready says so.
    config.breaker.consecutive_failures = 1;
    let real = spawn_app_with(config, Options::default()).await;
    seen.send(vec![
        ("GET /v1/envelopes", real.request(Method::GET, &envelope)),
        ("GET /v1/search", real.request(Method::GET, &search)),
        ("GET /ready", real.request(Method::GET, "/ready")),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_given_is_documented_with_its_headers_and_details() {
    let mut seen = Seen {
        doc: document(),
        statuses: BTreeMap::new(),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let app = guarded_gateway(&dir).await;
    let address = format!("ucxl://agent:role@{}:task/notes/a", project());
    seen.send(envelope_cases(&app, &address)).await;
    seen.send(caller_cases(&app, &address)).await;
    seen.check(&stalled_put(&app, &address).await);
    backend_answers(&mut seen).await;

    // The statuses the layers and backends add are real answers, not guesses.
    seen.expect(
        "PUT /v1/envelopes",
        &[200, 201, 400, 401, 403, 408, 409, 413, 415, 502, 504],
    );
    seen.expect(
        "GET /v1/envelopes",
        &[200, 400, 401, 404, 429, 502, 503, 504],
    );
    seen.expect("DELETE /v1/envelopes", &[200, 404, 409, 502, 504]);
    seen.expect("GET /v1/envelopes/history", &[200, 404, 502, 504]);
    seen.expect("GET /v1/search", &[200, 400, 403, 503, 504]);
    seen.expect("GET /v1/watch", &[400, 403]);
    seen.expect("PUT /v1/admin/mode", &[400, 403, 409, 415]);
    seen.expect("GET /ready", &[200, 503]);
}
