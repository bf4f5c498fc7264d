//! The change feed over HTTP (`GET /ucxi/v1/watch`): backlog then live changes, the
//! pattern filter, changes replicated from a peer, numbering and feed id across a restart,
//! the retained window (410), another feed's cursor (410) and bad input (400).
//!
//! Streams are read line by line with a deadline per line; the heartbeat sent once the
//! backlog is out marks "caught up", so no test waits on a clock.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::address;
use super::harness::{Cluster, NodeProc, body, enc};

/// Every address of the tests' project.
const EVERYTHING: &str = "ucxl://any:any@bzzz:cluster/**";
/// Longest wait for one line: a heartbeat is due every 500 ms in these tests.
const LINE_DEADLINE: Duration = Duration::from_secs(20);
/// Heartbeats often enough that an idle stream speaks within a test's patience.
const HEARTBEAT: (&str, &str) = ("BZZZ_FEED_HEARTBEAT_MS", "500");

/// An open watch stream.
pub struct Watch {
    response: reqwest::Response,
    buffer: Vec<u8>,
    /// The `X-Bzzz-Feed-Id` header.
    pub feed: String,
}

impl Watch {
    /// Opens `/ucxi/v1/watch?{query}`; an answer that is not a stream is returned as
    /// (status, JSON body).
    pub async fn open(node: &NodeProc, query: &str) -> Result<Self, (u16, Value)> {
        let client = reqwest::Client::new();
        let response = node
            .request(&client, Method::GET, &format!("/ucxi/v1/watch?{query}"))
            .send()
            .await
            .expect("the node answers");
        if response.status() != 200 {
            return Err(body(Ok(response)).await);
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), "application/x-ndjson");
        let feed = header("x-bzzz-feed-id");
        Ok(Self {
            response,
            buffer: Vec::new(),
            feed,
        })
    }

    /// The next line.
    pub async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return serde_json::from_slice(&line).expect("every line is JSON");
            }
            let chunk = tokio::time::timeout(LINE_DEADLINE, self.response.chunk())
                .await
                .expect("a line within the deadline")
                .expect("the stream reads");
            let chunk = chunk.expect("the stream goes on");
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Whether the stream ends cleanly within the deadline (lines before the end skipped).
    pub async fn ends(&mut self) -> bool {
        loop {
            match tokio::time::timeout(LINE_DEADLINE, self.response.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return true,
                Ok(Err(_)) | Err(_) => return false,
            }
        }
    }

    /// The change lines up to the next heartbeat, and that heartbeat.
    pub async fn until_heartbeat(&mut self) -> (Vec<Value>, Value) {
        let mut changes = Vec::new();
        loop {
            let line = self.next().await;
            if line["op"] == "heartbeat" {
                return (changes, line);
            }
            changes.push(line);
        }
    }

    /// The next change line (heartbeats skipped).
    pub async fn next_change(&mut self) -> Value {
        loop {
            let line = self.next().await;
            if line["op"] != "heartbeat" {
                return line;
            }
        }
    }
}

/// `pattern=...&since=...` (and more).
fn query(pattern: &str, rest: &str) -> String {
    format!("pattern={}{rest}", enc(pattern))
}

/// (seq, op, address) of a change line.
fn summary_of(line: &Value) -> (u64, String, String) {
    (
        line["seq"].as_u64().expect("a seq"),
        line["op"].as_str().expect("an op").to_owned(),
        line["address"].as_str().expect("an address").to_owned(),
    )
}

/// (seq, op, address) of change lines.
fn summary(lines: &[Value]) -> Vec<(u64, String, String)> {
    lines.iter().map(summary_of).collect()
}

fn change(seq: u64, op: &str, name: &str) -> (u64, String, String) {
    (seq, op.to_owned(), address(name))
}

/// The feed part of `/status`.
async fn feed_status(node: &NodeProc) -> Value {
    node.status(&reqwest::Client::new()).await["feed"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_the_backlog_then_live_changes_in_order() {
    // With a token (the harness sends it), as a gateway in front of a closed cluster.
    let token = ("BZZZ_API_TOKEN", "watch-token-0123456789abcdef");
    let node = NodeProc::start("watched", &[], None, &[HEARTBEAT, token]).await;
    let client = reqwest::Client::new();
    for name in ["a", "b"] {
        let (status, put) = node
            .put(&client, &address(name), json!({"content": {"name": name}}))
            .await;
        assert_eq!(status, 201, "{put}");
    }
    assert_eq!(node.delete(&client, &address("a")).await.0, 200);

    let mut watch = Watch::open(&node, &query(EVERYTHING, "&since=0"))
        .await
        .expect("a stream");
    let status = feed_status(&node).await;
    assert_eq!(watch.feed, status["id"], "{status}");
    assert_eq!(watch.feed.len(), 32);
    assert_eq!(status["current_seq"], 3, "{status}");
    assert_eq!(status["oldest_seq"], 1, "{status}");
    assert_eq!(status["retain"], 100_000, "{status}");

    let (backlog, caught_up) = watch.until_heartbeat().await;
    assert_eq!(
        summary(&backlog),
        [
            change(1, "put", "a"),
            change(2, "put", "b"),
            change(3, "delete", "a")
        ]
    );
    assert_eq!(caught_up["seq"], 3, "{caught_up}");
    assert!(caught_up["at"].is_string(), "{caught_up}");
    let put = &backlog[0];
    for field in ["id", "created_at", "hash", "size", "content_type"] {
        assert!(!put[field].is_null(), "{field}: {put}");
    }
    assert_eq!(put["version"], 1, "{put}");
    assert!(
        put.get("content").is_none(),
        "no content unless asked: {put}"
    );
    let delete = &backlog[2];
    assert!(delete["deleted_at"].is_string(), "{delete}");
    assert!(delete.get("version").is_none(), "{delete}");

    // Live: a new put arrives with the next number, nothing twice.
    let (status, put) = node
        .put(&client, &address("b"), json!({"content": {"n": 2}}))
        .await;
    assert_eq!(status, 201, "{put}");
    let live = watch.next_change().await;
    assert_eq!(summary_of(&live), change(4, "put", "b"));
    assert_eq!(live["version"], 2, "{live}");
    assert_eq!(live["id"], put["response"]["data"]["id"], "{live}");

    // With content, and starting in the middle.
    let mut with_content = Watch::open(&node, &query(EVERYTHING, "&since=3&content=true"))
        .await
        .expect("a stream");
    let (backlog, caught_up) = with_content.until_heartbeat().await;
    assert_eq!(summary(&backlog), [change(4, "put", "b")]);
    assert_eq!(backlog[0]["content"], json!({"n": 2}));
    assert_eq!(caught_up["seq"], 4);
    node.put(&client, &address("c"), json!({"content": "live"}))
        .await;
    let live = with_content.next_change().await;
    assert_eq!(live["content"], "live", "{live}");
    assert_eq!(live["seq"], 5, "{live}");

    // Without `since`: from now on.
    let mut from_now = Watch::open(&node, &query(EVERYTHING, ""))
        .await
        .expect("a stream");
    let (backlog, caught_up) = from_now.until_heartbeat().await;
    assert!(backlog.is_empty(), "{backlog:?}");
    assert_eq!(caught_up["seq"], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_filters_the_stream_and_heartbeats_pass_what_it_skips() {
    let node = NodeProc::start("filtered", &[], None, &[HEARTBEAT]).await;
    let client = reqwest::Client::new();
    for name in ["docs/one", "other", "docs/two"] {
        let (status, put) = node
            .put(&client, &address(name), json!({"content": 1}))
            .await;
        assert_eq!(status, 201, "{put}");
    }
    let mut watch = Watch::open(
        &node,
        &query("ucxl://any:any@bzzz:cluster/docs/*", "&since=0"),
    )
    .await
    .expect("a stream");
    let (backlog, caught_up) = watch.until_heartbeat().await;
    assert_eq!(
        summary(&backlog),
        [change(1, "put", "docs/one"), change(3, "put", "docs/two")]
    );
    assert_eq!(caught_up["seq"], 3, "the cursor passed what did not match");

    node.put(&client, &address("other"), json!({"content": 2}))
        .await;
    // Nothing is sent for it, but the next heartbeat has passed it.
    let (skipped, heartbeat) = watch.until_heartbeat().await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(heartbeat["seq"], 4, "{heartbeat}");
    node.put(&client, &address("docs/three"), json!({"content": 3}))
        .await;
    let live = watch.next_change().await;
    assert_eq!(summary_of(&live), change(5, "put", "docs/three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_replicated_from_a_peer_appears_in_the_receiving_nodes_feed() {
    let cluster = Cluster::start_with(2, &[HEARTBEAT]).await;
    let client = reqwest::Client::new();
    let (writer, receiver) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut watch = Watch::open(receiver, &query(EVERYTHING, ""))
        .await
        .expect("a stream");
    let (_, caught_up) = watch.until_heartbeat().await;
    let start = caught_up["seq"].as_u64().expect("a seq");

    let (status, put) = writer
        .put(
            &client,
            &address("replicated"),
            json!({"content": "from n1"}),
        )
        .await;
    assert_eq!(status, 201, "{put}");
    let line = watch.next_change().await;
    assert_eq!(summary_of(&line), change(start + 1, "put", "replicated"));
    assert_eq!(line["id"], put["response"]["data"]["id"], "{line}");
    assert_eq!(writer.delete(&client, &address("replicated")).await.0, 200);
    let line = watch.next_change().await;
    assert_eq!(summary_of(&line), change(start + 2, "delete", "replicated"));
    let (writer_feed, receiver_feed) = (feed_status(writer).await, feed_status(receiver).await);
    assert_ne!(
        writer_feed["id"], receiver_feed["id"],
        "each node has its own feed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_feed_id_and_the_numbering() {
    let mut node = NodeProc::start("restarted", &[], None, &[HEARTBEAT]).await;
    let client = reqwest::Client::new();
    for name in ["one", "two"] {
        assert_eq!(
            node.put(&client, &address(name), json!({"content": name}))
                .await
                .0,
            201
        );
    }
    let before = feed_status(&node).await;
    assert_eq!(before["current_seq"], 2, "{before}");
    // A stopping node ends its streams, so they do not hold up its graceful shutdown.
    let mut open = Watch::open(&node, &query(EVERYTHING, ""))
        .await
        .expect("a stream");
    open.until_heartbeat().await;
    node.stop();
    assert!(open.ends().await, "the stream ended cleanly");
    node.restart().await;
    let after = feed_status(&node).await;
    assert_eq!(after["id"], before["id"], "{after}");
    assert_eq!(after["current_seq"], 2, "{after}");

    let feed = before["id"].as_str().expect("an id");
    let mut watch = Watch::open(&node, &query(EVERYTHING, &format!("&since=1&feed={feed}")))
        .await
        .expect("the same feed continues the cursor");
    let (backlog, _) = watch.until_heartbeat().await;
    assert_eq!(summary(&backlog), [change(2, "put", "two")]);
    assert_eq!(
        node.put(&client, &address("three"), json!({"content": 3}))
            .await
            .0,
        201
    );
    let live = watch.next_change().await;
    assert_eq!(
        summary_of(&live),
        change(3, "put", "three"),
        "no number repeated"
    );
}

/// The 410 body's details.
fn gone(answer: Result<Watch, (u16, Value)>) -> Value {
    let Err((status, body)) = answer else {
        panic!("a stream where 410 was due");
    };
    assert_eq!(status, 410, "{body}");
    assert_eq!(body["error"]["code"], "UCXL-410-GONE", "{body}");
    body["error"]["details"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_outside_the_window_or_of_another_feed_are_gone() {
    let node = NodeProc::start(
        "compacted",
        &[],
        None,
        &[HEARTBEAT, ("BZZZ_FEED_RETAIN", "2")],
    )
    .await;
    let client = reqwest::Client::new();
    for n in 1..=5 {
        let key = format!("k{n}");
        let (status, put) = node
            .put_keyed(
                &client,
                &address(&format!("w{n}")),
                &key,
                json!({"content": n}),
            )
            .await;
        assert_eq!(status, 201, "{put}");
    }
    // The writer compacts after answering a batch; a retry goes through the writer after
    // that, so once it is answered the compaction is done.
    let (status, _) = node
        .put_keyed(&client, &address("w5"), "k5", json!({"content": 5}))
        .await;
    assert_eq!(status, 200);
    let status = feed_status(&node).await;
    assert_eq!(
        (
            &status["oldest_seq"],
            &status["current_seq"],
            &status["retain"]
        ),
        (&json!(4), &json!(5), &json!(2)),
        "{status}"
    );
    let feed = status["id"].as_str().expect("an id").to_owned();

    let details = gone(Watch::open(&node, &query(EVERYTHING, "&since=0")).await);
    assert_eq!(details["reason"], "compacted", "{details}");
    assert_eq!(
        (&details["oldest_seq"], &details["current_seq"]),
        (&json!(4), &json!(5))
    );
    assert_eq!(details["feed"], feed.as_str());
    gone(Watch::open(&node, &query(EVERYTHING, "&since=2")).await);
    let details = gone(Watch::open(&node, &query(EVERYTHING, "&since=6")).await);
    assert_eq!(details["reason"], "ahead", "{details}");

    let mut watch = Watch::open(&node, &query(EVERYTHING, &format!("&since=3&feed={feed}")))
        .await
        .expect("the oldest retained entry onwards");
    let (backlog, _) = watch.until_heartbeat().await;
    assert_eq!(
        summary(&backlog),
        [change(4, "put", "w4"), change(5, "put", "w5")]
    );

    let other = "0123456789abcdef0123456789abcdef";
    let details =
        gone(Watch::open(&node, &query(EVERYTHING, &format!("&since=4&feed={other}"))).await);
    assert_eq!(details["reason"], "feed_changed", "{details}");
    assert_eq!(details["feed"], feed.as_str());
    let details = gone(Watch::open(&node, &query(EVERYTHING, "&since=4&feed=not-hex")).await);
    assert_eq!(details["reason"], "feed_changed", "{details}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_watch_input_is_400_before_any_stream() {
    let node = NodeProc::start("strict", &[], None, &[]).await;
    let cases = [
        (
            query("ucxl://any:any@bzzz:cluster/a b", "&since=0"),
            "UCXL-400-INVALID_ADDRESS",
        ),
        (query("not a pattern", ""), "UCXL-400-INVALID_ADDRESS"),
        (query(EVERYTHING, "&since=abc"), "UCXL-400-BAD_REQUEST"),
        (query(EVERYTHING, "&since=-1"), "UCXL-400-BAD_REQUEST"),
        (query(EVERYTHING, "&since=1.5"), "UCXL-400-BAD_REQUEST"),
        (query(EVERYTHING, "&content=maybe"), "UCXL-400-BAD_REQUEST"),
        (query(EVERYTHING, "&limit=3"), "UCXL-400-BAD_REQUEST"),
        (query(EVERYTHING, "&heartbeat_ms=5"), "UCXL-400-BAD_REQUEST"),
        (
            query(EVERYTHING, "&heartbeat_ms=3600001"),
            "UCXL-400-BAD_REQUEST",
        ),
        ("since=0".to_owned(), "UCXL-400-BAD_REQUEST"),
    ];
    for (query, code) in &cases {
        let Err((status, body)) = Watch::open(&node, query).await else {
            panic!("{query}: a stream where 400 was due");
        };
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["code"], *code, "{query}: {body}");
        assert_eq!(body["error"]["path"], "/ucxi/v1/watch", "{query}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_may_ask_for_heartbeats_more_often() {
    // The node's own interval is an hour: only the asked-for one can speak in time.
    let node = NodeProc::start(
        "beating",
        &[],
        None,
        &[("BZZZ_FEED_HEARTBEAT_MS", "3600000")],
    )
    .await;
    let mut watch = Watch::open(&node, &query(EVERYTHING, "&heartbeat_ms=20"))
        .await
        .expect("a stream");
    let (_, caught_up) = watch.until_heartbeat().await;
    // Each within the line deadline (seconds), far below the node's hour.
    for _ in 0..3 {
        let line = watch.next().await;
        assert_eq!(line["op"], "heartbeat");
        assert_eq!(line["seq"], caught_up["seq"]);
    }
}
