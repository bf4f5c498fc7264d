//! Reads that need no hop (`X-Rustle-Consistency: cached`): served from the cache while
//! every node's feed is current, coherent with writes made through another gateway and
//! directly at the nodes.

use std::time::Duration;

use rustle_gateway::config::BackendMode;
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::helpers::{TestApp, json, project, spawn_app_with};
use super::nodes::{Cluster, wait_until};
use super::resilience::cluster_config;

async fn gateway(urls: &[String]) -> TestApp {
    let mut config = cluster_config(urls, BackendMode::Hybrid);
    config.cache_max_lag = Duration::from_millis(400);
    spawn_app_with(config, Options::default()).await
}

/// A cached read: status, `X-Rustle-Cache`, `X-Rustle-Backend`, the version's id.
async fn cached(app: &TestApp, address: &str) -> (u16, String, String, Option<String>) {
    let response = app
        .client
        .get(app.envelope_url(address))
        .header("x-rustle-consistency", "cached")
        .send()
        .await
        .expect("answer");
    let status = response.status().as_u16();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (cache, backend) = (header("x-rustle-cache"), header("x-rustle-backend"));
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let id = body["response"]["data"]["id"].as_str().map(str::to_owned);
    (status, cache, backend, id)
}

/// Whether `app` has read every node's feed at least up to where each node is now.
async fn caught_up(app: &TestApp, cluster: &Cluster) -> bool {
    let client = reqwest::Client::new();
    let mut current = Vec::new();
    for node in &cluster.nodes {
        let feed = node.status(&client).await["feed"].clone();
        current.push((
            feed["id"].clone(),
            feed["current_seq"].as_u64().unwrap_or(0),
        ));
    }
    wait_until(Duration::from_secs(10), || {
        let current = current.clone();
        async move {
            let (_, status) = json(app.get_path("/v1/status").await).await;
            let feeds = status["response"]["data"]["watch"]["feeds"].clone();
            current.iter().all(|(id, seq)| {
                feeds.as_array().is_some_and(|f| {
                    f.iter()
                        .any(|f| f["feed"] == *id && f["seq"].as_u64().unwrap_or(0) >= *seq)
                })
            })
        }
    })
    .await
}

#[tokio::test]
async fn cached_reads_follow_writes_made_elsewhere_and_never_go_back() {
    let cluster = Cluster::start(3).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let reader = gateway(&urls).await;
    let writer = gateway(&urls).await;
    let address = format!("ucxl://agent:tester@{}:t/coherent", project());
    let client = reqwest::Client::new();
    let mut hits = 0;
    let mut order: Vec<String> = Vec::new();
    for n in 0..12 {
        // Writes through the other gateway, and directly at each node in turn.
        let id = if n % 2 == 0 {
            let (status, body) = json(writer.put(&address, json!({"content": n})).await).await;
            assert_eq!(status, 201, "{body}");
            body["response"]["data"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        } else {
            let node = &cluster.nodes[n % 3];
            let (status, body) = node.put(&client, &address, json!({"content": n})).await;
            assert_eq!(status, 201, "{body}");
            body["response"]["data"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        order.push(id.clone());
        // Until the reader has read every feed past the write, a cached read may still
        // answer the previous version, but never one older than an answer it gave.
        let mut last_seen = n.saturating_sub(1);
        for _ in 0..5 {
            let (status, cache, backend, got) = cached(&reader, &address).await;
            assert_eq!(status, 200);
            assert!(cache == "hit" || cache == "miss", "{cache}");
            if cache == "hit" {
                hits += 1;
                assert_eq!(backend, "cache");
            }
            let got = got.expect("an id");
            let at = order
                .iter()
                .position(|i| *i == got)
                .expect("a written version");
            assert!(
                at + 1 >= order.len() - 1,
                "version {at} read after {n} was written"
            );
            assert!(at >= last_seen, "went back from {last_seen} to {at}");
            last_seen = at;
        }
        // Once every feed has been read past the write, the cache cannot hold an older copy.
        assert!(caught_up(&reader, &cluster).await);
        let (status, _, _, got) = cached(&reader, &address).await;
        assert_eq!(status, 200);
        assert_eq!(got.as_deref(), Some(id.as_str()), "after write {n}");
    }
    assert!(hits > 0, "the cache answered some reads");
    // Counted: at least the hits seen here (the recorder is shared by this process's
    // gateways, so other tests' reads may add to it).
    let metrics = reader
        .client
        .get(format!("http://{}/metrics", reader.addr))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rustle_cache_reads_total{result=\"hit\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("rustle_cache_reads_total{result=\"hit\"}");
    assert!(counted >= f64::from(hits), "{counted} < {hits}");
    // A delete made elsewhere: the cached copy goes, and the read answers 404.
    let (status, _) = json(writer.delete(&address).await).await;
    assert_eq!(status, 200);
    assert!(caught_up(&reader, &cluster).await);
    let (status, _, _, _) = cached(&reader, &address).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn without_current_feeds_a_cached_read_reads_a_node_and_says_so() {
    let cluster = Cluster::start(1).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let app = gateway(&urls).await;
    let address = format!("ucxl://agent:tester@{}:t/x", project());
    let (status, _) = json(app.put(&address, json!({"content": 1})).await).await;
    assert_eq!(status, 201);
    assert!(caught_up(&app, &cluster).await);
    // Warm.
    cached(&app, &address).await;
    assert!(
        wait_until(Duration::from_secs(5), || async {
            cached(&app, &address).await.1 == "hit"
        })
        .await
    );
    // Not asked: a node read, no cache header.
    let plain = app
        .client
        .get(app.envelope_url(&address))
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.headers()["x-rustle-backend"], "real");
    assert!(plain.headers().get("x-rustle-cache").is_none());
    // A bad value is refused.
    let bad = app
        .client
        .get(app.envelope_url(&address))
        .header("x-rustle-consistency", "eventual")
        .send()
        .await
        .expect("answer");
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.expect("json");
    assert_eq!(bad["error"]["details"]["field"], "X-Rustle-Consistency");
    // The address is checked first: a bad address with a bad value is the address's error.
    let both = app
        .client
        .get(app.envelope_url("ucxl://bad"))
        .header("x-rustle-consistency", "eventual")
        .send()
        .await
        .expect("answer");
    assert_eq!(both.status(), 400);
    let both: Value = both.json().await.expect("json");
    assert_eq!(both["error"]["code"], "UCXL-400-INVALID_ADDRESS");
    // An endpoint whose feed cannot be read (nothing listens there) keeps every cached read
    // on the nodes: nothing says the cache is current.
    let mut config = cluster_config(
        &[urls[0].clone(), "http://127.0.0.1:9".into()],
        BackendMode::Hybrid,
    );
    config.cache_max_lag = Duration::from_millis(400);
    let partial = spawn_app_with(config, Options::default()).await;
    for _ in 0..3 {
        let (status, cache, backend, _) = cached(&partial, &address).await;
        assert_eq!(
            (status, cache.as_str(), backend.as_str()),
            (200, "miss", "real")
        );
    }
}
