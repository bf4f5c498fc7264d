//! The real backend: the BZZZ cluster through [`Cluster`], speaking the UCXI API of SPEC §9.
//! A node's definite answers (data, or a 4xx refusal) are passed on; when the cluster cannot
//! answer, the failure names every endpoint's error (503, or 504 on the deadline).
//!
//! Every envelope read or written fills the local store as a cache, so a later fallback
//! read (hybrid mode) can answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use axum::body::Bytes;
use serde::{Deserialize, Serialize};
use ucxl::batch::{ItemOutcome, ItemResult, Results};
use ucxl::{Address, Envelope, EnvelopeId, History, NewVersion, SearchItem};

use super::{
    Backend, BackendError, BackendKind, BackendStatus, Call, Deleted, FallbackStatus,
    JournalStatus, NotServed, Outcome, SearchPage, SearchQuery, Served, Via, Written,
    encode_cursor,
};
use crate::store::local::LocalStore;
use crate::upstream::cluster::{Cluster, ClusterFailure, Executed, FailureKind};
use crate::upstream::ucxi::{Answer, NodeRequest, Subject};

/// `?name=value` with the value percent-encoded.
fn query_pair(name: &str, value: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    format!("{name}={encoded}")
}

fn address_path(route: &str, address: &Address) -> String {
    // One allocation: this runs on every proxied request.
    let latest = address.temporal() == ucxl::Temporal::Latest;
    let owned = (!latest).then(|| address.to_string());
    let text = owned.as_deref().unwrap_or(address.canonical());
    let mut path = String::with_capacity(22 + route.len() + text.len() * 2);
    path.push_str("/ucxi/v1/");
    path.push_str(route);
    path.push_str("?address=");
    path.extend(url::form_urlencoded::byte_serialize(text.as_bytes()));
    path
}

/// The body of a node put: the whole version when replaying (so the node keeps its id,
/// time and hash), else what the client sent plus the id. Written straight from the
/// version's fields: no intermediate `Value` tree, content copied as it is held.
#[must_use]
pub fn put_body(new: &NewVersion) -> Bytes {
    #[derive(Serialize)]
    struct NodePut<'a> {
        id: &'a ucxl::EnvelopeId,
        content: &'a ucxl::Content,
        content_type: &'a str,
        metadata: &'a serde_json::Map<String, serde_json::Value>,
        #[serde(
            with = "ucxl::envelope::rfc3339::option",
            skip_serializing_if = "Option::is_none"
        )]
        created_at: Option<chrono::DateTime<chrono::Utc>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        hash: Option<&'a ucxl::ContentHash>,
        #[serde(skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        written_by: Option<&'a ucxl::PrincipalName>,
    }
    let body = NodePut {
        id: &new.id,
        content: &new.content,
        content_type: &new.content_type,
        metadata: &new.metadata,
        created_at: new.created_at,
        hash: new.hash.as_ref(),
        size: new.size,
        written_by: new.written_by.as_ref(),
    };
    // Serialising borrowed ids, strings, a map and JSON content cannot fail.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A node's discover page.
#[derive(Debug, Deserialize)]
struct Discovered {
    items: Vec<SearchItem>,
    next_after: Option<String>,
}

impl crate::upstream::ucxi::About for Discovered {}

/// The BZZZ cluster as a backend.
#[derive(Debug, Clone)]
pub struct RealBackend {
    cluster: Arc<Cluster>,
    cache: Arc<LocalStore>,
    /// Canonical address → the endpoint that took its last write, and when.
    affinity: Arc<Mutex<Affinity>>,
}

/// Canonical address (its shared text: no copy per entry) → the endpoint that took its
/// last write, and when.
type Affinity = HashMap<Arc<str>, (String, tokio::time::Instant)>;

/// Addresses whose last writer is remembered; past this the memory starts afresh.
const AFFINITY_MAX: usize = 65_536;
/// How long after a write its address's reads prefer the endpoint that took it. A node
/// acknowledges a write once every reachable replica holds it, or a majority does and
/// 100 ms have passed; a replica that was behind catches up within about a second. After
/// this window any replica answers the write, so reads go wherever latency says, and a
/// node that turned slow does not keep the reads of the addresses it once wrote.
pub const AFFINITY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// The data of a definite answer, or the node's refusal; a cluster failure with its
/// attempts.
fn data<T>(
    executed: Result<Executed<T>, ClusterFailure>,
) -> Result<(T, Via, ucxl::Code), NotServed> {
    let executed = executed.map_err(|failure| {
        let via = Via::real(None, failure.attempts);
        NotServed::new(failure, via)
    })?;
    let via = Via::real(Some(executed.endpoint), executed.attempts);
    match executed.answer {
        Answer::Ok { code, data } => Ok((data, via, code)),
        Answer::Refused(refusal) => Err(NotServed::new(BackendError::Refused(refusal), via)),
    }
}

impl RealBackend {
    /// The cluster as a backend; envelopes seen fill `cache` (evictable entries of the
    /// local store), so a switch to hybrid mode finds it warm.
    #[must_use]
    pub fn new(cluster: Arc<Cluster>, cache: Arc<LocalStore>) -> Self {
        Self {
            cluster,
            cache,
            affinity: Arc::default(),
        }
    }

    /// A request about `address` to the node API's `verb`, preferring the endpoint that
    /// took the address's last write.
    fn about(&self, method: axum::http::Method, verb: &str, address: &Address) -> NodeRequest {
        let read = method == axum::http::Method::GET;
        NodeRequest {
            method,
            path: address_path(verb, address),
            headers: Vec::new(),
            body: None,
            prefer: self.affinity(address),
            list: false,
            about: Subject::Address(address.canonical_shared()),
            // Reads are hedged. Writes are not, although idempotent by id: a hedge could
            // find the write its slower twin already replicated and answer "existed"
            // (200) for a write this very request created.
            hedge: read,
        }
    }

    fn affinity(&self, address: &Address) -> Option<String> {
        let now = tokio::time::Instant::now();
        self.affinity
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(address.canonical())
            .filter(|(_, at)| now.saturating_duration_since(*at) < AFFINITY_WINDOW)
            .map(|(endpoint, _)| endpoint.clone())
    }

    /// Remembers which endpoint took a write: later reads of the address go there first,
    /// so a client reads its own write even before the other replicas have it.
    fn wrote(&self, address: &Address, via: &Via) {
        let Some(endpoint) = &via.endpoint else {
            return;
        };
        let mut map = self.affinity.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= AFFINITY_MAX && !map.contains_key(address.canonical()) {
            map.clear();
        }
        map.insert(
            address.canonical_shared(),
            (endpoint.clone(), tokio::time::Instant::now()),
        );
    }

    /// The cluster.
    #[must_use]
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Caches the newest version the cluster answered (a put's, or a read of the latest;
    /// a read of a past version says nothing about the newest), unless a change at its
    /// address was reported since `generation` (when the request was sent).
    fn remember(&self, generation: u64, envelope: &Envelope) {
        self.cache.observe_since(
            generation,
            &envelope.address,
            envelope.version,
            &Arc::new(envelope.to_version()),
        );
    }

    /// Sends a put of `new` (also used by the journal replay).
    ///
    /// # Errors
    /// The node's refusal or the cluster's failure.
    pub async fn send_put(
        &self,
        call: &Call,
        address: &Address,
        new: &NewVersion,
    ) -> Outcome<Written> {
        let request = NodeRequest {
            body: Some(put_body(new)),
            ..self.about(axum::http::Method::PUT, "put", address)
        };
        let generation = self.cache.generation();
        let (envelope, via, code) = data(self.cluster.execute::<Envelope>(call, request).await)?;
        self.remember(generation, &envelope);
        self.wrote(address, &via);
        Ok(Served {
            value: Written {
                envelope,
                created: code == ucxl::Code::Created,
            },
            via,
        })
    }

    /// Sends a delete (also used by the journal replay, with the original time).
    ///
    /// # Errors
    /// The node's refusal or the cluster's failure.
    pub async fn send_delete(
        &self,
        call: &Call,
        address: &Address,
        id: &EnvelopeId,
        deleted_at: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Outcome<Deleted> {
        let mut headers = vec![(
            ucxl_service::headers::IDEMPOTENCY_KEY,
            id.as_str().to_owned(),
        )];
        if let Some(at) = deleted_at {
            headers.push((
                ucxl_service::headers::DELETED_AT,
                ucxl::envelope::rfc3339::format(at),
            ));
        }
        let request = NodeRequest {
            headers,
            ..self.about(axum::http::Method::DELETE, "delete", address)
        };
        let generation = self.cache.generation();
        let (deleted, via, _) = data(self.cluster.execute::<Deleted>(call, request).await)?;
        self.wrote(address, &via);
        self.cache.observe_delete_since(
            generation,
            address,
            ucxl::Tombstone {
                id: deleted.id.clone(),
                created_at: deleted.deleted_at,
            },
        );
        Ok(Served {
            value: deleted,
            via,
        })
    }

    /// Sends a batch of writes (the journal replay): `body` is a [`ucxl::batch::Batch`]
    /// whose items write `addresses`, in order. The answer holds one result per item, each
    /// about its item's address (checked, like every answer, before it is believed).
    ///
    /// # Errors
    /// The node's refusal of the whole batch (an older node without the route answers
    /// 404 or 405), or the cluster's failure.
    pub async fn send_batch(
        &self,
        call: &Call,
        body: Bytes,
        addresses: Vec<Address>,
    ) -> Outcome<Vec<ItemResult>> {
        let request = NodeRequest {
            method: axum::http::Method::POST,
            path: ucxl::batch::ROUTE.to_owned(),
            headers: Vec::new(),
            body: Some(body),
            prefer: None,
            // One result per item: an answer as large as a list's.
            list: true,
            about: Subject::Items(addresses),
            // Writes are not hedged (see `about`).
            hedge: false,
        };
        let (results, via, _) = data(self.cluster.execute::<Results>(call, request).await)?;
        for result in &results.results {
            if matches!(result.outcome(), ItemOutcome::Done { .. }) {
                self.wrote(&result.address, &via);
            }
        }
        Ok(Served {
            value: results.results,
            via,
        })
    }
}

/// Merges discover pages: per address the newest version, sorted by address, cut where
/// every node's answer is complete, then to `limit`.
fn merge_pages(pages: Vec<Discovered>, limit: usize) -> (Vec<SearchItem>, bool) {
    let mut merged: BTreeMap<String, SearchItem> = BTreeMap::new();
    // A node that has more stopped at its last address: beyond the smallest such address
    // another node's items may be missing, so the page ends there.
    let mut cut: Option<String> = None;
    for page in pages {
        if page.next_after.is_some()
            && let Some(last) = page.items.last()
        {
            let last = last.address.canonical().to_owned();
            if cut.as_ref().is_none_or(|c| last < *c) {
                cut = Some(last);
            }
        }
        for item in page.items {
            let key = item.address.canonical().to_owned();
            match merged.get(&key) {
                Some(held)
                    if (held.created_at, held.version) >= (item.created_at, item.version) => {}
                _ => {
                    merged.insert(key, item);
                }
            }
        }
    }
    let mut items: Vec<SearchItem> = merged
        .into_iter()
        .filter(|(k, _)| cut.as_ref().is_none_or(|c| k <= c))
        .map(|(_, v)| v)
        .collect();
    let more = cut.is_some() || items.len() > limit;
    items.truncate(limit);
    (items, more)
}

#[async_trait]
impl Backend for RealBackend {
    async fn put(&self, call: &Call, address: &Address, new: NewVersion) -> Outcome<Written> {
        self.send_put(call, address, &new).await
    }

    async fn get(&self, call: &Call, address: &Address) -> Outcome<Envelope> {
        let request = self.about(axum::http::Method::GET, "get", address);
        let generation = self.cache.generation();
        let (envelope, via, _) = data(self.cluster.execute::<Envelope>(call, request).await)?;
        if address.temporal() == ucxl::Temporal::Latest {
            self.remember(generation, &envelope);
        }
        Ok(Served {
            value: envelope,
            via,
        })
    }

    async fn delete(&self, call: &Call, address: &Address, id: EnvelopeId) -> Outcome<Deleted> {
        self.send_delete(call, address, &id, None).await
    }

    async fn history(&self, call: &Call, address: &Address) -> Outcome<History> {
        let request = NodeRequest {
            list: true,
            ..self.about(axum::http::Method::GET, "history", address)
        };
        let (history, via, _) = data(self.cluster.execute::<History>(call, request).await)?;
        Ok(Served {
            value: history,
            via,
        })
    }

    async fn search(&self, call: &Call, query: &SearchQuery) -> Outcome<SearchPage> {
        let mut path = format!(
            "/ucxi/v1/discover?{}&limit={}",
            query_pair("pattern", &query.pattern.to_string()),
            query.limit
        );
        if let Some(after) = &query.after {
            path.push('&');
            path.push_str(&query_pair("after", after));
        }
        if let Some(content_type) = &query.content_type {
            path.push('&');
            path.push_str(&query_pair("content_type", content_type));
        }
        let request = NodeRequest {
            method: axum::http::Method::GET,
            path,
            headers: Vec::new(),
            body: None,
            prefer: None,
            list: true,
            about: Subject::Any,
            hedge: false,
        };
        let fan = self.cluster.fan_out::<Discovered>(call, request).await;
        let asked = u32::try_from(fan.results.len()).unwrap_or(u32::MAX);
        let mut failed = fan.skipped;
        let mut pages = Vec::new();
        let mut errors = Vec::new();
        let mut refusal = None;
        for (url, result) in fan.results {
            match result {
                Ok(Answer::Ok { data, .. }) => pages.push(data),
                Ok(Answer::Refused(r)) => {
                    errors.push((url.clone(), format!("refused: {}", r.code)));
                    refusal.get_or_insert_with(|| (r, Via::real(Some(url.clone()), 1)));
                    failed.push(url);
                }
                Err(e) => {
                    errors.push((url.clone(), e.public()));
                    failed.push(url);
                }
            }
        }
        if pages.is_empty() {
            // A refusal (a query the nodes reject) is the client's error, not an outage.
            if let Some((r, via)) = refusal {
                return Err(NotServed::new(BackendError::Refused(r), via));
            }
            let kind = if call.remaining().is_zero() {
                FailureKind::Deadline
            } else if asked == 0 {
                FailureKind::NoneAvailable
            } else {
                FailureKind::Exhausted
            };
            // The endpoints not asked are named with the reason they were skipped.
            return Err(NotServed::new(
                self.cluster.failure(kind, asked, errors),
                Via::real(None, asked),
            ));
        }
        let (items, more) = merge_pages(pages, query.limit);
        let next_cursor = more
            .then(|| items.last().map(|i| encode_cursor(i.address.canonical())))
            .flatten();
        let partial = !failed.is_empty();
        if partial {
            metrics::counter!("rustle_search_partial_total").increment(1);
        }
        failed.sort();
        Ok(Served {
            value: SearchPage {
                items,
                next_cursor,
                partial,
                failed_endpoints: failed,
            },
            via: Via::real(None, asked),
        })
    }

    fn ready(&self) -> bool {
        self.cluster.any_available()
    }

    fn status(&self) -> BackendStatus {
        BackendStatus {
            active_backend: BackendKind::Real,
            fallback: FallbackStatus {
                active: false,
                since: None,
            },
            journal: JournalStatus { pending: 0 },
            endpoints: self.cluster.status(),
            local_store: self.cache.status(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn a_node_put_carries_the_version_and_its_content_as_held() {
        let mut new = NewVersion::json(EnvelopeId::generate(), json!({"k": [1, "x"]}));
        let body: serde_json::Value = serde_json::from_slice(&put_body(&new)).expect("json");
        assert_eq!(
            body,
            json!({"id": new.id, "content": {"k": [1, "x"]},
                   "content_type": "application/json", "metadata": {}})
        );
        // A replayed version keeps its time, hash, size and writer; text content is copied
        // verbatim.
        let text: ucxl::Content =
            serde_json::from_str(r#"{"b":1.50,"a":"\u00e9"}"#).expect("content");
        let at = chrono::Utc
            .timestamp_opt(1_800_000_000, 123_456_000)
            .single()
            .expect("time");
        let (hash, size) = text.digest().expect("digest");
        new.content = text;
        new.created_at = Some(at);
        new.hash = Some(hash.clone());
        new.size = Some(size);
        new.metadata.insert("m".into(), json!(true));
        let raw = String::from_utf8(put_body(&new).to_vec()).expect("utf-8");
        assert!(
            raw.contains(r#""content":{"b":1.50,"a":"\u00e9"}"#),
            "{raw}"
        );
        let body: serde_json::Value = serde_json::from_str(&raw).expect("json");
        assert_eq!(
            body["created_at"],
            json!(ucxl::envelope::rfc3339::format(at))
        );
        assert_eq!(body["hash"], json!(hash));
        assert_eq!(body["size"], json!(size));
        assert_eq!(body["metadata"], json!({"m": true}));
        assert!(body.get("written_by").is_none());
    }

    fn item(address: &str, version: u32, secs: i64) -> SearchItem {
        let t = chrono::Utc
            .timestamp_opt(1_800_000_000 + secs, 0)
            .single()
            .expect("time");
        serde_json::from_value(json!({
            "address": address, "version": version, "id": format!("id-{version}-{secs}"),
            "created_at": ucxl::envelope::rfc3339::format(t),
            "content_type": "application/json", "size": 1
        }))
        .expect("item")
    }

    #[test]
    fn merge_keeps_the_newest_version_sorted_by_address() {
        let a = Discovered {
            items: vec![
                item("ucxl://a:b@c:d/1", 1, 0),
                item("ucxl://a:b@c:d/2", 2, 5),
            ],
            next_after: None,
        };
        let b = Discovered {
            items: vec![
                item("ucxl://a:b@c:d/2", 3, 9),
                item("ucxl://a:b@c:d/0", 1, 0),
            ],
            next_after: None,
        };
        let (items, more) = merge_pages(vec![a, b], 10);
        let seen: Vec<(String, u32)> = items
            .iter()
            .map(|i| (i.address.canonical().to_owned(), i.version))
            .collect();
        assert_eq!(
            seen,
            [
                ("ucxl://a:b@c:d/0".to_owned(), 1),
                ("ucxl://a:b@c:d/1".to_owned(), 1),
                ("ucxl://a:b@c:d/2".to_owned(), 3)
            ]
        );
        assert!(!more);
    }

    #[test]
    fn merge_cuts_where_a_node_with_more_stopped() {
        // node a has more after /2; node b's /3 may be preceded by a's unseen items
        let a = Discovered {
            items: vec![
                item("ucxl://a:b@c:d/1", 1, 0),
                item("ucxl://a:b@c:d/2", 1, 0),
            ],
            next_after: Some("ucxl://a:b@c:d/2".into()),
        };
        let b = Discovered {
            items: vec![item("ucxl://a:b@c:d/3", 1, 0)],
            next_after: None,
        };
        let (items, more) = merge_pages(vec![a, b], 2);
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].address.canonical(), "ucxl://a:b@c:d/2");
        assert!(more, "the next page starts after /2 and finds /3");
        // without more on any node, a merged page longer than the limit still says more
        let c = Discovered {
            items: vec![item("ucxl://a:b@c:d/1", 1, 0)],
            next_after: None,
        };
        let d = Discovered {
            items: vec![item("ucxl://a:b@c:d/2", 1, 0)],
            next_after: None,
        };
        let (items, more) = merge_pages(vec![c, d], 1);
        assert_eq!(items.len(), 1);
        assert!(more);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_prefer_the_writer_only_for_a_while_after_the_write() {
        let mut config = crate::config::Sources::default()
            .resolve()
            .expect("defaults");
        config.bzzz_endpoints = vec!["http://a.test:1".parse().expect("url")];
        let cluster = Arc::new(
            Cluster::new(&config, crate::upstream::cluster::Jitters::default()).expect("cluster"),
        );
        let real = RealBackend::new(cluster, Arc::new(LocalStore::new(10)));
        let a = Address::parse("ucxl://a:b@c:d/x").expect("address");
        real.wrote(&a, &Via::real(Some("http://a.test:1".into()), 1));
        assert_eq!(real.affinity(&a).as_deref(), Some("http://a.test:1"));
        tokio::time::advance(AFFINITY_WINDOW).await;
        assert_eq!(real.affinity(&a), None, "any replica has it by now");
    }
}
