//! Prometheus metrics (`GET /metrics`, or `NEO_METRICS_LISTEN`). Every label value comes from a
//! closed set written here or from our own route templates: never a key id, jti, tenant-supplied
//! string or address. Counters whose labels form a small closed set are created at zero, so a
//! rate or an alert has its series from the first scrape; a value that does not exist (no
//! signing key yet) is an absent series, never a sentinel.

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        MetricType,
    },
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// A request method as a label: the standard methods as themselves, anything else `other`
/// (HTTP allows any token as a method; a label must come from a closed set).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    const STANDARD: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ];
    STANDARD
        .iter()
        .find(|(standard, _)| standard == method)
        .map_or("other", |(_, label)| label)
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
pub struct StateLabel {
    /// `in_use`, `idle` or `max`.
    pub state: &'static str,
}

/// Every `reason` of `auth_failures_total` (`AuthError::reason`; a test there keeps them equal).
pub const AUTH_FAILURE_REASONS: [&str; 7] = [
    "missing",
    "invalid",
    "ambiguous",
    "insufficient_scope",
    "unknown_directory",
    "entra_unavailable",
    "store",
];

/// The principal kinds that can mint (an end user's token is refused the scope).
const MINTING_PRINCIPALS: [&str; 2] = ["api_key", "entra_user"];

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
    pub request_seconds: Family<RouteLabels, Histogram>,
    pub mints: Family<MintLabels, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub rate_limit_decisions: Family<LimitLabels, Counter>,
    pub redis_fallbacks: Counter,
    pub store_seconds: Family<OperationLabel, Histogram>,
    pub pool_connections: Family<StateLabel, Gauge>,
    pub recorder_batch_rows: Histogram,
    pub recorder_commit_seconds: Histogram,
    pub jwks_fetches: Family<ResultLabel, Counter>,
    pub jwks_age_seconds: OptionalGauge,
    pub signing_key_age_seconds: OptionalGauge,
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
        let mut root = Registry::default();
        // The standard process metrics keep their standard names; ours start `neo_sessions_`.
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("neo_sessions");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by method, route template and status",
            requests.clone(),
        );
        let request_seconds = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by method and route template",
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
        let pool_connections = Family::<StateLabel, Gauge>::default();
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
        let jwks_age_seconds = OptionalGauge::new(
            "entra_jwks_age_seconds",
            "Age of the Entra key set held (absent while none is held)",
        );
        registry.register_collector(Box::new(jwks_age_seconds.clone()));
        let signing_key_age_seconds = OptionalGauge::new(
            "signing_key_age_seconds",
            "Seconds since the active signing key started signing (absent while none signs)",
        );
        registry.register_collector(Box::new(signing_key_age_seconds.clone()));
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

        // At zero from the start: the closed sets.
        for reason in AUTH_FAILURE_REASONS {
            let _ = auth_failures.get_or_create(&ReasonLabel { reason });
        }
        for principal_kind in MINTING_PRINCIPALS {
            let _ = mints.get_or_create(&MintLabels {
                principal_kind,
                outcome: "ok",
            });
        }
        let metrics = Self {
            registry: root,
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
        };
        metrics.start_rate_limit_backend("memory");
        metrics
    }

    /// Creates a rate-limit backend's decisions at zero (memory always answers, Redis when
    /// configured).
    pub fn start_rate_limit_backend(&self, backend: &'static str) {
        for limit in ["per_principal", "failed_auth_per_ip"] {
            for decision in ["allowed", "limited"] {
                let _ = self.rate_limit_decisions.get_or_create(&LimitLabels {
                    limit,
                    backend,
                    decision,
                });
            }
        }
    }

    /// Creates the Entra key-set fetch results at zero (when Entra login is configured).
    pub fn start_jwks_fetches(&self) {
        for result in ["ok", "error"] {
            let _ = self.jwks_fetches.get_or_create(&ResultLabel { result });
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

/// A gauge that may have no value: while it has none, its series is absent from the scrape
/// (rather than a made-up `-1`).
#[derive(Debug, Clone)]
pub struct OptionalGauge {
    name: &'static str,
    help: &'static str,
    value: Arc<AtomicI64>,
}

impl OptionalGauge {
    /// No value.
    const ABSENT: i64 = i64::MIN;

    fn new(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            value: Arc::new(AtomicI64::new(Self::ABSENT)),
        }
    }

    pub fn set(&self, value: Option<i64>) {
        // i64::MIN seconds is no real age: clamped so that it cannot read as "absent".
        let stored = value.map_or(Self::ABSENT, |v| v.max(Self::ABSENT + 1));
        self.value.store(stored, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<i64> {
        let value = self.value.load(Ordering::Relaxed);
        (value != Self::ABSENT).then_some(value)
    }
}

impl Collector for OptionalGauge {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(value) = self.get() else {
            return Ok(());
        };
        let gauge = ConstGauge::new(value);
        let metric = encoder.encode_descriptor(self.name, self.help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }
}

/// The standard `process_*` metrics, read from `/proc` at each scrape (Linux; elsewhere, and
/// for anything `/proc` does not answer, the series is absent).
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = ProcessStats::read();
        if let Some(seconds) = stats.cpu_seconds {
            let counter = ConstCounter::new(seconds);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            counter.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                stats.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                stats.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                stats.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                stats.max_fds,
            ),
        ] {
            if let Some(value) = value {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)?;
            }
        }
        if let Some(start) = stats.start_time_seconds {
            let gauge = ConstGauge::new(start);
            gauge.encode(encoder.encode_descriptor(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                None,
                MetricType::Gauge,
            )?)?;
        }
        Ok(())
    }
}

/// What `/proc` says of this process; `None` for what it cannot tell.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<i64>,
    virtual_bytes: Option<i64>,
    open_fds: Option<i64>,
    max_fds: Option<i64>,
    start_time_seconds: Option<f64>,
}

/// `/proc` counts CPU time in clock ticks of USER_HZ, 100 on every Linux ABI in use (the
/// Prometheus Go client's procfs assumes the same).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    fn read() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).ok();
        let mut stats = Self::parse(
            read("/proc/self/stat").as_deref(),
            read("/proc/self/status").as_deref(),
            read("/proc/stat").as_deref(),
        );
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| i64::try_from(entries.count()).unwrap_or(i64::MAX));
        stats.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| i64::try_from(soft).unwrap_or(i64::MAX));
        stats
    }

    /// `stat`: `/proc/self/stat`; `status`: `/proc/self/status`; `system`: `/proc/stat`.
    fn parse(stat: Option<&str>, status: Option<&str>, system: Option<&str>) -> Self {
        // The fields after the command name (which may hold spaces and parentheses), from
        // field 3 (`state`) on: utime is field 14, stime 15, starttime 22.
        let fields: Vec<&str> = stat
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field =
            |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<u64>().ok().map(|v| v as f64) };
        let cpu_seconds = field(14)
            .zip(field(15))
            .map(|(user, system)| (user + system) / USER_HZ);
        let boot_time = system.and_then(|s| {
            s.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let start_time_seconds = field(22)
            .zip(boot_time)
            .map(|(ticks, boot)| boot as f64 + ticks / USER_HZ);
        let kilobytes = |key: &str| -> Option<i64> {
            let line = status?.lines().find_map(|line| line.strip_prefix(key))?;
            let kb: i64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
            kb.checked_mul(1024)
        };
        Self {
            cpu_seconds,
            resident_bytes: kilobytes("VmRSS:"),
            virtual_bytes: kilobytes("VmSize:"),
            open_fds: None,
            max_fds: None,
            start_time_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_parse_what_proc_writes() {
        let stat = "4242 (neo (sessions)) S 1 4242 4242 0 -1 4194560 1200 0 0 0 250 50 0 0 20 0 9 0 5000 123456789 3000 18446744073709551615";
        let status = "Name:\tneo-sessions\nVmSize:\t  120560 kB\nVmRSS:\t   24576 kB\n";
        let system = "cpu  1 2 3\nbtime 1764633600\nprocesses 10\n";
        let stats = ProcessStats::parse(Some(stat), Some(status), Some(system));
        assert_eq!(stats.cpu_seconds, Some(3.0));
        assert_eq!(stats.start_time_seconds, Some(1_764_633_650.0));
        assert_eq!(stats.resident_bytes, Some(24_576 * 1024));
        assert_eq!(stats.virtual_bytes, Some(120_560 * 1024));
        // Nothing readable: nothing made up.
        assert_eq!(
            ProcessStats::parse(None, Some("VmRSS: lots"), None),
            ProcessStats::default()
        );
    }

    #[test]
    fn an_optional_gauge_without_a_value_is_absent() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        assert!(
            !text.contains("neo_sessions_signing_key_age_seconds"),
            "{text}"
        );
        metrics.signing_key_age_seconds.set(Some(42));
        let text = metrics.encode();
        assert!(
            text.contains("# TYPE neo_sessions_signing_key_age_seconds gauge\nneo_sessions_signing_key_age_seconds 42\n"),
            "{text}"
        );
        metrics.signing_key_age_seconds.set(None);
        assert!(!metrics.encode().contains("signing_key_age_seconds 42"));
    }

    #[test]
    fn request_methods_are_a_closed_set() {
        use axum::http::Method;
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&odd), "other");
    }
}
