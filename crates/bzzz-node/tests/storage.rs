//! A node whose disk fills, over its HTTP API: writes answer 507 with `Retry-After` while
//! the storage refuses them, what was acknowledged before stays readable, and once the
//! storage has room again writes answer 201 without a restart. The node runs in this
//! process on port 0, over storage that fills on purpose.

use std::collections::HashMap;

use bzzz_node::config::NodeConfig;
use bzzz_node::node::Node;
use bzzz_node::store::NodeStore;
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
        NodeStore::open_with_backend(storage.clone(), config.max_record_bytes).expect("opens");
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
