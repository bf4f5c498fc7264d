//! Real `bzzz-node` processes on loopback: replication, node loss, catch-up, restarts,
//! bad input, a cluster closed to outsiders, the change feed. Nodes pick free ports and announce them in
//! their "ready" log line, which is the readiness signal; conditions that take time are
//! polled with a deadline.

mod batch;
mod bodies;
mod closed;
mod harness;
mod observe;
#[path = "../../../ucxl-service/tests/support/raw_http.rs"]
#[allow(dead_code)] // the service's own tests use the rest
mod raw_http;
mod watch;

use std::time::Duration;

use harness::{Cluster, NodeProc, body, enc, wait_until};
use serde_json::json;

fn address(name: &str) -> String {
    format!("ucxl://claude:architect@bzzz:cluster/{name}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replicates_survives_a_node_loss_and_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let client = reqwest::Client::new();

    // A write on one node is readable on every node, from its own copy.
    let (status, put) = cluster.nodes[0]
        .put(&client, &address("first"), json!({"content": {"n": 1}}))
        .await;
    assert_eq!(status, 201, "{put}");
    for node in &cluster.nodes {
        let ok = wait_until(Duration::from_secs(10), || async {
            node.status(&client).await["records"] == 1
        })
        .await;
        assert!(ok, "{} holds the record", node.name);
        let (status, got) = node.get(&client, &address("first")).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["response"]["data"]["content"], json!({"n": 1}));
        assert_eq!(got["response"]["data"]["version"], 1);
    }

    // One node down: writes and reads go on.
    cluster.nodes[2].kill();
    for i in 0..5 {
        let (status, put) = cluster.nodes[i % 2]
            .put(
                &client,
                &address(&format!("while-down-{i}")),
                json!({"content": i}),
            )
            .await;
        assert_eq!(status, 201, "write {i} with one node down: {put}");
    }
    let (status, _) = cluster.nodes[1]
        .get(&client, &address("while-down-0"))
        .await;
    assert_eq!(status, 200);

    // The node comes back and receives what was written meanwhile.
    cluster.restart(2).await;
    let back = &cluster.nodes[2];
    let caught_up = wait_until(Duration::from_secs(10), || async {
        back.status(&client).await["records"] == 6
    })
    .await;
    assert!(
        caught_up,
        "the restarted node caught up: {}",
        back.status(&client).await
    );
    let (status, got) = back.get(&client, &address("while-down-4")).await;
    assert_eq!(status, 200, "{got}");

    // Two nodes down: the survivor keeps the write but says it is not on a majority;
    // once a peer is back, the same Idempotency-Key completes it.
    cluster.nodes[1].kill();
    cluster.nodes[2].kill();
    let a = address("majority");
    let (status, body) = cluster.nodes[0]
        .put_keyed(&client, &a, "key-1", json!({"content": "m"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "UCXL-503-SERVICE_UNAVAILABLE");
    cluster.restart(1).await;
    let healed = wait_until(Duration::from_secs(10), || async {
        cluster.nodes[0]
            .put_keyed(&client, &a, "key-1", json!({"content": "m"}))
            .await
            .0
            == 200
    })
    .await;
    assert!(healed, "the retry reaches a majority once a peer is back");
    let (status, got) = cluster.nodes[1].get(&client, &a).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["response"]["data"]["id"], "key-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_full_cluster_restart() {
    let mut cluster = Cluster::start(3).await;
    let client = reqwest::Client::new();
    for i in 0..10 {
        let (status, body) = cluster.nodes[i % 3]
            .put(
                &client,
                &address(&format!("durable-{i}")),
                json!({"content": i}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, _) = cluster.nodes[0]
        .delete(&client, &address("durable-0"))
        .await;
    assert_eq!(status, 200);
    let all_hold = wait_until(Duration::from_secs(10), || async {
        let mut ok = true;
        for node in &cluster.nodes {
            ok &= node.status(&client).await["records"] == 10;
        }
        ok
    })
    .await;
    assert!(all_hold);
    let ids: Vec<String> = cluster.nodes.iter().map(|n| n.peer_id.clone()).collect();
    for i in 0..3 {
        cluster.nodes[i].stop();
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }
    for (node, id) in cluster.nodes.iter().zip(&ids) {
        assert_eq!(&node.peer_id, id, "the peer id survives restarts");
        assert_eq!(
            node.status(&client).await["records"],
            10,
            "{} kept its records",
            node.name
        );
        let (status, got) = node.get(&client, &address("durable-9")).await;
        assert_eq!(status, 200, "{got}");
        assert_eq!(got["response"]["data"]["content"], 9);
        let (status, _) = node.get(&client, &address("durable-0")).await;
        assert_eq!(status, 404, "the delete survived too");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ucxi_api_speaks_ucxl_and_refuses_bad_input() {
    let node = NodeProc::start("solo", &[], None, &[("BZZZ_MAX_BODY_BYTES", "4096")]).await;
    let client = reqwest::Client::new();
    let a = address("api");

    // Partial envelope: the node fills in id, time, hash and size.
    let (status, put) = node
        .put(
            &client,
            &a,
            json!({"content": {"k": "v"}, "metadata": {"by": "test"}}),
        )
        .await;
    assert_eq!(status, 201, "{put}");
    let envelope = put["response"]["data"].clone();
    assert!(
        envelope["hash"]
            .as_str()
            .is_some_and(|h| h.starts_with("sha256:"))
    );
    // Sending a fetched envelope back is a no-op (same id).
    let (status, again) = node.put(&client, &a, envelope.clone()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["response"]["data"], envelope);
    // A given hash is verified.
    let (status, bad) = node
        .put(
            &client,
            &a,
            json!({"content": {"k": "other"}, "hash": envelope["hash"]}),
        )
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "UCXL-400-INVALID_PAYLOAD");
    assert_eq!(bad["error"]["source"], "bzzz-node");

    // Temporal navigation and history.
    node.put(&client, &a, json!({"content": 2})).await;
    let (_, first) = node
        .get(&client, &a.replace(":cluster/", ":cluster/*~/"))
        .await;
    assert_eq!(first["response"]["data"]["version"], 1);
    let (status, history) = body(
        client
            .get(node.url(&format!("/ucxi/v1/history?address={}", enc(&a))))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        history["response"]["data"]["versions"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Discover, with paging.
    for i in 0..3 {
        node.put(
            &client,
            &address(&format!("page/{i}")),
            json!({"content": i}),
        )
        .await;
    }
    let url = node.url(&format!(
        "/ucxi/v1/discover?pattern={}&limit=2",
        enc("ucxl://any:any@bzzz:any/page/*")
    ));
    let (status, page) = body(client.get(url).send().await).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["response"]["data"]["items"].as_array().map(Vec::len),
        Some(2)
    );
    let after = page["response"]["data"]["next_after"]
        .as_str()
        .expect("more")
        .to_owned();
    let url = node.url(&format!(
        "/ucxi/v1/discover?pattern={}&after={}",
        enc("ucxl://any:any@bzzz:any/page/*"),
        enc(&after)
    ));
    let (_, rest) = body(client.get(url).send().await).await;
    assert_eq!(
        rest["response"]["data"]["items"].as_array().map(Vec::len),
        Some(1)
    );

    // Bad input: UCXL errors naming the problem, never a crash.
    let (status, e) = node.get(&client, "ucxl://claude:arch itect@bzzz:t").await;
    assert_eq!(status, 400);
    assert_eq!(e["error"]["details"]["field"], "role");
    let (status, e) = node
        .get(&client, "ucxl://claude:architect@bzzz:t/~~x/y")
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("UCXL-400-TEMPORAL_INVALID"))
    );
    // Writes and deletes address the latest version: a past version is refused and the
    // history stays as it was.
    let past = a.replacen("cluster/", "cluster/*~1/", 1);
    assert_ne!(past, a);
    let (status, e) = node.delete(&client, &past).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("UCXL-400-TEMPORAL_INVALID"))
    );
    let (status, e) = node.put(&client, &past, json!({"content": 1})).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("UCXL-400-TEMPORAL_INVALID"))
    );
    assert_eq!(node.get(&client, &a).await.0, 200);
    let (status, e) = node
        .put(&client, &a, json!({"content": "x".repeat(5000)}))
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (413, Some("UCXL-413-PAYLOAD_TOO_LARGE"))
    );
    let raw = client
        .put(node.url(&format!("/ucxi/v1/put?address={}", enc(&a))))
        .header("content-type", "application/json")
        .body("{\"content\": ")
        .send()
        .await;
    let (status, e) = body(raw).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("UCXL-400-INVALID_PAYLOAD"))
    );
    let (status, e) = node.get(&client, &address("missing")).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("UCXL-404-NOT_FOUND"))
    );
    let (status, e) = body(client.post(node.url("/ucxi/v1/get")).send().await).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (405, Some("UCXL-405-METHOD_NOT_ALLOWED"))
    );
    let (status, _) = body(client.get(node.url("/nope")).send().await).await;
    assert_eq!(status, 404);

    // Health, status and metrics.
    let (status, health) = body(client.get(node.url("/health")).send().await).await;
    assert_eq!(
        status, 200,
        "a standalone node is healthy without peers: {health}"
    );
    assert!(
        health["response"]["data"]["peer_id"].is_string(),
        "without a token health shows the status: {health}"
    );
    let status = node.status(&client).await;
    assert_eq!(status["private_network"], false, "{status}");
    assert_eq!(node.ready["private_network"], false, "{}", node.ready);
    assert_eq!(node.ready["api_token"], false, "{}", node.ready);
    let metrics = client
        .get(node.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("bzzz_requests_total"), "{metrics}");
    assert!(metrics.contains("bzzz_records"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_node_is_unhealthy_until_it_reaches_a_peer() {
    // Bootstrap to a port nobody listens on.
    let (_held, nowhere) = unreachable_peer();
    let node = NodeProc::start("lonely", &[nowhere], None, &[]).await;
    let client = reqwest::Client::new();
    let (status, health) = body(client.get(node.url("/health")).send().await).await;
    assert_eq!(status, 503, "{health}");
    // Writes need a majority, which a lonely node cannot reach.
    let (status, _) = node
        .put(&client, &address("lonely"), json!({"content": 1}))
        .await;
    assert_eq!(status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_copy_read_through_the_dht() {
    // Four nodes, two copies of each record: every record is missing on two nodes, which
    // must find it through a DHT lookup (and keep the copy they merged).
    let cluster = Cluster::start_with(4, &[("BZZZ_REPLICATION_FACTOR", "2")]).await;
    let client = reqwest::Client::new();
    for i in 0..8 {
        let (status, body) = cluster.nodes[0]
            .put(
                &client,
                &address(&format!("sparse-{i}")),
                json!({"content": i}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let mut held = 0;
    for node in &cluster.nodes {
        held += node.status(&client).await["records"].as_u64().unwrap_or(0);
    }
    assert!(
        held < 32,
        "some nodes lack some records before reading ({held} of 32 copies)"
    );
    for node in &cluster.nodes {
        for i in 0..8 {
            let (status, got) = node.get(&client, &address(&format!("sparse-{i}"))).await;
            assert_eq!(status, 200, "{} reads sparse-{i}: {got}", node.name);
            assert_eq!(got["response"]["data"]["content"], i);
        }
        assert_eq!(
            node.status(&client).await["records"],
            8,
            "{} kept what it fetched",
            node.name
        );
    }
}

#[test]
fn invalid_configuration_exits_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bzzz-node"))
        .env_clear()
        .env("BZZZ_HTTP_ADDR", "nowhere")
        .env("BZZZ_REPLICATION_FACTOR", "0")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
}

/// A peer address where connections are refused: a port bound but not listening, held
/// (so no other test takes it) while the returned socket lives.
fn unreachable_peer() -> (tokio::net::TcpSocket, String) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("binds");
    let port = socket.local_addr().expect("addr").port();
    (socket, format!("/ip4/127.0.0.1/tcp/{port}"))
}

fn healthcheck(http: &str) -> Option<i32> {
    std::process::Command::new(env!("CARGO_BIN_EXE_bzzz-node"))
        .arg("healthcheck")
        .env_clear()
        .env("BZZZ_HTTP_ADDR", http)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("runs")
        .code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_healthcheck_command_reports_the_nodes_health() {
    let solo = NodeProc::start("solo-health", &[], None, &[]).await;
    assert_eq!(healthcheck(&solo.http), Some(0));
    // A clustered node that reaches no peer answers /health with 503.
    let (_held, nowhere) = unreachable_peer();
    let lonely = NodeProc::start("lonely-health", &[nowhere], None, &[]).await;
    assert_eq!(healthcheck(&lonely.http), Some(1));
}
