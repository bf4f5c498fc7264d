//! Searching a sorted collection of version sets: the semantics every store shares
//! (latest live version per matching address, sorted by canonical address, paginated by
//! the last address seen, optionally filtered by media type).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Instant;

use crate::address::Address;
use crate::envelope::SearchItem;
use crate::pattern::Pattern;
use crate::version_set::VersionSet;

/// A validated search request.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Which addresses.
    pub pattern: Pattern,
    /// Page size.
    pub limit: usize,
    /// Continue after this canonical address.
    pub after: Option<String>,
    /// Only envelopes of this media type (compared by `type/subtype`).
    pub content_type: Option<String>,
}

/// The deadline passed before the scan finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the search deadline passed")]
pub struct SearchTimeout;

/// Compares media types by essence (`type/subtype`), ignoring case and parameters.
#[must_use]
pub fn same_media_type(a: &str, b: &str) -> bool {
    let essence = |s: &str| {
        s.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    };
    essence(a) == essence(b)
}

impl SearchQuery {
    /// One page of matches from `records` (keyed by canonical address), plus whether more
    /// follow. Scans only the range the pattern's literal prefix allows and gives up once
    /// `deadline` has passed.
    ///
    /// # Errors
    /// [`SearchTimeout`].
    pub fn scan<K: std::borrow::Borrow<str> + Ord, R>(
        &self,
        records: &BTreeMap<K, R>,
        view: impl Fn(&R) -> (&Address, &VersionSet),
        deadline: Instant,
    ) -> Result<(Vec<SearchItem>, bool), SearchTimeout> {
        /// Records scanned between deadline checks.
        const CHECK_EVERY: usize = 256;
        let prefix = self.pattern.literal_prefix();
        let start = match self.after.as_deref() {
            Some(after) if after >= prefix.as_str() => Bound::Excluded(after),
            _ => Bound::Included(prefix.as_str()),
        };
        let mut items = Vec::new();
        for (scanned, (key, record)) in records
            .range::<str, _>((start, Bound::Unbounded))
            .enumerate()
        {
            if !key.borrow().starts_with(&prefix) {
                break;
            }
            if scanned % CHECK_EVERY == CHECK_EVERY - 1 && Instant::now() >= deadline {
                return Err(SearchTimeout);
            }
            let (address, set) = view(record);
            if !self.pattern.matches(address) {
                continue;
            }
            let Some((version, latest)) = set.latest() else {
                continue;
            };
            if let Some(wanted) = &self.content_type
                && !same_media_type(wanted, &latest.content_type)
            {
                continue;
            }
            if items.len() == self.limit {
                return Ok((items, true));
            }
            items.push(SearchItem::new(address, version, latest));
        }
        Ok((items, false))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;
    use serde_json::{Map, json};

    use super::*;
    use crate::{EnvelopeId, NewVersion};

    fn records(names: &[&str]) -> BTreeMap<String, (Address, VersionSet)> {
        names
            .iter()
            .map(|n| {
                let a = Address::parse(n).expect("valid");
                let mut set = VersionSet::default();
                set.put(
                    NewVersion {
                        id: EnvelopeId::generate(),
                        content: json!(n).into(),
                        content_type: if n.contains("markdown") {
                            "text/markdown".into()
                        } else {
                            "application/json".into()
                        },
                        metadata: Map::new(),
                        created_at: None,
                        hash: None,
                        size: None,
                        written_by: None,
                    },
                    Utc::now(),
                )
                .expect("put");
                (a.canonical().to_owned(), (a, set))
            })
            .collect()
    }

    fn query(pattern: &str, limit: usize, after: Option<&str>) -> SearchQuery {
        SearchQuery {
            pattern: Pattern::parse(pattern).expect("pattern"),
            limit,
            after: after.map(str::to_owned),
            content_type: None,
        }
    }

    fn view(x: &(Address, VersionSet)) -> (&Address, &VersionSet) {
        (&x.0, &x.1)
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn pages_in_address_order_within_the_prefix() {
        let r = records(&[
            "ucxl://a:b@p:t/c",
            "ucxl://a:b@p:t/a",
            "ucxl://a:b@q:t/a",
            "ucxl://a:b@p:t/b",
        ]);
        let (page, more) = query("ucxl://a:b@p:any/*", 2, None)
            .scan(&r, view, far())
            .expect("in time");
        let names: Vec<_> = page.iter().map(|i| i.address.to_string()).collect();
        assert_eq!(names, ["ucxl://a:b@p:t/a", "ucxl://a:b@p:t/b"]);
        assert!(more);
        let (page, more) = query("ucxl://a:b@p:any/*", 2, Some("ucxl://a:b@p:t/b"))
            .scan(&r, view, far())
            .expect("in time");
        assert_eq!(page.len(), 1);
        assert!(!more);
    }

    #[test]
    fn filters_by_media_type_and_gives_up_at_the_deadline() {
        let r = records(&["ucxl://a:b@p:t/markdown", "ucxl://a:b@p:t/y"]);
        let mut q = query("ucxl://any:any@any:any/**", 10, None);
        q.content_type = Some("Text/Markdown; charset=utf-8".into());
        let (page, _) = q.scan(&r, view, far()).expect("in time");
        assert_eq!(page.len(), 1);
        let many: Vec<String> = (0..600).map(|i| format!("ucxl://a:b@p:t/n{i}")).collect();
        let many = records(&many.iter().map(String::as_str).collect::<Vec<_>>());
        let past = Instant::now()
            .checked_sub(Duration::from_millis(1))
            .unwrap_or_else(Instant::now);
        assert_eq!(
            query("ucxl://any:any@any:any/**", 1000, None)
                .scan(&many, view, past)
                .err(),
            Some(SearchTimeout)
        );
    }

    #[test]
    fn media_types_compare_by_essence() {
        assert!(same_media_type(
            "application/json",
            "Application/JSON; charset=utf-8"
        ));
        assert!(!same_media_type("text/plain", "application/json"));
    }
}
