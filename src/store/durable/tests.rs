use std::sync::Arc;

use chrono::Utc;
use redb::Database;
use redb_commit::testing::FillableStorage;
use serde_json::json;
use ucxl::{Address, EnvelopeId, NewVersion, PutOutcome};

use super::{DurableError, DurableStore, FILE_NAME};
use crate::store::local::{LocalStore, StoreError};

fn addr(s: &str) -> Address {
    Address::parse(s).expect("valid address")
}

fn new(id: &str, n: u32) -> NewVersion {
    NewVersion::json(EnvelopeId::parse(id).expect("valid id"), json!({"n": n}))
}

fn id(s: &str) -> EnvelopeId {
    EnvelopeId::parse(s).expect("valid id")
}

/// A durable store over `storage` (each reopen sees the same bytes, as a file would).
fn over(storage: &FillableStorage, max_entries: usize) -> (Arc<DurableStore>, Arc<LocalStore>) {
    let memory = Arc::new(LocalStore::new(max_entries));
    let disk = storage.clone();
    let durable = DurableStore::start(
        std::path::Path::new("memory"),
        Box::new(move || Database::builder().create_with_backend(disk.clone())),
        Arc::clone(&memory),
    )
    .expect("opens");
    (durable, memory)
}

/// Everything a reader can see of `address`: each version's number, id and content, and
/// the history.
fn seen(store: &LocalStore, address: &str) -> (Vec<(u32, String, serde_json::Value)>, usize) {
    let history = store.history(&addr(address));
    // The temporal segment follows the authority: ucxl://a:r@p:t/*~N/path.
    let (authority, path) = address
        .trim_start_matches("ucxl://")
        .split_once('/')
        .expect("a path");
    let versions = (1..=history.len())
        .filter_map(|n| store.get(&addr(&format!("ucxl://{authority}/*~{n}/{path}"))))
        .map(|(n, v)| {
            (
                n,
                v.id.as_str().to_owned(),
                v.content.to_value().expect("a value"),
            )
        })
        .collect();
    (versions, history.len())
}

#[tokio::test]
async fn what_was_acknowledged_is_loaded_again_with_its_numbers_deletes_and_freed_ids() {
    let storage = FillableStorage::new();
    let a = "ucxl://agent:dev@proj:task/notes/a";
    let b = "ucxl://any:any@BZZZ:RUSTLE-testing/shared";
    {
        let (durable, memory) = over(&storage, 100);
        assert_eq!(
            memory.status().storage,
            crate::config::LocalStorage::Disk,
            "a store loaded from disk says so"
        );
        for n in 1..=3 {
            durable
                .put(&addr(a), new(&format!("a{n}"), n), Utc::now())
                .await
                .expect("put");
        }
        durable
            .put(&addr(b), new("b1", 1), Utc::now())
            .await
            .expect("put");
        durable
            .delete(&addr(b), id("del-b"), Utc::now())
            .await
            .expect("delete");
        durable
            .put(&addr(b), new("b2", 2), Utc::now())
            .await
            .expect("put after the delete");
    }
    let (durable, memory) = over(&storage, 100);
    let (versions, len) = seen(&memory, a);
    assert_eq!(len, 3);
    assert_eq!(
        versions,
        vec![
            (1, "a1".into(), json!({"n": 1})),
            (2, "a2".into(), json!({"n": 2})),
            (3, "a3".into(), json!({"n": 3})),
        ]
    );
    let (versions, _) = seen(&memory, b);
    assert_eq!(
        versions,
        vec![(1, "b2".into(), json!({"n": 2}))],
        "the delete started a new history"
    );
    assert_eq!(memory.status().owned_entries, 5, "a1-a3, the tombstone, b2");
    // A late retry of the deleted version stays a no-op after the restart: freed ids are
    // kept on disk too.
    let retried = durable
        .put(&addr(b), new("b1", 1), Utc::now())
        .await
        .expect("a retry of a freed id");
    assert!(matches!(retried, PutOutcome::Existing { version: 1, .. }));
    assert_eq!(
        seen(&memory, b).0.len(),
        1,
        "the deleted content stays deleted"
    );
    let again = durable.delete(&addr(b), id("del-b"), Utc::now()).await;
    assert!(again.is_ok(), "a retried delete is a no-op: {again:?}");
}

#[tokio::test]
async fn a_write_the_disk_refuses_is_refused_taken_back_and_the_store_recovers() {
    let storage = FillableStorage::new();
    let a = "ucxl://agent:dev@proj:task/notes/a";
    let (durable, memory) = over(&storage, 100);
    durable
        .put(&addr(a), new("kept", 1), Utc::now())
        .await
        .expect("put");

    storage.fill_after(0);
    let refused = durable.put(&addr(a), new("lost", 2), Utc::now()).await;
    assert!(
        matches!(&refused, Err(DurableError::Storage(e)) if e.is_unwritable()),
        "{refused:?}"
    );
    assert_eq!(
        seen(&memory, a).0,
        vec![(1, "kept".into(), json!({"n": 1}))],
        "a refused write is not shown"
    );
    let refused = durable.delete(&addr(a), id("del"), Utc::now()).await;
    assert!(
        matches!(&refused, Err(DurableError::Storage(_))),
        "{refused:?}"
    );
    assert_eq!(seen(&memory, a).1, 1, "a refused delete hides nothing");
    assert_eq!(memory.status().owned_entries, 1);

    storage.grow();
    durable
        .put(&addr(a), new("after", 3), Utc::now())
        .await
        .expect("the store takes writes again once the disk does, without a restart");
    drop(durable);
    let (_durable, memory) = over(&storage, 100);
    assert_eq!(
        seen(&memory, a).0,
        vec![
            (1, "kept".into(), json!({"n": 1})),
            (2, "after".into(), json!({"n": 3})),
        ],
        "the disk holds what was acknowledged, nothing else"
    );
}

#[tokio::test]
async fn the_bound_still_holds_and_a_refusal_writes_nothing() {
    let storage = FillableStorage::new();
    let (durable, memory) = over(&storage, 2);
    for n in 1..=2 {
        durable
            .put(
                &addr(&format!("ucxl://a:b@c:d/{n}")),
                new(&format!("v{n}"), n),
                Utc::now(),
            )
            .await
            .expect("put");
    }
    let full = durable
        .put(&addr("ucxl://a:b@c:d/3"), new("v3", 3), Utc::now())
        .await;
    assert!(
        matches!(
            full,
            Err(DurableError::Store(StoreError::Full { limit: 2 }))
        ),
        "{full:?}"
    );
    drop(durable);
    let (_durable, memory_again) = over(&storage, 2);
    assert_eq!(memory_again.status().owned_entries, 2);
    assert_eq!(memory.status().owned_entries, 2);
}

#[test]
fn a_file_in_the_data_directory_is_created_and_read_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    {
        let memory = Arc::new(LocalStore::new(10));
        let durable = DurableStore::open(&dir.path().join("data"), memory).expect("opens");
        runtime
            .block_on(durable.put(&addr("ucxl://a:b@c:d/x"), new("x", 1), Utc::now()))
            .expect("put");
        assert_eq!(durable.path(), dir.path().join("data").join(FILE_NAME));
    }
    let memory = Arc::new(LocalStore::new(10));
    let _durable =
        DurableStore::open(&dir.path().join("data"), Arc::clone(&memory)).expect("opens");
    assert_eq!(
        memory.get(&addr("ucxl://a:b@c:d/x")).map(|(n, _)| n),
        Some(1)
    );
}
