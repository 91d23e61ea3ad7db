//! The life cycle of minted tokens: read one record, revoke one token, and RFC 7662 introspection
//! for service accounts. Tenant-isolated: a caller sees its own tenant's tokens (those the
//! platform minted into its Neo Support session included, marked as such); the platform key also
//! sees the Neo Support tokens it minted into other tenants. Anything else is "not found".

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    Json,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    envelope::{ErrorEnvelope, RequestContext, Success, SuccessMeta, Timings},
    error::ApiError,
    extract::{ApiJson, MintingPrincipal},
    AppState,
};
use crate::{
    auth::Principal,
    store::MintRow,
    tokens::{SessionClaims, SESSION_TOKEN_TYP},
};

/// One minted token, as recorded (never the token itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionTokenRecord {
    #[schema(value_type = String)]
    pub jti: String,
    pub session_id: String,
    /// The tenant the token is for.
    pub client_id: String,
    pub end_user: Option<String>,
    pub end_company_id: Option<String>,
    /// `api_key` or `entra_user`.
    pub minted_by_kind: String,
    /// The key id, or the dashboard user's `tid:oid`.
    pub minted_by: String,
    /// True when the platform minted it into this tenant's Neo Support session.
    pub minted_by_platform: bool,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    /// Neither revoked nor expired.
    pub active: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionTokenRecordEnvelope {
    pub data: SessionTokenRecord,
    pub meta: SuccessMeta,
}

impl SessionTokenRecord {
    fn of(row: MintRow) -> Self {
        let minted_by_platform = row
            .minted_by_tenant
            .as_deref()
            .is_some_and(|tenant| tenant != row.tenant_id);
        let active = row.revoked_at.is_none() && row.expires_at > Utc::now();
        Self {
            jti: row.jti,
            session_id: row.session_id,
            client_id: row.tenant_id,
            end_user: row.end_user,
            end_company_id: row.end_company_id,
            minted_by_kind: row.minted_by_kind,
            minted_by: row.minted_by,
            minted_by_platform,
            issued_at: row.issued_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            revoked_by: row.revoked_by,
            active,
        }
    }
}

/// Whether `principal` may see (and act on) the token `row` records.
fn visible(principal: &Principal, row: &MintRow) -> bool {
    if row.tenant_id == principal.tenant_id() {
        return true;
    }
    // A platform key mints into other tenants only into their Neo Support session (rule 2):
    // those tokens are the ones it may act on.
    principal.is_platform() && row.minted_by_tenant.as_deref() == Some(principal.tenant_id())
}

async fn visible_record(
    state: &AppState,
    principal: &Principal,
    jti: &str,
    timings: &mut Timings,
) -> Result<MintRow, ApiError> {
    let jti = uuid::Uuid::try_parse(jti).map_err(|_| ApiError::TokenNotFound)?;
    let row = timings.time("db", state.store.find_mint(jti)).await?;
    row.filter(|row| visible(principal, row))
        .ok_or(ApiError::TokenNotFound)
}

#[utoipa::path(
    get,
    path = "/public-api/sessions/{jti}",
    operation_id = "public_api.session_token_get",
    tag = "Chat",
    summary = "One minted token's record",
    params(("jti" = String, Path, description = "The token's `jti`.")),
    responses(
        (status = 200, description = "The record.", body = SessionTokenRecordEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "An end-user token may not read records.", body = ErrorEnvelope),
        (status = 404, description = "No such token for this caller.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    MintingPrincipal(principal): MintingPrincipal,
    Path(jti): Path<String>,
) -> Result<Json<Success<SessionTokenRecord>>, ApiError> {
    let mut timings = Timings::default();
    let row = visible_record(&state, &principal, &jti, &mut timings).await?;
    Ok(Success::new(
        SessionTokenRecord::of(row),
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

#[utoipa::path(
    delete,
    path = "/public-api/sessions/{jti}",
    operation_id = "public_api.session_token_revoke",
    tag = "Chat",
    summary = "Revoke one token",
    description = "Idempotent: revoking a revoked token changes nothing and answers the record as it is. Verifiers learn of it through introspection.",
    params(("jti" = String, Path, description = "The token's `jti`.")),
    responses(
        (status = 200, description = "The record, revoked.", body = SessionTokenRecordEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "An end-user token may not revoke.", body = ErrorEnvelope),
        (status = 404, description = "No such token for this caller.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn revoke_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    MintingPrincipal(principal): MintingPrincipal,
    Path(jti): Path<String>,
) -> Result<Json<Success<SessionTokenRecord>>, ApiError> {
    let mut timings = Timings::default();
    let row = visible_record(&state, &principal, &jti, &mut timings).await?;
    let jti = uuid::Uuid::try_parse(&row.jti).map_err(|_| ApiError::TokenNotFound)?;
    let row = timings
        .time("db", state.store.revoke_mint(jti, &principal.id()))
        .await?
        .ok_or(ApiError::TokenNotFound)?;
    Ok(Success::new(
        SessionTokenRecord::of(row),
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

/// The token to introspect.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectionRequest {
    pub token: String,
}

/// RFC 7662: `active`, and the token's claims when it is active.
#[derive(Debug, Serialize, ToSchema)]
pub struct Introspection {
    pub active: bool,
    /// `neo-session+jwt` when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
    #[serde(flatten)]
    #[schema(value_type = Option<Object>)]
    pub claims: Option<SessionClaims>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntrospectionEnvelope {
    pub data: Introspection,
    pub meta: SuccessMeta,
}

#[utoipa::path(
    post,
    path = "/public-api/sessions/introspect",
    operation_id = "public_api.session_token_introspect",
    tag = "Chat",
    summary = "Is this token active? (RFC 7662, for service accounts)",
    description = "`active: true` with the claims for a token of ours that verifies, is recorded, is not revoked and belongs to the caller's tenant (or is a Neo Support token the platform key minted); `active: false` for anything else: revoked, expired, foreign, forged or malformed.",
    request_body(content = IntrospectionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The answer.", body = IntrospectionEnvelope),
        (status = 400, description = "The body is not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "Only service accounts (API keys) introspect.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`token` missing or not a string.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn introspect_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    MintingPrincipal(principal): MintingPrincipal,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<Success<Introspection>>, ApiError> {
    if !matches!(principal, Principal::ApiKey { .. }) {
        return Err(ApiError::Forbidden(
            "Introspection is for service accounts (API keys).",
        ));
    }
    let Some(token) = body.get("token").and_then(serde_json::Value::as_str) else {
        let mut fields = serde_json::Map::new();
        fields.insert("token".into(), "is required, a string".into());
        return Err(ApiError::Validation(fields));
    };
    let mut timings = Timings::default();
    let inactive = Introspection {
        active: false,
        token_type: None,
        claims: None,
    };
    let Ok(claims) = state.authenticator.session_tokens.claims(token) else {
        return Ok(Success::new(
            inactive,
            SuccessMeta::new(ctx, timings, Vec::new()),
        ));
    };
    let row = timings
        .time("db", state.store.find_mint(claims.jti))
        .await?;
    let active = row.is_some_and(|row| row.revoked_at.is_none() && visible(&principal, &row));
    let answer = if active {
        Introspection {
            active: true,
            token_type: Some(SESSION_TOKEN_TYP),
            claims: Some(claims),
        }
    } else {
        inactive
    };
    Ok(Success::new(
        answer,
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}
