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
/// The longest we ever cache, whatever the response says.
const LONGEST_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long past its max-age a key set is still trusted while it cannot be refreshed (the
/// default of [`VerifierConfig::jwks_stale_for`]).
pub const DEFAULT_JWKS_STALE_FOR: Duration = Duration::from_secs(3600);
/// The first back-off after a failed JWKS fetch; it doubles with each further failure...
const JWKS_RETRY: Duration = Duration::from_secs(1);
/// ...up to this (with jitter).
const JWKS_RETRY_CAP: Duration = Duration::from_secs(60);
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
    /// How long past its `max-age` the key set held is still trusted while it cannot be
    /// refreshed; then tokens are refused with [`VerifyError::JwksUnavailable`]. Bounds how long
    /// a key withdrawn from the JWKS is still accepted during an outage.
    pub jwks_stale_for: Duration,
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
            jwks_stale_for: DEFAULT_JWKS_STALE_FOR,
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

/// Why a token was refused. Every variant means: do not serve the request (401, but 503 for
/// [`VerifyError::JwksUnavailable`]: the token may well be valid).
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
    /// No key set may be used: none could be fetched yet, or the one held is older than its
    /// `max-age` plus [`VerifierConfig::jwks_stale_for`] and refreshing it fails. The message
    /// says how old it is and why the last fetch failed.
    #[error("the JWKS is unavailable: {0}")]
    JwksUnavailable(String),
    /// The revocation feed could not be read (only from [`Verifier::refresh_revocations`]).
    #[error("the revocation feed is unavailable: {0}")]
    RevocationFeed(String),
}

impl VerifyError {
    /// A stable name for the refusal, the same in every verifier of ours (the Python package's
    /// `VerifyError.code`, the shared test vectors in `tests/vectors/`): the variant's name in
    /// snake_case (`RevocationFeed`, an outage, is `revocation_feed_unavailable`).
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
            Self::JwksUnavailable(_) => "jwks_unavailable",
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
            .map_err(|e| VerifyError::JwksUnavailable(e.to_string()))?;
        let keys = KeySetCache::new(
            client.clone(),
            KeySetConfig {
                url: config.jwks_url.clone(),
                name: "session-token",
                max_age: MaxAge::CacheControl {
                    default: DEFAULT_MAX_AGE,
                    longest: LONGEST_MAX_AGE,
                },
                stale_for: config.jwks_stale_for,
                unknown_kid_cooldown: config.unknown_kid_cooldown,
                retry: JWKS_RETRY,
                retry_cap: JWKS_RETRY_CAP,
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
                return Err(VerifyError::JwksUnavailable(self.keys.unavailable_reason()))
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

    use std::{sync::Arc, time::Duration};

    use super::{Verifier, VerifierConfig, VerifyError};
    use crate::testing::{FakeJwks, TestKey};

    fn claims() -> serde_json::Value {
        let now = chrono::Utc::now().timestamp();
        json!({
            "iss": "https://api.example", "aud": "chat", "sub": "pat",
            "jti": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a", "iat": now, "nbf": now,
            "exp": now + 600, "session_id": "s-1", "client_id": "acme", "end_company_id": null,
            "end_user": "pat", "end_user_email": null, "allowed_agent_ids": [], "scope": "chat",
        })
    }

    /// A verifier of `fake`'s keys whose key set is stale as soon as it is fetched (max-age=0).
    fn stale_at_once(fake: &FakeJwks, tweak: impl FnOnce(&mut VerifierConfig)) -> Verifier {
        fake.cache_control("public, max-age=0");
        let mut config = VerifierConfig::for_issuer("https://api.example", "chat");
        config.jwks_url = fake.url.clone();
        tweak(&mut config);
        Verifier::new(config).expect("verifier")
    }

    /// The token service hangs: verifications of tokens whose key is held answer from the stale
    /// set at once, all of them, while the one background refresh is still unanswered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_hanging_jwks_does_not_hold_up_verifications_with_a_held_key() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let verifier = Arc::new(stale_at_once(&fake, |c| {
            // Long enough that waiting for the fetch could not go unnoticed.
            c.http_timeout = Duration::from_secs(600);
        }));
        let token = key.sign(&claims());
        verifier.verify(&token, "s-1").await.expect("first fetch");
        assert_eq!(fake.hits(), 1);

        fake.set_hanging(true);
        let mut verifications = tokio::task::JoinSet::new();
        for _ in 0..32 {
            let (verifier, token) = (Arc::clone(&verifier), token.clone());
            verifications.spawn(async move { verifier.verify(&token, "s-1").await });
        }
        // A guard against hanging the suite, not a speed assertion.
        let all = tokio::time::timeout(Duration::from_secs(60), verifications.join_all())
            .await
            .expect("verifications waited for the hanging JWKS");
        assert!(all.iter().all(Result::is_ok), "{all:?}");
        // The refresh was asked for (at most once), and it is still unanswered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fake.held() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fake.held(), 1, "one refresh in flight");
        assert_eq!(fake.hits(), 2, "a single flight for 32 verifications");
        fake.set_hanging(false);
    }

    /// The token service answers errors: after the failed refresh, verifications go on from the
    /// stale set without asking the JWKS again until the back-off has passed.
    #[tokio::test]
    async fn a_failed_refresh_is_not_retried_before_the_back_off() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let verifier = stale_at_once(&fake, |_| {});
        let token = key.sign(&claims());
        verifier.verify(&token, "s-1").await.expect("first fetch");
        fake.set_down(true);
        verifier.verify(&token, "s-1").await.expect("stale, served");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while fake.hits() < 2 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(fake.hits(), 2, "one refresh");
        // The back-off is at least a second: well past these.
        for _ in 0..20 {
            verifier.verify(&token, "s-1").await.expect("stale, served");
        }
        assert_eq!(fake.hits(), 2, "no fetch within the back-off");
    }

    /// Past `jwks_stale_for` the set held is not trusted: `JwksUnavailable`, saying how old it
    /// is and why the refresh failed.
    #[tokio::test]
    async fn past_its_stale_bound_the_key_set_is_not_trusted() {
        let key = TestKey::new("k1");
        let fake = FakeJwks::start(&[&key]).await;
        let verifier = stale_at_once(&fake, |c| c.jwks_stale_for = Duration::from_millis(200));
        let token = key.sign(&claims());
        verifier.verify(&token, "s-1").await.expect("first fetch");
        fake.set_down(true);
        tokio::time::sleep(Duration::from_millis(250)).await;
        let error = verifier.verify(&token, "s-1").await.expect_err("too old");
        let VerifyError::JwksUnavailable(message) = &error else {
            panic!("{error:?}");
        };
        assert!(message.contains("s old"), "{message}");
        assert!(message.contains("503"), "{message}");
    }

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
            matches!(&outage, VerifyError::JwksUnavailable(e) if e.contains("503")),
            "{outage:?}"
        );
        fake.set_down(false);
        // Fetched again once the back-off after the failure (a second at first) has passed.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let verified = loop {
            match verifier.verify(&token, "s-1").await {
                Err(VerifyError::JwksUnavailable(_)) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                other => break other.expect("valid"),
            }
        };
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
