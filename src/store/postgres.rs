//! PostgreSQL: the connection, and the statements its dialect writes its own way (arrays for
//! batches and id lists, the change feed by LISTEN/NOTIFY, pruning along `ctid`).

use std::{str::FromStr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
    PgPool,
};

use super::{guard::ConnectionLosses, MintRecord, StoreError, StoreResult};
use crate::freshness::{Freshness, Topic};

pub(super) static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pooled connection idle for this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

pub(super) async fn connect(
    url: &str,
    max_connections: u32,
    losses: Arc<ConnectionLosses>,
) -> StoreResult<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("neo-sessions");
    Ok(pool_options(max_connections, losses)
        .connect_with(options)
        .await?)
}

/// A pool that connects on first use: for a server that is not reachable yet.
pub(super) fn connect_lazy(
    url: &str,
    max_connections: u32,
    losses: Arc<ConnectionLosses>,
) -> StoreResult<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("neo-sessions");
    Ok(pool_options(max_connections, losses).connect_lazy_with(options))
}

fn pool_options(max_connections: u32, losses: Arc<ConnectionLosses>) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings every connection it hands out by default: a round trip in front of every
        // query. A connection that answered less than a second ago is handed out as it is;
        // one idle for longer (the server may have gone since) is still pinged, and a broken
        // one is replaced. So is one that sat idle while another pooled connection was found
        // dead (the server may have ended them all at once: see `guard.rs`, retry once).
        // sqlx pings each connection on release as well, whatever this says.
        .test_before_acquire(false)
        .before_acquire(move |connection, meta| {
            let suspect = losses.may_have_died(meta.idle_for);
            Box::pin(async move {
                if suspect || meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(connection).await?;
                }
                Ok(true)
            })
        })
}

pub(super) async fn existing_agents(
    pool: &PgPool,
    tenant_id: &str,
    agent_ids: &[i64],
) -> StoreResult<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM agents WHERE tenant_id = $1 AND id = ANY($2)")
        .bind(tenant_id)
        .bind(agent_ids)
        .fetch_all(pool)
        .await
        .map_err(StoreError::from)
}

pub(super) async fn record_mints(pool: &PgPool, records: &[MintRecord]) -> StoreResult<()> {
    // Columns as arrays: one prepared statement whatever the batch size.
    let mut jti = Vec::with_capacity(records.len());
    let mut session_id = Vec::with_capacity(records.len());
    let mut tenant_id = Vec::with_capacity(records.len());
    let mut kind = Vec::with_capacity(records.len());
    let mut minted_by = Vec::with_capacity(records.len());
    let mut minted_by_tenant = Vec::with_capacity(records.len());
    let mut end_user = Vec::with_capacity(records.len());
    let mut end_company_id = Vec::with_capacity(records.len());
    let mut agents = Vec::with_capacity(records.len());
    let mut issued_at = Vec::with_capacity(records.len());
    let mut expires_at = Vec::with_capacity(records.len());
    let mut kid = Vec::with_capacity(records.len());
    for r in records {
        jti.push(r.jti);
        session_id.push(r.session_id.as_str());
        tenant_id.push(r.tenant_id.as_str());
        kind.push(r.minted_by_kind);
        minted_by.push(r.minted_by.as_str());
        minted_by_tenant.push(r.minted_by_tenant.as_str());
        end_user.push(r.end_user.as_deref());
        end_company_id.push(r.end_company_id.as_deref());
        agents.push(r.allowed_agent_ids.as_str());
        issued_at.push(r.issued_at);
        expires_at.push(r.expires_at);
        kid.push(r.kid.as_str());
    }
    let insert = || {
        sqlx::query(
            "INSERT INTO session_token_mints
               (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at,
                expires_at, minted_by_tenant, end_company_id, allowed_agent_ids, kid)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                                  $10::text[], $11::text[], $12::text[])",
        )
        .bind(&jti)
        .bind(&session_id)
        .bind(&tenant_id)
        .bind(&kind)
        .bind(&minted_by)
        .bind(&end_user)
        .bind(&issued_at)
        .bind(&expires_at)
        .bind(&minted_by_tenant)
        .bind(&end_company_id)
        .bind(&agents)
        .bind(&kid)
        .execute(pool)
    };
    match insert().await {
        // Routed to the default partition just as the day's partition was attached (the
        // statement saw the partitions as they were before): nothing was written, and the
        // statement again finds the new partition.
        Err(sqlx::Error::Database(db)) if is_stale_partition_route(db.as_ref()) => {
            insert().await?;
        }
        result => {
            result?;
        }
    }
    Ok(())
}

/// "new row for relation ... violates partition constraint" (23514): a row routed by a
/// statement that started before a partition was attached.
fn is_stale_partition_route(error: &dyn sqlx::error::DatabaseError) -> bool {
    error.code().as_deref() == Some("23514") && error.message().contains("partition constraint")
}

pub(super) async fn watch_changes(pool: &PgPool, freshness: &Freshness) -> StoreResult<()> {
    // A connection of its own (not one of the pool's): when the feed is given up for
    // silence, it is dropped mid-read and never handed to a request.
    let options = (*pool.connect_options()).clone();
    let own = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    let mut listener = PgListener::connect_with(&own).await?;
    listener.listen(CHANGES_CHANNEL).await?;
    freshness.restored();
    tracing::info!("cache invalidation feed connected (LISTEN {CHANGES_CHANNEL})");
    // A heartbeat through the pool proves the feed delivers: silence longer than
    // FEED_SILENCE_LIMIT means it died without a word (a half-open TCP connection).
    let pool = pool.clone();
    let heartbeat = AbortOnDrop(tokio::spawn(async move {
        loop {
            tokio::time::sleep(FEED_HEARTBEAT).await;
            let sent = sqlx::query("SELECT pg_notify($1, 'heartbeat')")
                .bind(CHANGES_CHANNEL)
                .execute(&pool)
                .await;
            if let Err(error) = sent {
                tracing::debug!(%error, "cache feed heartbeat not sent");
            }
        }
    }));
    let outcome = loop {
        match tokio::time::timeout(FEED_SILENCE_LIMIT, listener.try_recv()).await {
            Err(_) => break StoreError::FeedLost("no heartbeat within the silence limit"),
            Ok(Err(error)) => break StoreError::from(error),
            Ok(Ok(None)) => break StoreError::FeedLost("the connection closed"),
            Ok(Ok(Some(notification))) => {
                // `table:tenant_id:id` (migration 7); ids never hold a colon, but the last
                // field takes the rest whatever it holds.
                let mut fields = notification.payload().splitn(3, ':');
                let table = fields.next().unwrap_or_default();
                let tenant_id = fields.next().unwrap_or_default();
                let id = fields.next().unwrap_or_default();
                if let Some(topic) = Topic::of_table(table) {
                    freshness.row_changed(topic, tenant_id, id);
                }
            }
        }
    };
    drop(heartbeat);
    drop(listener);
    own.close().await;
    Err(outcome)
}

pub(super) async fn revocation_horizon(pool: &PgPool) -> StoreResult<i64> {
    // The oldest transaction id still in flight (the next one to be handed out when none is):
    // every id below it has ended, and a transaction that revokes later gets an id at or above
    // it (migration 8 stores the revoking transaction's id as `revoked_seq`).
    Ok(sqlx::query_scalar(
        "SELECT CAST(CAST(pg_snapshot_xmin(pg_current_snapshot()) AS TEXT) AS BIGINT)",
    )
    .fetch_one(pool)
    .await?)
}

pub(super) async fn prune_mints(
    pool: &PgPool,
    expired_before: DateTime<Utc>,
    limit: u32,
) -> StoreResult<u64> {
    // Per tenant along (tenant_id, issued_at): no index on expires_at is needed (every mint
    // would pay for one), and a token expires after it is issued. Day partitions past
    // retention are dropped whole before (`partitions.rs`): this deletes what is left, in the
    // legacy and default partitions.
    // Not worth an fsync of its own (competing with the mints' commits): a deletion lost in
    // a crash is made again by the next round.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let result = sqlx::query(
        "DELETE FROM session_token_mints WHERE (jti, issued_at) IN (
             SELECT m.jti, m.issued_at FROM tenants t
             CROSS JOIN LATERAL (
                 SELECT jti, issued_at FROM session_token_mints
                 WHERE tenant_id = t.id AND issued_at < $1 AND expires_at < $1
                 ORDER BY issued_at LIMIT $2
             ) m
             LIMIT $2)",
    )
    .bind(expired_before)
    .bind(i64::from(limit))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(result.rows_affected())
}

/// The channel the change triggers notify (migration 7).
const CHANGES_CHANNEL: &str = "neo_sessions_changes";
/// How often each replica sends itself a heartbeat through the feed.
const FEED_HEARTBEAT: Duration = Duration::from_secs(1);
/// No notification (not even a heartbeat) for this long: the feed is taken for dead.
const FEED_SILENCE_LIMIT: Duration = Duration::from_secs(3);

/// Aborts the task when dropped, however the owner ends (returns, or is cancelled).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
