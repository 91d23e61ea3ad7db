//! The directory's writes, one row at a time, each in one transaction with the rules the mint
//! relies on checked inside it, and the tokens a change takes away revoked in the same
//! transaction (so they are in the revocation feed the moment the change commits). Reads for
//! one row and keyset-paginated lists. Caches follow by the change notifications every write to
//! these tables raises.

use chrono::Utc;

use super::{
    codec::{Now, Ts},
    Pool, RateLimitChange, SeedAgent, SeedEndCompany, SeedTenant, SessionKind, SessionRow,
    SessionStatus, Store, StoreResult, TenantRecord,
};

/// Why the directory refuses a write; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryRefusal {
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("no tenant {0:?}")]
    TenantNotFound(String),
    #[error("entra_tenant_id is already tenant {0:?}'s")]
    EntraTenantIdTaken(String),
    #[error("the platform flag is set by `seed` or `directory import` only")]
    PlatformFlag,
    #[error("agent {id} belongs to tenant {tenant_id:?}")]
    AgentOfAnotherTenant { id: i64, tenant_id: String },
    #[error("session belongs to tenant {0:?}; a session never changes tenant")]
    SessionOfAnotherTenant(String),
    #[error("end_company_id names no end company of tenant {0:?}")]
    InvalidEndCompany(String),
    #[error("tenant already has an active Neo Support session, {0:?}")]
    NeoSupportSessionExists(String),
    #[error("{0} session(s) are scoped to this end company")]
    EndCompanyInUse(i64),
    #[error("the tenant still has {0}")]
    TenantInUse(&'static str),
}

/// A write that was made: the row as stored, whether it was created, and how many live tokens
/// it revoked.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub row: T,
    pub created: bool,
    pub revoked_tokens: u64,
}

pub type DirectoryResult<T> = StoreResult<Result<T, DirectoryRefusal>>;

impl Pool {
    /// A writing transaction's first statement: on SQLite the write lock is taken at once, so a
    /// read before the first write cannot be overtaken by another writer.
    pub(super) fn begin_writing(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "BEGIN",
            Self::Sqlite(_) => "BEGIN IMMEDIATE",
        }
    }

    /// Locks a row read in a writing transaction (PostgreSQL; SQLite's write lock covers it).
    fn lock_rows(&self) -> &'static str {
        match self {
            Self::Postgres(_) => " FOR UPDATE",
            Self::Sqlite(_) => "",
        }
    }
}

/// Revokes the live tokens `$where` selects (its parameters from `$4`: `$1` to `$3` are the
/// revocation time, `revoked_by` and now), in the transaction `$tx`. Their feed position comes
/// from the triggers of migration 8.
macro_rules! revoke_live {
    ($tx:expr, $where:literal, |$q:ident| $binds:expr, $revoked_by:expr) => {{
        let $q = sqlx::query(concat!(
            "UPDATE session_token_mints
             SET revoked_at = COALESCE($1, CURRENT_TIMESTAMP), revoked_by = $2
             WHERE revoked_at IS NULL AND expires_at > $3 AND ",
            $where
        ))
        .bind(Now)
        .bind($revoked_by)
        .bind(Ts(Utc::now()));
        $binds.execute(&mut *$tx).await?.rows_affected()
    }};
}

/// Whether tenant `$id` exists, its row locked for the rest of the transaction `$tx` on
/// PostgreSQL (`$lock`: [`Pool::lock_rows`]): writes of one tenant's rows are serialised, so a
/// rule over them (one active Neo Support session) holds.
macro_rules! tenant_locked {
    ($tx:expr, $lock:expr, $id:expr) => {
        sqlx::query_scalar::<_, String>(&format!("SELECT id FROM tenants WHERE id = $1{}", $lock))
            .bind($id)
            .fetch_optional(&mut *$tx)
            .await?
            .is_some()
    };
}

impl Store {
    pub async fn directory_tenant(&self, id: &str) -> StoreResult<Option<TenantRecord>> {
        run!(self, "directory_tenant", Safe, |pool| sqlx::query_as(
            "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
             FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
             WHERE t.id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?)
    }

    /// Tenants by id after `after`, at most `limit`; only `only` when given.
    pub async fn directory_tenants(
        &self,
        after: &str,
        limit: u32,
        only: Option<&str>,
    ) -> StoreResult<Vec<TenantRecord>> {
        run!(self, "directory_tenants", Safe, |pool| sqlx::query_as(
            "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
             FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
             WHERE t.id > $1 AND ($3 IS NULL OR t.id = $3)
             ORDER BY t.id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .bind(only)
        .fetch_all(pool)
        .await?)
    }

    /// Creates or replaces a tenant. `may_set_platform`: whether this write may make or unmake
    /// the platform tenant (an operator's import may; the API may not).
    pub async fn put_tenant(
        &self,
        row: &SeedTenant,
        may_set_platform: bool,
    ) -> DirectoryResult<Written<TenantRecord>> {
        let lock = self.pool.lock_rows();
        run!(self, "put_tenant", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let existing: Option<TenantRecord> = sqlx::query_as(&format!(
                "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
                 FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
                 WHERE t.id = $1{}",
                if lock.is_empty() {
                    ""
                } else {
                    " FOR UPDATE OF t"
                }
            ))
            .bind(&row.id)
            .fetch_optional(&mut *tx)
            .await?;
            let platform_before = existing.as_ref().is_some_and(|t| t.platform);
            if !may_set_platform && platform_before != row.platform {
                return Ok(Err(DirectoryRefusal::PlatformFlag));
            }
            if let Some(tid) = &row.entra_tenant_id {
                let holder: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM tenants WHERE entra_tenant_id = $1 AND id <> $2",
                )
                .bind(tid)
                .bind(&row.id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(holder) = holder {
                    return Ok(Err(DirectoryRefusal::EntraTenantIdTaken(holder)));
                }
            }
            sqlx::query(
                "INSERT INTO tenants (id, name, platform, entra_tenant_id) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, platform = excluded.platform,
                     entra_tenant_id = excluded.entra_tenant_id",
            )
            .bind(&row.id)
            .bind(&row.name)
            .bind(row.platform)
            .bind(&row.entra_tenant_id)
            .execute(&mut *tx)
            .await?;
            match row.rate_limit {
                RateLimitChange::Keep => {}
                RateLimitChange::Clear => {
                    sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = $1")
                        .bind(&row.id)
                        .execute(&mut *tx)
                        .await?;
                }
                RateLimitChange::Set(limit) => {
                    sqlx::query(
                        "INSERT INTO tenant_rate_limits (tenant_id, per_minute, burst)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (tenant_id) DO UPDATE
                         SET per_minute = excluded.per_minute, burst = excluded.burst",
                    )
                    .bind(&row.id)
                    .bind(i64::from(limit.per_minute))
                    .bind(i64::from(limit.burst))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let stored: TenantRecord = sqlx::query_as(
                "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
                 FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
                 WHERE t.id = $1",
            )
            .bind(&row.id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Written {
                row: stored,
                created: existing.is_none(),
                revoked_tokens: 0,
            })
        })
    }

    /// Deletes a tenant that holds nothing: no end company, agent, session, API key or token
    /// record (those are the audit trail: they go with retention). Never the platform tenant.
    pub async fn delete_tenant(&self, id: &str) -> DirectoryResult<()> {
        let lock = self.pool.lock_rows();
        run!(self, "delete_tenant", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let platform: Option<bool> =
                sqlx::query_scalar(&format!("SELECT platform FROM tenants WHERE id = $1{lock}"))
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match platform {
                None => return Ok(Err(DirectoryRefusal::NotFound("tenant"))),
                Some(true) => return Ok(Err(DirectoryRefusal::PlatformFlag)),
                Some(false) => {}
            }
            for (table, what) in [
                ("chat_sessions", "sessions"),
                ("end_companies", "end companies"),
                ("agents", "agents"),
                ("api_keys", "API keys"),
                (
                    "session_token_mints",
                    "token records (kept for audit until retention)",
                ),
            ] {
                let held: bool = sqlx::query_scalar(&format!(
                    "SELECT EXISTS (SELECT 1 FROM {table} WHERE tenant_id = $1)"
                ))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                if held {
                    return Ok(Err(DirectoryRefusal::TenantInUse(what)));
                }
            }
            sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM tenants WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn directory_end_company(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> StoreResult<Option<SeedEndCompany>> {
        run!(self, "directory_end_company", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, name FROM end_companies WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(pool)
        .await?)
    }

    pub async fn directory_end_companies(
        &self,
        tenant_id: &str,
        after: &str,
        limit: u32,
    ) -> StoreResult<Vec<SeedEndCompany>> {
        run!(self, "directory_end_companies", Safe, |pool| {
            sqlx::query_as(
                "SELECT id, tenant_id, name FROM end_companies
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(tenant_id)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
        })
    }

    pub async fn put_end_company(
        &self,
        row: &SeedEndCompany,
    ) -> DirectoryResult<Written<SeedEndCompany>> {
        let lock = self.pool.lock_rows();
        run!(self, "put_end_company", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            if !tenant_locked!(tx, lock, &row.tenant_id) {
                return Ok(Err(DirectoryRefusal::TenantNotFound(row.tenant_id.clone())));
            }
            let created = sqlx::query_scalar::<_, String>(
                "SELECT id FROM end_companies WHERE tenant_id = $1 AND id = $2",
            )
            .bind(&row.tenant_id)
            .bind(&row.id)
            .fetch_optional(&mut *tx)
            .await?
            .is_none();
            sqlx::query(
                "INSERT INTO end_companies (tenant_id, id, name) VALUES ($1, $2, $3)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name",
            )
            .bind(&row.tenant_id)
            .bind(&row.id)
            .bind(&row.name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Written {
                row: row.clone(),
                created,
                revoked_tokens: 0,
            })
        })
    }

    /// Deletes an end company no session is scoped to, revoking the live tokens scoped to it.
    pub async fn delete_end_company(
        &self,
        tenant_id: &str,
        id: &str,
        revoked_by: &str,
    ) -> DirectoryResult<u64> {
        run!(self, "delete_end_company", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let deleted = sqlx::query("DELETE FROM end_companies WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .execute(&mut *tx)
                .await;
            match deleted {
                Ok(done) if done.rows_affected() == 0 => {
                    return Ok(Err(DirectoryRefusal::NotFound("end company")));
                }
                Ok(_) => {}
                // Sessions scoped to it hold it (their foreign key): say how many.
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                    drop(tx);
                    let scoped: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM chat_sessions
                         WHERE tenant_id = $1 AND end_company_id = $2",
                    )
                    .bind(tenant_id)
                    .bind(id)
                    .fetch_one(pool)
                    .await?;
                    return Ok(Err(DirectoryRefusal::EndCompanyInUse(scoped)));
                }
                Err(e) => return Err(e.into()),
            }
            let revoked = revoke_live!(
                tx,
                "tenant_id = $4 AND end_company_id = $5",
                |q| q.bind(tenant_id).bind(id),
                revoked_by
            );
            tx.commit().await?;
            Ok(revoked)
        })
    }

    pub async fn directory_agent(
        &self,
        tenant_id: &str,
        id: i64,
    ) -> StoreResult<Option<SeedAgent>> {
        run!(self, "directory_agent", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, name FROM agents WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant_id)
        .bind(id)
        .fetch_optional(pool)
        .await?)
    }

    pub async fn directory_agents(
        &self,
        tenant_id: &str,
        after: i64,
        limit: u32,
    ) -> StoreResult<Vec<SeedAgent>> {
        run!(self, "directory_agents", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, name FROM agents
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
    }

    pub async fn put_agent(&self, row: &SeedAgent) -> DirectoryResult<Written<SeedAgent>> {
        let lock = self.pool.lock_rows();
        run!(self, "put_agent", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            if !tenant_locked!(tx, lock, &row.tenant_id) {
                return Ok(Err(DirectoryRefusal::TenantNotFound(row.tenant_id.clone())));
            }
            let owner: Option<String> =
                sqlx::query_scalar(&format!("SELECT tenant_id FROM agents WHERE id = $1{lock}"))
                    .bind(row.id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(owner) = &owner {
                if *owner != row.tenant_id {
                    return Ok(Err(DirectoryRefusal::AgentOfAnotherTenant {
                        id: row.id,
                        tenant_id: owner.clone(),
                    }));
                }
            }
            sqlx::query(
                "INSERT INTO agents (id, tenant_id, name) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name",
            )
            .bind(row.id)
            .bind(&row.tenant_id)
            .bind(&row.name)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Written {
                row: row.clone(),
                created: owner.is_none(),
                revoked_tokens: 0,
            })
        })
    }

    /// Deletes an agent, revoking the live tokens that name it (records from before migration
    /// 11 do not say which agents they name: those are not found).
    pub async fn delete_agent(
        &self,
        tenant_id: &str,
        id: i64,
        revoked_by: &str,
    ) -> DirectoryResult<u64> {
        run!(self, "delete_agent", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let deleted = sqlx::query("DELETE FROM agents WHERE tenant_id = $1 AND id = $2")
                .bind(tenant_id)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Ok(Err(DirectoryRefusal::NotFound("agent")));
            }
            let pattern = format!("%,{id},%");
            let revoked = revoke_live!(
                tx,
                "tenant_id = $4 AND allowed_agent_ids LIKE $5",
                |q| q.bind(tenant_id).bind(&pattern),
                revoked_by
            );
            tx.commit().await?;
            Ok(revoked)
        })
    }

    pub async fn directory_session(&self, id: &str) -> StoreResult<Option<SessionRow>> {
        self.find_session(id).await
    }

    pub async fn directory_sessions(
        &self,
        tenant_id: &str,
        after: &str,
        limit: u32,
    ) -> StoreResult<Vec<SessionRow>> {
        run!(self, "directory_sessions", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(pool)
        .await?)
    }

    /// Creates or replaces a session. A session never changes tenant; its end company must be
    /// its tenant's; a tenant has at most one active Neo Support session. Closing it revokes its
    /// live tokens; scoping it to an end company revokes its live tokens scoped otherwise.
    pub async fn put_session(
        &self,
        row: &SessionRow,
        revoked_by: &str,
    ) -> DirectoryResult<Written<SessionRow>> {
        let lock = self.pool.lock_rows();
        run!(self, "put_session", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            // The tenant's row lock serialises writes of its sessions (the Neo Support rule).
            if !tenant_locked!(tx, lock, &row.tenant_id) {
                return Ok(Err(DirectoryRefusal::TenantNotFound(row.tenant_id.clone())));
            }
            let existing: Option<SessionRow> = sqlx::query_as(&format!(
                "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions
                 WHERE id = $1{lock}"
            ))
            .bind(&row.id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = &existing {
                if existing.tenant_id != row.tenant_id {
                    return Ok(Err(DirectoryRefusal::SessionOfAnotherTenant(
                        existing.tenant_id.clone(),
                    )));
                }
            }
            if let Some(end_company_id) = &row.end_company_id {
                let known: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM end_companies WHERE tenant_id = $1 AND id = $2)",
                )
                .bind(&row.tenant_id)
                .bind(end_company_id)
                .fetch_one(&mut *tx)
                .await?;
                if !known {
                    return Ok(Err(DirectoryRefusal::InvalidEndCompany(
                        row.tenant_id.clone(),
                    )));
                }
            }
            if row.kind == SessionKind::NeoSupport && row.status == SessionStatus::Active {
                let other: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM chat_sessions
                     WHERE tenant_id = $1 AND kind = 'neo_support' AND status = 'active'
                       AND id <> $2
                     LIMIT 1",
                )
                .bind(&row.tenant_id)
                .bind(&row.id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(other) = other {
                    return Ok(Err(DirectoryRefusal::NeoSupportSessionExists(other)));
                }
            }
            sqlx::query(
                "INSERT INTO chat_sessions (id, tenant_id, kind, status, end_company_id)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET kind = excluded.kind, status = excluded.status,
                     end_company_id = excluded.end_company_id",
            )
            .bind(&row.id)
            .bind(&row.tenant_id)
            .bind(row.kind)
            .bind(row.status)
            .bind(&row.end_company_id)
            .execute(&mut *tx)
            .await?;
            let mut revoked = 0;
            if row.status == SessionStatus::Closed {
                // Every time, not only on the change: a token whose record was written after an
                // earlier close (minted in the instant before it) is caught by the next one.
                revoked += revoke_live!(
                    tx,
                    "session_id = $4 AND tenant_id = $5",
                    |q| q.bind(&row.id).bind(&row.tenant_id),
                    revoked_by
                );
            } else if let Some(end_company_id) = &row.end_company_id {
                revoked += revoke_live!(
                    tx,
                    "session_id = $4 AND tenant_id = $5
                     AND (end_company_id IS NULL OR end_company_id <> $6)",
                    |q| q.bind(&row.id).bind(&row.tenant_id).bind(end_company_id),
                    revoked_by
                );
            }
            tx.commit().await?;
            Ok(Written {
                row: row.clone(),
                created: existing.is_none(),
                revoked_tokens: revoked,
            })
        })
    }

    /// Deletes a session, revoking its live tokens; their records stay (the audit trail).
    pub async fn delete_session(&self, id: &str, revoked_by: &str) -> DirectoryResult<u64> {
        run!(self, "delete_session", Never, |pool| {
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let tenant: Option<String> =
                sqlx::query_scalar("DELETE FROM chat_sessions WHERE id = $1 RETURNING tenant_id")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(tenant) = tenant else {
                return Ok(Err(DirectoryRefusal::NotFound("session")));
            };
            let revoked = revoke_live!(
                tx,
                "session_id = $4 AND tenant_id = $5",
                |q| q.bind(id).bind(&tenant),
                revoked_by
            );
            tx.commit().await?;
            Ok(revoked)
        })
    }
}
