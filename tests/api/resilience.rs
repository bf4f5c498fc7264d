//! The resilience rules over real HTTP (SPEC §6, §7, §8): a gateway in front of real
//! `bzzz-node` processes and of endpoints that misbehave on purpose.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::Method;
use rustle_gateway::config::{BackendMode, Config, Sources};
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::faults::{FaultNode, Mode, refused};
use super::helpers::{TestApp, assert_error, json, spawn_app_with, test_config};
use super::nodes::{Cluster, NodeProc, wait_until};

/// A gateway in `mode` over `endpoints`: no backoff waits, and health checks only at start
/// (fault endpoints answer `/health` as they answer everything, so frequent checks would
/// mark them down before the request under test is sent); tests of recovery lower it.
pub fn cluster_config(endpoints: &[String], mode: BackendMode) -> Config {
    let mut config = test_config();
    config.backend_mode = mode;
    config.bzzz_endpoints = endpoints
        .iter()
        .map(|u| u.parse().expect("endpoint URL"))
        .collect();
    config.health_interval = Duration::from_secs(3600);
    config.retry.backoff_base = Duration::ZERO;
    config.retry.backoff_max = Duration::ZERO;
    config
}

/// A gateway in hybrid mode over `endpoints`, with the defaults of [`cluster_config`].
pub async fn hybrid_gateway(endpoints: &[String]) -> TestApp {
    spawn_app_with(
        cluster_config(endpoints, BackendMode::Hybrid),
        Options::default(),
    )
    .await
}

async fn gateway(config: Config) -> TestApp {
    spawn_app_with(config, Options::default()).await
}

/// A gateway in `mode` over the one endpoint `url`, with the test defaults.
async fn gateway_over(url: &str, mode: BackendMode) -> TestApp {
    gateway(cluster_config(&[url.to_owned()], mode)).await
}

async fn gateway_status(app: &TestApp) -> Value {
    json(app.get_path("/v1/status").await).await.1["response"]["data"].clone()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn endpoint<'a>(status: &'a Value, url: &str) -> &'a Value {
    status["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["url"] == url))
        .unwrap_or(&Value::Null)
}

const A: &str = "ucxl://agent:tester@bzzz:resilience/notes/a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_goes_to_another_endpoint_and_no_client_sees_the_failure() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let good = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let bad = FaultNode::start(Mode::Unavailable, None).await;
    let config = cluster_config(&[bad.url.clone(), good.url.clone()], BackendMode::Real);
    let app = gateway(config).await;
    let mut retried = 0;
    for i in 0..10 {
        let response = app.put(&format!("{A}{i}"), json!({"content": i})).await;
        assert_eq!(response.status(), 201);
        assert_eq!(header(&response, "x-rustle-backend"), "real");
        assert_eq!(header(&response, "x-rustle-endpoint"), good.url);
        if header(&response, "x-rustle-attempts") == "2" {
            retried += 1;
        }
    }
    // P2C picks the failing endpoint at least once (both start equal); each time the
    // request was retried on the other one, and a failure makes the endpoint look slow.
    assert!(bad.api_hits() >= 1);
    assert_eq!(
        retried,
        bad.api_hits(),
        "every failed attempt was retried elsewhere"
    );
    let s = gateway_status(&app).await;
    // The last error is the attempt's or the first health check's: both saw the 503.
    let last = &endpoint(&s, &bad.url)["last_error"];
    assert!(
        last.as_str().is_some_and(|t| t.ends_with("answered 503")),
        "{last}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusal_is_passed_on_and_never_retried() {
    let refusing = FaultNode::start(Mode::NotFound, None).await;
    let app = gateway_over(&refusing.url, BackendMode::Real).await;
    let response = app.get(A).await;
    // The error answer says which node refused.
    assert_eq!(header(&response, "x-rustle-backend"), "real");
    assert_eq!(header(&response, "x-rustle-endpoint"), refusing.url);
    assert_eq!(header(&response, "x-rustle-attempts"), "1");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-404-NOT_FOUND");
    assert_eq!(e["message"], "the node has nothing here");
    assert_eq!(e["details"], json!({"node": "fault"}));
    assert_eq!(refusing.api_hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_answer_is_502_and_counts_against_the_endpoint() {
    let garbage = FaultNode::start(Mode::Garbage, None).await;
    let app = gateway_over(&garbage.url, BackendMode::Real).await;
    let (status, body) = json(app.get(A).await).await;
    let e = assert_error(status, &body, "UCXL-502-BAD_GATEWAY");
    assert!(
        !e.to_string().contains("expected value"),
        "no dependency error text reaches the client: {e}"
    );
    assert_eq!(garbage.api_hits(), 1, "a bad answer is not retried");
    let s = status_of(&app, &garbage.url).await;
    assert_eq!(s["breaker"]["consecutive_failures"], 1);
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|t| t.contains("invalid UCXI answer")),
        "{s}"
    );
}

pub(super) async fn status_of(app: &TestApp, url: &str) -> Value {
    endpoint(&gateway_status(app).await, url).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_caps_retries() {
    let a = FaultNode::start(Mode::Unavailable, None).await;
    let b = FaultNode::start(Mode::Unavailable, None).await;
    let mut config = cluster_config(&[a.url.clone(), b.url.clone()], BackendMode::Real);
    // No share of requests, a floor of 1 retry/s: 10 retries in the 10 s window.
    config.retry.budget_percent = 0;
    config.retry.budget_min_per_sec = 1;
    config.breaker.consecutive_failures = 1000;
    config.breaker.min_calls = 10_000;
    config.breaker.window = 10_000;
    let app = gateway(config).await;
    for _ in 0..20 {
        let (status, body) = json(app.get(A).await).await;
        let e = assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
        assert_eq!(e["details"]["endpoints"].as_array().map(Vec::len), Some(2));
    }
    assert_eq!(
        a.api_hits() + b.api_hits(),
        20 + 10,
        "20 first attempts and the 10 retries the budget allows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_skips_the_endpoint_and_the_retry_goes_elsewhere_at_once() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let good = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let busy = FaultNode::start(Mode::RetryAfter, None).await;
    let config = cluster_config(&[busy.url.clone(), good.url.clone()], BackendMode::Real);
    let app = gateway(config).await;
    for i in 0..10 {
        let response = app.put(&format!("{A}{i}"), json!({"content": i})).await;
        assert_eq!(response.status(), 201);
    }
    assert_eq!(busy.api_hits(), 1, "skipped for 5 s after its Retry-After");
    let s = status_of(&app, &busy.url).await;
    assert!(s["skipped_until"].is_string(), "{s}");
    assert_eq!(s["available"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_is_full_is_skipped_and_the_write_goes_to_another_node() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let good = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let full = FaultNode::start(Mode::Full, None).await;
    let config = cluster_config(&[full.url.clone(), good.url.clone()], BackendMode::Real);
    let app = gateway(config).await;
    for i in 0..10 {
        let response = app.put(&format!("{A}{i}"), json!({"content": i})).await;
        assert_eq!(response.status(), 201, "no client sees the full disk");
        assert_eq!(header(&response, "x-rustle-endpoint"), good.url);
    }
    assert!(full.api_hits() >= 1, "P2C tried the full node");
    let s = status_of(&app, &full.url).await;
    assert!(
        s["last_error"]
            .as_str()
            .is_some_and(|t| t.starts_with("answered 507")),
        "counted against the full node: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_covers_every_attempt_and_ends_in_504() {
    let hanging = FaultNode::start(Mode::Hang, None).await;
    let app = gateway_over(&hanging.url, BackendMode::Real).await;
    let response = app
        .request(
            Method::GET,
            &format!("/v1/envelopes?address={}", super::helpers::enc(A)),
        )
        .header("x-request-timeout-ms", "300")
        .send()
        .await
        .expect("answered");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-504-GATEWAY_TIMEOUT");
    assert_eq!(e["details"]["endpoints"][0]["url"], hanging.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_opens_probes_after_a_health_pass_and_closes() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let flaky = FaultNode::start(Mode::Unavailable, Some(node.url(""))).await;
    // Configured through the environment, so a reload can turn health checks on later:
    // until then only the check at start runs (one failure, below the threshold of 2).
    let token = "breaker-token";
    let env: HashMap<String, String> = [
        ("RUSTLE_BACKEND_MODE", "real"),
        ("RUSTLE_BZZZ_ENDPOINTS", flaky.url.as_str()),
        ("RUSTLE_MAX_RETRIES", "0"),
        ("RUSTLE_HEALTH_INTERVAL_MS", "3600000"),
        ("RUSTLE_ADMIN_TOKEN", token),
        ("RUSTLE_LISTEN_ADDR", "127.0.0.1:0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let config = Sources {
        env: env.clone(),
        ..Default::default()
    }
    .resolve()
    .expect("valid");
    let app = gateway(config).await;
    app.env.lock().expect("env").extend(env);
    for _ in 0..5 {
        let (status, _) = json(app.get(A).await).await;
        assert_eq!(status, 503);
    }
    let s = status_of(&app, &flaky.url).await;
    assert_eq!(s["breaker"]["state"], "open", "{s}");
    assert!(
        s["breaker"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("5 consecutive failures")),
        "{s}"
    );
    assert!(s["breaker"]["next_probe"].is_string(), "{s}");
    // Open: refused at once, the endpoint is not called.
    let (status, body) = json(app.get(A).await).await;
    let e = assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("no BZZZ endpoint is available")),
        "{e}"
    );
    assert_eq!(flaky.api_hits(), 5);
    // The node recovers and health checks run often: one passes, the breaker turns
    // half-open and probes.
    flaky.set(Mode::Healthy);
    app.env
        .lock()
        .expect("env")
        .insert("RUSTLE_HEALTH_INTERVAL_MS".into(), "50".into());
    let (status, body) = app.reload(token).await;
    assert_eq!(status, 200, "{body}");
    let probing = wait_until(Duration::from_secs(10), || async {
        let s = status_of(&app, &flaky.url).await;
        s["up"] == true && s["breaker"]["state"] == "half_open"
    })
    .await;
    assert!(probing, "{}", status_of(&app, &flaky.url).await);
    for i in 0..3 {
        let response = app.put(&format!("{A}{i}"), json!({"content": i})).await;
        assert_eq!(response.status(), 201);
    }
    let s = status_of(&app, &flaky.url).await;
    assert_eq!(s["breaker"]["state"], "closed", "{s}");
    assert_eq!(s["breaker"]["reason"], "3 probes succeeded");
    let metrics = app.get_path("/metrics").await.text().await.expect("text");
    let gauge = format!("rustle_breaker_state{{endpoint=\"{}\"}} 0", flaky.url);
    assert!(metrics.contains(&gauge), "the closed state is emitted too");
    assert!(metrics.contains(&format!(
        "rustle_breaker_transitions_total{{endpoint=\"{}\",from=\"closed\",to=\"open\"}} 1",
        flaky.url
    )));
    // The deprecated names stay one release, with the same values.
    assert!(metrics.contains(&format!(
        "rustle_circuit_state{{endpoint=\"{}\"}} 0",
        flaky.url
    )));
    assert!(metrics.contains(&format!(
        "rustle_circuit_transitions_total{{endpoint=\"{}\",from=\"closed\",to=\"open\"}} 1",
        flaky.url
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_fans_out_and_reports_failed_endpoints() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let good = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let bad = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let config = cluster_config(&[good.url.clone(), bad.url.clone()], BackendMode::Real);
    let app = gateway(config).await;
    for i in 0..3 {
        let response = app.put(&format!("{A}{i}"), json!({"content": i})).await;
        assert_eq!(response.status(), 201);
    }
    // One endpoint turns bad: the other's answer still comes back, marked partial.
    bad.set(Mode::Garbage);
    let pattern = super::helpers::enc("ucxl://any:any@bzzz:resilience/**");
    let (status, body) = json(
        app.get_path(&format!("/v1/search?pattern={pattern}&limit=2"))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page = &body["response"]["data"];
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2), "{page}");
    assert_eq!(page["partial"], true);
    assert_eq!(page["failed_endpoints"], json!([bad.url]));
    let cursor = page["next_cursor"].as_str().expect("more").to_owned();
    let (_, body) = json(
        app.get_path(&format!(
            "/v1/search?pattern={pattern}&limit=2&cursor={cursor}"
        ))
        .await,
    )
    .await;
    let page = &body["response"]["data"];
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_endpoint_down_hybrid_falls_back_and_real_answers_503() {
    let refused = refused();
    let down = refused.url.clone();
    let real = gateway(cluster_config(
        std::slice::from_ref(&down),
        BackendMode::Real,
    ))
    .await;
    let response = real.put(A, json!({"content": 1})).await;
    assert_eq!(header(&response, "x-rustle-backend"), "real");
    assert_eq!(header(&response, "x-rustle-attempts"), "3");
    assert_eq!(
        header(&response, "x-rustle-endpoint"),
        "",
        "no node answered"
    );
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    assert_eq!(e["details"]["endpoints"][0]["error"], "cannot connect");

    let hybrid = gateway(cluster_config(&[down], BackendMode::Hybrid)).await;
    let response = hybrid.put(A, json!({"content": 1})).await;
    assert_eq!(response.status(), 202);
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    let (_, body) = json(response).await;
    assert_eq!(body["response"]["code"], "UCXL-202-ACCEPTED");
    let response = hybrid.get(A).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "x-rustle-stale"), "true");
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    let (status, body) = json(hybrid.delete(A).await).await;
    assert_eq!(status, 202, "{body}");
    let response = hybrid.get(A).await;
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    let (status, _) = json(response).await;
    assert_eq!(status, 404);
    let pattern = super::helpers::enc("ucxl://any:any@bzzz:resilience/**");
    let (_, body) = json(
        hybrid
            .get_path(&format!("/v1/search?pattern={pattern}"))
            .await,
    )
    .await;
    assert_eq!(body["response"]["data"]["partial"], true);
    let s = gateway_status(&hybrid).await;
    assert_eq!(s["active_backend"], "fallback");
    assert_eq!(s["fallback"]["active"], true);
    assert!(s["fallback"]["since"].is_string());
    assert_eq!(s["journal"]["pending"], 2);
    // An address the cache never saw cannot be answered honestly: 503, not 404.
    let response = hybrid.get(&format!("{A}-unknown")).await;
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    let (status, body) = json(response).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_recovery_the_journal_is_replayed_to_the_cluster_in_order() {
    let mut cluster = Cluster::start(3).await;
    let proxies = [
        FaultNode::start(Mode::Unavailable, Some(cluster.nodes[0].url(""))).await,
        FaultNode::start(Mode::Unavailable, Some(cluster.nodes[1].url(""))).await,
    ];
    let urls: Vec<String> = proxies.iter().map(|p| p.url.clone()).collect();
    let mut config = cluster_config(&urls, BackendMode::Hybrid);
    config.health_interval = Duration::from_millis(50);
    let app = gateway(config).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (status, body) = json(app.put(A, json!({"content": {"n": i}})).await).await;
        assert_eq!(status, 202, "{body}");
        ids.push(body["response"]["data"]["id"].clone());
    }
    let (status, _) = json(app.put(&format!("{A}-gone"), json!({"content": 0})).await).await;
    assert_eq!(status, 202);
    let (status, _) = json(app.delete(&format!("{A}-gone")).await).await;
    assert_eq!(status, 202);
    // Enough other writes that the replay's batches carry most of the journal.
    let others = 150;
    for i in 0..others {
        let (status, _) = json(
            app.put(&format!("{A}-many-{i}"), json!({"content": i}))
                .await,
        )
        .await;
        assert_eq!(status, 202);
    }
    let journaled = 7 + others;
    assert_eq!(status_json(&app).await["journal"]["pending"], journaled);
    let before: usize = proxies.iter().map(FaultNode::api_hits).sum();
    for p in &proxies {
        p.set(Mode::Healthy);
    }
    let replayed = wait_until(Duration::from_secs(10), || async {
        let s = status_json(&app).await;
        s["journal"]["pending"] == 0 && s["fallback"]["active"] == false
    })
    .await;
    assert!(replayed, "{}", status_json(&app).await);
    // In batches: a few probes one entry at a time while the breakers are half-open, then
    // a request per batch, not one per entry.
    let requests: usize = proxies.iter().map(FaultNode::api_hits).sum::<usize>() - before;
    assert!(
        requests < journaled / 4,
        "{requests} requests replayed {journaled} entries"
    );
    assert!(proxies.iter().map(FaultNode::batch_hits).sum::<usize>() > 0);
    // Every acknowledged write is on the cluster, in order, with its id, read from a node
    // the gateway never talked to.
    let client = reqwest::Client::new();
    let (status, body) = cluster.nodes[2].get(&client, A).await;
    assert_eq!(status, 200, "{body}");
    let history = super::nodes::body(
        client
            .get(cluster.nodes[2].url(&format!(
                "/ucxi/v1/history?address={}",
                super::helpers::enc(A)
            )))
            .send()
            .await,
    )
    .await
    .1;
    let listed: Vec<Value> = history["response"]["data"]["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(listed, ids);
    let (status, _) = cluster.nodes[2].get(&client, &format!("{A}-gone")).await;
    assert_eq!(status, 404, "the journaled delete reached the cluster");
    for i in 0..others {
        let (status, got) = cluster.nodes[2]
            .get(&client, &format!("{A}-many-{i}"))
            .await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["response"]["data"]["content"], i);
    }
    // Real traffic again.
    let response = app.get(A).await;
    assert_eq!(header(&response, "x-rustle-backend"), "real");
    cluster.nodes[0].kill();
}

async fn status_json(app: &TestApp) -> Value {
    gateway_status(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_in_flight_limit_requests_are_shed_with_retry_after() {
    let hanging = FaultNode::start(Mode::Hang, None).await;
    let mut config = cluster_config(std::slice::from_ref(&hanging.url), BackendMode::Real);
    config.max_in_flight = 1;
    let app = std::sync::Arc::new(gateway(config).await);
    let slow = {
        let app = std::sync::Arc::clone(&app);
        tokio::spawn(async move {
            app.request(
                Method::GET,
                &format!("/v1/envelopes?address={}", super::helpers::enc(A)),
            )
            .header("x-request-timeout-ms", "1000")
            .send()
            .await
            .map(|r| r.status().as_u16())
        })
    };
    // The first request holds the only slot once it reaches the endpoint.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            hanging.api_hits() == 1
        })
        .await
    );
    let response = app.get(A).await;
    assert_eq!(header(&response, "retry-after"), "1");
    let (status, body) = json(response).await;
    let e = assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    assert_eq!(e["details"]["max_in_flight"], 1);
    // Operations routes are never shed.
    assert_eq!(app.get_path("/v1/status").await.status(), 200);
    assert_eq!(slow.await.expect("joins").expect("answered"), 504);
    assert_eq!(
        hanging.api_hits(),
        1,
        "the shed request never reached a node"
    );
    let metrics = app.get_path("/metrics").await.text().await.expect("text");
    assert!(metrics.contains("rustle_load_shed_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_switches_mock_real_and_hybrid_live() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let mut config = cluster_config(&[node.url("")], BackendMode::Mock);
    let token = "switch-token";
    config.admin_token = Some(super::admin::secret(token));
    let app = gateway(config).await;
    let address = format!("{A}-switch");
    let response = app.put(&address, json!({"content": 1})).await;
    assert_eq!(header(&response, "x-rustle-backend"), "mock");
    for (mode, backend) in [("real", "real"), ("hybrid", "real"), ("mock", "mock")] {
        let (status, body) = json(
            app.request(Method::PUT, "/v1/admin/mode")
                .bearer_auth(token)
                .json(&json!({"mode": mode}))
                .send()
                .await
                .expect("sent"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let response = app.put(&address, json!({"content": 2})).await;
        assert_eq!(header(&response, "x-rustle-backend"), backend, "{mode}");
        assert_eq!(gateway_status(&app).await["mode"], mode);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_tiny_deadline_never_counts_against_an_endpoint() {
    let slow = FaultNode::start(Mode::Hang, None).await;
    let app = gateway_over(&slow.url, BackendMode::Real).await;
    for _ in 0..10 {
        let response = app
            .request(
                Method::GET,
                &format!("/v1/envelopes?address={}", super::helpers::enc(A)),
            )
            .header("x-request-timeout-ms", "5")
            .send()
            .await
            .expect("answered");
        assert_eq!(response.status(), 504);
    }
    let s = status_of(&app, &slow.url).await;
    assert_eq!(s["breaker"]["state"], "closed", "{s}");
    assert_eq!(s["breaker"]["consecutive_failures"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_attempt_gives_its_slot_back() {
    use rustle_gateway::backend::Call;
    use rustle_gateway::upstream::cluster::{Cluster, Jitters};
    use rustle_gateway::upstream::ucxi::{NodeRequest, Subject};
    let slow = FaultNode::start(Mode::Hang, None).await;
    let config = cluster_config(std::slice::from_ref(&slow.url), BackendMode::Real);
    let cluster = Cluster::new(&config, Jitters::default()).expect("client");
    let call = Call::new(
        "abandoned",
        tokio::time::Instant::now() + Duration::from_secs(5),
    );
    let request = NodeRequest {
        method: reqwest::Method::GET,
        path: "/ucxi/v1/get?address=x".into(),
        headers: Vec::new(),
        body: None,
        prefer: None,
        list: false,
        about: Subject::Any,
        hedge: false,
    };
    // The caller goes away (a client disconnect) while the attempt waits on the node.
    let attempt = cluster.execute::<Value>(&call, request);
    let waited = tokio::time::timeout(Duration::from_millis(100), attempt).await;
    assert!(waited.is_err(), "the node never answers");
    assert_eq!(slow.api_hits(), 1);
    let s = &cluster.status()[0];
    assert_eq!(s.in_flight, 0, "{s:?}");
    assert_eq!(s.breaker.consecutive_failures, 0, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_about_another_address_is_502_and_not_cached() {
    let liar = FaultNode::start(Mode::OtherAddress, None).await;
    let app = gateway_over(&liar.url, BackendMode::Real).await;
    let (status, body) = json(app.get(A).await).await;
    let e = assert_error(status, &body, "UCXL-502-BAD_GATEWAY");
    assert_eq!(
        e["details"]["endpoints"][0]["error"],
        "answered for another address"
    );
    let local = &gateway_status(&app).await["local_store"];
    assert_eq!(local["entries"], 0, "{local}");
    // The answer is judged before the endpoint's outcome is recorded: a failure, not a
    // success, for its breaker.
    let s = status_of(&app, &liar.url).await;
    assert_eq!(s["breaker"]["consecutive_failures"], 1, "{s}");
    assert_eq!(s["last_error"], "answered for another address", "{s}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_endpoint_that_passes_is_confirmed_without_waiting_a_whole_interval() {
    let node = FaultNode::start(Mode::Unavailable, None).await;
    let mut config = cluster_config(std::slice::from_ref(&node.url), BackendMode::Real);
    let interval = Duration::from_secs(2);
    config.health_interval = interval;
    let app = gateway(config).await;
    let down = wait_until(Duration::from_secs(10), || async {
        let s = gateway_status(&app).await;
        endpoint(&s, &node.url)["up"] == false
    })
    .await;
    assert!(down, "{}", gateway_status(&app).await);
    node.set(Mode::Healthy);
    // One pass is not enough (hysteresis)...
    let passed_once = wait_until(Duration::from_secs(10), || async {
        endpoint(&gateway_status(&app).await, &node.url)["health_passes"] == 1
    })
    .await;
    assert!(passed_once, "{}", gateway_status(&app).await);
    let s = gateway_status(&app).await;
    let e = endpoint(&s, &node.url);
    assert!(
        e["up"] == false || e["health_passes"] == 2,
        "one pass marked it up: {e}"
    );
    // ...but the confirming check comes after a quarter interval, not a whole one.
    let confirmed = wait_until(interval * 3 / 4, || async {
        endpoint(&gateway_status(&app).await, &node.url)["up"] == true
    })
    .await;
    assert!(confirmed, "{}", gateway_status(&app).await);
    assert_eq!(
        endpoint(&gateway_status(&app).await, &node.url)["health_passes"],
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_refuses_the_gateways_token_is_the_gateways_failure_not_the_clients() {
    const TOKEN: &str = "the-right-cluster-token-0123";
    let node = NodeProc::start("closed", &[], None, &[("BZZZ_API_TOKEN", TOKEN)]).await;
    // Without the token: the node's 401 is no answer for the client (503, naming why).
    let app = gateway_over(&node.url(""), BackendMode::Real).await;
    let (status, body) = json(app.put(&format!("{A}closed"), json!({"content": 1})).await).await;
    assert_error(status, &body, "UCXL-503-SERVICE_UNAVAILABLE");
    let why = body["error"]["details"]["endpoints"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        why.contains("refused the gateway's credentials (401)"),
        "{body}"
    );
    // With it: served.
    let mut config = cluster_config(&[node.url("")], BackendMode::Real);
    config.bzzz_token = Some(crate::admin::secret(TOKEN));
    let app = gateway(config).await;
    let response = app.put(&format!("{A}closed"), json!({"content": 1})).await;
    assert_eq!(response.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_attempts_hang_to_the_deadline_is_journaled_and_answered_202() {
    let hung = FaultNode::start(Mode::Hang, None).await;
    let app = gateway_over(&hung.url, BackendMode::Hybrid).await;
    let started = std::time::Instant::now();
    let response = app
        .request(
            Method::PUT,
            &format!(
                "/v1/envelopes?address={}",
                super::helpers::enc(&format!("{A}hung"))
            ),
        )
        .header("x-request-timeout-ms", "1000")
        .json(&json!({"content": "kept"}))
        .send()
        .await
        .expect("answered");
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 202, "journaled, not a 504");
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    assert!(
        elapsed < Duration::from_secs(2),
        "inside its deadline: {elapsed:?}"
    );
    let s = gateway_status(&app).await;
    assert_eq!(s["journal"]["pending"], 1, "{s}");
    assert_eq!(
        s["fallback"]["active"], true,
        "the fallback state agrees with the journal: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_answer_reports_the_attempts_the_cluster_made() {
    let node = NodeProc::start("solo", &[], None, &[]).await;
    let proxy = FaultNode::start(Mode::Healthy, Some(node.url(""))).await;
    let app = gateway_over(&proxy.url, BackendMode::Hybrid).await;
    let a = format!("{A}gone");
    assert_eq!(app.put(&a, json!({"content": 1})).await.status(), 201);
    assert_eq!(app.delete(&a).await.status(), 200);
    proxy.set(Mode::Unavailable);
    // The cluster is asked (three attempts), then the fallback knows the address is
    // deleted: a 404 that says how many attempts were made, not 1.
    let response = app.get(&a).await;
    assert_eq!(response.status(), 404);
    assert_eq!(header(&response, "x-rustle-backend"), "fallback");
    assert_eq!(header(&response, "x-rustle-attempts"), "3");
}
