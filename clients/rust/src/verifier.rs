//! [`Verifier`]: our session tokens checked offline against the token service's JWKS, and the
//! revocation feed polled into an in-memory deny-list.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock, Weak},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use jsonwebtoken::{
    decode_header,
    jwk::{Jwk, KeyAlgorithm},
    Algorithm,
};
use uuid::Uuid;

use crate::{
    feed::FeedResponse,
    jwks::{KeyLookup, KeySetCache, KeySetConfig, MaxAge},
    SessionClaims, TokenRules,
};

/// Used when the JWKS response says nothing about caching.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// The longest we ever cache; and how long past that a set still serves its keys while the JWKS
/// cannot be fetched.
const LONGEST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Pages read in one refresh at most (1000 revocations each).
const MAX_FEED_PAGES: usize = 100;

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
    /// An API key that may read the feed (`neo_sk_...`): give it one that can do nothing else, a
    /// platform key made with `api-key create --scope revocations:read` (it reads every tenant's
    /// revocations; a tenant's key reads that tenant's only).
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

impl VerifyError {
    /// A stable name for the refusal, the same in every verifier of ours (the Python package's
    /// `VerifyError.code`, the shared test vectors in `tests/vectors/`): the variant's name in
    /// snake_case, except that the two outages say so (`jwks_unavailable`,
    /// `revocation_feed_unavailable`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::UnknownKey { .. } => "unknown_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaims => "bad_claims",
            Self::WrongSession => "wrong_session",
            Self::Revoked => "revoked",
            Self::Jwks(_) => "jwks_unavailable",
            Self::RevocationFeed(_) => "revocation_feed_unavailable",
        }
    }
}

/// The revoked jtis held, each until its token expires, and where the feed was left.
#[derive(Default)]
struct DenyList {
    revoked: HashMap<Uuid, DateTime<Utc>>,
    /// Where the feed goes on (`next_cursor`); `None` before the first page.
    cursor: Option<String>,
    refreshed_at: Option<Instant>,
}

/// The keys of our JWKS a verifier uses: the algorithms we sign with, as each key states it.
fn our_key(jwk: &Jwk) -> Option<Algorithm> {
    match jwk.common.key_algorithm? {
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        _ => None,
    }
}

pub struct Verifier {
    config: VerifierConfig,
    client: reqwest::Client,
    rules: TokenRules,
    keys: KeySetCache,
    deny: RwLock<DenyList>,
    /// One feed refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> Result<Self, VerifyError> {
        crate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| VerifyError::Jwks(e.to_string()))?;
        let keys = KeySetCache::new(
            client.clone(),
            KeySetConfig {
                url: config.jwks_url.clone(),
                name: "session-token",
                max_age: MaxAge::CacheControl {
                    default: DEFAULT_MAX_AGE,
                    longest: LONGEST_MAX_AGE,
                },
                stale_for: LONGEST_MAX_AGE,
                unknown_kid_cooldown: config.unknown_kid_cooldown,
                // A set that is not current is refetched on every verification that needs it.
                retry: Duration::ZERO,
                accept: our_key,
            },
        );
        Ok(Self {
            rules: TokenRules::new(&config.issuer, &config.audience, config.leeway),
            config,
            client,
            keys,
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
            let cursor = {
                let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
                deny.cursor.clone()
            };
            let query: Vec<(&str, String)> = cursor.into_iter().map(|c| ("cursor", c)).collect();
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
            let page = response
                .json::<FeedResponse>()
                .await
                .map_err(|e| feed_error(&e))?
                .data;
            let revoked = page
                .revocations
                .iter()
                .map(|entry| Ok((Uuid::try_parse(&entry.jti)?, entry.expires_at)))
                .collect::<Result<Vec<_>, uuid::Error>>()
                .map_err(|e| feed_error(&e))?;
            let mut deny = self.deny.write().unwrap_or_else(|p| p.into_inner());
            let now = Utc::now();
            for (jti, expires_at) in revoked {
                if expires_at > now {
                    deny.revoked.insert(jti, expires_at);
                }
            }
            deny.cursor = Some(page.next_cursor);
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

    fn is_revoked(&self, jti: &Uuid) -> bool {
        let deny = self.deny.read().unwrap_or_else(|p| p.into_inner());
        deny.revoked.contains_key(jti)
    }

    /// The token's claims, if it is a valid session token of ours for `session_id`.
    pub async fn verify(
        &self,
        token: &str,
        session_id: &str,
    ) -> Result<SessionClaims, VerifyError> {
        self.verify_at(token, session_id, Utc::now()).await
    }

    /// [`Self::verify`] with `exp` and `nbf` compared with `at` instead of the clock (whole
    /// seconds; the leeway applies as usual). Everything else is as of now: the key set held or
    /// fetched now, the revocations learnt so far. For the shared test vectors
    /// (`tests/vectors/`, whose tokens are checked at a fixed time) and for replaying a decision;
    /// a service verifies with [`Self::verify`].
    pub async fn verify_at(
        &self,
        token: &str,
        session_id: &str,
        at: DateTime<Utc>,
    ) -> Result<SessionClaims, VerifyError> {
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let kid = TokenRules::kid(&header)?;
        let key = match self.keys.key(kid).await {
            KeyLookup::Found(key) => key,
            KeyLookup::Unknown => {
                return Err(VerifyError::UnknownKey {
                    kid: Some(kid.to_owned()),
                })
            }
            KeyLookup::Unavailable => {
                let error = self.keys.last_error();
                return Err(VerifyError::Jwks(
                    error.unwrap_or_else(|| "no key set held".to_owned()),
                ));
            }
        };
        let claims = self.rules.validate_at(
            token,
            &header,
            key.algorithm,
            &key.decoding,
            Some(session_id),
            at.timestamp(),
        )?;
        if self.is_revoked(&claims.jti) {
            return Err(VerifyError::Revoked);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Verifier, VerifierConfig, VerifyError};
    use crate::testing::{FakeJwks, TestKey};

    #[tokio::test]
    async fn the_jwks_decides_between_outage_unknown_key_and_a_verified_token() {
        let (key, unpublished) = (TestKey::new("k1"), TestKey::new("k2"));
        let fake = FakeJwks::start(&[&key]).await;
        let mut config = VerifierConfig::for_issuer("https://api.example", "chat");
        config.jwks_url = fake.url.clone();
        let verifier = Verifier::new(config).expect("verifier");
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": "https://api.example", "aud": "chat", "sub": "pat",
            "jti": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a", "iat": now, "nbf": now,
            "exp": now + 600, "session_id": "s-1", "client_id": "acme", "end_company_id": null,
            "end_user": "pat", "end_user_email": null, "allowed_agent_ids": [], "scope": "chat",
        });
        let token = key.sign(&claims);

        fake.set_down(true);
        let outage = verifier.verify(&token, "s-1").await.expect_err("no keys");
        assert!(
            matches!(&outage, VerifyError::Jwks(e) if e.contains("503")),
            "{outage:?}"
        );
        fake.set_down(false);
        let verified = verifier.verify(&token, "s-1").await.expect("valid");
        assert_eq!(verified.client_id, "acme");
        assert!(matches!(
            verifier.verify(&unpublished.sign(&claims), "s-1").await,
            Err(VerifyError::UnknownKey { kid: Some(kid) }) if kid == "k2"
        ));
        assert!(matches!(
            verifier.verify(&token, "s-2").await,
            Err(VerifyError::WrongSession)
        ));
        // Nothing revoked without a feed; refreshing it is a no-op.
        assert_eq!(verifier.refresh_revocations().await.ok(), Some(0));
        assert!(verifier.revocations_age().is_none());
    }
}
