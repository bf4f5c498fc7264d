//! `POST /ucxi/v1/batch` ([`ucxl::batch`]): many writes in one request, as the gateway's
//! journal replay sends them. Each address's items are applied in the order given, and
//! different addresses concurrently, so the store's writer commits many of them in one
//! transaction and their replication pushes leave batched per peer; each address's record
//! is replicated once, after its last stored item.
//!
//! Every item is answered with the code its single route would answer. An item that was
//! not stored stops the rest of its address (answered as not stored too), so a later write
//! never lands before an earlier one. A batch of which nothing could be stored fails as a
//! whole, as a single write would (503 or 507 with `Retry-After`, 504), so the gateway
//! sends it to another node and counts the failure against this one.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use chrono::Utc;
use serde_json::json;
use ucxl::batch::{Batch, Item, ItemResult, MAX_ITEMS, Results};
use ucxl::{Address, Code, NewVersion, PutOutcome};
use ucxl_service::{ErrorReport, Reply};

use super::{Ctx, Json, NodeError, NodeState, find, replicate};
use crate::store::Record;

/// What one address's items came to: each item's result (by its place in the batch), and
/// the failure that stopped the address, if any.
struct Applied {
    results: Vec<(usize, ItemResult)>,
    stored: usize,
    failure: Option<NodeError>,
}

pub(super) async fn batch(
    State(state): State<NodeState>,
    ctx: Ctx,
    Json(batch): Json<Batch>,
) -> Result<Reply<Results>, NodeError> {
    let count = batch.items.len();
    if count > MAX_ITEMS {
        return Err(NodeError::Rejected(
            format!("a batch holds at most {MAX_ITEMS} items; this one holds {count}"),
            json!({"field": "items", "limit": MAX_ITEMS, "provided": count}),
        ));
    }
    // Each address's items, in the order given, with their places in the answer.
    let mut groups: Vec<Vec<(usize, Item)>> = Vec::new();
    let mut by_address: HashMap<String, usize> = HashMap::new();
    for (place, item) in batch.items.into_iter().enumerate() {
        let group = *by_address
            .entry(item.address().canonical().to_owned())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[group].push((place, item));
    }
    let applied = futures::future::join_all(
        groups
            .into_iter()
            .map(|items| apply_address(&state, &ctx, items)),
    )
    .await;
    let stored: usize = applied.iter().map(|a| a.stored).sum();
    let mut results = Vec::with_capacity(count);
    let mut failure = None;
    for a in applied {
        results.extend(a.results);
        if failure.is_none() {
            failure = a.failure;
        }
    }
    if stored == 0
        && let Some(failure) = failure
    {
        return Err(failure);
    }
    results.sort_unstable_by_key(|(place, _)| *place);
    let results: Vec<ItemResult> = results.into_iter().map(|(_, r)| r).collect();
    let refused = results
        .iter()
        .filter(|r| (400..500).contains(&r.code.status()))
        .count();
    let message = format!(
        "{count} items: {stored} stored, {refused} refused, {} not stored",
        count - stored - refused
    );
    Ok(Reply::new(
        Code::Ok,
        message,
        Results { results },
        &ctx.request_id,
    ))
}

/// Applies one address's items in order, then replicates its record once.
async fn apply_address(state: &NodeState, ctx: &Ctx, items: Vec<(usize, Item)>) -> Applied {
    // Per item: its place, and what it came to (a stored item is answered once replicated).
    let mut applied: Vec<(usize, Result<ItemResult, ItemResult>)> = Vec::with_capacity(items.len());
    let mut record: Option<Arc<Record>> = None;
    let mut failure: Option<NodeError> = None;
    for (place, item) in items {
        let address = item.address().clone();
        if failure.is_some() {
            let skipped = ItemResult::failed(
                address,
                Code::ServiceUnavailable,
                "not applied: an earlier write of this address in the batch was not stored; \
                 nothing was stored"
                    .to_owned(),
                json!({}),
            );
            applied.push((place, Err(skipped)));
            continue;
        }
        match apply(state, ctx, item).await {
            Ok((done, changed)) => {
                record = Some(changed);
                applied.push((place, Ok(done)));
            }
            Err(e) => {
                let report = e.report();
                if report.code.status() >= 500 {
                    failure = Some(e);
                }
                applied.push((place, Err(failed(address, report))));
            }
        }
    }
    // One replication for every item stored: the record after the last one holds them all.
    let replicated = match &record {
        Some(record) => replicate(state, ctx, record).await.map_err(|e| {
            let report = e.report();
            failure.get_or_insert(e);
            report
        }),
        None => Ok(()),
    };
    let mut stored = 0;
    let results = applied
        .into_iter()
        .map(|(place, result)| {
            let result = match (result, &replicated) {
                (Ok(done), Ok(())) => {
                    stored += 1;
                    done
                }
                (Ok(done), Err(report)) => failed(done.address, report.clone()),
                (Err(refused_or_failed), _) => refused_or_failed,
            };
            (place, result)
        })
        .collect();
    Applied {
        results,
        stored,
        failure,
    }
}

fn failed(address: Address, report: ErrorReport) -> ItemResult {
    ItemResult::failed(address, report.code, report.message, report.details)
}

/// Stores one item as its single route would (a delete of a record this node lacks looks
/// it up in the DHT first): its result, and the record it left.
async fn apply(
    state: &NodeState,
    ctx: &Ctx,
    item: Item,
) -> Result<(ItemResult, Arc<Record>), NodeError> {
    match item {
        Item::Put { address, version } => {
            address.require_latest()?;
            let (outcome, record) = state
                .store
                .put(&address, NewVersion::from(version), Utc::now())
                .await?;
            let created = matches!(outcome, PutOutcome::Created { .. });
            let (number, stored) = outcome.parts();
            let id = stored.id.clone();
            Ok((ItemResult::put(address, created, id, number), record))
        }
        Item::Delete {
            address,
            id,
            deleted_at,
        } => {
            address.require_latest()?;
            if state.store.get(&address).is_none() {
                find(state, ctx, &address).await?;
            }
            let (outcome, record) = state
                .store
                .delete(&address, id, Some(deleted_at), Utc::now())
                .await?;
            let tombstone = outcome.tombstone();
            let result = ItemResult::deleted(address, tombstone.id.clone(), tombstone.created_at);
            Ok((result, record))
        }
    }
}
