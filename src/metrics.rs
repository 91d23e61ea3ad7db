//! Prometheus metrics (`GET /metrics`, or `NEO_METRICS_LISTEN`). Every label value comes from a
//! closed set written here or from our own route templates: never a key id, jti, tenant-supplied
//! string or address.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MintLabels {
    /// `api_key`, `entra_user`, `end_user`, or `none` (refused before authentication).
    pub principal_kind: &'static str,
    /// `ok`, or the error code of the refusal.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// `per_principal` or `failed_auth_per_ip`.
    pub limit: &'static str,
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// `allowed` or `limited`.
    pub decision: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

/// Seconds, from 0.5 ms to about 8 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15)
}

/// All metrics of one process.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabel, Histogram>,
    pub mints: Family<MintLabels, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub rate_limit_decisions: Family<LimitLabels, Counter>,
    pub redis_fallbacks: Counter,
    pub store_seconds: Family<OperationLabel, Histogram>,
    pub pool_connections: Family<ResultLabel, Gauge>,
    pub recorder_batch_rows: Histogram,
    pub recorder_commit_seconds: Histogram,
    pub jwks_fetches: Family<ResultLabel, Counter>,
    pub jwks_age_seconds: Gauge,
    pub signing_key_age_seconds: Gauge,
    pub cache_feed_up: Gauge,
    pub session_cache_entries: Gauge,
    pub entra_token_cache_hits: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("neo_sessions");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route template",
            request_seconds.clone(),
        );
        let mints = Family::<MintLabels, Counter>::default();
        registry.register(
            "mints",
            "Mint requests by principal kind and outcome (ok or the error code)",
            mints.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "auth_failures",
            "Refused credentials by reason",
            auth_failures.clone(),
        );
        let rate_limit_decisions = Family::<LimitLabels, Counter>::default();
        registry.register(
            "rate_limit_decisions",
            "Rate-limit decisions by limit, backend and decision",
            rate_limit_decisions.clone(),
        );
        let redis_fallbacks = Counter::default();
        registry.register(
            "rate_limit_redis_fallbacks",
            "Times Redis failed and the in-memory limits answered instead",
            redis_fallbacks.clone(),
        );
        let store_seconds = Family::<OperationLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "store_operation_duration_seconds",
            "Database calls by operation",
            store_seconds.clone(),
        );
        let pool_connections = Family::<ResultLabel, Gauge>::default();
        registry.register(
            "database_pool_connections",
            "Database pool connections by state (in_use, idle, max)",
            pool_connections.clone(),
        );
        let recorder_batch_rows = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 10),
        );
        registry.register(
            "mint_recorder_batch_rows",
            "Mint records per group commit",
            recorder_batch_rows.clone(),
        );
        let recorder_commit_seconds = Histogram::new(latency_buckets());
        registry.register(
            "mint_recorder_commit_duration_seconds",
            "Group-commit latency of mint records",
            recorder_commit_seconds.clone(),
        );
        let jwks_fetches = Family::<ResultLabel, Counter>::default();
        registry.register(
            "entra_jwks_fetches",
            "Entra JWKS fetches by result",
            jwks_fetches.clone(),
        );
        let jwks_age_seconds = Gauge::default();
        registry.register(
            "entra_jwks_age_seconds",
            "Age of the Entra key set held (-1: none)",
            jwks_age_seconds.clone(),
        );
        let signing_key_age_seconds = Gauge::default();
        registry.register(
            "signing_key_age_seconds",
            "Seconds since the active signing key started signing (-1: none)",
            signing_key_age_seconds.clone(),
        );
        let cache_feed_up = Gauge::default();
        registry.register(
            "cache_invalidation_feed_up",
            "1 while the change notifications that keep the caches exact are received; 0 while caches are bypassed",
            cache_feed_up.clone(),
        );
        let session_cache_entries = Gauge::default();
        registry.register(
            "session_cache_entries",
            "Sessions held by the session cache (at most NEO_SESSION_CACHE_ENTRIES)",
            session_cache_entries.clone(),
        );
        let entra_token_cache_hits = Counter::default();
        registry.register(
            "entra_token_cache_hits",
            "Entra tokens accepted without a new RSA verification: the same token, verified before, unexpired, its key still current",
            entra_token_cache_hits.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running version", build);
        Self {
            registry,
            requests,
            request_seconds,
            mints,
            auth_failures,
            rate_limit_decisions,
            redis_fallbacks,
            store_seconds,
            pool_connections,
            recorder_batch_rows,
            recorder_commit_seconds,
            jwks_fetches,
            jwks_age_seconds,
            signing_key_age_seconds,
            cache_feed_up,
            session_cache_entries,
            entra_token_cache_hits,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    pub fn observe_store(&self, operation: &'static str, elapsed: Duration) {
        self.store_seconds
            .get_or_create(&OperationLabel { operation })
            .observe(elapsed.as_secs_f64());
    }
}
