//! In-memory GCRA buckets (the `governor` crate), one keyed limiter per distinct quota.
//! Stale keys are swept so memory stays bounded under a flood of distinct keys.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_trait::async_trait;
use governor::{
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    state::keyed::DashMapStateStore,
    RateLimiter,
};

use super::{BackendError, Decision, LimitBackend, Quota};

type KeyedLimiter =
    RateLimiter<String, DashMapStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct MemoryLimits {
    limiters: Mutex<HashMap<Quota, Arc<KeyedLimiter>>>,
    /// Keys whose last `acquire` was refused, until when: what `peek` answers from.
    exhausted: Mutex<HashMap<String, Instant>>,
    clock: DefaultClock,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLimits {
    pub fn new() -> Self {
        Self {
            limiters: Mutex::new(HashMap::new()),
            exhausted: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Sweeps every `interval` until the limits are dropped.
    pub fn spawn_sweeper(limits: &Arc<Self>, interval: Duration) {
        let limits = Arc::downgrade(limits);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(limits) = limits.upgrade() else {
                    break;
                };
                limits.sweep();
            }
        });
    }

    /// Forgets buckets that are full again (indistinguishable from new ones) and expired
    /// exhaustion marks.
    pub fn sweep(&self) {
        let limiters: Vec<Arc<KeyedLimiter>> = self.lock_limiters().values().cloned().collect();
        for limiter in limiters {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        let now = Instant::now();
        let mut exhausted = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
        exhausted.retain(|_, until| *until > now);
        exhausted.shrink_to_fit();
    }

    /// How many keys the buckets hold right now.
    pub fn tracked_keys(&self) -> usize {
        let buckets: usize = self.lock_limiters().values().map(|l| l.len()).sum();
        buckets
            + self
                .exhausted
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len()
    }

    fn lock_limiters(&self) -> std::sync::MutexGuard<'_, HashMap<Quota, Arc<KeyedLimiter>>> {
        self.limiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limiter(&self, quota: Quota) -> Arc<KeyedLimiter> {
        let mut limiters = self.lock_limiters();
        Arc::clone(limiters.entry(quota).or_insert_with(|| {
            let per_minute = NonZeroU32::new(quota.per_minute).unwrap_or(NonZeroU32::MIN);
            let burst = NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN);
            let gcra = governor::Quota::per_minute(per_minute).allow_burst(burst);
            Arc::new(RateLimiter::dashmap(gcra).with_middleware::<StateInformationMiddleware>())
        }))
    }
}

#[async_trait]
impl LimitBackend for MemoryLimits {
    async fn acquire(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        let limiter = self.limiter(quota);
        match limiter.check_key(&key.to_owned()) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let reset = quota.period() * quota.burst.saturating_sub(remaining);
                Ok(Decision::Allowed { remaining, reset })
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.clock.now());
                let mut exhausted = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
                exhausted.insert(key.to_owned(), Instant::now() + retry_after);
                Ok(Decision::Limited { retry_after })
            }
        }
    }

    async fn peek(&self, key: &str, quota: Quota) -> Result<Decision, BackendError> {
        let exhausted = self.exhausted.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Ok(match exhausted.get(key) {
            Some(until) if *until > now => Decision::Limited {
                retry_after: *until - now,
            },
            _ => Decision::Allowed {
                remaining: quota.burst,
                reset: Duration::ZERO,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn burst_then_limited_then_peek_says_so() {
        let limits = MemoryLimits::new();
        let quota = Quota {
            per_minute: 60,
            burst: 3,
        };
        for expected_remaining in [2, 1, 0] {
            match limits.acquire("k", quota).await.unwrap() {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, expected_remaining),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            limits.peek("k", quota).await.unwrap().is_allowed(),
            "not refused yet"
        );
        let Decision::Limited { retry_after } = limits.acquire("k", quota).await.unwrap() else {
            panic!("the fourth request is over the burst");
        };
        assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        assert!(!limits.peek("k", quota).await.unwrap().is_allowed());
        assert!(limits.acquire("other", quota).await.unwrap().is_allowed());
    }

    #[tokio::test]
    async fn a_flood_of_distinct_keys_is_swept_away() {
        let limits = MemoryLimits::new();
        // A bucket of this quota is full again 60 ns after its one request, so by the end of the
        // flood nearly every key is stale.
        let quota = Quota {
            per_minute: 1_000_000_000,
            burst: 1,
        };
        for i in 0..100_000 {
            limits.acquire(&format!("ip:{i}"), quota).await.unwrap();
        }
        limits.sweep();
        assert!(
            limits.tracked_keys() < 100,
            "{} keys left",
            limits.tracked_keys()
        );
    }
}
