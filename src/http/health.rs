//! `GET /public-api/health`: liveness and readiness of the database; `GET /public-api/health/live`:
//! liveness alone, touching nothing (for process supervisors, and the HTTP ceiling in benchmarks).

use std::sync::Arc;

use axum::{extract::State, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    envelope::{ErrorEnvelope, RequestContext, Success, SuccessMeta, Timings},
    error::ApiError,
    AppState,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` when the service answers and its database is reachable.
    pub status: &'static str,
    pub database: &'static str,
    pub version: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HealthEnvelope {
    pub data: Health,
    pub meta: SuccessMeta,
}

#[utoipa::path(
    get,
    path = "/public-api/health",
    operation_id = "public_api.health_get",
    tag = "Meta",
    summary = "Liveness and database readiness",
    responses(
        (status = 200, description = "Up, and the database answers.", body = HealthEnvelope),
        (status = 503, description = "The database does not answer.", body = ErrorEnvelope),
    )
)]
pub async fn health(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
) -> Result<Json<Success<Health>>, ApiError> {
    let mut timings = Timings::default();
    timings
        .time("db", state.store.ping())
        .await
        .map_err(ApiError::DatabaseUnavailable)?;
    let health = Health {
        status: "ok",
        database: "ok",
        version: env!("CARGO_PKG_VERSION"),
    };
    Ok(Success::new(
        health,
        SuccessMeta::new(ctx, timings, Vec::new()),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`: the process answers.
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LivenessEnvelope {
    pub data: Liveness,
    pub meta: SuccessMeta,
}

#[utoipa::path(
    get,
    path = "/public-api/health/live",
    operation_id = "public_api.health_live_get",
    tag = "Meta",
    summary = "Liveness only (touches nothing)",
    responses((status = 200, description = "The process answers.", body = LivenessEnvelope))
)]
pub async fn live(ctx: RequestContext) -> Json<Success<Liveness>> {
    Success::new(
        Liveness { status: "ok" },
        SuccessMeta::new(ctx, Timings::default(), Vec::new()),
    )
}
