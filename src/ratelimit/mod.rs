//! Rate limits: per principal (after authentication) and per client IP for failed
//! authentications (before the credential is looked up). GCRA buckets in one of two backends
//! behind [`LimitBackend`]: in memory (governor), or Redis so that replicas share one budget.
//! When Redis is unreachable the in-memory buckets answer until it is back.

mod client_ip;
mod memory;
mod redis;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;

pub use client_ip::{client_ip, ClientIp};
pub use memory::MemoryLimits;
pub use redis::RedisLimits;

use crate::{
    auth::Principal,
    config::RateLimitConfig,
    freshness::{Freshness, Topic, TtlCache},
    metrics::{LimitLabels, Metrics},
    store::{Store, StoreResult},
};

/// A GCRA quota: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    pub per_minute: u32,
    pub burst: u32,
}

impl Quota {
    /// The time one request "costs": 60 s / per_minute.
    pub fn period(&self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// `remaining` requests could follow at once; the bucket is full again after `reset`.
    Allowed {
        remaining: u32,
        reset: Duration,
    },
    Limited {
        retry_after: Duration,
    },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("rate-limit backend unavailable: {0}")]
pub struct BackendError(pub String);

#[async_trait]
pub trait LimitBackend: Send + Sync {
    /// Takes one request from `key`'s bucket.
    async fn acquire(&self, key: &str, quota: Quota) -> Result<Decision, BackendError>;
    /// Whether `key`'s bucket is exhausted right now, without taking anything from it.
    async fn peek(&self, key: &str, quota: Quota) -> Result<Decision, BackendError>;
}

#[derive(Clone, Copy)]
enum Op {
    Acquire,
    Peek,
}

impl Op {
    async fn run(
        self,
        backend: &dyn LimitBackend,
        key: &str,
        quota: Quota,
    ) -> Result<Decision, BackendError> {
        match self {
            Self::Acquire => backend.acquire(key, quota).await,
            Self::Peek => backend.peek(key, quota).await,
        }
    }
}

/// The rate limits of one process: configured quotas, per-tenant overrides, the backends.
pub struct RateLimits {
    principal_quota: Quota,
    auth_failure_quota: Quota,
    memory: Arc<MemoryLimits>,
    redis: Option<RedisLimits>,
    /// Whether the last Redis call failed (so transitions are logged once each way).
    redis_down: AtomicBool,
    overrides: TenantQuotas,
    metrics: Arc<Metrics>,
}

impl RateLimits {
    pub fn new(
        config: &RateLimitConfig,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        freshness: Arc<Freshness>,
    ) -> Result<Self, BackendError> {
        let redis = match &config.redis_url {
            Some(url) => Some(RedisLimits::new(
                secrecy::ExposeSecret::expose_secret(url),
                &config.redis_prefix,
                Duration::from_millis(config.redis_timeout_ms),
            )?),
            None => None,
        };
        if redis.is_some() {
            metrics.start_rate_limit_backend("redis");
        }
        let memory = Arc::new(MemoryLimits::new());
        MemoryLimits::spawn_sweeper(&memory, Duration::from_secs(30));
        Ok(Self {
            principal_quota: Quota {
                per_minute: config.per_minute.get(),
                burst: config.burst.get(),
            },
            auth_failure_quota: Quota {
                per_minute: config.auth_failure_per_minute.get(),
                burst: config.auth_failure_burst.get(),
            },
            memory,
            redis,
            redis_down: AtomicBool::new(false),
            overrides: TenantQuotas::new(
                store,
                Duration::from_secs(config.override_cache_seconds),
                freshness,
            ),
            metrics,
        })
    }

    /// The failed-authentication quota per client address.
    pub fn auth_failure_quota(&self) -> Quota {
        self.auth_failure_quota
    }

    /// Gives a configured Redis up to `within` to accept the first connection; start-up goes on
    /// either way (until Redis answers, this process's memory holds the budgets).
    pub async fn wait_for_redis(&self, within: Duration) {
        if let Some(redis) = &self.redis {
            if !redis.wait_connected(within).await {
                tracing::warn!(
                    redis = %redis.host,
                    "Redis at {} is not reachable yet; rate limits use this process's memory until it is",
                    redis.host
                );
            }
        }
    }

    /// The in-memory backend (for its size, and for sweeping in tests).
    pub fn memory(&self) -> &MemoryLimits {
        &self.memory
    }

    /// Redis when configured and reachable, else this process's memory.
    async fn call(&self, op: Op, limit: &'static str, key: &str, quota: Quota) -> Decision {
        let (decision, backend) = self.decide(op, key, quota).await;
        self.metrics
            .rate_limit_decisions
            .get_or_create(&LimitLabels {
                limit,
                backend,
                decision: if decision.is_allowed() {
                    "allowed"
                } else {
                    "limited"
                },
            })
            .inc();
        decision
    }

    async fn decide(&self, op: Op, key: &str, quota: Quota) -> (Decision, &'static str) {
        if let Some(redis) = &self.redis {
            if redis.available() {
                match op.run(redis, key, quota).await {
                    Ok(decision) => {
                        if self.redis_down.swap(false, Ordering::Relaxed) {
                            tracing::info!(
                                redis = %redis.host,
                                "Redis answers again; rate limits are shared across replicas"
                            );
                        }
                        return (decision, "redis");
                    }
                    Err(error) => {
                        redis.back_off();
                        if !self.redis_down.swap(true, Ordering::Relaxed) {
                            tracing::warn!(redis = %redis.host, %error, "Redis at {} unreachable; rate limits fall back to this process's memory", redis.host);
                        }
                    }
                }
            }
            self.metrics.redis_fallbacks.inc();
        }
        // The in-memory backend does not fail; if it ever did, fail open rather than lock out.
        let decision =
            op.run(self.memory.as_ref(), key, quota)
                .await
                .unwrap_or(Decision::Allowed {
                    remaining: 0,
                    reset: Duration::ZERO,
                });
        (decision, "memory")
    }

    /// The quota of `principal`: its tenant's override, else the configured one.
    pub async fn quota_for(&self, principal: &Principal) -> Quota {
        match self.overrides.get(principal.tenant_id()).await {
            Ok(Some(quota)) => quota,
            Ok(None) => self.principal_quota,
            Err(error) => {
                tracing::warn!(%error, "cannot read the tenant's rate-limit override; using the default");
                self.principal_quota
            }
        }
    }

    /// Takes one request from the principal's bucket.
    pub async fn acquire_for_principal(&self, principal: &Principal, quota: Quota) -> Decision {
        let key = format!("p:{}:{}", principal.kind(), principal.id());
        self.call(Op::Acquire, "per_principal", &key, quota).await
    }

    /// Before a credential is looked up: is this client over its failed-authentication budget?
    pub async fn auth_failures_exhausted(&self, ip: &ClientIp) -> Option<Duration> {
        let key = ip.bucket_key();
        match self
            .call(
                Op::Peek,
                "failed_auth_per_ip",
                &key,
                self.auth_failure_quota,
            )
            .await
        {
            Decision::Limited { retry_after } => Some(retry_after),
            Decision::Allowed { .. } => None,
        }
    }

    /// After a failed authentication: takes one from the client's failure budget.
    pub async fn record_auth_failure(&self, ip: &ClientIp) -> Decision {
        let key = ip.bucket_key();
        self.call(
            Op::Acquire,
            "failed_auth_per_ip",
            &key,
            self.auth_failure_quota,
        )
        .await
    }
}

/// Per-tenant quota overrides from the database, cached (exact while the change feed is live) so
/// a mint costs no extra query. Bounded by the number of tenants whose principals authenticated.
struct TenantQuotas {
    store: Arc<Store>,
    cache: TtlCache<String, Option<Quota>>,
}

impl TenantQuotas {
    fn new(store: Arc<Store>, ttl: Duration, freshness: Arc<Freshness>) -> Self {
        Self {
            store,
            cache: TtlCache::new(ttl, freshness, &[Topic::RateLimits]),
        }
    }

    async fn get(&self, tenant_id: &str) -> StoreResult<Option<Quota>> {
        if let Some(quota) = self.cache.get(tenant_id) {
            return Ok(quota);
        }
        let ticket = self.cache.ticket();
        let quota = self
            .store
            .tenant_rate_limit(tenant_id)
            .await?
            .map(|(per_minute, burst)| Quota { per_minute, burst });
        self.cache.insert(ticket, tenant_id.to_owned(), quota);
        Ok(quota)
    }
}

/// Whole seconds, rounded up, at least 1 (for `Retry-After`).
pub fn whole_seconds(duration: Duration) -> u64 {
    (duration.as_secs() + u64::from(duration.subsec_nanos() > 0)).max(1)
}
