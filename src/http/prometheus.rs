//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format. With `NEO_METRICS_LISTEN`
//! they are served on that address instead, and this route answers 404.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{header::CONTENT_TYPE, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};

use super::AppState;
use crate::metrics::StateLabel;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics_get",
    tag = "Meta",
    summary = "Prometheus metrics (OpenMetrics text)",
    description = "Requests, mints, authentication failures, rate-limit decisions, database pool and latency, the mint recorder, Entra JWKS fetches, the signing key's age, the cache invalidation feed and the standard `process_*` metrics. Label values are bounded. 404 when `NEO_METRICS_LISTEN` serves them elsewhere.",
    responses(
        (status = 200, description = "The metrics.", content_type = "application/openmetrics-text", body = String),
        (status = 404, description = "Served on `NEO_METRICS_LISTEN` instead."),
    )
)]
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if state.config.server.metrics_listen.is_some() {
        return StatusCode::NOT_FOUND.into_response();
    }
    exposition(&state)
}

/// Refreshes the gauges read at scrape time, then encodes everything.
pub fn exposition(state: &AppState) -> Response {
    let metrics = &state.metrics;
    let pool = state.store.pool_status();
    for (name, value) in [
        ("in_use", pool.open.saturating_sub(pool.idle)),
        ("idle", pool.idle),
        ("max", pool.max),
    ] {
        metrics
            .pool_connections
            .get_or_create(&StateLabel { state: name })
            .set(i64::from(value));
    }
    let now = chrono::Utc::now().timestamp();
    metrics.signing_key_age_seconds.set(
        state
            .issuer
            .ring()
            .active(now)
            .map(|k| now.saturating_sub(k.activates_at)),
    );
    let entra_age = state
        .authenticator
        .entra
        .as_ref()
        .and_then(|entra| entra.key_set_age())
        .map(|age| i64::try_from(age.as_secs()).unwrap_or(i64::MAX));
    metrics.jwks_age_seconds.set(entra_age);
    metrics
        .cache_feed_up
        .set(i64::from(state.freshness.is_live()));
    metrics
        .session_cache_entries
        .set(i64::try_from(state.minter.sessions().sessions_held()).unwrap_or(i64::MAX));
    (
        [(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS))],
        metrics.encode(),
    )
        .into_response()
}
