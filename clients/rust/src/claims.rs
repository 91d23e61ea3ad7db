//! What a session token says (docs/api.md, "The token") and the one set of rules that decides
//! whether it is valid: the token service checks its own tokens with them, a verifier everyone's.

use std::time::Duration;

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::VerifyError;

/// The explicit `typ` of our session tokens (RFC 8725 §3.11): no other JWT carries it.
pub const SESSION_TOKEN_TYP: &str = "neo-session+jwt";

// With the `schema` feature: the `SessionClaims` schema of the server's OpenAPI document.
/// The claims of a minted session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct SessionClaims {
    /// The issuer (the service's configured `token.issuer`).
    pub iss: String,
    /// The audience (the chat service, `token.audience`).
    pub aud: String,
    /// The end user, else the session id.
    pub sub: String,
    /// The token's id (a UUID), as the mint answered it.
    #[cfg_attr(feature = "schema", schema(value_type = String, format = Uuid))]
    pub jti: Uuid,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not before (seconds since the epoch; equals `iat`).
    pub nbf: i64,
    /// Expires at (seconds since the epoch): `exp - iat` is the TTL.
    pub exp: i64,
    /// The one chat session the token is bound to.
    pub session_id: String,
    /// The tenant the token is for.
    pub client_id: String,
    /// The session's end company (a white-label tenant's customer), or null.
    pub end_company_id: Option<String>,
    /// The end user the caller named, or null.
    pub end_user: Option<String>,
    /// The end user's email the caller named, or null.
    pub end_user_email: Option<String>,
    /// The agents the token may talk to (empty: the session's own rules apply).
    pub allowed_agent_ids: Vec<i64>,
    /// Space-separated scopes (`chat:session`).
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
    issuer: String,
    audience: String,
    /// Whole seconds.
    leeway: i64,
}

impl TokenRules {
    /// `leeway`: clock skew tolerated on `exp` and `nbf` (whole seconds).
    pub fn new(issuer: &str, audience: &str, leeway: Duration) -> Self {
        let validations = ALGORITHMS.map(|algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
            // The signature, the required claims and their types are jsonwebtoken's to check;
            // time, issuer and audience are `validate_at`'s, against the time it is given.
            validation.validate_exp = false;
            validation.validate_nbf = false;
            validation.validate_aud = false;
            (algorithm, validation)
        });
        Self {
            validations,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            leeway: i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX),
        }
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
        let now = chrono::Utc::now().timestamp();
        self.validate_at(token, header, algorithm, key, session_id, now)
    }

    /// [`Self::validate`] as of `now` (seconds since the epoch) instead of the clock: `exp` and
    /// `nbf` are compared with it. For replaying a decision and for the shared test vectors
    /// (`tests/vectors/`); a service verifies with [`Self::validate`].
    ///
    /// The checks run in this order, the first failure deciding the error: the header's `typ`
    /// and `kid`, its `alg` against the key's, the signature, the required claims and their
    /// types, `exp`, `nbf`, `iss`, `aud`, the session.
    pub fn validate_at(
        &self,
        token: &str,
        header: &Header,
        algorithm: Algorithm,
        key: &DecodingKey,
        session_id: Option<&str>,
        now: i64,
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
                ErrorKind::InvalidSignature => VerifyError::BadSignature,
                ErrorKind::InvalidAlgorithm => VerifyError::AlgorithmMismatch,
                ErrorKind::MissingRequiredClaim(_) | ErrorKind::Json(_) => VerifyError::BadClaims,
                _ => VerifyError::Malformed,
            })?
            .claims;
        // As jsonwebtoken compares them: expired once `exp` is more than the leeway past.
        if claims.exp < now.saturating_sub(self.leeway) {
            return Err(VerifyError::Expired);
        }
        if claims.nbf > now.saturating_add(self.leeway) {
            return Err(VerifyError::NotYetValid);
        }
        if claims.iss != self.issuer {
            return Err(VerifyError::WrongIssuer);
        }
        if claims.aud != self.audience {
            return Err(VerifyError::WrongAudience);
        }
        match session_id {
            Some(session_id) if claims.session_id != session_id => Err(VerifyError::WrongSession),
            _ => Ok(claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{decode_header, Algorithm, DecodingKey, Header};
    use serde_json::{json, Value};

    use super::TokenRules;
    use crate::{testing::TestKey, VerifyError};

    const ISS: &str = "https://api.example";
    const AUD: &str = "https://api.example/chat";

    fn claims(overrides: Value) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": ISS, "aud": AUD, "sub": "pat", "jti": "0b9c2a4e-1f6d-4c8e-9a57-3f1e2d4c5b6a",
            "iat": now, "nbf": now, "exp": now + 600, "session_id": "s-1", "client_id": "acme",
            "end_company_id": null, "end_user": "pat", "end_user_email": null,
            "allowed_agent_ids": [7], "scope": "chat:session",
        });
        if let (Some(claims), Value::Object(overrides)) = (claims.as_object_mut(), overrides) {
            claims.extend(overrides);
        }
        claims
    }

    fn decoding(key: &TestKey) -> DecodingKey {
        let jwk = serde_json::from_value(key.jwk.clone()).expect("jwk");
        DecodingKey::from_jwk(&jwk).expect("decoding key")
    }

    /// What the rules say about `token`, checked with `key` as an EdDSA key.
    fn validate(token: &str, key: &TestKey, session: Option<&str>) -> Result<(), VerifyError> {
        let rules = TokenRules::new(ISS, AUD, Duration::from_secs(5));
        let header = decode_header(token).map_err(|_| VerifyError::Malformed)?;
        TokenRules::kid(&header)?;
        rules
            .validate(token, &header, Algorithm::EdDSA, &decoding(key), session)
            .map(|_| ())
    }

    #[test]
    fn a_good_token_passes_bound_to_its_session_or_to_none() {
        let key = TestKey::new("k1");
        let token = key.sign(&claims(json!({})));
        let rules = TokenRules::new(ISS, AUD, Duration::from_secs(5));
        let header = decode_header(&token).expect("header");
        let claims = rules
            .validate(
                &token,
                &header,
                Algorithm::EdDSA,
                &decoding(&key),
                Some("s-1"),
            )
            .expect("valid");
        assert_eq!(
            (claims.session_id.as_str(), claims.allowed_agent_ids),
            ("s-1", vec![7])
        );
        assert!(validate(&token, &key, None).is_ok());
    }

    #[test]
    fn each_broken_rule_is_refused_with_its_own_error() {
        let key = TestKey::new("k1");
        let other = TestKey::new("k1");
        let now = chrono::Utc::now().timestamp();
        let sign = |overrides: Value| key.sign(&claims(overrides));
        type Case<'a> = (&'a str, String, Option<&'a str>, fn(&VerifyError) -> bool);
        let cases: Vec<Case> = vec![
            ("another session", sign(json!({})), Some("s-2"), |e| {
                matches!(e, VerifyError::WrongSession)
            }),
            ("another audience", sign(json!({"aud": "x"})), None, |e| {
                matches!(e, VerifyError::WrongAudience)
            }),
            ("another issuer", sign(json!({"iss": "x"})), None, |e| {
                matches!(e, VerifyError::WrongIssuer)
            }),
            (
                "expired past the leeway",
                sign(json!({"exp": now - 10})),
                None,
                |e| matches!(e, VerifyError::Expired),
            ),
            (
                "not valid yet past the leeway",
                sign(json!({"nbf": now + 60})),
                None,
                |e| matches!(e, VerifyError::NotYetValid),
            ),
            ("without sub", sign(json!({"sub": null})), None, |e| {
                matches!(e, VerifyError::BadClaims)
            }),
            (
                "a jti that is not a UUID",
                sign(json!({"jti": "7"})),
                None,
                |e| matches!(e, VerifyError::BadClaims),
            ),
            (
                "signed by another key",
                other.sign(&claims(json!({}))),
                None,
                |e| matches!(e, VerifyError::BadSignature),
            ),
            ("not a JWT", "garbage".to_owned(), None, |e| {
                matches!(e, VerifyError::Malformed)
            }),
        ];
        for (case, token, session, expected) in cases {
            let error = validate(&token, &key, session).expect_err(case);
            assert!(expected(&error), "{case}: got {error:?}");
        }
        // Within the leeway (5 s), time claims still pass.
        assert!(validate(&sign(json!({"exp": now - 2, "nbf": now + 2})), &key, None).is_ok());
    }

    #[test]
    fn the_header_must_be_ours_and_use_the_keys_own_algorithm() {
        let key = TestKey::new("k1");
        let token = key.sign(&claims(json!({})));
        let rules = TokenRules::new(ISS, AUD, Duration::from_secs(5));
        let header = decode_header(&token).expect("header");

        let untyped = Header {
            typ: None,
            ..header.clone()
        };
        assert!(matches!(
            TokenRules::kid(&untyped),
            Err(VerifyError::WrongType)
        ));
        let foreign_typ = Header {
            typ: Some("JWT".to_owned()),
            ..header.clone()
        };
        assert!(matches!(
            TokenRules::kid(&foreign_typ),
            Err(VerifyError::WrongType)
        ));
        let no_kid = Header {
            kid: None,
            ..header.clone()
        };
        assert!(matches!(
            TokenRules::kid(&no_kid),
            Err(VerifyError::UnknownKey { kid: None })
        ));
        assert_eq!(TokenRules::kid(&header).ok(), Some("k1"));

        // The key is an ES256 key (say): the EdDSA header does not choose for it.
        for algorithm in [Algorithm::ES256, Algorithm::HS256] {
            assert!(matches!(
                rules.validate(&token, &header, algorithm, &decoding(&key), None),
                Err(VerifyError::AlgorithmMismatch)
            ));
        }
        // A key of an algorithm we never sign with is refused even when the header agrees.
        let hs = Header {
            alg: Algorithm::HS256,
            ..header.clone()
        };
        assert!(matches!(
            rules.validate(&token, &hs, Algorithm::HS256, &decoding(&key), None),
            Err(VerifyError::AlgorithmMismatch)
        ));
    }
}
