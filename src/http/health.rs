//! `GET /public-api/health`: liveness and readiness of the database; `GET /public-api/health/live`:
//! liveness alone, touching nothing (for process supervisors, and the HTTP ceiling in benchmarks).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{extract::State, Json};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    envelope::{ErrorEnvelope, Success, SuccessMeta, Timings},
    error::ApiError,
    request_context::RequestContext,
    AppState,
};
use crate::store::{RecorderStatus, Store};

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
        (status = 503, description = "Not ready: the database does not answer, the mint recorder is stopped or cannot commit, or no signing key is loaded yet (`details` says which).", body = ErrorEnvelope),
    )
)]
pub async fn health(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
) -> Result<Json<Success<Health>>, ApiError> {
    let mut timings = Timings::default();
    let database = timings
        .time("db", state.readiness.database(state.store.as_ref()))
        .await;
    let recorder = state.minter.recorder().status();
    let signing = state
        .issuer
        .ring()
        .active(chrono::Utc::now().timestamp())
        .is_some();
    if database.is_err() || recorder != RecorderStatus::Running || !signing {
        return Err(ApiError::NotReady {
            database: if database.is_ok() {
                "ok"
            } else {
                "unavailable"
            },
            recorder: recorder.as_str(),
            signing_keys: if signing { "ok" } else { "not_loaded" },
        });
    }
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

/// How long one database ping answers readiness for everyone; a failed ping for less, so a
/// database that comes back is seen soon.
const READINESS_TTL: Duration = Duration::from_secs(1);
const NOT_READY_TTL: Duration = Duration::from_millis(200);

/// The last readiness ping, shared: a flood of unauthenticated probes costs at most one ping a
/// second, and concurrent probes wait for the one ping in flight instead of each taking a
/// pooled connection from the mints.
#[derive(Default)]
pub struct ReadinessCache {
    last: tokio::sync::Mutex<Option<(Instant, bool)>>,
    pings: std::sync::atomic::AtomicU64,
}

impl ReadinessCache {
    /// How many pings readiness has sent.
    pub fn pings(&self) -> u64 {
        self.pings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the database answered a ping within the last second (pinging now if not).
    pub async fn database(&self, store: &Store) -> Result<(), ()> {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < if ok { READINESS_TTL } else { NOT_READY_TTL } {
                return if ok { Ok(()) } else { Err(()) };
            }
        }
        self.pings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ok = store.ping().await.is_ok();
        *last = Some((Instant::now(), ok));
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }
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
