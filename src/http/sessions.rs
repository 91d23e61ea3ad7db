//! `POST /public-api/sessions`: the route, its OpenAPI schema, and the mapping between HTTP and
//! the mint module (which applies the rules of docs/api.md, "The endpoint").

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, State},
    http::request::Parts,
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::{
    openapi::{schema::SchemaType, KnownFormat, ObjectBuilder, SchemaFormat, Type},
    ToSchema,
};
use uuid::Uuid;

use super::{
    envelope::{ErrorEnvelope, Success, SuccessMeta, Timings},
    error::ApiError,
    extract::{ApiJson, Authorized, Mint},
    request_context::log_jti,
    request_context::RequestContext,
    AppState,
};
use crate::mint::TtlBounds;

// The documentation of the body: `mint::MintRequest::from_json` reads it (field by field, so
// that every bad field is reported at once). The doc comment below is the schema's description
// in the OpenAPI document.
/// The request body. Unknown fields are ignored.
#[derive(ToSchema)]
pub struct MintSessionTokenRequest {
    /// The chat session the token is bound to (1 to 255 characters).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub session_id: String,
    /// Agents the end user may talk to; each must belong to the target tenant. Duplicates are removed.
    #[schema(default = json!([]), required = false, max_items = 256)]
    pub allowed_agent_ids: Vec<i64>,
    /// Target tenant to mint the token for. Honored only for a platform service account, and only
    /// when `session_id` is that tenant's Neo Support session (otherwise 403); any other caller
    /// passing it gets 403. Omit to mint for the caller's own tenant.
    #[schema(nullable, default = json!(null), min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub client_id: Option<String>,
    /// Narrows the token to one end company of the target tenant. Ignored (with a warning) when the
    /// session is itself scoped to an end company: the session's scope always wins.
    #[schema(nullable, default = json!(null), min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub end_company_id: Option<String>,
    /// The end user; becomes the token's `sub` (else the session id).
    #[schema(nullable, default = json!(null), min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$")]
    pub end_user: Option<String>,
    /// An email address: `local@domain.tld`, no whitespace or control characters.
    #[schema(nullable, default = json!(null), max_length = 254, pattern = "^[^@\\s\\u0000-\\u001F\\u007F-\\u009F]+@[^@\\s.\\u0000-\\u001F\\u007F-\\u009F][^@\\s\\u0000-\\u001F\\u007F-\\u009F]*\\.[^@\\s\\u0000-\\u001F\\u007F-\\u009F]*[^@\\s.\\u0000-\\u001F\\u007F-\\u009F]$")]
    pub end_user_email: Option<String>,
    /// Token lifetime in seconds (see `ttl_seconds_schema`).
    #[schema(schema_with = ttl_seconds_schema)]
    pub ttl_seconds: Option<u32>,
}

/// The schema of `ttl_seconds`, from the bounds the mint checks by default.
fn ttl_seconds_schema() -> ObjectBuilder {
    let TtlBounds { default, min, max } = TtlBounds::SHIPPED;
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some(format!(
            "Token lifetime in seconds; default {default}, allowed {min} to {max} (the bounds shown are the\n\
             defaults; `NEO_TOKEN_MIN_TTL`/`NEO_TOKEN_MAX_TTL` change them)."
        )))
        .default(Some(Value::Null))
        .minimum(Some(min))
        .maximum(Some(max))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MintSessionTokenResponse {
    /// The signed JWT.
    pub token: String,
    /// The token's `jti` claim.
    #[schema(value_type = String)]
    pub jti: Uuid,
    pub session_id: String,
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry, so clients with a skewed clock can renew in time.
    pub expires_in: u32,
}

/// The success envelope of the mint endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct MintSessionTokenEnvelope {
    pub data: MintSessionTokenResponse,
    pub meta: SuccessMeta,
}

#[utoipa::path(
    post,
    path = "/public-api/sessions",
    operation_id = "public_api.session_token_mint_post",
    tag = "Chat",
    summary = "Mint an end-user session token",
    description = "Mints a short-lived JWT bound to one chat `session_id`. The Teams relay (or any future end-user-facing channel) attaches it as `Authorization: Bearer <token>` on subsequent `/chat/sessions/<session_id>/*` calls. Only service-account or dashboard callers can mint; the resulting token cannot mint or revoke.\n\nA **platform** service account may pass `client_id` to mint for another tenant, but only when `session_id` is that tenant's Neo Support session (otherwise 403); any non-platform caller passing `client_id` is rejected with 403.\n\nWhen the session is scoped to an end-company (white-label sessions are, at create), the minted `end_company_id` claim is taken from the session itself — a caller-supplied value never widens or changes the session's scope.",
    params(
        ("Idempotency-Key" = Option<String>, Header, max_length = 255, min_length = 1, pattern = "^[\\x21-\\x7E]+$",
            description = "Makes a retry safe: a request repeating the key and body of one this credential sent in the last `NEO_TOKEN_MAX_TTL` seconds gets the token that request minted (same `jti` and expiry, signed again) instead of a new one; the same key with another body is a 409 `idempotency_key_reused`, and a retry while the first request is still minting waits up to 5 s, then gets a 409 `idempotency_key_in_use`."),
    ),
    request_body(content = MintSessionTokenRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "Success.", body = MintSessionTokenEnvelope,
            example = json!({
                "data": {
                    "token": "eyJhbGciOiJFUzI1NiIsInR5cCI6Im5lby1zZXNzaW9uK2p3dCIsImtpZCI6Ii4uLiJ9.eyIuLi4iOiIuLi4ifQ.c2lnbmF0dXJl",
                    "jti": "0f8c6a2e-7d1b-4c3a-9e5f-2b4d6c8a1e3f",
                    "session_id": "s-acme-1",
                    "expires_at": "2026-11-29T12:15:00Z",
                    "expires_in": 900
                },
                "meta": {
                    "request_id": "5b0a1f7e-8d2c-4c61-9a53-2f4d7e9b1c30",
                    "timings_ms": {"db": 1.2, "sign": 0.1, "total": 1.9}
                }
            })),
        (status = 400, description = "Bad request — malformed input.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated — missing or invalid credentials.", body = ErrorEnvelope),
        (status = 403, description = "Forbidden — authenticated but not allowed: `insufficient_scope` (the credential lacks `sessions:mint`; an end-user token never has it), `forbidden` (`client_id` from a caller that is not the platform, or a platform mint into a session that is not Neo Support).", body = ErrorEnvelope),
        (status = 404, description = "Not found.", body = ErrorEnvelope),
        (status = 409, description = "Conflict — the resource is in a state that blocks this operation.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "Request validation failed.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 500, description = "Internal server error; also an `Idempotency-Key` replay whose stored claims fail their integrity check (changed outside the service): no token is signed.", body = ErrorEnvelope),
        (status = 503, description = "Unavailable: the database cannot serve right now (`database_unavailable`), or Microsoft Entra ID signing keys cannot be had (`entra_unavailable`, Entra callers only). Retry after `Retry-After` seconds.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn mint_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<Mint>,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Success<MintSessionTokenResponse>>, ApiError> {
    let minted = state
        .minter
        .mint(&principal, body, idempotency_key.as_deref())
        .await;
    let minted = match minted {
        Ok(minted) => minted,
        Err(refusal) => {
            if let Some(jti) = refusal.jti() {
                log_jti(jti);
            }
            return Err(refusal.into());
        }
    };
    log_jti(minted.jti);
    let mut timings = Timings::default();
    timings.add_elapsed("db", minted.timings.db);
    timings.add_elapsed("sign", minted.timings.sign);
    let data = MintSessionTokenResponse {
        token: minted.token,
        jti: minted.jti,
        session_id: minted.session_id,
        expires_at: minted.expires_at,
        expires_in: minted.expires_in,
    };
    Ok(Success::new(
        data,
        SuccessMeta::new(ctx, timings, minted.warnings),
    ))
}

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header, if sent: 1 to 255 visible ASCII characters. Read in place (the
/// `HeaderMap` extractor would copy every header on every mint).
pub struct IdempotencyKey(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all("idempotency-key").iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        let bad = |why: &str| {
            let mut fields = Map::new();
            fields.insert(
                "Idempotency-Key".into(),
                Value::from(vec![Value::from(why)]),
            );
            ApiError::Validation(fields)
        };
        if values.next().is_some() {
            return Err(bad("send the header once"));
        }
        let key = value
            .to_str()
            .ok()
            .filter(|k| {
                (1..=MAX_IDEMPOTENCY_KEY_LEN).contains(&k.len())
                    && k.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| bad("must be 1 to 255 visible ASCII characters"))?;
        Ok(Self(Some(key.to_owned())))
    }
}
