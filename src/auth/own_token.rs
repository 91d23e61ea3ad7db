//! Recognises and verifies the session tokens we minted. Their rules (our `iss`, `aud`, `typ`,
//! `kid` and algorithm) are disjoint from any other JWT's, so a token of another kind never
//! passes as ours, and ours never passes as a caller that can mint.

use std::sync::Arc;

use jsonwebtoken::{decode, Header, Validation};

use super::{invalid, AuthError, Principal};
use crate::tokens::{SessionClaims, TokenIssuer, SESSION_TOKEN_TYP};

/// Clock skew tolerated on `exp`/`nbf` of our own tokens.
const LEEWAY_SECONDS: u64 = 30;

pub struct SessionTokenVerifier {
    issuer: Arc<TokenIssuer>,
    validation: Validation,
}

impl SessionTokenVerifier {
    pub fn new(issuer: Arc<TokenIssuer>) -> Self {
        let mut validation = Validation::new(issuer.key().jwt_algorithm());
        validation.set_issuer(&[issuer.issuer()]);
        validation.set_audience(&[issuer.audience()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        Self { issuer, validation }
    }

    /// Whether a JWT header claims to be one of ours (by `kid` or by `typ`).
    pub fn claims_to_be_ours(&self, header: &Header) -> bool {
        header.kid.as_deref() == Some(self.issuer.key().kid())
            || header.typ.as_deref() == Some(SESSION_TOKEN_TYP)
    }

    pub fn verify(&self, token: &str, header: &Header) -> Result<Principal, AuthError> {
        if header.typ.as_deref() != Some(SESSION_TOKEN_TYP) {
            return Err(invalid("session token with a wrong typ"));
        }
        if header.kid.as_deref() != Some(self.issuer.key().kid()) {
            return Err(invalid("session token signed by an unknown key"));
        }
        let data =
            decode::<SessionClaims>(token, self.issuer.key().decoding_key(), &self.validation)
                .map_err(|_| invalid("session token failed verification"))?;
        let claims = data.claims;
        Ok(Principal::EndUser {
            tenant_id: claims.client_id,
            session_id: claims.session_id,
            jti: claims.jti,
        })
    }
}
