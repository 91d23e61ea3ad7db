//! The bearer layer: resolves the request's credential into a [`Principal`] (via
//! [`crate::auth::Authenticator`]) before any handler runs, or refuses it in the envelope.
//! Failed authentications take from the client address's budget.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{
    error::{ApiError, Limit},
    rate_limit,
    request_context::{drain_body, log_principal},
    AppState,
};
use crate::{
    auth::Lookups,
    metrics::ReasonLabel,
    ratelimit::{client_ip, ClientIp, Decision},
};

/// Runs via `from_fn_with_state` on the routes that need a caller. Each failed authentication
/// takes from the client address's budget; a successful one does not. An address over its
/// budget is refused the lookups (database, Entra JWKS) that an attacker would make us do, not
/// its callers: a credential that verifies from what is cached, or offline, is still served,
/// so one noisy client behind a shared address cannot lock every tenant out.
pub async fn require_principal(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Resolved once by the request context (after trusted proxies).
    let client_ip = match request.extensions().get::<ClientIp>() {
        Some(ip) => *ip,
        None => {
            let peer = request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0)
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            client_ip(
                &state.config.server.trusted_proxies,
                peer,
                request.headers(),
            )
        }
    };
    let exhausted = state.limits.auth_failures_exhausted(&client_ip).await;
    let lookups = match exhausted {
        Some(_) => Lookups::Refused,
        None => Lookups::Allowed,
    };
    let error = match state
        .authenticator
        .authenticate(request.headers(), lookups)
        .await
    {
        Ok(principal) => {
            log_principal(&principal);
            request.extensions_mut().insert(principal);
            return next.run(request).await;
        }
        Err(error) => error,
    };
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel {
            reason: error.reason(),
        })
        .inc();
    // The per-address 429 says which limit it is, with its own RateLimit headers.
    let per_ip = |retry_after| {
        let mut response = ApiError::RateLimited {
            retry_after,
            limit: Limit::FailedAuthPerIp,
        }
        .into_response();
        rate_limit::set_headers(
            &mut response,
            "failed-auth-per-ip",
            state.limits.auth_failure_quota(),
            Decision::Limited { retry_after },
        );
        response
    };
    let response = match exhausted {
        // Over budget already: whatever the reason, the answer is the per-address limit.
        Some(retry_after) => per_ip(retry_after),
        None if error.is_failed_authentication() => {
            match state.limits.record_auth_failure(&client_ip).await {
                Decision::Limited { retry_after } => per_ip(retry_after),
                Decision::Allowed { .. } => ApiError::from(error).into_response(),
            }
        }
        None => ApiError::from(error).into_response(),
    };
    drain_body(request).await;
    response
}
