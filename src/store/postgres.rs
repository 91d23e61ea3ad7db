//! PostgreSQL implementation of [`Store`].

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    postgres::{PgConnectOptions, PgListener, PgPoolOptions},
    PgPool,
};

use super::{
    migration_status_of, ApiKeyListing, ApiKeyRow, IdempotencyClaim, MigrationStatus, MintQuery,
    MintRecord, MintRow, NewApiKey, PoolStatus, Revocation, SeedOutcome, SeedPlan, SessionRow,
    SigningKeyRow, Store, StoreError, StoreResult, TenantRow,
};
use crate::cache::{Freshness, Topic};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A pooled connection idle for this long is pinged before use.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("neo-sessions");
        let pool = Self::pool_options(max_connections)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// A pool that connects on first use: for a server that is not reachable yet.
    pub fn connect_lazy(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?.application_name("neo-sessions");
        let pool = Self::pool_options(max_connections).connect_lazy_with(options);
        Ok(Self { pool })
    }

    fn pool_options(max_connections: u32) -> PgPoolOptions {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // sqlx pings every connection it hands out by default: a round trip in front of every
            // query. A connection that answered less than a second ago is handed out as it is;
            // one idle for longer (the server may have gone since) is still pinged, and a broken
            // one is replaced. sqlx pings each connection on release as well, whatever this says.
            .test_before_acquire(false)
            .before_acquire(|connection, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(connection).await?;
                    }
                    Ok(true)
                })
            })
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await.map_err(sqlx::Error::from)?;
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn find_api_key_by_hash(&self, key_hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRow>> {
        sqlx::query_as(
            "SELECT k.id, k.tenant_id, k.key_hash, k.revoked_at, t.platform AS tenant_platform
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1",
        )
        .bind(&key_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn touch_api_key(&self, key_id: &str, used_at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = $2
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(key_id)
        .bind(used_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, session_id: &str) -> StoreResult<Option<SessionRow>> {
        sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions WHERE id = $1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn end_company_exists(&self, tenant_id: &str, end_company_id: &str) -> StoreResult<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM end_companies WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant_id)
        .bind(end_company_id)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn existing_agents(&self, tenant_id: &str, agent_ids: &[i64]) -> StoreResult<Vec<i64>> {
        sqlx::query_scalar("SELECT id FROM agents WHERE tenant_id = $1 AND id = ANY($2)")
            .bind(tenant_id)
            .bind(agent_ids)
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn record_mints(&self, records: &[MintRecord]) -> StoreResult<()> {
        // Columns as arrays: one prepared statement whatever the batch size.
        let mut jti = Vec::with_capacity(records.len());
        let mut session_id = Vec::with_capacity(records.len());
        let mut tenant_id = Vec::with_capacity(records.len());
        let mut kind = Vec::with_capacity(records.len());
        let mut minted_by = Vec::with_capacity(records.len());
        let mut minted_by_tenant = Vec::with_capacity(records.len());
        let mut end_user = Vec::with_capacity(records.len());
        let mut end_company_id = Vec::with_capacity(records.len());
        let mut issued_at = Vec::with_capacity(records.len());
        let mut expires_at = Vec::with_capacity(records.len());
        for r in records {
            jti.push(r.jti);
            session_id.push(r.session_id.as_str());
            tenant_id.push(r.tenant_id.as_str());
            kind.push(r.minted_by_kind);
            minted_by.push(r.minted_by.as_str());
            minted_by_tenant.push(r.minted_by_tenant.as_str());
            end_user.push(r.end_user.as_deref());
            end_company_id.push(r.end_company_id.as_deref());
            issued_at.push(r.issued_at);
            expires_at.push(r.expires_at);
        }
        sqlx::query(
            "INSERT INTO session_token_mints
               (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at,
                expires_at, minted_by_tenant, end_company_id)
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                                  $10::text[])",
        )
        .bind(jti)
        .bind(session_id)
        .bind(tenant_id)
        .bind(kind)
        .bind(minted_by)
        .bind(end_user)
        .bind(issued_at)
        .bind(expires_at)
        .bind(minted_by_tenant)
        .bind(end_company_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_tenant(&self, tenant_id: &str) -> StoreResult<Option<TenantRow>> {
        sqlx::query_as("SELECT id, name, platform FROM tenants WHERE id = $1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn find_tenant_by_entra_id(
        &self,
        entra_tenant_id: &str,
    ) -> StoreResult<Option<TenantRow>> {
        sqlx::query_as("SELECT id, name, platform FROM tenants WHERE entra_tenant_id = $1")
            .bind(entra_tenant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn claim_idempotency(
        &self,
        principal: &str,
        key: &str,
        request_hash: &[u8; 32],
        now: DateTime<Utc>,
        expired_before: DateTime<Utc>,
        abandoned_before: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyClaim>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "DELETE FROM mint_idempotency WHERE principal = $1 AND idem_key = $2
               AND (created_at < $3 OR (claims IS NULL AND created_at < $4))",
        )
        .bind(principal)
        .bind(key)
        .bind(expired_before)
        .bind(abandoned_before)
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO mint_idempotency (principal, idem_key, request_hash, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(principal)
        .bind(key)
        .bind(&request_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let existing = if inserted {
            None
        } else {
            sqlx::query_as(
                "SELECT request_hash, claims FROM mint_idempotency
                 WHERE principal = $1 AND idem_key = $2",
            )
            .bind(principal)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?
        };
        tx.commit().await?;
        Ok(existing)
    }

    async fn settle_idempotency(
        &self,
        principal: &str,
        key: &str,
        claims: Option<&str>,
    ) -> StoreResult<()> {
        let statement = match claims {
            Some(_) => "UPDATE mint_idempotency SET claims = $3 WHERE principal = $1 AND idem_key = $2",
            None => "DELETE FROM mint_idempotency WHERE principal = $1 AND idem_key = $2 AND $3::text IS NULL",
        };
        sqlx::query(statement)
            .bind(principal)
            .bind(key)
            .bind(claims)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn list_mints(&self, query: &MintQuery) -> StoreResult<Vec<MintRow>> {
        sqlx::query_as(
            "SELECT jti::text AS jti, session_id, tenant_id, minted_by_kind, minted_by,
                    minted_by_tenant, end_user, end_company_id, issued_at, expires_at, revoked_at,
                    revoked_by
             FROM session_token_mints
             WHERE (tenant_id = $1 OR ($2::text IS NOT NULL AND minted_by_tenant = $2))
               AND ($3::text IS NULL OR session_id = $3)
               AND ($4::bool IS NULL OR $4 = (revoked_at IS NULL AND expires_at > now()))
               AND ($5::timestamptz IS NULL OR (issued_at, jti) < ($5, $6::uuid))
             ORDER BY issued_at DESC, jti DESC
             LIMIT $7",
        )
        .bind(&query.tenant_id)
        .bind(&query.minted_by_tenant)
        .bind(&query.session_id)
        .bind(query.active)
        .bind(query.after.map(|(at, _)| at))
        .bind(query.after.map(|(_, jti)| jti))
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn find_mint(&self, jti: uuid::Uuid) -> StoreResult<Option<MintRow>> {
        sqlx::query_as(concat!("SELECT jti::text AS jti, session_id, tenant_id, minted_by_kind, minted_by, minted_by_tenant,                     end_user, end_company_id, issued_at, expires_at, revoked_at, revoked_by              FROM session_token_mints", " WHERE jti = $1"))
            .bind(jti)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn revoke_mint(&self, jti: uuid::Uuid, revoked_by: &str) -> StoreResult<Option<MintRow>> {
        sqlx::query(
            "UPDATE session_token_mints SET revoked_at = now(), revoked_by = $2
             WHERE jti = $1 AND revoked_at IS NULL",
        )
        .bind(jti)
        .bind(revoked_by)
        .execute(&self.pool)
        .await?;
        self.find_mint(jti).await
    }

    async fn revoke_session_mints(
        &self,
        session_id: &str,
        issued_before: DateTime<Utc>,
        revoked_by: &str,
    ) -> StoreResult<u64> {
        let result = sqlx::query(
            "UPDATE session_token_mints SET revoked_at = now(), revoked_by = $3
             WHERE session_id = $1 AND issued_at < $2 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(issued_before)
        .bind(revoked_by)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn revocations_since(
        &self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Revocation>> {
        sqlx::query_as(
            "SELECT jti::text AS jti, expires_at, revoked_at FROM session_token_mints
             WHERE (revoked_at > $1 OR (revoked_at = $1 AND jti > $4::uuid))
               AND expires_at > now()
               AND ($2::text IS NULL OR tenant_id = $2)
             ORDER BY revoked_at, jti LIMIT $3",
        )
        .bind(since)
        .bind(tenant_id)
        .bind(i64::from(limit))
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        sqlx::query("INSERT INTO api_keys (id, tenant_id, name, key_hash) VALUES ($1, $2, $3, $4)")
            .bind(&key.id)
            .bind(&key.tenant_id)
            .bind(&key.name)
            .bind(&key.key_hash[..])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn tenant_rate_limit(&self, tenant_id: &str) -> StoreResult<Option<(u32, u32)>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT per_minute, burst FROM tenant_rate_limits WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(per_minute, burst)| {
            (
                u32::try_from(per_minute).unwrap_or(u32::MAX),
                u32::try_from(burst).unwrap_or(u32::MAX),
            )
        }))
    }

    async fn set_tenant_rate_limit(
        &self,
        tenant_id: &str,
        limit: Option<(u32, u32)>,
    ) -> StoreResult<bool> {
        if self.find_tenant(tenant_id).await?.is_none() {
            return Ok(false);
        }
        match limit {
            Some((per_minute, burst)) => {
                sqlx::query(
                    "INSERT INTO tenant_rate_limits (tenant_id, per_minute, burst) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant_id) DO UPDATE SET per_minute = excluded.per_minute, burst = excluded.burst",
                )
                .bind(tenant_id)
                .bind(i64::from(per_minute))
                .bind(i64::from(burst))
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .execute(&self.pool)
                    .await?;
            }
        }
        Ok(true)
    }

    async fn list_api_keys(&self, tenant_id: &str) -> StoreResult<Vec<ApiKeyListing>> {
        sqlx::query_as(
            "SELECT id, tenant_id, name, created_at, last_used_at, revoked_at
             FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn revoke_api_key(&self, key_id: &str) -> StoreResult<Option<bool>> {
        let revoked_before: Option<Option<DateTime<Utc>>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = $1")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        match revoked_before {
            None => Ok(None),
            Some(Some(_)) => Ok(Some(false)),
            Some(None) => {
                let result = sqlx::query(
                    "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(key_id)
                .execute(&self.pool)
                .await?;
                Ok(Some(result.rows_affected() == 1))
            }
        }
    }

    async fn apply_seed(&self, plan: &SeedPlan) -> StoreResult<SeedOutcome> {
        let mut tx = self.pool.begin().await?;
        for t in &plan.tenants {
            sqlx::query(
                "INSERT INTO tenants (id, name, platform, entra_tenant_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE
                 SET name = EXCLUDED.name, platform = EXCLUDED.platform,
                     entra_tenant_id = EXCLUDED.entra_tenant_id",
            )
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.platform)
            .bind(&t.entra_tenant_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::seed("tenant", &t.id, e))?;
        }
        for c in &plan.end_companies {
            sqlx::query(
                "INSERT INTO end_companies (tenant_id, id, name) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET name = EXCLUDED.name",
            )
            .bind(&c.tenant_id)
            .bind(&c.id)
            .bind(&c.name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::seed("end company", &c.id, e))?;
        }
        for a in &plan.agents {
            sqlx::query(
                "INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id, name = EXCLUDED.name",
            )
            .bind(a.id)
            .bind(&a.tenant_id)
            .bind(&a.name)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::seed("agent", &a.id.to_string(), e))?;
        }
        for s in &plan.sessions {
            sqlx::query(
                "INSERT INTO chat_sessions (id, tenant_id, kind, status, end_company_id)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET tenant_id = EXCLUDED.tenant_id, kind = EXCLUDED.kind,
                     status = EXCLUDED.status, end_company_id = EXCLUDED.end_company_id",
            )
            .bind(&s.id)
            .bind(&s.tenant_id)
            .bind(s.kind)
            .bind(s.status)
            .bind(&s.end_company_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::seed("session", &s.id, e))?;
        }
        let mut outcome = SeedOutcome::default();
        for k in &plan.api_keys {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
                    .bind(&k.id)
                    .fetch_one(&mut *tx)
                    .await?;
            if exists {
                sqlx::query(
                    "UPDATE api_keys
                     SET tenant_id = $2, name = $3,
                         key_hash = CASE WHEN $6 THEN $4 ELSE key_hash END,
                         revoked_at = CASE WHEN $5 THEN COALESCE(revoked_at, now()) ELSE revoked_at END
                     WHERE id = $1",
                )
                .bind(&k.id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(&k.key_hash[..])
                .bind(k.revoked)
                .bind(k.replace_existing_hash)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::seed("API key", &k.id, e))?;
            } else {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, name, key_hash, revoked_at)
                     VALUES ($1, $2, $3, $4, CASE WHEN $5 THEN now() END)",
                )
                .bind(&k.id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(&k.key_hash[..])
                .bind(k.revoked)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::seed("API key", &k.id, e))?;
                outcome.created_api_keys.push(k.id.clone());
            }
        }
        tx.commit().await?;
        Ok(outcome)
    }

    async fn list_tenant_rate_limits(&self) -> StoreResult<Vec<(String, u32, u32)>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT tenant_id, per_minute, burst FROM tenant_rate_limits ORDER BY tenant_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, per_minute, burst)| {
                (
                    tenant,
                    u32::try_from(per_minute).unwrap_or(u32::MAX),
                    u32::try_from(burst).unwrap_or(u32::MAX),
                )
            })
            .collect())
    }

    async fn migration_status(&self) -> StoreResult<Vec<MigrationStatus>> {
        // A database never migrated has no bookkeeping table: nothing is applied.
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        Ok(migration_status_of(&MIGRATOR, &applied))
    }

    fn pool_status(&self) -> PoolStatus {
        PoolStatus {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRow>> {
        sqlx::query_as(
            "SELECT kid, generation, algorithm, sealed_private_key, created_at, activates_at
             FROM signing_keys ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn insert_signing_key(&self, key: &SigningKeyRow) -> StoreResult<bool> {
        let result = sqlx::query(
            "INSERT INTO signing_keys
               (kid, generation, algorithm, sealed_private_key, created_at, activates_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.algorithm)
        .bind(&key.sealed_private_key)
        .bind(key.created_at)
        .bind(key.activates_at)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn watch_changes(&self, freshness: &Freshness) -> StoreResult<()> {
        // A connection of its own (not one of the pool's): when the feed is given up for
        // silence, it is dropped mid-read and never handed to a request.
        let options = (*self.pool.connect_options()).clone();
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
        let pool = self.pool.clone();
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

    async fn prune_mints(&self, expired_before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        // Per tenant along (tenant_id, issued_at): no index on expires_at is needed (every mint
        // would pay for one), and a token expires after it is issued.
        // Not worth an fsync of its own (competing with the mints' commits): a deletion lost in
        // a crash is made again by the next round.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        let result = sqlx::query(
            "DELETE FROM session_token_mints WHERE jti IN (
                 SELECT m.jti FROM tenants t
                 CROSS JOIN LATERAL (
                     SELECT jti FROM session_token_mints
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

    async fn prune_idempotency(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        let result = sqlx::query(
            "DELETE FROM mint_idempotency WHERE ctid = ANY(ARRAY(
                 SELECT ctid FROM mint_idempotency WHERE created_at < $1 LIMIT $2))",
        )
        .bind(created_before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
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
