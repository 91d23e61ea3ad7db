//! neo-sessions: mints short-lived JWTs bound to one chat session (SPEC.md).

pub mod app;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod ratelimit;
pub mod seed;
pub mod server;
pub mod signing;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use tokio::net::TcpListener;

use crate::{
    app::AppState,
    auth::entra::{self, EntraKeySource},
    config::Config,
    ratelimit::RateLimits,
};

/// How soon a lost cache-invalidation feed is re-opened.
const CHANGE_FEED_RETRY: Duration = Duration::from_secs(1);

/// Connects the store, applies migrations (when `server.migrate_on_start`), loads or generates
/// the signing key, and builds the state the router serves.
pub async fn build_state(config: Config) -> anyhow::Result<Arc<AppState>> {
    let metrics = Arc::new(metrics::Metrics::new());
    let store = open_store_for_serving(&config, Arc::clone(&metrics)).await?;
    let issuer = signing::start(&config, Arc::clone(&store))
        .await
        .context("cannot load the signing keys")?;
    let entra_keys: Option<Arc<dyn EntraKeySource>> = if config.entra.enabled() {
        let cache = entra::jwks_cache(&config.entra, Arc::clone(&metrics))
            .context("cannot build the Entra JWKS client")?;
        // Start-up does not wait for Entra: API keys work while the JWKS is unreachable.
        cache.spawn_refresh(Duration::from_secs(config.entra.refresh_seconds));
        Some(cache)
    } else {
        None
    };
    // Caches answer once the change feed is live: no lookup is ever served from a cache that
    // could miss a change.
    let freshness = cache::Freshness::down();
    store::spawn_change_watcher(
        Arc::clone(&store),
        Arc::clone(&freshness),
        CHANGE_FEED_RETRY,
    );
    wait_for_change_feed(&freshness, Duration::from_secs(1)).await;
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
    Ok(app::state(
        config, store, issuer, entra_keys, limits, metrics, freshness,
    ))
}

/// Gives the change feed up to `within` to connect, so that the first requests already use the
/// caches; start-up goes on either way (until it connects, every lookup reads the database).
async fn wait_for_change_feed(freshness: &cache::Freshness, within: Duration) {
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

/// An error and its causes on one line, each said once: a cause whose text the line already
/// holds (libraries often repeat their source in their own message) is left out.
pub fn describe_error(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The store requests use, behind the guard that fails fast while the database is gone. A
/// PostgreSQL that cannot be reached at start does not stop the service: it serves (liveness
/// 200, readiness and database work 503) and keeps trying in the background, so the start
/// order of an orchestrator does not matter.
async fn open_store_for_serving(
    config: &Config,
    metrics: Arc<metrics::Metrics>,
) -> anyhow::Result<Arc<dyn store::Store>> {
    let error = match connect_store(config).await {
        Ok(store) => return Ok(Arc::new(store::GuardedStore::new(store, metrics))),
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
        config.database.max_connections,
        config.server.migrate_on_start,
        metrics,
    )
    .context("invalid database URL")?;
    Ok(Arc::new(store))
}

/// Connects to the configured database. With `server.migrate_on_start` (the default) it first
/// creates the database if it is missing, then applies pending migrations.
pub async fn connect_store(config: &Config) -> anyhow::Result<Arc<dyn store::Store>> {
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
    let store = store::connect(url, config.database.max_connections)
        .await
        .with_context(|| format!("cannot connect to the database {}", config::redact_url(url)))?;
    if config.server.migrate_on_start {
        store.migrate().await.context("cannot apply migrations")?;
    }
    Ok(store)
}

/// Serves on an already-bound `listener` until `shutdown` resolves; in-flight requests finish.
/// Tests bind port 0 and start as many apps as they like in one process.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build_state(config).await?;
    serve(state, listener, shutdown).await
}

/// Serves `state` (from [`build_state`]) on `listener` until `shutdown` resolves, with the
/// connection limits of `server.*`.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = server::ConnectionLimits::from_config(&state.config.server);
    let (stop_metrics, metrics_stopped) = tokio::sync::watch::channel(false);
    if let Some(address) = state.config.server.metrics_listen {
        let metrics_listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (server.metrics_listen)"))?;
        tracing::info!(%address, "metrics listening");
        let router = app::metrics_router(Arc::clone(&state));
        let mut stopped = metrics_stopped;
        tokio::spawn(async move {
            let served = axum::serve(metrics_listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.changed().await;
                })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let app = app::router(state);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_metrics.send(true);
    };
    server::serve(listener, app, limits, shutdown)
        .await
        .context("server error")
}
