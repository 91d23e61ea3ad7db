//! The statements both backends share, each written once: `run!` expands the body for a
//! PostgreSQL and a SQLite pool (the SQLite driver binds `$N` by number too), so each arm is
//! type-checked for its own backend, and runs it behind the guard as the named operation (the
//! name the latency metric carries). Values whose storage differs go through `codec`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    codec::{Jti, Now, Ts},
    ApiKeyListing, ApiKeyRow, FeedPosition, IdempotencyClaim, ImportBatch, MigrationStatus,
    MintQuery, MintRow, NewApiKey, Revocation, SeedOutcome, SeedPlan, SessionRow, SigningKeyRow,
    Store, StoreError, StoreResult, TenantRow,
};
use super::{KeyWithdrawal, Pool, Successor, WITHDRAWAL_LOCK};

/// The columns of a [`MintRow`], the token id read back as text on both backends.
macro_rules! mint_columns {
    () => {
        "CAST(jti AS TEXT) AS jti, session_id, tenant_id, minted_by_kind, minted_by,
         minted_by_tenant, end_user, end_company_id, issued_at, expires_at, revoked_at, revoked_by"
    };
}

/// `$head WHERE jti = $1 $tail`, and for a UUIDv7 jti (`$within: Some`) `issued_at` within the
/// second it names (`$2`, `$3`): the partition key, so PostgreSQL reads one day's partition
/// instead of probing every partition's index (a v4 jti, from before migration 13, does that).
macro_rules! by_jti {
    ($within:expr, $head:expr, $tail:expr) => {
        if $within.is_some() {
            concat!(
                $head,
                " WHERE jti = $1 AND issued_at >= $2 AND issued_at < $3",
                $tail
            )
        } else {
            concat!($head, " WHERE jti = $1", $tail)
        }
    };
}

/// A stored rate-limit value as the `u32` the limiter uses (values above it saturate).
fn limit_of(stored: i64) -> u32 {
    u32::try_from(stored).unwrap_or(u32::MAX)
}

impl Store {
    /// Readiness: one round trip to the database. Guarded too: while the database is known to
    /// be gone, readiness answers at once (the guard's own probe is what finds it back).
    pub async fn ping(&self) -> StoreResult<()> {
        let mut result = self.attempt("ping", self.pool.ping()).await;
        let retried = self.retries(super::Retry::Safe, &result);
        if retried {
            result = self.attempt("ping", self.pool.ping()).await;
        }
        self.settle(result, retried)
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> StoreResult<()> {
        self.call("migrate", self.pool.migrate()).await
    }

    /// The migrations this binary knows, each with whether the database has it applied.
    pub async fn migration_status(&self) -> StoreResult<Vec<MigrationStatus>> {
        run!(self, "migration_status", Safe, |pool| {
            // A database never migrated has no bookkeeping table: nothing is applied.
            let applied: Vec<i64> =
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(pool)
                    .await
                    .unwrap_or_default();
            super::migration_status_of(self.pool.migrator(), &applied)
        })
    }

    pub async fn find_api_key_by_hash(
        &self,
        key_hash: &[u8; 32],
    ) -> StoreResult<Option<ApiKeyRow>> {
        run!(self, "find_api_key_by_hash", Safe, |pool| sqlx::query_as(
            "SELECT k.id, k.tenant_id, k.key_hash, k.revoked_at, t.platform AS tenant_platform,
                    k.scopes
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1",
        )
        .bind(&key_hash[..])
        .fetch_optional(pool)
        .await?)
    }

    pub async fn touch_api_key(&self, key_id: &str, used_at: DateTime<Utc>) -> StoreResult<()> {
        run!(self, "touch_api_key", Safe, |pool| {
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2
                 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(key_id)
            .bind(Ts(used_at))
            .execute(pool)
            .await?;
        })
    }

    pub async fn find_session(&self, session_id: &str) -> StoreResult<Option<SessionRow>> {
        run!(self, "find_session", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions WHERE id = $1",
        )
        .bind(session_id)
        .fetch_optional(pool)
        .await?)
    }

    pub async fn end_company_exists(
        &self,
        tenant_id: &str,
        end_company_id: &str,
    ) -> StoreResult<bool> {
        run!(self, "end_company_exists", Safe, |pool| sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM end_companies WHERE tenant_id = $1 AND id = $2)",
        )
        .bind(tenant_id)
        .bind(end_company_id)
        .fetch_one(pool)
        .await?)
    }

    pub async fn find_tenant(&self, tenant_id: &str) -> StoreResult<Option<TenantRow>> {
        run!(self, "find_tenant", Safe, |pool| sqlx::query_as(
            "SELECT id, name, platform FROM tenants WHERE id = $1"
        )
        .bind(tenant_id)
        .fetch_optional(pool)
        .await?)
    }

    /// The tenant whose Microsoft Entra directory is `entra_tenant_id` (a lowercase GUID).
    pub async fn find_tenant_by_entra_id(
        &self,
        entra_tenant_id: &str,
    ) -> StoreResult<Option<TenantRow>> {
        run!(self, "find_tenant_by_entra_id", Safe, |pool| {
            sqlx::query_as("SELECT id, name, platform FROM tenants WHERE entra_tenant_id = $1")
                .bind(entra_tenant_id)
                .fetch_optional(pool)
                .await?
        })
    }

    /// Mint records, newest first (`issued_at`, then `jti`, descending), as `query` says.
    pub async fn list_mints(&self, query: &MintQuery) -> StoreResult<Vec<MintRow>> {
        run!(self, "list_mints", Safe, |pool| sqlx::query_as(concat!(
            "SELECT ",
            mint_columns!(),
            " FROM session_token_mints
             WHERE (tenant_id = $1 OR ($2 IS NOT NULL AND minted_by_tenant = $2))
               AND ($3 IS NULL OR session_id = $3)
               AND ($4 IS NULL OR $4 = (revoked_at IS NULL
                                        AND expires_at > COALESCE($8, CURRENT_TIMESTAMP)))
               AND ($5 IS NULL OR (issued_at, jti) < ($5, $6))
             ORDER BY issued_at DESC, jti DESC
             LIMIT $7"
        ))
        .bind(&query.tenant_id)
        .bind(&query.minted_by_tenant)
        .bind(&query.session_id)
        .bind(query.active)
        .bind(query.after.map(|(at, _)| Ts(at)))
        .bind(query.after.map(|(_, jti)| Jti(jti)))
        .bind(i64::from(query.limit))
        .bind(Now)
        .fetch_all(pool)
        .await?)
    }

    /// One mint record by its jti (on PostgreSQL, a v7 jti reads one partition: [`by_jti!`]).
    pub async fn find_mint(&self, jti: Uuid) -> StoreResult<Option<MintRow>> {
        let within = super::partitions::issued_within(jti);
        // PostgreSQL, a v7 jti: its day's partition by name. Through the partitioned table the
        // prepared statement's generic plan locks every partition before it prunes (twice the
        // database CPU of a one-table read); the named partition is one table. A day without a
        // partition (not made yet, or dropped by retention) is the one case read through the
        // table: its records are in the default partition, or gone.
        if let (Pool::Postgres(_), Some((from, to))) = (&self.pool, within) {
            let sql = format!(
                concat!(
                    "SELECT ",
                    mint_columns!(),
                    " FROM {} WHERE jti = $1 AND issued_at >= $2 AND issued_at < $3"
                ),
                super::partitions::day_partition(from.date_naive())
            );
            let found = run!(self, "find_mint", Safe, |pool| {
                sqlx::query_as(&sql)
                    .bind(Jti(jti))
                    .bind(Ts(from))
                    .bind(Ts(to))
                    .fetch_optional(pool)
                    .await?
            });
            match found {
                Err(error) if error.is_undefined_table() => {}
                found => return found,
            }
        }
        let sql = by_jti!(
            within,
            concat!("SELECT ", mint_columns!(), " FROM session_token_mints"),
            ""
        );
        run!(self, "find_mint", Safe, |pool| {
            let mut query = sqlx::query_as(sql).bind(Jti(jti));
            if let Some((from, to)) = within {
                query = query.bind(Ts(from)).bind(Ts(to));
            }
            query.fetch_optional(pool).await?
        })
    }

    /// Revokes one token (`revoked_by` names who); revoking a revoked token changes nothing.
    /// Returns the record as it is afterwards, `None` for an unknown jti. One statement: the
    /// right-hand sides see the row as it was, so a revoked row keeps who and when.
    pub async fn revoke_mint(&self, jti: Uuid, revoked_by: &str) -> StoreResult<Option<MintRow>> {
        let within = super::partitions::issued_within(jti);
        let sql = by_jti!(
            within,
            "UPDATE session_token_mints
             SET revoked_at = COALESCE(revoked_at, $4, CURRENT_TIMESTAMP),
                 revoked_by = CASE WHEN revoked_at IS NULL THEN $5 ELSE revoked_by END",
            concat!(" RETURNING ", mint_columns!())
        );
        run!(self, "revoke_mint", Safe, |pool| {
            let mut query = sqlx::query_as(sql).bind(Jti(jti));
            // `$2`, `$3`: bound only when the statement names them; unnamed, they are NULL.
            query = match within {
                Some((from, to)) => query.bind(Ts(from)).bind(Ts(to)),
                None => query.bind(None::<Ts>).bind(None::<Ts>),
            };
            query
                .bind(Now)
                .bind(revoked_by)
                .fetch_optional(pool)
                .await?
        })
    }

    /// Revokes every token of `session_id` issued before `issued_before` that is not revoked
    /// yet and that the caller may act on: `tenant_id`'s tokens, and, for a platform caller
    /// (`minted_by_tenant: Some`), the tokens it minted into other tenants; how many.
    pub async fn revoke_session_mints(
        &self,
        session_id: &str,
        issued_before: DateTime<Utc>,
        revoked_by: &str,
        tenant_id: &str,
        minted_by_tenant: Option<&str>,
    ) -> StoreResult<u64> {
        run!(self, "revoke_session_mints", Never, |pool| sqlx::query(
            "UPDATE session_token_mints
             SET revoked_at = COALESCE($3, CURRENT_TIMESTAMP), revoked_by = $4
             WHERE session_id = $1 AND issued_at < $2 AND revoked_at IS NULL
               AND (tenant_id = $5 OR minted_by_tenant = $6)",
        )
        .bind(session_id)
        .bind(Ts(issued_before))
        .bind(Now)
        .bind(revoked_by)
        .bind(tenant_id)
        .bind(minted_by_tenant)
        .execute(pool)
        .await?
        .rows_affected())
    }

    /// Revoked tokens that have not expired, at most `limit`; of `tenant_id`'s tokens, or of
    /// every tenant's with `None`; only those below `horizon` ([`Store::revocation_horizon`]:
    /// those above may still be joined by one that commits late). By position (`from: Some`
    /// or no `since`): in the feed's order `(revoked_seq, jti)`, after `from` when given. By
    /// time (`since`, the feed's first poll by time): in `(revoked_at, jti)` order, after this
    /// `(revoked_at, jti)` (`jti: None` is before every jti).
    pub async fn revocations_after(
        &self,
        tenant_id: Option<&str>,
        horizon: i64,
        from: Option<FeedPosition>,
        since: Option<(DateTime<Utc>, Option<Uuid>)>,
        limit: u32,
    ) -> StoreResult<Vec<Revocation>> {
        macro_rules! feed_query {
            ($order:literal) => {
                concat!(
                    "SELECT CAST(jti AS TEXT) AS jti, expires_at, revoked_at, revoked_seq
                     FROM session_token_mints
                     WHERE revoked_seq IS NOT NULL AND revoked_seq < $1 AND revoked_at IS NOT NULL
                       AND ($2 IS NULL OR revoked_seq > $2 OR (revoked_seq = $2 AND jti > $3))
                       AND ($4 IS NULL OR revoked_at > $4 OR (revoked_at = $4 AND jti > $5))
                       AND expires_at > COALESCE($6, CURRENT_TIMESTAMP)
                       AND ($7 IS NULL OR tenant_id = $7)
                     ORDER BY ",
                    $order,
                    " LIMIT $8"
                )
            };
        }
        let (from, since) = match from {
            Some(from) => (Some(from), None),
            None => (None, since),
        };
        let sql = if since.is_some() {
            feed_query!("revoked_at, jti")
        } else {
            feed_query!("revoked_seq, jti")
        };
        let (since_at, since_jti) = since.unzip();
        run!(self, "revocations_after", Safe, |pool| sqlx::query_as(sql)
            .bind(horizon)
            .bind(from.map(|p| p.seq))
            .bind(from.and_then(|p| p.jti).map(Jti))
            .bind(since_at.map(Ts))
            .bind(since_jti.flatten().map(Jti))
            .bind(Now)
            .bind(tenant_id)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?)
    }

    /// Claims `(principal, key)` for a mint with `request_hash`, replacing a claim older than
    /// `expired_before`, or one never settled (its mint died) older than `abandoned_before`.
    /// `None`: claimed, mint now; else the claim that was there. One statement when it claims.
    pub async fn claim_idempotency(
        &self,
        principal: &str,
        key: &str,
        request_hash: &[u8; 32],
        now: DateTime<Utc>,
        expired_before: DateTime<Utc>,
        abandoned_before: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyClaim>> {
        run!(self, "claim_idempotency", Never, |pool| {
            let claimed = sqlx::query(
                "INSERT INTO mint_idempotency (principal, idem_key, request_hash, created_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (principal, idem_key) DO UPDATE
                 SET request_hash = excluded.request_hash, claims = NULL, claims_mac = NULL,
                     created_at = excluded.created_at
                 WHERE mint_idempotency.created_at < $5
                    OR (mint_idempotency.claims IS NULL AND mint_idempotency.created_at < $6)",
            )
            .bind(principal)
            .bind(key)
            .bind(&request_hash[..])
            .bind(Ts(now))
            .bind(Ts(expired_before))
            .bind(Ts(abandoned_before))
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            if claimed {
                None
            } else {
                sqlx::query_as(
                    "SELECT request_hash, claims, claims_mac FROM mint_idempotency
                     WHERE principal = $1 AND idem_key = $2",
                )
                .bind(principal)
                .bind(key)
                .fetch_optional(pool)
                .await?
            }
        })
    }

    /// Stores the minted token's claims (JSON) and their MAC on a claim; `None` removes the
    /// claim (the mint failed: a retry may try again).
    pub async fn settle_idempotency(
        &self,
        principal: &str,
        key: &str,
        claims: Option<(&str, &[u8])>,
    ) -> StoreResult<()> {
        run!(self, "settle_idempotency", Safe, |pool| {
            let statement = match claims {
                Some((claims, mac)) => sqlx::query(
                    "UPDATE mint_idempotency SET claims = $3, claims_mac = $4
                     WHERE principal = $1 AND idem_key = $2",
                )
                .bind(principal)
                .bind(key)
                .bind(claims)
                .bind(mac),
                None => sqlx::query(
                    "DELETE FROM mint_idempotency WHERE principal = $1 AND idem_key = $2",
                )
                .bind(principal)
                .bind(key),
            };
            statement.execute(pool).await?;
        })
    }

    pub async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        run!(self, "create_api_key", Never, |pool| {
            sqlx::query(
                "INSERT INTO api_keys (id, tenant_id, name, key_hash, created_at, scopes)
                 VALUES ($1, $2, $3, $4, COALESCE($5, CURRENT_TIMESTAMP), $6)",
            )
            .bind(&key.id)
            .bind(&key.tenant_id)
            .bind(&key.name)
            .bind(&key.key_hash[..])
            .bind(Now)
            .bind(key.scopes.to_stored())
            .execute(pool)
            .await?;
        })
    }

    pub async fn list_api_keys(&self, tenant_id: &str) -> StoreResult<Vec<ApiKeyListing>> {
        run!(self, "list_api_keys", Safe, |pool| sqlx::query_as(
            "SELECT id, tenant_id, name, created_at, last_used_at, revoked_at, scopes
             FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant_id)
        .fetch_all(pool)
        .await?)
    }

    /// Returns `None` for an unknown key, else whether this call revoked it (false: already
    /// revoked). One statement when it revokes; a look-up only to tell the other two apart.
    pub async fn revoke_api_key(&self, key_id: &str) -> StoreResult<Option<bool>> {
        run!(self, "revoke_api_key", Never, |pool| {
            let revoked = sqlx::query(
                "UPDATE api_keys SET revoked_at = COALESCE($2, CURRENT_TIMESTAMP)
                 WHERE id = $1 AND revoked_at IS NULL",
            )
            .bind(key_id)
            .bind(Now)
            .execute(pool)
            .await?
            .rows_affected()
                == 1;
            if revoked {
                Some(true)
            } else {
                let exists: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
                        .bind(key_id)
                        .fetch_one(pool)
                        .await?;
                exists.then_some(false)
            }
        })
    }

    /// A tenant's rate-limit override: `(per_minute, burst)`.
    pub async fn tenant_rate_limit(&self, tenant_id: &str) -> StoreResult<Option<(u32, u32)>> {
        let row: Option<(i64, i64)> =
            run!(self, "tenant_rate_limit", Safe, |pool| sqlx::query_as(
                "SELECT per_minute, burst FROM tenant_rate_limits WHERE tenant_id = $1"
            )
            .bind(tenant_id)
            .fetch_optional(pool)
            .await?)?;
        Ok(row.map(|(per_minute, burst)| (limit_of(per_minute), limit_of(burst))))
    }

    /// Sets (`Some`) or removes (`None`) a tenant's override; false for an unknown tenant.
    pub async fn set_tenant_rate_limit(
        &self,
        tenant_id: &str,
        limit: Option<(u32, u32)>,
    ) -> StoreResult<bool> {
        run!(self, "set_tenant_rate_limit", Safe, |pool| {
            let changed = match limit {
                // Inserts nothing for an unknown tenant.
                Some((per_minute, burst)) => sqlx::query(
                    "INSERT INTO tenant_rate_limits (tenant_id, per_minute, burst)
                     SELECT id, $2, $3 FROM tenants WHERE id = $1
                     ON CONFLICT (tenant_id) DO UPDATE
                     SET per_minute = excluded.per_minute, burst = excluded.burst",
                )
                .bind(tenant_id)
                .bind(i64::from(per_minute))
                .bind(i64::from(burst))
                .execute(pool)
                .await?
                .rows_affected(),
                None => sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = $1")
                    .bind(tenant_id)
                    .execute(pool)
                    .await?
                    .rows_affected(),
            };
            if changed > 0 {
                true
            } else {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenants WHERE id = $1)")
                    .bind(tenant_id)
                    .fetch_one(pool)
                    .await?
            }
        })
    }

    /// Every tenant's rate-limit override: `(tenant_id, per_minute, burst)`, by tenant.
    pub async fn list_tenant_rate_limits(&self) -> StoreResult<Vec<(String, u32, u32)>> {
        let rows: Vec<(String, i64, i64)> = run!(self, "list_tenant_rate_limits", Safe, |pool| {
            sqlx::query_as(
                "SELECT tenant_id, per_minute, burst FROM tenant_rate_limits ORDER BY tenant_id",
            )
            .fetch_all(pool)
            .await?
        })?;
        Ok(rows
            .into_iter()
            .map(|(tenant, per_minute, burst)| (tenant, limit_of(per_minute), limit_of(burst)))
            .collect())
    }

    /// Every signing key, by generation.
    pub async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRow>> {
        run!(self, "signing_keys", Safe, |pool| sqlx::query_as(
            "SELECT kid, generation, algorithm, sealed_private_key, created_at, activates_at,
                    withdrawn_at
             FROM signing_keys ORDER BY generation",
        )
        .fetch_all(pool)
        .await?)
    }

    /// Inserts a signing key; false when its generation (or kid) exists already, i.e. another
    /// replica or command got there first.
    pub async fn insert_signing_key(&self, key: &SigningKeyRow) -> StoreResult<bool> {
        run!(self, "insert_signing_key", Never, |pool| sqlx::query(
            "INSERT INTO signing_keys
               (kid, generation, algorithm, sealed_private_key, created_at, activates_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        )
        .bind(&key.kid)
        .bind(key.generation)
        .bind(&key.algorithm)
        .bind(&key.sealed_private_key)
        .bind(Ts(key.created_at))
        .bind(Ts(key.activates_at))
        .execute(pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Deletes signing key `kid` if it starts signing after `not_before` (a `next` key that has
    /// not signed); false when there is no such row.
    pub async fn delete_next_signing_key(
        &self,
        kid: &str,
        not_before: DateTime<Utc>,
    ) -> StoreResult<bool> {
        run!(self, "delete_next_signing_key", Never, |pool| sqlx::query(
            "DELETE FROM signing_keys WHERE kid = $1 AND activates_at > $2",
        )
        .bind(kid)
        .bind(Ts(not_before))
        .execute(pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Withdraws a signing key in one transaction: marks it withdrawn, brings its successor in
    /// (when it was the key signing), and revokes the live tokens it signed. `None` (nothing
    /// changed) when the keys are no longer as the caller read them: another command changed
    /// them meanwhile. Else how many tokens were revoked.
    pub async fn withdraw_signing_key(
        &self,
        withdrawal: &KeyWithdrawal<'_>,
    ) -> StoreResult<Option<u64>> {
        let w = withdrawal;
        let begin = self.pool.begin_writing();
        // PostgreSQL: the lock every mint record's insert takes shared (migration 12), so no
        // record of this key commits unseen by the revocation below. SQLite's write lock,
        // taken by BEGIN IMMEDIATE, does the same.
        let exclude_recorders = match self.pool {
            Pool::Postgres(_) => Some("SELECT pg_advisory_xact_lock($1)"),
            Pool::Sqlite(_) => None,
        };
        run!(self, "withdraw_signing_key", Never, |pool| {
            let mut tx = pool.begin_with(begin).await?;
            if let Some(lock) = exclude_recorders {
                sqlx::query(lock)
                    .bind(WITHDRAWAL_LOCK)
                    .execute(&mut *tx)
                    .await?;
            }
            let marked = sqlx::query(
                "UPDATE signing_keys SET withdrawn_at = $2
                 WHERE kid = $1 AND withdrawn_at IS NULL AND activates_at = $3",
            )
            .bind(w.kid)
            .bind(Ts(w.at))
            .bind(Ts(w.activates_at))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if marked != 1 {
                return Ok(None);
            }
            let succeeded = match &w.successor {
                None => true,
                Some(Successor::Promote { kid, activates_at }) => {
                    sqlx::query(
                        "UPDATE signing_keys SET activates_at = $2
                         WHERE kid = $1 AND withdrawn_at IS NULL AND activates_at = $3",
                    )
                    .bind(kid)
                    .bind(Ts(w.at))
                    .bind(Ts(*activates_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1
                }
                Some(Successor::Insert(key)) => {
                    sqlx::query(
                        "INSERT INTO signing_keys
                           (kid, generation, algorithm, sealed_private_key, created_at,
                            activates_at)
                         VALUES ($1, $2, $3, $4, $5, $6)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(&key.kid)
                    .bind(key.generation)
                    .bind(&key.algorithm)
                    .bind(&key.sealed_private_key)
                    .bind(Ts(key.created_at))
                    .bind(Ts(key.activates_at))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1
                }
            };
            if !succeeded {
                return Ok(None);
            }
            // Live records only, along (tenant_id, issued_at) as pruning goes: by the key
            // recorded, or, for records from before keys were recorded, by the key's window.
            let revoked = sqlx::query(
                "UPDATE session_token_mints
                 SET revoked_at = COALESCE($1, CURRENT_TIMESTAMP), revoked_by = $2
                 WHERE revoked_at IS NULL AND expires_at > $3
                   AND tenant_id IN (SELECT id FROM tenants) AND issued_at >= $4
                   AND (kid = $5 OR (kid IS NULL AND issued_at <= $6))",
            )
            .bind(Now)
            .bind(w.revoked_by)
            .bind(Ts(w.at))
            .bind(Ts(w.issued_from))
            .bind(w.kid)
            .bind(Ts(w.unrecorded_until))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Some(revoked)
        })
    }

    /// Deletes at most `limit` idempotency claims made before `created_before`; how many.
    pub async fn prune_idempotency(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        run!(self, "prune_idempotency", Never, |pool| sqlx::query(
            "DELETE FROM mint_idempotency WHERE (principal, idem_key) IN (
                 SELECT principal, idem_key FROM mint_idempotency WHERE created_at < $1 LIMIT $2)",
        )
        .bind(Ts(created_before))
        .bind(i64::from(limit))
        .execute(pool)
        .await?
        .rows_affected())
    }

    /// Upserts the whole plan in one transaction: nothing when a row is refused.
    pub async fn apply_seed(&self, plan: &SeedPlan) -> StoreResult<SeedOutcome> {
        run!(self, "apply_seed", Never, |pool| {
            // SQLite: the write lock at once (waiting out another writer), rather than a read
            // transaction that fails with "database is locked" when a background writer (e.g.
            // the start-up retention round) commits before it upgrades.
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            // The directory's rows go the way of `directory import`, under the same rules; a
            // refused row fails the whole fixture.
            let outcome = super::import::import_rows(&mut *tx, &ImportBatch::of_plan(plan)).await?;
            if let Some(refused) = outcome.refused.into_iter().next() {
                return Err(StoreError::Seed {
                    what: refused.what,
                    id: refused.id,
                    problem: refused.why.to_string(),
                });
            }
            let mut outcome = SeedOutcome::default();
            for k in &plan.api_keys {
                let exists: bool =
                    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1)")
                        .bind(&k.id)
                        .fetch_one(&mut *tx)
                        .await?;
                let written = if exists {
                    sqlx::query(
                        "UPDATE api_keys
                         SET tenant_id = $2, name = $3, scopes = $8,
                             key_hash = CASE WHEN $6 THEN $4 ELSE key_hash END,
                             revoked_at = CASE WHEN $5
                                          THEN COALESCE(revoked_at, $7, CURRENT_TIMESTAMP)
                                          ELSE revoked_at END
                         WHERE id = $1",
                    )
                    .bind(&k.id)
                    .bind(&k.tenant_id)
                    .bind(&k.name)
                    .bind(&k.key_hash[..])
                    .bind(k.revoked)
                    .bind(k.replace_existing_hash)
                    .bind(Now)
                    .bind(k.scopes.to_stored())
                    .execute(&mut *tx)
                    .await
                } else {
                    sqlx::query(
                        "INSERT INTO api_keys
                             (id, tenant_id, name, key_hash, created_at, revoked_at, scopes)
                         VALUES ($1, $2, $3, $4, COALESCE($6, CURRENT_TIMESTAMP),
                                 CASE WHEN $5 THEN COALESCE($6, CURRENT_TIMESTAMP) END, $7)",
                    )
                    .bind(&k.id)
                    .bind(&k.tenant_id)
                    .bind(&k.name)
                    .bind(&k.key_hash[..])
                    .bind(k.revoked)
                    .bind(Now)
                    .bind(k.scopes.to_stored())
                    .execute(&mut *tx)
                    .await
                };
                written.map_err(|e| StoreError::seed("API key", &k.id, e))?;
                if !exists {
                    outcome.created_api_keys.push(k.id.clone());
                }
            }
            tx.commit().await?;
            outcome
        })
    }
}
