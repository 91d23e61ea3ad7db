//! `POST /public-api/sessions`: the mint rules of SPEC §2, in their order.

use std::sync::Arc;

use axum::{
    extract::{FromRequestParts, State},
    http::request::Parts,
    Json,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{
    envelope::{ErrorEnvelope, RequestContext, Success, SuccessMeta, Timings},
    error::ApiError,
    extract::{ApiJson, MintingPrincipal},
    request_context::log_jti,
    AppState,
};
use crate::{
    auth::Principal,
    config::TokenConfig,
    store::{IdempotencyClaim, MintRecord, SessionRow},
    tokens::{MintedToken, SessionClaims, TokenGrant, TokenIssuer},
};

const MAX_ID_LEN: usize = 255;
const MAX_EMAIL_LEN: usize = 254;
const MAX_AGENT_IDS: usize = 256;

// Built field by field by `from_json` (no `Deserialize`) so that every bad field is reported at
// once. The doc comment below is the schema's description in the OpenAPI document.
/// The request body. Unknown fields are ignored.
#[derive(Debug, Clone, Default, ToSchema)]
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
    /// Token lifetime in seconds; default 900, allowed 60 to 3600 (the bounds shown are the
    /// defaults; `NEO_TOKEN_MIN_TTL`/`NEO_TOKEN_MAX_TTL` change them).
    #[schema(value_type = Option<i64>, nullable, default = json!(null), minimum = 60, maximum = 3600)]
    pub ttl_seconds: Option<u32>,
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
        (status = 403, description = "Forbidden — authenticated but not allowed.", body = ErrorEnvelope),
        (status = 404, description = "Not found.", body = ErrorEnvelope),
        (status = 409, description = "Conflict — the resource is in a state that blocks this operation.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "Request validation failed.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 500, description = "Internal server error.", body = ErrorEnvelope),
        (status = 503, description = "Unavailable: the database cannot serve right now (`database_unavailable`), or Microsoft Entra ID signing keys cannot be had (`entra_unavailable`, Entra callers only). Retry after `Retry-After` seconds.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn mint_session_token(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    MintingPrincipal(principal): MintingPrincipal,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Success<MintSessionTokenResponse>>, ApiError> {
    // Hashed as parsed (serde_json sorts object keys), so whitespace and key order do not matter.
    let request_hash = idempotency_key.as_ref().map(|_| {
        let canonical = serde_json::to_vec(&body).unwrap_or_default();
        <[u8; 32]>::from(Sha256::digest(canonical))
    });

    // Rule 1: the shape of the body.
    let request = MintSessionTokenRequest::from_json(body, &state.config.token)?;
    let mut timings = Timings::default();

    let (Some(key), Some(request_hash)) = (idempotency_key, request_hash) else {
        let (data, warnings, _) = mint(&state, &principal, request, &mut timings).await?;
        return Ok(Success::new(data, SuccessMeta::new(ctx, timings, warnings)));
    };

    // With an Idempotency-Key: the first request mints, a retry gets that token again.
    let owner = format!("{}:{}", principal.kind(), principal.id());
    let window = chrono::Duration::seconds(i64::from(state.config.token.max_ttl));
    let patience = std::time::Instant::now() + IDEMPOTENCY_WAIT;
    loop {
        let now = Utc::now();
        let claim = state.store.claim_idempotency(
            &owner,
            &key,
            &request_hash,
            now,
            now - window,
            now - IDEMPOTENCY_ABANDONED,
        );
        match timings.time("db", claim).await? {
            None => break,
            Some(claim) if claim.request_hash[..] != request_hash[..] => {
                return Err(ApiError::IdempotencyKeyReused)
            }
            Some(IdempotencyClaim {
                claims: Some(claims),
                ..
            }) => {
                let claims: SessionClaims = serde_json::from_str(&claims)
                    .map_err(|e| ApiError::Internal(format!("stored idempotent claims: {e}")))?;
                if claims.exp <= now.timestamp() {
                    // That token has expired: this retry mints a new one.
                    let forget = state.store.settle_idempotency(&owner, &key, None);
                    timings.time("db", forget).await?;
                    continue;
                }
                let minted = sign(&state, Signing::Again(claims), &mut timings).await?;
                let expires_in = u32::try_from(minted.claims.exp - now.timestamp()).unwrap_or(0);
                log_jti(minted.jti);
                let data = MintSessionTokenResponse {
                    token: minted.token,
                    jti: minted.jti,
                    session_id: minted.claims.session_id,
                    expires_at: minted.expires_at,
                    expires_in,
                };
                let warnings = vec![IDEMPOTENT_REPLAY.to_owned()];
                return Ok(Success::new(data, SuccessMeta::new(ctx, timings, warnings)));
            }
            Some(_) if std::time::Instant::now() < patience => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            Some(_) => return Err(ApiError::IdempotencyKeyInUse),
        }
    }
    let minted = mint(&state, &principal, request, &mut timings).await;
    let settled = match &minted {
        Ok((_, _, claims)) => serde_json::to_string(claims).ok(),
        Err(_) => None,
    };
    if let Err(error) = state
        .store
        .settle_idempotency(&owner, &key, settled.as_deref())
        .await
    {
        // The token is minted and recorded; a retry waits out the claim (IDEMPOTENCY_ABANDONED).
        tracing::warn!(%error, "could not settle an Idempotency-Key claim");
    }
    let (data, warnings, _) = minted?;
    Ok(Success::new(data, SuccessMeta::new(ctx, timings, warnings)))
}

/// How long a retry waits for the first request with its key to finish before a 409.
const IDEMPOTENCY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A claim never settled (its instance died mid-mint) is dropped after this long.
const IDEMPOTENCY_ABANDONED: chrono::Duration = chrono::Duration::seconds(30);
const IDEMPOTENT_REPLAY: &str = "Idempotency-Key replay: this is the token the first request with this key minted (same jti and expiry), signed again.";
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

enum Signing {
    New(TokenGrant),
    Again(SessionClaims),
}

async fn sign(
    state: &AppState,
    what: Signing,
    timings: &mut Timings,
) -> Result<MintedToken, ApiError> {
    let started = std::time::Instant::now();
    let issue = |issuer: &TokenIssuer, what: Signing| match what {
        Signing::New(grant) => issuer.issue(grant),
        Signing::Again(claims) => issuer.resign(claims),
    };
    let minted = if state.issuer.signs_slowly() {
        // RS256 takes about a millisecond of CPU: off the async runtime.
        let issuer = Arc::clone(&state.issuer);
        tokio::task::spawn_blocking(move || issue(&issuer, what))
            .await
            .map_err(|e| ApiError::Internal(format!("signing task failed: {e}")))??
    } else {
        issue(&state.issuer, what)?
    };
    timings.add("sign", started);
    Ok(minted)
}

/// Rules 2 to 7 for a well-formed request: the response data, warnings, and the signed claims.
async fn mint(
    state: &AppState,
    principal: &Principal,
    request: MintSessionTokenRequest,
    timings: &mut Timings,
) -> Result<(MintSessionTokenResponse, Vec<String>, SessionClaims), ApiError> {
    // The session, its agents and end companies: from the directory's cache when held.
    let store = &state.directory;

    // Rules 2 and 3: the target tenant (refused before any lookup), then its session.
    let target = Target::of(principal, request.client_id.as_deref())?;
    let session = timings
        .time("db", store.session(&request.session_id))
        .await?;
    let session = target.session(session)?;

    // Rule 4: only active sessions.
    if !session.is_active() {
        return Err(ApiError::SessionClosed);
    }

    // Rule 5: end-company scope; the session's own scope always wins.
    let mut warnings = Vec::new();
    let end_company_id = match (session.end_company_id.clone(), request.end_company_id) {
        (Some(scoped), Some(asked)) if asked != scoped => {
            warnings.push(format!(
                "end_company_id was ignored: session {} is scoped to end company {scoped}",
                session.id
            ));
            Some(scoped)
        }
        (Some(scoped), _) => Some(scoped),
        (None, Some(asked)) => {
            let exists = timings
                .time("db", store.end_company_exists(&session.tenant_id, &asked))
                .await?;
            if !exists {
                return Err(ApiError::InvalidEndCompany);
            }
            Some(asked)
        }
        (None, None) => None,
    };

    // Rule 6: agents of the target tenant, duplicates removed (first occurrence kept).
    let mut allowed_agent_ids = request.allowed_agent_ids;
    let mut seen = std::collections::HashSet::with_capacity(allowed_agent_ids.len());
    allowed_agent_ids.retain(|id| seen.insert(*id));
    if !allowed_agent_ids.is_empty() {
        let existing = timings
            .time(
                "db",
                store.existing_agents(&session.tenant_id, &allowed_agent_ids),
            )
            .await?;
        let unknown: Vec<i64> = allowed_agent_ids
            .iter()
            .copied()
            .filter(|id| !existing.contains(id))
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::InvalidAgentIds(unknown));
        }
    }

    // Rule 7: sign, record, answer.
    let ttl_seconds = request
        .ttl_seconds
        .unwrap_or(state.config.token.default_ttl);
    let claims_end_company = end_company_id.clone();
    let grant = TokenGrant {
        session_id: session.id.clone(),
        client_id: session.tenant_id.clone(),
        end_company_id,
        end_user: request.end_user.clone(),
        end_user_email: request.end_user_email,
        allowed_agent_ids,
        ttl_seconds,
    };
    let minted = sign(state, Signing::New(grant), timings).await?;
    log_jti(minted.jti);

    let record = MintRecord {
        jti: minted.jti,
        session_id: session.id.clone(),
        tenant_id: session.tenant_id.clone(),
        minted_by_kind: principal.kind(),
        minted_by: principal.id(),
        minted_by_tenant: principal.tenant_id().to_owned(),
        end_user: request.end_user,
        end_company_id: claims_end_company,
        issued_at: minted.issued_at,
        expires_at: minted.expires_at,
    };
    timings.time("db", state.recorder.record(record)).await?;

    let data = MintSessionTokenResponse {
        token: minted.token,
        jti: minted.jti,
        session_id: session.id.clone(),
        expires_at: minted.expires_at,
        expires_in: ttl_seconds,
    };
    Ok((data, warnings, minted.claims))
}

/// Whose session a mint may be for (rules 2 and 3).
enum Target<'a> {
    /// The caller's own tenant.
    OwnTenant(&'a str),
    /// A platform key's `client_id`: only that tenant's Neo Support session.
    SupportSessionOf(&'a str),
}

impl<'a> Target<'a> {
    fn of(principal: &'a Principal, client_id: Option<&'a str>) -> Result<Self, ApiError> {
        match client_id {
            None => Ok(Self::OwnTenant(principal.tenant_id())),
            Some(client_id) if principal.is_platform() => Ok(Self::SupportSessionOf(client_id)),
            Some(_) => Err(ApiError::Forbidden(
                "client_id may be passed only by a platform service account.",
            )),
        }
    }

    /// The session, if it is one this target may mint for. Every refusal reveals nothing of
    /// other tenants' sessions.
    fn session(&self, session: Option<Arc<SessionRow>>) -> Result<Arc<SessionRow>, ApiError> {
        match *self {
            Self::SupportSessionOf(client_id) => session
                .filter(|s| s.tenant_id == client_id && s.is_neo_support())
                .ok_or(ApiError::Forbidden(
                    "With client_id, session_id must be that tenant's Neo Support session.",
                )),
            Self::OwnTenant(tenant_id) => session
                .filter(|s| s.tenant_id == tenant_id)
                .ok_or(ApiError::SessionNotFound),
        }
    }
}

impl MintSessionTokenRequest {
    /// Rule 1: checks every field and reports all failures at once, per field.
    pub fn from_json(body: Value, limits: &TokenConfig) -> Result<Self, ApiError> {
        let Value::Object(mut body) = body else {
            return Err(field_error("body", "must be a JSON object"));
        };
        let mut errors = Map::new();
        let mut request = Self::default();

        match body.remove("session_id") {
            None | Some(Value::Null) => {
                errors.insert("session_id".into(), "is required".into());
            }
            Some(value) => {
                if let Some(id) = text_field(&mut errors, "session_id", value, MAX_ID_LEN) {
                    request.session_id = id;
                }
            }
        }
        request.client_id = optional_text(&mut errors, &mut body, "client_id", MAX_ID_LEN);
        request.end_company_id =
            optional_text(&mut errors, &mut body, "end_company_id", MAX_ID_LEN);
        request.end_user = optional_text(&mut errors, &mut body, "end_user", MAX_ID_LEN);
        request.end_user_email =
            optional_text(&mut errors, &mut body, "end_user_email", MAX_EMAIL_LEN);
        if let Some(email) = &request.end_user_email {
            if !is_plausible_email(email) {
                errors.insert("end_user_email".into(), "must be an email address".into());
            }
        }

        match body.remove("allowed_agent_ids") {
            None => {}
            Some(Value::Array(items)) if items.len() > MAX_AGENT_IDS => {
                errors.insert(
                    "allowed_agent_ids".into(),
                    format!("must list at most {MAX_AGENT_IDS} agents").into(),
                );
            }
            Some(Value::Array(items)) => {
                match items.iter().map(integral).collect::<Option<Vec<i64>>>() {
                    Some(ids) => request.allowed_agent_ids = ids,
                    None => {
                        errors.insert(
                            "allowed_agent_ids".into(),
                            "must be an array of 64-bit integers".into(),
                        );
                    }
                }
            }
            Some(_) => {
                errors.insert(
                    "allowed_agent_ids".into(),
                    "must be an array of 64-bit integers".into(),
                );
            }
        }

        let (min, max) = (limits.min_ttl.get(), limits.max_ttl);
        match body.remove("ttl_seconds") {
            None | Some(Value::Null) => {}
            Some(value) => match integral(&value).and_then(|ttl| u32::try_from(ttl).ok()) {
                Some(ttl) if (min..=max).contains(&ttl) => request.ttl_seconds = Some(ttl),
                _ => {
                    errors.insert(
                        "ttl_seconds".into(),
                        format!("must be an integer from {min} to {max}").into(),
                    );
                }
            },
        }

        if errors.is_empty() {
            Ok(request)
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

/// A JSON integer, as JSON Schema counts them: `92` and `92.0` alike (a number with no
/// fractional part, exactly representable); never `92.5` or a string.
fn integral(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    // 2^53: beyond it a float no longer names one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    (f.fract() == 0.0 && f.abs() <= EXACT).then_some(f as i64)
}

fn field_error(field: &str, message: &str) -> ApiError {
    let mut errors = Map::new();
    errors.insert(field.into(), message.into());
    ApiError::Validation(errors)
}

fn optional_text(
    errors: &mut Map<String, Value>,
    body: &mut Map<String, Value>,
    field: &str,
    max_len: usize,
) -> Option<String> {
    match body.remove(field) {
        None | Some(Value::Null) => None,
        Some(value) => text_field(errors, field, value, max_len),
    }
}

/// A non-empty string of at most `max_len` characters without control characters.
fn text_field(
    errors: &mut Map<String, Value>,
    field: &str,
    value: Value,
    max_len: usize,
) -> Option<String> {
    let Value::String(text) = value else {
        errors.insert(field.into(), "must be a string".into());
        return None;
    };
    let problem = if text.is_empty() {
        "must not be empty".to_owned()
    } else if text.chars().count() > max_len {
        format!("must be at most {max_len} characters")
    } else if text.chars().any(char::is_control) {
        "must not contain control characters".to_owned()
    } else {
        return Some(text);
    };
    errors.insert(field.into(), problem.into());
    None
}

/// `local@domain.tld` without spaces: enough to catch mistakes, without pretending to be RFC 5322.
fn is_plausible_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !email.chars().any(char::is_whitespace)
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<MintSessionTokenRequest, Map<String, Value>> {
        MintSessionTokenRequest::from_json(body, &TokenConfig::default()).map_err(|e| match e {
            ApiError::Validation(fields) => fields,
            other => panic!("unexpected {other:?}"),
        })
    }

    #[test]
    fn every_bad_field_is_reported() {
        let errors = parse(json!({
            "session_id": "",
            "client_id": 5,
            "end_user_email": "not-an-email",
            "allowed_agent_ids": [1, "2"],
            "ttl_seconds": 59,
        }))
        .unwrap_err();
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "allowed_agent_ids",
                "client_id",
                "end_user_email",
                "session_id",
                "ttl_seconds"
            ]
        );
    }

    #[test]
    fn ttl_bounds_are_inclusive() {
        assert!(parse(json!({"session_id": "s", "ttl_seconds": 60})).is_ok());
        assert!(parse(json!({"session_id": "s", "ttl_seconds": 3600})).is_ok());
        assert!(parse(json!({"session_id": "s", "ttl_seconds": 3601})).is_err());
        assert!(parse(json!({"session_id": "s", "ttl_seconds": 900.5})).is_err());
        // JSON Schema's integers: 120.0 is one.
        assert_eq!(
            parse(json!({"session_id": "s", "ttl_seconds": 120.0}))
                .unwrap()
                .ttl_seconds,
            Some(120)
        );
        assert_eq!(
            parse(json!({"session_id": "s", "allowed_agent_ids": [101.0, 102]}))
                .unwrap()
                .allowed_agent_ids,
            [101, 102]
        );
    }

    #[test]
    fn emails() {
        assert!(is_plausible_email("a@b.co"));
        assert!(!is_plausible_email("a@b"));
        assert!(!is_plausible_email("@b.co"));
        assert!(!is_plausible_email("a b@c.co"));
        assert!(!is_plausible_email("a@b@c.co"));
    }
}
