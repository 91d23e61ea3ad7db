//! SQLite implementation of [`Store`]: the embedded default, so the service runs with no other
//! server. WAL journal, a busy timeout and full fsync on commit, so concurrent mints wait for the
//! writer lock instead of failing, and a recorded mint survives a crash.

use std::{path::Path, str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    SqlitePool,
};

use super::{
    migration_status_of, ApiKeyListing, ApiKeyRow, IdempotencyClaim, MigrationStatus, MintQuery,
    MintRecord, MintRow, NewApiKey, PoolStatus, Revocation, SeedOutcome, SeedPlan, SessionRow,
    SigningKeyRow, Store, StoreError, StoreResult, TenantRow,
};
use crate::cache::{Freshness, Topic};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another one's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    pool: SqlitePool,
}

/// Timestamps are stored as fixed-width RFC 3339 UTC text, so they also compare as text.
fn ts(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl SqliteStore {
    /// Opens (creating when missing, with its directory) the database file named by `url`.
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            create_private_dir(dir)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }
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

#[async_trait]
impl Store for SqliteStore {
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
             WHERE k.key_hash = ?1",
        )
        .bind(&key_hash[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn touch_api_key(&self, key_id: &str, used_at: DateTime<Utc>) -> StoreResult<()> {
        let used_at = ts(used_at);
        sqlx::query(
            "UPDATE api_keys SET last_used_at = ?2
             WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
        )
        .bind(key_id)
        .bind(used_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn find_session(&self, session_id: &str) -> StoreResult<Option<SessionRow>> {
        sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions WHERE id = ?1",
        )
        .bind(session_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn end_company_exists(&self, tenant_id: &str, end_company_id: &str) -> StoreResult<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM end_companies WHERE tenant_id = ?1 AND id = ?2)",
        )
        .bind(tenant_id)
        .bind(end_company_id)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn existing_agents(&self, tenant_id: &str, agent_ids: &[i64]) -> StoreResult<Vec<i64>> {
        // One statement for any number of ids: the list travels as a JSON array.
        let ids = serde_json::to_string(agent_ids).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query_scalar(
            "SELECT id FROM agents WHERE tenant_id = ?1 AND id IN (SELECT value FROM json_each(?2))",
        )
        .bind(tenant_id)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn record_mints(&self, records: &[MintRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO session_token_mints
               (jti, session_id, tenant_id, minted_by_kind, minted_by, end_user, issued_at,
                expires_at, minted_by_tenant, end_company_id) ",
        );
        insert.push_values(records, |mut row, r| {
            row.push_bind(r.jti.to_string())
                .push_bind(r.session_id.clone())
                .push_bind(r.tenant_id.clone())
                .push_bind(r.minted_by_kind)
                .push_bind(r.minted_by.clone())
                .push_bind(r.end_user.clone())
                .push_bind(ts(r.issued_at))
                .push_bind(ts(r.expires_at))
                .push_bind(r.minted_by_tenant.clone())
                .push_bind(r.end_company_id.clone());
        });
        insert.build().execute(&self.pool).await?;
        Ok(())
    }

    async fn find_tenant(&self, tenant_id: &str) -> StoreResult<Option<TenantRow>> {
        sqlx::query_as("SELECT id, name, platform FROM tenants WHERE id = ?1")
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn find_tenant_by_entra_id(
        &self,
        entra_tenant_id: &str,
    ) -> StoreResult<Option<TenantRow>> {
        sqlx::query_as("SELECT id, name, platform FROM tenants WHERE entra_tenant_id = ?1")
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
            "DELETE FROM mint_idempotency WHERE principal = ?1 AND idem_key = ?2
               AND (created_at < ?3 OR (claims IS NULL AND created_at < ?4))",
        )
        .bind(principal)
        .bind(key)
        .bind(ts(expired_before))
        .bind(ts(abandoned_before))
        .execute(&mut *tx)
        .await?;
        let inserted = sqlx::query(
            "INSERT INTO mint_idempotency (principal, idem_key, request_hash, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
        )
        .bind(principal)
        .bind(key)
        .bind(&request_hash[..])
        .bind(ts(now))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        let existing = if inserted {
            None
        } else {
            sqlx::query_as(
                "SELECT request_hash, claims FROM mint_idempotency
                 WHERE principal = ?1 AND idem_key = ?2",
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
            Some(_) => {
                "UPDATE mint_idempotency SET claims = ?3 WHERE principal = ?1 AND idem_key = ?2"
            }
            None => {
                "DELETE FROM mint_idempotency WHERE principal = ?1 AND idem_key = ?2 AND ?3 IS NULL"
            }
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
            "SELECT jti, session_id, tenant_id, minted_by_kind, minted_by, minted_by_tenant,
                    end_user, end_company_id, issued_at, expires_at, revoked_at, revoked_by
             FROM session_token_mints
             WHERE (tenant_id = ?1 OR (?2 IS NOT NULL AND minted_by_tenant = ?2))
               AND (?3 IS NULL OR session_id = ?3)
               AND (?4 IS NULL OR ?4 = (revoked_at IS NULL AND expires_at > ?8))
               AND (?5 IS NULL OR (issued_at, jti) < (?5, ?6))
             ORDER BY issued_at DESC, jti DESC
             LIMIT ?7",
        )
        .bind(&query.tenant_id)
        .bind(&query.minted_by_tenant)
        .bind(&query.session_id)
        .bind(query.active)
        .bind(query.after.map(|(at, _)| ts(at)))
        .bind(query.after.map(|(_, jti)| jti.to_string()))
        .bind(i64::from(query.limit))
        .bind(ts(Utc::now()))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn find_mint(&self, jti: uuid::Uuid) -> StoreResult<Option<MintRow>> {
        sqlx::query_as(concat!("SELECT jti, session_id, tenant_id, minted_by_kind, minted_by, minted_by_tenant,                     end_user, end_company_id, issued_at, expires_at, revoked_at, revoked_by              FROM session_token_mints", " WHERE jti = ?1"))
            .bind(jti.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::from)
    }

    async fn revoke_mint(&self, jti: uuid::Uuid, revoked_by: &str) -> StoreResult<Option<MintRow>> {
        sqlx::query(
            "UPDATE session_token_mints SET revoked_at = ?2, revoked_by = ?3
             WHERE jti = ?1 AND revoked_at IS NULL",
        )
        .bind(jti.to_string())
        .bind(ts(Utc::now()))
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
            "UPDATE session_token_mints SET revoked_at = ?3, revoked_by = ?4
             WHERE session_id = ?1 AND issued_at < ?2 AND revoked_at IS NULL",
        )
        .bind(session_id)
        .bind(ts(issued_before))
        .bind(ts(Utc::now()))
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
            "SELECT jti, expires_at, revoked_at FROM session_token_mints
             WHERE (revoked_at > ?1 OR (revoked_at = ?1 AND jti > ?5)) AND expires_at > ?2
               AND (?3 IS NULL OR tenant_id = ?3)
             ORDER BY revoked_at, jti LIMIT ?4",
        )
        .bind(ts(since))
        .bind(ts(Utc::now()))
        .bind(tenant_id)
        .bind(i64::from(limit))
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&key.id)
        .bind(&key.tenant_id)
        .bind(&key.name)
        .bind(&key.key_hash[..])
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn tenant_rate_limit(&self, tenant_id: &str) -> StoreResult<Option<(u32, u32)>> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT per_minute, burst FROM tenant_rate_limits WHERE tenant_id = ?1")
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
                    "INSERT INTO tenant_rate_limits (tenant_id, per_minute, burst) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant_id) DO UPDATE SET per_minute = excluded.per_minute, burst = excluded.burst",
                )
                .bind(tenant_id)
                .bind(i64::from(per_minute))
                .bind(i64::from(burst))
                .execute(&self.pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = ?1")
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
             FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::from)
    }

    async fn revoke_api_key(&self, key_id: &str) -> StoreResult<Option<bool>> {
        let revoked_before: Option<Option<String>> =
            sqlx::query_scalar("SELECT revoked_at FROM api_keys WHERE id = ?1")
                .bind(key_id)
                .fetch_optional(&self.pool)
                .await?;
        match revoked_before {
            None => Ok(None),
            Some(Some(_)) => Ok(Some(false)),
            Some(None) => {
                let result = sqlx::query(
                    "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )
                .bind(key_id)
                .bind(ts(Utc::now()))
                .execute(&self.pool)
                .await?;
                Ok(Some(result.rows_affected() == 1))
            }
        }
    }

    async fn apply_seed(&self, plan: &SeedPlan) -> StoreResult<SeedOutcome> {
        let now = ts(Utc::now());
        let mut tx = self.pool.begin().await?;
        for t in &plan.tenants {
            sqlx::query(
                "INSERT INTO tenants (id, name, platform, entra_tenant_id) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, platform = excluded.platform,
                     entra_tenant_id = excluded.entra_tenant_id",
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
                "INSERT INTO end_companies (tenant_id, id, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name",
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
                "INSERT INTO agents (id, tenant_id, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET tenant_id = excluded.tenant_id, name = excluded.name",
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
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE
                 SET tenant_id = excluded.tenant_id, kind = excluded.kind,
                     status = excluded.status, end_company_id = excluded.end_company_id",
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
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = ?1)")
                    .bind(&k.id)
                    .fetch_one(&mut *tx)
                    .await?;
            if exists {
                sqlx::query(
                    "UPDATE api_keys
                     SET tenant_id = ?2, name = ?3,
                         key_hash = CASE WHEN ?6 THEN ?4 ELSE key_hash END,
                         revoked_at = CASE WHEN ?5 THEN COALESCE(revoked_at, ?7) ELSE revoked_at END
                     WHERE id = ?1",
                )
                .bind(&k.id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(&k.key_hash[..])
                .bind(k.revoked)
                .bind(k.replace_existing_hash)
                .bind(&now)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::seed("API key", &k.id, e))?;
            } else {
                sqlx::query(
                    "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at, revoked_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, CASE WHEN ?6 THEN ?5 END)",
                )
                .bind(&k.id)
                .bind(&k.tenant_id)
                .bind(&k.name)
                .bind(&k.key_hash[..])
                .bind(&now)
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
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.algorithm)
        .bind(&key.sealed_private_key)
        .bind(ts(key.created_at))
        .bind(ts(key.activates_at))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn watch_changes(&self, freshness: &Freshness) -> StoreResult<()> {
        let (mut last,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(seq), 0) FROM cache_changes")
            .fetch_one(&self.pool)
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
            .fetch_all(&self.pool)
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
                    .bind(ts(keep_from))
                    .execute(&self.pool)
                    .await?;
            }
        }
    }

    async fn prune_mints(&self, expired_before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        // Along (tenant_id, issued_at), as on PostgreSQL: no index on expires_at.
        let result = sqlx::query(
            "DELETE FROM session_token_mints WHERE rowid IN (
                 SELECT rowid FROM session_token_mints
                 WHERE tenant_id IN (SELECT id FROM tenants) AND issued_at < ?1 AND expires_at < ?1
                 LIMIT ?2)",
        )
        .bind(ts(expired_before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn prune_idempotency(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        let result = sqlx::query(
            "DELETE FROM mint_idempotency WHERE rowid IN (
                 SELECT rowid FROM mint_idempotency WHERE created_at < ? LIMIT ?)",
        )
        .bind(ts(created_before))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

/// How often the change log is read: the longest a change made elsewhere (the CLI, the sqlite3
/// shell) waits to reach this process's caches.
const CHANGE_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long change-log rows are kept (for another process reading the same file).
const CHANGE_LOG_KEEP: Duration = Duration::from_secs(3600);
