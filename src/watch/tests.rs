//! The hub's merge, resume and limits, without sockets: feeds are fed by hand.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ucxl::{Address, Change, ContentHash, EnvelopeId, Pattern};

use super::cursor::{Cursor, Key};
use super::event::Event;
use super::hub::{End, Filter, Hub, Open, Refusal, Subscription, WatchSettings};
use crate::auth::Principal;

const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const C: &str = "cccccccccccccccccccccccccccccccc";

fn settings(history: usize, buffer: usize) -> WatchSettings {
    WatchSettings {
        max_watches: 64,
        buffer,
        heartbeat: Duration::from_secs(15),
        history,
    }
}

fn put(path: &str, id: &str) -> Change {
    Change::Put {
        address: Address::parse(&format!("ucxl://a:r@p:t/{path}")).expect("address"),
        id: EnvelopeId::parse(id).expect("id"),
        version: 1,
        created_at: Utc.timestamp_opt(1_800_000_000, 0).single().expect("time"),
        hash: ContentHash::parse(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )
        .expect("hash"),
        size: 1,
        content_type: "application/json".into(),
        written_by: None,
    }
}

fn everything() -> Filter {
    Filter::new(Pattern::everything(), Arc::new(Principal::anonymous(None)))
}

fn ids(events: &[Arc<Event>]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.change.id().as_str().to_owned())
        .collect()
}

/// Everything queued for `sub` now.
fn drain(sub: &mut Subscription) -> Vec<Arc<Event>> {
    let mut seen = Vec::new();
    while let Ok(e) = sub.live.try_recv() {
        seen.push(e);
    }
    seen
}

fn watcher(hub: &Arc<Hub>, cursor: Option<&Cursor>) -> (Open, Result<Subscription, Refusal>) {
    let open = hub.open().expect("a slot");
    let sub = hub.subscribe(&open, everything(), cursor);
    (open, sub)
}

/// A hub reading feeds A, B and C live from 0.
fn three_feeds(history: usize, buffer: usize) -> (Arc<Hub>, [u16; 3]) {
    let hub = Hub::new(settings(history, buffer), None);
    let a = hub.attach("http://a", A, 0, 0).0;
    let b = hub.attach("http://b", B, 0, 0).0;
    let c = hub.attach("http://c", C, 0, 0).0;
    for ix in [a, b, c] {
        hub.passed(ix, 0);
    }
    (hub, [a, b, c])
}

#[test]
fn a_change_three_feeds_report_is_delivered_once() {
    let (hub, [a, b, c]) = three_feeds(100, 16);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    hub.ingest(b, 1, put("x", "v1"), None);
    hub.ingest(a, 1, put("x", "v1"), None);
    hub.ingest(c, 1, put("x", "v1"), None);
    hub.ingest(a, 2, put("x", "v2"), None);
    hub.ingest(c, 2, put("x", "v2"), None);
    assert_eq!(ids(&drain(&mut sub)), ["v1", "v2"]);
    // A number read again (a reconnect that overlaps) is no new change.
    hub.ingest(a, 2, put("x", "v2"), None);
    hub.ingest(b, 2, put("y", "w1"), None);
    assert_eq!(ids(&drain(&mut sub)), ["w1"]);
}

#[test]
fn a_resumed_watcher_gets_exactly_what_followed_its_cursor() {
    let (hub, [a, b, c]) = three_feeds(100, 64);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    for n in 1..=6u64 {
        let id = format!("v{n}");
        // Each change reaches the feeds in a different order, some feeds late.
        let order = match n % 3 {
            0 => [a, b, c],
            1 => [b, c, a],
            _ => [c, a, b],
        };
        for ix in order.iter().take(if n == 6 { 1 } else { 3 }) {
            hub.ingest(*ix, n, put("x", &id), None);
        }
    }
    let events = drain(&mut sub);
    assert_eq!(ids(&events), ["v1", "v2", "v3", "v4", "v5", "v6"]);
    for cut in 0..events.len() {
        let (_o, resumed) = watcher(&hub, Some(&events[cut].cursor));
        let resumed = resumed.expect("resumable");
        assert_eq!(
            ids(&resumed.backlog),
            ids(&events[cut + 1..]),
            "resuming after event {cut}"
        );
    }
}

#[test]
fn a_cursor_ahead_in_one_feed_and_behind_in_another_gets_no_duplicate() {
    let (hub, [a, b, _c]) = three_feeds(100, 64);
    hub.ingest(a, 1, put("x", "v1"), None);
    hub.ingest(a, 2, put("x", "v2"), None);
    hub.ingest(b, 1, put("x", "v1"), None);
    hub.ingest(b, 2, put("x", "v2"), None);
    // Another gateway read A up to 2 and B up to nothing: v1 and v2 were delivered there.
    let cursor = Cursor::parse(&format!("w1.{A}-2.{B}-0")).expect("cursor");
    let (_o, sub) = watcher(&hub, Some(&cursor));
    assert!(sub.expect("resumable").backlog.is_empty());
    let cursor = Cursor::parse(&format!("w1.{A}-1.{B}-0")).expect("cursor");
    let (_o, sub) = watcher(&hub, Some(&cursor));
    assert_eq!(ids(&sub.expect("resumable").backlog), ["v2"]);
}

#[test]
fn cursors_that_cannot_be_continued_are_gone_never_skipped() {
    let (hub, [a, _b, _c]) = three_feeds(3, 64);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    for n in 1..=6u64 {
        hub.ingest(a, n, put("x", &format!("v{n}")), None);
    }
    let events = drain(&mut sub);
    // The history holds v4..v6: a cursor after v3 is fine, one after v2 is not.
    let (_o, fine) = watcher(&hub, Some(&events[2].cursor));
    assert_eq!(ids(&fine.expect("resumable").backlog), ["v4", "v5", "v6"]);
    let (_o, old) = watcher(&hub, Some(&events[1].cursor));
    assert!(
        matches!(
            old,
            Err(Refusal::Gone {
                reason: "history",
                ..
            })
        ),
        "{old:?}"
    );
    let stranger = Cursor::parse("w1.dddddddddddddddddddddddddddddddd-9").expect("cursor");
    let (_o, other) = watcher(&hub, Some(&stranger));
    assert!(
        matches!(
            other,
            Err(Refusal::Gone {
                reason: "unknown_feeds",
                ..
            })
        ),
        "{other:?}"
    );
    // A cursor ahead of a streaming feed is waited for, not taken as delivered.
    let ahead = Cursor::parse(&format!("w1.{A}-9")).expect("cursor");
    let (_o, early) = watcher(&hub, Some(&ahead));
    assert!(matches!(early, Err(Refusal::Ahead)), "{early:?}");
}

#[test]
fn a_feeds_past_is_remembered_not_delivered_unless_reported_live_elsewhere() {
    let hub = Hub::new(settings(100, 16), None);
    // A is read from 0 with 2 entries committed before the gateway came.
    let a = hub.attach("http://a", A, 0, 2).0;
    let b = hub.attach("http://b", B, 0, 0).0;
    hub.passed(b, 0);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    hub.ingest(a, 1, put("x", "old"), None);
    hub.ingest(a, 2, put("x", "new"), None);
    hub.passed(a, 2);
    assert!(drain(&mut sub).is_empty(), "the past is not news");
    // B reports live what A had in its past: it is news after all (committed while the
    // gateway read A's past), and delivered once.
    hub.ingest(b, 1, put("x", "new"), None);
    hub.ingest(a, 3, put("x", "newer"), None);
    hub.ingest(b, 2, put("x", "newer"), None);
    assert_eq!(ids(&drain(&mut sub)), ["new", "newer"]);
}

#[test]
fn a_watcher_that_does_not_read_is_dropped_and_the_others_go_on() {
    let (hub, [a, _b, _c]) = three_feeds(100, 2);
    let (_slow_open, slow) = watcher(&hub, None);
    let mut slow = slow.expect("subscribed");
    let (_open, fast) = watcher(&hub, None);
    let mut fast = fast.expect("subscribed");
    for n in 1..=3u64 {
        hub.ingest(a, n, put("x", &format!("v{n}")), None);
        drain(&mut fast);
    }
    assert_eq!(slow.end.get(), Some(&End::Slow));
    assert_eq!(
        ids(&drain(&mut slow)),
        ["v1", "v2"],
        "what was queued is kept"
    );
    assert!(slow.live.try_recv().is_err(), "then the queue is closed");
    hub.ingest(a, 4, put("x", "v4"), None);
    assert_eq!(ids(&drain(&mut fast)), ["v4"]);
}

#[test]
fn the_limit_of_streams_is_kept() {
    let hub = Hub::new(
        WatchSettings {
            max_watches: 4,
            ..settings(10, 4)
        },
        None,
    );
    let opens: Vec<Open> = (0..4).map(|_| hub.open().expect("a slot")).collect();
    assert!(matches!(hub.open(), Err(Refusal::Full(4))));
    drop(opens);
    assert_eq!(hub.active(), 0);
    assert!(hub.open().is_ok());
}

#[test]
fn a_change_only_one_node_had_reported_travels_in_the_cursor() {
    let (hub, [a, b, _c]) = three_feeds(100, 16);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    hub.ingest(a, 1, put("x", "v1"), None);
    let events = drain(&mut sub);
    let key = Key::of(events[0].change.address(), events[0].change.id());
    assert_eq!(events[0].cursor.pending, vec![key]);
    // A gateway that never knew feed A (its node is gone) learns of v1 from B only:
    // the cursor says it was delivered.
    let other = Hub::new(settings(100, 16), None);
    let ob = other.attach("http://b", B, 0, 0).0;
    other.passed(ob, 0);
    let (_o, resumed) = watcher(&other, Some(&events[0].cursor));
    let resumed = resumed.expect("resumable");
    assert!(resumed.backlog.is_empty());
    assert_eq!(resumed.base.pending, vec![key], "kept for the live check");
    // Once B reports it here too, the key is settled and no longer carried.
    hub.ingest(b, 1, put("x", "v1"), None);
    hub.ingest(b, 2, put("y", "w1"), None);
    let later = drain(&mut sub);
    assert!(!later[0].cursor.pending.contains(&key));
}

#[test]
fn local_writes_are_delivered_at_once_and_not_again_when_replayed() {
    let (hub, [a, b, _c]) = three_feeds(100, 16);
    let (_open, sub) = watcher(&hub, None);
    let mut sub = sub.expect("subscribed");
    hub.local_change(put("x", "fallback1"));
    assert_eq!(ids(&drain(&mut sub)), ["fallback1"]);
    // The journal replays it: the nodes' feeds report it.
    hub.ingest(a, 1, put("x", "fallback1"), None);
    hub.ingest(b, 1, put("x", "fallback1"), None);
    hub.local_change(put("x", "fallback1"));
    assert!(drain(&mut sub).is_empty());
}

#[test]
fn an_events_json_and_cursor_text_are_made_when_first_sent_and_then_shared() {
    let change = put("x", "v1");
    let mut cursor = Cursor::default();
    cursor.feeds.insert(Arc::from(A), 7);
    let event = Event::new(
        Key::of(change.address(), change.id()),
        change.clone(),
        cursor.clone(),
        None,
        Arc::from("local"),
        (Arc::from(A), 7),
    );
    assert!(!event.rendered(), "nothing made before a watcher asks");
    let data = event.data();
    assert!(Arc::ptr_eq(&data, &event.data()), "made once");
    let json: serde_json::Value = serde_json::from_str(&data).expect("json");
    assert_eq!(json["id"], "v1");
    assert_eq!(json["address"], "ucxl://a:r@p:t/x");
    let text = event.cursor_text();
    assert!(Arc::ptr_eq(&text, &event.cursor_text()), "made once");
    assert_eq!(&*text, cursor.render());
}
