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
    let headers = response.headers_mut();
    if let Ok(policy) = HeaderValue::from_str(&policy(quota)) {
        headers.insert(RATELIMIT_POLICY.clone(), policy);
    }
    if let Ok(value) = HeaderValue::from_str(&current(decision)) {
        headers.insert(RATELIMIT.clone(), value);
    }
    response
}

/// draft-ietf-httpapi-ratelimit-headers: the quota (`q`) over a window (`w`, seconds) and the
/// burst the bucket holds.
fn policy(quota: Quota) -> String {
    format!(
        "\"per-principal\";q={};w=60;burst={}",
        quota.per_minute, quota.burst
    )
}

/// What is left now (`r`) and when the bucket is full again (`t`, seconds).
fn current(decision: Decision) -> String {
    match decision {
        Decision::Allowed { remaining, reset } => {
            let t = if reset.is_zero() {
                0
            } else {
                whole_seconds(reset)
            };
            format!("\"per-principal\";r={remaining};t={t}")
        }
        Decision::Limited { retry_after } => {
            format!("\"per-principal\";r=0;t={}", whole_seconds(retry_after))
        }
    }
}
