//! In-process caches of database rows read on the hot path (API keys, tenant overrides,
//! directory mappings), kept exact by change notifications.
//!
//! Every cache watches one or more [`Topic`]s of a shared [`Freshness`]. A change to a watched
//! table (a PostgreSQL `NOTIFY` from a trigger, or a row of the SQLite change log) bumps the
//! topic's epoch, and every entry read before it is stale from then on. While the change feed is
//! down, caches answer nothing: each lookup goes to the database until the feed is back (and what
//! was cached before the loss is never served again). The TTL stays as a fallback bound for a
//! feed that died without anyone noticing yet.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// What changed, by table. The names are the trigger payloads' first field (`table:key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    ApiKeys,
    Tenants,
    Sessions,
    Agents,
    EndCompanies,
    RateLimits,
}

impl Topic {
    pub const ALL: [Topic; 6] = [
        Topic::ApiKeys,
        Topic::Tenants,
        Topic::Sessions,
        Topic::Agents,
        Topic::EndCompanies,
        Topic::RateLimits,
    ];

    /// The topic of a table name as the triggers send it.
    pub fn of_table(table: &str) -> Option<Topic> {
        Some(match table {
            "api_keys" => Topic::ApiKeys,
            "tenants" => Topic::Tenants,
            "chat_sessions" => Topic::Sessions,
            "agents" => Topic::Agents,
            "end_companies" => Topic::EndCompanies,
            "tenant_rate_limits" => Topic::RateLimits,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The state of the change feed that every cache of one app consults: whether it is live, and
/// one epoch per topic.
#[derive(Debug)]
pub struct Freshness {
    live: AtomicBool,
    epochs: [AtomicU64; Topic::ALL.len()],
}

impl Freshness {
    /// A feed that is not connected yet: caches answer nothing until [`Freshness::restored`].
    pub fn down() -> Arc<Self> {
        Arc::new(Self {
            live: AtomicBool::new(false),
            epochs: Default::default(),
        })
    }

    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A row of `topic` changed: every entry that depends on it is stale.
    pub fn changed(&self, topic: Topic) {
        self.epochs[topic.index()].fetch_add(1, Ordering::AcqRel);
    }

    /// The feed was lost: changes may go unseen from now on, so nothing cached is used.
    pub fn lost(&self) {
        self.live.store(false, Ordering::Release);
        self.bump_all();
    }

    /// The feed is (re)connected: what was cached before is dropped (changes made while it was
    /// down were not seen), and caching resumes.
    pub fn restored(&self) {
        self.bump_all();
        self.live.store(true, Ordering::Release);
    }

    fn bump_all(&self) {
        for epoch in &self.epochs {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The combined epoch of `topics` (a sum of counters that only grow: it changes when any
    /// of them does).
    fn epoch(&self, topics: &[Topic]) -> u64 {
        topics
            .iter()
            .map(|t| self.epochs[t.index()].load(Ordering::Acquire))
            .fold(0u64, u64::wrapping_add)
    }
}

/// Taken before reading the database for a cache miss, handed back with the value: a change
/// that lands between the read and the insert makes the entry stale at once, so a value read
/// before a change can never be served after its notification.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

pub struct TtlCache<K, V> {
    ttl: Duration,
    freshness: Arc<Freshness>,
    topics: &'static [Topic],
    entries: Mutex<HashMap<K, Entry<V>>>,
}

struct Entry<V> {
    value: V,
    at: Instant,
    epoch: u64,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache of rows of `topics`. A zero `ttl` caches nothing.
    pub fn new(ttl: Duration, freshness: Arc<Freshness>, topics: &'static [Topic]) -> Self {
        Self {
            ttl,
            freshness,
            topics,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Looks up by any borrowed form of the key (`&str` for `String` keys: no allocation).
    /// `None` for a missing, expired or stale entry, and for everything while the feed is down.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if self.ttl.is_zero() || !self.freshness.is_live() {
            return None;
        }
        let epoch = self.freshness.epoch(self.topics);
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|e| e.epoch == epoch && e.at.elapsed() < self.ttl)
            .map(|e| e.value.clone())
    }

    /// Take one before reading what will be inserted.
    pub fn ticket(&self) -> Ticket {
        Ticket(self.freshness.epoch(self.topics))
    }

    /// Caches `value`, read after `ticket` was taken; nothing while the feed is down.
    pub fn insert(&self, ticket: Ticket, key: K, value: V) {
        if self.ttl.is_zero() || !self.freshness.is_live() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = self.freshness.epoch(self.topics);
        if ticket.0 != epoch {
            // A change arrived while the value was read: the entry is stale already, and the
            // ones there are too.
            entries.clear();
            return;
        }
        entries.insert(
            key,
            Entry {
                value,
                at: Instant::now(),
                epoch,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Arc<Freshness> {
        let freshness = Freshness::down();
        freshness.restored();
        freshness
    }

    #[test]
    fn entries_live_for_the_ttl_and_zero_disables() {
        let cache = TtlCache::new(Duration::from_secs(60), live(), &[Topic::ApiKeys]);
        cache.insert(cache.ticket(), "a", 1);
        assert_eq!(cache.get(&"a"), Some(1));
        assert_eq!(cache.get(&"b"), None);
        let off = TtlCache::new(Duration::ZERO, live(), &[Topic::ApiKeys]);
        off.insert(off.ticket(), "a", 1);
        assert_eq!(off.get(&"a"), None);
    }

    #[test]
    fn a_change_of_a_watched_topic_makes_entries_stale() {
        let freshness = live();
        let cache = TtlCache::new(
            Duration::from_secs(60),
            Arc::clone(&freshness),
            &[Topic::ApiKeys, Topic::Tenants],
        );
        cache.insert(cache.ticket(), "a", 1);
        freshness.changed(Topic::Sessions);
        assert_eq!(cache.get(&"a"), Some(1), "another topic changes nothing");
        freshness.changed(Topic::Tenants);
        assert_eq!(cache.get(&"a"), None);
        cache.insert(cache.ticket(), "a", 2);
        assert_eq!(cache.get(&"a"), Some(2));
    }

    #[test]
    fn a_value_read_before_a_change_is_not_cached() {
        let freshness = live();
        let cache = TtlCache::new(
            Duration::from_secs(60),
            Arc::clone(&freshness),
            &[Topic::ApiKeys],
        );
        let ticket = cache.ticket();
        freshness.changed(Topic::ApiKeys);
        cache.insert(ticket, "a", 1);
        assert_eq!(cache.get(&"a"), None);
    }

    #[test]
    fn nothing_is_served_while_the_feed_is_down_nor_after_it_is_back() {
        let freshness = live();
        let cache = TtlCache::new(
            Duration::from_secs(60),
            Arc::clone(&freshness),
            &[Topic::ApiKeys],
        );
        cache.insert(cache.ticket(), "a", 1);
        freshness.lost();
        assert_eq!(cache.get(&"a"), None);
        cache.insert(cache.ticket(), "b", 2);
        assert_eq!(cache.get(&"b"), None);
        freshness.restored();
        assert_eq!(
            cache.get(&"a"),
            None,
            "entries from before the loss stay dropped"
        );
    }
}
