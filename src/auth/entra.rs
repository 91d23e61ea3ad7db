//! Microsoft Entra ID access tokens of dashboard users: RS256 against Entra's JWKS, claims
//! validated as Microsoft's guidance says (exact per-tenant `iss`, our `aud` only, `scp` for
//! delegated user tokens), `tid` mapped to our tenant.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use jsonwebtoken::{decode, jwk::JwkSet, Algorithm, DecodingKey, Header, Validation};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{invalid, AuthError, Lookups, Principal};
use crate::{
    cache::{Freshness, Topic, TtlCache},
    config::EntraConfig,
    metrics::{Metrics, ResultLabel},
    store::Store,
};

/// A JWKS larger than this is refused rather than parsed.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// What a key source says about a `kid`.
pub enum KeyLookup {
    Found(Arc<DecodingKey>),
    /// The key set is current and has no such key: the token is invalid (401).
    Unknown,
    /// No trustworthy key set is held (never fetched, or too old): we cannot tell (503).
    Unavailable,
}

/// Where Entra's signing keys come from. One real implementation, [`JwksCache`].
#[async_trait]
pub trait EntraKeySource: Send + Sync {
    /// The key, fetching the key set when it is unknown or stale (rate-limited).
    async fn key(&self, kid: &str) -> KeyLookup;
    /// The key if a current key set holds it, without fetching anything.
    fn cached_key(&self, kid: &str) -> Option<Arc<DecodingKey>>;
    /// How old the key set held is (`None`: none held), for metrics.
    fn age(&self) -> Option<Duration> {
        None
    }
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct FetchGate {
    last_unknown_kid_fetch: Option<Instant>,
    last_failed_fetch: Option<Instant>,
}

/// Entra's JWKS in memory, keyed by `kid`: refreshed in the background, refetched on an unknown
/// `kid` at most once per cool-down for the whole process (concurrent requests share one fetch),
/// and kept as it was when a fetch fails.
pub struct JwksCache {
    client: reqwest::Client,
    url: String,
    keys: RwLock<KeySet>,
    gate: tokio::sync::Mutex<FetchGate>,
    max_age: Duration,
    kid_cooldown: Duration,
    retry: Duration,
    metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("JWKS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("JWKS answered {0}")]
    Status(reqwest::StatusCode),
    #[error("JWKS is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("JWKS is not a JWK set: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("JWKS has no usable RSA signing key")]
    Empty,
}

pub use crate::tls::install_crypto_provider;

impl JwksCache {
    pub fn new(config: &EntraConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, reqwest::Error> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.http_timeout_seconds.get()))
            .connect_timeout(Duration::from_secs(config.http_timeout_seconds.get()))
            // A redirect could lead anywhere (another host, plain HTTP): the configured URL is
            // the only source of keys.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("neo-sessions/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self {
            client,
            url: config.jwks_url.clone(),
            keys: RwLock::default(),
            gate: tokio::sync::Mutex::default(),
            max_age: Duration::from_secs(config.key_max_age_seconds),
            kid_cooldown: Duration::from_secs(config.kid_cooldown_seconds),
            retry: Duration::from_secs(config.retry_seconds),
            metrics,
        }))
    }

    /// Fetches now, then every `interval` (sooner after a failure), until the cache is dropped.
    pub fn spawn_refresh(self: &Arc<Self>, interval: Duration) {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(strong) = cache.upgrade() else { break };
                let next = match strong.fetch().await {
                    Ok(count) => {
                        tracing::debug!(keys = count, "refreshed the Entra JWKS");
                        interval
                    }
                    Err(error) => {
                        tracing::warn!(%error, "Entra JWKS refresh failed; keeping the last good key set");
                        interval.min(Duration::from_secs(60))
                    }
                };
                drop(strong);
                tokio::time::sleep(next).await;
            }
        });
    }

    fn cached(&self, kid: &str) -> (Option<Arc<DecodingKey>>, bool) {
        let keys = match self.keys.read() {
            Ok(keys) => keys,
            Err(poisoned) => poisoned.into_inner(),
        };
        let fresh = keys
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age);
        let key = fresh.then(|| keys.keys.get(kid).cloned()).flatten();
        (key, fresh)
    }

    /// One GET of the JWKS, counted by result.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let result = self.fetch_set().await;
        self.metrics
            .jwks_fetches
            .get_or_create(&ResultLabel {
                result: if result.is_ok() { "ok" } else { "error" },
            })
            .inc();
        result
    }

    /// One GET of the JWKS; on success the new set replaces the old (rolled-over keys go).
    async fn fetch_set(&self) -> Result<usize, FetchError> {
        let mut response = self.client.get(&self.url).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        // Read chunk by chunk and stop at the cap: a chunked body has no length to check first.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body)?;
        let keys: HashMap<String, Arc<DecodingKey>> = set
            .keys
            .iter()
            .filter(|jwk| {
                matches!(
                    jwk.algorithm,
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                ) && !matches!(
                    jwk.common.public_key_use,
                    Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
                )
            })
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err(FetchError::Empty);
        }
        let count = keys.len();
        let mut current = match self.keys.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = KeySet {
            keys,
            fetched_at: Some(Instant::now()),
        };
        Ok(count)
    }
}

#[async_trait]
impl EntraKeySource for JwksCache {
    fn cached_key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.cached(kid).0
    }

    fn age(&self) -> Option<Duration> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.fetched_at.map(|at| at.elapsed())
    }

    async fn key(&self, kid: &str) -> KeyLookup {
        if let (Some(key), _) = self.cached(kid) {
            return KeyLookup::Found(key);
        }
        // One fetch at a time; whoever waited here looks again before fetching.
        let mut gate = self.gate.lock().await;
        let (key, fresh) = self.cached(kid);
        if let Some(key) = key {
            return KeyLookup::Found(key);
        }
        let now = Instant::now();
        let recently = |at: Option<Instant>, period: Duration| {
            at.is_some_and(|at| now.duration_since(at) < period)
        };
        if fresh {
            if recently(gate.last_unknown_kid_fetch, self.kid_cooldown) {
                return KeyLookup::Unknown;
            }
            gate.last_unknown_kid_fetch = Some(now);
        } else if recently(gate.last_failed_fetch, self.retry) {
            return KeyLookup::Unavailable;
        }
        match self.fetch().await {
            Ok(count) => {
                gate.last_failed_fetch = None;
                tracing::info!(keys = count, "fetched the Entra JWKS");
            }
            Err(error) => {
                gate.last_failed_fetch = Some(now);
                tracing::warn!(%error, "Entra JWKS fetch failed");
            }
        }
        match self.cached(kid) {
            (Some(key), _) => KeyLookup::Found(key),
            (None, true) => KeyLookup::Unknown,
            (None, false) => KeyLookup::Unavailable,
        }
    }
}

/// The claims we read; `aud`, `exp` and `nbf` are checked by `jsonwebtoken`. `iss` is a `String`
/// so that an array fails to deserialize.
#[derive(Debug, Deserialize)]
struct EntraClaims {
    iss: String,
    exp: i64,
    tid: String,
    oid: Option<String>,
    scp: Option<String>,
}

pub struct EntraVerifier {
    keys: Arc<dyn EntraKeySource>,
    validation: Validation,
    required_scope: Option<String>,
    store: Arc<Store>,
    /// What a 503 tells Entra callers to wait: the on-demand fetch interval.
    retry_after: Duration,
    /// `tid` → tenant id (or none), briefly: only `tid`s of validly signed tokens get here.
    directories: TtlCache<String, Option<String>>,
    /// SHA-256 of a whole token → what validating it gave, for tokens that passed every check.
    /// A hit is used only while the token has not expired and the key that verified it is
    /// still the one the current key set holds for its `kid`.
    verified: Option<quick_cache::sync::Cache<[u8; 32], Verified>>,
    verified_hits: Counter,
}

/// A token that passed every check of [`EntraVerifier::validate`].
#[derive(Clone)]
struct Verified {
    identity: EntraIdentity,
    exp: i64,
    key: Arc<DecodingKey>,
}

/// How long a directory → tenant mapping read from the database is reused.
const DIRECTORY_CACHE_TTL: Duration = Duration::from_secs(30);

/// A validly signed Entra user token that may mint: who it is, before tenant mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntraIdentity {
    pub tid: String,
    pub oid: String,
}

impl EntraVerifier {
    /// `verified_hits` counts the validations answered by the verified-token cache.
    pub fn new(
        keys: Arc<dyn EntraKeySource>,
        config: &EntraConfig,
        store: Arc<Store>,
        freshness: Arc<Freshness>,
        verified_hits: Counter,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&config.audiences());
        validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss"]);
        validation.validate_nbf = true;
        validation.leeway = config.leeway_seconds;
        Self {
            keys,
            validation,
            required_scope: config
                .required_scope
                .clone()
                .filter(|s| !s.trim().is_empty()),
            store,
            retry_after: Duration::from_secs(config.retry_seconds),
            directories: TtlCache::new(DIRECTORY_CACHE_TTL, freshness, &[Topic::Tenants]),
            verified: (config.token_cache_entries > 0)
                .then(|| quick_cache::sync::Cache::new(config.token_cache_entries)),
            verified_hits,
        }
    }

    /// How old the Entra key set held is (`None`: none held yet).
    pub fn key_set_age(&self) -> Option<Duration> {
        self.keys.age()
    }

    /// Validates the token and maps its directory to our tenant.
    pub async fn verify(
        &self,
        token: &str,
        header: &Header,
        lookups: Lookups,
    ) -> Result<Principal, AuthError> {
        let EntraIdentity { tid, oid } = self.validate(token, header, lookups).await?;
        let tenant_id = match self.directories.get(tid.as_str()) {
            Some(tenant_id) => tenant_id,
            None if lookups == Lookups::Refused => return Err(AuthError::LookupRefused),
            None => {
                let ticket = self.directories.ticket();
                let tenant_id = self
                    .store
                    .find_tenant_by_entra_id(&tid)
                    .await?
                    .map(|t| t.id);
                self.directories
                    .insert(ticket, tid.clone(), tenant_id.clone());
                tenant_id
            }
        };
        let Some(tenant_id) = tenant_id else {
            return Err(AuthError::UnknownDirectory);
        };
        Ok(Principal::EntraUser {
            tenant_id,
            tid,
            oid,
        })
    }

    /// Signature and claims (401s), then the right to mint (403s). No database access.
    pub async fn validate(
        &self,
        token: &str,
        header: &Header,
        lookups: Lookups,
    ) -> Result<EntraIdentity, AuthError> {
        // RS256 only: never none, never HS* (which would make Entra's public key a shared secret).
        if header.alg != Algorithm::RS256 {
            return Err(invalid("Entra token not signed with RS256"));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(invalid("Entra token without kid"));
        };
        // The same token verified before: the same answer while it is unexpired and its key is
        // still current. Keyed by the whole token (header, claims and signature), so a token
        // differing in any byte is verified afresh.
        let digest = self
            .verified
            .as_ref()
            .map(|_| <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
        if let (Some(verified), Some(digest)) = (&self.verified, &digest) {
            if let Some(hit) = verified.get(digest) {
                let now = jsonwebtoken::get_current_timestamp();
                let unexpired = u64::try_from(hit.exp)
                    .is_ok_and(|exp| exp.saturating_add(self.validation.leeway) >= now);
                let key_current = self
                    .keys
                    .cached_key(kid)
                    .is_some_and(|key| Arc::ptr_eq(&key, &hit.key));
                if unexpired && key_current {
                    self.verified_hits.inc();
                    return Ok(hit.identity);
                }
                verified.remove(digest);
            }
        }
        // `jku`, `x5u`, `jwk` and `x5c` headers are never followed: keys come from our JWKS only.
        let lookup = match lookups {
            Lookups::Allowed => self.keys.key(kid).await,
            Lookups::Refused => match self.keys.cached_key(kid) {
                Some(key) => KeyLookup::Found(key),
                None => return Err(AuthError::LookupRefused),
            },
        };
        let key = match lookup {
            KeyLookup::Found(key) => key,
            KeyLookup::Unknown => return Err(invalid("Entra token signed by an unknown key")),
            KeyLookup::Unavailable => {
                return Err(AuthError::EntraUnavailable {
                    retry_after: self.retry_after,
                })
            }
        };
        let claims = decode::<EntraClaims>(token, key.as_ref(), &self.validation)
            .map_err(|_| invalid("Entra token failed verification"))?
            .claims;
        let tid = canonical_guid(&claims.tid).ok_or(invalid("Entra token with a malformed tid"))?;
        let v2 = format!("https://login.microsoftonline.com/{}/v2.0", claims.tid);
        let v1 = format!("https://sts.windows.net/{}/", claims.tid);
        if claims.iss != v2 && claims.iss != v1 {
            return Err(invalid("Entra token whose iss does not match its tid"));
        }
        let oid = claims
            .oid
            .filter(|oid| !oid.is_empty())
            .ok_or(invalid("Entra token without oid"))?;

        // Valid token; from here on the caller is known and refusals are 403.
        let Some(scopes) = claims.scp else {
            // App-only tokens carry `roles` and no `scp`: only users sign in to the dashboard.
            return Err(AuthError::InsufficientScope);
        };
        if let Some(required) = &self.required_scope {
            if !scopes.split_whitespace().any(|s| s == required) {
                return Err(AuthError::InsufficientScope);
            }
        }
        let identity = EntraIdentity { tid, oid };
        if let (Some(verified), Some(digest)) = (&self.verified, digest) {
            let remembered = Verified {
                identity: identity.clone(),
                exp: claims.exp,
                key,
            };
            verified.insert(digest, remembered);
        }
        Ok(identity)
    }
}

/// A GUID in its canonical hyphenated form (any case), lowercased; braces, URNs and the
/// 32-digit form are refused.
fn canonical_guid(text: &str) -> Option<String> {
    let guid = uuid::Uuid::try_parse(text).ok()?.hyphenated().to_string();
    (guid.eq_ignore_ascii_case(text)).then_some(guid)
}

#[cfg(test)]
mod tests {
    use super::canonical_guid;

    #[test]
    fn tids_must_be_canonical_guids() {
        let tid = "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a";
        assert_eq!(canonical_guid(tid).as_deref(), Some(tid));
        assert_eq!(canonical_guid(&tid.to_uppercase()).as_deref(), Some(tid));
        assert_eq!(canonical_guid("0b9c2a4e1f6d4c8e9a573f1e2d4c5b6a"), None);
        assert_eq!(
            canonical_guid("{0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a}"),
            None
        );
        assert_eq!(canonical_guid("common"), None);
        assert_eq!(canonical_guid("../evil"), None);
    }
}
