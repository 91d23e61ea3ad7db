//! The one error type of the HTTP layer. `IntoResponse` sets the status and headers and leaves an
//! [`ErrorReport`] in the response extensions; the request-context middleware renders the envelope
//! (it knows the request id) and logs internal causes once.

use axum::{
    http::{header::WWW_AUTHENTICATE, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde_json::{json, Map, Value};

use crate::{
    auth::{principal::Scope, AuthError},
    mint::MintRefusal,
    ratelimit::whole_seconds,
    store::DirectoryRefusal,
    store::StoreError,
    tokens::KeyError,
};

const REALM: &str = "neo-sessions";

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The caller's own budget (per API key or Entra user).
    PerPrincipal,
    /// The client address's failed-authentication budget.
    FailedAuthPerIp,
}

impl Limit {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PerPrincipal => "per_principal",
            Self::FailedAuthPerIp => "failed_auth_per_ip",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing bearer credentials")]
    MissingCredentials,
    /// `reason` is for logs only; the client sees a generic message.
    #[error("invalid bearer credentials: {reason}")]
    InvalidCredentials {
        reason: std::borrow::Cow<'static, str>,
    },
    #[error("ambiguous credentials: {0}")]
    AmbiguousCredentials(&'static str),
    #[error("insufficient scope")]
    /// The credential lacks what the route needs: one of our scopes (an API key's, named), or
    /// the Entra scope the configuration requires (`None`).
    InsufficientScope { needed: Option<Scope> },
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("session not found")]
    SessionNotFound,
    #[error("token not found")]
    TokenNotFound,
    #[error("session closed")]
    SessionClosed,
    /// An `Idempotency-Key` seen before with a different request body.
    #[error("idempotency key reused with another request")]
    IdempotencyKeyReused,
    /// An `Idempotency-Key` whose first request is still minting.
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    /// An OAuth request that is malformed (RFC 6749 §5.2 `invalid_request`).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("validation failed")]
    Validation(Map<String, Value>),
    #[error("unknown end company")]
    InvalidEndCompany,
    /// The directory refused a write, or has no such row.
    #[error("directory: {0}")]
    Directory(DirectoryRefusal),
    #[error("unknown agents")]
    InvalidAgentIds(Vec<i64>),
    #[error("rate limited ({limit:?})")]
    RateLimited {
        retry_after: std::time::Duration,
        limit: Limit,
    },
    #[error("Entra ID signing keys unavailable")]
    EntraUnavailable { retry_after: std::time::Duration },
    /// The database cannot serve right now (unreachable, out of disk, ...): retry later.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(StoreError),
    /// Readiness: what is not ready, by component (`ok` or what is wrong).
    #[error("not ready: database {database}, recorder {recorder}, signing keys {signing_keys}")]
    NotReady {
        database: &'static str,
        recorder: &'static str,
        signing_keys: &'static str,
    },
    #[error("database error: {0}")]
    Store(StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

/// What the envelope middleware needs to render an error.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Logged, never sent.
    pub cause: Option<String>,
}

impl ErrorReport {
    /// The report for a response some layer produced without one (404, 405, 413, timeout, ...).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "No route matches this path."),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "This method is not allowed on this path.",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "The request body exceeds the size limit.",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "Send the body as JSON with Content-Type: application/json.",
            ),
            StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => (
                "timeout",
                "The request took too long and was abandoned; retry it.",
            ),
            StatusCode::TOO_MANY_REQUESTS => ("rate_limited", "Too many requests."),
            s if s.is_client_error() => ("bad_request", "The request could not be processed."),
            _ => ("internal_error", "An internal error occurred."),
        };
        Self {
            code,
            message: message.to_owned(),
            details: None,
            cause: None,
        }
    }

    pub fn into_body(self, request_id: uuid::Uuid) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        json!({ "error": error, "meta": { "request_id": request_id } })
    }
}

impl ApiError {
    /// 422 `validation_failed` naming one field (or query parameter) and what is wrong with it.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut fields = Map::new();
        fields.insert(field.into(), Value::String(message.into()));
        Self::Validation(fields)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingCredentials
            | Self::InvalidCredentials { .. }
            | Self::AmbiguousCredentials(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. } | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::SessionNotFound | Self::TokenNotFound => StatusCode::NOT_FOUND,
            Self::SessionClosed | Self::IdempotencyKeyReused | Self::IdempotencyKeyInUse => {
                StatusCode::CONFLICT
            }
            Self::InvalidJson(_) | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Validation(_) | Self::InvalidEndCompany | Self::InvalidAgentIds(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            Self::Directory(refusal) => match refusal {
                DirectoryRefusal::NotFound(_) | DirectoryRefusal::TenantNotFound(_) => {
                    StatusCode::NOT_FOUND
                }
                DirectoryRefusal::InvalidEndCompany(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::CONFLICT,
            },
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::DatabaseUnavailable(_)
            | Self::NotReady { .. }
            | Self::EntraUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn report(self) -> ErrorReport {
        let (code, message, details): (&'static str, String, Option<Value>) = match &self {
            Self::MissingCredentials => (
                "missing_credentials",
                "Send Authorization: Bearer <API key or token>.".into(),
                None,
            ),
            Self::InvalidCredentials { .. } => (
                "invalid_credentials",
                "The bearer credential is invalid, expired or revoked.".into(),
                None,
            ),
            Self::AmbiguousCredentials(why) => ("invalid_credentials", format!("{why}."), None),
            Self::InsufficientScope { needed: Some(scope) } => (
                "insufficient_scope",
                format!("This credential does not hold the scope `{scope}` this request needs."),
                Some(json!({ "required_scope": scope.name() })),
            ),
            Self::InsufficientScope { needed: None } => (
                "insufficient_scope",
                "This token lacks the scope this service requires.".into(),
                None,
            ),
            Self::Forbidden(why) => ("forbidden", (*why).into(), None),
            Self::Directory(refusal) => {
                let code = match refusal {
                    DirectoryRefusal::NotFound("end company") => "end_company_not_found",
                    DirectoryRefusal::NotFound("agent") => "agent_not_found",
                    DirectoryRefusal::NotFound("session") => "session_not_found",
                    DirectoryRefusal::NotFound(_) | DirectoryRefusal::TenantNotFound(_) => {
                        "tenant_not_found"
                    }
                    DirectoryRefusal::EntraTenantIdTaken(_) => "entra_tenant_id_taken",
                    DirectoryRefusal::PlatformFlag => "platform_tenant_immutable",
                    DirectoryRefusal::AgentOfAnotherTenant { .. } => "agent_of_another_tenant",
                    DirectoryRefusal::SessionOfAnotherTenant(_) => "session_of_another_tenant",
                    DirectoryRefusal::InvalidEndCompany(_) => "invalid_end_company",
                    DirectoryRefusal::NeoSupportSessionExists(_) => "neo_support_session_exists",
                    DirectoryRefusal::EndCompanyInUse(_) => "end_company_in_use",
                    DirectoryRefusal::TenantInUse(_) => "tenant_in_use",
                };
                let mut message = refusal.to_string();
                if let Some(first) = message.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                message.push('.');
                (code, message, None)
            }
            Self::SessionNotFound => (
                "session_not_found",
                "No such session for this tenant.".into(),
                None,
            ),
            Self::TokenNotFound => (
                "token_not_found",
                "No such token for this caller.".into(),
                None,
            ),
            Self::SessionClosed => (
                "session_closed",
                "The session is closed; tokens can be minted only for active sessions.".into(),
                None,
            ),
            Self::IdempotencyKeyReused => (
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request body; use a new key for a new request.".into(),
                None,
            ),
            Self::IdempotencyKeyInUse => (
                "idempotency_key_in_use",
                "The first request with this Idempotency-Key is still being processed; retry shortly.".into(),
                None,
            ),
            Self::InvalidJson(why) => (
                "invalid_json",
                format!("The request body is not valid JSON: {why}."),
                None,
            ),
            Self::InvalidRequest(why) => ("invalid_request", (*why).into(), None),
            Self::UnsupportedMediaType => {
                let r = ErrorReport::for_status(StatusCode::UNSUPPORTED_MEDIA_TYPE);
                (r.code, r.message, None)
            }
            Self::PayloadTooLarge => {
                let r = ErrorReport::for_status(StatusCode::PAYLOAD_TOO_LARGE);
                (r.code, r.message, None)
            }
            Self::Validation(fields) => (
                "validation_failed",
                "The request body failed validation; see details.".into(),
                Some(Value::Object(fields.clone())),
            ),
            Self::InvalidEndCompany => (
                "invalid_end_company",
                "end_company_id does not name an end company of the target tenant.".into(),
                Some(json!({ "end_company_id": "unknown end company" })),
            ),
            Self::InvalidAgentIds(ids) => (
                "invalid_agent_ids",
                "allowed_agent_ids names agents that are not the target tenant's.".into(),
                Some(json!({ "unknown_agent_ids": ids })),
            ),
            Self::RateLimited { retry_after, limit } => (
                "rate_limited",
                match limit {
                    Limit::PerPrincipal => "Too many requests for this credential; retry after the number of seconds in Retry-After.",
                    Limit::FailedAuthPerIp => "Too many failed authentications from this address; failing credentials are refused until Retry-After seconds have passed.",
                }
                .into(),
                Some(json!({
                    "retry_after_seconds": whole_seconds(*retry_after),
                    "limit": limit.as_str(),
                })),
            ),
            Self::EntraUnavailable { .. } => (
                "entra_unavailable",
                "Microsoft Entra ID signing keys cannot be fetched right now; retry shortly. API keys are unaffected.".into(),
                None,
            ),
            Self::DatabaseUnavailable(_) => (
                "database_unavailable",
                "The database cannot serve this request right now; retry after the number of seconds in Retry-After.".into(),
                None,
            ),
            Self::NotReady {
                database,
                recorder,
                signing_keys,
            } => (
                "service_unavailable",
                "The service is not ready; details says which part is not.".into(),
                Some(json!({
                    "database": database,
                    "recorder": recorder,
                    "signing_keys": signing_keys,
                })),
            ),
            Self::Store(_) | Self::Internal(_) => {
                ("internal_error", "An internal error occurred.".into(), None)
            }
        };
        let cause = match &self {
            Self::InvalidCredentials { reason } => Some(reason.to_string()),
            Self::Store(_) | Self::Internal(_) | Self::DatabaseUnavailable(_) => {
                Some(self.to_string())
            }
            _ => None,
        };
        ErrorReport {
            code,
            message,
            details,
            cause,
        }
    }

    fn challenge(&self) -> Option<String> {
        match self {
            Self::MissingCredentials => Some(format!("Bearer realm=\"{REALM}\"")),
            Self::InvalidCredentials { .. } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"The credential is invalid, expired or revoked\""
            )),
            Self::AmbiguousCredentials(_) => {
                Some(format!("Bearer realm=\"{REALM}\", error=\"invalid_request\""))
            }
            Self::InsufficientScope { needed: Some(scope) } => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{scope}\""
            )),
            Self::InsufficientScope { needed: None } => {
                Some(format!("Bearer realm=\"{REALM}\", error=\"insufficient_scope\""))
            }
            _ => None,
        }
    }
}

/// A store failure the client can retry (the database unreachable, out of disk or connections)
/// is a 503 with `Retry-After`; anything else is ours, a 500.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        if error.is_unavailable() {
            Self::DatabaseUnavailable(error)
        } else {
            Self::Store(error)
        }
    }
}

/// What a client is told to wait after `database_unavailable`.
const DATABASE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            // The keys live in the database, which has not answered since start: retry.
            KeyError::NoActiveKey => Self::DatabaseUnavailable(StoreError::Unavailable),
            error => Self::Internal(error.to_string()),
        }
    }
}

/// The one place where a reason for refusing a credential becomes a status, a code and a
/// challenge.
impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Missing => Self::MissingCredentials,
            AuthError::Invalid { reason } => Self::InvalidCredentials { reason },
            AuthError::Ambiguous(why) => Self::AmbiguousCredentials(why),
            AuthError::InsufficientScope => Self::InsufficientScope { needed: None },
            AuthError::UnknownDirectory => {
                Self::Forbidden("This Microsoft Entra directory is not registered with any tenant.")
            }
            AuthError::EntraUnavailable { retry_after } => Self::EntraUnavailable { retry_after },
            AuthError::Store(error) => Self::from(error),
        }
    }
}

/// The one place where a reason for refusing a mint becomes a status, a code and a message.
impl From<MintRefusal> for ApiError {
    fn from(refusal: MintRefusal) -> Self {
        match refusal {
            MintRefusal::InvalidRequest(fields) => Self::Validation(
                fields
                    .iter()
                    .map(|(field, message)| (field.to_owned(), Value::from(message)))
                    .collect(),
            ),
            MintRefusal::ClientIdNotAllowed => {
                Self::Forbidden("client_id may be passed only by a platform service account.")
            }
            MintRefusal::NotSupportSession => Self::Forbidden(
                "With client_id, session_id must be that tenant's Neo Support session.",
            ),
            MintRefusal::SessionNotFound => Self::SessionNotFound,
            MintRefusal::SessionClosed => Self::SessionClosed,
            MintRefusal::UnknownEndCompany => Self::InvalidEndCompany,
            MintRefusal::UnknownAgents(ids) => Self::InvalidAgentIds(ids),
            MintRefusal::IdempotencyKeyReused => Self::IdempotencyKeyReused,
            MintRefusal::IdempotencyKeyInUse => Self::IdempotencyKeyInUse,
            MintRefusal::Store(error) | MintRefusal::NotRecorded { source: error, .. } => {
                Self::from(error)
            }
            MintRefusal::Signing(error) => Self::from(error),
            refusal @ (MintRefusal::SigningTask(_)
            | MintRefusal::StoredClaims(_)
            | MintRefusal::StoredClaimsForged { .. }) => Self::Internal(refusal.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let challenge = self.challenge();
        let mut response = status.into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        let retry_after = match &self {
            Self::RateLimited { retry_after, .. } | Self::EntraUnavailable { retry_after } => {
                Some(*retry_after)
            }
            Self::DatabaseUnavailable(_) | Self::NotReady { .. } => Some(DATABASE_RETRY_AFTER),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(whole_seconds(retry_after)),
            );
        }
        response.extensions_mut().insert(self.report());
        response
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Every reason `auth` can give, and what the client sees for it.
    #[test]
    fn auth_errors_map_to_status_code_and_challenge() {
        let invalid_token = "Bearer realm=\"neo-sessions\", error=\"invalid_token\", error_description=\"The credential is invalid, expired or revoked\"";
        let cases: Vec<(AuthError, StatusCode, &str, Option<&str>)> = vec![
            (
                AuthError::Missing,
                StatusCode::UNAUTHORIZED,
                "missing_credentials",
                Some("Bearer realm=\"neo-sessions\""),
            ),
            (
                AuthError::Invalid {
                    reason: "unknown API key".into(),
                },
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                Some(invalid_token),
            ),
            (
                AuthError::Ambiguous("Send exactly one Authorization header"),
                StatusCode::UNAUTHORIZED,
                "invalid_credentials",
                Some("Bearer realm=\"neo-sessions\", error=\"invalid_request\""),
            ),
            (
                AuthError::InsufficientScope,
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                Some("Bearer realm=\"neo-sessions\", error=\"insufficient_scope\""),
            ),
            (
                AuthError::UnknownDirectory,
                StatusCode::FORBIDDEN,
                "forbidden",
                None,
            ),
            (
                AuthError::EntraUnavailable {
                    retry_after: Duration::from_secs(5),
                },
                StatusCode::SERVICE_UNAVAILABLE,
                "entra_unavailable",
                None,
            ),
            (
                AuthError::Store(StoreError::Unavailable),
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                None,
            ),
            (
                AuthError::Store(StoreError::UnsupportedUrl),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                None,
            ),
        ];
        for (auth, status, code, challenge) in cases {
            let failed = auth.is_failed_authentication();
            let response = ApiError::from(auth).into_response();
            assert_eq!(response.status(), status, "{code}");
            // The failed-auth budget is charged for exactly the 401s.
            assert_eq!(failed, status == StatusCode::UNAUTHORIZED, "{code}");
            let report = response.extensions().get::<ErrorReport>().expect("report");
            assert_eq!(report.code, code);
            let www = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(www, challenge, "{code}");
            if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
            {
                let retry_after = response.headers().get(axum::http::header::RETRY_AFTER);
                assert!(retry_after.is_some(), "{code} without Retry-After");
            }
        }
    }

    /// Every reason `mint` can give, and what the client sees for it.
    #[test]
    fn mint_refusals_map_to_status_code_and_message() {
        let mut fields = crate::mint::FieldErrors::default();
        if let Err(errors) = crate::mint::MintRequest::from_json(
            serde_json::json!({"ttl_seconds": 1}),
            crate::mint::TtlBounds::SHIPPED,
        ) {
            fields = errors;
        }
        let cases: Vec<(MintRefusal, StatusCode, &str, &str, Option<Value>)> = vec![
            (
                MintRefusal::InvalidRequest(fields),
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation_failed",
                "The request body failed validation; see details.",
                Some(json!({
                    "session_id": "is required",
                    "ttl_seconds": "must be an integer from 60 to 3600",
                })),
            ),
            (
                MintRefusal::ClientIdNotAllowed,
                StatusCode::FORBIDDEN,
                "forbidden",
                "client_id may be passed only by a platform service account.",
                None,
            ),
            (
                MintRefusal::NotSupportSession,
                StatusCode::FORBIDDEN,
                "forbidden",
                "With client_id, session_id must be that tenant's Neo Support session.",
                None,
            ),
            (
                MintRefusal::SessionNotFound,
                StatusCode::NOT_FOUND,
                "session_not_found",
                "No such session for this tenant.",
                None,
            ),
            (
                MintRefusal::SessionClosed,
                StatusCode::CONFLICT,
                "session_closed",
                "The session is closed; tokens can be minted only for active sessions.",
                None,
            ),
            (
                MintRefusal::UnknownEndCompany,
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_end_company",
                "end_company_id does not name an end company of the target tenant.",
                Some(json!({ "end_company_id": "unknown end company" })),
            ),
            (
                MintRefusal::UnknownAgents(vec![999, 201]),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_agent_ids",
                "allowed_agent_ids names agents that are not the target tenant's.",
                Some(json!({ "unknown_agent_ids": [999, 201] })),
            ),
            (
                MintRefusal::IdempotencyKeyReused,
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                "This Idempotency-Key was used with a different request body; use a new key for a new request.",
                None,
            ),
            (
                MintRefusal::IdempotencyKeyInUse,
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                "The first request with this Idempotency-Key is still being processed; retry shortly.",
                None,
            ),
            (
                MintRefusal::Store(StoreError::Unavailable),
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The database cannot serve this request right now; retry after the number of seconds in Retry-After.",
                None,
            ),
            (
                MintRefusal::NotRecorded {
                    jti: uuid::Uuid::nil(),
                    source: StoreError::UnsupportedUrl,
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "An internal error occurred.",
                None,
            ),
            (
                MintRefusal::Signing(KeyError::NoActiveKey),
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "The database cannot serve this request right now; retry after the number of seconds in Retry-After.",
                None,
            ),
            (
                MintRefusal::StoredClaims(serde_json::from_str::<Value>("{").unwrap_err()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "An internal error occurred.",
                None,
            ),
            (
                MintRefusal::StoredClaimsForged {
                    principal: "api_key:k-acme".into(),
                    key: "retry-1".into(),
                },
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "An internal error occurred.",
                None,
            ),
        ];
        for (refusal, status, code, message, details) in cases {
            let error = ApiError::from(refusal);
            assert_eq!(error.status(), status, "{code}");
            let report = error.report();
            assert_eq!(
                (report.code, report.message.as_str(), report.details),
                (code, message, details)
            );
        }
    }

    #[test]
    fn internal_causes_are_logged_not_sent() {
        let error = ApiError::from(StoreError::Database(sqlx::Error::ColumnNotFound(
            "secret_column".into(),
        )));
        let report = error.report();
        assert_eq!(report.code, "internal_error");
        assert!(
            !report.message.contains("secret_column"),
            "{}",
            report.message
        );
        assert!(report.cause.is_some_and(|c| c.contains("secret_column")));
    }

    /// A replay refused for its stored claims logs (once, as the request's ERROR line) which
    /// row it was, never the claims, and sends nothing of it.
    #[test]
    fn a_forged_replay_names_its_row_in_the_log_only() {
        let report = ApiError::from(MintRefusal::StoredClaimsForged {
            principal: "api_key:k-acme".into(),
            key: "retry-1".into(),
        })
        .report();
        assert_eq!(report.code, "internal_error");
        assert!(!report.message.contains("retry-1"), "{}", report.message);
        let cause = report.cause.unwrap_or_default();
        assert!(
            cause.contains("principal api_key:k-acme") && cause.contains("key retry-1"),
            "{cause}"
        );
    }

    /// Every code the server can answer with is in the OpenAPI document's enum for its status.
    #[test]
    fn every_code_is_documented_under_its_status() {
        let documented = |status: StatusCode, code: &str| {
            super::super::openapi::ERROR_CODES
                .iter()
                .any(|(s, codes)| *s == status.as_str() && codes.contains(&code))
        };
        let errors = vec![
            ApiError::MissingCredentials,
            ApiError::InvalidCredentials { reason: "x".into() },
            ApiError::AmbiguousCredentials("x"),
            ApiError::InsufficientScope { needed: None },
            ApiError::InsufficientScope {
                needed: Some(Scope::ReadRevocations),
            },
            ApiError::Forbidden("x"),
            ApiError::SessionNotFound,
            ApiError::TokenNotFound,
            ApiError::SessionClosed,
            ApiError::IdempotencyKeyReused,
            ApiError::IdempotencyKeyInUse,
            ApiError::InvalidJson("x".into()),
            ApiError::UnsupportedMediaType,
            ApiError::PayloadTooLarge,
            ApiError::Validation(Map::new()),
            ApiError::InvalidEndCompany,
            ApiError::Directory(DirectoryRefusal::NotFound("tenant")),
            ApiError::Directory(DirectoryRefusal::NotFound("end company")),
            ApiError::Directory(DirectoryRefusal::NotFound("agent")),
            ApiError::Directory(DirectoryRefusal::NotFound("session")),
            ApiError::Directory(DirectoryRefusal::TenantNotFound("t".into())),
            ApiError::Directory(DirectoryRefusal::EntraTenantIdTaken("t".into())),
            ApiError::Directory(DirectoryRefusal::PlatformFlag),
            ApiError::Directory(DirectoryRefusal::AgentOfAnotherTenant {
                id: 1,
                tenant_id: "t".into(),
            }),
            ApiError::Directory(DirectoryRefusal::SessionOfAnotherTenant("t".into())),
            ApiError::Directory(DirectoryRefusal::InvalidEndCompany("t".into())),
            ApiError::Directory(DirectoryRefusal::NeoSupportSessionExists("s".into())),
            ApiError::Directory(DirectoryRefusal::EndCompanyInUse(1)),
            ApiError::Directory(DirectoryRefusal::TenantInUse("sessions")),
            ApiError::InvalidAgentIds(vec![1]),
            ApiError::RateLimited {
                retry_after: Duration::from_secs(1),
                limit: Limit::PerPrincipal,
            },
            ApiError::EntraUnavailable {
                retry_after: Duration::from_secs(1),
            },
            ApiError::DatabaseUnavailable(StoreError::Unavailable),
            ApiError::NotReady {
                database: "unavailable",
                recorder: "ok",
                signing_keys: "ok",
            },
            ApiError::Store(StoreError::UnsupportedUrl),
            ApiError::Internal("x".into()),
        ];
        for error in errors {
            let status = error.status();
            let code = error.report().code;
            assert!(documented(status, code), "{code} under {status}");
        }
        for status in [400u16, 404, 405, 413, 415, 429, 500, 503] {
            let status = StatusCode::from_u16(status).unwrap();
            let code = ErrorReport::for_status(status).code;
            assert!(documented(status, code), "{code} under {status}");
        }
    }
}
