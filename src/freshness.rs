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
    /// Signing keys: every replica reloads its key ring at once (a withdrawal must not wait for
    /// the next `signing.reload_seconds`).
    SigningKeys,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::ApiKeys,
        Topic::Tenants,
        Topic::Sessions,
        Topic::Agents,
        Topic::EndCompanies,
        Topic::RateLimits,
        Topic::SigningKeys,
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
            "signing_keys" => Topic::SigningKeys,
            _ => return None,
        })
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A cache that drops single entries when their rows change (rather than all of a topic's).
pub trait Follower: Send + Sync {
    /// The row `id` of `tenant_id` in `topic` changed (inserted, updated or deleted). Both empty:
    /// the whole table changed (`TRUNCATE`).
    fn row_changed(&self, topic: Topic, tenant_id: &str, id: &str);
    /// Everything may have changed: drop every entry.
    fn reset(&self);
}

/// The state of the change feed that every cache of one app consults: whether it is live, one
/// epoch per topic, and the followers told of each row.
pub struct Freshness {
    live: AtomicBool,
    /// Moves on every loss and every restoration of the feed.
    resets: AtomicU64,
    epochs: [AtomicU64; Topic::ALL.len()],
    followers: Mutex<Vec<Arc<dyn Follower>>>,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness")
            .field("live", &self.is_live())
            .finish_non_exhaustive()
    }
}

impl Freshness {
    /// A feed that is not connected yet: caches answer nothing until [`Freshness::restored`].
    pub fn down() -> Arc<Self> {
        Arc::new(Self {
            live: AtomicBool::new(false),
            resets: AtomicU64::new(0),
            epochs: Default::default(),
            followers: Mutex::new(Vec::new()),
        })
    }

    /// Tells `follower` of every row change from now on, and of every loss of the feed.
    pub fn follow(&self, follower: Arc<dyn Follower>) {
        self.followers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(follower);
    }

    fn each_follower(&self, tell: impl Fn(&dyn Follower)) {
        let followers = self.followers.lock().unwrap_or_else(|p| p.into_inner());
        for follower in followers.iter() {
            tell(follower.as_ref());
        }
    }

    /// A row changed, as a trigger reported it: the topic's epoch moves (caches of whole topics)
    /// and followers drop that row's entries.
    pub fn row_changed(&self, topic: Topic, tenant_id: &str, id: &str) {
        self.changed(topic);
        self.each_follower(|f| f.row_changed(topic, tenant_id, id));
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
        self.each_follower(|f| f.reset());
    }

    /// The feed is (re)connected: what was cached before is dropped (changes made while it was
    /// down were not seen), and caching resumes.
    pub fn restored(&self) {
        self.bump_all();
        self.each_follower(|f| f.reset());
        self.live.store(true, Ordering::Release);
    }

    fn bump_all(&self) {
        self.resets.fetch_add(1, Ordering::AcqRel);
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

/// A cache bounded by entries (S3-FIFO eviction, by `quick_cache`) whose entries are dropped one
/// by one as their rows change ([`Follower`]); nothing is served while the feed is down.
pub struct KeyedCache<K, V> {
    entries: Option<quick_cache::sync::Cache<K, V>>,
    freshness: Arc<Freshness>,
    /// Moves with every invalidation: an insert whose read began before one is dropped.
    changes: AtomicU64,
    /// The feed's resets last seen: a newer one empties the cache before it is used again.
    resets_seen: AtomicU64,
}

/// Taken before reading what [`KeyedCache::insert`] will hold.
#[derive(Debug, Clone, Copy)]
pub struct KeyedTicket(u64);

impl<K: Eq + Hash + Clone, V: Clone> KeyedCache<K, V> {
    /// Holds about `capacity` entries; 0 caches nothing.
    pub fn new(capacity: usize, freshness: Arc<Freshness>) -> Self {
        Self {
            entries: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            resets_seen: AtomicU64::new(freshness.resets.load(Ordering::Acquire)),
            freshness,
            changes: AtomicU64::new(0),
        }
    }

    /// Empties the cache once after each loss or restoration of the feed (followers are told
    /// too; this keeps a cache that is no follower exact as well).
    fn catch_up(&self) {
        let resets = self.freshness.resets.load(Ordering::Acquire);
        if self.resets_seen.swap(resets, Ordering::AcqRel) != resets {
            self.clear();
        }
    }

    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        Q: Hash + quick_cache::Equivalent<K> + ?Sized,
    {
        if !self.freshness.is_live() {
            return None;
        }
        self.catch_up();
        self.entries.as_ref()?.get(key)
    }

    pub fn ticket(&self) -> KeyedTicket {
        self.catch_up();
        KeyedTicket(self.changes.load(Ordering::Acquire))
    }

    /// Caches `value`, read after `ticket` was taken, unless an invalidation came in between or
    /// the feed is down.
    pub fn insert(&self, ticket: KeyedTicket, key: K, value: V) {
        let Some(entries) = &self.entries else {
            return;
        };
        if !self.freshness.is_live() {
            return;
        }
        self.catch_up();
        if self.changes.load(Ordering::Acquire) != ticket.0 {
            return;
        }
        let probe = key.clone();
        entries.insert(key, value);
        // An invalidation that raced the insert may have missed the new entry: drop it again.
        if self.changes.load(Ordering::Acquire) != ticket.0 {
            entries.remove(&probe);
        }
    }

    pub fn invalidate<Q>(&self, key: &Q)
    where
        Q: Hash + quick_cache::Equivalent<K> + ?Sized,
    {
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.remove(key);
        }
    }

    pub fn clear(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    pub fn len(&self) -> usize {
        self.entries.as_ref().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    #[test]
    fn a_keyed_cache_drops_one_entry_per_change_and_everything_on_a_loss() {
        let freshness = live();
        let cache: KeyedCache<String, u32> = KeyedCache::new(100, Arc::clone(&freshness));
        cache.insert(cache.ticket(), "a".to_owned(), 1);
        cache.insert(cache.ticket(), "b".to_owned(), 2);
        assert_eq!(cache.get("a"), Some(1));
        cache.invalidate("a");
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get("b"), Some(2), "other entries stay");

        // A value read before an invalidation is not cached.
        let ticket = cache.ticket();
        cache.invalidate("c");
        cache.insert(ticket, "c".to_owned(), 3);
        assert_eq!(cache.get("c"), None);

        freshness.lost();
        assert_eq!(
            cache.get("b"),
            None,
            "nothing is served while the feed is down"
        );
        cache.insert(cache.ticket(), "d".to_owned(), 4);
        freshness.restored();
        assert_eq!(cache.get("d"), None, "nothing was cached while it was down");
        assert_eq!(
            cache.get("b"),
            None,
            "what was cached before the loss is gone"
        );
    }

    #[test]
    fn a_keyed_cache_is_bounded_by_entries() {
        let cache: KeyedCache<u32, u32> = KeyedCache::new(100, live());
        for i in 0..10_000 {
            cache.insert(cache.ticket(), i, i);
        }
        assert!(cache.len() <= 200, "{} entries held", cache.len());
        let off: KeyedCache<u32, u32> = KeyedCache::new(0, live());
        off.insert(off.ticket(), 1, 1);
        assert_eq!(off.get(&1), None);
    }
}
