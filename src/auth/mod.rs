//! The bearer layer: reads `Authorization: Bearer <credential>` (and, where a route accepts
//! it, an API key as HTTP Basic client credentials) and resolves it into one [`Principal`], or
//! refuses the request with 401 before any handler runs.

pub mod api_key;
pub mod entra;
pub mod lookup_lanes;
pub mod own_token;
pub mod principal;

use std::time::Duration;

use axum::http::{header::AUTHORIZATION, HeaderMap};
use tracing::instrument;

pub use api_key::ApiKeyVerifier;
pub use entra::EntraVerifier;
pub use lookup_lanes::{LookupLane, LookupLanes, PACED_LOOKUP_SPACING};
pub use own_token::SessionTokenVerifier;
pub use principal::Principal;

use crate::store::StoreError;

/// Why a credential did not resolve into a [`Principal`]. The HTTP layer maps each reason to a
/// status, a code and a challenge (`http/error.rs`); the failed-authentication budget is charged
/// for the reasons [`AuthError::is_failed_authentication`] names.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No bearer credential at all (no header, or another scheme).
    #[error("missing bearer credentials")]
    Missing,
    /// `reason` is for logs only (it may name a key id and its tenant); the client sees a
    /// generic message.
    #[error("invalid bearer credentials: {reason}")]
    Invalid {
        reason: std::borrow::Cow<'static, str>,
    },
    #[error("ambiguous credentials: {0}")]
    Ambiguous(&'static str),
    /// A valid credential whose holder may not do this (an end user, an app-only or
    /// out-of-scope Entra token).
    #[error("the credential may not mint tokens")]
    InsufficientScope,
    /// A valid Entra token whose directory (`tid`) is no tenant's.
    #[error("the Microsoft Entra directory is not registered with any tenant")]
    UnknownDirectory,
    /// Entra's signing keys cannot be had right now: we cannot tell (retry later).
    #[error("Entra ID signing keys unavailable")]
    EntraUnavailable { retry_after: Duration },
    #[error("store failure during authentication: {0}")]
    Store(#[from] StoreError),
}

/// How authentication looks a credential up (the database, Entra's JWKS) when the cache does
/// not have it: at once, or, for a client address over its failed-authentication budget, in
/// that address's paced lane ([`lookup_lanes`]). Never refused: a credential that verifies is
/// served whatever other callers at its address did.
#[derive(Clone, Copy)]
pub enum Lookups<'a> {
    Allowed,
    Paced(&'a LookupLane<'a>),
}

impl Lookups<'_> {
    /// Runs one lookup as this says.
    pub async fn run<F: std::future::Future>(self, lookup: F) -> F::Output {
        match self {
            Self::Allowed => lookup.await,
            Self::Paced(lane) => lane.run(lookup).await,
        }
    }
}

impl AuthError {
    /// The refusals that take from the client address's failed-authentication budget: a
    /// credential that is absent, unparsable or wrong, never a valid one refused for scope or
    /// an outage of ours.
    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Invalid { .. } => "invalid",
            Self::Ambiguous(_) => "ambiguous",
            Self::InsufficientScope => "insufficient_scope",
            Self::UnknownDirectory => "unknown_directory",
            Self::EntraUnavailable { .. } => "entra_unavailable",
            Self::Store(_) => "store",
        }
    }

    pub fn is_failed_authentication(&self) -> bool {
        matches!(
            self,
            Self::Missing | Self::Invalid { .. } | Self::Ambiguous(_)
        )
    }
}

fn invalid(reason: impl Into<std::borrow::Cow<'static, str>>) -> AuthError {
    AuthError::Invalid {
        reason: reason.into(),
    }
}

pub struct Authenticator {
    pub api_keys: ApiKeyVerifier,
    pub session_tokens: SessionTokenVerifier,
    /// `None` while Entra login is off (no `entra.audience`).
    pub entra: Option<EntraVerifier>,
    /// The paced lookups of client addresses over their failed-authentication budget.
    pub lanes: LookupLanes,
}

impl Authenticator {
    /// Resolves the request's bearer credential. Skips all fields so no credential reaches a log
    /// or a trace; the span is for export only (`telemetry::SPAN_TARGET`).
    #[instrument(skip_all, name = "authenticate", target = "neo_sessions_otel")]
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        lookups: Lookups<'_>,
    ) -> Result<Principal, AuthError> {
        let credential = bearer_credential(headers)?;
        if credential.starts_with(api_key::PREFIX) {
            return self.api_keys.verify(credential, lookups).await;
        }
        if credential.bytes().filter(|b| *b == b'.').count() == 2 {
            let header =
                jsonwebtoken::decode_header(credential).map_err(|_| invalid("malformed JWT"))?;
            if self.session_tokens.claims_to_be_ours(&header) {
                return self.session_tokens.verify(credential, &header);
            }
            // Any other JWT can only be a Microsoft Entra ID access token of a dashboard user.
            return match &self.entra {
                Some(entra) => entra.verify(credential, &header, lookups).await,
                None => Err(invalid("JWT not issued by us and Entra login is off")),
            };
        }
        Err(invalid("unrecognised credential"))
    }

    /// Resolves the credential of a caller that OAuth 2.0 calls a client: the bearer credential
    /// as [`Self::authenticate`] does, or an API key as HTTP Basic client credentials (RFC 6749
    /// §2.3.1, `client_secret_basic`): the user name is the key's id, the password the key.
    /// Skips all fields so no credential reaches a log.
    #[instrument(skip_all, name = "authenticate")]
    pub async fn authenticate_client(
        &self,
        headers: &HeaderMap,
        lookups: Lookups<'_>,
    ) -> Result<Principal, AuthError> {
        match basic_credentials(headers)? {
            Some((client_id, key)) => self.api_keys.verify_client(&client_id, &key, lookups).await,
            None => self.authenticate(headers, lookups).await,
        }
    }
}

/// How a request presents its credential, by the scheme of its one `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Bearer,
    Basic,
    /// No header, several, or another scheme.
    Other,
}

impl Scheme {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Self::Other;
        };
        let value = String::from_utf8_lossy(value.as_bytes());
        let scheme = value.trim().split(' ').next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else if scheme.eq_ignore_ascii_case("basic") {
            Self::Basic
        } else {
            Self::Other
        }
    }
}

/// The client id and secret of an `Authorization: Basic` header (scheme case-insensitive),
/// each form-urlencoded before the pair was base64-encoded (RFC 6749 §2.3.1); `None` for any
/// other scheme (or none), which the bearer reader then judges.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, AuthError> {
    if Scheme::of(headers) != Scheme::Basic {
        return Ok(None);
    }
    let malformed = || invalid("malformed Basic credentials");
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .ok_or_else(malformed)?;
    let encoded = value
        .trim()
        .split_once(' ')
        .map(|(_, credentials)| credentials.trim())
        .filter(|credentials| !credentials.is_empty())
        .ok_or_else(malformed)?;
    use base64::{engine::general_purpose::STANDARD, Engine};
    let decoded = STANDARD.decode(encoded).map_err(|_| malformed())?;
    let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (client_id, secret) = decoded.split_once(':').ok_or_else(malformed)?;
    let form_decoded = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " "))
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| malformed())
    };
    Ok(Some((form_decoded(client_id)?, form_decoded(secret)?)))
}

/// The credential of the one `Authorization: Bearer` header (scheme case-insensitive).
fn bearer_credential(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Ambiguous(
            "Send exactly one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| invalid("non-ASCII Authorization header"))?;
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) is no bearer credential at all: a bare challenge (RFC 6750 §3).
        return Err(AuthError::Missing);
    }
    let credential = credential.trim();
    if credential.is_empty() || credential.contains(char::is_whitespace) {
        return Err(invalid("malformed bearer credential"));
    }
    Ok(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_static(v));
        }
        map
    }

    /// `auth_failures_total` starts every reason at zero: the list it starts must be this one.
    #[test]
    fn every_failure_reason_is_a_metric_label_from_the_start() {
        let reasons: Vec<&str> = [
            AuthError::Missing,
            invalid("x"),
            AuthError::Ambiguous("x"),
            AuthError::InsufficientScope,
            AuthError::UnknownDirectory,
            AuthError::EntraUnavailable {
                retry_after: Duration::ZERO,
            },
            AuthError::Store(StoreError::Unavailable),
        ]
        .iter()
        .map(AuthError::reason)
        .collect();
        assert_eq!(reasons, crate::metrics::AUTH_FAILURE_REASONS);
    }

    #[test]
    fn basic_client_credentials_are_form_decoded() {
        use base64::{engine::general_purpose::STANDARD, Engine};
        let basic = |pair: &str| {
            let mut map = HeaderMap::new();
            let value = format!("basic {}", STANDARD.encode(pair));
            map.insert(AUTHORIZATION, HeaderValue::from_str(&value).unwrap());
            map
        };
        assert_eq!(
            basic_credentials(&basic("k-acme:neo_sk_test_x")).unwrap(),
            Some(("k-acme".to_owned(), "neo_sk_test_x".to_owned()))
        );
        // `%3A` is a colon inside the id; `+` a space.
        assert_eq!(
            basic_credentials(&basic("a%3Ab+c:s:e")).unwrap(),
            Some(("a:b c".to_owned(), "s:e".to_owned()))
        );
        assert_eq!(basic_credentials(&headers(&["Bearer abc"])).unwrap(), None);
        assert_eq!(basic_credentials(&headers(&[])).unwrap(), None);
        for bad in [
            headers(&["Basic"]),
            headers(&["Basic !!!"]),
            basic("no colon"),
            basic("%FF:x"),
        ] {
            assert!(matches!(
                basic_credentials(&bad),
                Err(AuthError::Invalid { .. })
            ));
        }
        assert_eq!(Scheme::of(&basic("a:b")), Scheme::Basic);
        assert_eq!(
            Scheme::of(&headers(&["Bearer a", "Basic b"])),
            Scheme::Other
        );
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_credential(&headers(&["Bearer abc"])).unwrap(), "abc");
        assert_eq!(bearer_credential(&headers(&["bearer abc"])).unwrap(), "abc");
        assert_eq!(
            bearer_credential(&headers(&["BEARER  abc "])).unwrap(),
            "abc"
        );
        assert!(matches!(
            bearer_credential(&headers(&[])),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Basic abc"])),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer"])),
            Err(AuthError::Invalid { .. })
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer a b"])),
            Err(AuthError::Invalid { .. })
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthError::Ambiguous(_))
        ));
    }

    /// The verifiers on their own: a real SQLite store seeded with the example fixture, a real
    /// signing key, no router, no HTTP types but the header map.
    mod verifiers {
        use std::{sync::Arc, time::Duration};

        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

        use super::super::*;
        use crate::{
            config::{SigningConfig, TokenConfig},
            tokens::{KeyRing, SigningKey, TokenGrant, TokenIssuer},
        };

        const ACME_KEY: &str = "neo_sk_test_4qZt8WcJr2LmX9vB7nKp3sYd";
        const REVOKED_KEY: &str = "neo_sk_test_Hh2Jk9Lm4Nn7Pp1Qq5Rr8Ss3";

        struct Fixtures {
            authenticator: Authenticator,
            issuer: Arc<TokenIssuer>,
            _dir: tempfile::TempDir,
        }

        async fn fixtures() -> Fixtures {
            let (dir, _url, store) = crate::store::seeded_sqlite_for_tests().await;
            let key = SigningKey::load_or_generate(&SigningConfig::default(), dir.path()).unwrap();
            let issuer = Arc::new(TokenIssuer::new(
                KeyRing::single(key).unwrap(),
                &TokenConfig::default(),
                crate::tokens::ClaimsMac::derive(b"test"),
            ));
            let authenticator = Authenticator {
                api_keys: ApiKeyVerifier::new(
                    Arc::clone(&store),
                    "test".to_owned(),
                    Duration::from_secs(60),
                    Duration::ZERO,
                    crate::freshness::Freshness::down(),
                ),
                session_tokens: SessionTokenVerifier::new(Arc::clone(&issuer), 30),
                entra: None,
                lanes: LookupLanes::default(),
            };
            Fixtures {
                authenticator,
                issuer,
                _dir: dir,
            }
        }

        async fn authenticate(f: &Fixtures, credential: &str) -> Result<Principal, AuthError> {
            let mut map = HeaderMap::new();
            map.insert(
                AUTHORIZATION,
                format!("Bearer {credential}").parse().unwrap(),
            );
            f.authenticator.authenticate(&map, Lookups::Allowed).await
        }

        fn grant() -> TokenGrant {
            TokenGrant {
                session_id: "s-acme-1".into(),
                client_id: "acme".into(),
                end_company_id: None,
                end_user: Some("pat".into()),
                end_user_email: None,
                allowed_agent_ids: vec![],
                ttl_seconds: 900,
            }
        }

        fn is_invalid(result: &Result<Principal, AuthError>) -> bool {
            matches!(result, Err(AuthError::Invalid { .. }))
        }

        #[tokio::test]
        async fn api_keys_resolve_to_their_tenant_and_bad_ones_are_invalid() {
            let f = fixtures().await;
            assert_eq!(
                authenticate(&f, ACME_KEY).await.unwrap(),
                Principal::ApiKey {
                    tenant_id: "acme".into(),
                    key_id: "k-acme".into(),
                    platform: false,
                    scopes: principal::Scopes::LEGACY,
                }
            );
            assert!(is_invalid(&authenticate(&f, REVOKED_KEY).await));
            // Same shape, another env; and an unknown key of the right env.
            let live = ACME_KEY.replace("_test_", "_live_");
            assert!(is_invalid(&authenticate(&f, &live).await));
            assert!(is_invalid(
                &authenticate(&f, "neo_sk_test_AAAAAAAAAAAAAAAAAAAAAAAA").await
            ));
            assert!(is_invalid(&authenticate(&f, "not-a-credential").await));
        }

        #[tokio::test]
        async fn our_tokens_are_end_users_and_tampered_ones_are_invalid() {
            let f = fixtures().await;
            let minted = f.issuer.issue(grant()).unwrap();
            let principal = authenticate(&f, &minted.token).await.unwrap();
            assert_eq!(
                principal,
                Principal::EndUser {
                    tenant_id: "acme".into(),
                    session_id: "s-acme-1".into(),
                    jti: minted.jti,
                }
            );
            assert_eq!(principal.scopes(), principal::Scopes::NONE);

            // Claims swapped for another tenant's, signature kept: forged.
            let parts: Vec<&str> = minted.token.split('.').collect();
            let mut claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            claims["client_id"] = "globex".into();
            let forged = format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap()),
                parts[2]
            );
            assert!(is_invalid(&authenticate(&f, &forged).await));

            // `alg: none` with our typ and kid, no signature.
            let header = serde_json::json!({
                "alg": "none",
                "typ": crate::tokens::SESSION_TOKEN_TYP,
                "kid": f.issuer.ring().keys()[0].key.kid(),
            });
            let unsigned = format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()),
                parts[1]
            );
            assert!(is_invalid(&authenticate(&f, &unsigned).await));

            // Expired beyond the leeway.
            let mut old = grant();
            old.ttl_seconds = 60;
            let expired = f.issuer.issue(old).unwrap();
            let parts: Vec<&str> = expired.token.split('.').collect();
            let mut claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            claims["exp"] = (claims["iat"].as_i64().unwrap() - 3600).into();
            let resigned_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
            let signing_input = format!("{}.{}", parts[0], resigned_payload);
            let signature = f.issuer.ring().keys()[0]
                .key
                .sign(signing_input.as_bytes())
                .unwrap();
            let expired = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
            assert!(is_invalid(&authenticate(&f, &expired).await));
        }

        #[tokio::test]
        async fn a_foreign_jwt_is_invalid_while_entra_login_is_off() {
            let f = fixtures().await;
            let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"entra-1"}"#);
            let claims = URL_SAFE_NO_PAD.encode(br#"{"tid":"x"}"#);
            let token = format!("{header}.{claims}.c2ln");
            let result = authenticate(&f, &token).await;
            assert!(is_invalid(&result), "{result:?}");
            assert!(result.unwrap_err().is_failed_authentication());
        }
    }
}
