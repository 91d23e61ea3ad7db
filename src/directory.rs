//! The directory the mint rules read: tenants, their end companies and agents, and chat sessions,
//! as the platform describes them. One object per row, in the field names and defaults of the
//! seed fixture: a `PUT` body of the directory API, a line of `directory import` and an entry of
//! a `seed` fixture are the same object, checked by the same code into the rows the store writes.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::store::{
    RateLimitChange, SeedAgent, SeedEndCompany, SeedTenant, SessionKind, SessionRow, SessionStatus,
    TenantRateLimit, TenantRecord,
};

/// A tenant: an MSP, or the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// 1 to 255 characters, no control characters. In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub id: String,
    pub name: String,
    /// The platform tenant (its keys may mint into other tenants' Neo Support sessions). Set by
    /// `seed` or `directory import` only: the directory API refuses to make or unmake one.
    #[serde(default)]
    pub platform: bool,
    /// The Microsoft Entra directory (`tid`, a GUID) whose users are this tenant's dashboard
    /// users; unique across tenants.
    #[serde(default)]
    pub entra_tenant_id: Option<String>,
    /// The tenant's own per-principal quota, as `rate-limit set` sets it; `null` removes it (the
    /// default applies), and leaving the field out leaves it as it is (a platform that does not
    /// know the operator's overrides does not erase them).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<RateLimitEntry>)]
    pub rate_limit: Option<Option<RateLimitEntry>>,
}

/// A field that is present (even as `null`) is `Some`; `#[serde(default)]` makes an absent one
/// `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitEntry {
    /// Sustained requests per minute, 1 or more.
    pub per_minute: u32,
    /// Requests allowed at once, 1 or more.
    pub burst: u32,
}

/// An end company of a tenant (white-label sessions are scoped to one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndCompanyEntry {
    /// In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub id: String,
    /// In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub tenant_id: String,
    pub name: String,
}

/// An agent of a tenant; tokens name the agents they may talk to (`allowed_agent_ids`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// A positive integer, unique across tenants. In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub id: i64,
    /// In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub tenant_id: String,
    pub name: String,
}

/// A chat session: what a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionEntry {
    /// In a `PUT` body: the path's (may be omitted).
    #[serde(default)]
    pub id: String,
    /// The tenant the session belongs to; it never changes.
    pub tenant_id: String,
    /// `standard` (default) or `neo_support` (at most one active per tenant).
    #[serde(default)]
    pub kind: Option<String>,
    /// `active` (default) or `closed`: closing revokes the session's tokens.
    #[serde(default)]
    pub status: Option<String>,
    /// Scopes the session to an end company of its tenant (a white-label session).
    #[serde(default)]
    pub end_company_id: Option<String>,
}

/// What is wrong with an entry: the field and why, for a 422's `details` or an import line's
/// reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct EntryError {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> EntryError {
    EntryError {
        field,
        reason: reason.into(),
    }
}

/// An id or a name: 1 to 255 characters, none of them a control character.
pub fn check_text(field: &'static str, value: &str) -> Result<(), EntryError> {
    if value.is_empty() || value.chars().count() > 255 || value.chars().any(char::is_control) {
        return Err(bad(
            field,
            "must be 1 to 255 characters without control characters",
        ));
    }
    Ok(())
}

/// Fills an id the path gives; one the body gives too must be the same.
pub fn take_path_id(field: &'static str, body: &mut String, path: &str) -> Result<(), EntryError> {
    if body.is_empty() {
        path.clone_into(body);
    } else if body != path {
        return Err(bad(
            field,
            format!("is {body:?} in the body and {path:?} in the path"),
        ));
    }
    Ok(())
}

impl TenantEntry {
    pub fn check(&self) -> Result<SeedTenant, EntryError> {
        check_text("id", &self.id)?;
        check_text("name", &self.name)?;
        let entra_tenant_id = match &self.entra_tenant_id {
            None => None,
            Some(tid) => Some(
                uuid::Uuid::try_parse(tid)
                    .map_err(|_| bad("entra_tenant_id", "must be a GUID"))?
                    .to_string(),
            ),
        };
        let rate_limit = match self.rate_limit {
            None => RateLimitChange::Keep,
            Some(None) => RateLimitChange::Clear,
            Some(Some(RateLimitEntry { per_minute, burst })) => {
                if per_minute == 0 || burst == 0 {
                    return Err(bad("rate_limit", "per_minute and burst must be 1 or more"));
                }
                RateLimitChange::Set(TenantRateLimit { per_minute, burst })
            }
        };
        Ok(SeedTenant {
            id: self.id.clone(),
            name: self.name.clone(),
            platform: self.platform,
            entra_tenant_id,
            rate_limit,
        })
    }

    /// The entry of a stored tenant and its override (`rate_limit` always present: `null`
    /// for none).
    pub fn of(row: &TenantRecord) -> Self {
        Self {
            id: row.id.clone(),
            name: row.name.clone(),
            platform: row.platform,
            entra_tenant_id: row.entra_tenant_id.clone(),
            rate_limit: Some(row.rate_limit().map(|l| RateLimitEntry {
                per_minute: l.per_minute,
                burst: l.burst,
            })),
        }
    }
}

impl EndCompanyEntry {
    pub fn check(&self) -> Result<SeedEndCompany, EntryError> {
        check_text("id", &self.id)?;
        check_text("tenant_id", &self.tenant_id)?;
        check_text("name", &self.name)?;
        Ok(SeedEndCompany {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            name: self.name.clone(),
        })
    }

    pub fn of(row: &SeedEndCompany) -> Self {
        Self {
            id: row.id.clone(),
            tenant_id: row.tenant_id.clone(),
            name: row.name.clone(),
        }
    }
}

impl AgentEntry {
    pub fn check(&self) -> Result<SeedAgent, EntryError> {
        if self.id <= 0 {
            return Err(bad("id", "must be a positive integer"));
        }
        check_text("tenant_id", &self.tenant_id)?;
        check_text("name", &self.name)?;
        Ok(SeedAgent {
            id: self.id,
            tenant_id: self.tenant_id.clone(),
            name: self.name.clone(),
        })
    }

    pub fn of(row: &SeedAgent) -> Self {
        Self {
            id: row.id,
            tenant_id: row.tenant_id.clone(),
            name: row.name.clone(),
        }
    }
}

impl SessionEntry {
    pub fn check(&self) -> Result<SessionRow, EntryError> {
        check_text("id", &self.id)?;
        check_text("tenant_id", &self.tenant_id)?;
        let kind = match self.kind.as_deref() {
            None => SessionKind::Standard,
            Some(word) => SessionKind::ALL
                .into_iter()
                .find(|kind| kind.as_str() == word)
                .ok_or_else(|| bad("kind", "must be standard or neo_support"))?,
        };
        let status = match self.status.as_deref() {
            None => SessionStatus::Active,
            Some(word) => SessionStatus::ALL
                .into_iter()
                .find(|status| status.as_str() == word)
                .ok_or_else(|| bad("status", "must be active or closed"))?,
        };
        if let Some(end_company_id) = &self.end_company_id {
            check_text("end_company_id", end_company_id)?;
        }
        Ok(SessionRow {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            kind,
            status,
            end_company_id: self.end_company_id.clone(),
        })
    }

    pub fn of(row: &SessionRow) -> Self {
        Self {
            id: row.id.clone(),
            tenant_id: row.tenant_id.clone(),
            kind: Some(row.kind.as_str().to_owned()),
            status: Some(row.status.as_str().to_owned()),
            end_company_id: row.end_company_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_take_the_fixture_defaults() {
        let session: SessionEntry =
            serde_json::from_str(r#"{"id": "s-1", "tenant_id": "acme"}"#).unwrap();
        let row = session.check().unwrap();
        assert_eq!(row.kind, SessionKind::Standard);
        assert_eq!(row.status, SessionStatus::Active);
        assert_eq!(row.end_company_id, None);
        let tenant: TenantEntry = serde_json::from_str(r#"{"id": "t", "name": "T"}"#).unwrap();
        let row = tenant.check().unwrap();
        assert!(!row.platform);
        assert_eq!(row.rate_limit, RateLimitChange::Keep);
        let tenant: TenantEntry =
            serde_json::from_str(r#"{"id": "t", "name": "T", "rate_limit": null}"#).unwrap();
        assert_eq!(tenant.check().unwrap().rate_limit, RateLimitChange::Clear);
    }

    #[test]
    fn bad_entries_name_the_field() {
        let session: SessionEntry =
            serde_json::from_str(r#"{"id": "s-1", "tenant_id": "acme", "kind": "vip"}"#).unwrap();
        assert_eq!(session.check().unwrap_err().field, "kind");
        let agent: AgentEntry =
            serde_json::from_str(r#"{"id": -4, "tenant_id": "acme", "name": "a"}"#).unwrap();
        assert_eq!(agent.check().unwrap_err().field, "id");
        let tenant: TenantEntry =
            serde_json::from_str(r#"{"id": "t", "name": "T", "entra_tenant_id": "nope"}"#).unwrap();
        assert_eq!(tenant.check().unwrap_err().field, "entra_tenant_id");
        assert!(
            serde_json::from_str::<TenantEntry>(r#"{"id": "t", "name": "T", "x": 1}"#).is_err()
        );
    }

    #[test]
    fn a_path_id_fills_the_body_or_must_match_it() {
        let mut id = String::new();
        take_path_id("id", &mut id, "acme").unwrap();
        assert_eq!(id, "acme");
        take_path_id("id", &mut id, "acme").unwrap();
        assert_eq!(
            take_path_id("id", &mut id, "globex").unwrap_err().field,
            "id"
        );
    }
}
