//! `GET /.well-known/jwks.json`: the public keys that verify our session tokens, so the chat
//! service verifies them without calling us.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header::CACHE_CONTROL, HeaderValue},
    response::IntoResponse,
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::tokens::PublicJwk;

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
    responses((status = 200, description = "The JWK Set.", body = JwkSet))
)]
pub async fn jwks(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let set = JwkSet {
        keys: vec![state.issuer.key().public_jwk().clone()],
    };
    (
        [(
            CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=300"),
        )],
        Json(set),
    )
}
