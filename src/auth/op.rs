//! The operations a grant allows, named as the policy file and the audit log name them.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// One operation on envelopes, or administration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Fetch an envelope or list its history.
    Read,
    /// Search by pattern.
    Search,
    /// Store a new version.
    Write,
    /// Delete an address.
    Delete,
    /// Follow changes (the change feed).
    Watch,
    /// The admin API (mode switches, reloads); not about an address.
    Admin,
}

impl Op {
    /// Every operation, in documentation order.
    pub const ALL: [Self; 6] = [
        Self::Read,
        Self::Search,
        Self::Write,
        Self::Delete,
        Self::Watch,
        Self::Admin,
    ];

    /// The name used in policy files, errors and the audit log.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Search => "search",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Watch => "watch",
            Self::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Self::Read => 1,
            Self::Search => 2,
            Self::Write => 4,
            Self::Delete => 8,
            Self::Watch => 16,
            Self::Admin => 32,
        }
    }

    /// The operation of a route, for audit records of requests refused before their handler
    /// ran (a 401 or 429 names what was attempted).
    #[must_use]
    pub fn of_route(method: &axum::http::Method, path: &str) -> Option<Self> {
        use axum::http::Method;
        match (method, path) {
            (&Method::GET, "/v1/envelopes" | "/v1/envelopes/history") => Some(Self::Read),
            (&Method::PUT, "/v1/envelopes") => Some(Self::Write),
            (&Method::DELETE, "/v1/envelopes") => Some(Self::Delete),
            (&Method::GET, "/v1/search") => Some(Self::Search),
            (&Method::GET, "/v1/watch") => Some(Self::Watch),
            (_, p) if p.starts_with("/v1/admin/") => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|op| op.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown operation {s:?} (expected read, search, write, delete, watch or admin)"
                )
            })
    }
}

/// A set of operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ops(u8);

impl Ops {
    /// Every operation but `admin`: what an anonymous caller may do when auth is off.
    #[must_use]
    pub fn data() -> Self {
        Op::ALL.into_iter().filter(|op| *op != Op::Admin).collect()
    }

    /// True when `op` is in the set.
    #[must_use]
    pub fn contains(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    /// Adds `op`.
    pub fn insert(&mut self, op: Op) {
        self.0 |= op.bit();
    }

    /// True when the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Op> for Ops {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        let mut ops = Self::default();
        for op in iter {
            ops.insert(op);
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for op in Op::ALL {
            assert_eq!(op.as_str().parse::<Op>(), Ok(op));
        }
        assert!("Read".parse::<Op>().is_err());
        assert!("subscribe".parse::<Op>().is_err());
    }

    #[test]
    fn sets_hold_what_was_inserted() {
        let ops: Ops = [Op::Read, Op::Write].into_iter().collect();
        assert!(ops.contains(Op::Read) && ops.contains(Op::Write));
        assert!(!ops.contains(Op::Delete));
        assert!(!Ops::data().contains(Op::Admin));
        assert!(Ops::data().contains(Op::Watch));
        assert!(Ops::default().is_empty());
    }
}
