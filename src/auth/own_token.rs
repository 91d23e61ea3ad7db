//! Recognises and verifies the session tokens we minted. Their rules (our `iss`, `aud`, `typ`,
//! a published `kid` and that key's algorithm) are disjoint from any other JWT's, so a token of
//! another kind never passes as ours, and ours never passes as a caller that can mint. A token
//! signed by a retired key that is still published is still ours: an end user, never a failed
//! authentication.

use std::{sync::Arc, time::Duration};

use jsonwebtoken::Header;
use neo_sessions_verify::{TokenRules, VerifyError};

use super::{invalid, AuthError, Principal};
use crate::tokens::{SessionClaims, TokenIssuer, SESSION_TOKEN_TYP};

pub struct SessionTokenVerifier {
    issuer: Arc<TokenIssuer>,
    /// The verifier crate's rules (a verifier elsewhere checks exactly these), for our `iss` and
    /// `aud`.
    rules: TokenRules,
}

impl SessionTokenVerifier {
    /// `leeway_seconds`: clock skew tolerated on `exp` and `nbf`.
    pub fn new(issuer: Arc<TokenIssuer>, leeway_seconds: u64) -> Self {
        let rules = TokenRules::new(
            issuer.issuer(),
            issuer.audience(),
            Duration::from_secs(leeway_seconds),
        );
        Self { issuer, rules }
    }

    /// Whether a JWT header claims to be one of ours (by a published `kid`, or by `typ`).
    pub fn claims_to_be_ours(&self, header: &Header) -> bool {
        header.typ.as_deref() == Some(SESSION_TOKEN_TYP)
            || header.kid.as_deref().is_some_and(|kid| {
                self.issuer
                    .ring()
                    .find(kid, chrono::Utc::now().timestamp())
                    .is_some()
            })
    }

    /// The claims of a valid token of ours (signature, `typ`, published key, `iss`, `aud`,
    /// times), for introspection.
    pub fn claims(&self, token: &str) -> Result<SessionClaims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed JWT"))?;
        self.verified_claims(token, &header)
    }

    pub fn verify(&self, token: &str, header: &Header) -> Result<Principal, AuthError> {
        let claims = self.verified_claims(token, header)?;
        Ok(Principal::EndUser {
            tenant_id: claims.client_id,
            session_id: claims.session_id,
            jti: claims.jti,
        })
    }

    fn verified_claims(&self, token: &str, header: &Header) -> Result<SessionClaims, AuthError> {
        let kid = TokenRules::kid(header).map_err(|error| match error {
            VerifyError::WrongType => invalid("session token with a wrong typ"),
            _ => invalid("session token signed by an unknown key"),
        })?;
        let ring = self.issuer.ring();
        let Some(signer) = ring.find(kid, chrono::Utc::now().timestamp()) else {
            return Err(invalid("session token signed by an unknown key"));
        };
        // The key's own algorithm, whatever the header says (RFC 8725 §3.1).
        self.rules
            .validate(
                token,
                header,
                signer.key.jwt_algorithm(),
                signer.key.decoding_key(),
                None,
            )
            .map_err(|_| invalid("session token failed verification"))
    }
}
