//! The merged history: the changes the gateway has learnt of, in the order it first learnt
//! of them, each with where every feed that reported it holds it. Bounded: the oldest
//! change goes when the bound is reached, and each feed's *coverage* (the number after
//! which the history holds every change of that feed) moves past it.
//!
//! This is what makes resuming exact: a cursor says which changes were delivered (those
//! some feed holds at or below the cursor's number for it), and the history knows, for
//! every change it holds, whether that is so.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::cursor::Key;
use super::event::Event;

/// A feed's index in the hub's table of feeds.
pub type FeedIx = u16;

/// One change the history holds.
#[derive(Debug)]
pub struct Known {
    /// The event as delivered (or as it would be, for one not delivered yet).
    pub event: Arc<Event>,
    /// Where each feed that reported it holds it.
    pub positions: Vec<(FeedIx, u64)>,
    /// Whether it was delivered to watchers (changes read while catching up on a feed's
    /// past are not, unless another feed then reports them live).
    pub delivered: bool,
}

/// The bounded history.
#[derive(Debug)]
pub struct History {
    entries: VecDeque<Known>,
    /// The history index of `entries[0]`.
    first: u64,
    by_key: HashMap<Key, u64>,
    capacity: usize,
}

impl History {
    /// An empty history of at most `capacity` changes (at least 1).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            first: 0,
            by_key: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Changes held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bound.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The change with `key`, when held.
    pub fn get_mut(&mut self, key: Key) -> Option<&mut Known> {
        let index = *self.by_key.get(&key)?;
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get_mut(at)
    }

    /// The change with `key`, when held.
    #[must_use]
    pub fn get(&self, key: Key) -> Option<&Known> {
        let index = *self.by_key.get(&key)?;
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.entries.get(at)
    }

    /// Adds a change; returns the positions of the change that made room for it, if one had
    /// to go.
    pub fn push(&mut self, known: Known) -> Option<Vec<(FeedIx, u64)>> {
        let index = self.first + self.entries.len() as u64;
        self.by_key.insert(known.event.key, index);
        self.entries.push_back(known);
        if self.entries.len() <= self.capacity {
            return None;
        }
        let gone = self.entries.pop_front()?;
        self.first += 1;
        if self.by_key.get(&gone.event.key) == Some(&(self.first - 1)) {
            self.by_key.remove(&gone.event.key);
        }
        Some(gone.positions)
    }

    /// Every change held, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Known> {
        self.entries.iter()
    }
}
