//! `GET /.well-known/jwks.json`: the public keys that verify our session tokens (every `next`,
//! `active` and `retired` key), so the chat service verifies them without calling us; served
//! from memory with an `ETag`. `GET /.well-known/openid-configuration`: where to find them.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{
        header::{CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH},
        HeaderMap, HeaderValue, StatusCode,
    },
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{envelope::ErrorEnvelope, error::ApiError, AppState};
use crate::{store::StoreError, tokens::PublicJwk};

#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "jwks_get",
    tag = "Meta",
    summary = "Public keys of minted session tokens (RFC 7517 JWK Set)",
    description = "Every key that signs now, will sign soon (`next`: published before it signs, for longer than `max-age`), or signed tokens that may still be live (`retired`). Cache it as `Cache-Control` says; refetch on an unknown `kid`.",
    responses(
        (status = 200, description = "The JWK Set.", body = JwkSet,
            headers(
                ("Cache-Control" = String, description = "`public, max-age=<NEO_JWKS_MAX_AGE_SECONDS>`"),
                ("ETag" = String, description = "Changes whenever the published keys do."),
            )),
        (status = 304, description = "`If-None-Match` names the current `ETag`."),
        (status = 503, description = "`database_unavailable`: no signing key is loaded yet (the database has not answered since start). Sent with `Retry-After` and `Cache-Control: no-store`, never as an empty, cacheable key set.", body = ErrorEnvelope,
            headers(
                ("Retry-After" = u64, description = "Seconds to wait before retrying."),
                ("Cache-Control" = String, description = "`no-store`"),
            )),
    )
)]
pub async fn jwks(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let published = state.issuer.published_jwks();
    if published.is_empty() {
        // The keys live in the database, which has not answered since start. An empty set
        // must not be cached: verifiers would refuse every token for `max-age`.
        let mut response = ApiError::DatabaseUnavailable(StoreError::Unavailable).into_response();
        response
            .headers_mut()
            .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return response;
    }
    let cache_control = HeaderValue::from_str(&format!(
        "public, max-age={}",
        state.config.signing.jwks_max_age_seconds
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=300"));
    let etag = HeaderValue::from_str(&published.etag).ok();
    let not_modified = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == published.etag || tag.trim() == "*");
    let mut response = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            published.body,
        )
            .into_response()
    };
    response.headers_mut().insert(CACHE_CONTROL, cache_control);
    if let Some(etag) = etag {
        response.headers_mut().insert(ETAG, etag);
    }
    response
}

/// OpenID-style discovery metadata: enough for standard JWT libraries to find our keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct DiscoveryDocument {
    pub issuer: String,
    pub jwks_uri: String,
    /// The algorithms our keys may sign with.
    pub id_token_signing_alg_values_supported: Vec<&'static str>,
}

#[utoipa::path(
    get,
    path = "/.well-known/openid-configuration",
    operation_id = "openid_configuration_get",
    tag = "Meta",
    summary = "Discovery metadata: issuer and JWKS location",
    responses((status = 200, description = "The metadata.", body = DiscoveryDocument))
)]
pub async fn openid_configuration(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let issuer = state.config.token.issuer.clone();
    let document = DiscoveryDocument {
        jwks_uri: format!("{}/.well-known/jwks.json", issuer.trim_end_matches('/')),
        issuer,
        id_token_signing_alg_values_supported: vec!["ES256", "EdDSA", "RS256"],
    };
    (
        [(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        )],
        Json(document),
    )
}
