//! Builds and runs the service: [`App::build`] turns a configuration into a bound listener and
//! the state every request reads, [`App::run_until_stopped`] serves it; the router's layer stack
//! reads top to bottom in the order a request meets it.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;

use axum::{
    body::Bytes,
    extract::DefaultBodyLimit,
    http::{
        header::{CACHE_CONTROL, X_CONTENT_TYPE_OPTIONS},
        HeaderValue, StatusCode,
    },
    middleware::from_fn_with_state,
    Extension, Router,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, set_header::SetResponseHeaderLayer,
    timeout::TimeoutLayer,
};
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use crate::http::AppState;
use crate::{
    auth::{
        entra::{self, EntraKeySource},
        ApiKeyVerifier, Authenticator, EntraVerifier, LookupLanes, SessionTokenVerifier,
    },
    config::{self, Config},
    freshness::Freshness,
    http::{
        authenticate, directory, docs, health, jwks, oauth, openapi, prometheus, rate_limit,
        request_context, sessions, tokens,
    },
    metrics::Metrics,
    mint::{Minter, TtlBounds},
    ratelimit::RateLimits,
    server, signing,
    store::{self, MintRecorder, SessionCache, Store},
    tokens::TokenIssuer,
};

/// Mint records written in one commit at most.
const MAX_MINT_BATCH: usize = 256;
/// Connections the separate metrics listener (`server.metrics_listen`) holds at once.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// The service, built: its listener bound and its state ready (store connected and migrated,
/// signing keys loaded, caches following the database, background tasks started).
/// [`App::run_until_stopped`] serves it. Tests build as many as they like in one process, each
/// on `127.0.0.1:0`.
pub struct App {
    state: Arc<AppState>,
    listener: TcpListener,
    address: SocketAddr,
    /// `server.metrics_listen`'s listener, when `/metrics` is served apart.
    metrics_listener: Option<TcpListener>,
}

impl App {
    /// Binds `server.listen` (and `server.metrics_listen`) first, so a taken port fails before
    /// the database is touched, then builds the state.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_serving(config, false).await
    }

    /// [`App::build`] for `serve --demo`: unless `server.public_url` says otherwise, the
    /// discovery document's URLs are the address it listens on (the port chosen, for `:0`).
    pub async fn build_demo(config: Config) -> anyhow::Result<Self> {
        Self::build_serving(config, true).await
    }

    async fn build_serving(config: Config, demo: bool) -> anyhow::Result<Self> {
        let listen = config.server.listen;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| ListenError::new(listen, "server.listen", error))?;
        let address = listener.local_addr()?;
        let metrics_listener = match config.server.metrics_listen {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .map_err(|error| ListenError::new(address, "server.metrics_listen", error))?,
            ),
            None => None,
        };
        let public_url = match &config.server.public_url {
            Some(url) => url.as_str().to_owned(),
            None if demo => format!("http://{address}"),
            None => config.token.issuer.trim_end_matches('/').to_owned(),
        };
        let state = build_state(config, public_url).await?;
        Ok(Self {
            state,
            listener,
            address,
            metrics_listener,
        })
    }

    /// The address it listens on (the port chosen, for `:0`).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// What requests read: the store, the issuer, the caches, the configuration.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves until `shutdown` resolves, with the connection limits of `server.*`; in-flight
    /// requests finish. With `server.metrics_listen`, `/metrics` is served there as well.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            state,
            listener,
            metrics_listener,
            ..
        } = self;
        let limits = server::ConnectionLimits::from_config(&state.config.server);
        let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
        if let Some(metrics_listener) = metrics_listener {
            if let Ok(address) = metrics_listener.local_addr() {
                tracing::info!(%address, "metrics listening");
            }
            let router = metrics_router(Arc::clone(&state));
            // The same connection loop as the public listener (header and idle timers, a cap),
            // with room for a few scrapers rather than for every client.
            let metrics_limits = server::ConnectionLimits {
                max_connections: limits.max_connections.min(MAX_METRICS_CONNECTIONS),
                ..limits
            };
            let mut stopped = metrics_stopped;
            tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.changed().await;
                };
                let served =
                    server::serve_connections(metrics_listener, router, metrics_limits, stop).await;
                if let Err(error) = served {
                    tracing::error!(%error, "the metrics listener failed");
                }
            });
        }
        let app = router(state);
        let shutdown = async move {
            shutdown.await;
            let _ = stop_metrics.send(true);
        };
        server::serve_connections(listener, app, limits, shutdown)
            .await
            .context("server error")
    }
}

/// A listener that cannot be bound: the address, the setting that chose it, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} ({key}): {reason}")]
pub struct ListenError {
    pub address: SocketAddr,
    pub key: &'static str,
    reason: String,
}

impl ListenError {
    fn new(address: SocketAddr, key: &'static str, error: std::io::Error) -> Self {
        let set_it = match key {
            "server.listen" => "serve --listen, NEO_LISTEN or server.listen in the config file",
            _ => "NEO_METRICS_LISTEN or server.metrics_listen in the config file",
        };
        let reason = match error.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "the address is already in use (another process listens there): stop it, or choose another address with {set_it}"
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "no interface of this host has that IP address: choose another with {set_it} (0.0.0.0 listens on every interface)"
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "permission denied (ports below 1024 need privileges): choose another port with {set_it}"
            ),
            _ => format!("{error}; the address is set with {set_it}"),
        };
        Self {
            address,
            key,
            reason,
        }
    }
}

/// How soon a lost cache-invalidation feed is re-opened.
const CHANGE_FEED_RETRY: Duration = Duration::from_secs(1);

/// Connects the store, applies migrations (when `server.migrate_on_start`), loads or generates
/// the signing key, and builds the state the router serves.
async fn build_state(config: Config, public_url: String) -> anyhow::Result<Arc<AppState>> {
    let metrics = Arc::new(Metrics::new());
    // The keys' secrets first: a missing key-encryption key stops start-up before the database
    // is touched.
    let key_source = signing::KeySource::load(&config).context("cannot load the signing keys")?;
    let store = open_store_for_serving(&config, Arc::clone(&metrics)).await?;
    // Caches answer once the change feed is live: no lookup is ever served from a cache that
    // could miss a change. The signing keys follow it too (a withdrawal reaches every replica
    // at once).
    let freshness = Freshness::down();
    let issuer = signing::start(&config, key_source, Arc::clone(&store), &freshness)
        .await
        .context("cannot load the signing keys")?;
    let entra_keys: Option<Arc<dyn EntraKeySource>> = if config.entra.enabled() {
        let cache = entra::jwks_cache(&config.entra, Arc::clone(&metrics))
            .context("cannot build the Entra JWKS client")?;
        // Start-up does not wait for Entra: API keys work while the JWKS is unreachable.
        cache.spawn_refresh(Duration::from_secs(config.entra.refresh_seconds.get()));
        Some(cache)
    } else {
        None
    };
    store::spawn_change_watcher(
        Arc::clone(&store),
        Arc::clone(&freshness),
        CHANGE_FEED_RETRY,
    );
    wait_for_change_feed(&freshness, Duration::from_secs(1)).await;
    // Today's mint record partition before the first mint (PostgreSQL): a partition attached
    // while mints are routed to the default one makes them retry (`postgres::record_mints`).
    // The retention task makes the days ahead, and this one again if it failed here.
    if let Err(error) = store
        .create_partitions(chrono::Utc::now().date_naive())
        .await
    {
        tracing::warn!(%error, "creating mint record partitions failed; retrying in the background");
    }
    store::spawn_retention(
        Arc::clone(&store),
        config.audit.retention_days,
        Duration::from_secs(u64::from(config.token.max_ttl)),
    );
    let limits = RateLimits::new(
        &config.rate_limit,
        Arc::clone(&store),
        Arc::clone(&metrics),
        Arc::clone(&freshness),
    )
    .context("invalid rate_limit.redis_url")?;
    limits.wait_for_redis(Duration::from_secs(1)).await;
    Ok(state(
        config, public_url, store, issuer, entra_keys, limits, metrics, freshness,
    ))
}

/// Gives the change feed up to `within` to connect, so that the first requests already use the
/// caches; start-up goes on either way (until it connects, every lookup reads the database).
async fn wait_for_change_feed(freshness: &Freshness, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !freshness.is_live() {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "the cache invalidation feed is not connected yet; caches are bypassed until it is"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The store requests use, behind the guard that fails fast while the database is gone. A
/// PostgreSQL that cannot be reached at start does not stop the service: it serves (liveness
/// 200, readiness and database work 503) and keeps trying in the background, so the start
/// order of an orchestrator does not matter.
async fn open_store_for_serving(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<store::Store>> {
    let error = match connect_store(config).await {
        Ok(store) => return Ok(Arc::new(store.guarded(metrics))),
        Err(error) => error,
    };
    let url = config.database_url();
    let unreachable = error.chain().any(|cause| {
        cause
            .downcast_ref::<store::StoreError>()
            .is_some_and(|e| e.is_unavailable())
    });
    if config::DatabaseBackend::of_url(&url) != Some(config::DatabaseBackend::Postgres)
        || !unreachable
    {
        return Err(error);
    }
    tracing::warn!(
        error = format!("{error:#}"),
        "PostgreSQL is not reachable at start; serving with readiness 503 and retrying in the background"
    );
    let store = store::connect_when_reachable(
        &url,
        config.database.max_connections.get(),
        config.server.migrate_on_start,
        metrics,
    )
    .context("invalid database URL")?;
    Ok(Arc::new(store))
}

/// Connects to the configured database. With `server.migrate_on_start` (the default) it first
/// creates the database if it is missing, then applies pending migrations.
pub async fn connect_store(config: &Config) -> anyhow::Result<Arc<store::Store>> {
    let url = config.database_url();
    let url = url.as_str();
    if config.server.migrate_on_start {
        store::create_database_if_missing(url)
            .await
            .with_context(|| {
                format!(
                    "cannot reach the database server or create the database {}",
                    config::redact_url(url)
                )
            })?;
    }
    let store = store::connect(url, config.database.max_connections.get())
        .await
        .with_context(|| format!("cannot connect to the database {}", config::redact_url(url)))?;
    if config.server.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    Ok(store)
}

/// The state of one app. `entra_keys` is the Entra key source, present when Entra
/// login is configured. Starts the mint recorder, so it runs inside a Tokio runtime.
#[allow(clippy::too_many_arguments)]
fn state(
    config: Config,
    public_url: String,
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
        lanes: LookupLanes::default(),
    };
    let minter = Minter::new(
        SessionCache::new(Arc::clone(&store), config.cache.session_entries, &freshness),
        Arc::clone(&issuer),
        MintRecorder::spawn(Arc::clone(&store), MAX_MINT_BATCH, Arc::clone(&metrics)),
        Arc::clone(&store),
        TtlBounds::from(&config.token),
    );
    Arc::new(AppState {
        minter,
        config,
        public_url,
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
        .routes(routes!(directory::list_tenants))
        .routes(routes!(
            directory::put_tenant,
            directory::get_tenant,
            directory::delete_tenant
        ))
        .routes(routes!(directory::list_end_companies))
        .routes(routes!(
            directory::put_end_company,
            directory::get_end_company,
            directory::delete_end_company
        ))
        .routes(routes!(directory::list_agents))
        .routes(routes!(
            directory::put_agent,
            directory::get_agent,
            directory::delete_agent
        ))
        .routes(routes!(directory::list_sessions))
        .routes(routes!(
            directory::put_session,
            directory::get_session,
            directory::delete_session
        ))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            rate_limit::per_principal,
        ))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            authenticate::require_principal,
        ));

    // The OAuth endpoint: the same layers, with an API key also taken as HTTP Basic client
    // credentials.
    let oauth = OpenApiRouter::new()
        .routes(routes!(oauth::introspect))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            rate_limit::per_principal,
        ))
        .route_layer(from_fn_with_state(
            Arc::clone(state),
            authenticate::require_client,
        ));

    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::live))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(docs::docs))
        .routes(routes!(docs::redoc_bundle))
        .routes(routes!(jwks::jwks))
        .routes(routes!(jwks::openid_configuration))
        .routes(routes!(prometheus::metrics))
        .merge(authenticated)
        .merge(oauth)
}

/// The router and the layers every request passes, outermost first.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.server.body_limit_bytes;
    let timeout = Duration::from_secs(state.config.server.request_timeout_seconds.get());
    let (routes, document) = api_routes(&state).split_for_parts();
    let document = Bytes::from(openapi::served_document(&document));

    let layers = ServiceBuilder::new()
        // Outermost, so that every answer has them, errors included. Tokens and claims must
        // not be kept by a cache or a browser: an answer is `no-store` unless its handler chose
        // a policy (the key set and the discovery document are cacheable).
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        // Then, so that it sees every response: the request id, the span every log line of the
        // request carries, one log line per request, and the envelope for every error the
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
                    prometheus::exposition(&state)
                },
            ),
        )
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .with_state(state)
}
