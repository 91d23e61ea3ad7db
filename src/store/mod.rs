//! The store answers the questions the mint rules ask and records what was minted.
//! All SQL lives behind [`Store`]; handlers never see a query.

mod directory;
mod guard;
mod postgres;
mod recorder;
mod retention;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use directory::SessionDirectory;
pub use guard::GuardedStore;
pub use postgres::PostgresStore;
pub use recorder::{MintRecorder, RecorderStatus};
pub use retention::{prune_round, spawn_retention};
pub use sqlite::SqliteStore;

use crate::{cache::Freshness, config::DatabaseBackend};

/// What can go wrong below the store; the layers above map it, the store never speaks HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// The group-commit writer of mint records is gone (it ended, or panicked).
    #[error("the mint recorder has stopped")]
    RecorderStopped,
    #[error("database URL must start with postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl,
    /// The embedded database's directory could not be created.
    #[error("cannot create the directory {}", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database was found unreachable and has not answered since: refused at once instead
    /// of waiting for a pool timeout.
    #[error("the database is unreachable (failing fast until it answers again)")]
    Unavailable,
    /// The change feed (PostgreSQL notifications) went quiet or lost its connection.
    #[error("the change notification connection was lost: {0}")]
    FeedLost(&'static str),
    /// One failure shared by every request of a failed batch.
    #[error("{0}")]
    Shared(Arc<StoreError>),
    /// A fixture row the database refused; names the row.
    #[error("cannot seed {what} {id:?}: {problem}")]
    Seed {
        what: &'static str,
        id: String,
        problem: String,
    },
}

impl StoreError {
    /// A fixture row the database refused, said in the fixture's terms: a broken reference
    /// names what it must refer to.
    pub fn seed(what: &'static str, id: &str, error: sqlx::Error) -> Self {
        let problem = match &error {
            sqlx::Error::Database(db)
                if matches!(db.kind(), sqlx::error::ErrorKind::ForeignKeyViolation) =>
            {
                "it names a tenant or end company that does not exist (define it in the fixture or seed it first)".to_owned()
            }
            other => other.to_string(),
        };
        Self::Seed {
            what,
            id: id.to_owned(),
            problem,
        }
    }

    /// The database cannot serve right now (unreachable, shutting down, out of connections or
    /// of disk): a client should retry later (503), and it is not a bug of ours.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable | Self::RecorderStopped => true,
            Self::Shared(error) => error.is_unavailable(),
            Self::Database(error) => match error {
                sqlx::Error::Database(db) => match db.code() {
                    Some(code) => match code.parse::<i32>() {
                        // SQLite result codes; the primary code is the low byte.
                        Ok(code) => matches!(
                            code & 0xff,
                            SQLITE_BUSY
                                | SQLITE_LOCKED
                                | SQLITE_READONLY
                                | SQLITE_IOERR
                                | SQLITE_FULL
                                | SQLITE_CANTOPEN
                        ),
                        // PostgreSQL SQLSTATEs: connection exceptions, insufficient resources
                        // (disk full, too many connections), operator intervention (shutdown).
                        Err(_) => {
                            code.starts_with("08")
                                || code.starts_with("53")
                                || code.starts_with("57P")
                        }
                    },
                    None => false,
                },
                _ => is_connection_lost(error),
            },
            _ => false,
        }
    }

    /// The connection to the database is gone (not merely one statement failing): what the
    /// guard trips on.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Unavailable => true,
            Self::Shared(error) => error.is_connection_lost(),
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
            Self::Database(error) => is_connection_lost(error),
            _ => false,
        }
    }

    /// A row broke a constraint (unique, foreign key, check, not null): that row's fault alone.
    pub fn is_constraint_violation(&self) -> bool {
        match self {
            Self::Shared(error) => error.is_constraint_violation(),
            Self::Database(sqlx::Error::Database(db)) => {
                !matches!(db.kind(), sqlx::error::ErrorKind::Other)
            }
            _ => false,
        }
    }
}

fn is_connection_lost(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

pub type StoreResult<T> = Result<T, StoreError>;

/// What a chat session is: an ordinary one, or the tenant's Neo Support session (the only kind a
/// platform key may mint into with `client_id`). Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum SessionKind {
    Standard,
    NeoSupport,
}

/// Whether tokens may be minted for a session. Stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Closed,
}

impl SessionKind {
    pub const ALL: [Self; 2] = [Self::Standard, Self::NeoSupport];

    /// The word stored in the database and used in fixtures.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::NeoSupport => "neo_support",
        }
    }
}

impl SessionStatus {
    pub const ALL: [Self; 2] = [Self::Active, Self::Closed];

    /// The word stored in the database and used in fixtures.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Closed => "closed",
        }
    }
}

/// An API key as found by its hash, joined with what authentication needs of its tenant.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub key_hash: Vec<u8>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub tenant_platform: bool,
}

/// An API key as listed for operators (never with its hash).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyListing {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub platform: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub tenant_id: String,
    pub kind: SessionKind,
    pub status: SessionStatus,
    pub end_company_id: Option<String>,
}

impl SessionRow {
    pub fn is_neo_support(&self) -> bool {
        self.kind == SessionKind::NeoSupport
    }

    pub fn is_active(&self) -> bool {
        self.status == SessionStatus::Active
    }
}

/// One minted token, recorded before the response is sent.
#[derive(Debug, Clone)]
pub struct MintRecord {
    pub jti: Uuid,
    pub session_id: String,
    pub tenant_id: String,
    /// The minting principal's kind: `api_key` or `entra_user`.
    pub minted_by_kind: &'static str,
    /// The key id, or the dashboard user's `tid:oid`.
    pub minted_by: String,
    /// The minting principal's tenant (the platform tenant for a `client_id` mint).
    pub minted_by_tenant: String,
    pub end_user: Option<String>,
    /// The end company the token is scoped to (rule 5).
    pub end_company_id: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A mint record as read back: the record, and its revocation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MintRow {
    pub jti: String,
    pub session_id: String,
    pub tenant_id: String,
    pub minted_by_kind: String,
    pub minted_by: String,
    pub minted_by_tenant: Option<String>,
    pub end_user: Option<String>,
    pub end_company_id: Option<String>,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

/// An `Idempotency-Key` claimed before.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyClaim {
    pub request_hash: Vec<u8>,
    /// The token's claims (JSON) once minted; `None` while the first request is minting.
    pub claims: Option<String>,
}

/// Which mint records to list.
#[derive(Debug, Clone)]
pub struct MintQuery {
    /// The caller's tenant: its tokens.
    pub tenant_id: String,
    /// Also the tokens this (platform) tenant minted into other tenants.
    pub minted_by_tenant: Option<String>,
    pub session_id: Option<String>,
    /// `Some(true)`: neither revoked nor expired; `Some(false)`: revoked or expired.
    pub active: Option<bool>,
    /// Keyset: only records strictly after this `(issued_at, jti)` in the order.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    pub limit: u32,
}

/// One revoked token, for verifiers' deny-lists.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Revocation {
    pub jti: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: DateTime<Utc>,
}

/// One migration and whether it is applied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

/// What the binary's migrations look like against the versions a database has applied.
fn migration_status_of(
    migrator: &sqlx::migrate::Migrator,
    applied: &[i64],
) -> Vec<MigrationStatus> {
    migrator
        .iter()
        .map(|m| MigrationStatus {
            version: m.version,
            description: m.description.to_string(),
            applied: applied.contains(&m.version),
        })
        .collect()
}

/// The database pool's connections right now.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStatus {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// A signing key as stored: its private part sealed under the key-encryption key.
#[derive(Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub generation: i64,
    /// `ES256`, `EdDSA` or `RS256`.
    pub algorithm: String,
    pub sealed_private_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub activates_at: DateTime<Utc>,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("generation", &self.generation)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub key_hash: [u8; 32],
}

/// What `seed` writes, already checked and with secrets reduced to hashes.
#[derive(Debug, Clone, Default)]
pub struct SeedPlan {
    pub tenants: Vec<SeedTenant>,
    pub end_companies: Vec<SeedEndCompany>,
    pub agents: Vec<SeedAgent>,
    pub sessions: Vec<SessionRow>,
    pub api_keys: Vec<SeedApiKey>,
}

#[derive(Debug, Clone)]
pub struct SeedTenant {
    pub id: String,
    pub name: String,
    pub platform: bool,
    pub entra_tenant_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SeedEndCompany {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct SeedAgent {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct SeedApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub revoked: bool,
    pub key_hash: [u8; 32],
    /// False for a generated secret: an existing key keeps the hash it has, so seeding twice
    /// does not invalidate a key that was printed the first time.
    pub replace_existing_hash: bool,
}

/// Which seeded keys were created by this run (so a generated secret is printed only once).
#[derive(Debug, Clone, Default)]
pub struct SeedOutcome {
    pub created_api_keys: Vec<String>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;

    /// Readiness: one round trip to the database.
    async fn ping(&self) -> StoreResult<()>;

    async fn find_api_key_by_hash(&self, key_hash: &[u8; 32]) -> StoreResult<Option<ApiKeyRow>>;

    async fn touch_api_key(&self, key_id: &str, used_at: DateTime<Utc>) -> StoreResult<()>;

    async fn find_session(&self, session_id: &str) -> StoreResult<Option<SessionRow>>;

    async fn end_company_exists(&self, tenant_id: &str, end_company_id: &str) -> StoreResult<bool>;

    /// The subset of `agent_ids` that are agents of `tenant_id`.
    async fn existing_agents(&self, tenant_id: &str, agent_ids: &[i64]) -> StoreResult<Vec<i64>>;

    /// Records mints in one statement and one commit (all or none).
    async fn record_mints(&self, records: &[MintRecord]) -> StoreResult<()>;

    async fn find_tenant(&self, tenant_id: &str) -> StoreResult<Option<TenantRow>>;

    /// Mint records, newest first (`issued_at`, then `jti`, descending), as `query` says.
    async fn list_mints(&self, query: &MintQuery) -> StoreResult<Vec<MintRow>>;

    /// Claims `(principal, key)` for a mint with `request_hash`, first dropping a claim older than
    /// `expired_before`, or one never settled (its mint died) older than `abandoned_before`. `None`: claimed, mint now; else the claim that was there.
    async fn claim_idempotency(
        &self,
        principal: &str,
        key: &str,
        request_hash: &[u8; 32],
        now: DateTime<Utc>,
        expired_before: DateTime<Utc>,
        abandoned_before: DateTime<Utc>,
    ) -> StoreResult<Option<IdempotencyClaim>>;

    /// Stores the minted token's claims (JSON) on a claim; `None` removes the claim (the mint
    /// failed: a retry may try again).
    async fn settle_idempotency(
        &self,
        principal: &str,
        key: &str,
        claims: Option<&str>,
    ) -> StoreResult<()>;

    /// One mint record by its jti.
    async fn find_mint(&self, jti: Uuid) -> StoreResult<Option<MintRow>>;

    /// Revokes every token of `session_id` issued before `issued_before` that is not revoked
    /// yet; how many.
    async fn revoke_session_mints(
        &self,
        session_id: &str,
        issued_before: DateTime<Utc>,
        revoked_by: &str,
    ) -> StoreResult<u64>;

    /// Revoked tokens that have not expired, revoked after `since`, oldest revocation first, at
    /// most `limit`; of `tenant_id`'s tokens, or of every tenant's with `None`.
    /// (`after`: the last jti already seen at `since`, so a page boundary inside one timestamp,
    /// as a bulk revoke writes, loses nothing.)
    async fn revocations_since(
        &self,
        tenant_id: Option<&str>,
        since: DateTime<Utc>,
        after: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<Revocation>>;

    /// Revokes one token (`revoked_by` names who); revoking a revoked token changes nothing.
    /// Returns the record as it is afterwards, `None` for an unknown jti.
    async fn revoke_mint(&self, jti: Uuid, revoked_by: &str) -> StoreResult<Option<MintRow>>;

    /// The tenant whose Microsoft Entra directory is `entra_tenant_id` (a lowercase GUID).
    async fn find_tenant_by_entra_id(
        &self,
        entra_tenant_id: &str,
    ) -> StoreResult<Option<TenantRow>>;

    async fn create_api_key(&self, key: &NewApiKey) -> StoreResult<()>;

    /// A tenant's rate-limit override: `(per_minute, burst)`.
    async fn tenant_rate_limit(&self, tenant_id: &str) -> StoreResult<Option<(u32, u32)>>;

    /// Sets (`Some`) or removes (`None`) a tenant's override; false for an unknown tenant.
    async fn set_tenant_rate_limit(
        &self,
        tenant_id: &str,
        limit: Option<(u32, u32)>,
    ) -> StoreResult<bool>;

    async fn list_api_keys(&self, tenant_id: &str) -> StoreResult<Vec<ApiKeyListing>>;

    /// Returns `None` for an unknown key, else whether this call revoked it (false: already revoked).
    async fn revoke_api_key(&self, key_id: &str) -> StoreResult<Option<bool>>;

    /// Upserts the whole plan in one transaction.
    async fn apply_seed(&self, plan: &SeedPlan) -> StoreResult<SeedOutcome>;

    /// Every tenant's rate-limit override: `(tenant_id, per_minute, burst)`, by tenant.
    async fn list_tenant_rate_limits(&self) -> StoreResult<Vec<(String, u32, u32)>>;

    /// The migrations this binary knows, each with whether the database has it applied.
    async fn migration_status(&self) -> StoreResult<Vec<MigrationStatus>>;

    /// Connections of the pool, for metrics.
    fn pool_status(&self) -> PoolStatus;

    /// Follows changes to the tables that in-process caches hold (API keys, tenants, sessions,
    /// agents, end companies, rate-limit overrides), as triggers report them, into `freshness`:
    /// calls [`Freshness::restored`] once following, then [`Freshness::changed`] per change,
    /// until the feed is lost (the error says how). Does not return otherwise.
    async fn watch_changes(&self, freshness: &Freshness) -> StoreResult<()>;

    /// Deletes at most `limit` mint records that were issued and expired before
    /// `expired_before`, oldest first; how many.
    async fn prune_mints(&self, expired_before: DateTime<Utc>, limit: u32) -> StoreResult<u64>;

    /// Deletes at most `limit` idempotency claims made before `created_before`; how many.
    async fn prune_idempotency(
        &self,
        created_before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64>;

    /// Every signing key, by generation.
    async fn signing_keys(&self) -> StoreResult<Vec<SigningKeyRow>>;

    /// Inserts a signing key; false when its generation (or kid) exists already, i.e. another
    /// replica or command got there first.
    async fn insert_signing_key(&self, key: &SigningKeyRow) -> StoreResult<bool>;
}

/// Keeps `freshness` following the store's changes for as long as the process runs: when the
/// feed is lost, caches stop answering at once ([`Freshness::lost`]) and the feed is re-opened
/// after `retry` (a second by default), which drops everything cached before.
pub fn spawn_change_watcher(
    store: Arc<dyn Store>,
    freshness: Arc<Freshness>,
    retry: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Logged once per outage, not once per retry.
        let mut outage_logged = false;
        loop {
            let error = match store.watch_changes(&freshness).await {
                Ok(()) => continue,
                Err(error) => error,
            };
            let was_live = freshness.is_live();
            freshness.lost();
            if was_live {
                outage_logged = false;
            }
            if !outage_logged {
                tracing::warn!(
                    %error,
                    "cache invalidation feed lost: caches are bypassed until it is back"
                );
                outage_logged = true;
            }
            tokio::time::sleep(retry).await;
        }
    })
}

/// Creates the database named by `url` when it does not exist yet (first start on a fresh
/// server). SQLite files are created when they are opened.
pub async fn create_database_if_missing(url: &str) -> StoreResult<()> {
    use sqlx::migrate::MigrateDatabase;
    if DatabaseBackend::of_url(url) == Some(DatabaseBackend::Postgres)
        && !sqlx::Postgres::database_exists(url).await?
    {
        sqlx::Postgres::create_database(url).await?;
        tracing::info!("created the database");
    }
    Ok(())
}

/// A PostgreSQL store that connects on first use, behind a guard that refuses calls until the
/// database is reachable and migrated (see [`GuardedStore::starting`]).
pub fn connect_when_reachable(
    url: &str,
    max_connections: u32,
    migrate_on_start: bool,
    metrics: Arc<crate::metrics::Metrics>,
) -> StoreResult<GuardedStore> {
    let lazy: Arc<dyn Store> = Arc::new(PostgresStore::connect_lazy(url, max_connections)?);
    Ok(GuardedStore::starting(
        lazy,
        url.to_owned(),
        migrate_on_start,
        metrics,
    ))
}

/// For unit tests: a fresh embedded database in a temporary directory, migrated and seeded with
/// the example fixture. Returns the directory (keep it), the URL and the store.
#[cfg(test)]
pub(crate) async fn seeded_sqlite_for_tests() -> (tempfile::TempDir, String, Arc<dyn Store>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = connect(&url, 2).await.expect("store");
    store.migrate().await.expect("migrate");
    let plan = crate::seed::Fixture::from_json(include_str!("../../config/seed.example.json"))
        .expect("fixture parses")
        .prepare("test")
        .expect("fixture is valid")
        .plan;
    store.apply_seed(&plan).await.expect("seed");
    (dir, url, store)
}

/// Connects to the database named by `url`; its scheme picks the backend.
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Arc<dyn Store>> {
    match DatabaseBackend::of_url(url) {
        Some(DatabaseBackend::Postgres) => Ok(Arc::new(
            PostgresStore::connect(url, max_connections).await?,
        )),
        Some(DatabaseBackend::Sqlite) => {
            Ok(Arc::new(SqliteStore::connect(url, max_connections).await?))
        }
        None => Err(StoreError::UnsupportedUrl),
    }
}
