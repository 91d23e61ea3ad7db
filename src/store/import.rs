//! The directory's bulk writes: a batch of checked rows (`directory import`, and `seed`, which
//! goes the same way) applied in one transaction, kind by kind (tenants, end companies, agents,
//! sessions), each row refused when it breaks a rule the directory API enforces too, so an import
//! never makes a row the API would refuse; and the keyset pages `directory export` reads.
//!
//! Tenants go row by row on both backends (few, and each may hand an Entra directory to the
//! next). End companies, agents and sessions: on PostgreSQL the state the rules read is fetched
//! for the whole batch in one statement per question, the rules are decided here in line order,
//! and the accepted rows are written in one `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT DO
//! UPDATE` per kind (rows that change nothing are not written at all); on SQLite the same
//! decisions, fetched and written one prepared statement per row in the one transaction.

use std::collections::{HashMap, HashSet};

use sqlx::{PgConnection, SqliteConnection};

use super::{
    codec::Now, SeedAgent, SeedEndCompany, SeedTenant, SessionRow, SessionStatus, Store,
    StoreResult, TenantRecord,
};
use crate::store::RateLimitChange;

/// Who revokes tokens on a directory import (the mint records' `revoked_by`).
pub const IMPORT_REVOKER: &str = "directory import";

/// Checked rows to apply in one transaction, each with its line number (for the report). A key
/// (tenant id, tenant and end company id, agent id, session id) appears at most once per kind: a
/// repeat is refused (`directory import` starts a new batch instead).
#[derive(Debug, Clone, Default)]
pub struct ImportBatch {
    pub tenants: Vec<(u64, SeedTenant)>,
    pub end_companies: Vec<(u64, SeedEndCompany)>,
    pub agents: Vec<(u64, SeedAgent)>,
    pub sessions: Vec<(u64, SessionRow)>,
}

impl ImportBatch {
    pub fn len(&self) -> usize {
        self.tenants.len() + self.end_companies.len() + self.agents.len() + self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A seed plan's directory rows, each numbered by its place in its list.
    pub fn of_plan(plan: &super::SeedPlan) -> Self {
        fn numbered<T: Clone>(rows: &[T]) -> Vec<(u64, T)> {
            (1..).zip(rows.iter().cloned()).collect()
        }
        Self {
            tenants: numbered(&plan.tenants),
            end_companies: numbered(&plan.end_companies),
            agents: numbered(&plan.agents),
            sessions: numbered(&plan.sessions),
        }
    }
}

/// What became of one kind's rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub refused: u64,
}

impl KindCounts {
    pub fn add(&mut self, other: &Self) {
        self.created += other.created;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.refused += other.refused;
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    pub tenants: KindCounts,
    pub end_companies: KindCounts,
    pub agents: KindCounts,
    pub sessions: KindCounts,
    /// Live tokens revoked because their session closed or changed end company.
    pub tokens_revoked: u64,
    /// The refused rows, by kind (tenants first), each kind in line order.
    pub refused: Vec<RefusedRow>,
}

/// A row the rules refused; nothing of it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRow {
    pub line: u64,
    /// `tenant`, `end company`, `agent` or `session`.
    pub what: &'static str,
    pub id: String,
    pub why: ImportRefusal,
}

/// The rule a row breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportRefusal {
    #[error("no tenant {0:?}")]
    NoTenant(String),
    #[error("entra_tenant_id {entra_tenant_id} is tenant {owner:?}'s")]
    EntraTenantTaken {
        entra_tenant_id: String,
        owner: String,
    },
    #[error("it belongs to tenant {owner:?} (an agent id is unique across tenants)")]
    AgentOfAnotherTenant { owner: String },
    #[error("it belongs to tenant {owner:?} (a session never changes tenant)")]
    SessionMovesTenant { owner: String },
    #[error("no end company {end_company_id:?} of tenant {tenant_id:?}")]
    NoEndCompany {
        tenant_id: String,
        end_company_id: String,
    },
    #[error("tenant {tenant_id:?} has an active neo_support session already ({other:?})")]
    SecondNeoSupport { tenant_id: String, other: String },
    #[error("the same row is on line {0} of this batch")]
    Repeated(u64),
}

/// What writing one row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Created,
    Updated,
    Unchanged,
}

impl KindCounts {
    fn count(&mut self, change: Change) {
        match change {
            Change::Created => self.created += 1,
            Change::Updated => self.updated += 1,
            Change::Unchanged => self.unchanged += 1,
        }
    }
}

/// A session's live tokens to revoke: all of them, or those not scoped to `end_company_id`.
#[derive(Debug)]
pub(super) struct Revoke<'a> {
    session_id: &'a str,
    tenant_id: &'a str,
    all: bool,
    end_company_id: Option<&'a str>,
}

/// Export pages are keyset pages along each table's primary key; the first page starts after the
/// empty string (ids are 1 character or more) or the smallest integer, so one plan serves every
/// page.
impl Store {
    /// Applies `batch` in one transaction (see the module's documentation); the rows the rules
    /// refuse are reported and nothing of them is written.
    pub async fn import_batch(&self, batch: &ImportBatch) -> StoreResult<BatchOutcome> {
        run!(self, "import_batch", Never, |pool| {
            // SQLite: the write lock at once, so no other writer overtakes the batch's reads.
            let mut tx = pool.begin_with(self.pool.begin_writing()).await?;
            let outcome = import_rows(&mut *tx, batch).await?;
            if outcome.tokens_revoked == 0 {
                tx.commit_without_waiting().await?;
            }
            tx.commit().await?;
            outcome
        })
    }

    /// Hands every row of the directory to `sink`, page by page (at most `page` rows each):
    /// tenants (with their rate-limit override), end companies, agents, sessions, each in key
    /// order, all read in one transaction, so the pages are one consistent picture (PostgreSQL:
    /// a read-only repeatable-read transaction, which takes no transaction id and so does not
    /// hold back the revocation feed's horizon; SQLite: one read snapshot).
    /// Stops at the first error of `sink`, which it returns.
    pub async fn export_directory<E>(
        &self,
        page: u32,
        mut sink: impl FnMut(ExportPage) -> Result<(), E>,
    ) -> StoreResult<Result<(), E>> {
        let limit = i64::from(page);
        let full = |rows: usize| rows == page as usize;
        run!(self, "export_directory", Safe, |pool| {
            let mut tx = pool.begin().await?;
            tx.read_only_snapshot().await?;
            let mut after = String::new();
            loop {
                let rows: Vec<TenantRecord> = sqlx::query_as(
                    "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
                     FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
                     WHERE t.id > $1 ORDER BY t.id LIMIT $2",
                )
                .bind(&after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let next = rows
                    .last()
                    .filter(|_| full(rows.len()))
                    .map(|r| r.id.clone());
                if let Err(error) = sink(ExportPage::Tenants(rows)) {
                    return Ok(Err(error));
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            let mut after = (String::new(), String::new());
            loop {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT tenant_id, id, name FROM end_companies
                     WHERE (tenant_id, id) > ($1, $2) ORDER BY tenant_id, id LIMIT $3",
                )
                .bind(&after.0)
                .bind(&after.1)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let next = rows
                    .last()
                    .filter(|_| full(rows.len()))
                    .map(|(tenant, id, _)| (tenant.clone(), id.clone()));
                let rows = rows
                    .into_iter()
                    .map(|(tenant_id, id, name)| SeedEndCompany {
                        id,
                        tenant_id,
                        name,
                    })
                    .collect();
                if let Err(error) = sink(ExportPage::EndCompanies(rows)) {
                    return Ok(Err(error));
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            let mut after = i64::MIN;
            loop {
                let rows: Vec<(i64, String, String)> = sqlx::query_as(
                    "SELECT id, tenant_id, name FROM agents WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let next = rows.last().filter(|_| full(rows.len())).map(|a| a.0);
                let rows = rows
                    .into_iter()
                    .map(|(id, tenant_id, name)| SeedAgent {
                        id,
                        tenant_id,
                        name,
                    })
                    .collect();
                if let Err(error) = sink(ExportPage::Agents(rows)) {
                    return Ok(Err(error));
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            let mut after = String::new();
            loop {
                let rows: Vec<SessionRow> = sqlx::query_as(
                    "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions
                     WHERE id > $1 ORDER BY id LIMIT $2",
                )
                .bind(&after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let next = rows
                    .last()
                    .filter(|_| full(rows.len()))
                    .map(|s| s.id.clone());
                if let Err(error) = sink(ExportPage::Sessions(rows)) {
                    return Ok(Err(error));
                }
                match next {
                    Some(next) => after = next,
                    None => break,
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }
}

/// One page of [`Store::export_directory`].
#[derive(Debug, Clone)]
pub enum ExportPage {
    Tenants(Vec<TenantRecord>),
    EndCompanies(Vec<SeedEndCompany>),
    Agents(Vec<SeedAgent>),
    Sessions(Vec<SessionRow>),
}

/// Applies `batch` on `conn` (inside the caller's transaction): `import_batch`, and `seed`'s
/// directory rows.
pub(super) async fn import_rows<C: ImportConnection>(
    conn: &mut C,
    batch: &ImportBatch,
) -> StoreResult<BatchOutcome> {
    let mut out = BatchOutcome::default();
    fn refuse(
        out: &mut BatchOutcome,
        line: u64,
        what: &'static str,
        id: String,
        why: ImportRefusal,
    ) {
        out.refused.push(RefusedRow {
            line,
            what,
            id,
            why,
        });
    }

    // Tenants, one by one.
    let mut first_line = HashMap::new();
    for (line, tenant) in &batch.tenants {
        if let Some(first) = first_line.insert(tenant.id.as_str(), *line) {
            out.tenants.refused += 1;
            refuse(
                &mut out,
                *line,
                "tenant",
                tenant.id.clone(),
                ImportRefusal::Repeated(first),
            );
            continue;
        }
        match conn.import_tenant(tenant).await? {
            Ok(change) => out.tenants.count(change),
            Err(why) => {
                out.tenants.refused += 1;
                refuse(&mut out, *line, "tenant", tenant.id.clone(), why);
            }
        }
    }

    // The tenants the other rows name, as they are now (this batch's included).
    let named: HashSet<&str> = batch
        .end_companies
        .iter()
        .map(|(_, c)| c.tenant_id.as_str())
        .chain(batch.agents.iter().map(|(_, a)| a.tenant_id.as_str()))
        .chain(batch.sessions.iter().map(|(_, s)| s.tenant_id.as_str()))
        .collect();
    let tenants = if named.is_empty() {
        HashSet::new()
    } else {
        conn.existing_tenants(&named.into_iter().collect::<Vec<_>>())
            .await?
    };

    // End companies.
    if !batch.end_companies.is_empty() {
        let keys: Vec<(&str, &str)> = batch
            .end_companies
            .iter()
            .map(|(_, c)| (c.tenant_id.as_str(), c.id.as_str()))
            .collect();
        let existing = conn.existing_end_companies(&keys).await?;
        let mut first_line = HashMap::new();
        let mut writes = Vec::new();
        for (line, company) in &batch.end_companies {
            let key = (company.tenant_id.as_str(), company.id.as_str());
            let why = if let Some(first) = first_line.insert(key, *line) {
                Some(ImportRefusal::Repeated(first))
            } else if !tenants.contains(company.tenant_id.as_str()) {
                Some(ImportRefusal::NoTenant(company.tenant_id.clone()))
            } else {
                None
            };
            if let Some(why) = why {
                out.end_companies.refused += 1;
                refuse(&mut out, *line, "end company", company.id.clone(), why);
                continue;
            }
            match existing.get(&(company.tenant_id.clone(), company.id.clone())) {
                Some(name) if *name == company.name => out.end_companies.unchanged += 1,
                current => writes.push((company, current.is_some())),
            }
        }
        let (created, updated) = conn.write_end_companies(&writes).await?;
        out.end_companies.created += created;
        out.end_companies.updated += updated;
        out.end_companies.unchanged += writes.len() as u64 - created - updated;
    }

    // Agents.
    if !batch.agents.is_empty() {
        let ids: Vec<i64> = batch.agents.iter().map(|(_, a)| a.id).collect();
        let existing = conn.existing_agents(&ids).await?;
        let mut first_line = HashMap::new();
        let mut writes = Vec::new();
        for (line, agent) in &batch.agents {
            let current = existing.get(&agent.id);
            let why = if let Some(first) = first_line.insert(agent.id, *line) {
                Some(ImportRefusal::Repeated(first))
            } else if !tenants.contains(agent.tenant_id.as_str()) {
                Some(ImportRefusal::NoTenant(agent.tenant_id.clone()))
            } else {
                match current {
                    Some((owner, _)) if *owner != agent.tenant_id => {
                        Some(ImportRefusal::AgentOfAnotherTenant {
                            owner: owner.clone(),
                        })
                    }
                    _ => None,
                }
            };
            if let Some(why) = why {
                out.agents.refused += 1;
                refuse(&mut out, *line, "agent", agent.id.to_string(), why);
                continue;
            }
            match current {
                Some((_, name)) if *name == agent.name => out.agents.unchanged += 1,
                _ => writes.push((agent, current.is_some())),
            }
        }
        let (created, updated) = conn.write_agents(&writes).await?;
        out.agents.created += created;
        out.agents.updated += updated;
        out.agents.unchanged += writes.len() as u64 - created - updated;
    }

    // Sessions.
    if !batch.sessions.is_empty() {
        let ids: Vec<&str> = batch.sessions.iter().map(|(_, s)| s.id.as_str()).collect();
        let existing = conn.existing_sessions(&ids).await?;
        let scoped: HashSet<(&str, &str)> = batch
            .sessions
            .iter()
            .filter_map(|(_, s)| Some((s.tenant_id.as_str(), s.end_company_id.as_deref()?)))
            .collect();
        let companies = if scoped.is_empty() {
            HashMap::new()
        } else {
            conn.existing_end_companies(&scoped.into_iter().collect::<Vec<_>>())
                .await?
        };
        // The tenants where a line would make a session the active Neo Support one that is
        // not already: their active Neo Support sessions now, updated line by line below.
        let is_active_support = |s: &SessionRow| s.is_neo_support() && s.is_active();
        let contested: HashSet<&str> = batch
            .sessions
            .iter()
            .filter(|(_, s)| is_active_support(s))
            .filter(|(_, s)| {
                !existing
                    .get(&s.id)
                    .is_some_and(|e| is_active_support(e) && e.tenant_id == s.tenant_id)
            })
            .map(|(_, s)| s.tenant_id.as_str())
            .collect();
        let mut support: HashMap<String, HashSet<String>> = HashMap::new();
        if !contested.is_empty() {
            let tenants: Vec<&str> = contested.into_iter().collect();
            for tenant in &tenants {
                support.insert((*tenant).to_owned(), HashSet::new());
            }
            for (tenant, session) in conn.active_support_sessions(&tenants).await? {
                support.entry(tenant).or_default().insert(session);
            }
        }

        let mut first_line = HashMap::new();
        let mut writes = Vec::new();
        let mut revokes = Vec::new();
        for (line, session) in &batch.sessions {
            let current = existing.get(&session.id);
            let why =
                if let Some(first) = first_line.insert(session.id.as_str(), *line) {
                    Some(ImportRefusal::Repeated(first))
                } else if !tenants.contains(session.tenant_id.as_str()) {
                    Some(ImportRefusal::NoTenant(session.tenant_id.clone()))
                } else if let Some(owner) = current
                    .map(|c| &c.tenant_id)
                    .filter(|owner| **owner != session.tenant_id)
                {
                    Some(ImportRefusal::SessionMovesTenant {
                        owner: owner.clone(),
                    })
                } else if let Some(end_company_id) = session.end_company_id.as_ref().filter(|ec| {
                    !companies.contains_key(&(session.tenant_id.clone(), (*ec).clone()))
                }) {
                    Some(ImportRefusal::NoEndCompany {
                        tenant_id: session.tenant_id.clone(),
                        end_company_id: end_company_id.clone(),
                    })
                } else if let Some(active) = support.get_mut(&session.tenant_id) {
                    if is_active_support(session) {
                        match active.iter().find(|other| **other != session.id) {
                            Some(other) => Some(ImportRefusal::SecondNeoSupport {
                                tenant_id: session.tenant_id.clone(),
                                other: other.clone(),
                            }),
                            None => {
                                active.insert(session.id.clone());
                                None
                            }
                        }
                    } else {
                        // It leaves (or never held) the tenant's Neo Support place.
                        active.remove(&session.id);
                        None
                    }
                } else {
                    None
                };
            if let Some(why) = why {
                out.sessions.refused += 1;
                refuse(&mut out, *line, "session", session.id.clone(), why);
                continue;
            }
            match current {
                Some(current) if current == session => {
                    out.sessions.unchanged += 1;
                    continue;
                }
                Some(current) => {
                    let closes = current.is_active() && session.status == SessionStatus::Closed;
                    let rescoped = session.end_company_id.is_some()
                        && session.end_company_id != current.end_company_id;
                    if closes || rescoped {
                        revokes.push(Revoke {
                            session_id: &session.id,
                            tenant_id: &session.tenant_id,
                            all: closes,
                            end_company_id: session.end_company_id.as_deref(),
                        });
                    }
                }
                None => {}
            }
            writes.push((session, current.is_some()));
        }
        let (created, updated) = conn.write_sessions(&writes).await?;
        out.sessions.created += created;
        out.sessions.updated += updated;
        out.sessions.unchanged += writes.len() as u64 - created - updated;
        if !revokes.is_empty() {
            out.tokens_revoked += conn.revoke(&revokes).await?;
        }
    }
    Ok(out)
}

/// The statements of an import, on a connection of either backend (inside a transaction).
pub(super) trait ImportConnection {
    /// Upserts one tenant and applies its rate-limit change, unless another tenant has its
    /// Entra directory.
    async fn import_tenant(
        &mut self,
        tenant: &SeedTenant,
    ) -> StoreResult<Result<Change, ImportRefusal>>;
    /// Which of `ids` are tenants.
    async fn existing_tenants(&mut self, ids: &[&str]) -> StoreResult<HashSet<String>>;
    /// The end companies among `keys` (`(tenant_id, id)`), with their names.
    async fn existing_end_companies(
        &mut self,
        keys: &[(&str, &str)],
    ) -> StoreResult<HashMap<(String, String), String>>;
    /// The agents among `ids`: their tenant and name.
    async fn existing_agents(&mut self, ids: &[i64])
        -> StoreResult<HashMap<i64, (String, String)>>;
    async fn existing_sessions(&mut self, ids: &[&str])
        -> StoreResult<HashMap<String, SessionRow>>;
    /// The active Neo Support sessions of `tenants`: `(tenant_id, session id)`.
    async fn active_support_sessions(
        &mut self,
        tenants: &[&str],
    ) -> StoreResult<Vec<(String, String)>>;
    /// Upserts each row (with whether it existed before this batch); `(created, updated)`.
    async fn write_end_companies(
        &mut self,
        rows: &[(&SeedEndCompany, bool)],
    ) -> StoreResult<(u64, u64)>;
    /// Upserts, never moving an agent to another tenant; `(created, updated)`.
    async fn write_agents(&mut self, rows: &[(&SeedAgent, bool)]) -> StoreResult<(u64, u64)>;
    /// Upserts, never moving a session to another tenant; `(created, updated)`.
    async fn write_sessions(&mut self, rows: &[(&SessionRow, bool)]) -> StoreResult<(u64, u64)>;
    /// Revokes the live tokens `revokes` name; how many.
    async fn revoke(&mut self, revokes: &[Revoke<'_>]) -> StoreResult<u64>;
    /// Lets this transaction's commit return before it is flushed to disk (PostgreSQL:
    /// `synchronous_commit = off` for it alone): a batch that revoked nothing, which an import
    /// run again after a crash writes again. Still atomic; one fsync wait less per batch.
    async fn commit_without_waiting(&mut self) -> StoreResult<()>;
    /// Makes this (new) transaction a read-only snapshot.
    async fn read_only_snapshot(&mut self) -> StoreResult<()>;
}

/// `import_tenant`, one body for both backends (`$conn`: the connection).
macro_rules! import_tenant {
    ($conn:expr, $tenant:expr) => {{
        let conn = $conn;
        let tenant: &SeedTenant = $tenant;
        let current: Option<TenantRecord> = sqlx::query_as(
            "SELECT t.id, t.name, t.platform, t.entra_tenant_id, r.per_minute, r.burst
             FROM tenants t LEFT JOIN tenant_rate_limits r ON r.tenant_id = t.id
             WHERE t.id = $1",
        )
        .bind(&tenant.id)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(entra_tenant_id) = &tenant.entra_tenant_id {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT id FROM tenants WHERE entra_tenant_id = $1 AND id <> $2",
            )
            .bind(entra_tenant_id)
            .bind(&tenant.id)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some(owner) = owner {
                return Ok(Err(ImportRefusal::EntraTenantTaken {
                    entra_tenant_id: entra_tenant_id.clone(),
                    owner,
                }));
            }
        }
        let row_same = current.as_ref().is_some_and(|c| {
            c.name == tenant.name
                && c.platform == tenant.platform
                && c.entra_tenant_id == tenant.entra_tenant_id
        });
        let limit = current.as_ref().and_then(TenantRecord::rate_limit);
        let limit_same = match tenant.rate_limit {
            RateLimitChange::Keep => true,
            RateLimitChange::Clear => limit.is_none(),
            RateLimitChange::Set(set) => limit == Some(set),
        };
        if !row_same {
            sqlx::query(
                "INSERT INTO tenants (id, name, platform, entra_tenant_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE
                 SET name = excluded.name, platform = excluded.platform,
                     entra_tenant_id = excluded.entra_tenant_id",
            )
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.platform)
            .bind(&tenant.entra_tenant_id)
            .execute(&mut *conn)
            .await?;
        }
        if !limit_same {
            match tenant.rate_limit {
                RateLimitChange::Keep => {}
                RateLimitChange::Clear => {
                    sqlx::query("DELETE FROM tenant_rate_limits WHERE tenant_id = $1")
                        .bind(&tenant.id)
                        .execute(&mut *conn)
                        .await?;
                }
                RateLimitChange::Set(set) => {
                    sqlx::query(
                        "INSERT INTO tenant_rate_limits (tenant_id, per_minute, burst)
                         VALUES ($1, $2, $3)
                         ON CONFLICT (tenant_id) DO UPDATE
                         SET per_minute = excluded.per_minute, burst = excluded.burst",
                    )
                    .bind(&tenant.id)
                    .bind(i64::from(set.per_minute))
                    .bind(i64::from(set.burst))
                    .execute(&mut *conn)
                    .await?;
                }
            }
        }
        Ok(Ok(match (&current, row_same && limit_same) {
            (None, _) => Change::Created,
            (Some(_), true) => Change::Unchanged,
            (Some(_), false) => Change::Updated,
        }))
    }};
}

/// `(created, updated)` of the `RETURNING (xmax = 0)` of an upsert: the rows it did not return
/// were unchanged.
fn created_updated(created: &[bool]) -> (u64, u64) {
    let new = created.iter().filter(|c| **c).count() as u64;
    (new, created.len() as u64 - new)
}

impl ImportConnection for PgConnection {
    async fn import_tenant(
        &mut self,
        tenant: &SeedTenant,
    ) -> StoreResult<Result<Change, ImportRefusal>> {
        import_tenant!(self, tenant)
    }

    async fn existing_tenants(&mut self, ids: &[&str]) -> StoreResult<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM tenants WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(&mut *self)
            .await?;
        Ok(rows.into_iter().collect())
    }

    async fn existing_end_companies(
        &mut self,
        keys: &[(&str, &str)],
    ) -> StoreResult<HashMap<(String, String), String>> {
        let (tenants, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT e.tenant_id, e.id, e.name
             FROM end_companies e
             JOIN UNNEST($1::text[], $2::text[]) AS k (tenant_id, id)
               ON e.tenant_id = k.tenant_id AND e.id = k.id",
        )
        .bind(tenants)
        .bind(ids)
        .fetch_all(&mut *self)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, id, name)| ((tenant, id), name))
            .collect())
    }

    async fn existing_agents(
        &mut self,
        ids: &[i64],
    ) -> StoreResult<HashMap<i64, (String, String)>> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, tenant_id, name FROM agents WHERE id = ANY($1)")
                .bind(ids)
                .fetch_all(&mut *self)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, name)| (id, (tenant, name)))
            .collect())
    }

    async fn existing_sessions(
        &mut self,
        ids: &[&str],
    ) -> StoreResult<HashMap<String, SessionRow>> {
        let rows: Vec<SessionRow> = sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions
             WHERE id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&mut *self)
        .await?;
        Ok(rows.into_iter().map(|s| (s.id.clone(), s)).collect())
    }

    async fn active_support_sessions(
        &mut self,
        tenants: &[&str],
    ) -> StoreResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT tenant_id, id FROM chat_sessions
             WHERE tenant_id = ANY($1) AND kind = 'neo_support' AND status = 'active'",
        )
        .bind(tenants)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn write_end_companies(
        &mut self,
        rows: &[(&SeedEndCompany, bool)],
    ) -> StoreResult<(u64, u64)> {
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let created: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO end_companies (tenant_id, id, name)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])
             ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name
             WHERE end_companies.name IS DISTINCT FROM excluded.name
             RETURNING (xmax = 0)",
        )
        .bind(
            rows.iter()
                .map(|(c, _)| c.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|(c, _)| c.id.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(c, _)| c.name.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(created_updated(&created))
    }

    async fn write_agents(&mut self, rows: &[(&SeedAgent, bool)]) -> StoreResult<(u64, u64)> {
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let created: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO agents (id, tenant_id, name)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])
             ON CONFLICT (id) DO UPDATE SET name = excluded.name
             WHERE agents.tenant_id = excluded.tenant_id
               AND agents.name IS DISTINCT FROM excluded.name
             RETURNING (xmax = 0)",
        )
        .bind(rows.iter().map(|(a, _)| a.id).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(a, _)| a.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(a, _)| a.name.as_str())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(created_updated(&created))
    }

    async fn write_sessions(&mut self, rows: &[(&SessionRow, bool)]) -> StoreResult<(u64, u64)> {
        if rows.is_empty() {
            return Ok((0, 0));
        }
        let created: Vec<bool> = sqlx::query_scalar(
            "INSERT INTO chat_sessions (id, tenant_id, kind, status, end_company_id)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (id) DO UPDATE
             SET kind = excluded.kind, status = excluded.status,
                 end_company_id = excluded.end_company_id
             WHERE chat_sessions.tenant_id = excluded.tenant_id
               AND (chat_sessions.kind, chat_sessions.status, chat_sessions.end_company_id)
                   IS DISTINCT FROM (excluded.kind, excluded.status, excluded.end_company_id)
             RETURNING (xmax = 0)",
        )
        .bind(rows.iter().map(|(s, _)| s.id.as_str()).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|(s, _)| s.tenant_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(s, _)| s.kind.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(s, _)| s.status.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|(s, _)| s.end_company_id.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(created_updated(&created))
    }

    async fn commit_without_waiting(&mut self) -> StoreResult<()> {
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn read_only_snapshot(&mut self) -> StoreResult<()> {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn revoke(&mut self, revokes: &[Revoke<'_>]) -> StoreResult<u64> {
        // The revoked rows get their feed position from the trigger of migration 8.
        Ok(sqlx::query(
            "UPDATE session_token_mints m
             SET revoked_at = COALESCE($5, CURRENT_TIMESTAMP), revoked_by = $6
             FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::text[])
                  AS c (session_id, tenant_id, every, end_company_id)
             WHERE m.session_id = c.session_id AND m.tenant_id = c.tenant_id
               AND m.revoked_at IS NULL AND m.expires_at > COALESCE($5, CURRENT_TIMESTAMP)
               AND (c.every OR m.end_company_id IS DISTINCT FROM c.end_company_id)",
        )
        .bind(revokes.iter().map(|r| r.session_id).collect::<Vec<_>>())
        .bind(revokes.iter().map(|r| r.tenant_id).collect::<Vec<_>>())
        .bind(revokes.iter().map(|r| r.all).collect::<Vec<_>>())
        .bind(revokes.iter().map(|r| r.end_company_id).collect::<Vec<_>>())
        .bind(Now)
        .bind(IMPORT_REVOKER)
        .execute(&mut *self)
        .await?
        .rows_affected())
    }
}

/// A list of ids as the JSON array SQLite's `json_each` reads.
fn json_list<T: serde::Serialize>(items: &[T]) -> StoreResult<String> {
    Ok(serde_json::to_string(items).map_err(|e| sqlx::Error::Encode(e.into()))?)
}

impl ImportConnection for SqliteConnection {
    async fn import_tenant(
        &mut self,
        tenant: &SeedTenant,
    ) -> StoreResult<Result<Change, ImportRefusal>> {
        import_tenant!(self, tenant)
    }

    async fn existing_tenants(&mut self, ids: &[&str]) -> StoreResult<HashSet<String>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM tenants WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids)?)
        .fetch_all(&mut *self)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn existing_end_companies(
        &mut self,
        keys: &[(&str, &str)],
    ) -> StoreResult<HashMap<(String, String), String>> {
        let mut found = HashMap::new();
        for (tenant, id) in keys {
            let name: Option<String> = sqlx::query_scalar(
                "SELECT name FROM end_companies WHERE tenant_id = ?1 AND id = ?2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(&mut *self)
            .await?;
            if let Some(name) = name {
                found.insert(((*tenant).to_owned(), (*id).to_owned()), name);
            }
        }
        Ok(found)
    }

    async fn existing_agents(
        &mut self,
        ids: &[i64],
    ) -> StoreResult<HashMap<i64, (String, String)>> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT id, tenant_id, name FROM agents
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids)?)
        .fetch_all(&mut *self)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, tenant, name)| (id, (tenant, name)))
            .collect())
    }

    async fn existing_sessions(
        &mut self,
        ids: &[&str],
    ) -> StoreResult<HashMap<String, SessionRow>> {
        let rows: Vec<SessionRow> = sqlx::query_as(
            "SELECT id, tenant_id, kind, status, end_company_id FROM chat_sessions
             WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(ids)?)
        .fetch_all(&mut *self)
        .await?;
        Ok(rows.into_iter().map(|s| (s.id.clone(), s)).collect())
    }

    async fn active_support_sessions(
        &mut self,
        tenants: &[&str],
    ) -> StoreResult<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT tenant_id, id FROM chat_sessions
             WHERE tenant_id IN (SELECT value FROM json_each(?1))
               AND kind = 'neo_support' AND status = 'active'",
        )
        .bind(json_list(tenants)?)
        .fetch_all(&mut *self)
        .await?)
    }

    async fn write_end_companies(
        &mut self,
        rows: &[(&SeedEndCompany, bool)],
    ) -> StoreResult<(u64, u64)> {
        let mut counts = (0, 0);
        for (c, existed) in rows {
            let written = sqlx::query(
                "INSERT INTO end_companies (tenant_id, id, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name
                 WHERE end_companies.name IS NOT excluded.name",
            )
            .bind(&c.tenant_id)
            .bind(&c.id)
            .bind(&c.name)
            .execute(&mut *self)
            .await?
            .rows_affected();
            tally(&mut counts, written, *existed);
        }
        Ok(counts)
    }

    async fn write_agents(&mut self, rows: &[(&SeedAgent, bool)]) -> StoreResult<(u64, u64)> {
        let mut counts = (0, 0);
        for (a, existed) in rows {
            let written = sqlx::query(
                "INSERT INTO agents (id, tenant_id, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name
                 WHERE agents.tenant_id = excluded.tenant_id
                   AND agents.name IS NOT excluded.name",
            )
            .bind(a.id)
            .bind(&a.tenant_id)
            .bind(&a.name)
            .execute(&mut *self)
            .await?
            .rows_affected();
            tally(&mut counts, written, *existed);
        }
        Ok(counts)
    }

    async fn write_sessions(&mut self, rows: &[(&SessionRow, bool)]) -> StoreResult<(u64, u64)> {
        let mut counts = (0, 0);
        for (s, existed) in rows {
            let written = sqlx::query(
                "INSERT INTO chat_sessions (id, tenant_id, kind, status, end_company_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE
                 SET kind = excluded.kind, status = excluded.status,
                     end_company_id = excluded.end_company_id
                 WHERE chat_sessions.tenant_id = excluded.tenant_id
                   AND (chat_sessions.kind IS NOT excluded.kind
                        OR chat_sessions.status IS NOT excluded.status
                        OR chat_sessions.end_company_id IS NOT excluded.end_company_id)",
            )
            .bind(&s.id)
            .bind(&s.tenant_id)
            .bind(s.kind)
            .bind(s.status)
            .bind(&s.end_company_id)
            .execute(&mut *self)
            .await?
            .rows_affected();
            tally(&mut counts, written, *existed);
        }
        Ok(counts)
    }

    async fn commit_without_waiting(&mut self) -> StoreResult<()> {
        // One writer, full fsync per commit: the embedded database keeps its durability.
        Ok(())
    }

    async fn read_only_snapshot(&mut self) -> StoreResult<()> {
        // A transaction of the WAL journal reads one snapshot, from its first read on.
        Ok(())
    }

    async fn revoke(&mut self, revokes: &[Revoke<'_>]) -> StoreResult<u64> {
        let mut revoked = 0;
        for r in revokes {
            // The revoked rows get their feed position from the trigger of migration 8.
            revoked += sqlx::query(
                "UPDATE session_token_mints
                 SET revoked_at = ?1, revoked_by = ?2
                 WHERE session_id = ?3 AND tenant_id = ?4
                   AND revoked_at IS NULL AND expires_at > ?1
                   AND (?5 OR end_company_id IS NOT ?6)",
            )
            .bind(Now)
            .bind(IMPORT_REVOKER)
            .bind(r.session_id)
            .bind(r.tenant_id)
            .bind(r.all)
            .bind(r.end_company_id)
            .execute(&mut *self)
            .await?
            .rows_affected();
        }
        Ok(revoked)
    }
}

/// Counts one SQLite upsert: `written` rows (0 when it changed nothing) of a row that `existed`.
fn tally(counts: &mut (u64, u64), written: u64, existed: bool) {
    match (written, existed) {
        (0, _) => {}
        (_, false) => counts.0 += 1,
        (_, true) => counts.1 += 1,
    }
}
