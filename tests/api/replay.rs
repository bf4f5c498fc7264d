//! The journal replay in batches, through a fault endpoint in front of a real node: a batch
//! answer that does not hold one result per entry, each about its entry's address, is the
//! endpoint's bad answer and removes nothing from the journal; a node without the batch
//! route (an older one, during a rolling upgrade) gets the entries one at a time.

use std::time::Duration;

use rustle_gateway::config::BackendMode;
use rustle_gateway::startup::Options;
use serde_json::{Value, json};

use super::faults::{FaultNode, Mode};
use super::helpers::{TestApp, enc, json, spawn_app_with};
use super::nodes::{NodeProc, body, wait_until};
use super::resilience::{cluster_config, status_of};

/// Addresses the journaled writes go to, several writes each.
const ADDRESSES: usize = 4;

fn address(project: &str, k: usize) -> String {
    format!("ucxl://agent:tester@bzzz:{project}/k{k}")
}

/// A real node behind a fault endpoint that answers 503 while `writes` writes are
/// journaled (spread over [`ADDRESSES`] addresses); the ids written, per address in order.
async fn journaled(
    project: &str,
    writes: usize,
) -> (NodeProc, FaultNode, TestApp, Vec<Vec<Value>>) {
    let node = NodeProc::start("replayed", &[], None, &[]).await;
    let proxy = FaultNode::start(Mode::Unavailable, Some(node.url(""))).await;
    let mut config = cluster_config(std::slice::from_ref(&proxy.url), BackendMode::Hybrid);
    config.health_interval = Duration::from_millis(50);
    let app = spawn_app_with(config, Options::default()).await;
    let mut ids = vec![Vec::new(); ADDRESSES];
    for i in 0..writes {
        let k = i % ADDRESSES;
        let (status, written) =
            json(app.put(&address(project, k), json!({"content": i})).await).await;
        assert_eq!(status, 202, "{written}");
        ids[k].push(written["response"]["data"]["id"].clone());
    }
    let pending = pending(&app).await;
    assert_eq!(pending, writes as u64);
    (node, proxy, app, ids)
}

async fn pending(app: &TestApp) -> u64 {
    let (_, status) = json(app.get_path("/v1/status").await).await;
    status["response"]["data"]["journal"]["pending"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Waits until the journal is empty.
async fn drained(app: &TestApp) -> bool {
    wait_until(Duration::from_secs(20), || async {
        pending(app).await == 0
    })
    .await
}

/// The ids of `address`'s history on `node`, in order.
async fn history(node: &NodeProc, address: &str) -> Vec<Value> {
    let client = reqwest::Client::new();
    let url = node.url(&format!("/ucxi/v1/history?address={}", enc(address)));
    let (_, history) = body(client.get(url).send().await).await;
    history["response"]["data"]["versions"]
        .as_array()
        .map(|v| v.iter().map(|v| v["id"].clone()).collect())
        .unwrap_or_default()
}

/// Every journaled write is on the node, each address's in the order written.
async fn assert_all_on_the_node(node: &NodeProc, project: &str, ids: &[Vec<Value>]) {
    for (k, written) in ids.iter().enumerate() {
        assert_eq!(&history(node, &address(project, k)).await, written, "k{k}");
    }
}

/// A lying batch answer is the endpoint's failure, named in its status; once the endpoint
/// answers truthfully, everything written reaches the node, in order: nothing was removed
/// from the journal on the lie's word (the liar stored nothing).
async fn a_lie_removes_nothing(mode: Mode, project: &str, error: &str) {
    let (node, proxy, app, ids) = journaled(project, 40).await;
    proxy.set(mode);
    let judged = wait_until(Duration::from_secs(20), || async {
        proxy.batch_hits() > 0
            && status_of(&app, &proxy.url).await["last_error"]
                .as_str()
                .is_some_and(|e| e.contains(error))
    })
    .await;
    assert!(judged, "{}", status_of(&app, &proxy.url).await);
    assert!(pending(&app).await > 0, "the lied-about entries are kept");
    proxy.set(Mode::Healthy);
    assert!(drained(&app).await, "{}", status_of(&app, &proxy.url).await);
    assert_all_on_the_node(&node, project, &ids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answer_missing_a_result_is_the_endpoints_bad_answer() {
    a_lie_removes_nothing(Mode::ShortBatch, "replay-short", "invalid UCXI answer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answer_with_a_result_about_another_address_is_the_endpoints_failure() {
    a_lie_removes_nothing(
        Mode::BatchOtherAddress,
        "replay-other",
        "answered for another address",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_the_batch_route_gets_the_entries_one_at_a_time() {
    let (node, proxy, app, ids) = journaled("replay-older", 40).await;
    proxy.set(Mode::NoBatchRoute);
    assert!(drained(&app).await, "{}", status_of(&app, &proxy.url).await);
    assert!(proxy.batch_hits() > 0, "a batch was tried first");
    assert_all_on_the_node(&node, "replay-older", &ids).await;
    let s = status_of(&app, &proxy.url).await;
    assert_eq!(
        s["breaker"]["consecutive_failures"], 0,
        "a node without the route is no failing node: {s}"
    );
}
