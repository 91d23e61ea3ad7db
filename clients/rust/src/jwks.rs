//! A JWKS in memory, keyed by `kid`: one cache for every key set we read (our own session
//! tokens' in [`crate::Verifier`], Entra's in the token service).
//!
//! A fetched set is current for as long as its [`MaxAge`] says (a fixed age, or the response's
//! `Cache-Control: max-age`). Past that it is stale: for a bounded `stale_for` its keys are still
//! served at once while one refresh runs in the background; then they are not served at all
//! ([`KeyLookup::Unavailable`]). A `kid` the set lacks causes a refetch at most once per
//! cool-down, and the caller waits for it.
//!
//! Fetches are single-flight: at most one runs at a time per cache, in a task of its own, and
//! whoever needs its result waits for that one. After a failure no fetch starts for a back-off
//! that doubles with each consecutive failure, from `retry` up to `retry_cap`, with jitter (never
//! sooner than `retry`); a success ends it.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey,
};
use tokio::sync::watch;

/// A JWKS larger than this is refused rather than parsed.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// One usable key of a set: the algorithm it verifies (the key's own, never a token header's).
pub struct Key {
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
}

/// What the cache says about a `kid`.
#[derive(Clone)]
pub enum KeyLookup {
    Found(Arc<Key>),
    /// The key set is current (or stale but still served) and has no such key: the token is
    /// invalid.
    Unknown,
    /// No trustworthy key set is held (never fetched, or too old): we cannot tell.
    Unavailable,
}

/// How long a fetched set is current.
#[derive(Debug, Clone, Copy)]
pub enum MaxAge {
    /// This long after the fetch, whatever the response says.
    Fixed(Duration),
    /// As the response's `Cache-Control: max-age` says (`default` without one), at most
    /// `longest`.
    CacheControl {
        default: Duration,
        longest: Duration,
    },
}

/// Which keys of a set are used, and with which algorithm (`None`: skipped).
pub type KeyFilter = fn(&Jwk) -> Option<Algorithm>;

/// The settings of one [`KeySetCache`].
#[derive(Debug, Clone)]
pub struct KeySetConfig {
    pub url: String,
    /// Names the set in log lines ("Entra", "session-token").
    pub name: &'static str,
    pub max_age: MaxAge,
    /// How long past being current a set still serves the keys it holds (while it is refreshed
    /// in the background, or refreshing fails).
    pub stale_for: Duration,
    /// At most one refetch per this long for a `kid` the set lacks.
    pub unknown_kid_cooldown: Duration,
    /// After a failed fetch, no fetch starts for this long; it doubles with each consecutive
    /// failure.
    pub retry: Duration,
    /// The longest back-off after failures.
    pub retry_cap: Duration,
    pub accept: KeyFilter,
}

/// Why one fetch failed (kept as text for [`KeySetCache::last_error`] and the logs).
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("JWKS answered {0}")]
    Status(reqwest::StatusCode),
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not a JWK set: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("JWKS has no usable signing key")]
    Empty,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
    /// How long after `fetched_at` the set is current.
    current_for: Duration,
    /// Why the last fetch failed, while none has succeeded since.
    last_error: Option<String>,
}

/// How far the set held is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freshness {
    Current,
    /// Past its max-age, within `stale_for`: served, and refreshed in the background.
    Stale,
    /// None held, or past `stale_for`: not served.
    Untrusted,
}

impl KeySet {
    fn freshness(&self, stale_for: Duration) -> Freshness {
        match self.fetched_at.map(|at| at.elapsed()) {
            Some(age) if age < self.current_for => Freshness::Current,
            Some(age) if age < self.current_for.saturating_add(stale_for) => Freshness::Stale,
            _ => Freshness::Untrusted,
        }
    }
}

/// The fetch under way, and when the next one may start.
#[derive(Default)]
struct Flight {
    /// Set while a fetch runs; turns `true` when it has ended (its result is in the set held).
    running: Option<watch::Receiver<bool>>,
    last_unknown_kid_fetch: Option<Instant>,
    /// Failed fetches since the last success.
    failures: u32,
    /// After a failure: no fetch starts before this.
    not_before: Option<Instant>,
}

/// Why a fetch is wanted; an unknown `kid` has a cool-down of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The set is stale or untrusted.
    Refresh,
    /// The set lacks a `kid` a token names.
    UnknownKid,
    /// The periodic refresh of [`KeySetCache::spawn_refresh`]: not held back by the back-off.
    Scheduled,
}

/// Called after every fetch with whether it succeeded (for a metric).
type FetchObserver = Box<dyn Fn(bool) + Send + Sync>;

/// What the cache and its fetch tasks share.
struct Shared {
    client: reqwest::Client,
    config: KeySetConfig,
    keys: RwLock<KeySet>,
    flight: Mutex<Flight>,
    observer: Option<FetchObserver>,
}

/// The key set of one JWKS URL; see the module docs for when it fetches. Fetches run in tasks of
/// their own (`tokio::spawn`), so lookups need a Tokio runtime.
pub struct KeySetCache {
    shared: Arc<Shared>,
}

impl KeySetCache {
    /// Fetches with `client` (its timeouts and redirect policy are the caller's), nothing yet.
    pub fn new(client: reqwest::Client, config: KeySetConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                config,
                keys: RwLock::default(),
                flight: Mutex::default(),
                observer: None,
            }),
        }
    }

    /// Calls `observer` after every fetch with whether it succeeded. Set it before the first
    /// lookup (it is ignored once a fetch task holds the cache).
    pub fn observing_fetches(mut self, observer: impl Fn(bool) + Send + Sync + 'static) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.observer = Some(Box::new(observer));
        }
        self
    }

    /// Fetches now, then every `interval` (after a failure, when the back-off ends, at most
    /// `interval`), until the cache is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = cache.upgrade() else { break };
                if let Some(done) = strong.start_fetch(Want::Scheduled) {
                    wait(done).await;
                }
                let next = match strong.shared.retry_in() {
                    Some(back_off) => back_off.min(interval),
                    None => interval,
                };
                drop(strong);
                tokio::time::sleep(next).await;
            }
        });
    }

    /// The key if a current set holds it, without fetching anything.
    pub fn cached_key(&self, kid: &str) -> Option<Arc<Key>> {
        let (key, freshness) = self.cached(kid);
        key.filter(|_| freshness == Freshness::Current)
    }

    /// How old the key set held is (`None`: none held).
    pub fn age(&self) -> Option<Duration> {
        self.shared.held().fetched_at.map(|at| at.elapsed())
    }

    /// Why the last fetch failed, while no fetch has succeeded since.
    pub fn last_error(&self) -> Option<String> {
        self.shared.held().last_error.clone()
    }

    /// Why no key can be served, for an error message: how old the set held is (or that none
    /// was fetched) and why the last fetch failed.
    pub fn unavailable_reason(&self) -> String {
        let (age, trusted_for, error) = {
            let held = self.shared.held();
            (
                held.fetched_at.map(|at| at.elapsed()),
                held.current_for
                    .saturating_add(self.shared.config.stale_for),
                held.last_error.clone(),
            )
        };
        let held = match age {
            Some(age) => format!(
                "the key set held is {:.1} s old, past the {:.1} s it is trusted without a refresh",
                age.as_secs_f64(),
                trusted_for.as_secs_f64()
            ),
            None => "no key set fetched yet".to_owned(),
        };
        match error {
            Some(error) => format!("{held}; last fetch: {error}"),
            None => held,
        }
    }

    /// The key for `kid`. A current set answers from memory; a stale one answers from memory
    /// too and has a refresh started in the background. Waits for a fetch only when no set may
    /// be served (unless the back-off holds fetches back: then `Unavailable` at once), or when
    /// the set lacks `kid` (at most once per cool-down: else `Unknown` at once).
    pub async fn key(&self, kid: &str) -> KeyLookup {
        let (key, freshness) = self.cached(kid);
        if freshness == Freshness::Stale {
            // Single flight and the back-off make this cheap to ask on every lookup.
            let _ = self.start_fetch(Want::Refresh);
        }
        match (key, freshness) {
            (Some(key), _) => return KeyLookup::Found(key),
            (None, Freshness::Untrusted) => match self.start_fetch(Want::Refresh) {
                Some(done) => wait(done).await,
                None => return KeyLookup::Unavailable,
            },
            (None, _) => match self.start_fetch(Want::UnknownKid) {
                Some(done) => wait(done).await,
                None => return KeyLookup::Unknown,
            },
        }
        self.lookup(kid)
    }

    /// What the set held says about `kid`, fetching nothing.
    fn lookup(&self, kid: &str) -> KeyLookup {
        match self.cached(kid) {
            (_, Freshness::Untrusted) => KeyLookup::Unavailable,
            (Some(key), _) => KeyLookup::Found(key),
            (None, _) => KeyLookup::Unknown,
        }
    }

    /// The key held for `kid` if the set may be served, and how far the set is trusted.
    fn cached(&self, kid: &str) -> (Option<Arc<Key>>, Freshness) {
        let held = self.shared.held();
        let freshness = held.freshness(self.shared.config.stale_for);
        let key = (freshness != Freshness::Untrusted)
            .then(|| held.keys.get(kid).cloned())
            .flatten();
        (key, freshness)
    }

    /// Joins the fetch under way, or starts one in a task of its own when `want` allows it now;
    /// `None` when no fetch runs. The receiver turns `true` when the fetch has ended.
    fn start_fetch(&self, want: Want) -> Option<watch::Receiver<bool>> {
        let mut flight = self.shared.flight();
        if let Some(running) = &flight.running {
            return Some(running.clone());
        }
        let now = Instant::now();
        if want != Want::Scheduled && flight.not_before.is_some_and(|at| now < at) {
            return None;
        }
        if want == Want::UnknownKid {
            let cooldown = self.shared.config.unknown_kid_cooldown;
            if flight
                .last_unknown_kid_fetch
                .is_some_and(|at| now.duration_since(at) < cooldown)
            {
                return None;
            }
            flight.last_unknown_kid_fetch = Some(now);
        }
        let (ended, done) = watch::channel(false);
        flight.running = Some(done.clone());
        drop(flight);
        let task = FetchTask {
            shared: Arc::clone(&self.shared),
        };
        tokio::spawn(async move {
            task.run().await;
            // Dropping the task has cleared `running` first: whoever wakes sees the outcome.
            drop(task);
            let _ = ended.send(true);
        });
        Some(done)
    }
}

/// Waits until a fetch has ended (or its task is gone).
async fn wait(mut done: watch::Receiver<bool>) {
    let _ = done.wait_for(|ended| *ended).await;
}

/// One fetch in its own task. Dropping it (also when the fetch panics) ends the flight, so a
/// later lookup can start another.
struct FetchTask {
    shared: Arc<Shared>,
}

impl FetchTask {
    async fn run(&self) {
        let shared = &self.shared;
        let name = shared.config.name;
        let result = shared.fetch().await;
        let mut flight = shared.flight();
        match result {
            Ok(count) => {
                flight.failures = 0;
                flight.not_before = None;
                tracing::debug!(keys = count, "fetched the {name} JWKS");
            }
            Err(error) => {
                flight.failures = flight.failures.saturating_add(1);
                let back_off = back_off(
                    shared.config.retry,
                    shared.config.retry_cap,
                    flight.failures,
                );
                flight.not_before = Some(Instant::now() + back_off);
                tracing::warn!(
                    %error,
                    failures = flight.failures,
                    retry_in_ms = u64::try_from(back_off.as_millis()).unwrap_or(u64::MAX),
                    "{name} JWKS fetch failed; the key set held is kept"
                );
            }
        }
    }
}

impl Drop for FetchTask {
    fn drop(&mut self) {
        self.shared.flight().running = None;
    }
}

impl Shared {
    fn held(&self) -> std::sync::RwLockReadGuard<'_, KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn flight(&self) -> MutexGuard<'_, Flight> {
        self.flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the back-off still holds fetches back (`None`: it does not).
    fn retry_in(&self) -> Option<Duration> {
        let flight = self.flight();
        flight
            .not_before
            .and_then(|at| at.checked_duration_since(Instant::now()))
    }

    /// One GET of the JWKS, reported to the observer; a failure is kept for
    /// [`KeySetCache::last_error`].
    async fn fetch(&self) -> Result<usize, FetchError> {
        let result = self.fetch_set().await;
        if let Err(error) = &result {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            keys.last_error = Some(error.to_string());
        }
        if let Some(observer) = &self.observer {
            observer(result.is_ok());
        }
        result
    }

    /// One GET of the JWKS; on success the new set replaces the old (rolled-over keys go).
    async fn fetch_set(&self) -> Result<usize, FetchError> {
        let mut response = self.client.get(&self.config.url).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let current_for = match self.config.max_age {
            MaxAge::Fixed(age) => age,
            MaxAge::CacheControl { default, longest } => response
                .headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok())
                .and_then(max_age)
                .unwrap_or(default)
                .min(longest),
        };
        // Read chunk by chunk and stop at the cap: a chunked body has no length to check first.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let accept = self.config.accept;
        let keys: HashMap<String, Arc<Key>> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let algorithm = accept(jwk)?;
                let kid = jwk.common.key_id.clone()?;
                let decoding = DecodingKey::from_jwk(jwk).ok()?;
                Some((
                    kid,
                    Arc::new(Key {
                        algorithm,
                        decoding,
                    }),
                ))
            })
            .collect();
        if keys.is_empty() {
            return Err(FetchError::Empty);
        }
        let count = keys.len();
        let mut held = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *held = KeySet {
            keys,
            fetched_at: Some(Instant::now()),
            current_for,
            last_error: None,
        };
        Ok(count)
    }
}

/// The back-off after `failures` consecutive failed fetches: `retry` doubled per further failure,
/// at most `cap`, then drawn at random from its upper half ("equal jitter", so that many
/// processes that failed together do not retry together), and never shorter than `retry`.
fn back_off(retry: Duration, cap: Duration, failures: u32) -> Duration {
    let doubled = retry.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let ceiling = doubled.min(cap.max(retry));
    let half = ceiling / 2;
    (half + half.mul_f64(unit_random())).max(retry)
}

/// A number in [0, 1) from the standard library's randomly keyed hasher (a fresh key per call):
/// enough to spread retries, not for secrets.
fn unit_random() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `max-age=N` of a `Cache-Control` value.
fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|directive| directive.trim().strip_prefix("max-age="))
        .find_map(|seconds| seconds.trim().parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering},
            Arc,
        },
        time::Duration,
    };

    use jsonwebtoken::{
        jwk::{Jwk, KeyAlgorithm},
        Algorithm,
    };
    use serde_json::json;

    use super::{back_off, max_age, wait, KeyLookup, KeySetCache, KeySetConfig, MaxAge};
    use crate::testing::{FakeJwks, TestKey};

    fn eddsa(jwk: &Jwk) -> Option<Algorithm> {
        (jwk.common.key_algorithm == Some(KeyAlgorithm::EdDSA)).then_some(Algorithm::EdDSA)
    }

    fn config(fake: &FakeJwks) -> KeySetConfig {
        KeySetConfig {
            url: fake.url.clone(),
            name: "test",
            max_age: MaxAge::Fixed(Duration::from_secs(300)),
            stale_for: Duration::ZERO,
            unknown_kid_cooldown: Duration::from_secs(300),
            retry: Duration::ZERO,
            retry_cap: Duration::from_secs(300),
            accept: eddsa,
        }
    }

    /// Waits for the fetch under way, if any, to end.
    async fn settled(cache: &KeySetCache) {
        let running = cache.shared.flight().running.clone();
        if let Some(done) = running {
            wait(done).await;
        }
    }

    fn cache(config: KeySetConfig) -> KeySetCache {
        crate::install_crypto_provider();
        KeySetCache::new(reqwest::Client::new(), config)
    }

    fn found(lookup: KeyLookup) -> bool {
        matches!(lookup, KeyLookup::Found(_))
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
    }

    #[tokio::test]
    async fn a_current_set_answers_from_memory_and_an_unknown_kid_refetches_once_per_cooldown() {
        let (k1, k2) = (TestKey::new("k1"), TestKey::new("k2"));
        let fake = FakeJwks::start(&[&k1]).await;
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&fetches);
        let cache = cache(config(&fake)).observing_fetches(move |ok| {
            assert!(ok);
            counted.fetch_add(1, Ordering::SeqCst);
        });
        assert!(cache.cached_key("k1").is_none(), "nothing fetched yet");
        assert!(found(cache.key("k1").await));
        assert!(found(cache.key("k1").await));
        assert_eq!(fake.hits(), 1);
        assert!(cache.cached_key("k1").is_some());

        // A rolled key: one refetch finds it; then unknown kids wait for the cool-down.
        fake.publish(&[&k1, &k2]);
        assert!(found(cache.key("k2").await));
        for _ in 0..10 {
            assert!(matches!(cache.key("nope").await, KeyLookup::Unknown));
        }
        assert_eq!(fake.hits(), 2);
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
        assert!(cache.age().is_some_and(|age| age < Duration::from_secs(5)));
    }

    #[tokio::test]
    async fn cache_control_decides_how_long_a_set_is_current() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let cache = cache(KeySetConfig {
            max_age: MaxAge::CacheControl {
                default: Duration::from_secs(300),
                longest: Duration::from_secs(3600),
            },
            // As a verifier of our tokens has it: a set past its max-age is served while it is
            // refreshed.
            stale_for: Duration::from_secs(3600),
            ..config(&fake)
        });
        fake.cache_control("public, max-age=0");
        assert!(found(cache.key("k1").await));
        assert!(cache.cached_key("k1").is_none(), "max-age=0: never current");
        assert!(found(cache.key("k1").await), "stale: served at once");
        settled(&cache).await;
        assert_eq!(fake.hits(), 2, "max-age=0: every lookup refreshes");
        fake.cache_control("public, max-age=60");
        assert!(found(cache.key("k1").await));
        settled(&cache).await;
        assert_eq!(fake.hits(), 3);
        assert!(cache.cached_key("k1").is_some(), "max-age=60: current");
        assert!(found(cache.key("k1").await));
        settled(&cache).await;
        assert_eq!(fake.hits(), 3, "a current set is not refetched");
    }

    #[tokio::test]
    async fn a_stale_set_serves_its_keys_for_a_bounded_time_while_fetches_fail() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let cache = cache(KeySetConfig {
            max_age: MaxAge::Fixed(Duration::ZERO),
            stale_for: Duration::from_millis(300),
            ..config(&fake)
        });
        assert!(found(cache.key("k1").await));
        fake.set_down(true);
        assert!(found(cache.key("k1").await), "stale, still served");
        settled(&cache).await;
        assert!(matches!(cache.key("k2").await, KeyLookup::Unknown));
        assert!(
            cache.cached_key("k1").is_none(),
            "never current without a fetch"
        );
        assert!(cache.last_error().is_some_and(|e| e.contains("503")));
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(matches!(cache.key("k1").await, KeyLookup::Unavailable));
        fake.set_down(false);
        assert!(found(cache.key("k1").await), "back once the JWKS answers");
        assert!(cache.last_error().is_none());
    }

    #[tokio::test]
    async fn without_stale_serving_a_failed_refetch_is_unavailable_and_waits_the_retry() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        fake.set_down(true);
        let cache = cache(KeySetConfig {
            max_age: MaxAge::Fixed(Duration::ZERO),
            retry: Duration::from_secs(300),
            ..config(&fake)
        });
        assert!(matches!(cache.key("k1").await, KeyLookup::Unavailable));
        fake.set_down(false);
        assert!(matches!(cache.key("k1").await, KeyLookup::Unavailable));
        assert_eq!(fake.hits(), 1, "no refetch within the retry period");
    }

    #[tokio::test]
    async fn a_set_without_a_usable_key_is_refused_and_the_last_good_kept() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let cache = cache(config(&fake));
        assert!(found(cache.key("k1").await));
        // Only keys the filter refuses (no alg), or that are not keys at all.
        let mut unstated = key.jwk.clone();
        unstated["alg"] = json!(null);
        unstated["kid"] = json!("k2");
        fake.publish_raw(vec![unstated]);
        assert!(matches!(cache.key("k2").await, KeyLookup::Unknown));
        assert!(cache.last_error().is_some_and(|e| e.contains("no usable")));
        assert!(found(cache.key("k1").await), "the last good set is kept");
    }

    /// After a failed fetch, lookups answer from what is held without fetching until the
    /// back-off has passed, whatever they ask for: a stale key, an unknown `kid`, no key set.
    #[tokio::test]
    async fn after_a_failure_no_fetch_starts_before_the_back_off() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let cache = cache(KeySetConfig {
            max_age: MaxAge::Fixed(Duration::ZERO),
            stale_for: Duration::from_secs(3600),
            retry: Duration::from_secs(300),
            ..config(&fake)
        });
        assert!(found(cache.key("k1").await));
        fake.set_down(true);
        assert!(found(cache.key("k1").await), "stale: served at once");
        settled(&cache).await;
        assert_eq!(fake.hits(), 2, "one background refresh");
        assert!(cache.last_error().is_some_and(|e| e.contains("503")));
        for _ in 0..10 {
            assert!(found(cache.key("k1").await));
            assert!(matches!(cache.key("k2").await, KeyLookup::Unknown));
            settled(&cache).await;
        }
        assert_eq!(fake.hits(), 2, "nothing fetched within the back-off");

        // Without any set held, the back-off answers `Unavailable` at once.
        let empty = super::KeySetCache::new(
            reqwest::Client::new(),
            KeySetConfig {
                retry: Duration::from_secs(300),
                ..config(&fake)
            },
        );
        assert!(matches!(empty.key("k1").await, KeyLookup::Unavailable));
        fake.set_down(false);
        assert!(matches!(empty.key("k1").await, KeyLookup::Unavailable));
        assert_eq!(fake.hits(), 3);
        assert!(empty
            .unavailable_reason()
            .contains("no key set fetched yet"));
    }

    #[test]
    fn the_back_off_doubles_up_to_its_cap_with_jitter_and_never_below_the_retry_period() {
        let (retry, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(back_off(retry, cap, 1), retry);
        for _ in 0..100 {
            let second = back_off(retry, cap, 2);
            assert!(second >= retry && second <= 2 * retry, "{second:?}");
            let late = back_off(retry, cap, 30);
            assert!(late >= cap / 2 && late <= cap, "{late:?}");
        }
        let spread: std::collections::HashSet<Duration> =
            (0..20).map(|_| back_off(retry, cap, 10)).collect();
        assert!(spread.len() > 1, "jittered");
        assert_eq!(back_off(Duration::ZERO, cap, 5), Duration::ZERO);
    }
}
