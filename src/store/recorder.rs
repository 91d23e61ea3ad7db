//! Group commit for mint records: concurrent mints share one multi-row INSERT (one commit, one
//! round trip) instead of one each, and every request still waits until its own row is durable
//! before its token is sent. Under light load a batch is a single row, so nothing waits longer.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{MintRecord, Store, StoreError, StoreResult};

type Waiter = (MintRecord, oneshot::Sender<StoreResult<()>>);

#[derive(Clone)]
pub struct MintRecorder {
    queue: mpsc::Sender<Waiter>,
}

impl MintRecorder {
    /// Starts the writer. It ends when the last `MintRecorder` is dropped, after draining.
    pub fn spawn(store: Arc<dyn Store>, max_batch: usize) -> Self {
        let (queue, receiver) = mpsc::channel(max_batch * 8);
        tokio::spawn(write_batches(store, receiver, max_batch.max(1)));
        Self { queue }
    }

    /// Records one mint; returns once it is committed.
    pub async fn record(&self, record: MintRecord) -> StoreResult<()> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send((record, done))
            .await
            .map_err(|_| StoreError::RecorderStopped)?;
        committed.await.map_err(|_| StoreError::RecorderStopped)?
    }
}

async fn write_batches(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Waiter>,
    max_batch: usize,
) {
    let mut batch: Vec<Waiter> = Vec::with_capacity(max_batch);
    // Whatever queued up while the previous batch was being written goes in the next one.
    while receiver.recv_many(&mut batch, max_batch).await > 0 {
        let (records, waiters): (Vec<MintRecord>, Vec<_>) = batch.drain(..).unzip();
        match store.record_mints(&records).await {
            Ok(()) => {
                for done in waiters {
                    let _ = done.send(Ok(()));
                }
            }
            // One bad row must not fail its neighbours: retry each on its own.
            Err(error) if records.len() > 1 => {
                tracing::warn!(%error, rows = records.len(), "batched mint insert failed; retrying row by row");
                for (record, done) in records.iter().zip(waiters) {
                    let _ = done.send(store.record_mints(std::slice::from_ref(record)).await);
                }
            }
            Err(error) => {
                if let Some(done) = waiters.into_iter().next() {
                    let _ = done.send(Err(error));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::seed::Fixture;

    fn record(session_id: &str) -> MintRecord {
        let now = Utc::now();
        MintRecord {
            jti: uuid::Uuid::new_v4(),
            session_id: session_id.to_owned(),
            tenant_id: "acme".to_owned(),
            minted_by_kind: "api_key",
            minted_by: "k-acme".to_owned(),
            end_user: None,
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(900),
        }
    }

    #[tokio::test]
    async fn one_bad_row_fails_alone_and_its_neighbours_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        let plan = Fixture::from_json(include_str!("../../config/seed.example.json"))
            .unwrap()
            .prepare("test")
            .unwrap()
            .plan;
        store.apply_seed(&plan).await.unwrap();

        let recorder = MintRecorder::spawn(Arc::clone(&store), 64);
        // On this single-threaded runtime the three are queued before the writer runs, so they
        // share one batch; the middle one names no session (a foreign-key violation).
        let tasks: Vec<_> = ["s-acme-1", "no-such-session", "s-acme-wl"]
            .into_iter()
            .map(|session_id| {
                let recorder = recorder.clone();
                tokio::spawn(async move { recorder.record(record(session_id)).await })
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
}
