//! Fail fast while the database is unreachable: once a call finds the connection gone, every
//! call is refused at once (`StoreError::Unavailable`) instead of waiting out the pool's acquire
//! timeout, while one background probe pings the database every 100 ms and lets calls through
//! again the moment it answers. It lives in the store handle: every operation goes through
//! [`Store::attempt`] (refused while down, timed for the latency metric), at most twice, and
//! then [`Store::settle`] (a lost connection trips the guard).
//!
//! Retry once: a statement whose pooled connection died under it (the server ended the
//! connection while it sat idle in the pool: a fast shutdown, a failover, `pg_terminate_backend`)
//! runs once more, on a connection known to be alive, when running it twice is harmless
//! ([`Retry::Safe`]: reads, and writes whose second run changes nothing more). The pool
//! is told first ([`ConnectionLosses`]): every connection that sat idle through the loss is
//! pinged before it is handed out again, so the second run (and every other caller) gets a
//! live connection or a new one, not the next dead one. A write that must not run twice (the
//! mint's record, a claim, an insert) is never retried: its connection may have died after the
//! commit, before the answer, and a second run would record the mint twice or report the first
//! run's work as someone else's.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tracing::Instrument;

use super::{Pool, Store, StoreError, StoreResult};
use crate::metrics::Metrics;

/// How often the probe pings an unreachable database, and how long one ping may take.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A database unreachable at start is tried again after 100 ms, doubling up to 1 s: a replica
/// turns ready within about a second of the database answering (a back-off to 30 s cost up to
/// 9 s), and one attempt a second costs the database nothing.
const STARTING_RETRY_FIRST: Duration = Duration::from_millis(100);
const STARTING_RETRY_CAP: Duration = Duration::from_secs(1);
/// How often the still-failing start is logged.
const STARTING_LOG_EVERY: Duration = Duration::from_secs(30);

/// Whether a store operation may run a second time when its pooled connection died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A read, or a write whose second run changes nothing more and answers the same.
    Safe,
    /// A write that must run at most once.
    Never,
}

/// When a pooled connection was last found dead, shared by the store and its pool's
/// `before_acquire` check: a connection that has been idle since then is pinged before use.
#[derive(Debug)]
pub struct ConnectionLosses {
    origin: Instant,
    /// Milliseconds since `origin` plus one; 0: never.
    last: AtomicU64,
}

impl ConnectionLosses {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn record(&self) {
        let now = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now.saturating_add(1), Ordering::Release);
    }

    /// Whether a connection idle for `idle_for` may have died with the last loss seen (it was
    /// idle in the pool then). One atomic load: the check runs on every acquire.
    pub fn may_have_died(&self, idle_for: Duration) -> bool {
        match self.last.load(Ordering::Acquire) {
            0 => false,
            last => {
                let at = self.origin + Duration::from_millis(last - 1);
                // A little slack for the clock's millisecond rounding.
                idle_for + Duration::from_millis(2) >= at.elapsed()
            }
        }
    }
}

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
            losses: Arc::clone(&self.losses),
            guard: Some(Guard {
                down: Arc::new(AtomicBool::new(false)),
                metrics,
            }),
        }
    }

    /// A store whose database was not reachable at start: every call is refused until the
    /// background preparation (create the database if missing and migrate, with
    /// `migrate_on_start`; else a ping) succeeds, retried with a back-off of 100 ms doubling to
    /// [`STARTING_RETRY_CAP`], so a replica turns ready within about a second of the database
    /// coming back. A failure is logged at first and then at most every 30 s.
    pub(super) fn starting(
        pool: Pool,
        losses: Arc<ConnectionLosses>,
        url: String,
        migrate_on_start: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let down = Arc::new(AtomicBool::new(true));
        let prepared = Arc::clone(&down);
        let background = pool.clone();
        tokio::spawn(async move {
            let mut delay = STARTING_RETRY_FIRST;
            let mut logged: Option<Instant> = None;
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
                        if logged.is_none_or(|at| at.elapsed() >= STARTING_LOG_EVERY) {
                            tracing::warn!(%error, retry_every_ms = u64::try_from(STARTING_RETRY_CAP.as_millis()).unwrap_or(u64::MAX), "database not ready yet; retrying");
                            logged = Some(Instant::now());
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(STARTING_RETRY_CAP);
                    }
                }
            }
        });
        Self {
            pool,
            losses,
            guard: Some(Guard { down, metrics }),
        }
    }

    /// Whether calls are being refused because the database was found unreachable.
    pub fn is_down(&self) -> bool {
        self.guard
            .as_ref()
            .is_some_and(|guard| guard.down.load(Ordering::Acquire))
    }

    /// Runs one store operation once, not retried: [`Store::attempt`] then [`Store::settle`].
    pub(super) async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let result = self.attempt(operation, call).await;
        self.settle(result, false)
    }

    /// One run of a store operation: refused at once while the database is down, else timed
    /// as `operation`.
    pub(super) async fn attempt<T>(
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
        // For export only: disabled (nothing made) unless traces are exported.
        let span = tracing::info_span!(
            target: "neo_sessions_otel",
            "store",
            otel.kind = "client",
            db.operation.name = operation,
        );
        let result = call.instrument(span).await;
        guard.metrics.observe_store(operation, started.elapsed());
        result
    }

    /// Whether a failed first run is run again: its pooled connection died and `retry` allows
    /// a second run. Either way a dead connection is reported to the pool, so that the
    /// connections that were idle with it are checked before they are handed out.
    pub(super) fn retries<T>(&self, retry: Retry, result: &StoreResult<T>) -> bool {
        let Err(error) = result else {
            return false;
        };
        if !error.is_dead_connection() {
            return false;
        }
        self.losses.record();
        if retry == Retry::Safe {
            tracing::info!(%error, "a pooled database connection had died; retrying on a live one");
            return true;
        }
        false
    }

    /// The outcome of an operation, after its retry if it had one (`retried`): a lost
    /// connection trips the guard. Except one pooled connection found dead by an operation that
    /// may not run twice: the server ended that connection, which says nothing of the others
    /// (an operation that must not be repeated, e.g. a background batch, fails alone instead of
    /// refusing everyone's requests); when the database really is gone, the next operation's
    /// fresh connection fails and trips it.
    pub(super) fn settle<T>(&self, result: StoreResult<T>, retried: bool) -> StoreResult<T> {
        if let (Some(guard), Err(error)) = (&self.guard, &result) {
            if error.is_connection_lost() && (retried || !error.is_dead_connection()) {
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
