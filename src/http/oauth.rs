//! The OAuth 2.0 face of the service, for standard clients: RFC 7662 token introspection at
//! `POST /oauth2/introspect`, a form in, the bare JSON answer out, errors as RFC 6749 §5.2
//! writes them. The rule it answers by is the envelope route's (`tokens::introspect`).

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{FromRequest, Request, State},
    http::{header::CONTENT_TYPE, HeaderValue, StatusCode},
    Json,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{
    envelope::Timings,
    error::ApiError,
    extract::{Authorized, ManageTokens},
    tokens::{self, Introspection},
    AppState,
};

pub use super::INTROSPECTION_PATH;

/// The `token_type` an active token has here: an OAuth access token type (RFC 6750), how the
/// chat service receives the token.
const TOKEN_TYPE: &str = "Bearer";

/// RFC 7662 §2.1, form-encoded.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IntrospectionForm {
    /// The token to introspect.
    #[schema(min_length = 1)]
    pub token: String,
    /// What the caller thinks the token is (`access_token`, …): this endpoint knows one kind
    /// of token and ignores the hint, whatever it says.
    pub token_type_hint: Option<String>,
}

/// An error as RFC 6749 §5.2 writes it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OAuthError {
    /// `invalid_request` (400, 413: the form is missing, malformed, repeats a parameter or is too
    /// large), `invalid_client` (401), `insufficient_scope` or `access_denied` (403),
    /// `temporarily_unavailable` (429, 503), `server_error` (500).
    #[schema(example = "invalid_client")]
    pub error: String,
    /// A sentence for humans.
    pub error_description: String,
}

#[utoipa::path(
    post,
    path = "/oauth2/introspect",
    operation_id = "oauth2.introspect",
    tag = "Tokens",
    summary = "RFC 7662 token introspection, for standard OAuth 2.0 clients",
    description = "The same answer as `POST /public-api/sessions/introspect`, as RFC 7662 writes it: a form (`token`, and `token_type_hint`, which is ignored) in, and out the bare object: `active: true` with the token's claims (`token_type` `Bearer`) for a token of ours that verifies, is recorded, is neither revoked nor expired (no leeway) and belongs to the caller's tenant (or is a Neo Support token the platform key minted); exactly `{\"active\": false}` for anything else. The caller is an API key holding `tokens:manage`, as HTTP Basic client credentials (user name: the key's id, e.g. `key_…`; password: the key; each form-urlencoded first, RFC 6749 §2.3.1) or as `Authorization: Bearer <key>`. Errors are RFC 6749 §5.2's `{error, error_description}`; a 401 challenges with the scheme the client used (both when it sent none).",
    request_body(content = IntrospectionForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The answer.", body = Introspection),
        (status = 400, description = "`invalid_request`: not a form (`application/x-www-form-urlencoded`), `token` missing or empty, or a parameter given twice.", body = OAuthError),
        (status = 401, description = "`invalid_client`: no credentials, or a key (or key id) that is invalid, revoked or of another environment.", body = OAuthError),
        (status = 403, description = "`insufficient_scope`: the key lacks `tokens:manage`; `access_denied`: not a service account (an end user's or dashboard user's token).", body = OAuthError),
        (status = 413, description = "`invalid_request`: the body is over the size limit.", body = OAuthError),
        (status = 429, description = "`temporarily_unavailable`: rate limited — see Retry-After.", body = OAuthError),
        (status = 503, description = "`temporarily_unavailable`: the database cannot serve right now — see Retry-After.", body = OAuthError),
    ),
    security(("basicAuth" = []), ("bearerAuth" = []))
)]
pub async fn introspect(
    State(state): State<Arc<AppState>>,
    Authorized { principal, .. }: Authorized<ManageTokens>,
    form: Form,
) -> Result<Json<Introspection>, ApiError> {
    tokens::may_introspect(&principal)?;
    let token =
        form.one("token")?
            .filter(|token| !token.is_empty())
            .ok_or(ApiError::InvalidRequest(
                "The parameter `token` is required.",
            ))?;
    // RFC 7662 §2.1: a hint the server does not know is ignored; we know one kind of token, so
    // every hint is. Given twice, it is still a malformed request.
    form.one("token_type_hint")?;
    let claims = tokens::introspect(&state, &principal, token, &mut Timings::default()).await?;
    Ok(Json(Introspection::of(claims, TOKEN_TYPE)))
}

/// The parameters of an `application/x-www-form-urlencoded` body, read under the body limit.
pub struct Form(Vec<(String, String)>);

impl Form {
    /// The value of a parameter sent at most once (RFC 6749 §3.2: parameters must not repeat).
    fn one(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let mut values = self.0.iter().filter(|(key, _)| key == name);
        match (values.next(), values.next()) {
            (None, _) => Ok(None),
            (Some((_, value)), None) => Ok(Some(value)),
            (Some(_), Some(_)) => Err(ApiError::InvalidRequest(
                "A parameter is given more than once.",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for Form {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_form_content_type(request.headers().get(CONTENT_TYPE)) {
            return Err(ApiError::InvalidRequest(
                "Send the parameters as application/x-www-form-urlencoded.",
            ));
        }
        let bytes =
            Bytes::from_request(request, state)
                .await
                .map_err(|rejection| match rejection.status() {
                    StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                    _ => ApiError::InvalidRequest("The body could not be read."),
                })?;
        Ok(Self(
            url::form_urlencoded::parse(&bytes).into_owned().collect(),
        ))
    }
}

/// `application/x-www-form-urlencoded`, parameters (a charset) allowed.
fn is_form_content_type(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| {
            essence
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_content_types() {
        let ok = |s: &'static str| is_form_content_type(Some(&HeaderValue::from_static(s)));
        assert!(ok("application/x-www-form-urlencoded"));
        assert!(ok("Application/X-WWW-Form-Urlencoded; charset=UTF-8"));
        assert!(!ok("application/json"));
        assert!(!ok("multipart/form-data"));
        assert!(!is_form_content_type(None));
    }
}
