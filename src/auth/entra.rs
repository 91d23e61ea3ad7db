//! Microsoft Entra ID access tokens of dashboard users: RS256 against Entra's JWKS, claims
//! validated as Microsoft's guidance says (exact per-tenant `iss`, our `aud` only, `scp` for
//! delegated user tokens), `tid` mapped to our tenant.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use jsonwebtoken::{
    decode,
    jwk::{AlgorithmParameters, Jwk, PublicKeyUse},
    Algorithm, Header, Validation,
};
pub use neo_sessions_verify::jwks::{Key, KeyLookup};
use neo_sessions_verify::jwks::{KeySetCache, KeySetConfig, MaxAge};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{invalid, AuthError, Lookups, Principal};
use crate::{
    config::EntraConfig,
    freshness::{Freshness, Topic, TtlCache},
    metrics::{Metrics, ResultLabel},
    store::Store,
};

/// Where Entra's signing keys come from. One real implementation, the verifier crate's
/// [`KeySetCache`] built by [`jwks_cache`].
#[async_trait]
pub trait EntraKeySource: Send + Sync {
    /// The key, fetching the key set when it is unknown or stale (rate-limited).
    async fn key(&self, kid: &str) -> KeyLookup;
    /// The key if a current key set holds it, without fetching anything.
    fn cached_key(&self, kid: &str) -> Option<Arc<Key>>;
    /// How old the key set held is (`None`: none held), for metrics.
    fn age(&self) -> Option<Duration> {
        None
    }
}

/// Entra's signing keys: RSA, not marked for encryption; they verify RS256 only.
fn entra_key(jwk: &Jwk) -> Option<Algorithm> {
    let rsa = matches!(jwk.algorithm, AlgorithmParameters::RSA(_));
    let encryption = matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    (rsa && !encryption).then_some(Algorithm::RS256)
}

/// The longest back-off after failed fetches of Entra's JWKS.
pub const ENTRA_RETRY_CAP: Duration = Duration::from_secs(300);

/// Entra's JWKS in memory, keyed by `kid`: current for `key_max_age_seconds` after a fetch and
/// never served past that, refreshed in the background (see [`KeySetCache::spawn_refresh`]),
/// refetched on an unknown `kid` at most once per cool-down for the whole process, one fetch at
/// a time; after a failure none for `retry_seconds`, doubling per further failure up to
/// [`ENTRA_RETRY_CAP`] (with jitter). Every fetch is counted by result.
pub fn jwks_cache(
    config: &EntraConfig,
    metrics: Arc<Metrics>,
) -> Result<Arc<KeySetCache>, reqwest::Error> {
    neo_sessions_verify::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.http_timeout_seconds.get()))
        .connect_timeout(Duration::from_secs(config.http_timeout_seconds.get()))
        // A redirect could lead anywhere (another host, plain HTTP): the configured URL is
        // the only source of keys.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("neo-sessions/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let keys = KeySetConfig {
        url: config.jwks_url.clone(),
        name: "Entra",
        max_age: MaxAge::Fixed(Duration::from_secs(config.key_max_age_seconds)),
        stale_for: Duration::ZERO,
        unknown_kid_cooldown: Duration::from_secs(config.kid_cooldown_seconds),
        retry: Duration::from_secs(config.retry_seconds),
        retry_cap: ENTRA_RETRY_CAP.max(Duration::from_secs(config.retry_seconds)),
        accept: entra_key,
    };
    metrics.start_jwks_fetches();
    let cache = KeySetCache::new(client, keys).observing_fetches(move |ok| {
        metrics
            .jwks_fetches
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    });
    Ok(Arc::new(cache))
}

#[async_trait]
impl EntraKeySource for KeySetCache {
    fn cached_key(&self, kid: &str) -> Option<Arc<Key>> {
        KeySetCache::cached_key(self, kid)
    }

    fn age(&self) -> Option<Duration> {
        KeySetCache::age(self)
    }

    async fn key(&self, kid: &str) -> KeyLookup {
        KeySetCache::key(self, kid).await
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
    key: Arc<Key>,
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
        lookups: Lookups<'_>,
    ) -> Result<Principal, AuthError> {
        let EntraIdentity { tid, oid } = self.validate(token, header, lookups).await?;
        // The token verified: its directory is looked up even for an address over its
        // failed-authentication budget (a guesser never gets this far).
        let tenant_id = match self.directories.get(tid.as_str()) {
            Some(tenant_id) => tenant_id,
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
        lookups: Lookups<'_>,
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
        // A key not held is fetched (at most once per cool-down, by the key set), paced for an
        // address over its failed-authentication budget.
        let lookup = match self.keys.cached_key(kid) {
            Some(key) => KeyLookup::Found(key),
            None => lookups.run(self.keys.key(kid)).await,
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
        let claims = decode::<EntraClaims>(token, &key.decoding, &self.validation)
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
