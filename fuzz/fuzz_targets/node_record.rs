//! Fuzzes the node's decoding of records from the network (`bzzz_node::store::decode`):
//! what a peer pushes in a replication request, a Kademlia record, or a catch-up answer.
//! These bytes come from other machines, so nothing in them may panic the node or yield a
//! record that breaks the version-set invariants.
//!
//! Invariants checked for every input that decodes:
//! - the address has no temporal segment and parses again from its canonical form (a
//!   literal `any` component is an ordinary key);
//! - entries are sorted by (`created_at`, `id`) and ids are unique;
//! - a record that passes `verify_digests` (what a merge checks before adding versions)
//!   carries, in every version, the hash and size of its content;
//! - encoding the record and decoding it again gives the same record (a record survives
//!   being stored and pushed on);
//! - merging the set into itself changes nothing, and merging it into an empty set gives it;
//! - reading it (latest, history, every version number, the envelope of each) never panics,
//!   and an envelope encodes to JSON.
#![no_main]

use bzzz_node::store::{self, DhtValue};
use libfuzzer_sys::fuzz_target;
use ucxl::{Entry, Envelope, Temporal, VersionSet, content_digest};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = store::decode(data) else {
        return;
    };
    assert_eq!(value.address.temporal(), Temporal::Latest);
    assert_eq!(
        ucxl::Address::parse(value.address.canonical()).as_ref(),
        Ok(&value.address),
        "the canonical form parses to the record's address"
    );

    let entries = value.set.entries();
    for pair in entries.windows(2) {
        let key = |e: &Entry| (e.created_at(), e.id().as_str().to_owned());
        assert!(key(&pair[0]) < key(&pair[1]), "entries out of order or repeated");
    }
    let mut ids = std::collections::HashSet::new();
    assert!(entries.iter().all(|e| ids.insert(e.id().clone())), "repeated id");

    // What a merge would add is checked by `verify_digests`; what passes must really carry
    // its content's hash and size.
    if store::verify_digests(entries).is_ok() {
        for entry in entries {
            if let Entry::Version(v) = entry {
                let (hash, size) = content_digest(&v.content).expect("checked content has a digest");
                assert_eq!((&hash, size), (&v.hash, v.size), "a version whose hash is not its content's passed");
            }
        }
    }

    let encoded = serde_json::to_vec(&value).expect("a decoded record encodes");
    let again: DhtValue = store::decode(&encoded).expect("an encoded record decodes");
    assert_eq!(again, value, "record round trip");

    let mut merged = value.set.clone();
    assert!(!merged.merge(&value.set), "merging a set into itself changed it");
    assert_eq!(merged, value.set);
    let mut empty = VersionSet::default();
    empty.merge(&value.set);
    assert_eq!(empty, value.set, "merging into an empty set");

    let _ = value.set.history();
    let _ = value.set.is_live();
    let count = u32::try_from(value.set.len()).unwrap_or(u32::MAX);
    for temporal in [
        Temporal::Latest,
        Temporal::First,
        Temporal::Version(1),
        Temporal::Version(count),
        Temporal::Back(1),
        Temporal::Forward(count),
    ] {
        if let Some((n, version)) = value.set.resolve(temporal) {
            let envelope = Envelope::new(&value.address, n, version);
            serde_json::to_vec(&envelope).expect("an envelope encodes");
        }
    }
});
