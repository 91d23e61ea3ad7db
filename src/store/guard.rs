//! Fail fast while the database is unreachable: once a call finds the connection gone, every
//! call is refused at once (`StoreError::Unavailable`) instead of waiting out the pool's acquire
//! timeout, while one background probe pings the database every 100 ms and lets calls through
//! again the moment it answers.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    ApiKeyListing, ApiKeyRow, IdempotencyClaim, MigrationStatus, MintQuery, MintRecord, MintRow,
    NewApiKey, PoolStatus, Revocation, SeedOutcome, SeedPlan, SessionRow, SigningKeyRow, Store,
    StoreError, StoreResult, TenantRow,
};
use crate::{cache::Freshness, metrics::Metrics};

/// How often the probe pings an unreachable database, and how long one ping may take.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct GuardedStore {
    inner: Arc<dyn Store>,
    down: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl GuardedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            down: Arc::new(AtomicBool::new(false)),
            metrics,
        }
    }

    /// A store whose database was not reachable at start: every call is refused until the
    /// background preparation (create the database if missing and migrate, with
    /// `migrate_on_start`; else a ping) succeeds, retried with a logged back-off of 1 s doubling
    /// to 30 s.
    pub fn starting(
        inner: Arc<dyn Store>,
        url: String,
        migrate_on_start: bool,
        metrics: Arc<Metrics>,
    ) -> Self {
        let down = Arc::new(AtomicBool::new(true));
        let prepared = Arc::clone(&down);
        let store = Arc::clone(&inner);
        tokio::spawn(async move {
            let mut delay = Duration::from_secs(1);
            loop {
                let attempt = async {
                    if migrate_on_start {
                        super::create_database_if_missing(&url).await?;
                        store.migrate().await
                    } else {
                        store.ping().await
                    }
                };
                match attempt.await {
                    Ok(()) => {
                        prepared.store(false, Ordering::Release);
                        tracing::info!("database reachable and migrated; serving");
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in_seconds = delay.as_secs(), "database not ready yet");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
        Self {
            inner,
            down,
            metrics,
        }
    }

    /// Whether calls are being refused because the database was found unreachable.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    async fn guarded<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        if self.is_down() {
            return Err(StoreError::Unavailable);
        }
        let started = std::time::Instant::now();
        let result = call.await;
        self.metrics.observe_store(operation, started.elapsed());
        if let Err(error) = &result {
            if error.is_connection_lost() {
                self.trip(error);
            }
        }
        result
    }

    fn trip(&self, error: &StoreError) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::error!(%error, "database unreachable; refusing database work until it answers again");
        let inner = Arc::clone(&self.inner);
        let down = Arc::clone(&self.down);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(PROBE_INTERVAL).await;
                if let Ok(Ok(())) = tokio::time::timeout(PROBE_TIMEOUT, inner.ping()).await {
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

#[async_trait]
impl Store for GuardedStore {
    async fn migrate(&self) -> StoreResult<()> {
        self.guarded("migrate", self.inner.migrate()).await
    }

    /// Guarded too: while the database is known to be gone, readiness answers at once (the
    /// guard's own probe is what finds it back).
    async fn ping(&self) -> StoreResult<()> {
        self.guarded("ping", self.inner.ping()).await
    }

    async fn find_api_key_by_hash(&self, key_hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRow>> {
        self.guarded(
            "find_api_key_by_hash",
            self.inner.find_api_key_by_hash(key_hash),
        )
        .await
    }

    async fn touch_api_key(&self, key_id: &str, used_at: DateTime<Utc>) -> StoreResult<()> {
        self.guarded("touch_api_key", self.inner.touch_api_key(key_id, used_at))
            .await
    }

    async fn find_session(&self, session_id: &str) -> StoreResult<Option<SessionRow>> {
        self.guarded("find_session", self.inner.find_session(session_id))
            .await
    }

    async fn end_company_exists(&self, tenant_id: &str, end_company_id: &str) -> StoreResult<bool> {
        self.guarded(
            "end_company_exists",
            self.inner.end_company_exists(tenant_id, end_company_id),
        )
        .await
    }

    async fn existing_agents(&self, tenant_id: &str, agent_ids: &[i64]) -> StoreResult<Vec<i64>> {
        self.guarded(
            "existing_agents",
            self.inner.existing_agents(tenant_id, agent_ids),
        )
        .await
    }

    async fn record_mints(&self, records: &[MintRecord]) -> StoreResult<()> {
        self.guarded("record_mints", self.inner.record_mints(records))
            .await
    }

    async fn find_tenant(&self, tenant_id: &str) -> StoreResult<Option<TenantRow>> {
        self.guarded("find_tenant", self.inner.find_tenant(tenant_id))
            .await
    }

    async fn find_tenant_by_entra_id(
        &self,
        entra_tenant_id: &str,
    ) -> StoreResult<Option<TenantRow>> {
        self.guarded(
            "find_tenant_by_entra_id",
            self.inner.find_tenant_by_entra_id(entra_tenant_id),
        )
        .await
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
        self.guarded(
            "claim_idempotency",
            self.inner.claim_idempotency(
                principal,
                key,
                request_hash,
                now,
                expired_before,
                abandoned_before,
            ),
        )
        .await
    }

    async fn settle_idempotency(
        &self,
        principal: &str,
        key: &str,
        claims: Option<&str>,
    ) -> StoreResult<()> {
        self.guarded(
            "settle_idempotency",
            self.inner.settle_idempotency(principal, key, claims),
        )
        .await
    }

    async fn list_mints(&self, query: &MintQuery) -> StoreResult<Vec<MintRow>> {
        self.guarded("list_mints", self.inner.list_mints(query))
            .await
    }

    async fn find_mint(&self, jti: uuid::Uuid) -> StoreResult<Option<MintRow>> {
        self.guarded("find_mint", self.inner.find_mint(jti)).await
    }

    async fn revoke_mint(&self, jti: uuid::Uuid, revoked_by: &str) -> StoreResult<Option<MintRow>> {
        self.guarded("revoke_mint", self.inner.revoke_mint(jti, revoked_by))
            .await
    }

    async fn revoke_session_mints(
        &self,
        session_id: &str,
        issued_before: DateTime<Utc>,
        revoked_by: &str,
    ) -> StoreResult<u64> {
        self.guarded(
            "revoke_session_mints",
            self.inner
                .revoke_session_mints(session_id, issued_before, revoked_by),
        )
        .await
    }

    async fn revocations_since(
        &self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Revocation>> {
        self.guarded(
            "revocations_since",
            self.inner.revocations_since(tenant_id, since, after, limit),
        )
        .await
    }

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()> {
        self.guarded("create_api_key", self.inner.create_api_key(key))
            .await
    }

    async fn tenant_rate_limit(&self, tenant_id: &str) -> StoreResult<Option<(u32, u32)>> {
        self.guarded("tenant_rate_limit", self.inner.tenant_rate_limit(tenant_id))
            .await
    }

    async fn set_tenant_rate_limit(
        &self,
        tenant_id: &str,
        limit: Option<(u32, u32)>,
    ) -> StoreResult<bool> {
        self.guarded(
            "set_tenant_rate_limit",
            self.inner.set_tenant_rate_limit(tenant_id, limit),
        )
        .await
    }

    async fn list_api_keys(&self, tenant_id: &str) -> StoreResult<Vec<ApiKeyListing>> {
        self.guarded("list_api_keys", self.inner.list_api_keys(tenant_id))
            .await
    }

    async fn revoke_api_key(&self, key_id: &str) -> StoreResult<Option<bool>> {
        self.guarded("revoke_api_key", self.inner.revoke_api_key(key_id))
            .await
    }

    async fn apply_seed(&self, plan: &SeedPlan) -> StoreResult<SeedOutcome> {
        self.guarded("apply_seed", self.inner.apply_seed(plan))
            .await
    }

    async fn list_tenant_rate_limits(&self) -> StoreResult<Vec<(String, u32, u32)>> {
        self.guarded(
            "list_tenant_rate_limits",
            self.inner.list_tenant_rate_limits(),
        )
        .await
    }

    async fn migration_status(&self) -> StoreResult<Vec<MigrationStatus>> {
        self.guarded("migration_status", self.inner.migration_status())
            .await
    }

    fn pool_status(&self) -> PoolStatus {
        self.inner.pool_status()
    }

    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRow>> {
        self.guarded("signing_keys", self.inner.signing_keys())
            .await
    }

    async fn insert_signing_key(&self, key: &SigningKeyRow) -> StoreResult<bool> {
        self.guarded("insert_signing_key", self.inner.insert_signing_key(key))
            .await
    }

    async fn watch_changes(&self, freshness: &Freshness) -> StoreResult<()> {
        // Not `guarded`: it runs for as long as the feed lives, and losing the feed's connection
        // says nothing about the pool's.
        if self.is_down() {
            return Err(StoreError::Unavailable);
        }
        self.inner.watch_changes(freshness).await
    }

    async fn prune_mints(&self, expired_before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        self.guarded("prune_mints", self.inner.prune_mints(expired_before, limit))
            .await
    }

    async fn prune_idempotency(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        self.guarded(
            "prune_idempotency",
            self.inner.prune_idempotency(created_before, limit),
        )
        .await
    }
}
