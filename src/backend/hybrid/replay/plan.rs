//! How one read of the journal is replayed in batches, and what a batch's results do to
//! the journal: pure, so the ordering rules are tested without a cluster.
//!
//! An address's entries all go in one batch, in journal order (the node applies them in
//! that order), so batches sent at once never race for an address; entries of an address
//! that do not fit wait for the next read. A result that was not stored stops its address
//! there: the entries after it stay in the journal behind it.

use std::collections::{HashMap, HashSet};

use axum::body::Bytes;
use ucxl::Address;
use ucxl::batch::{Item, ItemOutcome, ItemResult};

use crate::store::journal::{Entry, Op};

/// Most entries the replay sends in one batch.
pub const BATCH_ITEMS: usize = 128;
/// Most bytes of items the replay sends in one batch (an entry larger than this goes
/// alone): well below a node's default body limit (`BZZZ_MAX_BODY_BYTES`, 2 MiB).
pub const BATCH_BYTES: usize = 1 << 20;

/// Entries sent together, and the body that carries them.
#[derive(Debug)]
pub struct Batch {
    /// The entries, with their sequence numbers: each address's in journal order.
    pub entries: Vec<(u64, Entry)>,
    /// `{"items": [...]}`, the entries as batch items in the same order.
    pub body: Bytes,
}

impl Batch {
    /// The address of each item, in order (what the answer's results must be about).
    #[must_use]
    pub fn addresses(&self) -> Vec<Address> {
        self.entries
            .iter()
            .map(|(_, e)| e.address.clone())
            .collect()
    }
}

/// One read of the journal, planned.
#[derive(Debug, Default)]
pub struct Plan {
    /// Entries that cannot be decoded (never written by this gateway): dropped.
    pub undecodable: Vec<u64>,
    /// The batches, to be sent at once.
    pub batches: Vec<Batch>,
    /// Entries left for the next read (their address's entries did not fit one batch).
    pub deferred: usize,
}

/// The batch item of a journal entry.
#[must_use]
pub fn item(entry: &Entry) -> Item {
    let address = entry.address.clone();
    match &entry.op {
        Op::Put { version } => Item::Put {
            address,
            version: version.clone(),
        },
        Op::Delete { id, deleted_at } => Item::Delete {
            address,
            id: id.clone(),
            deleted_at: *deleted_at,
        },
    }
}

/// Plans `read` (the oldest entries, in journal order) as batches of at most `max_items`
/// entries and `max_bytes` bytes of items.
///
/// # Errors
/// When an entry cannot be encoded (it was decoded from JSON, so it can).
pub fn plan(
    read: Vec<(u64, Option<Entry>)>,
    max_items: usize,
    max_bytes: usize,
) -> Result<Plan, serde_json::Error> {
    let mut plan = Plan::default();
    // Each address's entries in journal order, addresses in order of first appearance.
    let mut groups: Vec<Vec<(u64, Entry, Vec<u8>)>> = Vec::new();
    let mut by_address: HashMap<String, usize> = HashMap::new();
    for (seq, entry) in read {
        let Some(entry) = entry else {
            plan.undecodable.push(seq);
            continue;
        };
        let encoded = serde_json::to_vec(&item(&entry))?;
        let group = *by_address
            .entry(entry.address.canonical().to_owned())
            .or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
        groups[group].push((seq, entry, encoded));
    }
    let mut packing = Packing::default();
    for mut group in groups {
        let bytes: usize = group.iter().map(|(_, _, e)| e.len()).sum();
        if !packing.fits(group.len(), bytes, max_items, max_bytes) {
            plan.batches.extend(packing.finish());
        }
        // An address with more than a batch holds: as much as fits one (at least its first
        // entry), the rest next time.
        let mut taken = 0;
        let mut taken_bytes = 0;
        for (_, _, encoded) in &group {
            if taken > 0 && (taken == max_items || taken_bytes + encoded.len() > max_bytes) {
                break;
            }
            taken += 1;
            taken_bytes += encoded.len();
        }
        plan.deferred += group.len() - taken;
        group.truncate(taken);
        packing.add(group, taken_bytes);
    }
    plan.batches.extend(packing.finish());
    Ok(plan)
}

/// The batch being filled.
#[derive(Default)]
struct Packing {
    entries: Vec<(u64, Entry)>,
    body: Vec<u8>,
    bytes: usize,
}

impl Packing {
    fn fits(&self, items: usize, bytes: usize, max_items: usize, max_bytes: usize) -> bool {
        self.entries.is_empty()
            || (self.entries.len() + items <= max_items && self.bytes + bytes <= max_bytes)
    }

    fn add(&mut self, group: Vec<(u64, Entry, Vec<u8>)>, bytes: usize) {
        for (seq, entry, encoded) in group {
            self.body
                .extend_from_slice(if self.entries.is_empty() { b"" } else { b"," });
            self.body.extend_from_slice(&encoded);
            self.entries.push((seq, entry));
        }
        self.bytes += bytes;
    }

    fn finish(&mut self) -> Option<Batch> {
        if self.entries.is_empty() {
            return None;
        }
        let items = std::mem::take(&mut self.body);
        let mut body = Vec::with_capacity(items.len() + 12);
        body.extend_from_slice(b"{\"items\":[");
        body.extend_from_slice(&items);
        body.extend_from_slice(b"]}");
        self.bytes = 0;
        Some(Batch {
            entries: std::mem::take(&mut self.entries),
            body: Bytes::from(body),
        })
    }
}

/// What a batch's results do to the journal.
#[derive(Debug, Default, PartialEq)]
pub struct Settled<'a> {
    /// Entries the cluster took (stored, or the id existed) or refused, with their
    /// addresses: removed.
    pub remove: Vec<(u64, &'a Address)>,
    /// Of those, the refused ones (dropped), with their refusal.
    pub refused: Vec<(u64, &'a Entry, &'a ItemResult)>,
    /// Entries not stored, and those after them at the same address: left for later.
    pub kept: usize,
}

/// Settles `batch` by its `results` (one per entry, in order, as the answer was checked to
/// hold).
#[must_use]
pub fn settle<'a>(batch: &'a Batch, results: &'a [ItemResult]) -> Settled<'a> {
    let mut settled = Settled::default();
    let mut stopped: HashSet<&str> = HashSet::new();
    for ((seq, entry), result) in batch.entries.iter().zip(results) {
        let address = entry.address.canonical();
        if stopped.contains(address) {
            settled.kept += 1;
            continue;
        }
        match result.outcome() {
            ItemOutcome::Done { .. } => settled.remove.push((*seq, &entry.address)),
            ItemOutcome::Refused => {
                settled.remove.push((*seq, &entry.address));
                settled.refused.push((*seq, entry, result));
            }
            ItemOutcome::NotStored => {
                stopped.insert(address);
                settled.kept += 1;
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {

    use chrono::Utc;
    use serde_json::json;
    use ucxl::batch::Batch as WireBatch;
    use ucxl::{Code, EnvelopeId, Version};

    use super::*;

    fn address(path: &str) -> Address {
        Address::parse(&format!("ucxl://a:r@p:t/{path}")).expect("an address")
    }

    fn put(path: &str, n: u32, pad: usize) -> Entry {
        let content = json!({"n": n, "pad": "x".repeat(pad)});
        let (hash, size) = ucxl::content_digest(&content).expect("a digest");
        Entry {
            address: address(path),
            op: Op::Put {
                version: Version {
                    id: EnvelopeId::parse(&format!("{path}-{n}")).expect("an id"),
                    content: content.into(),
                    content_type: "application/json".into(),
                    metadata: serde_json::Map::new(),
                    created_at: ucxl::envelope::normalise_time(Utc::now()),
                    hash,
                    size,
                    written_by: None,
                },
            },
            request_id: format!("r{n}"),
        }
    }

    fn delete(path: &str, n: u32) -> Entry {
        Entry {
            address: address(path),
            op: Op::Delete {
                id: EnvelopeId::parse(&format!("{path}-{n}")).expect("an id"),
                deleted_at: ucxl::envelope::normalise_time(Utc::now()),
            },
            request_id: format!("r{n}"),
        }
    }

    /// Per batch: (seq, path) of each entry.
    fn shape(plan: &Plan) -> Vec<Vec<(u64, String)>> {
        plan.batches
            .iter()
            .map(|b| {
                b.entries
                    .iter()
                    .map(|(seq, e)| (*seq, e.address.path().to_owned()))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn an_addresss_entries_travel_together_in_journal_order() {
        let read = vec![
            (1, Some(put("x", 1, 0))),
            (2, Some(put("y", 2, 0))),
            (3, Some(delete("x", 3))),
            (4, None),
            (5, Some(put("z", 5, 0))),
            (6, Some(put("x", 6, 0))),
        ];
        let plan = plan(read, 3, BATCH_BYTES).expect("planned");
        assert_eq!(plan.undecodable, [4]);
        assert_eq!(plan.deferred, 0);
        assert_eq!(
            shape(&plan),
            [
                vec![(1, "x".into()), (3, "x".into()), (6, "x".into())],
                vec![(2, "y".into()), (5, "z".into())],
            ],
            "x's three entries fill a batch, never split; y and z share the next"
        );
        // The body is the wire batch of those entries, in the same order.
        for batch in &plan.batches {
            let wire: WireBatch = serde_json::from_slice(&batch.body).expect("a batch body");
            let sent: Vec<Address> = wire.items.iter().map(|i| i.address().clone()).collect();
            assert_eq!(sent, batch.addresses());
            let expected: Vec<Item> = batch.entries.iter().map(|(_, e)| item(e)).collect();
            assert_eq!(wire.items, expected);
        }
    }

    #[test]
    fn an_address_with_more_than_a_batch_holds_sends_the_first_part_and_waits() {
        let mut read: Vec<(u64, Option<Entry>)> = (1..=5u32)
            .map(|n| (u64::from(n), Some(put("x", n, 0))))
            .collect();
        read.push((6, Some(put("y", 6, 0))));
        let plan = plan(read, 2, BATCH_BYTES).expect("planned");
        assert_eq!(
            shape(&plan),
            [
                vec![(1, "x".into()), (2, "x".into())],
                vec![(6, "y".into())]
            ]
        );
        assert_eq!(
            plan.deferred, 3,
            "x's entries 3 to 5 stay for the next read"
        );
    }

    #[test]
    fn batches_are_cut_by_bytes_and_a_larger_entry_goes_alone() {
        let read = vec![
            (1, Some(put("a", 1, 400))),
            (2, Some(put("b", 2, 400))),
            (3, Some(put("c", 3, 3000))),
            (4, Some(put("d", 4, 10))),
        ];
        let plan = plan(read, 100, 1500).expect("planned");
        assert_eq!(
            shape(&plan),
            [
                vec![(1, "a".into()), (2, "b".into())],
                vec![(3, "c".into())],
                vec![(4, "d".into())],
            ]
        );
        assert!(plan.batches[0].body.len() <= 1500 + 12);
    }

    fn result(path: &str, code: Code) -> ItemResult {
        ItemResult::failed(address(path), code, "m".into(), json!({}))
    }

    #[test]
    fn a_result_not_stored_keeps_its_address_from_there_and_the_rest_is_settled() {
        let read = vec![
            (1, Some(put("x", 1, 0))),
            (2, Some(put("y", 2, 0))),
            (3, Some(put("x", 3, 0))),
            (4, Some(put("x", 4, 0))),
            (5, Some(delete("z", 5))),
        ];
        let plan = plan(read, 10, BATCH_BYTES).expect("planned");
        let batch = &plan.batches[0];
        let order: Vec<u64> = batch.entries.iter().map(|(s, _)| *s).collect();
        assert_eq!(order, [1, 3, 4, 2, 5]);
        let results = [
            result("x", Code::Created),
            result("x", Code::InsufficientStorage),
            // The node stopped x there; even a success after it must not be removed.
            result("x", Code::Created),
            result("y", Code::Ok),
            result("z", Code::NotFound),
        ];
        let settled = settle(batch, &results);
        let removed: Vec<(u64, String)> = settled
            .remove
            .iter()
            .map(|(seq, a)| (*seq, a.path().to_owned()))
            .collect();
        assert_eq!(removed, [(1, "x".into()), (2, "y".into()), (5, "z".into())]);
        assert_eq!(settled.kept, 2);
        let refused: Vec<u64> = settled.refused.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(refused, [5], "a refusal is dropped from the journal");
    }
}
