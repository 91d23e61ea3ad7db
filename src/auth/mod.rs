//! The bearer layer: reads `Authorization: Bearer <credential>` and resolves it into one
//! [`Principal`], or refuses the request with 401 before any handler runs.

pub mod api_key;
pub mod entra;
pub mod own_token;
pub mod principal;

use std::net::SocketAddr;

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header::AUTHORIZATION, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tracing::instrument;

pub use api_key::ApiKeyVerifier;
pub use entra::EntraVerifier;
pub use own_token::SessionTokenVerifier;
pub use principal::{MintingPrincipal, Principal};

use crate::{app::AppState, http::error::ApiError, ratelimit::Decision};

pub struct Authenticator {
    pub api_keys: ApiKeyVerifier,
    pub session_tokens: SessionTokenVerifier,
    /// `None` while Entra login is off (no `entra.audience`).
    pub entra: Option<EntraVerifier>,
}

impl Authenticator {
    /// Resolves the request's bearer credential. Skips all fields so no credential reaches a log.
    #[instrument(skip_all, name = "authenticate")]
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let credential = bearer_credential(headers)?;
        if credential.starts_with(api_key::PREFIX) {
            return self.api_keys.verify(credential).await;
        }
        if credential.bytes().filter(|b| *b == b'.').count() == 2 {
            let header = jsonwebtoken::decode_header(credential).map_err(|_| {
                ApiError::InvalidCredentials {
                    reason: "malformed JWT",
                }
            })?;
            if self.session_tokens.claims_to_be_ours(&header) {
                return self.session_tokens.verify(credential, &header);
            }
            // Any other JWT can only be a Microsoft Entra ID access token of a dashboard user.
            return match &self.entra {
                Some(entra) => entra.verify(credential, &header).await,
                None => Err(ApiError::InvalidCredentials {
                    reason: "JWT not issued by us and Entra login is off",
                }),
            };
        }
        Err(ApiError::InvalidCredentials {
            reason: "unrecognised credential",
        })
    }
}

/// The credential of the one `Authorization: Bearer` header (scheme case-insensitive).
fn bearer_credential(headers: &HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(ApiError::MissingCredentials);
    };
    if values.next().is_some() {
        return Err(ApiError::AmbiguousCredentials(
            "Send exactly one Authorization header",
        ));
    }
    let value = value.to_str().map_err(|_| ApiError::InvalidCredentials {
        reason: "non-ASCII Authorization header",
    })?;
    let (scheme, credential) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        // Another scheme (Basic, ...) is no bearer credential at all: a bare challenge (RFC 6750 §3).
        return Err(ApiError::MissingCredentials);
    }
    let credential = credential.trim();
    if credential.is_empty() || credential.contains(char::is_whitespace) {
        return Err(ApiError::InvalidCredentials {
            reason: "malformed bearer credential",
        });
    }
    Ok(credential)
}

/// The tower layer (via `from_fn_with_state`) that puts the [`Principal`] into the request.
/// A client over its failed-authentication budget is refused before its credential is looked
/// up; each failed authentication takes from that budget, a successful one does not.
pub async fn require_principal(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_ip = state.trusted_proxies.client_ip(peer, request.headers());
    if let Some(retry_after) = state.limits.auth_failures_exhausted(&client_ip).await {
        return ApiError::RateLimited { retry_after }.into_response();
    }
    match state.authenticator.authenticate(request.headers()).await {
        Ok(principal) => {
            let span = tracing::Span::current();
            span.record("principal_kind", principal.kind());
            span.record("principal_id", principal.id());
            span.record("tenant", principal.tenant_id());
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) if error.status() == StatusCode::UNAUTHORIZED => {
            match state.limits.record_auth_failure(&client_ip).await {
                Decision::Limited { retry_after } => {
                    ApiError::RateLimited { retry_after }.into_response()
                }
                Decision::Allowed { .. } => error.into_response(),
            }
        }
        Err(error) => error.into_response(),
    }
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
            Err(ApiError::MissingCredentials)
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Basic abc"])),
            Err(ApiError::MissingCredentials)
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer"])),
            Err(ApiError::InvalidCredentials { .. })
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer a b"])),
            Err(ApiError::InvalidCredentials { .. })
        ));
        assert!(matches!(
            bearer_credential(&headers(&["Bearer a", "Bearer b"])),
            Err(ApiError::AmbiguousCredentials(_))
        ));
    }
}
