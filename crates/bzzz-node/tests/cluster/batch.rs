//! `POST /ucxi/v1/batch` on real node processes: each address's items applied in order,
//! one result per item with its single route's code, a batch sent again changes nothing,
//! bounds on items and bytes, replication to the other replicas, and a batch of which
//! nothing reached a majority failing as a whole.

use reqwest::Method;
use serde_json::{Value, json};

use super::address;
use super::harness::{Cluster, NodeProc, body};
use super::unreachable_peer;

const T1: &str = "2026-11-24T10:00:00.000001Z";
const T2: &str = "2026-11-24T10:00:01.000001Z";
const T3: &str = "2026-11-24T10:00:02.000001Z";

/// A whole version, as the gateway's journal holds it.
fn version(id: &str, content: &Value, at: &str) -> Value {
    let (hash, size) = ucxl::content_digest(content).expect("a digest");
    json!({
        "id": id, "created_at": at, "hash": hash, "size": size, "content": content,
        "content_type": "application/json", "metadata": {}, "written_by": "replayer"
    })
}

fn put(address: &str, id: &str, content: &Value, at: &str) -> Value {
    json!({"put": {"address": address, "version": version(id, content, at)}})
}

fn delete(address: &str, id: &str, at: &str) -> Value {
    json!({"delete": {"address": address, "id": id, "deleted_at": at}})
}

async fn send(node: &NodeProc, client: &reqwest::Client, items: &[Value]) -> (u16, Value) {
    body(
        node.request(client, Method::POST, ucxl::batch::ROUTE)
            .json(&json!({"items": items}))
            .send()
            .await,
    )
    .await
}

/// Per result: (address, code).
fn results(answer: &Value) -> Vec<(String, String)> {
    answer["response"]["data"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {answer}"))
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap_or_default().to_owned(),
                r["code"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

async fn history_ids(node: &NodeProc, client: &reqwest::Client, address: &str) -> Vec<Value> {
    let path = format!("/ucxi/v1/history?address={}", super::harness::enc(address));
    let (_, history) = body(node.request(client, Method::GET, &path).send().await).await;
    history["response"]["data"]["versions"]
        .as_array()
        .map(|v| v.iter().map(|v| v["id"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_each_addresss_items_in_order_and_answers_each_as_its_single_route() {
    let node = NodeProc::start("batch-order", &[], None, &[]).await;
    let client = reqwest::Client::new();
    let (x, y, z) = (address("b-x"), address("b-y"), address("b-z"));
    let past = "ucxl://claude:architect@bzzz:cluster/~~1/b-w".to_owned();
    let mut wrong_hash = put(&y, "y1", &json!({"n": 1}), T1);
    wrong_hash["put"]["version"]["content"] = json!({"n": 2});
    let items = [
        put(&x, "x1", &json!({"n": 1}), T1),
        wrong_hash,
        // Applied after x1 (its put is earlier in the batch), so there is something to delete.
        delete(&x, "x-gone", T2),
        delete(&z, "z-gone", T2),
        put(&x, "x2", &json!({"n": 2}), T3),
        put(&past, "w1", &json!({"n": 1}), T1),
    ];
    let (status, answer) = send(&node, &client, &items).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["response"]["code"], "UCXL-200-OK");
    assert_eq!(
        results(&answer),
        [
            (x.clone(), "UCXL-201-CREATED".to_owned()),
            (y.clone(), "UCXL-400-INVALID_PAYLOAD".to_owned()),
            (x.clone(), "UCXL-200-OK".to_owned()),
            (z.clone(), "UCXL-404-NOT_FOUND".to_owned()),
            (x.clone(), "UCXL-201-CREATED".to_owned()),
            (past, "UCXL-400-TEMPORAL_INVALID".to_owned()),
        ]
    );
    let r = &answer["response"]["data"]["results"];
    assert_eq!((&r[0]["id"], &r[0]["version"]), (&json!("x1"), &json!(1)));
    assert_eq!(
        (&r[2]["id"], &r[2]["deleted_at"]),
        (&json!("x-gone"), &json!(T2))
    );
    assert!(
        r[1]["message"].as_str().is_some_and(|m| m.contains("hash")),
        "{answer}"
    );
    assert!(r[1]["details"].is_object(), "{answer}");
    // The delete ended x1's history; x2 starts the next one.
    assert_eq!(history_ids(&node, &client, &x).await, [json!("x2")]);
    let (status, got) = node.get(&client, &x).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["response"]["data"]["written_by"], "replayer");
    assert_eq!(
        got["response"]["data"]["created_at"], T3,
        "the time it was accepted"
    );
    assert_eq!(
        node.get(&client, &y).await.0,
        404,
        "a refused item stores nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sent_again_changes_nothing_and_is_answered_as_existing() {
    let node = NodeProc::start("batch-again", &[], None, &[]).await;
    let client = reqwest::Client::new();
    let (a, b) = (address("again-a"), address("again-b"));
    let items = [
        put(&a, "a1", &json!("first"), T1),
        delete(&a, "a-gone", T2),
        put(&b, "b1", &json!("kept"), T1),
        delete(&address("again-never"), "n-gone", T1),
    ];
    let (status, first) = send(&node, &client, &items).await;
    assert_eq!(status, 200, "{first}");
    let codes = |answer: &Value| -> Vec<String> {
        results(answer).into_iter().map(|(_, code)| code).collect()
    };
    assert_eq!(
        codes(&first),
        [
            "UCXL-201-CREATED",
            "UCXL-200-OK",
            "UCXL-201-CREATED",
            "UCXL-404-NOT_FOUND"
        ]
    );
    let (status, again) = send(&node, &client, &items).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        codes(&again),
        [
            "UCXL-200-OK",
            "UCXL-200-OK",
            "UCXL-200-OK",
            "UCXL-404-NOT_FOUND"
        ],
        "the same ids: nothing new"
    );
    assert_eq!(node.get(&client, &a).await.0, 404, "still deleted");
    assert_eq!(history_ids(&node, &client, &b).await, [json!("b1")]);
    assert_eq!(node.status(&client).await["records"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_bounded_in_items_and_bytes() {
    let node = NodeProc::start(
        "batch-bounds",
        &[],
        None,
        &[("BZZZ_MAX_BODY_BYTES", "262144")],
    )
    .await;
    let client = reqwest::Client::new();
    let many: Vec<Value> = (0..=ucxl::batch::MAX_ITEMS)
        .map(|i| delete(&address(&format!("m{i}")), "d", T1))
        .collect();
    let (status, refused) = send(&node, &client, &many).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "UCXL-400-BAD_REQUEST");
    assert_eq!(
        refused["error"]["details"],
        json!({"field": "items", "limit": 1000, "provided": 1001})
    );
    let large = [put(
        &address("large"),
        "l1",
        &json!("x".repeat(300_000)),
        T1,
    )];
    let (status, refused) = send(&node, &client, &large).await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["code"], "UCXL-413-PAYLOAD_TOO_LARGE");
    // An item of no known kind refuses the whole batch, before anything is stored.
    let unknown = [
        put(&address("fine"), "f1", &json!(1), T1),
        json!({"move": {"address": address("fine")}}),
    ];
    let (status, refused) = send(&node, &client, &unknown).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(node.get(&client, &address("fine")).await.0, 404);
    assert_eq!(node.get(&client, &address("large")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_node_takes_a_batch_only_with_the_cluster_token() {
    const TOKEN: &str = "the-cluster-token-for-batches";
    let node = NodeProc::start("batch-closed", &[], None, &[("BZZZ_API_TOKEN", TOKEN)]).await;
    let client = reqwest::Client::new();
    let items = [put(&address("closed-batch"), "c1", &json!(1), T1)];
    let (status, refused) = body(
        client
            .post(node.url(ucxl::batch::ROUTE))
            .json(&json!({"items": items}))
            .send()
            .await,
    )
    .await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(node.get(&client, &address("closed-batch")).await.0, 404);
    // The harness sends the node's token.
    let (status, answer) = send(&node, &client, &items).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(results(&answer)[0].1, "UCXL-201-CREATED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_the_other_replicas() {
    let cluster = Cluster::start(3).await;
    let client = reqwest::Client::new();
    let items: Vec<Value> = (0..40)
        .map(|i| {
            put(
                &address(&format!("spread-{i}")),
                &format!("s{i}"),
                &json!(i),
                T1,
            )
        })
        .collect();
    let (status, answer) = send(&cluster.nodes[0], &client, &items).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        results(&answer)
            .iter()
            .all(|(_, code)| code == "UCXL-201-CREATED"),
        "{answer}"
    );
    for i in 0..40 {
        let (status, got) = cluster.nodes[2]
            .get(&client, &address(&format!("spread-{i}")))
            .await;
        assert_eq!(status, 200, "spread-{i}: {got}");
        assert_eq!(got["response"]["data"]["id"], format!("s{i}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_nothing_of_which_reached_a_majority_fails_as_a_whole() {
    let (_held, nowhere) = unreachable_peer();
    let node = NodeProc::start("batch-lonely", &[nowhere], None, &[]).await;
    let client = reqwest::Client::new();
    let items = [
        put(&address("lonely-a"), "a1", &json!(1), T1),
        put(&address("lonely-b"), "b1", &json!(2), T1),
    ];
    let response = node
        .request(&client, Method::POST, ucxl::batch::ROUTE)
        .json(&json!({"items": items}))
        .send()
        .await
        .expect("answered");
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let (status, answer) = body(Ok(response)).await;
    assert_eq!(status, 503, "as a single write would: {answer}");
    assert_eq!(answer["error"]["code"], "UCXL-503-SERVICE_UNAVAILABLE");
}
