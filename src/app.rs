//! Assembles the application: the state every request reads, and the router with its layer
//! stack, which reads top to bottom in the order a request meets it.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes, extract::DefaultBodyLimit, http::StatusCode, middleware::from_fn_with_state,
    Extension, Router,
};
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, timeout::TimeoutLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use crate::http::AppState;
use crate::{
    auth::{
        entra::EntraKeySource, ApiKeyVerifier, Authenticator, EntraVerifier, SessionTokenVerifier,
    },
    cache::Freshness,
    config::Config,
    http::{
        authenticate, health, jwks, metrics, openapi, rate_limit, request_context, sessions, tokens,
    },
    metrics::Metrics,
    ratelimit::RateLimits,
    store::{MintRecorder, SessionDirectory, Store},
    tokens::TokenIssuer,
};

/// Mint records written in one commit at most.
const MAX_MINT_BATCH: usize = 256;

/// The state of one running app. `entra_keys` is the Entra key source, present when Entra
/// login is configured. Starts the mint recorder, so it runs inside a Tokio runtime.
pub fn state(
    config: Config,
    store: Arc<Store>,
    issuer: Arc<TokenIssuer>,
    entra_keys: Option<Arc<dyn EntraKeySource>>,
    limits: RateLimits,
    metrics: Arc<Metrics>,
    freshness: Arc<Freshness>,
) -> Arc<AppState> {
    let entra = entra_keys.map(|keys| {
        EntraVerifier::new(
            keys,
            &config.entra,
            Arc::clone(&store),
            Arc::clone(&freshness),
            metrics.entra_token_cache_hits.clone(),
        )
    });
    let authenticator = Authenticator {
        api_keys: ApiKeyVerifier::new(
            Arc::clone(&store),
            config.api_key.env.clone(),
            Duration::from_secs(config.api_key.last_used_resolution_seconds),
            Duration::from_secs(config.api_key.cache_seconds),
            Arc::clone(&freshness),
        ),
        session_tokens: SessionTokenVerifier::new(Arc::clone(&issuer), config.token.leeway_seconds),
        entra,
    };
    let directory =
        SessionDirectory::new(Arc::clone(&store), config.cache.session_entries, &freshness);
    Arc::new(AppState {
        directory,
        recorder: MintRecorder::spawn(Arc::clone(&store), MAX_MINT_BATCH, Arc::clone(&metrics)),
        config,
        store,
        issuer,
        authenticator,
        limits,
        readiness: health::ReadinessCache::default(),
        metrics,
        freshness,
    })
}

/// Every route, each registered with its OpenAPI documentation, so none goes undocumented.
fn api_routes(state: &Arc<AppState>) -> OpenApiRouter<Arc<AppState>> {
    // Routes that need a caller. `route_layer` wraps what is there already, so the layer added
    // last runs first: bearer authentication (with the failed-auth limit per client IP), then
    // the per-principal limit, then the handler.
    let authenticated = OpenApiRouter::new()
        .routes(routes!(
            sessions::mint_session_token,
            tokens::list_session_tokens
        ))
        .routes(routes!(
            tokens::get_session_token,
            tokens::revoke_session_token
        ))
        .routes(routes!(tokens::introspect_session_token))
        .routes(routes!(tokens::revoke_session_tokens))
        .routes(routes!(tokens::revocations))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            rate_limit::per_principal,
        ))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            authenticate::require_principal,
        ));

    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(openapi::docs))
        .routes(routes!(jwks::jwks))
        .routes(routes!(jwks::openid_configuration))
        .routes(routes!(metrics::metrics))
        .merge(authenticated)
}

/// The router and the layers every request passes, outermost first.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_seconds);
    let (routes, document) = api_routes(&state).split_for_parts();
    let mut document = serde_json::to_value(&document).unwrap_or_default();
    openapi::document_responses(&mut document);
    let document = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());

    let layers = ServiceBuilder::new()
        // Outermost, so that it sees every response: the request id, the span every log line of
        // the request carries, one log line per request, and the envelope for every error the
        // layers below produce (their own 404/405/413/415/503 and panics included).
        .layer(from_fn_with_state(
            Arc::clone(&state),
            request_context::request_context,
        ))
        // A panicking handler becomes a 500 (rendered by the layer above), not a dropped
        // connection; inside the request context so the panic is logged with its request id.
        .layer(CatchPanicLayer::custom(request_context::panic_response))
        // The one body limit, before authentication: a declared Content-Length over it is 413
        // before anything is read or looked up (and before a timer is armed), and a chunked body
        // is cut off at the limit as it is read. axum's own default limit (2 MiB, in the
        // extractors) is turned off so that this is the only number to configure.
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(DefaultBodyLimit::disable())
        // A request that takes too long is abandoned with 503 `timeout`, whatever it waits on
        // (reading the body, authentication, the database).
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        // The OpenAPI document, serialized once, for the route that serves it.
        .layer(Extension(openapi::OpenApiJson(document)));

    routes
        .fallback(|| async { StatusCode::NOT_FOUND })
        .method_not_allowed_fallback(|| async { StatusCode::METHOD_NOT_ALLOWED })
        .layer(layers)
        .with_state(state)
}

/// The router of `NEO_METRICS_LISTEN`: `/metrics` alone, without the public API's layers.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(state): axum::extract::State<Arc<AppState>>| async move {
                    metrics::exposition(&state)
                },
            ),
        )
        .with_state(state)
}
