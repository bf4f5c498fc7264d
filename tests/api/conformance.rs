//! The backend conformance suite: the semantics every `Backend` must have (SPEC §3, §6),
//! written against the trait so mock, real and hybrid backends run the same checks.
//!
//! Each check takes a fresh backend and works in its own project, so the suite also runs
//! against a shared cluster.

use std::sync::Arc;
use std::time::Duration;

use rustle_gateway::backend::{Backend, Call, NotServed, SearchQuery};
use serde_json::{Value, json};
use tokio::time::Instant;
use ucxl::{Address, Code, EnvelopeId, NewVersion, Pattern, content_digest};

use super::helpers::project;

pub fn call() -> Call {
    Call::new("conformance", Instant::now() + Duration::from_secs(5))
}

/// The UCXL code a client would get for a backend's error (backends over a cluster pass a
/// node's refusal on; the local backend has its own error values): `None` on success.
pub fn code<T>(result: Result<T, NotServed>) -> Option<Code> {
    result
        .err()
        .map(|e| rustle_gateway::error::ApiError::from(e.error).code())
}

pub fn addr(s: &str) -> Address {
    Address::parse(s).expect("valid address")
}

pub fn new(id: Option<&str>, content: Value) -> NewVersion {
    let id = id.map_or_else(EnvelopeId::generate, |i| {
        EnvelopeId::parse(i).expect("valid id")
    });
    NewVersion::json(id, content)
}

fn id(s: &str) -> EnvelopeId {
    EnvelopeId::parse(s).expect("valid id")
}

async fn put(b: &dyn Backend, address: &str, content: Value) -> ucxl::Envelope {
    b.put(&call(), &addr(address), new(None, content))
        .await
        .expect("put succeeds")
        .value
        .envelope
}

pub async fn put_then_get_returns_the_envelope(b: Arc<dyn Backend>) {
    let a = format!(
        "ucxl://claude:architect@{}:t/decisions/protocol.json",
        project()
    );
    let content = json!({"decision": "libp2p", "n": [1, 2.5, "x"]});
    let mut n = new(Some("first-key"), content.clone());
    n.metadata.insert("author".into(), json!("claude"));
    let written = b.put(&call(), &addr(&a), n).await.expect("put").value;
    assert!(written.created);
    let e = written.envelope;
    assert_eq!(e.version, 1);
    assert_eq!(e.id.as_str(), "first-key");
    assert_eq!(e.address.to_string(), a);
    assert_eq!(e.content, content);
    assert_eq!(e.metadata["author"], "claude");
    let (hash, size) = content_digest(&content).expect("canonical");
    assert_eq!((e.hash.clone(), e.size), (hash, size));
    let got = b.get(&call(), &addr(&a)).await.expect("get").value;
    assert_eq!(got, e);
}

pub async fn versions_are_numbered_and_temporal_segments_navigate(b: Arc<dyn Backend>) {
    let p = project();
    let base = format!("ucxl://a:r@{p}:t");
    for i in 1..=3 {
        assert_eq!(put(&*b, &format!("{base}/doc"), json!(i)).await.version, i);
    }
    let pick = |t: &str| {
        let b = Arc::clone(&b);
        let a = format!("{base}/{t}/doc");
        async move {
            b.get(&call(), &addr(&a)).await.map(|s| {
                (
                    s.value.version,
                    s.value.content.to_value().expect("a value"),
                )
            })
        }
    };
    assert_eq!(pick("*^").await, Ok((3, json!(3))));
    assert_eq!(pick("*~").await, Ok((1, json!(1))));
    assert_eq!(pick("*~2").await, Ok((2, json!(2))));
    assert_eq!(pick("~~1").await, Ok((2, json!(2))));
    assert_eq!(pick("~~0").await, Ok((3, json!(3))));
    assert_eq!(pick("^^2").await, Ok((3, json!(3))));
    assert_eq!(code(pick("*~4").await), Some(Code::NotFound));
    assert_eq!(code(pick("~~3").await), Some(Code::NotFound));
    assert_eq!(code(pick("^^3").await), Some(Code::NotFound));
}

pub async fn same_id_is_a_no_op(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/x", project());
    let first = b
        .put(&call(), &addr(&a), new(Some("k1"), json!("one")))
        .await
        .expect("put")
        .value;
    assert!(first.created);
    put(&*b, &a, json!("two")).await;
    let again = b
        .put(&call(), &addr(&a), new(Some("k1"), json!("changed")))
        .await
        .expect("put")
        .value;
    assert!(!again.created);
    assert_eq!(
        again.envelope, first.envelope,
        "the existing version comes back unchanged"
    );
    let history = b.history(&call(), &addr(&a)).await.expect("history").value;
    assert_eq!(history.versions.len(), 2);
}

pub async fn ids_are_scoped_to_their_address(b: Arc<dyn Backend>) {
    let p = project();
    let one = b
        .put(
            &call(),
            &addr(&format!("ucxl://a:r@{p}:t/one")),
            new(Some("shared"), json!(1)),
        )
        .await
        .expect("put")
        .value;
    let two = b
        .put(
            &call(),
            &addr(&format!("ucxl://a:r@{p}:t/two")),
            new(Some("shared"), json!(2)),
        )
        .await
        .expect("put")
        .value;
    assert!(
        one.created && two.created,
        "the same id at another address is another envelope"
    );
    assert_eq!(two.envelope.content, json!(2));
}

pub async fn missing_addresses_are_not_found(b: Arc<dyn Backend>) {
    let a = addr(&format!("ucxl://a:r@{}:t/nothing", project()));
    assert_eq!(code(b.get(&call(), &a).await), Some(Code::NotFound));
    assert_eq!(code(b.history(&call(), &a).await), Some(Code::NotFound));
    assert_eq!(
        code(b.delete(&call(), &a, EnvelopeId::generate()).await),
        Some(Code::NotFound)
    );
}

pub async fn delete_hides_and_a_later_put_starts_a_new_history(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/x", project());
    put(&*b, &a, json!(1)).await;
    put(&*b, &a, json!(2)).await;
    let deleted = b
        .delete(&call(), &addr(&a), id("del-1"))
        .await
        .expect("delete")
        .value;
    assert_eq!(deleted.id.as_str(), "del-1");
    assert_eq!(deleted.address.to_string(), a);
    assert_eq!(code(b.get(&call(), &addr(&a)).await), Some(Code::NotFound));
    assert_eq!(
        code(b.history(&call(), &addr(&a)).await),
        Some(Code::NotFound)
    );
    // replaying the delete is a no-op that answers the same
    let again = b
        .delete(&call(), &addr(&a), id("del-1"))
        .await
        .expect("replay")
        .value;
    assert_eq!(again, deleted);
    // another delete finds nothing
    assert!(b.delete(&call(), &addr(&a), id("del-2")).await.is_err());
    let fresh = put(&*b, &a, json!(3)).await;
    assert_eq!(
        fresh.version, 1,
        "a put after a delete starts a new history"
    );
    assert_eq!(
        b.history(&call(), &addr(&a))
            .await
            .expect("history")
            .value
            .versions
            .len(),
        1
    );
}

pub async fn ids_cannot_change_kind(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/x", project());
    b.put(&call(), &addr(&a), new(Some("v1"), json!(1)))
        .await
        .expect("put");
    assert_eq!(
        code(b.delete(&call(), &addr(&a), id("v1")).await),
        Some(Code::Conflict)
    );
    b.delete(&call(), &addr(&a), id("d1"))
        .await
        .expect("delete");
    assert_eq!(
        code(b.put(&call(), &addr(&a), new(Some("d1"), json!(2))).await),
        Some(Code::Conflict)
    );
}

pub async fn hash_mismatch_is_refused(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/x", project());
    let mut n = new(None, json!({"k": 1}));
    n.hash = Some(content_digest(&json!({"k": 2})).expect("canonical").0);
    assert_eq!(
        code(b.put(&call(), &addr(&a), n).await),
        Some(Code::InvalidPayload)
    );
    assert!(
        b.get(&call(), &addr(&a)).await.is_err(),
        "nothing was stored"
    );
}

pub async fn history_lists_versions_oldest_first(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/x", project());
    let e1 = put(&*b, &a, json!("a")).await;
    let e2 = put(&*b, &a, json!("bb")).await;
    let h = b
        .history(&call(), &addr(&a).with_temporal(ucxl::Temporal::First))
        .await
        .expect("history")
        .value;
    assert_eq!(h.address.to_string(), a);
    let got: Vec<_> = h
        .versions
        .iter()
        .map(|v| (v.version, v.id.clone(), v.size))
        .collect();
    assert_eq!(got, [(1, e1.id, e1.size), (2, e2.id, e2.size)]);
    assert!(h.versions[0].created_at < h.versions[1].created_at);
}

/// A late retry of a write (same id) after its address was deleted changes nothing: 200
/// with what was stored, and the address stays deleted. (A node keeps every version; the
/// local store keeps the ids of what a delete freed.)
pub async fn a_late_retry_after_a_delete_does_not_bring_content_back(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/retried", project());
    let first = b
        .put(&call(), &addr(&a), new(Some("late-k"), json!({"v": 1})))
        .await
        .expect("put")
        .value;
    assert!(first.created);
    b.delete(&call(), &addr(&a), id("late-del"))
        .await
        .expect("delete");
    let again = b
        .put(&call(), &addr(&a), new(Some("late-k"), json!({"v": 1})))
        .await
        .expect("the retry is answered")
        .value;
    assert!(!again.created, "nothing was created");
    assert_eq!(again.envelope.id, first.envelope.id);
    assert_eq!(again.envelope.hash, first.envelope.hash);
    assert_eq!(code(b.get(&call(), &addr(&a)).await), Some(Code::NotFound));
    assert_eq!(
        code(b.history(&call(), &addr(&a)).await),
        Some(Code::NotFound)
    );
    // The delete replayed is a no-op too.
    b.delete(&call(), &addr(&a), id("late-del"))
        .await
        .expect("replayed delete");
    assert_eq!(code(b.get(&call(), &addr(&a)).await), Some(Code::NotFound));
}

/// The writer the gateway authenticated is stored with the version and returned by
/// every read; the first write of an id keeps its writer when a retry names another.
pub async fn writers_are_recorded(b: Arc<dyn Backend>) {
    let a = format!("ucxl://claude:architect@{}:t/decisions/w.json", project());
    let by = |name: &str| Some(ucxl::PrincipalName::parse(name).expect("name"));
    let mut first = new(Some("w-1"), json!({"n": 1}));
    first.written_by = by("architect-bot");
    let written = b.put(&call(), &addr(&a), first).await.expect("put").value;
    assert_eq!(written.envelope.written_by, by("architect-bot"));
    let got = b.get(&call(), &addr(&a)).await.expect("get").value;
    assert_eq!(got.written_by, by("architect-bot"));
    // An anonymous write records nobody.
    let second = put(&*b, &a, json!({"n": 2})).await;
    assert_eq!(second.written_by, None);
    // A retry of the first id by someone else changes nothing.
    let mut retry = new(Some("w-1"), json!({"n": 1}));
    retry.written_by = by("impostor");
    let again = b.put(&call(), &addr(&a), retry).await.expect("retry").value;
    assert!(!again.created);
    assert_eq!(again.envelope.written_by, by("architect-bot"));
    let history = b.history(&call(), &addr(&a)).await.expect("history").value;
    let writers: Vec<_> = history
        .versions
        .iter()
        .map(|v| v.written_by.clone())
        .collect();
    assert_eq!(writers, [by("architect-bot"), None]);
    let first_version = b
        .get(&call(), &addr(&a).with_temporal(ucxl::Temporal::First))
        .await
        .expect("get")
        .value;
    assert_eq!(first_version.written_by, by("architect-bot"));
}

#[allow(clippy::too_many_lines)]
pub async fn search_matches_sorts_pages_and_filters(b: Arc<dyn Backend>) {
    let p = project();
    for path in ["d/b.json", "d/a.json", "d/sub/c.json", "other/x.json"] {
        put(&*b, &format!("ucxl://agent:role@{p}:t/{path}"), json!(path)).await;
    }
    put(
        &*b,
        &format!("ucxl://agent:role@{p}:t/d/a.json"),
        json!("newer"),
    )
    .await;
    let mut text = new(None, json!("plain"));
    text.content_type = "text/plain".into();
    b.put(
        &call(),
        &addr(&format!("ucxl://agent:role@{p}:t/d/t.txt")),
        text,
    )
    .await
    .expect("put");
    put(
        &*b,
        &format!("ucxl://agent:role@{p}:t/d/gone.json"),
        json!(0),
    )
    .await;
    b.delete(
        &call(),
        &addr(&format!("ucxl://agent:role@{p}:t/d/gone.json")),
        EnvelopeId::generate(),
    )
    .await
    .expect("delete");

    let query =
        |pattern: &str, limit: usize, after: Option<String>, ct: Option<&str>| SearchQuery {
            pattern: Pattern::parse(pattern).expect("valid pattern"),
            limit,
            after,
            content_type: ct.map(str::to_owned),
        };
    let paths = |items: &[ucxl::SearchItem]| {
        items
            .iter()
            .map(|i| i.address.path().to_owned())
            .collect::<Vec<_>>()
    };

    let all = b
        .search(
            &call(),
            &query(&format!("ucxl://any:any@{p}:any/**"), 100, None, None),
        )
        .await
        .expect("search")
        .value;
    assert_eq!(
        paths(&all.items),
        [
            "d/a.json",
            "d/b.json",
            "d/sub/c.json",
            "d/t.txt",
            "other/x.json"
        ]
    );
    assert!(!all.partial);
    assert!(all.next_cursor.is_none());
    let a = all
        .items
        .iter()
        .find(|i| i.address.path() == "d/a.json")
        .expect("a.json");
    assert_eq!(a.version, 2, "search returns the latest version");

    let globbed = b
        .search(
            &call(),
            &query(&format!("ucxl://*:role@{p}:*/d/*.json"), 100, None, None),
        )
        .await
        .expect("search")
        .value;
    assert_eq!(paths(&globbed.items), ["d/a.json", "d/b.json"]);

    let typed = b
        .search(
            &call(),
            &query(
                &format!("ucxl://any:any@{p}:any/**"),
                100,
                None,
                Some("text/plain"),
            ),
        )
        .await
        .expect("search")
        .value;
    assert_eq!(paths(&typed.items), ["d/t.txt"]);

    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = b
            .search(
                &call(),
                &query(
                    &format!("ucxl://any:any@{p}:any/**"),
                    2,
                    after.clone(),
                    None,
                ),
            )
            .await
            .expect("search")
            .value;
        assert!(page.items.len() <= 2);
        seen.extend(paths(&page.items));
        match page.next_cursor {
            Some(c) => {
                after = Some(rustle_gateway::backend::decode_cursor(&c).expect("valid cursor"));
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        paths(&all.items),
        "pages cover everything once, in order"
    );

    let none = b
        .search(
            &call(),
            &query(&format!("ucxl://nobody:any@{p}:any/**"), 10, None, None),
        )
        .await
        .expect("search")
        .value;
    assert!(none.items.is_empty());
}

/// `any` in an address is a literal component and an exact key (BZZZ keeps context for any
/// agent and role at `ucxl://any:any@...`); in a search pattern it stays the wildcard.
pub async fn literal_any_addresses_are_exact_keys(b: Arc<dyn Backend>) {
    let p = project();
    let shared = format!("ucxl://any:any@{p}:t/shared/ctx");
    let claude = format!("ucxl://claude:any@{p}:t/shared/ctx");
    put(&*b, &shared, json!("for anyone")).await;
    put(&*b, &shared, json!("for anyone, again")).await;
    put(&*b, &claude, json!("for claude")).await;

    let got = |a: &str| {
        let b = Arc::clone(&b);
        let a = addr(a);
        async move {
            b.get(&call(), &a)
                .await
                .map(|s| s.value.content.to_value().expect("a value"))
        }
    };
    assert_eq!(got(&shared).await, Ok(json!("for anyone, again")));
    assert_eq!(got(&claude).await, Ok(json!("for claude")));
    let history = b
        .history(&call(), &addr(&shared))
        .await
        .expect("history")
        .value;
    assert_eq!(history.address.to_string(), shared);
    assert_eq!(history.versions.len(), 2);
    let history = b
        .history(&call(), &addr(&claude))
        .await
        .expect("history")
        .value;
    assert_eq!(history.versions.len(), 1);

    let search = |pattern: String| {
        let b = Arc::clone(&b);
        async move {
            let query = SearchQuery {
                pattern: Pattern::parse(&pattern).expect("valid pattern"),
                limit: 10,
                after: None,
                content_type: None,
            };
            let page = b.search(&call(), &query).await.expect("search").value;
            page.items
                .into_iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>()
        }
    };
    // Canonical addresses sort bytewise: `any:` before `claude:`.
    assert_eq!(
        search(format!("ucxl://any:any@{p}:any/**")).await,
        [shared.clone(), claude.clone()]
    );
    assert_eq!(
        search(format!("ucxl://claude:any@{p}:any/**")).await,
        std::slice::from_ref(&claude),
        "a stored any is not a wildcard"
    );

    b.delete(&call(), &addr(&shared), EnvelopeId::generate())
        .await
        .expect("delete");
    assert_eq!(code(got(&shared).await), Some(Code::NotFound));
    assert_eq!(
        got(&claude).await,
        Ok(json!("for claude")),
        "the other stays"
    );
    assert_eq!(search(format!("ucxl://any:any@{p}:any/**")).await, [claude]);
}

pub async fn concurrent_writes_all_land_with_distinct_versions(b: Arc<dyn Backend>) {
    let a = format!("ucxl://a:r@{}:t/hot", project());
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let b = Arc::clone(&b);
            let a = a.clone();
            tokio::spawn(async move { b.put(&call(), &addr(&a), new(None, json!(i))).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("put").value.envelope.id);
    }
    // Concurrent writes through a cluster land on different nodes: the replicas converge
    // within moments (a node acknowledges once a majority holds the write), so the check
    // waits for convergence; the local backend converges at once.
    let mut history = b.history(&call(), &addr(&a)).await.expect("history").value;
    let until = Instant::now() + Duration::from_secs(5);
    while history.versions.len() < 64 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        history = b.history(&call(), &addr(&a)).await.expect("history").value;
    }
    let numbers: Vec<u32> = history.versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=64).collect::<Vec<_>>());
    let mut stored: Vec<_> = history.versions.into_iter().map(|v| v.id).collect();
    stored.sort();
    ids.sort();
    assert_eq!(stored, ids, "every acknowledged write is in the history");
}

/// Declares one `#[tokio::test]` per conformance check for a backend constructor.
#[macro_export]
macro_rules! conformance_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;
            $crate::conformance_suite!(@tests $make;
                put_then_get_returns_the_envelope,
                versions_are_numbered_and_temporal_segments_navigate,
                same_id_is_a_no_op,
                ids_are_scoped_to_their_address,
                missing_addresses_are_not_found,
                delete_hides_and_a_later_put_starts_a_new_history,
                ids_cannot_change_kind,
                hash_mismatch_is_refused,
                history_lists_versions_oldest_first,
                search_matches_sorts_pages_and_filters,
                concurrent_writes_all_land_with_distinct_versions,
                writers_are_recorded,
                a_late_retry_after_a_delete_does_not_bring_content_back,
                literal_any_addresses_are_exact_keys,
            );
        }
    };
    (@tests $make:expr; $($check:ident),* $(,)?) => {
        $(
            // Several workers, so concurrent checks really run in parallel.
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let backend: std::sync::Arc<dyn rustle_gateway::backend::Backend> = $make().await;
                $crate::conformance::$check(backend).await;
            }
        )*
    };
}

#[allow(clippy::unused_async)] // the suite awaits constructors: real backends start nodes
async fn mock_backend() -> Arc<dyn Backend> {
    let store = Arc::new(rustle_gateway::store::local::LocalStore::new(10_000));
    Arc::new(rustle_gateway::backend::mock::MockBackend::new(store))
}

conformance_suite!(mock, mock_backend);

/// Every check, one after another, against one backend (for backends over a node cluster
/// that is started once).
pub async fn run_all(b: &Arc<dyn Backend>) {
    put_then_get_returns_the_envelope(Arc::clone(b)).await;
    versions_are_numbered_and_temporal_segments_navigate(Arc::clone(b)).await;
    same_id_is_a_no_op(Arc::clone(b)).await;
    ids_are_scoped_to_their_address(Arc::clone(b)).await;
    missing_addresses_are_not_found(Arc::clone(b)).await;
    delete_hides_and_a_later_put_starts_a_new_history(Arc::clone(b)).await;
    ids_cannot_change_kind(Arc::clone(b)).await;
    hash_mismatch_is_refused(Arc::clone(b)).await;
    history_lists_versions_oldest_first(Arc::clone(b)).await;
    search_matches_sorts_pages_and_filters(Arc::clone(b)).await;
    concurrent_writes_all_land_with_distinct_versions(Arc::clone(b)).await;
    writers_are_recorded(Arc::clone(b)).await;
    a_late_retry_after_a_delete_does_not_bring_content_back(Arc::clone(b)).await;
    literal_any_addresses_are_exact_keys(Arc::clone(b)).await;
}

mod cluster_backends {
    use std::sync::Arc;

    use rustle_gateway::backend::Backend;
    use rustle_gateway::backend::hybrid::{Fallback, HybridBackend};
    use rustle_gateway::backend::real::RealBackend;
    use rustle_gateway::config::BackendMode;
    use rustle_gateway::store::journal::Journal;
    use rustle_gateway::store::local::LocalStore;
    use rustle_gateway::upstream::cluster::{Cluster, Jitters};
    use tokio_util::sync::CancellationToken;

    use crate::nodes::Cluster as Nodes;
    use crate::resilience::cluster_config;

    /// The cluster token and swarm key of the closed clusters the suite runs against.
    const TOKEN: &str = "conformance-cluster-token-0123456789";
    const SWARM_KEY: &str = "5f1e0c6a8d2b4f7e9a3c1b0d8e6f4a2c7b9d1e3f5a7c9e0b2d4f6a8c0e2b4d6f";

    /// Three nodes with an API token and a swarm key: the gateway must present the token.
    async fn closed_nodes() -> Nodes {
        Nodes::start_with(
            3,
            &[("BZZZ_API_TOKEN", TOKEN), ("BZZZ_SWARM_KEY", SWARM_KEY)],
        )
        .await
    }

    fn cluster(nodes: &Nodes, mode: BackendMode) -> (Arc<Cluster>, Arc<LocalStore>) {
        let urls: Vec<String> = nodes.nodes.iter().map(|n| n.url("")).collect();
        let mut config = cluster_config(&urls, mode);
        config.bzzz_token = Some(crate::admin::secret(TOKEN));
        let cluster = Cluster::new(&config, Jitters::default()).expect("client");
        (Arc::new(cluster), Arc::new(LocalStore::new(100_000)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn real_backend_over_three_nodes() {
        let nodes = closed_nodes().await;
        let (cluster, store) = cluster(&nodes, BackendMode::Real);
        let backend: Arc<dyn Backend> = Arc::new(RealBackend::new(cluster, store));
        super::run_all(&backend).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hybrid_backend_over_three_nodes() {
        let nodes = closed_nodes().await;
        let (cluster, store) = cluster(&nodes, BackendMode::Hybrid);
        let dir = tempfile::tempdir().expect("tempdir");
        let journal = Journal::open(dir.path()).expect("journal");
        let fallback = Fallback::new(
            Arc::clone(&journal),
            store,
            cluster,
            std::time::Duration::from_secs(5),
        );
        let stop = CancellationToken::new();
        fallback.start(&stop);
        let backend: Arc<dyn Backend> = Arc::new(HybridBackend::new(fallback));
        super::run_all(&backend).await;
        assert_eq!(journal.pending(), 0, "the cluster served every write");
        stop.cancel();
    }
}
