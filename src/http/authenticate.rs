//! The bearer layer: resolves the request's credential into a [`Principal`] (via
//! [`crate::auth::Authenticator`]) before any handler runs, or refuses it in the envelope.
//! Failed authentications take from the client address's budget.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use super::{error::ApiError, request_context::drain_body, AppState};
use crate::ratelimit::{client_ip, Decision};

/// Runs via `from_fn_with_state` on the routes that need a caller. A client over its
/// failed-authentication budget is refused before its credential is looked up; each failed
/// authentication takes from that budget, a successful one does not.
pub async fn require_principal(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let client_ip = client_ip(
        &state.config.server.trusted_proxies,
        peer,
        request.headers(),
    );
    if let Some(retry_after) = state.limits.auth_failures_exhausted(&client_ip).await {
        drain_body(request).await;
        return ApiError::RateLimited { retry_after }.into_response();
    }
    match state.authenticator.authenticate(request.headers()).await {
        Ok(principal) => {
            let span = tracing::Span::current();
            span.record("principal_kind", principal.kind());
            span.record("principal_id", principal.id());
            span.record("tenant", principal.tenant_id());
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            let response = if error.is_failed_authentication() {
                match state.limits.record_auth_failure(&client_ip).await {
                    Decision::Limited { retry_after } => {
                        ApiError::RateLimited { retry_after }.into_response()
                    }
                    Decision::Allowed { .. } => ApiError::from(error).into_response(),
                }
            } else {
                ApiError::from(error).into_response()
            };
            drain_body(request).await;
            response
        }
    }
}
