//! A JWKS in memory, keyed by `kid`: one cache for every key set we read (our own session
//! tokens' in [`crate::Verifier`], Entra's in the token service).
//!
//! A fetched set is current for as long as its [`MaxAge`] says (a fixed age, or the response's
//! `Cache-Control: max-age`). A `kid` the current set lacks causes a refetch at most once per
//! cool-down for the whole process (concurrent requests share one fetch). A set that is no longer
//! current is refetched on demand, at most once per retry period after a failure; while that
//! fails, its keys are still served for a bounded `stale_for` and then not at all.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use jsonwebtoken::{
    jwk::{Jwk, JwkSet},
    Algorithm, DecodingKey,
};

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
    /// How long past being current a set still serves the keys it holds, while refetching fails.
    pub stale_for: Duration,
    /// At most one refetch per this long for a `kid` the current set lacks.
    pub unknown_kid_cooldown: Duration,
    /// After a failed fetch, a set that is not current is not fetched again for this long.
    pub retry: Duration,
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

impl KeySet {
    /// Whether the set is current, and whether its keys may still be served.
    fn status(&self, stale_for: Duration) -> (bool, bool) {
        match self.fetched_at.map(|at| at.elapsed()) {
            Some(age) => (
                age < self.current_for,
                age < self.current_for.saturating_add(stale_for),
            ),
            None => (false, false),
        }
    }
}

#[derive(Default)]
struct FetchGate {
    last_unknown_kid_fetch: Option<Instant>,
    last_failed_fetch: Option<Instant>,
}

/// Called after every fetch with whether it succeeded (for a metric).
type FetchObserver = Box<dyn Fn(bool) + Send + Sync>;

/// The key set of one JWKS URL; see the module docs for when it fetches.
pub struct KeySetCache {
    client: reqwest::Client,
    config: KeySetConfig,
    keys: RwLock<KeySet>,
    gate: tokio::sync::Mutex<FetchGate>,
    observer: Option<FetchObserver>,
}

impl KeySetCache {
    /// Fetches with `client` (its timeouts and redirect policy are the caller's), nothing yet.
    pub fn new(client: reqwest::Client, config: KeySetConfig) -> Self {
        Self {
            client,
            config,
            keys: RwLock::default(),
            gate: tokio::sync::Mutex::default(),
            observer: None,
        }
    }

    /// Calls `observer` after every fetch with whether it succeeded.
    pub fn observing_fetches(mut self, observer: impl Fn(bool) + Send + Sync + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Fetches now, then every `interval` (sooner after a failure), until the cache is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = cache.upgrade() else { break };
                let name = strong.config.name;
                let next = match strong.fetch().await {
                    Ok(count) => {
                        tracing::debug!(keys = count, "refreshed the {name} JWKS");
                        interval
                    }
                    Err(error) => {
                        tracing::warn!(%error, "{name} JWKS refresh failed; keeping the last good key set");
                        interval.min(Duration::from_secs(60))
                    }
                };
                drop(strong);
                tokio::time::sleep(next).await;
            }
        });
    }

    /// The key if a current set holds it, without fetching anything.
    pub fn cached_key(&self, kid: &str) -> Option<Arc<Key>> {
        let (key, current, _) = self.cached(kid);
        key.filter(|_| current)
    }

    /// How old the key set held is (`None`: none held).
    pub fn age(&self) -> Option<Duration> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.fetched_at.map(|at| at.elapsed())
    }

    /// Why the last fetch failed, while no fetch has succeeded since.
    pub fn last_error(&self) -> Option<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.last_error.clone()
    }

    /// The key for `kid`, fetching the set when it lacks the key or is not current (as limited
    /// by the cool-down and the retry period).
    pub async fn key(&self, kid: &str) -> KeyLookup {
        if let Some(key) = self.cached_key(kid) {
            return KeyLookup::Found(key);
        }
        // One fetch at a time; whoever waited here looks again before fetching.
        let mut gate = self.gate.lock().await;
        let (key, current, _) = self.cached(kid);
        if let (Some(key), true) = (&key, current) {
            return KeyLookup::Found(Arc::clone(key));
        }
        let now = Instant::now();
        let recently = |at: Option<Instant>, period: Duration| {
            at.is_some_and(|at| now.duration_since(at) < period)
        };
        if current {
            if recently(
                gate.last_unknown_kid_fetch,
                self.config.unknown_kid_cooldown,
            ) {
                return KeyLookup::Unknown;
            }
            gate.last_unknown_kid_fetch = Some(now);
        } else if recently(gate.last_failed_fetch, self.config.retry) {
            return self.lookup(kid);
        }
        let name = self.config.name;
        match self.fetch().await {
            Ok(count) => {
                gate.last_failed_fetch = None;
                tracing::info!(keys = count, "fetched the {name} JWKS");
            }
            Err(error) => {
                gate.last_failed_fetch = Some(now);
                tracing::warn!(%error, "{name} JWKS fetch failed");
            }
        }
        self.lookup(kid)
    }

    /// What the set held says about `kid`, fetching nothing.
    fn lookup(&self, kid: &str) -> KeyLookup {
        match self.cached(kid) {
            (_, _, false) => KeyLookup::Unavailable,
            (Some(key), _, true) => KeyLookup::Found(key),
            (None, _, true) => KeyLookup::Unknown,
        }
    }

    /// The key held for `kid`, whether the set is current, and whether it may be served.
    fn cached(&self, kid: &str) -> (Option<Arc<Key>>, bool, bool) {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let (current, servable) = keys.status(self.config.stale_for);
        let key = servable.then(|| keys.keys.get(kid).cloned()).flatten();
        (key, current, servable)
    }

    /// One GET of the JWKS, reported to the observer; a failure is kept for [`Self::last_error`].
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

    use super::{max_age, KeyLookup, KeySetCache, KeySetConfig, MaxAge};
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
            accept: eddsa,
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
            // As a verifier of our tokens has it: a set just fetched with max-age=0 serves once.
            stale_for: Duration::from_secs(3600),
            ..config(&fake)
        });
        fake.cache_control("public, max-age=0");
        assert!(found(cache.key("k1").await));
        assert!(found(cache.key("k1").await));
        assert_eq!(fake.hits(), 2, "max-age=0: every lookup refetches");
        fake.cache_control("public, max-age=60");
        assert!(found(cache.key("k1").await));
        assert!(found(cache.key("k1").await));
        assert_eq!(fake.hits(), 3, "max-age=60: current after one fetch");
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
}
