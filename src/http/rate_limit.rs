//! The per-principal rate limit, after authentication: 429 with `Retry-After` when a caller is
//! over its budget, and the IETF draft `RateLimit-Policy` / `RateLimit` headers on every
//! response to an authenticated caller.

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    http::{HeaderName, HeaderValue},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    error::{ApiError, Limit},
    request_context::drain_body,
    AppState,
};
use crate::{
    auth::Principal,
    ratelimit::{whole_seconds, Decision, Quota},
};

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub async fn per_principal(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return next.run(request).await;
    };
    let quota = state.limits.quota_for(&principal).await;
    let decision = state.limits.acquire_for_principal(&principal, quota).await;
    let mut response = match decision {
        Decision::Allowed { .. } => next.run(request).await,
        Decision::Limited { retry_after } => {
            drain_body(request).await;
            ApiError::RateLimited {
                retry_after,
                limit: Limit::PerPrincipal,
            }
            .into_response()
        }
    };
    set_headers(&mut response, "per-principal", quota, decision);
    response
}

/// The IETF httpapi draft headers for the limit `name`: `RateLimit-Policy` (the quota `q` over
/// a window `w` in seconds, and the burst the bucket holds) and `RateLimit` (what is left now,
/// `r`, and when the bucket is full again, `t` seconds).
pub fn set_headers(response: &mut Response, name: &str, quota: Quota, decision: Decision) {
    let policy = format!(
        "\"{name}\";q={};w=60;burst={}",
        quota.per_minute, quota.burst
    );
    let current = match decision {
        Decision::Allowed { remaining, reset } => {
            let t = if reset.is_zero() {
                0
            } else {
                whole_seconds(reset)
            };
            format!("\"{name}\";r={remaining};t={t}")
        }
        Decision::Limited { retry_after } => {
            format!("\"{name}\";r=0;t={}", whole_seconds(retry_after))
        }
    };
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        headers.insert(RATELIMIT_POLICY.clone(), policy);
    }
    if let Ok(value) = HeaderValue::from_str(&current) {
        headers.insert(RATELIMIT.clone(), value);
    }
}
