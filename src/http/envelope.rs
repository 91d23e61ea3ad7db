//! The `{data, meta}` / `{error, meta}` envelope every answer is wrapped in (docs/api.md,
//! "Envelope, request ids, errors"), and the timings that feed `meta`.

use std::{collections::BTreeMap, time::Instant};

use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::request_context::RequestContext;

/// Milliseconds spent per phase of a request; `total` is added when the envelope is built.
#[derive(Debug, Default)]
pub struct Timings(BTreeMap<&'static str, f64>);

impl Timings {
    /// Runs `fut`, adding its duration to `phase`.
    pub async fn time<T>(
        &mut self,
        phase: &'static str,
        fut: impl std::future::Future<Output = T>,
    ) -> T {
        let start = Instant::now();
        let out = fut.await;
        self.add(phase, start);
        out
    }

    pub fn add(&mut self, phase: &'static str, since: Instant) {
        self.add_elapsed(phase, since.elapsed());
    }

    /// Adds `elapsed` to `phase`.
    pub fn add_elapsed(&mut self, phase: &'static str, elapsed: std::time::Duration) {
        *self.0.entry(phase).or_default() += elapsed.as_secs_f64() * 1000.0;
    }
}

/// Cursor pagination of list responses (part of the public contract's shared schemas).
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    #[schema(nullable)]
    pub next_cursor: Option<String>,
    pub has_more: bool,
}

/// The query parameters of a list's page, as the OpenAPI document declares them: `page_limit`
/// reads `limit`, and each list decodes its own `cursor` (an opaque position it gave out).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
    /// `meta.pagination.next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Rows a list answers per page by default, and at most.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 200;

/// A list request's `limit` query parameter: the default when absent, else 1 to 200.
pub fn page_limit(
    query: &std::collections::HashMap<String, String>,
) -> Result<u32, super::error::ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                super::error::ApiError::invalid_field("limit", "must be an integer from 1 to 200")
            }),
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SuccessMeta {
    pub request_id: Uuid,
    /// Milliseconds per phase; always `total` and, where the database was used, `db`.
    #[schema(value_type = BTreeMap<String, f64>)]
    pub timings_ms: BTreeMap<&'static str, f64>,
    /// Non-fatal warnings about the created/updated resource.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pagination: Option<Pagination>,
}

impl SuccessMeta {
    pub fn new(ctx: RequestContext, timings: Timings, warnings: Vec<String>) -> Self {
        let mut timings_ms = timings.0;
        timings_ms.entry("db").or_insert(0.0);
        timings_ms.insert("total", ctx.started.elapsed().as_secs_f64() * 1000.0);
        for value in timings_ms.values_mut() {
            *value = (*value * 1000.0).round() / 1000.0;
        }
        Self {
            request_id: ctx.request_id,
            timings_ms,
            warnings,
            pagination: None,
        }
    }
}

/// A success envelope: `{"data": ..., "meta": ...}`.
#[derive(Debug, Serialize)]
pub struct Success<T> {
    pub data: T,
    pub meta: SuccessMeta,
}

impl<T> Success<T> {
    pub fn new(data: T, meta: SuccessMeta) -> Json<Self> {
        Json(Self { data, meta })
    }
}

/// The error envelope every error response carries (documentation of what `ErrorReport` renders).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
    pub meta: ErrorMeta,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable error code.
    pub code: String,
    pub message: String,
    #[schema(additional_properties)]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorMeta {
    #[schema(nullable)]
    pub request_id: Option<Uuid>,
}
