//! The bearer layer: resolves the request's credential into a [`Principal`] (via
//! [`crate::auth::Authenticator`]) before any handler runs, or refuses it in the envelope.
//! Failed authentications take from the client address's budget. The OAuth endpoint's layer
//! ([`require_client`]) also takes an API key as HTTP Basic client credentials.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{header::WWW_AUTHENTICATE, HeaderValue, StatusCode},
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
    auth::{Lookups, Scheme},
    metrics::ReasonLabel,
    ratelimit::{client_ip, ClientIp, Decision},
};

/// Runs via `from_fn_with_state` on the routes that need a caller. Each failed authentication
/// takes from the client address's budget; a successful one does not. An address over its
/// budget has its failures refused (the per-address 429), not its callers: a credential that
/// verifies is served, so one noisy client behind a shared address cannot lock every tenant
/// out. The lookups (database, Entra JWKS) it takes to tell are paced per address instead (one
/// at a time, at most 50 a second: `auth::lookup_lanes`), so a guesser cannot make unbounded
/// lookups either.
pub async fn require_principal(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    authenticate(state, request, next, Accepted::Bearer).await
}

/// [`require_principal`] for the OAuth 2.0 endpoint (RFC 7662 introspection): the bearer
/// credential, or an API key as HTTP Basic client credentials (RFC 6749 §2.3.1, the user name
/// being the key's id). A 401 challenges with the scheme the client used, and with both when
/// it sent neither (RFC 6749 §5.2).
pub async fn require_client(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let scheme = Scheme::of(request.headers());
    let mut response = authenticate(state, request, next, Accepted::BearerOrBasic).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let basic = HeaderValue::from_static("Basic realm=\"neo-sessions\", charset=\"UTF-8\"");
        let headers = response.headers_mut();
        match scheme {
            Scheme::Basic => {
                headers.insert(WWW_AUTHENTICATE, basic);
            }
            Scheme::Bearer => {}
            Scheme::Other => {
                headers.append(WWW_AUTHENTICATE, basic);
            }
        }
    }
    response
}

/// The credentials a route takes.
#[derive(Clone, Copy)]
enum Accepted {
    Bearer,
    BearerOrBasic,
}

async fn authenticate(
    state: Arc<AppState>,
    mut request: Request,
    next: Next,
    accepted: Accepted,
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
    let lane = exhausted.map(|_| state.authenticator.lanes.lane(client_ip.bucket_key()));
    let lookups = match &lane {
        Some(lane) => Lookups::Paced(lane),
        None => Lookups::Allowed,
    };
    let authenticator = &state.authenticator;
    let authenticated = match accepted {
        Accepted::Bearer => authenticator.authenticate(request.headers(), lookups).await,
        Accepted::BearerOrBasic => {
            authenticator
                .authenticate_client(request.headers(), lookups)
                .await
        }
    };
    // The address's lane is held only while its lookup may run.
    drop(lane);
    let error = match authenticated {
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
        // Over budget already: a failure is answered with the per-address limit; anything
        // else (an outage of ours, a valid credential's scope) as usual.
        Some(retry_after) if error.is_failed_authentication() => per_ip(retry_after),
        None if error.is_failed_authentication() => {
            match state.limits.record_auth_failure(&client_ip).await {
                Decision::Limited { retry_after } => per_ip(retry_after),
                Decision::Allowed { .. } => ApiError::from(error).into_response(),
            }
        }
        _ => ApiError::from(error).into_response(),
    };
    drain_body(request).await;
    response
}
