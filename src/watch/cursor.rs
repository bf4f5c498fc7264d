//! The resume cursor of a watch stream (each event's SSE `id`): how far every change feed
//! has been read, and the few changes delivered that only one feed had reported yet.
//!
//! Text: `w1`, then `.<feed id>-<seq>` per feed and `.p<key>` per such change, e.g.
//! `w1.6f1c…e2-1042.9a0b…17-1039.p3c5e0a1b2c3d4e5f`. Only characters that need no escaping
//! in a URL query or an HTTP header.
//!
//! A cursor means: every change that some named feed holds at or below its number, and
//! every change whose key is listed, was delivered; nothing else was.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use ucxl::{Address, EnvelopeId};

/// Longest cursor accepted.
pub const MAX_LEN: usize = 8192;
/// Most feeds and keys a cursor may name.
pub const MAX_PARTS: usize = 128;
/// Most keys of changes reported by one feed only a cursor carries.
pub const MAX_PENDING: usize = 32;

/// A change's identity: the first 8 bytes of SHA-256 over its address and id (a version's
/// or a delete's), stable across processes and versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub u64);

impl Key {
    /// The key of the change with `id` at `address`.
    #[must_use]
    pub fn of(address: &Address, id: &EnvelopeId) -> Self {
        let mut hash = Sha256::new();
        hash.update(address.canonical().as_bytes());
        hash.update([0]);
        hash.update(id.as_str().as_bytes());
        let digest = hash.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        Self(u64::from_be_bytes(first))
    }
}

/// A parsed cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Feed id (32 lowercase hex) → the last number read. The ids are shared with the
    /// hub's table of feeds (every event holds a cursor: no copy of the ids per event).
    pub feeds: BTreeMap<Arc<str>, u64>,
    /// Keys of delivered changes only one feed had reported.
    pub pending: Vec<Key>,
}

/// Why a cursor is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CursorError(pub &'static str);

impl Cursor {
    /// Parses the text form.
    ///
    /// # Errors
    /// Anything this gateway does not issue.
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        if text.len() > MAX_LEN {
            return Err(CursorError("the cursor is too long"));
        }
        let mut parts = text.split('.');
        if parts.next() != Some("w1") {
            return Err(CursorError("the cursor does not start with w1"));
        }
        let mut cursor = Self::default();
        for (n, part) in parts.enumerate() {
            if n >= MAX_PARTS {
                return Err(CursorError("the cursor names too many feeds"));
            }
            if let Some(key) = part.strip_prefix('p') {
                if key.len() != 16 {
                    return Err(CursorError("a cursor key is not 16 hex digits"));
                }
                let key = u64::from_str_radix(key, 16)
                    .map_err(|_| CursorError("a cursor key is not 16 hex digits"))?;
                cursor.pending.push(Key(key));
                continue;
            }
            let (feed, seq) = part
                .split_once('-')
                .ok_or(CursorError("a cursor part is not <feed>-<seq>"))?;
            if feed.len() != 32
                || !feed
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(CursorError(
                    "a cursor feed id is not 32 lowercase hex digits",
                ));
            }
            if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CursorError("a cursor sequence is not a number"));
            }
            let seq = seq
                .parse::<u64>()
                .map_err(|_| CursorError("a cursor sequence is not a number"))?;
            if cursor.feeds.insert(Arc::from(feed), seq).is_some() {
                return Err(CursorError("the cursor names a feed twice"));
            }
        }
        if cursor.pending.len() > MAX_PENDING {
            return Err(CursorError("the cursor names too many changes"));
        }
        Ok(cursor)
    }

    /// The text form.
    #[must_use]
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(3 + self.feeds.len() * 44 + self.pending.len() * 18);
        text.push_str("w1");
        for (feed, seq) in &self.feeds {
            let _ = write!(text, ".{feed}-{seq}");
        }
        for key in &self.pending {
            let _ = write!(text, ".p{:016x}", key.0);
        }
        text
    }

    /// Whether everything this cursor says was delivered, `other` says too.
    #[must_use]
    pub fn within(&self, other: &Self) -> bool {
        self.feeds
            .iter()
            .all(|(feed, seq)| other.feeds.get(feed).is_some_and(|o| o >= seq))
            && self.pending.iter().all(|k| other.pending.contains(k))
    }

    /// What both say was delivered: the larger number of every feed, and the keys of both
    /// (`other`'s first, at most [`MAX_PENDING`]).
    #[must_use]
    pub fn merged(&self, other: &Self) -> Self {
        let mut feeds = self.feeds.clone();
        for (feed, seq) in &other.feeds {
            let e = feeds.entry(Arc::clone(feed)).or_insert(*seq);
            *e = (*e).max(*seq);
        }
        let mut pending = other.pending.clone();
        for key in &self.pending {
            if pending.len() == MAX_PENDING {
                break;
            }
            if !pending.contains(key) {
                pending.push(*key);
            }
        }
        Self { feeds, pending }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef";
    const B: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn round_trip() {
        let mut c = Cursor::default();
        c.feeds.insert(A.into(), 42);
        c.feeds.insert(B.into(), 0);
        c.pending.push(Key(0xdead_beef));
        let text = c.render();
        assert_eq!(text, format!("w1.{A}-42.{B}-0.p00000000deadbeef"));
        assert_eq!(Cursor::parse(&text), Ok(c));
        assert_eq!(Cursor::parse("w1"), Ok(Cursor::default()));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in [
            "",
            "w2",
            "w1.",
            "x1.0",
            &format!("w1.{A}"),
            &format!("w1.{A}-"),
            &format!("w1.{A}--1"),
            &format!("w1.{A}-1x"),
            &format!("w1.{A}-99999999999999999999"),
            &format!("w1.{A}-1.{A}-2"),
            &format!("w1.{}-1", A.to_uppercase()),
            "w1.abc-1",
            "w1.pzz",
            "w1.p123",
            &"w1".repeat(5000),
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
        let many = format!("w1{}", ".p0000000000000001".repeat(MAX_PENDING + 1));
        assert!(Cursor::parse(&many).is_err());
    }

    #[test]
    fn within_and_merged() {
        let a = Cursor::parse(&format!("w1.{A}-5.p0000000000000001")).expect("a");
        let b = Cursor::parse(&format!("w1.{A}-7.{B}-1.p0000000000000001")).expect("b");
        assert!(a.within(&b));
        assert!(!b.within(&a));
        let m = b.merged(&a);
        assert_eq!(m.feeds[A], 7);
        assert_eq!(m.feeds[B], 1);
        assert_eq!(m.pending, vec![Key(1)]);
    }

    #[test]
    fn keys_are_stable() {
        let at = Address::parse("ucxl://a:b@c:d/x").expect("address");
        let id = EnvelopeId::parse("k1").expect("id");
        assert_eq!(Key::of(&at, &id), Key::of(&at, &id));
        assert_ne!(
            Key::of(&at, &id),
            Key::of(&at, &EnvelopeId::parse("k2").expect("id"))
        );
    }
}
