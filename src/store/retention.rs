//! Retention: mint records are an audit trail, kept `NEO_AUDIT_RETENTION_DAYS` after their token
//! expired and then deleted by a background task. On PostgreSQL the task also makes the day
//! partitions ahead of time, and drops a day's partition whole once all of it is past retention;
//! what is left (SQLite's one table, PostgreSQL's legacy and default partitions) goes in batches
//! small enough that a mint never waits long behind one. Settled idempotency claims go once their
//! window has passed.

use std::{sync::Arc, time::Duration};

use chrono::Utc;

use super::{Store, StoreResult};

/// Rows deleted per statement.
pub const PRUNE_BATCH: u32 = 500;
/// After each batch the task rests this many times as long as the batch took, and at least
/// MIN_PAUSE (at most 2,500 rows a second: a million-row backlog goes in about seven minutes),
/// so that pruning takes a small share of the database whatever the machine.
const PAUSE_FACTOR: u32 = 9;
const MIN_PAUSE: Duration = Duration::from_millis(200);
/// How often a pruning round runs (the first right after start).
const ROUND_INTERVAL: Duration = Duration::from_secs(600);

/// Runs a pruning round now and every ten minutes. `retention_days` 0 keeps mint records
/// forever; `idempotency_window` is how long an idempotency claim answers retries.
pub fn spawn_retention(
    store: Arc<Store>,
    retention_days: u32,
    idempotency_window: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            prune_round(store.as_ref(), retention_days, idempotency_window).await;
            tokio::time::sleep(ROUND_INTERVAL).await;
        }
    })
}

/// One round: the partitions ahead, then every mint record past retention (whole partitions
/// first), then every expired idempotency claim, batch by batch. Errors end that step (the next
/// round tries again) and are logged.
pub async fn prune_round(store: &Store, retention_days: u32, idempotency_window: Duration) {
    match store.create_partitions(Utc::now().date_naive()).await {
        Ok(created) if !created.is_empty() => {
            tracing::info!(?created, "created mint record partitions ahead of time")
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "creating mint record partitions failed; retrying next round")
        }
    }
    if retention_days > 0 {
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(retention_days));
        match store.drop_expired_partitions(cutoff).await {
            Ok(dropped) if !dropped.is_empty() => tracing::info!(
                ?dropped,
                retention_days,
                "dropped mint record partitions past retention"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "dropping mint record partitions failed; retrying next round")
            }
        }
        match in_batches(|| store.prune_mints(cutoff, PRUNE_BATCH)).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                retention_days,
                "deleted mint records past retention"
            ),
            Err(error) => {
                tracing::warn!(%error, "pruning mint records failed; retrying next round")
            }
        }
    }
    let window = chrono::Duration::from_std(idempotency_window).unwrap_or(chrono::Duration::MAX);
    let Some(cutoff) = Utc::now().checked_sub_signed(window) else {
        return;
    };
    if let Err(error) = in_batches(|| store.prune_idempotency(cutoff, PRUNE_BATCH)).await {
        tracing::warn!(%error, "pruning idempotency claims failed; retrying next round");
    }
}

async fn in_batches<F, Fut>(mut batch: F) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let started = tokio::time::Instant::now();
        let deleted = batch().await?;
        total += deleted;
        if deleted < u64::from(PRUNE_BATCH) {
            return Ok(total);
        }
        tokio::time::sleep((started.elapsed() * PAUSE_FACTOR).max(MIN_PAUSE)).await;
    }
}
