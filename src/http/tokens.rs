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
use neo_sessions_verify::{RevocationFeed, RevokedToken};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    envelope::{ErrorEnvelope, PageParams, Success, SuccessMeta, Timings},
    error::ApiError,
    extract::{ApiJson, Authorized, ManageTokens, ReadRevocations},
    request_context::RequestContext,
    AppState,
};
use crate::{
    auth::Principal,
    store::{FeedPosition, MintRow},
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
    jti: uuid::Uuid,
    timings: &mut Timings,
) -> Result<MintRow, ApiError> {
    let row = timings.time("db", state.store.find_mint(jti)).await?;
    row.filter(|row| visible(principal, row))
        .ok_or(ApiError::TokenNotFound)
}

#[utoipa::path(
    get,
    path = "/public-api/sessions/{jti}",
    operation_id = "public_api.session_token_get",
    tag = "Tokens",
    summary = "One minted token's record",
    params(("jti" = String, Path, description = "The token's `jti`.")),
    responses(
        (status = 200, description = "The record.", body = SessionTokenRecordEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `tokens:manage` (an end-user token never has it).", body = ErrorEnvelope),
        (status = 404, description = "No such token for this caller.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ManageTokens>,
    Path(jti): Path<String>,
) -> Result<Json<Success<SessionTokenRecord>>, ApiError> {
    let mut timings = Timings::default();
    let jti = uuid::Uuid::try_parse(&jti).map_err(|_| ApiError::TokenNotFound)?;
    let row = visible_record(&state, &principal, jti, &mut timings).await?;
    Ok(Success::new(
        SessionTokenRecord::of(row),
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

#[utoipa::path(
    delete,
    path = "/public-api/sessions/{jti}",
    operation_id = "public_api.session_token_revoke",
    tag = "Tokens",
    summary = "Revoke one token",
    description = "Idempotent: revoking a revoked token changes nothing and answers the record as it is. Verifiers learn of it through introspection.",
    params(("jti" = String, Path, description = "The token's `jti`.")),
    responses(
        (status = 200, description = "The record, revoked.", body = SessionTokenRecordEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `tokens:manage` (an end-user token never has it).", body = ErrorEnvelope),
        (status = 404, description = "No such token for this caller.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn revoke_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ManageTokens>,
    Path(jti): Path<String>,
) -> Result<Json<Success<SessionTokenRecord>>, ApiError> {
    let mut timings = Timings::default();
    let jti = uuid::Uuid::try_parse(&jti).map_err(|_| ApiError::TokenNotFound)?;
    visible_record(&state, &principal, jti, &mut timings).await?;
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

/// RFC 7662's answer: an active token's claims, or `active: false` alone.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Introspection {
    Active(Box<ActiveToken>),
    Inactive(InactiveToken),
}

/// An active token: `active: true`, its type, and every claim it carries.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActiveToken {
    #[schema(schema_with = always_true)]
    pub active: bool,
    /// `neo-session+jwt` (the JWT's `typ`) in the envelope; `Bearer` (an OAuth access token
    /// type, how the chat service receives it) at `/oauth2/introspect`.
    pub token_type: &'static str,
    #[serde(flatten)]
    pub claims: SessionClaims,
}

/// Anything else: revoked, expired, another tenant's, forged or malformed. Nothing more is said.
#[derive(Debug, Serialize, ToSchema)]
pub struct InactiveToken {
    #[schema(schema_with = always_false)]
    pub active: bool,
}

fn always_true() -> utoipa::openapi::Object {
    boolean_constant(true)
}

fn always_false() -> utoipa::openapi::Object {
    boolean_constant(false)
}

fn boolean_constant(value: bool) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([value]))
        .build()
}

impl Introspection {
    pub fn of(claims: Option<SessionClaims>, token_type: &'static str) -> Self {
        match claims {
            Some(claims) => Self::Active(Box::new(ActiveToken {
                active: true,
                token_type,
                claims,
            })),
            None => Self::Inactive(InactiveToken { active: false }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IntrospectionEnvelope {
    pub data: Introspection,
    pub meta: SuccessMeta,
}

/// Only service accounts (API keys) introspect; a route says so before it reads the body.
pub fn may_introspect(principal: &Principal) -> Result<(), ApiError> {
    match principal {
        Principal::ApiKey { .. } => Ok(()),
        _ => Err(ApiError::Forbidden(
            "Introspection is for service accounts (API keys).",
        )),
    }
}

/// The one introspection rule both routes answer by (the envelope's and RFC 7662's): the claims
/// of a token of ours that verifies, is recorded, is neither revoked nor expired and that
/// `principal` may see; `None` for anything else. Only service accounts (API keys) introspect.
pub async fn introspect(
    state: &AppState,
    principal: &Principal,
    token: &str,
    timings: &mut Timings,
) -> Result<Option<SessionClaims>, ApiError> {
    may_introspect(principal)?;
    let Ok(claims) = state.authenticator.session_tokens.claims(token) else {
        return Ok(None);
    };
    let row = timings
        .time("db", state.store.find_mint(claims.jti))
        .await?;
    // No leeway on expiry: verification tolerates clock skew between machines, introspection
    // answers from the one clock that issued the token, as the record does.
    let now = Utc::now();
    let active = claims.exp > now.timestamp()
        && row.is_some_and(|row| {
            row.revoked_at.is_none() && row.expires_at > now && visible(principal, &row)
        });
    Ok(active.then_some(claims))
}

#[utoipa::path(
    post,
    path = "/public-api/sessions/introspect",
    operation_id = "public_api.session_token_introspect",
    tag = "Tokens",
    summary = "Is this token active? (RFC 7662's answer in the envelope, for service accounts)",
    description = "`active: true` with the claims for a token of ours that verifies, is recorded, is neither revoked nor expired (no leeway: `active: false` from the second `exp` passes) and belongs to the caller's tenant (or is a Neo Support token the platform key minted); `active: false` for anything else: revoked, expired, foreign, forged or malformed. A standard RFC 7662 client uses `POST /oauth2/introspect` instead (a form, the bare answer).",
    request_body(content = IntrospectionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The answer.", body = IntrospectionEnvelope),
        (status = 400, description = "The body is not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `tokens:manage`; `forbidden`: only service accounts (API keys) introspect.", body = ErrorEnvelope),
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
    Authorized { principal, .. }: Authorized<ManageTokens>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<Success<Introspection>>, ApiError> {
    may_introspect(&principal)?;
    let Some(token) = body.get("token").and_then(serde_json::Value::as_str) else {
        return Err(ApiError::invalid_field("token", "is required, a string"));
    };
    let mut timings = Timings::default();
    let claims = introspect(&state, &principal, token, &mut timings).await?;
    Ok(Success::new(
        Introspection::of(claims, SESSION_TOKEN_TYP),
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

/// Which tokens of a chat session to revoke.
#[derive(Debug, ToSchema)]
pub struct RevokeSessionRequest {
    /// The chat session.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$"
    )]
    pub session_id: String,
    /// Revoke the tokens issued before this time (default: now, i.e. all of them).
    #[schema(value_type = Option<String>, format = DateTime, nullable)]
    pub issued_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRevocation {
    pub session_id: String,
    /// How many tokens this call revoked (already revoked ones are not counted).
    pub revoked: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionRevocationEnvelope {
    pub data: SessionRevocation,
    pub meta: SuccessMeta,
}

#[utoipa::path(
    post,
    path = "/public-api/sessions/revoke",
    operation_id = "public_api.session_tokens_revoke",
    tag = "Tokens",
    summary = "Revoke every token of a chat session",
    description = "Revokes the session's tokens issued before `issued_before` (default now) that the caller may revoke one by one: its tenant's tokens; a platform key also those it minted into another tenant's Neo Support session. The session must be the caller's tenant's (or, for a platform key, a Neo Support session). A call that revoked nothing says so in `meta.warnings`.",
    request_body(content = RevokeSessionRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "How many were revoked.", body = SessionRevocationEnvelope),
        (status = 400, description = "The body is not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `tokens:manage` (an end-user token never has it).", body = ErrorEnvelope),
        (status = 404, description = "No such session for this caller.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`session_id` or `issued_before` invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn revoke_session_tokens(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ManageTokens>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Json<Success<SessionRevocation>>, ApiError> {
    let request = RevokeSessionRequest::from_json(&body)?;
    let mut timings = Timings::default();
    let session = timings
        .time("db", state.store.find_session(&request.session_id))
        .await?;
    // The caller's own sessions; for the platform also other tenants' Neo Support sessions.
    let session = session
        .filter(|s| {
            s.tenant_id == principal.tenant_id() || (principal.is_platform() && s.is_neo_support())
        })
        .ok_or(ApiError::SessionNotFound)?;
    let issued_before = request.issued_before.unwrap_or_else(Utc::now);
    let revoked = timings
        .time(
            "db",
            state.store.revoke_session_mints(
                &session.id,
                issued_before,
                &principal.id(),
                // The rule of `visible`, for many tokens at once.
                principal.tenant_id(),
                principal.is_platform().then(|| principal.tenant_id()),
            ),
        )
        .await?;
    let warnings = if revoked == 0 {
        vec![format!(
            "no token was revoked: session {} has no unrevoked token issued before {}",
            session.id,
            issued_before.to_rfc3339()
        )]
    } else {
        Vec::new()
    };
    Ok(Success::new(
        SessionRevocation {
            session_id: session.id,
            revoked,
        },
        SuccessMeta::new(ctx, timings, warnings),
    ))
}

impl RevokeSessionRequest {
    fn from_json(body: &serde_json::Value) -> Result<Self, ApiError> {
        let mut errors = serde_json::Map::new();
        let session_id = match body.get("session_id").and_then(serde_json::Value::as_str) {
            Some(id)
                if !id.is_empty()
                    && id.chars().count() <= 255
                    && !id.chars().any(char::is_control) =>
            {
                Some(id.to_owned())
            }
            _ => {
                errors.insert(
                    "session_id".into(),
                    "is required: 1 to 255 characters".into(),
                );
                None
            }
        };
        let issued_before = match body.get("issued_before") {
            // Absent, null or empty: not given (now).
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) if text.is_empty() => None,
            Some(value) => match value
                .as_str()
                .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
            {
                Some(at) => Some(at.with_timezone(&Utc)),
                None => {
                    errors.insert(
                        "issued_before".into(),
                        "must be an RFC 3339 time, e.g. 2026-11-29T12:00:00Z".into(),
                    );
                    None
                }
            },
        };
        match session_id {
            Some(session_id) if errors.is_empty() => Ok(Self {
                session_id,
                issued_before,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevocationFeedEnvelope {
    pub data: RevocationFeed,
    pub meta: SuccessMeta,
}

/// Revocations per call at most.
const FEED_PAGE: u32 = 1000;

#[utoipa::path(
    get,
    path = "/public-api/sessions/revocations",
    operation_id = "public_api.session_token_revocations",
    tag = "Tokens",
    summary = "Revoked tokens that have not expired yet (a verifier's deny-list feed)",
    description = "Revoked tokens that have not expired, at most 1000 per call, each handed out once it has committed and no revocation that could sort before it is still in flight. Follow the feed by passing the answer's `next_cursor` as `cursor` each time (ask again at once while `has_more`): every revocation reaches a verifier that does, whatever order they commit in. The first poll has no `cursor` (everything, or `since` a time). `next_since`/`next_after` are deprecated: followed instead of the cursor, a revocation that commits after a later one can be missed. A verifier keeps the jtis in memory until their `expires_at`. A tenant's key sees its tenant's tokens; the platform key sees every tenant's (the chat service verifies them all).",
    params(
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous answer, as it was (opaque); not with `since` or `after`."),
        ("since" = Option<String>, Query, format = DateTime, description = "First poll only: RFC 3339 time; revocations after it (absent: all)."),
        ("after" = Option<String>, Query, format = Uuid, description = "Deprecated, with `since`: the last jti already seen at that time (`next_after`); revocations at exactly `since` with a greater jti are included."),
    ),
    responses(
        (status = 200, description = "The revocations.", body = RevocationFeedEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `revocations:read` (an end-user token never has it).", body = ErrorEnvelope),
        (status = 422, description = "`cursor` is not one this feed answered or comes with `since`/`after`, `since` is not an RFC 3339 time, or `after` not a UUID.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn revocations(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadRevocations>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Success<RevocationFeed>>, ApiError> {
    let invalid = |field: &str, message: &str| ApiError::invalid_field(field, message);
    let cursor = match query.get("cursor") {
        None => None,
        Some(text) => Some(
            text.parse::<Cursor>()
                .map_err(|()| invalid("cursor", "must be a `next_cursor` this feed answered"))?,
        ),
    };
    let since = match query.get("since") {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&Utc))
                .map_err(|_| {
                    invalid(
                        "since",
                        "must be an RFC 3339 time, e.g. 2026-11-29T12:00:00Z",
                    )
                })?,
        ),
    };
    let after = match query.get("after") {
        None => None,
        Some(text) => Some(
            uuid::Uuid::try_parse(text).map_err(|_| invalid("after", "must be a jti (a UUID)"))?,
        ),
    };
    if cursor.is_some() && (since.is_some() || after.is_some()) {
        return Err(invalid(
            "cursor",
            "follows the feed on its own: send `since`/`after` without it, on a first poll",
        ));
    }
    // A first poll (no cursor) goes by time, from `since` (default: the start of time), as the
    // feed always did: a verifier that follows `next_since` pages as before.
    let since = since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    let tenant = (!principal.is_platform()).then(|| principal.tenant_id());
    let mut timings = Timings::default();
    // By position from a position cursor; by time on a first poll, or from a time cursor,
    // which keeps the horizon of the run's first page so that the run ends where a position
    // cursor takes over.
    let (horizon, from, by_time) = match cursor {
        Some(Cursor::Time { horizon, at, jti }) => (horizon, None, Some((at, Some(jti)))),
        given => {
            let horizon = timings.time("db", state.store.revocation_horizon()).await?;
            let from = match given {
                Some(Cursor::Position(position)) => Some(position),
                _ => None,
            };
            let by_time = from.is_none().then_some((since, after));
            (horizon, from, by_time)
        }
    };
    let feed = state
        .store
        .revocations_after(tenant, horizon, from, by_time, FEED_PAGE + 1);
    let rows = timings.time("db", feed).await?;
    let has_more = rows.len() > FEED_PAGE as usize;
    let revocations: Vec<(RevokedToken, i64)> = rows
        .into_iter()
        .take(FEED_PAGE as usize)
        .map(|r| {
            let token = RevokedToken {
                jti: r.jti,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
            };
            (token, r.revoked_seq)
        })
        .collect();
    let last = revocations
        .last()
        .and_then(|(r, seq)| Some((r.revoked_at, *seq, uuid::Uuid::try_parse(&r.jti).ok()?)));
    // A full page goes on after its last row. Otherwise every revocation below the horizon
    // after the cursor is in this answer: the next poll starts at the horizon (never before
    // the position given).
    let at_horizon = FeedPosition {
        seq: horizon.saturating_sub(1),
        jti: None,
    };
    let next = match (has_more, last) {
        (true, Some((at, _, jti))) if by_time.is_some() => Cursor::Time { horizon, at, jti },
        (true, Some((_, seq, jti))) => Cursor::Position(FeedPosition {
            seq,
            jti: Some(jti),
        }),
        _ => Cursor::Position(from.map_or(at_horizon, |given| given.max(at_horizon))),
    };
    let revocations: Vec<RevokedToken> = revocations.into_iter().map(|(r, _)| r).collect();
    // Deprecated, for verifiers that follow the feed by time.
    let since = by_time.map_or(DateTime::<Utc>::UNIX_EPOCH, |(at, _)| at);
    let next_since = revocations
        .iter()
        .map(|r| r.revoked_at)
        .max()
        .map_or(since, |at| at.max(since));
    let next_after = revocations
        .iter()
        .filter(|r| r.revoked_at == next_since)
        .map(|r| r.jti.clone())
        .max()
        .or(by_time.and_then(|(_, jti)| jti).map(|jti| jti.to_string()));
    Ok(Success::new(
        RevocationFeed {
            revocations,
            next_cursor: next.to_string(),
            next_since,
            next_after,
            has_more,
        },
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

/// The feed's cursor: opaque to clients. `<seq>` or `<seq>.<jti>`: a position in the feed's
/// order; `t<horizon>.<microseconds>.<jti>`: inside a run by time (from `since`) that reads up
/// to `horizon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cursor {
    Position(FeedPosition),
    Time {
        horizon: i64,
        at: DateTime<Utc>,
        jti: uuid::Uuid,
    },
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Position(FeedPosition { seq, jti: None }) => write!(f, "{seq}"),
            Self::Position(FeedPosition {
                seq,
                jti: Some(jti),
            }) => write!(f, "{seq}.{jti}"),
            Self::Time { horizon, at, jti } => {
                write!(f, "t{horizon}.{}.{jti}", at.timestamp_micros())
            }
        }
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let number = |text: &str| text.parse::<i64>().ok().filter(|n| *n >= -1).ok_or(());
        let jti = |text: &str| uuid::Uuid::try_parse(text).map_err(|_| ());
        if let Some(time) = text.strip_prefix('t') {
            let mut fields = time.splitn(3, '.');
            let (Some(horizon), Some(at), Some(last)) =
                (fields.next(), fields.next(), fields.next())
            else {
                return Err(());
            };
            let at = at.parse::<i64>().map_err(|_| ())?;
            return Ok(Self::Time {
                horizon: number(horizon)?,
                at: DateTime::from_timestamp_micros(at).ok_or(())?,
                jti: jti(last)?,
            });
        }
        Ok(Self::Position(match text.split_once('.') {
            Some((seq, last)) => FeedPosition {
                seq: number(seq)?,
                jti: Some(jti(last)?),
            },
            None => FeedPosition {
                seq: number(text)?,
                jti: None,
            },
        }))
    }
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_as_written_and_garbage_is_refused() {
        let jti = uuid::Uuid::new_v4();
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap_or_default();
        for cursor in [
            Cursor::Position(FeedPosition { seq: 0, jti: None }),
            Cursor::Position(FeedPosition {
                seq: 42,
                jti: Some(jti),
            }),
            Cursor::Time {
                horizon: 7,
                at,
                jti,
            },
        ] {
            assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        }
        for garbage in [
            "",
            "x",
            "-5",
            "1.",
            "1.nope",
            "t1.2",
            "t1.x.y",
            "9999999999999999999",
        ] {
            assert_eq!(garbage.parse::<Cursor>(), Err(()), "{garbage}");
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SessionTokenList {
    pub data: Vec<SessionTokenRecord>,
    /// With `pagination`: pass `next_cursor` as `cursor` for the next page.
    pub meta: SuccessMeta,
}

/// `cursor` is `base64url(issued_at|jti)` of the last record of the previous page.
fn encode_cursor(row: &SessionTokenRecord) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    URL_SAFE_NO_PAD.encode(format!("{}|{}", row.issued_at.to_rfc3339(), row.jti))
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, uuid::Uuid)> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (at, jti) = text.split_once('|')?;
    let at = DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc);
    Some((at, uuid::Uuid::try_parse(jti).ok()?))
}

#[utoipa::path(
    get,
    path = "/public-api/sessions",
    operation_id = "public_api.session_tokens_list",
    tag = "Tokens",
    summary = "The caller's tenant's minted tokens, newest first",
    description = "Keyset-paginated (`meta.pagination`: pass `next_cursor` as `cursor`); stable while new tokens are minted. A tenant also sees the tokens the platform minted into its Neo Support session (`minted_by_platform`); the platform key also sees those it minted into other tenants.",
    params(
        ("session_id" = Option<String>, Query, description = "Only this chat session's tokens."),
        ("active" = Option<bool>, Query, description = "`true`: neither revoked nor expired; `false`: revoked or expired."),
        PageParams,
    ),
    responses(
        (status = 200, description = "One page.", body = SessionTokenList),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `tokens:manage` (an end-user token never has it).", body = ErrorEnvelope),
        (status = 422, description = "A query parameter is invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_session_tokens(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ManageTokens>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<SessionTokenList>, ApiError> {
    let active = match query.get("active").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return Err(ApiError::invalid_field("active", "must be true or false")),
    };
    let limit = super::envelope::page_limit(&query)?;
    let after = match query.get("cursor").filter(|cursor| !cursor.is_empty()) {
        None => None,
        Some(cursor) => Some(decode_cursor(cursor).ok_or_else(|| {
            ApiError::invalid_field("cursor", "is not a cursor this service gave out")
        })?),
    };
    let mint_query = crate::store::MintQuery {
        tenant_id: principal.tenant_id().to_owned(),
        minted_by_tenant: principal
            .is_platform()
            .then(|| principal.tenant_id().to_owned()),
        session_id: query.get("session_id").cloned(),
        active,
        after,
        limit: limit + 1,
    };
    let mut timings = Timings::default();
    let rows = timings
        .time("db", state.store.list_mints(&mint_query))
        .await?;
    let has_more = rows.len() > limit as usize;
    let records: Vec<SessionTokenRecord> = rows
        .into_iter()
        .take(limit as usize)
        .map(SessionTokenRecord::of)
        .collect();
    let mut meta = SuccessMeta::new(ctx, timings, Vec::new());
    meta.pagination = Some(super::envelope::Pagination {
        next_cursor: has_more
            .then(|| records.last().map(encode_cursor))
            .flatten(),
        has_more,
    });
    Ok(Json(SessionTokenList {
        data: records,
        meta,
    }))
}
