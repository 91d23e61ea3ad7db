//! Session tokens: the claims of docs/api.md, "The token", the key ring (which key signs, which are published),
//! and the issuer that signs them.

pub mod keys;
pub mod seal;

use std::sync::{Arc, Mutex, RwLock};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use keys::{KeyError, PublicJwk, SigningKey};
/// The claims and `typ` are the verifier crate's: what we sign is what verifiers read.
pub use neo_sessions_verify::{SessionClaims, SESSION_TOKEN_TYP};
pub use seal::ClaimsMac;

use crate::config::TokenConfig;

/// What the mint rules decided; the issuer adds identity, times and the signature.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    pub session_id: String,
    pub client_id: String,
    pub end_company_id: Option<String>,
    pub end_user: Option<String>,
    pub end_user_email: Option<String>,
    pub allowed_agent_ids: Vec<i64>,
    pub ttl_seconds: u32,
}

#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub jti: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The key that signed it.
    pub kid: String,
    /// What was signed: kept (not the token) for an `Idempotency-Key` replay.
    pub claims: SessionClaims,
}

#[derive(Serialize)]
struct JwsHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// One key of the ring, with the time it starts signing.
pub struct RingKey {
    pub key: SigningKey,
    /// Unix seconds. Stored with the key, so replicas agree on the switch without computing it.
    pub activates_at: i64,
    /// When its successor took over (unix seconds); `None` while it is the newest key.
    pub retired_at: Option<i64>,
    /// `base64url(header)` of the tokens it signs: computed once.
    encoded_header: String,
}

/// What a key is at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Next,
    Active,
    /// Published until the last token it signed has expired.
    Retired,
    /// Past that: no longer published or accepted.
    Removed,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Removed => "removed",
        }
    }
}

/// The keys, oldest first, and how long a retired key stays published.
pub struct KeyRing {
    keys: Vec<RingKey>,
    /// Max TTL plus leeway: a retired key's last token is expired this long after it retired.
    retire_window: i64,
}

impl KeyRing {
    /// `keys` with their activation times and the times their successors took over (unix
    /// seconds; `None` while none has), in any order. The life cycle decides the retirements
    /// (a withdrawn key, left out of the ring, may still have ended its predecessor's turn).
    pub fn new(
        mut keys: Vec<(SigningKey, i64, Option<i64>)>,
        retire_window: i64,
    ) -> Result<Self, KeyError> {
        keys.sort_by_key(|(_, at, _)| *at);
        let keys = keys
            .into_iter()
            .map(|(key, activates_at, retired_at)| {
                let header = JwsHeader {
                    alg: key.algorithm().as_str(),
                    typ: SESSION_TOKEN_TYP,
                    kid: key.kid(),
                };
                let header_json = serde_json::to_vec(&header).map_err(|_| KeyError::Sign)?;
                Ok(RingKey {
                    encoded_header: URL_SAFE_NO_PAD.encode(header_json),
                    key,
                    activates_at,
                    retired_at,
                })
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        Ok(Self {
            keys,
            retire_window,
        })
    }

    /// A ring of one key that has always been active (a static key file).
    pub fn single(key: SigningKey) -> Result<Self, KeyError> {
        Self::new(vec![(key, 0, None)], i64::MAX)
    }

    pub fn state(&self, key: &RingKey, now: i64) -> KeyState {
        if key.activates_at > now {
            return KeyState::Next;
        }
        match key.retired_at {
            Some(retired) if retired <= now => {
                if now < retired.saturating_add(self.retire_window) {
                    KeyState::Retired
                } else {
                    KeyState::Removed
                }
            }
            _ => KeyState::Active,
        }
    }

    /// Every key with its state at `now`, oldest first.
    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// The key that signs at `now`.
    pub fn active(&self, now: i64) -> Option<&RingKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| self.state(k, now) == KeyState::Active)
    }

    /// The keys published at `now` (next, active, retired), oldest first.
    pub fn published(&self, now: i64) -> impl Iterator<Item = &RingKey> {
        self.keys
            .iter()
            .filter(move |k| self.state(k, now) != KeyState::Removed)
    }

    /// A published key by `kid`: what verifies our own tokens.
    pub fn find(&self, kid: &str, now: i64) -> Option<&RingKey> {
        self.published(now).find(|k| k.key.kid() == kid)
    }
}

/// The JWKS document as served: its bytes and an `ETag` over them.
#[derive(Clone)]
pub struct PublishedJwks {
    pub body: Bytes,
    pub etag: String,
    kids: Vec<String>,
}

impl PublishedJwks {
    /// No key is published: the keys have not been loaded yet.
    pub fn is_empty(&self) -> bool {
        self.kids.is_empty()
    }
}

pub struct TokenIssuer {
    ring: RwLock<Arc<KeyRing>>,
    issuer: String,
    audience: String,
    scope: String,
    /// The last JWKS document built, reused while the published keys are the same.
    jwks: Mutex<Option<PublishedJwks>>,
    /// Authenticates the claims an `Idempotency-Key` replay would sign again.
    claims_mac: ClaimsMac,
}

fn now_seconds() -> i64 {
    Utc::now().timestamp()
}

impl TokenIssuer {
    /// `claims_mac`: derived from the key-encryption key (or the static key file's key), so
    /// every replica sharing it accepts the claims another one stored.
    pub fn new(ring: KeyRing, config: &TokenConfig, claims_mac: ClaimsMac) -> Self {
        Self {
            ring: RwLock::new(Arc::new(ring)),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            scope: config.scope.clone(),
            jwks: Mutex::new(None),
            claims_mac,
        }
    }

    /// The MAC key of the claims kept for `Idempotency-Key` replays: only claims it verifies
    /// are ever signed again.
    pub fn claims_mac(&self) -> &ClaimsMac {
        &self.claims_mac
    }

    /// The keys as they are now (a snapshot: a reload replaces it, never changes it).
    pub fn ring(&self) -> Arc<KeyRing> {
        Arc::clone(&self.ring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Installs the keys just loaded from the database.
    pub fn replace_ring(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Whether the active key's signatures are slow enough (RS256) to belong off the async
    /// runtime.
    pub fn signs_slowly(&self) -> bool {
        self.ring()
            .active(now_seconds())
            .is_some_and(|k| k.key.algorithm() == crate::config::SigningAlgorithm::RS256)
    }

    /// The JWKS of the keys published now, rebuilt only when that set changed.
    pub fn published_jwks(&self) -> PublishedJwks {
        let ring = self.ring();
        let now = now_seconds();
        let kids: Vec<String> = ring
            .published(now)
            .map(|k| k.key.kid().to_owned())
            .collect();
        let mut cached = self.jwks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(jwks) = cached.as_ref().filter(|jwks| jwks.kids == kids) {
            return jwks.clone();
        }
        let keys: Vec<&PublicJwk> = ring.published(now).map(|k| k.key.public_jwk()).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "keys": keys })).unwrap_or_default();
        let etag = format!(
            "\"{}\"",
            URL_SAFE_NO_PAD.encode(&Sha256::digest(&body)[..16])
        );
        let jwks = PublishedJwks {
            body: Bytes::from(body),
            etag,
            kids,
        };
        *cached = Some(jwks.clone());
        jwks
    }

    /// Signs a token for `grant`, issued now, with the key active now.
    pub fn issue(&self, grant: TokenGrant) -> Result<MintedToken, KeyError> {
        let now = now_seconds();
        let ring = self.ring();
        let signer = ring.active(now).ok_or(KeyError::NoActiveKey)?;
        let exp = now + i64::from(grant.ttl_seconds);
        // UUIDv7 whose time is `iat` (the record's `issued_at`): the store finds the record's
        // day partition from the jti alone. 74 random bits keep jtis apart within a second.
        let jti = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            u64::try_from(now).unwrap_or_default(),
            0,
        ));
        let claims = SessionClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: grant
                .end_user
                .clone()
                .unwrap_or_else(|| grant.session_id.clone()),
            jti,
            iat: now,
            nbf: now,
            exp,
            session_id: grant.session_id,
            client_id: grant.client_id,
            end_company_id: grant.end_company_id,
            end_user: grant.end_user,
            end_user_email: grant.end_user_email,
            allowed_agent_ids: grant.allowed_agent_ids,
            scope: self.scope.clone(),
        };
        self.sign(signer, claims)
    }

    /// Signs `claims` again with the key active now: the same token (same `jti`, same times), a
    /// new signature. An `Idempotency-Key` replay answers with it, so no token is kept at rest.
    pub fn resign(&self, claims: SessionClaims) -> Result<MintedToken, KeyError> {
        let ring = self.ring();
        let signer = ring.active(now_seconds()).ok_or(KeyError::NoActiveKey)?;
        self.sign(signer, claims)
    }

    fn sign(&self, signer: &RingKey, claims: SessionClaims) -> Result<MintedToken, KeyError> {
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Sign)?;
        let mut token =
            String::with_capacity(signer.encoded_header.len() + payload.len() * 2 + 100);
        token.push_str(&signer.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = signer.key.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);

        let at = |secs: i64| Utc.timestamp_opt(secs, 0).single().ok_or(KeyError::Sign);
        Ok(MintedToken {
            token,
            jti: claims.jti,
            issued_at: at(claims.iat)?,
            expires_at: at(claims.exp)?,
            kid: signer.key.kid().to_owned(),
            claims,
        })
    }
}
