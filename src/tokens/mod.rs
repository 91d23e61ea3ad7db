//! Session tokens: the claims of SPEC §3, and the issuer that signs them.

pub mod keys;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use keys::{KeyError, PublicJwk, SigningKey};

use crate::config::TokenConfig;

/// The explicit `typ` of our session tokens (RFC 8725 §3.11): no other JWT carries it.
pub const SESSION_TOKEN_TYP: &str = "neo-session+jwt";

/// The claims of a minted session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub jti: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub session_id: String,
    pub client_id: String,
    pub end_company_id: Option<String>,
    pub end_user: Option<String>,
    pub end_user_email: Option<String>,
    pub allowed_agent_ids: Vec<i64>,
    pub scope: String,
}

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
}

#[derive(Serialize)]
struct JwsHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

pub struct TokenIssuer {
    key: SigningKey,
    issuer: String,
    audience: String,
    scope: String,
    /// `base64url(header)`, the same for every token: computed once.
    encoded_header: String,
}

impl TokenIssuer {
    pub fn new(key: SigningKey, config: &TokenConfig) -> Result<Self, KeyError> {
        let header = JwsHeader {
            alg: key.algorithm().as_str(),
            typ: SESSION_TOKEN_TYP,
            kid: key.kid(),
        };
        let header_json = serde_json::to_vec(&header).map_err(|_| KeyError::Sign)?;
        Ok(Self {
            encoded_header: URL_SAFE_NO_PAD.encode(header_json),
            key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            scope: config.scope.clone(),
        })
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs a token for `grant`, issued now.
    pub fn issue(&self, grant: TokenGrant) -> Result<MintedToken, KeyError> {
        let now = Utc::now().timestamp();
        let exp = now + i64::from(grant.ttl_seconds);
        let jti = Uuid::new_v4();
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
        let payload = serde_json::to_vec(&claims).map_err(|_| KeyError::Sign)?;
        let mut token = String::with_capacity(self.encoded_header.len() + payload.len() * 2 + 100);
        token.push_str(&self.encoded_header);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = self.key.sign(token.as_bytes())?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);

        let at = |secs: i64| Utc.timestamp_opt(secs, 0).single().ok_or(KeyError::Sign);
        Ok(MintedToken {
            token,
            jti,
            issued_at: at(now)?,
            expires_at: at(exp)?,
        })
    }
}
