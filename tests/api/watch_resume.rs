//! Resuming `GET /v1/watch` with real processes: `bzzz-node` clusters, gateway processes
//! killed with SIGKILL and started again, a node killed mid-run, two gateway replicas, and
//! nodes that compacted their feeds.
//!
//! Every test keeps a ledger of the writes acknowledged (through a gateway, or directly at
//! a node) and checks that the watcher's sessions together got each of them exactly once,
//! every address's changes in the order they were written, and nothing else. A session is
//! read up to a sentinel write made last, so "nothing else" needs no quiet period: what
//! would come twice comes before the sentinel.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::helpers::{enc, project};
use super::nodes::{Cluster, NodeProc, body, wait_until};
use super::process::spawn_listening;
use super::resilience::hybrid_gateway;
use super::sse::{Event, NoEvent, Stream};

/// Longest wait for anything (an event, feeds caught up): only reached when broken.
const PATIENCE: Duration = Duration::from_secs(20);

/// A change's identity: its address and its id (a version's or a delete's).
type Key = (String, String);

fn address(project: &str, k: usize) -> String {
    format!("ucxl://agent:tester@bzzz:{project}/k{k}")
}

fn watch_url(base: &str, project: &str) -> String {
    let pattern = format!("ucxl://any:any@bzzz:{project}/**");
    format!("{base}/v1/watch?pattern={}", enc(&pattern))
}

/// A gateway process over `nodes` (hybrid mode), killed when dropped.
struct Gateway {
    child: Option<std::process::Child>,
    base: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.sigkill();
    }
}

impl Gateway {
    /// Starts the binary over `nodes` with `data` as its data directory and `extra`
    /// environment; returns once it listens.
    fn start(nodes: &[&NodeProc], data: &tempfile::TempDir, extra: &[(&str, &str)]) -> Self {
        let endpoints: Vec<String> = nodes.iter().map(|n| n.url("")).collect();
        let endpoints = endpoints.join(",");
        let data_dir = data.path().display().to_string();
        let journal = data.path().join("journal").display().to_string();
        let mut env = vec![
            ("RUSTLE_BACKEND_MODE", "hybrid"),
            ("RUSTLE_BZZZ_ENDPOINTS", endpoints.as_str()),
            ("RUSTLE_DATA_DIR", data_dir.as_str()),
            ("RUSTLE_JOURNAL_DIR", journal.as_str()),
            ("RUSTLE_AUDIT_LOG", "off"),
            ("RUSTLE_LOCAL_STORE", "memory"),
        ];
        env.extend_from_slice(extra);
        let (child, addr) = spawn_listening(&env);
        Self {
            child: Some(child),
            base: format!("http://{addr}"),
        }
    }

    /// SIGKILL, as a crash: no shutdown, streams cut.
    fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Acknowledged writes, in the order acknowledged (each address is written by one writer
/// at a time, so each address's writes are in the order written).
#[derive(Debug, Default)]
struct Ledger(Vec<Key>);

impl Ledger {
    fn extend(&mut self, keys: impl IntoIterator<Item = Key>) {
        self.0.extend(keys);
    }
}

/// The key of an acknowledgement (`data.address` is canonical, as events say it).
fn acknowledged(status: u16, answer: &Value, expected: u16, asked: &str) -> Key {
    assert_eq!(status, expected, "{answer}");
    let data = &answer["response"]["data"];
    let address = data["address"].as_str().unwrap_or(asked).to_owned();
    let id = data["id"].as_str().expect("an id").to_owned();
    (address, id)
}

/// `PUT /v1/envelopes` through the gateway at `base`: 201, the write's key.
async fn put_via(client: &reqwest::Client, base: &str, address: &str, n: usize) -> Key {
    let url = format!("{base}/v1/envelopes?address={}", enc(address));
    let (status, answer) = body(
        client
            .put(url)
            .json(&json!({"content": {"n": n}}))
            .send()
            .await,
    )
    .await;
    acknowledged(status, &answer, 201, address)
}

/// `DELETE /v1/envelopes` through the gateway at `base`: 200, the delete's key.
async fn delete_via(client: &reqwest::Client, base: &str, address: &str) -> Key {
    let url = format!("{base}/v1/envelopes?address={}", enc(address));
    let (status, answer) = body(client.delete(url).send().await).await;
    acknowledged(status, &answer, 200, address)
}

/// A put directly at `node` (past every gateway): 201, the write's key.
async fn put_at(client: &reqwest::Client, node: &NodeProc, address: &str, n: usize) -> Key {
    let (status, answer) = node
        .put(client, address, json!({"content": {"direct": n}}))
        .await;
    acknowledged(status, &answer, 201, address)
}

/// `writers` concurrent tasks, each writing `each` versions through `base` to addresses of
/// its own (`k<first + 2w>` and `k<first + 2w + 1>`, alternately); the first writer ends
/// with a delete. Returns every acknowledged write.
async fn burst(base: &str, project: &str, writers: usize, each: usize, first: usize) -> Vec<Key> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let base = base.to_owned();
            let mine = [
                address(project, first + 2 * w),
                address(project, first + 2 * w + 1),
            ];
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut keys = Vec::new();
                for i in 0..each {
                    keys.push(put_via(&client, &base, &mine[i % 2], i).await);
                }
                if w == 0 {
                    keys.push(delete_via(&client, &base, &mine[0]).await);
                }
                keys
            })
        })
        .collect();
    let mut keys = Vec::new();
    for task in tasks {
        keys.extend(task.await.expect("a writer"));
    }
    keys
}

/// The key and data of a change event.
fn key_of(event: &Event) -> Key {
    let data = event.json();
    let field = |name: &str| {
        data[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} in {event:?}"))
            .to_owned()
    };
    (field("address"), field("id"))
}

/// Opens a watch at `base` resuming after `cursor` (Last-Event-ID), or from now.
async fn open(base: &str, project: &str, cursor: Option<&str>) -> Stream {
    let url = watch_url(base, project);
    let headers: Vec<(&str, &str)> = cursor.map(|c| ("Last-Event-ID", c)).into_iter().collect();
    match Stream::open(&url, &headers).await {
        Ok(stream) => stream,
        Err((status, answer)) => panic!("the watch answered {status}: {answer}"),
    }
}

/// Exactly `n` change events (each with an id), nothing else.
async fn read_n(stream: &mut Stream, n: usize) -> Vec<Event> {
    let events = stream.changes(n, PATIENCE).await;
    let changes: Vec<&Event> = events
        .iter()
        .filter(|e| e.event == "put" || e.event == "delete")
        .collect();
    assert_eq!(
        changes.len(),
        events.len(),
        "only change events: {events:#?}"
    );
    assert_eq!(events.len(), n, "{n} change events: {events:#?}");
    for e in &events {
        assert!(
            e.id.as_deref().is_some_and(|id| id.starts_with("w1")),
            "{e:?}"
        );
    }
    events
}

/// Change events up to and including the one of `last`; fails on anything else (an error
/// event, the end, silence).
async fn read_through(stream: &mut Stream, last: &Key) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        let event = match stream.next(PATIENCE).await {
            Ok(event) => event,
            Err(no) => panic!("{no:?} before {last:?}; got {:#?}", keys(&events)),
        };
        assert!(
            event.event == "put" || event.event == "delete",
            "only change events before {last:?}: {event:?}"
        );
        assert!(event.id.is_some(), "{event:?}");
        let done = key_of(&event) == *last;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn keys(events: &[Event]) -> Vec<Key> {
    events.iter().map(key_of).collect()
}

fn last_id(events: &[Event]) -> String {
    events
        .last()
        .and_then(|e| e.id.clone())
        .expect("an event with an id")
}

/// The sessions together delivered every acknowledged write exactly once and nothing else,
/// each address's changes in the order written, versions rising.
fn assert_exactly_once(ledger: &Ledger, sessions: &[&[Event]]) {
    let delivered: Vec<&Event> = sessions.iter().flat_map(|s| s.iter()).collect();
    let mut count: HashMap<Key, usize> = HashMap::new();
    for e in &delivered {
        *count.entry(key_of(e)).or_default() += 1;
    }
    let twice: Vec<&Key> = count
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k)
        .collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:#?}");
    let written: HashSet<&Key> = ledger.0.iter().collect();
    let missing: Vec<&Key> = ledger
        .0
        .iter()
        .filter(|k| !count.contains_key(*k))
        .collect();
    let extra: Vec<&Key> = count.keys().filter(|k| !written.contains(k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nnot written {extra:#?}\n({} written, {} delivered)",
        ledger.0.len(),
        delivered.len()
    );
    // Per address: the order written, and versions rising.
    let mut order: HashMap<&str, Vec<&str>> = HashMap::new();
    for (address, id) in &ledger.0 {
        order.entry(address).or_default().push(id);
    }
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    let mut versions: HashMap<String, u64> = HashMap::new();
    for e in &delivered {
        let (address, id) = key_of(e);
        if let Some(v) = e.json()["version"].as_u64() {
            let last = versions.insert(address.clone(), v).unwrap_or(0);
            assert!(v > last, "{address}: version {v} after {last}");
        }
        seen.entry(address).or_default().push(id);
    }
    for (address, ids) in order {
        assert_eq!(
            seen[address].iter().map(String::as_str).collect::<Vec<_>>(),
            ids,
            "{address}: the order written"
        );
    }
}

/// Resuming at `base` from the id of an event in the middle of `session` (which ends with
/// its last change) sends exactly the events after it.
async fn assert_resumes_inside(base: &str, project: &str, session: &[Event]) {
    assert!(session.len() >= 2, "{session:#?}");
    let mid = session.len() / 2;
    let mut again = open(base, project, session[mid - 1].id.as_deref()).await;
    let last = key_of(session.last().expect("an event"));
    let tail = read_through(&mut again, &last).await;
    assert_eq!(keys(&tail), keys(&session[mid..]));
}

/// Waits until the gateway at `base` has read every feed of `nodes` up to its last entry.
async fn caught_up(base: &str, nodes: &[&NodeProc]) {
    let client = reqwest::Client::new();
    let done = wait_until(PATIENCE, || async {
        let (_, status) = body(client.get(format!("{base}/v1/status")).send().await).await;
        let feeds = status["response"]["data"]["watch"]["feeds"].clone();
        for node in nodes {
            let feed = node.status(&client).await["feed"].clone();
            let read = feeds.as_array().and_then(|f| {
                f.iter()
                    .find(|s| s["feed"] == feed["id"])
                    .and_then(|s| s["seq"].as_u64())
            });
            if read < feed["current_seq"].as_u64() {
                return false;
            }
        }
        true
    })
    .await;
    let (_, status) = body(client.get(format!("{base}/v1/status")).send().await).await;
    assert!(
        done,
        "the gateway did not read every feed: {}",
        status["response"]["data"]["watch"]
    );
}

/// The error event a stream ends with: `UCXL-410-GONE`, then the end.
async fn assert_gone(stream: &mut Stream) -> Value {
    let event = stream.next(PATIENCE).await.expect("an event");
    assert_eq!(event.event, "error", "{event:?}");
    let error = event.json()["error"].clone();
    assert_eq!(error["code"], "UCXL-410-GONE", "{event:?}");
    assert_eq!(error["path"], "/v1/watch", "{event:?}");
    assert!(event.id.is_none(), "{event:?}");
    assert_eq!(stream.next(PATIENCE).await, Err(NoEvent::Ended));
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_reconnects_gets_exactly_the_changes_it_missed() {
    let cluster = Cluster::start(3).await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let app = hybrid_gateway(&urls).await;
    let base = app.url("");
    let project = project();
    let client = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut first = open(&base, &project, None).await;
    ledger.extend(burst(&base, &project, 3, 4, 0).await);
    ledger.extend([
        put_at(&client, &cluster.nodes[1], &address(&project, 100), 0).await,
        put_at(&client, &cluster.nodes[2], &address(&project, 101), 0).await,
    ]);
    // Part of what was written, then the connection goes; what it had queued is lost.
    let seen = read_n(&mut first, 7).await;
    drop(first);
    let cursor = last_id(&seen);

    let (second_burst, direct) = tokio::join!(burst(&base, &project, 2, 4, 10), async {
        let client = reqwest::Client::new();
        vec![
            put_at(&client, &cluster.nodes[0], &address(&project, 100), 1).await,
            put_at(&client, &cluster.nodes[2], &address(&project, 102), 0).await,
        ]
    });
    ledger.extend(second_burst);
    ledger.extend(direct);
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    caught_up(&base, &nodes).await;

    let mut second = open(&base, &project, Some(&cursor)).await;
    let sentinel = put_via(&client, &base, &address(&project, 200), 0).await;
    ledger.extend([sentinel.clone()]);
    let rest = read_through(&mut second, &sentinel).await;
    assert_exactly_once(&ledger, &[&seen, &rest]);

    // The same cursor once more, as ?cursor=: the same backlog.
    let url = format!("{}&cursor={}", watch_url(&base, &project), enc(&cursor));
    let mut again = Stream::open(&url, &[]).await.expect("a stream");
    let replay = read_through(&mut again, &sentinel).await;
    assert_eq!(keys(&replay), keys(&rest));
}

/// Reads what reaches the client until the stream ends (a killed gateway's last events
/// may be on their way still).
async fn drain(stream: &mut Stream) -> Vec<Event> {
    let mut events = Vec::new();
    loop {
        match stream.next(PATIENCE).await {
            Ok(event) => {
                assert!(event.event == "put" || event.event == "delete", "{event:?}");
                events.push(event);
            }
            Err(NoEvent::Ended) => return events,
            Err(NoEvent::Quiet) => panic!("the stream of a killed gateway did not end"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_survives_a_gateway_sigkill_and_restart() {
    let cluster = Cluster::start(3).await;
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    let data = tempfile::tempdir().expect("tempdir");
    let mut first = Gateway::start(&nodes, &data, &[]);
    let project = project();
    let client = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut watcher = open(&first.base, &project, None).await;
    ledger.extend(burst(&first.base, &project, 2, 4, 0).await);
    let mut seen = read_n(&mut watcher, 6).await;
    first.sigkill();
    seen.extend(drain(&mut watcher).await);
    let cursor = last_id(&seen);

    // The gateway is down: writes go on at the nodes.
    for i in 0..5 {
        let node = nodes[i % 3];
        ledger.extend([put_at(&client, node, &address(&project, 50 + i % 2), i).await]);
    }
    // A new process, with nothing of the old one's memory: what it knows of the past it
    // reads from the nodes' feeds.
    let second = Gateway::start(&nodes, &data, &[]);
    let mut resumed = open(&second.base, &project, Some(&cursor)).await;
    let live = put_via(&client, &second.base, &address(&project, 200), 0).await;
    ledger.extend([live.clone()]);
    let rest = read_through(&mut resumed, &live).await;
    assert_exactly_once(&ledger, &[&seen, &rest]);
    // The ids of that backlog (changes this process read from the nodes' past) resume
    // right after their event too.
    assert_resumes_inside(&second.base, &project, &rest).await;
    // And live changes go on.
    let more = put_at(&client, nodes[1], &address(&project, 201), 0).await;
    assert_eq!(keys(&read_n(&mut resumed, 1).await), [more]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_continues_after_one_of_three_nodes_is_killed() {
    let mut cluster = Cluster::start(3).await;
    let data = tempfile::tempdir().expect("tempdir");
    let first = Gateway::start(&cluster.nodes.iter().collect::<Vec<_>>(), &data, &[]);
    let project = project();
    let client = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut watcher = open(&first.base, &project, None).await;
    ledger.extend(burst(&first.base, &project, 2, 4, 0).await);
    // The last change seen is one written at the node about to die: its feed likely
    // reported it first, so a gateway that never reads that feed must go by the keys the
    // cursor carries for it.
    let doomed = put_at(&client, &cluster.nodes[2], &address(&project, 90), 0).await;
    ledger.extend([doomed.clone()]);
    let seen = read_through(&mut watcher, &doomed).await;
    drop(watcher);
    let cursor = last_id(&seen);

    cluster.nodes[2].kill();
    // Two of three nodes are a majority: every write still succeeds, through the gateway
    // and at a node.
    ledger.extend(burst(&first.base, &project, 2, 3, 10).await);
    ledger.extend([put_at(&client, &cluster.nodes[0], &address(&project, 100), 0).await]);

    // The same gateway.
    let mut resumed = open(&first.base, &project, Some(&cursor)).await;
    let sentinel = put_via(&client, &first.base, &address(&project, 200), 0).await;
    ledger.extend([sentinel.clone()]);
    let rest = read_through(&mut resumed, &sentinel).await;
    assert_exactly_once(&ledger, &[&seen, &rest]);

    // A gateway started after the kill, which never read the dead node's feed, continues
    // the same cursor exactly.
    let data2 = tempfile::tempdir().expect("tempdir");
    let second = Gateway::start(&cluster.nodes.iter().collect::<Vec<_>>(), &data2, &[]);
    let mut elsewhere = open(&second.base, &project, Some(&cursor)).await;
    let there = read_through(&mut elsewhere, &sentinel).await;
    assert_exactly_once(&ledger, &[&seen, &there]);
    assert_resumes_inside(&second.base, &project, &there).await;
    // Then live changes, once, at both.
    let last = put_via(&client, &second.base, &address(&project, 201), 0).await;
    assert_eq!(
        keys(&read_n(&mut elsewhere, 1).await),
        std::slice::from_ref(&last)
    );
    assert_eq!(keys(&read_n(&mut resumed, 1).await), [last]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_from_another_gateway_replica_continues_there() {
    let cluster = Cluster::start(3).await;
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    let (data_a, data_b) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = Gateway::start(&nodes, &data_a, &[]);
    let b = Gateway::start(&nodes, &data_b, &[]);
    let project = project();
    let client = reqwest::Client::new();
    let mut ledger = Ledger::default();

    let mut at_a = open(&a.base, &project, None).await;
    let (via_a, via_b) = tokio::join!(
        burst(&a.base, &project, 2, 4, 0),
        burst(&b.base, &project, 1, 4, 20)
    );
    ledger.extend(via_a);
    ledger.extend(via_b);
    ledger.extend([put_at(&client, nodes[2], &address(&project, 100), 0).await]);
    let seen = read_n(&mut at_a, 6).await;
    drop(at_a);
    let cursor = last_id(&seen);

    let (via_a, via_b) = tokio::join!(
        burst(&a.base, &project, 1, 3, 30),
        burst(&b.base, &project, 1, 3, 40)
    );
    ledger.extend(via_a);
    ledger.extend(via_b);
    ledger.extend([put_at(&client, nodes[0], &address(&project, 101), 0).await]);

    let mut at_b = open(&b.base, &project, Some(&cursor)).await;
    let sentinel = put_via(&client, &a.base, &address(&project, 200), 0).await;
    ledger.extend([sentinel.clone()]);
    let rest = read_through(&mut at_b, &sentinel).await;
    assert_exactly_once(&ledger, &[&seen, &rest]);
    // B's own ids continue at A.
    let mut at_a = open(&a.base, &project, Some(&last_id(&rest))).await;
    let last = put_via(&client, &b.base, &address(&project, 201), 0).await;
    assert_eq!(keys(&read_n(&mut at_a, 1).await), [last]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_cursor_gets_gone_when_the_nodes_compacted_it() {
    let cluster = Cluster::start_with(3, &[("BZZZ_FEED_RETAIN", "5")]).await;
    let nodes: Vec<&NodeProc> = cluster.nodes.iter().collect();
    let client = reqwest::Client::new();
    let project = project();

    // Compacted by the nodes, and the gateway restarted: its history holds their window.
    let data = tempfile::tempdir().expect("tempdir");
    let mut first = Gateway::start(&nodes, &data, &[]);
    let mut watcher = open(&first.base, &project, None).await;
    put_via(&client, &first.base, &address(&project, 0), 0).await;
    let old = last_id(&read_n(&mut watcher, 1).await);
    let written = burst(&first.base, &project, 2, 11, 1).await;
    read_n(&mut watcher, written.len()).await;
    caught_up(&first.base, &nodes).await;
    // A cursor of now: every feed read to its end, less the one write after it.
    put_via(&client, &first.base, &address(&project, 100), 0).await;
    let recent = last_id(&read_n(&mut watcher, 1).await);
    first.sigkill();
    let second = Gateway::start(&nodes, &data, &[]);
    let mut stale = open(&second.base, &project, Some(&old)).await;
    let error = assert_gone(&mut stale).await;
    assert_eq!(error["details"]["reason"], "history", "{error}");
    // A cursor inside the window goes on.
    let mut fresh = open(&second.base, &project, Some(&recent)).await;
    let live = put_via(&client, &second.base, &address(&project, 200), 0).await;
    assert_eq!(keys(&read_n(&mut fresh, 1).await), [live]);

    // The gateway's own bound, without a restart.
    let data = tempfile::tempdir().expect("tempdir");
    let small = Gateway::start(&nodes, &data, &[("RUSTLE_WATCH_HISTORY", "5")]);
    let mut watcher = open(&small.base, &project, None).await;
    put_via(&client, &small.base, &address(&project, 0), 1).await;
    let old = last_id(&read_n(&mut watcher, 1).await);
    let written = burst(&small.base, &project, 2, 11, 1).await;
    read_n(&mut watcher, written.len()).await;
    caught_up(&small.base, &nodes).await;
    put_via(&client, &small.base, &address(&project, 100), 1).await;
    let recent = last_id(&read_n(&mut watcher, 1).await);
    let mut stale = open(&small.base, &project, Some(&old)).await;
    let error = assert_gone(&mut stale).await;
    assert_eq!(error["details"]["reason"], "history", "{error}");
    let mut fresh = open(&small.base, &project, Some(&recent)).await;
    let live = put_via(&client, &small.base, &address(&project, 200), 1).await;
    assert_eq!(keys(&read_n(&mut fresh, 1).await), [live]);
}
