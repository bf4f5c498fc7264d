//! `GET /v1/watch`: events and their data, bad input, limits, the initial listing, content,
//! slow consumers, grants, fallback writes, and once-only delivery from a real cluster
//! with concurrent writers. (Resuming across restarts and node loss: `watch_resume`.)

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rustle_gateway::auth::policy::key_digest;
use rustle_gateway::config::BackendMode;
use rustle_gateway::startup::Options;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::faults::{FaultNode, Mode};
use super::helpers::{TestApp, enc, json, project, spawn_app, spawn_app_with, test_config};
use super::nodes::{Cluster, wait_until};
use super::resilience::{cluster_config, hybrid_gateway};
use super::sse::{NoEvent, Stream};

const EVERYTHING: &str = "ucxl://any:any@any:any/**";
const WAIT: Duration = Duration::from_secs(10);

fn watch_url(app: &TestApp, pattern: &str, extra: &str) -> String {
    app.url(&format!("/v1/watch?pattern={}{extra}", enc(pattern)))
}

async fn open(app: &TestApp, pattern: &str, extra: &str) -> Stream {
    Stream::open(&watch_url(app, pattern, extra), &[])
        .await
        .expect("a stream")
}

async fn put(app: &TestApp, address: &str, content: Value) -> Value {
    let (status, body) = json(app.put(address, json!({"content": content})).await).await;
    assert!(status == 201 || status == 202, "{status} {body}");
    body["response"]["data"].clone()
}

#[tokio::test]
async fn changes_are_put_and_delete_events_with_the_change_and_a_resume_id() {
    let mut config = test_config();
    config.watch_heartbeat = Duration::from_millis(20);
    let app = spawn_app_with(config, Options::default()).await;
    let p = project();
    let mut stream = open(&app, &format!("ucxl://any:any@{p}:any/**"), "").await;
    let address = format!("ucxl://agent:tester@{p}:t/notes/a");
    let written = put(&app, &address, json!({"n": 1})).await;
    put(&app, &format!("ucxl://agent:tester@other{p}:t/x"), json!(0)).await;
    let (status, deleted) = json(app.delete(&address).await).await;
    assert_eq!(status, 200, "{deleted}");

    let first = stream.next(WAIT).await.expect("a put");
    assert_eq!(first.event, "put");
    let data = first.json();
    assert_eq!(data["op"], "put");
    assert_eq!(data["address"], address);
    assert_eq!(data["id"], written["id"]);
    assert_eq!(data["version"], 1);
    assert_eq!(data["hash"], written["hash"]);
    assert_eq!(data["size"], written["size"]);
    assert_eq!(data["content_type"], "application/json");
    assert_eq!(data["created_at"], written["created_at"]);
    assert!(data.get("content").is_none(), "no content unless asked");
    assert!(first.id.as_deref().is_some_and(|id| id.starts_with("w1.")));

    let second = stream.next(WAIT).await.expect("a delete");
    assert_eq!(second.event, "delete", "the other project is not watched");
    assert_eq!(second.json()["id"], deleted["response"]["data"]["id"]);
    assert_eq!(
        second.json()["deleted_at"],
        deleted["response"]["data"]["deleted_at"]
    );
    assert_ne!(first.id, second.id);

    // Idle: keep-alive comments, no events.
    assert_eq!(
        stream.next(Duration::from_millis(200)).await,
        Err(NoEvent::Quiet)
    );
    assert!(stream.comments > 0, "keep-alive comments while idle");

    // Resuming after the first event gives the delete only.
    let mut resumed = Stream::open(
        &watch_url(&app, &format!("ucxl://any:any@{p}:any/**"), ""),
        &[("last-event-id", first.id.as_deref().unwrap_or_default())],
    )
    .await
    .expect("a stream");
    let again = resumed.next(WAIT).await.expect("the delete");
    assert_eq!(again.event, "delete");
    assert_eq!(again.id, second.id);
    assert_eq!(
        resumed.next(Duration::from_millis(100)).await,
        Err(NoEvent::Quiet)
    );
    // `?cursor=` does the same.
    let cursor = enc(first.id.as_deref().unwrap_or_default());
    let mut by_query = open(
        &app,
        &format!("ucxl://any:any@{p}:any/**"),
        &format!("&cursor={cursor}"),
    )
    .await;
    assert_eq!(by_query.next(WAIT).await.expect("the delete").id, second.id);
}

#[tokio::test]
async fn bad_input_is_refused_before_the_stream_starts() {
    let app = spawn_app().await;
    for (query, code) in [
        ("pattern=ucxl://nope", "UCXL-400"),
        ("pattern=", "UCXL-400"),
        (
            "pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**&cursor=garbage",
            "UCXL-400-BAD_REQUEST",
        ),
        (
            "pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**&cursor=w1.zz-1",
            "UCXL-400-BAD_REQUEST",
        ),
        (
            "pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**&initial=maybe",
            "UCXL-400-BAD_REQUEST",
        ),
        (
            "pattern=ucxl%3A%2F%2Fany%3Aany%40any%3Aany%2F**&since=5",
            "UCXL-400-BAD_REQUEST",
        ),
        ("cursor=w1", "UCXL-400-BAD_REQUEST"),
    ] {
        let (status, body) = json(app.get_path(&format!("/v1/watch?{query}")).await).await;
        assert_eq!(status, 400, "{query}: {body}");
        let got = body["error"]["code"].as_str().unwrap_or_default();
        assert!(got.starts_with(code), "{query}: {body}");
    }
    for header in ["w1.", "x", &"w1".repeat(5000), "w1.pfffffffffffffffff"] {
        let refused = Stream::open(
            &watch_url(&app, EVERYTHING, ""),
            &[("last-event-id", header)],
        )
        .await;
        let Err((status, body)) = refused else {
            panic!("{header:?} accepted");
        };
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["details"]["field"], "Last-Event-ID");
    }
    // A well-formed cursor of feeds this gateway does not read (another cluster, or a
    // mock-mode gateway before a restart): gone, said in the stream.
    put(&app, &format!("ucxl://a:b@{}:t/x", project()), json!(1)).await;
    let mut other = Stream::open(
        &watch_url(&app, EVERYTHING, ""),
        &[("last-event-id", "w1.0123456789abcdef0123456789abcdef-7")],
    )
    .await
    .expect("a stream");
    let gone = other.next(WAIT).await.expect("an error event");
    assert_eq!(gone.event, "error");
    assert_eq!(gone.json()["error"]["code"], "UCXL-410-GONE");
    assert_eq!(gone.json()["error"]["details"]["reason"], "unknown_feeds");
    assert_eq!(other.next(WAIT).await, Err(NoEvent::Ended));
}

#[tokio::test]
async fn streams_beyond_the_limit_are_refused_503_with_retry_after() {
    let mut config = test_config();
    config.max_watches = 2;
    let app = spawn_app_with(config, Options::default()).await;
    let one = open(&app, EVERYTHING, "").await;
    let _two = open(&app, EVERYTHING, "").await;
    let response = app
        .client
        .get(watch_url(&app, EVERYTHING, ""))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["details"]["max_watches"], 2);
    drop(one);
    // The slot comes back when the client goes.
    assert!(
        wait_until(WAIT, || async {
            let (_, status) = json(app.get_path("/v1/status").await).await;
            status["response"]["data"]["watch"]["active"] == 1
        })
        .await
    );
    let _three = open(&app, EVERYTHING, "").await;
}

#[tokio::test]
async fn initial_lists_every_address_then_synced_then_live_changes_once() {
    let app = spawn_app().await;
    let p = project();
    let pattern = format!("ucxl://any:any@{p}:any/**");
    let a = format!("ucxl://agent:tester@{p}:t/a");
    let b = format!("ucxl://agent:tester@{p}:t/b");
    let gone = format!("ucxl://agent:tester@{p}:t/gone");
    put(&app, &a, json!(1)).await;
    let a2 = put(&app, &a, json!(2)).await;
    let b1 = put(&app, &b, json!("b")).await;
    put(&app, &gone, json!(0)).await;
    assert_eq!(json(app.delete(&gone).await).await.0, 200);

    let mut stream = open(&app, &pattern, "&initial=true").await;
    let first = stream.next(WAIT).await.expect("a put");
    let second = stream.next(WAIT).await.expect("a put");
    for (event, expected) in [(&first, &a2), (&second, &b1)] {
        assert_eq!(event.event, "put");
        assert_eq!(event.id, None, "listing events carry no id");
        assert_eq!(event.json()["id"], expected["id"]);
        assert_eq!(event.json()["hash"], expected["hash"]);
    }
    let synced = stream.next(WAIT).await.expect("synced");
    assert_eq!(synced.event, "synced");
    assert_eq!(synced.json()["initial"], 2);
    assert_eq!(synced.json()["cursor"].as_str(), synced.id.as_deref());
    let b2 = put(&app, &b, json!("b2")).await;
    let live = stream.next(WAIT).await.expect("live");
    assert_eq!(live.json()["id"], b2["id"]);
    assert_eq!(
        stream.next(Duration::from_millis(100)).await,
        Err(NoEvent::Quiet)
    );
}

#[tokio::test]
async fn content_is_included_when_asked_and_omitted_above_the_answer_limit() {
    let mut config = test_config();
    config.max_answer_bytes = 1024;
    config.max_body_bytes = 1 << 20;
    let app = spawn_app_with(config, Options::default()).await;
    let p = project();
    let mut stream = open(&app, &format!("ucxl://any:any@{p}:any/**"), "&content=true").await;
    put(
        &app,
        &format!("ucxl://a:b@{p}:t/small"),
        json!({"k": [1, 2]}),
    )
    .await;
    put(
        &app,
        &format!("ucxl://a:b@{p}:t/big"),
        json!("x".repeat(4000)),
    )
    .await;
    let small = stream.next(WAIT).await.expect("put").json();
    assert_eq!(small["content"], json!({"k": [1, 2]}));
    assert!(small.get("content_omitted").is_none());
    let big = stream.next(WAIT).await.expect("put").json();
    assert!(big.get("content").is_none());
    assert_eq!(big["content_omitted"], true);
}

/// A client that asks for a stream and never reads it, with a small receive buffer.
async fn stalled_client(app: &TestApp, path: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("buffer size");
    let mut stream = socket.connect(app.addr).await.expect("connects");
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {}\r\naccept: text/event-stream\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    stream
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_dropped_with_an_error_and_the_others_go_on() {
    let mut config = test_config();
    config.watch_buffer = 4;
    let app = spawn_app_with(config, Options::default()).await;
    let p = project();
    let pattern = format!("ucxl://any:any@{p}:any/**");
    let mut reader = open(&app, &pattern, "").await;
    // Content makes each of the stalled client's events large, so the socket fills soon.
    let path = format!("/v1/watch?pattern={}&content=true", enc(&pattern));
    let mut stalled = stalled_client(&app, &path).await;
    let big = "y".repeat(60_000);
    let before = slow_drops(&app).await;
    let mut dropped = false;
    let mut written = 0;
    while written < 400 && !dropped {
        put(&app, &format!("ucxl://a:b@{p}:t/k{written}"), json!(big)).await;
        written += 1;
        let event = reader.next(WAIT).await.expect("the reader keeps up");
        assert_eq!(event.event, "put");
        dropped = slow_drops(&app).await > before;
    }
    assert!(dropped, "the stalled watcher is dropped ({written} writes)");
    // The others go on.
    put(&app, &format!("ucxl://a:b@{p}:t/after"), json!(1)).await;
    assert_eq!(
        reader.next(WAIT).await.expect("still streaming").json()["address"],
        format!("ucxl://a:b@{p}:t/after")
    );
    // The stalled client, reading at last, finds the error event and the end.
    let mut text = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut chunk = vec![0u8; 1 << 16];
        // Until the last chunk of the chunked body.
        while !text.ends_with(b"\r\n0\r\n\r\n") {
            let n = stalled.read(&mut chunk).await.expect("reads");
            if n == 0 {
                break;
            }
            text.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "the stream ends");
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("event: error"), "an error event");
    assert!(text.contains("UCXL-429-TOO_MANY_REQUESTS"), "says why");
}

/// Watchers dropped as too slow so far (in this test process).
async fn slow_drops(app: &TestApp) -> u64 {
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("rustle_watchers_dropped_total{reason=\"slow\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const ALICE: &str = "rk_test_watch_alice_0001";
const BOB: &str = "rk_test_watch_bob_000001";

#[tokio::test]
async fn events_reach_only_callers_granted_watch_on_their_address() {
    let policy = format!(
        r#"[[principals]]
name = "alice"
key_sha256 = "{}"
roles = ["alice"]

[[principals]]
name = "bob"
key_sha256 = "{}"
roles = ["bob"]

[roles.alice]
grants = [{{ ops = ["read", "write", "watch"], pattern = "ucxl://any:any@alpha:any/**" }},
          {{ ops = ["write"], pattern = "ucxl://any:any@beta:any/**" }}]

[roles.bob]
grants = [{{ ops = ["read", "write"], pattern = "ucxl://any:any@any:any/**" }}]
"#,
        hex::encode(key_digest(ALICE)),
        hex::encode(key_digest(BOB))
    );
    let (app, _dir) = super::mcp::policy_app(&policy, &[]).await;
    let bearer = |key: &str| format!("Bearer {key}");
    let refused = Stream::open(
        &watch_url(&app, EVERYTHING, ""),
        &[("authorization", &bearer(BOB))],
    )
    .await;
    let Err((status, body)) = refused else {
        panic!("bob may not watch");
    };
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["operation"], "watch");
    let anonymous = Stream::open(&watch_url(&app, EVERYTHING, ""), &[]).await;
    assert!(matches!(anonymous, Err((401, _))));

    let mut stream = Stream::open(
        &watch_url(&app, EVERYTHING, ""),
        &[("authorization", &bearer(ALICE))],
    )
    .await
    .expect("alice may watch");
    for (address, key) in [
        ("ucxl://a:b@beta:t/hidden", ALICE),
        ("ucxl://a:b@alpha:t/seen", ALICE),
    ] {
        let response = app
            .client
            .put(app.envelope_url(address))
            .header("authorization", bearer(key))
            .json(&json!({"content": 1}))
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), 201);
    }
    let event = stream.next(WAIT).await.expect("an event");
    assert_eq!(event.json()["address"], "ucxl://a:b@alpha:t/seen");
    assert_eq!(event.json()["written_by"], "alice");
    assert_eq!(
        stream.next(Duration::from_millis(100)).await,
        Err(NoEvent::Quiet)
    );
}

#[tokio::test]
async fn fallback_writes_are_delivered_at_once_and_once_when_replayed() {
    let node = super::nodes::NodeProc::start("watched", &[], None, &[]).await;
    let proxy = FaultNode::start(Mode::Unavailable, Some(node.url(""))).await;
    let mut config = cluster_config(std::slice::from_ref(&proxy.url), BackendMode::Hybrid);
    config.health_interval = Duration::from_millis(50);
    let app = spawn_app_with(config, Options::default()).await;
    let p = project();
    let pattern = format!("ucxl://any:any@{p}:any/**");
    let mut stream = open(&app, &pattern, "").await;
    for n in 0..3 {
        let (status, body) = json(
            app.put(&format!("ucxl://a:b@{p}:t/k{n}"), json!({"content": n}))
                .await,
        )
        .await;
        assert_eq!(status, 202, "journaled: {body}");
        let event = stream.next(WAIT).await.expect("delivered from the gateway");
        assert_eq!(event.json()["id"], body["response"]["data"]["id"]);
    }
    proxy.set(Mode::Healthy);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let (_, status) = json(app.get_path("/v1/status").await).await;
            let data = &status["response"]["data"];
            data["journal"]["pending"] == 0
                && data["watch"]["feeds"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f["state"] == "streaming"))
        })
        .await,
        "replayed, and the node's feed is read"
    );
    let after = put(&app, &format!("ucxl://a:b@{p}:t/after"), json!(1)).await;
    let next = stream.next(WAIT).await.expect("the next change");
    assert_eq!(
        next.json()["id"],
        after["id"],
        "the replayed writes are not delivered again"
    );
}

#[tokio::test]
async fn every_acknowledged_write_reaches_a_watcher_exactly_once_in_order() {
    const WRITERS: usize = 4;
    const EACH: usize = 15;
    let cluster = Cluster::start(3).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let app = hybrid_gateway(&urls).await;
    let p = project();
    let mut stream = open(&app, &format!("ucxl://any:any@{p}:any/**"), "").await;
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let client = app.client.clone();
        let url = app.url("/v1/envelopes?address=");
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let address = format!("ucxl://w{w}:tester@{p}:t/k{w}");
            let mut ids = Vec::new();
            for n in 0..EACH {
                let response = client
                    .put(format!("{url}{}", enc(&address)))
                    .json(&json!({"content": n}))
                    .send()
                    .await
                    .expect("put");
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.expect("json");
                ids.push(
                    body["response"]["data"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            (address, ids)
        }));
    }
    // Some writes straight at the nodes: the watch sees them too.
    let client = reqwest::Client::new();
    let mut direct = Vec::new();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let address = format!("ucxl://direct:tester@{p}:t/n{i}");
        let (status, body) = node.put(&client, &address, json!({"content": i})).await;
        assert!(status == 201, "{body}");
        direct.push((
            address,
            body["response"]["data"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ));
    }
    let mut expected: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in tasks {
        let (address, ids) = task.await.expect("writer");
        expected.insert(address, ids);
    }
    for (address, id) in direct {
        expected.entry(address).or_default().push(id);
    }
    let total: usize = expected.values().map(Vec::len).sum();
    let events = stream.changes(total, Duration::from_secs(30)).await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut once = HashSet::new();
    for event in &events {
        assert_eq!(event.event, "put", "{event:?}");
        let data = event.json();
        let key = (
            data["address"].as_str().unwrap_or_default().to_owned(),
            data["id"].as_str().unwrap_or_default().to_owned(),
        );
        assert!(once.insert(key.clone()), "delivered twice: {key:?}");
        seen.entry(key.0).or_default().push(key.1);
    }
    assert_eq!(seen, expected, "every write once, in each address's order");
    assert_eq!(
        stream.next(Duration::from_millis(300)).await,
        Err(NoEvent::Quiet),
        "and nothing else"
    );
}

#[tokio::test]
async fn content_is_given_even_when_the_event_comes_before_the_replica_that_answers_reads() {
    let cluster = Cluster::start(3).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let watcher = hybrid_gateway(&urls).await;
    let writer = hybrid_gateway(&urls).await;
    let p = project();
    let address = format!("ucxl://a:b@{p}:t/x");
    put(&writer, &address, json!("before")).await;
    let mut stream = open(
        &watcher,
        &format!("ucxl://any:any@{p}:any/**"),
        "&content=true",
    )
    .await;
    for n in 0..15 {
        put(&writer, &address, json!({"after": n})).await;
        let event = stream.next(WAIT).await.expect("a put").json();
        assert_eq!(event["content"], json!({"after": n}), "{event}");
        assert!(event.get("content_omitted").is_none(), "{event}");
    }
}
