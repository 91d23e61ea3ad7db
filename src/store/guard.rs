//! Fail fast while the database is unreachable: once a call finds the connection gone, every
//! call is refused at once (`StoreError::Unavailable`) instead of waiting out the pool's acquire
//! timeout, while one background probe pings the database every 100 ms and lets calls through
//! again the moment it answers. It lives in the store handle: every operation goes through
//! [`Store::call`], which also times it for the latency metric.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use super::{Pool, Store, StoreError, StoreResult};
use crate::metrics::Metrics;

/// How often the probe pings an unreachable database, and how long one ping may take.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The guard's state: whether calls are refused, and where their latency goes.
pub(super) struct Guard {
    down: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl Store {
    /// This store's pool behind the guard, with every call timed into `metrics`: the store
    /// requests use.
    pub fn guarded(&self, metrics: Arc<Metrics>) -> Self {
        Self {
            pool: self.pool.clone(),
            guard: Some(Guard {
                down: Arc::new(AtomicBool::new(false)),
                metrics,
            }),
        }
    }

    /// A store whose database was not reachable at start: every call is refused until the
    /// background preparation (create the database if missing and migrate, with
    /// `migrate_on_start`; else a ping) succeeds, retried with a logged back-off of 1 s doubling
    /// to 30 s.
    pub(super) fn starting(
        pool: Pool,
        url: String,
        migrate_on_start: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let down = Arc::new(AtomicBool::new(true));
        let prepared = Arc::clone(&down);
        let background = pool.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                let attempt = async {
                    if migrate_on_start {
                        super::create_database_if_missing(&url).await?;
                        background.migrate().await
                    } else {
                        background.ping().await
                    }
                };
                match attempt.await {
                    Ok(()) => {
                        prepared.store(false, Ordering::Release);
                        tracing::info!("database reachable and migrated; serving");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in_seconds = delay.as_secs(), "database not ready yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        Self {
            pool,
            guard: Some(Guard { down, metrics }),
        }
    }

    /// Whether calls are being refused because the database was found unreachable.
    pub fn is_down(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|guard| guard.down.load(Ordering::Acquire))
    }

    /// Runs one store operation: refused at once while the database is down, else timed as
    /// `operation`, and a lost connection trips the guard.
    pub(super) async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let Some(guard) = &self.guard else {
            return call.await;
        };
        if guard.down.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable);
        }
        let started = std::time::Instant::now();
        let result = call.await;
        guard.metrics.observe_store(operation, started.elapsed());
        if let Err(error) = &result {
            if error.is_connection_lost() {
                self.trip(guard, error);
            }
        }
        result
    }

    fn trip(&self, guard: &Guard, error: &StoreError) {
        if guard.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(%error, "database unreachable; refusing database work until it answers again");
        let pool = self.pool.clone();
        let down = Arc::clone(&guard.down);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, pool.ping()).await {
                    down.store(false, Ordering::Release);
                    tracing::info!(
                        down_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "database answers again"
                    );
                    return;
                }
            }
        });
    }
}
