//! Minting a session token: the rules of docs/api.md ("The endpoint") in their order (rule 1,
//! the body's shape, in [`request`]), the `Idempotency-Key` protocol (in [`idempotency`]) and
//! the recording of the mint. Says *why* a mint is refused ([`MintRefusal`]); only `http` decides what that looks like
//! on the wire.

mod idempotency;
pub mod request;
#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub use request::{FieldErrors, MintRequest, TtlBounds};

use crate::{
    auth::Principal,
    store::{MintRecord, MintRecorder, SessionCache, SessionRow, Store, StoreError},
    tokens::{KeyError, MintedToken, SessionClaims, TokenGrant, TokenIssuer},
};

/// Why a mint was refused, or could not be completed.
#[derive(Debug, thiserror::Error)]
pub enum MintRefusal {
    /// Rule 1: the body is not a mint request.
    #[error("invalid request: {0}")]
    InvalidRequest(FieldErrors),
    /// Rule 2: `client_id` from a caller that is not a platform service account.
    #[error("client_id from a caller that is not a platform service account")]
    ClientIdNotAllowed,
    /// Rule 2: with `client_id`, the session is not that tenant's Neo Support session (or the
    /// session or tenant does not exist: which one is not revealed).
    #[error("not the target tenant's Neo Support session")]
    NotSupportSession,
    /// Rule 3: no such session of the caller's tenant.
    #[error("session not found")]
    SessionNotFound,
    /// Rule 4: the session is not active.
    #[error("session closed")]
    SessionClosed,
    /// Rule 5: `end_company_id` names no end company of the target tenant.
    #[error("unknown end company")]
    UnknownEndCompany,
    /// Rule 6: these `allowed_agent_ids` are not agents of the target tenant.
    #[error("unknown agents {0:?}")]
    UnknownAgents(Vec<i64>),
    /// An `Idempotency-Key` seen before with a different request body.
    #[error("idempotency key reused with another request")]
    IdempotencyKeyReused,
    /// An `Idempotency-Key` whose first request is still minting.
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Rule 7: the token was signed (as `jti`) but its record was not committed, so it is never
    /// sent.
    #[error("token {jti} not recorded: {source}")]
    NotRecorded { jti: Uuid, source: StoreError },
    #[error(transparent)]
    Signing(#[from] KeyError),
    #[error("signing task failed: {0}")]
    SigningTask(#[from] tokio::task::JoinError),
    #[error("stored idempotent claims: {0}")]
    StoredClaims(serde_json::Error),
    /// An `Idempotency-Key` replay whose stored claims fail their MAC: the row was changed
    /// outside this service. Nothing is signed. Names the row, never the claims.
    #[error("the stored claims of the Idempotency-Key claim (principal {principal}, key {key}) fail their integrity check: changed outside this service; refused, nothing signed")]
    StoredClaimsForged { principal: String, key: String },
}

impl From<FieldErrors> for MintRefusal {
    fn from(errors: FieldErrors) -> Self {
        Self::InvalidRequest(errors)
    }
}

impl MintRefusal {
    /// The token signed before the mint failed, for the request's log line.
    pub fn jti(&self) -> Option<Uuid> {
        match self {
            Self::NotRecorded { jti, .. } => Some(*jti),
            _ => None,
        }
    }
}

/// A token minted (or, for an `Idempotency-Key` retry, the first request's token signed again).
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub jti: Uuid,
    pub session_id: String,
    pub expires_at: DateTime<Utc>,
    /// Seconds until expiry.
    pub expires_in: u32,
    /// For `meta.warnings`.
    pub warnings: Vec<String>,
    pub timings: MintTimings,
}

/// Where a mint spent its time, for `meta.timings_ms`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct MintTimings {
    /// Waiting on the database (lookups, idempotency claims, the mint record).
    pub db: Duration,
    pub sign: Duration,
}

impl MintTimings {
    async fn db<T>(&mut self, query: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let answer = query.await;
        self.db += started.elapsed();
        answer
    }
}

/// Mints session tokens: built once per app from what the rules read and write.
pub struct Minter {
    /// Sessions, agents and end companies (cached): what rules 2 to 6 read.
    sessions: Arc<SessionCache>,
    issuer: Arc<TokenIssuer>,
    /// Commits the mint records (rule 7).
    recorder: MintRecorder,
    /// Holds the `Idempotency-Key` claims.
    claims: Arc<Store>,
    ttl: TtlBounds,
}

impl Minter {
    pub fn new(
        sessions: Arc<SessionCache>,
        issuer: Arc<TokenIssuer>,
        recorder: MintRecorder,
        claims: Arc<Store>,
        ttl: TtlBounds,
    ) -> Self {
        Self {
            sessions,
            issuer,
            recorder,
            claims,
            ttl,
        }
    }

    /// The session cache the rules read (its size is a metric).
    pub fn sessions(&self) -> &SessionCache {
        &self.sessions
    }

    /// The recorder of mints (its health is part of readiness).
    pub fn recorder(&self) -> &MintRecorder {
        &self.recorder
    }

    /// Rules 1 to 7 for `principal`'s request `body` (parsed JSON). With an `Idempotency-Key`,
    /// the first request with that key and body mints and a retry gets that token again.
    pub async fn mint(
        &self,
        principal: &Principal,
        body: Value,
        idempotency_key: Option<&str>,
    ) -> Result<Minted, MintRefusal> {
        let Some(key) = idempotency_key else {
            let request = MintRequest::from_json(body, self.ttl)?;
            let mut timings = MintTimings::default();
            let (mut minted, _) = self.apply_rules(principal, request, &mut timings).await?;
            minted.timings = timings;
            return Ok(minted);
        };
        self.mint_once(principal, body, key).await
    }

    /// Rules 2 to 7 for a well-formed request: the token and the claims it carries.
    async fn apply_rules(
        &self,
        principal: &Principal,
        request: MintRequest,
        timings: &mut MintTimings,
    ) -> Result<(Minted, SessionClaims), MintRefusal> {
        // Rules 2 and 3: the target tenant (refused before any lookup), then its session.
        let target = Target::of(principal, request.client_id.as_deref())?;
        let session = timings
            .db(self.sessions.session(&request.session_id))
            .await?;
        let session = target.session(session)?;

        // Rule 4: only active sessions.
        if !session.is_active() {
            return Err(MintRefusal::SessionClosed);
        }

        // Rule 5: end-company scope; the session's own scope always wins.
        let mut warnings = Vec::new();
        let end_company_id = match (session.end_company_id.clone(), request.end_company_id) {
            (Some(scoped), Some(asked)) if asked != scoped => {
                warnings.push(format!(
                    "end_company_id was ignored: session {} is scoped to end company {scoped}",
                    session.id
                ));
                Some(scoped)
            }
            (Some(scoped), _) => Some(scoped),
            (None, Some(asked)) => {
                let exists = timings
                    .db(self.sessions.end_company_exists(&session.tenant_id, &asked))
                    .await?;
                if !exists {
                    return Err(MintRefusal::UnknownEndCompany);
                }
                Some(asked)
            }
            (None, None) => None,
        };

        // Rule 6: agents of the target tenant, duplicates removed (first occurrence kept).
        let mut allowed_agent_ids = request.allowed_agent_ids;
        let mut seen = std::collections::HashSet::with_capacity(allowed_agent_ids.len());
        allowed_agent_ids.retain(|id| seen.insert(*id));
        if !allowed_agent_ids.is_empty() {
            let existing = timings
                .db(self
                    .sessions
                    .existing_agents(&session.tenant_id, &allowed_agent_ids))
                .await?;
            let unknown: Vec<i64> = allowed_agent_ids
                .iter()
                .copied()
                .filter(|id| !existing.contains(id))
                .collect();
            if !unknown.is_empty() {
                return Err(MintRefusal::UnknownAgents(unknown));
            }
        }

        // Rule 7: sign, record, answer.
        let ttl_seconds = request.ttl_seconds.unwrap_or(self.ttl.default);
        let claims_end_company = end_company_id.clone();
        let agents_column = MintRecord::agents_column(&allowed_agent_ids);
        let grant = TokenGrant {
            session_id: session.id.clone(),
            client_id: session.tenant_id.clone(),
            end_company_id,
            end_user: request.end_user.clone(),
            end_user_email: request.end_user_email,
            allowed_agent_ids,
            ttl_seconds,
        };
        let minted = self.sign(Signing::New(grant), timings).await?;

        let record = MintRecord {
            jti: minted.jti,
            session_id: session.id.clone(),
            tenant_id: session.tenant_id.clone(),
            minted_by_kind: principal.kind(),
            minted_by: principal.id(),
            minted_by_tenant: principal.tenant_id().to_owned(),
            end_user: request.end_user,
            end_company_id: claims_end_company,
            allowed_agent_ids: agents_column,
            issued_at: minted.issued_at,
            expires_at: minted.expires_at,
            kid: minted.kid.clone(),
        };
        if let Err(source) = timings.db(self.recorder.record(record)).await {
            let jti = minted.jti;
            return Err(MintRefusal::NotRecorded { jti, source });
        }

        let answer = Minted {
            token: minted.token,
            jti: minted.jti,
            session_id: session.id.clone(),
            expires_at: minted.expires_at,
            expires_in: ttl_seconds,
            warnings,
            timings: MintTimings::default(),
        };
        Ok((answer, minted.claims))
    }

    /// Signs a new grant, or an idempotent retry's stored claims again; RS256 (about a
    /// millisecond of CPU) off the async runtime.
    async fn sign(
        &self,
        what: Signing,
        timings: &mut MintTimings,
    ) -> Result<MintedToken, MintRefusal> {
        let started = Instant::now();
        let issue = |issuer: &TokenIssuer, what: Signing| match what {
            Signing::New(grant) => issuer.issue(grant),
            Signing::Again(claims) => issuer.resign(claims),
        };
        // For export only: disabled (nothing made) unless traces are exported.
        let span = tracing::info_span!(target: "neo_sessions_otel", "sign");
        let minted = if self.issuer.signs_slowly() {
            let issuer = Arc::clone(&self.issuer);
            tokio::task::spawn_blocking(move || span.in_scope(|| issue(&issuer, what))).await??
        } else {
            span.in_scope(|| issue(&self.issuer, what))?
        };
        timings.sign += started.elapsed();
        Ok(minted)
    }
}

enum Signing {
    New(TokenGrant),
    Again(SessionClaims),
}

/// Whose session a mint may be for (rules 2 and 3).
enum Target<'a> {
    /// The caller's own tenant.
    OwnTenant(&'a str),
    /// A platform key's `client_id`: only that tenant's Neo Support session.
    SupportSessionOf(&'a str),
}

impl<'a> Target<'a> {
    fn of(principal: &'a Principal, client_id: Option<&'a str>) -> Result<Self, MintRefusal> {
        match client_id {
            None => Ok(Self::OwnTenant(principal.tenant_id())),
            Some(client_id) if principal.is_platform() => Ok(Self::SupportSessionOf(client_id)),
            Some(_) => Err(MintRefusal::ClientIdNotAllowed),
        }
    }

    /// The session, if it is one this target may mint for. Every refusal reveals nothing of
    /// other tenants' sessions.
    fn session(&self, session: Option<Arc<SessionRow>>) -> Result<Arc<SessionRow>, MintRefusal> {
        match *self {
            Self::SupportSessionOf(client_id) => session
                .filter(|s| s.tenant_id == client_id && s.is_neo_support())
                .ok_or(MintRefusal::NotSupportSession),
            Self::OwnTenant(tenant_id) => session
                .filter(|s| s.tenant_id == tenant_id)
                .ok_or(MintRefusal::SessionNotFound),
        }
    }
}
