//! What a session token says (SPEC §3) and the one set of rules that decides whether it is valid:
//! the token service checks its own tokens with them, a verifier everyone's.

use std::time::Duration;

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::VerifyError;

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

/// The algorithms our keys sign with; a key of any other is never used.
const ALGORITHMS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256];

/// The rules a session token of one issuer and audience must pass, built once: `typ`, the key's
/// own algorithm, `iss` and `aud` exactly, `exp` and `nbf` with a leeway, and (when asked) the
/// session it is bound to.
pub struct TokenRules {
    /// One validation per algorithm a key of ours may have; the key decides which applies.
    validations: [(Algorithm, Validation); 3],
}

impl TokenRules {
    /// `leeway`: clock skew tolerated on `exp` and `nbf` (whole seconds).
    pub fn new(issuer: &str, audience: &str, leeway: Duration) -> Self {
        let validations = ALGORITHMS.map(|algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.set_issuer(&[issuer]);
            validation.set_audience(&[audience]);
            validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
            validation.validate_nbf = true;
            validation.leeway = leeway.as_secs();
            (algorithm, validation)
        });
        Self { validations }
    }

    /// The `kid` of a header that says it is a session token; its key is the caller's to find.
    pub fn kid(header: &Header) -> Result<&str, VerifyError> {
        if header.typ.as_deref() != Some(SESSION_TOKEN_TYP) {
            return Err(VerifyError::WrongType);
        }
        header
            .kid
            .as_deref()
            .ok_or(VerifyError::UnknownKey { kid: None })
    }

    /// The token's claims if it passes every rule with `key`, the key its `kid` names, whose own
    /// `algorithm` it must use (never the one the header chooses); and, with `session_id`, if it
    /// is bound to that session.
    pub fn validate(
        &self,
        token: &str,
        header: &Header,
        algorithm: Algorithm,
        key: &DecodingKey,
        session_id: Option<&str>,
    ) -> Result<SessionClaims, VerifyError> {
        Self::kid(header)?;
        if header.alg != algorithm {
            return Err(VerifyError::AlgorithmMismatch);
        }
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == algorithm) else {
            return Err(VerifyError::AlgorithmMismatch);
        };
        let claims = decode::<SessionClaims>(token, key, validation)
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
        match session_id {
            Some(session_id) if claims.session_id != session_id => Err(VerifyError::WrongSession),
            _ => Ok(claims),
        }
    }
}
