//! The store answers the questions the mint rules ask and records what was minted.
//! All SQL lives behind [`Store`]; handlers never see a query.

/// Expands `$body` once per backend, with `$p` bound to that backend's pool: one statement,
/// type-checked for both.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::store::Pool::Postgres($p) => $body,
            $crate::store::Pool::Sqlite($p) => $body,
        }
    };
}

/// One store operation written once: `$body` on either backend's pool, behind the guard, timed
/// as `$operation`. `?` in the body returns a [`StoreError`]. `$retry` says whether the body may
/// run a second time when its pooled connection turned out dead ([`Retry`]): `Safe` for reads
/// and idempotent writes only.
macro_rules! run {
    ($store:expr, $operation:literal, $retry:ident, |$p:ident| $body:expr) => {{
        let store: &$crate::store::Store = &$store;
        let mut result = store
            .attempt($operation, async {
                Ok::<_, $crate::store::StoreError>(on_pool!(&store.pool, |$p| $body))
            })
            .await;
        let retried = store.retries($crate::store::Retry::$retry, &result);
        if retried {
            result = store
                .attempt($operation, async {
                    Ok::<_, $crate::store::StoreError>(on_pool!(&store.pool, |$p| $body))
                })
                .await;
        }
        store.settle(result, retried)
    }};
}

/// One store operation whose SQL differs per dialect: the function of that name in
/// `postgres.rs` or `sqlite.rs`, given the pool and the arguments, behind the guard, retried
/// as [`run!`] says.
macro_rules! per_dialect {
    ($store:expr, $operation:literal, $retry:ident, $function:ident($($arg:expr),*)) => {{
        let store: &$crate::store::Store = &$store;
        let call = move || async move {
            match &store.pool {
                Pool::Postgres(pool) => postgres::$function(pool, $($arg),*).await,
                Pool::Sqlite(pool) => sqlite::$function(pool, $($arg),*).await,
            }
        };
        let mut result = store.attempt($operation, call()).await;
        let retried = store.retries($crate::store::Retry::$retry, &result);
        if retried {
            result = store.attempt($operation, call()).await;
        }
        store.settle(result, retried)
    }};
}

mod codec;
mod directory;
mod guard;
mod import;
mod partitions;
mod postgres;
mod queries;
mod recorder;
mod retention;
mod session_cache;
mod sqlite;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use directory::{DirectoryRefusal, DirectoryResult, Written};
use guard::ConnectionLosses;
pub(crate) use guard::Retry;
pub use import::{
    BatchOutcome, ExportPage, ImportBatch, ImportRefusal, KindCounts, RefusedRow, IMPORT_REVOKER,
};
pub use partitions::DAYS_AHEAD as PARTITION_DAYS_AHEAD;
pub use recorder::{MintRecorder, RecorderStatus};
pub use retention::{prune_round, spawn_retention};
pub use session_cache::SessionCache;

use crate::{auth::principal::Scopes, config::DatabaseBackend, freshness::Freshness};

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
    /// of disk): a client should retry later (503), and it is not a bug of ours. Every way of
    /// failing to reach or to keep a connection is one ([`StoreError::is_connection_lost`]).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable | Self::RecorderStopped => true,
            Self::Shared(error) => error.is_unavailable(),
            Self::Database(error) => database_failure(error) != Failure::Statement,
            _ => false,
        }
    }

    /// The connection to the database is gone or cannot be had (not merely one statement
    /// failing): what the guard trips on.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Unavailable => true,
            Self::Shared(error) => error.is_connection_lost(),
            Self::Database(error) => matches!(
                database_failure(error),
                Failure::ConnectionDied | Failure::NoConnection
            ),
            _ => false,
        }
    }

    /// The connection the statement ran on died under it (the server ended it, the socket
    /// broke): another connection may well work, so a statement that may run twice is retried
    /// once on a fresh one.
    pub fn is_dead_connection(&self) -> bool {
        match self {
            Self::Shared(error) => error.is_dead_connection(),
            Self::Database(error) => database_failure(error) == Failure::ConnectionDied,
            _ => false,
        }
    }

    /// The statement named a table that does not exist (SQLSTATE 42P01), e.g. a day's partition
    /// of the mint records not made yet.
    pub(super) fn is_undefined_table(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db.code().as_deref() == Some("42P01"),
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

/// What a database error says about the database, as opposed to the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection the statement was on is gone: the server ended it (administrator
    /// command, crash, fast shutdown, idle-session timeout), the socket broke, or the
    /// conversation broke off mid-message.
    ConnectionDied,
    /// No connection could be had: the pool timed out or is closed, the server refuses
    /// connections (starting, shutting down, in recovery, not accepting connections), TLS
    /// failed, SQLite's worker is gone.
    NoConnection,
    /// The database is there but cannot serve now: out of disk, memory or connections,
    /// a statement cancelled by an operator or a timeout, SQLite busy, locked or read-only.
    Overloaded,
    /// The statement itself failed (a constraint, a missing table, a decoding error): ours.
    Statement,
}

/// The one classification of a `sqlx` error. PostgreSQL SQLSTATE classes: 08 connection
/// exception, 53 insufficient resources, 57 operator intervention (57P01 admin shutdown,
/// 57P02 crash shutdown, 57P03 cannot connect now, 57P05 idle session timeout, 57014 query
/// cancelled); and 55000 when it says the database is not accepting connections.
fn database_failure(error: &sqlx::Error) -> Failure {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) => Failure::ConnectionDied,
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => Failure::NoConnection,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return Failure::Statement;
            };
            // By the driver, not by the code's look: many SQLSTATEs are all digits (08006,
            // 53300, 57014) and would read as SQLite result codes.
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            match code.parse::<i32>().ok().filter(|_| sqlite) {
                // SQLite result codes; the primary code is the low byte.
                Some(code) => match code & 0xff {
                    SQLITE_CANTOPEN => Failure::NoConnection,
                    SQLITE_BUSY | SQLITE_LOCKED | SQLITE_READONLY | SQLITE_IOERR | SQLITE_FULL => {
                        Failure::Overloaded
                    }
                    _ => Failure::Statement,
                },
                None => match code.as_ref() {
                    "57P01" | "57P02" | "57P05" => Failure::ConnectionDied,
                    code if code.starts_with("08") => Failure::ConnectionDied,
                    code if code.starts_with("57P") => Failure::NoConnection,
                    "55000" if db.message().contains("not currently accepting connections") => {
                        Failure::NoConnection
                    }
                    code if code.starts_with("57") || code.starts_with("53") => Failure::Overloaded,
                    _ => Failure::Statement,
                },
            }
        }
        _ => Failure::Statement,
    }
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
    /// As stored: `NULL` for a key made before scopes (see [`Scopes::from_stored`]).
    pub scopes: Option<String>,
}

impl ApiKeyRow {
    pub fn scopes(&self) -> Scopes {
        Scopes::from_stored(self.scopes.as_deref())
    }
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
    pub scopes: Option<String>,
}

impl ApiKeyListing {
    pub fn scopes(&self) -> Scopes {
        Scopes::from_stored(self.scopes.as_deref())
    }
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
    /// The agents the token names, as [`MintRecord::agents_column`] writes them.
    pub allowed_agent_ids: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The signing key's `kid`: a withdrawal of that key revokes the token.
    pub kid: String,
}

impl MintRecord {
    /// `,101,102,` (`,` for none): `LIKE '%,101,%'` finds the records of tokens that name 101.
    pub fn agents_column(agent_ids: &[i64]) -> String {
        use std::fmt::Write;
        let mut column = String::with_capacity(1 + agent_ids.len() * 8);
        column.push(',');
        for id in agent_ids {
            let _ = write!(column, "{id},");
        }
        column
    }
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
    /// The MAC the minting instance stored with `claims` (see `tokens::ClaimsMac`).
    pub claims_mac: Option<Vec<u8>>,
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
    /// Its place in the feed's order (with `jti`): see [`FeedPosition`].
    pub revoked_seq: i64,
}

/// A place in the revocation feed, which is ordered by `(revoked_seq, jti)`: the feed goes on
/// with the revocations after it. `revoked_seq` is in commit order (PostgreSQL: the revoking
/// transaction's id, handed out only below the oldest transaction still in flight; SQLite: a
/// counter taken by the single writer), so a revocation that commits late still sorts after
/// every position handed out before it committed. `jti: None` stands after every token of
/// `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedPosition {
    pub seq: i64,
    pub jti: Option<Uuid>,
}

impl FeedPosition {
    /// The later of two positions.
    pub fn max(self, other: Self) -> Self {
        let key = |p: &Self| (p.seq, p.jti.is_none(), p.jti);
        if key(&other) > key(&self) {
            other
        } else {
            self
        }
    }
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
    /// Set by an emergency withdrawal: never published nor signing again.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("generation", &self.generation)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .field("withdrawn_at", &self.withdrawn_at)
            .finish_non_exhaustive()
    }
}

/// The advisory lock (PostgreSQL) a withdrawal holds exclusively and every insert of mint
/// records takes shared (migration 12).
pub(super) const WITHDRAWAL_LOCK: i64 = 7_261_120_200_012;

/// One signing key's withdrawal, as [`Store::withdraw_signing_key`] applies it.
#[derive(Debug)]
pub struct KeyWithdrawal<'a> {
    pub kid: &'a str,
    /// Its `activates_at` as read: the withdrawal applies only to the row as the caller saw it.
    pub activates_at: DateTime<Utc>,
    /// The moment of the withdrawal: the successor signs from it.
    pub at: DateTime<Utc>,
    /// Who signs instead, when the key was the one signing.
    pub successor: Option<Successor<'a>>,
    /// Records issued before this are not looked at (they cannot be signed by it, or have
    /// expired).
    pub issued_from: DateTime<Utc>,
    /// Records without a `kid` (written before keys were recorded) issued from `issued_from`
    /// up to this are revoked too.
    pub unrecorded_until: DateTime<Utc>,
    pub revoked_by: &'a str,
}

/// The key that signs in a withdrawn key's place.
#[derive(Debug)]
pub enum Successor<'a> {
    /// The `next` key, whose `activates_at` (as read) is brought forward to the withdrawal.
    Promote {
        kid: &'a str,
        activates_at: DateTime<Utc>,
    },
    /// A key generated for it, signing from the withdrawal.
    Insert(&'a SigningKeyRow),
}

#[derive(Debug, Clone)]
pub struct NewApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub key_hash: [u8; 32],
    pub scopes: Scopes,
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
    pub rate_limit: RateLimitChange,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SeedEndCompany {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SeedAgent {
    pub id: i64,
    pub tenant_id: String,
    pub name: String,
}

/// What a written tenant does to its quota override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateLimitChange {
    /// Leaves it as it is.
    #[default]
    Keep,
    /// Removes it: the default applies.
    Clear,
    Set(TenantRateLimit),
}

/// A tenant as the directory reads it, with its quota override.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TenantRecord {
    pub id: String,
    pub name: String,
    pub platform: bool,
    pub entra_tenant_id: Option<String>,
    pub per_minute: Option<i64>,
    pub burst: Option<i64>,
}

impl TenantRecord {
    pub fn rate_limit(&self) -> Option<TenantRateLimit> {
        let saturate = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
        Some(TenantRateLimit {
            per_minute: saturate(self.per_minute?),
            burst: saturate(self.burst?),
        })
    }
}

/// A tenant's own per-principal quota (`tenant_rate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantRateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone)]
pub struct SeedApiKey {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub revoked: bool,
    pub scopes: Scopes,
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

/// The database pool of one backend. Cheap to clone (a pool is a handle).
#[derive(Clone)]
enum Pool {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Pool {
    async fn ping(&self) -> StoreResult<()> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    async fn migrate(&self) -> StoreResult<()> {
        let migrator = self.migrator();
        on_pool!(self, |pool| migrator.run(pool).await).map_err(sqlx::Error::from)?;
        Ok(())
    }

    fn migrator(&self) -> &'static sqlx::migrate::Migrator {
        match self {
            Self::Postgres(_) => &postgres::MIGRATOR,
            Self::Sqlite(_) => &sqlite::MIGRATOR,
        }
    }
}

/// The store: every question the layers above ask of the database, on either backend. The
/// statements both backends share are in `queries.rs`, what differs per dialect in
/// `postgres.rs` and `sqlite.rs`; every call goes through the guard (`guard.rs`) when the store
/// serves requests.
pub struct Store {
    pool: Pool,
    /// When a pooled connection was last found dead (the pool checks connections idle since).
    losses: Arc<ConnectionLosses>,
    /// Fail-fast and latency metrics; `None` for the command line and tests.
    guard: Option<guard::Guard>,
}

impl Store {
    /// Records mints in one statement and one commit (all or none).
    pub async fn record_mints(&self, records: &[MintRecord]) -> StoreResult<()> {
        per_dialect!(self, "record_mints", Never, record_mints(records))
    }

    /// The subset of `agent_ids` that are agents of `tenant_id`.
    pub async fn existing_agents(
        &self,
        tenant_id: &str,
        agent_ids: &[i64],
    ) -> StoreResult<Vec<i64>> {
        per_dialect!(
            self,
            "existing_agents",
            Safe,
            existing_agents(tenant_id, agent_ids)
        )
    }

    /// The revocation feed's horizon: every revocation with a `revoked_seq` below it has
    /// committed (or rolled back), and every revocation still to commit gets one at or above it.
    pub async fn revocation_horizon(&self) -> StoreResult<i64> {
        per_dialect!(self, "revocation_horizon", Safe, revocation_horizon())
    }

    /// Deletes at most `limit` mint records that were issued and expired before
    /// `expired_before`, oldest first; how many.
    pub async fn prune_mints(&self, expired_before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        per_dialect!(
            self,
            "prune_mints",
            Never,
            prune_mints(expired_before, limit)
        )
    }

    /// PostgreSQL: makes the mint records' day partitions of `today` and the days after it
    /// ([`PARTITION_DAYS_AHEAD`]) that do not exist yet; their names. SQLite has none.
    pub async fn create_partitions(&self, today: chrono::NaiveDate) -> StoreResult<Vec<String>> {
        match &self.pool {
            Pool::Postgres(pool) => {
                self.call("create_partitions", partitions::create_ahead(pool, today))
                    .await
            }
            Pool::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// PostgreSQL: drops the mint records' partitions in which every token expired before
    /// `expired_before`; their names. SQLite has none ([`Store::prune_mints`] deletes rows).
    pub async fn drop_expired_partitions(
        &self,
        expired_before: DateTime<Utc>,
    ) -> StoreResult<Vec<String>> {
        match &self.pool {
            Pool::Postgres(pool) => {
                self.call(
                    "drop_expired_partitions",
                    partitions::drop_expired(pool, expired_before),
                )
                .await
            }
            Pool::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Follows changes to the tables that in-process caches hold (API keys, tenants, sessions,
    /// agents, end companies, rate-limit overrides), as triggers report them, into `freshness`:
    /// calls [`Freshness::restored`] once following, then [`Freshness::changed`] per change,
    /// until the feed is lost (the error says how). Does not return otherwise.
    pub async fn watch_changes(&self, freshness: &Freshness) -> StoreResult<()> {
        // Refused while the database is down, but not timed nor tripping: it runs for as long
        // as the feed lives, and losing the feed's connection says nothing about the pool's.
        if self.is_down() {
            return Err(StoreError::Unavailable);
        }
        match &self.pool {
            Pool::Postgres(pool) => postgres::watch_changes(pool, freshness).await,
            Pool::Sqlite(pool) => sqlite::watch_changes(pool, freshness).await,
        }
    }

    /// Connections of the pool, for metrics.
    pub fn pool_status(&self) -> PoolStatus {
        on_pool!(&self.pool, |pool| PoolStatus {
            open: pool.size(),
            idle: u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
            max: pool.options().get_max_connections(),
        })
    }
}

/// Keeps `freshness` following the store's changes for as long as the process runs: when the
/// feed is lost, caches stop answering at once ([`Freshness::lost`]) and the feed is re-opened
/// after `retry` (a second by default), which drops everything cached before.
pub fn spawn_change_watcher(
    store: Arc<Store>,
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

/// Whether the database `url` names exists, without creating it (a PostgreSQL database on its
/// server, a SQLite file).
pub async fn database_exists(url: &str) -> StoreResult<bool> {
    use sqlx::migrate::MigrateDatabase;
    match DatabaseBackend::of_url(url) {
        Some(DatabaseBackend::Postgres) => Ok(sqlx::Postgres::database_exists(url).await?),
        Some(DatabaseBackend::Sqlite) => Ok(sqlx::Sqlite::database_exists(url).await?),
        None => Err(StoreError::UnsupportedUrl),
    }
}

/// Every migration the binary embeds for the backend of `url`, none applied: the status of a
/// database that does not exist yet.
pub fn migrations_of_a_new_database(url: &str) -> StoreResult<Vec<MigrationStatus>> {
    let migrator = match DatabaseBackend::of_url(url) {
        Some(DatabaseBackend::Postgres) => &postgres::MIGRATOR,
        Some(DatabaseBackend::Sqlite) => &sqlite::MIGRATOR,
        None => return Err(StoreError::UnsupportedUrl),
    };
    Ok(migration_status_of(migrator, &[]))
}

/// A PostgreSQL store that connects on first use, behind a guard that refuses calls until the
/// database is reachable and migrated (see `Store::starting`).
pub fn connect_when_reachable(
    url: &str,
    max_connections: u32,
    migrate_on_start: bool,
    metrics: Arc<crate::metrics::Metrics>,
) -> StoreResult<Store> {
    let losses = ConnectionLosses::new();
    let pool = Pool::Postgres(postgres::connect_lazy(
        url,
        max_connections,
        Arc::clone(&losses),
    )?);
    Ok(Store::starting(
        pool,
        losses,
        url.to_owned(),
        migrate_on_start,
        metrics,
    ))
}

/// For unit tests: a fresh embedded database in a temporary directory, migrated and seeded with
/// the example fixture. Returns the directory (keep it), the URL and the store.
#[cfg(test)]
pub(crate) async fn seeded_sqlite_for_tests() -> (tempfile::TempDir, String, Arc<Store>) {
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

/// Connects to the database named by `url`; its scheme picks the backend. Not guarded (see
/// [`Store::guarded`]).
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<Arc<Store>> {
    let losses = ConnectionLosses::new();
    let pool = match DatabaseBackend::of_url(url) {
        Some(DatabaseBackend::Postgres) => {
            Pool::Postgres(postgres::connect(url, max_connections, Arc::clone(&losses)).await?)
        }
        Some(DatabaseBackend::Sqlite) => Pool::Sqlite(sqlite::connect(url, max_connections).await?),
        None => return Err(StoreError::UnsupportedUrl),
    };
    Ok(Arc::new(Store {
        pool,
        losses,
        guard: None,
    }))
}

#[cfg(test)]
mod classification_tests {
    use std::{borrow::Cow, error::Error as StdError, fmt};

    use super::StoreError;

    /// A database error with the SQLSTATE and message the server would send.
    #[derive(Debug)]
    struct Sqlstate(&'static str, &'static str);

    impl fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.1)
        }
    }

    impl StdError for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            self.1
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn database(code: &'static str, message: &'static str) -> StoreError {
        StoreError::Database(sqlx::Error::Database(Box::new(Sqlstate(code, message))))
    }

    /// Every way of failing to reach or keep a database connection is a 503 (unavailable), and
    /// the ones where the statement's own connection died are retried; a statement's own
    /// failure is neither.
    #[test]
    fn every_connection_failure_is_unavailable_and_a_dead_connection_is_retried() {
        let io = || sqlx::Error::Io(std::io::ErrorKind::UnexpectedEof.into());
        // (error, unavailable, connection lost, dead connection: retried)
        let cases: Vec<(StoreError, bool, bool, bool)> = vec![
            (
                database(
                    "57P01",
                    "terminating connection due to administrator command",
                ),
                true,
                true,
                true,
            ),
            (database("57P02", "crash shutdown"), true, true, true),
            (database("57P05", "idle-session timeout"), true, true, true),
            (database("08006", "connection failure"), true, true, true),
            (
                database("08003", "connection does not exist"),
                true,
                true,
                true,
            ),
            (
                database("57P03", "the database system is shutting down"),
                true,
                true,
                false,
            ),
            (
                database(
                    "55000",
                    "database \"neo\" is not currently accepting connections",
                ),
                true,
                true,
                false,
            ),
            (
                database("57014", "canceling statement due to statement timeout"),
                true,
                false,
                false,
            ),
            (
                database("53300", "too many connections"),
                true,
                false,
                false,
            ),
            (database("53100", "disk full"), true, false, false),
            (StoreError::Database(io()), true, true, true),
            (
                StoreError::Database(sqlx::Error::Protocol("unexpected message".into())),
                true,
                true,
                true,
            ),
            (
                StoreError::Database(sqlx::Error::PoolTimedOut),
                true,
                true,
                false,
            ),
            (
                StoreError::Database(sqlx::Error::PoolClosed),
                true,
                true,
                false,
            ),
            (
                StoreError::Shared(std::sync::Arc::new(StoreError::Database(io()))),
                true,
                true,
                true,
            ),
            (StoreError::Unavailable, true, true, false),
            // A statement's own failures: ours, a 500, not retried.
            (
                database("42P01", "relation does not exist"),
                false,
                false,
                false,
            ),
            (
                database("55000", "object not in prerequisite state"),
                false,
                false,
                false,
            ),
            (database("23505", "duplicate key"), false, false, false),
            (
                StoreError::Database(sqlx::Error::RowNotFound),
                false,
                false,
                false,
            ),
        ];
        for (error, unavailable, lost, dead) in cases {
            assert_eq!(error.is_unavailable(), unavailable, "unavailable: {error}");
            assert_eq!(error.is_connection_lost(), lost, "connection lost: {error}");
            assert_eq!(error.is_dead_connection(), dead, "dead connection: {error}");
        }
    }
}
