//! SQLite: the embedded default, so the service runs with no other server. WAL journal, a busy
//! timeout and full fsync on commit, so concurrent mints wait for the writer lock instead of
//! failing, and a recorded mint survives a crash. Here: the connection, and the statements its
//! dialect writes its own way (multi-row VALUES for batches, JSON for id lists, the change log
//! polled, pruning along `rowid`).

use std::{path::Path, str::FromStr, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    SqlitePool,
};

use super::{
    codec::{Jti, Ts},
    MintRecord, StoreError, StoreResult,
};
use crate::freshness::{Freshness, Topic};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens (creating when missing, with its directory) the database file named by `url`.
pub(super) async fn connect(url: &str, max_connections: u32) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true);
    if let Some(dir) = options.get_filename().parent() {
        create_private_dir(dir)?;
    }
    Ok(SqlitePoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(BUSY_TIMEOUT)
        .connect_with(options)
        .await?)
}

fn create_private_dir(dir: &Path) -> StoreResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

pub(super) async fn existing_agents(
    pool: &SqlitePool,
    tenant_id: &str,
    agent_ids: &[i64],
) -> StoreResult<Vec<i64>> {
    // One statement for any number of ids: the list travels as a JSON array.
    let ids = serde_json::to_string(agent_ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query_scalar(
        "SELECT id FROM agents WHERE tenant_id = ?1 AND id IN (SELECT value FROM json_each(?2))",
    )
    .bind(tenant_id)
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(StoreError::from)
}

pub(super) async fn record_mints(pool: &SqlitePool, records: &[MintRecord]) -> StoreResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut insert = sqlx::QueryBuilder::new(
        "INSERT INTO session_token_mints
           (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at,
            expires_at, minted_by_tenant, end_company_id, allowed_agent_ids, kid) ",
    );
    insert.push_values(records, |mut row, r| {
        row.push_bind(Jti(r.jti))
            .push_bind(r.session_id.clone())
            .push_bind(r.tenant_id.clone())
            .push_bind(r.minted_by_kind)
            .push_bind(r.minted_by.clone())
            .push_bind(r.end_user.clone())
            .push_bind(Ts(r.issued_at))
            .push_bind(Ts(r.expires_at))
            .push_bind(r.minted_by_tenant.clone())
            .push_bind(r.end_company_id.clone())
            .push_bind(r.allowed_agent_ids.clone())
            .push_bind(r.kid.clone());
    });
    insert.build().execute(pool).await?;
    Ok(())
}

pub(super) async fn watch_changes(pool: &SqlitePool, freshness: &Freshness) -> StoreResult<()> {
    let (mut last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM cache_changes")
        .fetch_one(pool)
        .await?;
    freshness.restored();
    let mut pruned_at = std::time::Instant::now();
    loop {
        tokio::time::sleep(CHANGE_POLL_INTERVAL).await;
        let changes: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT seq, topic, tenant_id, row_id FROM cache_changes
             WHERE seq > ? ORDER BY seq LIMIT 10000",
        )
        .bind(last)
        .fetch_all(pool)
        .await?;
        for (seq, topic, tenant_id, id) in changes {
            if let Some(topic) = Topic::of_table(&topic) {
                freshness.row_changed(
                    topic,
                    tenant_id.as_deref().unwrap_or_default(),
                    id.as_deref().unwrap_or_default(),
                );
            }
            last = seq;
        }
        if pruned_at.elapsed() >= CHANGE_LOG_KEEP / 60 {
            pruned_at = std::time::Instant::now();
            let keep_from =
                Utc::now() - chrono::Duration::from_std(CHANGE_LOG_KEEP).unwrap_or_default();
            sqlx::query("DELETE FROM cache_changes WHERE seq <= ? AND changed_at < ?")
                .bind(last)
                .bind(Ts(keep_from))
                .execute(pool)
                .await?;
        }
    }
}

pub(super) async fn revocation_horizon(pool: &SqlitePool) -> StoreResult<i64> {
    // One writer at a time: the next number the counter hands out (migration 8) is above every
    // committed revocation, and every revocation still to commit gets it or a later one.
    Ok(
        sqlx::query_scalar("SELECT value + 1 FROM revocation_counter WHERE id = 1")
            .fetch_one(pool)
            .await?,
    )
}

pub(super) async fn prune_mints(
    pool: &SqlitePool,
    expired_before: DateTime<Utc>,
    limit: u32,
) -> StoreResult<u64> {
    // Along (tenant_id, issued_at), as on PostgreSQL: no index on expires_at.
    let result = sqlx::query(
        "DELETE FROM session_token_mints WHERE rowid IN (
             SELECT rowid FROM session_token_mints
             WHERE tenant_id IN (SELECT id FROM tenants) AND issued_at < ?1 AND expires_at < ?1
             LIMIT ?2)",
    )
    .bind(Ts(expired_before))
    .bind(i64::from(limit))
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// How often the change log is read: the longest a change made elsewhere (the CLI, the sqlite3
/// shell) waits to reach this process's caches.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long change-log rows are kept (for another process reading the same file).
const CHANGE_LOG_KEEP: Duration = Duration::from_secs(3600);
