//! The directory API: the platform tells the service which tenants, end companies, agents and
//! chat sessions exist. Writes need `directory:write` (a platform key); reads `directory:read`,
//! of the caller's own tenant, or of every tenant for a platform caller. A `PUT` body is the
//! entry `directory import` reads (the seed fixture's objects); a write answers the stored row.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{
    envelope::{page_limit, ErrorEnvelope, PageParams, Pagination, SuccessMeta, Timings},
    error::ApiError,
    extract::{ApiJson, Authorized, ReadDirectory, WriteDirectory},
    request_context::RequestContext,
    AppState,
};
use crate::{
    auth::Principal,
    directory::{take_path_id, AgentEntry, EndCompanyEntry, EntryError, SessionEntry, TenantEntry},
    freshness::Topic,
    store::{DirectoryRefusal, Written},
};

/// One row of the directory, in the envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryRow<T> {
    pub data: T,
    pub meta: SuccessMeta,
}

/// A page of rows, by id; `meta.pagination.next_cursor` asks for the next.
#[derive(Debug, Serialize, ToSchema)]
pub struct DirectoryPage<T> {
    pub data: Vec<T>,
    pub meta: SuccessMeta,
}

/// What a `DELETE` did.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
    /// Live tokens the removal revoked (now in the revocation feed).
    pub revoked_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedEnvelope {
    pub data: Deleted,
    pub meta: SuccessMeta,
}

type Reply<T> = Result<(StatusCode, Json<DirectoryRow<T>>), ApiError>;

fn invalid(error: EntryError) -> ApiError {
    ApiError::invalid_field(error.field, error.reason)
}

/// The body as an entry: its shape is a 422 naming what is wrong (not JSON at all was a 400).
fn entry<T: serde::de::DeserializeOwned>(body: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(body).map_err(|e| ApiError::invalid_field("body", e.to_string()))
}

/// Whether `principal` may read `tenant_id`'s rows: its own, or any for the platform.
fn readable(principal: &Principal, tenant_id: &str) -> bool {
    principal.is_platform() || principal.tenant_id() == tenant_id
}

/// This replica's caches drop a row it changed at once; the others drop it when the change
/// notification the write raised reaches them (as for any change made in SQL).
fn changed(state: &AppState, topics: &[Topic], tenant_id: &str, id: &str) {
    for topic in topics {
        state.freshness.row_changed(*topic, tenant_id, id);
    }
}

fn revoked_by(principal: &Principal) -> String {
    format!("directory:{}", principal.id())
}

fn written<T, E>(
    ctx: RequestContext,
    timings: Timings,
    written: Written<T>,
    entry: impl FnOnce(&T) -> E,
) -> (StatusCode, Json<DirectoryRow<E>>) {
    let mut warnings = Vec::new();
    if written.revoked_tokens > 0 {
        warnings.push(format!(
            "revoked {} live token(s) this change takes away",
            written.revoked_tokens
        ));
    }
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(DirectoryRow {
            data: entry(&written.row),
            meta: SuccessMeta::new(ctx, timings, warnings),
        }),
    )
}

fn row<T>(ctx: RequestContext, timings: Timings, data: T) -> Json<DirectoryRow<T>> {
    Json(DirectoryRow {
        data,
        meta: SuccessMeta::new(ctx, timings, Vec::new()),
    })
}

fn deleted(ctx: RequestContext, timings: Timings, revoked_tokens: u64) -> Json<DeletedEnvelope> {
    Json(DeletedEnvelope {
        data: Deleted {
            deleted: true,
            revoked_tokens,
        },
        meta: SuccessMeta::new(ctx, timings, Vec::new()),
    })
}

/// `limit` and `cursor` (the last id of the previous page, base64url) of a list request.
fn page(query: &HashMap<String, String>) -> Result<(u32, String), ApiError> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let limit = page_limit(query)?;
    let after = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => String::new(),
        Some(cursor) => URL_SAFE_NO_PAD
            .decode(cursor)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                ApiError::invalid_field("cursor", "is not a cursor this service gave out")
            })?,
    };
    Ok((limit, after))
}

fn paged<T>(
    ctx: RequestContext,
    timings: Timings,
    mut rows: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> String,
) -> Json<DirectoryPage<T>> {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
    let has_more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let mut meta = SuccessMeta::new(ctx, timings, Vec::new());
    meta.pagination = Some(Pagination {
        next_cursor: has_more
            .then(|| rows.last().map(|row| URL_SAFE_NO_PAD.encode(id(row))))
            .flatten(),
        has_more,
    });
    Json(DirectoryPage { data: rows, meta })
}

// ---- tenants ----------------------------------------------------------------------------------

#[utoipa::path(
    put,
    path = "/public-api/directory/tenants/{tenant_id}",
    operation_id = "public_api.directory_tenant_put",
    tag = "Directory",
    summary = "Create or replace a tenant",
    description = "An idempotent upsert; answers the stored row (201 when created). `rate_limit`: an object sets the tenant's quota, `null` removes it, leaving it out leaves it alone. The platform flag cannot be set or cleared here.",
    params(("tenant_id" = String, Path, description = "The tenant's id.")),
    request_body = TenantEntry,
    responses(
        (status = 200, description = "Updated (or unchanged).", body = DirectoryRow<TenantEntry>),
        (status = 201, description = "Created.", body = DirectoryRow<TenantEntry>),
        (status = 400, description = "Not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 409, description = "`entra_tenant_id_taken`, `platform_tenant_immutable`.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`validation_failed`: a field is wrong (`details` names it).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn put_tenant(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { .. }: Authorized<WriteDirectory>,
    Path(tenant_id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Reply<TenantEntry> {
    let mut entry: TenantEntry = entry(body)?;
    take_path_id("id", &mut entry.id, &tenant_id).map_err(invalid)?;
    let row = entry.check().map_err(invalid)?;
    let mut timings = Timings::default();
    let result = timings
        .time("db", state.store.put_tenant(&row, false))
        .await?;
    let done = result.map_err(ApiError::Directory)?;
    changed(
        &state,
        &[Topic::Tenants, Topic::RateLimits],
        &row.id,
        &row.id,
    );
    Ok(written(ctx, timings, done, TenantEntry::of))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}",
    operation_id = "public_api.directory_tenant_get",
    tag = "Directory",
    summary = "One tenant",
    params(("tenant_id" = String, Path, description = "The tenant's id.")),
    responses(
        (status = 200, description = "The row.", body = DirectoryRow<TenantEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found` (also another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_tenant(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path(tenant_id): Path<String>,
) -> Result<Json<DirectoryRow<TenantEntry>>, ApiError> {
    let not_found = ApiError::Directory(DirectoryRefusal::NotFound("tenant"));
    if !readable(&principal, &tenant_id) {
        return Err(not_found);
    }
    let mut timings = Timings::default();
    let found = timings
        .time("db", state.store.directory_tenant(&tenant_id))
        .await?;
    let tenant = found.ok_or(not_found)?;
    Ok(row(ctx, timings, TenantEntry::of(&tenant)))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants",
    operation_id = "public_api.directory_tenants_list",
    tag = "Directory",
    summary = "Tenants, by id",
    description = "Every tenant for the platform; the caller's own otherwise. Keyset-paginated (`meta.pagination`).",
    params(
        PageParams,
    ),
    responses(
        (status = 200, description = "One page.", body = DirectoryPage<TenantEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 422, description = "A query parameter is invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_tenants(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DirectoryPage<TenantEntry>>, ApiError> {
    let (limit, after) = page(&query)?;
    let only = (!principal.is_platform()).then(|| principal.tenant_id());
    let mut timings = Timings::default();
    let rows = timings
        .time("db", state.store.directory_tenants(&after, limit + 1, only))
        .await?;
    let entries = rows.iter().map(TenantEntry::of).collect();
    Ok(paged(ctx, timings, entries, limit, |t| t.id.clone()))
}

#[utoipa::path(
    delete,
    path = "/public-api/directory/tenants/{tenant_id}",
    operation_id = "public_api.directory_tenant_delete",
    tag = "Directory",
    summary = "Delete a tenant that holds nothing",
    description = "Refused (409 `tenant_in_use`) while the tenant has end companies, agents, sessions, API keys or token records (kept for audit until retention removes them), and for the platform tenant (409 `platform_tenant_immutable`).",
    params(("tenant_id" = String, Path, description = "The tenant's id.")),
    responses(
        (status = 200, description = "Deleted.", body = DeletedEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found`.", body = ErrorEnvelope),
        (status = 409, description = "`tenant_in_use`, `platform_tenant_immutable`.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_tenant(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { .. }: Authorized<WriteDirectory>,
    Path(tenant_id): Path<String>,
) -> Result<Json<DeletedEnvelope>, ApiError> {
    let mut timings = Timings::default();
    let result = timings
        .time("db", state.store.delete_tenant(&tenant_id))
        .await?;
    result.map_err(ApiError::Directory)?;
    changed(
        &state,
        &[Topic::Tenants, Topic::RateLimits],
        &tenant_id,
        &tenant_id,
    );
    Ok(deleted(ctx, timings, 0))
}

// ---- end companies ----------------------------------------------------------------------------

#[utoipa::path(
    put,
    path = "/public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
    operation_id = "public_api.directory_end_company_put",
    tag = "Directory",
    summary = "Create or replace an end company of a tenant",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("end_company_id" = String, Path, description = "The end company's id (unique within its tenant)."),
    ),
    request_body = EndCompanyEntry,
    responses(
        (status = 200, description = "Updated (or unchanged).", body = DirectoryRow<EndCompanyEntry>),
        (status = 201, description = "Created.", body = DirectoryRow<EndCompanyEntry>),
        (status = 400, description = "Not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found`.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`validation_failed`: a field is wrong (`details` names it).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn put_end_company(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { .. }: Authorized<WriteDirectory>,
    Path((tenant_id, end_company_id)): Path<(String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Reply<EndCompanyEntry> {
    let mut entry: EndCompanyEntry = entry(body)?;
    take_path_id("tenant_id", &mut entry.tenant_id, &tenant_id).map_err(invalid)?;
    take_path_id("id", &mut entry.id, &end_company_id).map_err(invalid)?;
    let row = entry.check().map_err(invalid)?;
    let mut timings = Timings::default();
    let result = timings
        .time("db", state.store.put_end_company(&row))
        .await?;
    let done = result.map_err(ApiError::Directory)?;
    changed(&state, &[Topic::EndCompanies], &row.tenant_id, &row.id);
    Ok(written(ctx, timings, done, EndCompanyEntry::of))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
    operation_id = "public_api.directory_end_company_get",
    tag = "Directory",
    summary = "One end company",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("end_company_id" = String, Path, description = "The end company's id."),
    ),
    responses(
        (status = 200, description = "The row.", body = DirectoryRow<EndCompanyEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`end_company_not_found` (also another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_end_company(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path((tenant_id, end_company_id)): Path<(String, String)>,
) -> Result<Json<DirectoryRow<EndCompanyEntry>>, ApiError> {
    let not_found = ApiError::Directory(DirectoryRefusal::NotFound("end company"));
    if !readable(&principal, &tenant_id) {
        return Err(not_found);
    }
    let mut timings = Timings::default();
    let found = timings
        .time(
            "db",
            state
                .store
                .directory_end_company(&tenant_id, &end_company_id),
        )
        .await?;
    let company = found.ok_or(not_found)?;
    Ok(row(ctx, timings, EndCompanyEntry::of(&company)))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}/end-companies",
    operation_id = "public_api.directory_end_companies_list",
    tag = "Directory",
    summary = "A tenant's end companies, by id",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        PageParams,
    ),
    responses(
        (status = 200, description = "One page.", body = DirectoryPage<EndCompanyEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found` (another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 422, description = "A query parameter is invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_end_companies(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path(tenant_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DirectoryPage<EndCompanyEntry>>, ApiError> {
    if !readable(&principal, &tenant_id) {
        return Err(ApiError::Directory(DirectoryRefusal::NotFound("tenant")));
    }
    let (limit, after) = page(&query)?;
    let mut timings = Timings::default();
    let rows = timings
        .time(
            "db",
            state
                .store
                .directory_end_companies(&tenant_id, &after, limit + 1),
        )
        .await?;
    let entries = rows.iter().map(EndCompanyEntry::of).collect();
    Ok(paged(ctx, timings, entries, limit, |c| c.id.clone()))
}

#[utoipa::path(
    delete,
    path = "/public-api/directory/tenants/{tenant_id}/end-companies/{end_company_id}",
    operation_id = "public_api.directory_end_company_delete",
    tag = "Directory",
    summary = "Delete an end company, revoking the live tokens scoped to it",
    description = "Refused (409 `end_company_in_use`) while sessions are scoped to it: close or rescope them first.",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("end_company_id" = String, Path, description = "The end company's id."),
    ),
    responses(
        (status = 200, description = "Deleted; `revoked_tokens` says how many live tokens it revoked.", body = DeletedEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`end_company_not_found`.", body = ErrorEnvelope),
        (status = 409, description = "`end_company_in_use`.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_end_company(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<WriteDirectory>,
    Path((tenant_id, end_company_id)): Path<(String, String)>,
) -> Result<Json<DeletedEnvelope>, ApiError> {
    let mut timings = Timings::default();
    let by = revoked_by(&principal);
    let result = timings
        .time(
            "db",
            state
                .store
                .delete_end_company(&tenant_id, &end_company_id, &by),
        )
        .await?;
    let revoked = result.map_err(ApiError::Directory)?;
    changed(&state, &[Topic::EndCompanies], &tenant_id, &end_company_id);
    Ok(deleted(ctx, timings, revoked))
}

// ---- agents -----------------------------------------------------------------------------------

/// An agent id in a path: a positive integer, else 404 (no such agent can exist).
fn agent_id(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or(ApiError::Directory(DirectoryRefusal::NotFound("agent")))
}

#[utoipa::path(
    put,
    path = "/public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
    operation_id = "public_api.directory_agent_put",
    tag = "Directory",
    summary = "Create or replace an agent of a tenant",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("agent_id" = i64, Path, description = "The agent's id, a positive integer unique across tenants."),
    ),
    request_body = AgentEntry,
    responses(
        (status = 200, description = "Updated (or unchanged).", body = DirectoryRow<AgentEntry>),
        (status = 201, description = "Created.", body = DirectoryRow<AgentEntry>),
        (status = 400, description = "Not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found`, `agent_not_found` (an id that is not a positive integer).", body = ErrorEnvelope),
        (status = 409, description = "`agent_of_another_tenant`.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`validation_failed`: a field is wrong (`details` names it).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn put_agent(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { .. }: Authorized<WriteDirectory>,
    Path((tenant_id, agent)): Path<(String, String)>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Reply<AgentEntry> {
    let id = agent_id(&agent)?;
    let mut entry: AgentEntry = entry(body)?;
    take_path_id("tenant_id", &mut entry.tenant_id, &tenant_id).map_err(invalid)?;
    if entry.id == 0 {
        entry.id = id;
    } else if entry.id != id {
        return Err(invalid(EntryError {
            field: "id",
            reason: format!("is {} in the body and {id} in the path", entry.id),
        }));
    }
    let row = entry.check().map_err(invalid)?;
    let mut timings = Timings::default();
    let result = timings.time("db", state.store.put_agent(&row)).await?;
    let done = result.map_err(ApiError::Directory)?;
    changed(
        &state,
        &[Topic::Agents],
        &row.tenant_id,
        &row.id.to_string(),
    );
    Ok(written(ctx, timings, done, AgentEntry::of))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
    operation_id = "public_api.directory_agent_get",
    tag = "Directory",
    summary = "One agent",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("agent_id" = i64, Path, description = "The agent's id."),
    ),
    responses(
        (status = 200, description = "The row.", body = DirectoryRow<AgentEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`agent_not_found` (also another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_agent(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path((tenant_id, agent)): Path<(String, String)>,
) -> Result<Json<DirectoryRow<AgentEntry>>, ApiError> {
    let id = agent_id(&agent)?;
    let not_found = ApiError::Directory(DirectoryRefusal::NotFound("agent"));
    if !readable(&principal, &tenant_id) {
        return Err(not_found);
    }
    let mut timings = Timings::default();
    let found = timings
        .time("db", state.store.directory_agent(&tenant_id, id))
        .await?;
    let agent = found.ok_or(not_found)?;
    Ok(row(ctx, timings, AgentEntry::of(&agent)))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}/agents",
    operation_id = "public_api.directory_agents_list",
    tag = "Directory",
    summary = "A tenant's agents, by id",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        PageParams,
    ),
    responses(
        (status = 200, description = "One page.", body = DirectoryPage<AgentEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found` (another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 422, description = "A query parameter is invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_agents(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path(tenant_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DirectoryPage<AgentEntry>>, ApiError> {
    if !readable(&principal, &tenant_id) {
        return Err(ApiError::Directory(DirectoryRefusal::NotFound("tenant")));
    }
    let (limit, after) = page(&query)?;
    let after = if after.is_empty() {
        0
    } else {
        after.parse::<i64>().map_err(|_| {
            ApiError::invalid_field("cursor", "is not a cursor this service gave out")
        })?
    };
    let mut timings = Timings::default();
    let rows = timings
        .time(
            "db",
            state.store.directory_agents(&tenant_id, after, limit + 1),
        )
        .await?;
    let entries = rows.iter().map(AgentEntry::of).collect();
    Ok(paged(ctx, timings, entries, limit, |a| a.id.to_string()))
}

#[utoipa::path(
    delete,
    path = "/public-api/directory/tenants/{tenant_id}/agents/{agent_id}",
    operation_id = "public_api.directory_agent_delete",
    tag = "Directory",
    summary = "Delete an agent, revoking the live tokens that name it",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        ("agent_id" = i64, Path, description = "The agent's id."),
    ),
    responses(
        (status = 200, description = "Deleted; `revoked_tokens` says how many live tokens it revoked.", body = DeletedEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`agent_not_found`.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_agent(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<WriteDirectory>,
    Path((tenant_id, agent)): Path<(String, String)>,
) -> Result<Json<DeletedEnvelope>, ApiError> {
    let id = agent_id(&agent)?;
    let mut timings = Timings::default();
    let by = revoked_by(&principal);
    let result = timings
        .time("db", state.store.delete_agent(&tenant_id, id, &by))
        .await?;
    let revoked = result.map_err(ApiError::Directory)?;
    changed(&state, &[Topic::Agents], &tenant_id, &id.to_string());
    Ok(deleted(ctx, timings, revoked))
}

// ---- sessions ---------------------------------------------------------------------------------

#[utoipa::path(
    put,
    path = "/public-api/directory/sessions/{session_id}",
    operation_id = "public_api.directory_session_put",
    tag = "Directory",
    summary = "Create or replace a chat session",
    description = "An idempotent upsert; answers the stored row (201 when created). A session never changes tenant (409 `session_of_another_tenant`: delete it and create it anew); its `end_company_id` must be an end company of its tenant; a tenant has at most one active `neo_support` session. Closing a session revokes its live tokens (in the revocation feed at once); scoping it to an end company revokes its live tokens scoped otherwise. `meta.warnings` says how many were revoked.",
    params(("session_id" = String, Path, description = "The chat session's id.")),
    request_body = SessionEntry,
    responses(
        (status = 200, description = "Updated (or unchanged).", body = DirectoryRow<SessionEntry>),
        (status = 201, description = "Created.", body = DirectoryRow<SessionEntry>),
        (status = 400, description = "Not JSON.", body = ErrorEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found`.", body = ErrorEnvelope),
        (status = 409, description = "`session_of_another_tenant`, `neo_support_session_exists`.", body = ErrorEnvelope),
        (status = 413, description = "Request body too large.", body = ErrorEnvelope),
        (status = 415, description = "Unsupported media type — send application/json.", body = ErrorEnvelope),
        (status = 422, description = "`validation_failed`: a field is wrong (`details` names it); `invalid_end_company`.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn put_session(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<WriteDirectory>,
    Path(session_id): Path<String>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Reply<SessionEntry> {
    let mut entry: SessionEntry = entry(body)?;
    take_path_id("id", &mut entry.id, &session_id).map_err(invalid)?;
    let row = entry.check().map_err(invalid)?;
    let mut timings = Timings::default();
    let by = revoked_by(&principal);
    let result = timings
        .time("db", state.store.put_session(&row, &by))
        .await?;
    let done = result.map_err(ApiError::Directory)?;
    changed(&state, &[Topic::Sessions], &row.tenant_id, &row.id);
    Ok(written(ctx, timings, done, SessionEntry::of))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/sessions/{session_id}",
    operation_id = "public_api.directory_session_get",
    tag = "Directory",
    summary = "One chat session",
    params(("session_id" = String, Path, description = "The chat session's id.")),
    responses(
        (status = 200, description = "The row.", body = DirectoryRow<SessionEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`session_not_found` (also another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn get_session(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path(session_id): Path<String>,
) -> Result<Json<DirectoryRow<SessionEntry>>, ApiError> {
    let mut timings = Timings::default();
    let found = timings
        .time("db", state.store.directory_session(&session_id))
        .await?;
    let session = found
        .filter(|s| readable(&principal, &s.tenant_id))
        .ok_or(ApiError::Directory(DirectoryRefusal::NotFound("session")))?;
    Ok(row(ctx, timings, SessionEntry::of(&session)))
}

#[utoipa::path(
    get,
    path = "/public-api/directory/tenants/{tenant_id}/sessions",
    operation_id = "public_api.directory_sessions_list",
    tag = "Directory",
    summary = "A tenant's chat sessions, by id",
    params(
        ("tenant_id" = String, Path, description = "The tenant's id."),
        PageParams,
    ),
    responses(
        (status = 200, description = "One page.", body = DirectoryPage<SessionEntry>),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:read`.", body = ErrorEnvelope),
        (status = 404, description = "`tenant_not_found` (another tenant's, for a caller that is not the platform).", body = ErrorEnvelope),
        (status = 422, description = "A query parameter is invalid.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn list_sessions(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<ReadDirectory>,
    Path(tenant_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<DirectoryPage<SessionEntry>>, ApiError> {
    if !readable(&principal, &tenant_id) {
        return Err(ApiError::Directory(DirectoryRefusal::NotFound("tenant")));
    }
    let (limit, after) = page(&query)?;
    let mut timings = Timings::default();
    let rows = timings
        .time(
            "db",
            state
                .store
                .directory_sessions(&tenant_id, &after, limit + 1),
        )
        .await?;
    let entries = rows.iter().map(SessionEntry::of).collect();
    Ok(paged(ctx, timings, entries, limit, |s| s.id.clone()))
}

#[utoipa::path(
    delete,
    path = "/public-api/directory/sessions/{session_id}",
    operation_id = "public_api.directory_session_delete",
    tag = "Directory",
    summary = "Delete a chat session, revoking its live tokens",
    description = "The session's token records stay (the audit trail; they go with retention), and its revoked tokens stay in the revocation feed until they expire.",
    params(("session_id" = String, Path, description = "The chat session's id.")),
    responses(
        (status = 200, description = "Deleted; `revoked_tokens` says how many live tokens it revoked.", body = DeletedEnvelope),
        (status = 401, description = "Unauthenticated.", body = ErrorEnvelope),
        (status = 403, description = "`insufficient_scope`: the credential lacks `directory:write`.", body = ErrorEnvelope),
        (status = 404, description = "`session_not_found`.", body = ErrorEnvelope),
        (status = 429, description = "Rate limited — see Retry-After.", body = ErrorEnvelope),
        (status = 503, description = "The database cannot serve right now.", body = ErrorEnvelope),
    ),
    security(("bearerAuth" = []))
)]
pub async fn delete_session(
    State(state): State<Arc<AppState>>,
    ctx: RequestContext,
    Authorized { principal, .. }: Authorized<WriteDirectory>,
    Path(session_id): Path<String>,
) -> Result<Json<DeletedEnvelope>, ApiError> {
    let mut timings = Timings::default();
    let by = revoked_by(&principal);
    let result = timings
        .time("db", state.store.delete_session(&session_id, &by))
        .await?;
    let revoked = result.map_err(ApiError::Directory)?;
    // The row is gone: which tenant it had does not matter to the caches keyed by its id.
    changed(&state, &[Topic::Sessions], "", &session_id);
    Ok(deleted(ctx, timings, revoked))
}
