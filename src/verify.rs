//! Verifying our session tokens in another service (the chat service), offline, against our
//! published JWKS: what a verifier must check, in one place.
//!
//! ```no_run
//! # async fn demo(token: &str) -> Result<(), neo_sessions::verify::VerifyError> {
//! use neo_sessions::verify::{Verifier, VerifierConfig};
//! let verifier = Verifier::new(VerifierConfig::for_issuer(
//!     "https://api.neoagent.io",
//!     "https://api.neoagent.io/chat",
//! ))?;
//! // On `/chat/sessions/{id}/*`: the token must be for that session.
//! let claims = verifier.verify(token, "s-acme-1").await?;
//! # Ok(()) }
//! ```
//!
//! The checks, in order: the header's `typ` is ours; its `kid` is a published key (the JWKS is
//! cached as long as its `max-age` says and refetched for an unknown `kid` at most once per
//! cool-down); its `alg` is that key's own algorithm (never `none`, never one the header
//! chooses); the signature; `iss` and `aud` exactly; `exp` and `nbf` with a small leeway; and the
//! `session_id` claim equals the session of the request path; and, with a revocation feed
//! configured, that the token's `jti` has not been revoked.
//!
//! Revocations: [`VerifierConfig::with_revocation_feed`] names an API key allowed to read
//! `GET /public-api/sessions/revocations` (a tenant's key sees its tenant's tokens, the platform
//! key every tenant's). [`Verifier::spawn_revocation_polling`] then polls it every `interval` and
//! keeps the revoked jtis in memory until their tokens expire, so a revoked token is refused at
//! most one interval (plus a request) after its revocation. While the feed cannot be reached the
//! deny-list held is kept and still applied; [`Verifier::revocations_age`] says how old it is.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use jsonwebtoken::{
    decode, decode_header,
    errors::ErrorKind,
    jwk::{JwkSet, KeyAlgorithm},
    Algorithm, DecodingKey, Validation,
};

use crate::tokens::{SessionClaims, SESSION_TOKEN_TYP};

/// A JWKS larger than this is refused.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Used when the JWKS response says nothing about caching; and the longest we ever cache.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
const LONGEST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub jwks_url: String,
    /// Our `iss` (`NEO_TOKEN_ISSUER` of the token service).
    pub issuer: String,
    /// Our `aud` (`NEO_TOKEN_AUDIENCE` of the token service).
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// At most one refetch per this long for tokens with an unknown `kid`.
    pub unknown_kid_cooldown: Duration,
    pub http_timeout: Duration,
    /// The revocation feed to poll, if any.
    pub revocations: Option<RevocationFeedConfig>,
}

#[derive(Clone)]
pub struct RevocationFeedConfig {
    /// `<issuer>/public-api/sessions/revocations` by default.
    pub url: String,
    /// An API key that may read the feed (`neo_sk_...`).
    pub api_key: String,
    /// How often [`Verifier::spawn_revocation_polling`] polls.
    pub interval: Duration,
}

impl std::fmt::Debug for RevocationFeedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationFeedConfig")
            .field("url", &self.url)
            .field("api_key", &"***")
            .field("interval", &self.interval)
            .finish()
    }
}

impl VerifierConfig {
    /// The JWKS at `<issuer>/.well-known/jwks.json`, with a 30 s leeway and cool-down.
    pub fn for_issuer(issuer: &str, audience: &str) -> Self {
        Self {
            jwks_url: format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: Duration::from_secs(30),
            unknown_kid_cooldown: Duration::from_secs(30),
            http_timeout: Duration::from_secs(5),
            revocations: None,
        }
    }

    /// Also refuses revoked tokens, learnt from `<issuer>/public-api/sessions/revocations` with
    /// `api_key`, polled every `interval` (see [`Verifier::spawn_revocation_polling`]).
    pub fn with_revocation_feed(mut self, api_key: &str, interval: Duration) -> Self {
        self.revocations = Some(RevocationFeedConfig {
            url: format!(
                "{}/public-api/sessions/revocations",
                self.issuer.trim_end_matches('/')
            ),
            api_key: api_key.to_owned(),
            interval,
        });
        self
    }
}

/// Why a token was refused. Every variant means: do not serve the request (401).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a JWT")]
    Malformed,
    #[error("not a session token (wrong typ)")]
    WrongType,
    #[error("signed by a key that is not published ({kid:?})")]
    UnknownKey { kid: Option<String> },
    #[error("the header's alg is not the key's algorithm")]
    AlgorithmMismatch,
    #[error("bad signature")]
    BadSignature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("issued by another issuer")]
    WrongIssuer,
    #[error("meant for another audience")]
    WrongAudience,
    #[error("claims missing or malformed")]
    BadClaims,
    #[error("for another session")]
    WrongSession,
    #[error("revoked")]
    Revoked,
    /// The JWKS could not be fetched and no current copy is held.
    #[error("the JWKS is unavailable: {0}")]
    Jwks(String),
    /// The revocation feed could not be read (only from [`Verifier::refresh_revocations`]).
    #[error("the revocation feed is unavailable: {0}")]
    RevocationFeed(String),
}

/// The revoked jtis held, each until its token expires, and where the feed was left.
#[derive(Default)]
struct DenyList {
    revoked: HashMap<uuid::Uuid, DateTime<Utc>>,
    since: Option<DateTime<Utc>>,
    after: Option<String>,
    refreshed_at: Option<Instant>,
}

#[derive(Deserialize)]
struct FeedEnvelope {
    data: FeedPage,
}

#[derive(Deserialize)]
struct FeedPage {
    revocations: Vec<FeedEntry>,
    next_since: DateTime<Utc>,
    next_after: Option<String>,
    has_more: bool,
}

#[derive(Deserialize)]
struct FeedEntry {
    jti: uuid::Uuid,
    expires_at: DateTime<Utc>,
}

/// Pages read in one refresh at most (1000 revocations each).
const MAX_FEED_PAGES: usize = 100;

struct Cache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fresh_until: Option<Instant>,
    last_fetch: Option<Instant>,
}

pub struct Verifier {
    config: VerifierConfig,
    client: reqwest::Client,
    cache: RwLock<Cache>,
    /// One fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    deny: RwLock<DenyList>,
    /// One feed refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Result<Self, VerifyError> {
        crate::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VerifyError::Jwks(e.to_string()))?;
        Ok(Self {
            config,
            client,
            cache: RwLock::new(Cache {
                keys: HashMap::new(),
                fresh_until: None,
                last_fetch: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            deny: RwLock::new(DenyList::default()),
            refreshing: tokio::sync::Mutex::new(()),
        })
    }

    /// Polls the revocation feed every configured interval for as long as the verifier lives
    /// (the task holds it weakly); `None` without a feed configured. Failures are logged and
    /// retried at the next interval.
    pub fn spawn_revocation_polling(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.config.revocations.as_ref()?.interval;
        let verifier: Weak<Self> = Arc::downgrade(self);
        Some(tokio::spawn(async move {
            loop {
                let Some(live) = verifier.upgrade() else {
                    return;
                };
                if let Err(error) = live.refresh_revocations().await {
                    tracing::warn!(%error, "revocation feed not read; keeping the deny-list held");
                }
                drop(live);
                tokio::time::sleep(interval).await;
            }
        }))
    }

    /// Reads the feed from where the last refresh left it, to its end, and drops entries whose
    /// tokens have expired. Returns how many revocations are held.
    pub async fn refresh_revocations(&self) -> Result<usize, VerifyError> {
        let Some(feed) = &self.config.revocations else {
            return Ok(0);
        };
        let feed_error = |e: &dyn std::fmt::Display| VerifyError::RevocationFeed(e.to_string());
        let _one_at_a_time = self.refreshing.lock().await;
        for _ in 0..MAX_FEED_PAGES {
            let (since, after) = {
                let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
                (deny.since, deny.after.clone())
            };
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(since) = since {
                query.push((
                    "since",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ));
            }
            if let Some(after) = after {
                query.push(("after", after));
            }
            let response = self
                .client
                .get(&feed.url)
                .bearer_auth(&feed.api_key)
                .query(&query)
                .send()
                .await
                .map_err(|e| feed_error(&e))?;
            if !response.status().is_success() {
                return Err(feed_error(&format!("answered {}", response.status())));
            }
            let page: FeedEnvelope = response.json().await.map_err(|e| feed_error(&e))?;
            let page = page.data;
            let mut deny = self.deny.write().unwrap_or_else(|p| p.into_inner());
            let now = Utc::now();
            for entry in page.revocations {
                if entry.expires_at > now {
                    deny.revoked.insert(entry.jti, entry.expires_at);
                }
            }
            deny.since = Some(page.next_since);
            deny.after = page.next_after;
            if !page.has_more {
                break;
            }
        }
        let mut deny = self.deny.write().unwrap_or_else(|p| p.into_inner());
        let leeway = chrono::Duration::from_std(self.config.leeway).unwrap_or_default();
        let now = Utc::now();
        deny.revoked
            .retain(|_, expires_at| *expires_at + leeway > now);
        deny.refreshed_at = Some(Instant::now());
        Ok(deny.revoked.len())
    }

    /// How long ago the revocation feed was last read to its end (`None`: never).
    pub fn revocations_age(&self) -> Option<Duration> {
        let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
        deny.refreshed_at.map(|at| at.elapsed())
    }

    fn is_revoked(&self, jti: &uuid::Uuid) -> bool {
        let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
        deny.revoked.contains_key(jti)
    }

    /// The token's claims, if it is a valid session token of ours for `session_id`.
    pub async fn verify(
        &self,
        token: &str,
        session_id: &str,
    ) -> Result<SessionClaims, VerifyError> {
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.typ.as_deref() != Some(SESSION_TOKEN_TYP) {
            return Err(VerifyError::WrongType);
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(VerifyError::UnknownKey { kid: None });
        };
        let (algorithm, key) = self.key(kid).await?;
        if header.alg != algorithm {
            return Err(VerifyError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[self.config.issuer.as_str()]);
        validation.set_audience(&[self.config.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let claims = decode::<SessionClaims>(token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => VerifyError::Expired,
                ErrorKind::ImmatureSignature => VerifyError::NotYetValid,
                ErrorKind::InvalidIssuer => VerifyError::WrongIssuer,
                ErrorKind::InvalidAudience => VerifyError::WrongAudience,
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidAlgorithm => VerifyError::AlgorithmMismatch,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => VerifyError::BadClaims,
                _ => VerifyError::Malformed,
            })?
            .claims;
        if claims.session_id != session_id {
            return Err(VerifyError::WrongSession);
        }
        if self.is_revoked(&claims.jti) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }

    fn cached(&self, kid: &str) -> (Option<(Algorithm, DecodingKey)>, bool, Option<Instant>) {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let fresh = cache
            .fresh_until
            .is_some_and(|until| Instant::now() < until);
        (cache.keys.get(kid).cloned(), fresh, cache.last_fetch)
    }

    async fn key(&self, kid: &str) -> Result<(Algorithm, DecodingKey), VerifyError> {
        if let (Some(key), true, _) = self.cached(kid) {
            return Ok(key);
        }
        let _one_at_a_time = self.fetching.lock().await;
        let (key, fresh, last_fetch) = self.cached(kid);
        match (key, fresh) {
            (Some(key), true) => return Ok(key),
            // A current set without this kid: refetch at most once per cool-down.
            (None, true)
                if last_fetch.is_some_and(|at| at.elapsed() < self.config.unknown_kid_cooldown) =>
            {
                return Err(VerifyError::UnknownKey {
                    kid: Some(kid.to_owned()),
                })
            }
            _ => {}
        }
        if let Err(error) = self.fetch().await {
            // A stale set still verifies what it holds; only without any key is it an outage.
            let (key, _, _) = self.cached(kid);
            return match key {
                Some(key) => Ok(key),
                None if self.has_keys() => Err(VerifyError::UnknownKey {
                    kid: Some(kid.to_owned()),
                }),
                None => Err(error),
            };
        }
        self.cached(kid).0.ok_or(VerifyError::UnknownKey {
            kid: Some(kid.to_owned()),
        })
    }

    fn has_keys(&self) -> bool {
        !self
            .cache
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .is_empty()
    }

    async fn fetch(&self) -> Result<(), VerifyError> {
        let jwks_error = |e: &dyn std::fmt::Display| VerifyError::Jwks(e.to_string());
        {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            cache.last_fetch = Some(Instant::now());
        }
        let mut response = self
            .client
            .get(&self.config.jwks_url)
            .send()
            .await
            .map_err(|e| jwks_error(&e))?;
        if !response.status().is_success() {
            return Err(jwks_error(&format!("answered {}", response.status())));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .min(LONGEST_MAX_AGE);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| jwks_error(&e))? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(jwks_error(&"larger than 1 MiB"));
            }
            body.extend_from_slice(&chunk);
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| jwks_error(&e))?;
        let keys: HashMap<String, (Algorithm, DecodingKey)> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                // Only the algorithms we sign with, as each key states it.
                let algorithm = match jwk.common.key_algorithm? {
                    KeyAlgorithm::ES256 => Algorithm::ES256,
                    KeyAlgorithm::EdDSA => Algorithm::EdDSA,
                    KeyAlgorithm::RS256 => Algorithm::RS256,
                    _ => return None,
                };
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone()?, (algorithm, key)))
            })
            .collect();
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        cache.keys = keys;
        cache.fresh_until = Some(Instant::now() + max_age);
        Ok(())
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
    use super::max_age;
    use std::time::Duration;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), None);
    }
}
