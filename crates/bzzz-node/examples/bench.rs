//! Latency of a 3-node loopback cluster and catch-up time of a restarted node.
//!
//! `cargo run --release -p bzzz-node --example bench [-- N]` (N writes and reads, default
//! 2000). Nodes run in this process on free ports with temporary data directories; each
//! request goes over real HTTP, and each write is acknowledged by a majority.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bzzz_node::config::NodeConfig;
use bzzz_node::node::Node;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Running {
    http: String,
    p2p: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(
    dir: &std::path::Path,
    name: &str,
    bootstrap: &[String],
    ports: (u16, u16),
) -> Running {
    let env: HashMap<String, String> = [
        ("BZZZ_HTTP_ADDR", format!("127.0.0.1:{}", ports.0)),
        ("BZZZ_P2P_ADDR", format!("/ip4/127.0.0.1/tcp/{}", ports.1)),
        ("BZZZ_BOOTSTRAP_PEERS", bootstrap.join(",")),
        ("BZZZ_DATA_DIR", dir.join(name).display().to_string()),
        ("BZZZ_NODE_NAME", name.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = NodeConfig::from_env(&env).expect("valid configuration");
    let stop = CancellationToken::new();
    let node = Node::start(&config, stop.clone())
        .await
        .expect("node starts");
    let http = node.http_addr().to_string();
    let p2p = node.p2p_addr().to_string();
    let task = tokio::spawn(node.run_until_stopped());
    Running {
        http,
        p2p,
        stop,
        task,
    }
}

async fn status(client: &reqwest::Client, http: &str) -> Value {
    let response = client
        .get(format!("http://{http}/status"))
        .send()
        .await
        .expect("status answers");
    response.json::<Value>().await.expect("json")["response"]["data"].clone()
}

async fn wait_for(client: &reqwest::Client, http: &str, key: &str, want: u64) -> Duration {
    let started = Instant::now();
    while status(client, http).await[key].as_u64() != Some(want) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{http} never reached {key}={want}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// The `per_mille`/1000 quantile of sorted samples (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    let i = (sorted.len().saturating_sub(1) * per_mille).div_ceil(1000);
    sorted.get(i).copied().unwrap_or_default()
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<28} n={:<6} median={:>8.3} ms  p99={:>8.3} ms  max={:>8.3} ms",
        samples.len(),
        percentile(&samples, 500).as_secs_f64() * 1e3,
        percentile(&samples, 990).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

fn address(i: usize) -> String {
    format!("ucxl%3A%2F%2Fbench%3Awriter%40bzzz%3Aload%2Fdoc-{i}")
}

/// Writes envelope `i` on the node at `http`; returns how long the acknowledged write took.
async fn put(client: &reqwest::Client, http: &str, i: usize, body: &Value) -> Duration {
    let started = Instant::now();
    let r = client
        .put(format!("http://{http}/ucxi/v1/put?address={}", address(i)))
        .json(body)
        .send()
        .await
        .expect("put answers");
    assert_eq!(r.status(), 201);
    r.bytes().await.expect("body");
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().expect("tempdir");
    let client = reqwest::Client::new();
    let n1 = start(dir.path(), "n1", &[], (0, 0)).await;
    let n2 = start(dir.path(), "n2", std::slice::from_ref(&n1.p2p), (0, 0)).await;
    let n3 = start(dir.path(), "n3", &[n1.p2p.clone(), n2.p2p.clone()], (0, 0)).await;
    for node in [&n1, &n2, &n3] {
        wait_for(&client, &node.http, "connected_peers", 2).await;
    }
    let body =
        json!({"content": {"decision": "use libp2p", "n": 42}, "metadata": {"author": "bench"}});

    let mut puts = Vec::with_capacity(n);
    for i in 0..n {
        puts.push(put(&client, &n1.http, i, &body).await);
    }
    report("put (majority ack)", puts);

    let mut gets = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let r = client
            .get(format!(
                "http://{}/ucxi/v1/get?address={}",
                n2.http,
                address(i)
            ))
            .send()
            .await
            .expect("get answers");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        gets.push(started.elapsed());
    }
    report("get (other node)", gets);

    // Catch-up: stop n3, write while it is away, start it again and time until it holds
    // every record.
    let n3_ports = {
        let http_port = n3
            .http
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let p2p_port = n3
            .p2p
            .split('/')
            .nth(4)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        (http_port, p2p_port)
    };
    n3.stop.cancel();
    let _ = n3.task.await;
    let missed = n / 4;
    for i in n..n + missed {
        put(&client, &n1.http, i, &body).await;
    }
    let restarted_at = Instant::now();
    let n3 = start(
        dir.path(),
        "n3",
        &[n1.p2p.clone(), n2.p2p.clone()],
        n3_ports,
    )
    .await;
    let total = u64::try_from(n + missed).unwrap_or(u64::MAX);
    wait_for(&client, &n3.http, "records", total).await;
    println!(
        "catch-up: restarted node holds all {} records ({} written while it was down) {:.0} ms after it started",
        n + missed,
        missed,
        restarted_at.elapsed().as_secs_f64() * 1e3
    );
    for node in [n1, n2, n3] {
        node.stop.cancel();
        let _ = node.task.await;
    }
}
