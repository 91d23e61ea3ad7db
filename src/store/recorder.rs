//! Group commit for mint records: concurrent mints share one multi-row INSERT (one commit, one
//! round trip) instead of one each, and every request still waits until its own row is durable
//! before its token is sent. Under light load a batch is a single row, so nothing waits longer.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};
use tracing::{Instrument, Span};

use super::{MintRecord, Store, StoreError, StoreResult};
use crate::metrics::Metrics;

/// A record, who waits for its commit, and the span of that wait (disabled unless traces are
/// exported), which the commit's span is parented to or linked from.
type Waiter = (MintRecord, oneshot::Sender<StoreResult<()>>, Span);

/// How long a failed commit keeps the recorder reported as failing (readiness 503) when no
/// commit has succeeded since.
const FAILING_FOR: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct MintRecorder {
    queue: mpsc::Sender<Waiter>,
    /// When the last commit failed, cleared by the next that succeeds.
    last_failure: Arc<Mutex<Option<Instant>>>,
}

/// What readiness reports of the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecorderStatus {
    Running,
    /// Its last commit failed (within the last 10 s) and none has succeeded since.
    Failing,
    /// The writer task is gone: every mint would fail.
    Stopped,
}

impl RecorderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "ok",
            Self::Failing => "failing",
            Self::Stopped => "stopped",
        }
    }
}

impl MintRecorder {
    /// Starts the writer. It ends when the last `MintRecorder` is dropped, after draining.
    pub fn spawn(store: Arc<Store>, max_batch: usize, metrics: Arc<Metrics>) -> Self {
        let (queue, receiver) = mpsc::channel(max_batch * 8);
        let last_failure = Arc::new(Mutex::new(None));
        tokio::spawn(write_batches(
            store,
            receiver,
            max_batch.max(1),
            Arc::clone(&last_failure),
            metrics,
        ));
        Self {
            queue,
            last_failure,
        }
    }

    /// Records one mint; returns once it is committed.
    pub async fn record(&self, record: MintRecord) -> StoreResult<()> {
        let (done, committed) = oneshot::channel();
        // Open until this returns: the wait for the commit, queue included.
        let span = tracing::info_span!(target: "neo_sessions_otel", "mint.record");
        self.queue
            .send((record, done, span.clone()))
            .await
            .map_err(|_| StoreError::RecorderStopped)?;
        committed.await.map_err(|_| StoreError::RecorderStopped)?
    }

    pub fn status(&self) -> RecorderStatus {
        if self.queue.is_closed() {
            return RecorderStatus::Stopped;
        }
        let last_failure = *self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match last_failure {
            Some(at) if at.elapsed() < FAILING_FOR => RecorderStatus::Failing,
            _ => RecorderStatus::Running,
        }
    }
}

async fn write_batches(
    store: Arc<Store>,
    mut receiver: mpsc::Receiver<Waiter>,
    max_batch: usize,
    last_failure: Arc<Mutex<Option<Instant>>>,
    metrics: Arc<Metrics>,
) {
    let set_failure = |failed: bool| {
        let mut last = last_failure.lock().unwrap_or_else(|p| p.into_inner());
        *last = failed.then(Instant::now);
    };
    let mut batch: Vec<Waiter> = Vec::with_capacity(max_batch);
    // Whatever queued up while the previous batch was being written goes in the next one.
    while receiver.recv_many(&mut batch, max_batch).await > 0 {
        // A request that has gone away (timed out, client gone) never got its token: nothing
        // to record for it.
        batch.retain(|(_, done, _)| !done.is_closed());
        if batch.is_empty() {
            continue;
        }
        let commit = commit_span(&batch);
        let (records, waiters): (Vec<MintRecord>, Vec<_>) = batch
            .drain(..)
            .map(|(record, done, _)| (record, done))
            .unzip();
        metrics.recorder_batch_rows.observe(records.len() as f64);
        let started = Instant::now();
        let committed = store.record_mints(&records).instrument(commit).await;
        metrics
            .recorder_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match committed {
            Ok(()) => {
                set_failure(false);
                for done in waiters {
                    let _ = done.send(Ok(()));
                }
            }
            // One bad row must not fail its neighbours: retry each on its own. Only for a row's
            // own fault: after an outage or a full disk, retrying row by row would only queue
            // more failures behind requests that are waiting.
            Err(error) if records.len() > 1 && error.is_constraint_violation() => {
                tracing::warn!(%error, rows = records.len(), "batched mint insert failed; retrying row by row");
                for (record, done) in records.iter().zip(waiters) {
                    let result = store.record_mints(std::slice::from_ref(record)).await;
                    if let Err(error) = &result {
                        if !error.is_constraint_violation() {
                            set_failure(true);
                        }
                    }
                    let _ = done.send(result);
                }
            }
            Err(error) => {
                if !error.is_constraint_violation() {
                    set_failure(true);
                }
                tracing::warn!(%error, rows = records.len(), "mint records could not be committed");
                let error = Arc::new(error);
                for done in waiters {
                    let _ = done.send(Err(StoreError::Shared(Arc::clone(&error))));
                }
            }
        }
    }
}

/// The commit's span, for export only: a child of the first waiting mint's span (so it shows
/// in that request's trace), linked from the others' (each trace can find the shared commit).
fn commit_span(batch: &[Waiter]) -> Span {
    let Some((_, _, first)) = batch.first() else {
        return Span::none();
    };
    let commit = tracing::info_span!(
        target: "neo_sessions_otel",
        parent: first,
        "recorder.commit",
        rows = batch.len(),
    );
    if !commit.is_disabled() {
        for (_, _, waiter) in &batch[1..] {
            commit.follows_from(waiter);
        }
    }
    commit
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    fn record(session_id: &str) -> MintRecord {
        let now = Utc::now();
        MintRecord {
            jti: uuid::Uuid::new_v4(),
            session_id: session_id.to_owned(),
            tenant_id: "acme".to_owned(),
            minted_by_kind: "api_key",
            minted_by: "k-acme".to_owned(),
            minted_by_tenant: "acme".to_owned(),
            end_user: None,
            end_company_id: None,
            allowed_agent_ids: ",".to_owned(),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(900),
            kid: "test-kid".to_owned(),
        }
    }

    #[tokio::test]
    async fn one_bad_row_fails_alone_and_its_neighbours_are_committed() {
        let (_dir, url, store) = seeded_sqlite().await;

        let recorder = MintRecorder::spawn(Arc::clone(&store), 64, Arc::default());
        // On this single-threaded runtime the three are queued before the writer runs, so they
        // share one batch; the middle one names no tenant (a foreign-key violation: a record
        // may outlive its session, never name a tenant that does not exist).
        let tasks: Vec<_> = [
            ("s-acme-1", "acme"),
            ("s-acme-1", "no-such-tenant"),
            ("s-acme-wl", "acme"),
        ]
        .into_iter()
        .map(|(session_id, tenant_id)| {
            let recorder = recorder.clone();
            let mut record = record(session_id);
            record.tenant_id = tenant_id.to_owned();
            tokio::spawn(async move { recorder.record(record).await })
        })
        .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(results[1].is_err());
        let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM session_token_mints")
            .fetch_one(&sqlx::SqlitePool::connect(&url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(rows, 2);
    }

    use crate::store::seeded_sqlite_for_tests as seeded_sqlite;

    #[tokio::test]
    async fn a_request_that_went_away_before_its_batch_is_not_recorded() {
        let (_dir, url, store) = seeded_sqlite().await;
        let recorder = MintRecorder::spawn(Arc::clone(&store), 64, Arc::default());
        // Queue a record and give up on it before the writer has run (polled once by hand, so
        // nothing yields to the writer in between): its receiver is gone.
        let mut abandoned = Box::pin(recorder.record(record("s-acme-1")));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(abandoned.as_mut(), &mut cx).is_pending());
        drop(abandoned);
        recorder.record(record("s-acme-wl")).await.unwrap();
        let sessions: Vec<String> =
            sqlx::query_scalar("SELECT session_id FROM session_token_mints")
                .fetch_all(&sqlx::SqlitePool::connect(&url).await.unwrap())
                .await
                .unwrap();
        assert_eq!(sessions, ["s-acme-wl"]);
        assert_eq!(recorder.status(), RecorderStatus::Running);
    }

    #[tokio::test]
    async fn a_failing_commit_fails_the_whole_batch_and_reports_failing() {
        let (_dir, url, store) = seeded_sqlite().await;
        // Not a row's fault: the table is gone. No row-by-row retry can help.
        sqlx::query("ALTER TABLE session_token_mints RENAME TO gone")
            .execute(&sqlx::SqlitePool::connect(&url).await.unwrap())
            .await
            .unwrap();
        let recorder = MintRecorder::spawn(Arc::clone(&store), 64, Arc::default());
        let tasks: Vec<_> = ["s-acme-1", "s-acme-wl"]
            .into_iter()
            .map(|session_id| {
                let recorder = recorder.clone();
                tokio::spawn(async move { recorder.record(record(session_id)).await })
            })
            .collect();
        for task in tasks {
            let error = task.await.unwrap().unwrap_err();
            assert!(!error.is_constraint_violation(), "{error}");
        }
        assert_eq!(recorder.status(), RecorderStatus::Failing);
    }

    #[tokio::test]
    async fn a_recorder_whose_writer_is_gone_reports_stopped() {
        let (queue, receiver) = mpsc::channel(1);
        drop(receiver);
        let recorder = MintRecorder {
            queue,
            last_failure: Arc::default(),
        };
        assert_eq!(recorder.status(), RecorderStatus::Stopped);
        assert!(matches!(
            recorder.record(record("s-acme-1")).await,
            Err(StoreError::RecorderStopped)
        ));
    }
}
