//! A cluster closed to outsiders: the API token on the HTTP side, the swarm key on the
//! libp2p side. To show that an outsider never joins, a control node with the right key,
//! bootstrapped the same way and started after it, must join first: by then the outsider
//! had every chance.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::WWW_AUTHENTICATE;
use serde_json::{Value, json};

use super::address;
use super::harness::{Cluster, NodeProc, bare, body, enc, wait_until};

const TOKEN: &str = "b7d2f0c4a1e9d8c7b6a5f4e3d2c1b0a9-cluster-token";
const SWARM_KEY: &str = "1f2e3d4c5b6a79880796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const OTHER_SWARM_KEY: &str = "aa2e3d4c5b6a79880796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CHALLENGE: &str = "Bearer realm=\"bzzz\"";
const INVALID_TOKEN: &str = "Bearer realm=\"bzzz\", error=\"invalid_token\"";

/// Status, `WWW-Authenticate` and JSON body of an answer.
async fn answer(request: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let response = request.send().await.expect("the node answers");
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = response.status().as_u16();
    (
        status,
        challenge,
        response.json().await.unwrap_or(Value::Null),
    )
}

fn assert_refused(
    what: &str,
    (status, challenge, body): &(u16, Option<String>, Value),
    expected_challenge: &str,
    reason: &str,
) {
    assert_eq!(*status, 401, "{what}: {body}");
    assert_eq!(challenge.as_deref(), Some(expected_challenge), "{what}");
    assert_eq!(
        body["error"]["code"], "UCXL-401-UNAUTHORIZED",
        "{what}: {body}"
    );
    assert_eq!(body["error"]["source"], "bzzz-node", "{what}: {body}");
    assert_eq!(body["error"]["details"]["reason"], reason, "{what}: {body}");
    assert!(
        body["error"]["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{what}: {body}"
    );
}

/// Every route the token closes, with a request each.
fn closed_routes(a: &str, pattern: &str) -> [(Method, String); 8] {
    [
        (Method::GET, format!("/ucxi/v1/get?address={a}")),
        (Method::PUT, format!("/ucxi/v1/put?address={a}")),
        (Method::DELETE, format!("/ucxi/v1/delete?address={a}")),
        (Method::GET, format!("/ucxi/v1/history?address={a}")),
        (Method::GET, format!("/ucxi/v1/discover?pattern={pattern}")),
        (Method::GET, format!("/ucxi/v1/watch?pattern={pattern}")),
        (Method::POST, "/ucxi/v1/batch".to_owned()),
        (Method::GET, "/status".to_owned()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_closes_every_route_but_health_and_metrics() {
    let node = NodeProc::start(
        "closed",
        &[],
        None,
        &[("BZZZ_API_TOKEN", TOKEN), ("BZZZ_MAX_BODY_BYTES", "4096")],
    )
    .await;
    assert_eq!(node.ready["api_token"], true, "{}", node.ready);
    let client = reqwest::Client::new();
    let a = enc(&address("closed"));
    let pattern = enc("ucxl://any:any@bzzz:any/*");
    let routes = closed_routes(&a, &pattern);
    for (method, path) in &routes {
        let url = node.url(path);
        let what = format!("{method} {path}");
        let without = answer(
            client
                .request(method.clone(), &url)
                .json(&json!({"content": 1})),
        );
        assert_refused(&what, &without.await, CHALLENGE, "missing_token");
        let wrong = client
            .request(method.clone(), &url)
            .bearer_auth(format!("{TOKEN}x"));
        assert_refused(&what, &answer(wrong).await, INVALID_TOKEN, "invalid_token");
        let basic = client
            .request(method.clone(), &url)
            .basic_auth("gateway", Some(TOKEN));
        assert_refused(&what, &answer(basic).await, CHALLENGE, "not_bearer");
    }
    let put = node.url(&format!("/ucxi/v1/put?address={a}"));
    // A header far larger than any token is refused unparsed.
    let huge = client.put(&put).bearer_auth("x".repeat(8000));
    assert_refused(
        "huge",
        &answer(huge).await,
        INVALID_TOKEN,
        "malformed_token",
    );
    // The token is checked before the body is read: a body over the limit is not 413.
    let large = client
        .put(&put)
        .header("content-type", "application/json")
        .body(format!("{{\"content\": \"{}\"}}", "x".repeat(10_000)));
    assert_refused(
        "large body",
        &answer(large).await,
        CHALLENGE,
        "missing_token",
    );
    // Refused even when the request is otherwise invalid: nothing is looked at first.
    let bad_timeout = client
        .get(node.url(&format!("/ucxi/v1/get?address={a}")))
        .header("X-Request-Timeout-Ms", "soon");
    assert_refused(
        "bad header",
        &answer(bad_timeout).await,
        CHALLENGE,
        "missing_token",
    );

    // With the token everything works (the harness sends it).
    let (status, put) = node
        .put(&client, &address("closed"), json!({"content": 1}))
        .await;
    assert_eq!(status, 201, "{put}");
    assert_eq!(node.get(&client, &address("closed")).await.0, 200);
    let lower = client
        .get(node.url(&format!("/ucxi/v1/history?address={a}")))
        .header("Authorization", format!("bearer {TOKEN}"));
    assert_eq!(answer(lower).await.0, 200, "the scheme is case-insensitive");
    let discover = node.request(
        &client,
        Method::GET,
        &format!("/ucxi/v1/discover?pattern={pattern}"),
    );
    assert_eq!(answer(discover).await.0, 200);
    let status = node.status(&client).await;
    assert_eq!(status["private_network"], false, "{status}");
    assert_eq!(status["records"], 1, "{status}");
    assert_eq!(node.delete(&client, &address("closed")).await.0, 200);

    // Probes and scrapes need no token; health then shows no more than the peer count.
    let (status, health) = body(client.get(node.url("/health")).send().await).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(
        health["response"]["data"],
        json!({"connected_peers": 0}),
        "{health}"
    );
    let metrics = client.get(node.url("/metrics")).send().await.expect("sent");
    assert_eq!(metrics.status(), 200);
    let metrics = metrics.text().await.expect("text");
    assert!(
        metrics.contains("status=\"401\""),
        "refusals are counted: {metrics}"
    );
    // Unknown paths still answer 404, with or without a token.
    let (status, _, _) = answer(client.get(node.url("/nope"))).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_swarm_key_never_join_a_private_cluster() {
    let keyed = [("BZZZ_SWARM_KEY", SWARM_KEY)];
    let cluster = Cluster::start_with(2, &keyed).await;
    let client = reqwest::Client::new();
    let bootstrap: Vec<String> = cluster.nodes.iter().map(|n| bare(&n.p2p)).collect();
    let outsider = NodeProc::start(
        "outsider",
        &bootstrap,
        None,
        &[("BZZZ_SWARM_KEY", OTHER_SWARM_KEY)],
    )
    .await;
    let keyless = NodeProc::start("keyless", &bootstrap, None, &[]).await;
    // Started after the outsiders, bootstrapped the same way: once it is connected to
    // both cluster nodes, the outsiders have dialled them too.
    let control = NodeProc::start("control", &bootstrap, None, &keyed).await;
    let joined = wait_until(Duration::from_secs(10), || async {
        control.status(&client).await["connected_peers"].as_u64() >= Some(2)
    })
    .await;
    assert!(
        joined,
        "the control joined: {}",
        control.status(&client).await
    );

    // A write on the cluster reaches the control, never the outsiders.
    let (status, put) = cluster.nodes[0]
        .put(&client, &address("private"), json!({"content": "inside"}))
        .await;
    assert_eq!(status, 201, "{put}");
    let reached = wait_until(Duration::from_secs(10), || async {
        control.status(&client).await["records"] == 1
    })
    .await;
    assert!(reached, "the write reached the control");

    for node in &cluster.nodes {
        let status = node.status(&client).await;
        assert_eq!(status["private_network"], true, "{status}");
        let peers: Vec<&str> = status["peers"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert!(peers.contains(&control.peer_id.as_str()), "{status}");
        assert!(!peers.contains(&outsider.peer_id.as_str()), "{status}");
        assert!(!peers.contains(&keyless.peer_id.as_str()), "{status}");
        assert_eq!(status["connected_peers"], 2, "{status}");
    }
    for node in [&outsider, &keyless] {
        let status = node.status(&client).await;
        assert_eq!(status["connected_peers"], 0, "{}: {status}", node.name);
        assert_eq!(status["records"], 0, "{}: {status}", node.name);
        let (health, _) = body(client.get(node.url("/health")).send().await).await;
        assert_eq!(health, 503, "{} never reaches the cluster", node.name);
    }
    assert_eq!(outsider.status(&client).await["private_network"], true);
    assert_eq!(keyless.status(&client).await["private_network"], false);

    // The "ready" line says the network is private and names the key by a fingerprint
    // that matches across the cluster (and never the key).
    let fingerprint = &cluster.nodes[0].ready["swarm_key_fingerprint"];
    assert!(
        fingerprint.as_str().is_some_and(|f| f.len() == 32),
        "{fingerprint}"
    );
    assert_eq!(&control.ready["swarm_key_fingerprint"], fingerprint);
    assert_ne!(&outsider.ready["swarm_key_fingerprint"], fingerprint);
    assert_eq!(cluster.nodes[0].ready["private_network"], true);
    assert_eq!(keyless.ready["private_network"], false);
    assert!(!cluster.nodes[0].ready.to_string().contains(SWARM_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_cluster_with_an_api_token_replicates_and_survives_a_node_loss() {
    let closed = [("BZZZ_SWARM_KEY", SWARM_KEY), ("BZZZ_API_TOKEN", TOKEN)];
    // Bootstrap by DNS name, as a compose file does: name resolution sits above the
    // private-network handshake.
    let n1 = NodeProc::start("p1", &[], None, &closed).await;
    let n2 = NodeProc::start("p2", &[n1.p2p_dns()], None, &closed).await;
    let n3 = NodeProc::start("p3", &[n1.p2p_dns(), n2.p2p_dns()], None, &closed).await;
    let mut cluster = Cluster::from_nodes(vec![n1, n2, n3]).await;
    let client = reqwest::Client::new();

    let (status, put) = cluster.nodes[0]
        .put(&client, &address("closed-1"), json!({"content": {"n": 1}}))
        .await;
    assert_eq!(status, 201, "{put}");
    let (status, got) = cluster.nodes[2].get(&client, &address("closed-1")).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["response"]["data"]["content"], json!({"n": 1}));

    cluster.nodes[2].kill();
    for i in 0..4 {
        let (status, put) = cluster.nodes[i % 2]
            .put(
                &client,
                &address(&format!("closed-down-{i}")),
                json!({"content": i}),
            )
            .await;
        assert_eq!(status, 201, "write {i} with one node down: {put}");
    }
    let (status, got) = cluster.nodes[1]
        .get(&client, &address("closed-down-2"))
        .await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["response"]["data"]["content"], 2);
}

#[test]
fn invalid_secrets_exit_64_without_being_echoed() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bzzz-node"))
        .env_clear()
        .env("BZZZ_API_TOKEN", "short-secret")
        .env("BZZZ_SWARM_KEY", "secret-key-material")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(!stderr.contains("short-secret"), "{stderr}");
    assert!(!stderr.contains("secret-key-material"), "{stderr}");
}
