//! Application state and the router: every layer in one stack that reads top to bottom.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware::{from_fn, from_fn_with_state},
    Extension, Router,
};
use tower_http::{
    catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, timeout::TimeoutLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    auth::{
        self, entra::EntraKeySource, ApiKeyVerifier, Authenticator, EntraVerifier,
        SessionTokenVerifier,
    },
    config::Config,
    http::{health, jwks, middleware, openapi, rate_limit, sessions},
    ratelimit::{RateLimits, TrustedProxies},
    store::{MintRecorder, Store},
    tokens::TokenIssuer,
};

/// What every request needs, behind one `Arc` (extractors clone it per request).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

pub struct Services {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub recorder: MintRecorder,
    pub issuer: Arc<TokenIssuer>,
    pub authenticator: Authenticator,
    pub limits: RateLimits,
    pub trusted_proxies: TrustedProxies,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// Mint records written in one commit at most.
const MAX_MINT_BATCH: usize = 256;

impl AppState {
    /// `entra_keys` is the Entra key source, present when Entra login is configured.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        issuer: TokenIssuer,
        entra_keys: Option<Arc<dyn EntraKeySource>>,
        limits: RateLimits,
    ) -> Self {
        let issuer = Arc::new(issuer);
        let entra =
            entra_keys.map(|keys| EntraVerifier::new(keys, &config.entra, Arc::clone(&store)));
        let authenticator = Authenticator {
            api_keys: ApiKeyVerifier::new(
                Arc::clone(&store),
                config.api_key.env.clone(),
                Duration::from_secs(config.api_key.last_used_resolution_seconds),
                Duration::from_secs(config.api_key.cache_seconds),
            ),
            session_tokens: SessionTokenVerifier::new(Arc::clone(&issuer)),
            entra,
        };
        let trusted_proxies =
            TrustedProxies::parse(&config.server.trusted_proxies).unwrap_or_default();
        Self(Arc::new(Services {
            recorder: MintRecorder::spawn(Arc::clone(&store), MAX_MINT_BATCH),
            config,
            store,
            issuer,
            authenticator,
            limits,
            trusted_proxies,
        }))
    }
}

/// Every route, each registered with its OpenAPI documentation, so none goes undocumented.
fn api_routes(state: &AppState) -> OpenApiRouter<AppState> {
    // Routes that need a caller: bearer authentication (with the failed-auth limit per client
    // IP), then the per-principal limit. `route_layer` wraps what is there, so the last is outermost.
    let authenticated = OpenApiRouter::new()
        .routes(routes!(sessions::mint_session_token))
        .route_layer(from_fn_with_state(state.clone(), rate_limit::per_principal))
        .route_layer(from_fn_with_state(state.clone(), auth::require_principal));

    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(jwks::jwks))
        .merge(authenticated)
}

/// The router with its layers, outermost first: request id + span + envelope → catch panic →
/// timeout → body limit → (per route) failed-auth limit + bearer authentication →
/// per-principal rate limit → handler.
pub fn router(state: AppState) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_seconds);
    let (routes, document) = api_routes(&state).split_for_parts();
    let document = Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    routes
        .fallback(|| async { StatusCode::NOT_FOUND })
        .method_not_allowed_fallback(|| async { StatusCode::METHOD_NOT_ALLOWED })
        // `Router::layer` wraps what is already there, so the last layer is the outermost.
        .layer(Extension(openapi::OpenApiJson(document)))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(from_fn(middleware::request_context))
        .with_state(state)
}
