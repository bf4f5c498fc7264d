//! A node whose disk fills, over its HTTP API: writes answer 507 with `Retry-After` while
//! the storage refuses them, what was acknowledged before stays readable, and once the
//! storage has room again writes answer 201 without a restart; a batch stores what needs
//! no room and stops an address at its first write the disk refused. The node runs in this
//! process on port 0, over storage that fills on purpose.

use std::collections::HashMap;

use bzzz_node::config::NodeConfig;
use bzzz_node::node::Node;
use bzzz_node::store::{NodeStore, StoreSettings};
use redb_commit::testing::FillableStorage;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct Running {
    base: String,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// A standalone node on `storage`; ready when this returns (its listener is bound).
async fn start(storage: &FillableStorage, dir: &std::path::Path) -> Running {
    let env: HashMap<String, String> = [
        ("BZZZ_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("BZZZ_P2P_ADDR", "/ip4/127.0.0.1/tcp/0".to_owned()),
        ("BZZZ_DATA_DIR", dir.display().to_string()),
        ("BZZZ_NODE_NAME", "full".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = NodeConfig::from_env(&env).expect("valid configuration");
    let store =
        NodeStore::open_with_backend(storage.clone(), StoreSettings::of(&config)).expect("opens");
    let stop = CancellationToken::new();
    let node = Node::start_with_store(&config, store, stop.clone())
        .await
        .expect("starts");
    let base = format!("http://{}", node.http_addr());
    let served = tokio::spawn(node.run_until_stopped());
    Running { base, stop, served }
}

fn address(name: &str) -> String {
    format!("ucxl://a:r@p:t/{name}")
}

async fn put(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    n: u32,
) -> (u16, Option<String>, Value) {
    let response = client
        .put(format!("{base}/ucxi/v1/put"))
        .query(&[("address", address(name))])
        .json(&json!({"content": {"n": n}}))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, retry_after, response.json().await.expect("json"))
}

async fn get(client: &reqwest::Client, base: &str, name: &str) -> (u16, Value) {
    let response = client
        .get(format!("{base}/ucxi/v1/get"))
        .query(&[("address", address(name))])
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_answers_507_and_stores_again_once_it_has_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FillableStorage::new();
    let node = start(&storage, dir.path()).await;
    let client = reqwest::Client::new();

    for n in 0..10 {
        let (status, _, body) = put(&client, &node.base, &format!("kept-{n}"), n).await;
        assert_eq!(status, 201, "{body}");
    }

    storage.fill_after(0);
    for n in 0..3 {
        let (status, retry_after, body) = put(&client, &node.base, "refused", n).await;
        assert_eq!(status, 507, "{body}");
        assert_eq!(
            body["error"]["code"], "UCXL-507-INSUFFICIENT_STORAGE",
            "{body}"
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    assert!(storage.is_full());
    for n in 0..10 {
        let (status, body) = get(&client, &node.base, &format!("kept-{n}")).await;
        assert_eq!(status, 200, "acknowledged writes stay readable: {body}");
        assert_eq!(body["response"]["data"]["content"], json!({"n": n}));
    }
    let (status, body) = get(&client, &node.base, "refused").await;
    assert_eq!(status, 404, "nothing of a refused write was stored: {body}");

    storage.grow();
    let (status, _, body) = put(&client, &node.base, "refused", 7).await;
    assert_eq!(status, 201, "stored again without a restart: {body}");
    let (status, body) = get(&client, &node.base, "refused").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["data"]["content"], json!({"n": 7}));
    assert_eq!(body["response"]["data"]["version"], 1);

    node.stop.cancel();
    node.served.await.expect("joins").expect("served");
}

/// A batch put of a whole version of `name`.
fn batch_put(name: &str, id: &str, n: u32) -> Value {
    let content = json!({"n": n});
    let (hash, size) = ucxl::content_digest(&content).expect("a digest");
    json!({"put": {"address": address(name), "version": {
        "id": id, "created_at": format!("2026-11-24T10:00:0{n}.000001Z"), "hash": hash,
        "size": size, "content": content, "content_type": "application/json", "metadata": {}
    }}})
}

/// Status and per-item codes of a batch.
async fn batch(client: &reqwest::Client, base: &str, items: &[Value]) -> (u16, Vec<String>) {
    let response = client
        .post(format!("{base}{}", ucxl::batch::ROUTE))
        .json(&json!({"items": items}))
        .send()
        .await
        .expect("answers");
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    let codes = body["response"]["data"]["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| r["code"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default();
    (status, codes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_an_address_at_the_first_write_the_disk_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FillableStorage::new();
    let node = start(&storage, dir.path()).await;
    let client = reqwest::Client::new();
    let first = [batch_put("k", "k1", 1)];
    assert_eq!(
        batch(&client, &node.base, &first).await,
        (200, vec!["UCXL-201-CREATED".to_owned()])
    );

    storage.fill_after(0);
    let items = [
        batch_put("k", "k1", 1),
        batch_put("k", "k2", 2),
        batch_put("k", "k3", 3),
    ];
    let (status, codes) = batch(&client, &node.base, &items).await;
    assert_eq!(status, 200);
    assert_eq!(
        codes,
        [
            "UCXL-200-OK",
            "UCXL-507-INSUFFICIENT_STORAGE",
            "UCXL-503-SERVICE_UNAVAILABLE",
        ],
        "k1 needs no room; k2 is refused by the disk; k3 must not land before k2"
    );
    // Nothing stored at all: the batch fails as a whole, as a single write would.
    let (status, _) = batch(&client, &node.base, &items[1..]).await;
    assert_eq!(status, 507);

    storage.grow();
    let (status, codes) = batch(&client, &node.base, &items).await;
    assert_eq!(status, 200);
    assert_eq!(
        codes,
        ["UCXL-200-OK", "UCXL-201-CREATED", "UCXL-201-CREATED"],
        "sent again once the disk has room"
    );
    let (status, body) = get(&client, &node.base, "k").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["data"]["id"], "k3");
    assert_eq!(body["response"]["data"]["version"], 3);

    node.stop.cancel();
    node.served.await.expect("joins").expect("served");
}
