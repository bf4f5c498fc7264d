//! Micro-benchmarks of the UCXL primitives on the gateway's and the node's hot paths:
//! address parsing, pattern matching, JCS hashing and version-set merge.
//!
//! `cargo bench -p ucxl` (criterion; HTML reports under `target/criterion`).

use std::hint::black_box;

use chrono::{Duration, TimeZone, Utc};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use ucxl::{Address, EnvelopeId, NewVersion, Pattern, VersionSet, content_digest};

const ADDRESSES: &[(&str, &str)] = &[
    ("short", "ucxl://a:b@c:d/e"),
    (
        "typical",
        "ucxl://claude:architect@bzzz:v2-migration/decisions/protocol.json",
    ),
    (
        "temporal",
        "ucxl://claude:architect@bzzz:v2-migration/*^/decisions/protocol.json",
    ),
    (
        "encoded",
        "ucxl://claude:architect@bzzz:v2-migration/notes/caf%C3%A9%20menu/2026-11-24.md",
    ),
];

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("address_parse");
    for (name, text) in ADDRESSES {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), text, |b, text| {
            b.iter(|| Address::parse(black_box(text)));
        });
    }
    group.finish();
    c.bench_function("pattern_parse", |b| {
        b.iter(|| Pattern::parse(black_box("ucxl://any:architect@bzzz:*/decisions/**")));
    });
}

fn matching(c: &mut Criterion) {
    let addresses: Vec<Address> = (0..1000)
        .map(|i| {
            let agent = ["claude", "gpt", "gemini", "llama"][i % 4];
            let dir = ["decisions", "notes", "plans"][i % 3];
            Address::parse(&format!(
                "ucxl://{agent}:architect@bzzz:task-{}/{dir}/item-{i}.json",
                i % 10
            ))
            .expect("benchmark addresses are valid")
        })
        .collect();
    let mut group = c.benchmark_group("pattern_match_1000");
    group.throughput(Throughput::Elements(addresses.len() as u64));
    for (name, text) in [
        (
            "exact",
            "ucxl://claude:architect@bzzz:task-0/decisions/item-0.json",
        ),
        ("any_agent", "ucxl://any:architect@bzzz:any/decisions/*"),
        ("globstar", "ucxl://*:*@bzzz:task-*/**"),
    ] {
        let pattern = Pattern::parse(text).expect("benchmark patterns are valid");
        group.bench_function(name, |b| {
            b.iter(|| addresses.iter().filter(|a| pattern.matches(a)).count());
        });
    }
    group.finish();
}

fn document(fields: usize) -> Value {
    let mut map = serde_json::Map::new();
    for i in 0..fields {
        map.insert(
            format!("field-{:04}", fields - i),
            json!({"text": "the quick brown fox — ünïcödé", "n": i, "x": 1.5e-7, "ok": i % 2 == 0}),
        );
    }
    Value::Object(map)
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("jcs_sha256");
    for fields in [1, 16, 256] {
        let value = document(fields);
        let bytes = serde_json::to_vec(&value).map_or(0, |v| v.len());
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(BenchmarkId::from_parameter(bytes), &value, |b, value| {
            b.iter(|| content_digest(black_box(value)));
        });
    }
    group.finish();
}

/// A replica's set of `n` versions written one second apart, ids `prefix-i`.
fn replica(prefix: &str, n: usize, step: usize) -> VersionSet {
    let start = Utc
        .with_ymd_and_hms(2026, 11, 24, 10, 0, 0)
        .single()
        .expect("a valid time");
    let mut set = VersionSet::default();
    for i in (0..n).step_by(step) {
        let id = EnvelopeId::parse(&format!("{prefix}-{i:06}")).expect("a valid id");
        let mut new = NewVersion::json(id, json!({"i": i}));
        let at = start + Duration::seconds(i64::try_from(i).unwrap_or(i64::MAX));
        new.created_at = Some(at);
        set.put(new, at).expect("the write is accepted");
    }
    set
}

fn merging(c: &mut Criterion) {
    let mut group = c.benchmark_group("version_set_merge");
    for n in [10, 100, 1000] {
        let mine = replica("v", n, 2);
        let theirs = replica("v", n, 1);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("half_missing", n), &n, |b, _| {
            b.iter_batched_ref(
                || mine.clone(),
                |set| set.merge(black_box(&theirs)),
                criterion::BatchSize::SmallInput,
            );
        });
        group.bench_with_input(BenchmarkId::new("in_sync", n), &n, |b, _| {
            b.iter_batched_ref(
                || theirs.clone(),
                |set| set.merge(black_box(&theirs)),
                criterion::BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, parse, matching, hashing, merging);
criterion_main!(benches);
